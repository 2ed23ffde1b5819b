//! Finding NCCL, which sums gradients across GPUs (`compute.devices` > 1). cudarc loads
//! it at run time by the name `libnccl.so` (and a few versioned names, not NCCL's own
//! `libnccl.so.2`), so a machine with only PyTorch's `nvidia-nccl` wheel, or only
//! Debian's runtime package, has the library under a name the loader does not try.
//! Single-GPU runs never come here.

use std::path::PathBuf;

/// `Ok` when NCCL loads; otherwise what to install or link, naming a copy found on
/// this machine if there is one.
pub fn check() -> Result<(), String> {
    // SAFETY: only tries to open the library.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Ok(());
    }
    let fix = match found_elsewhere() {
        Some(path) => format!(
            "NCCL is at {} under a name the loader does not try: link it as libnccl.so in a directory on LD_LIBRARY_PATH, e.g. `mkdir -p ~/.local/lib/nccl && ln -sf {} ~/.local/lib/nccl/libnccl.so && export LD_LIBRARY_PATH=~/.local/lib/nccl:$LD_LIBRARY_PATH`",
            path.display(),
            path.display()
        ),
        None => "install NCCL: the CUDA toolkit's NCCL (Debian/Ubuntu: libnccl2 and libnccl-dev, which provides libnccl.so), or `pip install nvidia-nccl-cu12` and link its nvidia/nccl/lib/libnccl.so.2 as libnccl.so in a directory on LD_LIBRARY_PATH".into(),
    };
    Err(format!(
        "compute.devices names several GPUs, whose gradients are summed through NCCL, but no libnccl.so loads here: {fix}"
    ))
}

/// A `libnccl.so.2` where PyTorch's wheel, the CUDA toolkit or the distribution put it.
fn found_elsewhere() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = vec![
        "/usr/lib/x86_64-linux-gnu/libnccl.so.2".into(),
        "/usr/local/cuda/lib64/libnccl.so.2".into(),
        "/usr/lib64/libnccl.so.2".into(),
    ];
    // The wheel's copy, wherever this machine's python3 keeps its packages.
    let wheel = std::process::Command::new("python3")
        .args([
            "-c",
            "import nvidia.nccl, os; print(os.path.join(os.path.dirname(nvidia.nccl.__file__), 'lib', 'libnccl.so.2'))",
        ])
        .output();
    if let Ok(output) = wheel {
        let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !path.is_empty() {
            candidates.insert(0, path.into());
        }
    }
    candidates.into_iter().find(|path| path.is_file())
}

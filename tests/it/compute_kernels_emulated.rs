//! The CUDA flash-attention kernels, run on the CPU under `tests/cuda_emulation`'s
//! emulation of the CUDA subset they use (mma.sync, ldmatrix and cp.async, and
//! Hopper's wgmma on 128-byte-swizzled shared memory, in their PTX layouts), against
//! float64 attention: `src/compute/flash_attention.cu` as every card runs it, and with
//! `flash_attention_sm90.cu` appended as compute capability 9.0 runs it. CI has no GPU
//! and the kernels are compiled only at run time on one, so without this a change to
//! either source would be checked only on the GPU machine.

use std::process::Command;

/// Runs the emulation harness with `args` and checks that all four problems pass.
fn check_under_emulation(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cuda_emulation/run.sh");
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    // The check exits non-zero when any output or gradient is off by more than 2% of
    // its largest value, or when the source does not compile under the emulation.
    assert!(output.status.success(), "{args:?}\n{stdout}\n{stderr}");
    let problems = stdout.lines().filter(|l| l.contains(": out ")).count();
    assert_eq!(problems, 4, "one line per problem checked:\n{stdout}");
}

fn have_gxx(test: &str) -> bool {
    let found = Command::new("g++").arg("--version").output().is_ok();
    if !found {
        eprintln!("skipped {test}: no g++ on this machine");
    }
    found
}

#[test]
fn flash_kernels_under_emulation_match_float64_attention() {
    if have_gxx("flash_kernels_under_emulation_match_float64_attention") {
        check_under_emulation(&[]);
    }
}

#[test]
fn hopper_flash_kernels_under_emulation_match_float64_attention() {
    if have_gxx("hopper_flash_kernels_under_emulation_match_float64_attention") {
        check_under_emulation(&["--sm90"]);
    }
}

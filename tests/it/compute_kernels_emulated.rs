//! The CUDA flash-attention kernels (`src/compute/flash_attention.cu`), run on the CPU
//! under `tests/cuda_emulation`'s emulation of the CUDA subset they use (mma.sync,
//! ldmatrix and cp.async in their PTX layouts), against float64 attention. CI has no
//! GPU and the kernels are compiled only at run time on one, so without this a change
//! to the source would be checked only on the GPU machine.

use std::process::Command;

#[test]
fn flash_kernels_under_emulation_match_float64_attention() {
    if Command::new("g++").arg("--version").output().is_err() {
        eprintln!(
            "skipped flash_kernels_under_emulation_match_float64_attention: no g++ on this machine"
        );
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cuda_emulation/run.sh");
    let output = Command::new("bash").arg(script).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    // The check exits non-zero when any output or gradient is off by more than 2% of
    // its largest value, or when the source does not compile under the emulation.
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let problems = stdout.lines().filter(|l| l.contains(": out ")).count();
    assert_eq!(problems, 4, "one line per problem checked:\n{stdout}");
}

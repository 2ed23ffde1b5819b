//! The CPU backend's results do not depend on how many threads compute them: the same
//! run trained on 1, 2 and 7 worker threads (rayon's pool, which burn-flex, graft's
//! CPU kernels and gemm share) ends at the same checkpoint ids, so `graft reproduce`
//! on a machine with another core count still matches bit for bit.

use crate::common::{llama_tiny, lora_workspace, stderr, stdout};
use serde_json::Value;
use std::process::Command;

fn checkpoints_on(threads: usize) -> Vec<String> {
    let work = lora_workspace(&llama_tiny());
    let output = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["train", "a.toml", "--quiet", "--json"])
        .current_dir(work.path())
        .env("GRAFT_STORE", work.path().join("store"))
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{threads} threads: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    let trained: Value = serde_json::from_str(&stdout(&output)).unwrap();
    trained["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn checkpoint_ids_are_the_same_on_1_2_and_7_threads() {
    let one = checkpoints_on(1);
    assert_eq!(one.len(), 2, "{one:?}");
    for threads in [2, 7] {
        assert_eq!(checkpoints_on(threads), one, "{threads} threads against 1");
    }
}

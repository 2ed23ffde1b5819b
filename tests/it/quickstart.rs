//! The quickstart end to end with its fixed seeds: replay of task A's data
//! while learning task B keeps more of task A than the fork without it.

use std::path::Path;
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn quickstart_replay_keeps_more_of_task_a_than_the_fork_without_replay() {
    let work = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments"),
        &work.path().join("experiments"),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["quickstart", "--json"])
        .current_dir(work.path())
        .env_remove("GRAFT_STORE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The fork tree comes first; the JSON report is the rest.
    let json_start = stdout.find("\n{\n").map(|i| i + 1).unwrap();
    let report: serde_json::Value = serde_json::from_str(&stdout[json_start..]).unwrap();
    let accuracy = |row: usize, task: &str| report["accuracy"][row][1][task].as_f64().unwrap();
    let (before, without_replay, with_replay) =
        (accuracy(1, "add"), accuracy(2, "add"), accuracy(3, "add"));
    assert!(before > 0.3, "task A was learned: {report}");
    assert!(
        with_replay > without_replay + 0.1,
        "replay keeps task A: {report}"
    );
    assert!(
        accuracy(3, "reverse") > accuracy(1, "reverse"),
        "task B was learned: {report}"
    );
    assert!(
        stdout.contains("[task-b-replay] @200"),
        "the fork tree is printed: {stdout}"
    );
    assert!(work.path().join("quickstart-loss.svg").is_file());
    assert!(work
        .path()
        .join("models/tiny-base/model.safetensors")
        .is_file());
}

//! The quickstart end to end with its fixed seeds: replay of task A's data
//! while learning task B keeps more of task A than the fork without it.
//! The quickstart runs once per test binary ([`crate::common::quickstart`]);
//! `forgetting_budget` reads the same store.

use crate::common::{quickstart, stdout};

#[test]
fn quickstart_replay_keeps_more_of_task_a_than_the_fork_without_replay() {
    let run = quickstart();
    let stdout = stdout(&run.output);
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
    let path = run.dir.path();
    assert!(path.join("quickstart-loss.svg").is_file());
    assert!(path.join("models/tiny-base/model.safetensors").is_file());
}

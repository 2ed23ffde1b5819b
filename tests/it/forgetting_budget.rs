//! The forgetting budget on the quickstart's tiny tasks: both forks of task A
//! have `train.forgetting_budget = 0.05`. The fork without replay forgets
//! task A far past it, so its `@best` under the budget is the checkpoint
//! that forgot least, earlier than the one task B's loss alone picks; the
//! replay fork stays within it. These tests read the store of the one
//! quickstart run the test binary makes ([`crate::common::quickstart`]).

use crate::common::{copy_dir, graft, graft_ok, graft_ok_in, quickstart, stderr};
use serde_json::Value;
use std::sync::Mutex;

/// The shared store is read by several tests at once; copying it while
/// another process has it open is kept apart from those reads.
static SHARED_STORE: Mutex<()> = Mutex::new(());

fn show(reference: &str) -> Value {
    let store = quickstart().store();
    let _guard = SHARED_STORE.lock().unwrap_or_else(|e| e.into_inner());
    serde_json::from_str(&graft_ok(&store, &["show", reference, "--json"])).unwrap()
}

fn tags_of(runs: &Value) -> Vec<String> {
    let mut tags: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["tags"][0].as_str().unwrap_or("-").to_string())
        .collect();
    tags.sort();
    tags
}

#[test]
fn fork_without_replay_exceeds_the_budget_and_its_best_is_an_earlier_checkpoint() {
    let run = show("task-b");
    let forgetting = &run["forgetting"];
    assert_eq!(forgetting["budget"], 0.05, "{forgetting}");
    assert_eq!(forgetting["within_budget"], false, "{forgetting}");
    let add = &forgetting["sets"][0];
    assert_eq!(add["name"], "add", "{forgetting}");
    assert!(add["forgetting"].as_f64().unwrap() > 0.05, "{forgetting}");
    // Recorded at every evaluation: over the whole budget after step 0.
    let used = &run["metrics"][format!("forget_budget_used/{}", add["set"].as_str().unwrap())];
    assert_eq!(used["count"], 5, "step 0 and every 50 steps: {used}");
    assert!(used["max"].as_f64().unwrap() > 1.0, "{used}");

    // With no checkpoint within the budget, the budget's pick is the one that forgot
    // least: never more than the loss-only pick. (On a CPU with AVX-512 that is an
    // earlier checkpoint than the loss-only pick; where gemm runs its 256-bit kernels
    // the trajectory differs and the last checkpoint forgot least, so both pick it.)
    let with_budget = forgetting["best_step"].as_u64().unwrap();
    let without = forgetting["best_step_ignoring_budget"].as_u64().unwrap();
    let (forgot, forgot_ignoring) = (
        add["forgetting"].as_f64().unwrap(),
        add["forgetting_ignoring_budget"].as_f64().unwrap(),
    );
    assert!(forgot_ignoring >= forgot, "{forgetting}");
    if with_budget != without {
        assert!(forgot_ignoring > forgot, "{forgetting}");
    }
    assert!(
        forgot <= add["worst"].as_f64().unwrap(),
        "the pick is not the worst checkpoint: {forgetting}"
    );
    // `@best` itself resolves to the budget's pick.
    assert_eq!(show("task-b@best")["step"].as_u64(), Some(with_budget));
}

#[test]
fn replay_fork_stays_within_the_budget() {
    let forgetting = show("task-b-replay")["forgetting"].clone();
    assert_eq!(forgetting["within_budget"], true, "{forgetting}");
    let add = &forgetting["sets"][0];
    assert!(add["forgetting"].as_f64().unwrap() <= 0.05, "{forgetting}");
    assert!(add["budget_used"].as_f64().unwrap() <= 1.0, "{forgetting}");
    let best = forgetting["best_step"].as_u64().unwrap();
    assert_eq!(show("task-b-replay@best")["step"].as_u64(), Some(best));
}

#[test]
fn runs_where_forget_add_selects_the_forks_by_their_forgetting_of_task_a() {
    let store = quickstart().store();
    let _guard = SHARED_STORE.lock().unwrap_or_else(|e| e.into_inner());
    let runs = |filter: &str| -> Value {
        serde_json::from_str(&graft_ok(&store, &["runs", "--where", filter, "--json"])).unwrap()
    };
    assert_eq!(tags_of(&runs("forget.add < 0.05")), ["task-b-replay"]);
    assert_eq!(tags_of(&runs("forget.add >= 0.05")), ["task-b"]);
    // A key no run has stays an error.
    let output = graft(&store, &["runs", "--where", "forget.nosuchset < 1"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

#[test]
fn lineage_reports_the_budget_each_fork_used_on_each_ancestor_set() {
    let store = quickstart().store();
    let _guard = SHARED_STORE.lock().unwrap_or_else(|e| e.into_inner());
    let text = graft_ok(&store, &["lineage", "task-b"]);
    assert!(
        text.contains("budget 5% per ancestor set: @best = @"),
        "{text}"
    );
    assert!(text.contains("no checkpoint within it"), "{text}");
    assert!(text.contains("of the budget"), "{text}");
    let text = graft_ok(&store, &["lineage", "task-b-replay"]);
    assert!(text.contains("within it (by loss alone"), "{text}");
    let json: Value =
        serde_json::from_str(&graft_ok(&store, &["lineage", "task-b-replay", "--json"])).unwrap();
    let used = &json["hops"][0]["forgetting"]["sets"][0]["budget_used"];
    assert!(used.as_f64().is_some_and(|u| u <= 1.0), "{json}");
    assert!(json["hops"][1]["forgetting"].is_null(), "task A is no fork");
}

#[test]
fn stop_on_forgetting_ends_the_fork_after_patience_evaluations_over_budget() {
    let shared = quickstart();
    let work = tempfile::tempdir().unwrap();
    {
        let _guard = SHARED_STORE.lock().unwrap_or_else(|e| e.into_inner());
        copy_dir(&shared.store(), &work.path().join("store"));
    }
    copy_dir(
        &shared.dir.path().join("experiments"),
        &work.path().join("experiments"),
    );
    let store = work.path().join("store");
    let stdout = graft_ok_in(
        work.path(),
        &store,
        &[
            "fork",
            "task-a@best",
            "experiments/task-b.toml",
            "--set",
            "train.stop_on_forgetting=true",
            "--set",
            "train.early_stop_patience=2",
            "--set",
            "train.eval_every=10",
            "--set",
            "train.checkpoint_every=10",
            "--tag",
            "stopped",
        ],
    );
    let run: Value =
        serde_json::from_str(&graft_ok(&store, &["show", "stopped", "--json"])).unwrap();
    assert_eq!(run["steps"], 20, "two evaluations over budget: {stdout}");
    assert_eq!(
        run["executions"][0]["end_reason"], "forgetting budget",
        "{}",
        run["executions"]
    );

    // Refused before anything is written, naming the key.
    let before = graft_ok(&store, &["runs", "--json"]);
    let error = crate::common::graft_fails_in(
        work.path(),
        &store,
        &[
            "fork",
            "task-a@best",
            "--set",
            "train.stop_on_forgetting=true",
        ],
    );
    assert!(error.contains("train.stop_on_forgetting"), "{error}");
    // The base model folder is the shared workspace's (not copied).
    let error = crate::common::graft_fails_in(
        shared.dir.path(),
        &store,
        &[
            "train",
            "experiments/task-a.toml",
            "--set",
            "train.forgetting_budget=0.05",
            "--set",
            "data.eval_ancestors=true",
        ],
    );
    assert!(
        error.contains("train.forgetting_budget = 0.05: this run has no ancestor eval set"),
        "{error}"
    );
    assert_eq!(graft_ok(&store, &["runs", "--json"]), before);
}

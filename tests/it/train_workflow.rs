//! The continued fine-tuning workflow end to end, through the binary and a
//! real store, on the shared llama-tiny fixture: train, fork, lineage,
//! resume after SIGKILL, reproduce, and a NaN that stops a run.

use crate::common::llama_tiny as fixture;
use crate::common::write_synth;
use crate::common::{graft, graft_ok, stderr, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A work folder with synthetic task files and an experiment for task A.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_synth(
        dir.path(),
        &[
            ("reverse.jsonl", "reverse", 64, 1),
            ("reverse-val.jsonl", "reverse", 16, 2),
            ("arith.jsonl", "arithmetic", 64, 3),
            ("arith-val.jsonl", "arithmetic", 16, 4),
        ],
    );
    std::fs::write(
        dir.path().join("a.toml"),
        format!(
            r#"[model]
base = "{}"

[adapter]
rank = 4
alpha = 8

[data]
train = [{{ path = "reverse.jsonl", format = "chat" }}]
eval = [{{ path = "reverse-val.jsonl", name = "reverse" }}]
seq_len = 64
template = "plain"

[optim]
lr = 5e-3
batch_size = 4
warmup_steps = 2

[train]
steps = 12
seed = 5
eval_every = 4
checkpoint_every = 4
keep_last = 2
keep_best = 1
"#,
            fixture().display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        r#"[adapter]
rank = 4

[data]
train = [{ path = "arith.jsonl", format = "chat" }]
eval = [{ path = "arith-val.jsonl", name = "arith" }]
eval_ancestors = true
replay = { ratio = 0.25, from = "parent" }
seq_len = 64
template = "plain"

[optim]
lr = 2e-3
batch_size = 4

[unfreeze]
schedule = [{ at = 0, layers = "none" }, { at = 4, layers = "top:1" }]

[train]
steps = 8
seed = 6
eval_every = 4
checkpoint_every = 4
"#,
    )
    .unwrap();
    dir
}

fn run_in(dir: &Path, store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(dir)
        .env("GRAFT_STORE", store)
        .env_remove("GRAFT_INJECT_NAN_AT_STEP")
        .output()
        .unwrap()
}

fn ok_in(dir: &Path, store: &Path, args: &[&str]) -> String {
    let output = run_in(dir, store, args);
    assert!(
        output.status.success(),
        "graft {args:?}: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn fork_records_a_lineage_and_leaves_the_parent_untouched() {
    let work = workspace();
    let store = work.path().join("store");
    let a = json(&ok_in(
        work.path(),
        &store,
        &["train", "a.toml", "--tag", "task-a", "-q", "--json"],
    ));
    let a_run = a["run"].as_str().unwrap().to_string();
    let parent_show = graft_ok(&store, &["show", "task-a", "--json"]);
    let parent_metrics = graft_ok(&store, &["metrics", "task-a", "--json"]);

    let b = json(&ok_in(
        work.path(),
        &store,
        &[
            "fork",
            "task-a@best",
            "b.toml",
            "--tag",
            "task-b",
            "-q",
            "--json",
        ],
    ));
    let b_run = b["run"].as_str().unwrap();
    let forgetting = b["eval"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("forget/reverse@"));
    assert!(
        forgetting.is_some(),
        "the ancestor's eval set is measured for forgetting: {b}"
    );
    assert!(b["eval"]["eval/arith/acc"].is_number(), "{b}");

    let lineage = json(&graft_ok(&store, &["lineage", "task-b", "--json"]));
    let hops = lineage["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 2);
    assert_eq!(hops[0]["run"], b_run);
    assert_eq!(hops[1]["run"], a_run.as_str());
    let roles: Vec<&str> = hops[0]["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"train") && roles.contains(&"replay") && roles.contains(&"ancestor_eval"),
        "{roles:?}"
    );
    let replayed = hops[0]["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["role"] == "replay")
        .unwrap();
    let parent_train = hops[1]["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["role"] == "train")
        .unwrap();
    assert_eq!(
        replayed["dataset"], parent_train["dataset"],
        "replay draws the parent's training data"
    );
    let changed: Vec<&str> = hops[0]["hyperparameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_str().unwrap())
        .collect();
    assert!(
        changed.contains(&"optim.lr") && changed.contains(&"train.steps"),
        "{changed:?}"
    );
    assert_eq!(
        lineage["base_model_path"].as_str().map(PathBuf::from),
        Some(fixture().canonicalize().unwrap())
    );

    let show_b = json(&graft_ok(&store, &["show", "task-b", "--json"]));
    assert!(
        show_b["notes"]["drift"].is_object(),
        "drift report stored with the run"
    );
    let trainable = json(&graft_ok(
        &store,
        &[
            "metrics",
            "task-b",
            "--series",
            "trainable_params",
            "--json",
        ],
    ));
    let counts: Vec<f64> = trainable["series"]["trainable_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert!(
        counts.len() == 2 && counts[1] > counts[0],
        "unfreezing at step 4 opens a layer: {counts:?}"
    );

    assert_eq!(
        graft_ok(&store, &["show", "task-a", "--json"]),
        parent_show,
        "the parent's record is unchanged"
    );
    assert_eq!(
        graft_ok(&store, &["metrics", "task-a", "--json"]),
        parent_metrics
    );
    graft_ok(&store, &["verify"]);
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_checkpoint_of_an_uninterrupted_run() {
    let work = workspace();
    let longer = ["--set", "train.steps=40"];
    let reference_store = work.path().join("reference");
    let uninterrupted = json(&ok_in(
        work.path(),
        &reference_store,
        &["train", "a.toml", longer[0], longer[1], "-q", "--json"],
    ));
    let final_id = uninterrupted["checkpoints"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["id"]
        .clone();

    let store = work.path().join("store");
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["train", "a.toml", longer[0], longer[1], "-q"])
        .current_dir(work.path())
        .env("GRAFT_STORE", &store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a few checkpoints are on record, wherever it is then.
    let run = uninterrupted["run"].as_str().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let shown = graft(&store, &["show", run, "--json"]);
        if shown.status.success()
            && json(&stdout(&shown))["checkpoints"]
                .as_array()
                .is_some_and(|c| c.len() >= 3)
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let log = json(&graft_ok(&store, &["log", "--json"]));
    assert_eq!(log[0]["status"], "interrupted");
    let resumed = json(&ok_in(
        work.path(),
        &store,
        &["resume", run, "-q", "--json"],
    ));
    assert_eq!(
        resumed["checkpoints"].as_array().unwrap().last().unwrap()["id"],
        final_id
    );
    assert_eq!(
        json(&graft_ok(
            &store,
            &["show", &format!("{run}@last"), "--json"]
        ))["id"],
        final_id
    );
    // Every step is recorded exactly once across the two executions.
    let loss = json(&graft_ok(
        &store,
        &["metrics", run, "--series", "loss", "--json"],
    ));
    let steps: Vec<u64> = loss["series"]["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=40).collect::<Vec<_>>());
    graft_ok(&store, &["verify"]);

    let reproduced = ok_in(work.path(), &reference_store, &["reproduce", run, "-q"]);
    assert!(reproduced.contains("reproduces"), "{reproduced}");
}

#[test]
fn a_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint() {
    let work = workspace();
    let store = work.path().join("store");
    let output = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["train", "a.toml", "-q"])
        .current_dir(work.path())
        .env("GRAFT_STORE", &store)
        .env("GRAFT_INJECT_NAN_AT_STEP", "7")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("the loss became NaN at step 7"),
        "{}",
        stderr(&output)
    );
    let log = json(&graft_ok(&store, &["log", "--json"]));
    assert_eq!(log[0]["status"], "failed");
    let run = log[0]["id"].as_str().unwrap();
    let last = json(&graft_ok(
        &store,
        &["show", &format!("{run}@last"), "--json"],
    ));
    assert_eq!(last["step"], 4);
    let show = json(&graft_ok(&store, &["show", run, "--json"]));
    assert!(show["executions"][0]["error"]
        .as_str()
        .unwrap()
        .contains("step 7"));
}

#[test]
fn eval_export_and_generate_agree_with_what_training_recorded() {
    let work = workspace();
    let store = work.path().join("store");
    ok_in(
        work.path(),
        &store,
        &["train", "a.toml", "--tag", "task-a", "-q"],
    );
    let best = json(&graft_ok(&store, &["show", "task-a@best", "--json"]));
    let recorded = best["metrics"]["eval_loss"].as_f64().unwrap();
    let eval_args = [
        "--data",
        "reverse-val.jsonl",
        "--template",
        "plain",
        "--seq-len",
        "64",
        "--json",
    ];
    let mut args = vec!["eval", "task-a@best"];
    args.extend(eval_args);
    let evaluated = json(&ok_in(work.path(), &store, &args));
    assert!(
        (evaluated["loss"].as_f64().unwrap() - recorded).abs() < 1e-5,
        "{evaluated} vs {recorded}"
    );

    // A merged export is a plain model with the same behaviour.
    let merged = work.path().join("merged");
    ok_in(
        work.path(),
        &store,
        &[
            "export",
            "task-a@best",
            "--merged",
            merged.to_str().unwrap(),
        ],
    );
    let model = json(&ok_in(
        work.path(),
        &store,
        &["model", "add", merged.to_str().unwrap(), "--json"],
    ));
    let mut args = vec!["eval", model["id"].as_str().unwrap()];
    args.extend(eval_args);
    let merged_eval = json(&ok_in(work.path(), &store, &args));
    assert!(
        (merged_eval["loss"].as_f64().unwrap() - recorded).abs() < 1e-4,
        "{merged_eval} vs {recorded}"
    );

    let peft = work.path().join("adapter");
    ok_in(
        work.path(),
        &store,
        &["export", "task-a@best", "--peft", peft.to_str().unwrap()],
    );
    let config = json(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap());
    assert_eq!(config["r"], 4);
    assert!(peft.join("adapter_model.safetensors").is_file());

    let generated = ok_in(
        work.path(),
        &store,
        &[
            "generate",
            "task-a@best",
            "user: Reverse the string: abc",
            "--max-tokens",
            "8",
        ],
    );
    assert!(
        generated.starts_with("user: Reverse the string: abc"),
        "{generated}"
    );
}

#[test]
fn a_fork_with_another_data_format_fails_unless_allowed() {
    let work = workspace();
    let store = work.path().join("store");
    ok_in(
        work.path(),
        &store,
        &[
            "train",
            "a.toml",
            "--tag",
            "task-a",
            "-q",
            "--set",
            "train.steps=4",
        ],
    );
    let texts: Vec<String> = (0..32)
        .map(|i| serde_json::json!({"text": format!("plain text number {i}")}).to_string())
        .collect();
    std::fs::write(work.path().join("text.jsonl"), texts.join("\n") + "\n").unwrap();
    std::fs::write(
        work.path().join("c.toml"),
        "[data]\ntrain = [{ path = \"text.jsonl\", format = \"text\" }]\nseq_len = 32\n[train]\nsteps = 2\n",
    )
    .unwrap();
    let runs_before = json(&graft_ok(&store, &["log", "--json"]))
        .as_array()
        .unwrap()
        .len();
    let refused = run_in(
        work.path(),
        &store,
        &["fork", "task-a@last", "c.toml", "-q"],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("allow_format_change"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        json(&graft_ok(&store, &["log", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        runs_before,
        "nothing recorded"
    );
    ok_in(
        work.path(),
        &store,
        &[
            "fork",
            "task-a@last",
            "c.toml",
            "-q",
            "--set",
            "data.allow_format_change=true",
        ],
    );
    assert_eq!(
        json(&graft_ok(&store, &["log", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        runs_before + 1
    );
}

#[test]
fn a_run_that_cannot_start_leaves_no_model_or_run_on_record() {
    let work = workspace();
    let store = work.path().join("store");
    let refused = run_in(
        work.path(),
        &store,
        &["train", "a.toml", "-q", "--set", "data.seq_len=6"],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("seq_len = 6"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        json(&graft_ok(&store, &["model", "ls", "--json"])),
        serde_json::json!([])
    );
    assert_eq!(
        json(&graft_ok(&store, &["log", "--json"])),
        serde_json::json!([])
    );
}

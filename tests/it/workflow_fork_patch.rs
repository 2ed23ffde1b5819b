//! Fork files are patches over the parent's recipe (issue 14, item 5):
//! through the binary, on the shared llama-tiny fixture.

use crate::common::llama_tiny as fixture;
use crate::common::write_synth;
use crate::common::{graft_ok, stderr, stdout};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn ok_in(dir: &Path, store: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(dir)
        .env("GRAFT_STORE", store)
        .output()
        .unwrap();
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

/// Every dotted key of a JSON object with its value.
fn flatten(value: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match value.as_object() {
        Some(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(child, &path, out);
            }
        }
        // An absent section reads as null: no key.
        None if value.is_null() => {}
        None => out.push((prefix.to_string(), value.clone())),
    }
}

fn changed_keys(parent: &Value, child: &Value) -> Vec<String> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    flatten(parent, "", &mut a);
    flatten(child, "", &mut b);
    let mut keys: Vec<String> = a.iter().chain(&b).map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| {
            a.iter().find(|(key, _)| key == k).map(|(_, v)| v)
                != b.iter().find(|(key, _)| key == k).map(|(_, v)| v)
        })
        .collect()
}

#[test]
fn a_fork_file_with_only_lr_and_steps_keeps_every_other_setting_of_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let store = work.join("store");
    write_synth(
        work,
        &[
            ("reverse.jsonl", "reverse", 48, 1),
            ("reverse-val.jsonl", "reverse", 12, 2),
            ("arith.jsonl", "arithmetic", 48, 3),
            ("arith-more.jsonl", "arithmetic", 48, 7),
        ],
    );
    // Every setting here differs from graft's default.
    std::fs::write(
        work.join("a.toml"),
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
eval_examples = 8

[optim]
lr = 5e-3
batch_size = 4
warmup_steps = 2
schedule = "linear"

[train]
steps = 4
seed = 5
eval_every = 2
checkpoint_every = 2
keep_last = 1
"#,
            fixture().display()
        ),
    )
    .unwrap();
    // The middle fork sets replay and ancestor evaluation on new data.
    std::fs::write(
        work.join("b.toml"),
        r#"[data]
train = [{ path = "arith.jsonl", format = "chat" }]
replay = { ratio = 0.25, from = "ancestors" }
eval_ancestors = true

[train]
steps = 3
"#,
    )
    .unwrap();
    std::fs::write(
        work.join("c.toml"),
        "[optim]\nlr = 1e-3\n\n[train]\nsteps = 2\n",
    )
    .unwrap();
    ok_in(work, &store, &["train", "a.toml", "--tag", "a", "-q"]);
    ok_in(work, &store, &["fork", "a", "b.toml", "--tag", "b", "-q"]);
    ok_in(work, &store, &["fork", "b", "c.toml", "--tag", "c", "-q"]);
    let recipe = |tag: &str| json(&graft_ok(&store, &["show", tag, "--json"]))["recipe"].clone();
    let (a, b, c) = (recipe("a"), recipe("b"), recipe("c"));

    let config_changes = |parent: &Value, child: &Value| -> Vec<String> {
        changed_keys(&parent["config"], &child["config"])
    };
    assert_eq!(
        config_changes(&a, &b),
        ["data.eval_ancestors", "data.replay.ratio", "train.steps"],
        "b changes what its file names, nothing else: a {} b {}",
        a["config"],
        b["config"]
    );
    assert_eq!(
        config_changes(&b, &c),
        ["optim.lr", "train.steps"],
        "c keeps b's batch size, warmup, template, replay, ...: b {} c {}",
        b["config"],
        c["config"]
    );
    assert_eq!(c["seed"], a["seed"], "the seed is the parent's");
    assert_eq!(c["config"]["optim"]["batch_size"], 4);
    assert_eq!(c["config"]["optim"]["warmup_steps"], 2);
    assert_eq!(c["config"]["data"]["template"], "plain");
    assert_eq!(c["config"]["data"]["replay"]["ratio"], 0.25);
    assert_eq!(c["config"]["data"]["eval_ancestors"], true);
    let replayed = |recipe: &Value| -> Vec<String> {
        recipe["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["role"] == "replay")
            .map(|d| d["dataset"].as_str().unwrap().to_string())
            .collect()
    };
    let b_train: Vec<String> = b["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["role"] == "train")
        .map(|d| d["dataset"].as_str().unwrap().to_string())
        .collect();
    let a_train: Vec<String> = a["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["role"] == "train")
        .map(|d| d["dataset"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        replayed(&c),
        a_train,
        "c trains on b's data and replays the ancestors' (a's)"
    );

    // The words of replay.from are inherited too: with `from = "parent"`, a
    // fork of that fork on new data replays its parent's data only.
    std::fs::write(
        work.join("e.toml"),
        "[data]\ntrain = [{ path = \"arith.jsonl\", format = \"chat\" }]\nreplay = { ratio = 0.25, from = \"parent\" }\n",
    )
    .unwrap();
    std::fs::write(
        work.join("f.toml"),
        "[data]\ntrain = [{ path = \"arith-more.jsonl\", format = \"chat\" }]\n",
    )
    .unwrap();
    ok_in(work, &store, &["fork", "a", "e.toml", "--tag", "e", "-q"]);
    ok_in(work, &store, &["fork", "e", "f.toml", "--tag", "f", "-q"]);
    assert_eq!(
        replayed(&recipe("f")),
        b_train,
        "f replays its parent e's data (arith) only, not a's"
    );

    // lineage and diff show what the file wrote, not defaults.
    let lineage = json(&graft_ok(&store, &["lineage", "c", "--json"]));
    let set: Vec<&str> = lineage["hops"][0]["hyperparameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_str().unwrap())
        .collect();
    assert_eq!(set, ["optim.lr", "train.steps"], "{lineage}");
    let diff = json(&graft_ok(&store, &["diff", "b", "c", "--json"]));
    let config_keys: Vec<&str> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .filter(|k| !k.starts_with("recipe.") && !k.starts_with("datasets."))
        .collect();
    assert_eq!(config_keys, ["optim.lr", "train.steps"], "{diff}");

    // --set applies over the file.
    let d = json(&ok_in(
        work,
        &store,
        &[
            "fork",
            "b",
            "c.toml",
            "--set",
            "optim.lr=2e-3",
            "-q",
            "--json",
        ],
    ));
    let d = json(&graft_ok(
        &store,
        &["show", d["run"].as_str().unwrap(), "--json"],
    ))["recipe"]
        .clone();
    assert_eq!(d["config"]["optim"]["lr"], 2e-3);
    assert_eq!(d["config"]["optim"]["batch_size"], 4);
}

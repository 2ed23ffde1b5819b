//! Model ids from the local Hugging Face cache, through the binary: `graft model add
//! org/name` and `[model] base = "org/name"` find the snapshot `refs/main` names
//! (or `@revision`) under HF_HUB_CACHE, else HF_HOME/hub, offline; a model that is
//! not there is refused with the folder looked in; the recipe identifies the base by
//! its files' hashes, with the id as a label in the run's notes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::family_fixture as fixture;
use crate::common::write_synth;
use crate::common::{stderr, stdout};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// `root/hf/hub/models--org--tiny` with two snapshots: `abc123` (qwen3-tiny, named by
/// refs/main) and `def456` (gemma3-tiny, named by no ref).
fn fake_cache(root: &Path) -> PathBuf {
    let hub = root.join("hf/hub");
    let repo = hub.join("models--org--tiny");
    copy_dir(&fixture("qwen3-tiny"), &repo.join("snapshots/abc123"));
    copy_dir(&fixture("gemma3-tiny"), &repo.join("snapshots/def456"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123").unwrap();
    hub
}

/// graft in `dir` with the store in `dir/store` and the given HF variables (the
/// others removed, so the test's own environment cannot leak in).
fn graft_env(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_graft"));
    command
        .args(args)
        .current_dir(dir)
        .env("GRAFT_STORE", dir.join("store"))
        .env("GRAFT_LOCK_TIMEOUT_MS", "60000")
        .env("HOME", dir.join("home"))
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE")
        .env_remove("XDG_CACHE_HOME");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the graft binary runs")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

fn registered_path(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    value["path"].as_str().unwrap().to_string()
}

#[test]
fn model_add_finds_an_id_in_the_hf_cache_by_refs_main_or_revision() {
    let dir = tempfile::tempdir().unwrap();
    let hub = fake_cache(dir.path());
    let hf_home = dir.path().join("hf");
    let add = |env: &[(&str, &Path)], id: &str| {
        registered_path(&ok(graft_env(
            dir.path(),
            env,
            &["model", "add", id, "--json"],
        )))
    };

    // HF_HOME/hub, refs/main -> abc123.
    let main = add(&[("HF_HOME", &hf_home)], "org/tiny");
    assert!(
        main.ends_with("models--org--tiny/snapshots/abc123"),
        "{main}"
    );
    // A revision by commit picks the other snapshot.
    let other = add(&[("HF_HOME", &hf_home)], "org/tiny@def456");
    assert!(other.ends_with("snapshots/def456"), "{other}");
    // HF_HUB_CACHE wins over HF_HOME.
    let nowhere = dir.path().join("nowhere");
    let direct = add(&[("HF_HUB_CACHE", &hub), ("HF_HOME", &nowhere)], "org/tiny");
    assert_eq!(direct, main);
    // Without either, ~/.cache/huggingface/hub.
    copy_dir(
        &fixture("phi3-tiny"),
        &dir.path()
            .join("home/.cache/huggingface/hub/models--org--phi/snapshots/0a1b"),
    );
    std::fs::create_dir_all(
        dir.path()
            .join("home/.cache/huggingface/hub/models--org--phi/refs"),
    )
    .unwrap();
    std::fs::write(
        dir.path()
            .join("home/.cache/huggingface/hub/models--org--phi/refs/main"),
        "0a1b\n",
    )
    .unwrap();
    let default = add(&[], "org/phi");
    assert!(
        default.ends_with("models--org--phi/snapshots/0a1b"),
        "{default}"
    );

    // The model ids registered equal those of the same folders given by path.
    let by_id: serde_json::Value = serde_json::from_str(&ok(graft_env(
        dir.path(),
        &[("HF_HOME", &hf_home)],
        &["model", "add", "org/tiny", "--json"],
    )))
    .unwrap();
    let by_path: serde_json::Value = serde_json::from_str(&ok(graft_env(
        dir.path(),
        &[],
        &[
            "model",
            "add",
            fixture("qwen3-tiny").to_str().unwrap(),
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(by_id["id"], by_path["id"]);
}

#[test]
fn a_model_id_missing_from_the_hf_cache_is_refused_naming_the_folder_looked_in() {
    let dir = tempfile::tempdir().unwrap();
    let hub = fake_cache(dir.path());
    let cases: [(&str, &str, String); 3] = [
        (
            "no such model",
            "org/absent",
            hub.join("models--org--absent").display().to_string(),
        ),
        (
            "no such revision",
            "org/tiny@fff999",
            hub.join("models--org--tiny/refs/fff999")
                .display()
                .to_string(),
        ),
        (
            "a ref to a snapshot that is not there",
            "org/tiny@v2",
            hub.join("models--org--tiny/snapshots/9999")
                .display()
                .to_string(),
        ),
    ];
    std::fs::write(hub.join("models--org--tiny/refs/v2"), "9999").unwrap();
    for (case, id, looked_in) in cases {
        let output = graft_env(dir.path(), &[("HF_HUB_CACHE", &hub)], &["model", "add", id]);
        assert_eq!(output.status.code(), Some(2), "{case}: {}", stderr(&output));
        let message = stderr(&output);
        assert!(
            message.contains("not in the local Hugging Face cache") && message.contains(&looked_in),
            "{case}: {message}"
        );
    }
    // An experiment naming it fails before anything is recorded, naming the key.
    std::fs::write(
        dir.path().join("a.toml"),
        "[model]\nbase = \"org/absent\"\n\n[data]\ntrain = [{ path = \"x.jsonl\", format = \"chat\" }]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("x.jsonl"), "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\"}]}\n").unwrap();
    let output = graft_env(dir.path(), &[("HF_HUB_CACHE", &hub)], &["train", "a.toml"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("model.base") && message.contains("models--org--absent"),
        "{message}"
    );
    // Nothing was recorded by the failures.
    let listed = ok(graft_env(dir.path(), &[], &["model", "ls", "--json"]));
    assert!(!listed.contains("snapshots"), "{listed}");
}

#[test]
fn train_with_a_cached_model_id_records_the_files_hashes_and_the_id_as_a_label() {
    let dir = tempfile::tempdir().unwrap();
    let hub = fake_cache(dir.path());
    write_synth(dir.path(), &[("reverse.jsonl", "reverse", 24, 1)]);
    std::fs::write(
        dir.path().join("a.toml"),
        r#"[model]
base = "org/tiny"

[adapter]
rank = 4
alpha = 8

[data]
train = [{ path = "reverse.jsonl", format = "chat" }]
seq_len = 64
template = "plain"

[optim]
lr = 5e-3
batch_size = 4

[train]
steps = 2
seed = 5
checkpoint_every = 2
"#,
    )
    .unwrap();
    let env: [(&str, &Path); 1] = [("HF_HUB_CACHE", &hub)];
    ok(graft_env(dir.path(), &env, &["train", "a.toml"]));
    let runs: serde_json::Value =
        serde_json::from_str(&ok(graft_env(dir.path(), &env, &["log", "--json"]))).unwrap();
    let text = runs.to_string();
    let run_id = text
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a run id in {text}"))
        .to_string();
    let shown: serde_json::Value = serde_json::from_str(&ok(graft_env(
        dir.path(),
        &env,
        &["show", &run_id, "--json"],
    )))
    .unwrap();
    let label = &shown["notes"]["base_hf_model"];
    assert_eq!(label["id"], "org/tiny", "{shown:#}");
    assert_eq!(label["revision"], "abc123", "{shown:#}");
    // The recipe's base is the model id of the snapshot's files, the same as the
    // fixture folder registered by path.
    let by_path: serde_json::Value = serde_json::from_str(&ok(graft_env(
        dir.path(),
        &[],
        &[
            "model",
            "add",
            fixture("qwen3-tiny").to_str().unwrap(),
            "--json",
        ],
    )))
    .unwrap();
    let model_id = by_path["id"].as_str().unwrap();
    assert!(
        shown.to_string().contains(model_id),
        "the run's base is {model_id}: {shown:#}"
    );
}

//! Shared helpers for integration tests: temp stores, the real binary, and a
//! small lineage recorded through the real recorder.
#![allow(dead_code)]

pub mod ui;

use graft::store::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

pub fn graft(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .env("GRAFT_STORE", store)
        .env("GRAFT_LOCK_TIMEOUT_MS", "60000")
        .output()
        .expect("the graft binary runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Run graft and insist on success, returning stdout.
pub fn graft_ok(store: &Path, args: &[&str]) -> String {
    let output = graft(store, args);
    assert!(
        output.status.success(),
        "graft {args:?} failed: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

/// Register a fake base model whose "tensors" are small objects.
pub fn add_model(store: &Store, name: &str) -> Id {
    let objects = store.objects();
    let config = objects
        .put_bytes(format!("config of {name}").as_bytes())
        .unwrap();
    let tokenizer = objects.put_bytes(b"tokenizer").unwrap();
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "embed".to_string(),
        objects
            .put_bytes(format!("{name} embed").as_bytes())
            .unwrap(),
    );
    let id = ModelRecord::compute_id(config, tokenizer, &tensors);
    let index = store.index().unwrap();
    index
        .put_model(&ModelRecord {
            id,
            path: store.root().display().to_string(),
            copied: true,
            config,
            tokenizer,
            tensors,
            files: BTreeMap::new(),
            summary: Canon::map().with("name", name),
            added_at: chrono::Utc::now(),
        })
        .unwrap();
    index.flush().unwrap();
    id
}

pub fn dataset(store: &Store, content: &str) -> DatasetRecord {
    let file_object = store.objects().put_bytes(content.as_bytes()).unwrap();
    let spec = Canon::map().with("format", "chat").with("seq_len", 64u64);
    DatasetRecord {
        id: DatasetRecord::compute_id(file_object, &spec),
        file_object,
        path: "data.jsonl".into(),
        spec,
        stats: Canon::map(),
        replay_of: None,
        added_at: chrono::Utc::now(),
    }
}

pub fn recipe(model: Id, start: Option<Id>, lr: f64, seed: u64, data: &DatasetRecord) -> Recipe {
    Recipe {
        config: Canon::map()
            .with(
                "optim",
                Canon::map().with("lr", lr).with("batch_size", 8u64),
            )
            .with("train", Canon::map().with("steps", 30u64))
            .with(
                "adapter",
                Canon::map().with("kind", "lora").with("rank", 8u64),
            ),
        base_model: model,
        start_checkpoint: start,
        datasets: vec![DatasetUse {
            dataset: data.id,
            role: "train".into(),
            name: "data.jsonl".into(),
            weight: 1.0,
        }],
        seed,
        graft_version: "test".into(),
    }
}

/// Record a run of `steps` steps with a checkpoint every 10 and a falling
/// eval loss; returns the run id and its checkpoint ids.
pub fn record_run(
    store: &Store,
    recipe: &Recipe,
    data: &DatasetRecord,
    steps: u64,
    loss_offset: f64,
) -> (Id, Vec<Id>) {
    let mut recorder = StoreRecorder::new(store.clone());
    let (run, _) = recorder
        .begin(
            recipe,
            std::slice::from_ref(data),
            ExecutionKind::Train,
            BTreeMap::new(),
        )
        .unwrap();
    let mut checkpoints = Vec::new();
    for step in 1..=steps {
        let loss = loss_offset + 1.0 / step as f64;
        recorder
            .log_metrics(
                step,
                &[
                    ("loss", loss),
                    (
                        "lr",
                        recipe
                            .config
                            .get_path("optim.lr")
                            .and_then(Canon::as_f64)
                            .unwrap_or(0.0),
                    ),
                ],
            )
            .unwrap();
        if step % 10 == 0 {
            let eval_loss = loss_offset + 2.0 / step as f64;
            recorder
                .log_metrics(step, &[("eval_loss", eval_loss)])
                .unwrap();
            let tensor = recorder
                .put_object(format!("{} lora at {step}", run.id).as_bytes())
                .unwrap();
            let mut metrics = BTreeMap::new();
            metrics.insert("eval_loss".to_string(), eval_loss);
            checkpoints.push(
                recorder
                    .add_checkpoint(
                        step,
                        BTreeMap::from([("lora_a".to_string(), tensor)]),
                        BTreeMap::new(),
                        metrics,
                    )
                    .unwrap(),
            );
        }
    }
    recorder
        .end(ExecutionStatus::Completed, None, None)
        .unwrap();
    (run.id, checkpoints)
}

/// Run graft in `dir` (relative paths in experiment files resolve there).
pub fn graft_in(dir: &Path, store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(dir)
        .env("GRAFT_STORE", store)
        .env("GRAFT_LOCK_TIMEOUT_MS", "60000")
        .output()
        .expect("the graft binary runs")
}

/// Run graft in `dir` and insist on success, returning stdout.
pub fn graft_ok_in(dir: &Path, store: &Path, args: &[&str]) -> String {
    let output = graft_in(dir, store, args);
    assert!(
        output.status.success(),
        "graft {args:?} failed: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

/// Run graft in `dir`, insist on failure with a user error (exit 2),
/// returning stderr.
pub fn graft_fails_in(dir: &Path, store: &Path, args: &[&str]) -> String {
    let output = graft_in(dir, store, args);
    assert_eq!(
        output.status.code(),
        Some(2),
        "graft {args:?} should fail on bad input: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    stderr(&output)
}

/// The quickstart, run once per test binary in a temp dir that every test
/// reading its store shares (it is the most expensive thing the tests do).
/// Tests must not write into this store: copy it with [`copy_dir`] first.
pub struct Quickstart {
    pub dir: tempfile::TempDir,
    pub output: Output,
}

impl Quickstart {
    pub fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }
}

pub fn quickstart() -> &'static Quickstart {
    static RUN: std::sync::OnceLock<Quickstart> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments"),
            &dir.path().join("experiments"),
        );
        let output = Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["quickstart", "--json"])
            .current_dir(dir.path())
            .env_remove("GRAFT_STORE")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "the quickstart failed: {}\n{}",
            stderr(&output),
            stdout(&output)
        );
        Quickstart { dir, output }
    })
}

pub fn copy_dir(from: &Path, to: &Path) {
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

/// A reference checkpoint of shared/fixtures (`llama-tiny`, `qwen2-tiny`).
pub fn shared_fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures")
        .join(name)
}

/// The shared llama-tiny checkpoint most workflow tests train on.
pub fn llama_tiny() -> std::path::PathBuf {
    shared_fixture("llama-tiny")
}

/// A reference checkpoint of this repository's tests/fixtures (the model families).
pub fn family_fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Writes synthetic task files into `dir`: `(file name, task, examples, seed)` each.
pub fn write_synth(dir: &Path, files: &[(&str, &str, u64, u64)]) {
    for &(name, task, n, seed) in files {
        let lines = graft::data::synth(task, n, seed).unwrap();
        std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
    }
}

/// A temp dir with a synthetic `reverse.jsonl` and `a.toml`: a short LoRA run (rank 4,
/// 6 steps, a checkpoint every 3) on the model folder `base`.
pub fn lora_workspace(base: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_synth(dir.path(), &[("reverse.jsonl", "reverse", 48, 1)]);
    std::fs::write(
        dir.path().join("a.toml"),
        format!(
            r#"[model]
base = "{}"

[adapter]
rank = 4
alpha = 8

[data]
train = [{{ path = "{}/reverse.jsonl", format = "chat" }}]
seq_len = 64
template = "plain"

[optim]
lr = 5e-3
batch_size = 4

[train]
steps = 6
seed = 5
eval_every = 3
checkpoint_every = 3
"#,
            base.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    dir
}

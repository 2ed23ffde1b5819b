//! Shared by the `reliability_*` tests: a work folder with synthetic data and
//! an experiment on the shared llama-tiny fixture, the real binary, and a
//! fingerprint of a store's index to tell whether a failing command changed
//! it.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama-tiny")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_graft")
}

/// The LoRA experiment the reliability tests train: `steps` steps, an eval
/// and a checkpoint every 4, retention on (so retirement is exercised).
pub fn experiment(steps: u64, seed: u64) -> String {
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
steps = {steps}
seed = {seed}
eval_every = 4
checkpoint_every = 4
keep_last = 2
keep_best = 1
"#,
        fixture().display()
    )
}

/// A temp folder with `reverse.jsonl`, `reverse-val.jsonl`, `arith.jsonl`
/// and `exp.toml` (see [`experiment`]).
pub fn workspace(steps: u64, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, task, n, data_seed) in [
        ("reverse.jsonl", "reverse", 64, 1),
        ("reverse-val.jsonl", "reverse", 16, 2),
        ("arith.jsonl", "arithmetic", 64, 3),
    ] {
        let lines = graft::data::synth(task, n, data_seed).unwrap();
        std::fs::write(dir.path().join(name), lines.join("\n") + "\n").unwrap();
    }
    std::fs::write(dir.path().join("exp.toml"), experiment(steps, seed)).unwrap();
    dir
}

/// A `graft` command in `dir` against `store`, with the test hooks cleared.
pub fn command(dir: &Path, store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin());
    command
        .args(args)
        .current_dir(dir)
        .env("GRAFT_STORE", store)
        .env("GRAFT_LOCK_TIMEOUT_MS", "120000")
        .env_remove("GRAFT_INJECT_NAN_AT_STEP")
        .env_remove("GRAFT_FAIL_JOURNAL_AFTER_BYTES")
        .env_remove("GRAFT_FAIL_OBJECT_WRITES_AFTER")
        .stdin(Stdio::null());
    command
}

pub fn run(dir: &Path, store: &Path, args: &[&str]) -> Output {
    command(dir, store, args)
        .output()
        .expect("the graft binary runs")
}

pub fn out(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

pub fn err(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

pub fn ok(dir: &Path, store: &Path, args: &[&str]) -> String {
    let output = run(dir, store, args);
    assert!(
        output.status.success(),
        "graft {args:?} failed ({:?}):\n{}\n{}",
        output.status.code(),
        err(&output),
        out(&output)
    );
    out(&output)
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Run a failing command: it must exit non-zero (not by a signal) and say
/// `error:`; returns stderr.
pub fn fails(dir: &Path, store: &Path, args: &[&str]) -> String {
    let output = run(dir, store, args);
    let stderr = err(&output);
    assert!(
        matches!(output.status.code(), Some(code) if code != 0),
        "graft {args:?} should fail with an exit code, got {:?}:\n{stderr}\n{}",
        output.status,
        out(&output)
    );
    assert!(
        stderr.contains("error:") && !stderr.contains("panicked"),
        "graft {args:?}: a clear error, not a panic:\n{stderr}"
    );
    stderr
}

/// Every record of the index, hashed per tree (the `journals` bookkeeping
/// tree aside), with counts: equal fingerprints mean an unchanged record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub trees: BTreeMap<&'static str, (usize, String)>,
}

impl Fingerprint {
    pub fn count(&self, tree: &str) -> usize {
        self.trees.get(tree).map(|t| t.0).unwrap_or(0)
    }
}

pub fn fingerprint(store: &Path) -> Fingerprint {
    let store = graft::store::Store::open(store).unwrap();
    let index = store.index().unwrap();
    let trees: [(&'static str, &sled::Tree); 11] = [
        ("models", &index.models),
        ("datasets", &index.datasets),
        ("runs", &index.runs),
        ("executions", &index.executions),
        ("checkpoints", &index.checkpoints),
        ("metrics", &index.metrics),
        ("refs", &index.refs),
        ("runs_by_seq", &index.runs_by_seq),
        ("run_checkpoints", &index.run_checkpoints),
        ("series", &index.series),
        ("summaries", &index.summaries),
    ];
    let mut out = BTreeMap::new();
    for (name, tree) in trees {
        let mut hasher = blake3::Hasher::new();
        let mut count = 0;
        for entry in tree.iter() {
            let (key, value) = entry.unwrap();
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(&key);
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(&value);
            count += 1;
        }
        out.insert(name, (count, hasher.finalize().to_hex()[..16].to_string()));
    }
    Fingerprint { trees: out }
}

/// Object files present (temp files aside).
pub fn object_files(store: &Path) -> std::collections::BTreeSet<String> {
    let mut set = std::collections::BTreeSet::new();
    let root = store.join("objects");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return set;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.len() == 2 && entry.path().is_dir() {
            for inner in std::fs::read_dir(entry.path()).unwrap().flatten() {
                set.insert(format!("{name}{}", inner.file_name().to_string_lossy()));
            }
        }
    }
    set
}

/// Stray temp files left by interrupted object writes.
pub fn temp_files(store: &Path) -> usize {
    std::fs::read_dir(store.join("objects"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                .count()
        })
        .unwrap_or(0)
}

/// `graft verify --json`, asserting it is clean.
pub fn verify_clean(dir: &Path, store: &Path) -> Value {
    let output = run(dir, store, &["verify", "--json"]);
    let report = json(&out(&output));
    assert!(
        output.status.success(),
        "verify is not clean: {report:#}\n{}",
        err(&output)
    );
    report
}

/// A run's series from `graft metrics RUN --json`: name -> [(step, value)].
pub fn series(dir: &Path, store: &Path, run: &str) -> BTreeMap<String, Vec<(u64, f64)>> {
    let value = json(&ok(dir, store, &["metrics", run, "--json"]));
    value["series"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, points)| {
            let points = points
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap_or(f64::NAN)))
                .collect();
            (name.clone(), points)
        })
        .collect()
}

/// Live (not retired) checkpoints of a run, as (step, id), and the id of the
/// last one.
pub fn live_checkpoints(dir: &Path, store: &Path, run: &str) -> Vec<(u64, String)> {
    let shown = json(&ok(dir, store, &["show", run, "--json"]));
    shown["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["retired"] != Value::Bool(true))
        .map(|c| {
            (
                c["step"].as_u64().unwrap(),
                c["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A small deterministic generator (splitmix64), so tests need no rand
/// dev-dependency and a seed replays a run of the harness exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low).max(1)
    }

    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.next_u64() % denominator < numerator
    }
}

//! Issue 14's Ctrl-C handling and smaller workflow defects, through the binary:
//! a run stopped by SIGINT or SIGTERM checkpoints the step it finished, is
//! recorded as interrupted and resumes to the checkpoints of an uninterrupted
//! run; bad input is refused before anything is written.

mod common;
use common::{graft_fails_in, graft_in, graft_ok_in, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama-tiny")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A work folder with reverse-task data and a LoRA experiment `run.toml`.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        for (name, n, seed) in [("train.jsonl", 64, 1), ("val.jsonl", 8, 2)] {
            let lines = graft::data::synth("reverse", n, seed).unwrap();
            std::fs::write(dir.path().join(name), lines.join("\n") + "\n").unwrap();
        }
        std::fs::write(
            dir.path().join("run.toml"),
            format!(
                r#"[model]
base = "{}"

[adapter]
rank = 4
alpha = 8

[data]
train = [{{ path = "train.jsonl", format = "chat" }}]
eval = [{{ path = "val.jsonl", name = "reverse" }}]
seq_len = 64
template = "plain"

[optim]
lr = 5e-3
batch_size = 4
warmup_steps = 2

[train]
steps = 200
seed = 5
eval_every = 10
checkpoint_every = 10
keep_last = 2
keep_best = 1
"#,
                fixture().display()
            ),
        )
        .unwrap();
        Work { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    fn ok(&self, args: &[&str]) -> String {
        graft_ok_in(self.path(), &self.store(), args)
    }

    fn fails(&self, args: &[&str]) -> String {
        graft_fails_in(self.path(), &self.store(), args)
    }

    /// `graft train run.toml` in the background, stderr to `train.err`.
    fn spawn_train(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["train", "run.toml"])
            .current_dir(self.path())
            .env("GRAFT_STORE", self.store())
            .env("GRAFT_LOCK_TIMEOUT_MS", "60000")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path().join("train.err")).unwrap())
            .spawn()
            .unwrap()
    }

    /// The steps of `run` whose loss is on record.
    fn logged_steps(&self, run: &str) -> Vec<u64> {
        let output = graft_in(
            self.path(),
            &self.store(),
            &["metrics", run, "--series", "loss", "--json"],
        );
        if !output.status.success() {
            return Vec::new();
        }
        json(&stdout(&output))["series"]["loss"]
            .as_array()
            .map(|points| points.iter().filter_map(|p| p[0].as_u64()).collect())
            .unwrap_or_default()
    }

    /// Waits until `run` has logged a few steps of the running `child`.
    fn wait_for_steps(&self, child: &mut Child, run: &str) {
        let started = Instant::now();
        while self.logged_steps(run).len() < 3 {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before it could be interrupted"
            );
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "no step logged"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `run`'s checkpoints that retention keeps, as (step, id).
    fn live_checkpoints(&self, run: &str) -> Vec<(u64, String)> {
        json(&self.ok(&["show", run, "--json"]))["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["retired"] != true)
            .map(|c| (c["step"].as_u64().unwrap(), c["id"].to_string()))
            .collect()
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    let sent = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(sent, 0, "kill({}, {signal})", child.id());
}

/// The run id `run.toml` gets, from a store where it ran to the end.
fn uninterrupted(reference: &Work) -> (String, Vec<(u64, String)>) {
    let outcome = json(&reference.ok(&["train", "run.toml", "-q", "--json"]));
    let run = outcome["run"].as_str().unwrap().to_string();
    let live = reference.live_checkpoints(&run);
    (run, live)
}

#[test]
fn ctrl_c_checkpoints_the_step_it_finished_and_resume_completes_the_uninterrupted_run() {
    let reference = Work::new();
    let (run, reference_live) = uninterrupted(&reference);

    let work = Work::new();
    let mut child = work.spawn_train();
    work.wait_for_steps(&mut child, &run);
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(work.path().join("train.err")).unwrap();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("stopping: writing a checkpoint"), "{said}");
    assert!(said.contains("interrupted"), "{said}");
    assert!(
        said.contains(&format!("graft resume {}", &run[..8])),
        "{said}"
    );

    // Recorded as interrupted, with a checkpoint at the last step it logged.
    let log = json(&work.ok(&["log", "--json"]));
    assert_eq!(log[0]["status"], "interrupted", "{log}");
    let steps = work.logged_steps(&run);
    let stopped_at = *steps.last().unwrap();
    assert!(stopped_at < 200, "stopped at {stopped_at}");
    assert_eq!(steps, (1..=stopped_at).collect::<Vec<_>>());
    assert!(
        said.contains(&format!("stopped at step {stopped_at}")),
        "{said}"
    );
    assert_eq!(
        work.live_checkpoints(&run).last().unwrap().0,
        stopped_at,
        "a checkpoint at the step it stopped"
    );

    // A new `train` of the same recipe points at resume; resume finishes it
    // with the checkpoints an uninterrupted run keeps, each step logged once.
    assert!(work
        .fails(&["train", "run.toml", "-q"])
        .contains("graft resume"));
    work.ok(&["resume", &run, "-q"]);
    assert_eq!(work.live_checkpoints(&run), reference_live);
    assert_eq!(work.logged_steps(&run), (1..=200).collect::<Vec<_>>());
    let log = json(&work.ok(&["log", "--json"]));
    assert_eq!(log[0]["status"], "completed", "{log}");
    work.ok(&["verify"]);
}

#[test]
fn sigterm_stops_cleanly_and_a_second_signal_stops_at_once() {
    let work = Work::new();
    let (run, _) = uninterrupted(&Work::new());

    // SIGTERM: the same clean stop as Ctrl-C, exit 128 + 15.
    let mut child = work.spawn_train();
    work.wait_for_steps(&mut child, &run);
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(work.path().join("train.err")).unwrap();
    assert_eq!(status.code(), Some(143), "{said}");
    assert!(said.contains("stopped at step"), "{said}");
    let first_stop = *work.logged_steps(&run).last().unwrap();

    // Resumed, then two signals back to back: the second exits at once,
    // without the clean stop's checkpoint and message.
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["resume", &run])
        .current_dir(work.path())
        .env("GRAFT_STORE", work.store())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("resume.err")).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while work.logged_steps(&run).len() < first_stop as usize + 3 {
        assert!(child.try_wait().unwrap().is_none(), "resume ended too soon");
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no step logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, libc::SIGINT);
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(work.path().join("resume.err")).unwrap();
    assert!(
        matches!(status.code(), Some(130 | 143)),
        "{status:?}: {said}"
    );
    assert!(!said.contains("stopped at step"), "{said}");

    // The record is still sound and the run still resumes to the end.
    work.ok(&["resume", &run, "-q"]);
    assert_eq!(work.logged_steps(&run), (1..=200).collect::<Vec<_>>());
    work.ok(&["verify"]);
}

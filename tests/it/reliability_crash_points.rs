//! Crashes at exact points of recording: a training process (this test
//! binary re-run as a child) records through a recorder that aborts the
//! process at a chosen call: mid checkpoint (after some of its objects),
//! right after a checkpoint is recorded but before retention retires the
//! checkpoints it no longer keeps, between steps with metrics buffered, at the end.
//! `graft resume` must then end exactly where an uninterrupted run ends: the
//! same last checkpoint, the same kept (not retired) checkpoints, every
//! metric step once, `verify` clean.

use crate::reliability_support::*;
use graft::store::{
    Canon, DatasetRecord, ExecutionKind, ExecutionRecord, ExecutionStatus, Id, Recipe, Recorder,
    RunRecord, Store, StoreRecorder,
};
use std::collections::BTreeMap;
use std::path::Path;

const STEPS: u64 = 16;

/// Aborts the process at the `n`-th call of `site`.
struct Crashing {
    inner: StoreRecorder,
    site: String,
    n: usize,
    calls: BTreeMap<&'static str, usize>,
    last_step: u64,
}

impl Crashing {
    fn at(&mut self, site: &'static str) {
        let count = self.calls.entry(site).or_default();
        *count += 1;
        if site == self.site && *count == self.n {
            eprintln!("crashing at {site} #{}", self.n);
            std::process::abort();
        }
    }
}

impl Recorder for Crashing {
    fn begin(
        &mut self,
        recipe: &Recipe,
        datasets: &[DatasetRecord],
        kind: ExecutionKind,
        notes: BTreeMap<String, Canon>,
    ) -> graft::store::Result<(RunRecord, ExecutionRecord)> {
        let begun = self.inner.begin(recipe, datasets, kind, notes)?;
        self.at("after-begin");
        Ok(begun)
    }
    fn log_metrics(&mut self, step: u64, values: &[(&str, f64)]) -> graft::store::Result<()> {
        self.last_step = self.last_step.max(step);
        self.inner.log_metrics(step, values)?;
        self.at("after-metrics");
        if self.site == "after-durable-metrics" {
            // As if the flush timer had just fired.
            let next = self
                .calls
                .get("after-durable-metrics")
                .copied()
                .unwrap_or(0)
                + 1;
            if next == self.n {
                self.inner.flush()?;
            }
            self.at("after-durable-metrics");
        }
        Ok(())
    }
    fn flush(&mut self) -> graft::store::Result<()> {
        self.inner.flush()
    }
    fn put_object(&mut self, bytes: &[u8]) -> graft::store::Result<Id> {
        self.at("before-object");
        self.inner.put_object(bytes)
    }
    fn add_checkpoint(
        &mut self,
        step: u64,
        tensors: BTreeMap<String, Id>,
        state: BTreeMap<String, Id>,
        metrics: BTreeMap<String, f64>,
    ) -> graft::store::Result<Id> {
        self.at("before-checkpoint");
        let id = self.inner.add_checkpoint(step, tensors, state, metrics)?;
        self.at("after-checkpoint");
        Ok(id)
    }
    fn retire_checkpoint(&mut self, checkpoint: Id) -> graft::store::Result<()> {
        self.at("before-retire");
        self.inner.retire_checkpoint(checkpoint)
    }
    fn note(&mut self, key: &str, value: Canon) -> graft::store::Result<()> {
        self.inner.note(key, value)
    }
    fn end(
        &mut self,
        status: ExecutionStatus,
        error: Option<String>,
        reason: Option<String>,
    ) -> graft::store::Result<()> {
        self.at("before-end");
        self.inner.end(status, error, reason)
    }
}

/// Not a test of its own: the body of a training process that crashes.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var("GRAFT_TEST_CRASH") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (store, site, n) = (
        Path::new(parts[0]),
        parts[1].to_string(),
        parts[2].parse().unwrap(),
    );
    let store = Store::open_or_init(store).unwrap();
    // `resume`: continue the store's one run from its last kept checkpoint,
    // as `graft resume` does.
    let (plan, kind) = if parts.get(3) == Some(&"resume") {
        let index = store.index().unwrap();
        let run = index.all_runs().unwrap().remove(0);
        let last = index
            .run_checkpoints(&run.id)
            .unwrap()
            .into_iter()
            .rfind(|c| !c.retired)
            .unwrap();
        let model = index.get_model(&run.recipe.base_model).unwrap().unwrap();
        let plan = graft::train::Plan::of_recorded_run(run.recipe, model);
        (plan, ExecutionKind::Resume(last.id))
    } else {
        let experiment = graft::train::Experiment::load(Path::new("exp.toml"), &[]).unwrap();
        let plan = graft::train::plan(&store, &experiment).unwrap();
        (plan, ExecutionKind::Train)
    };
    let mut recorder = Crashing {
        inner: StoreRecorder::new(store.clone()),
        site,
        n,
        calls: BTreeMap::new(),
        last_step: 0,
    };
    let outcome = graft::train::execute::<graft::model::CpuTrainBackend>(
        &Default::default(),
        &store,
        &plan,
        kind,
        &graft::compute::Compute::new(Default::default(), Default::default()),
        &mut recorder,
        &mut graft::train::Silent,
    );
    if recorder.site == "none" {
        eprintln!(
            "error: {}",
            outcome.err().map(|e| e.to_string()).unwrap_or_default()
        );
        eprintln!("stopped after step {}", recorder.last_step);
        return;
    }
    outcome.unwrap();
    panic!("the crash site {spec} was never reached");
}

fn crash_at(dir: &Path, store: &Path, site: &str, n: usize) {
    crash_in(dir, store, site, n, "train")
}

fn crash_in(dir: &Path, store: &Path, site: &str, n: usize, mode: &str) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reliability_crash_points::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .current_dir(dir)
        .env(
            "GRAFT_TEST_CRASH",
            format!("{}|{site}|{n}|{mode}", store.display()),
        )
        .output()
        .unwrap();
    let stderr = err(&output);
    assert!(
        !output.status.success() && stderr.contains("crashing at"),
        "{site} #{n}: {stderr}"
    );
}

#[test]
fn a_crash_at_each_recording_point_resumes_to_the_uninterrupted_result() {
    let work = workspace(STEPS, 5);
    let dir = work.path();
    let reference = json(&ok(
        dir,
        &dir.join("reference"),
        &["train", "exp.toml", "-q", "--json"],
    ));
    let run = reference["run"].as_str().unwrap().to_string();
    let reference_live = live_checkpoints(dir, &dir.join("reference"), &run);
    let reference_series = series(dir, &dir.join("reference"), &run);
    assert!(
        reference_live.len() < (STEPS / 4) as usize,
        "retention retires some checkpoints"
    );

    // Checkpoints fall at steps 4, 8, 12, 16; retention first retires one at
    // step 12 (the third checkpoint). A checkpoint is about 90 objects.
    let sites = [
        ("after-begin", 1),
        ("after-metrics", 10),
        ("before-object", 130),
        ("before-checkpoint", 2),
        ("after-checkpoint", 3),
        ("before-retire", 1),
        ("after-checkpoint", 4),
        ("before-end", 1),
    ];
    for (site, n) in sites {
        let store = dir.join(format!("store-{site}-{n}"));
        crash_at(dir, &store, site, n);
        let log = json(&ok(dir, &store, &["log", "--json"]));
        assert_eq!(log[0]["status"], "interrupted", "{site} #{n}");
        verify_clean(dir, &store);
        ok(dir, &store, &["resume", &run, "-q"]);
        let last = json(&ok(
            dir,
            &store,
            &["show", &format!("{run}@last"), "--json"],
        ));
        assert_eq!(
            last["id"],
            reference["checkpoints"].as_array().unwrap().last().unwrap()["id"],
            "{site} #{n}"
        );
        assert_eq!(
            live_checkpoints(dir, &store, &run),
            reference_live,
            "{site} #{n}: the same checkpoints are kept"
        );
        let got = series(dir, &store, &run);
        for name in ["loss", "grad_norm", "eval_loss", "eval/reverse/acc"] {
            assert_eq!(
                got.get(name),
                reference_series.get(name),
                "{site} #{n}: series {name}"
            );
        }
        for (name, points) in &got {
            assert!(
                points.windows(2).all(|w| w[0].0 < w[1].0),
                "{site} #{n}: {name} has a step twice"
            );
        }
        verify_clean(dir, &store);
    }
}

/// A disk that fills while a checkpoint's objects are written in the
/// background: the trainer stops at its next write with the error, instead
/// of training on to the end with nothing recorded.
#[test]
fn a_trainer_stops_when_its_recording_fails() {
    let work = workspace(24, 5);
    let dir = work.path();
    let store = dir.join("store");
    // The plan writes 5 objects (model files, data), a checkpoint about 90:
    // the second checkpoint (step 8) fails.
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reliability_crash_points::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .current_dir(dir)
        .env("GRAFT_TEST_CRASH", format!("{}|none|0", store.display()))
        .env("GRAFT_FAIL_OBJECT_WRITES_AFTER", "150")
        .output()
        .unwrap();
    let stderr = err(&output);
    assert!(stderr.contains("no space left on device"), "{stderr}");
    let step: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stopped after step "))
        .unwrap_or_else(|| panic!("{stderr}"))
        .parse()
        .unwrap();
    // It notices at its next write (the next checkpoint), not at the end.
    assert!(
        step <= 16,
        "the trainer went on to step {step} of 24 after its checkpoint at step 8 failed"
    );
    verify_clean(dir, &store);
}

/// Two resumes from the same checkpoint, each crashing after its first
/// metrics are durable but before its next checkpoint: the points each
/// logs at the resume step must not appear twice.
#[test]
fn resuming_twice_from_one_checkpoint_records_each_step_once() {
    let work = workspace(STEPS, 5);
    let dir = work.path();
    let reference = json(&ok(
        dir,
        &dir.join("reference"),
        &["train", "exp.toml", "-q", "--json"],
    ));
    let run = reference["run"].as_str().unwrap().to_string();
    let store = dir.join("store");
    // Crash between the checkpoints at steps 4 and 8, then twice more right
    // after each resume's first durable metrics (at step 4 and 5).
    crash_at(dir, &store, "after-durable-metrics", 10);
    crash_in(dir, &store, "after-durable-metrics", 2, "resume");
    crash_in(dir, &store, "after-durable-metrics", 2, "resume");
    ok(dir, &store, &["resume", &run, "-q"]);
    let shown = json(&ok(dir, &store, &["show", &run, "--json"]));
    assert_eq!(shown["executions"].as_array().unwrap().len(), 4);
    let last = json(&ok(
        dir,
        &store,
        &["show", &format!("{run}@last"), "--json"],
    ));
    assert_eq!(
        last["id"],
        reference["checkpoints"].as_array().unwrap().last().unwrap()["id"]
    );
    for (name, points) in series(dir, &store, &run) {
        let steps: Vec<u64> = points.iter().map(|p| p.0).collect();
        assert!(
            steps.windows(2).all(|w| w[0] < w[1]),
            "{name}: a step twice: {steps:?}"
        );
    }
    verify_clean(dir, &store);
}

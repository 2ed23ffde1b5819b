//! Several processes recording into one store, and a process killed with
//! SIGKILL mid-batch. Writers are this test binary re-run as a child with
//! `GRAFT_TEST_WRITER` set, recording through the real recorder.

use crate::common::*;
use graft::store::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const STEPS: u64 = 3000;

fn spawn_writer(root: &Path, seed: u64, steps: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store_crash::writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "GRAFT_TEST_WRITER",
            format!("{}|{seed}|{steps}", root.display()),
        )
        .env("GRAFT_LOCK_TIMEOUT_MS", "60000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Not a test of its own: the body of a writer process. Prints
/// `acked STEP` after every durable flush.
#[test]
fn writer_child() {
    let Ok(spec) = std::env::var("GRAFT_TEST_WRITER") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (root, seed, steps): (&str, u64, u64) = (
        parts[0],
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
    );
    let store = Store::open(Path::new(root)).unwrap();
    let model = add_model(&store, "base");
    let data = dataset(&store, "x\n");
    let mut recorder = StoreRecorder::new(store.clone());
    recorder
        .begin(
            &recipe(model, None, 1e-4, seed, &data),
            &[data],
            ExecutionKind::Train,
            BTreeMap::new(),
        )
        .unwrap();
    for step in 1..=steps {
        recorder
            .log_metrics(step, &[("loss", step as f64), ("lr", seed as f64)])
            .unwrap();
        if step % 100 == 0 {
            recorder.flush().unwrap();
            println!("acked {step}");
        }
        if step % 500 == 0 {
            let object = recorder
                .put_object(format!("{seed} {step}").as_bytes())
                .unwrap();
            recorder
                .add_checkpoint(
                    step,
                    BTreeMap::from([("w".to_string(), object)]),
                    BTreeMap::new(),
                    BTreeMap::new(),
                )
                .unwrap();
        }
    }
    recorder
        .end(ExecutionStatus::Completed, None, None)
        .unwrap();
}

#[test]
fn two_processes_recording_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    Store::init(dir.path()).unwrap();
    let mut writers: Vec<Child> = (1..=2)
        .map(|seed| spawn_writer(dir.path(), seed, STEPS))
        .collect();
    // A reader keeps opening the index while they write.
    let mut reads = 0;
    while writers.iter_mut().any(|w| w.try_wait().unwrap().is_none()) {
        graft_ok(dir.path(), &["log", "--json"]);
        reads += 1;
    }
    for mut writer in writers {
        assert!(writer.wait().unwrap().success());
    }
    assert!(reads > 0);
    let store = Store::open(dir.path()).unwrap();
    let index = store.index().unwrap();
    let runs = index.all_runs().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let loss = index.series(&run.id, "loss").unwrap();
        assert_eq!(
            loss.len() as u64,
            STEPS,
            "every point of run {}",
            run.id.short()
        );
        assert!(loss
            .iter()
            .enumerate()
            .all(|(i, (step, value))| *step == i as u64 + 1 && *value == *step as f64));
        assert_eq!(
            index.run_checkpoints(&run.id).unwrap().len(),
            (STEPS / 500) as usize
        );
        assert_eq!(
            index.executions(&run.id).unwrap()[0].status,
            ExecutionStatus::Completed
        );
    }
    drop(index);
    graft_ok(dir.path(), &["verify"]);
}

#[test]
fn a_process_killed_mid_batch_leaves_a_store_that_opens_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    Store::init(dir.path()).unwrap();
    let mut writer = spawn_writer(dir.path(), 9, 1_000_000);
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    let mut acked = 0u64;
    // Let it get well into recording, then kill it between whatever it was doing.
    while acked < 2_000 {
        let line = lines.next().unwrap().unwrap();
        if let Some(step) = line.strip_prefix("acked ") {
            acked = step.parse().unwrap();
        }
    }
    writer.kill().unwrap();
    writer.wait().unwrap();

    let log: serde_json::Value =
        serde_json::from_str(&graft_ok(dir.path(), &["log", "--json"])).unwrap();
    assert_eq!(
        log[0]["status"], "interrupted",
        "a dead writer's execution is marked interrupted"
    );
    graft_ok(dir.path(), &["verify"]);
    let store = Store::open(dir.path()).unwrap();
    let index = store.index().unwrap();
    let run = index.all_runs().unwrap()[0].id;
    let loss = index.series(&run, "loss").unwrap();
    assert!(
        loss.len() as u64 >= acked,
        "every acknowledged point survives: {} < {acked}",
        loss.len()
    );
    assert!(
        loss.iter()
            .enumerate()
            .all(|(i, (step, _))| *step == i as u64 + 1),
        "no gaps, no duplicates"
    );
}

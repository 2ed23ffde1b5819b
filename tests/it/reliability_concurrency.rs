//! Concurrency: four training processes record into one store at once while
//! readers loop over `graft log`, `metrics`, `show`, `runs` and `verify`.
//! Every trainer completes, every step of every run is recorded exactly once
//! (and one of them matches a run trained alone), and no read ever fails.

use crate::reliability_support::*;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const STEPS: u64 = 12;
const SEEDS: [u64; 4] = [11, 12, 13, 14];

#[test]
fn four_trainers_and_a_reader_share_one_store() {
    let work = workspace(STEPS, 5);
    let dir = work.path().to_path_buf();
    let store = dir.join("store");
    ok(&dir, &store, &["init"]);

    let started = Instant::now();
    let mut trainers: Vec<(u64, Child)> = SEEDS
        .iter()
        .map(|seed| {
            let child = command(
                &dir,
                &store,
                &[
                    "train",
                    "exp.toml",
                    "--set",
                    &format!("train.seed={seed}"),
                    "-q",
                    "--json",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
            (*seed, child)
        })
        .collect();

    // Readers: each read is its own process and must succeed, whatever the
    // trainers are doing.
    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let reads = Arc::new(Mutex::new(0usize));
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let (dir, store, done, failures, reads) = (
                dir.clone(),
                store.clone(),
                done.clone(),
                failures.clone(),
                reads.clone(),
            );
            std::thread::spawn(move || {
                let mut round = 0usize;
                while !done.load(Ordering::SeqCst) {
                    round += 1;
                    let log = run(&dir, &store, &["log", "--json"]);
                    let mut outputs = vec![(vec!["log".to_string()], log.clone())];
                    if log.status.success() {
                        let runs = json(&out(&log));
                        for entry in runs.as_array().unwrap() {
                            let id = entry["id"].as_str().unwrap().to_string();
                            let args = if reader == 0 {
                                vec!["metrics", &id, "--json"]
                            } else {
                                vec!["show", &id, "--json"]
                            };
                            outputs.push((
                                args.iter().map(|a| a.to_string()).collect(),
                                run(&dir, &store, &args),
                            ));
                        }
                    }
                    if round.is_multiple_of(5) {
                        let args = if reader == 0 {
                            vec!["runs", "--where", "optim.lr > 0", "--json"]
                        } else {
                            vec!["verify"]
                        };
                        outputs.push((
                            args.iter().map(|a| a.to_string()).collect(),
                            run(&dir, &store, &args),
                        ));
                    }
                    for (args, output) in outputs {
                        *reads.lock().unwrap() += 1;
                        if !output.status.success() {
                            failures.lock().unwrap().push(format!(
                                "graft {args:?}: {}{}",
                                err(&output),
                                out(&output)
                            ));
                        }
                    }
                }
            })
        })
        .collect();

    let mut results = Vec::new();
    for (seed, child) in trainers.drain(..) {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "trainer {seed}: {}", err(&output));
        results.push((seed, json(&out(&output))));
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} reads failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let reads = *reads.lock().unwrap();
    assert!(reads >= 8, "the readers kept reading ({reads} reads)");
    eprintln!(
        "4 trainers in {:.1} s with {reads} reads beside them",
        elapsed.as_secs_f64()
    );

    let log = json(&ok(&dir, &store, &["log", "--json"]));
    assert_eq!(log.as_array().unwrap().len(), 4);
    for (seed, result) in &results {
        let run_id = result["run"].as_str().unwrap();
        let entry = log
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == run_id)
            .unwrap();
        assert_eq!(entry["status"], "completed", "run of seed {seed}");
        let series = series(&dir, &store, run_id);
        for name in ["loss", "lr", "grad_norm", "tokens_seen"] {
            let steps: Vec<u64> = series[name].iter().map(|p| p.0).collect();
            assert_eq!(
                steps,
                (1..=STEPS).collect::<Vec<_>>(),
                "seed {seed}: every step of `{name}` once"
            );
        }
        // `eval_loss` covers trained steps; the step-0 baseline is per set.
        let evals: Vec<u64> = series["eval_loss"].iter().map(|p| p.0).collect();
        assert_eq!(evals, vec![4, 8, 12], "seed {seed}");
        let shown = json(&ok(&dir, &store, &["show", run_id, "--json"]));
        let steps: Vec<u64> = shown["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["step"].as_u64().unwrap())
            .collect();
        assert_eq!(
            steps,
            vec![4, 8, 12],
            "seed {seed}: every checkpoint recorded"
        );
        let written: Vec<&str> = result["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        let recorded: Vec<&str> = shown["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(written, recorded, "seed {seed}");
    }
    verify_clean(&dir, &store);

    // Sharing the store changed nothing about what a run computes.
    let alone = json(&ok(
        &dir,
        &dir.join("alone"),
        &[
            "train",
            "exp.toml",
            "--set",
            "train.seed=11",
            "-q",
            "--json",
        ],
    ));
    assert_eq!(alone["checkpoints"], results[0].1["checkpoints"]);
    assert_eq!(
        series(&dir, &dir.join("alone"), alone["run"].as_str().unwrap())["loss"],
        series(&dir, &store, alone["run"].as_str().unwrap())["loss"]
    );
}

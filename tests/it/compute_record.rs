//! How the numbers are computed is part of the record: `[compute]`'s precision policy
//! enters the recipe (so the run id), every option is on the execution record, and
//! `graft reproduce` with other compute options names them and compares within a
//! tolerance. Through the binary and a real store, on the shared llama-tiny fixture.

use crate::common::llama_tiny as fixture;
use crate::common::{stderr, stdout};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn workspace() -> tempfile::TempDir {
    crate::common::lora_workspace(&fixture())
}

fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(dir)
        .env("GRAFT_STORE", dir.join("store"))
        .env_remove("GRAFT_INJECT_NAN_AT_STEP")
        .output()
        .unwrap()
}

fn ok_in(dir: &Path, args: &[&str]) -> String {
    let output = run_in(dir, args);
    assert!(
        output.status.success(),
        "graft {args:?}: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

#[test]
fn bf16_is_another_recipe_and_the_cpu_refuses_it_without_recording() {
    let work = workspace();
    let experiment = |overrides: &[String]| {
        graft::train::Experiment::load(&work.path().join("a.toml"), overrides).unwrap()
    };
    let store = graft::store::Store::init(&work.path().join("store")).unwrap();
    let f32_plan = graft::train::plan(&store, &experiment(&[])).unwrap();
    let bf16_plan =
        graft::train::plan(&store, &experiment(&["compute.dtype=bf16".into()])).unwrap();
    let kernels_plan =
        graft::train::plan(&store, &experiment(&["compute.attention=burn".into()])).unwrap();
    assert_ne!(f32_plan.recipe.run_id(), bf16_plan.recipe.run_id());
    assert_eq!(
        bf16_plan.recipe.config.get_path("compute.dtype"),
        Some(&graft::store::Canon::Str("bf16".into()))
    );
    assert_eq!(
        f32_plan.recipe.run_id(),
        kernels_plan.recipe.run_id(),
        "kernel choices are recorded on the execution, not the recipe"
    );
    assert!(f32_plan.recipe.config.get("compute").is_none());
    drop(store);

    let refused = run_in(
        work.path(),
        &["train", "a.toml", "--set", "compute.dtype=bf16"],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("compute.dtype"),
        "{}",
        stderr(&refused)
    );
    let runs: Value = serde_json::from_str(&ok_in(work.path(), &["log", "--json"])).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(0), "{runs}");
}

#[test]
fn reproduce_with_other_kernels_names_the_option_and_compares_within_tolerance() {
    let work = workspace();
    let run = train_run(work.path(), "a.toml", &[]);

    let shown: Value =
        serde_json::from_str(&ok_in(work.path(), &["show", &run, "--json"])).unwrap();
    let compute = &shown["executions"][0]["compute"];
    assert_eq!(compute["backend"], "cpu", "{shown}");
    assert_eq!(compute["attention"], "flash");
    assert_eq!(compute["dtype"], "f32");
    // Throughput is higher-is-better: its best is its largest value.
    let throughput = &shown["metrics"]["tokens_per_s"];
    assert!(throughput["max"].as_f64().is_some(), "{shown}");
    assert_eq!(throughput["best"], throughput["max"], "{throughput}");

    let same = ok_in(work.path(), &["reproduce", &run, "--quiet"]);
    assert!(same.contains("checkpoint ids identical"), "{same}");

    let other = ok_with_sets(
        work.path(),
        &["reproduce", &run, "--quiet"],
        &["compute.attention=burn"],
    );
    assert!(
        other.contains(
            "compute.attention differs: flash in the original execution, burn in this one"
        ),
        "{other}"
    );
    assert!(other.contains("reproduces within tolerance"), "{other}");

    let recipe_key = run_in(
        work.path(),
        &["reproduce", &run, "--set", "compute.dtype=bf16"],
    );
    assert!(!recipe_key.status.success());
    assert!(
        stderr(&recipe_key).contains("part of the recipe"),
        "{}",
        stderr(&recipe_key)
    );
}

/// A CPU run recorded before `compute.fused_norm` and `compute.fused_loss` existed
/// computed its norms and loss through burn's ops: its record, which lacks both keys,
/// reads as `false`, so `graft reproduce` runs those kernels again and matches bit for
/// bit; turning them on names them and compares within the tolerance.
#[test]
fn an_execution_recorded_before_the_row_kernels_reproduces_with_the_kernels_it_ran() {
    let work = workspace();
    // Trained as before the later keys: each at the value that computes as then.
    let sets: Vec<String> = graft::compute::LATER_KEYS
        .iter()
        .map(|(key, before)| format!("compute.{key}={before}"))
        .collect();
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let run = train_run(work.path(), "a.toml", &sets);
    // Rewrite the record as one written before the keys existed.
    {
        let store = graft::store::Store::open(&work.path().join("store")).unwrap();
        let index = store.index().unwrap();
        let id = graft::store::Id::from_hex(&run).unwrap();
        let mut execution = index.executions(&id).unwrap().remove(0);
        let graft::store::Canon::Map(mut compute) = execution.compute.take().unwrap() else {
            panic!("compute is recorded as a map");
        };
        for (key, _) in graft::compute::LATER_KEYS {
            assert!(compute.remove(key).is_some(), "{key} is recorded");
        }
        index
            .set_execution_compute(&id, execution.number, graft::store::Canon::Map(compute))
            .unwrap();
        index.flush().unwrap();
    }
    let shown: Value =
        serde_json::from_str(&ok_in(work.path(), &["show", &run, "--json"])).unwrap();
    assert!(
        shown["executions"][0]["compute"]
            .get("fused_norm")
            .is_none(),
        "{shown}"
    );

    let same = ok_in(work.path(), &["reproduce", &run, "--quiet"]);
    assert!(same.contains("checkpoint ids identical"), "{same}");
    assert!(!same.contains("fused_norm differs"), "{same}");

    let newer = ok_with_sets(
        work.path(),
        &["reproduce", &run, "--quiet"],
        &["compute.fused_norm=true"],
    );
    assert!(
        newer.contains(
            "compute.fused_norm differs: false in the original execution, true in this one"
        ),
        "{newer}"
    );
    assert!(newer.contains("reproduces within tolerance"), "{newer}");
}

/// Rewrites the first execution's recorded `compute.cpu_vectors` of `run`.
fn record_vectors(dir: &Path, run: &str, vectors: &str) {
    let store = graft::store::Store::open(&dir.join("store")).unwrap();
    let index = store.index().unwrap();
    let id = graft::store::Id::from_hex(run).unwrap();
    let mut execution = index.executions(&id).unwrap().remove(0);
    let graft::store::Canon::Map(mut compute) = execution.compute.take().unwrap() else {
        panic!("compute is recorded as a map");
    };
    let here = compute
        .insert(
            "cpu_vectors".into(),
            graft::store::Canon::Str(vectors.into()),
        )
        .expect("a CPU execution records its vectors");
    assert_eq!(
        here,
        graft::store::Canon::Str(
            graft::compute::CpuVectors::of_this_machine()
                .as_str()
                .into()
        )
    );
    index
        .set_execution_compute(&id, execution.number, graft::store::Canon::Map(compute))
        .unwrap();
    index.flush().unwrap();
}

#[test]
fn a_cpu_execution_from_a_machine_with_other_vectors_is_compared_within_tolerance() {
    use graft::compute::CpuVectors;
    let work = workspace();
    let here = CpuVectors::of_this_machine();
    // The FMA kernels where this CPU has AVX-512 (a record of an older build), the
    // scalar ones elsewhere: a machine whose products sum in another order.
    let other = if here == CpuVectors::Avx512f {
        CpuVectors::Fma
    } else {
        CpuVectors::Scalar
    };
    // A run that stops on a NaN after its step-3 checkpoint, so it can be resumed.
    let output = run_in(work.path(), &["train", "a.toml", "--quiet"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let failing = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["train", "a.toml", "--quiet", "--set", "train.seed=9"])
        .current_dir(work.path())
        .env("GRAFT_STORE", work.path().join("store"))
        .env("GRAFT_INJECT_NAN_AT_STEP", "5")
        .output()
        .unwrap();
    assert!(!failing.status.success());
    let log: Value = serde_json::from_str(&ok_in(work.path(), &["log", "--json"])).unwrap();
    let (stopped, completed) = (
        log[0]["id"].as_str().unwrap().to_string(),
        log[1]["id"].as_str().unwrap().to_string(),
    );
    let shown: Value =
        serde_json::from_str(&ok_in(work.path(), &["show", &completed, "--json"])).unwrap();
    assert_eq!(
        shown["executions"][0]["compute"]["cpu_vectors"],
        here.as_str(),
        "{shown}"
    );
    record_vectors(work.path(), &completed, other.as_str());
    record_vectors(work.path(), &stopped, other.as_str());

    let compared = ok_in(work.path(), &["reproduce", &completed, "--quiet"]);
    assert!(
        compared.contains(&format!(
            "compute.cpu_vectors differs: {} in the original execution, {} in this one",
            other.as_str(),
            here.as_str()
        )),
        "{compared}"
    );
    // Compared within the tolerance, or identical where this small model's products
    // happen to round alike under both kernels; either way it passes.
    assert!(
        compared.contains("reproduces") && !compared.contains("NOT"),
        "{compared}"
    );

    let refused = run_in(
        work.path(),
        &[
            "reproduce",
            &completed,
            "--set",
            &format!("compute.cpu_vectors={}", other.as_str()),
        ],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("compute.cpu_vectors is what this machine's CPU offers"),
        "{}",
        stderr(&refused)
    );

    let resumed = run_in(work.path(), &["resume", &stopped]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains(&format!(
            "compute.cpu_vectors: this machine's matrix products run with {} kernels, the recorded execution's with {}",
            here.as_str(),
            other.as_str()
        )),
        "{}",
        stderr(&resumed)
    );
    // The resumed execution records the vectors it ran with.
    let shown: Value =
        serde_json::from_str(&ok_in(work.path(), &["show", &stopped, "--json"])).unwrap();
    let executions = shown["executions"].as_array().unwrap();
    assert_eq!(
        executions.last().unwrap()["compute"]["cpu_vectors"],
        here.as_str(),
        "{shown}"
    );
    // Its checkpoints now come from both machines: a reproduce here names the first
    // one's vectors although the newest execution ran with this machine's.
    let both = ok_in(work.path(), &["reproduce", &stopped, "--quiet"]);
    assert!(
        both.contains(&format!(
            "compute.cpu_vectors differs: {} in the original execution",
            other.as_str()
        )) && both.contains("reproduces")
            && !both.contains("NOT"),
        "{both}"
    );
}

#[test]
fn per_layer_recomputation_trains_bit_for_bit_as_keeping_every_activation() {
    let work = workspace();
    // A LoRA run, and one whose embedding trains too (its gradient comes from a stage
    // of its own after the layers').
    let lora = std::fs::read_to_string(work.path().join("a.toml")).unwrap();
    std::fs::write(
        work.path().join("embed.toml"),
        format!("{lora}\n[[unfreeze.schedule]]\nat = 0\nlayers = \"embed,layer.1\"\n"),
    )
    .unwrap();
    // Dropout would draw other masks when a layer runs again: refused by key.
    let refused = run_in(
        work.path(),
        &[
            "train",
            "a.toml",
            "--set",
            "adapter.dropout=0.1",
            "--set",
            "compute.checkpointing=layers",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("compute.checkpointing = \"layers\"")
            && stderr(&refused).contains("adapter.dropout"),
        "{}",
        stderr(&refused)
    );
    for experiment in ["a.toml", "embed.toml"] {
        let recomputed = train_then_reproduce(
            work.path(),
            experiment,
            &[],
            &["compute.checkpointing=layers"],
        );
        assert!(
            recomputed.contains(
                "compute.checkpointing differs: none in the original execution, layers in this one"
            ),
            "{experiment}: {recomputed}"
        );
        assert!(
            recomputed.contains("checkpoint ids identical"),
            "{experiment}: {recomputed}"
        );
    }
    // The projections' outputs kept for each layer's rerun: the same checkpoints.
    let work = workspace();
    let kept = train_then_reproduce(
        work.path(),
        "a.toml",
        &[],
        &[
            "compute.checkpointing=layers",
            "compute.keep_projections=true",
        ],
    );
    assert!(
        kept.contains(
            "compute.keep_projections differs: false in the original execution, true in this one"
        ) && kept.contains("checkpoint ids identical"),
        "{kept}"
    );
    // Only the projections that do not widen (q, k, v, o and down share shapes, gate
    // and up computed again): each rerun node takes its own output, the same checkpoints.
    let work = workspace();
    let narrow = train_then_reproduce(
        work.path(),
        "a.toml",
        &[],
        &[
            "compute.checkpointing=layers",
            "compute.keep_projections=narrow",
        ],
    );
    assert!(
        narrow.contains(
            "compute.keep_projections differs: false in the original execution, narrow in this one"
        ) && narrow.contains("checkpoint ids identical"),
        "{narrow}"
    );
    // Without per-layer recomputation there is no rerun to keep them for: refused by key.
    let refused = run_in(
        work.path(),
        &["train", "a.toml", "--set", "compute.keep_projections=true"],
    );
    assert!(
        !refused.status.success() && stderr(&refused).contains("compute.keep_projections"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn the_head_and_loss_in_parts_train_to_the_same_checkpoints() {
    // 7 tokens a part: parts that straddle the batch's rows and a short last part;
    // with the step's one backward pass and with per-layer recomputation.
    for extra in [None, Some("compute.checkpointing=layers")] {
        let work = workspace();
        let mut sets: Vec<&str> = extra.into_iter().collect();
        let before = sets.clone();
        sets.push("compute.loss_chunk_tokens=7");
        let parts = train_then_reproduce(work.path(), "a.toml", &before, &sets);
        assert!(
            parts.contains(
                "compute.loss_chunk_tokens differs: 0 in the original execution, 7 in this one"
            ),
            "{extra:?}: {parts}"
        );
        assert!(
            parts.contains("checkpoint ids identical"),
            "{extra:?}: {parts}"
        );
    }
}

/// `graft ARGS... --set SET...` in `dir`, which must succeed; returns its stdout.
fn ok_with_sets(dir: &Path, args: &[&str], sets: &[&str]) -> String {
    let mut all = args.to_vec();
    for set in sets {
        all.extend(["--set", set]);
    }
    ok_in(dir, &all)
}

/// Trains `experiment` with `sets` (`--set` values); returns the run id.
fn train_run(dir: &Path, experiment: &str, sets: &[&str]) -> String {
    let trained: Value = serde_json::from_str(&ok_with_sets(
        dir,
        &["train", experiment, "--quiet", "--json"],
        sets,
    ))
    .unwrap();
    trained["run"].as_str().unwrap().to_string()
}

/// Trains `experiment` with `train_sets` (`--set` values), then reproduces the run with
/// `reproduce_sets`; returns what `graft reproduce` printed.
fn train_then_reproduce(
    dir: &Path,
    experiment: &str,
    train_sets: &[&str],
    reproduce_sets: &[&str],
) -> String {
    let run = train_run(dir, experiment, train_sets);
    ok_with_sets(dir, &["reproduce", &run, "--quiet"], reproduce_sets)
}

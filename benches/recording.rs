//! The share of step time spent recording (metrics, checkpoints) during a
//! CPU training run of the shared llama-tiny fixture. Prints one line.
//! Run with `cargo bench --bench recording`.

use graft::store::{ExecutionKind, Store, StoreRecorder};
use graft::train::{execute, plan, Experiment, Silent};
use std::path::Path;

fn main() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("train.jsonl");
    std::fs::write(
        &data,
        graft::data::synth("reverse", 512, 1).unwrap().join("\n") + "\n",
    )
    .unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama-tiny");
    let text = format!(
        r#"[model]
base = "{}"
[adapter]
rank = 8
[data]
train = [{{ path = "{}", format = "chat" }}]
template = "plain"
seq_len = 64
val_fraction = 0.05
[optim]
batch_size = 8
[train]
steps = 200
eval_every = 50
checkpoint_every = 50
"#,
        fixture.display(),
        data.display()
    );
    let experiment = Experiment::parse(&text, Path::new("bench.toml"), &[]).unwrap();
    let store = Store::init(&work.path().join("store")).unwrap();
    let plan = plan(&store, &experiment).unwrap();
    let mut recorder = StoreRecorder::new(store.clone());
    let outcome = execute::<graft::model::CpuTrainBackend>(
        &Default::default(),
        &store,
        &plan,
        ExecutionKind::Train,
        &graft::compute::Compute::new(Default::default(), experiment.compute),
        &mut recorder,
        &mut Silent,
    )
    .unwrap();
    let share = outcome.record_time.as_secs_f64() / outcome.loop_time.as_secs_f64();
    println!(
        "recording share of step time: {:.3}% ({:.1} ms of {:.2} s over {} steps: 5 metrics per step, eval metrics every 50 steps, {} checkpoints)",
        share * 100.0,
        outcome.record_time.as_secs_f64() * 1e3,
        outcome.loop_time.as_secs_f64(),
        outcome.final_step,
        outcome.checkpoints.len()
    );
}

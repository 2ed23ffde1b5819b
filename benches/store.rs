//! Store benchmark: metric ingest, series reads, lineage and log latency,
//! bytes per metric point, and bytes added by a fork. Prints one line per
//! figure. Run with `cargo bench --bench store`.

#[path = "common/synthetic.rs"]
mod synthetic;

use graft::store::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use synthetic::{model, recipe};

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if meta.is_dir() {
                dir_size(&entry.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

fn checkpoint(index: &Index, run: Id, step: u64, parent: Option<Id>) -> Id {
    let tensors = BTreeMap::from([("lora".to_string(), Id([9; 32]))]);
    let id = CheckpointRecord::compute_id(run, step, &tensors, &BTreeMap::new());
    index
        .put_checkpoint(&CheckpointRecord {
            id,
            run,
            step,
            tensors,
            state: BTreeMap::new(),
            parent,
            metrics: BTreeMap::from([("eval_loss".to_string(), 1.0)]),
            execution: 1,
            created_at: chrono::Utc::now(),
            retired: false,
        })
        .unwrap();
    id
}

fn main() {
    println!(
        "graft store benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // Metric ingest: through the recorder (journal, batched) and absorbed
    // into the index, 1,000,000 points over 4 series.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let model_id = model(&store.index().unwrap());
    let mut recorder = StoreRecorder::new(store.clone());
    let (run, _) = recorder
        .begin(
            &recipe(model_id, None, 0),
            &[],
            ExecutionKind::Train,
            BTreeMap::new(),
        )
        .unwrap();
    let index_before = dir_size(&store.index_path());
    let points = 1_000_000u64;
    let series = ["loss", "lr", "grad_norm", "tokens_per_s"];
    let start = Instant::now();
    for step in 0..points / 4 {
        let values: Vec<(&str, f64)> = series
            .iter()
            .map(|s| (*s, (step as f64).sqrt() * 0.001))
            .collect();
        recorder.log_metrics(step, &values).unwrap();
    }
    recorder.flush().unwrap();
    let journal_time = start.elapsed();
    recorder
        .end(ExecutionStatus::Completed, None, None)
        .unwrap();
    let total_time = start.elapsed();
    println!(
        "metric ingest: {:.0} points/s recorded (journal, fsync per batch); {:.0} points/s end to end including absorption into the index",
        points as f64 / journal_time.as_secs_f64(),
        points as f64 / total_time.as_secs_f64()
    );
    let index = store.index().unwrap();
    index.flush().unwrap();
    let bytes = dir_size(&store.index_path()) - index_before;
    println!(
        "bytes on disk per metric point: {:.1} ({} bytes for 1,000,000 points, sled index)",
        bytes as f64 / points as f64,
        bytes
    );

    // One 20,000-point series.
    let mut best = f64::MAX;
    for _ in 0..20 {
        let start = Instant::now();
        let series = index.series(&run.id, "loss").unwrap();
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(series.len(), 250_000);
    }
    let run_seq = index.run(&run.id).unwrap().seq;
    let loss = index.series_id("loss").unwrap().unwrap();
    let mut best_20k = f64::MAX;
    let prefix = graft::store::metrics::series_prefix(run_seq, 1, loss);
    for _ in 0..50 {
        let start = Instant::now();
        let mut n = 0;
        for entry in index
            .metrics
            .scan_prefix(prefix)
            .take(20_000usize.div_ceil(graft::store::metrics::CHUNK_POINTS))
        {
            let (key, value) = entry.unwrap();
            let first = graft::store::metrics::parse_chunk_key(&key).unwrap().3;
            n += graft::store::metrics::decode_chunk(first, &value)
                .unwrap()
                .len();
        }
        best_20k = best_20k.min(start.elapsed().as_secs_f64());
        assert!(n >= 20_000);
    }
    println!(
        "read one 20,000-point series: {:.3} ms (a 250,000-point series: {:.2} ms)",
        best_20k * 1e3,
        best * 1e3
    );
    drop(index);

    // Lineage at depth 1,000.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let index = store.index().unwrap();
    let model_id = model(&index);
    let mut start_checkpoint = None;
    let mut last_run = None;
    for i in 0..1000 {
        let run = index
            .register_run(&recipe(model_id, start_checkpoint, i), BTreeMap::new())
            .unwrap();
        start_checkpoint = Some(checkpoint(&index, run.id, 10, start_checkpoint));
        last_run = Some(run.id);
    }
    index.flush().unwrap();
    let mut best = f64::MAX;
    for _ in 0..20 {
        let start = Instant::now();
        let chain = graft::lineage::ancestors(&index, &last_run.unwrap()).unwrap();
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(chain.len(), 1000);
    }
    println!("lineage at depth 1,000: {:.2} ms", best * 1e3);

    // Bytes added by a fork: a run record from a checkpoint plus its
    // execution, each fork flushed on its own. sled grows its log file a
    // segment at a time, so one fork's size delta is 0 or a whole segment;
    // the average over many forks is the honest figure.
    let forks = 500u64;
    let before = dir_size(&store.index_path());
    let mut record_bytes = 0;
    for i in 0..forks {
        let fork = index
            .register_run(
                &recipe(model_id, start_checkpoint, 5000 + i),
                BTreeMap::new(),
            )
            .unwrap();
        let execution = index
            .begin_execution(&fork.id, ExecutionKind::Train)
            .unwrap();
        index.flush().unwrap();
        record_bytes += graft::store::index::encode(&fork).len()
            + graft::store::index::encode(&execution).len()
            + 2 * 40;
    }
    let after = dir_size(&store.index_path());
    println!(
        "bytes added by a fork: {} on disk on average over {forks} forks, each flushed (the records and keys themselves: {})",
        (after - before) / forks,
        record_bytes as u64 / forks
    );
    drop(index);

    // `log` first page over 10,000 runs.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let index = store.index().unwrap();
    let model_id = model(&index);
    for i in 0..10_000 {
        index
            .register_run(&recipe(model_id, None, i), BTreeMap::new())
            .unwrap();
    }
    index.flush().unwrap();
    let tags = graft::lineage::tags_by_target(&index).unwrap();
    let mut best = f64::MAX;
    for _ in 0..20 {
        let start = Instant::now();
        let page: Vec<_> = index
            .runs_newest_first(0, 50)
            .unwrap()
            .into_iter()
            .map(|r| graft::lineage::RunSummary::load(&index, r, &tags).unwrap())
            .collect();
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(page.len(), 50);
    }
    drop(index);
    let binary = std::env::var("GRAFT_BIN").unwrap_or_else(|_| "target/release/graft".into());
    let process = if Path::new(&binary).exists() {
        let start = Instant::now();
        let output = std::process::Command::new(&binary)
            .args(["--store", dir.path().to_str().unwrap(), "log", "-n", "50"])
            .output()
            .unwrap();
        assert!(output.status.success());
        format!(
            "; the `graft log` process end to end (open index, render): {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        )
    } else {
        String::new()
    };
    println!(
        "log first page (50 runs) over 10,000 runs: {:.2} ms{process}",
        best * 1e3
    );
}

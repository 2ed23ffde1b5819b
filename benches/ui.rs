//! `graft ui` latency on a large store: a synthetic record of 10,000 runs
//! (a fork tree, each run forking from a checkpoint of an earlier one) and
//! 10,000,000 metric points, written through the store's own write path
//! (index records, journals, absorption). Then the server's answer time for
//! the runs table's first page, a filtered page, the lineage graph and a
//! 20-run compare view; how long a reload of the snapshot holds the index;
//! and how long after a journal write the UI serves the new point. Prints
//! one line per figure. Run with `cargo bench --bench ui`; set
//! GRAFT_UI_BENCH_RUNS and GRAFT_UI_BENCH_POINTS for another scale.

#[path = "common/synthetic.rs"]
mod synthetic;

use graft::store::journal::{JournalEntry, JournalWriter, MetricPoint};
use graft::store::*;
use graft::ui::snapshot::Snapshot;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use synthetic::{model, recipe};

const SERIES: [&str; 4] = ["loss", "eval_loss", "lr", "grad_norm"];

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn checkpoint(run: Id, step: u64, eval_loss: f64) -> CheckpointRecord {
    let tensors = BTreeMap::from([("lora".to_string(), Id([9; 32]))]);
    CheckpointRecord {
        id: CheckpointRecord::compute_id(run, step, &tensors, &BTreeMap::new()),
        run,
        step,
        tensors,
        state: BTreeMap::new(),
        parent: None,
        metrics: BTreeMap::from([("eval_loss".to_string(), eval_loss)]),
        execution: 1,
        created_at: chrono::Utc::now(),
        retired: false,
    }
}

fn points(step: u64, i: u64) -> Vec<MetricPoint> {
    SERIES
        .iter()
        .enumerate()
        .map(|(k, series)| MetricPoint {
            step,
            series: series.to_string(),
            value: 2.0 / (1.0 + step as f64 * 0.01) + (i % 13) as f64 * 0.01 + k as f64,
        })
        .collect()
}

/// Record `runs` runs of `steps` steps each, in batches whose parents are
/// all in earlier batches: run i forks from run i/10's checkpoint at the
/// middle step. Returns the run ids in order.
fn build(store: &Store, runs: u64, steps: u64) -> Vec<Id> {
    let mut ids: Vec<Id> = Vec::new();
    let mut fork_points: Vec<Id> = Vec::new();
    let model_id = {
        let index = store.index().unwrap();
        let id = model(&index);
        index.flush().unwrap();
        id
    };
    let mut start = 0;
    while start < runs {
        let end = if start == 0 {
            10.min(runs)
        } else {
            (start * 10).min(runs)
        };
        let index = store.index().unwrap();
        let mut begun = Vec::new();
        for i in start..end {
            let parent = (i >= 10).then(|| fork_points[(i / 10) as usize]);
            let run = index
                .register_run(&recipe(model_id, parent, i), BTreeMap::new())
                .unwrap();
            let execution = index
                .begin_execution(&run.id, ExecutionKind::Train)
                .unwrap();
            begun.push((run.id, execution.number));
        }
        index.flush().unwrap();
        drop(index);
        for (offset, (run, execution)) in begun.into_iter().enumerate() {
            let i = start + offset as u64;
            let mut entries = Vec::new();
            for chunk in (1..=steps).collect::<Vec<_>>().chunks(50) {
                entries.push(JournalEntry::Metrics(
                    chunk.iter().flat_map(|&step| points(step, i)).collect(),
                ));
            }
            let middle = checkpoint(run, steps / 2, 1.0 + (i % 17) as f64 * 0.1);
            fork_points.push(middle.id);
            entries.push(JournalEntry::Checkpoint(middle));
            entries.push(JournalEntry::Checkpoint(checkpoint(run, steps, 1.0)));
            entries.push(JournalEntry::End {
                status: ExecutionStatus::Completed,
                ended_at: chrono::Utc::now(),
                error: None,
                reason: None,
            });
            let mut journal = JournalWriter::create(store.root(), &run, execution).unwrap();
            journal.append(&entries).unwrap();
            ids.push(run);
        }
        // Absorbs every journal written above into the index.
        drop(store.index().unwrap());
        eprintln!("  recorded runs {start}..{end}");
        start = end;
    }
    ids
}

/// One GET with the server's own Host header; returns the status, the
/// whole response and the time to its last byte.
fn get(address: &str, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let elapsed = started.elapsed();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let status = raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, raw, elapsed)
}

/// Median and slowest of `n` requests for `path`.
fn measure(address: &str, path: &str, n: usize) -> (f64, f64, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..n {
        let (status, response, elapsed) = get(address, path);
        assert_eq!(status, 200, "GET {path}");
        size = response.len();
        times.push(elapsed.as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[n - 1], size)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores")
}

fn main() {
    let runs = setting("GRAFT_UI_BENCH_RUNS", 10_000);
    let total_points = setting("GRAFT_UI_BENCH_POINTS", 10_000_000);
    let steps = (total_points / runs / SERIES.len() as u64).max(2);
    println!(
        "graft ui benchmark on {} ({}): {runs} runs x {steps} steps x {} series = {} metric points",
        machine(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        SERIES.len(),
        runs * steps * SERIES.len() as u64
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    let started = Instant::now();
    let ids = build(&store, runs, steps);
    println!(
        "store built through the index and journals in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let server = graft::ui::Server::bind(&store, "127.0.0.1".parse().unwrap(), 0, None).unwrap();
    println!(
        "start-up (the whole record read into memory, index held throughout): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let address = server.address().to_string();
    std::thread::spawn(move || server.run());

    let report = |what: &str, path: &str| {
        let (median, slowest, size) = measure(&address, path, 21);
        println!("{what}: median {median:.1} ms, slowest {slowest:.1} ms of 21 ({size} bytes)");
    };
    report(
        "runs table, first page of 100 (columns optim.lr, best.eval_loss)",
        "/api/table?limit=100&columns=optim.lr,best.eval_loss",
    );
    report(
        "runs table filtered (where optim.lr < 3e-5 and best.eval_loss < 1.62), first page",
        "/api/table?limit=100&columns=optim.lr,best.eval_loss&where=optim.lr%20%3C%203e-5%20and%20best.eval_loss%20%3C%201.62",
    );
    report(
        "runs table sorted by -best.eval_loss, first page",
        "/api/table?limit=100&sort=-best.eval_loss",
    );
    let twenty: Vec<String> = ids
        .iter()
        .rev()
        .step_by((ids.len() / 20).max(1))
        .take(20)
        .map(|id| id.to_hex())
        .collect();
    report(
        &format!("compare view of {} runs, every series", twenty.len()),
        &format!("/api/compare?runs={}", twenty.join(",")),
    );
    report("lineage graph of every run", "/api/lineage");

    // Live: a new run journals points; how soon the UI serves each one.
    let index = store.index().unwrap();
    let model_id = Id([1; 32]);
    let run = index
        .register_run(&recipe(model_id, None, runs + 1), BTreeMap::new())
        .unwrap();
    let execution = index
        .begin_execution(&run.id, ExecutionKind::Train)
        .unwrap();
    index.flush().unwrap();
    drop(index);
    let mut journal = JournalWriter::create(store.root(), &run.id, execution.number).unwrap();
    journal
        .append(&[JournalEntry::Metrics(points(1, 0))])
        .unwrap();
    let metrics = format!("/api/runs/{}/metrics?series=loss", run.id.to_hex());
    let started = Instant::now();
    while get(&address, &metrics).0 != 200 {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "a new run (registered in the index) is served after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let mut latencies = Vec::new();
    for step in 2..=21u64 {
        journal
            .append(&[JournalEntry::Metrics(points(step, 0))])
            .unwrap();
        let written = Instant::now();
        while !get(&address, &metrics).1.contains(&format!("[{step},")) {
            std::thread::sleep(Duration::from_millis(5));
        }
        latencies.push(written.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(50));
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "live update, journal write (fsynced) to the point being served: median {:.0} ms, slowest {:.0} ms of {}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len()
    );

    // What the watcher holds the index for: opening it, a full read (at
    // start, then at most every 30 s after changes), and the refresh that
    // follows a change (new runs, runs with journals; here one active run).
    let started = Instant::now();
    let index = Index::open(&store.index_path()).unwrap();
    let open = started.elapsed();
    let started = Instant::now();
    let first = Snapshot::load(&index, None).unwrap();
    let cold = started.elapsed();
    let started = Instant::now();
    let again = Snapshot::load(&index, Some(&first)).unwrap();
    let warm = started.elapsed();
    let started = Instant::now();
    let active = std::collections::BTreeSet::from([ids[ids.len() - 1]]);
    Snapshot::refresh(&index, &again, &active).unwrap();
    let refresh = started.elapsed();
    drop(index);
    println!(
        "index held by the UI: open {:.0} ms; full read {:.2} s cold, {:.2} s reusing unchanged series; refresh after a change {:.0} ms",
        open.as_secs_f64() * 1e3,
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        refresh.as_secs_f64() * 1e3
    );
}

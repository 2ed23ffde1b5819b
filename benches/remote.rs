//! Remote sharing benchmark: push, metadata-only clone, lazy fetch of one
//! checkpoint and pull of every object, for a synthetic store against a
//! folder remote and, when moto is installed, an S3 emulator on 127.0.0.1.
//! Prints MB/s and times, one line per figure, with the CPU seconds graft
//! and the emulator each spent on a transfer (which of the two is the
//! limit). Run with `cargo bench --bench remote`; the default scale is the
//! one issue 19 names; GRAFT_BENCH_RUNS (default 1000), GRAFT_BENCH_POINTS
//! (metric points in all, default 10,000,000) and GRAFT_BENCH_MB (object
//! bytes in all, default 2048) change it.

use graft::store::remote::{self, PullOptions, PushOptions, Silent};
use graft::store::*;
use rand::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A store of `runs` runs in chains of ten forks, `points` metric points
/// over four series, and one checkpoint object per run, `megabytes` in all.
fn build(root: &Path, runs: u64, points: u64, megabytes: u64) {
    let store = Store::init(root).unwrap();
    let objects = store.objects();
    let config = objects.put_bytes(b"bench config").unwrap();
    let tokenizer = objects.put_bytes(b"bench tokenizer").unwrap();
    let model = ModelRecord::compute_id(config, tokenizer, &BTreeMap::new());
    {
        let index = store.index().unwrap();
        index
            .put_model(&ModelRecord {
                id: model,
                path: root.display().to_string(),
                copied: true,
                config,
                tokenizer,
                tensors: BTreeMap::new(),
                files: BTreeMap::new(),
                summary: Canon::Null,
                added_at: chrono::Utc::now(),
            })
            .unwrap();
        index.flush().unwrap();
    }
    let object_size = (megabytes << 20) / runs.max(1);
    let steps = points / runs.max(1) / 4;
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut previous: Option<Id> = None;
    for i in 0..runs {
        let start = if i % 10 == 0 { None } else { previous };
        let recipe = Recipe {
            config: Canon::map()
                .with("optim", Canon::map().with("lr", 1e-4 / (1 + i % 7) as f64))
                .with("train", Canon::map().with("steps", steps).with("seed", i)),
            base_model: model,
            start_checkpoint: start,
            datasets: vec![],
            seed: i,
            graft_version: "bench".into(),
        };
        let mut recorder = StoreRecorder::new(store.clone());
        recorder
            .begin(&recipe, &[], ExecutionKind::Train, BTreeMap::new())
            .unwrap();
        for step in 1..=steps {
            let x = step as f64;
            recorder
                .log_metrics(
                    step,
                    &[
                        ("loss", 2.0 / x.sqrt()),
                        ("lr", 1e-4),
                        ("grad_norm", 1.0 / x),
                        ("tokens_per_s", 1000.0 + x),
                    ],
                )
                .unwrap();
        }
        let mut bytes = vec![0u8; object_size as usize];
        random.fill_bytes(&mut bytes);
        let tensor = recorder.put_object(&bytes).unwrap();
        previous = Some(
            recorder
                .add_checkpoint(
                    steps,
                    BTreeMap::from([("lora".to_string(), tensor)]),
                    BTreeMap::new(),
                    BTreeMap::from([("eval_loss".to_string(), 1.0)]),
                )
                .unwrap(),
        );
        recorder
            .end(ExecutionStatus::Completed, None, None)
            .unwrap();
    }
    store.index().unwrap().flush().unwrap();
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds
}

/// CPU seconds used so far by this process and by the emulator (if any).
#[derive(Clone, Copy)]
struct Cpu {
    graft: f64,
    emulator: f64,
}

fn cpu_now(emulator: Option<u32>) -> Cpu {
    // SAFETY: getrusage writes into the struct it is given.
    let graft = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    };
    // utime and stime are fields 14 and 15 of /proc/PID/stat, in ticks
    // (fields counted after the parenthesised command name).
    let emulator = emulator
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            // SAFETY: sysconf only reads a constant.
            Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
        })
        .unwrap_or(0.0);
    Cpu { graft, emulator }
}

fn cpu_line(before: Cpu, after: Cpu, emulator: Option<u32>) -> String {
    match emulator {
        Some(_) => format!(
            "CPU: graft {:.1} s, emulator {:.1} s",
            after.graft - before.graft,
            after.emulator - before.emulator
        ),
        None => format!("CPU: graft {:.1} s", after.graft - before.graft),
    }
}

fn measure(label: &str, origin: &Store, url: &str, work: &Path, emulator: Option<u32>) {
    let _ = remote::remove(origin.root(), "bench");
    remote::add(origin.root(), "bench", url).unwrap();
    let (start, cpu) = (Instant::now(), cpu_now(emulator));
    let pushed = remote::push(origin, "bench", &PushOptions::default(), Arc::new(Silent)).unwrap();
    let push_time = start.elapsed().as_secs_f64();
    println!(
        "{label}: push {} objects ({:.1} MB) and {} records in {:.2} s: objects at {:.1} MB/s over the whole push ({})",
        pushed.objects_sent,
        pushed.bytes_sent as f64 / 1e6,
        pushed.records_sent.values().sum::<usize>(),
        push_time,
        mb_per_s(pushed.bytes_sent, push_time),
        cpu_line(cpu, cpu_now(emulator), emulator)
    );

    // What a colleague does first: a clone without checkpoint tensors,
    // usable (log, lineage, metrics, fork) when it returns.
    let copy = work.join(format!("{label}-clone"));
    let (start, cpu) = (Instant::now(), cpu_now(emulator));
    let (store, pulled) = remote::clone(url, &copy, false, Arc::new(Silent)).unwrap();
    println!(
        "{label}: metadata-only clone ({} runs, {} metric points, {} checkpoints' tensors left on the remote) in {:.2} s ({})",
        pulled.records_added.runs,
        pulled.records_added.metric_points,
        pulled.checkpoints_left_on_remote,
        start.elapsed().as_secs_f64(),
        cpu_line(cpu, cpu_now(emulator), emulator)
    );

    // The lazy fetch a fork of the newest run's checkpoint does.
    let checkpoint = {
        let index = store.index().unwrap();
        let newest = index
            .all_runs()
            .unwrap()
            .into_iter()
            .max_by_key(|r| r.seq)
            .unwrap();
        index
            .checkpoint(&index.resolve_checkpoint(&newest.id.to_hex()).unwrap())
            .unwrap()
    };
    let start = Instant::now();
    store.checkpoint_objects_here(&checkpoint).unwrap();
    println!(
        "{label}: lazy fetch of one checkpoint ({} objects) in {:.3} s",
        checkpoint.tensors.len() + checkpoint.state.len(),
        start.elapsed().as_secs_f64()
    );

    let (start, cpu) = (Instant::now(), cpu_now(emulator));
    let options = PullOptions {
        with_objects: true,
        ..PullOptions::default()
    };
    let report = remote::pull(&store, "origin", &options, Arc::new(Silent)).unwrap();
    let pull_time = start.elapsed().as_secs_f64();
    println!(
        "{label}: pull --with-objects of the rest: {} objects ({:.1} MB) in {:.2} s: {:.1} MB/s ({})",
        report.objects_received,
        report.bytes_received as f64 / 1e6,
        pull_time,
        mb_per_s(report.bytes_received, pull_time),
        cpu_line(cpu, cpu_now(emulator), emulator)
    );
}

struct Emulator(Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto on a free port of 127.0.0.1 with bucket `graft`; `None` (said why)
/// when it is not installed.
fn emulator() -> Option<(Emulator, String)> {
    let installed = Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        println!("s3 emulator: skipped, moto is not installed (pip install 'moto[server]')");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let guard = Emulator(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let script = format!(
        "import boto3; boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', \
         aws_access_key_id='bench', aws_secret_access_key='bench').create_bucket(Bucket='graft')"
    );
    let created = Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    if !created.status.success() {
        println!("s3 emulator: skipped, it refused a bucket");
        return None;
    }
    Some((guard, endpoint))
}

fn main() {
    let runs = setting("GRAFT_BENCH_RUNS", 1000);
    let points = setting("GRAFT_BENCH_POINTS", 10_000_000);
    let megabytes = setting("GRAFT_BENCH_MB", 2048);
    println!(
        "graft remote benchmark ({} cores): {runs} runs, {points} metric points, {megabytes} MiB of objects",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let work = tempfile::tempdir().unwrap();
    let start = Instant::now();
    build(&work.path().join("origin"), runs, points, megabytes);
    println!("built the store in {:.1} s", start.elapsed().as_secs_f64());
    let origin = Store::open(&work.path().join("origin")).unwrap();

    let folder = work.path().join("hub");
    measure(
        "file",
        &origin,
        &format!("file://{}", folder.display()),
        work.path(),
        None,
    );

    if let Some((guard, endpoint)) = emulator() {
        let pid = guard.0.id();
        // SAFETY (edition 2024 wording): set before any other thread reads
        // the environment; the benchmark is single threaded here.
        std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
        std::env::set_var("AWS_DEFAULT_REGION", "us-east-1");
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        measure(
            "s3-moto",
            &origin,
            "s3://graft/bench",
            work.path(),
            Some(pid),
        );
    }
}

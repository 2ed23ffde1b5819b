//! Sharing the record through a remote (`graft remote`, `push`, `pull`,
//! `clone`), on the shared llama-tiny fixture: a folder remote and an S3
//! emulator (moto) on 127.0.0.1, forks merged from several stores, tags moved
//! by someone else, and pushes and pulls killed part way.

use crate::common::llama_tiny as fixture;
use crate::common::write_synth;
use crate::common::{stderr, stdout};
use serde_json::Value;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

thread_local! {
    /// Environment for every graft this test thread runs (the S3 test's
    /// endpoint and credentials); each test runs on its own thread.
    static ENV: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

fn command(dir: &Path, store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_graft"));
    command
        .args(args)
        .current_dir(dir)
        .env("GRAFT_STORE", store)
        .env("GRAFT_LOCK_TIMEOUT_MS", "60000");
    ENV.with(|env| {
        for (key, value) in env.borrow().iter() {
            command.env(key, value);
        }
    });
    command
}

fn graft(store: &Path, args: &[&str]) -> Output {
    command(Path::new("."), store, args).output().unwrap()
}

fn graft_ok(store: &Path, args: &[&str]) -> String {
    ok_in(Path::new("."), store, args)
}

/// A work folder with task files, `a.toml` (task A on the fixture) and
/// `b.toml` (a fork to task B).
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_synth(
        dir.path(),
        &[
            ("reverse.jsonl", "reverse", 32, 1),
            ("reverse-val.jsonl", "reverse", 8, 2),
            ("arith.jsonl", "arithmetic", 32, 3),
            ("arith-val.jsonl", "arithmetic", 8, 4),
        ],
    );
    std::fs::write(
        dir.path().join("a.toml"),
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
steps = 8
seed = 5
eval_every = 4
checkpoint_every = 4
"#,
            fixture().display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        r#"[data]
train = [{ path = "arith.jsonl", format = "chat" }]
eval = [{ path = "arith-val.jsonl", name = "arith" }]
replay = { ratio = 0.25, from = "parent" }
seq_len = 64
template = "plain"

[optim]
lr = 2e-3
batch_size = 4

[train]
steps = 4
seed = 6
eval_every = 2
checkpoint_every = 2
"#,
    )
    .unwrap();
    dir
}

fn run_in(dir: &Path, store: &Path, args: &[&str]) -> Output {
    command(dir, store, args).output().unwrap()
}

fn ok_in(dir: &Path, store: &Path, args: &[&str]) -> String {
    let output = run_in(dir, store, args);
    assert!(
        output.status.success(),
        "graft {args:?}: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn folder_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// `graft clone URL DIR`, insisting on success.
fn clone(work: &Path, url: &str, dir: &Path) -> String {
    let output = run_in(work, dir, &["clone", url, &dir.display().to_string()]);
    assert!(
        output.status.success(),
        "clone {url}: {}\n{}",
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

/// The answers that must not depend on which store gives them.
fn answers(store: &Path) -> Vec<String> {
    vec![
        graft_ok(store, &["log", "--graph"]),
        // A run's `seq` numbers it in its own store only.
        {
            let mut log = json(&graft_ok(store, &["log", "--json"]));
            for run in log.as_array_mut().unwrap() {
                run.as_object_mut().unwrap().remove("seq");
            }
            log.to_string()
        },
        graft_ok(store, &["lineage", "task-b", "--json"]),
        graft_ok(store, &["metrics", "task-a", "--json"]),
        graft_ok(store, &["metrics", "task-b", "--json"]),
        graft_ok(store, &["show", "task-a@best", "--json"]),
        graft_ok(store, &["tag", "--list"]),
    ]
}

/// Train task A and its fork B into `store`; returns (run a, run b).
fn train_lineage(work: &Path, store: &Path) -> (String, String) {
    let a = json(&ok_in(
        work,
        store,
        &["train", "a.toml", "--tag", "task-a", "-q", "--json"],
    ));
    let b = json(&ok_in(
        work,
        store,
        &[
            "fork",
            "task-a@best",
            "b.toml",
            "--tag",
            "task-b",
            "-q",
            "--json",
        ],
    ));
    (
        a["run"].as_str().unwrap().to_string(),
        b["run"].as_str().unwrap().to_string(),
    )
}

/// Checkpoint ids of a run, by step.
fn checkpoints(store: &Path, run: &str) -> Vec<(u64, String)> {
    let show = json(&graft_ok(store, &["show", run, "--json"]));
    let mut out: Vec<(u64, String)> = show["checkpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no checkpoints in {show}"))
        .iter()
        .map(|c| {
            (
                c["step"].as_u64().unwrap(),
                c["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The object ids (tensors and state) of the checkpoint `reference` names.
fn checkpoint_objects(store: &Path, reference: &str) -> Vec<String> {
    let show = json(&graft_ok(store, &["show", reference, "--json"]));
    let mut ids: Vec<String> = ["tensors", "state"]
        .iter()
        .flat_map(|key| show[*key].as_object().unwrap().values())
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert!(!ids.is_empty(), "{show}");
    ids.sort();
    ids.dedup();
    ids
}

fn object_path(objects: &Path, id: &str) -> PathBuf {
    objects.join(&id[..2]).join(&id[2..])
}

fn has_object(store: &Path, id: &str) -> bool {
    object_path(&store.join("objects"), id).exists()
}

/// The whole round trip against one remote URL: push a lineage, clone it
/// without objects, compare every answer, then fork in the clone (which
/// fetches the checkpoint it starts from) and reproduce there.
fn round_trip(work: &Path, url: &str) {
    let origin = work.join("origin");
    let (a_run, _) = train_lineage(work, &origin);
    graft_ok(&origin, &["remote", "add", "hub", url]);
    let pushed = json(&graft_ok(&origin, &["push", "hub", "--json"]));
    assert!(pushed["objects_sent"].as_u64().unwrap() > 0, "{pushed}");
    assert!(pushed["commit"].is_string(), "{pushed}");
    let again = json(&graft_ok(&origin, &["push", "hub", "--json"]));
    assert_eq!(
        again["objects_sent"], 0,
        "a second push sends nothing: {again}"
    );
    assert!(again["commit"].is_null(), "{again}");

    // A metadata-only clone: the whole record, no checkpoint tensors.
    let copy = work.join("copy");
    clone(work, url, &copy);
    for (cloned, original) in answers(&copy).iter().zip(answers(&origin)) {
        assert_eq!(
            cloned.lines().collect::<Vec<_>>(),
            original.lines().collect::<Vec<_>>()
        );
    }
    let best = checkpoint_objects(&origin, "task-a@best");
    assert!(
        best.iter().all(|id| !has_object(&copy, id)),
        "no tensors came"
    );
    let verified = json(&graft_ok(&copy, &["verify", "--json"]));
    let left = verified["objects_on_remote"].as_u64().unwrap();
    assert!(left >= best.len() as u64, "{verified}");
    assert!(
        verified["on_remote"]
            .to_string()
            .contains("remote `origin`"),
        "verify says where they are: {verified}"
    );
    let collected = json(&graft_ok(&copy, &["gc", "--grace", "0", "--json"]));
    assert_eq!(collected["removed"], serde_json::json!([]), "{collected}");
    graft_ok(&copy, &["verify"]);
    let remotes = graft_ok(&copy, &["remote", "ls"]);
    assert!(
        remotes.contains("origin") && remotes.contains(url),
        "{remotes}"
    );

    // The same fork from both stores is the same run, with the same
    // checkpoints; the clone reproduces it.
    let fork = |store: &Path| {
        json(&ok_in(
            work,
            store,
            &[
                "fork",
                "task-a@best",
                "b.toml",
                "--set",
                "optim.lr=1e-3",
                "--tag",
                "task-c",
                "-q",
                "--json",
            ],
        ))["run"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let in_copy = fork(&copy);
    assert!(
        best.iter().all(|id| has_object(&copy, id)),
        "the fork fetched the checkpoint it starts from"
    );
    let verified = json(&graft_ok(&copy, &["verify", "--json"]));
    assert!(
        verified["objects_on_remote"].as_u64().unwrap() <= left - best.len() as u64,
        "{verified}"
    );
    let in_origin = fork(&origin);
    assert_eq!(in_copy, in_origin);
    assert_eq!(
        checkpoints(&copy, &in_copy),
        checkpoints(&origin, &in_origin)
    );
    let reproduced = ok_in(work, &copy, &["reproduce", &in_copy, "-q"]);
    assert!(reproduced.contains("reproduces"), "{reproduced}");
    graft_ok(&copy, &["verify"]);

    // New runs reach the origin by push and pull.
    graft_ok(&copy, &["push", "origin"]);
    let pulled = json(&graft_ok(&origin, &["pull", "hub", "--json"]));
    assert_eq!(pulled["records_added"]["runs"], 0, "{pulled}");
    let lineage = json(&graft_ok(&origin, &["lineage", "task-c", "--json"]));
    assert_eq!(lineage["hops"][1]["run"], a_run.as_str());
    graft_ok(&origin, &["verify"]);
}

#[test]
fn a_lineage_pushed_to_a_folder_clones_with_the_same_log_lineage_metrics_and_reproduces() {
    let work = workspace();
    let hub = work.path().join("hub");
    round_trip(work.path(), &folder_url(&hub));
}

#[test]
fn two_stores_forking_one_pulled_run_merge_both_branches_in_a_third() {
    let work = workspace();
    let hub = folder_url(&work.path().join("hub"));
    let first = work.path().join("first");
    let a = json(&ok_in(
        work.path(),
        &first,
        &["train", "a.toml", "--tag", "task-a", "-q", "--json"],
    ));
    let a_run = a["run"].as_str().unwrap().to_string();
    graft_ok(&first, &["remote", "add", "hub", &hub]);
    graft_ok(&first, &["push", "hub"]);

    let left = work.path().join("left");
    let right = work.path().join("right");
    clone(work.path(), &hub, &left);
    clone(work.path(), &hub, &right);
    let fork = |store: &Path, lr: &str, tag: &str| {
        json(&ok_in(
            work.path(),
            store,
            &[
                "fork",
                "task-a@best",
                "b.toml",
                "--set",
                &format!("optim.lr={lr}"),
                "--tag",
                tag,
                "-q",
                "--json",
            ],
        ))["run"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let left_run = fork(&left, "1e-3", "left");
    let right_run = fork(&right, "3e-3", "right");
    assert_ne!(left_run, right_run);
    graft_ok(&left, &["push", "origin"]);
    graft_ok(&right, &["push", "origin"]);

    let third = work.path().join("third");
    clone(work.path(), &hub, &third);
    for (tag, run) in [("left", &left_run), ("right", &right_run)] {
        let lineage = json(&graft_ok(&third, &["lineage", tag, "--json"]));
        let hops = lineage["hops"].as_array().unwrap();
        assert_eq!(hops.len(), 2, "{lineage}");
        assert_eq!(hops[0]["run"], run.as_str());
        assert_eq!(hops[1]["run"], a_run.as_str());
        assert_eq!(
            graft_ok(&third, &["metrics", tag, "--json"]),
            graft_ok(
                if tag == "left" { &left } else { &right },
                &["metrics", tag, "--json"]
            )
        );
    }
    let graph = graft_ok(&third, &["log", "--graph"]);
    for run in [&a_run, &left_run, &right_run] {
        assert!(graph.contains(&run[..8]), "{run} in\n{graph}");
    }
    graft_ok(&third, &["verify"]);

    // `first` pulls both branches in; pulling again adds nothing.
    let pulled = json(&graft_ok(&first, &["pull", "hub", "--json"]));
    assert_eq!(pulled["records_added"]["runs"], 2, "{pulled}");
    let again = json(&graft_ok(&first, &["pull", "hub", "--json"]));
    assert_eq!(again["records_added"]["runs"], 0, "{again}");
    assert_eq!(again["objects_received"], 0, "{again}");
    assert_eq!(
        graft_ok(&first, &["log", "--graph"]),
        graft_ok(&third, &["log", "--graph"])
    );
}

#[test]
fn a_tag_moved_on_the_remote_by_someone_else_is_refused_without_force() {
    let work = workspace();
    let hub = folder_url(&work.path().join("hub"));
    let alice = work.path().join("alice");
    let (a_run, b_run) = train_lineage(work.path(), &alice);
    graft_ok(&alice, &["tag", "pick", "task-a"]);
    graft_ok(&alice, &["remote", "add", "hub", &hub]);
    graft_ok(&alice, &["push", "hub"]);
    let bob = work.path().join("bob");
    clone(work.path(), &hub, &bob);

    // Bob moves the tag and pushes: he saw it at task-a, so that is his move.
    graft_ok(&bob, &["tag", "pick", "task-b", "--force"]);
    graft_ok(&bob, &["push", "origin"]);
    // Alice never saw that: her push of `pick` (still task-a) is refused,
    // and the remote keeps Bob's target.
    let output = graft(&alice, &["push", "hub"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("pick") && message.contains("moved") && message.contains("--force"),
        "{message}"
    );
    let remote_tag = std::fs::read_to_string(work.path().join("hub/refs/pick")).unwrap();
    assert!(remote_tag.contains(&b_run), "{remote_tag}");

    // Her pull takes Bob's move (she had not moved it herself)...
    graft_ok(&alice, &["pull", "hub"]);
    let show = json(&graft_ok(&alice, &["show", "pick", "--json"]));
    assert_eq!(show["id"], b_run.as_str(), "{show}");
    // ...and a tag both moved is a conflict a pull refuses, writing nothing.
    graft_ok(&alice, &["tag", "pick", "task-a", "--force"]);
    graft_ok(&bob, &["tag", "pick", &format!("{b_run}@last"), "--force"]);
    graft_ok(&bob, &["push", "origin"]);
    let output = graft(&alice, &["pull", "hub"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("pick"), "{}", stderr(&output));
    let show = json(&graft_ok(&alice, &["show", "pick", "--json"]));
    assert_eq!(show["id"], a_run.as_str(), "{show}");
    // --force settles it either way.
    graft_ok(&alice, &["push", "hub", "--force"]);
    let remote_tag = std::fs::read_to_string(work.path().join("hub/refs/pick")).unwrap();
    assert!(remote_tag.contains(&a_run), "{remote_tag}");
}

#[test]
fn bad_remote_input_is_refused_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    graft_ok(&store, &["init"]);
    let cases: [(&str, Vec<&str>, &str); 5] = [
        (
            "unsupported scheme",
            vec!["remote", "add", "x", "ftp://host/path"],
            "file://",
        ),
        (
            "relative file URL",
            vec!["remote", "add", "x", "file://relative"],
            "absolute",
        ),
        ("bad name", vec!["remote", "add", "a b", "/tmp/x"], "name"),
        ("unknown remote", vec!["push", "nowhere"], "remote add"),
        ("no bucket", vec!["remote", "add", "x", "s3://"], "bucket"),
    ];
    for (case, args, expected) in cases {
        let output = graft(&store, &args);
        assert_eq!(output.status.code(), Some(2), "{case}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(expected),
            "{case}: {}",
            stderr(&output)
        );
    }
    assert!(!store.join("remotes").exists(), "nothing recorded");
    // A clone from a folder with no record creates nothing.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let target = work.path().join("clone");
    let output = graft(
        &store,
        &["clone", &folder_url(&empty), &target.display().to_string()],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no graft record"),
        "{}",
        stderr(&output)
    );
    assert!(!target.exists());
    // A remote added twice keeps its first URL.
    graft_ok(&store, &["remote", "add", "hub", &folder_url(&empty)]);
    let output = graft(&store, &["remote", "add", "hub", "/elsewhere"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(graft_ok(&store, &["remote", "ls"]).contains(&folder_url(&empty)));
}

/// An S3 emulator (moto) on 127.0.0.1, killed when dropped.
struct Emulator {
    child: Child,
    endpoint: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start moto on a free port with bucket `graft`, or say why it cannot be
/// (not installed: `.ci/run` installs it).
fn start_emulator() -> Result<Emulator, String> {
    let probe = Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .output()
        .map_err(|e| format!("python3 cannot run: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "moto is not installed (pip install 'moto[server]'): {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
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
        .map_err(|e| format!("moto cannot start: {e}"))?;
    let emulator = Emulator {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(format!("moto did not listen on port {port} within 30 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let script = format!(
        "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
         aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket='graft')",
        emulator.endpoint
    );
    let created = Command::new("python3")
        .args(["-c", &script])
        .output()
        .map_err(|e| e.to_string())?;
    assert!(
        created.status.success(),
        "the emulator runs but refuses a bucket: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    Ok(emulator)
}

fn use_emulator(emulator: &Emulator) {
    ENV.with(|env| {
        *env.borrow_mut() = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", emulator.endpoint.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    });
}

/// Run `body` in a fresh workspace with this thread's grafts pointed at a
/// fresh emulator (said and skipped when moto is not installed; `.ci/run`
/// installs it).
fn on_emulator(body: impl FnOnce(&Path)) {
    let emulator = match start_emulator() {
        Ok(emulator) => emulator,
        Err(why) => {
            eprintln!("SKIPPED: no S3 emulator: {why}");
            return;
        }
    };
    use_emulator(&emulator);
    let work = workspace();
    body(work.path());
}

#[test]
fn a_lineage_pushed_to_an_s3_emulator_clones_with_the_same_answers_and_reproduces() {
    on_emulator(|work| round_trip(work, "s3://graft/team/record"));
}

/// Kill `args` with SIGKILL after `delay_ms`, slowed so the kill lands
/// part way; returns whether it was still running when killed.
fn kill_part_way(dir: &Path, store: &Path, args: &[&str], delay_ms: u64) -> bool {
    let mut child = command(dir, store, args)
        .env("GRAFT_SLOW_TRANSFER_MS", "15")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

#[test]
fn push_and_pull_killed_part_way_complete_on_a_rerun_and_verify_clean() {
    let work = workspace();
    let hub = work.path().join("hub");
    let url = folder_url(&hub);
    let origin = work.path().join("origin");
    train_lineage(work.path(), &origin);
    graft_ok(&origin, &["remote", "add", "hub", &url]);
    // Random points: a seed from the clock, printed so a failure can be
    // replayed by reading it off.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("kill points seed {seed}");
    let mut next = seed;
    let mut point = |max: u64| {
        next = next
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        50 + (next >> 33) % max
    };
    // The push moves ~100 files at 15 ms each, 8 at a time: about 200 ms.
    let mut killed = 0;
    for _ in 0..3 {
        killed += kill_part_way(work.path(), &origin, &["push", "hub"], point(250)) as usize;
        graft_ok(&origin, &["verify"]);
    }
    assert!(killed > 0, "no kill landed during a push (seed {seed})");
    graft_ok(&origin, &["push", "hub"]);
    let again = json(&graft_ok(&origin, &["push", "hub", "--json"]));
    assert_eq!(again["objects_sent"], 0, "{again}");
    assert!(again["commit"].is_null(), "the rerun completed it: {again}");

    let copy = work.path().join("copy");
    graft_ok(&copy, &["init"]);
    graft_ok(&copy, &["remote", "add", "hub", &url]);
    let mut killed = 0;
    for _ in 0..3 {
        killed += kill_part_way(
            work.path(),
            &copy,
            &["pull", "hub", "--with-objects"],
            point(250),
        ) as usize;
        graft_ok(&copy, &["verify"]);
    }
    assert!(killed > 0, "no kill landed during a pull (seed {seed})");
    graft_ok(&copy, &["pull", "hub", "--with-objects"]);
    let verified = json(&graft_ok(&copy, &["verify", "--json"]));
    assert_eq!(verified["objects_on_remote"], 0, "{verified}");
    graft_ok(&copy, &["verify"]);
    for (cloned, original) in answers(&copy).iter().zip(answers(&origin)) {
        assert_eq!(
            cloned.lines().collect::<Vec<_>>(),
            original.lines().collect::<Vec<_>>(),
            "seed {seed}"
        );
    }
}

/// A fork of task-a@best that is not task-b (which is the same fork at the
/// default rate): a new run.
const NEW_FORK: [&str; 6] = [
    "fork",
    "task-a@best",
    "b.toml",
    "--set",
    "optim.lr=1e-3",
    "-q",
];

/// Tasks A and B trained in `work/origin` and pushed to the folder remote
/// `hub` at `work/hub`; returns (origin, hub folder).
fn pushed_lineage(work: &Path) -> (PathBuf, PathBuf) {
    let hub = work.join("hub");
    let origin = work.join("origin");
    train_lineage(work, &origin);
    graft_ok(&origin, &["remote", "add", "hub", &folder_url(&hub)]);
    graft_ok(&origin, &["push", "hub"]);
    (origin, hub)
}

#[test]
fn a_damaged_checkpoint_object_on_the_remote_is_refused_by_name_and_nothing_is_written() {
    let work = workspace();
    let (origin, hub) = pushed_lineage(work.path());
    // Damage one object of the checkpoint a fork would start from.
    let name = checkpoint_objects(&origin, "task-a@best")[0].clone();
    let damaged = object_path(&hub.join("objects"), &name);
    std::fs::write(&damaged, b"not what its name says").unwrap();

    // A metadata-only clone does not read it, and verifies clean.
    let copy = work.path().join("copy");
    clone(work.path(), &folder_url(&hub), &copy);
    graft_ok(&copy, &["verify"]);
    // The fork that needs it fetches it, refuses it by name, and writes nothing.
    let runs_before = json(&graft_ok(&copy, &["log", "--json"]));
    let output = run_in(work.path(), &copy, &NEW_FORK);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&name) && message.contains("corrupt"),
        "{message}"
    );
    assert!(!has_object(&copy, &name));
    assert_eq!(json(&graft_ok(&copy, &["log", "--json"])), runs_before);
    graft_ok(&copy, &["verify"]);

    // An eager clone refuses it too and leaves nothing.
    let eager = work.path().join("eager");
    let output = run_in(
        work.path(),
        &eager,
        &[
            "clone",
            &folder_url(&hub),
            &eager.display().to_string(),
            "--with-objects",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains(&name), "{}", stderr(&output));
    assert!(!eager.exists(), "a refused clone leaves nothing");

    let store = work.path().join("store");
    graft_ok(&store, &["init"]);
    graft_ok(&store, &["remote", "add", "hub", &folder_url(&hub)]);
    let output = graft(&store, &["pull", "hub", "--with-objects"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("corrupt"), "{}", stderr(&output));
    assert_eq!(
        json(&graft_ok(&store, &["log", "--json"])),
        serde_json::json!([]),
        "no record lands without its objects"
    );
    graft_ok(&store, &["verify"]);
    // The pusher repairs the remote by pushing again: the damaged file is
    // replaced only if it is missing, so remove it first, as a user would
    // after the message names it.
    std::fs::remove_file(&damaged).unwrap();
    graft_ok(&origin, &["push", "hub"]);
    graft_ok(&store, &["pull", "hub", "--with-objects"]);
    graft_ok(&store, &["verify"]);
    ok_in(work.path(), &copy, &NEW_FORK);
    assert!(has_object(&copy, &name));
    graft_ok(&copy, &["verify"]);
}

#[test]
fn a_metadata_only_clone_names_the_remote_holding_tensors_it_cannot_fetch_or_push() {
    let work = workspace();
    let (origin, hub) = pushed_lineage(work.path());
    let copy = work.path().join("copy");
    clone(work.path(), &folder_url(&hub), &copy);
    let runs_before = json(&graft_ok(&copy, &["log", "--json"]));

    let moved = work.path().join("hub-moved");
    std::fs::rename(&hub, &moved).unwrap();
    let output = run_in(work.path(), &copy, &NEW_FORK);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("remote `origin`")
            && message.contains(&folder_url(&hub))
            && message.contains("--with-objects"),
        "{message}"
    );
    assert_eq!(json(&graft_ok(&copy, &["log", "--json"])), runs_before);
    graft_ok(&copy, &["verify"]);
    // Exporting it is the same lazy load, and names the remote too.
    let output = run_in(
        work.path(),
        &copy,
        &["export", "task-a@best", "--peft", "adapter-out"],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("remote `origin`"),
        "{}",
        stderr(&output)
    );

    // So is evaluating the last checkpoint of task-b.
    let eval = ["eval", "task-b", "--data", "arith-val.jsonl", "--json"];
    let output = run_in(work.path(), &copy, &eval);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("remote `origin`"),
        "{}",
        stderr(&output)
    );

    std::fs::rename(&moved, &hub).unwrap();
    assert_eq!(
        json(&ok_in(work.path(), &copy, &eval)),
        json(&ok_in(work.path(), &origin, &eval)),
        "the fetched checkpoint evaluates as in the origin"
    );
    ok_in(work.path(), &copy, &NEW_FORK);
    ok_in(
        work.path(),
        &copy,
        &["export", "task-a@best", "--peft", "adapter-out"],
    );
    graft_ok(&copy, &["verify"]);

    // A push elsewhere cannot send tensors it never fetched: it names them
    // and the remote that holds them, then succeeds once they are here.
    let other = folder_url(&work.path().join("other"));
    graft_ok(&copy, &["remote", "add", "other", &other]);
    let output = graft(&copy, &["push", "other"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("remote `origin`") && message.contains("pull origin --with-objects"),
        "{message}"
    );
    graft_ok(&copy, &["pull", "origin", "--with-objects"]);
    graft_ok(&copy, &["push", "other"]);
    let third = work.path().join("third");
    clone(work.path(), &other, &third);
    assert_eq!(
        graft_ok(&third, &["log", "--graph"]),
        graft_ok(&copy, &["log", "--graph"])
    );
}

/// Alice's push reads tag `pick` on the remote and stops just before its
/// conditional write; Bob moves the tag meanwhile. Only the remote's
/// compare-and-swap can catch that: her write must fail, naming the tag,
/// and leave Bob's target; `--force` then settles it.
fn a_tag_moved_during_a_push_is_refused(work: &Path, url: &str) {
    let alice = work.join("alice");
    let (_, b_run) = train_lineage(work, &alice);
    graft_ok(&alice, &["tag", "pick", "task-a"]);
    graft_ok(&alice, &["remote", "add", "hub", url]);
    graft_ok(&alice, &["push", "hub"]);
    let bob = work.join("bob");
    clone(work, url, &bob);

    graft_ok(&alice, &["tag", "pick", "task-b", "--force"]);
    let gate = work.join("tag-gate");
    let pushing = command(work, &alice, &["push", "hub"])
        .env("GRAFT_PAUSE_BEFORE_TAG_WRITE", &gate)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !gate.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the push never reached its tag write"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Bob saw `pick` at task-a, as the remote still holds it: his move goes in.
    let bob_target = format!("{b_run}@last");
    graft_ok(&bob, &["tag", "pick", &bob_target, "--force"]);
    graft_ok(&bob, &["push", "origin"]);
    std::fs::remove_file(&gate).unwrap();
    let output = pushing.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("pick")
            && message.contains("changed on the remote during this push")
            && message.contains("--force"),
        "{message}"
    );
    let bob_checkpoint = json(&graft_ok(&bob, &["show", "pick", "--json"]))["id"].clone();
    let reader = work.join("reader");
    clone(work, url, &reader);
    assert_eq!(
        json(&graft_ok(&reader, &["show", "pick", "--json"]))["id"],
        bob_checkpoint,
        "the remote kept Bob's move"
    );

    graft_ok(&alice, &["push", "hub", "--force"]);
    graft_ok(&reader, &["pull", "origin", "--force"]);
    assert_eq!(
        json(&graft_ok(&reader, &["show", "pick", "--json"]))["id"],
        b_run.as_str()
    );
}

#[test]
fn a_tag_moved_on_a_folder_remote_during_a_push_is_refused_without_force() {
    let work = workspace();
    let hub = folder_url(&work.path().join("hub"));
    a_tag_moved_during_a_push_is_refused(work.path(), &hub);
}

#[test]
fn a_tag_moved_on_an_s3_emulator_during_a_push_is_refused_by_its_conditional_write() {
    on_emulator(|work| a_tag_moved_during_a_push_is_refused(work, "s3://graft/team/tags"));
}

//! The `graft ui` page in a real headless browser (Debian's chromium, driven
//! by npm's playwright-core through `tests/ui/browser.mjs`) against a copy of
//! the quickstart: the lineage graph, a `--where` filter, the compare view of
//! the two forks (and its screenshot, in the test's own directory; with
//! `GRAFT_UPDATE_SCREENSHOT=1` it replaces `docs/ui-compare.png`, which the README
//! shows), and a training started during the test that the page follows.
//! Every expectation comes from the CLI's own `--json` output. Without the
//! browser or playwright-core (`.ci/run` installs both) the test fails.

use crate::common::ui::UiServer;
use crate::common::{copy_dir, graft, graft_ok, quickstart, stderr};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The names of the store's journal files: a new one is a run that started.
fn journal_files(store: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(store.join("journal"))
        .map(|entries| entries.flatten().map(|entry| entry.file_name()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var("GRAFT_CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    assert!(
        path.is_file(),
        "the browser tests need chromium at {} (`apt-get install -y chromium`, as .ci/run does)",
        path.display()
    );
    path
}

fn browser_script() -> PathBuf {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    assert!(
        folder.join("node_modules/playwright-core").is_dir(),
        "the browser tests need playwright-core in tests/ui (`npm install --prefix tests/ui`, as .ci/run does)"
    );
    folder.join("browser.mjs")
}

fn json(store: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&graft_ok(store, args)).unwrap()
}

/// What the page must show, from the CLI.
fn expectations(store: &Path, screenshot: &Path) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = json(store, &["log", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            serde_json::json!({
                "id": run["id"], "parent": run["parent_run"], "start_step": run["start_step"],
            })
        })
        .collect();
    assert_eq!(runs.len(), 4, "the quickstart records four runs");
    let filter = "best.eval_loss < 2";
    let ids: Vec<serde_json::Value> = json(store, &["runs", "--where", filter, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["id"].clone())
        .collect();
    let bad = "best.eval_loss < 2 and optim.lrr > 0";
    let message = stderr(&graft(store, &["runs", "--where", bad]));
    let column: u64 = message
        .split("at column ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the CLI names a column: {message}"));
    let forks = ["task-b", "task-b-replay"];
    let mut first_steps = serde_json::Map::new();
    for series in ["loss", "eval_loss"] {
        let mut firsts = serde_json::Map::new();
        for fork in forks {
            let shown = json(store, &["show", fork, "--json"]);
            let fork_step = shown["start_step"].as_u64().unwrap();
            let metrics = json(store, &["metrics", fork, "--series", series, "--json"]);
            let first = metrics["series"][series][0][0].as_u64().unwrap();
            firsts.insert(
                shown["id"].as_str().unwrap().into(),
                (fork_step + first).into(),
            );
        }
        first_steps.insert(series.into(), firsts.into());
    }
    let diff_keys: Vec<serde_json::Value> = json(store, &["diff", forks[0], forks[1], "--json"])
        ["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change["key"].clone())
        .collect();
    let fork = json(store, &["show", forks[0], "--json"]);
    let parent = serde_json::json!({ "id": fork["parent_run"], "until": fork["start_step"] });
    serde_json::json!({
        "runs": runs,
        "filter": { "where": filter, "ids": ids },
        "bad_filter": { "where": bad, "column": column },
        "compare": {
            "labels": forks, "first_steps": first_steps, "diff_keys": diff_keys, "parent": parent,
        },
        "screenshot": screenshot,
    })
}

#[test]
fn browser_shows_lineage_filter_compare_and_a_training_as_it_runs() {
    let chromium = chromium();
    let script = browser_script();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(quickstart().dir.path(), dir.path());
    let store = dir.path().join("store");
    // A test run leaves the tracked picture alone unless asked to refresh it.
    let screenshot = if std::env::var_os("GRAFT_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ui-compare.png")
    } else {
        dir.path().join("ui-compare.png")
    };
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let expect = dir.path().join("expect.json");
    std::fs::write(&expect, expectations(&store, &screenshot).to_string()).unwrap();

    let server = UiServer::start(&store);
    let mut browser = Command::new("node")
        .arg(&script)
        .env("GRAFT_UI_URL", server.url())
        .env("GRAFT_UI_EXPECT", &expect)
        .env("GRAFT_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs (the browser tests need Node.js)");
    let mut output = BufReader::new(browser.stdout.take().unwrap()).lines();
    let first = output.next().and_then(Result::ok).unwrap_or_default();
    if first != "phase 1 passed" {
        let status = browser.wait().unwrap();
        panic!("the page's checks failed ({status}): {first}");
    }

    // A fork of task A that trains while the page watches. The page is told
    // once the trainer has registered its run (its journal exists), so a
    // trainer slow to start on a loaded machine is not taken for a page that
    // does not follow it.
    let journals_before = journal_files(&store);
    let training_log = dir.path().join("training.log");
    let mut training = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["fork", "task-a@best", "experiments/task-b.toml"])
        .args(["--set", "train.seed=101", "--set", "train.steps=2000"])
        .current_dir(dir.path())
        .env("GRAFT_STORE", &store)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&training_log).unwrap())
        .spawn()
        .unwrap();
    let registered = Instant::now();
    while journal_files(&store)
        .iter()
        .all(|name| journals_before.contains(name))
    {
        if let Some(status) = training.try_wait().unwrap() {
            let _ = browser.kill();
            let log = std::fs::read_to_string(&training_log).unwrap_or_default();
            panic!("the training ended ({status}) before it registered its run:\n{log}");
        }
        assert!(
            registered.elapsed() < Duration::from_secs(600),
            "the training did not register its run in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writeln!(browser.stdin.as_mut().unwrap(), "training started").unwrap();
    let second = output.next().and_then(Result::ok).unwrap_or_default();
    let status = browser.wait().unwrap();
    let training_status = training.try_wait().unwrap();
    let _ = training.kill();
    let _ = training.wait();
    let log = std::fs::read_to_string(&training_log).unwrap_or_default();
    assert!(
        status.success() && second.starts_with("phase 2 passed"),
        "the page did not follow the training ({status}): {second}\n\
         the training ({training_status:?} when the page gave up) printed:\n{log}"
    );
    drop(server);
    // A PNG (its signature), written by the browser during this run.
    let picture = std::fs::read(&screenshot).expect("the page's screenshot");
    assert!(
        picture.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {}",
        screenshot.display()
    );
}

//! `graft ui`'s JSON through the real binary on a free port, against a copy
//! of the quickstart's store: the same documents as the CLI's `--json`, the
//! same `--where` errors, fork curves placed after their parent's fork step,
//! and refusals (other hosts and origins, paths outside the assets, writes,
//! malformed queries) that leave the store as it was.

use crate::common::ui::{query, UiServer};
use crate::common::{copy_dir, graft, graft_ok, quickstart, stderr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One copy of the quickstart store for this module's servers, which only
/// read it.
fn store() -> &'static Path {
    static COPY: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = COPY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        copy_dir(&quickstart().store(), &path);
        (dir, path)
    });
    path
}

fn cli_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&graft_ok(store(), args)).unwrap()
}

#[test]
fn api_runs_serves_what_graft_runs_json_prints_for_the_same_filter() {
    let server = UiServer::start(store());
    for filter in ["best.eval_loss < 2", "optim.lr < 1e-1 and steps >= 200", ""] {
        let mut args = vec!["runs", "--json"];
        if !filter.is_empty() {
            args.extend(["--where", filter]);
        }
        let served = server.json(&query("/api/runs", &[("where", filter)]));
        assert_eq!(served, cli_json(&args), "filter {filter:?}");
    }
    let sorted = server.json(&query("/api/runs", &[("sort", "-best.eval_loss")]));
    assert_eq!(
        sorted,
        cli_json(&["runs", "--json", "--sort", "-best.eval_loss"])
    );
    let table = server.json(&query(
        "/api/table",
        &[("where", "best.eval_loss < 2"), ("columns", "optim.lr")],
    ));
    let expected = cli_json(&["runs", "--json", "--where", "best.eval_loss < 2"]);
    assert_eq!(table["total"], expected.as_array().unwrap().len());
    assert!(
        table["rows"][0]["values"]["optim.lr"].is_number(),
        "{table}"
    );
}

#[test]
fn api_where_errors_point_at_the_column_the_cli_names() {
    let server = UiServer::start(store());
    for bad in [
        "best.eval_los < 2",
        "steps >",
        "status = completed",
        "(seed < 3",
    ] {
        let response = server.get(&query("/api/table", &[("where", bad)]));
        assert_eq!(response.status, 400, "{bad}: {}", response.body);
        let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        let cli = graft(store(), &["runs", "--where", bad]);
        let message = stderr(&cli);
        let column = body["column"].as_u64().unwrap();
        assert!(
            message.contains(&format!("at column {column}")),
            "{bad}: the UI says column {column}, the CLI: {message}"
        );
        assert!(
            message.contains(body["error"].as_str().unwrap()),
            "{body} / {message}"
        );
    }
}

#[test]
fn api_compare_starts_each_fork_at_its_parents_fork_step() {
    let server = UiServer::start(store());
    let compare = server.json("/api/compare?runs=task-b,task-b-replay");
    let runs = compare["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let shown = cli_json(&["show", run["id"].as_str().unwrap(), "--json"]);
        let fork_step = shown["start_step"].as_u64().unwrap();
        assert!(fork_step > 0);
        assert_eq!(run["offset"], fork_step, "{}", run["label"]);
        assert_eq!(run["parent"]["id"], shown["parent_run"]);
        let metrics = cli_json(&["metrics", run["id"].as_str().unwrap(), "--json"]);
        assert_eq!(
            run["series"], metrics["series"],
            "the points graft metrics prints"
        );
        assert!(!run["checkpoints"].as_array().unwrap().is_empty());
    }
    let with_parent = server.json("/api/compare?runs=task-b,task-b-replay&ancestors=true");
    let context: Vec<&serde_json::Value> = with_parent["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["context"] == true)
        .collect();
    assert_eq!(context.len(), 1, "task-a, once");
    assert_eq!(context[0]["id"], runs[0]["parent"]["id"]);
    assert_eq!(context[0]["until"], runs[0]["offset"]);
    let replay = runs.iter().find(|r| r["label"] == "task-b-replay").unwrap();
    assert!(
        replay["unfreeze"].as_array().is_some_and(|u| !u.is_empty()),
        "the replay fork unfreezes a layer: {replay}"
    );
    let diff = cli_json(&["diff", "task-b", "task-b-replay", "--json"]);
    let cli_keys: Vec<&str> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    let ui_keys: Vec<&str> = compare["diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(ui_keys, cli_keys);
    assert_eq!(
        server.json("/api/diff?left=task-b&right=task-b-replay"),
        diff
    );
}

#[test]
fn api_run_page_is_graft_show_with_data_sets_and_commands() {
    let server = UiServer::start(store());
    let page = server.json("/api/runs/task-b-replay");
    let shown = cli_json(&["show", "task-b-replay", "--json"]);
    for key in [
        "id",
        "recipe",
        "executions",
        "checkpoints",
        "metrics",
        "notes",
    ] {
        assert_eq!(page[key], shown[key], "{key}");
    }
    let datasets = page["datasets"].as_array().unwrap();
    assert!(
        datasets.iter().any(|d| d["role"] == "replay"),
        "{datasets:?}"
    );
    assert!(datasets.iter().all(|d| d["path"].is_string()));
    let commands = &page["commands"];
    assert!(commands["fork"]
        .as_str()
        .unwrap()
        .contains("fork task-b-replay@best"));
    assert!(commands["reproduce"]
        .as_str()
        .unwrap()
        .contains("reproduce task-b-replay"));
    assert_eq!(page["ancestry"].as_array().unwrap().len(), 2);
    let metrics = server.json("/api/runs/task-b-replay/metrics?series=loss");
    assert_eq!(
        metrics,
        cli_json(&["metrics", "task-b-replay", "--series", "loss", "--json"])
    );
}

/// Everything a user could see change in a store: its records through the
/// CLI, and the object, journal and ref files by name and size.
fn store_state(store: &Path) -> Vec<String> {
    let mut state = vec![
        graft_ok(store, &["log", "--json"]),
        graft_ok(store, &["runs", "--json"]),
        graft_ok(store, &["tag", "--list"]),
    ];
    for dir in ["objects", "journal"] {
        let mut files = Vec::new();
        list_files(&store.join(dir), &mut files);
        files.sort();
        state.extend(files);
    }
    state
}

fn list_files(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(&path, out);
        } else {
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(format!("{} {size}", path.display()));
        }
    }
}

/// (what is tried, method, path, headers, the status it must get)
type Case<'a> = (&'a str, &'a str, String, Vec<(&'a str, &'a str)>, u16);

#[test]
fn ui_refuses_other_hosts_origins_outside_paths_writes_and_bad_queries() {
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("store");
    copy_dir(store(), &own);
    let before = store_state(&own);
    let server = UiServer::start(&own);
    let host = server.address.clone();
    let host = host.as_str();
    let ok = server.request("GET", "/api/runs", &[("Host", host)]);
    assert_eq!(ok.status, 200);
    assert!(ok
        .head
        .to_ascii_lowercase()
        .contains("content-security-policy"));
    let cases: Vec<Case> = vec![
        (
            "another host",
            "GET",
            "/api/runs".into(),
            vec![("Host", "evil.example:80")],
            403,
        ),
        (
            "a rebinding name",
            "GET",
            "/".into(),
            vec![("Host", "attacker.test")],
            403,
        ),
        ("no host", "GET", "/api/runs".into(), vec![], 403),
        (
            "another origin",
            "GET",
            "/api/runs".into(),
            vec![("Host", host), ("Origin", "http://evil.example")],
            403,
        ),
        (
            "a cross-site fetch",
            "GET",
            "/api/runs".into(),
            vec![("Host", host), ("Sec-Fetch-Site", "cross-site")],
            403,
        ),
        (
            "a write",
            "POST",
            "/api/runs".into(),
            vec![("Host", host)],
            405,
        ),
        (
            "a delete",
            "DELETE",
            "/api/runs/task-b".into(),
            vec![("Host", host)],
            405,
        ),
        (
            "dot-dot",
            "GET",
            "/assets/../../Cargo.toml".into(),
            vec![("Host", host)],
            404,
        ),
        (
            "encoded dot-dot",
            "GET",
            "/assets/%2e%2e/%2e%2e/Cargo.toml".into(),
            vec![("Host", host)],
            404,
        ),
        (
            "an absolute path",
            "GET",
            "/etc/passwd".into(),
            vec![("Host", host)],
            404,
        ),
        (
            "a store file",
            "GET",
            "/store/index/conf".into(),
            vec![("Host", host)],
            404,
        ),
        (
            "an asset's folder",
            "GET",
            "/assets/vendor/".into(),
            vec![("Host", host)],
            404,
        ),
        (
            "a filter that does not parse",
            "GET",
            query("/api/runs", &[("where", "(((")]),
            vec![("Host", host)],
            400,
        ),
        (
            "an unknown parameter",
            "GET",
            "/api/runs?drop=1".into(),
            vec![("Host", host)],
            400,
        ),
        (
            "a limit that is no number",
            "GET",
            "/api/table?limit=many".into(),
            vec![("Host", host)],
            400,
        ),
        (
            "a page too large",
            "GET",
            "/api/table?limit=100000".into(),
            vec![("Host", host)],
            400,
        ),
        (
            "an unknown column",
            "GET",
            "/api/table?columns=nope.nothing".into(),
            vec![("Host", host)],
            400,
        ),
        (
            "an unknown sort key",
            "GET",
            "/api/runs?sort=nope".into(),
            vec![("Host", host)],
            400,
        ),
        (
            "no runs to compare",
            "GET",
            "/api/compare?runs=".into(),
            vec![("Host", host)],
            400,
        ),
        (
            "a run that is not there",
            "GET",
            "/api/runs/zzzz-not-a-run".into(),
            vec![("Host", host)],
            404,
        ),
        (
            "a series the run lacks",
            "GET",
            "/api/runs/task-b/metrics?series=nothing".into(),
            vec![("Host", host)],
            400,
        ),
        (
            "a diff without its right side",
            "GET",
            "/api/diff?left=task-b".into(),
            vec![("Host", host)],
            400,
        ),
        (
            "a version that is no number",
            "GET",
            "/api/version?after=x".into(),
            vec![("Host", host)],
            400,
        ),
    ];
    for (case, method, path, headers, expected) in &cases {
        let response = server.request(method, path, headers);
        assert_eq!(
            response.status, *expected,
            "{case}: {method} {path} gave {}: {}",
            response.status, response.body
        );
    }
    drop(server);
    assert_eq!(store_state(&own), before, "the store is unchanged");
}

#[test]
fn ui_on_every_address_answers_any_host_but_only_its_own_origin() {
    let server = UiServer::start_with(store(), &["--host", "0.0.0.0"]);
    let port = server.address.rsplit(':').next().unwrap().to_string();
    let named = format!("workstation.lan:{port}");
    let by_name = server.request("GET", "/api/runs", &[("Host", named.as_str())]);
    assert_eq!(by_name.status, 200, "{}", by_name.body);
    let same_origin = format!("http://{named}");
    let own = server.request(
        "GET",
        "/api/runs",
        &[("Host", named.as_str()), ("Origin", same_origin.as_str())],
    );
    assert_eq!(own.status, 200, "{}", own.body);
    let other = server.request(
        "GET",
        "/api/runs",
        &[("Host", named.as_str()), ("Origin", "http://evil.example")],
    );
    assert_eq!(other.status, 403, "{}", other.body);
}

#[test]
fn ui_on_a_port_in_use_fails_naming_it_and_how_to_pick_another() {
    let server = UiServer::start(store());
    let port = server.address.rsplit(':').next().unwrap();
    let output = graft(store(), &["ui", "--port", port]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("127.0.0.1:{port}")) && message.contains("--port 0"),
        "{message}"
    );
}

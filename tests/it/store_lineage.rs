//! The experiment record end to end: a lineage of depth 3 with a fork,
//! recorded through the real recorder into a real store, read back by the
//! real binary.

use crate::common::*;
use graft::store::*;
use serde_json::Value;

struct Lineage {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    model: Id,
    a: Id,
    b: Id,
    c: Id,
    d: Id,
    a_checkpoints: Vec<Id>,
}

/// base -> A -> B (from A@20) -> C (from B@last), and D forked from A@20.
fn lineage() -> Lineage {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::init(&root).unwrap();
    let model = add_model(&store, "tiny-base");
    let data_a = dataset(&store, "{\"messages\": []}\n");
    let data_b = dataset(&store, "{\"messages\": [1]}\n");
    let (a, a_checkpoints) = record_run(
        &store,
        &recipe(model, None, 1e-4, 1, &data_a),
        &data_a,
        30,
        0.5,
    );
    let (b, b_checkpoints) = record_run(
        &store,
        &recipe(model, Some(a_checkpoints[1]), 5e-5, 1, &data_b),
        &data_b,
        30,
        0.4,
    );
    let (c, _) = record_run(
        &store,
        &recipe(
            model,
            Some(*b_checkpoints.last().unwrap()),
            2e-5,
            1,
            &data_b,
        ),
        &data_b,
        20,
        0.3,
    );
    let (d, _) = record_run(
        &store,
        &recipe(model, Some(a_checkpoints[1]), 3e-5, 1, &data_b),
        &data_b,
        20,
        5.0,
    );
    graft_ok(&root, &["tag", "task-a", &a.to_hex()]);
    graft_ok(&root, &["tag", "tiny-base", &model.to_hex()[..10]]);
    Lineage {
        _dir: dir,
        root,
        model,
        a,
        b,
        c,
        d,
        a_checkpoints,
    }
}

fn star_column(text: &str, id: &Id) -> (usize, usize) {
    let (line_no, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(&id.short()))
        .unwrap_or_else(|| panic!("{} not in:\n{text}", id.short()));
    (line_no, line.chars().position(|c| c == '*').unwrap())
}

#[test]
fn log_graph_lineage_diff_and_runs_show_a_forked_lineage_of_depth_three() {
    let l = lineage();

    let graph = graft_ok(&l.root, &["log", "--graph"]);
    assert!(
        graph
            .lines()
            .next()
            .unwrap()
            .starts_with(&format!("model {}", l.model.short())),
        "{graph}"
    );
    let (row_a, col_a) = star_column(&graph, &l.a);
    let (row_b, col_b) = star_column(&graph, &l.b);
    let (row_c, col_c) = star_column(&graph, &l.c);
    let (row_d, col_d) = star_column(&graph, &l.d);
    assert!(row_a < row_b && row_b < row_c && row_a < row_d, "{graph}");
    assert_eq!(col_b, col_d, "siblings B and D share a column:\n{graph}");
    assert!(
        col_a < col_b && col_b < col_c,
        "each fork is indented under its parent:\n{graph}"
    );
    assert!(graph.contains("[task-a]"), "{graph}");
    assert!(graph.contains("@20"), "fork point shown:\n{graph}");

    let lineage: Value =
        serde_json::from_str(&graft_ok(&l.root, &["lineage", &l.c.to_hex(), "--json"])).unwrap();
    let hops: Vec<&str> = lineage["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["run"].as_str().unwrap())
        .collect();
    assert_eq!(hops, [l.c.to_hex(), l.b.to_hex(), l.a.to_hex()]);
    assert_eq!(lineage["hops"][0]["start_step"], 30);
    assert_eq!(lineage["hops"][1]["start_step"], 20);
    assert_eq!(lineage["base_model"], l.model.to_hex());
    let changed = &lineage["hops"][0]["hyperparameters"];
    assert_eq!(changed[0]["key"], "optim.lr", "{changed}");
    let text = graft_ok(&l.root, &["lineage", &format!("{}@20", l.c.to_hex())]);
    assert!(
        text.contains(&format!("model {}", l.model.short())),
        "{text}"
    );
    assert!(
        text.contains("set  optim.lr = 0.00002 (parent 0.00005)"),
        "{text}"
    );

    let diff: Value = serde_json::from_str(&graft_ok(
        &l.root,
        &["diff", &l.b.to_hex(), &l.d.to_hex(), "--json"],
    ))
    .unwrap();
    let keys: Vec<&str> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["optim.lr"], "only changed keys: {diff}");
    assert_eq!(diff["common_ancestor"], l.a.to_hex());

    let runs: Value = serde_json::from_str(&graft_ok(
        &l.root,
        &[
            "runs",
            "--where",
            "optim.lr < 1e-4 and best.eval_loss < 2.1",
            "--sort",
            "optim.lr",
            "--json",
        ],
    ))
    .unwrap();
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [l.c.to_hex(), l.b.to_hex()]);
    let runs: Value = serde_json::from_str(&graft_ok(
        &l.root,
        &[
            "runs",
            "--where",
            "not (optim.lr < 1e-4) or best.eval_loss > 3",
            "--sort",
            "-optim.lr",
            "--json",
        ],
    ))
    .unwrap();
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [l.a.to_hex(), l.d.to_hex()]);
}

#[test]
fn refs_resolve_tags_steps_best_last_and_prefixes() {
    let l = lineage();
    let show = |reference: &str| -> Value {
        serde_json::from_str(&graft_ok(&l.root, &["show", reference, "--json"])).unwrap()
    };
    assert_eq!(show("task-a")["id"], l.a.to_hex());
    assert_eq!(
        show("task-a@best")["id"],
        l.a_checkpoints[2].to_hex(),
        "lowest eval_loss is at step 30"
    );
    assert_eq!(show("task-a@last")["id"], l.a_checkpoints[2].to_hex());
    assert_eq!(show("task-a@10")["id"], l.a_checkpoints[0].to_hex());
    assert_eq!(
        show(&format!("{}@20", &l.a.to_hex()[..8]))["id"],
        l.a_checkpoints[1].to_hex()
    );
    assert_eq!(show(&l.b.to_hex()[..10])["kind"], "run");
    assert_eq!(show("tiny-base")["kind"], "model");

    let missing_step = graft(&l.root, &["show", "task-a@15"]);
    assert_eq!(missing_step.status.code(), Some(2));
    assert!(
        stderr(&missing_step).contains("no checkpoint at step 15; it has: 10, 20, 30"),
        "{}",
        stderr(&missing_step)
    );
    let unknown = graft(&l.root, &["show", "nothing-here"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("`nothing-here` does not name"),
        "{}",
        stderr(&unknown)
    );
    let bad_tag = graft(&l.root, &["tag", "abcd", &l.a.to_hex()]);
    assert!(
        stderr(&bad_tag).contains("looks like an id prefix"),
        "{}",
        stderr(&bad_tag)
    );
}

#[test]
fn an_ambiguous_prefix_lists_every_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path()).unwrap();
    // Find two dataset ids that share their first four hex characters.
    let mut seen = std::collections::HashMap::new();
    let (first, second) = (0..100_000)
        .find_map(|i| {
            let record = dataset(&store, &format!("line {i}\n"));
            let prefix = record.id.to_hex()[..4].to_string();
            seen.insert(prefix.clone(), record.clone())
                .map(|other| (other, record))
        })
        .unwrap();
    let index = store.index().unwrap();
    index.put_dataset(&first).unwrap();
    index.put_dataset(&second).unwrap();
    index.flush().unwrap();
    drop(index);
    let prefix = &first.id.to_hex()[..4];
    let output = graft(dir.path(), &["show", prefix]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("is ambiguous"), "{message}");
    assert!(
        message.contains(&first.id.to_hex()) && message.contains(&second.id.to_hex()),
        "{message}"
    );
    let longer = &first.id.to_hex()[..12];
    assert_eq!(
        serde_json::from_str::<Value>(&graft_ok(dir.path(), &["show", longer, "--json"])).unwrap()
            ["kind"],
        "dataset"
    );
}

#[test]
fn gc_keeps_everything_reachable_and_removes_the_rest() {
    let l = lineage();
    let store = Store::open(&l.root).unwrap();
    let orphan = store.objects().put_bytes(b"nothing refers to me").unwrap();
    let before = store.objects().list().unwrap().objects.len();

    let dry = graft_ok(&l.root, &["gc", "--grace", "0", "--dry-run", "--verbose"]);
    assert!(dry.contains(&format!("would remove {orphan}")), "{dry}");
    assert!(store.objects().contains(&orphan));

    let report: Value =
        serde_json::from_str(&graft_ok(&l.root, &["gc", "--grace", "0", "--json"])).unwrap();
    assert_eq!(report["removed"], serde_json::json!([orphan.to_hex()]));
    assert!(!store.objects().contains(&orphan));
    assert_eq!(store.objects().list().unwrap().objects.len(), before - 1);
    // Everything a record needs is still there and intact.
    graft_ok(&l.root, &["verify"]);
    // A young orphan survives the default grace period.
    let young = store.objects().put_bytes(b"written a moment ago").unwrap();
    graft_ok(&l.root, &["gc"]);
    assert!(store.objects().contains(&young));
}

#[test]
fn verify_detects_a_flipped_byte_and_a_dangling_reference() {
    let l = lineage();
    let store = Store::open(&l.root).unwrap();
    assert!(graft_ok(&l.root, &["verify"]).contains(": ok"));

    let index = store.index().unwrap();
    let checkpoint = index.checkpoint(&l.a_checkpoints[0]).unwrap();
    drop(index);
    let tensor = checkpoint.tensors["lora_a"];
    let path = store.objects().path_of(&tensor);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let output = graft(&l.root, &["verify"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains(&format!("object {tensor}")),
        "{}",
        stdout(&output)
    );
    assert!(stdout(&output).contains(&path.display().to_string()));
    // Reading the object names it too.
    let error = store.objects().get(&tensor).unwrap_err().to_string();
    assert!(
        error.contains(&tensor.to_hex()) && error.contains("corrupt"),
        "{error}"
    );

    std::fs::write(&path, {
        bytes[0] ^= 0x01;
        &bytes
    })
    .unwrap();
    let index = store.index().unwrap();
    index.set_tag("ghost", Target::Run(Id([7; 32]))).unwrap();
    index.flush().unwrap();
    drop(index);
    let output = graft(&l.root, &["verify"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("tag `ghost` points at run 0707"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn metrics_come_back_as_table_csv_json_chart_and_plots() {
    let l = lineage();
    let csv = graft_ok(
        &l.root,
        &["metrics", "task-a", "--series", "loss,eval_loss", "--csv"],
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "step,loss,eval_loss");
    assert_eq!(lines.len(), 31);
    assert_eq!(lines[10], "10,0.6,0.7");
    let json: Value =
        serde_json::from_str(&graft_ok(&l.root, &["metrics", "task-a", "--json"])).unwrap();
    assert_eq!(json["series"]["loss"].as_array().unwrap().len(), 30);
    let chart = graft_ok(
        &l.root,
        &["metrics", "task-a", "--series", "loss", "--chart"],
    );
    assert!(chart.contains("steps 1..30"), "{chart}");
    for name in ["loss.svg", "loss.png"] {
        let path = l.root.join(name);
        graft_ok(
            &l.root,
            &["metrics", "task-a", "--plot", path.to_str().unwrap()],
        );
        assert!(
            std::fs::metadata(&path).unwrap().len() > 1000,
            "{name} has content"
        );
    }
    let bad = graft(&l.root, &["metrics", "task-a", "--series", "nope"]);
    assert!(
        stderr(&bad).contains("no series `nope`")
            && stderr(&bad).contains("it has: eval_loss, loss, lr"),
        "{}",
        stderr(&bad)
    );
}

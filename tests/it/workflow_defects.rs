//! Issue 14's Ctrl-C handling and smaller workflow defects, through the binary:
//! a run stopped by SIGINT or SIGTERM checkpoints the step it finished, is
//! recorded as interrupted and resumes to the checkpoints of an uninterrupted
//! run; bad input is refused before anything is written.

use crate::common::llama_tiny as fixture;
use crate::common::write_synth;
use crate::common::{graft_fails_in, graft_in, graft_ok_in, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A work folder with reverse-task data and a LoRA experiment `run.toml`.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        write_synth(
            dir.path(),
            &[
                ("train.jsonl", "reverse", 64, 1),
                ("val.jsonl", "reverse", 8, 2),
            ],
        );
        std::fs::write(
            dir.path().join("run.toml"),
            format!(
                r#"[model]
base = "{}"

[adapter]
rank = 4
alpha = 8

[data]
train = [{{ path = "train.jsonl", format = "chat" }}]
eval = [{{ path = "val.jsonl", name = "reverse" }}]
seq_len = 64
template = "plain"

[optim]
lr = 5e-3
batch_size = 4
warmup_steps = 2

[train]
steps = 200
seed = 5
eval_every = 10
checkpoint_every = 10
keep_last = 2
keep_best = 1
"#,
                fixture().display()
            ),
        )
        .unwrap();
        Work { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    fn ok(&self, args: &[&str]) -> String {
        graft_ok_in(self.path(), &self.store(), args)
    }

    fn fails(&self, args: &[&str]) -> String {
        graft_fails_in(self.path(), &self.store(), args)
    }

    /// `graft train run.toml` in the background, stderr to `train.err`.
    fn spawn_train(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["train", "run.toml"])
            .current_dir(self.path())
            .env("GRAFT_STORE", self.store())
            .env("GRAFT_LOCK_TIMEOUT_MS", "60000")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path().join("train.err")).unwrap())
            .spawn()
            .unwrap()
    }

    /// The steps of `run` whose loss is on record.
    fn logged_steps(&self, run: &str) -> Vec<u64> {
        let output = graft_in(
            self.path(),
            &self.store(),
            &["metrics", run, "--series", "loss", "--json"],
        );
        if !output.status.success() {
            return Vec::new();
        }
        json(&stdout(&output))["series"]["loss"]
            .as_array()
            .map(|points| points.iter().filter_map(|p| p[0].as_u64()).collect())
            .unwrap_or_default()
    }

    /// Waits until `run` has logged a few steps of the running `child`.
    fn wait_for_steps(&self, child: &mut Child, run: &str) {
        let started = Instant::now();
        while self.logged_steps(run).len() < 3 {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before it could be interrupted"
            );
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "no step logged"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `run`'s checkpoints that retention keeps, as (step, id).
    fn live_checkpoints(&self, run: &str) -> Vec<(u64, String)> {
        json(&self.ok(&["show", run, "--json"]))["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["retired"] != true)
            .map(|c| (c["step"].as_u64().unwrap(), c["id"].to_string()))
            .collect()
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    let sent = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(sent, 0, "kill({}, {signal})", child.id());
}

/// The run id `run.toml` gets, from a store where it ran to the end.
fn uninterrupted(reference: &Work) -> (String, Vec<(u64, String)>) {
    let outcome = json(&reference.ok(&["train", "run.toml", "-q", "--json"]));
    let run = outcome["run"].as_str().unwrap().to_string();
    let live = reference.live_checkpoints(&run);
    (run, live)
}

#[test]
fn ctrl_c_checkpoints_the_step_it_finished_and_resume_completes_the_uninterrupted_run() {
    let reference = Work::new();
    let (run, reference_live) = uninterrupted(&reference);

    let work = Work::new();
    let mut child = work.spawn_train();
    work.wait_for_steps(&mut child, &run);
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(work.path().join("train.err")).unwrap();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("stopping: writing a checkpoint"), "{said}");
    assert!(said.contains("interrupted"), "{said}");
    assert!(
        said.contains(&format!("graft resume {}", &run[..8])),
        "{said}"
    );

    // Recorded as interrupted, with a checkpoint at the last step it logged.
    let log = json(&work.ok(&["log", "--json"]));
    assert_eq!(log[0]["status"], "interrupted", "{log}");
    let steps = work.logged_steps(&run);
    let stopped_at = *steps.last().unwrap();
    assert!(stopped_at < 200, "stopped at {stopped_at}");
    assert_eq!(steps, (1..=stopped_at).collect::<Vec<_>>());
    assert!(
        said.contains(&format!("stopped at step {stopped_at}")),
        "{said}"
    );
    assert_eq!(
        work.live_checkpoints(&run).last().unwrap().0,
        stopped_at,
        "a checkpoint at the step it stopped"
    );

    // A new `train` of the same recipe points at resume; resume finishes it
    // with the checkpoints an uninterrupted run keeps, each step logged once.
    assert!(work
        .fails(&["train", "run.toml", "-q"])
        .contains("graft resume"));
    work.ok(&["resume", &run, "-q"]);
    assert_eq!(work.live_checkpoints(&run), reference_live);
    assert_eq!(work.logged_steps(&run), (1..=200).collect::<Vec<_>>());
    let log = json(&work.ok(&["log", "--json"]));
    assert_eq!(log[0]["status"], "completed", "{log}");
    work.ok(&["verify"]);
}

#[test]
fn sigterm_stops_cleanly_and_a_second_signal_stops_at_once() {
    let work = Work::new();
    let (run, _) = uninterrupted(&Work::new());

    // SIGTERM: the same clean stop as Ctrl-C, exit 128 + 15.
    let mut child = work.spawn_train();
    work.wait_for_steps(&mut child, &run);
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(work.path().join("train.err")).unwrap();
    assert_eq!(status.code(), Some(143), "{said}");
    assert!(said.contains("stopped at step"), "{said}");
    let first_stop = *work.logged_steps(&run).last().unwrap();

    // Resumed, then two signals back to back: the second exits at once,
    // without the clean stop's checkpoint and message.
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["resume", &run])
        .current_dir(work.path())
        .env("GRAFT_STORE", work.store())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("resume.err")).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while work.logged_steps(&run).len() < first_stop as usize + 3 {
        assert!(child.try_wait().unwrap().is_none(), "resume ended too soon");
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no step logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, libc::SIGINT);
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(work.path().join("resume.err")).unwrap();
    assert!(
        matches!(status.code(), Some(130 | 143)),
        "{status:?}: {said}"
    );
    assert!(!said.contains("stopped at step"), "{said}");

    // The record is still sound and the run still resumes to the end.
    work.ok(&["resume", &run, "-q"]);
    assert_eq!(work.logged_steps(&run), (1..=200).collect::<Vec<_>>());
    work.ok(&["verify"]);
}

/// Every file under the store's object folder.
fn objects(store: &Path) -> usize {
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => count(&e.path()),
                        _ => 1,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    count(&store.join("objects"))
}

/// Nothing on record: no model, run or object.
fn assert_store_empty(work: &Work) {
    assert_eq!(
        json(&work.ok(&["model", "ls", "--json"])),
        serde_json::json!([])
    );
    assert_eq!(json(&work.ok(&["log", "--json"])), serde_json::json!([]));
    assert_eq!(objects(&work.store()), 0, "no object written");
}

#[test]
fn unfreezing_more_layers_than_the_model_has_is_refused_before_anything_is_recorded() {
    let work = Work::new();
    let experiment = std::fs::read_to_string(work.path().join("run.toml")).unwrap();
    for (case, layers) in [("top:9", "top:9"), ("layer.2", "embed,layer.2")] {
        std::fs::write(
            work.path().join("unfreeze.toml"),
            format!(
                "{experiment}\n[unfreeze]\nschedule = [{{ at = 0, layers = \"none\" }}, {{ at = 4, layers = \"{layers}\" }}]\n"
            ),
        )
        .unwrap();
        let refused = work.fails(&["train", "unfreeze.toml", "-q"]);
        assert!(
            refused.contains("unfreeze.schedule[1]"),
            "{case}: {refused}"
        );
        assert!(refused.contains(&format!("`{case}`")), "{case}: {refused}");
        assert!(refused.contains("2 decoder layers"), "{case}: {refused}");
        assert!(refused.contains("num_hidden_layers"), "{case}: {refused}");
        assert_store_empty(&work);
    }
    // The model's own count is accepted.
    std::fs::write(
        work.path().join("unfreeze.toml"),
        format!("{experiment}\n[unfreeze]\nschedule = [{{ at = 0, layers = \"top:2\" }}]\n"),
    )
    .unwrap();
    work.ok(&["train", "unfreeze.toml", "-q", "--set", "train.steps=2"]);
}

/// A copy of the fixture model folder with `key` of its config.json set to `value`.
fn model_with_config(work: &Work, key: &str, value: Value) -> PathBuf {
    let dir = work.path().join(format!("model-{key}"));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let path = dir.join("config.json");
    let mut config = json(&std::fs::read_to_string(&path).unwrap());
    config[key] = value;
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

#[test]
fn model_add_refuses_a_config_that_disagrees_with_its_weights() {
    let work = Work::new();
    // (config key, value, what the refusal names)
    let cases: [(&str, Value, &[&str]); 4] = [
        (
            "vocab_size",
            999.into(),
            &["vocab_size = 999", "model.embed_tokens.weight", "[320, 64]"],
        ),
        (
            "intermediate_size",
            100.into(),
            &[
                "intermediate_size = 100",
                "mlp.gate_proj.weight",
                "[172, 64]",
            ],
        ),
        (
            "num_hidden_layers",
            3.into(),
            &["model.layers.2.", "missing"],
        ),
        (
            "num_hidden_layers",
            1.into(),
            &["model.layers.1.", "not used"],
        ),
    ];
    for (key, value, named) in cases {
        let dir = model_with_config(&work, key, value.clone());
        let refused = work.fails(&["model", "add", dir.to_str().unwrap()]);
        for part in named {
            assert!(
                refused.contains(part),
                "{key} = {value}: {part} in {refused}"
            );
        }
        if key != "num_hidden_layers" {
            assert!(refused.contains("config.json"), "{key}: {refused}");
        }
        assert_store_empty(&work);
    }
    // The unchanged folder registers.
    work.ok(&["model", "add", fixture().to_str().unwrap()]);
}

#[test]
fn a_fork_refused_for_a_format_change_writes_nothing() {
    let work = Work::new();
    work.ok(&[
        "train",
        "run.toml",
        "-q",
        "--tag",
        "task-a",
        "--set",
        "train.steps=2",
    ]);
    let texts: Vec<String> = (0..32)
        .map(|i| serde_json::json!({"text": format!("plain text number {i}")}).to_string())
        .collect();
    std::fs::write(work.path().join("text.jsonl"), texts.join("\n") + "\n").unwrap();
    std::fs::write(
        work.path().join("text.toml"),
        "[data]\ntrain = [{ path = \"text.jsonl\", format = \"text\" }]\nseq_len = 32\n[train]\nsteps = 2\n",
    )
    .unwrap();
    let (objects_before, log_before) = (objects(&work.store()), work.ok(&["log", "--json"]));
    let refused = work.fails(&["fork", "task-a", "text.toml", "-q"]);
    assert!(refused.contains("allow_format_change"), "{refused}");
    assert_eq!(objects(&work.store()), objects_before, "no object written");
    assert_eq!(work.ok(&["log", "--json"]), log_before);
    work.ok(&[
        "fork",
        "task-a",
        "text.toml",
        "-q",
        "--set",
        "data.allow_format_change=true",
    ]);
    assert!(objects(&work.store()) > objects_before);
}

#[test]
fn verify_rehashes_the_files_of_models_referenced_in_place() {
    let work = Work::new();
    let dir = model_with_config(&work, "model_type", "llama".into());
    work.ok(&["model", "add", dir.to_str().unwrap()]);
    work.ok(&["verify"]);

    // One byte of the weights and the tokenizer change behind graft's back.
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let tokenizer = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&tokenizer).unwrap();
    std::fs::write(&tokenizer, format!("{text}\n")).unwrap();

    let output = graft_in(work.path(), &work.store(), &["verify"]);
    assert_eq!(output.status.code(), Some(1), "verify fails");
    let said = stdout(&output);
    let lines: Vec<&str> = said.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("model.safetensors") && l.contains("differs")),
        "{said}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tokenizer.json") && l.contains("changed")),
        "{said}"
    );
    let report = json(&stdout(&graft_in(
        work.path(),
        &work.store(),
        &["verify", "--json"],
    )));
    assert_eq!(report["changed_model_files"].as_array().unwrap().len(), 2);
}

#[test]
fn training_a_registered_model_whose_weights_changed_since_is_refused_naming_a_tensor() {
    let work = Work::new();
    let dir = model_with_config(&work, "model_type", "llama".into());
    work.ok(&["model", "add", dir.to_str().unwrap(), "--tag", "tiny"]);
    let runs_before = work.ok(&["runs", "--json"]);
    // The last byte of the weights changes behind graft's back.
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let text = std::fs::read_to_string(work.path().join("run.toml")).unwrap();
    let by_tag = text.replacen(
        &format!("base = \"{}\"", fixture().display()),
        "base = \"tiny\"",
        1,
    );
    assert_ne!(by_tag, text);
    std::fs::write(work.path().join("tagged.toml"), by_tag).unwrap();
    let said = graft_fails_in(
        work.path(),
        &work.store(),
        &["train", "tagged.toml", "--set", "train.steps=1"],
    );
    assert!(
        said.contains("has changed since") && said.contains("tensor `"),
        "{said}"
    );
    assert!(said.contains("graft model add"), "{said}");
    assert_eq!(
        work.ok(&["runs", "--json"]),
        runs_before,
        "nothing recorded"
    );
}

/// `#RRGGBB` -> (hue in degrees, saturation, value), HSV.
fn hsv(hex: &str) -> (f64, f64, f64) {
    let channel =
        |i: usize| u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap() as f64 / 255.0;
    let (r, g, b) = (channel(0), channel(1), channel(2));
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let delta = max - min;
    let hue = if delta == 0.0 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / delta + 2.0)
    } else {
        60.0 * ((r - g) / delta + 4.0)
    };
    let saturation = if max == 0.0 { 0.0 } else { delta / max };
    (hue, saturation, max)
}

#[test]
fn metric_plots_name_the_run_by_tag_label_their_axes_and_keep_the_legend_off_the_curves() {
    let work = Work::new();
    work.ok(&[
        "train",
        "run.toml",
        "-q",
        "--tag",
        "task-a",
        "--set",
        "train.steps=20",
    ]);
    let plot = work.path().join("metrics.svg");
    work.ok(&["metrics", "task-a", "--plot", plot.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&plot).unwrap();
    let texts: Vec<(f64, String)> = svg
        .split("<text")
        .skip(1)
        .map(|element| {
            let x = element
                .split("x=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|x| x.parse().ok())
                .unwrap();
            let content = element
                .split('>')
                .nth(1)
                .unwrap()
                .split("</text")
                .next()
                .unwrap()
                .trim()
                .to_string();
            (x, content)
        })
        .collect();
    let said = |wanted: &dyn Fn(&str) -> bool| texts.iter().any(|(_, t)| wanted(t));
    assert!(
        said(&|t| t.starts_with("task-a")),
        "title by tag: {texts:?}"
    );
    assert!(said(&|t| t == "step"), "x axis label: {texts:?}");
    assert!(
        said(&|t| t.contains("value") || t.contains("loss")),
        "y axis label: {texts:?}"
    );

    // Series strokes: readable on white, none yellow.
    let strokes: Vec<&str> = svg
        .split("stroke=\"")
        .skip(1)
        .filter_map(|rest| rest.get(..7))
        .filter(|colour| colour.starts_with('#'))
        .filter(|colour| *colour != "#000000" && *colour != "#FFFFFF")
        .collect();
    assert!(strokes.len() >= 3, "{strokes:?}");
    for colour in &strokes {
        let (hue, saturation, value) = hsv(colour);
        assert!(
            !((40.0..=75.0).contains(&hue) && saturation > 0.4 && value > 0.6),
            "{colour} is yellow-ish"
        );
    }

    // The legend's names sit right of every point of every curve.
    let series = json(&work.ok(&["metrics", "task-a", "--json"]))["series"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    let curve_right_edge = svg
        .split("<polyline")
        .skip(1)
        .filter(|element| !element.contains("stroke=\"#000000\""))
        .flat_map(|element| {
            let points = element.split("points=\"").nth(1).unwrap();
            let points = points.split('"').next().unwrap().to_string();
            points
                .split_whitespace()
                .filter_map(|p| p.split(',').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .fold(0.0f64, f64::max);
    for name in &series {
        let (x, _) = texts
            .iter()
            .find(|(_, t)| t == name)
            .unwrap_or_else(|| panic!("legend entry {name}: {texts:?}"));
        assert!(
            *x > curve_right_edge,
            "legend `{name}` at x = {x} over the curves (right edge {curve_right_edge})"
        );
    }
}

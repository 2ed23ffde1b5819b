//! Continuing an outside PEFT adapter (issue 14, item 1), through the binary
//! and a real store, on the shared llama-tiny fixture and the adapter PEFT
//! made for it (`lora-adapter/`).
//!
//! The fixture's `reference.json` gives the adapted model's loss on two rows
//! of raw token ids; graft's data pipeline adds BOS/EOS around every example,
//! so no data file reproduces those rows exactly. The test therefore checks
//! the chain in two links: (1) the model built from the run's recorded
//! adapter (the stored objects, loaded by the function `graft train` uses)
//! reproduces the reference's adapted loss and logits within f32 parity
//! (1e-4); (2) the step-0 (baseline) eval loss the binary recorded equals that
//! same model's loss on the run's eval set, and differs from the base
//! model's, so the run really started from the adapter.

use crate::common::write_synth;
use crate::common::{graft_ok, stderr, stdout};
use graft::model::parity::{compare, Reference};
use graft::model::{load_adapter, load_model_dir, CpuBackend};
use graft::store::Store;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/llama-tiny")
        .canonicalize()
        .unwrap()
}

fn peft_adapter() -> PathBuf {
    fixture().join("lora-adapter")
}

/// A work folder with task data and an experiment that starts from `adapter`.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_synth(
        dir.path(),
        &[
            ("reverse.jsonl", "reverse", 48, 1),
            ("reverse-val.jsonl", "reverse", 12, 2),
        ],
    );
    std::fs::write(dir.path().join("peft.toml"), experiment("")).unwrap();
    dir
}

fn experiment(adapter_extra: &str) -> String {
    format!(
        r#"[model]
base = "{}"

[adapter]
from = "{}"
{adapter_extra}

[data]
train = [{{ path = "reverse.jsonl", format = "chat" }}]
eval = [{{ path = "reverse-val.jsonl", name = "reverse" }}]
seq_len = 64
template = "plain"

[optim]
lr = 5e-3
batch_size = 4

[train]
steps = 4
seed = 5
eval_every = 4
checkpoint_every = 4
"#,
        fixture().display(),
        peft_adapter().display()
    )
}

fn run_in(dir: &Path, store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(dir)
        .env("GRAFT_STORE", store)
        .output()
        .unwrap()
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

/// Loss of `model` on the eval file as a run with the experiment's settings reads it.
fn eval_loss(model: &graft::model::CausalLm<CpuBackend>, dir: &Path) -> f64 {
    let tokenizer = std::sync::Arc::new(graft::data::Tokenizer::from_dir(&fixture()).unwrap());
    let encoder = graft::data::Encoder::new(tokenizer, graft::data::Format::Chat, "plain").unwrap();
    let set = graft::train::eval::EvalSet::from_source(
        "reverse".into(),
        graft::data::DataSource::file(dir.join("reverse-val.jsonl")),
        encoder,
        64,
        256,
        4,
    )
    .unwrap();
    graft::train::eval::evaluate(model, &set).loss
}

#[test]
fn a_peft_adapter_continues_from_its_reference_loss_and_exports_trained() {
    let work = workspace();
    let store_dir = work.path().join("store");
    let trained = json(&ok_in(
        work.path(),
        &store_dir,
        &["train", "peft.toml", "--tag", "from-peft", "--json"],
    ));
    let run = trained["run"].as_str().unwrap().to_string();

    // The recipe records the adapter's content id and the adapter's settings.
    let show = json(&graft_ok(&store_dir, &["show", "from-peft", "--json"]));
    let config = &show["recipe"]["config"]["adapter"];
    assert_eq!(config["rank"], 4, "r from adapter_config.json: {config}");
    assert_eq!(config["alpha"].as_f64(), Some(8.0), "{config}");
    let adapter_id = config["from"].as_str().unwrap().to_string();
    assert_eq!(adapter_id.len(), 64, "a content id, not the path: {config}");
    assert_eq!(show["start_adapter"]["id"], adapter_id.as_str());
    assert_eq!(
        show["notes"]["start_adapter"]["path"]
            .as_str()
            .map(PathBuf::from),
        Some(peft_adapter())
    );
    assert!(
        show["notes"]["start_adapter"]["optimizer"]
            .as_str()
            .is_some_and(|note| note.contains("fresh")),
        "the run says its optimizer starts fresh: {}",
        show["notes"]
    );

    // (1) The adapter as stored for the run reproduces the reference's adapted model.
    let device = Default::default();
    let store = Store::open(&store_dir).unwrap();
    let base = load_model_dir::<CpuBackend>(&fixture(), &device).unwrap();
    let started =
        graft::train::adapter_start::load_stored(&store, base.clone(), &adapter_id).unwrap();
    let reference = Reference::read(&fixture().join("reference.json")).unwrap();
    let adapted = reference.with_lora.as_ref().unwrap();
    let comparison = compare(
        &started,
        reference.ids_tensor::<CpuBackend>(&device),
        &adapted.logits,
        adapted.loss,
    )
    .unwrap();
    assert!(
        comparison.loss_abs_diff <= 1e-4 && comparison.logits_rel_err <= 1e-4,
        "the run's starting model is PEFT's adapted model: {comparison:?}"
    );
    assert!(
        (adapted.loss - reference.loss).abs() > 1e-3,
        "the reference tells the adapter from the base"
    );

    // (2) The binary's step-0 eval is that model's loss, not the base model's.
    let metrics = json(&graft_ok(
        &store_dir,
        &["metrics", &run, "--series", "eval/reverse/loss", "--json"],
    ));
    let points = metrics["series"]["eval/reverse/loss"].as_array().unwrap();
    assert_eq!(points[0][0], 0, "a baseline eval at step 0: {points:?}");
    let baseline = points[0][1].as_f64().unwrap();
    let expected = eval_loss(&started, work.path());
    let base_loss = eval_loss(&base, work.path());
    assert!(
        (baseline - expected).abs() <= 1e-4,
        "step-0 eval {baseline} against the adapted model's {expected}"
    );
    assert!(
        (baseline - base_loss).abs() > 1e-3,
        "step-0 eval {baseline} is not the bare base's {base_loss}"
    );

    // The adapter is the run's starting point in lineage and the fork graph.
    let lineage = json(&graft_ok(&store_dir, &["lineage", &run, "--json"]));
    let root = &lineage["hops"][0];
    assert_eq!(
        root["start_adapter"]["id"],
        adapter_id.as_str(),
        "{lineage}"
    );
    assert!(
        root["from"].as_str().unwrap().starts_with("from adapter"),
        "{root}"
    );
    let text = graft_ok(&store_dir, &["lineage", &run]);
    assert!(
        text.contains(&format!("from adapter {}", &adapter_id[..12])),
        "{text}"
    );
    let graph = graft_ok(&store_dir, &["log", "--graph"]);
    assert!(
        graph.contains(&format!("from adapter {}", &adapter_id[..12])),
        "{graph}"
    );

    // The export loads back as a PEFT adapter, and it trained: same tensors, new values.
    let exported = work.path().join("exported");
    graft_ok(
        &store_dir,
        &["export", &run, "--peft", exported.to_str().unwrap()],
    );
    load_adapter(base, &exported).expect("graft's export loads as a PEFT adapter");
    let before =
        graft::model::weights::read_safetensors(&peft_adapter().join("adapter_model.safetensors"))
            .unwrap();
    let after =
        graft::model::weights::read_safetensors(&exported.join("adapter_model.safetensors"))
            .unwrap();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the same matrices continue training"
    );
    let changed = before
        .iter()
        .filter(|(name, raw)| raw.to_f32(name).unwrap() != after[*name].to_f32(name).unwrap())
        .count();
    assert!(changed > 0, "training changed the adapter's matrices");

    // A fork of the run continues the checkpoint's adapter (not the folder).
    let fork = json(&ok_in(
        work.path(),
        &store_dir,
        &[
            "fork",
            "from-peft@last",
            "--set",
            "train.steps=2",
            "-q",
            "--json",
        ],
    ));
    let fork_show = json(&graft_ok(
        &store_dir,
        &["show", fork["run"].as_str().unwrap(), "--json"],
    ));
    assert!(fork_show["recipe"]["config"]["adapter"]
        .get("from")
        .is_none());
    assert_eq!(fork_show["recipe"]["config"]["adapter"]["rank"], 4);
    let verify = run_in(work.path(), &store_dir, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let gc = run_in(work.path(), &store_dir, &["gc"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert!(
        graft::store::adapters::adapter_files(
            store.objects(),
            &graft::store::Id::from_hex(&adapter_id).unwrap()
        )
        .is_ok(),
        "gc keeps the adapter a run started from"
    );
}

#[test]
fn the_run_id_follows_the_adapters_bytes_not_its_folder() {
    let work = workspace();
    let store_dir = work.path().join("store");
    let store = Store::open_or_init(&store_dir).unwrap();
    let copy = work.path().join("copied-adapter");
    std::fs::create_dir(&copy).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(peft_adapter().join(file), copy.join(file)).unwrap();
    }
    let run_id = |adapter: &Path| {
        // Absolute data paths: the test process's working folder is shared.
        let text = experiment("")
            .replace(
                &peft_adapter().display().to_string(),
                &adapter.display().to_string(),
            )
            .replace("\"reverse", &format!("\"{}/reverse", work.path().display()));
        let experiment = graft::train::Experiment::parse(&text, Path::new("e.toml"), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        graft::train::plan(&store, &experiment)
            .unwrap_or_else(|e| panic!("{e}"))
            .recipe
            .run_id()
    };
    let original = run_id(&peft_adapter());
    assert_eq!(run_id(&copy), original, "a moved adapter is the same run");
    let weights = copy.join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    assert_ne!(run_id(&copy), original, "other weights are another run");
}

#[test]
fn adapter_settings_that_graft_cannot_honour_are_refused_naming_the_key() {
    let work = workspace();
    let store_dir = work.path().join("store");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(peft_adapter().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    // (case, a change to adapter_config.json, a key written in [adapter], what the error names)
    let cases: [(&str, &str, Value, &str, &[&str]); 6] = [
        (
            "contradicting rank",
            "r",
            config["r"].clone(),
            "rank = 8",
            &["adapter.rank = 8", "r = 4"],
        ),
        (
            "contradicting targets",
            "r",
            config["r"].clone(),
            "targets = [\"q_proj\"]",
            &["adapter.targets", "target_modules"],
        ),
        ("bias trained", "bias", Value::from("all"), "", &["bias"]),
        (
            "per-module ranks",
            "rank_pattern",
            serde_json::json!({"q_proj": 8}),
            "",
            &["rank_pattern"],
        ),
        (
            "whole modules saved",
            "modules_to_save",
            serde_json::json!(["lm_head"]),
            "",
            &["modules_to_save"],
        ),
        (
            "some layers only",
            "layers_to_transform",
            serde_json::json!([0]),
            "",
            &["layers_to_transform"],
        ),
    ];
    for (case, key, value, adapter_extra, named) in cases {
        let folder = work
            .path()
            .join(format!("adapter-{}", case.replace(' ', "-")));
        std::fs::create_dir(&folder).unwrap();
        std::fs::copy(
            peft_adapter().join("adapter_model.safetensors"),
            folder.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut changed = config.clone();
        changed[key] = value;
        std::fs::write(
            folder.join("adapter_config.json"),
            serde_json::to_string(&changed).unwrap(),
        )
        .unwrap();
        let text = experiment(adapter_extra).replace(
            &peft_adapter().display().to_string(),
            &folder.display().to_string(),
        );
        std::fs::write(work.path().join("bad.toml"), text).unwrap();
        let output = run_in(work.path(), &store_dir, &["train", "bad.toml"]);
        let message = stderr(&output);
        assert!(!output.status.success(), "{case}: accepted");
        for word in named {
            assert!(message.contains(word), "{case}: {message}");
        }
    }
    let runs = run_in(work.path(), &store_dir, &["log", "--json"]);
    assert!(
        !store_dir.join("index").exists() || stdout(&runs).trim() == "[]",
        "nothing is recorded by a refused start: {}",
        stdout(&runs)
    );
}

//! Model commands through the binary: parity on both shared fixtures (and a
//! failing one), registration, export and generation from a checkpoint.

use crate::common::{graft, graft_ok, stderr, stdout};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

#[test]
fn model_parity_passes_on_both_fixtures_and_fails_past_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama-tiny", "qwen2-tiny"] {
        let folder = fixtures().join(name);
        let out = graft_ok(
            dir.path(),
            &[
                "model",
                "parity",
                folder.to_str().unwrap(),
                folder.join("reference.json").to_str().unwrap(),
            ],
        );
        assert!(
            out.contains("with_lora") && out.contains("lora grads"),
            "{out}"
        );
    }
    // A reference whose logits were nudged must fail with exit code 1.
    let folder = fixtures().join("llama-tiny");
    let mut reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("reference.json")).unwrap())
            .unwrap();
    let first = reference["logits"][0][0][0].as_f64().unwrap();
    reference["logits"][0][0][0] = serde_json::json!(first + 0.5);
    let tampered = dir.path().join("reference.json");
    std::fs::write(&tampered, reference.to_string()).unwrap();
    let output = graft(
        dir.path(),
        &[
            "model",
            "parity",
            folder.to_str().unwrap(),
            tampered.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(stderr(&output).contains("parity outside tolerance"));
}

#[test]
fn model_add_registers_a_folder_once_and_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let folder = fixtures().join("qwen2-tiny");
    let first: serde_json::Value = serde_json::from_str(&graft_ok(
        &store,
        &[
            "model",
            "add",
            folder.to_str().unwrap(),
            "--tag",
            "qwen",
            "--json",
        ],
    ))
    .unwrap();
    let second: serde_json::Value = serde_json::from_str(&graft_ok(
        &store,
        &["model", "add", folder.to_str().unwrap(), "--json"],
    ))
    .unwrap();
    assert_eq!(first["id"], second["id"], "same content, same id");
    let listed = graft_ok(&store, &["model", "ls"]);
    assert!(
        listed.contains("qwen") && listed.contains("qwen2"),
        "{listed}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&graft_ok(&store, &["show", "qwen", "--json"])).unwrap();
    assert_eq!(shown["kind"], "model");
    let missing = graft(
        &store,
        &["model", "add", dir.path().join("nowhere").to_str().unwrap()],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("nowhere"), "{}", stderr(&missing));
}

/// `graft bench attention` times the CUDA kernels: a build without them says so and
/// which feature to build with, rather than failing to load a driver.
#[test]
#[cfg(not(feature = "cuda"))]
fn bench_attention_without_cuda_names_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let out = graft(dir.path(), &["bench", "attention", "--seq", "64"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without the `cuda` feature"),
        "{}",
        stderr(&out)
    );
}

/// `graft bench train` on the CPU prints one JSON line in the reference script's schema,
/// with a finite loss near ln(vocab) (random weights predict about uniformly).
#[test]
fn bench_train_prints_the_reference_schema_with_a_plausible_loss() {
    let dir = tempfile::tempdir().unwrap();
    let out = graft_ok(
        dir.path(),
        &[
            "bench",
            "train",
            "--backend",
            "cpu",
            "--preset",
            "tiny",
            "--seq",
            "16",
            "--batch",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
        ],
    );
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(line).unwrap();
    for key in [
        "tokens_per_s",
        "ms_per_step",
        "peak_gib",
        "trainable",
        "loss",
    ] {
        assert!(report.get(key).is_some(), "no {key} in {line}");
    }
    assert_eq!(report["impl"], "graft");
    assert_eq!(report["preset"], "tiny");
    // The reference script counts 295,936 trainable parameters for this preset at r=16.
    assert_eq!(report["trainable"], 295_936, "{line}");
    assert!(report["tokens_per_s"].as_f64().unwrap() > 0.0, "{line}");
    let uniform = (4096f64).ln();
    let loss = report["loss"].as_f64().unwrap();
    assert!(
        (loss - uniform).abs() < 1.0,
        "loss {loss} far from ln(4096) = {uniform}"
    );
}

#[test]
fn model_parity_in_bf16_on_the_cpu_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let folder = fixtures().join("llama-tiny");
    let output = graft(
        dir.path(),
        &[
            "model",
            "parity",
            folder.to_str().unwrap(),
            folder.join("reference.json").to_str().unwrap(),
            "--dtype",
            "bf16",
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("bf16\" needs --backend cuda"),
        "{}",
        stderr(&output)
    );
}

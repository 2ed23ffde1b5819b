//! The model matches transformers/peft on the shared fixtures: logits, loss, the LoRA
//! adapter's outputs and its gradients.

use crate::common::shared_fixture as fixture;
use graft::model::{run_parity, CpuTrainBackend, Tolerance};

fn check(name: &str) {
    let dir = fixture(name);
    let device = Default::default();
    let report = run_parity::<CpuTrainBackend>(
        &dir,
        &dir.join("reference.json"),
        &device,
        Tolerance::default(),
    )
    .expect("parity run");
    eprintln!("{name}: {report:#?}");
    assert!(report.with_lora.is_some(), "fixture has a LoRA adapter");
    assert!(report.lora_grads.is_some(), "fixture has reference grads");
    assert!(report.passes(), "{name} out of tolerance: {report:#?}");
}

#[test]
fn llama_tiny_matches_reference_logits_loss_lora_and_grads() {
    check("llama-tiny");
}

#[test]
fn qwen2_tiny_matches_reference_logits_loss_lora_and_grads() {
    check("qwen2-tiny");
}

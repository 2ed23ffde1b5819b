//! LoRA behaviour a user relies on: an untrained adapter changes nothing, PEFT folders
//! round-trip, and merged exports reproduce the adapted model.

use crate::common::shared_fixture as fixture;
use burn::tensor::{Int, Tensor};
use graft::model::parity::{max_rel_err, Reference};
use graft::model::{
    load_adapter, load_model_dir, save_adapter, save_merged, CausalLm, CpuBackend, LoraConfig,
    ALL_TARGETS,
};

type B = CpuBackend;

fn ids(dir: &std::path::Path) -> (Reference, Tensor<B, 2, Int>) {
    let reference = Reference::read(&dir.join("reference.json")).unwrap();
    let ids = reference.ids_tensor::<B>(&Default::default());
    (reference, ids)
}

fn logits(model: &CausalLm<B>, ids: &Tensor<B, 2, Int>) -> Vec<f32> {
    model
        .forward(ids.clone())
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn fresh_adapter_with_zero_b_returns_exactly_base_logits_when_alpha_differs_from_rank() {
    for name in ["llama-tiny", "qwen2-tiny"] {
        let dir = fixture(name);
        let (_, ids) = ids(&dir);
        let base = load_model_dir::<B>(&dir, &Default::default()).unwrap();
        let expected = logits(&base, &ids);
        let config = LoraConfig {
            rank: 4,
            alpha: 32.0,
            dropout: 0.0,
            targets: ALL_TARGETS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
        };
        let adapted = base.with_new_lora(&config, 7).unwrap();
        assert_eq!(logits(&adapted, &ids), expected, "{name}");
    }
}

#[test]
fn peft_adapter_saved_by_graft_and_loaded_again_gives_the_same_logits() {
    let dir = fixture("llama-tiny");
    let (_, ids) = ids(&dir);
    let device = Default::default();
    let adapted = load_adapter(
        load_model_dir::<B>(&dir, &device).unwrap(),
        &dir.join("lora-adapter"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    save_adapter(&adapted, out.path(), Some("llama-tiny")).unwrap();
    let reloaded = load_adapter(load_model_dir::<B>(&dir, &device).unwrap(), out.path()).unwrap();
    assert_eq!(logits(&reloaded, &ids), logits(&adapted, &ids));

    // The file uses PEFT's key names, the same set the fixture's adapter has.
    let ours =
        graft::model::weights::read_safetensors(&out.path().join("adapter_model.safetensors"))
            .unwrap();
    let theirs = graft::model::weights::read_safetensors(
        &dir.join("lora-adapter/adapter_model.safetensors"),
    )
    .unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
}

#[test]
fn merged_export_loads_as_plain_model_with_the_adapted_logits() {
    for name in ["llama-tiny", "qwen2-tiny"] {
        let dir = fixture(name);
        let (reference, ids) = ids(&dir);
        let device = Default::default();
        let adapted = load_adapter(
            load_model_dir::<B>(&dir, &device).unwrap(),
            &dir.join("lora-adapter"),
        )
        .unwrap();
        let expected = logits(&adapted, &ids);
        let out = tempfile::tempdir().unwrap();
        save_merged(adapted, out.path(), Some(&dir)).unwrap();
        assert!(out.path().join("tokenizer.json").exists());
        let merged = load_model_dir::<B>(out.path(), &device).unwrap();
        assert!(merged.lora.is_none());
        let actual = logits(&merged, &ids);
        assert!(max_rel_err(&actual, &expected) < 1e-5, "{name}");
        let with_lora = reference.with_lora.unwrap();
        let reference_logits: Vec<f32> = with_lora
            .logits
            .iter()
            .flatten()
            .flatten()
            .copied()
            .collect();
        assert!(max_rel_err(&actual, &reference_logits) < 1e-4, "{name}");
    }
}

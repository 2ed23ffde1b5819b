//! What the trainer relies on: which parameters train, opening layers progressively,
//! and restoring named tensors from a checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;

use graft::model::{load_adapter, load_model_dir, Block, CpuTrainBackend};

type B = CpuTrainBackend;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures")
        .join(name)
}

#[test]
fn loading_an_adapter_freezes_the_base_and_trains_only_lora_tensors() {
    let dir = fixture("llama-tiny");
    let model = load_adapter(
        load_model_dir::<B>(&dir, &Default::default()).unwrap(),
        &dir.join("lora-adapter"),
    )
    .unwrap();
    let trainable = model.trainable_param_names();
    assert_eq!(trainable.len(), 2 * 7 * 2);
    assert!(trainable
        .iter()
        .all(|n| n.contains("lora_A") || n.contains("lora_B")));
    assert!(trainable.contains(&"model.layers.1.mlp.down_proj.lora_B.weight".to_string()));
}

#[test]
fn unfreezing_the_top_layer_opens_only_that_layer_base_weights() {
    let dir = fixture("llama-tiny");
    let model = load_adapter(
        load_model_dir::<B>(&dir, &Default::default()).unwrap(),
        &dir.join("lora-adapter"),
    )
    .unwrap()
    .unfreeze_top_layers(1);
    let params = model.params();
    for p in &params {
        let expected = p.is_lora || p.block == Block::Layer(1);
        assert_eq!(p.trainable, expected, "{}", p.name);
    }
    assert!(model
        .trainable_param_names()
        .contains(&"model.layers.1.self_attn.q_proj.weight".to_string()));
    // Gradients reach exactly the trainable parameters.
    let ids = graft::model::parity::Reference::read(&dir.join("reference.json"))
        .unwrap()
        .ids_tensor::<B>(&Default::default());
    let grads = graft::model::parity::trainable_grads(&model, ids);
    assert_eq!(grads.len(), model.trainable_param_names().len());
}

#[test]
fn trainable_tensors_restored_by_name_reproduce_the_model() {
    let dir = fixture("qwen2-tiny");
    let device = Default::default();
    let trained = load_adapter(
        load_model_dir::<B>(&dir, &device).unwrap(),
        &dir.join("lora-adapter"),
    )
    .unwrap();
    let saved: HashMap<_, _> = trained.trainable_tensors().into_iter().collect();
    let fresh = load_model_dir::<B>(&dir, &device)
        .unwrap()
        .with_new_lora(trained.lora.as_ref().unwrap(), 1)
        .unwrap();
    let restored = fresh.load_named_tensors(saved).unwrap();
    let ids = graft::model::parity::Reference::read(&dir.join("reference.json"))
        .unwrap()
        .ids_tensor::<B>(&device);
    let a = trained
        .forward(ids.clone())
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let b = restored.forward(ids).into_data().to_vec::<f32>().unwrap();
    assert_eq!(a, b);
    assert_eq!(
        restored.trainable_param_names(),
        trained.trainable_param_names()
    );
}

#[test]
fn restoring_an_unknown_name_is_an_error() {
    let dir = fixture("llama-tiny");
    let model = load_model_dir::<B>(&dir, &Default::default()).unwrap();
    let mut tensors = HashMap::new();
    tensors.insert(
        "model.layers.9.mlp.up_proj.weight".to_string(),
        burn::tensor::TensorData::new(vec![0.0f32; 4], [2, 2]),
    );
    let err = model.load_named_tensors(tensors).unwrap_err();
    assert!(err
        .to_string()
        .contains("model.layers.9.mlp.up_proj.weight"));
}

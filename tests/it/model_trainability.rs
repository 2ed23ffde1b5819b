//! What the trainer relies on: which parameters train, opening layers progressively,
//! and restoring named tensors from a checkpoint.

use std::collections::HashMap;

use crate::common::shared_fixture as fixture;
use graft::model::{load_adapter, load_model_dir, Block, CpuTrainBackend};

type B = CpuTrainBackend;

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

#[test]
fn burn_adamw_step_moves_only_lora_tensors_and_lowers_the_loss() {
    use burn::module::AutodiffModule;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};

    let dir = fixture("llama-tiny");
    let device = Default::default();
    let model = load_adapter(
        load_model_dir::<B>(&dir, &device).unwrap(),
        &dir.join("lora-adapter"),
    )
    .unwrap();
    let ids = graft::model::parity::Reference::read(&dir.join("reference.json"))
        .unwrap()
        .ids_tensor::<B>(&device);
    let before: HashMap<_, _> = model.named_tensors(|_| true).into_iter().collect();
    let loss_before = model.loss(ids.clone(), None).into_scalar();

    let mut optimizer = AdamWConfig::new().with_weight_decay(0.0).init();
    let grads = model.loss(ids.clone(), None).backward();
    let grads = GradientsParams::from_grads(grads, &model);
    let model = optimizer.step(1e-2, model, grads);

    let loss_after = model.loss(ids.clone(), None).into_scalar();
    assert!(loss_after < loss_before, "{loss_after} !< {loss_before}");
    for (name, data) in model.named_tensors(|_| true) {
        let moved = data != before[&name];
        assert_eq!(moved, name.contains("lora_"), "{name}");
    }
    // Evaluation on the inner backend (no autodiff, no dropout) gives the same logits,
    // up to the inner backend's fused attention kernel.
    let inner = model.valid();
    let ids_inner = ids.clone().inner();
    let a = inner
        .forward(ids_inner)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let b = model.forward(ids).into_data().to_vec::<f32>().unwrap();
    let err = graft::model::parity::max_rel_err(&a, &b);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn hand_written_sgd_over_named_params_updates_trainable_tensors_in_place() {
    use burn::tensor::Tensor;
    use graft::model::AnyTensor;

    let dir = fixture("qwen2-tiny");
    let device = Default::default();
    let model = load_adapter(
        load_model_dir::<B>(&dir, &device).unwrap(),
        &dir.join("lora-adapter"),
    )
    .unwrap();
    let ids = graft::model::parity::Reference::read(&dir.join("reference.json"))
        .unwrap()
        .ids_tensor::<B>(&device);
    let ids_before: Vec<_> = model.params().into_iter().map(|p| p.id).collect();
    let loss_before = model.loss(ids.clone(), None).into_scalar();
    let grads = model.loss(ids.clone(), None).backward();
    let lr = 1e-1;
    let model = model.map_params(|info, value| {
        if !info.trainable {
            return None;
        }
        let updated = match value {
            AnyTensor::D1(t) => {
                let g = t.grad(&grads)?;
                AnyTensor::D1(Tensor::<B, 1>::from_inner(t.inner() - g * lr))
            }
            AnyTensor::D2(t) => {
                let g = t.grad(&grads)?;
                AnyTensor::D2(Tensor::<B, 2>::from_inner(t.inner() - g * lr))
            }
        };
        Some((updated, true))
    });
    let ids_after: Vec<_> = model.params().into_iter().map(|p| p.id).collect();
    assert_eq!(ids_before, ids_after, "parameter ids survive an update");
    assert_eq!(model.trainable_param_names().len(), 28);
    let loss_after = model.loss(ids, None).into_scalar();
    assert!(loss_after < loss_before, "{loss_after} !< {loss_before}");
}

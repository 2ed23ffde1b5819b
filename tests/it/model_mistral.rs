//! Mistral's sliding-window attention: positions inside the window see what full
//! attention sees, later ones do not, and the KV cache agrees with recomputation.

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use graft::model::weights::{build_model, read_raw_tensors};
use graft::model::{generate_ids, CpuBackend, ModelConfig, ModelType, SamplingConfig};

type B = CpuBackend;

#[test]
fn sliding_window_limits_attention_and_matches_the_cache() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama-tiny");
    let llama = ModelConfig::from_dir(&dir).unwrap();
    let mistral = ModelConfig {
        model_type: ModelType::Mistral,
        sliding_window: Some(4),
        ..llama.clone()
    };
    let device = Default::default();
    let full = build_model::<B>(&llama, read_raw_tensors(&dir).unwrap(), &device, None).unwrap();
    let windowed =
        build_model::<B>(&mistral, read_raw_tensors(&dir).unwrap(), &device, None).unwrap();
    let ids: Vec<i64> = (0..10).map(|i| 3 + i * 7).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 10]), &device);
    let a = full.forward(ids.clone());
    let b = windowed.forward(ids);
    let inside = |t: &Tensor<B, 3>| {
        t.clone()
            .narrow(1, 0, 4)
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let after = |t: &Tensor<B, 3>| {
        t.clone()
            .narrow(1, 4, 6)
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(inside(&a), inside(&b));
    assert_ne!(after(&a), after(&b));

    let config = SamplingConfig {
        max_new_tokens: 12,
        ..Default::default()
    };
    let cached = generate_ids(&windowed, &[5, 9, 11], &config).unwrap();
    let uncached = generate_ids(
        &windowed,
        &[5, 9, 11],
        &SamplingConfig {
            use_cache: false,
            ..config
        },
    )
    .unwrap();
    assert_eq!(cached, uncached);
}

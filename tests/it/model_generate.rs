//! Generation with the KV cache produces the same tokens as recomputing the whole
//! sequence every step.

use crate::common::shared_fixture as fixture;
use graft::model::{
    generate, generate_ids, load_model_dir, load_tokenizer, CpuBackend, SamplingConfig,
};

#[test]
fn cached_and_uncached_generation_give_the_same_tokens() {
    for name in ["llama-tiny", "qwen2-tiny"] {
        let model = load_model_dir::<CpuBackend>(&fixture(name), &Default::default()).unwrap();
        let prompt = [5u32, 17, 42, 99, 7];
        for (temperature, top_p) in [(0.0, 1.0), (1.0, 0.9)] {
            let config = SamplingConfig {
                max_new_tokens: 24,
                temperature,
                top_p,
                seed: 3,
                ..Default::default()
            };
            let cached = generate_ids(&model, &prompt, &config).unwrap();
            let uncached = generate_ids(
                &model,
                &prompt,
                &SamplingConfig {
                    use_cache: false,
                    ..config.clone()
                },
            )
            .unwrap();
            assert_eq!(cached.len(), 24);
            assert_eq!(cached, uncached, "{name} t={temperature}");
        }
    }
}

#[test]
fn generate_decodes_text_from_a_prompt() {
    let dir = fixture("llama-tiny");
    let model = load_model_dir::<CpuBackend>(&dir, &Default::default()).unwrap();
    let tokenizer = load_tokenizer(&dir).unwrap();
    let config = SamplingConfig {
        max_new_tokens: 8,
        ..Default::default()
    };
    let text = generate(&model, &tokenizer, "the model learns", &config).unwrap();
    assert!(!text.is_empty());
}

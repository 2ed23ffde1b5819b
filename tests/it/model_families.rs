//! The families beyond Llama and Qwen2 (tests/fixtures: Qwen3, Phi-3, Gemma 2, Gemma 3
//! text) match transformers/peft in f32 at 1e-4 (logits, loss, the PEFT adapter's
//! outputs and every LoRA gradient); each family's distinctive piece is shown to
//! matter; configs of variants graft does not implement are refused by key.

use std::path::Path;

use crate::common::family_fixture as fixture;
use burn::tensor::{Int, Tensor, TensorData};
use graft::model::config::LayerType;
use graft::model::shapes::check_weights;
use graft::model::tensor_files::TensorFiles;
use graft::model::{
    generate_ids, load_model_dir, read_adapter_config, run_parity, save_adapter, CpuBackend,
    CpuTrainBackend, LoraConfig, ModelConfig, ModelError, SamplingConfig, Tolerance, ALL_TARGETS,
};

const FAMILIES: [&str; 4] = ["qwen3-tiny", "phi3-tiny", "gemma2-tiny", "gemma3-tiny"];

/// The fixtures' f32 bound, 1e-4, for the gradients too.
fn f32_tolerance() -> Tolerance {
    Tolerance {
        grad_rel: 1e-4,
        ..Tolerance::default()
    }
}

fn check(name: &str) {
    let dir = fixture(name);
    let report = run_parity::<CpuTrainBackend>(
        &dir,
        &dir.join("reference.json"),
        &Default::default(),
        f32_tolerance(),
    )
    .expect("parity run");
    eprintln!("{name}: {report:#?}");
    assert!(report.with_lora.is_some(), "fixture has a LoRA adapter");
    let grads = report
        .lora_grads
        .as_ref()
        .expect("fixture has reference grads");
    assert!(
        grads.tensors >= 16,
        "{name}: {} gradient tensors",
        grads.tensors
    );
    assert!(report.passes(), "{name} out of tolerance: {report:#?}");
}

#[test]
fn qwen3_tiny_matches_reference_logits_loss_lora_and_grads() {
    check("qwen3-tiny");
}

#[test]
fn phi3_tiny_matches_reference_logits_loss_lora_and_grads() {
    check("phi3-tiny");
}

#[test]
fn gemma2_tiny_matches_reference_logits_loss_lora_and_grads() {
    check("gemma2-tiny");
}

#[test]
fn gemma3_tiny_matches_reference_logits_loss_lora_and_grads() {
    check("gemma3-tiny");
}

/// A copy of fixture `name` with config.json keys replaced.
fn edited_copy(name: &str, edits: &[(&str, serde_json::Value)]) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    copy_dir(&fixture(name), out.path());
    let path = out.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value) in edits {
        config[*key] = value.clone();
    }
    std::fs::write(&path, config.to_string()).unwrap();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn parity_of(dir: &Path) -> graft::model::ParityReport {
    run_parity::<CpuTrainBackend>(
        dir,
        &dir.join("reference.json"),
        &Default::default(),
        f32_tolerance(),
    )
    .unwrap()
}

/// The fixtures bite: a model that skips Gemma 2's attention soft cap, its sliding
/// window, or Gemma 3's local RoPE theta misses the reference.
#[test]
fn gemma_without_soft_cap_window_or_local_rope_misses_the_reference() {
    let cases: [(&str, &str, serde_json::Value); 3] = [
        (
            "gemma2-tiny",
            "attn_logit_softcapping",
            serde_json::Value::Null,
        ),
        ("gemma2-tiny", "sliding_window", 1000.into()),
        (
            "gemma3-tiny",
            "rope_parameters",
            serde_json::json!({"rope_type": "default", "rope_theta": 1000000.0}),
        ),
    ];
    for (name, key, value) in cases {
        let dir = edited_copy(name, &[(key, value)]);
        let report = parity_of(dir.path());
        assert!(
            !report.passes(),
            "{name} with {key} changed still passes: {report:#?}"
        );
    }
}

#[test]
fn family_configs_read_each_families_features() {
    let config = |name: &str| ModelConfig::from_dir(&fixture(name)).unwrap();
    let qwen3 = config("qwen3-tiny");
    assert!(qwen3.qk_norm && !qwen3.gemma_layout && !qwen3.fused_projections);
    assert_eq!(qwen3.layer_window(0), None);

    let phi3 = config("phi3-tiny");
    assert!(phi3.fused_projections && !phi3.qk_norm && !phi3.tie_word_embeddings);

    let gemma2 = config("gemma2-tiny");
    assert!(gemma2.gemma_layout && !gemma2.qk_norm);
    assert_eq!(gemma2.attn_logit_softcapping, Some(5.0));
    assert_eq!(gemma2.final_logit_softcapping, Some(3.0));
    assert_eq!(
        (gemma2.layer_window(0), gemma2.layer_window(1)),
        (Some(8), None)
    );

    let gemma3 = config("gemma3-tiny");
    assert!(gemma3.gemma_layout && gemma3.qk_norm);
    assert_eq!(gemma3.attn_logit_softcapping, None);
    assert_eq!(gemma3.layer_type(0), LayerType::Sliding);
    assert_eq!(gemma3.layer_rope(0).theta, 10_000.0);
    assert_eq!(gemma3.layer_rope(1).theta, 1_000_000.0);

    // What graft writes for an exported config reads back to the same config.
    for name in FAMILIES {
        let original = config(name);
        let again = ModelConfig::from_json_str(&original.to_hf_json().to_string()).unwrap();
        assert_eq!(again, original, "{name}");
    }
}

/// Gemma 3 configs of transformers 4: no layer_types (every sixth layer global), the
/// local theta in rope_local_base_freq.
#[test]
fn gemma3_transformers4_config_derives_layer_types_and_local_rope() {
    let text = r#"{"model_type":"gemma3_text","vocab_size":10,"hidden_size":8,
        "intermediate_size":16,"num_hidden_layers":7,"num_attention_heads":2,
        "num_key_value_heads":1,"head_dim":4,"sliding_window":512,"sliding_window_pattern":6,
        "rope_theta":1000000.0,"rope_local_base_freq":10000.0,"query_pre_attn_scalar":4,
        "rope_scaling":{"rope_type":"linear","factor":8.0}}"#;
    let config = ModelConfig::from_json_str(text).unwrap();
    let windows: Vec<Option<usize>> = (0..7).map(|i| config.layer_window(i)).collect();
    let s = Some(512);
    assert_eq!(windows, vec![s, s, s, s, s, None, s]);
    assert_eq!(config.layer_rope(5).theta, 1_000_000.0);
    assert_eq!(
        config.layer_rope(0).scaling,
        graft::model::RopeScaling::Default
    );
    assert_eq!(config.layer_rope(0).theta, 10_000.0);
}

#[test]
fn unsupported_variants_are_refused_naming_the_config_key() {
    let base = r#""vocab_size":10,"hidden_size":8,"intermediate_size":16,
        "num_hidden_layers":1,"num_attention_heads":2"#;
    let cases = [
        (
            "gemma3 with a vision tower",
            format!(r#"{{"model_type":"gemma3","vision_config":{{"hidden_size":8}},{base}}}"#),
            "vision_config",
        ),
        (
            "qwen3 mixture of experts",
            format!(r#"{{"model_type":"qwen3_moe","num_experts":8,{base}}}"#),
            "model_type",
        ),
        (
            "experts in a dense family's config",
            format!(r#"{{"model_type":"qwen3","num_experts":8,{base}}}"#),
            "num_experts",
        ),
        (
            "phi-4-mini partial rotary",
            format!(
                r#"{{"model_type":"phi3","rope_parameters":{{"rope_theta":1e4,"partial_rotary_factor":0.75}},{base}}}"#
            ),
            "rope_parameters.partial_rotary_factor",
        ),
        (
            "phi-3 longrope",
            format!(
                r#"{{"model_type":"phi3","rope_scaling":{{"type":"longrope","short_factor":[1],"long_factor":[1]}},{base}}}"#
            ),
            "rope_scaling.rope_type",
        ),
        (
            "gemma with exact gelu",
            format!(
                r#"{{"model_type":"gemma2","hidden_activation":"gelu","sliding_window":4,{base}}}"#
            ),
            "hidden_activation",
        ),
        (
            "qwen3 sliding window",
            format!(r#"{{"model_type":"qwen3","use_sliding_window":true,{base}}}"#),
            "use_sliding_window",
        ),
        (
            "gemma layer_types of the wrong length",
            format!(
                r#"{{"model_type":"gemma2","sliding_window":4,"layer_types":["full_attention","full_attention"],{base}}}"#
            ),
            "layer_types",
        ),
        (
            "gemma sliding layers without a window",
            format!(r#"{{"model_type":"gemma2",{base}}}"#),
            "sliding_window",
        ),
    ];
    for (case, text, key) in cases {
        let err = ModelConfig::from_json_str(&text).unwrap_err().to_string();
        assert!(err.contains(key), "{case}: `{err}` does not name {key}");
    }
}

#[test]
fn family_fixtures_pass_the_registration_shape_check_and_a_missing_norm_is_named() {
    for name in FAMILIES {
        let dir = fixture(name);
        let config = ModelConfig::from_dir(&dir).unwrap();
        let tensors = TensorFiles::open(&dir).unwrap();
        check_weights(&config, &tensors, &dir.join("config.json")).unwrap();
    }
    let cases = [
        ("qwen3-tiny", "model.layers.1.self_attn.k_norm.weight"),
        ("phi3-tiny", "model.layers.0.self_attn.qkv_proj.weight"),
        (
            "gemma2-tiny",
            "model.layers.0.pre_feedforward_layernorm.weight",
        ),
        (
            "gemma3-tiny",
            "model.layers.1.post_feedforward_layernorm.weight",
        ),
    ];
    for (name, dropped) in cases {
        let dir = fixture(name);
        let config = ModelConfig::from_dir(&dir).unwrap();
        let mut tensors = TensorFiles::open(&dir).unwrap();
        tensors.remove(dropped).unwrap();
        let err = check_weights(&config, &tensors, &dir.join("config.json")).unwrap_err();
        assert!(
            matches!(&err, ModelError::MissingTensor { name } if name == dropped),
            "{name}: {err}"
        );
        let err = graft::model::weights::build_model::<CpuBackend>(
            &config,
            tensors,
            &Default::default(),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains(dropped), "{name}: {err}");
    }
}

/// Phi-3's default targets: the seven Llama names become PEFT's qkv_proj, o_proj,
/// gate_up_proj and down_proj, which is what a saved adapter lists; naming only part
/// of a fused projection is refused.
#[test]
fn phi3_lora_targets_map_to_its_fused_projections() {
    let dir = fixture("phi3-tiny");
    let model = load_model_dir::<CpuBackend>(&dir, &Default::default()).unwrap();
    let seven = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: ALL_TARGETS.map(String::from).to_vec(),
        use_rslora: false,
    };
    let adapted = model.with_new_lora(&seven, 3).unwrap();
    let mut targets = adapted.lora.as_ref().unwrap().targets.clone();
    targets.sort();
    assert_eq!(targets, ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]);
    let out = tempfile::tempdir().unwrap();
    save_adapter(&adapted, out.path(), None).unwrap();
    let mut saved = read_adapter_config(out.path()).unwrap().targets;
    saved.sort();
    assert_eq!(saved, targets);
    let lora_params = adapted.params().into_iter().filter(|p| p.is_lora).count();
    assert_eq!(
        lora_params,
        2 * 4 * 2,
        "A and B of four projections in two layers"
    );

    let model = load_model_dir::<CpuBackend>(&dir, &Default::default()).unwrap();
    let only_q = LoraConfig {
        targets: vec!["q_proj".into(), "v_proj".into()],
        ..seven
    };
    let err = model.with_new_lora(&only_q, 3).unwrap_err().to_string();
    assert!(err.contains("qkv_proj") && err.contains("k_proj"), "{err}");
}

/// Sliding layers with the KV cache: cached generation on Gemma 2 and 3 past the
/// window gives the tokens full recomputation gives.
#[test]
fn gemma_cached_generation_past_the_window_matches_recomputation() {
    for name in ["gemma2-tiny", "gemma3-tiny"] {
        let model = load_model_dir::<CpuBackend>(&fixture(name), &Default::default()).unwrap();
        let config = SamplingConfig {
            max_new_tokens: 14,
            stop_tokens: Vec::new(),
            ..Default::default()
        };
        let cached = generate_ids(&model, &[5, 9, 11], &config).unwrap();
        let uncached = generate_ids(
            &model,
            &[5, 9, 11],
            &SamplingConfig {
                use_cache: false,
                ..config
            },
        )
        .unwrap();
        assert_eq!(cached, uncached, "{name}");
        assert!(
            cached.len() > 8,
            "{name}: generation passes the window of 8"
        );
    }
}

/// An untrained adapter (B = 0) returns exactly the base logits on every family,
/// fused projections included.
#[test]
fn fresh_adapter_returns_exactly_the_base_logits_on_every_family() {
    for name in FAMILIES {
        let dir = fixture(name);
        let device = Default::default();
        let model = load_model_dir::<CpuBackend>(&dir, &device).unwrap();
        let ids: Vec<i64> = (0..12).map(|i| 3 + i * 11).collect();
        let ids = Tensor::<CpuBackend, 2, Int>::from_data(TensorData::new(ids, [1, 12]), &device);
        let base = model.forward(ids.clone()).into_data();
        let config = LoraConfig {
            rank: 2,
            alpha: 5.0,
            dropout: 0.0,
            targets: ALL_TARGETS.map(String::from).to_vec(),
            use_rslora: false,
        };
        let adapted = model.with_new_lora(&config, 1).unwrap();
        assert_eq!(adapted.forward(ids).into_data(), base, "{name}");
    }
}

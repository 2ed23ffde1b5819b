//! How llama.cpp expects each family: the architecture string, the
//! hyperparameter keys, the tensor names, and the changes to the values that
//! its graphs assume.
//!
//! The names and keys are those of llama.cpp's gguf-py (`constants.py`,
//! `tensor_mapping.py`) and of the hyperparameters its `convert_hf_to_gguf.py`
//! writes per family. Three value changes differ from the Hugging Face layout:
//!
//! - **Llama and Mistral** (`llama` architecture) rotate adjacent pairs of each
//!   head, where transformers rotates the two halves: q and k rows are permuted
//!   per head (row `j` of a half-split head goes to `2j`, row `half + j` to
//!   `2j + 1`). The other families use the half-split ("NeoX") rotation as is.
//! - **Gemma** scales by `1 + w` in every RMSNorm; llama.cpp's norm scales by the
//!   stored weight, so the one is added to every norm weight.
//! - **Phi-3** keeps its fused `qkv_proj` as `attn_qkv` and its fused
//!   `gate_up_proj` as `ffn_up` (llama.cpp splits it in the graph).

use super::super::config::{LayerType, ModelConfig, ModelType, RopeConfig, RopeScaling};
use super::super::error::ModelError;
use super::quant::Role;
use super::writer::MetaValue;

/// llama.cpp's architecture string for a family.
pub fn architecture(model_type: ModelType) -> &'static str {
    match model_type {
        // llama.cpp runs Mistral's dense models as `llama`, as its converter does.
        ModelType::Llama | ModelType::Mistral => "llama",
        ModelType::Qwen2 => "qwen2",
        ModelType::Qwen3 => "qwen3",
        ModelType::Phi3 => "phi3",
        ModelType::Gemma2 => "gemma2",
        ModelType::Gemma3 => "gemma3",
    }
}

/// One exported tensor: its GGUF name and role, and how its values change.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub name: String,
    pub role: Role,
    pub change: Change,
}

/// A change of values between the Hugging Face tensor and the GGUF one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Rows of each of `heads` heads from half-split to interleaved order.
    InterleaveRotaryHalves {
        heads: usize,
    },
    /// Gemma's `(1 + w)` norm weight stored as the full scale.
    AddOne,
}

impl Change {
    /// Applies the change to row-major values of `shape`.
    pub fn apply(self, values: Vec<f32>, shape: &[usize]) -> Vec<f32> {
        match self {
            Change::None => values,
            Change::AddOne => values.into_iter().map(|v| v + 1.0).collect(),
            Change::InterleaveRotaryHalves { heads } => {
                let rows = shape[0];
                let cols = values.len() / rows.max(1);
                let head_dim = rows / heads;
                let half = head_dim / 2;
                let mut out = vec![0.0; values.len()];
                for head in 0..heads {
                    for j in 0..half {
                        for (from, to) in [(j, 2 * j), (half + j, 2 * j + 1)] {
                            let src = (head * head_dim + from) * cols;
                            let dst = (head * head_dim + to) * cols;
                            out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
                        }
                    }
                }
                out
            }
        }
    }
}

/// Maps a Hugging Face tensor name of `config`'s family to its GGUF tensor.
pub fn map_tensor(config: &ModelConfig, hf_name: &str, rank: usize) -> Result<Mapped, ModelError> {
    let unknown = || ModelError::UnexpectedTensor {
        name: hf_name.to_string(),
        model_type: format!("{} (GGUF export)", config.model_type.as_str()),
    };
    let vector = rank == 1;
    let role_or_vector = |role: Role| if vector { Role::Vector } else { role };
    let gemma = config.gemma_layout;
    let rotate_pairs = architecture(config.model_type) == "llama";
    let (name, role, mut change) = match hf_name {
        "model.embed_tokens.weight" => {
            let role = if config.tie_word_embeddings {
                Role::Output
            } else {
                Role::Matrix
            };
            ("token_embd.weight".to_string(), role, Change::None)
        }
        "model.norm.weight" => ("output_norm.weight".to_string(), Role::Vector, Change::None),
        "lm_head.weight" => ("output.weight".to_string(), Role::Output, Change::None),
        other => {
            let rest = other.strip_prefix("model.layers.").ok_or_else(unknown)?;
            let (layer, part) = rest.split_once('.').ok_or_else(unknown)?;
            let layer: usize = layer.parse().map_err(|_| unknown())?;
            let (module, suffix) = part.rsplit_once('.').ok_or_else(unknown)?;
            let (gguf, role, change) = match module {
                "input_layernorm" => ("attn_norm", Role::Vector, Change::None),
                "self_attn.q_proj" if rotate_pairs => (
                    "attn_q",
                    Role::Matrix,
                    Change::InterleaveRotaryHalves {
                        heads: config.num_attention_heads,
                    },
                ),
                "self_attn.k_proj" if rotate_pairs => (
                    "attn_k",
                    Role::Matrix,
                    Change::InterleaveRotaryHalves {
                        heads: config.num_key_value_heads,
                    },
                ),
                "self_attn.q_proj" => ("attn_q", Role::Matrix, Change::None),
                "self_attn.k_proj" => ("attn_k", Role::Matrix, Change::None),
                "self_attn.v_proj" => ("attn_v", Role::AttentionValue { layer }, Change::None),
                "self_attn.o_proj" => ("attn_output", Role::Matrix, Change::None),
                "self_attn.qkv_proj" => ("attn_qkv", Role::FusedQkv, Change::None),
                "self_attn.q_norm" => ("attn_q_norm", Role::Vector, Change::None),
                "self_attn.k_norm" => ("attn_k_norm", Role::Vector, Change::None),
                // Gemma norms the attention's output; the others norm the
                // feed-forward's input under this name.
                "post_attention_layernorm" if gemma => {
                    ("post_attention_norm", Role::Vector, Change::None)
                }
                "post_attention_layernorm" => ("ffn_norm", Role::Vector, Change::None),
                "pre_feedforward_layernorm" => ("ffn_norm", Role::Vector, Change::None),
                "post_feedforward_layernorm" => ("post_ffw_norm", Role::Vector, Change::None),
                "mlp.gate_proj" => ("ffn_gate", Role::Matrix, Change::None),
                "mlp.up_proj" => ("ffn_up", Role::Matrix, Change::None),
                "mlp.gate_up_proj" => ("ffn_up", Role::Matrix, Change::None),
                "mlp.down_proj" => ("ffn_down", Role::FeedForwardDown { layer }, Change::None),
                _ => return Err(unknown()),
            };
            (format!("blk.{layer}.{gguf}.{suffix}"), role, change)
        }
    };
    if gemma && hf_name.ends_with("norm.weight") {
        change = Change::AddOne;
    }
    Ok(Mapped {
        name,
        role: role_or_vector(role),
        change,
    })
}

/// The scale llama.cpp's Gemma graphs put on attention scores: one over the root
/// of head_dim, except for the 27B shapes (46 layers for Gemma 2, 62 for Gemma 3),
/// which use hidden / heads.
fn llama_cpp_gemma_scalar(config: &ModelConfig) -> f64 {
    let is_27b = match config.model_type {
        ModelType::Gemma2 => config.num_hidden_layers == 46,
        _ => config.num_hidden_layers == 62,
    };
    if is_27b {
        (config.hidden_size / config.num_attention_heads) as f64
    } else {
        config.head_dim as f64
    }
}

/// Refuses what llama.cpp would run differently from graft, naming the key.
pub fn check_supported(config: &ModelConfig) -> Result<(), ModelError> {
    if config.gemma_layout {
        let expected = llama_cpp_gemma_scalar(config);
        if let Some(scalar) = config.query_pre_attn_scalar.filter(|s| *s != expected) {
            return Err(ModelError::Unsupported {
                key: "query_pre_attn_scalar".into(),
                value: scalar.to_string(),
                supported: format!(
                    "{expected} for this shape (llama.cpp derives the attention scale from head_dim, or hidden/heads for the 27B models)"
                ),
            });
        }
    }
    if config.model_type == ModelType::Gemma2 && !config.tie_word_embeddings {
        return Err(ModelError::Unsupported {
            key: "tie_word_embeddings".into(),
            value: "false".into(),
            supported: "true (llama.cpp's gemma2 reads the head from the embedding)".into(),
        });
    }
    if matches!(config.rope.scaling, RopeScaling::Llama3 { .. })
        && architecture(config.model_type) != "llama"
    {
        return Err(ModelError::Unsupported {
            key: "rope_scaling.rope_type".into(),
            value: format!("llama3 (model_type {})", config.model_type.as_str()),
            supported: "llama3 scaling on Llama models only in a GGUF export".into(),
        });
    }
    if let Some(local) = &config.rope_local {
        if local.scaling != RopeScaling::Default {
            return Err(ModelError::Unsupported {
                key: "rope_parameters.sliding_attention.rope_type".into(),
                value: format!("{:?}", local.scaling),
                supported: "default (llama.cpp scales only the global layers' RoPE)".into(),
            });
        }
    }
    Ok(())
}

/// The `{arch}.*` hyperparameters of a family.
pub fn hyperparameters(config: &ModelConfig) -> Vec<(String, MetaValue)> {
    let arch = architecture(config.model_type);
    let key = |name: &str| format!("{arch}.{name}");
    let mut out = vec![
        (
            key("context_length"),
            MetaValue::U32(config.max_position_embeddings as u32),
        ),
        (
            key("embedding_length"),
            MetaValue::U32(config.hidden_size as u32),
        ),
        (
            key("block_count"),
            MetaValue::U32(config.num_hidden_layers as u32),
        ),
        (
            key("feed_forward_length"),
            MetaValue::U32(config.intermediate_size as u32),
        ),
        (
            key("attention.head_count"),
            MetaValue::U32(config.num_attention_heads as u32),
        ),
        (
            key("attention.head_count_kv"),
            MetaValue::U32(config.num_key_value_heads as u32),
        ),
        (
            key("attention.key_length"),
            MetaValue::U32(config.head_dim as u32),
        ),
        (
            key("attention.value_length"),
            MetaValue::U32(config.head_dim as u32),
        ),
        (
            key("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(config.rms_norm_eps as f32),
        ),
        (
            key("rope.dimension_count"),
            MetaValue::U32(config.head_dim as u32),
        ),
        (
            key("rope.freq_base"),
            MetaValue::F32(config.rope.theta as f32),
        ),
        (key("vocab_size"), MetaValue::U32(config.vocab_size as u32)),
    ];
    if let RopeScaling::Linear { factor } = config.rope.scaling {
        out.push((key("rope.scaling.type"), MetaValue::String("linear".into())));
        out.push((key("rope.scaling.factor"), MetaValue::F32(factor as f32)));
    }
    match config.model_type {
        ModelType::Gemma2 | ModelType::Gemma3 => {
            if let Some(window) = config.sliding_window {
                out.push((
                    key("attention.sliding_window"),
                    MetaValue::U32(window as u32),
                ));
                let pattern = (0..config.num_hidden_layers)
                    .map(|layer| config.layer_type(layer) == LayerType::Sliding)
                    .collect();
                out.push((
                    key("attention.sliding_window_pattern"),
                    MetaValue::Bools(pattern),
                ));
            }
            let local: &RopeConfig = config.rope_local.as_ref().unwrap_or(&config.rope);
            out.push((
                key("rope.freq_base_swa"),
                MetaValue::F32(local.theta as f32),
            ));
            if let Some(cap) = config.attn_logit_softcapping {
                out.push((key("attn_logit_softcapping"), MetaValue::F32(cap as f32)));
            }
            if let Some(cap) = config.final_logit_softcapping {
                out.push((key("final_logit_softcapping"), MetaValue::F32(cap as f32)));
            }
        }
        ModelType::Phi3 => {
            // The converter writes 0 where there is no window.
            let window = config.sliding_window.unwrap_or(0);
            out.push((
                key("attention.sliding_window"),
                MetaValue::U32(window as u32),
            ));
        }
        _ => {}
    }
    out
}

/// Notes on what llama.cpp will run differently, for the user to read.
pub fn caveats(config: &ModelConfig) -> Vec<String> {
    match (config.model_type, config.sliding_window) {
        (ModelType::Mistral | ModelType::Phi3, Some(window))
            if window < config.max_position_embeddings =>
        {
            vec![format!(
                "sliding_window = {window}: llama.cpp runs {} with full attention, so its outputs differ from graft's past {window} tokens",
                architecture(config.model_type)
            )]
        }
        _ => Vec::new(),
    }
}

/// Llama 3's RoPE as llama.cpp takes it: the per-frequency divisor of the
/// plain frequencies, as the `rope_freqs.weight` tensor.
pub fn rope_factors(config: &ModelConfig) -> Option<Vec<f32>> {
    if !matches!(config.rope.scaling, RopeScaling::Llama3 { .. }) {
        return None;
    }
    let plain = RopeConfig {
        theta: config.rope.theta,
        scaling: RopeScaling::Default,
    }
    .inv_freq(config.head_dim);
    let scaled = config.rope.inv_freq(config.head_dim);
    Some(
        plain
            .iter()
            .zip(&scaled)
            .map(|(p, s)| (p / s) as f32)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_moves_each_heads_second_half_between_the_first() {
        // Two heads of head_dim 4, one column: rows 0..8.
        let values: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let out = Change::InterleaveRotaryHalves { heads: 2 }.apply(values, &[8, 1]);
        assert_eq!(out, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }
}

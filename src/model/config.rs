//! Model configuration: a raw serde mirror of a Hugging Face `config.json`, validated
//! into [`ModelConfig`], the one description the rest of `model` builds from.
//!
//! Both generations of transformers configs are accepted: transformers 4 puts
//! `rope_theta` and `rope_scaling` at the top level, transformers 5 nests them in
//! `rope_parameters`. Presets are constructors so that benchmarks and from-scratch
//! models never spell shapes as scattered literals.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ModelError;

/// The model families whose weights and forward pass this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Llama,
    Qwen2,
    Mistral,
    Qwen3,
    Phi3,
    Gemma2,
    /// Gemma 3's text model (`gemma3_text`); the vision-language `gemma3` is refused.
    Gemma3,
}

impl ModelType {
    /// The `model_type` string of config.json.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Qwen2 => "qwen2",
            ModelType::Mistral => "mistral",
            ModelType::Qwen3 => "qwen3",
            ModelType::Phi3 => "phi3",
            ModelType::Gemma2 => "gemma2",
            ModelType::Gemma3 => "gemma3_text",
        }
    }

    /// Every family, in the order error messages list them.
    pub const ALL: [ModelType; 7] = [
        ModelType::Llama,
        ModelType::Qwen2,
        ModelType::Mistral,
        ModelType::Qwen3,
        ModelType::Phi3,
        ModelType::Gemma2,
        ModelType::Gemma3,
    ];

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether this is Gemma 2 or 3: (1 + w) norms, scaled embeddings, norms around
    /// both sublayers, GeGLU.
    pub fn is_gemma(self) -> bool {
        matches!(self, ModelType::Gemma2 | ModelType::Gemma3)
    }

    /// The transformers class name written to `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Mistral => "MistralForCausalLM",
            ModelType::Qwen3 => "Qwen3ForCausalLM",
            ModelType::Phi3 => "Phi3ForCausalLM",
            ModelType::Gemma2 => "Gemma2ForCausalLM",
            ModelType::Gemma3 => "Gemma3ForCausalLM",
        }
    }
}

/// How the RoPE inverse frequencies are rescaled for longer contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.x: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// Inverse frequencies, `[head_dim / 2]`, as transformers computes them
    /// (`_compute_default_rope_parameters` and friends), in f64.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        let base: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        match &self.scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_context,
            } => {
                let low_freq_wavelen = old_context / low_freq_factor;
                let high_freq_wavelen = old_context / high_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_freq_wavelen {
                            freq
                        } else if wavelen > low_freq_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old_context / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Which attention a decoder layer runs (config.json `layer_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Causal attention over every earlier position.
    Full,
    /// Causal attention over the last `sliding_window` positions.
    Sliding,
}

impl LayerType {
    /// The `layer_types` string of config.json.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerType::Full => "full_attention",
            LayerType::Sliding => "sliding_attention",
        }
    }
}

/// The gated feed-forward's activation: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (`silu`): Llama, Qwen, Mistral, Phi-3.
    Silu,
    /// GeGLU with the tanh approximation of GELU (`gelu_pytorch_tanh`): Gemma.
    GeluTanh,
}

impl Activation {
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

/// A validated decoder-only architecture description (Llama and the families built
/// like it: Qwen2/3, Mistral, Phi-3, Gemma 2/3).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama `attention_bias` only; Qwen2 never).
    pub o_bias: bool,
    /// Bias on gate/up/down (Llama `mlp_bias`).
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// Sliding-window attention: a query sees at most this many keys (itself
    /// included), in the layers `layer_types` marks sliding. `None`: full causal
    /// attention everywhere.
    pub sliding_window: Option<usize>,
    /// One entry per layer (Gemma 2/3). `None`: every layer slides when
    /// `sliding_window` is set (Mistral, Phi-3).
    pub layer_types: Option<Vec<LayerType>>,
    /// RoPE of the sliding layers where it differs from `rope` (Gemma 3: local
    /// theta 1e4, global 1e6).
    pub rope_local: Option<RopeConfig>,
    /// The feed-forward's gate activation.
    pub hidden_act: Activation,
    /// RMSNorm over each head of q and k before RoPE (`q_norm`, `k_norm`: Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// q/k/v in one `qkv_proj` and gate/up in one `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
    /// Gemma's layout: RMSNorm scales by `1 + weight`, the embedding is multiplied by
    /// sqrt(hidden_size), and each sublayer's output is normed before the residual
    /// (`post_attention_layernorm`, `pre_`/`post_feedforward_layernorm`).
    pub gemma_layout: bool,
    /// Attention scores scaled by `query_pre_attn_scalar^-1/2` instead of
    /// `head_dim^-1/2` (Gemma).
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention scores capped as `c * tanh(s / c)` before the mask (Gemma 2).
    pub attn_logit_softcapping: Option<f64>,
    /// Output logits capped as `c * tanh(l / c)` (Gemma 2).
    pub final_logit_softcapping: Option<f64>,
}

/// `eos_token_id` is an int or a list of ints in real checkpoints.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// Field-for-field mirror of the config.json keys this crate reads; everything else
/// is ignored so that newer transformers versions keep loading.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    // Gemma 2/3.
    hidden_activation: Option<String>,
    layer_types: Option<Vec<String>>,
    #[serde(alias = "_sliding_window_pattern")]
    sliding_window_pattern: Option<usize>,
    rope_local_base_freq: Option<f64>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    use_bidirectional_attention: Option<bool>,
    // Phi-3 / Phi-4-mini (transformers 4 puts it at the top level).
    partial_rotary_factor: Option<f64>,
    // Variants graft refuses, read to name them.
    vision_config: Option<Value>,
    text_config: Option<Value>,
    num_experts: Option<usize>,
    num_local_experts: Option<usize>,
}

fn required(value: Option<usize>, key: &str) -> Result<usize, ModelError> {
    value.ok_or_else(|| ModelError::Config {
        key: key.to_string(),
        message: "missing".to_string(),
    })
}

fn rope_number(params: &Map<String, Value>, key: &str) -> Result<f64, ModelError> {
    params
        .get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| ModelError::Config {
            key: format!("rope_scaling.{key}"),
            message: "missing or not a number".to_string(),
        })
}

/// Reads a RoPE scaling object (`rope_scaling` of transformers 4 or `rope_parameters`
/// of transformers 5; both use `rope_type`, older files `type`).
fn parse_rope_scaling(params: &Map<String, Value>, key: &str) -> Result<RopeScaling, ModelError> {
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear {
            factor: rope_number(params, "factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: rope_number(params, "factor")?,
            low_freq_factor: rope_number(params, "low_freq_factor")?,
            high_freq_factor: rope_number(params, "high_freq_factor")?,
            original_max_position_embeddings: rope_number(
                params,
                "original_max_position_embeddings",
            )?,
        }),
        other => Err(ModelError::Unsupported {
            key: format!("{key}.rope_type"),
            value: other.to_string(),
            supported: "default, linear, llama3".to_string(),
        }),
    }
}

/// Refuses what a config of a supported family may still carry and graft does not
/// implement, naming the key: experts (MoE), a vision tower, bidirectional attention.
fn refuse_unsupported_variants(raw: &RawConfig, model_type: ModelType) -> Result<(), ModelError> {
    for (key, experts) in [
        ("num_experts", raw.num_experts),
        ("num_local_experts", raw.num_local_experts),
    ] {
        if let Some(n) = experts.filter(|n| *n > 0) {
            return Err(ModelError::Unsupported {
                key: key.into(),
                value: n.to_string(),
                supported: "dense models only (no mixture of experts)".into(),
            });
        }
    }
    for (key, present) in [
        ("vision_config", raw.vision_config.as_ref()),
        ("text_config", raw.text_config.as_ref()),
    ] {
        if present.is_some_and(|v| !v.is_null()) {
            return Err(ModelError::Unsupported {
                key: key.into(),
                value: format!("present (model_type {})", model_type.as_str()),
                supported: "text-only causal language models".into(),
            });
        }
    }
    if raw.use_bidirectional_attention == Some(true) {
        return Err(ModelError::Unsupported {
            key: "use_bidirectional_attention".into(),
            value: "true".into(),
            supported: "false (causal language models)".into(),
        });
    }
    Ok(())
}

/// The feed-forward activation: `hidden_act` (silu) for the SwiGLU families,
/// `hidden_activation` (gelu_pytorch_tanh) for Gemma.
fn activation_of(raw: &RawConfig, model_type: ModelType) -> Result<Activation, ModelError> {
    let (key, value, expected) = if model_type.is_gemma() {
        let value = raw
            .hidden_activation
            .as_deref()
            .or(raw.hidden_act.as_deref());
        ("hidden_activation", value, Activation::GeluTanh)
    } else {
        ("hidden_act", raw.hidden_act.as_deref(), Activation::Silu)
    };
    match value {
        Some(name) if name != expected.as_str() => Err(ModelError::Unsupported {
            key: key.into(),
            value: name.into(),
            supported: expected.as_str().into(),
        }),
        _ => Ok(expected),
    }
}

/// Refuses partial rotary embeddings (Phi-4-mini's 0.75): graft rotates all of head_dim.
fn check_full_rotary(value: Option<f64>, key: &str) -> Result<(), ModelError> {
    match value {
        Some(factor) if factor != 1.0 => Err(ModelError::Unsupported {
            key: key.into(),
            value: factor.to_string(),
            supported: "1.0".into(),
        }),
        _ => Ok(()),
    }
}

/// One RoPE parameter object of transformers 5 (`rope_theta` and the scaling keys).
fn rope_from_parameters(
    params: &Map<String, Value>,
    key: &str,
    fallback_theta: f64,
) -> Result<RopeConfig, ModelError> {
    check_full_rotary(
        params.get("partial_rotary_factor").and_then(Value::as_f64),
        &format!("{key}.partial_rotary_factor"),
    )?;
    Ok(RopeConfig {
        theta: params
            .get("rope_theta")
            .and_then(Value::as_f64)
            .unwrap_or(fallback_theta),
        scaling: parse_rope_scaling(params, key)?,
    })
}

/// The RoPE of the (global) layers, and of the sliding layers where it differs.
///
/// transformers 5 nests theta and scaling in `rope_parameters`, per layer type for
/// Gemma 3 (`{"full_attention": {...}, "sliding_attention": {...}}`); transformers 4
/// keeps `rope_theta` at the top level with an optional `rope_scaling` object, and
/// Gemma 3's local theta in `rope_local_base_freq`.
fn rope_of(raw: &RawConfig) -> Result<(RopeConfig, Option<RopeConfig>), ModelError> {
    let default_theta = raw.rope_theta.unwrap_or(10_000.0);
    check_full_rotary(raw.partial_rotary_factor, "partial_rotary_factor")?;
    if let Some(params) = raw.rope_parameters.as_ref().filter(|v| !v.is_null()) {
        let params = params.as_object().ok_or_else(|| ModelError::Config {
            key: "rope_parameters".into(),
            message: "not an object".into(),
        })?;
        let per_layer_type = [LayerType::Full, LayerType::Sliding]
            .iter()
            .any(|kind| params.contains_key(kind.as_str()));
        if !per_layer_type {
            let rope = rope_from_parameters(params, "rope_parameters", default_theta)?;
            return Ok((rope, None));
        }
        let of_kind = |kind: LayerType| -> Result<Option<RopeConfig>, ModelError> {
            let key = format!("rope_parameters.{}", kind.as_str());
            match params.get(kind.as_str()) {
                None => Ok(None),
                Some(Value::Object(inner)) => {
                    rope_from_parameters(inner, &key, default_theta).map(Some)
                }
                Some(_) => Err(ModelError::Config {
                    key,
                    message: "not an object".into(),
                }),
            }
        };
        let full = of_kind(LayerType::Full)?.ok_or_else(|| ModelError::Config {
            key: "rope_parameters.full_attention".into(),
            message: "missing (rope_parameters has per-layer-type entries)".into(),
        })?;
        let sliding = of_kind(LayerType::Sliding)?;
        return Ok((full.clone(), sliding.filter(|local| *local != full)));
    }
    let scaling = match raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
        None => RopeScaling::Default,
        Some(Value::Object(params)) => parse_rope_scaling(params, "rope_scaling")?,
        Some(_) => {
            return Err(ModelError::Config {
                key: "rope_scaling".into(),
                message: "not an object".into(),
            })
        }
    };
    let rope = RopeConfig {
        theta: default_theta,
        scaling,
    };
    let local = raw.rope_local_base_freq.map(|theta| RopeConfig {
        theta,
        scaling: RopeScaling::Default,
    });
    Ok((rope.clone(), local.filter(|local| *local != rope)))
}

/// The sliding window and, for Gemma, which layers use it (`layer_types`, or where
/// an older config lacks it, the family's pattern: Gemma 2 alternates starting with
/// a sliding layer, Gemma 3 has `sliding_window_pattern - 1` sliding layers per
/// global one).
fn sliding_of(
    raw: &RawConfig,
    model_type: ModelType,
    num_layers: usize,
) -> Result<(Option<usize>, Option<Vec<LayerType>>), ModelError> {
    match model_type {
        // Every layer slides when a window is set (MistralModel, Phi3Model).
        ModelType::Mistral | ModelType::Phi3 => Ok((raw.sliding_window, None)),
        // Qwen applies its window only to layers past max_window_layers; not modelled.
        ModelType::Qwen2 | ModelType::Qwen3 if raw.use_sliding_window == Some(true) => {
            Err(ModelError::Unsupported {
                key: "use_sliding_window".into(),
                value: "true".into(),
                supported: "false".into(),
            })
        }
        ModelType::Gemma2 | ModelType::Gemma3 => {
            let types = match &raw.layer_types {
                Some(names) => {
                    if names.len() != num_layers {
                        return Err(ModelError::Config {
                            key: "layer_types".into(),
                            message: format!(
                                "{} entries for num_hidden_layers {num_layers}",
                                names.len()
                            ),
                        });
                    }
                    names
                        .iter()
                        .enumerate()
                        .map(|(i, name)| {
                            [LayerType::Full, LayerType::Sliding]
                                .into_iter()
                                .find(|kind| kind.as_str() == name)
                                .ok_or_else(|| ModelError::Unsupported {
                                    key: format!("layer_types[{i}]"),
                                    value: name.clone(),
                                    supported: "full_attention, sliding_attention".into(),
                                })
                        })
                        .collect::<Result<Vec<_>, _>>()?
                }
                None => {
                    let pattern = match model_type {
                        ModelType::Gemma2 => 2,
                        _ => raw.sliding_window_pattern.unwrap_or(6).max(1),
                    };
                    (0..num_layers)
                        .map(|i| {
                            if (i + 1) % pattern != 0 {
                                LayerType::Sliding
                            } else {
                                LayerType::Full
                            }
                        })
                        .collect()
                }
            };
            if raw.sliding_window.is_none() && types.contains(&LayerType::Sliding) {
                return Err(ModelError::Config {
                    key: "sliding_window".into(),
                    message: "missing, but layer_types has sliding_attention layers".into(),
                });
            }
            Ok((raw.sliding_window, Some(types)))
        }
        _ => Ok((None, None)),
    }
}

impl ModelConfig {
    /// Reads and validates `config.json` in a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|error| match error {
            ModelError::Json { message, .. } => ModelError::Json { path, message },
            other => other,
        })
    }

    /// Parses config.json text.
    pub fn from_json_str(text: &str) -> Result<Self, ModelError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: "config.json".into(),
            message: e.to_string(),
        })?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ModelError> {
        let model_type = Self::model_type_of(&raw)?;
        refuse_unsupported_variants(&raw, model_type)?;
        let hidden_act = activation_of(&raw, model_type)?;
        let hidden_size = required(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = required(raw.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::Config {
                key: "num_key_value_heads".into(),
                message: format!(
                    "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
                ),
            });
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(ModelError::Config {
                    key: "head_dim".into(),
                    message: "missing and hidden_size is not a multiple of num_attention_heads"
                        .into(),
                })
            }
        };
        if head_dim % 2 != 0 {
            return Err(ModelError::Config {
                key: "head_dim".into(),
                message: format!("{head_dim} is odd; RoPE needs an even head_dim"),
            });
        }
        let num_hidden_layers = required(raw.num_hidden_layers, "num_hidden_layers")?;
        let (rope, rope_local) = rope_of(&raw)?;
        let (sliding_window, layer_types) = sliding_of(&raw, model_type, num_hidden_layers)?;

        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match model_type {
            // Qwen2Attention hardcodes bias=True on q/k/v and False on o_proj.
            ModelType::Qwen2 => (raw.attention_bias.unwrap_or(true), false),
            // Phi3Attention has no bias on qkv_proj or o_proj.
            ModelType::Phi3 => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let gemma = model_type.is_gemma();
        let config = ModelConfig {
            model_type,
            vocab_size: required(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: required(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            // Gemma's configs default to tied (Gemma2Config, Gemma3TextConfig).
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(gemma),
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
            eos_token_ids: match raw.eos_token_id {
                None => Vec::new(),
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
            },
            pad_token_id: raw.pad_token_id,
            sliding_window,
            layer_types,
            rope_local,
            hidden_act,
            qk_norm: matches!(model_type, ModelType::Qwen3 | ModelType::Gemma3),
            fused_projections: model_type == ModelType::Phi3,
            gemma_layout: gemma,
            query_pre_attn_scalar: if gemma {
                Some(raw.query_pre_attn_scalar.unwrap_or(256.0))
            } else {
                None
            },
            attn_logit_softcapping: raw
                .attn_logit_softcapping
                .filter(|_| model_type == ModelType::Gemma2),
            final_logit_softcapping: raw.final_logit_softcapping.filter(|_| gemma),
        };
        for (key, cap) in [
            ("attn_logit_softcapping", config.attn_logit_softcapping),
            ("final_logit_softcapping", config.final_logit_softcapping),
        ] {
            if cap.is_some_and(|c| c <= 0.0 || !c.is_finite()) {
                return Err(ModelError::Config {
                    key: key.into(),
                    message: "must be a positive number or null".into(),
                });
            }
        }
        Ok(config)
    }

    fn model_type_of(raw: &RawConfig) -> Result<ModelType, ModelError> {
        match raw.model_type.as_deref() {
            Some(name) => ModelType::from_name(name).ok_or_else(|| {
                if name == "gemma3" || raw.vision_config.is_some() {
                    // Gemma3ForConditionalGeneration: a SigLIP tower beside the text model.
                    ModelError::Unsupported {
                        key: "vision_config".into(),
                        value: format!("present (model_type {name})"),
                        supported: "text-only models; for Gemma 3, a gemma3_text config (Gemma3ForCausalLM)".into(),
                    }
                } else {
                    ModelError::Unsupported {
                        key: "model_type".into(),
                        value: name.into(),
                        supported: ModelType::ALL.map(ModelType::as_str).join(", "),
                    }
                }
            }),
            None => Err(ModelError::Config {
                key: "model_type".into(),
                message: "missing".into(),
            }),
        }
    }

    /// `[batch, seq, num_kv_heads * head_dim]` width of k and v projections.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Width of the q projection output.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Which attention layer `layer` runs.
    pub fn layer_type(&self, layer: usize) -> LayerType {
        match (&self.layer_types, self.sliding_window) {
            (Some(types), Some(_)) => types.get(layer).copied().unwrap_or(LayerType::Full),
            (None, Some(_)) => LayerType::Sliding,
            (_, None) => LayerType::Full,
        }
    }

    /// The sliding window of layer `layer`, `None` where it attends to every position.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        match self.layer_type(layer) {
            LayerType::Sliding => self.sliding_window,
            LayerType::Full => None,
        }
    }

    /// The RoPE of layer `layer` (Gemma 3's sliding layers have their own).
    pub fn layer_rope(&self, layer: usize) -> &RopeConfig {
        match (self.layer_type(layer), &self.rope_local) {
            (LayerType::Sliding, Some(local)) => local,
            _ => &self.rope,
        }
    }

    #[allow(clippy::too_many_arguments)] // one call per preset, each argument named at the call by position in the benchmark table
    fn llama_shape(
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        vocab_size: usize,
        tie_word_embeddings: bool,
        rope_theta: f64,
    ) -> Self {
        ModelConfig {
            model_type: ModelType::Llama,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads,
            rms_norm_eps: 1e-5,
            rope: RopeConfig {
                theta: rope_theta,
                scaling: RopeScaling::Default,
            },
            max_position_embeddings: 2048,
            tie_word_embeddings,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
            sliding_window: None,
            layer_types: None,
            rope_local: None,
            hidden_act: Activation::Silu,
            qk_norm: false,
            fused_projections: false,
            gemma_layout: false,
            query_pre_attn_scalar: None,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
        }
    }

    /// The `tiny` preset of `shared/bench/hf_peft_lora.py` (smoke tests, CPU benchmark).
    pub fn tiny() -> Self {
        Self::llama_shape(256, 688, 4, 8, 4, 4096, false, 10_000.0)
    }

    /// SmolLM2-135M shapes (`smol-135m` preset of the reference benchmark).
    pub fn smol_135m() -> Self {
        Self::llama_shape(576, 1536, 30, 9, 3, 49152, true, 100_000.0)
    }

    /// Llama-3.2-1B shapes (`llama-1b` preset of the reference benchmark). The
    /// benchmark uses plain RoPE with theta 5e5, not the llama3 scaling of the release.
    pub fn llama_1b() -> Self {
        Self::llama_shape(2048, 8192, 16, 32, 8, 128_256, true, 500_000.0)
    }

    /// Llama-3.1-8B shapes (`llama-8b` preset of the reference benchmark), with the same
    /// plain RoPE.
    pub fn llama_8b() -> Self {
        Self::llama_shape(4096, 14336, 32, 32, 8, 128_256, false, 500_000.0)
    }

    /// A preset by the name the reference benchmark uses.
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "smol-135m" => Ok(Self::smol_135m()),
            "llama-1b" => Ok(Self::llama_1b()),
            "llama-8b" => Ok(Self::llama_8b()),
            other => Err(ModelError::Unsupported {
                key: "preset".into(),
                value: other.into(),
                supported: "tiny, smol-135m, llama-1b, llama-8b".into(),
            }),
        }
    }

    /// A config.json that both transformers 4 (`rope_theta`/`rope_scaling`) and
    /// transformers 5 (`rope_parameters`) read back to this config.
    pub fn to_hf_json(&self) -> Value {
        let (rope_parameters, rope_scaling) = rope_json(&self.rope);
        let rope_parameters = match &self.rope_local {
            // Gemma 3 in transformers 5: one set per layer type.
            Some(local) => json!({
                LayerType::Full.as_str(): rope_parameters,
                LayerType::Sliding.as_str(): rope_json(local).0,
            }),
            None => rope_parameters,
        };
        let mut out = json!({
            "architectures": [self.model_type.architecture()],
            "model_type": self.model_type.as_str(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act.as_str(),
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "rope_scaling": rope_scaling,
            "rope_parameters": rope_parameters,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "dtype": "float32",
            "torch_dtype": "float32",
        });
        if let Value::Object(map) = &mut out {
            if !matches!(self.model_type, ModelType::Qwen2 | ModelType::Phi3) {
                map.insert("attention_bias".into(), json!(self.qkv_bias));
            }
            if self.model_type == ModelType::Llama {
                map.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            if let Some(id) = self.bos_token_id {
                map.insert("bos_token_id".into(), json!(id));
            }
            match self.eos_token_ids.as_slice() {
                [] => {}
                [one] => {
                    map.insert("eos_token_id".into(), json!(one));
                }
                many => {
                    map.insert("eos_token_id".into(), json!(many));
                }
            }
            if matches!(self.model_type, ModelType::Mistral | ModelType::Phi3) {
                map.insert("sliding_window".into(), json!(self.sliding_window));
            }
            if self.gemma_layout {
                let types: Vec<&str> = (0..self.num_hidden_layers)
                    .map(|i| self.layer_type(i).as_str())
                    .collect();
                map.insert("hidden_activation".into(), json!(self.hidden_act.as_str()));
                map.insert("layer_types".into(), json!(types));
                map.insert("sliding_window".into(), json!(self.sliding_window));
                map.insert(
                    "query_pre_attn_scalar".into(),
                    json!(self.query_pre_attn_scalar),
                );
                map.insert(
                    "attn_logit_softcapping".into(),
                    json!(self.attn_logit_softcapping),
                );
                map.insert(
                    "final_logit_softcapping".into(),
                    json!(self.final_logit_softcapping),
                );
                if let Some(local) = &self.rope_local {
                    map.insert("rope_local_base_freq".into(), json!(local.theta));
                }
            }
            if let Some(id) = self.pad_token_id {
                map.insert("pad_token_id".into(), json!(id));
            }
        }
        out
    }
}

/// One RoPE configuration as transformers 5's `rope_parameters` object and
/// transformers 4's `rope_scaling` value (null for plain RoPE).
fn rope_json(rope: &RopeConfig) -> (Value, Value) {
    let mut rope_parameters = Map::new();
    rope_parameters.insert("rope_theta".into(), json!(rope.theta));
    let rope_scaling = match &rope.scaling {
        RopeScaling::Default => {
            rope_parameters.insert("rope_type".into(), json!("default"));
            Value::Null
        }
        RopeScaling::Linear { factor } => {
            rope_parameters.insert("rope_type".into(), json!("linear"));
            rope_parameters.insert("factor".into(), json!(factor));
            json!({"rope_type": "linear", "factor": factor})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let scaling = json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": *original_max_position_embeddings as u64,
            });
            if let Value::Object(map) = &scaling {
                for (k, v) in map {
                    rope_parameters.insert(k.clone(), v.clone());
                }
            }
            scaling
        }
    };
    (Value::Object(rope_parameters), rope_scaling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers4_and_5_rope_keys_give_the_same_config() {
        let v5 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":32.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let v4 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":32.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let a = ModelConfig::from_json_str(v5).unwrap();
        let b = ModelConfig::from_json_str(v4).unwrap();
        assert_eq!(a, b);
        let round = ModelConfig::from_json_str(&a.to_hf_json().to_string()).unwrap();
        assert_eq!(round, a);
    }

    #[test]
    fn llama3_rope_keeps_high_frequencies_and_divides_low_ones_by_factor() {
        let rope = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        };
        let plain = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Default,
        };
        let (scaled, base) = (rope.inv_freq(64), plain.inv_freq(64));
        assert_eq!(scaled[0], base[0]);
        assert!((scaled[31] - base[31] / 32.0).abs() < 1e-20);
        // The ramp in between lies between the two.
        for (s, b) in scaled.iter().zip(&base) {
            assert!(*s <= *b && *s >= b / 32.0 - 1e-20);
        }
    }

    #[test]
    fn unsupported_rope_type_names_key_and_value() {
        let text = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"type":"yarn","factor":2.0}}"#;
        let err = ModelConfig::from_json_str(text).unwrap_err().to_string();
        assert!(
            err.contains("rope_scaling.rope_type") && err.contains("yarn"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_model_type_names_value() {
        let err = ModelConfig::from_json_str(r#"{"model_type":"gpt2"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model_type") && err.contains("gpt2"), "{err}");
    }
}

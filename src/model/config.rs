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
}

impl ModelType {
    /// The `model_type` string of config.json.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Qwen2 => "qwen2",
            ModelType::Mistral => "mistral",
        }
    }

    /// The transformers class name written to `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Mistral => "MistralForCausalLM",
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

/// A validated Llama-family architecture description.
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
    /// Mistral's sliding-window attention: a query sees at most this many keys (itself
    /// included). `None`: full causal attention.
    pub sliding_window: Option<usize>,
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
        let model_type = match raw.model_type.as_deref() {
            Some("llama") => ModelType::Llama,
            Some("qwen2") => ModelType::Qwen2,
            Some("mistral") => ModelType::Mistral,
            Some(other) => {
                return Err(ModelError::Unsupported {
                    key: "model_type".into(),
                    value: other.into(),
                    supported: "llama, qwen2, mistral".into(),
                })
            }
            None => {
                return Err(ModelError::Config {
                    key: "model_type".into(),
                    message: "missing".into(),
                })
            }
        };
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(ModelError::Unsupported {
                    key: "hidden_act".into(),
                    value: act.into(),
                    supported: "silu".into(),
                });
            }
        }
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

        // transformers 5 nests theta and scaling in rope_parameters; transformers 4 keeps
        // rope_theta at the top level and an optional rope_scaling object.
        let default_theta = 10_000.0;
        let rope = if let Some(params) = raw.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            let params = params.as_object().ok_or_else(|| ModelError::Config {
                key: "rope_parameters".into(),
                message: "not an object".into(),
            })?;
            let theta = params
                .get("rope_theta")
                .and_then(Value::as_f64)
                .or(raw.rope_theta)
                .unwrap_or(default_theta);
            RopeConfig {
                theta,
                scaling: parse_rope_scaling(params, "rope_parameters")?,
            }
        } else {
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
            RopeConfig {
                theta: raw.rope_theta.unwrap_or(default_theta),
                scaling,
            }
        };

        let sliding_window = match model_type {
            ModelType::Mistral => raw.sliding_window,
            // Qwen2 applies its window only to layers past max_window_layers; not modelled.
            ModelType::Qwen2 if raw.use_sliding_window == Some(true) => {
                return Err(ModelError::Unsupported {
                    key: "use_sliding_window".into(),
                    value: "true".into(),
                    supported: "false".into(),
                })
            }
            _ => None,
        };
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match model_type {
            // Qwen2Attention hardcodes bias=True on q/k/v and False on o_proj.
            ModelType::Qwen2 => (raw.attention_bias.unwrap_or(true), false),
            _ => (attention_bias, attention_bias),
        };
        let config = ModelConfig {
            model_type,
            vocab_size: required(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: required(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: required(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
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
        };
        Ok(config)
    }

    /// `[batch, seq, num_kv_heads * head_dim]` width of k and v projections.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Width of the q projection output.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
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

    /// A preset by the name the reference benchmark uses.
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "smol-135m" => Ok(Self::smol_135m()),
            "llama-1b" => Ok(Self::llama_1b()),
            other => Err(ModelError::Unsupported {
                key: "preset".into(),
                value: other.into(),
                supported: "tiny, smol-135m, llama-1b".into(),
            }),
        }
    }

    /// A config.json that both transformers 4 (`rope_theta`/`rope_scaling`) and
    /// transformers 5 (`rope_parameters`) read back to this config.
    pub fn to_hf_json(&self) -> Value {
        let mut rope_parameters = Map::new();
        rope_parameters.insert("rope_theta".into(), json!(self.rope.theta));
        let rope_scaling = match &self.rope.scaling {
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
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "rope_scaling": rope_scaling,
            "rope_parameters": Value::Object(rope_parameters),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "dtype": "float32",
            "torch_dtype": "float32",
        });
        if let Value::Object(map) = &mut out {
            if self.model_type != ModelType::Qwen2 {
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
            if self.model_type == ModelType::Mistral {
                map.insert("sliding_window".into(), json!(self.sliding_window));
            }
            if let Some(id) = self.pad_token_id {
                map.insert("pad_token_id".into(), json!(id));
            }
        }
        out
    }
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

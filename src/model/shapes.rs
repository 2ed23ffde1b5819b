//! The tensor shapes a config.json promises, checked against the weights before a
//! folder is registered, so that a config that disagrees with its weights (a
//! hand-edited `vocab_size`, a config copied from another size) is refused by
//! name, with the config key at fault, instead of failing at the first run.
//!
//! The table mirrors the one beside [`super::weights::build_model`]; a tensor
//! either side has and the other lacks fails registration of every fixture.

use super::config::ModelConfig;
use super::error::ModelError;
use super::tensor_files::TensorFiles;
use std::path::Path;

/// One dimension of an expected tensor, with the config key that sets it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dim {
    pub size: usize,
    pub key: &'static str,
}

/// A tensor the config says the weights hold.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedTensor {
    pub name: String,
    pub dims: Vec<Dim>,
}

impl ExpectedTensor {
    fn new(name: impl Into<String>, dims: &[Dim]) -> Self {
        ExpectedTensor {
            name: name.into(),
            dims: dims.to_vec(),
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|d| d.size).collect()
    }
}

/// Every base tensor of a model with `config`, in HF names and layout (`[out, in]`),
/// embedding first.
pub fn expected_tensors(config: &ModelConfig) -> Vec<ExpectedTensor> {
    let dim = |size, key| Dim { size, key };
    let vocab = dim(config.vocab_size, "vocab_size");
    let hidden = dim(config.hidden_size, "hidden_size");
    let q = dim(config.q_dim(), "num_attention_heads × head_dim");
    let kv = dim(config.kv_dim(), "num_key_value_heads × head_dim");
    let inter = dim(config.intermediate_size, "intermediate_size");
    let mut out = vec![ExpectedTensor::new(
        "model.embed_tokens.weight",
        &[vocab, hidden],
    )];
    let head_dim = dim(config.head_dim, "head_dim");
    let qkv = dim(
        config.q_dim() + 2 * config.kv_dim(),
        "(num_attention_heads + 2 × num_key_value_heads) × head_dim",
    );
    let gate_up = dim(2 * config.intermediate_size, "2 × intermediate_size");
    for i in 0..config.num_hidden_layers {
        let attn = format!("model.layers.{i}.self_attn");
        let mlp = format!("model.layers.{i}.mlp");
        let mut projections = if config.fused_projections {
            vec![(format!("{attn}.qkv_proj"), qkv, hidden, config.qkv_bias)]
        } else {
            vec![
                (format!("{attn}.q_proj"), q, hidden, config.qkv_bias),
                (format!("{attn}.k_proj"), kv, hidden, config.qkv_bias),
                (format!("{attn}.v_proj"), kv, hidden, config.qkv_bias),
            ]
        };
        projections.push((format!("{attn}.o_proj"), hidden, q, config.o_bias));
        if config.fused_projections {
            projections.push((
                format!("{mlp}.gate_up_proj"),
                gate_up,
                hidden,
                config.mlp_bias,
            ));
        } else {
            projections.push((format!("{mlp}.gate_proj"), inter, hidden, config.mlp_bias));
            projections.push((format!("{mlp}.up_proj"), inter, hidden, config.mlp_bias));
        }
        projections.push((format!("{mlp}.down_proj"), hidden, inter, config.mlp_bias));
        for (prefix, d_out, d_in, bias) in projections {
            out.push(ExpectedTensor::new(
                format!("{prefix}.weight"),
                &[d_out, d_in],
            ));
            if bias {
                out.push(ExpectedTensor::new(format!("{prefix}.bias"), &[d_out]));
            }
        }
        if config.qk_norm {
            for norm in ["q_norm", "k_norm"] {
                out.push(ExpectedTensor::new(
                    format!("{attn}.{norm}.weight"),
                    &[head_dim],
                ));
            }
        }
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if config.gemma_layout {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        for norm in norms {
            out.push(ExpectedTensor::new(
                format!("model.layers.{i}.{norm}.weight"),
                &[hidden],
            ));
        }
    }
    out.push(ExpectedTensor::new("model.norm.weight", &[hidden]));
    if !config.tie_word_embeddings {
        out.push(ExpectedTensor::new("lm_head.weight", &[vocab, hidden]));
    }
    out
}

/// Refuses weights that disagree with `config` (read from `config_path`): a shape
/// that differs names the key that sets the differing dimension; a missing tensor
/// or one the model has no place for is named too.
pub fn check_weights(
    config: &ModelConfig,
    tensors: &TensorFiles,
    config_path: &Path,
) -> Result<(), ModelError> {
    let expected = expected_tensors(config);
    for tensor in &expected {
        let Some(raw) = tensors.get(&tensor.name) else {
            return Err(ModelError::MissingTensor {
                name: tensor.name.clone(),
            });
        };
        // A weight in bitsandbytes' 4-bit layout is packed; its state says its shape.
        let shape = super::bnb::stated_shape(tensors, &tensor.name)?.unwrap_or(raw.shape.clone());
        if shape == tensor.shape() {
            continue;
        }
        // The first dimension that differs names the key; a tensor of another rank
        // is blamed on the key of its first dimension.
        let at_fault = tensor
            .dims
            .iter()
            .zip(&shape)
            .find(|(dim, actual)| dim.size != **actual)
            .map(|(dim, _)| *dim)
            .unwrap_or(tensor.dims[0]);
        return Err(ModelError::ConfigMismatch {
            path: config_path.to_path_buf(),
            key: at_fault.key.to_string(),
            value: at_fault.size,
            tensor: format!(
                "tensor `{}` has shape {:?}, where the config means {:?}",
                tensor.name,
                shape,
                tensor.shape()
            ),
        });
    }
    let tied_copy = |name: &str| config.tie_word_embeddings && name == "lm_head.weight";
    if let Some(name) = tensors.names().find(|name| {
        !super::weights::is_ignored_key(name)
            && !tied_copy(name)
            && !super::bnb::is_quant_state_key(name)
            && !expected.iter().any(|t| &t.name == *name)
    }) {
        return Err(ModelError::UnexpectedTensor {
            name: name.clone(),
            model_type: config.model_type.as_str().into(),
        });
    }
    Ok(())
}

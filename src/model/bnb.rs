//! Reading a folder saved in bitsandbytes' 4-bit layout (what transformers'
//! `save_pretrained` writes for a model loaded with `load_in_4bit`, and what the
//! published `*-bnb-4bit` checkpoints hold), keeping the codes as they are.
//!
//! For each quantized projection `P`, bitsandbytes' `Linear4bit` saves:
//!
//! | key | dtype, shape | holds |
//! |---|---|---|
//! | `P.weight` | U8 `[(n + 1) / 2, 1]` | the codes of the `[out, in]` weight read row-major, two a byte, the first in the high nibble |
//! | `P.weight.absmax` | U8 `[blocks]` (F32 without double quantization) | one scale a block |
//! | `P.weight.quant_map` | F32 `[16]` | the NF4 values |
//! | `P.weight.nested_absmax` | F32 `[ceil(blocks / 256)]` | double quantization: the absmax codes' scales |
//! | `P.weight.nested_quant_map` | F32 `[256]` | double quantization: the dynamic 8-bit map |
//! | `P.weight.quant_state.bitsandbytes__nf4` | U8 `[len]` | UTF-8 JSON: `quant_type`, `blocksize`, `dtype`, `shape`, and `nested_blocksize`, `nested_dtype`, `nested_offset` |
//!
//! (`QuantState.as_dict(packed=True)` and `Linear4bit._save_to_state_dict`.) config.json
//! carries `quantization_config` with `quant_method = "bitsandbytes"`, `load_in_4bit`
//! and `bnb_4bit_quant_type`. Embeddings, norms and `lm_head` stay in floats.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::error::ModelError;
use super::quantize::{BlockScales, QuantScheme, QuantizedHost};
use super::tensor_files::TensorFiles;

/// The tensors bitsandbytes saves beside a 4-bit `*.weight`, by suffix.
const COMPANIONS: [&str; 6] = [
    ".absmax",
    ".quant_map",
    ".nested_absmax",
    ".nested_quant_map",
    ".quant_state.bitsandbytes__nf4",
    ".quant_state.bitsandbytes__fp4",
];

/// Whether `name` is one of the quantization-state tensors beside a weight.
pub fn is_quant_state_key(name: &str) -> bool {
    COMPANIONS.iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|w| w.ends_with(".weight"))
    })
}

/// The non-tensor part of a quantization state (`quant_state.bitsandbytes__nf4`).
#[derive(Debug, Deserialize)]
struct PackedState {
    quant_type: String,
    blocksize: usize,
    shape: Vec<usize>,
    #[serde(default)]
    nested_blocksize: Option<usize>,
    #[serde(default)]
    nested_offset: Option<f64>,
}

fn packed_state(tensors: &TensorFiles, weight: &str) -> Result<Option<PackedState>, ModelError> {
    if tensors.contains(&format!("{weight}.quant_state.bitsandbytes__fp4")) {
        return Err(ModelError::Unsupported {
            key: format!("{weight}.quant_state"),
            value: "fp4".into(),
            supported: "bitsandbytes' nf4".into(),
        });
    }
    let key = format!("{weight}.quant_state.bitsandbytes__nf4");
    let Some(entry) = tensors.get(&key) else {
        return Ok(None);
    };
    let raw = entry.read()?;
    let state: PackedState =
        serde_json::from_slice(&raw.bytes).map_err(|e| ModelError::Invalid {
            message: format!("tensor `{key}`: not bitsandbytes' JSON quantization state: {e}"),
        })?;
    if state.quant_type != "nf4" {
        return Err(ModelError::Unsupported {
            key: format!("{key}: quant_type"),
            value: state.quant_type,
            supported: "nf4".into(),
        });
    }
    Ok(Some(state))
}

/// The shape a bitsandbytes state gives `weight` (`[out, in]`), where it has one.
pub fn stated_shape(tensors: &TensorFiles, weight: &str) -> Result<Option<Vec<usize>>, ModelError> {
    Ok(packed_state(tensors, weight)?.map(|state| state.shape))
}

/// Takes the 4-bit weight `weight` and its state out of `tensors`, as stored; `None`
/// where `weight` is not in bitsandbytes' layout. `shape` is the `[out, in]` the
/// model expects.
pub fn take_nf4(
    tensors: &mut TensorFiles,
    weight: &str,
    shape: [usize; 2],
) -> Result<Option<QuantizedHost>, ModelError> {
    let Some(state) = packed_state(tensors, weight)? else {
        return Ok(None);
    };
    if state.shape != shape {
        return Err(ModelError::Shape {
            name: format!("{weight} (bitsandbytes state)"),
            expected: shape.to_vec(),
            actual: state.shape,
        });
    }
    let mut take = |suffix: &str| {
        let name = format!("{weight}{suffix}");
        match tensors.take(&name)? {
            Some(raw) => Ok((name, raw)),
            None => Err(ModelError::MissingTensor { name }),
        }
    };
    let (_, _) = take(".quant_state.bitsandbytes__nf4")?;
    let (name, codes) = take("")?;
    let n = shape[0] * shape[1];
    if codes.dtype != "U8" || codes.bytes.len() != n.div_ceil(2) {
        return Err(ModelError::Invalid {
            message: format!(
                "tensor `{name}`: {} {:?}, where bitsandbytes stores {} codes as U8 [{}, 1] (quant_storage other than uint8 is not read)",
                codes.dtype,
                codes.shape,
                n,
                n.div_ceil(2)
            ),
        });
    }
    let (map_name, quant_map) = take(".quant_map")?;
    let (absmax_name, absmax) = take(".absmax")?;
    let scales = match state.nested_blocksize {
        Some(nested_block) => {
            let (nested_name, nested_absmax) = take(".nested_absmax")?;
            let (nested_map_name, nested_map) = take(".nested_quant_map")?;
            if absmax.dtype != "U8" {
                return Err(ModelError::Dtype {
                    name: absmax_name,
                    dtype: absmax.dtype,
                });
            }
            BlockScales::Double {
                codes: absmax.bytes,
                nested_absmax: nested_absmax.to_f32(&nested_name)?,
                nested_map: nested_map.to_f32(&nested_map_name)?,
                nested_block,
                offset: state.nested_offset.unwrap_or(0.0) as f32,
            }
        }
        None => BlockScales::Plain(absmax.to_f32(&absmax_name)?),
    };
    let host = QuantizedHost {
        scheme: QuantScheme::Nf4,
        shape,
        block: state.blocksize,
        codes: codes.bytes,
        table: quant_map.to_f32(&map_name)?,
        scales,
    };
    host.validate(weight)?;
    Ok(Some(host))
}

/// Whether the folder's config.json declares bitsandbytes' 4-bit NF4 weights; any
/// other `quantization_config` is refused, naming its key.
pub fn is_nf4_folder(dir: &Path) -> Result<bool, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let Some(quantization) = config.get("quantization_config").filter(|q| !q.is_null()) else {
        return Ok(false);
    };
    let text_of = |key: &str| quantization.get(key).and_then(Value::as_str).unwrap_or("");
    let method = text_of("quant_method");
    let four_bit = quantization
        .get("load_in_4bit")
        .or_else(|| quantization.get("_load_in_4bit"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let unsupported = |key: &str, value: &str| {
        ModelError::Unsupported {
        key: format!("{}: quantization_config.{key}", path.display()),
        value: value.into(),
        supported: "bitsandbytes 4-bit nf4 (quant_method = \"bitsandbytes\", load_in_4bit = true, bnb_4bit_quant_type = \"nf4\")".into(),
    }
    };
    if method != "bitsandbytes" {
        return Err(unsupported("quant_method", method));
    }
    if !four_bit {
        return Err(unsupported("load_in_4bit", "false"));
    }
    let kind = text_of("bnb_4bit_quant_type");
    if kind != "nf4" {
        return Err(unsupported("bnb_4bit_quant_type", kind));
    }
    Ok(true)
}

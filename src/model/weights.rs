//! Weights in Hugging Face layout: read `model.safetensors` (or the shards listed by
//! `model.safetensors.index.json`) in f32, bf16 or f16 into a [`CausalLm`], list the raw
//! tensors so the store can hash them, and write a model back out as an HF folder.
//!
//! A model loads one tensor at a time from its files ([`TensorFiles`]): each is read,
//! widened or quantized, and put on the device before the next is read, so the host
//! never holds the folder's bytes whole, nor (with a quantized base) a float copy of
//! a projection beside its codes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use safetensors::Dtype;
use serde_json::Value;

use super::bnb;
use super::config::ModelConfig;
use super::error::ModelError;
use super::llama::{
    attention_scale, Attention, CausalLm, DecoderLayer, Embedding, LlamaModel, Mlp, RmsNorm,
};
use super::lora::Linear;
use super::quantize::{
    quantize_int8_from, quantize_nf4_from, FloatValues, QuantScheme, QuantizedHost,
};
use super::quantized::QuantizedWeight;
use super::tensor_files::TensorFiles;

/// Files a model folder may carry besides weights and config; copied on export.
pub const TOKENIZER_FILES: [&str; 8] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

/// One tensor exactly as stored in a checkpoint file.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// safetensors dtype name: `F32`, `BF16`, `F16`, ...
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Little-endian bytes as in the file.
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// The values as f32 (bf16 and f16 widened exactly).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let floats = self.floats(name)?;
        let mut values = vec![0.0f32; floats.len()];
        // Widened in parallel slices: an embedding is hundreds of millions of values.
        const SLICE: usize = 1 << 16;
        values
            .par_chunks_mut(SLICE)
            .enumerate()
            .for_each(|(i, out)| floats.fill(i * SLICE, out));
        Ok(values)
    }

    /// The stored bytes read as floats, widened as they are read.
    pub fn floats(&self, name: &str) -> Result<StoredFloats<'_>, ModelError> {
        let kind = match self.dtype.as_str() {
            "F32" => FloatKind::F32,
            "BF16" => FloatKind::BF16,
            "F16" => FloatKind::F16,
            other => {
                return Err(ModelError::Dtype {
                    name: name.to_string(),
                    dtype: other.to_string(),
                })
            }
        };
        Ok(StoredFloats {
            kind,
            bytes: &self.bytes,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum FloatKind {
    F32,
    BF16,
    F16,
}

/// A tensor's little-endian f32, bf16 or f16 bytes, read as f32 values (exactly) a
/// slice at a time: what the quantizers read a projection from, so its float copy is
/// never made whole.
#[derive(Debug, Clone, Copy)]
pub struct StoredFloats<'a> {
    kind: FloatKind,
    bytes: &'a [u8],
}

impl FloatValues for StoredFloats<'_> {
    fn len(&self) -> usize {
        match self.kind {
            FloatKind::F32 => self.bytes.len() / 4,
            FloatKind::BF16 | FloatKind::F16 => self.bytes.len() / 2,
        }
    }

    fn fill(&self, start: usize, out: &mut [f32]) {
        match self.kind {
            FloatKind::F32 => {
                let bytes = &self.bytes[start * 4..(start + out.len()) * 4];
                for (value, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            FloatKind::BF16 => {
                let bytes = &self.bytes[start * 2..(start + out.len()) * 2];
                for (value, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *value = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            FloatKind::F16 => {
                let bytes = &self.bytes[start * 2..(start + out.len()) * 2];
                for (value, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *value = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }
}

/// The safetensors files of a folder: the shards named by the index, else
/// `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let text =
            std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
        let index: Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: index_path.clone(),
            message: e.to_string(),
        })?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::Json {
                path: index_path.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        Ok(vec![single])
    } else {
        Err(ModelError::io(
            single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json",
            ),
        ))
    }
}

/// Every tensor of one safetensors file, by name, read into memory.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, RawTensor>, ModelError> {
    TensorFiles::open_file(path)?.read_all()
}

/// All base tensors of a model folder, as stored (name -> dtype, shape, bytes), read
/// into memory. Shards are merged; a name in two shards is an error. (A large folder
/// is better read a tensor at a time: [`TensorFiles`].)
pub fn read_raw_tensors(dir: &Path) -> Result<BTreeMap<String, RawTensor>, ModelError> {
    TensorFiles::open(dir)?.read_all()
}

/// Checkpoint keys that carry no weights of ours and are skipped on load: buffers older
/// transformers versions saved.
pub(crate) fn is_ignored_key(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// How far a model load has come: `(bytes of its weight files read, bytes in all)`.
pub type LoadProgress<'a> = &'a mut dyn FnMut(u64, u64);

/// Where a model load's time went (what `graft train` reports once the base is
/// loaded, and the load benchmark splits).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadTimes {
    /// Bytes of the weight files read.
    pub bytes: u64,
    /// Reading tensors from their files.
    pub read: Duration,
    /// Widening to f32 (and transposing), or quantizing.
    pub convert: Duration,
    /// Making the device tensors from the host values.
    pub device: Duration,
}

/// Runs `work`, adding its time to `slot`.
fn timed<T>(slot: &mut Duration, work: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let result = work();
    *slot += start.elapsed();
    result
}

/// Takes tensors out of a checkpoint by HF name, checking shapes, so that whatever is
/// left at the end is an unexpected tensor.
struct Checkpoint<'a, B: Backend> {
    tensors: TensorFiles,
    device: &'a B::Device,
    /// How the seven decoder projections are stored (`None`: in floats).
    quantize: Option<QuantScheme>,
    /// The bytes of all tensors at the start, and where to say how many are read.
    total_bytes: u64,
    progress: LoadProgress<'a>,
    times: LoadTimes,
}

impl<B: Backend> Checkpoint<'_, B> {
    /// Takes `name` out and reads it, its shape checked before its bytes are read.
    fn take_raw(&mut self, name: &str, expected: &[usize]) -> Result<RawTensor, ModelError> {
        let entry = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        if entry.shape != expected {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: expected.to_vec(),
                actual: entry.shape,
            });
        }
        let raw = timed(&mut self.times.read, || entry.read())?;
        self.report();
        Ok(raw)
    }

    fn take(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let raw = self.take_raw(name, expected)?;
        timed(&mut self.times.convert, || raw.to_f32(name))
    }

    /// A device tensor of host `values`.
    fn upload<const D: usize>(&mut self, values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
        let device = self.device;
        timed(&mut self.times.device, || {
            Tensor::from_data(TensorData::new(values, shape), device)
        })
    }

    /// Says how many bytes have been taken so far.
    fn report(&mut self) {
        let left = self.tensors.byte_len();
        (self.progress)(self.total_bytes.saturating_sub(left), self.total_bytes);
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>, ModelError> {
        let values = self.take(name, &[len])?;
        Ok(self.upload(values, [len]))
    }

    /// HF `[out, in]` -> burn `[in, out]`, transposed on the host so the device tensor
    /// is contiguous in the layout matmul wants.
    fn projection(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, ModelError> {
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), d_out)?)
        } else {
            None
        };
        let name = format!("{prefix}.weight");
        // A weight saved by bitsandbytes goes to the device as stored.
        let stored = timed(&mut self.times.read, || {
            bnb::take_nf4(&mut self.tensors, &name, [d_out, d_in])
        })?;
        if let Some(host) = stored {
            self.report();
            if self.quantize == Some(QuantScheme::Int8) {
                return Err(ModelError::Config {
                    key: "compute.base".into(),
                    message: format!("`{name}` is stored in bitsandbytes' 4-bit NF4 layout, which graft does not convert to int8: set compute.base = \"nf4\""),
                });
            }
            return Ok(Linear::quantized(self.upload_quantized(&host), bias));
        }
        let raw = self.take_raw(&name, &[d_out, d_in])?;
        let floats = raw.floats(&name)?;
        // Quantized straight from the stored bytes, a block at a time.
        let quantized = timed(&mut self.times.convert, || match self.quantize {
            None => None,
            Some(QuantScheme::Nf4) => Some(quantize_nf4_from(&floats, [d_out, d_in])),
            Some(QuantScheme::Int8) => Some(quantize_int8_from(&floats, [d_out, d_in])),
        });
        if let Some(host) = quantized {
            drop(raw);
            return Ok(Linear::quantized(self.upload_quantized(&host), bias));
        }
        let transposed = timed(&mut self.times.convert, || transpose(&floats, d_out, d_in));
        drop(raw);
        Ok(Linear::new(self.upload(transposed, [d_in, d_out]), bias))
    }

    fn upload_quantized(&mut self, host: &QuantizedHost) -> QuantizedWeight<B> {
        let device = self.device;
        timed(&mut self.times.device, || {
            QuantizedWeight::from_host(host, device)
        })
    }

    fn norm(
        &mut self,
        name: &str,
        len: usize,
        config: &ModelConfig,
    ) -> Result<RmsNorm<B>, ModelError> {
        Ok(RmsNorm {
            weight: Param::from_tensor(self.vector(name, len)?),
            eps: config.rms_norm_eps,
            plus_one: config.gemma_layout,
        })
    }
}

/// `[rows, cols]` row-major -> `[cols, rows]` row-major. In tiles of 32 x 32, so that
/// reads and writes both stay in cache (element by element, the writes stride by
/// `rows` floats and a large model's projections take many seconds), each task
/// writing 32 whole output rows. Values are read through [`FloatValues`], so a stored bf16 weight is widened as it
/// is transposed, with no f32 copy in its own layout.
pub fn transpose<V: FloatValues + ?Sized>(values: &V, rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; values.len()];
    if values.is_empty() {
        return out;
    }
    out.par_chunks_mut(TILE * rows).enumerate().for_each_init(
        || [0.0f32; TILE],
        |row, (tile, out_rows)| {
            let first_col = tile * TILE;
            let width = out_rows.len() / rows;
            for first_row in (0..rows).step_by(TILE) {
                for r in first_row..(first_row + TILE).min(rows) {
                    values.fill(r * cols + first_col, &mut row[..width]);
                    for (c, &value) in row[..width].iter().enumerate() {
                        out_rows[c * rows + r] = value;
                    }
                }
            }
        },
    );
    out
}

/// Builds a model from HF-named tensors.
///
/// The name table (HF key -> burn module, layout). Module fields carry HF names, so the
/// burn path equals the key; what differs is layout:
///
/// | HF key                                          | HF shape              | burn                        |
/// |-------------------------------------------------|-----------------------|-----------------------------|
/// | `model.embed_tokens.weight`                     | `[vocab, hidden]`     | same                        |
/// | `model.layers.{i}.input_layernorm.weight`       | `[hidden]`            | same                        |
/// | `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` | `[out, in]`        | `[in, out]` (transposed)    |
/// | `model.layers.{i}.self_attn.{q,k,v}_proj.bias`  | `[out]` (Qwen2, or `attention_bias`) | same         |
/// | `model.layers.{i}.self_attn.o_proj.bias`        | `[hidden]` (`attention_bias`, not Qwen2) | same     |
/// | `model.layers.{i}.self_attn.qkv_proj.weight`    | `[q + 2 kv, hidden]` (Phi-3, instead of q/k/v) | `[in, out]` |
/// | `model.layers.{i}.self_attn.{q,k}_norm.weight`  | `[head_dim]` (Qwen3, Gemma 3) | same                |
/// | `model.layers.{i}.post_attention_layernorm.weight` | `[hidden]`         | same                        |
/// | `model.layers.{i}.{pre,post}_feedforward_layernorm.weight` | `[hidden]` (Gemma) | same              |
/// | `model.layers.{i}.mlp.{gate,up,down}_proj.weight` | `[out, in]`         | `[in, out]` (transposed)    |
/// | `model.layers.{i}.mlp.gate_up_proj.weight`      | `[2 inter, hidden]` (Phi-3, instead of gate/up) | `[in, out]` |
/// | `model.layers.{i}.mlp.{gate,up,down}_proj.bias` | `[out]` (`mlp_bias`)  | same                        |
/// | `model.norm.weight`                             | `[hidden]`            | same                        |
/// | `lm_head.weight`                                | `[vocab, hidden]`     | `[hidden, vocab]`; absent and unused when `tie_word_embeddings` |
/// | `model.layers.{i}.self_attn.rotary_emb.inv_freq` | buffer               | ignored (recomputed)        |
///
/// Gemma's norm weights are stored as the offset from one (`(1 + w)`); they load as
/// stored and the norm adds the one.
///
/// With `quantize`, the seven decoder projections (q/k/v/o, gate/up/down, or Phi-3's
/// fused ones) are quantized on the host as they are read, and only their codes and
/// scales reach the device; embeddings, norms and `lm_head` stay in floats. A
/// projection saved in bitsandbytes' 4-bit layout ([`super::bnb`]) is kept as stored
/// whatever `quantize` says, except that int8 refuses it.
pub fn build_model<B: Backend>(
    config: &ModelConfig,
    tensors: impl Into<TensorFiles>,
    device: &B::Device,
    quantize: Option<QuantScheme>,
) -> Result<CausalLm<B>, ModelError> {
    build_model_reporting(config, tensors.into(), device, quantize, &mut |_, _| {})
        .map(|(model, _)| model)
}

/// [`build_model`], saying through `progress` how many of the tensors' bytes have
/// been read, and where the time went.
pub fn build_model_reporting<B: Backend>(
    config: &ModelConfig,
    tensors: TensorFiles,
    device: &B::Device,
    quantize: Option<QuantScheme>,
    progress: LoadProgress<'_>,
) -> Result<(CausalLm<B>, LoadTimes), ModelError> {
    let total_bytes = tensors.byte_len();
    let mut ckpt = Checkpoint::<B> {
        total_bytes,
        tensors,
        device,
        quantize,
        progress,
        times: LoadTimes {
            bytes: total_bytes,
            ..LoadTimes::default()
        },
    };
    let h = config.hidden_size;
    let embed = ckpt.take("model.embed_tokens.weight", &[config.vocab_size, h])?;
    let embed_tokens = Embedding {
        weight: Param::from_tensor(ckpt.upload(embed, [config.vocab_size, h])),
    };
    let separate = !config.fused_projections;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let attn = format!("{p}.self_attn");
        let mlp = format!("{p}.mlp");
        let (q, kv, inter) = (config.q_dim(), config.kv_dim(), config.intermediate_size);
        let mut separate_projection = |name: String, d_in, d_out, bias| {
            separate
                .then(|| ckpt.projection(&name, d_in, d_out, bias))
                .transpose()
        };
        let q_proj = separate_projection(format!("{attn}.q_proj"), h, q, config.qkv_bias)?;
        let k_proj = separate_projection(format!("{attn}.k_proj"), h, kv, config.qkv_bias)?;
        let v_proj = separate_projection(format!("{attn}.v_proj"), h, kv, config.qkv_bias)?;
        let gate_proj = separate_projection(format!("{mlp}.gate_proj"), h, inter, config.mlp_bias)?;
        let up_proj = separate_projection(format!("{mlp}.up_proj"), h, inter, config.mlp_bias)?;
        let fused = config.fused_projections;
        let qkv_proj = fused
            .then(|| ckpt.projection(&format!("{attn}.qkv_proj"), h, q + 2 * kv, config.qkv_bias))
            .transpose()?;
        let gate_up_proj = fused
            .then(|| {
                ckpt.projection(
                    &format!("{mlp}.gate_up_proj"),
                    h,
                    2 * inter,
                    config.mlp_bias,
                )
            })
            .transpose()?;
        let qk_norm = config.qk_norm;
        let q_norm = qk_norm
            .then(|| ckpt.norm(&format!("{attn}.q_norm.weight"), config.head_dim, config))
            .transpose()?;
        let k_norm = qk_norm
            .then(|| ckpt.norm(&format!("{attn}.k_norm.weight"), config.head_dim, config))
            .transpose()?;
        let gemma = config.gemma_layout;
        let pre_feedforward_layernorm = gemma
            .then(|| ckpt.norm(&format!("{p}.pre_feedforward_layernorm.weight"), h, config))
            .transpose()?;
        let post_feedforward_layernorm = gemma
            .then(|| ckpt.norm(&format!("{p}.post_feedforward_layernorm.weight"), h, config))
            .transpose()?;
        layers.push(DecoderLayer {
            self_attn: Attention {
                q_proj,
                k_proj,
                v_proj,
                o_proj: ckpt.projection(&format!("{attn}.o_proj"), q, h, config.o_bias)?,
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim,
                sliding_window: config.layer_window(i),
                qkv_proj,
                q_norm,
                k_norm,
                scale: attention_scale(config),
                softcap: config.attn_logit_softcapping,
            },
            mlp: Mlp {
                gate_proj,
                up_proj,
                down_proj: ckpt.projection(
                    &format!("{mlp}.down_proj"),
                    inter,
                    h,
                    config.mlp_bias,
                )?,
                gate_up_proj,
                act: config.hidden_act,
            },
            input_layernorm: ckpt.norm(&format!("{p}.input_layernorm.weight"), h, config)?,
            post_attention_layernorm: ckpt.norm(
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                config,
            )?,
            pre_feedforward_layernorm,
            post_feedforward_layernorm,
        });
    }
    let norm = ckpt.norm("model.norm.weight", h, config)?;
    let lm_head = if config.tie_word_embeddings {
        // Some tied checkpoints still store a copy of the embedding as lm_head; the
        // tie decides, so the copy is dropped.
        ckpt.tensors.remove("lm_head.weight");
        None
    } else {
        // The head stays in floats: it is a small part of a large model and the part
        // whose rounding every logit sees.
        ckpt.quantize = None;
        Some(ckpt.projection("lm_head", h, config.vocab_size, false)?)
    };
    if let Some(name) = ckpt.tensors.names().find(|name| !is_ignored_key(name)) {
        return Err(ModelError::UnexpectedTensor {
            name: name.clone(),
            model_type: config.model_type.as_str().into(),
        });
    }
    let model = CausalLm {
        model: LlamaModel {
            embed_tokens,
            layers,
            norm,
        },
        lm_head,
        config: config.clone(),
        lora: None,
    };
    Ok((model, ckpt.times))
}

/// Loads config.json and the weights of an HF folder as stored (a bitsandbytes 4-bit
/// folder keeps its NF4 codes).
pub fn load_model_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<CausalLm<B>, ModelError> {
    load_model_dir_as(dir, device, None)
}

/// [`load_model_dir`] with the decoder projections quantized as `quantize` says (see
/// [`build_model`]).
pub fn load_model_dir_as<B: Backend>(
    dir: &Path,
    device: &B::Device,
    quantize: Option<QuantScheme>,
) -> Result<CausalLm<B>, ModelError> {
    load_model_dir_reporting(dir, device, quantize, &mut |_, _| {}).map(|(model, _)| model)
}

/// [`load_model_dir_as`], saying through `progress` how many bytes of the folder's
/// weight files have been read (one tensor at a time: see [`TensorFiles`]), and
/// where the time went.
pub fn load_model_dir_reporting<B: Backend>(
    dir: &Path,
    device: &B::Device,
    quantize: Option<QuantScheme>,
    progress: LoadProgress<'_>,
) -> Result<(CausalLm<B>, LoadTimes), ModelError> {
    let config = ModelConfig::from_dir(dir)?;
    // Refuses a quantization graft does not read (8-bit, FP4, GPTQ...), naming the key.
    bnb::is_nf4_folder(dir)?;
    let tensors = TensorFiles::open(dir)?;
    build_model_reporting(&config, tensors, device, quantize, progress)
}

/// How [`write_safetensors`] stores floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    BF16,
}

/// Writes HF-layout tensors to one safetensors file with the `format: pt` metadata
/// transformers expects.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, TensorData)],
    dtype: SaveDtype,
) -> Result<(), ModelError> {
    write_safetensors_noted(path, tensors, dtype, &[])
}

/// [`write_safetensors`] with more `(key, value)` pairs in the file's metadata.
pub fn write_safetensors_noted(
    path: &Path,
    tensors: &[(String, TensorData)],
    dtype: SaveDtype,
    notes: &[(&str, String)],
) -> Result<(), ModelError> {
    let mut encoded: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let values = data
            .clone()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Invalid {
                message: format!("tensor `{name}`: {e:?}"),
            })?;
        let bytes: Vec<u8> = match dtype {
            SaveDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            SaveDtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        encoded.push((name.clone(), data.shape.to_vec(), bytes));
    }
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::BF16 => Dtype::BF16,
    };
    let mut views = Vec::with_capacity(encoded.len());
    for (name, shape, bytes) in &encoded {
        let view =
            safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes).map_err(|e| {
                ModelError::Safetensors {
                    path: path.to_path_buf(),
                    message: format!("tensor `{name}`: {e}"),
                }
            })?;
        views.push((name.clone(), view));
    }
    let mut metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    metadata.extend(notes.iter().map(|(k, v)| (k.to_string(), v.clone())));
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| {
        ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// Writes `model` as an HF folder: config.json (the source folder's, with dtype set to
/// float32, so keys we do not model survive; else generated), model.safetensors in f32,
/// and the tokenizer files of `source_dir`.
pub fn save_model_dir<B: Backend>(
    model: &CausalLm<B>,
    out_dir: &Path,
    source_dir: Option<&Path>,
) -> Result<(), ModelError> {
    save_model_dir_noted(model, out_dir, source_dir, &[])
}

/// [`save_model_dir`] with `notes` in the weights file's metadata.
pub fn save_model_dir_noted<B: Backend>(
    model: &CausalLm<B>,
    out_dir: &Path,
    source_dir: Option<&Path>,
    notes: &[(&str, String)],
) -> Result<(), ModelError> {
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::io(out_dir, e))?;
    let mut config = match source_dir
        .map(|d| d.join("config.json"))
        .filter(|p| p.exists())
    {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
            serde_json::from_str(&text).map_err(|e| ModelError::Json {
                path,
                message: e.to_string(),
            })?
        }
        None => model.config.to_hf_json(),
    };
    // The weights are written in f32 whatever the source stored; transformers 5 reads
    // `dtype`, transformers 4 `torch_dtype` (kept only where the source had it).
    if let Value::Object(map) = &mut config {
        // A merged model is floats even where its source folder was 4-bit.
        map.remove("quantization_config");
        map.insert("dtype".into(), Value::String("float32".into()));
        if map.contains_key("torch_dtype") {
            map.insert("torch_dtype".into(), Value::String("float32".into()));
        }
    }
    let config_path = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Json {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&config_path, text).map_err(|e| ModelError::io(&config_path, e))?;

    let tensors = model.named_tensors(|p| !p.is_lora);
    write_safetensors_noted(
        &out_dir.join("model.safetensors"),
        &tensors,
        SaveDtype::F32,
        notes,
    )?;
    if let Some(source) = source_dir {
        copy_tokenizer_files(source, out_dir)?;
    }
    Ok(())
}

/// Copies whichever tokenizer and generation files exist in `from`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<(), ModelError> {
    for file in TOKENIZER_FILES {
        let source = from.join(file);
        if source.exists() {
            std::fs::copy(&source, to.join(file)).map_err(|e| ModelError::io(&source, e))?;
        }
    }
    Ok(())
}

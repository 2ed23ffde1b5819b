//! GGUF export: a model (its adapter merged) as one file for llama.cpp and the
//! tools built on it (Ollama, LM Studio), with the tokenizer and chat template
//! in the file's metadata.
//!
//! [`layout`] says how llama.cpp expects each family, [`vocab`] turns the
//! tokenizer files into metadata, [`quant`] picks and encodes each tensor's
//! type, and [`writer`] lays out the container. The file is written under a
//! temporary name beside the target and renamed into place when complete, so
//! a failed or interrupted export leaves no partial `.gguf` behind; an existing
//! target is never replaced.

pub mod layout;
pub mod quant;
pub mod sentencepiece;
pub mod vocab;
pub mod writer;

use std::io::{BufWriter, Write};
use std::path::Path;

use burn::tensor::backend::Backend;

use super::error::ModelError;
use super::llama::CausalLm;
use super::params::hf_data_of;
use layout::{architecture, map_tensor, Change};
pub use quant::{Quantization, TensorType};
use writer::{MetaValue, TensorHeader};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufSummary {
    pub architecture: &'static str,
    /// Each tensor's GGUF name and type, in file order.
    pub tensors: Vec<(String, TensorType)>,
    pub bytes: u64,
    /// What llama.cpp will run differently from graft (said, not refused).
    pub caveats: Vec<String>,
}

/// Progress of an export: called after each tensor with (done, total, name).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// One tensor on its way out: where its values come from and what it becomes.
struct Planned {
    header: TensorHeader,
    kind: TensorType,
    source: Source,
}

enum Source {
    /// The model parameter at this index of `params_with_values`, changed so.
    Param(usize, Change),
    /// Values that are not a model parameter (Llama 3's RoPE factors).
    Generated(Vec<f32>),
}

/// Writes `model` (with any LoRA merged into the weights) to `out` as GGUF v3,
/// with the tokenizer and chat template of the model folder `source_dir`.
/// Refuses an existing `out` unless `replace`.
pub fn export_gguf<B: Backend>(
    model: CausalLm<B>,
    source_dir: &Path,
    out: &Path,
    quant: Quantization,
    name: &str,
    replace: bool,
    progress: Progress<'_>,
) -> Result<GgufSummary, ModelError> {
    if out.exists() && !replace {
        return Err(ModelError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists; a GGUF export replaces a file only when told to",
            ),
        ));
    }
    let config = model.config.clone();
    layout::check_supported(&config)?;
    let model = model.merge_lora();
    let mut metadata = general_metadata(&config, quant, name);
    metadata.extend(layout::hyperparameters(&config));
    metadata.extend(vocab::tokenizer_metadata(source_dir, &config)?);

    let layers = config.num_hidden_layers;
    let params: Vec<_> = model
        .params_with_values()
        .into_iter()
        .filter(|(info, _)| !info.is_lora)
        .collect();
    let mut planned = Vec::with_capacity(params.len() + 1);
    if let Some(factors) = layout::rope_factors(&config) {
        planned.push(Planned {
            header: TensorHeader {
                name: "rope_freqs.weight".into(),
                shape: vec![factors.len()],
                ggml_type: TensorType::F32.code(),
                byte_len: TensorType::F32.byte_len(factors.len()),
            },
            kind: TensorType::F32,
            source: Source::Generated(factors),
        });
    }
    for (index, (info, _)) in params.iter().enumerate() {
        let mapped = map_tensor(&config, &info.name, info.shape.len())?;
        let row_len = *info.shape.last().unwrap_or(&1);
        let kind = quant::tensor_type(quant, mapped.role, row_len, layers);
        let elements = info.shape.iter().product();
        planned.push(Planned {
            header: TensorHeader {
                name: mapped.name,
                shape: info.shape.clone(),
                ggml_type: kind.code(),
                byte_len: kind.byte_len(elements),
            },
            kind,
            source: Source::Param(index, mapped.change),
        });
    }

    let dir = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".graft-export-")
        .suffix(".gguf.partial")
        .tempfile_in(dir)
        .map_err(|e| ModelError::io(dir, e))?;
    let io_error = |e: std::io::Error| ModelError::io(temp.path(), e);
    let mut file = BufWriter::new(temp.as_file());
    let headers: Vec<TensorHeader> = planned.iter().map(|p| p.header.clone()).collect();
    writer::write_header(&mut file, &metadata, &headers).map_err(io_error)?;
    let total = planned.len();
    let mut written_types = Vec::with_capacity(total);
    for (done, plan) in planned.into_iter().enumerate() {
        let values = match plan.source {
            Source::Generated(values) => values,
            Source::Param(index, change) => {
                let (info, value) = &params[index];
                let data = hf_data_of(info, value.clone());
                let values =
                    data.convert::<f32>()
                        .into_vec::<f32>()
                        .map_err(|e| ModelError::Invalid {
                            message: format!("tensor `{}`: {e:?}", info.name),
                        })?;
                change.apply(values, &plan.header.shape)
            }
        };
        let kind = plan.kind;
        let encoded = quant::encode(&values, &plan.header.shape, kind)?;
        debug_assert_eq!(encoded.len() as u64, plan.header.byte_len);
        writer::write_tensor_data(&mut file, &encoded).map_err(io_error)?;
        written_types.push((plan.header.name.clone(), kind));
        progress(done + 1, total, &plan.header.name);
    }
    file.flush().map_err(io_error)?;
    drop(file);
    temp.as_file().sync_all().map_err(io_error)?;
    let bytes = temp.as_file().metadata().map_err(io_error)?.len();
    // Without `replace`, the rename fails rather than replace a file that
    // appeared at `out` while the export ran.
    let persisted = if replace {
        temp.persist(out)
    } else {
        temp.persist_noclobber(out)
    };
    persisted.map_err(|e| ModelError::io(out, e.error))?;
    Ok(GgufSummary {
        architecture: architecture(config.model_type),
        tensors: written_types,
        bytes,
        caveats: layout::caveats(&config),
    })
}

/// `general.*`: architecture, name, file type, quantization version, alignment.
fn general_metadata(
    config: &super::config::ModelConfig,
    quant: Quantization,
    name: &str,
) -> Vec<(String, MetaValue)> {
    vec![
        (
            "general.architecture".into(),
            MetaValue::String(architecture(config.model_type).into()),
        ),
        ("general.type".into(), MetaValue::String("model".into())),
        ("general.name".into(), MetaValue::String(name.into())),
        (
            "general.file_type".into(),
            MetaValue::U32(quant.file_type()),
        ),
        // The k-quant block layouts of ggml's current quantization version.
        ("general.quantization_version".into(), MetaValue::U32(2)),
        (
            "general.alignment".into(),
            MetaValue::U32(writer::ALIGNMENT as u32),
        ),
    ]
}

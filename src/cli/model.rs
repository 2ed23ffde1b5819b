//! `graft model add|ls|parity`: base models.

use super::backend::{BackendKind, Dtype};
use super::{output, CliError, CliResult, Context};
use crate::model::{run_parity, Tolerance};
use crate::train::registry::{self, RegistryError};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ModelCommand {
    /// Register a Hugging Face model folder (config.json, safetensors, tokenizer.json).
    Add {
        /// The model folder, or a Hugging Face model id (`org/name`, `org/name@revision`)
        /// found in the local cache (HF_HUB_CACHE, else HF_HOME/hub, else
        /// ~/.cache/huggingface/hub; nothing is downloaded).
        dir: PathBuf,
        /// Copy the tensors into the store instead of referencing the folder.
        #[arg(long)]
        copy: bool,
        /// Also tag the model with this name.
        #[arg(long)]
        tag: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a randomly initialised Llama model folder, for pretraining from
    /// scratch (the quickstart's base model starts here).
    Init {
        /// The folder to write.
        out: PathBuf,
        /// A folder holding the tokenizer.json to use (its size sets the vocabulary).
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long, default_value_t = 64)]
        hidden: usize,
        #[arg(long, default_value_t = 2)]
        layers: usize,
        #[arg(long, default_value_t = 4)]
        heads: usize,
        #[arg(long, default_value_t = 2)]
        kv_heads: usize,
        #[arg(long, default_value_t = 192)]
        intermediate: usize,
        #[arg(long, default_value_t = 256)]
        positions: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// List registered models.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the model on a reference batch (REFERENCE.json: input_ids, logits,
    /// loss, with_lora) and report the max relative error of the logits and the
    /// loss difference; with a `lora-adapter/` folder beside, the same with the
    /// adapter and its gradients. Exits 1 past tolerance.
    Parity {
        /// The model folder.
        dir: PathBuf,
        /// The reference outputs.
        reference: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        backend: BackendKind,
        /// Tolerances for weights stored in bf16.
        #[arg(long)]
        bf16: bool,
        /// Compute dtype: bf16 runs the model in bf16 (with `--backend cuda`, the
        /// training path's dtype) and compares at bf16 tolerance.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl From<RegistryError> for CliError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(e) => e.into(),
            other => CliError::user(other.to_string()),
        }
    }
}

impl From<crate::model::ModelError> for CliError {
    fn from(e: crate::model::ModelError) -> Self {
        CliError::user(e.to_string())
    }
}

pub fn run(args: Args, context: &Context) -> CliResult {
    match args.command {
        ModelCommand::Add {
            dir,
            copy,
            tag,
            json,
        } => {
            if let Some(tag) = &tag {
                crate::store::refs::validate_tag_name(tag)?;
            }
            let store = context.store_or_init()?;
            let (dir, cached) = registry::model_add_folder(&dir)?;
            let record = registry::register_model(&store, &dir, copy)?;
            if let Some(tag) = &tag {
                let index = store.index()?;
                index.set_tag(tag, crate::store::Target::Model(record.id))?;
                index.flush()?;
            }
            if json {
                return output::print_json(&serde_json::to_value(&record).unwrap_or_default());
            }
            let source = match &cached {
                Some(cached) => format!(
                    "{} (Hugging Face cache, revision {})",
                    record.path, cached.revision
                ),
                None => record.path.clone(),
            };
            output::println_safe(&format!(
                "model {} registered from {} ({} tensors{})",
                record.id,
                source,
                record.tensors.len(),
                if record.copied {
                    ", copied"
                } else {
                    ", referenced in place"
                }
            ));
            Ok(())
        }
        ModelCommand::Init {
            out,
            tokenizer,
            hidden,
            layers,
            heads,
            kv_heads,
            intermediate,
            positions,
            seed,
        } => {
            let tokenizer_file = tokenizer.join("tokenizer.json");
            let vocab = crate::data::Tokenizer::from_dir(&tokenizer)?.vocab_size();
            let config = crate::model::ModelConfig::from_json_str(
                &serde_json::json!({
                    "model_type": "llama",
                    "vocab_size": vocab,
                    "hidden_size": hidden,
                    "intermediate_size": intermediate,
                    "num_hidden_layers": layers,
                    "num_attention_heads": heads,
                    "num_key_value_heads": kv_heads,
                    "max_position_embeddings": positions,
                    "rms_norm_eps": 1e-5,
                    "rope_theta": 10000.0,
                    "tie_word_embeddings": false,
                })
                .to_string(),
            )?;
            if !tokenizer_file.is_file() {
                return Err(CliError::user(format!(
                    "{}: missing",
                    tokenizer_file.display()
                )));
            }
            let device = Default::default();
            <crate::model::CpuBackend as burn::tensor::backend::Backend>::seed(&device, seed);
            let model =
                crate::model::CausalLm::<crate::model::CpuBackend>::random(&config, &device);
            crate::model::save_model_dir(&model, &out, None)?;
            crate::model::weights::copy_tokenizer_files(&tokenizer, &out)?;
            output::println_safe(&format!("wrote a random {layers}-layer, {hidden}-wide Llama with a {vocab}-token vocabulary to {}", out.display()));
            Ok(())
        }
        ModelCommand::Ls { json } => {
            let store = context.store()?;
            let index = store.index()?;
            let models = registry::list_models(&index)?;
            let tags = crate::lineage::tags_by_target(&index)?;
            if json {
                return output::print_json(&serde_json::to_value(&models).unwrap_or_default());
            }
            let rows: Vec<Vec<String>> = models
                .iter()
                .map(|m| {
                    vec![
                        m.id.short(),
                        tags.get(&m.id).map(|t| t.join(",")).unwrap_or_default(),
                        m.summary
                            .get("model_type")
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                        m.summary
                            .get("parameters")
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                        m.path.clone(),
                    ]
                })
                .collect();
            output::println_safe(&output::table(
                &["model", "tag", "type", "parameters", "path"],
                &rows,
            ));
            Ok(())
        }
        ModelCommand::Parity {
            dir,
            reference,
            backend,
            bf16,
            dtype,
            json,
        } => {
            let tolerance = if bf16 || dtype == Dtype::Bf16 {
                Tolerance::bf16()
            } else {
                Tolerance::default()
            };
            let compute = crate::compute::Compute::new(
                backend,
                crate::compute::ComputeSection {
                    dtype,
                    ..Default::default()
                },
            );
            let report: crate::model::ParityReport =
                crate::on_compute!(compute, parity(&dir, &reference, tolerance))?;
            if json {
                output::print_json(&serde_json::to_value(&report).unwrap_or_default())?;
            } else {
                let line = |name: &str, c: &crate::model::parity::Comparison| {
                    format!(
                        "{name:<10} logits max rel err {:.3e} (tolerance {:.0e})  loss {:.6} vs {:.6} (diff {:.3e}, tolerance {:.0e})",
                        c.logits_rel_err, tolerance.logits_rel, c.loss, c.reference_loss, c.loss_abs_diff, tolerance.loss_abs
                    )
                };
                output::println_safe(&line("base", &report.base));
                if let Some(lora) = &report.with_lora {
                    output::println_safe(&line("with_lora", lora));
                }
                if let Some(grads) = &report.lora_grads {
                    output::println_safe(&format!(
                        "lora grads max rel err {:.3e} over {} tensors (worst {}; tolerance {:.0e})",
                        grads.max_rel_err, grads.tensors, grads.worst_tensor, tolerance.grad_rel
                    ));
                }
            }
            if report.passes() {
                Ok(())
            } else {
                Err(CliError::check(format!(
                    "{}: parity outside tolerance",
                    dir.display()
                )))
            }
        }
    }
}

fn parity<B: crate::compute::kernels::TrainKernels>(
    device: &B::Device,
    dir: &Path,
    reference: &Path,
    tolerance: Tolerance,
) -> CliResult<crate::model::ParityReport> {
    Ok(run_parity::<B>(dir, reference, device, tolerance)?)
}

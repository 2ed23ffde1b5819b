//! `graft export REF --peft DIR | --merged DIR`: a PEFT adapter folder, or
//! merged weights in Hugging Face layout.

use super::{output, CliError, CliResult, Context};
use crate::model::{save_merged, write_peft_adapter, CpuBackend};
use crate::train::restore::{restore, RestoreError};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["peft", "merged"])))]
pub struct Args {
    /// A checkpoint (RUN@STEP, RUN@best, a tag, or a run = its last checkpoint).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Write a PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub peft: Option<PathBuf>,
    /// Write a full Hugging Face folder with the adapter folded into the weights.
    #[arg(long, value_name = "DIR")]
    pub merged: Option<PathBuf>,
}

impl From<RestoreError> for CliError {
    fn from(e: RestoreError) -> Self {
        match e {
            RestoreError::Store(e) => e.into(),
            other => CliError::user(other.to_string()),
        }
    }
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let restored = restore::<CpuBackend>(&store, &args.reference, &Default::default())?;
    if restored.checkpoint.is_none() {
        return Err(CliError::user(format!(
            "`{}` is a base model: export takes a checkpoint",
            args.reference
        )));
    }
    let base_name = restored.folder.display().to_string();
    if let Some(dir) = &args.peft {
        let adapter = restored.adapter.as_ref().ok_or_else(|| {
            CliError::user("this checkpoint comes from full fine-tuning and has no adapter")
                .with_hint("use --merged DIR for a full model folder")
        })?;
        let tensors = restored.model.named_tensors(|p| p.is_lora);
        write_peft_adapter(dir, adapter, &tensors, Some(&base_name))?;
        let unfrozen = restored
            .model
            .params()
            .iter()
            .filter(|p| !p.is_lora && p.trainable)
            .count();
        if unfrozen > 0 {
            eprintln!("note: the checkpoint also changed {unfrozen} base tensors, which a PEFT adapter cannot carry; use --merged for the whole model");
        }
        output::println_safe(&format!("wrote PEFT adapter to {}", dir.display()));
    }
    if let Some(dir) = &args.merged {
        save_merged(restored.model, dir, Some(&restored.folder))?;
        output::println_safe(&format!("wrote merged model to {}", dir.display()));
    }
    Ok(())
}

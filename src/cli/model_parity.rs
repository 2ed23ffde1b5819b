//! `graft model parity DIR REFERENCE.json`: run a model folder on the reference token
//! ids and compare logits, loss, and (with `DIR/lora-adapter/`) the adapted outputs
//! and LoRA gradients. Exits 1 past tolerance.

use std::path::PathBuf;

use super::{output, CliError, CliResult, Context};
use crate::model::parity::{run_parity, Comparison, ParityReport, Tolerance};
use crate::model::{CpuTrainBackend, ModelError};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Hugging Face model folder (config.json, model.safetensors or shards).
    pub dir: PathBuf,
    /// reference.json with input_ids, logits, loss (and with_lora) from transformers.
    pub reference: PathBuf,
    /// Bound on max |a-b| / max |ref| of the logits.
    #[arg(long, default_value_t = 1e-4)]
    pub logits_tol: f64,
    /// Bound on |loss - reference loss|.
    #[arg(long, default_value_t = 1e-4)]
    pub loss_tol: f64,
    /// Bound on max |a-b| / max |ref| of each LoRA gradient.
    #[arg(long, default_value_t = 1e-3)]
    pub grad_tol: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A model-layer error as a CLI error: bad folders and files are the user's to fix.
pub fn model_error(e: ModelError) -> CliError {
    match e {
        ModelError::Invalid { .. } => CliError::internal(e.to_string()),
        _ => CliError::user(e.to_string())
            .with_hint("the folder needs config.json and model.safetensors (or shards with model.safetensors.index.json) in Hugging Face layout"),
    }
}

fn line(label: &str, c: &Comparison) -> String {
    format!(
        "{label:<10} logits max|a-b|/max|ref| {}  loss {:.6} (reference {:.6}, diff {})",
        output::number(c.logits_rel_err),
        c.loss,
        c.reference_loss,
        output::number(c.loss_abs_diff)
    )
}

fn render(report: &ParityReport) {
    output::println_safe(&line("base", &report.base));
    if let Some(c) = &report.with_lora {
        output::println_safe(&line("with_lora", c));
    }
    if let Some(g) = &report.lora_grads {
        output::println_safe(&format!(
            "lora grads max|a-b|/max|ref| {} over {} tensors (worst {})",
            output::number(g.max_rel_err),
            g.tensors,
            g.worst_tensor
        ));
    }
    output::println_safe(if report.passes() {
        "parity: ok"
    } else {
        "parity: FAILED"
    });
}

pub fn run(args: Args, _context: &Context) -> CliResult {
    let tolerance = Tolerance {
        logits_rel: args.logits_tol,
        loss_abs: args.loss_tol,
        grad_rel: args.grad_tol,
    };
    let report =
        run_parity::<CpuTrainBackend>(&args.dir, &args.reference, &Default::default(), tolerance)
            .map_err(model_error)?;
    if args.json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("passes".into(), report.passes().into());
        }
        output::print_json(&value)?;
    } else {
        render(&report);
    }
    if report.passes() {
        Ok(())
    } else {
        Err(CliError::check(format!(
            "{} is outside tolerance of {}",
            args.dir.display(),
            args.reference.display()
        ))
        .with_hint("for bf16 checkpoints compare at bf16 precision, e.g. --logits-tol 3e-2 --loss-tol 2e-2"))
    }
}

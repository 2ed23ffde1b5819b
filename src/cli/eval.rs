//! `graft eval REF --data FILE`: loss, perplexity and (where the format has
//! answers) exact-match accuracy of a model or checkpoint on a data file.
//!
//! On a checkpoint, how the data is read (format, chat template, sequence
//! length) defaults to what its run recorded, so "evaluate this checkpoint on
//! that file" measures what training measured; flags override. The tokenizer
//! is always the run's own: its base model's.

use super::{output, CliError, CliResult, Context};
use crate::data::{DataSource, Encoder, Format, Tokenizer};
use crate::store::{Canon, Id, Store};
use crate::train::eval::{evaluate, EvalSet};
use crate::train::Experiment;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model or checkpoint.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// A JSONL data file.
    #[arg(long)]
    pub data: PathBuf,
    /// Its format: chat, prompt_completion, alpaca or text [default: the
    /// checkpoint's training data format, else chat].
    #[arg(long)]
    pub format: Option<String>,
    /// Chat template: auto, model, chatml or plain [default: the checkpoint's
    /// run's data.template, else auto].
    #[arg(long)]
    pub template: Option<String>,
    /// Tokens per example [default: the checkpoint's run's data.seq_len, else 256].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Evaluate at most this many examples.
    #[arg(long, default_value_t = 1000)]
    pub max_examples: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// How a run read its data: the defaults for evaluating or prompting one of
/// its checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct RunDataSettings {
    pub run: Id,
    /// The format of its first training file (absent for a run without one).
    pub format: Option<String>,
    pub template: String,
    pub seq_len: usize,
}

/// Built-in defaults where no run says otherwise (a base model).
const DEFAULT_FORMAT: &str = "chat";
const DEFAULT_TEMPLATE: &str = "auto";
const DEFAULT_SEQ_LEN: usize = 256;

/// The data settings of the run `checkpoint` belongs to.
pub fn run_data_settings(store: &Store, checkpoint: &Id) -> CliResult<RunDataSettings> {
    let index = store.index()?;
    let run = index.run(&index.checkpoint(checkpoint)?.run)?;
    let experiment = Experiment::from_recipe(&run.recipe).map_err(|e| {
        CliError::user(format!(
            "the recipe of run {} cannot be read back: {e}",
            run.id.short()
        ))
        .with_hint("pass --template and --seq-len (and --format) explicitly")
    })?;
    let mut format = None;
    if let Some(train) = run.recipe.datasets.iter().find(|d| d.role == "train") {
        if let Some(dataset) = index.get_dataset(&train.dataset)? {
            format = dataset
                .spec
                .get("format")
                .and_then(Canon::as_str)
                .map(str::to_string);
        }
    }
    Ok(RunDataSettings {
        run: run.id,
        format,
        template: experiment.data.template,
        seq_len: experiment.data.seq_len,
    })
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let restored = super::progress::restore_with_bar(&store, &args.reference)?;
    let recorded = match &restored.checkpoint {
        Some(checkpoint) => Some(run_data_settings(&store, checkpoint)?),
        None => None,
    };
    let format_name = args
        .format
        .or_else(|| recorded.as_ref().and_then(|r| r.format.clone()))
        .unwrap_or_else(|| DEFAULT_FORMAT.into());
    let template = args
        .template
        .or_else(|| recorded.as_ref().map(|r| r.template.clone()))
        .unwrap_or_else(|| DEFAULT_TEMPLATE.into());
    let seq_len = args
        .seq_len
        .or(recorded.as_ref().map(|r| r.seq_len))
        .unwrap_or(DEFAULT_SEQ_LEN);
    let tokenizer = Arc::new(Tokenizer::from_dir(&restored.folder)?);
    let format: Format = format_name.parse()?;
    let encoder = Encoder::new(tokenizer, format, &template)?;
    let name = args.data.display().to_string();
    let set = EvalSet::from_source(
        name.clone(),
        DataSource::file(&args.data),
        encoder,
        seq_len,
        args.max_examples,
        args.batch_size,
    )?;
    let result = evaluate(&restored.model, &set);
    let settings_from = recorded.as_ref().map(|r| r.run.to_hex());
    if args.json {
        return output::print_json(&serde_json::json!({
            "data": name, "loss": result.loss, "perplexity": result.loss.exp(),
            "accuracy": result.accuracy, "examples": result.examples,
            "format": format_name, "template": template, "seq_len": seq_len,
            "settings_from_run": settings_from,
        }));
    }
    let accuracy = result
        .accuracy
        .map(|a| format!("  exact-match accuracy {:.1}%", a * 100.0))
        .unwrap_or_default();
    output::println_safe(&format!(
        "{name}: {} examples  loss {:.4}  perplexity {:.3}{accuracy}",
        result.examples,
        result.loss,
        result.loss.exp()
    ));
    let source = match &recorded {
        Some(r) => format!("run {}'s settings unless flagged", r.run.short()),
        None => "defaults unless flagged".into(),
    };
    output::println_safe(&format!(
        "  read as {format_name}, template {template}, seq_len {seq_len} ({source})"
    ));
    Ok(())
}

//! `graft eval REF --data FILE`: loss, perplexity and (where the format has
//! answers) exact-match accuracy of a model or checkpoint on a data file.

use super::{output, CliResult, Context};
use crate::data::{DataSource, Encoder, Format, Tokenizer};
use crate::model::CpuBackend;
use crate::train::eval::{evaluate, EvalSet};
use crate::train::restore::restore;
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
    /// Its format: chat, prompt_completion, alpaca or text.
    #[arg(long, default_value = "chat")]
    pub format: String,
    /// Chat template: auto, model, chatml or plain.
    #[arg(long, default_value = "auto")]
    pub template: String,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Evaluate at most this many examples.
    #[arg(long, default_value_t = 1000)]
    pub max_examples: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let restored = restore::<CpuBackend>(&store, &args.reference, &Default::default())?;
    let tokenizer = Arc::new(Tokenizer::from_dir(&restored.folder)?);
    let format: Format = args.format.parse()?;
    let encoder = Encoder::new(tokenizer, format, &args.template)?;
    let name = args.data.display().to_string();
    let set = EvalSet::from_source(
        name.clone(),
        DataSource::file(&args.data),
        encoder,
        args.seq_len,
        args.max_examples,
        args.batch_size,
    )?;
    let result = evaluate(&restored.model, &set);
    if args.json {
        return output::print_json(&serde_json::json!({
            "data": name, "loss": result.loss, "perplexity": result.loss.exp(),
            "accuracy": result.accuracy, "examples": result.examples,
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
    Ok(())
}

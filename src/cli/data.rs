//! `graft data synth TASK` and `graft data inspect FILE`: make synthetic
//! chat data, and look at a data file the way training will read it.

use super::output::{print_json, println_safe};
use super::{CliError, CliResult, Context};
use crate::data::{DataError, DataSource, Encoder, Format, Marking, Tokenizer};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Write deterministic synthetic tasks (chat JSONL with exact answers).
    Synth(SynthArgs),
    /// Counts, lengths and one example with its trained tokens marked.
    Inspect(InspectArgs),
}

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// The task: arithmetic ("What is 37+58?" -> "95") or reverse (a short string reversed).
    pub task: String,
    /// How many examples.
    #[arg(long, default_value_t = 1000)]
    pub n: u64,
    /// The same seed always gives the same file.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The JSONL data file.
    pub file: PathBuf,
    /// A Hugging Face model folder (or a tokenizer.json) whose tokenizer reads the data.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// text, prompt_completion, alpaca or chat.
    #[arg(long, default_value = "chat")]
    pub format: String,
    /// Chat template: auto (the model's, else chatml), model, chatml or plain.
    #[arg(long, default_value = "auto")]
    pub template: String,
    /// Row length in tokens (counts the examples that do not fit).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Which example to show (0-based, blank lines not counted).
    #[arg(long, default_value_t = 0)]
    pub example: u64,
    /// Colour the trained tokens instead of bracketing them.
    #[arg(long)]
    pub color: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, _context: &Context) -> CliResult {
    match args.command {
        DataCommand::Synth(args) => synth(args),
        DataCommand::Inspect(args) => inspect(args),
    }
}

fn synth(args: SynthArgs) -> CliResult {
    let lines = crate::data::synth(&args.task, args.n, args.seed).map_err(data_error)?;
    let mut text = lines.join("\n");
    text.push('\n');
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| CliError::user(format!("cannot write {}: {e}", path.display())))?,
        None => {
            // A closed pipe (`| head`) is not an error.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> CliResult {
    let tokenizer = if args.model.is_dir() {
        Tokenizer::from_dir(&args.model)
    } else {
        Tokenizer::from_file(&args.model)
    }
    .map_err(data_error)?;
    let format: Format = args.format.parse().map_err(data_error)?;
    let encoder = Encoder::new(Arc::new(tokenizer), format, &args.template).map_err(data_error)?;
    let marking = match args.color {
        true => Marking::Color,
        false => Marking::Brackets,
    };
    let inspection = crate::data::inspect(
        &DataSource::file(&args.file),
        &encoder,
        args.seq_len,
        args.example,
        marking,
    )
    .map_err(data_error)?;
    if args.json {
        let plain = crate::data::render_loss_mask(
            encoder.tokenizer(),
            &inspection.example,
            Marking::Brackets,
        );
        return print_json(&serde_json::json!({
            "file": inspection.file,
            "file_object": inspection.file_object.to_hex(),
            "format": inspection.format,
            "template": inspection.template,
            "stats": inspection.stats.to_canon().to_json(),
            "example_line": inspection.example_line,
            "example_tokens": inspection.example.ids,
            "example_loss": inspection.example.loss,
            "example_rendered": plain,
        }));
    }
    println_safe(&inspection.render());
    Ok(())
}

/// Data errors are the user's to fix, except a failing disk.
fn data_error(error: DataError) -> CliError {
    match error {
        DataError::Io { .. } => CliError::internal(error.to_string()),
        DataError::FormatChange { .. } => CliError::user(error.to_string())
            .with_hint("set data.allow_format_change = true in the experiment file"),
        _ => CliError::user(error.to_string()),
    }
}

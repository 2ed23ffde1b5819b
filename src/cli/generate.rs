//! `graft generate MODEL "prompt"`: sample text from a model folder, optionally with a
//! PEFT adapter, using the KV cache.

use std::path::PathBuf;

use super::{output, CliResult, Context};
use crate::model::{
    generate, load_adapter, load_model_dir, load_tokenizer, CpuBackend, SamplingConfig,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Hugging Face model folder (with tokenizer.json).
    pub model: PathBuf,
    /// The text to continue.
    pub prompt: String,
    /// A PEFT adapter folder to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args, _context: &Context) -> CliResult {
    let device = Default::default();
    let mut model = load_model_dir::<CpuBackend>(&args.model, &device)?;
    if let Some(adapter) = &args.adapter {
        model = load_adapter(model, adapter)?;
    }
    let tokenizer = load_tokenizer(&args.model)?;
    let config = SamplingConfig {
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop_tokens: model.config.eos_token_ids.clone(),
        use_cache: true,
    };
    let text = generate(&model, &tokenizer, &args.prompt, &config)?;
    output::println_safe(&format!("{}{}", args.prompt, text));
    Ok(())
}

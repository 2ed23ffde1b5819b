//! `graft generate REF "prompt"`: sample text from a model or checkpoint,
//! with the KV cache.

use super::{output, CliResult, Context};
use crate::model::{generate, load_tokenizer, CpuBackend, SamplingConfig};
use crate::train::restore::restore;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model (id, tag) or checkpoint (RUN@STEP, RUN@best, a run = its last checkpoint).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The text to continue.
    pub prompt: String,
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

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let restored = restore::<CpuBackend>(&store, &args.reference, &Default::default())?;
    let tokenizer = load_tokenizer(&restored.folder)?;
    let config = SamplingConfig {
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop_tokens: restored.model.config.eos_token_ids.clone(),
        use_cache: true,
    };
    let text = generate(&restored.model, &tokenizer, &args.prompt, &config)?;
    output::println_safe(&format!("{}{}", args.prompt, text));
    Ok(())
}

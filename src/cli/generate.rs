//! `graft generate REF "prompt"`: sample text from a model or checkpoint,
//! with the KV cache.
//!
//! The prompt is a user message put through the chat template, as training
//! put the data through it: on a checkpoint the run's own `data.template` by
//! default, `--template` to choose another, `--raw` to send the text as it is.

use super::eval::run_data_settings;
use super::{output, CliResult, Context};
use crate::data::{ChatTemplate, Message, Tokenizer};
use crate::model::{generate, generate_ids, load_tokenizer, SamplingConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model (id, tag) or checkpoint (RUN@STEP, RUN@best, a run = its last checkpoint).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The user's message (with --raw: the text to continue).
    pub prompt: String,
    /// Chat template for the prompt: auto, model, chatml or plain, as the
    /// experiment key data.template [default: the checkpoint's run's template,
    /// else auto].
    #[arg(long, conflicts_with = "raw")]
    pub template: Option<String>,
    /// Send the prompt as it is, without a chat template, and print it with
    /// its continuation.
    #[arg(long)]
    pub raw: bool,
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
    /// Print JSON: the prompt, the text the model saw, the template and the reply.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let restored = super::progress::restore_with_bar(&store, &args.reference)?;
    let config = SamplingConfig {
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop_tokens: restored.model.config.eos_token_ids.clone(),
        use_cache: true,
    };
    if args.raw {
        let tokenizer = load_tokenizer(&restored.folder)?;
        let text = generate(&restored.model, &tokenizer, &args.prompt, &config)?;
        if args.json {
            return output::print_json(&serde_json::json!({
                "prompt": args.prompt, "template": null, "model_input": args.prompt, "text": text,
            }));
        }
        output::println_safe(&format!("{}{}", args.prompt, text));
        return Ok(());
    }
    let template_name = match (&args.template, &restored.checkpoint) {
        (Some(name), _) => name.clone(),
        (None, Some(checkpoint)) => run_data_settings(&store, checkpoint)?.template,
        (None, None) => "auto".into(),
    };
    // The run's tokenizer (its base model's), read as training reads it.
    let tokenizer = Tokenizer::from_dir(&restored.folder)?;
    let template = ChatTemplate::resolve(&template_name, &tokenizer)?;
    let model_input = template.render_prompt(&[Message::new("user", &args.prompt)])?;
    let mut ids: Vec<u32> = Vec::new();
    if !template.writes_bos() {
        ids.extend(tokenizer.bos_id());
    }
    ids.extend(tokenizer.encode(&model_input)?);
    let reply_ids = generate_ids(&restored.model, &ids, &config)?;
    let reply = tokenizer.decode(&reply_ids, true)?;
    if args.json {
        return output::print_json(&serde_json::json!({
            "prompt": args.prompt, "template": template_name,
            "model_input": model_input, "text": reply,
        }));
    }
    // The user's message, then the model's answer on the next line.
    output::println_safe(&format!("{}\n{}", args.prompt, reply.trim_start()));
    Ok(())
}

//! Text generation: greedy, temperature and nucleus (top-p) sampling, with or without
//! the KV cache. Sampling happens on the host from the last position's logits, with a
//! seeded ChaCha RNG so a seed reproduces a sample.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use super::error::ModelError;
use super::llama::CausalLm;

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0: all).
    pub top_p: f64,
    pub seed: u64,
    /// Generation stops after emitting one of these (e.g. the config's eos ids).
    pub stop_tokens: Vec<u32>,
    /// Decode one token at a time against the KV cache (the normal path); without it,
    /// the whole sequence is recomputed every step (a reference for tests).
    pub use_cache: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
            use_cache: true,
        }
    }
}

/// Picks a token from `logits` `[vocab]`.
pub fn sample_token(logits: &[f32], config: &SamplingConfig, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if config.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, ((v as f64 - max) / config.temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    if config.top_p < 1.0 {
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cumulative += p.1;
            if cumulative >= config.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let kept: f64 = probs.iter().map(|p| p.1).sum();
    let mut draw = rng.random::<f64>() * kept;
    for (index, p) in &probs {
        draw -= p;
        if draw <= 0.0 {
            return *index as u32;
        }
    }
    probs.last().map_or_else(argmax, |p| p.0 as u32)
}

fn last_logits<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    let [_, seq, vocab] = logits.dims();
    logits
        .narrow(1, seq - 1, 1)
        .reshape([vocab])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

fn ids_tensor<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let values: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, [1, ids.len()]), device)
}

/// Continues `prompt` token ids; returns only the new ids.
pub fn generate_ids<B: crate::compute::kernels::Kernels>(
    model: &CausalLm<B>,
    prompt: &[u32],
    config: &SamplingConfig,
) -> Result<Vec<u32>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Invalid {
            message: "the prompt has no tokens".into(),
        });
    }
    let device = model.device();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut all: Vec<u32> = prompt.to_vec();
    let mut new = Vec::new();
    let mut cache = model.new_cache();
    let mut logits = if config.use_cache {
        last_logits(model.forward_cached(ids_tensor::<B>(prompt, &device), &mut cache))
    } else {
        last_logits(model.forward(ids_tensor::<B>(&all, &device)))
    };
    for _ in 0..config.max_new_tokens {
        let token = sample_token(&logits, config, &mut rng);
        new.push(token);
        all.push(token);
        if config.stop_tokens.contains(&token) || new.len() == config.max_new_tokens {
            break;
        }
        logits = if config.use_cache {
            last_logits(model.forward_cached(ids_tensor::<B>(&[token], &device), &mut cache))
        } else {
            last_logits(model.forward(ids_tensor::<B>(&all, &device)))
        };
    }
    Ok(new)
}

/// `tokenizer.json` of a model folder.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, ModelError> {
    let path = dir.join("tokenizer.json");
    Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
        path,
        message: e.to_string(),
    })
}

/// Encodes `prompt`, continues it, and decodes the new tokens.
pub fn generate<B: crate::compute::kernels::Kernels>(
    model: &CausalLm<B>,
    tokenizer: &Tokenizer,
    prompt: &str,
    config: &SamplingConfig,
) -> Result<String, ModelError> {
    let tokenizer_error = |e: tokenizers::Error| ModelError::Tokenizer {
        path: "tokenizer.json".into(),
        message: e.to_string(),
    };
    let encoding = tokenizer.encode(prompt, true).map_err(tokenizer_error)?;
    let new = generate_ids(model, encoding.get_ids(), config)?;
    tokenizer.decode(&new, true).map_err(tokenizer_error)
}

//! Llama-family causal language models (Llama, Qwen2, Mistral, Qwen3, Phi-3, Gemma 2
//! and 3 text) from Hugging Face folders or the local Hugging Face cache, on burn:
//! config parsing, weight loading and export, the forward pass and loss, LoRA that
//! reads and writes PEFT adapters, trainability by block, generation, and parity
//! checks against the reference implementation.
//!
//! Knows nothing of the store: it reads and writes plain folders and hands tensors out
//! by name.

pub mod adapter;
pub mod bnb;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hf_cache;
pub mod llama;
pub mod lora;
pub mod params;
pub mod parity;
pub mod quantize;
pub mod quantized;
pub mod shapes;
pub mod tensor_files;
pub mod weights;

pub use adapter::{
    load_adapter, load_adapter_files, read_adapter_config, read_adapter_config_file, save_adapter,
    write_peft_adapter,
};
pub use config::{Activation, LayerType, ModelConfig, ModelType, RopeConfig, RopeScaling};
pub use error::ModelError;
pub use generate::{generate, generate_ids, load_tokenizer, SamplingConfig};
pub use llama::{causal_lm_loss, CausalLm, KvCache};
pub use lora::{LoraConfig, ALL_TARGETS};
pub use params::{AnyTensor, Block, ParamInfo};
pub use parity::{run_parity, ParityReport, Tolerance};
pub use weights::{load_model_dir, load_model_dir_as, read_raw_tensors, save_model_dir, RawTensor};

/// The CPU backend used by default.
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend with gradients, for training.
pub type CpuTrainBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// The note a merged export over a quantized base carries in its weights file's
/// metadata (key, value).
pub fn dequantized_note(scheme: quantize::QuantScheme) -> (&'static str, String) {
    (
        "graft_merged_into",
        format!(
            "the dequantized {} base (its projections hold dequantized values, not the original weights)",
            scheme.as_str()
        ),
    )
}

/// Writes the model with its adapter folded in as a plain HF folder; a quantized base
/// is merged into its dequantized values, as the weights file's metadata says
/// ([`dequantized_note`]).
pub fn save_merged<B: burn::tensor::backend::Backend>(
    model: CausalLm<B>,
    out_dir: &std::path::Path,
    source_dir: Option<&std::path::Path>,
) -> Result<(), ModelError> {
    let notes: Vec<(&str, String)> = model
        .base_quantization()
        .map(dequantized_note)
        .into_iter()
        .collect();
    weights::save_model_dir_noted(&model.merge_lora(), out_dir, source_dir, &notes)
}

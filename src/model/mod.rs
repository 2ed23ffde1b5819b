//! Llama-family causal language models (Llama, Qwen2, Mistral) from Hugging Face
//! folders, on burn: config parsing, weight loading and export, the forward pass and
//! loss, LoRA that reads and writes PEFT adapters, trainability by block, generation,
//! and parity checks against the reference implementation.
//!
//! Knows nothing of the store: it reads and writes plain folders and hands tensors out
//! by name.

pub mod adapter;
pub mod attention;
pub mod config;
pub mod cpu_attention;
pub mod cpu_backends;
pub mod cpu_rope;
pub mod cpu_swiglu;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cublas;
#[cfg(feature = "cuda")]
pub mod cuda_backends;
#[cfg(feature = "cuda")]
pub mod cuda_kernels;
#[cfg(feature = "cuda")]
pub mod cuda_stream;
pub mod error;
#[cfg(feature = "cuda")]
pub mod flash_attention;
pub mod fused_swiglu;
pub mod gemm;
pub mod generate;
pub mod host_memory;
pub mod llama;
pub mod lora;
pub mod lora_product;
pub mod params;
pub mod parity;
pub mod reduce;
pub mod shapes;
pub mod weights;

pub use adapter::{load_adapter, read_adapter_config, save_adapter, write_peft_adapter};
pub use config::{ModelConfig, ModelType, RopeConfig, RopeScaling};
pub use error::ModelError;
pub use generate::{generate, generate_ids, load_tokenizer, SamplingConfig};
pub use llama::{causal_lm_loss, CausalLm, KvCache};
pub use lora::{LoraConfig, ALL_TARGETS};
pub use params::{AnyTensor, Block, ParamInfo};
pub use parity::{run_parity, ParityReport, Tolerance};
pub use weights::{load_model_dir, read_raw_tensors, save_model_dir, RawTensor};

/// The CPU backend used by default.
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend with gradients, for training.
pub type CpuTrainBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// Writes the model with its adapter folded in as a plain HF folder.
pub fn save_merged<B: burn::tensor::backend::Backend>(
    model: CausalLm<B>,
    out_dir: &std::path::Path,
    source_dir: Option<&std::path::Path>,
) -> Result<(), ModelError> {
    save_model_dir(&model.merge_lora(), out_dir, source_dir)
}

/// `value` as type `To` when `From` is `To`, else `value` back: how code with a
/// faster path for one backend moves its tensors over (stable Rust has no
/// specialisation).
pub fn retype<From: 'static, To: 'static>(value: From) -> Result<To, From> {
    if std::any::TypeId::of::<From>() != std::any::TypeId::of::<To>() {
        return Err(value);
    }
    let boxed: Box<dyn std::any::Any> = Box::new(value);
    Ok(*boxed.downcast::<To>().expect("same type id"))
}

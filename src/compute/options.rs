//! The kernel choices of the running process, installed from a [`super::Compute`]
//! value before a model is built and read by the model's and optimizer's fast paths.
//!
//! They are process-wide because they are read deep inside autodiff nodes (a backward
//! pass picks its matrix product long after the forward pass was built), where no
//! caller's value can reach. Every command that computes installs its value first, so
//! what a kernel reads is always what the execution record says.

use super::{Attention, KeepProjections, LoraBranch, Matmul};
use std::sync::RwLock;

/// The kernel alternatives of one execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOptions {
    pub matmul: Matmul,
    pub cublas_min_macs: usize,
    pub cuda_accumulate: bool,
    pub attention: Attention,
    pub attention_block_elements: usize,
    pub lora_branch: LoraBranch,
    pub fused_lora: bool,
    pub fused_swiglu: bool,
    pub fused_norm: bool,
    pub cuda_fused_norm: bool,
    pub cuda_fused_rope: bool,
    pub cuda_fused_swiglu: bool,
    pub fused_loss: bool,
    pub cuda_fused_loss: bool,
    pub vector_exp: bool,
    pub recompute_layers: bool,
    /// Which adapted projections' outputs are kept for their layer's rerun.
    pub keep_projections: KeepProjections,
    /// Tokens per part of the staged head and loss (0: whole).
    pub loss_chunk_tokens: usize,
    pub fused_adamw: bool,
    /// CUDA attention on the mma.sync kernels even where Hopper's wgmma ones run: the
    /// execution continues or repeats one recorded with them (`compute.gpu_attention`).
    pub attention_mma_sync: bool,
}

impl Default for KernelOptions {
    fn default() -> Self {
        super::Compute::new(Default::default(), Default::default()).kernels()
    }
}

static INSTALLED: RwLock<Option<KernelOptions>> = RwLock::new(None);

/// Makes `options` the process's kernel choices.
pub fn install(options: KernelOptions) {
    let mut slot = INSTALLED.write().unwrap_or_else(|e| e.into_inner());
    *slot = Some(options);
}

/// The installed kernel choices (the defaults where none were installed).
pub fn current() -> KernelOptions {
    let slot = INSTALLED.read().unwrap_or_else(|e| e.into_inner());
    slot.unwrap_or_default()
}

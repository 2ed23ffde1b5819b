//! How the numbers are computed, as one value: the backend, the float type, activation
//! checkpointing and the kernel alternatives. An experiment says it in its `[compute]`
//! section, `--set compute.KEY=VALUE` overrides it, `--backend` picks the device, and the
//! library receives the resolved [`Compute`] and dispatches on it once ([`dispatch`]).
//!
//! What enters the record, and where:
//! - **The recipe** (and so the run id) holds the precision policy, `dtype`,
//!   `lora_branch` and `base` (the frozen base's storage: floats, int8 or NF4): they
//!   change what a run computes on every backend, as the learning rate does. At their
//!   defaults (`f32`, `activations`, `dtype`) they are left out of the recipe's config,
//!   so runs recorded before `[compute]` existed keep their ids.
//! - **The execution** holds everything (backend, checkpointing, the kernel choices and
//!   the precision policy), because those choose how the same recipe is carried out:
//!   they agree to within rounding, not to the bit. `graft show` prints it, and
//!   `graft reproduce` compares the new execution's compute with the original's, names
//!   every option that differs and then compares within [`Compute::tolerance`] instead
//!   of claiming bit identity.
//!
//! Nothing here is read from the environment: a kernel choice lives in this value and is
//! installed for the process by [`Compute::install`] before a model is built.

pub mod attention;
pub mod cpu_adamw;
pub mod cpu_attention;
pub mod cpu_elementwise;
pub mod cpu_exp;
pub mod cpu_loss;
pub mod cpu_matmul;
pub mod cpu_norm;
pub mod cpu_pool;
pub mod cpu_residual;
pub mod cpu_rope;
pub mod cpu_swiglu;
pub mod cpu_vectors;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cublas;
#[cfg(feature = "cuda")]
pub mod cuda_kernels;
#[cfg(feature = "cuda")]
pub mod cuda_loss;
#[cfg(feature = "cuda")]
pub mod cuda_norm;
#[cfg(feature = "cuda")]
pub mod cuda_op;
#[cfg(feature = "cuda")]
pub mod cuda_rope;
#[cfg(feature = "cuda")]
pub mod cuda_stream;
#[cfg(feature = "cuda")]
pub mod cuda_swiglu;
#[cfg(feature = "cuda")]
pub mod dequantize;
pub mod devices;
pub mod dispatch;
#[cfg(feature = "cuda")]
pub mod flash_attention;
pub mod flex_values;
#[cfg(feature = "cuda")]
pub mod fused_adamw;
pub mod fused_swiglu;
pub mod gemm;
pub mod grad_sum;
pub mod host_memory;
pub mod keep_projections;
pub mod kept_attention;
pub mod kernels;
pub mod lora_product;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod quant_product;
pub mod reduce;
pub mod resident;
pub use cpu_vectors::CpuVectors;
pub use devices::Devices;
pub use dispatch::ComputeError;
pub use keep_projections::KeepProjections;
pub mod options;

pub use options::KernelOptions;

use crate::store::Canon;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which burn backend runs the numbers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's Flex CPU backend (the default).
    #[default]
    Cpu,
    /// burn-cuda on an NVIDIA GPU (needs a build with `--features cuda`).
    Cuda,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// The float type of the model's base weights and activations.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Everything in f32: the exact path, bit-reproducible on one backend.
    #[default]
    F32,
    /// A bf16 base and activations; LoRA matrices, their gradients and the optimizer
    /// state stay f32 (CUDA only).
    Bf16,
}

impl Dtype {
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// Whether the backward pass recomputes activations instead of keeping them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpointing {
    /// Keep every activation the backward pass needs.
    #[default]
    None,
    /// burn's balanced checkpointing: recompute the cheap ones.
    Balanced,
    /// Keep each decoder layer's input only and run the layer again in the backward
    /// pass (HF's gradient checkpointing; `train::layer_recompute`).
    Layers,
}

/// Which matrix product the CUDA backends use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Matmul {
    /// cuBLAS, loaded at run time (burn's kernel where libcublas is missing).
    #[default]
    Cublas,
    /// burn's own matmul kernel (it rounds f32 operands to TF32).
    Burn,
}

/// Which attention the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    /// The flash kernels on CUDA where they serve the head size and dtype, else the
    /// blocked fused node.
    #[default]
    Flash,
    /// The blocked fused node (one autodiff node, scores in blocks).
    Blocked,
    /// burn's attention, op by op.
    Burn,
}

/// The dtype an f32 adapter's branch computes in over a narrower base.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraBranch {
    /// The activations' dtype, as autocast and Unsloth run it (the faster).
    #[default]
    Activations,
    /// f32, as PEFT computes it: `x A`, `(x A) B` and the sum rounded once.
    F32,
}

/// How the frozen base's decoder projections are stored on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseStorage {
    /// In `compute.dtype`, f32 or bf16 (as before this key existed).
    #[default]
    Dtype,
    /// bf16: another name for `dtype` where `compute.dtype = "bf16"`, refused
    /// elsewhere (the CPU computes in f32).
    Bf16,
    /// Per-block int8 (blocks of 64, scale absmax / 127), dequantized per product.
    Int8,
    /// bitsandbytes' NF4 (blocks of 64, double-quantized absmax): QLoRA's base.
    Nf4,
}

impl BaseStorage {
    pub fn as_str(self) -> &'static str {
        match self {
            BaseStorage::Dtype => "dtype",
            BaseStorage::Bf16 => "bf16",
            BaseStorage::Int8 => "int8",
            BaseStorage::Nf4 => "nf4",
        }
    }

    /// The quantization of the projections, `None` for a float base.
    pub fn scheme(self) -> Option<crate::model::quantize::QuantScheme> {
        use crate::model::quantize::QuantScheme;
        match self {
            BaseStorage::Dtype | BaseStorage::Bf16 => None,
            BaseStorage::Int8 => Some(QuantScheme::Int8),
            BaseStorage::Nf4 => Some(QuantScheme::Nf4),
        }
    }
}

/// The experiment file's `[compute]` section. Every key has a default; unknown keys
/// are errors.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSection {
    /// `f32` | `bf16`: the base's and the activations' float type. Enters the recipe.
    #[serde(default)]
    pub dtype: Dtype,
    /// `activations` | `f32`: where an f32 adapter over a bf16 base computes its
    /// branch. Enters the recipe.
    #[serde(default)]
    pub lora_branch: LoraBranch,
    /// `dtype` | `bf16` | `int8` | `nf4`: how the frozen base's seven projections
    /// are stored. Enters the recipe.
    #[serde(default)]
    pub base: BaseStorage,
    /// `none` | `balanced` | `layers`: recompute activations in the backward pass.
    #[serde(default)]
    pub checkpointing: Checkpointing,
    /// With `checkpointing = "layers"`: adapted projections' outputs kept from the
    /// first pass for the layer's rerun, which then skips their base products (the
    /// same values; more memory held until each layer is rerun): `false`, `true` (all)
    /// or `"narrow"` (those that do not widen their input; [`keep_projections`]).
    #[serde(default)]
    pub keep_projections: KeepProjections,
    /// The head and the loss run over this many tokens at a time, each its own
    /// backward pass, so the `[tokens, vocab]` logits and their gradient are never
    /// whole (0: all tokens in one pass, inside the step's one backward pass). The gradient
    /// reaching the layers is each token's own, so it does not change; the loss, and
    /// the gradient of a final norm, head or tied embedding that trains, are summed a
    /// part at a time.
    #[serde(default)]
    pub loss_chunk_tokens: u64,
    /// `cublas` | `burn`: the CUDA matrix product.
    #[serde(default)]
    pub matmul: Matmul,
    /// On CUDA, a sum of a product and another tensor (an adapted projection's base
    /// and adapter parts) taken by cuBLAS in the product's call, in place, rounding
    /// once (false: the product rounded, then a separate sum, as graft computed it
    /// before).
    #[serde(default = "default_true")]
    pub cuda_accumulate: bool,
    /// bf16 products with fewer multiply-adds stay on burn's kernel (each cuBLAS call
    /// costs host time that the smallest products do not repay).
    #[serde(default = "default_cublas_min_macs")]
    pub cublas_min_macs: u64,
    /// `flash` | `blocked` | `burn`.
    #[serde(default)]
    pub attention: Attention,
    /// Most attention scores per block of the blocked attention.
    #[serde(default = "default_attention_block_elements")]
    pub attention_block_elements: u64,
    /// Adapted projections as one fused node (false: op by op).
    #[serde(default = "default_true")]
    pub fused_lora: bool,
    /// SwiGLU's gating as one fused node (false: op by op).
    #[serde(default = "default_true")]
    pub fused_swiglu: bool,
    /// RMSNorm as one fused node where the backend has one (the CPU; false: op by
    /// op, as graft computed it before the node).
    #[serde(default = "default_true")]
    pub fused_norm: bool,
    /// On CUDA, RMSNorm as one node of one kernel each way (`compute::cuda_norm`;
    /// false: op by op, as graft computed it before).
    #[serde(default = "default_true")]
    pub cuda_fused_norm: bool,
    /// On CUDA, RoPE as one node of one kernel each way (`compute::cuda_rope`; false:
    /// op by op, as graft computed it before).
    #[serde(default = "default_true")]
    pub cuda_fused_rope: bool,
    /// On CUDA, SwiGLU's gating in one kernel of graft's each way, the sigmoid from a
    /// fast exponential (`compute::cuda_swiglu`; false: the fused node over burn's ops,
    /// as graft computed it before).
    #[serde(default = "default_true")]
    pub cuda_fused_swiglu: bool,
    /// The token loss with its rows in one parallel kernel where the backend has one
    /// (the CPU; false: the loss node over burn's ops, as graft computed it before).
    #[serde(default = "default_true")]
    pub fused_loss: bool,
    /// On CUDA, the token loss's rows in one kernel each way (`compute::cuda_loss`;
    /// false: the loss node over burn's ops, as graft computed it before).
    #[serde(default = "default_true")]
    pub cuda_fused_loss: bool,
    /// The CPU kernels' `exp` over a polynomial that vectorizes and gives the same bits
    /// on every CPU (false: the C library's `expf`, as graft computed it before).
    #[serde(default = "default_true")]
    pub vector_exp: bool,
    /// AdamW over the whole LoRA group in a few fused CUDA launches.
    #[serde(default = "default_true")]
    pub fused_adamw: bool,
    /// `N` (the first N GPUs) or `[i, j]`: the devices that train the run, each on an
    /// equal share of every batch, their gradients summed by NCCL (CUDA only).
    #[serde(default)]
    pub devices: Devices,
}

fn default_cublas_min_macs() -> u64 {
    1 << 20
}
fn default_attention_block_elements() -> u64 {
    1 << 27
}
fn default_true() -> bool {
    true
}

impl Default for ComputeSection {
    fn default() -> Self {
        toml::from_str("").expect("an empty compute section takes every default")
    }
}

/// Execution keys added after executions began to be recorded, with the value that
/// computes as graft did before the key existed: an execution whose record lacks one
/// ran that way, so reading the record (and resuming or reproducing it) takes it.
pub const LATER_KEYS: [(&str, bool); 8] = [
    ("fused_norm", false),
    ("fused_loss", false),
    ("vector_exp", false),
    ("cuda_fused_loss", false),
    ("cuda_fused_norm", false),
    ("cuda_accumulate", false),
    ("cuda_fused_rope", false),
    ("cuda_fused_swiglu", false),
];

/// The keys of [`ComputeSection`] that enter the recipe; the others are recorded on
/// the execution only.
pub const RECIPE_KEYS: [&str; 3] = ["dtype", "lora_branch", "base"];

impl ComputeSection {
    /// The section with `base = "bf16"` over a bf16 dtype written as the default it
    /// equals, so both spellings are one recipe.
    pub fn normalized(&self) -> ComputeSection {
        let mut section = *self;
        if section.base == BaseStorage::Bf16 && section.dtype == Dtype::Bf16 {
            section.base = BaseStorage::Dtype;
        }
        section
    }

    /// This section as an execution recorded before [`LATER_KEYS`] existed ran it.
    pub fn as_recorded_before_later_keys(self) -> ComputeSection {
        let mut json = serde_json::to_value(self).expect("the section serializes");
        if let Some(object) = json.as_object_mut() {
            for (key, before) in LATER_KEYS {
                object.insert(key.to_string(), serde_json::Value::Bool(before));
            }
        }
        serde_json::from_value(json).expect("the section reads back")
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.base == BaseStorage::Bf16 && self.dtype != Dtype::Bf16 {
            return Err("compute.base = \"bf16\" needs compute.dtype = \"bf16\" (a bf16 base is the bf16 dtype's): set both, or compute.base = \"dtype\"".into());
        }
        if self.keep_projections.any() && self.checkpointing != Checkpointing::Layers {
            return Err("compute.keep_projections keeps outputs for a layer's rerun: it needs compute.checkpointing = \"layers\"".into());
        }
        if self.cublas_min_macs == 0 || self.attention_block_elements == 0 {
            return Err(
                "compute.cublas_min_macs and compute.attention_block_elements must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// The recipe's part of the section: the keys of [`RECIPE_KEYS`] whose values
    /// differ from the default, or `None` when all are at their defaults.
    pub fn recipe_part(&self) -> Option<Canon> {
        let all = Canon::from_serialize(&self.normalized());
        let defaults = Canon::from_serialize(&ComputeSection::default());
        let mut part = BTreeMap::new();
        for key in RECIPE_KEYS {
            if let (Some(value), Some(default)) = (all.get(key), defaults.get(key)) {
                if value != default {
                    part.insert(key.to_string(), value.clone());
                }
            }
        }
        (!part.is_empty()).then_some(Canon::Map(part))
    }
}

/// The kernels CUDA's flash attention runs on a device: `mma.sync` (compute
/// capability 8.0 on) or, on Hopper (9.0), warpgroup MMA. They sum in different
/// orders, so a CUDA execution's record says which it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuAttention {
    MmaSync,
    Wgmma,
}

impl GpuAttention {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuAttention::MmaSync => "mma_sync",
            GpuAttention::Wgmma => "wgmma",
        }
    }

    /// What this machine's first CUDA device runs.
    pub fn of_this_machine() -> Self {
        #[cfg(feature = "cuda")]
        if cuda_kernels::device_capability(0) == Some((9, 0)) {
            return GpuAttention::Wgmma;
        }
        GpuAttention::MmaSync
    }

    /// What CUDA executions ran before the record held it (the wgmma kernels came
    /// later).
    pub fn before_recorded() -> Self {
        GpuAttention::MmaSync
    }
}

/// A new execution's attention kernels: the device's on CUDA, none on the CPU (where
/// no CUDA driver is asked).
fn gpu_attention_of_this_machine(backend: BackendKind) -> Option<GpuAttention> {
    (backend == BackendKind::Cuda).then(GpuAttention::of_this_machine)
}

/// The resolved way an execution computes: the device, the `[compute]` section and
/// the instructions the hardware's kernels use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Compute {
    pub backend: BackendKind,
    pub options: ComputeSection,
    /// This machine's for a new execution, the recorded one for a read record;
    /// recorded for CPU executions only (the GPU's products do not use them).
    pub cpu_vectors: CpuVectors,
    /// The same for CUDA executions' attention kernels, which alone have them.
    pub gpu_attention: Option<GpuAttention>,
}

impl Compute {
    /// `base = "bf16"` over a bf16 dtype is recorded as the default it equals, as the
    /// recipe records it, so an execution's compute and its recipe agree.
    pub fn new(backend: BackendKind, options: ComputeSection) -> Self {
        Compute {
            backend,
            options: options.normalized(),
            cpu_vectors: CpuVectors::of_this_machine(),
            gpu_attention: gpu_attention_of_this_machine(backend),
        }
    }

    /// This value computing on this machine: a record read from another (or from an
    /// older build) carries the vectors it ran with, a new execution runs with these;
    /// its attention kernels are kept where this machine has them.
    pub fn on_this_machine(self) -> Compute {
        Compute {
            cpu_vectors: CpuVectors::of_this_machine(),
            gpu_attention: match (self.backend, self.gpu_attention) {
                // Every card the flash kernels serve runs mma.sync (Hopper too), so a
                // record of it continues exactly; wgmma needs Hopper, and a record of
                // another backend has none.
                (BackendKind::Cuda, Some(GpuAttention::MmaSync)) => Some(GpuAttention::MmaSync),
                (backend, _) => gpu_attention_of_this_machine(backend),
            },
            ..self
        }
    }

    /// Why a new execution of `recorded` here cannot continue it bit for bit, if it
    /// cannot: the CPU's products run with other vector instructions, or CUDA's
    /// attention with other kernels.
    pub fn vectors_differ_from(&self, recorded: &Compute) -> Option<String> {
        if self.backend != recorded.backend {
            return None;
        }
        if self.backend == BackendKind::Cpu && self.cpu_vectors != recorded.cpu_vectors {
            return Some(format!(
                "compute.cpu_vectors: this machine's matrix products run with {} kernels, the recorded execution's with {}; they sum in another order, so this execution is not bit-identical to one on the recorded machine",
                self.cpu_vectors.as_str(),
                recorded.cpu_vectors.as_str()
            ));
        }
        if let (Some(here), Some(there)) = (self.gpu_attention, recorded.gpu_attention) {
            if here != there {
                return Some(format!(
                    "compute.gpu_attention: this machine's attention runs on {} kernels, the recorded execution's on {}; they sum in another order, so this execution is not bit-identical to the recorded one",
                    here.as_str(),
                    there.as_str()
                ));
            }
        }
        None
    }

    /// Refuses what this build or backend cannot compute, naming the key.
    pub fn check(&self) -> Result<(), String> {
        self.options.validate()?;
        if self.backend == BackendKind::Cpu && self.options.dtype == Dtype::Bf16 {
            return Err("compute.dtype = \"bf16\" needs --backend cuda: the CPU backend trains in f32 (set compute.dtype = \"f32\")".into());
        }
        if self.backend == BackendKind::Cpu && self.options.devices.count() > 1 {
            return Err(format!(
                "compute.devices = {}: several devices need --backend cuda; the CPU backend trains on one (set compute.devices = 1)",
                self.options.devices
            ));
        }
        if self.backend == BackendKind::Cuda && !cfg!(feature = "cuda") {
            return Err("this graft was built without CUDA: rebuild with `cargo build --release --features cuda`".into());
        }
        #[cfg(feature = "cuda")]
        if self.backend == BackendKind::Cuda {
            if let Some(why) = cuda_kernels::missing_driver() {
                return Err(format!("--backend cuda: {why}"));
            }
        }
        Ok(())
    }

    /// The kernel choices, as the model and optimizer read them.
    pub fn kernels(&self) -> KernelOptions {
        let o = &self.options;
        KernelOptions {
            matmul: o.matmul,
            cublas_min_macs: o.cublas_min_macs as usize,
            cuda_accumulate: o.cuda_accumulate,
            attention: o.attention,
            attention_block_elements: o.attention_block_elements as usize,
            lora_branch: o.lora_branch,
            fused_lora: o.fused_lora,
            fused_swiglu: o.fused_swiglu,
            fused_norm: o.fused_norm,
            cuda_fused_norm: o.cuda_fused_norm,
            cuda_fused_rope: o.cuda_fused_rope,
            cuda_fused_swiglu: o.cuda_fused_swiglu,
            fused_loss: o.fused_loss,
            cuda_fused_loss: o.cuda_fused_loss,
            vector_exp: o.vector_exp,
            recompute_layers: o.checkpointing == Checkpointing::Layers,
            keep_projections: o.keep_projections,
            loss_chunk_tokens: o.loss_chunk_tokens as usize,
            fused_adamw: o.fused_adamw,
            attention_mma_sync: self.gpu_attention == Some(GpuAttention::MmaSync),
        }
    }

    /// Makes this value's kernel choices the ones the process computes with.
    pub fn install(&self) {
        options::install(self.kernels());
    }

    /// The record of this value: `backend` and every `[compute]` key.
    pub fn to_canon(&self) -> Canon {
        let mut map = match Canon::from_serialize(&self.options) {
            Canon::Map(map) => map,
            _ => BTreeMap::new(),
        };
        map.insert("backend".into(), Canon::Str(self.backend.as_str().into()));
        if self.backend == BackendKind::Cpu {
            map.insert(
                "cpu_vectors".into(),
                Canon::Str(self.cpu_vectors.as_str().into()),
            );
        }
        if let Some(kernels) = self.gpu_attention {
            map.insert("gpu_attention".into(), Canon::Str(kernels.as_str().into()));
        }
        Canon::Map(map)
    }

    /// Reads a record written by [`Compute::to_canon`]; keys it lacks take defaults,
    /// but for [`LATER_KEYS`], which take the value that computes as it was computed,
    /// and a CPU record's vectors, which were [`CpuVectors::before_recorded`].
    pub fn from_canon(canon: &Canon) -> Result<Compute, String> {
        let mut json = canon.to_json();
        if let Some(object) = json.as_object_mut() {
            for (key, before) in LATER_KEYS {
                object.entry(key).or_insert(serde_json::Value::Bool(before));
            }
        }
        let backend = take::<BackendKind>(&mut json, "backend")?.unwrap_or_default();
        let cpu_vectors = take::<CpuVectors>(&mut json, "cpu_vectors")?.unwrap_or(match backend {
            BackendKind::Cpu => CpuVectors::before_recorded(),
            BackendKind::Cuda => CpuVectors::of_this_machine(),
        });
        let gpu_attention = take::<GpuAttention>(&mut json, "gpu_attention")?
            .or((backend == BackendKind::Cuda).then(GpuAttention::before_recorded));
        let options = serde_json::from_value(json).map_err(|e| e.to_string())?;
        Ok(Compute {
            backend,
            options,
            cpu_vectors,
            gpu_attention,
        })
    }

    /// Every option whose value differs: `(key, self's value, other's value)`.
    pub fn differences(&self, other: &Compute) -> Vec<(String, String, String)> {
        let (mine, theirs) = (self.to_canon(), other.to_canon());
        let (Canon::Map(mine), Canon::Map(theirs)) = (mine, theirs) else {
            return Vec::new();
        };
        let render = |value: Option<&Canon>| match value.map(Canon::to_json) {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => "-".into(),
        };
        mine.keys()
            .chain(theirs.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|key| mine.get(*key) != theirs.get(*key))
            // Vectors matter where both executions multiply on the CPU; across backends
            // the backend is the difference.
            .filter(|key| {
                !["cpu_vectors", "gpu_attention"].contains(&key.as_str())
                    || self.backend == other.backend
            })
            .map(|key| {
                (
                    format!("compute.{key}"),
                    render(mine.get(key)),
                    render(theirs.get(key)),
                )
            })
            .collect()
    }

    /// How close two executions of one recipe must come when their compute differs:
    /// the largest relative difference of a loss allowed. bf16 rounds every product
    /// to 8 bits of mantissa; f32 kernels differ in summation order only.
    pub fn tolerance(&self, other: &Compute) -> f64 {
        let rounded =
            |c: &Compute| c.options.dtype == Dtype::Bf16 || c.options.base.scheme().is_some();
        if rounded(self) || rounded(other) {
            5e-2
        } else {
            1e-3
        }
    }
}

/// Removes `key` from a record's JSON object and reads it, naming it on error.
fn take<T: serde::de::DeserializeOwned>(
    json: &mut serde_json::Value,
    key: &str,
) -> Result<Option<T>, String> {
    json.as_object_mut()
        .and_then(|object| object.remove(key))
        .map(serde_json::from_value::<T>)
        .transpose()
        .map_err(|e| format!("compute.{key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In the CUDA build: where the machine has no driver, `--backend cuda` is refused
    /// naming what to install, instead of cudarc panicking at its first call.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_without_a_driver_is_refused_naming_what_to_install() {
        let compute = Compute::new(BackendKind::Cuda, ComputeSection::default());
        if cuda_kernels::missing_driver().is_none() {
            eprintln!("skipped: this machine has a CUDA driver");
            return;
        }
        let refused = compute.check().unwrap_err();
        assert!(
            refused.contains("--backend cuda") && refused.contains("install the NVIDIA driver"),
            "{refused}"
        );
    }

    #[test]
    fn a_record_without_the_later_keys_reads_as_the_section_before_them() {
        let Canon::Map(mut record) =
            Compute::new(BackendKind::Cpu, ComputeSection::default()).to_canon()
        else {
            panic!("a map");
        };
        for (key, _) in LATER_KEYS {
            record.remove(key);
        }
        let read = Compute::from_canon(&Canon::Map(record)).unwrap();
        assert_eq!(
            read.options,
            ComputeSection::default().as_recorded_before_later_keys()
        );
        assert_ne!(
            read.options,
            ComputeSection::default(),
            "the keys default to true"
        );
    }

    #[test]
    fn default_compute_adds_nothing_to_the_recipe() {
        assert_eq!(ComputeSection::default().recipe_part(), None);
        let bf16 = ComputeSection {
            dtype: Dtype::Bf16,
            attention: Attention::Burn,
            ..Default::default()
        };
        let part = bf16.recipe_part().expect("bf16 enters the recipe");
        assert_eq!(part.get("dtype"), Some(&Canon::Str("bf16".into())));
        assert!(
            part.get("attention").is_none(),
            "kernels stay on the execution"
        );
    }

    #[test]
    fn differences_name_each_changed_option() {
        let original = Compute::new(BackendKind::Cpu, ComputeSection::default());
        let other = Compute::new(
            BackendKind::Cuda,
            ComputeSection {
                attention: Attention::Burn,
                ..Default::default()
            },
        );
        let keys: Vec<String> = original
            .differences(&other)
            .into_iter()
            .map(|(key, _, _)| key)
            .collect();
        assert_eq!(keys, ["compute.attention", "compute.backend"]);
        let back = Compute::from_canon(&other.to_canon()).unwrap();
        assert_eq!(back, other);
    }

    #[test]
    fn a_cuda_execution_records_its_attention_kernels_and_other_kernels_are_named() {
        let here = Compute::new(BackendKind::Cuda, ComputeSection::default());
        assert_eq!(here.gpu_attention, Some(GpuAttention::of_this_machine()));
        let Canon::Map(record) = here.to_canon() else {
            panic!("a map");
        };
        assert_eq!(
            record.get("gpu_attention"),
            Some(&Canon::Str(GpuAttention::of_this_machine().as_str().into()))
        );
        assert!(!record.contains_key("cpu_vectors"), "{record:?}");
        assert_eq!(
            Compute::from_canon(&Canon::Map(record.clone())).unwrap(),
            here
        );
        // A record from before the key: the mma.sync kernels every CUDA run then used.
        let mut old = record;
        old.remove("gpu_attention");
        let before = Compute::from_canon(&Canon::Map(old)).unwrap();
        assert_eq!(before.gpu_attention, Some(GpuAttention::MmaSync));
        let hopper = Compute {
            gpu_attention: Some(GpuAttention::Wgmma),
            ..before
        };
        let named = hopper.differences(&before);
        assert_eq!(named.len(), 1, "{named:?}");
        assert_eq!(
            named[0],
            (
                "compute.gpu_attention".to_string(),
                "wgmma".to_string(),
                "mma_sync".to_string()
            )
        );
        let note = hopper.vectors_differ_from(&before).expect("not exact");
        assert!(
            note.contains("wgmma") && note.contains("mma_sync"),
            "{note}"
        );
        // A recorded mma.sync execution continues on mma.sync, Hopper or not, and the
        // kernels are told so; a wgmma one takes this machine's kernels.
        let continued = before.on_this_machine();
        assert_eq!(continued.gpu_attention, Some(GpuAttention::MmaSync));
        assert!(continued.kernels().attention_mma_sync);
        assert!(continued.vectors_differ_from(&before).is_none());
        assert_eq!(
            hopper.on_this_machine().gpu_attention,
            Some(GpuAttention::of_this_machine())
        );
        // Moved to the CPU it has none; moved back to CUDA, this machine's.
        let on_cpu = Compute {
            backend: BackendKind::Cpu,
            ..before
        }
        .on_this_machine();
        assert_eq!(on_cpu.gpu_attention, None);
        assert!(!on_cpu.kernels().attention_mma_sync);
        let back = Compute {
            backend: BackendKind::Cuda,
            ..on_cpu
        }
        .on_this_machine();
        assert_eq!(back.gpu_attention, Some(GpuAttention::of_this_machine()));
        // A CPU execution records no attention kernels, and across backends the
        // backend is the difference named.
        let cpu = Compute::new(BackendKind::Cpu, ComputeSection::default());
        let Canon::Map(cpu_record) = cpu.to_canon() else {
            panic!("a map");
        };
        assert!(!cpu_record.contains_key("gpu_attention"));
        assert!(cpu.vectors_differ_from(&hopper).is_none());
        assert!(cpu
            .differences(&hopper)
            .iter()
            .all(|(key, ..)| key != "compute.gpu_attention"));
    }

    #[test]
    fn a_cpu_execution_records_its_vectors_and_another_machines_are_named() {
        let here = Compute::new(BackendKind::Cpu, ComputeSection::default());
        assert_eq!(here.cpu_vectors, CpuVectors::of_this_machine());
        assert_eq!(Compute::from_canon(&here.to_canon()).unwrap(), here);
        // A record from before the key: the kernels this machine then used.
        let Canon::Map(mut record) = here.to_canon() else {
            panic!("a map");
        };
        record.remove("cpu_vectors");
        let before = Compute::from_canon(&Canon::Map(record)).unwrap();
        assert_eq!(before.cpu_vectors, CpuVectors::before_recorded());
        assert_ne!(before.cpu_vectors, CpuVectors::Avx512f);
        let elsewhere = Compute {
            cpu_vectors: if here.cpu_vectors == CpuVectors::Scalar {
                CpuVectors::Fma
            } else {
                CpuVectors::Scalar
            },
            ..here
        };
        let named = elsewhere.differences(&here);
        assert_eq!(named.len(), 1, "{named:?}");
        assert_eq!(named[0].0, "compute.cpu_vectors");
        let note = here.vectors_differ_from(&elsewhere).expect("not exact");
        assert!(note.contains(elsewhere.cpu_vectors.as_str()), "{note}");
        assert_eq!(elsewhere.on_this_machine(), here);
        assert_eq!(here.vectors_differ_from(&here), None);
        // On the GPU the host's vectors compute nothing, so they are not recorded.
        let cuda = Compute::new(BackendKind::Cuda, ComputeSection::default());
        assert!(cuda.to_canon().get("cpu_vectors").is_none());
    }

    #[test]
    fn a_quantized_base_enters_the_recipe_and_bf16_over_bf16_does_not() {
        let nf4 = ComputeSection {
            base: BaseStorage::Nf4,
            ..Default::default()
        };
        let part = nf4.recipe_part().expect("nf4 enters the recipe");
        assert_eq!(part.get("base"), Some(&Canon::Str("nf4".into())));
        let spelled = ComputeSection {
            dtype: Dtype::Bf16,
            base: BaseStorage::Bf16,
            ..Default::default()
        };
        let plain = ComputeSection {
            dtype: Dtype::Bf16,
            ..Default::default()
        };
        assert_eq!(spelled.recipe_part(), plain.recipe_part());
        assert_eq!(
            Compute::new(BackendKind::Cuda, spelled),
            Compute::new(BackendKind::Cuda, plain)
        );
        let refused = ComputeSection {
            base: BaseStorage::Bf16,
            ..Default::default()
        };
        assert!(refused.validate().unwrap_err().contains("compute.base"));
    }

    #[test]
    fn bf16_on_the_cpu_is_refused_naming_the_key() {
        let compute = Compute::new(
            BackendKind::Cpu,
            ComputeSection {
                dtype: Dtype::Bf16,
                ..Default::default()
            },
        );
        assert!(compute.check().unwrap_err().contains("compute.dtype"));
    }
}

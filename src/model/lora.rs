//! Linear projections with an optional LoRA branch, and the adapter-level operations:
//! attach a fresh adapter, merge it into the base weights, and the PEFT naming rules.
//!
//! The forward is `W x (+ bias) + s * B(A dropout(x))` with `s = alpha / r` (or
//! `alpha / sqrt(r)` for rsLoRA). `W + s*BA` is never formed in training: the branch
//! costs two thin matmuls and keeps the base weight frozen and shared. `B` starts at
//! zero so an untrained adapter returns exactly the base output (the branch adds +0.0).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;

use crate::compute::kernels::Kernels;
use crate::model::quantized::QuantizedWeight;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::ModelError;

/// The seven projections of a Llama decoder layer, in PEFT's module names: the
/// default targets, which [`LoraConfig::for_projections`] maps onto a family that fuses
/// some of them.
pub const ALL_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Projections one module computes in some families (Phi-3), with the separate
/// projections it stands for. PEFT targets the fused module as one.
pub const FUSED_TARGETS: [(&str, &[&str]); 2] = [
    ("qkv_proj", &["q_proj", "k_proj", "v_proj"]),
    ("gate_up_proj", &["gate_proj", "up_proj"]),
];

/// Whether `name` is a projection of some supported family.
pub fn is_known_target(name: &str) -> bool {
    ALL_TARGETS.contains(&name) || FUSED_TARGETS.iter().any(|(fused, _)| *fused == name)
}

/// LoRA hyperparameters (what PEFT's `LoraConfig` calls r, lora_alpha, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names such as `q_proj`; a projection is adapted if its name is listed.
    pub targets: Vec<String>,
    /// rsLoRA: scale by `alpha / sqrt(rank)` instead of `alpha / rank`.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// The factor `s` applied to `B(A x)`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Rejects rank 0, dropout outside [0, 1) and target names that are no projection.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.rank == 0 {
            return Err(ModelError::Adapter {
                message: "rank must be at least 1".into(),
            });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Adapter {
                message: format!("dropout {} is outside [0, 1)", self.dropout),
            });
        }
        for target in &self.targets {
            if !is_known_target(target) {
                let fused = FUSED_TARGETS.map(|(name, _)| name);
                return Err(ModelError::Adapter {
                    message: format!(
                        "target module `{target}` is not one of {}, or Phi-3's {}",
                        ALL_TARGETS.join(", "),
                        fused.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// This config with its targets named as a model whose projections are
    /// `available` names them (`model_type` for messages). A fused projection stands
    /// for its parts: targeting all of `q_proj`, `k_proj` and `v_proj` on Phi-3 targets
    /// its `qkv_proj`, and `qkv_proj` on a model with separate projections targets the
    /// three. Targeting only some parts of a fused projection, or a projection the
    /// model lacks, is an error naming it. Targets the model has stay as they are.
    pub fn for_projections(
        &self,
        available: &[&str],
        model_type: &str,
    ) -> Result<LoraConfig, ModelError> {
        let mut targets: Vec<String> = Vec::new();
        let mut push = |name: &str| {
            if !targets.iter().any(|t| t == name) {
                targets.push(name.to_string());
            }
        };
        for target in &self.targets {
            let target = target.as_str();
            if available.contains(&target) {
                push(target);
                continue;
            }
            let fused_into = FUSED_TARGETS
                .iter()
                .find(|(fused, parts)| parts.contains(&target) && available.contains(fused));
            let split_into = FUSED_TARGETS.iter().find(|(fused, parts)| {
                *fused == target && parts.iter().all(|part| available.contains(part))
            });
            match (fused_into, split_into) {
                (Some((fused, parts)), _) => {
                    if let Some(missing) = parts.iter().find(|p| !self.targets_module(p)) {
                        return Err(ModelError::Adapter {
                            message: format!(
                                "target `{target}`: a {model_type} model computes {} in one `{fused}`, so an adapter targets all of them or `{fused}` (`{missing}` is not targeted)",
                                parts.join(", ")
                            ),
                        });
                    }
                    push(fused);
                }
                (None, Some((_, parts))) => parts.iter().for_each(|part| push(part)),
                (None, None) => {
                    return Err(ModelError::Adapter {
                        message: format!(
                            "target module `{target}` is not a projection of a {model_type} model (it has {})",
                            available.join(", ")
                        ),
                    })
                }
            }
        }
        Ok(LoraConfig {
            targets,
            ..self.clone()
        })
    }

    pub fn targets_module(&self, name: &str) -> bool {
        self.targets.iter().any(|t| t == name)
    }
}

/// The dtype an adapted projection's branch computes in, for activations in
/// `activations` and an adapter stored in `adapter`.
///
/// By default the activations' dtype, as autocast (and Unsloth) would run an f32
/// adapter on a bf16 base: A and B are rounded to bf16 for the products, while their
/// gradients and optimizer state stay f32. With `compute.lora_branch = "f32"`, the
/// adapter's own dtype when that is f32, as PEFT casts the input to
/// `lora_A.weight.dtype`: `x A`, `(x A) B` and their sum with the base output in f32,
/// rounded to bf16 once (a projection's bias, where it has one, is added after that).
///
/// The choice trades speed for closeness to an f32 run. On the H200, llama-1b made
/// 39,060 tokens/s with the bf16 branch and 36,385 with the f32 one, in one call
/// (2026-11-28), against 36,106 for transformers + PEFT. On the shared fixtures,
/// transformers + PEFT itself drifts from its f32 output by up to 4.2e-2 (adapted
/// logits) with its adapter in bf16 and 1.3e-2 with it in f32
/// (`benches/hf_bf16_deviation.py`): rounding A, B and the rank-wide `x A` perturbs
/// every output along the same few directions, so the error does not average out.
pub fn branch_dtype(activations: DType, adapter: DType) -> DType {
    if adapter == DType::F32
        && crate::compute::options::current().lora_branch == crate::compute::LoraBranch::F32
    {
        adapter
    } else {
        activations
    }
}

/// `tensor` in `dtype`, without a cast (or an autodiff node) when it already is.
pub fn in_dtype<B: Backend, const D: usize>(tensor: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if tensor.dtype() == dtype {
        tensor
    } else {
        tensor.cast(dtype)
    }
}

/// The low-rank branch of an adapted projection.
#[derive(Module, Debug)]
pub struct LoraBranch<B: Backend> {
    /// `[d_in, rank]` (PEFT's `lora_A.weight` is `[rank, d_in]`).
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[rank, d_out]` (PEFT's `lora_B.weight` is `[d_out, rank]`).
    pub lora_b: Param<Tensor<B, 2>>,
    pub scale: f64,
    pub dropout: f64,
}

/// A linear projection `y = x W + b`, optionally with a LoRA branch. The base weight
/// is a float parameter, or, with `compute.base = "int8" | "nf4"`, a frozen quantized
/// weight that is not a parameter at all (exactly one of the two is set).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]`: burn's layout, the transpose of HF's `[out, in]`.
    pub weight: Option<Param<Tensor<B, 2>>>,
    /// The quantized base, HF layout `[out, in]`.
    pub quantized: Option<QuantizedWeight<B>>,
    /// `[d_out]`
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<LoraBranch<B>>,
}

impl<B: Backend> Linear<B> {
    /// A projection from a weight in burn layout `[d_in, d_out]`.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Linear {
            weight: Some(Param::from_tensor(weight)),
            quantized: None,
            bias: bias.map(Param::from_tensor),
            lora: None,
        }
    }

    /// A projection over a quantized frozen weight.
    pub fn quantized(weight: QuantizedWeight<B>, bias: Option<Tensor<B, 1>>) -> Self {
        Linear {
            weight: None,
            quantized: Some(weight),
            bias: bias.map(Param::from_tensor),
            lora: None,
        }
    }

    pub fn d_in(&self) -> usize {
        match (&self.weight, &self.quantized) {
            (Some(weight), _) => weight.dims()[0],
            (None, Some(quantized)) => quantized.shape()[1],
            (None, None) => unreachable!("a projection has a float or a quantized weight"),
        }
    }

    pub fn d_out(&self) -> usize {
        match (&self.weight, &self.quantized) {
            (Some(weight), _) => weight.dims()[1],
            (None, Some(quantized)) => quantized.shape()[0],
            (None, None) => unreachable!("a projection has a float or a quantized weight"),
        }
    }

    fn device(&self) -> B::Device {
        match (&self.weight, &self.quantized) {
            (Some(weight), _) => weight.device(),
            (None, Some(quantized)) => quantized.device(),
            (None, None) => unreachable!("a projection has a float or a quantized weight"),
        }
    }

    /// The base weight in burn layout `[d_in, d_out]`, dequantized (in f32) where it is
    /// quantized.
    pub fn float_weight(&self) -> Tensor<B, 2> {
        match (&self.weight, &self.quantized) {
            (Some(weight), _) => weight.val(),
            (None, Some(quantized)) => quantized.dequantize(DType::F32).transpose(),
            (None, None) => unreachable!("a projection has a float or a quantized weight"),
        }
    }

    /// Replaces a quantized base with its dequantized values as a frozen f32
    /// parameter (what a merged export writes).
    pub fn dequantize_base(&mut self) {
        if self.quantized.is_some() {
            let weight = self.float_weight().detach();
            self.weight = Some(Param::from_tensor(weight).set_require_grad(false));
            self.quantized = None;
        }
    }
}

impl<B: Kernels> Linear<B> {
    /// Whether [`Linear::forward`] runs as one adapted-projection node over the rows of
    /// its input: for such projections `[rows, d_in]` and `[..., d_in]` inputs compute
    /// the same, and projections sharing an input can share one `[rows, d_in]` view of
    /// it, so that the parts of its gradient meet in graft's nodes
    /// (`compute::grad_sum`) and not in burn's reshape, which adds on one thread.
    pub fn fused_over_rows(&self) -> bool {
        self.fused_lora().is_some()
    }

    fn fused_lora(&self) -> Option<&LoraBranch<B>> {
        let base = self.weight.is_some() || self.quantized.is_some();
        self.lora
            .as_ref()
            .filter(|lora| base && lora.dropout == 0.0 && B::fused_lora())
    }

    /// x: `[..., d_in]` -> `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let fused = self.fused_lora();
        let bias = self.bias.as_ref().map(|b| b.val());
        let base = match (&self.weight, &self.quantized, fused) {
            (Some(weight), _, Some(lora)) => {
                return self.fused_forward(x, lora, |rows, a, b, scale, branch| {
                    B::lora_projection(rows, weight.val(), a, b, scale, branch)
                })
            }
            (None, Some(quantized), Some(lora)) => {
                return self.fused_forward(x, lora, |rows, a, b, scale, branch| {
                    B::quantized_lora_projection(rows, quantized, a, b, scale, branch)
                })
            }
            (Some(weight), _, None) => project(x.clone(), weight.val(), bias),
            (None, Some(quantized), None) => over_rows(x.clone(), self.d_out(), bias, |rows| {
                B::quantized_product(rows, quantized)
            }),
            (None, None, _) => unreachable!("a projection has a float or a quantized weight"),
        };
        match &self.lora {
            None => base,
            Some(lora) => {
                // Dropout only on the adapter input, and only where gradients are
                // recorded (training); PEFT does the same.
                let x = if lora.dropout > 0.0 && B::ad_enabled(&x.device()) {
                    let keep = 1.0 - lora.dropout;
                    let mask = x.random_like(Distribution::Bernoulli(keep));
                    x * mask / keep
                } else {
                    x
                };
                // The branch runs in `branch_dtype`; the casts are differentiable, so
                // gradients and optimizer state keep the adapter's dtype. Same dtype
                // throughout: no cast, no node.
                let dtype = x.dtype();
                let branch = branch_dtype(dtype, lora.lora_a.val().dtype());
                let down = project(
                    in_dtype(x, branch),
                    in_dtype(lora.lora_a.val(), branch),
                    None,
                );
                let up = project(down, in_dtype(lora.lora_b.val(), branch), None) * lora.scale;
                if branch == dtype {
                    base + up
                } else {
                    (base.cast(branch) + up).cast(dtype)
                }
            }
        }
    }

    /// The adapted projection as one autodiff node (`lora_product`), on the training
    /// backends: `node(rows, A, B, scale, branch dtype)`.
    fn fused_forward<const D: usize>(
        &self,
        x: Tensor<B, D>,
        lora: &LoraBranch<B>,
        node: impl FnOnce(Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>, f64, DType) -> Option<Tensor<B, 2>>,
    ) -> Tensor<B, D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        over_rows(x, self.d_out(), bias, |rows| {
            let branch = branch_dtype(rows.dtype(), lora.lora_a.val().dtype());
            node(
                rows,
                lora.lora_a.val(),
                lora.lora_b.val(),
                lora.scale,
                branch,
            )
            .expect("checked by the caller")
        })
    }
}

impl<B: Backend> Linear<B> {
    /// Attaches a fresh LoRA branch: `A` kaiming-uniform as PEFT
    /// (`kaiming_uniform_(a=sqrt(5))`, i.e. U(-1/sqrt(d_in), 1/sqrt(d_in))), `B` zero.
    pub fn attach_lora(&mut self, config: &LoraConfig, rng: &mut ChaCha8Rng) {
        let (d_in, d_out) = (self.d_in(), self.d_out());
        let device = self.device();
        let bound = 1.0 / (d_in as f64).sqrt();
        // PEFT's lora_A is [rank, d_in]; draw in that order so a seed gives the same
        // numbers whichever layout stores them, then transpose.
        let values: Vec<f32> = (0..config.rank * d_in)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::<B, 2>::from_data(TensorData::new(values, [config.rank, d_in]), &device)
            .transpose();
        let b = Tensor::<B, 2>::zeros([config.rank, d_out], &device);
        self.lora = Some(LoraBranch {
            lora_a: Param::from_tensor(a),
            lora_b: Param::from_tensor(b),
            scale: config.scale(),
            dropout: config.dropout,
        });
    }

    /// Sets the branch from PEFT-layout tensors: A `[rank, d_in]`, B `[d_out, rank]`.
    pub fn set_lora(&mut self, a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f64, dropout: f64) {
        self.lora = Some(LoraBranch {
            lora_a: Param::from_tensor(a.transpose()),
            lora_b: Param::from_tensor(b.transpose()),
            scale,
            dropout,
        });
    }

    /// Folds the branch into the weight: `W' = W + s * A B` (burn layout), removing it;
    /// a quantized W is dequantized first.
    pub fn merge_lora(&mut self) {
        if let Some(lora) = self.lora.take() {
            let delta = lora.lora_a.val().matmul(lora.lora_b.val()) * lora.scale;
            let require_grad = self.weight.as_ref().is_some_and(|w| w.is_require_grad());
            // A quantized base merges into its dequantized values.
            let merged = self.float_weight() + delta;
            self.weight = Some(Param::from_tensor(merged.detach()).set_require_grad(require_grad));
            self.quantized = None;
        }
    }
}

/// `x W (+ b)` for x `[..., d_in]` and W `[d_in, d_out]`: the leading dims folded into
/// one, so that W is a single matrix rather than broadcast, and the product made where
/// the backend makes it best (`compute::gemm::matmul`: cuBLAS on CUDA, graft's CPU
/// product on the CPU), where the backend says so (`Kernels::folds_projection`);
/// elsewhere burn's `linear`.
pub fn project<B: Kernels, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    // The rows of each matrix `linear` multiplies: one product per batch row.
    let rows_per_matrix = if D >= 2 { x.dims()[D - 2] } else { 1 };
    if !B::folds_projection(&weight, rows_per_matrix) {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let d_out = weight.dims()[1];
    over_rows(x, d_out, bias, |rows| {
        crate::compute::gemm::matmul(rows, weight)
    })
}

/// `product` applied to x `[..., d_in]` folded into rows `[n, d_in]`, plus the bias,
/// unfolded back to `[..., d_out]`.
fn over_rows<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    d_out: usize,
    bias: Option<Tensor<B, 1>>,
    product: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    // Rows already: no reshape node, so that projections sharing this input register
    // their gradients on it directly. (A same-shape reshape would also have made a
    // strided view contiguous; the one caller with rows, `llama::on_shared_rows`,
    // passes a contiguous reshape.)
    let out = if D == 2 {
        product(Tensor::from_primitive(x.into_primitive()))
    } else {
        product(x.reshape([rows, dims[D - 1]]))
    };
    let out = match bias {
        Some(bias) => out + bias.unsqueeze(),
        None => out,
    };
    if D == 2 {
        return Tensor::from_primitive(out.into_primitive());
    }
    let mut out_dims = dims;
    out_dims[D - 1] = d_out;
    out.reshape(out_dims)
}

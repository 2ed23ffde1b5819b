//! The kernels trait: the operations the model and the optimizer may run faster than
//! burn's op-by-op path, as methods of the backend type (as llama-burn extends burn's
//! `Backend`). Each method's default hands its inputs back, and the caller computes the
//! op by op; the CPU training backends and the CUDA backends override what they have.
//! The model is generic over `B: Kernels`, so a backend's kernels are chosen by its type
//! at compile time, and the choices a [`super::Compute`] value makes (attention, fused
//! nodes, matmul) are read from [`super::options`].

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, Int, Tensor, TensorMetadata};
use burn_flex::FlexTensor;

use super::options::current;
use super::{
    cpu_adamw, cpu_attention, cpu_elementwise, cpu_loss, cpu_matmul, cpu_norm, cpu_residual,
    cpu_rope, cpu_swiglu, Attention,
};
use crate::model::quantized::QuantizedWeight;

/// Three tensors handed back.
pub type Qkv<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);
/// Two tensors handed back.
pub type Pair<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>);
/// Three tensors of one rank handed back.
pub type Triple<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>);
/// The fused AdamW's result: new parameters, moments `m` and `v`, and the norm.
pub type AdamWUpdate<B> = (Vec<Tensor<B, 1>>, Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>);
/// The fused AdamW's inputs handed back: parameters, gradients, `m`, `v`.
pub type AdamWInputs<B> = (
    Vec<Tensor<B, 1>>,
    Vec<Tensor<B, 1>>,
    Tensor<B, 1>,
    Tensor<B, 1>,
);

/// The host AdamW's result: new parameters, moments `m` and `v`.
pub type HostAdamWUpdate<B> = (Vec<Tensor<B, 1>>, Tensor<B, 1>, Tensor<B, 1>);
/// The host AdamW's inputs handed back: parameters, the flat gradient, `m`, `v`.
pub type HostAdamWInputs<B> = (Vec<Tensor<B, 1>>, Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>);

/// The scalars of one AdamW update over a flat group.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Hyper {
    /// Gradient scale, applied before the norm.
    pub scale: f32,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// What the parameter is multiplied by before the update (decoupled weight decay).
    pub decay: f32,
    pub correction1: f32,
    pub correction2: f32,
}

/// A burn backend with graft's kernels.
pub trait Kernels: Backend {
    /// Causal softmax attention, `softmax(Q Kᵀ / sqrt(d)) V`, with queries aligned to
    /// the last `seq` of `t` key positions. q: `[batch, heads, seq, d]`, k and v:
    /// `[batch, kv_heads, t, d]` (kv heads not yet repeated) -> `[batch, heads, seq, d]`.
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
    ) -> Result<Tensor<Self, 4>, Qkv<Self>> {
        Err((q, k, v))
    }

    /// Whether [`Kernels::causal_attention`] runs a fused node here (which reads
    /// grouped kv heads in place, so the caller must not repeat them).
    fn fused_attention() -> bool {
        false
    }

    /// Which attention runs for this head size and dtype, for reports.
    fn attention_label(_head_dim: usize, _dtype: DType) -> &'static str {
        if Self::fused_attention() {
            "blocked"
        } else {
            "burn"
        }
    }

    /// HF's rotary embedding, `x * cos + rotate_half(x) * sin`. x: `[b, h, s, d]`.
    fn rope(
        x: Tensor<Self, 4>,
        _cos: &Tensor<Self, 4>,
        _sin: &Tensor<Self, 4>,
    ) -> Result<Tensor<Self, 4>, Tensor<Self, 4>> {
        Err(x)
    }

    /// RMSNorm over the last dimension, `x / sqrt(mean(x²) + eps) * w` (with
    /// `plus_one`, Gemma's `* (1 + w)`); w is `[width]`.
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        _eps: f64,
        _plus_one: bool,
    ) -> Result<Tensor<Self, D>, (Tensor<Self, D>, Tensor<Self, 1>)> {
        Err((x, weight))
    }

    /// SwiGLU's gating, `silu(gate) * up`.
    fn swiglu(
        gate: Tensor<Self, 3>,
        up: Tensor<Self, 3>,
    ) -> Result<Tensor<Self, 3>, Pair<Self, 3>> {
        Err((gate, up))
    }

    /// Whether [`Kernels::lora_projection`] runs here.
    fn fused_lora() -> bool {
        false
    }

    /// `x W + scale (x A) B` for x `[n, d_in]`, W `[d_in, d_out]`, A `[d_in, r]`, B
    /// `[r, d_out]`, the branch computed in `branch`; `None` where not
    /// [`Kernels::fused_lora`].
    fn lora_projection(
        _x: Tensor<Self, 2>,
        _weight: Tensor<Self, 2>,
        _lora_a: Tensor<Self, 2>,
        _lora_b: Tensor<Self, 2>,
        _scale: f64,
        _branch: DType,
    ) -> Option<Tensor<Self, 2>> {
        None
    }

    /// `x · dequant(W)ᵀ` for x `[n, in]` and a quantized frozen W `[out, in]` ->
    /// `[n, out]`. The training backends run it as one node that keeps no float copy
    /// of W between the passes (`quant_product`); elsewhere it is op by op.
    fn quantized_product(x: Tensor<Self, 2>, weight: &QuantizedWeight<Self>) -> Tensor<Self, 2> {
        super::quant_product::quantized_product(x, weight)
    }

    /// A quantized weight's values as `[out, in]` in `dtype`: one kernel where the
    /// backend has it (CUDA), else burn's ops ([`QuantizedWeight::dequantize`]); the
    /// same values either way.
    fn dequantized(weight: &QuantizedWeight<Self>, dtype: DType) -> Tensor<Self, 2> {
        weight.dequantize(dtype)
    }

    /// [`Kernels::lora_projection`] over a quantized frozen W `[out, in]`, dequantized in
    /// each pass; `None` where not [`Kernels::fused_lora`].
    fn quantized_lora_projection(
        _x: Tensor<Self, 2>,
        _weight: &QuantizedWeight<Self>,
        _lora_a: Tensor<Self, 2>,
        _lora_b: Tensor<Self, 2>,
        _scale: f64,
        _branch: DType,
    ) -> Option<Tensor<Self, 2>> {
        None
    }

    /// Whether [`Kernels::token_loss_sum`] runs here.
    fn fused_loss() -> bool {
        false
    }

    /// `Σ_n weights[n] · (logsumexp(logits[n]) - logits[n, targets[n]])` as `[1]` (f32),
    /// for logits `[n, vocab]`; `None` where not [`Kernels::fused_loss`].
    fn token_loss_sum(
        _logits: Tensor<Self, 2>,
        _targets: Tensor<Self, 1, Int>,
        _weights: Tensor<Self, 1>,
    ) -> Option<Tensor<Self, 1>> {
        None
    }

    /// `x + y`, a residual sum of the model: burn's own unless the backend does better.
    fn residual_sum<const D: usize>(x: Tensor<Self, D>, y: Tensor<Self, D>) -> Tensor<Self, D> {
        x + y
    }

    /// `new + old`, two parts of one gradient ([`super::grad_sum`]): burn's own sum
    /// unless the backend does better.
    fn gradient_sum(
        new: Self::FloatTensorPrimitive,
        old: Self::FloatTensorPrimitive,
    ) -> Self::FloatTensorPrimitive {
        Self::float_add(new, old)
    }

    /// Runs one training step's work: on the CPU with the pool's other workers kept
    /// from sleeping between the step's operations ([`super::cpu_pool`]).
    fn step_work<R>(work: impl FnOnce() -> R) -> R {
        work()
    }

    /// Whether [`Kernels::matmul`] reaches a faster library (cuBLAS) here.
    fn accelerated_matmul() -> bool {
        false
    }

    /// `lhs @ rhs` with equal batch dims, through the faster library.
    fn matmul<const D: usize>(
        lhs: Tensor<Self, D>,
        rhs: Tensor<Self, D>,
    ) -> Result<Tensor<Self, D>, Pair<Self, D>> {
        Err((lhs, rhs))
    }

    /// Whether `lora::project` folds its input's leading dims into rows (`rows` of them
    /// in each matrix burn's `linear` would multiply) and makes one product through
    /// [`crate::compute::gemm::matmul`] for this weight, rather than burn's `linear`
    /// (where that is what the backend does best, and the bits are `linear`'s).
    fn folds_projection(_weight: &Tensor<Self, 2>, _rows: usize) -> bool {
        Self::accelerated_matmul()
    }

    /// `lhs @ rhs` where no faster library serves it (burn's matmul unless the
    /// backend does better).
    fn host_matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        lhs.matmul(rhs)
    }

    /// `a + scale · b` for tensors of one shape (`scale · b` rounded first, as
    /// burn's ops round it).
    fn add_scaled<const D: usize>(
        a: Tensor<Self, D>,
        b: Tensor<Self, D>,
        scale: f64,
    ) -> Tensor<Self, D> {
        if scale == 1.0 {
            a + b
        } else {
            a + b.mul_scalar(scale)
        }
    }

    /// `alpha · lhs @ rhs`, the result in f32 when `out_f32`, through the faster library
    /// on inner backends.
    fn matmul_with<const D: usize>(
        lhs: Tensor<Self, D>,
        rhs: Tensor<Self, D>,
        _alpha: f64,
        _out_f32: bool,
    ) -> Result<Tensor<Self, D>, Pair<Self, D>> {
        Err((lhs, rhs))
    }

    /// `base + alpha · lhs @ rhs` with the sum taken by the faster library, for
    /// operands [`Kernels::matmul_with`] takes and `base` shaped as their product.
    fn matmul_add<const D: usize>(
        base: Tensor<Self, D>,
        lhs: Tensor<Self, D>,
        rhs: Tensor<Self, D>,
        _alpha: f64,
    ) -> Result<Tensor<Self, D>, Triple<Self, D>> {
        Err((base, lhs, rhs))
    }

    /// Whether [`Kernels::adamw`] runs here.
    fn fused_adamw() -> bool {
        false
    }

    /// One AdamW step over `params` and the group's flat moments, clipping the scaled
    /// gradients' global norm to `clip` when positive; all f32.
    fn adamw(
        params: Vec<Tensor<Self, 1>>,
        grads: Vec<Tensor<Self, 1>>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        _hyper: Hyper,
        _clip: f32,
    ) -> Result<AdamWUpdate<Self>, AdamWInputs<Self>> {
        Err((params, grads, m, v))
    }

    /// One AdamW update of a flat group with the op-by-op update's bits, faster
    /// (on all cores on the CPU, [`cpu_adamw`]): `params` are the members, `grad` the
    /// group's flat gradient, multiplied first by `clip_factor` (`[1]`) where given.
    fn host_adamw(
        params: Vec<Tensor<Self, 1>>,
        grad: Tensor<Self, 1>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        _scalars: cpu_adamw::Scalars,
        _clip_factor: Option<Tensor<Self, 1>>,
    ) -> Result<HostAdamWUpdate<Self>, HostAdamWInputs<Self>> {
        Err((params, grad, m, v))
    }

    /// Device `index` of this backend (the CPU backends have one).
    fn device(index: usize) -> Result<Self::Device, String> {
        if index == 0 {
            Ok(Default::default())
        } else {
            Err(format!(
                "device {index}: this backend has one device (set compute.devices = 1)"
            ))
        }
    }

    /// Bytes of `device` memory the calling thread's pool holds, where the backend keeps
    /// one (cubecl's pools keep what a step reserved until the run ends).
    fn pool_reserved(_device: &Self::Device) -> Option<u64> {
        None
    }

    /// Whether [`Kernels::all_reduce_sum`] can run here: `Err` says what is missing.
    fn collectives() -> Result<(), String> {
        Err("compute.devices names several devices: only the CUDA backend trains on more than one (set compute.devices = 1)".into())
    }

    /// The element-wise sum of the same-shaped `tensor` held on each of `devices`,
    /// returned on every one of them; each device's thread calls it with its own
    /// tensor and the same `devices`, in the same order of calls.
    fn all_reduce_sum(tensor: Tensor<Self, 1>, devices: &[Self::Device]) -> Tensor<Self, 1> {
        assert!(
            devices.len() <= 1,
            "summing over several devices needs a backend with collectives"
        );
        tensor
    }
}

/// An autodiff backend with graft's kernels on both sides: what training runs on.
pub trait TrainKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}
impl<B: AutodiffBackend<InnerBackend: Kernels> + Kernels> TrainKernels for B {}

/// The CPU inference backend and the inner backend of the CPU training nodes: burn's
/// ops, with 2-D f32 products through [`cpu_matmul`] (gemm writing a fresh buffer).
impl Kernels for Flex {
    /// The CPU product ([`cpu_matmul`]) has `linear`'s bits and no output zeroed on one
    /// thread, for more than 64 rows (see [`cpu_folds`]).
    fn folds_projection(weight: &Tensor<Self, 2>, rows: usize) -> bool {
        cpu_folds(weight, rows)
    }

    fn host_matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        if D != 2 {
            return lhs.matmul(rhs);
        }
        let rank2 =
            |t: Tensor<Self, D>| -> Tensor<Self, 2> { Tensor::from_primitive(t.into_primitive()) };
        let back =
            |t: Tensor<Self, 2>| -> Tensor<Self, D> { Tensor::from_primitive(t.into_primitive()) };
        let (lhs, rhs) = (rank2(lhs), rank2(rhs));
        if cpu_matmul::supports(&lhs, &rhs) {
            back(cpu_matmul::matmul(lhs, rhs))
        } else {
            back(lhs.matmul(rhs))
        }
    }

    /// On all cores (Flex adds on one thread below 4 Mi elements); the same bits.
    fn residual_sum<const D: usize>(x: Tensor<Self, D>, y: Tensor<Self, D>) -> Tensor<Self, D> {
        Self::add_scaled(x, y, 1.0)
    }

    /// On all cores (Flex adds on one thread below 4 Mi elements); the same bits.
    fn gradient_sum(new: FlexTensor, old: FlexTensor) -> FlexTensor {
        let f32s = new.dtype() == DType::F32 && old.dtype() == DType::F32;
        if f32s && new.shape() == old.shape() {
            cpu_elementwise::sum(new, old)
        } else {
            Self::float_add(new, old)
        }
    }

    fn host_adamw(
        params: Vec<Tensor<Self, 1>>,
        grad: Tensor<Self, 1>,
        m: Tensor<Self, 1>,
        v: Tensor<Self, 1>,
        scalars: cpu_adamw::Scalars,
        clip_factor: Option<Tensor<Self, 1>>,
    ) -> Result<HostAdamWUpdate<Self>, HostAdamWInputs<Self>> {
        let f32s = params
            .iter()
            .chain([&grad, &m, &v])
            .all(|t| t.dtype() == DType::F32);
        if !f32s {
            return Err((params, grad, m, v));
        }
        let clip = clip_factor.map(|factor| {
            factor
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 values")[0]
        });
        let primitive = |t: Tensor<Self, 1>| t.into_primitive().tensor();
        let (params, m, v) = cpu_adamw::step(
            params.into_iter().map(primitive).collect(),
            primitive(grad),
            primitive(m),
            primitive(v),
            cpu_adamw::Scalars { clip, ..scalars },
        );
        let tensor = |p| Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(p));
        Ok((
            params.into_iter().map(tensor).collect(),
            tensor(m),
            tensor(v),
        ))
    }

    fn add_scaled<const D: usize>(
        a: Tensor<Self, D>,
        b: Tensor<Self, D>,
        scale: f64,
    ) -> Tensor<Self, D> {
        if cpu_elementwise::supports(&a, &b) {
            cpu_elementwise::add_scaled(a, b, scale)
        } else if scale == 1.0 {
            a + b
        } else {
            a + b.mul_scalar(scale)
        }
    }
}

/// Whether a CPU projection folds its rows into one 2-D product; `rows` is the rows of
/// each matrix burn's `linear` would multiply (the last but one dim: `linear` makes one
/// product per batch row). gemm picks some paths by size: products at most 64 by 64
/// (and one-wide ones) sum in other passes over `k`, so folding 2 x 40 rows into 80
/// changes the bits where the output is at most 64 wide. With more than 64 rows a
/// matrix neither `linear`'s products nor the folded one take such a path, and the
/// bits are `linear`'s.
fn cpu_folds<B: Backend>(weight: &Tensor<B, 2>, rows: usize) -> bool {
    weight.dtype() == DType::F32 && rows > 64
}

/// The CPU training backends: graft's fused nodes, deterministic on any thread count.
impl<C: CheckpointStrategy> Kernels for Autodiff<Flex, C> {
    /// 2-D f32 products (the model's head, and projections without an adapter) as one
    /// node whose forward and backward products are [`cpu_matmul`]'s, without Flex's
    /// output zeroed on one thread (the head's logits are `[tokens, vocabulary]`). The
    /// same bits as burn's product and gradients.
    fn host_matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        if D == 2 && lhs.dtype() == DType::F32 && rhs.dtype() == DType::F32 {
            super::gemm::autodiff_matmul::<Flex, C, D>(lhs, rhs)
        } else {
            lhs.matmul(rhs)
        }
    }

    /// A frozen weight (the head, unless unfrozen): the value and the input's gradient
    /// are `linear`'s bits. A trained one keeps `linear`, which sums the weight's
    /// gradient one batch row at a time, where the folded product would sum it in one
    /// pass and change the bits of CPU runs recorded before.
    fn folds_projection(weight: &Tensor<Self, 2>, rows: usize) -> bool {
        cpu_folds(weight, rows) && !weight.clone().into_primitive().tensor().is_tracked()
    }

    fn step_work<R>(work: impl FnOnce() -> R) -> R {
        super::cpu_pool::with_workers_awake(work)
    }

    /// One node on all cores ([`cpu_residual`]), burn's `add` bits and gradients.
    fn residual_sum<const D: usize>(x: Tensor<Self, D>, y: Tensor<Self, D>) -> Tensor<Self, D> {
        if cpu_residual::supports(&x, &y) {
            cpu_residual::residual_sum(x, y)
        } else {
            x + y
        }
    }

    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
    ) -> Result<Tensor<Self, 4>, Qkv<Self>> {
        if !Self::fused_attention() || !cpu_attention::supports(&[q.dtype(), k.dtype(), v.dtype()])
        {
            return Err((q, k, v));
        }
        Ok(cpu_attention::causal_attention::<C>(q, k, v))
    }

    fn fused_attention() -> bool {
        current().attention != Attention::Burn
    }

    fn rope(
        x: Tensor<Self, 4>,
        cos: &Tensor<Self, 4>,
        sin: &Tensor<Self, 4>,
    ) -> Result<Tensor<Self, 4>, Tensor<Self, 4>> {
        if x.dtype() != DType::F32 {
            return Err(x);
        }
        Ok(cpu_rope::rotate::<C>(x, cos, sin))
    }

    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
        plus_one: bool,
    ) -> Result<Tensor<Self, D>, (Tensor<Self, D>, Tensor<Self, 1>)> {
        if !current().fused_norm || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return Err((x, weight));
        }
        Ok(cpu_norm::rms_norm::<C, D>(x, weight, eps, plus_one))
    }

    fn swiglu(
        gate: Tensor<Self, 3>,
        up: Tensor<Self, 3>,
    ) -> Result<Tensor<Self, 3>, Pair<Self, 3>> {
        if !current().fused_swiglu || gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
            return Err((gate, up));
        }
        Ok(cpu_swiglu::gate::<C>(gate, up))
    }

    fn fused_lora() -> bool {
        current().fused_lora
    }

    fn lora_projection(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        lora_a: Tensor<Self, 2>,
        lora_b: Tensor<Self, 2>,
        scale: f64,
        branch: DType,
    ) -> Option<Tensor<Self, 2>> {
        Self::fused_lora().then(|| {
            super::lora_product::lora_projection_autodiff::<Flex, C>(
                x, weight, lora_a, lora_b, scale, branch,
            )
        })
    }

    fn quantized_product(x: Tensor<Self, 2>, weight: &QuantizedWeight<Self>) -> Tensor<Self, 2> {
        super::quant_product::quantized_product_autodiff::<Flex, C>(x, weight)
    }

    fn quantized_lora_projection(
        x: Tensor<Self, 2>,
        weight: &QuantizedWeight<Self>,
        lora_a: Tensor<Self, 2>,
        lora_b: Tensor<Self, 2>,
        scale: f64,
        branch: DType,
    ) -> Option<Tensor<Self, 2>> {
        Self::fused_lora().then(|| {
            super::lora_product::quantized_lora_projection_autodiff::<Flex, C>(
                x, weight, lora_a, lora_b, scale, branch,
            )
        })
    }

    fn fused_loss() -> bool {
        true
    }

    fn token_loss_sum(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        weights: Tensor<Self, 1>,
    ) -> Option<Tensor<Self, 1>> {
        let (targets, weights) = (targets.inner(), weights.inner());
        if current().fused_loss && cpu_loss::supports(&logits, &weights) {
            return Some(cpu_loss::token_loss_sum::<C>(logits, targets, weights));
        }
        Some(super::cross_entropy::cross_entropy_autodiff::<Flex, C>(
            logits, targets, weights,
        ))
    }
}

#[cfg(feature = "cuda")]
pub use cuda::FlashFloat;

#[cfg(feature = "cuda")]
mod cuda {
    //! The CUDA backends, `Cuda<F>` and `Autodiff<Cuda<F>, C>` for F in f32 and bf16.

    use super::*;
    use crate::compute::flash_attention;
    use crate::compute::{attention, cross_entropy, cuda_loss, cuda_norm, cuda_rope, cuda_swiglu};
    use crate::compute::{fused_swiglu, gemm};
    use crate::compute::{lora_product, Matmul};
    use burn::backend::Cuda;
    use burn::tensor::bf16;
    use burn_cubecl::FloatElement;

    /// The float types graft's CUDA kernels are built for; bf16 has the flash kernels.
    pub trait FlashFloat: FloatElement {
        // The inputs go back by value (see `flash_attention::causal_attention`).
        #[allow(clippy::type_complexity, clippy::result_large_err)]
        fn flash<C: CheckpointStrategy>(
            q: Tensor<Autodiff<Cuda<Self>, C>, 4>,
            k: Tensor<Autodiff<Cuda<Self>, C>, 4>,
            v: Tensor<Autodiff<Cuda<Self>, C>, 4>,
        ) -> Result<Tensor<Autodiff<Cuda<Self>, C>, 4>, Qkv<Autodiff<Cuda<Self>, C>>>;
        fn flash_serves(head_dim: usize, dtype: DType) -> bool;
    }

    impl FlashFloat for f32 {
        fn flash<C: CheckpointStrategy>(
            q: Tensor<Autodiff<Cuda<Self>, C>, 4>,
            k: Tensor<Autodiff<Cuda<Self>, C>, 4>,
            v: Tensor<Autodiff<Cuda<Self>, C>, 4>,
        ) -> Result<Tensor<Autodiff<Cuda<Self>, C>, 4>, Qkv<Autodiff<Cuda<Self>, C>>> {
            Err((q, k, v))
        }
        fn flash_serves(_head_dim: usize, _dtype: DType) -> bool {
            false
        }
    }

    impl FlashFloat for bf16 {
        fn flash<C: CheckpointStrategy>(
            q: Tensor<Autodiff<Cuda<Self>, C>, 4>,
            k: Tensor<Autodiff<Cuda<Self>, C>, 4>,
            v: Tensor<Autodiff<Cuda<Self>, C>, 4>,
        ) -> Result<Tensor<Autodiff<Cuda<Self>, C>, 4>, Qkv<Autodiff<Cuda<Self>, C>>> {
            flash_attention::causal_attention::<C>(q, k, v)
        }
        fn flash_serves(head_dim: usize, dtype: DType) -> bool {
            flash_attention::supports(head_dim, dtype) && flash_attention::available(0)
        }
    }

    /// Whether cuBLAS takes the products in this process.
    fn cublas() -> bool {
        current().matmul == Matmul::Cublas && gemm::cublas_present()
    }

    impl<F: FlashFloat> Kernels for Cuda<F> {
        fn accelerated_matmul() -> bool {
            cublas()
        }

        fn matmul<const D: usize>(
            lhs: Tensor<Self, D>,
            rhs: Tensor<Self, D>,
        ) -> Result<Tensor<Self, D>, Pair<Self, D>> {
            let dtype = lhs.dtype();
            Ok(gemm::fusion_product::<F, D>(lhs, rhs, dtype, 1.0))
        }

        fn matmul_with<const D: usize>(
            lhs: Tensor<Self, D>,
            rhs: Tensor<Self, D>,
            alpha: f64,
            out_f32: bool,
        ) -> Result<Tensor<Self, D>, Pair<Self, D>> {
            let dtype = if out_f32 { DType::F32 } else { lhs.dtype() };
            Ok(gemm::fusion_product::<F, D>(lhs, rhs, dtype, alpha as f32))
        }

        fn matmul_add<const D: usize>(
            base: Tensor<Self, D>,
            lhs: Tensor<Self, D>,
            rhs: Tensor<Self, D>,
            alpha: f64,
        ) -> Result<Tensor<Self, D>, Triple<Self, D>> {
            let mut product = lhs.dims();
            product[D - 1] = rhs.dims()[D - 1];
            if !current().cuda_accumulate || base.dtype() != lhs.dtype() || base.dims() != product {
                return Err((base, lhs, rhs));
            }
            Ok(gemm::fusion_product_add::<F, D>(
                base,
                lhs,
                rhs,
                alpha as f32,
            ))
        }

        fn fused_adamw() -> bool {
            current().fused_adamw && crate::compute::fused_adamw::kernels(0).is_some()
        }

        fn adamw(
            params: Vec<Tensor<Self, 1>>,
            grads: Vec<Tensor<Self, 1>>,
            m: Tensor<Self, 1>,
            v: Tensor<Self, 1>,
            hyper: Hyper,
            clip: f32,
        ) -> Result<AdamWUpdate<Self>, AdamWInputs<Self>> {
            if !Self::fused_adamw() {
                return Err((params, grads, m, v));
            }
            Ok(crate::compute::fused_adamw::step::<F>(
                params, grads, m, v, hyper, clip,
            ))
        }

        fn device(index: usize) -> Result<Self::Device, String> {
            cuda_device(index)
        }

        fn pool_reserved(device: &Self::Device) -> Option<u64> {
            cuda_pool_reserved(device)
        }

        fn dequantized(weight: &QuantizedWeight<Self>, dtype: DType) -> Tensor<Self, 2> {
            crate::compute::dequantize::dequantize::<F>(weight, dtype)
                .unwrap_or_else(|| weight.dequantize(dtype))
        }

        fn collectives() -> Result<(), String> {
            crate::compute::nccl::check()
        }

        fn all_reduce_sum(tensor: Tensor<Self, 1>, devices: &[Self::Device]) -> Tensor<Self, 1> {
            use burn::tensor::backend::distributed::{DistributedBackend, ReduceOperation};
            use burn::tensor::backend::DeviceOps;
            use burn::tensor::TensorPrimitive;
            if devices.len() <= 1 {
                return tensor;
            }
            let ids = devices.iter().map(DeviceOps::id).collect();
            let summed = <Self as DistributedBackend>::all_reduce(
                tensor.into_primitive().tensor(),
                ReduceOperation::Sum,
                ids,
            )
            .resolve();
            Tensor::from_primitive(TensorPrimitive::Float(summed))
        }
    }

    /// What the calling thread's pool on `device` holds.
    fn cuda_pool_reserved(device: &burn::backend::cuda::CudaDevice) -> Option<u64> {
        use burn::cubecl::{cuda::CudaRuntime, Runtime};
        let usage = CudaRuntime::client(device).memory_usage().ok()?;
        Some(usage.bytes_reserved)
    }

    /// CUDA device `index`, refused naming `compute.devices` where the machine has
    /// fewer GPUs.
    fn cuda_device(index: usize) -> Result<burn::backend::cuda::CudaDevice, String> {
        use cudarc::driver::result as driver;
        let count = driver::init()
            .and_then(|()| driver::device::get_count())
            .map_err(|e| format!("no CUDA driver to count the GPUs: {e:?}"))?;
        if index >= count as usize {
            return Err(format!(
                "compute.devices names GPU {index}, but this machine has {count} (indices 0..{count})"
            ));
        }
        Ok(burn::backend::cuda::CudaDevice::new(index))
    }

    impl<F: FlashFloat, C: CheckpointStrategy> Kernels for Autodiff<Cuda<F>, C> {
        fn device(index: usize) -> Result<Self::Device, String> {
            cuda_device(index)
        }

        fn pool_reserved(device: &Self::Device) -> Option<u64> {
            cuda_pool_reserved(device)
        }

        fn causal_attention(
            q: Tensor<Self, 4>,
            k: Tensor<Self, 4>,
            v: Tensor<Self, 4>,
        ) -> Result<Tensor<Self, 4>, Qkv<Self>> {
            let choice = current().attention;
            if choice == Attention::Burn {
                return Err((q, k, v));
            }
            let (q, k, v) = if choice == Attention::Flash {
                match F::flash::<C>(q, k, v) {
                    Ok(out) => return Ok(out),
                    Err(inputs) => inputs,
                }
            } else {
                (q, k, v)
            };
            let groups = q.dims()[1] / k.dims()[1];
            let k = attention::repeat_kv(k, groups);
            let v = attention::repeat_kv(v, groups);
            Ok(attention::blocked_attention_autodiff::<Cuda<F>, C>(
                q,
                k,
                v,
                current().attention_block_elements,
            ))
        }

        fn fused_attention() -> bool {
            current().attention != Attention::Burn
        }

        fn attention_label(head_dim: usize, dtype: DType) -> &'static str {
            match current().attention {
                Attention::Flash if F::flash_serves(head_dim, dtype) => "flash",
                Attention::Burn => "burn",
                _ => "blocked",
            }
        }

        fn rope(
            x: Tensor<Self, 4>,
            cos: &Tensor<Self, 4>,
            sin: &Tensor<Self, 4>,
        ) -> Result<Tensor<Self, 4>, Tensor<Self, 4>> {
            if !current().cuda_fused_rope || !cuda_rope::supports(&x, cos, sin, x.device().index) {
                return Err(x);
            }
            Ok(cuda_rope::rotate::<F, C>(x, cos, sin))
        }

        fn rms_norm<const D: usize>(
            x: Tensor<Self, D>,
            weight: Tensor<Self, 1>,
            eps: f64,
            plus_one: bool,
        ) -> Result<Tensor<Self, D>, (Tensor<Self, D>, Tensor<Self, 1>)> {
            if !current().cuda_fused_norm || !cuda_norm::supports(&x, &weight, x.device().index) {
                return Err((x, weight));
            }
            Ok(cuda_norm::rms_norm::<F, C, D>(x, weight, eps, plus_one))
        }

        fn swiglu(
            gate: Tensor<Self, 3>,
            up: Tensor<Self, 3>,
        ) -> Result<Tensor<Self, 3>, Pair<Self, 3>> {
            if !current().fused_swiglu {
                return Err((gate, up));
            }
            if current().cuda_fused_swiglu && cuda_swiglu::supports(&gate, &up, gate.device().index)
            {
                return Ok(cuda_swiglu::gate::<F, C>(gate, up));
            }
            Ok(fused_swiglu::gate::<Cuda<F>, C>(gate, up))
        }

        fn fused_lora() -> bool {
            current().fused_lora && cublas()
        }

        fn lora_projection(
            x: Tensor<Self, 2>,
            weight: Tensor<Self, 2>,
            lora_a: Tensor<Self, 2>,
            lora_b: Tensor<Self, 2>,
            scale: f64,
            branch: DType,
        ) -> Option<Tensor<Self, 2>> {
            Self::fused_lora().then(|| {
                lora_product::lora_projection_autodiff::<Cuda<F>, C>(
                    x, weight, lora_a, lora_b, scale, branch,
                )
            })
        }

        fn quantized_product(
            x: Tensor<Self, 2>,
            weight: &QuantizedWeight<Self>,
        ) -> Tensor<Self, 2> {
            crate::compute::quant_product::quantized_product_autodiff::<Cuda<F>, C>(x, weight)
        }

        fn quantized_lora_projection(
            x: Tensor<Self, 2>,
            weight: &QuantizedWeight<Self>,
            lora_a: Tensor<Self, 2>,
            lora_b: Tensor<Self, 2>,
            scale: f64,
            branch: DType,
        ) -> Option<Tensor<Self, 2>> {
            Self::fused_lora().then(|| {
                lora_product::quantized_lora_projection_autodiff::<Cuda<F>, C>(
                    x, weight, lora_a, lora_b, scale, branch,
                )
            })
        }

        fn fused_loss() -> bool {
            true
        }

        fn token_loss_sum(
            logits: Tensor<Self, 2>,
            targets: Tensor<Self, 1, Int>,
            weights: Tensor<Self, 1>,
        ) -> Option<Tensor<Self, 1>> {
            let (targets, weights) = (targets.inner(), weights.inner());
            let device = logits.device().index;
            if current().cuda_fused_loss && cuda_loss::supports(&logits, &targets, device) {
                return Some(cross_entropy::cross_entropy_autodiff_with::<Cuda<F>, C>(
                    logits,
                    targets,
                    weights,
                    cuda_loss::loss_kernels::<F>(),
                ));
            }
            Some(cross_entropy::cross_entropy_autodiff::<Cuda<F>, C>(
                logits, targets, weights,
            ))
        }

        fn accelerated_matmul() -> bool {
            cublas()
        }

        fn matmul<const D: usize>(
            lhs: Tensor<Self, D>,
            rhs: Tensor<Self, D>,
        ) -> Result<Tensor<Self, D>, Pair<Self, D>> {
            Ok(gemm::autodiff_matmul::<Cuda<F>, C, D>(lhs, rhs))
        }
    }
}

//! An adapted projection, `x W + s (x A) B`, as one autodiff node, for the CPU and
//! CUDA training backends, over a float base W or a quantized one (dequantized in each
//! pass, as `quant_product` does).
//!
//! Op by op, the projection is seven autodiff nodes or more (three products, a scale,
//! a sum, and the casts between the activations' dtype and the branch's), and on the
//! GPU the launch cost of each node's forward and backward work is what bounds a step
//! at these sizes. As one node, with the branch in the activations' dtype, the forward
//! pass is three products (the scale applied by cuBLAS) and a sum, and the backward
//! pass is five products and a sum, with the adapter's gradients written in f32
//! directly by cuBLAS.
//!
//! Where an f32 adapter's branch runs in f32 on bf16 activations
//! ([`crate::model::lora::branch_dtype`], as PEFT computes), `x A` is taken as
//! `x A_hi + x A_lo`, where `A_hi` is A rounded to bf16 and `A_lo` the rounded
//! remainder, in one product of bf16 operands with an f32 result. That carries A to
//! about 16 bits of mantissa for the price of a product twice as wide at rank scale,
//! and where cuBLAS takes the product the activations are never copied to f32. The
//! backward pass uses A, B and `x A` rounded to bf16: its error stays within the
//! gradients' own rounding and does not feed the forward pass, where a coherent error
//! along the adapter's few directions is what moves the outputs.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorPrimitive};

use super::gemm::{add_matmul_scaled, matmul, matmul_f32, matmul_scaled};
use super::grad_sum::register_summed;
use super::kept_attention;
use super::kernels::Kernels;
use super::quant_product::quantized_product;
use crate::model::lora::in_dtype;
use crate::model::quantized::QuantizedWeight;
use burn::backend::autodiff::NodeId;
use burn::module::AutodiffModule;

/// The node over inner backend `I`. Public so tests compare it with the op-by-op
/// projection on the CPU.
pub fn lora_projection_autodiff<I: Kernels, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 2>,
    weight: Tensor<Autodiff<I, C>, 2>,
    lora_a: Tensor<Autodiff<I, C>, 2>,
    lora_b: Tensor<Autodiff<I, C>, 2>,
    scale: f64,
    branch: DType,
) -> Tensor<Autodiff<I, C>, 2> {
    let [x, weight, lora_a, lora_b] =
        [x, weight, lora_a, lora_b].map(|t| t.into_primitive().tensor());
    let w_in = inner::<I>(&weight.primitive);
    let weight_dtype = w_in.dtype();
    let x_in = inner::<I>(&x.primitive);
    let adapter = [&lora_a, &lora_b].map(|t| inner::<I>(&t.primitive));
    let parents = [
        x.node.clone(),
        weight.node.clone(),
        lora_a.node.clone(),
        lora_b.node.clone(),
    ];
    let prepared = LoraProjectionBackward
        .prepare::<C>(parents)
        .compute_bound()
        .stateful();
    let base = || matmul(x_in.clone(), w_in.clone());
    let (out, state) = forward_or_kept(&prepared, x_in.clone(), base, adapter, scale, branch);
    let state = LoraProjectionState {
        base: BaseWeight::Float {
            weight: w_in.into_primitive().tensor(),
            dtype: weight_dtype,
        },
        ..state
    };
    record(prepared, state, out)
}

/// An adapted projection's output carried from a layer-recompute step's first pass to
/// its rerun (`compute.keep_projections`, [`super::kept_attention`]).
struct KeptProjection<I: Backend>(Tensor<I, 2>);

/// [`forward`], or, in a layer's tracked rerun where its first pass kept this
/// projection's output, that output and the state alone (no base product, no adapter
/// product onto it: the same values); an untracked pass keeps its output where asked.
fn forward_or_kept<I: Kernels, Op, C: CheckpointStrategy, const N: usize>(
    prepared: &OpsKind<Op, I, LoraProjectionState<I>, C, N>,
    x_in: Tensor<I, 2>,
    base: impl FnOnce() -> Tensor<I, 2>,
    adapter: [Tensor<I, 2>; 2],
    scale: f64,
    branch: DType,
) -> (Tensor<I, 2>, LoraProjectionState<I>)
where
    Op: Backward<I, N, State = LoraProjectionState<I>>,
{
    let [rows, in_features] = x_in.dims();
    let width = adapter[1].dims()[1];
    let device = x_in.device();
    let tracked = matches!(prepared, OpsKind::Tracked(_));
    let keeps = kept_attention::keeps_projection(in_features, width);
    let kept = (tracked && keeps)
        .then(|| {
            kept_attention::take(|kept: &KeptProjection<I>| {
                kept.0.dims() == [rows, width] && kept.0.device() == device
            })
        })
        .flatten();
    if let Some(KeptProjection(out)) = kept {
        let (_, state) = forward(x_in, None, adapter, scale, branch);
        return (out, state);
    }
    let (out, state) = forward(x_in, Some(base()), adapter, scale, branch);
    let out = out.expect("computed from the base");
    if !tracked && keeps && kept_attention::keeping() {
        kept_attention::offer(KeptProjection(out.clone()));
    }
    (out, state)
}

/// The node over a quantized frozen base W (`[out, in]`): `x · dequant(W)ᵀ + s (x A) B`.
/// W is dequantized for the forward product and again for `dx`; no float copy of it
/// lives between the passes (see `quant_product`), and it has no gradient.
pub fn quantized_lora_projection_autodiff<I: Kernels, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 2>,
    weight: &QuantizedWeight<Autodiff<I, C>>,
    lora_a: Tensor<Autodiff<I, C>, 2>,
    lora_b: Tensor<Autodiff<I, C>, 2>,
    scale: f64,
    branch: DType,
) -> Tensor<Autodiff<I, C>, 2> {
    let weight = weight.valid();
    let [x, lora_a, lora_b] = [x, lora_a, lora_b].map(|t| t.into_primitive().tensor());
    let x_in = inner::<I>(&x.primitive);
    let adapter = [&lora_a, &lora_b].map(|t| inner::<I>(&t.primitive));
    let parents = [x.node.clone(), lora_a.node.clone(), lora_b.node.clone()];
    let prepared = QuantizedLoraProjectionBackward
        .prepare::<C>(parents)
        .compute_bound()
        .stateful();
    let base = || quantized_product(x_in.clone(), &weight);
    let (out, state) = forward_or_kept(&prepared, x_in.clone(), base, adapter, scale, branch);
    let state = LoraProjectionState {
        base: BaseWeight::Quantized(weight),
        ..state
    };
    record(prepared, state, out)
}

/// Records `out` as the output of a prepared node, keeping `state` for the backward
/// pass where gradients are tracked.
fn record<I: Kernels, C: CheckpointStrategy, const N: usize, Op>(
    prepared: OpsKind<Op, I, LoraProjectionState<I>, C, N>,
    state: LoraProjectionState<I>,
    out: Tensor<I, 2>,
) -> Tensor<Autodiff<I, C>, 2>
where
    Op: Backward<I, N, State = LoraProjectionState<I>>,
{
    let output = match prepared {
        OpsKind::Tracked(prep) => prep.finish(state, out.into_primitive().tensor()),
        OpsKind::UnTracked(prep) => prep.finish(out.into_primitive().tensor()),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

fn inner<I: Backend>(p: &I::FloatTensorPrimitive) -> Tensor<I, 2> {
    Tensor::<I, 2>::from_primitive(TensorPrimitive::Float(p.clone()))
}

/// The output `base + s (x A) B` (where a base is given) and the state the backward
/// pass needs (its base still a placeholder for the caller to set).
fn forward<I: Kernels>(
    x_in: Tensor<I, 2>,
    base: Option<Tensor<I, 2>>,
    [a_full, b_full]: [Tensor<I, 2>; 2],
    scale: f64,
    branch: DType,
) -> (Option<Tensor<I, 2>>, LoraProjectionState<I>) {
    let dtype = x_in.dtype();
    let (a_dtype, b_dtype) = (a_full.dtype(), b_full.dtype());
    // The split below is written for an f32 adapter on narrower activations; any
    // other combination runs the branch in the activations' dtype.
    let f32_branch = branch == DType::F32
        && dtype != DType::F32
        && a_dtype == DType::F32
        && b_dtype == DType::F32;
    let (out, a_low, b_low, down) = if !f32_branch {
        let a_low = in_dtype(a_full, dtype);
        let b_low = in_dtype(b_full, dtype);
        let down = matmul(x_in.clone(), a_low.clone());
        let out = base.map(|base| add_matmul_scaled(base, down.clone(), b_low.clone(), scale));
        (out, a_low, b_low, down)
    } else {
        let rank = a_full.dims()[1];
        let b_low = in_dtype(b_full.clone(), dtype);
        let a_split = split_for_products(a_full, dtype);
        let halves = matmul_f32(x_in.clone(), a_split.clone(), 1.0);
        let down = halves.clone().narrow(1, 0, rank) + halves.narrow(1, rank, rank);
        let out = base.map(|base| {
            let up = matmul_scaled(down.clone(), b_full, scale);
            (base.cast(FloatDType::F32) + up).cast(dtype)
        });
        (out, a_split.narrow(1, 0, rank), b_low, down.cast(dtype))
    };
    let state = LoraProjectionState {
        x: x_in.into_primitive().tensor(),
        base: BaseWeight::Pending,
        a_low: a_low.into_primitive().tensor(),
        b_low: b_low.into_primitive().tensor(),
        down: down.into_primitive().tensor(),
        a_dtype,
        b_dtype,
        scale,
    };
    (out, state)
}

/// `[hi | lo]` for an f32 matrix `[d, r]`, `[d, 2r]` in `dtype`: `hi` is the matrix
/// rounded to `dtype` and `lo` the remainder rounded, so that `x hi + x lo` is `x t` to
/// about twice `dtype`'s mantissa, from one product whose operands are both in `dtype`.
fn split_for_products<I: Backend>(matrix: Tensor<I, 2>, dtype: DType) -> Tensor<I, 2> {
    let hi = matrix.clone().cast(dtype);
    let lo = (matrix - hi.clone().cast(FloatDType::F32)).cast(dtype);
    Tensor::cat(vec![hi, lo], 1)
}

#[derive(Debug)]
struct LoraProjectionBackward;

#[derive(Debug)]
struct QuantizedLoraProjectionBackward;

/// The base weight the backward pass multiplies `dy` by.
#[derive(Debug, Clone)]
enum BaseWeight<I: Kernels> {
    /// `[d_in, d_out]`, a parent of the node (it gets a gradient where tracked).
    Float {
        weight: I::FloatTensorPrimitive,
        dtype: DType,
    },
    /// Dequantized again for `dx`.
    Quantized(QuantizedWeight<I>),
    /// Set by the caller of [`forward`] before the node is recorded.
    Pending,
}

#[derive(Debug, Clone)]
struct LoraProjectionState<I: Kernels> {
    x: I::FloatTensorPrimitive,
    base: BaseWeight<I>,
    /// A and B in the activations' dtype.
    a_low: I::FloatTensorPrimitive,
    b_low: I::FloatTensorPrimitive,
    /// `x A` in the activations' dtype, `[n, r]`: small, and only `dB` needs it.
    down: I::FloatTensorPrimitive,
    a_dtype: DType,
    b_dtype: DType,
    scale: f64,
}

impl<I: Kernels> Backward<I, 4> for LoraProjectionBackward {
    type State = LoraProjectionState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 4>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w, node_a, node_b] = ops.parents;
        let dy = grads.consume::<I>(&ops.node);
        let ids = [node_w, node_a, node_b].map(|node| node.map(|n| n.id));
        let dx = backward(ops.state, dy, node_x.is_some(), ids, grads);
        if let (Some(node), Some(dx)) = (node_x, dx) {
            register_summed!(grads, node, I, dx);
        }
    }
}

impl<I: Kernels> Backward<I, 3> for QuantizedLoraProjectionBackward {
    type State = LoraProjectionState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_a, node_b] = ops.parents;
        let dy = grads.consume::<I>(&ops.node);
        let ids = [None, node_a, node_b].map(|node| node.map(|n| n.id));
        let dx = backward(ops.state, dy, node_x.is_some(), ids, grads);
        if let (Some(node), Some(dx)) = (node_x, dx) {
            register_summed!(grads, node, I, dx);
        }
    }
}

/// Registers the gradients of W, A and B for the tracked ones among `ids`, and returns
/// x's where `x_tracked`, for the caller to add to its other parts
/// ([`register_summed!`]: x feeds several projections).
fn backward<I: Kernels>(
    state: LoraProjectionState<I>,
    dy: I::FloatTensorPrimitive,
    x_tracked: bool,
    ids: [Option<NodeId>; 3],
    grads: &mut Gradients,
) -> Option<I::FloatTensorPrimitive> {
    let [id_w, id_a, id_b] = ids;
    let wrap = |p: I::FloatTensorPrimitive| -> Tensor<I, 2> {
        Tensor::from_primitive(TensorPrimitive::Float(p))
    };
    let dy = wrap(dy);
    let s = state.scale;
    let x = wrap(state.x);
    let (a_low, b_low) = (wrap(state.a_low), wrap(state.b_low));
    // dy Bᵀ, `[n, r]`: shared by dx and dA.
    let up_grad = (x_tracked || id_a.is_some()).then(|| matmul(dy.clone(), b_low.transpose()));
    let mut dx_out = None;
    if x_tracked {
        let up_grad = up_grad.clone().expect("computed for dx");
        let through_base = match &state.base {
            BaseWeight::Float { weight, .. } => {
                matmul(dy.clone(), wrap(weight.clone()).transpose())
            }
            BaseWeight::Quantized(weight) => matmul(dy.clone(), I::dequantized(weight, dy.dtype())),
            BaseWeight::Pending => unreachable!("the base is set before the node is recorded"),
        };
        let dx = add_matmul_scaled(through_base, up_grad, a_low.transpose(), s);
        dx_out = Some(dx.into_primitive().tensor());
    }
    if let Some(id) = id_a {
        let up_grad = up_grad.expect("computed for dA");
        let da = in_dtype(matmul_f32(x.clone().transpose(), up_grad, s), state.a_dtype);
        grads.register::<I>(id, da.into_primitive().tensor());
    }
    if let Some(id) = id_b {
        let db = in_dtype(
            matmul_f32(wrap(state.down).transpose(), dy.clone(), s),
            state.b_dtype,
        );
        grads.register::<I>(id, db.into_primitive().tensor());
    }
    if let (Some(id), BaseWeight::Float { dtype, .. }) = (id_w, &state.base) {
        let dw = in_dtype(matmul_f32(x.transpose(), dy, 1.0), *dtype);
        grads.register::<I>(id, dw.into_primitive().tensor());
    }
    dx_out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::KeepProjections;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::Distribution;

    type Inner = burn::backend::Flex;
    type B = Autodiff<Inner, NoCheckpointing>;

    /// The node and a `reference` formula on the same inputs, each as the output and
    /// the gradients of `sum(out * upstream)` for x, W, A and B.
    fn node_and_reference(
        inputs: [&Tensor<Inner, 2>; 4],
        upstream: &Tensor<Inner, 2>,
        scale: f64,
        branch: DType,
        reference: impl Fn([Tensor<B, 2>; 4]) -> Tensor<B, 2>,
    ) -> [[Tensor<Inner, 2>; 5]; 2] {
        [true, false].map(|fused| {
            let [x, w, a, b] = inputs.map(|t| Tensor::<B, 2>::from_inner(t.clone()).require_grad());
            let tracked = [x.clone(), w.clone(), a.clone(), b.clone()];
            let out = if fused {
                lora_projection_autodiff::<Inner, NoCheckpointing>(x, w, a, b, scale, branch)
            } else {
                reference([x, w, a, b])
            };
            let grads = (out.clone() * Tensor::from_inner(upstream.clone()))
                .sum()
                .backward();
            let [dx, dw, da, db] = tracked.map(|t| t.grad(&grads).unwrap());
            [out.inner(), dx, dw, da, db]
        })
    }

    /// Value and all four gradients equal the op-by-op projection's.
    #[test]
    fn fused_projection_matches_the_op_by_op_projection_and_its_gradients() {
        let device = Default::default();
        let normal = |shape: [usize; 2]| {
            Tensor::<Inner, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let (x, w, a, b) = (
            normal([6, 5]),
            normal([5, 7]),
            normal([5, 3]),
            normal([3, 7]),
        );
        let scale = 2.5;
        let [ours, theirs] = node_and_reference(
            [&x, &w, &a, &b],
            &normal([6, 7]),
            scale,
            DType::F32,
            |[x, w, a, b]| x.clone().matmul(w) + x.matmul(a).matmul(b) * scale,
        );
        for (ours, theirs) in ours.into_iter().zip(theirs) {
            ours.into_data()
                .assert_approx_eq::<f32>(&theirs.into_data(), Default::default());
        }
    }

    /// With a bf16 base, an f32 adapter and the branch in f32, the node's output is
    /// PEFT's op by op (the branch in f32, summed with the base output in f32 and
    /// rounded to bf16 once) to the bit nearly everywhere; a branch run in bf16 rounds
    /// three times more and misses most elements by a unit in the last place. The
    /// backward pass runs on bf16 operands, so gradients agree to bf16 precision.
    #[test]
    fn an_f32_adapter_on_a_bf16_base_computes_its_branch_in_f32() {
        use burn::tensor::FloatDType::{BF16, F32};
        let device = Default::default();
        let normal = |shape: [usize; 2]| {
            Tensor::<Inner, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let (x, w) = (normal([9, 8]).cast(BF16), normal([8, 6]).cast(BF16));
        let (a, b) = (normal([8, 3]), normal([3, 6]));
        let upstream = normal([9, 6]).cast(BF16);
        let scale = 2.0;
        let [ours, peft] = node_and_reference(
            [&x, &w, &a, &b],
            &upstream,
            scale,
            DType::F32,
            |[x, w, a, b]| {
                let up = x.clone().cast(F32).matmul(a).matmul(b) * scale;
                (x.matmul(w).cast(F32) + up).cast(BF16)
            },
        );
        // Output, dx, dA and dB.
        let values = |all: [Tensor<Inner, 2>; 5]| {
            let [out, dx, _, da, db] = all;
            [out, dx, da, db].map(|t| (t.dtype(), t.cast(F32).into_data().to_vec::<f32>().unwrap()))
        };
        let (ours, peft) = (values(ours), values(peft));
        let dtypes = ours.each_ref().map(|(dtype, _)| *dtype);
        assert_eq!(dtypes, [DType::BF16, DType::BF16, DType::F32, DType::F32]);
        let (out, peft_out) = (&ours[0].1, &peft[0].1);
        let same = out.iter().zip(peft_out).filter(|(a, b)| a == b).count();
        assert!(
            same * 100 >= out.len() * 95,
            "{same} of {} outputs equal",
            out.len()
        );
        for (what, i) in [("output", 0), ("dx", 1), ("dA", 2), ("dB", 3)] {
            let err = crate::model::parity::max_rel_err(&ours[i].1, &peft[i].1);
            assert!(err <= 2e-2, "{what}: {err:e}");
        }
    }

    /// Over a quantized base, the node's output and the gradients of x, A and B equal
    /// the op-by-op projection over the dequantized weight.
    #[test]
    fn over_a_quantized_base_the_node_matches_the_projection_over_its_dequantized_values() {
        use burn::tensor::TensorData;
        let device = Default::default();
        let normal = |shape: [usize; 2]| {
            Tensor::<Inner, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let values: Vec<f32> = normal([7, 64]).into_data().to_vec().unwrap();
        let host = crate::model::quantize::quantize_nf4(&values, [7, 64]);
        let weight = QuantizedWeight::<B>::from_host(&host, &device);
        let dense =
            Tensor::<Inner, 2>::from_data(TensorData::new(host.dequantize(), [7, 64]), &device)
                .transpose();
        let (x, a, b) = (normal([6, 64]), normal([64, 3]), normal([3, 7]));
        let upstream = normal([6, 7]);
        let scale = 2.0;
        let run = |fused: bool| {
            let [x, a, b] =
                [&x, &a, &b].map(|t| Tensor::<B, 2>::from_inner(t.clone()).require_grad());
            let out = if fused {
                quantized_lora_projection_autodiff(
                    x.clone(),
                    &weight,
                    a.clone(),
                    b.clone(),
                    scale,
                    DType::F32,
                )
            } else {
                x.clone().matmul(Tensor::from_inner(dense.clone()))
                    + x.clone().matmul(a.clone()).matmul(b.clone()) * scale
            };
            let grads = (out.clone() * Tensor::from_inner(upstream.clone()))
                .sum()
                .backward();
            [
                out.inner(),
                x.grad(&grads).unwrap(),
                a.grad(&grads).unwrap(),
                b.grad(&grads).unwrap(),
            ]
        };
        for (ours, theirs) in run(true).into_iter().zip(run(false)) {
            ours.into_data()
                .assert_approx_eq::<f32>(&theirs.into_data(), Default::default());
        }
    }

    /// In a layer's rerun the node takes the output its untracked first pass kept (with
    /// `compute.keep_projections`) and gives the same output and gradients bit for bit
    /// as computing; without projections kept, or with `narrow` for a projection that
    /// widens its input, it computes.
    #[test]
    fn a_rerun_takes_the_kept_projection_output() {
        use super::super::flex_values::bits;
        use super::super::kept_attention;
        let device = Default::default();
        let random = |shape: [usize; 2]| {
            Tensor::<Inner, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        // One projection that widens its input (6 -> 7) and one that narrows it (6 -> 4).
        for out_features in [7, 4] {
            let (x, w, a, b) = (
                random([5, 6]),
                random([6, out_features]),
                random([6, 2]),
                random([2, out_features]),
            );
            let project = |tracked: bool| {
                let x = Tensor::<B, 2>::from_inner(x.clone());
                let (a, b) = (
                    Tensor::<B, 2>::from_inner(a.clone()),
                    Tensor::<B, 2>::from_inner(b.clone()),
                );
                let (x, a, b) = if tracked {
                    (x.require_grad(), a.require_grad(), b.require_grad())
                } else {
                    (x, a, b)
                };
                let w = Tensor::<B, 2>::from_inner(w.clone());
                let out = lora_projection_autodiff::<Inner, NoCheckpointing>(
                    x.clone(),
                    w,
                    a.clone(),
                    b.clone(),
                    0.5,
                    DType::F32,
                );
                if !tracked {
                    return (bits(out.inner()), Vec::new());
                }
                let grads = (out.clone() * out.clone()).sum().backward();
                let grad = |t: &Tensor<B, 2>| bits(t.grad(&grads).unwrap());
                (bits(out.inner()), [grad(&x), grad(&a), grad(&b)].concat())
            };
            let computed = project(true);
            for (which, takes) in [
                (KeepProjections::All, true),
                (KeepProjections::Narrow, out_features < 6),
                (KeepProjections::None, false),
            ] {
                let kept = kept_attention::keep().with_projections(which);
                kept.next_layer();
                let first = project(false);
                kept.replay();
                kept.rerun_layer();
                let replayed = project(true);
                assert_eq!(kept.taken(), takes as usize, "taken with {which:?} kept");
                assert_eq!(first.0, computed.0);
                assert_eq!(replayed, computed);
            }
        }
    }

    /// A frozen base weight (the LoRA case) gets no gradient.
    #[test]
    fn a_frozen_weight_gets_no_gradient() {
        let device = Default::default();
        let x = Tensor::<B, 2>::ones([2, 3], &device).require_grad();
        let w = Tensor::<B, 2>::ones([3, 4], &device);
        let a = Tensor::<B, 2>::ones([3, 2], &device).require_grad();
        let b = Tensor::<B, 2>::zeros([2, 4], &device).require_grad();
        let out = lora_projection_autodiff::<Inner, NoCheckpointing>(
            x,
            w.clone(),
            a.clone(),
            b,
            1.0,
            DType::F32,
        );
        let grads = out.sum().backward();
        assert!(w.grad(&grads).is_none());
        // B = 0: no signal reaches A yet.
        let da: Vec<f32> = a.grad(&grads).unwrap().into_data().to_vec().unwrap();
        assert!(da.iter().all(|&g| g == 0.0));
    }

    #[test]
    fn the_fused_projection_serves_the_cpu_training_backend_only() {
        assert!(<B as Kernels>::fused_lora());
        assert!(!<Inner as Kernels>::fused_lora());
        let device = Default::default();
        let make = |shape: [usize; 2]| {
            Tensor::<Inner, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let (x, w, a, b) = (make([5, 4]), make([4, 3]), make([4, 2]), make([2, 3]));
        let expected =
            x.clone().matmul(w.clone()) + x.clone().matmul(a.clone()).matmul(b.clone()) * 0.5;
        let outer = |t: &Tensor<Inner, 2>| Tensor::<B, 2>::from_inner(t.clone());
        let fused = B::lora_projection(outer(&x), outer(&w), outer(&a), outer(&b), 0.5, DType::F32)
            .expect("fused on the CPU training backend");
        fused
            .inner()
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
        assert!(Inner::lora_projection(x, w, a, b, 0.5, DType::F32).is_none());
    }
}

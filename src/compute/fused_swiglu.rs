//! SwiGLU's gating, `silu(gate) * up`, as one autodiff node whose two passes are
//! inner-backend ops, for backends that fuse element-wise ops into one kernel (burn's
//! fusion on CUDA).
//!
//! Op by op, autodiff records a sigmoid and two products, keeps their intermediates
//! (`[tokens, intermediate]` each) for the backward pass, and differentiates each
//! separately. Here the node keeps only its two inputs, and each pass is one chain of
//! element-wise ops that fusion can run as a single kernel: the forward writes the
//! output, the backward both gradients. The arithmetic is in f32 whatever the
//! inputs' dtype (casts fuse into the same kernel).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorPrimitive};

/// Whether `compute.fused_swiglu = false` turned the node off.
pub fn disabled() -> bool {
    !crate::compute::options::current().fused_swiglu
}

/// `silu(gate) * up` for tensors of one shape, as one node over inner backend `I`.
pub fn gate<I: Backend, C: CheckpointStrategy>(
    gate: Tensor<Autodiff<I, C>, 3>,
    up: Tensor<Autodiff<I, C>, 3>,
) -> Tensor<Autodiff<I, C>, 3> {
    assert_eq!(gate.dims(), up.dims());
    let (gate, up) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
    let prepared = SwigluBackward
        .prepare::<C>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful();
    let inner =
        |p: I::FloatTensorPrimitive| Tensor::<I, 3>::from_primitive(TensorPrimitive::Float(p));
    let (g, u) = (inner(gate.primitive), inner(up.primitive));
    let dtype = g.dtype();
    let (gf, uf) = (
        g.clone().cast(FloatDType::F32),
        u.clone().cast(FloatDType::F32),
    );
    let out = (gf.clone() * sigmoid(gf) * uf).cast(dtype);
    let out = out.into_primitive().tensor();
    let output = match prepared {
        OpsKind::Tracked(prep) => prep.finish(
            (g.into_primitive().tensor(), u.into_primitive().tensor()),
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Debug)]
struct SwigluBackward;

impl<I: Backend> Backward<I, 2> for SwigluBackward {
    type State = (I::FloatTensorPrimitive, I::FloatTensorPrimitive);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_gate, node_up] = ops.parents;
        let inner =
            |p: I::FloatTensorPrimitive| Tensor::<I, 3>::from_primitive(TensorPrimitive::Float(p));
        let dy = inner(grads.consume::<I>(&ops.node));
        let (g, u) = (inner(ops.state.0), inner(ops.state.1));
        let (dtype_g, dtype_u) = (g.dtype(), u.dtype());
        let f32 = |t: Tensor<I, 3>| t.cast(FloatDType::F32);
        let (dy, g, u) = (f32(dy), f32(g), f32(u));
        let s = sigmoid(g.clone());
        // silu'(g) = s (1 + g (1 - s))
        let dgate = node_gate.map(|node| {
            let slope = s.clone() * ((s.clone().neg() + 1.0) * g.clone() + 1.0);
            (node, (dy.clone() * u * slope).cast(dtype_g))
        });
        let dup = node_up.map(|node| (node, (dy * g * s).cast(dtype_u)));
        for (node, grad) in [dgate, dup].into_iter().flatten() {
            grads.register::<I>(node.id, grad.into_primitive().tensor());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::Flex;
    use burn::tensor::activation::silu;
    use burn::tensor::{Distribution, Tolerance};

    pub(crate) type B = Autodiff<Flex, NoCheckpointing>;

    /// `gating`'s output and gradients against burn's `silu(gate) * up`, on inputs of
    /// `shape`. Shared with the CPU node's test.
    pub(crate) fn check_against_op_by_op(
        shape: [usize; 3],
        gating: impl Fn(Tensor<B, 3>, Tensor<B, 3>) -> Tensor<B, 3>,
    ) {
        let device = Default::default();
        let random = || Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 3.0), &device);
        let (g0, u0, weight) = (random(), random(), random());
        let run = |fused: bool| {
            let g = Tensor::<B, 3>::from_inner(g0.clone()).require_grad();
            let u = Tensor::<B, 3>::from_inner(u0.clone()).require_grad();
            let y = if fused {
                gating(g.clone(), u.clone())
            } else {
                silu(g.clone()) * u.clone()
            };
            let grads = (y.clone() * Tensor::from_inner(weight.clone()))
                .sum()
                .backward();
            (
                y.inner().into_data(),
                g.grad(&grads).unwrap().into_data(),
                u.grad(&grads).unwrap().into_data(),
            )
        };
        let (y, dg, du) = run(true);
        let (y_ref, dg_ref, du_ref) = run(false);
        let tolerance = Tolerance::<f32>::rel_abs(1e-5, 1e-5);
        y.assert_approx_eq::<f32>(&y_ref, tolerance);
        dg.assert_approx_eq::<f32>(&dg_ref, tolerance);
        du.assert_approx_eq::<f32>(&du_ref, tolerance);
    }

    #[test]
    fn the_node_matches_the_op_by_op_gating_and_its_gradients() {
        check_against_op_by_op([2, 5, 300], gate::<Flex, NoCheckpointing>);
    }
}

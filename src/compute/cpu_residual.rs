//! The residual sum `x + y` on the CPU training backend as one autodiff node.
//!
//! Flex adds tensors below 4 Mi elements on one thread: the two residual sums of
//! every layer (`[tokens, hidden]` each) ran serially while the other cores waited,
//! about 3% of a 16-thread smol-135m step. Here the sum runs on all cores
//! ([`cpu_elementwise`]: one rounding per element, Flex's bits), and the backward pass
//! hands the gradient to both inputs as burn's `add` does (the left one first), each
//! added to the input's other parts on all cores ([`register_summed!`]).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorPrimitive};

use super::cpu_elementwise;
use super::grad_sum::register_summed;

/// Whether [`residual_sum`] takes these: f32 tensors of one shape.
pub fn supports<C: CheckpointStrategy, const D: usize>(
    x: &Tensor<Autodiff<Flex, C>, D>,
    y: &Tensor<Autodiff<Flex, C>, D>,
) -> bool {
    x.dims() == y.dims() && x.dtype() == DType::F32 && y.dtype() == DType::F32
}

/// `x + y` for tensors [`supports`] takes, as one node.
pub fn residual_sum<C: CheckpointStrategy, const D: usize>(
    x: Tensor<Autodiff<Flex, C>, D>,
    y: Tensor<Autodiff<Flex, C>, D>,
) -> Tensor<Autodiff<Flex, C>, D> {
    assert!(supports(&x, &y), "f32 tensors of one shape");
    let (x, y) = (x.into_primitive().tensor(), y.into_primitive().tensor());
    let inner = |p| Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(p));
    let out = cpu_elementwise::add_scaled(inner(x.primitive), inner(y.primitive), 1.0)
        .into_primitive()
        .tensor();
    let output = ResidualBackward
        .prepare::<C>([x.node.clone(), y.node.clone()])
        .compute_bound()
        .stateless(out);
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Debug)]
struct ResidualBackward;

impl Backward<Flex, 2> for ResidualBackward {
    type State = ();

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_y] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        match (node_x, node_y) {
            (Some(x), Some(y)) => {
                register_summed!(grads, x, Flex, grad.clone());
                register_summed!(grads, y, Flex, grad);
            }
            (Some(only), None) | (None, Some(only)) => register_summed!(grads, only, Flex, grad),
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::flex_values::bits;
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::Distribution;

    type B = Autodiff<Flex, NoCheckpointing>;

    /// The node's output and both inputs' gradients have the bits of burn's `add`,
    /// where each input also feeds another op (so its gradient parts are summed).
    #[test]
    fn the_residual_node_gives_burn_s_bits() {
        let device = Default::default();
        let random =
            || Tensor::<Flex, 3>::random([2, 70, 300], Distribution::Normal(0.0, 1.0), &device);
        let (x0, y0, w0) = (random(), random(), random());
        let run = |fused: bool| {
            let x = Tensor::<B, 3>::from_inner(x0.clone()).require_grad();
            let y = Tensor::<B, 3>::from_inner(y0.clone()).require_grad();
            let w = Tensor::<B, 3>::from_inner(w0.clone());
            let sum = if fused {
                residual_sum(x.clone() * 1.5, y.clone().exp())
            } else {
                x.clone() * 1.5 + y.clone().exp()
            };
            let loss = (sum.clone() * w.clone()).sum()
                + (x.clone() * w.clone()).sum()
                + (y.clone() * sum.clone()).sum();
            let grads = loss.backward();
            [
                sum.inner(),
                x.grad(&grads).unwrap(),
                y.grad(&grads).unwrap(),
            ]
            .map(bits)
        };
        assert_eq!(run(true), run(false));
    }
}

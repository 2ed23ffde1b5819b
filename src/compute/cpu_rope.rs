//! Rotary position embedding on the CPU training backend as one autodiff node.
//!
//! Op by op, rotating `[batch, heads, seq, dim]` queries or keys is two narrows, a
//! negation, a concatenation, two products with `[1, 1, seq, dim]` tables and a sum, on
//! a head-transposed view, and as many nodes again in the backward pass. Flex runs the
//! table broadcasts through its scalar strided loop, on one thread. Here each
//! (batch, head) is one rayon task over contiguous rows. Each output element is the
//! same two products and one sum as the op-by-op version, so the values are equal bit
//! for bit in both directions.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::flex_values::{flex_primitive, seq_major, zeros, HostValues};

/// `x * cos + rotate_half(x) * sin` (HF's RoPE, `rotate_half([a, b]) = [-b, a]` over the
/// halves of the last dim) for x `[batch, heads, seq, dim]` in f32 and tables
/// `[1, 1, seq, dim]`, as one node. The tables get no gradient.
pub fn rotate<C: CheckpointStrategy>(
    x: Tensor<Autodiff<Flex, C>, 4>,
    cos: &Tensor<Autodiff<Flex, C>, 4>,
    sin: &Tensor<Autodiff<Flex, C>, 4>,
) -> Tensor<Autodiff<Flex, C>, 4> {
    let shape = x.dims();
    assert_eq!(x.dtype(), DType::F32, "the CPU trains in f32");
    let table = |t: &Tensor<Autodiff<Flex, C>, 4>| -> HostValues {
        HostValues::new(t.clone().inner().into_primitive().tensor())
    };
    let (cos, sin) = (table(cos), table(sin));
    let x = x.into_primitive().tensor();
    let prepared = RopeBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful();
    let values = HostValues::new(x.primitive);
    let out = apply(&values, &cos, &sin, shape, Pass::Rotate);
    let out = flex_primitive(out, shape);
    let output = match prepared {
        OpsKind::Tracked(prep) => prep.finish(RopeState { shape, cos, sin }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[derive(Clone, Copy)]
enum Pass {
    /// `y = x cos + R(x) sin`, with `R([a, b]) = [-b, a]`.
    Rotate,
    /// `dx = dy cos + Rᵀ(dy sin)`, with `Rᵀ([a, b]) = [b, -a]`.
    Gradient,
}

/// One pass over every row, (batch, head) pairs in parallel.
fn apply(x: &[f32], cos: &[f32], sin: &[f32], shape: [usize; 4], pass: Pass) -> Vec<f32> {
    let [_, _, seq, dim] = shape;
    let half = dim / 2;
    let mut out = zeros(x.len());
    out.par_chunks_mut(seq * dim)
        .zip(x.par_chunks(seq * dim))
        .for_each(|(out, x)| {
            for (pos, (y, x)) in out.chunks_mut(dim).zip(x.chunks(dim)).enumerate() {
                let (c, s) = (&cos[pos * dim..][..dim], &sin[pos * dim..][..dim]);
                for i in 0..half {
                    let (j, a, b) = (i + half, x[i], x[i + half]);
                    match pass {
                        Pass::Rotate => {
                            y[i] = a * c[i] + -b * s[i];
                            y[j] = b * c[j] + a * s[j];
                        }
                        Pass::Gradient => {
                            y[i] = a * c[i] + b * s[j];
                            y[j] = b * c[j] + -(a * s[i]);
                        }
                    }
                }
            }
        });
    out
}

#[derive(Debug)]
struct RopeBackward;

#[derive(Debug, Clone)]
struct RopeState {
    shape: [usize; 4],
    cos: HostValues,
    sin: HostValues,
}

impl Backward<Flex, 1> for RopeBackward {
    type State = RopeState;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node {
            let dy = HostValues::new(dy);
            let state = ops.state;
            let dx = apply(&dy, &state.cos, &state.sin, state.shape, Pass::Gradient);
            // The input was a head-split view of the projection's output: stored in
            // that order, its gradient goes back through the split without a copy.
            grads.register::<Flex>(node.id, seq_major(flex_primitive(dx, state.shape)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::Distribution;

    type B = Autodiff<Flex, NoCheckpointing>;

    /// HF's rotation op by op, as the model wrote it before this node.
    fn op_by_op(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
        let half = x.dims()[3] / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    }

    #[test]
    fn the_node_equals_the_op_by_op_rotation_bit_for_bit_in_both_directions() {
        let device = Default::default();
        let (batch, seq, heads, dim) = (2, 5, 3, 8);
        let random = |shape: [usize; 4]| {
            Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        // A head-transposed view, as the model passes it.
        let x0 = random([batch, seq, heads, dim]);
        let weight = random([batch, heads, seq, dim]);
        let cos = Tensor::<B, 4>::from_inner(random([1, 1, seq, dim]));
        let sin = Tensor::<B, 4>::from_inner(random([1, 1, seq, dim]));
        let run = |fused: bool| {
            let x = Tensor::<B, 4>::from_inner(x0.clone()).require_grad();
            let view = x.clone().swap_dims(1, 2);
            let y = if fused {
                rotate(view, &cos, &sin)
            } else {
                op_by_op(view, &cos, &sin)
            };
            let grads = (y.clone() * Tensor::from_inner(weight.clone()))
                .sum()
                .backward();
            let dx = x.grad(&grads).unwrap();
            (
                y.inner().into_data().to_vec::<f32>().unwrap(),
                dx.into_data().to_vec::<f32>().unwrap(),
            )
        };
        let (y, dx) = run(true);
        let (y_ref, dx_ref) = run(false);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&y_ref));
        assert_eq!(bits(&dx), bits(&dx_ref));
    }
}

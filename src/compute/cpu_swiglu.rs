//! SwiGLU's gating, `silu(gate) * up`, on the CPU training backend as one autodiff
//! node.
//!
//! Op by op it is a sigmoid, two products and, backward, six more element-wise passes
//! over `[tokens, intermediate]` tensors, each a separate Flex op with its own buffer.
//! Here the forward pass is one parallel loop, and the backward pass one loop that
//! writes both gradients.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::cpu_exp::{with_exp, Exp};
use super::cpu_vectors::in_widest_vectors;
use super::flex_values::{flex_primitive, zeros, HostValues};

/// Elements per rayon task.
const CHUNK: usize = 16 * 1024;

/// `silu(gate) * up` for f32 tensors of one shape, as one node.
pub fn gate<C: CheckpointStrategy>(
    gate: Tensor<Autodiff<Flex, C>, 3>,
    up: Tensor<Autodiff<Flex, C>, 3>,
) -> Tensor<Autodiff<Flex, C>, 3> {
    let shape = gate.dims();
    assert_eq!(shape, up.dims());
    assert!(gate.dtype() == DType::F32 && up.dtype() == DType::F32);
    let (gate, up) = (gate.into_primitive().tensor(), up.into_primitive().tensor());
    let prepared = SwigluBackward
        .prepare::<C>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful();
    let (g, u) = (
        HostValues::new(gate.primitive),
        HostValues::new(up.primitive),
    );
    // Written once, not zeroed first (a pass and a parallel region fewer).
    let mut out = Vec::with_capacity(g.len());
    // The exp is chosen once for the whole loop, not per chunk.
    with_exp!(E => out.spare_capacity_mut()[..g.len()]
    .par_chunks_mut(CHUNK)
    .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
    .for_each(|(out, (g, u))| {
        in_widest_vectors(|| {
            for ((y, &g), &u) in out.iter_mut().zip(g).zip(u) {
                y.write(silu::<E>(g) * u);
            }
        })
    }));
    // SAFETY: the chunks cover the first `g.len()` values and each value of a chunk is
    // written (the inputs' chunks are as long as the output's).
    unsafe { out.set_len(g.len()) };
    let out = flex_primitive(out, shape);
    let output = match prepared {
        OpsKind::Tracked(prep) => prep.finish(
            SwigluState {
                shape,
                gate: g,
                up: u,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

#[inline(always)]
fn sigmoid<E: Exp>(x: f32) -> f32 {
    1.0 / (1.0 + E::exp(-x))
}

#[inline(always)]
fn silu<E: Exp>(x: f32) -> f32 {
    x * sigmoid::<E>(x)
}

#[derive(Debug)]
struct SwigluBackward;

#[derive(Debug, Clone)]
struct SwigluState {
    shape: [usize; 3],
    gate: HostValues,
    up: HostValues,
}

impl Backward<Flex, 2> for SwigluBackward {
    type State = SwigluState;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_gate, node_up] = ops.parents;
        let dy = HostValues::new(grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        let mut dgate = zeros(dy.len());
        let mut dup = zeros(dy.len());
        with_exp!(E => dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dy.par_chunks(CHUNK))
        .zip(state.gate.par_chunks(CHUNK).zip(state.up.par_chunks(CHUNK)))
        .for_each(|(((dgate, dup), dy), (g, u))| {
            let rows = dgate.iter_mut().zip(dup.iter_mut()).zip(dy).zip(g).zip(u);
            in_widest_vectors(|| {
                for ((((dgate, dup), &dy), &g), &u) in rows {
                    let s = sigmoid::<E>(g);
                    // silu'(g) = s (1 + g (1 - s))
                    *dgate = dy * u * (s * (1.0 + g * (1.0 - s)));
                    *dup = dy * (g * s);
                }
            })
        }));
        for (node, grad) in [(node_gate, dgate), (node_up, dup)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex_primitive(grad, state.shape));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_node_matches_the_op_by_op_gating_and_its_gradients() {
        // More elements than one task takes, so several tasks run.
        super::super::fused_swiglu::tests::check_against_op_by_op([2, 7, 3000], super::gate);
    }
}

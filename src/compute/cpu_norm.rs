//! RMSNorm on the CPU training backend as one autodiff node.
//!
//! Op by op, a norm is seven Flex ops forward (square, mean, add, sqrt, reciprocal and
//! two broadcast products) and about twice as many backward, each on one thread over
//! the whole `[tokens, hidden]` activation; with two norms a layer they were most of
//! what a CPU step still ran serially. Here rows are normed in parallel. Each row's
//! sums run in a fixed order (eight lanes, combined pairwise), which no thread count
//! or SIMD width changes, and the weight's gradient (taken only when the weight
//! trains) sums fixed blocks of rows and adds the blocks in order, as
//! [`super::reduce::ordered_sum`] does.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::flex_values::{flex_primitive, zeros, HostValues};
use super::grad_sum::register_summed;
use super::reduce::lane_sum;

/// Rows per rayon task, and per partial sum of the weight's gradient: a fixed number,
/// so the order of additions is the same on any machine.
const ROWS: usize = 32;

/// `x / sqrt(mean(x²) + eps) * w` over x's last dimension (Gemma: `* (1 + w)`), for
/// f32 `x` `[..., width]` and `w` `[width]`, as one node.
pub fn rms_norm<C: CheckpointStrategy, const D: usize>(
    x: Tensor<Autodiff<Flex, C>, D>,
    weight: Tensor<Autodiff<Flex, C>, 1>,
    eps: f64,
    plus_one: bool,
) -> Tensor<Autodiff<Flex, C>, D> {
    let shape = x.dims();
    let width = shape[D - 1];
    assert_eq!(weight.dims(), [width], "one weight per normed element");
    assert!(x.dtype() == DType::F32 && weight.dtype() == DType::F32);
    let (x, weight) = (
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
    );
    let prepared = RmsNormBackward
        .prepare::<C>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful();
    let values = HostValues::new(x.primitive);
    let stored = HostValues::new(weight.primitive);
    // The factor each element is multiplied by, rounded as the op-by-op `w + 1`.
    let scale: Vec<f32> = if plus_one {
        stored.iter().map(|w| w + 1.0).collect()
    } else {
        stored.to_vec()
    };
    let rows = values.len() / width.max(1);
    let mut inverse = zeros(rows);
    assert_eq!(scale.len(), width, "one weight per element of a row");
    // Written once, not zeroed first (a pass and a parallel region fewer).
    let mut out = Vec::with_capacity(values.len());
    let eps = eps as f32;
    out.spare_capacity_mut()[..values.len()]
        .par_chunks_mut(ROWS * width)
        .zip(inverse.par_chunks_mut(ROWS))
        .zip(values.par_chunks(ROWS * width))
        .for_each(|((out, inverse), x)| {
            for ((y, r), x) in out.chunks_mut(width).zip(inverse).zip(x.chunks(width)) {
                let mean = dot(x, x) / width as f32;
                *r = 1.0 / (mean + eps).sqrt();
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(&scale) {
                    y.write(x * *r * w);
                }
            }
        });
    // SAFETY: the chunks cover the first `values.len()` values, whole rows of `width`,
    // and each value of a row is written (`scale` has `width` values).
    unsafe { out.set_len(values.len()) };
    let out = flex_primitive(out, shape);
    let output = match prepared {
        OpsKind::Tracked(prep) => prep.finish(
            RmsNormState {
                x: values,
                inverse,
                scale,
                width,
                shape: shape.to_vec(),
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// `Σ a_i b_i` in [`lane_sum`]'s fixed order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a.iter().zip(b).map(|(a, b)| a * b))
}

#[derive(Debug)]
struct RmsNormBackward;

#[derive(Debug, Clone)]
struct RmsNormState {
    x: HostValues,
    /// `1 / sqrt(mean(x²) + eps)` per row.
    inverse: Vec<f32>,
    /// The factor applied to each element (`w`, or Gemma's `1 + w`).
    scale: Vec<f32>,
    width: usize,
    shape: Vec<usize>,
}

impl Backward<Flex, 2> for RmsNormBackward {
    type State = RmsNormState;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = HostValues::new(grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        if let Some(node) = node_w {
            let dw = weight_gradient(&state, &dy);
            grads.register::<Flex>(node.id, flex_primitive(dw, [state.width]));
        }
        if let Some(node) = node_x {
            let dx = input_gradient(&state, &dy);
            // The residual stream's other part came from the residual sum.
            register_summed!(grads, node, Flex, flex_primitive(dx, state.shape.clone()));
        }
    }
}

/// `dx = r g - x r³ (g · x) / width` per row, with `g = dy w`.
fn input_gradient(state: &RmsNormState, dy: &[f32]) -> Vec<f32> {
    let width = state.width;
    let mut dx = zeros(dy.len());
    dx.par_chunks_mut(ROWS * width)
        .zip(dy.par_chunks(ROWS * width))
        .zip(state.x.par_chunks(ROWS * width))
        .zip(state.inverse.par_chunks(ROWS))
        .for_each_init(
            || vec![0.0f32; width],
            |g, (((dx, dy), x), inverse)| {
                let rows = dx
                    .chunks_mut(width)
                    .zip(dy.chunks(width))
                    .zip(x.chunks(width));
                for (((dx, dy), x), &r) in rows.zip(inverse) {
                    for ((g, &dy), &w) in g.iter_mut().zip(dy).zip(&state.scale) {
                        *g = dy * w;
                    }
                    let pull = r * r * r * dot(g, x) / width as f32;
                    for ((dx, &g), &x) in dx.iter_mut().zip(g.iter()).zip(x) {
                        *dx = r * g - x * pull;
                    }
                }
            },
        );
    dx
}

/// `dw = Σ_rows dy x r` (the same for Gemma's `1 + w`): each block of [`ROWS`] rows
/// summed in row order, the blocks added in order.
fn weight_gradient(state: &RmsNormState, dy: &[f32]) -> Vec<f32> {
    let width = state.width;
    let partials: Vec<Vec<f32>> = dy
        .par_chunks(ROWS * width)
        .zip(state.x.par_chunks(ROWS * width))
        .zip(state.inverse.par_chunks(ROWS))
        .map(|((dy, x), inverse)| {
            let mut sum = vec![0.0f32; width];
            for ((dy, x), &r) in dy.chunks(width).zip(x.chunks(width)).zip(inverse) {
                for ((s, &dy), &x) in sum.iter_mut().zip(dy).zip(x) {
                    *s += dy * (x * r);
                }
            }
            sum
        })
        .collect();
    let mut total = vec![0.0f32; width];
    for partial in partials {
        for (t, p) in total.iter_mut().zip(partial) {
            *t += p;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::super::flex_values::bits;
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::{Distribution, Tolerance};

    type B = Autodiff<Flex, NoCheckpointing>;

    /// The model's op-by-op norm, as `RmsNorm::forward` writes it.
    fn op_by_op<const D: usize>(
        x: Tensor<B, D>,
        w: Tensor<B, 1>,
        eps: f64,
        plus_one: bool,
    ) -> Tensor<B, D> {
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * (variance + eps).sqrt().recip();
        let w = if plus_one { w + 1.0 } else { w };
        normed * w.unsqueeze::<D>()
    }

    /// The node's output and the gradients of x and w against the op-by-op norm.
    fn check(shape: [usize; 3], plus_one: bool) {
        let device = Default::default();
        let x0 = Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 2.0), &device);
        let w0 = Tensor::<Flex, 1>::random([shape[2]], Distribution::Normal(1.0, 0.5), &device);
        let upstream = Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let x = Tensor::<B, 3>::from_inner(x0.clone()).require_grad();
            let w = Tensor::<B, 1>::from_inner(w0.clone()).require_grad();
            let y = if fused {
                rms_norm(x.clone(), w.clone(), 1e-6, plus_one)
            } else {
                op_by_op(x.clone(), w.clone(), 1e-6, plus_one)
            };
            let grads = (y.clone() * Tensor::from_inner(upstream.clone()))
                .sum()
                .backward();
            (
                y.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
                w.grad(&grads).unwrap().into_data(),
            )
        };
        let (y, dx, dw) = run(true);
        let (y_ref, dx_ref, dw_ref) = run(false);
        let tolerance = Tolerance::<f32>::rel_abs(1e-4, 1e-5);
        y.assert_approx_eq::<f32>(&y_ref, tolerance);
        dx.assert_approx_eq::<f32>(&dx_ref, tolerance);
        dw.assert_approx_eq::<f32>(&dw_ref, tolerance);
    }

    #[test]
    fn the_node_matches_the_op_by_op_norm_and_its_gradients() {
        // More rows than one task takes, a width with a tail past the lanes.
        check([3, 50, 77], false);
    }

    #[test]
    fn gemma_s_one_plus_weight_matches_too() {
        check([2, 40, 64], true);
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_the_input_still_does() {
        let device = Default::default();
        let x = Tensor::<B, 3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let w = Tensor::<B, 1>::ones([16], &device);
        let grads = rms_norm(x.clone(), w.clone(), 1e-5, false).sum().backward();
        assert!(w.grad(&grads).is_none());
        assert_eq!(x.grad(&grads).unwrap().dims(), [2, 5, 16]);
    }

    #[test]
    fn the_sums_do_not_depend_on_the_thread_count() {
        let device = Default::default();
        let x0 = Tensor::<Flex, 3>::random([4, 300, 96], Distribution::Normal(0.0, 1.0), &device);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let x = Tensor::<B, 3>::from_inner(x0.clone()).require_grad();
                let w =
                    Tensor::<B, 1>::from_inner(Tensor::ones([96], &device) * 0.5).require_grad();
                let y = rms_norm(x.clone(), w.clone(), 1e-6, false);
                let grads = (y.clone() * y.clone()).sum().backward();
                (
                    bits(y.inner()),
                    bits(x.grad(&grads).unwrap()),
                    bits(w.grad(&grads).unwrap()),
                )
            })
        };
        assert_eq!(run(1), run(3));
    }
}

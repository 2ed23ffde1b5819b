//! The token loss on the CPU training backend with its rows in parallel.
//!
//! The loss node over burn's ops ([`super::cross_entropy`]) passes over the
//! `[tokens, vocab]` logits about ten times (max, shift, exp, sum and log forward;
//! shift, exp, scale and scatter backward), each Flex op on one thread: at
//! SmolLM2-135M's vocabulary that is 50M elements a pass for 1,024 tokens. Here each
//! row is one pass forward (its max, then its sum of exponentials in a fixed order)
//! and one backward, rows in parallel; the loss adds the rows' terms in row order in
//! f64, so no thread count changes a bit of it.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Int, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::cpu_exp::{exp_in_place, with_exp, Exp};
use super::flex_values::{flex_primitive, zeros, HostValues};
use super::reduce::lane_sum;

/// Rows per rayon task.
const ROWS: usize = 8;

/// Whether [`token_loss_sum`] takes these: f32 logits and weights.
pub fn supports<C: CheckpointStrategy>(
    logits: &Tensor<Autodiff<Flex, C>, 2>,
    weights: &Tensor<Flex, 1>,
) -> bool {
    logits.dtype() == DType::F32 && weights.dtype() == DType::F32
}

/// `Σ_n w[n] (logsumexp(x[n]) - x[n, t[n]])` as `[1]`, for logits `[n, vocab]` and
/// weights [`supports`] takes.
pub fn token_loss_sum<C: CheckpointStrategy>(
    logits: Tensor<Autodiff<Flex, C>, 2>,
    targets: Tensor<Flex, 1, Int>,
    weights: Tensor<Flex, 1>,
) -> Tensor<Autodiff<Flex, C>, 1> {
    assert!(supports(&logits, &weights), "f32 logits and weights");
    let [rows, vocab] = logits.dims();
    let targets: Vec<usize> = targets
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("integer targets")
        .into_iter()
        .map(|t| {
            usize::try_from(t)
                .ok()
                .filter(|&t| t < vocab)
                .expect("a target inside the vocabulary")
        })
        .collect();
    let weights = HostValues::new(weights.into_primitive().tensor());
    assert_eq!((targets.len(), weights.len()), (rows, rows));
    let logits = logits.into_primitive().tensor();
    let prepared = LossBackward
        .prepare::<C>([logits.node.clone()])
        .compute_bound()
        .stateful();
    let x = HostValues::new(logits.primitive);
    let mut lse = zeros(rows);
    let mut terms = zeros(rows);
    with_exp!(E => lse
    .par_chunks_mut(ROWS)
    .zip(terms.par_chunks_mut(ROWS))
    .zip(x.par_chunks(ROWS * vocab))
    .enumerate()
    .for_each_init(Vec::new, |shifted, (task, ((lse, terms), x))| {
        for (i, ((lse, term), x)) in lse.iter_mut().zip(terms).zip(x.chunks(vocab)).enumerate()
        {
            let row = task * ROWS + i;
            *lse = log_sum_exp::<E>(x, shifted);
            *term = (*lse - x[targets[row]]) * weights[row];
        }
    }));
    let total = terms.iter().map(|&t| t as f64).sum::<f64>() as f32;
    let loss = flex_primitive(vec![total], [1]);
    let output = match prepared {
        OpsKind::Tracked(prep) => prep.finish(
            LossState {
                x,
                lse,
                targets,
                weights,
                vocab,
            },
            loss,
        ),
        OpsKind::UnTracked(prep) => prep.finish(loss),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// `max + ln Σ exp(x - max)`, the sum in [`lane_sum`]'s fixed order; `shifted` is
/// scratch for the exponentials, so they are computed in one vectorizable pass.
fn log_sum_exp<E: Exp>(x: &[f32], shifted: &mut Vec<f32>) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    shifted.clear();
    shifted.extend(x.iter().map(|&v| v - max));
    exp_in_place::<E>(shifted);
    max + lane_sum(shifted.iter().copied()).ln()
}

#[derive(Debug)]
struct LossBackward;

#[derive(Debug, Clone)]
struct LossState {
    x: HostValues,
    lse: Vec<f32>,
    targets: Vec<usize>,
    weights: HostValues,
    vocab: usize,
}

impl Backward<Flex, 1> for LossBackward {
    type State = LossState;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        let upstream = HostValues::new(grads.consume::<Flex>(&ops.node))[0];
        let Some(node) = node else { return };
        let state = ops.state;
        let vocab = state.vocab;
        // d/dx of w (lse - x[t]) is w softmax(x) - w onehot(t), times the upstream
        // gradient of the sum.
        let mut dx = zeros(state.x.len());
        with_exp!(E => dx
        .par_chunks_mut(ROWS * vocab)
        .zip(state.x.par_chunks(ROWS * vocab))
        .enumerate()
        .for_each(|(task, (dx, x))| {
            for (i, (dx, x)) in dx.chunks_mut(vocab).zip(x.chunks(vocab)).enumerate() {
                let row = task * ROWS + i;
                let (lse, weight) = (state.lse[row], state.weights[row] * upstream);
                for (d, &v) in dx.iter_mut().zip(x) {
                    *d = v - lse;
                }
                exp_in_place::<E>(dx);
                dx.iter_mut().for_each(|d| *d *= weight);
                dx[state.targets[row]] += -weight;
            }
        }));
        let rows = state.lse.len();
        grads.register::<Flex>(node.id, flex_primitive(dx, [rows, vocab]));
    }
}

#[cfg(test)]
mod tests {
    use super::super::flex_values::bits;
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type B = Autodiff<Flex, NoCheckpointing>;

    #[test]
    fn the_loss_and_its_gradient_match_the_node_over_burn_s_ops() {
        let device = Default::default();
        let (rows, vocab) = (37, 1003);
        let x0 = Tensor::<Flex, 2>::random([rows, vocab], Distribution::Normal(0.0, 3.0), &device);
        let targets: Vec<i64> = (0..rows as i64).map(|i| (i * 97) % vocab as i64).collect();
        let weights: Vec<f32> = (0..rows)
            .map(|i| if i % 5 == 0 { 0.0 } else { 1.0 })
            .collect();
        let run = |ours: bool| {
            let x = Tensor::<B, 2>::from_inner(x0.clone()).require_grad();
            let t = Tensor::<Flex, 1, Int>::from_data(
                TensorData::new(targets.clone(), [rows]),
                &device,
            );
            let w = Tensor::<Flex, 1>::from_data(TensorData::new(weights.clone(), [rows]), &device);
            let loss = if ours {
                token_loss_sum(x.clone(), t, w)
            } else {
                super::super::cross_entropy::cross_entropy_autodiff(x.clone(), t, w)
            };
            let grads = (loss.clone() * 0.5).backward();
            (
                loss.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
            )
        };
        let (loss, dx) = run(true);
        let (loss_ref, dx_ref) = run(false);
        loss.assert_approx_eq::<f32>(&loss_ref, Tolerance::<f32>::rel_abs(1e-5, 1e-5));
        dx.assert_approx_eq::<f32>(&dx_ref, Tolerance::<f32>::rel_abs(1e-4, 1e-6));
    }

    #[test]
    fn the_loss_does_not_depend_on_the_thread_count() {
        let device = Default::default();
        let x0 = Tensor::<Flex, 2>::random([100, 500], Distribution::Normal(0.0, 2.0), &device);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let x = Tensor::<B, 2>::from_inner(x0.clone()).require_grad();
                    let t = Tensor::<Flex, 1, Int>::from_data(
                        TensorData::new((0..100i64).collect::<Vec<_>>(), [100]),
                        &device,
                    );
                    let w = Tensor::<Flex, 1>::ones([100], &device);
                    let loss = token_loss_sum(x.clone(), t, w);
                    let grads = loss.clone().backward();
                    (bits(loss.inner()), bits(x.grad(&grads).unwrap()))
                })
        };
        assert_eq!(run(1), run(4));
    }
}

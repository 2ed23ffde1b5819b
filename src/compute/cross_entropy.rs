//! Token cross-entropy as one autodiff node, for the CPU and CUDA training backends.
//!
//! Differentiated op by op, `log_softmax` then `gather` keeps f32 copies of the
//! logits and log-probabilities (`[tokens, vocab]`: 4 GiB each at Llama-3.2-1B's
//! vocabulary and 8k tokens) from the forward pass to the backward pass, and passes
//! over them several times in each direction. This node keeps the logits as they came
//! (bf16 on the GPU) and one log-sum-exp per row; its backward pass builds
//! `w (softmax(x) - onehot(target))` in f32 and rounds it once to the logits' dtype.
//! The value is the same sum, `Σ w (logsumexp(x) - x[target])`, computed in f32.
//!
//! The per-row work comes from [`LossKernels`]: burn's ops ([`LossKernels::ops`],
//! several kernels and an f32 copy each way) or a backend's own (CUDA's
//! `compute::cuda_loss`, one pass each way); the sum over rows is [`ordered_sum`]'s
//! either way.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, IndexingUpdateOp, Int, Tensor, TensorPrimitive};

use super::reduce::ordered_sum;

/// Per row of logits `[rows, vocab]` with targets and f32 weights `[rows, 1]`: the f32
/// log-sum-exp `[rows, 1]` and the term `weight · (lse - x[target])` `[rows, 1]`.
pub type RowsFn<I> =
    fn(&Tensor<I, 2>, &Tensor<I, 2, Int>, &Tensor<I, 2>) -> (Tensor<I, 2>, Tensor<I, 2>);

/// The gradient of the rows' terms: from the logits, their log-sum-exp, the targets
/// and each row's weight times the upstream gradient (f32 `[rows, 1]`), the logits'
/// gradient `row_weight · (softmax(x) - onehot(target))` in the logits' dtype.
pub type GradientFn<I> =
    fn(Tensor<I, 2>, Tensor<I, 2>, Tensor<I, 2, Int>, Tensor<I, 2>) -> Tensor<I, 2>;

/// How the node computes its rows, forward and backward.
pub struct LossKernels<I: Backend> {
    pub rows: RowsFn<I>,
    pub gradient: GradientFn<I>,
}

impl<I: Backend> LossKernels<I> {
    /// burn's ops: every backend has them.
    pub fn ops() -> Self {
        LossKernels {
            rows: rows_by_ops::<I>,
            gradient: gradient_by_ops::<I>,
        }
    }
}

/// The node over inner backend `I` with burn's ops. Public so tests compare it with
/// the op-by-op loss on the CPU.
pub fn cross_entropy_autodiff<I: Backend, C: CheckpointStrategy>(
    logits: Tensor<Autodiff<I, C>, 2>,
    targets: Tensor<I, 1, Int>,
    weights: Tensor<I, 1>,
) -> Tensor<Autodiff<I, C>, 1> {
    cross_entropy_autodiff_with(logits, targets, weights, LossKernels::ops())
}

/// The node with the rows computed by `kernels`.
pub fn cross_entropy_autodiff_with<I: Backend, C: CheckpointStrategy>(
    logits: Tensor<Autodiff<I, C>, 2>,
    targets: Tensor<I, 1, Int>,
    weights: Tensor<I, 1>,
    kernels: LossKernels<I>,
) -> Tensor<Autodiff<I, C>, 1> {
    let logits = logits.into_primitive().tensor();
    let x: Tensor<I, 2> = Tensor::from_primitive(TensorPrimitive::Float(logits.primitive.clone()));
    let [rows, _] = x.dims();
    let targets = targets.reshape([rows, 1]);
    let weights = weights.cast(FloatDType::F32).reshape([rows, 1]);
    let (lse, terms) = (kernels.rows)(&x, &targets, &weights);
    let loss = ordered_sum(terms);
    let node = CrossEntropyBackward {
        gradient: kernels.gradient,
    };
    let output = match node
        .prepare::<C>([logits.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            CrossEntropyState {
                logits: x.into_primitive().tensor(),
                lse: lse.into_primitive().tensor(),
                targets,
                weights: weights.into_primitive().tensor(),
            },
            loss.into_primitive().tensor(),
        ),
        OpsKind::UnTracked(prep) => prep.finish(loss.into_primitive().tensor()),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

fn rows_by_ops<I: Backend>(
    x: &Tensor<I, 2>,
    targets: &Tensor<I, 2, Int>,
    weights: &Tensor<I, 2>,
) -> (Tensor<I, 2>, Tensor<I, 2>) {
    let lse = log_sum_exp(x);
    let picked = x.clone().gather(1, targets.clone()).cast(FloatDType::F32);
    let terms = (lse.clone() - picked) * weights.clone();
    (lse, terms)
}

/// `[n, 1]` f32 log-sum-exp of each row, shifted by the row max for range.
fn log_sum_exp<I: Backend>(x: &Tensor<I, 2>) -> Tensor<I, 2> {
    let x = x.clone().cast(FloatDType::F32);
    let max = x.clone().max_dim(1);
    max.clone() + (x - max).exp().sum_dim(1).log()
}

fn gradient_by_ops<I: Backend>(
    logits: Tensor<I, 2>,
    lse: Tensor<I, 2>,
    targets: Tensor<I, 2, Int>,
    row_weight: Tensor<I, 2>,
) -> Tensor<I, 2> {
    let dtype = logits.dtype();
    let softmax = (logits.cast(FloatDType::F32) - lse).exp() * row_weight.clone();
    let dlogits = softmax.scatter(1, targets, row_weight.neg(), IndexingUpdateOp::Add);
    dlogits.cast(dtype)
}

#[derive(Debug)]
struct CrossEntropyBackward<I: Backend> {
    gradient: GradientFn<I>,
}

#[derive(Debug, Clone)]
struct CrossEntropyState<I: Backend> {
    logits: I::FloatTensorPrimitive,
    lse: I::FloatTensorPrimitive,
    targets: Tensor<I, 2, Int>,
    weights: I::FloatTensorPrimitive,
}

impl<I: Backend> Backward<I, 1> for CrossEntropyBackward<I> {
    type State = CrossEntropyState<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        let grad: Tensor<I, 1> =
            Tensor::from_primitive(TensorPrimitive::Float(grads.consume::<I>(&ops.node)));
        let Some(node) = node else { return };
        let state = ops.state;
        let wrap = |p: I::FloatTensorPrimitive| -> Tensor<I, 2> {
            Tensor::from_primitive(TensorPrimitive::Float(p))
        };
        // d/dx of w (lse - x[t]) is w softmax(x) - w onehot(t); the upstream gradient
        // of the sum scales every row alike.
        let row_weight = wrap(state.weights) * grad.cast(FloatDType::F32).reshape([1, 1]);
        let dlogits = (self.gradient)(
            wrap(state.logits),
            wrap(state.lse),
            state.targets,
            row_weight,
        );
        grads.register::<I>(node.id, dlogits.into_primitive().tensor());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::kernels::Kernels;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Distribution, TensorData};

    type Inner = burn::backend::Flex;
    type B = Autodiff<Inner, NoCheckpointing>;

    /// Value and gradient equal the op-by-op `log_softmax` + `gather` loss, weights
    /// (a mask with a zero row) included.
    #[test]
    fn fused_cross_entropy_matches_the_op_by_op_loss_and_its_gradient() {
        let device = Default::default();
        let x = Tensor::<Inner, 2>::random([5, 11], Distribution::Normal(0.0, 3.0), &device);
        let targets =
            Tensor::<Inner, 1, Int>::from_data(TensorData::from([3i64, 0, 10, 7, 3]), &device);
        let weights =
            Tensor::<Inner, 1>::from_data(TensorData::from([0.5f32, 0.0, 1.0, 2.0, 0.25]), &device);

        let fused_logits = Tensor::<B, 2>::from_inner(x.clone()).require_grad();
        let fused = cross_entropy_autodiff::<Inner, NoCheckpointing>(
            fused_logits.clone(),
            targets.clone(),
            weights.clone(),
        );
        let fused_grad = fused_logits.grad(&fused.backward()).unwrap();

        let logits = Tensor::<B, 2>::from_inner(x).require_grad();
        let picked = log_softmax(logits.clone(), 1)
            .gather(1, Tensor::from_inner(targets.reshape([5, 1])))
            .reshape([5]);
        let reference = (picked * Tensor::from_inner(weights)).sum().neg();
        let reference_grad = logits.grad(&reference.backward()).unwrap();

        fused
            .inner()
            .into_data()
            .assert_approx_eq::<f32>(&reference.inner().into_data(), Default::default());
        fused_grad
            .into_data()
            .assert_approx_eq::<f32>(&reference_grad.into_data(), Default::default());
    }

    #[test]
    fn the_fused_loss_serves_the_cpu_training_backend_only() {
        assert!(<B as Kernels>::fused_loss());
        assert!(!<Inner as Kernels>::fused_loss());
        let device = Default::default();
        let logits = Tensor::<B, 2>::from_floats([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]], &device);
        let targets = Tensor::<B, 1, Int>::from_ints([2, 0], &device);
        let weights = Tensor::<B, 1>::ones([2], &device);
        let fused = B::token_loss_sum(logits.clone(), targets.clone(), weights.clone())
            .expect("fused on the CPU training backend");
        // log(1 + e + e²) - 2 and log(e³ + 2) - 3.
        let expected =
            (1.0f32 + 1f32.exp() + 2f32.exp()).ln() - 2.0 + (3f32.exp() + 2.0).ln() - 3.0;
        fused
            .into_data()
            .assert_approx_eq::<f32>(&TensorData::from([expected]), Default::default());
        let inner = |t: Tensor<B, 2>| t.inner();
        assert!(Inner::token_loss_sum(inner(logits), targets.inner(), weights.inner()).is_none());
    }
}

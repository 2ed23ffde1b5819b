//! Masked next-token cross-entropy and exact-match accuracy on batches
//! whose rows carry their own targets and loss mask.

use crate::compute::kernels::Kernels;
use crate::compute::reduce::ordered_sum;
use crate::data::Batch;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// The batch as tensors: inputs and targets `[batch, seq]`, mask `[batch, seq]`.
pub struct BatchTensors<B: Backend> {
    pub inputs: Tensor<B, 2, Int>,
    pub targets: Tensor<B, 2, Int>,
    pub mask: Tensor<B, 2>,
    /// Trained targets in the batch: the loss denominator.
    pub tokens: usize,
}

impl<B: Backend> BatchTensors<B> {
    pub fn new(batch: &Batch, device: &B::Device) -> Self {
        let shape = [batch.batch, batch.seq_len];
        let ints = |ids: &[u32]| -> Tensor<B, 2, Int> {
            Tensor::from_data(
                TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), shape),
                device,
            )
        };
        BatchTensors {
            inputs: ints(&batch.input_ids),
            targets: ints(&batch.target_ids),
            mask: Tensor::from_data(TensorData::new(batch.loss_mask.clone(), shape), device),
            tokens: batch.trained_tokens(),
        }
    }
}

/// Sum of the masked token losses `[1]` (divide by `tokens` for the mean).
/// logits: [batch, seq, vocab]
pub fn masked_loss_sum<B: Kernels>(logits: Tensor<B, 3>, batch: &BatchTensors<B>) -> Tensor<B, 1> {
    masked_loss_sum_of(logits, batch.targets.clone(), batch.mask.clone())
}

/// [`masked_loss_sum`] of `logits` `[batch, seq, vocab]` against `targets` and `mask`
/// `[batch, seq]`.
pub fn masked_loss_sum_of<B: Kernels>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [b, s, vocab] = logits.dims();
    if B::fused_loss() {
        return B::token_loss_sum(
            logits.reshape([b * s, vocab]),
            targets.reshape([b * s]),
            mask.reshape([b * s]),
        )
        .expect("checked above");
    }
    // In f32 whatever the compute dtype, as the fused node and transformers do.
    let logits = match logits.dtype() {
        burn::tensor::DType::F32 => logits,
        _ => logits.cast(burn::tensor::FloatDType::F32),
    };
    let log_probs = log_softmax(logits, 2);
    let picked = log_probs
        .gather(2, targets.reshape([b, s, 1]))
        .reshape([b, s]);
    ordered_sum(picked * mask).neg()
}

/// Per row: whether the greedy prediction matches every trained target.
/// Teacher-forced argmax equals greedy decoding token for token, so a row
/// is exactly right under generation if and only if it is right here.
/// logits: [batch, seq, vocab]
pub fn exact_match_rows<B: Backend>(logits: Tensor<B, 3>, batch: &BatchTensors<B>) -> Vec<bool> {
    let [b, s, _] = logits.dims();
    let predicted = logits.argmax(2).reshape([b, s]);
    let wrong = predicted.not_equal(batch.targets.clone()).float() * batch.mask.clone();
    let wrong_per_row: Vec<f32> = wrong
        .sum_dim(1)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    let trained_per_row: Vec<f32> = batch
        .mask
        .clone()
        .sum_dim(1)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    wrong_per_row
        .iter()
        .zip(&trained_per_row)
        .map(|(wrong, trained)| *trained > 0.0 && *wrong == 0.0)
        .collect()
}

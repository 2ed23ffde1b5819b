//! Per-layer activation checkpointing, `compute.checkpointing = "layers"`: a step keeps
//! each decoder layer's input only and runs the layer again to get its gradients, as
//! HF's gradient checkpointing does.
//!
//! burn's balanced checkpointing recomputes the cheap (memory-bound) operations and
//! keeps every product's output, and graft's fused nodes are products, so it saves
//! little. Here the backward pass is staged by hand instead of nested in burn's: the
//! forward pass runs each layer untracked (a copy whose parameters need no gradient, so
//! the same kernels compute the same values and nothing is saved) and keeps its input;
//! the head and the loss run tracked from the last layer's output as a leaf; then, last
//! layer first, each layer runs again tracked on its saved input and back-propagates
//! the gradient that reached its output (as the gradient of `Σ y ⊙ dy`, which is `dy`
//! exactly), handing its input's gradient to the layer below. Each stage is a backward
//! pass of its own, so only one layer's activations live at a time. (A layer as one
//! autodiff node that recomputes inside burn's backward pass deadlocks in burn 0.21:
//! a backward pass started there cleans up every graph, the running one included,
//! whose lock the outer pass holds.) The fused attention's output is kept from the
//! first pass for the rerun (`compute::kept_attention`), which then skips its forward
//! kernel: the same values, so the same gradients.

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

use super::loss::{masked_loss_sum_of, BatchTensors};
use super::optim::GradAccumulator;
use crate::compute::kernels::TrainKernels;
use crate::model::CausalLm;

/// `loss / denominator` of one share, its gradients added to `total`, with every
/// decoder layer recomputed; returns the loss, `[1]`. The share's stages sum into an
/// accumulator of their own first, so a tied embedding's two parts (the head's and
/// the lookup's) meet before they join other shares, as in one backward pass.
pub fn recomputed_backward<B: TrainKernels>(
    model: &CausalLm<B>,
    tensors: &BatchTensors<B>,
    denominator: f64,
    total: &mut GradAccumulator<B::InnerBackend>,
) -> Tensor<B::InnerBackend, 1> {
    let mut share = GradAccumulator::default();
    let loss = staged(model, tensors, denominator, &mut share);
    total.merge(share);
    loss
}

fn staged<B: TrainKernels>(
    model: &CausalLm<B>,
    tensors: &BatchTensors<B>,
    denominator: f64,
    grads: &mut GradAccumulator<B::InnerBackend>,
) -> Tensor<B::InnerBackend, 1> {
    let [_, seq] = tensors.inputs.dims();
    let tables = model.rope(0, seq, &tensors.inputs.device());
    let layers = &model.model.layers;
    let mut inputs = Vec::with_capacity(layers.len());
    // The lookup runs again, tracked, for its own stage at the end: a graph kept
    // across the stages' backward passes would be cleaned up by them as orphaned.
    let mut x = model.embed(tensors.inputs.clone()).detach();
    // Each layer's attention output (and, with `compute.keep_projections`, its
    // projections' outputs), kept for its rerun (see `kept_attention`).
    let kept = crate::compute::kept_attention::keep()
        .with_projections(crate::compute::options::current().keep_projections);
    for (i, layer) in layers.iter().enumerate() {
        let (cos, sin) = tables.of_layer(i);
        kept.next_layer();
        inputs.push(x.clone());
        x = layer.clone().no_grad().forward(x, cos, sin, None);
    }
    kept.replay();

    let chunk = crate::compute::options::current().loss_chunk_tokens;
    let (value, mut dy) = head_and_loss(model, x.detach(), tensors, denominator, chunk, grads);

    for (i, layer) in layers.iter().enumerate().rev() {
        let (cos, sin) = tables.of_layer(i);
        let input = inputs
            .pop()
            .expect("one input per layer")
            .detach()
            .require_grad();
        kept.rerun_layer();
        let y = layer.forward(input.clone(), cos, sin, None);
        let stage = through(y, dy);
        grads.add(model, &stage);
        dy = input
            .grad(&stage)
            .expect("a layer's output depends on its input");
    }
    drop(kept);
    // `is_require_grad` is true of leaves only, so ask the embedding's weight.
    if model.model.embed_tokens.weight.val().is_require_grad() {
        let embedded = model.embed(tensors.inputs.clone());
        grads.add(model, &through(embedded, dy));
    }
    value
}

/// The final norm, the head and the loss over the last layer's output `last`
/// `[batch, seq, hidden]` as a leaf, back-propagated: the loss (`[1]`, over
/// `denominator`) and the gradient at `last`. With `chunk > 0` they run over `chunk`
/// tokens at a time (the rows of the batch laid end to end), each part its own backward
/// pass, so only one part's `[chunk, vocab]` logits and their gradient are ever alive:
/// at 32k tokens and a 128k vocabulary the whole would be 8 GiB in bf16 and twice that
/// again in f32. Every token's logits and gradients are its own, so the parts give the
/// same gradient at `last`; the loss is the parts' sum, rounded in another order than
/// one sum over all tokens, and the gradients of anything the head trains sum part by
/// part.
pub(super) fn head_and_loss<B: TrainKernels>(
    model: &CausalLm<B>,
    last: Tensor<B, 3>,
    tensors: &BatchTensors<B>,
    denominator: f64,
    chunk: usize,
    grads: &mut GradAccumulator<B::InnerBackend>,
) -> (Tensor<B::InnerBackend, 1>, Tensor<B::InnerBackend, 3>) {
    let [batch, seq, hidden] = last.dims();
    let rows = batch * seq;
    let chunk = if chunk == 0 { rows } else { chunk.min(rows) };
    let flat = last.reshape([1, rows, hidden]);
    let targets = tensors.targets.clone().reshape([1, rows]);
    let mask = tensors.mask.clone().reshape([1, rows]);
    let mut value: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut parts = Vec::with_capacity(rows.div_ceil(chunk));
    for start in (0..rows).step_by(chunk) {
        let len = chunk.min(rows - start);
        let part = flat.clone().narrow(1, start, len).detach().require_grad();
        let logits = model.head(model.model.norm.forward(part.clone()));
        let loss = masked_loss_sum_of(
            logits,
            targets.clone().narrow(1, start, len),
            mask.clone().narrow(1, start, len),
        ) / denominator;
        let loss_value = loss.clone().inner();
        value = Some(match value {
            Some(sum) => sum + loss_value,
            None => loss_value,
        });
        let stage = loss.backward();
        grads.add(model, &stage);
        parts.push(
            part.grad(&stage)
                .expect("the loss depends on the last layer"),
        );
    }
    let dy = match parts.len() {
        1 => parts.pop().expect("one part"),
        _ => Tensor::cat(parts, 1),
    };
    let dy = dy.reshape([batch, seq, hidden]);
    (value.expect("at least one part"), dy)
}

/// The backward pass of `Σ y ⊙ dy`: every tensor `y` depends on gets the gradient it
/// would get from `dy` arriving at `y`.
pub(super) fn through<B: AutodiffBackend, const D: usize>(
    y: Tensor<B, D>,
    dy: Tensor<B::InnerBackend, D>,
) -> B::Gradients {
    (y * Tensor::from_inner(dy)).sum().backward()
}

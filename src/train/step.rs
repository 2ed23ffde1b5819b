//! One training step, shared by `graft train` and `graft bench train`: forward and
//! loss on each micro-batch, backward, the gradients summed, clipped on the device by
//! their global norm, one AdamW update. Nothing is read back to the host: the losses
//! and the norm come out as device tensors, which the trainer reads when it logs
//! ([`PendingSteps`]), so that on a GPU the host keeps queueing work instead of waiting
//! for each step to drain.

use super::loss::{masked_loss_sum, BatchTensors};
use super::optim::{AdamW, GradAccumulator};
use crate::compute::kernels::TrainKernels;
use crate::model::{CausalLm, ParamInfo};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use std::time::{Duration, Instant};

/// What a step leaves on the device.
pub struct StepResult<I: Backend> {
    /// Each micro-batch's mean token loss, `[grad_accum]`.
    pub losses: Tensor<I, 1>,
    /// The global norm of the gradients averaged over micro-batches, before clipping,
    /// `[1]` (`None` when nothing trained).
    pub grad_norm: Option<Tensor<I, 1>>,
}

/// One optimizer step over `batches` (one per micro-batch). `clip` is the global norm
/// clip (0 disables it; the norm is still computed); `lr_of` gives each parameter's
/// learning rate.
pub fn train_step<B: TrainKernels>(
    model: CausalLm<B>,
    optimizer: &mut AdamW<B::InnerBackend>,
    batches: Vec<BatchTensors<B>>,
    clip: f64,
    lr_of: impl Fn(&ParamInfo) -> f64,
) -> (CausalLm<B>, StepResult<B::InnerBackend>) {
    let accum = batches.len();
    let shares = batches
        .into_iter()
        .map(|tensors| {
            let denominator = tensors.tokens.max(1) as f64;
            (tensors, denominator)
        })
        .collect();
    B::step_work(|| {
        let (grads, losses) = backward(&model, shares);
        update(model, optimizer, grads, losses, accum, clip, lr_of)
    })
}

/// Forward, loss and backward of each micro-batch share, `(tensors, denominator)`:
/// the summed gradients of `sum(loss_i / denominator_i)` and each share's
/// `loss / denominator`, `[shares]`. A share is a whole micro-batch (its denominator
/// its own trained tokens) or one device's rows of it (the whole micro-batch's
/// tokens, so that the devices' parts add up to its mean).
pub fn backward<B: TrainKernels>(
    model: &CausalLm<B>,
    shares: Vec<(BatchTensors<B>, f64)>,
) -> (GradAccumulator<B::InnerBackend>, Tensor<B::InnerBackend, 1>) {
    let mut grads = GradAccumulator::<B::InnerBackend>::default();
    let mut losses = Vec::with_capacity(shares.len());
    let options = crate::compute::options::current();
    for (tensors, denominator) in shares {
        if options.recompute_layers {
            let loss = super::layer_recompute::recomputed_backward(
                model,
                &tensors,
                denominator,
                &mut grads,
            );
            losses.push(loss);
            continue;
        }
        let chunk = options.loss_chunk_tokens;
        if chunk > 0 {
            // The head and the loss in parts, each its own backward pass, so that only
            // one part's logits live at a time; then the layers, from the gradient
            // that reached their output.
            let last = model.forward_layers(tensors.inputs.clone());
            let mut share = GradAccumulator::default();
            let (loss, dy) = super::layer_recompute::head_and_loss(
                model,
                last.clone().detach(),
                &tensors,
                denominator,
                chunk,
                &mut share,
            );
            share.add(model, &super::layer_recompute::through(last, dy));
            grads.merge(share);
            losses.push(loss);
            continue;
        }
        let logits = model.forward(tensors.inputs.clone());
        let loss = masked_loss_sum(logits, &tensors) / denominator;
        losses.push(loss.clone().inner());
        grads.add(model, &loss.backward());
    }
    (grads, Tensor::cat(losses, 0))
}

/// The optimizer's half of a step: gradients summed over `accum` micro-batches are
/// averaged, clipped on the device and applied.
pub fn update<B: TrainKernels>(
    model: CausalLm<B>,
    optimizer: &mut AdamW<B::InnerBackend>,
    grads: GradAccumulator<B::InnerBackend>,
    losses: Tensor<B::InnerBackend, 1>,
    accum: usize,
    clip: f64,
    lr_of: impl Fn(&ParamInfo) -> f64,
) -> (CausalLm<B>, StepResult<B::InnerBackend>) {
    // An infinite clip computes the norm and scales by exactly 1.
    let clip = if clip > 0.0 { clip } else { f64::INFINITY };
    let scale = 1.0 / accum.max(1) as f64;
    let (model, grad_norm) = optimizer.step_clipped(model, grads, scale, clip, lr_of);
    (model, StepResult { losses, grad_norm })
}

/// A scalar tensor's values as f64, read in the tensor's own dtype (f32 from the loss
/// and the norm), never through the backend's float type, which is bf16 on a bf16 GPU.
pub fn read_f64<I: Backend>(tensor: Tensor<I, 1>) -> Vec<f64> {
    tensor
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap_or_default()
}

/// A step whose results are still on the device.
struct Pending<I: Backend> {
    step: u64,
    result: StepResult<I>,
    lr: f64,
    tokens: usize,
    tokens_seen: u64,
}

/// A step as the record sees it, once read back.
#[derive(Debug, Clone, Copy)]
pub struct LoggedStep {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
    /// Tokens trained on since the run began, this step's included.
    pub tokens_seen: u64,
    /// Tokens per second over the window of steps read back together.
    pub tokens_per_s: f64,
}

/// Steps whose losses and norms have not been read back yet. The trainer reads them
/// at most every [`PendingSteps::READ_INTERVAL`], and always before an evaluation, a
/// checkpoint or the end, so no checkpoint is written after a step whose loss was not
/// seen. Reading changes no value, so where the reads fall does not change a result.
pub struct PendingSteps<I: Backend> {
    steps: Vec<Pending<I>>,
    window_started: Instant,
    /// Tokens and seconds of every window read except the first (which holds the
    /// kernels' compilation): the steady throughput.
    steady: (usize, Duration),
    windows: usize,
}

impl<I: Backend> Default for PendingSteps<I> {
    fn default() -> Self {
        PendingSteps {
            steps: Vec::new(),
            window_started: Instant::now(),
            steady: (0, Duration::ZERO),
            windows: 0,
        }
    }
}

impl<I: Backend> PendingSteps<I> {
    /// How long results may wait on the device before they are read.
    pub const READ_INTERVAL: Duration = Duration::from_millis(500);

    /// Starts a new window now (after an evaluation or a checkpoint, whose time is
    /// not training time).
    pub fn restart_clock(&mut self) {
        if self.steps.is_empty() {
            self.window_started = Instant::now();
        }
    }

    pub fn push(
        &mut self,
        step: u64,
        result: StepResult<I>,
        lr: f64,
        tokens: usize,
        tokens_seen: u64,
    ) {
        self.steps.push(Pending {
            step,
            result,
            lr,
            tokens,
            tokens_seen,
        });
    }

    /// Whether the results have waited long enough to be read.
    pub fn due(&self) -> bool {
        !self.steps.is_empty() && self.window_started.elapsed() >= Self::READ_INTERVAL
    }

    /// Reads every pending step back, in step order.
    pub fn read(&mut self) -> Vec<LoggedStep> {
        let steps = std::mem::take(&mut self.steps);
        let mut logged: Vec<LoggedStep> = steps
            .into_iter()
            .map(|pending| {
                let losses = read_f64(pending.result.losses);
                let loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
                let grad_norm = pending
                    .result
                    .grad_norm
                    .map(|norm| read_f64(norm).first().copied().unwrap_or(f64::NAN))
                    .unwrap_or(0.0);
                LoggedStep {
                    step: pending.step,
                    loss,
                    grad_norm,
                    lr: pending.lr,
                    tokens: pending.tokens,
                    tokens_seen: pending.tokens_seen,
                    tokens_per_s: 0.0,
                }
            })
            .collect();
        // The reads above waited for the device: the window's time is its work's.
        let elapsed = self.window_started.elapsed();
        let tokens: usize = logged.iter().map(|s| s.tokens).sum();
        let rate = tokens as f64 / elapsed.as_secs_f64().max(1e-9);
        for step in &mut logged {
            step.tokens_per_s = rate;
        }
        if !logged.is_empty() {
            if self.windows > 0 {
                self.steady.0 += tokens;
                self.steady.1 += elapsed;
            }
            self.windows += 1;
        }
        self.window_started = Instant::now();
        logged
    }

    /// Training tokens per second after the first window (None before a second).
    pub fn steady_tokens_per_s(&self) -> Option<f64> {
        (self.steady.1 > Duration::ZERO).then(|| self.steady.0 as f64 / self.steady.1.as_secs_f64())
    }
}

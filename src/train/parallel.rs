//! Data-parallel training on several GPUs of one machine (`compute.devices`).
//!
//! One process, one thread per device. Every device holds the whole model and its own
//! optimizer state. Each micro-batch is cut into contiguous row shares, one per device
//! (the global batch and the data order are exactly those of one device, so the recipe
//! means the same thing on any number of devices). A device's loss for its share is
//! divided by the trained tokens of the *whole* micro-batch, so that the devices'
//! gradients add up to the gradient of the micro-batch's mean loss. After the backward
//! passes, each device's gradients (and its loss parts) are packed into one flat buffer
//! per dtype and summed across the devices by one NCCL all-reduce, burn's
//! [`crate::compute::kernels::Kernels::all_reduce_sum`]; every device then takes the
//! same clipped AdamW step on the same numbers, so the copies stay identical and the
//! first device's model is the run's (it evaluates and checkpoints).
//!
//! One call per dtype rather than one per parameter: LoRA has hundreds of small
//! matrices, and their gradients are all ready only at the end of the backward pass
//! anyway (the last layer's adapters are the first to finish, but the step cannot
//! begin before the first layer's), so per-parameter overlap would buy little and cost
//! hundreds of launches.

use std::collections::BTreeMap;

use super::loss::BatchTensors;
use super::optim::{AdamW, GradAccumulator};
use super::step::{backward, update, StepResult};
use crate::compute::kernels::{Kernels, TrainKernels};
use crate::compute::Devices;
use crate::data::Batch;
use crate::model::{CausalLm, ParamInfo};
use burn::tensor::Tensor;

/// Another device's copy of the model and of the optimizer state.
pub struct Replica<B: TrainKernels> {
    pub device: B::Device,
    pub model: CausalLm<B>,
    pub optimizer: AdamW<B::InnerBackend>,
}

/// The devices of a run beyond the first, the trainer's own.
pub struct DataParallel<B: TrainKernels> {
    /// Every device, the trainer's first.
    devices: Vec<B::Device>,
    pub replicas: Vec<Replica<B>>,
}

/// The backend's devices that `devices` names, refused naming the key where the
/// machine lacks one.
pub fn devices_of<B: TrainKernels>(devices: Devices) -> Result<Vec<B::Device>, String> {
    devices.indices().into_iter().map(B::device).collect()
}

/// Rows `[start, end)` of a `rows`-row batch that share `rank` of `shares` takes:
/// contiguous, sizes differing by at most one.
pub fn share_rows(rank: usize, shares: usize, rows: usize) -> std::ops::Range<usize> {
    rank * rows / shares..(rank + 1) * rows / shares
}

impl<B: TrainKernels> DataParallel<B> {
    /// `devices` (the trainer's first) with the copies for the others, which `replicas`
    /// holds in the same order as `devices[1..]`.
    pub fn new(devices: Vec<B::Device>, replicas: Vec<Replica<B>>) -> Self {
        debug_assert_eq!(devices.len(), replicas.len() + 1);
        DataParallel { devices, replicas }
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// One optimizer step over the micro-batches `batches` on every device; returns the
    /// first device's model and its results (every device's are the same).
    pub fn step(
        &mut self,
        model: CausalLm<B>,
        optimizer: &mut AdamW<B::InnerBackend>,
        batches: &[Batch],
        clip: f64,
        lr_of: impl Fn(&ParamInfo) -> f64 + Sync,
    ) -> Result<(CausalLm<B>, StepResult<B::InnerBackend>), String> {
        let shares = self.devices.len();
        if let Some(short) = batches.iter().find(|b| b.batch < shares) {
            return Err(format!(
                "a batch of {} rows cannot be shared by compute.devices = {shares}: make the batch size at least the number of devices",
                short.batch
            ));
        }
        let devices = &self.devices;
        let lr_of = &lr_of;
        let step_on = move |rank: usize, model: CausalLm<B>, optimizer: &mut AdamW<_>| {
            let device = &devices[rank];
            let parts = batches
                .iter()
                .map(|batch| {
                    let rows = batch.rows(share_rows(rank, shares, batch.batch));
                    let denominator = batch.trained_tokens().max(1) as f64;
                    (BatchTensors::<B>::new(&rows, device), denominator)
                })
                .collect();
            let (grads, losses) = backward(&model, parts);
            let (grads, losses) = sum_over_devices(grads, losses, devices);
            update(model, optimizer, grads, losses, batches.len(), clip, lr_of)
        };
        let replicas = std::mem::take(&mut self.replicas);
        let (lead, replicas) = std::thread::scope(|scope| {
            let workers: Vec<_> = replicas
                .into_iter()
                .enumerate()
                .map(|(i, mut replica)| {
                    scope.spawn(move || {
                        let (model, _) = step_on(i + 1, replica.model, &mut replica.optimizer);
                        replica.model = model;
                        replica
                    })
                })
                .collect();
            let lead = step_on(0, model, optimizer);
            let replicas: Vec<Replica<B>> = workers
                .into_iter()
                .map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect();
            (lead, replicas)
        });
        self.replicas = replicas;
        Ok(lead)
    }

    /// Applies `change` to every other device's model and optimizer (what the trainer
    /// did to its own: opening blocks, restoring moments).
    pub fn for_each(
        &mut self,
        mut change: impl FnMut(&B::Device, CausalLm<B>, &mut AdamW<B::InnerBackend>) -> CausalLm<B>,
    ) {
        for replica in &mut self.replicas {
            let model = replica.model.clone();
            replica.model = change(&replica.device, model, &mut replica.optimizer);
        }
    }
}

/// Each gradient and the loss parts summed across `devices`: one flat buffer per dtype,
/// in the gradients' name order (the same on every device), one all-reduce each.
fn sum_over_devices<I: Kernels>(
    grads: GradAccumulator<I>,
    losses: Tensor<I, 1>,
    devices: &[I::Device],
) -> (GradAccumulator<I>, Tensor<I, 1>) {
    if devices.len() <= 1 {
        return (grads, losses);
    }
    // `None` names the losses.
    let mut groups: BTreeMap<String, Vec<(Option<String>, Tensor<I, 1>)>> = BTreeMap::new();
    let entries = grads
        .grads
        .into_iter()
        .map(|(name, grad)| (Some(name), grad))
        .chain([(None, losses)]);
    for (name, tensor) in entries {
        groups
            .entry(format!("{:?}", tensor.dtype()))
            .or_default()
            .push((name, tensor));
    }
    let mut summed = GradAccumulator::default();
    let mut losses = None;
    for (_, members) in groups {
        let sizes: Vec<usize> = members.iter().map(|(_, t)| t.dims()[0]).collect();
        let (names, tensors): (Vec<_>, Vec<_>) = members.into_iter().unzip();
        let flat = I::all_reduce_sum(Tensor::cat(tensors, 0), devices);
        for (name, part) in names.into_iter().zip(flat.split_with_sizes(sizes, 0)) {
            match name {
                Some(name) => {
                    summed.grads.insert(name, part);
                }
                None => losses = Some(part),
            }
        }
    }
    (summed, losses.expect("the losses are in one group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_row_once_in_order() {
        for rows in 2..12 {
            for shares in 1..=rows.min(4) {
                let ranges: Vec<_> = (0..shares).map(|r| share_rows(r, shares, rows)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[shares - 1].end, rows);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn a_share_keeps_its_rows_and_counts_its_replay_rows() {
        // Four rows of two tokens; the last three came from replay.
        let batch = Batch {
            batch: 4,
            seq_len: 2,
            input_ids: (0..8).collect(),
            target_ids: (10..18).collect(),
            loss_mask: vec![1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0],
            replay_rows: 3,
        };
        let first = batch.rows(share_rows(0, 2, 4));
        let second = batch.rows(share_rows(1, 2, 4));
        assert_eq!(first.input_ids, [0, 1, 2, 3]);
        assert_eq!(second.target_ids, [14, 15, 16, 17]);
        assert_eq!((first.replay_rows, second.replay_rows), (1, 2));
        assert_eq!(
            first.trained_tokens() + second.trained_tokens(),
            batch.trained_tokens()
        );
    }
}

//! Data-parallel training on several GPUs of one machine (`compute.devices`).
//!
//! One process, one host thread per device for the whole run: the trainer's thread
//! drives the first device, and every other device has a thread of its own that loads
//! its copy of the model, restores its optimizer state and runs its share of each step
//! (a device's tensors are only ever touched by its thread, as on one GPU). Every
//! device holds the whole model and its own optimizer state.
//!
//! Each micro-batch is cut into contiguous row shares, one per device (the global batch
//! and the data order are exactly those of one device, so the recipe means the same
//! thing on any number of devices). A device's loss for its share is divided by the
//! trained tokens of the *whole* micro-batch, so that the devices' gradients add up to
//! the gradient of the micro-batch's mean loss. After the backward passes, each
//! device's gradients (and its loss parts) are packed into one flat buffer per dtype
//! and summed across the devices by one NCCL all-reduce, burn's
//! [`crate::compute::kernels::Kernels::all_reduce_sum`]; every device then takes the
//! same clipped AdamW step on the same numbers, so the copies stay identical and the
//! first device's model is the run's (it evaluates and checkpoints).
//!
//! One call per dtype rather than burn-autodiff's per-parameter all-reduce: LoRA has
//! hundreds of small matrices, and graft's step needs every gradient before the
//! clipping norm anyway. The per-parameter path, which overlaps communication with the
//! rest of the backward pass, has not been measured against this one.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};

use super::loss::BatchTensors;
use super::optim::{learning_rate_of, AdamW, GradAccumulator};
use super::step::{backward, update, StepResult};
use crate::compute::kernels::{Kernels, TrainKernels};
use crate::compute::Devices;
use crate::data::Batch;
use crate::model::CausalLm;
use burn::tensor::Tensor;

/// Another device's copy of the model and of the optimizer state.
pub struct Replica<B: TrainKernels> {
    pub model: CausalLm<B>,
    pub optimizer: AdamW<B::InnerBackend>,
}

/// What a device's thread holds: its copy, once made.
pub type Slot<B> = Option<Replica<B>>;

type Job<B> = Box<dyn FnOnce(&mut Slot<B>) + Send>;

/// The thread of one device beyond the first.
struct Worker<B: TrainKernels> {
    jobs: mpsc::Sender<Job<B>>,
    thread: std::thread::JoinHandle<()>,
}

/// The devices of a run beyond the first (the trainer's own) and their threads.
pub struct DataParallel<B: TrainKernels> {
    /// Every device, the trainer's first.
    devices: Vec<B::Device>,
    workers: Vec<Worker<B>>,
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
    /// Starts a thread for each device of `devices` but the first (the caller's).
    pub fn start(devices: Vec<B::Device>) -> Self {
        let workers = (1..devices.len())
            .map(|rank| {
                let (jobs, queue) = mpsc::channel::<Job<B>>();
                let thread = std::thread::Builder::new()
                    .name(format!("graft-device-{rank}"))
                    .spawn(move || {
                        let mut slot: Slot<B> = None;
                        while let Ok(job) = queue.recv() {
                            job(&mut slot);
                        }
                    })
                    .expect("a thread for each device");
                Worker { jobs, thread }
            })
            .collect();
        DataParallel { devices, workers }
    }

    /// Runs `job(rank, device, slot)` on every other device's thread and waits for
    /// all of them.
    pub fn on_each<R: Send + 'static>(
        &self,
        job: impl Fn(usize, &B::Device, &mut Slot<B>) -> R + Send + Sync + 'static,
    ) -> Result<Vec<R>, String> {
        self.on_each_while(job, || ()).1
    }

    /// [`DataParallel::on_each`], with `lead` run on this thread while the others work
    /// (it holds the first device's part of a collective they all take part in).
    fn on_each_while<R: Send + 'static, T>(
        &self,
        job: impl Fn(usize, &B::Device, &mut Slot<B>) -> R + Send + Sync + 'static,
        lead: impl FnOnce() -> T,
    ) -> (T, Result<Vec<R>, String>) {
        let job = Arc::new(job);
        let replies: Vec<_> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, worker)| {
                let (reply, answer) = mpsc::channel();
                let (job, device, rank) = (job.clone(), self.devices[i + 1].clone(), i + 1);
                // A thread that is gone drops the job, and with it `reply`: the wait
                // below reports it.
                let _ = worker.jobs.send(Box::new(move |slot: &mut Slot<B>| {
                    let _ = reply.send(job(rank, &device, slot));
                }));
                (rank, answer)
            })
            .collect();
        let lead = lead();
        let results = replies
            .into_iter()
            .map(|(rank, answer)| {
                answer.recv().map_err(|_| {
                    format!("the thread of device {rank} (of compute.devices) stopped; see its panic above")
                })
            })
            .collect();
        (lead, results)
    }

    /// One optimizer step over the micro-batches `batches` on every device; returns the
    /// first device's model and its results (every device's are the same).
    pub fn step(
        &mut self,
        model: CausalLm<B>,
        optimizer: &mut AdamW<B::InnerBackend>,
        batches: Vec<Batch>,
        clip: f64,
        lr: f64,
        embedding_lr: Option<f64>,
    ) -> Result<(CausalLm<B>, StepResult<B::InnerBackend>), String> {
        let shares = self.devices.len();
        if let Some(short) = batches.iter().find(|b| b.batch < shares) {
            return Err(format!(
                "a batch of {} rows cannot be shared by compute.devices = {shares}: make the batch size at least the number of devices",
                short.batch
            ));
        }
        let batches = Arc::new(batches);
        let devices = Arc::new(self.devices.clone());
        let (theirs, all) = (batches.clone(), devices.clone());
        let (lead, others) = self.on_each_while(
            move |rank, _, slot| {
                let Replica {
                    model,
                    mut optimizer,
                } = slot.take().expect("the copy was made");
                let (model, _) = stop_if_panicked(rank, || {
                    device_step(
                        rank,
                        model,
                        &mut optimizer,
                        &theirs,
                        &all,
                        clip,
                        lr,
                        embedding_lr,
                    )
                });
                *slot = Some(Replica { model, optimizer });
            },
            || {
                device_step(
                    0,
                    model,
                    optimizer,
                    &batches,
                    &devices,
                    clip,
                    lr,
                    embedding_lr,
                )
            },
        );
        others?;
        Ok(lead)
    }
}

impl<B: TrainKernels> Drop for DataParallel<B> {
    fn drop(&mut self) {
        // Each thread ends when its own queue closes. Not while this thread panics:
        // the others may be waiting in a collective it left, and would never end.
        let panicking = std::thread::panicking();
        for Worker { jobs, thread } in self.workers.drain(..) {
            drop(jobs);
            if !panicking {
                let _ = thread.join();
            }
        }
    }
}

/// Runs device `rank`'s part of a step, and ends the process if it panics: the other
/// devices are then waiting in an all-reduce this one will never join, which no thread
/// can leave, so a run would hang instead of failing. What the run recorded is safe
/// (its journal is written as it goes), and `graft resume` continues from its last
/// checkpoint.
fn stop_if_panicked<R>(rank: usize, part: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(part)) {
        Ok(result) => result,
        Err(_) => {
            // The panic hook has printed the panic itself.
            eprintln!(
                "error: device {rank} (of compute.devices) failed during a step while the others wait for it in a collective; graft stops here. `graft resume RUN` continues from the last checkpoint."
            );
            std::process::exit(101);
        }
    }
}

/// Device `rank`'s part of a step: its rows of each micro-batch, forward and backward,
/// the sum across devices, and the (identical) update.
#[allow(clippy::too_many_arguments)]
fn device_step<B: TrainKernels>(
    rank: usize,
    model: CausalLm<B>,
    optimizer: &mut AdamW<B::InnerBackend>,
    batches: &[Batch],
    devices: &[B::Device],
    clip: f64,
    lr: f64,
    embedding_lr: Option<f64>,
) -> (CausalLm<B>, StepResult<B::InnerBackend>) {
    let shares = devices.len();
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
    let lr_of = learning_rate_of(lr, embedding_lr);
    update(model, optimizer, grads, losses, batches.len(), clip, lr_of)
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
    // Members of one dtype's buffer, by name; `None` names the losses.
    type Members<I> = Vec<(Option<String>, Tensor<I, 1>)>;
    let mut groups: BTreeMap<String, Members<I>> = BTreeMap::new();
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

    /// The child half of the next test: the lead waits for a message the other device
    /// would send after its part (as it waits in an all-reduce), and that part panics.
    #[test]
    #[ignore = "run by a_device_that_panics_mid_step_ends_the_process_instead_of_hanging"]
    fn child_a_device_panics_while_the_lead_waits() {
        let (done, wait) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            stop_if_panicked(1, || panic!("device 1 broke"));
            let _ = done.send(());
        });
        let _ = wait.recv();
        // Reached only if the panicking part let the thread go on.
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }

    #[test]
    fn a_device_that_panics_mid_step_ends_the_process_instead_of_hanging() {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "train::parallel::tests::child_a_device_panics_while_the_lead_waits",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > std::time::Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the process still waits a minute after a device panicked");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(101), "{stderr}");
        assert!(
            stderr.contains("device 1 broke"),
            "the panic is printed: {stderr}"
        );
        assert!(stderr.contains("graft resume RUN"), "{stderr}");
    }

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

//! Executing a recipe: the step loop.
//!
//! Everything comes from the recipe and the store (the model folder verified
//! against its registered hashes, data read back from objects), so the same
//! function serves a new run, a resume and a reproduction. Read it top to
//! bottom: set up the model, data and evaluation sets; then for each step,
//! unfreeze on schedule, accumulate gradients, clip, update, log; evaluate,
//! checkpoint and apply retention on their cadence.

use super::config::Experiment;
use super::eval::{self, EvalSet};
use super::optim::{learning_rate_of, AdamW, AdamWConfig};
use super::plan::Plan;
use super::recipe_data::RecipeData;
use super::registry::{self, RegistryError};
use super::state::{self, Kept, TrainerState};
use super::{interrupt, loss, parallel, schedule, step, unfreeze};
use crate::compute::kernels::{Kernels, TrainKernels};
use crate::compute::resident::load_resident;
use crate::compute::{BaseStorage, Checkpointing, Compute, Dtype};
use crate::data::{self, Tokenizer};
use crate::model::weights::load_model_dir_reporting;
use crate::model::{CausalLm, LoraConfig};
use crate::store::refs::BestRank;
use crate::store::{
    DatasetRecord, ExecutionKind, ExecutionStatus, Id, Recorder, Store, StoreError,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Compute(#[from] crate::compute::ComputeError),
    #[error("{0}")]
    Recipe(String),
    #[error("the loss became {value} at step {step}; the run stopped and its last good checkpoint is kept")]
    NonFinite { step: u64, value: f64 },
}

/// What the terminal (or a test) is told while training runs.
pub trait Events {
    fn begin(&mut self, _run: &Id, _first_step: u64, _total: u64) {}
    fn step(&mut self, _step: u64, _loss: f64, _lr: f64) {}
    fn eval(&mut self, _step: u64, _results: &[(String, eval::EvalResult)]) {}
    fn message(&mut self, _text: &str) {}
    /// The base model is loading: `done` of its weight files' `total` bytes read
    /// (and converted or quantized); the last call has `done == total`.
    fn loading(&mut self, _done: u64, _total: u64) {}
    fn end(&mut self) {}
    /// Asked once after each step: `true` ends the execution as interrupted,
    /// with a checkpoint at that step (resumable). The library installs no
    /// signal handler; the caller decides what asks for a stop.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// Events nobody listens to.
pub struct Silent;
impl Events for Silent {}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub run: Id,
    pub execution: u32,
    pub final_step: u64,
    /// Every checkpoint written by this execution, in step order.
    pub checkpoints: Vec<(u64, Id)>,
    pub early_stopped: bool,
    /// The caller asked to stop ([`Events::should_stop`]): the execution ended
    /// as interrupted after checkpointing its last step.
    pub interrupted: bool,
    /// Wall time of the step loop, and the part spent recording.
    pub loop_time: Duration,
    pub record_time: Duration,
    /// The last value of every eval series.
    pub last_eval: BTreeMap<String, f64>,
    /// Training tokens per second after the first window of steps (which holds the
    /// kernels' compilation), evaluation and checkpoint time left out.
    pub tokens_per_s: Option<f64>,
    /// Bytes the trainer thread's memory pool on the first device held at the end
    /// (`None` on the CPU): the activations, the weights and the optimizer's state,
    /// without the CUDA context or cuBLAS's workspace.
    pub pool_reserved: Option<u64>,
}

/// Executes `plan` on backend `B`, which `compute` names (see
/// [`crate::compute::Compute`]; the caller dispatched on it), recording through
/// `recorder`.
#[allow(clippy::too_many_arguments)]
pub fn execute<B: TrainKernels>(
    device: &B::Device,
    store: &Store,
    plan: &Plan,
    kind: ExecutionKind,
    compute: &Compute,
    recorder: &mut dyn Recorder,
    events: &mut dyn Events,
) -> Result<Outcome, TrainError> {
    let (recipe, datasets) = (&plan.recipe, plan.datasets.as_slice());
    let settings = Experiment::from_recipe(recipe)
        .map_err(|e| TrainError::Recipe(format!("the recipe's config cannot be read back: {e}")))?;
    check_compute(&settings, compute)?;
    // The devices that train: the first is the trainer's own (it evaluates and
    // checkpoints), the others hold copies (`parallel`).
    let devices = if compute.options.devices.count() > 1 {
        parallel::devices_of::<B>(compute.options.devices).map_err(TrainError::Recipe)?
    } else {
        vec![device.clone()]
    };
    let device = &devices[0];
    let model_record = &plan.model;
    // What the plan did not bring (a resume or reproduction brings only the
    // recipe) is read from the index, in one open.
    let mut by_id: BTreeMap<Id, DatasetRecord> =
        datasets.iter().map(|d| (d.id, d.clone())).collect();
    let start = {
        let index = store.index()?;
        for used in &recipe.datasets {
            if let std::collections::btree_map::Entry::Vacant(slot) = by_id.entry(used.dataset) {
                slot.insert(index.dataset(&used.dataset)?);
            }
        }
        match kind.resumed_from().or(recipe.start_checkpoint) {
            Some(id) => Some(index.checkpoint(&id)?),
            None => None,
        }
    };
    let folder = match &plan.checked_folder {
        Some(folder) => folder.clone(),
        None => registry::model_folder(model_record)?,
    };
    let tokenizer = Arc::new(Tokenizer::from_dir(&folder)?);
    let seed = recipe.seed;
    let resuming = matches!(kind, ExecutionKind::Resume(_));

    let (mut model, adapter, inherited) = start_model::<B>(
        device,
        store,
        &folder,
        &settings,
        start.as_ref(),
        seed,
        compute,
        events,
    )?;
    // Every other device loads its copy on its own thread, exactly as this one did.
    let mut parallel = if devices.len() > 1 {
        B::InnerBackend::collectives().map_err(TrainError::Recipe)?;
        let parallel = parallel::DataParallel::<B>::start(devices.clone());
        let (store, folder, settings) = (store.clone(), folder.clone(), Arc::new(settings.clone()));
        let (start, compute) = (start.clone(), *compute);
        let made = parallel.on_each(move |_, device, slot| {
            let (model, _, _) = start_model::<B>(
                device,
                &store,
                &folder,
                &settings,
                start.as_ref(),
                seed,
                &compute,
                &mut Silent,
            )?;
            *slot = Some(parallel::Replica {
                model,
                optimizer: AdamW::new(adamw_config(&settings)),
            });
            Ok::<(), TrainError>(())
        });
        for result in made.map_err(TrainError::Recipe)? {
            result?;
        }
        events.message(&format!(
            "training on {} devices (compute.devices = {}), each on an equal share of every batch",
            devices.len(),
            compute.options.devices
        ));
        Some(parallel)
    } else {
        None
    };

    // Where training stands: fresh, or exactly where the checkpoint left it.
    let mut optimizer = AdamW::<B::InnerBackend>::new(adamw_config(&settings));
    let mut trainer = TrainerState::default();
    if let (true, Some(checkpoint)) = (resuming, &start) {
        let (restored, moments) =
            state::load_trainer::<B::InnerBackend>(store, checkpoint, device)?;
        if let Some(parallel) = parallel.as_ref() {
            let (store, checkpoint) = (store.clone(), checkpoint.clone());
            let imported = parallel.on_each(move |_, device, slot| {
                let (_, moments) =
                    state::load_trainer::<B::InnerBackend>(&store, &checkpoint, device)?;
                if let Some(replica) = slot.as_mut() {
                    replica.optimizer.import(moments, device);
                }
                Ok::<(), StoreError>(())
            });
            for result in imported.map_err(TrainError::Recipe)? {
                result?;
            }
        }
        optimizer.import(moments, device);
        trainer = restored;
        // The newest entry was saved before its own id existed.
        for kept in &mut trainer.kept {
            if kept.step == checkpoint.step && kept.id == Id([0; 32]) {
                kept.id = checkpoint.id;
            }
        }
    }

    // Data: the train file (less its validation split) with replay mixed in,
    // then the evaluation sets.
    let sources = RecipeData {
        store,
        tokenizer: tokenizer.clone(),
        records: &by_id,
        recipe,
        settings: &settings,
    };
    let mut stream = sources.train_stream()?;
    if resuming {
        stream.seek(&trainer.stream)?;
    }
    let eval_sets = sources.eval_sets()?;

    if let Some(budget) = settings.train.forgetting_budget {
        if !eval_sets.iter().any(|set| set.inherited) {
            return Err(TrainError::Recipe(format!(
                "train.forgetting_budget = {budget}: this run has no ancestor eval set to keep within it (a budget needs a fork whose ancestors have eval sets, with data.eval_ancestors = true)"
            )));
        }
    }
    let budget = settings.train.forgetting_budget;

    let total = settings.train.steps;
    // Every input has been read and checked: only now does a base model seen
    // for the first time enter the index, so a run that cannot start records
    // nothing.
    registry::record_model(store, model_record.clone())?;
    let (run, execution) = recorder.begin(recipe, datasets, kind, plan.notes.clone())?;
    recorder.record_compute(compute.to_canon())?;
    events.begin(&run.id, trainer.step + 1, total);
    let mut record_time = Duration::ZERO;
    let mut checkpoints_written = Vec::new();
    let mut last_eval = BTreeMap::new();
    let mut baseline: BTreeMap<String, f64> = BTreeMap::new();
    let layers = model.model.layers.len();
    let mut open_blocks = Vec::new();

    let loop_started = Instant::now();
    let mut pending = step::PendingSteps::<B::InnerBackend>::default();
    let mut interrupt_start = None;
    let mut stop_reason = "early stop";
    let result = (|| -> Result<(u64, bool, bool), TrainError> {
        if let (true, Some(checkpoint)) = (resuming, &start) {
            interrupt_start = interrupt::transient_start(checkpoint, &trainer);
            // A crash between recording a checkpoint and retiring the ones
            // retention no longer keeps leaves those live: retire them now,
            // so the kept set is what an uninterrupted run keeps.
            let stale: Vec<Id> = store
                .index()?
                .run_checkpoints(&run.id)?
                .into_iter()
                .filter(|c| {
                    !c.retired
                        && c.step < checkpoint.step
                        && !trainer.kept.iter().any(|k| k.id == c.id)
                })
                .map(|c| c.id)
                .collect();
            for id in stale {
                recorder.retire_checkpoint(id)?;
            }
        }
        if let Some(parallel) = parallel.as_ref() {
            let step = trainer.step.max(1);
            open_trainable(
                parallel,
                &settings,
                adapter.is_some(),
                step,
                &open_blocks,
                layers,
            )
            .map_err(TrainError::Recipe)?;
        }
        model = apply_trainability(
            model,
            adapter.is_some(),
            &settings,
            trainer.step.max(1),
            &mut open_blocks,
            layers,
        );
        optimizer.retain(&model.trainable_param_names());
        let trainable_count = count_trainable(&model);
        record_time += timed(|| {
            recorder.log_metrics(
                trainer.step,
                &[("trainable_params", trainable_count as f64)],
            )
        })?;
        if settings.train.baseline_eval && !resuming && !eval_sets.is_empty() {
            let results = eval::evaluate_all(&model.valid(), &eval_sets);
            // Forgetting is tracked on the ancestors' sets only.
            for ((name, result), set) in results.iter().zip(&eval_sets) {
                if set.inherited {
                    baseline.insert(name.clone(), result.loss);
                }
            }
            let write = Instant::now();
            log_eval(recorder, 0, &results, &baseline, budget, &mut last_eval)?;
            record_time += write.elapsed();
            events.eval(0, &results);
        }
        if resuming {
            // Forgetting is measured against the loss at the start of the run.
            baseline = recorded_baseline(store, &run.id, &eval_sets)?;
        }
        let mut early_stopped = false;
        while trainer.step < total {
            let step = trainer.step + 1;
            for device in &devices {
                B::seed(device, mix_seed(seed, step));
            }
            let before = open_blocks.clone();
            model = apply_trainability(
                model,
                adapter.is_some(),
                &settings,
                step,
                &mut open_blocks,
                layers,
            );
            if let (Some(parallel), true) = (parallel.as_ref(), open_blocks != before) {
                open_trainable(
                    parallel,
                    &settings,
                    adapter.is_some(),
                    step,
                    &before,
                    layers,
                )
                .map_err(TrainError::Recipe)?;
            }
            if open_blocks != before {
                optimizer.retain(&model.trainable_param_names());
                let count = count_trainable(&model);
                events.message(&format!(
                    "step {step}: training {count} parameters ({} base blocks open)",
                    open_blocks.len()
                ));
                record_time +=
                    timed(|| recorder.log_metrics(step, &[("trainable_params", count as f64)]))?;
            }

            let mut batches = Vec::with_capacity(settings.optim.grad_accum);
            let mut step_tokens = 0usize;
            for _ in 0..settings.optim.grad_accum {
                let Some(batch) = stream.next_batch()? else {
                    return Err(TrainError::Recipe("the training stream ended".into()));
                };
                step_tokens += batch.batch * batch.seq_len;
                batches.push(batch);
            }
            let lr = schedule::learning_rate(
                &settings.optim.schedule,
                settings.optim.lr,
                settings.optim.warmup_steps,
                settings.optim.min_lr_ratio,
                step,
                total,
            );
            let embedding_lr = settings
                .optim
                .embedding_lr
                .map(|e| e * lr / settings.optim.lr);
            let clip = settings.optim.grad_clip;
            let (next, result) = match parallel.as_mut() {
                Some(parallel) => parallel
                    .step(model, &mut optimizer, batches, clip, lr, embedding_lr)
                    .map_err(TrainError::Recipe)?,
                None => {
                    let tensors = batches
                        .iter()
                        .map(|batch| loss::BatchTensors::<B>::new(batch, device))
                        .collect();
                    let lr_of = learning_rate_of(lr, embedding_lr);
                    step::train_step(model, &mut optimizer, tensors, clip, lr_of)
                }
            };
            model = next;
            trainer.step = step;
            trainer.tokens_seen += step_tokens as u64;
            trainer.stream = stream.position();
            pending.push(step, result, lr, step_tokens, trainer.tokens_seen);

            let last = step == total;
            let eval_due =
                !eval_sets.is_empty() && (step % settings.train.eval_every.max(1) == 0 || last);
            let checkpoint_due = step % settings.train.checkpoint_every.max(1) == 0 || last;
            if eval_due || checkpoint_due || pending.due() {
                record_time += log_steps(&mut pending, recorder, events)?;
            }

            let mut metrics = BTreeMap::new();
            let mut budget_used = None;
            if eval_due {
                let results = eval::evaluate_all(&model.valid(), &eval_sets);
                let write = Instant::now();
                let used = log_eval(recorder, step, &results, &baseline, budget, &mut last_eval)?;
                record_time += write.elapsed();
                events.eval(step, &results);
                let main = results[0].1.loss;
                metrics.insert(crate::store::refs::BEST_METRIC.to_string(), main);
                // A checkpoint at this step carries the budget's state, which
                // `@best` reads back.
                metrics.extend(used.iter().map(|(k, v)| (k.clone(), *v)));
                budget_used = used.values().copied().reduce(f64::max);
                if trainer.best_eval.is_none_or(|best| main < best) {
                    trainer.best_eval = Some(main);
                    trainer.evals_since_best = 0;
                } else {
                    trainer.evals_since_best += 1;
                }
                let patience = settings.train.early_stop_patience;
                if patience > 0 && trainer.evals_since_best >= patience {
                    early_stopped = true;
                    events.message(&format!(
                        "step {step}: no improvement in {patience} evaluations, stopping early"
                    ));
                }
                if let Some(most) = budget_used {
                    trainer.evals_over_budget = if most > 1.0 {
                        trainer.evals_over_budget + 1
                    } else {
                        0
                    };
                    if settings.train.stop_on_forgetting && trainer.evals_over_budget >= patience {
                        early_stopped = true;
                        stop_reason = "forgetting budget";
                        events.message(&format!(
                            "step {step}: over the forgetting budget of {} at {patience} evaluations in a row (up to {:.0}% of it used), stopping (stop_on_forgetting)",
                            budget.unwrap_or_default(),
                            most * 100.0
                        ));
                    }
                }
            }
            if checkpoint_due || early_stopped {
                // An early stop is decided at an evaluation, which read every step.
                let eval_loss = metrics.get(crate::store::refs::BEST_METRIC).copied();
                let write = Instant::now();
                // Retention is decided before saving, so the saved state is
                // what an uninterrupted run carries on with. The new entry's
                // id is only known after saving; it is filled in after.
                trainer.kept.push(Kept {
                    step,
                    id: Id([0; 32]),
                    eval_loss,
                    budget_used,
                });
                let retired = retention(
                    &mut trainer.kept,
                    settings.train.keep_last,
                    settings.train.keep_best,
                );
                let id = state::save(
                    recorder,
                    &model,
                    &optimizer,
                    &trainer,
                    &inherited,
                    adapter.as_ref(),
                    metrics,
                )?;
                if let Some(entry) = trainer.kept.last_mut() {
                    entry.id = id;
                }
                checkpoints_written.push((step, id));
                for checkpoint in retired.into_iter().chain(interrupt_start.take()) {
                    recorder.retire_checkpoint(checkpoint)?;
                }
                record_time += write.elapsed();
            }
            if early_stopped {
                break;
            }
            if step < total && events.should_stop() {
                if !checkpoint_due {
                    record_time += log_steps(&mut pending, recorder, events)?;
                    let id = interrupt::save(
                        recorder,
                        &model,
                        &optimizer,
                        &trainer,
                        &inherited,
                        adapter.as_ref(),
                    )?;
                    checkpoints_written.push((step, id));
                }
                return Ok((step, false, true));
            }
            pending.restart_clock();
        }
        Ok((trainer.step, early_stopped, false))
    })();
    let loop_time = loop_started.elapsed();
    match result {
        Ok((final_step, early_stopped, interrupted)) => {
            let (status, reason) = match (interrupted, early_stopped) {
                (true, _) => (ExecutionStatus::Interrupted, Some(interrupt::REASON)),
                (false, true) => (ExecutionStatus::Completed, Some(stop_reason)),
                (false, false) => (ExecutionStatus::Completed, None),
            };
            recorder.end(status, None, reason.map(String::from))?;
            events.end();
            Ok(Outcome {
                run: run.id,
                execution: execution.number,
                final_step,
                checkpoints: checkpoints_written,
                early_stopped,
                interrupted,
                loop_time,
                record_time,
                last_eval,
                tokens_per_s: pending.steady_tokens_per_s(),
                pool_reserved: B::pool_reserved(device),
            })
        }
        Err(error) => {
            events.end();
            let reason = match &error {
                TrainError::NonFinite { step, .. } => {
                    Some(format!("non-finite loss at step {step}"))
                }
                _ => None,
            };
            recorder.end(ExecutionStatus::Failed, Some(error.to_string()), reason)?;
            Err(error)
        }
    }
}

/// The model a run starts from: the base, its adapter (the start checkpoint's, else
/// the outside adapter the recipe names, else a new one), in the compute's dtypes, and
/// every tensor the start checkpoint changed. Returns the model, the adapter as the
/// model names its targets, and the start checkpoint's tensor ids.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn start_model<B: TrainKernels>(
    device: &B::Device,
    store: &Store,
    folder: &std::path::Path,
    settings: &Experiment,
    start: Option<&crate::store::CheckpointRecord>,
    seed: u64,
    compute: &Compute,
    events: &mut dyn Events,
) -> Result<(CausalLm<B>, Option<LoraConfig>, BTreeMap<String, Id>), TrainError> {
    let base = settings.compute.base;
    if crate::model::bnb::is_nf4_folder(folder)? && base != BaseStorage::Nf4 {
        return Err(TrainError::Recipe(format!(
            "{} holds a base saved in bitsandbytes' 4-bit NF4 layout: set compute.base = \"nf4\" (it is \"{}\")",
            folder.display(),
            base.as_str()
        )));
    }
    let loading = Instant::now();
    // The base stays for the whole run: exact buffers, none of the pool's large pages.
    let (mut model, times): (CausalLm<B>, _) = load_resident::<B, _>(device, || {
        load_model_dir_reporting(folder, device, base.scheme(), &mut |done, total| {
            events.loading(done, total)
        })
    })?;
    let converted = match base.scheme() {
        Some(scheme) => format!("quantizing to {}", scheme.as_str()),
        None => "converting".into(),
    };
    events.message(&format!(
        "loaded the base model ({:.2} GB) in {:.1} s: reading {:.1} s, {converted} {:.1} s, to the device {:.1} s",
        times.bytes as f64 / 1e9,
        loading.elapsed().as_secs_f64(),
        times.read.as_secs_f64(),
        times.convert.as_secs_f64(),
        times.device.as_secs_f64(),
    ));
    let outside_adapter = settings.adapter.as_ref().and_then(|a| a.from.as_deref());
    if let (None, Some(id)) = (start, outside_adapter) {
        model = super::adapter_start::load_stored(store, model, id)?;
        events.message(&format!(
            "continuing adapter {}: {}",
            &id[..12.min(id.len())],
            super::adapter_start::FRESH_OPTIMIZER
        ));
    }
    let adapter: Option<LoraConfig> = match start {
        Some(checkpoint) => state::load_adapter_config(store, checkpoint)?,
        None => model.lora.clone(),
    }
    .or_else(|| {
        settings.adapter.as_ref().map(|a| LoraConfig {
            rank: a.rank,
            alpha: a.alpha,
            dropout: a.dropout,
            targets: a.targets.clone(),
            use_rslora: a.rslora,
        })
    });
    if let (Some(config), None) = (&adapter, &model.lora) {
        model = model.with_new_lora(config, seed)?;
    }
    // The adapter as the model names its targets (Phi-3's fused qkv_proj for q/k/v),
    // which is what checkpoints record and PEFT exports list.
    let adapter = model.lora.clone().or(adapter);
    if compute.options.dtype == Dtype::Bf16 {
        // The frozen base computes in bf16; what trains stays f32.
        model = model.with_lora_in_f32();
    }
    let mut inherited = BTreeMap::new();
    if let Some(checkpoint) = start {
        model = model.load_named_tensors(state::load_tensors(store, checkpoint)?)?;
        inherited = checkpoint.tensors.clone();
    }
    Ok((model, adapter, inherited))
}

/// LoRA runs train the adapter plus the blocks the schedule has opened by
/// `step`; full fine-tuning trains everything.
fn apply_trainability<B: Backend>(
    model: CausalLm<B>,
    lora: bool,
    settings: &Experiment,
    step: u64,
    open_blocks: &mut Vec<crate::model::Block>,
    layers: usize,
) -> CausalLm<B> {
    if !lora {
        if open_blocks.is_empty() {
            *open_blocks = unfreeze::open_blocks(&[], 0, layers);
        }
        return model.set_trainable(|_| true);
    }
    let wanted = unfreeze::open_blocks(&settings.unfreeze.schedule, step, layers);
    if &wanted == open_blocks && step > 1 {
        return model;
    }
    *open_blocks = wanted.clone();
    model.set_trainable(|p| p.is_lora || wanted.contains(&p.block))
}

fn count_trainable<B: Backend>(model: &CausalLm<B>) -> usize {
    model
        .params()
        .iter()
        .filter(|p| p.trainable)
        .map(|p| p.shape.iter().product::<usize>())
        .sum()
}

/// A per-step seed: dropout masks depend on (seed, step) only, so a resumed
/// execution draws exactly what an uninterrupted one would.
fn mix_seed(seed: u64, step: u64) -> u64 {
    let hash = blake3::hash(&[seed.to_le_bytes(), step.to_le_bytes()].concat());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// Reads the pending steps back and records them; fails on the first non-finite loss
/// (nothing after it was checkpointed: every checkpoint is preceded by a read).
fn log_steps<I: Backend>(
    pending: &mut step::PendingSteps<I>,
    recorder: &mut dyn Recorder,
    events: &mut dyn Events,
) -> Result<Duration, TrainError> {
    let mut record_time = Duration::ZERO;
    for logged in pending.read() {
        let mut loss = logged.loss;
        if crate::store::faults::nan_loss_step() == Some(logged.step) {
            loss = f64::NAN;
        }
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: logged.step,
                value: loss,
            });
        }
        record_time += timed(|| {
            recorder.log_metrics(
                logged.step,
                &[
                    ("loss", loss),
                    ("lr", logged.lr),
                    ("grad_norm", logged.grad_norm),
                    ("tokens_per_s", logged.tokens_per_s),
                    ("tokens_seen", logged.tokens_seen as f64),
                ],
            )
        })?;
        events.step(logged.step, loss, logged.lr);
    }
    Ok(record_time)
}

fn adamw_config(settings: &Experiment) -> AdamWConfig {
    AdamWConfig {
        beta1: settings.optim.beta1,
        beta2: settings.optim.beta2,
        eps: settings.optim.eps,
        weight_decay: settings.optim.weight_decay,
    }
}

/// Makes every other device's copy train what the trainer's does at `step`
/// (`open_blocks`: the blocks open before this step), dropping optimizer state of what
/// no longer trains.
fn open_trainable<B: TrainKernels>(
    parallel: &parallel::DataParallel<B>,
    settings: &Experiment,
    adapter: bool,
    step: u64,
    open_blocks: &[crate::model::Block],
    layers: usize,
) -> Result<(), String> {
    let (settings, open_blocks) = (Arc::new(settings.clone()), open_blocks.to_vec());
    parallel
        .on_each(move |_, _, slot| {
            if let Some(replica) = slot.as_mut() {
                let model = apply_trainability(
                    replica.model.clone(),
                    adapter,
                    &settings,
                    step,
                    &mut open_blocks.clone(),
                    layers,
                );
                replica.optimizer.retain(&model.trainable_param_names());
                replica.model = model;
            }
        })
        .map(|_| ())
}

/// Refuses a compute choice the recipe cannot train with, before anything is written.
fn check_compute(settings: &Experiment, compute: &Compute) -> Result<(), TrainError> {
    if compute.options.dtype != settings.compute.dtype {
        return Err(TrainError::Recipe(format!(
            "the recipe trains with compute.dtype = \"{}\" but the backend was set up for \"{}\"",
            settings.compute.dtype.as_str(),
            compute.options.dtype.as_str()
        )));
    }
    if compute.options.base != settings.compute.base {
        return Err(TrainError::Recipe(format!(
            "the recipe stores its base as compute.base = \"{}\" but the backend was set up for \"{}\"",
            settings.compute.base.as_str(),
            compute.options.base.as_str()
        )));
    }
    let unfreezes = settings
        .unfreeze
        .schedule
        .iter()
        .any(|step| step.layers.trim() != "none");
    let trains_base = settings.adapter.is_none() || unfreezes;
    if compute.options.dtype == Dtype::Bf16 && trains_base {
        return Err(TrainError::Recipe(
            "compute.dtype = \"bf16\" trains LoRA adapters over a frozen bf16 base; full fine-tuning and [unfreeze] would update bf16 weights without f32 master copies, which graft does not keep: set compute.dtype = \"f32\"".into(),
        ));
    }
    if let (Some(scheme), true) = (compute.options.base.scheme(), trains_base) {
        return Err(TrainError::Recipe(format!(
            "compute.base = \"{}\" keeps the base quantized and frozen: full fine-tuning and [unfreeze] cannot train it; give an [adapter] without [unfreeze], or set compute.base = \"dtype\"",
            scheme.as_str()
        )));
    }
    let dropout = settings.adapter.as_ref().map_or(0.0, |a| a.dropout);
    if compute.options.checkpointing == Checkpointing::Layers && dropout > 0.0 {
        return Err(TrainError::Recipe(format!(
            "compute.checkpointing = \"layers\" runs each layer twice, and adapter.dropout = {dropout} would draw other masks the second time: set adapter.dropout = 0, or compute.checkpointing = \"none\" or \"balanced\""
        )));
    }
    Ok(())
}

fn timed<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<Duration, TrainError> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

/// Records one evaluation; returns, with a forgetting `budget`, the part of
/// it used on each ancestor set (`forget_budget_used/<set>`).
fn log_eval(
    recorder: &mut dyn Recorder,
    step: u64,
    results: &[(String, eval::EvalResult)],
    baseline: &BTreeMap<String, f64>,
    budget: Option<f64>,
    last_eval: &mut BTreeMap<String, f64>,
) -> Result<BTreeMap<String, f64>, StoreError> {
    let mut values: Vec<(String, f64)> = Vec::new();
    let mut budget_used = BTreeMap::new();
    for (i, (name, result)) in results.iter().enumerate() {
        // `eval_loss`, the series `best` reads, covers trained steps only: the starting
        // point's loss (step 0) stays in `eval/<set>/loss`, so a run that only got
        // worse does not show its starting loss as its best.
        if i == 0 && step > 0 {
            values.push((crate::store::refs::BEST_METRIC.to_string(), result.loss));
        }
        values.push((format!("eval/{name}/loss"), result.loss));
        values.push((format!("eval/{name}/ppl"), result.loss.exp()));
        if let Some(accuracy) = result.accuracy {
            values.push((format!("eval/{name}/acc"), accuracy));
        }
        if let Some(start) = baseline.get(name) {
            values.push((format!("forget/{name}"), result.loss - start));
            if let Some(budget) = budget {
                let used = crate::store::refs::forgetting(result.loss, *start) / budget;
                let key = format!("{}{name}", crate::store::refs::BUDGET_USED_PREFIX);
                values.push((key.clone(), used));
                budget_used.insert(key, used);
            }
        }
    }
    for (name, value) in &values {
        last_eval.insert(name.clone(), *value);
    }
    let borrowed: Vec<(&str, f64)> = values.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    recorder.log_metrics(step, &borrowed)?;
    Ok(budget_used)
}

/// The step-0 eval losses recorded by an earlier execution of the run.
fn recorded_baseline(
    store: &Store,
    run: &Id,
    sets: &[EvalSet],
) -> Result<BTreeMap<String, f64>, StoreError> {
    let index = store.index()?;
    let mut out = BTreeMap::new();
    for set in sets.iter().filter(|s| s.inherited) {
        if let Some((0, value)) = index
            .series(run, &format!("eval/{}/loss", set.name))?
            .first()
            .copied()
        {
            out.insert(set.name.clone(), value);
        }
    }
    Ok(out)
}

/// Keep the last `keep_last` checkpoints and the `keep_best` best as
/// `@best` ranks them (by eval loss, within the forgetting budget first:
/// [`crate::store::refs::BestRank`]); return the ids to retire (removed
/// from `kept`).
pub fn retention(kept: &mut Vec<Kept>, keep_last: usize, keep_best: usize) -> Vec<Id> {
    let mut keep: Vec<Id> = kept
        .iter()
        .rev()
        .take(keep_last.max(1))
        .map(|k| k.id)
        .collect();
    let mut scored: Vec<(&Kept, BestRank)> = kept
        .iter()
        .filter_map(|k| {
            let loss = k.eval_loss.filter(|loss| loss.is_finite())?;
            Some((k, BestRank::new(loss, k.budget_used)))
        })
        .collect();
    scored.sort_by(|a, b| a.1.rank_cmp(&b.1).then(b.0.step.cmp(&a.0.step)));
    keep.extend(scored.iter().take(keep_best).map(|(k, _)| k.id));
    let retired: Vec<Id> = kept
        .iter()
        .filter(|k| !keep.contains(&k.id))
        .map(|k| k.id)
        .collect();
    kept.retain(|k| keep.contains(&k.id));
    retired
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(step: u64, eval_loss: f64, budget_used: Option<f64>) -> Kept {
        Kept {
            step,
            id: Id([step as u8; 32]),
            eval_loss: Some(eval_loss),
            budget_used,
        }
    }

    #[test]
    fn keep_best_prefers_checkpoints_within_the_forgetting_budget() {
        // Step 40 has the lowest loss but used twice the budget; step 20 is
        // the best within it; step 10 is over it, but forgot least of those over.
        let mut checkpoints = vec![
            kept(10, 3.0, Some(1.5)),
            kept(20, 2.0, Some(0.9)),
            kept(30, 2.5, Some(3.0)),
            kept(40, 1.0, Some(2.0)),
            kept(50, 1.5, Some(2.5)),
        ];
        let retired = retention(&mut checkpoints, 1, 2);
        let steps: Vec<u64> = checkpoints.iter().map(|k| k.step).collect();
        assert_eq!(steps, [10, 20, 50]);
        assert_eq!(retired, [Id([30; 32]), Id([40; 32])]);

        // Without a budget the same losses keep the lowest two.
        let mut checkpoints: Vec<Kept> = [(10, 3.0), (20, 2.0), (30, 2.5), (40, 1.0), (50, 1.5)]
            .map(|(step, loss)| kept(step, loss, None))
            .to_vec();
        retention(&mut checkpoints, 1, 2);
        let steps: Vec<u64> = checkpoints.iter().map(|k| k.step).collect();
        assert_eq!(steps, [40, 50]);
    }
}

//! Stopping a run on request (Ctrl-C, SIGTERM): the step that was running
//! finishes, a checkpoint is written, and the execution ends as interrupted,
//! so `graft resume` continues exactly where it stopped.
//!
//! The interrupt checkpoint sits outside retention: the trainer state saved in
//! it is the one an uninterrupted run carries on with (its own entry is not in
//! `kept`), so every later checkpoint of the resumed run has the id it would
//! have had without the interruption. Once the resumed execution writes its
//! next regular checkpoint, the interrupt checkpoint is retired.

use super::optim::AdamW;
use super::state::{self, TrainerState};
use crate::model::{CausalLm, LoraConfig};
use crate::store::{CheckpointRecord, Id, Recorder, StoreError};
use std::collections::BTreeMap;

/// The reason recorded on an execution that stopped on request.
pub const REASON: &str = "stopped on request (signal)";

/// Saves the state after the last completed step, leaving retention's
/// bookkeeping as it is; returns the checkpoint's id.
pub fn save<B: crate::compute::kernels::TrainKernels>(
    recorder: &mut dyn Recorder,
    model: &CausalLm<B>,
    optimizer: &AdamW<B::InnerBackend>,
    trainer: &TrainerState,
    inherited: &BTreeMap<String, Id>,
    adapter: Option<&LoraConfig>,
) -> Result<Id, StoreError> {
    // No eval metrics: an interrupt checkpoint is never `@best`.
    state::save(
        recorder,
        model,
        optimizer,
        trainer,
        inherited,
        adapter,
        BTreeMap::new(),
    )
}

/// The checkpoint a resumed execution starts from, when it was written on an
/// interrupt (retention does not know it): the resumed execution retires it
/// with its next checkpoint.
pub fn transient_start(start: &CheckpointRecord, trainer: &TrainerState) -> Option<Id> {
    (!trainer.kept.iter().any(|kept| kept.step == start.step)).then_some(start.id)
}

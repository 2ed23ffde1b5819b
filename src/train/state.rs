//! Checkpoint contents: what is saved so an execution can continue exactly.
//!
//! A checkpoint holds every tensor that differs from the base model (the
//! start checkpoint's tensors, overridden by whatever trains now: LoRA and
//! unfrozen blocks), the optimizer moments per parameter, the adapter config,
//! and the trainer state (step, data position, retention and early-stopping
//! bookkeeping). There is no RNG state to save: every step reseeds from
//! (seed, step), so a resumed execution draws the same dropout masks.

use super::optim::AdamW;
use crate::data::StreamPosition;
use crate::model::{CausalLm, LoraConfig};
use crate::store::tensor_blob::TensorBlob;
use crate::store::{CheckpointRecord, Id, Recorder, Store, StoreError};
use burn::tensor::backend::Backend;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

const TRAINER_MAGIC: &[u8; 8] = b"GRAFTTRN";
const TRAINER_VERSION: u8 = 1;

pub const TRAINER_KEY: &str = "trainer";
pub const ADAPTER_KEY: &str = "adapter";
const MOMENT_M: &str = "optim.m/";
const MOMENT_V: &str = "optim.v/";

/// A checkpoint retention knows about.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Kept {
    pub step: u64,
    pub id: Id,
    pub eval_loss: Option<f64>,
    /// The most forgetting budget used on one ancestor set at this step
    /// (runs with a budget only: left out otherwise, so the state's bytes,
    /// and the checkpoint ids, of runs without one stay as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_used: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// The last completed step.
    pub step: u64,
    pub stream: StreamPosition,
    pub tokens_seen: u64,
    /// Checkpoints of this run still kept, oldest first.
    pub kept: Vec<Kept>,
    pub best_eval: Option<f64>,
    pub evals_since_best: u64,
    /// Evaluations in a row over the forgetting budget (`stop_on_forgetting`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub evals_over_budget: u64,
    /// Adam step count per parameter.
    pub optimizer_steps: BTreeMap<String, u64>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl TrainerState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = TRAINER_MAGIC.to_vec();
        out.push(TRAINER_VERSION);
        out.extend(rmp_serde::to_vec_named(self).expect("trainer state serializes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<TrainerState, String> {
        if bytes.len() < 9 || &bytes[..8] != TRAINER_MAGIC {
            return Err("not a graft trainer state".into());
        }
        if bytes[8] != TRAINER_VERSION {
            return Err(format!(
                "trainer state version {} (this graft reads {TRAINER_VERSION})",
                bytes[8]
            ));
        }
        // A damaged state that nests deeply must fail, not overflow the stack.
        let mut deserializer = rmp_serde::Deserializer::from_read_ref(&bytes[9..]);
        deserializer.set_max_depth(32);
        TrainerState::deserialize(&mut deserializer).map_err(|e| e.to_string())
    }
}

fn blob(data: &TensorData) -> Vec<u8> {
    let values: Vec<f32> = data.clone().convert::<f32>().to_vec().unwrap_or_default();
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    TensorBlob {
        dtype: "F32".into(),
        shape: data.shape.to_vec(),
        data: bytes,
    }
    .encode()
}

fn unblob(bytes: &[u8], what: &str) -> Result<TensorData, StoreError> {
    let blob = TensorBlob::decode(bytes, what)?;
    let values: Vec<f32> = match blob.dtype.as_str() {
        "F32" => blob
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "BF16" => blob
            .data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "F16" => blob
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(StoreError::BadRecord {
                tree: "objects",
                key: what.into(),
                reason: format!("unsupported dtype {other}"),
            })
        }
    };
    Ok(TensorData::new(values, blob.shape))
}

/// Save a checkpoint through the recorder; returns its id.
#[allow(clippy::too_many_arguments)]
pub fn save<B: crate::compute::kernels::TrainKernels>(
    recorder: &mut dyn Recorder,
    model: &CausalLm<B>,
    optimizer: &AdamW<B::InnerBackend>,
    state: &TrainerState,
    inherited: &BTreeMap<String, Id>,
    adapter: Option<&LoraConfig>,
    metrics: BTreeMap<String, f64>,
) -> Result<Id, StoreError> {
    let mut tensors = inherited.clone();
    for (name, data) in model.trainable_tensors() {
        tensors.insert(name, recorder.put_object(&blob(&data))?);
    }
    let mut objects = BTreeMap::new();
    let mut trainer = state.clone();
    trainer.optimizer_steps.clear();
    for (name, m, v, steps) in optimizer.export() {
        objects.insert(format!("{MOMENT_M}{name}"), recorder.put_object(&blob(&m))?);
        objects.insert(format!("{MOMENT_V}{name}"), recorder.put_object(&blob(&v))?);
        trainer.optimizer_steps.insert(name, steps);
    }
    objects.insert(
        TRAINER_KEY.to_string(),
        recorder.put_object(&trainer.encode())?,
    );
    if let Some(adapter) = adapter {
        let json = serde_json::to_vec(adapter).expect("adapter config serializes");
        objects.insert(ADAPTER_KEY.to_string(), recorder.put_object(&json)?);
    }
    recorder.add_checkpoint(state.step, tensors, objects, metrics)
}

/// The tensors of a checkpoint, by name (HF layout).
pub fn load_tensors(
    store: &Store,
    checkpoint: &CheckpointRecord,
) -> Result<HashMap<String, TensorData>, StoreError> {
    store.checkpoint_objects_here(checkpoint)?;
    checkpoint
        .tensors
        .iter()
        .map(|(name, id)| {
            let bytes = store.objects().get(id)?;
            Ok((
                name.clone(),
                unblob(
                    &bytes,
                    &format!("checkpoint {} tensor {name}", checkpoint.id.short()),
                )?,
            ))
        })
        .collect()
}

/// The adapter config a checkpoint was trained with, if any.
pub fn load_adapter_config(
    store: &Store,
    checkpoint: &CheckpointRecord,
) -> Result<Option<LoraConfig>, StoreError> {
    let Some(id) = checkpoint.state.get(ADAPTER_KEY) else {
        return Ok(None);
    };
    store.checkpoint_objects_here(checkpoint)?;
    let bytes = store.objects().get(id)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::BadRecord {
            tree: "objects",
            key: format!("checkpoint {} adapter", checkpoint.id.short()),
            reason: e.to_string(),
        })
}

/// Optimizer moments by parameter: (name, m, v, Adam steps).
pub type SavedMoments = Vec<(String, TensorData, TensorData, u64)>;

/// Trainer state and optimizer moments of a checkpoint, for an exact resume.
pub fn load_trainer<B: Backend>(
    store: &Store,
    checkpoint: &CheckpointRecord,
    device: &B::Device,
) -> Result<(TrainerState, SavedMoments), StoreError> {
    let bad = |reason: String| StoreError::BadRecord {
        tree: "checkpoints",
        key: checkpoint.id.to_hex(),
        reason,
    };
    let id = checkpoint
        .state
        .get(TRAINER_KEY)
        .ok_or_else(|| bad("no trainer state".into()))?;
    store.checkpoint_objects_here(checkpoint)?;
    let state = TrainerState::decode(&store.objects().get(id)?).map_err(bad)?;
    let mut moments = Vec::new();
    for (name, steps) in &state.optimizer_steps {
        let get = |prefix: &str| -> Result<TensorData, StoreError> {
            let id = checkpoint
                .state
                .get(&format!("{prefix}{name}"))
                .ok_or_else(|| bad(format!("no optimizer moment for {name}")))?;
            unblob(&store.objects().get(id)?, name)
        };
        moments.push((name.clone(), get(MOMENT_M)?, get(MOMENT_V)?, *steps));
    }
    let _ = device;
    Ok((state, moments))
}

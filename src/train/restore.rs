//! Rebuilding a model from the store: a base model, or a checkpoint (its
//! base, its adapter config and every tensor it changed).

use super::registry::{self, RegistryError};
use super::state;
use crate::compute::resident::load_resident;
use crate::model::weights::{load_model_dir_reporting, LoadProgress};
use crate::model::{CausalLm, LoraConfig};
use crate::store::{Id, Store, StoreError, Target};
use burn::tensor::backend::Backend;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("`{reference}` names a {kind}: give a model or a checkpoint (a run means its last checkpoint)")]
    NotAModel {
        reference: String,
        kind: &'static str,
    },
}

/// A model rebuilt from a ref, with where it came from.
pub struct Restored<B: Backend> {
    pub model: CausalLm<B>,
    /// The base model's folder (tokenizer, config).
    pub folder: PathBuf,
    pub adapter: Option<LoraConfig>,
    /// The checkpoint, when the ref named one.
    pub checkpoint: Option<Id>,
    pub base_model: Id,
}

pub fn restore<B: Backend>(
    store: &Store,
    reference: &str,
    device: &B::Device,
) -> Result<Restored<B>, RestoreError> {
    restore_reporting(store, reference, device, &mut |_, _| {})
}

/// [`restore`], saying through `progress` how many bytes of the base's weight files
/// have been read.
pub fn restore_reporting<B: Backend>(
    store: &Store,
    reference: &str,
    device: &B::Device,
    progress: LoadProgress<'_>,
) -> Result<Restored<B>, RestoreError> {
    let index = store.index()?;
    let checkpoint = match index.resolve(reference)? {
        Target::Model(id) => Err(id),
        Target::Checkpoint(id) => Ok(index.checkpoint(&id)?),
        Target::Run(_) => Ok(index.checkpoint(&index.resolve_checkpoint(reference)?)?),
        other => {
            return Err(RestoreError::NotAModel {
                reference: reference.into(),
                kind: other.kind(),
            })
        }
    };
    // A checkpoint is rebuilt over its base as the run stored it (an adapter trained
    // over an NF4 base continues, evaluates and merges over the same NF4 values); a
    // model as its folder stores it.
    let (model_id, checkpoint, quantize) = match checkpoint {
        Err(model) => (model, None, None),
        Ok(checkpoint) => {
            let recipe = index.run(&checkpoint.run)?.recipe;
            let base = crate::train::Experiment::from_recipe(&recipe)
                .map(|e| e.compute.base)
                .unwrap_or_default();
            (recipe.base_model, Some(checkpoint), base.scheme())
        }
    };
    let record = index.get_model(&model_id)?.ok_or(StoreError::NotFound {
        kind: "model",
        id: model_id,
    })?;
    drop(index);
    let folder = registry::model_folder(&record)?;
    let (mut model, _): (CausalLm<B>, _) = load_resident::<B, _>(device, || {
        load_model_dir_reporting(&folder, device, quantize, progress)
    })?;
    let mut adapter = None;
    if let Some(checkpoint) = &checkpoint {
        adapter = state::load_adapter_config(store, checkpoint)?;
        if let Some(config) = &adapter {
            model = model.with_new_lora(config, 0)?;
        }
        model = model.load_named_tensors(state::load_tensors(store, checkpoint)?)?;
    }
    Ok(Restored {
        model,
        folder,
        adapter,
        checkpoint: checkpoint.map(|c| c.id),
        base_model: model_id,
    })
}

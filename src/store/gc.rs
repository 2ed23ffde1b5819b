//! Garbage collection: mark every object reachable from a model, dataset,
//! kept checkpoint, fork point or ref, then sweep the rest.
//!
//! An object written moments ago may belong to a checkpoint whose journal
//! frame is not yet written, so objects younger than a grace period are never
//! swept (git's prune-expire, for the same reason).

use super::adapters::{read_adapter, recipe_adapter};
use super::canonical::Id;
use super::error::Result;
use super::index::Index;
use super::objects::ObjectStore;
use super::refs::Target;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub reachable: usize,
    pub removed: Vec<Id>,
    pub bytes_freed: u64,
    pub kept_young: usize,
    pub temp_files_removed: usize,
    pub dry_run: bool,
}

/// Every object id some record needs.
pub fn reachable_objects(index: &Index, objects: &ObjectStore) -> Result<BTreeSet<Id>> {
    let mut marked = BTreeSet::new();
    for model in index.models()? {
        marked.insert(model.config);
        marked.insert(model.tokenizer);
        marked.extend(model.tensors.values().copied());
        marked.extend(model.files.values().copied());
    }
    for dataset in index.datasets()? {
        marked.insert(dataset.file_object);
    }
    // A run started from an outside adapter keeps its files.
    for run in index.all_runs()? {
        if let Some(id) = recipe_adapter(&run.recipe.config) {
            marked.insert(id);
            if let Ok(adapter) = read_adapter(objects, &id) {
                marked.extend(adapter.objects());
            }
        }
    }
    // Checkpoints that something continues from stay whole even when
    // retention retired them.
    let mut pinned = BTreeSet::new();
    for run in index.all_runs()? {
        pinned.extend(run.recipe.start_checkpoint);
        for execution in index.executions(&run.id)? {
            pinned.extend(execution.resumed_from);
        }
    }
    for reference in index.all_refs()? {
        if reference.kind == Target::Checkpoint(reference.target).kind() {
            pinned.insert(reference.target);
        }
    }
    for checkpoint in index.all_checkpoints()? {
        if !checkpoint.retired || pinned.contains(&checkpoint.id) {
            marked.extend(checkpoint.tensors.values().copied());
            marked.extend(checkpoint.state.values().copied());
        }
    }
    Ok(marked)
}

pub fn collect(
    index: &Index,
    objects: &ObjectStore,
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport> {
    let marked = reachable_objects(index, objects)?;
    let listing = objects.list()?;
    let now = SystemTime::now();
    let is_young = |path: &std::path::Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() < grace)
            .unwrap_or(true)
    };
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    for id in listing.objects {
        if marked.contains(&id) {
            report.reachable += 1;
            continue;
        }
        if is_young(&objects.path_of(&id)) {
            report.kept_young += 1;
            continue;
        }
        report.bytes_freed += if dry_run {
            objects.size_of(&id)
        } else {
            objects.remove(&id)?
        };
        report.removed.push(id);
    }
    for temp in listing.temp_files {
        if !is_young(&temp) {
            if !dry_run {
                let _ = std::fs::remove_file(&temp);
            }
            report.temp_files_removed += 1;
        }
    }
    Ok(report)
}

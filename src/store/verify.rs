//! Integrity check: re-hash every object and check every reference between
//! records. A checkpoint whose objects a metadata-only pull left on a remote
//! is not damaged: it is listed apart, with where its objects live.

use super::adapters::{read_adapter, recipe_adapter};
use super::canonical::Id;
use super::error::{Result, StoreError};
use super::index::Index;
use super::objects::ObjectStore;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub records_checked: usize,
    /// Objects whose bytes do not match their name, with the file path.
    pub corrupt_objects: Vec<String>,
    /// References from a record to something that is not there.
    pub dangling: Vec<String>,
    /// Records that cannot be decoded.
    pub unreadable: Vec<String>,
    /// Checkpoints whose objects are not here but on a remote (a
    /// metadata-only pull left them there; they are fetched when used).
    /// Not a problem.
    pub on_remote: Vec<String>,
    pub objects_on_remote: usize,
    /// Files of models referenced in place that no longer hash as registered,
    /// each line naming the file. The store cannot read weight files: the
    /// caller fills this in (`crate::train::registry::check_model_folder`).
    pub changed_model_files: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt_objects.is_empty()
            && self.dangling.is_empty()
            && self.unreadable.is_empty()
            && self.changed_model_files.is_empty()
    }
}

/// `left_on_remote`: checkpoint -> where a metadata-only pull left its
/// objects (see [`super::remote::lazy::holders`]).
pub fn verify(
    index: &Index,
    objects: &ObjectStore,
    left_on_remote: &BTreeMap<Id, String>,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let listing = objects.list()?;
    for id in &listing.objects {
        report.objects_checked += 1;
        match objects.check(id) {
            Ok(()) => {}
            Err(StoreError::CorruptObject { id, actual, path }) => {
                report.corrupt_objects.push(format!(
                    "object {id} ({}): content hashes to {actual}",
                    path.display()
                ))
            }
            Err(e) => report.corrupt_objects.push(format!("object {id}: {e}")),
        }
    }
    let need_object = |report: &mut VerifyReport, owner: String, id: &Id| {
        if !objects.contains(id) {
            report
                .dangling
                .push(format!("{owner} needs object {id}, which is missing"));
        }
    };
    for model in index.models()? {
        report.records_checked += 1;
        if model.copied {
            for (name, id) in &model.tensors {
                need_object(
                    &mut report,
                    format!("model {} tensor {name}", model.id.short()),
                    id,
                );
            }
        } else if !std::path::Path::new(&model.path).is_dir() {
            report.dangling.push(format!(
                "model {} refers to {}, which is gone",
                model.id.short(),
                model.path
            ));
        }
    }
    for dataset in index.datasets()? {
        report.records_checked += 1;
        need_object(
            &mut report,
            format!("dataset {}", dataset.id.short()),
            &dataset.file_object,
        );
        if let Some(run) = dataset.replay_of {
            if index.get_run(&run)?.is_none() {
                report.dangling.push(format!(
                    "dataset {} replays run {}, which is missing",
                    dataset.id.short(),
                    run
                ));
            }
        }
    }
    for run in index.all_runs()? {
        report.records_checked += 1;
        let owner = format!("run {}", run.id.short());
        if index.get_model(&run.recipe.base_model)?.is_none() {
            report.dangling.push(format!(
                "{owner} has base model {}, which is missing",
                run.recipe.base_model
            ));
        }
        if let Some(start) = run.recipe.start_checkpoint {
            if index.get_checkpoint(&start)?.is_none() {
                report.dangling.push(format!(
                    "{owner} starts from checkpoint {start}, which is missing"
                ));
            }
        }
        if let Some(parent) = run.parent_run {
            if index.get_run(&parent)?.is_none() {
                report
                    .dangling
                    .push(format!("{owner} has parent run {parent}, which is missing"));
            }
        }
        if let Some(adapter) = recipe_adapter(&run.recipe.config) {
            match read_adapter(objects, &adapter) {
                Ok(stored) => {
                    for id in stored.objects() {
                        need_object(&mut report, format!("{owner} start adapter"), &id);
                    }
                }
                Err(e) => report
                    .dangling
                    .push(format!("{owner} starts from adapter {adapter}: {e}")),
            }
        }
        for dataset in &run.recipe.datasets {
            if index.get_dataset(&dataset.dataset)?.is_none() {
                report.dangling.push(format!(
                    "{owner} uses dataset {}, which is missing",
                    dataset.dataset
                ));
            }
        }
        for execution in index.executions(&run.id)? {
            report.records_checked += 1;
            if let Some(from) = execution.resumed_from {
                if index.get_checkpoint(&from)?.is_none() {
                    report.dangling.push(format!(
                        "{owner} execution {} resumed from checkpoint {from}, which is missing",
                        execution.number
                    ));
                }
            }
        }
    }
    for checkpoint in index.all_checkpoints()? {
        report.records_checked += 1;
        let owner = format!(
            "checkpoint {} ({}@{})",
            checkpoint.id.short(),
            checkpoint.run.short(),
            checkpoint.step
        );
        if index.get_run(&checkpoint.run)?.is_none() {
            report.dangling.push(format!(
                "{owner} belongs to run {}, which is missing",
                checkpoint.run
            ));
        }
        if let Some(parent) = checkpoint.parent {
            if index.get_checkpoint(&parent)?.is_none() {
                report
                    .dangling
                    .push(format!("{owner} has parent {parent}, which is missing"));
            }
        }
        if checkpoint.retired {
            continue;
        }
        let absent = checkpoint
            .tensors
            .values()
            .chain(checkpoint.state.values())
            .filter(|id| !objects.contains(id))
            .count();
        match left_on_remote.get(&checkpoint.id) {
            Some(place) if absent > 0 => {
                report.objects_on_remote += absent;
                report.on_remote.push(format!(
                    "{owner}: {absent} objects not here, on {place} (fetched when first used)"
                ));
            }
            _ => {
                for (name, id) in checkpoint.tensors.iter().chain(checkpoint.state.iter()) {
                    need_object(&mut report, format!("{owner} `{name}`"), id);
                }
            }
        }
    }
    for reference in index.all_refs()? {
        report.records_checked += 1;
        let exists = match reference.kind.as_str() {
            "model" => index.get_model(&reference.target)?.is_some(),
            "dataset" => index.get_dataset(&reference.target)?.is_some(),
            "run" => index.get_run(&reference.target)?.is_some(),
            "checkpoint" => index.get_checkpoint(&reference.target)?.is_some(),
            _ => false,
        };
        if !exists {
            report.dangling.push(format!(
                "tag `{}` points at {} {}, which is missing",
                reference.name, reference.kind, reference.target
            ));
        }
    }
    for entry in index.metrics.iter() {
        let (key, value) = entry?;
        let ok = super::metrics::parse_chunk_key(&key)
            .and_then(|(_, _, _, first)| super::metrics::decode_chunk(first, &value))
            .is_some();
        if !ok {
            report.unreadable.push(format!("metric chunk {key:02x?}"));
        }
    }
    Ok(report)
}

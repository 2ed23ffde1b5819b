//! Live updates without the index: what training processes have journaled
//! but no one has absorbed yet, read straight from their journal files.
//!
//! A trainer appends checksummed frames to `journal/<run>.<execution>.journal`
//! and fsyncs each batch (see [`crate::store::journal`]); reading those files
//! takes no lock, so the UI follows a training run as closely as the trainer
//! writes without ever making it wait. Frames already absorbed into the
//! index are recognised by step (a point at or before a series' last stored
//! step is not new) and by checkpoint id, so reading a journal that is
//! partly absorbed adds each point once.

use super::snapshot::{RunView, Snapshot};
use crate::store::journal::{self, JournalEntry};
use crate::store::{ExecutionStatus, Id};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The journal files present, with their lengths: a change in this list is
/// the signal that something was recorded.
pub fn journal_files(store_root: &Path) -> Vec<(PathBuf, u64)> {
    let dir = journal::journal_dir(store_root);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, u64)> = entries
        .flatten()
        .filter(|entry| journal::parse_journal_name(&entry.file_name().to_string_lossy()).is_some())
        .filter_map(|entry| Some((entry.path(), entry.metadata().ok()?.len())))
        .collect();
    files.sort();
    files
}

/// `base` with every journal's unabsorbed entries applied to its run.
pub fn apply_journals(base: &Snapshot, files: &[(PathBuf, u64)]) -> Snapshot {
    let mut current = base.clone();
    for (path, _) in files {
        let Some((run, execution)) = path
            .file_name()
            .and_then(|name| journal::parse_journal_name(&name.to_string_lossy()))
        else {
            continue;
        };
        let Some(view) = current.run(&run) else {
            // Its run is not in the index yet: the next reload brings both.
            continue;
        };
        // A journal removed since it was listed has been absorbed: the next
        // reload shows its contents.
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let entries: Vec<JournalEntry> = journal::decode_frames(&bytes)
            .into_iter()
            .map(|(entry, _)| entry)
            .collect();
        let updated = apply_entries(view, execution, &entries);
        current.replace(updated);
    }
    current
}

/// One run's view with one execution's journal entries applied.
fn apply_entries(view: &RunView, execution: u32, entries: &[JournalEntry]) -> RunView {
    let mut summary = (*view.summary).clone();
    let mut series: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    let mut checkpoints = (*view.checkpoints).clone();
    for entry in entries {
        match entry {
            JournalEntry::Metrics(points) => {
                for point in points {
                    let last = series
                        .get(&point.series)
                        .and_then(|p| p.last())
                        .map(|(step, _)| *step)
                        .or_else(|| summary.series.get(&point.series).map(|s| s.last_step));
                    if last.is_some_and(|last| point.step <= last) {
                        continue;
                    }
                    summary
                        .series
                        .entry(point.series.clone())
                        .or_default()
                        .add(point.step, point.value);
                    series
                        .entry(point.series.clone())
                        .or_default()
                        .push((point.step, point.value));
                }
            }
            JournalEntry::Checkpoint(checkpoint) => {
                if !checkpoints.iter().any(|c| c.id == checkpoint.id) {
                    checkpoints.push(checkpoint.clone());
                    checkpoints.sort_by_key(|c| c.step);
                }
            }
            JournalEntry::Retire(id) => retire(&mut checkpoints, id),
            JournalEntry::Note { key, value } => {
                summary.run.notes.insert(key.clone(), value.clone());
            }
            JournalEntry::End {
                status,
                ended_at,
                error,
                reason,
            } => {
                if let Some(record) = summary
                    .executions
                    .iter_mut()
                    .find(|e| e.number == execution && e.status == ExecutionStatus::Running)
                {
                    record.status = *status;
                    record.ended_at = Some(*ended_at);
                    record.error = error.clone();
                    record.end_reason = reason.clone();
                }
            }
        }
    }
    summary.checkpoints = checkpoints.len();
    let mut merged = (*view.series).clone();
    for (name, fresh) in series {
        let mut points = merged.get(&name).map(|p| (**p).clone()).unwrap_or_default();
        points.extend(fresh);
        merged.insert(name, Arc::new(points));
    }
    RunView {
        summary: Arc::new(summary),
        checkpoints: Arc::new(checkpoints),
        series: Arc::new(merged),
    }
}

fn retire(checkpoints: &mut [crate::store::CheckpointRecord], id: &Id) {
    if let Some(checkpoint) = checkpoints.iter_mut().find(|c| c.id == *id) {
        checkpoint.retired = true;
    }
}

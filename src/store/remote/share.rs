//! Between the index and the shared form: [`collect`] reads every record a
//! store would share; [`absorb`] merges shared records into an index through
//! the journal's own apply path (`Index::apply_entry`), so what a pull
//! writes is written exactly as what a local training process recorded.
//!
//! Merging is a union and is idempotent: models, datasets, runs and
//! checkpoints are named by their content; an execution is matched by its
//! [`ExecutionKey`]; metric points at or before a series' last stored step
//! are skipped. Records are applied kind by kind in dependency order, so an
//! absorb cut short leaves records whose references all resolve, and running
//! it again completes it.

use super::manifest::{ExecutionKey, Kind, Known, SharedRecord};
use crate::store::error::{Result, StoreError};
use crate::store::index::Index;
use crate::store::journal::{JournalEntry, MetricPoint};
use crate::store::records::*;
use crate::store::Id;
use std::collections::BTreeMap;

/// Every record of the index in shared form, in [`Kind`] order.
pub fn collect(index: &Index) -> Result<Vec<SharedRecord>> {
    let mut out = Vec::new();
    out.extend(index.models()?.into_iter().map(SharedRecord::Model));
    out.extend(index.datasets()?.into_iter().map(SharedRecord::Dataset));
    let runs = index.all_runs()?;
    let mut keys: BTreeMap<(Id, u32), ExecutionKey> = BTreeMap::new();
    let mut executions = Vec::new();
    for run in &runs {
        for execution in index.executions(&run.id)? {
            keys.insert((run.id, execution.number), ExecutionKey::of(&execution));
            executions.push(execution);
        }
    }
    let mut metrics = Vec::new();
    for run in &runs {
        let series = index.run_series(&run.id)?;
        for execution in index.executions(&run.id)? {
            let key = keys[&(run.id, execution.number)].clone();
            for name in &series {
                let Some(series_id) = index.series_id(name)? else {
                    continue;
                };
                let points = index.execution_series(run.seq, execution.number, series_id)?;
                if !points.is_empty() {
                    metrics.push(SharedRecord::Metrics {
                        execution: key.clone(),
                        series: name.clone(),
                        points,
                    });
                }
            }
        }
    }
    out.extend(runs.into_iter().map(|mut run| {
        run.seq = 0;
        SharedRecord::Run(run)
    }));
    out.extend(executions.into_iter().map(SharedRecord::Execution));
    for checkpoint in index.all_checkpoints()? {
        let key = keys
            .get(&(checkpoint.run, checkpoint.execution))
            .cloned()
            .ok_or_else(|| StoreError::BadRecord {
                tree: "checkpoints",
                key: checkpoint.id.to_hex(),
                reason: format!(
                    "names execution {} of run {}, which has no record: run `graft verify`",
                    checkpoint.execution,
                    checkpoint.run.short()
                ),
            })?;
        out.push(SharedRecord::Checkpoint {
            record: checkpoint,
            execution: key,
        });
    }
    out.extend(metrics);
    Ok(out)
}

impl Known for Index {
    fn has_model(&self, id: &Id) -> bool {
        self.models.contains_key(id.0).unwrap_or(false)
    }
    fn has_dataset(&self, id: &Id) -> bool {
        self.datasets.contains_key(id.0).unwrap_or(false)
    }
    fn has_run(&self, id: &Id) -> bool {
        self.runs.contains_key(id.0).unwrap_or(false)
    }
    fn has_checkpoint(&self, id: &Id) -> bool {
        self.checkpoints.contains_key(id.0).unwrap_or(false)
    }
    fn has_execution(&self, key: &ExecutionKey) -> bool {
        local_execution(self, key).ok().flatten().is_some()
    }
}

/// The local number of the execution `key` names, if this index has it.
fn local_execution(index: &Index, key: &ExecutionKey) -> Result<Option<ExecutionRecord>> {
    Ok(index
        .executions(&key.run)?
        .into_iter()
        .find(|e| ExecutionKey::of(e) == *key))
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct AbsorbCounts {
    pub models: usize,
    pub datasets: usize,
    pub runs: usize,
    pub executions: usize,
    pub checkpoints: usize,
    pub metric_points: usize,
}

/// Merge `records` (already checked by [`super::manifest::validate`]) into
/// the index, then flush. Counts what was new.
pub fn absorb(index: &Index, mut records: Vec<SharedRecord>) -> Result<AbsorbCounts> {
    let mut counts = AbsorbCounts::default();
    // Dependency order; runs and executions oldest first so local sequence
    // numbers (the order `log` shows) follow the order they happened in.
    records.sort_by(|a, b| {
        let time = |r: &SharedRecord| match r {
            SharedRecord::Run(run) => Some(run.created_at),
            SharedRecord::Execution(e) => Some(e.started_at),
            _ => None,
        };
        a.kind().cmp(&b.kind()).then(time(a).cmp(&time(b)))
    });
    let mut kind = None;
    for record in records {
        if kind != Some(record.kind()) {
            kind = Some(record.kind());
            if let Some(delay) = crate::store::faults::transfer_delay() {
                std::thread::sleep(delay);
            }
        }
        match record {
            SharedRecord::Model(model) => match index.get_model(&model.id)? {
                None => {
                    index.put_model(&model)?;
                    counts.models += 1;
                }
                // A copy made elsewhere makes the model loadable here too.
                Some(existing) if !existing.copied && model.copied => index.put_model(&model)?,
                Some(_) => {}
            },
            SharedRecord::Dataset(dataset) => {
                if index.get_dataset(&dataset.id)?.is_none() {
                    index.put_dataset(&dataset)?;
                    counts.datasets += 1;
                }
            }
            SharedRecord::Run(run) => counts.runs += absorb_run(index, run)? as usize,
            SharedRecord::Execution(execution) => {
                counts.executions += absorb_execution(index, execution)? as usize
            }
            SharedRecord::Checkpoint { record, execution } => {
                let run = index.run(&record.run)?;
                let number = mapped(index, &execution)?;
                let merged = match index.get_checkpoint(&record.id)? {
                    None => {
                        counts.checkpoints += 1;
                        CheckpointRecord {
                            execution: number,
                            ..record
                        }
                    }
                    // Kept anywhere means kept: the objects came with it.
                    Some(local) if local.retired && !record.retired => CheckpointRecord {
                        retired: false,
                        ..local
                    },
                    Some(_) => continue,
                };
                index.apply_entry(&run.id, run.seq, number, &JournalEntry::Checkpoint(merged))?;
            }
            SharedRecord::Metrics {
                execution,
                series,
                points,
            } => {
                let run = index.run(&execution.run)?;
                let number = mapped(index, &execution)?;
                let stored = index
                    .series_id(&series)?
                    .map(|id| index.execution_series(run.seq, number, id))
                    .transpose()?
                    .and_then(|p| p.last().map(|(step, _)| *step));
                let fresh: Vec<MetricPoint> = points
                    .into_iter()
                    .filter(|(step, _)| stored.is_none_or(|last| *step > last))
                    .map(|(step, value)| MetricPoint {
                        step,
                        series: series.clone(),
                        value,
                    })
                    .collect();
                if fresh.is_empty() {
                    continue;
                }
                counts.metric_points += fresh.len();
                index.apply_entry(&run.id, run.seq, number, &JournalEntry::Metrics(fresh))?;
            }
        }
    }
    index.flush()?;
    Ok(counts)
}

/// Register a shared run under a local sequence number; for one already
/// here, add notes it lacks. Returns whether it was new.
fn absorb_run(index: &Index, mut run: RunRecord) -> Result<bool> {
    if let Some(mut local) = index.get_run(&run.id)? {
        // A crash between the two inserts below leaves a run without its
        // place in `log`; put it back.
        index
            .runs_by_seq
            .insert(local.seq.to_be_bytes(), &run.id.0)?;
        let before = local.notes.len();
        for (key, value) in run.notes {
            local.notes.entry(key).or_insert(value);
        }
        if local.notes.len() != before {
            index.put_run(&local)?;
        }
        return Ok(false);
    }
    run.seq = index.db.generate_id()?;
    index.put_run(&run)?;
    index.runs_by_seq.insert(run.seq.to_be_bytes(), &run.id.0)?;
    Ok(true)
}

/// Add a shared execution under the next local number, or bring a local
/// copy that is still `running` up to the sender's end. Returns whether it
/// was new.
fn absorb_execution(index: &Index, execution: ExecutionRecord) -> Result<bool> {
    let key = ExecutionKey::of(&execution);
    if let Some(local) = local_execution(index, &key)? {
        if local.status == ExecutionStatus::Running && execution.status != ExecutionStatus::Running
        {
            let run = index.run(&local.run)?;
            index.apply_entry(
                &run.id,
                run.seq,
                local.number,
                &JournalEntry::End {
                    status: execution.status,
                    ended_at: execution.ended_at.unwrap_or(execution.started_at),
                    error: execution.error,
                    reason: execution.end_reason,
                },
            )?;
        }
        return Ok(false);
    }
    let number = index
        .executions(&execution.run)?
        .iter()
        .map(|e| e.number)
        .max()
        .unwrap_or(0)
        + 1;
    index.put_execution(&ExecutionRecord {
        number,
        ..execution
    })?;
    Ok(true)
}

fn mapped(index: &Index, key: &ExecutionKey) -> Result<u32> {
    local_execution(index, key)?
        .map(|e| e.number)
        .ok_or_else(|| StoreError::BadRecord {
            tree: "executions",
            key: key.run.to_hex(),
            reason: format!("no execution of this run started at {}", key.started_at),
        })
}

/// Counts of records by kind, for reports.
pub fn count_by_kind(records: &[SharedRecord]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for kind in Kind::ALL {
        counts.insert(kind.name(), 0);
    }
    for record in records {
        *counts.entry(record.kind().name()).or_default() += 1;
    }
    counts
}

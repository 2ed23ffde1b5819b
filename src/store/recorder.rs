//! The recorder: the narrow interface through which training writes to the
//! store.
//!
//! `begin` registers the run and opens an execution in the index (briefly
//! holding it); everything after that (metrics, checkpoints, notes, the end
//! status) goes to the execution's journal, so any number of training
//! processes can record into one store at once. Metrics are buffered and
//! written in batches: a crash loses at most the points logged since the last
//! flush, which happens at least every [`FLUSH_INTERVAL`] and at every
//! checkpoint.

use super::canonical::{Canon, Id};
use super::error::Result;
use super::journal::{JournalEntry, JournalWriter, MetricPoint};
use super::records::*;
use super::Store;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
pub const FLUSH_POINTS: usize = 8192;

/// What a trainer needs from the store.
pub trait Recorder {
    /// Register the run (if new) and its datasets, and open an execution.
    fn begin(
        &mut self,
        recipe: &Recipe,
        datasets: &[DatasetRecord],
        kind: ExecutionKind,
        notes: BTreeMap<String, Canon>,
    ) -> Result<(RunRecord, ExecutionRecord)>;
    /// Buffer metric values for a step.
    fn log_metrics(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()>;
    /// Write buffered metrics durably.
    fn flush(&mut self) -> Result<()>;
    /// Store bytes (a tensor, optimizer state) as an object; it is durable
    /// once a checkpoint that refers to it has been added.
    fn put_object(&mut self, bytes: &[u8]) -> Result<Id>;
    /// Record a checkpoint whose objects are already stored; returns its id.
    fn add_checkpoint(
        &mut self,
        step: u64,
        tensors: BTreeMap<String, Id>,
        state: BTreeMap<String, Id>,
        metrics: BTreeMap<String, f64>,
    ) -> Result<Id>;
    /// Mark a checkpoint as no longer kept by retention.
    fn retire_checkpoint(&mut self, checkpoint: Id) -> Result<()>;
    /// Attach a fact to the run (drift report, parameter counts, ...).
    fn note(&mut self, key: &str, value: Canon) -> Result<()>;
    /// Close the execution.
    fn end(
        &mut self,
        status: ExecutionStatus,
        error: Option<String>,
        reason: Option<String>,
    ) -> Result<()>;
}

pub struct StoreRecorder {
    store: Store,
    active: Option<Active>,
}

struct Active {
    run: Id,
    execution: u32,
    journal: JournalWriter,
    pending: Vec<MetricPoint>,
    last_flush: Instant,
    last_checkpoint: Option<Id>,
}

impl StoreRecorder {
    pub fn new(store: Store) -> Self {
        StoreRecorder {
            store,
            active: None,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn active(&mut self) -> &mut Active {
        self.active
            .as_mut()
            .expect("recorder used before begin(): a programming error in the trainer")
    }

    pub fn run_id(&self) -> Option<Id> {
        self.active.as_ref().map(|a| a.run)
    }

    pub fn execution(&self) -> Option<u32> {
        self.active.as_ref().map(|a| a.execution)
    }
}

impl Recorder for StoreRecorder {
    fn begin(
        &mut self,
        recipe: &Recipe,
        datasets: &[DatasetRecord],
        kind: ExecutionKind,
        notes: BTreeMap<String, Canon>,
    ) -> Result<(RunRecord, ExecutionRecord)> {
        let index = self.store.index()?;
        for dataset in datasets {
            index.put_dataset(dataset)?;
        }
        let run = index.register_run(recipe, notes)?;
        let execution = index.begin_execution(&run.id, kind)?;
        // The journal exists before the execution is acknowledged, so a
        // process killed from here on is detected and marked interrupted.
        let journal = JournalWriter::create(self.store.root(), &run.id, execution.number)?;
        index.flush()?;
        drop(index);
        self.active = Some(Active {
            run: run.id,
            execution: execution.number,
            journal,
            pending: Vec::new(),
            last_flush: Instant::now(),
            last_checkpoint: kind.resumed_from().or(recipe.start_checkpoint),
        });
        Ok((run, execution))
    }

    fn log_metrics(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let active = self.active();
        for (series, value) in values {
            active.pending.push(MetricPoint {
                step,
                series: (*series).to_string(),
                value: *value,
            });
        }
        if active.pending.len() >= FLUSH_POINTS || active.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let active = self.active();
        if !active.pending.is_empty() {
            let points = std::mem::take(&mut active.pending);
            if let Err(e) = active
                .journal
                .append(&[JournalEntry::Metrics(points.clone())])
            {
                // Keep the points so a later flush can retry them.
                active.pending = points;
                return Err(e);
            }
        }
        active.last_flush = Instant::now();
        Ok(())
    }

    fn put_object(&mut self, bytes: &[u8]) -> Result<Id> {
        // Made durable in one sync when the checkpoint that needs it is added.
        self.store.objects().put_bytes_deferred(bytes)
    }

    fn add_checkpoint(
        &mut self,
        step: u64,
        tensors: BTreeMap<String, Id>,
        state: BTreeMap<String, Id>,
        metrics: BTreeMap<String, f64>,
    ) -> Result<Id> {
        self.flush()?;
        // The objects must be on disk before a record points at them.
        self.store.objects().sync()?;
        let active = self.active();
        let id = CheckpointRecord::compute_id(active.run, step, &tensors, &state);
        let record = CheckpointRecord {
            id,
            run: active.run,
            step,
            tensors,
            state,
            parent: active.last_checkpoint,
            metrics,
            execution: active.execution,
            created_at: chrono::Utc::now(),
            retired: false,
        };
        active.journal.append(&[JournalEntry::Checkpoint(record)])?;
        active.last_checkpoint = Some(id);
        Ok(id)
    }

    fn retire_checkpoint(&mut self, checkpoint: Id) -> Result<()> {
        self.active()
            .journal
            .append(&[JournalEntry::Retire(checkpoint)])
    }

    fn note(&mut self, key: &str, value: Canon) -> Result<()> {
        self.active().journal.append(&[JournalEntry::Note {
            key: key.to_string(),
            value,
        }])
    }

    fn end(
        &mut self,
        status: ExecutionStatus,
        error: Option<String>,
        reason: Option<String>,
    ) -> Result<()> {
        self.flush()?;
        self.active().journal.append(&[JournalEntry::End {
            status,
            ended_at: chrono::Utc::now(),
            error,
            reason,
        }])?;
        self.active = None;
        // Absorb now so the result is in the index at once; if another
        // process holds it, the next one to open the index absorbs instead.
        if let Ok(index) = self.store.index() {
            index.flush()?;
        }
        Ok(())
    }
}

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
//!
//! Writing happens on a background thread so the training loop does not wait
//! for the disk: the loop hashes a checkpoint's objects and gets its id at
//! once; the writer stores the objects, syncs them, and only then journals
//! the checkpoint, in the order the calls were made. `flush` and `end` wait
//! for the writer, and report the first error it met (a full disk, say).

use super::canonical::{Canon, Id};
use super::error::{Result, StoreError};
use super::journal::{JournalEntry, JournalWriter, MetricPoint};
use super::objects::ObjectStore;
use super::records::*;
use super::Store;
use std::collections::BTreeMap;
use std::sync::mpsc;
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
    /// Record how the execution computes (backend, dtype, kernels) on its record.
    fn record_compute(&mut self, _compute: Canon) -> Result<()> {
        Ok(())
    }
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
    writer: Writer,
    pending: Vec<MetricPoint>,
    last_flush: Instant,
    last_checkpoint: Option<Id>,
    /// Settles when the last checkpoint added is on disk.
    previous_commit: Option<mpsc::Receiver<Option<String>>>,
}

enum Job {
    Object(Vec<u8>),
    /// Journal entries; `sync_objects` makes every object written so far
    /// durable first (a checkpoint must never point at a lost object).
    Append {
        entries: Vec<JournalEntry>,
        sync_objects: bool,
    },
    /// Reply once everything before it is written, with the first error.
    Barrier(mpsc::Sender<Option<String>>),
}

/// The background writer of one execution.
struct Writer {
    jobs: mpsc::Sender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The first error the writer met, for `send` to report at once: a
    /// trainer whose recording failed (a full disk) stops instead of
    /// training on with nothing recorded.
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Writer {
    fn start(objects: ObjectStore, mut journal: JournalWriter) -> Writer {
        let (jobs, queue) = mpsc::channel::<Job>();
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let failed_in_thread = failed.clone();
        let thread = std::thread::Builder::new()
            .name("graft-recorder".into())
            .spawn(move || {
                let mut failure: Option<StoreError> = None;
                for job in queue {
                    let outcome = match job {
                        Job::Barrier(reply) => {
                            let _ = reply.send(failure.as_ref().map(|e| e.to_string()));
                            continue;
                        }
                        // After a failure nothing more is written: a journal
                        // must not record a checkpoint whose objects failed.
                        _ if failure.is_some() => continue,
                        Job::Object(bytes) => objects.put_bytes_deferred(&bytes).map(|_| ()),
                        Job::Append {
                            entries,
                            sync_objects,
                        } => {
                            let synced = if sync_objects { objects.sync() } else { Ok(()) };
                            synced.and_then(|()| journal.append(&entries))
                        }
                    };
                    if let Err(e) = outcome {
                        if let Ok(mut failed) = failed_in_thread.lock() {
                            *failed = Some(e.to_string());
                        }
                        failure = Some(e);
                    }
                }
            })
            .expect("the recorder thread starts");
        Writer {
            jobs,
            thread: Some(thread),
            failed,
        }
    }

    fn send(&self, job: Job) -> Result<()> {
        if !matches!(job, Job::Barrier(_)) {
            if let Some(error) = self.failed.lock().ok().and_then(|f| f.clone()) {
                return Err(StoreError::Index(format!("recording failed: {error}")));
            }
        }
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Index("the recorder's writer thread has stopped".into()))
    }

    /// Wait until everything sent so far is written.
    fn wait(&self) -> Result<()> {
        Writer::settle(self.mark()?)
    }

    /// A mark in the queue: settles once everything sent before it is written.
    fn mark(&self) -> Result<mpsc::Receiver<Option<String>>> {
        let (reply, answer) = mpsc::channel();
        self.send(Job::Barrier(reply))?;
        Ok(answer)
    }

    fn settle(answer: mpsc::Receiver<Option<String>>) -> Result<()> {
        match answer.recv() {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(StoreError::Index(format!("recording failed: {error}"))),
            Err(_) => Err(StoreError::Index(
                "the recorder's writer thread has stopped".into(),
            )),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let (jobs, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, jobs));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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

    /// Hand buffered metrics to the writer without waiting.
    fn send_pending(&mut self) -> Result<()> {
        let active = self.active();
        active.last_flush = Instant::now();
        if active.pending.is_empty() {
            return Ok(());
        }
        let points = std::mem::take(&mut active.pending);
        active.writer.send(Job::Append {
            entries: vec![JournalEntry::Metrics(points)],
            sync_objects: false,
        })
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
            writer: Writer::start(self.store.objects().clone(), journal),
            pending: Vec::new(),
            last_flush: Instant::now(),
            last_checkpoint: kind.resumed_from().or(recipe.start_checkpoint),
            previous_commit: None,
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
            self.send_pending()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.send_pending()?;
        self.active().writer.wait()
    }

    fn put_object(&mut self, bytes: &[u8]) -> Result<Id> {
        let id = super::canonical::object_id(bytes);
        if !self.store.objects().contains(&id) {
            self.active().writer.send(Job::Object(bytes.to_vec()))?;
        }
        Ok(id)
    }

    fn add_checkpoint(
        &mut self,
        step: u64,
        tensors: BTreeMap<String, Id>,
        state: BTreeMap<String, Id>,
        metrics: BTreeMap<String, f64>,
    ) -> Result<Id> {
        self.send_pending()?;
        let active = self.active();
        // At most one checkpoint is in flight: the previous one must be on
        // disk before this one is journaled, so a failing disk stops the
        // trainer one checkpoint later at the latest, however slow the writer.
        if let Some(previous) = active.previous_commit.take() {
            Writer::settle(previous)?;
        }
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
        active.writer.send(Job::Append {
            entries: vec![JournalEntry::Checkpoint(record)],
            sync_objects: true,
        })?;
        active.previous_commit = Some(active.writer.mark()?);
        active.last_checkpoint = Some(id);
        Ok(id)
    }

    fn retire_checkpoint(&mut self, checkpoint: Id) -> Result<()> {
        self.active().writer.send(Job::Append {
            entries: vec![JournalEntry::Retire(checkpoint)],
            sync_objects: false,
        })
    }

    fn record_compute(&mut self, compute: Canon) -> Result<()> {
        let active = self.active();
        let (run, execution) = (active.run, active.execution);
        let index = self.store.index()?;
        index.set_execution_compute(&run, execution, compute)?;
        index.flush()
    }
    fn note(&mut self, key: &str, value: Canon) -> Result<()> {
        let entry = JournalEntry::Note {
            key: key.to_string(),
            value,
        };
        self.active().writer.send(Job::Append {
            entries: vec![entry],
            sync_objects: false,
        })
    }

    fn end(
        &mut self,
        status: ExecutionStatus,
        error: Option<String>,
        reason: Option<String>,
    ) -> Result<()> {
        self.send_pending()?;
        let end = JournalEntry::End {
            status,
            ended_at: chrono::Utc::now(),
            error,
            reason,
        };
        let active = self.active();
        active.writer.send(Job::Append {
            entries: vec![end],
            sync_objects: true,
        })?;
        let written = active.writer.wait();
        self.active = None;
        written?;
        // Absorb now so the result is in the index at once; if another
        // process holds it, the next one to open the index absorbs instead.
        if let Ok(index) = self.store.index() {
            index.flush()?;
        }
        Ok(())
    }
}

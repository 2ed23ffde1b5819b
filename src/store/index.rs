//! The sled index: one tree per record kind, plus a few secondary trees.
//!
//! Record trees (`models`, `datasets`, `runs`, `executions`, `checkpoints`,
//! `metrics`, `refs`) hold versioned rmp-serde records. Secondary trees keep
//! the orderings queries need: `runs_by_seq` (newest-first `log`),
//! `run_checkpoints` (run id | step -> checkpoint id), `series` (interned
//! metric names), `summaries` (per-run series min/max/last for `runs
//! --where`) and `journals` (how far each journal has been absorbed).
//!
//! sled allows one process at a time, so an `Index` is opened for the length
//! of one command step and dropped; opening retries while another process
//! holds the lock (see `journal` for how trainers avoid holding it).

use super::canonical::Id;
use super::error::{Result, StoreError};
use super::metrics::{self, SeriesSummary};
use super::records::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Index {
    pub(crate) db: sled::Db,
    pub path: PathBuf,
    pub models: sled::Tree,
    pub datasets: sled::Tree,
    pub runs: sled::Tree,
    pub executions: sled::Tree,
    pub checkpoints: sled::Tree,
    pub metrics: sled::Tree,
    pub refs: sled::Tree,
    pub runs_by_seq: sled::Tree,
    pub run_checkpoints: sled::Tree,
    pub series: sled::Tree,
    pub summaries: sled::Tree,
    pub journals: sled::Tree,
}

/// How long to wait for another process to release the index.
fn lock_timeout() -> Duration {
    let ms = super::faults::lock_timeout_ms().unwrap_or(60_000);
    Duration::from_millis(ms)
}

impl Index {
    /// Open (creating if needed) the index at `path`, waiting for the lock.
    pub fn open(path: &Path) -> Result<Index> {
        let start = Instant::now();
        let timeout = lock_timeout();
        let mut attempt: u64 = 0;
        let mut repaired = false;
        let db = loop {
            let config = sled::Config::new()
                .path(path)
                .flush_every_ms(None)
                .cache_capacity(64 << 20);
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                    if start.elapsed() > timeout {
                        return Err(StoreError::Busy {
                            path: path.to_path_buf(),
                            waited_ms: start.elapsed().as_millis() as u64,
                        });
                    }
                    // Jittered backoff: readers in a loop must not starve writers.
                    attempt += 1;
                    let jitter = (std::process::id() as u64 * 7 + attempt * 13) % 17;
                    std::thread::sleep(Duration::from_millis(3 + jitter + attempt.min(20)));
                }
                Err(sled::Error::Corruption { .. }) if !repaired && remove_torn_snapshots(path) => {
                    repaired = true;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let tree = |name: &str| db.open_tree(name);
        Ok(Index {
            models: tree("models")?,
            datasets: tree("datasets")?,
            runs: tree("runs")?,
            executions: tree("executions")?,
            checkpoints: tree("checkpoints")?,
            metrics: tree("metrics")?,
            refs: tree("refs")?,
            runs_by_seq: tree("runs_by_seq")?,
            run_checkpoints: tree("run_checkpoints")?,
            series: tree("series")?,
            summaries: tree("summaries")?,
            journals: tree("journals")?,
            path: path.to_path_buf(),
            db,
        })
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    // ----- models, datasets --------------------------------------------

    pub fn put_model(&self, model: &ModelRecord) -> Result<()> {
        self.models.insert(model.id.0, encode(model))?;
        Ok(())
    }

    pub fn get_model(&self, id: &Id) -> Result<Option<ModelRecord>> {
        get(&self.models, "models", &id.0)
    }

    pub fn models(&self) -> Result<Vec<ModelRecord>> {
        all(&self.models, "models")
    }

    pub fn put_dataset(&self, dataset: &DatasetRecord) -> Result<()> {
        if !self.datasets.contains_key(dataset.id.0)? {
            self.datasets.insert(dataset.id.0, encode(dataset))?;
        }
        Ok(())
    }

    pub fn get_dataset(&self, id: &Id) -> Result<Option<DatasetRecord>> {
        get(&self.datasets, "datasets", &id.0)
    }

    pub fn dataset(&self, id: &Id) -> Result<DatasetRecord> {
        self.get_dataset(id)?.ok_or(StoreError::NotFound {
            kind: "dataset",
            id: *id,
        })
    }

    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        all(&self.datasets, "datasets")
    }

    // ----- runs and executions -----------------------------------------

    /// Register a run; an existing run with the same id (same recipe) is
    /// kept as it was, so re-executing never rewrites history.
    pub fn register_run(
        &self,
        recipe: &Recipe,
        notes: BTreeMap<String, super::Canon>,
    ) -> Result<RunRecord> {
        let id = recipe.run_id();
        if let Some(existing) = self.get_run(&id)? {
            return Ok(existing);
        }
        let parent_run = match &recipe.start_checkpoint {
            Some(checkpoint) => Some(
                self.get_checkpoint(checkpoint)?
                    .ok_or(StoreError::NotFound {
                        kind: "checkpoint",
                        id: *checkpoint,
                    })?
                    .run,
            ),
            None => None,
        };
        let record = RunRecord {
            id,
            recipe: recipe.clone(),
            parent_run,
            seq: self.db.generate_id()?,
            created_at: chrono::Utc::now(),
            notes,
        };
        self.runs.insert(id.0, encode(&record))?;
        self.runs_by_seq.insert(record.seq.to_be_bytes(), &id.0)?;
        Ok(record)
    }

    pub fn put_run(&self, run: &RunRecord) -> Result<()> {
        self.runs.insert(run.id.0, encode(run))?;
        Ok(())
    }

    pub fn get_run(&self, id: &Id) -> Result<Option<RunRecord>> {
        get(&self.runs, "runs", &id.0)
    }

    pub fn run(&self, id: &Id) -> Result<RunRecord> {
        self.get_run(id)?.ok_or(StoreError::NotFound {
            kind: "run",
            id: *id,
        })
    }

    /// Runs newest first, skipping `offset`, at most `limit`.
    pub fn runs_newest_first(&self, offset: usize, limit: usize) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for entry in self.runs_by_seq.iter().rev().skip(offset).take(limit) {
            let (_, id) = entry?;
            let id = Id::from_slice(&id).ok_or_else(|| bad("runs_by_seq", "?", "bad id"))?;
            out.push(self.run(&id)?);
        }
        Ok(out)
    }

    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    pub fn all_runs(&self) -> Result<Vec<RunRecord>> {
        all(&self.runs, "runs")
    }

    pub fn begin_execution(&self, run: &Id, kind: ExecutionKind) -> Result<ExecutionRecord> {
        let number = self
            .executions
            .scan_prefix(run.0)
            .keys()
            .next_back()
            .transpose()?
            .and_then(|k| {
                k.get(32..36)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])))
            })
            .unwrap_or(0)
            + 1;
        let record = ExecutionRecord {
            run: *run,
            number,
            status: ExecutionStatus::Running,
            started_at: chrono::Utc::now(),
            ended_at: None,
            host: host_name(),
            pid: std::process::id(),
            error: None,
            resumed_from: kind.resumed_from(),
            end_reason: None,
            purpose: kind.purpose().to_string(),
            compute: None,
        };
        self.put_execution(&record)?;
        Ok(record)
    }

    /// Records how execution `number` of `run` computes.
    pub fn set_execution_compute(
        &self,
        run: &Id,
        number: u32,
        compute: super::Canon,
    ) -> Result<()> {
        let Some(mut record) = self.get_execution(run, number)? else {
            return Err(StoreError::NotFound {
                kind: "execution",
                id: *run,
            });
        };
        record.compute = Some(compute);
        self.put_execution(&record)
    }

    pub fn put_execution(&self, record: &ExecutionRecord) -> Result<()> {
        self.executions
            .insert(execution_key(&record.run, record.number), encode(record))?;
        Ok(())
    }

    pub fn get_execution(&self, run: &Id, number: u32) -> Result<Option<ExecutionRecord>> {
        get(&self.executions, "executions", &execution_key(run, number))
    }

    pub fn executions(&self, run: &Id) -> Result<Vec<ExecutionRecord>> {
        self.executions
            .scan_prefix(run.0)
            .values()
            .map(|v| decode(&v?, "executions", &run.short()))
            .collect()
    }

    // ----- checkpoints -------------------------------------------------

    pub fn put_checkpoint(&self, checkpoint: &CheckpointRecord) -> Result<()> {
        self.checkpoints
            .insert(checkpoint.id.0, encode(checkpoint))?;
        self.run_checkpoints.insert(
            run_step_key(&checkpoint.run, checkpoint.step),
            &checkpoint.id.0,
        )?;
        Ok(())
    }

    pub fn get_checkpoint(&self, id: &Id) -> Result<Option<CheckpointRecord>> {
        get(&self.checkpoints, "checkpoints", &id.0)
    }

    pub fn checkpoint(&self, id: &Id) -> Result<CheckpointRecord> {
        self.get_checkpoint(id)?.ok_or(StoreError::NotFound {
            kind: "checkpoint",
            id: *id,
        })
    }

    /// Every checkpoint of a run, in step order (retired ones included).
    pub fn run_checkpoints(&self, run: &Id) -> Result<Vec<CheckpointRecord>> {
        let mut out = Vec::new();
        for entry in self.run_checkpoints.scan_prefix(run.0) {
            let (_, id) = entry?;
            let id = Id::from_slice(&id)
                .ok_or_else(|| bad("run_checkpoints", &run.short(), "bad id"))?;
            out.push(self.checkpoint(&id)?);
        }
        Ok(out)
    }

    pub fn checkpoint_at(&self, run: &Id, step: u64) -> Result<Option<CheckpointRecord>> {
        match self.run_checkpoints.get(run_step_key(run, step))? {
            Some(id) => {
                Ok(Some(self.checkpoint(&Id::from_slice(&id).ok_or_else(
                    || bad("run_checkpoints", &run.short(), "bad id"),
                )?)?))
            }
            None => Ok(None),
        }
    }

    pub fn all_checkpoints(&self) -> Result<Vec<CheckpointRecord>> {
        all(&self.checkpoints, "checkpoints")
    }

    // ----- refs ----------------------------------------------------------

    pub fn put_ref(&self, record: &RefRecord) -> Result<()> {
        self.refs.insert(record.name.as_bytes(), encode(record))?;
        Ok(())
    }

    pub fn get_ref(&self, name: &str) -> Result<Option<RefRecord>> {
        get(&self.refs, "refs", name.as_bytes())
    }

    pub fn all_refs(&self) -> Result<Vec<RefRecord>> {
        all(&self.refs, "refs")
    }

    pub fn remove_ref(&self, name: &str) -> Result<bool> {
        Ok(self.refs.remove(name.as_bytes())?.is_some())
    }

    // ----- metrics -------------------------------------------------------

    pub fn series_id(&self, name: &str) -> Result<Option<u32>> {
        Ok(self
            .series
            .get(name.as_bytes())?
            .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes)))
    }

    pub(crate) fn intern_series(&self, name: &str) -> Result<u32> {
        if let Some(id) = self.series_id(name)? {
            return Ok(id);
        }
        let id = self.series.len() as u32 / 2 + 1;
        self.series.insert(name.as_bytes(), &id.to_be_bytes())?;
        let mut reverse = vec![0xffu8];
        reverse.extend_from_slice(&id.to_be_bytes());
        self.series.insert(reverse, name.as_bytes())?;
        Ok(id)
    }

    pub fn series_name(&self, id: u32) -> Result<Option<String>> {
        let mut reverse = vec![0xffu8];
        reverse.extend_from_slice(&id.to_be_bytes());
        Ok(self
            .series
            .get(reverse)?
            .map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    /// The names of every series a run has, sorted.
    pub fn run_series(&self, run: &Id) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for key in self.summaries.scan_prefix(run.0).keys() {
            let key = key?;
            names.push(String::from_utf8_lossy(&key[32..]).to_string());
        }
        Ok(names)
    }

    pub fn summaries(&self, run: &Id) -> Result<BTreeMap<String, SeriesSummary>> {
        let mut out = BTreeMap::new();
        for entry in self.summaries.scan_prefix(run.0) {
            let (key, value) = entry?;
            let name = String::from_utf8_lossy(&key[32..]).to_string();
            out.insert(name, decode(&value, "summaries", &run.short())?);
        }
        Ok(out)
    }

    /// The points of one series of one execution, in step order.
    pub fn execution_series(
        &self,
        run_seq: u64,
        execution: u32,
        series: u32,
    ) -> Result<Vec<(u64, f64)>> {
        let mut points = Vec::new();
        for entry in self
            .metrics
            .scan_prefix(metrics::series_prefix(run_seq, execution, series))
        {
            let (key, value) = entry?;
            let (_, _, _, first) = metrics::parse_chunk_key(&key)
                .ok_or_else(|| bad("metrics", "?", "bad chunk key"))?;
            let chunk = metrics::decode_chunk(first, &value).ok_or_else(|| {
                bad(
                    "metrics",
                    &format!("{run_seq}/{execution}/{series}"),
                    "bad chunk",
                )
            })?;
            points.extend(chunk);
        }
        Ok(points)
    }

    /// A run's series as one history: each execution that resumed from a
    /// checkpoint supersedes the earlier executions' points after that step,
    /// so every step appears exactly once.
    pub fn series(&self, run: &Id, name: &str) -> Result<Vec<(u64, f64)>> {
        let record = self.run(run)?;
        let Some(series) = self.series_id(name)? else {
            return Ok(Vec::new());
        };
        let mut merged: Vec<(u64, f64)> = Vec::new();
        for execution in self.executions(run)? {
            if execution.purpose == ExecutionKind::Reproduce.purpose() {
                // A reproduction is compared with the history, not merged into it.
                continue;
            }
            let points = self.execution_series(record.seq, execution.number, series)?;
            if points.is_empty() {
                continue;
            }
            let resume_step = match execution.resumed_from {
                Some(checkpoint) => self.get_checkpoint(&checkpoint)?.map(|c| c.step),
                None => None,
            };
            match resume_step {
                Some(step) => merged.retain(|(s, _)| *s <= step),
                // A fresh execution (reproduce) replaces the history.
                None => merged.clear(),
            }
            merged.extend(points);
            // A point at the resume step itself (what a resumed execution
            // logs as it starts) may also come from an earlier execution
            // that resumed there: the later one stands.
            merged.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    *earlier = *later;
                }
                same
            });
        }
        Ok(merged)
    }
}

pub fn execution_key(run: &Id, number: u32) -> Vec<u8> {
    let mut key = run.0.to_vec();
    key.extend_from_slice(&number.to_be_bytes());
    key
}

pub fn run_step_key(run: &Id, step: u64) -> Vec<u8> {
    let mut key = run.0.to_vec();
    key.extend_from_slice(&step.to_be_bytes());
    key
}

pub fn summary_key(run: &Id, series: &str) -> Vec<u8> {
    let mut key = run.0.to_vec();
    key.extend_from_slice(series.as_bytes());
    key
}

/// sled writes a snapshot to `snap.N.generating` and renames it once
/// complete, but on open it reads the newest `snap.*` file, `.generating`
/// included: a snapshot cut short (a full disk, a kill) makes the index
/// unopenable, every record in it out of reach. Such a file is never a
/// finished snapshot (the older one and the log still hold every record), so
/// it is removed, under sled's own lock (flock on `db`) so that no live
/// process is writing it. Returns whether any was removed.
fn remove_torn_snapshots(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(entries) = std::fs::read_dir(path) else {
        return false;
    };
    let torn: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|file| {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("snap.") && name.ends_with(".generating")
        })
        .collect();
    if torn.is_empty() {
        return false;
    }
    let Ok(db) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path.join("db"))
    else {
        return false;
    };
    // SAFETY: flock only reads the descriptor, which `db` keeps open; closing
    // it (the drop below) releases the lock.
    if unsafe { libc::flock(db.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return false;
    }
    let mut removed = false;
    for file in torn {
        removed |= std::fs::remove_file(&file).is_ok();
    }
    drop(db);
    removed
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.raw_os_error() == Some(libc::EWOULDBLOCK)
        || e.to_string().contains("could not acquire lock")
}

pub fn host_name() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A record as stored: schema version byte, then rmp-serde.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![SCHEMA_VERSION];
    rmp_serde::encode::write_named(&mut out, record).expect("records always serialize");
    out
}

/// How deeply a stored record may nest (msgpack containers).
const MAX_RECORD_DEPTH: usize = 64;

pub fn decode<T: DeserializeOwned>(bytes: &[u8], tree: &'static str, key: &str) -> Result<T> {
    match bytes.first() {
        Some(&SCHEMA_VERSION) => {
            // Records nest a dozen levels at most; a damaged one that claims
            // hundreds must fail to decode, not overflow the stack.
            let mut deserializer = rmp_serde::Deserializer::from_read_ref(&bytes[1..]);
            deserializer.set_max_depth(MAX_RECORD_DEPTH);
            T::deserialize(&mut deserializer).map_err(|e| bad(tree, key, &e.to_string()))
        }
        Some(version) => Err(bad(
            tree,
            key,
            &format!("schema version {version}, this graft reads {SCHEMA_VERSION}"),
        )),
        None => Err(bad(tree, key, "empty record")),
    }
}

fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    key: &[u8],
) -> Result<Option<T>> {
    match tree.get(key)? {
        Some(bytes) => Ok(Some(decode(&bytes, name, &key_label(key))?)),
        None => Ok(None),
    }
}

fn all<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str) -> Result<Vec<T>> {
    tree.iter()
        .map(|entry| {
            let (key, value) = entry?;
            decode(&value, name, &key_label(&key))
        })
        .collect()
}

fn key_label(key: &[u8]) -> String {
    match Id::from_slice(key) {
        Some(id) => id.to_hex(),
        None => String::from_utf8_lossy(key).to_string(),
    }
}

fn bad(tree: &'static str, key: &str, reason: &str) -> StoreError {
    StoreError::BadRecord {
        tree,
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

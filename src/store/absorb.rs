//! Absorbing journals into the index.
//!
//! Applying a frame is idempotent (records are keyed puts; metric points at
//! or before a series' last stored step are skipped), so the order "apply,
//! flush, then advance the offset, flush" is crash safe: a crash between the
//! two flushes re-applies the same frames to the same effect.

use super::canonical::Id;
use super::error::{Result, StoreError};
use super::index::{summary_key, Index};
use super::journal::{self, JournalEntry, MetricPoint};
use super::metrics::{self, SeriesSummary, CHUNK_POINTS};
use super::records::ExecutionStatus;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

#[derive(Debug, Default, Clone, Copy)]
pub struct AbsorbReport {
    pub journals: usize,
    pub entries: usize,
    pub finished: usize,
}

impl Index {
    /// Absorb every journal under `store_root/journal`.
    pub fn absorb_journals(&self, store_root: &Path) -> Result<AbsorbReport> {
        let dir = journal::journal_dir(store_root);
        let mut report = AbsorbReport::default();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(StoreError::io(&dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|name| journal::parse_journal_name(name).is_some())
            .collect();
        names.sort();
        for name in names {
            report.journals += 1;
            let (applied, finished) = self.absorb_one(&dir.join(&name), &name)?;
            report.entries += applied;
            report.finished += finished as usize;
        }
        Ok(report)
    }

    fn absorb_one(&self, path: &Path, name: &str) -> Result<(usize, bool)> {
        let Some((run_id, execution)) = journal::parse_journal_name(name) else {
            return Ok((0, false));
        };
        let offset = self
            .journals
            .get(name.as_bytes())?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0) as usize;
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, false)),
            Err(e) => return Err(StoreError::io(path, e)),
        };
        let Some(run) = self.get_run(&run_id)? else {
            // A journal whose run never registered cannot be placed.
            return Ok((0, false));
        };
        let frames = if offset <= bytes.len() {
            journal::decode_frames(&bytes[offset..])
        } else {
            Vec::new()
        };
        let mut ended = false;
        let mut end_offset = offset;
        for (entry, frame_end) in &frames {
            ended |= self.apply_entry(&run_id, run.seq, execution, entry)?;
            end_offset = offset + frame_end;
        }
        if !ended && self.owner_is_gone(&run_id, execution)? {
            // The recording process died without ending its execution: what
            // it acknowledged is kept, the rest of the file is a torn tail.
            self.end_execution(
                &run_id,
                execution,
                ExecutionStatus::Interrupted,
                chrono::Utc::now(),
                None,
                Some("process ended without closing the execution".into()),
            )?;
            ended = true;
        }
        if frames.is_empty() && !ended {
            return Ok((0, false));
        }
        self.flush()?;
        self.journals
            .insert(name.as_bytes(), &(end_offset as u64).to_be_bytes())?;
        self.flush()?;
        if ended {
            // Everything is in the index: the journal has done its job.
            let _ = fs::remove_file(path);
            self.journals.remove(name.as_bytes())?;
            self.flush()?;
        }
        Ok((frames.len(), ended))
    }

    /// Apply one journal entry of execution `execution` of run `run_id`
    /// (local sequence number `run_seq`); returns whether it ended the
    /// execution. Journals and records pulled from a remote both come
    /// through here (see `remote::absorb`), so one path writes them.
    pub(crate) fn apply_entry(
        &self,
        run_id: &Id,
        run_seq: u64,
        execution: u32,
        entry: &JournalEntry,
    ) -> Result<bool> {
        match entry {
            JournalEntry::Metrics(points) => {
                self.append_points(run_id, run_seq, execution, points)?
            }
            JournalEntry::Checkpoint(checkpoint) => self.put_checkpoint(checkpoint)?,
            JournalEntry::Retire(id) => {
                if let Some(mut checkpoint) = self.get_checkpoint(id)? {
                    checkpoint.retired = true;
                    self.put_checkpoint(&checkpoint)?;
                }
            }
            JournalEntry::Note { key, value } => {
                let mut record = self.run(run_id)?;
                record.notes.insert(key.clone(), value.clone());
                self.put_run(&record)?;
            }
            JournalEntry::End {
                status,
                ended_at,
                error,
                reason,
            } => {
                self.end_execution(
                    run_id,
                    execution,
                    *status,
                    *ended_at,
                    error.clone(),
                    reason.clone(),
                )?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn end_execution(
        &self,
        run: &Id,
        number: u32,
        status: ExecutionStatus,
        ended_at: chrono::DateTime<chrono::Utc>,
        error: Option<String>,
        reason: Option<String>,
    ) -> Result<()> {
        if let Some(mut record) = self.get_execution(run, number)? {
            record.status = status;
            record.ended_at = Some(ended_at);
            record.error = error;
            record.end_reason = reason;
            self.put_execution(&record)?;
        }
        Ok(())
    }

    /// True when the execution is still marked running but its process,
    /// on this host, no longer exists.
    fn owner_is_gone(&self, run: &Id, number: u32) -> Result<bool> {
        let Some(record) = self.get_execution(run, number)? else {
            return Ok(false);
        };
        if record.status != ExecutionStatus::Running || record.host != super::index::host_name() {
            return Ok(false);
        }
        Ok(!process_alive(record.pid))
    }

    /// Append points to their series' chunks, skipping any at or before the
    /// series' last stored step (so re-absorbing is harmless).
    pub(crate) fn append_points(
        &self,
        run: &Id,
        run_seq: u64,
        execution: u32,
        points: &[MetricPoint],
    ) -> Result<()> {
        let mut groups: BTreeMap<&str, Vec<(u64, f64)>> = BTreeMap::new();
        for point in points {
            groups
                .entry(point.series.as_str())
                .or_default()
                .push((point.step, point.value));
        }
        let mut batch = sled::Batch::default();
        for (name, mut incoming) in groups {
            incoming.sort_by_key(|(step, _)| *step);
            let series = self.intern_series(name)?;
            let prefix = metrics::series_prefix(run_seq, execution, series);
            let tail = match self.metrics.scan_prefix(prefix).next_back() {
                Some(entry) => {
                    let (key, value) = entry?;
                    let (_, _, _, first) = metrics::parse_chunk_key(&key).unwrap_or((0, 0, 0, 0));
                    metrics::decode_chunk(first, &value).map(|points| (first, points))
                }
                None => None,
            };
            let mut last_step = tail
                .as_ref()
                .and_then(|(_, points)| points.last().map(|(s, _)| *s));
            let fresh: Vec<(u64, f64)> = incoming
                .into_iter()
                .filter(|(step, _)| {
                    let keep = last_step.is_none_or(|last| *step > last);
                    if keep {
                        last_step = Some(*step);
                    }
                    keep
                })
                .collect();
            if fresh.is_empty() {
                continue;
            }
            let summary_key = summary_key(run, name);
            let mut summary: SeriesSummary = match self.summaries.get(&summary_key)? {
                Some(bytes) => super::index::decode(&bytes, "summaries", name)?,
                None => SeriesSummary::default(),
            };
            for &(step, value) in &fresh {
                summary.add(step, value);
            }
            self.summaries
                .insert(summary_key, super::index::encode(&summary))?;
            let mut rest = fresh.as_slice();
            if let Some((first, mut points)) = tail {
                if points.len() < CHUNK_POINTS {
                    let take = (CHUNK_POINTS - points.len()).min(rest.len());
                    points.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    batch.insert(
                        &metrics::chunk_key(run_seq, execution, series, first)[..],
                        metrics::encode_chunk(first, &points),
                    );
                }
            }
            for chunk in rest.chunks(CHUNK_POINTS) {
                let first = chunk[0].0;
                batch.insert(
                    &metrics::chunk_key(run_seq, execution, series, first)[..],
                    metrics::encode_chunk(first, chunk),
                );
            }
        }
        self.metrics.apply_batch(batch)?;
        Ok(())
    }
}

fn process_alive(pid: u32) -> bool {
    // Signal 0 checks existence without sending anything.
    let result = unsafe { libc::kill(pid as libc::pid_t, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

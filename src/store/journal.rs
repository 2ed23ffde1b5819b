//! Per-execution journals: how several processes record into one store.
//!
//! sled lets one process at a time open the index. A training process
//! therefore never holds the index while it trains: it appends its metrics,
//! checkpoints and end status to its own journal file
//! (`journal/<run>.<execution>.journal`) and fsyncs each batch. Whichever
//! process next opens the index absorbs every journal's new frames into sled
//! and records how far it got, in the same flush. A frame is
//! `[len: u32 LE][checksum: 8 bytes of blake3(payload)][payload: rmp]`; a torn
//! or corrupt tail (a process killed mid-write) fails its checksum and is
//! simply not absorbed, so a crash loses at most the batch being written.

use super::canonical::{Canon, Id};
use super::error::{Result, StoreError};
use super::records::{CheckpointRecord, ExecutionStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const FRAME_HEADER: usize = 12;
/// Refuse frames above this size: a corrupt length must not allocate wildly.
const MAX_FRAME: usize = 256 << 20;

/// One metric value at a step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetricPoint {
    pub step: u64,
    pub series: String,
    pub value: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum JournalEntry {
    Metrics(Vec<MetricPoint>),
    Checkpoint(CheckpointRecord),
    /// A checkpoint that retention no longer keeps (its record stays).
    Retire(Id),
    /// A fact about the run (e.g. the drift report, trainable parameters).
    Note {
        key: String,
        value: Canon,
    },
    End {
        status: ExecutionStatus,
        ended_at: DateTime<Utc>,
        error: Option<String>,
        reason: Option<String>,
    },
}

pub fn journal_dir(store_root: &Path) -> PathBuf {
    store_root.join("journal")
}

pub fn journal_name(run: &Id, execution: u32) -> String {
    format!("{}.{execution}.journal", run.to_hex())
}

/// Parse `<run>.<execution>.journal`.
pub fn parse_journal_name(name: &str) -> Option<(Id, u32)> {
    let stem = name.strip_suffix(".journal")?;
    let (run, execution) = stem.split_once('.')?;
    Some((Id::from_hex(run)?, execution.parse().ok()?))
}

pub fn encode_frame(entry: &JournalEntry) -> Vec<u8> {
    let payload = rmp_serde::to_vec(entry).expect("journal entries always serialize");
    let checksum = blake3::hash(&payload);
    let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&checksum.as_bytes()[..8]);
    frame.extend_from_slice(&payload);
    frame
}

/// Decode the frames of `bytes`, stopping at the first torn or corrupt one.
/// Returns each entry with the offset just past it.
pub fn decode_frames(bytes: &[u8]) -> Vec<(JournalEntry, usize)> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while bytes.len() - offset >= FRAME_HEADER {
        let len =
            u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap_or([0; 4])) as usize;
        if len > MAX_FRAME || bytes.len() - offset - FRAME_HEADER < len {
            break;
        }
        let payload = &bytes[offset + FRAME_HEADER..offset + FRAME_HEADER + len];
        if blake3::hash(payload).as_bytes()[..8] != bytes[offset + 4..offset + 12] {
            break;
        }
        let Ok(entry) = rmp_serde::from_slice::<JournalEntry>(payload) else {
            break;
        };
        offset += FRAME_HEADER + len;
        entries.push((entry, offset));
    }
    entries
}

/// The append side, owned by one execution.
pub struct JournalWriter {
    file: File,
    path: PathBuf,
    /// Test hook: the journal has room for this many bytes; a write that
    /// crosses it writes what fits and fails, as a full disk does.
    fail_after: Option<u64>,
    written: u64,
    /// The file's length after the last append that succeeded.
    length: u64,
    /// A failed append left bytes that could not be cut off: anything
    /// appended after them would be unreadable, so appends are refused.
    torn: bool,
}

impl JournalWriter {
    pub fn create(store_root: &Path, run: &Id, execution: u32) -> Result<Self> {
        let dir = journal_dir(store_root);
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let path = dir.join(journal_name(run, execution));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        super::objects::sync_dir(&dir);
        let length = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let fail_after = super::faults::journal_byte_limit();
        Ok(JournalWriter {
            file,
            path,
            fail_after,
            written: 0,
            length,
            torn: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append entries as one write and fsync: when this returns, they survive
    /// a crash. A write that fails part way (a full disk) is cut off again,
    /// so that a later append is not hidden behind a torn frame.
    pub fn append(&mut self, entries: &[JournalEntry]) -> Result<()> {
        if self.torn {
            return Err(StoreError::io(
                &self.path,
                std::io::Error::other(
                    "an earlier write failed and its torn tail could not be cut off",
                ),
            ));
        }
        let mut buffer = Vec::new();
        for entry in entries {
            buffer.extend_from_slice(&encode_frame(entry));
        }
        match self.write_durably(&buffer) {
            Ok(()) => {
                self.length += buffer.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.torn = self.file.set_len(self.length).is_err();
                Err(StoreError::io(&self.path, e))
            }
        }
    }

    fn write_durably(&mut self, buffer: &[u8]) -> std::io::Result<()> {
        if let Some(limit) = self.fail_after {
            let room = limit.saturating_sub(self.written) as usize;
            if buffer.len() > room {
                self.file.write_all(&buffer[..room])?;
                self.written += room as u64;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space left on device",
                ));
            }
        }
        self.file.write_all(buffer)?;
        self.file.sync_data()?;
        self.written += buffer.len() as u64;
        Ok(())
    }
}

//! Dataset identity and statistics.
//!
//! A dataset is a data file plus how it is read. Its id is
//! `DatasetRecord::compute_id(file object id, spec)` where the spec holds
//! everything that changes the tokens or the rows: format, chat template
//! identity, tokenizer id, the bos/eos ids added, `seq_len` and `pack`. The
//! file object id is the blake3 object id of the exact bytes, so a one-byte
//! edit is a new dataset.
//!
//! [`scan`] reads the file once, line by line: it hashes the bytes, parses
//! and tokenizes every example (so every bad line is reported before
//! anything is recorded) and gathers the statistics and the token profile
//! that drift checks compare.

use super::drift::DataProfile;
use super::encode::Encoder;
use super::error::{DataError, Result};
use super::pack::tokenize_all;
use super::source::{line_text, DataSource, LineReader, RawExample};
use crate::store::canonical::{Canon, Id, ObjectHasher};
use crate::store::records::DatasetRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Examples tokenized together during a scan.
const SCAN_BATCH: usize = 4096;

/// Lower bounds of the length buckets. Fixed, not derived from the data, so
/// that histograms of different datasets compare bucket by bucket.
pub const LENGTH_BUCKETS: [u64; 15] = [
    0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];

/// Example lengths in tokens, counted per bucket of [`LENGTH_BUCKETS`]:
/// `counts[i]` counts lengths in `[LENGTH_BUCKETS[i], LENGTH_BUCKETS[i+1])`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LengthHistogram {
    pub counts: Vec<u64>,
}

impl Default for LengthHistogram {
    fn default() -> Self {
        LengthHistogram {
            counts: vec![0; LENGTH_BUCKETS.len()],
        }
    }
}

impl LengthHistogram {
    pub fn add(&mut self, length: u64) {
        let bucket = LENGTH_BUCKETS.partition_point(|&low| low <= length) - 1;
        self.counts[bucket] += 1;
    }

    /// `"64-127"` style labels, `"65536+"` for the last.
    pub fn label(bucket: usize) -> String {
        match LENGTH_BUCKETS.get(bucket + 1) {
            Some(next) => format!("{}-{}", LENGTH_BUCKETS[bucket], next - 1),
            None => format!("{}+", LENGTH_BUCKETS[bucket]),
        }
    }

    pub fn to_canon(&self) -> Canon {
        Canon::List(
            self.counts
                .iter()
                .enumerate()
                .filter(|(_, &count)| count > 0)
                .map(|(bucket, &count)| {
                    Canon::map()
                        .with("tokens", LengthHistogram::label(bucket))
                        .with("examples", count)
                })
                .collect(),
        )
    }
}

/// What a dataset record says about its contents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    pub examples: u64,
    pub blank_lines: u64,
    pub bytes: u64,
    pub tokens: u64,
    /// Tokens that are training targets.
    pub trained_tokens: u64,
    /// Examples longer than one row (`seq_len + 1` tokens): cut when
    /// padding, split across rows when packing.
    pub truncated: u64,
    pub min_length: u64,
    pub max_length: u64,
    pub length_histogram: LengthHistogram,
}

impl DatasetStats {
    pub fn mean_length(&self) -> f64 {
        if self.examples == 0 {
            0.0
        } else {
            self.tokens as f64 / self.examples as f64
        }
    }

    pub fn to_canon(&self) -> Canon {
        Canon::map()
            .with("examples", self.examples)
            .with("blank_lines", self.blank_lines)
            .with("bytes", self.bytes)
            .with("tokens", self.tokens)
            .with("trained_tokens", self.trained_tokens)
            .with("truncated", self.truncated)
            .with("min_length", self.min_length)
            .with("max_length", self.max_length)
            .with("mean_length", self.mean_length())
            .with("length_histogram", self.length_histogram.to_canon())
    }
}

/// The spec half of a dataset id.
pub fn dataset_spec(encoder: &Encoder, seq_len: usize, pack: bool) -> Canon {
    encoder.spec().with("seq_len", seq_len).with("pack", pack)
}

/// What one pass over a data file found.
#[derive(Clone, Debug, PartialEq)]
pub struct Scan {
    /// Object id of the file bytes (what `Store::put_object_file` returns).
    pub file_object: Id,
    pub stats: DatasetStats,
    pub profile: DataProfile,
}

/// Read, hash, parse and tokenize a whole data file, with bounded memory.
pub fn scan(source: &DataSource, encoder: &Encoder, seq_len: usize) -> Result<Scan> {
    let file = source.name();
    let mut reader = LineReader::open(source)?;
    let mut hasher = ObjectHasher::new();
    let mut stats = DatasetStats {
        min_length: u64::MAX,
        ..DatasetStats::default()
    };
    let mut profile = DataProfile::new(encoder.tokenizer().vocab_size());
    let mut pending: Vec<RawExample> = Vec::with_capacity(SCAN_BATCH);

    let mut absorb = |pending: &mut Vec<RawExample>, stats: &mut DatasetStats| -> Result<()> {
        for tokens in tokenize_all(encoder, pending, &file)? {
            let length = tokens.len() as u64;
            stats.tokens += length;
            stats.trained_tokens += tokens.trained_tokens() as u64;
            stats.truncated += u64::from(length > seq_len as u64 + 1);
            stats.min_length = stats.min_length.min(length);
            stats.max_length = stats.max_length.max(length);
            stats.length_histogram.add(length);
            profile.add(&tokens.ids);
        }
        pending.clear();
        Ok(())
    };

    while let Some(line) = reader.next_line()? {
        hasher.update(line.raw);
        stats.bytes += line.raw.len() as u64;
        if line.is_blank() {
            stats.blank_lines += 1;
            continue;
        }
        pending.push(RawExample {
            index: stats.examples,
            line: line.line,
            text: line_text(line.bytes, &file, line.line)?,
        });
        stats.examples += 1;
        if pending.len() == SCAN_BATCH {
            absorb(&mut pending, &mut stats)?;
        }
    }
    absorb(&mut pending, &mut stats)?;
    if stats.examples == 0 {
        return Err(DataError::Empty {
            file,
            reason: "the file has no non-blank lines".to_string(),
        });
    }
    if stats.trained_tokens == 0 {
        return Err(DataError::Empty {
            file,
            reason: "no example has a token to train on".to_string(),
        });
    }
    Ok(Scan {
        file_object: hasher.finish(),
        stats,
        profile: profile.finish(),
    })
}

/// A dataset ready to record: the record, and the profile for drift checks.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedDataset {
    pub record: DatasetRecord,
    pub profile: DataProfile,
}

/// Scan a file and build its record. The caller stores the file bytes as an
/// object (and should check the object id equals `record.file_object`, which
/// catches a file that changed while it was read) and then the record.
pub fn prepare_dataset(
    source: &DataSource,
    encoder: &Encoder,
    seq_len: usize,
    pack: bool,
    added_at: DateTime<Utc>,
) -> Result<PreparedDataset> {
    let scanned = scan(source, encoder, seq_len)?;
    let spec = dataset_spec(encoder, seq_len, pack);
    Ok(PreparedDataset {
        record: DatasetRecord {
            id: DatasetRecord::compute_id(scanned.file_object, &spec),
            file_object: scanned.file_object,
            path: source.name(),
            spec,
            stats: scanned.stats.to_canon(),
            replay_of: None,
            added_at,
        },
        profile: scanned.profile,
    })
}

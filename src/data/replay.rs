//! Replay mixing and deterministic validation splits.
//!
//! Replay is the main defence against forgetting: each training batch holds
//! a fixed share of rows drawn from the data of earlier runs. The share is
//! exact, not sampled: batch `k` of size `b` with ratio `r` gets
//! `round((k+1)·r·b) − round(k·r·b)` replay rows, so every batch has
//! `floor(r·b)` or `ceil(r·b)` of them and after any number of batches the
//! total is within half a row of `r·b` per batch. Among several replay
//! sources, each row goes to the source furthest below its weighted share.
//! No random numbers are involved, so the mix is the same on every run.
//!
//! When no eval file is given, a validation split is carved by hashing
//! (seed, example index): an example's side does not depend on the order of
//! reading or on the other examples, and it stays put when the file grows.

use super::error::{DataError, Result};
use super::rng::unit_interval;
use serde::{Deserialize, Serialize};

/// Which examples of a file a stream reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Split {
    #[default]
    All,
    /// The examples not held out for validation.
    Train { val_fraction: f64, seed: u64 },
    /// The examples held out for validation.
    Validation { val_fraction: f64, seed: u64 },
}

impl Split {
    pub fn name(&self) -> &'static str {
        match self {
            Split::All => "all",
            Split::Train { .. } => "train",
            Split::Validation { .. } => "validation",
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Split::All => Ok(()),
            Split::Train { val_fraction, .. } | Split::Validation { val_fraction, .. } => {
                if (0.0..1.0).contains(val_fraction) {
                    Ok(())
                } else {
                    Err(DataError::config(
                        "data.val_fraction",
                        format!("{val_fraction} is not in [0, 1)"),
                    ))
                }
            }
        }
    }

    /// Whether the example at 0-based `example_index` belongs to this split.
    pub fn keeps(&self, example_index: u64) -> bool {
        match *self {
            Split::All => true,
            Split::Train { val_fraction, seed } => {
                !is_validation(example_index, val_fraction, seed)
            }
            Split::Validation { val_fraction, seed } => {
                is_validation(example_index, val_fraction, seed)
            }
        }
    }
}

/// Whether an example is held out for validation.
pub fn is_validation(example_index: u64, val_fraction: f64, seed: u64) -> bool {
    unit_interval(seed, "val_split", &[example_index]) < val_fraction
}

/// Replay rows in batch `batch_index` (0-based) of `batch_size` rows.
pub fn replay_rows_in_batch(batch_index: u64, ratio: f64, batch_size: usize) -> usize {
    let per_batch = ratio * batch_size as f64;
    let total_after = |batches: u64| (batches as f64 * per_batch + 0.5).floor() as u64;
    (total_after(batch_index + 1) - total_after(batch_index)) as usize
}

/// The replay source for the next replay row: the one furthest below its
/// weighted share of the rows taken so far (ties to the first).
pub fn pick_replay_source(weights: &[f64], taken: &[u64]) -> usize {
    let total_weight: f64 = weights.iter().sum();
    let next_total = taken.iter().sum::<u64>() as f64 + 1.0;
    let mut best = 0;
    let mut best_deficit = f64::NEG_INFINITY;
    for (source, (&weight, &count)) in weights.iter().zip(taken).enumerate() {
        let deficit = next_total * weight / total_weight - count as f64;
        if deficit > best_deficit {
            best = source;
            best_deficit = deficit;
        }
    }
    best
}

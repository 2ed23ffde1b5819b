//! How far new data has moved from the data a parent was trained on.
//!
//! A continued run that silently trains on data of a different shape can
//! undo what the parent learned, so a fork compares its data with the
//! parent's before it starts:
//! - a different format or chat template is an error unless the user allows
//!   it ([`check_format_change`]): the model would see prompts laid out in a
//!   way it was never trained on;
//! - a [`DriftReport`] puts numbers on the rest: both token-length
//!   distributions, the overlap of the token types used, the share of new
//!   tokens the parent's data never contained, and the Jensen-Shannon
//!   divergence of the unigram distributions (base 2: 0 = identical, 1 =
//!   disjoint). It is rendered for the terminal and stored with the run.

use super::dataset::{LengthHistogram, LENGTH_BUCKETS};
use super::error::{DataError, Result};
use crate::store::canonical::Canon;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Token statistics of a dataset that drift is computed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataProfile {
    pub examples: u64,
    pub tokens: u64,
    pub lengths: LengthHistogram,
    /// Occurrences of each token id (index = id).
    pub unigram: Vec<u64>,
}

impl DataProfile {
    pub fn new(vocab_size: usize) -> DataProfile {
        DataProfile {
            examples: 0,
            tokens: 0,
            lengths: LengthHistogram::default(),
            unigram: vec![0; vocab_size],
        }
    }

    /// Count one example's tokens.
    pub fn add(&mut self, ids: &[u32]) {
        self.examples += 1;
        self.tokens += ids.len() as u64;
        self.lengths.add(ids.len() as u64);
        for &id in ids {
            let id = id as usize;
            if id >= self.unigram.len() {
                self.unigram.resize(id + 1, 0);
            }
            self.unigram[id] += 1;
        }
    }

    /// Drop trailing zero counts (keeps stored profiles small).
    pub fn finish(mut self) -> DataProfile {
        let used = self
            .unigram
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0, |i| i + 1);
        self.unigram.truncate(used);
        self
    }

    pub fn mean_length(&self) -> f64 {
        if self.examples == 0 {
            0.0
        } else {
            self.tokens as f64 / self.examples as f64
        }
    }
}

/// One side of a drift comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftSide {
    pub examples: u64,
    pub tokens: u64,
    pub mean_length: f64,
    pub length_histogram: Vec<u64>,
    pub token_types: u64,
}

impl DriftSide {
    fn of(profile: &DataProfile) -> DriftSide {
        DriftSide {
            examples: profile.examples,
            tokens: profile.tokens,
            mean_length: profile.mean_length(),
            length_histogram: profile.lengths.counts.clone(),
            token_types: profile.unigram.iter().filter(|&&c| c > 0).count() as u64,
        }
    }

    fn to_canon(&self) -> Canon {
        Canon::map()
            .with("examples", self.examples)
            .with("tokens", self.tokens)
            .with("mean_length", self.mean_length)
            .with("length_histogram", self.length_histogram.clone())
            .with("token_types", self.token_types)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub parent: DriftSide,
    pub new: DriftSide,
    /// Jensen-Shannon divergence (bits) of the length-bucket distributions.
    pub length_divergence: f64,
    /// Jensen-Shannon divergence (bits) of the unigram distributions.
    pub unigram_divergence: f64,
    /// Token types used by both / token types used by either.
    pub vocab_overlap: f64,
    /// Share of the new data's tokens whose type never occurs in the parent's.
    pub new_token_share: f64,
}

impl DriftReport {
    pub fn compare(parent: &DataProfile, new: &DataProfile) -> DriftReport {
        let width = parent.unigram.len().max(new.unigram.len());
        let count = |counts: &[u64], id: usize| counts.get(id).copied().unwrap_or(0);
        let (mut both, mut either, mut unseen) = (0u64, 0u64, 0u64);
        for id in 0..width {
            let (in_parent, in_new) = (count(&parent.unigram, id), count(&new.unigram, id));
            both += u64::from(in_parent > 0 && in_new > 0);
            either += u64::from(in_parent > 0 || in_new > 0);
            if in_parent == 0 {
                unseen += in_new;
            }
        }
        DriftReport {
            parent: DriftSide::of(parent),
            new: DriftSide::of(new),
            length_divergence: jensen_shannon(&parent.lengths.counts, &new.lengths.counts),
            unigram_divergence: jensen_shannon(&parent.unigram, &new.unigram),
            vocab_overlap: ratio(both, either),
            new_token_share: ratio(unseen, new.tokens),
        }
    }

    pub fn to_canon(&self) -> Canon {
        Canon::map()
            .with("parent", self.parent.to_canon())
            .with("new", self.new.to_canon())
            .with("length_divergence", self.length_divergence)
            .with("unigram_divergence", self.unigram_divergence)
            .with("vocab_overlap", self.vocab_overlap)
            .with("new_token_share", self.new_token_share)
    }

    /// A few lines for the terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let (p, n) = (&self.parent, &self.new);
        let _ = writeln!(out, "data drift against the parent's data");
        let _ = writeln!(out, "  {:<22}{:>12}{:>12}", "", "parent", "new");
        let _ = writeln!(
            out,
            "  {:<22}{:>12}{:>12}",
            "examples", p.examples, n.examples
        );
        let _ = writeln!(out, "  {:<22}{:>12}{:>12}", "tokens", p.tokens, n.tokens);
        let _ = writeln!(
            out,
            "  {:<22}{:>12.1}{:>12.1}",
            "mean length", p.mean_length, n.mean_length
        );
        let _ = writeln!(
            out,
            "  {:<22}{:>12}{:>12}",
            "token types", p.token_types, n.token_types
        );
        for bucket in 0..LENGTH_BUCKETS.len() {
            let (a, b) = (p.length_histogram[bucket], n.length_histogram[bucket]);
            if a == 0 && b == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "  {:<22}{:>11.1}%{:>11.1}%",
                format!("length {}", LengthHistogram::label(bucket)),
                100.0 * ratio(a, p.examples),
                100.0 * ratio(b, n.examples)
            );
        }
        let _ = writeln!(
            out,
            "  unigram divergence {:.4} bits, length divergence {:.4} bits (0 same, 1 disjoint)",
            self.unigram_divergence, self.length_divergence
        );
        let _ = writeln!(
            out,
            "  token types shared {:.1}%, new tokens never in the parent's data {:.2}%",
            100.0 * self.vocab_overlap,
            100.0 * self.new_token_share
        );
        out
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Jensen-Shannon divergence in bits of two count vectors (normalised here).
pub fn jensen_shannon(a: &[u64], b: &[u64]) -> f64 {
    let (total_a, total_b) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    if total_a == 0.0 || total_b == 0.0 {
        return if total_a == total_b { 0.0 } else { 1.0 };
    }
    let mut divergence = 0.0;
    for i in 0..a.len().max(b.len()) {
        let p = a.get(i).copied().unwrap_or(0) as f64 / total_a;
        let q = b.get(i).copied().unwrap_or(0) as f64 / total_b;
        let m = 0.5 * (p + q);
        if p > 0.0 {
            divergence += 0.5 * p * (p / m).log2();
        }
        if q > 0.0 {
            divergence += 0.5 * q * (q / m).log2();
        }
    }
    divergence.clamp(0.0, 1.0)
}

/// Fail when the new data's format or chat template differs from the
/// parent's, unless `allow_format_change`. Specs are dataset specs (see
/// [`super::dataset::dataset_spec`]). Returns the changes that were allowed,
/// for the run's notes.
pub fn check_format_change(
    parent_spec: &Canon,
    new_spec: &Canon,
    allow_format_change: bool,
) -> Result<Vec<String>> {
    let mut allowed = Vec::new();
    for what in ["format", "template"] {
        let text = |spec: &Canon| {
            spec.get(what)
                .and_then(Canon::as_str)
                .unwrap_or("unknown")
                .to_string()
        };
        let (parent, new) = (text(parent_spec), text(new_spec));
        if parent == new {
            continue;
        }
        if !allow_format_change {
            return Err(DataError::FormatChange { what, parent, new });
        }
        allowed.push(format!("{what} changed from {parent} to {new}"));
    }
    Ok(allowed)
}

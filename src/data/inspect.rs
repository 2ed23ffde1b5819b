//! What `graft data inspect FILE` shows: counts, lengths, and one example as
//! the model sees it, with the trained tokens marked.
//!
//! Trained spans are wrapped in `⟦ ⟧` (characters that rarely occur in data)
//! or, for a terminal, coloured; special tokens show as their text
//! (`<|eos|>`), so a missing or misplaced stop token is visible.

use super::dataset::{scan, DatasetStats};
use super::encode::{Encoder, TokenizedExample};
use super::error::{DataError, Result};
use super::source::{line_text, DataSource, LineReader};
use super::tokenizer::Tokenizer;
use crate::store::canonical::Id;
use std::fmt::Write as _;

/// How trained tokens are marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marking {
    /// `⟦trained⟧`.
    Brackets,
    /// ANSI green for trained, dim for context.
    Color,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    pub file: String,
    pub file_object: Id,
    pub format: String,
    pub template: String,
    pub stats: DatasetStats,
    /// 1-based line of the example shown.
    pub example_line: u64,
    pub example: TokenizedExample,
    /// The example with trained spans marked.
    pub rendered: String,
}

/// Scan `source` and render its `example_number`-th (0-based) example.
pub fn inspect(
    source: &DataSource,
    encoder: &Encoder,
    seq_len: usize,
    example_number: u64,
    marking: Marking,
) -> Result<Inspection> {
    let scanned = scan(source, encoder, seq_len)?;
    let file = source.name();
    let mut reader = LineReader::open(source)?;
    let mut seen = 0;
    while let Some(line) = reader.next_line()? {
        if line.is_blank() {
            continue;
        }
        if seen == example_number {
            let number = line.line;
            let text = line_text(line.bytes, &file, number)?;
            let example = encoder.encode_line(&text, &file, number)?;
            let rendered = render_loss_mask(encoder.tokenizer(), &example, marking);
            return Ok(Inspection {
                file,
                file_object: scanned.file_object,
                format: encoder.format().name().to_string(),
                template: encoder.template_identity(),
                stats: scanned.stats,
                example_line: number,
                example,
                rendered,
            });
        }
        seen += 1;
    }
    Err(DataError::config(
        "example",
        format!(
            "example {example_number} does not exist; {file} has {} examples",
            scanned.stats.examples
        ),
    ))
}

/// The example's text with its trained spans marked. Runs of equally
/// flagged tokens are decoded together, so multi-byte characters split
/// across tokens come out whole.
pub fn render_loss_mask(
    tokenizer: &Tokenizer,
    example: &TokenizedExample,
    marking: Marking,
) -> String {
    let mut out = String::new();
    let mut start = 0;
    while start < example.ids.len() {
        let trained = example.loss[start];
        let end = example.loss[start..]
            .iter()
            .position(|&loss| loss != trained)
            .map_or(example.ids.len(), |offset| start + offset);
        let text = tokenizer
            .decode(&example.ids[start..end], false)
            .unwrap_or_else(|_| format!("{:?}", &example.ids[start..end]));
        match (marking, trained) {
            (Marking::Brackets, true) => {
                let _ = write!(out, "⟦{text}⟧");
            }
            (Marking::Brackets, false) => out.push_str(&text),
            (Marking::Color, true) => {
                let _ = write!(out, "\x1b[32m{text}\x1b[0m");
            }
            (Marking::Color, false) => {
                let _ = write!(out, "\x1b[2m{text}\x1b[0m");
            }
        }
        start = end;
    }
    out
}

impl Inspection {
    /// The report `graft data inspect` prints.
    pub fn render(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let _ = writeln!(out, "{}  (object {})", self.file, self.file_object.short());
        let _ = writeln!(out, "format {}, template {}", self.format, self.template);
        let _ = writeln!(
            out,
            "{} examples ({} blank lines skipped), {} bytes",
            s.examples, s.blank_lines, s.bytes
        );
        let _ = writeln!(
            out,
            "{} tokens, {} trained ({:.1}%); length min {} / mean {:.1} / max {}; {} longer than one row",
            s.tokens,
            s.trained_tokens,
            100.0 * s.trained_tokens as f64 / s.tokens.max(1) as f64,
            s.min_length,
            s.mean_length(),
            s.max_length,
            s.truncated
        );
        let widest = s
            .length_histogram
            .counts
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1);
        for (bucket, &count) in s.length_histogram.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let bar = "#".repeat(((40 * count).div_ceil(widest)) as usize);
            let _ = writeln!(
                out,
                "  {:>12} tokens {:>9}  {bar}",
                super::dataset::LengthHistogram::label(bucket),
                count
            );
        }
        let _ = writeln!(
            out,
            "\nline {} ({} tokens, {} trained; trained spans marked):",
            self.example_line,
            self.example.len(),
            self.example.trained_tokens()
        );
        out.push_str(&self.rendered);
        out.push('\n');
        out
    }
}

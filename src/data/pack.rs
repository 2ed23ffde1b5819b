//! From token streams to fixed-shape training batches.
//!
//! # Rows, targets and the loss mask
//!
//! A row is `seq_len + 1` consecutive tokens `t`. The model reads
//! `input_ids = t[..seq_len]` and is scored at every position `i` on
//! predicting `target_ids[i] = t[i + 1]`: the shift is already done here, so
//! the trainer computes `cross_entropy(logits[b, i], target_ids[b, i]) *
//! loss_mask[b, i]` and divides by the sum of the mask. `loss_mask` is
//! aligned with the *targets*: it is 1.0 exactly where the target token is
//! trained on (a completion, an assistant turn, eos) and 0.0 on prompt tokens
//! and padding.
//!
//! # Packing and padding
//!
//! With `pack`, examples are concatenated (each ends with eos) and cut into
//! rows; consecutive rows overlap by one token, so every token of the stream
//! is a target exactly once (no attention mask separates packed examples, as
//! in GPT-style pretraining). Without `pack`, each example is one row, cut to
//! `seq_len + 1` tokens and padded with the pad id (mask 0); an example left
//! with no trained target (a prompt longer than the row) is skipped.
//!
//! # Order, epochs and memory
//!
//! The file is read in chunks of [`CHUNK_EXAMPLES`] examples located through an
//! [`ExampleIndex`] (8 + 8 bytes per chunk). Each epoch visits the chunks in an
//! order shuffled by (seed, epoch), takes them [`WINDOW_CHUNKS`] at a time into
//! a window, shuffles the examples of the window by (seed, epoch, window) and
//! tokenizes the window in parallel. Memory is one window, whatever the file
//! size. A [`DataPosition`] (epoch, window, example in window, token in
//! example) says where the next row starts; since every random choice is a
//! function of the seed and the position, it is all a checkpoint needs to
//! resume with the same rows.

use super::encode::{Encoder, TokenizedExample};
use super::error::{DataError, Result};
use super::replay::{pick_replay_source, replay_rows_in_batch, Split};
use super::rng::{rng_for, shuffle};
use super::source::{DataSource, ExampleIndex, LineReader, RawExample, CHUNK_EXAMPLES};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Chunks per shuffle window: 16 x 128 = 2048 examples held at once.
pub const WINDOW_CHUNKS: usize = 16;

/// How a data stream is cut and ordered.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamConfig {
    pub seq_len: usize,
    pub pack: bool,
    pub seed: u64,
    pub shuffle: bool,
    /// Cycle through epochs forever (training) or stop after one pass
    /// (evaluation; the last row and batch may be partial).
    pub repeat: bool,
    pub split: Split,
}

impl StreamConfig {
    /// Shuffled, repeating: what training reads.
    pub fn train(seq_len: usize, pack: bool, seed: u64) -> StreamConfig {
        StreamConfig {
            seq_len,
            pack,
            seed,
            shuffle: true,
            repeat: true,
            split: Split::All,
        }
    }

    /// In file order, one pass: what evaluation reads.
    pub fn eval(seq_len: usize, pack: bool) -> StreamConfig {
        StreamConfig {
            seq_len,
            pack,
            seed: 0,
            shuffle: false,
            repeat: false,
            split: Split::All,
        }
    }
}

/// Where the next row of a stream starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    /// Window within the epoch's chunk order.
    pub window: u64,
    /// Example within the window's shuffled order.
    pub example: u64,
    /// Token within that example.
    pub token: u64,
}

/// One row: `seq_len` inputs, their next-token targets, the loss mask.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub input_ids: Vec<u32>,
    pub target_ids: Vec<u32>,
    pub loss_mask: Vec<f32>,
}

impl Row {
    /// Shift `tokens` (at most `seq_len + 1`) into a row, padding the rest.
    fn from_tokens(ids: &[u32], loss: &[bool], seq_len: usize, pad_id: u32) -> Row {
        let targets = ids.len().saturating_sub(1);
        let mut row = Row {
            input_ids: vec![pad_id; seq_len],
            target_ids: vec![pad_id; seq_len],
            loss_mask: vec![0.0; seq_len],
        };
        row.input_ids[..targets].copy_from_slice(&ids[..targets]);
        row.target_ids[..targets].copy_from_slice(&ids[1..]);
        for (mask, &trained) in row.loss_mask.iter_mut().zip(&loss[1..]) {
            *mask = if trained { 1.0 } else { 0.0 };
        }
        row
    }
}

/// Rows from one data source.
pub struct RowStream {
    encoder: Arc<Encoder>,
    config: StreamConfig,
    index: ExampleIndex,
    reader: LineReader,
    pad_id: u32,
    chunk_order: Vec<u32>,
    /// Which (epoch, window) `window` holds.
    loaded: Option<(u64, u64)>,
    window: Vec<TokenizedExample>,
    /// Consumption cursor.
    cursor: DataPosition,
    /// Where the next row starts (what a checkpoint stores).
    resume_at: DataPosition,
    row_ids: Vec<u32>,
    row_loss: Vec<bool>,
    /// Whether the current epoch has contributed anything, so that data
    /// with nothing to train on fails instead of looping forever.
    epoch_productive: bool,
    finished: bool,
}

impl RowStream {
    pub fn open(
        source: DataSource,
        encoder: Arc<Encoder>,
        config: StreamConfig,
    ) -> Result<RowStream> {
        if config.seq_len < 1 {
            return Err(DataError::config("data.seq_len", "must be at least 1"));
        }
        config.split.validate()?;
        let index = ExampleIndex::build(&source)?;
        let kept = (0..index.examples)
            .filter(|&example| config.split.keeps(example))
            .count();
        if kept == 0 {
            return Err(DataError::Empty {
                file: source.name(),
                reason: if index.examples == 0 {
                    "the file has no non-blank lines".to_string()
                } else {
                    format!(
                        "{} examples, none in the {} split",
                        index.examples,
                        config.split.name()
                    )
                },
            });
        }
        let pad_id = encoder.tokenizer().pad_id();
        let reader = LineReader::open(&source)?;
        let mut stream = RowStream {
            encoder,
            config,
            index,
            reader,
            pad_id,
            chunk_order: Vec::new(),
            loaded: None,
            window: Vec::new(),
            cursor: DataPosition::default(),
            resume_at: DataPosition::default(),
            row_ids: Vec::new(),
            row_loss: Vec::new(),
            epoch_productive: false,
            finished: false,
        };
        stream.plan_epoch(0);
        Ok(stream)
    }

    /// Open and continue from a position a checkpoint stored.
    pub fn open_at(
        source: DataSource,
        encoder: Arc<Encoder>,
        config: StreamConfig,
        position: DataPosition,
    ) -> Result<RowStream> {
        let mut stream = RowStream::open(source, encoder, config)?;
        stream.seek(position)?;
        Ok(stream)
    }

    /// Where the next row starts.
    pub fn position(&self) -> DataPosition {
        self.resume_at
    }

    pub fn seek(&mut self, position: DataPosition) -> Result<()> {
        let windows = self.chunk_count().div_ceil(WINDOW_CHUNKS) as u64;
        if position.window > windows {
            return Err(DataError::Resume {
                message: format!(
                    "window {} is past the {windows} windows of the data",
                    position.window
                ),
            });
        }
        self.plan_epoch(position.epoch);
        self.cursor = position;
        self.resume_at = position;
        self.row_ids.clear();
        self.row_loss.clear();
        // The data produced rows before the checkpoint, so the rest of this
        // epoch being empty (resuming at its very end) is not an error.
        self.epoch_productive = true;
        self.finished = false;
        Ok(())
    }

    pub fn seq_len(&self) -> usize {
        self.config.seq_len
    }

    /// Examples in the file (before any split).
    pub fn examples(&self) -> u64 {
        self.index.examples
    }

    fn chunk_count(&self) -> usize {
        self.index.chunks.len()
    }

    fn plan_epoch(&mut self, epoch: u64) {
        self.chunk_order = (0..self.chunk_count() as u32).collect();
        if self.config.shuffle {
            shuffle(
                &mut self.chunk_order,
                &mut rng_for(self.config.seed, "chunks", &[epoch]),
            );
        }
    }

    /// Read, shuffle and tokenize the window at the cursor.
    fn load_window(&mut self) -> Result<()> {
        let DataPosition { epoch, window, .. } = self.cursor;
        if self.loaded == Some((epoch, window)) {
            return Ok(());
        }
        let first = window as usize * WINDOW_CHUNKS;
        let last = (first + WINDOW_CHUNKS).min(self.chunk_order.len());
        let mut raw: Vec<RawExample> = Vec::with_capacity(WINDOW_CHUNKS * CHUNK_EXAMPLES as usize);
        for &chunk in &self.chunk_order[first..last] {
            let examples = self.index.read_chunk(&mut self.reader, chunk as usize)?;
            raw.extend(
                examples
                    .into_iter()
                    .filter(|example| self.config.split.keeps(example.index)),
            );
        }
        if self.config.shuffle {
            shuffle(
                &mut raw,
                &mut rng_for(self.config.seed, "window", &[epoch, window]),
            );
        }
        self.window = tokenize_all(&self.encoder, &raw, self.reader.file())?;
        self.loaded = Some((epoch, window));
        Ok(())
    }

    /// Move the cursor to the next token to consume; `None` at the end of a
    /// non-repeating stream.
    fn current_example(&mut self) -> Result<Option<usize>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let first_chunk = self.cursor.window as usize * WINDOW_CHUNKS;
            if first_chunk >= self.chunk_order.len() {
                if !self.config.repeat {
                    self.finished = true;
                    return Ok(None);
                }
                if !self.epoch_productive {
                    return Err(DataError::Empty {
                        file: self.reader.file().to_string(),
                        reason: "no example has a trained token within seq_len".to_string(),
                    });
                }
                let epoch = self.cursor.epoch + 1;
                self.cursor = DataPosition {
                    epoch,
                    ..DataPosition::default()
                };
                self.plan_epoch(epoch);
                self.epoch_productive = false;
                continue;
            }
            self.load_window()?;
            let example = self.cursor.example as usize;
            if example > self.window.len() {
                return Err(DataError::Resume {
                    message: format!(
                        "example {example} is past the {} examples of window {}",
                        self.window.len(),
                        self.cursor.window
                    ),
                });
            }
            if example == self.window.len() {
                self.cursor.window += 1;
                self.cursor.example = 0;
                self.cursor.token = 0;
                continue;
            }
            if self.cursor.token as usize >= self.window[example].len() {
                self.cursor.example += 1;
                self.cursor.token = 0;
                continue;
            }
            return Ok(Some(example));
        }
    }

    /// The next row, or `None` at the end of a non-repeating stream.
    pub fn next_row(&mut self) -> Result<Option<Row>> {
        let seq_len = self.config.seq_len;
        loop {
            let Some(example) = self.current_example()? else {
                // A partial packed row at the end of a single pass is still
                // worth evaluating; it is padded like an unpacked row.
                if self.config.pack && self.row_ids.len() >= 2 {
                    let row = Row::from_tokens(&self.row_ids, &self.row_loss, seq_len, self.pad_id);
                    self.row_ids.clear();
                    self.row_loss.clear();
                    if row.loss_mask.iter().any(|&m| m > 0.0) {
                        return Ok(Some(row));
                    }
                }
                return Ok(None);
            };
            let tokens = &self.window[example];
            if self.config.pack {
                let start = self.cursor.token as usize;
                let take = (seq_len + 1 - self.row_ids.len()).min(tokens.len() - start);
                self.row_ids
                    .extend_from_slice(&tokens.ids[start..start + take]);
                self.row_loss
                    .extend_from_slice(&tokens.loss[start..start + take]);
                self.cursor.token += take as u64;
                self.epoch_productive = true;
                if self.row_ids.len() == seq_len + 1 {
                    let row = Row::from_tokens(&self.row_ids, &self.row_loss, seq_len, self.pad_id);
                    // The last token becomes the first input of the next row.
                    self.row_ids.drain(..seq_len);
                    self.row_loss.drain(..seq_len);
                    self.resume_at = DataPosition {
                        token: self.cursor.token - 1,
                        ..self.cursor
                    };
                    return Ok(Some(row));
                }
            } else {
                let kept = tokens.len().min(seq_len + 1);
                let trained = tokens.loss[1..kept].iter().any(|&loss| loss);
                let row = trained.then(|| {
                    Row::from_tokens(
                        &tokens.ids[..kept],
                        &tokens.loss[..kept],
                        seq_len,
                        self.pad_id,
                    )
                });
                self.cursor.example += 1;
                self.cursor.token = 0;
                self.resume_at = self.cursor;
                if let Some(row) = row {
                    self.epoch_productive = true;
                    return Ok(Some(row));
                }
            }
        }
    }
}

/// Parse and tokenize raw examples in parallel; the first error in file
/// order wins, so error messages do not depend on thread timing.
pub(crate) fn tokenize_all(
    encoder: &Encoder,
    raw: &[RawExample],
    file: &str,
) -> Result<Vec<TokenizedExample>> {
    raw.par_iter()
        .map(|example| encoder.encode_line(&example.text, file, example.line))
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

/// A training batch, flattened row-major: `[batch, seq_len]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    /// `target_ids[b * seq_len + i]` is the token after `input_ids[b * seq_len + i]`.
    pub target_ids: Vec<u32>,
    /// 1.0 where the target is trained on; aligned with `target_ids`.
    pub loss_mask: Vec<f32>,
    /// How many rows (the last ones) came from replay data.
    pub replay_rows: usize,
}

impl Batch {
    fn with_capacity(batch_size: usize, seq_len: usize) -> Batch {
        Batch {
            batch: 0,
            seq_len,
            input_ids: Vec::with_capacity(batch_size * seq_len),
            target_ids: Vec::with_capacity(batch_size * seq_len),
            loss_mask: Vec::with_capacity(batch_size * seq_len),
            replay_rows: 0,
        }
    }

    fn push(&mut self, row: Row) {
        self.input_ids.extend(row.input_ids);
        self.target_ids.extend(row.target_ids);
        self.loss_mask.extend(row.loss_mask);
        self.batch += 1;
    }

    /// Number of trained targets: the loss denominator.
    pub fn trained_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&mask| mask > 0.0).count()
    }

    /// Rows `rows` of this batch as a batch of their own: one device's share of it.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Batch {
        let cells = rows.start * self.seq_len..rows.end * self.seq_len;
        let first_replay = self.batch - self.replay_rows;
        Batch {
            batch: rows.len(),
            seq_len: self.seq_len,
            input_ids: self.input_ids[cells.clone()].to_vec(),
            target_ids: self.target_ids[cells.clone()].to_vec(),
            loss_mask: self.loss_mask[cells].to_vec(),
            replay_rows: rows.end.saturating_sub(rows.start.max(first_replay)),
        }
    }
}

/// Where a batch stream is: enough to resume it exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub batches: u64,
    pub main: DataPosition,
    pub replay: Vec<DataPosition>,
    /// Replay rows taken from each replay source so far.
    pub replay_taken: Vec<u64>,
}

/// A replay source: its rows and its share of the replay rows.
pub struct ReplaySource {
    pub rows: RowStream,
    pub weight: f64,
}

/// Batches of `batch_size` rows: the main data, plus replay rows at an exact
/// ratio (see [`replay_rows_in_batch`]).
pub struct BatchStream {
    main: RowStream,
    replay: Vec<ReplaySource>,
    replay_ratio: f64,
    batch_size: usize,
    batches: u64,
    replay_taken: Vec<u64>,
}

impl BatchStream {
    pub fn new(main: RowStream, batch_size: usize) -> Result<BatchStream> {
        if batch_size == 0 {
            return Err(DataError::config("optim.batch_size", "must be at least 1"));
        }
        Ok(BatchStream {
            main,
            replay: Vec::new(),
            replay_ratio: 0.0,
            batch_size,
            batches: 0,
            replay_taken: Vec::new(),
        })
    }

    /// Mix in replay rows: `ratio` of every batch (within one row), shared
    /// among `sources` by weight. Replay streams should repeat.
    pub fn with_replay(mut self, sources: Vec<ReplaySource>, ratio: f64) -> Result<BatchStream> {
        if !(0.0..1.0).contains(&ratio) {
            return Err(DataError::config(
                "data.replay.ratio",
                format!("{ratio} is not in [0, 1)"),
            ));
        }
        if ratio > 0.0 && sources.is_empty() {
            return Err(DataError::config(
                "data.replay",
                "a replay ratio was set but there is no data to replay",
            ));
        }
        if sources
            .iter()
            .any(|s| s.rows.seq_len() != self.main.seq_len())
        {
            return Err(DataError::config(
                "data.seq_len",
                "replay data must be cut to the same seq_len as the main data",
            ));
        }
        if sources.iter().any(|s| s.weight.is_nan() || s.weight <= 0.0) {
            return Err(DataError::config(
                "data.replay",
                "source weights must be positive",
            ));
        }
        self.replay_taken = vec![0; sources.len()];
        self.replay = sources;
        self.replay_ratio = ratio;
        Ok(self)
    }

    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            batches: self.batches,
            main: self.main.position(),
            replay: self.replay.iter().map(|s| s.rows.position()).collect(),
            replay_taken: self.replay_taken.clone(),
        }
    }

    pub fn seek(&mut self, position: &StreamPosition) -> Result<()> {
        if position.replay.len() != self.replay.len()
            || position.replay_taken.len() != self.replay.len()
        {
            return Err(DataError::Resume {
                message: format!(
                    "the checkpoint has {} replay sources, this run {}",
                    position.replay.len(),
                    self.replay.len()
                ),
            });
        }
        self.main.seek(position.main)?;
        for (source, &at) in self.replay.iter_mut().zip(&position.replay) {
            source.rows.seek(at)?;
        }
        self.batches = position.batches;
        self.replay_taken = position.replay_taken.clone();
        Ok(())
    }

    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let seq_len = self.main.seq_len();
        let replay_rows = if self.replay.is_empty() {
            0
        } else {
            replay_rows_in_batch(self.batches, self.replay_ratio, self.batch_size)
        };
        let mut batch = Batch::with_capacity(self.batch_size, seq_len);
        let mut main_ended = false;
        for _ in replay_rows..self.batch_size {
            match self.main.next_row()? {
                Some(row) => batch.push(row),
                None => {
                    main_ended = true;
                    break;
                }
            }
        }
        // A single pass is over when its data is; replay only pads training
        // batches, which never end.
        if main_ended {
            self.batches += u64::from(batch.batch > 0);
            return Ok((batch.batch > 0).then_some(batch));
        }
        let weights: Vec<f64> = self.replay.iter().map(|s| s.weight).collect();
        for _ in 0..replay_rows {
            let source = pick_replay_source(&weights, &self.replay_taken);
            let Some(row) = self.replay[source].rows.next_row()? else {
                break;
            };
            self.replay_taken[source] += 1;
            batch.push(row);
            batch.replay_rows += 1;
        }
        self.batches += 1;
        Ok(Some(batch))
    }
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        self.next_batch().transpose()
    }
}

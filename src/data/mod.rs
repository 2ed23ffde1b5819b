//! Datasets: formats, chat templates, tokenization, packing, loss masks,
//! replay mixing, drift checks and dataset ids.
//!
//! The path of a record, file to batch:
//! [`source`] reads lines (file or bytes) → [`format`] parses a line into an
//! example → [`template`] renders chat → [`encode`] tokenizes into ids and
//! loss flags → [`pack`] cuts rows and batches, mixing in [`replay`] rows.
//! [`dataset`] gives a file its id and statistics, [`drift`] compares it with
//! a parent's, [`synth`] makes test tasks and [`inspect`] shows a file.
//!
//! This module knows nothing of the store's database: it produces
//! `DatasetRecord`s and reads data from a path or from bytes.

mod chunk_cache;
pub mod dataset;
pub mod drift;
pub mod encode;
pub mod error;
pub mod format;
pub mod inspect;
pub mod pack;
pub mod replay;
pub mod rng;
pub mod source;
pub mod synth;
pub mod template;
pub mod tokenizer;

pub use dataset::{dataset_spec, prepare_dataset, scan, DatasetStats, PreparedDataset, Scan};
pub use drift::{check_format_change, DataProfile, DriftReport};
pub use encode::{Encoder, TokenizedExample};
pub use error::DataError;
pub use format::{Example, Format, Message, Segment};
pub use inspect::{inspect, render_loss_mask, Inspection, Marking};
pub use pack::{
    Batch, BatchStream, DataPosition, ReplaySource, Row, RowStream, StreamConfig, StreamPosition,
};
pub use replay::Split;
pub use source::DataSource;
pub use synth::{answer_examples, exact_match, synth, AnswerExample};
pub use template::ChatTemplate;
pub use tokenizer::Tokenizer;

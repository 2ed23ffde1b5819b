//! Evaluation: loss, perplexity and exact-match accuracy on fixed sets.
//!
//! Each set is read once into batches of unpacked rows (one example per
//! row, so a row's answer is whole) and reused at every evaluation.

use super::loss::{exact_match_rows, masked_loss_sum, BatchTensors};
use crate::data::{Batch, DataError, DataSource, Encoder, Format, RowStream, StreamConfig};
use crate::model::CausalLm;
use burn::tensor::ElementConversion;
use std::sync::Arc;

pub struct EvalSet {
    pub name: String,
    /// An ancestor's set, evaluated to measure forgetting.
    pub inherited: bool,
    /// Whether examples have answers (every format but `text`).
    pub has_answers: bool,
    pub batches: Vec<Batch>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub examples: usize,
}

impl EvalSet {
    /// Read up to `max_examples` rows into batches of `batch_size`.
    pub fn collect(
        name: String,
        inherited: bool,
        has_answers: bool,
        mut rows: RowStream,
        max_examples: usize,
        batch_size: usize,
    ) -> Result<EvalSet, DataError> {
        let mut batches = Vec::new();
        let mut current: Vec<crate::data::Row> = Vec::new();
        let mut taken = 0;
        while taken < max_examples {
            let Some(row) = rows.next_row()? else { break };
            // A row whose answer was cut off by seq_len has nothing to score.
            if !row.loss_mask.iter().any(|&m| m > 0.0) {
                continue;
            }
            taken += 1;
            current.push(row);
            if current.len() == batch_size {
                batches.push(to_batch(std::mem::take(&mut current)));
            }
        }
        if !current.is_empty() {
            batches.push(to_batch(current));
        }
        Ok(EvalSet {
            name,
            inherited,
            has_answers,
            batches,
        })
    }
}

impl EvalSet {
    /// A data file read for evaluation: one example per row, in file order.
    /// Accuracy is scored wherever the format has answers (all but `text`).
    pub fn from_source(
        name: String,
        source: DataSource,
        encoder: Encoder,
        seq_len: usize,
        max_examples: usize,
        batch_size: usize,
    ) -> Result<EvalSet, DataError> {
        let has_answers = encoder.format() != Format::Text;
        let rows = RowStream::open(
            source,
            Arc::new(encoder),
            StreamConfig::eval(seq_len, false),
        )?;
        EvalSet::collect(name, false, has_answers, rows, max_examples, batch_size)
    }
}

fn to_batch(rows: Vec<crate::data::Row>) -> Batch {
    let seq_len = rows[0].input_ids.len();
    let mut batch = Batch {
        batch: 0,
        seq_len,
        input_ids: Vec::new(),
        target_ids: Vec::new(),
        loss_mask: Vec::new(),
        replay_rows: 0,
    };
    for row in rows {
        batch.input_ids.extend(row.input_ids);
        batch.target_ids.extend(row.target_ids);
        batch.loss_mask.extend(row.loss_mask);
        batch.batch += 1;
    }
    batch
}

/// Token-weighted mean loss and exact-match accuracy over a set.
pub fn evaluate<B: crate::compute::kernels::Kernels>(
    model: &CausalLm<B>,
    set: &EvalSet,
) -> EvalResult {
    let device = model.device();
    let (mut loss_sum, mut tokens, mut correct, mut examples) = (0.0f64, 0usize, 0usize, 0usize);
    for batch in &set.batches {
        let tensors = BatchTensors::<B>::new(batch, &device);
        let logits = model.forward(tensors.inputs.clone());
        loss_sum += masked_loss_sum(logits.clone(), &tensors)
            .into_scalar()
            .elem::<f64>();
        tokens += tensors.tokens;
        if set.has_answers {
            correct += exact_match_rows(logits, &tensors)
                .iter()
                .filter(|&&ok| ok)
                .count();
        }
        examples += batch.batch;
    }
    EvalResult {
        loss: loss_sum / tokens.max(1) as f64,
        accuracy: (set.has_answers && examples > 0).then(|| correct as f64 / examples as f64),
        examples,
    }
}

pub fn evaluate_all<B: crate::compute::kernels::Kernels>(
    model: &CausalLm<B>,
    sets: &[EvalSet],
) -> Vec<(String, EvalResult)> {
    sets.iter()
        .map(|set| (set.name.clone(), evaluate(model, set)))
        .collect()
}

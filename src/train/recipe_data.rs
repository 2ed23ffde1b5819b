//! The data a recipe trains and evaluates on, opened from the store: the training
//! stream (the train file less its validation split, replay mixed in) and the
//! evaluation sets (this run's, then its ancestors'), each from the dataset records the
//! recipe names and read back from verified objects.

use super::config::Experiment;
use super::eval::EvalSet;
use super::execute::TrainError;
use super::plan::object_source;
use crate::data::{BatchStream, Encoder, ReplaySource, RowStream, Split, StreamConfig, Tokenizer};
use crate::store::{Canon, DatasetRecord, Id, Recipe, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What opening a recipe's data needs.
pub struct RecipeData<'a> {
    pub store: &'a Store,
    pub tokenizer: Arc<Tokenizer>,
    /// Every dataset record the recipe names, by id.
    pub records: &'a BTreeMap<Id, DatasetRecord>,
    pub recipe: &'a Recipe,
    pub settings: &'a Experiment,
}

impl RecipeData<'_> {
    fn record(&self, id: &Id) -> Result<&DatasetRecord, TrainError> {
        Ok(self.records.get(id).ok_or(StoreError::NotFound {
            kind: "dataset",
            id: *id,
        })?)
    }

    fn open_rows(
        &self,
        record: &DatasetRecord,
        config: StreamConfig,
    ) -> Result<RowStream, TrainError> {
        let encoder = Encoder::from_spec(self.tokenizer.clone(), &record.spec)?;
        Ok(RowStream::open(
            object_source(self.store, record)?,
            Arc::new(encoder),
            config,
        )?)
    }

    /// The training batches: the train file (less its validation split where the run
    /// carved one), with the replay datasets mixed in at `data.replay.ratio`.
    pub fn train_stream(&self) -> Result<BatchStream, TrainError> {
        let (recipe, data, seed) = (self.recipe, &self.settings.data, self.recipe.seed);
        let train_use = recipe
            .datasets
            .iter()
            .find(|d| d.role == "train")
            .ok_or_else(|| TrainError::Recipe("no train dataset".into()))?;
        let mut train_config = StreamConfig::train(data.seq_len, data.pack, seed);
        if recipe.datasets.iter().any(|d| d.role == "val") {
            train_config.split = Split::Train {
                val_fraction: data.val_fraction,
                seed,
            };
        }
        let mut replay_sources = Vec::new();
        for used in recipe.datasets.iter().filter(|d| d.role == "replay") {
            let rows = self.open_rows(
                self.record(&used.dataset)?,
                StreamConfig::train(data.seq_len, data.pack, seed),
            )?;
            replay_sources.push(ReplaySource {
                rows,
                weight: used.weight,
            });
        }
        let replay_ratio = match (&data.replay, replay_sources.is_empty()) {
            (Some(replay), false) => replay.ratio,
            _ => 0.0,
        };
        Ok(BatchStream::new(
            self.open_rows(self.record(&train_use.dataset)?, train_config)?,
            self.settings.optim.batch_size,
        )?
        .with_replay(replay_sources, replay_ratio)?)
    }

    /// The evaluation sets: this run's (the first is the one `@best` and early
    /// stopping watch), then the ancestors' (for forgetting).
    pub fn eval_sets(&self) -> Result<Vec<EvalSet>, TrainError> {
        let data = &self.settings.data;
        let mut eval_sets: Vec<EvalSet> = Vec::new();
        for used in &self.recipe.datasets {
            let split = match used.role.as_str() {
                "eval" | "ancestor_eval" => Split::All,
                "val" | "ancestor_val" => parse_val_split(&used.name).unwrap_or(Split::All),
                _ => continue,
            };
            let mut config = StreamConfig::eval(data.seq_len, false);
            config.split = split;
            let record = self.record(&used.dataset)?;
            let rows = self.open_rows(record, config)?;
            let has_answers = record.spec.get("format").and_then(Canon::as_str) != Some("text");
            let name = used
                .name
                .split('/')
                .next()
                .unwrap_or(&used.name)
                .to_string();
            let name = if used.role == "ancestor_val" {
                format!("val@{}", used.name.rsplit('@').next().unwrap_or(""))
            } else {
                name
            };
            let set = EvalSet::collect(
                name,
                used.role.starts_with("ancestor"),
                has_answers,
                rows,
                data.eval_examples,
                self.settings.optim.batch_size,
            )?;
            if set.batches.is_empty() {
                return Err(TrainError::Recipe(format!(
                    "eval set `{}`: no example keeps a token to score within data.seq_len = {} (raise seq_len)",
                    set.name, data.seq_len
                )));
            }
            eval_sets.push(set);
        }
        Ok(eval_sets)
    }
}

/// `val/<fraction>/<seed>[@run]` -> the validation split it names.
fn parse_val_split(name: &str) -> Option<Split> {
    let name = name.split('@').next()?;
    let mut parts = name.split('/');
    parts.next()?;
    let val_fraction = parts.next()?.parse().ok()?;
    let seed = parts.next()?.parse().ok()?;
    Some(Split::Validation { val_fraction, seed })
}

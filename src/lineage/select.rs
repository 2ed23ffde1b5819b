//! Selecting runs the way `graft runs --where EXPR --sort KEY` does: the keys a
//! store can answer, the filter checked against them, and the order. The CLI
//! and the UI's runs table both go through here, so a query means the same in
//! both and fails with the same column-pointing error.

use super::query::{Query, QueryError, Value};
use super::summary::{config_keys, summary_keys, RunSummary, RUN_FIELDS};
use crate::train::Experiment;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::path::Path;

/// Series every training run records (or may, e.g. without eval sets): their
/// summary keys are known even in a store where no run has them yet.
const STANDARD_SERIES: [&str; 7] = [
    "loss",
    "eval_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "tokens_seen",
    "trainable_params",
];

/// Why a selection could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("unknown sort key `{0}`")]
    UnknownSortKey(String),
}

/// Every key a run in this store could answer: the fixed fields, the config
/// keys of a default experiment and of every recorded recipe (older runs may
/// have keys the current defaults lack), and the summaries of every series.
pub fn known_keys<'a>(summaries: impl IntoIterator<Item = &'a RunSummary>) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = summary_keys(STANDARD_SERIES).into_iter().collect();
    known.extend(RUN_FIELDS.map(String::from));
    let default = Experiment::parse(
        "[model]\nbase = \"-\"\n[adapter]\n[data]\nreplay = { ratio = 0.1 }\n",
        Path::new("<defaults>"),
        &[],
    );
    if let Ok(experiment) = default {
        known.extend(config_keys(&experiment.recipe_config()));
    }
    for summary in summaries {
        known.extend(summary.keys());
    }
    known
}

/// A checked `--where` filter and `--sort` key, ready to apply to runs.
pub struct Selection {
    query: Option<Query>,
    /// The sort key and whether it is descending (`-KEY`).
    sort: Option<(String, bool)>,
}

impl Selection {
    /// Parse and check both against the keys the store knows.
    pub fn new(
        filter: Option<&str>,
        sort: Option<&str>,
        known: &BTreeSet<String>,
    ) -> Result<Selection, SelectError> {
        let query = match filter.filter(|f| !f.trim().is_empty()) {
            Some(source) => {
                let query = Query::parse(source)?;
                query.check_keys(source, known)?;
                Some(query)
            }
            None => None,
        };
        let sort = match sort.filter(|s| !s.is_empty()) {
            Some(sort) => {
                let (key, descending) = match sort.strip_prefix('-') {
                    Some(key) => (key, true),
                    None => (sort, false),
                };
                if !known.contains(key) {
                    return Err(SelectError::UnknownSortKey(key.to_string()));
                }
                Some((key.to_string(), descending))
            }
            None => None,
        };
        Ok(Selection { query, sort })
    }

    pub fn matches(&self, summary: &RunSummary) -> bool {
        self.query
            .as_ref()
            .is_none_or(|q| q.matches(&|key| summary.lookup(key)))
    }

    /// The sort key (without its `-`), if any.
    pub fn sort_key(&self) -> Option<&str> {
        self.sort.as_ref().map(|(key, _)| key.as_str())
    }

    /// The runs that match, in the selection's order (the given order, newest
    /// first, when there is no sort key; a stable sort keeps it among ties).
    pub fn apply<'a, T: AsRef<RunSummary>>(&self, runs: &'a [T]) -> Vec<&'a T> {
        let mut matches: Vec<&T> = runs.iter().filter(|r| self.matches(r.as_ref())).collect();
        if let Some((key, descending)) = &self.sort {
            let mut keyed: Vec<(Option<Value>, &T)> = matches
                .into_iter()
                .map(|r| (r.as_ref().lookup(key), r))
                .collect();
            keyed.sort_by(|(a, _), (b, _)| {
                let ordering = compare(a, b);
                if *descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            });
            matches = keyed.into_iter().map(|(_, r)| r).collect();
        }
        matches
    }
}

impl AsRef<RunSummary> for RunSummary {
    fn as_ref(&self) -> &RunSummary {
        self
    }
}

/// Runs without the key sort last.
fn compare(a: &Option<Value>, b: &Option<Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.total_cmp(y),
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

//! `graft runs [--where EXPR] [--sort KEY]`: query runs by config values and
//! metric summaries.

use super::{output, CliError, CliResult, Context};
use crate::lineage::query::Value;
use crate::lineage::summary::{config_keys, summary_keys, RUN_FIELDS};
use crate::lineage::{tags_by_target, Query, RunSummary};
use crate::train::Experiment;
use std::collections::BTreeSet;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Filter, e.g. `optim.lr < 1e-4 and best.eval_loss < 2.1`. Keys: recipe
    /// config paths, best./last./min./max.SERIES, forget.SET (a fork's relative
    /// loss rise on ancestor eval set SET at its @best checkpoint: `forget.add
    /// < 0.05`), seed, status, steps; with
    /// `and`, `or`, `not`, parentheses, numbers and quoted strings
    /// (`status == 'completed'`). A key no run has is an error.
    #[arg(long = "where", value_name = "EXPR")]
    pub filter: Option<String>,
    /// Sort by a key (same keys as --where); prefix with `-` for descending.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub sort: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

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

/// Every key a run in this store could answer: the fixed fields, the config
/// keys of a default experiment and of every recorded recipe (older runs may
/// have keys the current defaults lack), and the summaries of every series.
fn known_keys(summaries: &[RunSummary]) -> BTreeSet<String> {
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

pub fn run(args: Args, context: &Context) -> CliResult {
    let source = args.filter.clone().unwrap_or_default();
    let query = args.filter.as_deref().map(Query::parse).transpose()?;
    let store = context.store()?;
    let index = store.index()?;
    let tags = tags_by_target(&index)?;
    let mut summaries = Vec::new();
    for run in index.runs_newest_first(0, usize::MAX)? {
        summaries.push(RunSummary::load(&index, run, &tags)?);
    }
    drop(index);
    let known = known_keys(&summaries);
    if let Some(query) = &query {
        query.check_keys(&source, &known)?;
    }
    if let Some(sort) = &args.sort {
        let key = sort.strip_prefix('-').unwrap_or(sort);
        if !known.contains(key) {
            return Err(CliError::user(format!("--sort: unknown key `{key}`"))
                .with_hint("sort by a key --where takes: a recipe config path such as optim.lr, best./last./min./max.SERIES, seed, status or steps"));
        }
    }
    let mut matches: Vec<RunSummary> = summaries
        .into_iter()
        .filter(|summary| {
            query
                .as_ref()
                .is_none_or(|q| q.matches(&|key| summary.lookup(key)))
        })
        .collect();
    if let Some(sort) = &args.sort {
        let (key, descending) = match sort.strip_prefix('-') {
            Some(key) => (key, true),
            None => (sort.as_str(), false),
        };
        matches.sort_by(|a, b| {
            let ordering = compare(a.lookup(key), b.lookup(key));
            if descending {
                ordering.reverse()
            } else {
                ordering
            }
        });
    }
    if args.json {
        return output::print_json(&serde_json::Value::Array(
            matches.iter().map(RunSummary::to_json).collect(),
        ));
    }
    let sort_key = args
        .sort
        .as_deref()
        .map(|s| s.trim_start_matches('-').to_string());
    let mut header = vec![
        "run",
        "tag",
        "status",
        "steps",
        "optim.lr",
        "best.eval_loss",
    ];
    if let Some(key) = &sort_key {
        if !header.contains(&key.as_str()) {
            header.push(key);
        }
    }
    let rows: Vec<Vec<String>> = matches
        .iter()
        .map(|s| {
            let mut row = vec![
                s.run.id.short(),
                s.tags.join(","),
                s.status().into(),
                s.steps().to_string(),
            ];
            for key in &header[4..] {
                row.push(match s.lookup(key) {
                    Some(Value::Number(n)) => output::number(n),
                    Some(Value::Text(t)) => t,
                    None => "-".into(),
                });
            }
            row
        })
        .collect();
    output::println_safe(&output::table(&header, &rows));
    output::println_safe(&output::count(matches.len(), "run", "runs"));
    Ok(())
}

/// Runs without the key sort last.
fn compare(a: Option<Value>, b: Option<Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.total_cmp(&y),
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

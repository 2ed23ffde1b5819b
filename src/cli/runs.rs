//! `graft runs [--where EXPR] [--sort KEY]`: query runs by config values and
//! metric summaries.

use super::{output, CliResult, Context};
use crate::lineage::query::Value;
use crate::lineage::{tags_by_target, Query, RunSummary};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Filter, e.g. `optim.lr < 1e-4 and best.eval_loss < 2.1`. Keys: recipe
    /// config paths, best./last./min./max.SERIES, seed, status, steps; with
    /// `and`, `or`, `not`, parentheses, numbers and quoted strings.
    #[arg(long = "where", value_name = "EXPR")]
    pub filter: Option<String>,
    /// Sort by a key (same keys as --where); prefix with `-` for descending.
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub sort: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let query = args.filter.as_deref().map(Query::parse).transpose()?;
    let store = context.store()?;
    let index = store.index()?;
    let tags = tags_by_target(&index)?;
    let mut matches = Vec::new();
    for run in index.runs_newest_first(0, usize::MAX)? {
        let summary = RunSummary::load(&index, run, &tags)?;
        if query
            .as_ref()
            .is_none_or(|q| q.matches(&|key| summary.lookup(key)))
        {
            matches.push(summary);
        }
    }
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

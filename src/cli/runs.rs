//! `graft runs [--where EXPR] [--sort KEY]`: query runs by config values and
//! metric summaries.

use super::{output, CliError, CliResult, Context};
use crate::lineage::query::Value;
use crate::lineage::{known_keys, tags_by_target, Query, RunSummary, SelectError, Selection};

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

pub fn run(args: Args, context: &Context) -> CliResult {
    // A malformed filter is reported before the store is opened.
    if let Some(filter) = &args.filter {
        Query::parse(filter)?;
    }
    let store = context.store()?;
    let index = store.index()?;
    let tags = tags_by_target(&index)?;
    let mut summaries = Vec::new();
    for run in index.runs_newest_first(0, usize::MAX)? {
        summaries.push(RunSummary::load(&index, run, &tags)?);
    }
    drop(index);
    let known = known_keys(&summaries);
    let selection = Selection::new(args.filter.as_deref(), args.sort.as_deref(), &known)
        .map_err(|error| match error {
            SelectError::Query(error) => CliError::from(error),
            SelectError::UnknownSortKey(key) => CliError::user(format!("--sort: unknown key `{key}`"))
                .with_hint("sort by a key --where takes: a recipe config path such as optim.lr, best./last./min./max.SERIES, seed, status or steps"),
        })?;
    let matches = selection.apply(&summaries);
    if args.json {
        return output::print_json(&serde_json::Value::Array(
            matches.iter().map(|s| s.to_json()).collect(),
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

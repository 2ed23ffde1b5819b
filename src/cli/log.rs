//! `graft log [--graph]`: runs, newest first, or as a tree of forks.

use super::{output, CliResult, Context};
use crate::lineage::{children_map, tags_by_target, RunSummary};
use crate::store::{Id, Index};
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Draw runs as a tree of forks under their base models.
    #[arg(long)]
    pub graph: bool,
    /// Show at most this many runs (the newest).
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: usize,
    /// Skip this many of the newest runs (paging).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    let tags = tags_by_target(&index)?;
    if args.graph {
        return graph(&index, &tags, args.json);
    }
    let runs = index.runs_newest_first(args.offset, args.limit)?;
    let summaries = runs
        .into_iter()
        .map(|run| RunSummary::load(&index, run, &tags))
        .collect::<Result<Vec<_>, _>>()?;
    if args.json {
        return output::print_json(&serde_json::Value::Array(
            summaries.iter().map(RunSummary::to_json).collect(),
        ));
    }
    if summaries.is_empty() {
        output::println_safe("no runs yet: `graft train EXPERIMENT.toml` records one");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = summaries.iter().map(row).collect();
    output::println_safe(&output::table(
        &[
            "run",
            "tag",
            "status",
            "steps",
            "best eval_loss",
            "from",
            "created",
        ],
        &rows,
    ));
    let total = index.run_count();
    if args.offset + summaries.len() < total {
        output::println_safe(&format!(
            "... {} more (use --offset {})",
            total - args.offset - summaries.len(),
            args.offset + summaries.len()
        ));
    }
    Ok(())
}

fn row(summary: &RunSummary) -> Vec<String> {
    vec![
        summary.run.id.short(),
        summary.tags.join(","),
        summary.status().to_string(),
        summary.steps().to_string(),
        summary
            .best("eval_loss")
            .map(output::number)
            .unwrap_or_else(|| "-".into()),
        fork_point(summary),
        summary
            .run
            .created_at
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
    ]
}

fn fork_point(summary: &RunSummary) -> String {
    match (summary.run.parent_run, summary.start_step) {
        (Some(parent), Some(step)) => format!("{}@{step}", parent.short()),
        _ => match summary.start_adapter() {
            Some((adapter, _)) => format!(
                "model {} + adapter {}",
                &summary.run.recipe.base_model.short()[..8],
                &adapter.short()[..8]
            ),
            None => format!("model {}", &summary.run.recipe.base_model.short()[..8]),
        },
    }
}

/// The fork tree: base models at the roots, each run under the run whose
/// checkpoint it started from.
fn graph(index: &Index, tags: &BTreeMap<Id, Vec<String>>, json: bool) -> CliResult {
    let runs = index.all_runs()?;
    let children = children_map(&runs);
    let by_id: BTreeMap<Id, _> = runs.iter().map(|r| (r.id, r.clone())).collect();
    let mut roots_by_model: BTreeMap<Id, Vec<Id>> = BTreeMap::new();
    let mut sorted: Vec<_> = runs.iter().collect();
    sorted.sort_by_key(|r| r.seq);
    for run in sorted {
        if run.parent_run.is_none_or(|p| !by_id.contains_key(&p)) {
            roots_by_model
                .entry(run.recipe.base_model)
                .or_default()
                .push(run.id);
        }
    }
    let mut lines = Vec::new();
    let mut nodes = Vec::new();
    for (model, roots) in &roots_by_model {
        let name = tags
            .get(model)
            .and_then(|t| t.first().cloned())
            .unwrap_or_default();
        lines.push(
            format!("model {} {}", model.short(), name)
                .trim_end()
                .to_string(),
        );
        for (i, root) in roots.iter().enumerate() {
            draw(
                index,
                tags,
                &children,
                *root,
                "",
                i + 1 == roots.len(),
                &mut lines,
                &mut nodes,
                0,
            )?;
        }
    }
    if json {
        return output::print_json(&serde_json::Value::Array(nodes));
    }
    if lines.is_empty() {
        output::println_safe("no runs yet");
    }
    for line in lines {
        output::println_safe(&line);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn draw(
    index: &Index,
    tags: &BTreeMap<Id, Vec<String>>,
    children: &BTreeMap<Id, Vec<Id>>,
    run: Id,
    prefix: &str,
    last: bool,
    lines: &mut Vec<String>,
    nodes: &mut Vec<serde_json::Value>,
    depth: usize,
) -> CliResult {
    let summary = RunSummary::load(index, index.run(&run)?, tags)?;
    let branch = if last { "└─" } else { "├─" };
    let at = match (summary.start_step, summary.start_adapter()) {
        (Some(step), _) => format!(" @{step}"),
        (None, Some((adapter, _))) => format!(" from adapter {}", adapter.short()),
        (None, None) => String::new(),
    };
    let tag = if summary.tags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", summary.tags.join(","))
    };
    let best = summary
        .best("eval_loss")
        .map(|v| format!(" eval_loss {}", output::number(v)))
        .unwrap_or_default();
    lines.push(format!(
        "{prefix}{branch}* {}{tag}{at} {} {} steps{best}",
        run.short(),
        summary.status(),
        summary.steps()
    ));
    let mut node = summary.to_json();
    node["depth"] = serde_json::json!(depth);
    nodes.push(node);
    let kids = children.get(&run).cloned().unwrap_or_default();
    let child_prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
    for (i, child) in kids.iter().enumerate() {
        draw(
            index,
            tags,
            children,
            *child,
            &child_prefix,
            i + 1 == kids.len(),
            lines,
            nodes,
            depth + 1,
        )?;
    }
    Ok(())
}

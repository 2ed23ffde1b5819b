//! `graft lineage REF`: ancestry down to the base model, with each hop's data,
//! hyperparameters and best metrics.

use super::{output, CliResult, Context};
use crate::lineage::{ancestors, recipe_diff, tags_by_target, Forgetting, RunSummary};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run or checkpoint.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Keys shown for the first hop, where there is no parent to diff against.
const HEADLINE_KEYS: &[&str] = &[
    "adapter.kind",
    "adapter.rank",
    "optim.lr",
    "optim.batch_size",
    "train.steps",
];

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    let run = index.resolve_run(&args.reference)?;
    let tags = tags_by_target(&index)?;
    let chain = ancestors(&index, &run)?;
    let mut hops = Vec::new();
    let mut summaries = Vec::new();
    for (i, record) in chain.iter().enumerate() {
        let summary = RunSummary::load(&index, record.clone(), &tags)?;
        let parent = chain.get(i + 1);
        let changed: Vec<_> = match parent {
            Some(parent) => recipe_diff(&parent.recipe, &record.recipe)
                .into_iter()
                .filter(|c| {
                    c.key.starts_with("optim.")
                        || c.key.starts_with("train.")
                        || c.key.starts_with("adapter.")
                        || c.key.starts_with("unfreeze.")
                        || c.key.starts_with("data.replay")
                })
                .map(|c| serde_json::json!({"key": c.key, "parent": c.left, "value": c.right}))
                .collect(),
            None => HEADLINE_KEYS
                .iter()
                .filter_map(|k| {
                    record
                        .recipe
                        .config
                        .get_path(k)
                        .map(|v| serde_json::json!({"key": k, "value": v.to_string()}))
                })
                .collect(),
        };
        let datasets: Vec<_> = record
            .recipe
            .datasets
            .iter()
            .map(|d| serde_json::json!({"role": d.role, "name": d.name, "dataset": d.dataset.to_hex(), "weight": d.weight}))
            .collect();
        let mut best = serde_json::Map::new();
        for (name, s) in &summary.series {
            if name.starts_with("eval") {
                best.insert(name.clone(), serde_json::json!(s.best(name)));
            }
        }
        hops.push(serde_json::json!({
            "run": record.id.to_hex(),
            "tags": summary.tags,
            "status": summary.status(),
            "steps": summary.steps(),
            "start_checkpoint": record.recipe.start_checkpoint.map(|c| c.to_hex()),
            "start_step": summary.start_step,
            "start_adapter": summary.to_json()["start_adapter"],
            "from": summary.start_words(),
            "hyperparameters": changed,
            "datasets": datasets,
            "best": best,
            "forgetting": summary.forgetting.as_ref().map(|f| f.to_json()),
        }));
        summaries.push(summary);
    }
    let base = chain.last().map(|r| r.recipe.base_model);
    let model = match base {
        Some(id) => index.get_model(&id)?,
        None => None,
    };
    if args.json {
        return output::print_json(&serde_json::json!({
            "hops": hops,
            "base_model": base.map(|b| b.to_hex()),
            "base_model_path": model.as_ref().map(|m| m.path.clone()),
        }));
    }
    for (depth, hop) in hops.iter().enumerate() {
        let indent = "  ".repeat(depth);
        let tags = hop["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let from = hop["from"].as_str().unwrap_or("");
        output::println_safe(&format!(
            "{indent}run {}{} {} {} steps, {from}",
            &hop["run"].as_str().unwrap_or("")[..12],
            if tags.is_empty() {
                String::new()
            } else {
                format!(" [{tags}]")
            },
            hop["status"].as_str().unwrap_or(""),
            hop["steps"],
        ));
        for d in hop["datasets"].as_array().into_iter().flatten() {
            output::println_safe(&format!(
                "{indent}  data {:<6} {} dataset {} weight {}",
                d["role"].as_str().unwrap_or(""),
                d["name"].as_str().unwrap_or(""),
                &d["dataset"].as_str().unwrap_or("")[..12],
                d["weight"]
            ));
        }
        for h in hop["hyperparameters"].as_array().into_iter().flatten() {
            let was = h
                .get("parent")
                .and_then(|p| p.as_str())
                .map(|p| format!(" (parent {p})"))
                .unwrap_or_default();
            output::println_safe(&format!(
                "{indent}  set  {} = {}{was}",
                h["key"].as_str().unwrap_or(""),
                h["value"].as_str().unwrap_or("-")
            ));
        }
        for (name, value) in hop["best"].as_object().into_iter().flatten() {
            output::println_safe(&format!(
                "{indent}  best {name} = {}",
                value.as_f64().map(output::number).unwrap_or_default()
            ));
        }
        if let Some(forgetting) = &summaries[depth].forgetting {
            for line in forgetting_lines(forgetting) {
                output::println_safe(&format!("{indent}  {line}"));
            }
        }
    }
    if let Some(base) = base {
        let indent = "  ".repeat(hops.len());
        let path = model.map(|m| format!(" ({})", m.path)).unwrap_or_default();
        output::println_safe(&format!("{indent}model {}{path}", base.short()));
    }
    Ok(())
}

/// A fork's forgetting of each ancestor eval set at its `@best`, and the
/// part of its budget that was.
pub fn forgetting_lines(forgetting: &Forgetting) -> Vec<String> {
    let step = |s: Option<u64>| s.map_or("-".into(), |s| format!("@{s}"));
    let mut lines = Vec::new();
    if let Some(budget) = forgetting.budget {
        let verdict = match forgetting.within_budget() {
            Some(true) => "within it",
            _ => "no checkpoint within it: @best is the one that forgot least",
        };
        lines.push(format!(
            "budget {} per ancestor set: @best = {}, {verdict} (by loss alone: {})",
            percent(budget),
            step(forgetting.best_step),
            step(forgetting.best_step_ignoring_budget),
        ));
    }
    for set in &forgetting.sets {
        let used = set
            .budget_used
            .map(|used| format!(", {} of the budget", percent(used)))
            .unwrap_or_default();
        lines.push(format!(
            "forget {} {:+.1}% at {}{used} (worst {:+.1}% at step {})",
            set.set,
            set.forgetting * 100.0,
            step(forgetting.best_step),
            set.worst * 100.0,
            set.worst_step
        ));
    }
    lines
}

fn percent(fraction: f64) -> String {
    format!("{:.0}%", fraction * 100.0)
}

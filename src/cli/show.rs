//! `graft show REF`: one run, checkpoint, dataset or model in full.

use super::{output, CliResult, Context};
use crate::lineage::{tags_by_target, RunSummary};
use crate::store::{Index, Target};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A tag, RUN@STEP, RUN@best, RUN@last, or an id prefix.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Also list every tensor and state object of a checkpoint by hash
    /// (--json always has them).
    #[arg(long)]
    pub tensors: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    let value = describe(&index, index.resolve(&args.reference)?)?;
    drop(index);
    if args.json {
        return output::print_json(&value);
    }
    output::println_safe(&render_summary_first(&value, args.tensors));
    Ok(())
}

/// The keys that say what a thing is, printed first, in this order.
const SUMMARY_KEYS: &[&str] = &[
    "kind",
    "id",
    "tags",
    "status",
    "run",
    "step",
    "created_at",
    "added_at",
    "path",
    "parent_run",
    "start_checkpoint",
    "start_step",
    "start_adapter",
    "parent",
    "base_model",
    "seed",
    "steps",
    "retired",
    "metrics",
    "forgetting",
    "summary",
];

/// Per-tensor listings: long (hundreds of lines on a real model), so only
/// counted unless asked for.
const TENSOR_KEYS: &[&str] = &["tensors", "state"];

/// The terminal rendering: the summary first, then the rest of the record,
/// with tensor hashes counted rather than listed unless `tensors`.
pub fn render_summary_first(value: &serde_json::Value, tensors: bool) -> String {
    let Some(map) = value.as_object() else {
        return render(value, 0);
    };
    let entry = |key: &str, v: &serde_json::Value| render(&serde_json::json!({ key: v }), 0);
    let mut sections: Vec<String> = SUMMARY_KEYS
        .iter()
        .filter_map(|key| match (*key, map.get(*key)) {
            ("metrics", Some(metrics)) if is_series_summaries(metrics) => {
                Some(series_lines(metrics))
            }
            (_, v) => v.map(|v| entry(key, v)),
        })
        .collect();
    let mut hidden = 0;
    for (key, v) in map {
        if SUMMARY_KEYS.contains(&key.as_str()) {
            continue;
        }
        let listing = v
            .as_object()
            .filter(|_| TENSOR_KEYS.contains(&key.as_str()));
        match (key.as_str(), listing) {
            (_, Some(items)) if !tensors => {
                hidden += items.len();
                sections.push(format!("{key}: {} objects", items.len()));
            }
            ("checkpoints", _) if !tensors => {
                let rows = v.as_array().map(Vec::as_slice).unwrap_or_default();
                hidden += rows.len();
                let lines: Vec<String> = rows.iter().map(checkpoint_line).collect();
                sections.push(format!("checkpoints:\n{}", lines.join("\n")));
            }
            _ => sections.push(entry(key, v)),
        }
    }
    if hidden > 0 {
        sections.push("(tensor hashes: --tensors, or --json)".into());
    }
    sections.join("\n")
}

/// A run's `metrics`: one summary object (best, last, ...) per series.
fn is_series_summaries(metrics: &serde_json::Value) -> bool {
    metrics
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.values().all(|s| s.get("best").is_some()))
}

/// One line per series: best (by its direction), last, and how many points.
fn series_lines(metrics: &serde_json::Value) -> String {
    let number = |v: &serde_json::Value| v.as_f64().map_or("-".into(), output::number);
    let lines: Vec<String> = metrics
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, s)| {
            format!(
                "  {name}: best {}  last {}  ({} to step {})",
                number(&s["best"]),
                number(&s["last"]),
                output::count(s["count"].as_u64().unwrap_or(0) as usize, "point", "points"),
                s["last_step"]
            )
        })
        .collect();
    format!("metrics:\n{}", lines.join("\n"))
}

/// One checkpoint of a run on one line: step, id, eval metrics, retirement.
fn checkpoint_line(checkpoint: &serde_json::Value) -> String {
    let id = checkpoint["id"].as_str().unwrap_or("-");
    let metrics: Vec<String> = checkpoint["metrics"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_f64().map_or("-".into(), output::number)))
                .collect()
        })
        .unwrap_or_default();
    let retired = if checkpoint["retired"] == true {
        "  (retired)"
    } else {
        ""
    };
    format!(
        "  step {}  {}  {}{retired}",
        checkpoint["step"],
        &id[..id.len().min(12)],
        metrics.join("  ")
    )
}

/// Everything recorded about a target, as JSON.
pub fn describe(index: &Index, target: Target) -> CliResult<serde_json::Value> {
    let tags = tags_by_target(index)?;
    let json = |v: &dyn erased::Json| v.to_value();
    Ok(match target {
        Target::Run(id) => {
            let summary = RunSummary::load(index, index.run(&id)?, &tags)?;
            summary.to_record_json(&index.run_checkpoints(&id)?)
        }
        Target::Checkpoint(id) => {
            let mut value = json(&index.checkpoint(&id)?);
            value["kind"] = "checkpoint".into();
            value["tags"] = json(&tags.get(&id).cloned().unwrap_or_default());
            value
        }
        Target::Dataset(id) => {
            let record = index
                .get_dataset(&id)?
                .ok_or(crate::store::StoreError::NotFound {
                    kind: "dataset",
                    id,
                })?;
            let mut value = json(&record);
            value["kind"] = "dataset".into();
            value
        }
        Target::Model(id) => {
            let record = index
                .get_model(&id)?
                .ok_or(crate::store::StoreError::NotFound { kind: "model", id })?;
            let mut value = json(&record);
            value["kind"] = "model".into();
            value["tensors"] = serde_json::json!(record.tensors.len());
            value["files"] = json(&record.files);
            value
        }
    })
}

mod erased {
    /// Object-safe "serialize to JSON" so `describe` can take any record.
    pub trait Json {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}

/// An indented, YAML-like rendering of JSON for the terminal.
pub fn render(value: &serde_json::Value, indent: usize) -> String {
    let pad = "  ".repeat(indent);
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::Object(m) if !m.is_empty() => {
                    format!("{pad}{k}:\n{}", render(v, indent + 1))
                }
                serde_json::Value::Array(a) if a.iter().any(|x| x.is_object()) => {
                    format!("{pad}{k}:\n{}", render(v, indent + 1))
                }
                other => format!("{pad}{k}: {}", scalar(other)),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| format!("{pad}-\n{}", render(item, indent + 1)))
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("{pad}{}", scalar(other)),
    }
}

fn scalar(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Object(m) if m.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

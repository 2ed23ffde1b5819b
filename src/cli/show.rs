//! `graft show REF`: one run, checkpoint, dataset or model in full.

use super::{output, CliResult, Context};
use crate::lineage::{tags_by_target, RunSummary};
use crate::store::{Index, Target};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A tag, RUN@STEP, RUN@best, RUN@last, or an id prefix.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    let value = describe(&index, index.resolve(&args.reference)?)?;
    if args.json {
        return output::print_json(&value);
    }
    output::println_safe(&render(&value, 0));
    Ok(())
}

/// Everything recorded about a target, as JSON.
pub fn describe(index: &Index, target: Target) -> CliResult<serde_json::Value> {
    let tags = tags_by_target(index)?;
    let json = |v: &dyn erased::Json| v.to_value();
    Ok(match target {
        Target::Run(id) => {
            let summary = RunSummary::load(index, index.run(&id)?, &tags)?;
            let checkpoints: Vec<_> = index
                .run_checkpoints(&id)?
                .iter()
                .map(|c| json(c))
                .collect();
            let mut value = summary.to_json();
            value["kind"] = "run".into();
            value["recipe"] = json(&summary.run.recipe);
            value["notes"] = json(&summary.run.notes);
            value["executions"] = json(&summary.executions);
            value["checkpoints"] = serde_json::Value::Array(checkpoints);
            value
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

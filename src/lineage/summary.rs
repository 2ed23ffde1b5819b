//! A run at a glance: what `log`, `runs` and `lineage` print per run, and the
//! key lookup that `--where` and `--sort` evaluate against.

use super::forgetting::{forgetting_of, Forgetting};
use super::query::Value;
use crate::store::metrics::{higher_is_better, SeriesSummary};
use crate::store::{Canon, CheckpointRecord, ExecutionRecord, Id, Index, Result, RunRecord};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
pub struct RunSummary {
    pub run: RunRecord,
    pub executions: Vec<ExecutionRecord>,
    pub series: BTreeMap<String, SeriesSummary>,
    pub tags: Vec<String>,
    /// Step of the start checkpoint, for `RUN@STEP` display of the fork point.
    pub start_step: Option<u64>,
    pub checkpoints: usize,
    /// How much of its ancestors' eval sets a fork forgot (and of its budget).
    pub forgetting: Option<Forgetting>,
}

impl RunSummary {
    pub fn load(
        index: &Index,
        run: RunRecord,
        tags: &BTreeMap<Id, Vec<String>>,
    ) -> Result<RunSummary> {
        let executions = index.executions(&run.id)?;
        let series = index.summaries(&run.id)?;
        let start_step = match run.recipe.start_checkpoint {
            Some(id) => index.get_checkpoint(&id)?.map(|c| c.step),
            None => None,
        };
        let checkpoints = index.run_checkpoints.scan_prefix(run.id.0).count();
        let forgetting = forgetting_of(index, &run, series.keys().map(String::as_str))?;
        Ok(RunSummary {
            forgetting,
            tags: tags.get(&run.id).cloned().unwrap_or_default(),
            run,
            executions,
            series,
            start_step,
            checkpoints,
        })
    }

    /// The outside adapter the run started from (`[adapter] from`): its
    /// content id and the folder it was read from.
    pub fn start_adapter(&self) -> Option<(Id, Option<String>)> {
        let id = crate::store::adapters::recipe_adapter(&self.run.recipe.config)?;
        let path = self
            .run
            .notes
            .get("start_adapter")
            .and_then(|note| note.get("path"))
            .and_then(Canon::as_str)
            .map(str::to_string);
        Some((id, path))
    }

    /// Where the run starts, in words: a fork point, an adapter or the base model.
    pub fn start_words(&self) -> String {
        match (
            self.run.recipe.start_checkpoint,
            self.start_step,
            self.start_adapter(),
        ) {
            (Some(checkpoint), step, _) => format!(
                "from checkpoint {} (step {})",
                checkpoint.short(),
                step.map_or("?".into(), |s| s.to_string())
            ),
            (None, _, Some((adapter, path))) => format!(
                "from adapter {}{}",
                adapter.short(),
                path.map(|p| format!(" ({p})")).unwrap_or_default()
            ),
            _ => "from the base model".into(),
        }
    }

    pub fn status(&self) -> &'static str {
        self.executions
            .last()
            .map(|e| e.status.as_str())
            .unwrap_or("registered")
    }

    /// The last training step recorded.
    pub fn steps(&self) -> u64 {
        self.series.values().map(|s| s.last_step).max().unwrap_or(0)
    }

    pub fn best(&self, series: &str) -> Option<f64> {
        self.series.get(series).map(|s| s.best(series))
    }

    /// Every key [`RunSummary::lookup`] answers for this run.
    pub fn keys(&self) -> BTreeSet<String> {
        let mut keys: BTreeSet<String> = RUN_FIELDS.iter().map(|k| k.to_string()).collect();
        keys.extend(summary_keys(self.series.keys().map(String::as_str)));
        keys.extend(config_keys(&self.run.recipe.config));
        keys.extend(
            self.forgetting
                .iter()
                .flat_map(|f| f.sets.iter())
                .map(|set| format!("{FORGET_KEY}.{}", set.short_name())),
        );
        keys
    }

    /// Value of a `--where`/`--sort` key for this run.
    pub fn lookup(&self, key: &str) -> Option<Value> {
        if let Some((kind, series)) = key.split_once('.') {
            if let Some(summary) = self.series.get(series) {
                let value = match kind {
                    "best" => Some(summary.best(series)),
                    "last" => Some(summary.last),
                    "min" => Some(summary.min),
                    "max" => Some(summary.max),
                    _ => None,
                };
                if value.is_some() {
                    return value.map(Value::Number);
                }
            }
        }
        if let Some(set) = key
            .strip_prefix(FORGET_KEY)
            .and_then(|k| k.strip_prefix('.'))
        {
            if let Some(measure) = self.forgetting.as_ref().and_then(|f| f.measure(set)) {
                return Some(Value::Number(measure));
            }
        }
        match key {
            "seed" => return Some(Value::Number(self.run.recipe.seed as f64)),
            "status" => return Some(Value::Text(self.status().into())),
            "steps_recorded" | "steps" => return Some(Value::Number(self.steps() as f64)),
            "run" | "id" => return Some(Value::Text(self.run.id.to_hex())),
            "tag" => return self.tags.first().map(|t| Value::Text(t.clone())),
            _ => {}
        }
        match self.run.recipe.config.get_path(key)? {
            Canon::Int(v) => Some(Value::Number(*v as f64)),
            Canon::Float(v) => Some(Value::Number(*v)),
            Canon::Bool(b) => Some(Value::Text(b.to_string())),
            Canon::Str(s) => Some(Value::Text(s.clone())),
            other => Some(Value::Text(other.to_string())),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let metrics: serde_json::Map<String, serde_json::Value> = self
            .series
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "best": s.best(name), "last": s.last, "min": s.min, "max": s.max,
                        "count": s.count, "last_step": s.last_step,
                        "higher_is_better": higher_is_better(name),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "id": self.run.id.to_hex(),
            "seq": self.run.seq,
            "created_at": self.run.created_at.to_rfc3339(),
            "status": self.status(),
            "tags": self.tags,
            "parent_run": self.run.parent_run.map(|p| p.to_hex()),
            "start_checkpoint": self.run.recipe.start_checkpoint.map(|p| p.to_hex()),
            "start_step": self.start_step,
            "start_adapter": self.start_adapter().map(|(id, path)| serde_json::json!({
                "id": id.to_hex(), "path": path,
            })),
            "base_model": self.run.recipe.base_model.to_hex(),
            "seed": self.run.recipe.seed,
            "steps": self.steps(),
            "checkpoints": self.checkpoints,
            "executions": self.executions.len(),
            "metrics": metrics,
            "forgetting": self.forgetting.as_ref().map(Forgetting::to_json),
        })
    }
    /// Everything recorded about the run, as `graft show RUN --json` prints
    /// it: the summary, then recipe, notes, executions and checkpoints.
    pub fn to_record_json(&self, checkpoints: &[CheckpointRecord]) -> serde_json::Value {
        let json =
            |value: serde_json::Result<serde_json::Value>| value.unwrap_or(serde_json::Value::Null);
        let mut value = self.to_json();
        value["kind"] = "run".into();
        value["recipe"] = json(serde_json::to_value(&self.run.recipe));
        value["notes"] = json(serde_json::to_value(&self.run.notes));
        value["executions"] = json(serde_json::to_value(&self.executions));
        value["checkpoints"] = json(serde_json::to_value(checkpoints));
        value
    }
}

/// `forget.SET`: the forgetting measure on the ancestor eval set SET at the
/// run's `@best` checkpoint (see [`super::forgetting`]).
pub const FORGET_KEY: &str = "forget";

/// Keys every run has besides its config and metrics.
pub const RUN_FIELDS: [&str; 7] = [
    "seed",
    "status",
    "steps",
    "steps_recorded",
    "run",
    "id",
    "tag",
];

/// The summaries a metric series has as keys: `best.SERIES`, ...
pub const SUMMARY_KINDS: [&str; 4] = ["best", "last", "min", "max"];

/// `best.S`, `last.S`, `min.S`, `max.S` for every series `S`.
pub fn summary_keys<'a>(series: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    series
        .into_iter()
        .flat_map(|name| SUMMARY_KINDS.map(|kind| format!("{kind}.{name}")))
        .collect()
}

/// Every dotted path of a config (`optim`, `optim.lr`, ...): what
/// `Canon::get_path` finds.
pub fn config_keys(config: &Canon) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(value: &Canon, prefix: &str, out: &mut Vec<String>) {
        if let Canon::Map(entries) = value {
            for (key, child) in entries {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                walk(child, &path, out);
                out.push(path);
            }
        }
    }
    walk(config, "", &mut out);
    out
}

/// Tags by the id they point at.
pub fn tags_by_target(index: &Index) -> Result<BTreeMap<Id, Vec<String>>> {
    let mut out: BTreeMap<Id, Vec<String>> = BTreeMap::new();
    for reference in index.all_refs()? {
        out.entry(reference.target)
            .or_default()
            .push(reference.name);
    }
    Ok(out)
}

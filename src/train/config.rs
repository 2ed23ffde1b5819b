//! Experiment files: TOML in, a resolved config (every default filled) out.
//!
//! Unknown keys are errors with the file, line and a "did you mean" hint.
//! `--set key=value` overrides are applied to the TOML tree before it is
//! read, so they are checked exactly like keys in the file.

use crate::compute::ComputeSection;
use crate::store::Canon;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--set {assignment}: {reason}")]
    BadOverride { assignment: String, reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub adapter: Option<AdapterSection>,
    #[serde(default)]
    pub unfreeze: UnfreezeSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub optim: OptimSection,
    #[serde(default)]
    pub train: TrainSection,
    /// How the numbers are computed (see [`crate::compute`]).
    #[serde(default)]
    pub compute: ComputeSection,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face folder, a model id (prefix) or a tag.
    #[serde(default)]
    pub base: Option<String>,
    /// Continue from a checkpoint (a fork) instead.
    #[serde(default)]
    pub from: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdapterSection {
    /// Start from an outside PEFT adapter folder (PEFT, Unsloth, Axolotl):
    /// its adapter_config.json decides rank, alpha, targets, dropout and
    /// rslora. In a recipe: the stored adapter's content id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default = "default_lora")]
    pub kind: String,
    #[serde(default = "default_rank")]
    pub rank: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// Scale by alpha/sqrt(rank) instead of alpha/rank.
    #[serde(default)]
    pub rslora: bool,
}

fn default_lora() -> String {
    "lora".into()
}
fn default_rank() -> usize {
    16
}
fn default_alpha() -> f64 {
    32.0
}
pub fn default_targets() -> Vec<String> {
    crate::model::ALL_TARGETS.map(String::from).to_vec()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct UnfreezeSection {
    #[serde(default)]
    pub schedule: Vec<UnfreezeStep>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UnfreezeStep {
    pub at: u64,
    /// `none`, `all`, `top:K`, or a comma list of blocks
    /// (`embed`, `layer.N`, `norm`, `lm_head`).
    pub layers: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    #[serde(default)]
    pub train: Vec<DataFile>,
    #[serde(default)]
    pub replay: Option<ReplaySection>,
    #[serde(default)]
    pub eval: Vec<EvalFile>,
    #[serde(default)]
    pub eval_ancestors: bool,
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    #[serde(default = "default_true")]
    pub pack: bool,
    /// Chat template: `auto` (the tokenizer's own, else chatml), `model`, `chatml` or `plain`.
    #[serde(default = "default_template")]
    pub template: String,
    /// Carve a validation split from the train data when no eval file is given.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(default)]
    pub allow_format_change: bool,
    /// Evaluate on at most this many examples per eval set.
    #[serde(default = "default_eval_examples")]
    pub eval_examples: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        toml::from_str("").expect("an empty data section takes every default")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    pub path: String,
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default = "default_weight")]
    pub weight: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalFile {
    pub path: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_format")]
    pub format: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplaySection {
    pub ratio: f64,
    /// `parent`, `ancestors`, or a list of refs.
    #[serde(default = "default_replay_from")]
    pub from: ReplayFrom,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ReplayFrom {
    Named(String),
    Refs(Vec<String>),
}

fn default_replay_from() -> ReplayFrom {
    ReplayFrom::Named("ancestors".into())
}
fn default_seq_len() -> usize {
    256
}
fn default_true() -> bool {
    true
}
fn default_template() -> String {
    "auto".into()
}
fn default_val_fraction() -> f64 {
    0.05
}
fn default_eval_examples() -> usize {
    256
}
fn default_format() -> String {
    "chat".into()
}
fn default_weight() -> f64 {
    1.0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// constant | linear | cosine, after warmup.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient norm clip; 0 disables.
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_grad_accum")]
    pub grad_accum: usize,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Learning rate for embeddings and lm_head when they train [default: lr].
    #[serde(default)]
    pub embedding_lr: Option<f64>,
}

impl Default for OptimSection {
    fn default() -> Self {
        toml::from_str("").expect("an empty optim section takes every default")
    }
}

fn default_lr() -> f64 {
    2e-4
}
fn default_schedule() -> String {
    "cosine".into()
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_batch_size() -> usize {
    8
}
fn default_grad_accum() -> usize {
    1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    #[serde(default = "default_steps")]
    pub steps: u64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    #[serde(default = "default_true")]
    pub baseline_eval: bool,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    #[serde(default = "default_keep_best")]
    pub keep_best: usize,
    /// Evaluations without improvement before stopping; 0 disables.
    #[serde(default)]
    pub early_stop_patience: u64,
    /// Tokens generated per answer when scoring exact-match accuracy.
    #[serde(default = "default_answer_tokens")]
    pub answer_tokens: usize,
    /// The most a fork may forget of each ancestor eval set: the relative
    /// rise of the set's loss over its loss at the fork point (the step-0
    /// baseline), `(loss - baseline) / baseline`; 0.05 allows 5%. Every
    /// evaluation records `forget_budget_used/<set>` (that rise divided by
    /// the budget: 1.0 is the whole budget); `RUN@best` and `keep_best`
    /// rank checkpoints within the budget on every set by the new task's
    /// loss, ahead of those over it (ranked by the budget they used).
    /// Needs `data.eval_ancestors` and `train.baseline_eval`. Unset: no
    /// budget (and the key is left out of the recipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgetting_budget: Option<f64>,
    /// Stop once the forgetting budget has been exceeded at
    /// `early_stop_patience` evaluations in a row.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stop_on_forgetting: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Default for TrainSection {
    fn default() -> Self {
        toml::from_str("").expect("an empty train section takes every default")
    }
}

fn default_steps() -> u64 {
    100
}
fn default_eval_every() -> u64 {
    25
}
fn default_checkpoint_every() -> u64 {
    50
}
fn default_keep_last() -> usize {
    3
}
fn default_keep_best() -> usize {
    2
}
fn default_answer_tokens() -> usize {
    16
}

impl Experiment {
    /// Read an experiment file and apply `--set key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Experiment, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Experiment::parse(&text, path, overrides)
    }

    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Experiment, ConfigError> {
        Experiment::parse_for(text, path, overrides, None)
    }

    /// Parse an experiment with its `[model]` replaced by `from = REF`.
    /// Every key the text leaves out takes its default: a fork's settings
    /// are the parent's patched by its file, which [`crate::train::fork`] makes.
    pub fn parse_for(
        text: &str,
        path: &Path,
        overrides: &[String],
        fork_from: Option<&str>,
    ) -> Result<Experiment, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut tree: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(with_hint(&e.to_string())))?;
        if let Some(reference) = fork_from {
            let mut model = toml::Table::new();
            model.insert("from".into(), toml::Value::String(reference.into()));
            tree.insert("model".into(), toml::Value::Table(model));
        }
        apply_overrides(&mut tree, overrides)?;
        let changed = if !overrides.is_empty() {
            Some("(after --set) ")
        } else {
            fork_from.map(|_| "")
        };
        Experiment::from_tree(tree, text, path, changed)
    }

    /// The experiment a TOML tree describes, read from `text` itself where
    /// the tree is that text unchanged (`changed` is None; errors then carry
    /// its line numbers), else from the tree, errors prefixed by `changed`.
    /// An `[adapter] from` folder fills the adapter keys from its config.
    pub(crate) fn from_tree(
        mut tree: toml::Table,
        text: &str,
        path: &Path,
        changed: Option<&str>,
    ) -> Result<Experiment, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let adapter_from = super::adapter_start::fill_from_folder(&mut tree).map_err(invalid)?;
        if changed.is_none() && !adapter_from {
            // Parse the original text so errors carry its line numbers.
            toml::from_str(text).map_err(|e: toml::de::Error| invalid(with_hint(&e.to_string())))
        } else {
            let when = changed.unwrap_or("");
            Experiment::deserialize(toml::Value::Table(tree))
                .map_err(|e| invalid(format!("{when}{}", with_hint(&e.to_string()))))
        }
        .and_then(|experiment: Experiment| {
            experiment.validate().map_err(invalid)?;
            Ok(experiment)
        })
    }

    /// The settings a recipe was made from, read back from its config (the
    /// model and data sections are ids in the recipe, not paths).
    pub fn from_recipe(recipe: &crate::store::Recipe) -> Result<Experiment, String> {
        let mut json = recipe.config.to_json();
        if let Some(object) = json.as_object_mut() {
            object.insert(
                "model".into(),
                serde_json::json!({ "base": recipe.base_model.to_hex() }),
            );
        }
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    /// An experiment that only sets `from` (for `graft fork REF` without a file).
    pub fn from_overrides(overrides: &[String]) -> Result<Experiment, ConfigError> {
        Experiment::parse("[model]\n", Path::new("<command line>"), overrides)
    }

    fn validate(&self) -> Result<(), String> {
        // NaN and infinities parse as TOML floats, but train nothing and
        // cannot be read back from the recipe (JSON has no such numbers).
        let optim = &self.optim;
        let mut numbers = vec![
            ("optim.lr", optim.lr),
            ("optim.min_lr_ratio", optim.min_lr_ratio),
            ("optim.weight_decay", optim.weight_decay),
            ("optim.grad_clip", optim.grad_clip),
            ("optim.beta1", optim.beta1),
            ("optim.beta2", optim.beta2),
            ("optim.eps", optim.eps),
            ("data.val_fraction", self.data.val_fraction),
        ];
        numbers.extend(optim.embedding_lr.map(|lr| ("optim.embedding_lr", lr)));
        numbers.extend(
            self.train
                .forgetting_budget
                .map(|budget| ("train.forgetting_budget", budget)),
        );
        if let Some(adapter) = &self.adapter {
            numbers.extend([
                ("adapter.alpha", adapter.alpha),
                ("adapter.dropout", adapter.dropout),
            ]);
        }
        numbers.extend(
            self.data
                .replay
                .as_ref()
                .map(|r| ("data.replay.ratio", r.ratio)),
        );
        numbers.extend(
            self.data
                .train
                .iter()
                .map(|file| ("data.train.weight", file.weight)),
        );
        if let Some((key, value)) = numbers.iter().find(|(_, value)| !value.is_finite()) {
            return Err(format!("{key} = {value}: expected a finite number"));
        }
        if optim.lr <= 0.0 {
            return Err(format!(
                "optim.lr = {}: expected a positive learning rate",
                optim.lr
            ));
        }
        if let Some(lr) = optim.embedding_lr.filter(|lr| *lr <= 0.0) {
            return Err(format!(
                "optim.embedding_lr = {lr}: expected a positive learning rate"
            ));
        }
        self.compute.validate()?;
        match (&self.model.base, &self.model.from) {
            (Some(_), Some(_)) => {
                return Err(
                    "[model] sets both `base` and `from`: a run starts from one of them".into(),
                )
            }
            (None, None) => {
                return Err(
                    "[model] needs `base` (a model folder, id or tag) or `from` (a checkpoint ref)"
                        .into(),
                )
            }
            _ => {}
        }
        if let (Some(_), Some(adapter)) = (
            &self.model.from,
            self.adapter.as_ref().and_then(|a| a.from.as_ref()),
        ) {
            return Err(format!(
                "adapter.from = {adapter:?} with model.from: a fork continues its checkpoint's adapter; start from an adapter folder with model.base"
            ));
        }
        if !["constant", "linear", "cosine"].contains(&self.optim.schedule.as_str()) {
            return Err(format!(
                "optim.schedule = {:?}: expected constant, linear or cosine",
                self.optim.schedule
            ));
        }
        if let Some(adapter) = &self.adapter {
            if adapter.kind != "lora" {
                return Err(format!("adapter.kind = {:?}: only \"lora\" is supported (omit [adapter] for full fine-tuning)", adapter.kind));
            }
            if adapter.rank == 0 {
                return Err("adapter.rank must be at least 1".into());
            }
        }
        if self.optim.batch_size == 0 || self.optim.grad_accum == 0 {
            return Err("optim.batch_size and optim.grad_accum must be at least 1".into());
        }
        if self.train.steps == 0 {
            return Err("train.steps must be at least 1".into());
        }
        if let Some(replay) = &self.data.replay {
            if !(0.0..1.0).contains(&replay.ratio) {
                return Err(format!(
                    "data.replay.ratio = {}: must be in [0, 1)",
                    replay.ratio
                ));
            }
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return Err(format!(
                "data.val_fraction = {}: must be in [0, 1)",
                self.data.val_fraction
            ));
        }
        self.validate_forgetting()?;
        for step in &self.unfreeze.schedule {
            super::unfreeze::parse_layers(&step.layers)
                .map_err(|e| format!("unfreeze.schedule at = {}: {e}", step.at))?;
        }
        Ok(())
    }

    /// A forgetting budget is measured on the ancestors' eval sets against
    /// their step-0 losses: both must be recorded.
    fn validate_forgetting(&self) -> Result<(), String> {
        let train = &self.train;
        match train.forgetting_budget {
            Some(budget) if budget <= 0.0 => Err(format!(
                "train.forgetting_budget = {budget}: expected a positive fraction (0.05 allows a 5% rise of each ancestor set's loss)"
            )),
            Some(budget) if !self.data.eval_ancestors => Err(format!(
                "train.forgetting_budget = {budget} needs data.eval_ancestors = true: the budget is measured on the ancestors' eval sets"
            )),
            Some(budget) if !train.baseline_eval => Err(format!(
                "train.forgetting_budget = {budget} needs train.baseline_eval = true: the budget is measured against the losses at the fork point"
            )),
            None if train.stop_on_forgetting => Err(
                "train.stop_on_forgetting = true needs train.forgetting_budget (e.g. 0.05)".into(),
            ),
            Some(_) if train.stop_on_forgetting && train.early_stop_patience == 0 => Err(
                "train.stop_on_forgetting = true needs train.early_stop_patience >= 1: the number of evaluations in a row over the budget that stops the run".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The config as it enters the recipe: every default filled, without
    /// the paths and refs that the recipe records as ids instead (so a moved
    /// file or a renamed tag does not change the run id).
    pub fn recipe_config(&self) -> Canon {
        let mut config = Canon::from_serialize(self);
        if let Canon::Map(sections) = &mut config {
            sections.remove("model");
            // An adapter folder enters the recipe as its content id (see `plan`).
            if let Some(Canon::Map(adapter)) = sections.get_mut("adapter") {
                adapter.remove("from");
            }
            // Only the precision policy is part of the recipe, and only where it
            // differs from the default (see `crate::compute`).
            sections.remove("compute");
            if let Some(part) = self.compute.recipe_part() {
                sections.insert("compute".into(), part);
            }
            if let Some(Canon::Map(data)) = sections.get_mut("data") {
                data.remove("train");
                data.remove("eval");
                if let Some(Canon::Map(replay)) = data.get_mut("replay") {
                    replay.remove("from");
                }
            }
        }
        config
    }
}

/// Apply `key=value` assignments to a TOML tree; values parse as TOML and
/// fall back to strings (`--set optim.lr=1e-5`, `--set adapter.kind=lora`).
pub fn apply_overrides(tree: &mut toml::Table, overrides: &[String]) -> Result<(), ConfigError> {
    for assignment in overrides {
        let bad = |reason: &str| ConfigError::BadOverride {
            assignment: assignment.clone(),
            reason: reason.into(),
        };
        let (key, raw) = assignment
            .split_once('=')
            .ok_or_else(|| bad("expected key=value"))?;
        let key = key.trim();
        let value: toml::Value = match format!("v = {raw}").parse::<toml::Table>() {
            Ok(mut table) => table.remove("v").unwrap_or(toml::Value::String(raw.into())),
            Err(_) => toml::Value::String(raw.trim().into()),
        };
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("the key has an empty part"));
        }
        let mut table = &mut *tree;
        for part in &parts[..parts.len() - 1] {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| bad(&format!("`{part}` is not a table")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

/// Add "did you mean" to serde's unknown-field message.
fn with_hint(message: &str) -> String {
    let Some(start) = message.find("unknown field `") else {
        return message.to_string();
    };
    let rest = &message[start + "unknown field `".len()..];
    let Some(end) = rest.find('`') else {
        return message.to_string();
    };
    let unknown = &rest[..end];
    let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
    match expected
        .iter()
        .min_by_key(|candidate| edit_distance(unknown, candidate))
    {
        Some(best) if edit_distance(unknown, best) <= unknown.len().max(2) / 2 + 1 => {
            format!("{}\nhint: did you mean `{best}`?", message.trim_end())
        }
        _ => message.to_string(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            current.push(
                (previous[j] + (ca != *cb) as usize)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_name_the_line_and_suggest_the_key() {
        let text = "[model]\nbase = \"m\"\n\n[optim]\nlrr = 1e-4\n";
        let error = Experiment::parse(text, Path::new("exp.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("exp.toml:"), "{error}");
        assert!(error.contains("line 5"), "{error}");
        assert!(error.contains("did you mean `lr`?"), "{error}");
    }

    #[test]
    fn overrides_apply_before_checking_and_defaults_fill_the_rest() {
        let text = "[model]\nbase = \"m\"\n";
        let experiment = Experiment::parse(
            text,
            Path::new("e.toml"),
            &["optim.lr=1e-5".into(), "train.steps=7".into()],
        )
        .unwrap();
        assert_eq!(experiment.optim.lr, 1e-5);
        assert_eq!(experiment.train.steps, 7);
        assert_eq!(experiment.optim.schedule, "cosine");
        let config = experiment.recipe_config();
        assert_eq!(config.get_path("optim.batch_size"), Some(&Canon::Int(8)));
        assert!(
            config.get("model").is_none(),
            "paths and refs are ids in the recipe"
        );
        let error = Experiment::parse(text, Path::new("e.toml"), &["optim.lrr=1".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("did you mean `lr`?"), "{error}");
    }

    #[test]
    fn forgetting_budget_keys_are_checked_and_left_out_of_the_recipe_at_their_default() {
        let fork = "[model]\nfrom = \"a@best\"\n[data]\neval_ancestors = true\n";
        let parse = |text: &str, sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Experiment::parse(text, Path::new("fork.toml"), &sets)
        };
        let plain = parse(fork, &[]).unwrap().recipe_config();
        assert!(plain.get_path("train.forgetting_budget").is_none());
        assert!(plain.get_path("train.stop_on_forgetting").is_none());
        let budgeted = parse(fork, &["train.forgetting_budget=0.05"]).unwrap();
        assert_eq!(
            budgeted.recipe_config().get_path("train.forgetting_budget"),
            Some(&Canon::Float(0.05))
        );
        let cases: [(&str, &str, &[&str]); 5] = [
            ("not positive", fork, &["train.forgetting_budget=0"]),
            (
                "no ancestor sets",
                "[model]\nfrom = \"a@best\"\n",
                &["train.forgetting_budget=0.05"],
            ),
            (
                "no baseline",
                fork,
                &["train.forgetting_budget=0.05", "train.baseline_eval=false"],
            ),
            (
                "stop without a budget",
                fork,
                &["train.stop_on_forgetting=true"],
            ),
            (
                "stop without patience",
                fork,
                &[
                    "train.forgetting_budget=0.05",
                    "train.stop_on_forgetting=true",
                ],
            ),
        ];
        for (case, text, sets) in cases {
            let error = parse(text, sets).unwrap_err().to_string();
            assert!(error.starts_with("fork.toml: "), "{case}: {error}");
            let key = if case.starts_with("stop") {
                "train.stop_on_forgetting"
            } else {
                "train.forgetting_budget"
            };
            assert!(error.contains(key), "{case}: {error}");
        }
    }
}

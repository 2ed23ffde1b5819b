//! What a fork's experiment is: the parent run's recipe, patched.
//!
//! `graft fork REF [FILE] [--set key=value]...` starts from the settings the
//! parent run recorded (every key, data settings included: template,
//! seq_len, replay, eval_ancestors, seed, batch size, warmup, ...). The keys
//! the file names replace the parent's (tables merge key by key, any other
//! value, a list included, replaces whole); `--set` applies on top. A key the
//! file leaves out keeps the parent's value, never the default, so a recipe
//! diff between parent and child shows exactly what the file changed.
//!
//! The parent's data files are ids in its recipe: a file without
//! `[data] train` keeps training on the parent's data (see `plan`). The
//! recipe keeps the datasets replay resolved to, not the words of
//! `data.replay.from`; those come from the parent's `replay_from` note (a
//! parent recorded before that note inherits the default, `ancestors`).

use super::config::{apply_overrides, ConfigError, Experiment, ReplayFrom};
use crate::store::{Canon, Store, StoreError};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the parent run's recipe cannot be read back: {0}")]
    Recipe(String),
}

/// The experiment of a fork from checkpoint `reference`: the parent's
/// recorded settings, patched by `file` (its text and path) and `overrides`.
pub fn fork_experiment(
    store: &Store,
    reference: &str,
    file: Option<(&str, &Path)>,
    overrides: &[String],
) -> Result<Experiment, ForkError> {
    let parent = {
        let index = store.index()?;
        let checkpoint = index.checkpoint(&index.resolve_checkpoint(reference)?)?;
        index.run(&checkpoint.run)?
    };
    let mut inherited = Experiment::from_recipe(&parent.recipe).map_err(ForkError::Recipe)?;
    // The recipe holds replay's resolved datasets, the run's note its `from`.
    let written_from = match parent.notes.get("replay_from") {
        Some(Canon::Str(name)) => Some(ReplayFrom::Named(name.clone())),
        Some(Canon::List(refs)) => Some(ReplayFrom::Refs(
            refs.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect(),
        )),
        _ => None,
    };
    if let (Some(replay), Some(from)) = (inherited.data.replay.as_mut(), written_from) {
        replay.from = from;
    }
    Ok(patch(&inherited, reference, file, overrides)?)
}

/// `parent` patched by `file` and `overrides`, continuing from `reference`.
pub fn patch(
    parent: &Experiment,
    reference: &str,
    file: Option<(&str, &Path)>,
    overrides: &[String],
) -> Result<Experiment, ConfigError> {
    let (text, path) = file.unwrap_or(("", Path::new("<command line>")));
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut written: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    // `REF` on the command line replaces the file's [model], so a train
    // file can be forked as it is.
    written.remove("model");
    let mut tree = match toml::Value::try_from(parent) {
        Ok(toml::Value::Table(tree)) => tree,
        _ => return Err(invalid("the parent's settings do not form a table".into())),
    };
    // A fork continues its checkpoint's model and adapter: the parent's
    // starting points are not the child's.
    tree.remove("model");
    if let Some(adapter) = tree.get_mut("adapter").and_then(toml::Value::as_table_mut) {
        adapter.remove("from");
    }
    merge(&mut tree, written);
    let mut model = toml::Table::new();
    model.insert("from".into(), toml::Value::String(reference.into()));
    tree.insert("model".into(), toml::Value::Table(model));
    apply_overrides(&mut tree, overrides)?;
    Experiment::from_tree(tree, text, path, Some(""))
}

/// Writes `patch` over `base`: tables key by key, anything else whole.
fn merge(base: &mut toml::Table, patch: toml::Table) {
    for (key, value) in patch {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(inner)) => {
                merge(existing, inner)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> Experiment {
        Experiment::parse(
            "[model]\nbase = \"m\"\n[adapter]\nrank = 4\n[data]\ntemplate = \"plain\"\nseq_len = 64\neval_ancestors = true\nreplay = { ratio = 0.25 }\n[optim]\nlr = 1e-3\nbatch_size = 16\nwarmup_steps = 10\n[train]\nseed = 9\nsteps = 50\n",
            Path::new("parent.toml"),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn keys_a_fork_file_leaves_out_keep_the_parents_values() {
        let text = "[optim]\nlr = 1e-4\n\n[train]\nsteps = 20\n";
        let child = patch(
            &parent(),
            "run@best",
            Some((text, Path::new("fork.toml"))),
            &["train.seed=11".into()],
        )
        .unwrap();
        assert_eq!(child.optim.lr, 1e-4);
        assert_eq!(child.train.steps, 20);
        assert_eq!(child.train.seed, 11, "--set applies on top of the file");
        assert_eq!(child.optim.batch_size, 16);
        assert_eq!(child.optim.warmup_steps, 10);
        assert_eq!(child.data.template, "plain");
        assert_eq!(child.data.seq_len, 64);
        assert!(child.data.eval_ancestors);
        assert_eq!(child.data.replay.as_ref().map(|r| r.ratio), Some(0.25));
        assert_eq!(child.model.from.as_deref(), Some("run@best"));
        assert_eq!(child.model.base, None);
    }

    #[test]
    fn a_fork_file_with_unknown_keys_is_refused_and_its_model_section_replaced() {
        let typo = patch(
            &parent(),
            "r",
            Some(("[optim]\nlrr = 1\n", Path::new("fork.toml"))),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            typo.starts_with("fork.toml") && typo.contains("did you mean `lr`"),
            "{typo}"
        );
        let train_file = patch(
            &parent(),
            "r@3",
            Some(("[model]\nbase = \"x\"\n", Path::new("fork.toml"))),
            &[],
        )
        .unwrap();
        assert_eq!(train_file.model.from.as_deref(), Some("r@3"));
        assert_eq!(train_file.model.base, None);
    }
}

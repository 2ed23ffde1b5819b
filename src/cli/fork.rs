//! `graft fork REF [EXPERIMENT.toml]`: continue fine-tuning from a checkpoint
//! with a changed recipe.

use super::train::{train_experiment, RunOptions};
use super::{CliError, CliResult, Context};
use crate::train::Experiment;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint to start from (RUN@STEP, RUN@best, a tag, a run = its last checkpoint).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// An experiment file for the new run; without one, the parent's
    /// settings and data are kept and only --set changes them.
    pub experiment: Option<PathBuf>,
    /// Override a key, e.g. `--set optim.lr=1e-5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub common: RunOptions,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let experiment = match &args.experiment {
        Some(path) => {
            // `from` on the command line replaces the file's [model].
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::user(format!("{}: {e}", path.display())))?;
            Experiment::parse_for(&text, path, &args.overrides, Some(&args.reference))?
        }
        None => {
            let store = context.store()?;
            let index = store.index()?;
            let checkpoint = index.checkpoint(&index.resolve_checkpoint(&args.reference)?)?;
            let parent = index.run(&checkpoint.run)?;
            drop(index);
            let mut tree: toml::Table = toml::Value::try_from(
                Experiment::from_recipe(&parent.recipe).map_err(CliError::internal)?,
            )
            .map_err(|e| CliError::internal(e.to_string()))?
            .as_table()
            .cloned()
            .unwrap_or_default();
            tree.remove("model");
            let text = toml::to_string(&tree).map_err(|e| CliError::internal(e.to_string()))?;
            Experiment::parse_for(
                &text,
                std::path::Path::new("<parent recipe>"),
                &args.overrides,
                Some(&args.reference),
            )?
        }
    };
    train_experiment(&experiment, &args.common, context, false).map(|_| ())
}

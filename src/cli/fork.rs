//! `graft fork REF [EXPERIMENT.toml]`: continue fine-tuning from a checkpoint
//! with a changed recipe.

use super::train::{train_experiment, RunOptions};
use super::{CliError, CliResult, Context};
use crate::train::fork::{fork_experiment, ForkError};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint to start from (RUN@STEP, RUN@best, a tag, a run = its last checkpoint).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// An experiment file whose keys patch the parent's recipe (keys it
    /// leaves out keep the parent's values); without one, only --set
    /// changes them.
    pub experiment: Option<PathBuf>,
    /// Override a key, e.g. `--set optim.lr=1e-5` (applied after the file).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub common: RunOptions,
}

impl From<ForkError> for CliError {
    fn from(e: ForkError) -> Self {
        match e {
            ForkError::Store(e) => e.into(),
            ForkError::Config(e) => e.into(),
            other => CliError::internal(other.to_string()),
        }
    }
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let text = match &args.experiment {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CliError::user(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let file = text.as_deref().zip(args.experiment.as_deref());
    let experiment = fork_experiment(&context.store()?, &args.reference, file, &args.overrides)?;
    train_experiment(&experiment, &args.common, context, false).map(|_| ())
}

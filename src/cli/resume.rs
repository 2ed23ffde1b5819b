//! `graft resume RUN`: continue an interrupted execution from its last
//! checkpoint, exactly.

use super::train::{execute_plan, finish, RunOptions};
use super::{CliError, CliResult, Context};
use crate::train::Plan;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run to continue.
    #[arg(value_name = "RUN")]
    pub run: String,
    #[command(flatten)]
    pub common: RunOptions,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    let run_id = index.resolve_run(&args.run)?;
    let run = index.run(&run_id)?;
    let (kind, last) = crate::train::lifecycle::resume_point(&index, &run_id)?;
    drop(index);
    let model = store
        .index()?
        .get_model(&run.recipe.base_model)?
        .ok_or_else(|| CliError::user("the run's base model is not in the store"))?;
    let plan = Plan::of_recorded_run(run.recipe.clone(), model);
    if !args.common.quiet {
        match &last {
            Some(c) => eprintln!(
                "resuming run {} from step {} (checkpoint {})",
                run_id.short(),
                c.step,
                c.id.short()
            ),
            None => eprintln!(
                "run {} has no checkpoint yet: starting it again from step 1",
                run_id.short()
            ),
        }
    }
    let (compute, not_exact) = crate::train::lifecycle::resume_compute(
        &store.index()?,
        &run_id,
        &run.recipe,
        args.common.backend,
    )?;
    if let (Some(note), false) = (not_exact, args.common.quiet) {
        eprintln!("note: {note}");
    }
    let outcome = execute_plan(&store, &plan, kind, compute, &args.common)?;
    finish(&store, &outcome, &args.common)
}

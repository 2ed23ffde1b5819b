//! `graft resume RUN`: continue an interrupted execution from its last
//! checkpoint, exactly.

use super::train::{execute_plan, finish, RunOptions};
use super::{CliError, CliResult, Context};
use crate::store::{ExecutionKind, ExecutionStatus};
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
    let executions = index.executions(&run_id)?;
    if executions
        .iter()
        .rfind(|e| e.purpose != "reproduce")
        .is_some_and(|e| e.status == ExecutionStatus::Completed)
    {
        return Err(CliError::user(format!(
            "run {} has completed: there is nothing to resume",
            run_id.short()
        ))
        .with_hint("`graft fork RUN@last --set train.steps=N` trains further as a new run"));
    }
    if let Some(running) = executions
        .iter()
        .find(|e| e.status == ExecutionStatus::Running)
    {
        return Err(CliError::user(format!(
            "run {} is still running (execution {}, pid {} on {})",
            run_id.short(),
            running.number,
            running.pid,
            running.host
        )));
    }
    let last = index.run_checkpoints(&run_id)?.into_iter().rfind(|c| {
        !c.retired
            && executions
                .iter()
                .any(|e| e.number == c.execution && e.purpose != "reproduce")
    });
    drop(index);
    let kind = match &last {
        Some(checkpoint) => ExecutionKind::Resume(checkpoint.id),
        None => ExecutionKind::Train,
    };
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
    // An execution continues as the run was computing, so a resume on the same
    // backend is exact; `--backend` moves it.
    let mut compute = crate::train::reproduce::recorded_compute(&store.index()?, &run_id)?
        .unwrap_or_else(|| {
            crate::compute::Compute::new(
                Default::default(),
                crate::train::Experiment::from_recipe(&run.recipe)
                    .map(|e| e.compute)
                    .unwrap_or_default(),
            )
        });
    if let Some(backend) = args.common.backend {
        compute.backend = backend;
    }
    let outcome = execute_plan(&store, &plan, kind, compute, &args.common)?;
    finish(&store, &outcome, &args.common)
}

//! `graft reproduce RUN`: execute the recipe again and report identical
//! checkpoint ids, or the first step where they differ and by how much the
//! metrics differ. Exits 1 when the run does not reproduce.

use super::backend::BackendKind;
use super::train::execute_plan_with;
use super::{output, CliError, CliResult, Context};
use crate::store::{ExecutionKind, StoreRecorder};
use crate::train::reproduce::{compare, ReproduceRecorder};
use crate::train::Plan;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run to execute again.
    #[arg(value_name = "RUN")]
    pub run: String,
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendKind,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let store = context.store()?;
    let index = store.index()?;
    let run_id = index.resolve_run(&args.run)?;
    let run = index.run(&run_id)?;
    let model =
        index
            .get_model(&run.recipe.base_model)?
            .ok_or(crate::store::StoreError::NotFound {
                kind: "model",
                id: run.recipe.base_model,
            })?;
    drop(index);
    let plan = Plan::of_recorded_run(run.recipe.clone(), model);
    let mut recorder = ReproduceRecorder::new(StoreRecorder::new(store.clone()));
    let outcome = execute_plan_with(
        &store,
        &plan,
        ExecutionKind::Reproduce,
        &mut recorder,
        args.backend,
        args.quiet,
    )?;
    let index = store.index()?;
    let comparison = compare(&index, &run_id, outcome.execution, &recorder.checkpoints)?;
    if args.json {
        output::print_json(&serde_json::to_value(&comparison).unwrap_or_default())?;
    } else {
        match comparison.first_difference {
            None if comparison.identical => output::println_safe(&format!(
                "run {} reproduces: {} checkpoint ids identical",
                run_id.short(),
                comparison.checkpoints_compared
            )),
            first => output::println_safe(&format!(
                "run {} does NOT reproduce: checkpoints first differ at step {}",
                run_id.short(),
                first.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
            )),
        }
        for (series, difference) in &comparison.metric_differences {
            output::println_safe(&format!("  {series:<24} max |difference| {difference:.3e}"));
        }
    }
    if comparison.identical {
        Ok(())
    } else {
        Err(CliError::check(format!(
            "run {} does not reproduce",
            run_id.short()
        )))
    }
}

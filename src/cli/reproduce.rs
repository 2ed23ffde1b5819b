//! `graft reproduce RUN`: execute the recipe again and report identical
//! checkpoint ids, or the first step where they differ and by how much the
//! metrics differ. Exits 1 when the run does not reproduce.

use super::backend::BackendKind;
use super::progress::TerminalEvents;
use super::{output, CliError, CliResult, Context};
use crate::store::{ExecutionKind, Store, StoreRecorder};
use crate::train::reproduce::{compare, ReproduceRecorder};
use crate::train::{self, Outcome};
use burn::tensor::backend::AutodiffBackend;
use std::collections::BTreeMap;

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
    drop(index);
    let mut recorder = ReproduceRecorder::new(StoreRecorder::new(store.clone()));
    let outcome = crate::on_backend!(
        args.backend,
        reexecute(&store, &run.recipe, &mut recorder, args.quiet)
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

fn reexecute<B: AutodiffBackend>(
    device: &B::Device,
    store: &Store,
    recipe: &crate::store::Recipe,
    recorder: &mut ReproduceRecorder,
    quiet: bool,
) -> CliResult<Outcome> {
    let mut events = TerminalEvents::new(quiet);
    Ok(train::execute::<B>(
        device,
        store,
        recipe,
        &[],
        BTreeMap::new(),
        ExecutionKind::Reproduce,
        recorder,
        &mut events,
    )?)
}

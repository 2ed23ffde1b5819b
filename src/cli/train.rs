//! `graft train EXPERIMENT.toml`: run a recipe, new or from a checkpoint.

use super::backend::BackendKind;
use super::progress::TerminalEvents;
use super::{output, CliError, CliResult, Context};
use crate::compute::Compute;
use crate::store::{ExecutionKind, Store, StoreRecorder, Target};
use crate::train::lifecycle::{self, LifecycleError};
use crate::train::{self, Experiment, Outcome, Plan, PlanError, TrainError};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The experiment file (TOML; see experiments/ for examples).
    pub experiment: PathBuf,
    /// Override a key of the experiment, e.g. `--set optim.lr=1e-5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub common: RunOptions,
}

/// Options shared by the commands that train.
#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// The device [default: cpu; for resume, the backend the run was executing on].
    /// How the numbers are computed on it is the experiment's `[compute]` section.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Tag the run with this name when it finishes.
    #[arg(long)]
    pub tag: Option<String>,
    /// No progress bar or eval lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl From<PlanError> for CliError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Store(e) => e.into(),
            other => CliError::user(other.to_string()),
        }
    }
}

impl From<TrainError> for CliError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Store(e) => e.into(),
            TrainError::NonFinite { .. } => CliError::check(e.to_string()).with_hint(
                "lower optim.lr or raise optim.warmup_steps, then fork from the last checkpoint",
            ),
            other => CliError::user(other.to_string()),
        }
    }
}

impl From<LifecycleError> for CliError {
    fn from(e: LifecycleError) -> Self {
        let hint = match &e {
            LifecycleError::Store(_) => None,
            LifecycleError::AlreadyTrained { run } => Some(format!(
                "`graft reproduce {}` executes it again and compares; change a key (--set) for a new run",
                run.short()
            )),
            LifecycleError::Unfinished { run } => Some(format!(
                "`graft resume {}` continues it from its last checkpoint",
                run.short()
            )),
            LifecycleError::NothingToResume { .. } => Some(
                "`graft fork RUN@last --set train.steps=N` trains further as a new run".into(),
            ),
            LifecycleError::StillRunning { .. } => None,
        };
        match (e, hint) {
            (LifecycleError::Store(e), _) => e.into(),
            (e, Some(hint)) => CliError::user(e.to_string()).with_hint(hint),
            (e, None) => CliError::user(e.to_string()),
        }
    }
}

impl From<crate::compute::ComputeError> for CliError {
    fn from(e: crate::compute::ComputeError) -> Self {
        CliError::user(e.to_string())
    }
}

impl From<crate::train::config::ConfigError> for CliError {
    fn from(e: crate::train::config::ConfigError) -> Self {
        CliError::user(e.to_string())
    }
}

impl From<crate::data::DataError> for CliError {
    fn from(e: crate::data::DataError) -> Self {
        CliError::user(e.to_string())
    }
}

pub fn run(args: Args, context: &Context) -> CliResult {
    let experiment = Experiment::load(&args.experiment, &args.overrides)?;
    train_experiment(&experiment, &args.common, context, false).map(|_| ())
}

/// Plan, refuse a recipe that already ran (or, with `reuse`, return it),
/// execute, tag, report. Returns the run id.
pub fn train_experiment(
    experiment: &Experiment,
    options: &RunOptions,
    context: &Context,
    reuse: bool,
) -> CliResult<crate::store::Id> {
    if let Some(tag) = &options.tag {
        crate::store::refs::validate_tag_name(tag)?;
    }
    let store = context.store_or_init()?;
    let plan = train::plan(&store, experiment)?;
    let run_id = plan.recipe.run_id();
    let start = lifecycle::may_start(&store.index()?, &run_id, reuse)?;
    if start == lifecycle::Start::Reuse {
        if !options.quiet {
            eprintln!(
                "run {} already trained with this exact recipe: reusing it",
                run_id.short()
            );
        }
        tag_run(&store, run_id, options)?;
        return Ok(run_id);
    }
    if let (Some(drift), false) = (&plan.drift, options.quiet) {
        eprintln!("{drift}");
    }
    let compute = Compute::new(options.backend.unwrap_or_default(), experiment.compute);
    let outcome = execute_plan(&store, &plan, ExecutionKind::Train, compute, options)?;
    finish(&store, &outcome, options)?;
    Ok(outcome.run)
}

fn tag_run(store: &Store, run: crate::store::Id, options: &RunOptions) -> CliResult {
    if let Some(tag) = &options.tag {
        let index = store.index()?;
        index.set_tag(tag, Target::Run(run))?;
        index.flush()?;
    }
    Ok(())
}

pub fn execute_plan(
    store: &Store,
    plan: &Plan,
    kind: ExecutionKind,
    compute: Compute,
    options: &RunOptions,
) -> CliResult<Outcome> {
    let mut recorder = StoreRecorder::new(store.clone());
    let stop = super::interrupt::install()?;
    let outcome = execute_plan_with(
        store,
        plan,
        kind,
        &mut recorder,
        compute,
        options.quiet,
        Some(stop.clone()),
    )?;
    if outcome.interrupted {
        return Err(interrupted(&outcome, &stop));
    }
    Ok(outcome)
}

/// What an execution stopped by Ctrl-C or SIGTERM tells the terminal.
fn interrupted(outcome: &Outcome, stop: &super::interrupt::StopRequest) -> CliError {
    let run = outcome.run.short();
    let checkpoint = outcome
        .checkpoints
        .last()
        .filter(|(step, _)| *step == outcome.final_step)
        .map(|(_, id)| format!("checkpoint {}", id.short()))
        .unwrap_or_else(|| "no checkpoint".into());
    CliError::interrupted(
        stop.exit_code(),
        format!(
            "run {run} stopped at step {} ({checkpoint}); its execution is recorded as interrupted",
            outcome.final_step
        ),
    )
    .with_hint(format!(
        "`graft resume {run}` continues it from step {}",
        outcome.final_step
    ))
}

/// Execute a plan as `compute` says, recording through `recorder`.
pub fn execute_plan_with(
    store: &Store,
    plan: &Plan,
    kind: ExecutionKind,
    recorder: &mut dyn crate::store::Recorder,
    compute: Compute,
    quiet: bool,
    stop: Option<super::interrupt::StopRequest>,
) -> CliResult<Outcome> {
    let events = TerminalEvents::new(quiet).stopping_on(stop);
    crate::on_compute!(
        compute,
        execute_with(store, plan, kind, &compute, recorder, events)
    )
}

fn execute_with<B: crate::compute::kernels::TrainKernels>(
    device: &B::Device,
    store: &Store,
    plan: &Plan,
    kind: ExecutionKind,
    compute: &Compute,
    recorder: &mut dyn crate::store::Recorder,
    mut events: TerminalEvents,
) -> CliResult<Outcome> {
    Ok(train::execute::<B>(
        device,
        store,
        plan,
        kind,
        compute,
        recorder,
        &mut events,
    )?)
}

/// Tag the run and print what it produced.
pub fn finish(store: &Store, outcome: &Outcome, options: &RunOptions) -> CliResult {
    tag_run(store, outcome.run, options)?;
    if options.json {
        return output::print_json(&serde_json::json!({
            "run": outcome.run.to_hex(),
            "execution": outcome.execution,
            "final_step": outcome.final_step,
            "early_stopped": outcome.early_stopped,
            "checkpoints": outcome.checkpoints.iter().map(|(s, id)| serde_json::json!({"step": s, "id": id.to_hex()})).collect::<Vec<_>>(),
            "eval": outcome.last_eval,
            "tokens_per_s": outcome.tokens_per_s,
            "pool_reserved_gib": outcome.pool_reserved.map(|bytes| bytes as f64 / (1u64 << 30) as f64),
            "record_share": outcome.record_time.as_secs_f64() / outcome.loop_time.as_secs_f64().max(1e-9),
        }));
    }
    output::println_safe(&format!(
        "run {} finished at step {}{} with {} checkpoints; last checkpoint {}",
        outcome.run,
        outcome.final_step,
        if outcome.early_stopped {
            " (early stop)"
        } else {
            ""
        },
        outcome.checkpoints.len(),
        outcome
            .checkpoints
            .last()
            .map(|(_, id)| id.short())
            .unwrap_or_else(|| "-".into())
    ));
    Ok(())
}

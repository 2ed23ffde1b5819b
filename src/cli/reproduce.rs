//! `graft reproduce RUN`: execute the recipe again and report identical checkpoint
//! ids, or the first step where they differ and by how much the metrics differ. Exits 1
//! when the run does not reproduce.

use super::backend::BackendKind;
use super::train::execute_plan_with;
use super::{output, CliError, CliResult, Context};
use crate::compute::{ComputeSection, RECIPE_KEYS};
use crate::store::{ExecutionKind, StoreRecorder};
use crate::train::lifecycle::continuing_compute;
use crate::train::reproduce::{compare, recorded_compute, ReproduceRecorder};
use crate::train::Plan;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run to execute again.
    #[arg(value_name = "RUN")]
    pub run: String,
    /// The device [default: the one the run was trained on].
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Change how the execution computes, e.g. `--set compute.attention=burn`. Only
    /// the execution's keys may change (not compute.dtype or compute.lora_branch,
    /// which are part of the recipe). With any compute option changed, checkpoint ids
    /// are not expected to match and the losses are compared within a tolerance.
    #[arg(long = "set", value_name = "compute.KEY=VALUE")]
    pub overrides: Vec<String>,
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
    let original = recorded_compute(&index, &run_id)?;
    drop(index);
    let mut compute = continuing_compute(original.as_ref(), &run.recipe, args.backend);
    compute.options = with_overrides(compute.options, &args.overrides)?;
    let plan = Plan::of_recorded_run(run.recipe.clone(), model);
    let mut recorder = ReproduceRecorder::new(StoreRecorder::new(store.clone()));
    let outcome = execute_plan_with(
        &store,
        &plan,
        ExecutionKind::Reproduce,
        &mut recorder,
        compute,
        args.quiet,
        None,
    )?;
    let index = store.index()?;
    let comparison = compare(
        &index,
        &run_id,
        outcome.execution,
        &recorder.checkpoints,
        &compute,
    )?;
    if args.json {
        output::print_json(&serde_json::to_value(&comparison).unwrap_or_default())?;
    } else {
        for (key, was, now) in &comparison.compute_differences {
            output::println_safe(&format!(
                "{key} differs: {was} in the original execution, {now} in this one"
            ));
        }
        match (comparison.identical, comparison.tolerance) {
            (true, _) => output::println_safe(&format!(
                "run {} reproduces: {} checkpoint ids identical",
                run_id.short(),
                comparison.checkpoints_compared
            )),
            (false, Some(tolerance)) => output::println_safe(&format!(
                "run {} {} within tolerance: losses differ by at most {:.3e} relative (tolerance {:.0e}; checkpoint ids are not compared across compute options)",
                run_id.short(),
                if comparison.reproduces { "reproduces" } else { "does NOT reproduce" },
                comparison.max_relative_loss_difference,
                tolerance
            )),
            (false, None) => output::println_safe(&format!(
                "run {} does NOT reproduce: checkpoints first differ at step {}",
                run_id.short(),
                comparison
                    .first_difference
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into())
            )),
        }
        for (series, difference) in &comparison.metric_differences {
            output::println_safe(&format!("  {series:<24} max |difference| {difference:.3e}"));
        }
    }
    if comparison.reproduces {
        Ok(())
    } else {
        Err(CliError::check(format!(
            "run {} does not reproduce",
            run_id.short()
        )))
    }
}

/// The execution's compute options with `--set compute.KEY=VALUE` applied; keys of
/// the recipe are refused, as are keys outside `[compute]`.
fn with_overrides(options: ComputeSection, overrides: &[String]) -> CliResult<ComputeSection> {
    if overrides.is_empty() {
        return Ok(options);
    }
    let mut tree = toml::Table::new();
    let current = toml::Value::try_from(options).map_err(|e| CliError::internal(e.to_string()))?;
    tree.insert("compute".into(), current);
    for assignment in overrides {
        let key = assignment.split('=').next().unwrap_or("").trim();
        let Some(name) = key.strip_prefix("compute.") else {
            return Err(CliError::user(format!(
                "--set {assignment}: reproduce executes the recorded recipe; only compute.KEY options can change"
            ))
            .with_hint("`graft fork RUN@STEP --set KEY=VALUE` trains a changed recipe"));
        };
        if name == "cpu_vectors" {
            return Err(CliError::user(format!(
                "--set {assignment}: compute.cpu_vectors is what this machine's CPU offers (recorded, not chosen)"
            ))
            .with_hint("reproduce on a machine with those vectors to compare bit for bit"));
        }
        if RECIPE_KEYS.contains(&name) {
            return Err(CliError::user(format!(
                "--set {assignment}: compute.{name} is part of the recipe, so changing it makes another run"
            ))
            .with_hint("`graft fork` or `graft train --set` trains that recipe"));
        }
    }
    crate::train::config::apply_overrides(&mut tree, overrides)?;
    let section = tree
        .remove("compute")
        .unwrap_or(toml::Value::Table(Default::default()));
    section
        .try_into::<ComputeSection>()
        .map_err(|e| CliError::user(format!("--set: {e}")))
}

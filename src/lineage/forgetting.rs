//! How much a fork forgot of what its ancestors knew, and how much of its
//! forgetting budget that was.
//!
//! The measure ([`crate::store::refs::forgetting`]) is the relative rise of
//! an ancestor eval set's loss over its loss at the fork point (the step-0
//! baseline): `(loss - baseline) / baseline`. It is read back from the
//! recorded series (`eval/<set>/loss`), so it answers for every fork that
//! evaluated its ancestors' sets, with a budget or without one; a budget
//! (`train.forgetting_budget`) decides which checkpoint `RUN@best` names.

use crate::store::refs::forgetting;
use crate::store::{Canon, Index, Result, RunRecord};

/// One ancestor eval set, at the checkpoint `RUN@best` names.
#[derive(Clone, Debug, PartialEq)]
pub struct SetForgetting {
    /// The set's series name, `NAME@RUN` (the ancestor run that evaluates it).
    pub set: String,
    pub baseline_loss: f64,
    pub loss: f64,
    /// The measure at `@best`: relative rise of the loss over the baseline.
    pub forgetting: f64,
    /// The measure at the checkpoint `@best` would name without the budget.
    pub forgetting_ignoring_budget: f64,
    /// `forgetting / budget` (1.0 is the whole budget); None without a budget.
    pub budget_used: Option<f64>,
    /// The largest measure at any evaluation of the run, and its step.
    pub worst: f64,
    pub worst_step: u64,
}

impl SetForgetting {
    /// The set's own name, without the ancestor run it belongs to.
    pub fn short_name(&self) -> &str {
        self.set.split('@').next().unwrap_or(&self.set)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Forgetting {
    pub budget: Option<f64>,
    /// The step of the checkpoint `RUN@best` names (the measure is taken
    /// there); None where no checkpoint was evaluated, and the measure is
    /// then the last evaluation's.
    pub best_step: Option<u64>,
    /// The step `RUN@best` would name without the budget.
    pub best_step_ignoring_budget: Option<u64>,
    pub sets: Vec<SetForgetting>,
}

impl Forgetting {
    /// Whether every ancestor set is within the budget at `@best`.
    pub fn within_budget(&self) -> Option<bool> {
        let budget = self.budget?;
        Some(self.sets.iter().all(|s| s.forgetting <= budget))
    }

    /// The measure on the ancestor set(s) called `name` (the part before
    /// `@`), the worst where several ancestors have a set of that name.
    pub fn measure(&self, name: &str) -> Option<f64> {
        self.sets
            .iter()
            .filter(|s| s.short_name() == name || s.set == name)
            .map(|s| s.forgetting)
            .reduce(f64::max)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let sets: Vec<_> = self
            .sets
            .iter()
            .map(|s| {
                serde_json::json!({
                    "set": s.set,
                    "name": s.short_name(),
                    "baseline_loss": s.baseline_loss,
                    "loss": s.loss,
                    "forgetting": s.forgetting,
                    "forgetting_ignoring_budget": s.forgetting_ignoring_budget,
                    "budget_used": s.budget_used,
                    "worst": s.worst,
                    "worst_step": s.worst_step,
                })
            })
            .collect();
        serde_json::json!({
            "measure": "relative rise of each ancestor eval set's loss over its loss at the fork point, at the checkpoint @best names",
            "budget": self.budget,
            "within_budget": self.within_budget(),
            "best_step": self.best_step,
            "best_step_ignoring_budget": self.best_step_ignoring_budget,
            "sets": sets,
        })
    }
}

/// The run's forgetting of its ancestors' eval sets; None for a run that
/// measured none (not a fork, or without `data.eval_ancestors`).
pub fn forgetting_of<'a>(
    index: &Index,
    run: &RunRecord,
    series: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Forgetting>> {
    let set_names: Vec<&str> = series
        .into_iter()
        .filter_map(|name| name.strip_prefix("forget/"))
        .collect();
    if set_names.is_empty() {
        return Ok(None);
    }
    let budget = run
        .recipe
        .config
        .get_path("train.forgetting_budget")
        .and_then(Canon::as_f64);
    let best_step = index.best_checkpoint(&run.id, false)?.map(|c| c.step);
    let best_step_ignoring_budget = index.best_checkpoint(&run.id, true)?.map(|c| c.step);
    let mut sets = Vec::new();
    for set in set_names {
        let losses = index.series(&run.id, &format!("eval/{set}/loss"))?;
        let Some(&(0, baseline_loss)) = losses.first() else {
            continue;
        };
        let at = |step: Option<u64>| match step {
            Some(step) => losses.iter().find(|(s, _)| *s == step),
            None => losses.last(),
        };
        let (Some(&(_, loss)), Some(&(_, loss_ignoring_budget))) =
            (at(best_step), at(best_step_ignoring_budget))
        else {
            continue;
        };
        let (worst_step, worst) = losses
            .iter()
            .map(|&(step, loss)| (step, forgetting(loss, baseline_loss)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        let measure = forgetting(loss, baseline_loss);
        sets.push(SetForgetting {
            set: set.to_string(),
            baseline_loss,
            loss,
            forgetting: measure,
            forgetting_ignoring_budget: forgetting(loss_ignoring_budget, baseline_loss),
            budget_used: budget.map(|budget| measure / budget),
            worst,
            worst_step,
        });
    }
    if sets.is_empty() {
        return Ok(None);
    }
    Ok(Some(Forgetting {
        budget,
        best_step,
        best_step_ignoring_budget,
        sets,
    }))
}

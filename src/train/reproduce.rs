//! Reproduction: execute a run's recipe again and compare.
//!
//! The new execution records its metrics (under its own execution number,
//! kept out of the run's history) but not its checkpoints: their ids are
//! computed and compared with the ids the run recorded, step by step.

use crate::compute::Compute;
use crate::store::canonical::object_id;
use crate::store::{
    Canon, CheckpointRecord, DatasetRecord, ExecutionKind, ExecutionRecord, ExecutionStatus, Id,
    Index, Recipe, Recorder, Result, RunRecord, StoreRecorder,
};
use std::collections::BTreeMap;

pub struct ReproduceRecorder {
    inner: StoreRecorder,
    run: Option<Id>,
    pub checkpoints: Vec<(u64, Id)>,
}

impl ReproduceRecorder {
    pub fn new(inner: StoreRecorder) -> Self {
        ReproduceRecorder {
            inner,
            run: None,
            checkpoints: Vec::new(),
        }
    }
}

impl Recorder for ReproduceRecorder {
    fn begin(
        &mut self,
        recipe: &Recipe,
        datasets: &[DatasetRecord],
        _kind: ExecutionKind,
        notes: BTreeMap<String, Canon>,
    ) -> Result<(RunRecord, ExecutionRecord)> {
        let begun = self
            .inner
            .begin(recipe, datasets, ExecutionKind::Reproduce, notes)?;
        self.run = Some(begun.0.id);
        Ok(begun)
    }
    fn log_metrics(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        self.inner.log_metrics(step, values)
    }
    fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }
    /// Only the id matters for the comparison; nothing new is stored.
    fn put_object(&mut self, bytes: &[u8]) -> Result<Id> {
        Ok(object_id(bytes))
    }
    fn add_checkpoint(
        &mut self,
        step: u64,
        tensors: BTreeMap<String, Id>,
        state: BTreeMap<String, Id>,
        _metrics: BTreeMap<String, f64>,
    ) -> Result<Id> {
        let id =
            CheckpointRecord::compute_id(self.run.unwrap_or(Id([0; 32])), step, &tensors, &state);
        self.checkpoints.push((step, id));
        Ok(id)
    }
    fn retire_checkpoint(&mut self, _checkpoint: Id) -> Result<()> {
        Ok(())
    }
    fn note(&mut self, _key: &str, _value: Canon) -> Result<()> {
        Ok(())
    }
    fn record_compute(&mut self, compute: Canon) -> Result<()> {
        self.inner.record_compute(compute)
    }
    fn end(
        &mut self,
        status: ExecutionStatus,
        error: Option<String>,
        reason: Option<String>,
    ) -> Result<()> {
        self.inner.end(status, error, reason)
    }
}

/// How the run's newest training execution computed, where it was recorded.
pub fn recorded_compute(index: &Index, run: &Id) -> Result<Option<Compute>> {
    Ok(training_compute_records(&index.executions(run)?)
        .next()
        .and_then(|canon| Compute::from_canon(canon).ok()))
}

/// The compute records of the training executions among `executions` (in execution
/// order), newest first; executions recorded before compute was have none.
fn training_compute_records(executions: &[ExecutionRecord]) -> impl Iterator<Item = &Canon> {
    executions
        .iter()
        .rev()
        .filter(|e| e.purpose != "reproduce")
        .filter_map(|e| e.compute.as_ref())
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Comparison {
    pub identical: bool,
    pub checkpoints_compared: usize,
    /// The first step whose checkpoint id differs (or is missing on one side).
    pub first_difference: Option<u64>,
    /// Largest |original - reproduced| per series over common steps.
    pub metric_differences: BTreeMap<String, f64>,
    /// Every compute option that differs from the original execution's:
    /// `(key, original, this execution)`.
    pub compute_differences: Vec<(String, String, String)>,
    /// Where compute differs: the largest relative loss difference allowed
    /// ([`Compute::tolerance`]) and the largest seen (train and eval losses).
    pub tolerance: Option<f64>,
    pub max_relative_loss_difference: f64,
    /// Identical, or (compute differing) every loss within the tolerance.
    pub reproduces: bool,
}

/// Compare a reproduction (execution `number`) with the run's history.
pub fn compare(
    index: &Index,
    run: &Id,
    number: u32,
    reproduced: &[(u64, Id)],
    compute: &Compute,
) -> Result<Comparison> {
    let executions = index.executions(run)?;
    let original: BTreeMap<u64, Id> = index
        .run_checkpoints(run)?
        .into_iter()
        .filter(|c| {
            executions
                .iter()
                .any(|e| e.number == c.execution && e.purpose != "reproduce")
        })
        .map(|c| (c.step, c.id))
        .collect();
    let new: BTreeMap<u64, Id> = reproduced.iter().copied().collect();
    let steps: std::collections::BTreeSet<u64> =
        original.keys().chain(new.keys()).copied().collect();
    let first_difference = steps.into_iter().find(|s| original.get(s) != new.get(s));
    let record = index.run(run)?;
    let mut metric_differences = BTreeMap::new();
    let mut max_relative_loss_difference: f64 = 0.0;
    for name in index.run_series(run)? {
        let Some(series) = index.series_id(&name)? else {
            continue;
        };
        let history: BTreeMap<u64, f64> = index.series(run, &name)?.into_iter().collect();
        let again = index.execution_series(record.seq, number, series)?;
        let is_loss = name == "loss" || (name.starts_with("eval/") && name.ends_with("/loss"));
        if is_loss {
            for (step, value) in &again {
                if let Some(h) = history.get(step) {
                    let relative = (h - value).abs() / h.abs().max(1e-12);
                    max_relative_loss_difference = max_relative_loss_difference.max(relative);
                }
            }
        }
        let worst = again
            .iter()
            .filter_map(|(step, value)| history.get(step).map(|h| (h - value).abs()))
            .fold(None, |acc: Option<f64>, d| {
                Some(acc.map_or(d, |a| a.max(d)))
            });
        if let Some(worst) = worst {
            if !name.starts_with("tokens_per_s") {
                metric_differences.insert(name, worst);
            }
        }
    }
    let identical = first_difference.is_none() && !new.is_empty();
    // The checkpoints compared come from every training execution, so an option
    // that differs from any of them (a run resumed on another machine or backend)
    // makes the comparison one within the tolerance; the newest names it first.
    let mut computes: Vec<Compute> = training_compute_records(&executions)
        .filter_map(|canon| Compute::from_canon(canon).ok())
        .collect();
    if computes.is_empty() {
        // Executions recorded before compute was recorded ran with the defaults of
        // the time, before the later keys existed.
        let mut then = Compute::new(Default::default(), compute.options);
        then.options = then.options.as_recorded_before_later_keys();
        then.cpu_vectors = crate::compute::CpuVectors::before_recorded();
        computes.push(then);
    }
    let mut compute_differences: Vec<(String, String, String)> = Vec::new();
    let mut tolerance = None::<f64>;
    for earlier in &computes {
        let differences = earlier.differences(compute);
        if !differences.is_empty() {
            let allowed = earlier.tolerance(compute);
            tolerance = Some(tolerance.map_or(allowed, |t| t.max(allowed)));
        }
        for difference in differences {
            if !compute_differences
                .iter()
                .any(|(key, ..)| *key == difference.0)
            {
                compute_differences.push(difference);
            }
        }
    }
    let reproduces = identical
        || tolerance
            .is_some_and(|tolerance| !new.is_empty() && max_relative_loss_difference <= tolerance);
    Ok(Comparison {
        identical,
        checkpoints_compared: new.len(),
        first_difference,
        metric_differences,
        compute_differences,
        tolerance,
        max_relative_loss_difference,
        reproduces,
    })
}

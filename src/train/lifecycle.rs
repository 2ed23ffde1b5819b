//! The run lifecycle's policy: whether a recipe may start (new, already trained,
//! unfinished), and where an interrupted run resumes. The CLI asks and renders; the
//! rules live here, where tests reach them without a process.

use crate::compute::{BackendKind, Compute};
use crate::store::{
    CheckpointRecord, ExecutionKind, ExecutionStatus, Id, Index, Recipe, StoreError,
};

/// What to do with a recipe about to be trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Never trained (or only failed): execute it.
    Execute,
    /// Trained to completion before, and the caller accepts reuse.
    Reuse,
}

/// Why a recipe or a run cannot go on as asked.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {run} already exists: this exact recipe was trained before")]
    AlreadyTrained { run: Id },
    #[error("run {run} has an unfinished execution")]
    Unfinished { run: Id },
    #[error("run {} has completed: there is nothing to resume", run.short())]
    NothingToResume { run: Id },
    #[error("run {} is still running (execution {number}, pid {pid} on {host})", run.short())]
    StillRunning {
        run: Id,
        number: u32,
        pid: u32,
        host: String,
    },
}

/// Whether recipe `run` may be trained now. A completed run is refused unless `reuse`
/// (then reused); a running or interrupted one is refused (resume it); a failed one
/// may be trained again. Reproductions do not count.
pub fn may_start(index: &Index, run: &Id, reuse: bool) -> Result<Start, LifecycleError> {
    let last = index
        .executions(run)?
        .into_iter()
        .rfind(|e| e.purpose != ExecutionKind::Reproduce.purpose());
    match last.map(|e| e.status) {
        None | Some(ExecutionStatus::Failed) => Ok(Start::Execute),
        Some(ExecutionStatus::Completed) if reuse => Ok(Start::Reuse),
        Some(ExecutionStatus::Completed) => Err(LifecycleError::AlreadyTrained { run: *run }),
        Some(ExecutionStatus::Running | ExecutionStatus::Interrupted) => {
            Err(LifecycleError::Unfinished { run: *run })
        }
    }
}

/// Where an unfinished run resumes: the execution kind and the checkpoint it starts
/// from (none yet: it starts again from step 1).
pub fn resume_point(
    index: &Index,
    run: &Id,
) -> Result<(ExecutionKind, Option<CheckpointRecord>), LifecycleError> {
    let executions = index.executions(run)?;
    let reproduce = ExecutionKind::Reproduce.purpose();
    if executions
        .iter()
        .rfind(|e| e.purpose != reproduce)
        .is_some_and(|e| e.status == ExecutionStatus::Completed)
    {
        return Err(LifecycleError::NothingToResume { run: *run });
    }
    if let Some(running) = executions
        .iter()
        .find(|e| e.status == ExecutionStatus::Running)
    {
        return Err(LifecycleError::StillRunning {
            run: *run,
            number: running.number,
            pid: running.pid,
            host: running.host.clone(),
        });
    }
    let last = index.run_checkpoints(run)?.into_iter().rfind(|c| {
        !c.retired
            && executions
                .iter()
                .any(|e| e.number == c.execution && e.purpose != reproduce)
    });
    let kind = match &last {
        Some(checkpoint) => ExecutionKind::Resume(checkpoint.id),
        None => ExecutionKind::Train,
    };
    Ok((kind, last))
}

/// How a resumed run computes: as its last training execution did, so a resume on the
/// same backend continues exactly; `backend` moves it to another device. The note
/// says why this machine cannot continue it bit for bit, where it cannot.
pub fn resume_compute(
    index: &Index,
    run: &Id,
    recipe: &Recipe,
    backend: Option<BackendKind>,
) -> Result<(Compute, Option<String>), LifecycleError> {
    let recorded = super::reproduce::recorded_compute(index, run)?;
    let compute = continuing_compute(recorded.as_ref(), recipe, backend);
    let note = recorded.and_then(|recorded| compute.vectors_differ_from(&recorded));
    Ok((compute, note))
}

/// How a new execution of a recorded run computes: as `recorded` (its last training
/// execution's), on `backend` where given, with this machine's CPU vectors. Runs
/// recorded before executions held their compute take the recipe's precision on the
/// CPU.
pub fn continuing_compute(
    recorded: Option<&Compute>,
    recipe: &Recipe,
    backend: Option<BackendKind>,
) -> Compute {
    // No recorded compute: a run trained before compute was recorded, or one
    // stopped between registering its execution and recording how it computes
    // (before its first step). A resume of the second must compute as a fresh run
    // does, so both take today's defaults; `reproduce` compares the first kind
    // with the options of its time and names the difference.
    let mut compute = recorded.copied().unwrap_or_else(|| {
        Compute::new(
            BackendKind::default(),
            super::Experiment::from_recipe(recipe)
                .map(|e| e.compute)
                .unwrap_or_default(),
        )
    });
    if let Some(backend) = backend {
        compute.backend = backend;
    }
    compute.on_this_machine()
}

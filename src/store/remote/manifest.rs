//! What travels between stores: records in a form that does not depend on
//! the store they came from, grouped in one manifest file per record kind.
//!
//! Two things in the index are local: a run's `seq` (it orders `log` and keys
//! metrics) and an execution's number (the next free one in that store). A
//! shared run carries `seq = 0` and the receiver assigns its own; a shared
//! execution is named by [`ExecutionKey`] (run, start time, host, pid), which
//! two stores never give to different attempts, and the receiver maps it to
//! a number of its own. Checkpoints and metric series name their execution
//! by that key too.
//!
//! A manifest file is `MAGIC | version | kind | rmp(records)`, named by the
//! blake3 hash of its bytes, so a reader verifies it like any object and two
//! pushes of the same records write the same file.

use crate::store::adapters::recipe_adapter;
use crate::store::canonical::{object_id, Id};
use crate::store::records::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const MAGIC: &[u8; 8] = b"GRAFTREC";
const COMMIT_MAGIC: &[u8; 8] = b"GRAFTPSH";
pub const FORMAT_VERSION: u8 = 1;

/// The record kinds in the order a receiver applies them: each kind only
/// refers to kinds before it (and runs to checkpoints of earlier runs, which
/// [`validate`] checks across the whole set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Models,
    Datasets,
    Runs,
    Executions,
    Checkpoints,
    Metrics,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Models,
        Kind::Datasets,
        Kind::Runs,
        Kind::Executions,
        Kind::Checkpoints,
        Kind::Metrics,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Kind::Models => "models",
            Kind::Datasets => "datasets",
            Kind::Runs => "runs",
            Kind::Executions => "executions",
            Kind::Checkpoints => "checkpoints",
            Kind::Metrics => "metrics",
        }
    }

    fn byte(&self) -> u8 {
        *self as u8
    }
}

/// An execution as every store can name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExecutionKey {
    pub run: Id,
    pub started_at: DateTime<Utc>,
    pub host: String,
    pub pid: u32,
}

impl ExecutionKey {
    pub fn of(record: &ExecutionRecord) -> ExecutionKey {
        ExecutionKey {
            run: record.run,
            started_at: record.started_at,
            host: record.host.clone(),
            pid: record.pid,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SharedRecord {
    Model(ModelRecord),
    Dataset(DatasetRecord),
    /// `seq` is 0: the receiver numbers its runs itself.
    Run(RunRecord),
    /// `number` is the sender's; the receiver keys it by [`ExecutionKey`].
    Execution(ExecutionRecord),
    /// `record.execution` is the sender's number; `execution` names it.
    Checkpoint {
        record: CheckpointRecord,
        execution: ExecutionKey,
    },
    /// One series of one execution, whole.
    Metrics {
        execution: ExecutionKey,
        series: String,
        points: Vec<(u64, f64)>,
    },
}

impl SharedRecord {
    pub fn kind(&self) -> Kind {
        match self {
            SharedRecord::Model(_) => Kind::Models,
            SharedRecord::Dataset(_) => Kind::Datasets,
            SharedRecord::Run(_) => Kind::Runs,
            SharedRecord::Execution(_) => Kind::Executions,
            SharedRecord::Checkpoint { .. } => Kind::Checkpoints,
            SharedRecord::Metrics { .. } => Kind::Metrics,
        }
    }

    /// The run this record belongs to (none for models and datasets).
    pub fn run(&self) -> Option<Id> {
        match self {
            SharedRecord::Model(_) | SharedRecord::Dataset(_) => None,
            SharedRecord::Run(run) => Some(run.id),
            SharedRecord::Execution(execution) => Some(execution.run),
            SharedRecord::Checkpoint { record, .. } => Some(record.run),
            SharedRecord::Metrics { execution, .. } => Some(execution.run),
        }
    }

    /// A hash of the record's shared form: equal records, equal digests, so
    /// a sender can skip what the remote already holds.
    pub fn digest(&self) -> Id {
        let mut bytes = Vec::new();
        rmp_serde::encode::write_named(&mut bytes, self).expect("records always serialize");
        object_id(&bytes)
    }

    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            SharedRecord::Model(model) => format!("model {}", model.id.short()),
            SharedRecord::Dataset(dataset) => format!("dataset {}", dataset.id.short()),
            SharedRecord::Run(run) => format!("run {}", run.id.short()),
            SharedRecord::Execution(execution) => format!(
                "execution {} of run {}",
                execution.number,
                execution.run.short()
            ),
            SharedRecord::Checkpoint { record, .. } => format!(
                "checkpoint {} ({}@{})",
                record.id.short(),
                record.run.short(),
                record.step
            ),
            SharedRecord::Metrics {
                execution, series, ..
            } => format!("metric series `{series}` of run {}", execution.run.short()),
        }
    }
}

/// A manifest's bytes: records of one kind.
pub fn encode_manifest(kind: Kind, records: &[SharedRecord]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(FORMAT_VERSION);
    out.push(kind.byte());
    rmp_serde::encode::write_named(&mut out, records).expect("records always serialize");
    out
}

pub fn decode_manifest(bytes: &[u8]) -> Result<(Kind, Vec<SharedRecord>), String> {
    let header = MAGIC.len() + 2;
    if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a graft record manifest (bad magic)".into());
    }
    if bytes[MAGIC.len()] != FORMAT_VERSION {
        return Err(format!(
            "manifest format version {}, this graft reads {FORMAT_VERSION}: upgrade graft",
            bytes[MAGIC.len()]
        ));
    }
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.byte() == bytes[MAGIC.len() + 1])
        .ok_or("unknown record kind")?;
    let records: Vec<SharedRecord> =
        rmp_serde::from_slice(&bytes[header..]).map_err(|e| e.to_string())?;
    if let Some(stray) = records.iter().find(|r| r.kind() != kind) {
        return Err(format!(
            "a {} manifest holds {}",
            kind.name(),
            stray.describe()
        ));
    }
    Ok((kind, records))
}

/// One push: the manifests it wrote. Written after them, so a reader that
/// sees a commit finds every manifest it names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub manifests: Vec<(Kind, Id)>,
    pub pushed_at: DateTime<Utc>,
    pub host: String,
}

pub fn encode_commit(commit: &Commit) -> Vec<u8> {
    let mut out = COMMIT_MAGIC.to_vec();
    out.push(FORMAT_VERSION);
    rmp_serde::encode::write_named(&mut out, commit).expect("commits always serialize");
    out
}

pub fn decode_commit(bytes: &[u8]) -> Result<Commit, String> {
    let header = COMMIT_MAGIC.len() + 1;
    if bytes.len() < header || &bytes[..COMMIT_MAGIC.len()] != COMMIT_MAGIC {
        return Err("not a graft push record (bad magic)".into());
    }
    if bytes[COMMIT_MAGIC.len()] != FORMAT_VERSION {
        return Err(format!(
            "push record format version {}, this graft reads {FORMAT_VERSION}: upgrade graft",
            bytes[COMMIT_MAGIC.len()]
        ));
    }
    rmp_serde::from_slice(&bytes[header..]).map_err(|e| e.to_string())
}

/// Checkpoints whose objects must travel even when retention retired them:
/// something starts from them, resumes from them, or a tag names them (the
/// rule `gc` keeps them by).
pub fn pinned_checkpoints<'a>(
    records: impl IntoIterator<Item = &'a SharedRecord>,
    tagged: impl IntoIterator<Item = Id>,
) -> BTreeSet<Id> {
    let mut pinned: BTreeSet<Id> = tagged.into_iter().collect();
    for record in records {
        match record {
            SharedRecord::Run(run) => pinned.extend(run.recipe.start_checkpoint),
            SharedRecord::Execution(execution) => pinned.extend(execution.resumed_from),
            _ => {}
        }
    }
    pinned
}

/// The objects a record needs, except the contents of an outside adapter
/// (its manifest object is listed; the caller reads it for the rest).
pub fn record_objects(record: &SharedRecord, pinned: &BTreeSet<Id>) -> Vec<(Id, String)> {
    let mut out = Vec::new();
    let owner = record.describe();
    match record {
        SharedRecord::Model(model) => {
            out.push((model.config, format!("{owner} config")));
            out.push((model.tokenizer, format!("{owner} tokenizer")));
            for (name, id) in &model.files {
                out.push((*id, format!("{owner} file {name}")));
            }
            if model.copied {
                for (name, id) in &model.tensors {
                    out.push((*id, format!("{owner} tensor {name}")));
                }
            }
        }
        SharedRecord::Dataset(dataset) => out.push((dataset.file_object, owner)),
        SharedRecord::Run(run) => {
            if let Some(adapter) = recipe_adapter(&run.recipe.config) {
                out.push((adapter, format!("{owner} start adapter")));
            }
        }
        SharedRecord::Checkpoint { record, .. } => {
            if !record.retired || pinned.contains(&record.id) {
                for (name, id) in record.tensors.iter().chain(record.state.iter()) {
                    out.push((*id, format!("{owner} `{name}`")));
                }
            }
        }
        SharedRecord::Execution(_) | SharedRecord::Metrics { .. } => {}
    }
    out
}

/// What the receiver already has, for [`validate`]: ids present in its index.
pub trait Known {
    fn has_model(&self, id: &Id) -> bool;
    fn has_dataset(&self, id: &Id) -> bool;
    fn has_run(&self, id: &Id) -> bool;
    fn has_checkpoint(&self, id: &Id) -> bool;
    fn has_execution(&self, key: &ExecutionKey) -> bool;
}

/// Check incoming records before anything is written: every id is the hash
/// of its content, and every reference lands on a record that the receiver
/// has or that comes with them. Returns one line per problem.
pub fn validate(records: &[SharedRecord], known: &dyn Known) -> Vec<String> {
    let mut models = BTreeSet::new();
    let mut datasets = BTreeSet::new();
    let mut runs = BTreeSet::new();
    let mut checkpoints = BTreeSet::new();
    let mut executions = BTreeSet::new();
    for record in records {
        match record {
            SharedRecord::Model(m) => {
                models.insert(m.id);
            }
            SharedRecord::Dataset(d) => {
                datasets.insert(d.id);
            }
            SharedRecord::Run(r) => {
                runs.insert(r.id);
            }
            SharedRecord::Checkpoint { record, .. } => {
                checkpoints.insert(record.id);
            }
            SharedRecord::Execution(e) => {
                executions.insert(ExecutionKey::of(e));
            }
            SharedRecord::Metrics { .. } => {}
        }
    }
    let model = |id: &Id| models.contains(id) || known.has_model(id);
    let dataset = |id: &Id| datasets.contains(id) || known.has_dataset(id);
    let run = |id: &Id| runs.contains(id) || known.has_run(id);
    let checkpoint = |id: &Id| checkpoints.contains(id) || known.has_checkpoint(id);
    let execution = |key: &ExecutionKey| executions.contains(key) || known.has_execution(key);
    let mut problems = Vec::new();
    let mut missing = |owner: String, what: String| {
        problems.push(format!(
            "{owner} refers to {what}, which is neither here nor sent"
        ))
    };
    let mut wrong_ids = Vec::new();
    for record in records {
        let owner = record.describe();
        match record {
            SharedRecord::Model(m) => {
                if ModelRecord::compute_id(m.config, m.tokenizer, &m.tensors) != m.id {
                    wrong_ids.push(owner);
                }
            }
            SharedRecord::Dataset(d) => {
                if DatasetRecord::compute_id(d.file_object, &d.spec) != d.id {
                    wrong_ids.push(owner);
                } else if let Some(replayed) = d.replay_of.filter(|r| !run(r)) {
                    missing(owner, format!("run {replayed}"));
                }
            }
            SharedRecord::Run(r) => {
                if r.recipe.run_id() != r.id {
                    wrong_ids.push(owner.clone());
                }
                if !model(&r.recipe.base_model) {
                    missing(owner.clone(), format!("model {}", r.recipe.base_model));
                }
                if let Some(start) = r.recipe.start_checkpoint.filter(|c| !checkpoint(c)) {
                    missing(owner.clone(), format!("checkpoint {start}"));
                }
                if let Some(parent) = r.parent_run.filter(|p| !run(p)) {
                    missing(owner.clone(), format!("run {parent}"));
                }
                for used in r.recipe.datasets.iter().filter(|u| !dataset(&u.dataset)) {
                    missing(owner.clone(), format!("dataset {}", used.dataset));
                }
            }
            SharedRecord::Execution(e) => {
                if !run(&e.run) {
                    missing(owner.clone(), format!("run {}", e.run));
                }
                if let Some(from) = e.resumed_from.filter(|c| !checkpoint(c)) {
                    missing(owner, format!("checkpoint {from}"));
                }
            }
            SharedRecord::Checkpoint {
                record,
                execution: key,
            } => {
                let id = CheckpointRecord::compute_id(
                    record.run,
                    record.step,
                    &record.tensors,
                    &record.state,
                );
                if id != record.id || key.run != record.run {
                    wrong_ids.push(owner.clone());
                }
                if !run(&record.run) {
                    missing(owner.clone(), format!("run {}", record.run));
                }
                if !execution(key) {
                    missing(
                        owner.clone(),
                        format!("its execution of {}", key.started_at),
                    );
                }
                if let Some(parent) = record.parent.filter(|p| !checkpoint(p)) {
                    missing(owner, format!("checkpoint {parent}"));
                }
            }
            SharedRecord::Metrics { execution: key, .. } => {
                if !execution(key) {
                    missing(owner, format!("its execution of {}", key.started_at));
                }
            }
        }
    }
    problems.extend(
        wrong_ids
            .into_iter()
            .map(|owner| format!("{owner}: its id is not the hash of its content")),
    );
    problems
}

/// The runs `roots` need: each, its ancestors through start checkpoints,
/// and the runs replay datasets draw from.
pub fn ancestry(records: &[SharedRecord], roots: &[Id]) -> BTreeSet<Id> {
    let mut runs: BTreeMap<Id, &RunRecord> = BTreeMap::new();
    let mut datasets: BTreeMap<Id, &DatasetRecord> = BTreeMap::new();
    let mut checkpoint_run: BTreeMap<Id, Id> = BTreeMap::new();
    for record in records {
        match record {
            SharedRecord::Run(r) => {
                runs.insert(r.id, r);
            }
            SharedRecord::Dataset(d) => {
                datasets.insert(d.id, d);
            }
            SharedRecord::Checkpoint { record, .. } => {
                checkpoint_run.insert(record.id, record.run);
            }
            _ => {}
        }
    }
    let mut wanted = BTreeSet::new();
    let mut queue: Vec<Id> = roots.to_vec();
    while let Some(id) = queue.pop() {
        if !wanted.insert(id) {
            continue;
        }
        let Some(run) = runs.get(&id) else { continue };
        queue.extend(run.parent_run);
        if let Some(start) = run.recipe.start_checkpoint {
            queue.extend(checkpoint_run.get(&start).copied());
        }
        for used in &run.recipe.datasets {
            if let Some(replayed) = datasets.get(&used.dataset).and_then(|d| d.replay_of) {
                queue.push(replayed);
            }
        }
    }
    wanted
}

/// The records of `runs` and the models and datasets they use.
pub fn select(records: Vec<SharedRecord>, runs: &BTreeSet<Id>) -> Vec<SharedRecord> {
    let mut models = BTreeSet::new();
    let mut datasets = BTreeSet::new();
    for record in &records {
        if let SharedRecord::Run(run) = record {
            if runs.contains(&run.id) {
                models.insert(run.recipe.base_model);
                datasets.extend(run.recipe.datasets.iter().map(|d| d.dataset));
            }
        }
    }
    records
        .into_iter()
        .filter(|record| match record {
            SharedRecord::Model(m) => models.contains(&m.id),
            SharedRecord::Dataset(d) => datasets.contains(&d.id),
            other => other.run().is_some_and(|run| runs.contains(&run)),
        })
        .collect()
}

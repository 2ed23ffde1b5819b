//! The records kept in the sled index, one kind per tree.
//!
//! Every record is stored as rmp-serde bytes preceded by a one-byte schema
//! version, so a future layout change is detected on read instead of being
//! misparsed. Records hold only small metadata; tensors and data files live
//! in the object store and are referenced by id.

use super::canonical::{domain, Canon, Id};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema version written in front of every record.
pub const SCHEMA_VERSION: u8 = 1;

/// A base model: config, tokenizer and one tensor object per weight.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelRecord {
    pub id: Id,
    /// Where the folder was registered from (models are referenced in place
    /// unless copied).
    pub path: String,
    /// Whether the tensors were copied into `objects/`.
    pub copied: bool,
    /// Hash of `config.json` bytes.
    pub config: Id,
    /// Hash of `tokenizer.json` bytes.
    pub tokenizer: Id,
    /// Tensor name -> object id of its bytes (dtype + shape + data).
    pub tensors: BTreeMap<String, Id>,
    /// Hash of each file in the folder, verified when the model is loaded.
    pub files: BTreeMap<String, Id>,
    /// Summary for display: model_type, layers, hidden size, parameters.
    pub summary: Canon,
    pub added_at: DateTime<Utc>,
}

impl ModelRecord {
    /// id = hash(config, tokenizer, sorted tensor ids).
    pub fn compute_id(config: Id, tokenizer: Id, tensors: &BTreeMap<String, Id>) -> Id {
        Canon::map()
            .with("config", config)
            .with("tokenizer", tokenizer)
            .with(
                "tensors",
                Canon::Map(
                    tensors
                        .iter()
                        .map(|(name, id)| (name.clone(), Canon::from(*id)))
                        .collect(),
                ),
            )
            .id(domain::MODEL)
    }
}

/// A data file plus how it is read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatasetRecord {
    pub id: Id,
    /// The object holding a copy of the file bytes.
    pub file_object: Id,
    /// Path the file was read from (informational; the object is the truth).
    pub path: String,
    /// The identity fields: format, template, tokenizer id, seq_len, packing.
    pub spec: Canon,
    /// Example count, token count, truncated count, length histogram.
    pub stats: Canon,
    /// The run whose data this replays, when it is a replay dataset.
    pub replay_of: Option<Id>,
    pub added_at: DateTime<Utc>,
}

impl DatasetRecord {
    /// id = hash(file object id, spec).
    pub fn compute_id(file_object: Id, spec: &Canon) -> Id {
        Canon::map()
            .with("file", file_object)
            .with("spec", spec.clone())
            .id(domain::DATASET)
    }
}

/// A dataset used by a run, with its mixing weight and role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatasetUse {
    pub dataset: Id,
    /// `train`, `replay` or `eval`.
    pub role: String,
    /// Eval set name, or file name for train sets.
    pub name: String,
    pub weight: f64,
}

/// Everything that determines a run's result. The run id is its hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recipe {
    /// Resolved config with every default filled in.
    pub config: Canon,
    pub base_model: Id,
    pub start_checkpoint: Option<Id>,
    pub datasets: Vec<DatasetUse>,
    pub seed: u64,
    pub graft_version: String,
}

impl Recipe {
    pub fn canon(&self) -> Canon {
        Canon::map()
            .with("config", self.config.clone())
            .with("base_model", self.base_model)
            .with("start_checkpoint", self.start_checkpoint)
            .with(
                "datasets",
                Canon::List(
                    self.datasets
                        .iter()
                        .map(|d| {
                            Canon::map()
                                .with("dataset", d.dataset)
                                .with("role", d.role.as_str())
                                .with("name", d.name.as_str())
                                .with("weight", d.weight)
                        })
                        .collect(),
                ),
            )
            .with("seed", self.seed)
            .with("graft_version", self.graft_version.as_str())
    }

    pub fn run_id(&self) -> Id {
        self.canon().id(domain::RUN)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub id: Id,
    pub recipe: Recipe,
    /// The run of the start checkpoint (denormalised for fast lineage walks).
    pub parent_run: Option<Id>,
    /// Local sequence number: orders `log` and keys metrics compactly.
    pub seq: u64,
    pub created_at: DateTime<Utc>,
    /// Extra facts recorded with the run (e.g. the drift report).
    pub notes: BTreeMap<String, Canon>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ExecutionStatus {
    Running,
    Completed,
    Failed,
    Interrupted,
}

impl ExecutionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Interrupted => "interrupted",
        }
    }
}

/// One attempt at a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExecutionRecord {
    pub run: Id,
    /// 1-based attempt number within the run.
    pub number: u32,
    pub status: ExecutionStatus,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub host: String,
    pub pid: u32,
    pub error: Option<String>,
    /// For a resumed execution: the checkpoint it resumed from.
    pub resumed_from: Option<Id>,
    /// Why the run ended early, if it did (early stop, NaN, ...).
    pub end_reason: Option<String>,
    /// `train`, `resume` or `reproduce`.
    #[serde(default)]
    pub purpose: String,
    /// How this execution computed: backend and every `[compute]` option (see
    /// `crate::compute`). Absent on executions recorded before it existed.
    #[serde(default)]
    pub compute: Option<Canon>,
}

/// Why an execution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionKind {
    /// The first execution of a recipe (or a re-run after a failure).
    Train,
    /// Continue from a checkpoint of the run, exactly.
    Resume(Id),
    /// Execute the recipe again to check it reproduces; its checkpoints are
    /// compared, not recorded.
    Reproduce,
}

impl ExecutionKind {
    pub fn purpose(&self) -> &'static str {
        match self {
            ExecutionKind::Train => "train",
            ExecutionKind::Resume(_) => "resume",
            ExecutionKind::Reproduce => "reproduce",
        }
    }

    pub fn resumed_from(&self) -> Option<Id> {
        match self {
            ExecutionKind::Resume(id) => Some(*id),
            _ => None,
        }
    }
}

/// The state of a run at a step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointRecord {
    pub id: Id,
    pub run: Id,
    pub step: u64,
    /// Tensor name -> object id. Only what training can change.
    pub tensors: BTreeMap<String, Id>,
    /// Other state objects: optimizer, rng, data position, adapter config.
    pub state: BTreeMap<String, Id>,
    /// The checkpoint this one continues from: the previous one of the run,
    /// or the run's start checkpoint.
    pub parent: Option<Id>,
    /// Eval metrics at this step (`eval/<set>/loss`, ...), for `@best`.
    pub metrics: BTreeMap<String, f64>,
    pub execution: u32,
    pub created_at: DateTime<Utc>,
    /// Retention no longer keeps this checkpoint's tensors (the record stays
    /// so lineage and metrics still name it); `gc` may free its objects
    /// unless a run starts from it.
    #[serde(default)]
    pub retired: bool,
}

impl CheckpointRecord {
    /// id = hash(run id, step, manifest of tensor and state object ids).
    pub fn compute_id(
        run: Id,
        step: u64,
        tensors: &BTreeMap<String, Id>,
        state: &BTreeMap<String, Id>,
    ) -> Id {
        let manifest = |m: &BTreeMap<String, Id>| {
            Canon::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Canon::from(*v)))
                    .collect(),
            )
        };
        Canon::map()
            .with("run", run)
            .with("step", step)
            .with("tensors", manifest(tensors))
            .with("state", manifest(state))
            .id(domain::CHECKPOINT)
    }
}

/// A named pointer to an id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RefRecord {
    pub name: String,
    pub target: Id,
    /// `model`, `dataset`, `run` or `checkpoint`.
    pub kind: String,
    pub created_at: DateTime<Utc>,
}

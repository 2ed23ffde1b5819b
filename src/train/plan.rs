//! From an experiment file to a recipe: resolve the base model or starting
//! checkpoint, register every dataset (train, eval, replay, ancestors' eval
//! sets), check the new data against the parent's, and fill in every
//! default. Nothing is written to the index here: the base model, datasets
//! and the run are handed to the recorder, which registers them when the
//! execution begins. New data files become objects only once every check has
//! passed, so a plan that fails leaves the store untouched.

use super::config::{Experiment, ReplayFrom};
use super::registry::{self, RegistryError};
use crate::data::{self, check_format_change, DataSource, DriftReport, Encoder, Format, Tokenizer};
use crate::lineage::ancestors;
use crate::store::{
    Canon, CheckpointRecord, DatasetRecord, DatasetUse, Id, ModelRecord, Recipe, RunRecord, Store,
    StoreError,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::model::ModelError> for PlanError {
    fn from(e: crate::model::ModelError) -> Self {
        PlanError::Registry(RegistryError::Model(e))
    }
}

/// A recipe ready to execute, with the records it introduces.
pub struct Plan {
    pub recipe: Recipe,
    pub model: ModelRecord,
    pub datasets: Vec<DatasetRecord>,
    pub notes: BTreeMap<String, Canon>,
    /// Human-readable drift report, when forking.
    pub drift: Option<String>,
    /// The base model's folder where planning hashed it just now (a folder or cache
    /// entry described afresh), so that the execution loads it without reading and
    /// hashing its gigabytes again; `None`: the execution checks the folder first.
    pub checked_folder: Option<PathBuf>,
}

impl Plan {
    /// A recorded run's recipe, to execute again (resume, reproduce): its model and
    /// datasets are in the index already, so the plan introduces no records.
    pub fn of_recorded_run(recipe: Recipe, model: ModelRecord) -> Plan {
        Plan {
            recipe,
            model,
            datasets: Vec::new(),
            notes: BTreeMap::new(),
            drift: None,
            checked_folder: None,
        }
    }
}

pub const GRAFT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Plans `experiment`: every check first, then the new data files into the store,
/// then the recipe. Read top to bottom: the starting point, the model's fit, the data
/// this run names, what it inherits from its parent (data, replay, the ancestors' eval
/// sets), the config, and an outside adapter to start from.
pub fn plan(store: &Store, experiment: &Experiment) -> Result<Plan, PlanError> {
    let (base, start) = resolve_start(store, experiment)?;
    // A folder described just now was hashed just now: hashing it again would only
    // read its gigabytes twice.
    let checked_folder = base.checked_folder.clone();
    let folder = match base.checked_folder {
        Some(folder) => folder,
        None => registry::model_folder(&base.record)?,
    };
    let (model, cached) = (base.record, base.cached);
    let tokenizer = Arc::new(Tokenizer::from_dir(&folder)?);
    check_model_fits(experiment, &tokenizer, &folder)?;
    let parent_run = match &start {
        Some(checkpoint) => Some(store.index()?.run(&checkpoint.run)?),
        None => None,
    };

    let mut data = DataPlan::default();
    data.add_files(store, experiment, &tokenizer, parent_run.as_ref())?;
    let mut notes = BTreeMap::new();
    if let Some(cached) = &cached {
        // The recipe identifies the base by its files' hashes; the id is a label.
        let label = Canon::map()
            .with("id", cached.id.as_str())
            .with("revision", cached.revision.as_str());
        notes.insert("base_hf_model".to_string(), label);
    }
    let mut drift_text = None;
    if let Some(parent) = &parent_run {
        drift_text =
            data.check_against_parent(store, experiment, &tokenizer, parent, &mut notes)?;
        let index = store.index()?;
        let chain = ancestors(&index, &parent.id)?;
        if let Some(replay) = &experiment.data.replay {
            // The recipe keeps only what `from` resolved to; a fork of this
            // run inherits the words (see `fork`).
            notes.insert("replay_from".to_string(), replay_from_canon(&replay.from));
            data.add_replay(&index, parent, &chain, replay)?;
        }
        if experiment.data.eval_ancestors {
            data.add_ancestor_evals(&index, &chain)?;
        }
    } else if experiment
        .data
        .replay
        .as_ref()
        .is_some_and(|r| r.ratio > 0.0)
    {
        return Err(PlanError::Invalid(
            "data.replay needs a run to replay: set model.from to a checkpoint".into(),
        ));
    }

    let mut config = resolved_config(store, experiment, start.as_ref())?;
    attach_start_adapter(store, experiment, &mut config, &mut notes)?;
    let DataPlan {
        mut records,
        new_files,
        uses,
        ..
    } = data;
    records.sort_by_key(|r| r.id);
    records.dedup_by_key(|r| r.id);
    for (path, expected) in new_files {
        if store.objects().put_file(Path::new(&path))? != expected {
            return Err(PlanError::Invalid(format!(
                "{path} changed while it was read; try again"
            )));
        }
    }
    // The model record enters the index when the execution begins (see
    // `execute`), so a plan that fails, or a run that cannot start, leaves
    // the index as it was.
    Ok(Plan {
        recipe: Recipe {
            config,
            base_model: model.id,
            start_checkpoint: start.map(|c| c.id),
            datasets: uses,
            seed: experiment.train.seed,
            graft_version: GRAFT_VERSION.to_string(),
        },
        model,
        datasets: records,
        notes,
        drift: drift_text,
        checked_folder,
    })
}

/// The tokenizer, the unfreeze schedule and the sequence length against the model.
fn check_model_fits(
    experiment: &Experiment,
    tokenizer: &Tokenizer,
    folder: &Path,
) -> Result<(), PlanError> {
    let model_config = crate::model::ModelConfig::from_dir(folder)?;
    check_tokenizer(tokenizer, &model_config, folder)?;
    super::unfreeze::check_schedule(
        &experiment.unfreeze.schedule,
        model_config.num_hidden_layers,
        &folder.join("config.json"),
    )
    .map_err(PlanError::Invalid)?;
    let seq_len = experiment.data.seq_len;
    if seq_len > model_config.max_position_embeddings {
        return Err(PlanError::Invalid(format!(
            "data.seq_len = {} is beyond the model's {} positions (max_position_embeddings in {})",
            seq_len,
            model_config.max_position_embeddings,
            folder.join("config.json").display()
        )));
    }
    Ok(())
}

/// The datasets a plan gathers: their records, how the run uses them, the new files to
/// store once every check has passed, and the train files' profiles (for drift).
#[derive(Default)]
struct DataPlan {
    records: Vec<DatasetRecord>,
    uses: Vec<DatasetUse>,
    /// Data files to store once every check has passed: (path, object id).
    new_files: Vec<(String, Id)>,
    train_profiles: Vec<data::DataProfile>,
}

impl DataPlan {
    fn has(&self, role: &str) -> bool {
        self.uses.iter().any(|u| u.role == role)
    }

    /// The train and eval files the experiment names (or, for a fork that names none,
    /// its parent's), and the validation split where there is no eval set.
    fn add_files(
        &mut self,
        store: &Store,
        experiment: &Experiment,
        tokenizer: &Arc<Tokenizer>,
        parent_run: Option<&RunRecord>,
    ) -> Result<(), PlanError> {
        let data = &experiment.data;
        if data.train.is_empty() {
            // A fork without new data keeps training on the parent's.
            if let Some(parent) = parent_run {
                self.inherit(store, parent, &["train"])?;
            }
        }
        for file in &data.train {
            let format: Format = file.format.parse()?;
            let encoder = Encoder::new(tokenizer.clone(), format, &data.template)?;
            let (record, profile) = describe_file(&file.path, &encoder, data.seq_len, data.pack)?;
            self.new_files.push((file.path.clone(), record.file_object));
            self.uses.push(DatasetUse {
                dataset: record.id,
                role: "train".into(),
                name: file_name(&file.path),
                weight: file.weight,
            });
            self.train_profiles.push(profile);
            self.records.push(record);
        }
        if self.uses.iter().filter(|u| u.role == "train").count() != 1 {
            return Err(PlanError::Invalid(
                "[data] train must name exactly one file (`train = [{ path = \"...\", format = \"chat\" }]`); mix earlier data in with `replay`".into(),
            ));
        }
        for file in &data.eval {
            let format: Format = file.format.parse()?;
            let encoder = Encoder::new(tokenizer.clone(), format, &data.template)?;
            let (record, _) = describe_file(&file.path, &encoder, data.seq_len, false)?;
            self.new_files.push((file.path.clone(), record.file_object));
            let name = file.name.clone().unwrap_or_else(|| file_name(&file.path));
            self.uses.push(DatasetUse {
                dataset: record.id,
                role: "eval".into(),
                name,
                weight: 1.0,
            });
            self.records.push(record);
        }
        if let (true, Some(parent)) = (data.train.is_empty() && data.eval.is_empty(), parent_run) {
            // A fork without new data also keeps the parent's evaluation sets.
            self.inherit(store, parent, &["eval", "val"])?;
        }
        if data.eval.is_empty() && data.val_fraction > 0.0 && !self.has("eval") && !self.has("val")
        {
            // The validation split of the train file, carved by hash of the
            // example index and seed (the data module's split).
            let train = self
                .uses
                .iter()
                .find(|u| u.role == "train")
                .cloned()
                .expect("one train set");
            self.uses.push(DatasetUse {
                dataset: train.dataset,
                role: "val".into(),
                name: format!("val/{}/{}", data.val_fraction, experiment.train.seed),
                weight: 1.0,
            });
        }
        Ok(())
    }

    /// The parent's datasets of these roles, as the parent used them.
    fn inherit(
        &mut self,
        store: &Store,
        parent: &RunRecord,
        roles: &[&str],
    ) -> Result<(), PlanError> {
        let index = store.index()?;
        for used in parent
            .recipe
            .datasets
            .iter()
            .filter(|d| roles.contains(&d.role.as_str()))
        {
            // The training data must be there; an evaluation set that is not is
            // left out.
            let record = if used.role == "train" {
                Some(index.dataset(&used.dataset)?)
            } else {
                index.get_dataset(&used.dataset)?
            };
            if let Some(record) = record {
                self.uses.push(used.clone());
                self.records.push(record);
            }
        }
        Ok(())
    }

    /// The new train data against the parent's: the same format and template (unless
    /// allowed), and a drift report noted on the run. Returns the report's text.
    fn check_against_parent(
        &self,
        store: &Store,
        experiment: &Experiment,
        tokenizer: &Arc<Tokenizer>,
        parent: &RunRecord,
        notes: &mut BTreeMap<String, Canon>,
    ) -> Result<Option<String>, PlanError> {
        let data = &experiment.data;
        let index = store.index()?;
        let parent_train = parent.recipe.datasets.iter().find(|d| d.role == "train");
        let new_train = self.records.iter().find(|r| {
            self.uses
                .iter()
                .any(|u| u.role == "train" && u.dataset == r.id)
        });
        let (Some(parent_use), Some(new_record)) = (parent_train, new_train) else {
            return Ok(None);
        };
        let parent_record = index.dataset(&parent_use.dataset)?;
        check_format_change(
            &parent_record.spec,
            &new_record.spec,
            data.allow_format_change,
        )?;
        let Some(new_profile) = self.train_profiles.first() else {
            return Ok(None);
        };
        let parent_encoder = Encoder::from_spec(tokenizer.clone(), &parent_record.spec)?;
        let parent_source = object_source(store, &parent_record)?;
        let parent_scan = data::scan(&parent_source, &parent_encoder, data.seq_len)?;
        let report = DriftReport::compare(&parent_scan.profile, new_profile);
        notes.insert("drift".to_string(), report.to_canon());
        Ok(Some(report.render()))
    }

    /// The training data of the runs `replay.from` names, each dataset once and never
    /// this run's own train set.
    fn add_replay(
        &mut self,
        index: &crate::store::Index,
        parent: &RunRecord,
        chain: &[RunRecord],
        replay: &super::config::ReplaySection,
    ) -> Result<(), PlanError> {
        let sources: Vec<Id> = match &replay.from {
            ReplayFrom::Named(name) if name == "parent" => vec![parent.id],
            ReplayFrom::Named(name) if name == "ancestors" => chain.iter().map(|r| r.id).collect(),
            ReplayFrom::Named(other) => vec![index.resolve_run(other)?],
            ReplayFrom::Refs(refs) => refs
                .iter()
                .map(|r| index.resolve_run(r))
                .collect::<Result<_, _>>()?,
        };
        let mut seen = Vec::new();
        for run in sources {
            for used in index
                .run(&run)?
                .recipe
                .datasets
                .iter()
                .filter(|d| d.role == "train")
            {
                if seen.contains(&used.dataset)
                    || self
                        .uses
                        .iter()
                        .any(|u| u.role == "train" && u.dataset == used.dataset)
                {
                    continue;
                }
                seen.push(used.dataset);
                let record = index.dataset(&used.dataset)?;
                self.uses.push(DatasetUse {
                    dataset: record.id,
                    role: "replay".into(),
                    name: format!("{}@{}", used.name, &run.short()[..8]),
                    weight: 1.0,
                });
                self.records.push(record);
            }
        }
        if seen.is_empty() && replay.ratio > 0.0 {
            return Err(PlanError::Invalid(
                "data.replay: the runs named by `from` have no training data to replay besides this run's own (a fork without [data] train trains on its parent's data: replay from \"ancestors\", or set data.replay.ratio = 0)".into(),
            ));
        }
        Ok(())
    }

    /// Every ancestor's eval and validation sets, named by the run they come from, for
    /// measuring forgetting.
    fn add_ancestor_evals(
        &mut self,
        index: &crate::store::Index,
        chain: &[RunRecord],
    ) -> Result<(), PlanError> {
        for run in chain {
            for used in run
                .recipe
                .datasets
                .iter()
                .filter(|d| d.role == "eval" || d.role == "val")
            {
                if self
                    .uses
                    .iter()
                    .any(|u| u.dataset == used.dataset && u.name == used.name)
                {
                    continue;
                }
                let record = index.dataset(&used.dataset)?;
                // An ancestor's validation split is carved with its own
                // fraction and seed, which the name carries.
                let name = if used.role == "val" {
                    let fraction = run
                        .recipe
                        .config
                        .get_path("data.val_fraction")
                        .and_then(Canon::as_f64)
                        .unwrap_or(0.0);
                    format!(
                        "val/{fraction}/{}@{}",
                        run.recipe.seed,
                        &run.id.short()[..8]
                    )
                } else {
                    format!("{}@{}", used.name, &run.id.short()[..8])
                };
                self.uses.push(DatasetUse {
                    dataset: record.id,
                    role: format!("ancestor_{}", used.role),
                    name,
                    weight: 1.0,
                });
                self.records.push(record);
            }
        }
        Ok(())
    }
}

/// With `[adapter] from = DIR`: the adapter's files into the store, its content id into
/// the recipe's `adapter.from`, and where it came from into the run's notes.
fn attach_start_adapter(
    store: &Store,
    experiment: &Experiment,
    config: &mut Canon,
    notes: &mut BTreeMap<String, Canon>,
) -> Result<(), PlanError> {
    let Some((adapter, dir)) = experiment
        .adapter
        .as_ref()
        .and_then(|a| a.from.as_ref().map(|dir| (a, dir)))
    else {
        return Ok(());
    };
    let expected = crate::model::LoraConfig {
        rank: adapter.rank,
        alpha: adapter.alpha,
        dropout: adapter.dropout,
        targets: adapter.targets.clone(),
        use_rslora: adapter.rslora,
    };
    let (stored, note) =
        super::adapter_start::store_folder(store, dir, &expected).map_err(PlanError::Invalid)?;
    if let Canon::Map(sections) = config {
        if let Some(Canon::Map(section)) = sections.get_mut("adapter") {
            section.insert("from".into(), Canon::from(stored.id.to_hex()));
        }
    }
    notes.insert("start_adapter".to_string(), note);
    Ok(())
}

/// The config as the recipe records it. A fork continues the adapter of the
/// checkpoint it starts from, whatever `[adapter]` says, so the recipe
/// records that adapter: lineage and diffs then show what really trained.
fn resolved_config(
    store: &Store,
    experiment: &Experiment,
    start: Option<&CheckpointRecord>,
) -> Result<Canon, PlanError> {
    let inherited = match start {
        Some(checkpoint) => super::state::load_adapter_config(store, checkpoint)?,
        None => None,
    };
    let Some(adapter) = inherited else {
        return Ok(experiment.recipe_config());
    };
    let mut resolved = experiment.clone();
    resolved.adapter = Some(super::config::AdapterSection {
        from: None,
        kind: "lora".into(),
        rank: adapter.rank,
        alpha: adapter.alpha,
        dropout: adapter.dropout,
        targets: adapter.targets,
        rslora: adapter.use_rslora,
    });
    Ok(resolved.recipe_config())
}

/// The base model and the starting checkpoint (for a fork).
fn resolve_start(
    store: &Store,
    experiment: &Experiment,
) -> Result<(registry::Base, Option<CheckpointRecord>), PlanError> {
    if let Some(from) = &experiment.model.from {
        let index = store.index()?;
        let checkpoint = index.checkpoint(&index.resolve_checkpoint(from)?)?;
        let run = index.run(&checkpoint.run)?;
        let model = index
            .get_model(&run.recipe.base_model)?
            .ok_or(StoreError::NotFound {
                kind: "model",
                id: run.recipe.base_model,
            })?;
        let base = registry::Base {
            record: model,
            cached: None,
            checked_folder: None,
        };
        return Ok((base, Some(checkpoint)));
    }
    let base = experiment
        .model
        .base
        .as_deref()
        .ok_or_else(|| PlanError::Invalid("[model] needs base or from".into()))?;
    let base = registry::resolve_base(store, base).map_err(|e| match e {
        RegistryError::Model(crate::model::ModelError::NotInCache { .. }) => {
            PlanError::Invalid(format!("model.base = \"{base}\": {e}"))
        }
        other => other.into(),
    })?;
    Ok((base, None))
}

/// `data.replay.from` as a run's note records it.
pub fn replay_from_canon(from: &ReplayFrom) -> Canon {
    match from {
        ReplayFrom::Named(name) => Canon::from(name.as_str()),
        ReplayFrom::Refs(refs) => {
            Canon::List(refs.iter().map(|r| Canon::from(r.as_str())).collect())
        }
    }
}

/// Describe a data file (its object id among the rest); the caller stores it.
fn describe_file(
    path: &str,
    encoder: &Encoder,
    seq_len: usize,
    pack: bool,
) -> Result<(DatasetRecord, data::DataProfile), PlanError> {
    let source = DataSource::file(path);
    if !Path::new(path).is_file() {
        return Err(PlanError::Invalid(format!("{path}: no such data file")));
    }
    let prepared = data::prepare_dataset(&source, encoder, seq_len, pack, chrono::Utc::now())?;
    Ok((prepared.record, prepared.profile))
}

/// A dataset's bytes, read back from the object store (verified first).
pub fn object_source(store: &Store, record: &DatasetRecord) -> Result<DataSource, StoreError> {
    store.objects().check(&record.file_object)?;
    Ok(DataSource::file(
        store.objects().path_of(&record.file_object),
    ))
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.to_string())
}

/// The tokenizer must cover the model's vocabulary ids it will produce.
fn check_tokenizer(
    tokenizer: &Tokenizer,
    config: &crate::model::ModelConfig,
    folder: &Path,
) -> Result<(), PlanError> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(PlanError::Invalid(format!(
            "{}: the tokenizer has {} tokens but the model's vocab_size is {} (config.json): they do not belong together",
            folder.join("tokenizer.json").display(),
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    Ok(())
}

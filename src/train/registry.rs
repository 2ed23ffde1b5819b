//! Registering inputs in the store: base model folders and their tensors.
//!
//! A model's id is the hash of its config, tokenizer and one object id per
//! tensor (dtype, shape and bytes; see `store::tensor_blob`). Small files
//! (config, tokenizer, generation config) are always copied into the object
//! store; tensors stay where they lie unless `copy` is asked for. Loading a
//! registered model re-hashes its tensors, so a folder that changed after
//! registration is caught instead of silently training a different model.

use crate::model::hf_cache::{self, CachedModel};
use crate::model::tensor_files::{TensorEntry, TensorFiles};
use crate::model::{ModelConfig, ModelError, RawTensor};
use crate::store::canonical::{object_id, ObjectHasher};
use crate::store::tensor_blob::TensorBlob;
use crate::store::{Canon, Id, Index, ModelRecord, Store, StoreError, Target};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files copied into the store with every model (those present).
const SMALL_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {message}")]
    Folder { path: PathBuf, message: String },
    #[error("model {id} was registered from {path}, but its tensor `{tensor}` has changed since: register the folder again (`graft model add`) to train on the new weights")]
    Changed {
        id: Id,
        path: String,
        tensor: String,
    },
}

/// The object id a tensor has (the same whether or not it is copied), and the
/// object's bytes.
pub fn tensor_object(raw: &RawTensor) -> (Id, Vec<u8>) {
    let mut bytes = TensorBlob::header(&raw.dtype, &raw.shape, raw.bytes.len());
    bytes.extend_from_slice(&raw.bytes);
    (object_id(&bytes), bytes)
}

/// Bytes a hash reads from a weight file at a time.
const HASH_CHUNK: usize = 8 << 20;

/// The object id of a tensor in a weight file ([`tensor_object`]'s), its bytes hashed
/// as they are read rather than held.
pub fn tensor_entry_id(entry: &TensorEntry) -> Result<Id, ModelError> {
    let mut hasher = ObjectHasher::new();
    hasher.update(&TensorBlob::header(&entry.dtype, &entry.shape, 0));
    entry.read_chunks(HASH_CHUNK, |bytes| hasher.update(bytes))?;
    Ok(hasher.finish())
}

/// The object id of every tensor of `files`, the tensors hashed in parallel.
pub fn tensor_ids(files: &TensorFiles) -> Result<BTreeMap<String, Id>, ModelError> {
    let entries: Vec<(&String, &TensorEntry)> = files.iter().collect();
    entries
        .into_par_iter()
        .map(|(name, entry)| Ok((name.clone(), tensor_entry_id(entry)?)))
        .collect()
}

/// Hash (and with `copy`, store) a Hugging Face folder; record it.
pub fn register_model(store: &Store, dir: &Path, copy: bool) -> Result<ModelRecord, RegistryError> {
    let record = describe_model(dir, copy)?;
    record_model(store, record)
}

/// Hash a Hugging Face folder into a model record without writing anything:
/// a plan describes its base model first and records it (objects, then the
/// index: [`record_model`]) only once every check has passed.
pub fn describe_model(dir: &Path, copy: bool) -> Result<ModelRecord, RegistryError> {
    let dir = dir.canonicalize().map_err(|e| RegistryError::Folder {
        path: dir.to_path_buf(),
        message: format!("{e}: expected a Hugging Face model folder"),
    })?;
    let config = ModelConfig::from_dir(&dir)?;
    if !dir.join("tokenizer.json").is_file() {
        return Err(RegistryError::Folder {
            path: dir.join("tokenizer.json"),
            message: "missing: graft needs the model's tokenizer.json".into(),
        });
    }
    let raw = TensorFiles::open(&dir)?;
    crate::model::shapes::check_weights(&config, &raw, &dir.join("config.json"))?;
    let mut files = BTreeMap::new();
    for name in SMALL_FILES {
        let path = dir.join(name);
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
            files.insert(name.to_string(), object_id(&bytes));
        }
    }
    let mut parameters = 0usize;
    for (name, tensor) in raw.iter() {
        // A 4-bit weight counts as the values it packs; its state tensors are no
        // parameters.
        if !crate::model::bnb::is_quant_state_key(name) {
            let shape =
                crate::model::bnb::stated_shape(&raw, name)?.unwrap_or(tensor.shape.clone());
            parameters += shape.iter().product::<usize>();
        }
    }
    let tensors = tensor_ids(&raw)?;
    let config_id = files["config.json"];
    let tokenizer_id = files["tokenizer.json"];
    let id = ModelRecord::compute_id(config_id, tokenizer_id, &tensors);
    let summary = Canon::map()
        .with("model_type", config.model_type.as_str())
        .with("layers", config.num_hidden_layers)
        .with("hidden_size", config.hidden_size)
        .with("vocab_size", config.vocab_size)
        .with("max_positions", config.max_position_embeddings)
        .with("parameters", parameters)
        .with(
            "dtype",
            raw.iter()
                .next()
                .map(|(_, t)| t.dtype.clone())
                .unwrap_or_default(),
        );
    let record = ModelRecord {
        id,
        path: dir.display().to_string(),
        copied: copy,
        config: config_id,
        tokenizer: tokenizer_id,
        tensors,
        files,
        summary,
        added_at: chrono::Utc::now(),
    };
    Ok(record)
}

/// Write a described model: its small files (and, copied, its tensors) as
/// objects, then its record in the index.
pub fn record_model(store: &Store, record: ModelRecord) -> Result<ModelRecord, RegistryError> {
    let index = store.index()?;
    match index.get_model(&record.id)? {
        // Same content already known: keep its first registration, but
        // remember the copy if one is made now.
        Some(existing) if existing.copied || !record.copied => return Ok(existing),
        _ => {
            store_model_files(store, &record)?;
            index.put_model(&record)?;
        }
    }
    index.flush()?;
    Ok(record)
}

/// Puts the files `record` names into the object store from its folder,
/// checking that each is still what was described.
fn store_model_files(store: &Store, record: &ModelRecord) -> Result<(), RegistryError> {
    let dir = Path::new(&record.path);
    let changed = |name: &str| RegistryError::Folder {
        path: dir.join(name),
        message: "changed while it was registered; try again".into(),
    };
    for (name, expected) in &record.files {
        if store.objects().put_file(&dir.join(name))? != *expected {
            return Err(changed(name));
        }
    }
    if record.copied {
        // One tensor in memory at a time.
        let files = TensorFiles::open(dir)?;
        for (name, entry) in files.iter() {
            let (id, bytes) = tensor_object(&entry.read()?);
            if record.tensors.get(name) != Some(&id) {
                return Err(changed(name));
            }
            store.objects().put_bytes(&bytes)?;
        }
    }
    Ok(())
}

/// A base model as an experiment names it.
#[derive(Debug)]
pub struct Base {
    pub record: ModelRecord,
    /// The Hugging Face cache entry it was found as, for a model id.
    pub cached: Option<CachedModel>,
    /// Its folder where that was described (hashed) just now, so that loading it
    /// needs no second check; `None` for a model the store already had.
    pub checked_folder: Option<PathBuf>,
}

impl Base {
    fn described(record: ModelRecord, cached: Option<CachedModel>) -> Base {
        let folder = PathBuf::from(&record.path);
        Base {
            record,
            cached,
            checked_folder: Some(folder),
        }
    }
}

/// `model.base` of an experiment: a folder (described, not yet recorded:
/// see [`record_model`]), a model id prefix or tag already in the store, or a
/// Hugging Face model id (`org/name`, `org/name@revision`) in the local cache,
/// which also comes back so the run can note it as the base's label.
pub fn resolve_base(store: &Store, base: &str) -> Result<Base, RegistryError> {
    let path = Path::new(base);
    if path.is_dir() {
        return Ok(Base::described(describe_model(path, false)?, None));
    }
    let index = store.index()?;
    match index.resolve(base) {
        Ok(Target::Model(id)) => Ok(Base {
            record: index
                .get_model(&id)?
                .ok_or(StoreError::NotFound { kind: "model", id })?,
            cached: None,
            checked_folder: None,
        }),
        Ok(other) => Err(RegistryError::Folder {
            path: path.to_path_buf(),
            message: format!("names a {}, not a model folder or model", other.kind()),
        }),
        Err(_) if hf_cache::is_model_id(base) => {
            let cached = hf_cache::find(base)?;
            Ok(Base::described(
                describe_model(&cached.dir, false)?,
                Some(cached),
            ))
        }
        Err(_) => Err(RegistryError::Folder {
            path: path.to_path_buf(),
            message: "no such folder, no model id or tag by that name in the store (`graft model ls`), and not a Hugging Face model id (org/name)".into(),
        }),
    }
}

/// The folder `graft model add` registers: `dir` itself, or where a Hugging Face
/// model id (`org/name`) lies in the local cache.
pub fn model_add_folder(dir: &Path) -> Result<(PathBuf, Option<CachedModel>), RegistryError> {
    match dir.to_str() {
        Some(name) if !dir.exists() && hf_cache::is_model_id(name) => {
            let cached = hf_cache::find(name)?;
            Ok((cached.dir.clone(), Some(cached)))
        }
        _ => Ok((dir.to_path_buf(), None)),
    }
}

/// The folder a registered model loads from, after checking that its
/// tensors are still the ones registered.
pub fn model_folder(record: &ModelRecord) -> Result<PathBuf, RegistryError> {
    let dir = PathBuf::from(&record.path);
    if !dir.is_dir() {
        return Err(RegistryError::Folder {
            path: dir,
            message: format!(
                "model {} was registered from this folder, which is gone",
                record.id.short()
            ),
        });
    }
    let actual = tensor_ids(&TensorFiles::open(&dir)?)?;
    for (name, expected) in &record.tensors {
        if actual.get(name) != Some(expected) {
            return Err(RegistryError::Changed {
                id: record.id,
                path: record.path.clone(),
                tensor: name.clone(),
            });
        }
    }
    Ok(dir)
}

/// What differs between the folder of a model referenced in place and its
/// registration, one line per file at fault (`graft verify`): a small file
/// (config, tokenizer) whose hash changed or that is gone, a weight file whose
/// tensors no longer hash as registered, a registered tensor no file holds.
/// A folder that is gone altogether is the store's own check.
pub fn check_model_folder(record: &ModelRecord) -> Vec<String> {
    let dir = Path::new(&record.path);
    if record.copied || !dir.is_dir() {
        return Vec::new();
    }
    let model = format!("model {}", record.id.short());
    let mut problems = Vec::new();
    for (name, expected) in &record.files {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) if object_id(&bytes) == *expected => {}
            Ok(_) => problems.push(format!(
                "{}: changed since {model} was registered from it",
                path.display()
            )),
            Err(e) => problems.push(format!(
                "{}: {e} ({model} was registered with it)",
                path.display()
            )),
        }
    }
    let files = match crate::model::weights::weight_files(dir) {
        Ok(files) => files,
        Err(e) => {
            problems.push(format!("{e} ({model})"));
            return problems;
        }
    };
    let mut seen = Vec::new();
    for file in files {
        let tensors = match TensorFiles::open_file(&file).and_then(|files| tensor_ids(&files)) {
            Ok(tensors) => tensors,
            Err(e) => {
                problems.push(format!("{e} ({model})"));
                continue;
            }
        };
        let changed: Vec<String> = tensors
            .iter()
            .filter(|(name, id)| record.tensors.get(*name) != Some(id))
            .map(|(name, _)| format!("`{name}`"))
            .collect();
        if !changed.is_empty() {
            problems.push(format!(
                "{}: tensor {} differs from what {model} registered",
                file.display(),
                changed.join(", ")
            ));
        }
        seen.extend(tensors.into_keys());
    }
    for name in record.tensors.keys().filter(|name| !seen.contains(name)) {
        problems.push(format!(
            "{}: no weight file holds tensor `{name}`, which {model} registered",
            dir.display()
        ));
    }
    problems
}

/// Every model, for `graft model ls`.
pub fn list_models(index: &Index) -> Result<Vec<ModelRecord>, StoreError> {
    let mut models = index.models()?;
    models.sort_by_key(|m| m.added_at);
    Ok(models)
}

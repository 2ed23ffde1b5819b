//! Starting a run from an outside PEFT adapter folder (`[adapter] from = "DIR"`,
//! as PEFT, Unsloth and Axolotl write it).
//!
//! The folder's `adapter_config.json` decides the adapter's settings: the
//! experiment's `[adapter]` keys are filled from it, and a key the experiment
//! writes with another value is an error naming both, since silently training
//! something other than what the file names is worse than refusing. Features
//! graft does not train are refused by the loader (`rank_pattern`, `bias`,
//! `layers_to_transform`, DoRA, ...) or here (`modules_to_save`).
//!
//! The plan stores the folder's files as objects ([`crate::store::adapters`])
//! and records the adapter's content id at `adapter.from` in the recipe; the
//! path is a note of the run. Execution loads the adapter from those objects
//! and keeps training its matrices; a PEFT folder has no optimizer state, so
//! the optimizer starts fresh (and the run says so).

use crate::model::{read_adapter_config_file, LoraConfig};
use crate::store::adapters::{self, StoredAdapter, CONFIG_FILE, WEIGHTS_FILE};
use crate::store::{Canon, Id, Store, StoreError};
use std::path::Path;

/// What the run's notes and terminal say about the optimizer.
pub const FRESH_OPTIMIZER: &str =
    "the optimizer state starts fresh: a PEFT adapter folder carries none";

/// Reads and checks an adapter folder's config: what the loader refuses, plus
/// `modules_to_save`, whose whole modules graft would not keep training.
pub fn read_folder_config(config_path: &Path) -> Result<LoraConfig, String> {
    let config = read_adapter_config_file(config_path)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    match raw.get("modules_to_save") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(items)) if items.is_empty() => {}
        Some(other) => {
            return Err(format!(
                "{}: modules_to_save = {other}: continuing an adapter that carries whole modules is not supported (graft would train only its LoRA matrices); use an adapter without modules_to_save",
                config_path.display()
            ))
        }
    }
    Ok(config)
}

/// If the tree's `[adapter]` names a folder with `from`, fills the adapter
/// keys from the folder's config (refusing keys that contradict it) and
/// returns true.
pub fn fill_from_folder(tree: &mut toml::Table) -> Result<bool, String> {
    let Some(adapter) = tree.get_mut("adapter").and_then(toml::Value::as_table_mut) else {
        return Ok(false);
    };
    let dir = match adapter.get("from") {
        None => return Ok(false),
        Some(toml::Value::String(dir)) => dir.clone(),
        Some(other) => return Err(format!("adapter.from = {other}: expected a folder path")),
    };
    let folder = Path::new(&dir);
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        if !folder.join(file).is_file() {
            return Err(format!(
                "adapter.from = {dir:?}: no {file} there (a PEFT adapter folder has {CONFIG_FILE} and {WEIGHTS_FILE})"
            ));
        }
    }
    let config_path = folder.join(CONFIG_FILE);
    let config = read_folder_config(&config_path)?;
    let from_folder: [(&str, &str, toml::Value); 5] = [
        ("rank", "r", toml::Value::Integer(config.rank as i64)),
        ("alpha", "lora_alpha", toml::Value::Float(config.alpha)),
        (
            "dropout",
            "lora_dropout",
            toml::Value::Float(config.dropout),
        ),
        (
            "targets",
            "target_modules",
            toml::Value::Array(
                config
                    .targets
                    .iter()
                    .map(|t| toml::Value::String(t.clone()))
                    .collect(),
            ),
        ),
        (
            "rslora",
            "use_rslora",
            toml::Value::Boolean(config.use_rslora),
        ),
    ];
    let mut contradictions = Vec::new();
    for (key, peft_key, value) in &from_folder {
        if let Some(written) = adapter.get(*key) {
            if !same_setting(written, value) {
                contradictions.push(format!(
                    "adapter.{key} = {written} contradicts {peft_key} = {value}"
                ));
            }
        }
    }
    if !contradictions.is_empty() {
        return Err(format!(
            "{} in {}: with adapter.from the adapter's own config decides; leave {} out",
            contradictions.join(", "),
            config_path.display(),
            if contradictions.len() == 1 {
                "that key"
            } else {
                "those keys"
            }
        ));
    }
    for (key, _, value) in from_folder {
        adapter.insert(key.into(), value);
    }
    Ok(true)
}

/// Whether a key written in the experiment says what the adapter's config says
/// (numbers by value, target lists as sets: PEFT stores them unordered).
fn same_setting(written: &toml::Value, from_folder: &toml::Value) -> bool {
    use toml::Value;
    match (written, from_folder) {
        (Value::Integer(a), Value::Float(b)) | (Value::Float(b), Value::Integer(a)) => {
            *a as f64 == *b
        }
        (Value::Array(a), Value::Array(b)) => {
            let set = |items: &Vec<Value>| {
                let mut names: Vec<String> = items.iter().map(|v| v.to_string()).collect();
                names.sort();
                names.dedup();
                names
            };
            set(a) == set(b)
        }
        (a, b) => a == b,
    }
}

/// Stores an adapter folder's files as objects (checked against the settings
/// the experiment was read with, in case the folder changed since), and the
/// note the run keeps about where it came from.
pub fn store_folder(
    store: &Store,
    dir: &str,
    expected: &LoraConfig,
) -> Result<(StoredAdapter, Canon), String> {
    let stored =
        adapters::put_adapter(store.objects(), Path::new(dir)).map_err(|e| e.to_string())?;
    let (config_path, _) =
        adapters::adapter_files(store.objects(), &stored.id).map_err(|e| e.to_string())?;
    let config = read_folder_config(&config_path)
        .map_err(|e| format!("{dir}/{CONFIG_FILE} (as stored): {e}"))?;
    if &config != expected {
        return Err(format!(
            "{dir}: the adapter changed while it was read; try again"
        ));
    }
    let path = std::fs::canonicalize(dir)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| dir.to_string());
    let note = Canon::map()
        .with("id", stored.id)
        .with("path", path.as_str())
        .with("optimizer", FRESH_OPTIMIZER);
    Ok((stored, note))
}

/// Paths of a stored adapter's config and weights (verified), to load it.
pub fn stored_files(
    store: &Store,
    id: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf), StoreError> {
    let id = Id::from_hex(id).ok_or_else(|| StoreError::BadRecord {
        tree: "runs",
        key: "recipe adapter.from".into(),
        reason: format!("{id:?} is not an adapter id"),
    })?;
    adapters::adapter_files(store.objects(), &id)
}

/// Loads the stored adapter `id` (a recipe's `adapter.from`) onto `model`: the
/// adapter's matrices become the LoRA branches that train, the base freezes.
pub fn load_stored<B: burn::tensor::backend::Backend>(
    store: &Store,
    model: crate::model::CausalLm<B>,
    id: &str,
) -> Result<crate::model::CausalLm<B>, super::TrainError> {
    let (config_path, weights_path) = stored_files(store, id)?;
    Ok(crate::model::load_adapter_files(
        model,
        &config_path,
        &weights_path,
    )?)
}

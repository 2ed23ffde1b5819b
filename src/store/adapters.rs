//! Outside adapters (PEFT folders) as objects: the two files of the folder
//! are stored as objects, and a small manifest object names them. The
//! manifest's id is the adapter's content id: the recipe records it at
//! `adapter.from`, so a run's id depends on the adapter's bytes and not on
//! where its folder lay (that path is a note of the run).
//!
//! Manifest bytes (text, one field a line):
//! `graft.adapter.v1`, then `adapter_config.json <object id>`, then
//! `adapter_model.safetensors <object id>`.

use super::canonical::{Canon, Id};
use super::error::{Result, StoreError};
use super::objects::ObjectStore;
use std::path::{Path, PathBuf};

const MAGIC: &str = "graft.adapter.v1";
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The objects of a stored adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredAdapter {
    /// The manifest object: the adapter's content id.
    pub id: Id,
    pub config: Id,
    pub weights: Id,
}

impl StoredAdapter {
    /// Every object the adapter needs (for gc and verify).
    pub fn objects(&self) -> [Id; 3] {
        [self.id, self.config, self.weights]
    }
}

/// Copies a PEFT folder's two files into the object store and writes the
/// manifest that names them.
pub fn put_adapter(objects: &ObjectStore, dir: &Path) -> Result<StoredAdapter> {
    let config = objects.put_file(&dir.join(CONFIG_FILE))?;
    let weights = objects.put_file(&dir.join(WEIGHTS_FILE))?;
    let id = objects.put_bytes(manifest(config, weights).as_bytes())?;
    Ok(StoredAdapter {
        id,
        config,
        weights,
    })
}

fn manifest(config: Id, weights: Id) -> String {
    format!(
        "{MAGIC}\n{CONFIG_FILE} {}\n{WEIGHTS_FILE} {}\n",
        config.to_hex(),
        weights.to_hex()
    )
}

/// Reads a stored adapter's manifest (verified, as every object read is).
pub fn read_adapter(objects: &ObjectStore, id: &Id) -> Result<StoredAdapter> {
    let bytes = objects.get(id)?;
    let bad = |reason: &str| StoreError::BadRecord {
        tree: "objects",
        key: format!("adapter {}", id.short()),
        reason: reason.into(),
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not text"))?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(bad(&format!("does not start with {MAGIC}")));
    }
    let mut field = |name: &str| {
        lines
            .next()
            .and_then(|line| line.strip_prefix(name))
            .and_then(|rest| Id::from_hex(rest.trim()))
            .ok_or_else(|| bad(&format!("no {name} line")))
    };
    let (config, weights) = (field(CONFIG_FILE)?, field(WEIGHTS_FILE)?);
    Ok(StoredAdapter {
        id: *id,
        config,
        weights,
    })
}

/// The file paths of a stored adapter's config and weights, both verified.
pub fn adapter_files(objects: &ObjectStore, id: &Id) -> Result<(PathBuf, PathBuf)> {
    let adapter = read_adapter(objects, id)?;
    objects.check(&adapter.config)?;
    objects.check(&adapter.weights)?;
    Ok((
        objects.path_of(&adapter.config),
        objects.path_of(&adapter.weights),
    ))
}

/// The adapter a recipe's config starts from (`adapter.from`), if any.
pub fn recipe_adapter(config: &Canon) -> Option<Id> {
    config
        .get_path("adapter.from")
        .and_then(Canon::as_str)
        .and_then(Id::from_hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_is_named_by_its_bytes_not_its_folder() {
        let store = tempfile::tempdir().unwrap();
        let objects = ObjectStore::new(store.path().join("objects"));
        let folders: Vec<tempfile::TempDir> =
            (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        for folder in &folders {
            std::fs::write(folder.path().join(CONFIG_FILE), b"{\"r\": 4}").unwrap();
            std::fs::write(folder.path().join(WEIGHTS_FILE), b"weights").unwrap();
        }
        let first = put_adapter(&objects, folders[0].path()).unwrap();
        let second = put_adapter(&objects, folders[1].path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(read_adapter(&objects, &first.id).unwrap(), first);
        std::fs::write(folders[1].path().join(WEIGHTS_FILE), b"weights, trained").unwrap();
        assert_ne!(
            put_adapter(&objects, folders[1].path()).unwrap().id,
            first.id
        );
        let not_a_manifest = objects.put_bytes(b"weights").unwrap();
        assert!(read_adapter(&objects, &not_a_manifest).is_err());
    }
}

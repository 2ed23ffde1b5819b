//! Errors of the store: each names the object, record, ref or path at fault.

use super::canonical::Id;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no graft store at {path}: run `graft init` there, or pass --store DIR")]
    NotAStore { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object {id} is corrupt: its bytes hash to {actual} ({path})")]
    CorruptObject { id: Id, actual: Id, path: PathBuf },
    #[error("object {id} is missing from the store ({path})")]
    MissingObject { id: Id, path: PathBuf },
    #[error("the index at {path} is busy: another graft process held it for {waited_ms} ms")]
    Busy { path: PathBuf, waited_ms: u64 },
    #[error("index error: {0}")]
    Index(String),
    #[error("record {key} in tree `{tree}` cannot be read: {reason}")]
    BadRecord {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("`{reference}` does not name a run, checkpoint, dataset, model or tag")]
    UnknownRef { reference: String },
    #[error("`{reference}` is ambiguous; it matches:\n{}", candidates.join("\n"))]
    AmbiguousRef {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("`{reference}`: {reason}")]
    BadRef { reference: String, reason: String },
    #[error("{kind} {id} is not in the store")]
    NotFound { kind: &'static str, id: Id },
    #[error("tag `{name}` is not valid: {reason}")]
    BadTagName { name: String, reason: String },
    /// A checkpoint's objects had to come from a remote, and did not.
    #[error(transparent)]
    Remote(Box<super::remote::RemoteError>),
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Index(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

//! The experiment store: an object database of immutable files named by their
//! hash, a sled index of small versioned records, and per-execution journals
//! through which training processes record without holding the index.
//!
//! Layout under the store root:
//! - `index/`: the sled database (see [`index`]);
//! - `objects/ab/cdef...`: object files (see [`objects`]);
//! - `journal/`: journals of executions not yet fully absorbed (see [`journal`]).
//!
//! This module knows nothing of burn: tensors arrive as bytes.

pub mod absorb;
pub mod adapters;
pub mod canonical;
pub mod error;
pub mod faults;
pub mod gc;
pub mod index;
pub mod journal;
pub mod metrics;
pub mod objects;
pub mod recorder;
pub mod records;
pub mod refs;
pub mod remote;
pub mod tensor_blob;
pub mod verify;

pub use canonical::{Canon, Id};
pub use error::{Result, StoreError};
pub use index::Index;
pub use objects::ObjectStore;
pub use recorder::{Recorder, StoreRecorder};
pub use records::*;
pub use refs::Target;

use std::fs;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the default store location.
pub const STORE_ENV: &str = "GRAFT_STORE";
/// The default store location, relative to the working directory.
pub const DEFAULT_STORE: &str = "store";

#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    objects: ObjectStore,
    /// Reports the fetch of checkpoint tensors left on a remote.
    fetch_progress: std::sync::Arc<dyn remote::Progress>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Create a store (or open an existing one) at `root`.
    pub fn init(root: &Path) -> Result<Store> {
        for dir in ["objects", "journal"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        let store = Store::at(root);
        let index = Index::open(&store.index_path())?;
        index.flush()?;
        Ok(store)
    }

    /// Open an existing store; an error names the path when there is none.
    pub fn open(root: &Path) -> Result<Store> {
        if !root.join("index").is_dir() {
            return Err(StoreError::NotAStore {
                path: root.to_path_buf(),
            });
        }
        Ok(Store::at(root))
    }

    /// Open the store, creating it first if the folder has none.
    pub fn open_or_init(root: &Path) -> Result<Store> {
        if root.join("index").is_dir() {
            Store::open(root)
        } else {
            Store::init(root)
        }
    }

    fn at(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
            objects: ObjectStore::new(root.join("objects")),
            fetch_progress: std::sync::Arc::new(remote::Silent),
        }
    }

    /// Report fetches of checkpoint tensors from a remote to `progress`
    /// (the CLI draws a bar).
    pub fn with_fetch_progress(mut self, progress: std::sync::Arc<dyn remote::Progress>) -> Store {
        self.fetch_progress = progress;
        self
    }

    /// Make sure every object of `checkpoint` is here: those a metadata-only
    /// pull left on a remote are fetched from it, verified, before anything
    /// reads them.
    pub fn checkpoint_objects_here(&self, checkpoint: &CheckpointRecord) -> Result<()> {
        remote::lazy::fetch_checkpoint(self, checkpoint, self.fetch_progress.clone())
            .map(|_| ())
            .map_err(|e| match e {
                remote::RemoteError::Store(inner) => inner,
                other => StoreError::Remote(Box::new(other)),
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index_path(&self) -> PathBuf {
        self.root.join("index")
    }

    pub fn objects(&self) -> &ObjectStore {
        &self.objects
    }

    /// Open the index (waiting while another process holds it) and absorb
    /// pending journals, so what it shows is up to date. Drop it soon: other
    /// processes wait while it is held.
    pub fn index(&self) -> Result<Index> {
        let index = Index::open(&self.index_path())?;
        index.absorb_journals(&self.root)?;
        Ok(index)
    }
}

/// Where the store is: `--store`, else `GRAFT_STORE`, else `./store`.
pub fn default_root(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    match std::env::var_os(STORE_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_STORE),
    }
}

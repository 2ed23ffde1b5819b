//! Sharing the record through a remote: a folder or an S3-compatible bucket
//! that several stores push to and pull from.
//!
//! The remote holds what the store holds, minus the sled index:
//!
//! - `objects/ab/cdef...`: object files, by hash, as in a store;
//! - `manifests/<kind>/<hash>`: records of one kind in a store-independent
//!   form (see [`manifest`]), named by the hash of their bytes;
//! - `commits/<hash>`: one per push, naming the manifests it wrote;
//! - `refs/<tag>`: a tag's target, JSON.
//!
//! A push uploads the objects the remote lacks, then the manifests of the
//! records the remote lacks, then its commit, then tags (compare-and-swap).
//! Every file but a tag is immutable and named by its content, so pushes
//! from several machines at once never overwrite each other, and a push cut
//! short leaves only files no commit names yet; running it again writes the
//! same names and completes it. A pull reads commits, fetches the manifests
//! they name (kept under `store/remotes/NAME/manifests/`), checks the
//! records, fetches and verifies every object they need, and only then
//! merges the records into the index (see [`share::absorb`]).
//!
//! A pull leaves checkpoint tensors on the remote unless `--with-objects`
//! is given; they are fetched when something loads the checkpoint (see
//! [`lazy`]).
//!
//! Local state: `store/remotes/NAME/remote.json` holds the URL and the tag
//! targets last seen on the remote, which is how a push tells a tag this
//! store moved from one someone else moved; `left-on-remote` lists the
//! checkpoints whose objects a pull left there.

pub mod backend;
pub mod lazy;
pub mod manifest;
pub mod share;
mod transfer;

use crate::store::canonical::Id;
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use backend::Location;
pub use transfer::{
    clone, pull, push, PullOptions, PullReport, PushOptions, PushReport, TagReport,
};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote URL `{url}` is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("`{name}` is not a usable remote name: {reason}")]
    BadName { name: String, reason: String },
    #[error("no remote named `{name}`{}", if known.is_empty() { " (this store has none)".to_string() } else { format!("; this store has: {}", known.join(", ")) })]
    UnknownRemote { name: String, known: Vec<String> },
    #[error("remote `{name}` already exists (it points at {url})")]
    RemoteExists { name: String, url: String },
    #[error("there is no graft record at {url}")]
    NoRecord { url: String },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: `{key}`: {reason}")]
    Transfer {
        url: String,
        key: String,
        reason: String,
    },
    #[error("{url}: `{key}` is damaged: {reason}")]
    BadManifest {
        url: String,
        key: String,
        reason: String,
    },
    #[error("the records from {url} do not hold together; nothing was written:\n  {}", problems.join("\n  "))]
    Invalid { url: String, problems: Vec<String> },
    #[error("object {id} ({owner}) is missing from this store")]
    MissingLocalObject { id: Id, owner: String },
    #[error("object {id} ({owner}) is not in this store; a metadata-only pull left it on remote `{remote}`, and {url} does not have it either")]
    OnlyOnOtherRemote {
        id: Id,
        owner: String,
        remote: String,
        url: String,
    },
    #[error("the tensors of checkpoint {checkpoint} ({objects} objects) are not in this store, and no remote that holds them can be reached:\n  {}", tried.join("\n  "))]
    CheckpointUnreachable {
        checkpoint: String,
        objects: usize,
        tried: Vec<String>,
    },
    #[error("object {id} ({owner}) is missing from {url}")]
    MissingRemoteObject { id: Id, owner: String, url: String },
    #[error("object {id} from {url} is corrupt: its bytes hash to {actual}; it was not written")]
    CorruptRemoteObject { id: Id, actual: Id, url: String },
    #[error("{} moved on {url} since this store last saw {}; tags not pushed:\n  {}", if tags.len() == 1 { "a tag was" } else { "tags were" }, if tags.len() == 1 { "it" } else { "them" }, tags.join("\n  "))]
    TagsMovedElsewhere { url: String, tags: Vec<String> },
    #[error("{} on {url} and here name different things; nothing was written:\n  {}", if tags.len() == 1 { "a tag" } else { "tags" }, tags.join("\n  "))]
    TagConflicts { url: String, tags: Vec<String> },
    #[error("`{reference}` names no tag, run or checkpoint on {url}")]
    UnknownRemoteRef { reference: String, url: String },
    #[error("cannot clone into {dir}: {reason}")]
    CloneTarget { dir: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RemoteError {
    /// What to do about it, for the CLI's hint line.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            RemoteError::BadUrl { .. } => "write file:///absolute/path or s3://bucket/prefix".into(),
            RemoteError::UnknownRemote { .. } => "`graft remote add NAME URL` adds one; `graft remote ls` lists them".into(),
            RemoteError::RemoteExists { .. } => "choose another name, or `graft remote remove NAME` first".into(),
            RemoteError::NoRecord { .. } => "check the URL; a remote has a record once something was pushed to it (`graft push NAME`)".into(),
            RemoteError::Unreachable { .. } | RemoteError::Transfer { .. } => "for S3 check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL (S3-compatible servers); run the command again to continue where it stopped".into(),
            RemoteError::BadManifest { .. } | RemoteError::CorruptRemoteObject { .. } | RemoteError::MissingRemoteObject { .. } => "push again from a store that has the record intact (`graft verify` there first); nothing damaged was written here".into(),
            RemoteError::Invalid { .. } => "the pushing store may be damaged: run `graft verify` there and push again".into(),
            RemoteError::MissingLocalObject { .. } => "run `graft verify` to list damaged objects; nothing was pushed for the missing one".into(),
            RemoteError::OnlyOnOtherRemote { remote, .. } => format!("`graft pull {remote} --with-objects` brings the tensors here, then push again"),
            RemoteError::CheckpointUnreachable { .. } => "the checkpoint was pulled without its tensors (`graft pull` without --with-objects): make the remote reachable (network, AWS_* credentials and endpoint; `graft remote ls` shows its URL) and run the command again".into(),
            RemoteError::TagsMovedElsewhere { .. } => "`graft pull NAME` to see where they point now, or push with --force to move them back to this store's targets".into(),
            RemoteError::TagConflicts { .. } => "pull with --force to take the remote's targets, or `graft tag NAME REF --force` to choose, then push".into(),
            RemoteError::UnknownRemoteRef { .. } => "give a tag, or a run or checkpoint id prefix, that was pushed there; without REF everything is pulled".into(),
            RemoteError::CloneTarget { .. } => "choose a folder that does not exist yet, or is empty".into(),
            _ => return None,
        })
    }

    /// Bad input (exit 2) as opposed to a check that failed or a breakage.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            RemoteError::BadUrl { .. }
                | RemoteError::BadName { .. }
                | RemoteError::UnknownRemote { .. }
                | RemoteError::RemoteExists { .. }
                | RemoteError::NoRecord { .. }
                | RemoteError::Unreachable { .. }
                | RemoteError::CheckpointUnreachable { .. }
                | RemoteError::OnlyOnOtherRemote { .. }
                | RemoteError::TagsMovedElsewhere { .. }
                | RemoteError::TagConflicts { .. }
                | RemoteError::UnknownRemoteRef { .. }
                | RemoteError::CloneTarget { .. }
        )
    }
}

/// A tag as the remote holds it. Two are equal when they name the same
/// target; when it was set travels along for display.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SharedTag {
    pub target: String,
    pub kind: String,
    #[serde(default)]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl PartialEq for SharedTag {
    fn eq(&self, other: &SharedTag) -> bool {
        self.target == other.target && self.kind == other.kind
    }
}

/// A remote as this store knows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteConfig {
    pub name: String,
    pub url: String,
    /// Tag targets on the remote as of this store's last push or pull.
    #[serde(default)]
    pub seen_tags: BTreeMap<String, SharedTag>,
}

fn remotes_dir(store_root: &Path) -> PathBuf {
    store_root.join("remotes")
}

pub(crate) fn remote_dir(store_root: &Path, name: &str) -> PathBuf {
    remotes_dir(store_root).join(name)
}

fn validate_name(name: &str) -> Result<(), RemoteError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RemoteError::BadName {
            name: name.to_string(),
            reason: "use letters, digits, `-` and `_` (at most 64)".into(),
        })
    }
}

/// Record a remote; its URL is checked for form, not reached.
pub fn add(store_root: &Path, name: &str, url: &str) -> Result<RemoteConfig, RemoteError> {
    validate_name(name)?;
    let location = Location::parse(url)?;
    if let Ok(existing) = load(store_root, name) {
        return Err(RemoteError::RemoteExists {
            name: name.to_string(),
            url: existing.url,
        });
    }
    let config = RemoteConfig {
        name: name.to_string(),
        url: location.url(),
        seen_tags: BTreeMap::new(),
    };
    save(store_root, &config)?;
    Ok(config)
}

/// Forget a remote (its local state too); the remote itself is untouched.
pub fn remove(store_root: &Path, name: &str) -> Result<RemoteConfig, RemoteError> {
    let config = load(store_root, name)?;
    let dir = remote_dir(store_root, name);
    std::fs::remove_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
    Ok(config)
}

/// Every remote, by name.
pub fn list(store_root: &Path) -> Result<Vec<RemoteConfig>, RemoteError> {
    let dir = remotes_dir(store_root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(&dir, e).into()),
    };
    let mut remotes = Vec::new();
    for entry in entries.flatten() {
        if entry.path().join("remote.json").is_file() {
            remotes.push(load(store_root, &entry.file_name().to_string_lossy())?);
        }
    }
    remotes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(remotes)
}

pub fn load(store_root: &Path, name: &str) -> Result<RemoteConfig, RemoteError> {
    validate_name(name)?;
    let path = remote_dir(store_root, name).join("remote.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RemoteError::UnknownRemote {
                name: name.to_string(),
                known: list(store_root)?.into_iter().map(|r| r.name).collect(),
            })
        }
        Err(e) => return Err(StoreError::io(&path, e).into()),
    };
    serde_json::from_str(&text).map_err(|e| {
        StoreError::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        )
        .into()
    })
}

pub(crate) fn save(store_root: &Path, config: &RemoteConfig) -> Result<(), RemoteError> {
    let dir = remote_dir(store_root, &config.name);
    let text = serde_json::to_string_pretty(config).expect("remote configs serialize");
    write_atomically(&dir, "remote.json", text.as_bytes())?;
    Ok(())
}

/// Write `dir/name` through a temp file and a rename.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| StoreError::io(dir, e))?;
    temp.write_all(bytes)
        .and_then(|_| temp.as_file().sync_all())
        .map_err(|e| StoreError::io(temp.path(), e))?;
    let target = dir.join(name);
    temp.persist(&target)
        .map_err(|e| StoreError::io(&target, e.error))?;
    crate::store::objects::sync_dir(dir);
    Ok(())
}

/// Reports on long transfers (the CLI draws a bar). Called from several
/// threads at once.
pub trait Progress: Send + Sync {
    /// A transfer of `items` files, `bytes` in all, begins.
    fn begin(&self, _what: &str, _items: u64, _bytes: u64) {}
    /// A file of `bytes` begins (for transfers whose sizes are learnt as
    /// they go).
    fn expect(&self, _bytes: u64) {}
    /// `bytes` more are done.
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
}

/// No reports.
pub struct Silent;

impl Progress for Silent {}

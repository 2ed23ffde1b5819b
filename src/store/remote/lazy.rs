//! Checkpoint tensors left on a remote by a metadata-only pull, and the
//! fetch that brings them when something loads the checkpoint.
//!
//! A pull without `--with-objects` brings every record but leaves the
//! objects of checkpoints where they are, and notes which checkpoints it
//! left in `store/remotes/NAME/left-on-remote` (one id per line). When
//! `fork`, `export`, `eval`, `generate`, `resume` or `reproduce` loads a
//! checkpoint whose objects are not here, [`fetch_checkpoint`] reads those
//! notes to find the remote that holds them and fetches what is missing,
//! each object verified by hash before it is written. `verify` reads the
//! same notes to tell an object that lives on a remote from one that is
//! lost.

use super::backend::{Backend, Location};
use super::transfer::fetch_objects;
use super::{list, remote_dir, write_atomically, Progress, RemoteConfig, RemoteError};
use crate::store::canonical::Id;
use crate::store::{CheckpointRecord, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

const NOTE: &str = "left-on-remote";

/// Add `checkpoints` to the note of what remote `name` holds for this store.
pub fn note_left_on_remote(
    store_root: &Path,
    name: &str,
    checkpoints: &BTreeSet<Id>,
) -> Result<(), RemoteError> {
    let mut noted = read_note(store_root, name)?;
    let before = noted.len();
    noted.extend(checkpoints.iter().copied());
    if noted.len() == before {
        return Ok(());
    }
    let text: String = noted
        .iter()
        .map(|id| format!("{}\n", id.to_hex()))
        .collect();
    write_atomically(&remote_dir(store_root, name), NOTE, text.as_bytes())?;
    Ok(())
}

fn read_note(store_root: &Path, name: &str) -> Result<BTreeSet<Id>, StoreError> {
    let path = remote_dir(store_root, name).join(NOTE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            Id::from_hex(line).ok_or_else(|| {
                StoreError::io(
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("`{line}` is not a checkpoint id"),
                    ),
                )
            })
        })
        .collect()
}

/// For every checkpoint a metadata-only pull left on a remote, the remotes
/// that hold its objects.
pub fn holders(store_root: &Path) -> Result<BTreeMap<Id, Vec<RemoteConfig>>, RemoteError> {
    let mut out: BTreeMap<Id, Vec<RemoteConfig>> = BTreeMap::new();
    for remote in list(store_root)? {
        for id in read_note(store_root, &remote.name)? {
            out.entry(id).or_default().push(remote.clone());
        }
    }
    Ok(out)
}

/// The objects of `checkpoint` that are not in this store, with what each is.
pub fn absent_objects(store: &Store, checkpoint: &CheckpointRecord) -> BTreeMap<Id, String> {
    checkpoint
        .tensors
        .iter()
        .chain(checkpoint.state.iter())
        .filter(|(_, id)| !store.objects().contains(id))
        .map(|(name, id)| {
            (
                *id,
                format!(
                    "checkpoint {} ({}@{}) `{name}`",
                    checkpoint.id.short(),
                    checkpoint.run.short(),
                    checkpoint.step
                ),
            )
        })
        .collect()
}

/// Make every object of `checkpoint` present: the ones a metadata-only pull
/// left on a remote are fetched from it. Returns how many were fetched.
/// A checkpoint whose objects are absent and that no remote holds is
/// reported as a missing object, as any lost object is.
pub fn fetch_checkpoint(
    store: &Store,
    checkpoint: &CheckpointRecord,
    progress: Arc<dyn Progress>,
) -> Result<usize, RemoteError> {
    let absent = absent_objects(store, checkpoint);
    let Some(first) = absent.keys().next().copied() else {
        return Ok(0);
    };
    let remotes = holders(store.root())?
        .remove(&checkpoint.id)
        .unwrap_or_default();
    if remotes.is_empty() {
        return Err(StoreError::MissingObject {
            id: first,
            path: store.objects().path_of(&first),
        }
        .into());
    }
    let mut unreachable = Vec::new();
    for remote in &remotes {
        let fetched = Location::parse(&remote.url)
            .and_then(|location| Backend::open(&location, false))
            .and_then(|backend| fetch_objects(store, &backend, &absent, &progress));
        match fetched {
            Ok(fetched) => {
                store.objects().sync()?;
                return Ok(fetched.received);
            }
            // Try the next remote that holds them; a damaged or missing
            // object is an answer, not a failure to reach.
            Err(e @ RemoteError::Unreachable { .. })
            | Err(e @ RemoteError::Transfer { .. })
            | Err(e @ RemoteError::NoRecord { .. }) => {
                unreachable.push(format!("remote `{}`: {e}", remote.name))
            }
            Err(e) => return Err(e),
        }
    }
    Err(RemoteError::CheckpointUnreachable {
        checkpoint: format!(
            "{} ({}@{})",
            checkpoint.id.short(),
            checkpoint.run.short(),
            checkpoint.step
        ),
        objects: absent.len(),
        tried: unreachable,
    })
}

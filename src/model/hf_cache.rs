//! Model ids (`Qwen/Qwen3-0.6B`) found in the local Hugging Face cache, offline.
//!
//! The cache is laid out as huggingface_hub writes it:
//! `<hub cache>/models--<org>--<name>/refs/<ref>` holds a commit hash, and
//! `snapshots/<commit>/` is the model folder at that commit (links into `blobs/`).
//! The hub cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`, as
//! huggingface_hub resolves it. Nothing is downloaded: a model that is not there is an
//! error naming the folder looked in.

use std::path::{Path, PathBuf};

use super::error::ModelError;

/// A model id resolved to a snapshot folder of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// `org/name`, as given.
    pub id: String,
    /// The commit hash of the snapshot.
    pub revision: String,
    /// `.../snapshots/<revision>`
    pub dir: PathBuf,
}

/// Whether `name` has the form of a Hub model id, `org/name` (optionally
/// `org/name@revision`): two parts of letters, digits, `-`, `_` and `.`, neither
/// starting with `.`.
pub fn is_model_id(name: &str) -> bool {
    let id = name.split_once('@').map_or(name, |(id, _)| id);
    let part_ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(id.split_once('/'), Some((org, repo)) if part_ok(org) && part_ok(repo))
}

/// The hub cache folder the environment names (see the module docs).
pub fn hub_cache_dir() -> PathBuf {
    let var = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let cache = var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home_dir().join(".cache"));
        cache.join("huggingface")
    });
    hf_home.join("hub")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("~"))
}

/// `name` (`org/name` or `org/name@revision`) in the hub cache of the environment.
pub fn find(name: &str) -> Result<CachedModel, ModelError> {
    find_in(&hub_cache_dir(), name)
}

/// `name` in the hub cache `cache`. Without `@revision`, `refs/main` picks the
/// snapshot; a revision is a ref name (`refs/<revision>`) or a commit hash.
pub fn find_in(cache: &Path, name: &str) -> Result<CachedModel, ModelError> {
    let (id, revision) = match name.split_once('@') {
        Some((id, revision)) => (id, revision),
        None => (name, "main"),
    };
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let not_cached = |detail: String| ModelError::NotInCache {
        id: name.to_string(),
        detail,
    };
    if !repo.is_dir() {
        return Err(not_cached(format!(
            "no folder {} (the hub cache is HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub; graft does not download: fetch it with `huggingface-cli download {id}`)",
            repo.display()
        )));
    }
    let ref_file = repo.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(text) => text.trim().to_string(),
        // Not a ref: a commit hash names its snapshot directly.
        Err(_) if repo.join("snapshots").join(revision).is_dir() => revision.to_string(),
        Err(e) => {
            return Err(not_cached(format!(
                "{}: {e} (no such ref, and no snapshot by that name)",
                ref_file.display()
            )))
        }
    };
    let dir = repo.join("snapshots").join(&commit);
    if !dir.join("config.json").is_file() {
        return Err(not_cached(format!(
            "{} has no config.json ({} names commit {commit}; is the download complete?)",
            dir.display(),
            ref_file.display()
        )));
    }
    Ok(CachedModel {
        id: id.to_string(),
        revision: commit,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_org_slash_name_with_an_optional_revision() {
        for id in [
            "Qwen/Qwen3-0.6B",
            "google/gemma-3-1b-it",
            "a/b@main",
            "x_y/z.v2",
        ] {
            assert!(is_model_id(id), "{id}");
        }
        for not in ["./a/b", "a/b/c", "abc", "/abs", "a/", "../x", "a b/c"] {
            assert!(!is_model_id(not), "{not}");
        }
    }
}

//! `push`, `pull` and `clone`: the order of their steps is what keeps both
//! sides consistent when one is cut short (see the module above).

use super::backend::{Backend, Location, Written};
use super::manifest::{self, Commit, Kind, SharedRecord};
use super::share::{self, AbsorbCounts};
use super::{load, remote_dir, save, Progress, RemoteError, SharedTag};
use crate::store::adapters::read_adapter;
use crate::store::canonical::{object_id, Id, ObjectHasher};
use crate::store::refs::Target;
use crate::store::{Store, StoreError};
use futures::FutureExt;
use object_store::path::Path as Key;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Files above this size go up in parts.
const PART_SIZE: usize = 8 << 20;
/// Transfers in flight at once.
const PARALLEL: usize = 8;

fn object_key(id: &Id) -> String {
    let hex = id.to_hex();
    format!("objects/{}/{}", &hex[..2], &hex[2..])
}

fn manifest_key(kind: Kind, id: &Id) -> String {
    format!("manifests/{}/{}", kind.name(), id.to_hex())
}

fn tag_key(name: &str) -> String {
    format!("refs/{name}")
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushOptions {
    /// Runs (with their ancestry) and tags to push; empty: everything.
    pub refs: Vec<String>,
    /// Move tags on the remote even when someone else moved them.
    pub force: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TagReport {
    pub name: String,
    pub target: String,
    /// `created`, `moved`, `unchanged` (push and pull), `skipped` (pull:
    /// its target was not pulled).
    pub action: String,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushReport {
    pub remote: String,
    pub url: String,
    pub objects_sent: usize,
    pub bytes_sent: u64,
    pub objects_already_there: usize,
    /// New records by kind (the remote held the others already).
    pub records_sent: BTreeMap<&'static str, usize>,
    /// The commit this push wrote, if it had records to send.
    pub commit: Option<String>,
    pub tags: Vec<TagReport>,
}

/// Push this store's record (or the runs `options.refs` name, with their
/// ancestry) to remote `name`.
pub fn push(
    store: &Store,
    name: &str,
    options: &PushOptions,
    progress: Arc<dyn Progress>,
) -> Result<PushReport, RemoteError> {
    let mut config = load(store.root(), name)?;
    let location = Location::parse(&config.url)?;
    let backend = Backend::open(&location, true)?;

    // What to send, read while holding the index as briefly as possible.
    let index = store.index()?;
    let mut records = share::collect(&index)?;
    let all_tags = index.tags()?;
    let mut tags = Vec::new();
    if !options.refs.is_empty() {
        let mut roots = Vec::new();
        for reference in &options.refs {
            roots.push(index.resolve_run(reference)?);
            if let Some(tag) = all_tags.iter().find(|t| t.name == *reference) {
                tags.push(tag.clone());
            }
        }
        let runs = manifest::ancestry(&records, &roots);
        records = manifest::select(records, &runs);
    } else {
        tags = all_tags;
    }
    drop(index);

    let pinned = manifest::pinned_checkpoints(
        &records,
        tags.iter()
            .filter(|t| t.kind == "checkpoint")
            .map(|t| t.target),
    );
    let mut needed: BTreeMap<Id, String> = BTreeMap::new();
    for record in &records {
        for (id, owner) in manifest::record_objects(record, &pinned) {
            needed.entry(id).or_insert(owner);
        }
        if let SharedRecord::Run(run) = record {
            if let Some(adapter) = crate::store::adapters::recipe_adapter(&run.recipe.config) {
                let stored = read_adapter(store.objects(), &adapter)?;
                for id in stored.objects() {
                    needed
                        .entry(id)
                        .or_insert_with(|| format!("start adapter of run {}", run.id.short()));
                }
            }
        }
    }

    // 1. Objects the remote lacks. One that is not here either must be on
    // the remote already: a metadata-only pull left it on another remote.
    let present: BTreeSet<Id> = backend
        .list("objects")?
        .into_iter()
        .filter_map(|(key, _)| object_id_of_key(&key))
        .collect();
    let already_there = needed.keys().filter(|id| present.contains(id)).count();
    needed.retain(|id, _| !present.contains(id));
    check_here(store, &needed, &config.url)?;
    let missing: Vec<(Id, u64)> = needed
        .keys()
        .map(|id| (*id, store.objects().size_of(id)))
        .collect();
    let mut report = PushReport {
        remote: name.to_string(),
        url: config.url.clone(),
        objects_sent: missing.len(),
        bytes_sent: missing.iter().map(|(_, size)| size).sum(),
        objects_already_there: already_there,
        ..PushReport::default()
    };
    progress.begin("objects up", missing.len() as u64, report.bytes_sent);
    let objects = store.objects().clone();
    let url = config.url.clone();
    let bar = progress.clone();
    backend.run_parallel(missing, PARALLEL, move |remote, (id, size)| {
        let path = objects.path_of(&id);
        let url = url.clone();
        let bar = bar.clone();
        async move {
            upload_object(remote.as_ref(), &url, &id, &path).await?;
            bar.advance(size);
            Ok(())
        }
        .boxed()
    })?;
    progress.end();

    // 2. Records the remote lacks, one manifest per kind, then the commit.
    let cache = remote_dir(store.root(), name).join("manifests");
    let remote_records = read_remote_records(&backend, &cache)?;
    let known: BTreeSet<Id> = remote_records.records.iter().map(|r| r.digest()).collect();
    let fresh: Vec<SharedRecord> = records
        .into_iter()
        .filter(|r| !known.contains(&r.digest()))
        .collect();
    report.records_sent = share::count_by_kind(&fresh);
    if !fresh.is_empty() {
        let mut commit = Commit {
            manifests: Vec::new(),
            pushed_at: chrono::Utc::now(),
            host: crate::store::index::host_name(),
        };
        for kind in Kind::ALL {
            let of_kind: Vec<SharedRecord> =
                fresh.iter().filter(|r| r.kind() == kind).cloned().collect();
            if of_kind.is_empty() {
                continue;
            }
            let bytes = manifest::encode_manifest(kind, &of_kind);
            slow_down();
            let id = object_id(&bytes);
            backend.put(&manifest_key(kind, &id), bytes.clone())?;
            super::write_atomically(&cache, &id.to_hex(), &bytes)?;
            commit.manifests.push((kind, id));
        }
        let bytes = manifest::encode_commit(&commit);
        slow_down();
        let id = object_id(&bytes);
        backend.put(&format!("commits/{}", id.to_hex()), bytes)?;
        report.commit = Some(id.to_hex());
    }

    // 3. Tags, last: each a compare-and-swap against what the remote held.
    let mut plans = Vec::new();
    let mut refused = Vec::new();
    for tag in &tags {
        let wanted = SharedTag {
            target: tag.target.to_hex(),
            kind: tag.kind.clone(),
            created_at: Some(tag.created_at),
        };
        let current = backend.get(&tag_key(&tag.name))?;
        let current_tag = current.as_ref().and_then(|v| parse_tag(&v.bytes));
        if current_tag.as_ref() == Some(&wanted) {
            config.seen_tags.insert(tag.name.clone(), wanted.clone());
            report
                .tags
                .push(tag_report(&tag.name, &wanted, "unchanged"));
            continue;
        }
        let seen = config.seen_tags.get(&tag.name);
        let moved_elsewhere = match &current_tag {
            None => current.is_some() && !options.force,
            Some(now) => seen != Some(now) && !options.force,
        };
        if moved_elsewhere {
            refused.push(format!(
                "{}: the remote names {} {}, this store {} {}",
                tag.name,
                current_tag.as_ref().map_or("?", |t| t.kind.as_str()),
                current_tag.as_ref().map_or("?", |t| short(&t.target)),
                wanted.kind,
                short(&wanted.target)
            ));
            continue;
        }
        plans.push((tag.name.clone(), wanted, current));
    }
    if !refused.is_empty() {
        save(store.root(), &config)?;
        return Err(RemoteError::TagsMovedElsewhere {
            url: config.url.clone(),
            tags: refused,
        });
    }
    for (name, wanted, current) in plans {
        let bytes = serde_json::to_vec(&wanted).expect("tags serialize");
        let action = if current.is_some() {
            "moved"
        } else {
            "created"
        };
        crate::store::faults::pause_before_tag_write();
        match backend.put_if(&tag_key(&name), bytes, current.as_ref())? {
            Written::Done => {}
            Written::Conflict => {
                save(store.root(), &config)?;
                return Err(RemoteError::TagsMovedElsewhere {
                    url: config.url.clone(),
                    tags: vec![format!("{name}: changed on the remote during this push")],
                });
            }
        }
        report.tags.push(tag_report(&name, &wanted, action));
        config.seen_tags.insert(name, wanted);
    }
    save(store.root(), &config)?;
    Ok(report)
}

/// Every object a push must send is here; one that is not is named, with
/// the remote a metadata-only pull left it on when there is one.
fn check_here(store: &Store, needed: &BTreeMap<Id, String>, url: &str) -> Result<(), RemoteError> {
    let Some((id, owner)) = needed.iter().find(|(id, _)| !store.objects().contains(id)) else {
        return Ok(());
    };
    let holders = super::lazy::holders(store.root())?;
    let holder = store
        .index()?
        .all_checkpoints()?
        .into_iter()
        .filter(|c| c.tensors.values().chain(c.state.values()).any(|o| o == id))
        .find_map(|c| {
            holders
                .get(&c.id)
                .and_then(|remotes| remotes.first().cloned())
        });
    Err(match holder {
        Some(remote) => RemoteError::OnlyOnOtherRemote {
            id: *id,
            owner: owner.clone(),
            remote: remote.name,
            url: url.to_string(),
        },
        None => RemoteError::MissingLocalObject {
            id: *id,
            owner: owner.clone(),
        },
    })
}

/// The test hook of `faults::transfer_delay`.
fn slow_down() {
    if let Some(delay) = crate::store::faults::transfer_delay() {
        std::thread::sleep(delay);
    }
}

fn tag_report(name: &str, tag: &SharedTag, action: &str) -> TagReport {
    TagReport {
        name: name.to_string(),
        target: format!("{} {}", tag.kind, tag.target),
        action: action.to_string(),
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

fn parse_tag(bytes: &[u8]) -> Option<SharedTag> {
    let tag: SharedTag = serde_json::from_slice(bytes).ok()?;
    Id::from_hex(&tag.target)?;
    Some(tag)
}

fn object_id_of_key(key: &str) -> Option<Id> {
    let rest = key.strip_prefix("objects/")?;
    let (dir, file) = rest.split_once('/')?;
    Id::from_hex(&format!("{dir}{file}"))
}

/// Send one object, hashing what is read: a local file that no longer
/// matches its name is refused, not spread.
async fn upload_object(
    remote: &dyn object_store::ObjectStore,
    url: &str,
    id: &Id,
    path: &Path,
) -> Result<(), RemoteError> {
    let key = object_key(id);
    let transfer = |e: object_store::Error| RemoteError::Transfer {
        url: url.to_string(),
        key: key.clone(),
        reason: e.to_string(),
    };
    slow_down();
    let mut file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let size = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let corrupt = |actual: Id| StoreError::CorruptObject {
        id: *id,
        actual,
        path: path.to_path_buf(),
    };
    if size as usize <= PART_SIZE {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| StoreError::io(path, e))?;
        let actual = object_id(&bytes);
        if actual != *id {
            return Err(corrupt(actual).into());
        }
        remote
            .put(&Key::from(key.as_str()), bytes.into())
            .await
            .map_err(transfer)?;
        return Ok(());
    }
    let upload = remote
        .put_multipart(&Key::from(key.as_str()))
        .await
        .map_err(transfer)?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut hasher = ObjectHasher::new();
    let mut buffer = vec![0u8; PART_SIZE];
    loop {
        let n = match file.read(&mut buffer) {
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(StoreError::io(path, e).into());
            }
        };
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        writer.wait_for_capacity(4).await.map_err(transfer)?;
        writer.write(&buffer[..n]);
    }
    let actual = hasher.finish();
    if actual != *id {
        let _ = writer.abort().await;
        return Err(corrupt(actual).into());
    }
    writer.finish().await.map_err(transfer)?;
    Ok(())
}

/// Fetch one object into the store, verified before it lands.
async fn download_object(
    remote: &dyn object_store::ObjectStore,
    url: &str,
    objects: &crate::store::ObjectStore,
    id: &Id,
    owner: &str,
    progress: &dyn Progress,
) -> Result<u64, RemoteError> {
    use futures::StreamExt;
    let key = object_key(id);
    let transfer = |e: object_store::Error| RemoteError::Transfer {
        url: url.to_string(),
        key: key.clone(),
        reason: e.to_string(),
    };
    slow_down();
    let got = match remote.get(&Key::from(key.as_str())).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(RemoteError::MissingRemoteObject {
                id: *id,
                owner: owner.to_string(),
                url: url.to_string(),
            })
        }
        Err(e) => return Err(transfer(e)),
    };
    let size = got.meta.size;
    progress.expect(size);
    let mut pending = objects.begin_expected(*id)?;
    if size <= PART_SIZE as u64 {
        // One read: a folder remote streams in 8 KiB pieces, each a
        // blocking task, which made graft, not the disk, the limit.
        let bytes = got.bytes().await.map_err(transfer)?;
        pending.write(&bytes)?;
        progress.advance(bytes.len() as u64);
    } else {
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(transfer)?;
            pending.write(&chunk)?;
            progress.advance(chunk.len() as u64);
        }
    }
    match pending.commit() {
        Ok(()) => Ok(size),
        Err(StoreError::CorruptObject { actual, .. }) => Err(RemoteError::CorruptRemoteObject {
            id: *id,
            actual,
            url: url.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Every record on the remote (each commit's manifests), read through the
/// local cache of manifests; each file is verified against its name.
struct RemoteRecords {
    commits: usize,
    records: Vec<SharedRecord>,
}

fn read_remote_records(backend: &Backend, cache: &Path) -> Result<RemoteRecords, RemoteError> {
    let mut commits: Vec<(String, Id)> = backend
        .list("commits")?
        .into_iter()
        .filter_map(|(key, _)| {
            let id = Id::from_hex(key.rsplit('/').next()?)?;
            Some((key, id))
        })
        .collect();
    commits.sort();
    let damaged = |key: &str, reason: String| RemoteError::BadManifest {
        url: backend.url().to_string(),
        key: key.to_string(),
        reason,
    };
    let fetch = |key: &str, id: &Id, cached: bool| -> Result<Vec<u8>, RemoteError> {
        let path = cache.join(id.to_hex());
        if cached {
            if let Ok(bytes) = std::fs::read(&path) {
                if object_id(&bytes) == *id {
                    return Ok(bytes);
                }
            }
        }
        let bytes = backend
            .get(key)?
            .ok_or_else(|| damaged(key, "named by a commit but not there".into()))?
            .bytes;
        let actual = object_id(&bytes);
        if actual != *id {
            return Err(damaged(key, format!("its bytes hash to {actual}")));
        }
        if cached {
            super::write_atomically(cache, &id.to_hex(), &bytes)?;
        }
        Ok(bytes)
    };
    let mut seen = BTreeSet::new();
    let mut records = Vec::new();
    for (key, id) in &commits {
        let commit = manifest::decode_commit(&fetch(key, id, false)?)
            .map_err(|reason| damaged(key, reason))?;
        for (kind, manifest_id) in commit.manifests {
            let key = manifest_key(kind, &manifest_id);
            let (found, list) = manifest::decode_manifest(&fetch(&key, &manifest_id, true)?)
                .map_err(|reason| damaged(&key, reason))?;
            if found != kind {
                return Err(damaged(&key, format!("holds {}", found.name())));
            }
            for record in list {
                if seen.insert(record.digest()) {
                    records.push(record);
                }
            }
        }
    }
    Ok(RemoteRecords {
        commits: commits.len(),
        records,
    })
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PullOptions {
    /// Runs (with their ancestry) and tags to pull; empty: everything.
    pub refs: Vec<String>,
    /// Take the remote's target for tags that differ here.
    pub force: bool,
    /// Fetch checkpoint tensors now; without it they stay on the remote
    /// until something loads the checkpoint (see [`super::lazy`]).
    pub with_objects: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PullReport {
    pub remote: String,
    pub url: String,
    pub objects_received: usize,
    pub bytes_received: u64,
    pub objects_already_here: usize,
    /// Checkpoints whose tensors were left on the remote (metadata-only
    /// pull), and how many objects they name that are not here.
    pub checkpoints_left_on_remote: usize,
    pub objects_left_on_remote: usize,
    /// New records by kind.
    pub records_added: AbsorbCounts,
    pub tags: Vec<TagReport>,
}

/// Pull remote `name`'s record (or the runs `options.refs` name, with their
/// ancestry) into this store.
pub fn pull(
    store: &Store,
    name: &str,
    options: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<PullReport, RemoteError> {
    let mut config = load(store.root(), name)?;
    let location = Location::parse(&config.url)?;
    let backend = Backend::open(&location, false)?;
    let cache = remote_dir(store.root(), name).join("manifests");
    let remote = read_remote_records(&backend, &cache)?;
    let mut records = remote.records;
    let mut remote_tags: BTreeMap<String, SharedTag> = BTreeMap::new();
    for (key, _) in backend.list("refs")? {
        let tag_name = key.trim_start_matches("refs/").to_string();
        if let Some(tag) = backend.get(&key)?.and_then(|v| parse_tag(&v.bytes)) {
            remote_tags.insert(tag_name, tag);
        }
    }
    if remote.commits == 0 && remote_tags.is_empty() {
        return Err(RemoteError::NoRecord {
            url: config.url.clone(),
        });
    }
    if !options.refs.is_empty() {
        let mut roots = Vec::new();
        let mut named = BTreeMap::new();
        for reference in &options.refs {
            let run = resolve_remote(&records, &remote_tags, reference).ok_or_else(|| {
                RemoteError::UnknownRemoteRef {
                    reference: reference.clone(),
                    url: config.url.clone(),
                }
            })?;
            roots.push(run);
            if let Some(tag) = remote_tags.get(reference) {
                named.insert(reference.clone(), tag.clone());
            }
        }
        let runs = manifest::ancestry(&records, &roots);
        records = manifest::select(records, &runs);
        remote_tags = named;
    }

    // Check everything before writing anything.
    let index = store.index()?;
    let problems = manifest::validate(&records, &index);
    if !problems.is_empty() {
        return Err(RemoteError::Invalid {
            url: config.url.clone(),
            problems,
        });
    }
    let incoming: BTreeSet<Id> = records
        .iter()
        .filter_map(|r| match r {
            SharedRecord::Model(m) => Some(m.id),
            SharedRecord::Dataset(d) => Some(d.id),
            SharedRecord::Run(r) => Some(r.id),
            SharedRecord::Checkpoint { record, .. } => Some(record.id),
            _ => None,
        })
        .collect();
    let mut tag_plan = Vec::new();
    let mut conflicts = Vec::new();
    let mut report = PullReport {
        remote: name.to_string(),
        url: config.url.clone(),
        ..PullReport::default()
    };
    for (tag_name, tag) in &remote_tags {
        let Some(target) = Id::from_hex(&tag.target) else {
            continue;
        };
        let lands = incoming.contains(&target) || index_has(&index, &tag.kind, &target)?;
        let valid = crate::store::refs::validate_tag_name(tag_name).is_ok();
        if !lands || !valid || target_of(&tag.kind, target).is_none() {
            report.tags.push(tag_report(tag_name, tag, "skipped"));
            continue;
        }
        let local = index.get_ref(tag_name)?.map(|r| SharedTag {
            target: r.target.to_hex(),
            kind: r.kind,
            created_at: Some(r.created_at),
        });
        match &local {
            Some(local) if local == tag => {
                report.tags.push(tag_report(tag_name, tag, "unchanged"));
                config.seen_tags.insert(tag_name.clone(), tag.clone());
            }
            Some(local) if config.seen_tags.get(tag_name) != Some(local) && !options.force => {
                conflicts.push(format!(
                    "{tag_name}: the remote names {} {}, this store {} {}",
                    tag.kind,
                    short(&tag.target),
                    local.kind,
                    short(&local.target)
                ))
            }
            _ => tag_plan.push((tag_name.clone(), tag.clone(), local.is_some())),
        }
    }
    if !conflicts.is_empty() {
        return Err(RemoteError::TagConflicts {
            url: config.url.clone(),
            tags: conflicts,
        });
    }
    drop(index);

    // Objects first, each verified: records that refer to them come after.
    let pinned = manifest::pinned_checkpoints(
        &records,
        remote_tags
            .values()
            .filter(|t| t.kind == "checkpoint")
            .filter_map(|t| Id::from_hex(&t.target)),
    );
    // Checkpoint tensors stay on the remote unless asked for: the lazy
    // fetch brings a checkpoint's when something loads it.
    let mut needed: BTreeMap<Id, String> = BTreeMap::new();
    let mut left_on_remote = BTreeSet::new();
    for record in &records {
        let objects = manifest::record_objects(record, &pinned);
        if let (
            SharedRecord::Checkpoint {
                record: checkpoint, ..
            },
            false,
        ) = (record, options.with_objects)
        {
            let absent = objects
                .iter()
                .filter(|(id, _)| !store.objects().contains(id))
                .count();
            if absent > 0 {
                left_on_remote.insert(checkpoint.id);
                report.objects_left_on_remote += absent;
            }
            continue;
        }
        for (id, owner) in objects {
            needed.entry(id).or_insert(owner);
        }
    }
    report.checkpoints_left_on_remote = left_on_remote.len();
    let mut fetched = fetch_objects(store, &backend, &needed, &progress)?;
    // An outside adapter's manifest names two more objects.
    let mut adapter_objects = BTreeMap::new();
    for record in &records {
        if let SharedRecord::Run(run) = record {
            if let Some(adapter) = crate::store::adapters::recipe_adapter(&run.recipe.config) {
                for id in read_adapter(store.objects(), &adapter)?.objects() {
                    adapter_objects.insert(id, format!("start adapter of run {}", run.id.short()));
                }
            }
        }
    }
    let more = fetch_objects(store, &backend, &adapter_objects, &progress)?;
    fetched.received += more.received;
    fetched.bytes += more.bytes;
    fetched.already_here += more.already_here;
    report.objects_received = fetched.received;
    report.bytes_received = fetched.bytes;
    report.objects_already_here = fetched.already_here;
    // Where the tensors left behind live, written before the records that
    // name them: a pull killed in between leaves a note that names
    // checkpoints not here yet, which nothing reads.
    super::lazy::note_left_on_remote(store.root(), name, &left_on_remote)?;
    // Every object on disk before any record that names it.
    store.objects().sync()?;

    // Then records, then tags.
    let index = store.index()?;
    report.records_added = share::absorb(&index, records)?;
    for (tag_name, tag, existed) in tag_plan {
        let target = Id::from_hex(&tag.target)
            .and_then(|id| target_of(&tag.kind, id))
            .ok_or_else(|| RemoteError::BadManifest {
                url: config.url.clone(),
                key: tag_key(&tag_name),
                reason: "not a tag".into(),
            })?;
        index.put_ref(&crate::store::RefRecord {
            name: tag_name.clone(),
            target: target.id(),
            kind: target.kind().to_string(),
            created_at: tag.created_at.unwrap_or_else(chrono::Utc::now),
        })?;
        report.tags.push(tag_report(
            &tag_name,
            &tag,
            if existed { "moved" } else { "created" },
        ));
        config.seen_tags.insert(tag_name, tag);
    }
    index.flush()?;
    drop(index);
    save(store.root(), &config)?;
    Ok(report)
}

/// What [`fetch_objects`] did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Fetched {
    pub received: usize,
    pub bytes: u64,
    pub already_here: usize,
}

/// Fetch the objects of `needed` (id -> what needs it) that this store
/// lacks, several at once, each verified before it lands. Sizes come with
/// each response, so no listing of the remote is needed.
pub(super) fn fetch_objects(
    store: &Store,
    backend: &Backend,
    needed: &BTreeMap<Id, String>,
    progress: &Arc<dyn Progress>,
) -> Result<Fetched, RemoteError> {
    let missing: Vec<(Id, String)> = needed
        .iter()
        .filter(|(id, _)| !store.objects().contains(id))
        .map(|(id, owner)| (*id, owner.clone()))
        .collect();
    let mut fetched = Fetched {
        already_here: needed.len() - missing.len(),
        received: missing.len(),
        ..Fetched::default()
    };
    if missing.is_empty() {
        return Ok(fetched);
    }
    progress.begin("objects down", missing.len() as u64, 0);
    let objects = store.objects().clone();
    let url = backend.url().to_string();
    let bar = progress.clone();
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = bytes.clone();
    let result = backend.run_parallel(missing, PARALLEL, move |remote, (id, owner)| {
        let objects = objects.clone();
        let url = url.clone();
        let bar = bar.clone();
        let total = total.clone();
        async move {
            let size =
                download_object(remote.as_ref(), &url, &objects, &id, &owner, bar.as_ref()).await?;
            total.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        .boxed()
    });
    progress.end();
    result?;
    fetched.bytes = bytes.load(std::sync::atomic::Ordering::Relaxed);
    Ok(fetched)
}

fn index_has(index: &crate::store::Index, kind: &str, id: &Id) -> Result<bool, RemoteError> {
    Ok(match kind {
        "model" => index.get_model(id)?.is_some(),
        "dataset" => index.get_dataset(id)?.is_some(),
        "run" => index.get_run(id)?.is_some(),
        "checkpoint" => index.get_checkpoint(id)?.is_some(),
        _ => false,
    })
}

fn target_of(kind: &str, id: Id) -> Option<Target> {
    Some(match kind {
        "model" => Target::Model(id),
        "dataset" => Target::Dataset(id),
        "run" => Target::Run(id),
        "checkpoint" => Target::Checkpoint(id),
        _ => return None,
    })
}

/// The run a pull REF names on the remote: a tag, a run or checkpoint id
/// prefix, either with an `@...` selector (the whole run comes).
fn resolve_remote(
    records: &[SharedRecord],
    tags: &BTreeMap<String, SharedTag>,
    reference: &str,
) -> Option<Id> {
    let base = reference.split('@').next().unwrap_or(reference);
    let run_of_checkpoint = |id: &Id| {
        records.iter().find_map(|r| match r {
            SharedRecord::Checkpoint { record, .. } if record.id == *id => Some(record.run),
            _ => None,
        })
    };
    if let Some(tag) = tags.get(base) {
        let id = Id::from_hex(&tag.target)?;
        return match tag.kind.as_str() {
            "run" => Some(id),
            "checkpoint" => run_of_checkpoint(&id),
            _ => None,
        };
    }
    let prefix = base.to_ascii_lowercase();
    if prefix.len() < crate::store::refs::MIN_PREFIX {
        return None;
    }
    let matches: BTreeSet<Id> = records
        .iter()
        .filter_map(|r| match r {
            SharedRecord::Run(run) if run.id.to_hex().starts_with(&prefix) => Some(run.id),
            SharedRecord::Checkpoint { record, .. } if record.id.to_hex().starts_with(&prefix) => {
                Some(record.run)
            }
            _ => None,
        })
        .collect();
    if matches.len() == 1 {
        matches.into_iter().next()
    } else {
        None
    }
}

/// Make `dir` a store holding the record at `url`, with `url` as remote
/// `origin`; checkpoint tensors stay there unless `with_objects`. A clone
/// cut short is completed by running it again.
pub fn clone(
    url: &str,
    dir: &Path,
    with_objects: bool,
    progress: Arc<dyn Progress>,
) -> Result<(Store, PullReport), RemoteError> {
    let location = Location::parse(url)?;
    let resuming = match load(dir, "origin") {
        Ok(origin) if origin.url == location.url() => true,
        Ok(origin) => {
            return Err(RemoteError::CloneTarget {
                dir: dir.to_path_buf(),
                reason: format!("it is a store whose origin is {}", origin.url),
            })
        }
        Err(_) => false,
    };
    if !resuming {
        let occupied = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
        if occupied {
            return Err(RemoteError::CloneTarget {
                dir: dir.to_path_buf(),
                reason: "it exists and is not empty".into(),
            });
        }
        // Reach the remote before creating anything.
        let backend = Backend::open(&location, false)?;
        if backend.list("commits")?.is_empty() {
            return Err(RemoteError::NoRecord {
                url: location.url(),
            });
        }
    }
    let created = !dir.exists();
    let cloned = Store::open_or_init(dir)
        .map_err(RemoteError::from)
        .and_then(|store| {
            if !resuming {
                super::add(dir, "origin", &location.url())?;
            }
            let options = PullOptions {
                with_objects,
                ..PullOptions::default()
            };
            let report = pull(&store, "origin", &options, progress)?;
            Ok((store, report))
        });
    if cloned.is_err() && !resuming {
        // A clone refused (a damaged remote, say) leaves nothing behind; one
        // killed part way stays, and running it again completes it.
        if created {
            let _ = std::fs::remove_dir_all(dir);
        } else if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    cloned
}

//! Keeping the served snapshot current without starving writers.
//!
//! One thread polls, every [`POLL`], two cheap signals: the index's files
//! (their names, lengths and times change when any process writes the
//! index) and the journal files (their lengths grow as trainers record).
//! A journal change is applied from the journal files alone, without the
//! index lock (see [`super::live`]). An index change refreshes the
//! snapshot: new runs, the runs with journals and changed tags are read
//! again ([`Snapshot::refresh`]), which costs what changed. Everything is
//! read again ([`Snapshot::load`]) at most every [`FULL_RELOAD_GAP`], for
//! changes no journal announces (gc, pull). Each visit holds the lock once;
//! after one that took `t`, the next of its kind waits at least 4 t, so
//! each kind holds the lock at most a fifth of the time however busy the
//! store is, and trainers (which retry with jitter) get it in between.

use super::live::{apply_journals, journal_files};
use super::snapshot::Snapshot;
use crate::store::{Id, Index, Store};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

pub const POLL: Duration = Duration::from_millis(100);
pub const MIN_RELOAD_GAP: Duration = Duration::from_millis(250);
pub const FULL_RELOAD_GAP: Duration = Duration::from_secs(30);

/// The snapshot requests read, and a counter that changes with it.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    version: tokio::sync::watch::Sender<u64>,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn publish(&self, snapshot: Snapshot) {
        match self.snapshot.write() {
            Ok(mut guard) => *guard = Arc::new(snapshot),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(snapshot),
        }
        self.version.send_modify(|v| *v += 1);
    }
}

/// What the index's files look like: any write by any process changes it.
fn index_signature(index_path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let Ok(entries) = std::fs::read_dir(index_path) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            Some((entry.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// Read the record once: open the index (waiting while a writer holds
/// it), copy what the UI shows, and let go. With `active`, only what can
/// have changed (see [`Snapshot::refresh`]).
fn load(
    store: &Store,
    previous: Option<&Snapshot>,
    active: Option<&BTreeSet<Id>>,
) -> crate::store::Result<Snapshot> {
    let index = Index::open(&store.index_path())?;
    match (previous, active) {
        (Some(previous), Some(active)) => Snapshot::refresh(&index, previous, active),
        _ => Snapshot::load(&index, previous),
    }
}

/// The runs whose journals are listed: absorption changes their records.
fn journal_runs(files: &[(PathBuf, u64)]) -> BTreeSet<Id> {
    files
        .iter()
        .filter_map(|(path, _)| {
            let name = path.file_name()?.to_string_lossy().to_string();
            crate::store::journal::parse_journal_name(&name).map(|(run, _)| run)
        })
        .collect()
}

/// The first snapshot, read before the server answers anything.
pub fn start(store: &Store) -> crate::store::Result<(Arc<Shared>, Watcher)> {
    let started = Instant::now();
    let base = load(store, None, None)?;
    let load_time = started.elapsed();
    let files = journal_files(store.root());
    let current = apply_journals(&base, &files);
    let (version, _) = tokio::sync::watch::channel(1);
    let shared = Arc::new(Shared {
        snapshot: RwLock::new(Arc::new(current)),
        version,
        stop: AtomicBool::new(false),
    });
    let watcher = Watcher {
        store: store.clone(),
        shared: shared.clone(),
        base,
        // Taken after our own visit, which may touch sled's files: only a
        // later write by another process should reload.
        index_seen: index_signature(&store.index_path()),
        journals_seen: files,
        last_reload: Instant::now(),
        reload_gap: MIN_RELOAD_GAP,
        last_full: Instant::now(),
        full_gap: FULL_RELOAD_GAP.max(load_time * 4),
        changed_since_full: false,
    };
    Ok((shared, watcher))
}

pub struct Watcher {
    store: Store,
    shared: Arc<Shared>,
    base: Snapshot,
    index_seen: Vec<(PathBuf, u64, Option<SystemTime>)>,
    journals_seen: Vec<(PathBuf, u64)>,
    last_reload: Instant,
    reload_gap: Duration,
    last_full: Instant,
    full_gap: Duration,
    /// The index changed after the last full read.
    changed_since_full: bool,
}

impl Watcher {
    /// Poll until `shared.stop` is set.
    pub fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
            self.poll_once();
        }
    }

    fn poll_once(&mut self) {
        let files = journal_files(self.store.root());
        let index_now = index_signature(&self.store.index_path());
        // A journal of a run the snapshot lacks means a run was registered
        // (perhaps while the last reload was finishing): reload for it too.
        let unknown_run = journal_runs(&files)
            .iter()
            .any(|run| self.base.run(run).is_none());
        let index_changed = index_now != self.index_seen || unknown_run;
        self.changed_since_full |= index_changed;
        let full = self.changed_since_full && self.last_full.elapsed() >= self.full_gap;
        let quick = index_changed && self.last_reload.elapsed() >= self.reload_gap;
        let mut changed = false;
        if full || quick {
            let mut active = journal_runs(&files);
            active.extend(journal_runs(&self.journals_seen));
            let started = Instant::now();
            match load(&self.store, Some(&self.base), (!full).then_some(&active)) {
                Ok(base) => {
                    self.base = base;
                    changed = true;
                }
                Err(error) => eprintln!("graft ui: reading the index failed, will retry: {error}"),
            }
            let took = started.elapsed();
            // Each kind keeps its own pace: a slow full read must not hold
            // back the refresh that shows a new run.
            if full {
                self.full_gap = FULL_RELOAD_GAP.max(took * 4);
                self.last_full = Instant::now();
                self.changed_since_full = false;
            } else {
                self.reload_gap = MIN_RELOAD_GAP.max(took * 4);
                self.last_reload = Instant::now();
            }
            self.index_seen = index_signature(&self.store.index_path());
        }
        if changed || files != self.journals_seen {
            let files = journal_files(self.store.root());
            self.shared.publish(apply_journals(&self.base, &files));
            self.journals_seen = files;
        }
    }
}

//! Keeping the served snapshot current without starving writers.
//!
//! One thread polls, every [`POLL`], two cheap signals: the index's files
//! (their names, lengths and times change when any process writes the
//! index) and the journal files (their lengths grow as trainers record).
//! A journal change is applied from the journal files alone, without the
//! index lock (see [`super::live`]). An index change reloads the snapshot,
//! which holds the lock for one read of the record; after a reload that
//! took `t`, the next waits at least `max(MIN_RELOAD_GAP, 4 t)`, so the UI
//! holds the lock at most a fifth of the time however busy the store is,
//! and trainers (which retry with jitter) get it in between.

use super::live::{apply_journals, journal_files};
use super::snapshot::Snapshot;
use crate::store::{Index, Store};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

pub const POLL: Duration = Duration::from_millis(100);
pub const MIN_RELOAD_GAP: Duration = Duration::from_millis(1000);

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
/// it), copy what the UI shows, and let go.
fn load(store: &Store, previous: Option<&Snapshot>) -> crate::store::Result<Snapshot> {
    let index = Index::open(&store.index_path())?;
    Snapshot::load(&index, previous)
}

/// The first snapshot, read before the server answers anything.
pub fn start(store: &Store) -> crate::store::Result<(Arc<Shared>, Watcher)> {
    let started = Instant::now();
    let base = load(store, None)?;
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
        reload_gap: gap_after(load_time),
    };
    Ok((shared, watcher))
}

fn gap_after(load_time: Duration) -> Duration {
    MIN_RELOAD_GAP.max(load_time * 4)
}

pub struct Watcher {
    store: Store,
    shared: Arc<Shared>,
    base: Snapshot,
    index_seen: Vec<(PathBuf, u64, Option<SystemTime>)>,
    journals_seen: Vec<(PathBuf, u64)>,
    last_reload: Instant,
    reload_gap: Duration,
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
        let unknown_run = files.iter().any(|(path, _)| {
            path.file_name()
                .and_then(|n| crate::store::journal::parse_journal_name(&n.to_string_lossy()))
                .is_some_and(|(run, _)| self.base.run(&run).is_none())
        });
        let wants_reload = index_now != self.index_seen || unknown_run;
        let mut changed = false;
        if wants_reload && self.last_reload.elapsed() >= self.reload_gap {
            let started = Instant::now();
            match load(&self.store, Some(&self.base)) {
                Ok(base) => {
                    self.base = base;
                    changed = true;
                }
                Err(error) => eprintln!("graft ui: reading the index failed, will retry: {error}"),
            }
            self.reload_gap = gap_after(started.elapsed());
            self.last_reload = Instant::now();
            self.index_seen = index_signature(&self.store.index_path());
        }
        if changed || files != self.journals_seen {
            let files = journal_files(self.store.root());
            self.shared.publish(apply_journals(&self.base, &files));
            self.journals_seen = files;
        }
    }
}

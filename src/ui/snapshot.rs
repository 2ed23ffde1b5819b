//! What the UI serves: an in-memory copy of the store's record, read from
//! the index in one short visit and then answered from memory, so no page
//! request ever holds the index lock that trainers need.
//!
//! A [`Snapshot`] is immutable; the watcher (see [`super::watch`]) builds a
//! new one when the index or a journal changes and swaps it in. Series
//! points whose summary did not change are shared with the previous
//! snapshot rather than read again, so a reload after one run's change reads
//! that run's points only.

use crate::lineage::{known_keys, tags_by_target, RunSummary};
use crate::store::metrics::SeriesSummary;
use crate::store::{CheckpointRecord, DatasetRecord, Id, Index, ModelRecord, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The points of one series, in step order.
pub type Points = Arc<Vec<(u64, f64)>>;

/// One run as the UI knows it.
#[derive(Clone, Debug)]
pub struct RunView {
    pub summary: Arc<RunSummary>,
    pub checkpoints: Arc<Vec<CheckpointRecord>>,
    /// Series name -> its merged history (what `graft metrics` prints).
    pub series: Arc<BTreeMap<String, Points>>,
}

impl AsRef<RunSummary> for RunView {
    fn as_ref(&self) -> &RunSummary {
        &self.summary
    }
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every run, newest first (the order of `graft runs`).
    pub runs: Vec<RunView>,
    /// Run id -> position in `runs`.
    pub positions: HashMap<Id, usize>,
    pub tags: Arc<BTreeMap<Id, Vec<String>>>,
    pub datasets: Arc<HashMap<Id, DatasetRecord>>,
    pub models: Arc<HashMap<Id, ModelRecord>>,
    /// The keys `--where` and `--sort` accept in this store.
    pub known_keys: Arc<BTreeSet<String>>,
}

impl Snapshot {
    /// Read the whole record from an open index, reusing `previous`'s
    /// points for every series whose summary is unchanged.
    pub fn load(index: &Index, previous: Option<&Snapshot>) -> Result<Snapshot> {
        let tags = tags_by_target(index)?;
        let mut runs = Vec::new();
        for record in index.runs_newest_first(0, usize::MAX)? {
            let earlier = previous.and_then(|p| p.run(&record.id));
            runs.push(load_run(index, record, &tags, earlier)?);
        }
        let known = known_keys(runs.iter().map(|r| &*r.summary));
        Snapshot::assemble(index, runs, tags, known)
    }

    /// `previous` brought up to date where the index can have changed
    /// without a full read: runs registered since, the runs in `active`
    /// (those with journals, which absorption changes), runs whose tags
    /// changed, and the tags, data sets and models. Costs what changed, not
    /// what the store holds; what else can change the index (gc, pull) waits
    /// for the next [`Snapshot::load`].
    pub fn refresh(index: &Index, previous: &Snapshot, active: &BTreeSet<Id>) -> Result<Snapshot> {
        let tags = tags_by_target(index)?;
        let mut fresh = Vec::new();
        for entry in index.runs_by_seq.iter().rev() {
            let (_, id) = entry?;
            let Some(id) = Id::from_slice(&id) else {
                continue;
            };
            if previous.run(&id).is_some() {
                break;
            }
            fresh.push(load_run(index, index.run(&id)?, &tags, None)?);
        }
        let mut known = (*previous.known_keys).clone();
        for view in &fresh {
            known.extend(view.summary.keys());
        }
        let mut runs = fresh;
        for view in &previous.runs {
            let id = view.summary.run.id;
            let tags_now = tags.get(&id).cloned().unwrap_or_default();
            if active.contains(&id) || tags_now != view.summary.tags {
                let reloaded = load_run(index, index.run(&id)?, &tags, Some(view))?;
                known.extend(reloaded.summary.keys());
                runs.push(reloaded);
            } else {
                runs.push(view.clone());
            }
        }
        Snapshot::assemble(index, runs, tags, known)
    }

    fn assemble(
        index: &Index,
        runs: Vec<RunView>,
        tags: BTreeMap<Id, Vec<String>>,
        known: BTreeSet<String>,
    ) -> Result<Snapshot> {
        let datasets = index.datasets()?.into_iter().map(|d| (d.id, d)).collect();
        let models = index.models()?.into_iter().map(|m| (m.id, m)).collect();
        Ok(Snapshot {
            positions: positions(&runs),
            runs,
            tags: Arc::new(tags),
            datasets: Arc::new(datasets),
            models: Arc::new(models),
            known_keys: Arc::new(known),
        })
    }

    pub fn run(&self, id: &Id) -> Option<&RunView> {
        self.positions.get(id).map(|&i| &self.runs[i])
    }

    /// Replace one run's view (what live updates from a journal do).
    pub fn replace(&mut self, view: RunView) {
        if let Some(&i) = self.positions.get(&view.summary.run.id) {
            self.runs[i] = view;
        }
    }

    /// A run by tag, full id, or unique hex prefix of 4 or more characters,
    /// as the CLI resolves a run reference (without `@STEP`).
    pub fn resolve(&self, reference: &str) -> std::result::Result<&RunView, ResolveError> {
        if let Some(view) = self
            .tags
            .iter()
            .find(|(_, names)| names.iter().any(|n| n == reference))
            .and_then(|(id, _)| self.run(id))
        {
            return Ok(view);
        }
        let hex = reference.to_ascii_lowercase();
        if hex.len() < 4 || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ResolveError::NotARun(reference.to_string()));
        }
        if let Some(view) = Id::from_hex(&hex).and_then(|id| self.run(&id)) {
            return Ok(view);
        }
        let mut found = self
            .runs
            .iter()
            .filter(|view| view.summary.run.id.has_hex_prefix(&hex));
        match (found.next(), found.next()) {
            (Some(view), None) => Ok(view),
            (Some(_), Some(_)) => Err(ResolveError::Ambiguous(reference.to_string())),
            (None, _) => Err(ResolveError::NotARun(reference.to_string())),
        }
    }

    /// How many steps before a run's own step 0 its curve starts on a shared
    /// axis: the sum of the fork steps of its ancestors, so that a fork's
    /// curve continues from its parent's step.
    pub fn step_offset(&self, id: &Id) -> u64 {
        let mut offset = 0;
        let mut seen = BTreeSet::new();
        let mut next = self.run(id);
        while let Some(view) = next {
            if !seen.insert(view.summary.run.id) {
                break;
            }
            offset += view.summary.start_step.unwrap_or(0);
            next = view.summary.run.parent_run.and_then(|p| self.run(&p));
        }
        offset
    }

    /// The run and its ancestors in the snapshot, nearest first.
    pub fn ancestry(&self, id: &Id) -> Vec<Id> {
        let mut chain = Vec::new();
        let mut next = self.run(id);
        while let Some(view) = next {
            if chain.contains(&view.summary.run.id) {
                break;
            }
            chain.push(view.summary.run.id);
            next = view.summary.run.parent_run.and_then(|p| self.run(&p));
        }
        chain
    }

    /// The nearest run both descend from (either may be it), if any.
    pub fn common_ancestor(&self, a: &Id, b: &Id) -> Option<Id> {
        let left = self.ancestry(a);
        self.ancestry(b).into_iter().find(|id| left.contains(id))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    #[error("no run is named or starts with `{0}`")]
    NotARun(String),
    #[error("`{0}` is the prefix of several runs: give more characters")]
    Ambiguous(String),
}

pub fn positions(runs: &[RunView]) -> HashMap<Id, usize> {
    runs.iter()
        .enumerate()
        .map(|(i, view)| (view.summary.run.id, i))
        .collect()
}

/// Whether two summaries of a series describe the same points.
fn same_points(a: &SeriesSummary, b: &SeriesSummary) -> bool {
    a.count == b.count && a.last_step == b.last_step && a.last.to_bits() == b.last.to_bits()
}

/// One run as the index holds it, reusing `earlier`'s series where their
/// summaries did not change.
fn load_run(
    index: &Index,
    record: crate::store::RunRecord,
    tags: &BTreeMap<Id, Vec<String>>,
    earlier: Option<&RunView>,
) -> Result<RunView> {
    let summary = RunSummary::load(index, record, tags)?;
    let series = load_series(index, &summary, earlier)?;
    let checkpoints = Arc::new(index.run_checkpoints(&summary.run.id)?);
    Ok(RunView {
        summary: Arc::new(summary),
        checkpoints,
        series: Arc::new(series),
    })
}

fn load_series(
    index: &Index,
    summary: &RunSummary,
    earlier: Option<&RunView>,
) -> Result<BTreeMap<String, Points>> {
    let mut series = BTreeMap::new();
    for (name, now) in &summary.series {
        let reusable = earlier.and_then(|view| {
            let before = view.summary.series.get(name)?;
            same_points(before, now)
                .then(|| view.series.get(name).cloned())
                .flatten()
        });
        let points = match reusable {
            Some(points) => points,
            None => Arc::new(index.series(&summary.run.id, name)?),
        };
        series.insert(name.clone(), points);
    }
    Ok(series)
}

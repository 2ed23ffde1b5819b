//! Walking the run DAG. A run's parent is the run of its start checkpoint;
//! the chain ends at a run trained from the base model.

use crate::store::{Id, Index, Result, RunRecord};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The run and its ancestors, nearest first, ending at the run that started
/// from the base model.
pub fn ancestors(index: &Index, run: &Id) -> Result<Vec<RunRecord>> {
    let mut chain = Vec::new();
    let mut seen = BTreeSet::new();
    let mut next = Some(*run);
    while let Some(id) = next {
        if !seen.insert(id) {
            break; // A cycle cannot be built by graft; guard against a corrupt index.
        }
        let record = index.run(&id)?;
        next = record.parent_run;
        chain.push(record);
    }
    Ok(chain)
}

/// Parent run -> child runs, oldest child first, over the whole store.
pub fn children_map(runs: &[RunRecord]) -> BTreeMap<Id, Vec<Id>> {
    let mut sorted: Vec<&RunRecord> = runs.iter().collect();
    sorted.sort_by_key(|r| r.seq);
    let mut children: BTreeMap<Id, Vec<Id>> = BTreeMap::new();
    for run in sorted {
        if let Some(parent) = run.parent_run {
            children.entry(parent).or_default().push(run.id);
        }
    }
    children
}

/// Every run that descends from `run` (not including it), breadth first.
pub fn descendants(index: &Index, run: &Id) -> Result<Vec<Id>> {
    let children = children_map(&index.all_runs()?);
    let mut out = Vec::new();
    let mut queue: VecDeque<Id> = VecDeque::from([*run]);
    while let Some(id) = queue.pop_front() {
        for child in children.get(&id).into_iter().flatten() {
            out.push(*child);
            queue.push_back(*child);
        }
    }
    Ok(out)
}

/// The nearest run both descend from (either may be it), if any.
pub fn common_ancestor(index: &Index, a: &Id, b: &Id) -> Result<Option<Id>> {
    let left: BTreeSet<Id> = ancestors(index, a)?.iter().map(|r| r.id).collect();
    Ok(ancestors(index, b)?
        .into_iter()
        .map(|r| r.id)
        .find(|id| left.contains(id)))
}

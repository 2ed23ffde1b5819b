//! Refs: names for ids.
//!
//! A ref is a tag (`sft-arith`), `RUN@STEP`, `RUN@best`, `RUN@last` (where
//! RUN is itself a tag or an id prefix), or a unique hex prefix of at least
//! four characters of any model, dataset, run or checkpoint id.

use super::canonical::{hex_to_bytes, Id};
use super::error::{Result, StoreError};
use super::index::Index;
use super::records::{CheckpointRecord, RefRecord};

pub const MIN_PREFIX: usize = 4;

/// What a ref resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Model(Id),
    Dataset(Id),
    Run(Id),
    Checkpoint(Id),
}

impl Target {
    pub fn id(&self) -> Id {
        match self {
            Target::Model(id) | Target::Dataset(id) | Target::Run(id) | Target::Checkpoint(id) => {
                *id
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Target::Model(_) => "model",
            Target::Dataset(_) => "dataset",
            Target::Run(_) => "run",
            Target::Checkpoint(_) => "checkpoint",
        }
    }

    fn from_kind(kind: &str, id: Id) -> Option<Target> {
        Some(match kind {
            "model" => Target::Model(id),
            "dataset" => Target::Dataset(id),
            "run" => Target::Run(id),
            "checkpoint" => Target::Checkpoint(id),
            _ => return None,
        })
    }
}

/// The key a checkpoint's `metrics` uses for `@best` selection: the loss on
/// the run's first eval set.
pub const BEST_METRIC: &str = "eval_loss";

/// The prefix of a checkpoint's metrics (and of the run's series) that say
/// how much of its forgetting budget the run had used on each ancestor eval
/// set at that step: 1.0 is the whole budget. Only runs with a budget have them.
pub const BUDGET_USED_PREFIX: &str = "forget_budget_used/";

/// The forgetting measure of an ancestor eval set: the relative rise of its
/// loss over its loss at the fork point (negative where it improved).
pub fn forgetting(loss: f64, baseline: f64) -> f64 {
    (loss - baseline) / baseline.max(f64::MIN_POSITIVE)
}

/// Where a checkpoint ranks for `@best` and `keep_best`; lower is better.
/// Within the forgetting budget on every ancestor set (or without a budget):
/// by the new task's loss; over it: after all of those, by the most budget
/// used on one set, so the checkpoint that forgot least comes first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BestRank {
    pub over_budget: bool,
    pub score: f64,
}

impl BestRank {
    /// `eval_loss`: the new task's loss; `budget_used`: the most budget used
    /// on one ancestor set (None: the run has no budget, or `ignore_budget`).
    pub fn new(eval_loss: f64, budget_used: Option<f64>) -> BestRank {
        match budget_used {
            Some(used) if used > 1.0 => BestRank {
                over_budget: true,
                score: used,
            },
            _ => BestRank {
                over_budget: false,
                score: eval_loss,
            },
        }
    }

    /// A checkpoint's rank from its metrics; None without a finite loss.
    pub fn of_metrics(
        metrics: &std::collections::BTreeMap<String, f64>,
        ignore_budget: bool,
    ) -> Option<BestRank> {
        let loss = metrics
            .get(BEST_METRIC)
            .copied()
            .filter(|m| m.is_finite())?;
        let used = metrics
            .iter()
            .filter(|(key, _)| key.starts_with(BUDGET_USED_PREFIX))
            .map(|(_, used)| if used.is_nan() { f64::INFINITY } else { *used })
            .reduce(f64::max)
            .filter(|_| !ignore_budget);
        Some(BestRank::new(loss, used))
    }

    pub fn rank_cmp(&self, other: &BestRank) -> std::cmp::Ordering {
        self.over_budget
            .cmp(&other.over_budget)
            .then(self.score.total_cmp(&other.score))
    }
}

impl Index {
    pub fn resolve(&self, reference: &str) -> Result<Target> {
        let reference = reference.trim();
        if let Some((run_part, selector)) = reference.rsplit_once('@') {
            if run_part.contains('@') {
                // Tags cannot hold `@`: only one selector makes sense (and
                // resolving them one by one would recurse without bound).
                return Err(StoreError::BadRef {
                    reference: reference.into(),
                    reason: "a ref takes one `@`: RUN@STEP, RUN@best or RUN@last".into(),
                });
            }
            let run = match self.resolve(run_part)? {
                Target::Run(id) => id,
                Target::Checkpoint(id) => self.checkpoint(&id)?.run,
                other => {
                    return Err(StoreError::BadRef {
                        reference: reference.into(),
                        reason: format!("`{run_part}` is a {}, not a run", other.kind()),
                    })
                }
            };
            return self
                .resolve_selector(reference, &run, selector)
                .map(Target::Checkpoint);
        }
        if let Some(tag) = self.get_ref(reference)? {
            return Target::from_kind(&tag.kind, tag.target).ok_or_else(|| StoreError::BadRef {
                reference: reference.into(),
                reason: format!("tag has unknown kind `{}`", tag.kind),
            });
        }
        self.resolve_prefix(reference)
    }

    /// Resolve to a checkpoint; a run resolves to its last checkpoint.
    pub fn resolve_checkpoint(&self, reference: &str) -> Result<Id> {
        match self.resolve(reference)? {
            Target::Checkpoint(id) => Ok(id),
            Target::Run(run) => self.resolve_selector(reference, &run, "last"),
            other => Err(StoreError::BadRef {
                reference: reference.into(),
                reason: format!("names a {}, not a checkpoint or run", other.kind()),
            }),
        }
    }

    /// Resolve to a run; a checkpoint resolves to its run.
    pub fn resolve_run(&self, reference: &str) -> Result<Id> {
        match self.resolve(reference)? {
            Target::Run(id) => Ok(id),
            Target::Checkpoint(id) => Ok(self.checkpoint(&id)?.run),
            other => Err(StoreError::BadRef {
                reference: reference.into(),
                reason: format!("names a {}, not a run", other.kind()),
            }),
        }
    }

    fn resolve_selector(&self, reference: &str, run: &Id, selector: &str) -> Result<Id> {
        let live: Vec<_> = self
            .run_checkpoints(run)?
            .into_iter()
            .filter(|c| !c.retired)
            .collect();
        let found = match selector {
            "last" => live.last().cloned(),
            "best" => {
                let best = best_of(&live, false);
                if best.is_none() && !live.is_empty() {
                    return Err(StoreError::BadRef {
                        reference: reference.into(),
                        reason: format!(
                            "no checkpoint of run {} has an `{BEST_METRIC}`: was it evaluated?",
                            run.short()
                        ),
                    });
                }
                best.cloned()
            }
            step => {
                let step: u64 = step.parse().map_err(|_| StoreError::BadRef {
                    reference: reference.into(),
                    reason: format!("`{step}` is not a step number, `best` or `last`"),
                })?;
                let checkpoint = self.checkpoint_at(run, step)?;
                match checkpoint {
                    Some(c) if !c.retired => Some(c),
                    Some(_) => {
                        return Err(StoreError::BadRef {
                            reference: reference.into(),
                            reason: format!(
                                "the checkpoint at step {step} was not kept (retention)"
                            ),
                        })
                    }
                    None => {
                        let steps: Vec<String> = live.iter().map(|c| c.step.to_string()).collect();
                        return Err(StoreError::BadRef {
                            reference: reference.into(),
                            reason: format!(
                                "run {} has no checkpoint at step {step}; it has: {}",
                                run.short(),
                                if steps.is_empty() {
                                    "none".into()
                                } else {
                                    steps.join(", ")
                                }
                            ),
                        });
                    }
                }
            }
        };
        found.map(|c| c.id).ok_or_else(|| StoreError::BadRef {
            reference: reference.into(),
            reason: format!("run {} has no checkpoints", run.short()),
        })
    }

    /// The checkpoint `RUN@best` names; with `ignore_budget`, the one it
    /// would name if the run had no forgetting budget.
    pub fn best_checkpoint(
        &self,
        run: &Id,
        ignore_budget: bool,
    ) -> Result<Option<CheckpointRecord>> {
        let live: Vec<_> = self
            .run_checkpoints(run)?
            .into_iter()
            .filter(|c| !c.retired)
            .collect();
        Ok(best_of(&live, ignore_budget).cloned())
    }

    fn resolve_prefix(&self, reference: &str) -> Result<Target> {
        let lower = reference.to_ascii_lowercase();
        if lower.len() < MIN_PREFIX
            || lower.len() > 64
            || !lower.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(StoreError::UnknownRef {
                reference: reference.into(),
            });
        }
        let even = &lower[..lower.len() & !1];
        let prefix_bytes = hex_to_bytes(even).unwrap_or_default();
        let mut matches = Vec::new();
        type Make = fn(Id) -> Target;
        let trees: [(&sled::Tree, Make); 4] = [
            (&self.models, Target::Model),
            (&self.datasets, Target::Dataset),
            (&self.runs, Target::Run),
            (&self.checkpoints, Target::Checkpoint),
        ];
        for (tree, make) in trees {
            for key in tree.scan_prefix(&prefix_bytes).keys() {
                let key = key?;
                if let Some(id) = Id::from_slice(&key) {
                    if id.to_hex().starts_with(&lower) {
                        matches.push(make(id));
                    }
                }
                if matches.len() > 20 {
                    break;
                }
            }
        }
        match matches.len() {
            0 => Err(StoreError::UnknownRef {
                reference: reference.into(),
            }),
            1 => Ok(matches[0]),
            _ => Err(StoreError::AmbiguousRef {
                reference: reference.into(),
                candidates: matches
                    .iter()
                    .map(|t| format!("  {} {}", t.kind(), t.id().to_hex()))
                    .collect(),
            }),
        }
    }

    /// Create a tag, or move one that names another target only with
    /// `force`: a tag is a name people rely on, and moving it silently
    /// changes what every later command with that name does. Nothing is
    /// written unless the result is `Created` or `Moved`.
    pub fn place_tag(&self, name: &str, target: Target, force: bool) -> Result<TagChange> {
        validate_tag_name(name)?;
        let change = match self.get_ref(name)? {
            None => TagChange::Created,
            Some(current) if current.target == target.id() && current.kind == target.kind() => {
                return Ok(TagChange::Unchanged)
            }
            Some(current) if !force => return Ok(TagChange::Refused { current }),
            Some(current) => TagChange::Moved { from: current },
        };
        self.set_tag(name, target)?;
        Ok(change)
    }

    /// Every tag, by name.
    pub fn tags(&self) -> Result<Vec<RefRecord>> {
        let mut tags = self.all_refs()?;
        tags.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tags)
    }

    /// Create or move a tag.
    pub fn set_tag(&self, name: &str, target: Target) -> Result<RefRecord> {
        validate_tag_name(name)?;
        let record = RefRecord {
            name: name.to_string(),
            target: target.id(),
            kind: target.kind().to_string(),
            created_at: chrono::Utc::now(),
        };
        self.put_ref(&record)?;
        Ok(record)
    }
}

/// The best-ranked of `checkpoints` ([`BestRank`]); a tie goes to the later step.
fn best_of(checkpoints: &[CheckpointRecord], ignore_budget: bool) -> Option<&CheckpointRecord> {
    checkpoints
        .iter()
        .filter_map(|c| BestRank::of_metrics(&c.metrics, ignore_budget).map(|rank| (c, rank)))
        .min_by(|a, b| a.1.rank_cmp(&b.1).then(b.0.step.cmp(&a.0.step)))
        .map(|(c, _)| c)
}

/// What [`Index::place_tag`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum TagChange {
    Created,
    /// The tag already named this target.
    Unchanged,
    /// The tag named another target (`from`) and now names this one.
    Moved {
        from: RefRecord,
    },
    /// The tag names another target and `force` was not given: nothing changed.
    Refused {
        current: RefRecord,
    },
}

/// Tags may not look like hex prefixes or contain `@`, so every ref form
/// stays unambiguous.
pub fn validate_tag_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.contains('@') || name.chars().any(char::is_whitespace) {
        Some("it may not contain `@` or spaces")
    } else if name.len() >= MIN_PREFIX && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some("it looks like an id prefix; add a letter outside a-f")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::BadTagName {
            name: name.into(),
            reason: reason.into(),
        }),
        None => Ok(()),
    }
}

//! Refs: names for ids.
//!
//! A ref is a tag (`sft-arith`), `RUN@STEP`, `RUN@best`, `RUN@last` (where
//! RUN is itself a tag or an id prefix), or a unique hex prefix of at least
//! four characters of any model, dataset, run or checkpoint id.

use super::canonical::{hex_to_bytes, Id};
use super::error::{Result, StoreError};
use super::index::Index;
use super::records::RefRecord;

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
                let scored: Vec<_> = live
                    .iter()
                    .filter_map(|c| c.metrics.get(BEST_METRIC).map(|m| (c, *m)))
                    .filter(|(_, m)| m.is_finite())
                    .collect();
                if scored.is_empty() && !live.is_empty() {
                    return Err(StoreError::BadRef {
                        reference: reference.into(),
                        reason: format!(
                            "no checkpoint of run {} has an `{BEST_METRIC}`: was it evaluated?",
                            run.short()
                        ),
                    });
                }
                scored
                    .into_iter()
                    .min_by(|a, b| a.1.total_cmp(&b.1).then(b.0.step.cmp(&a.0.step)))
                    .map(|(c, _)| c.clone())
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

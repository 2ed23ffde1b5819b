//! Training: experiment files, the step loop, optimizer, schedules,
//! unfreezing, evaluation and checkpoint contents. Talks to the store only
//! through the recorder and the registry.

pub mod config;
pub mod registry;
pub mod schedule;
pub mod unfreeze;

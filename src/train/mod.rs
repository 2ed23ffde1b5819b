//! Training: experiment files, the step loop, optimizer, schedules,
//! unfreezing, evaluation and checkpoint contents. Talks to the store only
//! through the recorder and the registry.

pub mod adapter_start;
pub mod bench;
pub mod config;
pub mod eval;
pub mod execute;
pub mod fork;
pub mod interrupt;
pub mod layer_recompute;
pub mod lifecycle;
pub mod loss;
pub mod optim;
pub mod parallel;
pub mod plan;
pub mod recipe_data;
pub mod registry;
pub mod reproduce;
pub mod restore;
pub mod schedule;
pub mod state;
pub mod step;
pub mod unfreeze;

pub use config::Experiment;
pub use execute::{execute, Events, Outcome, Silent, TrainError};
pub use plan::{plan, Plan, PlanError};

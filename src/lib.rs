//! graft: continued fine-tuning of language models with a content-addressed
//! experiment record.
pub mod cli;
pub mod compute;
pub mod data;
pub mod lineage;
pub mod model;
pub mod store;
pub mod train;
pub mod ui;

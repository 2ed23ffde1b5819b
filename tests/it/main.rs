//! graft's integration tests as one binary (one link, one set of helpers): a module
//! per area, the shared environments in `common` and `reliability_support`. Run one
//! area with `cargo test --test it AREA::` (e.g. `cargo test --test it train_workflow::`).

mod common;
mod reliability_support;

mod compute_devices;
mod compute_kernels_emulated;
mod compute_record;
mod compute_threads;
mod data_chat_templates;
mod data_errors;
mod data_formats;
mod data_pack;
mod data_replay_drift;
mod experiment_reference;
mod export_gguf;
mod forgetting_budget;
mod model_cli;
mod model_families;
mod model_generate;
mod model_hf_cache;
mod model_loading;
mod model_lora;
mod model_mistral;
mod model_parity;
mod model_quantized;
mod model_trainability;
mod quickstart;
mod reliability_bad_input;
mod reliability_concurrency;
mod reliability_corruption;
mod reliability_crash_points;
mod reliability_fuzz;
mod reliability_soak;
mod remote_sharing;
mod store_crash;
mod store_ids;
mod store_lineage;
mod train_workflow;
mod ui_api;
mod ui_browser;
mod workflow_adapter;
mod workflow_best;
mod workflow_defects;
mod workflow_fork_patch;
mod workflow_outputs;

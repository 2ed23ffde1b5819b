//! Experiment files: what parses must be a recipe that reads back.
#![no_main]
use graft::store::{Id, Recipe};
use graft::train::Experiment;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let Ok(experiment) = Experiment::parse(&text, Path::new("fuzz.toml"), &[]) else {
        return;
    };
    let recipe = Recipe {
        config: experiment.recipe_config(),
        base_model: Id([0; 32]),
        start_checkpoint: None,
        datasets: Vec::new(),
        seed: experiment.train.seed,
        graft_version: "fuzz".into(),
    };
    let back = Experiment::from_recipe(&recipe).expect("a parsed experiment reads back from its recipe");
    assert_eq!(back.optim, experiment.optim);
    assert_eq!(back.train, experiment.train);
    assert_eq!(back.adapter, experiment.adapter);
    assert_eq!(back.unfreeze, experiment.unfreeze);
    let _ = recipe.run_id();
});

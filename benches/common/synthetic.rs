//! Synthetic records the store and UI benchmarks share: a recipe per run
//! number and a registered base model.

use graft::store::*;
use std::collections::BTreeMap;

/// The recipe of synthetic run `i`: learning rates cycle over seven values.
pub fn recipe(model: Id, start: Option<Id>, i: u64) -> Recipe {
    Recipe {
        config: Canon::map()
            .with(
                "optim",
                Canon::map()
                    .with("lr", 1e-4 / (1 + i % 7) as f64)
                    .with("batch_size", 8u64),
            )
            .with("train", Canon::map().with("steps", 100u64).with("seed", i)),
        base_model: model,
        start_checkpoint: start,
        datasets: vec![],
        seed: i,
        graft_version: "bench".into(),
    }
}

/// A base model record with placeholder ids.
pub fn model(index: &Index) -> Id {
    let id = Id([1; 32]);
    index
        .put_model(&ModelRecord {
            id,
            path: "bench".into(),
            copied: false,
            config: Id([2; 32]),
            tokenizer: Id([3; 32]),
            tensors: BTreeMap::new(),
            files: BTreeMap::new(),
            summary: Canon::Null,
            added_at: chrono::Utc::now(),
        })
        .unwrap();
    id
}

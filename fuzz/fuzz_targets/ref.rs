//! The ref resolver against a small store (a run with checkpoints, one
//! retired, and a tag), and tag-name validation.
#![no_main]
use graft::store::{refs, Canon, CheckpointRecord, DatasetUse, Id, Index, Recipe, Store};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::OnceLock;

fn index() -> &'static Index {
    static INDEX: OnceLock<(tempfile::TempDir, Index)> = OnceLock::new();
    &INDEX
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::init(dir.path()).unwrap();
            let index = store.index().unwrap();
            let recipe = Recipe {
                config: Canon::map().with("optim", Canon::map().with("lr", 1e-3)),
                base_model: Id([2; 32]),
                start_checkpoint: None,
                datasets: vec![DatasetUse { dataset: Id([1; 32]), role: "train".into(), name: "d".into(), weight: 1.0 }],
                seed: 1,
                graft_version: "fuzz".into(),
            };
            let run = index.register_run(&recipe, Default::default()).unwrap();
            for step in [4u64, 8, 12] {
                let tensors = BTreeMap::from([("w".to_string(), Id([step as u8; 32]))]);
                let id = CheckpointRecord::compute_id(run.id, step, &tensors, &Default::default());
                index
                    .put_checkpoint(&CheckpointRecord {
                        id,
                        run: run.id,
                        step,
                        tensors,
                        state: Default::default(),
                        parent: None,
                        metrics: BTreeMap::from([("eval_loss".to_string(), 1.0 / step as f64)]),
                        execution: 1,
                        created_at: chrono::Utc::now(),
                        retired: step == 4,
                    })
                    .unwrap();
            }
            index.set_tag("tagged", refs::Target::Run(run.id)).unwrap();
            (dir, index)
        })
        .1
}

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    if refs::validate_tag_name(&text).is_ok() {
        assert!(!text.contains('@'));
    }
    let index = index();
    if let Ok(target) = index.resolve(&text) {
        let id = target.id();
        assert!(index.get_run(&id).unwrap().is_some() || index.get_checkpoint(&id).unwrap().is_some());
    }
    let _ = index.resolve_checkpoint(&text);
    let _ = index.resolve_run(&text);
});

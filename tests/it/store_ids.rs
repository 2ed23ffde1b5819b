//! Pinned ids: an accidental change of the canonical encoding fails here.

use graft::store::canonical::{domain, object_id};
use graft::store::*;
use std::collections::BTreeMap;

fn recipe() -> Recipe {
    Recipe {
        config: Canon::map()
            .with(
                "optim",
                Canon::map()
                    .with("lr", 5e-5)
                    .with("batch_size", 8u64)
                    .with("schedule", "cosine"),
            )
            .with(
                "train",
                Canon::map()
                    .with("steps", 800u64)
                    .with("baseline_eval", true),
            ),
        base_model: Id([0x11; 32]),
        start_checkpoint: Some(Id([0x22; 32])),
        datasets: vec![DatasetUse {
            dataset: Id([0x33; 32]),
            role: "train".into(),
            name: "reverse.jsonl".into(),
            weight: 1.0,
        }],
        seed: 7,
        graft_version: "0.1.0".into(),
    }
}

#[test]
fn ids_are_pinned() {
    assert_eq!(object_id(b"hello").to_hex(), PINNED_OBJECT);
    assert_eq!(recipe().run_id().to_hex(), PINNED_RUN);
    let tensors = BTreeMap::from([("lora_a".to_string(), Id([0x44; 32]))]);
    let state = BTreeMap::from([("optimizer".to_string(), Id([0x55; 32]))]);
    assert_eq!(
        CheckpointRecord::compute_id(Id([0x66; 32]), 50, &tensors, &state).to_hex(),
        PINNED_CHECKPOINT
    );
    let spec = Canon::map()
        .with("format", "chat")
        .with("seq_len", 256u64)
        .with("pack", true);
    assert_eq!(
        DatasetRecord::compute_id(Id([0x77; 32]), &spec).to_hex(),
        PINNED_DATASET
    );
    assert_eq!(
        ModelRecord::compute_id(Id([1; 32]), Id([2; 32]), &tensors).to_hex(),
        PINNED_MODEL
    );
}

#[test]
fn ids_ignore_map_insertion_order_but_not_values() {
    let a = Canon::map().with("x", 1u64).with("y", 2.5);
    let b = Canon::map().with("y", 2.5).with("x", 1u64);
    assert_eq!(a.id(domain::RUN), b.id(domain::RUN));
    assert_ne!(
        a.id(domain::RUN),
        a.id(domain::DATASET),
        "domains separate kinds"
    );
    assert_ne!(
        a.id(domain::RUN),
        Canon::map()
            .with("x", 1u64)
            .with("y", 2.5000001)
            .id(domain::RUN)
    );
    assert_ne!(
        Canon::Int(1).id(domain::RUN),
        Canon::Float(1.0).id(domain::RUN)
    );
    let mut changed = recipe();
    changed.seed = 8;
    assert_ne!(changed.run_id(), recipe().run_id());
}

#[test]
fn records_round_trip_and_refuse_other_schema_versions() {
    let record = RunRecord {
        id: recipe().run_id(),
        recipe: recipe(),
        parent_run: None,
        seq: 3,
        created_at: chrono::Utc::now(),
        notes: BTreeMap::new(),
    };
    let bytes = graft::store::index::encode(&record);
    assert_eq!(bytes[0], SCHEMA_VERSION);
    let back: RunRecord = graft::store::index::decode(&bytes, "runs", "x").unwrap();
    assert_eq!(back, record);
    let mut future = bytes.clone();
    future[0] = SCHEMA_VERSION + 1;
    let error = graft::store::index::decode::<RunRecord>(&future, "runs", "x")
        .unwrap_err()
        .to_string();
    assert!(error.contains("schema version"), "{error}");
}

const PINNED_OBJECT: &str = "0d8fb7e41865d45e0f9d5fa2332e8021ad697a68ab686505279fdd833506cc54";
const PINNED_RUN: &str = "c661f4a5b036c216ec286ceb87e5c7aee5b4937dfda8fd80e4834e9447a8bdd1";
const PINNED_CHECKPOINT: &str = "3554f9ee34fbdfe0b7a875f593a48010fdc5c647a10de1b7d262c8925d697cf5";
const PINNED_DATASET: &str = "08d21f58acba6464f6c76ef489432003ca1e41dad4a0c25241342f9809e0b825";
const PINNED_MODEL: &str = "b4cc6f8d8e0b6a32750c6faa9ec3a9032e36fd597d5e863ada6f464a99a978c4";

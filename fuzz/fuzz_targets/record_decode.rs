//! The index's record decoder on arbitrary bytes: every record kind.
#![no_main]
use graft::store::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = index::decode::<ModelRecord>(bytes, "models", "k");
    let _ = index::decode::<DatasetRecord>(bytes, "datasets", "k");
    let _ = index::decode::<RunRecord>(bytes, "runs", "k");
    let _ = index::decode::<ExecutionRecord>(bytes, "executions", "k");
    let _ = index::decode::<RefRecord>(bytes, "refs", "k");
    let _ = index::decode::<metrics::SeriesSummary>(bytes, "summaries", "k");
    if let Ok(record) = index::decode::<CheckpointRecord>(bytes, "checkpoints", "k") {
        let again: CheckpointRecord = index::decode(&index::encode(&record), "checkpoints", "k").unwrap();
        assert_eq!(format!("{again:?}"), format!("{record:?}"));
    }
});

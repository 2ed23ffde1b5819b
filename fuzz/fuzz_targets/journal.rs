//! Journal frames, metric chunks, tensor blobs and trainer state: every
//! decoder of bytes read back from the store.
#![no_main]
use graft::store::{journal, metrics, tensor_blob::TensorBlob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut previous = 0;
    for (entry, end) in journal::decode_frames(bytes) {
        assert!(end > previous && end <= bytes.len());
        previous = end;
        let _ = journal::encode_frame(&entry);
    }
    let first = bytes.first().copied().unwrap_or(0) as u64 * 1_000_000;
    if let Some(points) = metrics::decode_chunk(first, bytes) {
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0));
    }
    let _ = metrics::parse_chunk_key(bytes);
    let _ = TensorBlob::decode(bytes, "fuzz");
    let _ = graft::train::state::TrainerState::decode(bytes);
});

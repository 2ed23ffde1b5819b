//! Deterministic randomness for shuffling, splitting and mixing.
//!
//! Every random choice is drawn from a ChaCha8 stream whose 32-byte key is a
//! blake3 hash of (seed, purpose, position). So the random state at any data
//! position is a function of the seed and that position: a checkpoint only
//! needs the position to resume exactly, and nothing depends on a crate's
//! `seed_from_u64` expansion or shuffle algorithm staying the same across
//! versions (the shuffle below is ours).

use rand::RngCore;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn key(seed: u64, purpose: &str, position: &[u64]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"graft.data.rng.v1\0");
    hasher.update(purpose.as_bytes());
    hasher.update(&[0]);
    hasher.update(&seed.to_be_bytes());
    for part in position {
        hasher.update(&part.to_be_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// A random stream for one purpose at one position.
pub fn rng_for(seed: u64, purpose: &str, position: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::from_seed(key(seed, purpose, position))
}

/// A derived 64-bit seed (e.g. for the n-th replay stream).
pub fn derive_seed(seed: u64, purpose: &str, position: &[u64]) -> u64 {
    let bytes = key(seed, purpose, position);
    u64::from_be_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

/// A uniform number in [0, 1) from (seed, purpose, position), without a stream.
pub fn unit_interval(seed: u64, purpose: &str, position: &[u64]) -> f64 {
    // 53 bits: exactly representable in an f64.
    (derive_seed(seed, purpose, position) >> 11) as f64 / (1u64 << 53) as f64
}

/// Fisher-Yates with a multiply-shift range reduction (bias below 2^-32 for
/// any slice this code will see).
pub fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        items.swap(i, j);
    }
}

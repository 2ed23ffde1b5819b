//! Compact metric storage.
//!
//! A point is (run, execution, step, series) -> f64. Storing one sled entry
//! per point would cost over 100 bytes each, so points are kept in chunks of
//! up to [`CHUNK_POINTS`] per series: the key is
//! `run seq (8) | execution (4) | series id (4) | first step (8)`, all
//! big-endian so a prefix scan returns a series in step order, and the value
//! is `count (varint)` then, per point, the step delta (varint) and the value
//! bits (8 bytes). Series names are interned to u32 ids in the `series` tree.

/// Points per chunk: large enough that key and sled overhead are small per
/// point, small enough that rewriting the open tail chunk is cheap.
pub const CHUNK_POINTS: usize = 512;

pub fn chunk_key(run_seq: u64, execution: u32, series: u32, first_step: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&run_seq.to_be_bytes());
    key[8..12].copy_from_slice(&execution.to_be_bytes());
    key[12..16].copy_from_slice(&series.to_be_bytes());
    key[16..].copy_from_slice(&first_step.to_be_bytes());
    key
}

pub fn series_prefix(run_seq: u64, execution: u32, series: u32) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&run_seq.to_be_bytes());
    key[8..12].copy_from_slice(&execution.to_be_bytes());
    key[12..].copy_from_slice(&series.to_be_bytes());
    key
}

/// Parse a chunk key back into (run seq, execution, series, first step).
pub fn parse_chunk_key(key: &[u8]) -> Option<(u64, u32, u32, u64)> {
    if key.len() != 24 {
        return None;
    }
    Some((
        u64::from_be_bytes(key[..8].try_into().ok()?),
        u32::from_be_bytes(key[8..12].try_into().ok()?),
        u32::from_be_bytes(key[12..16].try_into().ok()?),
        u64::from_be_bytes(key[16..].try_into().ok()?),
    ))
}

pub fn encode_chunk(first_step: u64, points: &[(u64, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + points.len() * 10);
    put_varint(&mut out, points.len() as u64);
    let mut previous = first_step;
    for &(step, value) in points {
        put_varint(&mut out, step - previous);
        out.extend_from_slice(&value.to_bits().to_le_bytes());
        previous = step;
    }
    out
}

/// Decode a chunk; `None` if the bytes are malformed.
pub fn decode_chunk(first_step: u64, bytes: &[u8]) -> Option<Vec<(u64, f64)>> {
    let mut cursor = 0;
    let count = get_varint(bytes, &mut cursor)? as usize;
    if count > CHUNK_POINTS * 4 {
        return None;
    }
    let mut points = Vec::with_capacity(count);
    let mut step = first_step;
    for _ in 0..count {
        step = step.checked_add(get_varint(bytes, &mut cursor)?)?;
        let bits = bytes.get(cursor..cursor + 8)?;
        cursor += 8;
        points.push((
            step,
            f64::from_bits(u64::from_le_bytes(bits.try_into().ok()?)),
        ));
    }
    Some(points)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &[u8], cursor: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*cursor)?;
        *cursor += 1;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Running summary of a series, kept per run for `runs --where`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SeriesSummary {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    pub last_step: u64,
}

impl SeriesSummary {
    pub fn add(&mut self, step: u64, value: f64) {
        if self.count == 0 {
            self.min = value;
            self.max = value;
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        if self.count == 0 || step >= self.last_step {
            self.last = value;
            self.last_step = step;
        }
        self.count += 1;
    }

    /// The best value: the maximum for accuracies, the minimum otherwise.
    pub fn best(&self, series: &str) -> f64 {
        if higher_is_better(series) {
            self.max
        } else {
            self.min
        }
    }
}

pub fn higher_is_better(series: &str) -> bool {
    series.contains("acc") || series.starts_with("tokens_per_s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trips_steps_and_values() {
        let points: Vec<(u64, f64)> = (10..300).map(|s| (s * 3, (s as f64).sin())).collect();
        let bytes = encode_chunk(30, &points);
        assert_eq!(decode_chunk(30, &bytes).unwrap(), points);
        assert!(bytes.len() < points.len() * 10);
    }
}

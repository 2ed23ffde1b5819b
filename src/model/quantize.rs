//! Block quantization of a frozen base weight on the host, as bitsandbytes defines it,
//! so that a weight graft quantizes and the same weight quantized by bitsandbytes hold
//! the same codes and scales.
//!
//! - **NF4**: the weight in Hugging Face layout `[out, in]`, read row-major, is cut into
//!   blocks of 64 values. Each block is scaled by the reciprocal of its largest
//!   magnitude (`absmax`) and each value takes the index of the nearest of NF4's 16
//!   values; a value exactly between two takes the lower index (bitsandbytes'
//!   `bucketize` on the midpoints). Two codes share a byte, the first in the high
//!   nibble. With double quantization (the default, bitsandbytes'
//!   `compress_statistics`) the absmax values, less their mean (`offset`), are
//!   themselves quantized in blocks of 256 to 8-bit codes into bitsandbytes' signed
//!   dynamic map, with one f32 absmax per block of 256.
//! - **int8**: blocks of 64 values, scale `absmax / 127`, codes
//!   `round_half_even(v / scale)` in [-127, 127].
//!
//! A last partial block is its own block, as in bitsandbytes (its values are divided
//! by its absmax rather than multiplied by the reciprocal, and its absmax is kept at
//! 1e-38 or more). The mean behind `offset` is taken in f64 and rounded to f32 once;
//! PyTorch's f32 mean may differ from it in the last bit.
//! `tests/fixtures/make_quant_fixture.py` implements the same in numpy, and the tests
//! compare the two code for code.

use rayon::prelude::*;

use super::error::ModelError;

/// Values per block of the weight's codes (bitsandbytes' default for 4 bits).
pub const BLOCK: usize = 64;
/// Absmax values per block of the double quantization.
pub const NESTED_BLOCK: usize = 256;

/// NF4's 16 values as bitsandbytes writes them (`get_4bit_type("nf4")`), in code
/// order; PyTorch rounds them to f32 from these doubles, as [`nf4_table`] does.
const NF4_VALUES: [f64; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// NF4's 16 values in f32, in code order.
pub fn nf4_table() -> [f32; 16] {
    NF4_VALUES.map(|v| v as f32)
}

/// How a base weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    /// 4-bit NormalFloat codes in blocks of 64, double-quantized absmax.
    Nf4,
    /// Symmetric 8-bit codes in blocks of 64, one f32 scale per block.
    Int8,
}

impl QuantScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            QuantScheme::Nf4 => "nf4",
            QuantScheme::Int8 => "int8",
        }
    }
}

/// The per-block scales of a quantized weight.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockScales {
    /// One f32 per block: the absmax (NF4) or `absmax / 127` (int8).
    Plain(Vec<f32>),
    /// bitsandbytes' double quantization: the absmax of block `i` is
    /// `nested_map[codes[i]] * nested_absmax[i / nested_block] + offset`.
    Double {
        codes: Vec<u8>,
        nested_absmax: Vec<f32>,
        nested_map: Vec<f32>,
        nested_block: usize,
        offset: f32,
    },
}

impl BlockScales {
    /// The f32 scale of every block, as bitsandbytes computes it (f32 products).
    pub fn expand(&self) -> Vec<f32> {
        match self {
            BlockScales::Plain(values) => values.clone(),
            BlockScales::Double {
                codes,
                nested_absmax,
                nested_map,
                nested_block,
                offset,
            } => codes
                .iter()
                .enumerate()
                .map(|(i, &code)| {
                    nested_map[code as usize] * nested_absmax[i / nested_block] + offset
                })
                .collect(),
        }
    }
}

/// A quantized weight as stored: exactly the values bitsandbytes would hold.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedHost {
    pub scheme: QuantScheme,
    /// Hugging Face layout `[out, in]`.
    pub shape: [usize; 2],
    /// Values per block.
    pub block: usize,
    /// NF4: two codes a byte, the first in the high nibble (bitsandbytes' packing).
    /// int8: one two's-complement code a byte.
    pub codes: Vec<u8>,
    /// NF4's 16 values (the folder's own `quant_map` where read from one); empty for
    /// int8.
    pub table: Vec<f32>,
    pub scales: BlockScales,
}

impl QuantizedHost {
    pub fn len(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of blocks (the last may be partial).
    pub fn blocks(&self) -> usize {
        self.len().div_ceil(self.block)
    }

    /// The code of each value, unpacked (NF4: 0..16; int8: -127..=127).
    pub fn unpacked_codes(&self) -> Vec<i32> {
        match self.scheme {
            QuantScheme::Nf4 => self
                .codes
                .iter()
                .flat_map(|byte| [(byte >> 4) as i32, (byte & 0x0f) as i32])
                .take(self.len())
                .collect(),
            QuantScheme::Int8 => self.codes.iter().map(|&b| b as i8 as i32).collect(),
        }
    }

    /// The weight's values, row-major `[out, in]`, as bitsandbytes dequantizes them
    /// (code value times the block's scale, in f32). The device computes the same
    /// with tensor ops (`model::quantized`); this is the reference.
    pub fn dequantize(&self) -> Vec<f32> {
        let scales = self.scales.expand();
        self.unpacked_codes()
            .into_iter()
            .enumerate()
            .map(|(i, code)| {
                let value = match self.scheme {
                    QuantScheme::Nf4 => self.table[code as usize],
                    QuantScheme::Int8 => code as f32,
                };
                value * scales[i / self.block]
            })
            .collect()
    }

    /// Checks sizes against the shape and block, naming `name` (a folder's tensor).
    pub fn validate(&self, name: &str) -> Result<(), ModelError> {
        let bad = |message: String| {
            Err(ModelError::Invalid {
                message: format!("quantized tensor `{name}`: {message}"),
            })
        };
        if self.block == 0 || !self.block.is_multiple_of(8) {
            return bad(format!("block size {} is not a multiple of 8", self.block));
        }
        let code_bytes = match self.scheme {
            QuantScheme::Nf4 => self.len().div_ceil(2),
            QuantScheme::Int8 => self.len(),
        };
        if self.codes.len() != code_bytes {
            return bad(format!(
                "{} code bytes for shape {:?}, expected {code_bytes}",
                self.codes.len(),
                self.shape
            ));
        }
        if self.scheme == QuantScheme::Nf4 && self.table.len() != 16 {
            return bad(format!(
                "a code table of {} values, expected 16",
                self.table.len()
            ));
        }
        let blocks = self.blocks();
        match &self.scales {
            BlockScales::Plain(values) if values.len() != blocks => {
                bad(format!("{} scales, expected {blocks}", values.len()))
            }
            BlockScales::Double {
                codes,
                nested_absmax,
                nested_map,
                nested_block,
                ..
            } => {
                if codes.len() != blocks {
                    bad(format!("{} absmax codes, expected {blocks}", codes.len()))
                } else if *nested_block == 0 || !nested_block.is_multiple_of(4) {
                    bad(format!(
                        "nested block size {nested_block} is not a multiple of 4"
                    ))
                } else if nested_absmax.len() != blocks.div_ceil(*nested_block) {
                    bad(format!(
                        "{} nested absmax values, expected {}",
                        nested_absmax.len(),
                        blocks.div_ceil(*nested_block)
                    ))
                } else if nested_map.len() != 256 {
                    bad(format!(
                        "a nested code table of {} values, expected 256",
                        nested_map.len()
                    ))
                } else {
                    Ok(())
                }
            }
            BlockScales::Plain(_) => Ok(()),
        }
    }
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map()`: 7 exponent bits),
/// sorted: for each decade `10^(i-6)`, `i` in 0..7, the midpoints of `2^i + 1` evenly
/// spaced points in [0.1, 1] (PyTorch's f32 `linspace`), both signs, then 0 and 1.
/// A folder saved by bitsandbytes carries its map (`nested_quant_map`), which graft
/// reads instead of this one.
pub fn dynamic_map() -> Vec<f32> {
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut values: Vec<f32> = Vec::with_capacity(256);
    for (i, decade) in DECADES.iter().enumerate() {
        let decade = *decade as f32;
        let points = f32_linspace(0.1, 1.0, (1 << i) + 1);
        for pair in points.windows(2) {
            // PyTorch multiplies the f32 means by the decade rounded to f32.
            let mean = (pair[0] + pair[1]) / 2.0;
            values.push(decade * mean);
            values.push(-decade * mean);
        }
    }
    values.push(0.0);
    values.push(1.0);
    values.sort_by(f32::total_cmp);
    values
}

/// PyTorch's f32 `linspace` on the CPU: the first half counted up from `start`, the
/// second half down from `end`, with the step in f32.
fn f32_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// Midpoints between neighbouring values of a sorted table, in f32.
fn midpoints(table: &[f32]) -> Vec<f32> {
    table
        .windows(2)
        .map(|pair| (pair[0] + pair[1]) / 2.0)
        .collect()
}

/// Float values a quantizer reads a block at a time: f32 values in memory, or a
/// tensor's stored bf16/f16/f32 bytes widened block by block
/// ([`super::weights::StoredFloats`]), so a weight is quantized from its file's bytes
/// without a float copy of the whole tensor. Widening is exact, so both give the same
/// codes.
pub trait FloatValues: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes values `start..start + out.len()` to `out`.
    fn fill(&self, start: usize, out: &mut [f32]);
}

impl FloatValues for [f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    fn fill(&self, start: usize, out: &mut [f32]) {
        out.copy_from_slice(&self[start..start + out.len()]);
    }
}

/// Quantizes every block of `values` in parallel: `quantize` gets the block's values
/// in f32 (to use as scratch) and its `block / per_byte` code bytes (fewer for a last partial block) and
/// returns the block's scale. Blocks are independent, so the result is the same on
/// any thread count (an 8B model's projections are 7 billion values). The codes and
/// scales are written in place: no per-block allocation, one buffer a thread.
fn map_blocks<V: FloatValues + ?Sized>(
    values: &V,
    block: usize,
    per_byte: usize,
    quantize: impl Fn(&mut [f32], &mut [u8]) -> f32 + Sync,
) -> (Vec<u8>, Vec<f32>) {
    let len = values.len();
    let mut codes = vec![0u8; len.div_ceil(per_byte)];
    let mut scales = vec![0f32; len.div_ceil(block)];
    codes
        .par_chunks_mut(block / per_byte)
        .zip(scales.par_iter_mut())
        .enumerate()
        .for_each_init(
            || vec![0f32; block],
            |buffer, (index, (codes, scale))| {
                let start = index * block;
                let chunk = &mut buffer[..block.min(len - start)];
                values.fill(start, chunk);
                *scale = quantize(chunk, codes);
            },
        );
    (codes, scales)
}

/// Codes into `table` (through its `bounds`) and the absmax of each block of
/// `values`, `per_byte` codes a byte: 1, or 2 with the first in the high nibble and a
/// last odd code paired with `pad`. Blocks hold at most [`NESTED_BLOCK`] values.
fn quantize_blocks<V: FloatValues + ?Sized>(
    values: &V,
    block: usize,
    bounds: &[f32],
    per_byte: usize,
    pad: u8,
) -> (Vec<u8>, Vec<f32>) {
    map_blocks(values, block, per_byte, |chunk, codes| {
        let max = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let full = chunk.len() == block;
        let scale = max.max(1e-38);
        let inverse = 1.0 / scale;
        // bitsandbytes multiplies full blocks by the reciprocal and divides the
        // partial one.
        if full {
            chunk
                .iter_mut()
                .for_each(|v| *v = (*v * inverse).clamp(-1.0, 1.0));
        } else {
            chunk
                .iter_mut()
                .for_each(|v| *v = (*v / scale).clamp(-1.0, 1.0));
        }
        // A value's code is the number of bounds below it, which for sorted bounds is
        // `partition_point`'s index; counted bound by bound over the whole block, the
        // comparisons vectorize (a binary search per value does not).
        let mut index = [0u8; NESTED_BLOCK];
        let index = &mut index[..chunk.len()];
        for &bound in bounds {
            for (code, &value) in index.iter_mut().zip(chunk.iter()) {
                *code += (bound < value) as u8;
            }
        }
        if per_byte == 2 {
            for (byte, pair) in codes.iter_mut().zip(index.chunks(2)) {
                *byte = (pair[0] << 4) | pair.get(1).copied().unwrap_or(pad);
            }
        } else {
            codes.copy_from_slice(index);
        }
        if full {
            max
        } else {
            scale
        }
    })
}

/// NF4 with bitsandbytes' defaults (block 64, double-quantized absmax) of a weight in
/// Hugging Face layout, row-major `[out, in]`.
pub fn quantize_nf4(values: &[f32], shape: [usize; 2]) -> QuantizedHost {
    quantize_nf4_from(values, shape)
}

/// [`quantize_nf4`] of values read a block at a time (a tensor's stored bytes).
pub fn quantize_nf4_from<V: FloatValues + ?Sized>(values: &V, shape: [usize; 2]) -> QuantizedHost {
    let table = nf4_table();
    // An odd count is padded with the code of 0.0 (bitsandbytes pads with a zero).
    let zero = 7u8;
    let (codes, absmax) = quantize_blocks(values, BLOCK, &midpoints(&table), 2, zero);
    QuantizedHost {
        scheme: QuantScheme::Nf4,
        shape,
        block: BLOCK,
        codes,
        table: table.to_vec(),
        scales: double_quantize(&absmax),
    }
}

/// bitsandbytes' `compress_statistics`: the absmax values less their mean, in 8-bit
/// dynamic codes, blocks of 256.
fn double_quantize(absmax: &[f32]) -> BlockScales {
    let mean = absmax.iter().map(|&v| v as f64).sum::<f64>() / absmax.len().max(1) as f64;
    let offset = mean as f32;
    let centred: Vec<f32> = absmax.iter().map(|&v| v - offset).collect();
    let nested_map = dynamic_map();
    let (codes, nested_absmax) = quantize_blocks(
        centred.as_slice(),
        NESTED_BLOCK,
        &midpoints(&nested_map),
        1,
        0,
    );
    BlockScales::Double {
        codes,
        nested_absmax,
        nested_map,
        nested_block: NESTED_BLOCK,
        offset,
    }
}

/// Symmetric per-block int8 of a weight in Hugging Face layout, row-major `[out, in]`.
pub fn quantize_int8(values: &[f32], shape: [usize; 2]) -> QuantizedHost {
    quantize_int8_from(values, shape)
}

/// [`quantize_int8`] of values read a block at a time (a tensor's stored bytes).
pub fn quantize_int8_from<V: FloatValues + ?Sized>(values: &V, shape: [usize; 2]) -> QuantizedHost {
    let (codes, scales) = map_blocks(values, BLOCK, 1, |chunk, codes| {
        let max = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        for (byte, &v) in codes.iter_mut().zip(chunk.iter()) {
            let code = if scale == 0.0 {
                0.0
            } else {
                round_half_even(v / scale).clamp(-127.0, 127.0)
            };
            *byte = code as i8 as u8;
        }
        scale
    });
    QuantizedHost {
        scheme: QuantScheme::Int8,
        shape,
        block: BLOCK,
        codes,
        table: Vec::new(),
        scales: BlockScales::Plain(scales),
    }
}

/// `value.round_ties_even()` for |value| < 2^22 (a code is within ±128), without
/// the library call `round_ties_even` becomes on a baseline x86-64 build: adding
/// 1.5 * 2^23 leaves no fraction bits, so the f32 sum is rounded to an integer half to
/// even, and the subtraction is exact. Only the sign of a zero differs, which the
/// integer code does not keep.
fn round_half_even(value: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23
    (value + SHIFT) - SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dynamic_map_has_256_sorted_values_from_minus_one_to_one() {
        let map = dynamic_map();
        assert_eq!(map.len(), 256);
        assert!(map.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(map[255], 1.0);
        assert!(map[0] > -1.0 && map[0] < -0.99);
        assert!(map.contains(&0.0));
    }

    #[test]
    fn nf4_picks_the_nearest_value_and_the_lower_one_at_a_midpoint() {
        let mut values = vec![0.0f32; 64];
        values[0] = 2.0; // absmax: code 15
        values[1] = -2.0; // code 0
        let table = nf4_table();
        values[2] = 2.0 * table[8];
        values[3] = 2.0 * (table[7] + table[8]) / 2.0; // the midpoint: lower
        let quantized = quantize_nf4(&values, [1, 64]);
        let codes = quantized.unpacked_codes();
        assert_eq!(&codes[..5], &[15, 0, 8, 7, 7]);
        assert_eq!(quantized.codes[0], 0xF0);
        let restored = quantized.dequantize();
        assert!((restored[0] - 2.0).abs() < 0.02, "{}", restored[0]);
    }

    /// Each code computed on its own, value by value, as bitsandbytes' reference
    /// does: the oracle for the blocked, packed, parallel quantizer.
    fn nf4_codes_one_by_one(values: &[f32]) -> Vec<i32> {
        let bounds = &midpoints(&nf4_table());
        values
            .chunks(BLOCK)
            .flat_map(|block| {
                let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let scale = max.max(1e-38);
                let full = block.len() == BLOCK;
                block.iter().map(move |&v| {
                    let scaled = if full { v * (1.0 / scale) } else { v / scale };
                    bounds.partition_point(|b| *b < scaled.clamp(-1.0, 1.0)) as i32
                })
            })
            .collect()
    }

    #[test]
    fn a_partial_last_block_and_an_odd_count_quantize_as_value_by_value() {
        // Two full blocks, then 5 values: the last byte holds one code and the pad.
        let values: Vec<f32> = (0..BLOCK * 2 + 5)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let quantized = quantize_nf4(&values, [1, values.len()]);
        assert_eq!(quantized.unpacked_codes(), nf4_codes_one_by_one(&values));
        assert_eq!(quantized.codes.len(), values.len().div_ceil(2));
        assert_eq!(
            quantized.codes.last().unwrap() & 0x0f,
            7,
            "padded with 0.0's code"
        );
        assert_eq!(quantized.blocks(), 3);
    }

    #[test]
    fn round_half_even_matches_the_standard_library_over_the_code_range() {
        let mut value = -130.0f32;
        while value <= 130.0 {
            for probe in [value, value + 0.5, value.next_up(), value.next_down()] {
                assert_eq!(round_half_even(probe), probe.round_ties_even(), "{probe}");
            }
            value += 0.25;
        }
    }

    #[test]
    fn int8_codes_round_half_to_even_within_127() {
        let mut values = vec![0.0f32; 64];
        values[0] = 127.0;
        values[1] = 2.5;
        values[2] = -3.5;
        let quantized = quantize_int8(&values, [1, 64]);
        assert_eq!(&quantized.unpacked_codes()[..3], &[127, 2, -4]);
        assert_eq!(quantized.dequantize()[2], -4.0);
    }
}

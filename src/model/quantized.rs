//! A quantized base weight on the device, and its dequantization written with burn's
//! tensor ops (shifts, masks, a table lookup by `select`, a product by the block
//! scales), so every backend runs it without kernels of its own.
//!
//! The codes stay packed on the device: four bytes to an int word (little-endian), so
//! an NF4 weight costs half a byte a value and an int8 weight one byte, whatever int
//! type the backend keeps. The scales stay as stored: double-quantized absmax as 8-bit
//! codes packed the same way, with the f32 nested absmax and the 256-entry map. The
//! float weight exists only while [`QuantizedWeight::dequantize`]'s result is alive:
//! the projection node (`compute::quant_product`) makes it for one product and drops
//! it, then makes it again in the backward pass.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, FloatDType, Int, Tensor, TensorData};

use super::quantize::{BlockScales, QuantScheme, QuantizedHost};

/// Sizes of a quantized weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantLayout {
    pub scheme: QuantScheme,
    /// Hugging Face layout `[out, in]`.
    pub shape: [usize; 2],
    pub block: usize,
    /// Blocks of the weight, the last possibly partial.
    pub blocks: usize,
    /// With double-quantized scales: absmax codes per nested block, and the offset.
    pub nested: Option<(usize, f32)>,
}

/// A quantized weight as device tensors. Not a parameter: it never trains, and the
/// model's parameter listing (checkpoints, the optimizer) does not see it.
#[derive(Module, Debug)]
pub struct QuantizedWeight<B: Backend> {
    /// The codes' bytes, four to a word, padded to whole blocks. NF4 bytes are as
    /// bitsandbytes packs them (first code in the high nibble); int8 codes are stored
    /// with 128 added, so that each byte reads back unsigned.
    pub words: Tensor<B, 1, Int>,
    /// NF4: the values of both codes of every byte, `[256, 2]` f32 (row `b` holds the
    /// values of `b >> 4` and `b & 15`), so one lookup per byte unpacks two codes;
    /// `None` for int8.
    pub table: Option<Tensor<B, 2>>,
    /// One f32 scale a block, or with double quantization the nested absmax.
    pub scales: Tensor<B, 1>,
    /// Double quantization: the absmax codes, four to a word, padded to whole nested
    /// blocks, and the 256-entry map they index.
    pub scale_words: Option<Tensor<B, 1, Int>>,
    pub scale_map: Option<Tensor<B, 1>>,
    #[module(skip)]
    pub layout: QuantLayout,
}

/// Little-endian words of `bytes`, zero-padded to `len` bytes first.
fn pack_words(bytes: &[u8], len: usize, transform: impl Fn(u8) -> u8) -> Vec<i32> {
    let mut padded: Vec<u8> = bytes.iter().map(|&b| transform(b)).collect();
    padded.resize(len.max(bytes.len()).div_ceil(4) * 4, 0);
    padded
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn f32_tensor<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), (device, DType::F32))
}

fn int_tensor<B: Backend>(values: Vec<i32>, device: &B::Device) -> Tensor<B, 1, Int> {
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), device)
}

/// Each word of `words` cut into `32 / bits` fields at `shifts`, in that order, as
/// `[words * fields]` ints.
fn unpack<B: Backend>(words: Tensor<B, 1, Int>, bits: u32, shifts: &[i32]) -> Tensor<B, 1, Int> {
    let mask = ((1i32 << bits) - 1).elem::<B::IntElem>();
    let count = words.dims()[0] * shifts.len();
    let fields = shifts
        .iter()
        .map(|&shift| {
            words
                .clone()
                .bitwise_right_shift_scalar(shift.elem::<B::IntElem>())
                .bitwise_and_scalar(mask)
                .unsqueeze_dim::<2>(1)
        })
        .collect();
    Tensor::cat(fields, 1).reshape([count])
}

/// Byte `k` of a word holds element `k` (int8) or elements `2k` and `2k + 1` (NF4:
/// high nibble first).
const BYTE_SHIFTS: [i32; 4] = [0, 8, 16, 24];

/// The `[256, 2]` table of the values of both NF4 codes of each byte.
fn byte_pair_table<B: Backend>(table: &[f32], device: &B::Device) -> Tensor<B, 2> {
    let pairs: Vec<f32> = (0..256)
        .flat_map(|byte| [table[byte >> 4], table[byte & 0x0f]])
        .collect();
    f32_tensor::<B>(pairs, device).reshape([256, 2])
}

impl<B: Backend> QuantizedWeight<B> {
    /// Puts a host-quantized weight on `device`, still quantized.
    pub fn from_host(host: &QuantizedHost, device: &B::Device) -> Self {
        let blocks = host.blocks();
        let padded = blocks * host.block;
        let (words, table) = match host.scheme {
            QuantScheme::Nf4 => (
                pack_words(&host.codes, padded / 2, |b| b),
                Some(byte_pair_table(&host.table, device)),
            ),
            QuantScheme::Int8 => (pack_words(&host.codes, padded, |b| b ^ 0x80), None),
        };
        let (scales, scale_words, scale_map, nested) = match &host.scales {
            BlockScales::Plain(values) => (values.clone(), None, None, None),
            BlockScales::Double {
                codes,
                nested_absmax,
                nested_map,
                nested_block,
                offset,
            } => (
                nested_absmax.clone(),
                Some(int_tensor(
                    pack_words(codes, nested_absmax.len() * nested_block, |b| b),
                    device,
                )),
                Some(f32_tensor(nested_map.clone(), device)),
                Some((*nested_block, *offset)),
            ),
        };
        QuantizedWeight {
            words: int_tensor(words, device),
            table,
            scales: f32_tensor(scales, device),
            scale_words,
            scale_map,
            layout: QuantLayout {
                scheme: host.scheme,
                shape: host.shape,
                block: host.block,
                blocks,
                nested,
            },
        }
    }

    /// `[out, in]`, Hugging Face layout.
    pub fn shape(&self) -> [usize; 2] {
        self.layout.shape
    }

    pub fn device(&self) -> B::Device {
        self.words.device()
    }

    /// The f32 scale of each block, `[blocks]`.
    pub fn block_scales(&self) -> Tensor<B, 1> {
        let blocks = self.layout.blocks;
        match (&self.scale_words, &self.scale_map, self.layout.nested) {
            (Some(words), Some(map), Some((nested_block, offset))) => {
                let codes = unpack(words.clone(), 8, &BYTE_SHIFTS);
                let nested_blocks = self.scales.dims()[0];
                let values = map
                    .clone()
                    .select(0, codes)
                    .reshape([nested_blocks, nested_block]);
                let absmax = values * self.scales.clone().reshape([nested_blocks, 1]);
                absmax
                    .reshape([nested_blocks * nested_block])
                    .narrow(0, 0, blocks)
                    + offset as f64
            }
            _ => self.scales.clone(),
        }
    }

    /// The weight in `dtype`, `[out, in]`: each code's value times its block's scale,
    /// in f32, rounded to `dtype` once (as bitsandbytes dequantizes).
    pub fn dequantize(&self, dtype: DType) -> Tensor<B, 2> {
        let QuantLayout {
            scheme,
            shape,
            block,
            blocks,
            ..
        } = self.layout;
        let values = match (scheme, &self.table) {
            (QuantScheme::Nf4, Some(table)) => {
                let bytes = unpack(self.words.clone(), 8, &BYTE_SHIFTS);
                let pairs = bytes.dims()[0];
                table.clone().select(0, bytes).reshape([pairs * 2])
            }
            _ => {
                let codes = unpack(self.words.clone(), 8, &BYTE_SHIFTS);
                codes.float().cast(FloatDType::F32) - 128.0
            }
        };
        let values = values.narrow(0, 0, blocks * block).reshape([blocks, block])
            * self.block_scales().reshape([blocks, 1]);
        let weight = values
            .reshape([blocks * block])
            .narrow(0, 0, shape[0] * shape[1])
            .reshape(shape);
        if weight.dtype() == dtype {
            weight
        } else {
            weight.cast(dtype)
        }
    }

    /// The stored values read back to the host, as [`QuantizedHost`] holds them (for
    /// checks against a reference and for tests).
    pub fn to_host(&self) -> QuantizedHost {
        let layout = self.layout;
        let len = layout.shape[0] * layout.shape[1];
        let bytes = |words: &Tensor<B, 1, Int>| -> Vec<u8> {
            words
                .clone()
                .into_data()
                .convert::<i32>()
                .into_vec::<i32>()
                .unwrap_or_default()
                .into_iter()
                .flat_map(i32::to_le_bytes)
                .collect()
        };
        let floats = |t: &Tensor<B, 1>| -> Vec<f32> {
            t.clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default()
        };
        let mut codes = bytes(&self.words);
        match layout.scheme {
            QuantScheme::Nf4 => codes.truncate(len.div_ceil(2)),
            QuantScheme::Int8 => {
                codes.truncate(len);
                codes.iter_mut().for_each(|b| *b ^= 0x80);
            }
        }
        let scales = match (&self.scale_words, &self.scale_map, layout.nested) {
            (Some(words), Some(map), Some((nested_block, offset))) => {
                let mut absmax_codes = bytes(words);
                absmax_codes.truncate(layout.blocks);
                BlockScales::Double {
                    codes: absmax_codes,
                    nested_absmax: floats(&self.scales),
                    nested_map: floats(map),
                    nested_block,
                    offset,
                }
            }
            _ => BlockScales::Plain(floats(&self.scales)),
        };
        QuantizedHost {
            scheme: layout.scheme,
            shape: layout.shape,
            block: layout.block,
            codes,
            table: self
                .table
                .as_ref()
                .map(|pairs| {
                    // Row `16 i` holds code i's value first.
                    let values = floats(&pairs.clone().reshape([512]));
                    (0..16).map(|code| values[code * 32]).collect()
                })
                .unwrap_or_default(),
            scales,
        }
    }
}

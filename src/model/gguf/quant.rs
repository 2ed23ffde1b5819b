//! Which ggml type each tensor is stored in, and its encoding.
//!
//! `--quant` names a whole-file recipe as llama.cpp's tools do: `f16` stores every
//! matrix in half precision; `q8_0` every matrix whose rows split into blocks of
//! 32; `q4_k_m` follows llama-quantize's Q4_K_M mix (Q4_K by default, Q6_K for the
//! output head and for `attn_v` / `ffn_down` in the layers its "more bits" rule
//! picks, Q5_K for Phi-3's fused `attn_qkv`). A matrix whose row length does not
//! split into the type's blocks falls back the way llama-quantize falls back
//! (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, then f16). Vectors (norms, biases,
//! RoPE factors) stay f32 in every recipe. The block encoders are candle's
//! k-quant implementations of ggml's reference quantizers.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::super::error::ModelError;

/// The recipe `--quant` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    F16,
    Q8_0,
    Q4KM,
}

impl Quantization {
    pub const ALL: [Quantization; 3] = [Quantization::F16, Quantization::Q8_0, Quantization::Q4KM];

    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::F16 => "f16",
            Quantization::Q8_0 => "q8_0",
            Quantization::Q4KM => "q4_k_m",
        }
    }

    pub fn parse(name: &str) -> Result<Self, ModelError> {
        Self::ALL
            .into_iter()
            .find(|q| q.as_str() == name.to_ascii_lowercase())
            .ok_or_else(|| ModelError::Unsupported {
                key: "--quant".into(),
                value: name.into(),
                supported: Self::ALL.map(Quantization::as_str).join(", "),
            })
    }

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_MOSTLY_*`).
    pub fn file_type(self) -> u32 {
        match self {
            Quantization::F16 => 1,
            Quantization::Q8_0 => 7,
            Quantization::Q4KM => 15,
        }
    }
}

/// A ggml tensor type this exporter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl TensorType {
    /// The type code of ggml's `ggml_type` enum, as the GGUF header stores it.
    pub fn code(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q5_0 => 6,
            TensorType::Q5_1 => 7,
            TensorType::Q8_0 => 8,
            TensorType::Q4K => 12,
            TensorType::Q5K => 13,
            TensorType::Q6K => 14,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "f32",
            TensorType::F16 => "f16",
            TensorType::Q5_0 => "q5_0",
            TensorType::Q5_1 => "q5_1",
            TensorType::Q8_0 => "q8_0",
            TensorType::Q4K => "q4_K",
            TensorType::Q5K => "q5_K",
            TensorType::Q6K => "q6_K",
        }
    }

    fn candle(self) -> GgmlDType {
        match self {
            TensorType::F32 => GgmlDType::F32,
            TensorType::F16 => GgmlDType::F16,
            TensorType::Q5_0 => GgmlDType::Q5_0,
            TensorType::Q5_1 => GgmlDType::Q5_1,
            TensorType::Q8_0 => GgmlDType::Q8_0,
            TensorType::Q4K => GgmlDType::Q4K,
            TensorType::Q5K => GgmlDType::Q5K,
            TensorType::Q6K => GgmlDType::Q6K,
        }
    }

    /// Values per block (1 for the float types).
    pub fn block_size(self) -> usize {
        self.candle().block_size()
    }

    /// Bytes of `elements` values in this type.
    pub fn byte_len(self, elements: usize) -> u64 {
        (elements / self.block_size() * self.candle().type_size()) as u64
    }

    /// The type llama-quantize uses instead when a row does not split into blocks.
    fn fallback(self) -> TensorType {
        match self {
            TensorType::Q4K => TensorType::Q5_0,
            TensorType::Q5K => TensorType::Q5_1,
            TensorType::Q6K => TensorType::Q8_0,
            _ => TensorType::F16,
        }
    }
}

/// What a tensor is, as far as the type choice cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Norm weights, biases, RoPE factors: always f32.
    Vector,
    /// The output head, or the embedding where it doubles as the head.
    Output,
    /// `attn_v` of layer `layer`.
    AttentionValue { layer: usize },
    /// `ffn_down` of layer `layer`.
    FeedForwardDown { layer: usize },
    /// A fused q/k/v projection (Phi-3).
    FusedQkv,
    /// Every other matrix.
    Matrix,
}

/// llama-quantize's rule for which layers get more bits in the `_M` mixes: the
/// first and last eighth, and every third layer between.
fn more_bits(layer: usize, layers: usize) -> bool {
    let eighth = layers / 8;
    layer < eighth || layer >= 7 * layers / 8 || (layer as isize - eighth as isize) % 3 == 2
}

/// The ggml type of a tensor of `role` whose rows have `row_len` values, in a
/// model of `layers` blocks.
pub fn tensor_type(quant: Quantization, role: Role, row_len: usize, layers: usize) -> TensorType {
    let wanted = match (quant, role) {
        (_, Role::Vector) => return TensorType::F32,
        (Quantization::F16, _) => TensorType::F16,
        (Quantization::Q8_0, _) => TensorType::Q8_0,
        (Quantization::Q4KM, Role::Output) => TensorType::Q6K,
        (Quantization::Q4KM, Role::FusedQkv) => TensorType::Q5K,
        (Quantization::Q4KM, Role::AttentionValue { layer } | Role::FeedForwardDown { layer })
            if more_bits(layer, layers) =>
        {
            TensorType::Q6K
        }
        (Quantization::Q4KM, _) => TensorType::Q4K,
    };
    let mut chosen = wanted;
    while !row_len.is_multiple_of(chosen.block_size()) {
        chosen = chosen.fallback();
    }
    chosen
}

/// Encodes row-major f32 values of `shape` as `kind`.
pub fn encode(values: &[f32], shape: &[usize], kind: TensorType) -> Result<Vec<u8>, ModelError> {
    match kind {
        TensorType::F32 => Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        TensorType::F16 => Ok(values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect()),
        blocks => {
            let failed = |e: candle_core::Error| ModelError::Invalid {
                message: format!("quantizing a {shape:?} tensor to {}: {e}", blocks.name()),
            };
            let tensor = Tensor::from_slice(values, shape, &Device::Cpu).map_err(failed)?;
            let quantized = QTensor::quantize(&tensor, blocks.candle()).map_err(failed)?;
            Ok(quantized.data().map_err(failed)?.into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_gives_more_bits_to_the_head_and_chosen_layers_and_falls_back_on_odd_rows() {
        let q = Quantization::Q4KM;
        assert_eq!(tensor_type(q, Role::Matrix, 2048, 16), TensorType::Q4K);
        assert_eq!(tensor_type(q, Role::Output, 2048, 16), TensorType::Q6K);
        assert_eq!(
            tensor_type(q, Role::FeedForwardDown { layer: 0 }, 8192, 16),
            TensorType::Q6K
        );
        assert_eq!(
            tensor_type(q, Role::FeedForwardDown { layer: 3 }, 8192, 16),
            TensorType::Q4K
        );
        assert_eq!(
            tensor_type(q, Role::FeedForwardDown { layer: 4 }, 8192, 16),
            TensorType::Q6K
        );
        assert_eq!(tensor_type(q, Role::Matrix, 64, 2), TensorType::Q5_0);
        assert_eq!(tensor_type(q, Role::Output, 64, 2), TensorType::Q8_0);
        assert_eq!(tensor_type(q, Role::Matrix, 172, 2), TensorType::F16);
        assert_eq!(
            tensor_type(Quantization::Q8_0, Role::Matrix, 172, 2),
            TensorType::F16
        );
        assert_eq!(
            tensor_type(Quantization::Q8_0, Role::Vector, 64, 2),
            TensorType::F32
        );
    }

    #[test]
    fn encoded_sizes_match_the_block_layouts() {
        let values: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
        for (kind, bytes) in [
            (TensorType::F16, 1024),
            (TensorType::Q8_0, 16 * 34),
            (TensorType::Q5_0, 16 * 22),
            (TensorType::Q4K, 2 * 144),
            (TensorType::Q6K, 2 * 210),
        ] {
            let encoded = encode(&values, &[2, 256], kind).unwrap();
            assert_eq!(encoded.len(), bytes, "{kind:?}");
            assert_eq!(kind.byte_len(512), bytes as u64, "{kind:?}");
        }
    }
}

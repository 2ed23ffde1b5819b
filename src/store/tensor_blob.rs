//! The byte format of a tensor object: magic, version, dtype, shape, data.
//!
//! `GRAFTTSR` | version u8 | dtype (u8 length + ASCII, safetensors names such
//! as `F32`) | ndims u8 | dims (u64 BE each) | little-endian element bytes.
//! A checkpoint stores each trainable tensor as one such object, so a tensor
//! that did not change between checkpoints is the same object.

use super::error::{Result, StoreError};

const MAGIC: &[u8; 8] = b"GRAFTTSR";
const VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq)]
pub struct TensorBlob {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl TensorBlob {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = TensorBlob::header(&self.dtype, &self.shape, self.data.len());
        out.extend_from_slice(&self.data);
        out
    }

    /// The bytes an object of a tensor with `dtype` and `shape` begins with, before
    /// its data, in a buffer with room for `data_len` more: so a hash can stream a
    /// large tensor's data after it instead of building the object.
    pub fn header(dtype: &str, shape: &[usize], data_len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(data_len + 32 + shape.len() * 8);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(dtype.len() as u8);
        out.extend_from_slice(dtype.as_bytes());
        out.push(shape.len() as u8);
        for dim in shape {
            out.extend_from_slice(&(*dim as u64).to_be_bytes());
        }
        out
    }

    /// Decode, naming `what` (e.g. the checkpoint tensor) in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<TensorBlob> {
        let bad = |reason: &str| StoreError::BadRecord {
            tree: "objects",
            key: what.to_string(),
            reason: format!("not a graft tensor: {reason}"),
        };
        if bytes.len() < 11 || &bytes[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        if bytes[8] != VERSION {
            return Err(bad(&format!(
                "version {} (this graft reads {VERSION})",
                bytes[8]
            )));
        }
        let dtype_len = bytes[9] as usize;
        let mut cursor = 10;
        let dtype = std::str::from_utf8(
            bytes
                .get(cursor..cursor + dtype_len)
                .ok_or_else(|| bad("truncated"))?,
        )
        .map_err(|_| bad("dtype is not ASCII"))?
        .to_string();
        cursor += dtype_len;
        let ndims = *bytes.get(cursor).ok_or_else(|| bad("truncated"))? as usize;
        cursor += 1;
        let mut shape = Vec::with_capacity(ndims);
        for _ in 0..ndims {
            let dim = bytes
                .get(cursor..cursor + 8)
                .ok_or_else(|| bad("truncated"))?;
            shape.push(u64::from_be_bytes(dim.try_into().unwrap_or([0; 8])) as usize);
            cursor += 8;
        }
        let element = match dtype.as_str() {
            "F32" | "I32" | "U32" => 4,
            "BF16" | "F16" => 2,
            "F64" | "I64" | "U64" => 8,
            _ => 1,
        };
        let data = bytes[cursor..].to_vec();
        let expected = shape
            .iter()
            .try_fold(element as usize, |bytes: usize, dim| {
                bytes.checked_mul(*dim)
            });
        if expected != Some(data.len()) {
            return Err(bad(&format!(
                "{} data bytes for shape {shape:?} {dtype}",
                data.len()
            )));
        }
        Ok(TensorBlob { dtype, shape, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_blobs_round_trip_and_reject_truncation() {
        let blob = TensorBlob {
            dtype: "F32".into(),
            shape: vec![2, 3],
            data: (0..24).collect(),
        };
        let bytes = blob.encode();
        assert_eq!(TensorBlob::decode(&bytes, "t").unwrap(), blob);
        let error = TensorBlob::decode(&bytes[..bytes.len() - 1], "lora_A")
            .unwrap_err()
            .to_string();
        assert!(error.contains("lora_A"), "{error}");
    }
}

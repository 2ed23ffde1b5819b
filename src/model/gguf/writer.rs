//! The GGUF v3 container: a header of typed key/value metadata and tensor
//! descriptions, then the tensor data, each piece aligned.
//!
//! Laid out as the format's specification (ggml's `docs/gguf.md`) describes it,
//! little-endian throughout: magic `GGUF`, version 3, tensor count and metadata
//! count (u64); each metadata entry as key string, value type (u32) and value;
//! each tensor as name, dimension count (u32), dimensions innermost first (u64),
//! ggml type (u32) and data offset (u64, relative to the data section); padding
//! to `general.alignment`; then the data. Strings are a u64 byte length and UTF-8
//! bytes without a terminator.
//!
//! The header is written first from the tensors' sizes alone, so the data can be
//! streamed one tensor at a time and a large model never sits in memory twice.

use std::io::{self, Write};

/// The container's version written here.
pub const GGUF_VERSION: u32 = 3;
/// `general.alignment`'s default; every tensor's data starts on a multiple of it.
pub const ALIGNMENT: u64 = 32;
const MAGIC: &[u8; 4] = b"GGUF";

/// A metadata value, with the type codes of the specification.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Arrays hold one element type; these are the ones the tokenizer and the
    /// per-layer hyperparameters need.
    Strings(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
    Bools(Vec<bool>),
}

const TYPE_U32: u32 = 4;
const TYPE_I32: u32 = 5;
const TYPE_F32: u32 = 6;
const TYPE_BOOL: u32 = 7;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

impl MetaValue {
    fn type_code(&self) -> u32 {
        match self {
            MetaValue::U32(_) => TYPE_U32,
            MetaValue::I32(_) => TYPE_I32,
            MetaValue::F32(_) => TYPE_F32,
            MetaValue::Bool(_) => TYPE_BOOL,
            MetaValue::String(_) => TYPE_STRING,
            _ => TYPE_ARRAY,
        }
    }

    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            MetaValue::U32(v) => out.write_all(&v.to_le_bytes()),
            MetaValue::I32(v) => out.write_all(&v.to_le_bytes()),
            MetaValue::F32(v) => out.write_all(&v.to_le_bytes()),
            MetaValue::Bool(v) => out.write_all(&[u8::from(*v)]),
            MetaValue::String(s) => write_string(out, s),
            MetaValue::Strings(items) => {
                write_array_head(out, TYPE_STRING, items.len())?;
                items.iter().try_for_each(|s| write_string(out, s))
            }
            MetaValue::F32s(items) => {
                write_array_head(out, TYPE_F32, items.len())?;
                items
                    .iter()
                    .try_for_each(|v| out.write_all(&v.to_le_bytes()))
            }
            MetaValue::I32s(items) => {
                write_array_head(out, TYPE_I32, items.len())?;
                items
                    .iter()
                    .try_for_each(|v| out.write_all(&v.to_le_bytes()))
            }
            MetaValue::Bools(items) => {
                write_array_head(out, TYPE_BOOL, items.len())?;
                items
                    .iter()
                    .try_for_each(|v| out.write_all(&[u8::from(*v)]))
            }
        }
    }
}

fn write_string(out: &mut impl Write, text: &str) -> io::Result<()> {
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(text.as_bytes())
}

fn write_array_head(out: &mut impl Write, element_type: u32, len: usize) -> io::Result<()> {
    out.write_all(&element_type.to_le_bytes())?;
    out.write_all(&(len as u64).to_le_bytes())
}

/// One tensor's description: its GGUF name, its shape in row-major order (as
/// Hugging Face writes it: `[rows, cols]`), its ggml type code and the byte size
/// of its encoded data.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorHeader {
    pub name: String,
    pub shape: Vec<usize>,
    pub ggml_type: u32,
    pub byte_len: u64,
}

fn padding(position: u64) -> u64 {
    (ALIGNMENT - position % ALIGNMENT) % ALIGNMENT
}

/// Writes the header: magic, version, counts, metadata, tensor descriptions
/// with their offsets, and the padding up to the data section. Returns the
/// number of bytes written.
pub fn write_header(
    out: &mut impl Write,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorHeader],
) -> io::Result<u64> {
    let mut counted = CountingWriter {
        inner: out,
        written: 0,
    };
    counted.write_all(MAGIC)?;
    counted.write_all(&GGUF_VERSION.to_le_bytes())?;
    counted.write_all(&(tensors.len() as u64).to_le_bytes())?;
    counted.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (key, value) in metadata {
        write_string(&mut counted, key)?;
        counted.write_all(&value.type_code().to_le_bytes())?;
        value.write(&mut counted)?;
    }
    let mut offset = 0u64;
    for tensor in tensors {
        write_string(&mut counted, &tensor.name)?;
        counted.write_all(&(tensor.shape.len() as u32).to_le_bytes())?;
        // ggml's `ne` order: the fastest-varying (last row-major) dimension first.
        for dim in tensor.shape.iter().rev() {
            counted.write_all(&(*dim as u64).to_le_bytes())?;
        }
        counted.write_all(&tensor.ggml_type.to_le_bytes())?;
        counted.write_all(&offset.to_le_bytes())?;
        offset += tensor.byte_len + padding(tensor.byte_len);
    }
    let pad = padding(counted.written);
    counted.write_all(&vec![0u8; pad as usize])?;
    Ok(counted.written)
}

/// Writes one tensor's data and the padding that aligns the next one; tensors
/// must come in the header's order.
pub fn write_tensor_data(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.write_all(&vec![0u8; padding(bytes.len() as u64) as usize])
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_offsets_skip_each_tensors_padding() {
        let tensors = vec![
            TensorHeader {
                name: "a".into(),
                shape: vec![3],
                ggml_type: 0,
                byte_len: 12,
            },
            TensorHeader {
                name: "b".into(),
                shape: vec![2, 4],
                ggml_type: 0,
                byte_len: 32,
            },
        ];
        let metadata = vec![(
            "general.architecture".to_string(),
            MetaValue::String("llama".into()),
        )];
        let mut bytes = Vec::new();
        let len = write_header(&mut bytes, &metadata, &tensors).unwrap();
        assert_eq!(len as usize, bytes.len());
        assert_eq!(len % ALIGNMENT, 0);
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
        // b's offset (the header's last u64 before padding) is a's 12 bytes padded to 32.
        let b_name = bytes.windows(1).rposition(|w| w == b"b").unwrap();
        let dims_at = b_name + 1 + 4;
        assert_eq!(
            u64::from_le_bytes(bytes[dims_at..dims_at + 8].try_into().unwrap()),
            4
        );
        let offset_at = dims_at + 16 + 4;
        assert_eq!(
            u64::from_le_bytes(bytes[offset_at..offset_at + 8].try_into().unwrap()),
            32
        );
    }
}

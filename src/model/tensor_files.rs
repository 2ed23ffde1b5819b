//! A model folder's tensors by name, read from their safetensors files one tensor at
//! a time. Opening a folder parses only the files' headers; a tensor's bytes are read
//! (positioned reads, so no file is mapped or held whole) when it is taken, and a
//! hash can stream them in chunks. Loading or hashing a folder so holds at most one
//! tensor's bytes at once beside what it builds, whatever the folder's size: an 8B
//! model's 16 GB of bf16 never sit in memory as files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::Metadata;

use super::error::ModelError;
use super::weights::{weight_files, RawTensor};

/// The safetensors crate's own bound on a header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor: its dtype and shape, and where its bytes are.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// safetensors dtype name: `F32`, `BF16`, `F16`, `U8`, ...
    pub dtype: String,
    pub shape: Vec<usize>,
    bytes: Bytes,
}

#[derive(Debug, Clone)]
enum Bytes {
    /// Already in memory (tensors a caller built).
    Held(Arc<Vec<u8>>),
    /// `len` bytes at `offset` of a file.
    InFile {
        file: Arc<OpenFile>,
        offset: u64,
        len: usize,
    },
}

#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    file: File,
}

impl TensorEntry {
    /// The size of the tensor's data in bytes.
    pub fn byte_len(&self) -> usize {
        match &self.bytes {
            Bytes::Held(bytes) => bytes.len(),
            Bytes::InFile { len, .. } => *len,
        }
    }

    /// The tensor with its bytes, read from its file.
    pub fn read(&self) -> Result<RawTensor, ModelError> {
        let bytes = match &self.bytes {
            Bytes::Held(bytes) => bytes.as_ref().clone(),
            Bytes::InFile { file, offset, len } => {
                let mut bytes = vec![0u8; *len];
                file.file
                    .read_exact_at(&mut bytes, *offset)
                    .map_err(|e| ModelError::io(&file.path, e))?;
                bytes
            }
        };
        Ok(RawTensor {
            dtype: self.dtype.clone(),
            shape: self.shape.clone(),
            bytes,
        })
    }

    /// Hands the tensor's bytes to `each` in order, at most `chunk` bytes at a time.
    pub fn read_chunks(&self, chunk: usize, mut each: impl FnMut(&[u8])) -> Result<(), ModelError> {
        match &self.bytes {
            Bytes::Held(bytes) => bytes.chunks(chunk.max(1)).for_each(each),
            Bytes::InFile { file, offset, len } => {
                let mut buffer = vec![0u8; chunk.max(1).min(*len)];
                let mut done = 0;
                while done < *len {
                    let part = &mut buffer[..(*len - done).min(chunk.max(1))];
                    file.file
                        .read_exact_at(part, offset + done as u64)
                        .map_err(|e| ModelError::io(&file.path, e))?;
                    each(part);
                    done += part.len();
                }
            }
        }
        Ok(())
    }
}

/// A folder's (or a caller's) tensors by name, bytes read on demand.
#[derive(Debug, Clone, Default)]
pub struct TensorFiles {
    entries: BTreeMap<String, TensorEntry>,
}

impl TensorFiles {
    /// The tensors of a folder's safetensors files (the shards the index names, else
    /// `model.safetensors`); a name in two shards is an error.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let mut all = TensorFiles::default();
        for path in weight_files(dir)? {
            for (name, entry) in TensorFiles::open_file(&path)?.entries {
                if all.entries.insert(name.clone(), entry).is_some() {
                    return Err(ModelError::Safetensors {
                        path,
                        message: format!("tensor `{name}` appears in more than one shard"),
                    });
                }
            }
        }
        Ok(all)
    }

    /// The tensors of one safetensors file: its header read and checked (offsets
    /// contiguous, sizes matching dtypes and shapes, the file as long as the header
    /// says), its data left in the file.
    pub fn open_file(path: &Path) -> Result<Self, ModelError> {
        let invalid = |message: String| ModelError::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let mut size = [0u8; 8];
        file.read_exact(&mut size)
            .map_err(|_| invalid("shorter than its 8-byte header size".into()))?;
        let header_len = u64::from_le_bytes(size);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            return Err(invalid(format!(
                "a header of {header_len} bytes in a file of {file_len}"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| ModelError::io(path, e))?;
        // Metadata's deserializer checks offsets, dtypes and shapes against each other.
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| invalid(e.to_string()))?;
        let data_start = 8 + header_len;
        let infos = metadata.tensors();
        let data_len = infos
            .values()
            .map(|info| info.data_offsets.1 as u64)
            .max()
            .unwrap_or(0);
        if data_start + data_len != file_len {
            return Err(invalid(format!(
                "the header describes {data_len} bytes of data, the file holds {}",
                file_len - data_start
            )));
        }
        let file = Arc::new(OpenFile {
            path: path.to_path_buf(),
            file,
        });
        let entries = infos
            .into_iter()
            .map(|(name, info)| {
                let (start, end) = info.data_offsets;
                let entry = TensorEntry {
                    dtype: format!("{:?}", info.dtype),
                    shape: info.shape.clone(),
                    bytes: Bytes::InFile {
                        file: file.clone(),
                        offset: data_start + start as u64,
                        len: end - start,
                    },
                };
                (name, entry)
            })
            .collect();
        Ok(TensorFiles { entries })
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Takes `name` out without reading it.
    pub fn remove(&mut self, name: &str) -> Option<TensorEntry> {
        self.entries.remove(name)
    }

    /// Takes `name` out and reads it; `None` where there is no such tensor.
    pub fn take(&mut self, name: &str) -> Result<Option<RawTensor>, ModelError> {
        self.entries.remove(name).map(|e| e.read()).transpose()
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &TensorEntry)> {
        self.entries.iter()
    }

    /// The bytes of every tensor, summed.
    pub fn byte_len(&self) -> u64 {
        self.entries.values().map(|e| e.byte_len() as u64).sum()
    }

    /// Every tensor read into memory.
    pub fn read_all(&self) -> Result<BTreeMap<String, RawTensor>, ModelError> {
        self.entries
            .iter()
            .map(|(name, entry)| Ok((name.clone(), entry.read()?)))
            .collect()
    }
}

impl From<BTreeMap<String, RawTensor>> for TensorFiles {
    fn from(tensors: BTreeMap<String, RawTensor>) -> Self {
        let entries = tensors
            .into_iter()
            .map(|(name, raw)| {
                let entry = TensorEntry {
                    dtype: raw.dtype,
                    shape: raw.shape,
                    bytes: Bytes::Held(Arc::new(raw.bytes)),
                };
                (name, entry)
            })
            .collect();
        TensorFiles { entries }
    }
}

//! Where data bytes come from, and reading them line by line.
//!
//! A [`DataSource`] is a file or a byte buffer (an object read back from the
//! store, so that replay works after the original file moved). Lines are read
//! as bytes and checked for UTF-8 one at a time, so memory does not grow with
//! the file. An [`ExampleIndex`] remembers where every `CHUNK_EXAMPLES`-th
//! example starts, which lets a reader jump to any chunk of the file for
//! shuffled reading while keeping only a few bytes per chunk.

use super::error::{DataError, Result};
use std::io::{BufRead, BufReader, Cursor, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Examples per chunk: the unit of random access in a data file.
pub const CHUNK_EXAMPLES: u64 = 128;

/// A buffered, seekable reader over data bytes.
pub trait DataRead: BufRead + Seek + Send {}
impl<T: BufRead + Seek + Send> DataRead for T {}

#[derive(Clone, Debug)]
pub enum DataSource {
    File(PathBuf),
    /// Bytes in memory; `name` stands in for a file name in errors.
    Bytes {
        name: String,
        bytes: Arc<[u8]>,
    },
}

impl DataSource {
    pub fn file(path: impl AsRef<Path>) -> DataSource {
        DataSource::File(path.as_ref().to_path_buf())
    }

    pub fn bytes(name: &str, bytes: impl Into<Arc<[u8]>>) -> DataSource {
        DataSource::Bytes {
            name: name.to_string(),
            bytes: bytes.into(),
        }
    }

    /// The name errors use.
    pub fn name(&self) -> String {
        match self {
            DataSource::File(path) => path.display().to_string(),
            DataSource::Bytes { name, .. } => name.clone(),
        }
    }

    pub fn open(&self) -> Result<Box<dyn DataRead>> {
        match self {
            DataSource::File(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|err| DataError::io(&path.display().to_string(), err))?;
                Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
            }
            DataSource::Bytes { bytes, .. } => Ok(Box::new(Cursor::new(ArcBytes(bytes.clone())))),
        }
    }
}

/// `Cursor` needs `AsRef<[u8]>`; `Arc<[u8]>` gets it through this newtype.
struct ArcBytes(Arc<[u8]>);
impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// One non-blank line: an example before parsing.
#[derive(Clone, Debug)]
pub struct RawExample {
    /// 0-based position among the non-blank lines of the file.
    pub index: u64,
    /// 1-based line number, for errors.
    pub line: u64,
    pub text: String,
}

/// Reads lines as bytes, tracking line numbers and offsets.
pub struct LineReader {
    reader: Box<dyn DataRead>,
    file: String,
    buffer: Vec<u8>,
    /// Line number of the next line to read (1-based).
    next_line: u64,
    /// Byte offset of the next line.
    offset: u64,
}

/// A line as read: its number, start offset and bytes (without `\n`/`\r\n`).
pub struct LineRef<'a> {
    pub line: u64,
    pub offset: u64,
    pub bytes: &'a [u8],
    /// The bytes as in the file, line ending included (for hashing).
    pub raw: &'a [u8],
}

impl LineRef<'_> {
    /// JSON whitespace is ASCII, so a blank check needs no decoding.
    pub fn is_blank(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }
}

impl LineReader {
    pub fn open(source: &DataSource) -> Result<LineReader> {
        Ok(LineReader {
            reader: source.open()?,
            file: source.name(),
            buffer: Vec::with_capacity(4096),
            next_line: 1,
            offset: 0,
        })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Continue reading at `offset`, which is the start of line `line`.
    pub fn seek(&mut self, offset: u64, line: u64) -> Result<()> {
        self.reader
            .seek(SeekFrom::Start(offset))
            .map_err(|err| DataError::io(&self.file, err))?;
        self.offset = offset;
        self.next_line = line;
        Ok(())
    }

    /// The next line, or `None` at the end of the data.
    pub fn next_line(&mut self) -> Result<Option<LineRef<'_>>> {
        self.buffer.clear();
        let read = self
            .reader
            .read_until(b'\n', &mut self.buffer)
            .map_err(|err| DataError::io(&self.file, err))?;
        if read == 0 {
            return Ok(None);
        }
        let line = self.next_line;
        let offset = self.offset;
        self.next_line += 1;
        self.offset += read as u64;
        let mut end = self.buffer.len();
        if self.buffer[..end].ends_with(b"\n") {
            end -= 1;
        }
        if self.buffer[..end].ends_with(b"\r") {
            end -= 1;
        }
        Ok(Some(LineRef {
            line,
            offset,
            bytes: &self.buffer[..end],
            raw: &self.buffer,
        }))
    }
}

/// Decode a line as UTF-8, naming the first bad byte (1-based column).
pub fn line_text(bytes: &[u8], file: &str, line: u64) -> Result<String> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(err) => Err(DataError::NonUtf8 {
            file: file.to_string(),
            line,
            byte: err.valid_up_to() + 1,
        }),
    }
}

/// Where a chunk of examples starts in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkStart {
    pub offset: u64,
    pub line: u64,
}

/// The start of every chunk of `CHUNK_EXAMPLES` examples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExampleIndex {
    pub chunks: Vec<ChunkStart>,
    pub examples: u64,
}

impl ExampleIndex {
    /// One pass over the data; only line boundaries are looked at.
    pub fn build(source: &DataSource) -> Result<ExampleIndex> {
        let mut reader = LineReader::open(source)?;
        let mut index = ExampleIndex {
            chunks: Vec::new(),
            examples: 0,
        };
        while let Some(line) = reader.next_line()? {
            if line.is_blank() {
                continue;
            }
            if index.examples.is_multiple_of(CHUNK_EXAMPLES) {
                index.chunks.push(ChunkStart {
                    offset: line.offset,
                    line: line.line,
                });
            }
            index.examples += 1;
        }
        Ok(index)
    }

    /// Read chunk `chunk` (its non-blank lines, decoded).
    pub fn read_chunk(&self, reader: &mut LineReader, chunk: usize) -> Result<Vec<RawExample>> {
        let Some(start) = self.chunks.get(chunk) else {
            return Ok(Vec::new());
        };
        reader.seek(start.offset, start.line)?;
        let first = chunk as u64 * CHUNK_EXAMPLES;
        let count = CHUNK_EXAMPLES.min(self.examples - first);
        let mut out = Vec::with_capacity(count as usize);
        while (out.len() as u64) < count {
            let file = reader.file().to_string();
            let Some(line) = reader.next_line()? else {
                return Err(DataError::Resume {
                    message: format!("{file} is shorter than when it was indexed"),
                });
            };
            if line.is_blank() {
                continue;
            }
            let text = line_text(line.bytes, &file, line.line)?;
            out.push(RawExample {
                index: first + out.len() as u64,
                line: line.line,
                text,
            });
        }
        Ok(out)
    }
}

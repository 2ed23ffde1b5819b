//! Object files: immutable bytes named by their hash, under `objects/ab/cdef...`.
//!
//! A write streams the bytes through the hasher into a temp file in the same
//! folder, fsyncs it, and renames it into place, so a reader never sees a half
//! written object and a crash leaves at most a stray temp file (which `gc`
//! removes). Concurrent writers of the same content race harmlessly: both
//! renames put identical bytes at the same name. Every read re-hashes.

use super::canonical::{Id, ObjectHasher};
use super::error::{Result, StoreError};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ObjectStore {
    root: PathBuf,
}

impl ObjectStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ObjectStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path_of(&self, id: &Id) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.path_of(id).exists()
    }

    /// Store bytes; returns their id.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Id> {
        self.put_reader(bytes)
    }

    /// Store bytes without waiting for them to reach the disk; call
    /// [`ObjectStore::sync`] before recording anything that refers to them.
    /// A checkpoint writes dozens of small objects: one filesystem sync for
    /// all of them instead of two fsyncs each keeps recording off the
    /// training loop's critical path.
    pub fn put_bytes_deferred(&self, bytes: &[u8]) -> Result<Id> {
        self.write(bytes, false)
    }

    /// Make every object written so far durable (one `syncfs`).
    pub fn sync(&self) -> Result<()> {
        let dir = File::open(&self.root).map_err(|e| StoreError::io(&self.root, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(StoreError::io(&self.root, std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn write(&self, bytes: &[u8], durable: bool) -> Result<Id> {
        let id = super::canonical::object_id(bytes);
        let target = self.path_of(&id);
        if target.exists() {
            return Ok(id);
        }
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| StoreError::io(&parent, e))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.root)
            .map_err(|e| StoreError::io(&self.root, e))?;
        full_disk_hook(temp.path())?;
        temp.write_all(bytes)
            .map_err(|e| StoreError::io(temp.path(), e))?;
        if durable {
            temp.as_file()
                .sync_all()
                .map_err(|e| StoreError::io(temp.path(), e))?;
        }
        temp.persist(&target)
            .map_err(|e| StoreError::io(&target, e.error))?;
        if durable {
            sync_dir(&parent);
        }
        Ok(id)
    }

    /// Store a file's bytes, streaming (the file is never held in memory).
    pub fn put_file(&self, path: &Path) -> Result<Id> {
        let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
        self.put_reader(file)
    }

    /// Stream bytes into the store: hash while writing the temp file.
    pub fn put_reader(&self, mut reader: impl Read) -> Result<Id> {
        fs::create_dir_all(&self.root).map_err(|e| StoreError::io(&self.root, e))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.root)
            .map_err(|e| StoreError::io(&self.root, e))?;
        full_disk_hook(temp.path())?;
        let mut hasher = ObjectHasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = reader
                .read(&mut buffer)
                .map_err(|e| StoreError::io(temp.path(), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            temp.write_all(&buffer[..n])
                .map_err(|e| StoreError::io(temp.path(), e))?;
        }
        let id = hasher.finish();
        let target = self.path_of(&id);
        if target.exists() {
            // Same content already stored; the temp file is dropped.
            return Ok(id);
        }
        temp.as_file()
            .sync_all()
            .map_err(|e| StoreError::io(temp.path(), e))?;
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| StoreError::io(&parent, e))?;
        temp.persist(&target)
            .map_err(|e| StoreError::io(&target, e.error))?;
        sync_dir(&parent);
        Ok(id)
    }

    /// Begin writing an object whose id is known in advance (one received
    /// from elsewhere): bytes go to a temp file while hashing, and
    /// [`PendingObject::commit`] renames it into place only when the hash
    /// matches, so bytes that are not what their name says never land.
    pub fn begin_expected(&self, expected: Id) -> Result<PendingObject> {
        fs::create_dir_all(&self.root).map_err(|e| StoreError::io(&self.root, e))?;
        let temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.root)
            .map_err(|e| StoreError::io(&self.root, e))?;
        full_disk_hook(temp.path())?;
        Ok(PendingObject {
            expected,
            target: self.path_of(&expected),
            temp,
            hasher: ObjectHasher::new(),
        })
    }

    /// Read an object, verifying its hash.
    pub fn get(&self, id: &Id) -> Result<Vec<u8>> {
        let path = self.path_of(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::MissingObject { id: *id, path })
            }
            Err(e) => return Err(StoreError::io(path, e)),
        };
        let actual = super::canonical::object_id(&bytes);
        if actual != *id {
            return Err(StoreError::CorruptObject {
                id: *id,
                actual,
                path,
            });
        }
        Ok(bytes)
    }

    /// Re-hash an object without keeping its bytes; `Ok(())` when intact.
    pub fn check(&self, id: &Id) -> Result<()> {
        let path = self.path_of(id);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::MissingObject { id: *id, path })
            }
            Err(e) => return Err(StoreError::io(path, e)),
        };
        let mut hasher = ObjectHasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buffer)
                .map_err(|e| StoreError::io(&path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        let actual = hasher.finish();
        if actual != *id {
            return Err(StoreError::CorruptObject {
                id: *id,
                actual,
                path,
            });
        }
        Ok(())
    }

    /// Every object file present (by name), plus stray temp files.
    pub fn list(&self) -> Result<ObjectListing> {
        let mut listing = ObjectListing::default();
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
            Err(e) => return Err(StoreError::io(&self.root, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.root, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let path = entry.path();
            if name.starts_with(".tmp-") {
                listing.temp_files.push(path);
                continue;
            }
            if name.len() != 2 || !path.is_dir() {
                continue;
            }
            for inner in fs::read_dir(&path).map_err(|e| StoreError::io(&path, e))? {
                let inner = inner.map_err(|e| StoreError::io(&path, e))?;
                let rest = inner.file_name().to_string_lossy().to_string();
                match Id::from_hex(&format!("{name}{rest}")) {
                    Some(id) => listing.objects.push(id),
                    None => listing.temp_files.push(inner.path()),
                }
            }
        }
        listing.objects.sort();
        Ok(listing)
    }

    /// Delete an object file; returns the bytes freed.
    pub fn remove(&self, id: &Id) -> Result<u64> {
        let path = self.path_of(id);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    pub fn size_of(&self, id: &Id) -> u64 {
        fs::metadata(self.path_of(id)).map(|m| m.len()).unwrap_or(0)
    }
}

/// An object being received; see [`ObjectStore::begin_expected`].
pub struct PendingObject {
    expected: Id,
    target: PathBuf,
    temp: tempfile::NamedTempFile,
    hasher: ObjectHasher,
}

impl PendingObject {
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.temp
            .write_all(bytes)
            .map_err(|e| StoreError::io(self.temp.path(), e))
    }

    /// Put the object in place if its bytes hash to the expected id; a
    /// mismatch is `CorruptObject` and nothing is written. Not synced: call
    /// [`ObjectStore::sync`] before recording anything that refers to it (one
    /// `syncfs` for a whole transfer instead of two fsyncs per object).
    pub fn commit(self) -> Result<()> {
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(StoreError::CorruptObject {
                id: self.expected,
                actual,
                path: self.target,
            });
        }
        if self.target.exists() {
            return Ok(());
        }
        let parent = self
            .target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        fs::create_dir_all(&parent).map_err(|e| StoreError::io(&parent, e))?;
        self.temp
            .persist(&self.target)
            .map_err(|e| StoreError::io(&self.target, e.error))?;
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct ObjectListing {
    pub objects: Vec<Id>,
    pub temp_files: Vec<PathBuf>,
}

/// The full-disk hook of [`super::faults::object_write_limit`] (the temp file is
/// removed, nothing lands under the object's name).
fn full_disk_hook(temp: &Path) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    match super::faults::object_write_limit() {
        Some(limit) if WRITES.fetch_add(1, Ordering::Relaxed) >= limit => Err(StoreError::io(
            temp,
            std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device"),
        )),
        _ => Ok(()),
    }
}

/// fsync a directory so a rename into it survives a power cut. Best effort:
/// some filesystems refuse to open directories for sync.
pub fn sync_dir(path: &Path) {
    if let Ok(dir) = File::open(path) {
        let _ = dir.sync_all();
    }
}

//! The remote's storage, through the `object_store` crate: a folder
//! (`file:///path`) or an S3-compatible bucket (`s3://bucket/prefix`, with
//! the usual `AWS_*` environment: `AWS_ENDPOINT_URL` for an S3-compatible
//! server, `AWS_ALLOW_HTTP=true` for one without TLS).
//!
//! `object_store` is async; graft is not. The tokio runtime lives here and
//! nowhere else: every method blocks on it.

use super::RemoteError;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore as _, PutMode, PutOptions, PutPayload, UpdateVersion};
use std::sync::Arc;

/// A remote location, parsed from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Folder(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// `file:///abs/path`, a plain path (made absolute), or
    /// `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<Location, RemoteError> {
        let bad = |reason: &str| RemoteError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("it names no bucket: write s3://BUCKET/PREFIX"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = match url.strip_prefix("file://") {
            Some(path) if path.starts_with('/') => std::path::PathBuf::from(path),
            Some(_) => return Err(bad("a file URL takes an absolute path: file:///path")),
            None if url.contains("://") => {
                return Err(bad("graft reaches file:// and s3:// remotes only"))
            }
            None if url.is_empty() => return Err(bad("it is empty")),
            None => std::path::absolute(url).map_err(|e| bad(&e.to_string()))?,
        };
        Ok(Location::Folder(path))
    }

    /// The canonical URL, as recorded in the store's remote list.
    pub fn url(&self) -> String {
        match self {
            Location::Folder(path) => format!("file://{}", path.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// An open remote: blocking calls over `object_store`.
pub struct Backend {
    store: Arc<dyn object_store::ObjectStore>,
    runtime: tokio::runtime::Runtime,
    url: String,
}

/// What a conditional write found.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The object changed (or appeared) since it was read.
    Conflict,
}

/// A small file read from the remote with the version a conditional
/// update needs.
pub struct Versioned {
    pub bytes: Vec<u8>,
    pub version: UpdateVersion,
}

impl Backend {
    /// Open `location`; a folder remote is created when `create` is set.
    pub fn open(location: &Location, create: bool) -> Result<Backend, RemoteError> {
        let url = location.url();
        let failed = |e: &dyn std::fmt::Display| RemoteError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        };
        let store: Arc<dyn object_store::ObjectStore> = match location {
            Location::Folder(path) => {
                if create {
                    std::fs::create_dir_all(path).map_err(|e| failed(&e))?;
                } else if !path.is_dir() {
                    return Err(RemoteError::NoRecord { url: url.clone() });
                }
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(path)
                        .map_err(|e| failed(&e))?,
                )
            }
            Location::S3 { bucket, prefix } => {
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .is_ok_and(|e| e.starts_with("http://"))
                {
                    builder = builder.with_allow_http(true);
                }
                let s3 = builder.build().map_err(|e| failed(&e))?;
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(
                        s3,
                        Key::from(prefix.as_str()),
                    ))
                }
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .map_err(|e| failed(&e))?;
        Ok(Backend {
            store,
            runtime,
            url,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, key: &str, e: object_store::Error) -> RemoteError {
        RemoteError::Transfer {
            url: self.url.clone(),
            key: key.to_string(),
            reason: e.to_string(),
        }
    }

    /// Every key under `prefix` with its size.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        let key = Key::from(prefix);
        let listed: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.store.list(Some(&key)).try_collect())
            .map_err(|e| self.error(prefix, e))?;
        Ok(listed
            .into_iter()
            .map(|meta| (meta.location.to_string(), meta.size))
            .collect())
    }

    /// A small file, or `None` when there is none.
    pub fn get(&self, key: &str) -> Result<Option<Versioned>, RemoteError> {
        let location = Key::from(key);
        let result = self.runtime.block_on(async {
            let got = self.store.get(&location).await?;
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            Ok::<_, object_store::Error>((got.bytes().await?, version))
        });
        match result {
            Ok((bytes, version)) => Ok(Some(Versioned {
                bytes: bytes.to_vec(),
                version,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Write a small file whole (atomically on every backend).
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        let location = Key::from(key);
        self.runtime
            .block_on(self.store.put(&location, PutPayload::from(bytes)))
            .map_err(|e| self.error(key, e))?;
        Ok(())
    }

    /// Write only if the file is still at `expected` (`None`: still absent).
    /// A backend without conditional writes (a folder for updates) gets a
    /// re-read and compare just before a plain write: a narrow window, the
    /// best it allows.
    pub fn put_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: Option<&Versioned>,
    ) -> Result<Written, RemoteError> {
        let location = Key::from(key);
        let mode = match expected {
            None => PutMode::Create,
            Some(current) => PutMode::Update(current.version.clone()),
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let result = self.runtime.block_on(self.store.put_opts(
            &location,
            PutPayload::from(bytes.clone()),
            options,
        ));
        match result {
            Ok(_) => Ok(Written::Done),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Written::Conflict),
            Err(object_store::Error::NotImplemented)
            | Err(object_store::Error::NotSupported { .. }) => {
                let now = self.get(key)?;
                let same = match (expected, &now) {
                    (None, None) => true,
                    (Some(before), Some(now)) => before.bytes == now.bytes,
                    _ => false,
                };
                if !same {
                    return Ok(Written::Conflict);
                }
                self.put(key, bytes)?;
                Ok(Written::Done)
            }
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Run `jobs` with up to `parallel` in flight on the runtime.
    pub fn run_parallel<T, F>(
        &self,
        jobs: Vec<T>,
        parallel: usize,
        job: F,
    ) -> Result<(), RemoteError>
    where
        F: Fn(
            Arc<dyn object_store::ObjectStore>,
            T,
        ) -> futures::future::BoxFuture<'static, Result<(), RemoteError>>,
    {
        let store = self.store.clone();
        self.runtime.block_on(async {
            let mut stream = futures::stream::iter(jobs)
                .map(|item| job(store.clone(), item))
                .buffer_unordered(parallel.max(1));
            while let Some(result) = stream.next().await {
                result?;
            }
            Ok(())
        })
    }
}

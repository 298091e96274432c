//! A bucket: an object store behind a URL, a per-installation prefix, the
//! layout of chunks, manifests and leases under it, and retries.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result, is_transient};
use crate::manifest::{ChunkHash, Manifest};

/// How transient bucket errors are retried: exponential backoff with full
/// jitter, a bounded number of attempts.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub base_delay: Duration,
    /// Cap on one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.max_delay);
        // Full jitter: concurrent retries spread out instead of hitting the
        // bucket again in step.
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }
}

/// How to open a bucket URL.
#[derive(Clone, Debug, Default)]
pub struct BucketOptions {
    /// The installation's prefix, appended to the URL's path: every object
    /// this installation writes lives under it.
    pub prefix: String,
    /// Options for the store's builder, as object_store names them
    /// (`aws_endpoint`, `aws_allow_http`, `aws_access_key_id`, ...).
    pub store_options: Vec<(String, String)>,
    /// Retries of transient errors.
    pub retry: RetryPolicy,
}

/// A bucket holding chunks and manifests under a prefix. Cheap to clone.
///
/// # Layout
/// ```text
/// <prefix>/chunks/<hh>/<blake3 hex>        zstd-compressed chunk; hh = first 2 hex digits
/// <prefix>/manifests/<run>/<volume>.json   Manifest (JSON)
/// <prefix>/leases/<run>/<volume>.<id>.json Lease of a running upload (JSON)
/// <prefix>/gc.lock                         held while a garbage collection runs (JSON)
/// ```
#[derive(Clone, Debug)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    retry: RetryPolicy,
    /// Requests retried after a transient error, shared by the clones of
    /// this handle (an upload or a download counts its own).
    retries: Arc<AtomicU64>,
}

impl Bucket {
    /// Opens a bucket URL: `file:///dir` (the directory, created if absent),
    /// `memory://` (in process, for tests), `s3://bucket/path`, and with the
    /// crate features `gcp` and `azure`, `gs://` and `az://`. The URL's path
    /// (for cloud URLs) and `options.prefix` form the prefix.
    pub fn open(url: &str, options: &BucketOptions) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (store, url_path): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| invalid("not a local path".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| invalid(format!("cannot create {}: {e}", dir.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| invalid(e.to_string()))?
                    .with_fsync(true);
                (Arc::new(fs), Path::default())
            }
            "memory" => (
                Arc::new(object_store::memory::InMemory::new()),
                Path::default(),
            ),
            _ => {
                let (store, path) = object_store::parse_url_opts(
                    &parsed,
                    options
                        .store_options
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.clone())),
                )
                .map_err(|e| invalid(e.to_string()))?;
                (Arc::from(store), path)
            }
        };
        let mut prefix: Vec<String> = url_path.parts().map(|p| p.as_ref().to_string()).collect();
        prefix.extend(
            options
                .prefix
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        Ok(Bucket {
            store,
            prefix: Path::from_iter(prefix),
            retry: options.retry,
            retries: Arc::default(),
        })
    }

    /// A bucket over a store built by the caller (tests wrap stores to count
    /// or fail requests).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Bucket {
            store,
            prefix: Path::from(prefix),
            retry: RetryPolicy::default(),
            retries: Arc::default(),
        }
    }

    /// Bucket requests retried after a transient error through this handle
    /// and its clones.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The same bucket with a retry counter of its own, from zero: an
    /// upload or a download reports only its own retries.
    pub(crate) fn counting_retries(&self) -> Self {
        Bucket {
            retries: Arc::default(),
            ..self.clone()
        }
    }

    /// The same bucket with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix every object lives under.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    fn path(&self, parts: &[&str]) -> Path {
        let mut p = self.prefix.clone();
        for part in parts {
            p = p.join(*part);
        }
        p
    }

    /// `<prefix>/chunks/<hh>/<hex>`.
    pub fn chunk_path(&self, hash: &ChunkHash) -> Path {
        let hex = hash.to_hex();
        self.path(&["chunks", &hex[..2], &hex])
    }

    /// `<prefix>/chunks`.
    pub fn chunks_dir(&self) -> Path {
        self.path(&["chunks"])
    }

    /// `<prefix>/manifests/<run>/<volume>.json`.
    pub fn manifest_path(&self, run: &str, volume: &str) -> Result<Path> {
        check_name("run", run)?;
        check_name("volume", volume)?;
        Ok(self.path(&["manifests", run, &format!("{volume}.json")]))
    }

    /// `<prefix>/manifests` or `<prefix>/manifests/<run>`.
    pub fn manifests_dir(&self, run: Option<&str>) -> Result<Path> {
        match run {
            Some(run) => {
                check_name("run", run)?;
                Ok(self.path(&["manifests", run]))
            }
            None => Ok(self.path(&["manifests"])),
        }
    }

    /// `<prefix>/leases/<run>/<volume>.<holder>.json`: one lease per upload
    /// attempt, so that a failed attempt's late cleanup never deletes the
    /// lease of the attempt that follows it.
    pub fn lease_path(&self, run: &str, volume: &str, holder: &str) -> Result<Path> {
        check_name("run", run)?;
        check_name("volume", volume)?;
        check_name("holder", holder)?;
        Ok(self.path(&["leases", run, &format!("{volume}.{holder}.json")]))
    }

    /// Every lease in the bucket, live or expired (for `gc` and for a CLI
    /// that shows who is using the bucket).
    pub async fn list_leases(&self) -> Result<Vec<crate::gc::LeaseInfo>> {
        let mut out = Vec::new();
        for meta in self.list(&self.leases_dir(None)?).await? {
            let Some(b) = self.get_opt(&meta.location).await? else {
                continue;
            };
            let lease = serde_json::from_slice(&b).map_err(|e| Error::InvalidObject {
                path: meta.location.to_string(),
                reason: e.to_string(),
            })?;
            out.push(lease);
        }
        Ok(out)
    }

    /// `<prefix>/leases` or `<prefix>/leases/<run>`.
    pub fn leases_dir(&self, run: Option<&str>) -> Result<Path> {
        match run {
            Some(run) => {
                check_name("run", run)?;
                Ok(self.path(&["leases", run]))
            }
            None => Ok(self.path(&["leases"])),
        }
    }

    /// `<prefix>/gc.lock`.
    pub fn gc_lock_path(&self) -> Path {
        self.path(&["gc.lock"])
    }

    /// Runs `f` until it succeeds, fails permanently, or the attempts run out.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        path: &Path,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && attempt + 1 < self.retry.max_attempts => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(op, path = %path, attempt, error = %e, "transient bucket error; retrying");
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(Error::bucket(op, path, e)),
            }
        }
    }

    /// Stores `data` at `path` unless an object is there already. Returns
    /// whether this call created it. A retry after a write that committed but
    /// answered an error finds the object and returns `false`.
    pub(crate) async fn put_create(&self, path: &Path, data: Bytes) -> Result<bool> {
        let r = self
            .retry("put", path, || {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                self.store
                    .put_opts(path, PutPayload::from(data.clone()), opts)
            })
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(Error::Bucket {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores `data` at `path`, replacing any object there.
    pub(crate) async fn put_overwrite(&self, path: &Path, data: Bytes) -> Result<()> {
        self.retry("put", path, || {
            self.store.put(path, PutPayload::from(data.clone()))
        })
        .await?;
        Ok(())
    }

    /// The object's metadata, or `None` when it does not exist.
    pub(crate) async fn head_opt(&self, path: &Path) -> Result<Option<ObjectMeta>> {
        match self.retry("head", path, || self.store.head(path)).await {
            Ok(m) => Ok(Some(m)),
            Err(Error::Bucket {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The object's bytes, or `None` when it does not exist.
    pub(crate) async fn get_opt(&self, path: &Path) -> Result<Option<Bytes>> {
        let r = self.retry("get", path, || self.get_once(path)).await;
        match r {
            Ok(b) => Ok(Some(b)),
            Err(Error::Bucket {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One `get`. A local file is read on the mover's CPU pool rather than on
    /// tokio's blocking pool: buffers allocated on a fixed set of threads
    /// keep peak RSS flat (glibc gives every thread its own malloc arena).
    async fn get_once(&self, path: &Path) -> object_store::Result<Bytes> {
        let res = self.store.get(path).await?;
        match res.payload {
            object_store::GetResultPayload::File(mut file, _) => {
                let range = res.range.clone();
                let read = crate::task::cpu(move || -> std::io::Result<Bytes> {
                    use std::io::{Read, Seek, SeekFrom};
                    file.seek(SeekFrom::Start(range.start))?;
                    let len = range.end - range.start;
                    let mut v = Vec::with_capacity(len as usize);
                    file.take(len).read_to_end(&mut v)?;
                    Ok(Bytes::from(v))
                })
                .await;
                let generic =
                    |e: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: e,
                    };
                match read {
                    Ok(Ok(b)) => Ok(b),
                    Ok(Err(e)) => Err(generic(Box::new(e))),
                    Err(e) => Err(generic(Box::new(e))),
                }
            }
            object_store::GetResultPayload::Stream(_) => res.bytes().await,
        }
    }

    /// Deletes the object; absent is fine.
    pub(crate) async fn delete(&self, path: &Path) -> Result<()> {
        match self.retry("delete", path, || self.store.delete(path)).await {
            Ok(())
            | Err(Error::Bucket {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every object under `dir`, retrying the whole listing on a transient
    /// error.
    pub(crate) async fn list(&self, dir: &Path) -> Result<Vec<ObjectMeta>> {
        self.retry("list", dir, || {
            self.store.list(Some(dir)).try_collect::<Vec<_>>()
        })
        .await
    }

    /// Reads the manifest of `volume` in `run`.
    pub async fn read_manifest(&self, run: &str, volume: &str) -> Result<Manifest> {
        let path = self.manifest_path(run, volume)?;
        self.read_manifest_at(&path)
            .await?
            .ok_or_else(|| Error::InvalidObject {
                path: path.to_string(),
                reason: "no such manifest".into(),
            })
    }

    pub(crate) async fn read_manifest_at(&self, path: &Path) -> Result<Option<Manifest>> {
        let Some(bytes) = self.get_opt(path).await? else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::InvalidObject {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        m.check().map_err(|reason| Error::InvalidObject {
            path: path.to_string(),
            reason,
        })?;
        Ok(Some(m))
    }

    /// Checks that the bucket answers this installation, before a clone
    /// relies on it: lists the prefix (one level) and, when `write`, stores a
    /// small object `<prefix>/probes/<name>.json`, reads it back and deletes
    /// it. [`Error::BucketRefused`] when the credentials or the policy do not
    /// allow one of these.
    pub async fn probe(&self, name: &str, write: bool) -> Result<()> {
        check_name("probe", name)?;
        let prefix = self.prefix.clone();
        self.retry("list", &prefix, || {
            self.store.list_with_delimiter(Some(&prefix))
        })
        .await?;
        if !write {
            return Ok(());
        }
        let path = self.path(&["probes", &format!("{name}.json")]);
        let body = Bytes::from(format!("{{\"probe\":\"{name}\"}}"));
        self.put_overwrite(&path, body.clone()).await?;
        let read = match self.get_opt(&path).await {
            Ok(back) if back.as_ref() == Some(&body) => Ok(()),
            Ok(_) => Err(Error::InvalidObject {
                path: path.to_string(),
                reason: "the probe object read back is not what was written".into(),
            }),
            Err(e) => Err(e),
        };
        // Deleted whatever the read found; a read's error is the one told.
        let deleted = self.delete(&path).await;
        read.and(deleted)
    }

    /// The `(run, volume)` of every manifest, or of one run's.
    pub async fn list_manifests(&self, run: Option<&str>) -> Result<Vec<(String, String)>> {
        let base = self.manifests_dir(None)?;
        let dir = self.manifests_dir(run)?;
        let depth = base.parts().count();
        let mut out = Vec::new();
        for meta in self.list(&dir).await? {
            let parts: Vec<String> = meta
                .location
                .parts()
                .skip(depth)
                .map(|p| p.as_ref().to_string())
                .collect();
            if let [run, file] = parts.as_slice()
                && let Some(volume) = file.strip_suffix(".json")
            {
                out.push((run.clone(), volume.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Streams `source` into the object at `path` (relative to the prefix)
    /// with a multipart upload of `part_size`-byte parts, for objects too
    /// large for one request. Returns the bytes written. On any error the
    /// multipart upload is aborted, so no partial object and no orphaned
    /// parts are left behind.
    pub async fn put_large<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mut source: R,
        part_size: usize,
    ) -> Result<u64> {
        let path = self.path(
            &path
                .split('/')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>(),
        );
        let upload = self
            .retry("multipart", &path, || self.store.put_multipart(&path))
            .await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size.max(5 << 20));
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let result: Result<()> = async {
            loop {
                let n = source
                    .read(&mut buf)
                    .await
                    .map_err(|source| Error::SourceRead {
                        offset: total,
                        source,
                    })?;
                if n == 0 {
                    return Ok(());
                }
                // Bounded memory: at most a few parts in flight.
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| Error::bucket("multipart", &path, e))?;
                writer.write(&buf[..n]);
                total += n as u64;
            }
        }
        .await;
        match result {
            Ok(()) => match writer.finish().await {
                Ok(_) => Ok(total),
                Err(e) => Err(Error::bucket("multipart", &path, e)),
            },
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(path = %path, error = %abort, "aborting multipart upload failed");
                }
                Err(e)
            }
        }
    }

    /// Stores `data` at `path`, in one request or, above `threshold` bytes,
    /// as a multipart upload (aborted on error).
    pub(crate) async fn put_maybe_multipart(
        &self,
        path: &Path,
        data: Bytes,
        threshold: usize,
    ) -> Result<()> {
        if data.len() <= threshold {
            return self.put_overwrite(path, data).await;
        }
        let rel: Vec<String> = path
            .parts()
            .skip(self.prefix.parts().count())
            .map(|p| p.as_ref().to_string())
            .collect();
        self.put_large(&rel.join("/"), &data[..], 5 << 20)
            .await
            .map(|_| ())
    }
}

/// Run and volume names become path segments: keep them plain.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let b = Bucket::open(
            "memory://",
            &BucketOptions {
                prefix: "ferry/prod".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let h = ChunkHash::of(b"x");
        let hex = h.to_hex();
        assert_eq!(
            b.chunk_path(&h).to_string(),
            format!("ferry/prod/chunks/{}/{hex}", &hex[..2])
        );
        assert_eq!(
            b.manifest_path("r1", "v.a").unwrap().to_string(),
            "ferry/prod/manifests/r1/v.a.json"
        );
        assert!(b.manifest_path("r/1", "v").is_err());
        assert!(b.manifest_path("..", "v").is_err());
    }
}

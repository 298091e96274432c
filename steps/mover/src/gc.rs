//! Leases of running uploads, the garbage collector and manifest deletion.
//!
//! # The rule that makes `gc` safe against running uploads
//!
//! An upload may skip a chunk because it is already in the bucket (known from
//! a base manifest, found by `head`, or refused by create-if-absent). If a
//! collection deleted that chunk afterwards, the new manifest would name a
//! missing chunk. So uploads and collections exclude each other through two
//! kinds of objects, each written before the other kind is read:
//!
//! - an upload writes its **lease** (`leases/<run>/<volume>.<id>.json`, renewed
//!   every third of its TTL), then reads `gc.lock`; while a live lock exists
//!   it waits (up to `gc_wait`, then fails retryably);
//! - a collection creates **`gc.lock`** (create-if-absent, with an expiry),
//!   then lists the leases; if any live lease exists it deletes nothing,
//!   releases the lock and reports the uploads it stood down for.
//!
//! With a strongly consistent bucket (S3, GCS, Azure, local files) at least
//! one side sees the other, so no chunk is deleted while an upload that could
//! rely on it runs. A lease or lock whose holder crashed stops counting when
//! it expires; a collection stops deleting before its own lock expires.
//!
//! Among unreferenced chunks, a collection deletes only those whose
//! last-modified time is older than `grace` (default 24 h): chunks of an
//! upload that crashed and has not resumed yet stay for a day, so its resume
//! does not upload them again. (Correctness does not depend on the grace: a
//! resumed upload takes a new lease and checks each chunk with `head`.)

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::bucket::Bucket;
use crate::error::{Error, Result};
use crate::manifest::ChunkHash;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A running upload's lease, as stored in the bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The uploading run.
    pub run: String,
    /// The volume being uploaded.
    pub volume: String,
    /// A random id of this upload attempt.
    pub holder: String,
    /// When the upload started, Unix ms.
    pub started_at_ms: u64,
    /// The lease stops counting after this, Unix ms, unless renewed.
    pub expires_at_ms: u64,
}

/// The garbage collector's lock, as stored in the bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcLock {
    /// A random id of this collection.
    pub holder: String,
    /// When it started, Unix ms.
    pub started_at_ms: u64,
    /// The lock stops counting after this, Unix ms.
    pub expires_at_ms: u64,
}

/// A lease held by a running upload; renewed in the background until
/// released or dropped.
pub(crate) struct Lease {
    bucket: Bucket,
    path: Path,
    expires_at_ms: Arc<AtomicU64>,
    /// Time kept in hand for the manifest write after the last check.
    margin_ms: u64,
    renewer: Option<JoinHandle<()>>,
}

impl Lease {
    /// Writes the lease, then waits while a live `gc.lock` exists.
    pub(crate) async fn acquire(
        bucket: &Bucket,
        run: &str,
        volume: &str,
        ttl: Duration,
        gc_wait: Duration,
    ) -> Result<Lease> {
        let holder = random_id();
        let path = bucket.lease_path(run, volume, &holder)?;
        let ttl_ms = ttl.as_millis() as u64;
        let info = LeaseInfo {
            run: run.to_string(),
            volume: volume.to_string(),
            holder,
            started_at_ms: now_ms(),
            expires_at_ms: now_ms() + ttl_ms,
        };
        let body = Bytes::from(serde_json::to_vec(&info).expect("lease serializes"));
        bucket.put_overwrite(&path, body).await?;
        let expires_at_ms = Arc::new(AtomicU64::new(info.expires_at_ms));

        let lock_path = bucket.gc_lock_path();
        let waited_since = tokio::time::Instant::now();
        loop {
            let live = match bucket.get_opt(&lock_path).await? {
                Some(b) => serde_json::from_slice::<GcLock>(&b)
                    .map(|l| l.expires_at_ms > now_ms())
                    // An unreadable lock is treated as live until it is old.
                    .unwrap_or(true),
                None => false,
            };
            if !live {
                break;
            }
            if waited_since.elapsed() >= gc_wait {
                let _ = bucket.delete(&path).await;
                return Err(Error::GcRunning {
                    path: lock_path.to_string(),
                });
            }
            tracing::info!(lock = %lock_path, "garbage collection running; upload waits");
            tokio::time::sleep(Duration::from_millis(500).min(gc_wait)).await;
        }

        let renewer = {
            let bucket = bucket.clone();
            let path = path.clone();
            let expires = expires_at_ms.clone();
            let mut info = info;
            tokio::spawn(async move {
                let period = (ttl / 3).max(Duration::from_millis(10));
                loop {
                    tokio::time::sleep(period).await;
                    info.expires_at_ms = now_ms() + ttl_ms;
                    let body = Bytes::from(serde_json::to_vec(&info).expect("lease serializes"));
                    match bucket.put_overwrite(&path, body).await {
                        Ok(()) => expires.store(info.expires_at_ms, Ordering::Release),
                        Err(e) => {
                            tracing::warn!(lease = %path, error = %e, "renewing upload lease failed")
                        }
                    }
                }
            })
        };
        Ok(Lease {
            bucket: bucket.clone(),
            path,
            expires_at_ms,
            // Time kept in hand for the manifest write after the check.
            margin_ms: (ttl_ms / 10).min(1_000),
            renewer: Some(renewer),
        })
    }

    /// Fails once the lease has expired (or is about to): a collection may
    /// then run, so the upload must not write a manifest that relies on
    /// chunks it skipped.
    pub(crate) fn check(&self) -> Result<()> {
        if now_ms() + self.margin_ms >= self.expires_at_ms.load(Ordering::Acquire) {
            return Err(Error::LeaseLost {
                path: self.path.to_string(),
            });
        }
        Ok(())
    }

    /// Stops renewing and deletes the lease.
    pub(crate) async fn release(mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if let Err(e) = self.bucket.delete(&self.path).await {
            tracing::warn!(lease = %self.path, error = %e, "deleting upload lease failed; it will expire");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Dropped without release (the upload failed or was cancelled): stop
        // renewing; delete the lease in the background when a runtime is
        // still there, else it expires by itself.
        if let Some(r) = self.renewer.take() {
            r.abort();
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                let bucket = self.bucket.clone();
                let path = self.path.clone();
                h.spawn(async move {
                    let _ = bucket.delete(&path).await;
                });
            }
        }
    }
}

/// How a garbage collection runs.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Unreferenced chunks modified more recently than this are kept.
    pub grace: Duration,
    /// How long the collection's lock holds; it stops deleting before then.
    pub lock_ttl: Duration,
    /// Deletions in flight.
    pub concurrency: usize,
    /// Count what would be deleted, delete nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(24 * 3600),
            lock_ttl: Duration::from_secs(3600),
            concurrency: 16,
            dry_run: false,
        }
    }
}

/// What a garbage collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether it went through to the end (false when it stood down for
    /// running uploads or ran out of lock time).
    pub completed: bool,
    /// Live leases of running uploads that made it stand down.
    pub running_uploads: Vec<LeaseInfo>,
    /// Manifests read.
    pub manifests: usize,
    /// Chunk objects listed.
    pub chunks_seen: u64,
    /// Of those, named by some manifest.
    pub chunks_referenced: u64,
    /// Unreferenced but younger than the grace period: kept.
    pub chunks_spared_young: u64,
    /// Deleted (or, in a dry run, that would be).
    pub chunks_deleted: u64,
    /// Stored bytes deleted.
    pub bytes_deleted: u64,
}

/// Deletes the chunks that no manifest references, older than the grace
/// period, unless an upload is running (see the module docs for the rule).
///
/// # Errors
/// [`Error::GcRunning`] when another collection holds the lock; bucket
/// errors; [`Error::InvalidObject`] when a manifest cannot be read (nothing
/// is deleted then: an unreadable manifest may reference anything).
#[tracing::instrument(skip_all, fields(bucket.prefix = %bucket.prefix()))]
pub async fn gc(bucket: &Bucket, opts: &GcOptions) -> Result<GcReport> {
    let lock_path = bucket.gc_lock_path();
    let lock = GcLock {
        holder: random_id(),
        started_at_ms: now_ms(),
        expires_at_ms: now_ms() + opts.lock_ttl.as_millis() as u64,
    };
    let body = Bytes::from(serde_json::to_vec(&lock).expect("lock serializes"));
    if !bucket.put_create(&lock_path, body.clone()).await? {
        let stale = match bucket.get_opt(&lock_path).await? {
            Some(b) => serde_json::from_slice::<GcLock>(&b)
                .map(|l| l.expires_at_ms <= now_ms())
                .unwrap_or(false),
            None => true,
        };
        if !stale {
            return Err(Error::GcRunning {
                path: lock_path.to_string(),
            });
        }
        tracing::warn!(lock = %lock_path, "taking over an expired gc lock");
        bucket.delete(&lock_path).await?;
        if !bucket.put_create(&lock_path, body).await? {
            return Err(Error::GcRunning {
                path: lock_path.to_string(),
            });
        }
    }
    let result = gc_locked(bucket, opts, &lock).await;
    if let Err(e) = bucket.delete(&lock_path).await {
        tracing::warn!(lock = %lock_path, error = %e, "releasing the gc lock failed; it will expire");
    }
    result
}

async fn gc_locked(bucket: &Bucket, opts: &GcOptions, lock: &GcLock) -> Result<GcReport> {
    let mut report = GcReport::default();

    // Leases, after the lock was written.
    let now = now_ms();
    for meta in bucket.list(&bucket.leases_dir(None)?).await? {
        let Some(b) = bucket.get_opt(&meta.location).await? else {
            continue;
        };
        match serde_json::from_slice::<LeaseInfo>(&b) {
            Ok(l) if l.expires_at_ms > now => report.running_uploads.push(l),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::InvalidObject {
                    path: meta.location.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    if !report.running_uploads.is_empty() {
        tracing::info!(
            uploads = report.running_uploads.len(),
            "uploads running; gc deletes nothing"
        );
        return Ok(report);
    }

    // Every chunk any manifest names.
    let manifests = bucket.list(&bucket.manifests_dir(None)?).await?;
    report.manifests = manifests.len();
    let mut referenced: HashSet<ChunkHash> = HashSet::new();
    let mut reads = futures::stream::iter(manifests.into_iter().map(|m| m.location))
        .map(|path| async move { bucket.read_manifest_at(&path).await })
        .buffer_unordered(opts.concurrency.max(1));
    while let Some(m) = reads.try_next().await? {
        if let Some(m) = m {
            referenced.extend(m.chunks.iter().map(|c| c.hash));
        }
    }

    let now = now_ms();
    let grace_ms = opts.grace.as_millis() as u64;
    let mut doomed = Vec::new();
    for meta in bucket.list(&bucket.chunks_dir()).await? {
        let Some(hash) = meta.location.filename().and_then(ChunkHash::from_hex) else {
            continue;
        };
        report.chunks_seen += 1;
        if referenced.contains(&hash) {
            report.chunks_referenced += 1;
            continue;
        }
        let modified = meta.last_modified.timestamp_millis().max(0) as u64;
        if now.saturating_sub(modified) < grace_ms {
            report.chunks_spared_young += 1;
            continue;
        }
        doomed.push(meta);
    }

    // Stop well before the lock expires: after that an upload may start.
    let margin = (lock.expires_at_ms - lock.started_at_ms) / 10;
    let deadline = lock.expires_at_ms - margin;
    for batch in doomed.chunks(256) {
        if now_ms() >= deadline {
            tracing::warn!("gc lock nearly expired; stopping early");
            return Ok(report);
        }
        report.chunks_deleted += batch.len() as u64;
        report.bytes_deleted += batch.iter().map(|m| m.size).sum::<u64>();
        if opts.dry_run {
            continue;
        }
        // The futures are made up front: a closure borrowing each item inside
        // the stream would keep this future from being `Send` for every
        // lifetime (rustc's higher-ranked closure limitation), and the daemon
        // runs gc on its multi-thread runtime.
        let deletes: Vec<_> = batch.iter().map(|m| bucket.delete(&m.location)).collect();
        futures::stream::iter(deletes)
            .buffer_unordered(opts.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
    }
    report.completed = true;
    tracing::info!(
        deleted = report.chunks_deleted,
        bytes = report.bytes_deleted,
        "gc done"
    );
    Ok(report)
}

/// Deletes every manifest of `run` (compensation, cleanup) and any lease
/// its uploads left. Chunks stay: other runs may share them, and `gc` removes
/// those no manifest references. Returns the number of manifests deleted.
pub async fn delete_manifests(bucket: &Bucket, run: &str) -> Result<usize> {
    let mut n = 0;
    for meta in bucket.list(&bucket.manifests_dir(Some(run))?).await? {
        bucket.delete(&meta.location).await?;
        n += 1;
    }
    for meta in bucket.list(&bucket.leases_dir(Some(run))?).await? {
        bucket.delete(&meta.location).await?;
    }
    Ok(n)
}

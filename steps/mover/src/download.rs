//! Download: a manifest's chunks, fetched, verified and decompressed, written
//! in order into a stream (the stdin of `tar -x`).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::bucket::Bucket;
use crate::error::{Error, Result};
use crate::manifest::{ChunkHash, ChunkRef, Manifest};

/// How a download runs.
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    /// Chunks fetched and decompressed ahead of the writer.
    pub concurrency: usize,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions { concurrency: 8 }
    }
}

/// Counters of a download.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadStats {
    /// Stream bytes written.
    pub bytes_written: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Compressed bytes fetched.
    pub bytes_fetched: u64,
    /// Bucket requests retried after a transient error.
    #[serde(default)]
    pub retries: u64,
}

/// Download progress callback: called after each chunk is written.
pub type DownloadProgressFn = Arc<dyn Fn(&DownloadStats) + Send + Sync>;

/// A download of one manifest's stream. Build it, then [`Download::run`] it.
///
/// # Guarantees
/// Every chunk is verified (BLAKE3 and length, after decompression) before
/// any of its bytes are written; the whole stream's hash is checked at the
/// end; the writer is shut down (closing `tar -x`'s stdin) only after
/// everything verified. Memory is bounded by `concurrency` chunks.
pub struct Download {
    bucket: Bucket,
    manifest: Manifest,
    opts: DownloadOptions,
    on_progress: Option<DownloadProgressFn>,
}

impl Download {
    /// A download of `manifest` from `bucket`.
    pub fn new(bucket: &Bucket, manifest: &Manifest) -> Self {
        Download {
            bucket: bucket.clone(),
            manifest: manifest.clone(),
            opts: DownloadOptions::default(),
            on_progress: None,
        }
    }

    /// Replaces the options.
    pub fn options(mut self, opts: DownloadOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Sets the progress callback.
    pub fn on_progress(mut self, f: impl Fn(&DownloadStats) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// Writes the stream into `sink`, then shuts `sink` down.
    ///
    /// # Errors
    /// [`Error::MissingChunk`], [`Error::ChunkCorrupt`] (naming the chunk and
    /// the volume), [`Error::StreamMismatch`], [`Error::SinkWrite`], bucket
    /// errors. On error the sink is not shut down: the caller drops it, and
    /// `tar -x` sees a broken stream rather than a clean end.
    #[tracing::instrument(skip_all, fields(run.id = %self.manifest.run, volume = %self.manifest.volume))]
    pub async fn run<W>(self, mut sink: W) -> Result<DownloadStats>
    where
        W: AsyncWrite + Unpin,
    {
        let Download {
            bucket,
            manifest,
            opts,
            on_progress,
        } = self;
        manifest.check().map_err(|reason| Error::InvalidObject {
            path: format!("manifest of {}/{}", manifest.run, manifest.volume),
            reason,
        })?;
        let volume: Arc<str> = Arc::from(manifest.volume.as_str());
        let chunks = futures::stream::iter(manifest.chunks.iter().copied());
        let (stats, actual) =
            write_chunks(&bucket, &volume, chunks, &mut sink, &opts, &on_progress).await?;
        finish(sink, stats, &volume, manifest.stream_hash, actual).await
    }

    /// A download that follows an upload while it runs: it writes each chunk
    /// as soon as the upload reports it stored (send them, in stream order,
    /// from [`Upload::on_chunk`](crate::Upload::on_chunk)), so the two
    /// overlap instead of taking turns. See [`FollowDownload::run`].
    pub fn follow(
        bucket: &Bucket,
        volume: &str,
        chunks: mpsc::UnboundedReceiver<ChunkRef>,
    ) -> FollowDownload {
        FollowDownload {
            bucket: bucket.clone(),
            volume: volume.to_string(),
            chunks,
            opts: DownloadOptions::default(),
            on_progress: None,
        }
    }
}

/// A download following a running upload; made by [`Download::follow`].
///
/// # Guarantees
/// Those of [`Download`], but for one: the whole stream's hash is known only
/// when the upload ends, so `tar -x` has extracted what came before it is
/// checked. Every chunk is still verified before any of its bytes are
/// written, and the sink is shut down (a clean end of `tar -x`'s stdin) only
/// after the stream's hash matched the upload's manifest.
pub struct FollowDownload {
    bucket: Bucket,
    volume: String,
    chunks: mpsc::UnboundedReceiver<ChunkRef>,
    opts: DownloadOptions,
    on_progress: Option<DownloadProgressFn>,
}

impl FollowDownload {
    /// Replaces the options.
    pub fn options(mut self, opts: DownloadOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Sets the progress callback.
    pub fn on_progress(mut self, f: impl Fn(&DownloadStats) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// Writes the chunks into `sink` as they come; when their channel
    /// closes, waits for `stream_hash` (the upload's manifest's; `None` when
    /// the upload failed), checks the stream against it and shuts `sink`
    /// down.
    ///
    /// # Errors
    /// Those of [`Download::run`], and [`Error::UploadIncomplete`] when the
    /// upload ended without a manifest.
    #[tracing::instrument(skip_all, fields(volume = %self.volume))]
    pub async fn run<W, F>(self, mut sink: W, stream_hash: F) -> Result<DownloadStats>
    where
        W: AsyncWrite + Unpin,
        F: std::future::Future<Output = Option<ChunkHash>>,
    {
        let FollowDownload {
            bucket,
            volume,
            mut chunks,
            opts,
            on_progress,
        } = self;
        let volume: Arc<str> = Arc::from(volume.as_str());
        let refs = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
        let (stats, actual) =
            write_chunks(&bucket, &volume, refs, &mut sink, &opts, &on_progress).await?;
        let Some(expected) = stream_hash.await else {
            return Err(Error::UploadIncomplete {
                volume: volume.to_string(),
            });
        };
        finish(sink, stats, &volume, expected, actual).await
    }
}

/// Fetches, verifies and writes `chunks` in order into `sink`: the counters
/// and the BLAKE3 of what was written.
async fn write_chunks<W, S>(
    bucket: &Bucket,
    volume: &Arc<str>,
    chunks: S,
    sink: &mut W,
    opts: &DownloadOptions,
    on_progress: &Option<DownloadProgressFn>,
) -> Result<(DownloadStats, ChunkHash)>
where
    W: AsyncWrite + Unpin,
    S: futures::Stream<Item = ChunkRef>,
{
    let bucket = bucket.counting_retries();
    let mut fetched = std::pin::pin!(
        chunks
            .map(|c| {
                let bucket = bucket.clone();
                let volume = volume.clone();
                crate::task::spawn(async move { fetch_chunk(&bucket, &volume, c).await })
            })
            .buffered(opts.concurrency.max(1))
    );
    let mut stats = DownloadStats::default();
    let mut hasher = blake3::Hasher::new();
    while let Some(item) = fetched.next().await {
        let (data, stored_len) = item?;
        // Hash the stream on a blocking thread while the chunk is written.
        let to_hash = data.clone();
        let hashing = crate::task::cpu(move || {
            hasher.update(&to_hash);
            hasher
        });
        let written = sink.write_all(&data).await;
        hasher = hashing.await?;
        written.map_err(|source| Error::SinkWrite {
            offset: stats.bytes_written,
            source,
        })?;
        stats.bytes_written += data.len() as u64;
        stats.chunks += 1;
        stats.bytes_fetched += stored_len;
        stats.retries = bucket.retries();
        if let Some(f) = on_progress {
            f(&stats);
        }
    }
    stats.retries = bucket.retries();
    Ok((stats, hasher.finalize().into()))
}

/// Checks the stream's hash, then flushes and shuts the sink down.
async fn finish<W: AsyncWrite + Unpin>(
    mut sink: W,
    stats: DownloadStats,
    volume: &str,
    expected: ChunkHash,
    actual: ChunkHash,
) -> Result<DownloadStats> {
    if actual != expected {
        return Err(Error::StreamMismatch {
            volume: volume.to_string(),
            expected,
            actual,
        });
    }
    sink.flush().await.map_err(|source| Error::SinkWrite {
        offset: stats.bytes_written,
        source,
    })?;
    sink.shutdown().await.map_err(|source| Error::SinkWrite {
        offset: stats.bytes_written,
        source,
    })?;
    tracing::info!(
        bytes = stats.bytes_written,
        chunks = stats.chunks,
        "download done"
    );
    Ok(stats)
}

async fn fetch_chunk(bucket: &Bucket, volume: &str, c: ChunkRef) -> Result<(Bytes, u64)> {
    let path = bucket.chunk_path(&c.hash);
    let Some(stored) = bucket.get_opt(&path).await? else {
        return Err(Error::MissingChunk {
            volume: volume.to_string(),
            hash: c.hash,
            path: path.to_string(),
        });
    };
    let stored_len = stored.len() as u64;
    let volume = volume.to_string();
    crate::task::cpu(move || {
        let corrupt = |reason: String| Error::ChunkCorrupt {
            volume: volume.clone(),
            hash: c.hash,
            reason,
        };
        // The capacity bounds what a corrupt object can make us allocate.
        let data = zstd::bulk::decompress(&stored, c.len as usize)
            .map_err(|e| corrupt(format!("zstd: {e}")))?;
        if data.len() as u64 != c.len {
            return Err(corrupt(format!(
                "{} bytes after decompression, expected {}",
                data.len(),
                c.len
            )));
        }
        let actual = ChunkHash::of(&data);
        if actual != c.hash {
            return Err(corrupt(format!("content hashes to {actual}")));
        }
        Ok((Bytes::from(data), stored_len))
    })
    .await?
}

/// Downloads the manifest of `volume` in `run` into `sink`: a shorthand for
/// [`Bucket::read_manifest`] and [`Download`].
pub async fn download<W: AsyncWrite + Unpin>(
    bucket: &Bucket,
    run: &str,
    volume: &str,
    sink: W,
) -> Result<DownloadStats> {
    let manifest = bucket.read_manifest(run, volume).await?;
    Download::new(bucket, &manifest).run(sink).await
}

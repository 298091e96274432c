//! Download: a manifest's chunks, fetched, verified and decompressed, written
//! in order into a stream (the stdin of `tar -x`).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::Either;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::bucket::Bucket;
use crate::error::{Error, Result};
use crate::manifest::{ChunkHash, ChunkRef, Manifest, StreamHasher};

/// Bytes of chunks an upload may hand over in memory to the download that
/// follows it ([`ChunkSender`]) and that are not written yet: 8 MiB, about
/// eight chunks of the default size. A full budget makes the upload wait
/// for the download, so memory stays bounded whatever the volume's size.
pub const HANDOFF_BUDGET: usize = 8 << 20;

/// How a download runs.
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    /// Chunks fetched and decompressed ahead of the writer.
    pub concurrency: usize,
    /// A following download ([`Download::follow`]) reads every chunk back
    /// from the bucket and verifies it, even those the upload stored itself
    /// and could hand over from memory: proof that the bucket's copy
    /// restores, for a read, a decompression and a hash per chunk. Off by
    /// default (the bytes handed over are the ones hashed and stored).
    pub read_back: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            concurrency: 8,
            read_back: false,
        }
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
    /// Chunks written from a followed upload's memory: the upload stored
    /// them itself, from the very bytes it hashed, so they were not read
    /// back (the others were fetched and verified).
    #[serde(default)]
    pub chunks_handed: u64,
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
        let refs: Vec<Handoff> = manifest
            .chunks
            .iter()
            .map(|&chunk| Handoff { chunk, data: None })
            .collect();
        let chunks = futures::stream::iter(refs);
        let check = StreamCheck::for_manifest(&manifest);
        let (stats, actual) = write_chunks(
            &bucket,
            &volume,
            chunks,
            check,
            &mut sink,
            &opts,
            &on_progress,
        )
        .await?;
        finish(sink, stats, &volume, manifest.stream_hash, actual).await
    }

    /// A download that follows an upload while it runs: it writes each chunk
    /// as soon as the upload has it in the bucket (give the sender to
    /// [`Upload::hand_to`](crate::Upload::hand_to)), so the two overlap
    /// instead of taking turns. See [`FollowDownload::run`].
    pub fn follow(bucket: &Bucket, volume: &str) -> (ChunkSender, FollowDownload) {
        let (tx, chunks) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(HANDOFF_BUDGET));
        let sender = ChunkSender {
            tx,
            budget: budget.clone(),
        };
        let follow = FollowDownload {
            bucket: bucket.clone(),
            volume: volume.to_string(),
            chunks,
            budget: CloseOnDrop(budget),
            opts: DownloadOptions::default(),
            on_progress: None,
        };
        (sender, follow)
    }
}

/// A chunk on its way from an upload to the download following it.
struct Handoff {
    chunk: ChunkRef,
    /// Its bytes, when the upload stored it itself, with their share of
    /// [`HANDOFF_BUDGET`].
    data: Option<(Bytes, OwnedSemaphorePermit)>,
}

/// The upload's end of a [`FollowDownload`]: chunks go in stream order, each
/// once it is in the bucket. Dropping it tells the download the upload
/// ended. The download must run alongside the upload (`join!`), not after
/// it: once [`HANDOFF_BUDGET`] is handed over, the upload waits for the
/// download (a [`FollowDownload`] dropped unrun releases it).
#[derive(Debug)]
pub struct ChunkSender {
    tx: mpsc::UnboundedSender<Handoff>,
    budget: Arc<Semaphore>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("chunk", &self.chunk)
            .field("in_memory", &self.data.is_some())
            .finish()
    }
}

impl ChunkSender {
    /// Sends the next chunk; `data` is its bytes when this upload stored it
    /// (the download then writes them without reading the chunk back), and
    /// `None` when the bucket had it already (the download fetches and
    /// verifies it: a chunk this clone did not write is never trusted
    /// unread). Waits while [`HANDOFF_BUDGET`] bytes are handed over and
    /// not yet written. Returns false when the download has ended.
    pub async fn send(&self, chunk: &ChunkRef, data: Option<&Bytes>) -> bool {
        let data = match data {
            Some(bytes) => {
                // A chunk over the whole budget (the chunker allows up to
                // 16 MiB) takes all of it: at most one such chunk waits.
                let want = bytes.len().clamp(1, HANDOFF_BUDGET) as u32;
                match self.budget.clone().acquire_many_owned(want).await {
                    Ok(permit) => Some((bytes.clone(), permit)),
                    // The download ended (it closes the budget).
                    Err(_) => return false,
                }
            }
            None => None,
        };
        self.tx
            .send(Handoff {
                chunk: *chunk,
                data,
            })
            .is_ok()
    }
}

/// A download following a running upload; made by [`Download::follow`].
///
/// # Guarantees
/// Those of [`Download`], but for two:
/// - a chunk the followed upload stored itself is written from its memory,
///   as the bytes it hashed (and compressed into the bucket): reading it
///   back would cost a decompression, a hash and a bucket read (an S3 `GET`)
///   to learn nothing. Chunks the bucket already had (an earlier clone's)
///   are fetched and verified like [`Download`]'s, so a stored chunk that
///   rotted is still refused by name;
/// - the whole stream's hash is known only when the upload ends, so
///   `tar -x` has extracted what came before it is checked. The sink is
///   shut down (a clean end of `tar -x`'s stdin) only after the stream's
///   hash matched the upload's manifest.
///
/// Memory: at most [`HANDOFF_BUDGET`] bytes handed over and not yet
/// written (or one chunk, if larger), plus `concurrency` fetched chunks.
pub struct FollowDownload {
    bucket: Bucket,
    volume: String,
    chunks: mpsc::UnboundedReceiver<Handoff>,
    /// Closed when the download ends, run or not: the upload stops waiting.
    budget: CloseOnDrop,
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
            budget,
            opts,
            on_progress,
        } = self;
        // However this ends, the upload stops waiting for budget.
        let _close = budget;
        let volume: Arc<str> = Arc::from(volume.as_str());
        let handed = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
        let (stats, actual) = write_chunks(
            &bucket,
            &volume,
            handed,
            StreamCheck::Chunks(StreamHasher::new()),
            &mut sink,
            &opts,
            &on_progress,
        )
        .await?;
        let Some(expected) = stream_hash.await else {
            return Err(Error::UploadIncomplete {
                volume: volume.to_string(),
            });
        };
        finish(sink, stats, &volume, expected, actual).await
    }
}

/// Closes a [`ChunkSender`]'s budget when the download ends.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// How a download checks the stream it wrote against its manifest.
enum StreamCheck {
    /// Version 2: the chunks' lengths and hashes ([`StreamHasher`]); the
    /// hashes are those each chunk was verified against.
    Chunks(StreamHasher),
    /// Version 1: BLAKE3 over every byte written.
    Bytes(blake3::Hasher),
}

impl StreamCheck {
    fn for_manifest(m: &Manifest) -> Self {
        if m.version == 1 {
            StreamCheck::Bytes(blake3::Hasher::new())
        } else {
            StreamCheck::Chunks(StreamHasher::new())
        }
    }
}

/// Writes `chunks` in order into `sink`, fetching and verifying those not
/// handed over in memory: the counters and the stream's hash by `check`.
async fn write_chunks<W, S>(
    bucket: &Bucket,
    volume: &Arc<str>,
    chunks: S,
    mut check: StreamCheck,
    sink: &mut W,
    opts: &DownloadOptions,
    on_progress: &Option<DownloadProgressFn>,
) -> Result<(DownloadStats, ChunkHash)>
where
    W: AsyncWrite + Unpin,
    S: futures::Stream<Item = Handoff>,
{
    let bucket = bucket.counting_retries();
    let mut fetched = std::pin::pin!(
        chunks
            .map(|Handoff { chunk, data }| match data {
                Some((bytes, permit)) if !opts.read_back => {
                    Either::Left(futures::future::ready(Ok((
                        chunk,
                        bytes,
                        None,
                        Some(permit),
                    ))))
                }
                _ => {
                    let bucket = bucket.clone();
                    let volume = volume.clone();
                    Either::Right(crate::task::spawn(async move {
                        let (bytes, stored_len) = fetch_chunk(&bucket, &volume, chunk).await?;
                        Ok((chunk, bytes, Some(stored_len), None))
                    }))
                }
            })
            .buffered(opts.concurrency.max(1))
    );
    let mut stats = DownloadStats::default();
    while let Some(item) = fetched.next().await {
        let (chunk, data, stored_len, permit) = item?;
        if data.len() as u64 != chunk.len {
            return Err(Error::Internal(format!(
                "chunk {} of volume {volume} handed over with {} bytes, its reference says {}",
                chunk.hash,
                data.len(),
                chunk.len
            )));
        }
        let written = match &mut check {
            StreamCheck::Chunks(h) => {
                h.push(&chunk);
                sink.write_all(&data).await
            }
            StreamCheck::Bytes(h) => {
                // Hash on a CPU thread while the chunk is written.
                let (mut hasher, to_hash) = (h.clone(), data.clone());
                let hashing = crate::task::cpu(move || {
                    hasher.update(&to_hash);
                    hasher
                });
                let written = sink.write_all(&data).await;
                *h = hashing.await?;
                written
            }
        };
        written.map_err(|source| Error::SinkWrite {
            offset: stats.bytes_written,
            source,
        })?;
        drop(permit);
        stats.bytes_written += data.len() as u64;
        stats.chunks += 1;
        match stored_len {
            Some(n) => stats.bytes_fetched += n,
            None => stats.chunks_handed += 1,
        }
        stats.retries = bucket.retries();
        if let Some(f) = on_progress {
            f(&stats);
        }
    }
    stats.retries = bucket.retries();
    let actual = match check {
        StreamCheck::Chunks(h) => h.finish(),
        StreamCheck::Bytes(h) => h.finalize().into(),
    };
    Ok((stats, actual))
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

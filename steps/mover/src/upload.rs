//! Upload: a stream (the stdout of `tar -c`) into deduplicated chunks and a
//! manifest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::io::SyncIoBridge;

use crate::bucket::{Bucket, check_name};
use crate::chunker::{self, ChunkerParams, RawChunk};
use crate::download::ChunkSender;
use crate::error::{Error, Result};
use crate::gc::{Lease, now_ms};
use crate::manifest::{ChunkHash, ChunkRef, MANIFEST_VERSION, Manifest, StreamHasher};

/// The checkpoint format this binary writes.
pub const CHECKPOINT_VERSION: u32 = 1;

/// How an upload runs.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// How the stream is cut.
    pub chunker: ChunkerParams,
    /// Chunks in flight (hashing, compressing, `head`, `put`) at once.
    pub concurrency: usize,
    /// zstd level for chunks.
    pub zstd_level: i32,
    /// `head` each chunk before uploading it, to skip chunks the bucket has
    /// (from earlier clones or an interrupted attempt). Forced on when
    /// resuming. Off, chunks are sent with create-if-absent and a present one
    /// costs its bytes on the wire but is not stored twice.
    pub check_existing: bool,
    /// Manifests, as `(run, volume)`, whose chunks are taken as present
    /// without a `head` (a previous clone of the same volume). They are read
    /// after this upload's lease is held, so no collection can delete their
    /// chunks meanwhile; a base that no longer exists is skipped.
    pub base_manifests: Vec<(String, String)>,
    /// Least time between two checkpoints.
    pub checkpoint_interval: Duration,
    /// The upload's lease lifetime; renewed every third of it.
    pub lease_ttl: Duration,
    /// How long to wait for a running garbage collection before failing.
    pub gc_wait: Duration,
    /// Manifests larger than this are written with a multipart upload.
    pub multipart_threshold: usize,
    /// Chunks the bucket holds damaged (a download found them corrupt or
    /// missing): when the stream yields one, it is stored again, replacing
    /// the object there, however present it looks. The repaired object
    /// serves every manifest that names it.
    pub rewrite: Vec<ChunkHash>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            chunker: ChunkerParams::DEFAULT,
            concurrency: 8,
            zstd_level: 1,
            check_existing: true,
            base_manifests: Vec::new(),
            checkpoint_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(300),
            gc_wait: Duration::from_secs(120),
            multipart_threshold: 8 << 20,
            rewrite: Vec::new(),
        }
    }
}

/// Counters of an upload, passed to the progress callback after each chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStats {
    /// Stream bytes handled (stored or found present), in stream order.
    pub bytes_read: u64,
    /// Chunks handled.
    pub chunks: u64,
    /// Chunks this upload stored.
    pub chunks_uploaded: u64,
    /// Chunks found present (known, `head`, or create-if-absent refused).
    pub chunks_skipped: u64,
    /// Compressed bytes this upload stored (what went over the wire in puts).
    pub bytes_uploaded: u64,
    /// Uncompressed bytes of the chunks it stored.
    pub raw_bytes_uploaded: u64,
    /// Bucket requests retried after a transient error (each retry, not
    /// each request); absent from checkpoints older than this field.
    #[serde(default)]
    pub retries: u64,
    /// Chunks of [`UploadOptions::rewrite`] this upload stored again (each
    /// once; counted in `chunks_uploaded` too).
    #[serde(default)]
    pub chunks_rewritten: u64,
}

/// A resumable upload's progress, reported at a bounded rate for the caller
/// to make durable (the run's log). Serializable; pass the last one to
/// [`Upload::resume_from`] to resume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCheckpoint {
    /// Format version ([`CHECKPOINT_VERSION`]).
    pub version: u32,
    /// The run.
    pub run: String,
    /// The volume.
    pub volume: String,
    /// Every chunk of the stream's first `bytes_done` bytes is stored.
    pub bytes_done: u64,
    /// Chunks in those bytes.
    pub chunks_done: u64,
    /// Counters at the time of the checkpoint.
    pub stats: UploadStats,
}

/// What an upload produced.
#[derive(Clone, Debug)]
pub struct UploadOutcome {
    /// The manifest, as stored.
    pub manifest: Manifest,
    /// Its path in the bucket.
    pub manifest_path: String,
    /// Final counters.
    pub stats: UploadStats,
}

/// Progress callback: called after each chunk, in stream order.
pub type ProgressFn = Arc<dyn Fn(&UploadStats) + Send + Sync>;
/// Checkpoint callback: called at most once per checkpoint interval and once
/// at the end; the caller makes it durable (it must not block for long).
pub type CheckpointFn = Arc<dyn Fn(&UploadCheckpoint) + Send + Sync>;

/// An upload of one volume's stream. Build it, then [`Upload::run`] it.
///
/// ```no_run
/// # async fn f(bucket: ferry_mover::Bucket, tar_stdout: tokio::process::ChildStdout) -> ferry_mover::Result<()> {
/// let out = ferry_mover::Upload::new(&bucket, "run-1", "pgdata").run(tar_stdout).await?;
/// println!("{} chunks, {} uploaded", out.stats.chunks, out.stats.chunks_uploaded);
/// # Ok(()) }
/// ```
///
/// # Guarantees
/// Memory is bounded by `concurrency` + a few chunks of at most
/// `chunker.max` bytes, the chunker's buffer (three such chunks) and the
/// hand-over budget of a following download, whatever the stream's length
/// (plus the manifest: 48 bytes a chunk). The manifest is written only after every chunk it
/// names is stored. Running it again on the same stream is safe.
pub struct Upload {
    bucket: Bucket,
    run: String,
    volume: String,
    opts: UploadOptions,
    resume: Option<UploadCheckpoint>,
    on_progress: Option<ProgressFn>,
    on_checkpoint: Option<CheckpointFn>,
    hand_to: Option<ChunkSender>,
}

struct Ctx {
    bucket: Bucket,
    known: HashMap<ChunkHash, u64>,
    check_existing: bool,
    zstd_level: i32,
    /// [`UploadOptions::rewrite`]: each stored again once, by the first
    /// chunk task to meet it; every other occurrence in the stream waits for
    /// that write and takes its size (an earlier occurrence is handed on by
    /// reference, and must not be read before the object is whole again).
    rewrite: HashMap<ChunkHash, Arc<tokio::sync::OnceCell<u64>>>,
}

struct Stored {
    chunk: ChunkRef,
    /// The chunk's bytes when this upload stored it (it was not there).
    uploaded: Option<Bytes>,
    /// It was stored again over a damaged object ([`UploadOptions::rewrite`]).
    rewritten: bool,
}

impl Upload {
    /// An upload of `volume` for `run` into `bucket`, with default options.
    pub fn new(bucket: &Bucket, run: &str, volume: &str) -> Self {
        Upload {
            bucket: bucket.clone(),
            run: run.to_string(),
            volume: volume.to_string(),
            opts: UploadOptions::default(),
            resume: None,
            on_progress: None,
            on_checkpoint: None,
            hand_to: None,
        }
    }

    /// Replaces the options.
    pub fn options(mut self, opts: UploadOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Resumes an interrupted upload: the stream is read again from its
    /// start; chunks already stored are found (checkpoint, `head`) and not
    /// uploaded again.
    pub fn resume_from(mut self, checkpoint: UploadCheckpoint) -> Self {
        self.resume = Some(checkpoint);
        self
    }

    /// Sets the progress callback.
    pub fn on_progress(mut self, f: impl Fn(&UploadStats) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// Sets the checkpoint callback.
    pub fn on_checkpoint(mut self, f: impl Fn(&UploadCheckpoint) + Send + Sync + 'static) -> Self {
        self.on_checkpoint = Some(Arc::new(f));
        self
    }

    /// Hands each chunk, in stream order and once it is in the bucket, to a
    /// [`FollowDownload`](crate::FollowDownload) (made by
    /// [`Download::follow`](crate::Download::follow)), which writes it out
    /// while the upload goes on: with its bytes when this upload stored it,
    /// else by reference. The upload waits while the download's hand-over
    /// budget is full, and goes on alone if the download ends first.
    pub fn hand_to(mut self, sender: ChunkSender) -> Self {
        self.hand_to = Some(sender);
        self
    }

    /// Reads `source` to its end, stores its chunks and the manifest.
    ///
    /// # Errors
    /// [`Error::SourceRead`] when the stream fails; bucket errors (transient
    /// ones are retried first); [`Error::GcRunning`] when a collection holds
    /// the bucket too long; [`Error::LeaseLost`]. On error nothing needs
    /// cleaning: stored chunks are reused by the next attempt.
    #[tracing::instrument(skip_all, fields(run.id = %self.run, volume = %self.volume))]
    pub async fn run<R>(self, source: R) -> Result<UploadOutcome>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let Upload {
            bucket,
            run,
            volume,
            opts,
            resume,
            on_progress,
            on_checkpoint,
            mut hand_to,
        } = self;
        let bucket = bucket.counting_retries();
        check_name("run", &run)?;
        check_name("volume", &volume)?;
        opts.chunker.validate()?;
        let manifest_path = bucket.manifest_path(&run, &volume)?;
        let concurrency = opts.concurrency.max(1);

        let mut check_existing = opts.check_existing;
        if let Some(cp) = &resume {
            if cp.run != run || cp.volume != volume {
                return Err(Error::InvalidParams(format!(
                    "checkpoint of {}/{} given to the upload of {run}/{volume}",
                    cp.run, cp.volume
                )));
            }
            check_existing = true;
            tracing::info!(bytes_done = cp.bytes_done, "resuming upload");
        }

        let lease = Lease::acquire(&bucket, &run, &volume, opts.lease_ttl, opts.gc_wait).await?;

        // Known chunks: base manifests are read only now that the lease is
        // held, so no collection can delete their chunks before this
        // upload's manifest is written. A base that is gone adds nothing.
        let mut known: HashMap<ChunkHash, u64> = HashMap::new();
        for (base_run, base_volume) in &opts.base_manifests {
            let path = bucket.manifest_path(base_run, base_volume)?;
            match bucket.read_manifest_at(&path).await? {
                Some(m) => known.extend(m.chunks.iter().map(|c| (c.hash, c.stored_len))),
                None => {
                    tracing::info!(base = %path, "base manifest gone; not deduplicating against it")
                }
            }
        }
        let ctx = Arc::new(Ctx {
            bucket: bucket.clone(),
            known,
            check_existing,
            zstd_level: opts.zstd_level,
            rewrite: opts.rewrite.iter().map(|h| (*h, Arc::default())).collect(),
        });

        // The chunker need only stay a little ahead: the chunk tasks hold the rest.
        let (tx, mut rx) = mpsc::channel::<Result<RawChunk>>(2);
        let bridge = SyncIoBridge::new(source);
        let params = opts.chunker;
        let chunker = tokio::task::spawn_blocking(move || chunker::run(bridge, params, tx));

        let raw = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut stored = raw
            .map(|item| {
                let ctx = ctx.clone();
                crate::task::spawn(async move { store_chunk(&ctx, item?).await })
            })
            .buffered(concurrency);

        let mut chunks: Vec<ChunkRef> = Vec::new();
        let mut stream_hash = StreamHasher::new();
        let mut stats = UploadStats::default();
        let mut last_checkpoint = Instant::now();
        let checkpoint = |stats: &mut UploadStats| {
            stats.retries = bucket.retries();
            if let Some(f) = &on_checkpoint {
                f(&UploadCheckpoint {
                    version: CHECKPOINT_VERSION,
                    run: run.clone(),
                    volume: volume.clone(),
                    bytes_done: stats.bytes_read,
                    chunks_done: stats.chunks,
                    stats: *stats,
                });
            }
        };
        while let Some(item) = stored.next().await {
            let s = item?;
            stats.bytes_read += s.chunk.len;
            stats.chunks += 1;
            if s.rewritten {
                stats.chunks_rewritten += 1;
            }
            if s.uploaded.is_some() {
                stats.chunks_uploaded += 1;
                stats.bytes_uploaded += s.chunk.stored_len;
                stats.raw_bytes_uploaded += s.chunk.len;
            } else {
                stats.chunks_skipped += 1;
            }
            if let Some(to) = &hand_to
                && !to.send(&s.chunk, s.uploaded.as_ref()).await
            {
                // The download ended (it failed): the upload goes on alone.
                hand_to = None;
            }
            stream_hash.push(&s.chunk);
            chunks.push(s.chunk);
            if let Some(f) = &on_progress {
                f(&stats);
            }
            if last_checkpoint.elapsed() >= opts.checkpoint_interval {
                checkpoint(&mut stats);
                last_checkpoint = Instant::now();
            }
        }
        drop(stored);
        // The download learns the stream is whole from the manifest's hash.
        drop(hand_to);
        let end = chunker.await.map_err(Error::Task)?.ok_or_else(|| {
            // The chunker reports its own errors through the channel; getting
            // here means the channel closed early without one.
            Error::SourceRead {
                offset: stats.bytes_read,
                source: std::io::Error::other("chunker stopped before the end of the stream"),
            }
        })?;
        debug_assert_eq!(end.total_len, stats.bytes_read);

        let manifest = Manifest {
            version: MANIFEST_VERSION,
            run: run.clone(),
            volume: volume.clone(),
            chunker: opts.chunker,
            compression: "zstd".into(),
            chunks,
            total_len: end.total_len,
            stream_hash: stream_hash.finish(),
            created_at_ms: now_ms(),
        };
        lease.check()?;
        let body = Bytes::from(serde_json::to_vec(&manifest).expect("manifest serializes"));
        bucket
            .put_maybe_multipart(&manifest_path, body, opts.multipart_threshold)
            .await?;
        checkpoint(&mut stats);
        lease.release().await;
        tracing::info!(
            bytes = stats.bytes_read,
            chunks = stats.chunks,
            uploaded = stats.chunks_uploaded,
            skipped = stats.chunks_skipped,
            retries = stats.retries,
            "upload done"
        );
        Ok(UploadOutcome {
            manifest,
            manifest_path: manifest_path.to_string(),
            stats,
        })
    }
}

async fn store_chunk(ctx: &Ctx, raw: RawChunk) -> Result<Stored> {
    let RawChunk { data } = raw;
    let len = data.len() as u64;
    let (hash, data) = crate::task::cpu(move || (ChunkHash::of(&data), data)).await?;
    let path = ctx.bucket.chunk_path(&hash);
    if let Some(once) = ctx.rewrite.get(&hash) {
        let level = ctx.zstd_level;
        let mut wrote = None;
        let stored_len = *once
            .get_or_try_init(|| {
                let (data, wrote) = (data.clone(), &mut wrote);
                async move {
                    let (compressed, data) =
                        crate::task::cpu(move || (compress(&data, level), data)).await?;
                    let stored_len = compressed.len() as u64;
                    tracing::info!(chunk = %hash, "storing a damaged chunk again");
                    ctx.bucket.put_overwrite(&path, compressed).await?;
                    *wrote = Some(data);
                    Ok::<u64, Error>(stored_len)
                }
            })
            .await?;
        return Ok(Stored {
            chunk: ChunkRef {
                hash,
                len,
                stored_len,
            },
            rewritten: wrote.is_some(),
            uploaded: wrote,
        });
    }
    if let Some(&stored_len) = ctx.known.get(&hash) {
        return Ok(Stored {
            chunk: ChunkRef {
                hash,
                len,
                stored_len,
            },
            uploaded: None,
            rewritten: false,
        });
    }
    if ctx.check_existing
        && let Some(meta) = ctx.bucket.head_opt(&path).await?
    {
        return Ok(Stored {
            chunk: ChunkRef {
                hash,
                len,
                stored_len: meta.size,
            },
            uploaded: None,
            rewritten: false,
        });
    }
    let level = ctx.zstd_level;
    let (compressed, data) = crate::task::cpu(move || (compress(&data, level), data)).await?;
    let stored_len = compressed.len() as u64;
    let created = ctx.bucket.put_create(&path, compressed).await?;
    Ok(Stored {
        chunk: ChunkRef {
            hash,
            len,
            stored_len,
        },
        uploaded: created.then_some(data),
        rewritten: false,
    })
}

fn compress(data: &Bytes, level: i32) -> Bytes {
    // Compressing from memory to memory cannot fail but for allocation.
    Bytes::from(zstd::bulk::compress(data, level).expect("zstd compresses in memory"))
}

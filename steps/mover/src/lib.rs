//! ferry's data mover chunk store: a volume's tar stream into a bucket as
//! content-defined, deduplicated, compressed chunks plus a manifest, and back.
//!
//! The entry types:
//! - [`Bucket`]: an object store behind a URL (`file://`, `s3://`,
//!   `memory://`; `gs://` and `az://` with the `gcp` / `azure` features) and a
//!   per-installation prefix;
//! - [`Upload`]: reads an [`AsyncRead`](tokio::io::AsyncRead) (the stdout of
//!   `tar -c`), cuts it with FastCDC, hashes each chunk with BLAKE3,
//!   compresses it with zstd, stores the chunks the bucket lacks, and writes a
//!   [`Manifest`]; reports [`UploadStats`] and resumable
//!   [`UploadCheckpoint`]s;
//! - [`Download`]: fetches a manifest's chunks (several in flight), verifies
//!   and decompresses them, writes them in order into an
//!   [`AsyncWrite`](tokio::io::AsyncWrite) (the stdin of `tar -x`) and shuts
//!   it down; [`Download::follow`] does the same while an upload runs, chunk
//!   by chunk as the upload stores them ([`Upload::hand_to`]), taking the
//!   chunks the upload stored itself from its memory;
//! - [`gc()`] and [`delete_manifests`]: remove what no manifest needs, safely
//!   against running uploads (the rule is in [`gc`](mod@gc)'s module docs).
//!
//! Errors are one [`Error`] with [`Error::is_retryable`]; transient bucket
//! errors are retried inside with backoff ([`RetryPolicy`]).
//!
//! # Layout
//! ```text
//! <prefix>/chunks/<hh>/<blake3 hex>        one zstd-compressed chunk, named by the
//!                                          BLAKE3 of its uncompressed bytes;
//!                                          hh = the first two hex digits
//! <prefix>/manifests/<run>/<volume>.json   Manifest: chunks in stream order,
//!                                          lengths, the stream's hash
//! <prefix>/leases/<run>/<volume>.<id>.json lease of a running upload (gc stands down)
//! <prefix>/gc.lock                         held while a garbage collection runs
//! <prefix>/probes/<name>.json              a clone's preflight probe (deleted at once)
//! ```
//!
//! # Pipeline
//! Upload: a blocking thread reads the stream (through
//! [`SyncIoBridge`](tokio_util::io::SyncIoBridge)) and cuts chunks; chunks
//! go through a bounded channel to `concurrency` chunk tasks (BLAKE3 and
//! zstd on a fixed pool of CPU threads, `head`, create-if-absent `put`),
//! whose results are taken in stream order; the stream's hash is made from
//! the chunks' ([`StreamHasher`]). Download is the mirror image. Memory is
//! bounded by the channel, the tasks in flight and the hand-over budget
//! ([`HANDOFF_BUDGET`]), never by the stream's length.

pub mod bucket;
pub mod chunker;
pub mod download;
pub mod error;
pub mod gc;
pub mod manifest;
mod task;
pub mod upload;

pub use bucket::{Bucket, BucketOptions, RetryPolicy};
pub use chunker::ChunkerParams;
pub use download::{
    ChunkSender, Download, DownloadOptions, DownloadStats, FollowDownload, HANDOFF_BUDGET, download,
};
pub use error::{Error, Result};
pub use gc::{GcOptions, GcReport, LeaseInfo, delete_manifests, gc};
pub use manifest::{ChunkHash, ChunkRef, MANIFEST_VERSION, Manifest, StreamHasher};
pub use upload::{
    CheckpointFn, ProgressFn, Upload, UploadCheckpoint, UploadOptions, UploadOutcome, UploadStats,
};

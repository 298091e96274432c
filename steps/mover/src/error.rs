//! The mover's errors: what failed, on which chunk or object, and whether a
//! retry can help.

use std::io;

use crate::manifest::ChunkHash;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the chunk store can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stored chunk did not decompress, or its BLAKE3 hash or length after
    /// decompression differs from the name it is stored under: the object in
    /// the bucket is corrupt. Not retryable as it stands: the download is
    /// refused. An upload of the volume with the chunk in
    /// [`UploadOptions::rewrite`](crate::UploadOptions::rewrite) stores it
    /// again from the source ([`Error::damaged_chunk`]).
    #[error(
        "chunk {hash} of volume {volume} failed verification ({reason}); the stored object \
         is corrupt, and only the source has its bytes"
    )]
    ChunkCorrupt {
        /// The volume whose manifest names the chunk.
        volume: String,
        /// The chunk's hash (its name in the bucket).
        hash: ChunkHash,
        /// What did not match.
        reason: String,
    },

    /// A manifest names a chunk that is not in the bucket (deleted by hand,
    /// or by a garbage collection that ran against the rules). Not retryable
    /// as it stands; an upload with the chunk in
    /// [`UploadOptions::rewrite`](crate::UploadOptions::rewrite) stores it
    /// again.
    #[error(
        "chunk {hash} of volume {volume} is missing from the bucket at {path}; only the source \
         has its bytes"
    )]
    MissingChunk {
        /// The volume whose manifest names the chunk.
        volume: String,
        /// The chunk's hash.
        hash: ChunkHash,
        /// Where it was looked for.
        path: String,
    },

    /// The bucket refused the request for lack of rights (unauthenticated,
    /// permission denied): writes or reads will not succeed until the bucket's
    /// credentials or policy change. Not retryable.
    #[error(
        "bucket refused {op} of {path}: {source}; check the bucket's credentials and its \
         policy"
    )]
    BucketRefused {
        /// The operation (`put`, `get`, `head`, `delete`, `list`).
        op: &'static str,
        /// The object's path in the bucket.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },

    /// Another bucket error; retryable when the store's error is transient
    /// (a connection or server error that survived the in-crate retries).
    #[error("bucket {op} of {path} failed: {source}")]
    Bucket {
        /// The operation (`put`, `get`, `head`, `delete`, `list`, `multipart`).
        op: &'static str,
        /// The object's path in the bucket.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },

    /// The downloaded stream, although each chunk verified, does not hash to
    /// the manifest's stream hash: the manifest is inconsistent. Not retryable.
    #[error("the stream of volume {volume} hashes to {actual} but its manifest says {expected}")]
    StreamMismatch {
        /// The volume.
        volume: String,
        /// The manifest's `stream_hash`.
        expected: ChunkHash,
        /// The hash of what was written.
        actual: ChunkHash,
    },

    /// A download that followed an upload saw the upload end without a
    /// manifest: the upload failed (its own error says why). Retryable.
    #[error("the upload of volume {volume} that this download followed ended without a manifest")]
    UploadIncomplete {
        /// The volume.
        volume: String,
    },

    /// Reading the source stream (the stdout of `tar -c`) failed. Retryable:
    /// the upload starts the stream again and skips what is stored.
    #[error("reading the source stream failed after {offset} bytes: {source}")]
    SourceRead {
        /// Bytes read before the failure.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Writing the destination stream (the stdin of `tar -x`) failed.
    /// Retryable: a download restarts into a cleaned volume.
    #[error("writing the destination stream failed after {offset} bytes: {source}")]
    SinkWrite {
        /// Bytes written before the failure.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A manifest or a lease in the bucket could not be decoded, or has a
    /// format version this binary does not know. Not retryable.
    #[error("{path} is invalid: {reason}")]
    InvalidObject {
        /// The object's path.
        path: String,
        /// Why it cannot be read.
        reason: String,
    },

    /// A bucket URL that this build cannot open. Not retryable.
    #[error("invalid bucket URL {url}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it cannot be used (scheme unknown or not compiled in, bad path).
        reason: String,
    },

    /// A run or volume name that cannot be a path segment in the bucket.
    #[error("invalid {what} name {name:?}: use 1 to 200 characters of [A-Za-z0-9._-], not . or ..")]
    InvalidName {
        /// `run` or `volume`.
        what: &'static str,
        /// The name as given.
        name: String,
    },

    /// Chunker parameters outside FastCDC's limits.
    #[error("invalid chunker parameters: {0}")]
    InvalidParams(String),

    /// A garbage collection holds the bucket's lock; uploads wait for it and
    /// give up after their `gc_wait`. Retryable.
    #[error("garbage collection is running on the bucket (lock {path}); retry after it ends")]
    GcRunning {
        /// The lock object.
        path: String,
    },

    /// The upload could not renew its lease before the lease expired, so a
    /// garbage collection may have run meanwhile; the manifest is not written.
    /// Retryable (the next attempt takes a new lease and checks every chunk).
    #[error("upload lease {path} expired before it could be renewed")]
    LeaseLost {
        /// The lease object.
        path: String,
    },

    /// A background task (hashing, compression, chunking) panicked or was
    /// cancelled. Not retryable.
    #[error("mover task failed: {0}")]
    Task(#[source] tokio::task::JoinError),

    /// A hashing or compression job failed inside this crate. Not retryable.
    #[error("mover internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether running the same operation again may succeed: transient
    /// bucket errors, stream errors (the stream is produced again), a running
    /// garbage collection, a lost lease.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Bucket { source, .. } => is_transient(source),
            Error::SourceRead { .. }
            | Error::SinkWrite { .. }
            | Error::UploadIncomplete { .. }
            | Error::GcRunning { .. }
            | Error::LeaseLost { .. } => true,
            Error::ChunkCorrupt { .. }
            | Error::MissingChunk { .. }
            | Error::BucketRefused { .. }
            | Error::StreamMismatch { .. }
            | Error::InvalidObject { .. }
            | Error::InvalidUrl { .. }
            | Error::InvalidName { .. }
            | Error::InvalidParams(_)
            | Error::Task(_)
            | Error::Internal(_) => false,
        }
    }

    /// The chunk a download found damaged in the bucket (corrupt or
    /// missing): what an upload of the same source can store again.
    pub fn damaged_chunk(&self) -> Option<ChunkHash> {
        match self {
            Error::ChunkCorrupt { hash, .. } | Error::MissingChunk { hash, .. } => Some(*hash),
            _ => None,
        }
    }

    /// Wraps a store error, classifying refusals.
    pub(crate) fn bucket(
        op: &'static str,
        path: &object_store::path::Path,
        e: object_store::Error,
    ) -> Self {
        let path = path.to_string();
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Error::BucketRefused {
                op,
                path,
                source: e,
            },
            source => Error::Bucket { op, path, source },
        }
    }
}

/// Whether a store error may go away on its own: connection and server
/// errors arrive as `Generic` (after the cloud client's own retries); the
/// other variants describe the object or the request and will not change.
pub(crate) fn is_transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

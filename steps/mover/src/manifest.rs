//! Manifests: the ordered list of chunks that rebuilds one volume's stream.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::chunker::ChunkerParams;

/// The manifest format this binary writes; it reads this one only.
pub const MANIFEST_VERSION: u32 = 1;

/// A BLAKE3 hash: of a chunk's uncompressed bytes (its name in the bucket), or
/// of a whole stream. Shown and serialized as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The BLAKE3 hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkHash(*blake3::hash(data).as_bytes())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| ChunkHash(*h.as_bytes()))
    }
}

impl From<blake3::Hash> for ChunkHash {
    fn from(h: blake3::Hash) -> Self {
        ChunkHash(*h.as_bytes())
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({})", self.to_hex())
    }
}

impl Serialize for ChunkHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChunkHash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// One chunk of a stream, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the uncompressed bytes; the chunk's name in the bucket.
    pub hash: ChunkHash,
    /// Uncompressed length in bytes.
    pub len: u64,
    /// Length of the stored (zstd-compressed) object.
    pub stored_len: u64,
}

/// Everything needed to rebuild one volume's stream from the bucket, stored at
/// `<prefix>/manifests/<run>/<volume>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The run that uploaded it.
    pub run: String,
    /// The volume it holds.
    pub volume: String,
    /// How the stream was cut (informational: chunks are found by hash).
    pub chunker: ChunkerParams,
    /// How chunks are stored: always `"zstd"` in version 1.
    pub compression: String,
    /// The chunks, in stream order.
    pub chunks: Vec<ChunkRef>,
    /// Length of the whole stream.
    pub total_len: u64,
    /// BLAKE3 of the whole stream.
    pub stream_hash: ChunkHash,
    /// When the upload finished, Unix milliseconds (uploader's clock).
    pub created_at_ms: u64,
}

impl Manifest {
    /// Sum of the stored (compressed) chunk sizes, counting repeats.
    pub fn stored_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.stored_len).sum()
    }

    /// Checks the internal consistency a reader relies on: the version, and
    /// that the chunk lengths add up to `total_len`.
    pub fn check(&self) -> Result<(), String> {
        if self.version != MANIFEST_VERSION {
            return Err(format!(
                "manifest version {} (this binary reads {MANIFEST_VERSION})",
                self.version
            ));
        }
        if self.compression != "zstd" {
            return Err(format!("unknown compression {:?}", self.compression));
        }
        let sum: u64 = self.chunks.iter().map(|c| c.len).sum();
        if sum != self.total_len {
            return Err(format!(
                "chunk lengths add up to {sum}, total_len is {}",
                self.total_len
            ));
        }
        Ok(())
    }
}

//! Manifests: the ordered list of chunks that rebuilds one volume's stream.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::chunker::ChunkerParams;

/// The manifest format this binary writes. It reads this one and version 1,
/// whose `stream_hash` is the BLAKE3 of the stream's bytes themselves.
pub const MANIFEST_VERSION: u32 = 2;

/// The context string of [`StreamHasher`]'s BLAKE3 key derivation.
const STREAM_HASH_CONTEXT: &str = "ferry 2026-11 manifest v2 stream hash";

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
    /// The whole stream's hash: in version 2, the hash of its chunks'
    /// lengths and hashes in order ([`StreamHasher`]); in version 1, the
    /// BLAKE3 of its bytes.
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
        if !(1..=MANIFEST_VERSION).contains(&self.version) {
            return Err(format!(
                "manifest version {} (this binary reads 1 to {MANIFEST_VERSION})",
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

/// The stream hash of a version 2 manifest: BLAKE3, in key derivation mode,
/// over each chunk's length (8 bytes, little-endian) and hash, in stream
/// order. A hash tree over the stream: it binds every byte (each chunk's
/// hash binds its bytes, and the list binds their order) without a second
/// pass over the data, where version 1 hashed the whole stream again on both
/// sides (two of a clone's four BLAKE3 passes over the data).
#[derive(Clone)]
pub struct StreamHasher(blake3::Hasher);

impl StreamHasher {
    /// An empty stream's hasher.
    pub fn new() -> Self {
        StreamHasher(blake3::Hasher::new_derive_key(STREAM_HASH_CONTEXT))
    }

    /// Adds the next chunk.
    pub fn push(&mut self, chunk: &ChunkRef) {
        self.0.update(&chunk.len.to_le_bytes());
        self.0.update(&chunk.hash.0);
    }

    /// The hash of the chunks pushed so far.
    pub fn finish(&self) -> ChunkHash {
        self.0.finalize().into()
    }

    /// The stream hash of `chunks`.
    pub fn of(chunks: &[ChunkRef]) -> ChunkHash {
        let mut h = StreamHasher::new();
        chunks.iter().for_each(|c| h.push(c));
        h.finish()
    }
}

impl Default for StreamHasher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(byte: u8, len: u64) -> ChunkRef {
        ChunkRef {
            hash: ChunkHash([byte; 32]),
            len,
            stored_len: len / 2,
        }
    }

    #[test]
    fn the_stream_hash_binds_chunks_lengths_and_order_but_not_stored_sizes() {
        let (a, b) = (chunk(1, 10), chunk(2, 20));
        let base = StreamHasher::of(&[a, b]);
        assert_eq!(base, StreamHasher::of(&[a, b]));
        assert_ne!(base, StreamHasher::of(&[b, a]), "order");
        assert_ne!(base, StreamHasher::of(&[a]), "a chunk dropped");
        assert_ne!(base, StreamHasher::of(&[a, chunk(2, 21)]), "a length");
        assert_ne!(base, StreamHasher::of(&[a, chunk(3, 20)]), "a chunk");
        let restored = ChunkRef { stored_len: 7, ..b };
        assert_eq!(base, StreamHasher::of(&[a, restored]));
        // Not the plain BLAKE3 of the same bytes: a version 1 hash of some
        // stream cannot pass for a version 2 one.
        let mut plain = blake3::Hasher::new();
        for c in [a, b] {
            plain.update(&c.len.to_le_bytes());
            plain.update(&c.hash.0);
        }
        assert_ne!(base, ChunkHash::from(plain.finalize()));
    }
}

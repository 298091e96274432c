//! The envelope: one record of a run's log, and its versioned encoding.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::Hash;

/// The format byte of the first envelope encoding: bincode 2.0.1 `config::standard()`
/// (varint) of [`Envelope`]. bincode is unmaintained with a frozen format
/// (RUSTSEC-2025-0141); the byte lets another codec follow without breaking old logs.
pub const FORMAT_V1: u8 = 1;

/// One record of a run's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Dense sequence number within the run, from 0.
    pub seq: u64,
    /// When it was appended, unix milliseconds (the engine's clock, recorded once).
    pub at_ms: u64,
    /// BLAKE3 of the previous envelope's [`encode`](Envelope::encode) bytes;
    /// [`genesis_hash`](crate::genesis_hash) for seq 0.
    pub prev_hash: Hash,
    /// The event, opaque to the store (the engine's bincode-encoded event).
    pub event: Vec<u8>,
}

impl Envelope {
    /// `[FORMAT_V1] ++ bincode(standard(), self)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.event.len() + 48);
        out.push(FORMAT_V1);
        // Encoding plain integers, a byte array and a byte vector into a Vec cannot fail.
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("bincode encodes an Envelope into a Vec");
        out.extend_from_slice(&body);
        out
    }

    /// Decodes [`encode`](Envelope::encode)'s output.
    ///
    /// # Errors
    /// [`Error::Codec`] for an empty input, an unknown format byte, bytes that
    /// do not decode, or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (&format, body) = bytes.split_first().ok_or_else(|| codec("empty record"))?;
        if format != FORMAT_V1 {
            return Err(codec(format!(
                "unknown envelope format byte {format} (this binary reads format {FORMAT_V1}); \
                 was the log written by a newer ferry?"
            )));
        }
        let (env, used): (Envelope, usize) =
            bincode::serde::decode_from_slice(body, bincode::config::standard())
                .map_err(|e| codec(e.to_string()))?;
        if used != body.len() {
            return Err(codec(format!(
                "{} trailing bytes after the envelope",
                body.len() - used
            )));
        }
        Ok(env)
    }

    /// BLAKE3 of [`encode`](Envelope::encode): what the next envelope's `prev_hash` holds.
    pub fn hash(&self) -> Hash {
        *blake3::hash(&self.encode()).as_bytes()
    }
}

fn codec(reason: impl Into<String>) -> Error {
    Error::Codec {
        what: "decode an envelope",
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_format() {
        let env = Envelope {
            seq: 300,
            at_ms: 1_700_000_000_000,
            prev_hash: [7; 32],
            event: b"hi".to_vec(),
        };
        let bytes = env.encode();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        let mut other = bytes.clone();
        other[0] = 2;
        assert!(Envelope::decode(&other).is_err());
        assert!(Envelope::decode(&[]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Envelope::decode(&trailing).is_err());
        assert!(Envelope::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}

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

// bincode 2's varint (config::standard()): one byte up to 250, else a marker
// byte and the value little-endian in 2, 4 or 8 bytes.
const VARINT_MAX_SINGLE: u8 = 250;
const VARINT_U16: u8 = 251;
const VARINT_U32: u8 = 252;
const VARINT_U64: u8 = 253;

fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v <= u64::from(VARINT_MAX_SINGLE) {
        out.push(v as u8);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(VARINT_U16);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(VARINT_U32);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(VARINT_U64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads what [`put_varint`] writes, as bincode 2 does (which also accepts a
/// value written longer than it needs).
fn take_varint(b: &mut &[u8]) -> Result<u64> {
    let (&first, rest) = b
        .split_first()
        .ok_or_else(|| codec("the record ends inside an integer"))?;
    let n = match first {
        0..=VARINT_MAX_SINGLE => {
            *b = rest;
            return Ok(u64::from(first));
        }
        VARINT_U16 => 2,
        VARINT_U32 => 4,
        VARINT_U64 => 8,
        other => return Err(codec(format!("invalid integer marker byte {other}"))),
    };
    let bytes = rest
        .get(..n)
        .ok_or_else(|| codec("the record ends inside an integer"))?;
    let mut le = [0u8; 8];
    le[..n].copy_from_slice(bytes);
    *b = &rest[n..];
    Ok(u64::from_le_bytes(le))
}

impl Envelope {
    /// `[FORMAT_V1] ++ bincode(standard(), self)`.
    ///
    /// Written by hand, byte for byte what bincode 2.0.1 writes (the golden
    /// file and a test against bincode pin it): serde hands a `Vec<u8>` to
    /// bincode one byte at a time, which made encoding and decoding the
    /// costliest part of staging an append and of reading a log.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.event.len() + 1 + 9 + 9 + 32 + 9);
        out.push(FORMAT_V1);
        put_varint(&mut out, self.seq);
        put_varint(&mut out, self.at_ms);
        out.extend_from_slice(&self.prev_hash);
        put_varint(&mut out, self.event.len() as u64);
        out.extend_from_slice(&self.event);
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
        let mut b = body;
        let seq = take_varint(&mut b)?;
        let at_ms = take_varint(&mut b)?;
        let (prev_hash, rest) = b
            .split_first_chunk::<32>()
            .ok_or_else(|| codec("the record ends inside prev_hash"))?;
        b = rest;
        let len = take_varint(&mut b)?;
        let event = usize::try_from(len)
            .ok()
            .and_then(|len| b.get(..len))
            .ok_or_else(|| codec(format!("the record ends inside its {len}-byte event")))?;
        if b.len() > event.len() {
            return Err(codec(format!(
                "{} trailing bytes after the envelope",
                b.len() - event.len()
            )));
        }
        Ok(Envelope {
            seq,
            at_ms,
            prev_hash: *prev_hash,
            event: event.to_vec(),
        })
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

    fn bincode_encode(env: &Envelope) -> Vec<u8> {
        let mut out = vec![FORMAT_V1];
        out.extend(bincode::serde::encode_to_vec(env, bincode::config::standard()).unwrap());
        out
    }

    fn bincode_decode(bytes: &[u8]) -> Option<Envelope> {
        let body = bytes.strip_prefix(&[FORMAT_V1])?;
        let (env, used): (Envelope, usize) =
            bincode::serde::decode_from_slice(body, bincode::config::standard()).ok()?;
        (used == body.len()).then_some(env)
    }

    fn edge() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            0..=300u64,
            (0..=2u64).prop_map(|d| u64::from(u16::MAX) - 1 + d),
            (0..=2u64).prop_map(|d| u64::from(u32::MAX) - 1 + d),
            any::<u64>(),
        ]
    }

    proptest::proptest! {
        /// The hand-written codec is bincode 2.0.1's, byte for byte.
        #[test]
        fn codec_matches_bincode(
            seq in edge(),
            at_ms in edge(),
            prev_hash in proptest::prelude::any::<[u8; 32]>(),
            event in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let env = Envelope { seq, at_ms, prev_hash, event };
            let bytes = env.encode();
            proptest::prop_assert_eq!(&bytes, &bincode_encode(&env));
            proptest::prop_assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        }

        /// On any input, decoding agrees with bincode: the same envelope or an error.
        #[test]
        fn decode_agrees_with_bincode(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), tweak in 0usize..4) {
            if let Some(b) = bytes.first_mut() { *b = FORMAT_V1; }
            // Bias towards varint markers in the integer positions.
            if tweak > 0 && bytes.len() > tweak { bytes[tweak] = 250 + tweak as u8; }
            proptest::prop_assert_eq!(Envelope::decode(&bytes).ok(), bincode_decode(&bytes));
        }
    }
}

//! The run index and the key layout in sled.
//!
//! Everything lives in sled's default tree, told apart by a one-byte prefix. A
//! run's events and its index entry are one commit (one WAL record, see
//! `wal.rs`), applied to sled together:
//!
//! | key | value |
//! |---|---|
//! | `e` ++ run (16) ++ seq (u64 BE) | [`Envelope::encode`](crate::Envelope::encode) |
//! | `r` ++ run (16) | `[1] ++ bincode(RunSummary)` |
//! | `n` ++ name (UTF-8) | run (16) |
//! | `b` ++ run (16) ++ blob hash (32) | empty: the run owns the blob |
//! | `B` ++ blob hash (32) ++ run (16) | empty: reverse of `b`, to know when a blob is unowned |
//! | `w` | the number of the last WAL commit applied (u64 BE), written with every commit |

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{Hash, Key32, RunId};

pub(crate) const EVENT: u8 = b'e';
pub(crate) const RUN: u8 = b'r';
pub(crate) const NAME: u8 = b'n';
pub(crate) const BLOB_OWNER: u8 = b'b';
pub(crate) const BLOB_BY_HASH: u8 = b'B';
pub(crate) const WAL_MARK: u8 = b'w';

const SUMMARY_V1: u8 = 1;

/// What the engine tells the index with each append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexUpdate {
    /// The run's user-facing name, unique among runs on record. Fixed by the
    /// run's first append; later values are ignored.
    pub name: String,
    /// The run's phase after this append, as the engine names it.
    pub phase: String,
    /// The step being worked on, if any.
    pub current_step: Option<String>,
    /// True when this append ends the run: no more events will follow.
    pub terminal: bool,
}

/// A run's index entry: everything `list` shows, without replaying the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run.
    pub run: RunId,
    /// Its unique name.
    pub name: String,
    /// Its phase, from the last append.
    pub phase: String,
    /// The step being worked on, from the last append.
    pub current_step: Option<String>,
    /// Whether the run has ended.
    pub terminal: bool,
    /// The seq the next append must name (= number of events).
    pub next_seq: u64,
    /// Hash of the last envelope (the genesis hash when there is none).
    pub head_hash: Hash,
    /// Keyed MAC of (run, next_seq, head_hash), see [`head_mac`].
    pub head_mac: Hash,
    /// `at_ms` of the run's first append.
    pub created_ms: u64,
    /// `at_ms` of the run's last append.
    pub updated_ms: u64,
}

impl RunSummary {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![SUMMARY_V1];
        out.extend(
            bincode::serde::encode_to_vec(self, bincode::config::standard())
                .expect("bincode encodes a RunSummary into a Vec"),
        );
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::Codec {
            what: "decode a run index entry",
            reason,
        };
        match bytes.split_first() {
            Some((&SUMMARY_V1, body)) => {
                let (s, used): (RunSummary, usize) =
                    bincode::serde::decode_from_slice(body, bincode::config::standard())
                        .map_err(|e| bad(e.to_string()))?;
                if used != body.len() {
                    return Err(bad("trailing bytes".into()));
                }
                Ok(s)
            }
            Some((b, _)) => Err(bad(format!("unknown index format byte {b}"))),
            None => Err(bad("empty entry".into())),
        }
    }
}

/// The head MAC: `blake3::keyed_hash(mac_key, run ++ next_seq BE ++ head_hash)`.
///
/// Without the key, a rewritten state dir cannot carry a head that verifies.
pub fn head_mac(key: &Key32, run: RunId, next_seq: u64, head_hash: &Hash) -> Hash {
    let mut msg = [0u8; 16 + 8 + 32];
    msg[..16].copy_from_slice(run.as_bytes());
    msg[16..24].copy_from_slice(&next_seq.to_be_bytes());
    msg[24..].copy_from_slice(head_hash);
    *blake3::keyed_hash(key.bytes(), &msg).as_bytes()
}

pub(crate) fn event_key(run: RunId, seq: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = EVENT;
    k[1..17].copy_from_slice(run.as_bytes());
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn event_prefix(run: RunId) -> [u8; 17] {
    run_key_with(EVENT, run)
}

pub(crate) fn run_key(run: RunId) -> [u8; 17] {
    run_key_with(RUN, run)
}

pub(crate) fn blob_owner_prefix(run: RunId) -> [u8; 17] {
    run_key_with(BLOB_OWNER, run)
}

fn run_key_with(prefix: u8, run: RunId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..].copy_from_slice(run.as_bytes());
    k
}

pub(crate) fn name_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(NAME);
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn blob_owner_key(run: RunId, hash: &Hash) -> Vec<u8> {
    let mut k = run_key_with(BLOB_OWNER, run).to_vec();
    k.extend_from_slice(hash);
    k
}

pub(crate) fn blob_by_hash_prefix(hash: &Hash) -> Vec<u8> {
    let mut k = Vec::with_capacity(49);
    k.push(BLOB_BY_HASH);
    k.extend_from_slice(hash);
    k
}

pub(crate) fn blob_by_hash_key(hash: &Hash, run: RunId) -> Vec<u8> {
    let mut k = blob_by_hash_prefix(hash);
    k.extend_from_slice(run.as_bytes());
    k
}

/// The key of sled's commit mark: the last WAL commit applied to sled.
pub(crate) fn wal_mark_key() -> [u8; 1] {
    [WAL_MARK]
}

/// Decodes sled's commit mark.
pub(crate) fn decode_wal_mark(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// The seq in an event key, if the key is one.
pub(crate) fn seq_of_event_key(key: &[u8]) -> Option<u64> {
    (key.len() == 25 && key[0] == EVENT)
        .then(|| u64::from_be_bytes(key[17..].try_into().expect("8 bytes")))
}

/// The run id in an index key.
pub(crate) fn run_of_run_key(key: &[u8]) -> Option<RunId> {
    (key.len() == 17 && key[0] == RUN).then(|| {
        RunId(uuid::Uuid::from_bytes(
            key[1..].try_into().expect("16 bytes"),
        ))
    })
}

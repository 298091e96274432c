//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;

use ferry_store::{IndexUpdate, Key32, Store, StoreOptions};

pub const MAC_KEY: [u8; 32] = [7; 32];
pub const BLOB_KEY: [u8; 32] = [9; 32];

pub fn opts(dir: &Path) -> StoreOptions {
    StoreOptions {
        dir: dir.to_owned(),
        mac_key: Key32::from_bytes(MAC_KEY),
        blob_key: Some(Key32::from_bytes(BLOB_KEY)),
    }
}

pub fn open(dir: &Path) -> Store {
    Store::open(opts(dir)).expect("open store")
}

pub fn update(name: &str, phase: &str, terminal: bool) -> IndexUpdate {
    IndexUpdate {
        name: name.to_owned(),
        phase: phase.to_owned(),
        current_step: None,
        terminal,
    }
}

pub fn events(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .collect()
}

/// The sled key of one event: `e` ++ run ++ seq BE (the documented layout).
pub fn event_key(run: ferry_store::RunId, seq: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(run.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Opens the sled db of a closed store directly, as an intruder with write access would.
pub fn raw_sled(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir.join("sled"))
        .open()
        .expect("open raw sled")
}

/// Drops a raw sled handle and waits until sled has closed its file (its IO
/// threads may hold it a moment longer): a blocking flock returns as soon as
/// sled's is released.
pub fn close_raw_sled(db: sled::Db, dir: &Path) {
    db.flush().expect("flush raw sled");
    drop(db);
    let f = std::fs::File::open(dir.join("sled").join("db")).expect("open sled file");
    f.lock().expect("wait for sled's lock");
}

/// The active WAL segment of a closed or killed store, read with the documented
/// framing (`wal.rs`): its path, and the offsets of its records in order.
pub fn wal_active_records(dir: &Path) -> (std::path::PathBuf, Vec<usize>) {
    let mut best: Option<(u64, std::path::PathBuf, Vec<u8>)> = None;
    for name in ["0", "1"] {
        let path = dir.join("wal").join(name);
        let bytes = std::fs::read(&path).expect("read WAL segment");
        if &bytes[..8] != b"FERRYWAL" {
            continue;
        }
        let generation = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        if best.as_ref().is_none_or(|(g, _, _)| generation > *g) {
            best = Some((generation, path, bytes));
        }
    }
    let (_, path, bytes) = best.expect("a WAL segment with a header");
    let mut offsets = Vec::new();
    let mut at = 4096;
    let mut expect = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
    while &bytes[at..at + 4] == b"FWR1"
        && u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap()) == expect
    {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += (40 + len).div_ceil(8) * 8;
        expect += 1;
    }
    (path, offsets)
}

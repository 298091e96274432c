//! Blob files: large payloads kept beside the db, in `DIR/blobs/`.
//!
//! sled writes values over about 128 KiB to separate files it never fsyncs, so
//! large payloads never go into sled: they are files here, written to a temp
//! file, fsynced, renamed to their final name and the directory fsynced, named
//! by the hex BLAKE3 hash of the bytes stored. Encrypted blobs are
//! `[ENC_V1] ++ nonce (24) ++ XChaCha20-Poly1305 ciphertext`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{Hash, Key32, hex};

const ENC_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// A reference to a blob file, carried in events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// BLAKE3 of the bytes stored in the file (the ciphertext when encrypted).
    pub hash: Hash,
    /// Whether the file is encrypted with the blob key.
    pub encrypted: bool,
    /// Length of the original (plaintext) bytes.
    pub len: u64,
}

pub(crate) fn blob_path(dir: &Path, hash: &Hash) -> PathBuf {
    dir.join(hex(hash))
}

/// Writes `bytes` (encrypted when `key` is given) durably; returns its ref.
pub(crate) fn write(dir: &Path, bytes: &[u8], key: Option<&Key32>) -> Result<BlobRef> {
    let stored = match key {
        None => bytes.to_vec(),
        Some(key) => {
            let mut nonce = [0u8; NONCE_LEN];
            rand::rng().fill_bytes(&mut nonce);
            let cipher = XChaCha20Poly1305::new(key.bytes().into());
            let ct = cipher
                .encrypt(XNonce::from_slice(&nonce), bytes)
                .map_err(|_| Error::Codec {
                    what: "encrypt a blob",
                    reason: "XChaCha20-Poly1305 refused the input".into(),
                })?;
            let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
            out.push(ENC_V1);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&ct);
            out
        }
    };
    let hash = *blake3::hash(&stored).as_bytes();
    let final_path = blob_path(dir, &hash);
    let blob = BlobRef {
        hash,
        encrypted: key.is_some(),
        len: bytes.len() as u64,
    };
    if final_path.exists() {
        // Content-addressed: the same bytes are already there (and were fsynced when written).
        return Ok(blob);
    }
    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let tmp = dir.join(format!(".tmp-{}-{}", hex(&hash[..8]), hex(&suffix)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(Error::io(&tmp))?;
        f.write_all(&stored).map_err(Error::io(&tmp))?;
        f.sync_all().map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &final_path).map_err(Error::io(&final_path))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| blob)
}

/// Reads a blob, checks its hash and decrypts it.
pub(crate) fn read(dir: &Path, blob: &BlobRef, key: Option<&Key32>) -> Result<Vec<u8>> {
    let path = blob_path(dir, &blob.hash);
    let stored = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::BlobMissing {
                hash: hex(&blob.hash),
                path,
            });
        }
        Err(e) => return Err(Error::Io { path, source: e }),
    };
    let integrity = |reason: &str| Error::BlobIntegrity {
        hash: hex(&blob.hash),
        path: path.clone(),
        reason: reason.into(),
    };
    if blake3::hash(&stored).as_bytes() != &blob.hash {
        return Err(integrity("the file's BLAKE3 hash differs from its name"));
    }
    let plain = if blob.encrypted {
        let key = key.ok_or(Error::NoBlobKey)?;
        if stored.len() < 1 + NONCE_LEN || stored[0] != ENC_V1 {
            return Err(integrity("not an encrypted blob of a known format"));
        }
        let cipher = XChaCha20Poly1305::new(key.bytes().into());
        cipher
            .decrypt(
                XNonce::from_slice(&stored[1..1 + NONCE_LEN]),
                &stored[1 + NONCE_LEN..],
            )
            .map_err(|_| {
                integrity("it does not decrypt with the configured blob key (wrong key?)")
            })?
    } else {
        stored
    };
    if plain.len() as u64 != blob.len {
        return Err(integrity("its length differs from the reference"));
    }
    Ok(plain)
}

/// Removes a blob file; a missing one is not an error.
pub(crate) fn remove(dir: &Path, hash: &Hash) -> Result<()> {
    let path = blob_path(dir, hash);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io { path, source: e }),
    }
}

/// fsyncs a directory, so that a rename or create in it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

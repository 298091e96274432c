//! Run ids, hashes and keys.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A BLAKE3 hash (or keyed MAC).
pub type Hash = [u8; 32];

/// A run's id: a UUID v7, so ids sort by creation time.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct RunId(pub uuid::Uuid);

impl RunId {
    /// A fresh id, `Uuid::now_v7()`.
    #[allow(clippy::new_without_default)] // a default id would be a fresh random one: say so at the call site
    pub fn new() -> Self {
        RunId(uuid::Uuid::now_v7())
    }

    /// ferry's short id: the first 8 characters of the lowercase RFC 4648
    /// base32 (no padding) of BLAKE3 of the uuid's 16 bytes.
    ///
    /// The leading digits of a UUID v7 are a timestamp shared by runs started
    /// within the same minute, so they make a poor short name; the hash does not.
    pub fn short(&self) -> String {
        let h = blake3::hash(self.0.as_bytes());
        base32_lower(&h.as_bytes()[..5])
    }

    /// The uuid's 16 bytes, as used in keys.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for RunId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(RunId)
    }
}

/// RFC 4648 base32, lowercase, no padding.
fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buf: u64 = 0;
    let mut bits = 0u32;
    for &b in bytes {
        buf = (buf << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The `prev_hash` of a run's seq 0: BLAKE3 of `b"ferry.genesis"` ++ the run id's 16 bytes.
///
/// Binding the genesis to the run id means a log cannot be moved under another run.
pub fn genesis_hash(run: RunId) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry.genesis");
    h.update(run.as_bytes());
    *h.finalize().as_bytes()
}

/// Lowercase hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// A 32-byte secret key (audit MAC or blob encryption), kept in a file outside
/// the state dir so that write access to the state dir alone cannot forge a log
/// or read a Secret.
#[derive(Clone)]
pub struct Key32([u8; 32]);

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32(<redacted>)")
    }
}

impl Key32 {
    /// The key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Key32(bytes)
    }

    /// Reads the key file (exactly 32 raw bytes), or, if it does not exist,
    /// creates it with 32 random bytes, mode 0600, creating its parent dir.
    ///
    /// # Errors
    /// [`Error::Key`] if the file is not 32 bytes; [`Error::Io`] on I/O failure.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::Key {
                    path: path.to_owned(),
                    reason: format!(
                        "holds {} bytes, a key is exactly 32 raw bytes; fix the file or point the config at the right one",
                        bytes.len()
                    ),
                })?;
                warn_if_readable_by_others(path);
                Ok(Key32(arr))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(Error::Io {
                path: path.to_owned(),
                source: e,
            }),
        }
    }

    fn create(path: &Path) -> Result<Self> {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = match opts.open(path) {
            Ok(f) => f,
            // Another process created it between our read and our create: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Self::load_or_create(path);
            }
            Err(e) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source: e,
                });
            }
        };
        f.write_all(&key).map_err(Error::io(path))?;
        f.sync_all().map_err(Error::io(path))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::blobs::fsync_dir(parent)?;
        }
        tracing::info!(path = %path.display(), "created a new key file");
        Ok(Key32(key))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "key file is readable by group or others; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _: &Path = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32_lower(b""), "");
        assert_eq!(base32_lower(b"f"), "my");
        assert_eq!(base32_lower(b"fo"), "mzxq");
        assert_eq!(base32_lower(b"foo"), "mzxw6");
        assert_eq!(base32_lower(b"foob"), "mzxw6yq");
        assert_eq!(base32_lower(b"fooba"), "mzxw6ytb");
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn short_is_8_chars_of_base32() {
        let id: RunId = "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap();
        let s = id.short();
        assert_eq!(s.len(), 8);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_eq!(
            s,
            base32_lower(&blake3::hash(id.as_bytes()).as_bytes()[..5])
        );
        assert_eq!(id.to_string(), "01890a5d-ac96-774b-bcce-b302099a8057");
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}

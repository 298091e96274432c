//! The clean-shutdown marker, `DIR/CLEAN`: catches a log that sled lost at rest.
//!
//! sled 0.34.7 treats a damaged record in its data file as a torn write from a
//! crash: at open it silently truncates its log at that point, and every run or
//! event written after it vanishes without an error (measured: a flipped byte
//! early in the file left an empty index). Per-run `verify` cannot see a run
//! that is gone. So when the last handle drops cleanly — sled synced, the
//! write-ahead log ended by a closed segment — the store writes a digest of
//! every run's head and sled's commit mark (the last WAL commit it applied)
//! here, and at open compares them with what it loaded; a difference refuses
//! the open. The marker is removed at open, so a later crash never meets a
//! stale one: after a crash, sled may legitimately have lost its unsynced
//! tail, the WAL restores it, and the WAL's sync point is the check instead
//! (see the crate docs, "Recovery").

use std::io::Write;
use std::path::Path;

use crate::committer::CommitState;
use crate::error::{Error, Result};
use crate::ids::hex;

const HEADER: &str = "ferry-store clean v2";
/// Written before the write-ahead log existed: the digest alone.
const HEADER_V1: &str = "ferry-store clean v1";

/// `runs N events M digest HEX`: one line describing every run's head.
pub(crate) fn describe(state: &CommitState) -> String {
    let mut heads: Vec<_> = state.heads.values().collect();
    heads.sort_by_key(|s| s.run);
    let mut h = blake3::Hasher::new();
    let mut events = 0u64;
    for s in &heads {
        h.update(s.run.as_bytes());
        h.update(&s.next_seq.to_be_bytes());
        h.update(&s.head_hash);
        events += s.next_seq;
    }
    format!(
        "runs {} events {} digest {}",
        heads.len(),
        events,
        hex(h.finalize().as_bytes())
    )
}

/// Writes the marker durably (temp file, fsync, rename, dir fsync); `mark` is
/// sled's commit mark, durable in sled.
pub(crate) fn write(dir: &Path, state: &CommitState, mark: u64) -> Result<()> {
    let tmp = dir.join("CLEAN.tmp");
    let path = dir.join("CLEAN");
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    writeln!(f, "{HEADER}\n{} wal {mark}", describe(state)).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
    crate::blobs::fsync_dir(dir)
}

/// The marker's text, if there is one.
pub(crate) fn read(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("CLEAN");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { path, source: e }),
    }
}

/// Compares the marker, if there was one, with the loaded index and sled's
/// commit mark, then removes it.
pub(crate) fn check_and_clear(
    dir: &Path,
    marker: Option<String>,
    state: &CommitState,
    mark: u64,
) -> Result<()> {
    let Some(text) = marker else {
        return Ok(());
    };
    let path = dir.join("CLEAN");
    let (recorded, found) = if let Some(rest) = text.strip_prefix(HEADER) {
        (Some(rest.trim()), format!("{} wal {mark}", describe(state)))
    } else {
        (text.strip_prefix(HEADER_V1).map(str::trim), describe(state))
    };
    if recorded != Some(found.as_str()) {
        return Err(Error::Open {
            path: dir.join("sled"),
            source: format!(
                "the database does not hold what it held at the last clean shutdown \
                 (then: {}; now: {found}): sled dropped damaged records (to accept the loss \
                 instead, delete {})",
                recorded.unwrap_or("an unreadable marker"),
                path.display()
            )
            .into(),
        });
    }
    std::fs::remove_file(&path).map_err(Error::io(&path))?;
    crate::blobs::fsync_dir(dir)
}

//! The clean-shutdown marker, `DIR/CLEAN`: catches a log that sled lost at rest.
//!
//! sled 0.34.7 treats a damaged record in its data file as a torn write from a
//! crash: at open it silently truncates its log at that point, and every run or
//! event written after it vanishes without an error (measured: a flipped byte
//! early in the file left an empty index). Per-run `verify` cannot see a run
//! that is gone. So when the last handle drops cleanly, the store writes a
//! digest of every run's head here, and at open compares it with the index it
//! loaded; a difference refuses the open. The marker is removed at open, so a
//! later crash (after which sled's truncation of a torn tail is legitimate)
//! leaves no stale marker behind.

use std::io::Write;
use std::path::Path;

use crate::committer::CommitState;
use crate::error::{Error, Result};
use crate::ids::hex;

const HEADER: &str = "ferry-store clean v1";

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

/// Writes the marker durably (temp file, fsync, rename, dir fsync).
pub(crate) fn write(dir: &Path, state: &CommitState) -> Result<()> {
    let tmp = dir.join("CLEAN.tmp");
    let path = dir.join("CLEAN");
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    writeln!(f, "{HEADER}\n{}", describe(state)).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
    crate::blobs::fsync_dir(dir)
}

/// Compares the marker, if any, with the loaded index, then removes it.
pub(crate) fn check_and_clear(dir: &Path, state: &CommitState) -> Result<()> {
    let path = dir.join("CLEAN");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Io { path, source: e }),
    };
    let recorded = text.strip_prefix(HEADER).map(str::trim);
    let found = describe(state);
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

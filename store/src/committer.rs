//! The committer: one OS thread that turns append requests into durable,
//! acknowledged log records, many at a time (group commit).
//!
//! sled and fsync block, so they run on a dedicated thread rather than on the
//! async runtime. The committer takes one request, drains whatever else is
//! queued, validates each against the in-memory head map (the authority for
//! `SeqMismatch`), writes the accepted ones — events and index entries — in one
//! atomic sled batch, flushes, fdatasyncs sled's data file, and only then
//! updates the head map, wakes subscribers and replies. Concurrent runs share
//! one flush+sync.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{mpsc, oneshot, watch};

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::ids::{Key32, RunId, genesis_hash};
use crate::index::{self, IndexUpdate, RunSummary, head_mac};
use crate::{Appended, Hash};

/// Most requests committed in one group; bounds the batch and the latency of its first member.
const MAX_GROUP: usize = 256;

/// What a subscriber needs to know about a run's durable log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    pub next_seq: u64,
    pub terminal: bool,
}

/// The durable view of the index: updated only after a sync.
#[derive(Default)]
pub(crate) struct CommitState {
    pub heads: HashMap<RunId, RunSummary>,
    pub names: HashMap<String, RunId>,
    pub watchers: HashMap<RunId, watch::Sender<Durable>>,
    /// Runs whose index entry did not decode at open: appending to them could
    /// fork their log, so they are refused until repaired.
    pub corrupt: HashMap<RunId, String>,
}

impl CommitState {
    pub(crate) fn publish(&mut self, s: &RunSummary) {
        let d = Durable {
            next_seq: s.next_seq,
            terminal: s.terminal,
        };
        self.watchers
            .entry(s.run)
            .or_insert_with(|| watch::channel(d).0)
            .send_replace(d);
    }
}

/// State shared by the store's handles and its committer thread.
pub(crate) struct Shared {
    pub db: sled::Db,
    pub dir: PathBuf,
    pub blob_dir: PathBuf,
    pub sled_dir: PathBuf,
    /// sled 0.34.7's single data file, `DIR/sled/db`, kept open to fdatasync it.
    pub data_file: File,
    pub data_path: PathBuf,
    pub mac_key: Key32,
    pub blob_key: Option<Key32>,
    pub poisoned: AtomicBool,
    pub fail_next_sync: AtomicBool,
    pub syncs: AtomicU64,
    /// Held while a group (or a delete) is staged, written and synced, so that
    /// the staged view of the head map cannot change underneath.
    pub commit_mu: Mutex<()>,
    pub state: RwLock<CommitState>,
    /// sled's own large-value files already fsynced (see `sync_sled_blobs`).
    pub synced_sled_blobs: Mutex<HashSet<OsString>>,
}

pub(crate) struct AppendRequest {
    pub run: RunId,
    pub expected_next_seq: u64,
    pub at_ms: u64,
    pub events: Vec<Vec<u8>>,
    pub update: IndexUpdate,
    pub reply: oneshot::Sender<Result<Appended>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; the poison flag
    // of the store (not of the mutex) is what guards durability.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn commit_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.commit_mu)
    }

    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, CommitState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, CommitState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Makes everything written to sled so far durable, or poisons the store.
    ///
    /// sled 0.34's `flush()` writes its buffers and then calls
    /// `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)` (sled issue #1452), which
    /// pushes data pages to the device but neither flushes the drive's write
    /// cache nor commits the file's metadata (its size, when the log grew): a
    /// power cut can lose an acknowledged append. So after the flush we
    /// `fdatasync` sled's data file ourselves (a handle of our own, opened
    /// read-only: fdatasync needs no write access), after fsyncing any
    /// large-value files sled wrote beside it, which sled never fsyncs at all.
    /// strace of a test run shows it: sled's fd gets only `sync_file_range`,
    /// ours gets one `fdatasync` per group.
    pub(crate) fn flush_and_sync(&self) -> Result<()> {
        let result = (|| -> std::result::Result<(), String> {
            self.db
                .flush()
                .map_err(|e| format!("sled flush failed: {e}"))?;
            if self.fail_next_sync.swap(false, Ordering::SeqCst) {
                return Err(format!(
                    "fdatasync {} failed: injected by a test",
                    self.data_path.display()
                ));
            }
            // Large values first: the log records that point at them must not
            // be durable before they are.
            self.sync_sled_blobs()?;
            self.data_file
                .sync_data()
                .map_err(|e| format!("fdatasync {} failed: {e}", self.data_path.display()))
        })();
        self.syncs.fetch_add(1, Ordering::SeqCst);
        result.map_err(|cause| {
            self.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(%cause, dir = %self.dir.display(), "store poisoned: no further append will be acknowledged");
            Error::Poisoned
        })
    }

    /// fsyncs the files sled 0.34 puts in `DIR/sled/blobs/` for values over
    /// about 128 KiB (it never fsyncs them). ferry keeps large payloads out of
    /// sled, so this is normally one empty `readdir`.
    fn sync_sled_blobs(&self) -> std::result::Result<(), String> {
        let dir = self.sled_dir.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        };
        let mut synced = lock(&self.synced_sled_blobs);
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                let path = entry.path();
                match File::open(&path) {
                    Ok(f) => f
                        .sync_data()
                        .map_err(|e| format!("fdatasync {} failed: {e}", path.display()))?,
                    // sled removed it meanwhile (it was rewritten): nothing to make durable.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("fsync {} failed: {e}", dir.display()))?;
        }
        *synced = present;
        Ok(())
    }
}

/// Starts the committer thread. It exits when every sender is dropped.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<AppendRequest>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ferry-store-commit".into())
        .spawn(move || run(&shared, rx))
}

fn run(shared: &Shared, mut rx: mpsc::Receiver<AppendRequest>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        commit_group(shared, group);
    }
}

fn commit_group(shared: &Shared, group: Vec<AppendRequest>) {
    let _commit = shared.commit_lock();
    if shared.is_poisoned() {
        for req in group {
            let _ = req.reply.send(Err(Error::Poisoned));
        }
        return;
    }
    let mut staged = Staged::default();
    let mut accepted = Vec::with_capacity(group.len());
    {
        let state = shared.read_state();
        for req in group {
            match staged.stage(
                shared,
                &state,
                req.run,
                req.expected_next_seq,
                req.at_ms,
                req.events,
                req.update,
            ) {
                Ok(appended) => accepted.push((req.reply, appended)),
                // Rejected requests wrote nothing: answer them now.
                Err(e) => {
                    let _ = req.reply.send(Err(e));
                }
            }
        }
    }
    if accepted.is_empty() {
        return;
    }
    let mut batch = staged.batch;
    for s in staged.heads.values() {
        batch.insert(&index::run_key(s.run), s.encode());
    }
    let written = shared.db.apply_batch(batch).map_err(|e| {
        shared.poisoned.store(true, Ordering::SeqCst);
        tracing::error!(cause = %e, "sled batch failed; store poisoned");
        Error::Poisoned
    });
    match written.and_then(|()| shared.flush_and_sync()) {
        Ok(()) => {
            let mut state = shared.write_state();
            for (name, run) in staged.names {
                state.names.insert(name, run);
            }
            for (run, s) in staged.heads {
                state.publish(&s);
                state.heads.insert(run, s);
            }
            drop(state);
            for (reply, appended) in accepted {
                let _ = reply.send(Ok(appended));
            }
        }
        Err(_) => {
            for (reply, _) in accepted {
                let _ = reply.send(Err(Error::Poisoned));
            }
        }
    }
}

/// The group being built: its batch and its view of the heads it changed.
#[derive(Default)]
struct Staged {
    batch: sled::Batch,
    heads: HashMap<RunId, RunSummary>,
    names: HashMap<String, RunId>,
}

impl Staged {
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        shared: &Shared,
        state: &CommitState,
        run: RunId,
        expected: u64,
        at_ms: u64,
        events: Vec<Vec<u8>>,
        update: IndexUpdate,
    ) -> Result<Appended> {
        if events.is_empty() {
            return Err(Error::EmptyAppend(run));
        }
        if let Some(reason) = state.corrupt.get(&run) {
            return Err(Error::Corrupt {
                run,
                seq: 0,
                reason: format!("its index entry is damaged ({reason})"),
            });
        }
        let current = self.heads.get(&run).or_else(|| state.heads.get(&run));
        let actual = current.map_or(0, |s| s.next_seq);
        if expected != actual {
            return Err(Error::SeqMismatch {
                run,
                expected,
                actual,
            });
        }
        let mut summary = match current {
            Some(s) if s.terminal => {
                return Err(Error::RunTerminal {
                    run,
                    phase: s.phase.clone(),
                });
            }
            Some(s) => {
                if s.name != update.name {
                    tracing::warn!(run.id = %run, recorded = %s.name, asked = %update.name, "a run's name is fixed by its first append; keeping the recorded one");
                }
                s.clone()
            }
            None => {
                if let Some(existing) = state
                    .names
                    .get(&update.name)
                    .or_else(|| self.names.get(&update.name))
                {
                    return Err(Error::NameTaken {
                        name: update.name,
                        existing: *existing,
                    });
                }
                RunSummary {
                    run,
                    name: update.name.clone(),
                    phase: String::new(),
                    current_step: None,
                    terminal: false,
                    next_seq: 0,
                    head_hash: genesis_hash(run),
                    head_mac: [0; 32],
                    created_ms: at_ms,
                    updated_ms: at_ms,
                }
            }
        };
        if current.is_none() {
            self.names.insert(update.name.clone(), run);
            self.batch
                .insert(index::name_key(&update.name), run.as_bytes().as_slice());
        }
        let first_seq = summary.next_seq;
        let mut prev: Hash = summary.head_hash;
        let mut seq = first_seq;
        for event in events {
            let bytes = Envelope {
                seq,
                at_ms,
                prev_hash: prev,
                event,
            }
            .encode();
            prev = *blake3::hash(&bytes).as_bytes();
            self.batch.insert(&index::event_key(run, seq), bytes);
            seq += 1;
        }
        summary.next_seq = seq;
        summary.head_hash = prev;
        summary.head_mac = head_mac(&shared.mac_key, run, seq, &prev);
        summary.phase = update.phase;
        summary.current_step = update.current_step;
        summary.terminal = update.terminal;
        summary.updated_ms = at_ms;
        self.heads.insert(run, summary);
        Ok(Appended {
            first_seq,
            next_seq: seq,
            head_hash: prev,
        })
    }
}

//! The committer: one OS thread that turns append requests into durable,
//! acknowledged log records, many at a time (group commit); and the sled
//! syncer, a second thread that makes sled itself durable in the background.
//!
//! The WAL and sled block, so they run on dedicated threads rather than on
//! the async runtime. The committer takes one request, drains whatever else
//! is queued, validates each against the in-memory head map (the authority
//! for `SeqMismatch`), and makes the accepted ones — events, index entries,
//! names — one *commit* (see `wal.rs`): one WAL record and one fdatasync of
//! the WAL. The commit is then durable: the committer publishes the new heads
//! (the head map, subscribers) and answers the requests. Concurrent runs
//! share one fdatasync.
//!
//! Then the commit is applied to sled, without flushing sled. Applying costs
//! CPU (several µs a key, most of a commit's CPU) while the fdatasync is all
//! waiting, so under load the *applier* thread applies commit n while the
//! committer writes commit n+1; a commit of one request with nothing queued
//! behind it is applied on the committer before it answers (a lone writer
//! pays no thread hop, and sled stays current for its readers). Commits reach
//! sled strictly in the order of their numbers, and only once durable in the
//! WAL, so sled never holds a commit the WAL could lose. Whoever reads sled first waits until the commits it
//! was told about are applied (`Shared::wait_applied`): a read never sees a
//! published head whose events are not in sled yet.
//!
//! Every other change to sled (blob owners, deletions) is a commit through
//! [`Shared::commit`], under the same lock, once the applier has caught up, so
//! the WAL holds every change in the order sled received it, and replaying it
//! is exact.
//!
//! The syncer wakes every [`SLED_SYNC_EVERY`] and, when commits were applied
//! since its last pass, flushes sled, fsyncs sled's large-value files and
//! fdatasyncs sled's data file; the last commit applied before the flush is
//! then the *sync point*, which the next WAL record (or segment header)
//! records. It never holds the commit lock, so appends do not wait for it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::ids::{Key32, RunId, genesis_hash};
use crate::index::{self, IndexUpdate, RunSummary, head_mac};
use crate::wal::{self, Batch, Room, Wal};
use crate::{Appended, Hash};

/// Most requests committed in one group; bounds the batch and the latency of its first member.
const MAX_GROUP: usize = 256;
/// How often the syncer makes sled durable, when anything was committed since.
///
/// Acknowledged commits are durable in the WAL whatever this is; it bounds
/// something else. sled cleans its segments by rewriting live pages into
/// new ones (written with `sync_file_range`, not fsynced) and may then reuse
/// the old segment. Until the next sled sync, a power loss on a disk with a
/// volatile write cache could lose both copies of a page the WAL no longer
/// holds; `verify` would name the runs it hit. A process crash (SIGKILL)
/// cannot: the kernel holds the written pages. 100 ms keeps that window
/// short for about one sled sync (≈1 ms) per 100 ms of activity.
pub(crate) const SLED_SYNC_EVERY: Duration = Duration::from_millis(100);

/// What a subscriber needs to know about a run's durable log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    pub next_seq: u64,
    pub terminal: bool,
    /// A commit that, once applied to sled, makes these events readable there.
    pub commit: u64,
}

/// The durable view of the index: updated only after a commit is durable.
#[derive(Default)]
pub(crate) struct CommitState {
    /// The last commit whose heads are published here.
    pub published: u64,
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
            commit: self.published,
        };
        self.watchers
            .entry(s.run)
            .or_insert_with(|| watch::channel(d).0)
            .send_replace(d);
    }
}

/// State shared by the store's handles, its committer and its syncer.
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
    /// WAL fdatasyncs of commits (test seam: group commit shares them).
    pub syncs: AtomicU64,
    /// The WAL writer. Held while a commit (or a delete) is staged and
    /// written, so that the staged view of the head map cannot change
    /// underneath and commit numbers follow the order of staging.
    pub wal: Mutex<Wal>,
    /// The last commit applied to sled.
    pub applied: AtomicU64,
    /// Signalled when `applied` advances or applying fails.
    pub applied_mu: Mutex<()>,
    pub applied_cv: Condvar,
    /// The same news for async waiters (subscriptions): (applied, applying broke).
    pub applied_watch: watch::Sender<(u64, bool)>,
    /// Set when applying a commit to sled failed: later ones are not applied
    /// (sled would skip a commit), and nobody waits for them. A store poisoned
    /// otherwise still applies the commits already durable.
    pub apply_broken: AtomicBool,
    /// The sync point: the last commit sled holds durably.
    pub sync_point: AtomicU64,
    /// Test seam: the syncer skips its passes while set.
    pub sled_sync_paused: AtomicBool,
    /// What the open replayed from the WAL: (commits replayed, of which sled lacked).
    pub replayed: (u64, u64),
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
    /// Takes the commit lock once every commit written so far is applied to
    /// sled: under it, sled holds exactly what the WAL holds, and nothing is
    /// written or applied until it is released.
    pub(crate) fn commit_lock(&self) -> MutexGuard<'_, Wal> {
        let wal = lock(&self.wal);
        // Applying broke: nothing more is applied; callers check the poison flag.
        let _ = self.wait_applied(wal.next_commit() - 1);
        wal
    }

    /// Waits until `commit` (durable in the WAL) is applied to sled;
    /// [`Error::Poisoned`] if applying failed first (then it never will be).
    /// Returns at once in the common case; otherwise after the applier's
    /// current commit.
    pub(crate) fn wait_applied(&self, commit: u64) -> Result<()> {
        if self.applied.load(Ordering::SeqCst) >= commit {
            return Ok(());
        }
        let mut guard = lock(&self.applied_mu);
        while self.applied.load(Ordering::SeqCst) < commit {
            if self.apply_broken.load(Ordering::SeqCst) {
                return Err(Error::Poisoned);
            }
            guard = self
                .applied_cv
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        Ok(())
    }

    /// Waits, without blocking the runtime, like [`wait_applied`](Shared::wait_applied).
    pub(crate) async fn wait_applied_async(&self, commit: u64) -> Result<()> {
        let mut rx = self.applied_watch.subscribe();
        let seen = rx
            .wait_for(|&(applied, broken)| applied >= commit || broken)
            .await
            .map(|v| *v)
            .map_err(|_| Error::CommitterGone)?;
        if seen.0 >= commit {
            Ok(())
        } else {
            Err(Error::Poisoned)
        }
    }

    /// Records that `commit` is applied to sled, and wakes whoever waits for it.
    fn set_applied(&self, commit: u64) {
        self.applied.store(commit, Ordering::SeqCst);
        self.applied_watch.send_modify(|v| v.0 = commit);
        let _guard = lock(&self.applied_mu);
        self.applied_cv.notify_all();
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

    /// Poisons the store for `cause`: no append is acknowledged again.
    fn poison(&self, cause: String) -> Error {
        self.poisoned.store(true, Ordering::SeqCst);
        {
            let _guard = lock(&self.applied_mu);
            self.applied_cv.notify_all();
        }
        tracing::error!(%cause, dir = %self.dir.display(), "store poisoned: no further append will be acknowledged");
        Error::Poisoned
    }

    /// Makes `batch` durable as the next commit, then applies it to sled;
    /// returns its commit number. The caller holds the commit lock, taken with
    /// [`commit_lock`](Shared::commit_lock) (so nothing is on its way to sled).
    pub(crate) fn commit(&self, wal: &mut Wal, batch: Batch) -> Result<u64> {
        let commit = self.write(wal, &batch)?;
        self.apply(commit, batch)?;
        Ok(commit)
    }

    /// Makes `batch` durable as the next commit: written to the WAL and
    /// fdatasynced. The WAL segment was preallocated with zeros, so that
    /// fdatasync writes the record's blocks and has no file size or extent to
    /// commit. A failed write or fdatasync poisons the store; such a commit is
    /// never applied to sled, so sled never gets ahead of the WAL.
    fn write(&self, wal: &mut Wal, batch: &Batch) -> Result<u64> {
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let len = wal::record_len(batch);
        match wal.room(len) {
            Room::Fits => {}
            Room::Grow(to) => wal.grow_active(to).map_err(|e| {
                self.poison(format!("cannot grow {}: {e}", wal.active_path().display()))
            })?,
            Room::Rotate => {
                // The other segment holds the commits before the active one's
                // first: sled must hold them durably before they are overwritten.
                if self.sync_point.load(Ordering::SeqCst) + 1 < wal.active_start() {
                    self.wait_applied(wal.next_commit() - 1)?;
                    self.sync_sled()?;
                }
                let first = wal.next_commit();
                wal.rotate(self.sync_point.load(Ordering::SeqCst), first, len, false)
                    .map_err(|e| self.poison(format!("cannot start a new WAL segment: {e}")))?;
            }
        }
        let fail = self.fail_next_sync.swap(false, Ordering::SeqCst);
        let written = wal.append(batch, self.sync_point.load(Ordering::SeqCst), fail);
        self.syncs.fetch_add(1, Ordering::SeqCst);
        written.map_err(|e| {
            self.poison(format!(
                "WAL write or fdatasync of {} failed: {e}",
                wal.active_path().display()
            ))
        })
    }

    /// Applies a durable commit to sled (not flushed: the syncer does that)
    /// and wakes whoever waits for it. A failure poisons the store; the WAL
    /// still holds the commit, and the next open applies it again.
    fn apply(&self, commit: u64, batch: Batch) -> Result<()> {
        if self.apply_broken.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        if let Err(e) = batch.apply_to(&self.db, commit) {
            self.apply_broken.store(true, Ordering::SeqCst);
            self.applied_watch.send_modify(|v| v.1 = true);
            return Err(self.poison(format!("applying commit {commit} to sled failed: {e}")));
        }
        self.set_applied(commit);
        Ok(())
    }

    /// Makes everything applied to sled so far durable in sled, and advances
    /// the sync point to it; or poisons the store.
    pub(crate) fn sync_sled(&self) -> Result<()> {
        let target = self.applied.load(Ordering::SeqCst);
        let mut synced = lock(&self.synced_sled_blobs);
        sync_sled_files(
            &self.db,
            &self.data_file,
            &self.data_path,
            &self.sled_dir,
            &mut synced,
        )
        .map_err(|cause| self.poison(cause))?;
        self.sync_point.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// Clean shutdown: makes sled durable, then ends the WAL with a closed
    /// segment. Returns sled's commit mark, for the clean-shutdown marker.
    pub(crate) fn close(&self) -> Result<u64> {
        let mut wal = self.commit_lock();
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        self.sync_sled()?;
        let mark = self.applied.load(Ordering::SeqCst);
        let first = wal.next_commit();
        wal.rotate(mark, first, 0, true)
            .map_err(|e| self.poison(format!("cannot close the WAL: {e}")))?;
        Ok(mark)
    }
}

/// Makes everything written to sled so far durable.
///
/// sled 0.34's `flush()` writes its buffers and then calls
/// `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)` (sled issue #1452), which
/// pushes data pages to the device but neither flushes the drive's write
/// cache nor commits the file's metadata (its size, when the log grew). So
/// after the flush we `fdatasync` sled's data file ourselves (a handle of our
/// own, opened read-only: fdatasync needs no write access), after fsyncing any
/// large-value files sled wrote beside it, which sled never fsyncs at all.
pub(crate) fn sync_sled_files(
    db: &sled::Db,
    data_file: &File,
    data_path: &Path,
    sled_dir: &Path,
    synced_blobs: &mut HashSet<OsString>,
) -> std::result::Result<(), String> {
    db.flush().map_err(|e| format!("sled flush failed: {e}"))?;
    // Large values first: the log records that point at them must not
    // be durable before they are.
    sync_sled_blobs(sled_dir, synced_blobs)?;
    data_file
        .sync_data()
        .map_err(|e| format!("fdatasync {} failed: {e}", data_path.display()))
}

/// fsyncs the files sled 0.34 puts in `DIR/sled/blobs/` for values over
/// about 128 KiB (it never fsyncs them). ferry keeps large payloads out of
/// sled, so this is normally one empty `readdir`.
fn sync_sled_blobs(
    sled_dir: &Path,
    synced: &mut HashSet<OsString>,
) -> std::result::Result<(), String> {
    let dir = sled_dir.join("blobs");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
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

/// Tells the syncer to stop.
#[derive(Default)]
pub(crate) struct SyncerStop {
    stop: Mutex<bool>,
    cv: Condvar,
}

impl SyncerStop {
    pub(crate) fn stop(&self) {
        *lock(&self.stop) = true;
        self.cv.notify_all();
    }
}

/// Starts the syncer thread. It exits when told to stop or once the store is poisoned.
pub(crate) fn spawn_syncer(
    shared: Arc<Shared>,
    stop: Arc<SyncerStop>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ferry-store-sync".into())
        .spawn(move || {
            loop {
                {
                    let guard = lock(&stop.stop);
                    let (guard, _) = stop
                        .cv
                        .wait_timeout_while(guard, SLED_SYNC_EVERY, |stopped| !*stopped)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if *guard {
                        return;
                    }
                }
                if shared.is_poisoned() {
                    return;
                }
                if shared.sled_sync_paused.load(Ordering::SeqCst)
                    || shared.applied.load(Ordering::SeqCst)
                        <= shared.sync_point.load(Ordering::SeqCst)
                {
                    continue;
                }
                if shared.sync_sled().is_err() {
                    return;
                }
            }
        })
}

/// Starts the committer thread (and, from it, the applier). It exits when
/// every sender is dropped, once the applier has applied every commit.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<AppendRequest>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // At most this many commits wait for the applier; the committer then waits too.
    let (apply_tx, apply_rx) = std::sync::mpsc::sync_channel::<(u64, Batch)>(4);
    let applier = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("ferry-store-apply".into())
            .spawn(move || {
                for (commit, batch) in apply_rx {
                    // A failure poisons the store, and the rest is not applied.
                    let _ = shared.apply(commit, batch);
                }
            })?
    };
    std::thread::Builder::new()
        .name("ferry-store-commit".into())
        .spawn(move || {
            run(&shared, rx, &apply_tx);
            drop(apply_tx);
            if applier.join().is_err() {
                tracing::error!("the store's applier thread panicked");
            }
        })
}

fn run(
    shared: &Shared,
    mut rx: mpsc::Receiver<AppendRequest>,
    apply_tx: &std::sync::mpsc::SyncSender<(u64, Batch)>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        commit_group(shared, group, &rx, apply_tx);
    }
}

fn commit_group(
    shared: &Shared,
    group: Vec<AppendRequest>,
    rx: &mpsc::Receiver<AppendRequest>,
    apply_tx: &std::sync::mpsc::SyncSender<(u64, Batch)>,
) {
    let mut wal = lock(&shared.wal);
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
        batch.insert(index::run_key(s.run), s.encode());
    }
    let commit = match shared.write(&mut wal, &batch) {
        Ok(commit) => commit,
        Err(_) => {
            drop(wal);
            for (reply, _) in accepted {
                let _ = reply.send(Err(Error::Poisoned));
            }
            return;
        }
    };
    // Durable: publish, so that the next group is staged against it.
    {
        let mut state = shared.write_state();
        state.published = commit;
        for (name, run) in staged.names {
            state.names.insert(name, run);
        }
        for (run, s) in staged.heads {
            state.publish(&s);
            state.heads.insert(run, s);
        }
    }
    drop(wal);
    if accepted.len() == 1 && rx.is_empty() && shared.applied.load(Ordering::SeqCst) + 1 == commit {
        // A lone writer, nothing queued behind it, nothing ahead of it: apply
        // it here before answering, which costs about what waking the applier
        // would and keeps sled current for readers. When a commit answers
        // several requests, they go on while the applier works. A failure
        // poisons the store; the commit is durable all the same.
        let _ = shared.apply(commit, batch);
    } else if apply_tx.send((commit, batch)).is_err() {
        // The applier is gone (it panicked): nothing more reaches sled. The
        // commit is durable in the WAL, and the next open applies it.
        shared.apply_broken.store(true, Ordering::SeqCst);
        shared.applied_watch.send_modify(|v| v.1 = true);
        let _ = shared.poison("the store's applier thread stopped".into());
    }
    for (reply, appended) in accepted {
        let _ = reply.send(Ok(appended));
    }
}

/// The group being built: its batch and its view of the heads it changed.
#[derive(Default)]
struct Staged {
    batch: Batch,
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
            self.batch.insert(index::event_key(run, seq), bytes);
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

//! ferry-store: the durable, append-only event log everything else stands on.
//!
//! The entry type is [`Store`]: [`Store::open`] a state dir, then
//! [`append`](Store::append) a run's events (durable when it returns),
//! [`read`](Store::read) or [`subscribe`](Store::subscribe) to them,
//! [`list`](Store::list) runs from the index, [`verify`](Store::verify) a
//! run's hash chain and head MAC, [`export_jsonl`](Store::export_jsonl) it,
//! and keep large payloads in [blob files](Store::put_blob).
//!
//! Each record of a run's log is an [`Envelope`] `{seq, at_ms, prev_hash,
//! event}`; `prev_hash` chains every envelope to the one before it (seq 0 to
//! [`genesis_hash`]), and the head of the chain is signed in the index with a
//! keyed MAC whose key lives outside the state dir.
//!
//! # Layout
//!
//! ```text
//! DIR/LOCK          exclusive lock: one Store per state dir
//! DIR/CLEAN         written at clean shutdown, removed at open: a digest of
//!                   every run's head and sled's commit mark, to catch runs
//!                   sled lost at rest
//! DIR/wal/0, 1      the write-ahead log: two preallocated segments used in
//!                   turn (see `wal.rs` for the framing)
//! DIR/sled/         the sled 0.34.7 database (DIR/sled/db is its data file,
//!                   fdatasynced by the syncer after each flush)
//! DIR/blobs/<hex>   blob files, named by the hex BLAKE3 of their stored bytes
//! ```
//!
//! In sled, everything is in the default tree under one-byte key prefixes. A
//! run's events and its index entry are written together, as one commit (see
//! "Durability"):
//!
//! | key | value |
//! |---|---|
//! | `e` ++ run (16 bytes) ++ seq (u64 big-endian) | [`Envelope::encode`] |
//! | `r` ++ run | `[1] ++ bincode(`[`RunSummary`]`)`: the run index |
//! | `n` ++ name (UTF-8) | run: names are unique |
//! | `b` ++ run ++ blob hash | empty: the run owns the blob (retention) |
//! | `B` ++ blob hash ++ run | empty: the reverse, to know when a blob is unowned |
//! | `w` | sled's commit mark: the last WAL commit applied (u64 big-endian) |
//!
//! Big-endian seqs make a prefix scan read a run's log in order; the run id
//! (UUID v7) makes the index list runs in creation order.
//!
//! # Durability
//!
//! Appends go to a committer thread (see `committer.rs`) that groups them
//! into one *commit*: one record in the write-ahead log (`wal.rs`) and one
//! fdatasync of the WAL. Only then are appends acknowledged and subscribers
//! told. The commit is applied to sled afterwards (for a lone writer, just
//! before the answer), key by key and without flushing sled; a read of sled
//! first waits for the commits it was told about. A commit is atomic through
//! the WAL, not through sled: its record is whole or discarded, and recovery
//! applies whole records. A syncer thread makes sled durable every half
//! second (flush, then fdatasync of sled's data file — sled's own flush does
//! not fsync, sled issue #1452); the last commit it made durable is the *sync
//! point*, and WAL records up to it are no longer needed. Segments are reused
//! once sled holds their commits. Any failed write or fsync poisons the store.
//!
//! # Recovery
//!
//! After a crash, sled may have lost everything after its last sync: that is
//! expected, and the WAL holds it. [`Store::open`] reads the WAL, discards a
//! torn record at its end (a write cut short, never acknowledged), and
//! applies every commit after the sync point to sled again, in order;
//! applying a commit sled already holds is harmless. Then it makes sled
//! durable and starts a new WAL segment. It refuses to open, naming the file
//! and what to do, when:
//!
//! - a WAL record in the middle does not read back while a later one does
//!   (damage, not a torn tail: acknowledged commits would be lost);
//! - sled's commit mark is behind the sync point: sled lost records it had
//!   made durable (sled silently truncates its log at a damaged record);
//! - sled's commit mark is ahead of the WAL's end: the WAL lost records.
//!
//! After a clean shutdown (sled synced, the WAL ended by a *closed* segment)
//! the `CLEAN` marker is the check instead: the index must match its digest
//! and sled's commit mark its mark. An operator who accepts a loss that the
//! open refused deletes `CLEAN` (after a clean shutdown) or empties `DIR/wal`.

mod blobs;
mod clean;
mod committer;
mod envelope;
mod error;
mod ids;
mod index;
mod wal;

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot, watch};

pub use blobs::BlobRef;
pub use envelope::{Envelope, FORMAT_V1};
pub use error::{Error, Result};
pub use ids::{Hash, Key32, RunId, genesis_hash, hex};
pub use index::{IndexUpdate, RunSummary, head_mac};

use committer::{AppendRequest, CommitState, Durable, Shared, SyncerStop};

/// Bound of the append queue: callers wait (asynchronously) when it is full.
const QUEUE: usize = 1024;
/// Envelopes a subscription reads from sled at a time.
const SUBSCRIBE_CHUNK: u64 = 256;

/// How to open a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The state dir; created if missing.
    pub dir: PathBuf,
    /// Key of the head MAC (audit), from a file outside the state dir.
    pub mac_key: Key32,
    /// Key for encrypted blobs, from a file outside the state dir.
    pub blob_key: Option<Key32>,
}

/// What an [`append`](Store::append) made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Seq of the batch's first envelope.
    pub first_seq: u64,
    /// The run's next seq after the batch.
    pub next_seq: u64,
    /// Hash of the batch's last envelope: the run's new head.
    pub head_hash: Hash,
}

/// The outcome of [`verify`](Store::verify).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The run checked.
    pub run: RunId,
    /// Envelopes that checked out before the first problem (all of them when `ok`).
    pub events: u64,
    /// True when the chain, the head and the head MAC all check out.
    pub ok: bool,
    /// The earliest seq that cannot be trusted, when the problem is tied to one.
    pub first_bad_seq: Option<u64>,
    /// What is wrong, in words.
    pub problem: Option<String>,
}

/// The durable event log of every run in one state dir. Cheap to clone; the
/// last clone dropped (a live [`Subscription`] holds one) stops the committer,
/// closes sled and releases the dir, so it can be reopened at once. That drop
/// blocks briefly (joining the committer, waiting for sled's IO threads).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order is drop order: stop the committer, then close sled, then unlock.
    tx: Option<mpsc::Sender<AppendRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
    syncer: Option<(Arc<SyncerStop>, std::thread::JoinHandle<()>)>,
    /// `None` only while dropping.
    shared: Option<Arc<Shared>>,
    sled_data_path: PathBuf,
    _lock: File,
}

/// How long dropping the last handle waits for sled's background threads to let go of its file.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the committer's loop; joining it drops its
        // handle on sled, so the dir can be reopened as soon as we return.
        self.tx.take();
        let mut committer_ok = true;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            committer_ok = false;
            tracing::error!("the store's committer thread panicked");
        }
        if let Some((stop, t)) = self.syncer.take() {
            stop.stop();
            if t.join().is_err() {
                tracing::error!("the store's sled syncer thread panicked");
            }
        }
        if let Some(shared) = self.shared.take() {
            // Only a store whose every write was acknowledged and synced vouches
            // for the index; a poisoned one (or a committer that died mid-group)
            // may have left unacknowledged writes in sled, and leaves the WAL
            // to the next open.
            if committer_ok && !shared.is_poisoned() {
                let closed = shared.close();
                if let Err(e) =
                    closed.and_then(|mark| clean::write(&shared.dir, &shared.read_state(), mark))
                {
                    tracing::warn!(error = %e, "cannot shut the store down cleanly; the next open recovers from the WAL");
                }
            }
        }
        wait_for_sled_release(&self.sled_data_path);
    }
}

/// Waits until sled has really closed its data file.
///
/// Dropping the last `sled::Db` does not close the file at once: sled's IO
/// threadpool may still hold a task with a reference to it, and with it sled's
/// `flock` on `DIR/sled/db`, so an immediate reopen would fail with "could not
/// acquire lock". A blocking `flock` of our own returns the moment sled's is
/// released; it runs on a helper thread so that a leaked handle elsewhere costs
/// a bounded wait, not a hung drop.
fn wait_for_sled_release(data_path: &Path) {
    let Ok(file) = File::open(data_path) else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("ferry-store-release".into())
        .spawn(move || {
            let _ = file.lock();
            // Closing `file` drops our lock again.
            drop(file);
            let _ = tx.send(());
        });
    if spawned.is_ok() && rx.recv_timeout(RELEASE_WAIT).is_err() {
        tracing::warn!(path = %data_path.display(), "sled still holds its data file; another handle to it is open in this process");
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared().dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the state dir, takes its lock, opens sled,
    /// recovers from the write-ahead log, loads the run index and starts the
    /// committer.
    ///
    /// # Errors
    /// [`Error::Locked`] if another `Store` — in this process or another — has
    /// the dir; [`Error::Open`] naming the path if the dir, the sled database
    /// or the write-ahead log cannot be opened: damaged, or not holding what
    /// the other says it must (see the crate docs, "Recovery").
    pub fn open(opts: StoreOptions) -> Result<Store> {
        let dir = opts.dir;
        let open_err = |path: &Path| {
            let path = path.to_owned();
            move |e: std::io::Error| Error::Open {
                path,
                source: Box::new(e),
            }
        };
        std::fs::create_dir_all(&dir).map_err(open_err(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(open_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(open_err(&lock_path)(e)),
        }
        let blob_dir = dir.join("blobs");
        std::fs::create_dir_all(&blob_dir).map_err(open_err(&blob_dir))?;
        let sled_dir = dir.join("sled");
        let db = open_sled(&sled_dir)?;
        // sled 0.34.7 keeps its whole log in this one file (`Config::db_path`).
        let data_path = sled_dir.join("db");
        let data_file = File::open(&data_path).map_err(open_err(&data_path))?;
        let sled_data_path = data_path.clone();
        blobs::fsync_dir(&sled_dir)?;
        blobs::fsync_dir(&dir)?;

        let sled_err = |e: sled::Error| Error::Open {
            path: sled_dir.clone(),
            source: Box::new(e),
        };
        let found_mark = read_wal_mark(&db).map_err(sled_err)?;
        let clean_marker = clean::read(&dir)?;
        let wal_dir = dir.join("wal");
        let (mut wal, recovery) = wal::Wal::open(&wal_dir, found_mark)?;
        if recovery.created && found_mark.is_some() {
            tracing::warn!(path = %wal_dir.display(), sled.mark = ?found_mark, "the write-ahead log was emptied: opening what sled holds");
        }
        if let Some(torn) = &recovery.torn {
            tracing::warn!(%torn, "write-ahead log: discarded a torn record");
        }
        let mark = found_mark.unwrap_or(0);
        // After a clean shutdown, CLEAN is the check (below); without it, the
        // operator deleted CLEAN to accept what sled holds.
        if !recovery.closed {
            if mark < recovery.sync_point {
                return Err(Error::Open {
                    path: sled_dir.clone(),
                    source: format!(
                        "sled's database holds WAL commits up to {mark}, but the write-ahead log \
                         records that commits up to {} were durable in it: sled lost records it \
                         had synced (it silently truncates its log at a damaged record), and the \
                         log no longer holds them. Restore the state dir from a backup; to open \
                         what is left instead, empty {} (the commits after {mark} are then lost)",
                        recovery.sync_point,
                        wal_dir.display()
                    )
                    .into(),
                });
            }
            if mark > recovery.last {
                return Err(Error::Open {
                    path: wal_dir.clone(),
                    source: format!(
                        "the write-ahead log ends at commit {}, but sled has applied commit {mark} \
                         from it: the log lost records it had made durable (a damaged file). \
                         Restore the state dir from a backup; to open what sled holds instead, \
                         empty {}",
                        recovery.last,
                        wal_dir.display()
                    )
                    .into(),
                });
            }
        }
        let mut records = recovery.records;
        if recovery.closed && clean_marker.is_none() && mark < recovery.sync_point {
            // The operator deleted CLEAN to accept what sled holds. sled keeps
            // a commit's keys one by one, so its loss may end inside a commit:
            // complete what the WAL still holds, in order.
            tracing::warn!(
                sled.mark = mark,
                wal.sync_point = recovery.sync_point,
                restored = recovery.lost.len(),
                "the clean-shutdown marker was removed: opening what sled holds, although it lost synced commits; restoring those the WAL still holds"
            );
            records.splice(0..0, recovery.lost);
        }
        let replayed = records.len() as u64;
        let mut lacked = 0;
        let mut mark_now = found_mark;
        for (commit, payload) in records {
            let batch = wal::Batch::decode(&payload).map_err(|e| Error::Open {
                path: wal_dir.clone(),
                source: format!("commit {commit} in the write-ahead log does not decode: {e}")
                    .into(),
            })?;
            if commit > mark {
                lacked += 1;
            }
            batch.apply_to(&db, commit).map_err(sled_err)?;
            mark_now = Some(commit);
        }
        if replayed > 0 {
            tracing::info!(
                replayed,
                sled.lacked = lacked,
                last = recovery.last,
                "write-ahead log replayed into sled"
            );
        }
        let mut synced_blobs = HashSet::new();
        let sync = |synced_blobs: &mut HashSet<_>| {
            committer::sync_sled_files(&db, &data_file, &data_path, &sled_dir, synced_blobs)
                .map_err(|cause| Error::Open {
                    path: sled_dir.clone(),
                    source: cause.into(),
                })
        };
        sync(&mut synced_blobs)?;
        let mut state = load_index(&db, &sled_dir)?;
        clean::check_and_clear(&dir, clean_marker, &state, mark_now.unwrap_or(0))?;
        // From here on, sled is declared to hold every commit up to `base`
        // (the numbers after it have never been used), and the WAL starts anew.
        let base = mark_now
            .unwrap_or(0)
            .max(recovery.sync_point)
            .max(recovery.last);
        if mark_now != Some(base) && (base > 0 || mark_now.is_some()) {
            wal::Batch::default()
                .apply_to(&db, base)
                .map_err(sled_err)?;
            sync(&mut synced_blobs)?;
        }
        wal.rotate(base, base + 1, 0, false)
            .map_err(open_err(&wal_dir))?;
        state.published = base;
        let shared = Arc::new(Shared {
            db,
            dir: dir.clone(),
            blob_dir,
            sled_dir,
            data_file,
            data_path,
            mac_key: opts.mac_key,
            blob_key: opts.blob_key,
            poisoned: false.into(),
            fail_next_sync: false.into(),
            syncs: 0.into(),
            wal: wal.into(),
            applied: base.into(),
            applied_mu: Default::default(),
            applied_cv: Default::default(),
            applied_watch: watch::channel((base, false)).0,
            apply_broken: false.into(),
            sync_point: base.into(),
            sled_sync_paused: false.into(),
            replayed: (replayed, lacked),
            state: state.into(),
            synced_sled_blobs: synced_blobs.into(),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = committer::spawn(shared.clone(), rx).map_err(open_err(&dir))?;
        let stop = Arc::new(SyncerStop::default());
        let syncer = match committer::spawn_syncer(shared.clone(), stop.clone()) {
            Ok(t) => t,
            Err(e) => {
                drop(tx);
                let _ = thread.join();
                return Err(open_err(&dir)(e));
            }
        };
        tracing::debug!(dir = %dir.display(), commit = base, "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
                syncer: Some((stop, syncer)),
                shared: Some(shared),
                sled_data_path,
                _lock: lock,
            }),
        })
    }

    fn shared(&self) -> &Shared {
        self.inner
            .shared
            .as_deref()
            .expect("the store's shared state lives until its last handle drops")
    }

    /// The state dir.
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    /// True once a flush or fsync has failed: no append will be acknowledged again.
    pub fn is_poisoned(&self) -> bool {
        self.shared().is_poisoned()
    }

    /// Test seam: the next commit's WAL fdatasync fails as if fdatasync had,
    /// poisoning the store.
    #[doc(hidden)]
    pub fn inject_sync_failure(&self) {
        self.shared().fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// Test seam: how many commits the store has fdatasynced to the WAL.
    #[doc(hidden)]
    pub fn sync_count(&self) -> u64 {
        self.shared().syncs.load(Ordering::SeqCst)
    }

    /// Test seam: while paused, the background sync leaves sled unsynced, so
    /// that acknowledged commits live only in the WAL until a clean shutdown.
    #[doc(hidden)]
    pub fn pause_sled_sync(&self, paused: bool) {
        self.shared()
            .sled_sync_paused
            .store(paused, Ordering::SeqCst);
    }

    /// Test seam: makes sled durable now and advances the sync point.
    #[doc(hidden)]
    pub fn sync_sled_now(&self) -> Result<()> {
        self.shared().sync_sled()
    }

    /// Test seam: what this open replayed from the WAL: (commits replayed,
    /// how many of them sled lacked).
    #[doc(hidden)]
    pub fn wal_replayed(&self) -> (u64, u64) {
        self.shared().replayed
    }

    /// Appends `events` to `run`'s log; durable (written to the write-ahead log
    /// and fdatasynced) when it returns. Every envelope gets `at_ms`. The run's
    /// index entry is updated from `update` in the same commit.
    ///
    /// # Errors
    /// - [`Error::SeqMismatch`] if `expected_next_seq` is not the run's next seq
    ///   (0 for a new run); nothing is written, the log never forks.
    /// - [`Error::NameTaken`] if a new run's `update.name` belongs to another run.
    /// - [`Error::RunTerminal`] if the run has already ended.
    /// - [`Error::EmptyAppend`] if `events` is empty.
    /// - [`Error::Poisoned`] if this or an earlier write or fsync failed.
    #[tracing::instrument(level = "debug", skip(self, events, update), fields(run.id = %run, event.seq = expected_next_seq))]
    pub async fn append(
        &self,
        run: RunId,
        expected_next_seq: u64,
        at_ms: u64,
        events: Vec<Vec<u8>>,
        update: IndexUpdate,
    ) -> Result<Appended> {
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let (reply, rx) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(Error::CommitterGone)?;
        tx.send(AppendRequest {
            run,
            expected_next_seq,
            at_ms,
            events,
            update,
            reply,
        })
        .await
        .map_err(|_| Error::CommitterGone)?;
        rx.await.map_err(|_| Error::CommitterGone)?
    }

    /// The run's durable envelopes with seq >= `from_seq`, in seq order. If the
    /// last commits are still being applied to sled, waits for them first
    /// (normally not at all; at most the applier's current commit).
    ///
    /// # Errors
    /// [`Error::UnknownRun`] if the run is not on record; [`Error::Corrupt`] naming
    /// the run and seq if a record does not decode, is out of place or is missing;
    /// [`Error::Poisoned`] if applying a commit to sled failed (a restart applies
    /// it again from the write-ahead log).
    pub fn read(&self, run: RunId, from_seq: u64) -> Result<Vec<Envelope>> {
        self.read_between(run, from_seq, u64::MAX)
    }

    /// The run's durable envelopes with `from_seq <= seq < to_seq`, in seq
    /// order: [`Store::read`] for a part of the log, such as its head.
    ///
    /// # Errors
    /// As [`Store::read`].
    pub fn read_between(&self, run: RunId, from_seq: u64, to_seq: u64) -> Result<Vec<Envelope>> {
        let durable = self
            .durable(run)
            .filter(|d| d.next_seq > 0)
            .ok_or(Error::UnknownRun(run))?;
        self.shared().wait_applied(durable.commit)?;
        read_range(
            &self.shared().db,
            run,
            from_seq,
            durable.next_seq.min(to_seq),
        )
    }

    fn durable(&self, run: RunId) -> Option<Durable> {
        let state = self.shared().read_state();
        state.heads.get(&run).map(|s| Durable {
            next_seq: s.next_seq,
            terminal: s.terminal,
            commit: state.published,
        })
    }

    /// The run's index entry, if it is on record.
    pub fn summary(&self, run: RunId) -> Result<Option<RunSummary>> {
        Ok(self.shared().read_state().heads.get(&run).cloned())
    }

    /// The index entry of the run with this name, if any.
    pub fn find_by_name(&self, name: &str) -> Result<Option<RunSummary>> {
        let state = self.shared().read_state();
        Ok(state
            .names
            .get(name)
            .and_then(|run| state.heads.get(run))
            .cloned())
    }

    /// Every run's index entry, ordered by run id (creation order). Reads the
    /// index only; never replays a log.
    pub fn list(&self) -> Result<Vec<RunSummary>> {
        let mut runs: Vec<RunSummary> =
            self.shared().read_state().heads.values().cloned().collect();
        runs.sort_by_key(|s| s.run);
        Ok(runs)
    }

    /// The runs that have not ended, ordered by run id: what recovery resumes.
    pub fn list_unfinished(&self) -> Result<Vec<RunSummary>> {
        let mut runs = self.list()?;
        runs.retain(|s| !s.terminal);
        Ok(runs)
    }

    /// A live feed of the run's envelopes from `from_seq` on, including ones
    /// appended later (each only after its sync). It ends (`Ok(None)`) once the
    /// run has ended and everything was delivered. A run not yet on record is
    /// waited for. The subscription keeps the store open while it lives.
    pub fn subscribe(&self, run: RunId, from_seq: u64) -> Subscription {
        let rx = {
            let mut state = self.shared().write_state();
            let d = state.heads.get(&run).map(|s| Durable {
                next_seq: s.next_seq,
                terminal: s.terminal,
                commit: state.published,
            });
            state
                .watchers
                .entry(run)
                .or_insert_with(|| watch::channel(d.unwrap_or_default()).0)
                .subscribe()
        };
        Subscription {
            store: self.clone(),
            run,
            next_seq: from_seq,
            rx,
            buf: VecDeque::new(),
        }
    }

    /// Recomputes the run's chain — genesis, each `prev_hash`, the head in the
    /// index — and the head MAC, and reports the earliest seq that cannot be
    /// trusted. A damaged run is reported as such (`ok == false`), not as an error.
    ///
    /// # Errors
    /// [`Error::UnknownRun`] if neither an index entry nor any event of the run exists.
    pub fn verify(&self, run: RunId) -> Result<VerifyReport> {
        // Hold off appends so that the index entry and the events are read as one state.
        let _commit = self.shared().commit_lock();
        verify_run(self.shared(), run)
    }

    /// Writes the run's log as JSON Lines, one envelope a line:
    /// `{"run","seq","at_ms","prev_hash","hash","event"}` with hashes in hex and
    /// `event` as `render` makes it (the caller decodes and redacts). Returns the
    /// number of lines written.
    pub fn export_jsonl(
        &self,
        run: RunId,
        out: &mut dyn std::io::Write,
        render: &dyn Fn(&[u8]) -> serde_json::Value,
    ) -> Result<u64> {
        let mut lines = 0;
        let run_str = run.to_string();
        for env in self.read(run, 0)? {
            let line = serde_json::json!({
                "run": run_str,
                "seq": env.seq,
                "at_ms": env.at_ms,
                "prev_hash": hex(&env.prev_hash),
                "hash": hex(&env.hash()),
                "event": render(&env.event),
            });
            serde_json::to_writer(&mut *out, &line).map_err(|e| Error::Export(e.into()))?;
            out.write_all(b"\n").map_err(Error::Export)?;
            lines += 1;
        }
        out.flush().map_err(Error::Export)?;
        Ok(lines)
    }

    /// Writes a blob file durably (temp file, fsync, rename, dir fsync), named
    /// by the hex hash of the bytes stored, and records it as `run`'s. With
    /// `encrypt`, the file is XChaCha20-Poly1305 with the blob key and a random
    /// nonce stored in the file.
    ///
    /// # Errors
    /// [`Error::NoBlobKey`] if `encrypt` and no blob key is configured;
    /// [`Error::Io`]; [`Error::Poisoned`] if recording the owner cannot be synced.
    pub fn put_blob(&self, run: RunId, bytes: &[u8], encrypt: bool) -> Result<BlobRef> {
        let shared = self.shared();
        if shared.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let key = match (encrypt, &shared.blob_key) {
            (false, _) => None,
            (true, Some(k)) => Some(k),
            (true, None) => return Err(Error::NoBlobKey),
        };
        let blob = blobs::write(&shared.blob_dir, bytes, key)?;
        let mut batch = wal::Batch::default();
        batch.insert(index::blob_owner_key(run, &blob.hash), Vec::new());
        batch.insert(index::blob_by_hash_key(&blob.hash, run), Vec::new());
        let mut wal = shared.commit_lock();
        shared.commit(&mut wal, batch)?;
        Ok(blob)
    }

    /// Reads a blob, checking its hash and decrypting it.
    ///
    /// # Errors
    /// [`Error::BlobMissing`], [`Error::BlobIntegrity`] (altered file, wrong
    /// key), [`Error::NoBlobKey`] for an encrypted blob without a key.
    pub fn get_blob(&self, blob: &BlobRef) -> Result<Vec<u8>> {
        blobs::read(
            &self.shared().blob_dir,
            blob,
            self.shared().blob_key.as_ref(),
        )
    }

    /// Retention: forgets every blob `run` owns and deletes the files no other
    /// run owns. Returns how many blobs the run released.
    pub fn delete_run_blobs(&self, run: RunId) -> Result<usize> {
        let shared = self.shared();
        let mut wal = shared.commit_lock();
        if shared.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let mut batch = wal::Batch::default();
        let unowned = release_blobs(shared, run, &mut batch)?;
        let released = unowned.len();
        if released > 0 {
            shared.commit(&mut wal, batch)?;
        }
        remove_blob_files(shared, &unowned.into_iter().flatten().collect::<Vec<_>>())?;
        Ok(released)
    }

    /// Deletes an ended run: its events, index entry, name and blobs.
    ///
    /// # Errors
    /// [`Error::NotTerminal`] if the run has not ended; [`Error::UnknownRun`].
    pub fn delete_run(&self, run: RunId) -> Result<()> {
        let shared = self.shared();
        let mut wal = shared.commit_lock();
        if shared.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let summary = shared
            .read_state()
            .heads
            .get(&run)
            .cloned()
            .ok_or(Error::UnknownRun(run))?;
        if !summary.terminal {
            return Err(Error::NotTerminal {
                run,
                phase: summary.phase,
            });
        }
        let mut batch = wal::Batch::default();
        for item in shared.db.scan_prefix(index::event_prefix(run)).keys() {
            batch.remove(item?);
        }
        batch.remove(index::run_key(run));
        batch.remove(index::name_key(&summary.name));
        let unowned = release_blobs(shared, run, &mut batch)?;
        shared.commit(&mut wal, batch)?;
        {
            let mut state = shared.write_state();
            state.heads.remove(&run);
            state.names.remove(&summary.name);
            state.watchers.remove(&run);
        }
        remove_blob_files(shared, &unowned.into_iter().flatten().collect::<Vec<_>>())?;
        tracing::info!(run.id = %run, name = %summary.name, "run deleted");
        Ok(())
    }
}

/// Stages the removal of `run`'s blob ownership; returns, per released blob, its
/// hash if no other run owns it (so its file can go).
fn release_blobs(shared: &Shared, run: RunId, batch: &mut wal::Batch) -> Result<Vec<Option<Hash>>> {
    let mut out = Vec::new();
    for key in shared.db.scan_prefix(index::blob_owner_prefix(run)).keys() {
        let key = key?;
        let Ok(hash) = <Hash>::try_from(&key[17..]) else {
            continue;
        };
        batch.remove(&key);
        batch.remove(index::blob_by_hash_key(&hash, run));
        let mut others = false;
        for owner in shared
            .db
            .scan_prefix(index::blob_by_hash_prefix(&hash))
            .keys()
        {
            if owner?[33..] != run.as_bytes()[..] {
                others = true;
                break;
            }
        }
        out.push((!others).then_some(hash));
    }
    Ok(out)
}

fn remove_blob_files(shared: &Shared, hashes: &[Hash]) -> Result<()> {
    for h in hashes {
        blobs::remove(&shared.blob_dir, h)?;
    }
    if !hashes.is_empty() {
        blobs::fsync_dir(&shared.blob_dir)?;
    }
    Ok(())
}

fn open_sled(sled_dir: &Path) -> Result<sled::Db> {
    let open_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
        path: sled_dir.to_owned(),
        source,
    };
    // sled 0.34 can panic instead of erring on some damaged files; a damaged db
    // must be an error naming the path, never a crash of the daemon.
    // sled's own periodic flush is off: the store's syncer flushes (and, unlike
    // sled, fdatasyncs) on its own schedule, and nothing else needs sled's file
    // to be current between syncs, because the WAL holds every commit since.
    let opened = std::panic::catch_unwind(|| {
        sled::Config::new()
            .path(sled_dir)
            .flush_every_ms(None)
            .open()
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(open_err(Box::new(e))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "sled panicked".into());
            Err(open_err(
                format!("sled could not read its database (it panicked: {msg})").into(),
            ))
        }
    }
}

/// sled's commit mark: the last WAL commit applied to it, if any was.
fn read_wal_mark(db: &sled::Db) -> std::result::Result<Option<u64>, sled::Error> {
    Ok(db
        .get(index::wal_mark_key())?
        .and_then(|v| index::decode_wal_mark(&v)))
}

fn load_index(db: &sled::Db, sled_dir: &Path) -> Result<CommitState> {
    let mut state = CommitState::default();
    for item in db.scan_prefix([index::RUN]) {
        let (key, value) = item.map_err(|e| Error::Open {
            path: sled_dir.to_owned(),
            source: Box::new(e),
        })?;
        let Some(run) = index::run_of_run_key(&key) else {
            continue;
        };
        match RunSummary::decode(&value) {
            Ok(s) if s.run == run => {
                state.names.insert(s.name.clone(), run);
                state.publish(&s);
                state.heads.insert(run, s);
            }
            Ok(_) => {
                tracing::error!(run.id = %run, "index entry names another run; run `ferry verify` on it")
            }
            Err(e) => {
                tracing::error!(run.id = %run, error = %e, "index entry does not decode; run `ferry verify` on it")
            }
        }
    }
    Ok(state)
}

/// Envelopes `[from, to)` of `run`, each checked to be the one its key names.
fn read_range(db: &sled::Db, run: RunId, from: u64, to: u64) -> Result<Vec<Envelope>> {
    if from >= to {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(usize::try_from(to - from).unwrap_or(0).min(4096));
    let mut expect = from;
    for item in db.range(index::event_key(run, from)..index::event_key(run, to)) {
        let (key, value) = item.map_err(|e| Error::Corrupt {
            run,
            seq: expect,
            reason: format!("sled cannot read it: {e}"),
        })?;
        let seq = index::seq_of_event_key(&key).unwrap_or(u64::MAX);
        if seq != expect {
            return Err(Error::Corrupt {
                run,
                seq: expect,
                reason: "the record is missing from the log".into(),
            });
        }
        let env = Envelope::decode(&value).map_err(|e| Error::Corrupt {
            run,
            seq,
            reason: e.to_string(),
        })?;
        if env.seq != seq {
            return Err(Error::Corrupt {
                run,
                seq,
                reason: format!("the record stored at this seq says seq {}", env.seq),
            });
        }
        out.push(env);
        expect += 1;
    }
    if expect < to {
        return Err(Error::Corrupt {
            run,
            seq: expect,
            reason: format!("the log ends before this seq, but the index records {to} events"),
        });
    }
    Ok(out)
}

fn verify_run(shared: &Shared, run: RunId) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        run,
        events: 0,
        ok: false,
        first_bad_seq: None,
        problem: None,
    };
    let bad = |mut r: VerifyReport, seq: Option<u64>, problem: String| {
        r.first_bad_seq = seq;
        r.problem = Some(problem);
        Ok(r)
    };
    let summary = match shared.db.get(index::run_key(run)) {
        Ok(Some(raw)) => match RunSummary::decode(&raw) {
            Ok(s) => Some(s),
            Err(e) => {
                return bad(
                    report,
                    None,
                    format!("the run's index entry is damaged: {e}"),
                );
            }
        },
        Ok(None) => None,
        Err(e) => {
            return bad(
                report,
                None,
                format!("sled cannot read the run's index entry: {e}"),
            );
        }
    };
    let mut expect = 0u64;
    let mut head = genesis_hash(run);
    for item in shared.db.scan_prefix(index::event_prefix(run)) {
        let (key, value) = match item {
            Ok(kv) => kv,
            Err(e) => {
                return bad(
                    report,
                    Some(expect),
                    format!("sled cannot read seq {expect}: {e}"),
                );
            }
        };
        let seq = index::seq_of_event_key(&key).unwrap_or(u64::MAX);
        if seq != expect {
            return bad(
                report,
                Some(expect),
                format!("seq {expect} is missing from the log"),
            );
        }
        let env = match Envelope::decode(&value) {
            Ok(env) => env,
            Err(e) => return bad(report, Some(seq), format!("seq {seq} does not decode: {e}")),
        };
        if env.seq != seq {
            return bad(
                report,
                Some(seq),
                format!("the record at seq {seq} says seq {}", env.seq),
            );
        }
        if env.prev_hash != head {
            // The link between seq-1 and seq is broken: either may have been
            // altered, so the earlier one is the first that cannot be trusted.
            let first = seq.saturating_sub(1);
            return bad(
                report,
                Some(first),
                format!(
                    "the hash of seq {first} does not match the prev_hash of seq {seq}: the log was altered"
                ),
            );
        }
        head = *blake3::hash(&value).as_bytes();
        expect += 1;
        report.events = expect;
    }
    let Some(summary) = summary else {
        if expect == 0 {
            return Err(Error::UnknownRun(run));
        }
        return bad(report, None, "the run has events but no index entry".into());
    };
    if expect < summary.next_seq {
        return bad(
            report,
            Some(expect),
            format!(
                "the log ends at seq {expect} but the index records {} events: its tail was lost or removed",
                summary.next_seq
            ),
        );
    }
    if expect > summary.next_seq {
        return bad(
            report,
            Some(summary.next_seq),
            format!(
                "the log holds {expect} events but the index records {}",
                summary.next_seq
            ),
        );
    }
    if head != summary.head_hash {
        return bad(
            report,
            expect.checked_sub(1),
            "the last envelope's hash differs from the head hash in the index".into(),
        );
    }
    if head_mac(&shared.mac_key, run, summary.next_seq, &summary.head_hash) != summary.head_mac {
        return bad(
            report,
            None,
            "the head MAC does not match: the index was rewritten without the audit key, or the configured key differs".into(),
        );
    }
    report.ok = true;
    Ok(report)
}

/// A live feed of one run's envelopes; see [`Store::subscribe`].
pub struct Subscription {
    store: Store,
    run: RunId,
    next_seq: u64,
    rx: watch::Receiver<Durable>,
    buf: VecDeque<Envelope>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("run", &self.run)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next envelope, waiting for it if needed; `Ok(None)` once the run has
    /// ended and every envelope was delivered.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a record does not read back; [`Error::UnknownRun`] if
    /// the run was deleted meanwhile; [`Error::Poisoned`] as for [`Store::read`].
    pub async fn next(&mut self) -> Result<Option<Envelope>> {
        loop {
            if let Some(env) = self.buf.pop_front() {
                self.next_seq = env.seq + 1;
                return Ok(Some(env));
            }
            // Mark the current value seen before reading, so `changed` below
            // wakes for any sync that lands after this point.
            let durable = *self.rx.borrow_and_update();
            if self.next_seq < durable.next_seq {
                let to = durable
                    .next_seq
                    .min(self.next_seq.saturating_add(SUBSCRIBE_CHUNK));
                self.store
                    .shared()
                    .wait_applied_async(durable.commit)
                    .await?;
                self.buf = read_range(&self.store.shared().db, self.run, self.next_seq, to)?.into();
                continue;
            }
            if durable.terminal {
                return Ok(None);
            }
            if self.rx.changed().await.is_err() {
                return Err(Error::UnknownRun(self.run));
            }
        }
    }
}

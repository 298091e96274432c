//! The write-ahead log (WAL): what makes a commit durable.
//!
//! Every change to sled — a group of appends, a blob's owners, a deletion — is
//! one *commit*: a [`Batch`] of inserts and removes, numbered by a commit
//! number that only grows (from 1, consecutive within the log). The committer
//! writes the commit to the WAL as one framed record, fdatasyncs the WAL once,
//! and only then is the commit acknowledged and applied to sled, without
//! flushing sled. sled is made durable later, in the background
//! (see `committer.rs`): the highest commit that sled holds durably is the
//! *sync point*, and WAL records up to it are no longer needed.
//!
//! # Files
//!
//! `DIR/wal/0` and `DIR/wal/1` are two segments used in turn. Each is
//! preallocated to [`MAX_SEGMENT`] when created, by writing zeros and fsyncing
//! (never `set_len` alone: a hole, or an unwritten extent from `fallocate`,
//! would make each later fdatasync commit file metadata too), and overwritten
//! in place once its commits are in sled's durable state, so that the
//! fdatasync of a commit writes data blocks only. Only a record larger than a
//! segment grows it (1 MiB at a time, zero-filled and fsynced).
//!
//! ```text
//! segment  = header (56 bytes, zero-padded to 4096) ++ record* ++ zeros or stale bytes
//! header   = "FERRYWAL" ++ version u32 ++ flags u32 ++ gen u64 ++ start u64
//!            ++ sync_point u64 ++ BLAKE3(previous 40 bytes)[..16]        (all LE)
//! record   = "FWR1" ++ len u32 ++ commit u64 ++ sync_point u64
//!            ++ BLAKE3(first 24 bytes ++ payload)[..16] ++ payload (len bytes)
//!            ++ zeros to a multiple of 8
//! payload  = 1 ++ count u32 ++ op*       (a `Batch`)
//! op       = 0 ++ key_len u32 ++ key ++ value_len u32 ++ value     (insert)
//!          | 1 ++ key_len u32 ++ key                                 (remove)
//! ```
//!
//! `gen` counts segments written (segment `gen % 2` holds generation `gen`);
//! `start` is the commit number of the segment's first record; `closed` (flag
//! bit 0) marks the segment written at a clean shutdown, which holds no
//! records. `sync_point` in a header or a record is the sync point known when
//! it was written: together they say how far sled is known to be durable.
//! Commit numbers only grow, across segments and reopens, so a record left
//! from an earlier use of a segment (a *stale* record) is told apart from a
//! current one by its number, and needs no erasing.
//!
//! # Rotation
//!
//! When a record does not fit in the active segment and that segment has
//! reached [`MAX_SEGMENT`], the committer moves to the other one: it writes
//! the other's header (`start` = the next commit) and fdatasyncs it. That
//! overwrites commits older than the active segment's first, so sled must
//! hold them durably first — normally the background sync did that long ago;
//! if not, the committer syncs sled itself. A record larger than a segment
//! grows the segment to fit.
//!
//! # Recovery
//!
//! At open, [`Wal::open`] reads both segments. The newest valid header is the
//! active segment; its records are read in order while each is whole (its
//! hash matches) and carries the next commit number. Where that stops is the
//! end of the log: a record cut short there is a torn write that was never
//! acknowledged (its fdatasync had not returned), and is discarded. Then:
//!
//! - anywhere in either segment, a whole record numbered after that end means
//!   the log is damaged in its middle, not torn at its tail: acknowledged
//!   commits would be lost, so the open is refused;
//! - if the sync point is older than the active segment's first commit, the
//!   older segment must hold every commit between them, in order, or the open
//!   is refused;
//! - the commits after the sync point are returned, to be applied to sled
//!   again. Applying a commit that sled already holds is harmless: a batch
//!   sets keys to values and removes keys, and applying the same suffix of
//!   batches, in order, to any prefix of them gives the same state.
//!
//! The checks against sled's own commit mark (sled behind the sync point,
//! sled ahead of the log) are the store's, in `lib.rs`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::index;

/// Segments grow by this much at a time, zero-filled and fsynced.
const GROW_STEP: u64 = 1 << 20;
/// The size of a segment: a record that does not fit in what is left of the
/// active one goes to the other one.
pub(crate) const MAX_SEGMENT: u64 = 4 << 20;
/// Records start here: the header has a page of its own, so that writing
/// records never rewrites the page that holds it.
const HEADER_LEN: u64 = 4096;
const SEG_MAGIC: &[u8; 8] = b"FERRYWAL";
const SEG_VERSION: u32 = 1;
const SEG_HEADER_BYTES: usize = 56;
const FLAG_CLOSED: u32 = 1;
const REC_MAGIC: &[u8; 4] = b"FWR1";
const REC_HEADER: usize = 40;
const ALIGN: usize = 8;
const BATCH_V1: u8 = 1;
const OP_INSERT: u8 = 0;
const OP_REMOVE: u8 = 1;

/// One commit's changes to sled, in order: a later op on a key wins.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub(crate) fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.as_ref().to_vec(), Some(value.into())));
    }

    pub(crate) fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), None));
    }

    fn encoded_len(&self) -> usize {
        1 + 4
            + self
                .ops
                .iter()
                .map(|(k, v)| 1 + 4 + k.len() + v.as_ref().map_or(0, |v| 4 + v.len()))
                .sum::<usize>()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(BATCH_V1);
        out.extend_from_slice(&len32(self.ops.len()).to_le_bytes());
        for (key, value) in &self.ops {
            out.push(if value.is_some() {
                OP_INSERT
            } else {
                OP_REMOVE
            });
            out.extend_from_slice(&len32(key.len()).to_le_bytes());
            out.extend_from_slice(key);
            if let Some(value) = value {
                out.extend_from_slice(&len32(value.len()).to_le_bytes());
                out.extend_from_slice(value);
            }
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Batch, String> {
        let mut r = Reader(bytes);
        match r.u8()? {
            BATCH_V1 => {}
            other => return Err(format!("unknown batch format byte {other}")),
        }
        let count = r.u32()? as usize;
        let mut ops = Vec::with_capacity(count.min(bytes.len()));
        for _ in 0..count {
            let kind = r.u8()?;
            let key = r.bytes()?.to_vec();
            let value = match kind {
                OP_INSERT => Some(r.bytes()?.to_vec()),
                OP_REMOVE => None,
                other => return Err(format!("unknown batch op {other}")),
            };
            ops.push((key, value));
        }
        if !r.0.is_empty() {
            return Err(format!("{} trailing bytes after the batch", r.0.len()));
        }
        Ok(Batch { ops })
    }

    /// Applies the ops to sled in order, then sets sled's commit mark to `commit`.
    ///
    /// One key at a time, not as one `sled::Batch`: sled 0.34 makes a batch
    /// atomic by sealing and writing its current IO buffer before and after it,
    /// two writes to its file per batch (measured: ~150 µs of a ~500 µs append).
    /// Atomicity comes from the WAL instead: a commit is durable whole or not at
    /// all, recovery applies whole commits again, and readers only read up to
    /// the heads published after the commit is applied. The mark goes last, so
    /// a sled that recovered the mark recovered the commit's other keys.
    pub(crate) fn apply_to(self, db: &sled::Db, commit: u64) -> sled::Result<()> {
        for (key, value) in self.ops {
            match value {
                Some(value) => db.insert(key, value)?,
                None => db.remove(key)?,
            };
        }
        db.insert(index::wal_mark_key(), &commit.to_be_bytes()[..])?;
        Ok(())
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("a WAL record field is under 4 GiB")
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the batch ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// A segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SegHeader {
    generation: u64,
    start: u64,
    sync_point: u64,
    closed: bool,
}

impl SegHeader {
    fn encode(&self) -> [u8; SEG_HEADER_BYTES] {
        let mut b = [0u8; SEG_HEADER_BYTES];
        b[..8].copy_from_slice(SEG_MAGIC);
        b[8..12].copy_from_slice(&SEG_VERSION.to_le_bytes());
        let flags = if self.closed { FLAG_CLOSED } else { 0 };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.start.to_le_bytes());
        b[32..40].copy_from_slice(&self.sync_point.to_le_bytes());
        let hash = blake3::hash(&b[..40]);
        b[40..].copy_from_slice(&hash.as_bytes()[..16]);
        b
    }

    fn decode(b: &[u8]) -> Option<SegHeader> {
        if b.len() < SEG_HEADER_BYTES
            || &b[..8] != SEG_MAGIC
            || u32_at(b, 8) != SEG_VERSION
            || blake3::hash(&b[..40]).as_bytes()[..16] != b[40..SEG_HEADER_BYTES]
        {
            return None;
        }
        Some(SegHeader {
            generation: u64_at(b, 16),
            start: u64_at(b, 24),
            sync_point: u64_at(b, 32),
            closed: u32_at(b, 12) & FLAG_CLOSED != 0,
        })
    }
}

/// A whole record found in a segment.
struct Record<'a> {
    commit: u64,
    sync_point: u64,
    payload: &'a [u8],
    /// Offset just past the record (and its padding).
    end: usize,
}

/// The commit number of a record header at `at`, without checking the record.
fn commit_at(seg: &[u8], at: usize) -> Option<u64> {
    (at + REC_HEADER <= seg.len() && &seg[at..at + 4] == REC_MAGIC).then(|| u64_at(seg, at + 8))
}

/// The whole record at `at`, if there is one: magic, length and hash all check out.
fn record_at(seg: &[u8], at: usize) -> Option<Record<'_>> {
    let commit = commit_at(seg, at)?;
    let len = u32_at(seg, at + 4) as usize;
    let body = at + REC_HEADER;
    let payload = seg.get(body..body.checked_add(len)?)?;
    let mut h = blake3::Hasher::new();
    h.update(&seg[at..at + 24]);
    h.update(payload);
    if h.finalize().as_bytes()[..16] != seg[at + 24..at + 40] {
        return None;
    }
    Some(Record {
        commit,
        sync_point: u64_at(seg, at + 16),
        payload,
        end: align(body + len),
    })
}

/// The size of `batch`'s record, padding included.
pub(crate) fn record_len(batch: &Batch) -> u64 {
    align(REC_HEADER + batch.encoded_len()) as u64
}

/// Where the next record goes.
pub(crate) enum Room {
    /// In the active segment as it is.
    Fits,
    /// In the active segment once it is grown to this length.
    Grow(u64),
    /// In the other segment.
    Rotate,
}

struct Segment {
    path: PathBuf,
    file: File,
    len: u64,
}

/// The WAL writer; held under the store's commit lock.
pub(crate) struct Wal {
    segs: [Segment; 2],
    /// Index of the segment records are appended to.
    active: usize,
    /// Its generation.
    generation: u64,
    /// Its first commit.
    start: u64,
    /// Where the next record goes in it.
    pos: u64,
    /// The next commit number.
    next: u64,
    /// The record being written, reused.
    buf: Vec<u8>,
}

/// What [`Wal::open`] found.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Commits after the sync point, in order: `(commit, payload)`.
    pub records: Vec<(u64, Vec<u8>)>,
    /// When sled's commit mark is behind the sync point: the commits after the
    /// mark that the WAL still holds, consecutive, up to the sync point. Only
    /// an operator's acceptance of a loss uses them (see `lib.rs`).
    pub lost: Vec<(u64, Vec<u8>)>,
    /// The highest commit known to be durable in sled.
    pub sync_point: u64,
    /// The last whole commit in the log (the one before the active segment's
    /// first, when it has no records).
    pub last: u64,
    /// The log ends with a clean shutdown's segment.
    pub closed: bool,
    /// A torn record discarded at the end of the log, described for the log.
    pub torn: Option<String>,
    /// The WAL was created (or re-created in an emptied directory) by this open.
    pub created: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Open {
        path: path.to_owned(),
        source: Box::new(e),
    }
}

fn refuse(path: &Path, msg: String) -> Error {
    Error::Open {
        path: path.to_owned(),
        source: msg.into(),
    }
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and reads what it holds.
    /// `sled_mark` is the last commit sled says it has applied, if any.
    ///
    /// The returned writer must be [`rotate`](Wal::rotate)d before appending:
    /// the store does so once the recovered commits are durable in sled.
    pub(crate) fn open(dir: &Path, sled_mark: Option<u64>) -> Result<(Wal, Recovery)> {
        let existed = dir.is_dir();
        if !existed {
            if let Some(mark) = sled_mark {
                return Err(refuse(
                    dir,
                    format!(
                        "the write-ahead log is missing, but sled has applied commits up to {mark} \
                         from it: commits acknowledged after sled's last sync may be lost. Restore \
                         {} from a backup, or create it empty to open what sled holds",
                        dir.display()
                    ),
                ));
            }
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let paths = [dir.join("0"), dir.join("1")];
        let mut any_file = false;
        let mut created = false;
        let mut files = Vec::with_capacity(2);
        for path in &paths {
            any_file |= path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io_err(path))?;
            let len = file.metadata().map_err(io_err(path))?.len();
            if len < HEADER_LEN {
                // New (or cut short before its header page was whole): preallocate
                // it whole now (about 10 ms for both), so that no append waits
                // for it to grow.
                let mut seg = Segment {
                    path: path.clone(),
                    file,
                    len: 0,
                };
                grow(&mut seg, MAX_SEGMENT).map_err(io_err(path))?;
                files.push(seg.file);
                created = true;
            } else {
                files.push(file);
            }
        }
        if created {
            crate::blobs::fsync_dir(dir)?;
            if let Some(parent) = dir.parent() {
                crate::blobs::fsync_dir(parent)?;
            }
        }
        let mut bytes = Vec::with_capacity(2);
        let mut segs = Vec::with_capacity(2);
        for (path, file) in paths.iter().zip(files) {
            let len = file.metadata().map_err(io_err(path))?.len();
            let mut b = vec![0u8; usize::try_from(len).expect("a WAL segment fits in memory")];
            file.read_exact_at(&mut b, 0).map_err(io_err(path))?;
            bytes.push(b);
            segs.push(Segment {
                path: path.clone(),
                file,
                len,
            });
        }
        let segs: [Segment; 2] = segs.try_into().ok().expect("two segments");
        let headers: Vec<Option<SegHeader>> = bytes
            .iter()
            .enumerate()
            .map(|(i, b)| SegHeader::decode(b).filter(|h| h.generation % 2 == i as u64))
            .collect();
        let newest = match (headers[0], headers[1]) {
            (None, None) => {
                let recovery = match sled_mark {
                    // Before the first commit (or a first open cut short): nothing to recover.
                    None => Recovery::default(),
                    // The operator emptied the directory to accept what sled holds.
                    Some(mark) if !any_file => Recovery {
                        sync_point: mark,
                        last: mark,
                        ..Recovery::default()
                    },
                    Some(mark) => {
                        return Err(refuse(
                            dir,
                            format!(
                                "neither write-ahead log segment has a valid header, but sled has \
                                 applied commits up to {mark} from it: the log is damaged and \
                                 commits acknowledged after sled's last sync may be lost. Restore \
                                 {} from a backup, or empty it to open what sled holds",
                                dir.display()
                            ),
                        ));
                    }
                };
                // No header yet: the writer starts as if segment 0 were active at
                // generation 0, so that its first rotation writes generation 1 into segment 1.
                let wal = Wal {
                    segs,
                    active: 0,
                    generation: 0,
                    start: recovery.last + 1,
                    pos: HEADER_LEN,
                    next: recovery.last + 1,
                    buf: Vec::new(),
                };
                return Ok((
                    wal,
                    Recovery {
                        created: true,
                        ..recovery
                    },
                ));
            }
            (Some(a), None) => (0, a),
            (None, Some(b)) => (1, b),
            (Some(a), Some(b)) if a.generation > b.generation => (0, a),
            (_, Some(b)) => (1, b),
        };
        let (ni, nh) = newest;
        let oi = 1 - ni;
        let seg = &bytes[ni];

        // The active segment: whole records with consecutive commit numbers.
        let mut recovery = Recovery::default();
        let mut records = Vec::new();
        let mut at = HEADER_LEN as usize;
        let mut expect = nh.start;
        let mut sync_point = nh.sync_point;
        while let Some(r) = record_at(seg, at).filter(|r| r.commit == expect) {
            sync_point = sync_point.max(r.sync_point);
            records.push((r.commit, r.payload.to_vec()));
            expect += 1;
            at = r.end;
        }
        let last = expect - 1;
        if at + REC_HEADER <= seg.len() && seg[at..at + REC_HEADER].iter().any(|&b| b != 0) {
            let what = match commit_at(seg, at) {
                Some(c) if c < nh.start => None, // a stale record: the log simply ends here
                Some(c) => Some(format!("a record for commit {c} that is not whole")),
                None => Some("bytes that are not a record".to_owned()),
            };
            recovery.torn = what.map(|what| {
                format!(
                    "{} ends at offset {at} with {what}: a write cut short by a crash, never \
                     acknowledged, discarded",
                    segs[ni].path.display()
                )
            });
        }

        // Damage in the middle: a whole record after the end, in either segment.
        for (i, b) in bytes.iter().enumerate() {
            let mut off = HEADER_LEN as usize;
            while off + REC_HEADER <= b.len() {
                if let Some(c) = commit_at(b, off)
                    && c > last
                    && record_at(b, off).is_some()
                {
                    return Err(refuse(
                        &segs[ni].path,
                        format!(
                            "the write-ahead log is damaged in its middle, not torn at its tail: \
                             the record for commit {} at offset {at} of {} does not read back, \
                             but {} holds a whole record for commit {c} at offset {off}; \
                             acknowledged commits would be lost. Restore the state dir from a backup",
                            last + 1,
                            segs[ni].path.display(),
                            segs[i].path.display(),
                        ),
                    ));
                }
                off += ALIGN;
            }
        }

        // The older segment, when sled may lack some of its commits.
        let mut older = Vec::new();
        if sync_point + 1 < nh.start {
            let path = &segs[oi].path;
            let oh = headers[oi]
                .filter(|h| h.generation + 1 == nh.generation && h.start <= sync_point + 1)
                .ok_or_else(|| {
                    refuse(
                        path,
                        format!(
                            "commits {}..{} are needed from this write-ahead log segment, but its \
                             header is damaged or from another generation: the log is damaged. \
                             Restore the state dir from a backup",
                            sync_point + 1,
                            nh.start - 1
                        ),
                    )
                })?;
            let b = &bytes[oi];
            let mut at = HEADER_LEN as usize;
            let mut expect = oh.start;
            while expect < nh.start {
                match record_at(b, at).filter(|r| r.commit == expect) {
                    Some(r) => {
                        if r.commit > sync_point {
                            older.push((r.commit, r.payload.to_vec()));
                        }
                        expect += 1;
                        at = r.end;
                    }
                    None => {
                        return Err(refuse(
                            path,
                            format!(
                                "the record for commit {expect} at offset {at} of this write-ahead \
                                 log segment does not read back, and commits up to {} follow it: \
                                 the log is damaged in its middle. Restore the state dir from a backup",
                                nh.start - 1
                            ),
                        ));
                    }
                }
            }
        }
        // Best effort, for an accepted loss: what sled lost that the WAL still has.
        let floor = sled_mark.unwrap_or(0);
        if floor < sync_point {
            let mut next = floor + 1;
            let mut take = |commit: u64, payload: &[u8]| {
                if commit == next && commit <= sync_point {
                    recovery.lost.push((commit, payload.to_vec()));
                    next += 1;
                }
                commit <= next
            };
            if let Some(oh) = headers[oi].filter(|h| h.generation + 1 == nh.generation) {
                let b = &bytes[oi];
                let mut at = HEADER_LEN as usize;
                let mut expect = oh.start;
                while let Some(r) = record_at(b, at).filter(|r| r.commit == expect) {
                    if !take(r.commit, r.payload) {
                        break;
                    }
                    expect += 1;
                    at = r.end;
                }
            }
            for (commit, payload) in &records {
                take(*commit, payload);
            }
        }
        older.extend(records.into_iter().filter(|(c, _)| *c > sync_point));
        recovery.closed = nh.closed && last + 1 == nh.start;
        recovery.records = older;
        recovery.sync_point = sync_point;
        recovery.last = last;
        let wal = Wal {
            segs,
            active: ni,
            generation: nh.generation,
            start: nh.start,
            pos: at as u64,
            next: last + 1,
            buf: Vec::new(),
        };
        Ok((wal, recovery))
    }

    /// The number the next commit gets.
    pub(crate) fn next_commit(&self) -> u64 {
        self.next
    }

    /// The first commit of the active segment: rotating overwrites every commit before it.
    pub(crate) fn active_start(&self) -> u64 {
        self.start
    }

    /// Where a record of `len` bytes goes.
    pub(crate) fn room(&self, len: u64) -> Room {
        let end = self.pos + len;
        if end <= self.segs[self.active].len {
            Room::Fits
        } else if end <= MAX_SEGMENT || self.pos == HEADER_LEN {
            Room::Grow(end.div_ceil(GROW_STEP) * GROW_STEP)
        } else {
            Room::Rotate
        }
    }

    /// Grows the active segment to `len` bytes.
    pub(crate) fn grow_active(&mut self, len: u64) -> std::io::Result<()> {
        grow(&mut self.segs[self.active], len)
    }

    /// Starts a new generation in the other segment: its first commit is
    /// `first`, `sync_point` is recorded in its header, and it has room for at
    /// least `room` bytes of records. The caller ensures that sled holds
    /// durably every commit before [`active_start`](Wal::active_start).
    pub(crate) fn rotate(
        &mut self,
        sync_point: u64,
        first: u64,
        room: u64,
        closed: bool,
    ) -> std::io::Result<()> {
        let other = 1 - self.active;
        let seg = &mut self.segs[other];
        let need = HEADER_LEN + room;
        if seg.len < need {
            grow(seg, need.div_ceil(GROW_STEP) * GROW_STEP)?;
        }
        let header = SegHeader {
            generation: self.generation + 1,
            start: first,
            sync_point,
            closed,
        };
        seg.file.write_all_at(&header.encode(), 0)?;
        seg.file.sync_data()?;
        self.active = other;
        self.generation += 1;
        self.start = first;
        self.next = first;
        self.pos = HEADER_LEN;
        Ok(())
    }

    /// Writes `batch` as the next commit and fdatasyncs it (or, for a test,
    /// fails as if fdatasync had); returns its commit number. The caller has
    /// made [`room`](Wal::room) for it.
    pub(crate) fn append(
        &mut self,
        batch: &Batch,
        sync_point: u64,
        fail_sync: bool,
    ) -> std::io::Result<u64> {
        let commit = self.next;
        let buf = &mut self.buf;
        buf.clear();
        buf.resize(REC_HEADER, 0);
        batch.encode_into(buf);
        let len = buf.len() - REC_HEADER;
        buf[..4].copy_from_slice(REC_MAGIC);
        buf[4..8].copy_from_slice(&len32(len).to_le_bytes());
        buf[8..16].copy_from_slice(&commit.to_le_bytes());
        buf[16..24].copy_from_slice(&sync_point.to_le_bytes());
        let mut h = blake3::Hasher::new();
        h.update(&buf[..24]);
        h.update(&buf[REC_HEADER..]);
        let hash = h.finalize();
        buf[24..40].copy_from_slice(&hash.as_bytes()[..16]);
        buf.resize(align(buf.len()), 0);
        let seg = &self.segs[self.active];
        debug_assert!(self.pos + buf.len() as u64 <= seg.len);
        seg.file.write_all_at(buf, self.pos)?;
        if fail_sync {
            return Err(std::io::Error::other("injected by a test"));
        }
        seg.file.sync_data()?;
        self.pos += buf.len() as u64;
        self.next += 1;
        Ok(commit)
    }

    /// The active segment's path, for messages.
    pub(crate) fn active_path(&self) -> &Path {
        &self.segs[self.active].path
    }
}

/// Extends a segment with zeros to `len` bytes and makes the new size durable.
fn grow(seg: &mut Segment, len: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = seg.len;
    while at < len {
        let n = (len - at).min(ZEROS.len() as u64);
        seg.file
            .write_all_at(&ZEROS[..usize::try_from(n).expect("small")], at)?;
        at += n;
    }
    seg.file.sync_all()?;
    seg.len = len;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tag: &str, n: usize) -> Batch {
        let mut b = Batch::default();
        for i in 0..n {
            b.insert(
                format!("{tag}-{i}"),
                format!("value of {tag} {i}").into_bytes(),
            );
        }
        b.remove(b"gone");
        b
    }

    /// A fresh WAL, rotated once as the store does at open.
    fn fresh(dir: &Path) -> Wal {
        let (mut wal, rec) = Wal::open(dir, None).unwrap();
        assert!(rec.created && rec.records.is_empty());
        wal.rotate(0, 1, 0, false).unwrap();
        wal
    }

    fn append(wal: &mut Wal, b: &Batch, sync_point: u64) -> u64 {
        let len = record_len(b);
        match wal.room(len) {
            Room::Fits => {}
            Room::Grow(to) => wal.grow_active(to).unwrap(),
            Room::Rotate => {
                let first = wal.next_commit();
                wal.rotate(sync_point, first, len, false).unwrap();
            }
        }
        wal.append(b, sync_point, false).unwrap()
    }

    /// Offsets of the records in a segment file, read with the documented framing.
    fn offsets(path: &Path) -> Vec<usize> {
        let bytes = std::fs::read(path).unwrap();
        let mut at = HEADER_LEN as usize;
        let mut out = Vec::new();
        while let Some(r) = record_at(&bytes, at) {
            out.push(at);
            at = r.end;
        }
        out
    }

    #[test]
    fn batch_round_trips() {
        let b = batch("k", 3);
        let mut out = Vec::new();
        b.encode_into(&mut out);
        assert_eq!(out.len(), b.encoded_len());
        assert_eq!(Batch::decode(&out).unwrap(), b);
        assert!(Batch::decode(&out[..out.len() - 1]).is_err());
        out.push(0);
        assert!(Batch::decode(&out).is_err());
    }

    #[test]
    fn records_read_back_in_order_after_the_sync_point() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = fresh(&dir);
        for i in 1..=5 {
            assert_eq!(
                append(&mut wal, &batch("a", i), if i > 2 { 2 } else { 0 }),
                i as u64
            );
        }
        drop(wal);
        let (wal, rec) = Wal::open(&dir, Some(2)).unwrap();
        assert_eq!((rec.sync_point, rec.last, rec.closed), (2, 5, false));
        let commits: Vec<u64> = rec.records.iter().map(|r| r.0).collect();
        assert_eq!(commits, [3, 4, 5]);
        assert_eq!(Batch::decode(&rec.records[2].1).unwrap(), batch("a", 5));
        assert_eq!(wal.next_commit(), 6);
        assert!(rec.torn.is_none());
    }

    #[test]
    fn a_torn_tail_is_discarded_and_a_middle_record_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = fresh(&dir);
        for i in 1..=4 {
            append(&mut wal, &batch("a", i), 0);
        }
        let path = wal.active_path().to_owned();
        drop(wal);
        let offs = offsets(&path);
        assert_eq!(offs.len(), 4);
        let clean = std::fs::read(&path).unwrap();

        // The last record cut short: the log ends at commit 3.
        let mut bytes = clean.clone();
        let end = offs[3] + REC_HEADER + 5;
        bytes[end..end + 40].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let (_, rec) = Wal::open(&dir, Some(0)).unwrap();
        assert_eq!(rec.last, 3);
        assert!(
            rec.torn.as_deref().unwrap().contains("commit 4"),
            "{:?}",
            rec.torn
        );

        // A record in the middle damaged: the open is refused, naming it.
        let mut bytes = clean.clone();
        bytes[offs[1] + REC_HEADER + 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = Wal::open(&dir, Some(0)).err().expect("refused").to_string();
        assert!(err.contains("damaged in its middle"), "{err}");
        assert!(err.contains("commit 2"), "{err}");
        assert!(err.contains("commit 3"), "{err}");

        // Its length field damaged, so that the next record cannot be found by it.
        let mut bytes = clean;
        bytes[offs[2] + 4] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = Wal::open(&dir, Some(0)).err().expect("refused").to_string();
        assert!(err.contains("commit 4"), "{err}");
    }

    #[test]
    fn rotation_keeps_numbers_growing_and_ignores_stale_records() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = fresh(&dir);
        // Large records, so that both segments fill and are reused.
        let big = {
            let mut b = Batch::default();
            b.insert(b"k", vec![7u8; 700 * 1024]);
            b
        };
        let mut generations = 1;
        for i in 1..=20u64 {
            // The sync point trails by two commits, as a background sync would.
            let before = wal.generation;
            assert_eq!(append(&mut wal, &big, i.saturating_sub(3)), i);
            generations += wal.generation - before;
        }
        assert!(generations >= 4, "{generations}");
        assert!(std::fs::metadata(dir.join("0")).unwrap().len() <= MAX_SEGMENT + GROW_STEP);
        drop(wal);
        let (_, rec) = Wal::open(&dir, Some(17)).unwrap();
        assert_eq!((rec.sync_point, rec.last), (17, 20));
        let commits: Vec<u64> = rec.records.iter().map(|r| r.0).collect();
        assert_eq!(commits, [18, 19, 20]);
    }

    #[test]
    fn a_needed_older_segment_must_be_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = fresh(&dir);
        for i in 1..=3 {
            append(&mut wal, &batch("a", i), 0);
        }
        let older = wal.active_path().to_owned();
        // Rotate with sled known durable only up to 1: commits 2 and 3 are still needed.
        wal.rotate(1, 4, 0, false).unwrap();
        append(&mut wal, &batch("b", 1), 1);
        drop(wal);
        let (_, rec) = Wal::open(&dir, Some(1)).unwrap();
        let commits: Vec<u64> = rec.records.iter().map(|r| r.0).collect();
        assert_eq!(commits, [2, 3, 4]);

        let offs = offsets(&older);
        let mut bytes = std::fs::read(&older).unwrap();
        bytes[offs[2] + REC_HEADER] ^= 1;
        std::fs::write(&older, &bytes).unwrap();
        let err = Wal::open(&dir, Some(1)).err().expect("refused").to_string();
        assert!(err.contains("commit 3"), "{err}");
    }

    #[test]
    fn a_torn_header_falls_back_to_the_previous_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = fresh(&dir);
        for i in 1..=3 {
            append(&mut wal, &batch("a", i), 0);
        }
        wal.rotate(3, 4, 0, true).unwrap();
        let closed = wal.active_path().to_owned();
        drop(wal);
        let (_, rec) = Wal::open(&dir, Some(3)).unwrap();
        assert!(rec.closed && rec.records.is_empty());
        // The closing header is torn: the segment before it is the log.
        let mut bytes = std::fs::read(&closed).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&closed, &bytes).unwrap();
        let (_, rec) = Wal::open(&dir, Some(3)).unwrap();
        assert!(!rec.closed);
        assert_eq!((rec.sync_point, rec.last), (0, 3));
        assert_eq!(rec.records.len(), 3);
    }
}

//! The store's one error type.

use std::path::PathBuf;

use crate::RunId;

/// `Result` with the store's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
///
/// Every message says what happened and what to do about it.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// An append named a sequence number other than the run's next one. Nothing
    /// was written; the caller's view of the run is stale (two writers?).
    #[error(
        "run {run}: append expected next seq {expected} but the log's next seq is {actual}; \
         nothing was written — reload the run from the log (is a second writer running?)"
    )]
    SeqMismatch {
        /// The run appended to.
        run: RunId,
        /// The next seq the caller believed in.
        expected: u64,
        /// The next seq on record.
        actual: u64,
    },
    /// A new run asked for a name that another run on record already has.
    #[error(
        "a run named {name:?} already exists (run {existing}); choose another name or delete that run"
    )]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The run that holds it.
        existing: RunId,
    },
    /// An earlier flush or fsync failed; the store no longer acknowledges appends,
    /// because it cannot know what reached the disk.
    #[error(
        "the store is poisoned: an earlier flush or fsync failed, so no append can be acknowledged; \
         stop the daemon, check the disk, and restart (the log replays from what is durable)"
    )]
    Poisoned,
    /// Another `Store` (in this or another process) holds the state dir.
    #[error(
        "state dir {} is in use by another ferry process (lock {}); stop it or choose another --state-dir",
        path.parent().unwrap_or(path).display(), path.display()
    )]
    Locked {
        /// The lock file, `DIR/LOCK`.
        path: PathBuf,
    },
    /// The state dir or its sled database could not be opened.
    #[error(
        "cannot open the store at {}: {source}; if the database is damaged, move the state dir aside \
         and restore it from a backup (or start with an empty one)", path.display()
    )]
    Open {
        /// What could not be opened.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record of a run's log does not decode, is out of place, or is missing.
    /// Other runs are unaffected.
    #[error(
        "run {run} is corrupt at seq {seq}: {reason}; run `ferry verify` and restore the state dir from a backup"
    )]
    Corrupt {
        /// The damaged run.
        run: RunId,
        /// The first bad seq.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The run is not on record.
    #[error("no run {0} on record; list runs to find its id")]
    UnknownRun(RunId),
    /// The run has ended; its log takes no more events.
    #[error("run {run} has already ended (phase {phase}); a finished run takes no more events")]
    RunTerminal {
        /// The run.
        run: RunId,
        /// Its final phase.
        phase: String,
    },
    /// `delete_run` was asked to delete a run that has not ended.
    #[error(
        "run {run} has not ended (phase {phase}); cancel it and wait until it ends before deleting it"
    )]
    NotTerminal {
        /// The run.
        run: RunId,
        /// Its phase.
        phase: String,
    },
    /// An append carried no events.
    #[error("run {0}: an append must carry at least one event")]
    EmptyAppend(RunId),
    /// A record (envelope, index entry) could not be encoded or decoded.
    #[error("cannot {what}: {reason}")]
    Codec {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The blob file is not in the blob dir.
    #[error("blob {hash} is missing at {}; it was deleted by retention or lost — the run cannot use it", path.display())]
    BlobMissing {
        /// Hex hash of the blob.
        hash: String,
        /// Where it should be.
        path: PathBuf,
    },
    /// The blob file's bytes do not match its hash, or do not decrypt.
    #[error("blob {hash} at {} failed its integrity check: {reason}; the file was altered — restore it from a backup", path.display())]
    BlobIntegrity {
        /// Hex hash of the blob.
        hash: String,
        /// The file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// Encryption was asked for but no blob key is configured.
    #[error(
        "an encrypted blob was requested but no blob key is configured; set the blob key file in the config"
    )]
    NoBlobKey,
    /// A key file is unusable.
    #[error("key file {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The committer thread is gone (it panicked or the store is shutting down).
    #[error("the store's committer has stopped; restart the daemon")]
    CommitterGone,
    /// A file system operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or dir involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing an export failed.
    #[error("cannot write the export: {0}")]
    Export(#[source] std::io::Error),
    /// sled reported an error.
    #[error("sled error: {0}; check the disk and the state dir")]
    Sled(
        #[from]
        #[source]
        sled::Error,
    ),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

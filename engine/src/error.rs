//! Engine errors.

use ferry_store::RunId;

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed (I/O, poisoned, seq mismatch, name taken …).
    #[error(transparent)]
    Store(#[from] ferry_store::Error),
    /// The log cannot be replayed by this binary: an illegal event or an
    /// unknown step. Loud, and for this run alone.
    #[error("run {run}: log cannot be replayed (nondeterminism at seq {seq}): {reason}")]
    Nondeterminism {
        /// The run.
        run: RunId,
        /// The offending seq.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// An event's bytes do not decode.
    #[error("run {run}: event at seq {seq} is corrupt: {reason}; run `ferry verify` on it")]
    Corrupt {
        /// The run.
        run: RunId,
        /// The seq.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// No such run.
    #[error("no run {0} on record")]
    UnknownRun(RunId),
    /// The run has ended; it cannot be cancelled or resumed.
    #[error("run {run} has already finished ({phase}); nothing to cancel")]
    AlreadyFinished {
        /// The run.
        run: RunId,
        /// Its final phase.
        phase: String,
    },
    /// The run is unfinished but not driven by this engine.
    #[error("run {0} is not active in this engine; resume it first")]
    NotActive(RunId),
    /// The plan is not valid (unknown step kind, cycle, duplicate id …).
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    /// The engine is shutting down and takes no new run.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

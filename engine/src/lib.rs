//! ferry-engine: the generic durable step runner.
//!
//! A workflow is a value: a plan of typed step instances ([`StepDecl`]),
//! recorded in the run's log with its spec. The [`Engine`] drives each run
//! with one actor, the run's only writer, that appends every decision to the
//! store *before* acting on it, and folds every event into [`RunState`] —
//! the same pure fold that replays the log after a crash. Nothing here names
//! a Kubernetes type.
//!
//! # Layout
//! - [`event`]: the [`Event`] enum (bincode behind a format byte) and the
//!   JSON payloads steps define.
//! - [`state`]: [`RunState::apply`], the fold, and the phase rules.
//! - [`step`]: the [`Step`] trait, its context, errors and the [`Registry`].
//! - [`engine`]: [`Engine`] — submit, recover, cancel, wait, shutdown — and
//!   the per-run actor: retries with backoff, timeouts, deadlines,
//!   checkpoints, concurrency limits, compensation.
//! - [`failpoint`]: crash points for the crash tests.

pub mod clock;
pub mod engine;
pub mod error;
pub mod event;
pub mod failpoint;
pub mod state;
pub mod step;

pub use clock::Clock;
pub use engine::{Engine, EngineOptions, RetryPolicy, Submission, export_run, load_state};
pub use error::{Error, Result};
pub use event::{DecodeError, EVENT_FORMAT_V1, Event, Json, Refusal, StepDecl, StepId};
pub use failpoint::failpoint;
pub use state::{Nondeterminism, Phase, RunState, StepState, StepStatus};
pub use step::{BoxFuture, CompensateCtx, DynStep, ErrorKind, Registry, Step, StepCtx, StepError};

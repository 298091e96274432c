//! The engine's own events and the values they carry.
//!
//! Events are encoded with bincode behind a format byte ([`EVENT_FORMAT_V1`]).
//! Payloads that steps define (spec, inputs, outputs, checkpoints) are JSON
//! text inside the event ([`Json`]): bincode 2 cannot decode
//! `deserialize_any` types, and JSON lets a payload gain fields without
//! breaking old logs. Variants are never reordered or reused; a removed
//! variant keeps its slot.

use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Format byte of the first (current) event encoding.
pub const EVENT_FORMAT_V1: u8 = 1;

/// A stable step id, such as `snapshot/shop/pgdata-db-0`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StepId(pub String);

impl StepId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StepId {
    fn from(s: &str) -> Self {
        StepId(s.to_owned())
    }
}

impl From<String> for StepId {
    fn from(s: String) -> Self {
        StepId(s)
    }
}

/// JSON text carried inside an event: a step-defined payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Json(pub String);

impl Json {
    /// Serializes `value` to JSON text.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(Json)
    }

    /// Deserializes the JSON text into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The JSON `null`.
    pub fn null() -> Self {
        Json("null".to_owned())
    }

    /// The payload as a `serde_json::Value` (`Null` if it does not parse).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

/// One step instance of a plan, as recorded in `Planned` / `PlanExtended`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepDecl {
    /// Stable id, unique within the run.
    pub id: StepId,
    /// The step type's kind, as registered with the engine.
    pub kind: String,
    /// The step type's version when the plan was recorded.
    pub version: u32,
    /// The step's input (JSON).
    pub input: Json,
    /// Steps that must succeed before this one starts.
    pub deps: Vec<StepId>,
    /// A critical step's permanent failure rolls the run back; a
    /// non-critical one (cleanup) only leaves a warning.
    pub critical: bool,
    /// Attempts allowed, counting interrupted ones (at least 1).
    pub max_attempts: u32,
    /// Limit of one attempt, in milliseconds.
    pub attempt_timeout_ms: Option<u64>,
    /// Limit of the whole step from its first start, in milliseconds; the
    /// absolute deadline is recorded in `StepStarted`, so a restart does not
    /// reset it.
    pub deadline_ms: Option<u64>,
}

/// A reason a run was refused before it wrote anything: the object, the
/// rule it breaks and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The object concerned (e.g. `PersistentVolumeClaim shop/data`).
    pub object: String,
    /// The rule that refuses it.
    pub rule: String,
    /// What the user can do.
    pub fix: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.object, self.rule, self.fix)
    }
}

/// Everything that happens to a run. Recorded, never recomputed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The run was accepted: its unique name, the workflow kind and spec.
    RunSubmitted {
        /// Unique run name.
        name: String,
        /// Workflow kind (e.g. `clone`).
        workflow: String,
        /// The workflow's spec (JSON; never credentials or Secret data).
        spec: Json,
    },
    /// The initial plan.
    Planned {
        /// Step instances.
        steps: Vec<StepDecl>,
    },
    /// Steps only a running step could name (e.g. one per volume), recorded
    /// in the same batch as that step's success.
    PlanExtended {
        /// The step that extended the plan.
        by: StepId,
        /// New step instances.
        steps: Vec<StepDecl>,
        /// Extra dependencies `(existing pending step, new step)`.
        add_deps: Vec<(StepId, StepId)>,
    },
    /// Intent: the attempt is about to perform side effects.
    StepStarted {
        /// The step.
        step: StepId,
        /// Attempt number, from 1.
        attempt: u32,
        /// Absolute deadline (unix ms), fixed at the first start.
        deadline_ms: Option<u64>,
    },
    /// A checkpoint that a resumed attempt receives.
    StepProgress {
        /// The step.
        step: StepId,
        /// Step-defined checkpoint (JSON).
        checkpoint: Json,
    },
    /// The step finished; later steps read its output from here.
    StepSucceeded {
        /// The step.
        step: StepId,
        /// Step-defined output (JSON).
        output: Json,
        /// Warnings the step reported (the run then ends with warnings).
        warnings: Vec<String>,
    },
    /// An attempt failed. With `retry_at_ms` it will be retried then;
    /// without, the failure is permanent.
    StepFailed {
        /// The step.
        step: StepId,
        /// The attempt that failed.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Whether the error itself was retryable.
        retryable: bool,
        /// When the next attempt starts, if there is one.
        retry_at_ms: Option<u64>,
    },
    /// Found started-but-unfinished at recovery: counts as an attempt.
    StepInterrupted {
        /// The step.
        step: StepId,
        /// The attempt that was interrupted.
        attempt: u32,
    },
    /// Stopped by a graceful shutdown: does not use up the attempt.
    StepSuspended {
        /// The step.
        step: StepId,
        /// The attempt that was suspended (it will be started again).
        attempt: u32,
    },
    /// The run was refused before anything was written.
    RunRefused {
        /// The step that refused (the first step).
        by: StepId,
        /// All reasons, at once.
        refusals: Vec<Refusal>,
    },
    /// A user asked to cancel: running steps are drained, then compensation.
    CancelRequested {
        /// Who or why.
        reason: String,
    },
    /// From here on only compensation events are legal.
    CompensationStarted {
        /// Why the run is rolled back.
        reason: String,
    },
    /// A step's compensation finished.
    StepCompensated {
        /// The step.
        step: StepId,
    },
    /// A step's compensation failed; `last` marks the final try.
    CompensationFailed {
        /// The step.
        step: StepId,
        /// What went wrong.
        error: String,
        /// No further try: the step's leftovers stay.
        last: bool,
    },
    /// Every step succeeded.
    RunSucceeded,
    /// The goal was reached, with warnings (e.g. cleanup failed).
    RunSucceededWithWarnings {
        /// What is left or went wrong.
        warnings: Vec<String>,
    },
    /// Compensation undid every started step.
    RunRolledBack,
    /// Compensation itself failed; `left` names what remains.
    RunFailed {
        /// Why.
        reason: String,
        /// Steps whose leftovers remain.
        left: Vec<String>,
    },
}

impl Event {
    /// Short name of the variant, for logs and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Event::RunSubmitted { .. } => "RunSubmitted",
            Event::Planned { .. } => "Planned",
            Event::PlanExtended { .. } => "PlanExtended",
            Event::StepStarted { .. } => "StepStarted",
            Event::StepProgress { .. } => "StepProgress",
            Event::StepSucceeded { .. } => "StepSucceeded",
            Event::StepFailed { .. } => "StepFailed",
            Event::StepInterrupted { .. } => "StepInterrupted",
            Event::StepSuspended { .. } => "StepSuspended",
            Event::RunRefused { .. } => "RunRefused",
            Event::CancelRequested { .. } => "CancelRequested",
            Event::CompensationStarted { .. } => "CompensationStarted",
            Event::StepCompensated { .. } => "StepCompensated",
            Event::CompensationFailed { .. } => "CompensationFailed",
            Event::RunSucceeded => "RunSucceeded",
            Event::RunSucceededWithWarnings { .. } => "RunSucceededWithWarnings",
            Event::RunRolledBack => "RunRolledBack",
            Event::RunFailed { .. } => "RunFailed",
        }
    }

    /// Encodes the event: format byte, then bincode (standard config).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![EVENT_FORMAT_V1];
        // Encoding plain data into a Vec cannot fail.
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding an event into memory cannot fail");
        out.extend_from_slice(&body);
        out
    }

    /// Decodes an event written by [`Event::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.split_first() {
            None => Err(DecodeError::Empty),
            Some((&EVENT_FORMAT_V1, body)) => {
                let (event, used) =
                    bincode::serde::decode_from_slice(body, bincode::config::standard())
                        .map_err(|e| DecodeError::Bincode(e.to_string()))?;
                if used != body.len() {
                    return Err(DecodeError::Trailing(body.len() - used));
                }
                Ok(event)
            }
            Some((&other, _)) => Err(DecodeError::UnknownFormat(other)),
        }
    }

    /// The event as readable JSON for export, with every step-defined
    /// payload passed through `redact` (Secret data must never be printed).
    pub fn to_export_json(
        &self,
        redact: &dyn Fn(serde_json::Value) -> serde_json::Value,
    ) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        // Payloads are JSON text inside the event: show them as JSON, redacted.
        fn expand(
            v: &mut serde_json::Value,
            redact: &dyn Fn(serde_json::Value) -> serde_json::Value,
        ) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, field) in map.iter_mut() {
                        let is_payload =
                            matches!(k.as_str(), "spec" | "output" | "checkpoint" | "input");
                        if is_payload && let serde_json::Value::String(text) = field {
                            let parsed = serde_json::from_str(text)
                                .unwrap_or(serde_json::Value::String(text.clone()));
                            *field = redact(parsed);
                            continue;
                        }
                        expand(field, redact);
                    }
                }
                serde_json::Value::Array(items) => {
                    for item in items {
                        expand(item, redact);
                    }
                }
                _ => {}
            }
        }
        expand(&mut v, redact);
        v
    }
}

/// An event's bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty event record")]
    Empty,
    /// A format byte this binary does not know (written by a newer ferry?).
    #[error("unknown event format byte {0}; this log was written by another ferry version")]
    UnknownFormat(u8),
    /// The bincode body does not decode.
    #[error("event body does not decode: {0}")]
    Bincode(String),
    /// Bytes left after the event.
    #[error("{0} trailing bytes after the event")]
    Trailing(usize),
}

//! The `Step` contract, its context and errors, and the registry of step
//! types a workflow may use.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_store::{RunId, Store};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::event::{Json, Refusal, StepDecl, StepId};

/// A boxed future, as the erased step interface returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a step error is to be handled. The retry policy is the engine's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth another attempt (timeouts, 429, 5xx, connection loss).
    Retryable,
    /// No attempt will fix it: the run compensates.
    Permanent,
    /// The step stopped because its cancellation token fired.
    Cancelled,
    /// The run must not go ahead (only a first step, before any write).
    Refused(Vec<Refusal>),
}

/// What a step's `run` or `compensate` returns on failure.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// How to handle it.
    pub kind: ErrorKind,
    /// What went wrong, for the log (never Secret data).
    pub message: String,
    /// Wait at least this long before the next attempt (e.g. Retry-After).
    pub retry_after: Option<Duration>,
}

impl StepError {
    /// A retryable error.
    pub fn retryable(message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Retryable,
            message: message.into(),
            retry_after: None,
        }
    }
    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            kind: ErrorKind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }
    /// The step noticed its cancellation.
    pub fn cancelled() -> Self {
        StepError {
            kind: ErrorKind::Cancelled,
            message: "cancelled".to_owned(),
            retry_after: None,
        }
    }
    /// The run is refused, for all these reasons at once.
    pub fn refused(refusals: Vec<Refusal>) -> Self {
        let message = format!("refused: {} reason(s)", refusals.len());
        StepError {
            kind: ErrorKind::Refused(refusals),
            message,
            retry_after: None,
        }
    }
    /// Sets a minimum wait before the next attempt.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
    /// Whether another attempt may help.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }
}

/// Steps a running step adds to the plan, and dependencies `(existing, new)`.
pub(crate) type PlanExtension = (Vec<StepDecl>, Vec<(StepId, StepId)>);

/// Messages from a running step to its run's actor.
pub(crate) enum StepMsg {
    /// Record a checkpoint; answer once it is durable.
    Checkpoint {
        step: StepId,
        checkpoint: Json,
        ack: oneshot::Sender<Result<(), String>>,
    },
}

/// What a step may see and do while it runs.
pub struct StepCtx {
    pub(crate) run: RunId,
    pub(crate) step: StepId,
    pub(crate) attempt: u32,
    pub(crate) deadline_ms: Option<u64>,
    pub(crate) cancel: CancellationToken,
    pub(crate) checkpoint: Option<Json>,
    pub(crate) spec: Json,
    pub(crate) outputs: Arc<BTreeMap<StepId, Json>>,
    pub(crate) store: Store,
    pub(crate) tx: mpsc::Sender<StepMsg>,
    pub(crate) extension: Mutex<Option<PlanExtension>>,
    pub(crate) warnings: Mutex<Vec<String>>,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) last_checkpoint: Mutex<Option<tokio::time::Instant>>,
}

impl StepCtx {
    /// The run.
    pub fn run_id(&self) -> RunId {
        self.run
    }
    /// ferry's short id of the run, used in the names of objects it makes.
    pub fn short(&self) -> String {
        self.run.short()
    }
    /// This step's id.
    pub fn step_id(&self) -> &StepId {
        &self.step
    }
    /// The attempt number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The step's absolute deadline (unix ms), if any.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.deadline_ms
    }
    /// Fires when the step must stop (cancel, compensation, shutdown).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }
    /// Whether the step was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    /// The run's spec.
    pub fn spec<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        self.spec
            .decode()
            .map_err(|e| StepError::permanent(format!("spec does not decode: {e}")))
    }
    /// The recorded output of an earlier step.
    pub fn output_of<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        let json = self
            .outputs
            .get(&StepId::from(step))
            .ok_or_else(|| StepError::permanent(format!("no recorded output of step {step}")))?;
        json.decode().map_err(|e| {
            StepError::permanent(format!("output of step {step} does not decode: {e}"))
        })
    }
    /// Ids of every step with a recorded output.
    pub fn finished_steps(&self) -> impl Iterator<Item = &StepId> {
        self.outputs.keys()
    }
    /// The last checkpoint recorded by an earlier attempt (or this one).
    pub fn checkpoint<T: DeserializeOwned>(&self) -> Option<T> {
        self.checkpoint.as_ref().and_then(|c| c.decode().ok())
    }
    /// Records a checkpoint durably, at most once per checkpoint interval:
    /// calls in between return `Ok(false)` without writing. `force` writes
    /// regardless of the interval.
    pub async fn save_checkpoint<T: Serialize>(
        &self,
        value: &T,
        force: bool,
    ) -> Result<bool, StepError> {
        let now = tokio::time::Instant::now();
        {
            let last = self.last_checkpoint.lock().expect("checkpoint lock");
            if !force && last.is_some_and(|l| now.duration_since(l) < self.checkpoint_interval) {
                return Ok(false);
            }
        }
        let checkpoint = Json::encode(value)
            .map_err(|e| StepError::permanent(format!("checkpoint does not encode: {e}")))?;
        let (ack, done) = oneshot::channel();
        self.tx
            .send(StepMsg::Checkpoint {
                step: self.step.clone(),
                checkpoint,
                ack,
            })
            .await
            .map_err(|_| StepError::cancelled())?;
        done.await
            .map_err(|_| StepError::cancelled())?
            .map_err(StepError::retryable)?;
        *self.last_checkpoint.lock().expect("checkpoint lock") = Some(now);
        Ok(true)
    }
    /// Adds steps to the plan, recorded with this step's success. Only a
    /// step may extend the plan once.
    pub fn extend_plan(&self, steps: Vec<StepDecl>, add_deps: Vec<(StepId, StepId)>) {
        *self.extension.lock().expect("extension lock") = Some((steps, add_deps));
    }
    /// Reports a warning: the run will end `SucceededWithWarnings`.
    pub fn warn(&self, message: impl Into<String>) {
        self.warnings
            .lock()
            .expect("warnings lock")
            .push(message.into());
    }
    /// The store, for blobs.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// What a step's compensation may see.
pub struct CompensateCtx {
    pub(crate) run: RunId,
    pub(crate) step: StepId,
    pub(crate) spec: Json,
    pub(crate) checkpoint: Option<Json>,
    pub(crate) outputs: Arc<BTreeMap<StepId, Json>>,
    pub(crate) store: Store,
}

impl CompensateCtx {
    /// The run.
    pub fn run_id(&self) -> RunId {
        self.run
    }
    /// ferry's short id of the run.
    pub fn short(&self) -> String {
        self.run.short()
    }
    /// The step being compensated.
    pub fn step_id(&self) -> &StepId {
        &self.step
    }
    /// The run's spec.
    pub fn spec<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        self.spec
            .decode()
            .map_err(|e| StepError::permanent(format!("spec does not decode: {e}")))
    }
    /// The recorded output of another step, if it finished.
    pub fn output_of<T: DeserializeOwned>(&self, step: &str) -> Option<T> {
        self.outputs
            .get(&StepId::from(step))
            .and_then(|j| j.decode().ok())
    }
    /// The step's last checkpoint, if any.
    pub fn checkpoint<T: DeserializeOwned>(&self) -> Option<T> {
        self.checkpoint.as_ref().and_then(|c| c.decode().ok())
    }
    /// The store, for blobs.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// A step type.
///
/// # Guarantees (given by the engine)
/// - `StepStarted` is durable before `run` is called: intent before action.
/// - `run`'s output is recorded in `StepSucceeded`; later steps read it from
///   there, and a step that succeeded is never run again.
/// - `compensate` is called for every step that started, finished or not,
///   in reverse order of start, and again after a crash until its
///   `StepCompensated` is durable.
///
/// # Assumptions (the step's contract)
/// - `run` is idempotent: after a crash it runs again from the start (with
///   the last checkpoint), so a side effect may be repeated and must be
///   harmless when it is (create-if-absent, adopt only what carries this
///   run's label).
/// - `compensate` works with no output (the run never finished), is
///   idempotent, and touches only what this run made.
/// - `run` watches its cancellation token at its await points.
///
/// # Errors
/// Return [`StepError::retryable`] for transient trouble, `permanent` for
/// what no retry fixes, `refused` (first step only) to refuse the run.
pub trait Step: Send + Sync + 'static {
    /// The step's input, recorded in the plan.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The step's output, recorded in `StepSucceeded`.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The kind under which the step type is registered.
    fn kind(&self) -> &'static str;

    /// The step type's version, recorded in the plan.
    fn version(&self) -> u32 {
        1
    }

    /// Performs the step.
    fn run(
        &self,
        ctx: &StepCtx,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, StepError>> + Send;

    /// Undoes what the step made (only what carries this run's label).
    fn compensate(
        &self,
        ctx: &CompensateCtx,
        input: Self::Input,
        output: Option<Self::Output>,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
}

/// The type-erased form the engine calls.
pub trait DynStep: Send + Sync + 'static {
    /// The registered kind.
    fn kind(&self) -> &'static str;
    /// The step type's version.
    fn version(&self) -> u32;
    /// Runs with JSON input, returns JSON output.
    fn run_json<'a>(
        &'a self,
        ctx: &'a StepCtx,
        input: &'a Json,
    ) -> BoxFuture<'a, Result<Json, StepError>>;
    /// Compensates with JSON input and optional output.
    fn compensate_json<'a>(
        &'a self,
        ctx: &'a CompensateCtx,
        input: &'a Json,
        output: Option<&'a Json>,
    ) -> BoxFuture<'a, Result<(), StepError>>;
}

impl<S: Step> DynStep for S {
    fn kind(&self) -> &'static str {
        Step::kind(self)
    }
    fn version(&self) -> u32 {
        Step::version(self)
    }
    fn run_json<'a>(
        &'a self,
        ctx: &'a StepCtx,
        input: &'a Json,
    ) -> BoxFuture<'a, Result<Json, StepError>> {
        Box::pin(async move {
            let input: S::Input = input.decode().map_err(|e| {
                StepError::permanent(format!("input of step {} does not decode: {e}", ctx.step))
            })?;
            let output = self.run(ctx, input).await?;
            Json::encode(&output)
                .map_err(|e| StepError::permanent(format!("output does not encode: {e}")))
        })
    }
    fn compensate_json<'a>(
        &'a self,
        ctx: &'a CompensateCtx,
        input: &'a Json,
        output: Option<&'a Json>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            let input: S::Input = input.decode().map_err(|e| {
                StepError::permanent(format!("input of step {} does not decode: {e}", ctx.step))
            })?;
            // An output that no longer decodes is treated as absent: compensation
            // must work without it.
            let output = output.and_then(|o| o.decode::<S::Output>().ok());
            self.compensate(ctx, input, output).await
        })
    }
}

/// The step types a workflow may use, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    steps: BTreeMap<&'static str, Arc<dyn DynStep>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers a step type under its kind (replacing one of the same kind).
    pub fn register<S: Step>(&mut self, step: S) -> &mut Self {
        self.steps.insert(Step::kind(&step), Arc::new(step));
        self
    }
    /// The step type of `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn DynStep>> {
        self.steps.get(kind)
    }
    /// Declares a step instance of type `S` with `input`.
    pub fn decl<S: Step>(step: &S, id: impl Into<StepId>, input: &S::Input) -> StepDecl {
        StepDecl {
            id: id.into(),
            kind: Step::kind(step).to_owned(),
            version: Step::version(step),
            input: Json::encode(input).expect("step inputs encode to JSON"),
            deps: Vec::new(),
            critical: true,
            max_attempts: 5,
            attempt_timeout_ms: None,
            deadline_ms: None,
        }
    }
}

impl StepDecl {
    /// This step waits for `deps`.
    pub fn after(mut self, deps: &[&str]) -> Self {
        self.deps.extend(deps.iter().map(|d| StepId::from(*d)));
        self
    }
    /// A failure of this step leaves a warning and no rollback.
    pub fn non_critical(mut self) -> Self {
        self.critical = false;
        self
    }
    /// Attempts allowed.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Limit of one attempt.
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout_ms = Some(d.as_millis() as u64);
        self
    }
    /// Limit of the whole step from its first start.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline_ms = Some(d.as_millis() as u64);
        self
    }
}

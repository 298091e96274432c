//! The engine: submits runs, drives each with one actor (its only writer),
//! recovers unfinished runs at start, cancels and shuts down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_store::{IndexUpdate, RunId, Store};
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::event::{Event, Json, StepDecl, StepId};
use crate::failpoint::failpoint;
use crate::state::{Phase, RunState, StepStatus};
use crate::step::{CompensateCtx, ErrorKind, Registry, StepCtx, StepError, StepMsg};

/// Backoff between attempts: exponential, with jitter.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Wait before the second attempt.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The wait after `failed_attempts` failures: `initial * multiplier^(n-1)`,
    /// capped, then a uniform jitter in [half, full] so runs that failed
    /// together do not retry together.
    pub fn delay(&self, failed_attempts: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(failed_attempts.saturating_sub(1).min(60) as i32);
        let base = self.initial.as_secs_f64() * exp;
        let capped = base.min(self.max.as_secs_f64());
        let jittered = rand::rng().random_range(capped / 2.0..=capped.max(f64::MIN_POSITIVE));
        Duration::from_secs_f64(jittered)
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Steps running at once across all runs.
    pub global_limit: usize,
    /// Steps running at once within one run.
    pub per_run_limit: usize,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Least time between two checkpoints of a step.
    pub checkpoint_interval: Duration,
    /// How long a cancelled step may take to stop before it is dropped.
    pub drain_grace: Duration,
    /// Tries of one step's compensation.
    pub compensation_attempts: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            global_limit: 32,
            per_run_limit: 8,
            retry: RetryPolicy::default(),
            checkpoint_interval: Duration::from_secs(1),
            drain_grace: Duration::from_secs(30),
            compensation_attempts: 5,
        }
    }
}

/// A run to submit.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Unique name.
    pub name: String,
    /// Workflow kind.
    pub workflow: String,
    /// The spec (JSON).
    pub spec: Json,
    /// The initial plan.
    pub plan: Vec<StepDecl>,
}

enum Command {
    Cancel {
        reason: String,
        reply: oneshot::Sender<Result<()>>,
    },
}

struct ActiveRun {
    commands: mpsc::Sender<Command>,
    phase: watch::Receiver<Phase>,
}

struct Inner {
    store: Store,
    registry: Registry,
    opts: EngineOptions,
    clock: Clock,
    global: Arc<Semaphore>,
    runs: Mutex<HashMap<RunId, ActiveRun>>,
    actors: Mutex<Vec<JoinHandle<()>>>,
    /// Every step task, so that `abort` can wait until they are all dropped
    /// (they hold store handles).
    step_tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The engine. A cheap handle: clone it freely.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine over `store` with the step types of `registry`.
    pub fn new(store: Store, registry: Registry, opts: EngineOptions) -> Self {
        let global = Arc::new(Semaphore::new(opts.global_limit.max(1)));
        Engine {
            inner: Arc::new(Inner {
                store,
                registry,
                opts,
                clock: Clock::new(),
                global,
                runs: Mutex::new(HashMap::new()),
                actors: Mutex::new(Vec::new()),
                step_tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The engine's clock.
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    fn check_decls(&self, decls: &[StepDecl]) -> std::result::Result<(), String> {
        check_decls(&self.inner.registry, decls)
    }

    /// Records a new run (durably) and starts it.
    pub async fn submit(&self, sub: Submission) -> Result<RunId> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        self.check_decls(&sub.plan).map_err(Error::InvalidPlan)?;
        let run = RunId::new();
        let events = [
            Event::RunSubmitted {
                name: sub.name,
                workflow: sub.workflow,
                spec: sub.spec,
            },
            Event::Planned { steps: sub.plan },
        ];
        let mut state = RunState::default();
        let now = self.inner.clock.now_ms();
        for (i, e) in events.iter().enumerate() {
            state
                .apply(i as u64, now, e)
                .map_err(|n| Error::InvalidPlan(n.reason))?;
        }
        let encoded = events.iter().map(Event::encode).collect();
        self.inner
            .store
            .append(run, 0, now, encoded, index_update(&state))
            .await?;
        info!(run.id = %run, run.name = %state.name, "run submitted");
        self.spawn_actor(run, state);
        Ok(run)
    }

    /// Reads and folds a run's log.
    pub fn load(&self, run: RunId) -> Result<RunState> {
        load_state(&self.inner.store, run)
    }

    /// Resumes every unfinished run in the index. A run that cannot be
    /// replayed is reported and skipped; the others resume.
    pub async fn recover(&self) -> Result<(Vec<RunId>, Vec<(RunId, Error)>)> {
        let mut resumed = Vec::new();
        let mut failed = Vec::new();
        for summary in self.inner.store.list_unfinished()? {
            match self.resume(summary.run).await {
                Ok(true) => resumed.push(summary.run),
                Ok(false) => {}
                Err(e) => {
                    error!(run.id = %summary.run, error = %e, "cannot resume run");
                    failed.push((summary.run, e));
                }
            }
        }
        Ok((resumed, failed))
    }

    /// Resumes one run: replays it, marks unfinished attempts interrupted,
    /// and drives it on. Returns false if there was nothing to resume.
    pub async fn resume(&self, run: RunId) -> Result<bool> {
        if self
            .inner
            .runs
            .lock()
            .expect("runs lock")
            .contains_key(&run)
        {
            return Ok(false);
        }
        let mut state = self.load(run)?;
        if state.phase.is_terminal() {
            return Ok(false);
        }
        let decls: Vec<StepDecl> = state.steps.values().map(|s| s.decl.clone()).collect();
        self.check_decls(&decls)
            .map_err(|reason| Error::Nondeterminism {
                run,
                seq: state.next_seq,
                reason,
            })?;
        let interrupted: Vec<Event> = state
            .running_steps()
            .into_iter()
            .map(|(step, attempt)| Event::StepInterrupted { step, attempt })
            .collect();
        if !interrupted.is_empty() {
            let now = self.inner.clock.now_ms();
            let first = state.next_seq;
            for e in &interrupted {
                warn!(run.id = %run, event = ?e, "step found unfinished at recovery");
                let seq = state.next_seq;
                state
                    .apply(seq, now, e)
                    .map_err(|n| Error::Nondeterminism {
                        run,
                        seq: n.seq,
                        reason: n.reason,
                    })?;
            }
            let encoded = interrupted.iter().map(Event::encode).collect();
            self.inner
                .store
                .append(run, first, now, encoded, index_update(&state))
                .await?;
        }
        info!(run.id = %run, run.name = %state.name, phase = %state.phase, "run resumed");
        self.spawn_actor(run, state);
        Ok(true)
    }

    fn spawn_actor(&self, run: RunId, state: RunState) {
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (phase_tx, phase_rx) = watch::channel(state.phase);
        self.inner.runs.lock().expect("runs lock").insert(
            run,
            ActiveRun {
                commands: cmd_tx,
                phase: phase_rx,
            },
        );
        let (step_tx, step_rx) = mpsc::channel(64);
        let actor = RunActor {
            inner: self.inner.clone(),
            run,
            state,
            commands: cmd_rx,
            phase: phase_tx,
            step_tx,
            step_rx,
            tasks: JoinSet::new(),
            task_ids: HashMap::new(),
            running: BTreeMap::new(),
            permits: JoinSet::new(),
            acquiring: HashSet::new(),
            stopping: false,
        };
        let span = info_span!("run", run.id = %run);
        let inner = self.inner.clone();
        let handle = tokio::spawn(
            async move {
                if let Err(e) = actor.drive().await {
                    error!(error = %e, "run stopped");
                }
                inner.runs.lock().expect("runs lock").remove(&run);
            }
            .instrument(span),
        );
        self.inner.actors.lock().expect("actors lock").push(handle);
    }

    /// Asks a running run to cancel: its steps stop and it compensates.
    /// Refused for a finished run.
    pub async fn cancel(&self, run: RunId, reason: &str) -> Result<()> {
        let commands = self
            .inner
            .runs
            .lock()
            .expect("runs lock")
            .get(&run)
            .map(|a| a.commands.clone());
        match commands {
            Some(tx) => {
                let (reply, answer) = oneshot::channel();
                if tx
                    .send(Command::Cancel {
                        reason: reason.to_owned(),
                        reply,
                    })
                    .await
                    .is_err()
                {
                    return self.finished_or_inactive(run);
                }
                answer
                    .await
                    .unwrap_or_else(|_| self.finished_or_inactive(run))
            }
            None => self.finished_or_inactive(run),
        }
    }

    fn finished_or_inactive(&self, run: RunId) -> Result<()> {
        match self.inner.store.summary(run)? {
            None => Err(Error::UnknownRun(run)),
            Some(s) if s.terminal => Err(Error::AlreadyFinished {
                run,
                phase: s.phase,
            }),
            Some(_) => Err(Error::NotActive(run)),
        }
    }

    /// Waits until the run ends; returns its final phase.
    pub async fn wait(&self, run: RunId) -> Result<Phase> {
        let rx = self
            .inner
            .runs
            .lock()
            .expect("runs lock")
            .get(&run)
            .map(|a| a.phase.clone());
        if let Some(mut rx) = rx {
            loop {
                let phase = *rx.borrow_and_update();
                if phase.is_terminal() {
                    return Ok(phase);
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        let state = self.load(run)?;
        if state.phase.is_terminal() {
            Ok(state.phase)
        } else {
            Err(Error::NotActive(run))
        }
    }

    /// Graceful shutdown: running steps are asked to stop and recorded as
    /// suspended (no attempt used up, no compensation); runs resume at the
    /// next start.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let handles: Vec<_> = std::mem::take(&mut *self.inner.actors.lock().expect("actors lock"));
        for h in handles {
            let _ = h.await;
        }
    }

    /// Stops every run at once, appending nothing: what a crash does. For
    /// tests that simulate `kill -9` inside one process.
    pub async fn abort(&self) {
        // The actors stop before anything can see a shutdown: an actor that
        // saw it first would append StepSuspended, which a crash never does.
        let handles: Vec<_> = std::mem::take(&mut *self.inner.actors.lock().expect("actors lock"));
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
        // The orphaned step tasks see the shutdown and end; nothing of
        // theirs reaches the log without an actor.
        self.inner.shutdown.cancel();
        self.inner.step_tasks.close();
        self.inner.step_tasks.wait().await;
    }
}

/// Every declared step's kind must be registered, at the recorded version.
fn check_decls(registry: &Registry, decls: &[StepDecl]) -> std::result::Result<(), String> {
    for d in decls {
        match registry.get(&d.kind) {
            None => return Err(format!("step {} has unknown kind {}", d.id, d.kind)),
            Some(s) if s.version() != d.version => {
                return Err(format!(
                    "step {} is kind {} version {}, this binary has version {}",
                    d.id,
                    d.kind,
                    d.version,
                    s.version()
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn index_update(state: &RunState) -> IndexUpdate {
    IndexUpdate {
        name: state.name.clone(),
        phase: state.phase.as_str().to_owned(),
        current_step: state.current_step().map(|s| s.0),
        terminal: state.phase.is_terminal(),
    }
}

/// Reads and folds a run's log from the store.
pub fn load_state(store: &Store, run: RunId) -> Result<RunState> {
    let envelopes = store.read(run, 0)?;
    if envelopes.is_empty() {
        return Err(Error::UnknownRun(run));
    }
    let mut state = RunState::default();
    for env in &envelopes {
        let event = Event::decode(&env.event).map_err(|e| Error::Corrupt {
            run,
            seq: env.seq,
            reason: e.to_string(),
        })?;
        state
            .apply(env.seq, env.at_ms, &event)
            .map_err(|n| Error::Nondeterminism {
                run,
                seq: n.seq,
                reason: n.reason,
            })?;
    }
    Ok(state)
}

/// What a step task hands back.
struct Finished {
    step: StepId,
    attempt: u32,
    result: std::result::Result<Json, StepError>,
    extension: Option<crate::step::PlanExtension>,
    warnings: Vec<String>,
    timed_out_by_deadline: bool,
}

struct RunningStep {
    attempt: u32,
    cancel: CancellationToken,
}

/// The single writer of one run.
struct RunActor {
    inner: Arc<Inner>,
    run: RunId,
    state: RunState,
    commands: mpsc::Receiver<Command>,
    phase: watch::Sender<Phase>,
    step_tx: mpsc::Sender<StepMsg>,
    step_rx: mpsc::Receiver<StepMsg>,
    tasks: JoinSet<Finished>,
    task_ids: HashMap<tokio::task::Id, (StepId, u32)>,
    running: BTreeMap<StepId, RunningStep>,
    permits: JoinSet<(StepId, OwnedSemaphorePermit)>,
    acquiring: HashSet<StepId>,
    stopping: bool,
}

impl RunActor {
    /// Validates `events` with the fold, appends them durably, then adopts
    /// the new state. Nothing illegal is ever written.
    async fn append(&mut self, events: Vec<Event>) -> Result<()> {
        let now = self.inner.clock.now_ms();
        let mut next = self.state.clone();
        for e in &events {
            let seq = next.next_seq;
            next.apply(seq, now, e).map_err(|n| Error::Nondeterminism {
                run: self.run,
                seq: n.seq,
                reason: n.reason,
            })?;
        }
        let encoded = events.iter().map(Event::encode).collect();
        self.inner
            .store
            .append(
                self.run,
                self.state.next_seq,
                now,
                encoded,
                index_update(&next),
            )
            .await?;
        for e in &events {
            debug!(event = e.name(), "appended");
        }
        self.state = next;
        self.phase.send_replace(self.state.phase);
        Ok(())
    }

    fn stop_reason(&self) -> Option<String> {
        if let Some(reason) = &self.state.cancel_requested {
            return Some(format!("cancelled: {reason}"));
        }
        self.state
            .critical_failure()
            .map(|(id, error)| format!("step {id} failed: {error}"))
    }

    async fn drive(mut self) -> Result<()> {
        loop {
            if self.state.phase.is_terminal() {
                info!(phase = %self.state.phase, "run finished");
                return Ok(());
            }
            if self.inner.shutdown.is_cancelled() && !self.stopping {
                self.stopping = true;
                for r in self.running.values() {
                    r.cancel.cancel();
                }
            }
            if self.stopping && self.running.is_empty() {
                info!("run suspended for shutdown");
                return Ok(());
            }
            if !self.stopping {
                match self.state.phase {
                    Phase::Running => {
                        if let Some(reason) = self.stop_reason() {
                            for r in self.running.values() {
                                r.cancel.cancel();
                            }
                            if self.running.is_empty() {
                                self.permits.abort_all();
                                self.acquiring.clear();
                                failpoint("compensation.start.before");
                                self.append(vec![Event::CompensationStarted { reason }])
                                    .await?;
                                continue;
                            }
                        } else {
                            self.start_ready();
                            if self.running.is_empty()
                                && self.acquiring.is_empty()
                                && self.state.all_done()
                            {
                                let event = if self.state.warnings.is_empty() {
                                    Event::RunSucceeded
                                } else {
                                    Event::RunSucceededWithWarnings {
                                        warnings: self.state.warnings.clone(),
                                    }
                                };
                                self.append(vec![event]).await?;
                                continue;
                            }
                        }
                    }
                    Phase::Compensating => {
                        match self.state.next_compensation() {
                            Some(step) => {
                                if !self.compensate(step).await? {
                                    // Shutdown arrived mid-compensation.
                                    continue;
                                }
                            }
                            None => {
                                let left: Vec<String> = self
                                    .state
                                    .steps
                                    .iter()
                                    .filter_map(|(id, s)| match &s.status {
                                        StepStatus::CompensationFailed { error } => {
                                            Some(format!("{id}: {error}"))
                                        }
                                        _ => None,
                                    })
                                    .collect();
                                let event = if left.is_empty() {
                                    Event::RunRolledBack
                                } else {
                                    Event::RunFailed {
                                        reason: self
                                            .state
                                            .compensation_reason
                                            .clone()
                                            .unwrap_or_default(),
                                        left,
                                    }
                                };
                                self.append(vec![event]).await?;
                            }
                        }
                        continue;
                    }
                    _ => {}
                }
            }
            self.wait_for_something().await?;
        }
    }

    fn start_ready(&mut self) {
        let in_flight = self.running.len() + self.acquiring.len();
        let room = self
            .inner
            .opts
            .per_run_limit
            .max(1)
            .saturating_sub(in_flight);
        let now = self.inner.clock.now_ms();
        let ready: Vec<StepId> = self
            .state
            .ready_steps(now)
            .into_iter()
            .filter(|id| !self.running.contains_key(id) && !self.acquiring.contains(id))
            .take(room)
            .collect();
        for id in ready {
            self.acquiring.insert(id.clone());
            let sem = self.inner.global.clone();
            self.permits.spawn(async move {
                let permit = sem
                    .acquire_owned()
                    .await
                    .expect("the global semaphore is never closed");
                (id, permit)
            });
        }
    }

    async fn wait_for_something(&mut self) -> Result<()> {
        let wake = if self.stopping || self.state.phase != Phase::Running {
            None
        } else {
            self.state.next_retry_ms()
        };
        let sleep_until = wake.map(|ms| self.inner.clock.instant_at(ms));
        tokio::select! {
            biased;
            _ = self.inner.shutdown.cancelled(), if !self.stopping => {}
            Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                let finished = match done {
                    Ok((id, f)) => { self.task_ids.remove(&id); f }
                    Err(e) => {
                        let (step, attempt) = self.task_ids.remove(&e.id()).expect("every step task is known");
                        let message = if e.is_panic() { "step panicked".to_owned() } else { "step task was aborted".to_owned() };
                        Finished { step, attempt, result: Err(StepError::permanent(message)), extension: None, warnings: Vec::new(), timed_out_by_deadline: false }
                    }
                };
                self.finish(finished).await?;
            }
            Some(granted) = self.permits.join_next(), if !self.permits.is_empty() => {
                if let Ok((step, permit)) = granted {
                    self.acquiring.remove(&step);
                    self.start(step, permit).await?;
                }
            }
            Some(msg) = self.step_rx.recv() => {
                let StepMsg::Checkpoint { step, checkpoint, ack } = msg;
                let result = if self.running.contains_key(&step) && self.state.phase == Phase::Running {
                    self.append(vec![Event::StepProgress { step, checkpoint }]).await.map_err(|e| e.to_string())
                } else {
                    Err("step is no longer running".to_owned())
                };
                let _ = ack.send(result);
            }
            Some(cmd) = self.commands.recv() => {
                let Command::Cancel { reason, reply } = cmd;
                let result = if self.state.phase == Phase::Running {
                    if self.state.cancel_requested.is_none() {
                        self.append(vec![Event::CancelRequested { reason }]).await
                    } else {
                        Ok(())
                    }
                } else if self.state.phase.is_terminal() {
                    Err(Error::AlreadyFinished { run: self.run, phase: self.state.phase.as_str().to_owned() })
                } else {
                    Ok(()) // already compensating
                };
                let _ = reply.send(result);
            }
            _ = async { tokio::time::sleep_until(sleep_until.expect("guarded")).await }, if sleep_until.is_some() => {}
        }
        Ok(())
    }

    async fn start(&mut self, id: StepId, permit: OwnedSemaphorePermit) -> Result<()> {
        let now = self.inner.clock.now_ms();
        if self.stopping
            || self.stop_reason().is_some()
            || !self.state.ready_steps(now).contains(&id)
        {
            return Ok(());
        }
        let s = &self.state.steps[&id];
        let attempt = s.attempts + 1;
        let deadline_ms = s.deadline_ms.or(s.decl.deadline_ms.map(|d| now + d));
        let step = self.step_type(&s.decl.kind)?;
        let input = s.decl.input.clone();
        let checkpoint = s.checkpoint.clone();
        let attempt_timeout = s.decl.attempt_timeout_ms;
        failpoint("step.start.before");
        self.append(vec![Event::StepStarted {
            step: id.clone(),
            attempt,
            deadline_ms,
        }])
        .await?;
        failpoint("step.start.after");
        info!(step.name = %id, step.attempt = attempt, "step started");

        let cancel = CancellationToken::new();
        let ctx = StepCtx {
            run: self.run,
            step: id.clone(),
            attempt,
            deadline_ms,
            cancel: cancel.clone(),
            checkpoint,
            spec: self.state.spec.clone(),
            outputs: Arc::new(self.state.outputs()),
            store: self.inner.store.clone(),
            tx: self.step_tx.clone(),
            extension: Mutex::new(None),
            warnings: Mutex::new(Vec::new()),
            checkpoint_interval: self.inner.opts.checkpoint_interval,
            last_checkpoint: Mutex::new(None),
        };
        // The attempt ends at its own timeout or the step's deadline, whichever is first.
        let until_deadline = deadline_ms.map(|d| d.saturating_sub(now));
        let limit = match (attempt_timeout, until_deadline) {
            (Some(a), Some(d)) => Some((a.min(d), d <= a)),
            (Some(a), None) => Some((a, false)),
            (None, Some(d)) => Some((d, true)),
            (None, None) => None,
        };
        let grace = self.inner.opts.drain_grace;
        let span = info_span!("step", step.name = %id, step.attempt = attempt);
        let step_id = id.clone();
        let handle = self.tasks.spawn(
            self.inner.step_tasks.track_future(
                async move {
                    let _permit = permit;
                    let run = step.run_json(&ctx, &input);
                    let bounded = async {
                        match limit {
                            Some((ms, by_deadline)) => {
                                match tokio::time::timeout(Duration::from_millis(ms), run).await {
                                    Ok(r) => (r, false),
                                    Err(_) if by_deadline => (
                                        Err(StepError::permanent(format!(
                                            "deadline exceeded after {ms} ms"
                                        ))),
                                        true,
                                    ),
                                    Err(_) => (
                                        Err(StepError::retryable(format!(
                                            "attempt timed out after {ms} ms"
                                        ))),
                                        false,
                                    ),
                                }
                            }
                            None => (run.await, false),
                        }
                    };
                    let drained = async {
                        ctx.cancel.cancelled().await;
                        tokio::time::sleep(grace).await;
                    };
                    let (result, timed_out_by_deadline) = tokio::select! {
                        r = bounded => r,
                        _ = drained => (Err(StepError::cancelled()), false),
                    };
                    let extension = ctx.extension.lock().expect("extension lock").take();
                    let warnings =
                        std::mem::take(&mut *ctx.warnings.lock().expect("warnings lock"));
                    Finished {
                        step: step_id,
                        attempt,
                        result,
                        extension,
                        warnings,
                        timed_out_by_deadline,
                    }
                }
                .instrument(span),
            ),
        );
        self.task_ids.insert(handle.id(), (id.clone(), attempt));
        self.running.insert(id, RunningStep { attempt, cancel });
        Ok(())
    }

    async fn finish(&mut self, f: Finished) -> Result<()> {
        let Some(running) = self.running.remove(&f.step) else {
            return Ok(());
        };
        debug_assert_eq!(running.attempt, f.attempt);
        let was_cancelled = running.cancel.is_cancelled();
        let step = f.step.clone();
        let attempt = f.attempt;
        match f.result {
            Ok(output) => {
                let mut events = Vec::new();
                if let Some((steps, add_deps)) = f.extension {
                    let ext = Event::PlanExtended {
                        by: step.clone(),
                        steps,
                        add_deps,
                    };
                    let decls = match &ext {
                        Event::PlanExtended { steps, .. } => steps.clone(),
                        _ => unreachable!(),
                    };
                    let mut probe = self.state.clone();
                    let valid = self.check_extension(&decls).and_then(|_| {
                        let seq = probe.next_seq;
                        probe.apply(seq, 0, &ext).map_err(|n| n.reason)
                    });
                    if let Err(reason) = valid {
                        error!(step.name = %step, %reason, "invalid plan extension");
                        let error = format!("invalid plan extension: {reason}");
                        return self
                            .append(vec![Event::StepFailed {
                                step,
                                attempt,
                                error,
                                retryable: false,
                                retry_at_ms: None,
                            }])
                            .await;
                    }
                    events.push(ext);
                }
                events.push(Event::StepSucceeded {
                    step: step.clone(),
                    output,
                    warnings: f.warnings,
                });
                failpoint("step.succeeded.before");
                self.append(events).await?;
                failpoint("step.succeeded.after");
                info!(step.name = %step, step.attempt = attempt, "step succeeded");
            }
            Err(e) => {
                let stopping_for_shutdown = self.stopping && self.stop_reason().is_none();
                let event = match e.kind.clone() {
                    ErrorKind::Refused(refusals)
                        if self.state.started.iter().all(|s| *s == step) =>
                    {
                        info!(step.name = %step, n = refusals.len(), "run refused");
                        Event::RunRefused {
                            by: step.clone(),
                            refusals,
                        }
                    }
                    ErrorKind::Cancelled
                    | ErrorKind::Retryable
                    | ErrorKind::Permanent
                    | ErrorKind::Refused(_)
                        if was_cancelled && stopping_for_shutdown && !f.timed_out_by_deadline =>
                    {
                        Event::StepSuspended {
                            step: step.clone(),
                            attempt,
                        }
                    }
                    ErrorKind::Cancelled if was_cancelled => Event::StepFailed {
                        step: step.clone(),
                        attempt,
                        error: format!(
                            "stopped: {}",
                            self.stop_reason().unwrap_or_else(|| "cancelled".into())
                        ),
                        retryable: false,
                        retry_at_ms: None,
                    },
                    kind => {
                        let retryable =
                            kind == ErrorKind::Retryable || kind == ErrorKind::Cancelled;
                        let retry_at_ms = if retryable && self.stop_reason().is_none() {
                            self.retry_at(&step, &e)
                        } else {
                            None
                        };
                        warn!(step.name = %step, step.attempt = attempt, error = %e.message, retryable, "step failed");
                        Event::StepFailed {
                            step: step.clone(),
                            attempt,
                            error: e.message.clone(),
                            retryable,
                            retry_at_ms,
                        }
                    }
                };
                self.append(vec![event]).await?;
            }
        }
        Ok(())
    }

    fn check_extension(&self, decls: &[StepDecl]) -> std::result::Result<(), String> {
        check_decls(&self.inner.registry, decls)
    }

    /// The registered step type of `kind`; a recorded kind this binary does
    /// not know is nondeterminism for the run.
    fn step_type(&self, kind: &str) -> Result<Arc<dyn crate::step::DynStep>> {
        self.inner
            .registry
            .get(kind)
            .cloned()
            .ok_or_else(|| Error::Nondeterminism {
                run: self.run,
                seq: self.state.next_seq,
                reason: format!("unknown step kind {kind}"),
            })
    }

    /// When the next attempt of `step` starts, or None when none is allowed.
    fn retry_at(&self, step: &StepId, e: &StepError) -> Option<u64> {
        let s = &self.state.steps[step];
        let failed = s.attempts + 1;
        if failed >= s.decl.max_attempts {
            return None;
        }
        let mut delay = self.inner.opts.retry.delay(failed);
        if let Some(min) = e.retry_after {
            delay = delay.max(min);
        }
        let at = self.inner.clock.now_ms() + delay.as_millis() as u64;
        match s.deadline_ms {
            Some(d) if at >= d => None,
            _ => Some(at),
        }
    }

    /// Compensates one step (one try). Returns false if shutdown interrupted it.
    async fn compensate(&mut self, id: StepId) -> Result<bool> {
        let s = self.state.steps[&id].clone();
        let step = self.step_type(&s.decl.kind)?;
        let ctx = CompensateCtx {
            run: self.run,
            step: id.clone(),
            spec: self.state.spec.clone(),
            checkpoint: s.checkpoint.clone(),
            outputs: Arc::new(self.state.outputs()),
            store: self.inner.store.clone(),
        };
        failpoint("compensate.before");
        let work = async {
            match s.decl.attempt_timeout_ms {
                Some(ms) => tokio::time::timeout(
                    Duration::from_millis(ms),
                    step.compensate_json(&ctx, &s.decl.input, s.output.as_ref()),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(StepError::retryable(format!(
                        "compensation timed out after {ms} ms"
                    )))
                }),
                None => {
                    step.compensate_json(&ctx, &s.decl.input, s.output.as_ref())
                        .await
                }
            }
        };
        let result = tokio::select! {
            r = work => r,
            _ = self.inner.shutdown.cancelled() => {
                self.stopping = true;
                return Ok(false);
            }
        };
        match result {
            Ok(()) => {
                self.append(vec![Event::StepCompensated { step: id.clone() }])
                    .await?;
                failpoint("compensate.after");
                info!(step.name = %id, "step compensated");
            }
            Err(e) => {
                let tries = s.compensation_failures + 1;
                let last = !e.is_retryable() || tries >= self.inner.opts.compensation_attempts;
                warn!(step.name = %id, error = %e.message, last, "compensation failed");
                self.append(vec![Event::CompensationFailed {
                    step: id,
                    error: e.message.clone(),
                    last,
                }])
                .await?;
                if !last {
                    let delay = self.inner.opts.retry.delay(tries);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.inner.shutdown.cancelled() => { self.stopping = true; return Ok(false); }
                    }
                }
            }
        }
        Ok(true)
    }
}

/// Writes a run's log as JSON Lines: one envelope a line, the event in
/// readable JSON with every step-defined payload passed through `redact`
/// (which must remove Secret data). Returns the lines written.
pub fn export_run(
    store: &Store,
    run: RunId,
    out: &mut dyn std::io::Write,
    redact: &dyn Fn(serde_json::Value) -> serde_json::Value,
) -> Result<u64> {
    let render = |bytes: &[u8]| match Event::decode(bytes) {
        Ok(event) => event.to_export_json(redact),
        Err(e) => serde_json::json!({ "undecodable": e.to_string() }),
    };
    Ok(store.export_jsonl(run, out, &render)?)
}

//! The state of a run: a pure fold over its events.
//!
//! `RunState::apply` is the only thing that decides what a run's state is;
//! replay and live execution use it alike. It reads no clock (time comes from
//! the envelope), draws no random numbers and does no I/O. It also defines
//! which events are legal in which phase: an illegal one is a
//! [`Nondeterminism`] error for that run.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Json, Refusal, StepDecl, StepId};

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// No event yet.
    New,
    /// Steps are running or due.
    Running,
    /// Rolling back what started.
    Compensating,
    /// Every step succeeded.
    Succeeded,
    /// The goal was reached with warnings (no rollback).
    SucceededWithWarnings,
    /// Refused before writing anything.
    Refused,
    /// Compensation undid every started step.
    RolledBack,
    /// Compensation itself failed; something is left.
    Failed,
}

impl Phase {
    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded
                | Phase::SucceededWithWarnings
                | Phase::Refused
                | Phase::RolledBack
                | Phase::Failed
        )
    }

    /// The phase's name as shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::New => "New",
            Phase::Running => "Running",
            Phase::Compensating => "Compensating",
            Phase::Succeeded => "Succeeded",
            Phase::SucceededWithWarnings => "SucceededWithWarnings",
            Phase::Refused => "Refused",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one step stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepStatus {
    /// Not started yet.
    Pending,
    /// An attempt is under way (its `StepStarted` is durable).
    Running {
        /// The attempt.
        attempt: u32,
    },
    /// Waiting to be started again at `retry_at_ms`.
    Waiting {
        /// When the next attempt may start (unix ms).
        retry_at_ms: u64,
    },
    /// Finished; output recorded.
    Succeeded,
    /// Failed permanently.
    Failed {
        /// The last error.
        error: String,
    },
    /// Rolled back.
    Compensated,
    /// Its compensation failed for good.
    CompensationFailed {
        /// The last error.
        error: String,
    },
}

/// The state of one step instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// The plan's declaration.
    pub decl: StepDecl,
    /// Current status.
    pub status: StepStatus,
    /// Attempts used up (failed or interrupted; suspended ones do not count).
    pub attempts: u32,
    /// Position in the order of first starts, if it ever started.
    pub start_order: Option<usize>,
    /// Absolute deadline fixed at the first start.
    pub deadline_ms: Option<u64>,
    /// Unix ms of the first start.
    pub first_started_ms: Option<u64>,
    /// Unix ms when it finished (succeeded or failed for good).
    pub finished_ms: Option<u64>,
    /// The recorded output.
    pub output: Option<Json>,
    /// The last checkpoint.
    pub checkpoint: Option<Json>,
    /// The last error seen.
    pub last_error: Option<String>,
    /// Compensation failures so far.
    pub compensation_failures: u32,
}

impl StepState {
    fn new(decl: StepDecl) -> Self {
        StepState {
            decl,
            status: StepStatus::Pending,
            attempts: 0,
            start_order: None,
            deadline_ms: None,
            first_started_ms: None,
            finished_ms: None,
            output: None,
            checkpoint: None,
            last_error: None,
            compensation_failures: 0,
        }
    }

    /// Whether dependents may start: succeeded, or a non-critical failure
    /// (a cleanup failure must not block what comes after it).
    pub fn satisfies_dependents(&self) -> bool {
        match &self.status {
            StepStatus::Succeeded => true,
            StepStatus::Failed { .. } => !self.decl.critical,
            _ => false,
        }
    }

    /// Whether compensation still has to visit this step.
    pub fn needs_compensation(&self) -> bool {
        self.start_order.is_some()
            && !matches!(
                self.status,
                StepStatus::Compensated | StepStatus::CompensationFailed { .. }
            )
    }
}

/// A log the code cannot replay: an event illegal in the state it finds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("nondeterminism at seq {seq}: {reason}")]
pub struct Nondeterminism {
    /// The offending event's seq.
    pub seq: u64,
    /// What was illegal.
    pub reason: String,
}

/// The folded state of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Unique run name.
    pub name: String,
    /// Workflow kind.
    pub workflow: String,
    /// The spec.
    pub spec: Json,
    /// Current phase.
    pub phase: Phase,
    /// Steps by id.
    pub steps: BTreeMap<StepId, StepState>,
    /// Step ids in plan order.
    pub plan_order: Vec<StepId>,
    /// Step ids in order of first start.
    pub started: Vec<StepId>,
    /// A user asked to cancel.
    pub cancel_requested: Option<String>,
    /// Why compensation started.
    pub compensation_reason: Option<String>,
    /// Warnings collected from steps and non-critical failures.
    pub warnings: Vec<String>,
    /// Refusals, when refused.
    pub refusals: Vec<Refusal>,
    /// Steps whose leftovers remain (phase Failed).
    pub left: Vec<String>,
    /// Seq the next event gets.
    pub next_seq: u64,
    /// Unix ms of the first event.
    pub created_ms: u64,
    /// Unix ms of the last event.
    pub updated_ms: u64,
    /// Steps that have already extended the plan.
    pub extended_by: Vec<StepId>,
}

impl Default for RunState {
    fn default() -> Self {
        RunState {
            name: String::new(),
            workflow: String::new(),
            spec: Json::null(),
            phase: Phase::New,
            steps: BTreeMap::new(),
            plan_order: Vec::new(),
            started: Vec::new(),
            cancel_requested: None,
            compensation_reason: None,
            warnings: Vec::new(),
            refusals: Vec::new(),
            left: Vec::new(),
            next_seq: 0,
            created_ms: 0,
            updated_ms: 0,
            extended_by: Vec::new(),
        }
    }
}

type Fold<T = ()> = Result<T, String>;

impl RunState {
    /// Folds one event (recorded at `seq`, `at_ms`) into the state.
    pub fn apply(&mut self, seq: u64, at_ms: u64, event: &Event) -> Result<(), Nondeterminism> {
        if seq != self.next_seq {
            return Err(Nondeterminism {
                seq,
                reason: format!("expected seq {}, found {seq}", self.next_seq),
            });
        }
        self.apply_inner(at_ms, event)
            .map_err(|reason| Nondeterminism {
                seq,
                reason: format!("{}: {reason}", event.name()),
            })?;
        if seq == 0 {
            self.created_ms = at_ms;
        }
        self.updated_ms = at_ms;
        self.next_seq += 1;
        Ok(())
    }

    /// The step, or a fold error naming it.
    fn step_mut(&mut self, id: &StepId) -> Fold<&mut StepState> {
        self.steps
            .get_mut(id)
            .ok_or_else(|| format!("unknown step {id}"))
    }

    fn require_phase(&self, allowed: &[Phase]) -> Fold {
        if allowed.contains(&self.phase) {
            Ok(())
        } else {
            Err(format!("not legal in phase {}", self.phase))
        }
    }

    fn add_steps(&mut self, decls: &[StepDecl]) -> Fold {
        for decl in decls {
            if self.steps.contains_key(&decl.id) {
                return Err(format!("step {} declared twice", decl.id));
            }
            if decl.max_attempts == 0 {
                return Err(format!("step {} allows no attempt", decl.id));
            }
            self.steps
                .insert(decl.id.clone(), StepState::new(decl.clone()));
            self.plan_order.push(decl.id.clone());
        }
        for decl in decls {
            for dep in &decl.deps {
                if !self.steps.contains_key(dep) {
                    return Err(format!("step {} depends on unknown step {dep}", decl.id));
                }
            }
        }
        self.check_acyclic()
    }

    fn check_acyclic(&self) -> Fold {
        // Kahn's algorithm over the whole plan, O(steps + dependencies).
        let mut indegree: BTreeMap<&StepId, usize> = BTreeMap::new();
        let mut dependents: BTreeMap<&StepId, Vec<&StepId>> = BTreeMap::new();
        for (id, s) in &self.steps {
            indegree.insert(id, s.decl.deps.len());
            for dep in &s.decl.deps {
                dependents.entry(dep).or_default().push(id);
            }
        }
        let mut ready: Vec<&StepId> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(id, _)| *id)
            .collect();
        let mut seen = 0;
        while let Some(id) = ready.pop() {
            seen += 1;
            for other in dependents.get(id).into_iter().flatten() {
                let d = indegree.get_mut(other).expect("every step has an indegree");
                *d -= 1;
                if *d == 0 {
                    ready.push(other);
                }
            }
        }
        if seen == self.steps.len() {
            Ok(())
        } else {
            Err("the plan has a dependency cycle".to_owned())
        }
    }

    fn deps_satisfied(&self, id: &StepId) -> bool {
        self.steps[id].decl.deps.iter().all(|d| {
            self.steps
                .get(d)
                .is_some_and(StepState::satisfies_dependents)
        })
    }

    fn apply_inner(&mut self, at_ms: u64, event: &Event) -> Fold {
        match event {
            Event::RunSubmitted {
                name,
                workflow,
                spec,
            } => {
                self.require_phase(&[Phase::New])?;
                self.name = name.clone();
                self.workflow = workflow.clone();
                self.spec = spec.clone();
                self.phase = Phase::Running;
            }
            Event::Planned { steps } => {
                self.require_phase(&[Phase::Running])?;
                if !self.steps.is_empty() {
                    return Err("planned twice".to_owned());
                }
                self.add_steps(steps)?;
            }
            Event::PlanExtended {
                by,
                steps,
                add_deps,
            } => {
                self.require_phase(&[Phase::Running])?;
                if !matches!(self.step_mut(by)?.status, StepStatus::Running { .. }) {
                    return Err(format!("step {by} extends the plan but is not running"));
                }
                if self.extended_by.contains(by) {
                    return Err(format!("step {by} extended the plan twice"));
                }
                self.extended_by.push(by.clone());
                self.add_steps(steps)?;
                for (existing, dep) in add_deps {
                    if !self.steps.contains_key(dep) {
                        return Err(format!("added dependency on unknown step {dep}"));
                    }
                    let s = self.step_mut(existing)?;
                    if s.status != StepStatus::Pending {
                        return Err(format!(
                            "added dependency to step {existing}, which already started"
                        ));
                    }
                    if !s.decl.deps.contains(dep) {
                        s.decl.deps.push(dep.clone());
                    }
                }
                self.check_acyclic()?;
            }
            Event::StepStarted {
                step,
                attempt,
                deadline_ms,
            } => {
                self.require_phase(&[Phase::Running])?;
                if self.cancel_requested.is_some() {
                    return Err(format!("step {step} started after cancel was requested"));
                }
                if !self.deps_satisfied(step) {
                    return Err(format!(
                        "step {step} started before its dependencies finished"
                    ));
                }
                let order = self.started.len();
                let s = self.step_mut(step)?;
                match s.status {
                    StepStatus::Pending | StepStatus::Waiting { .. } => {}
                    _ => return Err(format!("step {step} started while {:?}", s.status)),
                }
                if *attempt != s.attempts + 1 {
                    return Err(format!(
                        "step {step} started attempt {attempt}, expected {}",
                        s.attempts + 1
                    ));
                }
                if s.attempts >= s.decl.max_attempts {
                    return Err(format!("step {step} started beyond its attempt limit"));
                }
                match s.deadline_ms {
                    None => s.deadline_ms = *deadline_ms,
                    Some(d) if Some(d) != *deadline_ms => {
                        return Err(format!("step {step} changed its deadline"));
                    }
                    Some(_) => {}
                }
                s.status = StepStatus::Running { attempt: *attempt };
                let first = s.start_order.is_none();
                if first {
                    s.start_order = Some(order);
                    s.first_started_ms = Some(at_ms);
                    self.started.push(step.clone());
                }
            }
            Event::StepProgress { step, checkpoint } => {
                self.require_phase(&[Phase::Running])?;
                let s = self.step_mut(step)?;
                if !matches!(s.status, StepStatus::Running { .. }) {
                    return Err(format!("progress of step {step}, which is not running"));
                }
                s.checkpoint = Some(checkpoint.clone());
            }
            Event::StepSucceeded {
                step,
                output,
                warnings,
            } => {
                self.require_phase(&[Phase::Running])?;
                let s = self.step_mut(step)?;
                if !matches!(s.status, StepStatus::Running { .. }) {
                    return Err(format!("step {step} succeeded but was not running"));
                }
                s.status = StepStatus::Succeeded;
                s.output = Some(output.clone());
                s.finished_ms = Some(at_ms);
                self.warnings
                    .extend(warnings.iter().map(|w| format!("{step}: {w}")));
            }
            Event::StepFailed {
                step,
                attempt,
                error,
                retryable: _,
                retry_at_ms,
            } => {
                self.require_phase(&[Phase::Running])?;
                let s = self.step_mut(step)?;
                match s.status {
                    StepStatus::Running { attempt: a } if a == *attempt => {}
                    _ => {
                        return Err(format!(
                            "step {step} attempt {attempt} failed but was not running"
                        ));
                    }
                }
                s.attempts += 1;
                s.last_error = Some(error.clone());
                match retry_at_ms {
                    Some(at) if s.attempts < s.decl.max_attempts => {
                        s.status = StepStatus::Waiting { retry_at_ms: *at };
                    }
                    Some(_) => {
                        return Err(format!(
                            "step {step} scheduled a retry beyond its attempt limit"
                        ));
                    }
                    None => {
                        s.status = StepStatus::Failed {
                            error: error.clone(),
                        };
                        s.finished_ms = Some(at_ms);
                        if !s.decl.critical {
                            let w = format!("{step} failed: {error}");
                            self.warnings.push(w);
                        }
                    }
                }
            }
            Event::StepInterrupted { step, attempt } => {
                self.require_phase(&[Phase::Running, Phase::Compensating])?;
                let compensating = self.phase == Phase::Compensating;
                let s = self.step_mut(step)?;
                match s.status {
                    StepStatus::Running { attempt: a } if a == *attempt => {}
                    _ => return Err(format!("step {step} interrupted but was not running")),
                }
                s.attempts += 1;
                let error = format!("attempt {attempt} interrupted (process stopped)");
                s.last_error = Some(error.clone());
                let deadline_passed = s.deadline_ms.is_some_and(|d| at_ms >= d);
                if compensating || s.attempts >= s.decl.max_attempts || deadline_passed {
                    s.status = StepStatus::Failed {
                        error: error.clone(),
                    };
                    s.finished_ms = Some(at_ms);
                    if !s.decl.critical && !compensating {
                        self.warnings.push(format!("{step} failed: {error}"));
                    }
                } else {
                    s.status = StepStatus::Waiting { retry_at_ms: at_ms };
                }
            }
            Event::StepSuspended { step, attempt } => {
                self.require_phase(&[Phase::Running])?;
                let s = self.step_mut(step)?;
                match s.status {
                    StepStatus::Running { attempt: a } if a == *attempt => {}
                    _ => return Err(format!("step {step} suspended but was not running")),
                }
                s.status = StepStatus::Waiting { retry_at_ms: at_ms };
            }
            Event::RunRefused { by, refusals } => {
                self.require_phase(&[Phase::Running])?;
                if !matches!(self.step_mut(by)?.status, StepStatus::Running { .. }) {
                    return Err(format!("step {by} refused the run but is not running"));
                }
                if self.started.iter().any(|s| s != by) {
                    return Err("refused after other steps had started".to_owned());
                }
                if refusals.is_empty() {
                    return Err("refused with no reason".to_owned());
                }
                let s = self.step_mut(by)?;
                s.status = StepStatus::Failed {
                    error: "refused".to_owned(),
                };
                s.finished_ms = Some(at_ms);
                self.refusals = refusals.clone();
                self.phase = Phase::Refused;
            }
            Event::CancelRequested { reason } => {
                self.require_phase(&[Phase::Running])?;
                if self.cancel_requested.is_none() {
                    self.cancel_requested = Some(reason.clone());
                }
            }
            Event::CompensationStarted { reason } => {
                self.require_phase(&[Phase::Running])?;
                if let Some(id) = self
                    .steps
                    .iter()
                    .find(|(_, s)| matches!(s.status, StepStatus::Running { .. }))
                    .map(|(id, _)| id)
                {
                    return Err(format!(
                        "compensation started while step {id} was still running"
                    ));
                }
                self.compensation_reason = Some(reason.clone());
                self.phase = Phase::Compensating;
            }
            Event::StepCompensated { step } => {
                self.require_phase(&[Phase::Compensating])?;
                let s = self.step_mut(step)?;
                if !s.needs_compensation() {
                    return Err(format!(
                        "step {step} compensated but never started or already done"
                    ));
                }
                s.status = StepStatus::Compensated;
            }
            Event::CompensationFailed { step, error, last } => {
                self.require_phase(&[Phase::Compensating])?;
                let s = self.step_mut(step)?;
                if !s.needs_compensation() {
                    return Err(format!(
                        "compensation of step {step} failed but it needs none"
                    ));
                }
                s.compensation_failures += 1;
                s.last_error = Some(error.clone());
                if *last {
                    s.status = StepStatus::CompensationFailed {
                        error: error.clone(),
                    };
                }
            }
            Event::RunSucceeded | Event::RunSucceededWithWarnings { .. } => {
                self.require_phase(&[Phase::Running])?;
                if let Some((id, _)) = self.steps.iter().find(|(_, s)| !s.satisfies_dependents()) {
                    return Err(format!("run succeeded while step {id} had not"));
                }
                if self.cancel_requested.is_some() {
                    return Err("run succeeded after cancel was requested".to_owned());
                }
                self.phase = match event {
                    Event::RunSucceededWithWarnings { warnings } => {
                        for w in warnings {
                            if !self.warnings.contains(w) {
                                self.warnings.push(w.clone());
                            }
                        }
                        Phase::SucceededWithWarnings
                    }
                    _ => Phase::Succeeded,
                };
            }
            Event::RunRolledBack => {
                self.require_phase(&[Phase::Compensating])?;
                if let Some((id, s)) = self
                    .steps
                    .iter()
                    .find(|(_, s)| s.start_order.is_some() && s.status != StepStatus::Compensated)
                {
                    return Err(format!("rolled back while step {id} is {:?}", s.status));
                }
                self.phase = Phase::RolledBack;
            }
            Event::RunFailed { reason: _, left } => {
                self.require_phase(&[Phase::Compensating])?;
                if let Some((id, _)) = self.steps.iter().find(|(_, s)| s.needs_compensation()) {
                    return Err(format!(
                        "run failed while step {id} still awaits compensation"
                    ));
                }
                self.left = left.clone();
                self.phase = Phase::Failed;
            }
        }
        Ok(())
    }

    /// Replays a whole log from `(seq, at_ms, event)` triples.
    pub fn replay<'a>(
        events: impl IntoIterator<Item = (u64, u64, &'a Event)>,
    ) -> Result<RunState, Nondeterminism> {
        let mut state = RunState::default();
        for (seq, at, event) in events {
            state.apply(seq, at, event)?;
        }
        Ok(state)
    }

    /// The step currently running, or the last one started (for the index).
    pub fn current_step(&self) -> Option<StepId> {
        self.started
            .iter()
            .rev()
            .find(|id| matches!(self.steps[*id].status, StepStatus::Running { .. }))
            .or_else(|| self.started.last())
            .cloned()
    }

    /// Steps ready to start at `now_ms`, in plan order.
    pub fn ready_steps(&self, now_ms: u64) -> Vec<StepId> {
        if self.phase != Phase::Running
            || self.cancel_requested.is_some()
            || self.critical_failure().is_some()
        {
            return Vec::new();
        }
        self.plan_order
            .iter()
            .filter(|id| {
                let s = &self.steps[*id];
                let due = match s.status {
                    StepStatus::Pending => true,
                    StepStatus::Waiting { retry_at_ms } => retry_at_ms <= now_ms,
                    _ => false,
                };
                due && self.deps_satisfied(id)
            })
            .cloned()
            .collect()
    }

    /// The earliest retry time among waiting steps.
    pub fn next_retry_ms(&self) -> Option<u64> {
        self.steps
            .values()
            .filter_map(|s| match s.status {
                StepStatus::Waiting { retry_at_ms } => Some(retry_at_ms),
                _ => None,
            })
            .min()
    }

    /// Steps with an attempt under way.
    pub fn running_steps(&self) -> Vec<(StepId, u32)> {
        self.steps
            .iter()
            .filter_map(|(id, s)| match s.status {
                StepStatus::Running { attempt } => Some((id.clone(), attempt)),
                _ => None,
            })
            .collect()
    }

    /// The first critical step that failed for good, if any.
    pub fn critical_failure(&self) -> Option<(&StepId, &str)> {
        self.plan_order.iter().find_map(|id| {
            let s = &self.steps[id];
            match &s.status {
                StepStatus::Failed { error } if s.decl.critical => Some((id, error.as_str())),
                _ => None,
            }
        })
    }

    /// Whether every step is done (succeeded, or failed non-critically).
    pub fn all_done(&self) -> bool {
        self.steps.values().all(StepState::satisfies_dependents)
    }

    /// The next step to compensate: reverse order of first start.
    pub fn next_compensation(&self) -> Option<StepId> {
        self.started
            .iter()
            .rev()
            .find(|id| self.steps[*id].needs_compensation())
            .cloned()
    }

    /// Outputs recorded so far, by step.
    pub fn outputs(&self) -> BTreeMap<StepId, Json> {
        self.steps
            .iter()
            .filter_map(|(id, s)| s.output.clone().map(|o| (id.clone(), o)))
            .collect()
    }
}

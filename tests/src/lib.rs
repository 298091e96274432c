//! Helpers shared by the cross-crate suites in `tests/tests/`: a test
//! workflow whose steps record what they do in a *world* directory, so a
//! test can check, even across killed processes, which side effects ran,
//! how often and in what order.
//!
//! # Layout
//! - [`World`]: an append-only record of step runs and compensations, kept
//!   in files so a child process killed with SIGKILL leaves it readable.
//! - [`Work`]: the one step type of the test workflow; its input says how
//!   it behaves (fail N times, fail for good, refuse, sleep, checkpoint,
//!   extend the plan, fail its compensation …).
//! - [`open`]: opens a store and an engine over a state dir the way the
//!   daemon will.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_engine::{
    CompensateCtx, Engine, EngineOptions, Json, Refusal, Registry, Step, StepCtx, StepDecl,
    StepError, Submission,
};
use ferry_store::{Key32, Store, StoreOptions};
use serde::{Deserialize, Serialize};

/// What the test steps did, in files under one directory.
#[derive(Clone, Debug)]
pub struct World {
    dir: PathBuf,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// One line of the world's journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `run`, `done` or `compensate`.
    pub what: String,
    /// The run's short id.
    pub run: String,
    /// The step id.
    pub step: String,
    /// The attempt (0 for compensations).
    pub attempt: u32,
}

impl World {
    /// A world in `dir` (created).
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("world dir");
        World {
            dir: dir.to_owned(),
            running: Arc::default(),
            peak: Arc::default(),
        }
    }

    fn record(&self, what: &str, run: &str, step: &str, attempt: u32) {
        let line = serde_json::to_string(&Record {
            what: what.into(),
            run: run.into(),
            step: step.into(),
            attempt,
        })
        .expect("record encodes");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("journal"))
            .expect("journal opens");
        // One write per line, O_APPEND: lines never interleave.
        f.write_all(format!("{line}\n").as_bytes())
            .expect("journal write");
        f.sync_data().expect("journal sync");
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<Record> {
        std::fs::read_to_string(self.dir.join("journal"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("journal line"))
            .collect()
    }

    /// Records of one kind for one run.
    pub fn of(&self, what: &str, run: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.what == what && r.run == run)
            .collect()
    }

    /// The most steps seen running at once in this process.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// The marker file a step creates (its idempotent side effect).
    pub fn marker(&self, run: &str, step: &str) -> PathBuf {
        self.dir
            .join(format!("made-{run}-{}", step.replace('/', "_")))
    }
}

/// How a [`Work`] step behaves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkInput {
    /// Fail with a retryable error on the first N attempts.
    pub fail_times: u32,
    /// Fail with a permanent error.
    pub permanent: bool,
    /// Refuse the run (first step only).
    pub refuse: bool,
    /// Sleep this long (tokio time) during the run, honouring cancellation.
    pub sleep_ms: u64,
    /// Wait until cancelled (then return Cancelled).
    pub wait_for_cancel: bool,
    /// Save this many checkpoints (forced), counting up from the last one.
    pub checkpoints: u32,
    /// Extend the plan with Work steps of these ids (they depend on this step).
    pub extend: Vec<String>,
    /// Steps already in the plan that must also wait for the new ones.
    pub extend_blocks: Vec<String>,
    /// Fail compensation (retryable) this many times.
    pub comp_fail_times: u32,
    /// Fail compensation for good.
    pub comp_permanent: bool,
    /// Report a warning on success.
    pub warn: Option<String>,
    /// Crash point name to hit inside the run (see ferry_engine::failpoint).
    pub failpoint: Option<String>,
    /// Offer this many checkpoints 1 ms apart, leaving the rate limit to the engine.
    pub rapid_checkpoints: u32,
}

/// The output of a [`Work`] step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkOutput {
    /// The step id.
    pub step: String,
    /// The attempt that succeeded.
    pub attempt: u32,
    /// The last checkpoint seen at start.
    pub resumed_from: Option<u32>,
}

/// The test workflow's step type.
pub struct Work {
    /// Where it records what it does.
    pub world: World,
}

impl Step for Work {
    type Input = WorkInput;
    type Output = WorkOutput;

    fn kind(&self) -> &'static str {
        "work"
    }

    async fn run(&self, ctx: &StepCtx, input: WorkInput) -> Result<WorkOutput, StepError> {
        let run = ctx.short();
        let step = ctx.step_id().to_string();
        self.world.record("run", &run, &step, ctx.attempt());
        let now = self.world.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.world.peak.fetch_max(now, Ordering::SeqCst);
        let result = self.body(ctx, &input, &run, &step).await;
        self.world.running.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn compensate(
        &self,
        ctx: &CompensateCtx,
        input: WorkInput,
        _output: Option<WorkOutput>,
    ) -> Result<(), StepError> {
        let run = ctx.short();
        let step = ctx.step_id().to_string();
        let tries = self
            .world
            .of("compensate-try", &run)
            .iter()
            .filter(|r| r.step == step)
            .count() as u32;
        self.world.record("compensate-try", &run, &step, 0);
        if input.comp_permanent {
            return Err(StepError::permanent("compensation cannot undo this"));
        }
        if tries < input.comp_fail_times {
            return Err(StepError::retryable("compensation hit a transient error"));
        }
        // Idempotent: remove the marker if present.
        let _ = std::fs::remove_file(self.world.marker(&run, &step));
        self.world.record("compensate", &run, &step, 0);
        Ok(())
    }
}

impl Work {
    async fn body(
        &self,
        ctx: &StepCtx,
        input: &WorkInput,
        run: &str,
        step: &str,
    ) -> Result<WorkOutput, StepError> {
        let resumed_from: Option<u32> = ctx.checkpoint();
        if input.refuse {
            return Err(StepError::refused(vec![
                Refusal {
                    object: format!("Thing {step}"),
                    rule: "things must not be refused".into(),
                    fix: "do not refuse".into(),
                },
                Refusal {
                    object: "Other thing".into(),
                    rule: "second rule".into(),
                    fix: "second fix".into(),
                },
            ]));
        }
        if let Some(point) = &input.failpoint {
            ferry_engine::failpoint(point);
        }
        let start = resumed_from.unwrap_or(0);
        for i in start..input.checkpoints {
            ctx.save_checkpoint(&(i + 1), true).await?;
            if let Some(point) = &input.failpoint {
                ferry_engine::failpoint(&format!("{point}.checkpoint"));
            }
        }
        for i in 0..input.rapid_checkpoints {
            ctx.save_checkpoint(&(i + 1), false).await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if input.sleep_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(input.sleep_ms)) => {}
                _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
            }
        }
        if input.wait_for_cancel {
            ctx.cancellation().cancelled().await;
            return Err(StepError::cancelled());
        }
        if ctx.attempt() <= input.fail_times {
            return Err(StepError::retryable(format!(
                "transient failure on attempt {}",
                ctx.attempt()
            )));
        }
        if input.permanent {
            return Err(StepError::permanent("this step cannot succeed"));
        }
        // The side effect: create-if-absent, so a re-run is harmless.
        let marker = self.world.marker(run, step);
        if !marker.exists() {
            std::fs::write(&marker, b"made").map_err(|e| StepError::retryable(e.to_string()))?;
        }
        if !input.extend.is_empty() {
            let steps = input
                .extend
                .iter()
                .map(|id| work(id, WorkInput::default()).after(&[step]))
                .collect();
            let blocks = input
                .extend_blocks
                .iter()
                .flat_map(|b| {
                    input
                        .extend
                        .iter()
                        .map(move |id| (b.as_str().into(), id.as_str().into()))
                })
                .collect();
            ctx.extend_plan(steps, blocks);
        }
        if let Some(w) = &input.warn {
            ctx.warn(w.clone());
        }
        self.world.record("done", run, step, ctx.attempt());
        Ok(WorkOutput {
            step: step.to_owned(),
            attempt: ctx.attempt(),
            resumed_from,
        })
    }
}

/// A [`Work`] step declaration.
pub fn work(id: &str, input: WorkInput) -> StepDecl {
    StepDecl {
        id: id.into(),
        kind: "work".into(),
        version: 1,
        input: Json::encode(&input).expect("input encodes"),
        deps: Vec::new(),
        critical: true,
        max_attempts: 3,
        attempt_timeout_ms: None,
        deadline_ms: None,
    }
}

/// A submission of the test workflow.
pub fn submission(name: &str, plan: Vec<StepDecl>) -> Submission {
    Submission {
        name: name.into(),
        workflow: "test".into(),
        spec: Json::encode(&serde_json::json!({ "name": name })).expect("spec encodes"),
        plan,
    }
}

/// Opens the store in `state` (keys in `keys`) and an engine with the test
/// registry over `world`.
pub fn open(
    state: &Path,
    keys: &Path,
    world: &World,
    opts: EngineOptions,
) -> ferry_store::Result<Engine> {
    let store = Store::open(StoreOptions {
        dir: state.to_owned(),
        mac_key: Key32::load_or_create(&keys.join("audit.key"))?,
        blob_key: Some(Key32::load_or_create(&keys.join("blob.key"))?),
    })?;
    let mut registry = Registry::new();
    registry.register(Work {
        world: world.clone(),
    });
    Ok(Engine::new(store, registry, opts))
}

/// Engine options for tests: quick retries.
pub fn fast_options() -> EngineOptions {
    EngineOptions {
        retry: ferry_engine::RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
        },
        checkpoint_interval: Duration::from_millis(10),
        drain_grace: Duration::from_secs(5),
        ..EngineOptions::default()
    }
}

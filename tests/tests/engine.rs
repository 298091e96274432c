//! Engine behaviour against real sled in a temp dir: retries, timeouts,
//! deadlines, cancel, compensation, refusal, warnings, shutdown, crash and
//! resume, concurrency limits, checkpoints, nondeterminism.

use std::time::Duration;

use ferry_engine::{Engine, EngineOptions, Error, Event, Phase, StepStatus};
use ferry_store::RunId;
use ferry_tests::{WorkInput, World, fast_options, open, submission, work};
use tempfile::TempDir;

struct Env {
    _tmp: TempDir,
    state: std::path::PathBuf,
    keys: std::path::PathBuf,
    world: World,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let keys = tmp.path().join("keys");
        let world = World::new(&tmp.path().join("world"));
        Env {
            _tmp: tmp,
            state,
            keys,
            world,
        }
    }
    fn engine(&self, opts: EngineOptions) -> Engine {
        open(&self.state, &self.keys, &self.world, opts).unwrap()
    }
}

fn events(engine: &Engine, run: RunId) -> Vec<Event> {
    engine
        .store()
        .read(run, 0)
        .unwrap()
        .iter()
        .map(|e| Event::decode(&e.event).unwrap())
        .collect()
}

fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::name).collect()
}

fn input(f: impl FnOnce(&mut WorkInput)) -> WorkInput {
    let mut i = WorkInput::default();
    f(&mut i);
    i
}

#[tokio::test]
async fn a_dag_with_a_plan_extension_succeeds_and_verifies() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let plan = vec![
        work(
            "prepare",
            input(|i| {
                i.extend = vec!["vol/a".into(), "vol/b".into()];
                i.extend_blocks = vec!["apply".into()];
            }),
        ),
        work("apply", WorkInput::default()).after(&["prepare"]),
        work("health", WorkInput::default()).after(&["apply"]),
    ];
    let run = engine.submit(submission("shop", plan)).await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::Succeeded);

    let state = engine.load(run).unwrap();
    assert_eq!(state.steps.len(), 5);
    assert!(
        state
            .steps
            .values()
            .all(|s| s.status == StepStatus::Succeeded)
    );
    // apply waited for both volumes that only `prepare` could name.
    let order: Vec<String> = state.started.iter().map(|s| s.0.clone()).collect();
    let pos = |id: &str| order.iter().position(|s| s == id).unwrap();
    assert!(
        pos("vol/a") < pos("apply") && pos("vol/b") < pos("apply") && pos("apply") < pos("health")
    );
    let evs = events(&engine, run);
    assert_eq!(names(&evs).last(), Some(&"RunSucceeded"));
    // Each step ran once, and each run was preceded by its durable StepStarted.
    assert_eq!(env.world.of("run", &run.short()).len(), 5);
    let report = engine.store().verify(run).unwrap();
    assert!(report.ok, "{report:?}");
    let summary = engine.store().summary(run).unwrap().unwrap();
    assert_eq!(summary.phase, "Succeeded");
    assert!(summary.terminal);
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_back_off_then_succeed() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let plan = vec![work("flaky", input(|i| i.fail_times = 2)).max_attempts(3)];
    let run = engine.submit(submission("flaky", plan)).await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::Succeeded);
    let envs = engine.store().read(run, 0).unwrap();
    let mut failed_at = Vec::new();
    let mut started_at = Vec::new();
    for env in &envs {
        match Event::decode(&env.event).unwrap() {
            Event::StepFailed {
                retry_at_ms,
                retryable,
                attempt,
                ..
            } => {
                assert!(retryable);
                failed_at.push((attempt, env.at_ms, retry_at_ms.unwrap()));
            }
            Event::StepStarted { attempt, .. } => started_at.push((attempt, env.at_ms)),
            _ => {}
        }
    }
    assert_eq!(
        started_at.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Backoff: 100 ms then 200 ms, each jittered into [half, full].
    let d1 = failed_at[0].2 - failed_at[0].1;
    let d2 = failed_at[1].2 - failed_at[1].1;
    assert!((50..=100).contains(&d1), "first backoff {d1}");
    assert!((100..=200).contains(&d2), "second backoff {d2}");
    // Each retry started no earlier than its recorded retry time.
    assert!(started_at[1].1 >= failed_at[0].2);
    assert!(started_at[2].1 >= failed_at[1].2);
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_roll_back_started_steps_in_reverse_order() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let plan = vec![
        work("ns", WorkInput::default()),
        work("snap", WorkInput::default()).after(&["ns"]),
        work("apply", input(|i| i.fail_times = 10))
            .after(&["snap"])
            .max_attempts(2),
        work("health", WorkInput::default()).after(&["apply"]),
    ];
    let run = engine.submit(submission("doomed", plan)).await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::RolledBack);
    let comps: Vec<String> = env
        .world
        .of("compensate", &run.short())
        .into_iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(
        comps,
        vec!["apply", "snap", "ns"],
        "reverse order of start; never-started health not compensated"
    );
    let evs = events(&engine, run);
    let n = names(&evs);
    let comp_start = n.iter().position(|e| *e == "CompensationStarted").unwrap();
    assert!(
        n[comp_start + 1..]
            .iter()
            .all(|e| ["StepCompensated", "RunRolledBack"].contains(e)),
        "{n:?}"
    );
    // No marker of the run is left.
    assert!(!env.world.marker(&run.short(), "ns").exists());
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_overruns_its_timeout_is_retried_then_fails() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let plan = vec![
        work("slow", input(|i| i.sleep_ms = 60_000))
            .attempt_timeout(Duration::from_secs(1))
            .max_attempts(2),
    ];
    let run = engine.submit(submission("slow", plan)).await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::RolledBack);
    let fails: Vec<_> = events(&engine, run)
        .into_iter()
        .filter_map(|e| match e {
            Event::StepFailed {
                error, retryable, ..
            } => Some((error, retryable)),
            _ => None,
        })
        .collect();
    assert_eq!(fails.len(), 2);
    assert!(fails[0].0.contains("timed out after 1000 ms") && fails[0].1);
}

#[tokio::test(start_paused = true)]
async fn no_retry_is_scheduled_past_the_recorded_deadline() {
    let env = Env::new();
    let mut opts = fast_options();
    opts.retry.initial = Duration::from_secs(4);
    opts.retry.max = Duration::from_secs(8);
    let engine = env.engine(opts);
    let plan = vec![
        work("health", input(|i| i.fail_times = 100))
            .max_attempts(100)
            .deadline(Duration::from_secs(10)),
    ];
    let run = engine.submit(submission("late", plan)).await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::RolledBack);
    let envs = engine.store().read(run, 0).unwrap();
    let mut deadline = None;
    let mut last_start = 0;
    for env in &envs {
        match Event::decode(&env.event).unwrap() {
            Event::StepStarted { deadline_ms, .. } => {
                assert!(
                    deadline.is_none() || deadline == deadline_ms,
                    "the deadline never moves"
                );
                deadline = deadline_ms;
                last_start = env.at_ms;
            }
            Event::StepFailed {
                retry_at_ms: Some(at),
                ..
            } => assert!(at < deadline.unwrap()),
            _ => {}
        }
    }
    assert!(last_start < deadline.unwrap());
    let attempts = env.world.of("run", &run.short()).len();
    assert!(
        (2..=5).contains(&attempts),
        "{attempts} attempts within 10 s of 4-8 s backoff"
    );
}

#[tokio::test]
async fn cancel_stops_the_running_step_and_rolls_back() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let plan = vec![
        work("ns", WorkInput::default()),
        work("copy", input(|i| i.wait_for_cancel = true)).after(&["ns"]),
        work("sibling", input(|i| i.wait_for_cancel = true)).after(&["ns"]),
    ];
    let run = engine.submit(submission("cancelme", plan)).await.unwrap();
    wait_until(|| env.world.of("run", &run.short()).len() == 3).await;
    engine.cancel(run, "user asked").await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::RolledBack);
    let n: Vec<_> = names(&events(&engine, run)).into_iter().collect();
    assert!(n.contains(&"CancelRequested"));
    let comps: Vec<String> = env
        .world
        .of("compensate", &run.short())
        .into_iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(comps.len(), 3);
    assert_eq!(comps.last().unwrap(), "ns");
    // Cancel of a finished run is refused.
    match engine.cancel(run, "again").await {
        Err(Error::AlreadyFinished { phase, .. }) => assert_eq!(phase, "RolledBack"),
        other => panic!("expected AlreadyFinished, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refusal_ends_the_run_refused_with_every_reason_and_nothing_to_undo() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let plan = vec![
        work("preflight", input(|i| i.refuse = true)),
        work("ns", WorkInput::default()).after(&["preflight"]),
    ];
    let run = engine.submit(submission("refused", plan)).await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::Refused);
    let state = engine.load(run).unwrap();
    assert_eq!(state.refusals.len(), 2);
    assert!(state.refusals[0].fix.contains("do not refuse"));
    assert!(env.world.of("compensate-try", &run.short()).is_empty());
    assert!(!names(&events(&engine, run)).contains(&"CompensationStarted"));
}

#[tokio::test]
async fn a_non_critical_failure_after_the_goal_leaves_warnings_not_a_rollback() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let plan = vec![
        work("apply", input(|i| i.warn = Some("hook skipped".into()))),
        work("cleanup", input(|i| i.permanent = true))
            .after(&["apply"])
            .non_critical(),
    ];
    let run = engine.submit(submission("warned", plan)).await.unwrap();
    assert_eq!(
        engine.wait(run).await.unwrap(),
        Phase::SucceededWithWarnings
    );
    let state = engine.load(run).unwrap();
    assert_eq!(state.warnings.len(), 2, "{:?}", state.warnings);
    assert!(state.warnings.iter().any(|w| w.contains("cleanup failed")));
    assert!(env.world.of("compensate", &run.short()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_compensation_that_keeps_failing_ends_failed_naming_what_is_left() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let plan = vec![
        work("ns", input(|i| i.comp_permanent = true)),
        work("vol", input(|i| i.comp_fail_times = 2)).after(&["ns"]),
        work("apply", input(|i| i.permanent = true)).after(&["vol"]),
    ];
    let run = engine.submit(submission("stuck", plan)).await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::Failed);
    let state = engine.load(run).unwrap();
    assert_eq!(state.left.len(), 1);
    assert!(state.left[0].starts_with("ns:"));
    assert_eq!(state.steps[&"vol".into()].status, StepStatus::Compensated);
    assert_eq!(state.steps[&"vol".into()].compensation_failures, 2);
}

#[tokio::test]
async fn graceful_shutdown_suspends_without_using_an_attempt_and_resumes() {
    let env = Env::new();
    let run;
    {
        let engine = env.engine(fast_options());
        let plan = vec![work("long", input(|i| i.sleep_ms = 60_000)).max_attempts(1)];
        run = engine.submit(submission("resumable", plan)).await.unwrap();
        wait_until(|| !env.world.of("run", &run.short()).is_empty()).await;
        engine.shutdown().await;
        let n = names(&events(&engine, run));
        assert_eq!(n.last(), Some(&"StepSuspended"));
        assert!(!n.contains(&"CompensationStarted"));
    }
    // Same attempt budget (1) after restart: the suspension did not use it.
    let engine = reopen(&env, fast_options()).await;
    let (resumed, failed) = engine.recover().await.unwrap();
    assert_eq!((resumed, failed.len()), (vec![run], 0));
    wait_until(|| env.world.of("run", &run.short()).len() == 2).await;
    engine.shutdown().await;
    let starts: Vec<u32> = events(&engine, run)
        .into_iter()
        .filter_map(|e| match e {
            Event::StepStarted { attempt, .. } => Some(attempt),
            _ => None,
        })
        .collect();
    assert_eq!(starts, vec![1, 1]);
}

#[tokio::test]
async fn a_crash_mid_step_is_an_interrupted_attempt_and_the_run_resumes() {
    let env = Env::new();
    let run;
    {
        let engine = env.engine(fast_options());
        let plan = vec![
            work("first", WorkInput::default()),
            work(
                "second",
                input(|i| {
                    i.checkpoints = 3;
                    i.sleep_ms = 60_000;
                }),
            )
            .after(&["first"]),
        ];
        run = engine.submit(submission("crashy", plan)).await.unwrap();
        wait_until(|| {
            engine.load(run).unwrap().steps[&"second".into()]
                .checkpoint
                .is_some()
        })
        .await;
        wait_until(|| {
            engine.load(run).unwrap().steps[&"second".into()].checkpoint
                == Some(ferry_engine::Json("3".into()))
        })
        .await;
        engine.abort().await;
    }
    let engine = reopen(&env, fast_options()).await;
    let state = engine.load(run).unwrap();
    assert!(matches!(
        state.steps[&"second".into()].status,
        StepStatus::Running { attempt: 1 }
    ));
    // Finish quickly this time: the step re-runs from its checkpoint.
    engine.recover().await.unwrap();
    wait_until(|| {
        env.world
            .of("run", &run.short())
            .iter()
            .any(|r| r.step == "second" && r.attempt == 2)
    })
    .await;
    engine.cancel(run, "stop waiting").await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::RolledBack);
    let evs = events(&engine, run);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::StepInterrupted { attempt: 1, .. }))
    );
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::StepStarted { attempt: 2, .. }))
    );
    // `first` ran exactly once: a step that succeeded never runs again.
    assert_eq!(
        env.world
            .of("run", &run.short())
            .iter()
            .filter(|r| r.step == "first")
            .count(),
        1
    );
    assert!(engine.store().verify(run).unwrap().ok);
}

#[tokio::test]
async fn a_crash_loop_ends_when_interruptions_use_up_the_attempts() {
    let env = Env::new();
    let run;
    {
        let engine = env.engine(fast_options());
        let plan = vec![
            work("a", WorkInput::default()),
            work("loop", input(|i| i.sleep_ms = 60_000))
                .after(&["a"])
                .max_attempts(2),
        ];
        run = engine.submit(submission("looping", plan)).await.unwrap();
        wait_until(|| env.world.of("run", &run.short()).len() == 2).await;
        engine.abort().await;
    }
    {
        let engine = reopen(&env, fast_options()).await;
        engine.recover().await.unwrap();
        wait_until(|| env.world.of("run", &run.short()).len() == 3).await;
        engine.abort().await;
    }
    let engine = reopen(&env, fast_options()).await;
    engine.recover().await.unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::RolledBack);
    let interrupted = events(&engine, run)
        .iter()
        .filter(|e| matches!(e, Event::StepInterrupted { .. }))
        .count();
    assert_eq!(interrupted, 2);
}

#[tokio::test]
async fn two_runs_cannot_share_a_name() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let first = engine
        .submit(submission("same", vec![work("a", WorkInput::default())]))
        .await
        .unwrap();
    let second = engine
        .submit(submission("same", vec![work("a", WorkInput::default())]))
        .await;
    match second {
        Err(Error::Store(ferry_store::Error::NameTaken { name, existing })) => {
            assert_eq!(name, "same");
            assert_eq!(existing, first);
        }
        other => panic!("expected NameTaken, got {:?}", other.map(|r| r.to_string())),
    }
    assert_eq!(engine.wait(first).await.unwrap(), Phase::Succeeded);
    assert_eq!(engine.store().list().unwrap().len(), 1);
}

#[tokio::test]
async fn concurrency_stays_within_the_global_limit_across_runs() {
    let env = Env::new();
    let mut opts = fast_options();
    opts.global_limit = 2;
    opts.per_run_limit = 3;
    let engine = env.engine(opts);
    let mut runs = Vec::new();
    for r in 0..3 {
        let plan = (0..4)
            .map(|i| work(&format!("s{i}"), input(|x| x.sleep_ms = 20)))
            .collect();
        runs.push(
            engine
                .submit(submission(&format!("run{r}"), plan))
                .await
                .unwrap(),
        );
    }
    for run in runs {
        assert_eq!(engine.wait(run).await.unwrap(), Phase::Succeeded);
    }
    assert!(
        env.world.peak_concurrency() <= 2,
        "peak {}",
        env.world.peak_concurrency()
    );
    assert!(env.world.peak_concurrency() >= 1);
}

#[tokio::test]
async fn an_illegal_event_in_one_log_is_nondeterminism_for_that_run_alone() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let good = engine
        .submit(submission("good", vec![work("a", WorkInput::default())]))
        .await
        .unwrap();
    assert_eq!(engine.wait(good).await.unwrap(), Phase::Succeeded);
    // A log built in code: StepSucceeded of a step that never started.
    let bad = RunId::new();
    let evs = [
        Event::RunSubmitted {
            name: "bad".into(),
            workflow: "test".into(),
            spec: ferry_engine::Json::null(),
        },
        Event::Planned {
            steps: vec![work("a", WorkInput::default())],
        },
        Event::StepSucceeded {
            step: "a".into(),
            output: ferry_engine::Json::null(),
            warnings: vec![],
        },
    ];
    let update = ferry_store::IndexUpdate {
        name: "bad".into(),
        phase: "Running".into(),
        current_step: None,
        terminal: false,
    };
    engine
        .store()
        .append(bad, 0, 1, evs.iter().map(Event::encode).collect(), update)
        .await
        .unwrap();
    match engine.load(bad) {
        Err(Error::Nondeterminism { run, seq, reason }) => {
            assert_eq!((run, seq), (bad, 2));
            assert!(reason.contains("not running"), "{reason}");
        }
        other => panic!("expected nondeterminism, got {other:?}"),
    }
    let (resumed, failed) = engine.recover().await.unwrap();
    assert!(resumed.is_empty());
    assert_eq!(failed.len(), 1);
    assert_eq!(engine.load(good).unwrap().phase, Phase::Succeeded);
}

#[tokio::test]
async fn an_unknown_step_kind_is_refused_at_submit() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let mut decl = work("a", WorkInput::default());
    decl.kind = "teleport".into();
    assert!(matches!(
        engine.submit(submission("x", vec![decl])).await,
        Err(Error::InvalidPlan(_))
    ));
    let mut cyc = vec![
        work("a", WorkInput::default()).after(&["b"]),
        work("b", WorkInput::default()).after(&["a"]),
    ];
    cyc[0].version = 1;
    match engine.submit(submission("y", cyc)).await {
        Err(Error::InvalidPlan(reason)) => assert!(reason.contains("cycle")),
        other => panic!("{:?}", other.map(|r| r.to_string())),
    }
    assert!(engine.store().list().unwrap().is_empty(), "nothing written");
}

async fn reopen(env: &Env, opts: EngineOptions) -> Engine {
    // The previous store's committer releases the lock when its last handle drops.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open(&env.state, &env.keys, &env.world, opts.clone()) {
            Ok(e) => return e,
            Err(ferry_store::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn export_is_json_lines_with_payloads_redacted() {
    let env = Env::new();
    let engine = env.engine(fast_options());
    let mut sub = submission("exported", vec![work("a", WorkInput::default())]);
    sub.spec = ferry_engine::Json::encode(
        &serde_json::json!({ "name": "exported", "secretData": { "password": "hunter2" } }),
    )
    .unwrap();
    let run = engine.submit(sub).await.unwrap();
    engine.wait(run).await.unwrap();
    let redact = |mut v: serde_json::Value| {
        if let Some(obj) = v.as_object_mut()
            && obj.contains_key("secretData")
        {
            obj.insert("secretData".into(), serde_json::json!("<redacted>"));
        }
        v
    };
    let mut out = Vec::new();
    let lines = ferry_engine::export_run(engine.store(), run, &mut out, &redact).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(lines as usize, text.lines().count());
    assert!(!text.contains("hunter2"));
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 0);
    assert_eq!(first["event"]["RunSubmitted"]["spec"]["name"], "exported");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "RunSucceeded");
}

#[tokio::test(start_paused = true)]
async fn checkpoints_are_rate_limited() {
    let env = Env::new();
    let mut opts = fast_options();
    opts.checkpoint_interval = Duration::from_millis(50);
    let engine = env.engine(opts);
    let run = engine
        .submit(submission(
            "rapid",
            vec![work("copy", input(|i| i.rapid_checkpoints = 500))],
        ))
        .await
        .unwrap();
    assert_eq!(engine.wait(run).await.unwrap(), Phase::Succeeded);
    let progress = events(&engine, run)
        .iter()
        .filter(|e| matches!(e, Event::StepProgress { .. }))
        .count();
    // 500 offers over at least 500 ms at one per 50 ms: at most 11 recorded.
    assert!(
        (1..=11).contains(&progress),
        "{progress} checkpoints recorded"
    );
}

//! Property test: random workflows (DAGs of test steps that fail, retry,
//! fail for good, fail their compensation, or are non-critical), with
//! random crash points (the engine aborted mid-flight, as `kill -9` would,
//! then reopened and recovered). Invariants: the run ends; the phase agrees
//! with what the steps could do; a rollback compensates exactly the started
//! steps; every side effect had its durable StepStarted; the chain verifies.

use std::collections::BTreeSet;

use ferry_engine::{Event, Phase, StepDecl};
use ferry_tests::{WorkInput, World, fast_options, open, submission, work};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct StepSpec {
    deps: Vec<usize>,
    input: WorkInput,
    max_attempts: u32,
    critical: bool,
}

fn step_spec(index: usize) -> impl Strategy<Value = StepSpec> {
    (
        proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
        0u32..3,
        prop::bool::weighted(0.15),
        0u32..3,
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.15),
        0u64..30,
        1u32..4,
    )
        .prop_map(
            move |(
                deps,
                fail_times,
                permanent,
                comp_fail_times,
                comp_permanent,
                non_critical,
                sleep_ms,
                max_attempts,
            )| {
                let deps: BTreeSet<usize> = if index == 0 {
                    BTreeSet::new()
                } else {
                    deps.iter().map(|d| d.index(index)).collect()
                };
                StepSpec {
                    deps: deps.into_iter().collect(),
                    input: WorkInput {
                        fail_times,
                        permanent,
                        comp_fail_times,
                        comp_permanent,
                        sleep_ms,
                        ..Default::default()
                    },
                    max_attempts,
                    critical: !non_critical,
                }
            },
        )
}

fn workflow() -> impl Strategy<Value = Vec<StepSpec>> {
    (2usize..7).prop_flat_map(|n| (0..n).map(step_spec).collect::<Vec<_>>())
}

fn plan(specs: &[StepSpec]) -> Vec<StepDecl> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let deps: Vec<String> = s.deps.iter().map(|d| format!("s{d}")).collect();
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            let mut d = work(&format!("s{i}"), s.input.clone())
                .after(&deps)
                .max_attempts(s.max_attempts);
            d.critical = s.critical;
            d
        })
        .collect()
}

fn check(specs: Vec<StepSpec>, crashes: Vec<u64>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join("state");
    let keys = tmp.path().join("keys");
    let world = World::new(&tmp.path().join("world"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut run = None;
        // Each crash aborts the engine after that many more events.
        for after in crashes.iter().copied().map(Some).chain([None]) {
            let engine = loop {
                match open(&state_dir, &keys, &world, fast_options()) {
                    Ok(e) => break e,
                    Err(ferry_store::Error::Locked { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("open: {e}"),
                }
            };
            let id = match run {
                None => {
                    let id = engine.submit(submission("prop", plan(&specs))).await.unwrap();
                    run = Some(id);
                    id
                }
                Some(id) => {
                    let (_, failed) = engine.recover().await.unwrap();
                    assert!(failed.is_empty(), "{failed:?}");
                    id
                }
            };
            match after {
                Some(n) => {
                    let mut sub = engine.store().subscribe(id, engine.store().summary(id).unwrap().unwrap().next_seq);
                    let mut seen = 0;
                    // No timeout here: under the paused clock it would fire
                    // while the store's committer thread does real I/O.
                    let mut reached = true;
                    while seen < n {
                        match sub.next().await.unwrap() {
                            Some(_) => seen += 1,
                            None => {
                                reached = false;
                                break;
                            }
                        }
                    }
                    engine.abort().await;
                    drop(sub);
                    if !reached {
                        break;
                    }
                }
                None => {
                    engine.wait(id).await.unwrap();
                    engine.shutdown().await;
                }
            }
        }
        let engine = loop {
            match open(&state_dir, &keys, &world, fast_options()) {
                Ok(e) => break e,
                Err(ferry_store::Error::Locked { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("open: {e}"),
            }
        };
        let run = run.unwrap();
        let state = engine.load(run).unwrap();
        prop_assert!(state.phase.is_terminal(), "phase {:?}", state.phase);
        prop_assert!(engine.store().verify(run).unwrap().ok);
        let short = run.short();
        let events: Vec<Event> = engine.store().read(run, 0).unwrap().iter().map(|e| Event::decode(&e.event).unwrap()).collect();
        for r in world.of("run", &short) {
            prop_assert!(
                events.iter().any(|e| matches!(e, Event::StepStarted { step, attempt, .. } if step.0 == r.step && *attempt == r.attempt)),
                "side effect of {} attempt {} without StepStarted", r.step, r.attempt
            );
        }
        let doomed = specs.iter().any(|s| s.critical && s.input.permanent);
        let compensated: BTreeSet<String> = world.of("compensate", &short).into_iter().map(|r| r.step).collect();
        let started: BTreeSet<String> = state.started.iter().map(|s| s.0.clone()).collect();
        prop_assert!(compensated.is_subset(&started));
        match state.phase {
            Phase::Succeeded | Phase::SucceededWithWarnings => {
                prop_assert!(!doomed, "succeeded although a critical step cannot");
                prop_assert!(compensated.is_empty());
                for (i, s) in specs.iter().enumerate() {
                    if s.critical {
                        let id = format!("s{i}");
                        prop_assert!(world.marker(&short, &id).exists(), "{} made nothing", id);
                    }
                }
            }
            Phase::RolledBack => {
                prop_assert_eq!(&compensated, &started);
                for step in &started {
                    prop_assert!(!world.marker(&short, step).exists());
                }
            }
            Phase::Failed => {
                prop_assert!(!state.left.is_empty());
                for left in &state.left {
                    let i: usize = left[1..left.find(':').unwrap()].parse().unwrap();
                    prop_assert!(specs[i].input.comp_permanent || specs[i].input.comp_fail_times > 0);
                }
            }
            other => prop_assert!(false, "unexpected phase {other:?}"),
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn random_workflows_with_random_crashes_keep_the_invariants(
        specs in workflow(),
        crashes in proptest::collection::vec(1u64..12, 0..4),
    ) {
        check(specs, crashes)?;
    }
}

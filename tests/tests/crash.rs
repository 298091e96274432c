//! Crash tests: a real child process running the engine is killed with
//! SIGKILL at failpoints — before and after appends, inside a step, inside
//! compensation — and started again. Every run must end in the right phase
//! with its chain intact, and the world must show intent before action:
//! every side effect was preceded by its durable `StepStarted`, and no step
//! ran again after its success was recorded.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_engine::{Event, Phase};
use ferry_tests::{World, fast_options, open};

const CHILD: &str = env!("CARGO_BIN_EXE_ferry-crash-child");

/// Runs the child until it reports the failpoint, then SIGKILLs it.
/// Returns false if the child finished without reaching it.
fn run_until_failpoint(dir: &Path, scenario: &str, point: &str) -> bool {
    let mut child = Command::new(CHILD)
        .args([dir.to_str().unwrap(), "submit", scenario])
        .env("FERRY_FAILPOINT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("child starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("FAILPOINT ") {
                let _ = tx.send(true);
                return;
            }
        }
        let _ = tx.send(false);
    });
    let reached = rx.recv_timeout(Duration::from_secs(60)).unwrap_or(false);
    if reached {
        // While the child holds the state dir, nobody else may open it.
        let Err(err) = ferry_store::Store::open(ferry_store::StoreOptions {
            dir: dir.join("state"),
            mac_key: ferry_store::Key32::from_bytes([0; 32]),
            blob_key: None,
        }) else {
            panic!("a second opener is refused");
        };
        assert!(matches!(err, ferry_store::Error::Locked { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&dir.join("state").display().to_string()),
            "{err}"
        );
    }
    // SIGKILL: no destructor, no flush, no graceful anything.
    let _ = child.kill();
    let _ = child.wait();
    reached
}

fn resume(dir: &Path, scenario: &str) -> String {
    let out = Command::new(CHILD)
        .args([dir.to_str().unwrap(), "resume", scenario])
        .output()
        .expect("child runs");
    assert!(
        out.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn check(scenario: &str, point: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reached = run_until_failpoint(dir, scenario, point);
    assert!(reached, "{scenario}: failpoint {point} was never reached");
    let out = resume(dir, scenario);
    let expected = if scenario == "happy" {
        Phase::Succeeded
    } else {
        Phase::RolledBack
    };
    assert!(
        out.contains(&format!(" {expected}")),
        "{scenario} at {point}: {out}"
    );

    // Inspect the log and the world in this process.
    let world = World::new(&dir.join("world"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = open(&dir.join("state"), &dir.join("keys"), &world, fast_options()).unwrap();
        let runs = engine.store().list().unwrap();
        assert_eq!(runs.len(), 1);
        let run = runs[0].run;
        let report = engine.store().verify(run).unwrap();
        assert!(report.ok, "{report:?}");
        let state = engine.load(run).unwrap();
        assert_eq!(state.phase, expected);
        let events: Vec<Event> = engine.store().read(run, 0).unwrap().iter().map(|e| Event::decode(&e.event).unwrap()).collect();
        let short = run.short();
        // Intent before action: each run of a step has its StepStarted.
        for r in world.of("run", &short) {
            let started = events.iter().any(|e| matches!(e, Event::StepStarted { step, attempt, .. } if step.0 == r.step && *attempt == r.attempt));
            assert!(started, "{point}: step {} attempt {} ran without a durable StepStarted", r.step, r.attempt);
        }
        // Once a success is durable the step never runs again.
        for (id, s) in &state.steps {
            if let Some(out) = &s.output {
                let out: ferry_tests::WorkOutput = out.decode().unwrap();
                let later = world.of("run", &short).iter().filter(|r| r.step == id.0 && r.attempt > out.attempt).count();
                assert_eq!(later, 0, "{point}: step {id} ran again after its success");
            }
        }
        // Compensations only for started steps; every started step compensated on rollback.
        let compensated: std::collections::BTreeSet<String> = world.of("compensate", &short).into_iter().map(|r| r.step).collect();
        for step in &compensated {
            assert!(state.steps[&step.as_str().into()].start_order.is_some(), "{point}: compensated {step}, which never started");
        }
        if expected == Phase::RolledBack {
            let started: std::collections::BTreeSet<String> = state.started.iter().map(|s| s.0.clone()).collect();
            assert_eq!(compensated, started, "{point}");
            for step in &started {
                assert!(!world.marker(&short, step).exists(), "{point}: {step} left its marker");
            }
        } else {
            for id in state.steps.keys() {
                assert!(world.marker(&short, &id.0).exists(), "{point}: {id} made nothing");
            }
            // Killed after its second durable checkpoint, the copy step resumed from it.
            let copy: ferry_tests::WorkOutput = state.steps[&"copy".into()].output.as_ref().unwrap().decode().unwrap();
            if point == "test.inside.checkpoint@2" {
                assert_eq!((copy.attempt, copy.resumed_from), (2, Some(2)), "{point}");
            }
        }
    });
}

#[test]
fn killed_around_every_append_and_inside_steps_the_happy_run_still_succeeds() {
    let started = Instant::now();
    for point in [
        "step.start.before@1",
        "step.start.after@1",
        "step.start.after@3",
        "step.succeeded.before@1",
        "step.succeeded.before@2",
        "step.succeeded.after@2",
        "step.succeeded.after@5",
        "test.inside@1",
        "test.inside.checkpoint@2",
    ] {
        check("happy", point);
    }
    eprintln!("happy crash suite took {:?}", started.elapsed());
}

#[test]
fn killed_during_failure_and_compensation_the_run_still_rolls_back() {
    for point in [
        "step.start.after@4",
        "test.inside.checkpoint@1",
        "compensation.start.before@1",
        "compensate.before@1",
        "compensate.after@1",
        "compensate.before@3",
        "compensate.after@4",
    ] {
        check("rollback", point);
    }
}

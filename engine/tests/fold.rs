//! The fold alone: no I/O, logs built in code. Which events are legal in
//! which phase, and what state each one leaves.

use ferry_engine::{Event, Json, Phase, Refusal, RunState, StepDecl, StepStatus};

fn decl(id: &str, deps: &[&str]) -> StepDecl {
    StepDecl {
        id: id.into(),
        kind: "work".into(),
        version: 1,
        input: Json::null(),
        deps: deps.iter().map(|d| (*d).into()).collect(),
        critical: true,
        max_attempts: 2,
        attempt_timeout_ms: None,
        deadline_ms: None,
    }
}

fn started(step: &str, attempt: u32) -> Event {
    Event::StepStarted {
        step: step.into(),
        attempt,
        deadline_ms: None,
    }
}

fn ok(step: &str) -> Event {
    Event::StepSucceeded {
        step: step.into(),
        output: Json("1".into()),
        warnings: vec![],
    }
}

/// Folds `events` after a submission of steps a → b → c; returns the state
/// or the seq and reason of the first illegal event.
fn fold(events: &[Event]) -> Result<RunState, (u64, String)> {
    let mut all = vec![
        Event::RunSubmitted {
            name: "r".into(),
            workflow: "w".into(),
            spec: Json::null(),
        },
        Event::Planned {
            steps: vec![decl("a", &[]), decl("b", &["a"]), decl("c", &["b"])],
        },
    ];
    all.extend_from_slice(events);
    let mut s = RunState::default();
    for (i, e) in all.iter().enumerate() {
        s.apply(i as u64, 1000 + i as u64, e)
            .map_err(|n| (n.seq, n.reason))?;
    }
    Ok(s)
}

#[test]
fn a_full_run_folds_to_succeeded() {
    let s = fold(&[
        started("a", 1),
        ok("a"),
        started("b", 1),
        ok("b"),
        started("c", 1),
        ok("c"),
        Event::RunSucceeded,
    ])
    .unwrap();
    assert_eq!(s.phase, Phase::Succeeded);
    assert_eq!(s.started.len(), 3);
    assert_eq!(s.created_ms, 1000);
    assert_eq!(s.updated_ms, 1008);
    assert_eq!(s.outputs().len(), 3);
}

#[test]
fn a_step_cannot_start_before_its_dependencies() {
    let (seq, reason) = fold(&[started("b", 1)]).unwrap_err();
    assert_eq!(seq, 2);
    assert!(reason.contains("before its dependencies"), "{reason}");
}

#[test]
fn attempts_are_counted_and_must_follow_on() {
    assert!(fold(&[started("a", 2)]).is_err());
    let fail = Event::StepFailed {
        step: "a".into(),
        attempt: 1,
        error: "x".into(),
        retryable: true,
        retry_at_ms: Some(5000),
    };
    let s = fold(&[started("a", 1), fail.clone()]).unwrap();
    assert_eq!(
        s.steps[&"a".into()].status,
        StepStatus::Waiting { retry_at_ms: 5000 }
    );
    assert_eq!(s.ready_steps(4999), Vec::<ferry_engine::StepId>::new());
    assert_eq!(s.ready_steps(5000), vec!["a".into()]);
    // A retry scheduled beyond the attempt limit (2) is illegal.
    let fail2 = Event::StepFailed {
        step: "a".into(),
        attempt: 2,
        error: "x".into(),
        retryable: true,
        retry_at_ms: Some(6000),
    };
    assert!(fold(&[started("a", 1), fail, started("a", 2), fail2]).is_err());
}

#[test]
fn an_interruption_uses_an_attempt_and_a_suspension_does_not() {
    let s = fold(&[
        started("a", 1),
        Event::StepSuspended {
            step: "a".into(),
            attempt: 1,
        },
        started("a", 1),
    ])
    .unwrap();
    assert_eq!(s.steps[&"a".into()].attempts, 0);
    let s = fold(&[
        started("a", 1),
        Event::StepInterrupted {
            step: "a".into(),
            attempt: 1,
        },
    ])
    .unwrap();
    assert_eq!(s.steps[&"a".into()].attempts, 1);
    assert!(matches!(
        s.steps[&"a".into()].status,
        StepStatus::Waiting { .. }
    ));
    // The second interruption exhausts max_attempts = 2: the step failed for good.
    let s = fold(&[
        started("a", 1),
        Event::StepInterrupted {
            step: "a".into(),
            attempt: 1,
        },
        started("a", 2),
        Event::StepInterrupted {
            step: "a".into(),
            attempt: 2,
        },
    ])
    .unwrap();
    assert!(matches!(
        s.steps[&"a".into()].status,
        StepStatus::Failed { .. }
    ));
    assert_eq!(
        s.critical_failure().map(|(id, _)| id.0.clone()),
        Some("a".into())
    );
}

#[test]
fn only_compensation_events_follow_compensation_started() {
    let base = [
        started("a", 1),
        ok("a"),
        started("b", 1),
        Event::StepFailed {
            step: "b".into(),
            attempt: 1,
            error: "x".into(),
            retryable: false,
            retry_at_ms: None,
        },
    ];
    let mut evs = base.to_vec();
    evs.push(Event::CompensationStarted {
        reason: "b failed".into(),
    });
    let s = fold(&evs).unwrap();
    assert_eq!(s.phase, Phase::Compensating);
    assert_eq!(
        s.next_compensation(),
        Some("b".into()),
        "reverse order of start"
    );
    for illegal in [
        started("c", 1),
        ok("a"),
        Event::RunSucceeded,
        Event::CancelRequested { reason: "x".into() },
    ] {
        let mut e = evs.clone();
        e.push(illegal.clone());
        assert!(
            fold(&e).is_err(),
            "{} must be illegal while compensating",
            illegal.name()
        );
    }
    // Rolled back only when every started step is compensated.
    let mut e = evs.clone();
    e.push(Event::RunRolledBack);
    assert!(fold(&e).is_err());
    e.pop();
    e.extend([
        Event::StepCompensated { step: "b".into() },
        Event::StepCompensated { step: "a".into() },
        Event::RunRolledBack,
    ]);
    assert_eq!(fold(&e).unwrap().phase, Phase::RolledBack);
    // Never-started c is never compensated.
    let mut e = evs.clone();
    e.push(Event::StepCompensated { step: "c".into() });
    assert!(fold(&e).is_err());
}

#[test]
fn compensation_cannot_start_while_a_step_runs() {
    let (_, reason) = fold(&[
        started("a", 1),
        Event::CompensationStarted { reason: "x".into() },
    ])
    .unwrap_err();
    assert!(reason.contains("still running"), "{reason}");
}

#[test]
fn a_refusal_is_only_legal_from_the_first_step_before_anything_else_started() {
    let refusal = |by: &str| Event::RunRefused {
        by: by.into(),
        refusals: vec![Refusal {
            object: "o".into(),
            rule: "r".into(),
            fix: "f".into(),
        }],
    };
    let s = fold(&[started("a", 1), refusal("a")]).unwrap();
    assert_eq!(s.phase, Phase::Refused);
    assert!(s.phase.is_terminal());
    assert!(fold(&[started("a", 1), ok("a"), started("b", 1), refusal("b")]).is_err());
    let empty = Event::RunRefused {
        by: "a".into(),
        refusals: vec![],
    };
    assert!(fold(&[started("a", 1), empty]).is_err());
}

#[test]
fn nothing_is_legal_after_the_end_and_seqs_are_dense() {
    let mut evs = vec![
        started("a", 1),
        ok("a"),
        started("b", 1),
        ok("b"),
        started("c", 1),
        ok("c"),
        Event::RunSucceeded,
    ];
    evs.push(Event::CancelRequested {
        reason: "late".into(),
    });
    assert!(fold(&evs).is_err());
    let mut s = RunState::default();
    let sub = Event::RunSubmitted {
        name: "r".into(),
        workflow: "w".into(),
        spec: Json::null(),
    };
    assert!(s.apply(1, 0, &sub).is_err(), "seq gap");
    s.apply(0, 0, &sub).unwrap();
    assert!(s.apply(1, 0, &sub).is_err(), "submitted twice");
}

#[test]
fn a_plan_extension_adds_steps_and_dependencies_once() {
    let ext = Event::PlanExtended {
        by: "a".into(),
        steps: vec![decl("vol/x", &["a"])],
        add_deps: vec![("b".into(), "vol/x".into())],
    };
    let s = fold(&[started("a", 1), ext.clone(), ok("a")]).unwrap();
    assert_eq!(s.steps.len(), 4);
    assert_eq!(
        s.ready_steps(0),
        vec!["vol/x".into()],
        "b now waits for vol/x"
    );
    assert!(
        fold(&[started("a", 1), ext.clone(), ext.clone()]).is_err(),
        "extended twice"
    );
    // A cycle through the added dependency is refused.
    let cyc = Event::PlanExtended {
        by: "a".into(),
        steps: vec![decl("vol/y", &["c"])],
        add_deps: vec![("b".into(), "vol/y".into())],
    };
    let (_, reason) = fold(&[started("a", 1), cyc]).unwrap_err();
    assert!(reason.contains("cycle"), "{reason}");
}

#[test]
fn cancel_stops_new_starts_and_success() {
    let s = fold(&[
        started("a", 1),
        Event::CancelRequested {
            reason: "user".into(),
        },
    ])
    .unwrap();
    assert!(s.ready_steps(0).is_empty());
    assert!(
        fold(&[
            Event::CancelRequested {
                reason: "user".into()
            },
            started("a", 1)
        ])
        .is_err()
    );
}

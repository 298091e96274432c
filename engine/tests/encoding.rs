//! The event encoding is pinned byte for byte: a checked-in golden file
//! holds every variant as this version writes it. A later binary must decode
//! it to the same values; a change that alters the bytes needs a new format
//! byte and a `compat` path, never an edit of this file.
//!
//! Regenerate only for a deliberate new format: `GOLDEN_UPDATE=1 cargo test -p ferry-engine --test encoding`.

use ferry_engine::{DecodeError, EVENT_FORMAT_V1, Event, Json, Refusal, StepDecl, StepId};

fn decl(id: &str) -> StepDecl {
    StepDecl {
        id: id.into(),
        kind: "work".into(),
        version: 3,
        input: Json(r#"{"pvc":"data-db-0","bytes":1073741824}"#.into()),
        deps: vec!["preflight".into()],
        critical: true,
        max_attempts: 5,
        attempt_timeout_ms: Some(30_000),
        deadline_ms: Some(600_000),
    }
}

fn every_variant() -> Vec<Event> {
    let step = StepId::from("snapshot/shop/pgdata-db-0");
    vec![
        Event::RunSubmitted {
            name: "shop".into(),
            workflow: "clone".into(),
            spec: Json(r#"{"from":"prod","to":"staging"}"#.into()),
        },
        Event::Planned {
            steps: vec![decl("preflight"), decl("namespaces").clone()],
        },
        Event::PlanExtended {
            by: "preflight".into(),
            steps: vec![decl("snapshot/shop/pgdata-db-0")],
            add_deps: vec![("apply".into(), step.clone())],
        },
        Event::StepStarted {
            step: step.clone(),
            attempt: 1,
            deadline_ms: Some(1_763_900_000_000),
        },
        Event::StepProgress {
            step: step.clone(),
            checkpoint: Json(r#"{"bytes":4096}"#.into()),
        },
        Event::StepSucceeded {
            step: step.clone(),
            output: Json(r#"{"snapshot":"ferry-abcd1234-pgdata"}"#.into()),
            warnings: vec!["slow".into()],
        },
        Event::StepFailed {
            step: step.clone(),
            attempt: 2,
            error: "429 Too Many Requests".into(),
            retryable: true,
            retry_at_ms: Some(1_763_900_000_500),
        },
        Event::StepInterrupted {
            step: step.clone(),
            attempt: 3,
        },
        Event::StepSuspended {
            step: step.clone(),
            attempt: 4,
        },
        Event::RunRefused {
            by: "preflight".into(),
            refusals: vec![Refusal {
                object: "Namespace shop-copy".into(),
                rule: "destination namespace exists".into(),
                fix: "choose another name".into(),
            }],
        },
        Event::CancelRequested {
            reason: "user".into(),
        },
        Event::CompensationStarted {
            reason: "step apply failed".into(),
        },
        Event::StepCompensated { step: step.clone() },
        Event::CompensationFailed {
            step: step.clone(),
            error: "503".into(),
            last: false,
        },
        Event::RunSucceeded,
        Event::RunSucceededWithWarnings {
            warnings: vec!["cleanup failed".into()],
        },
        Event::RunRolledBack,
        Event::RunFailed {
            reason: "compensation failed".into(),
            left: vec!["namespaces: 403".into()],
        },
    ]
}

fn encode_all(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let bytes = e.encode();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn decode_all(mut bytes: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        out.push(Event::decode(&bytes[4..4 + len]).unwrap());
        bytes = &bytes[4 + len..];
    }
    out
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/events_v1.bin");

#[test]
fn every_variant_encodes_to_the_golden_bytes() {
    let events = every_variant();
    let bytes = encode_all(&events);
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(GOLDEN, &bytes).unwrap();
    }
    let golden = std::fs::read(GOLDEN).expect("golden file is checked in");
    assert_eq!(
        bytes, golden,
        "the event encoding changed: add a format byte and a compat path"
    );
    assert_eq!(decode_all(&golden), events);
    // Every record starts with the format byte.
    let first_len = u32::from_le_bytes(golden[..4].try_into().unwrap()) as usize;
    assert!(first_len > 1);
    assert_eq!(golden[4], EVENT_FORMAT_V1);
}

#[test]
fn undecodable_records_are_named_not_panicked_on() {
    assert_eq!(Event::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(
        Event::decode(&[9, 0, 0]),
        Err(DecodeError::UnknownFormat(9))
    );
    assert!(matches!(
        Event::decode(&[EVENT_FORMAT_V1, 250, 250, 250]),
        Err(DecodeError::Bincode(_))
    ));
    let mut trailing = Event::RunSucceeded.encode();
    trailing.push(0);
    assert_eq!(Event::decode(&trailing), Err(DecodeError::Trailing(1)));
    // Arbitrary bytes never panic.
    for seed in 0u32..2000 {
        let bytes: Vec<u8> = (0..(seed % 40))
            .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 97) >> 7) as u8)
            .collect();
        let mut b = vec![EVENT_FORMAT_V1];
        b.extend(bytes);
        let _ = Event::decode(&b);
    }
}

#[test]
fn payloads_export_as_readable_redacted_json() {
    let e = Event::StepSucceeded {
        step: "inventory".into(),
        output: Json(r#"{"secret":{"data":{"password":"aHVudGVyMg=="}},"n":2}"#.into()),
        warnings: vec![],
    };
    let redact = |mut v: serde_json::Value| {
        if let Some(d) = v.pointer_mut("/secret/data") {
            *d = serde_json::json!("<redacted>");
        }
        v
    };
    let json = e.to_export_json(&redact);
    let text = json.to_string();
    assert!(!text.contains("aHVudGVyMg=="), "{text}");
    assert_eq!(
        json.pointer("/StepSucceeded/output/n"),
        Some(&serde_json::json!(2))
    );
}

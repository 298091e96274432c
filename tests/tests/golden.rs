//! Recorded logs from real runs, checked in under `tests/golden/`. Every
//! later ferry must still decode and replay them to the same end: the
//! chain links from the run's genesis, every event decodes, and the fold
//! reaches the recorded phase. (Temporal keeps `tests/histories/*.bin`.)
//!
//! Record anew only when adding a history: `GOLDEN_UPDATE=1 cargo test -p ferry-tests --test golden`.

use std::path::PathBuf;

use ferry_engine::{Event, Phase, RunState};
use ferry_store::{Envelope, RunId, genesis_hash};
use ferry_tests::{WorkInput, World, fast_options, open, submission, work};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("{name}.v1.bin"))
}

/// File layout: 16 bytes of run id, then per envelope a u32 LE length and
/// the envelope's bytes as the store encodes them.
fn write_history(name: &str, run: RunId, envelopes: &[Envelope]) {
    let mut out = run.0.as_bytes().to_vec();
    for e in envelopes {
        let bytes = e.encode();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    std::fs::write(path(name), out).unwrap();
}

fn read_history(name: &str) -> (RunId, Vec<Envelope>) {
    let bytes = std::fs::read(path(name)).expect("golden history is checked in");
    let run = RunId(uuid::Uuid::from_slice(&bytes[..16]).unwrap());
    let mut rest = &bytes[16..];
    let mut envs = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        envs.push(Envelope::decode(&rest[4..4 + len]).unwrap());
        rest = &rest[4 + len..];
    }
    (run, envs)
}

fn replay(name: &str) -> RunState {
    let (run, envs) = read_history(name);
    let mut prev = genesis_hash(run);
    let mut state = RunState::default();
    for env in &envs {
        assert_eq!(
            env.prev_hash, prev,
            "{name}: chain broken at seq {}",
            env.seq
        );
        prev = env.hash();
        let event = Event::decode(&env.event).unwrap();
        state.apply(env.seq, env.at_ms, &event).unwrap();
    }
    state
}

async fn record() {
    let tmp = tempfile::tempdir().unwrap();
    let world = World::new(&tmp.path().join("world"));
    let state = tmp.path().join("state");
    let keys = tmp.path().join("keys");
    let engine = open(&state, &keys, &world, fast_options()).unwrap();
    let warned = engine
        .submit(submission(
            "warned",
            vec![
                work(
                    "preflight",
                    WorkInput {
                        extend: vec!["volume/a".into()],
                        extend_blocks: vec!["apply".into()],
                        ..Default::default()
                    },
                ),
                work(
                    "copy",
                    WorkInput {
                        checkpoints: 2,
                        fail_times: 1,
                        ..Default::default()
                    },
                )
                .after(&["preflight"]),
                work(
                    "apply",
                    WorkInput {
                        warn: Some("a hook was skipped".into()),
                        ..Default::default()
                    },
                )
                .after(&["copy"]),
                work(
                    "cleanup",
                    WorkInput {
                        permanent: true,
                        ..Default::default()
                    },
                )
                .after(&["apply"])
                .non_critical(),
            ],
        ))
        .await
        .unwrap();
    let rolled = engine
        .submit(submission(
            "rolled",
            vec![
                work(
                    "ns",
                    WorkInput {
                        comp_fail_times: 1,
                        ..Default::default()
                    },
                ),
                work(
                    "apply",
                    WorkInput {
                        permanent: true,
                        ..Default::default()
                    },
                )
                .after(&["ns"]),
            ],
        ))
        .await
        .unwrap();
    let refused = engine
        .submit(submission(
            "refused",
            vec![work(
                "preflight",
                WorkInput {
                    refuse: true,
                    ..Default::default()
                },
            )],
        ))
        .await
        .unwrap();
    for (name, run) in [
        ("succeeded_with_warnings", warned),
        ("rolled_back", rolled),
        ("refused", refused),
    ] {
        engine.wait(run).await.unwrap();
        write_history(name, run, &engine.store().read(run, 0).unwrap());
    }
}

#[tokio::test]
async fn recorded_histories_still_replay() {
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        record().await;
    }
    let s = replay("succeeded_with_warnings");
    assert_eq!(s.phase, Phase::SucceededWithWarnings);
    assert_eq!(s.steps.len(), 5);
    assert_eq!(s.warnings.len(), 2);
    assert_eq!(s.steps[&"copy".into()].attempts, 1);

    let s = replay("rolled_back");
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(s.steps[&"ns".into()].compensation_failures, 1);

    let s = replay("refused");
    assert_eq!(s.phase, Phase::Refused);
    assert_eq!(s.refusals.len(), 2);
}

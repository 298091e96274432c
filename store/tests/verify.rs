//! verify: edits, losses and forgeries of the log are found and named; a
//! damaged run or database never panics and never hides the other runs.

mod common;

use common::{close_raw_sled, event_key, events, open, opts, raw_sled, update};
use ferry_store::{Envelope, Error, Key32, RunId, Store, StoreOptions};

/// A closed state dir holding two runs: `victim` with 6 events, `bystander` with 3.
async fn two_runs(dir: &std::path::Path) -> anyhow::Result<(RunId, RunId)> {
    let store = open(dir);
    let victim = RunId::new();
    let bystander = RunId::new();
    store
        .append(victim, 0, 1, events("v", 2), update("victim", "P", false))
        .await?;
    store
        .append(
            bystander,
            0,
            1,
            events("b", 3),
            update("bystander", "P", false),
        )
        .await?;
    store
        .append(victim, 2, 2, events("v2", 4), update("victim", "Q", false))
        .await?;
    assert!(store.verify(victim)?.ok);
    Ok((victim, bystander))
}

fn assert_bystander_fine(store: &Store, bystander: RunId) -> anyhow::Result<()> {
    let r = store.verify(bystander)?;
    assert!(r.ok, "{r:?}");
    assert_eq!(store.read(bystander, 0)?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn rewritten_event_is_reported_with_its_seq() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (victim, bystander) = two_runs(dir.path()).await?;
    {
        let db = raw_sled(dir.path());
        let key = event_key(victim, 2);
        let mut env = Envelope::decode(&db.get(&key)?.expect("seq 2"))?;
        env.event = b"forged".to_vec();
        db.insert(key, env.encode())?;
        close_raw_sled(db, dir.path());
    }
    let store = open(dir.path());
    let r = store.verify(victim)?;
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(2), "{r:?}");
    assert_eq!(r.events, 3, "seqs 0..=2 read before the break at 3");
    assert!(r.problem.unwrap().contains("seq 2"));
    assert_bystander_fine(&store, bystander)
}

#[tokio::test]
async fn rewritten_last_event_is_caught_by_the_head() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (victim, bystander) = two_runs(dir.path()).await?;
    {
        let db = raw_sled(dir.path());
        let key = event_key(victim, 5);
        let mut env = Envelope::decode(&db.get(&key)?.expect("seq 5"))?;
        env.at_ms += 1;
        db.insert(key, env.encode())?;
        close_raw_sled(db, dir.path());
    }
    let store = open(dir.path());
    let r = store.verify(victim)?;
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(5)), "{r:?}");
    assert_bystander_fine(&store, bystander)
}

#[tokio::test]
async fn removed_tail_is_detected_by_head_and_by_mac() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (victim, bystander) = two_runs(dir.path()).await?;
    {
        let db = raw_sled(dir.path());
        db.remove(event_key(victim, 5))?;
        close_raw_sled(db, dir.path());
    }
    {
        let store = open(dir.path());
        let r = store.verify(victim)?;
        assert_eq!((r.ok, r.first_bad_seq), (false, Some(5)), "{r:?}");
        // Replay sees it too, with run and seq.
        match store.read(victim, 0) {
            Err(Error::Corrupt { run, seq, .. }) => assert_eq!((run, seq), (victim, 5)),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_bystander_fine(&store, bystander)?;
    }
    // An intruder also rewrites the index head to match the shortened log, but
    // cannot produce the MAC without the key.
    {
        let db = raw_sled(dir.path());
        let mut rkey = vec![b'r'];
        rkey.extend_from_slice(victim.as_bytes());
        let raw = db.get(&rkey)?.expect("index entry");
        let (mut s, _): (ferry_store::RunSummary, usize) =
            bincode::serde::decode_from_slice(&raw[1..], bincode::config::standard())?;
        let last = Envelope::decode(&db.get(event_key(victim, 4))?.expect("seq 4"))?;
        s.next_seq = 5;
        s.head_hash = last.hash();
        let mut out = vec![1u8];
        out.extend(bincode::serde::encode_to_vec(
            &s,
            bincode::config::standard(),
        )?);
        db.insert(rkey, out)?;
        close_raw_sled(db, dir.path());
        // With write access to the dir, the intruder also removes the
        // clean-shutdown marker, which would otherwise refuse the open.
        std::fs::remove_file(dir.path().join("CLEAN"))?;
    }
    let store = open(dir.path());
    let r = store.verify(victim)?;
    assert!(!r.ok, "{r:?}");
    assert!(r.problem.unwrap().contains("MAC"));
    assert_bystander_fine(&store, bystander)
}

#[tokio::test]
async fn another_key_fails_the_mac() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (victim, _) = two_runs(dir.path()).await?;
    let store = Store::open(StoreOptions {
        mac_key: Key32::from_bytes([1; 32]),
        ..opts(dir.path())
    })?;
    let r = store.verify(victim)?;
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, None);
    assert!(r.problem.unwrap().contains("MAC"));
    // The chain itself still reads.
    assert_eq!(store.read(victim, 0)?.len(), 6);
    assert!(matches!(
        store.verify(RunId::new()),
        Err(Error::UnknownRun(_))
    ));
    Ok(())
}

#[tokio::test]
async fn undecodable_event_is_corrupt_for_that_run_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (victim, bystander) = two_runs(dir.path()).await?;
    {
        let db = raw_sled(dir.path());
        db.insert(event_key(victim, 3), &b"\x09garbage"[..])?;
        close_raw_sled(db, dir.path());
    }
    let store = open(dir.path());
    match store.read(victim, 0) {
        Err(e @ Error::Corrupt { .. }) => {
            let Error::Corrupt { run, seq, .. } = &e else {
                unreachable!()
            };
            assert_eq!((*run, *seq), (victim, 3));
            assert!(e.to_string().contains(&victim.to_string()));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(store.verify(victim)?.first_bad_seq, Some(3));
    assert_eq!(
        store.read(victim, 4)?.len(),
        2,
        "the records after it still read"
    );
    assert_bystander_fine(&store, bystander)
}

/// Flips bytes all over sled's data file. sled itself treats a damaged record
/// as a torn tail and silently drops it and everything after; the clean-shutdown
/// marker turns that into a clear open error naming the path. Never a panic.
#[tokio::test]
async fn damaged_db_file_never_panics_nor_loses_runs_silently() -> anyhow::Result<()> {
    for (i, fraction) in [0.1f64, 0.3, 0.5, 0.8].into_iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let (victim, bystander) = two_runs(dir.path()).await?;
        let path = dir.path().join("sled").join("db");
        let mut bytes = std::fs::read(&path)?;
        let at = (bytes.len() as f64 * fraction) as usize;
        let end = (at + 64).min(bytes.len());
        for b in &mut bytes[at..end] {
            *b ^= 0xA5;
        }
        std::fs::write(&path, &bytes)?;
        match Store::open(opts(dir.path())) {
            Err(e @ Error::Open { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&dir.path().join("sled").display().to_string()),
                    "{msg}"
                );
                eprintln!("case {i}: open refused: {msg}");
            }
            Err(other) => panic!("case {i}: unexpected error {other}"),
            Ok(store) => {
                // Whatever sled kept must be all there, or named with run and seq.
                for run in [victim, bystander] {
                    match store.read(run, 0) {
                        Ok(log) => assert!(store.verify(run)?.ok, "case {i}: {} events", log.len()),
                        Err(Error::Corrupt {
                            run: r,
                            seq,
                            reason,
                        }) => {
                            assert_eq!(r, run);
                            eprintln!("case {i}: run {run} corrupt at {seq}: {reason}");
                        }
                        Err(other) => {
                            panic!("case {i}: run {run} silently lost or other error: {other}")
                        }
                    }
                }
                continue;
            }
        }
        // The operator accepts the loss: what sled kept opens and verifies.
        std::fs::remove_file(dir.path().join("CLEAN"))?;
        let store = Store::open(opts(dir.path()))?;
        for s in store.list()? {
            let r = store.verify(s.run)?;
            assert!(r.ok, "case {i}: {r:?}");
        }
    }
    Ok(())
}

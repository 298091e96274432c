//! Appending, reading, the index, reopening, locking, group commit, subscribers, poisoning.

mod common;

use std::collections::HashSet;

use common::{events, open, opts, update};
use ferry_store::{Envelope, Error, RunId, Store, genesis_hash};

#[tokio::test]
async fn append_then_read_round_trips_and_chains() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let run = RunId::new();
    let a = store
        .append(
            run,
            0,
            1000,
            events("a", 3),
            update("shop", "Planning", false),
        )
        .await?;
    assert_eq!((a.first_seq, a.next_seq), (0, 3));
    let b = store
        .append(
            run,
            3,
            2000,
            events("b", 2),
            update("shop", "Running", false),
        )
        .await?;
    assert_eq!((b.first_seq, b.next_seq), (3, 5));

    let log = store.read(run, 0)?;
    assert_eq!(log.len(), 5);
    let mut prev = genesis_hash(run);
    for (i, env) in log.iter().enumerate() {
        assert_eq!(env.seq, i as u64);
        assert_eq!(env.prev_hash, prev);
        assert_eq!(env.at_ms, if i < 3 { 1000 } else { 2000 });
        prev = env.hash();
    }
    assert_eq!(prev, b.head_hash);
    assert_eq!(log[4].event, b"b-1");
    assert_eq!(store.read(run, 3)?, log[3..].to_vec());
    assert!(store.read(run, 9)?.is_empty());
    // A part of the log: its head, a middle, and a range past its end.
    assert_eq!(store.read_between(run, 0, 2)?, log[..2].to_vec());
    assert_eq!(store.read_between(run, 1, 3)?, log[1..3].to_vec());
    assert_eq!(store.read_between(run, 2, 99)?, log[2..].to_vec());
    assert!(store.read_between(run, 3, 3)?.is_empty());

    let s = store.summary(run)?.expect("summary");
    assert_eq!(
        (s.next_seq, s.head_hash, s.phase.as_str()),
        (5, b.head_hash, "Running")
    );
    assert_eq!((s.created_ms, s.updated_ms), (1000, 2000));
    assert!(store.verify(run)?.ok);
    assert!(matches!(
        store.read(RunId::new(), 0),
        Err(Error::UnknownRun(_))
    ));
    Ok(())
}

#[tokio::test]
async fn seq_mismatch_writes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let run = RunId::new();
    store
        .append(run, 0, 1, events("a", 2), update("x", "P", false))
        .await?;
    for wrong in [0, 1, 3, 100] {
        let err = store
            .append(run, wrong, 2, events("bad", 1), update("x", "Q", false))
            .await
            .unwrap_err();
        match err {
            Error::SeqMismatch {
                run: r,
                expected,
                actual,
            } => assert_eq!((r, expected, actual), (run, wrong, 2)),
            other => panic!("expected SeqMismatch, got {other}"),
        }
    }
    // A new run must start at 0.
    let fresh = RunId::new();
    assert!(matches!(
        store
            .append(fresh, 1, 1, events("a", 1), update("y", "P", false))
            .await,
        Err(Error::SeqMismatch {
            expected: 1,
            actual: 0,
            ..
        })
    ));
    assert!(store.summary(fresh)?.is_none());
    assert_eq!(store.read(run, 0)?.len(), 2);
    assert_eq!(store.summary(run)?.unwrap().phase, "P");
    assert!(matches!(
        store
            .append(run, 2, 1, vec![], update("x", "P", false))
            .await,
        Err(Error::EmptyAppend(_))
    ));
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.read(run, 0)?.len(), 2);
    assert!(store.verify(run)?.ok);
    Ok(())
}

#[tokio::test]
async fn names_are_unique_and_found() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let first = RunId::new();
    store
        .append(first, 0, 1, events("a", 1), update("shop", "P", false))
        .await?;
    let second = RunId::new();
    match store
        .append(second, 0, 1, events("a", 1), update("shop", "P", false))
        .await
    {
        Err(Error::NameTaken { name, existing }) => {
            assert_eq!((name.as_str(), existing), ("shop", first))
        }
        other => panic!("expected NameTaken, got {other:?}"),
    }
    assert!(store.summary(second)?.is_none());
    // Later appends of the same run may repeat its name.
    store
        .append(first, 1, 2, events("b", 1), update("shop", "Q", false))
        .await?;
    assert_eq!(store.find_by_name("shop")?.unwrap().run, first);
    assert!(store.find_by_name("nope")?.is_none());

    // Two new runs racing for one name in the same group: exactly one wins.
    let (x, y) = (RunId::new(), RunId::new());
    let (rx, ry) = tokio::join!(
        store.append(x, 0, 1, events("x", 1), update("race", "P", false)),
        store.append(y, 0, 1, events("y", 1), update("race", "P", false)),
    );
    assert!(rx.is_ok() != ry.is_ok(), "{rx:?} {ry:?}");
    Ok(())
}

#[tokio::test]
async fn list_comes_from_the_index_and_survives_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    {
        let store = open(dir.path());
        for i in 0..5 {
            let run = RunId::new();
            runs.push(run);
            store
                .append(
                    run,
                    0,
                    10 + i,
                    events("a", 2),
                    update(&format!("r{i}"), "Running", false),
                )
                .await?;
            if i % 2 == 0 {
                let mut u = update(&format!("r{i}"), "Succeeded", true);
                u.current_step = Some("health".into());
                store.append(run, 2, 20 + i, events("end", 1), u).await?;
            }
        }
        let listed: Vec<RunId> = store.list()?.iter().map(|s| s.run).collect();
        let mut sorted = runs.clone();
        sorted.sort();
        assert_eq!(listed, sorted);
    }
    let store = open(dir.path());
    let list = store.list()?;
    assert_eq!(list.len(), 5);
    assert!(list.windows(2).all(|w| w[0].run < w[1].run));
    let unfinished: HashSet<RunId> = store.list_unfinished()?.iter().map(|s| s.run).collect();
    assert_eq!(unfinished, HashSet::from([runs[1], runs[3]]));
    for s in &list {
        // The index and the events agree after reopen.
        let log = store.read(s.run, 0)?;
        assert_eq!(log.len() as u64, s.next_seq);
        assert_eq!(log.last().unwrap().hash(), s.head_hash);
        assert!(store.verify(s.run)?.ok);
    }
    let done = store.summary(runs[0])?.unwrap();
    assert_eq!(
        (
            done.phase.as_str(),
            done.current_step.as_deref(),
            done.terminal
        ),
        ("Succeeded", Some("health"), true)
    );
    // A finished run takes no more events.
    assert!(matches!(
        store
            .append(runs[0], 3, 1, events("late", 1), update("r0", "X", false))
            .await,
        Err(Error::RunTerminal { .. })
    ));
    // New appends continue the chain after reopen.
    store
        .append(
            runs[1],
            2,
            99,
            events("more", 1),
            update("r1", "Running", false),
        )
        .await?;
    assert!(store.verify(runs[1])?.ok);
    Ok(())
}

#[test]
fn second_open_is_locked_and_drop_releases() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let clone = store.clone();
    match Store::open(opts(dir.path())) {
        Err(e @ Error::Locked { .. }) => {
            let Error::Locked { path } = &e else {
                unreachable!()
            };
            assert_eq!(path, &dir.path().join("LOCK"));
            let msg = e.to_string();
            assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
            assert!(msg.contains("another ferry process"), "{msg}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(store);
    // A clone still holds the dir.
    assert!(matches!(
        Store::open(opts(dir.path())),
        Err(Error::Locked { .. })
    ));
    drop(clone);
    // Right after the last clone drops, the dir opens again.
    for _ in 0..3 {
        let s = open(dir.path());
        drop(s);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runs_share_syncs() -> anyhow::Result<()> {
    const RUNS: usize = 64;
    const PER_RUN: u64 = 8;
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let before = store.sync_count();
    let mut tasks = Vec::new();
    for i in 0..RUNS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let run = RunId::new();
            for seq in 0..PER_RUN {
                let terminal = seq == PER_RUN - 1;
                let a = store
                    .append(
                        run,
                        seq,
                        seq,
                        vec![format!("{i}/{seq}").into_bytes()],
                        update(&format!("run-{i}"), "P", terminal),
                    )
                    .await?;
                assert_eq!(a.next_seq, seq + 1);
            }
            anyhow::Ok(run)
        }));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await??);
    }
    let syncs = store.sync_count() - before;
    let appends = RUNS as u64 * PER_RUN;
    assert!(
        syncs < appends,
        "{syncs} syncs for {appends} appends: no group commit"
    );
    for run in runs {
        let report = store.verify(run)?;
        assert!(report.ok, "{report:?}");
        assert_eq!(report.events, PER_RUN);
    }
    assert!(store.list_unfinished()?.is_empty());
    Ok(())
}

async fn drain(mut sub: ferry_store::Subscription) -> ferry_store::Result<Vec<Envelope>> {
    let mut out = Vec::new();
    while let Some(env) = sub.next().await? {
        out.push(env);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_event_once_in_order() -> anyhow::Result<()> {
    const N: u64 = 60;
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let run = RunId::new();
    // Started before the run exists.
    let early = tokio::spawn(drain(store.subscribe(run, 0)));
    let (half_tx, half_rx) = tokio::sync::oneshot::channel();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut half_tx = Some(half_tx);
            let mut seq = 0;
            while seq < N {
                // Batches of 1..=3 events, the last one terminal.
                let n = (seq % 3 + 1).min(N - seq);
                let evs = (seq..seq + n).map(|s| s.to_be_bytes().to_vec()).collect();
                let terminal = seq + n == N;
                store
                    .append(run, seq, seq, evs, update("sub", "P", terminal))
                    .await?;
                seq += n;
                if seq >= N / 2
                    && let Some(tx) = half_tx.take()
                {
                    let _ = tx.send(());
                }
            }
            anyhow::Ok(())
        })
    };
    half_rx.await?;
    // Started mid-way, from the start and from the middle.
    let mid = tokio::spawn(drain(store.subscribe(run, 0)));
    let mid_from = tokio::spawn(drain(store.subscribe(run, 17)));
    writer.await??;
    let late = drain(store.subscribe(run, 0)).await?;
    for (got, from) in [
        (early.await??, 0),
        (mid.await??, 0),
        (mid_from.await??, 17),
        (late, 0),
    ] {
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (from..N).collect::<Vec<_>>());
        for e in &got {
            assert_eq!(e.event, e.seq.to_be_bytes());
        }
    }
    Ok(())
}

#[tokio::test]
async fn sync_failure_poisons_the_store() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run = RunId::new();
    {
        let store = open(dir.path());
        store
            .append(run, 0, 1, events("ok", 2), update("p", "P", false))
            .await?;
        assert!(!store.is_poisoned());
        store.inject_sync_failure();
        assert!(matches!(
            store
                .append(run, 2, 2, events("lost", 1), update("p", "P", false))
                .await,
            Err(Error::Poisoned)
        ));
        assert!(store.is_poisoned());
        // Every later append is refused too, even a valid one for another run.
        assert!(matches!(
            store
                .append(run, 2, 3, events("x", 1), update("p", "P", false))
                .await,
            Err(Error::Poisoned)
        ));
        assert!(matches!(
            store
                .append(RunId::new(), 0, 3, events("x", 1), update("q", "P", false))
                .await,
            Err(Error::Poisoned)
        ));
        // The acknowledged part is still readable.
        assert_eq!(store.read(run, 0)?.len(), 2);
        assert!(Error::Poisoned.to_string().contains("restart"));
    }
    // After a restart the store is usable again; the unacknowledged batch may or
    // may not have reached the disk, and either way the chain verifies.
    let store = open(dir.path());
    assert!(!store.is_poisoned());
    let next = store.summary(run)?.unwrap().next_seq;
    assert!(next == 2 || next == 3, "{next}");
    assert!(store.verify(run)?.ok);
    store
        .append(run, next, 4, events("again", 1), update("p", "P", false))
        .await?;
    assert!(store.verify(run)?.ok);
    Ok(())
}

#[tokio::test]
async fn delete_run_needs_a_terminal_run_and_frees_its_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());
    let run = RunId::new();
    store
        .append(run, 0, 1, events("a", 2), update("gone", "Running", false))
        .await?;
    let blob = store.put_blob(run, b"bundle", true)?;
    assert!(matches!(
        store.delete_run(run),
        Err(Error::NotTerminal { .. })
    ));
    store
        .append(run, 2, 2, events("end", 1), update("gone", "Failed", true))
        .await?;
    store.delete_run(run)?;
    assert!(store.summary(run)?.is_none());
    assert!(store.find_by_name("gone")?.is_none());
    assert!(matches!(store.read(run, 0), Err(Error::UnknownRun(_))));
    assert!(matches!(
        store.get_blob(&blob),
        Err(Error::BlobMissing { .. })
    ));
    assert!(matches!(store.delete_run(run), Err(Error::UnknownRun(_))));
    let other = RunId::new();
    store
        .append(other, 0, 1, events("b", 1), update("gone", "P", false))
        .await?;
    drop(store);
    let store = open(dir.path());
    assert!(store.summary(run)?.is_none());
    assert_eq!(store.find_by_name("gone")?.unwrap().run, other);
    Ok(())
}

#[test]
fn handles_and_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    send_sync::<Error>();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let run = RunId::new();
    send(&store.append(run, 0, 0, vec![], update("s", "P", false)));
    let mut sub = store.subscribe(run, 0);
    send(&sub.next());
}

/// Events over sled's inline limit (~128 KiB) go to sled's own blob files,
/// which sled never fsyncs; the committer fsyncs them. They must round-trip.
#[tokio::test]
async fn large_events_round_trip_through_sled_blob_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run = RunId::new();
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    {
        let store = open(dir.path());
        store
            .append(
                run,
                0,
                1,
                vec![big.clone(), b"small".to_vec()],
                update("big", "P", false),
            )
            .await?;
        store
            .append(run, 2, 2, vec![big.clone()], update("big", "P", true))
            .await?;
    }
    let store = open(dir.path());
    let log = store.read(run, 0)?;
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].event, big);
    assert_eq!(log[2].event, big);
    assert!(store.verify(run)?.ok);
    Ok(())
}

/// The clean-shutdown marker exists only while the store is closed, so a crash
/// (which may legitimately lose sled's unsynced tail) never meets a stale one.
#[tokio::test]
async fn clean_marker_exists_only_while_closed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("CLEAN");
    let store = open(dir.path());
    assert!(!marker.exists());
    store
        .append(RunId::new(), 0, 1, events("a", 1), update("m", "P", false))
        .await?;
    drop(store);
    assert!(std::fs::read_to_string(&marker)?.contains("runs 1 events 1"));
    let store = open(dir.path());
    assert!(!marker.exists());
    store.inject_sync_failure();
    let _ = store
        .append(RunId::new(), 0, 1, events("b", 1), update("n", "P", false))
        .await;
    drop(store);
    assert!(!marker.exists(), "a poisoned store vouches for nothing");
    let store = open(dir.path());
    assert!(store.list()?.len() <= 2);
    Ok(())
}

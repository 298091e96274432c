//! Measurements, not checks: run with
//! `cargo test -p ferry-store --release --test measure -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use common::{open, update};
use ferry_store::RunId;

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints numbers"]
async fn durable_append_rate_and_bytes_per_event() -> anyhow::Result<()> {
    const EVENT: usize = 200;
    let dir = tempfile::tempdir()?;
    let store = open(dir.path());

    // One run, one event per append, each waited for: the engine's worst case.
    let run = RunId::new();
    let n = 2000u64;
    let t = Instant::now();
    for seq in 0..n {
        store
            .append(
                run,
                seq,
                seq,
                vec![vec![7; EVENT]],
                update("seq", "P", false),
            )
            .await?;
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "sequential: {n} durable appends in {secs:.2}s = {:.0}/s, {} syncs",
        n as f64 / secs,
        store.sync_count()
    );

    // 64 runs appending at once: group commit.
    let before = store.sync_count();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let run = RunId::new();
            for seq in 0..100u64 {
                store
                    .append(
                        run,
                        seq,
                        seq,
                        vec![vec![7; EVENT]],
                        update(&format!("c{i}"), "P", false),
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "64 runs x 100: {:.0} appends/s, {} syncs for 6400 appends",
        6400.0 / secs,
        store.sync_count() - before
    );
    drop(store);
    let total = n + 6400;
    let bytes = dir_bytes(&dir.path().join("sled"));
    eprintln!(
        "sled dir after {total} events of {EVENT} B: {bytes} B = {:.0} B/event",
        bytes as f64 / total as f64
    );
    Ok(())
}

//! Benchmark of the event log and the engine's replay, on this machine's
//! disk, printing ratios measured in the same run:
//!
//! - raw file append + fdatasync p50/p99 (the floor for a durable append);
//! - store append p50/p99 for one writer;
//! - durable events/s for 1, 16 and 64 concurrent runs (group commit);
//! - replay (read + decode + fold) events/s on a 100k-event log;
//! - disk bytes per event.
//!
//! Run: `cargo bench -p ferry-engine --bench log`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_engine::{Event, Json, RunState, StepDecl, load_state};
use ferry_store::{IndexUpdate, Key32, RunId, Store, StoreOptions};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(p).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// A typical small event: a step start (about 60 bytes encoded).
fn typical_event(i: u64) -> Vec<u8> {
    Event::StepProgress {
        step: format!("upload/shop/data-db-{}", i % 3).into(),
        checkpoint: Json(format!(r#"{{"bytes":{},"chunks":{}}}"#, i * 4_194_304, i)),
    }
    .encode()
}

fn update(name: &str) -> IndexUpdate {
    IndexUpdate {
        name: name.into(),
        phase: "Running".into(),
        current_step: Some("upload/shop/data-db-0".into()),
        terminal: false,
    }
}

fn open_store(dir: &Path) -> Store {
    Store::open(StoreOptions {
        dir: dir.join("state"),
        mac_key: Key32::from_bytes([7; 32]),
        blob_key: None,
    })
    .expect("store opens")
}

/// Raw file append+fdatasync, sled alone (insert, flush, fdatasync) and a
/// store append, one sample of each in turn.
async fn interleaved(
    dir: &Path,
    store: &Store,
    n: usize,
) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let mut raw_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .unwrap();
    let db = sled::open(dir.join("sled-floor")).unwrap();
    let db_file = std::fs::File::open(dir.join("sled-floor").join("db")).unwrap();
    let record = typical_event(1);
    let run = RunId::new();
    let name = format!("single-{}", run.short());
    let (mut raw, mut floor, mut single) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for i in 0..n {
        let t = Instant::now();
        raw_file.write_all(&record).unwrap();
        raw_file.sync_data().unwrap();
        raw.push(t.elapsed());

        let t = Instant::now();
        db.insert((i as u64).to_be_bytes(), record.clone()).unwrap();
        db.flush().unwrap();
        db_file.sync_data().unwrap();
        floor.push(t.elapsed());

        let t = Instant::now();
        store
            .append(
                run,
                i as u64,
                i as u64,
                vec![typical_event(i as u64)],
                update(&name),
            )
            .await
            .unwrap();
        single.push(t.elapsed());
    }
    raw.sort();
    floor.sort();
    single.sort();
    (raw, floor, single)
}

async fn concurrent(store: &Store, runs: usize, per_run: u64) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..runs {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let run = RunId::new();
            let name = format!("c{runs}-{r}-{}", run.short());
            for seq in 0..per_run {
                store
                    .append(run, seq, seq, vec![typical_event(seq)], update(&name))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (runs as u64 * per_run) as f64 / start.elapsed().as_secs_f64()
}

/// A 100k-event log of a realistic shape: 20k steps, each started, three
/// checkpoints, succeeded.
async fn big_log(store: &Store) -> (RunId, u64) {
    let run = RunId::new();
    let steps = 20_000u64;
    let decls: Vec<StepDecl> = (0..steps)
        .map(|i| StepDecl {
            id: format!("upload/shop/vol-{i}").into(),
            kind: "upload".into(),
            version: 1,
            input: Json(format!(r#"{{"pvc":"vol-{i}"}}"#)),
            deps: if i == 0 {
                vec![]
            } else {
                vec![format!("upload/shop/vol-{}", i - 1).into()]
            },
            critical: true,
            max_attempts: 5,
            attempt_timeout_ms: None,
            deadline_ms: None,
        })
        .collect();
    let mut events = vec![
        Event::RunSubmitted {
            name: "big".into(),
            workflow: "bench".into(),
            spec: Json("{}".into()),
        },
        Event::Planned { steps: decls },
    ];
    for i in 0..steps {
        let step: ferry_engine::StepId = format!("upload/shop/vol-{i}").into();
        events.push(Event::StepStarted {
            step: step.clone(),
            attempt: 1,
            deadline_ms: None,
        });
        for c in 0..3 {
            events.push(Event::StepProgress {
                step: step.clone(),
                checkpoint: Json(format!(r#"{{"bytes":{c}}}"#)),
            });
        }
        events.push(Event::StepSucceeded {
            step,
            output: Json(r#"{"chunks":12}"#.into()),
            warnings: vec![],
        });
    }
    // Check the log folds before writing it.
    let mut state = RunState::default();
    for (i, e) in events.iter().enumerate() {
        state.apply(i as u64, i as u64, e).unwrap();
    }
    let mut seq = 0u64;
    for chunk in events.chunks(1000) {
        let encoded: Vec<Vec<u8>> = chunk.iter().map(Event::encode).collect();
        store
            .append(run, seq, seq, encoded, update("big"))
            .await
            .unwrap();
        seq += chunk.len() as u64;
    }
    (run, seq)
}

fn main() {
    // The daemon runs a multi-thread runtime: measure there.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let tmp = tempfile::tempdir_in(std::env::var("FERRY_BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .unwrap();
    let dir = tmp.path();
    println!("ferry event log benchmark (dir {})", dir.display());

    // The three single-writer measurements are interleaved sample by sample,
    // so that a shared machine's noise falls on all three alike.
    let store = open_store(dir);
    let (raw, floor, single) = interleaved(dir, &store, 2000).await;
    println!(
        "raw append+fdatasync: p50 {:.3} ms  p99 {:.3} ms",
        ms(percentile(&raw, 0.5)),
        ms(percentile(&raw, 0.99))
    );
    println!(
        "sled floor (insert + flush + fdatasync, no ferry code): p50 {:.3} ms  p99 {:.3} ms",
        ms(percentile(&floor, 0.5)),
        ms(percentile(&floor, 0.99))
    );
    let single_rate = single.len() as f64 / single.iter().map(Duration::as_secs_f64).sum::<f64>();
    println!(
        "store append (1 writer): p50 {:.3} ms  p99 {:.3} ms  ({:.0} durable events/s)",
        ms(percentile(&single, 0.5)),
        ms(percentile(&single, 0.99)),
        single_rate
    );

    let mut rates = Vec::new();
    for runs in [1usize, 16, 64] {
        let per_run = (4000 / runs as u64).max(100);
        let rate = concurrent(&store, runs, per_run).await;
        println!("concurrent runs {runs:>2}: {rate:.0} durable events/s");
        rates.push(rate);
    }

    let (big, n) = big_log(&store).await;
    let t = Instant::now();
    let state = load_state(&store, big).unwrap();
    let replay_rate = n as f64 / t.elapsed().as_secs_f64();
    assert_eq!(state.steps.len(), 20_000);
    println!("replay (read + decode + fold) of {n} events: {replay_rate:.0} events/s");

    let total_events: u64 = store.list().unwrap().iter().map(|s| s.next_seq).sum();
    drop(store);
    let bytes = dir_bytes(&dir.join("state"));
    println!(
        "disk: {bytes} bytes for {total_events} events = {:.0} bytes/event",
        bytes as f64 / total_events as f64
    );

    println!(
        "ratio store_p50_vs_sled_floor={:.2}",
        ms(percentile(&single, 0.5)) / ms(percentile(&floor, 0.5))
    );
    println!(
        "ratio store_p50_vs_fdatasync={:.2}",
        ms(percentile(&single, 0.5)) / ms(percentile(&raw, 0.5))
    );
    println!("ratio concurrent64_vs_single={:.2}", rates[2] / rates[0]);
    println!("ratio replay_vs_append={:.1}", replay_rate / single_rate);
}

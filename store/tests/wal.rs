//! The write-ahead log across real crashes: a child process appends, is killed
//! with SIGKILL (no destructor, no flush, no clean shutdown), and the state dir
//! is opened again — sometimes after damaging the WAL or sled the way a disk
//! or an operator might.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{events, open, opts, update, wal_active_records};
use ferry_store::{Error, RunId, Store};

const CHILD_SCENARIO: &str = "FERRY_WAL_CHILD";
const CHILD_DIR: &str = "FERRY_WAL_CHILD_DIR";

/// What a child acknowledged before it was killed: per run, its next seq.
#[derive(Debug, Default)]
struct Acked {
    runs: Vec<(RunId, u64)>,
}

/// Runs `scenario` in a child process (this test binary, running
/// [`child_main`]) on `dir`, waits until it says READY, and SIGKILLs it.
fn run_child_and_kill(dir: &Path, scenario: &str) -> Acked {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_main", "--nocapture", "--include-ignored"])
        .env(CHILD_SCENARIO, scenario)
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = Acked::default();
    let mut ready = false;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("ACKED ") {
            let (run, next) = rest.split_once(' ').expect("ACKED run next");
            let run: RunId = run.parse().expect("run id");
            let next: u64 = next.parse().expect("next seq");
            match acked.runs.iter_mut().find(|(r, _)| *r == run) {
                Some(entry) => entry.1 = next,
                None => acked.runs.push((run, next)),
            }
        } else if line == "READY" {
            ready = true;
            break;
        }
    }
    assert!(ready, "the child {scenario} never got ready");
    // SIGKILL: nothing of the store's shutdown runs.
    child.kill().expect("kill the child");
    let _ = child.wait();
    acked
}

/// The child side: runs a scenario, printing what was acknowledged, then waits to be killed.
#[test]
#[ignore = "run as a child process by the other tests in this file"]
fn child_main() {
    let (Ok(scenario), Ok(dir)) = (std::env::var(CHILD_SCENARIO), std::env::var(CHILD_DIR)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = open(Path::new(&dir));
        // Nothing reaches sled's file from here on: acknowledged commits live in
        // the WAL (and sled's memory) only.
        store.pause_sled_sync(true);
        let say = |run: RunId, next: u64| println!("ACKED {run} {next}");
        match scenario.as_str() {
            // Several runs, several appends each.
            "appends" => {
                for r in 0..3 {
                    let run = RunId::new();
                    let mut next = 0;
                    for i in 0..4 {
                        let a = store
                            .append(
                                run,
                                next,
                                10 + i,
                                events(&format!("r{r}a{i}"), 2),
                                update(&format!("run-{r}"), "Running", false),
                            )
                            .await
                            .expect("append");
                        next = a.next_seq;
                        say(run, next);
                    }
                }
            }
            // Commits that sled already holds when the process dies: sled is
            // synced after them, but no WAL record says so yet.
            "synced" => {
                let run = RunId::new();
                let a = store
                    .append(
                        run,
                        0,
                        1,
                        events("kept", 3),
                        update("kept", "Running", false),
                    )
                    .await
                    .expect("append");
                say(run, a.next_seq);
                let gone = RunId::new();
                store
                    .append(
                        gone,
                        0,
                        1,
                        events("gone", 2),
                        update("gone", "Failed", true),
                    )
                    .await
                    .expect("append");
                store.delete_run(gone).expect("delete");
                println!("DELETED {gone}");
                store.sync_sled_now().expect("sync sled");
            }
            // sled synced in the middle, so that later records carry a sync point.
            "sync-point" => {
                let run = RunId::new();
                let a = store
                    .append(run, 0, 1, events("b", 2), update("b", "Running", false))
                    .await
                    .expect("append");
                say(run, a.next_seq);
                store.sync_sled_now().expect("sync sled");
                let a = store
                    .append(
                        run,
                        a.next_seq,
                        2,
                        events("c", 2),
                        update("b", "Running", false),
                    )
                    .await
                    .expect("append");
                say(run, a.next_seq);
            }
            other => panic!("unknown child scenario {other}"),
        }
        println!("READY");
        std::future::pending::<()>().await;
    });
}

/// Every acknowledged append is there, in order, and verifies.
fn assert_acked(store: &Store, acked: &Acked) -> anyhow::Result<()> {
    assert!(!acked.runs.is_empty());
    for (run, next) in &acked.runs {
        let s = store
            .summary(*run)?
            .expect("an acknowledged run is on record");
        assert_eq!(s.next_seq, *next, "run {run}");
        assert_eq!(store.read(*run, 0)?.len() as u64, *next);
        let r = store.verify(*run)?;
        assert!(r.ok, "{r:?}");
    }
    Ok(())
}

#[test]
fn acknowledged_commits_only_in_the_wal_survive_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let acked = run_child_and_kill(dir.path(), "appends");
    assert_eq!(acked.runs.len(), 3);
    let rt = tokio::runtime::Runtime::new()?;
    {
        let store = open(dir.path());
        let (replayed, lacked) = store.wal_replayed();
        // 12 appends, one commit each; sled's file had none of them.
        assert_eq!((replayed, lacked), (12, 12));
        assert_acked(&store, &acked)?;
        // The chains go on.
        let (run, next) = acked.runs[0];
        rt.block_on(store.append(
            run,
            next,
            99,
            events("more", 1),
            update("run-0", "Running", false),
        ))?;
    }
    // A clean shutdown leaves nothing to replay.
    let store = open(dir.path());
    assert_eq!(store.wal_replayed(), (0, 0));
    assert_eq!(
        store.summary(acked.runs[0].0)?.unwrap().next_seq,
        acked.runs[0].1 + 1
    );
    Ok(())
}

#[test]
fn a_torn_wal_tail_is_discarded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let acked = run_child_and_kill(dir.path(), "appends");
    // A crash in the middle of writing the next commit: a record header that
    // promises more than was written. It was never acknowledged.
    let (segment, records) = wal_active_records(dir.path());
    let last = *records.last().expect("records");
    let mut bytes = std::fs::read(&segment)?;
    let len = u32::from_le_bytes(bytes[last + 4..last + 8].try_into()?) as usize;
    let end = last + (40 + len).div_ceil(8) * 8;
    let commit = u64::from_le_bytes(bytes[last + 8..last + 16].try_into()?);
    let mut torn = bytes[last..last + 40].to_vec();
    torn[4..8].copy_from_slice(&300u32.to_le_bytes());
    torn[8..16].copy_from_slice(&(commit + 1).to_le_bytes());
    torn.extend_from_slice(&[0x5a; 120]);
    bytes[end..end + torn.len()].copy_from_slice(&torn);
    std::fs::write(&segment, &bytes)?;

    let store = open(dir.path());
    assert_eq!(store.wal_replayed(), (12, 12));
    assert_acked(&store, &acked)?;
    drop(store);
    // And the log goes on from there, across another reopen.
    let store = open(dir.path());
    assert_acked(&store, &acked)?;
    Ok(())
}

#[test]
fn a_damaged_record_in_the_middle_of_the_wal_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    run_child_and_kill(dir.path(), "appends");
    let (segment, records) = wal_active_records(dir.path());
    assert!(records.len() >= 3);
    let mut bytes = std::fs::read(&segment)?;
    bytes[records[1] + 40 + 3] ^= 0x10;
    std::fs::write(&segment, &bytes)?;
    match Store::open(opts(dir.path())) {
        Err(e @ Error::Open { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("damaged in its middle"), "{msg}");
            assert!(msg.contains(&segment.display().to_string()), "{msg}");
            assert!(msg.contains("backup"), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    Ok(())
}

#[test]
fn replaying_commits_sled_already_holds_is_harmless() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let acked = run_child_and_kill(dir.path(), "synced");
    let store = open(dir.path());
    // Three commits (two appends and a deletion), all before the sync: all
    // replayed, none of them missing from sled.
    assert_eq!(store.wal_replayed(), (3, 0));
    assert_acked(&store, &acked)?;
    // The deleted run stays deleted: the replay applied its creation and its
    // deletion again, in order.
    assert_eq!(store.list()?.len(), 1);
    assert!(store.find_by_name("gone")?.is_none());
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.list()?.len(), 1);
    assert_acked(&store, &acked)?;
    Ok(())
}

#[test]
fn a_wal_that_lost_what_sled_holds_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // sled holds (and synced) all three commits; the WAL loses its last record.
    run_child_and_kill(dir.path(), "synced");
    let (segment, records) = wal_active_records(dir.path());
    let last = *records.last().expect("records");
    let mut bytes = std::fs::read(&segment)?;
    bytes[last..last + 40].fill(0);
    std::fs::write(&segment, &bytes)?;
    match Store::open(opts(dir.path())) {
        Err(e @ Error::Open { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("the log lost records"), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    Ok(())
}

#[test]
fn sled_behind_the_sync_point_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let first = RunId::new();
    {
        let store = open(dir.path());
        rt.block_on(store.append(first, 0, 1, events("a", 2), update("a", "Running", false)))?;
    }
    // A copy of sled as it was then, to put back later: sled "losing" what it
    // had synced since, as it does when it truncates its log at a damaged record.
    let old_sled = tempfile::tempdir()?;
    copy_dir(&dir.path().join("sled"), old_sled.path())?;
    let acked = run_child_and_kill(dir.path(), "sync-point");
    std::fs::remove_dir_all(dir.path().join("sled"))?;
    copy_dir(old_sled.path(), &dir.path().join("sled"))?;
    match Store::open(opts(dir.path())) {
        Err(e @ Error::Open { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("durable in it"), "{msg}");
            assert!(
                msg.contains(&dir.path().join("wal").display().to_string()),
                "{msg}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The operator accepts the loss as the message says: empty DIR/wal.
    for name in ["0", "1"] {
        std::fs::remove_file(dir.path().join("wal").join(name))?;
    }
    let store = open(dir.path());
    assert_eq!(store.read(first, 0)?.len(), 2);
    assert!(store.verify(first)?.ok);
    // What only the lost part held is gone.
    assert!(store.summary(acked.runs[0].0)?.is_none());
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

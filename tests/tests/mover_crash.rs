//! A cross-cluster clone killed with SIGKILL in the middle of a volume's
//! upload (after a checkpoint of it is durable, with puts in flight), then
//! resumed by a new process: the clone ends Succeeded with the volume equal
//! to its source, and the bytes sent to the bucket again are at most those
//! whose puts the kill cut short, counted from a put log the killed process
//! wrote as it went.

#[path = "../../steps/tests/common/mover_env.rs"]
mod mover_env;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_engine::{Event, Phase};
use ferry_steps::workflow::{MoverCheckpoint, MoverOutput};
use ferry_store::{Key32, Store, StoreOptions};
use mover_env::stores::PutRecord;
use mover_env::tree::{TreeSpec, compare_trees, make_tree};
use mover_env::{apply_yaml, clusters, pv_dir, sim, volumes_yaml};
use serde_json::json;

const CHILD: &str = env!("CARGO_BIN_EXE_ferry-clone-child");

fn child(
    dir: &Path,
    mode: &str,
    kubeconfigs: &[PathBuf],
    envs: &[(&str, String)],
) -> std::process::Child {
    let mut cmd = Command::new(CHILD);
    cmd.arg(dir)
        .arg(mode)
        .arg(dir.join("spec.json"))
        .args(kubeconfigs)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("child starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_upload_the_clone_resumes_and_resends_at_most_what_was_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = sim("prod", None).await;
    let dst = sim("staging", None).await;
    let source = clusters(&[&src]).get("prod").await.unwrap();
    apply_yaml(
        &source,
        &volumes_yaml("vol", &[("files", "ontap-nas", "ReadWriteOnce")]),
    )
    .await;
    let src_dir = pv_dir(&source, "vol", "files").await;
    // About 8 MB of stream: ~120 chunks of 64 KiB on average.
    make_tree(
        &src_dir,
        &TreeSpec {
            seed: 21,
            small_files: 250,
            small_max: 16 << 10,
            large_len: 6 << 20,
            sparse_len: 8 << 20,
        },
    )
    .unwrap();
    std::fs::write(
        dir.join("spec.json"),
        json!({"name": "moved", "sourceContext": "prod", "destinationContext": "staging",
            "namespaces": [{"source": "vol", "destination": "vol-copy"}]})
        .to_string(),
    )
    .unwrap();
    let kcs = vec![
        src.kubeconfig_path().to_owned(),
        dst.kubeconfig_path().to_owned(),
    ];
    let bucket_dir = dir.join("bucket");
    let (log1, log2) = (dir.join("puts-1.log"), dir.join("puts-2.log"));
    let bucket_env = ("FERRY_CHILD_BUCKET", bucket_dir.display().to_string());

    // 1. Killed after the fourth durable checkpoint of the upload.
    let mut first = child(
        dir,
        "submit",
        &kcs,
        &[
            bucket_env.clone(),
            ("FERRY_CHILD_PUT_LOG", log1.display().to_string()),
            ("FERRY_FAILPOINT", "mover.upload.checkpoint@4".into()),
        ],
    );
    let stderr = first.stderr.take().unwrap();
    let reached = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("FAILPOINT "))
    });
    let reached = tokio::time::timeout(Duration::from_secs(60), reached)
        .await
        .expect("failpoint in time")
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(reached, "the upload never reached its fourth checkpoint");

    let before = PutRecord::read(&log1).unwrap();
    let in_flight: u64 = before.in_flight_chunks().values().sum();
    let landed: Vec<&String> = before
        .done
        .iter()
        .filter(|p| p.contains("/chunks/"))
        .collect();
    let manifests = bucket_dir.join("ferry/manifests");
    assert!(
        !manifests.exists() || std::fs::read_dir(&manifests).unwrap().next().is_none(),
        "killed mid-upload: no manifest yet"
    );

    // 2. Resumed by a new process.
    let second = child(
        dir,
        "resume",
        &kcs,
        &[
            bucket_env,
            ("FERRY_CHILD_PUT_LOG", log2.display().to_string()),
        ],
    );
    let out = tokio::task::spawn_blocking(move || second.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!(" {}", Phase::Succeeded)),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    compare_trees(
        &src_dir,
        &pv_dir(
            &clusters(&[&dst]).get("staging").await.unwrap(),
            "vol-copy",
            "files",
        )
        .await,
    )
    .unwrap();

    // 3. What went to the bucket again: only puts the kill cut short.
    let after = PutRecord::read(&log2).unwrap();
    let started_before = before.chunks_started();
    let resent: u64 = after
        .chunks_started()
        .iter()
        .filter(|(p, _)| started_before.contains_key(*p))
        .map(|(_, n)| *n)
        .sum();
    let landed_again: Vec<&String> = landed
        .iter()
        .copied()
        .filter(|p| after.started.contains_key(*p))
        .collect();
    eprintln!(
        "killed with {} chunk puts landed and {} ({in_flight} B) in flight; the resume re-sent {resent} B and put {} chunks in all",
        landed.len(),
        before.in_flight_chunks().len(),
        after.chunks_started().len()
    );
    assert!(landed.len() >= 4, "four checkpoints mean chunks had landed");
    assert!(
        landed_again.is_empty(),
        "landed chunks put again: {landed_again:?}"
    );
    assert!(
        resent <= in_flight,
        "re-sent {resent} B > {in_flight} B in flight at the kill"
    );

    // 4. The log tells the same story: a durable checkpoint mid-upload, the
    // attempt interrupted, the resumed one skipping what was stored.
    let store = Store::open(StoreOptions {
        dir: dir.join("state"),
        mac_key: Key32::load_or_create(&dir.join("keys/audit.key")).unwrap(),
        blob_key: Some(Key32::load_or_create(&dir.join("keys/blob.key")).unwrap()),
    })
    .unwrap();
    let run = store.list().unwrap()[0].run;
    let step = "volume/vol-copy/files";
    let events: Vec<Event> = store
        .read(run, 0)
        .unwrap()
        .iter()
        .map(|e| Event::decode(&e.event).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::StepInterrupted { step: s, .. } if s.0 == step))
    );
    let checkpoints: Vec<MoverCheckpoint> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepProgress {
                step: s,
                checkpoint,
            } if s.0 == step => Some(checkpoint.decode().unwrap()),
            _ => None,
        })
        .collect();
    let output: MoverOutput = events
        .iter()
        .find_map(|e| match e {
            Event::StepSucceeded {
                step: s, output, ..
            } if s.0 == step => Some(output.decode().unwrap()),
            _ => None,
        })
        .unwrap();
    assert!(
        checkpoints
            .iter()
            .any(|c| c.upload.bytes_done > 0 && c.upload.bytes_done < output.bytes),
        "a checkpoint mid-upload is in the log"
    );
    assert!(
        output.chunks - output.chunks_uploaded >= landed.len() as u64,
        "the resumed upload skipped every chunk that had landed: {output:?}"
    );
    assert_eq!(
        output.chunks_uploaded,
        after.chunks_started().len() as u64,
        "{output:?}"
    );
    src.stop().await;
    dst.stop().await;
}

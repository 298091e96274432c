//! The data mover at clone level: cross-cluster clones through the
//! `volume-mover` step between two simulated clusters over real HTTP, with
//! real `tar` on both ends (run by the simulators' exec), into `file://` and
//! S3 buckets. Each test checks the destination volume against the source on
//! every attribute `tar` carries, and what went through the bucket.

#[path = "common/mover_env.rs"]
mod mover_env;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_engine::{Event, Phase};
use ferry_mover::Bucket;
use ferry_sim::FaultConfig;
use ferry_steps::workflow::{MoverPhase, MoverSettings};
use mover_env::s3::{S3_BUCKET, s3_options, start_s3};
use mover_env::stores::{
    CountingStore, FaultyStore, GateStore, ReadOnlyStore, RotStore, TraceStore,
};
use mover_env::tree::{TreeSpec, compare_trees, make_tree};
use mover_env::*;

/// A tree of a few MB with every attribute: ~200 small files, a 2 MiB file,
/// empty dirs, symlinks, hardlinks, a 16 MiB sparse file, a non-UTF-8 name,
/// owners, modes and mtimes.
fn small_tree(seed: u64) -> TreeSpec {
    TreeSpec {
        seed,
        small_files: 200,
        small_max: 16 << 10,
        large_len: 2 << 20,
        sparse_len: 16 << 20,
    }
}

/// One namespace `vol` with one PVC `files` (ontap-nas: snapshots, so the
/// mover reads a PVC made from a snapshot), filled with `tree`.
async fn seeded(w: &World, tree: &TreeSpec) -> std::path::PathBuf {
    let src = w.source().await;
    apply_yaml(
        &src,
        &volumes_yaml("vol", &[("files", "ontap-nas", "ReadWriteOnce")]),
    )
    .await;
    let dir = pv_dir(&src, "vol", "files").await;
    make_tree(&dir, tree).unwrap();
    dir
}

fn step_failures(w: &World, run: ferry_store::RunId, step: &str) -> Vec<String> {
    w.events(run)
        .into_iter()
        .filter_map(|e| match e {
            Event::StepFailed { step: s, error, .. } if s.0 == step => Some(error),
            _ => None,
        })
        .collect()
}

async fn assert_no_leftovers(w: &World, run: ferry_store::RunId) {
    let sel = format!("ferry.dev/temporary=true,ferry.dev/run={run}");
    for c in [w.source().await, w.destination().await] {
        for kind in ["Pod", "PersistentVolumeClaim"] {
            let left = c.list_kind("v1", kind, Some(&sel)).await.unwrap();
            assert!(left.is_empty(), "temporary {kind}s left: {left:?}");
        }
    }
}

/// The destination volume of `ns`'s mover pod was flushed to disk (`sync`)
/// after its last `tar -x` exited: the copy ended on disk, not in the page
/// cache. Returns the flushes seen in that pod.
fn assert_flushed_after_untar(w: &World, ns: &str) -> usize {
    let execs: Vec<_> = w
        .dst
        .execs()
        .into_iter()
        .filter(|e| e.namespace == ns && e.pod.contains("-down-"))
        .collect();
    let untar = execs
        .iter()
        .rfind(|e| e.command.first().map(String::as_str) == Some("tar"))
        .unwrap_or_else(|| panic!("no tar -x in {execs:?}"));
    let exited = untar.exited.expect("tar -x exited");
    let flushes: Vec<_> = execs
        .iter()
        .filter(|e| e.command.join(" ").contains("sync -f /data"))
        .collect();
    assert!(
        flushes
            .iter()
            .any(|f| f.started > exited && f.exited.is_some()),
        "no flush after tar -x: {execs:?}"
    );
    flushes.len()
}

/// Submits `spec`, which must be refused for one reason, before anything is
/// written on either cluster: the refusal's text.
async fn refused_writing_nothing(w: &World, spec: &ferry_steps::spec::CloneSpec) -> String {
    w.src.settle().await;
    w.dst.settle().await;
    let (src_rv, dst_rv) = (w.src.resource_version(), w.dst.resource_version());
    let (run, phase) = w.clone(spec).await;
    assert_eq!(phase, Phase::Refused, "{}", w.steps(run));
    let refusals = w.engine.load(run).unwrap().refusals;
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(
        (w.src.resource_version(), w.dst.resource_version()),
        (src_rv, dst_rv),
        "nothing written"
    );
    refusals[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attribute_survives_a_cross_cluster_clone() {
    let bucket_dir = tempfile::tempdir().unwrap();
    // Flushed behind the writes every MiB.
    let mover = MoverSettings {
        flush_every: 1 << 20,
        ..MoverSettings::default()
    };
    let w = World::start(file_bucket(bucket_dir.path()), mover).await;
    let src = seeded(&w, &small_tree(1)).await;

    let (run, phase) = w.clone(&spec("attrs", "vol", "vol-copy", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    let dst = w.dst_pv("vol-copy", "files").await;
    compare_trees(&src, &dst).unwrap();
    // A few MB: flushed behind the writes, and once more at the end.
    let flushes = assert_flushed_after_untar(&w, "vol-copy");
    assert!(flushes >= 2, "{flushes} flushes");

    // The volume was measured while the copy ran, and the checkpoints carry
    // the size from then on, through both phases.
    let out = w.output(run, "vol-copy", "files");
    let expected = out.expected_bytes.expect("du measured the volume");
    let ratio = out.bytes as f64 / expected as f64;
    assert!(
        (0.5..2.0).contains(&ratio),
        "stream {} B vs du {expected} B",
        out.bytes
    );
    let cps = w.checkpoints(run, "vol-copy", "files");
    let measured = cps
        .iter()
        .position(|c| c.expected_bytes.is_some())
        .expect("a checkpoint carries the size");
    assert!(
        cps[measured..]
            .iter()
            .all(|c| c.expected_bytes == Some(expected))
            && cps.iter().all(|c| c.upload.volume == "vol-files"),
        "{cps:?}"
    );
    assert_eq!(cps[0].phase, MoverPhase::Upload);
    assert_eq!(cps[0].upload.bytes_done, 0, "recorded before tar starts");
    let last = cps.last().unwrap();
    assert_eq!(last.phase, MoverPhase::Download);
    assert_eq!(last.upload.bytes_done, out.bytes);
    assert_no_leftovers(&w, run).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_through_an_s3_bucket_with_a_multipart_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_s3(&tmp.path().join("s3")).await.unwrap();
    let s3 = Bucket::open(
        &format!("s3://{S3_BUCKET}/installs"),
        &ferry_mover::BucketOptions {
            prefix: "ferry".into(),
            store_options: s3_options(&server),
            retry: fast_retry(),
        },
    )
    .unwrap();
    let counting = Arc::new(CountingStore::new(s3.store().clone(), Duration::ZERO));
    let bucket = Bucket::from_store(counting.clone(), "installs/ferry").with_retry(fast_retry());
    let mut mover = small_chunk_settings(4);
    // Every manifest goes up as a multipart upload.
    mover.upload.multipart_threshold = 0;
    let w = World::start(bucket.clone(), mover).await;
    let src = seeded(&w, &small_tree(2)).await;

    let (run, phase) = w.clone(&spec("s3", "vol", "vol-copy", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    compare_trees(&src, &w.dst_pv("vol-copy", "files").await).unwrap();
    assert!(counting.multiparts.load(Ordering::SeqCst) >= 1);
    let out = w.output(run, "vol-copy", "files");
    let manifest = bucket
        .read_manifest(&run.to_string(), "vol-files")
        .await
        .unwrap();
    assert_eq!(manifest.chunks.len() as u64, out.chunks);
    assert!(out.chunks > 20, "{out:?}");
    // The objects are where the layout says, in the S3 server's files.
    let h = manifest.chunks[0].hash.to_hex();
    assert!(
        server
            .root
            .join(format!("{S3_BUCKET}/installs/ferry/chunks/{}/{h}", &h[..2]))
            .exists()
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclone_uploads_almost_nothing_and_a_changed_file_only_its_chunks() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::start(file_bucket(bucket_dir.path()), small_chunk_settings(4)).await;
    let src = seeded(&w, &small_tree(3)).await;

    let (first, phase) = w.clone(&spec("first", "vol", "copy-1", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(first));
    let out1 = w.output(first, "copy-1", "files");
    assert_eq!(
        out1.chunks_uploaded, out1.chunks,
        "a first clone stores all"
    );

    // The same data again, under another name and destination.
    let (second, phase) = w.clone(&spec("second", "vol", "copy-2", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(second));
    let out2 = w.output(second, "copy-2", "files");
    eprintln!("unchanged re-clone: {out2:?}");
    assert!(
        out2.bytes_uploaded * 100 <= out2.bytes,
        "re-clone uploaded {} of {} bytes",
        out2.bytes_uploaded,
        out2.bytes
    );
    compare_trees(&src, &w.dst_pv("copy-2", "files").await).unwrap();

    // One file changed (100 bytes in the middle of the large one, its
    // mtime kept): only the chunks that hold the change are uploaded.
    let large = src.join("large.bin");
    let mtime = std::fs::metadata(&large).unwrap().modified().unwrap();
    let mut data = std::fs::read(&large).unwrap();
    let mid = data.len() / 2;
    data[mid..mid + 100].fill(0xAB);
    std::fs::write(&large, &data).unwrap();
    std::fs::File::open(&large)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    let (third, phase) = w.clone(&spec("third", "vol", "copy-3", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(third));
    compare_trees(&src, &w.dst_pv("copy-3", "files").await).unwrap();
    let stats = w
        .checkpoints(third, "copy-3", "files")
        .last()
        .unwrap()
        .upload
        .stats;
    let m2 = w
        .bucket
        .read_manifest(&second.to_string(), "vol-files")
        .await
        .unwrap();
    let m3 = w
        .bucket
        .read_manifest(&third.to_string(), "vol-files")
        .await
        .unwrap();
    let before: BTreeSet<_> = m2.chunks.iter().map(|c| c.hash).collect();
    let new: Vec<_> = m3
        .chunks
        .iter()
        .filter(|c| !before.contains(&c.hash))
        .collect();
    eprintln!(
        "one changed file: {} chunks, {} raw bytes uploaded of {}",
        stats.chunks_uploaded, stats.raw_bytes_uploaded, stats.bytes_read
    );
    assert!(
        (1..=3).contains(&stats.chunks_uploaded),
        "{} chunks uploaded for one changed spot",
        stats.chunks_uploaded
    );
    assert_eq!(stats.chunks_uploaded, new.len() as u64, "only new chunks");
    assert_eq!(
        stats.raw_bytes_uploaded,
        new.iter().map(|c| c.len).sum::<u64>()
    );
    assert!(stats.raw_bytes_uploaded <= 3 * u64::from(SMALL_CHUNKS.max));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_exec_stream_is_retried_and_no_short_copy_is_recorded() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::start(file_bucket(bucket_dir.path()), small_chunk_settings(4)).await;
    let src = seeded(&w, &small_tree(4)).await;

    // Every exec stream of the source is cut after 1 MiB of output until
    // the first cut happened; then the faults are cleared.
    w.src.set_faults(FaultConfig {
        drop_exec_after: Some(1 << 20),
        ..FaultConfig::default()
    });
    let clear = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while w.src.faults_injected() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        w.src.clear_faults();
    };
    let cut = spec("cut", "vol", "vol-copy", false);
    let ((run, phase), ()) = tokio::join!(w.clone(&cut), clear);
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    assert!(w.src.faults_injected() >= 1);
    compare_trees(&src, &w.dst_pv("vol-copy", "files").await).unwrap();
    // The cut is in the log as a failed attempt, retried.
    let failures = step_failures(&w, run, "volume/vol-copy/files");
    assert!(!failures.is_empty(), "{}", w.steps(run));
    assert!(
        failures
            .iter()
            .all(|m| m.contains("tar -c") && m.contains("without an exit status")),
        "{failures:?}"
    );
    // The chunks stored before the cut were not sent again.
    let out = w.output(run, "vol-copy", "files");
    assert!(out.chunks_uploaded < out.chunks, "{out:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_failing_5_percent_of_requests_still_clones() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let base = file_bucket(bucket_dir.path());
    let faulty = Arc::new(FaultyStore::new(base.store().clone(), 0.05, 7));
    let bucket = Bucket::from_store(faulty.clone(), "ferry").with_retry(fast_retry());
    let w = World::start(bucket, small_chunk_settings(4)).await;
    let src = seeded(&w, &small_tree(5)).await;

    let (run, phase) = w.clone(&spec("faulty", "vol", "vol-copy", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    compare_trees(&src, &w.dst_pv("vol-copy", "files").await).unwrap();
    let injected = faulty.injected.load(Ordering::SeqCst);
    let out = w.output(run, "vol-copy", "files");
    eprintln!(
        "{injected} faults in {} requests; {out:?}",
        faulty.requests.load(Ordering::SeqCst)
    );
    assert!(injected >= 5, "only {injected} faults injected");
    // The retries are in the log: in the step's output and its checkpoints.
    assert!(out.bucket_retries >= 1, "{out:?}");
    assert!(
        w.checkpoints(run, "vol-copy", "files")
            .iter()
            .any(|c| c.upload.stats.retries >= 1)
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_download_is_retried_without_reading_the_source_again() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let base = file_bucket(bucket_dir.path());
    let mover = small_chunk_settings(4);
    let outage = mover.download.concurrency as u64 * u64::from(fast_retry().max_attempts);
    let gate = Arc::new(GateStore::new(base.store().clone(), 0));
    let bucket = Bucket::from_store(gate.clone(), "ferry").with_retry(fast_retry());
    let w = World::start(bucket, mover).await;
    let src = seeded(&w, &small_tree(9)).await;

    // A first clone stores the chunks; its download takes them all from the
    // upload's memory and reads nothing back.
    let (first, phase) = w.clone(&spec("first", "vol", "vol-first", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(first));
    let out = w.output(first, "vol-first", "files");
    assert_eq!(
        (out.chunks_handed, out.bytes_fetched),
        (out.chunks, 0),
        "{out:?}"
    );

    // The second clone's download reads every chunk back from the bucket
    // (this clone did not write them). Once its upload is stored, chunk
    // reads fail for longer than the mover's own retries last: every read
    // of the download's first chunks, each attempt of each. (The failures
    // below are such reads: the gate fails nothing else.)
    gate.arm(outage);
    let (run, phase) = w.clone(&spec("retried", "vol", "vol-copy", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    compare_trees(&src, &w.dst_pv("vol-copy", "files").await).unwrap();
    assert_flushed_after_untar(&w, "vol-copy");

    let step = "volume/vol-copy/files";
    let failures = step_failures(&w, run, step);
    assert!(
        !failures.is_empty() && failures.iter().all(|f| f.contains("bucket get")),
        "{failures:?}"
    );
    // After the failure, the step's checkpoints are all of the download
    // phase: the stored upload was reused, the source not read again.
    let events = w.events(run);
    let failed_at = events
        .iter()
        .position(|e| matches!(e, Event::StepFailed { step: s, .. } if s.0 == step))
        .unwrap();
    let later: Vec<MoverPhase> = events[failed_at..]
        .iter()
        .filter_map(|e| match e {
            Event::StepProgress {
                step: s,
                checkpoint,
            } if s.0 == step => Some(
                checkpoint
                    .decode::<ferry_steps::workflow::MoverCheckpoint>()
                    .unwrap()
                    .phase,
            ),
            _ => None,
        })
        .collect();
    assert!(
        !later.is_empty() && later.iter().all(|p| *p == MoverPhase::Download),
        "{later:?}"
    );
    assert_no_leftovers(&w, run).await;
    w.stop().await;
}

/// The object of chunk `hex` in a `file://` bucket at `dir` (prefix `ferry`).
fn chunk_file(dir: &std::path::Path, hex: &str) -> std::path::PathBuf {
    dir.join(format!("ferry/chunks/{}/{hex}", &hex[..2]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_in_the_bucket_is_named_and_stored_again_from_the_source() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::start(file_bucket(bucket_dir.path()), small_chunk_settings(4)).await;
    let src = seeded(&w, &small_tree(6)).await;
    let (first, phase) = w.clone(&spec("first", "vol", "copy-1", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(first));
    // Preflight's probe of the bucket left nothing behind.
    let probes = bucket_dir.path().join("ferry/probes");
    assert!(
        !probes.exists() || std::fs::read_dir(&probes).unwrap().next().is_none(),
        "probe objects left"
    );

    // A stored chunk rots: one byte of the object flipped.
    let m = w
        .bucket
        .read_manifest(&first.to_string(), "vol-files")
        .await
        .unwrap();
    let hex = m.chunks[m.chunks.len() / 2].hash.to_hex();
    let path = chunk_file(bucket_dir.path(), &hex);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5A;
    std::fs::write(&path, &bytes).unwrap();

    // A second clone of the same data finds the chunk stored, and its
    // download refuses it, naming it. Only the source has the bytes: the
    // next attempt reads it again and stores that chunk over the bad one.
    let (second, phase) = w.clone(&spec("second", "vol", "copy-2", false)).await;
    assert_eq!(phase, Phase::SucceededWithWarnings, "{}", w.steps(second));
    let failures = step_failures(&w, second, "volume/copy-2/files");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains(&hex) && failures[0].contains("failed verification"),
        "{}",
        failures[0]
    );
    compare_trees(&src, &w.dst_pv("copy-2", "files").await).unwrap();
    let out = w.output(second, "copy-2", "files");
    assert_eq!(out.chunks_repaired, 1, "{out:?}");
    assert_eq!(out.chunks_uploaded, 1, "that chunk only: {out:?}");
    let warnings = w.engine.load(second).unwrap().warnings;
    assert!(
        warnings
            .iter()
            .any(|m| m.contains("vol/files") && m.contains(&hex) && m.contains("again")),
        "{warnings:?}"
    );
    // The object in the bucket is whole again, for every manifest naming
    // it: the first clone's stream reads back in full.
    let mut stream = Vec::new();
    ferry_mover::Download::new(&w.bucket, &m)
        .run(&mut stream)
        .await
        .unwrap();
    assert_eq!(stream.len() as u64, m.total_len);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_damages_a_chunk_stored_again_fails_the_clone_for_good() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let rot = Arc::new(RotStore::new(
        file_bucket(bucket_dir.path()).store().clone(),
    ));
    let bucket = Bucket::from_store(rot.clone(), "ferry").with_retry(fast_retry());
    // Every chunk is read back, so the download sees what the bucket keeps.
    let mut settings = small_chunk_settings(4);
    settings.download.read_back = true;
    let w = World::start(bucket, settings).await;
    seeded(&w, &small_tree(11)).await;
    let (first, phase) = w.clone(&spec("first", "vol", "copy-1", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(first));

    // One chunk rots, and the bucket damages it again whenever it is stored.
    let m = w
        .bucket
        .read_manifest(&first.to_string(), "vol-files")
        .await
        .unwrap();
    let hex = m.chunks[1].hash.to_hex();
    let path = chunk_file(bucket_dir.path(), &hex);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    rot.arm(&format!("ferry/chunks/{}/{hex}", &hex[..2]));

    let (second, phase) = w.clone(&spec("second", "vol", "copy-2", false)).await;
    assert_eq!(phase, Phase::RolledBack, "{}", w.steps(second));
    let failures = step_failures(&w, second, "volume/copy-2/files");
    assert_eq!(
        failures.len(),
        2,
        "found, stored again, found again: {failures:?}"
    );
    assert!(failures.iter().all(|f| f.contains(&hex)), "{failures:?}");
    assert!(
        failures[1].contains("damaged again") && failures[1].contains("Check the bucket"),
        "{}",
        failures[1]
    );
    assert_eq!(rot.rotted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_no_leftovers(&w, second).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_that_cannot_snapshot_are_copied_live() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::start(file_bucket(bucket_dir.path()), small_chunk_settings(4)).await;
    let src = w.source().await;
    // efs cannot snapshot: an RWX volume goes live on its own, an RWO one
    // only with allowLiveCopy.
    apply_yaml(
        &src,
        &volumes_yaml(
            "web",
            &[
                ("shared", "efs", "ReadWriteMany"),
                ("cache", "efs", "ReadWriteOnce"),
            ],
        ),
    )
    .await;
    let mut dirs = Vec::new();
    for (pvc, seed) in [("shared", 7), ("cache", 8)] {
        let dir = pv_dir(&src, "web", pvc).await;
        make_tree(&dir, &small_tree(seed)).unwrap();
        dirs.push((pvc, dir));
    }

    let (run, phase) = w.clone(&spec("live", "web", "web-copy", true)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    let dst = w.destination().await;
    for (pvc, dir) in &dirs {
        compare_trees(dir, &pv_dir(&dst, "web-copy", pvc).await).unwrap();
        let input: ferry_steps::workflow::VolumeInput = w.engine.load(run).unwrap().steps
            [&ferry_engine::StepId(format!("volume/web-copy/{pvc}"))]
            .decl
            .input
            .decode()
            .unwrap();
        assert_eq!(
            input.path,
            Some(ferry_steps::preflight::CopyPath::LiveViaMover)
        );
    }
    // No snapshot, and no temporary PVC: the live PVCs were read in place.
    assert!(
        src.list_kind("snapshot.storage.k8s.io/v1", "VolumeSnapshot", None)
            .await
            .unwrap()
            .is_empty()
    );
    let short = run.short();
    for pvc in ["shared", "cache"] {
        assert_eq!(
            w.src.create_count(
                "PersistentVolumeClaim",
                "web",
                &format!("ferry-{short}-src-{pvc}")
            ),
            0
        );
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_transfer_limit_of_one_two_volumes_never_transfer_at_once() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let base = file_bucket(bucket_dir.path());
    let trace = Arc::new(TraceStore::new(base.store().clone()));
    let bucket = Bucket::from_store(trace.clone(), "ferry").with_retry(fast_retry());
    // Every chunk read back, so that the bucket sees each download to its end.
    let mut settings = small_chunk_settings(1);
    settings.download.read_back = true;
    let w = World::start(bucket, settings).await;
    let src = w.source().await;
    apply_yaml(
        &src,
        &volumes_yaml(
            "two",
            &[
                ("a", "ontap-nas", "ReadWriteOnce"),
                ("b", "ontap-nas", "ReadWriteOnce"),
            ],
        ),
    )
    .await;
    for (pvc, seed) in [("a", 11), ("b", 12)] {
        make_tree(&w.src_pv("two", pvc).await, &small_tree(seed)).unwrap();
    }

    let (run, phase) = w.clone(&spec("limited", "two", "two-copy", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));

    // Each volume's transfer, as the bucket saw it: from its upload's lease
    // to the last read of a chunk only its manifest names.
    let mut owner: HashMap<String, &str> = HashMap::new();
    let mut manifests = Vec::new();
    for v in ["a", "b"] {
        let m = w
            .bucket
            .read_manifest(&run.to_string(), &format!("two-{v}"))
            .await
            .unwrap();
        manifests.push(m);
    }
    for (v, m) in ["a", "b"].iter().zip(&manifests) {
        for c in &m.chunks {
            let path = w.bucket.chunk_path(&c.hash).to_string();
            match owner.get(&path) {
                Some(o) if o != v => {
                    owner.insert(path, "both");
                }
                _ => {
                    owner.insert(path, v);
                }
            }
        }
    }
    let ops = trace.ops.lock().unwrap().clone();
    let span = |v: &str| {
        let lease = format!("/leases/{run}/two-{v}.");
        let start = ops
            .iter()
            .position(|(op, p)| *op == "put" && p.contains(&lease))
            .unwrap_or_else(|| panic!("no lease of volume {v}"));
        let end = ops
            .iter()
            .rposition(|(op, p)| *op == "get" && owner.get(p) == Some(&v))
            .unwrap_or_else(|| panic!("no chunk read of volume {v}"));
        (start, end)
    };
    let (a, b) = (span("a"), span("b"));
    eprintln!(
        "transfer spans in {} bucket requests: a {a:?}, b {b:?}",
        ops.len()
    );
    assert!(
        a.1 < b.0 || b.1 < a.0,
        "transfers overlapped: a {a:?}, b {b:?}"
    );
    compare_trees(
        &w.src_pv("two", "a").await,
        &w.dst_pv("two-copy", "a").await,
    )
    .unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_image_without_gnu_tar_fails_at_once_naming_the_image_and_the_fix() {
    // BusyBox's tar refuses --sparse: no retry can help, the image must change.
    let bucket_dir = tempfile::tempdir().unwrap();
    let image = "docker.io/library/busybox:1.36";
    let w = World::start_with_image(
        file_bucket(bucket_dir.path()),
        small_chunk_settings(4),
        image,
    )
    .await;
    seeded(&w, &small_tree(5)).await;
    let (run, phase) = w.clone(&spec("busybox", "vol", "vol-copy", false)).await;
    assert_eq!(phase, Phase::RolledBack, "{}", w.steps(run));
    let failures = step_failures(&w, run, "volume/vol-copy/files");
    assert_eq!(failures.len(), 1, "permanent, not retried: {failures:?}");
    let msg = &failures[0];
    for part in [
        "tar -c",
        "unrecognized option '--sparse'",
        image,
        "no GNU tar",
        ferry_steps::workflow::DEFAULT_MOVER_IMAGE,
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    assert_no_leftovers(&w, run).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_copy_of_a_volume_in_use_succeeds_with_a_warning_naming_the_changed_file() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicBool;
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::start(file_bucket(bucket_dir.path()), small_chunk_settings(4)).await;
    let src = w.source().await;
    apply_yaml(
        &src,
        &volumes_yaml("web", &[("shared", "efs", "ReadWriteMany")]),
    )
    .await;
    let dir = pv_dir(&src, "web", "shared").await;
    make_tree(&dir, &small_tree(21)).unwrap();
    // An application keeps writing one file all through the copy: GNU tar
    // sees it change while reading it, says so and exits 1.
    let busy = dir.join("busy.log");
    std::fs::write(&busy, vec![b'x'; 8 << 20]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, file) = (
            stop.clone(),
            std::fs::OpenOptions::new().write(true).open(&busy).unwrap(),
        );
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                file.write_all_at(&n.to_le_bytes(), (n % 1024) * 8).unwrap();
                n += 1;
                std::thread::yield_now();
            }
        })
    };
    let (run, phase) = w.clone(&spec("busy", "web", "web-copy", false)).await;
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    // Not a failure retried until the attempts run out: the copy is whole,
    // the changed file copied as read, and the run says so.
    assert_eq!(phase, Phase::SucceededWithWarnings, "{}", w.steps(run));
    assert!(step_failures(&w, run, "volume/web-copy/shared").is_empty());
    let out = w.output(run, "web-copy", "shared");
    assert!(out.source_changed, "{out:?}");
    let warnings = w.engine.load(run).unwrap().warnings;
    assert!(
        warnings
            .iter()
            .any(|m| m.contains("web/shared") && m.contains("busy.log") && m.contains("changed")),
        "{warnings:?}"
    );
    let dst = w.dst_pv("web-copy", "shared").await;
    assert_eq!(
        std::fs::metadata(dst.join("busy.log")).unwrap().len(),
        8 << 20
    );
    std::fs::remove_file(&busy).unwrap();
    std::fs::remove_file(dst.join("busy.log")).unwrap();
    compare_trees(&dir, &dst).unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_pods_meet_pod_security_baseline_and_restricted_is_refused_before_anything_is_made() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::start(file_bucket(bucket_dir.path()), small_chunk_settings(4)).await;
    let dir = seeded(&w, &small_tree(12)).await;
    let src = w.source().await;
    let level = |level: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: vol, labels: {{pod-security.kubernetes.io/enforce: {level}}}}}\n"
        )
    };

    // restricted: mover pods (root) cannot run there, nor in the copy,
    // which carries the label. Refused by preflight, nothing written.
    apply_yaml(&src, &level("restricted")).await;
    let text = refused_writing_nothing(&w, &spec("locked", "vol", "vol-locked", false)).await;
    assert!(
        text.contains("Namespace vol")
            && text.contains("mover-pod-forbidden")
            && text.contains("files")
            && text.contains("enforce=baseline"),
        "{text}"
    );

    // baseline: the mover pods are admitted on both sides.
    apply_yaml(&src, &level("baseline")).await;
    let (run, phase) = w.clone(&spec("based", "vol", "vol-based", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    compare_trees(&dir, &w.dst_pv("vol-based", "files").await).unwrap();
    let copy = w
        .destination()
        .await
        .get("v1", "Namespace", None, "vol-based")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        copy["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_wide_restricted_level_fails_the_mover_step_at_once_naming_the_fix() {
    // The destination's API server enforces restricted by default, which
    // no namespace label shows to preflight.
    let dst = ferry_sim::SimCluster::start(ferry_sim::SimOptions {
        name: "staging".into(),
        pod_security_default: Some("restricted".into()),
        ..ferry_sim::SimOptions::default()
    })
    .await
    .unwrap();
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::with_sims(
        sim("prod", None).await,
        dst,
        file_bucket(bucket_dir.path()),
        small_chunk_settings(4),
        ferry_steps::workflow::DEFAULT_MOVER_IMAGE,
    );
    seeded(&w, &small_tree(13)).await;
    let (run, phase) = w.clone(&spec("late", "vol", "vol-late", false)).await;
    assert_eq!(phase, Phase::RolledBack, "{}", w.steps(run));
    let failures = step_failures(&w, run, "volume/vol-late/files");
    assert_eq!(failures.len(), 1, "permanent, not retried: {failures:?}");
    assert!(
        failures[0].contains("violates PodSecurity \"restricted:latest\"")
            && failures[0].contains("[rule mover-pod-forbidden]")
            && failures[0].contains("runs tar as root")
            && failures[0].contains(
                "kubectl --context prod label namespace vol pod-security.kubernetes.io/enforce=baseline --overwrite"
            ),
        "{}",
        failures[0]
    );
    assert_no_leftovers(&w, run).await;

    // The fix as given: the source namespace labelled, its copy admits the
    // mover pod.
    let src = w.source().await;
    apply_yaml(
        &src,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: vol, labels: {pod-security.kubernetes.io/enforce: baseline}}\n",
    )
    .await;
    let (run, phase) = w.clone(&spec("fixed", "vol", "vol-fixed", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    w.stop().await;
}

/// A Deployment `app` in `ns` whose one pod mounts `claim`, once Running:
/// the pod's node.
async fn app_using(w: &World, ns: &str, claim: &str) -> String {
    let src = w.source().await;
    apply_yaml(
        &src,
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app, namespace: {ns}}}\nspec: {{replicas: 1, selector: {{matchLabels: {{app: app}}}}, template: {{metadata: {{labels: {{app: app}}}}, spec: {{containers: [{{name: c, image: busybox}}], volumes: [{{name: d, persistentVolumeClaim: {{claimName: {claim}}}}}]}}}}}}\n"
        ),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pods = src.list_kind_in("v1", "Pod", ns).await.unwrap();
        if let Some(p) = pods
            .iter()
            .find(|p| p["metadata"]["labels"]["app"] == "app" && p["status"]["phase"] == "Running")
        {
            return p["spec"]["nodeName"].as_str().unwrap().to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "app pod never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_read_write_once_volume_is_read_on_its_users_node() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, WatchEvent, WatchParams};
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::start(file_bucket(bucket_dir.path()), small_chunk_settings(4)).await;
    let src = w.source().await;
    apply_yaml(
        &src,
        &volumes_yaml("web", &[("cache", "efs", "ReadWriteOnce")]),
    )
    .await;
    let dir = pv_dir(&src, "web", "cache").await;
    make_tree(&dir, &small_tree(14)).unwrap();
    let node = app_using(&w, "web", "cache").await;

    // Every pod made in the namespace from here on, read back afterwards.
    let pods: Api<Pod> = Api::namespaced(src.client().clone(), "web");
    let from = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let (run, phase) = w.clone(&spec("pinned", "web", "web-copy", true)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    compare_trees(&dir, &w.dst_pv("web-copy", "cache").await).unwrap();

    let mut events = pods
        .watch(&WatchParams::default().timeout(1), &from)
        .await
        .unwrap()
        .boxed();
    let mut mover = None;
    while let Some(e) = events.next().await {
        if let WatchEvent::Added(p) = e.unwrap()
            && p.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .ends_with("-up-cache")
        {
            mover = Some(p);
        }
    }
    let mover = mover.expect("the mover pod was made in web");
    let affinity = serde_json::to_value(mover.spec.unwrap().affinity).unwrap();
    assert_eq!(
        affinity.pointer(
            "/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0"
        ),
        Some(&serde_json::json!({"key": "metadata.name", "operator": "In", "values": [node]})),
        "{affinity}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_read_write_once_pod_volume_in_use_is_refused_naming_its_user() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::start(file_bucket(bucket_dir.path()), small_chunk_settings(4)).await;
    // A local-path class (no snapshots, ReadWriteOncePod) on both clusters.
    let class = "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: local-path}\nprovisioner: rancher.io/local-path\nvolumeBindingMode: Immediate\n";
    let src = w.source().await;
    apply_yaml(&src, class).await;
    let dst = w.destination().await;
    apply_yaml(&dst, class).await;
    apply_yaml(
        &src,
        &volumes_yaml("solo", &[("data", "local-path", "ReadWriteOncePod")]),
    )
    .await;
    pv_dir(&src, "solo", "data").await;
    app_using(&w, "solo", "data").await;
    // The mover pod could never be placed: refused before anything is made.
    let text = refused_writing_nothing(&w, &spec("solo", "solo", "solo-copy", true)).await;
    assert!(
        text.contains("solo/data")
            && text.contains("live-volume-in-use")
            && text.contains("pod(s) app-"),
        "{text}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_ferry_cannot_write_refuses_the_clone_before_anything_is_made() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let good = file_bucket(bucket_dir.path());
    let read_only = Bucket::from_store(
        Arc::new(ReadOnlyStore {
            inner: good.store().clone(),
        }),
        "ferry",
    )
    .with_retry(fast_retry());
    let w = World::start(read_only, small_chunk_settings(4)).await;
    seeded(&w, &small_tree(15)).await;
    let text = refused_writing_nothing(&w, &spec("ro", "vol", "vol-ro", false)).await;
    assert!(
        text.contains("bucket-unusable")
            && text.contains("s3:PutObject")
            && text.contains("credentials and policy"),
        "{text}"
    );
    // A dry-run only lists the bucket: it sees no refusal there.
    let env = clone_env(
        clusters(&[&w.src, &w.dst]),
        w.bucket.clone(),
        w.mover.clone(),
        ferry_steps::workflow::DEFAULT_MOVER_IMAGE,
    );
    let dry = ferry_steps::workflow::CloneWorkflow::new(env)
        .dry_run(&spec("ro-dry", "vol", "vol-ro", false))
        .await
        .unwrap();
    assert!(dry.refusals.is_empty(), "{:?}", dry.refusals);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_pods_give_their_resources_to_a_namespace_with_a_quota() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let w = World::start(file_bucket(bucket_dir.path()), small_chunk_settings(4)).await;
    let dir = seeded(&w, &small_tree(16)).await;
    let src = w.source().await;
    let quota = |memory: &str| {
        format!(
            "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: compute, namespace: vol}}\nspec: {{hard: {{requests.cpu: '2', requests.memory: 2Gi, limits.cpu: '4', limits.memory: {memory}, pods: '10'}}}}\n"
        )
    };

    // The quota has room: mover pods that say what they need are admitted
    // (the API server refuses pods that do not, in such a namespace).
    apply_yaml(&src, &quota("4Gi")).await;
    let (run, phase) = w.clone(&spec("quota", "vol", "vol-quota", false)).await;
    assert_eq!(phase, Phase::Succeeded, "{}", w.steps(run));
    compare_trees(&dir, &w.dst_pv("vol-quota", "files").await).unwrap();

    // An app pod holds 1Gi of a 1536Mi memory limit (as the quota's status
    // says): too little left for one mover pod's 1Gi. Refused before
    // anything is made.
    apply_yaml(
        &src,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: vol}\nspec: {containers: [{name: c, image: busybox, resources: {requests: {cpu: 100m, memory: 256Mi}, limits: {cpu: 500m, memory: 1Gi}}}]}\n",
    )
    .await;
    apply_yaml(&src, &quota("1536Mi")).await;
    // The quota's status counts the pod once its controller has seen it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while src
        .get("v1", "ResourceQuota", Some("vol"), "compute")
        .await
        .unwrap()
        .and_then(|q| q.pointer("/status/used/limits.memory").cloned())
        != Some(serde_json::json!("1Gi"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "quota status never counted the pod"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = refused_writing_nothing(&w, &spec("tight", "vol", "vol-tight", false)).await;
    assert!(
        text.contains("mover-pod-exceeds-quota")
            && text.contains("limits.memory=1536Mi with 1Gi used, and the mover's pods and temporary claims there need 1Gi"),
        "{text}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_pod_that_cannot_run_fails_the_step_quoting_the_scheduler() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let mut settings = small_chunk_settings(4);
    settings.pod_start_timeout = Duration::from_secs(2);
    let w = World::start(file_bucket(bucket_dir.path()), settings).await;
    let src = w.source().await;
    apply_yaml(
        &src,
        &volumes_yaml("web", &[("cache", "efs", "ReadWriteOnce")]),
    )
    .await;
    pv_dir(&src, "web", "cache").await;
    // The volume's user runs on a node the mover pod cannot go to (here:
    // one the cluster has no room on, as far as its scheduler knows).
    apply_yaml(
        &src,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: web}\nspec: {nodeName: node-full, containers: [{name: c, image: busybox}], volumes: [{name: d, persistentVolumeClaim: {claimName: cache}}]}\n",
    )
    .await;

    let (run, phase) = w.clone(&spec("stuck", "web", "web-copy", true)).await;
    assert_eq!(phase, Phase::RolledBack, "{}", w.steps(run));
    let failures = step_failures(&w, run, "volume/web-copy/cache");
    assert_eq!(failures.len(), 1, "permanent, not retried: {failures:?}");
    assert!(
        failures[0].contains("did not run within 2s")
            && failures[0].contains("not scheduled (Unschedulable: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector"),
        "{}",
        failures[0]
    );
    assert_no_leftovers(&w, run).await;
    w.stop().await;
}

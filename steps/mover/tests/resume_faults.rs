//! Resume after an upload dropped mid-way, and a bucket failing 5% of
//! requests.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferry_mover::{Bucket, ChunkerParams, Upload, UploadCheckpoint, UploadOptions};
use tokio::io::AsyncWriteExt;

/// Drops the upload after it has stored some chunks (as a killed daemon
/// would), resumes from the last checkpoint, and checks that only chunks that
/// were in flight at the drop are put again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_dropped_upload_reuploads_at_most_what_was_in_flight() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let base = file_bucket(&tmp.path().join("bucket"))?;
    // Slow puts, so that several are in flight when the upload is dropped.
    let counting = Arc::new(CountingStore::new(
        base.store().clone(),
        Duration::from_millis(15),
    ));
    let bucket = Bucket::from_store(counting.clone(), "install-1").with_retry(fast_retry());

    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9);
    let data = Arc::new(content(&mut rng, 24 << 20));
    let params = ChunkerParams {
        min: 64 << 10,
        avg: 256 << 10,
        max: 1 << 20,
    };
    let opts = UploadOptions {
        chunker: params,
        concurrency: 6,
        checkpoint_interval: Duration::from_millis(20),
        ..Default::default()
    };

    let last: Arc<Mutex<Option<UploadCheckpoint>>> = Arc::default();
    let (progress_tx, mut progress_rx) = tokio::sync::watch::channel(0u64);
    let upload = {
        let last = last.clone();
        let (mut w, r) = tokio::io::duplex(256 << 10);
        let data = data.clone();
        tokio::spawn(async move {
            let _ = w.write_all(&data).await;
            let _ = w.shutdown().await;
        });
        let up = Upload::new(&bucket, "run-1", "vol")
            .options(opts.clone())
            .on_progress(move |s| {
                let _ = progress_tx.send(s.chunks);
            })
            .on_checkpoint(move |cp| *last.lock().unwrap() = Some(cp.clone()));
        tokio::spawn(up.run(r))
    };
    progress_rx.wait_for(|&n| n >= 30).await?;
    upload.abort();
    let _ = upload.await;
    // Let puts that the runtime had already handed to blocking threads land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = counting.started.lock().unwrap().clone();
    let completed = counting.completed.lock().unwrap().clone();
    let in_flight: u64 = started
        .iter()
        .filter(|(k, _)| k.contains("/chunks/") && !completed.contains_key(*k))
        .map(|(_, v)| *v)
        .sum();
    let checkpoint = last
        .lock()
        .unwrap()
        .clone()
        .expect("a checkpoint was reported");
    assert!(checkpoint.bytes_done > 0 && checkpoint.chunks_done > 0);
    assert!(
        bucket.read_manifest("run-1", "vol").await.is_err(),
        "no manifest before the end"
    );

    // Resume: the stream is read again from its start.
    let before: std::collections::HashSet<String> = started.keys().cloned().collect();
    counting.reset();
    let out = Upload::new(&bucket, "run-1", "vol")
        .options(opts)
        .resume_from(checkpoint.clone())
        .run(std::io::Cursor::new(data.as_ref().clone()))
        .await?;
    let again: u64 = counting
        .started
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("/chunks/") && before.contains(*k))
        .map(|(_, v)| *v)
        .sum();
    eprintln!(
        "dropped after checkpoint {} B / {} chunks; in flight {in_flight} B; re-uploaded {again} B; resumed upload stored {} chunks",
        checkpoint.bytes_done, checkpoint.chunks_done, out.stats.chunks_uploaded
    );
    assert!(
        again <= in_flight,
        "re-uploaded {again} B > {in_flight} B in flight"
    );
    assert!(out.stats.chunks_skipped >= 30);

    let mut sink = Vec::new();
    ferry_mover::Download::new(&bucket, &out.manifest)
        .run(&mut sink)
        .await?;
    assert!(sink == *data);
    Ok(())
}

/// A bucket failing 5% of requests (some after committing the write): the
/// round trip still completes and the trees are equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_failing_5_percent_of_requests_still_round_trips() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    make_tree(&src, &TreeSpec::default())?;
    let base = file_bucket(&tmp.path().join("bucket"))?;
    let faulty = Arc::new(FaultyStore::new(base.store().clone(), 0.05, 42));
    let bucket = Bucket::from_store(faulty.clone(), "install-1").with_retry(fast_retry());
    let opts = UploadOptions {
        chunker: ChunkerParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        },
        ..Default::default()
    };
    let out = upload_tree(&bucket, "run-1", "data", &src, opts).await?;
    let dst = tmp.path().join("dst");
    download_tree(&bucket, &out.manifest, &dst).await?;
    compare_trees(&src, &dst)?;
    let injected = faulty.injected.load(Ordering::SeqCst);
    let requests = faulty.requests.load(Ordering::SeqCst);
    eprintln!(
        "{injected} faults injected in {requests} requests; {} chunks",
        out.stats.chunks
    );
    assert!(
        injected >= 5,
        "only {injected} faults in {requests} requests"
    );
    Ok(())
}

/// With retries disabled, the same faults surface as retryable errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_bucket_errors_are_retryable() -> anyhow::Result<()> {
    let base = Bucket::open("memory://", &Default::default())?;
    let faulty = Arc::new(FaultyStore::new(base.store().clone(), 1.0, 1));
    let bucket = Bucket::from_store(faulty, "p").with_retry(ferry_mover::RetryPolicy {
        max_attempts: 1,
        ..fast_retry()
    });
    let err = Upload::new(&bucket, "r", "v")
        .run(std::io::Cursor::new(vec![1u8; 10]))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, ferry_mover::Error::Bucket { .. }), "{err}");
    Ok(())
}

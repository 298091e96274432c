//! Garbage collection: only unreferenced chunks go; running uploads are safe;
//! manifests of a run are deleted for compensation.

mod common;

use std::io::Cursor;
use std::time::Duration;

use common::*;
use ferry_mover::{
    Bucket, ChunkerParams, Download, Error, GcOptions, Manifest, Upload, UploadOptions,
    delete_manifests, gc,
};
use object_store::ObjectStoreExt;
use tokio::io::AsyncWriteExt;

fn small_chunks() -> UploadOptions {
    UploadOptions {
        chunker: ChunkerParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        },
        ..Default::default()
    }
}

fn now_gc() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    }
}

async fn chunk_count(bucket: &Bucket) -> anyhow::Result<usize> {
    use futures::TryStreamExt;
    let dir = bucket.chunks_dir();
    Ok(bucket
        .store()
        .list(Some(&dir))
        .try_collect::<Vec<_>>()
        .await?
        .len())
}

async fn upload_bytes(bucket: &Bucket, run: &str, data: &[u8]) -> anyhow::Result<Manifest> {
    Ok(Upload::new(bucket, run, "vol")
        .options(small_chunks())
        .run(Cursor::new(data.to_vec()))
        .await?
        .manifest)
}

async fn restore(bucket: &Bucket, m: &Manifest) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    Download::new(bucket, m).run(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_only_unreferenced_chunks() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bucket = file_bucket(&tmp.path().join("bucket"))?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let shared = content(&mut rng, 2 << 20);
    let only_a = content(&mut rng, 2 << 20);
    let only_b = content(&mut rng, 2 << 20);
    let a = [shared.clone(), only_a].concat();
    let b = [shared, only_b].concat();
    let ma = upload_bytes(&bucket, "run-a", &a).await?;
    let mb = upload_bytes(&bucket, "run-b", &b).await?;
    let total = chunk_count(&bucket).await?;
    let hashes = |m: &Manifest| {
        m.chunks
            .iter()
            .map(|c| c.hash)
            .collect::<std::collections::HashSet<_>>()
    };
    let (ha, hb) = (hashes(&ma), hashes(&mb));
    assert!(
        ha.intersection(&hb).count() > 5,
        "the two volumes share chunks"
    );

    // Everything referenced: nothing goes.
    let r = gc(&bucket, &now_gc()).await?;
    assert!(r.completed);
    assert_eq!(r.chunks_deleted, 0);
    assert_eq!(r.chunks_referenced as usize, total);

    // Run a is rolled back: its manifests go, its chunks stay until gc.
    assert_eq!(delete_manifests(&bucket, "run-a").await?, 1);
    assert!(bucket.read_manifest("run-a", "vol").await.is_err());
    assert_eq!(chunk_count(&bucket).await?, total);

    // Within the grace period unreferenced chunks are spared.
    let r = gc(&bucket, &GcOptions::default()).await?;
    assert_eq!(r.chunks_deleted, 0);
    assert_eq!(r.chunks_spared_young as usize, ha.difference(&hb).count());

    // A dry run counts without deleting.
    let r = gc(
        &bucket,
        &GcOptions {
            dry_run: true,
            ..now_gc()
        },
    )
    .await?;
    assert_eq!(r.chunks_deleted as usize, ha.difference(&hb).count());
    assert_eq!(chunk_count(&bucket).await?, total);

    let r = gc(&bucket, &now_gc()).await?;
    assert!(r.completed);
    assert_eq!(r.chunks_deleted as usize, ha.difference(&hb).count());
    assert!(r.bytes_deleted > 0);
    assert_eq!(chunk_count(&bucket).await?, hb.len());
    // Run b is whole.
    assert!(restore(&bucket, &mb).await? == b);
    // The lock is released.
    assert!(bucket.store().head(&bucket.gc_lock_path()).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_spares_a_running_upload() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bucket = file_bucket(&tmp.path().join("bucket"))?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(4);
    let old = content(&mut rng, 1 << 20);
    // An old upload whose run was rolled back: its chunks are unreferenced.
    let mold = upload_bytes(&bucket, "run-old", &old).await?;
    delete_manifests(&bucket, "run-old").await?;

    // A new upload of data that shares the old chunks, paused half-way.
    let data = [old.clone(), content(&mut rng, 1 << 20)].concat();
    let (mut w, r) = tokio::io::duplex(64 << 10);
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let up = Upload::new(&bucket, "run-new", "vol")
        .options(small_chunks())
        .on_progress(move |s| {
            let _ = tx.send(s.chunks);
        });
    let task = tokio::spawn(up.run(r));
    w.write_all(&data[..(3 << 19)]).await?;
    rx.wait_for(|&n| n >= 5).await?;

    // The collection stands down: the upload relies on the old chunks.
    let r = gc(&bucket, &now_gc()).await?;
    assert!(!r.completed);
    assert_eq!(r.chunks_deleted, 0);
    assert_eq!(r.running_uploads.len(), 1);
    assert_eq!(r.running_uploads[0].run, "run-new");

    w.write_all(&data[3 << 19..]).await?;
    w.shutdown().await?;
    let out = task.await??;
    assert!(
        out.stats.chunks_skipped > 0,
        "the new upload reused old chunks"
    );
    assert!(restore(&bucket, &out.manifest).await? == data);

    // Now it completes, and deletes only the old chunks nothing references.
    let r = gc(&bucket, &now_gc()).await?;
    assert!(r.completed);
    let new: std::collections::HashSet<_> = out.manifest.chunks.iter().map(|c| c.hash).collect();
    let only_old = mold
        .chunks
        .iter()
        .filter(|c| !new.contains(&c.hash))
        .count() as u64;
    assert_eq!(r.chunks_deleted, only_old);
    assert!(restore(&bucket, &out.manifest).await? == data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_wait_for_a_running_gc_and_expired_locks_do_not_count() -> anyhow::Result<()> {
    let bucket = Bucket::open("memory://", &Default::default())?;
    let lock = |expires_at_ms: u64| {
        bytes::Bytes::from(
            serde_json::to_vec(&ferry_mover::gc::GcLock {
                holder: "other".into(),
                started_at_ms: 0,
                expires_at_ms,
            })
            .unwrap(),
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    bucket
        .store()
        .put(&bucket.gc_lock_path(), lock(now + 60_000).into())
        .await?;
    let opts = UploadOptions {
        gc_wait: Duration::from_millis(300),
        ..small_chunks()
    };
    let err = Upload::new(&bucket, "r", "v")
        .options(opts.clone())
        .run(Cursor::new(vec![1u8; 1000]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GcRunning { .. }), "{err}");
    assert!(err.is_retryable());
    // A second collection is refused while the lock lives.
    assert!(matches!(
        gc(&bucket, &now_gc()).await,
        Err(Error::GcRunning { .. })
    ));
    // The waiting upload took its lease back.
    assert!(!bucket.list_leases().await?.iter().any(|l| l.run == "r"));

    // An expired lock (a crashed collection) does not hold uploads or gc.
    bucket
        .store()
        .put(&bucket.gc_lock_path(), lock(now - 1).into())
        .await?;
    Upload::new(&bucket, "r", "v")
        .options(opts)
        .run(Cursor::new(vec![1u8; 1000]))
        .await?;
    assert!(gc(&bucket, &now_gc()).await?.completed);

    // An expired lease (a crashed upload) does not hold gc either.
    let lease = ferry_mover::LeaseInfo {
        run: "dead".into(),
        volume: "v".into(),
        holder: "x".into(),
        started_at_ms: 0,
        expires_at_ms: now - 1,
    };
    bucket
        .store()
        .put(
            &bucket.lease_path("dead", "v", "x")?,
            bytes::Bytes::from(serde_json::to_vec(&lease)?).into(),
        )
        .await?;
    assert!(gc(&bucket, &now_gc()).await?.completed);
    // Compensation removes the dead run's lease too.
    delete_manifests(&bucket, "dead").await?;
    assert!(!bucket.list_leases().await?.iter().any(|l| l.run == "dead"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_upload_renews_its_lease() -> anyhow::Result<()> {
    let bucket = Bucket::open("memory://", &Default::default())?;
    let opts = UploadOptions {
        lease_ttl: Duration::from_millis(300),
        ..small_chunks()
    };
    let (mut w, r) = tokio::io::duplex(64 << 10);
    let task = tokio::spawn(Upload::new(&bucket, "slow", "vol").options(opts).run(r));
    // The upload outlives its lease TTL several times over.
    for _ in 0..12 {
        w.write_all(&[7u8; 32 << 10]).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still held: a collection stands down.
    let report = gc(&bucket, &now_gc()).await?;
    assert_eq!(report.running_uploads.len(), 1, "{report:?}");
    w.shutdown().await?;
    let out = task.await??;
    assert_eq!(out.manifest.total_len, 12 * (32 << 10));
    // Released at the end.
    assert!(!bucket.list_leases().await?.iter().any(|l| l.run == "slow"));
    Ok(())
}

//! tar -c | upload → bucket → download | tar -x, on a `file://` bucket: trees
//! equal on every attribute; re-upload dedup; one changed file; corrupt and
//! missing chunks.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_mover::{Bucket, Download, Error, Manifest, Upload, UploadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_bucket_round_trip_keeps_every_attribute() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    make_tree(&src, &TreeSpec::default())?;
    // The generator made what the test claims to cover.
    let sparse = fs::metadata(src.join("sparse.img"))?;
    assert!(
        sparse.blocks() * 512 < sparse.len() / 8,
        "sparse file is not sparse"
    );
    assert!(fs::metadata(src.join("hard-a"))?.nlink() == 2);
    let bucket = file_bucket(&tmp.path().join("bucket"))?;

    let out = upload_tree(&bucket, "run-1", "data", &src, UploadOptions::default()).await?;
    assert!(out.stats.chunks > 1, "{:?}", out.stats);
    assert_eq!(
        out.stats.chunks_uploaded + out.stats.chunks_skipped,
        out.stats.chunks
    );
    assert_eq!(out.stats.bytes_read, out.manifest.total_len);
    // The manifest is in the bucket, where the layout says, and reads back equal.
    let manifest = bucket.read_manifest("run-1", "data").await?;
    assert_eq!(manifest, out.manifest);
    assert!(
        tmp.path()
            .join("bucket/install-1/manifests/run-1/data.json")
            .exists()
    );
    let h = manifest.chunks[0].hash.to_hex();
    assert!(
        tmp.path()
            .join(format!("bucket/install-1/chunks/{}/{h}", &h[..2]))
            .exists()
    );

    let dst = tmp.path().join("dst");
    download_tree(&bucket, &manifest, &dst).await?;
    compare_trees(&src, &dst)?;
    // The extracted sparse file is sparse again.
    let sparse = fs::metadata(dst.join("sparse.img"))?;
    assert!(
        sparse.blocks() * 512 < sparse.len() / 8,
        "extracted sparse file is dense"
    );
    Ok(())
}

#[test]
fn compare_trees_reports_the_first_difference() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let spec = TreeSpec {
        small_files: 20,
        large_len: 1 << 16,
        sparse_len: 1 << 20,
        ..Default::default()
    };
    make_tree(&tmp.path().join("a"), &spec)?;
    make_tree(&tmp.path().join("b"), &spec)?;
    compare_trees(&tmp.path().join("a"), &tmp.path().join("b"))?;

    let b = tmp.path().join("b");
    fs::set_permissions(b.join("hard-a"), fs::Permissions::from_mode(0o600))?;
    let e = compare_trees(&tmp.path().join("a"), &b)
        .unwrap_err()
        .to_string();
    assert!(e.contains("hard-") && e.contains("mode"), "{e}");
    fs::set_permissions(b.join("hard-a"), fs::Permissions::from_mode(0o644))?;
    fs::remove_file(b.join("dangling"))?;
    let e = compare_trees(&tmp.path().join("a"), &b)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dangling"), "{e}");
    std::os::unix::fs::symlink("/nonexistent/target", b.join("dangling"))?;
    fs::write(b.join(os(b"caf\xe9-latin1.txt")), b"changed\n")?;
    let e = compare_trees(&tmp.path().join("a"), &b)
        .unwrap_err()
        .to_string();
    assert!(e.contains("caf"), "{e}");
    Ok(())
}

fn counting_file_bucket(dir: &std::path::Path) -> anyhow::Result<(Bucket, Arc<CountingStore>)> {
    let base = file_bucket(dir)?;
    let counting = Arc::new(CountingStore::new(base.store().clone(), Duration::ZERO));
    Ok((
        Bucket::from_store(counting.clone(), "install-1").with_retry(fast_retry()),
        counting,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupload_of_unchanged_data_uploads_almost_nothing() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            large_len: 24 << 20,
            ..Default::default()
        },
    )?;
    let (bucket, counting) = counting_file_bucket(&tmp.path().join("bucket"))?;

    let first = upload_tree(&bucket, "run-1", "data", &src, UploadOptions::default()).await?;
    let first_bytes = counting.chunk_put_bytes();
    assert!(first_bytes > 0);

    // Found by `head`.
    counting.reset();
    let second = upload_tree(&bucket, "run-2", "data", &src, UploadOptions::default()).await?;
    let put = counting.chunk_put_bytes();
    eprintln!(
        "first {first_bytes} B stored; second: {put} B put of {} B",
        second.manifest.total_len
    );
    assert!(
        put as f64 <= 0.01 * second.manifest.total_len as f64,
        "re-upload put {put} bytes"
    );
    assert_eq!(second.stats.chunks_uploaded, 0);
    assert_eq!(second.manifest.chunks, first.manifest.chunks);

    // Known from the previous manifest: not even a `head`.
    counting.reset();
    let opts = UploadOptions {
        base_manifests: vec![
            ("run-1".into(), "data".into()),
            ("gone".into(), "data".into()),
        ],
        ..Default::default()
    };
    let third = upload_tree(&bucket, "run-3", "data", &src, opts).await?;
    assert_eq!(counting.chunk_put_bytes(), 0);
    assert_eq!(third.stats.chunks_skipped, third.stats.chunks);
    let chunk_heads = counting.heads.load(std::sync::atomic::Ordering::SeqCst);
    assert!(chunk_heads <= 1, "heads: {chunk_heads}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_changed_file_uploads_only_the_chunks_around_it() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    make_tree(
        &src,
        &TreeSpec {
            large_len: 32 << 20,
            ..Default::default()
        },
    )?;
    let (bucket, counting) = counting_file_bucket(&tmp.path().join("bucket"))?;
    let first = upload_tree(&bucket, "run-1", "data", &src, UploadOptions::default()).await?;

    // Change 100 bytes in the middle of the large file, keeping its mtime.
    let large = src.join("large.bin");
    let mut data = fs::read(&large)?;
    let mid = data.len() / 2;
    data[mid..mid + 100].fill(0xAB);
    fs::write(&large, &data)?;
    let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_650_000_000);
    fs::File::open(&large)?.set_times(fs::FileTimes::new().set_modified(t))?;

    counting.reset();
    let second = upload_tree(&bucket, "run-2", "data", &src, UploadOptions::default()).await?;
    let s = second.stats;
    eprintln!(
        "changed file: {} of {} chunks uploaded, {} of {} raw bytes",
        s.chunks_uploaded, s.chunks, s.raw_bytes_uploaded, s.bytes_read
    );
    assert!(s.chunks_uploaded >= 1 && s.chunks_uploaded <= 3, "{s:?}");
    assert!(
        s.raw_bytes_uploaded <= 3 * u64::from(second.manifest.chunker.max),
        "{s:?}"
    );
    assert!(
        (s.raw_bytes_uploaded as f64) < 0.25 * s.bytes_read as f64,
        "{s:?}"
    );
    assert_eq!(counting.chunk_put_bytes(), s.bytes_uploaded);
    let shared = second
        .manifest
        .chunks
        .iter()
        .filter(|c| first.manifest.chunks.contains(c))
        .count();
    assert!(shared + 3 >= second.manifest.chunks.len());
    // And it downloads to the changed tree.
    let dst = tmp.path().join("dst");
    download_tree(&bucket, &second.manifest, &dst).await?;
    compare_trees(&src, &dst)?;
    Ok(())
}

async fn small_upload(bucket: &Bucket, volume: &str, len: usize) -> anyhow::Result<Manifest> {
    Ok(small_upload_rewriting(bucket, volume, len, Vec::new())
        .await?
        .manifest)
}

/// The same generated stream as [`small_upload`], with chunks to rewrite.
async fn small_upload_rewriting(
    bucket: &Bucket,
    volume: &str,
    len: usize,
    rewrite: Vec<ferry_mover::ChunkHash>,
) -> anyhow::Result<ferry_mover::UploadOutcome> {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(len as u64);
    let data = content(&mut rng, len);
    let opts = UploadOptions {
        chunker: ferry_mover::ChunkerParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        },
        rewrite,
        ..Default::default()
    };
    Ok(Upload::new(bucket, "run-1", volume)
        .options(opts)
        .run(std::io::Cursor::new(data))
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_is_refused_by_name() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bucket = file_bucket(&tmp.path().join("bucket"))?;
    let manifest = small_upload(&bucket, "pgdata", 1 << 20).await?;
    let victim = manifest.chunks[3].hash;
    let hex = victim.to_hex();
    let path = tmp
        .path()
        .join(format!("bucket/install-1/chunks/{}/{hex}", &hex[..2]));
    // A chunk replaced by another valid zstd frame of the same length...
    let other = zstd::bulk::compress(&vec![7u8; manifest.chunks[3].len as usize], 1)?;
    fs::write(&path, other)?;
    let mut sink = Vec::new();
    let err = Download::new(&bucket, &manifest)
        .run(&mut sink)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChunkCorrupt { hash, volume, .. } if *hash == victim && volume == "pgdata"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&hex) && msg.contains("pgdata"), "{msg}");
    assert!(!err.is_retryable());
    // ...and one with flipped bytes.
    let mut stored = fs::read(&path)?;
    let n = stored.len();
    stored[n / 2] ^= 0xFF;
    stored[n - 1] ^= 0xFF;
    fs::write(&path, stored)?;
    let err = Download::new(&bucket, &manifest)
        .run(Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChunkCorrupt { hash, .. } if *hash == victim),
        "{err}"
    );
    // Nothing of the bad chunk or after it was written.
    let good: u64 = manifest.chunks[..3].iter().map(|c| c.len).sum();
    assert!(sink.len() as u64 <= good);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_chunk_is_named() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bucket = file_bucket(&tmp.path().join("bucket"))?;
    let manifest = small_upload(&bucket, "pgdata", 1 << 20).await?;
    let victim = manifest.chunks[1].hash;
    let hex = victim.to_hex();
    fs::remove_file(
        tmp.path()
            .join(format!("bucket/install-1/chunks/{}/{hex}", &hex[..2])),
    )?;
    let err = Download::new(&bucket, &manifest)
        .run(Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingChunk { hash, .. } if *hash == victim),
        "{err}"
    );
    assert!(err.to_string().contains(&hex));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_chunks_are_stored_again_when_named_for_rewrite() -> anyhow::Result<()> {
    const LEN: usize = 1 << 20;
    let tmp = tempfile::tempdir()?;
    let bucket = file_bucket(&tmp.path().join("bucket"))?;
    let manifest = small_upload(&bucket, "pgdata", LEN).await?;
    let mut expected = Vec::new();
    Download::new(&bucket, &manifest).run(&mut expected).await?;
    let object = |i: usize| {
        let hex = manifest.chunks[i].hash.to_hex();
        tmp.path()
            .join(format!("bucket/install-1/chunks/{}/{hex}", &hex[..2]))
    };

    // One chunk rots, another is deleted by hand.
    let mut stored = fs::read(object(3))?;
    let n = stored.len();
    stored[n / 2] ^= 0xFF;
    fs::write(object(3), stored)?;
    fs::remove_file(object(1))?;

    let mut damaged = Vec::new();
    for _ in 0..2 {
        let err = Download::new(&bucket, &manifest)
            .run(Vec::new())
            .await
            .unwrap_err();
        let hash = err
            .damaged_chunk()
            .ok_or_else(|| anyhow::anyhow!("{err}"))?;
        assert!(!err.is_retryable(), "{err}");
        // An upload not told of them stores the missing chunk anew (it is
        // absent) but keeps the corrupt one (present is all it can see): the
        // next download meets that one.
        if damaged.is_empty() {
            let plain = small_upload_rewriting(&bucket, "pgdata", LEN, Vec::new()).await?;
            assert_eq!(plain.stats.chunks_uploaded, 1, "the missing one only");
            assert_eq!(hash, manifest.chunks[1].hash, "the first damaged in order");
        } else {
            assert_eq!(hash, manifest.chunks[3].hash);
        }
        damaged.push(hash);
        if damaged.len() == 2 {
            let again = small_upload_rewriting(&bucket, "pgdata", LEN, damaged.clone()).await?;
            assert_eq!(again.stats.chunks_uploaded, 2, "{:?}", again.stats);
            assert_eq!(again.manifest.chunks, manifest.chunks);
        }
    }
    // Every chunk reads back whole, under the first manifest too.
    let mut out = Vec::new();
    Download::new(&bucket, &manifest).run(&mut out).await?;
    assert_eq!(out, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_chunk_the_stream_repeats_is_stored_again_once_before_any_copy_is_read()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bucket = file_bucket(&tmp.path().join("bucket"))?;
    // The same 512 KiB four times: after the first cut in each copy, the
    // copies' chunks are the same chunks.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(21);
    let block = content(&mut rng, 512 << 10);
    let data: Vec<u8> = block.repeat(4);
    let opts = |rewrite| UploadOptions {
        chunker: ferry_mover::ChunkerParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        },
        concurrency: 8,
        rewrite,
        ..Default::default()
    };
    let first = Upload::new(&bucket, "run-1", "wal")
        .options(opts(Vec::new()))
        .run(std::io::Cursor::new(data.clone()))
        .await?;
    let mut counts = std::collections::HashMap::new();
    for c in &first.manifest.chunks {
        *counts.entry(c.hash).or_insert(0) += 1;
    }
    let (&victim, &times) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    assert!(times >= 3, "a chunk repeats: {times}");
    // The object is replaced by a shorter one: its size is wrong too.
    let hex = victim.to_hex();
    let object = tmp
        .path()
        .join(format!("bucket/install-1/chunks/{}/{hex}", &hex[..2]));
    fs::write(&object, b"rot")?;

    // Again with the chunk to rewrite, while a download follows and takes
    // every occurrence the upload did not write itself from the bucket.
    let (sender, follow) = Download::follow(&bucket, "wal");
    let (hash_tx, hash_rx) = tokio::sync::oneshot::channel();
    let upload = async {
        let out = Upload::new(&bucket, "run-2", "wal")
            .options(opts(vec![victim]))
            .hand_to(sender)
            .run(std::io::Cursor::new(data.clone()))
            .await;
        if let Ok(o) = &out {
            let _ = hash_tx.send(o.manifest.stream_hash);
        }
        out
    };
    let mut out = Vec::new();
    let download = follow.run(&mut out, async { hash_rx.await.ok() });
    let (up, down) = tokio::join!(upload, download);
    let (up, down) = (up?, down?);
    assert_eq!(up.stats.chunks_rewritten, 1, "{:?}", up.stats);
    assert_eq!(up.stats.chunks_uploaded, 1, "{:?}", up.stats);
    assert!(
        down.bytes_fetched > 0,
        "the other occurrences were read back: {down:?}"
    );
    assert_eq!(out, data);
    let size = fs::metadata(&object)?.len();
    for c in up.manifest.chunks.iter().filter(|c| c.hash == victim) {
        assert_eq!(
            c.stored_len, size,
            "every occurrence names the new object's size"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_stream_and_memory_bucket() -> anyhow::Result<()> {
    let bucket = Bucket::open("memory://", &Default::default())?;
    let m = small_upload(&bucket, "empty", 0).await?;
    assert_eq!(m.total_len, 0);
    assert!(m.chunks.is_empty());
    let mut out = Vec::new();
    Download::new(&bucket, &m).run(&mut out).await?;
    assert!(out.is_empty());
    let m = small_upload(&bucket, "small", 3).await?;
    let mut out = Vec::new();
    let stats = ferry_mover::download(&bucket, "run-1", "small", &mut out).await?;
    assert_eq!(stats.bytes_written, 3);
    assert_eq!(out.len(), 3);
    assert_eq!(m.chunks.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_failing_source_stream_is_a_retryable_read_error() -> anyhow::Result<()> {
    let bucket = Bucket::open("memory://", &Default::default())?;
    let failing = tokio_util::io::StreamReader::new(futures::stream::iter(vec![
        Ok(bytes::Bytes::from(vec![0u8; 100_000])),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "exec stream dropped",
        )),
    ]));
    let err = Upload::new(&bucket, "run-1", "v")
        .run(failing)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SourceRead { .. }), "{err}");
    assert!(err.is_retryable());
    // No manifest was written.
    assert!(bucket.read_manifest("run-1", "v").await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_come_at_a_bounded_rate_and_progress_after_each_chunk() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let bucket = Bucket::open("memory://", &Default::default())?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(11);
    let data = content(&mut rng, 4 << 20);
    let params = ferry_mover::ChunkerParams {
        min: 16 << 10,
        avg: 64 << 10,
        max: 256 << 10,
    };
    let (checkpoints, progress) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let last = Arc::new(std::sync::Mutex::new(None));
    let opts = UploadOptions {
        chunker: params,
        checkpoint_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let (c, p, l) = (checkpoints.clone(), progress.clone(), last.clone());
    let out = Upload::new(&bucket, "run-1", "v")
        .options(opts)
        .on_checkpoint(move |cp| {
            c.fetch_add(1, Ordering::SeqCst);
            *l.lock().unwrap() = Some(cp.clone());
        })
        .on_progress(move |_| {
            p.fetch_add(1, Ordering::SeqCst);
        })
        .run(std::io::Cursor::new(data.clone()))
        .await?;
    // An hour apart: only the final checkpoint.
    assert_eq!(checkpoints.load(Ordering::SeqCst), 1);
    assert_eq!(progress.load(Ordering::SeqCst), out.stats.chunks);
    let cp: ferry_mover::UploadCheckpoint = last.lock().unwrap().clone().unwrap();
    assert_eq!(cp.bytes_done, data.len() as u64);
    assert_eq!(cp.chunks_done, out.stats.chunks);
    // It serializes for the run's log and reads back.
    let json = serde_json::to_string(&cp)?;
    assert_eq!(
        serde_json::from_str::<ferry_mover::UploadCheckpoint>(&json)?,
        cp
    );
    // A checkpoint of another volume is refused.
    let err = Upload::new(&bucket, "run-1", "other")
        .resume_from(cp)
        .run(std::io::Cursor::new(data))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParams(_)), "{err}");
    Ok(())
}

#[test]
fn bucket_urls() {
    let err = Bucket::open("ftp://host/x", &Default::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
    #[cfg(not(feature = "gcp"))]
    assert!(Bucket::open("gs://bucket/x", &Default::default()).is_err());
    let b = Bucket::open(
        "s3://bucket/some/path",
        &ferry_mover::BucketOptions {
            prefix: "install-7".into(),
            store_options: vec![("aws_region".into(), "us-east-1".into())],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(b.prefix().to_string(), "some/path/install-7");
}

/// `tar -c src | upload` with a download following it into `tar -x dst`.
async fn follow_tree(
    bucket: &Bucket,
    run: &str,
    src: &std::path::Path,
    dst: &std::path::Path,
) -> anyhow::Result<(ferry_mover::UploadOutcome, ferry_mover::DownloadStats)> {
    let mut create = tar_create(src)?;
    let stdout = create.stdout.take().expect("tar stdout");
    let mut extract = tar_extract(dst)?;
    let stdin = extract.stdin.take().expect("tar stdin");
    let (sender, follow) = Download::follow(bucket, "data");
    let (hash_tx, hash_rx) = tokio::sync::oneshot::channel();
    let upload = async {
        let out = Upload::new(bucket, run, "data")
            .hand_to(sender)
            .run(stdout)
            .await;
        if let Ok(o) = &out {
            let _ = hash_tx.send(o.manifest.stream_hash);
        }
        out
    };
    let download = follow.run(stdin, async { hash_rx.await.ok() });
    let (up, down) = tokio::join!(upload, download);
    let (up, down) = (up?, down?);
    anyhow::ensure!(create.wait().await?.success(), "tar -c failed");
    anyhow::ensure!(extract.wait().await?.success(), "tar -x failed");
    Ok((up, down))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_download_takes_what_the_upload_stored_from_memory_and_verifies_the_rest()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    make_tree(&src, &TreeSpec::default())?;
    let bucket = file_bucket(&tmp.path().join("bucket"))?;

    // First: every chunk is new, so every chunk is handed over in memory and
    // nothing is read back.
    let dst = tmp.path().join("dst-1");
    let (up, down) = follow_tree(&bucket, "run-1", &src, &dst).await?;
    compare_trees(&src, &dst)?;
    assert_eq!(up.stats.chunks_uploaded, up.stats.chunks, "{:?}", up.stats);
    assert_eq!(down.chunks, up.stats.chunks, "{down:?}");
    assert_eq!((down.chunks_handed, down.bytes_fetched), (down.chunks, 0));
    assert_eq!(down.bytes_written, up.manifest.total_len);

    // Second, the same data: the bucket had every chunk, so every chunk is
    // fetched and verified (a rotten one would be refused by name).
    let dst = tmp.path().join("dst-2");
    let (up2, down) = follow_tree(&bucket, "run-2", &src, &dst).await?;
    compare_trees(&src, &dst)?;
    assert_eq!(up2.stats.chunks_uploaded, 0, "{:?}", up2.stats);
    assert_eq!(down.chunks_handed, 0, "{down:?}");
    assert_eq!(down.bytes_fetched, up2.manifest.stored_len());
    // Equal streams cut alike have equal stream hashes.
    assert_eq!(up2.manifest.stream_hash, up.manifest.stream_hash);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_checked_against_their_stream_hash_in_both_versions() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bucket = file_bucket(&tmp.path().join("bucket"))?;
    let v2 = small_upload(&bucket, "pgdata", 1 << 20).await?;
    assert_eq!(v2.version, ferry_mover::MANIFEST_VERSION);
    assert_eq!(v2.stream_hash, ferry_mover::StreamHasher::of(&v2.chunks));
    let mut stream = Vec::new();
    Download::new(&bucket, &v2).run(&mut stream).await?;
    assert_eq!(stream.len() as u64, v2.total_len);

    // A version 1 manifest (an older binary's): its stream hash is the
    // BLAKE3 of the bytes, and it still downloads.
    let v1 = Manifest {
        version: 1,
        stream_hash: ferry_mover::ChunkHash::of(&stream),
        ..v2.clone()
    };
    let mut again = Vec::new();
    Download::new(&bucket, &v1).run(&mut again).await?;
    assert_eq!(again, stream);

    // A stream hash that does not match is refused, in either version.
    for m in [&v1, &v2] {
        let bad = Manifest {
            stream_hash: ferry_mover::ChunkHash([9; 32]),
            ..m.clone()
        };
        let err = Download::new(&bucket, &bad)
            .run(Vec::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::StreamMismatch { volume, .. } if volume == "pgdata"),
            "version {}: {err}",
            m.version
        );
    }
    // An unknown version is refused before anything is written.
    let future = Manifest {
        version: ferry_mover::MANIFEST_VERSION + 1,
        ..v2
    };
    let mut sink = Vec::new();
    let err = Download::new(&bucket, &future)
        .run(&mut sink)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");
    assert!(sink.is_empty());
    Ok(())
}

/// A sink that takes `room` bytes, then fails every write.
struct BrokenSink {
    room: usize,
}

impl tokio::io::AsyncWrite for BrokenSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.room == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "tar -x went away",
            )));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_goes_on_alone_when_its_following_download_fails_or_never_runs()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bucket = file_bucket(&tmp.path().join("bucket"))?;
    // Far more than the hand-over budget: an upload that waited for a
    // download that is gone would never finish.
    let len = 4 * ferry_mover::HANDOFF_BUDGET;
    let data = content(
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3),
        len,
    );
    let deadline = Duration::from_secs(60);

    // The download fails (tar -x went away) after 1 MiB.
    let (sender, follow) = Download::follow(&bucket, "failed");
    let upload = Upload::new(&bucket, "run-1", "failed")
        .hand_to(sender)
        .run(std::io::Cursor::new(data.clone()));
    let download = follow.run(BrokenSink { room: 1 << 20 }, std::future::pending());
    let (up, down) = tokio::time::timeout(deadline, async { tokio::join!(upload, download) })
        .await
        .expect("the upload finished without its download");
    assert!(matches!(down, Err(Error::SinkWrite { .. })), "{down:?}");
    let up = up?;
    assert_eq!(up.manifest.total_len, len as u64);

    // The download is dropped without ever running.
    let (sender, follow) = Download::follow(&bucket, "unrun");
    drop(follow);
    let up = tokio::time::timeout(
        deadline,
        Upload::new(&bucket, "run-2", "unrun")
            .hand_to(sender)
            .run(std::io::Cursor::new(data.clone())),
    )
    .await
    .expect("the upload finished without its download")?;
    // And what it stored restores.
    let mut restored = Vec::new();
    Download::new(&bucket, &up.manifest)
        .run(&mut restored)
        .await?;
    assert!(restored == data, "the stored stream differs");
    Ok(())
}

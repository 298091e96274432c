//! The same round trip against a real S3 protocol peer: s3s + s3s-fs served
//! in-process on 127.0.0.1; multipart manifests and aborted multipart uploads.

mod common;

use common::*;
use ferry_mover::{Bucket, ChunkerParams, Error, UploadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_round_trip_with_a_multipart_manifest() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = start_s3(&tmp.path().join("s3")).await?;
    let bucket = s3_bucket(&server)?;
    let src = tmp.path().join("src");
    make_tree(&src, &TreeSpec::default())?;

    // Small chunks and a zero threshold: the manifest goes up as a multipart
    // upload.
    let opts = UploadOptions {
        chunker: ChunkerParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        },
        multipart_threshold: 0,
        ..Default::default()
    };
    let out = upload_tree(&bucket, "run-1", "data", &src, opts.clone()).await?;
    assert!(out.stats.chunks_uploaded > 10);
    let manifest = bucket.read_manifest("run-1", "data").await?;
    assert_eq!(manifest, out.manifest);
    // Objects are where the layout says, under the URL path and the prefix.
    let h = manifest.chunks[0].hash.to_hex();
    assert!(
        server
            .root
            .join(format!(
                "{S3_BUCKET}/ferry-installs/install-1/chunks/{}/{h}",
                &h[..2]
            ))
            .exists()
    );
    assert_eq!(
        bucket.list_manifests(None).await?,
        vec![("run-1".to_string(), "data".to_string())]
    );

    let dst = tmp.path().join("dst");
    download_tree(&bucket, &manifest, &dst).await?;
    compare_trees(&src, &dst)?;

    // Create-if-absent over S3: a second upload finds every chunk.
    let again = upload_tree(
        &bucket,
        "run-2",
        "data",
        &src,
        UploadOptions {
            check_existing: false,
            ..opts
        },
    )
    .await?;
    assert_eq!(again.stats.chunks_uploaded, 0, "{:?}", again.stats);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_multipart_upload_leaves_nothing_behind() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = start_s3(&tmp.path().join("s3")).await?;
    let bucket = s3_bucket(&server)?;

    // A source that fails after 12 MiB: two 5 MiB parts are already up.
    let mut items: Vec<std::io::Result<bytes::Bytes>> = (0..12)
        .map(|i| Ok(bytes::Bytes::from(vec![i as u8; 1 << 20])))
        .collect();
    items.push(Err(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "exec stream dropped",
    )));
    let source = tokio_util::io::StreamReader::new(futures::stream::iter(items));
    let err = bucket
        .put_large("big/object.bin", source, 5 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SourceRead { .. }), "{err}");

    let path = bucket.prefix().clone().join("big").join("object.bin");
    let head = object_store::ObjectStoreExt::head(bucket.store().as_ref(), &path).await;
    assert!(
        matches!(head, Err(object_store::Error::NotFound { .. })),
        "{head:?}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&server.root)?
        .chain(std::fs::read_dir(server.root.join(S3_BUCKET))?)
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload_id-"))
        .collect();
    assert!(leftovers.is_empty(), "parts left behind: {leftovers:?}");

    // The same object, completed, reads back.
    let data: Vec<u8> = (0..11u32 << 20).map(|i| (i % 251) as u8).collect();
    let n = bucket
        .put_large("big/object.bin", &data[..], 5 << 20)
        .await?;
    assert_eq!(n, data.len() as u64);
    let got = object_store::ObjectStoreExt::get(bucket.store().as_ref(), &path)
        .await?
        .bytes()
        .await?;
    assert!(got == data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refusal_is_named_and_not_retryable() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = start_s3(&tmp.path().join("s3")).await?;
    let mut options = s3_options(&server);
    for (k, v) in &mut options {
        if k == "aws_secret_access_key" {
            *v = "wrong".into();
        }
    }
    let bucket = Bucket::open(
        &format!("s3://{S3_BUCKET}/x"),
        &ferry_mover::BucketOptions {
            prefix: "p".into(),
            store_options: options,
            retry: fast_retry(),
        },
    )?;
    let err = ferry_mover::Upload::new(&bucket, "r", "v")
        .run(std::io::Cursor::new(vec![0u8; 100]))
        .await
        .unwrap_err();
    eprintln!("{err}");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(matches!(err, Error::BucketRefused { .. }), "{err:?}");
    Ok(())
}

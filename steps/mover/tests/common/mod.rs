//! Shared helpers of the mover's tests: a tree generator, a tree comparer,
//! real `tar` on both ends, store wrappers that count or fail requests, and
//! an in-process S3 server. The trees, the stores and the S3 server live in
//! files of their own that other crates' tests include by path.
#![allow(dead_code, missing_docs, unused_imports)]

mod s3;
mod stores;
mod tree;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::process::{Child, Command};

use ferry_mover::{
    Bucket, BucketOptions, Download, Manifest, RetryPolicy, Upload, UploadOptions, UploadOutcome,
};

pub use s3::*;
pub use stores::*;
pub use tree::*;

// ---------------------------------------------------------------- tar

pub fn tar_create(dir: &Path) -> anyhow::Result<Child> {
    Ok(Command::new("tar")
        .args(["-c", "--sparse", "--numeric-owner", "-f", "-", "-C"])
        .arg(dir)
        .arg(".")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

pub fn tar_extract(dir: &Path) -> anyhow::Result<Child> {
    fs::create_dir_all(dir)?;
    Ok(Command::new("tar")
        .args([
            "-x",
            "--numeric-owner",
            "--same-permissions",
            "-f",
            "-",
            "-C",
        ])
        .arg(dir)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?)
}

/// `tar -c dir | upload`.
pub async fn upload_tree(
    bucket: &Bucket,
    run: &str,
    volume: &str,
    dir: &Path,
    opts: UploadOptions,
) -> anyhow::Result<UploadOutcome> {
    let mut tar = tar_create(dir)?;
    let stdout = tar.stdout.take().context("tar stdout")?;
    let out = Upload::new(bucket, run, volume)
        .options(opts)
        .run(stdout)
        .await?;
    let status = tar.wait().await?;
    ensure!(status.success(), "tar -c exited with {status}");
    Ok(out)
}

/// `download | tar -x dir`.
pub async fn download_tree(bucket: &Bucket, manifest: &Manifest, dir: &Path) -> anyhow::Result<()> {
    let mut tar = tar_extract(dir)?;
    let stdin = tar.stdin.take().context("tar stdin")?;
    Download::new(bucket, manifest).run(stdin).await?;
    let status = tar.wait().await?;
    ensure!(status.success(), "tar -x exited with {status}");
    Ok(())
}

/// A quick retry policy for tests.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(20),
    }
}

pub fn file_bucket(dir: &Path) -> anyhow::Result<Bucket> {
    let url = url::Url::from_directory_path(dir).map_err(|()| anyhow::anyhow!("bad dir"))?;
    Ok(Bucket::open(
        url.as_str(),
        &BucketOptions {
            prefix: "install-1".into(),
            retry: fast_retry(),
            ..Default::default()
        },
    )?)
}

pub fn s3_bucket(server: &S3Server) -> anyhow::Result<Bucket> {
    Ok(Bucket::open(
        &format!("s3://{S3_BUCKET}/ferry-installs"),
        &BucketOptions {
            prefix: "install-1".into(),
            store_options: s3_options(server),
            retry: fast_retry(),
        },
    )?)
}

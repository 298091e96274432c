//! The mover against the raw `tar -c | tar -x` pipe, on generated trees of
//! mixed sizes at 256 MiB and 1 GiB, through a `file://` bucket; plus a
//! chunk-size sweep on the 256 MiB tree.
//!
//! Run: `cargo bench -p ferry-mover --bench mover`. The mover runs in a child
//! process (this binary, re-executed) so that its peak RSS (VmHWM) is its own.
//! Every timed run starts from `fresh_start` (synced, the page cache dropped
//! as root, its input read back in) and is timed until its data is on disk
//! (the bucket syncs each object; the pipe and the download into `tar -x`
//! end with a `sync`).
#![allow(missing_docs)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_mover::{Bucket, BucketOptions, ChunkerParams, Download, Upload, UploadOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The generators the tests use too (`content`, `generate_mixed`).
#[path = "../tests/common/tree.rs"]
mod tree;
use tree::{content, fresh_start, generate_mixed as generate, may_drop_caches};

const MIB: u64 = 1 << 20;

fn tar_pipe(src: &Path, dst: &Path) -> Duration {
    fs::create_dir_all(dst).unwrap();
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg("tar -c --sparse --numeric-owner -f - -C \"$1\" . | tar -x --numeric-owner --same-permissions -f - -C \"$2\"")
        .arg("sh")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(status.success());
    sync();
    t.elapsed()
}

/// Writes every dirty page to disk: runs are timed until their data is
/// there, as the bucket's objects are (it syncs each).
fn sync() {
    assert!(Command::new("sync").status().unwrap().success());
}

fn hwm_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This process's CPU seconds (user + system).
fn cpu_s() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn bucket(dir: &Path) -> Bucket {
    let url = url::Url::from_directory_path(dir).unwrap();
    Bucket::open(
        url.as_str(),
        &BucketOptions {
            prefix: "bench".into(),
            ..Default::default()
        },
    )
    .unwrap()
}

async fn upload(
    bucket: &Bucket,
    run: &str,
    src: &Path,
    opts: UploadOptions,
) -> ferry_mover::UploadOutcome {
    let mut tar = tokio::process::Command::new("tar")
        .args(["-c", "--sparse", "--numeric-owner", "-f", "-", "-C"])
        .arg(src)
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Upload::new(bucket, run, "vol")
        .options(opts)
        .run(tar.stdout.take().unwrap())
        .await
        .unwrap();
    assert!(tar.wait().await.unwrap().success());
    out
}

/// Child: upload, download, re-upload; prints one line of numbers.
async fn child_clone(src: PathBuf, bucket_dir: PathBuf, dst: PathBuf) {
    let b = bucket(&bucket_dir);
    fresh_start(&src);
    let c0 = cpu_s();
    let t = Instant::now();
    let up = upload(&b, "run-1", &src, UploadOptions::default()).await;
    let up_s = t.elapsed().as_secs_f64();
    let c1 = cpu_s();
    let hwm_up = hwm_kib();

    // The download alone, into a sink that discards.
    let t = Instant::now();
    Download::new(&b, &up.manifest)
        .run(tokio::io::sink())
        .await
        .unwrap();
    let null_s = t.elapsed().as_secs_f64();
    let hwm_null = hwm_kib();

    fs::create_dir_all(&dst).unwrap();
    // The chunks read back, as the pipe's source is.
    fresh_start(&bucket_dir);
    let t = Instant::now();
    let mut tar = tokio::process::Command::new("tar")
        .args([
            "-x",
            "--numeric-owner",
            "--same-permissions",
            "-f",
            "-",
            "-C",
        ])
        .arg(&dst)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    Download::new(&b, &up.manifest)
        .run(tar.stdin.take().unwrap())
        .await
        .unwrap();
    assert!(tar.wait().await.unwrap().success());
    sync();
    let down_s = t.elapsed().as_secs_f64();
    let c2 = cpu_s();
    let hwm_down = hwm_kib();

    fresh_start(&src);
    let t = Instant::now();
    let again = upload(&b, "run-2", &src, UploadOptions::default()).await;
    let re_s = t.elapsed().as_secs_f64();
    eprintln!(
        "  peak RSS after upload {hwm_up} KiB, null download {hwm_null} KiB, tar download {hwm_down} KiB"
    );
    println!(
        "RESULT total_len={} chunks={} stored={} up_s={up_s:.3} down_s={down_s:.3} re_s={re_s:.3} null_s={null_s:.3} re_uploaded={} hwm_kib={} up_cpu={:.2} down_cpu={:.2}",
        up.manifest.total_len,
        up.stats.chunks,
        up.manifest.stored_len(),
        again.stats.bytes_uploaded,
        hwm_kib(),
        c1 - c0,
        c2 - c1
    );
}

/// Child: chunk-size sweep — upload MB/s, mean chunk, and what changing 100
/// bytes in one large file costs.
async fn child_sweep(src: PathBuf, work: PathBuf, min: u32, avg: u32, max: u32) {
    let b = bucket(&work);
    let opts = UploadOptions {
        chunker: ChunkerParams { min, avg, max },
        ..Default::default()
    };
    let t = Instant::now();
    let first = upload(&b, "run-1", &src, opts.clone()).await;
    let secs = t.elapsed().as_secs_f64();
    // The largest file, changed in its middle, mtime kept.
    let mut largest: Option<(u64, PathBuf)> = None;
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if largest.as_ref().is_none_or(|(l, _)| m.len() > *l) {
                largest = Some((m.len(), e.path()));
            }
        }
    }
    let (_, path) = largest.unwrap();
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let original = fs::read(&path).unwrap();
    let mut changed = original.clone();
    let mid = changed.len() / 2;
    changed[mid..mid + 100].fill(0xAB);
    fs::write(&path, &changed).unwrap();
    File::open(&path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    let second = upload(&b, "run-2", &src, opts).await;
    fs::write(&path, &original).unwrap();
    File::open(&path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    println!(
        "RESULT chunks={} mean_chunk_kib={:.0} stored_ratio={:.3} up_mbs={:.0} changed_chunks={} changed_raw_kib={} hwm_kib={}",
        first.stats.chunks,
        first.manifest.total_len as f64 / first.stats.chunks as f64 / 1024.0,
        first.manifest.stored_len() as f64 / first.manifest.total_len as f64,
        first.manifest.total_len as f64 / secs / 1e6,
        second.stats.chunks_uploaded,
        second.stats.raw_bytes_uploaded / 1024,
        hwm_kib()
    );
}

/// Child: the mover alone, without tar or disk — an in-memory stream into a
/// `memory://` bucket and back into a discarding sink.
async fn child_micro(len: usize) {
    let mut rng = StdRng::seed_from_u64(5);
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        let n = rng
            .random_range(4usize << 10..=4 << 20)
            .min(len - data.len());
        data.extend_from_slice(&content(&mut rng, n));
    }
    let b = Bucket::open("memory://", &BucketOptions::default()).unwrap();
    let t = Instant::now();
    let up = Upload::new(&b, "r", "v")
        .run(std::io::Cursor::new(data))
        .await
        .unwrap();
    let up_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    Download::new(&b, &up.manifest)
        .run(tokio::io::sink())
        .await
        .unwrap();
    let down_s = t.elapsed().as_secs_f64();
    println!(
        "RESULT up_mbs={:.0} down_mbs={:.0}",
        len as f64 / up_s / 1e6,
        len as f64 / down_s / 1e6
    );
}

/// Runs this binary as a child, with glibc's arenas capped as the daemon
/// runs (cli/ferry.service): the bucket's file writes run on tokio's
/// blocking threads, and each new thread would otherwise get an arena of
/// its own, growing the peak with the number of writes waiting on disk.
fn run_child(args: &[String]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("MALLOC_ARENA_MAX", "2")
        .env(
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=8388608:glibc.malloc.trim_threshold=67108864",
        )
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "child failed");
    let s = String::from_utf8(out.stdout).unwrap();
    s.lines()
        .find(|l| l.starts_with("RESULT "))
        .expect("a RESULT line")
        .to_string()
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("child") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        match args[1].as_str() {
            "clone" => rt.block_on(child_clone(
                args[2].clone().into(),
                args[3].clone().into(),
                args[4].clone().into(),
            )),
            "sweep" => rt.block_on(child_sweep(
                args[2].clone().into(),
                args[3].clone().into(),
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
                args[6].parse().unwrap(),
            )),
            "micro" => rt.block_on(child_micro(args[2].parse().unwrap())),
            other => panic!("unknown child mode {other}"),
        }
        return;
    }

    let sizes: Vec<u64> = match std::env::var("MOVER_BENCH_SIZES_MIB") {
        Ok(s) => s
            .split(',')
            .map(|x| x.trim().parse::<u64>().unwrap() * MIB)
            .collect(),
        Err(_) => vec![256 * MIB, 1024 * MIB],
    };
    if !may_drop_caches() {
        eprintln!(
            "note: not allowed to drop the page cache (run as root for that): later runs may be slower as it fills memory"
        );
    }
    let df = Command::new("df").args(["-h", "."]).output().unwrap();
    eprint!("{}", String::from_utf8_lossy(&df.stdout));
    // Generated under the current dir, not /tmp (which may be small).
    let work = tempfile::Builder::new()
        .prefix(".mover-bench-")
        .tempdir_in(".")
        .unwrap();
    let mut results = Vec::new();
    for &size in &sizes {
        let dir = work.path().join(format!("{}m", size / MIB));
        let src = dir.join("src");
        let t = Instant::now();
        generate(&src, size, size).unwrap();
        eprintln!(
            "generated {} MiB in {:.1}s",
            size / MIB,
            t.elapsed().as_secs_f64()
        );
        // Both contenders start alike (`fresh_start`); nothing is deleted
        // until both have run (ext4 is slow to create files for a while
        // after many were deleted).
        fresh_start(&src);
        let pipe = tar_pipe(&src, &dir.join("pipe")).as_secs_f64();
        let line = run_child(&[
            "child".into(),
            "clone".into(),
            src.display().to_string(),
            dir.join("bucket").display().to_string(),
            dir.join("dst").display().to_string(),
        ]);
        let total = field(&line, "total_len");
        let (up, down) = (field(&line, "up_s"), field(&line, "down_s"));
        let mover = up + down;
        let hwm = field(&line, "hwm_kib");
        let reup = field(&line, "re_uploaded") / total;
        println!(
            "size={}MiB stream={:.0}MB tar_pipe={:.0}MB/s mover={:.0}MB/s (upload {:.0}MB/s, download {:.0}MB/s) chunks={} stored/stream={:.3} reclone_uploaded_fraction={:.5} (re-upload {:.0}MB/s) mover_peak_rss={:.1}MiB",
            size / MIB,
            total / 1e6,
            total / pipe / 1e6,
            total / mover / 1e6,
            total / up / 1e6,
            total / down / 1e6,
            field(&line, "chunks"),
            field(&line, "stored") / total,
            reup,
            total / field(&line, "re_s") / 1e6,
            hwm / 1024.0
        );
        println!(
            "  mover cpu: upload {:.2}s download {:.2}s (wall {up:.2}s / {down:.2}s); download into a null sink {:.0}MB/s",
            field(&line, "up_cpu"),
            field(&line, "down_cpu"),
            total / field(&line, "null_s") / 1e6
        );
        if size == sizes[0] {
            let line = run_child(&["child".into(), "micro".into(), size.to_string()]);
            println!(
                "  mover alone (memory stream, memory:// bucket, null sink): upload {:.0}MB/s, download {:.0}MB/s",
                field(&line, "up_mbs"),
                field(&line, "down_mbs")
            );
        }
        results.push((size, total / pipe, total / mover, reup, hwm));
        if std::env::var("MOVER_BENCH_SWEEP").is_ok_and(|v| v == "1") && size == sizes[0] {
            for (min, avg, max) in [
                (64 << 10, 256 << 10, 1 << 20),
                (256 << 10, 1 << 20, 4 << 20),
                (1 << 20, 4 << 20, 16 << 20),
            ] {
                let w = dir.join(format!("sweep-{avg}"));
                let line = run_child(&[
                    "child".into(),
                    "sweep".into(),
                    src.display().to_string(),
                    w.display().to_string(),
                    min.to_string(),
                    avg.to_string(),
                    max.to_string(),
                ]);
                println!(
                    "sweep min={}K avg={}K max={}K {}",
                    min >> 10,
                    avg >> 10,
                    max >> 10,
                    line.trim_start_matches("RESULT ")
                );
                fs::remove_dir_all(&w).unwrap();
            }
        }
        // Deleted with the rest at the end: deleting here would slow the
        // next size's file creation.
    }
    let last = results.last().unwrap();
    println!("ratio chunk_store_vs_tar_pipe={:.3}", last.2 / last.1);
    println!(
        "ratio chunk_store_reupload_fraction={:.5}",
        results.iter().map(|r| r.3).fold(0.0, f64::max)
    );
    if results.len() >= 2 {
        println!(
            "ratio chunk_store_rss_1g_vs_256m={:.3}",
            results[results.len() - 1].4 / results[0].4
        );
    }
    drop(work);
}

//! A cross-cluster clone of a volume through the data mover against the raw
//! `tar -c | tar -x` pipe, on generated trees of mixed sizes (256 MiB and
//! 1 GiB; `CLONE_BENCH_SIZES_MIB=64,256` to choose), through a `file://`
//! bucket between two simulated clusters.
//!
//! Run: `cargo bench -p ferry-steps --bench clone_mover`. Every part runs
//! in a process of its own (this binary, re-executed): each simulated
//! cluster, and per size the clone (ferry's engine and the `volume-mover`
//! step), so that the clone's peak RSS (VmHWM) is ferry's alone, measured
//! afresh for each size. The volume is on `efs` (no snapshots), so it is
//! read live: the simulator's snapshot is a full copy, where a real CSI
//! snapshot costs nothing. After the clone an unchanged second clone (new
//! name, new destination namespace) measures what a re-clone uploads; then
//! the first clone runs again, into an empty bucket through a second
//! engine, and the faster of the two first clones counts, as the faster of
//! the pipe's two runs does. Both destinations are compared with the
//! source on every attribute.
//!
//! Every timed run (each pipe, each clone) starts alike: everything
//! synced, the page cache dropped (as root; the bench says when it cannot)
//! and the source tree read back into it. Without the drop each run was
//! slower than the one before as the page cache filled free memory (eight
//! pipes in a row went from 1.8 s to 7.0 s each), which favoured whichever
//! contender ran first. Runs are timed until their data is on disk (`sync`
//! included): without it, whether 1 GiB of writes is throttled depends on
//! what the kernel still had dirty (the times until copied, not synced, are
//! printed too). The pipe is timed before and after the clone (the faster
//! run counts), and nothing is deleted until the end: ext4 is slow to
//! create files for a while after many were deleted. The clone writes more
//! than the pipe: the bucket is on the same disk.
//!
//! Prints per size the MB/s of both and the peak RSS, and where the CPU
//! went: the pipe's two `tar`s against the clone's ferry, source simulator
//! with its `tar -c` and destination simulator with its `tar -x`, all on
//! this machine's cores (a real deployment has the clusters' share on their
//! nodes), and the least time that leaves the clone's copy. Then
//! `ratio mover_vs_tar_pipe=X` (the largest size's clone MB/s over its
//! pipe's; goal >= 0.5), `ratio reclone_uploaded_fraction=Y` (the most any
//! size's re-clone uploaded, over its stream; goal <= 0.01) and
//! `ratio rss_1g_vs_256m=Z` (the clone's peak RSS at the largest size over
//! the smallest; goal <= 1.2). Generated trees live under cargo's target
//! tmp dir and are deleted at the end.
#![allow(missing_docs)]

#[path = "../tests/common/mover_env.rs"]
mod mover_env;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use ferry_engine::{Event, Phase};
use ferry_steps::workflow::{
    CloneWorkflow, MoverCheckpoint, MoverOutput, MoverPhase, MoverSettings,
};
use mover_env::tree::{compare_trees, fresh_start, generate_mixed};
use mover_env::{apply_yaml, engine, file_bucket, pv_dir, spec, volumes_yaml};

const MIB: u64 = 1 << 20;
const NS: &str = "bench";
const PVC: &str = "data";

fn hwm_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This process's CPU seconds (user + system).
fn cpu_s() -> f64 {
    proc_cpu_s("self", false)
}

/// A process's CPU seconds (user + system), with its waited-for children's
/// (a simulator's `tar` processes) when `children`.
fn proc_cpu_s(pid: &str, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> f64 { f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    let mut ticks = field(11) + field(12);
    if children {
        ticks += field(13) + field(14);
    }
    ticks / 100.0
}

/// Writes every dirty page to disk (`sync`).
fn sync() {
    assert!(Command::new("sync").status().unwrap().success());
}

/// `tar -c | tar -x` from a [`fresh_start`]: its time until the copy
/// ended, until it was on disk, and the CPU seconds of both `tar`s.
fn tar_pipe(src: &Path, dst: &Path) -> (f64, f64, f64) {
    std::fs::create_dir_all(dst).unwrap();
    fresh_start(src);
    let c0 = proc_cpu_s("self", true) - cpu_s();
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
    let copied = t.elapsed().as_secs_f64();
    let cpu = proc_cpu_s("self", true) - cpu_s() - c0;
    sync();
    (copied, t.elapsed().as_secs_f64(), cpu)
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// A two-thread runtime whose threads are named `name` (for profiles).
fn rt(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// A simulated cluster in a child process, until killed.
struct SimProcess {
    child: Child,
    kubeconfig: PathBuf,
}

impl SimProcess {
    fn start(name: &str, dir: &Path) -> SimProcess {
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child", "sim", name])
            .arg(dir.join(name))
            .arg(&kubeconfig)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready "), "sim {name}: {line}");
        SimProcess { child, kubeconfig }
    }

    /// Stops it: its peak RSS (KiB) and its CPU seconds with its `tar`s'.
    fn stop(mut self) -> (u64, f64) {
        let hwm = hwm_kib(Some(self.child.id()));
        let cpu = proc_cpu_s(&self.child.id().to_string(), true);
        let _ = self.child.kill();
        let _ = self.child.wait();
        (hwm, cpu)
    }
}

/// Child: serve one simulated cluster.
async fn child_sim(name: String, data_dir: PathBuf, kubeconfig: PathBuf) {
    ferry_sim::serve_until_killed(ferry_sim::ServeArgs {
        name,
        data_dir,
        kubeconfig,
        port: 0,
        minor: 32,
        cluster_objects: None,
        pod_ready_delay_ms: 50,
    })
    .await
    .unwrap();
}

/// The phases of step `id` in `run`, in seconds from the log's timestamps:
/// setup (its last start to its first checkpoint: the source's mover pod
/// running), upload (to the checkpoint that opens the download phase; what
/// is left of the destination's setup, which runs alongside the source's,
/// and the download following the upload, included) and the rest of the
/// download (to its success).
fn step_phases(engine: &ferry_engine::Engine, run: ferry_store::RunId, id: &str) -> [f64; 3] {
    let (mut start, mut first, mut stored, mut end) = (0, None, None, 0);
    for env in engine.store().read(run, 0).unwrap() {
        match Event::decode(&env.event).unwrap() {
            Event::StepStarted { step, .. } if step.0 == id => start = env.at_ms,
            Event::StepProgress { step, checkpoint } if step.0 == id => {
                let cp: MoverCheckpoint = checkpoint.decode().unwrap();
                first.get_or_insert(env.at_ms);
                if cp.phase == MoverPhase::Download {
                    stored.get_or_insert(env.at_ms);
                }
            }
            Event::StepSucceeded { step, .. } if step.0 == id => end = env.at_ms,
            _ => {}
        }
    }
    let (first, stored) = (first.unwrap(), stored.unwrap());
    [first - start, stored - first, end - stored].map(|ms| ms as f64 / 1000.0)
}

/// What one timed clone gave.
struct Sample {
    /// Until synced, and until copied (seconds).
    secs: f64,
    copied: f64,
    /// [`step_phases`] of its volume step.
    phases: [f64; 3],
    out: MoverOutput,
    /// Ferry's CPU seconds, and each simulator's with its `tar`s.
    cpu: f64,
    sims_cpu: Vec<f64>,
}

/// One clone of the bench volume (its files in `vol`) into `dst_ns`, timed
/// from a [`fresh_start`] until its data is on disk.
async fn timed_clone(
    engine: &ferry_engine::Engine,
    dst_ns: &str,
    sim_pids: &[String; 2],
    vol: &Path,
) -> Sample {
    fresh_start(vol);
    let c0 = cpu_s();
    let sims0 = sim_pids.clone().map(|p| proc_cpu_s(&p, true));
    let t = Instant::now();
    let run = engine
        .submit(CloneWorkflow::submission(&spec(dst_ns, NS, dst_ns, false)).unwrap())
        .await
        .unwrap();
    let phase = engine.wait(run).await.unwrap();
    let copied = t.elapsed().as_secs_f64();
    let sims_cpu: Vec<f64> = sim_pids
        .iter()
        .zip(sims0)
        .map(|(p, c)| proc_cpu_s(p, true) - c)
        .collect();
    sync();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(phase, Phase::Succeeded);
    let step = format!("volume/{dst_ns}/{PVC}");
    let out: MoverOutput = engine.load(run).unwrap().steps[&ferry_engine::StepId(step.clone())]
        .output
        .as_ref()
        .unwrap()
        .decode()
        .unwrap();
    Sample {
        secs,
        copied,
        phases: step_phases(engine, run, &step),
        out,
        cpu: cpu_s() - c0,
        sims_cpu,
    }
}

/// Child: the clone, an unchanged re-clone, and the clone again into an
/// empty bucket (the faster of the two first clones counts, as the faster
/// of the pipe's two runs does); prints one line of numbers.
async fn child_clone(
    work: PathBuf,
    prod: PathBuf,
    staging: PathBuf,
    sim_pids: [String; 2],
    vol: PathBuf,
) {
    let clusters =
        || ferry_steps::cluster::Clusters::from_paths(&[prod.clone(), staging.clone()]).unwrap();
    let engine_in = |name: &str| {
        engine(
            clusters(),
            file_bucket(&work.join(format!("bucket-{name}"))),
            MoverSettings::default(),
            &work.join(format!("state-{name}")),
        )
    };
    let first = engine_in("a");
    let a = timed_clone(&first, "bench-1", &sim_pids, &vol).await;
    let hwm = hwm_kib(None);
    let again = timed_clone(&first, "bench-2", &sim_pids, &vol).await;
    let hwm_all = hwm_kib(None);
    drop(first);
    let b = timed_clone(&engine_in("b"), "bench-3", &sim_pids, &vol).await;
    let best = if a.secs <= b.secs { &a } else { &b };
    let [setup_s, up_s, down_s] = best.phases;
    println!(
        "RESULT stream={} expected={} chunks={} uploaded={} clone_s={:.3} clone_a_s={:.3} clone_b_s={:.3} copied_s={:.3} setup_s={setup_s:.3} up_s={up_s:.3} down_s={down_s:.3} cpu_s={:.2} src_cpu_s={:.2} dst_cpu_s={:.2} hwm_kib={hwm} reclone_s={:.3} reclone_uploaded={} hwm_all_kib={hwm_all}",
        best.out.bytes,
        best.out.expected_bytes.unwrap_or(0),
        best.out.chunks,
        best.out.bytes_uploaded,
        best.secs,
        a.secs,
        b.secs,
        best.copied,
        best.cpu,
        best.sims_cpu[0],
        best.sims_cpu[1],
        again.secs,
        again.out.bytes_uploaded,
    );
}

/// One size: generate, time the pipe, clone in children, compare, clean up.
fn run_size(work: &Path, size: u64) -> (f64, f64, f64, f64) {
    let dir = work.join(format!("{}m", size / MIB));
    let src = dir.join("src");
    let t = Instant::now();
    generate_mixed(&src, size, size).unwrap();
    eprintln!(
        "generated {} MiB in {:.1}s",
        size / MIB,
        t.elapsed().as_secs_f64()
    );
    // Nothing is deleted until both contenders have run: a tree deleted
    // just before makes ext4 slow to allocate inodes for a while (it skips
    // recently deleted ones).
    let pipe_before = tar_pipe(&src, &dir.join("pipe-1"));

    let prod = SimProcess::start("prod", &dir);
    let staging = SimProcess::start("staging", &dir);
    // The tree becomes the source volume: an efs volume (live copy), moved
    // into its directory (same file system: a rename).
    let rt = rt("bench-main");
    let vol = rt.block_on(async {
        let c = clusters_from(&[&prod.kubeconfig])
            .get("prod")
            .await
            .unwrap();
        apply_yaml(&c, &volumes_yaml(NS, &[(PVC, "efs", "ReadWriteMany")])).await;
        pv_dir(&c, NS, PVC).await
    });
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), vol.join(e.file_name())).unwrap();
    }

    sync();
    // The clone runs with glibc's malloc set up as the daemon's is
    // (cli/ferry.service): arenas capped (more only grow the peak with the
    // thread count, not with the data), freed buffers kept for reuse.
    let out = Command::new(std::env::current_exe().unwrap())
        .env("MALLOC_ARENA_MAX", "2")
        .env(
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=8388608:glibc.malloc.trim_threshold=67108864",
        )
        .args(["child", "clone"])
        .arg(dir.join("ferry"))
        .arg(&prod.kubeconfig)
        .arg(&staging.kubeconfig)
        .arg(prod.child.id().to_string())
        .arg(staging.child.id().to_string())
        .arg(&vol)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "clone child failed");
    let line = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .expect("a RESULT line")
        .to_string();
    for dst_ns in ["bench-1", "bench-3"] {
        let dst = rt.block_on(async {
            let c = clusters_from(&[&staging.kubeconfig])
                .get("staging")
                .await
                .unwrap();
            pv_dir(&c, dst_ns, PVC).await
        });
        compare_trees(&vol, &dst).expect("the clone equals its source");
    }
    let ((sim_src_kib, sim_src_cpu), (sim_dst_kib, sim_dst_cpu)) = (prod.stop(), staging.stop());
    // The pipe again, after the clone, on the file system as the clone found
    // it; the faster of the two runs counts (the conservative choice).
    let pipe_after = tar_pipe(&vol, &dir.join("pipe-2"));
    let (pipe_s, pipe_copied_s, pipe_cpu) = if pipe_before.1 <= pipe_after.1 {
        (pipe_before.1, pipe_before.0, pipe_before.2)
    } else {
        (pipe_after.1, pipe_after.0, pipe_after.2)
    };

    let stream = field(&line, "stream");
    let clone_s = field(&line, "clone_s");
    let (up_s, down_s) = (field(&line, "up_s"), field(&line, "down_s"));
    let hwm = field(&line, "hwm_kib");
    let reup = field(&line, "reclone_uploaded") / stream;
    println!(
        "size={}MiB stream={:.0}MB du={:.0}MB chunks={} tar_pipe={:.0}MB/s (before the clone {:.0}MB/s, after {:.0}MB/s; {:.0}MB/s until copied, not synced) clone={:.0}MB/s (first {:.0}MB/s, into an empty bucket again {:.0}MB/s; {clone_s:.2}s; {:.0}MB/s until copied, not synced: mover setup {:.2}s, upload with the download following {up_s:.2}s ({:.0}MB/s), rest of the download {down_s:.2}s; ferry cpu {:.2}s) stored/stream={:.3} reclone={:.0}MB/s reclone_uploaded_fraction={:.5} clone_peak_rss={:.1}MiB (after the re-clone {:.1}MiB; sims {:.0}/{:.0}MiB, cpu with their tars over the three clones {:.2}s/{:.2}s)",
        size / MIB,
        stream / 1e6,
        field(&line, "expected") / 1e6,
        field(&line, "chunks"),
        stream / pipe_s / 1e6,
        stream / pipe_before.1 / 1e6,
        stream / pipe_after.1 / 1e6,
        stream / pipe_copied_s / 1e6,
        stream / clone_s / 1e6,
        stream / field(&line, "clone_a_s") / 1e6,
        stream / field(&line, "clone_b_s") / 1e6,
        stream / field(&line, "copied_s") / 1e6,
        field(&line, "setup_s"),
        stream / up_s / 1e6,
        field(&line, "cpu_s"),
        field(&line, "uploaded") / stream,
        stream / field(&line, "reclone_s") / 1e6,
        reup,
        hwm / 1024.0,
        field(&line, "hwm_all_kib") / 1024.0,
        sim_src_kib as f64 / 1024.0,
        sim_dst_kib as f64 / 1024.0,
        sim_src_cpu,
        sim_dst_cpu,
    );
    // Where the CPU went: every part of the clone runs on this machine's
    // cores (in a real deployment the clusters' own work, the simulators'
    // here, is on their nodes), so the copy cannot take less than its CPU
    // seconds over the cores.
    let (ferry_cpu, src_cpu, dst_cpu) = (
        field(&line, "cpu_s"),
        field(&line, "src_cpu_s"),
        field(&line, "dst_cpu_s"),
    );
    let clone_cpu = ferry_cpu + src_cpu + dst_cpu;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "size={}MiB cpu: tar_pipe {pipe_cpu:.2}s (both tars) over {pipe_copied_s:.2}s; clone {clone_cpu:.2}s (ferry {ferry_cpu:.2}s, source sim with tar -c {src_cpu:.2}s, destination sim with tar -x {dst_cpu:.2}s) over {:.2}s: on {cores} cores its copy takes at least {:.2}s ({:.0}MB/s before the sync)",
        size / MIB,
        field(&line, "copied_s"),
        clone_cpu / cores,
        stream / (clone_cpu / cores) / 1e6,
    );
    // Deleted with the rest at the end: deleting here would slow the next
    // size's file creation (see above).
    (stream / pipe_s, stream / clone_s, reup, hwm)
}

fn clusters_from(paths: &[&PathBuf]) -> ferry_steps::cluster::Clusters {
    let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    ferry_steps::cluster::Clusters::from_paths(&paths).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("child") {
        match args[1].as_str() {
            "sim" => rt(&format!("sim-{}", args[2])).block_on(child_sim(
                args[2].clone(),
                args[3].clone().into(),
                args[4].clone().into(),
            )),
            "clone" => rt("ferry").block_on(child_clone(
                args[2].clone().into(),
                args[3].clone().into(),
                args[4].clone().into(),
                [args[5].clone(), args[6].clone()],
                args[7].clone().into(),
            )),
            other => panic!("unknown child mode {other}"),
        }
        return;
    }
    // `cargo bench` passes filters; this bench runs whole or not at all.
    let sizes: Vec<u64> = match std::env::var("CLONE_BENCH_SIZES_MIB") {
        Ok(s) => s
            .split(',')
            .map(|x| x.trim().parse::<u64>().unwrap() * MIB)
            .collect(),
        Err(_) => vec![256 * MIB, 1024 * MIB],
    };
    if !mover_env::tree::may_drop_caches() {
        eprintln!(
            "note: not allowed to drop the page cache (run as root for that): later runs may be slower as it fills memory"
        );
    }
    let base = PathBuf::from(option_env!("CARGO_TARGET_TMPDIR").unwrap_or("."));
    std::fs::create_dir_all(&base).unwrap();
    let df = Command::new("df").arg("-h").arg(&base).output().unwrap();
    eprint!("{}", String::from_utf8_lossy(&df.stdout));
    let work = tempfile::Builder::new()
        .prefix("clone-mover-bench-")
        .tempdir_in(&base)
        .unwrap();
    let results: Vec<_> = sizes.iter().map(|&s| run_size(work.path(), s)).collect();
    let last = results.last().unwrap();
    println!("ratio mover_vs_tar_pipe={:.3}", last.1 / last.0);
    println!(
        "ratio reclone_uploaded_fraction={:.5}",
        results.iter().map(|r| r.2).fold(0.0, f64::max)
    );
    if results.len() >= 2 {
        println!(
            "ratio rss_1g_vs_256m={:.3}",
            results[results.len() - 1].3 / results[0].3
        );
    }
    drop(work);
}

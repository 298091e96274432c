//! `ferry engine-demo`: the durable engine on a workflow that copies files.
//!
//! It shows, in a few seconds and with no cluster: a plan extended by its
//! first step (one copy step per file, as preflight adds one per volume),
//! checkpoints, a simulated `kill -9` in the middle of a copy and the resume
//! that carries the run on, a second run whose last step fails so the
//! engine rolls back what it made, and `verify` of both hash chains.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_engine::{
    CompensateCtx, Engine, EngineOptions, Event, Json, Phase, Registry, Step, StepCtx, StepDecl,
    StepError, Submission,
};
use ferry_store::{Key32, RunId, Store, StoreOptions};
use serde::{Deserialize, Serialize};

/// Lists the source files and extends the plan with one copy step each.
struct Inventory;
/// Copies one file in blocks, checkpointing the offset.
struct CopyFile {
    slow: bool,
}
/// Compares source and destination; fails for good on a mismatch.
struct Check;

#[derive(Serialize, Deserialize)]
struct Dirs {
    src: PathBuf,
    dst: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct CopyInput {
    src: PathBuf,
    dst: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct CheckInput {
    dirs: Dirs,
    /// Demands a file that does not exist: the run must roll back.
    expect_extra: Option<String>,
}

const BLOCK: usize = 64 * 1024;

impl Step for Inventory {
    type Input = Dirs;
    type Output = Vec<String>;
    fn kind(&self) -> &'static str {
        "inventory"
    }
    async fn run(&self, ctx: &StepCtx, dirs: Dirs) -> Result<Vec<String>, StepError> {
        let mut names: Vec<String> = std::fs::read_dir(&dirs.src)
            .map_err(|e| StepError::permanent(format!("cannot list {}: {e}", dirs.src.display())))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let steps: Vec<StepDecl> = names
            .iter()
            .map(|n| {
                Registry::decl(
                    &CopyFile { slow: false },
                    format!("copy/{n}"),
                    &CopyInput {
                        src: dirs.src.join(n),
                        dst: dirs.dst.join(n),
                    },
                )
                .after(&["inventory"])
            })
            .collect();
        let blocks = names
            .iter()
            .map(|n| ("check".into(), format!("copy/{n}").into()))
            .collect();
        ctx.extend_plan(steps, blocks);
        Ok(names)
    }
    async fn compensate(
        &self,
        _: &CompensateCtx,
        _: Dirs,
        _: Option<Vec<String>>,
    ) -> Result<(), StepError> {
        Ok(())
    }
}

impl Step for CopyFile {
    type Input = CopyInput;
    type Output = u64;
    fn kind(&self) -> &'static str {
        "copy"
    }
    async fn run(&self, ctx: &StepCtx, input: CopyInput) -> Result<u64, StepError> {
        let data = std::fs::read(&input.src)
            .map_err(|e| StepError::permanent(format!("{}: {e}", input.src.display())))?;
        // Resume from the last durable checkpoint: the offset already copied.
        let mut offset: usize = ctx.checkpoint().unwrap_or(0);
        if offset > 0 {
            println!(
                "    {} resumes at byte {offset} (checkpoint from attempt before)",
                ctx.step_id()
            );
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&input.dst)
            .map_err(|e| StepError::retryable(format!("{}: {e}", input.dst.display())))?;
        use std::io::{Seek, SeekFrom, Write};
        out.set_len(offset as u64)
            .map_err(|e| StepError::retryable(e.to_string()))?;
        while offset < data.len() {
            let end = (offset + BLOCK).min(data.len());
            out.seek(SeekFrom::Start(offset as u64))
                .map_err(|e| StepError::retryable(e.to_string()))?;
            out.write_all(&data[offset..end])
                .map_err(|e| StepError::retryable(e.to_string()))?;
            out.sync_data()
                .map_err(|e| StepError::retryable(e.to_string()))?;
            offset = end;
            ctx.save_checkpoint(&offset, false).await?;
            if self.slow {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if ctx.is_cancelled() {
                return Err(StepError::cancelled());
            }
        }
        Ok(offset as u64)
    }
    async fn compensate(
        &self,
        _: &CompensateCtx,
        input: CopyInput,
        _: Option<u64>,
    ) -> Result<(), StepError> {
        match std::fs::remove_file(&input.dst) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StepError::retryable(format!(
                "{}: {e}",
                input.dst.display()
            ))),
        }
    }
}

impl Step for Check {
    type Input = CheckInput;
    type Output = usize;
    fn kind(&self) -> &'static str {
        "check"
    }
    async fn run(&self, ctx: &StepCtx, input: CheckInput) -> Result<usize, StepError> {
        let names: Vec<String> = ctx.output_of("inventory")?;
        for n in &names {
            let a = std::fs::read(input.dirs.src.join(n))
                .map_err(|e| StepError::permanent(e.to_string()))?;
            let b = std::fs::read(input.dirs.dst.join(n))
                .map_err(|e| StepError::permanent(e.to_string()))?;
            if a != b {
                return Err(StepError::permanent(format!("{n} differs after the copy")));
            }
        }
        if let Some(extra) = input.expect_extra {
            return Err(StepError::permanent(format!(
                "{extra} is missing from the destination"
            )));
        }
        Ok(names.len())
    }
    async fn compensate(
        &self,
        _: &CompensateCtx,
        _: CheckInput,
        _: Option<usize>,
    ) -> Result<(), StepError> {
        Ok(())
    }
}

fn open(state: &Path, keys: &Path, slow: bool) -> anyhow::Result<Engine> {
    let store = Store::open(StoreOptions {
        dir: state.to_owned(),
        mac_key: Key32::load_or_create(&keys.join("audit.key"))?,
        blob_key: None,
    })?;
    let mut registry = Registry::new();
    registry
        .register(Inventory)
        .register(CopyFile { slow })
        .register(Check);
    let opts = EngineOptions {
        checkpoint_interval: Duration::from_millis(50),
        ..EngineOptions::default()
    };
    Ok(Engine::new(store, registry, opts))
}

fn plan(dirs: &Dirs, expect_extra: Option<&str>) -> Vec<StepDecl> {
    let d = || Dirs {
        src: dirs.src.clone(),
        dst: dirs.dst.clone(),
    };
    vec![
        Registry::decl(&Inventory, "inventory", &d()),
        Registry::decl(
            &Check,
            "check",
            &CheckInput {
                dirs: d(),
                expect_extra: expect_extra.map(str::to_owned),
            },
        )
        .after(&["inventory"]),
    ]
}

fn print_log(engine: &Engine, run: RunId) -> anyhow::Result<()> {
    let envs = engine.store().read(run, 0)?;
    let t0 = envs.first().map_or(0, |e| e.at_ms);
    for env in &envs {
        let event = Event::decode(&env.event)?;
        let detail = match &event {
            Event::StepStarted { step, attempt, .. } => format!("{step} attempt {attempt}"),
            Event::StepSucceeded { step, .. } | Event::StepCompensated { step } => step.to_string(),
            Event::StepProgress { step, checkpoint } => format!("{step} at {}", checkpoint.0),
            Event::StepInterrupted { step, attempt } => {
                format!("{step} attempt {attempt} (found unfinished after the crash)")
            }
            Event::StepFailed { step, error, .. } => format!("{step}: {error}"),
            Event::PlanExtended { steps, .. } => format!("+{} steps", steps.len()),
            Event::CompensationStarted { reason } => reason.clone(),
            _ => String::new(),
        };
        println!(
            "    {:>4}  +{:>5} ms  {:<22} {detail}",
            env.seq,
            env.at_ms - t0,
            event.name()
        );
    }
    Ok(())
}

/// Runs the tour.
pub async fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tmp = tempfile_dir(dir)?;
    let root = tmp.path();
    let (state, keys) = (root.join("state"), root.join("keys"));
    let dirs = Dirs {
        src: root.join("src"),
        dst: root.join("dst"),
    };
    std::fs::create_dir_all(&dirs.src)?;
    std::fs::create_dir_all(&dirs.dst)?;
    for (i, size) in [200_000usize, 900_000, 50_000].iter().enumerate() {
        let data: Vec<u8> = (0..*size).map(|b| (b * 31 + i * 7) as u8).collect();
        std::fs::write(dirs.src.join(format!("file-{i}.bin")), data)?;
    }
    println!("ferry engine demo in {}", root.display());

    println!(
        "\n1. A run that copies 3 files; the process 'crashes' (every task dropped, nothing flushed) mid-copy."
    );
    let run = {
        let engine = open(&state, &keys, true)?;
        let run = engine
            .submit(Submission {
                name: "copy".into(),
                workflow: "demo".into(),
                spec: Json::null(),
                plan: plan(&dirs, None),
            })
            .await?;
        // Wait for a durable checkpoint of the big file, then crash.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = engine.load(run)?;
            if s.steps
                .get(&"copy/file-1.bin".into())
                .is_some_and(|st| st.checkpoint.is_some())
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the copy did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        engine.abort().await;
        run
    };
    println!("   crashed. Restarting: the engine replays the log and carries the run on.");
    let engine = open(&state, &keys, false)?;
    let (resumed, _) = engine.recover().await?;
    println!("   resumed {} run(s)", resumed.len());
    let phase = engine.wait(run).await?;
    println!("   run {} ({}) ended {phase}", run.short(), run);
    print_log(&engine, run)?;

    println!(
        "\n2. A run whose last step fails for good: the engine compensates every started step, newest first."
    );
    let dirs2 = Dirs {
        src: dirs.src.clone(),
        dst: root.join("dst2"),
    };
    std::fs::create_dir_all(&dirs2.dst)?;
    let run2 = engine
        .submit(Submission {
            name: "copy-doomed".into(),
            workflow: "demo".into(),
            spec: Json::null(),
            plan: plan(&dirs2, Some("file-9.bin")),
        })
        .await?;
    let phase2 = engine.wait(run2).await?;
    println!(
        "   run {} ended {phase2}; files left in its destination: {}",
        run2.short(),
        std::fs::read_dir(&dirs2.dst)?.count()
    );
    print_log(&engine, run2)?;

    println!("\n3. The audit log: hash chain and keyed MAC of each run.");
    for r in [run, run2] {
        let report = engine.store().verify(r)?;
        println!(
            "   {}: {} events, {}",
            r.short(),
            report.events,
            if report.ok { "verified" } else { "BROKEN" }
        );
    }
    let ok = phase == Phase::Succeeded && phase2 == Phase::RolledBack;
    println!(
        "\ndone in {:.1} s; state dir {}",
        started.elapsed().as_secs_f64(),
        state.display()
    );
    engine.shutdown().await;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

enum DemoDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl DemoDir {
    fn path(&self) -> &Path {
        match self {
            DemoDir::Temp(t) => t.path(),
            DemoDir::Kept(p) => p,
        }
    }
}

fn tempfile_dir(dir: Option<PathBuf>) -> anyhow::Result<DemoDir> {
    Ok(match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            DemoDir::Kept(d)
        }
        None => DemoDir::Temp(tempfile::tempdir()?),
    })
}

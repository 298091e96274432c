//! A ferry engine in a process of its own, for the crash tests: it submits
//! (or only resumes) the test workflow over a state dir and drives every
//! run to its end, printing `PHASE <run> <phase>` per run. The tests arm a
//! failpoint (`FERRY_FAILPOINT`), kill this process with SIGKILL when it
//! reports reaching it, and start it again to resume.

use std::path::PathBuf;

use anyhow::{Context, bail};
use ferry_tests::{WorkInput, World, fast_options, open, submission, work};

fn scenario(name: &str) -> anyhow::Result<Vec<ferry_engine::StepDecl>> {
    let mut inside = WorkInput {
        checkpoints: 3,
        ..WorkInput::default()
    };
    inside.failpoint = Some("test.inside".into());
    Ok(match name {
        // preflight extends the plan; copy checkpoints; all succeed.
        "happy" => vec![
            work(
                "preflight",
                WorkInput {
                    extend: vec!["vol/a".into(), "vol/b".into()],
                    extend_blocks: vec!["apply".into()],
                    ..Default::default()
                },
            ),
            work("ns", WorkInput::default()).after(&["preflight"]),
            work("copy", inside).after(&["ns"]),
            work("apply", WorkInput::default()).after(&["copy"]),
            work("cleanup", WorkInput::default())
                .after(&["apply"])
                .non_critical(),
        ],
        // apply fails for good: everything that started is rolled back.
        "rollback" => vec![
            work("preflight", WorkInput::default()),
            work("ns", WorkInput::default()).after(&["preflight"]),
            work("copy", inside).after(&["ns"]),
            work(
                "apply",
                WorkInput {
                    permanent: true,
                    ..Default::default()
                },
            )
            .after(&["copy"]),
            work("health", WorkInput::default()).after(&["apply"]),
        ],
        other => bail!("unknown scenario {other}"),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, mode, scenario_name] = args.as_slice() else {
        bail!("usage: ferry-crash-child DIR submit|resume SCENARIO");
    };
    let dir = PathBuf::from(dir);
    let world = World::new(&dir.join("world"));
    let engine = open(
        &dir.join("state"),
        &dir.join("keys"),
        &world,
        fast_options(),
    )
    .context("open")?;
    if mode == "submit" {
        engine
            .submit(submission(scenario_name, scenario(scenario_name)?))
            .await
            .context("submit")?;
    }
    let (_, failed) = engine.recover().await?;
    if let Some((run, e)) = failed.first() {
        bail!("run {run} cannot resume: {e}");
    }
    for summary in engine.store().list()? {
        let phase = engine.wait(summary.run).await?;
        println!("PHASE {} {phase}", summary.run);
    }
    Ok(())
}

//! The clone workflow in a process of its own, for the clone crash tests:
//! `ferry-clone-child STATE_DIR submit|resume SPEC.json KUBECONFIG...`
//! drives the clone to its end and prints `PHASE <run> <phase>`. The tests
//! kill it with SIGKILL at failpoints; the simulated clusters live in the
//! test process and outlive it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_engine::{Engine, EngineOptions, Registry, RetryPolicy};
use ferry_steps::cluster::Clusters;
use ferry_steps::preflight::PreflightConfig;
use ferry_steps::spec::CloneSpec;
use ferry_steps::workflow::{CloneEnv, CloneWorkflow};
use ferry_store::{Key32, Store, StoreOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, mode, spec_path, kubeconfigs @ ..] = args.as_slice() else {
        bail!("usage: ferry-clone-child DIR submit|resume SPEC.json KUBECONFIG...");
    };
    let dir = PathBuf::from(dir);
    let store = Store::open(StoreOptions {
        dir: dir.join("state"),
        mac_key: Key32::load_or_create(&dir.join("keys/audit.key"))?,
        blob_key: Some(Key32::load_or_create(&dir.join("keys/blob.key"))?),
    })?;
    let paths: Vec<PathBuf> = kubeconfigs.iter().map(PathBuf::from).collect();
    let env = CloneEnv {
        clusters: Clusters::from_paths(&paths).map_err(|e| anyhow::anyhow!("{e}"))?,
        preflight: PreflightConfig::from_settings(
            Vec::new(),
            None,
            Default::default(),
            None,
            true,
        )?,
        health_poll: Duration::from_millis(50),
        buckets: Default::default(),
        mover_image: ferry_steps::workflow::DEFAULT_MOVER_IMAGE.into(),
    };
    let mut registry = Registry::new();
    CloneWorkflow::new(env).register(&mut registry);
    let opts = EngineOptions {
        retry: RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        },
        checkpoint_interval: Duration::ZERO,
        ..EngineOptions::default()
    };
    let engine = Engine::new(store, registry, opts);
    if mode == "submit" {
        let spec = CloneSpec::from_json(&std::fs::read_to_string(spec_path).context("spec")?)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        engine
            .submit(CloneWorkflow::submission(&spec).map_err(|e| anyhow::anyhow!("{e}"))?)
            .await?;
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

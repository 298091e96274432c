//! The clone workflow in a process of its own, for the clone crash tests:
//! `ferry-clone-child STATE_DIR submit|resume SPEC.json KUBECONFIG...`
//! drives the clone to its end and prints `PHASE <run> <phase>`. The tests
//! kill it with SIGKILL at failpoints; the simulated clusters live in the
//! test process and outlive it.
//!
//! With `FERRY_CHILD_BUCKET=DIR` the clone has a `file://` bucket `local`
//! there (the default bucket; small chunks, a checkpoint after every chunk),
//! and with `FERRY_CHILD_PUT_LOG=FILE` every put into it is logged before
//! it starts and after it lands (slowed down 20 ms, so that several are in
//! flight), for the mover's crash test to count what a kill cut short.

/// The mover tests' store wrappers (the put log).
#[path = "../../../steps/mover/tests/common/stores.rs"]
mod stores;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_engine::{Engine, EngineOptions, Registry, RetryPolicy};
use ferry_mover::{Bucket, BucketOptions, ChunkerParams};
use ferry_steps::cluster::Clusters;
use ferry_steps::preflight::PreflightConfig;
use ferry_steps::spec::CloneSpec;
use ferry_steps::workflow::{CloneEnv, CloneWorkflow, MoverSettings};
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
    let mut buckets = std::collections::BTreeMap::new();
    let mut mover = MoverSettings::default();
    if let Ok(bucket_dir) = std::env::var("FERRY_CHILD_BUCKET") {
        let base = Bucket::open(
            &format!("file://{bucket_dir}"),
            &BucketOptions {
                prefix: "ferry".into(),
                ..Default::default()
            },
        )?;
        let bucket = match std::env::var("FERRY_CHILD_PUT_LOG") {
            Ok(log) => Bucket::from_store(
                Arc::new(stores::PutLogStore::new(
                    base.store().clone(),
                    std::path::Path::new(&log),
                    Duration::from_millis(20),
                )?),
                "ferry",
            ),
            Err(_) => base,
        };
        buckets.insert("local".to_owned(), bucket);
        mover.upload.chunker = ChunkerParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        };
        mover.upload.checkpoint_interval = Duration::ZERO;
    }
    let env = CloneEnv {
        clusters: Clusters::from_paths(&paths).map_err(|e| anyhow::anyhow!("{e}"))?,
        preflight: PreflightConfig::from_settings(
            Vec::new(),
            None,
            buckets.keys().cloned().collect(),
            buckets.keys().next().cloned(),
            true,
        )?,
        health_poll: Duration::from_millis(50),
        buckets,
        mover_image: ferry_steps::workflow::DEFAULT_MOVER_IMAGE.into(),
        mover,
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

//! `ferry demo`: everything on simulated clusters, in one command.
//!
//! In a temp dir it starts two simulated clusters (`prod`, `staging`), the
//! engine with the clone workflow, and a `file://` bucket; deploys a small
//! app to `prod`; clones it to `staging`, printing each step as the durable
//! log records it; then shows what was cloned, the time, the event count,
//! the verify result, and how to look further.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use ferry_engine::{Engine, EngineOptions, Event, Phase, Registry};
use ferry_sim::{SimCluster, SimOptions};
use ferry_steps::cluster::Clusters;
use ferry_steps::spec::CloneSpec;
use ferry_steps::workflow::{CloneWorkflow, PreflightOutput};
use ferry_store::{Key32, Store, StoreOptions};
use serde_json::{Value, json};

/// The demo app: config, a Secret, RBAC, a Service, a NetworkPolicy, an
/// Ingress with its IngressClass, a CRD and one of its custom resources.
const APP: &str = include_str!("../../steps/tests/fixtures/sim/app.yaml");
const CART: &str = include_str!("../../steps/tests/fixtures/sim/cart.yaml");
/// Its workloads: a Deployment, a StatefulSet and a DaemonSet.
const WORKLOADS: &str = include_str!("../../steps/tests/fixtures/sim/workloads.yaml");

/// Runs the demo; `keep` keeps everything in that dir instead of a temp dir.
pub async fn run(keep: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let root = match &keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => tmp.path().to_owned(),
    };
    let sim = |name: &str| SimOptions {
        name: name.into(),
        data_dir: Some(root.join(format!("cluster-{name}"))),
        ..SimOptions::default()
    };
    let prod = SimCluster::start(sim("prod")).await?;
    let staging = SimCluster::start(sim("staging")).await?;
    println!("ferry demo in {}", root.display());
    println!(
        "  clusters: prod at {}, staging at {} (simulated Kubernetes API servers)",
        prod.url(),
        staging.url()
    );

    let kubeconfigs = vec![
        prod.kubeconfig_path().to_owned(),
        staging.kubeconfig_path().to_owned(),
    ];
    let clusters = Clusters::from_paths(&kubeconfigs).map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = clusters
        .get("prod")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for yaml in [APP, CART, WORKLOADS] {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc)?;
            if !v.is_null() {
                source
                    .apply(&v)
                    .await
                    .map_err(|e| anyhow::anyhow!("deploying the demo app: {e}"))?;
            }
        }
        source.refresh().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    println!(
        "  deployed app `shop` to prod: ConfigMap, Secret, ServiceAccount, Role(Binding), Service, NetworkPolicy, Ingress + IngressClass, CRD + custom resource"
    );

    let bucket = root.join("bucket");
    std::fs::create_dir_all(&bucket)?;
    let store = Store::open(StoreOptions {
        dir: root.join("state"),
        mac_key: Key32::load_or_create(&root.join("keys").join("audit.key"))?,
        blob_key: Some(Key32::load_or_create(&root.join("keys").join("blob.key"))?),
    })?;
    let config = crate::config::Config {
        default_bucket: Some("demo".into()),
        buckets: [(
            "demo".to_owned(),
            serde_json::from_value(json!({"url": format!("file://{}", bucket.display())}))?,
        )]
        .into(),
        ..crate::config::Config::default()
    };
    let workflow = crate::workflow::clone_workflow(&config, &kubeconfigs)?;
    let mut registry = Registry::new();
    workflow.register(&mut registry);
    let engine = Engine::new(store, registry, EngineOptions::default());

    let spec = CloneSpec::from_json(
        &json!({"name": "shop", "sourceContext": "prod", "destinationContext": "staging",
                "namespaces": [{"source": "shop", "destination": "shop-copy"}], "healthDeadlineSeconds": 120})
        .to_string(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("\n$ ferry clone shop --from prod --to staging --namespace shop:shop-copy --wait");
    let submission = CloneWorkflow::submission(&spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run = engine.submit(submission).await?;
    let mut feed = engine.store().subscribe(run, 0);
    let t0 = Instant::now();
    while let Some(env) = feed.next().await? {
        let line = match Event::decode(&env.event)? {
            Event::StepStarted { step, attempt, .. } => format!(
                "started   {step}{}",
                if attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                }
            ),
            Event::StepSucceeded { step, .. } => format!("done      {step}"),
            Event::PlanExtended { steps, .. } => {
                format!("plan      +{} steps named by preflight", steps.len())
            }
            Event::StepFailed { step, error, .. } => format!("failed    {step}: {error}"),
            Event::RunRefused { refusals, .. } => format!(
                "REFUSED   {}",
                refusals
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Event::CompensationStarted { reason } => format!("rollback  {reason}"),
            Event::RunSucceeded | Event::RunSucceededWithWarnings { .. } => "Healthy".to_owned(),
            Event::RunRolledBack | Event::RunFailed { .. } => "ended without a clone".to_owned(),
            _ => continue,
        };
        println!("  {:>6} ms  {line}", t0.elapsed().as_millis());
    }
    let phase = engine.wait(run).await?;
    let state = engine.load(run)?;
    let report = engine.store().verify(run)?;
    println!(
        "\nclone shop: {phase} in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    if let Some(out) = state
        .steps
        .get(&"preflight".into())
        .and_then(|s| s.output.as_ref())
    {
        let pre: PreflightOutput = out.decode()?;
        let kinds: Vec<String> = pre.kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!("  cloned into staging/shop-copy: {}", kinds.join(", "));
        println!(
            "  cluster-scoped objects created on staging: {}",
            pre.dependencies.join(", ")
        );
        for w in &pre.warnings {
            println!("  warning: {w}");
        }
    }
    println!(
        "  events in the audit log: {}; verify: {}",
        state.next_seq,
        if report.ok {
            "hash chain and MAC intact"
        } else {
            "BROKEN"
        }
    );
    if let Some(out) = state
        .steps
        .get(&"health".into())
        .and_then(|s| s.output.as_ref())
    {
        let health: ferry_steps::workflow::HealthOutput = out.decode()?;
        println!(
            "  healthy on staging (kubectl rollout status rules): {}",
            health.workloads.join(", ")
        );
    }
    println!(
        "  volume data: cloned in place through CSI snapshots within a cluster; across clusters the data mover is not wired yet, so such a clone is refused before it writes anything"
    );
    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());
    if keep.is_some() {
        println!("\nLook further (the clusters stop with this command; the files stay):");
        println!(
            "  kubeconfigs: {} {}",
            prod.kubeconfig_path().display(),
            staging.kubeconfig_path().display()
        );
        println!(
            "  ferry sim --name staging --data-dir <dir> --kubeconfig <file>   serves a cluster you can query with kubectl"
        );
        println!(
            "  state dir (the durable log): {}",
            root.join("state").display()
        );
    } else {
        println!(
            "\nRun `ferry demo --dir DIR` to keep the state dir, kubeconfigs and bucket; `ferry engine-demo` shows a crash and its resume."
        );
    }
    engine.shutdown().await;
    prod.stop().await;
    staging.stop().await;
    Ok(if phase == Phase::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

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
/// Its database: a StatefulSet with a volume claim template and a web
/// Deployment on a shared RWX volume, in namespace `db`.
const VOLUMES: &str = include_str!("../../steps/tests/fixtures/sim/volumes.yaml");

/// Waits until PVC `ns/name` is bound; returns its volume's directory.
async fn volume_dir(
    c: &ferry_steps::cluster::Cluster,
    ns: &str,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let claim = c
            .get("v1", "PersistentVolumeClaim", Some(ns), name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(pv) = claim
            .as_ref()
            .and_then(|p| p.pointer("/spec/volumeName"))
            .and_then(Value::as_str)
        {
            let pv = c
                .get("v1", "PersistentVolume", None, pv)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(dir) = pv
                .as_ref()
                .and_then(|p| p.pointer("/metadata/annotations/sim.ferry.dev~1path"))
                .and_then(Value::as_str)
            {
                return Ok(PathBuf::from(dir));
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "PVC {ns}/{name} did not bind");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

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
    for yaml in [APP, CART, WORKLOADS, VOLUMES] {
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
        "  deployed app `shop` to prod: ConfigMap, Secret, ServiceAccount, Role(Binding), Service, NetworkPolicy, Ingress + IngressClass, CRD + custom resource, Deployment, StatefulSet, DaemonSet"
    );
    // Data in the database's volumes, as the app would have written it.
    let shared = volume_dir(&source, "db", "shared").await?;
    let pgdata = volume_dir(&source, "db", "data-pg-0").await?;
    std::fs::create_dir_all(shared.join("static"))?;
    std::fs::write(shared.join("static/index.html"), b"<h1>shop</h1>\n")?;
    std::fs::write(
        shared.join("static/catalog.bin"),
        (0..4_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect::<Vec<_>>(),
    )?;
    std::fs::write(pgdata.join("PG_VERSION"), b"16\n")?;
    std::fs::create_dir_all(pgdata.join("base/1"))?;
    std::fs::write(
        pgdata.join("base/1/1259"),
        (0..2_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )?;
    println!(
        "  deployed app `db` to prod: a StatefulSet with a volume claim template and a Deployment on a shared RWX volume, 6 MB of data in them (class ontap-nas)"
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
                "namespaces": [{"source": "shop", "destination": "shop-copy"}, {"source": "db", "destination": "db-copy"}],
                "storageClasses": [{"source": "ontap-nas", "destination": "efs"}], "healthDeadlineSeconds": 120})
        .to_string(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "\n$ ferry clone shop --from prod --to staging --namespace shop:shop-copy --namespace db:db-copy \\\n      --storage-class ontap-nas=efs --wait"
    );
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
        println!("  cloned into staging: {}", kinds.join(", "));
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
    let mut moved = 0u64;
    let mut uploaded = 0u64;
    for (id, st) in &state.steps {
        if id.0.starts_with("volume/")
            && let Some(out) = &st.output
        {
            let m: ferry_steps::workflow::MoverOutput = out.decode()?;
            moved += m.bytes;
            uploaded += m.bytes_uploaded;
        }
    }
    let same = |a: &PathBuf, b: &PathBuf, files: &[&str]| {
        files.iter().all(
            |f| match (std::fs::read(a.join(f)), std::fs::read(b.join(f))) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            },
        )
    };
    let dest = clusters
        .get("staging")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let copied = same(
        &shared,
        &volume_dir(&dest, "db-copy", "shared").await?,
        &["static/index.html", "static/catalog.bin"],
    ) && same(
        &pgdata,
        &volume_dir(&dest, "db-copy", "data-pg-0").await?,
        &["PG_VERSION", "base/1/1259"],
    );
    println!(
        "  volume data: {:.1} MB of tar stream moved through the file:// bucket ({:.1} MB compressed chunks uploaded), class ontap-nas mapped to efs; files equal on staging: {}",
        moved as f64 / 1e6,
        uploaded as f64 / 1e6,
        if copied { "yes" } else { "NO" }
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

//! Benchmark: the clone's apply step against `kubectl apply --server-side`
//! of the same 2,000 ConfigMaps and Secrets, on the same simulator, in one
//! run. Prints objects/s of each, the simulator's raw creates/s beside them
//! (so the simulator is shown not to be the bottleneck), and
//! `ratio apply_vs_kubectl=X` (goal ≥ 2; Velero manages about 10 objects/s,
//! velero issue #6845).
//!
//! Run: `cargo bench -p ferry-steps --bench apply`.

use std::time::{Duration, Instant};

use ferry_engine::{Engine, EngineOptions, Event, Registry};
use ferry_sim::{SimCluster, SimOptions};
use ferry_steps::cluster::Clusters;
use ferry_steps::preflight::PreflightConfig;
use ferry_steps::spec::CloneSpec;
use ferry_steps::workflow::{CloneEnv, CloneWorkflow};
use ferry_store::{Key32, Store, StoreOptions};
use futures::StreamExt;
use serde_json::{Value, json};

const N: usize = 1000;

fn manifests(ns: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..N {
        out.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}"), "namespace": ns, "labels": {"app": "bench"}},
            "data": {"index": i.to_string(), "payload": "x".repeat(200)}}));
        out.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("secret-{i}"), "namespace": ns},
            "type": "Opaque", "data": {"token": "c2VjcmV0LXZhbHVl"}}));
    }
    out
}

#[tokio::main]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let src = SimCluster::start(SimOptions {
        name: "src".into(),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let dst = SimCluster::start(SimOptions {
        name: "dst".into(),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let clusters = Clusters::from_paths(&[
        src.kubeconfig_path().to_owned(),
        dst.kubeconfig_path().to_owned(),
    ])
    .unwrap();

    // Seed the source (this also measures the simulator's raw create rate).
    let source = clusters.get("src").await.unwrap();
    source
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}))
        .await
        .unwrap();
    let objs = manifests("bench");
    let t = Instant::now();
    let calls: Vec<_> = objs.iter().map(|o| source.create_if_absent(o)).collect();
    let seeded: Vec<_> = futures::stream::iter(calls)
        .buffer_unordered(16)
        .collect()
        .await;
    let sim_rate = seeded.len() as f64 / t.elapsed().as_secs_f64();
    assert!(seeded.iter().all(Result::is_ok));

    // ferry: a clone of the namespace; the apply step's own time from the log.
    let store = Store::open(StoreOptions {
        dir: tmp.path().join("state"),
        mac_key: Key32::from_bytes([1; 32]),
        blob_key: Some(Key32::from_bytes([2; 32])),
    })
    .unwrap();
    let env = CloneEnv {
        clusters,
        preflight: PreflightConfig::from_settings(Vec::new(), None, Default::default(), None, true)
            .unwrap(),
        health_poll: Duration::from_millis(100),
        buckets: Default::default(),
        mover_image: ferry_steps::workflow::DEFAULT_MOVER_IMAGE.into(),
        mover: Default::default(),
    };
    let mut registry = Registry::new();
    CloneWorkflow::new(env).register(&mut registry);
    let engine = Engine::new(store, registry, EngineOptions::default());
    let spec = CloneSpec::from_json(&json!({"name": "bench", "sourceContext": "src", "destinationContext": "dst", "namespaces": [{"source": "bench", "destination": "bench-ferry"}]}).to_string()).unwrap();
    let run = engine
        .submit(CloneWorkflow::submission(&spec).unwrap())
        .await
        .unwrap();
    let phase = engine.wait(run).await.unwrap();
    assert_eq!(phase, ferry_engine::Phase::Succeeded);
    let (mut start, mut end) = (0, 0);
    for env in engine.store().read(run, 0).unwrap() {
        match Event::decode(&env.event).unwrap() {
            Event::StepStarted { step, .. } if step.0 == "apply" => start = env.at_ms,
            Event::StepSucceeded { step, .. } if step.0 == "apply" => end = env.at_ms,
            _ => {}
        }
    }
    let ferry_secs = (end - start).max(1) as f64 / 1e3;
    let ferry_rate = (2 * N) as f64 / ferry_secs;

    // kubectl: the same manifests, server-side, into another namespace of the same destination.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let file = tmp.path().join("objects.yaml");
    let yaml: String = manifests("bench-kubectl")
        .iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect();
    std::fs::write(&file, yaml).unwrap();
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .env("HOME", &home)
            .arg("--kubeconfig")
            .arg(dst.kubeconfig_path())
            .args(args)
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    kubectl(&["create", "namespace", "bench-kubectl", "-o", "name"]);
    let t = Instant::now();
    kubectl(&[
        "apply",
        "--server-side",
        "--field-manager",
        "bench",
        "-f",
        file.to_str().unwrap(),
    ]);
    let kubectl_secs = t.elapsed().as_secs_f64();
    let kubectl_rate = (2 * N) as f64 / kubectl_secs;

    println!("simulator raw creates (16 concurrent clients): {sim_rate:.0} objects/s");
    println!(
        "ferry apply step: {} objects in {ferry_secs:.2} s = {ferry_rate:.0} objects/s",
        2 * N
    );
    println!(
        "kubectl apply --server-side: {} objects in {kubectl_secs:.2} s = {kubectl_rate:.0} objects/s",
        2 * N
    );
    println!("ratio apply_vs_kubectl={:.2}", ferry_rate / kubectl_rate);
    println!("ratio simulator_vs_apply={:.2}", sim_rate / ferry_rate);
    src.stop().await;
    dst.stop().await;
}

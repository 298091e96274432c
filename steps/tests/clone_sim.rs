//! The clone workflow end to end on simulated clusters over real HTTP:
//! the engine, the store and the steps, against `ferry-sim`.

use std::path::PathBuf;
use std::time::Duration;

use ferry_engine::{Engine, EngineOptions, Event, Phase, Registry, RetryPolicy};
use ferry_sim::{FaultConfig, FaultRule, SimCluster, SimOptions};
use ferry_steps::cluster::{Cluster, Clusters};
use ferry_steps::preflight::PreflightConfig;
use ferry_steps::spec::CloneSpec;
use ferry_steps::workflow::{CloneEnv, CloneWorkflow};
use ferry_store::{Key32, RunId, Store, StoreOptions};
use serde_json::{Value, json};

/// A small app without volumes: every kind the apply step orders.
const APP: &str = include_str!("fixtures/sim/app.yaml");

/// A custom resource of the app's CRD (applied once the CRD is served).
const CART: &str = include_str!("fixtures/sim/cart.yaml");

struct Setup {
    _tmp: tempfile::TempDir,
    src: SimCluster,
    dst: SimCluster,
    engine: Engine,
}

async fn apply_yaml(cluster: &Cluster, yaml: &str) {
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        cluster.apply(&v).await.unwrap();
    }
}

async fn sim(name: &str) -> SimCluster {
    SimCluster::start(SimOptions {
        name: name.into(),
        ..SimOptions::default()
    })
    .await
    .unwrap()
}

fn clusters(sims: &[&SimCluster]) -> Clusters {
    let paths: Vec<PathBuf> = sims
        .iter()
        .map(|s| s.kubeconfig_path().to_owned())
        .collect();
    Clusters::from_paths(&paths).unwrap()
}

async fn setup(no_kube_retry: bool) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let src = sim("prod").await;
    let dst = sim("staging").await;
    let seed = clusters(&[&src]);
    let source = seed.get("prod").await.unwrap();
    apply_yaml(&source, APP).await;
    source.refresh().await.unwrap();
    apply_yaml(&source, CART).await;
    let mut cl = clusters(&[&src, &dst]);
    if no_kube_retry {
        cl = cl.without_kube_retry();
    }
    let store = Store::open(StoreOptions {
        dir: tmp.path().join("state"),
        mac_key: Key32::from_bytes([1; 32]),
        blob_key: Some(Key32::from_bytes([2; 32])),
    })
    .unwrap();
    let env = CloneEnv {
        clusters: cl,
        preflight: PreflightConfig::from_settings(Vec::new(), None, Default::default(), None, true)
            .unwrap(),
        health_poll: Duration::from_millis(100),
        buckets: Default::default(),
        mover_image: ferry_steps::workflow::DEFAULT_MOVER_IMAGE.into(),
        mover: Default::default(),
    };
    let mut registry = Registry::new();
    CloneWorkflow::new(env).register(&mut registry);
    let opts = EngineOptions {
        retry: RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        },
        ..EngineOptions::default()
    };
    Setup {
        _tmp: tmp,
        src,
        dst,
        engine: Engine::new(store, registry, opts),
    }
}

fn spec(name: &str, from: &str, to: &str, dst_ns: &str) -> CloneSpec {
    CloneSpec::from_json(
        &json!({
            "name": name,
            "sourceContext": from,
            "destinationContext": to,
            "namespaces": [{"source": "shop", "destination": dst_ns}],
        })
        .to_string(),
    )
    .unwrap()
}

async fn run_clone(s: &Setup, spec: &CloneSpec) -> (RunId, Phase) {
    let run = s
        .engine
        .submit(CloneWorkflow::submission(spec).unwrap())
        .await
        .unwrap();
    let phase = tokio::time::timeout(Duration::from_secs(120), s.engine.wait(run))
        .await
        .expect("clone finishes")
        .unwrap();
    (run, phase)
}

fn events(s: &Setup, run: RunId) -> Vec<Event> {
    s.engine
        .store()
        .read(run, 0)
        .unwrap()
        .iter()
        .map(|e| Event::decode(&e.event).unwrap())
        .collect()
}

/// An object as a user compares it: without what the server sets, and
/// with this run's id replaced by `RUN`.
fn normalized(mut o: Value) -> Value {
    if let Some(m) = o["metadata"].as_object_mut() {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "selfLink",
        ] {
            m.remove(f);
        }
        if let Some(run) = m.get_mut("labels").and_then(|l| l.get_mut("ferry.dev/run")) {
            *run = json!("RUN");
        }
    }
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if o["kind"] == "Service"
        && let Some(spec) = o["spec"].as_object_mut()
    {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    o
}

/// Compares `got` with the YAML fixture at `path` (relative to this
/// file), object by object and field by field; `FERRY_BLESS=1` rewrites
/// the fixture instead (review its diff before committing it).
fn compare_with_fixture(got: &[Value], path: &str) {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(path);
    if std::env::var_os("FERRY_BLESS").is_some() {
        let mut text = String::new();
        for o in got {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(o).unwrap());
        }
        std::fs::write(&file, text).unwrap();
        return;
    }
    let want: Vec<Value> =
        serde_yaml::Deserializer::from_str(&std::fs::read_to_string(&file).unwrap())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect();
    let names = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
            .collect()
    };
    assert_eq!(names(got), names(&want), "the same objects as {path}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            g, w,
            "{} {} differs from {path}",
            g["kind"], g["metadata"]["name"]
        );
    }
}

async fn get(
    c: &Cluster,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> Option<Value> {
    c.get(api_version, kind, ns, name).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_cluster_clone_of_an_app_without_volumes_becomes_healthy() {
    let s = setup(false).await;
    let (run, phase) = run_clone(&s, &spec("shop", "prod", "staging", "shop-copy")).await;
    assert_eq!(
        phase,
        Phase::Succeeded,
        "{:?}",
        events(&s, run).iter().map(Event::name).collect::<Vec<_>>()
    );
    let cl = clusters(&[&s.src, &s.dst]);
    let dst = cl.get("staging").await.unwrap();
    let src = cl.get("prod").await.unwrap();
    let label = run.to_string();

    let ns = get(&dst, "v1", "Namespace", None, "shop-copy")
        .await
        .expect("namespace created");
    assert_eq!(ns["metadata"]["labels"]["ferry.dev/run"], label.as_str());
    assert_eq!(ns["metadata"]["labels"]["team"], "web", "labels copied");
    // Objects equal after the expected transforms.
    let cm_src = get(&src, "v1", "ConfigMap", Some("shop"), "settings")
        .await
        .unwrap();
    let cm = get(&dst, "v1", "ConfigMap", Some("shop-copy"), "settings")
        .await
        .unwrap();
    assert_eq!(cm["data"], cm_src["data"]);
    assert_eq!(cm["metadata"]["labels"]["app"], "shop");
    assert_eq!(cm["metadata"]["labels"]["ferry.dev/run"], label.as_str());
    assert_ne!(cm["metadata"]["uid"], cm_src["metadata"]["uid"]);
    let secret = get(&dst, "v1", "Secret", Some("shop-copy"), "db-credentials")
        .await
        .unwrap();
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    let rb = get(
        &dst,
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        Some("shop-copy"),
        "web-reader",
    )
    .await
    .unwrap();
    assert_eq!(
        rb["subjects"][0]["namespace"], "shop-copy",
        "subjects follow the namespace mapping"
    );
    assert!(
        get(&dst, "v1", "ServiceAccount", Some("shop-copy"), "web")
            .await
            .is_some()
    );
    assert!(
        get(
            &dst,
            "networking.k8s.io/v1",
            "NetworkPolicy",
            Some("shop-copy"),
            "deny-all"
        )
        .await
        .is_some()
    );
    assert!(
        get(
            &dst,
            "networking.k8s.io/v1",
            "Ingress",
            Some("shop-copy"),
            "web"
        )
        .await
        .is_some()
    );
    let svc = get(&dst, "v1", "Service", Some("shop-copy"), "api")
        .await
        .unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    // Autoscaling, disruption budget and scheduled jobs come along unchanged.
    for (api_version, kind, name) in [
        ("autoscaling/v2", "HorizontalPodAutoscaler", "api"),
        ("policy/v1", "PodDisruptionBudget", "api"),
        ("batch/v1", "CronJob", "report"),
    ] {
        let from = get(&src, api_version, kind, Some("shop"), name)
            .await
            .unwrap();
        let to = get(&dst, api_version, kind, Some("shop-copy"), name)
            .await
            .unwrap_or_else(|| panic!("{kind} {name} cloned"));
        assert_eq!(to["spec"], from["spec"], "{kind} {name}");
        assert_eq!(to["metadata"]["labels"]["ferry.dev/run"], label.as_str());
    }
    // Cluster-scoped dependencies created, labelled as this run's.
    let crd = get(
        &dst,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "carts.shop.example.com",
    )
    .await
    .unwrap();
    assert_eq!(crd["metadata"]["labels"]["ferry.dev/run"], label.as_str());
    let ic = get(
        &dst,
        "networking.k8s.io/v1",
        "IngressClass",
        None,
        "shop-nginx",
    )
    .await
    .unwrap();
    assert_eq!(ic["metadata"]["labels"]["ferry.dev/run"], label.as_str());
    dst.refresh().await.unwrap();
    let cart = get(
        &dst,
        "shop.example.com/v1",
        "Cart",
        Some("shop-copy"),
        "default-cart",
    )
    .await
    .expect("custom resource cloned");
    assert_eq!(cart["spec"]["items"], 3);
    // Every object of the run on the destination equals the checked-in
    // fixture field by field, server-set fields aside.
    let mut got: Vec<Value> = dst
        .list_namespace("shop-copy")
        .await
        .unwrap()
        .into_iter()
        .chain(
            dst.list_kind("v1", "Namespace", None)
                .await
                .unwrap()
                .into_iter(),
        )
        .filter(|o| o["metadata"]["labels"]["ferry.dev/run"] == label.as_str())
        .map(normalized)
        .collect();
    got.sort_by_key(|o| {
        format!(
            "{}/{}/{}",
            o["kind"].as_str().unwrap_or(""),
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    });
    compare_with_fixture(&got, "fixtures/expected/sim-cross-cluster.yaml");
    // Secret data never reaches the log.
    let mut out = Vec::new();
    ferry_engine::export_run(s.engine.store(), run, &mut out, &|v| v).unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("aHVudGVyMg=="));
    // Nothing was created twice on the destination.
    assert!(
        s.dst.creates().values().all(|n| *n == 1),
        "{:?}",
        s.dst.creates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_cluster_clone_keeps_the_source_untouched() {
    let s = setup(false).await;
    let before = get(
        &clusters(&[&s.src]).get("prod").await.unwrap(),
        "v1",
        "ConfigMap",
        Some("shop"),
        "settings",
    )
    .await
    .unwrap();
    // In-cluster, the app's IngressClass already exists on the destination
    // (Astra refuses that); the fix the refusal names is to exclude it.
    let mut in_cluster = spec("shop-in", "prod", "prod", "shop-copy");
    in_cluster.exclude = vec![serde_json::from_value(json!({"kind": "IngressClass"})).unwrap()];
    let (run, phase) = run_clone(&s, &in_cluster).await;
    assert_eq!(
        phase,
        Phase::Succeeded,
        "{:?}",
        s.engine.load(run).unwrap().refusals
    );
    let c = clusters(&[&s.src]).get("prod").await.unwrap();
    let after = get(&c, "v1", "ConfigMap", Some("shop"), "settings")
        .await
        .unwrap();
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert!(
        get(&c, "v1", "ConfigMap", Some("shop-copy"), "settings")
            .await
            .is_some()
    );
    // The existing IngressClass and CRD were not labelled or touched.
    let crd = get(
        &c,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "carts.shop.example.com",
    )
    .await
    .unwrap();
    assert!(crd["metadata"]["labels"].get("ferry.dev/run").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_all_named_and_nothing_is_written_on_either_cluster() {
    let s = setup(false).await;
    // The destination namespace exists already, and the IngressClass the app carries too.
    let dst = clusters(&[&s.dst]).get("staging").await.unwrap();
    apply_yaml(
        &dst,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop-copy}\n",
    )
    .await;
    apply_yaml(&dst, "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: shop-nginx}\nspec: {controller: other}\n").await;
    s.src.settle().await;
    s.dst.settle().await;
    let (src_rv, dst_rv) = (s.src.resource_version(), s.dst.resource_version());
    let (run, phase) = run_clone(&s, &spec("refused", "prod", "staging", "shop-copy")).await;
    assert_eq!(phase, Phase::Refused);
    let state = s.engine.load(run).unwrap();
    let text: Vec<String> = state.refusals.iter().map(|r| r.to_string()).collect();
    assert!(
        text.iter().any(|r| r.contains("Namespace shop-copy")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|r| r.contains("IngressClass shop-nginx")),
        "{text:?}"
    );
    assert!(state.refusals.iter().all(|r| !r.fix.is_empty()));
    assert_eq!(
        (s.src.resource_version(), s.dst.resource_version()),
        (src_rv, dst_rv),
        "nothing written"
    );
    assert!(
        !events(&s, run)
            .iter()
            .any(|e| matches!(e, Event::CompensationStarted { .. }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_apply_rolls_back_everything_this_run_made() {
    let s = setup(true).await;
    s.dst.set_faults(FaultConfig {
        seed: 7,
        rules: vec![FaultRule {
            verb: Some("patch".into()),
            resource: Some("configmaps".into()),
            rate: 1.0,
            code: 500,
            ..Default::default()
        }],
        ..Default::default()
    });
    let (run, phase) = run_clone(&s, &spec("doomed", "prod", "staging", "shop-copy")).await;
    assert_eq!(phase, Phase::RolledBack);
    s.dst.clear_faults();
    let dst = clusters(&[&s.dst]).get("staging").await.unwrap();
    assert!(
        get(&dst, "v1", "Namespace", None, "shop-copy")
            .await
            .is_none(),
        "no namespace of this run left"
    );
    assert!(
        get(
            &dst,
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "carts.shop.example.com"
        )
        .await
        .is_none()
    );
    assert!(
        get(
            &dst,
            "networking.k8s.io/v1",
            "IngressClass",
            None,
            "shop-nginx"
        )
        .await
        .is_none()
    );
    let evs = events(&s, run);
    let compensated: Vec<String> = evs
        .iter()
        .filter_map(|e| match e {
            Event::StepCompensated { step } => Some(step.0.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(compensated, vec!["apply", "namespaces", "preflight"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_that_needs_the_data_mover_is_refused_without_a_bucket() {
    let s = setup(false).await;
    let src = clusters(&[&s.src]).get("prod").await.unwrap();
    apply_yaml(&src, "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data, namespace: shop}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n").await;
    s.dst.settle().await;
    let dst_rv = s.dst.resource_version();
    let (run, phase) = run_clone(&s, &spec("vols", "prod", "staging", "shop-copy")).await;
    assert_eq!(phase, Phase::Refused);
    let state = s.engine.load(run).unwrap();
    assert!(
        state
            .refusals
            .iter()
            .any(|r| r.object == "PersistentVolumeClaim shop/data"
                && r.to_string().contains("bucket")),
        "{:?}",
        state.refusals
    );
    assert_eq!(s.dst.resource_version(), dst_rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_and_commit_then_500_writes_are_retried_to_success() {
    let s = setup(true).await;
    s.dst.set_faults(FaultConfig {
        seed: 42,
        rules: vec![
            FaultRule {
                verb: Some("patch".into()),
                rate: 0.2,
                code: 500,
                commit: true,
                ..Default::default()
            },
            FaultRule {
                rate: 0.1,
                code: 503,
                ..Default::default()
            },
        ],
        latency_ms: 2,
        ..Default::default()
    });
    let (run, phase) = run_clone(&s, &spec("faulty", "prod", "staging", "shop-copy")).await;
    assert_eq!(
        phase,
        Phase::Succeeded,
        "{:?}",
        s.engine
            .load(run)
            .unwrap()
            .steps
            .values()
            .map(|st| (st.decl.id.0.clone(), st.last_error.clone()))
            .collect::<Vec<_>>()
    );
    assert!(s.dst.faults_injected() > 0);
    let retries = events(&s, run)
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::StepFailed {
                    retryable: true,
                    ..
                }
            )
        })
        .count();
    assert!(retries > 0, "the log shows the retries");
    assert!(
        s.dst.creates().values().all(|n| *n == 1),
        "nothing doubled: {:?}",
        s.dst.creates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_the_plan_and_writes_nothing() {
    let s = setup(false).await;
    s.src.settle().await;
    s.dst.settle().await;
    let (src_rv, dst_rv) = (s.src.resource_version(), s.dst.resource_version());
    let env = CloneEnv {
        clusters: clusters(&[&s.src, &s.dst]),
        preflight: PreflightConfig::from_settings(Vec::new(), None, Default::default(), None, true)
            .unwrap(),
        health_poll: Duration::from_millis(100),
        buckets: Default::default(),
        mover_image: ferry_steps::workflow::DEFAULT_MOVER_IMAGE.into(),
        mover: Default::default(),
    };
    let answer = CloneWorkflow::new(env)
        .dry_run(&spec("dry", "prod", "staging", "shop-copy"))
        .await
        .unwrap();
    assert!(answer.refusals.is_empty(), "{:?}", answer.refusals);
    let text = answer.render_text();
    assert!(text.contains("shop -> shop-copy"), "{text}");
    assert!(text.contains("ConfigMap"), "{text}");
    assert!(
        !text.contains("aHVudGVyMg==") && !text.contains("hunter2"),
        "no Secret data: {text}"
    );
    let json = serde_json::to_string(&answer).unwrap();
    assert!(!json.contains("aHVudGVyMg=="));
    assert_eq!(
        (s.src.resource_version(), s.dst.resource_version()),
        (src_rv, dst_rv)
    );
    assert!(
        s.engine.store().list().unwrap().is_empty(),
        "not even ferry's log"
    );
}

const WORKLOADS: &str = include_str!("fixtures/sim/workloads.yaml");
const VOLUMES: &str = include_str!("fixtures/sim/volumes.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_cloned_and_the_clone_waits_until_they_are_ready() {
    let s = setup(false).await;
    let src = clusters(&[&s.src]).get("prod").await.unwrap();
    apply_yaml(&src, WORKLOADS).await;
    let (run, phase) = run_clone(&s, &spec("workloads", "prod", "staging", "shop-copy")).await;
    assert_eq!(
        phase,
        Phase::Succeeded,
        "{:?}",
        s.engine
            .load(run)
            .unwrap()
            .steps
            .values()
            .map(|st| (st.decl.id.0.clone(), st.last_error.clone()))
            .collect::<Vec<_>>()
    );
    let dst = clusters(&[&s.dst]).get("staging").await.unwrap();
    for (kind, name) in [
        ("Deployment", "web"),
        ("StatefulSet", "cache"),
        ("DaemonSet", "agent"),
    ] {
        let o = get(&dst, "apps/v1", kind, Some("shop-copy"), name)
            .await
            .unwrap_or_else(|| panic!("{kind} {name} cloned"));
        assert_eq!(
            ferry_steps::workflow::workload_ready(&o),
            Some(true),
            "{kind} {name} ready when the clone is Healthy: {}",
            o["status"]
        );
    }
    // Pods were made by the destination's controllers, not copied.
    let health: ferry_steps::workflow::HealthOutput = s.engine.load(run).unwrap().steps
        [&"health".into()]
        .output
        .as_ref()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(health.workloads.len(), 3, "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_never_becomes_ready_rolls_the_clone_back() {
    let s = setup(false).await;
    let src = clusters(&[&s.src]).get("prod").await.unwrap();
    apply_yaml(
        &src,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: stuck, namespace: shop}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: stuck}}\n  template:\n    metadata: {labels: {app: stuck}, annotations: {sim.ferry.dev/never-ready: \"true\"}}\n    spec: {containers: [{name: c, image: busybox:1.36}]}\n",
    )
    .await;
    let mut sp = spec("never-ready", "prod", "staging", "shop-copy");
    sp.health_deadline_seconds = 3;
    let (run, phase) = run_clone(&s, &sp).await;
    assert_eq!(phase, Phase::RolledBack);
    let state = s.engine.load(run).unwrap();
    let health_error = state.steps[&"health".into()]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        health_error.contains("Deployment shop-copy/stuck"),
        "names what is not ready: {health_error}"
    );
    let evs = events(&s, run);
    let compensated: Vec<String> = evs
        .iter()
        .filter_map(|e| match e {
            Event::StepCompensated { step } => Some(step.0.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        compensated,
        vec!["health", "apply", "namespaces", "preflight"]
    );
    let dst = clusters(&[&s.dst]).get("staging").await.unwrap();
    assert!(
        get(&dst, "v1", "Namespace", None, "shop-copy")
            .await
            .is_none(),
        "no namespace of this run left"
    );
    let leftovers = src
        .list_kind(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshot",
            Some(&format!("ferry.dev/run={run}")),
        )
        .await
        .unwrap();
    assert!(leftovers.is_empty(), "no temporary object on the source");
}

fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes(),
                );
            } else if ft.is_dir() {
                out.insert(rel + "/", Vec::new());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

async fn pv_dir(c: &Cluster, ns: &str, pvc: &str) -> std::path::PathBuf {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(claim) = c
            .get("v1", "PersistentVolumeClaim", Some(ns), pvc)
            .await
            .unwrap()
            && claim.pointer("/status/phase").and_then(Value::as_str) == Some("Bound")
        {
            let pv_name = claim["spec"]["volumeName"].as_str().unwrap().to_owned();
            let pv = c
                .get("v1", "PersistentVolume", None, &pv_name)
                .await
                .unwrap()
                .unwrap();
            if let Some(p) = pv
                .pointer("/metadata/annotations/sim.ferry.dev~1path")
                .and_then(Value::as_str)
            {
                return std::path::PathBuf::from(p);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for PVC {ns}/{pvc} to bind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_cluster_clone_copies_volume_data_through_csi_snapshots() {
    let s = setup(false).await;
    let src = clusters(&[&s.src]).get("prod").await.unwrap();
    apply_yaml(&src, VOLUMES).await;
    // Data in both volumes, as the app would have written it.
    let shared = pv_dir(&src, "db", "shared").await;
    let pgdata = pv_dir(&src, "db", "data-pg-0").await;
    std::fs::create_dir_all(shared.join("static/img")).unwrap();
    std::fs::write(shared.join("static/index.html"), b"<h1>shop</h1>").unwrap();
    std::fs::write(shared.join("static/img/logo.bin"), vec![7u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink("static/index.html", shared.join("index")).unwrap();
    std::fs::write(pgdata.join("PG_VERSION"), b"16\n").unwrap();
    std::fs::create_dir_all(pgdata.join("base/1")).unwrap();
    std::fs::write(
        pgdata.join("base/1/1259"),
        (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let (shared_tree, pg_tree) = (tree(&shared), tree(&pgdata));

    let sp = CloneSpec::from_json(
        &json!({"name": "db-in", "sourceContext": "prod", "destinationContext": "prod",
        "namespaces": [{"source": "db", "destination": "db-copy"}]})
        .to_string(),
    )
    .unwrap();
    let (run, phase) = run_clone(&s, &sp).await;
    let state = s.engine.load(run).unwrap();
    assert_eq!(
        phase,
        Phase::Succeeded,
        "{:?} {:?}",
        state.refusals,
        state
            .steps
            .values()
            .map(|st| (st.decl.id.0.clone(), st.last_error.clone()))
            .collect::<Vec<_>>()
    );
    assert!(
        state.steps.contains_key(&"snapshot/db/shared".into())
            && state.steps.contains_key(&"volume/db-copy/data-pg-0".into())
    );
    // Volume data equal, file by file.
    assert_eq!(tree(&pv_dir(&src, "db-copy", "shared").await), shared_tree);
    assert_eq!(tree(&pv_dir(&src, "db-copy", "data-pg-0").await), pg_tree);
    // The source's data is untouched and its PVCs keep their volumes.
    assert_eq!(tree(&shared), shared_tree);
    // Cleanup removed the temporary snapshots and contents of this run.
    let sel = format!("ferry.dev/temporary=true,ferry.dev/run={run}");
    assert!(
        src.list_kind("snapshot.storage.k8s.io/v1", "VolumeSnapshot", Some(&sel))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        src.list_kind(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshotContent",
            Some(&sel)
        )
        .await
        .unwrap()
        .is_empty()
    );
    let d = get(&src, "apps/v1", "StatefulSet", Some("db-copy"), "pg")
        .await
        .unwrap();
    assert_eq!(ferry_steps::workflow::workload_ready(&d), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_cluster_clone_moves_volume_data_through_the_bucket() {
    let s = setup(false).await;
    let src = clusters(&[&s.src]).get("prod").await.unwrap();
    apply_yaml(&src, VOLUMES).await;
    let shared = pv_dir(&src, "db", "shared").await;
    let pgdata = pv_dir(&src, "db", "data-pg-0").await;
    std::fs::create_dir_all(shared.join("static/img")).unwrap();
    std::fs::write(shared.join("static/index.html"), b"<h1>shop</h1>").unwrap();
    std::fs::write(
        shared.join("static/img/logo.bin"),
        (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::os::unix::fs::symlink("static/index.html", shared.join("index")).unwrap();
    std::fs::write(pgdata.join("PG_VERSION"), b"16\n").unwrap();
    let (shared_tree, pg_tree) = (tree(&shared), tree(&pgdata));

    let bucket_dir = tempfile::tempdir().unwrap();
    let bucket = ferry_mover::Bucket::open(
        &format!("file://{}", bucket_dir.path().display()),
        &ferry_mover::BucketOptions {
            prefix: "ferry".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let env = CloneEnv {
        clusters: clusters(&[&s.src, &s.dst]),
        preflight: PreflightConfig::from_settings(
            Vec::new(),
            None,
            ["local".to_owned()].into(),
            Some("local".into()),
            true,
        )
        .unwrap(),
        health_poll: Duration::from_millis(100),
        buckets: [("local".to_owned(), bucket)].into(),
        mover_image: ferry_steps::workflow::DEFAULT_MOVER_IMAGE.into(),
        mover: Default::default(),
    };
    let mut registry = Registry::new();
    CloneWorkflow::new(env).register(&mut registry);
    let engine = Engine::new(s.engine.store().clone(), registry, EngineOptions::default());
    let sp = CloneSpec::from_json(
        &json!({"name": "db-x", "sourceContext": "prod", "destinationContext": "staging",
        "namespaces": [{"source": "db", "destination": "db-copy"}]})
        .to_string(),
    )
    .unwrap();
    let run = engine
        .submit(CloneWorkflow::submission(&sp).unwrap())
        .await
        .unwrap();
    let phase = tokio::time::timeout(Duration::from_secs(30), engine.wait(run)).await;
    let state = engine.load(run).unwrap();
    let phase = phase
        .unwrap_or_else(|_| {
            panic!(
                "stuck: {:?}",
                state
                    .steps
                    .values()
                    .map(|st| (
                        st.decl.id.0.clone(),
                        st.status.clone(),
                        st.last_error.clone()
                    ))
                    .collect::<Vec<_>>()
            )
        })
        .unwrap();
    assert_eq!(
        phase,
        Phase::Succeeded,
        "{:?} {:?}",
        state.refusals,
        state
            .steps
            .values()
            .map(|st| (st.decl.id.0.clone(), st.last_error.clone()))
            .collect::<Vec<_>>()
    );
    let dst = clusters(&[&s.dst]).get("staging").await.unwrap();
    assert_eq!(tree(&pv_dir(&dst, "db-copy", "shared").await), shared_tree);
    assert_eq!(tree(&pv_dir(&dst, "db-copy", "data-pg-0").await), pg_tree);
    let out: ferry_steps::workflow::MoverOutput = state.steps[&"volume/db-copy/shared".into()]
        .output
        .as_ref()
        .unwrap()
        .decode()
        .unwrap();
    assert!(out.bytes > 3_000_000 && out.chunks_uploaded > 0, "{out:?}");
    // The upload's checkpoints went into the run's log.
    let progress = engine
        .store()
        .read(run, 0)
        .unwrap()
        .iter()
        .filter(|e| matches!(Event::decode(&e.event).unwrap(), Event::StepProgress { step, .. } if step.0 == "volume/db-copy/shared"))
        .count();
    assert!(progress >= 1, "upload checkpoints recorded");
    // No mover pod or temporary PVC of the run is left on either side.
    let sel = format!("ferry.dev/temporary=true,ferry.dev/run={run}");
    for c in [&src, &dst] {
        assert!(
            c.list_kind("v1", "Pod", Some(&sel))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            c.list_kind("v1", "PersistentVolumeClaim", Some(&sel))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// Waits until every pod of `ns` on `c` runs (the hooks exec into them).
async fn pods_running(c: &Cluster, ns: &str, want: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pods = c.list_kind_in("v1", "Pod", ns).await.unwrap();
        let running = pods
            .iter()
            .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
            .count();
        if running >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} of {want} pods running in {ns}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step_error(s: &Setup, run: RunId, step: &str) -> Option<String> {
    s.engine.load(run).unwrap().steps[&step.into()]
        .last_error
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_quiesce_the_source_around_its_snapshots_and_run_in_the_destination() {
    let s = setup(false).await;
    let src = clusters(&[&s.src]).get("prod").await.unwrap();
    apply_yaml(&src, VOLUMES).await;
    let pgdata = pv_dir(&src, "db", "data-pg-0").await;
    std::fs::write(pgdata.join("PG_VERSION"), b"16\n").unwrap();
    pods_running(&src, "db", 2).await;

    // The pre hook marks the database frozen inside its volume; the
    // snapshot must see the mark, and the thaw must remove it from the
    // source. The post hook marks the destination's web volume.
    let sp = CloneSpec::from_json(
        &json!({"name": "hooked", "sourceContext": "prod", "destinationContext": "prod",
        "namespaces": [{"source": "db", "destination": "db-copy"}],
        "hooks": [
            {"name": "freeze", "stage": "pre", "podSelector": "app=pg", "containerImage": "^postgres:",
             "command": ["sh", "-c", "echo frozen > /var/lib/postgresql/data/FROZEN"],
             "thawCommand": ["rm", "/var/lib/postgresql/data/FROZEN"], "timeoutSeconds": 30},
            {"name": "warm", "stage": "post", "podSelector": "app=web",
             "command": ["sh", "-c", "echo warmed > /srv/WARMED"], "timeoutSeconds": 60}
        ]})
        .to_string(),
    )
    .unwrap();
    let (run, phase) = run_clone(&s, &sp).await;
    let state = s.engine.load(run).unwrap();
    assert_eq!(
        phase,
        Phase::Succeeded,
        "{:?}",
        state
            .steps
            .values()
            .map(|st| (st.decl.id.0.clone(), st.last_error.clone()))
            .collect::<Vec<_>>()
    );
    let copy = pv_dir(&src, "db-copy", "data-pg-0").await;
    assert_eq!(
        std::fs::read(copy.join("FROZEN")).unwrap(),
        b"frozen\n",
        "the snapshot was taken while the pre hook held"
    );
    assert!(
        !pgdata.join("FROZEN").exists(),
        "the thaw ran on the source"
    );
    assert_eq!(std::fs::read(pgdata.join("PG_VERSION")).unwrap(), b"16\n");
    assert_eq!(
        std::fs::read(pv_dir(&src, "db-copy", "shared").await.join("WARMED")).unwrap(),
        b"warmed\n",
        "the post hook ran in the destination's web pod"
    );
    assert!(
        !pv_dir(&src, "db", "shared").await.join("WARMED").exists(),
        "the post hook never ran in the source"
    );
    // Where each hook ran is in the log, in order: freeze, snapshot, thaw.
    let ran = |id: &str| -> ferry_steps::workflow::HookOutput {
        state.steps[&id.into()]
            .output
            .as_ref()
            .unwrap()
            .decode()
            .unwrap()
    };
    assert_eq!(ran("prehook/db/freeze").ran, vec!["pg-0/pg".to_owned()]);
    assert_eq!(ran("thaw/db/freeze").ran, vec!["pg-0/pg".to_owned()]);
    assert_eq!(ran("posthook/db-copy/warm").ran.len(), 1);
    let order: Vec<String> = events(&s, run)
        .iter()
        .filter_map(|e| match e {
            Event::StepSucceeded { step, .. } => Some(step.0.clone()),
            _ => None,
        })
        .filter(|id| id.contains("/db/") || id.starts_with("snapshot/db/data"))
        .collect();
    let at = |id: &str| order.iter().position(|x| x == id).unwrap();
    assert!(at("prehook/db/freeze") < at("snapshot/db/data-pg-0"));
    assert!(at("snapshot/db/data-pg-0") < at("thaw/db/freeze"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_rolls_back_or_warns_as_its_on_error_says() {
    let s = setup(false).await;
    let src = clusters(&[&s.src]).get("prod").await.unwrap();
    apply_yaml(&src, VOLUMES).await;
    let pgdata = pv_dir(&src, "db", "data-pg-0").await;
    pods_running(&src, "db", 2).await;

    // A post hook that fails, with onError continue (the default for post
    // hooks): the clone stands, with a warning naming the hook.
    let warned = CloneSpec::from_json(
        &json!({"name": "post-fails", "sourceContext": "prod", "destinationContext": "prod",
        "namespaces": [{"source": "db", "destination": "db-warned"}],
        "hooks": [{"name": "check", "stage": "post", "podSelector": "app=web",
                   "command": ["sh", "-c", "echo cache cold >&2; exit 4"]}]})
        .to_string(),
    )
    .unwrap();
    let (run, phase) = run_clone(&s, &warned).await;
    assert_eq!(phase, Phase::SucceededWithWarnings);
    let err = step_error(&s, run, "posthook/db-warned/check").unwrap();
    assert!(
        err.contains("exit") && err.contains("cache cold"),
        "the error names the exit and the hook's stderr: {err}"
    );
    let st = s.engine.load(run).unwrap();
    assert!(
        st.warnings
            .iter()
            .any(|w| w.contains("posthook/db-warned/check")),
        "{:?}",
        st.warnings
    );
    assert!(
        get(&src, "v1", "Namespace", None, "db-warned")
            .await
            .is_some()
    );

    // A pre hook that quiesces, then fails (onError fail, the default for
    // pre hooks): the clone rolls back, and the compensation thaws.
    let failed = CloneSpec::from_json(
        &json!({"name": "pre-fails", "sourceContext": "prod", "destinationContext": "prod",
        "namespaces": [{"source": "db", "destination": "db-failed"}],
        "hooks": [{"name": "freeze", "stage": "pre", "podSelector": "app=pg",
                   "command": ["sh", "-c", "echo frozen > /var/lib/postgresql/data/FROZEN; exit 3"],
                   "thawCommand": ["rm", "-f", "/var/lib/postgresql/data/FROZEN"]}]})
        .to_string(),
    )
    .unwrap();
    let (run, phase) = run_clone(&s, &failed).await;
    assert_eq!(phase, Phase::RolledBack);
    let err = step_error(&s, run, "prehook/db/freeze").unwrap();
    assert!(err.contains("exit status 3"), "{err}");
    assert!(
        !pgdata.join("FROZEN").exists(),
        "the pre hook's compensation ran the thaw"
    );
    assert!(events(&s, run).iter().any(
        |e| matches!(e, Event::StepCompensated { step, .. } if step.0 == "prehook/db/freeze")
    ));
    assert!(
        get(&src, "v1", "Namespace", None, "db-failed")
            .await
            .is_none(),
        "nothing of the rolled-back clone is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_whose_exec_stream_drops_is_retried_not_left_hanging() {
    let s = setup(false).await;
    let src = clusters(&[&s.src]).get("prod").await.unwrap();
    apply_yaml(&src, VOLUMES).await;
    pods_running(&src, "db", 2).await;
    // Every exec stream is cut after 4 KiB of output; the hook prints more.
    s.src.set_faults(FaultConfig {
        drop_exec_after: Some(4096),
        ..FaultConfig::default()
    });
    let sp = CloneSpec::from_json(
        &json!({"name": "cut", "sourceContext": "prod", "destinationContext": "prod",
        "namespaces": [{"source": "db", "destination": "db-cut"}],
        "hooks": [{"name": "chatty", "stage": "pre", "podSelector": "app=pg",
                   "command": ["sh", "-c", "head -c 100000 /dev/zero"], "timeoutSeconds": 3600}]})
        .to_string(),
    )
    .unwrap();
    let (run, phase) = run_clone(&s, &sp).await;
    assert_eq!(phase, Phase::RolledBack);
    let failed: Vec<String> = events(&s, run)
        .iter()
        .filter_map(|e| match e {
            Event::StepFailed { step, error, .. } if step.0 == "prehook/db/chatty" => {
                Some(error.clone())
            }
            _ => None,
        })
        .collect();
    assert!(failed.len() > 1, "retried: {failed:?}");
    assert!(
        failed
            .iter()
            .all(|e| e.contains("ended without an exit status")),
        "{failed:?}"
    );
}

//! The clone workflow killed with SIGKILL at every step boundary and inside
//! apply and health, then resumed: it ends Succeeded, and the destination
//! simulator's create counters show no object created twice. The simulated
//! clusters run in this test process and outlive the killed one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_sim::{SimCluster, SimOptions};
use ferry_steps::cluster::Clusters;
use serde_json::{Value, json};

const CHILD: &str = env!("CARGO_BIN_EXE_ferry-clone-child");
const APP: &str = include_str!("../../steps/tests/fixtures/sim/app.yaml");
const CART: &str = include_str!("../../steps/tests/fixtures/sim/cart.yaml");
const VOLUMES: &str = include_str!("../../steps/tests/fixtures/sim/volumes.yaml");

async fn seed(src: &SimCluster, docs: &[&str]) {
    let cl = Clusters::from_paths(&[src.kubeconfig_path().to_owned()]).unwrap();
    let c = cl.get(src.name()).await.unwrap();
    for yaml in docs {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                c.apply(&v).await.unwrap();
            }
        }
        c.refresh().await.unwrap();
    }
}

fn child(
    dir: &Path,
    mode: &str,
    kubeconfigs: &[PathBuf],
    failpoint: Option<&str>,
) -> std::process::Child {
    let mut cmd = Command::new(CHILD);
    cmd.arg(dir)
        .arg(mode)
        .arg(dir.join("spec.json"))
        .args(kubeconfigs);
    if let Some(p) = failpoint {
        cmd.env("FERRY_FAILPOINT", p);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("child starts")
}

async fn case(point: &str) {
    run_case(point, App::Plain).await
}

/// What a case clones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum App {
    /// The app without volumes, to another cluster.
    Plain,
    /// The app with volumes, in-cluster (snapshots, contents, PVCs).
    Volumes,
    /// The same, with a pre hook that marks the database frozen in its
    /// volume and a thaw that removes the mark.
    Hooked,
}

/// The pods of `ns` on `c` run (hooks exec into them).
async fn pods_running(c: &SimCluster, ns: &str, want: usize) {
    let cl = Clusters::from_paths(&[c.kubeconfig_path().to_owned()]).unwrap();
    let c = cl.get(c.name()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let running = c
            .list_kind_in("v1", "Pod", ns)
            .await
            .unwrap()
            .iter()
            .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
            .count();
        if running >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} of {want} pods run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The PV directory of a bound claim.
async fn pv_dir(c: &SimCluster, ns: &str, pvc: &str) -> PathBuf {
    let cl = Clusters::from_paths(&[c.kubeconfig_path().to_owned()]).unwrap();
    let c = cl.get(c.name()).await.unwrap();
    let claim = c
        .get("v1", "PersistentVolumeClaim", Some(ns), pvc)
        .await
        .unwrap()
        .unwrap();
    let pv = c
        .get(
            "v1",
            "PersistentVolume",
            None,
            claim["spec"]["volumeName"].as_str().unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    PathBuf::from(
        pv["metadata"]["annotations"]["sim.ferry.dev/path"]
            .as_str()
            .unwrap(),
    )
}

/// One kill at `point` and a resume.
async fn run_case(point: &str, app: App) {
    let volumes = app != App::Plain;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = SimCluster::start(SimOptions {
        name: "prod".into(),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let dst = SimCluster::start(SimOptions {
        name: "staging".into(),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let spec = if volumes {
        seed(&src, &[VOLUMES]).await;
        let mut spec = json!({"name": "db", "sourceContext": "prod", "destinationContext": "prod", "namespaces": [{"source": "db", "destination": "db-copy"}]});
        if app == App::Hooked {
            pods_running(&src, "db", 2).await;
            spec["hooks"] = json!([{"name": "freeze", "stage": "pre", "podSelector": "app=pg",
                "command": ["sh", "-c", "echo frozen > /var/lib/postgresql/data/FROZEN"],
                "thawCommand": ["rm", "-f", "/var/lib/postgresql/data/FROZEN"]}]);
        }
        spec
    } else {
        seed(&src, &[APP, CART]).await;
        json!({"name": "shop", "sourceContext": "prod", "destinationContext": "staging", "namespaces": [{"source": "shop", "destination": "shop-copy"}]})
    };
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    let kcs = vec![
        src.kubeconfig_path().to_owned(),
        dst.kubeconfig_path().to_owned(),
    ];

    let mut first = child(dir, "submit", &kcs, Some(point));
    let stderr = first.stderr.take().unwrap();
    let reached = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("FAILPOINT "))
    });
    let reached = tokio::time::timeout(Duration::from_secs(60), reached)
        .await
        .expect("failpoint in time")
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(reached, "failpoint {point} was never reached");

    let second = child(dir, "resume", &kcs, None);
    let out = tokio::task::spawn_blocking(move || second.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" Succeeded"),
        "{point}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = if volumes { &src } else { &dst };
    let doubled: Vec<_> = target
        .creates()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(doubled.is_empty(), "{point}: created twice: {doubled:?}");
    if app == App::Hooked {
        assert!(
            stdout.contains(" Succeeded\n") || stdout.trim_end().ends_with(" Succeeded"),
            "{point}: the hook ran in a pod, so no warning: {stdout}"
        );
        assert!(
            pv_dir(&src, "db-copy", "data-pg-0")
                .await
                .join("FROZEN")
                .exists(),
            "{point}: the snapshot was taken while frozen"
        );
        assert!(
            !pv_dir(&src, "db", "data-pg-0")
                .await
                .join("FROZEN")
                .exists(),
            "{point}: the source was thawed"
        );
    }
    if volumes {
        assert_eq!(
            src.create_count("PersistentVolumeClaim", "db-copy", "data-pg-0"),
            1,
            "{point}"
        );
        assert_eq!(
            src.create_count("PersistentVolumeClaim", "db-copy", "shared"),
            1,
            "{point}"
        );
    } else {
        assert_eq!(
            dst.create_count("ConfigMap", "shop-copy", "settings"),
            1,
            "{point}"
        );
    }
    src.stop().await;
    dst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_step_boundary_and_inside_apply_and_health_the_clone_still_becomes_healthy()
{
    for point in [
        "step.start.after@1",      // preflight started
        "step.succeeded.before@1", // preflight done, not yet recorded
        "step.start.after@2",      // namespaces started
        "step.succeeded.before@2", // namespaces made, not yet recorded
        "step.succeeded.after@2",
        "apply.batch@1", // inside apply, after its first kind
        "apply.batch@4",
        "step.succeeded.before@3", // apply done, not yet recorded
        "health.poll@1",           // inside health
        "step.start.after@5",      // cleanup started
    ] {
        case(point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_around_the_snapshot_and_volume_steps_the_in_cluster_clone_still_becomes_healthy() {
    // Steps start in this order: preflight, namespaces, then the two
    // snapshots, the two volumes, apply, health, cleanup.
    for point in [
        "step.start.after@3",      // a snapshot started
        "step.succeeded.before@3", // a snapshot ready, not yet recorded
        "step.start.after@5",      // a volume started
        "step.succeeded.before@5", // a volume made, not yet recorded
        "step.start.after@7",      // apply, with the PVCs in place
    ] {
        run_case(point, App::Volumes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_and_around_a_pre_hook_the_clone_still_thaws_and_becomes_healthy() {
    // After namespaces, the pre hook is the only step that may start:
    // every snapshot waits for it.
    for point in [
        "step.start.after@3",      // the pre hook started, maybe not run
        "step.succeeded.before@3", // the pre hook ran, not yet recorded
        "step.succeeded.after@3",  // the pre hook recorded, snapshots next
    ] {
        run_case(point, App::Hooked).await;
    }
}

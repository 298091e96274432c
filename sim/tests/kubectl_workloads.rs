//! kubectl against the workload controllers: `rollout status` for each kind,
//! `scale`, with a fresh HOME.

mod common;

use anyhow::{Result, ensure};
use common::{kubectl, kubectl_bin};

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx:1.27}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: postgres:16, volumeMounts: [{name: data, mountPath: /data}]}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: busybox:1.36}]}
"#;

#[tokio::test]
async fn rollout_status_and_scale() -> Result<()> {
    let c = common::start().await;
    let home = tempfile::tempdir()?;
    let bin = kubectl_bin("kubectl");
    let k = |args: Vec<&'static str>, stdin: Option<&'static str>| {
        let (bin, home, kc) = (
            bin.clone(),
            home.path().to_path_buf(),
            c.kubeconfig_path().to_path_buf(),
        );
        async move { kubectl(&bin, &home, &kc, &args, stdin).await }
    };
    let out = k(vec!["apply", "-f", "-"], Some(APP)).await?;
    ensure!(out.ok, "apply: {}", out.stderr);
    for (what, expect) in [
        (
            "deployment/web",
            "deployment \"web\" successfully rolled out",
        ),
        (
            "statefulset/db",
            "partitioned roll out complete: 2 new pods have been updated",
        ),
        (
            "daemonset/agent",
            "daemon set \"agent\" successfully rolled out",
        ),
    ] {
        let out = k(vec!["rollout", "status", what, "--timeout=30s"], None).await?;
        ensure!(
            out.ok && out.stdout.contains(expect),
            "{what}: {} / {}",
            out.stdout,
            out.stderr
        );
    }
    for what in ["deployment/web", "statefulset/db"] {
        let out = k(vec!["scale", what, "--replicas=0"], None).await?;
        ensure!(
            out.ok && out.stdout.contains("scaled"),
            "scale {what}: {} {}",
            out.stdout,
            out.stderr
        );
    }
    let out = k(
        vec!["rollout", "status", "deployment/web", "--timeout=30s"],
        None,
    )
    .await?;
    ensure!(out.ok, "web at 0: {} {}", out.stdout, out.stderr);
    let out = k(
        vec!["rollout", "status", "statefulset/db", "--timeout=30s"],
        None,
    )
    .await?;
    ensure!(out.ok, "db at 0: {} {}", out.stdout, out.stderr);
    common::wait_for("pods gone", 20, || async {
        let out = k(
            vec!["get", "pods", "-l", "app in (web,db)", "-o", "name"],
            None,
        )
        .await
        .ok()?;
        (out.ok && out.stdout.trim().is_empty()).then_some(())
    })
    .await;
    // Back up again and a template change rolls out.
    let out = k(vec!["scale", "deployment/web", "--replicas=3"], None).await?;
    ensure!(out.ok, "{}", out.stderr);
    let out = k(
        vec!["set", "image", "deployment/web", "web=nginx:1.28"],
        None,
    )
    .await?;
    ensure!(out.ok, "set image: {}", out.stderr);
    let out = k(
        vec!["rollout", "status", "deployment/web", "--timeout=30s"],
        None,
    )
    .await?;
    ensure!(
        out.ok && out.stdout.contains("successfully rolled out"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    c.stop().await;
    Ok(())
}

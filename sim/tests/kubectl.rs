//! kubectl against the simulator: the dispatcher on PATH and the oldest and
//! newest real binaries, each with a fresh HOME.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use tokio::io::{AsyncBufReadExt, BufReader};

use common::*;
use ferry_sim::{SimCluster, SimOptions};

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: c
        image: nginx:IMAGE
        env: [{name: A, value: "1"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {a: "IMAGE"}
"#;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

const CR: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1}
spec: {size: SIZE}
"#;

struct Kubectl<'a> {
    bin: std::path::PathBuf,
    home: tempfile::TempDir,
    cluster: &'a SimCluster,
}

impl Kubectl<'_> {
    async fn run(&self, args: &[&str]) -> Result<Out> {
        kubectl(
            &self.bin,
            self.home.path(),
            self.cluster.kubeconfig_path(),
            args,
            None,
        )
        .await
    }

    async fn ok(&self, args: &[&str]) -> Result<String> {
        let o = self.run(args).await?;
        anyhow::ensure!(o.ok, "kubectl {args:?} failed: {}{}", o.stdout, o.stderr);
        Ok(o.stdout)
    }

    async fn apply_text(&self, text: &str, extra: &[&str]) -> Result<String> {
        let f = self.home.path().join("manifest.yaml");
        std::fs::write(&f, text)?;
        let mut args = vec!["apply", "-f", f.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.ok(&args).await
    }
}

async fn suite(bin: &str, minor: u32) -> Result<()> {
    let c = SimCluster::start(SimOptions {
        minor,
        ..Default::default()
    })
    .await?;
    let k = Kubectl {
        bin: kubectl_bin(bin),
        home: tempfile::tempdir()?,
        cluster: &c,
    };

    // get
    let out = k
        .ok(&["get", "ns", "-o", "jsonpath={.items[*].metadata.name}"])
        .await?;
    assert_eq!(out, "default kube-node-lease kube-public kube-system");

    // Discovery as kubectl sees it.
    let out = k.ok(&["api-resources", "--no-headers"]).await?;
    for row in [
        "deploy",
        "volumesnapshots",
        "customresourcedefinitions",
        "horizontalpodautoscalers",
    ] {
        assert!(out.contains(row), "{row} missing from api-resources: {out}");
    }

    // apply (client-side, default validation), twice.
    let out = k.apply_text(&MANIFEST.replace("IMAGE", "1"), &[]).await?;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let out = k.apply_text(&MANIFEST.replace("IMAGE", "2"), &[]).await?;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let image = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await?;
    assert_eq!(image, "nginx:2");

    // apply --server-side
    let out = k
        .apply_text(
            &MANIFEST.replace("IMAGE", "3"),
            &["--server-side", "--force-conflicts"],
        )
        .await?;
    assert!(out.contains("serverside-applied"), "{out}");
    let data = k
        .ok(&["get", "cm", "cfg", "-o", "jsonpath={.data.a}"])
        .await?;
    assert_eq!(data, "3");

    // create -f of an existing object
    let f = k.home.path().join("again.yaml");
    std::fs::write(&f, MANIFEST.replace("IMAGE", "3"))?;
    let o = k.run(&["create", "-f", f.to_str().unwrap()]).await?;
    assert!(!o.ok);
    let want = format!(
        "Error from server (AlreadyExists): error when creating \"{}\": deployments.apps \"web\" already exists",
        f.display()
    );
    assert!(o.stderr.contains(&want), "{}", o.stderr);

    // Invalid names come back as kubectl's Invalid message.
    let o = k.run(&["create", "configmap", "Bad_Name"]).await?;
    assert!(
        o.stderr
            .contains("is invalid: metadata.name: Invalid value: \"Bad_Name\""),
        "{}",
        o.stderr
    );

    // Imperative create (Protobuf bodies on 1.32+ for these kinds).
    k.ok(&[
        "create",
        "deployment",
        "made",
        "--image=nginx:1",
        "--port=80",
        "--replicas=3",
    ])
    .await?;
    assert_eq!(
        k.ok(&["get", "deploy", "made", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]).await?,
        "3 nginx:1 80"
    );
    k.ok(&["create", "secret", "generic", "sec", "--from-literal=k=v"])
        .await?;
    assert_eq!(
        k.ok(&["get", "secret", "sec", "-o", "jsonpath={.data.k}"])
            .await?,
        "dg=="
    );
    k.ok(&["create", "serviceaccount", "robot"]).await?;
    k.ok(&["create", "configmap", "imperative", "--from-literal=x=y"])
        .await?;
    assert_eq!(
        k.ok(&["get", "cm", "imperative", "-o", "jsonpath={.data.x}"])
            .await?,
        "y"
    );

    // scale
    let out = k.ok(&["scale", "deploy", "web", "--replicas=4"]).await?;
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
            .await?,
        "4"
    );

    // CRD then CR through apply with validation.
    k.apply_text(CRD, &[]).await?;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ])
    .await?;
    let out = k.apply_text(&CR.replace("SIZE", "1"), &[]).await?;
    assert!(out.contains("widget.example.com/w1 created"), "{out}");
    let out = k.apply_text(&CR.replace("SIZE", "2"), &[]).await?;
    assert!(out.contains("configured"), "{out}");
    assert_eq!(
        k.ok(&["get", "widgets", "w1", "-o", "jsonpath={.spec.size}"])
            .await?,
        "2"
    );
    let out = k
        .apply_text(&CR.replace("SIZE", "3"), &["--server-side"])
        .await?;
    assert!(out.contains("serverside-applied"), "{out}");

    // get -w, bounded: start it, make a change, read until it shows, kill it.
    get_watch(&k).await?;

    // delete ns waits until the namespace is gone.
    k.ok(&["create", "namespace", "doomed"]).await?;
    k.ok(&[
        "-n",
        "doomed",
        "create",
        "configmap",
        "inside",
        "--from-literal=a=b",
    ])
    .await?;
    let out = k.ok(&["delete", "namespace", "doomed"]).await?;
    assert!(out.contains("namespace \"doomed\" deleted"), "{out}");
    let nss: Api<Namespace> = Api::all(c.client()?);
    assert!(
        nss.get_opt("doomed").await?.is_none(),
        "gone when kubectl returns"
    );

    let agents = c.counters()["userAgents"].to_string();
    assert!(
        agents.contains(&format!("v1.{minor}.")),
        "kubectl 1.{minor} talked to the server: {agents}"
    );
    c.stop().await;
    Ok(())
}

async fn get_watch(k: &Kubectl<'_>) -> Result<()> {
    let mut cmd = tokio::process::Command::new(&k.bin);
    cmd.env("HOME", k.home.path())
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(k.cluster.kubeconfig_path())
        .args(["get", "configmaps", "-w", "-o", "name"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // The initial list ends with cfg/kube-root-ca.crt; then create and wait for the event.
    let first = tokio::time::timeout_at(deadline, lines.next_line())
        .await??
        .context("first line")?;
    assert!(first.starts_with("configmap/"), "{first}");
    k.ok(&["create", "configmap", "watched"]).await?;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await??
            .context("watch ended")?;
        if line == "configmap/watched" {
            break;
        }
    }
    child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_dispatcher() -> Result<()> {
    suite("kubectl", 32).await
}

#[tokio::test]
async fn kubectl_oldest_real_binary() -> Result<()> {
    suite("kubectl.1.27", 27).await
}

#[tokio::test]
async fn kubectl_newest_real_binary() -> Result<()> {
    suite("kubectl.1.33", 33).await
}

#[tokio::test]
async fn kubectl_1_28() -> Result<()> {
    suite("kubectl.1.28", 28).await
}

#[tokio::test]
async fn kubectl_1_29() -> Result<()> {
    suite("kubectl.1.29", 29).await
}

#[tokio::test]
async fn kubectl_1_30() -> Result<()> {
    suite("kubectl.1.30", 30).await
}

#[tokio::test]
async fn kubectl_1_31() -> Result<()> {
    suite("kubectl.1.31", 31).await
}

#[tokio::test]
async fn kubectl_1_32() -> Result<()> {
    suite("kubectl.1.32", 32).await
}

/// The dispatcher runs the real kubectl whose minor matches `/version`.
#[tokio::test]
async fn dispatcher_follows_the_server_minor() -> Result<()> {
    for minor in [27, 33] {
        let c = SimCluster::start(SimOptions {
            minor,
            ..Default::default()
        })
        .await?;
        let home = tempfile::tempdir()?;
        let o = kubectl(
            Path::new("kubectl"),
            home.path(),
            c.kubeconfig_path(),
            &["get", "ns", "default", "-o", "name"],
            None,
        )
        .await?;
        assert!(o.ok, "{}", o.stderr);
        let agents = c.counters()["userAgents"].to_string();
        assert!(agents.contains(&format!("v1.{minor}.")), "{agents}");
        c.stop().await;
    }
    Ok(())
}

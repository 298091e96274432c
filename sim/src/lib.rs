//! ferry-sim: a Kubernetes API server simulator that the real `kube` client
//! and `kubectl` (1.27–1.33) talk to unchanged, over plain HTTP on 127.0.0.1.
//!
//! The entry type is [`SimCluster`]: `SimCluster::start(SimOptions)` serves a
//! fresh cluster (namespaces `default`, `kube-system`, `kube-public` with
//! their `default` ServiceAccounts and `kube-root-ca.crt` ConfigMaps, the
//! StorageClasses, VolumeSnapshotClasses and IngressClass of
//! [`storage::default_objects`]), writes a kubeconfig with a random bearer
//! token, and hands out kube clients, counters and fault injection;
//! [`SimCluster::stop`] ends it. The `ferry sim` command wraps the same
//! thing: [`ServeArgs`] and [`serve_until_killed`].
//!
//! Controllers make it behave like a cluster: workloads create pods that
//! become Running and Ready after [`SimOptions::pod_ready_delay`] once their
//! claims are bound; claims are provisioned per StorageClass into local
//! directories (annotation `sim.ferry.dev/path` on the PV); CSI snapshots are
//! `cp -a` copies; pod exec over WebSocket runs local processes with the
//! pod's mount paths rewritten to those directories.
//!
//! kubectl never sends credentials over plain HTTP, so the kubeconfig's
//! server URL carries the token as a path prefix
//! (`http://127.0.0.1:PORT/t/TOKEN`) besides the user's bearer token.
//!
//! It is a test and demo tool, never a production path. What it reproduces
//! (and where it simplifies) is listed in `sim/README.md`.
//!
//! # Layout
//!
//! - [`cluster`]: [`SimCluster`], [`SimOptions`], kubeconfig writing, the
//!   initial objects.
//! - `api`: HTTP front: auth, routing, content types, the verbs, `/sim/v1/`.
//! - `exec`: `pods/exec` over WebSocket (v5/v4.channel.k8s.io), path rewriting.
//! - [`objects`]: object lifecycle rules (metadata, defaults, validation,
//!   namespace admission, deletion with finalizers, CRD registration,
//!   Service clusterIP/nodePort allocation).
//! - [`store`]: objects by (group, resource, namespace, name), the global
//!   resourceVersion, bounded event history, change broadcast, create counters.
//! - [`controllers`]: tasks reacting to store changes (namespace lifecycle,
//!   per-namespace defaults, garbage collection, and the ones below).
//! - [`workloads`]: Deployment, ReplicaSet, StatefulSet, DaemonSet and Job
//!   controllers and the kubelet (a 20 ms tick: scheduling, readiness).
//! - [`storage`]: default classes and driver capabilities, PV/PVC
//!   provisioning and binding, data sources, CSI snapshots.
//! - [`ctl`]: helpers shared by those controllers and their runtime settings.
//! - [`watch`]: watch streams (history replay, bookmarks, timeouts, 410).
//! - [`resources`]: the served resource table (built-ins and CRDs).
//! - [`discovery`]: `/version`, `/api`, `/apis`, aggregated discovery, OpenAPI.
//! - [`patch`]: merge, JSON, strategic merge and apply merges.
//! - [`podsecurity`]: Pod Security Admission for pod creates, from the
//!   namespace's `pod-security.kubernetes.io/enforce` label.
//! - [`quota`]: ResourceQuota admission for pod creates (compute
//!   resources and pod counts).
//! - [`selector`], [`validation`], [`status`] (metav1.Status errors),
//!   [`faults`], [`protobuf`] (kubectl 1.32+ imperative create bodies).

mod api;
pub mod cluster;
pub mod controllers;
pub mod ctl;
pub mod discovery;
mod exec;
pub mod faults;
pub mod objects;
pub mod patch;
pub mod podsecurity;
pub mod protobuf;
pub mod quota;
pub mod resources;
pub mod selector;
pub mod status;
pub mod storage;
pub mod store;
pub mod util;
pub mod validation;
pub mod watch;
pub mod workloads;

use std::path::PathBuf;

pub use cluster::{Error, Result, SimCluster, SimOptions};
pub use faults::{FaultConfig, FaultRule};
pub use store::ObjectRef;

/// Arguments of `ferry sim`: serve one simulated cluster until killed.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Cluster name: the kubeconfig context, cluster and user names.
    #[arg(long)]
    pub name: String,
    /// Directory for the cluster's files.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where to write the kubeconfig (mode 0600).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Port on 127.0.0.1 (0 or absent: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Kubernetes minor version to report (27..=33).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(27..=33))]
    pub minor: u32,
    /// YAML file (one or more documents) of StorageClasses,
    /// VolumeSnapshotClasses and IngressClasses replacing the default ones.
    #[arg(long)]
    pub cluster_objects: Option<PathBuf>,
    /// Milliseconds a scheduled pod with bound claims waits before it is Running and Ready.
    #[arg(long, default_value_t = 100)]
    pub pod_ready_delay_ms: u64,
}

/// Read a multi-document YAML file of objects (for [`SimOptions::cluster_objects`]).
pub fn read_objects(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("parse {}", path.display()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Serve one cluster until the process is killed (or interrupted): write the
/// kubeconfig (mode 0600), print `ready NAME http://127.0.0.1:PORT`, serve.
pub async fn serve_until_killed(args: ServeArgs) -> anyhow::Result<()> {
    let cluster = SimCluster::start(SimOptions {
        name: args.name.clone(),
        data_dir: Some(args.data_dir.clone()),
        port: args.port,
        minor: args.minor,
        cluster_objects: args
            .cluster_objects
            .as_deref()
            .map(read_objects)
            .transpose()?,
        pod_ready_delay: std::time::Duration::from_millis(args.pod_ready_delay_ms),
        ..Default::default()
    })
    .await?;
    cluster::write_private(&args.kubeconfig, &cluster.kubeconfig_yaml())?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {} {}", cluster.name(), cluster.url())?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    cluster.stop().await;
    Ok(())
}

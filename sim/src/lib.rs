//! ferry-sim: a Kubernetes API server simulator that the real `kube` client
//! and `kubectl` (1.27–1.33) talk to unchanged, over plain HTTP on 127.0.0.1.
//!
//! The entry type is [`SimCluster`]: `SimCluster::start(SimOptions)` serves a
//! fresh cluster (namespaces `default`, `kube-system`, `kube-public` with
//! their `default` ServiceAccounts and `kube-root-ca.crt` ConfigMaps), writes
//! a kubeconfig with a random bearer token, and hands out kube clients,
//! counters and fault injection; [`SimCluster::stop`] ends it. The `ferry sim`
//! command wraps the same thing: [`ServeArgs`] and [`serve_until_killed`].
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
//! - [`cluster`]: [`SimCluster`], [`SimOptions`], kubeconfig writing.
//! - `api`: HTTP front: auth, routing, content types, the verbs, `/sim/v1/`.
//! - [`objects`]: object lifecycle rules (metadata, defaults, validation,
//!   namespace admission, deletion with finalizers, CRD registration).
//! - [`store`]: objects by (group, resource, namespace, name), the global
//!   resourceVersion, bounded event history, change broadcast, create counters.
//! - [`controllers`]: tasks reacting to store changes (namespace lifecycle,
//!   per-namespace defaults, garbage collection); part 2 adds more here.
//! - [`watch`]: watch streams (history replay, bookmarks, timeouts, 410).
//! - [`resources`]: the served resource table (built-ins and CRDs).
//! - [`discovery`]: `/version`, `/api`, `/apis`, aggregated discovery, OpenAPI.
//! - [`patch`]: merge, JSON, strategic merge and apply merges.
//! - [`selector`], [`validation`], [`status`] (metav1.Status errors),
//!   [`faults`], [`protobuf`] (kubectl 1.32+ imperative create bodies).

mod api;
pub mod cluster;
pub mod controllers;
pub mod discovery;
pub mod faults;
pub mod objects;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod selector;
pub mod status;
pub mod store;
pub mod util;
pub mod validation;
pub mod watch;

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
}

/// Serve one cluster until the process is killed (or interrupted): write the
/// kubeconfig (mode 0600), print `ready NAME http://127.0.0.1:PORT`, serve.
pub async fn serve_until_killed(args: ServeArgs) -> anyhow::Result<()> {
    let cluster = SimCluster::start(SimOptions {
        name: args.name.clone(),
        data_dir: Some(args.data_dir.clone()),
        port: args.port,
        minor: args.minor,
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

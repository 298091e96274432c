//! Simple-object creates per second with 16 concurrent kube clients.
//!
//! `cargo bench -p ferry-sim --bench creates` (set `CREATES=N` for the total).

use std::time::Instant;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

const CLIENTS: usize = 16;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::var("CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let per_client = total / CLIENTS;
    let cluster = ferry_sim::SimCluster::start(ferry_sim::SimOptions::default()).await?;
    let rv_before = cluster.resource_version();

    // One client (one connection pool) per task, as separate ferry workers would have.
    let mut apis = Vec::new();
    for _ in 0..CLIENTS {
        apis.push(Api::<ConfigMap>::namespaced(cluster.client()?, "default"));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, api) in apis.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for j in 0..per_client {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("bench-{i}-{j}"), "labels": {"ferry.dev/run": "bench"}},
                    "data": {"key": "value"}
                }))?;
                api.create(&PostParams::default(), &cm).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let done = per_client * CLIENTS;
    assert_eq!(
        cluster.resource_version() - rv_before,
        done as u64,
        "one write per create"
    );
    println!(
        "creates: {done} ConfigMaps with {CLIENTS} concurrent kube clients in {secs:.2} s = {:.0} creates/s",
        done as f64 / secs
    );
    cluster.stop().await;
    Ok(())
}

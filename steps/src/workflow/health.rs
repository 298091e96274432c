//! Step `health`: wait until every workload of the destination is ready, by
//! the rules of `kubectl rollout status`, and every PVC is bound.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_engine::{CompensateCtx, Step, StepCtx, StepError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CloneEnv;
use crate::spec::CloneSpec;

/// Waits for the destination to be healthy, within the deadline recorded
/// in the log (a restart does not reset it).
///
/// # Guarantees
/// Reads only.
///
/// # Assumptions
/// Idempotent; nothing to compensate.
///
/// # Errors
/// Permanent when the deadline passes, naming what is not ready.
pub struct HealthStep {
    pub(super) env: Arc<CloneEnv>,
}

/// What was checked.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthOutput {
    /// Workloads ready (`Kind ns/name`).
    pub workloads: Vec<String>,
    /// PVCs bound.
    pub pvcs: usize,
}

fn int(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

/// Whether a Deployment, StatefulSet or DaemonSet is ready, as `kubectl
/// rollout status` judges it; `None` for other kinds.
pub fn workload_ready(o: &Value) -> Option<bool> {
    let generation = int(o, "/metadata/generation");
    let observed = int(o, "/status/observedGeneration");
    if observed < generation {
        return match o["kind"].as_str() {
            Some("Deployment" | "StatefulSet" | "DaemonSet") => Some(false),
            _ => None,
        };
    }
    let replicas = o
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    match o["kind"].as_str()? {
        "Deployment" => {
            let updated = int(o, "/status/updatedReplicas");
            let total = int(o, "/status/replicas");
            let available = int(o, "/status/availableReplicas");
            Some(updated >= replicas && total <= updated && available >= updated)
        }
        "StatefulSet" => {
            let ready = int(o, "/status/readyReplicas");
            let rolling = o
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                .unwrap_or("RollingUpdate")
                == "RollingUpdate";
            let updated_ok = !rolling
                || int(o, "/status/updatedReplicas") >= replicas
                || o.pointer("/status/updateRevision") == o.pointer("/status/currentRevision");
            Some(ready >= replicas && updated_ok)
        }
        "DaemonSet" => {
            let desired = int(o, "/status/desiredNumberScheduled");
            Some(
                int(o, "/status/updatedNumberScheduled") >= desired
                    && int(o, "/status/numberAvailable") >= desired,
            )
        }
        _ => None,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Step for HealthStep {
    type Input = Value;
    type Output = HealthOutput;

    fn kind(&self) -> &'static str {
        "health"
    }

    async fn run(&self, ctx: &StepCtx, _input: Value) -> Result<HealthOutput, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        let namespaces: Vec<String> = ctx.output_of("namespaces")?;
        let poll = self.env.health_poll;
        loop {
            let mut ready = Vec::new();
            let mut waiting = Vec::new();
            let mut pvcs = 0;
            for ns in &namespaces {
                for (api_version, kind) in [
                    ("apps/v1", "Deployment"),
                    ("apps/v1", "StatefulSet"),
                    ("apps/v1", "DaemonSet"),
                ] {
                    for o in dest.list_kind_in(api_version, kind, ns).await? {
                        let id = format!(
                            "{kind} {ns}/{}",
                            o.pointer("/metadata/name")
                                .and_then(Value::as_str)
                                .unwrap_or("?")
                        );
                        if workload_ready(&o) == Some(true) {
                            ready.push(id)
                        } else {
                            waiting.push(id)
                        }
                    }
                }
                for pvc in dest.list_kind_in("v1", "PersistentVolumeClaim", ns).await? {
                    let name = pvc
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("?");
                    if pvc.pointer("/status/phase").and_then(Value::as_str) == Some("Bound") {
                        pvcs += 1;
                    } else {
                        waiting.push(format!("PersistentVolumeClaim {ns}/{name} (not bound)"));
                    }
                }
            }
            ferry_engine::failpoint("health.poll");
            if waiting.is_empty() {
                return Ok(HealthOutput {
                    workloads: ready,
                    pvcs,
                });
            }
            // Say what is not ready before the engine's deadline stops us.
            if let Some(deadline) = ctx.deadline_ms()
                && now_ms() + poll.as_millis() as u64 >= deadline
            {
                return Err(StepError::permanent(format!(
                    "the destination did not become healthy before its deadline; not ready: {}",
                    waiting.join(", ")
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
            }
        }
    }

    async fn compensate(
        &self,
        _ctx: &CompensateCtx,
        _input: Value,
        _output: Option<HealthOutput>,
    ) -> Result<(), StepError> {
        Ok(())
    }
}

//! Step `apply`: create the cluster-scoped dependencies when absent, then
//! server-side apply every namespaced object in dependency order.

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{CompensateCtx, Step, StepCtx, StepError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CloneEnv, PreflightOutput, load_bundle};
use crate::cluster::{Created, ids};
use crate::object::RUN_LABEL;
use crate::spec::CloneSpec;

/// Objects applied at once within one kind.
const CONCURRENCY: usize = 16;

/// Applies the bundle to the destination.
///
/// # Guarantees
/// Cluster-scoped objects are created with a plain create only when absent,
/// and are this run's (labelled) only when ferry created them; an existing
/// one is never patched, labelled or deleted. Namespaced objects go by
/// server-side apply (field manager `ferry`), one kind after another in
/// dependency order, concurrently within a kind.
///
/// # Assumptions
/// Idempotent: apply converges and create-if-absent skips what exists; a
/// checkpoint records the kinds done so a resumed attempt skips them.
/// `compensate` deletes the cluster-scoped objects carrying this run's
/// label; namespaced objects go with their namespaces.
///
/// # Errors
/// Retryable for conflicts, throttling and server errors; permanent for an
/// object the destination rejects.
pub struct ApplyStep {
    pub(super) env: Arc<CloneEnv>,
}

/// What apply did.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyOutput {
    /// Namespaced objects applied.
    pub applied: usize,
    /// Cluster-scoped objects ferry created (`Kind name`).
    pub created: Vec<String>,
    /// Cluster-scoped objects that already existed and were left alone.
    pub existing: Vec<String>,
}

async fn wait_established(dest: &crate::cluster::Cluster, name: &str) -> Result<(), StepError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(crd) = dest
            .get(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                name,
            )
            .await?
        {
            let established = crd
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                });
            if established {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StepError::retryable(format!(
                "CustomResourceDefinition {name} is not Established yet"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Step for ApplyStep {
    type Input = Value;
    type Output = ApplyOutput;

    fn kind(&self) -> &'static str {
        "apply"
    }

    async fn run(&self, ctx: &StepCtx, _input: Value) -> Result<ApplyOutput, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let pre: PreflightOutput = ctx.output_of("preflight")?;
        let bundle = load_bundle(ctx.store(), &pre.bundle)?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        let run = ctx.run_id().to_string();

        let mut created = Vec::new();
        let mut existing = Vec::new();
        let mut new_crds = false;
        for dep in &bundle.dependencies {
            let (_, kind, _, name) = ids(dep)?;
            match dest.create_if_absent(dep).await? {
                Created::Created(_) => {
                    if kind == "CustomResourceDefinition" {
                        wait_established(&dest, &name).await?;
                        new_crds = true;
                    }
                    created.push(format!("{kind} {name}"));
                }
                Created::Exists(o) => {
                    let ours = o
                        .pointer("/metadata/labels")
                        .and_then(|l| l.get(RUN_LABEL))
                        .and_then(Value::as_str)
                        == Some(run.as_str());
                    if ours {
                        created.push(format!("{kind} {name}"));
                    } else {
                        existing.push(format!("{kind} {name}"));
                    }
                }
            }
        }
        if new_crds {
            dest.refresh().await?;
        }

        let done: usize = ctx.checkpoint().unwrap_or(0);
        let mut applied: usize = bundle.batches.iter().take(done).map(Vec::len).sum();
        for (i, batch) in bundle.batches.iter().enumerate().skip(done) {
            if ctx.is_cancelled() {
                return Err(StepError::cancelled());
            }
            let calls: Vec<_> = batch.iter().map(|o| dest.apply(o)).collect();
            let results: Vec<Result<Value, StepError>> = futures::stream::iter(calls)
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for r in results {
                r?;
                applied += 1;
            }
            ctx.save_checkpoint(&(i + 1), false).await?;
            ferry_engine::failpoint("apply.batch");
        }
        Ok(ApplyOutput {
            applied,
            created,
            existing,
        })
    }

    async fn compensate(
        &self,
        ctx: &CompensateCtx,
        _input: Value,
        _output: Option<ApplyOutput>,
    ) -> Result<(), StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        let selector = format!("{RUN_LABEL}={}", ctx.run_id());
        // Only what carries this run's label: what ferry created.
        for (api_version, kind) in super::DEPENDENCY_KINDS {
            for o in dest.list_kind(api_version, kind, Some(&selector)).await? {
                let (_, _, _, name) = ids(&o)?;
                dest.delete(api_version, kind, None, &name).await?;
            }
        }
        Ok(())
    }
}

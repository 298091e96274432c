//! Step `cleanup`: delete this run's temporary objects on both clusters.
//! Non-critical: a failure leaves the clone healthy, with warnings.

use std::sync::Arc;

use ferry_engine::{CompensateCtx, Step, StepCtx, StepError};
use serde_json::Value;

use super::CloneEnv;
use crate::cluster::ids;
use crate::object::{RUN_LABEL, TEMPORARY_LABEL};
use crate::spec::CloneSpec;

/// Kinds ferry makes temporarily (snapshots, their contents, mover PVCs and pods).
const TEMPORARY_KINDS: &[(&str, &str)] = &[
    ("v1", "Pod"),
    ("v1", "PersistentVolumeClaim"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotContent"),
];

/// Deletes every object labelled both `ferry.dev/temporary=true` and with
/// this run's label, on the source and the destination.
///
/// # Assumptions
/// Idempotent; compensation is the same deletion.
pub struct CleanupStep {
    pub(super) env: Arc<CloneEnv>,
}

impl CleanupStep {
    async fn sweep(&self, spec: &CloneSpec, run: &str) -> Result<usize, StepError> {
        let selector = format!("{TEMPORARY_LABEL}=true,{RUN_LABEL}={run}");
        let mut contexts = vec![spec.source_context.clone()];
        if spec.destination_context != spec.source_context {
            contexts.push(spec.destination_context.clone());
        }
        let mut deleted = 0;
        for context in contexts {
            let cluster = self.env.clusters.get(&context).await?;
            for (api_version, kind) in TEMPORARY_KINDS {
                for o in cluster
                    .list_kind(api_version, kind, Some(&selector))
                    .await?
                {
                    let (_, _, ns, name) = ids(&o)?;
                    if cluster
                        .delete(api_version, kind, ns.as_deref(), &name)
                        .await?
                    {
                        deleted += 1;
                    }
                }
            }
        }
        Ok(deleted)
    }
}

impl Step for CleanupStep {
    type Input = Value;
    type Output = usize;

    fn kind(&self) -> &'static str {
        "cleanup"
    }

    async fn run(&self, ctx: &StepCtx, _input: Value) -> Result<usize, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        self.sweep(&spec, &ctx.run_id().to_string()).await
    }

    async fn compensate(
        &self,
        ctx: &CompensateCtx,
        _input: Value,
        _output: Option<usize>,
    ) -> Result<(), StepError> {
        let spec: CloneSpec = ctx.spec()?;
        self.sweep(&spec, &ctx.run_id().to_string())
            .await
            .map(|_| ())
    }
}

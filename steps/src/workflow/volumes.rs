//! Steps `snapshot` and `volume`: a volume cloned in place through a CSI
//! snapshot (same cluster, same driver; clone-semantics §6.1). The source
//! PVC is snapshotted; a pre-provisioned VolumeSnapshotContent (Retain)
//! carrying the source snapshot's handle is bound to a VolumeSnapshot in the
//! destination namespace; the destination PVC is made from it.

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{CompensateCtx, Step, StepCtx, StepError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CloneEnv, PreflightOutput, load_bundle};
use crate::cluster::{Cluster, Created};
use crate::object::RUN_LABEL;
use crate::spec::CloneSpec;
use crate::transform::TransformContext;
use crate::volume_objects::{
    SnapshotFacts, destination_pvc_from_snapshot, destination_volume_snapshot,
    preprovisioned_content, source_volume_snapshot,
};

const SNAPSHOT_API: &str = "snapshot.storage.k8s.io/v1";

/// Which volume a snapshot or volume step handles.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeInput {
    /// The source namespace.
    pub source_namespace: String,
    /// The PVC (same name on both sides).
    pub pvc: String,
    /// The destination namespace.
    pub destination_namespace: String,
    /// The source's VolumeSnapshotClass.
    pub snapshot_class: Option<String>,
    /// The copy path preflight chose.
    #[serde(default)]
    pub path: Option<crate::preflight::CopyPath>,
    /// The bucket, for volumes that go through the data mover.
    #[serde(default)]
    pub bucket: Option<String>,
}

/// The source PVC a volume step copies, as preflight listed it (from the
/// bundle, so a re-run sees what preflight saw).
pub(super) fn source_pvc(ctx: &StepCtx, input: &VolumeInput) -> Result<Value, StepError> {
    let pre: PreflightOutput = ctx.output_of("preflight")?;
    let bundle = load_bundle(ctx.store(), &pre.bundle)?;
    bundle
        .source_pvcs
        .into_iter()
        .find(|p| {
            p.pointer("/metadata/namespace").and_then(Value::as_str)
                == Some(input.source_namespace.as_str())
                && p.pointer("/metadata/name").and_then(Value::as_str) == Some(input.pvc.as_str())
        })
        .ok_or_else(|| {
            StepError::permanent(format!(
                "PVC {}/{} is not in the bundle",
                input.source_namespace, input.pvc
            ))
        })
}

pub(super) fn labelled_with(o: &Value, run: &str) -> bool {
    o.pointer("/metadata/labels")
        .and_then(|l| l.get(RUN_LABEL))
        .and_then(Value::as_str)
        == Some(run)
}

/// Creates `obj` unless it exists; an existing one is adopted only if it
/// carries this run's label, else the step fails and never touches it.
pub(super) async fn create_owned(
    cluster: &Cluster,
    obj: &Value,
    run: &str,
) -> Result<Value, StepError> {
    match cluster.create_if_absent(obj).await? {
        Created::Created(o) => Ok(o),
        Created::Exists(o) if labelled_with(&o, run) => Ok(o),
        Created::Exists(_) => {
            let (_, kind, ns, name) = crate::cluster::ids(obj)?;
            Err(StepError::permanent(format!(
                "{kind} {}{name} exists on cluster {} and is not this clone's; ferry never touches it",
                ns.map(|n| format!("{n}/")).unwrap_or_default(),
                cluster.context()
            )))
        }
    }
}

async fn delete_owned(
    cluster: &Cluster,
    kind: &str,
    ns: Option<&str>,
    name: &str,
    run: &str,
) -> Result<(), StepError> {
    if let Some(o) = cluster.get(SNAPSHOT_API, kind, ns, name).await?
        && labelled_with(&o, run)
    {
        cluster.delete(SNAPSHOT_API, kind, ns, name).await?;
    }
    Ok(())
}

/// Snapshots one source PVC with its driver's VolumeSnapshotClass and waits
/// until the snapshot is ready to use.
///
/// # Guarantees
/// The snapshot is named `ferry-<short>-<pvc>`, labelled with the run and
/// as temporary.
///
/// # Assumptions
/// Idempotent (create-if-absent, adopt only this run's). `compensate`
/// deletes the snapshot if it is this run's.
///
/// # Errors
/// Permanent when the snapshotter reports an error in the snapshot's status.
pub struct SnapshotStep {
    pub(super) env: Arc<CloneEnv>,
}

/// What a snapshot step records.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotOutput {
    /// The source VolumeSnapshot.
    pub snapshot: String,
    /// The bound content's facts.
    pub facts: SnapshotFacts,
}

impl Step for SnapshotStep {
    type Input = VolumeInput;
    type Output = SnapshotOutput;

    fn kind(&self) -> &'static str {
        "snapshot"
    }

    async fn run(&self, ctx: &StepCtx, input: VolumeInput) -> Result<SnapshotOutput, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let source = self.env.clusters.get(&spec.source_context).await?;
        let tctx = TransformContext::new(&spec, &ctx.run_id().to_string(), &ctx.short())
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let class = input.snapshot_class.clone().ok_or_else(|| {
            StepError::permanent(format!(
                "no VolumeSnapshotClass for {}/{}",
                input.source_namespace, input.pvc
            ))
        })?;
        let vs = source_volume_snapshot(&tctx, &input.source_namespace, &input.pvc, &class);
        let name = vs
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        create_owned(&source, &vs, &ctx.run_id().to_string()).await?;
        loop {
            let vs = source
                .get(
                    SNAPSHOT_API,
                    "VolumeSnapshot",
                    Some(&input.source_namespace),
                    &name,
                )
                .await?
                .ok_or_else(|| {
                    StepError::retryable(format!(
                        "VolumeSnapshot {}/{name} vanished",
                        input.source_namespace
                    ))
                })?;
            if let Some(msg) = vs.pointer("/status/error/message").and_then(Value::as_str) {
                return Err(StepError::permanent(format!(
                    "snapshot of {}/{} failed: {msg}",
                    input.source_namespace, input.pvc
                )));
            }
            if vs.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true) {
                let content = vs
                    .pointer("/status/boundVolumeSnapshotContentName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        StepError::retryable("ready snapshot without a bound content")
                    })?;
                let vsc = source
                    .get(SNAPSHOT_API, "VolumeSnapshotContent", None, content)
                    .await?
                    .ok_or_else(|| {
                        StepError::retryable(format!("VolumeSnapshotContent {content} not found"))
                    })?;
                let facts = SnapshotFacts::from_content(&vsc).ok_or_else(|| {
                    StepError::retryable(format!(
                        "VolumeSnapshotContent {content} has no snapshot handle yet"
                    ))
                })?;
                return Ok(SnapshotOutput {
                    snapshot: name,
                    facts,
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
            }
        }
    }

    async fn compensate(
        &self,
        ctx: &CompensateCtx,
        input: VolumeInput,
        _output: Option<SnapshotOutput>,
    ) -> Result<(), StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let source = self.env.clusters.get(&spec.source_context).await?;
        let name = crate::names::source_snapshot(&ctx.short(), &input.pvc);
        delete_owned(
            &source,
            "VolumeSnapshot",
            Some(&input.source_namespace),
            &name,
            &ctx.run_id().to_string(),
        )
        .await
    }
}

/// Makes the destination PVC from the source snapshot, in place.
///
/// # Guarantees
/// The content is pre-provisioned with `deletionPolicy: Retain`, so
/// deleting it never deletes the source's backend snapshot; content and
/// destination snapshot are temporary (cleanup removes them); the PVC keeps
/// its name and gets the mapped class.
///
/// # Assumptions
/// Idempotent; `compensate` deletes the content if it is this run's (the
/// destination snapshot and PVC go with the namespace).
pub struct VolumeStep {
    pub(super) env: Arc<CloneEnv>,
}

impl Step for VolumeStep {
    type Input = VolumeInput;
    type Output = String;

    fn kind(&self) -> &'static str {
        "volume"
    }

    async fn run(&self, ctx: &StepCtx, input: VolumeInput) -> Result<String, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        let run = ctx.run_id().to_string();
        let tctx = TransformContext::new(&spec, &run, &ctx.short())
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let snap: SnapshotOutput = ctx.output_of(&format!(
            "snapshot/{}/{}",
            input.source_namespace, input.pvc
        ))?;
        let source_pvc = source_pvc(ctx, &input)?;
        create_owned(
            &dest,
            &preprovisioned_content(&tctx, &input.destination_namespace, &input.pvc, &snap.facts),
            &run,
        )
        .await?;
        create_owned(
            &dest,
            &destination_volume_snapshot(&tctx, &input.destination_namespace, &input.pvc),
            &run,
        )
        .await?;
        let pvc = destination_pvc_from_snapshot(&tctx, &source_pvc)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        create_owned(&dest, &pvc, &run).await?;
        Ok(input.pvc)
    }

    async fn compensate(
        &self,
        ctx: &CompensateCtx,
        input: VolumeInput,
        _output: Option<String>,
    ) -> Result<(), StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        let name =
            crate::names::snapshot_content(&ctx.short(), &input.destination_namespace, &input.pvc);
        delete_owned(
            &dest,
            "VolumeSnapshotContent",
            None,
            &name,
            &ctx.run_id().to_string(),
        )
        .await
    }
}

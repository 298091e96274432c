//! Step `preflight`: inventory the source, check every rule against the
//! destination, store the bundle, extend the plan.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_engine::{CompensateCtx, Refusal, Step, StepCtx, StepDecl, StepError};
use serde_json::Value;

use super::{Bundle, CloneEnv, PreflightOutput, decl};
use crate::cluster::Cluster;
use crate::plan::StepKind;
use crate::preflight::DestinationFacts;
use crate::prepare::{Prepared, prepare};
use crate::spec::{CloneSpec, HookStage};
use crate::transform::{TransformContext, transform_inventory};

/// Cluster-scoped kinds read on both sides: the app's dependencies, storage,
/// and what the destination must (not) already have.
const CLUSTER_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "PersistentVolume"),
    ("storage.k8s.io/v1", "StorageClass"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ("networking.k8s.io/v1", "IngressClass"),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
    ),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
];

/// Reads both clusters and checks every rule: what preflight and the
/// dry-run share. Writes nothing on either cluster. Returns the prepared
/// clone and every refusal (the rules', and what this build cannot carry
/// yet). The mover's bucket, when a volume needs it, is probed: listed, and
/// with `probe` (a clone's run id) a small object written under that name,
/// read back and deleted, so that a bucket ferry cannot use refuses the
/// clone before anything is made (the dry-run only lists: it writes
/// nothing anywhere).
pub(super) async fn gather(
    env: &CloneEnv,
    spec: &CloneSpec,
    probe: Option<&str>,
) -> Result<(Prepared, Vec<Refusal>), StepError> {
    let source = env.clusters.get(&spec.source_context).await?;
    let destination = env.clusters.get(&spec.destination_context).await?;

    let mut objects = list_cluster_scoped(&source).await?;
    for m in &spec.namespaces {
        if source
            .get("v1", "Namespace", None, &m.source)
            .await?
            .is_some()
        {
            objects.extend(source.list_namespace(&m.source).await?);
        }
    }
    let facts = DestinationFacts::from_objects(
        &spec.destination_context,
        list_cluster_scoped(&destination).await?,
    );
    let prepared = prepare(spec, objects, &facts, &env.preflight)
        .map_err(|e| StepError::permanent(format!("preflight: {e}")))?;

    let mut refusals: Vec<Refusal> = prepared
        .report
        .refusals
        .iter()
        .map(|r| Refusal {
            object: r.object.clone(),
            rule: format!("{}: {}", r.rule, r.message),
            fix: r.fix.clone(),
        })
        .collect();
    if let Some(name) = &prepared.report.bucket
        && let Some(bucket) = env.buckets.get(name)
    {
        match bucket.probe(probe.unwrap_or("dry-run"), probe.is_some()).await {
            Ok(()) => {}
            Err(e) if e.is_retryable() => {
                return Err(StepError::retryable(format!("bucket {name}: {e}")));
            }
            Err(e) => refusals.push(Refusal {
                object: format!("bucket {name}"),
                rule: format!(
                    "{}: the data mover's bucket cannot be used: {e}",
                    crate::preflight::Rule::BucketUnusable
                ),
                fix: format!(
                    "check bucket {name}'s URL, credentials and policy in the config: ferry lists, puts, gets and deletes objects under its prefix"
                ),
            }),
        }
    }
    Ok((prepared, refusals))
}

/// Inventories the source and checks the rules; refuses the run, naming
/// every reason at once, before anything is written on either cluster.
///
/// # Guarantees
/// Reads only, on both clusters. Its writes are the encrypted bundle blob
/// in ferry's own state dir and, when a volume goes through the mover, a
/// probe object in the bucket, deleted at once.
///
/// # Assumptions
/// Idempotent: a re-run reads again and stores the same bundle again.
/// `compensate` has nothing to undo on a cluster.
///
/// # Errors
/// Refused for any broken rule; retryable for cluster trouble.
pub struct PreflightStep {
    pub(super) env: Arc<CloneEnv>,
}

async fn list_cluster_scoped(cluster: &Cluster) -> Result<Vec<Value>, StepError> {
    let mut out = Vec::new();
    for (api_version, kind) in CLUSTER_KINDS {
        out.extend(cluster.list_kind(api_version, kind, None).await?);
    }
    Ok(out)
}

impl Step for PreflightStep {
    type Input = Value;
    type Output = PreflightOutput;

    fn kind(&self) -> &'static str {
        "preflight"
    }

    async fn run(&self, ctx: &StepCtx, _input: Value) -> Result<PreflightOutput, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        if let Err(e) = spec.validate() {
            return Err(StepError::permanent(format!("invalid spec: {e}")));
        }
        let run = ctx.run_id().to_string();
        let (prepared, refusals) = gather(&self.env, &spec, Some(&run)).await?;
        if !refusals.is_empty() {
            return Err(StepError::refused(refusals));
        }

        let tctx = TransformContext::new(&spec, &ctx.run_id().to_string(), &ctx.short())
            .map_err(|e| StepError::permanent(format!("transforms: {e}")))?;
        let transformed = transform_inventory(&tctx, &prepared.inventory)
            .map_err(|e| StepError::permanent(format!("transforms: {e}")))?;
        let mut kinds = BTreeMap::new();
        for o in &transformed.objects {
            *kinds
                .entry(o["kind"].as_str().unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
        // Batches by kind, in dependency order; concurrent within a batch.
        let key = |o: &Value| crate::object::ObjectRef {
            group: crate::object::group(o).to_owned(),
            kind: o["kind"].as_str().unwrap_or("").to_owned(),
            namespace: o
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
            name: o
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        };
        let mut by_ref: BTreeMap<crate::object::ObjectRef, Value> = transformed
            .objects
            .iter()
            .map(|o| (key(o), o.clone()))
            .collect();
        let mut batches: Vec<Vec<Value>> = Vec::new();
        for batch in crate::plan::apply_order(transformed.objects.iter()) {
            let objs: Vec<Value> = batch
                .objects
                .iter()
                .filter_map(|r| by_ref.remove(r))
                .collect();
            if !objs.is_empty() {
                batches.push(objs);
            }
        }
        // Anything the ordering left out goes last, never silently dropped.
        if !by_ref.is_empty() {
            batches.push(by_ref.into_values().collect());
        }
        let source_pvcs: Vec<Value> = prepared.inventory.pvcs().cloned().collect();
        let bundle = Bundle {
            namespaces: transformed.namespaces.clone(),
            dependencies: transformed.dependencies.clone(),
            batches,
            source_pvcs,
        };
        let bytes = serde_json::to_vec(&bundle)
            .map_err(|e| StepError::permanent(format!("bundle: {e}")))?;
        let blob = ctx
            .store()
            .put_blob(ctx.run_id(), &bytes, true)
            .map_err(|e| StepError::retryable(format!("cannot store the bundle: {e}")))?;

        // The rest of the plan, as only preflight can name it.
        let mut steps: Vec<StepDecl> = Vec::new();
        for s in prepared
            .plan
            .steps
            .iter()
            .filter(|s| s.kind != StepKind::Preflight)
        {
            let kind = match s.kind {
                StepKind::Namespaces => "namespaces",
                StepKind::Apply => "apply",
                StepKind::Health => "health",
                StepKind::Cleanup => "cleanup",
                StepKind::Snapshot => "snapshot",
                StepKind::Volume if s.path == Some(crate::preflight::CopyPath::SnapshotInPlace) => {
                    "volume"
                }
                StepKind::Volume => "volume-mover",
                StepKind::PreHook => "prehook",
                StepKind::Thaw => "thaw",
                StepKind::PostHook => "posthook",
                StepKind::Preflight => continue,
            };
            let deps: Vec<&str> = s.depends_on.iter().map(String::as_str).collect();
            let mut d = decl(&s.id, kind, &deps);
            d.critical = s.critical;
            if matches!(
                s.kind,
                StepKind::PreHook | StepKind::Thaw | StepKind::PostHook
            ) {
                hook_decl(&spec, s, &mut d)?;
            }
            if kind == "volume-mover" {
                // A transfer takes as long as its data needs; it honours
                // cancellation, and its checkpoints show it moving.
                d.attempt_timeout_ms = None;
            }
            if matches!(s.kind, StepKind::Snapshot | StepKind::Volume) {
                let v = prepared
                    .report
                    .volumes
                    .iter()
                    .find(|v| {
                        s.id == format!("snapshot/{}/{}", v.source_namespace, v.pvc)
                            || s.id == format!("volume/{}/{}", v.destination_namespace, v.pvc)
                    })
                    .ok_or_else(|| {
                        StepError::permanent(format!("no volume plan for step {}", s.id))
                    })?;
                let input = super::VolumeInput {
                    source_namespace: v.source_namespace.clone(),
                    pvc: v.pvc.clone(),
                    destination_namespace: v.destination_namespace.clone(),
                    snapshot_class: v.snapshot_class.clone(),
                    path: v.path,
                    bucket: prepared.report.bucket.clone(),
                };
                d.input = ferry_engine::Json::encode(&input)
                    .map_err(|e| StepError::permanent(e.to_string()))?;
            }
            if s.kind == StepKind::Health {
                d.deadline_ms = Some(spec.health_deadline_seconds.saturating_mul(1000));
                d.attempt_timeout_ms = None;
                d.max_attempts = 20;
            }
            steps.push(d);
        }
        ctx.extend_plan(steps, Vec::new());

        Ok(PreflightOutput {
            bundle: blob,
            namespaces: bundle
                .namespaces
                .iter()
                .filter_map(|n| {
                    n.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect(),
            kinds,
            dependencies: bundle
                .dependencies
                .iter()
                .map(|d| {
                    format!(
                        "{} {}",
                        d["kind"].as_str().unwrap_or("?"),
                        d.pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                    )
                })
                .collect(),
            warnings: prepared
                .report
                .warnings
                .iter()
                .map(|w| format!("{}: {} ({})", w.object, w.message, w.fix))
                .collect(),
        })
    }

    async fn compensate(
        &self,
        _ctx: &CompensateCtx,
        _input: Value,
        _output: Option<PreflightOutput>,
    ) -> Result<(), StepError> {
        // Nothing on any cluster; the bundle blob goes with the run's retention.
        Ok(())
    }
}

/// A hook step's input, criticality and time limits, from its plan entry
/// (`<stage>/<namespace>/<hook>`) and the spec.
fn hook_decl(
    spec: &CloneSpec,
    s: &crate::plan::PlanStep,
    d: &mut StepDecl,
) -> Result<(), StepError> {
    let bad = || StepError::permanent(format!("hook step {} does not name its hook", s.id));
    let mut parts = s.id.splitn(3, '/');
    let (Some(_), Some(namespace), Some(hook)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let stage = if s.kind == StepKind::PostHook {
        HookStage::Post
    } else {
        HookStage::Pre
    };
    let h = spec
        .hooks
        .iter()
        .find(|h| h.stage == stage && h.name == hook)
        .ok_or_else(bad)?;
    d.input = ferry_engine::Json::encode(&super::HookInput {
        hook: hook.into(),
        namespace: namespace.into(),
    })
    .map_err(|e| StepError::permanent(e.to_string()))?;
    if s.kind != StepKind::Thaw {
        d.critical = super::hooks::critical(h);
    }
    // A post hook may first wait up to its timeout for its pods, then run
    // up to its timeout; a minute more for the exec's own round trips.
    let waits = if s.kind == StepKind::PostHook { 2 } else { 1 };
    d.attempt_timeout_ms = Some(
        h.timeout_seconds
            .saturating_mul(1000 * waits)
            .saturating_add(60_000),
    );
    Ok(())
}

//! The clone plan as data: a DAG of steps with stable ids, and the order in
//! which objects are applied.
//!
//! Step ids (DESIGN §5): `preflight`, `namespaces`, `prehook/<src-ns>/<hook>`,
//! `snapshot/<src-ns>/<pvc>`, `thaw/<src-ns>/<hook>`, `volume/<dst-ns>/<pvc>`,
//! `apply`, `posthook/<dst-ns>/<hook>`, `health`, `cleanup`. Steps that act
//! on the source are named by the source namespace, steps that act on the
//! destination by the destination namespace.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::inventory::Inventory;
use crate::object::{GroupKind, ObjectRef, group_kind, namespace};
use crate::preflight::{CopyPath, PreflightReport};
use crate::spec::{CloneSpec, HookStage};

pub use crate::names::ferry_name;

/// The version every step type has today; recorded in the plan so a later
/// binary can tell which code a logged step ran.
pub const STEP_VERSION: u32 = 1;

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// Inventory, rules, copy paths, bundle.
    Preflight,
    /// Create the destination namespaces.
    Namespaces,
    /// A pre hook in source pods (e.g. quiesce).
    PreHook,
    /// A CSI snapshot of one source PVC.
    Snapshot,
    /// The paired undo of a pre hook, after the snapshots.
    Thaw,
    /// One destination volume, by the path preflight chose.
    Volume,
    /// Transform and apply every object.
    Apply,
    /// A post hook in destination pods.
    PostHook,
    /// Wait until the destination is healthy.
    Health,
    /// Delete temporary objects.
    Cleanup,
}

/// One step of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// The stable id.
    pub id: String,
    /// What it does.
    pub kind: StepKind,
    /// Ids of the steps that must succeed first.
    pub depends_on: Vec<String>,
    /// Whether its failure rolls the clone back (cleanup's does not).
    pub critical: bool,
    /// The step type's version.
    pub version: u32,
    /// One line for people.
    pub description: String,
    /// For volume steps, the copy path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<CopyPath>,
}

/// The stages of apply (clone-semantics §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyTier {
    /// CustomResourceDefinitions, first so their resources can be made.
    Crds,
    /// Snapshot classes and contents, snapshots, volumes, claims.
    Storage,
    /// Secrets, ConfigMaps, limits and quotas.
    Config,
    /// Roles, ServiceAccounts, bindings.
    Rbac,
    /// Endpoints before Services.
    Services,
    /// Pods and their controllers.
    Workloads,
    /// IngressClasses, Ingresses.
    Ingress,
    /// Every other kind (custom resources among them), alphabetically.
    Other,
    /// Admission webhooks, last so they cannot block the app's own objects.
    Webhooks,
}

impl fmt::Display for ApplyTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApplyTier::Crds => "CRDs",
            ApplyTier::Storage => "storage",
            ApplyTier::Config => "config",
            ApplyTier::Rbac => "RBAC",
            ApplyTier::Services => "services",
            ApplyTier::Workloads => "workloads",
            ApplyTier::Ingress => "ingress",
            ApplyTier::Other => "other",
            ApplyTier::Webhooks => "webhooks",
        })
    }
}

const ORDER: &[(ApplyTier, &str, &str)] = &[
    (
        ApplyTier::Crds,
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
    ),
    (ApplyTier::Storage, "storage.k8s.io", "StorageClass"),
    (
        ApplyTier::Storage,
        "snapshot.storage.k8s.io",
        "VolumeSnapshotClass",
    ),
    (
        ApplyTier::Storage,
        "snapshot.storage.k8s.io",
        "VolumeSnapshotContent",
    ),
    (
        ApplyTier::Storage,
        "snapshot.storage.k8s.io",
        "VolumeSnapshot",
    ),
    (ApplyTier::Storage, "", "PersistentVolume"),
    (ApplyTier::Storage, "", "PersistentVolumeClaim"),
    (ApplyTier::Config, "", "Secret"),
    (ApplyTier::Config, "", "ConfigMap"),
    (ApplyTier::Config, "", "LimitRange"),
    (ApplyTier::Config, "", "ResourceQuota"),
    (ApplyTier::Config, "scheduling.k8s.io", "PriorityClass"),
    (ApplyTier::Rbac, "rbac.authorization.k8s.io", "ClusterRole"),
    (ApplyTier::Rbac, "rbac.authorization.k8s.io", "Role"),
    (ApplyTier::Rbac, "", "ServiceAccount"),
    (
        ApplyTier::Rbac,
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
    ),
    (ApplyTier::Rbac, "rbac.authorization.k8s.io", "RoleBinding"),
    (ApplyTier::Services, "", "Endpoints"),
    (ApplyTier::Services, "discovery.k8s.io", "EndpointSlice"),
    (ApplyTier::Services, "", "Service"),
    (ApplyTier::Workloads, "", "Pod"),
    (ApplyTier::Workloads, "apps", "ReplicaSet"),
    (ApplyTier::Workloads, "", "ReplicationController"),
    (ApplyTier::Workloads, "apps", "Deployment"),
    (ApplyTier::Workloads, "apps", "StatefulSet"),
    (ApplyTier::Workloads, "apps", "DaemonSet"),
    (ApplyTier::Workloads, "batch", "Job"),
    (ApplyTier::Workloads, "batch", "CronJob"),
    (ApplyTier::Ingress, "networking.k8s.io", "IngressClass"),
    (ApplyTier::Ingress, "networking.k8s.io", "Ingress"),
    (
        ApplyTier::Webhooks,
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    (
        ApplyTier::Webhooks,
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
];

/// The tier of a kind and its rank in the whole order (unknown kinds share
/// the `Other` rank and sort by group and kind).
pub fn apply_rank(gk: &GroupKind) -> (ApplyTier, usize) {
    match ORDER.iter().position(|(_, g, k)| gk.is(g, k)) {
        Some(i) if ORDER[i].0 == ApplyTier::Webhooks => (ApplyTier::Webhooks, i + 1),
        Some(i) => (ORDER[i].0, i),
        None => (ApplyTier::Other, ORDER.len()),
    }
}

/// One kind's objects, applied concurrently; batches go in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyBatch {
    /// The tier.
    pub tier: ApplyTier,
    /// The kind.
    pub group_kind: GroupKind,
    /// Whether these are cluster-scoped (plain create when absent).
    pub cluster_scoped: bool,
    /// The objects, by namespace and name.
    pub objects: Vec<ObjectRef>,
}

/// Groups objects into batches by kind, in apply order. Namespace objects
/// are left out (the namespaces step makes them).
pub fn apply_order<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Vec<ApplyBatch> {
    let mut by_kind: BTreeMap<((ApplyTier, usize), GroupKind, bool), Vec<ObjectRef>> =
        BTreeMap::new();
    for o in objects {
        let gk = group_kind(o);
        if gk.is("", "Namespace") {
            continue;
        }
        let Ok(r) = ObjectRef::of(o) else { continue };
        by_kind
            .entry((apply_rank(&gk), gk, namespace(o).is_none()))
            .or_default()
            .push(r);
    }
    by_kind
        .into_iter()
        .map(|(((tier, _), group_kind, cluster_scoped), mut objects)| {
            objects.sort();
            ApplyBatch {
                tier,
                group_kind,
                cluster_scoped,
                objects,
            }
        })
        .collect()
}

/// The whole plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Steps in a topological order (every step after its dependencies).
    pub steps: Vec<PlanStep>,
    /// Apply batches, with destination namespaces (cluster-scoped objects
    /// under their source names).
    pub apply_order: Vec<ApplyBatch>,
}

impl Plan {
    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&PlanStep> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The plan recorded at submission (`Planned`): preflight alone.
    /// Everything else depends on it and is recorded by preflight
    /// (`PlanExtended`), since only preflight can name volumes and hooks.
    pub fn split_initial(&self) -> (Vec<PlanStep>, Vec<PlanStep>) {
        self.steps
            .iter()
            .cloned()
            .partition(|s| s.kind == StepKind::Preflight)
    }
}

struct Builder {
    steps: Vec<PlanStep>,
}

impl Builder {
    fn add(
        &mut self,
        id: String,
        kind: StepKind,
        depends_on: Vec<String>,
        description: String,
    ) -> String {
        self.steps.push(PlanStep {
            critical: kind != StepKind::Cleanup && kind != StepKind::Thaw,
            id: id.clone(),
            kind,
            depends_on,
            version: STEP_VERSION,
            description,
            path: None,
        });
        id
    }
}

fn hook_namespaces<'a>(
    filter: Option<&str>,
    candidates: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    let re = filter.and_then(|f| Regex::new(f).ok());
    candidates
        .filter(|ns| re.as_ref().is_none_or(|r| r.is_match(ns)))
        .cloned()
        .collect()
}

/// Builds the plan from the spec, the inventory and preflight's report.
/// Volumes without a path (refused) get no step.
pub fn build_plan(spec: &CloneSpec, inv: &Inventory, report: &PreflightReport) -> Plan {
    let ns_map = spec.namespace_map();
    let mut b = Builder { steps: Vec::new() };
    let preflight = b.add(
        "preflight".into(),
        StepKind::Preflight,
        vec![],
        "inventory the source, check every rule, choose copy paths".into(),
    );
    let namespaces = b.add(
        "namespaces".into(),
        StepKind::Namespaces,
        vec![preflight],
        format!(
            "create {}",
            ns_map.values().cloned().collect::<Vec<_>>().join(", ")
        ),
    );

    // Pre hooks, per source namespace they match.
    let mut prehooks: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for h in spec.hooks.iter().filter(|h| h.stage == HookStage::Pre) {
        for ns in hook_namespaces(h.namespace.as_deref(), ns_map.keys()) {
            let id = b.add(
                format!("prehook/{ns}/{}", h.name),
                StepKind::PreHook,
                vec![namespaces.clone()],
                format!(
                    "run {:?} in matching pods of {ns} (on error: {:?})",
                    h.command.join(" "),
                    h.on_error()
                ),
            );
            prehooks.entry(ns).or_default().push((h.name.clone(), id));
        }
    }

    let mut snapshots: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut volumes = Vec::new();
    for v in &report.volumes {
        let Some(path) = v.path else { continue };
        let mut deps = vec![namespaces.clone()];
        if path.uses_snapshot() {
            let pre: Vec<String> = prehooks
                .get(&v.source_namespace)
                .into_iter()
                .flatten()
                .map(|(_, id)| id.clone())
                .collect();
            let snap = b.add(
                format!("snapshot/{}/{}", v.source_namespace, v.pvc),
                StepKind::Snapshot,
                if pre.is_empty() {
                    vec![namespaces.clone()]
                } else {
                    pre
                },
                format!(
                    "snapshot {}/{} with VolumeSnapshotClass {}",
                    v.source_namespace,
                    v.pvc,
                    v.snapshot_class.as_deref().unwrap_or("?")
                ),
            );
            snapshots
                .entry(v.source_namespace.clone())
                .or_default()
                .push(snap.clone());
            deps.push(snap);
        }
        let id = b.add(
            format!("volume/{}/{}", v.destination_namespace, v.pvc),
            StepKind::Volume,
            deps,
            format!(
                "{}/{} -> {}/{} by {path} (class {})",
                v.source_namespace,
                v.pvc,
                v.destination_namespace,
                v.pvc,
                v.destination_class.as_deref().unwrap_or("?")
            ),
        );
        b.steps.last_mut().expect("just added").path = Some(path);
        volumes.push(id);
    }

    // Each pre hook's thaw, after that namespace's snapshots.
    let mut thaws = Vec::new();
    for h in spec
        .hooks
        .iter()
        .filter(|h| h.stage == HookStage::Pre && h.thaw_command.is_some())
    {
        for (ns, hooks) in &prehooks {
            let Some((_, pre_id)) = hooks.iter().find(|(n, _)| n == &h.name) else {
                continue;
            };
            let deps = snapshots
                .get(ns)
                .cloned()
                .unwrap_or_else(|| vec![pre_id.clone()]);
            thaws.push(b.add(
                format!("thaw/{ns}/{}", h.name),
                StepKind::Thaw,
                deps,
                format!(
                    "undo pre hook {} in {ns} (also run by its compensation)",
                    h.name
                ),
            ));
        }
    }

    let mut apply_deps = vec![namespaces.clone()];
    apply_deps.extend(volumes);
    let apply = b.add(
        "apply".into(),
        StepKind::Apply,
        apply_deps,
        "transform and apply every object in order".into(),
    );
    let mut health_deps = vec![apply.clone()];
    for h in spec.hooks.iter().filter(|h| h.stage == HookStage::Post) {
        for ns in hook_namespaces(h.namespace.as_deref(), ns_map.values()) {
            health_deps.push(b.add(
                format!("posthook/{ns}/{}", h.name),
                StepKind::PostHook,
                vec![apply.clone()],
                format!(
                    "run {:?} in matching pods of {ns} (on error: {:?})",
                    h.command.join(" "),
                    h.on_error()
                ),
            ));
        }
    }
    let health = b.add(
        "health".into(),
        StepKind::Health,
        health_deps,
        format!(
            "wait until every workload is ready and every PVC bound (deadline {}s)",
            spec.health_deadline_seconds
        ),
    );
    let mut cleanup_deps = vec![health];
    cleanup_deps.extend(thaws);
    b.add(
        "cleanup".into(),
        StepKind::Cleanup,
        cleanup_deps,
        "delete temporary snapshots, contents, pods and PVCs".into(),
    );

    // Destination view of the objects for the apply order.
    let mapped: Vec<Value> = inv
        .objects()
        .map(|o| {
            let mut o = o.clone();
            if let Some(d) = namespace(&o).and_then(|n| ns_map.get(n)) {
                o["metadata"]["namespace"] = Value::String(d.clone());
            }
            o
        })
        .chain(inv.dependencies.iter().map(|d| d.object.clone()))
        .collect();
    Plan {
        steps: b.steps,
        apply_order: apply_order(&mapped),
    }
}

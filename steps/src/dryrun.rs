//! `--dry-run`: the plan, each volume's path, objects by kind, transforms,
//! warnings and refusals, as text for people and as JSON.
//!
//! Objects appear by name only, never by content, so Secret data cannot
//! leak into the output. [`redact`] is the one way to show an object's
//! content anywhere else (dumps, exports, errors).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::inventory::Inventory;
use crate::object::{self, is, kind, name, namespace};
use crate::plan::{Plan, apply_order};
use crate::preflight::{PreflightReport, Refusal, VolumePlan, Warning};
use crate::spec::{CloneSpec, PatchOp};
use crate::transform::storage_classes_named;

/// What replaces a redacted value.
pub const REDACTED: &str = "<redacted>";

/// A copy of `obj` safe to print: a Secret's `data` and `stringData` values
/// are replaced (keys kept), and so is its last-applied annotation, which
/// kubectl fills with the data. Other objects are returned as they are.
pub fn redact(obj: &Value) -> Value {
    let mut out = obj.clone();
    if !is(obj, "", "Secret") {
        return out;
    }
    for field in ["data", "stringData"] {
        if let Some(Value::Object(m)) = out.get_mut(field) {
            for v in m.values_mut() {
                *v = json!(REDACTED);
            }
        }
    }
    if let Some(Value::Object(a)) = out.pointer_mut("/metadata/annotations")
        && let Some(v) = a.get_mut("kubectl.kubernetes.io/last-applied-configuration")
    {
        *v = json!(REDACTED);
    }
    out
}

/// The dry-run of one clone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    /// The clone's name.
    pub name: String,
    /// Source context.
    pub source_context: String,
    /// Destination context.
    pub destination_context: String,
    /// Whether it is an in-cluster clone.
    pub in_cluster: bool,
    /// Source → destination namespaces.
    pub namespaces: BTreeMap<String, String>,
    /// Whether preflight refused it.
    pub refused: bool,
    /// Refusals.
    pub refusals: Vec<Refusal>,
    /// Warnings.
    pub warnings: Vec<Warning>,
    /// Volumes and their paths.
    pub volumes: Vec<VolumePlan>,
    /// The mover's bucket, when a volume needs one.
    pub bucket: Option<String>,
    /// The plan.
    pub plan: Plan,
    /// Objects by kind in apply order: `Kind` → destination names
    /// (`dst-ns/name`; cluster-scoped ones by their source name).
    pub objects: Vec<(String, Vec<String>)>,
    /// Cluster-scoped dependencies and why they belong to the app.
    pub dependencies: Vec<(String, Vec<String>)>,
    /// The transforms ferry will make, one line each.
    pub transforms: Vec<String>,
    /// What is left out, and why.
    pub skipped: Vec<(String, String)>,
}

/// Assembles the dry-run.
pub fn dry_run(spec: &CloneSpec, inv: &Inventory, report: &PreflightReport, plan: &Plan) -> DryRun {
    let ns_map = spec.namespace_map();
    let objects = apply_order(
        inv.objects()
            .chain(inv.pvcs())
            .chain(inv.dependencies.iter().map(|d| &d.object)),
    )
    .into_iter()
    .map(|b| {
        let names = b
            .objects
            .iter()
            .map(|r| match &r.namespace {
                Some(ns) => format!("{}/{}", ns_map.get(ns).unwrap_or(ns), r.name),
                None => r.name.clone(),
            })
            .collect();
        (b.group_kind.to_string(), names)
    })
    .collect();
    DryRun {
        name: spec.name.clone(),
        source_context: spec.source_context.clone(),
        destination_context: spec.destination_context.clone(),
        in_cluster: spec.in_cluster(),
        namespaces: spec.namespace_map(),
        refused: report.is_refused(),
        refusals: report.refusals.clone(),
        warnings: report.warnings.clone(),
        volumes: report.volumes.clone(),
        bucket: report.bucket.clone(),
        plan: plan.clone(),
        objects,
        dependencies: inv
            .dependencies
            .iter()
            .map(|d| {
                (
                    object::display(&d.object),
                    d.reasons.iter().map(ToString::to_string).collect(),
                )
            })
            .collect(),
        transforms: describe_transforms(spec, inv),
        skipped: inv
            .skipped
            .iter()
            .map(|s| (s.object.to_string(), s.reason.to_string()))
            .collect(),
    }
}

fn names_where(inv: &Inventory, pred: impl Fn(&Value) -> bool) -> Vec<String> {
    inv.objects()
        .chain(inv.pvcs())
        .filter(|o| pred(o))
        .map(object::display)
        .collect()
}

fn describe_transforms(spec: &CloneSpec, inv: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    for (s, d) in spec.namespace_map() {
        if s != d {
            out.push(format!("namespace {s} -> {d} (metadata.namespace, RoleBinding subjects, NetworkPolicy namespace selectors, webhook services)"));
        }
    }
    out.push("strip server-set fields (uid, resourceVersion, creationTimestamp, generation, managedFields, status), ownerReferences, finalizers and the last-applied annotation".into());
    out.push(
        "drop Service clusterIP/clusterIPs (headless kept) and PVC volumeName and bind annotations"
            .into(),
    );
    let node_ports = names_where(inv, |o| {
        is(o, "", "Service")
            && o.pointer("/spec/ports")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p.get("nodePort").is_some()))
    });
    if !node_ports.is_empty() {
        let rule = if spec.in_cluster() {
            "dropped (they would collide in one cluster)"
        } else {
            "kept where set explicitly, else allocated afresh"
        };
        out.push(format!("nodePorts {rule}: {}", node_ports.join(", ")));
    }
    for (s, d) in spec.storage_class_map() {
        let users = names_where(inv, |o| storage_classes_named(o).contains(&s));
        out.push(format!(
            "storage class {s} -> {d}: {}",
            if users.is_empty() {
                "no object uses it".into()
            } else {
                users.join(", ")
            }
        ));
    }
    if spec.suspend_cronjobs {
        let cj = names_where(inv, |o| is(o, "batch", "CronJob"));
        if !cj.is_empty() {
            out.push(format!("suspend CronJobs: {}", cj.join(", ")));
        }
    }
    if spec.rewrite_service_dns {
        let dns = crate::dns::ServiceDns::new(&spec.namespace_map());
        let hits = names_where(inv, |o| !dns.find(o).is_empty());
        if !hits.is_empty() {
            out.push(format!(
                "rewrite <svc>.<src-ns>.svc to the destination namespace in: {}",
                hits.join(", ")
            ));
        }
    }
    if spec.in_cluster() {
        for d in inv
            .dependencies
            .iter()
            .filter(|d| is(&d.object, "rbac.authorization.k8s.io", "ClusterRoleBinding"))
        {
            out.push(format!(
                "ClusterRoleBinding {} is copied as a new binding (ferry-<run>-{}) for the copy's ServiceAccounts; the source's is untouched",
                name(&d.object),
                name(&d.object)
            ));
        }
    }
    if let Ok(ctx) = crate::transform::TransformContext::new(spec, "dry-run", "dryrun00") {
        for t in &ctx.transforms {
            let hits = names_where(inv, |o| t.selects(o));
            // Op and path only: a patch value may be meant for a Secret.
            let ops: Vec<String> = spec.transforms[t.index]
                .patch
                .iter()
                .map(|op| match op {
                    PatchOp::Add { path, .. } => format!("add {path}"),
                    PatchOp::Remove { path } => format!("remove {path}"),
                    PatchOp::Replace { path, .. } => format!("replace {path}"),
                    PatchOp::Move { from, path } => format!("move {from} -> {path}"),
                    PatchOp::Copy { from, path } => format!("copy {from} -> {path}"),
                    PatchOp::Test { path, .. } => format!("test {path}"),
                })
                .collect();
            out.push(format!(
                "transforms[{}] ({}) on {}",
                t.index,
                ops.join(", "),
                if hits.is_empty() {
                    "no object".to_owned()
                } else {
                    hits.join(", ")
                }
            ));
        }
    }
    out.push(format!(
        "label everything ferry creates {}=<run id>",
        object::RUN_LABEL
    ));
    out
}

/// The dry-run as JSON.
pub fn render_json(d: &DryRun) -> Value {
    serde_json::to_value(d).unwrap_or(Value::Null)
}

/// The dry-run as text for a terminal.
pub fn render_text(d: &DryRun) -> String {
    let mut s = String::new();
    let ns: Vec<String> = d
        .namespaces
        .iter()
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    let _ = writeln!(
        s,
        "Clone {}: {} -> {} ({}), namespaces {}",
        d.name,
        d.source_context,
        d.destination_context,
        if d.in_cluster {
            "in-cluster"
        } else {
            "cross-cluster"
        },
        ns.join(", ")
    );
    if d.refused {
        let _ = writeln!(
            s,
            "Result: REFUSED ({} refusal(s)); nothing would be written.",
            d.refusals.len()
        );
    } else {
        let _ = writeln!(
            s,
            "Result: would run ({} step(s)); dry run, nothing written.",
            d.plan.steps.len()
        );
    }
    if !d.refusals.is_empty() {
        let _ = writeln!(s, "\nRefusals:");
        for r in &d.refusals {
            let _ = writeln!(
                s,
                "  x {}: {} [rule {}]\n      fix: {}",
                r.object, r.message, r.rule, r.fix
            );
        }
    }
    if !d.warnings.is_empty() {
        let _ = writeln!(s, "\nWarnings:");
        for w in &d.warnings {
            let _ = writeln!(s, "  ! {}: {}\n      {}", w.object, w.message, w.fix);
        }
    }
    let _ = writeln!(s, "\nVolumes:");
    if d.volumes.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for v in &d.volumes {
        let modes: Vec<&str> = v.access_modes.iter().map(|m| m.short()).collect();
        let _ = writeln!(
            s,
            "  {}/{} -> {}/{}  {} {}  class {} -> {}  path: {}{}",
            v.source_namespace,
            v.pvc,
            v.destination_namespace,
            v.pvc,
            v.size.as_deref().unwrap_or("?"),
            modes.join(","),
            v.source_class.as_deref().unwrap_or("?"),
            v.destination_class.as_deref().unwrap_or("?"),
            v.path
                .map_or_else(|| "none (refused)".to_owned(), |p| p.to_string()),
            v.snapshot_class
                .as_deref()
                .map(|c| format!(" (VolumeSnapshotClass {c})"))
                .unwrap_or_default(),
        );
    }
    if let Some(b) = &d.bucket {
        let _ = writeln!(s, "  bucket: {b}");
    }
    let _ = writeln!(s, "\nSteps:");
    for st in &d.plan.steps {
        let deps = if st.depends_on.is_empty() {
            String::new()
        } else {
            format!("  (after {})", st.depends_on.join(", "))
        };
        let _ = writeln!(
            s,
            "  {}{}{}\n      {}",
            st.id,
            if st.critical { "" } else { " [non-critical]" },
            deps,
            st.description
        );
    }
    let _ = writeln!(
        s,
        "\nObjects on the destination, in apply order (PVCs made by the volume steps):"
    );
    for (k, names) in &d.objects {
        let _ = writeln!(s, "  {k} ({}): {}", names.len(), names.join(", "));
    }
    if !d.dependencies.is_empty() {
        let _ = writeln!(
            s,
            "\nCluster-scoped dependencies (created only when absent, never patched):"
        );
        for (o, why) in &d.dependencies {
            let _ = writeln!(s, "  {o}: {}", why.join("; "));
        }
    }
    let _ = writeln!(s, "\nTransforms:");
    for t in &d.transforms {
        let _ = writeln!(s, "  - {t}");
    }
    if !d.skipped.is_empty() {
        let _ = writeln!(s, "\nLeft out:");
        for (o, why) in &d.skipped {
            let _ = writeln!(s, "  {o}: {why}");
        }
    }
    s
}

/// Kind and name of every object, for logs: `Kind ns/name`.
pub fn object_names<'a>(objs: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    objs.into_iter()
        .map(|o| match namespace(o) {
            Some(ns) => format!("{} {ns}/{}", kind(o), name(o)),
            None => format!("{} {}", kind(o), name(o)),
        })
        .collect()
}

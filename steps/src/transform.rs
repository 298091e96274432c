//! Per-object transforms from source to destination (clone-semantics §2).
//!
//! Order, for every object: strip what the server sets; the kind's own rules
//! (Service IPs and node ports, PVC binding, StatefulSet claim templates,
//! Job selectors, ...); namespace mapping of `metadata.namespace` and of the
//! references the app owns; storage classes; the optional CronJob suspend
//! and service-DNS rewrite; the user's JSON Patches (which see ferry's
//! result); and last ferry's run label, so no patch can remove it. The output
//! depends only on the input object and the context.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use serde_json::{Map, Value, json};

use crate::dns::ServiceDns;
use crate::error::{Error, Result};
use crate::inventory::Inventory;
use crate::names::ferry_name;
use crate::object::{self, RUN_LABEL, is, kind, name, namespace, pod_spec_pointers, str_at};
use crate::patch::apply_patch;
use crate::spec::{CloneSpec, PatchOp, group_matches, kind_matches};

/// Metadata fields the API server sets; never copied.
pub const SERVER_SET_METADATA: [&str; 11] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "generateName",
];

/// Annotations that describe the source object, not the clone.
pub const STRIPPED_ANNOTATIONS: [&str; 5] = [
    // Holds the source namespace and, on Secrets, the data; ferry applies
    // server-side, so a stale client-side record would only mislead
    // `kubectl apply` later.
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
    "kubernetes.io/service-account.uid",
];

/// PVC annotations about the source binding (Velero's list).
pub const PVC_BIND_ANNOTATIONS: [&str; 6] = [
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
    "volume.kubernetes.io/storage-resizer",
];

const CONTROLLER_UID_LABELS: [&str; 2] = ["batch.kubernetes.io/controller-uid", "controller-uid"];

/// Namespace labels and annotations the cluster sets per namespace.
const NAMESPACE_SYSTEM_LABELS: [&str; 1] = ["kubernetes.io/metadata.name"];
const NAMESPACE_SYSTEM_ANNOTATION_PREFIXES: [&str; 2] = [
    "openshift.io/sa.scc.",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// A user transform with its selector compiled.
#[derive(Clone, Debug)]
pub struct CompiledTransform {
    /// Index in `spec.transforms`.
    pub index: usize,
    group: Option<String>,
    kind: Option<String>,
    name: Option<Regex>,
    namespace: Option<String>,
    patch: Vec<PatchOp>,
}

impl CompiledTransform {
    /// Whether the transform applies to `obj` (as it is on the source).
    pub fn selects(&self, obj: &Value) -> bool {
        group_matches(self.group.as_deref(), object::group(obj))
            && kind_matches(self.kind.as_deref(), kind(obj))
            && self.name.as_ref().is_none_or(|r| r.is_match(name(obj)))
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| namespace(obj) == Some(n))
    }
}

/// Everything a transform needs beside the object.
#[derive(Clone, Debug)]
pub struct TransformContext {
    /// The run id, the value of `ferry.dev/run`.
    pub run_id: String,
    /// The run's short id, for names ferry makes.
    pub short: String,
    /// Source → destination namespaces.
    pub namespaces: BTreeMap<String, String>,
    /// Source → destination storage classes (mapped ones only).
    pub storage_classes: BTreeMap<String, String>,
    /// Whether source and destination are one cluster.
    pub in_cluster: bool,
    /// Suspend CronJobs.
    pub suspend_cronjobs: bool,
    /// The DNS rewriter, when `rewriteServiceDns` is on.
    pub service_dns: Option<ServiceDns>,
    /// User transforms.
    pub transforms: Vec<CompiledTransform>,
}

impl TransformContext {
    /// The context of `spec` for run `run_id` (short id `short`).
    ///
    /// # Errors
    /// [`Error::Regex`] for a transform's name expression.
    pub fn new(spec: &CloneSpec, run_id: &str, short: &str) -> Result<Self> {
        let namespaces = spec.namespace_map();
        let transforms = spec
            .transforms
            .iter()
            .enumerate()
            .map(|(index, t)| {
                let name = t
                    .selector
                    .name
                    .as_deref()
                    .map(|re| {
                        Regex::new(&format!("^(?:{re})$")).map_err(|source| Error::Regex {
                            field: format!("transforms[{index}].selector.name"),
                            source,
                        })
                    })
                    .transpose()?;
                Ok(CompiledTransform {
                    index,
                    group: t.selector.group.clone(),
                    kind: t.selector.kind.clone(),
                    name,
                    namespace: t.selector.namespace.clone(),
                    patch: t.patch.clone(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            run_id: run_id.to_owned(),
            short: short.to_owned(),
            service_dns: spec
                .rewrite_service_dns
                .then(|| ServiceDns::new(&namespaces)),
            namespaces,
            storage_classes: spec.storage_class_map(),
            in_cluster: spec.in_cluster(),
            suspend_cronjobs: spec.suspend_cronjobs,
            transforms,
        })
    }

    fn map_ns(&self, ns: &str) -> Option<&str> {
        self.namespaces.get(ns).map(String::as_str)
    }

    fn map_class(&self, class: &str) -> String {
        self.storage_classes
            .get(class)
            .cloned()
            .unwrap_or_else(|| class.to_owned())
    }
}

/// The transformed app, ready for the apply and volume steps.
#[derive(Clone, PartialEq, Default, serde::Serialize)]
pub struct Transformed {
    /// Destination Namespace objects, by name.
    pub namespaces: Vec<Value>,
    /// Cluster-scoped dependencies (created only when absent).
    pub dependencies: Vec<Value>,
    /// Namespaced objects, PVCs excluded, in inventory order.
    pub objects: Vec<Value>,
    /// PVCs, without a data source (the volume step sets one).
    pub pvcs: Vec<Value>,
}

impl std::fmt::Debug for Transformed {
    /// Names only: objects may be Secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[Value]| v.iter().map(object::display).collect::<Vec<_>>();
        f.debug_struct("Transformed")
            .field("namespaces", &names(&self.namespaces))
            .field("dependencies", &names(&self.dependencies))
            .field("objects", &names(&self.objects))
            .field("pvcs", &names(&self.pvcs))
            .finish()
    }
}

/// Transforms the whole inventory.
///
/// # Errors
/// As [`transform_object`].
pub fn transform_inventory(ctx: &TransformContext, inv: &Inventory) -> Result<Transformed> {
    let mut out = Transformed::default();
    for (src, ns) in &inv.namespaces {
        out.namespaces
            .push(destination_namespace(ctx, src, ns.namespace.as_ref()));
        for o in &ns.objects {
            out.objects.push(transform_object(ctx, o)?);
        }
        for p in &ns.pvcs {
            out.pvcs.push(transform_object(ctx, p)?);
        }
    }
    for d in &inv.dependencies {
        out.dependencies.push(transform_object(ctx, &d.object)?);
    }
    Ok(out)
}

/// The destination Namespace for source namespace `src`: the source's labels
/// and annotations minus the ones the cluster sets per namespace, a `name`
/// label equal to the source name renamed (as Trident protect does), and
/// ferry's run label.
pub fn destination_namespace(ctx: &TransformContext, src: &str, source: Option<&Value>) -> Value {
    let dst = ctx.map_ns(src).unwrap_or(src);
    let mut labels: BTreeMap<String, String> = source.map(object::labels).unwrap_or_default();
    for l in NAMESPACE_SYSTEM_LABELS {
        labels.remove(l);
    }
    if labels.get("name").map(String::as_str) == Some(src) {
        labels.insert("name".into(), dst.into());
    }
    labels.insert(RUN_LABEL.into(), ctx.run_id.clone());
    let mut annotations: BTreeMap<String, String> =
        source.map(object::annotations).unwrap_or_default();
    annotations.retain(|k, _| {
        !NAMESPACE_SYSTEM_ANNOTATION_PREFIXES
            .iter()
            .any(|p| k.starts_with(p))
    });
    let mut meta = json!({"name": dst, "labels": labels});
    if !annotations.is_empty() {
        meta["annotations"] = json!(annotations);
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
}

/// Transforms one source object (namespaced, or a cluster-scoped
/// dependency) into its destination form.
///
/// # Errors
/// [`Error::MalformedObject`] when `obj` is not an object or lacks a name;
/// [`Error::Patch`] when a user transform fails or moves the object.
pub fn transform_object(ctx: &TransformContext, obj: &Value) -> Result<Value> {
    let oref = object::ObjectRef::of(obj)?;
    let src_ns = namespace(obj).map(str::to_owned);
    let mut out = obj.clone();
    let explicit_node_ports = explicit_node_ports(obj);
    strip_server_set(&mut out);

    match (object::group(obj), kind(obj)) {
        ("", "Service") => service(ctx, &mut out, &explicit_node_ports),
        ("", "PersistentVolumeClaim") => pvc(ctx, &mut out),
        ("", "ServiceAccount") => service_account(&mut out),
        ("", "Pod") => {
            remove(&mut out, "/spec", "nodeName");
            remove(&mut out, "/spec", "priority");
        }
        ("apps", "StatefulSet") => statefulset(ctx, &mut out),
        ("batch", "Job") => job(&mut out),
        ("batch", "CronJob") if ctx.suspend_cronjobs => out["spec"]["suspend"] = json!(true),
        ("rbac.authorization.k8s.io", "RoleBinding") => map_subjects(ctx, &mut out),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => cluster_role_binding(ctx, &mut out),
        (
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration",
        ) => webhooks(ctx, &mut out),
        ("networking.k8s.io", "NetworkPolicy") => network_policy(ctx, &mut out),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            map_service_namespace(
                ctx,
                &mut out,
                "/spec/conversion/webhook/clientConfig/service",
            );
        }
        _ => {}
    }
    // `creationTimestamp: null` in templates is serialization noise.
    for p in pod_spec_pointers(&out) {
        if let Some(parent) = p.strip_suffix("/spec") {
            drop_creation_timestamp(&mut out, parent);
        }
    }
    if is(obj, "batch", "CronJob") {
        drop_creation_timestamp(&mut out, "/spec/jobTemplate");
    }

    let dst_ns = src_ns
        .as_deref()
        .map(|s| ctx.map_ns(s).unwrap_or(s).to_owned());
    if let Some(d) = &dst_ns {
        out["metadata"]["namespace"] = json!(d);
    }
    if let Some(dns) = &ctx.service_dns {
        dns.rewrite(&mut out);
    }
    for t in ctx.transforms.iter().filter(|t| t.selects(obj)) {
        apply_patch(&mut out, &t.patch).map_err(|reason| Error::Patch {
            index: t.index,
            object: oref.to_string(),
            reason,
        })?;
        if namespace(&out).map(str::to_owned) != dst_ns
            || !out.get("metadata").is_some_and(Value::is_object)
        {
            return Err(Error::Patch {
                index: t.index,
                object: oref.to_string(),
                reason: "the patch moved the object to another namespace".into(),
            });
        }
    }
    label(&mut out, RUN_LABEL, &ctx.run_id);
    Ok(out)
}

fn meta(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn label(obj: &mut Value, key: &str, value: &str) {
    let m = meta(obj);
    let labels = m.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels[key] = json!(value);
}

/// Removes `<parent>/metadata/creationTimestamp`, and the metadata when it
/// is left empty.
fn drop_creation_timestamp(obj: &mut Value, parent: &str) {
    let Some(p) = obj.pointer_mut(parent).and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(Value::Object(m)) = p.get_mut("metadata") {
        m.remove("creationTimestamp");
        if m.is_empty() {
            p.remove("metadata");
        }
    }
}

fn remove(obj: &mut Value, parent: &str, key: &str) -> Option<Value> {
    obj.pointer_mut(parent)?.as_object_mut()?.remove(key)
}

/// Removes keys from the string map at `parent/<field>`, and the map itself
/// when it ends up empty.
fn remove_keys(obj: &mut Value, parent: &str, field: &str, keys: &[&str]) {
    let Some(m) = obj.pointer_mut(parent).and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(Value::Object(map)) = m.get_mut(field) {
        for k in keys {
            map.remove(*k);
        }
        if map.is_empty() {
            m.remove(field);
        }
    }
}

fn strip_server_set(obj: &mut Value) {
    let m = meta(obj);
    for f in SERVER_SET_METADATA {
        if f == "generateName" && !m.contains_key("name") {
            continue;
        }
        m.remove(f);
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    remove_keys(obj, "/metadata", "annotations", &STRIPPED_ANNOTATIONS);
    remove_keys(obj, "/metadata", "labels", &CONTROLLER_UID_LABELS);
}

/// The `(port, protocol)` pairs whose nodePort the user set: present in
/// the last-applied configuration, or owned (`f:nodePort`) by a manager in
/// managedFields — Velero's rule.
fn explicit_node_ports(obj: &Value) -> BTreeSet<(i64, String)> {
    let mut out = BTreeSet::new();
    if !is(obj, "", "Service") {
        return out;
    }
    if let Some(last) = object::annotation(obj, "kubectl.kubernetes.io/last-applied-configuration")
        && let Ok(v) = serde_json::from_str::<Value>(last)
    {
        for p in v
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if p.get("nodePort")
                .is_some_and(|n| n.as_i64().is_some_and(|n| n != 0))
            {
                out.insert((
                    p["port"].as_i64().unwrap_or(0),
                    p.get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_owned(),
                ));
            }
        }
    }
    for mf in obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(ports) = mf
            .pointer("/fieldsV1/f:spec/f:ports")
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (key, fields) in ports {
            if fields.get("f:nodePort").is_none() {
                continue;
            }
            if let Some(k) = key.strip_prefix("k:")
                && let Ok(k) = serde_json::from_str::<Value>(k)
            {
                out.insert((
                    k["port"].as_i64().unwrap_or(0),
                    k.get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_owned(),
                ));
            }
        }
    }
    out
}

fn service(ctx: &TransformContext, obj: &mut Value, explicit: &BTreeSet<(i64, String)>) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    // In one cluster every node port would collide; across clusters only the
    // ones the user chose are kept, the rest are allocated afresh.
    let keep_explicit = !ctx.in_cluster;
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            let key = (
                p["port"].as_i64().unwrap_or(0),
                p.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_owned(),
            );
            if !(keep_explicit && explicit.contains(&key))
                && let Some(o) = p.as_object_mut()
            {
                o.remove("nodePort");
            }
        }
    }
    if ctx.in_cluster || explicit.is_empty() {
        spec.remove("healthCheckNodePort");
    }
}

fn pvc(ctx: &TransformContext, obj: &mut Value) {
    remove_keys(obj, "/metadata", "annotations", &PVC_BIND_ANNOTATIONS);
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("volumeName");
        spec.remove("dataSource");
        spec.remove("dataSourceRef");
        if let Some(c) = spec.get("storageClassName").and_then(Value::as_str) {
            let mapped = ctx.map_class(c);
            spec.insert("storageClassName".into(), json!(mapped));
        }
    }
}

fn service_account(obj: &mut Value) {
    let prefix = format!("{}-token-", name(obj));
    if let Some(o) = obj.as_object_mut() {
        if let Some(Value::Array(secrets)) = o.get_mut("secrets") {
            secrets.retain(|s| {
                !s.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.starts_with(&prefix))
            });
        }
        if o.get("secrets")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            o.remove("secrets");
        }
    }
}

fn statefulset(ctx: &TransformContext, obj: &mut Value) {
    let Some(vcts) = obj
        .pointer_mut("/spec/volumeClaimTemplates")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for t in vcts {
        if let Some(o) = t.as_object_mut() {
            o.remove("status");
        }
        if let Some(m) = t.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("creationTimestamp");
        }
        if let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("volumeName");
        }
        if let Some(c) = t.pointer("/spec/storageClassName").and_then(Value::as_str) {
            let mapped = ctx.map_class(c);
            t["spec"]["storageClassName"] = json!(mapped);
        }
    }
}

fn job(obj: &mut Value) {
    remove_keys(
        obj,
        "/spec/template/metadata",
        "labels",
        &CONTROLLER_UID_LABELS,
    );
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        remove_keys(obj, "/spec/selector", "matchLabels", &CONTROLLER_UID_LABELS);
    } else {
        // The API server makes the selector again from the new uid.
        remove(obj, "/spec", "selector");
    }
}

fn map_subjects(ctx: &TransformContext, obj: &mut Value) {
    for s in obj
        .get_mut("subjects")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(d) = s
            .get("namespace")
            .and_then(Value::as_str)
            .and_then(|n| ctx.map_ns(n))
        {
            s["namespace"] = json!(d);
        }
    }
}

fn cluster_role_binding(ctx: &TransformContext, obj: &mut Value) {
    if ctx.in_cluster {
        // The source app still needs its binding: add a new one for the
        // copy's ServiceAccounts rather than touch the existing one.
        if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
            subjects.retain(|s| {
                s.get("kind").and_then(Value::as_str) == Some("ServiceAccount")
                    && s.get("namespace")
                        .and_then(Value::as_str)
                        .is_some_and(|n| ctx.namespaces.contains_key(n))
            });
        }
        let new_name = ferry_name(&ctx.short, name(obj));
        obj["metadata"]["name"] = json!(new_name);
    }
    map_subjects(ctx, obj);
}

/// Maps the namespace of the service reference at `pointer`, when the app
/// owns it.
fn map_service_namespace(ctx: &TransformContext, obj: &mut Value, pointer: &str) {
    if let Some(svc) = obj.pointer_mut(pointer)
        && let Some(d) = svc
            .get("namespace")
            .and_then(Value::as_str)
            .and_then(|n| ctx.map_ns(n))
    {
        svc["namespace"] = json!(d);
    }
}

fn webhooks(ctx: &TransformContext, obj: &mut Value) {
    for w in obj
        .get_mut("webhooks")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        map_service_namespace(ctx, w, "/clientConfig/service");
    }
}

const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn network_policy(ctx: &TransformContext, obj: &mut Value) {
    for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
        for rule in obj
            .pointer_mut(&format!("/spec/{rules}"))
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            for peer in rule
                .get_mut(peers)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let Some(sel) = peer.get_mut("namespaceSelector") else {
                    continue;
                };
                if let Some(v) = sel.pointer_mut(&format!(
                    "/matchLabels/{}",
                    NS_NAME_LABEL.replace('/', "~1")
                )) && let Some(d) = v.as_str().and_then(|n| ctx.map_ns(n))
                {
                    *v = json!(d);
                }
                for e in sel
                    .get_mut("matchExpressions")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if e.get("key").and_then(Value::as_str) != Some(NS_NAME_LABEL) {
                        continue;
                    }
                    for v in e
                        .get_mut("values")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(d) = v.as_str().and_then(|n| ctx.map_ns(n)) {
                            *v = json!(d);
                        }
                    }
                }
            }
        }
    }
}

/// Whether `obj` names a source storage class (a PVC or a StatefulSet claim
/// template), for the dry-run's list of transforms.
pub fn storage_classes_named(obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(c) = str_at(obj, "/spec/storageClassName") {
        out.push(c.to_owned());
    }
    for t in obj
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(c) = str_at(t, "/spec/storageClassName") {
            out.push(c.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx(in_cluster: bool) -> TransformContext {
        let spec: CloneSpec = serde_json::from_value(json!({
            "name": "c", "sourceContext": "a", "destinationContext": if in_cluster { "a" } else { "b" },
            "namespaces": [{"source": "shop", "destination": "shop-copy"}], "rewriteServiceDns": true
        }))
        .unwrap();
        TransformContext::new(&spec, "run-1", "abcd2345").unwrap()
    }

    #[test]
    fn external_name_services_and_crd_conversion_webhooks_follow_the_namespace() {
        let c = ctx(true);
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db-alias", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "db.shop.svc.cluster.local"}});
        assert_eq!(
            transform_object(&c, &svc).unwrap()["spec"]["externalName"],
            "db.shop-copy.svc.cluster.local"
        );
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "w.example.com"},
            "spec": {"conversion": {"strategy": "Webhook", "webhook": {"clientConfig": {"service": {"namespace": "shop", "name": "conv"}}}}}});
        let out = transform_object(&c, &crd).unwrap();
        assert_eq!(
            out.pointer("/spec/conversion/webhook/clientConfig/service/namespace")
                .unwrap(),
            "shop-copy"
        );
        let hook = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "m"},
            "webhooks": [{"name": "a", "clientConfig": {"service": {"namespace": "shop", "name": "h"}}},
                         {"name": "b", "clientConfig": {"service": {"namespace": "other", "name": "h"}}}]});
        let out = transform_object(&c, &hook).unwrap();
        assert_eq!(
            out["webhooks"][0]["clientConfig"]["service"]["namespace"],
            "shop-copy"
        );
        assert_eq!(
            out["webhooks"][1]["clientConfig"]["service"]["namespace"],
            "other"
        );
    }

    #[test]
    fn standalone_jobs_lose_their_generated_selector_and_bare_pods_their_node() {
        let c = ctx(false);
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": "shop",
                "labels": {"controller-uid": "u1", "app": "m"}},
            "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}},
                "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u1", "controller-uid": "u1", "app": "m"}},
                    "spec": {"containers": [{"name": "m", "image": "m"}]}}}});
        let out = transform_object(&c, &job).unwrap();
        assert!(out["spec"].get("selector").is_none());
        assert_eq!(
            out["spec"]["template"]["metadata"]["labels"],
            json!({"app": "m"})
        );
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "m", "ferry.dev/run": "run-1"})
        );
        let manual = {
            let mut j = job.clone();
            j["spec"]["manualSelector"] = json!(true);
            j["spec"]["selector"]["matchLabels"]["app"] = json!("m");
            j
        };
        let out = transform_object(&c, &manual).unwrap();
        assert_eq!(
            out["spec"]["selector"],
            json!({"matchLabels": {"app": "m"}})
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop", "generateName": "p-"},
            "spec": {"nodeName": "n1", "priority": 0, "priorityClassName": "high", "containers": []}});
        let out = transform_object(&c, &pod).unwrap();
        assert_eq!(
            out["spec"],
            json!({"priorityClassName": "high", "containers": []})
        );
        assert!(out["metadata"].get("generateName").is_none());
    }

    #[test]
    fn a_patch_may_not_move_an_object() {
        let spec: CloneSpec = serde_json::from_value(json!({
            "name": "c", "sourceContext": "a", "destinationContext": "b", "namespaces": [{"source": "shop"}],
            "transforms": [{"selector": {"kind": "ConfigMap"}, "patch": [{"op": "replace", "path": "/metadata", "value": {"name": "x", "namespace": "elsewhere"}}]}]
        }))
        .unwrap();
        let c = TransformContext::new(&spec, "run-1", "abcd2345").unwrap();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "shop"}});
        let err = transform_object(&c, &cm).unwrap_err().to_string();
        assert!(err.contains("moved the object"), "{err}");
    }
}

//! Object lifecycle rules shared by the HTTP handlers and the controllers:
//! create, update, delete, with the metadata the apiserver maintains
//! (uid, resourceVersion, generation, timestamps, managedFields), defaults,
//! validation, namespace admission and CRD registration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rand::Rng;
use serde_json::{Map, Value, json};

use crate::resources::{GroupResource, Registry, ResourceInfo, infos_from_crd};
use crate::status::{ApiError, Cause};
use crate::store::{Store, Txn};
use crate::util::{get_path, meta_str, now_rfc3339, set_path};
use crate::validation;

/// The API machinery state shared by handlers and controllers.
#[derive(Debug)]
pub struct State {
    /// All objects.
    pub store: Store,
    /// Served resources.
    pub registry: Registry,
    /// Next ClusterIP host number for Services.
    next_ip: AtomicU32,
    /// Settings and timers of the part-2 controllers.
    pub runtime: crate::ctl::Runtime,
}

/// Which part of an object a write targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object itself (status is kept for kinds with a status subresource).
    Main,
    /// Only `.status`.
    Status,
    /// Namespace `spec.finalizers` (`/finalize`).
    Finalize,
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// `fieldManager` (defaults to the user agent's program name).
    pub manager: String,
    /// `dryRun=All`: compute, persist nothing.
    pub dry_run: bool,
    /// The write is a server-side apply.
    pub apply: bool,
}

/// DeleteOptions that matter here.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `propagationPolicy`: `Background` (default), `Foreground` (treated as
    /// Background) or `Orphan`.
    pub propagation: Option<String>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun: ["All"]`.
    pub dry_run: bool,
}

/// Result of a delete.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// Removed now; the object's last state.
    Gone(Arc<Value>),
    /// Deletion deferred (finalizers, namespace termination); the object with deletionTimestamp.
    Pending(Arc<Value>),
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    let mut rng = rand::rng();
    (0..5)
        .map(|_| NAME_CHARS[rng.random_range(0..NAME_CHARS.len())] as char)
        .collect()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata ensured above")
}

fn ns_gr() -> GroupResource {
    GroupResource::new("", "namespaces")
}

/// Field paths of everything in `v`, in the `FieldsV1` `f:` notation. A
/// list of objects with a merge key records one `k:{…}` entry per item, as
/// the API server does for associative lists (ports by port and protocol,
/// container ports by containerPort and protocol, mounts by mountPath,
/// containers, volumes and env by name); other lists are leaves.
fn fields_of(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "apiVersion" && k.as_str() != "kind")
                .map(|(k, v)| (format!("f:{k}"), fields_of(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Object(
            items
                .iter()
                .filter_map(|item| {
                    let key = merge_key(item)?;
                    let mut fields = fields_of(item);
                    if let Some(f) = fields.as_object_mut() {
                        f.insert(".".into(), json!({}));
                    }
                    Some((format!("k:{key}"), fields))
                })
                .collect(),
        ),
        _ => json!({}),
    }
}

/// The merge key of an associative list's item, as `fieldsV1` spells it
/// (keys in alphabetical order), or `None` for items of other lists.
fn merge_key(item: &Value) -> Option<String> {
    let o = item.as_object()?;
    let protocol = || o.get("protocol").cloned().unwrap_or_else(|| json!("TCP"));
    let key = if let Some(port) = o.get("port").filter(|p| p.is_number()) {
        json!({"port": port, "protocol": protocol()})
    } else if let Some(port) = o.get("containerPort") {
        json!({"containerPort": port, "protocol": protocol()})
    } else if let Some(path) = o.get("mountPath") {
        json!({"mountPath": path})
    } else {
        json!({"name": o.get("name").filter(|n| n.is_string())?})
    };
    Some(key.to_string())
}

/// The `fieldsV1` set recorded for an apply body.
fn apply_fields(body: &Value) -> Value {
    let mut f = fields_of(body);
    if let Some(m) = f.get_mut("f:metadata").and_then(Value::as_object_mut) {
        m.remove("f:name");
        m.remove("f:namespace");
    }
    f
}

/// Whether `manager` already owns exactly the fields of `body` through Apply.
fn owns_same(obj: &Value, manager: &str, sub: Option<&str>, body: &Value) -> bool {
    let want = apply_fields(body);
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|es| {
            es.iter().any(|e| {
                e.get("manager").and_then(Value::as_str) == Some(manager)
                    && e.get("operation").and_then(Value::as_str) == Some("Apply")
                    && e.get("subresource").and_then(Value::as_str) == sub
                    && e.get("fieldsV1") == Some(&want)
            })
        })
}

/// Server-side apply removes what a manager applied before and omits now,
/// unless another Apply manager also owns it (map fields only; lists are
/// owned as a whole and merged by key).
pub fn prune_apply(
    cur: &Value,
    merged: &mut Value,
    manager: &str,
    body: &Value,
    sub: Option<&str>,
) {
    let entries = cur
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_apply = |e: &Value| e.get("operation").and_then(Value::as_str) == Some("Apply");
    let same_sub = |e: &Value| e.get("subresource").and_then(Value::as_str) == sub;
    let Some(prev) = entries
        .iter()
        .find(|e| {
            is_apply(e) && same_sub(e) && e.get("manager").and_then(Value::as_str) == Some(manager)
        })
        .and_then(|e| e.get("fieldsV1").cloned())
    else {
        return;
    };
    let others: Vec<Value> = entries
        .iter()
        .filter(|e| is_apply(e) && e.get("manager").and_then(Value::as_str) != Some(manager))
        .filter_map(|e| e.get("fieldsV1").cloned())
        .collect();
    let now = apply_fields(body);
    prune(merged, &prev, &now, &others.iter().collect::<Vec<_>>());
}

fn prune(target: &mut Value, prev: &Value, now: &Value, others: &[&Value]) {
    let (Some(prev), Some(t)) = (prev.as_object(), target.as_object_mut()) else {
        return;
    };
    for (fk, sub_prev) in prev {
        let Some(key) = fk.strip_prefix("f:") else {
            continue;
        };
        let sub_others: Vec<&Value> = others.iter().filter_map(|o| o.get(fk)).collect();
        match now.get(fk) {
            None if sub_others.is_empty() => {
                t.remove(key);
            }
            None => {}
            Some(sub_now) => {
                if let Some(child) = t.get_mut(key) {
                    prune(child, sub_prev, sub_now, &sub_others);
                }
            }
        }
    }
}

/// Record a managedFields entry for (manager, operation, subresource).
fn touch_managed(
    obj: &mut Value,
    manager: &str,
    apply_body: Option<&Value>,
    api_version: &str,
    sub: Option<&str>,
) {
    if manager.is_empty() {
        return;
    }
    let operation = if apply_body.is_some() {
        "Apply"
    } else {
        "Update"
    };
    let fields = apply_body.map(apply_fields).unwrap_or_else(|| json!({}));
    let mut entry = json!({"manager": manager, "operation": operation, "apiVersion": api_version,
        "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields});
    if let Some(s) = sub {
        entry["subresource"] = json!(s);
    }
    let meta = meta_mut(obj);
    let list = meta.entry("managedFields").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let arr = list.as_array_mut().expect("array ensured above");
    let same = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some(operation)
            && e.get("subresource").and_then(Value::as_str) == sub
    };
    match arr.iter_mut().find(|e| same(e)) {
        Some(e) => *e = entry,
        None => arr.push(entry),
    }
}

/// The desired state of an object: everything outside metadata and status.
fn spec_part(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn without_managed(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    c
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The kinds whose DELETE reply is the deleted object rather than a Status.
pub fn returns_deleted_object(info: &ResourceInfo) -> bool {
    info.group.is_empty()
        && matches!(
            info.plural.as_str(),
            "pods" | "persistentvolumes" | "persistentvolumeclaims" | "serviceaccounts"
        )
}

impl State {
    /// State with an empty store keeping `history` events for watches.
    pub fn new(history: usize) -> Self {
        State {
            store: Store::new(history),
            registry: Registry::new(),
            next_ip: AtomicU32::new(10),
            runtime: crate::ctl::Runtime::default(),
        }
    }

    /// Check `apiVersion`/`kind` of a request body against the URL's resource,
    /// filling them in when absent.
    pub fn check_type(&self, info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
        let Some(m) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        };
        let want_av = info.api_version();
        match m.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("apiVersion".into(), json!(want_av));
            }
            Some(av) if av == want_av => {}
            Some(av) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want_av})"
                )));
            }
        }
        match m.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("kind".into(), json!(info.kind));
            }
            Some(k) if k == info.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    info.kind
                )));
            }
        }
        match m.get("metadata") {
            None | Some(Value::Null) => {
                m.insert("metadata".into(), json!({}));
            }
            Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(ApiError::bad_request("metadata must be an object"));
            }
        }
        Ok(())
    }

    fn set_namespace(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let body_ns = meta_str(obj, "namespace").to_string();
        let meta = meta_mut(obj);
        if info.namespaced {
            let ns = ns.unwrap_or("");
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        Ok(())
    }

    /// Defaults the apiserver applies on create and update.
    fn apply_defaults(&self, info: &ResourceInfo, obj: &mut Value) {
        if info.custom {
            return;
        }
        let set_default = |obj: &mut Value, path: &str, v: Value| {
            if get_path(obj, path).is_none_or(Value::is_null) {
                set_path(obj, path, v);
            }
        };
        match (info.group.as_str(), info.plural.as_str()) {
            ("", "namespaces") => {
                let name = meta_str(obj, "name").to_string();
                set_default(obj, "spec.finalizers", json!(["kubernetes"]));
                set_default(obj, "status.phase", json!("Active"));
                // Every namespace carries its name as a label (since 1.21).
                let meta = meta_mut(obj);
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
            ("", "secrets") => {
                set_default(obj, "type", json!("Opaque"));
                // stringData is write-only: merged into data (base64) and dropped.
                let string_data = obj.as_object_mut().and_then(|m| m.remove("stringData"));
                if let Some(Value::Object(sd)) = string_data {
                    use base64::Engine;
                    if !obj.get("data").is_some_and(Value::is_object) {
                        obj["data"] = json!({});
                    }
                    if let Some(data) = obj["data"].as_object_mut() {
                        for (k, v) in sd {
                            let text = v
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string());
                            data.insert(
                                k,
                                json!(base64::engine::general_purpose::STANDARD.encode(text)),
                            );
                        }
                    }
                }
            }
            ("", "services") => {
                set_default(obj, "spec.type", json!("ClusterIP"));
                set_default(obj, "spec.sessionAffinity", json!("None"));
                let external =
                    get_path(obj, "spec.type").and_then(Value::as_str) == Some("ExternalName");
                if !external {
                    if get_path(obj, "spec.clusterIP")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty()
                    {
                        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
                        let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                        set_path(obj, "spec.clusterIP", json!(ip));
                    }
                    let ip = get_path(obj, "spec.clusterIP")
                        .cloned()
                        .unwrap_or(Value::Null);
                    set_default(obj, "spec.clusterIPs", json!([ip]));
                    set_default(obj, "spec.ipFamilies", json!(["IPv4"]));
                    set_default(obj, "spec.ipFamilyPolicy", json!("SingleStack"));
                    set_default(obj, "spec.internalTrafficPolicy", json!("Cluster"));
                }
                let node_ports = matches!(
                    get_path(obj, "spec.type").and_then(Value::as_str),
                    Some("NodePort" | "LoadBalancer")
                );
                if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter(|p| p.is_object()) {
                        if node_ports
                            && p.get("nodePort")
                                .is_none_or(|v| v.as_u64().unwrap_or(0) == 0)
                        {
                            let n = self.runtime.next_node_port.fetch_add(1, Ordering::Relaxed);
                            p["nodePort"] = json!(30000 + (n - 30000) % 2768);
                        }
                        if p.get("protocol").is_none() {
                            p["protocol"] = json!("TCP");
                        }
                        if p.get("targetPort").is_none()
                            && let Some(port) = p.get("port").cloned()
                        {
                            p["targetPort"] = port;
                        }
                    }
                }
            }
            ("", "persistentvolumeclaims") => {
                set_default(obj, "spec.volumeMode", json!("Filesystem"));
                // dataSource and dataSourceRef mirror each other when one is given.
                let ds = get_path(obj, "spec.dataSource")
                    .filter(|v| v.is_object())
                    .cloned();
                let dsr = get_path(obj, "spec.dataSourceRef")
                    .filter(|v| v.is_object())
                    .cloned();
                match (ds, dsr) {
                    (Some(ds), None) => set_path(obj, "spec.dataSourceRef", ds),
                    (None, Some(r)) if r.get("namespace").is_none() => {
                        set_path(obj, "spec.dataSource", r)
                    }
                    _ => {}
                }
            }
            ("apps", "deployments") => {
                set_default(obj, "spec.replicas", json!(1));
                set_default(
                    obj,
                    "spec.strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                );
                set_default(obj, "spec.revisionHistoryLimit", json!(10));
                set_default(obj, "spec.progressDeadlineSeconds", json!(600));
            }
            ("apps", "statefulsets") => {
                set_default(obj, "spec.replicas", json!(1));
                set_default(obj, "spec.podManagementPolicy", json!("OrderedReady"));
                set_default(
                    obj,
                    "spec.updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                set_default(obj, "spec.revisionHistoryLimit", json!(10));
                set_default(
                    obj,
                    "spec.persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
            }
            ("apps", "daemonsets") => {
                set_default(
                    obj,
                    "spec.updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
                set_default(obj, "spec.revisionHistoryLimit", json!(10));
            }
            ("apps", "replicasets") => set_default(obj, "spec.replicas", json!(1)),
            _ => {}
        }
    }

    /// Admission for creates in a namespace: it must exist and be active.
    fn admit_namespace(
        &self,
        txn: &Txn<'_>,
        info: &ResourceInfo,
        name: &str,
        ns: &str,
    ) -> Result<(), ApiError> {
        match txn.get(&ns_gr(), "", ns) {
            None => Err(ApiError::namespace_not_found(ns)),
            Some(n) if is_terminating(&n) => Err(ApiError::namespace_terminating(info, name, ns)),
            Some(_) => Ok(()),
        }
    }

    /// Status the apiserver sets on a new or updated CRD.
    fn crd_status(&self, obj: &mut Value) {
        let now = now_rfc3339();
        let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let mut accepted = if names.is_object() {
            names.clone()
        } else {
            json!({})
        };
        if accepted.get("singular").is_none()
            && let Some(k) = names.get("kind").and_then(Value::as_str)
        {
            accepted["singular"] = json!(k.to_lowercase());
        }
        if accepted.get("listKind").is_none()
            && let Some(k) = names.get("kind").and_then(Value::as_str)
        {
            accepted["listKind"] = json!(format!("{k}List"));
        }
        let storage: Vec<Value> = obj
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                    .filter_map(|v| v.get("name").cloned())
                    .collect()
            })
            .unwrap_or_default();
        let old_times: Vec<Option<Value>> = ["NamesAccepted", "Established"]
            .iter()
            .map(|t| {
                obj.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter()
                            .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
                    })
                    .and_then(|c| c.get("lastTransitionTime").cloned())
            })
            .collect();
        let t = |i: usize| old_times[i].clone().unwrap_or_else(|| json!(now));
        obj["status"] = json!({
            "acceptedNames": accepted,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": t(0)},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": t(1)}
            ],
            "storedVersions": storage,
        });
        if let Some(f) = meta_mut(obj).get_mut("finalizers")
            && !f.is_array()
        {
            *f = json!([]);
        }
    }

    fn is_crd(info: &ResourceInfo) -> bool {
        info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions"
    }

    /// POST: create `obj` under `info` in `ns`.
    pub fn create(
        &self,
        txn: &mut Txn<'_>,
        info: &ResourceInfo,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOpts,
    ) -> Result<Arc<Value>, ApiError> {
        // What an apply sent, before the server adds anything: the fields its manager owns.
        let applied = opts.apply.then(|| obj.clone());
        self.check_type(info, &mut obj)?;
        self.set_namespace(info, ns, &mut obj)?;
        let ns = if info.namespaced {
            ns.unwrap_or("")
        } else {
            ""
        };
        let mut name = meta_str(&obj, "name").to_string();
        let generate = meta_str(&obj, "generateName").to_string();
        if name.is_empty() && !generate.is_empty() {
            for _ in 0..16 {
                name = format!("{generate}{}", random_suffix());
                if txn.get(&info.group_resource(), ns, &name).is_none() {
                    break;
                }
            }
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
        if info.namespaced {
            self.admit_namespace(txn, info, &name, ns)?;
        }
        if name.is_empty() {
            return Err(ApiError::invalid(
                info,
                "",
                vec![Cause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        if !meta_str(&obj, "resourceVersion").is_empty() {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let mut causes = validation::name_causes(info, &name);
        causes.extend(validation::metadata_causes(&obj));
        causes.extend(validation::kind_causes(info, &obj));
        if !causes.is_empty() {
            return Err(ApiError::invalid(info, &name, causes));
        }
        // Validating admission, after validation, before storage.
        if info.group.is_empty() && info.plural == "pods" {
            let labels = txn
                .get(&ns_gr(), "", ns)
                .and_then(|n| n.pointer("/metadata/labels").cloned());
            let default = self.runtime.pod_security_default.as_deref();
            if let Some(why) = crate::podsecurity::refusal(labels.as_ref(), default, &obj) {
                return Err(ApiError::forbidden(info, &name, &why));
            }
            let quotas = txn.list(&GroupResource::new("", "resourcequotas"), Some(ns));
            if !quotas.is_empty() {
                let pods = crate::quota::unfinished_pods(txn, ns);
                let quotas: Vec<&Value> = quotas.iter().map(|q| q.as_ref()).collect();
                let pods: Vec<&Value> = pods.iter().map(|p| p.as_ref()).collect();
                if let Some(why) = crate::quota::refusal(&quotas, &pods, &obj) {
                    return Err(ApiError::forbidden(info, &name, &why));
                }
            }
        }
        let gr = info.group_resource();
        if txn.get(&gr, ns, &name).is_some() {
            return Err(ApiError::already_exists(info, &name));
        }
        {
            let meta = meta_mut(&mut obj);
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.insert("generation".into(), json!(1));
            for f in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                meta.remove(f);
            }
        }
        if info.status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        self.apply_defaults(info, &mut obj);
        touch_managed(
            &mut obj,
            &opts.manager,
            applied.as_ref(),
            &info.api_version(),
            None,
        );
        if Self::is_crd(info) {
            self.crd_status(&mut obj);
        }
        if opts.dry_run {
            return Ok(Arc::new(obj));
        }
        if Self::is_crd(info) {
            self.registry.set_crd(&name, infos_from_crd(&obj));
        }
        Ok(txn.create(&gr, obj))
    }

    /// PUT (and the tail of PATCH): replace the object `name` with `new`.
    /// Returns the stored object (unchanged when the write is a no-op).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        txn: &mut Txn<'_>,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        mut new: Value,
        part: Part,
        opts: &WriteOpts,
        apply_body: Option<&Value>,
    ) -> Result<Arc<Value>, ApiError> {
        self.check_type(info, &mut new)?;
        self.set_namespace(info, ns, &mut new)?;
        let ns = if info.namespaced {
            ns.unwrap_or("")
        } else {
            ""
        };
        let body_name = meta_str(&new, "name").to_string();
        if body_name.is_empty() {
            meta_mut(&mut new).insert("name".into(), json!(name));
        } else if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let gr = info.group_resource();
        let Some(old) = txn.get(&gr, ns, name) else {
            return Err(ApiError::not_found(info, name));
        };
        let body_rv = meta_str(&new, "resourceVersion").to_string();
        if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict(info, name));
        }
        if body_rv.is_empty()
            && info.custom
            && !opts.apply
            && part == Part::Main
            && apply_body.is_none()
        {
            // Custom resources demand a resourceVersion on PUT; patches carry the stored one.
            return Err(ApiError::invalid(
                info,
                name,
                vec![Cause::invalid(
                    "metadata.resourceVersion",
                    "0x0",
                    "must be specified for an update",
                )],
            ));
        }
        // Which parts of the request count depends on the target.
        let mut obj = match part {
            Part::Main => {
                let mut o = new.clone();
                if info.status || info.plural == "namespaces" {
                    match old.get("status") {
                        Some(s) => o["status"] = s.clone(),
                        None => {
                            if let Some(m) = o.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                if info.plural == "namespaces" && info.group.is_empty() {
                    o["spec"] = old.get("spec").cloned().unwrap_or(json!({}));
                }
                o
            }
            Part::Status => {
                let mut o = (*old).clone();
                match new.get("status") {
                    Some(s) => o["status"] = s.clone(),
                    None => {
                        if let Some(m) = o.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                o
            }
            Part::Finalize => {
                let mut o = (*old).clone();
                let fins = new
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or(json!([]));
                set_path(&mut o, "spec.finalizers", fins);
                o
            }
        };
        // Fields only the server sets.
        {
            let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
            let meta = meta_mut(&mut obj);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(f) {
                    Some(v) => {
                        meta.insert(f.into(), v.clone());
                    }
                    None => {
                        meta.remove(f);
                    }
                }
            }
            if !meta.contains_key("managedFields")
                && let Some(mf) = old_meta.get("managedFields")
            {
                meta.insert("managedFields".into(), mf.clone());
            }
            meta.remove("selfLink");
        }
        let terminating = old.pointer("/metadata/deletionTimestamp").is_some();
        if terminating {
            let before = str_list(old.pointer("/metadata/finalizers"));
            let added: Vec<String> = str_list(obj.pointer("/metadata/finalizers"))
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    info,
                    name,
                    vec![Cause::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        carry_over(info, &old, &mut obj);
        let mut causes = validation::metadata_causes(&obj);
        causes.extend(validation::kind_causes(info, &obj));
        causes.extend(immutable_causes(info, &old, &obj));
        if !causes.is_empty() {
            return Err(ApiError::invalid(info, name, causes));
        }
        self.apply_defaults(info, &mut obj);
        if spec_part(&obj) != spec_part(&old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut obj).insert("generation".into(), json!(g + 1));
        }
        if Self::is_crd(info) {
            self.crd_status(&mut obj);
        }
        let sub_name = match part {
            Part::Main => None,
            Part::Status => Some("status"),
            Part::Finalize => Some("finalize"),
        };
        if without_managed(&obj) == without_managed(&old)
            && apply_body.is_none_or(|b| owns_same(&old, &opts.manager, sub_name, b))
        {
            // Nothing changed: the apiserver skips the write (no new resourceVersion).
            return Ok(old);
        }
        let sub = sub_name;
        touch_managed(
            &mut obj,
            &opts.manager,
            apply_body,
            &info.api_version(),
            sub,
        );
        if opts.dry_run {
            return Ok(Arc::new(obj));
        }
        if Self::is_crd(info) {
            self.registry.set_crd(name, infos_from_crd(&obj));
        }
        if terminating
            && str_list(obj.pointer("/metadata/finalizers")).is_empty()
            && info.plural != "namespaces"
        {
            return Ok(txn.remove(&gr, obj));
        }
        Ok(txn.update(&gr, obj))
    }

    /// DELETE one object.
    pub fn delete(
        &self,
        txn: &mut Txn<'_>,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Deleted, ApiError> {
        let ns = if info.namespaced {
            ns.unwrap_or("")
        } else {
            ""
        };
        let gr = info.group_resource();
        let Some(old) = txn.get(&gr, ns, name) else {
            return Err(ApiError::not_found(info, name));
        };
        if let Some(uid) = &opts.uid {
            let actual = meta_str(&old, "uid");
            if uid != actual {
                return Err(ApiError::conflict_because(
                    info,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.resource_version {
            let actual = meta_str(&old, "resourceVersion");
            if rv != actual {
                return Err(ApiError::conflict_because(
                    info,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    ),
                ));
            }
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Deleted::Pending(old));
        }
        let finalizers = str_list(old.pointer("/metadata/finalizers"));
        let is_namespace = info.group.is_empty() && info.plural == "namespaces";
        if opts.propagation.as_deref() == Some("Orphan") && !opts.dry_run {
            orphan_dependents(txn, meta_str(&old, "uid"));
        }
        // Foreground: the owner waits (finalizer `foregroundDeletion`) until the
        // garbage collector has removed its dependents.
        let foreground = opts.propagation.as_deref() == Some("Foreground")
            && !is_namespace
            && has_dependents(txn, meta_str(&old, "uid"));
        if is_namespace || !finalizers.is_empty() || foreground {
            let mut obj = (*old).clone();
            if foreground {
                let mut fins = finalizers.clone();
                fins.push(FOREGROUND.to_string());
                meta_mut(&mut obj).insert("finalizers".into(), json!(fins));
            }
            let g = obj
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let meta = meta_mut(&mut obj);
            meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            if g > 0 {
                meta.insert("generation".into(), json!(g + 1));
            }
            if is_namespace {
                set_path(&mut obj, "status.phase", json!("Terminating"));
            }
            if opts.dry_run {
                return Ok(Deleted::Pending(Arc::new(obj)));
            }
            return Ok(Deleted::Pending(txn.update(&gr, obj)));
        }
        if opts.dry_run {
            return Ok(Deleted::Gone(old));
        }
        if Self::is_crd(info) {
            self.remove_custom_resources(txn, &old);
            self.registry.set_crd(name, None);
        }
        Ok(Deleted::Gone(txn.remove(&gr, (*old).clone())))
    }

    /// A CRD is going away: remove every object of its resource.
    fn remove_custom_resources(&self, txn: &mut Txn<'_>, crd: &Value) {
        let Some(group) = crd.pointer("/spec/group").and_then(Value::as_str) else {
            return;
        };
        let Some(plural) = crd.pointer("/spec/names/plural").and_then(Value::as_str) else {
            return;
        };
        let gr = GroupResource::new(group, plural);
        for o in txn.list(&gr, None) {
            txn.remove(&gr, (*o).clone());
        }
    }
}

/// Values the apiserver keeps from the stored object when an update omits
/// them (Service cluster IPs).
fn carry_over(info: &ResourceInfo, old: &Value, new: &mut Value) {
    if info.custom || !info.group.is_empty() || info.plural != "services" {
        return;
    }
    for f in ["clusterIP", "clusterIPs"] {
        let path = format!("spec.{f}");
        let missing = get_path(new, &path).is_none_or(|v| v.is_null() || v.as_str() == Some(""));
        if missing && let Some(v) = get_path(old, &path).cloned() {
            set_path(new, &path, v);
        }
    }
    // nodePorts of ports that keep their port number.
    let old_ports = old
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in ports
            .iter_mut()
            .filter(|p| p.is_object() && p.get("nodePort").is_none())
        {
            if let Some(np) = old_ports
                .iter()
                .find(|o| {
                    o.get("port") == p.get("port")
                        && o.get("protocol")
                            .is_none_or(|x| Some(x) == p.get("protocol").or(Some(&json!("TCP"))))
                })
                .and_then(|o| o.get("nodePort"))
            {
                p["nodePort"] = np.clone();
            }
        }
    }
}

/// Fields that may not change once set (a subset of the apiserver's rules
/// that clone workflows run into).
fn immutable_causes(info: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if info.custom {
        return out;
    }
    let immutable = |field: &str, path: &str, out: &mut Vec<Cause>| {
        let (o, n) = (get_path(old, path), get_path(new, path));
        if o.is_some() && o != n {
            out.push(Cause {
                reason: "FieldValueInvalid",
                field: field.into(),
                message: format!(
                    "Invalid value: {}: field is immutable",
                    n.map(Value::to_string).unwrap_or_else(|| "null".into())
                ),
            });
        }
    };
    match (info.group.as_str(), info.plural.as_str()) {
        ("apps", "deployments" | "daemonsets" | "replicasets") => {
            immutable("spec.selector", "spec.selector", &mut out)
        }
        ("apps", "statefulsets") => {
            immutable("spec.selector", "spec.selector", &mut out);
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(json!({}));
                if let Some(m) = s.as_object_mut() {
                    for f in [
                        "replicas",
                        "ordinals",
                        "template",
                        "updateStrategy",
                        "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds",
                        "selector",
                    ] {
                        m.remove(f);
                    }
                }
                s
            };
            if out.is_empty() && strip(old) != strip(new) {
                out.push(Cause::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
        ("", "configmaps" | "secrets")
            if old.get("immutable").and_then(Value::as_bool) == Some(true) =>
        {
            for f in ["data", "binaryData", "immutable"] {
                if old.get(f) != new.get(f) {
                    out.push(Cause::forbidden(
                        f,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        ("", "services") => {
            let (o, n) = (
                get_path(old, "spec.clusterIP"),
                get_path(new, "spec.clusterIP"),
            );
            if o.is_some() && o != n {
                out.push(Cause {
                    reason: "FieldValueInvalid",
                    field: "spec.clusterIPs[0]".into(),
                    message: format!(
                        "Invalid value: {}: may not change once set",
                        n.map(Value::to_string).unwrap_or_else(|| "null".into())
                    ),
                });
            }
        }
        _ => {}
    }
    out
}

/// The finalizer of a foreground deletion.
pub const FOREGROUND: &str = "foregroundDeletion";

/// Whether any object names `owner_uid` in its ownerReferences.
pub fn has_dependents(txn: &Txn<'_>, owner_uid: &str) -> bool {
    !owner_uid.is_empty() && !dependents(txn, owner_uid).is_empty()
}

/// Objects that name `owner_uid` in their ownerReferences.
pub fn dependents(txn: &Txn<'_>, owner_uid: &str) -> Vec<(GroupResource, Arc<Value>)> {
    txn.all_objects()
        .into_iter()
        .filter(|(_, o)| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r.get("uid").and_then(Value::as_str) == Some(owner_uid))
                })
        })
        .collect()
}

/// Strip the ownerReference to `owner_uid` from every object.
fn orphan_dependents(txn: &mut Txn<'_>, owner_uid: &str) {
    for (gr, o) in txn.all_objects() {
        let Some(refs) = o
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
        else {
            continue;
        };
        if !refs
            .iter()
            .any(|r| r.get("uid").and_then(Value::as_str) == Some(owner_uid))
        {
            continue;
        }
        let kept: Vec<Value> = refs
            .iter()
            .filter(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid))
            .cloned()
            .collect();
        let mut obj = (*o).clone();
        let meta = meta_mut(&mut obj);
        if kept.is_empty() {
            meta.remove("ownerReferences");
        } else {
            meta.insert("ownerReferences".into(), Value::Array(kept));
        }
        txn.update(&gr, obj);
    }
}

/// Whether an object has a deletionTimestamp.
pub fn is_terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

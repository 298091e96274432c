//! A thin view over Kubernetes objects held as plain `serde_json::Value`s.
//!
//! ferry handles arbitrary kinds (custom resources included), so objects stay
//! untyped; these helpers read the few fields every object has.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The label every object ferry creates carries, with the run id as value.
pub const RUN_LABEL: &str = "ferry.dev/run";

/// The label (value `"true"`) on ferry's temporary objects (snapshots,
/// contents, mover pods and PVCs), which cleanup deletes and which an
/// inventory never takes for the app's own, even during another clone of
/// the same namespace.
pub const TEMPORARY_LABEL: &str = "ferry.dev/temporary";

/// An API group and kind, e.g. `apps`/`Deployment`; the core group is `""`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupKind {
    /// The API group (`""` for the core group).
    pub group: String,
    /// The kind.
    pub kind: String,
}

impl GroupKind {
    /// A group and kind.
    pub fn new(group: &str, kind: &str) -> Self {
        Self {
            group: group.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// Whether this is `kind` in the core group or in `group`.
    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// Names one object: group, kind, namespace (empty when cluster-scoped), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// The API group (`""` for core).
    pub group: String,
    /// The kind.
    pub kind: String,
    /// The namespace; `None` for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl ObjectRef {
    /// The reference to `obj`; fails when apiVersion, kind or name is missing.
    pub fn of(obj: &Value) -> Result<Self> {
        let kind = kind(obj);
        let name = name(obj);
        if obj.get("apiVersion").and_then(Value::as_str).is_none()
            || kind.is_empty()
            || name.is_empty()
        {
            return Err(Error::MalformedObject {
                object: format!("{kind}/{name}"),
                reason: "apiVersion, kind and metadata.name are required".into(),
            });
        }
        Ok(Self {
            group: group(obj).to_owned(),
            kind: kind.to_owned(),
            namespace: namespace(obj).map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The group and kind.
    pub fn group_kind(&self) -> GroupKind {
        GroupKind::new(&self.group, &self.kind)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gk = self.group_kind();
        match &self.namespace {
            Some(ns) => write!(f, "{gk} {ns}/{}", self.name),
            None => write!(f, "{gk} {}", self.name),
        }
    }
}

/// The `apiVersion` of `obj`, or `""`.
pub fn api_version(obj: &Value) -> &str {
    obj.get("apiVersion").and_then(Value::as_str).unwrap_or("")
}

/// The API group of `obj` (the part of apiVersion before `/`; `""` for core).
pub fn group(obj: &Value) -> &str {
    match api_version(obj).split_once('/') {
        Some((g, _)) => g,
        None => "",
    }
}

/// The kind of `obj`, or `""`.
pub fn kind(obj: &Value) -> &str {
    obj.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// The group and kind of `obj`.
pub fn group_kind(obj: &Value) -> GroupKind {
    GroupKind::new(group(obj), kind(obj))
}

/// Whether `obj` is `kind` of `group`.
pub fn is(obj: &Value, group_name: &str, kind_name: &str) -> bool {
    group(obj) == group_name && kind(obj) == kind_name
}

/// `metadata.name`, or `""`.
pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace`, when set and not empty.
pub fn namespace(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `metadata.labels` as a sorted map (empty when absent).
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj.pointer("/metadata/labels"))
}

/// `metadata.annotations` as a sorted map (empty when absent).
pub fn annotations(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj.pointer("/metadata/annotations"))
}

/// One annotation's value.
pub fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// The claims a pod's volumes name (`persistentVolumeClaim.claimName`).
pub fn pod_claims(pod: &Value) -> impl Iterator<Item = &str> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| str_at(v, "/persistentVolumeClaim/claimName"))
}

/// A string at a JSON pointer.
pub fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

/// A `{string: string}` JSON object as a sorted map; other values are skipped.
pub fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The controller owner reference of `obj` (`controller: true`), if any.
pub fn controller_owner(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// A short human name for `obj` (`Kind ns/name`), even when it is malformed.
pub fn display(obj: &Value) -> String {
    match ObjectRef::of(obj) {
        Ok(r) => r.to_string(),
        Err(_) => format!("{} {}", kind(obj), name(obj)),
    }
}

/// The pod template specs inside a workload (`spec.template.spec` and
/// CronJob's `spec.jobTemplate.spec.template.spec`), plus a bare Pod's spec,
/// as JSON pointers.
pub fn pod_spec_pointers(obj: &Value) -> Vec<&'static str> {
    match (group(obj), kind(obj)) {
        ("", "Pod") => vec!["/spec"],
        ("batch", "CronJob") => vec!["/spec/jobTemplate/spec/template/spec"],
        _ if obj.pointer("/spec/template/spec").is_some() => vec!["/spec/template/spec"],
        _ => vec![],
    }
}

/// Whether `name` is a DNS-1123 label (lowercase alphanumerics and `-`, at
/// most 63 characters, starting and ending alphanumeric).
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `name` is a DNS-1123 subdomain (dot-separated labels, at most 253
/// characters), the rule for most object names.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

//! The table of served resources: the built-in kinds and the ones CRDs add.
//!
//! Discovery, OpenAPI, routing and validation all read this one table, so a
//! resource exists for every client at once or not at all.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// How names of a kind are validated (`metadata.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (Namespace).
    Label,
    /// RFC 1035 label (Service).
    Dns1035,
    /// Any path segment (RBAC kinds).
    PathSegment,
    /// `<plural>.<group>` (CustomResourceDefinition).
    Crd,
}

/// JSON paths of a kind's `/scale` subresource.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    /// Path of the desired replicas, like `.spec.replicas`.
    pub spec_replicas: String,
    /// Path of the observed replicas, like `.status.replicas`.
    pub status_replicas: String,
    /// Path of a label-selector string, if any.
    pub label_selector: Option<String>,
}

/// One served resource (a plural under a group/version).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    /// API group, `""` for core.
    pub group: String,
    /// Version, like `v1`.
    pub version: String,
    /// Plural resource name (`configmaps`).
    pub plural: String,
    /// Singular resource name (`configmap`).
    pub singular: String,
    /// Kind (`ConfigMap`).
    pub kind: String,
    /// List kind (`ConfigMapList`).
    pub list_kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`cm`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Has a `/status` subresource.
    pub status: bool,
    /// Has a `/scale` subresource.
    pub scale: Option<ScalePaths>,
    /// Served from a CRD (or behaves like one: no strategic merge patch).
    pub custom: bool,
    /// Name validation rule.
    pub name_rule: NameRule,
}

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key of this resource (group + plural; versions share storage).
    pub fn group_resource(&self) -> GroupResource {
        GroupResource {
            group: self.group.clone(),
            resource: self.plural.clone(),
        }
    }

    /// The verbs of the main resource, as discovery lists them.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.plural == "namespaces" {
            vec![
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }
}

/// Group and plural: where objects of a resource are stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    /// API group, `""` for core.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

impl GroupResource {
    /// Build from string slices.
    pub fn new(group: &str, resource: &str) -> Self {
        GroupResource {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

struct Spec {
    gv: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    scale: bool,
    all: bool,
}

#[allow(clippy::too_many_arguments)]
const fn r(
    gv: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    scale: bool,
    all: bool,
) -> Spec {
    Spec {
        gv,
        plural,
        kind,
        namespaced,
        short,
        status,
        scale,
        all,
    }
}

#[rustfmt::skip]
const BUILTIN: &[Spec] = &[
    r("v1", "namespaces", "Namespace", false, &["ns"], true, false, false),
    r("v1", "configmaps", "ConfigMap", true, &["cm"], false, false, false),
    r("v1", "secrets", "Secret", true, &[], false, false, false),
    r("v1", "services", "Service", true, &["svc"], true, false, true),
    r("v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false, false, false),
    r("v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, &["pvc"], true, false, false),
    r("v1", "persistentvolumes", "PersistentVolume", false, &["pv"], true, false, false),
    r("v1", "pods", "Pod", true, &["po"], true, false, true),
    r("v1", "endpoints", "Endpoints", true, &["ep"], false, false, false),
    r("v1", "events", "Event", true, &["ev"], false, false, false),
    r("v1", "limitranges", "LimitRange", true, &["limits"], false, false, false),
    r("v1", "resourcequotas", "ResourceQuota", true, &["quota"], true, false, false),
    r("apps/v1", "deployments", "Deployment", true, &["deploy"], true, true, true),
    r("apps/v1", "statefulsets", "StatefulSet", true, &["sts"], true, true, true),
    r("apps/v1", "daemonsets", "DaemonSet", true, &["ds"], true, false, true),
    r("apps/v1", "replicasets", "ReplicaSet", true, &["rs"], true, true, true),
    r("batch/v1", "jobs", "Job", true, &[], true, false, true),
    r("batch/v1", "cronjobs", "CronJob", true, &["cj"], true, false, true),
    r("networking.k8s.io/v1", "ingresses", "Ingress", true, &["ing"], true, false, false),
    r("networking.k8s.io/v1", "ingressclasses", "IngressClass", false, &[], false, false, false),
    r("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", true, &["netpol"], false, false, false),
    r("storage.k8s.io/v1", "storageclasses", "StorageClass", false, &["sc"], false, false, false),
    r("snapshot.storage.k8s.io/v1", "volumesnapshots", "VolumeSnapshot", true, &["vs"], true, false, false),
    r("snapshot.storage.k8s.io/v1", "volumesnapshotcontents", "VolumeSnapshotContent", false, &["vsc", "vscs"], true, false, false),
    r("snapshot.storage.k8s.io/v1", "volumesnapshotclasses", "VolumeSnapshotClass", false, &["vsclass", "vsclasses"], false, false, false),
    r("rbac.authorization.k8s.io/v1", "roles", "Role", true, &[], false, false, false),
    r("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", true, &[], false, false, false),
    r("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", false, &[], false, false, false),
    r("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", false, &[], false, false, false),
    r("admissionregistration.k8s.io/v1", "validatingwebhookconfigurations", "ValidatingWebhookConfiguration", false, &[], false, false, false),
    r("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", false, &[], false, false, false),
    r("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", false, &["crd", "crds"], true, false, false),
    r("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], true, false, false),
    r("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, &["hpa"], true, false, true),
];

fn builtin_info(s: &Spec) -> ResourceInfo {
    let (group, version) = match s.gv.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), s.gv.to_string()),
    };
    let name_rule = match s.plural {
        "namespaces" => NameRule::Label,
        "services" => NameRule::Dns1035,
        "customresourcedefinitions" => NameRule::Crd,
        _ if group == "rbac.authorization.k8s.io" => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    };
    ResourceInfo {
        custom: group == "snapshot.storage.k8s.io",
        group,
        version,
        plural: s.plural.to_string(),
        singular: s.kind.to_lowercase(),
        kind: s.kind.to_string(),
        list_kind: format!("{}List", s.kind),
        namespaced: s.namespaced,
        short_names: s.short.iter().map(|x| x.to_string()).collect(),
        categories: if s.all {
            vec!["all".to_string()]
        } else {
            vec![]
        },
        status: s.status,
        scale: s.scale.then(|| ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        }),
        name_rule,
    }
}

/// Served resources, shared by every request handler.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<RwLock<RegistryInner>>,
}

#[derive(Debug)]
struct RegistryInner {
    /// Built-in resources in discovery order.
    builtin: Vec<ResourceInfo>,
    /// Resources served by CRDs, keyed by CRD name; each CRD may serve several versions.
    crds: BTreeMap<String, Vec<ResourceInfo>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with the built-in resources only.
    pub fn new() -> Self {
        Registry {
            inner: Arc::new(RwLock::new(RegistryInner {
                builtin: BUILTIN.iter().map(builtin_info).collect(),
                crds: BTreeMap::new(),
            })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RegistryInner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every served resource (built-ins first, then CRD-served ones).
    pub fn all(&self) -> Vec<ResourceInfo> {
        let g = self.read();
        let mut v = g.builtin.clone();
        for infos in g.crds.values() {
            v.extend(infos.iter().cloned());
        }
        v
    }

    /// The resource at group/version/plural, if served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<ResourceInfo> {
        let g = self.read();
        g.builtin
            .iter()
            .chain(g.crds.values().flatten())
            .find(|i| i.group == group && i.version == version && i.plural == plural)
            .cloned()
    }

    /// Any served version of a group/resource (for controllers that only know storage keys).
    pub fn lookup_gr(&self, gr: &GroupResource) -> Option<ResourceInfo> {
        let g = self.read();
        g.builtin
            .iter()
            .chain(g.crds.values().flatten())
            .find(|i| i.group == gr.group && i.plural == gr.resource)
            .cloned()
    }

    /// Groups with their served versions, in discovery order (preferred version first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for i in self.all() {
            if i.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == i.group) {
                Some((_, vs)) => {
                    if !vs.contains(&i.version) {
                        vs.push(i.version.clone())
                    }
                }
                None => out.push((i.group.clone(), vec![i.version.clone()])),
            }
        }
        out
    }

    /// Resources served under one group/version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<ResourceInfo> {
        self.all()
            .into_iter()
            .filter(|i| i.group == group && i.version == version)
            .collect()
    }

    /// Serve (or stop serving, with `None`) the resources of the CRD `name`.
    pub fn set_crd(&self, name: &str, infos: Option<Vec<ResourceInfo>>) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match infos {
            Some(v) if !v.is_empty() => {
                g.crds.insert(name.to_string(), v);
            }
            _ => {
                g.crds.remove(name);
            }
        }
    }
}

/// The resources a CRD object serves (one per served version), or `None` when
/// its spec is unusable.
pub fn infos_from_crd(crd: &Value) -> Option<Vec<ResourceInfo>> {
    let spec = crd.get("spec")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let names = spec.get("names")?;
    let plural = names.get("plural")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = names
        .get("listKind")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let short_names = strs(names.get("shortNames"));
    let categories = strs(names.get("categories"));
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let mut out = Vec::new();
    for v in spec.get("versions")?.as_array()? {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let version = v.get("name")?.as_str()?.to_string();
        let sub = v.get("subresources");
        let status = sub.and_then(|s| s.get("status")).is_some();
        let scale = sub.and_then(|s| s.get("scale")).map(|s| ScalePaths {
            spec_replicas: s
                .get("specReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".spec.replicas")
                .to_string(),
            status_replicas: s
                .get("statusReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".status.replicas")
                .to_string(),
            label_selector: s
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
        let info = ResourceInfo {
            group: group.clone(),
            version,
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status,
            scale,
            custom: true,
            name_rule: NameRule::Subdomain,
        };
        // The storage version goes first so it is the preferred one in discovery.
        if v.get("storage").and_then(Value::as_bool) == Some(true) {
            out.insert(0, info);
        } else {
            out.push(info);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lookup() {
        let r = Registry::new();
        let d = r.lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(d.kind, "Deployment");
        assert!(d.scale.is_some());
        assert!(r.lookup("", "v1", "nodes").is_none());
        assert_eq!(
            r.lookup("", "v1", "namespaces").unwrap().name_rule,
            NameRule::Label
        );
        assert!(
            r.groups()
                .iter()
                .any(|(g, v)| g == "autoscaling" && v == &["v2"])
        );
    }

    #[test]
    fn crd_infos() {
        let crd = serde_json::json!({"spec": {"group": "ex.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}});
        let infos = infos_from_crd(&crd).unwrap();
        assert_eq!(infos[0].list_kind, "WidgetList");
        assert!(infos[0].status);
        assert!(infos[0].custom);
    }
}

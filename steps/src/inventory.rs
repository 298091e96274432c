//! The inventory of a clone: the source objects that belong to the app.
//!
//! [`Inventory::build`] takes everything listed from the source cluster — the
//! objects in the source namespaces and the cluster-scoped objects — and
//! keeps what belongs to the app (DESIGN §2): the namespaced objects minus
//! what controllers own and what the cluster makes, filtered; the PVCs (with
//! their PVs); and the cluster-scoped dependencies. Storage classes and
//! snapshot classes are kept for preflight but never copied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::object::{
    self, GroupKind, ObjectRef, controller_owner, group_kind, is, kind, name, namespace, str_at,
};
use crate::selector::LabelSelector;
use crate::spec::{CloneSpec, ObjectFilter, group_matches, kind_matches};

/// Why an object of the source was left out of the clone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "reason", content = "detail")]
pub enum SkipReason {
    /// A controller owns it and will make it again on the destination.
    OwnedBy(String),
    /// The cluster makes it in every namespace (default ServiceAccount,
    /// kube-root-ca.crt) or for every Service (Endpoints, EndpointSlices).
    ClusterMade,
    /// A service-account token Secret; the token controller makes new ones.
    ServiceAccountToken,
    /// Events, controller revisions, metrics: history, not state.
    NotRestorable,
    /// A finished Pod or Job.
    Completed,
    /// The spec's include/exclude filters leave it out.
    Filtered,
    /// A temporary object of a ferry run (labelled `ferry.dev/temporary`).
    FerryTemporary,
    /// A VolumeSnapshot: tied to the source's snapshot contents; the
    /// volumes are copied by the volume steps instead.
    VolumeSnapshot,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::OwnedBy(o) => write!(f, "owned by {o}; its controller makes it again"),
            SkipReason::ClusterMade => f.write_str("made by the cluster"),
            SkipReason::ServiceAccountToken => {
                f.write_str("service-account token; made by the token controller")
            }
            SkipReason::NotRestorable => f.write_str("history, not state"),
            SkipReason::Completed => f.write_str("finished"),
            SkipReason::Filtered => f.write_str("left out by the spec's filters"),
            SkipReason::FerryTemporary => f.write_str("a temporary object of a ferry run"),
            SkipReason::VolumeSnapshot => f.write_str("a snapshot tied to the source's volumes"),
        }
    }
}

/// An object left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The object.
    pub object: ObjectRef,
    /// Why.
    pub reason: SkipReason,
}

/// Why a cluster-scoped object is part of the app.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase", tag = "reason", content = "by")]
pub enum DependencyReason {
    /// It defines a custom resource the app has (the CR's kind).
    DefinesKind(String),
    /// An Ingress of the app names it.
    IngressClassOf(String),
    /// Its webhook's service lives in an app namespace.
    WebhookService(String),
    /// A binding gives it to an app ServiceAccount (the binding).
    BoundBy(String),
    /// It binds an app ServiceAccount (the ServiceAccount).
    BindsServiceAccount(String),
}

impl fmt::Display for DependencyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DependencyReason::DefinesKind(k) => write!(f, "defines {k}"),
            DependencyReason::IngressClassOf(i) => write!(f, "named by {i}"),
            DependencyReason::WebhookService(s) => write!(f, "its webhook service is {s}"),
            DependencyReason::BoundBy(b) => write!(f, "bound by {b}"),
            DependencyReason::BindsServiceAccount(s) => write!(f, "binds {s}"),
        }
    }
}

/// A cluster-scoped object the app depends on.
#[derive(Clone, PartialEq, Serialize)]
pub struct Dependency {
    /// The source object.
    pub object: Value,
    /// Why it belongs to the app (the first reason found, in sorted order).
    pub reasons: Vec<DependencyReason>,
}

/// The source side of one namespace of the app.
#[derive(Clone, Default, PartialEq, Serialize)]
pub struct NamespaceInventory {
    /// The Namespace object itself (labels and annotations are copied).
    pub namespace: Option<Value>,
    /// The objects to apply, sorted by group, kind, name; PVCs excluded.
    pub objects: Vec<Value>,
    /// The PVCs, sorted by name; the volume steps make them.
    pub pvcs: Vec<Value>,
    /// The pods not finished that mount each PVC (the app's own and its
    /// controllers'), by claim name then pod name: who holds a volume a live
    /// copy must mount too. Not part of the bundle.
    #[serde(skip)]
    pub claim_users: BTreeMap<String, Vec<String>>,
    /// Those pods themselves (not finished), for what they hold of the
    /// namespace's ResourceQuotas where a quota's status does not say. Not
    /// part of the bundle.
    #[serde(skip)]
    pub running_pods: Vec<Value>,
    /// The namespace's ResourceQuotas and LimitRanges, whether the clone
    /// carries them or not (filtered out, or owned by a controller): what
    /// the mover pods must fit. Not part of the bundle.
    #[serde(skip)]
    pub pod_limits: Vec<Value>,
}

/// Everything of the source that a clone needs.
///
/// Its `Serialize` form holds Secret data (it is the resource bundle, which
/// is stored only as an encrypted blob); its `Debug` form holds names only.
#[derive(Clone, Default, PartialEq, Serialize)]
pub struct Inventory {
    /// Per source namespace (sorted).
    pub namespaces: BTreeMap<String, NamespaceInventory>,
    /// Cluster-scoped dependencies, sorted by group, kind, name.
    pub dependencies: Vec<Dependency>,
    /// PVs bound to the app's PVCs, by name.
    pub persistent_volumes: BTreeMap<String, Value>,
    /// The source's storage classes, by name (never copied).
    pub storage_classes: BTreeMap<String, Value>,
    /// The source's VolumeSnapshotClasses, by name (never copied).
    pub volume_snapshot_classes: BTreeMap<String, Value>,
    /// Kinds that the source's CRDs define, with the CRD name (all CRDs,
    /// carried or not): how preflight tells a custom resource.
    pub custom_kinds: BTreeMap<GroupKind, String>,
    /// What was left out and why, sorted.
    pub skipped: Vec<Skipped>,
}

impl fmt::Debug for Inventory {
    /// Counts and names only: objects may be Secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Inventory");
        for (ns, inv) in &self.namespaces {
            let names: Vec<String> = inv
                .objects
                .iter()
                .chain(&inv.pvcs)
                .map(object::display)
                .collect();
            d.field(ns, &names);
        }
        let deps: Vec<String> = self
            .dependencies
            .iter()
            .map(|x| object::display(&x.object))
            .collect();
        d.field("dependencies", &deps)
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

impl fmt::Debug for NamespaceInventory {
    /// Names only: objects may be Secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .objects
            .iter()
            .chain(&self.pvcs)
            .map(object::display)
            .collect();
        f.debug_struct("NamespaceInventory")
            .field("objects", &names)
            .finish()
    }
}

impl fmt::Debug for Dependency {
    /// The name only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dependency")
            .field("object", &object::display(&self.object))
            .field("reasons", &self.reasons)
            .finish()
    }
}

/// A spec filter with its selector parsed.
#[derive(Clone, Debug)]
pub struct Filter {
    group: Option<String>,
    kind: Option<String>,
    selector: Option<LabelSelector>,
}

impl Filter {
    /// Compiles a spec filter.
    ///
    /// # Errors
    /// [`Error::BadSelector`].
    pub fn new(f: &ObjectFilter) -> Result<Self> {
        Ok(Self {
            group: f.group.clone(),
            kind: f.kind.clone(),
            selector: f
                .label_selector
                .as_deref()
                .map(LabelSelector::parse)
                .transpose()?,
        })
    }

    /// Whether `obj` matches every field given.
    pub fn matches(&self, obj: &Value) -> bool {
        group_matches(self.group.as_deref(), object::group(obj))
            && kind_matches(self.kind.as_deref(), kind(obj))
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&object::labels(obj)))
    }
}

/// The spec's include and exclude filters, compiled.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    include: Vec<Filter>,
    exclude: Vec<Filter>,
}

impl Filters {
    /// Compiles the spec's filters.
    ///
    /// # Errors
    /// [`Error::BadSelector`].
    pub fn new(spec: &CloneSpec) -> Result<Self> {
        Ok(Self {
            include: spec
                .include
                .iter()
                .map(Filter::new)
                .collect::<Result<_>>()?,
            exclude: spec
                .exclude
                .iter()
                .map(Filter::new)
                .collect::<Result<_>>()?,
        })
    }

    /// Whether `obj` is in: it matches an include (or there is none) and no
    /// exclude.
    pub fn admits(&self, obj: &Value) -> bool {
        (self.include.is_empty() || self.include.iter().any(|f| f.matches(obj)))
            && !self.exclude.iter().any(|f| f.matches(obj))
    }
}

/// Why the cluster or a controller made `obj`, if it did.
pub fn skip_reason(
    obj: &Value,
    selectorless_services: &BTreeSet<(String, String)>,
) -> Option<SkipReason> {
    let gk = group_kind(obj);
    let (g, k) = (gk.group.as_str(), gk.kind.as_str());
    if matches!(
        (g, k),
        ("", "Event") | ("events.k8s.io", "Event") | ("apps", "ControllerRevision")
    ) || g == "metrics.k8s.io"
    {
        return Some(SkipReason::NotRestorable);
    }
    if object::labels(obj)
        .get(object::TEMPORARY_LABEL)
        .map(String::as_str)
        == Some("true")
    {
        return Some(SkipReason::FerryTemporary);
    }
    if (g, k) == ("snapshot.storage.k8s.io", "VolumeSnapshot") {
        return Some(SkipReason::VolumeSnapshot);
    }
    // PVCs carry data: never skipped as owned (a StatefulSet with a
    // whenDeleted=Delete retention policy owns its PVCs).
    if !is(obj, "", "PersistentVolumeClaim")
        && let Some(owner) = controller_owner(obj)
    {
        let ok = owner.get("kind").and_then(Value::as_str).unwrap_or("?");
        let on = owner.get("name").and_then(Value::as_str).unwrap_or("?");
        return Some(SkipReason::OwnedBy(format!("{ok}/{on}")));
    }
    let ns = namespace(obj).unwrap_or("").to_owned();
    match (g, k) {
        ("", "ServiceAccount") if name(obj) == "default" => Some(SkipReason::ClusterMade),
        ("", "ConfigMap")
            if matches!(name(obj), "kube-root-ca.crt" | "openshift-service-ca.crt") =>
        {
            Some(SkipReason::ClusterMade)
        }
        ("", "Secret") if str_at(obj, "/type") == Some("kubernetes.io/service-account-token") => {
            Some(SkipReason::ServiceAccountToken)
        }
        // Endpoints of a selector-less Service are the user's; the others are
        // the endpoints controller's.
        ("", "Endpoints") if !selectorless_services.contains(&(ns, name(obj).to_owned())) => {
            Some(SkipReason::ClusterMade)
        }
        ("discovery.k8s.io", "EndpointSlice")
            if object::labels(obj)
                .get("endpointslice.kubernetes.io/managed-by")
                .is_some_and(|m| m.ends_with(".k8s.io")) =>
        {
            Some(SkipReason::ClusterMade)
        }
        ("", "Pod") if object::annotation(obj, "kubernetes.io/config.mirror").is_some() => {
            Some(SkipReason::ClusterMade)
        }
        ("", "Pod") if matches!(str_at(obj, "/status/phase"), Some("Succeeded" | "Failed")) => {
            Some(SkipReason::Completed)
        }
        ("batch", "Job") if obj.pointer("/status/completionTime").is_some() => {
            Some(SkipReason::Completed)
        }
        _ => None,
    }
}

const DEPENDENCY_KINDS: [(&str, &str); 6] = [
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("networking.k8s.io", "IngressClass"),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
];

/// The IngressClass an Ingress names (`spec.ingressClassName`, else the
/// legacy `kubernetes.io/ingress.class` annotation).
pub fn ingress_class_of(ingress: &Value) -> Option<&str> {
    str_at(ingress, "/spec/ingressClassName")
        .or_else(|| object::annotation(ingress, "kubernetes.io/ingress.class"))
}

/// The group and kind a CRD defines.
pub fn crd_defines(crd: &Value) -> Option<GroupKind> {
    Some(GroupKind::new(
        str_at(crd, "/spec/group")?,
        str_at(crd, "/spec/names/kind")?,
    ))
}

/// The ServiceAccount subjects of a binding, as (namespace, name); a
/// RoleBinding subject without a namespace is in the binding's namespace.
pub fn service_account_subjects(binding: &Value) -> Vec<(String, String)> {
    let default_ns = namespace(binding).unwrap_or("");
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s.get("kind").and_then(Value::as_str) == Some("ServiceAccount"))
        .map(|s| {
            let ns = s
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(default_ns);
            (
                ns.to_owned(),
                s.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

/// Namespaces named by the webhooks' `clientConfig.service.namespace`.
pub fn webhook_service_namespaces(config: &Value) -> Vec<(String, String)> {
    config
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|w| {
            let svc = w.pointer("/clientConfig/service")?;
            Some((
                svc.get("namespace")?.as_str()?.to_owned(),
                svc.get("name")?.as_str().unwrap_or("").to_owned(),
            ))
        })
        .collect()
}

fn sort_key(obj: &Value) -> (String, String, String, String) {
    (
        object::group(obj).to_owned(),
        kind(obj).to_owned(),
        namespace(obj).unwrap_or("").to_owned(),
        name(obj).to_owned(),
    )
}

impl Inventory {
    /// Builds the inventory from everything listed on the source: objects in
    /// (or outside) the spec's namespaces and cluster-scoped objects. Objects
    /// in other namespaces are ignored. The Namespace objects of the source
    /// namespaces belong in the list: preflight refuses a source namespace
    /// whose Namespace it does not see. Every object needs apiVersion and
    /// kind: the items of a list response lack them, so the lister sets them
    /// from the list it read.
    ///
    /// # Errors
    /// [`Error::MalformedObject`] for an object without apiVersion, kind or
    /// name; [`Error::BadSelector`] for a bad filter.
    pub fn build(spec: &CloneSpec, objects: impl IntoIterator<Item = Value>) -> Result<Self> {
        let filters = Filters::new(spec)?;
        let app_namespaces: BTreeSet<String> =
            spec.namespaces.iter().map(|m| m.source.clone()).collect();
        let mut inv = Inventory {
            namespaces: app_namespaces
                .iter()
                .map(|n| (n.clone(), NamespaceInventory::default()))
                .collect(),
            ..Default::default()
        };
        let mut namespaced = Vec::new();
        let mut cluster = Vec::new();
        let mut pvs = Vec::new();
        for obj in objects {
            ObjectRef::of(&obj)?;
            match namespace(&obj) {
                Some(ns) if app_namespaces.contains(ns) => namespaced.push(obj),
                Some(_) => {}
                None => match (object::group(&obj), kind(&obj)) {
                    ("", "Namespace") => {
                        if let Some(n) = inv.namespaces.get_mut(name(&obj)) {
                            n.namespace = Some(obj);
                        }
                    }
                    ("storage.k8s.io", "StorageClass") => {
                        inv.storage_classes.insert(name(&obj).to_owned(), obj);
                    }
                    ("snapshot.storage.k8s.io", "VolumeSnapshotClass") => {
                        inv.volume_snapshot_classes
                            .insert(name(&obj).to_owned(), obj);
                    }
                    ("", "PersistentVolume") => pvs.push(obj),
                    (g, k) if DEPENDENCY_KINDS.contains(&(g, k)) => {
                        if is(&obj, "apiextensions.k8s.io", "CustomResourceDefinition")
                            && let Some(gk) = crd_defines(&obj)
                        {
                            inv.custom_kinds.insert(gk, name(&obj).to_owned());
                        }
                        cluster.push(obj);
                    }
                    _ => {}
                },
            }
        }

        let selectorless: BTreeSet<(String, String)> = namespaced
            .iter()
            .filter(|o| {
                is(o, "", "Service")
                    && o.pointer("/spec/selector")
                        .is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty()))
            })
            .filter(|o| str_at(o, "/spec/type") != Some("ExternalName"))
            .map(|o| (namespace(o).unwrap_or("").to_owned(), name(o).to_owned()))
            .collect();

        namespaced.sort_by_key(sort_key);
        for limit in namespaced
            .iter()
            .filter(|o| is(o, "", "ResourceQuota") || is(o, "", "LimitRange"))
        {
            if let Some(ns) = inv.namespaces.get_mut(namespace(limit).unwrap_or("")) {
                ns.pod_limits.push(limit.clone());
            }
        }
        for pod in namespaced.iter().filter(|o| {
            is(o, "", "Pod") && !matches!(str_at(o, "/status/phase"), Some("Succeeded" | "Failed"))
        }) {
            let claims = object::pod_claims(pod);
            let ns = inv
                .namespaces
                .get_mut(namespace(pod).unwrap_or(""))
                .expect("namespace of the app");
            for claim in claims {
                ns.claim_users
                    .entry(claim.to_owned())
                    .or_default()
                    .push(name(pod).to_owned());
            }
            ns.running_pods.push(pod.clone());
        }
        for obj in namespaced {
            let reason = skip_reason(&obj, &selectorless)
                .or_else(|| (!filters.admits(&obj)).then_some(SkipReason::Filtered));
            if let Some(reason) = reason {
                inv.skipped.push(Skipped {
                    object: ObjectRef::of(&obj)?,
                    reason,
                });
                continue;
            }
            let ns = inv
                .namespaces
                .get_mut(namespace(&obj).unwrap_or(""))
                .expect("namespace of the app");
            if is(&obj, "", "PersistentVolumeClaim") {
                ns.pvcs.push(obj);
            } else {
                ns.objects.push(obj);
            }
        }

        inv.select_dependencies(cluster, &app_namespaces, &filters)?;

        let claimed: BTreeSet<(String, String)> = inv
            .pvcs()
            .map(|p| (namespace(p).unwrap_or("").to_owned(), name(p).to_owned()))
            .collect();
        let volume_names: BTreeSet<&str> = inv
            .pvcs()
            .filter_map(|p| str_at(p, "/spec/volumeName"))
            .collect();
        let volume_names: BTreeSet<String> = volume_names.into_iter().map(str::to_owned).collect();
        for pv in pvs {
            let claim = (
                str_at(&pv, "/spec/claimRef/namespace")
                    .unwrap_or("")
                    .to_owned(),
                str_at(&pv, "/spec/claimRef/name").unwrap_or("").to_owned(),
            );
            if volume_names.contains(name(&pv)) || claimed.contains(&claim) {
                inv.persistent_volumes.insert(name(&pv).to_owned(), pv);
            }
        }
        inv.skipped.sort_by(|a, b| a.object.cmp(&b.object));
        Ok(inv)
    }

    fn select_dependencies(
        &mut self,
        cluster: Vec<Value>,
        app_namespaces: &BTreeSet<String>,
        filters: &Filters,
    ) -> Result<()> {
        let objects: Vec<&Value> = self.objects().collect();
        let app_kinds: BTreeSet<GroupKind> = objects.iter().map(|o| group_kind(o)).collect();
        let ingress_classes: BTreeMap<&str, String> = objects
            .iter()
            .filter(|o| is(o, "networking.k8s.io", "Ingress"))
            .filter_map(|o| Some((ingress_class_of(o)?, object::display(o))))
            .collect();
        // ClusterRoles named by the app's RoleBindings that bind one of its
        // ServiceAccounts.
        let mut bound_roles: BTreeMap<String, String> = BTreeMap::new();
        for rb in objects
            .iter()
            .filter(|o| is(o, "rbac.authorization.k8s.io", "RoleBinding"))
        {
            if str_at(rb, "/roleRef/kind") == Some("ClusterRole")
                && service_account_subjects(rb)
                    .iter()
                    .any(|(ns, _)| app_namespaces.contains(ns))
                && let Some(role) = str_at(rb, "/roleRef/name")
            {
                bound_roles
                    .entry(role.to_owned())
                    .or_insert_with(|| object::display(rb));
            }
        }
        // ClusterRoleBindings that bind an app ServiceAccount carry their
        // ClusterRole along.
        let app_sas: BTreeSet<(String, String)> = objects
            .iter()
            .filter(|o| is(o, "", "ServiceAccount"))
            .map(|o| (namespace(o).unwrap_or("").to_owned(), name(o).to_owned()))
            .collect();
        let binds_app = |crb: &Value| -> Vec<(String, String)> {
            service_account_subjects(crb)
                .into_iter()
                .filter(|s| app_sas.contains(s))
                .collect()
        };
        for crb in cluster
            .iter()
            .filter(|o| is(o, "rbac.authorization.k8s.io", "ClusterRoleBinding"))
        {
            if !binds_app(crb).is_empty()
                && str_at(crb, "/roleRef/kind") == Some("ClusterRole")
                && let Some(role) = str_at(crb, "/roleRef/name")
            {
                bound_roles
                    .entry(role.to_owned())
                    .or_insert_with(|| object::display(crb));
            }
        }
        let mut selected: Vec<Dependency> = Vec::new();
        for obj in cluster {
            let gk = group_kind(&obj);
            let mut reasons = Vec::new();
            match (gk.group.as_str(), gk.kind.as_str()) {
                ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                    if let Some(def) = crd_defines(&obj)
                        && app_kinds.contains(&def)
                    {
                        reasons.push(DependencyReason::DefinesKind(def.to_string()));
                    }
                }
                ("networking.k8s.io", "IngressClass") => {
                    if let Some(by) = ingress_classes.get(name(&obj)) {
                        reasons.push(DependencyReason::IngressClassOf(by.clone()));
                    }
                }
                ("admissionregistration.k8s.io", _) => {
                    for (ns, svc) in webhook_service_namespaces(&obj) {
                        if app_namespaces.contains(&ns) {
                            reasons.push(DependencyReason::WebhookService(format!("{ns}/{svc}")));
                        }
                    }
                }
                ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
                    for (ns, n) in binds_app(&obj) {
                        reasons.push(DependencyReason::BindsServiceAccount(format!("{ns}/{n}")));
                    }
                }
                ("rbac.authorization.k8s.io", "ClusterRole") => {
                    if let Some(by) = bound_roles.get(name(&obj)) {
                        reasons.push(DependencyReason::BoundBy(by.clone()));
                    }
                }
                _ => {}
            }
            if !reasons.is_empty() {
                selected.push(Dependency {
                    object: obj,
                    reasons,
                });
            }
        }
        for dep in selected {
            if filters.admits(&dep.object) {
                self.dependencies.push(Dependency {
                    reasons: {
                        let mut r = dep.reasons;
                        r.sort();
                        r.dedup();
                        r
                    },
                    object: dep.object,
                });
            } else {
                self.skipped.push(Skipped {
                    object: ObjectRef::of(&dep.object)?,
                    reason: SkipReason::Filtered,
                });
            }
        }
        self.dependencies.sort_by_key(|d| sort_key(&d.object));
        Ok(())
    }

    /// Every namespaced object to apply (PVCs excluded), by namespace then
    /// group, kind, name.
    pub fn objects(&self) -> impl Iterator<Item = &Value> {
        self.namespaces.values().flat_map(|n| n.objects.iter())
    }

    /// Every PVC of the app, by namespace then name.
    pub fn pvcs(&self) -> impl Iterator<Item = &Value> {
        self.namespaces.values().flat_map(|n| n.pvcs.iter())
    }

    /// The PV bound to `pvc`, if listed.
    pub fn pv_of(&self, pvc: &Value) -> Option<&Value> {
        if let Some(v) =
            str_at(pvc, "/spec/volumeName").and_then(|n| self.persistent_volumes.get(n))
        {
            return Some(v);
        }
        self.persistent_volumes.values().find(|pv| {
            str_at(pv, "/spec/claimRef/name") == Some(name(pvc))
                && str_at(pv, "/spec/claimRef/namespace") == namespace(pvc)
        })
    }

    /// Whether the inventory carries a cluster-scoped object of this kind and
    /// name.
    pub fn carries(&self, group: &str, kind_name: &str, object_name: &str) -> bool {
        self.dependencies
            .iter()
            .any(|d| is(&d.object, group, kind_name) && name(&d.object) == object_name)
    }

    /// Parses a multi-document YAML stream (or a `List`) into objects, for
    /// tests and `--from-file` inventories.
    ///
    /// # Errors
    /// [`Error::Yaml`].
    pub fn parse_yaml(s: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(s) {
            let v: Value = serde::Deserialize::deserialize(doc).map_err(Error::Yaml)?;
            match v {
                Value::Null => {}
                Value::Object(ref m)
                    if m.get("kind")
                        .and_then(Value::as_str)
                        .is_some_and(|k| k.ends_with("List"))
                        && m.contains_key("items") =>
                {
                    out.extend(m["items"].as_array().cloned().unwrap_or_default());
                }
                v => out.push(v),
            }
        }
        Ok(out)
    }
}

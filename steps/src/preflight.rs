//! Preflight: every rule of DESIGN §2 checked against the destination before
//! anything is written, and each volume's copy path chosen.
//!
//! [`preflight`] is pure: it reads the source [`Inventory`], the
//! destination's [`DestinationFacts`] and the [`PreflightConfig`], and
//! returns every refusal and warning at once in a [`PreflightReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capabilities::{
    AccessMode, Capability, CapabilityTable, DriverMatch, VolumeMode, default_non_clonable,
    driver_identity,
};
use crate::dns::ServiceDns;
use crate::inventory::{Inventory, ingress_class_of};
use crate::object::{self, GroupKind, annotation, is, kind, name, namespace, str_at};
use crate::spec::{CloneSpec, HookStage};
use crate::transform::{TransformContext, transform_object};

/// The daemon's side of preflight: capabilities, drivers, buckets, mover.
#[derive(Clone, Debug)]
pub struct PreflightConfig {
    /// Storage capabilities (built-in table plus config overrides).
    pub capabilities: CapabilityTable,
    /// Drivers that cannot be cloned; a class of one must be mapped.
    pub non_clonable: Vec<DriverMatch>,
    /// The configured bucket names.
    pub buckets: BTreeSet<String>,
    /// The default bucket.
    pub default_bucket: Option<String>,
    /// Whether the data mover exists in this build. Until it does, a clone
    /// that needs it is refused.
    pub mover_available: bool,
    /// The resources of every mover pod: what the `volume-mover` step puts
    /// in their spec, and what preflight checks the source namespaces'
    /// ResourceQuotas have room for.
    pub mover_resources: MoverResources,
}

/// A mover pod's compute resources (its one container's `resources`).
/// Namespaces with a compute ResourceQuota refuse pods without requests and
/// limits, so mover pods always carry both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoverResources {
    /// Requests (`cpu`, `memory`, ...).
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// Limits.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

impl Default for MoverResources {
    /// Requests 100m CPU and 128Mi; limits 1 CPU and 1Gi: `tar` streams,
    /// it keeps little in memory (the page cache it fills is reclaimed).
    fn default() -> Self {
        let map = |cpu: &str, memory: &str| {
            [("cpu", cpu), ("memory", memory)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        MoverResources {
            requests: map("100m", "128Mi"),
            limits: map("1", "1Gi"),
        }
    }
}

impl MoverResources {
    /// Checks every value is a quantity and no request exceeds its limit.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the field.
    pub fn validate(&self) -> crate::Result<()> {
        for (part, map) in [("requests", &self.requests), ("limits", &self.limits)] {
            for (k, v) in map {
                if crate::quantity::parse(v).is_none() {
                    return Err(crate::Error::Config {
                        field: format!("mover_resources.{part}.{k}"),
                        reason: format!("{v:?} is not a quantity (such as 500m, 2, 256Mi, 1Gi)"),
                    });
                }
            }
        }
        for (k, r) in &self.requests {
            if let Some(l) = self.limits.get(k)
                && crate::quantity::parse(r) > crate::quantity::parse(l)
            {
                return Err(crate::Error::Config {
                    field: format!("mover_resources.requests.{k}"),
                    reason: format!("the request {r} is above the limit {l}"),
                });
            }
        }
        Ok(())
    }

    /// The pod spec's `resources` for the mover's container.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"requests": self.requests, "limits": self.limits})
    }

    /// What one mover pod counts against quota key `key` (`requests.cpu`,
    /// `cpu`, `limits.memory`, `pods`, ...); `None` for keys it does not
    /// touch. A request not given is its limit, as the API server defaults
    /// it.
    pub fn amount(&self, key: &str) -> Option<f64> {
        let get = |m: &BTreeMap<String, String>, r: &str| {
            m.get(r).and_then(|v| crate::quantity::parse(v))
        };
        match key {
            "pods" | "count/pods" => Some(1.0),
            "cpu" | "memory" => get(&self.requests, key).or_else(|| get(&self.limits, key)),
            _ => {
                if let Some(r) = key.strip_prefix("requests.") {
                    get(&self.requests, r).or_else(|| get(&self.limits, r))
                } else if let Some(r) = key.strip_prefix("limits.") {
                    get(&self.limits, r)
                } else {
                    None
                }
            }
        }
    }
}

impl PreflightConfig {
    /// A config from the daemon's settings: capability rules in front of the
    /// built-in table, the non-clonable drivers (the built-in list when
    /// `None`), the buckets and the default one.
    ///
    /// # Errors
    /// [`crate::Error::Regex`] for a bad parameter expression;
    /// [`crate::Error::Config`] when the default bucket is not among the
    /// buckets.
    pub fn from_settings(
        capability_overrides: Vec<crate::capabilities::CapabilityRule>,
        non_clonable: Option<Vec<DriverMatch>>,
        buckets: BTreeSet<String>,
        default_bucket: Option<String>,
        mover_available: bool,
    ) -> crate::Result<Self> {
        let non_clonable = non_clonable.unwrap_or_else(default_non_clonable);
        for d in &non_clonable {
            d.validate()?;
        }
        if let Some(b) = &default_bucket
            && !buckets.contains(b)
        {
            return Err(crate::Error::Config {
                field: "default_bucket".into(),
                reason: format!("{b} is not among the configured buckets"),
            });
        }
        Ok(Self {
            capabilities: CapabilityTable::with_overrides(capability_overrides)?,
            non_clonable,
            buckets,
            default_bucket,
            mover_available,
            mover_resources: MoverResources::default(),
        })
    }
}

impl Default for PreflightConfig {
    fn default() -> Self {
        Self {
            capabilities: CapabilityTable::builtin(),
            non_clonable: default_non_clonable(),
            buckets: BTreeSet::new(),
            default_bucket: None,
            mover_available: false,
            mover_resources: MoverResources::default(),
        }
    }
}

/// What preflight knows of the destination cluster.
#[derive(Clone, Debug, Default)]
pub struct DestinationFacts {
    /// The destination context, for messages.
    pub cluster: String,
    /// Existing namespaces.
    pub namespaces: BTreeSet<String>,
    /// Storage classes by name.
    pub storage_classes: BTreeMap<String, Value>,
    /// VolumeSnapshotClasses by name.
    pub volume_snapshot_classes: BTreeMap<String, Value>,
    /// Kinds that the destination's CRDs define.
    pub custom_kinds: BTreeSet<GroupKind>,
    /// Other cluster-scoped objects present (IngressClasses, webhook
    /// configurations, ClusterRoles, ClusterRoleBindings, CRDs), by group,
    /// kind and name.
    pub cluster_objects: BTreeSet<(GroupKind, String)>,
}

impl DestinationFacts {
    /// Facts from the cluster-scoped objects listed on the destination.
    pub fn from_objects(cluster: &str, objects: impl IntoIterator<Item = Value>) -> Self {
        let mut f = Self {
            cluster: cluster.to_owned(),
            ..Self::default()
        };
        for o in objects {
            let n = name(&o).to_owned();
            match (object::group(&o), kind(&o)) {
                ("", "Namespace") => {
                    f.namespaces.insert(n);
                }
                ("storage.k8s.io", "StorageClass") => {
                    f.storage_classes.insert(n, o);
                }
                ("snapshot.storage.k8s.io", "VolumeSnapshotClass") => {
                    f.volume_snapshot_classes.insert(n, o);
                }
                (g, k) => {
                    if let Some(gk) = crate::inventory::crd_defines(&o)
                        .filter(|_| is(&o, "apiextensions.k8s.io", "CustomResourceDefinition"))
                    {
                        f.custom_kinds.insert(gk);
                    }
                    f.cluster_objects.insert((GroupKind::new(g, k), n));
                }
            }
        }
        f
    }

    /// Whether a cluster-scoped object of this group, kind and name exists.
    pub fn has(&self, group: &str, kind_name: &str, object_name: &str) -> bool {
        self.cluster_objects
            .contains(&(GroupKind::new(group, kind_name), object_name.to_owned()))
    }
}

/// A rule preflight enforces (DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// A source namespace does not exist on the source cluster.
    SourceNamespaceMissing,
    /// A destination namespace already exists.
    DestinationNamespaceExists,
    /// The destination storage class (kept or mapped) does not exist.
    StorageClassMissing,
    /// The destination class cannot give the volume's access mode.
    AccessModeNotOffered,
    /// A non-clonable driver's class is kept instead of mapped.
    NonClonableDriverKept,
    /// A volume has none of the three copy paths.
    NoCopyPath,
    /// A volume goes via the mover and there is no bucket.
    NoBucket,
    /// The spec names a bucket the config does not have.
    UnknownBucket,
    /// A volume needs the data mover, which this build does not have yet.
    MoverUnavailable,
    /// The app includes an IngressClass or webhook configuration that
    /// already exists on the destination.
    ClusterObjectExists,
    /// A dependency is neither carried nor on the destination.
    MissingDependency,
    /// A volume goes through the mover, whose pods run `tar` as root, in a
    /// namespace whose PodSecurity level forbids root pods (`restricted`).
    MoverPodForbidden,
    /// A ReadWriteOncePod volume that must be copied live is mounted by a
    /// running pod: no mover pod may mount it too.
    LiveVolumeInUse,
    /// A source namespace's ResourceQuota has no room for the mover pods
    /// (`mover_resources` each) and temporary PVCs the clone makes there,
    /// or requires a resource `mover_resources` does not give.
    MoverPodExceedsQuota,
    /// A source namespace's LimitRange does not admit `mover_resources`
    /// (above a maximum, below a minimum, or a limit too far above its
    /// request).
    MoverPodOutsideLimitRange,
    /// The mover's bucket refused preflight's probe (list, and for a clone
    /// put, get and delete of a small object): its credentials or policy do
    /// not let ferry use it. Checked by the cluster part, not [`preflight`].
    BucketUnusable,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(Value::as_str).unwrap_or("?"))
    }
}

/// A reason the clone cannot run: the object, the rule, what is wrong, and a
/// fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The object at fault (`Kind ns/name` or `Kind name`).
    pub object: String,
    /// The rule broken.
    pub rule: Rule,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} [rule {}]; fix: {}",
            self.object, self.message, self.rule, self.fix
        )
    }
}

/// A hazard the plan shows without refusing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningKind {
    /// An Ingress host will be served by both copies.
    DuplicateIngressHost,
    /// A CronJob will fire in both copies.
    CronJobFiresTwice,
    /// A `<svc>.<src-ns>.svc` reference would reach the source.
    SourceServiceReference,
    /// A volume is copied live; consistency rests on hooks.
    LiveCopy,
    /// A storage class's capabilities are not in the table.
    UnknownCapability,
    /// A cluster-scoped dependency already exists on the destination and is
    /// left as it is.
    DependencyExists,
    /// A hook matches no workload of the app.
    HookMatchesNothing,
}

/// A warning: the object, the hazard and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// The object concerned.
    pub object: String,
    /// The hazard.
    pub kind: WarningKind,
    /// What will happen.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.object, self.message, self.fix)
    }
}

/// How a volume's data is copied (DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyPath {
    /// Same cluster, same driver, the driver snapshots: a destination PVC
    /// from the snapshot, no bucket.
    SnapshotInPlace,
    /// The driver snapshots, but the destination is another cluster or
    /// driver: the mover reads a PVC made from the snapshot.
    SnapshotViaMover,
    /// The driver cannot snapshot: the mover reads the live volume,
    /// read-only.
    LiveViaMover,
}

impl CopyPath {
    /// Whether the path goes through the data mover (and a bucket).
    pub fn uses_mover(self) -> bool {
        !matches!(self, CopyPath::SnapshotInPlace)
    }

    /// Whether the path starts with a snapshot of the source PVC.
    pub fn uses_snapshot(self) -> bool {
        !matches!(self, CopyPath::LiveViaMover)
    }
}

impl fmt::Display for CopyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyPath::SnapshotInPlace => "snapshot, in place",
            CopyPath::SnapshotViaMover => "snapshot, via the mover",
            CopyPath::LiveViaMover => "live, via the mover",
        })
    }
}

/// One volume of the app and how it is copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumePlan {
    /// The source namespace.
    pub source_namespace: String,
    /// The PVC name (kept on the destination).
    pub pvc: String,
    /// The destination namespace.
    pub destination_namespace: String,
    /// The source storage class.
    pub source_class: Option<String>,
    /// The destination storage class (kept or mapped).
    pub destination_class: Option<String>,
    /// The source driver (provisioner, plus Trident backend type).
    pub driver: Option<String>,
    /// The PVC's access modes.
    pub access_modes: Vec<AccessMode>,
    /// The PVC's volume mode.
    pub volume_mode: VolumeMode,
    /// The requested size, as written.
    pub size: Option<String>,
    /// The path chosen; `None` when the volume has none.
    pub path: Option<CopyPath>,
    /// The source VolumeSnapshotClass, for snapshot paths.
    pub snapshot_class: Option<String>,
}

/// Everything preflight found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreflightReport {
    /// Each volume and its path, by namespace and name.
    pub volumes: Vec<VolumePlan>,
    /// The bucket the mover uses, when a volume needs it.
    pub bucket: Option<String>,
    /// Every refusal; the clone runs only when empty.
    pub refusals: Vec<Refusal>,
    /// Warnings.
    pub warnings: Vec<Warning>,
}

impl PreflightReport {
    /// Whether the clone is refused.
    pub fn is_refused(&self) -> bool {
        !self.refusals.is_empty()
    }
}

struct Checker<'a> {
    spec: &'a CloneSpec,
    inv: &'a Inventory,
    dest: &'a DestinationFacts,
    config: &'a PreflightConfig,
    report: PreflightReport,
}

impl Checker<'_> {
    fn refuse(
        &mut self,
        object: impl Into<String>,
        rule: Rule,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.report.refusals.push(Refusal {
            object: object.into(),
            rule,
            message: message.into(),
            fix: fix.into(),
        });
    }

    fn warn(
        &mut self,
        object: impl Into<String>,
        kind: WarningKind,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.report.warnings.push(Warning {
            object: object.into(),
            kind,
            message: message.into(),
            fix: fix.into(),
        });
    }

    fn cluster(&self) -> &str {
        &self.dest.cluster
    }
}

/// Checks every rule and chooses each volume's copy path.
pub fn preflight(
    spec: &CloneSpec,
    inv: &Inventory,
    dest: &DestinationFacts,
    config: &PreflightConfig,
) -> PreflightReport {
    let mut c = Checker {
        spec,
        inv,
        dest,
        config,
        report: PreflightReport::default(),
    };
    check_namespaces(&mut c);
    for pvc in inv.pvcs() {
        let v = check_volume(&mut c, pvc);
        c.report.volumes.push(v);
    }
    check_bucket(&mut c);
    check_pod_security(&mut c);
    check_quotas(&mut c);
    check_cluster_objects(&mut c);
    check_dependencies(&mut c);
    warn_hazards(&mut c);
    warn_hooks(&mut c);
    let mut r = c.report;
    r.refusals
        .sort_by(|a, b| (a.rule, &a.object, &a.message).cmp(&(b.rule, &b.object, &b.message)));
    r.refusals.dedup();
    r.warnings
        .sort_by(|a, b| (a.kind, &a.object, &a.message).cmp(&(b.kind, &b.object, &b.message)));
    r.warnings.dedup();
    r
}

fn check_namespaces(c: &mut Checker<'_>) {
    for (src, ns) in &c.inv.namespaces {
        if ns.namespace.is_none() {
            let source = c.spec.source_context.clone();
            c.refuse(
                format!("Namespace {src}"),
                Rule::SourceNamespaceMissing,
                format!("source namespace {src} does not exist on cluster {source}"),
                format!("check the name (kubectl --context {source} get namespaces)"),
            );
        }
    }
    for (src, dst) in c.spec.namespace_map() {
        if c.dest.namespaces.contains(&dst) {
            let cluster = c.cluster().to_owned();
            c.refuse(
                format!("Namespace {dst}"),
                Rule::DestinationNamespaceExists,
                format!("destination namespace {dst} already exists on cluster {cluster} (ferry creates every destination namespace itself, so it can roll back only what it made)"),
                format!("choose another name (--namespace {src}:{dst}-2) or delete {dst} first"),
            );
        }
    }
}

fn default_class(classes: &BTreeMap<String, Value>) -> Option<String> {
    classes
        .iter()
        .find(|(_, c)| {
            annotation(c, "storageclass.kubernetes.io/is-default-class") == Some("true")
                || annotation(c, "storageclass.beta.kubernetes.io/is-default-class") == Some("true")
        })
        .map(|(n, _)| n.clone())
}

/// The source driver of a PVC whose class is unknown: the PV's migration
/// annotation, else its CSI driver.
fn pv_driver(pv: Option<&Value>) -> Option<String> {
    let pv = pv?;
    annotation(pv, "pv.kubernetes.io/migrated-to")
        .or_else(|| str_at(pv, "/spec/csi/driver"))
        .map(str::to_owned)
}

fn check_volume(c: &mut Checker<'_>, pvc: &Value) -> VolumePlan {
    let src_ns = namespace(pvc).unwrap_or("").to_owned();
    let pvc_name = name(pvc).to_owned();
    let obj = object::display(pvc);
    let access_modes: Vec<AccessMode> = pvc
        .pointer("/spec/accessModes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().and_then(AccessMode::parse))
        .collect();
    let volume_mode = if str_at(pvc, "/spec/volumeMode") == Some("Block") {
        VolumeMode::Block
    } else {
        VolumeMode::Filesystem
    };
    let pv = c.inv.pv_of(pvc);
    let source_class = str_at(pvc, "/spec/storageClassName")
        .filter(|s| !s.is_empty())
        .or_else(|| {
            pv.and_then(|p| str_at(p, "/spec/storageClassName"))
                .filter(|s| !s.is_empty())
        })
        .map(str::to_owned)
        .or_else(|| default_class(&c.inv.storage_classes));
    let mut plan = VolumePlan {
        destination_namespace: c
            .spec
            .destination_of(&src_ns)
            .unwrap_or_else(|| src_ns.clone()),
        source_namespace: src_ns.clone(),
        pvc: pvc_name.clone(),
        destination_class: source_class.as_deref().map(|s| c.spec.destination_class(s)),
        source_class: source_class.clone(),
        driver: None,
        access_modes: access_modes.clone(),
        volume_mode,
        size: str_at(pvc, "/spec/resources/requests/storage").map(str::to_owned),
        path: None,
        snapshot_class: None,
    };
    let Some(src_class_name) = source_class else {
        c.refuse(
            obj,
            Rule::StorageClassMissing,
            "the PVC names no storage class and the source has no default class, so there is no class to keep or map",
            "give the PVC a storageClassName, or exclude it and copy its data yourself",
        );
        return plan;
    };
    let src_class = c.inv.storage_classes.get(&src_class_name);
    plan.driver = src_class.map(driver_identity).or_else(|| pv_driver(pv));
    let dst_class_name = c.spec.destination_class(&src_class_name);
    let mapped = dst_class_name != src_class_name;
    let cluster = c.cluster().to_owned();
    let Some(dst_class) = c.dest.storage_classes.get(&dst_class_name) else {
        let have: Vec<&str> = c.dest.storage_classes.keys().map(String::as_str).collect();
        c.refuse(
            format!("StorageClass {dst_class_name}"),
            Rule::StorageClassMissing,
            format!(
                "{obj} needs storage class {dst_class_name} ({}) on cluster {cluster}, which has no such class",
                if mapped { "mapped" } else { "kept" }
            ),
            format!("map it to an existing class with --storage-class {src_class_name}=CLASS (cluster {cluster} has: {})", list_or_none(&have)),
        );
        return plan;
    };

    // A non-clonable driver cannot even be snapshotted: it must be mapped,
    // and is then copied live.
    let non_clonable =
        src_class.is_some_and(|sc| c.config.non_clonable.iter().any(|d| d.matches_class(sc)));
    if non_clonable && !mapped {
        c.refuse(
            obj.clone(),
            Rule::NonClonableDriverKept,
            format!(
                "storage class {src_class_name} is backed by {}, which cannot be cloned, and the clone keeps the class",
                plan.driver.as_deref().unwrap_or("a non-clonable driver")
            ),
            format!("map it to a class of another driver with --storage-class {src_class_name}=CLASS; the data is then copied live through the mover"),
        );
        return plan;
    }

    let dst_cap: Option<Capability> = c.config.capabilities.for_class(dst_class).cloned();
    match &dst_cap {
        Some(cap) => {
            let offered: Vec<&str> = match volume_mode {
                VolumeMode::Filesystem => cap.filesystem.iter().map(|m| m.short()).collect(),
                VolumeMode::Block => cap.block.iter().map(|m| m.short()).collect(),
            };
            for m in &access_modes {
                if !cap.offers(*m, volume_mode) {
                    let prov = str_at(dst_class, "/provisioner").unwrap_or("?").to_owned();
                    c.refuse(
                        obj.clone(),
                        Rule::AccessModeNotOffered,
                        format!(
                            "the volume is {m} ({volume_mode:?}), and destination class {dst_class_name} ({prov}) offers only {} for {volume_mode:?} volumes",
                            list_or_none(&offered)
                        ),
                        format!("map {src_class_name} to a class that offers {m} (e.g. a file-storage class) with --storage-class {src_class_name}=CLASS"),
                    );
                }
            }
        }
        None => {
            let prov = str_at(dst_class, "/provisioner").unwrap_or("?").to_owned();
            c.warn(
                format!("StorageClass {dst_class_name}"),
                WarningKind::UnknownCapability,
                format!("provisioner {prov} is not in the capability table; access modes are not checked"),
                "describe it under [storage.capabilities] in the config",
            );
        }
    }

    // Can the source driver snapshot? The table says so (or, for a driver
    // it does not know, a snapshot class says so), and a snapshot class of
    // that driver exists to do it with.
    let src_cap = src_class
        .and_then(|sc| c.config.capabilities.for_class(sc))
        .cloned();
    let src_provisioner = src_class
        .and_then(|sc| str_at(sc, "/provisioner"))
        .map(str::to_owned)
        .or_else(|| pv_driver(pv));
    let snapshot_class = src_provisioner
        .as_deref()
        .and_then(|p| snapshot_class_for(&c.inv.volume_snapshot_classes, p));
    if src_cap.is_none()
        && let Some(sc) = src_class
    {
        c.warn(
            format!("StorageClass {src_class_name}"),
            WarningKind::UnknownCapability,
            format!(
                "provisioner {} is not in the capability table; snapshots are assumed {}",
                str_at(sc, "/provisioner").unwrap_or("?"),
                if snapshot_class.is_some() {
                    "possible (a VolumeSnapshotClass exists for it)"
                } else {
                    "impossible"
                }
            ),
            "describe it under [storage.capabilities] in the config",
        );
    }
    let can_snapshot = !non_clonable
        && src_cap.as_ref().is_none_or(|cap| cap.snapshot)
        && snapshot_class.is_some();
    // A class deleted since the PVC was made still leaves its PV's driver.
    let same_driver = plan.driver.as_deref() == Some(driver_identity(dst_class).as_str());

    let path = if can_snapshot && c.spec.in_cluster() && same_driver {
        CopyPath::SnapshotInPlace
    } else if can_snapshot {
        CopyPath::SnapshotViaMover
    } else if access_modes.iter().any(|m| m.is_multi_node()) || c.spec.allow_live_copy {
        CopyPath::LiveViaMover
    } else {
        let why = if non_clonable {
            "its driver cannot be snapshotted".to_owned()
        } else if src_cap.as_ref().is_some_and(|cap| !cap.snapshot) {
            format!(
                "driver {} cannot snapshot",
                plan.driver.as_deref().unwrap_or("?")
            )
        } else {
            format!(
                "no VolumeSnapshotClass exists for driver {}",
                src_provisioner.as_deref().unwrap_or("?")
            )
        };
        c.refuse(
            obj.clone(),
            Rule::NoCopyPath,
            format!("{why}, and a live copy of a ReadWriteOnce volume is not allowed by default (a writer may change it mid-copy)"),
            "pass --allow-live-copy (best with a pre hook that quiesces the writer), or map the class to one whose driver snapshots",
        );
        return plan;
    };
    if path.uses_snapshot() {
        plan.snapshot_class = snapshot_class;
    }
    let users = c
        .inv
        .namespaces
        .get(&src_ns)
        .and_then(|n| n.claim_users.get(&pvc_name))
        .cloned()
        .unwrap_or_default();
    if path == CopyPath::LiveViaMover
        && access_modes.contains(&AccessMode::ReadWriteOncePod)
        && !users.is_empty()
    {
        let source = c.spec.source_context.clone();
        c.refuse(
            obj.clone(),
            Rule::LiveVolumeInUse,
            format!(
                "the volume is ReadWriteOncePod and must be copied live (its driver cannot snapshot), and pod(s) {} mount it: no other pod may mount it while they run, the mover's included",
                users.join(", ")
            ),
            format!(
                "scale the workload using it to 0 for the clone (kubectl --context {source} -n {src_ns} scale ...; the copy then has 0 replicas too: scale both up after), or, if its driver can snapshot, give it a VolumeSnapshotClass: ferry then copies it from a snapshot"
            ),
        );
    }
    if path == CopyPath::LiveViaMover {
        let hooked = c.spec.hooks.iter().any(|h| h.stage == HookStage::Pre);
        c.warn(
            obj.clone(),
            WarningKind::LiveCopy,
            format!(
                "copied live, read-only, from the running volume: consistency rests on hooks{}",
                if hooked {
                    ""
                } else {
                    ", and the spec has no pre hook"
                }
            ),
            "add a pre hook that quiesces the application writing it",
        );
    }
    if path.uses_mover() && !c.config.mover_available {
        c.refuse(
            obj,
            Rule::MoverUnavailable,
            format!("the volume's copy path is \"{path}\", and the data mover is not available in this build; ferry never clones with empty volumes"),
            "clone within one cluster onto a class of the same snapshot-capable driver, or wait for the data mover",
        );
    }
    plan.path = Some(path);
    plan
}

fn snapshot_class_for(classes: &BTreeMap<String, Value>, driver: &str) -> Option<String> {
    let mut matching: Vec<(&String, &Value)> = classes
        .iter()
        .filter(|(_, c)| str_at(c, "/driver") == Some(driver))
        .collect();
    matching.sort_by_key(|(n, c)| {
        (
            annotation(c, "snapshot.storage.kubernetes.io/is-default-class") != Some("true"),
            n.as_str(),
        )
    });
    matching.first().map(|(n, _)| (*n).clone())
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn check_bucket(c: &mut Checker<'_>) {
    let movers: Vec<String> = c
        .report
        .volumes
        .iter()
        .filter(|v| v.path.is_some_and(CopyPath::uses_mover))
        .map(|v| format!("{}/{}", v.source_namespace, v.pvc))
        .collect();
    if let Some(b) = &c.spec.bucket
        && !c.config.buckets.contains(b)
    {
        let have: Vec<&str> = c.config.buckets.iter().map(String::as_str).collect();
        let b = b.clone();
        c.refuse(
            format!("bucket {b}"),
            Rule::UnknownBucket,
            format!("the spec names bucket {b}, which the config does not define"),
            format!(
                "name a configured bucket ({}) or add {b} under [buckets] in the config",
                list_or_none(&have)
            ),
        );
    }
    let bucket = c
        .spec
        .bucket
        .clone()
        .or_else(|| c.config.default_bucket.clone());
    if movers.is_empty() {
        return;
    }
    match bucket {
        Some(b) => c.report.bucket = Some(b),
        None => {
            let first = movers[0].clone();
            c.refuse(
                format!("PersistentVolumeClaim {first}"),
                Rule::NoBucket,
                format!("{} volume(s) go through the data mover ({}), which needs a bucket, and neither the spec nor the config names one", movers.len(), movers.join(", ")),
                "pass --bucket NAME, or set default_bucket in the config",
            );
        }
    }
}

/// The namespace label that sets the PodSecurity level the API server
/// enforces on pods there.
pub const POD_SECURITY_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Mover pods run `tar` as root (to read every file and keep owners), with
/// privilege escalation off and the runtime's default seccomp profile:
/// PodSecurity `baseline` admits them, `restricted` (non-root only) does
/// not. A source namespace enforcing `restricted` refuses them, and so does
/// its copy, which carries the source's labels.
fn check_pod_security(c: &mut Checker<'_>) {
    let mut movers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in &c.report.volumes {
        if v.path.is_some_and(CopyPath::uses_mover) {
            movers
                .entry(v.source_namespace.clone())
                .or_default()
                .push(v.pvc.clone());
        }
    }
    for (ns, pvcs) in movers {
        let level = c
            .inv
            .namespaces
            .get(&ns)
            .and_then(|n| n.namespace.as_ref())
            .and_then(|n| n.pointer("/metadata/labels"))
            .and_then(|l| l.get(POD_SECURITY_ENFORCE_LABEL))
            .and_then(Value::as_str);
        if level != Some("restricted") {
            continue;
        }
        let source = c.spec.source_context.clone();
        let dst = c.spec.destination_of(&ns).unwrap_or_else(|| ns.clone());
        c.refuse(
            format!("Namespace {ns}"),
            Rule::MoverPodForbidden,
            format!(
                "namespace {ns} enforces PodSecurity \"restricted\" ({POD_SECURITY_ENFORCE_LABEL}), and its copy {dst} would too; volume(s) {} go through the data mover, whose pods run tar as root to read every file and keep owners, which \"restricted\" forbids",
                pvcs.join(", ")
            ),
            format!(
                "lower the level to baseline for the clone (kubectl --context {source} label namespace {ns} {POD_SECURITY_ENFORCE_LABEL}=baseline --overwrite; the copy takes the label as it is then) and raise it again on both afterwards, or keep these volumes on a storage class that can snapshot in the same cluster"
            ),
        );
    }
}

/// What `pod` counts against quota key `key`: its containers' requests
/// (a request not given is its limit) or limits, or 1 for `pods`.
fn pod_amount(pod: &Value, key: &str) -> f64 {
    if matches!(key, "pods" | "count/pods") {
        return 1.0;
    }
    let (part, resource) = match key.split_once('.') {
        Some((p, r)) => (p, r),
        None => ("requests", key),
    };
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let get = |p: &str| {
                c.pointer(&format!("/resources/{p}/{resource}"))
                    .and_then(Value::as_str)
                    .and_then(crate::quantity::parse)
            };
            match part {
                "requests" => get("requests").or_else(|| get("limits")),
                _ => get("limits"),
            }
        })
        .sum()
}

/// What the namespace's `claims` use of quota `key`, for the claim keys
/// (counts and requested storage, in all or in one class); `None` for
/// others.
fn claims_used(claims: &[Value], key: &str) -> Option<f64> {
    let (class, what) = match key.split_once(".storageclass.storage.k8s.io/") {
        Some((class, what)) => (Some(class), what),
        None => (None, key),
    };
    let of_class = claims
        .iter()
        .filter(|c| class.is_none() || str_at(c, "/spec/storageClassName") == class);
    match what {
        "persistentvolumeclaims" | "count/persistentvolumeclaims" => Some(of_class.count() as f64),
        "requests.storage" => Some(
            of_class
                .filter_map(|c| str_at(c, "/spec/resources/requests/storage"))
                .filter_map(crate::quantity::parse)
                .sum(),
        ),
        _ => None,
    }
}

/// Whether quota `q` holds the mover's pods: they do not terminate on
/// their own, give resources (not best effort), have no priority class and
/// no cross-namespace affinity. A quota scoped otherwise does not count
/// them.
fn quota_applies(q: &Value) -> bool {
    let scopes = q
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    for scope in scopes {
        if matches!(
            scope,
            "Terminating" | "BestEffort" | "CrossNamespacePodAffinity" | "PriorityClass"
        ) {
            return false;
        }
    }
    let exprs = q
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for e in exprs {
        let (scope, op) = (str_at(e, "/scopeName"), str_at(e, "/operator"));
        match (scope, op) {
            (Some("Terminating" | "BestEffort" | "CrossNamespacePodAffinity"), Some("Exists"))
            | (Some("NotTerminating" | "NotBestEffort"), Some("DoesNotExist"))
            | (Some("PriorityClass"), Some("In" | "Exists")) => return false,
            _ => {}
        }
    }
    true
}

/// Mover pods run in the source namespaces (one per volume there that goes
/// through the mover, all at once at worst), each volume copied from a
/// snapshot with a temporary PVC there too: each ResourceQuota there that
/// holds them must have room, over what is used now (the quota's
/// `status.used`, else the sum over the pods preflight listed), and must
/// not require a resource `mover_resources` does not give; each LimitRange
/// must admit `mover_resources`. The destination's quotas are applied
/// after the volumes, so they never hold a mover pod.
fn check_quotas(c: &mut Checker<'_>) {
    #[derive(Default)]
    struct Need {
        pods: usize,
        claims: Vec<(Option<String>, f64)>,
    }
    let mut needs: BTreeMap<String, Need> = BTreeMap::new();
    for v in &c.report.volumes {
        let Some(path) = v.path.filter(|p| p.uses_mover()) else {
            continue;
        };
        let n = needs.entry(v.source_namespace.clone()).or_default();
        n.pods += 1;
        if path == CopyPath::SnapshotViaMover {
            let size = v.size.as_deref().and_then(crate::quantity::parse);
            n.claims.push((v.source_class.clone(), size.unwrap_or(0.0)));
        }
    }
    for (ns, need) in needs {
        let Some(inv) = c.inv.namespaces.get(&ns) else {
            continue;
        };
        let ranges: Vec<&Value> = inv
            .pod_limits
            .iter()
            .filter(|o| is(o, "", "LimitRange"))
            .collect();
        let res = effective_resources(&c.config.mover_resources, &ranges);
        let count = need.pods;
        let mut found = Vec::new();
        for q in inv
            .pod_limits
            .iter()
            .filter(|o| is(o, "", "ResourceQuota") && quota_applies(o))
        {
            let hard = q.pointer("/spec/hard").and_then(Value::as_object);
            for (key, limit) in hard.into_iter().flatten() {
                let Some(limit) = limit.as_str().and_then(crate::quantity::parse) else {
                    continue;
                };
                let claims_of = |class: Option<&str>| -> Vec<f64> {
                    need.claims
                        .iter()
                        .filter(|(c, _)| class.is_none() || c.as_deref() == class)
                        .map(|(_, size)| *size)
                        .collect()
                };
                let class_key = key.split_once(".storageclass.storage.k8s.io/");
                let amount = match (key.as_str(), class_key) {
                    ("persistentvolumeclaims" | "count/persistentvolumeclaims", _) => {
                        Some(claims_of(None).len() as f64)
                    }
                    ("requests.storage", _) => Some(claims_of(None).iter().sum()),
                    (_, Some((class, "persistentvolumeclaims"))) => {
                        Some(claims_of(Some(class)).len() as f64)
                    }
                    (_, Some((class, "requests.storage"))) => {
                        Some(claims_of(Some(class)).iter().sum())
                    }
                    (k, _)
                        if matches!(k, "cpu" | "memory")
                            || k.starts_with("requests.")
                            || k.starts_with("limits.") =>
                    {
                        match res.amount(k) {
                            Some(per_pod) => Some(per_pod * count as f64),
                            None if k.ends_with("cpu") || k.ends_with("memory") => {
                                found.push(format!(
                                    "ResourceQuota {} requires {k} of every pod, and mover_resources gives none",
                                    name(q)
                                ));
                                None
                            }
                            None => None,
                        }
                    }
                    (k, _) => res.amount(k).map(|per_pod| per_pod * count as f64),
                };
                let Some(need_now) = amount.filter(|a| *a > 0.0) else {
                    continue;
                };
                let used = q
                    .pointer("/status/used")
                    .and_then(|u| u.get(key))
                    .and_then(Value::as_str)
                    .and_then(crate::quantity::parse)
                    .unwrap_or_else(|| {
                        claims_used(&inv.pvcs, key).unwrap_or_else(|| {
                            inv.running_pods.iter().map(|p| pod_amount(p, key)).sum()
                        })
                    });
                if used + need_now > limit * (1.0 + 1e-9) {
                    let memory = key.contains("memory") || key.contains("storage");
                    let show = |v: f64| crate::quantity::display(v, memory);
                    found.push(format!(
                        "ResourceQuota {} allows {key}={} with {} used, and the mover's pods and temporary claims there need {}",
                        name(q),
                        show(limit),
                        show(used),
                        show(need_now)
                    ));
                }
            }
        }
        if !found.is_empty() {
            c.refuse(
                format!("Namespace {ns}"),
                Rule::MoverPodExceedsQuota,
                format!(
                    "the data mover runs {count} pod(s) in namespace {ns} during the clone, and its quota has no room for them: {}",
                    found.join("; ")
                ),
                "raise the quota for the clone, or give mover pods less (mover_resources in the daemon's config)",
            );
        }
        let outside: Vec<String> = ranges
            .iter()
            .flat_map(|lr| limit_range_problems(lr, &res))
            .collect();
        if !outside.is_empty() {
            c.refuse(
                format!("Namespace {ns}"),
                Rule::MoverPodOutsideLimitRange,
                format!(
                    "namespace {ns}'s limits refuse the data mover's pods: {}",
                    outside.join("; ")
                ),
                "set mover_resources in the daemon's config within the LimitRange, or widen it for the clone",
            );
        }
    }
}

/// The resources a mover pod ends up with in a namespace with LimitRanges
/// `ranges`, as the API server fills them in: a request not given is its
/// limit; then each `Container` item's `default` (else its `max`) fills a
/// missing limit, and its `defaultRequest` (else that default, else its
/// `min`) a missing request.
fn effective_resources(res: &MoverResources, ranges: &[&Value]) -> MoverResources {
    let mut e = res.clone();
    for (k, v) in &res.limits {
        e.requests.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let items = ranges
        .iter()
        .flat_map(|lr| {
            lr.pointer("/spec/limits")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|i| str_at(i, "/type") == Some("Container"));
    for item in items {
        let field = |f: &str, r: &str| item.pointer(&format!("/{f}/{r}")).and_then(Value::as_str);
        for r in ["cpu", "memory"] {
            let default = field("default", r).or_else(|| field("max", r));
            if let Some(d) = default {
                e.limits.entry(r.to_owned()).or_insert_with(|| d.to_owned());
            }
            let default_request = field("defaultRequest", r)
                .or(default)
                .or_else(|| field("min", r));
            if let Some(d) = default_request {
                e.requests
                    .entry(r.to_owned())
                    .or_insert_with(|| d.to_owned());
            }
        }
    }
    e
}

/// Where the mover pod's resources `res` (as [`effective_resources`] fills
/// them) fall outside LimitRange `lr`'s `Container` and `Pod` items (one
/// container: the same sums), in the API server's terms.
fn limit_range_problems(lr: &Value, res: &MoverResources) -> Vec<String> {
    let mut out = Vec::new();
    let get =
        |m: &BTreeMap<String, String>, r: &str| m.get(r).and_then(|v| crate::quantity::parse(v));
    for item in lr
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| matches!(str_at(i, "/type"), Some("Container" | "Pod")))
    {
        let per = str_at(item, "/type").unwrap_or("Container");
        let bound = |field: &str, r: &str| {
            item.pointer(&format!("/{field}/{r}"))
                .and_then(Value::as_str)
                .and_then(crate::quantity::parse)
        };
        for r in ["cpu", "memory"] {
            let memory = r == "memory";
            let show = |v: f64| crate::quantity::display(v, memory);
            let (request, limit) = (get(&res.requests, r), get(&res.limits, r));
            if let Some(max) = bound("max", r) {
                match limit {
                    Some(l) if l > max * (1.0 + 1e-9) => out.push(format!(
                        "LimitRange {}: maximum {r} usage per {per} is {}, but the mover's limit is {}",
                        name(lr),
                        show(max),
                        show(l)
                    )),
                    None => out.push(format!(
                        "LimitRange {}: a {per} must give a {r} limit (at most {}), and mover_resources gives none",
                        name(lr),
                        show(max)
                    )),
                    _ => {}
                }
            }
            if let Some(min) = bound("min", r) {
                match request {
                    Some(req) if req < min * (1.0 - 1e-9) => out.push(format!(
                        "LimitRange {}: minimum {r} usage per {per} is {}, but the mover's request is {}",
                        name(lr),
                        show(min),
                        show(req)
                    )),
                    None => out.push(format!(
                        "LimitRange {}: minimum {r} usage per {per} is {}, and the mover gives no request",
                        name(lr),
                        show(min)
                    )),
                    _ => {}
                }
            }
            if let Some(ratio) = bound("maxLimitRequestRatio", r) {
                match (request, limit) {
                    (Some(req), Some(l)) if req > 0.0 && l / req > ratio * (1.0 + 1e-9) => {
                        out.push(format!(
                            "LimitRange {}: {r} max limit to request ratio per {per} is {ratio}, but the mover's is {}",
                            name(lr),
                            l / req
                        ))
                    }
                    (Some(_), Some(_)) => {}
                    _ => out.push(format!(
                        "LimitRange {}: {r} max limit to request ratio per {per} is {ratio}, and the mover gives no {}",
                        name(lr),
                        if request.is_none() { "request" } else { "limit" }
                    )),
                }
            }
        }
    }
    out
}

fn check_cluster_objects(c: &mut Checker<'_>) {
    let cluster = c.cluster().to_owned();
    let in_cluster = c.spec.in_cluster();
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();
    for d in &c.inv.dependencies {
        let o = &d.object;
        let (g, k, n) = (object::group(o), kind(o), name(o));
        if !c.dest.has(g, k, n) {
            continue;
        }
        let astra_kind = matches!(
            (g, k),
            ("networking.k8s.io", "IngressClass")
                | (
                    "admissionregistration.k8s.io",
                    "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration"
                )
        );
        if astra_kind {
            refusals.push((
                object::display(o),
                format!("the app includes {k} {n} ({}), which already exists on cluster {cluster}", d.reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
                format!("exclude it (--exclude kind={k}) so the clone uses the destination's, or remove it from cluster {cluster}"),
            ));
        } else if !in_cluster && !is(o, "rbac.authorization.k8s.io", "ClusterRoleBinding") {
            warnings.push((
                object::display(o),
                format!("already exists on cluster {cluster} and is left as it is (never patched); the app gets the destination's version"),
                "compare the two if the app needs a particular version".to_owned(),
            ));
        }
    }
    for (o, m, f) in refusals {
        c.refuse(o, Rule::ClusterObjectExists, m, f);
    }
    for (o, m, f) in warnings {
        c.warn(o, WarningKind::DependencyExists, m, f);
    }
}

fn check_dependencies(c: &mut Checker<'_>) {
    let cluster = c.cluster().to_owned();
    let mut crs: BTreeMap<GroupKind, Vec<String>> = BTreeMap::new();
    let mut missing = Vec::new();
    for o in c.inv.objects() {
        let gk = object::group_kind(o);
        if c.inv.custom_kinds.contains_key(&gk) {
            crs.entry(gk).or_default().push(object::display(o));
        }
        if is(o, "networking.k8s.io", "Ingress")
            && let Some(class) = ingress_class_of(o)
            && !c.inv.carries("networking.k8s.io", "IngressClass", class)
            && !c.dest.has("networking.k8s.io", "IngressClass", class)
        {
            missing.push((
                object::display(o),
                format!("the Ingress names IngressClass {class}, which the clone does not carry and cluster {cluster} does not have"),
                format!("include IngressClass {class} (drop the filter that excludes it), create it on cluster {cluster}, or change spec.ingressClassName with a transform"),
            ));
        }
        if is(o, "rbac.authorization.k8s.io", "RoleBinding")
            && str_at(o, "/roleRef/kind") == Some("ClusterRole")
            && let Some(role) = str_at(o, "/roleRef/name")
            && !c
                .inv
                .carries("rbac.authorization.k8s.io", "ClusterRole", role)
            && !c.dest.has("rbac.authorization.k8s.io", "ClusterRole", role)
        {
            missing.push((
                object::display(o),
                format!("the RoleBinding grants ClusterRole {role}, which the clone does not carry and cluster {cluster} does not have"),
                format!("include ClusterRole {role} (drop the filter that excludes it) or create it on cluster {cluster}"),
            ));
        }
    }
    for (gk, objs) in crs {
        let crd = c.inv.custom_kinds[&gk].clone();
        if c.inv
            .carries("apiextensions.k8s.io", "CustomResourceDefinition", &crd)
            || c.dest.custom_kinds.contains(&gk)
        {
            continue;
        }
        missing.push((
            format!("CustomResourceDefinition {crd}"),
            format!("{} of the app ({}) need CRD {crd}, which the clone does not carry and cluster {cluster} does not have", gk, objs.join(", ")),
            format!("include the CRD (drop the filter that excludes it), install it on cluster {cluster}, or exclude kind {}", gk.kind),
        ));
    }
    for (o, m, f) in missing {
        c.refuse(o, Rule::MissingDependency, m, f);
    }
}

fn warn_hazards(c: &mut Checker<'_>) {
    let in_cluster = c.spec.in_cluster();
    let cluster = c.cluster().to_owned();
    let dns = (!c.spec.rewrite_service_dns).then(|| ServiceDns::new(&c.spec.namespace_map()));
    let transforms = TransformContext::new(c.spec, "preflight", "preflight").ok();
    let mut out = Vec::new();
    for o in c.inv.objects() {
        let obj = object::display(o);
        if in_cluster && is(o, "networking.k8s.io", "Ingress") {
            // Hosts the user's transforms leave as they are.
            let after = transforms
                .as_ref()
                .and_then(|ctx| transform_object(ctx, o).ok());
            let after_hosts = after.as_ref().map(ingress_hosts).unwrap_or_default();
            let hosts: BTreeSet<&str> = ingress_hosts(o)
                .intersection(&after_hosts)
                .copied()
                .collect();
            if !hosts.is_empty() {
                let hosts: Vec<&str> = hosts.into_iter().collect();
                out.push((
                    obj.clone(),
                    WarningKind::DuplicateIngressHost,
                    format!("host(s) {} will be served by both copies on cluster {cluster}", hosts.join(", ")),
                    "rewrite the hosts with a transform, e.g. {\"op\":\"replace\",\"path\":\"/spec/rules/0/host\",\"value\":\"copy.example.com\"}".to_owned(),
                ));
            }
        }
        if is(o, "batch", "CronJob")
            && !c.spec.suspend_cronjobs
            && o.pointer("/spec/suspend").and_then(Value::as_bool) != Some(true)
        {
            out.push((
                obj.clone(),
                WarningKind::CronJobFiresTwice,
                format!(
                    "schedule {:?} will fire in both copies{}",
                    str_at(o, "/spec/schedule").unwrap_or("?"),
                    if in_cluster {
                        format!(" on cluster {cluster}")
                    } else {
                        String::new()
                    }
                ),
                "pass --suspend-cronjobs (resume the copy's CronJobs when ready)".to_owned(),
            ));
        }
        if let Some(dns) = &dns {
            for r in dns.find(o) {
                let reach = if in_cluster {
                    "would reach the source"
                } else {
                    "names a namespace of the source cluster"
                };
                out.push((
                    obj.clone(),
                    WarningKind::SourceServiceReference,
                    format!(
                        "{} holds {}, which {reach} (namespace {})",
                        r.field, r.host, r.namespace
                    ),
                    "pass --rewrite-service-dns, or rewrite it with a transform".to_owned(),
                ));
            }
        }
    }
    for (o, k, m, f) in out {
        c.warn(o, k, m, f);
    }
}

fn ingress_hosts(ingress: &Value) -> BTreeSet<&str> {
    let mut hosts: BTreeSet<&str> = BTreeSet::new();
    for r in ingress
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        hosts.extend(str_at(r, "/host"));
    }
    for t in ingress
        .pointer("/spec/tls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        hosts.extend(
            t.get("hosts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        );
    }
    hosts
}

fn warn_hooks(c: &mut Checker<'_>) {
    use crate::selector::LabelSelector;
    let mut out = Vec::new();
    for h in &c.spec.hooks {
        let Ok(sel) = h
            .pod_selector
            .as_deref()
            .map(LabelSelector::parse)
            .transpose()
        else {
            continue;
        };
        let Ok(ns_re) = h.namespace.as_deref().map(regex::Regex::new).transpose() else {
            continue;
        };
        let Ok(img_re) = h
            .container_image
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
        else {
            continue;
        };
        let matches = c.inv.objects().any(|o| {
            let Some(ptr) = object::pod_spec_pointers(o).first().copied() else {
                return false;
            };
            let src = namespace(o).unwrap_or("");
            let ns_for_filter = match h.stage {
                HookStage::Pre => src.to_owned(),
                HookStage::Post => c.spec.destination_of(src).unwrap_or_default(),
            };
            let meta_ptr = ptr
                .strip_suffix("/spec")
                .map(|m| format!("{m}/metadata/labels"))
                .unwrap_or_else(|| "/metadata/labels".into());
            let labels = object::string_map(o.pointer(&meta_ptr));
            let images = o
                .pointer(&format!("{ptr}/containers"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| str_at(c, "/image"));
            ns_re.as_ref().is_none_or(|r| r.is_match(&ns_for_filter))
                && sel.as_ref().is_none_or(|s| s.matches(&labels))
                && img_re
                    .as_ref()
                    .is_none_or(|r| images.into_iter().any(|i| r.is_match(i)))
        });
        if !matches {
            out.push((
                format!("hook {}", h.name),
                format!("the {:?} hook matches no pod template of the app, so it will run nowhere", h.stage),
                "check its podSelector, containerImage and namespace (post hooks match the destination namespace)".to_owned(),
            ));
        }
    }
    for (o, m, f) in out {
        c.warn(o, WarningKind::HookMatchesNothing, m, f);
    }
}

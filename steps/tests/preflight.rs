//! Preflight: each refusal alone, several together, warnings, copy paths.

mod common;

use common::*;
use ferry_steps::capabilities::{
    AccessMode, Capability, CapabilityRule, CapabilityTable, DriverMatch,
};
use ferry_steps::inventory::Inventory;
use ferry_steps::object;
use ferry_steps::preflight::{
    CopyPath, DestinationFacts, PreflightConfig, PreflightReport, Rule, WarningKind, preflight,
};
use ferry_steps::spec::{CloneSpec, StorageClassMapping};
use serde_json::{Value, json};

fn pvc(name: &str, class: &str, modes: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "resourceVersion": "7"},
        "spec": {"accessModes": modes, "storageClassName": class, "resources": {"requests": {"storage": "2Gi"}}},
        "status": {"phase": "Bound"}})
}

fn run(
    spec: &CloneSpec,
    extra: Vec<Value>,
    dest: &DestinationFacts,
    config: &PreflightConfig,
) -> PreflightReport {
    let mut objs = source_objects();
    objs.extend(extra);
    let inv = Inventory::build(spec, objs).unwrap();
    preflight(spec, &inv, dest, config)
}

fn rules(r: &PreflightReport) -> Vec<Rule> {
    r.refusals.iter().map(|x| x.rule).collect()
}

fn path_of(r: &PreflightReport, pvc: &str) -> Option<CopyPath> {
    r.volumes.iter().find(|v| v.pvc == pvc).unwrap().path
}

fn map_class(spec: &mut CloneSpec, src: &str, dst: &str) {
    spec.storage_classes.retain(|m| m.source != src);
    spec.storage_classes.push(StorageClassMapping {
        source: src.into(),
        destination: dst.into(),
    });
}

#[test]
fn the_in_cluster_clone_passes_with_both_volumes_in_place() {
    let r = run(&in_cluster_spec(), vec![], &same_cluster_facts(), &config());
    assert_eq!(r.refusals, vec![], "{:#?}", r.refusals);
    assert_eq!(r.warnings, vec![], "{:#?}", r.warnings);
    assert_eq!(path_of(&r, "data-db-0"), Some(CopyPath::SnapshotInPlace));
    assert_eq!(path_of(&r, "uploads"), Some(CopyPath::SnapshotInPlace));
    let db = r.volumes.iter().find(|v| v.pvc == "data-db-0").unwrap();
    assert_eq!(db.snapshot_class.as_deref(), Some("hostpath-snap"));
    assert_eq!(
        (db.source_class.as_deref(), db.destination_class.as_deref()),
        (Some("fast"), Some("fast-retain"))
    );
    assert_eq!(db.destination_namespace, "shop-copy");
    assert_eq!(r.bucket, None, "no volume needs the mover");
}

#[test]
fn refuses_an_existing_destination_namespace() {
    let mut dest = same_cluster_facts();
    dest.namespaces.insert("shop-copy".into());
    let r = run(&in_cluster_spec(), vec![], &dest, &config());
    assert_eq!(rules(&r), vec![Rule::DestinationNamespaceExists]);
    let x = &r.refusals[0];
    assert_eq!(x.object, "Namespace shop-copy");
    assert!(
        x.message.contains("already exists on cluster kind-prod"),
        "{x}"
    );
    assert!(x.fix.contains("--namespace shop:shop-copy-2"), "{x}");
}

#[test]
fn refuses_a_missing_storage_class() {
    let mut spec = in_cluster_spec();
    map_class(&mut spec, "fast", "platinum");
    let r = run(&spec, vec![], &same_cluster_facts(), &config());
    assert_eq!(rules(&r), vec![Rule::StorageClassMissing]);
    let x = &r.refusals[0];
    assert_eq!(x.object, "StorageClass platinum");
    assert!(
        x.message
            .contains("PersistentVolumeClaim shop/data-db-0 needs storage class platinum (mapped)"),
        "{x}"
    );
    assert!(
        x.fix.contains("--storage-class fast=CLASS") && x.fix.contains("fast-retain"),
        "{x}"
    );
}

#[test]
fn refuses_an_access_mode_the_class_does_not_offer() {
    // A class of the same driver that the config says is RWO only.
    let mut dest = same_cluster_facts();
    dest.storage_classes.insert(
        "nfs-rwo".into(),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "nfs-rwo"},
               "provisioner": "nfs.csi.k8s.io", "parameters": {"tier": "single"}}),
    );
    let config = PreflightConfig {
        capabilities: CapabilityTable::with_overrides(vec![CapabilityRule {
            driver: DriverMatch::provisioner("nfs.csi.k8s.io").param("tier", "single"),
            capability: Capability {
                filesystem: [AccessMode::ReadWriteOnce].into(),
                block: Default::default(),
                snapshot: true,
                clone: false,
            },
        }])
        .unwrap(),
        ..config()
    };
    let mut spec = in_cluster_spec();
    map_class(&mut spec, "shared", "nfs-rwo");
    let r = run(&spec, vec![], &dest, &config);
    assert_eq!(
        rules(&r),
        vec![Rule::AccessModeNotOffered],
        "{:#?}",
        r.refusals
    );
    let x = &r.refusals[0];
    assert_eq!(x.object, "PersistentVolumeClaim shop/uploads");
    assert!(
        x.message.contains("RWX") && x.message.contains("offers only RWO"),
        "{x}"
    );
}

#[test]
fn refuses_a_kept_non_clonable_driver() {
    let r = run(
        &in_cluster_spec(),
        vec![pvc("archive", "eco", &["ReadWriteMany"])],
        &same_cluster_facts(),
        &config(),
    );
    assert_eq!(rules(&r), vec![Rule::NonClonableDriverKept]);
    let x = &r.refusals[0];
    assert_eq!(x.object, "PersistentVolumeClaim shop/archive");
    assert!(
        x.message
            .contains("csi.trident.netapp.io/ontap-nas-economy"),
        "{x}"
    );
    assert!(x.fix.contains("--storage-class eco=CLASS"), "{x}");
}

#[test]
fn refuses_a_volume_with_no_copy_path() {
    let r = run(
        &in_cluster_spec(),
        vec![pvc("scratch", "efs", &["ReadWriteOnce"])],
        &same_cluster_facts(),
        &config(),
    );
    assert_eq!(rules(&r), vec![Rule::NoCopyPath]);
    let x = &r.refusals[0];
    assert!(
        x.message.contains("driver efs.csi.aws.com cannot snapshot"),
        "{x}"
    );
    assert!(x.fix.contains("--allow-live-copy"), "{x}");
}

#[test]
fn refuses_the_mover_without_a_bucket() {
    let config = PreflightConfig {
        mover_available: true,
        default_bucket: None,
        ..config()
    };
    let r = run(
        &in_cluster_spec(),
        vec![pvc("shared-files", "efs", &["ReadWriteMany"])],
        &same_cluster_facts(),
        &config,
    );
    assert_eq!(rules(&r), vec![Rule::NoBucket]);
    assert!(r.refusals[0].message.contains("shop/shared-files"));
    assert!(r.refusals[0].fix.contains("--bucket"));
}

#[test]
fn refuses_an_unknown_bucket() {
    let mut spec = in_cluster_spec();
    spec.bucket = Some("nope".into());
    let r = run(&spec, vec![], &same_cluster_facts(), &config());
    assert_eq!(rules(&r), vec![Rule::UnknownBucket]);
    assert!(r.refusals[0].fix.contains("backups"));
}

#[test]
fn refuses_a_clone_that_needs_the_missing_mover() {
    let r = run(&cross_cluster_spec(), vec![], &staging_facts(), &config());
    assert_eq!(
        rules(&r),
        vec![Rule::MoverUnavailable, Rule::MoverUnavailable],
        "{:#?}",
        r.refusals
    );
    for x in &r.refusals {
        assert!(
            x.message.contains("snapshot, via the mover")
                && x.message.contains("never clones with empty volumes"),
            "{x}"
        );
    }
    // With the mover, the same clone passes through the bucket.
    let r = run(
        &cross_cluster_spec(),
        vec![],
        &staging_facts(),
        &PreflightConfig {
            mover_available: true,
            ..config()
        },
    );
    assert_eq!(r.refusals, vec![]);
    assert_eq!(path_of(&r, "data-db-0"), Some(CopyPath::SnapshotViaMover));
    assert_eq!(r.bucket.as_deref(), Some("backups"));
}

#[test]
fn refuses_an_included_ingress_class_that_exists_on_the_destination() {
    let mut spec = in_cluster_spec();
    spec.exclude.clear();
    let r = run(&spec, vec![], &same_cluster_facts(), &config());
    assert_eq!(rules(&r), vec![Rule::ClusterObjectExists]);
    let x = &r.refusals[0];
    assert_eq!(x.object, "IngressClass.networking.k8s.io nginx");
    assert!(x.fix.contains("--exclude kind=IngressClass"), "{x}");
}

#[test]
fn refuses_an_included_webhook_configuration_that_exists_on_the_destination() {
    let hook = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "widget-validator"},
        "webhooks": [{"name": "v.example.com", "clientConfig": {"service": {"namespace": "shop", "name": "widget-webhook"}}}]});
    let mut objs = source_cluster();
    objs.push(hook.clone());
    let dest = DestinationFacts::from_objects("kind-prod", objs);
    let r = run(&in_cluster_spec(), vec![hook], &dest, &config());
    assert_eq!(rules(&r), vec![Rule::ClusterObjectExists]);
    assert_eq!(
        r.refusals[0].object,
        "ValidatingWebhookConfiguration.admissionregistration.k8s.io widget-validator"
    );
}

#[test]
fn refuses_missing_dependencies_not_carried() {
    let mut spec = in_cluster_spec();
    spec.exclude
        .push(serde_json::from_value(json!({"kind": "CustomResourceDefinition"})).unwrap());
    spec.exclude
        .push(serde_json::from_value(json!({"kind": "ClusterRole"})).unwrap());
    // A destination without the CRD, the IngressClass or the ClusterRole.
    let dest = DestinationFacts::from_objects(
        "kind-prod",
        source_cluster().into_iter().filter(|o| {
            !matches!(
                object::kind(o),
                "CustomResourceDefinition" | "IngressClass" | "ClusterRole"
            )
        }),
    );
    let r = run(&spec, vec![], &dest, &config());
    assert_eq!(
        rules(&r),
        vec![Rule::MissingDependency; 3],
        "{:#?}",
        r.refusals
    );
    let objects: Vec<&str> = r.refusals.iter().map(|x| x.object.as_str()).collect();
    assert_eq!(
        objects,
        vec![
            "CustomResourceDefinition widgets.example.com",
            "Ingress.networking.k8s.io shop/web",
            "RoleBinding.rbac.authorization.k8s.io shop/web-metrics",
        ]
    );
    assert!(
        r.refusals[0]
            .message
            .contains("Widget.example.com of the app (Widget.example.com shop/main)"),
        "{}",
        r.refusals[0]
    );
}

#[test]
fn several_refusals_are_all_reported_at_once() {
    let mut spec = in_cluster_spec();
    spec.exclude.clear();
    map_class(&mut spec, "fast", "platinum");
    map_class(&mut spec, "shared", "gp3");
    spec.bucket = Some("nope".into());
    let mut dest = same_cluster_facts();
    dest.namespaces.insert("shop-copy".into());
    let r = run(
        &spec,
        vec![
            pvc("archive", "eco", &["ReadWriteMany"]),
            pvc("scratch", "efs", &["ReadWriteOnce"]),
        ],
        &dest,
        &config(),
    );
    let got: Vec<(Rule, &str)> = r
        .refusals
        .iter()
        .map(|x| (x.rule, x.object.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Rule::DestinationNamespaceExists, "Namespace shop-copy"),
            (Rule::StorageClassMissing, "StorageClass platinum"),
            (
                Rule::AccessModeNotOffered,
                "PersistentVolumeClaim shop/uploads"
            ),
            (
                Rule::NonClonableDriverKept,
                "PersistentVolumeClaim shop/archive"
            ),
            (Rule::NoCopyPath, "PersistentVolumeClaim shop/scratch"),
            (Rule::UnknownBucket, "bucket nope"),
            (Rule::MoverUnavailable, "PersistentVolumeClaim shop/uploads"),
            (
                Rule::ClusterObjectExists,
                "IngressClass.networking.k8s.io nginx"
            ),
        ],
        "{:#?}",
        r.refusals
    );
    for x in &r.refusals {
        assert!(
            !x.object.is_empty() && !x.message.is_empty() && !x.fix.is_empty(),
            "{x}"
        );
        let line = x.to_string();
        assert!(
            line.contains(&format!("[rule {}]", x.rule)) && line.contains("fix: "),
            "{line}"
        );
    }
    assert!(r.is_refused());
}

#[test]
fn warns_about_in_cluster_hazards() {
    let mut spec = in_cluster_spec();
    spec.suspend_cronjobs = false;
    spec.rewrite_service_dns = false;
    spec.transforms.clear();
    let r = run(&spec, vec![], &same_cluster_facts(), &config());
    assert_eq!(r.refusals, vec![]);
    let w: Vec<(WarningKind, &str)> = r
        .warnings
        .iter()
        .map(|w| (w.kind, w.object.as_str()))
        .collect();
    assert_eq!(
        w,
        vec![
            (
                WarningKind::DuplicateIngressHost,
                "Ingress.networking.k8s.io shop/web"
            ),
            (WarningKind::CronJobFiresTwice, "CronJob.batch shop/report"),
            (
                WarningKind::SourceServiceReference,
                "ConfigMap shop/web-config"
            ),
            (
                WarningKind::SourceServiceReference,
                "CronJob.batch shop/report"
            ),
            (
                WarningKind::SourceServiceReference,
                "Deployment.apps shop/web"
            ),
            (
                WarningKind::SourceServiceReference,
                "Deployment.apps shop/web"
            ),
        ],
        "{:#?}",
        r.warnings
    );
    assert!(r.warnings[0].message.contains("shop.example.com"));
    assert!(r.warnings[1].fix.contains("--suspend-cronjobs"));
    assert!(
        r.warnings
            .iter()
            .any(|w| w.message.contains("/data/DATABASE_URL holds db.shop.svc"))
    );
    assert!(r.warnings[2].fix.contains("--rewrite-service-dns"));
}

#[test]
fn chooses_the_live_path_for_drivers_that_cannot_snapshot() {
    let cfg = PreflightConfig {
        mover_available: true,
        ..config()
    };
    let mut spec = in_cluster_spec();
    // RWX on a driver without snapshots: live. RWO too, when allowed.
    let r = run(
        &spec,
        vec![pvc("shared-files", "efs", &["ReadWriteMany"])],
        &same_cluster_facts(),
        &cfg,
    );
    assert_eq!(path_of(&r, "shared-files"), Some(CopyPath::LiveViaMover));
    assert!(
        r.warnings
            .iter()
            .any(|w| w.kind == WarningKind::LiveCopy && w.object.ends_with("shared-files"))
    );
    spec.allow_live_copy = true;
    let r = run(
        &spec,
        vec![pvc("scratch", "efs", &["ReadWriteOnce"])],
        &same_cluster_facts(),
        &cfg,
    );
    assert_eq!(path_of(&r, "scratch"), Some(CopyPath::LiveViaMover));
    assert_eq!(r.refusals, vec![]);
    // ontap-nas-economy mapped to another class: allowed, live.
    map_class(&mut spec, "eco", "shared");
    let r = run(
        &spec,
        vec![pvc("archive", "eco", &["ReadWriteMany"])],
        &same_cluster_facts(),
        &cfg,
    );
    assert_eq!(path_of(&r, "archive"), Some(CopyPath::LiveViaMover));
    assert_eq!(r.refusals, vec![]);
}

#[test]
fn chooses_snapshot_via_mover_for_another_driver_in_the_same_cluster() {
    let cfg = PreflightConfig {
        mover_available: true,
        ..config()
    };
    let mut spec = in_cluster_spec();
    map_class(&mut spec, "fast", "gp3");
    let r = run(&spec, vec![], &same_cluster_facts(), &cfg);
    assert_eq!(r.refusals, vec![]);
    assert_eq!(path_of(&r, "data-db-0"), Some(CopyPath::SnapshotViaMover));
    assert_eq!(path_of(&r, "uploads"), Some(CopyPath::SnapshotInPlace));
}

#[test]
fn unknown_provisioners_are_warned_about_not_refused() {
    let mut dest = same_cluster_facts();
    dest.storage_classes.insert(
        "mystery".into(),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "mystery"}, "provisioner": "mystery.example.com"}),
    );
    let mut spec = in_cluster_spec();
    map_class(&mut spec, "fast", "mystery");
    let r = run(
        &spec,
        vec![],
        &dest,
        &PreflightConfig {
            mover_available: true,
            ..config()
        },
    );
    assert_eq!(r.refusals, vec![]);
    assert!(r.warnings.iter().any(|w| w.kind == WarningKind::UnknownCapability && w.object == "StorageClass mystery"));
}

#[test]
fn a_hook_that_matches_nothing_is_warned_about() {
    let mut spec = in_cluster_spec();
    spec.hooks[1].namespace = Some("^shop$".into());
    let r = run(&spec, vec![], &same_cluster_facts(), &config());
    assert_eq!(
        r.warnings
            .iter()
            .map(|w| (w.kind, w.object.as_str()))
            .collect::<Vec<_>>(),
        vec![(WarningKind::HookMatchesNothing, "hook warm")],
        "post hooks match the destination namespace"
    );
}

#[test]
fn refuses_a_source_namespace_that_does_not_exist() {
    let mut spec = in_cluster_spec();
    spec.namespaces.push(
        serde_json::from_value(json!({"source": "shpo", "destination": "shpo-copy"})).unwrap(),
    );
    let r = run(&spec, vec![], &same_cluster_facts(), &config());
    assert_eq!(rules(&r), vec![Rule::SourceNamespaceMissing]);
    assert_eq!(r.refusals[0].object, "Namespace shpo");
    assert!(
        r.refusals[0]
            .message
            .contains("does not exist on cluster kind-prod")
    );
}

#[test]
fn config_from_settings_checks_the_default_bucket_and_expressions() {
    let ok = PreflightConfig::from_settings(
        vec![],
        None,
        ["b".to_owned()].into(),
        Some("b".into()),
        false,
    )
    .unwrap();
    assert_eq!(ok.non_clonable.len(), 1);
    let err = PreflightConfig::from_settings(
        vec![],
        None,
        ["b".to_owned()].into(),
        Some("c".into()),
        false,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("default_bucket: c is not among the configured buckets"),
        "{err}"
    );
    let bad = DriverMatch::provisioner("x").param("k", "(");
    assert!(
        PreflightConfig::from_settings(vec![], Some(vec![bad]), Default::default(), None, false)
            .is_err()
    );
}

#[test]
fn refuses_the_mover_in_a_namespace_that_enforces_restricted_pod_security() {
    use ferry_steps::preflight::POD_SECURITY_ENFORCE_LABEL;
    let cfg = PreflightConfig {
        mover_available: true,
        ..config()
    };
    let with_level = |spec: &CloneSpec, level: &str| {
        let mut objs = source_objects();
        for o in &mut objs {
            if o["kind"] == "Namespace" && o["metadata"]["name"] == "shop" {
                o["metadata"]["labels"][POD_SECURITY_ENFORCE_LABEL] = json!(level);
            }
        }
        let inv = Inventory::build(spec, objs).unwrap();
        preflight(spec, &inv, &same_cluster_facts(), &cfg)
    };
    // data-db-0 goes through the mover (another driver), uploads in place.
    let mut spec = in_cluster_spec();
    map_class(&mut spec, "fast", "gp3");
    let r = with_level(&spec, "restricted");
    assert_eq!(rules(&r), vec![Rule::MoverPodForbidden]);
    let x = &r.refusals[0];
    assert_eq!(x.object, "Namespace shop");
    assert!(
        x.message.contains("\"restricted\"")
            && x.message.contains("data-db-0")
            && !x.message.contains("uploads"),
        "{x}"
    );
    assert!(
        x.fix.contains(
            "label namespace shop pod-security.kubernetes.io/enforce=baseline --overwrite"
        ),
        "{x}"
    );
    // Baseline admits mover pods; without the mover, restricted is no matter.
    assert_eq!(with_level(&spec, "baseline").refusals, vec![]);
    assert_eq!(
        with_level(&in_cluster_spec(), "restricted").refusals,
        vec![]
    );
}

#[test]
fn refuses_a_live_read_write_once_pod_volume_that_a_pod_uses() {
    let cfg = PreflightConfig {
        mover_available: true,
        ..config()
    };
    let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "local-path"}, "provisioner": "rancher.io/local-path"});
    let mut facts_objs = source_cluster();
    facts_objs.push(class.clone());
    let facts = DestinationFacts::from_objects("kind-prod", facts_objs);
    // A ReplicaSet's pod (skipped from the copy, still a user of the claim).
    let user = |name: &str, phase: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "cache-7d9",
                    "uid": "rs", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "redis"}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "solo"}}]},
            "status": {"phase": phase}})
    };
    let mut spec = in_cluster_spec();
    spec.allow_live_copy = true;
    let r = run(
        &spec,
        vec![
            class.clone(),
            pvc("solo", "local-path", &["ReadWriteOncePod"]),
            user("cache-7d9-x2x", "Running"),
        ],
        &facts,
        &cfg,
    );
    assert_eq!(rules(&r), vec![Rule::LiveVolumeInUse]);
    let x = &r.refusals[0];
    assert!(
        x.object.ends_with("shop/solo") && x.message.contains("cache-7d9-x2x"),
        "{x}"
    );
    assert!(
        x.fix.contains("scale") && x.fix.contains("0 replicas"),
        "{x}"
    );
    // A finished pod holds nothing; nor does a pod of a ReadWriteOnce claim.
    let r = run(
        &spec,
        vec![
            class.clone(),
            pvc("solo", "local-path", &["ReadWriteOncePod"]),
            user("cache-7d9-old", "Succeeded"),
        ],
        &facts,
        &cfg,
    );
    assert_eq!(r.refusals, vec![]);
    let r = run(
        &spec,
        vec![
            class,
            pvc("solo", "local-path", &["ReadWriteOnce"]),
            user("cache-7d9-x2x", "Running"),
        ],
        &facts,
        &cfg,
    );
    assert_eq!(r.refusals, vec![]);
    assert_eq!(path_of(&r, "solo"), Some(CopyPath::LiveViaMover));
}

#[test]
fn refuses_mover_pods_that_the_source_namespace_quota_has_no_room_for() {
    use ferry_steps::preflight::MoverResources;
    let cfg = PreflightConfig {
        mover_available: true,
        ..config()
    };
    // data-db-0 goes through the mover (another driver).
    let mut spec = in_cluster_spec();
    map_class(&mut spec, "fast", "gp3");
    let quota = |hard: Value, used: Option<Value>| {
        let mut q = json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "compute", "namespace": "shop", "uid": "uid-q", "resourceVersion": "3"},
            "spec": {"hard": hard}});
        if let Some(u) = used {
            q["status"] = json!({"hard": q["spec"]["hard"].clone(), "used": u});
        }
        q
    };
    let with = |q: Value, cfg: &PreflightConfig| run(&spec, vec![q], &same_cluster_facts(), cfg);

    // Room for one mover pod (100m, 128Mi requested; 1 CPU, 1Gi limits).
    let roomy = quota(
        json!({"requests.cpu": "2", "limits.memory": "4Gi", "pods": "10"}),
        Some(json!({"requests.cpu": "1500m", "limits.memory": "3Gi", "pods": "4"})),
    );
    assert_eq!(with(roomy, &cfg).refusals, vec![]);

    // Its status says 3.5Gi of 4Gi limits.memory are used: no room for 1Gi.
    let full = quota(
        json!({"requests.cpu": "2", "limits.memory": "4Gi"}),
        Some(json!({"requests.cpu": "1", "limits.memory": "3584Mi"})),
    );
    let r = with(full.clone(), &cfg);
    assert_eq!(rules(&r), vec![Rule::MoverPodExceedsQuota]);
    let x = &r.refusals[0];
    assert_eq!(x.object, "Namespace shop");
    assert!(
        x.message
            .contains("ResourceQuota compute allows limits.memory=4Gi with 3584Mi used, and the mover's pods and temporary claims there need 1Gi")
            && !x.message.contains("requests.cpu"),
        "{x}"
    );
    assert!(x.fix.contains("mover_resources"), "{x}");

    // Smaller mover pods fit.
    let mut small = cfg.clone();
    small.mover_resources = MoverResources {
        requests: [
            ("cpu".into(), "100m".into()),
            ("memory".into(), "64Mi".into()),
        ]
        .into(),
        limits: [
            ("cpu".into(), "500m".into()),
            ("memory".into(), "256Mi".into()),
        ]
        .into(),
    };
    assert_eq!(with(full, &small).refusals, vec![]);

    // Without a status, the pods listed say what is used: the app's pods
    // hold 1950m of a 2-CPU requests.cpu quota.
    let pod = |name: &str, cpu: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"phase": "Running"}})
    };
    let r = run(
        &spec,
        vec![
            quota(json!({"requests.cpu": "2"}), None),
            pod("a", "1"),
            pod("b", "950m"),
        ],
        &same_cluster_facts(),
        &cfg,
    );
    assert_eq!(rules(&r), vec![Rule::MoverPodExceedsQuota]);
    assert!(
        r.refusals[0]
            .message
            .contains("requests.cpu=2 with 1950m used"),
        "{}",
        r.refusals[0]
    );
    // Bad resources in the config are named.
    let bad = MoverResources {
        requests: [("cpu".into(), "2".into())].into(),
        limits: [("cpu".into(), "1".into())].into(),
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("mover_resources.requests.cpu")
    );
}

#[test]
fn quota_scopes_claims_required_resources_and_limit_ranges_are_checked_for_the_mover() {
    use ferry_steps::preflight::MoverResources;
    let cfg = PreflightConfig {
        mover_available: true,
        ..config()
    };
    // data-db-0 goes through the mover from a snapshot: a mover pod and a
    // temporary claim in shop.
    let mut spec = in_cluster_spec();
    map_class(&mut spec, "fast", "gp3");
    let obj = |kind: &str, name: &str, spec_: Value| {
        json!({"apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "resourceVersion": "3"},
            "spec": spec_})
    };
    let check =
        |extra: Vec<Value>, cfg: &PreflightConfig| run(&spec, extra, &same_cluster_facts(), cfg);

    // A quota for best-effort pods does not hold mover pods.
    let scoped = obj(
        "ResourceQuota",
        "be",
        json!({"hard": {"pods": "0"}, "scopes": ["BestEffort"]}),
    );
    assert_eq!(check(vec![scoped], &cfg).refusals, vec![]);
    // One that does, with no room for one more pod.
    let pods = obj("ResourceQuota", "count", json!({"hard": {"pods": "0"}}));
    assert_eq!(
        rules(&check(vec![pods], &cfg)),
        vec![Rule::MoverPodExceedsQuota]
    );
    // No room for the temporary claim.
    let claims = obj(
        "ResourceQuota",
        "claims",
        json!({"hard": {"persistentvolumeclaims": "0"}}),
    );
    let r = check(vec![claims], &cfg);
    assert_eq!(rules(&r), vec![Rule::MoverPodExceedsQuota]);
    assert!(
        r.refusals[0].message.contains("persistentvolumeclaims=0"),
        "{}",
        r.refusals[0]
    );
    // A quota on limits.cpu, and mover pods configured without a CPU limit.
    let mut no_cpu_limit = cfg.clone();
    no_cpu_limit.mover_resources = MoverResources {
        requests: [("cpu".into(), "100m".into())].into(),
        limits: [("memory".into(), "1Gi".into())].into(),
    };
    let cpu = obj(
        "ResourceQuota",
        "cpu",
        json!({"hard": {"limits.cpu": "10"}}),
    );
    let r = check(vec![cpu], &no_cpu_limit);
    assert!(
        r.refusals[0]
            .message
            .contains("requires limits.cpu of every pod, and mover_resources gives none"),
        "{}",
        r.refusals[0]
    );
    // A LimitRange default fills the limit the config leaves out, as the
    // API server would.
    let cpu = obj(
        "ResourceQuota",
        "cpu",
        json!({"hard": {"limits.cpu": "10"}}),
    );
    let defaults = obj(
        "LimitRange",
        "defaults",
        json!({"limits": [{"type": "Container", "default": {"cpu": "500m"}}]}),
    );
    assert_eq!(check(vec![cpu, defaults], &no_cpu_limit).refusals, vec![]);
    // Without a status, the claims listed say what a claim quota holds: the
    // app's own claims already fill it.
    let claims = obj(
        "ResourceQuota",
        "claims",
        json!({"hard": {"persistentvolumeclaims": "2"}}),
    );
    let r = check(vec![claims], &cfg);
    assert_eq!(rules(&r), vec![Rule::MoverPodExceedsQuota]);
    assert!(
        r.refusals[0]
            .message
            .contains("persistentvolumeclaims=2 with 2 used"),
        "{}",
        r.refusals[0]
    );
    // A quota the clone leaves out (excluded kinds) still holds the pods.
    let mut excluding = spec.clone();
    excluding
        .exclude
        .push(serde_json::from_value(json!({"kind": "ResourceQuota"})).unwrap());
    let pods = obj("ResourceQuota", "count", json!({"hard": {"pods": "0"}}));
    let r = run(&excluding, vec![pods], &same_cluster_facts(), &cfg);
    assert_eq!(rules(&r), vec![Rule::MoverPodExceedsQuota]);

    // LimitRanges: a container maximum below the mover's limit, and the
    // common ratio defaults (10 for CPU, 8 for memory), which the defaults meet.
    let lr = |limits: Value| obj("LimitRange", "limits", json!({"limits": [limits]}));
    let r = check(
        vec![lr(json!({"type": "Container", "max": {"memory": "512Mi"}}))],
        &cfg,
    );
    assert_eq!(rules(&r), vec![Rule::MoverPodOutsideLimitRange]);
    assert!(
        r.refusals[0]
            .message
            .contains("maximum memory usage per Container is 512Mi, but the mover's limit is 1Gi"),
        "{}",
        r.refusals[0]
    );
    let ratios =
        lr(json!({"type": "Container", "maxLimitRequestRatio": {"cpu": "10", "memory": "8"}}));
    assert_eq!(check(vec![ratios], &cfg).refusals, vec![]);
    let tight = lr(json!({"type": "Container", "maxLimitRequestRatio": {"cpu": "4"}}));
    let r = check(vec![tight], &cfg);
    assert!(
        r.refusals[0]
            .message
            .contains("cpu max limit to request ratio per Container is 4, but the mover's is 10"),
        "{}",
        r.refusals[0]
    );
}

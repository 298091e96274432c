//! The inventory: what belongs to the app, what is skipped and why, and the
//! cluster-scoped dependencies.

mod common;

use common::*;
use ferry_steps::inventory::{DependencyReason, Inventory, SkipReason};
use ferry_steps::object;
use serde_json::json;

fn names(objs: impl Iterator<Item = String>) -> Vec<String> {
    objs.collect()
}

#[test]
fn keeps_the_app_and_skips_what_the_cluster_and_controllers_make() {
    let inv = inventory(&in_cluster_spec());
    let kept = names(inv.objects().map(object::display));
    assert_eq!(
        kept,
        vec![
            "ConfigMap shop/web-config",
            "Secret shop/db-credentials",
            "Service shop/api",
            "Service shop/db",
            "Service shop/web",
            "ServiceAccount shop/web",
            "Deployment.apps shop/web",
            "StatefulSet.apps shop/db",
            "HorizontalPodAutoscaler.autoscaling shop/web",
            "CronJob.batch shop/report",
            "Widget.example.com shop/main",
            "Ingress.networking.k8s.io shop/web",
            "NetworkPolicy.networking.k8s.io shop/db-allow-web",
            "PodDisruptionBudget.policy shop/db",
            "Role.rbac.authorization.k8s.io shop/web-reader",
            "RoleBinding.rbac.authorization.k8s.io shop/web-metrics",
            "RoleBinding.rbac.authorization.k8s.io shop/web-reader",
        ]
    );
    assert_eq!(
        names(inv.pvcs().map(object::display)),
        vec![
            "PersistentVolumeClaim shop/data-db-0",
            "PersistentVolumeClaim shop/uploads"
        ]
    );
    let skipped: Vec<(String, SkipReason)> = inv
        .skipped
        .iter()
        .map(|s| (s.object.to_string(), s.reason.clone()))
        .collect();
    let expect = [
        ("ConfigMap shop/kube-root-ca.crt", SkipReason::ClusterMade),
        ("Endpoints shop/db", SkipReason::ClusterMade),
        ("Endpoints shop/web", SkipReason::ClusterMade),
        (
            "Event shop/db-0.187a3f2c1d0e9b8a",
            SkipReason::NotRestorable,
        ),
        (
            "Pod shop/db-0",
            SkipReason::OwnedBy("StatefulSet/db".into()),
        ),
        (
            "Pod shop/web-7d9f8c6b5-x2x8q",
            SkipReason::OwnedBy("ReplicaSet/web-7d9f8c6b5".into()),
        ),
        (
            "Secret shop/web-token-x7k2p",
            SkipReason::ServiceAccountToken,
        ),
        ("ServiceAccount shop/default", SkipReason::ClusterMade),
        (
            "ControllerRevision.apps shop/db-5c6d7f8b9",
            SkipReason::NotRestorable,
        ),
        (
            "ReplicaSet.apps shop/web-7d9f8c6b5",
            SkipReason::OwnedBy("Deployment/web".into()),
        ),
        (
            "Job.batch shop/report-29400000",
            SkipReason::OwnedBy("CronJob/report".into()),
        ),
        (
            "EndpointSlice.discovery.k8s.io shop/web-8hq2k",
            SkipReason::OwnedBy("Service/web".into()),
        ),
        ("IngressClass.networking.k8s.io nginx", SkipReason::Filtered),
    ];
    for (o, r) in &expect {
        assert!(
            skipped.contains(&((*o).to_owned(), r.clone())),
            "{o} not skipped as {r:?}: {skipped:#?}"
        );
    }
    assert_eq!(skipped.len(), expect.len(), "{skipped:#?}");
    assert_eq!(inv.persistent_volumes.len(), 2, "only the app's PVs");
    assert!(inv.pv_of(inv.pvcs().next().unwrap()).is_some());
}

#[test]
fn selects_cluster_scoped_dependencies_with_their_reasons() {
    let inv = inventory(&cross_cluster_spec());
    let deps: Vec<(String, Vec<DependencyReason>)> = inv
        .dependencies
        .iter()
        .map(|d| (object::display(&d.object), d.reasons.clone()))
        .collect();
    assert_eq!(
        deps,
        vec![
            (
                "CustomResourceDefinition.apiextensions.k8s.io widgets.example.com".to_owned(),
                vec![DependencyReason::DefinesKind("Widget.example.com".into())]
            ),
            (
                "IngressClass.networking.k8s.io nginx".to_owned(),
                vec![DependencyReason::IngressClassOf(
                    "Ingress.networking.k8s.io shop/web".into()
                )]
            ),
            (
                "ClusterRole.rbac.authorization.k8s.io shop-metrics-reader".to_owned(),
                vec![DependencyReason::BoundBy(
                    "RoleBinding.rbac.authorization.k8s.io shop/web-metrics".into()
                )]
            ),
            (
                "ClusterRole.rbac.authorization.k8s.io shop-node-reader".to_owned(),
                vec![DependencyReason::BoundBy(
                    "ClusterRoleBinding.rbac.authorization.k8s.io shop-web-nodes".into()
                )]
            ),
            (
                "ClusterRoleBinding.rbac.authorization.k8s.io shop-web-nodes".to_owned(),
                vec![DependencyReason::BindsServiceAccount("shop/web".into())]
            ),
        ]
    );
    assert!(
        inv.custom_kinds.len() == 2,
        "both source CRDs are known: {:?}",
        inv.custom_kinds
    );
}

#[test]
fn webhook_configurations_whose_service_is_in_the_app_are_carried() {
    let spec = cross_cluster_spec();
    let mut objs = source_objects();
    objs.push(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "widget-validator", "uid": "u"},
        "webhooks": [{"name": "v.example.com", "clientConfig": {"service": {"namespace": "shop", "name": "widget-webhook"}}}]
    }));
    objs.push(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "elsewhere"},
        "webhooks": [{"name": "m.example.com", "clientConfig": {"service": {"namespace": "istio-system", "name": "istiod"}}}]
    }));
    let inv = Inventory::build(&spec, objs).unwrap();
    let carried: Vec<&str> = inv
        .dependencies
        .iter()
        .map(|d| object::name(&d.object))
        .collect();
    assert!(carried.contains(&"widget-validator"));
    assert!(!carried.contains(&"elsewhere"));
}

#[test]
fn include_and_exclude_filters_by_kind_group_and_labels() {
    let mut spec = cross_cluster_spec();
    spec.include =
        vec![serde_json::from_value(json!({"labelSelector": "app in (web,db)"})).unwrap()];
    spec.exclude =
        vec![serde_json::from_value(json!({"group": "apps", "kind": "statefulset"})).unwrap()];
    let inv = Inventory::build(&spec, source_objects()).unwrap();
    let kept = names(inv.objects().map(object::display));
    assert!(kept.contains(&"Deployment.apps shop/web".to_owned()));
    assert!(kept.contains(&"Widget.example.com shop/main".to_owned()));
    assert!(
        !kept.iter().any(|k| k.starts_with("StatefulSet")),
        "{kept:?}"
    );
    assert!(
        !kept.iter().any(|k| k.starts_with("ConfigMap")),
        "unlabelled objects are not included: {kept:?}"
    );
    assert!(inv.skipped.iter().any(|s| s.object.name == "db"
        && s.object.kind == "StatefulSet"
        && s.reason == SkipReason::Filtered));
    // Filters apply to PVCs and dependencies too.
    assert_eq!(inv.pvcs().count(), 2);
    assert!(!inv.carries("networking.k8s.io", "IngressClass", "nginx"));
}

#[test]
fn endpoints_of_a_selectorless_service_are_kept() {
    let spec = cross_cluster_spec();
    let mut objs = source_objects();
    objs.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy-db", "namespace": "shop"}, "spec": {"ports": [{"port": 5432}]}}));
    objs.push(json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "legacy-db", "namespace": "shop"}, "subsets": [{"addresses": [{"ip": "192.0.2.10"}]}]}));
    let inv = Inventory::build(&spec, objs).unwrap();
    assert!(
        inv.objects()
            .any(|o| object::kind(o) == "Endpoints" && object::name(o) == "legacy-db")
    );
    assert!(
        !inv.objects()
            .any(|o| object::kind(o) == "Endpoints" && object::name(o) == "web")
    );
}

#[test]
fn malformed_objects_are_an_error_and_debug_hides_secret_data() {
    let spec = cross_cluster_spec();
    let err = Inventory::build(
        &spec,
        vec![json!({"kind": "ConfigMap", "metadata": {"namespace": "shop"}})],
    )
    .unwrap_err();
    assert!(err.to_string().contains("malformed object"), "{err}");
    let inv = inventory(&spec);
    let dbg = format!("{inv:?} {:?}", inv.namespaces["shop"]);
    assert!(dbg.contains("db-credentials"));
    assert!(!dbg.contains("czNjcjN0LWh1bnRlcjI="), "{dbg}");
}

#[test]
fn ferry_temporaries_and_volume_snapshots_are_never_the_apps() {
    let spec = cross_cluster_spec();
    let mut objs = source_objects();
    objs.push(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ferry-zzzz9999-data-db-0", "namespace": "shop",
        "labels": {"ferry.dev/run": "other-run", "ferry.dev/temporary": "true"}}, "spec": {"accessModes": ["ReadWriteOnce"]}}));
    objs.push(json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "nightly", "namespace": "shop"},
        "spec": {"source": {"persistentVolumeClaimName": "data-db-0"}}}));
    let inv = Inventory::build(&spec, objs).unwrap();
    assert_eq!(inv.pvcs().count(), 2);
    assert!(
        inv.skipped
            .iter()
            .any(|s| s.object.name == "ferry-zzzz9999-data-db-0"
                && s.reason == SkipReason::FerryTemporary)
    );
    assert!(
        inv.skipped
            .iter()
            .any(|s| s.object.name == "nightly" && s.reason == SkipReason::VolumeSnapshot)
    );
}

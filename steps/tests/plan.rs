//! The plan: step ids, DAG shape, criticality, apply order, names.

mod common;

use std::collections::BTreeSet;

use common::*;
use ferry_steps::ferry_name;
use ferry_steps::plan::{ApplyTier, Plan, StepKind, build_plan};
use ferry_steps::preflight::{CopyPath, PreflightConfig};
use ferry_steps::prepare::prepare;

fn in_cluster_plan() -> Plan {
    prepare(
        &in_cluster_spec(),
        source_objects(),
        &same_cluster_facts(),
        &config(),
    )
    .unwrap()
    .plan
}

#[test]
fn step_ids_are_stable_and_in_topological_order() {
    let plan = in_cluster_plan();
    let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "preflight",
            "namespaces",
            "prehook/shop/freeze",
            "snapshot/shop/data-db-0",
            "volume/shop-copy/data-db-0",
            "snapshot/shop/uploads",
            "volume/shop-copy/uploads",
            "thaw/shop/freeze",
            "apply",
            "posthook/shop-copy/warm",
            "health",
            "cleanup",
        ]
    );
    let mut seen = BTreeSet::new();
    for s in &plan.steps {
        for d in &s.depends_on {
            assert!(
                seen.contains(d.as_str()),
                "{} depends on {d}, which is not before it",
                s.id
            );
        }
        assert!(seen.insert(s.id.as_str()), "duplicate id {}", s.id);
    }
}

#[test]
fn dag_edges_follow_the_workflow() {
    let plan = in_cluster_plan();
    let deps = |id: &str| plan.step(id).unwrap().depends_on.clone();
    assert_eq!(deps("preflight"), Vec::<String>::new());
    assert_eq!(deps("namespaces"), vec!["preflight"]);
    assert_eq!(deps("prehook/shop/freeze"), vec!["namespaces"]);
    assert_eq!(deps("snapshot/shop/data-db-0"), vec!["prehook/shop/freeze"]);
    assert_eq!(
        deps("volume/shop-copy/data-db-0"),
        vec!["namespaces", "snapshot/shop/data-db-0"]
    );
    assert_eq!(
        deps("thaw/shop/freeze"),
        vec!["snapshot/shop/data-db-0", "snapshot/shop/uploads"]
    );
    assert_eq!(
        deps("apply"),
        vec![
            "namespaces",
            "volume/shop-copy/data-db-0",
            "volume/shop-copy/uploads"
        ]
    );
    assert_eq!(deps("posthook/shop-copy/warm"), vec!["apply"]);
    assert_eq!(deps("health"), vec!["apply", "posthook/shop-copy/warm"]);
    assert_eq!(deps("cleanup"), vec!["health", "thaw/shop/freeze"]);
    // Every step reaches cleanup: one sink.
    let depended: BTreeSet<&str> = plan
        .steps
        .iter()
        .flat_map(|s| s.depends_on.iter().map(String::as_str))
        .collect();
    let sinks: Vec<&str> = plan
        .steps
        .iter()
        .map(|s| s.id.as_str())
        .filter(|id| !depended.contains(id))
        .collect();
    assert_eq!(sinks, vec!["cleanup"]);
    for s in &plan.steps {
        assert_eq!(
            s.critical,
            !matches!(s.kind, StepKind::Cleanup | StepKind::Thaw),
            "{}",
            s.id
        );
        assert_eq!(s.version, 1);
    }
    assert_eq!(
        plan.step("volume/shop-copy/uploads").unwrap().path,
        Some(CopyPath::SnapshotInPlace)
    );
    let (initial, extension) = plan.split_initial();
    assert_eq!(
        initial.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec!["preflight"]
    );
    assert_eq!(extension.len(), plan.steps.len() - 1);
}

#[test]
fn live_volumes_have_no_snapshot_and_refused_volumes_no_step() {
    let mut spec = cross_cluster_spec();
    spec.allow_live_copy = true;
    let cfg = PreflightConfig {
        mover_available: true,
        ..config()
    };
    let mut p = prepare(&spec, source_objects(), &staging_facts(), &cfg).unwrap();
    assert!(p.report.refusals.is_empty(), "{:#?}", p.report.refusals);
    // Pretend the driver of data-db-0 cannot snapshot: the live path.
    p.report.volumes[0].path = Some(CopyPath::LiveViaMover);
    p.report.volumes[1].path = None;
    let plan = build_plan(&spec, &p.inventory, &p.report);
    assert_eq!(
        plan.step("volume/shop/data-db-0").unwrap().depends_on,
        vec!["namespaces"]
    );
    assert!(plan.step("snapshot/shop/data-db-0").is_none());
    assert!(plan.step("volume/shop/uploads").is_none());
}

#[test]
fn apply_order_follows_clone_semantics() {
    let plan = in_cluster_plan();
    let kinds: Vec<(ApplyTier, String, bool)> = plan
        .apply_order
        .iter()
        .map(|b| (b.tier, b.group_kind.to_string(), b.cluster_scoped))
        .collect();
    let k = |t, s: &str, c| (t, s.to_owned(), c);
    assert_eq!(
        kinds,
        vec![
            k(
                ApplyTier::Crds,
                "CustomResourceDefinition.apiextensions.k8s.io",
                true
            ),
            k(ApplyTier::Config, "Secret", false),
            k(ApplyTier::Config, "ConfigMap", false),
            k(
                ApplyTier::Rbac,
                "ClusterRole.rbac.authorization.k8s.io",
                true
            ),
            k(ApplyTier::Rbac, "Role.rbac.authorization.k8s.io", false),
            k(ApplyTier::Rbac, "ServiceAccount", false),
            k(
                ApplyTier::Rbac,
                "ClusterRoleBinding.rbac.authorization.k8s.io",
                true
            ),
            k(
                ApplyTier::Rbac,
                "RoleBinding.rbac.authorization.k8s.io",
                false
            ),
            k(ApplyTier::Services, "Service", false),
            k(ApplyTier::Workloads, "Deployment.apps", false),
            k(ApplyTier::Workloads, "StatefulSet.apps", false),
            k(ApplyTier::Workloads, "CronJob.batch", false),
            k(ApplyTier::Ingress, "Ingress.networking.k8s.io", false),
            k(
                ApplyTier::Other,
                "HorizontalPodAutoscaler.autoscaling",
                false
            ),
            k(ApplyTier::Other, "Widget.example.com", false),
            k(ApplyTier::Other, "NetworkPolicy.networking.k8s.io", false),
            k(ApplyTier::Other, "PodDisruptionBudget.policy", false),
        ]
    );
    let services = &plan.apply_order[8].objects;
    assert_eq!(
        services
            .iter()
            .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap(), r.name))
            .collect::<Vec<_>>(),
        vec!["shop-copy/api", "shop-copy/db", "shop-copy/web"]
    );
}

#[test]
fn names_ferry_makes_are_deterministic_and_cut_to_63() {
    let pvc = "data-postgresql-primary-with-a-really-long-statefulset-name-0";
    let n = ferry_name(SHORT, &format!("shop-copy-{pvc}"));
    assert_eq!(n.len(), 63);
    assert!(n.starts_with("ferry-abcd2345-shop-copy-data-postgresql"));
    assert_eq!(n, ferry_name(SHORT, &format!("shop-copy-{pvc}")));
    assert_ne!(n, ferry_name(SHORT, &format!("shop-copy-{pvc}x")));
    assert_eq!(
        ferry_steps::names::snapshot_content(SHORT, "shop-copy", "data-db-0"),
        "ferry-abcd2345-shop-copy-data-db-0"
    );
    assert_eq!(
        ferry_steps::names::source_snapshot(SHORT, "data-db-0"),
        "ferry-abcd2345-data-db-0"
    );
}

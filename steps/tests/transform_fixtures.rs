//! The realistic app, transformed, compared field by field with the
//! checked-in expected destination objects.

mod common;

use common::*;
use ferry_steps::inventory::Inventory;
use ferry_steps::object::{self, ObjectRef};
use ferry_steps::transform::{TransformContext, transform_inventory};
use serde_json::Value;

fn transformed_in_cluster() -> Vec<Value> {
    let spec = in_cluster_spec();
    let inv = inventory(&spec);
    let ctx = TransformContext::new(&spec, RUN_ID, SHORT).unwrap();
    let t = transform_inventory(&ctx, &inv).unwrap();
    t.namespaces
        .into_iter()
        .chain(t.dependencies)
        .chain(t.objects)
        .chain(t.pvcs)
        .collect()
}

#[test]
fn in_cluster_clone_matches_expected_objects_field_by_field() {
    let want = keyed(&yaml("expected/in-cluster.yaml"));
    let got = keyed(&transformed_in_cluster());
    assert_eq!(want.len(), 24, "the fixture lists every destination object");
    let mut problems = Vec::new();
    for (k, w) in &want {
        match got.get(k) {
            Some(g) => {
                let mut d = Vec::new();
                diff("", w, g, &mut d);
                problems.extend(d.into_iter().map(|l| format!("{k}: {l}")));
            }
            None => problems.push(format!("{k}: expected, not produced")),
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        problems.push(format!("{k}: produced, not expected"));
    }
    assert!(problems.is_empty(), "differences:\n{}", problems.join("\n"));
}

#[test]
fn output_is_deterministic_whatever_the_listing_order() {
    let spec = in_cluster_spec();
    let ctx = TransformContext::new(&spec, RUN_ID, SHORT).unwrap();
    let a = transform_inventory(&ctx, &Inventory::build(&spec, source_objects()).unwrap()).unwrap();
    let mut reversed = source_objects();
    reversed.reverse();
    let b = transform_inventory(&ctx, &Inventory::build(&spec, reversed).unwrap()).unwrap();
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
}

#[test]
fn every_created_object_carries_the_run_label_and_no_server_field() {
    for o in transformed_in_cluster() {
        assert_eq!(
            object::labels(&o).get("ferry.dev/run").map(String::as_str),
            Some(RUN_ID),
            "{}",
            object::display(&o)
        );
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "ownerReferences",
            "finalizers",
        ] {
            assert!(
                o["metadata"].get(f).is_none(),
                "{} keeps metadata.{f}",
                object::display(&o)
            );
        }
        assert!(
            o.get("status").is_none(),
            "{} keeps status",
            object::display(&o)
        );
        assert!(
            object::annotation(&o, "kubectl.kubernetes.io/last-applied-configuration").is_none()
        );
    }
}

#[test]
fn cross_cluster_keeps_explicit_node_ports_names_and_carries_the_ingress_class() {
    let spec = cross_cluster_spec();
    let inv = inventory(&spec);
    let ctx = TransformContext::new(&spec, RUN_ID, SHORT).unwrap();
    let t = transform_inventory(&ctx, &inv).unwrap();
    let objs = keyed(&t.objects);
    let web = &objs[&ObjectRef {
        group: String::new(),
        kind: "Service".into(),
        namespace: Some("shop".into()),
        name: "web".into(),
    }];
    // 30080 was set by the user (last-applied, managedFields); 31443 was
    // allocated and is allocated afresh.
    assert_eq!(web["spec"]["ports"][0]["nodePort"], 30080);
    assert!(web["spec"]["ports"][1].get("nodePort").is_none());
    assert!(web["spec"].get("clusterIP").is_none());
    let deps = keyed(&t.dependencies);
    let names: Vec<String> = deps.keys().map(ToString::to_string).collect();
    assert!(
        names.contains(&"IngressClass.networking.k8s.io nginx".to_owned()),
        "{names:?}"
    );
    let crb = deps
        .iter()
        .find(|(k, _)| k.kind == "ClusterRoleBinding")
        .unwrap()
        .1;
    assert_eq!(object::name(crb), "shop-web-nodes");
    assert_eq!(
        crb["subjects"].as_array().unwrap().len(),
        2,
        "cross-cluster keeps every subject"
    );
    // No DNS rewrite needed: the namespace keeps its name.
    let cm = t
        .objects
        .iter()
        .find(|o| object::name(o) == "web-config")
        .unwrap();
    assert_eq!(
        cm["data"]["DATABASE_URL"],
        "postgres://db.shop.svc.cluster.local:5432/shop"
    );
}

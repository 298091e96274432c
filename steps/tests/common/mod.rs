//! Fixture loading shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ferry_steps::inventory::Inventory;
use ferry_steps::object::{self, ObjectRef};
use ferry_steps::preflight::{DestinationFacts, PreflightConfig};
use ferry_steps::spec::CloneSpec;
use serde_json::Value;

pub const RUN_ID: &str = "0192f5e4-8c1a-7b3d-9e2f-123456789abc";
pub const SHORT: &str = "abcd2345";

pub fn fixture(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn yaml(path: &str) -> Vec<Value> {
    Inventory::parse_yaml(&fixture(path)).expect("fixture parses")
}

/// Everything the source cluster lists.
pub fn source_objects() -> Vec<Value> {
    let mut v = yaml("source/cluster.yaml");
    v.extend(yaml("source/shop.yaml"));
    v
}

/// The source cluster's cluster-scoped objects.
pub fn source_cluster() -> Vec<Value> {
    yaml("source/cluster.yaml")
}

pub fn in_cluster_spec() -> CloneSpec {
    CloneSpec::from_json(&fixture("spec-in-cluster.json")).expect("spec is valid")
}

/// The in-cluster spec turned into a cross-cluster one (prod → staging,
/// same namespace names, no exclusions).
pub fn cross_cluster_spec() -> CloneSpec {
    let mut s = in_cluster_spec();
    s.destination_context = "kind-staging".into();
    s.namespaces[0].destination = None;
    s.exclude.clear();
    s.storage_classes.clear();
    s.transforms[0].patch.clear();
    s.transforms.clear();
    s.hooks
        .retain(|h| h.stage == ferry_steps::spec::HookStage::Pre);
    s.validate().expect("cross spec valid");
    s
}

pub fn inventory(spec: &CloneSpec) -> Inventory {
    Inventory::build(spec, source_objects()).expect("inventory builds")
}

/// The destination of an in-cluster clone: the source cluster itself.
pub fn same_cluster_facts() -> DestinationFacts {
    DestinationFacts::from_objects("kind-prod", source_cluster())
}

/// An empty-ish staging cluster: the storage classes of the source but
/// nothing of the app.
pub fn staging_facts() -> DestinationFacts {
    let objs = source_cluster()
        .into_iter()
        .filter(|o| matches!(object::kind(o), "StorageClass" | "VolumeSnapshotClass"))
        .chain(
            Inventory::parse_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n")
                .unwrap(),
        );
    DestinationFacts::from_objects("kind-staging", objs)
}

pub fn config() -> PreflightConfig {
    PreflightConfig {
        buckets: ["backups".to_owned()].into(),
        default_bucket: Some("backups".into()),
        ..PreflightConfig::default()
    }
}

pub fn keyed(objs: &[Value]) -> BTreeMap<ObjectRef, Value> {
    objs.iter()
        .map(|o| (ObjectRef::of(o).unwrap(), o.clone()))
        .collect()
}

/// Differences between two JSON values, one line per path.
pub fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}/{k}");
                match b.get(k) {
                    Some(w) => diff(&p, v, w, out),
                    None => out.push(format!("{p}: missing (want {v})")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}/{k}: unexpected {}", b[k]));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}/{i}"), x, y, out);
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: want {want}, got {got}")),
    }
}

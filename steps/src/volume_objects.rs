//! The objects ferry makes to clone a volume through a snapshot in place
//! (clone-semantics §6.1): the source VolumeSnapshot, a pre-provisioned
//! VolumeSnapshotContent (Retain) bound to a VolumeSnapshot in the
//! destination namespace, and the destination PVC made from it.
//!
//! Pure builders, so the snapshot and volume steps only talk to clusters.
//! Names come from [`crate::names`]; everything carries the run label, and
//! the snapshots and contents the temporary label as well.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::Result;
use crate::names::{destination_snapshot, snapshot_content, source_snapshot};
use crate::object::{RUN_LABEL, TEMPORARY_LABEL, annotation, name, str_at};
use crate::transform::{TransformContext, transform_object};

const SNAPSHOT_API: &str = "snapshot.storage.k8s.io/v1";
const DELETION_SECRET_ANNOTATIONS: [&str; 2] = [
    "snapshot.storage.kubernetes.io/deletion-secret-name",
    "snapshot.storage.kubernetes.io/deletion-secret-namespace",
];

/// The VolumeSnapshot of source PVC `pvc` (in its namespace) with snapshot
/// class `class`.
pub fn source_volume_snapshot(
    ctx: &TransformContext,
    source_ns: &str,
    pvc: &str,
    class: &str,
) -> Value {
    json!({
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": source_snapshot(&ctx.short, pvc),
            "namespace": source_ns,
            "labels": {RUN_LABEL: ctx.run_id, TEMPORARY_LABEL: "true"},
        },
        "spec": {
            "volumeSnapshotClassName": class,
            "source": {"persistentVolumeClaimName": pvc},
        },
    })
}

/// What the source snapshot's bound VolumeSnapshotContent says, once ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFacts {
    /// `spec.driver`.
    pub driver: String,
    /// `status.snapshotHandle`.
    pub snapshot_handle: String,
    /// `spec.sourceVolumeMode`, when set.
    pub source_volume_mode: Option<String>,
    /// `spec.volumeSnapshotClassName`, when set (so delete credentials
    /// resolve).
    pub volume_snapshot_class: Option<String>,
    /// `status.restoreSize` in bytes, when set.
    pub restore_size: Option<i64>,
    /// The deletion-secret annotations some drivers (Ceph) need.
    pub deletion_secret: Option<(String, String)>,
}

impl SnapshotFacts {
    /// Reads a ready source VolumeSnapshotContent; `None` until it has a
    /// snapshot handle.
    pub fn from_content(vsc: &Value) -> Option<Self> {
        let deletion_secret = match (
            annotation(vsc, DELETION_SECRET_ANNOTATIONS[0]),
            annotation(vsc, DELETION_SECRET_ANNOTATIONS[1]),
        ) {
            (Some(n), Some(ns)) => Some((n.to_owned(), ns.to_owned())),
            _ => None,
        };
        Some(Self {
            driver: str_at(vsc, "/spec/driver")?.to_owned(),
            snapshot_handle: str_at(vsc, "/status/snapshotHandle")?.to_owned(),
            source_volume_mode: str_at(vsc, "/spec/sourceVolumeMode").map(str::to_owned),
            volume_snapshot_class: str_at(vsc, "/spec/volumeSnapshotClassName").map(str::to_owned),
            restore_size: vsc.pointer("/status/restoreSize").and_then(Value::as_i64),
            deletion_secret,
        })
    }
}

/// The pre-provisioned VolumeSnapshotContent for `pvc` cloned into
/// `dst_ns`: the source's handle, `deletionPolicy: Retain` (the source
/// content still owns the backend snapshot), bound to
/// [`destination_volume_snapshot`].
pub fn preprovisioned_content(
    ctx: &TransformContext,
    dst_ns: &str,
    pvc: &str,
    facts: &SnapshotFacts,
) -> Value {
    let mut v = json!({
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshotContent",
        "metadata": {
            "name": snapshot_content(&ctx.short, dst_ns, pvc),
            "labels": {RUN_LABEL: ctx.run_id, TEMPORARY_LABEL: "true"},
        },
        "spec": {
            "driver": facts.driver,
            "deletionPolicy": "Retain",
            "source": {"snapshotHandle": facts.snapshot_handle},
            "volumeSnapshotRef": {"name": destination_snapshot(&ctx.short, pvc), "namespace": dst_ns},
        },
    });
    if let Some(m) = &facts.source_volume_mode {
        v["spec"]["sourceVolumeMode"] = json!(m);
    }
    if let Some(c) = &facts.volume_snapshot_class {
        v["spec"]["volumeSnapshotClassName"] = json!(c);
    }
    if let Some((n, ns)) = &facts.deletion_secret {
        v["metadata"]["annotations"] =
            json!({DELETION_SECRET_ANNOTATIONS[0]: n, DELETION_SECRET_ANNOTATIONS[1]: ns});
    }
    v
}

/// The VolumeSnapshot in the destination namespace, bound to the
/// pre-provisioned content (no class).
pub fn destination_volume_snapshot(ctx: &TransformContext, dst_ns: &str, pvc: &str) -> Value {
    json!({
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": destination_snapshot(&ctx.short, pvc),
            "namespace": dst_ns,
            "labels": {RUN_LABEL: ctx.run_id, TEMPORARY_LABEL: "true"},
        },
        "spec": {"source": {"volumeSnapshotContentName": snapshot_content(&ctx.short, dst_ns, pvc)}},
    })
}

/// The destination PVC: the source PVC transformed (name kept, class
/// mapped, binding cleared), with the destination snapshot as data source.
///
/// # Errors
/// As [`transform_object`].
pub fn destination_pvc_from_snapshot(ctx: &TransformContext, source_pvc: &Value) -> Result<Value> {
    let mut out = transform_object(ctx, source_pvc)?;
    out["spec"]["dataSource"] = json!({
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": destination_snapshot(&ctx.short, name(source_pvc)),
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::CloneSpec;

    #[test]
    fn builds_the_section_6_1_objects() {
        let spec: CloneSpec = serde_json::from_value(json!({"name": "c", "sourceContext": "a", "destinationContext": "a",
            "namespaces": [{"source": "shop", "destination": "shop-copy"}], "storageClasses": [{"source": "fast", "destination": "fast2"}]}))
        .unwrap();
        let ctx = TransformContext::new(&spec, "run-1", "abcd2345").unwrap();
        let vs = source_volume_snapshot(&ctx, "shop", "data-db-0", "hostpath-snap");
        assert_eq!(vs["metadata"]["name"], "ferry-abcd2345-data-db-0");
        assert_eq!(vs["metadata"]["labels"]["ferry.dev/temporary"], "true");
        let vsc = json!({"apiVersion": SNAPSHOT_API, "kind": "VolumeSnapshotContent", "metadata": {"name": "snapcontent-1"},
            "spec": {"driver": "hostpath.csi.k8s.io", "sourceVolumeMode": "Filesystem", "volumeSnapshotClassName": "hostpath-snap"},
            "status": {"snapshotHandle": "h-1", "restoreSize": 1073741824, "readyToUse": true}});
        let facts = SnapshotFacts::from_content(&vsc).unwrap();
        let content = preprovisioned_content(&ctx, "shop-copy", "data-db-0", &facts);
        assert_eq!(content["spec"]["deletionPolicy"], "Retain");
        assert_eq!(content["spec"]["source"], json!({"snapshotHandle": "h-1"}));
        assert_eq!(
            content["spec"]["volumeSnapshotRef"],
            json!({"name": "ferry-abcd2345-data-db-0", "namespace": "shop-copy"})
        );
        let dvs = destination_volume_snapshot(&ctx, "shop-copy", "data-db-0");
        assert_eq!(
            dvs["spec"]["source"]["volumeSnapshotContentName"],
            content["metadata"]["name"]
        );
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-db-0", "namespace": "shop", "uid": "u"},
            "spec": {"storageClassName": "fast", "volumeName": "pv-1", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        let out = destination_pvc_from_snapshot(&ctx, &pvc).unwrap();
        assert_eq!(out["metadata"]["namespace"], "shop-copy");
        assert_eq!(out["spec"]["storageClassName"], "fast2");
        assert_eq!(out["spec"]["dataSource"]["name"], dvs["metadata"]["name"]);
        assert!(out["spec"].get("volumeName").is_none());
        assert!(
            SnapshotFacts::from_content(&json!({"spec": {"driver": "d"}})).is_none(),
            "not ready without a handle"
        );
    }
}

//! Storage: default StorageClasses modelling real CSI drivers, dynamic
//! provisioning and PV/PVC binding, volume data as local directories, and
//! CSI snapshots as the external-snapshotter does them.
//!
//! Every provisioned PV `pvc-<claim uid>` gets a directory
//! `<data dir>/volumes/pvc-<uid>` named in its annotation
//! [`PATH_ANNOTATION`]; a snapshot is a `cp -a` copy of it under
//! `<data dir>/snapshots/<snapshotHandle>` (also named on its
//! VolumeSnapshotContent). What a driver can do comes from [`capabilities`].

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::ctl::{
    NODE, PATH_ANNOTATION, add_finalizer, bytes_quantity, create, delete, event, finish, gr,
    quantity_bytes, remove_finalizer, str_at, write,
};
use crate::objects::{State, is_terminating};
use crate::store::{EventType, StoreEvent, Txn};
use crate::util::{meta_str, now_rfc3339};

const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
const PROVISIONER_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
const DEFAULT_SC: &str = "storageclass.kubernetes.io/is-default-class";
const DEFAULT_VSC: &str = "snapshot.storage.kubernetes.io/is-default-class";
const ALL_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

/// The StorageClasses, VolumeSnapshotClasses and IngressClass a new cluster has.
pub fn default_objects() -> Vec<Value> {
    let sc = |name: &str, prov: &str, binding: &str, params: Value, default: bool| {
        let mut o = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name}, "provisioner": prov, "parameters": params,
            "reclaimPolicy": "Delete", "volumeBindingMode": binding, "allowVolumeExpansion": true});
        if default {
            o["metadata"]["annotations"] = json!({DEFAULT_SC: "true"});
        }
        o
    };
    let vsc = |name: &str, driver: &str| {
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": name, "annotations": {DEFAULT_VSC: "true"}},
            "driver": driver, "deletionPolicy": "Delete"})
    };
    vec![
        sc(
            "gp3",
            "ebs.csi.aws.com",
            "WaitForFirstConsumer",
            json!({"type": "gp3", "csi.storage.k8s.io/fstype": "ext4"}),
            false,
        ),
        sc(
            "efs",
            "efs.csi.aws.com",
            "Immediate",
            json!({"provisioningMode": "efs-ap", "fileSystemId": "fs-0sim", "directoryPerms": "700"}),
            false,
        ),
        sc(
            "ontap-nas",
            "csi.trident.netapp.io",
            "Immediate",
            json!({"backendType": "ontap-nas"}),
            true,
        ),
        sc(
            "ontap-nas-economy",
            "csi.trident.netapp.io",
            "Immediate",
            json!({"backendType": "ontap-nas-economy"}),
            false,
        ),
        vsc("ebs-snapclass", "ebs.csi.aws.com"),
        vsc("trident-snapclass", "csi.trident.netapp.io"),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "nginx", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "k8s.io/ingress-nginx"}}),
    ]
}

/// What a StorageClass's driver can do: the access modes it provisions and
/// whether it snapshots. Parameters `sim.ferry.dev/accessModes` (comma list)
/// and `sim.ferry.dev/snapshots` (`"true"`/`"false"`) override the table.
pub fn capabilities(sc: &Value) -> (Vec<String>, bool) {
    let prov = str_at(sc, "/provisioner");
    let backend = str_at(sc, "/parameters/backendType");
    let (modes, snap): (Vec<&str>, bool) = match prov {
        "ebs.csi.aws.com" | "disk.csi.azure.com" => {
            (vec!["ReadWriteOnce", "ReadWriteOncePod"], true)
        }
        "efs.csi.aws.com" | "fsx.csi.aws.com" => (vec!["ReadWriteOnce", "ReadWriteMany"], false),
        "rancher.io/local-path" | "openebs.io/local" => {
            (vec!["ReadWriteOnce", "ReadWriteOncePod"], false)
        }
        "csi.trident.netapp.io" => match backend {
            "ontap-nas-economy" => (ALL_MODES.to_vec(), false),
            "ontap-san" | "ontap-san-economy" => (vec!["ReadWriteOnce", "ReadWriteOncePod"], true),
            _ => (ALL_MODES.to_vec(), true),
        },
        "kubernetes.io/no-provisioner" => (ALL_MODES.to_vec(), false),
        _ => (ALL_MODES.to_vec(), true),
    };
    let mut modes: Vec<String> = modes.into_iter().map(str::to_string).collect();
    let mut snap = snap;
    if let Some(m) = sc
        .pointer("/parameters/sim.ferry.dev~1accessModes")
        .and_then(Value::as_str)
    {
        modes = m
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    if let Some(s) = sc
        .pointer("/parameters/sim.ferry.dev~1snapshots")
        .and_then(Value::as_str)
    {
        snap = s == "true";
    }
    (modes, snap)
}

fn relevant(ev: &StoreEvent) -> bool {
    matches!(
        (ev.gr.group.as_str(), ev.gr.resource.as_str()),
        ("", "persistentvolumeclaims" | "persistentvolumes" | "pods")
            | ("storage.k8s.io", "storageclasses")
            | ("snapshot.storage.k8s.io", _)
    )
}

/// The PV controller, the CSI provisioner and the snapshot controller.
pub fn storage(state: &State, ev: Option<&StoreEvent>) {
    if let Some(ev) = ev {
        if !relevant(ev) {
            return;
        }
        if ev.event_type == EventType::Deleted {
            removed(state, ev);
        }
    }
    state.store.transact(|txn| {
        snapshots(state, txn);
        claims(state, txn);
        volumes(state, txn);
        contents(state, txn);
    })
}

fn remove_dir(p: &str) {
    if !p.is_empty() {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// Backing data of deleted PVs and contents goes with them (deletionPolicy/reclaim Delete).
fn removed(state: &State, ev: &StoreEvent) {
    let o = &ev.object;
    let path = o
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(PATH_ANNOTATION))
        .and_then(Value::as_str)
        .unwrap_or("");
    match (ev.gr.group.as_str(), ev.gr.resource.as_str()) {
        ("", "persistentvolumes")
            if str_at(o, "/spec/persistentVolumeReclaimPolicy") == "Delete" =>
        {
            remove_dir(path)
        }
        ("snapshot.storage.k8s.io", "volumesnapshotcontents")
            if str_at(o, "/spec/deletionPolicy") == "Delete" =>
        {
            let handle = str_at(o, "/status/snapshotHandle");
            if !handle.is_empty() {
                let _ = std::fs::remove_dir_all(state.runtime.snapshot_dir(handle));
            }
        }
        _ => {}
    }
}

/// `cp -a SRC/. DST/`: modes, owners, times and links kept.
pub fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&from)
        .arg(dst)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if let Ok(m) = e.path().symlink_metadata() {
                n += if m.is_dir() {
                    dir_size(&e.path())
                } else {
                    m.len()
                };
            }
        }
    }
    n
}

fn default_class(txn: &Txn<'_>) -> Option<String> {
    txn.list(&gr("storage.k8s.io", "storageclasses"), None)
        .iter()
        .find(|s| {
            s.pointer("/metadata/annotations")
                .and_then(|a| a.get(DEFAULT_SC))
                .and_then(Value::as_str)
                == Some("true")
        })
        .map(|s| meta_str(s, "name").to_string())
}

fn modes(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn claim_in_use(txn: &Txn<'_>, ns: &str, name: &str) -> bool {
    txn.list(&gr("", "pods"), Some(ns)).iter().any(|p| {
        !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
            && crate::ctl::mounts_claim(p, name)
    })
}

/// Where a claim's data comes from: `Ok(None)` empty, `Ok(Some(dir))` a copy,
/// `Err((wait, message))` not yet (wait) or never.
fn data_source(
    state: &State,
    txn: &Txn<'_>,
    pvc: &Value,
    sc: &Value,
) -> Result<Option<std::path::PathBuf>, (bool, String)> {
    let src = pvc
        .pointer("/spec/dataSourceRef")
        .filter(|v| v.is_object())
        .or_else(|| pvc.pointer("/spec/dataSource").filter(|v| v.is_object()));
    let Some(src) = src else {
        return Ok(None);
    };
    let ns = meta_str(pvc, "namespace");
    let name = str_at(src, "/name");
    let src_ns = match str_at(src, "/namespace") {
        "" => ns,
        n => n,
    };
    if src_ns != ns {
        return Err((
            false,
            "cross-namespace data sources are not enabled (CrossNamespaceVolumeDataSource)".into(),
        ));
    }
    let prov = str_at(sc, "/provisioner");
    match str_at(src, "/kind") {
        "VolumeSnapshot" => {
            let Some(vs) = txn.get(&gr("snapshot.storage.k8s.io", "volumesnapshots"), ns, name)
            else {
                return Err((
                    true,
                    format!("volumesnapshot.snapshot.storage.k8s.io \"{name}\" not found"),
                ));
            };
            if vs.pointer("/status/readyToUse").and_then(Value::as_bool) != Some(true) {
                return Err((true, format!("snapshot {name} is not Ready")));
            }
            let content = str_at(&vs, "/status/boundVolumeSnapshotContentName");
            let Some(vsc) = txn.get(
                &gr("snapshot.storage.k8s.io", "volumesnapshotcontents"),
                "",
                content,
            ) else {
                return Err((true, format!("snapshot content {content} not found")));
            };
            if str_at(&vsc, "/spec/driver") != prov {
                return Err((
                    false,
                    format!(
                        "data source {name} was created by driver {}, which differs from the StorageClass provisioner {prov}",
                        str_at(&vsc, "/spec/driver")
                    ),
                ));
            }
            let want = quantity_bytes(str_at(pvc, "/spec/resources/requests/storage")).unwrap_or(0);
            let restore = vsc
                .pointer("/status/restoreSize")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if want < restore {
                return Err((
                    false,
                    format!(
                        "requested volume size {want} is less than the size {restore} for the source snapshot {name}"
                    ),
                ));
            }
            let dir = state
                .runtime
                .snapshot_dir(str_at(&vsc, "/status/snapshotHandle"));
            if !dir.is_dir() {
                return Err((
                    false,
                    format!(
                        "snapshot {} does not exist on the backend",
                        str_at(&vsc, "/status/snapshotHandle")
                    ),
                ));
            }
            Ok(Some(dir))
        }
        "PersistentVolumeClaim" => {
            let Some(spvc) = txn.get(&gr("", "persistentvolumeclaims"), ns, name) else {
                return Err((true, format!("persistentvolumeclaim \"{name}\" not found")));
            };
            if str_at(&spvc, "/status/phase") != "Bound" {
                return Err((true, format!("source PVC {name} is not bound")));
            }
            let pv = txn.get(
                &gr("", "persistentvolumes"),
                "",
                str_at(&spvc, "/spec/volumeName"),
            );
            let Some(pv) = pv else {
                return Err((true, format!("volume of source PVC {name} not found")));
            };
            if str_at(&pv, "/spec/csi/driver") != prov {
                return Err((
                    false,
                    format!(
                        "the source PVC and destination PVCs must use the same driver ({prov})"
                    ),
                ));
            }
            let dir = pv
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(PATH_ANNOTATION))
                .and_then(Value::as_str)
                .unwrap_or("");
            Ok((!dir.is_empty()).then(|| dir.into()))
        }
        other => Err((false, format!("unsupported data source kind {other}"))),
    }
}

fn bind(txn: &mut Txn<'_>, pvc: &mut Value, pv: &Value, by_controller: bool) {
    let pvg = gr("", "persistentvolumes");
    let mut p = pv.clone();
    p["spec"]["claimRef"] = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
        "namespace": meta_str(pvc, "namespace"), "name": meta_str(pvc, "name"),
        "uid": meta_str(pvc, "uid"), "resourceVersion": meta_str(pvc, "resourceVersion")});
    if by_controller {
        p["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
    }
    p["status"] = json!({"phase": "Bound", "lastPhaseTransitionTime": now_rfc3339()});
    write(txn, &pvg, pv, p);
    pvc["spec"]["volumeName"] = json!(meta_str(pv, "name"));
    pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
    if by_controller {
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
    }
    pvc["status"] = json!({"phase": "Bound", "accessModes": pv.pointer("/spec/accessModes").cloned().unwrap_or(json!([])),
        "capacity": pv.pointer("/spec/capacity").cloned().unwrap_or(json!({}))});
}

fn claims(state: &State, txn: &mut Txn<'_>) {
    let pvcg = gr("", "persistentvolumeclaims");
    let pvg = gr("", "persistentvolumes");
    for pvc in txn.list(&pvcg, None) {
        let ns = meta_str(&pvc, "namespace").to_string();
        let name = meta_str(&pvc, "name").to_string();
        let mut n = (*pvc).clone();
        if is_terminating(&pvc) {
            if !claim_in_use(txn, &ns, &name) {
                remove_finalizer(&mut n, PVC_PROTECTION);
                finish(txn, &pvcg, &pvc, n);
            }
            continue;
        }
        add_finalizer(&mut n, PVC_PROTECTION);
        if n.pointer("/spec/storageClassName")
            .is_none_or(Value::is_null)
            && let Some(d) = default_class(txn)
        {
            n["spec"]["storageClassName"] = json!(d);
        }
        if str_at(&n, "/status/phase") == "Bound" {
            let vol = str_at(&n, "/spec/volumeName").to_string();
            if txn.get(&pvg, "", &vol).is_none() {
                n["status"]["phase"] = json!("Lost");
                event(
                    state,
                    txn,
                    &pvc,
                    "Warning",
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                );
            }
            write(txn, &pvcg, &pvc, n);
            continue;
        }
        if str_at(&n, "/status/phase").is_empty() {
            n["status"] = json!({"phase": "Pending"});
        }
        if str_at(&n, "/status/phase") != "Pending" {
            write(txn, &pvcg, &pvc, n);
            continue;
        }
        let class_name = str_at(&n, "/spec/storageClassName").to_string();
        let want_modes = modes(&n, "/spec/accessModes");
        let want_bytes =
            quantity_bytes(str_at(&n, "/spec/resources/requests/storage")).unwrap_or(0);
        // Static binding: a pre-bound PV, or an Available one that fits.
        let vol = str_at(&n, "/spec/volumeName").to_string();
        let candidate = if !vol.is_empty() {
            txn.get(&pvg, "", &vol).filter(|pv| {
                let r = pv.pointer("/spec/claimRef");
                r.is_none_or(|r| {
                    str_at(r, "/name") == name
                        && str_at(r, "/namespace") == ns
                        && (str_at(r, "/uid").is_empty()
                            || str_at(r, "/uid") == meta_str(&pvc, "uid"))
                })
            })
        } else {
            let pvs = txn.list(&pvg, None);
            let prebound = pvs.iter().find(|pv| {
                !is_terminating(pv)
                    && str_at(pv, "/status/phase") != "Bound"
                    && str_at(pv, "/spec/claimRef/name") == name
                    && str_at(pv, "/spec/claimRef/namespace") == ns
                    && (str_at(pv, "/spec/claimRef/uid").is_empty()
                        || str_at(pv, "/spec/claimRef/uid") == meta_str(&pvc, "uid"))
            });
            prebound
                .or_else(|| {
                    let mut fits: Vec<&Arc<Value>> = pvs
                        .iter()
                        .filter(|pv| {
                            !is_terminating(pv)
                                && str_at(pv, "/status/phase") == "Available"
                                && pv.pointer("/spec/claimRef").is_none()
                                && str_at(pv, "/spec/storageClassName") == class_name
                                && quantity_bytes(str_at(pv, "/spec/capacity/storage")).unwrap_or(0)
                                    >= want_bytes
                                && want_modes
                                    .iter()
                                    .all(|m| modes(pv, "/spec/accessModes").contains(m))
                        })
                        .collect();
                    fits.sort_by_key(|pv| {
                        quantity_bytes(str_at(pv, "/spec/capacity/storage")).unwrap_or(0)
                    });
                    fits.first().copied()
                })
                .cloned()
        };
        if let Some(pv) = candidate {
            bind(txn, &mut n, &pv, vol.is_empty());
            write(txn, &pvcg, &pvc, n);
            continue;
        }
        if !vol.is_empty() {
            write(txn, &pvcg, &pvc, n);
            continue;
        }
        let Some(sc) = txn.get(&gr("storage.k8s.io", "storageclasses"), "", &class_name) else {
            write(txn, &pvcg, &pvc, n);
            if !class_name.is_empty() {
                event(
                    state,
                    txn,
                    &pvc,
                    "Warning",
                    "ProvisioningFailed",
                    &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
                );
            }
            continue;
        };
        let prov = str_at(&sc, "/provisioner").to_string();
        if prov == "kubernetes.io/no-provisioner" {
            write(txn, &pvcg, &pvc, n);
            event(
                state,
                txn,
                &pvc,
                "Normal",
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
            );
            continue;
        }
        n["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"] = json!(prov);
        n["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-provisioner"] = json!(prov);
        let wffc = str_at(&sc, "/volumeBindingMode") == "WaitForFirstConsumer";
        let selected = n
            .pointer("/metadata/annotations/volume.kubernetes.io~1selected-node")
            .is_some();
        let n = write(txn, &pvcg, &pvc, n);
        if wffc && !selected {
            event(
                state,
                txn,
                &n,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            );
            continue;
        }
        let (can, _) = capabilities(&sc);
        if let Some(bad) = want_modes.iter().find(|m| !can.contains(m)) {
            event(
                state,
                txn,
                &n,
                "Warning",
                "ProvisioningFailed",
                &format!(
                    "failed to provision volume with StorageClass \"{class_name}\": rpc error: code = InvalidArgument desc = Volume capabilities not supported: access mode {bad} is not supported by {prov}"
                ),
            );
            continue;
        }
        let source = match data_source(state, txn, &n, &sc) {
            Ok(s) => s,
            Err((wait, msg)) => {
                let (kind, reason) = if wait {
                    ("Normal", "Provisioning")
                } else {
                    ("Warning", "ProvisioningFailed")
                };
                event(
                    state,
                    txn,
                    &n,
                    kind,
                    reason,
                    &format!(
                        "failed to provision volume with StorageClass \"{class_name}\": {msg}"
                    ),
                );
                continue;
            }
        };
        let uid = meta_str(&n, "uid").to_string();
        let pv_name = format!("pvc-{uid}");
        let dir = state.runtime.volume_dir(&pv_name);
        let made = std::fs::create_dir_all(&dir).and_then(|_| match &source {
            Some(src) => copy_tree(src, &dir),
            None => Ok(()),
        });
        if let Err(e) = made {
            event(
                state,
                txn,
                &n,
                "Warning",
                "ProvisioningFailed",
                &format!("failed to provision volume: {e}"),
            );
            continue;
        }
        let mut csi = json!({"driver": prov, "volumeHandle": format!("sim-{uid}"),
            "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": format!("sim-{prov}")}});
        if let Some(fs) = sc.pointer("/parameters/csi.storage.k8s.io~1fstype") {
            csi["fsType"] = fs.clone();
        }
        if let Some(b) = sc.pointer("/parameters/backendType") {
            csi["volumeAttributes"]["backendType"] = b.clone();
        }
        let mut spec = json!({"capacity": {"storage": str_at(&n, "/spec/resources/requests/storage")},
            "accessModes": want_modes, "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy").cloned().unwrap_or(json!("Delete")),
            "storageClassName": class_name, "volumeMode": n.pointer("/spec/volumeMode").cloned().unwrap_or(json!("Filesystem")),
            "csi": csi});
        if let Some(mo) = sc.get("mountOptions") {
            spec["mountOptions"] = mo.clone();
        }
        if wffc {
            spec["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["sim-zone-a"]}]}]}});
        }
        let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": prov,
                "volume.kubernetes.io/provisioner-deletion-secret-name": "", "volume.kubernetes.io/provisioner-deletion-secret-namespace": "",
                PATH_ANNOTATION: dir.to_string_lossy()},
                "finalizers": [PV_PROTECTION, PROVISIONER_FINALIZER]},
            "spec": spec});
        let Some(pv) = create(state, txn, &pvg, None, pv) else {
            continue;
        };
        let mut p = (*pv).clone();
        p["status"] = json!({"phase": "Available"});
        let pv = write(txn, &pvg, &pv, p);
        event(
            state,
            txn,
            &n,
            "Normal",
            "ProvisioningSucceeded",
            &format!("Successfully provisioned volume {pv_name}"),
        );
        let Some(cur) = txn.get(&pvcg, &ns, &name) else {
            continue;
        };
        let mut m = (*cur).clone();
        bind(txn, &mut m, &pv, true);
        write(txn, &pvcg, &cur, m);
        let _ = NODE;
    }
}

fn volumes(state: &State, txn: &mut Txn<'_>) {
    let pvg = gr("", "persistentvolumes");
    let pvcg = gr("", "persistentvolumeclaims");
    for pv in txn.list(&pvg, None) {
        let mut n = (*pv).clone();
        let claim_uid = str_at(&pv, "/spec/claimRef/uid").to_string();
        let claim = txn.get(
            &pvcg,
            str_at(&pv, "/spec/claimRef/namespace"),
            str_at(&pv, "/spec/claimRef/name"),
        );
        let claim_alive = claim
            .as_ref()
            .is_some_and(|c| claim_uid.is_empty() || meta_str(c, "uid") == claim_uid);
        if is_terminating(&pv) {
            if str_at(&pv, "/status/phase") != "Bound" || !claim_alive {
                remove_finalizer(&mut n, PV_PROTECTION);
                remove_finalizer(&mut n, PROVISIONER_FINALIZER);
                finish(txn, &pvg, &pv, n);
            }
            continue;
        }
        add_finalizer(&mut n, PV_PROTECTION);
        match str_at(&pv, "/status/phase") {
            "" => {
                n["status"] = json!({"phase": "Available"});
                if n.pointer("/spec/persistentVolumeReclaimPolicy").is_none() {
                    n["spec"]["persistentVolumeReclaimPolicy"] = json!("Retain");
                }
            }
            "Bound" if !claim_alive && !claim_uid.is_empty() => {
                n["status"] =
                    json!({"phase": "Released", "lastPhaseTransitionTime": now_rfc3339()});
                if str_at(&pv, "/spec/persistentVolumeReclaimPolicy") == "Delete" {
                    write(txn, &pvg, &pv, n);
                    delete(state, txn, &pvg, "", meta_str(&pv, "name"));
                    continue;
                }
            }
            _ => {}
        }
        write(txn, &pvg, &pv, n);
    }
}

const VS: &str = "volumesnapshots";
const VSC: &str = "volumesnapshotcontents";

fn vs_error(txn: &mut Txn<'_>, vs: &Arc<Value>, msg: &str) {
    let g = gr("snapshot.storage.k8s.io", VS);
    let mut n = (**vs).clone();
    if str_at(vs, "/status/error/message") == msg {
        return;
    }
    n["status"]["error"] = json!({"time": now_rfc3339(), "message": msg});
    n["status"]["readyToUse"] = json!(false);
    write(txn, &g, vs, n);
}

fn snapshots(state: &State, txn: &mut Txn<'_>) {
    let g = gr("snapshot.storage.k8s.io", VS);
    let cg = gr("snapshot.storage.k8s.io", VSC);
    for vs in txn.list(&g, None) {
        if is_terminating(&vs) {
            continue;
        }
        if vs.pointer("/status/readyToUse").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let ns = meta_str(&vs, "namespace").to_string();
        let name = meta_str(&vs, "name").to_string();
        let uid = meta_str(&vs, "uid").to_string();
        let content_name = str_at(&vs, "/spec/source/volumeSnapshotContentName").to_string();
        if !content_name.is_empty() {
            // Pre-provisioned.
            let Some(c) = txn.get(&cg, "", &content_name) else {
                event(
                    state,
                    txn,
                    &vs,
                    "Warning",
                    "SnapshotContentMissing",
                    "VolumeSnapshotContent is missing",
                );
                vs_error(txn, &vs, "VolumeSnapshotContent is missing");
                continue;
            };
            if str_at(&c, "/spec/source/snapshotHandle").is_empty() {
                let msg = format!(
                    "VolumeSnapshotContent {content_name} is dynamically provisioned while expecting a pre-provisioned one"
                );
                event(state, txn, &vs, "Warning", "SnapshotContentMismatch", &msg);
                vs_error(txn, &vs, &msg);
                continue;
            }
            let r_uid = str_at(&c, "/spec/volumeSnapshotRef/uid");
            if str_at(&c, "/spec/volumeSnapshotRef/name") != name
                || str_at(&c, "/spec/volumeSnapshotRef/namespace") != ns
                || (!r_uid.is_empty() && r_uid != uid)
            {
                let msg = format!(
                    "VolumeSnapshotContent [{content_name}] is bound to a different snapshot"
                );
                event(state, txn, &vs, "Warning", "SnapshotContentMisbound", &msg);
                vs_error(txn, &vs, &msg);
                continue;
            }
            let handle = str_at(&c, "/spec/source/snapshotHandle").to_string();
            let dir = state.runtime.snapshot_dir(&handle);
            let mut cn = (*c).clone();
            cn["spec"]["volumeSnapshotRef"]["uid"] = json!(uid);
            cn["spec"]["volumeSnapshotRef"]["kind"] = json!("VolumeSnapshot");
            cn["spec"]["volumeSnapshotRef"]["apiVersion"] = json!("snapshot.storage.k8s.io/v1");
            add_finalizer(
                &mut cn,
                "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection",
            );
            let exists = dir.is_dir();
            if c.pointer("/status/readyToUse").is_none() {
                // What the driver reports for the handle (the original content's size when known).
                let size = txn
                    .list(&cg, None)
                    .iter()
                    .find(|o| {
                        str_at(o, "/status/snapshotHandle") == handle
                            && o.pointer("/status/restoreSize").is_some()
                    })
                    .and_then(|o| o.pointer("/status/restoreSize").and_then(Value::as_u64))
                    .unwrap_or_else(|| dir_size(&dir));
                cn["status"] = json!({"snapshotHandle": handle, "readyToUse": exists, "restoreSize": size,
                    "creationTime": now_nanos()});
                if !exists {
                    cn["status"]["error"] = json!({"time": now_rfc3339(), "message": format!("snapshot {handle} not found on the backend")});
                }
            }
            let cn = write(txn, &cg, &c, cn);
            bind_snapshot(txn, &vs, &cn);
            continue;
        }
        let pvc_name = str_at(&vs, "/spec/source/persistentVolumeClaimName").to_string();
        let Some(pvc) = txn.get(&gr("", "persistentvolumeclaims"), &ns, &pvc_name) else {
            vs_error(
                txn,
                &vs,
                &format!(
                    "Failed to create snapshot: failed to get input parameters to create snapshot {name}: \"failed to retrieve PVC {pvc_name} from the lister: \\\"persistentvolumeclaim \\\\\\\"{pvc_name}\\\\\\\" not found\\\"\""
                ),
            );
            continue;
        };
        if str_at(&pvc, "/status/phase") != "Bound" {
            vs_error(
                txn,
                &vs,
                &format!(
                    "Failed to create snapshot: the PVC {pvc_name} is not yet bound to a PV, will not attempt to take a snapshot"
                ),
            );
            continue;
        }
        let Some(pv) = txn.get(
            &gr("", "persistentvolumes"),
            "",
            str_at(&pvc, "/spec/volumeName"),
        ) else {
            continue;
        };
        let driver = str_at(&pv, "/spec/csi/driver").to_string();
        let classes = txn.list(
            &gr("snapshot.storage.k8s.io", "volumesnapshotclasses"),
            None,
        );
        let class = match str_at(&vs, "/spec/volumeSnapshotClassName") {
            "" => classes
                .iter()
                .find(|c| {
                    str_at(c, "/driver") == driver
                        && c.pointer("/metadata/annotations")
                            .and_then(|a| a.get(DEFAULT_VSC))
                            .and_then(Value::as_str)
                            == Some("true")
                })
                .cloned(),
            n => classes.iter().find(|c| meta_str(c, "name") == n).cloned(),
        };
        let Some(class) = class else {
            vs_error(
                txn,
                &vs,
                &format!(
                    "Failed to create snapshot content with error failed to take snapshot {name} without a snapshot class"
                ),
            );
            continue;
        };
        if str_at(&class, "/driver") != driver {
            vs_error(
                txn,
                &vs,
                &format!(
                    "Failed to create snapshot: the snapshot class driver {} does not match the volume's driver {driver}",
                    str_at(&class, "/driver")
                ),
            );
            continue;
        }
        let sc = txn.get(
            &gr("storage.k8s.io", "storageclasses"),
            "",
            str_at(&pv, "/spec/storageClassName"),
        );
        let can_snap = sc.as_ref().is_none_or(|sc| capabilities(sc).1) && !driver.is_empty();
        if !can_snap {
            let msg = format!(
                "Failed to check and update snapshot content: failed to take snapshot of the volume {}: \"rpc error: code = Unimplemented desc = CreateSnapshot is not supported by {driver} for this volume\"",
                meta_str(&pv, "name")
            );
            event(state, txn, &vs, "Warning", "SnapshotCreationFailed", &msg);
            vs_error(txn, &vs, &msg);
            continue;
        }
        let content = format!("snapcontent-{uid}");
        let handle = format!("snapshot-{uid}");
        let c = match txn.get(&cg, "", &content) {
            Some(c) => c,
            None => {
                let src = pv
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(PATH_ANNOTATION))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let dir = state.runtime.snapshot_dir(&handle);
                if let Err(e) = copy_tree(Path::new(&src), &dir) {
                    vs_error(txn, &vs, &format!("Failed to create snapshot: {e}"));
                    continue;
                }
                event(
                    state,
                    txn,
                    &vs,
                    "Normal",
                    "CreatingSnapshot",
                    &format!("Waiting for a snapshot {ns}/{name} to be created by the CSI driver."),
                );
                let size = quantity_bytes(str_at(&pvc, "/status/capacity/storage")).unwrap_or(0);
                let obj = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                    "metadata": {"name": content, "annotations": {PATH_ANNOTATION: dir.to_string_lossy()},
                        "finalizers": ["snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"]},
                    "spec": {"volumeSnapshotRef": {"kind": "VolumeSnapshot", "apiVersion": "snapshot.storage.k8s.io/v1",
                        "namespace": ns, "name": name, "uid": uid, "resourceVersion": meta_str(&vs, "resourceVersion")},
                        "source": {"volumeHandle": str_at(&pv, "/spec/csi/volumeHandle")}, "driver": driver,
                        "deletionPolicy": class.get("deletionPolicy").cloned().unwrap_or(json!("Delete")),
                        "volumeSnapshotClassName": meta_str(&class, "name"),
                        "sourceVolumeMode": pv.pointer("/spec/volumeMode").cloned().unwrap_or(json!("Filesystem"))}});
                let Some(c) = create(state, txn, &cg, None, obj) else {
                    continue;
                };
                let mut cn = (*c).clone();
                cn["status"] = json!({"snapshotHandle": handle, "creationTime": now_nanos(), "readyToUse": true, "restoreSize": size});
                write(txn, &cg, &c, cn)
            }
        };
        bind_snapshot(txn, &vs, &c);
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn rfc3339_of_nanos(n: u64) -> String {
    crate::util::rfc3339(n / 1_000_000_000)
}

fn bind_snapshot(txn: &mut Txn<'_>, vs: &Arc<Value>, c: &Value) {
    let g = gr("snapshot.storage.k8s.io", VS);
    let mut n = (**vs).clone();
    add_finalizer(
        &mut n,
        "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection",
    );
    let ready = c
        .pointer("/status/readyToUse")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut status =
        json!({"boundVolumeSnapshotContentName": meta_str(c, "name"), "readyToUse": ready});
    if let Some(t) = c.pointer("/status/creationTime").and_then(Value::as_u64) {
        status["creationTime"] = json!(rfc3339_of_nanos(t));
    }
    if let Some(s) = c.pointer("/status/restoreSize").and_then(Value::as_u64) {
        status["restoreSize"] = json!(bytes_quantity(s));
    }
    if let Some(e) = c.pointer("/status/error") {
        status["error"] = e.clone();
    }
    n["status"] = status;
    write(txn, &g, vs, n);
}

/// Contents whose snapshot is gone: Delete removes them (and the data), Retain keeps them;
/// terminating snapshots and contents lose their finalizers.
fn contents(state: &State, txn: &mut Txn<'_>) {
    let g = gr("snapshot.storage.k8s.io", VS);
    let cg = gr("snapshot.storage.k8s.io", VSC);
    for vs in txn.list(&g, None) {
        if is_terminating(&vs) {
            let mut n = (*vs).clone();
            remove_finalizer(
                &mut n,
                "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection",
            );
            remove_finalizer(
                &mut n,
                "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection",
            );
            finish(txn, &g, &vs, n);
        }
    }
    for c in txn.list(&cg, None) {
        let r_uid = str_at(&c, "/spec/volumeSnapshotRef/uid").to_string();
        let vs_alive = !r_uid.is_empty() && txn.uid_exists(&r_uid);
        let mut n = (*c).clone();
        if is_terminating(&c) {
            if !vs_alive {
                remove_finalizer(
                    &mut n,
                    "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection",
                );
                finish(txn, &cg, &c, n);
            }
            continue;
        }
        if !r_uid.is_empty() && !vs_alive {
            remove_finalizer(
                &mut n,
                "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection",
            );
            if str_at(&c, "/spec/deletionPolicy") == "Delete" {
                let n = write(txn, &cg, &c, n);
                delete(state, txn, &cg, "", meta_str(&n, "name"));
            } else {
                write(txn, &cg, &c, n);
            }
        }
    }
}

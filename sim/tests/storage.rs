//! Storage through kube: provisioning per class and binding mode, refused
//! access modes, snapshots and restores with equal data, pre-provisioned
//! contents across namespaces, deletion policies.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Result;
use common::wait_for;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

fn dynamic(client: &Client, kind: &str, plural: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", kind),
        plural,
    );
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

async fn create_json<K>(api: &Api<K>, v: Value) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v)?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

async fn get_json(api: &Api<DynamicObject>, name: &str) -> Option<Value> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .map(|o| serde_json::to_value(o).unwrap_or_default())
}

fn pvc(name: &str, class: Option<&str>, mode: &str, extra: Value) -> Value {
    let mut v = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": [mode], "resources": {"requests": {"storage": "1Gi"}}}});
    if let Some(c) = class {
        v["spec"]["storageClassName"] = json!(c);
    }
    if let Some(m) = extra.as_object() {
        for (k, x) in m {
            v["spec"][k] = x.clone();
        }
    }
    v
}

async fn bound(api: &Api<PersistentVolumeClaim>, name: &str) -> PersistentVolumeClaim {
    wait_for(&format!("{name} bound"), 20, || async {
        let p = api.get(name).await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(p)
    })
    .await
}

async fn volume_dir(client: &Client, claim: &PersistentVolumeClaim) -> PathBuf {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs
        .get(
            claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .unwrap_or(""),
        )
        .await
        .unwrap();
    PathBuf::from(
        pv.metadata
            .annotations
            .unwrap_or_default()
            .get("sim.ferry.dev/path")
            .cloned()
            .unwrap_or_default(),
    )
}

async fn event_for(client: &Client, ns: &str, name: &str, reason: &str) -> Event {
    let evs: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("event {reason} for {name}"), 20, || async {
        evs.list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
    })
    .await
}

/// (path, mode, mtime, content or link target) of everything under `root`.
fn tree(root: &Path) -> Vec<(String, u32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u32, i64, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = p.symlink_metadata().unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let data = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes()
            } else if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.push((rel, m.mode(), m.mtime(), data));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn fill(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), b"hello").unwrap();
    std::fs::write(dir.join("sub/big.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::set_permissions(dir.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("sub/big.bin", dir.join("link")).unwrap();
}

#[tokio::test]
async fn provisioning_per_class_and_binding_modes() -> Result<()> {
    let c = common::start().await;
    let client = c.client()?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    for (name, class, mode) in [
        ("a-efs", Some("efs"), "ReadWriteMany"),
        ("a-nas", Some("ontap-nas"), "ReadWriteMany"),
        ("a-eco", Some("ontap-nas-economy"), "ReadWriteMany"),
        ("a-default", None, "ReadWriteOnce"),
        ("a-gp3", Some("gp3"), "ReadWriteOnce"),
        ("bad", Some("efs"), "ReadWriteOncePod"),
    ] {
        create_json(&pvcs, pvc(name, class, mode, json!({}))).await?;
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for (name, driver) in [
        ("a-efs", "efs.csi.aws.com"),
        ("a-nas", "csi.trident.netapp.io"),
        ("a-eco", "csi.trident.netapp.io"),
        ("a-default", "csi.trident.netapp.io"),
    ] {
        let p = bound(&pvcs, name).await;
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let spec = p.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.volume_name.as_deref(),
            Some(format!("pvc-{uid}").as_str())
        );
        let ann = p.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            ann.get("pv.kubernetes.io/bind-completed")
                .map(String::as_str),
            Some("yes")
        );
        assert_eq!(
            ann.get("pv.kubernetes.io/bound-by-controller")
                .map(String::as_str),
            Some("yes")
        );
        assert_eq!(
            ann.get("volume.kubernetes.io/storage-provisioner")
                .map(String::as_str),
            Some(driver)
        );
        assert!(
            p.metadata
                .finalizers
                .unwrap_or_default()
                .contains(&"kubernetes.io/pvc-protection".to_string())
        );
        let pv = pvs.get(&format!("pvc-{uid}")).await?;
        let pspec = pv.spec.clone().unwrap_or_default();
        assert_eq!(pspec.claim_ref.and_then(|r| r.uid), Some(uid.clone()));
        assert_eq!(pspec.csi.map(|c| c.driver).as_deref(), Some(driver));
        assert_eq!(pv.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
        assert!(
            pv.metadata
                .finalizers
                .unwrap_or_default()
                .contains(&"kubernetes.io/pv-protection".to_string())
        );
        let pann = pv.metadata.annotations.unwrap_or_default();
        assert_eq!(
            pann.get("pv.kubernetes.io/provisioned-by")
                .map(String::as_str),
            Some(driver)
        );
        assert!(Path::new(&pann["sim.ferry.dev/path"]).is_dir());
    }
    assert_eq!(
        pvcs.get("a-default")
            .await?
            .spec
            .and_then(|s| s.storage_class_name)
            .as_deref(),
        Some("ontap-nas")
    );
    // WaitForFirstConsumer: pending until a pod uses it.
    event_for(&client, "default", "a-gp3", "WaitForFirstConsumer").await;
    assert_eq!(
        pvcs.get("a-gp3")
            .await?
            .status
            .and_then(|s| s.phase)
            .as_deref(),
        Some("Pending")
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    create_json(&pods, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "a-gp3"}}]}})).await?;
    let p = bound(&pvcs, "a-gp3").await;
    assert_eq!(
        p.metadata
            .annotations
            .unwrap_or_default()
            .get("volume.kubernetes.io/selected-node")
            .map(String::as_str),
        Some("sim-node")
    );
    wait_for("pod running", 20, || async {
        let p = pods.get("user").await.ok()?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    // A mode the driver cannot give.
    let ev = event_for(&client, "default", "bad", "ProvisioningFailed").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.message.unwrap_or_default().contains("ReadWriteOncePod"));
    assert_eq!(
        pvcs.get("bad")
            .await?
            .status
            .and_then(|s| s.phase)
            .as_deref(),
        Some("Pending")
    );
    // Deleting a claim deletes its volume (reclaim Delete) and the data.
    let nas = pvcs.get("a-nas").await?;
    let dir = volume_dir(&client, &nas).await;
    let pv_name = nas.spec.and_then(|s| s.volume_name).unwrap_or_default();
    pvcs.delete("a-nas", &DeleteParams::default()).await?;
    wait_for("volume deleted", 20, || async {
        pvs.get_opt(&pv_name).await.ok()?.is_none().then_some(())
    })
    .await;
    wait_for("data deleted", 20, || async {
        (!dir.exists()).then_some(())
    })
    .await;
    // A claim in use stays until its pod goes.
    pvcs.delete("a-gp3", &DeleteParams::default()).await?;
    let held = pvcs.get("a-gp3").await?;
    assert!(held.metadata.deletion_timestamp.is_some());
    pods.delete("user", &DeleteParams::default()).await?;
    wait_for("claim released", 20, || async {
        pvcs.get_opt("a-gp3").await.ok()?.is_none().then_some(())
    })
    .await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn snapshots_restores_and_clones_keep_data() -> Result<()> {
    let c = common::start().await;
    let client = c.client()?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    create_json(
        &pvcs,
        pvc("src", Some("ontap-nas"), "ReadWriteOnce", json!({})),
    )
    .await?;
    let src = bound(&pvcs, "src").await;
    let src_dir = volume_dir(&client, &src).await;
    fill(&src_dir);
    let before = tree(&src_dir);
    let vss = dynamic(
        &client,
        "VolumeSnapshot",
        "volumesnapshots",
        Some("default"),
    );
    let vscs = dynamic(
        &client,
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
        None,
    );
    create_json(
        &vss,
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "snap1"}, "spec": {"volumeSnapshotClassName": "trident-snapclass",
        "source": {"persistentVolumeClaimName": "src"}}}),
    )
    .await?;
    let vs = wait_for("snapshot ready", 20, || async {
        let v = get_json(&vss, "snap1").await?;
        (v["status"]["readyToUse"] == true).then_some(v)
    })
    .await;
    assert_eq!(vs["status"]["restoreSize"], "1Gi");
    assert!(vs["status"]["creationTime"].as_str().is_some());
    let content = vs["status"]["boundVolumeSnapshotContentName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        content,
        format!(
            "snapcontent-{}",
            vs["metadata"]["uid"].as_str().unwrap_or("")
        )
    );
    let vsc = get_json(&vscs, &content).await.expect("content");
    assert_eq!(vsc["spec"]["driver"], "csi.trident.netapp.io");
    assert_eq!(vsc["spec"]["deletionPolicy"], "Delete");
    assert_eq!(vsc["status"]["restoreSize"], 1u64 << 30);
    assert!(vsc["status"]["creationTime"].as_u64().is_some());
    let handle = vsc["status"]["snapshotHandle"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // Point in time: later writes are not in the snapshot.
    std::fs::write(src_dir.join("later.txt"), b"after")?;
    create_json(&pvcs, pvc("restored", Some("ontap-nas"), "ReadWriteOnce",
        json!({"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}))).await?;
    let restored = bound(&pvcs, "restored").await;
    assert_eq!(tree(&volume_dir(&client, &restored).await), before);
    // Clone from a PVC: the current data.
    create_json(
        &pvcs,
        pvc(
            "clone",
            Some("ontap-nas"),
            "ReadWriteOnce",
            json!({"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "src"}}),
        ),
    )
    .await?;
    let clone = bound(&pvcs, "clone").await;
    let spec = clone.spec.clone().unwrap_or_default();
    assert_eq!(
        spec.data_source.map(|d| d.name).as_deref(),
        Some("src"),
        "dataSourceRef mirrored"
    );
    let spec = restored.spec.clone().unwrap_or_default();
    assert_eq!(
        spec.data_source_ref.map(|d| d.name).as_deref(),
        Some("snap1"),
        "dataSource mirrored"
    );
    assert_eq!(tree(&volume_dir(&client, &clone).await), tree(&src_dir));

    // Economy and EFS cannot snapshot: the snapshot fails with an error.
    create_json(
        &pvcs,
        pvc("eco", Some("ontap-nas-economy"), "ReadWriteOnce", json!({})),
    )
    .await?;
    create_json(&pvcs, pvc("files", Some("efs"), "ReadWriteMany", json!({}))).await?;
    bound(&pvcs, "eco").await;
    bound(&pvcs, "files").await;
    for (name, claim, class) in [
        ("eco-snap", "eco", Some("trident-snapclass")),
        ("efs-snap", "files", None),
    ] {
        let mut v = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": name}, "spec": {"source": {"persistentVolumeClaimName": claim}}});
        if let Some(cl) = class {
            v["spec"]["volumeSnapshotClassName"] = json!(cl);
        }
        create_json(&vss, v).await?;
        let v = wait_for("snapshot error", 20, || async {
            let v = get_json(&vss, name).await?;
            v["status"]["error"]["message"]
                .as_str()
                .is_some()
                .then_some(v)
        })
        .await;
        assert_eq!(v["status"]["readyToUse"], false, "{v}");
    }

    // Pre-provisioned content bound from another namespace.
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    create_json(
        &nss,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}),
    )
    .await?;
    create_json(&vscs, json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": "pre"}, "spec": {"driver": "csi.trident.netapp.io", "deletionPolicy": "Retain",
        "source": {"snapshotHandle": handle}, "volumeSnapshotRef": {"name": "copy", "namespace": "other"}}})).await?;
    let other_vss = dynamic(&client, "VolumeSnapshot", "volumesnapshots", Some("other"));
    for name in ["copy", "wrong"] {
        create_json(
            &other_vss,
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": name}, "spec": {"source": {"volumeSnapshotContentName": "pre"}}}),
        )
        .await?;
    }
    let copy = wait_for("pre-provisioned ready", 20, || async {
        let v = get_json(&other_vss, "copy").await?;
        (v["status"]["readyToUse"] == true).then_some(v)
    })
    .await;
    assert_eq!(copy["status"]["restoreSize"], "1Gi");
    let pre = get_json(&vscs, "pre").await.expect("pre");
    assert_eq!(
        pre["spec"]["volumeSnapshotRef"]["uid"],
        copy["metadata"]["uid"]
    );
    let wrong = wait_for("misbound error", 20, || async {
        let v = get_json(&other_vss, "wrong").await?;
        v["status"]["error"]["message"].as_str().map(str::to_string)
    })
    .await;
    assert!(wrong.contains("bound to a different snapshot"), "{wrong}");
    let other_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "other");
    create_json(&other_pvcs, pvc("data", Some("ontap-nas"), "ReadWriteOnce",
        json!({"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "copy"}}))).await?;
    let data = bound(&other_pvcs, "data").await;
    assert_eq!(tree(&volume_dir(&client, &data).await), before);

    // Retain keeps the content; Delete removes content and data.
    other_vss.delete("copy", &DeleteParams::default()).await?;
    wait_for("copy gone", 20, || async {
        get_json(&other_vss, "copy").await.is_none().then_some(())
    })
    .await;
    assert!(
        get_json(&vscs, "pre").await.is_some(),
        "Retain keeps the content"
    );
    vss.delete("snap1", &DeleteParams::default()).await?;
    wait_for("content deleted", 20, || async {
        get_json(&vscs, &content).await.is_none().then_some(())
    })
    .await;
    let snap_dir = c.data_dir().join("snapshots").join(&handle);
    wait_for("snapshot data deleted", 20, || async {
        (!snap_dir.exists()).then_some(())
    })
    .await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn cluster_objects_replace_the_default_classes() -> Result<()> {
    let sc = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "only", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "example.com/csi", "volumeBindingMode": "Immediate",
        "parameters": {"sim.ferry.dev/accessModes": "ReadWriteOnce"}});
    let c = common::start_with(ferry_sim::SimOptions {
        cluster_objects: Some(vec![sc]),
        ..Default::default()
    })
    .await;
    let client = c.client()?;
    let scs: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    let names: Vec<String> = scs
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert_eq!(names, vec!["only".to_string()]);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    create_json(&pvcs, pvc("ok", None, "ReadWriteOnce", json!({}))).await?;
    create_json(&pvcs, pvc("no", None, "ReadWriteMany", json!({}))).await?;
    bound(&pvcs, "ok").await;
    event_for(&client, "default", "no", "ProvisioningFailed").await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_releases_claims_volumes_and_snapshots() -> Result<()> {
    let c = common::start().await;
    let client = c.client()?;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    create_json(
        &nss,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
    )
    .await?;
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), "app");
    create_json(&sts, json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "postgres:16", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})).await?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "app");
    let claim = bound(&pvcs, "data-db-0").await;
    let pv_name = claim.spec.and_then(|s| s.volume_name).unwrap_or_default();
    let vss = dynamic(&client, "VolumeSnapshot", "volumesnapshots", Some("app"));
    create_json(
        &vss,
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "s"}, "spec": {"source": {"persistentVolumeClaimName": "data-db-0"}}}),
    )
    .await?;
    wait_for("snapshot ready", 20, || async {
        (get_json(&vss, "s").await?["status"]["readyToUse"] == true).then_some(())
    })
    .await;
    nss.delete("app", &DeleteParams::default()).await?;
    wait_for("namespace gone", 30, || async {
        nss.get_opt("app").await.ok()?.is_none().then_some(())
    })
    .await;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    wait_for("volume gone", 20, || async {
        pvs.get_opt(&pv_name).await.ok()?.is_none().then_some(())
    })
    .await;
    let vscs = dynamic(
        &client,
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
        None,
    );
    wait_for("contents gone", 20, || async {
        vscs.list(&Default::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    c.stop().await;
    Ok(())
}

//! Workload controllers through kube: Deployments, StatefulSets, DaemonSets,
//! Jobs to ready and back to 0, never-ready pods.

mod common;

use anyhow::Result;
use common::wait_for;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn pp() -> PatchParams {
    PatchParams::default()
}

async fn scale<K>(api: &Api<K>, name: &str, n: i32) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &pp(), &Patch::Merge(json!({"spec": {"replicas": n}})))
        .await?;
    Ok(())
}

fn tpl(app: &str, annotations: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"labels": {"app": app}, "annotations": annotations},
           "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}})
}

#[tokio::test]
async fn deployment_to_ready_and_back_to_zero() -> Result<()> {
    let c = common::start().await;
    let client = c.client()?;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": tpl("web", json!({}))}}))?;
    deps.create(&PostParams::default(), &d).await?;
    let st = wait_for("deployment available", 20, || async {
        let d = deps.get("web").await.ok()?;
        let s = d.status.clone()?;
        (s.available_replicas == Some(2)
            && s.updated_replicas == Some(2)
            && s.observed_generation == d.metadata.generation)
            .then_some(s)
    })
    .await;
    assert_eq!(st.ready_replicas, Some(2));
    let conds = st.conditions.unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
    );
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Progressing"
                && c.reason.as_deref() == Some("NewReplicaSetAvailable"))
    );
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let rs = rss.list(&ListParams::default()).await?.items;
    assert_eq!(rs.len(), 1);
    let rs_name = rs[0].metadata.name.clone().unwrap_or_default();
    let hash = rs[0]
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(rs_name, format!("web-{hash}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ps = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items;
    assert_eq!(ps.len(), 2);
    for p in &ps {
        let n = p.metadata.name.clone().unwrap_or_default();
        assert!(
            n.starts_with(&format!("{rs_name}-")) && n.len() == rs_name.len() + 6,
            "{n}"
        );
        assert_eq!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
    }
    // A template change rolls to a new ReplicaSet (revision 2).
    deps.patch(
        "web",
        &pp(),
        &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"x": "1"}}}}})),
    )
    .await?;
    wait_for("rollout to revision 2", 20, || async {
        let d = deps.get("web").await.ok()?;
        let s = d.status.clone()?;
        let rev = d
            .metadata
            .annotations
            .as_ref()?
            .get("deployment.kubernetes.io/revision")?
            .clone();
        (rev == "2"
            && s.updated_replicas == Some(2)
            && s.replicas == Some(2)
            && s.available_replicas == Some(2)
            && s.observed_generation == d.metadata.generation)
            .then_some(())
    })
    .await;
    scale(&deps, "web", 0).await?;
    wait_for("scaled to zero", 20, || async {
        let d = deps.get("web").await.ok()?;
        let s = d.status.clone()?;
        let left = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?
            .items
            .len();
        (s.replicas.unwrap_or(0) == 0
            && left == 0
            && s.observed_generation == d.metadata.generation)
            .then_some(())
    })
    .await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn statefulset_ordered_pods_and_claims() -> Result<()> {
    let c = common::start().await;
    let client = c.client()?;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let s = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "postgres:16", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}))?;
    sts.create(&PostParams::default(), &s).await?;
    let st = wait_for("statefulset ready", 20, || async {
        let s = sts.get("db").await.ok()?;
        let st = s.status.clone()?;
        (st.ready_replicas == Some(3)
            && st.updated_replicas == Some(3)
            && st.observed_generation == s.metadata.generation)
            .then_some(st)
    })
    .await;
    assert_eq!(st.current_revision, st.update_revision);
    assert!(st.update_revision.unwrap_or_default().starts_with("db-"));
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut created: Vec<(String, String)> = Vec::new();
    for i in 0..3 {
        let pvc = pvcs.get(&format!("data-db-{i}")).await?;
        assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
        let p = pods.get(&format!("db-{i}")).await?;
        created.push((
            p.metadata
                .creation_timestamp
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            format!("db-{i}"),
        ));
        let claim = p
            .spec
            .and_then(|s| s.volumes)
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "data")
            .and_then(|v| v.persistent_volume_claim)
            .map(|c| c.claim_name);
        assert_eq!(claim, Some(format!("data-db-{i}")));
    }
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(sorted, created, "pods created in ordinal order");
    scale(&sts, "db", 0).await?;
    wait_for("statefulset at zero", 20, || async {
        let s = sts.get("db").await.ok()?;
        let st = s.status.clone()?;
        let left = pods
            .list(&ListParams::default().labels("app=db"))
            .await
            .ok()?
            .items
            .len();
        (st.replicas == 0 && left == 0 && st.observed_generation == s.metadata.generation)
            .then_some(())
    })
    .await;
    // Claims stay (retention policy Retain).
    assert!(pvcs.get_opt("data-db-2").await?.is_some());
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn daemonset_job_and_never_ready() -> Result<()> {
    let c = common::start().await;
    let client = c.client()?;
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let ds = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": tpl("agent", json!({}))}}))?;
    dss.create(&PostParams::default(), &ds).await?;
    wait_for("daemonset available", 20, || async {
        let d = dss.get("agent").await.ok()?;
        let s = d.status.clone()?;
        (s.desired_number_scheduled == 1
            && s.number_available == Some(1)
            && s.updated_number_scheduled == Some(1)
            && s.observed_generation == d.metadata.generation)
            .then_some(())
    })
    .await;

    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let mut jt = tpl("once", json!({}));
    jt["spec"]["restartPolicy"] = json!("Never");
    let j = serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "once"}, "spec": {"template": jt}}))?;
    jobs.create(&PostParams::default(), &j).await?;
    wait_for("job complete", 20, || async {
        let j = jobs.get("once").await.ok()?;
        let s = j.status?;
        (s.succeeded == Some(1)
            && s.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True"))
        .then_some(())
    })
    .await;

    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "stuck"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "stuck"}},
            "template": tpl("stuck", json!({"sim.ferry.dev/never-ready": "true"}))}}))?;
    deps.create(&PostParams::default(), &d).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = wait_for("never-ready pod running", 20, || async {
        let ps = pods
            .list(&ListParams::default().labels("app=stuck"))
            .await
            .ok()?
            .items;
        ps.into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    let ready = p
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready");
    assert_eq!(ready.map(|c| c.status).as_deref(), Some("False"));
    let d = deps.get("stuck").await?;
    let s = d.status.unwrap_or_default();
    assert_eq!(s.ready_replicas.unwrap_or(0), 0);
    assert_eq!(s.available_replicas.unwrap_or(0), 0);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() -> Result<()> {
    let c = common::start().await;
    let svcs: Api<Service> = Api::namespaced(c.client()?, "default");
    let s = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "selector": {"app": "x"}, "ports": [{"port": 80}, {"port": 443, "nodePort": 31443}]}}),
    )?;
    let s = svcs.create(&PostParams::default(), &s).await?;
    let spec = s.spec.unwrap_or_default();
    assert!(spec.cluster_ip.unwrap_or_default().starts_with("10.96."));
    let ports = spec.ports.unwrap_or_default();
    let p0 = ports[0].node_port.unwrap_or(0);
    assert!((30000..=32767).contains(&p0), "{p0}");
    assert_eq!(ports[1].node_port, Some(31443));
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn settled_workloads_are_not_rewritten() -> Result<()> {
    let c = common::start().await;
    let client = c.client()?;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    deps.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": tpl("web", json!({}))}}))?).await?;
    sts.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"}, "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": tpl("db", json!({}))}}))?).await?;
    dss.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": tpl("agent", json!({}))}}))?).await?;
    let mut jt = tpl("once", json!({}));
    jt["spec"]["restartPolicy"] = json!("Never");
    jobs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "once"}, "spec": {"template": jt}}))?,
    )
    .await?;
    let rvs = || async {
        let d = deps.get("web").await.ok()?;
        let s = sts.get("db").await.ok()?;
        let a = dss.get("agent").await.ok()?;
        let j = jobs.get("once").await.ok()?;
        let settled = d.status.as_ref()?.available_replicas == Some(1)
            && s.status.as_ref()?.ready_replicas == Some(1)
            && a.status.as_ref()?.number_available == Some(1)
            && j.status.as_ref()?.succeeded == Some(1);
        settled.then_some([
            d.metadata.resource_version,
            s.metadata.resource_version,
            a.metadata.resource_version,
            j.metadata.resource_version,
        ])
    };
    let before = wait_for("all settled", 20, rvs).await;
    // More activity in the namespace (a pod going to Running) must not rewrite them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "lone"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))?).await?;
    wait_for("lone running", 20, || async {
        (pods.get("lone").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let after = wait_for("still settled", 20, rvs).await;
    assert_eq!(before, after);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_scheduler_keeps_node_affinity_and_read_write_once_pod_claims() -> Result<()> {
    let c = common::start().await;
    let client = c.client()?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "solo"},
        "spec": {"accessModes": ["ReadWriteOncePod"], "storageClassName": "gp3",
            "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    pvcs.create(&PostParams::default(), &pvc).await?;
    let pod = |name: &str, claim: Option<&str>, node: Option<&str>| -> Result<Pod> {
        let mut p = json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(claim) = claim {
            p["spec"]["volumes"] =
                json!([{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]);
        }
        if let Some(node) = node {
            p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
        }
        Ok(serde_json::from_value(p)?)
    };
    let phase_of = |name: &'static str| {
        let pods = pods.clone();
        move || {
            let pods = pods.clone();
            async move {
                let p = pods.get(name).await.ok()?;
                let st = p.status?;
                let why = st
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "PodScheduled")
                    .and_then(|c| c.message)
                    .unwrap_or_default();
                Some((st.phase.unwrap_or_default(), why))
            }
        }
    };
    let running = |name: &'static str| {
        let f = phase_of(name);
        async move {
            wait_for(name, 20, || {
                let g = f();
                async move { g.await.filter(|(p, _)| p == "Running") }
            })
            .await
        }
    };
    let unschedulable = |name: &'static str, words: &'static str| {
        let f = phase_of(name);
        async move {
            wait_for(name, 20, || {
                let g = f();
                async move {
                    g.await
                        .filter(|(p, why)| p == "Pending" && why.contains(words))
                }
            })
            .await
        }
    };

    pods.create(&PostParams::default(), &pod("first", Some("solo"), None)?)
        .await?;
    running("first").await;
    pods.create(&PostParams::default(), &pod("second", Some("solo"), None)?)
        .await?;
    let (_, why) = unschedulable("second", "ReadWriteOncePod").await;
    assert!(why.starts_with("0/1 nodes are available: 1 node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode."), "{why}");
    pods.delete("first", &Default::default()).await?;
    running("second").await;

    pods.create(
        &PostParams::default(),
        &pod("elsewhere", None, Some("node-7"))?,
    )
    .await?;
    let (_, why) = unschedulable("elsewhere", "node affinity").await;
    assert!(
        why.contains("didn't match Pod's node affinity/selector"),
        "{why}"
    );
    pods.create(
        &PostParams::default(),
        &pod("here", None, Some("sim-node"))?,
    )
    .await?;
    running("here").await;
    c.stop().await;
    Ok(())
}

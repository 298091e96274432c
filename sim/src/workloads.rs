//! Workload controllers and the simulated kubelet.
//!
//! - Deployments own ReplicaSets named `<deploy>-<pod-template-hash>`; a
//!   template change makes a new ReplicaSet (revision + 1) and scales the old
//!   ones to 0 at once.
//! - ReplicaSets, DaemonSets (one node, [`NODE`]) and Jobs create pods named
//!   `<owner>-<5 random>`; StatefulSets create `<sts>-<ordinal>` in order
//!   (OrderedReady waits for each to be ready; Parallel does not) with PVCs
//!   `<template>-<sts>-<ordinal>` from `volumeClaimTemplates`, and roll
//!   template changes from the highest ordinal down.
//! - The kubelet ([`kubelet_tick`]) schedules pods to [`NODE`] (picking the
//!   node for WaitForFirstConsumer claims; none when a required node
//!   affinity excludes it or another pod uses a ReadWriteOncePod claim of
//!   the pod's), and once every claim is bound and
//!   [`crate::ctl::Runtime::pod_ready_delay`] has passed, sets the pod
//!   Running and Ready (Job pods: Succeeded; pods annotated
//!   `sim.ferry.dev/never-ready: "true"`: Running, never Ready).
//!
//! Status fields and conditions are the ones the real controllers write and
//! `kubectl rollout status` reads. CronJobs are stored only.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::ctl::{
    NEVER_READY, NODE, condition, create, delete, gr, int, owned_by, owner_ref, safe_hash, str_at,
    write,
};
use crate::objects::{State, is_terminating};
use crate::store::{StoreEvent, Txn};
use crate::util::{meta_str, now_rfc3339};

const REVISION: &str = "deployment.kubernetes.io/revision";

fn relevant(ev: &StoreEvent) -> bool {
    matches!(
        (ev.gr.group.as_str(), ev.gr.resource.as_str()),
        ("apps", _) | ("batch", "jobs") | ("", "pods")
    )
}

/// The workload controllers (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job).
pub fn workloads(state: &State, ev: Option<&StoreEvent>) {
    if ev.is_some_and(|e| !relevant(e)) {
        return;
    }
    state.store.transact(|txn| {
        let namespaces: Vec<String> = match ev {
            Some(e) => vec![e.namespace.clone()],
            None => txn
                .list(&gr("", "namespaces"), None)
                .iter()
                .map(|n| meta_str(n, "name").to_string())
                .collect(),
        };
        for ns in namespaces {
            for d in txn.list(&gr("apps", "deployments"), Some(&ns)) {
                deployment(state, txn, &d);
            }
            for rs in txn.list(&gr("apps", "replicasets"), Some(&ns)) {
                replicaset(state, txn, &rs);
            }
            for d in txn.list(&gr("apps", "deployments"), Some(&ns)) {
                deployment_status(txn, &d);
            }
            for s in txn.list(&gr("apps", "statefulsets"), Some(&ns)) {
                statefulset(state, txn, &s);
            }
            for d in txn.list(&gr("apps", "daemonsets"), Some(&ns)) {
                daemonset(state, txn, &d);
            }
            for j in txn.list(&gr("batch", "jobs"), Some(&ns)) {
                job(state, txn, &j);
            }
        }
    })
}

fn labels(v: &Value, ptr: &str) -> Map<String, Value> {
    v.pointer(ptr)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn template_hash(obj: &Value) -> String {
    let tpl = obj.pointer("/spec/template").cloned().unwrap_or(json!({}));
    safe_hash(&tpl.to_string())
}

/// A pod (or pod-template-based object) made from `owner`'s template.
fn pod_from(owner: &Value, name: Option<&str>, extra: &[(&str, String)]) -> Value {
    let tpl = owner
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(json!({}));
    let mut l = labels(&tpl, "/metadata/labels");
    for (k, v) in extra {
        l.insert(k.to_string(), json!(v));
    }
    let mut meta = json!({"labels": l, "ownerReferences": [owner_ref(owner)]});
    if let Some(a) = tpl.pointer("/metadata/annotations") {
        meta["annotations"] = a.clone();
    }
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(format!("{}-", meta_str(owner, "name"))),
    }
    let mut spec = tpl.get("spec").cloned().unwrap_or(json!({}));
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("serviceAccountName", json!("default")),
        ("serviceAccount", json!("default")),
        ("securityContext", json!({})),
    ] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

fn owned_pods(txn: &Txn<'_>, ns: &str, uid: &str) -> Vec<Arc<Value>> {
    txn.list(&gr("", "pods"), Some(ns))
        .into_iter()
        .filter(|p| owned_by(p, uid) && !is_terminating(p))
        .collect()
}

/// Whether a pod is Ready.
pub fn pod_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn phase(p: &Value) -> &str {
    str_at(p, "/status/phase")
}

fn set_status(txn: &mut Txn<'_>, g: &crate::resources::GroupResource, obj: &Value, status: Value) {
    let Some(cur) = txn.get(g, meta_str(obj, "namespace"), meta_str(obj, "name")) else {
        return;
    };
    let mut new = (*cur).clone();
    new["status"] = status;
    write(txn, g, &cur, new);
}

/// Put non-zero counts into `status` (the real controllers omit zeros).
fn counts(status: &mut Value, fields: &[(&str, i64)], keep_zero: bool) {
    for (k, v) in fields {
        if *v != 0 || keep_zero {
            status[*k] = json!(v);
        }
    }
}

fn deployment(state: &State, txn: &mut Txn<'_>, d: &Arc<Value>) {
    if is_terminating(d) {
        return;
    }
    let ns = meta_str(d, "namespace").to_string();
    let name = meta_str(d, "name").to_string();
    let uid = meta_str(d, "uid").to_string();
    let rs_gr = gr("apps", "replicasets");
    let hash = template_hash(d);
    let new_name = format!("{name}-{hash}");
    let replicas = int(d, "/spec/replicas", 1);
    let owned: Vec<Arc<Value>> = txn
        .list(&rs_gr, Some(&ns))
        .into_iter()
        .filter(|r| owned_by(r, &uid))
        .collect();
    let rev_of = |r: &Value| -> i64 {
        r.pointer("/metadata/annotations")
            .and_then(|a| a.get(REVISION))
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let max_rev = owned.iter().map(|r| rev_of(r)).max().unwrap_or(0);
    let existing = owned
        .iter()
        .find(|r| meta_str(r, "name") == new_name)
        .cloned();
    let new_rs = match existing {
        Some(r) => {
            let mut n = (*r).clone();
            if rev_of(&r) < max_rev || rev_of(&r) == 0 {
                n["metadata"]["annotations"][REVISION] = json!((max_rev + 1).to_string());
            }
            n["spec"]["replicas"] = json!(replicas);
            n["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                json!(replicas.to_string());
            write(txn, &rs_gr, &r, n)
        }
        None => {
            let mut rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet"});
            let mut tpl = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
            tpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut sel = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            sel["matchLabels"]["pod-template-hash"] = json!(hash);
            let mut l = labels(&tpl, "/metadata/labels");
            l.insert("pod-template-hash".into(), json!(hash));
            rs["metadata"] = json!({"name": new_name, "labels": l, "ownerReferences": [owner_ref(d)],
                "annotations": {REVISION: (max_rev + 1).to_string(),
                    "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                    "deployment.kubernetes.io/max-replicas": (replicas + 1).to_string()}});
            rs["spec"] = json!({"replicas": replicas, "selector": sel, "template": tpl,
                "minReadySeconds": d.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0))});
            match create(state, txn, &rs_gr, Some(&ns), rs) {
                Some(r) => r,
                None => return,
            }
        }
    };
    for r in owned.iter().filter(|r| meta_str(r, "name") != new_name) {
        if int(r, "/spec/replicas", 1) != 0 {
            let mut n = (**r).clone();
            n["spec"]["replicas"] = json!(0);
            write(txn, &rs_gr, r, n);
        }
    }
    let rev = new_rs
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .cloned()
        .unwrap_or(json!("1"));
    if let Some(cur) = txn.get(&gr("apps", "deployments"), &ns, &name) {
        let mut n = (*cur).clone();
        n["metadata"]["annotations"][REVISION] = rev;
        write(txn, &gr("apps", "deployments"), &cur, n);
    }
}

fn max_unavailable(d: &Value, replicas: i64) -> i64 {
    if str_at(d, "/spec/strategy/type") == "Recreate" {
        return 0;
    }
    match d.pointer("/spec/strategy/rollingUpdate/maxUnavailable") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) if s.ends_with('%') => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            replicas * p / 100
        }
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => replicas * 25 / 100,
    }
}

fn deployment_status(txn: &mut Txn<'_>, d: &Arc<Value>) {
    let Some(d) = txn.get(
        &gr("apps", "deployments"),
        meta_str(d, "namespace"),
        meta_str(d, "name"),
    ) else {
        return;
    };
    if is_terminating(&d) {
        return;
    }
    let ns = meta_str(&d, "namespace").to_string();
    let uid = meta_str(&d, "uid").to_string();
    let new_name = format!("{}-{}", meta_str(&d, "name"), template_hash(&d));
    let replicas = int(&d, "/spec/replicas", 1);
    let owned: Vec<Arc<Value>> = txn
        .list(&gr("apps", "replicasets"), Some(&ns))
        .into_iter()
        .filter(|r| owned_by(r, &uid))
        .collect();
    let sum = |f: &str| -> i64 { owned.iter().map(|r| int(r, f, 0)).sum() };
    let total = sum("/status/replicas");
    let ready = sum("/status/readyReplicas");
    let available = sum("/status/availableReplicas");
    let new_rs = owned.iter().find(|r| meta_str(r, "name") == new_name);
    let updated = new_rs.map(|r| int(r, "/status/replicas", 0)).unwrap_or(0);
    let new_available = new_rs
        .map(|r| int(r, "/status/availableReplicas", 0))
        .unwrap_or(0);
    let mut status = json!({"observedGeneration": int(&d, "/metadata/generation", 1)});
    counts(
        &mut status,
        &[
            ("replicas", total),
            ("updatedReplicas", updated),
            ("readyReplicas", ready),
            ("availableReplicas", available),
            ("unavailableReplicas", (total - available).max(0)),
        ],
        false,
    );
    let avail_ok = available >= replicas - max_unavailable(&d, replicas);
    let available_c = if avail_ok {
        condition(
            &d,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        condition(
            &d,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    let done = updated == replicas && total == updated && new_available >= replicas;
    let progressing = if done {
        condition(
            &d,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else {
        condition(
            &d,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    status["conditions"] = json!([available_c, progressing]);
    set_status(txn, &gr("apps", "deployments"), &d, status);
}

fn replicaset(state: &State, txn: &mut Txn<'_>, rs: &Arc<Value>) {
    if is_terminating(rs) {
        return;
    }
    let ns = meta_str(rs, "namespace").to_string();
    let uid = meta_str(rs, "uid").to_string();
    let want = int(rs, "/spec/replicas", 1);
    let mut pods: Vec<Arc<Value>> = owned_pods(txn, &ns, &uid)
        .into_iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let have = pods.len() as i64;
    if have < want {
        for _ in have..want {
            let hash = rs
                .pointer("/metadata/labels/pod-template-hash")
                .and_then(Value::as_str)
                .map(str::to_string);
            let extra: Vec<(&str, String)> =
                hash.map(|h| ("pod-template-hash", h)).into_iter().collect();
            if let Some(p) = create(
                state,
                txn,
                &gr("", "pods"),
                Some(&ns),
                pod_from(rs, None, &extra),
            ) {
                pods.push(p);
            }
        }
    } else if have > want {
        // Not-ready and newest go first.
        pods.sort_by_key(|p| {
            (
                pod_ready(p),
                std::cmp::Reverse(meta_str(p, "creationTimestamp").to_string()),
            )
        });
        let extra: Vec<Arc<Value>> = pods.drain(..(have - want) as usize).collect();
        for p in extra {
            delete(state, txn, &gr("", "pods"), &ns, meta_str(&p, "name"));
        }
    }
    let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
    let mut status = json!({"observedGeneration": int(rs, "/metadata/generation", 1)});
    status["replicas"] = json!(pods.len());
    counts(
        &mut status,
        &[
            ("fullyLabeledReplicas", pods.len() as i64),
            ("readyReplicas", ready),
            ("availableReplicas", ready),
        ],
        false,
    );
    set_status(txn, &gr("apps", "replicasets"), rs, status);
}

fn statefulset(state: &State, txn: &mut Txn<'_>, s: &Arc<Value>) {
    if is_terminating(s) {
        return;
    }
    let ns = meta_str(s, "namespace").to_string();
    let name = meta_str(s, "name").to_string();
    let uid = meta_str(s, "uid").to_string();
    let replicas = int(s, "/spec/replicas", 1);
    let ordered = str_at(s, "/spec/podManagementPolicy") != "Parallel";
    let rev = format!("{name}-{}", template_hash(s));
    let pods_gr = gr("", "pods");
    let pvc_gr = gr("", "persistentvolumeclaims");
    let templates: Vec<Value> = s
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ordinal = |p: &Value| -> Option<i64> {
        meta_str(p, "name")
            .strip_prefix(&format!("{name}-"))
            .and_then(|o| o.parse().ok())
    };
    let sel = labels(s, "/spec/selector/matchLabels");
    for i in 0..replicas {
        let pod_name = format!("{name}-{i}");
        for t in &templates {
            let tname = meta_str(t, "name");
            let claim = format!("{tname}-{name}-{i}");
            if txn.get(&pvc_gr, &ns, &claim).is_none() {
                let mut l = sel.clone();
                for (k, v) in labels(t, "/metadata/labels") {
                    l.insert(k, v);
                }
                let mut meta = json!({"name": claim, "labels": l});
                if let Some(a) = t.pointer("/metadata/annotations") {
                    meta["annotations"] = a.clone();
                }
                let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
                    "spec": t.get("spec").cloned().unwrap_or(json!({}))});
                create(state, txn, &pvc_gr, Some(&ns), pvc);
            }
        }
        match txn.get(&pods_gr, &ns, &pod_name) {
            None => {
                let mut pod = pod_from(
                    s,
                    Some(&pod_name),
                    &[
                        ("controller-revision-hash", rev.clone()),
                        ("statefulset.kubernetes.io/pod-name", pod_name.clone()),
                        ("apps.kubernetes.io/pod-index", i.to_string()),
                    ],
                );
                pod["spec"]["hostname"] = json!(pod_name);
                if let Some(svc) = s.pointer("/spec/serviceName").and_then(Value::as_str) {
                    pod["spec"]["subdomain"] = json!(svc);
                }
                let mut vols = pod["spec"]
                    .get("volumes")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for t in &templates {
                    let tname = meta_str(t, "name");
                    vols.retain(|v| v.get("name").and_then(Value::as_str) != Some(tname));
                    vols.push(json!({"name": tname, "persistentVolumeClaim": {"claimName": format!("{tname}-{name}-{i}")}}));
                }
                if !vols.is_empty() {
                    pod["spec"]["volumes"] = Value::Array(vols);
                }
                create(state, txn, &pods_gr, Some(&ns), pod);
                if ordered {
                    break;
                }
            }
            Some(p) => {
                if ordered && (!pod_ready(&p) || is_terminating(&p)) {
                    break;
                }
            }
        }
    }
    let mut pods: Vec<Arc<Value>> = owned_pods(txn, &ns, &uid)
        .into_iter()
        .filter(|p| ordinal(p).is_some())
        .collect();
    pods.sort_by_key(|p| std::cmp::Reverse(ordinal(p).unwrap_or(0)));
    // Scale down from the highest ordinal.
    let extra: Vec<Arc<Value>> = pods
        .iter()
        .filter(|p| ordinal(p).unwrap_or(0) >= replicas)
        .cloned()
        .collect();
    for (k, p) in extra.iter().enumerate() {
        if ordered && k > 0 {
            break;
        }
        delete(state, txn, &pods_gr, &ns, meta_str(p, "name"));
    }
    let pods: Vec<Arc<Value>> = owned_pods(txn, &ns, &uid)
        .into_iter()
        .filter(|p| ordinal(p).is_some())
        .collect();
    let revision_of =
        |p: &Value| str_at(p, "/metadata/labels/controller-revision-hash").to_string();
    // Rolling update: replace the highest outdated pod once all are ready.
    let all_ready = pods.len() as i64 == replicas && pods.iter().all(|p| pod_ready(p));
    if all_ready {
        let partition = int(s, "/spec/updateStrategy/rollingUpdate/partition", 0);
        if str_at(s, "/spec/updateStrategy/type") != "OnDelete"
            && let Some(p) = pods
                .iter()
                .filter(|p| revision_of(p) != rev && ordinal(p).unwrap_or(0) >= partition)
                .max_by_key(|p| ordinal(p).unwrap_or(0))
        {
            delete(state, txn, &pods_gr, &ns, meta_str(p, "name"));
        }
    }
    let pods: Vec<Arc<Value>> = owned_pods(txn, &ns, &uid)
        .into_iter()
        .filter(|p| ordinal(p).is_some())
        .collect();
    let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
    let updated = pods.iter().filter(|p| revision_of(p) == rev).count() as i64;
    let Some(cur) = txn.get(&gr("apps", "statefulsets"), &ns, &name) else {
        return;
    };
    let mut current_rev = str_at(&cur, "/status/currentRevision").to_string();
    if current_rev.is_empty() || (updated == replicas && ready == replicas) {
        current_rev = rev.clone();
    }
    let current = pods
        .iter()
        .filter(|p| revision_of(p) == current_rev)
        .count() as i64;
    let mut status = json!({"observedGeneration": int(&cur, "/metadata/generation", 1),
        "replicas": pods.len(), "availableReplicas": ready,
        "currentRevision": current_rev, "updateRevision": rev, "collisionCount": 0});
    counts(
        &mut status,
        &[
            ("readyReplicas", ready),
            ("currentReplicas", current),
            ("updatedReplicas", updated),
        ],
        false,
    );
    set_status(txn, &gr("apps", "statefulsets"), &cur, status);
}

fn daemonset(state: &State, txn: &mut Txn<'_>, d: &Arc<Value>) {
    if is_terminating(d) {
        return;
    }
    let ns = meta_str(d, "namespace").to_string();
    let uid = meta_str(d, "uid").to_string();
    let hash = template_hash(d);
    let pods_gr = gr("", "pods");
    let pods = owned_pods(txn, &ns, &uid);
    let current: Vec<&Arc<Value>> = pods
        .iter()
        .filter(|p| str_at(p, "/metadata/labels/controller-revision-hash") == hash)
        .collect();
    // One node: one pod of the current template.
    for p in pods
        .iter()
        .filter(|p| str_at(p, "/metadata/labels/controller-revision-hash") != hash)
    {
        delete(state, txn, &pods_gr, &ns, meta_str(p, "name"));
    }
    for p in current.iter().skip(1) {
        delete(state, txn, &pods_gr, &ns, meta_str(p, "name"));
    }
    if current.is_empty() {
        let gen_ = int(d, "/metadata/generation", 1).to_string();
        let mut pod = pod_from(
            d,
            None,
            &[
                ("controller-revision-hash", hash.clone()),
                ("pod-template-generation", gen_),
            ],
        );
        pod["spec"]["nodeName"] = json!(NODE);
        create(state, txn, &pods_gr, Some(&ns), pod);
    }
    let pods = owned_pods(txn, &ns, &uid);
    let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
    let updated = pods
        .iter()
        .filter(|p| str_at(p, "/metadata/labels/controller-revision-hash") == hash)
        .count() as i64;
    let mut status = json!({"observedGeneration": int(d, "/metadata/generation", 1),
        "desiredNumberScheduled": 1, "currentNumberScheduled": pods.len(), "numberMisscheduled": 0,
        "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": updated});
    if ready < 1 {
        status["numberUnavailable"] = json!(1 - ready);
        if ready == 0 {
            status.as_object_mut().map(|m| m.remove("numberAvailable"));
        }
    }
    set_status(txn, &gr("apps", "daemonsets"), d, status);
}

fn job(state: &State, txn: &mut Txn<'_>, j: &Arc<Value>) {
    if is_terminating(j) || j.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let ns = meta_str(j, "namespace").to_string();
    let name = meta_str(j, "name").to_string();
    let uid = meta_str(j, "uid").to_string();
    let completions = int(j, "/spec/completions", 1);
    let parallelism = int(j, "/spec/parallelism", 1);
    let pods = owned_pods(txn, &ns, &uid);
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
    let mut active = pods
        .iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .count() as i64;
    let complete = succeeded >= completions;
    if !complete {
        let want = parallelism.min(completions - succeeded);
        let start = active;
        for _ in start..want {
            let extra = [
                ("batch.kubernetes.io/job-name", name.clone()),
                ("job-name", name.clone()),
                ("batch.kubernetes.io/controller-uid", uid.clone()),
                ("controller-uid", uid.clone()),
            ];
            let mut pod = pod_from(j, None, &extra);
            if pod["spec"]["restartPolicy"] == "Always" {
                pod["spec"]["restartPolicy"] = json!("Never");
            }
            if create(state, txn, &gr("", "pods"), Some(&ns), pod).is_some() {
                active += 1;
            }
        }
    }
    let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
    let Some(cur) = txn.get(&gr("batch", "jobs"), &ns, &name) else {
        return;
    };
    let now = now_rfc3339();
    let mut status = json!({
        "startTime": cur.pointer("/status/startTime").cloned().unwrap_or(json!(now)),
        "ready": ready, "uncountedTerminatedPods": {}, "terminating": 0,
    });
    counts(
        &mut status,
        &[
            ("active", if complete { 0 } else { active }),
            ("succeeded", succeeded),
            ("failed", failed),
        ],
        false,
    );
    if complete {
        status["completionTime"] = cur
            .pointer("/status/completionTime")
            .cloned()
            .unwrap_or(json!(now));
        let mut c1 = condition(
            &cur,
            "SuccessCriteriaMet",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        let mut c2 = condition(
            &cur,
            "Complete",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        let old_conds = cur
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in [&mut c1, &mut c2] {
            let t = c.get("type").cloned();
            if let Some(m) = c.as_object_mut() {
                m.remove("lastUpdateTime");
                // Once complete, the probe time stays what it was.
                let probe = old_conds
                    .iter()
                    .find(|o| o.get("type") == t.as_ref())
                    .and_then(|o| o.get("lastProbeTime").cloned())
                    .unwrap_or(json!(now));
                m.insert("lastProbeTime".into(), probe);
            }
        }
        status["conditions"] = json!([c1, c2]);
    }
    set_status(txn, &gr("batch", "jobs"), &cur, status);
}

/// Why the scheduler leaves `pod` (with `claims` and their `pvcs`) off the
/// one node, in its words: a required node affinity or `nodeSelector` that
/// [`NODE`] does not meet, or a ReadWriteOncePod claim another pod uses.
fn unschedulable(
    txn: &Txn<'_>,
    pod: &Value,
    claims: &[String],
    pvcs: &[Option<Arc<Value>>],
) -> Option<String> {
    const NO_PREEMPTION: &str =
        "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.";
    let terms = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    let term_matches = |t: &Value| {
        // An empty term matches no node.
        let empty = ["matchFields", "matchExpressions"].iter().all(|k| {
            t.get(*k)
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
        });
        if empty {
            return false;
        }
        // Every requirement on the node's name (or hostname label) admits it.
        let admits = |list: &str, key: &str| {
            t.get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|r| str_at(r, "/key") == key)
                .all(|r| {
                    let listed = r
                        .get("values")
                        .and_then(Value::as_array)
                        .is_some_and(|vs| vs.iter().any(|v| v.as_str() == Some(NODE)));
                    match str_at(r, "/operator") {
                        "In" => listed,
                        "NotIn" => !listed,
                        _ => true,
                    }
                })
        };
        admits("matchFields", "metadata.name")
            && admits("matchExpressions", "kubernetes.io/hostname")
    };
    let selector_ok = pod
        .pointer("/spec/nodeSelector/kubernetes.io~1hostname")
        .and_then(Value::as_str)
        .is_none_or(|h| h == NODE);
    if !selector_ok || terms.is_some_and(|ts| !ts.iter().any(term_matches)) {
        return Some(format!(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. {NO_PREEMPTION}"
        ));
    }
    let ns = meta_str(pod, "namespace");
    let uid = meta_str(pod, "uid");
    for (claim, pvc) in claims.iter().zip(pvcs) {
        let once_pod = pvc
            .as_ref()
            .and_then(|c| c.pointer("/spec/accessModes"))
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m.as_str() == Some("ReadWriteOncePod")));
        if !once_pod {
            continue;
        }
        let taken = txn.list(&gr("", "pods"), Some(ns)).into_iter().any(|o| {
            meta_str(&o, "uid") != uid
                && !matches!(phase(&o), "Succeeded" | "Failed")
                && !str_at(&o, "/spec/nodeName").is_empty()
                && crate::ctl::mounts_claim(&o, claim)
        });
        if taken {
            return Some(
                "0/1 nodes are available: 1 node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.".into(),
            );
        }
    }
    None
}

/// A pod's QoS class, as the kubelet reports it (from CPU and memory only):
/// `Guaranteed` when every container limits both and requests what it
/// limits (or nothing), `BestEffort` when none requests or limits either,
/// else `Burstable`.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let amount = |c: &Value, part: &str, r: &str| {
        c.pointer(&format!("/resources/{part}/{r}"))
            .and_then(Value::as_str)
            .and_then(crate::ctl::quantity)
    };
    let any = containers.iter().any(|c| {
        ["requests", "limits"].iter().any(|part| {
            ["cpu", "memory"]
                .iter()
                .any(|r| amount(c, part, r).is_some())
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = amount(c, "limits", r);
            limit.is_some() && amount(c, "requests", r).is_none_or(|q| Some(q) == limit)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// One pass of the kubelet and scheduler over every pod; see the module docs.
pub fn kubelet_tick(state: &State) {
    let rt = &state.runtime;
    state.store.transact(|txn| {
        let pods_gr = gr("", "pods");
        let pvc_gr = gr("", "persistentvolumeclaims");
        for p in txn.list(&pods_gr, None) {
            if is_terminating(&p) || matches!(phase(&p), "Succeeded" | "Failed") {
                continue;
            }
            let ns = meta_str(&p, "namespace").to_string();
            let uid = meta_str(&p, "uid").to_string();
            let claims: Vec<String> = p
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .map(|vs| {
                    vs.iter()
                        .filter_map(|v| v.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let pvcs: Vec<Option<Arc<Value>>> = claims.iter().map(|c| txn.get(&pvc_gr, &ns, c)).collect();
            let missing: Vec<&String> = claims
                .iter()
                .zip(&pvcs)
                .filter(|(_, p)| p.is_none())
                .map(|(c, _)| c)
                .collect();
            let now = now_rfc3339();
            let cond = |t: &str, s: &str| json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": now});
            let scheduled = !str_at(&p, "/spec/nodeName").is_empty();
            if !scheduled {
                let mut n = (*p).clone();
                if !missing.is_empty() {
                    if phase(&p).is_empty() {
                        let mut c = cond("PodScheduled", "False");
                        c["reason"] = json!("Unschedulable");
                        c["message"] = json!(format!(
                            "0/1 nodes are available: persistentvolumeclaim \"{}\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
                            missing[0]
                        ));
                        n["status"] = json!({"phase": "Pending", "conditions": [c], "qosClass": qos_class(&p)});
                        write(txn, &pods_gr, &p, n);
                    }
                    continue;
                }
                if let Some(why) = unschedulable(txn, &p, &claims, &pvcs) {
                    if str_at(&p, "/status/conditions/0/message") != why {
                        let mut c = cond("PodScheduled", "False");
                        c["reason"] = json!("Unschedulable");
                        c["message"] = json!(why);
                        n["status"] = json!({"phase": "Pending", "conditions": [c], "qosClass": qos_class(&p)});
                        write(txn, &pods_gr, &p, n);
                    }
                    continue;
                }
                for pvc in pvcs.iter().flatten() {
                    if str_at(pvc, "/status/phase") != "Bound"
                        && pvc.pointer("/metadata/annotations/volume.kubernetes.io~1selected-node").is_none()
                    {
                        let mut c = (**pvc).clone();
                        c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = json!(NODE);
                        write(txn, &pvc_gr, pvc, c);
                    }
                }
                n["spec"]["nodeName"] = json!(NODE);
                n["status"] = json!({"phase": "Pending", "conditions": [cond("PodScheduled", "True")],
                    "hostIP": "10.0.0.5", "hostIPs": [{"ip": "10.0.0.5"}], "qosClass": qos_class(&p), "startTime": now});
                write(txn, &pods_gr, &p, n);
                continue;
            }
            if phase(&p).is_empty() {
                // Created already bound to the node (DaemonSet pods).
                let mut n = (*p).clone();
                n["status"] = json!({"phase": "Pending", "conditions": [cond("PodScheduled", "True")],
                    "hostIP": "10.0.0.5", "hostIPs": [{"ip": "10.0.0.5"}], "qosClass": qos_class(&p), "startTime": now});
                write(txn, &pods_gr, &p, n);
                continue;
            }
            let bound = pvcs
                .iter()
                .all(|c| c.as_ref().is_some_and(|c| str_at(c, "/status/phase") == "Bound"));
            if !bound || phase(&p) != "Pending" {
                continue;
            }
            let since = {
                let mut m = rt.runnable_since.lock().unwrap_or_else(|e| e.into_inner());
                *m.entry(uid.clone()).or_insert_with(Instant::now)
            };
            if since.elapsed() < rt.pod_ready_delay {
                continue;
            }
            rt.runnable_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
            let never = p
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(NEVER_READY))
                .and_then(Value::as_str)
                == Some("true");
            let job = p
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|rs| rs.iter().any(|r| r.get("kind").and_then(Value::as_str) == Some("Job")));
            let ip_n = rt.next_pod_ip.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ip = format!("10.244.{}.{}", (ip_n >> 8) & 0xff, ip_n & 0xff);
            let containers: Vec<Value> = p
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = !never && !job;
            let statuses: Vec<Value> = containers
                .iter()
                .map(|c| {
                    let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
                    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                    let state = if job {
                        json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}})
                    } else {
                        json!({"running": {"startedAt": now}})
                    };
                    json!({"name": cname, "image": image,
                        "imageID": format!("docker.io/library/{image}@sha256:{}", safe_hash(image)),
                        "containerID": format!("containerd://{}", safe_hash(&format!("{uid}/{cname}"))),
                        "ready": ready, "started": !job, "restartCount": 0, "state": state})
                })
                .collect();
            let names: Vec<&str> = containers
                .iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect();
            let not_ready = |t: &str, reason: &str| {
                let mut c = cond(t, "False");
                c["reason"] = json!(reason);
                if reason == "ContainersNotReady" {
                    c["message"] = json!(format!("containers with unready status: [{}]", names.join(" ")));
                }
                c
            };
            let (ph, ready_c, cr_c) = if job {
                ("Succeeded", not_ready("Ready", "PodCompleted"), not_ready("ContainersReady", "PodCompleted"))
            } else if never {
                ("Running", not_ready("Ready", "ContainersNotReady"), not_ready("ContainersReady", "ContainersNotReady"))
            } else {
                ("Running", cond("Ready", "True"), cond("ContainersReady", "True"))
            };
            let mut n = (*p).clone();
            n["status"] = json!({"phase": ph, "hostIP": "10.0.0.5", "hostIPs": [{"ip": "10.0.0.5"}],
                "podIP": ip, "podIPs": [{"ip": ip}], "startTime": str_at(&p, "/status/startTime"),
                "qosClass": qos_class(&p),
                "conditions": [cond("PodReadyToStartContainers", if job { "False" } else { "True" }),
                    cond("Initialized", "True"), ready_c, cr_c, cond("PodScheduled", "True")],
                "containerStatuses": statuses});
            write(txn, &pods_gr, &p, n);
        }
    })
}

//! Controllers: tasks that react to committed changes, as kube-controller-manager does.
//!
//! Each controller is a function called with every [`StoreEvent`] (and with
//! `None` for a full resync: at start and whenever it fell behind the
//! broadcast). Here: namespace lifecycle (termination and finalize), the
//! per-namespace `default` ServiceAccount and `kube-root-ca.crt` publisher,
//! and the ownerReference garbage collector. [`builtin`] adds the workload
//! controllers ([`crate::workloads`]) and the PV/PVC/snapshot controller
//! ([`crate::storage`]); the kubelet runs on a timer ([`spawn_ticking`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::objects::{DeleteOpts, FOREGROUND, State, WriteOpts, dependents, is_terminating};
use crate::resources::GroupResource;
use crate::store::{EventType, StoreEvent, Txn};
use crate::util::{meta_str, now_rfc3339, set_path};

/// A controller: called per event, or with `None` to resync everything.
pub type Reconcile = fn(&State, Option<&StoreEvent>);

/// Run `reconcile` on every change until `cancel` fires.
pub fn spawn(state: Arc<State>, cancel: CancellationToken, reconcile: Reconcile) -> JoinHandle<()> {
    let mut rx = state.store.subscribe();
    tokio::spawn(async move {
        reconcile(&state, None);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = rx.recv() => match r {
                    Ok(ev) => reconcile(&state, Some(&ev)),
                    Err(RecvError::Lagged(_)) => reconcile(&state, None),
                    Err(RecvError::Closed) => break,
                },
            }
        }
    })
}

/// Run `tick` every `period` until `cancel` fires (the kubelet's timers).
pub fn spawn_ticking(
    state: Arc<State>,
    cancel: CancellationToken,
    period: std::time::Duration,
    tick: fn(&State),
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(period);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = iv.tick() => tick(&state),
            }
        }
    })
}

/// The controllers: namespace lifecycle and defaults, garbage collection,
/// workloads, storage (PV/PVC) and snapshots, quota usage.
pub fn builtin() -> Vec<Reconcile> {
    vec![
        namespace_lifecycle,
        namespace_defaults,
        garbage_collector,
        crate::workloads::workloads,
        crate::storage::storage,
        crate::quota::quota_status,
    ]
}

fn ns_gr() -> GroupResource {
    GroupResource::new("", "namespaces")
}

const MANAGER: &str = "kube-controller-manager";

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBADAKBggqhkjOPQQDAjAjMSEwHwYDVQQDDBhmZXJyeS1z\naW0tc2VydmVyLWNhQDE3MDAwHhcNMjYwMTAxMDAwMDAwWhcNMzYwMTAxMDAwMDAw\nWjAjMSEwHwYDVQQDDBhmZXJyeS1zaW0tc2VydmVyLWNhQDE3MDBZMBMGByqGSM49\nAgEGCCqGSM49AwEHA0IABPerrysimulatedcertificatenotforusexxxxxxxxxx\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx==\n-----END CERTIFICATE-----\n";

const CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// Create the `default` ServiceAccount and `kube-root-ca.crt` ConfigMap in `ns` when missing.
fn ensure_defaults(state: &State, txn: &mut Txn<'_>, ns: &str) {
    match txn.get(&ns_gr(), "", ns) {
        Some(n) if !is_terminating(&n) => {}
        _ => return,
    }
    let opts = WriteOpts {
        manager: MANAGER.into(),
        ..Default::default()
    };
    let reg = &state.registry;
    if txn
        .get(&GroupResource::new("", "serviceaccounts"), ns, "default")
        .is_none()
        && let Some(info) = reg.lookup("", "v1", "serviceaccounts")
    {
        let sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        let _ = state.create(txn, &info, Some(ns), sa, &opts);
    }
    if txn
        .get(
            &GroupResource::new("", "configmaps"),
            ns,
            "kube-root-ca.crt",
        )
        .is_none()
        && let Some(info) = reg.lookup("", "v1", "configmaps")
    {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kube-root-ca.crt", "annotations": {"kubernetes.io/description": CA_DESCRIPTION}},
                "data": {"ca.crt": CA_PEM}});
        let _ = state.create(txn, &info, Some(ns), cm, &opts);
    }
}

/// Every active namespace has its `default` ServiceAccount and root CA ConfigMap.
pub fn namespace_defaults(state: &State, ev: Option<&StoreEvent>) {
    state.store.transact(|txn| match ev {
        None => {
            for n in txn.list(&ns_gr(), None) {
                ensure_defaults(state, txn, meta_str(&n, "name"));
            }
        }
        Some(ev) if ev.gr == ns_gr() && ev.event_type == EventType::Added => {
            ensure_defaults(state, txn, &ev.name)
        }
        Some(ev)
            if ev.event_type == EventType::Deleted
                && ((ev.gr.resource == "serviceaccounts" && ev.name == "default")
                    || (ev.gr.resource == "configmaps" && ev.name == "kube-root-ca.crt"))
                && ev.gr.group.is_empty() =>
        {
            ensure_defaults(state, txn, &ev.namespace)
        }
        Some(_) => {}
    })
}

/// Namespace termination: delete the content, report conditions, then remove the namespace.
pub fn namespace_lifecycle(state: &State, ev: Option<&StoreEvent>) {
    state.store.transact(|txn| {
        let ns = match ev {
            None => {
                let terminating: Vec<String> = txn
                    .list(&ns_gr(), None)
                    .iter()
                    .filter(|n| is_terminating(n))
                    .map(|n| meta_str(n, "name").to_string())
                    .collect();
                for ns in terminating {
                    finish_namespace(state, txn, &ns);
                }
                return;
            }
            Some(ev) if ev.gr == ns_gr() => {
                if ev.event_type == EventType::Deleted || !is_terminating(&ev.object) {
                    return;
                }
                ev.name.clone()
            }
            Some(ev) if !ev.namespace.is_empty() => ev.namespace.clone(),
            Some(_) => return,
        };
        finish_namespace(state, txn, &ns);
    })
}

fn condition(t: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": t, "status": status, "reason": reason, "message": message, "lastTransitionTime": now})
}

fn finish_namespace(state: &State, txn: &mut Txn<'_>, ns: &str) {
    let Some(nsobj) = txn.get(&ns_gr(), "", ns) else {
        return;
    };
    if !is_terminating(&nsobj) {
        return;
    }
    let opts = DeleteOpts {
        propagation: Some("Background".into()),
        ..Default::default()
    };
    for gr in txn.resources_in_namespace(ns) {
        let info = state.registry.lookup_gr(&gr);
        for o in txn.list(&gr, Some(ns)) {
            if is_terminating(&o) {
                continue;
            }
            match &info {
                Some(info) => {
                    let _ = state.delete(txn, info, Some(ns), meta_str(&o, "name"), &opts);
                }
                None => {
                    txn.remove(&gr, (*o).clone());
                }
            }
        }
    }
    // What is left is held by finalizers.
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
    for gr in txn.resources_in_namespace(ns) {
        for o in txn.list(&gr, Some(ns)) {
            *remaining
                .entry(format!("{}.{}", gr.resource, gr.group))
                .or_default() += 1;
            if let Some(fs) = o.pointer("/metadata/finalizers").and_then(Value::as_array) {
                for f in fs.iter().filter_map(Value::as_str) {
                    *finalizers.entry(f.to_string()).or_default() += 1;
                }
            }
        }
    }
    let mut obj = (*nsobj).clone();
    if remaining.is_empty() {
        let meta_finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        set_path(&mut obj, "spec.finalizers", json!([]));
        if meta_finalizers {
            if *nsobj != obj {
                txn.update(&ns_gr(), obj);
            }
        } else {
            txn.remove(&ns_gr(), obj);
        }
        return;
    }
    let now = now_rfc3339();
    let remaining_msg = remaining
        .iter()
        .map(|(r, n)| format!("{r} has {n} resource instances"))
        .collect::<Vec<_>>()
        .join(", ");
    let finalizer_msg = finalizers
        .iter()
        .map(|(f, n)| format!("{f} in {n} resource instances"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut conds = vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered",
            &now,
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            "False",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed",
            &now,
        ),
        condition(
            "NamespaceDeletionContentFailure",
            "False",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization",
            &now,
        ),
        condition(
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            &format!("Some resources are remaining: {remaining_msg}"),
            &now,
        ),
    ];
    conds.push(if finalizers.is_empty() {
        condition(
            "NamespaceFinalizersRemaining",
            "False",
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished",
            &now,
        )
    } else {
        condition(
            "NamespaceFinalizersRemaining",
            "True",
            "SomeFinalizersRemain",
            &format!("Some content in the namespace has finalizers remaining: {finalizer_msg}"),
            &now,
        )
    });
    // Keep transition times of conditions that did not change, and skip no-op writes.
    let old = nsobj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let strip = |c: &Value| {
        let mut c = c.clone();
        if let Some(m) = c.as_object_mut() {
            m.remove("lastTransitionTime");
        }
        c
    };
    for c in conds.iter_mut() {
        if let Some(o) = old.iter().find(|o| strip(o) == strip(c)) {
            *c = o.clone();
        }
    }
    if old != conds {
        set_path(&mut obj, "status.conditions", Value::Array(conds));
        txn.update(&ns_gr(), obj);
    }
}

/// Garbage collection: dependents whose owners are all gone are deleted in
/// the background; references to owners that are gone are removed; an owner
/// deleted in the foreground goes once its dependents are gone.
pub fn garbage_collector(state: &State, ev: Option<&StoreEvent>) {
    state.store.transact(|txn| match ev {
        None => {
            for (gr, o) in txn.all_objects() {
                if o.pointer("/metadata/ownerReferences").is_some() {
                    collect(state, txn, &gr, &o);
                }
            }
            for (gr, o) in txn.all_objects() {
                foreground(state, txn, &gr, &o);
            }
        }
        Some(ev) if ev.event_type == EventType::Deleted => {
            let uid = meta_str(&ev.object, "uid").to_string();
            if uid.is_empty() {
                return;
            }
            for (gr, o) in dependents(txn, &uid) {
                collect(state, txn, &gr, &o);
            }
            // A dependent went: its foreground-deleting owners may be done.
            let owners: Vec<String> = ev
                .object
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .map(|refs| {
                    refs.iter()
                        .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !owners.is_empty() {
                for (gr, o) in txn.all_objects() {
                    if owners.iter().any(|u| u == meta_str(&o, "uid")) {
                        foreground(state, txn, &gr, &o);
                    }
                }
            }
        }
        Some(ev) => {
            let Some(cur) = txn.get(&ev.gr, &ev.namespace, &ev.name) else {
                return;
            };
            if cur.pointer("/metadata/ownerReferences").is_some() {
                collect(state, txn, &ev.gr, &cur);
            }
            foreground(state, txn, &ev.gr, &cur);
        }
    })
}

/// Progress a foreground deletion of `obj`: delete its dependents, and drop
/// the `foregroundDeletion` finalizer once none is left.
fn foreground(state: &State, txn: &mut Txn<'_>, gr: &GroupResource, obj: &Arc<Value>) {
    let holds = is_terminating(obj)
        && obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(FOREGROUND)));
    if !holds {
        return;
    }
    let uid = meta_str(obj, "uid").to_string();
    let opts = DeleteOpts {
        propagation: Some("Background".into()),
        ..Default::default()
    };
    for (dgr, d) in dependents(txn, &uid) {
        if is_terminating(&d) {
            continue;
        }
        if let Some(info) = state.registry.lookup_gr(&dgr) {
            let ns = meta_str(&d, "namespace").to_string();
            let _ = state.delete(txn, &info, Some(&ns), meta_str(&d, "name"), &opts);
        }
    }
    if !dependents(txn, &uid).is_empty() {
        return;
    }
    let ns = meta_str(obj, "namespace").to_string();
    let Some(cur) = txn.get(gr, &ns, meta_str(obj, "name")) else {
        return;
    };
    let mut o = (*cur).clone();
    let rest: Vec<Value> = o
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter(|x| x.as_str() != Some(FOREGROUND))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if rest.is_empty() {
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("finalizers");
        }
        txn.remove(gr, o);
    } else {
        set_path(&mut o, "metadata.finalizers", Value::Array(rest));
        txn.update(gr, o);
    }
}

fn collect(state: &State, txn: &mut Txn<'_>, gr: &GroupResource, obj: &Arc<Value>) {
    if is_terminating(obj) {
        return;
    }
    let Some(refs) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    else {
        return;
    };
    if refs.is_empty() {
        return;
    }
    let live: Vec<Value> = refs
        .iter()
        .filter(|r| {
            r.get("uid")
                .and_then(Value::as_str)
                .is_some_and(|u| txn.uid_exists(u))
        })
        .cloned()
        .collect();
    if live.len() == refs.len() {
        return;
    }
    let ns = meta_str(obj, "namespace").to_string();
    let name = meta_str(obj, "name").to_string();
    if live.is_empty() {
        if let Some(info) = state.registry.lookup_gr(gr) {
            let opts = DeleteOpts {
                propagation: Some("Background".into()),
                ..Default::default()
            };
            let _ = state.delete(txn, &info, Some(&ns), &name, &opts);
        }
    } else {
        let mut o = (**obj).clone();
        set_path(&mut o, "metadata.ownerReferences", Value::Array(live));
        txn.update(gr, o);
    }
}

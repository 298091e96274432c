//! ResourceQuota admission for pod creates: a quota whose `spec.hard`
//! names compute resources (`cpu`, `memory`, `requests.*`, `limits.*`) or
//! `pods` refuses a pod that does not give them, or that would take the
//! namespace's usage (computed from its pods that have not finished) past
//! them, with the API server's messages:
//!
//! ```text
//! pods "p" is forbidden: failed quota: compute: must specify limits.cpu for: c; requests.cpu for: c
//! pods "p" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=1600m, limited: requests.cpu=2
//! ```
//!
//! The quota controller ([`quota_status`]) keeps each quota's `status`:
//! `hard` as the spec says, `used` for those resources and for
//! `persistentvolumeclaims` and `requests.storage`.
//!
//! Simplified: only those resources; no quota scopes or priority classes;
//! a request not given is its limit (the API server's defaulting), but no
//! LimitRange defaults are applied.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::objects::State;
use crate::resources::GroupResource;
use crate::store::{StoreEvent, Txn};
use crate::util::meta_str;

const KEYS: [&str; 8] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
    "pods",
    "count/pods",
];

fn show(key: &str, v: f64) -> String {
    // An empty sum of floats is -0.
    let v = v + 0.0;
    if key.ends_with("memory") || key.ends_with("storage") {
        for (s, m) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            let m = m as f64;
            if v >= m && (v / m).fract() == 0.0 {
                return format!("{}{s}", v / m);
            }
        }
        format!("{}", v.ceil())
    } else if key.ends_with("cpu") && v.fract() != 0.0 {
        format!("{}m", (v * 1000.0).round())
    } else {
        format!("{v}")
    }
}

/// `(part, resource)` of a quota key: `cpu` is `requests.cpu`.
fn split(key: &str) -> (&str, &str) {
    match key {
        "cpu" | "memory" => ("requests", key),
        _ => key.split_once('.').unwrap_or(("", key)),
    }
}

/// What container `c` gives for `key`; a request not given is its limit.
fn container_amount(c: &Value, key: &str) -> Option<f64> {
    let (part, resource) = split(key);
    let get = |p: &str| {
        c.pointer(&format!("/resources/{p}/{resource}"))
            .and_then(Value::as_str)
            .and_then(crate::ctl::quantity)
    };
    match part {
        "requests" => get("requests").or_else(|| get("limits")),
        "limits" => get("limits"),
        _ => None,
    }
}

fn containers(pod: &Value) -> Vec<&Value> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|v| v.iter().collect())
        .unwrap_or_default()
}

pub(crate) fn pod_amount(pod: &Value, key: &str) -> f64 {
    if matches!(key, "pods" | "count/pods") {
        return 1.0;
    }
    containers(pod)
        .iter()
        .filter_map(|c| container_amount(c, key))
        .sum()
}

/// Why `quotas` refuse `pod` among the namespace's `pods`, as the API server
/// says it after `forbidden: `; `None` when they admit it.
pub fn refusal(quotas: &[&Value], pods: &[&Value], pod: &Value) -> Option<String> {
    for q in quotas {
        let name = q
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(hard) = q.pointer("/spec/hard").and_then(Value::as_object) else {
            continue;
        };
        let keys: Vec<(&str, f64)> = KEYS
            .iter()
            .filter_map(|k| Some((*k, hard.get(*k)?.as_str().and_then(crate::ctl::quantity)?)))
            .collect();
        let mut missing = Vec::new();
        for (key, _) in &keys {
            if matches!(*key, "pods" | "count/pods") {
                continue;
            }
            let lacking: Vec<String> = containers(pod)
                .iter()
                .filter(|c| container_amount(c, key).is_none())
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect();
            if !lacking.is_empty() {
                missing.push(format!("{key} for: {}", lacking.join(",")));
            }
        }
        if !missing.is_empty() {
            missing.sort();
            return Some(format!(
                "failed quota: {name}: must specify {}",
                missing.join("; ")
            ));
        }
        // (key, requested, used, limited) of each resource it would pass,
        // sorted by key as the API server prints them.
        let mut over: Vec<[String; 4]> = keys
            .iter()
            .filter_map(|(key, limit)| {
                let used: f64 = pods.iter().map(|p| pod_amount(p, key)).sum();
                let requested = pod_amount(pod, key);
                (used + requested > limit * (1.0 + 1e-9)).then(|| {
                    [
                        key.to_string(),
                        show(key, requested),
                        show(key, used),
                        show(key, *limit),
                    ]
                })
            })
            .collect();
        over.sort();
        if !over.is_empty() {
            let list = |i: usize| {
                over.iter()
                    .map(|o| format!("{}={}", o[0], o[i]))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Some(format!(
                "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                list(1),
                list(2),
                list(3)
            ));
        }
    }
    None
}

/// What the namespace's unfinished `pods` and `claims` use of quota `key`,
/// for the resources the quota controller counts; `None` for others.
fn used(key: &str, pods: &[Arc<Value>], claims: &[Arc<Value>]) -> Option<f64> {
    match key {
        "persistentvolumeclaims" | "count/persistentvolumeclaims" => Some(claims.len() as f64),
        "requests.storage" => Some(
            claims
                .iter()
                .filter_map(|c| {
                    c.pointer("/spec/resources/requests/storage")
                        .and_then(Value::as_str)
                        .and_then(crate::ctl::quantity)
                })
                .sum(),
        ),
        k if KEYS.contains(&k) => Some(pods.iter().map(|p| pod_amount(p, k)).sum()),
        _ => None,
    }
}

/// The pods of namespace `ns` that have not finished: what quotas count.
pub(crate) fn unfinished_pods(txn: &Txn<'_>, ns: &str) -> Vec<Arc<Value>> {
    txn.list(&GroupResource::new("", "pods"), Some(ns))
        .into_iter()
        .filter(|p| {
            !matches!(
                p.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            )
        })
        .collect()
}

/// The quota controller: on a change to a namespace's pods, claims or
/// quotas, each of its quotas' `status` (`hard`, `used`) is recomputed.
pub fn quota_status(state: &State, ev: Option<&StoreEvent>) {
    let quotas_gr = GroupResource::new("", "resourcequotas");
    let namespaces: Vec<String> = match ev {
        Some(ev)
            if ev.gr.group.is_empty()
                && matches!(
                    ev.gr.resource.as_str(),
                    "pods" | "persistentvolumeclaims" | "resourcequotas"
                ) =>
        {
            vec![ev.namespace.clone()]
        }
        Some(_) => return,
        None => state.store.transact(|txn| {
            let mut ns: Vec<String> = txn
                .list(&quotas_gr, None)
                .iter()
                .map(|q| meta_str(q, "namespace").to_string())
                .collect();
            ns.dedup();
            ns
        }),
    };
    state.store.transact(|txn| {
        for ns in &namespaces {
            let quotas = txn.list(&quotas_gr, Some(ns));
            if quotas.is_empty() {
                continue;
            }
            let pods = unfinished_pods(txn, ns);
            let claims = txn.list(&GroupResource::new("", "persistentvolumeclaims"), Some(ns));
            for q in quotas {
                let hard = q.pointer("/spec/hard").cloned().unwrap_or(json!({}));
                let mut usage = serde_json::Map::new();
                for key in hard.as_object().into_iter().flatten().map(|(k, _)| k) {
                    if let Some(u) = used(key, &pods, &claims) {
                        usage.insert(key.clone(), json!(show(key, u)));
                    }
                }
                let mut n = (*q).clone();
                n["status"] = json!({"hard": hard, "used": usage});
                crate::ctl::write(txn, &quotas_gr, &q, n);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quotas_refuse_pods_that_do_not_say_or_do_not_fit() {
        let quota = json!({"metadata": {"name": "compute"},
            "spec": {"hard": {"requests.cpu": "1", "limits.memory": "1Gi", "pods": "3"}}});
        let bare = json!({"spec": {"containers": [{"name": "c", "image": "x"}]}});
        assert_eq!(
            refusal(&[&quota], &[], &bare).as_deref(),
            Some("failed quota: compute: must specify limits.memory for: c; requests.cpu for: c")
        );
        let sized = |cpu: &str, mem: &str| {
            json!({"spec": {"containers": [{"name": "c", "image": "x",
                "resources": {"limits": {"cpu": cpu, "memory": mem}}}]}})
        };
        let small = sized("300m", "256Mi");
        assert_eq!(refusal(&[&quota], &[&small, &small], &small), None);
        let big = sized("500m", "256Mi");
        assert_eq!(
            refusal(&[&quota], &[&small, &small], &big).as_deref(),
            Some(
                "exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=600m, limited: requests.cpu=1"
            )
        );
        let why = refusal(&[&quota], &[&small, &small, &small], &small).unwrap();
        assert!(
            why.contains("requested: pods=1,requests.cpu=300m")
                && why.ends_with("limited: pods=3,requests.cpu=1"),
            "{why}"
        );
    }
}

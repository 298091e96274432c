//! Helpers shared by the part-2 controllers (workloads, storage, snapshots):
//! the controller-manager's runtime settings, object writes that skip no-ops,
//! owner references, conditions and Events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::objects::{DeleteOpts, State, WriteOpts};
use crate::resources::GroupResource;
use crate::store::Txn;
use crate::util::{meta_str, now_rfc3339};

/// The simulated node every pod is scheduled to.
pub const NODE: &str = "sim-node";
/// Annotation on a PersistentVolume (and on a VolumeSnapshotContent) naming its local directory.
pub const PATH_ANNOTATION: &str = "sim.ferry.dev/path";
/// Pod template annotation: the pod runs but never becomes ready.
pub const NEVER_READY: &str = "sim.ferry.dev/never-ready";

/// Settings and timers of the controllers (set once at start).
#[derive(Debug)]
pub struct Runtime {
    /// Delay between a pod being runnable (scheduled, volumes bound) and Running/Ready.
    pub pod_ready_delay: Duration,
    /// Where volume (`volumes/`) and snapshot (`snapshots/`) directories live.
    pub data_dir: PathBuf,
    /// When each pod (by uid) first became runnable.
    pub runnable_since: Mutex<HashMap<String, Instant>>,
    /// Next pod IP host number.
    pub next_pod_ip: AtomicU32,
    /// Next NodePort.
    pub next_node_port: AtomicU32,
    /// [`SimOptions::pod_security_default`](crate::SimOptions::pod_security_default).
    pub pod_security_default: Option<String>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            pod_ready_delay: Duration::from_millis(100),
            data_dir: std::env::temp_dir().join("ferry-sim-data"),
            runnable_since: Mutex::new(HashMap::new()),
            next_pod_ip: AtomicU32::new(10),
            next_node_port: AtomicU32::new(30000),
            pod_security_default: None,
        }
    }
}

impl Runtime {
    /// Directory of a provisioned volume.
    pub fn volume_dir(&self, pv: &str) -> PathBuf {
        self.data_dir.join("volumes").join(pv)
    }
    /// Directory of a snapshot, by snapshot handle.
    pub fn snapshot_dir(&self, handle: &str) -> PathBuf {
        self.data_dir.join("snapshots").join(handle)
    }
}

pub(crate) fn gr(group: &str, resource: &str) -> GroupResource {
    GroupResource::new(group, resource)
}

pub(crate) fn opts() -> WriteOpts {
    WriteOpts {
        manager: "kube-controller-manager".into(),
        ..Default::default()
    }
}

/// Create an object through the API rules (uid, defaults, counters).
pub(crate) fn create(
    state: &State,
    txn: &mut Txn<'_>,
    g: &GroupResource,
    ns: Option<&str>,
    obj: Value,
) -> Option<Arc<Value>> {
    let info = state.registry.lookup_gr(g)?;
    match state.create(txn, &info, ns, obj, &opts()) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::debug!(error = ?e, resource = %g.resource, "controller create failed");
            None
        }
    }
}

/// Whether `pod`'s volumes name claim `claim`.
pub(crate) fn mounts_claim(pod: &Value, claim: &str) -> bool {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter().any(|v| {
                v.pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                    == Some(claim)
            })
        })
}

/// Replace `old` with `new` unless they are equal.
pub(crate) fn write(txn: &mut Txn<'_>, g: &GroupResource, old: &Value, new: Value) -> Arc<Value> {
    if *old == new {
        Arc::new(new)
    } else {
        txn.update(g, new)
    }
}

/// Delete through the API rules (finalizers respected), in the background.
pub(crate) fn delete(state: &State, txn: &mut Txn<'_>, g: &GroupResource, ns: &str, name: &str) {
    if let Some(info) = state.registry.lookup_gr(g) {
        let o = DeleteOpts {
            propagation: Some("Background".into()),
            ..Default::default()
        };
        let ns = (!ns.is_empty()).then_some(ns);
        let _ = state.delete(txn, &info, ns, name, &o);
    }
}

/// A controller owner reference to `owner`.
pub(crate) fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner.get("apiVersion").cloned().unwrap_or(json!("v1")),
        "kind": owner.get("kind").cloned().unwrap_or(json!("")),
        "name": meta_str(owner, "name"),
        "uid": meta_str(owner, "uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Whether `obj` has an owner reference to `uid`.
pub(crate) fn owned_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|rs| {
            rs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

pub(crate) fn int(v: &Value, ptr: &str, default: i64) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(default)
}

pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// A condition; `old` conditions keep their transition time when the status did not change.
pub(crate) fn condition(old: &Value, t: &str, status: &str, reason: &str, message: &str) -> Value {
    let prev = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
        });
    let now = now_rfc3339();
    let transition = match prev {
        Some(p) if p.get("status").and_then(Value::as_str) == Some(status) => {
            p.get("lastTransitionTime").cloned().unwrap_or(json!(now))
        }
        _ => json!(now),
    };
    let same = prev.is_some_and(|p| {
        p.get("status").and_then(Value::as_str) == Some(status)
            && p.get("reason").and_then(Value::as_str) == Some(reason)
            && p.get("message").and_then(Value::as_str) == Some(message)
    });
    let update = if same {
        prev.and_then(|p| p.get("lastUpdateTime").cloned())
            .unwrap_or(json!(now))
    } else {
        json!(now)
    };
    json!({"type": t, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": transition, "lastUpdateTime": update})
}

/// Record an Event about `obj` once per (object uid, reason, message).
pub(crate) fn event(
    state: &State,
    txn: &mut Txn<'_>,
    obj: &Value,
    kind: &str,
    reason: &str,
    message: &str,
) {
    let ns = match meta_str(obj, "namespace") {
        "" => "default",
        n => n,
    }
    .to_string();
    let uid = meta_str(obj, "uid");
    let g = gr("", "events");
    let dup = txn.list(&g, Some(&ns)).iter().any(|e| {
        str_at(e, "/involvedObject/uid") == uid
            && str_at(e, "/reason") == reason
            && str_at(e, "/message") == message
    });
    if dup {
        return;
    }
    let now = now_rfc3339();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{}.", meta_str(obj, "name"))},
        "involvedObject": {"apiVersion": obj.get("apiVersion").cloned().unwrap_or(json!("v1")),
            "kind": obj.get("kind").cloned().unwrap_or(json!("")), "namespace": meta_str(obj, "namespace"),
            "name": meta_str(obj, "name"), "uid": uid, "resourceVersion": meta_str(obj, "resourceVersion")},
        "reason": reason, "message": message, "type": kind, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": "ferry-sim"}, "reportingComponent": "ferry-sim",
    });
    create(state, txn, &g, Some(&ns), ev);
}

/// Insert `f` into `metadata.finalizers` if missing; whether it was missing.
pub(crate) fn add_finalizer(obj: &mut Value, f: &str) -> bool {
    let fs = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if fs.iter().any(|x| x.as_str() == Some(f)) {
        return false;
    }
    let mut fs = fs;
    fs.push(json!(f));
    obj["metadata"]["finalizers"] = Value::Array(fs);
    true
}

/// Remove `f` from `metadata.finalizers`.
pub(crate) fn remove_finalizer(obj: &mut Value, f: &str) {
    if let Some(fs) = obj
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    {
        fs.retain(|x| x.as_str() != Some(f));
        if fs.is_empty()
            && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.remove("finalizers");
        }
    }
}

/// Store `obj` after a controller dropped a finalizer: removed for good when
/// it is terminating and no finalizer is left.
pub(crate) fn finish(txn: &mut Txn<'_>, g: &GroupResource, old: &Value, obj: Value) {
    let terminating = obj.pointer("/metadata/deletionTimestamp").is_some();
    let none_left = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(|f| f.is_empty());
    if terminating && none_left {
        txn.remove(g, obj);
    } else {
        write(txn, g, old, obj);
    }
}

/// fnv32a of `s` in Kubernetes' "safe" alphabet, as pod-template-hash values look.
pub(crate) fn safe_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHA[usize::from(b) % ALPHA.len()] as char)
        .collect()
}

/// Parse a resource quantity (`100m`, `2`, `1Gi`, `500M`) into its base
/// unit (cores, bytes).
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "m" => 1e-3,
        _ => return None,
    };
    Some(n * mult)
}

/// Parse a resource quantity (`1Gi`, `500M`, `1024`) into bytes.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    quantity(q).map(|v| v.ceil() as u64)
}

/// Bytes as the shortest exact binary quantity (`1Gi`, `512Mi`, `1000`).
pub fn bytes_quantity(b: u64) -> String {
    for (s, m) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if b >= m && b.is_multiple_of(m) {
            return format!("{}{s}", b / m);
        }
    }
    b.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("5M"), Some(5_000_000));
        assert_eq!(bytes_quantity(1 << 30), "1Gi");
        assert_eq!(bytes_quantity(1500), "1500");
        assert_eq!(safe_hash("x").len(), safe_hash("x").len());
    }
}

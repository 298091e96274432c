//! The object store: every object by (group, resource, namespace, name), one
//! cluster-wide resourceVersion counter, a bounded event history and a
//! broadcast of committed changes.
//!
//! All writes go through [`Store::transact`], which holds one lock for the
//! whole read-check-write, so a resourceVersion precondition and the write it
//! guards are atomic. Every committed change becomes a [`StoreEvent`] with the
//! next resourceVersion; watches replay the history and then follow the
//! broadcast, and controllers (namespace lifecycle, garbage collection, and in
//! part 2 storage and workloads) are tasks that react to the same broadcast.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::resources::GroupResource;
use crate::status::ApiError;
use crate::util::meta_str;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Updated (including getting a deletionTimestamp).
    Modified,
    /// Removed; the object is its last state, with the deletion's resourceVersion.
    Deleted,
}

impl EventType {
    /// The watch event `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug, Clone)]
pub struct StoreEvent {
    /// The resourceVersion this change took.
    pub rv: u64,
    /// Kind of change.
    pub event_type: EventType,
    /// Where the object is stored.
    pub gr: GroupResource,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// The object after the change (before it, for deletions), with `metadata.resourceVersion = rv`.
    pub object: Arc<Value>,
    /// The stored object before the change (`None` for creations).
    pub old: Option<Arc<Value>>,
}

/// Identifies an object for the create counters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectRef {
    /// The object's kind.
    pub kind: String,
    /// Namespace, `""` when cluster-scoped.
    pub namespace: String,
    /// Name.
    pub name: String,
}

type Objects = BTreeMap<(String, String), Arc<Value>>;

#[derive(Debug)]
struct Inner {
    rv: u64,
    objects: HashMap<GroupResource, Objects>,
    history: VecDeque<Arc<StoreEvent>>,
    history_cap: usize,
    /// Every event with rv > floor is still in `history`.
    floor: u64,
    creates: BTreeMap<ObjectRef, u64>,
    /// uids of stored objects (for the garbage collector's owner checks).
    uids: HashSet<String>,
}

/// The shared object store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Arc<StoreEvent>>,
}

/// Access to the store under its lock; see [`Store::transact`].
pub struct Txn<'a> {
    inner: MutexGuard<'a, Inner>,
    tx: &'a broadcast::Sender<Arc<StoreEvent>>,
}

fn key(obj: &Value) -> (String, String) {
    (
        meta_str(obj, "namespace").to_string(),
        meta_str(obj, "name").to_string(),
    )
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

impl Txn<'_> {
    /// The current (last committed) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.inner.rv
    }

    /// One object.
    pub fn get(&self, gr: &GroupResource, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.inner
            .objects
            .get(gr)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    /// Objects of a resource, in one namespace or all of them, ordered by (namespace, name).
    pub fn list(&self, gr: &GroupResource, ns: Option<&str>) -> Vec<Arc<Value>> {
        let Some(m) = self.inner.objects.get(gr) else {
            return vec![];
        };
        match ns {
            Some(ns) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => m.values().cloned().collect(),
        }
    }

    /// Whether an object with this uid is stored.
    pub fn uid_exists(&self, uid: &str) -> bool {
        self.inner.uids.contains(uid)
    }

    /// Every stored resource that has at least one object in namespace `ns`.
    pub fn resources_in_namespace(&self, ns: &str) -> Vec<GroupResource> {
        self.inner
            .objects
            .iter()
            .filter(|(_, m)| {
                m.range((ns.to_string(), String::new())..)
                    .next()
                    .is_some_and(|((n, _), _)| n == ns)
            })
            .map(|(gr, _)| gr.clone())
            .collect()
    }

    /// Every object of every resource (for controllers' scans).
    pub fn all_objects(&self) -> Vec<(GroupResource, Arc<Value>)> {
        self.inner
            .objects
            .iter()
            .flat_map(|(gr, m)| m.values().map(move |v| (gr.clone(), v.clone())))
            .collect()
    }

    fn commit(&mut self, event_type: EventType, gr: &GroupResource, mut obj: Value) -> Arc<Value> {
        self.inner.rv += 1;
        let rv = self.inner.rv;
        set_rv(&mut obj, rv);
        let (ns, name) = key(&obj);
        let obj = Arc::new(obj);
        let uid = meta_str(&obj, "uid").to_string();
        if event_type == EventType::Deleted {
            self.inner.uids.remove(&uid);
        } else if !uid.is_empty() {
            self.inner.uids.insert(uid);
        }
        let objects = self.inner.objects.entry(gr.clone()).or_default();
        let old = if event_type == EventType::Deleted {
            let old = objects.remove(&(ns.clone(), name.clone()));
            if objects.is_empty() {
                self.inner.objects.remove(gr);
            }
            old
        } else {
            objects.insert((ns.clone(), name.clone()), obj.clone())
        };
        let ev = Arc::new(StoreEvent {
            rv,
            event_type,
            gr: gr.clone(),
            namespace: ns,
            name,
            object: obj.clone(),
            old,
        });
        self.inner.history.push_back(ev.clone());
        while self.inner.history.len() > self.inner.history_cap {
            if let Some(old) = self.inner.history.pop_front() {
                self.inner.floor = old.rv;
            }
        }
        // Nobody listening is fine.
        let _ = self.tx.send(ev);
        obj
    }

    /// Store a new object (it must not exist); counts a create.
    pub fn create(&mut self, gr: &GroupResource, obj: Value) -> Arc<Value> {
        let r = ObjectRef {
            kind: obj
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            namespace: meta_str(&obj, "namespace").to_string(),
            name: meta_str(&obj, "name").to_string(),
        };
        *self.inner.creates.entry(r).or_default() += 1;
        self.commit(EventType::Added, gr, obj)
    }

    /// Replace an existing object.
    pub fn update(&mut self, gr: &GroupResource, obj: Value) -> Arc<Value> {
        self.commit(EventType::Modified, gr, obj)
    }

    /// Remove an object; `last` is its final state (for the DELETED event).
    pub fn remove(&mut self, gr: &GroupResource, last: Value) -> Arc<Value> {
        self.commit(EventType::Deleted, gr, last)
    }
}

/// What a new watch starts from.
pub enum WatchStart {
    /// Current objects (to send as ADDED) and the resourceVersion they are at.
    Snapshot(Vec<Arc<Value>>, u64),
    /// Events after the requested resourceVersion.
    History(Vec<Arc<StoreEvent>>),
}

impl Store {
    /// An empty store keeping at most `history_cap` events for watch resumption.
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(16 * 1024);
        Store {
            inner: Arc::new(Mutex::new(Inner {
                rv: 0,
                objects: HashMap::new(),
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
                floor: 0,
                creates: BTreeMap::new(),
                uids: HashSet::new(),
            })),
            tx,
        }
    }

    /// Run `f` under the store lock. Writes inside are committed as they are made,
    /// so validate before writing.
    pub fn transact<R>(&self, f: impl FnOnce(&mut Txn<'_>) -> R) -> R {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut txn = Txn {
            inner,
            tx: &self.tx,
        };
        f(&mut txn)
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.transact(|t| t.rv())
    }

    /// Creates counted per object since the store started.
    pub fn creates(&self) -> BTreeMap<ObjectRef, u64> {
        self.transact(|t| t.inner.creates.clone())
    }

    /// Follow every committed change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoreEvent>> {
        self.tx.subscribe()
    }

    /// Start a watch on `gr`: from current state (`since = None`) or from the
    /// events after `since`. Subscribes under the lock, so nothing is missed or
    /// delivered twice. A `since` older than the history answers 410 Expired.
    pub fn watch(
        &self,
        gr: &GroupResource,
        ns: Option<&str>,
        since: Option<u64>,
    ) -> Result<(WatchStart, broadcast::Receiver<Arc<StoreEvent>>), ApiError> {
        self.transact(|t| {
            let start = match since {
                None => WatchStart::Snapshot(t.list(gr, ns), t.rv()),
                Some(rv) => {
                    if rv < t.inner.floor {
                        return Err(ApiError::expired(rv, t.inner.floor + 1));
                    }
                    let evs = t
                        .inner
                        .history
                        .iter()
                        .filter(|e| e.rv > rv && e.gr == *gr && ns.is_none_or(|n| n == e.namespace))
                        .cloned()
                        .collect();
                    WatchStart::History(evs)
                }
            };
            Ok((start, self.tx.subscribe()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(name: &str) -> Value {
        json!({"kind": "ConfigMap", "metadata": {"name": name, "namespace": "a"}})
    }

    #[test]
    fn rv_and_history() {
        let s = Store::new(2);
        let gr = GroupResource::new("", "configmaps");
        let mut rx = s.subscribe();
        s.transact(|t| {
            t.create(&gr, cm("x"));
            t.create(&gr, cm("y"));
            t.update(&gr, cm("y"));
        });
        assert_eq!(s.rv(), 3);
        assert_eq!(rx.try_recv().unwrap().rv, 1);
        assert!(s.watch(&gr, None, Some(0)).is_err());
        match s.watch(&gr, Some("a"), Some(1)).unwrap().0 {
            WatchStart::History(evs) => assert_eq!(evs.len(), 2),
            WatchStart::Snapshot(..) => panic!("expected history"),
        }
        let created = s.creates();
        assert_eq!(created.values().sum::<u64>(), 2);
        s.transact(|t| {
            let last = (*t.get(&gr, "a", "x").unwrap()).clone();
            t.remove(&gr, last);
            assert_eq!(t.list(&gr, Some("a")).len(), 1);
            assert_eq!(t.resources_in_namespace("a"), vec![gr.clone()]);
        });
    }
}

//! Watch streams: newline-delimited JSON watch events over a chunked response.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::resources::ResourceInfo;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{EventType, StoreEvent, WatchStart};

/// Which objects a watch (or list) shows, and how.
#[derive(Debug, Clone)]
pub struct View {
    /// The resource as requested (its version is what objects are shown as).
    pub info: ResourceInfo,
    /// Namespace filter.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// Answer `PartialObjectMetadata` instead of full objects.
    pub metadata_only: bool,
}

impl View {
    /// Whether an object passes the selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The object as this view shows it.
    pub fn present<'a>(&self, obj: &'a Value) -> Cow<'a, Value> {
        if self.metadata_only {
            return Cow::Owned(json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            }));
        }
        let av = self.info.api_version();
        if obj.get("apiVersion").and_then(Value::as_str) == Some(av.as_str()) {
            Cow::Borrowed(obj)
        } else {
            let mut o = obj.clone();
            o["apiVersion"] = json!(av);
            Cow::Owned(o)
        }
    }

    fn line(&self, kind: &str, obj: &Value) -> Bytes {
        let shown = self.present(obj);
        let mut s = format!("{{\"type\":\"{kind}\",\"object\":");
        s.push_str(&serde_json::to_string(&*shown).unwrap_or_else(|_| "{}".into()));
        s.push_str("}\n");
        Bytes::from(s)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let (kind, av) = if self.metadata_only {
            (
                "PartialObjectMetadata".to_string(),
                "meta.k8s.io/v1".to_string(),
            )
        } else {
            (self.info.kind.clone(), self.info.api_version())
        };
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": kind, "apiVersion": av, "metadata": meta});
        Bytes::from(format!("{}\n", json!({"type": "BOOKMARK", "object": obj})))
    }

    /// The watch event type a store event becomes for this view, if any.
    fn translate(&self, ev: &StoreEvent) -> Option<&'static str> {
        if ev.gr != self.info.group_resource() {
            return None;
        }
        if let Some(ns) = &self.namespace
            && *ns != ev.namespace
        {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.old.as_ref().is_some_and(|o| self.matches(o));
        match ev.event_type {
            EventType::Added => now.then_some("ADDED"),
            EventType::Deleted => (now || before).then_some("DELETED"),
            EventType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }
}

/// Parameters of one watch request.
#[derive(Debug, Clone)]
pub struct WatchParams {
    /// `resourceVersion` (`None` or 0: start with the current objects).
    pub since: Option<u64>,
    /// `sendInitialEvents=true`.
    pub send_initial: bool,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// How often to send bookmarks.
    pub bookmark_interval: Duration,
    /// Drop the stream abruptly after this many events (fault injection).
    pub drop_after: Option<u64>,
}

struct Stream {
    view: View,
    queue: VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<StoreEvent>>,
    seen_rv: u64,
    deadline: Option<Instant>,
    next_bookmark: Option<Instant>,
    interval: Duration,
    sent: u64,
    drop_after: Option<u64>,
    cancel: CancellationToken,
    done: bool,
}

/// The body of a watch response: a stream of lines.
pub type Lines = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Start a watch. An expired resourceVersion yields a single ERROR event.
pub fn start(
    store: &crate::store::Store,
    view: View,
    params: WatchParams,
    cancel: CancellationToken,
) -> Lines {
    let gr = view.info.group_resource();
    let since = if params.send_initial {
        None
    } else {
        params.since.filter(|rv| *rv != 0)
    };
    let started = store.watch(&gr, view.namespace.as_deref(), since);
    let (start, rx) = match started {
        Ok(x) => x,
        Err(e) => {
            let line = Bytes::from(format!(
                "{}\n",
                json!({"type": "ERROR", "object": e.to_status()})
            ));
            return Box::pin(futures::stream::iter([Ok(line)]));
        }
    };
    let mut queue = VecDeque::new();
    let seen_rv = match start {
        WatchStart::Snapshot(objs, rv) => {
            for o in objs.iter().filter(|o| view.matches(o)) {
                queue.push_back(view.line("ADDED", o));
            }
            if params.send_initial && params.bookmarks {
                queue.push_back(view.bookmark(rv, true));
            }
            rv
        }
        WatchStart::History(evs) => {
            let mut rv = since.unwrap_or(0);
            for ev in evs {
                rv = rv.max(ev.rv);
                if let Some(t) = view.translate(&ev) {
                    queue.push_back(view.line(t, &ev.object));
                }
            }
            rv
        }
    };
    let now = Instant::now();
    let st = Stream {
        view,
        queue,
        rx,
        seen_rv,
        deadline: params.timeout.map(|t| now + t),
        next_bookmark: params.bookmarks.then(|| now + params.bookmark_interval),
        interval: params.bookmark_interval,
        sent: 0,
        drop_after: params.drop_after,
        cancel,
        done: false,
    };
    Box::pin(futures::stream::unfold(st, next_line))
}

async fn next_line(mut st: Stream) -> Option<(Result<Bytes, std::io::Error>, Stream)> {
    if st.done {
        return None;
    }
    if st.drop_after.is_some_and(|n| st.sent >= n) {
        st.done = true;
        // Let the server flush what was sent (it flushes when the body is
        // pending) so the client sees exactly N events before the break.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let e = std::io::Error::other("watch dropped by fault injection");
        return Some((Err(e), st));
    }
    if let Some(line) = st.queue.pop_front() {
        st.sent += 1;
        return Some((Ok(line), st));
    }
    loop {
        let deadline = st.deadline;
        let bookmark_at = st.next_bookmark;
        tokio::select! {
            _ = st.cancel.cancelled() => return None,
            _ = sleep_until(deadline) => return None,
            _ = sleep_until(bookmark_at) => {
                st.next_bookmark = Some(Instant::now() + st.interval);
                let b = st.view.bookmark(st.seen_rv, false);
                return Some((Ok(b), st));
            }
            r = st.rx.recv() => match r {
                Ok(ev) => {
                    st.seen_rv = st.seen_rv.max(ev.rv);
                    if let Some(t) = st.view.translate(&ev) {
                        st.sent += 1;
                        let line = st.view.line(t, &ev.object);
                        return Some((Ok(line), st));
                    }
                }
                // Fell behind: end the stream; the client resumes from its last resourceVersion.
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return None,
            },
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// A watch that only reports an error (used for an expired resourceVersion).
pub fn error_line(e: &ApiError) -> Bytes {
    Bytes::from(format!(
        "{}\n",
        json!({"type": "ERROR", "object": e.to_status()})
    ))
}

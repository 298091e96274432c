//! Object store wrappers for tests: one counts requests (and can slow puts
//! down), one fails a seeded fraction of them. Shared by path with
//! `steps/tests` and `tests/`.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Methods of [`ObjectStore`] that a wrapper passes to its `inner` store
/// unchanged, written out as `#[async_trait]` expands them (a macro inside
/// an `#[async_trait]` impl is not expanded by it).
macro_rules! forward {
    ($($method:ident),* $(,)?) => { $(forward!(@one $method);)* };
    (@one delete_stream) => {
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<ObjPath>>,
        ) -> BoxStream<'static, object_store::Result<ObjPath>> {
            self.inner.delete_stream(locations)
        }
    };
    (@one list) => {
        fn list(
            &self,
            prefix: Option<&ObjPath>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
    };
    (@one list_with_delimiter) => {
        fn list_with_delimiter<'life0, 'life1, 'async_trait>(
            &'life0 self,
            prefix: Option<&'life1 ObjPath>,
        ) -> BoxFuture<'async_trait, object_store::Result<ListResult>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.list_with_delimiter(prefix)
        }
    };
    (@one copy_opts) => {
        fn copy_opts<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self,
            from: &'life1 ObjPath,
            to: &'life2 ObjPath,
            options: CopyOptions,
        ) -> BoxFuture<'async_trait, object_store::Result<()>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            'life2: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.copy_opts(from, to, options)
        }
    };
    (@one put_multipart_opts) => {
        fn put_multipart_opts<'life0, 'life1, 'async_trait>(
            &'life0 self,
            location: &'life1 ObjPath,
            opts: PutMultipartOptions,
        ) -> BoxFuture<'async_trait, object_store::Result<Box<dyn MultipartUpload>>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.put_multipart_opts(location, opts)
        }
    };
    (@one get_opts) => {
        fn get_opts<'life0, 'life1, 'async_trait>(
            &'life0 self,
            location: &'life1 ObjPath,
            options: GetOptions,
        ) -> BoxFuture<'async_trait, object_store::Result<GetResult>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            self.inner.get_opts(location, options)
        }
    };
}

/// Counts puts (and their bytes) per path; optionally slows puts down.
#[derive(Debug)]
pub struct CountingStore {
    pub inner: Arc<dyn ObjectStore>,
    pub put_delay: Duration,
    pub started: Mutex<HashMap<String, u64>>,
    pub completed: Mutex<HashMap<String, u64>>,
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub heads: AtomicU64,
    pub multiparts: AtomicU64,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, put_delay: Duration) -> Self {
        CountingStore {
            inner,
            put_delay,
            started: Mutex::default(),
            completed: Mutex::default(),
            puts: AtomicU64::new(0),
            put_bytes: AtomicU64::new(0),
            heads: AtomicU64::new(0),
            multiparts: AtomicU64::new(0),
        }
    }

    /// Resets the counters and forgets what was seen.
    pub fn reset(&self) {
        self.started.lock().unwrap().clear();
        self.completed.lock().unwrap().clear();
        self.puts.store(0, Ordering::SeqCst);
        self.put_bytes.store(0, Ordering::SeqCst);
        self.heads.store(0, Ordering::SeqCst);
        self.multiparts.store(0, Ordering::SeqCst);
    }

    /// Bytes put to chunk objects.
    pub fn chunk_put_bytes(&self) -> u64 {
        self.started
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.contains("/chunks/"))
            .map(|(_, v)| *v)
            .sum()
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let len = payload.content_length() as u64;
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.put_bytes.fetch_add(len, Ordering::SeqCst);
        *self
            .started
            .lock()
            .unwrap()
            .entry(location.to_string())
            .or_default() += len;
        if !self.put_delay.is_zero() {
            tokio::time::sleep(self.put_delay).await;
        }
        let r = self.inner.put_opts(location, payload, opts).await?;
        *self
            .completed
            .lock()
            .unwrap()
            .entry(location.to_string())
            .or_default() += len;
        Ok(r)
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.multiparts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            self.heads.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get_opts(location, options).await
    }
    forward!(delete_stream, list, list_with_delimiter, copy_opts);
}

/// Fails a fraction of requests with a transient error, from a seeded RNG.
/// A failed put commits first half of the time ("wrote it, answered 500").
#[derive(Debug)]
pub struct FaultyStore {
    pub inner: Arc<dyn ObjectStore>,
    pub rate: f64,
    pub rng: Mutex<StdRng>,
    pub injected: AtomicU64,
    pub requests: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, rate: f64, seed: u64) -> Self {
        FaultyStore {
            inner,
            rate,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            injected: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// `Some(commit_first)` when this request is to fail.
    fn roll(&self) -> Option<bool> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut rng = self.rng.lock().unwrap();
        if rng.random_bool(self.rate) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            Some(rng.random_bool(0.5))
        } else {
            None
        }
    }

    fn err() -> object_store::Error {
        object_store::Error::Generic {
            store: "faulty",
            source: "injected fault: 503 Slow Down".into(),
        }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        match self.roll() {
            None => self.inner.put_opts(location, payload, opts).await,
            Some(true) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(Self::err())
            }
            Some(false) => Err(Self::err()),
        }
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        if self.roll().is_some() {
            return Err(Self::err());
        }
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if self.roll().is_some() {
            return Err(Self::err());
        }
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        if self.roll().is_some() {
            return futures::stream::once(async { Err(Self::err()) }).boxed();
        }
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if self.roll().is_some() {
            return futures::stream::once(async { Err(Self::err()) }).boxed();
        }
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        if self.roll().is_some() {
            return Err(Self::err());
        }
        self.inner.list_with_delimiter(prefix).await
    }
    forward!(copy_opts);
}

/// Appends a line to a file before each put (`start <path> <len>`) and after
/// it landed (`done <path>`), each with one `write` on an `O_APPEND` file, so
/// that a process killed with SIGKILL loses no line it wrote: the crash tests
/// read it to count which puts were in flight at the kill. Optionally slows
/// puts down, so that several are.
#[derive(Debug)]
pub struct PutLogStore {
    pub inner: Arc<dyn ObjectStore>,
    pub log: Mutex<std::fs::File>,
    pub put_delay: Duration,
}

impl PutLogStore {
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        log: &std::path::Path,
        put_delay: Duration,
    ) -> std::io::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        Ok(PutLogStore {
            inner,
            log: Mutex::new(log),
            put_delay,
        })
    }

    fn line(&self, line: String) {
        use std::io::Write;
        let _ = self.log.lock().unwrap().write_all(line.as_bytes());
    }
}

/// The puts a [`PutLogStore`] recorded.
#[derive(Clone, Debug, Default)]
pub struct PutRecord {
    /// Puts begun, by path, with their bytes (the last begun put's).
    pub started: HashMap<String, u64>,
    /// Paths whose put landed.
    pub done: std::collections::HashSet<String>,
}

impl PutRecord {
    /// Reads a [`PutLogStore`]'s file.
    pub fn read(log: &std::path::Path) -> std::io::Result<Self> {
        let mut r = PutRecord::default();
        for line in std::fs::read_to_string(log)?.lines() {
            let mut f = line.split(' ');
            match (f.next(), f.next(), f.next()) {
                (Some("start"), Some(path), Some(len)) => {
                    r.started
                        .insert(path.to_string(), len.parse().unwrap_or_default());
                }
                (Some("done"), Some(path), None) => {
                    r.done.insert(path.to_string());
                }
                // A line cut by the kill.
                _ => {}
            }
        }
        Ok(r)
    }

    /// Chunk puts begun and not landed: what was in flight.
    pub fn in_flight_chunks(&self) -> HashMap<String, u64> {
        self.started
            .iter()
            .filter(|(k, _)| k.contains("/chunks/") && !self.done.contains(*k))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Chunk puts begun, landed or not.
    pub fn chunks_started(&self) -> HashMap<String, u64> {
        self.started
            .iter()
            .filter(|(k, _)| k.contains("/chunks/"))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

impl fmt::Display for PutLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PutLog({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for PutLogStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.line(format!("start {location} {}\n", payload.content_length()));
        if !self.put_delay.is_zero() {
            tokio::time::sleep(self.put_delay).await;
        }
        let r = self.inner.put_opts(location, payload, opts).await;
        // Create-if-absent refused: the object is there all the same.
        if matches!(r, Ok(_) | Err(object_store::Error::AlreadyExists { .. })) {
            self.line(format!("done {location}\n"));
        }
        r
    }
    forward!(
        put_multipart_opts,
        get_opts,
        delete_stream,
        list,
        list_with_delimiter,
        copy_opts
    );
}

/// Records every request, in the order they began: `(op, path)` with op
/// `put`, `multipart`, `get`, `head`, `delete` or `list`.
#[derive(Debug)]
pub struct TraceStore {
    pub inner: Arc<dyn ObjectStore>,
    pub ops: Mutex<Vec<(&'static str, String)>>,
}

impl TraceStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        TraceStore {
            inner,
            ops: Mutex::default(),
        }
    }

    fn record(&self, op: &'static str, path: &ObjPath) {
        self.ops.lock().unwrap().push((op, path.to_string()));
    }
}

impl fmt::Display for TraceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Trace({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for TraceStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.record("put", location);
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.record("multipart", location);
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.record(if options.head { "head" } else { "get" }, location);
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        // Deletes are not traced: their paths arrive as a stream.
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Some(p) = prefix {
            self.record("list", p);
        }
        self.inner.list(prefix)
    }
    forward!(list_with_delimiter, copy_opts);
}

/// Holds every chunk read until a manifest was written, then fails the next
/// `fail` chunk reads: an outage that begins once an upload is complete, for
/// a download that follows the upload (and reads back chunks the bucket had
/// before it) to meet after it. [`GateStore::arm`] starts it over.
#[derive(Debug)]
pub struct GateStore {
    pub inner: Arc<dyn ObjectStore>,
    pub fail: AtomicU64,
    pub opened: tokio::sync::watch::Sender<bool>,
}

impl GateStore {
    pub fn new(inner: Arc<dyn ObjectStore>, fail: u64) -> Self {
        GateStore {
            inner,
            fail: AtomicU64::new(fail),
            opened: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Closes the gate again until the next manifest, and fails the `fail`
    /// chunk reads after it.
    pub fn arm(&self, fail: u64) {
        self.opened.send_replace(false);
        self.fail.store(fail, Ordering::SeqCst);
    }
}

impl fmt::Display for GateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gate({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for GateStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await;
        if r.is_ok() && location.as_ref().contains("/manifests/") {
            self.opened.send_replace(true);
        }
        r
    }
    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if !options.head && location.as_ref().contains("/chunks/") {
            let _ = self.opened.subscribe().wait_for(|open| *open).await;
            let failed = self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failed {
                return Err(object_store::Error::Generic {
                    store: "gate",
                    source: "injected outage: 503 Service Unavailable".into(),
                });
            }
        }
        self.inner.get_opts(location, options).await
    }
    forward!(
        put_multipart_opts,
        delete_stream,
        list,
        list_with_delimiter,
        copy_opts
    );
}

/// Stores every put to one armed path with a byte flipped (a bucket that
/// damages what it is given); forwards everything else.
#[derive(Debug)]
pub struct RotStore {
    pub inner: Arc<dyn ObjectStore>,
    pub target: Mutex<Option<String>>,
    pub rotted: AtomicU64,
}

impl RotStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        RotStore {
            inner,
            target: Mutex::new(None),
            rotted: AtomicU64::new(0),
        }
    }

    /// Damages the puts to `path` (relative to the store) from now on.
    pub fn arm(&self, path: &str) {
        *self.target.lock().unwrap() = Some(path.to_string());
    }
}

impl fmt::Display for RotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rot({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RotStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let armed = self.target.lock().unwrap().as_deref() == Some(location.as_ref());
        let payload = if armed {
            let mut bytes = Vec::new();
            for part in &payload {
                bytes.extend_from_slice(part);
            }
            if let Some(b) = bytes.get_mut(0) {
                *b ^= 0xFF;
            }
            self.rotted.fetch_add(1, Ordering::SeqCst);
            PutPayload::from(bytes)
        } else {
            payload
        };
        self.inner.put_opts(location, payload, opts).await
    }
    forward!(
        put_multipart_opts,
        get_opts,
        delete_stream,
        list,
        list_with_delimiter,
        copy_opts
    );
}

/// Refuses every write as an S3 policy without `s3:PutObject` would
/// (`PermissionDenied`); reads and lists go through.
#[derive(Debug)]
pub struct ReadOnlyStore {
    pub inner: Arc<dyn ObjectStore>,
}

impl fmt::Display for ReadOnlyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadOnly({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ReadOnlyStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(object_store::Error::PermissionDenied {
            path: location.to_string(),
            source: "403 AccessDenied: not authorized to perform s3:PutObject".into(),
        })
    }
    forward!(
        put_multipart_opts,
        get_opts,
        delete_stream,
        list,
        list_with_delimiter,
        copy_opts
    );
}

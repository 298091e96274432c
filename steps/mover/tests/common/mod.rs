//! Shared helpers of the mover's tests: a tree generator, a tree comparer,
//! real `tar` on both ends, store wrappers that count or fail requests, and
//! an in-process S3 server.
#![allow(dead_code, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, FileTimes};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};

use ferry_mover::{
    Bucket, BucketOptions, Download, Manifest, RetryPolicy, Upload, UploadOptions, UploadOutcome,
};

// ---------------------------------------------------------------- trees

/// What to put in a generated tree.
#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub seed: u64,
    pub small_files: usize,
    pub small_max: usize,
    pub large_len: usize,
    pub sparse_len: u64,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            seed: 1,
            small_files: 300,
            small_max: 24 << 10,
            large_len: 6 << 20,
            sparse_len: 64 << 20,
        }
    }
}

/// Bytes that compress somewhat (words) or not at all (random).
pub fn content(rng: &mut StdRng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "ferry ", "volume ", "chunk ", "bucket ", "tar ", "clone ", "\n", "0123 ",
    ];
    if rng.random_bool(0.5) {
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        v
    } else {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
        }
        v.truncate(len);
        v
    }
}

fn set_mtime(path: &Path, secs: u64) -> anyhow::Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let f = File::open(path)?;
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))?;
    Ok(())
}

/// Generates a tree with many small files, one large file, empty dirs,
/// symlinks, hardlinks, a sparse file, a non-UTF-8 name, modes, mtimes and
/// (as root) owners.
pub fn make_tree(root: &Path, spec: &TreeSpec) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let as_root = nix_is_root();
    fs::create_dir_all(root)?;
    let mut dirs = vec![root.to_path_buf()];
    for d in 0..12 {
        let parent = dirs[rng.random_range(0..dirs.len())].clone();
        let dir = parent.join(format!("dir-{d}"));
        fs::create_dir(&dir)?;
        dirs.push(dir);
    }
    for i in 0..spec.small_files {
        let dir = &dirs[rng.random_range(0..dirs.len())];
        let len = rng.random_range(0..=spec.small_max);
        let path = dir.join(format!("file-{i}.dat"));
        fs::write(&path, content(&mut rng, len))?;
        let mode = [0o644, 0o600, 0o755, 0o640, 0o444, 0o4755][rng.random_range(0..6)];
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        if as_root && i % 7 == 0 {
            std::os::unix::fs::chown(&path, Some(1000 + i as u32), Some(2000 + i as u32))?;
        }
        set_mtime(&path, 1_600_000_000 + rng.random_range(0..100_000_000))?;
    }
    // One large file.
    let large = root.join("large.bin");
    let mut f = File::create(&large)?;
    let mut left = spec.large_len;
    while left > 0 {
        let n = left.min(1 << 20);
        f.write_all(&content(&mut rng, n))?;
        left -= n;
    }
    drop(f);
    set_mtime(&large, 1_650_000_000)?;
    // Empty dirs.
    fs::create_dir_all(root.join("empty/nested-empty"))?;
    fs::create_dir(root.join("empty-700"))?;
    fs::set_permissions(root.join("empty-700"), fs::Permissions::from_mode(0o700))?;
    // Symlinks: relative, absolute, dangling, to a dir.
    symlink("large.bin", root.join("link-to-large"))?;
    symlink("/nonexistent/target", root.join("dangling"))?;
    symlink("dir-0", root.join("link-to-dir"))?;
    // Hardlinks.
    fs::write(root.join("hard-a"), b"shared by two names\n")?;
    fs::hard_link(root.join("hard-a"), root.join("dir-0").join("hard-b"))?;
    set_mtime(&root.join("hard-a"), 1_610_000_000)?;
    // A sparse file: data at both ends, a hole in between.
    let sparse = root.join("sparse.img");
    let mut f = File::create(&sparse)?;
    f.write_all(&content(&mut rng, 64 << 10))?;
    f.seek(SeekFrom::Start(spec.sparse_len / 2))?;
    f.write_all(b"middle")?;
    f.set_len(spec.sparse_len)?;
    drop(f);
    set_mtime(&sparse, 1_640_000_000)?;
    // A file name that is not UTF-8.
    let name = OsString::from_vec(b"caf\xe9-latin1.txt".to_vec());
    fs::write(root.join(&name), b"not utf-8 name\n")?;
    set_mtime(&root.join(&name), 1_620_000_000)?;
    if as_root {
        std::os::unix::fs::chown(root.join(&name), Some(4242), Some(4343))?;
    }
    // Directory mtimes last, deepest first.
    let mut all_dirs = dirs.clone();
    all_dirs.extend([
        root.join("empty/nested-empty"),
        root.join("empty"),
        root.join("empty-700"),
    ]);
    all_dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for (i, d) in all_dirs.iter().enumerate() {
        set_mtime(d, 1_500_000_000 + i as u64 * 1000)?;
    }
    Ok(())
}

pub fn nix_is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[derive(PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<i64>,
    size: u64,
    content: Option<blake3::Hash>,
    link: Option<OsString>,
    /// Index of the first path (in walk order) sharing this inode.
    hardlink_to: Option<Vec<u8>>,
    sparse: bool,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mode {:o} owner {}:{} mtime {:?} size {} hash {:?} link {:?} hardlink {:?} sparse {}",
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.mtime,
            self.size,
            self.content.map(|h| h.to_hex()[..12].to_string()),
            self.link,
            self.hardlink_to
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            self.sparse
        )
    }
}

fn walk(root: &Path) -> anyhow::Result<BTreeMap<Vec<u8>, Entry>> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let m = fs::symlink_metadata(&abs).with_context(|| format!("stat {}", abs.display()))?;
        let ft = m.file_type();
        let key = rel.as_os_str().as_bytes().to_vec();
        let (kind, content, link, mut hardlink_to, sparse) = if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&abs)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for n in names.into_iter().rev() {
                stack.push(rel.join(n));
            }
            ("dir", None, None, None, false)
        } else if ft.is_symlink() {
            (
                "symlink",
                None,
                Some(fs::read_link(&abs)?.into_os_string()),
                None,
                false,
            )
        } else if ft.is_file() {
            let data = fs::read(&abs)?;
            let sparse = m.blocks() * 512 < m.size() / 2;
            ("file", Some(blake3::hash(&data)), None, None, sparse)
        } else {
            ("other", None, None, None, false)
        };
        if ft.is_file() && m.nlink() > 1 {
            let first = inodes
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| key.clone());
            if *first != key {
                hardlink_to = Some(first.clone());
            }
        }
        out.insert(
            key,
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                // Symlink times cannot be set portably; the root dir's mtime
                // is the extraction target's.
                mtime: if ft.is_symlink() || rel.as_os_str().is_empty() {
                    None
                } else {
                    Some(m.mtime())
                },
                size: if ft.is_dir() { 0 } else { m.size() },
                content,
                link,
                hardlink_to,
                sparse,
            },
        );
    }
    Ok(out)
}

/// Compares two trees on type, mode, owner, mtime, size, content, symlink
/// target, hardlink structure and sparseness; reports the first difference.
pub fn compare_trees(a: &Path, b: &Path) -> anyhow::Result<()> {
    let ta = walk(a)?;
    let tb = walk(b)?;
    for (k, ea) in &ta {
        let name = String::from_utf8_lossy(k);
        match tb.get(k) {
            None => bail!("{name:?}: in {} but not in {}", a.display(), b.display()),
            Some(eb) if ea != eb => bail!(
                "{name:?} differs:\n  {}: {ea:?}\n  {}: {eb:?}",
                a.display(),
                b.display()
            ),
            Some(_) => {}
        }
    }
    if let Some(k) = tb.keys().find(|k| !ta.contains_key(*k)) {
        bail!(
            "{:?}: in {} but not in {}",
            String::from_utf8_lossy(k),
            b.display(),
            a.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- tar

pub fn tar_create(dir: &Path) -> anyhow::Result<Child> {
    Ok(Command::new("tar")
        .args(["-c", "--sparse", "--numeric-owner", "-f", "-", "-C"])
        .arg(dir)
        .arg(".")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

pub fn tar_extract(dir: &Path) -> anyhow::Result<Child> {
    fs::create_dir_all(dir)?;
    Ok(Command::new("tar")
        .args([
            "-x",
            "--numeric-owner",
            "--same-permissions",
            "-f",
            "-",
            "-C",
        ])
        .arg(dir)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?)
}

/// `tar -c dir | upload`.
pub async fn upload_tree(
    bucket: &Bucket,
    run: &str,
    volume: &str,
    dir: &Path,
    opts: UploadOptions,
) -> anyhow::Result<UploadOutcome> {
    let mut tar = tar_create(dir)?;
    let stdout = tar.stdout.take().context("tar stdout")?;
    let out = Upload::new(bucket, run, volume)
        .options(opts)
        .run(stdout)
        .await?;
    let status = tar.wait().await?;
    ensure!(status.success(), "tar -c exited with {status}");
    Ok(out)
}

/// `download | tar -x dir`.
pub async fn download_tree(bucket: &Bucket, manifest: &Manifest, dir: &Path) -> anyhow::Result<()> {
    let mut tar = tar_extract(dir)?;
    let stdin = tar.stdin.take().context("tar stdin")?;
    Download::new(bucket, manifest).run(stdin).await?;
    let status = tar.wait().await?;
    ensure!(status.success(), "tar -x exited with {status}");
    Ok(())
}

/// A quick retry policy for tests.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(20),
    }
}

pub fn file_bucket(dir: &Path) -> anyhow::Result<Bucket> {
    let url = url::Url::from_directory_path(dir).map_err(|()| anyhow::anyhow!("bad dir"))?;
    Ok(Bucket::open(
        url.as_str(),
        &BucketOptions {
            prefix: "install-1".into(),
            retry: fast_retry(),
            ..Default::default()
        },
    )?)
}

// ---------------------------------------------------------------- store wrappers

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
        }
    }

    /// Resets the counters and forgets what was seen.
    pub fn reset(&self) {
        self.started.lock().unwrap().clear();
        self.completed.lock().unwrap().clear();
        self.puts.store(0, Ordering::SeqCst);
        self.put_bytes.store(0, Ordering::SeqCst);
        self.heads.store(0, Ordering::SeqCst);
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
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
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
    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

// ---------------------------------------------------------------- s3s

/// An S3 server (s3s + s3s-fs) on 127.0.0.1 serving `root`; bucket `ferry`.
pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const S3_BUCKET: &str = "ferry";

pub async fn start_s3(root: &Path) -> anyhow::Result<S3Server> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    use s3s::auth::SimpleAuth;
    use s3s::service::S3ServiceBuilder;

    fs::create_dir_all(root.join(S3_BUCKET))?;
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single("ferry-test", "ferry-test-secret"));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok(S3Server {
        endpoint: format!("http://{addr}"),
        root: root.to_path_buf(),
        task,
    })
}

pub fn s3_options(server: &S3Server) -> Vec<(String, String)> {
    [
        ("aws_endpoint", server.endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_virtual_hosted_style_request", "false"),
        ("aws_access_key_id", "ferry-test"),
        ("aws_secret_access_key", "ferry-test-secret"),
        ("aws_region", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub fn s3_bucket(server: &S3Server) -> anyhow::Result<Bucket> {
    Ok(Bucket::open(
        &format!("s3://{S3_BUCKET}/ferry-installs"),
        &BucketOptions {
            prefix: "install-1".into(),
            store_options: s3_options(server),
            retry: fast_retry(),
        },
    )?)
}

pub fn os(s: &[u8]) -> OsString {
    std::ffi::OsStr::from_bytes(s).to_os_string()
}

//! Starting, inspecting and stopping one simulated cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Server};
use crate::controllers;
use crate::faults::{FaultConfig, Faults};
use crate::objects::{State, WriteOpts};
use crate::store::ObjectRef;

/// Errors of starting or talking to a simulated cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory or kubeconfig could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The listening socket could not be opened.
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind {
        /// The requested port.
        port: u16,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kube client could not be built.
    #[error("cannot build a kube client for {url}: {source}")]
    Client {
        /// The cluster URL.
        url: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A cluster URL that does not parse (should not happen).
    #[error("invalid cluster url {0}")]
    Url(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to start a simulated cluster.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Cluster (and kubeconfig context) name.
    pub name: String,
    /// Where the cluster keeps its files; a temporary directory (removed at
    /// stop) when `None`.
    pub data_dir: Option<PathBuf>,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Kubernetes minor version reported by `/version` (27..=33). The kubectl
    /// dispatcher runs the matching real kubectl.
    pub minor: u32,
    /// Bearer token; random when `None`.
    pub token: Option<String>,
    /// Events kept for watch resumption; older resourceVersions get 410 Expired.
    pub event_history: usize,
    /// Period of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Initial fault injection.
    pub faults: FaultConfig,
    /// How long a pod stays Pending once it is scheduled and its claims are
    /// bound, before it is Running and Ready.
    pub pod_ready_delay: Duration,
    /// The StorageClasses, VolumeSnapshotClasses and IngressClasses the
    /// cluster starts with, replacing
    /// [`storage::default_objects`](crate::storage::default_objects) when set.
    pub cluster_objects: Option<Vec<serde_json::Value>>,
    /// The PodSecurity level enforced in namespaces without a
    /// `pod-security.kubernetes.io/enforce` label, as an API server's
    /// `PodSecurity` admission configuration sets it cluster-wide
    /// (`defaults.enforce`); `None` is `privileged`.
    pub pod_security_default: Option<String>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            name: "sim".into(),
            data_dir: None,
            port: 0,
            minor: 32,
            token: None,
            event_history: 10_000,
            bookmark_interval: Duration::from_secs(10),
            faults: FaultConfig::default(),
            pod_ready_delay: Duration::from_millis(100),
            cluster_objects: None,
            pod_security_default: None,
        }
    }
}

/// A running simulated cluster. Stop it with [`SimCluster::stop`]; dropping it
/// also cancels the server, without waiting.
#[derive(Debug)]
pub struct SimCluster {
    name: String,
    url: String,
    token: String,
    data_dir: PathBuf,
    kubeconfig_path: PathBuf,
    server: Arc<Server>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    serve: Option<JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How often the kubelet and scheduler pass over the pods.
const KUBELET_PERIOD: Duration = Duration::from_millis(20);

/// Write `contents` to `path` with mode 0600 (created or truncated).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path).map_err(io_err(path))?;
    #[cfg(unix)]
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    Ok(())
}

/// A kubeconfig with one cluster, user and context, all named `name`.
///
/// The token is both the user's bearer token (kube sends it) and a path
/// prefix of the server URL (`http://127.0.0.1:PORT/t/TOKEN`), because
/// kubectl never sends credentials over plain HTTP.
pub fn kubeconfig_yaml(name: &str, url: &str, token: &str) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": format!("{url}{}{token}", api::TOKEN_PREFIX)}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

impl SimCluster {
    /// Start a cluster on 127.0.0.1 with the default namespaces, their
    /// `default` ServiceAccounts and `kube-root-ca.crt` ConfigMaps.
    pub async fn start(opts: SimOptions) -> Result<SimCluster> {
        let (tmp, data_dir) = match &opts.data_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io_err(d))?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("ferry-sim-")
                    .tempdir()
                    .map_err(io_err(Path::new("/tmp")))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let token = opts.token.clone().unwrap_or_else(|| {
            rand::rng()
                .sample_iter(&Alphanumeric)
                .take(40)
                .map(char::from)
                .collect()
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port))
            .await
            .map_err(|source| Error::Bind {
                port: opts.port,
                source,
            })?;
        let addr: SocketAddr = listener.local_addr().map_err(|source| Error::Bind {
            port: opts.port,
            source,
        })?;
        let url = format!("http://127.0.0.1:{}", addr.port());

        let mut state = State::new(opts.event_history);
        state.runtime.pod_ready_delay = opts.pod_ready_delay;
        state.runtime.pod_security_default = opts.pod_security_default.clone();
        state.runtime.data_dir = data_dir.clone();
        let state = Arc::new(state);
        bootstrap(&state, opts.cluster_objects.as_deref());
        let cancel = CancellationToken::new();
        let server = Arc::new(Server {
            state: state.clone(),
            token: token.clone(),
            faults: Faults::new(opts.faults.clone()),
            minor: opts.minor,
            cancel: cancel.clone(),
            bookmark_interval: opts.bookmark_interval,
            requests: AtomicU64::new(0),
            user_agents: Default::default(),
            execs: Default::default(),
        });
        let mut tasks: Vec<JoinHandle<()>> = controllers::builtin()
            .into_iter()
            .map(|c| controllers::spawn(state.clone(), cancel.clone(), c))
            .collect();
        tasks.push(controllers::spawn_ticking(
            state.clone(),
            cancel.clone(),
            KUBELET_PERIOD,
            crate::workloads::kubelet_tick,
        ));

        let app_server = server.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let s = app_server.clone();
            async move { api::handle(s, req).await }
        });
        let shutdown = cancel.clone();
        let serve = tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "simulator server ended with an error");
            }
        });

        let kubeconfig_path = data_dir.join("kubeconfig");
        write_private(&kubeconfig_path, &kubeconfig_yaml(&opts.name, &url, &token))?;
        let cluster = SimCluster {
            name: opts.name,
            url,
            token,
            data_dir,
            kubeconfig_path,
            server,
            cancel,
            tasks,
            serve: Some(serve),
            _tmp: tmp,
        };
        // Let the controllers finish reacting to the bootstrap objects, so a
        // new cluster's resourceVersion stands still until someone writes.
        cluster.settle().await;
        Ok(cluster)
    }

    /// Cluster name (kubeconfig context).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bearer token requests must carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The kubeconfig written into the data directory (mode 0600).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The kubeconfig as YAML.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.name, &self.url, &self.token)
    }

    /// A `kube::Config` for this cluster (`default_retry` on, as kube defaults).
    pub fn kube_config(&self) -> Result<kube::Config> {
        let uri = self.url.parse().map_err(|_| Error::Url(self.url.clone()))?;
        let mut cfg = kube::Config::new(uri);
        let v = http::HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|_| Error::Url(self.url.clone()))?;
        cfg.headers.push((http::header::AUTHORIZATION, v));
        Ok(cfg)
    }

    /// A kube client with kube's default retries (429/503/504 retried).
    pub fn client(&self) -> Result<kube::Client> {
        let cfg = self.kube_config()?;
        kube::Client::try_from(cfg).map_err(|source| Error::Client {
            url: self.url.clone(),
            source,
        })
    }

    /// A kube client with `default_retry` off, so injected 429/503 surface at once.
    pub fn client_without_retry(&self) -> Result<kube::Client> {
        let mut cfg = self.kube_config()?;
        cfg.default_retry = false;
        kube::Client::try_from(cfg).map_err(|source| Error::Client {
            url: self.url.clone(),
            source,
        })
    }

    /// The current global resourceVersion (every write advances it).
    pub fn resource_version(&self) -> u64 {
        self.server.state.store.rv()
    }

    /// Waits until the controllers have caught up: the global resourceVersion
    /// unchanged over a window longer than the kubelet's quietest stretch
    /// (a pod waits [`SimOptions::pod_ready_delay`] between scheduled and
    /// Running, writing nothing), at most 5 s. Controllers react to writes
    /// asynchronously (a new namespace gets its ServiceAccount and root CA,
    /// a claim its volume …), so a test that asserts "nothing was written"
    /// reads the resourceVersion after this.
    pub async fn settle(&self) {
        let window = (self.server.state.runtime.pod_ready_delay + 3 * KUBELET_PERIOD)
            .max(Duration::from_millis(50));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut last = self.resource_version();
        loop {
            tokio::time::sleep(window).await;
            let now = self.resource_version();
            if now == last || tokio::time::Instant::now() >= deadline {
                return;
            }
            last = now;
        }
    }

    /// Creates per object since start.
    pub fn creates(&self) -> BTreeMap<ObjectRef, u64> {
        self.server.state.store.creates()
    }

    /// How many times `kind` `namespace`/`name` was created (`""` namespace for cluster-scoped).
    pub fn create_count(&self, kind: &str, namespace: &str, name: &str) -> u64 {
        let key = ObjectRef {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.creates().get(&key).copied().unwrap_or(0)
    }

    /// The exec sessions started so far, in order (an API server's audit
    /// log records each `pods/exec` request with its command too).
    pub fn execs(&self) -> Vec<crate::exec::ExecRecord> {
        self.server.execs.records()
    }

    /// The `/sim/v1/counters` document.
    pub fn counters(&self) -> serde_json::Value {
        api::counters_doc(&self.server)
    }

    /// Replace the fault configuration (re-seeds the RNG).
    pub fn set_faults(&self, cfg: FaultConfig) {
        self.server.faults.set(cfg);
    }

    /// Remove every fault.
    pub fn clear_faults(&self) {
        self.server.faults.set(FaultConfig::default());
    }

    /// Errors injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.server.faults.injected()
    }

    /// Stop serving: ends watches, closes connections, stops controllers,
    /// removes a temporary data directory.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(serve) = self.serve.take() {
            // Idle keep-alive connections can hold graceful shutdown; do not wait forever.
            let abort = serve.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), serve)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The objects a new cluster starts with.
fn bootstrap(state: &State, cluster_objects: Option<&[serde_json::Value]>) {
    let opts = WriteOpts {
        manager: "kube-apiserver".into(),
        ..Default::default()
    };
    let Some(ns_info) = state.registry.lookup("", "v1", "namespaces") else {
        return;
    };
    state.store.transact(|txn| {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let _ = state.create(txn, &ns_info, None, obj, &opts);
        }
    });
    // The namespace controller's first resync adds the ServiceAccounts and
    // ConfigMaps; do it here too so they exist as soon as `start` returns.
    controllers::namespace_defaults(state, None);
    // StorageClasses, VolumeSnapshotClasses and the IngressClass.
    let objects = cluster_objects
        .map(<[serde_json::Value]>::to_vec)
        .unwrap_or_else(crate::storage::default_objects);
    state.store.transact(|txn| {
        for obj in objects {
            let (group, version) = match obj
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .unwrap_or("v1")
                .split_once('/')
            {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), "v1".to_string()),
            };
            let kind = obj.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let Some(info) = state
                .registry
                .in_group_version(&group, &version)
                .into_iter()
                .find(|i| i.kind == kind)
            else {
                tracing::warn!(kind, "unknown kind in the cluster's initial objects");
                continue;
            };
            let ns = info.namespaced.then_some("default");
            if let Err(e) = state.create(txn, &info, ns, obj, &opts) {
                tracing::warn!(error = ?e, "initial object refused");
            }
        }
    });
}

//! `ferry daemon`: opens the store, resumes unfinished clones, serves the API.
//!
//! Start-up checks everything that can be wrong with the command line, the
//! config, the tokens file and the TLS files *before* it creates anything
//! (key files, state dir, socket). Then: key files (generated if absent),
//! the store (its lock refuses a second daemon on the same dir), the engine
//! with the step [`registry`], recovery, the listeners. SIGTERM or SIGINT
//! stop it gracefully: no new connection, requests in flight finish, the
//! engine suspends running steps (no compensation), the store closes clean.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_engine::{Engine, EngineOptions, Registry};
use ferry_steps::workflow::CloneWorkflow;
use ferry_store::{Key32, Store, StoreOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server;
use crate::tokens::Tokens;

/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// How often retention looks for expired records.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// What `ferry daemon` was asked to do.
#[derive(Debug)]
pub struct Options {
    /// The state dir (store, blobs, default socket).
    pub state_dir: PathBuf,
    /// The config file.
    pub config: Option<PathBuf>,
    /// The Unix socket (default `STATE_DIR/ferry.sock`).
    pub socket: Option<PathBuf>,
    /// TCP address for the TLS listener.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    pub tls_key: Option<PathBuf>,
    /// Kubeconfig files (else KUBECONFIG, else ~/.kube/config).
    pub kubeconfig: Vec<PathBuf>,
}

/// The step types this daemon can drive: the clone workflow's. Registered
/// here and only here, so that recovery, submit and the engine agree on one
/// registry.
pub fn registry(workflow: &CloneWorkflow) -> Registry {
    let mut registry = Registry::new();
    workflow.register(&mut registry);
    registry
}

/// Where key files go when the config names none: `keys/` next to the config
/// file, else `$XDG_CONFIG_HOME/ferry/keys` (`~/.config/ferry/keys`).
pub fn default_key_dir(config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(c) = config {
        let parent = c
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Ok(std::path::absolute(parent.join("keys"))?);
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Ok(x.join("ferry").join("keys"));
    }
    if let Some(home) = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Ok(home.join(".config").join("ferry").join("keys"));
    }
    bail!(
        "no place for the key files: set keys.audit_mac and keys.blob_encryption in a --config file, or set XDG_CONFIG_HOME"
    )
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(opts: Options) -> anyhow::Result<ExitCode> {
    // 1. Everything that can be checked without creating anything.
    let config = match &opts.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let tokens = match &config.tokens_file {
        Some(path) => Tokens::load(path)?,
        None => Tokens::default(),
    };
    let tls = match (&opts.listen, &opts.tls_cert, &opts.tls_key) {
        (Some(_), Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        (Some(_), _, _) => {
            bail!("--listen needs --tls-cert and --tls-key: the TCP listener serves TLS only")
        }
        (None, None, None) => None,
        (None, _, _) => bail!("--tls-cert and --tls-key only apply with --listen ADDR"),
    };
    if opts.listen.is_some() && tokens.is_empty() {
        tracing::warn!(
            "--listen without a tokens file (tokens_file in the config): every TCP request will be refused with 401"
        );
    }
    let key_dir = default_key_dir(opts.config.as_deref())?;
    let audit_path = config
        .keys
        .audit_mac
        .clone()
        .unwrap_or_else(|| key_dir.join("audit.key"));
    let blob_path = config
        .keys
        .blob_encryption
        .clone()
        .unwrap_or_else(|| key_dir.join("blob.key"));
    let state_dir = std::path::absolute(&opts.state_dir).context("the state dir path")?;
    for (what, p) in [("audit MAC", &audit_path), ("blob encryption", &blob_path)] {
        if std::path::absolute(p).is_ok_and(|p| p.starts_with(&state_dir)) {
            tracing::warn!(path = %p.display(), "the {what} key file is inside the state dir: anyone who can write the state dir can then forge or read what the key protects; move it out");
        }
    }
    let socket = opts
        .socket
        .clone()
        .unwrap_or_else(|| state_dir.join("ferry.sock"));

    // 2. Keys and the store.
    let mac_key = Key32::load_or_create(&audit_path)
        .with_context(|| format!("audit MAC key {}", audit_path.display()))?;
    let blob_key = Key32::load_or_create(&blob_path)
        .with_context(|| format!("blob encryption key {}", blob_path.display()))?;
    let store = Store::open(StoreOptions {
        dir: state_dir.clone(),
        mac_key,
        blob_key: Some(blob_key),
    })?;
    tracing::info!(state_dir = %state_dir.display(), audit_key = %audit_path.display(), blob_key = %blob_path.display(), "store opened");

    // 3. The engine and recovery.
    let defaults = EngineOptions::default();
    let engine_opts = EngineOptions {
        global_limit: config.limits.global_steps.unwrap_or(defaults.global_limit),
        per_run_limit: config
            .limits
            .per_run_steps
            .unwrap_or(defaults.per_run_limit),
        ..defaults
    };
    let config = Arc::new(config);
    let workflow = crate::workflow::clone_workflow(
        &config,
        &crate::workflow::kubeconfig_paths(&opts.kubeconfig),
    )?;
    let engine = Engine::new(store.clone(), registry(&workflow), engine_opts);
    let metrics = Arc::new(Metrics::default());
    let stop = CancellationToken::new();
    let (resumed, failed) = engine.recover().await.context("recovery")?;
    let mut watch_from = Vec::new();
    for run in &resumed {
        let summary = store.summary(*run)?.context("a resumed run is on record")?;
        tracing::info!(run.id = %run, run.name = %summary.name, phase = %summary.phase, "clone resumed");
        watch_from.push((*run, summary.next_seq));
    }
    let mut not_resumable = HashMap::new();
    for (run, e) in failed {
        let name = store
            .summary(run)
            .ok()
            .flatten()
            .map(|s| s.name)
            .unwrap_or_default();
        tracing::error!(run.id = %run, run.name = %name, error = %e, "clone cannot be resumed by this daemon; it is listed with its error, every other clone is served");
        let why = match &e {
            ferry_engine::Error::Nondeterminism { reason, .. } => format!(
                "this ferry binary cannot replay it ({reason}); start the ferry version that began it, or one that knows its steps, and it resumes"
            ),
            other => other.to_string(),
        };
        not_resumable.insert(run, why);
    }
    metrics.set_not_resumable(not_resumable.len());
    let state = Arc::new(AppState::new(
        engine.clone(),
        workflow,
        tokens,
        metrics,
        config.clone(),
        stop.clone(),
    ));
    *state.not_resumable.lock().expect("not_resumable lock") = not_resumable;
    for (run, seq) in watch_from {
        state.track_run(run, seq);
    }
    let app = api::router(state.clone());

    // 4. Listeners.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let unix = server::bind_unix(&socket)?;
    let conns = TaskTracker::new();
    let mut loops = Vec::new();
    loops.push(tokio::spawn(server::serve_unix(
        unix,
        app.clone(),
        stop.clone(),
        conns.clone(),
    )));
    if let (Some(addr), Some(acceptor)) = (opts.listen, tls) {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = tcp.local_addr()?;
        tracing::info!(addr = %local, "serving the API over TLS (bearer tokens)");
        loops.push(tokio::spawn(server::serve_tls(
            tcp,
            acceptor,
            app.clone(),
            stop.clone(),
            conns.clone(),
        )));
    }
    drop(app);
    if let Some(keep) = config.retention_finished() {
        loops.push(tokio::spawn(retention(store.clone(), keep, stop.clone())));
    }
    tracing::info!(socket = %socket.display(), resumed = resumed.len(), "ferry daemon ready");

    // 5. Until a signal, or until the store can record nothing more.
    let poisoned = async {
        // The store has no poison notification; a one-second poll is cheap and soon enough.
        while !store.is_poisoned() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let mut exit = ExitCode::SUCCESS;
    let why = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = poisoned => {
            tracing::error!("the store is poisoned (a flush or fsync failed): nothing more can be recorded; check the disk and restart, clones resume from what is durable");
            exit = ExitCode::FAILURE;
            "store poisoned"
        }
    };
    tracing::info!(
        reason = why,
        "shutting down: no new connections, running steps suspend, no compensation"
    );
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
    server::remove_socket(&socket);
    conns.close();
    if tokio::time::timeout(DRAIN, conns.wait()).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN:?}; closing anyway");
    }
    engine.shutdown().await;
    drop(state);
    drop(engine);
    // The last store handle closes sled and writes the clean-shutdown marker; it blocks briefly.
    tokio::task::spawn_blocking(move || drop(store)).await.ok();
    tracing::info!("ferry daemon stopped");
    Ok(exit)
}

/// Deletes the records of clones that finished more than `keep` ago, now and every hour.
async fn retention(store: Store, keep: Duration, stop: CancellationToken) {
    loop {
        let cutoff = crate::metrics::unix_ms().saturating_sub(keep.as_millis() as u64);
        let s = store.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let mut n = 0;
            for r in s.list().unwrap_or_default() {
                if r.terminal && r.updated_ms < cutoff {
                    match s.delete_run(r.run) {
                        Ok(()) => n += 1,
                        Err(e) => tracing::warn!(run.id = %r.run, error = %e, "retention could not delete the record"),
                    }
                }
            }
            n
        })
        .await
        .unwrap_or(0);
        if swept > 0 {
            tracing::info!(
                deleted = swept,
                "retention deleted finished clones' records"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
        }
    }
}

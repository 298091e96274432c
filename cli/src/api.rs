//! The HTTP API (JSON over HTTP/1.1, under `/v1`), its authentication and
//! its OpenAPI document.
//!
//! [`router`] is the one place where endpoints are declared; [`openapi`]
//! describes exactly those, next to it, and a test checks that every
//! documented operation answers with a documented status. Submitting a
//! clone (`POST /v1/clones` with the spec and `dryRun`) plugs in at the
//! `/v1/clones` route (marked below) and in the document's `/v1/clones`
//! path item.
//!
//! Every request passes [`authenticate`]: the Unix socket is the owner (its
//! file mode is the authentication); TCP needs `Authorization: Bearer
//! TOKEN`. Errors are JSON `{"error": {status, reason, message, field?}}`:
//! 400 names the field, 401 unauthenticated, 403 forbidden, 404 unknown,
//! 409 conflicts with the clone's state; bad input never yields a 500.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_engine::{Engine, Event, RunState, StepStatus};
use ferry_store::{Envelope, RunId, RunSummary, hex};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use ferry_steps::spec::CloneSpec;
use ferry_steps::workflow::CloneWorkflow;

use crate::admission::{self, Denied, source_namespaces};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::redact::redact;
use crate::tokens::{Principal, SourceNamespace, Tokens};

/// The phases a clone can be in, as the API names them.
pub const PHASES: &[&str] = &[
    "Running",
    "Compensating",
    "Succeeded",
    "SucceededWithWarnings",
    "Refused",
    "RolledBack",
    "Failed",
];

/// How a request reached the daemon; set per connection by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The Unix socket: the owner.
    Unix,
    /// TCP with TLS: bearer tokens.
    Tcp,
}

/// What every handler shares.
pub struct AppState {
    /// The engine (and through it the store).
    pub engine: Engine,
    /// Tokens for TCP.
    pub tokens: Tokens,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Unfinished runs this daemon cannot drive, with why.
    pub not_resumable: Mutex<HashMap<RunId, String>>,
    /// Source namespaces of runs with the labels recorded at submit, read
    /// once from the head of their log (it never changes).
    sources: Mutex<HashMap<RunId, Arc<Vec<SourceNamespace>>>>,
    /// Fires at shutdown: ends `follow` streams so connections can drain.
    pub shutdown: CancellationToken,
    /// The daemon's configuration (buckets for gc).
    pub config: Arc<Config>,
    /// The clone workflow: submissions and dry runs.
    pub workflow: CloneWorkflow,
}

impl AppState {
    /// The state of a daemon serving `engine`.
    pub fn new(
        engine: Engine,
        workflow: CloneWorkflow,
        tokens: Tokens,
        metrics: Arc<Metrics>,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> Self {
        AppState {
            engine,
            tokens,
            metrics,
            not_resumable: Mutex::default(),
            sources: Mutex::default(),
            shutdown,
            config,
            workflow,
        }
    }
}

type Shared = Arc<AppState>;

/// The API's router. Endpoints are declared here and nowhere else.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/clones", get(list_clones).post(submit_clone))
        .route("/v1/gc", post(gc_chunks))
        .route("/v1/clones/{name}", get(get_clone).delete(delete_clone))
        .route("/v1/clones/{name}/events", get(clone_events))
        .route("/v1/clones/{name}/cancel", post(cancel_clone))
        .route("/v1/clones/{name}/verify", get(verify_clone))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// An API error: a status and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// 400 naming the field and the reason.
    pub fn bad_request(field: &str, reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: reason.into(),
            field: Some(field.to_owned()),
        }
    }
    /// Any status with a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }
    fn not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("no clone named {name:?}; `ferry get clones` lists them"),
        )
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e}; see the daemon's log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({
            "status": self.status.as_u16(),
            "reason": self.status.canonical_reason().unwrap_or("Error").replace(' ', ""),
            "message": self.message,
        });
        if let Some(f) = self.field {
            error["field"] = Value::String(f);
        }
        let mut resp = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
        }
        resp
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    // A request without a transport mark came from somewhere unexpected: treat it as remote.
    let transport = req
        .extensions()
        .get::<Transport>()
        .copied()
        .unwrap_or(Transport::Tcp);
    let principal = match transport {
        Transport::Unix => Principal::socket_owner(),
        Transport::Tcp => {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                });
            match token.and_then(|t| state.tokens.authenticate(t)) {
                Some(p) => p.clone(),
                None => {
                    let why = if token.is_none() {
                        "this endpoint needs `Authorization: Bearer TOKEN` (ferry --server URL --token TOKEN)"
                    } else {
                        "the bearer token is not in the daemon's tokens file"
                    };
                    state.metrics.request(401);
                    return ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
                }
            }
        }
    };
    req.extensions_mut().insert(principal);
    let resp = next.run(req).await;
    state.metrics.request(resp.status().as_u16());
    resp
}

async fn no_route(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {}; GET /v1/openapi.json lists them",
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}; GET /v1/openapi.json lists the operations",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Parses a query string into known keys; an unknown key or a repeated one is a 400 naming it.
fn query(raw: Option<String>, known: &[&str]) -> ApiResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !known.contains(&k.as_ref()) {
            let allowed = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            return Err(ApiError::bad_request(
                &k,
                format!("unknown query parameter {k:?}; allowed: {allowed}"),
            ));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::bad_request(&k, "given more than once"));
        }
    }
    Ok(out)
}

fn bool_param(q: &BTreeMap<String, String>, key: &str) -> ApiResult<bool> {
    match q.get(key).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            key,
            format!("{other:?} is not a boolean; use true or false"),
        )),
    }
}

fn name_param(
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> ApiResult<String> {
    let Path(name) = name.map_err(|e| {
        ApiError::bad_request(
            "name",
            format!("the clone name in the path is not valid: {e}"),
        )
    })?;
    if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name",
            "a clone name is 1-253 printable characters",
        ));
    }
    Ok(name)
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)
}

impl AppState {
    /// Feeds a run's events from `from_seq` on into the metrics until it ends
    /// or the daemon stops. Every run this daemon drives is tracked: resumed
    /// ones at start, and (once submit lands) each new one from seq 0.
    pub fn track_run(&self, run: RunId, from_seq: u64) {
        self.metrics
            .watch(self.engine.store(), run, from_seq, self.shutdown.clone());
    }

    fn find(&self, name: &str) -> ApiResult<RunSummary> {
        self.engine
            .store()
            .find_by_name(name)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(name))
    }

    /// The run's source namespaces (`namespaces[].source` of its spec) with
    /// the labels recorded when it was submitted, read once.
    async fn sources(self: &Arc<Self>, run: RunId) -> Arc<Vec<SourceNamespace>> {
        if let Some(s) = self.sources.lock().expect("sources lock").get(&run) {
            return s.clone();
        }
        let store = self.engine.store().clone();
        let sources = blocking(move || {
            // RunSubmitted (the spec) and Planned (the admission record) head the log.
            let head = store.read_between(run, 0, 2).unwrap_or_default();
            admission::recorded_sources(&head)
        })
        .await
        .unwrap_or_default();
        let sources = Arc::new(sources);
        self.sources
            .lock()
            .expect("sources lock")
            .insert(run, sources.clone());
        sources
    }

    /// The clone a path names, once `who` may see it: 400 for a bad name,
    /// 404 for an unknown one, 403 for one outside a member's namespaces.
    async fn authorized(
        self: &Arc<Self>,
        who: &Principal,
        name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ) -> ApiResult<(String, RunSummary)> {
        let name = name_param(name)?;
        let summary = self.find(&name)?;
        self.authorize(who, &summary).await?;
        Ok((name, summary))
    }

    /// 403 unless `who` may see and act on the run.
    async fn authorize(self: &Arc<Self>, who: &Principal, summary: &RunSummary) -> ApiResult<()> {
        if who.unrestricted() || who.may_access(&self.sources(summary.run).await) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} (member) may not access clone {:?}: its source namespaces are not all allowed to the token (by name, or by the labels recorded when the clone was submitted matching its namespace_selector)",
                who.name, summary.name
            ),
        ))
    }

    fn not_resumable(&self, run: RunId) -> Option<String> {
        self.not_resumable
            .lock()
            .expect("not_resumable lock")
            .get(&run)
            .cloned()
    }
}

async fn healthz(State(state): State<Shared>) -> Response {
    let store = state.engine.store();
    let runs = store.list().map(|l| l.len()).unwrap_or(0);
    let not_resumable = state
        .not_resumable
        .lock()
        .expect("not_resumable lock")
        .len();
    if store.is_poisoned() {
        let body = json!({"status": "poisoned", "message": "the store failed to sync; stop the daemon, check the disk and restart"});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(json!({"status": "ok", "clones": runs, "notResumable": not_resumable}))
        .into_response()
}

async fn metrics(State(state): State<Shared>) -> ApiResult {
    let mut phases: BTreeMap<String, u64> = BTreeMap::new();
    for s in state.engine.store().list().map_err(ApiError::internal)? {
        *phases.entry(s.phase).or_default() += 1;
    }
    let text = state.metrics.render(&phases);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi_json() -> Response {
    axum::Json(openapi()).into_response()
}

fn summary_json(s: &RunSummary, not_resumable: Option<String>) -> Value {
    let mut v = json!({
        "name": s.name,
        "run": s.run.to_string(),
        "shortId": s.run.short(),
        "phase": s.phase,
        "terminal": s.terminal,
        "currentStep": s.current_step,
        "events": s.next_seq,
        "createdMs": s.created_ms,
        "updatedMs": s.updated_ms,
    });
    if let Some(e) = not_resumable {
        v["error"] = Value::String(e);
    }
    v
}

async fn list_clones(
    State(state): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let q = query(raw, &["phase", "name"])?;
    let phase = match q.get("phase") {
        Some(p) => Some(
            PHASES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(p))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "phase",
                        format!("{p:?} is not a phase; use one of {}", PHASES.join(", ")),
                    )
                })?,
        ),
        None => None,
    };
    let name = q.get("name");
    let mut items = Vec::new();
    for s in state.engine.store().list().map_err(ApiError::internal)? {
        if phase.is_some_and(|p| *p != s.phase)
            || name.is_some_and(|n| !s.name.contains(n.as_str()))
        {
            continue;
        }
        if !who.unrestricted() && !who.may_access(&state.sources(s.run).await) {
            continue;
        }
        items.push(summary_json(&s, state.not_resumable(s.run)));
    }
    Ok(axum::Json(json!({ "items": items })).into_response())
}

async fn get_clone(
    State(state): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    query(raw, &[])?;
    let (_, summary) = state.authorized(&who, name).await?;
    let engine = state.engine.clone();
    let run = summary.run;
    let loaded = blocking(move || engine.load(run)).await?;
    let mut view = summary_json(&summary, None);
    let mut errors: Vec<String> = Vec::new();
    if let Some(e) = state.not_resumable(run) {
        errors.push(format!("not resumable by this daemon: {e}"));
    }
    match loaded {
        Ok(st) => describe(&mut view, &st, &mut errors),
        Err(e) => {
            errors.push(format!("the log cannot be replayed: {e}"));
            view["plan"] = json!([]);
            view["warnings"] = json!([]);
            view["refusals"] = json!([]);
        }
    }
    view["errors"] = json!(errors);
    Ok(axum::Json(view).into_response())
}

/// Fills a clone's view from its folded state.
fn describe(view: &mut Value, st: &RunState, errors: &mut Vec<String>) {
    let spec = redact(st.spec.value());
    view["workflow"] = json!(st.workflow);
    view["sourceNamespaces"] = json!(source_namespaces(&spec));
    view["spec"] = spec;
    view["admission"] = st
        .plan_order
        .first()
        .map(|id| admission::from_plan(std::slice::from_ref(&st.steps[id].decl)))
        .unwrap_or_default()
        .unwrap_or(Value::Null);
    let plan: Vec<Value> = st
        .plan_order
        .iter()
        .map(|id| {
            let s = &st.steps[id];
            let (status, attempt, retry_at, error) = match &s.status {
                StepStatus::Pending => ("Pending", None, None, None),
                StepStatus::Running { attempt } => ("Running", Some(*attempt), None, None),
                StepStatus::Waiting { retry_at_ms } => ("Waiting", None, Some(*retry_at_ms), None),
                StepStatus::Succeeded => ("Succeeded", None, None, None),
                StepStatus::Failed { error } => ("Failed", None, None, Some(error.clone())),
                StepStatus::Compensated => ("Compensated", None, None, None),
                StepStatus::CompensationFailed { error } => ("CompensationFailed", None, None, Some(error.clone())),
            };
            if let Some(e) = &error {
                errors.push(format!("step {id}: {e}"));
            }
            json!({
                "id": id.0,
                "kind": s.decl.kind,
                "version": s.decl.version,
                "critical": s.decl.critical,
                "deps": s.decl.deps.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
                "status": status,
                "attempt": attempt,
                "attempts": s.attempts,
                "maxAttempts": s.decl.max_attempts,
                "startedMs": s.first_started_ms,
                "finishedMs": s.finished_ms,
                "durationMs": s.first_started_ms.zip(s.finished_ms).map(|(a, b)| b.saturating_sub(a)),
                "retryAtMs": retry_at,
                "deadlineMs": s.deadline_ms,
                "lastError": s.last_error,
            })
        })
        .collect();
    view["plan"] = json!(plan);
    view["warnings"] = json!(st.warnings);
    view["refusals"] = json!(st.refusals);
    view["cancelRequested"] = json!(st.cancel_requested);
    view["compensationReason"] = json!(st.compensation_reason);
    view["left"] = json!(st.left);
    if !st.left.is_empty() {
        errors.push(format!(
            "left behind after a failed rollback: {}",
            st.left.join(", ")
        ));
    }
}

/// One JSON Lines record of an envelope, the same shape `export_jsonl` writes.
fn envelope_line(run: RunId, env: &Envelope) -> Bytes {
    let event = match Event::decode(&env.event) {
        Ok(e) => e.to_export_json(&redact),
        Err(e) => json!({ "undecodable": e.to_string() }),
    };
    let line = json!({
        "run": run.to_string(),
        "seq": env.seq,
        "at_ms": env.at_ms,
        "prev_hash": hex(&env.prev_hash),
        "hash": hex(&env.hash()),
        "event": event,
    });
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

async fn clone_events(
    State(state): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let q = query(raw, &["follow"])?;
    let follow = bool_param(&q, "follow")?;
    let (name, summary) = state.authorized(&who, name).await?;
    let run = summary.run;
    let content_type = [(header::CONTENT_TYPE, "application/jsonl")];
    if !follow {
        let store = state.engine.store().clone();
        let out = blocking(move || {
            let mut out = Vec::new();
            ferry_engine::export_run(&store, run, &mut out, &redact).map(|_| out)
        })
        .await?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot export the log of {name:?}: {e}"),
            )
        })?;
        return Ok((content_type, out).into_response());
    }
    // Live: everything so far, then each event once it is durable, until the
    // run ends, the daemon shuts down or the client goes away.
    let sub = state.engine.store().subscribe(run, 0);
    let stop = state.shutdown.clone();
    let stream = futures::stream::unfold((sub, stop), move |(mut sub, stop)| async move {
        let next = tokio::select! {
            _ = stop.cancelled() => return None,
            n = sub.next() => n,
        };
        match next {
            Ok(Some(env)) => Some((
                Ok::<_, std::io::Error>(envelope_line(run, &env)),
                (sub, stop),
            )),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(run.id = %run, error = %e, "event stream ended");
                None
            }
        }
    });
    Ok((content_type, Body::from_stream(stream)).into_response())
}

/// `POST /v1/clones[?dryRun=true]`: the clone spec as JSON. A dry run
/// answers the plan and every refusal and writes nothing; otherwise the
/// clone is recorded and started (201), and runs to its end in the daemon.
async fn submit_clone(
    State(state): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult {
    let q = query(raw, &["dryRun"])?;
    let dry_run = bool_param(&q, "dryRun")?;
    let mut value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("body", format!("the body is not JSON: {e}")))?;
    state.config.fill_spec_defaults(&mut value);
    let spec: CloneSpec = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::bad_request("spec", format!("not a clone spec: {e}")))?;
    let problems = spec.problems();
    if let Some(first) = problems.first() {
        let all: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {} ({})", p.field, p.problem, p.fix))
            .collect();
        return Err(ApiError::bad_request(&first.field, all.join("; ")));
    }
    let sources = source_namespaces(&value);
    // A namespace neither named by the member's token nor decidable by its
    // selector is refused before any cluster is read.
    if let Some(ns) = sources
        .iter()
        .find(|n| who.grant(&SourceNamespace::named(n.as_str())).is_none() && !who.needs_labels(n))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} (member) may not clone from namespace {ns:?}: it is not among the token's namespaces {:?}; ask an admin for access to it",
                who.name, who.namespaces
            ),
        ));
    }
    for (field, context) in [
        ("sourceContext", &spec.source_context),
        ("destinationContext", &spec.destination_context),
    ] {
        if !state.workflow.clusters().has_context(context) {
            return Err(ApiError::bad_request(
                field,
                format!(
                    "context {context:?} is not in the daemon's kubeconfig (known: {}); start the daemon with --kubeconfig or KUBECONFIG naming it",
                    state.workflow.clusters().contexts().join(", ")
                ),
            ));
        }
    }
    // The source namespaces' labels decide a member's selector now and are
    // recorded with the clone for every later decision. Nothing is written
    // on either cluster or in the store before this passes.
    let admitted = admission::admit(
        state.workflow.clusters(),
        &who,
        &spec.source_context,
        &sources,
        !dry_run,
    )
    .await
    .map_err(|d| match d {
        Denied::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m),
        Denied::Unreadable(m) => ApiError::new(StatusCode::BAD_GATEWAY, m),
    })?;
    if dry_run {
        let answer = state.workflow.dry_run(&spec).await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("cannot read the clusters: {e}"),
            )
        })?;
        let body = json!({"name": spec.name, "dryRun": true, "refused": !answer.refusals.is_empty(),
            "plan": answer.plan, "refusals": answer.refusals, "text": answer.render_text()});
        return Ok((StatusCode::OK, axum::Json(body)).into_response());
    }
    let mut submission = CloneWorkflow::submission(&spec)
        .map_err(|e| ApiError::bad_request("spec", e.to_string()))?;
    admission::record(&mut submission, &admitted).map_err(ApiError::internal)?;
    match state.engine.submit(submission).await {
        Ok(run) => {
            tracing::info!(run.id = %run, run.name = %spec.name, by = %who.name,
                namespaces = ?admitted.source_namespaces.iter().map(|n| (&n.name, n.allowed_by)).collect::<Vec<_>>(),
                "clone admitted");
            state.track_run(run, 0);
            let body = json!({"name": spec.name, "run": run.to_string(), "phase": "Running",
                "message": format!("clone {} started; `ferry describe clone {}` shows its progress", spec.name, spec.name)});
            Ok((StatusCode::CREATED, axum::Json(body)).into_response())
        }
        Err(ferry_engine::Error::Store(ferry_store::Error::NameTaken { name, .. })) => {
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "a clone named {name:?} is already on record; choose another name or `ferry delete clone {name}` once it has finished"
                ),
            ))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `POST /v1/gc[?bucket=NAME][&dryRun=true][&graceSeconds=N]`: deletes
/// chunks that no manifest references and that are older than the grace
/// period (default 24 h), unless an upload is running (owner and admin only).
async fn gc_chunks(
    State(state): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let q = query(raw, &["bucket", "dryRun", "graceSeconds"])?;
    if !who.unrestricted() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} may not collect garbage; it is for owners and admins",
                who.name
            ),
        ));
    }
    let name = q
        .get("bucket")
        .cloned()
        .or_else(|| state.config.default_bucket.clone())
        .ok_or_else(|| {
            ApiError::bad_request(
                "bucket",
                "no bucket named and no default_bucket in the config",
            )
        })?;
    let b = state.config.buckets.get(&name).ok_or_else(|| {
        let known: Vec<&String> = state.config.buckets.keys().collect();
        ApiError::bad_request(
            "bucket",
            format!("no bucket {name:?} in the config (known: {known:?})"),
        )
    })?;
    let dry_run = bool_param(&q, "dryRun")?;
    let mut opts = ferry_mover::GcOptions {
        dry_run,
        ..Default::default()
    };
    if let Some(g) = q.get("graceSeconds") {
        let secs: u64 = g.parse().map_err(|_| {
            ApiError::bad_request(
                "graceSeconds",
                format!("{g:?} is not a whole number of seconds"),
            )
        })?;
        opts.grace = std::time::Duration::from_secs(secs);
    }
    let bucket = crate::workflow::open_bucket(&name, b)
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let report = match ferry_mover::gc(&bucket, &opts).await {
        Ok(r) => r,
        Err(ferry_mover::Error::GcRunning { .. }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "another gc holds the bucket's lock; try again later",
            ));
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("gc of bucket {name}: {e}"),
            ));
        }
    };
    Ok(axum::Json(json!({
        "bucket": name, "dryRun": dry_run, "completed": report.completed,
        "runningUploads": report.running_uploads.len(), "manifests": report.manifests,
        "chunksSeen": report.chunks_seen, "chunksReferenced": report.chunks_referenced,
        "chunksSparedYoung": report.chunks_spared_young, "chunksDeleted": report.chunks_deleted,
        "bytesDeleted": report.bytes_deleted,
    }))
    .into_response())
}

async fn cancel_clone(
    State(state): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    query(raw, &[])?;
    let (name, summary) = state.authorized(&who, name).await?;
    let reason = format!("cancelled by {} through the API", who.name);
    match state.engine.cancel(summary.run, &reason).await {
        Ok(()) => {
            let body = json!({"name": name, "run": summary.run.to_string(), "cancelRequested": true,
                "message": "cancel requested: running steps stop, then everything the clone made is rolled back"});
            Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
        }
        Err(ferry_engine::Error::AlreadyFinished { phase, .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "clone {name:?} has already finished ({phase}); there is nothing to cancel (`ferry delete clone {name}` removes its record)"
            ),
        )),
        Err(ferry_engine::Error::NotActive(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "clone {name:?} is unfinished but this daemon cannot drive it ({}); run a ferry version that knows its steps, then cancel",
                state
                    .not_resumable(summary.run)
                    .unwrap_or_else(|| "it is not active".into())
            ),
        )),
        Err(ferry_engine::Error::UnknownRun(_)) => Err(ApiError::not_found(&name)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn verify_clone(
    State(state): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    query(raw, &[])?;
    let (name, summary) = state.authorized(&who, name).await?;
    let store = state.engine.store().clone();
    let run = summary.run;
    let report = blocking(move || store.verify(run))
        .await?
        .map_err(|e| match e {
            ferry_store::Error::UnknownRun(_) => ApiError::not_found(&name),
            e => ApiError::internal(e),
        })?;
    Ok(axum::Json(json!({
        "name": summary.name,
        "run": run.to_string(),
        "ok": report.ok,
        "events": report.events,
        "firstBadSeq": report.first_bad_seq,
        "problem": report.problem,
    }))
    .into_response())
}

async fn delete_clone(
    State(state): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    query(raw, &[])?;
    let (name, summary) = state.authorized(&who, name).await?;
    if !who.may_delete() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} (member) may not delete records; the audit trail is an admin's to remove",
                who.name
            ),
        ));
    }
    if !summary.terminal {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "clone {name:?} has not finished ({}); cancel it and wait until it ends, then delete",
                summary.phase
            ),
        ));
    }
    let store = state.engine.store().clone();
    let run = summary.run;
    blocking(move || store.delete_run(run))
        .await?
        .map_err(|e| match e {
            ferry_store::Error::UnknownRun(_) => ApiError::not_found(&name),
            ferry_store::Error::NotTerminal { phase, .. } => ApiError::new(
                StatusCode::CONFLICT,
                format!("clone {name:?} has not finished ({phase})"),
            ),
            e => ApiError::internal(e),
        })?;
    state.sources.lock().expect("sources lock").remove(&run);
    tracing::info!(run.id = %run, run.name = %name, by = %who.name, "clone record deleted");
    Ok(axum::Json(json!({"name": name, "run": run.to_string(), "deleted": true,
        "message": "the clone's record (events, blobs) is deleted; its destination namespaces stay"}))
    .into_response())
}

/// The OpenAPI 3.1 document of exactly the endpoints [`router`] declares.
pub fn openapi() -> Value {
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |d: &str, schema: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let name = json!({"name": "name", "in": "path", "required": true, "description": "The clone's name.", "schema": {"type": "string", "minLength": 1, "maxLength": 253}});
    let common = |mut responses: serde_json::Map<String, Value>| {
        responses.insert("400".into(), err("Bad request: the field and the reason."));
        responses.insert("401".into(), err("No or unknown bearer token (TCP only)."));
        Value::Object(responses)
    };
    let per_clone = |mut responses: serde_json::Map<String, Value>| {
        responses.insert(
            "403".into(),
            err("The token's role does not allow this clone."),
        );
        responses.insert("404".into(), err("No clone of that name."));
        common(responses)
    };
    let map = |pairs: Vec<(&str, Value)>| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<serde_json::Map<_, _>>()
    };
    // Its own value: one json! of the whole document exceeds the macro recursion limit.
    let admission_schema = json!({"type": "object", "description": "What the daemon saw and decided when it let the clone in (recorded as the preflight step's input in the plan).",
                    "required": ["by", "role", "sourceContext", "sourceNamespaces"], "properties": {
                    "by": {"type": "string", "description": "The token's name (unix-socket for the owner)."}, "role": {"type": "string", "enum": ["owner", "admin", "member"]},
                    "namespaceSelector": {"type": "string"}, "sourceContext": {"type": "string"},
                    "sourceNamespaces": {"type": "array", "items": {"type": "object", "required": ["name", "labels", "allowedBy"], "properties": {
                        "name": {"type": "string"}, "labels": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
                        "labelsUnread": {"type": "string"}, "allowedBy": {"type": "string", "enum": ["role", "name", "selector"]}}}}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "ferry", "version": env!("CARGO_PKG_VERSION"),
                 "description": "The ferry daemon's API: clones of Kubernetes applications as durable, event-sourced workflows."},
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness and store health.",
                "responses": map(vec![("200", ok("Healthy.", "Health")), ("401", err("No or unknown bearer token (TCP only).")), ("503", ok("The store is poisoned.", "Health"))])}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics (text exposition format 0.0.4).",
                "responses": map(vec![("200", json!({"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}})), ("401", err("No or unknown bearer token (TCP only)."))])}},
            "/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "This document.",
                "responses": map(vec![("200", json!({"description": "The OpenAPI document.", "content": {"application/json": {"schema": {"type": "object"}}}})), ("401", err("No or unknown bearer token (TCP only)."))])}},
            "/v1/gc": {"post": {"operationId": "gc", "summary": "Deletes bucket chunks no manifest references, older than the grace period, unless an upload runs. Owner and admin only.",
                "parameters": [
                    {"name": "bucket", "in": "query", "required": false, "description": "A configured bucket (default: default_bucket).", "schema": {"type": "string"}},
                    {"name": "dryRun", "in": "query", "required": false, "description": "Count only; delete nothing.", "schema": {"type": "boolean"}},
                    {"name": "graceSeconds", "in": "query", "required": false, "description": "Spare chunks younger than this (default 86400).", "schema": {"type": "integer"}}
                ],
                "responses": common(map(vec![("200", ok("The report.", "GcReport")), ("403", err("Not an owner or admin.")), ("409", err("Another gc is running.")), ("502", err("The bucket could not be read or written."))]))}},
            "/v1/clones": {"post": {"operationId": "submitClone", "summary": "Submits a clone (the spec as JSON); with dryRun=true answers the plan, warnings and refusals and writes nothing.",
                "parameters": [{"name": "dryRun", "in": "query", "required": false, "description": "Answer the plan; write nothing.", "schema": {"type": "boolean"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CloneSpec"}}}},
                "responses": common(map(vec![("200", ok("The dry run: plan, warnings, refusals.", "DryRun")), ("201", ok("Recorded and started.", "Submitted")),
                    ("403", err("The token may not clone from a source namespace (not named by the token, and its labels on the source cluster do not match the token's namespace_selector).")), ("409", err("A clone of that name is on record.")), ("502", err("The clusters could not be read (dry run), or a source namespace's labels a member's selector needs."))]))},
                "get": {"operationId": "listClones", "summary": "Clones on record, oldest first; a member sees only clones from its namespaces.",
                "parameters": [
                    {"name": "phase", "in": "query", "required": false, "description": "Only clones in this phase.", "schema": {"type": "string", "enum": PHASES}},
                    {"name": "name", "in": "query", "required": false, "description": "Only clones whose name contains this.", "schema": {"type": "string"}}
                ],
                "responses": common(map(vec![("200", ok("The clones.", "CloneList"))]))}},
            "/v1/clones/{name}": {
                "get": {"operationId": "getClone", "summary": "One clone: phase, plan with per-step status, attempts and timings, warnings, errors, refusals.",
                    "parameters": [name.clone()], "responses": per_clone(map(vec![("200", ok("The clone.", "Clone"))]))},
                "delete": {"operationId": "deleteClone", "summary": "Deletes a finished clone's record (events, blobs); its destination namespaces stay. Owner and admin only.",
                    "parameters": [name.clone()], "responses": per_clone(map(vec![("200", ok("Deleted.", "Deleted")), ("409", err("The clone has not finished."))]))}
            },
            "/v1/clones/{name}/events": {"get": {"operationId": "cloneEvents", "summary": "The clone's audit log as JSON Lines, Secret data redacted.",
                "parameters": [name.clone(), {"name": "follow", "in": "query", "required": false, "description": "Stream new events until the clone ends.", "schema": {"type": "boolean"}}],
                "responses": per_clone(map(vec![("200", json!({"description": "One envelope a line.", "content": {"application/jsonl": {"schema": {"$ref": "#/components/schemas/EventLine"}}}}))]))}},
            "/v1/clones/{name}/cancel": {"post": {"operationId": "cancelClone", "summary": "Cancels a running clone: it stops and rolls back.",
                "parameters": [name.clone()], "responses": per_clone(map(vec![("202", ok("Cancel requested.", "Cancelled")), ("409", err("The clone has finished, or this daemon cannot drive it."))]))}},
            "/v1/clones/{name}/verify": {"get": {"operationId": "verifyClone", "summary": "Checks the clone's hash chain and head MAC.",
                "parameters": [name], "responses": per_clone(map(vec![("200", ok("The verdict.", "Verify"))]))}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "TCP only; the Unix socket is the owner."}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["status", "reason", "message"], "properties": {
                    "status": {"type": "integer"}, "reason": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
                "CloneSpec": {"type": "object", "required": ["name", "sourceContext", "destinationContext", "namespaces"], "properties": {
                    "name": {"type": "string"}, "sourceContext": {"type": "string"}, "destinationContext": {"type": "string"},
                    "namespaces": {"type": "array", "items": {"type": "object", "required": ["source"], "properties": {"source": {"type": "string"}, "destination": {"type": "string"}}}},
                    "storageClasses": {"type": "array", "items": {"type": "object"}}, "include": {"type": "array", "items": {"type": "object"}},
                    "exclude": {"type": "array", "items": {"type": "object"}}, "bucket": {"type": "string"}, "allowLiveCopy": {"type": "boolean"},
                    "suspendCronjobs": {"type": "boolean"}, "rewriteServiceDns": {"type": "boolean"}, "hooks": {"type": "array", "items": {"type": "object"}},
                    "transforms": {"type": "array", "items": {"type": "object"}}, "healthDeadlineSeconds": {"type": "integer"}}},
                "DryRun": {"type": "object", "properties": {"name": {"type": "string"}, "dryRun": {"type": "boolean"}, "refused": {"type": "boolean"},
                    "plan": {"type": "object"}, "refusals": {"type": "array", "items": {"type": "object"}}, "text": {"type": "string"}}},
                "GcReport": {"type": "object", "properties": {"bucket": {"type": "string"}, "dryRun": {"type": "boolean"}, "completed": {"type": "boolean"},
                    "runningUploads": {"type": "integer"}, "manifests": {"type": "integer"}, "chunksSeen": {"type": "integer"}, "chunksReferenced": {"type": "integer"},
                    "chunksSparedYoung": {"type": "integer"}, "chunksDeleted": {"type": "integer"}, "bytesDeleted": {"type": "integer"}}},
                "Submitted": {"type": "object", "properties": {"name": {"type": "string"}, "run": {"type": "string"}, "phase": {"type": "string"}, "message": {"type": "string"}}},
                "Health": {"type": "object", "properties": {"status": {"type": "string"}, "clones": {"type": "integer"}, "notResumable": {"type": "integer"}, "message": {"type": "string"}}},
                "CloneSummary": {"type": "object", "required": ["name", "run", "phase", "terminal", "events"], "properties": {
                    "name": {"type": "string"}, "run": {"type": "string", "format": "uuid"}, "shortId": {"type": "string"},
                    "phase": {"type": "string", "enum": PHASES}, "terminal": {"type": "boolean"}, "currentStep": {"type": ["string", "null"]},
                    "events": {"type": "integer"}, "createdMs": {"type": "integer"}, "updatedMs": {"type": "integer"},
                    "error": {"type": "string", "description": "Why this daemon cannot drive the unfinished clone."}}},
                "CloneList": {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/CloneSummary"}}}},
                "Step": {"type": "object", "properties": {
                    "id": {"type": "string"}, "kind": {"type": "string"}, "version": {"type": "integer"}, "critical": {"type": "boolean"},
                    "deps": {"type": "array", "items": {"type": "string"}},
                    "status": {"type": "string", "enum": ["Pending", "Running", "Waiting", "Succeeded", "Failed", "Compensated", "CompensationFailed"]},
                    "attempt": {"type": ["integer", "null"]}, "attempts": {"type": "integer"}, "maxAttempts": {"type": "integer"},
                    "startedMs": {"type": ["integer", "null"]}, "finishedMs": {"type": ["integer", "null"]}, "durationMs": {"type": ["integer", "null"]},
                    "retryAtMs": {"type": ["integer", "null"]}, "deadlineMs": {"type": ["integer", "null"]}, "lastError": {"type": ["string", "null"]}}},
                "Clone": {"allOf": [{"$ref": "#/components/schemas/CloneSummary"}, {"type": "object", "properties": {
                    "workflow": {"type": "string"}, "spec": {"description": "The spec, Secret data redacted."},
                    "sourceNamespaces": {"type": "array", "items": {"type": "string"}},
                    "admission": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Admission"}]},
                    "plan": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
                    "warnings": {"type": "array", "items": {"type": "string"}}, "errors": {"type": "array", "items": {"type": "string"}},
                    "refusals": {"type": "array", "items": {"type": "object", "properties": {"object": {"type": "string"}, "rule": {"type": "string"}, "fix": {"type": "string"}}}},
                    "cancelRequested": {"type": ["string", "null"]}, "compensationReason": {"type": ["string", "null"]},
                    "left": {"type": "array", "items": {"type": "string"}}}}]},
                "EventLine": {"type": "object", "properties": {"run": {"type": "string"}, "seq": {"type": "integer"}, "at_ms": {"type": "integer"},
                    "prev_hash": {"type": "string"}, "hash": {"type": "string"}, "event": {"type": "object"}}},
                "Cancelled": {"type": "object", "properties": {"name": {"type": "string"}, "run": {"type": "string"}, "cancelRequested": {"type": "boolean"}, "message": {"type": "string"}}},
                "Verify": {"type": "object", "required": ["ok"], "properties": {"name": {"type": "string"}, "run": {"type": "string"}, "ok": {"type": "boolean"},
                    "events": {"type": "integer"}, "firstBadSeq": {"type": ["integer", "null"]}, "problem": {"type": ["string", "null"]}}},
                "Admission": admission_schema,
                "Deleted": {"type": "object", "properties": {"name": {"type": "string"}, "run": {"type": "string"}, "deleted": {"type": "boolean"}, "message": {"type": "string"}}}
            }
        }
    })
}

//! The HTTP front: authentication, routing, content negotiation, verbs, and
//! the `/sim/v1/` test endpoints.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::discovery;
use crate::faults::{FaultConfig, Faults};
use crate::objects::{DeleteOpts, Deleted, Part, State, WriteOpts, returns_deleted_object};
use crate::patch::{self, PatchError};
use crate::protobuf;
use crate::resources::ResourceInfo;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError};
use crate::util::{Query, get_path, meta_str, set_path};
use crate::watch::{self, View, WatchParams};

/// Path prefix that carries the token for clients that cannot send it as a header.
pub const TOKEN_PREFIX: &str = "/t/";

/// Largest request body accepted.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Everything a request handler needs. Shared behind an `Arc`.
#[derive(Debug)]
pub struct Server {
    /// Objects, registry, lifecycle rules.
    pub state: Arc<State>,
    /// The bearer token every request must carry.
    pub token: String,
    /// Fault injection.
    pub faults: Faults,
    /// Kubernetes minor version reported by `/version`.
    pub minor: u32,
    /// Ends watches at shutdown.
    pub cancel: CancellationToken,
    /// Bookmark period of watches with `allowWatchBookmarks`.
    pub bookmark_interval: Duration,
    /// API requests served (after authentication).
    pub requests: AtomicU64,
    /// Distinct client programs seen (`User-Agent` up to the first space).
    pub user_agents: Mutex<BTreeSet<String>>,
    /// The exec sessions started, in order.
    pub execs: crate::exec::ExecLog,
}

fn json_response(code: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    raw_response(code, "application/json", Bytes::from(bytes))
}

fn raw_response(code: u16, content_type: &str, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn error_response(e: &ApiError) -> Response {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(s) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
    }
    r
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// What a resource URL names.
#[derive(Debug, Clone)]
struct Target {
    info: ResourceInfo,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    OpenApiV2,
    OpenApiV3Index,
    OpenApiV3(String),
    Resource(Box<Target>),
}

fn route(state: &State, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok(Route::Api),
        ["apis"] => return Ok(Route::Apis),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["openapi", "v2"] | ["swagger-2.0.0.pb-v1"] => return Ok(Route::OpenApiV2),
        ["openapi", "v3"] => return Ok(Route::OpenApiV3Index),
        ["openapi", "v3", rest @ ..] => return Ok(Route::OpenApiV3(rest.join("/"))),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        return Ok(Route::GroupVersion(group.to_string(), version.to_string()));
    }
    if rest.iter().any(|s| s.is_empty()) {
        return Err(ApiError::no_route());
    }
    let namespaced_path = rest[0] == "namespaces"
        && rest.len() >= 3
        && !(rest.len() == 3 && (rest[2] == "status" || rest[2] == "finalize"));
    let (ns, plural, name, sub) = if namespaced_path {
        if rest.len() > 5 {
            return Err(ApiError::no_route());
        }
        (Some(rest[1]), rest[2], rest.get(3), rest.get(4))
    } else {
        if rest.len() > 3 {
            return Err(ApiError::no_route());
        }
        (None, rest[0], rest.get(1), rest.get(2))
    };
    let info = state
        .registry
        .lookup(group, version, plural)
        .ok_or_else(ApiError::no_route)?;
    if ns.is_some() && !info.namespaced {
        return Err(ApiError::no_route());
    }
    if info.namespaced && ns.is_none() && name.is_some() {
        return Err(ApiError::no_route());
    }
    Ok(Route::Resource(Box::new(Target {
        info,
        namespace: ns.map(str::to_string),
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    })))
}

/// The axum fallback handler: every request comes through here.
pub async fn handle(server: Arc<Server>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // kubectl (client-go) never sends credentials over plain HTTP
    // (kubernetes/kubectl#744), so the kubeconfig's server URL carries the
    // token as a path prefix `/t/<token>`; kube sends the bearer header too.
    let (path, path_token) = match parts.uri.path().strip_prefix(TOKEN_PREFIX) {
        Some(rest) => match rest.split_once('/') {
            Some((tok, p)) => (format!("/{p}"), Some(tok.to_string())),
            None => ("/".to_string(), Some(rest.to_string())),
        },
        None => (parts.uri.path().to_string(), None),
    };
    let query = Query::parse(parts.uri.query());
    let headers = parts.headers.clone();
    let method = parts.method.clone();

    match path.as_str() {
        "/version" | "/version/" => return json_response(200, &discovery::version(server.minor)),
        "/healthz" | "/livez" | "/readyz" => {
            return raw_response(200, "text/plain", Bytes::from_static(b"ok"));
        }
        _ => {}
    }
    let auth = header_str(&headers, header::AUTHORIZATION);
    let authorized = auth
        .strip_prefix("Bearer ")
        .is_some_and(|t| t.trim() == server.token)
        || path_token.as_deref() == Some(server.token.as_str());
    if !authorized {
        return error_response(&ApiError::unauthorized());
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let mut e = ApiError::bad_request("the request body is too large or could not be read");
            e.code = 413;
            e.reason = "RequestEntityTooLarge".into();
            return error_response(&e);
        }
    };
    if let Some((ns, pod)) = exec_target(&path) {
        server.requests.fetch_add(1, Ordering::Relaxed);
        if method != Method::GET && method != Method::POST {
            return error_response(&ApiError::method_not_allowed(method.as_str(), "pods/exec"));
        }
        return match crate::exec::handle(server.clone(), parts, &ns, &pod).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
    }
    if let Some(rest) = path.strip_prefix("/sim/v1") {
        return sim_endpoint(&server, &method, rest, &body);
    }
    server.requests.fetch_add(1, Ordering::Relaxed);
    let agent = header_str(&headers, header::USER_AGENT)
        .split(' ')
        .next()
        .unwrap_or("")
        .to_string();
    {
        let mut agents = server.user_agents.lock().unwrap_or_else(|p| p.into_inner());
        if agents.len() < 64 && !agents.contains(&agent) {
            agents.insert(agent);
        }
    }
    if let Some(d) = server.faults.latency() {
        tokio::time::sleep(d).await;
    }
    let req = Req {
        method,
        query,
        headers,
        body,
    };
    match dispatch(&server, &path, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// `/api/v1/namespaces/{ns}/pods/{name}/exec` → (ns, name).
fn exec_target(path: &str) -> Option<(String, String)> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, "exec"] => {
            Some((ns.to_string(), name.to_string()))
        }
        _ => None,
    }
}

struct Req {
    method: Method,
    query: Query,
    headers: HeaderMap,
    body: Bytes,
}

async fn dispatch(server: &Arc<Server>, path: &str, req: Req) -> Result<Response, ApiError> {
    let state = &server.state;
    let accept = header_str(&req.headers, header::ACCEPT).to_string();
    let get_only = |r: Result<Response, ApiError>| {
        if req.method == Method::GET {
            r
        } else {
            Err(ApiError::method_not_allowed(req.method.as_str(), path))
        }
    };
    let target = match route(state, path)? {
        Route::Api => {
            return get_only(Ok(if discovery::wants_aggregated(&accept) {
                aggregated_response(&discovery::aggregated(&state.registry, true))
            } else {
                json_response(200, &discovery::api_versions())
            }));
        }
        Route::Apis => {
            return get_only(Ok(if discovery::wants_aggregated(&accept) {
                aggregated_response(&discovery::aggregated(&state.registry, false))
            } else {
                json_response(200, &discovery::api_groups(&state.registry))
            }));
        }
        Route::Group(g) => {
            let doc = discovery::api_group(&state.registry, &g).ok_or_else(ApiError::no_route)?;
            return get_only(Ok(json_response(200, &doc)));
        }
        Route::GroupVersion(g, v) => {
            if g.is_empty() && v != "v1" {
                return Err(ApiError::no_route());
            }
            let doc =
                discovery::resource_list(&state.registry, &g, &v).ok_or_else(ApiError::no_route)?;
            return get_only(Ok(json_response(200, &doc)));
        }
        Route::OpenApiV2 => {
            return get_only(Ok(raw_response(
                200,
                discovery::OPENAPI_V2_CONTENT_TYPE,
                Bytes::new(),
            )));
        }
        Route::OpenApiV3Index => {
            return get_only(Ok(json_response(
                200,
                &discovery::openapi_v3_index(&state.registry),
            )));
        }
        Route::OpenApiV3(p) => {
            let doc = discovery::openapi_v3_doc(&state.registry, server.minor, &p)
                .ok_or_else(ApiError::no_route)?;
            return get_only(Ok(json_response(200, &doc)));
        }
        Route::Resource(t) => *t,
    };
    let verb = verb_of(&req.method, &target, &req.query)?;
    if let Some(inj) = server.faults.decide(verb, &target.info.plural) {
        let writes = matches!(
            verb,
            "create" | "update" | "patch" | "delete" | "deletecollection"
        );
        if !(inj.commit && writes) {
            return Err(inj.error);
        }
        // Commit the write, then answer with the error anyway.
        let _ = run_verb(server, verb, &target, &req, &accept).await;
        return Err(inj.error);
    }
    run_verb(server, verb, &target, &req, &accept).await
}

fn aggregated_response(doc: &Value) -> Response {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    raw_response(200, discovery::AGGREGATED_CONTENT_TYPE, Bytes::from(bytes))
}

fn verb_of(method: &Method, t: &Target, q: &Query) -> Result<&'static str, ApiError> {
    let plural = &t.info.plural;
    let verb = match (method.as_str(), &t.name) {
        ("GET", None) if q.flag("watch") => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) if q.flag("watch") => "watch",
        ("GET", Some(_)) => "get",
        ("POST", None) => "create",
        ("PUT", Some(_)) => "update",
        ("PATCH", Some(_)) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) if plural != "namespaces" => "deletecollection",
        ("DELETE", None) => return Err(ApiError::method_not_allowed("deletecollection", plural)),
        ("POST", Some(_)) => return Err(ApiError::method_not_allowed("create", plural)),
        ("PUT", None) => return Err(ApiError::method_not_allowed("update", plural)),
        ("PATCH", None) => return Err(ApiError::method_not_allowed("patch", plural)),
        (m, _) => return Err(ApiError::method_not_allowed(m, plural)),
    };
    if let Some(sub) = &t.sub {
        let info = &t.info;
        let (exists, verbs): (bool, &[&str]) = match sub.as_str() {
            "status" => (info.status, &["get", "update", "patch"]),
            "scale" => (info.scale.is_some(), &["get", "update", "patch"]),
            "finalize" => (
                info.plural == "namespaces" && info.group.is_empty(),
                &["update"],
            ),
            _ => (false, &[]),
        };
        if !exists {
            return Err(ApiError::no_route());
        }
        if !verbs.contains(&verb) {
            return Err(ApiError::method_not_allowed(
                verb,
                &format!("{plural}/{sub}"),
            ));
        }
    }
    Ok(verb)
}

fn view_of(t: &Target, q: &Query, accept: &str) -> Result<View, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?;
    let mut fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), &t.info.kind)?;
    if let Some(name) = &t.name {
        // A watch on one object is a field-selected watch.
        fields = FieldSelector::parse(&format!("metadata.name={name}"), &t.info.kind)?;
    }
    Ok(View {
        info: t.info.clone(),
        namespace: t.namespace.clone(),
        labels,
        fields,
        metadata_only: accept.contains("as=PartialObjectMetadata"),
    })
}

fn write_opts(q: &Query, headers: &HeaderMap) -> Result<WriteOpts, ApiError> {
    let dry_run = match q.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other}; supported values: All"
            )));
        }
    };
    let manager = match q.get("fieldManager") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => header_str(headers, header::USER_AGENT)
            .split('/')
            .next()
            .unwrap_or("")
            .to_string(),
    };
    if manager.len() > 128 {
        return Err(ApiError::invalid_kind(
            "PatchOptions.meta.k8s.io",
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![crate::status::Cause {
                reason: "FieldValueTooLong",
                field: "fieldManager".into(),
                message: "Too long: must have at most 128 bytes".into(),
            }],
        ));
    }
    match q.get("fieldValidation") {
        None | Some("" | "Strict" | "Warn" | "Ignore") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}"
            )));
        }
    }
    Ok(WriteOpts {
        manager,
        dry_run,
        apply: false,
    })
}

fn media_type(headers: &HeaderMap) -> String {
    header_str(headers, header::CONTENT_TYPE)
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decode a JSON or YAML document into a JSON value (400 on syntax errors).
fn parse_doc(body: &[u8], yaml: bool) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let r = if yaml {
        serde_yaml::from_slice::<Value>(body)
            .map_err(|e| format!("error converting YAML to JSON: {e}"))
    } else {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| format!("couldn't get version/kind; json parse error: {e}"))
    };
    r.map_err(ApiError::bad_request)
}

/// Decode a create/update body by its content type.
fn decode_object(headers: &HeaderMap, body: &[u8], info: &ResourceInfo) -> Result<Value, ApiError> {
    let mt = media_type(headers);
    let v = match mt.as_str() {
        "" | "application/json" | "*/*" => parse_doc(body, false)?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_doc(body, true)?,
        "application/vnd.kubernetes.protobuf" => protobuf::decode(body, info)?,
        _ => {
            return Err(ApiError::unsupported_media(&[
                "application/json",
                "application/yaml",
                "application/vnd.kubernetes.protobuf",
            ]));
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    Ok(v)
}

async fn run_verb(
    server: &Arc<Server>,
    verb: &str,
    t: &Target,
    req: &Req,
    accept: &str,
) -> Result<Response, ApiError> {
    let state = &server.state;
    let info = &t.info;
    let ns = t.namespace.as_deref();
    let name = t.name.as_deref().unwrap_or("");
    let q = &req.query;
    match verb {
        "get" => {
            let view = view_of(t, q, accept)?;
            let obj = state
                .store
                .transact(|txn| txn.get(&info.group_resource(), ns.unwrap_or(""), name))
                .ok_or_else(|| ApiError::not_found(info, name))?;
            if t.sub.as_deref() == Some("scale") {
                return Ok(json_response(200, &scale_of(info, &obj)));
            }
            Ok(json_response(200, &view.present(&obj)))
        }
        "list" => list(state, t, q, accept),
        "watch" => {
            let view = view_of(t, q, accept)?;
            let since = match q.get("resourceVersion") {
                None | Some("") => None,
                Some(s) => Some(s.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {s}"))
                })?),
            };
            let timeout = match q.get("timeoutSeconds") {
                None | Some("") => None,
                Some(s) => Some(Duration::from_secs(s.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid timeoutSeconds: {s}"))
                })?)),
            };
            let params = WatchParams {
                since,
                send_initial: q.flag("sendInitialEvents"),
                bookmarks: q.flag("allowWatchBookmarks"),
                timeout,
                bookmark_interval: server.bookmark_interval,
                drop_after: server.faults.drop_watch_after(),
            };
            let lines = watch::start(&state.store, view, params, server.cancel.clone());
            let mut r = Response::new(Body::from_stream(lines));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        "create" => {
            let obj = decode_object(&req.headers, &req.body, info)?;
            let opts = write_opts(q, &req.headers)?;
            let created = state
                .store
                .transact(|txn| state.create(txn, info, ns, obj, &opts))?;
            Ok(json_response(201, &created))
        }
        "update" => {
            let obj = decode_object(&req.headers, &req.body, info)?;
            let opts = write_opts(q, &req.headers)?;
            match t.sub.as_deref() {
                Some("scale") => scale_write(state, t, &opts, |_| Ok(obj.clone())),
                sub => {
                    let part = match sub {
                        Some("status") => Part::Status,
                        Some("finalize") => Part::Finalize,
                        _ => Part::Main,
                    };
                    let updated = state.store.transact(|txn| {
                        state.update(txn, info, ns, name, obj, part, &opts, None)
                    })?;
                    Ok(json_response(200, &updated))
                }
            }
        }
        "patch" => patch_verb(state, t, req),
        "delete" => {
            let opts = delete_opts(q, &req.body)?;
            let r = state
                .store
                .transact(|txn| state.delete(txn, info, ns, name, &opts))?;
            Ok(match r {
                Deleted::Gone(o) if !returns_deleted_object(info) => json_response(
                    200,
                    &status::delete_success(info, name, meta_str(&o, "uid")),
                ),
                Deleted::Gone(o) | Deleted::Pending(o) => json_response(200, &o),
            })
        }
        "deletecollection" => {
            let opts = delete_opts(q, &req.body)?;
            let view = view_of(t, q, accept)?;
            let items = state.store.transact(|txn| {
                let mut out = Vec::new();
                for o in txn.list(&info.group_resource(), ns) {
                    if !view.matches(&o) {
                        continue;
                    }
                    let n = meta_str(&o, "name").to_string();
                    let ons = meta_str(&o, "namespace").to_string();
                    let ons = (!ons.is_empty()).then_some(ons);
                    if let Ok(Deleted::Gone(d) | Deleted::Pending(d)) =
                        state.delete(txn, info, ons.as_deref(), &n, &opts)
                    {
                        out.push(d);
                    }
                }
                (out, txn.rv())
            });
            let (items, rv) = items;
            Ok(list_response(&view, &items, rv))
        }
        _ => Err(ApiError::method_not_allowed(verb, &info.plural)),
    }
}

fn list(state: &State, t: &Target, q: &Query, accept: &str) -> Result<Response, ApiError> {
    let view = view_of(t, q, accept)?;
    let limit = match q.get("limit") {
        None | Some("") | Some("0") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
        ),
    };
    let cont = match q.get("continue") {
        None | Some("") => None,
        Some(token) => Some(decode_continue(token)?),
    };
    let (items, rv) = state.store.transact(|txn| {
        let gr = t.info.group_resource();
        // A pinned name avoids scanning the whole resource.
        let items = match (view.fields.pinned_name(), t.namespace.as_deref()) {
            (Some(n), Some(ns)) => txn.get(&gr, ns, n).into_iter().collect(),
            (Some(n), None) if !t.info.namespaced => txn.get(&gr, "", n).into_iter().collect(),
            _ => txn.list(&gr, t.namespace.as_deref()),
        };
        (items, txn.rv())
    });
    // Items come ordered by (namespace, name); a continue token resumes after its key.
    let (rv, after) = match cont {
        Some((rv, key)) => (rv, Some(key)),
        None => (rv, None),
    };
    let mut items: Vec<_> = items
        .into_iter()
        .filter(|o| {
            after.as_ref().is_none_or(|(ns, n)| {
                (meta_str(o, "namespace"), meta_str(o, "name")) > (ns.as_str(), n.as_str())
            })
        })
        .filter(|o| view.matches(o))
        .collect();
    let mut page = None;
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        let remaining = items.len() - limit;
        items.truncate(limit);
        let last = items.last().map(|o| {
            (
                meta_str(o, "namespace").to_string(),
                meta_str(o, "name").to_string(),
            )
        });
        if let Some((ns, n)) = last {
            page = Some((encode_continue(rv, &ns, &n), remaining));
        }
    }
    Ok(list_response_paged(&view, &items, rv, page))
}

/// A continue token: the list's resourceVersion and the last key served.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    use base64::Engine;
    let doc = json!({"rv": rv, "ns": ns, "name": name});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(doc.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let ns = v.get("ns").and_then(Value::as_str).ok_or_else(bad)?;
    let name = v.get("name").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

fn list_response(view: &View, items: &[Arc<Value>], rv: u64) -> Response {
    list_response_paged(view, items, rv, None)
}

fn list_response_paged(
    view: &View,
    items: &[Arc<Value>],
    rv: u64,
    page: Option<(String, usize)>,
) -> Response {
    let (kind, av) = if view.metadata_only {
        (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        )
    } else {
        (view.info.list_kind.clone(), view.info.api_version())
    };
    // Serialize items in place rather than cloning them into one Value.
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some((token, remaining)) = page {
        meta["continue"] = json!(token);
        meta["remainingItemCount"] = json!(remaining);
    }
    let mut s = format!(
        "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{meta},\"items\":[",
        json!(kind),
        json!(av)
    );
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&serde_json::to_string(&*view.present(o)).unwrap_or_else(|_| "{}".into()));
    }
    s.push_str("]}");
    raw_response(200, "application/json", Bytes::from(s))
}

fn delete_opts(q: &Query, body: &[u8]) -> Result<DeleteOpts, ApiError> {
    let mut opts = DeleteOpts::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        if !v.is_object() {
            return Err(ApiError::bad_request(
                "invalid DeleteOptions: not an object",
            ));
        }
        opts.propagation = v
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(d) = v.get("dryRun").and_then(Value::as_array) {
            for x in d {
                match x.as_str() {
                    Some("All") => opts.dry_run = true,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "Invalid dry run value: {}; supported values: All",
                            other.unwrap_or("")
                        )));
                    }
                }
            }
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            opts.propagation = Some("Orphan".into());
        }
    }
    if let Some(p) = q.get("propagationPolicy").filter(|p| !p.is_empty()) {
        opts.propagation = Some(p.to_string());
    }
    if let Some(p) = &opts.propagation
        && !matches!(p.as_str(), "Background" | "Foreground" | "Orphan")
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    match q.get("dryRun") {
        None | Some("") => {}
        Some("All") => opts.dry_run = true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other}; supported values: All"
            )));
        }
    }
    Ok(opts)
}

/// The autoscaling/v1 Scale view of an object with a scale subresource.
fn scale_of(info: &ResourceInfo, obj: &Value) -> Value {
    let Some(paths) = &info.scale else {
        return json!({});
    };
    let spec = get_path(obj, &paths.spec_replicas)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let status = get_path(obj, &paths.status_replicas)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = match &paths.label_selector {
        Some(p) => get_path(obj, p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        None => obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
    };
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut m = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(f) {
            m[f] = v.clone();
        }
    }
    let mut status_doc = json!({"replicas": status});
    if !selector.is_empty() {
        status_doc["selector"] = json!(selector);
    }
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": m,
        "spec": {"replicas": spec}, "status": status_doc})
}

/// Write through `/scale`: `f` turns the current Scale into the new one.
fn scale_write(
    state: &State,
    t: &Target,
    opts: &WriteOpts,
    f: impl FnOnce(&Value) -> Result<Value, ApiError>,
) -> Result<Response, ApiError> {
    let info = &t.info;
    let ns = t.namespace.as_deref();
    let name = t.name.as_deref().unwrap_or("");
    let paths = info.scale.clone().ok_or_else(ApiError::no_route)?;
    let updated = state.store.transact(|txn| {
        let cur = txn
            .get(&info.group_resource(), ns.unwrap_or(""), name)
            .ok_or_else(|| ApiError::not_found(info, name))?;
        let scale = scale_of(info, &cur);
        let new_scale = f(&scale)?;
        let rv = meta_str(&new_scale, "resourceVersion");
        if !rv.is_empty() && rv != meta_str(&cur, "resourceVersion") {
            return Err(ApiError::conflict(info, name));
        }
        let replicas = new_scale
            .pointer("/spec/replicas")
            .cloned()
            .unwrap_or(json!(0));
        let n = replicas
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("Scale.spec.replicas must be an integer"))?;
        if n < 0 {
            return Err(ApiError::invalid_kind(
                "Scale.autoscaling",
                "Scale",
                "autoscaling",
                name,
                vec![crate::status::Cause {
                    reason: "FieldValueInvalid",
                    field: "spec.replicas".into(),
                    message: format!("Invalid value: {n}: must be greater than or equal to 0"),
                }],
            ));
        }
        let mut obj = (*cur).clone();
        set_path(&mut obj, &paths.spec_replicas, json!(n));
        state.update(txn, info, ns, name, obj, Part::Main, opts, None)
    })?;
    Ok(json_response(200, &scale_of(info, &updated)))
}

fn patch_error(e: PatchError) -> ApiError {
    match e {
        PatchError::Malformed(m) => ApiError::bad_request(m),
        PatchError::DoesNotApply(m) => ApiError::unprocessable(m),
    }
}

fn patch_verb(state: &State, t: &Target, req: &Req) -> Result<Response, ApiError> {
    let info = &t.info;
    let ns = t.namespace.as_deref();
    let name = t.name.as_deref().unwrap_or("");
    let q = &req.query;
    let mut opts = write_opts(q, &req.headers)?;
    let mt = media_type(&req.headers);
    let apply = mt == "application/apply-patch+yaml";
    let accepted: &[&str] = if info.custom {
        &[
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ]
    } else {
        &[
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ]
    };
    if !accepted.contains(&mt.as_str()) {
        return Err(ApiError::unsupported_media(accepted));
    }
    let patch_options_invalid = |field: &str, msg: &str, reason: &'static str| {
        ApiError::invalid_kind(
            "PatchOptions.meta.k8s.io",
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![crate::status::Cause {
                reason,
                field: field.into(),
                message: msg.into(),
            }],
        )
    };
    if apply {
        if q.get("fieldManager").is_none_or(str::is_empty) {
            return Err(patch_options_invalid(
                "fieldManager",
                "Required value: is required for apply patch",
                "FieldValueRequired",
            ));
        }
        opts.apply = true;
    } else if q.get("force").is_some_and(|f| !f.is_empty()) {
        return Err(patch_options_invalid(
            "force",
            "Forbidden: may not be specified for non-apply patch",
            "FieldValueForbidden",
        ));
    }
    let doc = parse_doc(&req.body, apply)?;
    let part = match t.sub.as_deref() {
        Some("status") => Part::Status,
        _ => Part::Main,
    };
    let apply_patch = |cur: &Value| -> Result<Value, ApiError> {
        let mut v = cur.clone();
        match mt.as_str() {
            "application/merge-patch+json" => {
                if !doc.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut v, &doc)
            }
            "application/json-patch+json" => {
                patch::json_patch(&mut v, &doc).map_err(patch_error)?
            }
            "application/strategic-merge-patch+json" => {
                if !doc.is_object() {
                    return Err(ApiError::bad_request(
                        "strategic merge patch must be a JSON object",
                    ));
                }
                patch::strategic_merge(&mut v, &doc).map_err(patch_error)?
            }
            _ => {
                if !doc.is_object() {
                    return Err(ApiError::bad_request("apply patch must be an object"));
                }
                patch::apply_merge(&mut v, &doc).map_err(patch_error)?
            }
        }
        Ok(v)
    };
    if t.sub.as_deref() == Some("scale") {
        return scale_write(state, t, &opts, apply_patch);
    }
    if apply {
        if !doc.get("metadata").is_none_or(Value::is_object) {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        // The applied configuration must name the same object.
        let body_name = meta_str(&doc, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        for f in ["apiVersion", "kind"] {
            if doc.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(format!(
                    "invalid object type: {f} must be set in an apply patch"
                )));
            }
        }
    }
    let (obj, created) = state.store.transact(|txn| {
        let cur = txn.get(&info.group_resource(), ns.unwrap_or(""), name);
        match cur {
            None if apply && part == Part::Main => {
                let mut body = doc.clone();
                if meta_str(&body, "name").is_empty() {
                    set_path(&mut body, "metadata.name", json!(name));
                }
                state.create(txn, info, ns, body, &opts).map(|o| (o, true))
            }
            None => Err(ApiError::not_found(info, name)),
            Some(cur) => {
                let mut new = apply_patch(&cur)?;
                if apply {
                    let sub = (part == Part::Status).then_some("status");
                    crate::objects::prune_apply(&cur, &mut new, &opts.manager, &doc, sub);
                }
                state
                    .update(txn, info, ns, name, new, part, &opts, apply.then_some(&doc))
                    .map(|o| (o, false))
            }
        }
    })?;
    Ok(json_response(if created { 201 } else { 200 }, &obj))
}

fn sim_endpoint(server: &Server, method: &Method, rest: &str, body: &[u8]) -> Response {
    match (method.as_str(), rest.trim_end_matches('/')) {
        ("GET", "/counters") => json_response(200, &counters_doc(server)),
        ("GET", "/faults") => json_response(
            200,
            &serde_json::to_value(server.faults.get()).unwrap_or_default(),
        ),
        ("PUT" | "POST", "/faults") => match serde_json::from_slice::<FaultConfig>(body) {
            Ok(cfg) => {
                server.faults.set(cfg);
                json_response(
                    200,
                    &serde_json::to_value(server.faults.get()).unwrap_or_default(),
                )
            }
            Err(e) => error_response(&ApiError::bad_request(format!("invalid fault config: {e}"))),
        },
        ("DELETE", "/faults") => {
            server.faults.set(FaultConfig::default());
            json_response(200, &json!({}))
        }
        _ => error_response(&ApiError::no_route()),
    }
}

/// The `/sim/v1/counters` document.
pub fn counters_doc(server: &Server) -> Value {
    let creates: Vec<Value> = server
        .state
        .store
        .creates()
        .into_iter()
        .map(|(r, n)| json!({"kind": r.kind, "namespace": r.namespace, "name": r.name, "count": n}))
        .collect();
    json!({
        "resourceVersion": server.state.store.rv(),
        "creates": creates,
        "requests": server.requests.load(Ordering::Relaxed),
        "faultsInjected": server.faults.injected(),
        "userAgents": server.user_agents.lock().map(|a| a.iter().cloned().collect::<Vec<_>>()).unwrap_or_default(),
    })
}

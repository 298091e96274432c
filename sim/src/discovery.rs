//! Discovery documents (`/version`, `/api`, `/apis`, per group-version lists,
//! aggregated discovery v2) and the OpenAPI documents kubectl needs for
//! `apply` with validation.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceInfo};

/// The `/version` document for Kubernetes `1.<minor>`.
pub fn version(minor: u32) -> Value {
    json!({
        "major": "1",
        "minor": minor.to_string(),
        "gitVersion": format!("v1.{minor}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.4",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`.
pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]})
}

fn gv(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    json!({
        "name": group,
        "versions": versions.iter().map(|v| gv(group, v)).collect::<Vec<_>>(),
        "preferredVersion": gv(group, &versions[0]),
    })
}

/// `GET /apis`.
pub fn api_groups(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`, if served.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    reg.groups()
        .into_iter()
        .find(|(g, _)| g == group)
        .map(|(g, vs)| {
            let mut d = group_doc(&g, &vs);
            d["kind"] = json!("APIGroup");
            d["apiVersion"] = json!("v1");
            d
        })
}

fn sub_row(info: &ResourceInfo, sub: &str, kind: &str, verbs: &[&str]) -> Value {
    json!({"name": format!("{}/{sub}", info.plural), "singularName": "", "namespaced": info.namespaced,
        "kind": kind, "verbs": verbs})
}

fn subresources(info: &ResourceInfo) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let rw = ["get", "patch", "update"];
    if info.status {
        out.push(("status", sub_row(info, "status", &info.kind, &rw)));
    }
    if info.scale.is_some() {
        let mut row = sub_row(info, "scale", "Scale", &rw);
        row["group"] = json!("autoscaling");
        row["version"] = json!("v1");
        out.push(("scale", row));
    }
    if info.group.is_empty() && info.plural == "namespaces" {
        out.push((
            "finalize",
            sub_row(info, "finalize", "Namespace", &["update"]),
        ));
    }
    if info.group.is_empty() && info.plural == "pods" {
        out.push((
            "exec",
            sub_row(info, "exec", "PodExecOptions", &["create", "get"]),
        ));
        out.push((
            "attach",
            sub_row(info, "attach", "PodAttachOptions", &["create", "get"]),
        ));
        out.push(("log", sub_row(info, "log", "Pod", &["get"])));
    }
    out
}

/// `GET /api/v1` and `GET /apis/{group}/{version}`.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let infos = reg.in_group_version(group, version);
    if infos.is_empty() {
        return None;
    }
    let mut rows = Vec::new();
    for i in &infos {
        let mut row = json!({"name": i.plural, "singularName": i.singular, "namespaced": i.namespaced,
            "kind": i.kind, "verbs": i.verbs()});
        if !i.short_names.is_empty() {
            row["shortNames"] = json!(i.short_names);
        }
        if !i.categories.is_empty() {
            row["categories"] = json!(i.categories);
        }
        rows.push(row);
        rows.extend(subresources(i).into_iter().map(|(_, r)| r));
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": rows}),
    )
}

/// Content type of an aggregated discovery (v2) reply.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the `Accept` header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// Aggregated discovery for `/api` (`core = true`) or `/apis`.
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let mut items = Vec::new();
    let groups: Vec<(String, Vec<String>)> = if core {
        vec![(String::new(), vec!["v1".to_string()])]
    } else {
        reg.groups()
    };
    for (g, versions) in groups {
        let mut vdocs = Vec::new();
        for v in &versions {
            let resources: Vec<Value> = reg
                .in_group_version(&g, v)
                .iter()
                .map(|i| {
                    let subs: Vec<Value> = subresources(i)
                        .into_iter()
                        .map(|(name, row)| {
                            let (rg, rv) = if name == "scale" {
                                ("autoscaling".to_string(), "v1".to_string())
                            } else {
                                (i.group.clone(), i.version.clone())
                            };
                            json!({"subresource": name,
                                "responseKind": {"group": rg, "version": rv, "kind": row["kind"]},
                                "verbs": row["verbs"]})
                        })
                        .collect();
                    let mut r = json!({"resource": i.plural,
                        "responseKind": {"group": i.group, "version": i.version, "kind": i.kind},
                        "scope": if i.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": i.singular, "verbs": i.verbs()});
                    if !i.short_names.is_empty() {
                        r["shortNames"] = json!(i.short_names);
                    }
                    if !i.categories.is_empty() {
                        r["categories"] = json!(i.categories);
                    }
                    if !subs.is_empty() {
                        r["subresources"] = json!(subs);
                    }
                    r
                })
                .collect();
            vdocs.push(json!({"version": v, "resources": resources, "freshness": "Current"}));
        }
        let meta = if g.is_empty() {
            json!({})
        } else {
            json!({"name": g})
        };
        items.push(json!({"metadata": meta, "versions": vdocs}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// A hash that changes whenever the set of served resources changes
/// (kubectl caches OpenAPI documents by it).
fn doc_hash(reg: &Registry) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in reg.all() {
        for b in format!("{}/{}/{}/{};", i.group, i.version, i.plural, i.kind).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016X}")
}

fn gv_paths(reg: &Registry) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> =
        vec![("api/v1".into(), String::new(), "v1".into())];
    for (g, vs) in reg.groups() {
        for v in vs {
            out.push((format!("apis/{g}/{v}"), g.clone(), v));
        }
    }
    out
}

/// `GET /openapi/v3`: one entry per served group-version.
pub fn openapi_v3_index(reg: &Registry) -> Value {
    let hash = doc_hash(reg);
    let mut paths = serde_json::Map::new();
    for (p, _, _) in gv_paths(reg) {
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/{api/v1|apis/g/v}`: a PATCH operation per kind that
/// declares the `fieldValidation` parameter, so kubectl relies on
/// server-side field validation.
pub fn openapi_v3_doc(reg: &Registry, minor: u32, path: &str) -> Option<Value> {
    let (_, group, version) = gv_paths(reg).into_iter().find(|(p, _, _)| p == path)?;
    let mut paths = serde_json::Map::new();
    let params = json!([
        {"name": "name", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
    ]);
    for i in reg.in_group_version(&group, &version) {
        let prefix = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{version}")
        };
        let item = if i.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", i.plural)
        } else {
            format!("{prefix}/{}/{{name}}", i.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": i.kind});
        paths.insert(
            item,
            json!({"patch": {
                "operationId": format!("patch{}{}", if i.namespaced { "Namespaced" } else { "" }, i.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{minor}.0")},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// Content type of `/openapi/v2` (the form the real server uses; Go rejects the `@` spelling).
pub const OPENAPI_V2_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

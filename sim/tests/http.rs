//! Raw HTTP: authentication, bad input, routing errors, content types, OpenAPI, `/sim/v1/`.

mod common;

use anyhow::Result;
use serde_json::{Value, json};

use common::*;

fn assert_status(r: &Raw, code: u16, reason: &str) {
    assert_eq!(r.status, code, "{}", r.body);
    let s = r.json();
    assert_eq!(s["kind"], "Status", "{}", r.body);
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["code"], code);
    assert_eq!(s["reason"], reason, "{}", r.body);
    // kube must be able to parse it.
    let parsed: kube::core::Status = serde_json::from_value(s).expect("kube parses the Status");
    assert_eq!(parsed.code, code);
}

#[tokio::test]
async fn token_is_required() -> Result<()> {
    let c = start().await;
    let r = raw(c.url(), "GET", "/api/v1/namespaces", &[], b"").await?;
    assert_status(&r, 401, "Unauthorized");
    let r = raw(
        c.url(),
        "GET",
        "/api/v1/namespaces",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .await?;
    assert_status(&r, 401, "Unauthorized");
    let r = raw(c.url(), "GET", "/sim/v1/counters", &[], b"").await?;
    assert_eq!(r.status, 401);
    // The token as a path prefix (what kubectl uses over plain HTTP).
    let r = raw(
        c.url(),
        "GET",
        &format!("/t/{}/api/v1/namespaces/default", c.token()),
        &[],
        b"",
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = raw(
        c.url(),
        "GET",
        "/t/nope/api/v1/namespaces/default",
        &[],
        b"",
    )
    .await?;
    assert_eq!(r.status, 401);
    // /version stays open (the kubectl dispatcher asks it first).
    let r = raw(c.url(), "GET", "/version?timeout=5s", &[], b"").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["major"], "1");

    // The kubeconfig is private and names the context.
    let kc = std::fs::read_to_string(c.kubeconfig_path())?;
    assert!(kc.contains(c.token()));
    assert!(kc.contains("current-context: sim"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.kubeconfig_path())?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let dir = c.data_dir().to_path_buf();
    c.stop().await;
    assert!(!dir.exists(), "temporary data dir removed at stop");
    Ok(())
}

#[tokio::test]
async fn bad_input_answers_status_and_never_panics() -> Result<()> {
    let c = start().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    assert_status(
        &authed(&c, "POST", cms, "application/json", b"{not json").await,
        400,
        "BadRequest",
    );
    assert_status(
        &authed(&c, "POST", cms, "application/json", b"").await,
        400,
        "BadRequest",
    );
    assert_status(
        &authed(&c, "POST", cms, "application/json", b"[1,2]").await,
        400,
        "BadRequest",
    );
    assert_status(
        &authed(&c, "POST", cms, "application/yaml", b"a: [unclosed").await,
        400,
        "BadRequest",
    );
    assert_status(
        &authed(&c, "POST", cms, "application/json", b"{\"metadata\": 5}").await,
        400,
        "BadRequest",
    );
    assert_status(
        &authed(
            &c,
            "POST",
            cms,
            "application/json",
            b"{\"kind\":\"Secret\",\"metadata\":{\"name\":\"x\"}}",
        )
        .await,
        400,
        "BadRequest",
    );
    assert_status(
        &authed(
            &c,
            "POST",
            cms,
            "application/json",
            b"{\"apiVersion\":\"apps/v1\",\"metadata\":{\"name\":\"x\"}}",
        )
        .await,
        400,
        "BadRequest",
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_status(
        &authed(&c, "POST", cms, "application/json", deep.as_bytes()).await,
        400,
        "BadRequest",
    );
    let r = authed(
        &c,
        "POST",
        cms,
        "application/yaml",
        b"metadata: {name: from-yaml}\ndata: {a: b}\n",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_status(
        &authed(&c, "POST", cms, "text/plain", b"x").await,
        415,
        "UnsupportedMediaType",
    );
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for ct in [
        "application/json",
        "application/yaml",
        "application/vnd.kubernetes.protobuf",
        "application/merge-patch+json",
    ] {
        let r = authed(&c, "POST", cms, ct, &garbage).await;
        assert!(r.status >= 400 && r.status < 500, "{ct}: {}", r.status);
        let r = authed(&c, "PATCH", &format!("{cms}/from-yaml"), ct, &garbage).await;
        assert!(r.status >= 400 && r.status < 500, "{ct}: {}", r.status);
    }

    // Names, namespaces, resource versions.
    let r = authed(
        &c,
        "POST",
        cms,
        "application/json",
        br#"{"metadata":{"name":"UPPER"}}"#,
    )
    .await;
    assert_status(&r, 422, "Invalid");
    assert_eq!(r.json()["details"]["causes"][0]["field"], "metadata.name");
    let r = authed(
        &c,
        "POST",
        cms,
        "application/json",
        br#"{"metadata":{"name":"x","namespace":"other"}}"#,
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = authed(
        &c,
        "PUT",
        &format!("{cms}/from-yaml"),
        "application/json",
        br#"{"metadata":{"name":"from-yaml","resourceVersion":"1"}}"#,
    )
    .await;
    assert_status(&r, 409, "Conflict");
    assert_eq!(
        r.json()["message"],
        "Operation cannot be fulfilled on configmaps \"from-yaml\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let r = authed(
        &c,
        "PUT",
        &format!("{cms}/from-yaml"),
        "application/json",
        br#"{"metadata":{"name":"other"}}"#,
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = authed(
        &c,
        "PUT",
        &format!("{cms}/missing"),
        "application/json",
        br#"{"metadata":{"name":"missing"}}"#,
    )
    .await;
    assert_status(&r, 404, "NotFound");
    let r = authed(
        &c,
        "GET",
        &format!("{cms}?watch=true&resourceVersion=abc"),
        "",
        b"",
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = authed(
        &c,
        "GET",
        &format!("{cms}?labelSelector=a%20in%20b"),
        "",
        b"",
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = authed(
        &c,
        "POST",
        &format!("{cms}?dryRun=Some"),
        "application/json",
        br#"{"metadata":{"name":"y"}}"#,
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = authed(
        &c,
        "DELETE",
        &format!("{cms}/from-yaml"),
        "application/json",
        b"{oops",
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = authed(
        &c,
        "DELETE",
        &format!("{cms}/from-yaml"),
        "application/json",
        br#"{"propagationPolicy":"Sideways"}"#,
    )
    .await;
    assert_status(&r, 400, "BadRequest");

    // Routing.
    assert_status(
        &authed(&c, "GET", "/api/v1/namespaces/default/widgets", "", b"").await,
        404,
        "NotFound",
    );
    assert_status(
        &authed(&c, "GET", "/apis/nope.io/v1", "", b"").await,
        404,
        "NotFound",
    );
    assert_status(
        &authed(&c, "GET", "/api/v2", "", b"").await,
        404,
        "NotFound",
    );
    assert_status(
        &authed(
            &c,
            "GET",
            "/api/v1/namespaces/default/namespaces/x",
            "",
            b"",
        )
        .await,
        404,
        "NotFound",
    );
    assert_status(
        &authed(&c, "GET", "/api/v1/configmaps/x", "", b"").await,
        404,
        "NotFound",
    );
    assert_status(
        &authed(&c, "GET", "/nothing/here", "", b"").await,
        404,
        "NotFound",
    );
    let r = authed(
        &c,
        "POST",
        &format!("{cms}/from-yaml"),
        "application/json",
        b"{}",
    )
    .await;
    assert_status(&r, 405, "MethodNotAllowed");
    assert_status(
        &authed(&c, "DELETE", "/api/v1/namespaces", "", b"").await,
        405,
        "MethodNotAllowed",
    );
    assert_status(
        &authed(
            &c,
            "PUT",
            &format!("{cms}/from-yaml/status"),
            "application/json",
            b"{}",
        )
        .await,
        404,
        "NotFound",
    );
    assert_status(
        &authed(
            &c,
            "POST",
            "/api/v1/namespaces/default/pods/p/status",
            "application/json",
            b"{}",
        )
        .await,
        405,
        "MethodNotAllowed",
    );
    assert_status(
        &authed(&c, "OPTIONS", cms, "", b"").await,
        405,
        "MethodNotAllowed",
    );
    let r = authed(
        &c,
        "PATCH",
        &format!("{cms}/from-yaml"),
        "application/json",
        b"{}",
    )
    .await;
    assert_status(&r, 415, "UnsupportedMediaType");

    // Still serving.
    let r = authed(&c, "GET", &format!("{cms}/from-yaml"), "", b"").await;
    assert_eq!(r.status, 200);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn discovery_and_openapi_documents() -> Result<()> {
    let c = start().await;
    let r = authed(&c, "GET", "/apis", "", b"").await;
    let groups = r.json()["groups"].as_array().unwrap().clone();
    assert!(
        groups
            .iter()
            .any(|g| g["name"] == "snapshot.storage.k8s.io")
    );
    let r = authed(&c, "GET", "/apis/apps/v1", "", b"").await;
    let rows = r.json()["resources"].as_array().unwrap().clone();
    let scale = rows
        .iter()
        .find(|x| x["name"] == "deployments/scale")
        .unwrap();
    assert_eq!(scale["group"], "autoscaling");
    assert_eq!(scale["kind"], "Scale");
    let deploy = rows.iter().find(|x| x["name"] == "deployments").unwrap();
    assert_eq!(deploy["shortNames"], json!(["deploy"]));
    let r = authed(&c, "GET", "/api/v1", "", b"").await;
    let rows = r.json()["resources"].as_array().unwrap().clone();
    let ns = rows.iter().find(|x| x["name"] == "namespaces").unwrap();
    assert_eq!(ns["namespaced"], false);
    assert!(rows.iter().any(|x| x["name"] == "namespaces/finalize"));
    assert!(rows.iter().any(|x| x["name"] == "pods/exec"));

    let auth = format!("Bearer {}", c.token());
    let accept =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let r = raw(
        c.url(),
        "GET",
        "/apis",
        &[("Authorization", &auth), ("Accept", accept)],
        b"",
    )
    .await?;
    assert_eq!(
        r.header("content-type"),
        Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    );
    assert_eq!(r.json()["kind"], "APIGroupDiscoveryList");

    let r = authed(&c, "GET", "/openapi/v3", "", b"").await;
    let idx = r.json();
    let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
    let doc = authed(&c, "GET", &url, "", b"").await.json();
    let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Deployment");
    assert!(
        p["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "fieldValidation")
    );
    let r = authed(&c, "GET", "/openapi/v3/api/v1", "", b"").await;
    assert!(r.json()["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
    let r = authed(&c, "GET", "/openapi/v2", "", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn counters_and_faults_endpoints() -> Result<()> {
    let c = start().await;
    let r = authed(
        &c,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        br#"{"metadata":{"name":"a"}}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let counters = authed(&c, "GET", "/sim/v1/counters", "", b"").await.json();
    assert_eq!(counters["resourceVersion"], json!(c.resource_version()));
    let creates = counters["creates"].as_array().unwrap();
    let mine: Vec<&Value> = creates
        .iter()
        .filter(|x| x["name"] == "a" && x["kind"] == "ConfigMap")
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["count"], 1);
    assert_eq!(mine[0]["namespace"], "default");

    let cfg = json!({"seed": 1, "rules": [{"verb": "get", "resource": "configmaps", "rate": 1.0, "code": 503}]});
    let r = authed(
        &c,
        "PUT",
        "/sim/v1/faults",
        "application/json",
        cfg.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = authed(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps/a",
        "",
        b"",
    )
    .await;
    assert_status(&r, 503, "ServiceUnavailable");
    let r = authed(&c, "PUT", "/sim/v1/faults", "application/json", b"{bad").await;
    assert_eq!(r.status, 400);
    let r = authed(&c, "DELETE", "/sim/v1/faults", "", b"").await;
    assert_eq!(r.status, 200);
    let r = authed(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps/a",
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    c.stop().await;
    Ok(())
}

/// A Protobuf body like kubectl 1.32+ sends for `create namespace`.
#[tokio::test]
async fn protobuf_namespace_create() -> Result<()> {
    let c = start().await;
    fn field(n: u8, b: &[u8]) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, b.len() as u8];
        v.extend_from_slice(b);
        v
    }
    let tm = [field(1, b"v1"), field(2, b"Namespace")].concat();
    let raw_obj = [field(1, &field(1, b"pb-ns")), field(2, &[]), field(3, &[])].concat();
    let body = [b"k8s\0".to_vec(), field(1, &tm), field(2, &raw_obj)].concat();
    let r = authed(
        &c,
        "POST",
        "/api/v1/namespaces",
        "application/vnd.kubernetes.protobuf",
        &body,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["metadata"]["name"], "pb-ns");
    let r = authed(
        &c,
        "POST",
        "/apis/apps/v1/namespaces/default/statefulsets",
        "application/vnd.kubernetes.protobuf",
        &body,
    )
    .await;
    assert_status(&r, 415, "UnsupportedMediaType");
    c.stop().await;
    Ok(())
}

/// Shapes that are valid JSON but nonsense for the kind must be refused, not crash the server.
#[tokio::test]
async fn odd_shapes_never_panic() -> Result<()> {
    let c = start().await;
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "POST",
            "/api/v1/namespaces",
            "application/json",
            r#"{"metadata":{"name":"odd"},"spec":"x","status":7}"#,
        ),
        (
            "PUT",
            "/api/v1/namespaces/odd/status",
            "application/json",
            r#"{"metadata":{"name":"odd"},"status":"weird"}"#,
        ),
        (
            "PUT",
            "/api/v1/namespaces/odd/finalize",
            "application/json",
            r#"{"metadata":{"name":"odd"},"spec":{"finalizers":"no"}}"#,
        ),
        ("DELETE", "/api/v1/namespaces/odd", "", ""),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            "application/json",
            r#"{"metadata":{"name":"s"},"spec":{"ports":["x",1,null,{"port":80}]}}"#,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/ap?fieldManager=m",
            "application/apply-patch+yaml",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":"str"}"#,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
            "application/json-patch+json",
            r#"[{"op":"replace","path":"/metadata","value":"x"}]"#,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
            "application/json-patch+json",
            r#"[{"op":"add","path":"/metadata/labels","value":[1]}]"#,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
            "application/json-patch+json",
            r#"[{"op":"replace","path":"","value":5}]"#,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
            "application/merge-patch+json",
            r#"{"metadata":{"finalizers":"x","ownerReferences":{"a":1}}}"#,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
            "application/strategic-merge-patch+json",
            r#"{"metadata":{"$patch":"bogus"}}"#,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
            "application/strategic-merge-patch+json",
            r#"{"data":{"$patch":"delete"},"x":[{"$patch":"replace"}]}"#,
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/nope/scale",
            "application/merge-patch+json",
            r#"{"spec":{"replicas":"many"}}"#,
        ),
        (
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "application/json",
            r#"{"metadata":{"name":"x.y"},"spec":{"names":"z","versions":7}}"#,
        ),
        (
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "application/json",
            r#"{"metadata":{"name":"as.b.c"},"spec":{"group":"b.c","scope":"Cluster","names":{"plural":"as","kind":"A"},"versions":[{"name":"v1","served":true,"storage":true}]}}"#,
        ),
        (
            "POST",
            "/apis/b.c/v1/as",
            "application/json",
            r#"{"metadata":{"name":"a1","ownerReferences":"me"}}"#,
        ),
        (
            "GET",
            "/apis/b.c/v1/as?labelSelector=%28%28%28&fieldSelector=%3D%3D%3D",
            "",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=-1",
            "",
            "",
        ),
        (
            "DELETE",
            "/apis/b.c/v1/as",
            "application/json",
            r#"{"preconditions":"x","dryRun":"All"}"#,
        ),
    ];
    for (method, path, ct, body) in cases {
        let r = authed(&c, method, path, ct, body.as_bytes()).await;
        assert!(r.status < 500, "{method} {path}: {} {}", r.status, r.body);
    }
    // The server still answers normally.
    let r = authed(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["metadata"]["name"], "kube-root-ca.crt");
    c.stop().await;
    Ok(())
}

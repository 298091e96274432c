//! CRUD, patches, subresources, errors, namespaces, CRDs and GC through the real kube client.

mod common;

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::discovery::Discovery;
use serde_json::{Value, json};

use common::*;

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"a": "1"}}),
    )
    .unwrap()
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                    {"name": "b", "image": "b:1"}]}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn create_get_list_replace_delete() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    let created = cms
        .create(
            &PostParams::default(),
            &cm("one", json!({"app": "web", "tier": "fe"})),
        )
        .await?;
    let m = &created.metadata;
    assert!(m.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(m.creation_timestamp.is_some());
    assert_eq!(m.generation, Some(1));
    let rv1: u64 = m.resource_version.as_deref().unwrap().parse()?;
    assert_eq!(rv1, c.resource_version());

    cms.create(&PostParams::default(), &cm("two", json!({"app": "db"})))
        .await?;
    cms.create(
        &PostParams::default(),
        &cm("three", json!({"tier": "fe", "n": "7"})),
    )
    .await?;
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        let mut v: Vec<String> = l
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(cms.list(&ListParams::default().labels("app=web")).await?),
        ["one"]
    );
    assert_eq!(
        names(cms.list(&ListParams::default().labels("app!=web")).await?),
        ["kube-root-ca.crt", "three", "two"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app in (web,db)"))
                .await?
        ),
        ["one", "two"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app notin (web),tier"))
                .await?
        ),
        ["three"]
    );
    assert_eq!(
        names(cms.list(&ListParams::default().labels("!app,n>5")).await?),
        ["three"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=two"))
                .await?
        ),
        ["two"]
    );
    let all: Api<ConfigMap> = Api::all(c.client()?);
    let l = all
        .list(&ListParams::default().fields("metadata.namespace=default,metadata.name!=one"))
        .await?;
    assert!(l.metadata.resource_version.is_some());
    assert_eq!(names(l), ["kube-root-ca.crt", "three", "two"]);
    let e = api_err(
        cms.list(&ListParams::default().fields("data.a=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
    let e = api_err(
        cms.list(&ListParams::default().labels("a in b"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 400);

    // Replace: current resourceVersion works, a stale one conflicts.
    let mut cur = cms.get("one").await?;
    cur.data = Some([("a".to_string(), "2".to_string())].into());
    let replaced = cms.replace("one", &PostParams::default(), &cur).await?;
    assert_ne!(
        replaced.metadata.resource_version,
        cur.metadata.resource_version
    );
    let e = api_err(
        cms.replace("one", &PostParams::default(), &cur)
            .await
            .unwrap_err(),
    );
    assert!(e.is_conflict(), "{e:?}");
    assert!(e.message.contains("the object has been modified"));

    // Duplicate create: AlreadyExists (not a Conflict for kube).
    let e = api_err(
        cms.create(&PostParams::default(), &cm("one", json!({})))
            .await
            .unwrap_err(),
    );
    assert!(e.is_already_exists());
    assert!(!e.is_conflict());
    assert_eq!(e.message, "configmaps \"one\" already exists");

    assert!(cms.get_opt("missing").await?.is_none());
    let e = api_err(cms.get("missing").await.unwrap_err());
    assert!(e.is_not_found());
    assert_eq!(e.details.as_ref().unwrap().kind, "configmaps");

    // generateName.
    let mut g = cm("", json!({}));
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let a = cms.create(&PostParams::default(), &g).await?;
    let b = cms.create(&PostParams::default(), &g).await?;
    let (an, bn) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(an.starts_with("gen-") && an.len() == 9, "{an}");
    assert_ne!(an, bn);

    // Delete: immediate removal answers a Status (ConfigMap) or the object (ServiceAccount).
    let r = cms.delete("two", &DeleteParams::default()).await?;
    assert!(r.is_right());
    let e = api_err(
        cms.delete("two", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert!(e.is_not_found());
    let sas: Api<ServiceAccount> = Api::namespaced(c.client()?, "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "robot"}}))?,
    )
    .await?;
    assert!(
        sas.delete("robot", &DeleteParams::background())
            .await?
            .is_left()
    );

    // deletecollection by label.
    let r = cms
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("tier=fe"),
        )
        .await?;
    let deleted = r.left().expect("a list of deleted objects");
    assert_eq!(deleted.items.len(), 2);
    assert!(cms.get_opt("three").await?.is_none());

    // Counters.
    assert_eq!(c.create_count("ConfigMap", "default", "one"), 1);
    assert_eq!(
        c.create_count("ConfigMap", "default", "kube-root-ca.crt"),
        1
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn validation_errors_are_invalid_with_causes() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    let e = api_err(
        cms.create(&PostParams::default(), &cm("Bad_Name", json!({})))
            .await
            .unwrap_err(),
    );
    assert!(e.is_invalid());
    assert_eq!(e.code, 422);
    let d = e.details.as_ref().unwrap();
    assert_eq!(d.kind, "ConfigMap");
    assert_eq!(d.causes[0].field, "metadata.name");
    assert!(e.message.starts_with(
        "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
    ));

    let e = api_err(
        cms.create(&PostParams::default(), &cm("ok", json!({"bad key": "x"})))
            .await
            .unwrap_err(),
    );
    assert!(e.is_invalid());
    assert_eq!(e.details.unwrap().causes[0].field, "metadata.labels");

    let nss: Api<Namespace> = Api::all(c.client()?);
    let e = api_err(
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "a.b"}}))?,
        )
        .await
        .unwrap_err(),
    );
    assert!(e.is_invalid(), "namespace names are DNS labels: {e:?}");

    let deps: Api<Deployment> = Api::namespaced(c.client()?, "default");
    let mut d = deployment("neg");
    d.spec.as_mut().unwrap().replicas = Some(-1);
    let e = api_err(deps.create(&PostParams::default(), &d).await.unwrap_err());
    assert_eq!(
        e.message,
        "Deployment.apps \"neg\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    );
    assert_eq!(e.details.unwrap().group, "apps");

    let other: Api<ConfigMap> = Api::namespaced(c.client()?, "nope");
    let e = api_err(
        other
            .create(&PostParams::default(), &cm("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert!(e.is_not_found());
    assert_eq!(e.message, "namespaces \"nope\" not found");

    let mut with_rv = cm("rv", json!({}));
    with_rv.metadata.resource_version = Some("5".into());
    let e = api_err(
        cms.create(&PostParams::default(), &with_rv)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 500);
    assert!(e.message.contains("resourceVersion should not be set"));

    // Nothing above was written.
    let before = c.resource_version();
    let _ = cms
        .create(&PostParams::default(), &cm("Bad_Name", json!({})))
        .await;
    assert_eq!(c.resource_version(), before);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn patches_of_all_types() -> Result<()> {
    let c = start().await;
    let client = c.client()?;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("web"))
        .await?;

    // Strategic merge: containers merge by name, env by name.
    let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]}}}});
    let d = deps
        .patch("web", &PatchParams::default(), &Patch::Strategic(p))
        .await?;
    let cs = d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .clone();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0].image.as_deref(), Some("a:2"));
    assert_eq!(cs[0].env.as_ref().unwrap().len(), 2);
    assert_eq!(d.metadata.generation, Some(2));

    // Merge patch: lists replace, null deletes.
    let d = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"x": "1"}}, "spec": {"revisionHistoryLimit": null}}),
            ),
        )
        .await?;
    assert_eq!(d.metadata.labels.unwrap()["x"], "1");
    assert_eq!(
        d.spec.unwrap().revision_history_limit,
        Some(10),
        "defaulted again after removal"
    );
    assert_eq!(
        d.metadata.generation,
        Some(2),
        "label changes do not bump generation"
    );

    // JSON patch.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("p", json!({})))
        .await?;
    let jp: json_patch_ops::Ops = json_patch_ops::ops(json!([
        {"op": "add", "path": "/data/b", "value": "2"},
        {"op": "remove", "path": "/data/a"}
    ]));
    let r = raw_patch(
        &c,
        "/api/v1/namespaces/default/configmaps/p",
        "application/json-patch+json",
        &jp.0,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"], json!({"b": "2"}));
    let r = raw_patch(
        &c,
        "/api/v1/namespaces/default/configmaps/p",
        "application/json-patch+json",
        &json!([{"op": "test", "path": "/data/b", "value": "9"}]),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // Server-side apply: creates when missing (201), then updates with an Apply managedFields entry.
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "namespace": "default"}, "data": {"k": "v"}});
    let o = cms
        .patch(
            "ssa",
            &PatchParams::apply("ferry").force(),
            &Patch::Apply(&applied),
        )
        .await?;
    assert_eq!(o.data.unwrap()["k"], "v");
    let mf = o.metadata.managed_fields.unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("ferry"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    // Associative lists record one entry per item, keyed as the API server
    // keys them: a Service's ports by port and protocol.
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "default");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np", "namespace": "default"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
    let s = services
        .patch(
            "np",
            &PatchParams::apply("ferry").force(),
            &Patch::Apply(&svc),
        )
        .await?;
    let fields = serde_json::to_value(&s.metadata.managed_fields.unwrap()[0].fields_v1).unwrap();
    assert!(
        fields["f:spec"]["f:ports"][r#"k:{"port":80,"protocol":"TCP"}"#]
            .get("f:nodePort")
            .is_some(),
        "{fields}"
    );
    // The object's own resourceVersion: the cluster-wide one also moves
    // with the controllers running in the background.
    let before = o.metadata.resource_version.clone();
    let again = cms
        .patch(
            "ssa",
            &PatchParams::apply("ferry").force(),
            &Patch::Apply(&applied),
        )
        .await?;
    assert_eq!(
        again.metadata.resource_version, before,
        "an unchanged apply writes nothing"
    );
    // Fields a manager stops applying are removed, unless another applier owns them.
    let v2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v", "gone": "x"}});
    cms.patch(
        "ssa",
        &PatchParams::apply("ferry").force(),
        &Patch::Apply(&v2),
    )
    .await?;
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"b": "2"}}});
    cms.patch(
        "ssa",
        &PatchParams::apply("other").force(),
        &Patch::Apply(&other),
    )
    .await?;
    let v3 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1"}}, "data": {"k": "v"}});
    let o = cms
        .patch(
            "ssa",
            &PatchParams::apply("ferry").force(),
            &Patch::Apply(&v3),
        )
        .await?;
    assert_eq!(o.data.unwrap().len(), 1, "data.gone removed");
    assert_eq!(
        o.metadata.labels.unwrap().len(),
        2,
        "label b kept: owned by 'other'"
    );
    let r = authed(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/ssa2",
        "application/apply-patch+yaml",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa2}\n",
    )
    .await;
    assert_eq!(r.status, 422, "missing fieldManager: {}", r.body);
    assert!(r.body.contains("fieldManager: Required value"));
    let r = authed(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/ssa2?&fieldManager=m",
        "application/apply-patch+yaml",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa2}\ndata: {a: b}\n",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = authed(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/ssa2?force=true",
        "application/merge-patch+json",
        b"{}",
    )
    .await;
    assert_eq!(r.status, 422, "force on a non-apply patch: {}", r.body);

    // A patch of a missing object is 404.
    let e = api_err(
        cms.patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert!(e.is_not_found());

    // A patch carrying a stale resourceVersion conflicts.
    let e = api_err(
        cms.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "data": {"z": "1"}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.is_conflict());
    c.stop().await;
    Ok(())
}

/// A JSON patch body without pulling in the `json-patch` crate.
mod json_patch_ops {
    pub struct Ops(pub serde_json::Value);
    pub fn ops(v: serde_json::Value) -> Ops {
        Ops(v)
    }
}

async fn raw_patch(c: &ferry_sim::SimCluster, path: &str, ctype: &str, body: &Value) -> Raw {
    authed(c, "PATCH", path, ctype, &serde_json::to_vec(body).unwrap()).await
}

#[tokio::test]
async fn status_and_scale_subresources() -> Result<()> {
    let c = start().await;
    let deps: Api<Deployment> = Api::namespaced(c.client()?, "default");
    let d = deps
        .create(&PostParams::default(), &deployment("web"))
        .await?;
    assert_eq!(d.metadata.generation, Some(1));
    assert!(d.status.is_none(), "status is not taken from a create");

    let d = deps
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 1}})),
        )
        .await?;
    assert_eq!(d.metadata.generation, Some(1));
    assert_eq!(d.status.as_ref().unwrap().ready_replicas, Some(1));
    // The main resource ignores status.
    let d = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 9}})),
        )
        .await?;
    assert_eq!(d.status.unwrap().replicas, Some(2));

    let s = deps.get_scale("web").await?;
    assert_eq!(s.spec.unwrap().replicas, Some(2));
    assert_eq!(s.status.as_ref().unwrap().replicas, 2);
    assert_eq!(s.status.unwrap().selector.as_deref(), Some("app=web"));
    let s = deps
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await?;
    assert_eq!(s.spec.unwrap().replicas, Some(5));
    let d = deps.get("web").await?;
    assert_eq!(d.spec.unwrap().replicas, Some(5));
    assert_eq!(d.metadata.generation, Some(2));
    let r = authed(
        &c,
        "GET",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
        "",
        b"",
    )
    .await;
    assert_eq!(r.json()["apiVersion"], "autoscaling/v1");
    assert_eq!(r.json()["kind"], "Scale");
    // Subresources that do not exist.
    let r = authed(
        &c,
        "GET",
        "/apis/apps/v1/namespaces/default/daemonsets/x/scale",
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn finalizers_defer_deletion() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    let mut o = cm("held", json!({}));
    o.metadata.finalizers = Some(vec!["example.com/guard".into()]);
    cms.create(&PostParams::default(), &o).await?;
    let r = cms.delete("held", &DeleteParams::default()).await?;
    let held = r.left().expect("the object, still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.metadata.generation, Some(2));
    // A second delete changes nothing.
    let rv = c.resource_version();
    assert!(
        cms.delete("held", &DeleteParams::default())
            .await?
            .is_left()
    );
    assert_eq!(c.resource_version(), rv);
    // New finalizers are refused on a terminating object.
    let e = api_err(
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/guard", "x/y"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.is_invalid());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert!(cms.get_opt("held").await?.is_none());

    // Preconditions.
    let o = cms
        .create(&PostParams::default(), &cm("pre", json!({})))
        .await?;
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let e = api_err(cms.delete("pre", &dp).await.unwrap_err());
    assert!(e.is_conflict());
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: o.metadata.uid.clone(),
            resource_version: o.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    cms.delete("pre", &dp).await?;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn dry_run_persists_nothing() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    cms.create(&PostParams::default(), &cm("real", json!({})))
        .await?;
    let rv = c.resource_version();
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let o = cms.create(&pp, &cm("dry", json!({}))).await?;
    assert_eq!(o.metadata.name.as_deref(), Some("dry"));
    cms.patch(
        "real",
        &PatchParams {
            dry_run: true,
            ..Default::default()
        },
        &Patch::Merge(json!({"data": {"z": "1"}})),
    )
    .await?;
    cms.delete(
        "real",
        &DeleteParams {
            dry_run: true,
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(c.resource_version(), rv);
    assert!(cms.get_opt("dry").await?.is_none());
    assert!(!cms.get("real").await?.data.unwrap().contains_key("z"));
    assert_eq!(c.create_count("ConfigMap", "default", "dry"), 0);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn namespace_termination() -> Result<()> {
    let c = start().await;
    let client = c.client()?;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}}))?,
        )
        .await?;
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    assert_eq!(
        ns.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );
    assert_eq!(
        ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "shop"
    );

    // Per-namespace defaults appear.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "shop");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    wait_for("default ServiceAccount", 10, || async {
        sas.get_opt("default").await.ok().flatten()
    })
    .await;
    let ca = wait_for("kube-root-ca.crt", 10, || async {
        cms.get_opt("kube-root-ca.crt").await.ok().flatten()
    })
    .await;
    assert!(ca.data.unwrap()["ca.crt"].starts_with("-----BEGIN CERTIFICATE-----"));

    let mut held = cm("held", json!({}));
    held.metadata.finalizers = Some(vec!["example.com/guard".into()]);
    cms.create(&PostParams::default(), &held).await?;
    cms.create(&PostParams::default(), &cm("plain", json!({})))
        .await?;

    let r = nss.delete("shop", &DeleteParams::background()).await?;
    let terminating = r.left().expect("namespace object");
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    let e = api_err(
        cms.create(&PostParams::default(), &cm("late", json!({})))
            .await
            .unwrap_err(),
    );
    assert!(e.is_forbidden());
    assert_eq!(
        e.message,
        "configmaps \"late\" is forbidden: unable to create new content in namespace shop because it is being terminated"
    );
    assert_eq!(e.details.unwrap().causes[0].reason, "NamespaceTerminating");

    // Content without finalizers goes; the held object keeps the namespace Terminating.
    wait_for("content removed", 10, || async {
        let l = cms.list(&ListParams::default()).await.ok()?;
        (l.items.len() == 1).then_some(())
    })
    .await;
    let ns = wait_for("conditions", 10, || async {
        let n = nss.get("shop").await.ok()?;
        let conds = n.status.as_ref()?.conditions.clone()?;
        conds
            .iter()
            .any(|c| c.type_ == "NamespaceFinalizersRemaining" && c.status == "True")
            .then_some(n)
    })
    .await;
    let conds = ns.status.unwrap().conditions.unwrap();
    let remaining = conds
        .iter()
        .find(|c| c.type_ == "NamespaceContentRemaining")
        .unwrap();
    assert_eq!(
        remaining.message.as_deref(),
        Some("Some resources are remaining: configmaps. has 1 resource instances")
    );

    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    wait_for("namespace gone", 10, || async {
        nss.get_opt("shop").await.ok()?.is_none().then_some(())
    })
    .await;
    c.stop().await;
    Ok(())
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}}}]}
    })
}

#[tokio::test]
async fn crds_are_established_served_and_discoverable() -> Result<()> {
    let c = start().await;
    let client = c.client()?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(widget_crd())?;
    crds.create(&PostParams::default(), &crd).await?;
    let got = wait_for("Established", 10, || async {
        let c = crds.get("widgets.example.com").await.ok()?;
        let est = c
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|x| x.type_ == "Established" && x.status == "True");
        est.then_some(c)
    })
    .await;
    assert_eq!(
        got.status
            .unwrap()
            .accepted_names
            .unwrap()
            .list_kind
            .as_deref(),
        Some("WidgetList")
    );

    let discovery = Discovery::new(client.clone()).run().await?;
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.kind == "Widget")
        .expect("Widget discovered");
    assert_eq!(ar.plural, "widgets");
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    let agg = Discovery::new(client.clone()).run_aggregated().await?;
    assert!(agg.groups().any(|g| g.name() == "example.com"));
    assert!(agg.groups().any(|g| g.name() == "apps"));

    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let ar = ApiResource::from_gvk(&gvk);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let w: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 1}, "status": {"ignored": true}}))?;
    let w = widgets.create(&PostParams::default(), &w).await?;
    assert_eq!(w.metadata.generation, Some(1));
    assert!(w.data.get("status").is_none());
    let l = widgets.list(&ListParams::default()).await?;
    assert_eq!(l.items.len(), 1);
    let r = authed(
        &c,
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets",
        "",
        b"",
    )
    .await;
    assert_eq!(r.json()["kind"], "WidgetList");

    let e = api_err(
        widgets
            .patch(
                "w1",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"size": 2}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 415);
    assert_eq!(e.reason, "UnsupportedMediaType");
    let w = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await?;
    assert_eq!(w.metadata.generation, Some(2));
    let w = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ok": true}})),
        )
        .await?;
    assert_eq!(w.metadata.generation, Some(2));
    assert_eq!(w.data["status"]["ok"], true);

    crds.delete("widgets.example.com", &DeleteParams::default())
        .await?;
    let r = authed(
        &c,
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets",
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["message"],
        "the server could not find the requested resource"
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn owner_references_are_garbage_collected() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    let owner = cms
        .create(&PostParams::default(), &cm("owner", json!({})))
        .await?;
    let owner_ref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid, "controller": true}]);
    for n in ["dep1", "dep2"] {
        let d: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": n, "ownerReferences": owner_ref}}))?;
        cms.create(&PostParams::default(), &d).await?;
    }
    cms.delete("owner", &DeleteParams::background()).await?;
    wait_for("dependents collected", 10, || async {
        let a = cms.get_opt("dep1").await.ok()?;
        let b = cms.get_opt("dep2").await.ok()?;
        (a.is_none() && b.is_none()).then_some(())
    })
    .await;

    // Orphan keeps dependents and strips the reference.
    let owner = cms
        .create(&PostParams::default(), &cm("owner2", json!({})))
        .await?;
    let owner_ref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner.metadata.uid}]);
    let d: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "kept", "ownerReferences": owner_ref}}),
    )?;
    cms.create(&PostParams::default(), &d).await?;
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    cms.delete("owner2", &dp).await?;
    let kept = cms.get("kept").await?;
    assert!(kept.metadata.owner_references.is_none());

    // Foreground: the owner stays (foregroundDeletion) until its dependents are gone.
    let owner = cms
        .create(&PostParams::default(), &cm("owner3", json!({})))
        .await?;
    let owner_ref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner3", "uid": owner.metadata.uid}]);
    let mut held: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held-dep", "ownerReferences": owner_ref}}),
    )?;
    held.metadata.finalizers = Some(vec!["example.com/guard".into()]);
    cms.create(&PostParams::default(), &held).await?;
    let r = cms.delete("owner3", &DeleteParams::foreground()).await?;
    let pending = r.left().expect("owner still there");
    assert!(
        pending
            .metadata
            .finalizers
            .unwrap()
            .contains(&"foregroundDeletion".to_string())
    );
    wait_for("dependent terminating", 10, || async {
        cms.get("held-dep")
            .await
            .ok()?
            .metadata
            .deletion_timestamp
            .map(|_| ())
    })
    .await;
    assert!(
        cms.get_opt("owner3").await?.is_some(),
        "held by its dependent's finalizer"
    );
    cms.patch(
        "held-dep",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    wait_for("owner gone", 10, || async {
        cms.get_opt("owner3").await.ok()?.is_none().then_some(())
    })
    .await;
    // Foreground without dependents is immediate.
    cms.create(&PostParams::default(), &cm("lonely", json!({})))
        .await?;
    assert!(
        cms.delete("lonely", &DeleteParams::foreground())
            .await?
            .is_right()
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn legacy_discovery_lists_everything() -> Result<()> {
    let c = start().await;
    let discovery = Discovery::new(c.client()?).run().await?;
    let kinds: Vec<String> = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .map(|(ar, _)| ar.kind)
        .collect();
    for k in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "StatefulSet",
        "CronJob",
        "Ingress",
        "StorageClass",
        "VolumeSnapshot",
        "ClusterRole",
        "ValidatingWebhookConfiguration",
        "CustomResourceDefinition",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let v = c.client()?.apiserver_version().await?;
    let minor: u32 = v.minor.parse()?;
    assert!((27..=33).contains(&minor));
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn kubeconfig_works_for_kube_and_clusters_are_separate() -> Result<()> {
    let a = start().await;
    let b = start_with(ferry_sim::SimOptions {
        name: "other".into(),
        ..Default::default()
    })
    .await;
    let kc = kube::config::Kubeconfig::read_from(a.kubeconfig_path())?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    let client = kube::Client::try_from(cfg)?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(&PostParams::default(), &cm("only-in-a", json!({})))
        .await?;
    let in_b: Api<ConfigMap> = Api::namespaced(b.client()?, "default");
    assert!(in_b.get_opt("only-in-a").await?.is_none());
    assert_ne!(a.token(), b.token());
    let r = raw(
        b.url(),
        "GET",
        "/api/v1/namespaces",
        &[("Authorization", &format!("Bearer {}", a.token()))],
        b"",
    )
    .await?;
    assert_eq!(r.status, 401, "one cluster's token does not open the other");
    a.stop().await;
    b.stop().await;
    Ok(())
}

/// What `ferry sim` runs: kubeconfig written (0600), then served until the task ends.
#[tokio::test]
async fn serve_until_killed_writes_a_usable_kubeconfig() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("out").join("kubeconfig");
    let args = ferry_sim::ServeArgs {
        name: "demo".into(),
        data_dir: dir.path().join("data"),
        kubeconfig: kc.clone(),
        port: 0,
        minor: 30,
        cluster_objects: None,
        pod_ready_delay_ms: 100,
    };
    let task = tokio::spawn(ferry_sim::serve_until_killed(args));
    let kc_text = wait_for("kubeconfig", 10, || {
        let kc = kc.clone();
        async move {
            std::fs::read_to_string(&kc)
                .ok()
                .filter(|t| t.contains("current-context: demo"))
        }
    })
    .await;
    assert!(kc_text.contains("server: http://127.0.0.1:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&kc)?.permissions().mode() & 0o777, 0o600);
    }
    let cfg = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kc)?,
        &kube::config::KubeConfigOptions {
            context: Some("demo".into()),
            ..Default::default()
        },
    )
    .await?;
    let nss: Api<Namespace> = Api::all(kube::Client::try_from(cfg)?);
    assert!(nss.get_opt("kube-system").await?.is_some());
    task.abort();
    let _ = task.await;
    Ok(())
}

#[tokio::test]
async fn immutable_fields_and_write_only_fields() -> Result<()> {
    let c = start().await;
    let client = c.client()?;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("web"))
        .await?;
    let e = api_err(
        deps.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.is_invalid());
    assert_eq!(e.details.unwrap().causes[0].field, "spec.selector");

    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), "default");
    let s: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "pg"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
    }))?;
    sts.create(&PostParams::default(), &s).await?;
    sts.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await?;
    let e = api_err(
        sts.patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"serviceName": "other"}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.is_invalid());
    assert!(
        e.message
            .contains("updates to statefulset spec for fields other than"),
        "{}",
        e.message
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut frozen = cm("frozen", json!({}));
    frozen.immutable = Some(true);
    cms.create(&PostParams::default(), &frozen).await?;
    let e = api_err(
        cms.patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "2"}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.is_invalid());
    cms.patch(
        "frozen",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"ok": "yes"}}})),
    )
    .await?;

    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}),
    )?;
    let created = svcs.create(&PostParams::default(), &svc).await?;
    let spec = created.spec.clone().unwrap();
    let ip = spec.cluster_ip.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
    let mut again = created.clone();
    again.spec.as_mut().unwrap().cluster_ip = None;
    again.spec.as_mut().unwrap().cluster_ips = None;
    let replaced = svcs.replace("web", &PostParams::default(), &again).await?;
    assert_eq!(
        replaced.spec.unwrap().cluster_ip,
        Some(ip),
        "kept when omitted"
    );
    let e = api_err(
        svcs.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterIP": "10.0.0.1"}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.is_invalid());

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, "default");
    let sec: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}))?;
    let s = secrets.create(&PostParams::default(), &sec).await?;
    assert!(s.string_data.is_none());
    assert_eq!(s.data.unwrap()["k"].0, b"v");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn lists_paginate_with_limit_and_continue() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    for i in 0..7 {
        cms.create(
            &PostParams::default(),
            &cm(&format!("p{i}"), json!({"page": "yes"})),
        )
        .await?;
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().labels("page=yes").limit(3);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = cms.list(&lp).await?;
        pages += 1;
        assert!(page.items.len() <= 3);
        names.extend(page.items.into_iter().filter_map(|o| o.metadata.name));
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => {
                assert!(page.metadata.remaining_item_count.unwrap() > 0);
                token = Some(t);
            }
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());
    let r = authed(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps?continue=garbage",
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn metadata_only_requests() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    cms.create(&PostParams::default(), &cm("meta", json!({"x": "y"})))
        .await?;
    let m = cms.get_metadata("meta").await?;
    assert_eq!(m.metadata.labels.unwrap()["x"], "y");
    let l = cms
        .list_metadata(&ListParams::default().labels("x=y"))
        .await?;
    assert_eq!(l.items.len(), 1);
    assert!(l.metadata.resource_version.is_some());
    let r = authed(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps/meta",
        "",
        b"",
    )
    .await;
    assert_eq!(
        r.json()["data"]["a"],
        "1",
        "full objects without the metadata Accept"
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn pod_security_admission_refuses_pods_the_namespace_level_forbids() -> Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    let c = start().await;
    let client = c.client()?;
    let nss: Api<Namespace> = Api::all(client.clone());
    for (ns, level) in [("locked", "restricted"), ("base", "baseline")] {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns,
                "labels": {"pod-security.kubernetes.io/enforce": level}}}))?,
        )
        .await?;
    }
    let root: Pod = serde_json::from_value(json!({
        "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "tar", "image": "debian:12-slim"}]}
    }))?;

    let locked: Api<Pod> = Api::namespaced(client.clone(), "locked");
    let e = api_err(
        locked
            .create(&PostParams::default(), &root)
            .await
            .unwrap_err(),
    );
    assert!(e.is_forbidden());
    assert!(
        e.message.starts_with(
            "pods \"root\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"tar\" must set securityContext.allowPrivilegeEscalation=false)"
        ),
        "{}",
        e.message
    );
    assert!(locked.get_opt("root").await?.is_none());
    assert_eq!(c.create_count("Pod", "locked", "root"), 0);

    // Baseline admits a root pod; restricted one that runs as non-root.
    let base: Api<Pod> = Api::namespaced(client.clone(), "base");
    base.create(&PostParams::default(), &root).await?;
    let mut hardened = root.clone();
    hardened.spec.as_mut().unwrap().containers[0].security_context =
        Some(serde_json::from_value(json!({
            "allowPrivilegeEscalation": false, "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
        }))?);
    locked.create(&PostParams::default(), &hardened).await?;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn resource_quota_admission_refuses_pods_that_do_not_say_or_do_not_fit() -> Result<()> {
    use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
    let c = start().await;
    let client = c.client()?;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "default");
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "compute"},
                "spec": {"hard": {"requests.cpu": "1", "limits.memory": "1Gi"}}}))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str, resources: Value| -> Result<Pod> {
        Ok(serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": resources}]}}))?)
    };
    let e = api_err(
        pods.create(&PostParams::default(), &pod("bare", json!({}))?)
            .await
            .unwrap_err(),
    );
    assert!(e.is_forbidden());
    assert_eq!(
        e.message,
        "pods \"bare\" is forbidden: failed quota: compute: must specify limits.memory for: c; requests.cpu for: c"
    );
    let sized = json!({"requests": {"cpu": "600m"}, "limits": {"memory": "512Mi"}});
    pods.create(&PostParams::default(), &pod("first", sized.clone())?)
        .await?;
    // The quota controller keeps the usage in the quota's status.
    let status = wait_for("quota usage", 10, || async {
        let q = quotas.get("compute").await.ok()?;
        let st = q.status?;
        (st.used.as_ref()?.get("requests.cpu")?.0 == "600m").then_some(st)
    })
    .await;
    assert_eq!(status.used.unwrap()["limits.memory"].0, "512Mi");
    assert_eq!(status.hard.unwrap()["requests.cpu"].0, "1");
    let qos = wait_for("the pod's QoS class", 10, || async {
        pods.get("first").await.ok()?.status?.qos_class
    })
    .await;
    assert_eq!(qos, "Burstable");
    let e = api_err(
        pods.create(&PostParams::default(), &pod("second", sized)?)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "pods \"second\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"
    );
    c.stop().await;
    Ok(())
}

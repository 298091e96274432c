//! Watch through kube: resume, bookmarks, timeouts, expiry, selectors, watcher relists.

mod common;

use std::time::Duration;

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use common::*;
use ferry_sim::SimOptions;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"w": "yes"}}, "data": {"a": "1"}}),
    )
    .unwrap()
}

async fn next_event(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
) -> WatchEvent<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("event within deadline")
        .expect("stream open")
        .expect("event parses")
}

fn name_of(e: &WatchEvent<ConfigMap>) -> (String, String) {
    match e {
        WatchEvent::Added(o) => ("ADDED".into(), o.metadata.name.clone().unwrap()),
        WatchEvent::Modified(o) => ("MODIFIED".into(), o.metadata.name.clone().unwrap()),
        WatchEvent::Deleted(o) => ("DELETED".into(), o.metadata.name.clone().unwrap()),
        WatchEvent::Bookmark(b) => ("BOOKMARK".into(), b.metadata.resource_version.clone()),
        WatchEvent::Error(e) => ("ERROR".into(), e.code.to_string()),
    }
}

#[tokio::test]
async fn watch_from_resource_version_in_order_once() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    let a = cms.create(&PostParams::default(), &cm("a")).await?;
    let rv = a.metadata.resource_version.clone().unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await?;
    cms.create(&PostParams::default(), &cm("b")).await?;

    let mut s = cms
        .watch(&WatchParams::default().labels("w=yes"), &rv)
        .await?
        .boxed();
    assert_eq!(
        name_of(&next_event(&mut s).await),
        ("MODIFIED".into(), "a".into())
    );
    assert_eq!(
        name_of(&next_event(&mut s).await),
        ("ADDED".into(), "b".into())
    );
    // Live events follow; the DELETED object carries the deletion's resourceVersion.
    cms.delete("a", &DeleteParams::default()).await?;
    match next_event(&mut s).await {
        WatchEvent::Deleted(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("a"));
            assert_eq!(
                o.metadata.resource_version,
                Some(c.resource_version().to_string())
            );
        }
        other => panic!("expected DELETED, got {other:?}"),
    }
    // Label changes move objects in and out of a selected watch.
    cms.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"w": "no"}}})),
    )
    .await?;
    assert_eq!(
        name_of(&next_event(&mut s).await),
        ("DELETED".into(), "b".into())
    );
    cms.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"w": "yes"}}})),
    )
    .await?;
    assert_eq!(
        name_of(&next_event(&mut s).await),
        ("ADDED".into(), "b".into())
    );

    // resourceVersion 0: current objects first.
    let mut s0 = cms
        .watch(&WatchParams::default().fields("metadata.name=b"), "0")
        .await?
        .boxed();
    assert_eq!(
        name_of(&next_event(&mut s0).await),
        ("ADDED".into(), "b".into())
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn bookmarks_carry_kind_and_timeouts_end_streams() -> Result<()> {
    let c = start_with(SimOptions {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    let rv = c.resource_version().to_string();
    let mut s = cms
        .watch(&WatchParams::default().timeout(2), &rv)
        .await?
        .boxed();
    match next_event(&mut s).await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.types.kind, "ConfigMap");
            assert_eq!(b.types.api_version, "v1");
            assert_eq!(b.metadata.resource_version, rv);
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // timeoutSeconds=2 ends the stream cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = s.next().await {
            e?;
        }
        anyhow::Ok(())
    })
    .await;
    assert!(ended.is_ok(), "stream ended after timeoutSeconds");

    // Raw form: ?&watch=true with an empty first component, bookmarks off.
    let r = authed(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps?&watch=true&timeoutSeconds=1&resourceVersion=0",
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let first: serde_json::Value = serde_json::from_str(r.body.lines().next().unwrap())?;
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["kind"], "ConfigMap");
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn too_old_resource_version_is_an_in_stream_410() -> Result<()> {
    let c = start_with(SimOptions {
        event_history: 5,
        ..Default::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}")))
            .await?;
    }
    let mut s = cms.watch(&WatchParams::default(), "1").await?.boxed();
    match next_event(&mut s).await {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
            assert!(
                e.message.starts_with("too old resource version: 1 ("),
                "{}",
                e.message
            );
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await?
            .is_none()
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn kube_watcher_sees_every_change_and_relists_after_expiry() -> Result<()> {
    let c = start_with(SimOptions {
        event_history: 3,
        ..Default::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    for streaming in [false, true] {
        let cfg = if streaming {
            watcher::Config::default().streaming_lists()
        } else {
            watcher::Config::default()
        };
        let mut s = watcher(cms.clone(), cfg.labels("w=yes")).boxed();
        let mut init_done = false;
        while !init_done {
            let e = tokio::time::timeout(Duration::from_secs(10), s.try_next())
                .await??
                .expect("event");
            init_done = matches!(e, watcher::Event::InitDone);
        }
        let name = format!("live-{streaming}");
        cms.create(&PostParams::default(), &cm(&name)).await?;
        let seen = loop {
            let e = tokio::time::timeout(Duration::from_secs(10), s.try_next())
                .await??
                .expect("event");
            if let watcher::Event::Apply(o) = e {
                break o.metadata.name.unwrap();
            }
        };
        assert_eq!(seen, name);
    }

    // Drop the stream after one event, write past the history, and the watcher
    // must relist (Init) to catch up.
    let mut s = watcher(cms.clone(), watcher::Config::default().labels("w=yes"))
        .default_backoff()
        .boxed();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), s.try_next())
            .await??
            .expect("event");
        if matches!(e, watcher::Event::InitDone) {
            break;
        }
    }
    c.set_faults(ferry_sim::FaultConfig {
        drop_watch_after: Some(1),
        ..Default::default()
    });
    cms.create(&PostParams::default(), &cm("x0")).await?;
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), s.try_next()).await?;
        if let Ok(Some(watcher::Event::Apply(_))) = e {
            break;
        }
    }
    for i in 1..10 {
        cms.create(&PostParams::default(), &cm(&format!("x{i}")))
            .await?;
    }
    c.clear_faults();
    let mut relisted = false;
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 9 {
        // Errors (the dropped stream, the 410) surface as items; the watcher recovers by itself.
        let Ok(Some(item)) = tokio::time::timeout_at(deadline, s.next()).await else {
            panic!("watcher stalled; saw {seen:?}");
        };
        match item {
            Ok(watcher::Event::Init) => relisted = true,
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                let n = o.metadata.name.unwrap();
                if n != "x0" && n.starts_with('x') {
                    seen.insert(n);
                }
            }
            _ => {}
        }
    }
    assert!(relisted, "an expired resume point makes the watcher relist");
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn namespace_deletion_is_seen_as_deleted() -> Result<()> {
    let c = start().await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client()?);
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "gone"}}))?,
    )
    .await?;
    let rv = c.resource_version().to_string();
    let mut s = nss
        .watch(&WatchParams::default().fields("metadata.name=gone"), &rv)
        .await?
        .boxed();
    nss.delete("gone", &DeleteParams::background()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = tokio::time::timeout_at(deadline, s.next())
            .await?
            .expect("open")?;
        if let WatchEvent::Deleted(n) = e {
            assert_eq!(n.metadata.name.as_deref(), Some("gone"));
            break;
        }
    }
    c.stop().await;
    Ok(())
}

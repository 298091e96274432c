//! Fault injection seen through kube: errors by verb/resource, retries,
//! commit-then-500, latency, dropped watches.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use common::*;
use ferry_sim::{FaultConfig, FaultRule};

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn injected_errors_by_verb_and_resource() -> Result<()> {
    let c = start().await;
    let plain: Api<ConfigMap> = Api::namespaced(c.client_without_retry()?, "default");
    c.set_faults(FaultConfig {
        seed: 3,
        rules: vec![
            FaultRule {
                verb: Some("create".into()),
                resource: Some("configmaps".into()),
                rate: 1.0,
                code: 500,
                ..Default::default()
            },
            FaultRule {
                verb: Some("get".into()),
                rate: 1.0,
                code: 429,
                retry_after: Some(2),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    let rv = c.resource_version();
    assert_eq!(
        code(
            plain
                .create(&PostParams::default(), &cm("a"))
                .await
                .unwrap_err()
        ),
        500
    );
    assert_eq!(
        c.resource_version(),
        rv,
        "a plain injected error writes nothing"
    );
    assert_eq!(code(plain.get("kube-root-ca.crt").await.unwrap_err()), 429);
    let r = authed(
        &c,
        "GET",
        "/api/v1/namespaces/default/configmaps/x",
        "",
        b"",
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.json()["details"]["retryAfterSeconds"], 2);
    // Other verbs and resources pass.
    assert!(plain.list(&Default::default()).await.is_ok());
    assert_eq!(c.faults_injected(), 3);
    c.clear_faults();

    // kube's default retry absorbs a bounded number of 503s.
    c.set_faults(FaultConfig {
        rules: vec![FaultRule {
            verb: Some("create".into()),
            rate: 1.0,
            code: 503,
            max: Some(2),
            ..Default::default()
        }],
        ..Default::default()
    });
    let retrying: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    retrying
        .create(&PostParams::default(), &cm("retried"))
        .await?;
    assert_eq!(c.create_count("ConfigMap", "default", "retried"), 1);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_write_can_commit_and_still_fail() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client_without_retry()?, "default");
    c.set_faults(FaultConfig {
        rules: vec![FaultRule {
            verb: Some("create".into()),
            rate: 1.0,
            code: 500,
            commit: true,
            max: Some(1),
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(
        code(
            cms.create(&PostParams::default(), &cm("ghost"))
                .await
                .unwrap_err()
        ),
        500
    );
    assert!(cms.get_opt("ghost").await?.is_some(), "the write committed");
    assert_eq!(c.create_count("ConfigMap", "default", "ghost"), 1);
    let e = cms
        .create(&PostParams::default(), &cm("ghost"))
        .await
        .unwrap_err();
    assert_eq!(code(e), 409, "a retry finds it already there");
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn latency_and_dropped_watches() -> Result<()> {
    let c = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client()?, "default");
    c.set_faults(FaultConfig {
        latency_ms: 150,
        ..Default::default()
    });
    let t = Instant::now();
    cms.get("kube-root-ca.crt").await?;
    assert!(t.elapsed() >= Duration::from_millis(150));

    c.set_faults(FaultConfig {
        drop_watch_after: Some(2),
        ..Default::default()
    });
    let mut s = cms.watch(&WatchParams::default(), "0").await?.boxed();
    for i in 0..3 {
        cms.create(&PostParams::default(), &cm(&format!("w{i}")))
            .await?;
    }
    let mut events = 0;
    // kube ends the event stream when the connection breaks (it may or may not surface an error item).
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), s.next()).await? {
        match item {
            Ok(WatchEvent::Added(_)) => events += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(events, 2, "the stream broke after exactly two events");
    c.stop().await;
    Ok(())
}

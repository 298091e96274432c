//! The daemon killed with SIGKILL in the middle of a clone, several times,
//! and restarted: the clone ends Healthy, and `ferry events` shows the
//! interruptions. SIGTERM: the same, with no compensation at all.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, Env, Sim, code, json_of, stdout, wait_until};
use ferry_steps::cluster::Clusters;
use serde_json::{Value, json};

const APP: &str = include_str!("../../steps/tests/fixtures/sim/app.yaml");

fn seed(kubeconfig: &Path) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = Clusters::from_paths(&[kubeconfig.to_owned()])
            .unwrap()
            .get("prod")
            .await
            .unwrap();
        for doc in serde_yaml::Deserializer::from_str(APP) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                c.apply(&v).await.unwrap();
            }
        }
    });
}

fn setup() -> (Env, Sim, Sim) {
    let env = Env::new();
    env.write_config("");
    let prod = Sim::start(env.root(), "prod");
    let staging = Sim::start(env.root(), "staging");
    seed(&prod.kubeconfig);
    (env, prod, staging)
}

fn args(prod: &Sim, staging: &Sim) -> Vec<String> {
    vec![
        "--kubeconfig".into(),
        prod.kubeconfig.display().to_string(),
        "--kubeconfig".into(),
        staging.kubeconfig.display().to_string(),
    ]
}

fn events_of(d: &Daemon) -> Vec<String> {
    let out = d.ferry(&["events", "shop", "-o", "jsonl"]);
    stdout(&out)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            match &v["event"] {
                Value::String(s) => s.clone(),
                Value::Object(m) => m.keys().next().unwrap().clone(),
                other => other.to_string(),
            }
        })
        .collect()
}

fn phase(d: &Daemon) -> String {
    json_of(&d.ferry(&["describe", "clone", "shop", "-o", "json"]))["phase"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn sigkill_mid_clone_three_times_then_the_clone_still_becomes_healthy() {
    let (env, prod, staging) = setup();
    let a = args(&prod, &staging);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    // Each life of the daemon freezes at a later step start, then is killed.
    let mut submitted = false;
    for point in [
        "step.start.after@2",
        "step.start.after@2",
        "step.start.after@2",
    ] {
        let mut with_fp = Daemon::spawn_env(&env, &a, &[("FERRY_FAILPOINT", point)]);
        with_fp.wait_ready();
        if !submitted {
            let out = with_fp.ferry(&[
                "clone",
                "shop",
                "--from",
                "prod",
                "--to",
                "staging",
                "-n",
                "shop:shop-copy",
            ]);
            assert_eq!(code(&out), 0, "{}", stdout(&out));
            submitted = true;
        }
        wait_until("the failpoint", Duration::from_secs(30), || {
            with_fp.stderr_text().contains("FAILPOINT ")
        });
        with_fp.kill();
    }
    let d = Daemon::start(&env, &a);
    wait_until("the clone to finish", Duration::from_secs(60), || {
        ["Succeeded", "RolledBack", "Failed"].contains(&phase(&d).as_str())
    });
    assert_eq!(phase(&d), "Succeeded", "{:?}", events_of(&d));
    let evs = events_of(&d);
    assert!(
        evs.iter().filter(|e| *e == "StepInterrupted").count() >= 3,
        "{evs:?}"
    );
    assert!(!evs.contains(&"CompensationStarted".to_owned()));
    assert_eq!(code(&d.ferry(&["verify", "shop"])), 0);
    let table = d.ferry(&["events", "shop", "-o", "table"]);
    assert!(
        stdout(&table).contains("StepInterrupted"),
        "{}",
        stdout(&table)
    );
    // Nothing on the destination was created twice.
    let counters = staging.counters();
    let creates = counters["creates"].as_array().expect("creates");
    assert!(
        creates
            .iter()
            .any(|c| c["kind"] == "ConfigMap" && c["name"] == "settings"),
        "{counters}"
    );
    let doubled: Vec<&Value> = creates
        .iter()
        .filter(|c| c["count"].as_u64() > Some(1))
        .collect();
    assert!(doubled.is_empty(), "created twice: {doubled:?}");
}

#[test]
fn sigterm_mid_clone_suspends_without_compensation_and_the_clone_resumes() {
    let (env, prod, staging) = setup();
    let a = args(&prod, &staging);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    // Slow the destination so the clone is still running when SIGTERM lands.
    staging.set_faults(&json!({"latencyMs": 150}));
    let mut d = Daemon::start(&env, &a);
    let out = d.ferry(&[
        "clone",
        "shop",
        "--from",
        "prod",
        "--to",
        "staging",
        "-n",
        "shop:shop-copy",
    ]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    wait_until("apply to start", Duration::from_secs(30), || {
        events_of(&d).iter().filter(|e| *e == "StepStarted").count() >= 3
    });
    let status = d.signal("TERM", Duration::from_secs(30));
    assert!(status.success(), "graceful exit: {status}");
    staging.set_faults(&json!({}));
    let d = Daemon::start(&env, &a);
    wait_until("the clone to finish", Duration::from_secs(60), || {
        ["Succeeded", "RolledBack", "Failed"].contains(&phase(&d).as_str())
    });
    let evs = events_of(&d);
    assert_eq!(phase(&d), "Succeeded", "{evs:?}");
    assert!(evs.contains(&"StepSuspended".to_owned()), "{evs:?}");
    assert!(
        !evs.contains(&"StepInterrupted".to_owned()),
        "graceful: no interruption: {evs:?}"
    );
    assert!(!evs.contains(&"CompensationStarted".to_owned()), "{evs:?}");
}

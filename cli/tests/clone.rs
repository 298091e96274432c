//! `ferry clone` end to end: a real daemon, its socket, and two simulated
//! clusters each served by a `ferry sim` process of its own.

mod common;

use std::path::Path;

use common::{Daemon, Env, Sim, code, json_of, stderr, stdout};
use ferry_steps::cluster::Clusters;
use serde_json::Value;

const APP: &str = include_str!("../../steps/tests/fixtures/sim/app.yaml");

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn seed(kubeconfig: &Path) {
    rt().block_on(async {
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

fn get(
    kubeconfig: &Path,
    context: &str,
    kind: (&str, &str),
    ns: Option<&str>,
    name: &str,
) -> Option<Value> {
    rt().block_on(async {
        let c = Clusters::from_paths(&[kubeconfig.to_owned()])
            .unwrap()
            .get(context)
            .await
            .unwrap();
        c.get(kind.0, kind.1, ns, name).await.unwrap()
    })
}

#[test]
fn clone_dry_run_then_wait_to_healthy_then_refusals_and_bad_specs() {
    let env = Env::new();
    env.write_config("");
    let prod = Sim::start(env.root(), "prod");
    let staging = Sim::start(env.root(), "staging");
    seed(&prod.kubeconfig);
    let d = Daemon::start(
        &env,
        &[
            "--kubeconfig",
            prod.kubeconfig.to_str().unwrap(),
            "--kubeconfig",
            staging.kubeconfig.to_str().unwrap(),
        ],
    );
    let clone = |extra: &[&str]| {
        let mut args = vec![
            "clone",
            "shop",
            "--from",
            "prod",
            "--to",
            "staging",
            "--namespace",
            "shop:shop-copy",
        ];
        args.extend_from_slice(extra);
        d.ferry(&args)
    };

    // The dry run shows the plan and writes nothing.
    let dry = clone(&["--dry-run"]);
    assert_eq!(code(&dry), 0, "{}{}", stdout(&dry), stderr(&dry));
    assert!(
        stdout(&dry).contains("shop -> shop-copy"),
        "{}",
        stdout(&dry)
    );
    assert!(!stdout(&dry).contains("aHVudGVyMg=="), "no Secret data");
    assert!(
        get(
            &staging.kubeconfig,
            "staging",
            ("v1", "Namespace"),
            None,
            "shop-copy"
        )
        .is_none()
    );
    let list = json_of(&d.ferry(&["get", "clones", "-o", "json"]));
    assert_eq!(
        list["items"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "a dry run leaves no record: {list}"
    );

    // The clone, followed to its end.
    let run = clone(&["--wait"]);
    assert_eq!(code(&run), 0, "{}{}", stdout(&run), stderr(&run));
    assert!(stdout(&run).contains("RunSucceeded"), "{}", stdout(&run));
    let cm = get(
        &staging.kubeconfig,
        "staging",
        ("v1", "ConfigMap"),
        Some("shop-copy"),
        "settings",
    )
    .expect("cloned");
    assert_eq!(cm["data"]["mode"], "production");
    let described = json_of(&d.ferry(&["describe", "clone", "shop", "-o", "json"]));
    assert_eq!(described["phase"], "Succeeded", "{described}");
    assert_eq!(code(&d.ferry(&["verify", "shop"])), 0);

    // The same destination again: refused (exit 2), every reason named.
    let again = d.ferry(&[
        "clone",
        "again",
        "--from",
        "prod",
        "--to",
        "staging",
        "-n",
        "shop:shop-copy",
        "--wait",
    ]);
    assert_eq!(code(&again), 2, "{}{}", stdout(&again), stderr(&again));
    assert!(stdout(&again).contains("shop-copy"), "{}", stdout(&again));

    // Bad specs: exit 2 naming the field; nothing recorded.
    let bad = d.ferry(&[
        "clone",
        "Not_A_Name",
        "--from",
        "prod",
        "--to",
        "staging",
        "-n",
        "shop:x",
    ]);
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    assert!(stderr(&bad).contains("name"), "{}", stderr(&bad));
    let nowhere = d.ferry(&[
        "clone", "x", "--from", "nowhere", "--to", "staging", "-n", "shop:x",
    ]);
    assert_eq!(code(&nowhere), 2, "{}", stderr(&nowhere));
    assert!(stderr(&nowhere).contains("nowhere"), "{}", stderr(&nowhere));
    let names: Vec<String> = json_of(&d.ferry(&["get", "clones", "-o", "json"]))["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["shop", "again"]);
}

//! `ferry clone` end to end: a real daemon, its socket, and two simulated
//! clusters each served by a `ferry sim` process of its own.

mod common;

use std::path::Path;

use common::{Daemon, Env, Sim, Unchanged, code, json_of, stderr, stdout};
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
    let untouched = Unchanged::of(&[&prod, &staging]);
    let dry = clone(&["--dry-run"]);
    untouched.check("the dry run");
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

    // The same destination again: refused (exit 2), every reason named,
    // nothing written on either cluster.
    let untouched = Unchanged::of(&[&prod, &staging]);
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
    untouched.check("the refused clone");

    // Bad specs, contexts and flags: exit 2 naming the field; nothing
    // recorded, nothing written on either cluster.
    let untouched = Unchanged::of(&[&prod, &staging]);
    let hooks = env.root().join("hooks.yaml");
    std::fs::write(
        &hooks,
        "- name: quiesce\n  stage: pre\n  command: [sync]\n  colour: blue\n",
    )
    .unwrap();
    let hooks_flag = format!("--hooks={}", hooks.display());
    for (args, named) in [
        (
            &[
                "Not_A_Name",
                "--from",
                "prod",
                "--to",
                "staging",
                "-n",
                "shop:x",
            ][..],
            "name",
        ),
        (
            &["x", "--from", "nowhere", "--to", "staging", "-n", "shop:x"],
            "nowhere",
        ),
        (
            &["x", "--from", "prod", "--to", "elsewhere", "-n", "shop:x"],
            "elsewhere",
        ),
        // In-cluster, the destination namespace must differ from the source.
        (
            &["x", "--from", "prod", "--to", "prod", "-n", "shop"],
            "namespaces",
        ),
        (
            &[
                "x",
                "--from",
                "prod",
                "--to",
                "staging",
                "-n",
                "shop:Bad_Ns",
            ],
            "Bad_Ns",
        ),
        (
            &[
                "x",
                "--from",
                "prod",
                "--to",
                "staging",
                "-n",
                "shop:x",
                "--storage-class",
                "gp3",
            ],
            "--storage-class",
        ),
        (
            &[
                "x",
                "--from",
                "prod",
                "--to",
                "staging",
                "-n",
                "shop:x",
                "--include",
                "colour=blue",
            ],
            "colour",
        ),
        (
            &[
                "x",
                "--from",
                "prod",
                "--to",
                "staging",
                "-n",
                "shop:x",
                "--health-timeout",
                "5y",
            ],
            "5y",
        ),
        (
            &[
                "x",
                "--from",
                "prod",
                "--to",
                "staging",
                "-n",
                "shop:x",
                &hooks_flag,
            ],
            "colour",
        ),
    ] {
        for dry_run in [false, true] {
            let mut a = vec!["clone"];
            a.extend_from_slice(args);
            if dry_run {
                a.push("--dry-run");
            }
            let out = d.ferry(&a);
            assert_eq!(code(&out), 2, "{a:?}: {}{}", stdout(&out), stderr(&out));
            assert!(stderr(&out).contains(named), "{a:?}: {}", stderr(&out));
        }
    }
    // Specs only the API takes: unknown fields, in the spec and in a namespace mapping.
    for (body, named) in [
        (
            r#"{"name": "x", "sourceContext": "prod", "destinationContext": "staging", "namespaces": [{"source": "shop", "destination": "x", "labels": {"team": "web"}}]}"#,
            "labels",
        ),
        (
            r#"{"name": "x", "sourceContext": "prod", "destinationContext": "staging", "namespaces": [{"source": "shop", "destination": "x"}], "kubeconfig": "apiVersion: v1"}"#,
            "kubeconfig",
        ),
        (
            r#"{"name": "x", "sourceContext": "prod", "destinationContext": "staging", "namespaces": []}"#,
            "namespaces",
        ),
        (
            r#"{"name": "x", "sourceContext": "prod"}"#,
            "destinationContext",
        ),
        (r#"["not", "an", "object"]"#, "spec"),
    ] {
        for path in ["/v1/clones", "/v1/clones?dryRun=true"] {
            let (status, answer) = d.http_body("POST", path, body);
            assert_eq!(status, 400, "{path} {body}: {answer}");
            assert!(answer.contains(named), "{path} {body}: {answer}");
        }
    }
    untouched.check("the bad specs");
    let names: Vec<String> = json_of(&d.ferry(&["get", "clones", "-o", "json"]))["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["shop", "again"]);
}

const VOLUMES: &str = include_str!("../../steps/tests/fixtures/sim/volumes.yaml");

/// Deploys the `db` app (a StatefulSet's claim and a shared RWX claim) to
/// prod and fills its volumes; returns the bytes written.
fn seed_volumes(kubeconfig: &Path) -> u64 {
    rt().block_on(async {
        let c = Clusters::from_paths(&[kubeconfig.to_owned()])
            .unwrap()
            .get("prod")
            .await
            .unwrap();
        for doc in serde_yaml::Deserializer::from_str(VOLUMES) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                c.apply(&v).await.unwrap();
            }
        }
        let mut written = 0;
        for (claim, size) in [("shared", 3_000_000u32), ("data-pg-0", 2_000_000)] {
            // The simulator provisions a directory per volume, named in its PV.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let dir = loop {
                let pvc = c
                    .get("v1", "PersistentVolumeClaim", Some("db"), claim)
                    .await
                    .unwrap();
                if let Some(pv) = pvc
                    .as_ref()
                    .and_then(|p| p.pointer("/spec/volumeName"))
                    .and_then(Value::as_str)
                {
                    let pv = c.get("v1", "PersistentVolume", None, pv).await.unwrap();
                    if let Some(dir) = pv
                        .as_ref()
                        .and_then(|p| p.pointer("/metadata/annotations/sim.ferry.dev~1path"))
                        .and_then(Value::as_str)
                    {
                        break std::path::PathBuf::from(dir);
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "claim db/{claim} never bound"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            };
            let data: Vec<u8> = (0..size)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect();
            std::fs::write(dir.join("data.bin"), &data).unwrap();
            written += u64::from(size);
        }
        written
    })
}

#[test]
fn wait_shows_each_volume_moving_and_metrics_count_its_bytes() {
    let env = Env::new();
    env.write_config("");
    let prod = Sim::start(env.root(), "prod");
    let staging = Sim::start(env.root(), "staging");
    let written = seed_volumes(&prod.kubeconfig);
    let d = Daemon::start(
        &env,
        &[
            "--kubeconfig",
            prod.kubeconfig.to_str().unwrap(),
            "--kubeconfig",
            staging.kubeconfig.to_str().unwrap(),
        ],
    );
    let run = d.ferry(&[
        "clone",
        "db",
        "--from",
        "prod",
        "--to",
        "staging",
        "-n",
        "db:db-copy",
        "--storage-class",
        "ontap-nas=efs",
        "--wait",
    ]);
    let out = stdout(&run);
    assert_eq!(code(&run), 0, "{out}{}", stderr(&run));
    // stdout is not a terminal: plain rows, no cursor movement; each
    // volume's progress is in its StepProgress rows, its total in its success.
    assert!(!out.contains('\x1b'), "{out}");
    let rows = |event: &str, volume: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains(event) && l.contains(&format!("volume/db-copy/{volume}")))
            .map(str::to_owned)
            .collect()
    };
    for volume in ["shared", "data-pg-0"] {
        let progress = rows("StepProgress", volume);
        // Bytes against the size measured before tar, the rate between two
        // checkpoints' timestamps, and the time left.
        assert!(
            progress
                .iter()
                .any(|r| r.contains(" upload ") && r.contains(" of ~") && r.contains("/s, ETA ")),
            "{volume}: {out}"
        );
        assert!(
            progress.iter().any(|r| r.contains(" download ")),
            "{volume}: {out}"
        );
        let done = rows("StepSucceeded", volume);
        assert!(
            done.len() == 1 && done[0].contains("done, ") && done[0].contains("MiB moved"),
            "{volume}: {out}"
        );
    }

    // The metric counts each volume's tar stream once, both legs.
    let events = stdout(&d.ferry(&["events", "db", "-o", "jsonl"]));
    let moved: u64 = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let ok = &v["event"]["StepSucceeded"];
            ok["step"]
                .as_str()
                .is_some_and(|s| s.starts_with("volume/"))
                .then(|| ok["output"]["bytes"].as_u64().unwrap())
        })
        .sum();
    assert!(
        moved > written,
        "the tar streams carry the {written} bytes written and their headers: {moved}"
    );
    let want = [
        format!("ferry_volume_bytes_moved_total{{phase=\"upload\"}} {moved}"),
        format!("ferry_volume_bytes_moved_total{{phase=\"download\"}} {moved}"),
    ];
    common::wait_until("the metrics", std::time::Duration::from_secs(20), || {
        let (status, text) = d.http("GET", "/metrics");
        status == 200 && want.iter().all(|w| text.lines().any(|l| l == w))
    });
}

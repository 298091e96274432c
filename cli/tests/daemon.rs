//! `ferry daemon` and every CLI verb end to end: a real daemon process on a
//! real socket over a state dir populated with runs of the `Work` workflow.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn every_cli_verb_end_to_end() {
    let env = Env::new();
    env.populate();
    env.write_config("");
    let mut d = Daemon::start(&env, &[]);

    // The socket is the owner's alone.
    let meta = std::fs::symlink_metadata(env.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // The unfinished run is reported, and everything else is served.
    let log = d.stderr_text();
    assert!(log.contains("cannot be resumed"), "{log}");
    let list = json_of(&d.ferry(&["get", "clones", "-o", "json"]));
    assert_eq!(
        names_phases(&list),
        [
            ("ok", "Succeeded"),
            ("refused", "Refused"),
            ("rolled", "RolledBack"),
            ("secret", "Succeeded"),
            ("stuck", "Running")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let stuck = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "stuck")
        .unwrap();
    assert!(
        stuck["error"]
            .as_str()
            .unwrap()
            .contains("unknown kind work"),
        "{stuck}"
    );
    assert_eq!(list["items"][0]["terminal"], true);

    // Filters, and bad filters.
    let ok = json_of(&d.ferry(&["get", "clones", "--phase", "succeeded", "-o", "json"]));
    assert_eq!(names_phases(&ok).len(), 2);
    let named = json_of(&d.ferry(&["get", "clones", "roll", "-o", "json"]));
    assert_eq!(
        names_phases(&named),
        [("rolled".to_owned(), "RolledBack".to_owned())]
    );
    let bad = d.ferry(&["get", "clones", "--phase", "Sideways"]);
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("Sideways") && stderr(&bad).contains("not a phase"),
        "{}",
        stderr(&bad)
    );
    let table = d.ferry(&["get", "clones"]);
    assert_eq!(code(&table), 0);
    assert!(stdout(&table).starts_with("NAME"), "{}", stdout(&table));
    assert!(
        stdout(&table)
            .lines()
            .any(|l| l.starts_with("rolled") && l.contains("RolledBack")),
        "{}",
        stdout(&table)
    );
    let yaml = d.ferry(&["get", "clones", "-o", "yaml"]);
    assert!(
        stdout(&yaml).contains("phase: Refused"),
        "{}",
        stdout(&yaml)
    );

    // describe
    let v = json_of(&d.ferry(&["describe", "clone", "ok", "-o", "json"]));
    assert_eq!(v["phase"], "Succeeded");
    assert_eq!(v["sourceNamespaces"], serde_json::json!(["shop"]));
    let plan = v["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 2);
    for step in plan {
        assert_eq!(step["status"], "Succeeded");
        assert_eq!(step["attempts"], 0);
        assert!(
            step["startedMs"].as_u64().is_some() && step["durationMs"].as_u64().is_some(),
            "{step}"
        );
    }
    assert_eq!(plan[1]["deps"], serde_json::json!(["a"]));
    let v = json_of(&d.ferry(&["describe", "clone", "rolled", "-o", "json"]));
    assert_eq!(v["phase"], "RolledBack");
    assert!(
        v["plan"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "Compensated"),
        "{v}"
    );
    assert!(v["compensationReason"].as_str().is_some());
    let v = json_of(&d.ferry(&["describe", "clone", "refused", "-o", "json"]));
    assert_eq!(v["refusals"].as_array().unwrap().len(), 2);
    assert_eq!(v["refusals"][0]["rule"], "things must not be refused");
    let v = json_of(&d.ferry(&["describe", "clone", "stuck", "-o", "json"]));
    assert!(
        v["errors"][0].as_str().unwrap().contains("not resumable"),
        "{v}"
    );
    assert_eq!(v["plan"][0]["status"], "Running");
    let v = json_of(&d.ferry(&["describe", "clone", "secret", "-o", "json"]));
    assert_eq!(v["spec"]["objects"][0]["data"]["password"], "<redacted>");
    let text = d.ferry(&["describe", "clone", "refused"]);
    assert_eq!(code(&text), 0);
    for want in ["Phase:", "Refused", "Plan:", "Refusals:", "do not refuse"] {
        assert!(stdout(&text).contains(want), "{want}: {}", stdout(&text));
    }
    let missing = d.ferry(&["describe", "clone", "nope"]);
    assert_eq!(code(&missing), 1);
    assert!(
        stderr(&missing).contains("no clone named \"nope\""),
        "{}",
        stderr(&missing)
    );

    // events: the audit log, Secret data redacted everywhere.
    let ev = d.ferry(&["events", "secret"]);
    assert_eq!(code(&ev), 0, "{}", stderr(&ev));
    let out = stdout(&ev);
    assert!(!out.contains(SECRET), "a Secret value leaked: {out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 4);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i as u64);
    }
    assert_eq!(
        lines[0]["event"]["RunSubmitted"]["spec"]["objects"][0]["stringData"]["token"],
        "<redacted>"
    );
    assert_eq!(
        lines[1]["event"]["Planned"]["steps"][0]["input"]["objects"][0]["data"]["password"],
        "<redacted>"
    );
    assert_eq!(lines.last().unwrap()["event"], "RunSucceeded");
    for h in ["prev_hash", "hash"] {
        assert_eq!(lines[0][h].as_str().unwrap().len(), 64);
    }
    let table = d.ferry(&["events", "rolled", "-o", "table"]);
    assert_eq!(code(&table), 0);
    for want in [
        "SEQ",
        "RunSubmitted",
        "StepFailed",
        "CompensationStarted",
        "StepCompensated",
        "RunRolledBack",
    ] {
        assert!(stdout(&table).contains(want), "{want}: {}", stdout(&table));
    }
    // --follow of a finished clone ends at once, with its outcome as the exit code.
    assert_eq!(code(&d.ferry(&["events", "ok", "--follow"])), 0);
    assert_eq!(
        code(&d.ferry(&["events", "rolled", "--follow", "-o", "table"])),
        1
    );
    assert_eq!(code(&d.ferry(&["events", "refused", "--follow"])), 2);
    assert_eq!(code(&d.ferry(&["events", "nope"])), 1);

    // verify
    let v = json_of(&d.ferry(&["verify", "rolled", "-o", "json"]));
    assert_eq!(v["ok"], true);
    assert!(v["events"].as_u64().unwrap() >= 6);
    let out = d.ferry(&["verify", "ok"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("verified"), "{}", stdout(&out));

    // cancel: refused for a finished clone, and for one this daemon cannot drive.
    let c = d.ferry(&["cancel", "ok"]);
    assert_eq!(code(&c), 1);
    assert!(stderr(&c).contains("already finished"), "{}", stderr(&c));
    let c = d.ferry(&["cancel", "stuck"]);
    assert_eq!(code(&c), 1);
    assert!(stderr(&c).contains("cannot drive"), "{}", stderr(&c));

    // delete: only finished clones; then it is gone.
    let del = d.ferry(&["delete", "clone", "stuck"]);
    assert_eq!(code(&del), 1);
    assert!(
        stderr(&del).contains("has not finished"),
        "{}",
        stderr(&del)
    );
    let v = json_of(&d.ferry(&["delete", "clone", "ok", "-o", "json"]));
    assert_eq!(v["deleted"], true);
    let gone = d.ferry(&["describe", "clone", "ok"]);
    assert_eq!(code(&gone), 1);
    assert!(stderr(&gone).contains("no clone named"));
    assert_eq!(d.http("GET", "/v1/clones/ok").0, 404);
    assert_eq!(
        names_phases(&json_of(&d.ferry(&["get", "clones", "-o", "json"]))).len(),
        4
    );

    // health, metrics
    let (status, body) = d.http("GET", "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = d.http("GET", "/metrics");
    assert_eq!(status, 200);
    for want in [
        "ferry_clones{phase=\"Succeeded\"} 1",
        "ferry_clones{phase=\"Running\"} 1",
        "ferry_clones{phase=\"RolledBack\"} 1",
        "ferry_clones_not_resumable 1",
        "# TYPE ferry_step_duration_seconds histogram",
        "ferry_step_retries_total 0",
        "ferry_event_append_latency_seconds_count",
    ] {
        assert!(metrics.contains(want), "{want}: {metrics}");
    }

    // Bad requests: 400 naming the field; unknown endpoints 404; never a 500.
    let (status, body) = d.http("GET", "/v1/clones?colour=red");
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["field"],
        "colour"
    );
    let (status, body) = d.http("GET", "/v1/clones/secret/events?follow=perhaps");
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["field"],
        "follow"
    );
    for path in ["/v1/nothing", "/v1/clones/%FF%FE", "/v1/clones/a/b/c"] {
        let (status, body) = d.http("GET", path);
        assert!(status == 404 || status == 400, "{path}: {status} {body}");
        assert!(
            serde_json::from_str::<Value>(&body).unwrap()["error"]["message"].is_string(),
            "{body}"
        );
    }
    assert_eq!(d.http("PUT", "/v1/clones").0, 405);

    // completion
    let comp = d.ferry(&["completion", "bash"]);
    assert_eq!(code(&comp), 0);
    assert!(stdout(&comp).contains("ferry"));

    // A second daemon on the same state dir fails clearly, and the first keeps serving.
    let mut second = Daemon::spawn(
        &env,
        &["--socket", env.root().join("second.sock").to_str().unwrap()],
    );
    let status = second.child.wait().unwrap();
    assert!(!status.success());
    let msg = second.stderr_text();
    assert!(
        msg.contains("is in use by another ferry process")
            && msg.contains(env.state().to_str().unwrap()),
        "{msg}"
    );
    assert_eq!(code(&d.ferry(&["get", "clones"])), 0);
    // Another state dir on the same (live) socket fails too, and leaves the socket alone.
    let env2 = Env::new();
    env2.write_config("");
    let mut third = Daemon::spawn(&env2, &["--socket", env.socket().to_str().unwrap()]);
    assert!(!third.child.wait().unwrap().success());
    assert!(
        third.stderr_text().contains("in use by a running daemon"),
        "{}",
        third.stderr_text()
    );
    assert_eq!(code(&d.ferry(&["get", "clones"])), 0);

    // SIGTERM: graceful and prompt, even with a follow stream open; the store closes clean.
    let follow_out = env.root().join("follow.out");
    let follower = std::process::Command::new(FERRY)
        .args([
            "--socket",
            env.socket().to_str().unwrap(),
            "events",
            "stuck",
            "--follow",
        ])
        .stdout(std::fs::File::create(&follow_out).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "the follow stream's first events",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&follow_out)
                .unwrap_or_default()
                .lines()
                .count()
                >= 3
        },
    );
    let status = d.signal("TERM", Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", d.stderr_text());
    assert!(!env.socket().exists(), "the socket is removed at shutdown");
    assert!(env.state().join("CLEAN").exists(), "the store closed clean");
    let out = follower.wait_with_output().unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    // Unreachable daemon: exit 3 and how to start it.
    let out = cli(
        &["--socket", env.socket().to_str().unwrap()],
        &["get", "clones"],
    );
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("ferry daemon --state-dir"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn openapi_documents_exactly_what_answers() {
    let env = Env::new();
    env.populate();
    env.write_config("");
    let d = Daemon::start(&env, &[]);
    let (status, body) = d.http("GET", "/v1/openapi.json");
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 8);
    let mut ops: Vec<(String, String, Value)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .iter()
                .map(|(m, op)| (path.clone(), m.to_uppercase(), op.clone()))
        })
        .collect();
    // Delete last, so every other operation sees the clone.
    ops.sort_by_key(|(_, m, _)| m == "DELETE");
    let mut checked = 0;
    for name in ["refused", "nope"] {
        for (path, method, op) in &ops {
            let url = path.replace("{name}", name);
            let (status, body) = d.http(method, &url);
            let documented = op["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {url}: {status} is not documented ({body})"
            );
            let per_clone = path.contains("{name}");
            let expected = match (name, per_clone, op["operationId"].as_str().unwrap()) {
                // No spec in the body: a bad request naming it.
                (_, false, "submitClone") => status == 400 && body.contains("\"field\":\"body\""),
                (_, false, _) => status == 200,
                ("nope", true, _) => status == 404,
                (_, true, "cancelClone") => status == 409,
                (_, true, _) => (200..300).contains(&status),
            };
            assert!(expected, "{method} {url}: {status} ({body})");
            checked += 1;
        }
    }
    // Hostile input never gets a 500, and every error is JSON.
    let long = "x".repeat(300);
    let names = [
        "%00",
        "..",
        "a%2Fb",
        "%FF%FE",
        "%E2%98%83",
        long.as_str(),
        "refusedd",
        "%20",
    ];
    let queries = [
        "",
        "?follow=",
        "?follow=yes",
        "?phase=%FF",
        "?name=%00",
        "?x",
        "?phase=Running&phase=Failed",
        "?%",
    ];
    for (path, method, _) in &ops {
        for name in names {
            for q in queries {
                let url = format!("{}{q}", path.replace("{name}", name));
                let (status, body) = d.http(method, &url);
                assert!(
                    status != 500 && status != 0,
                    "{method} {url}: {status} {body}"
                );
                if status >= 400 {
                    let v: Value = serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("{method} {url}: {e}: {body}"));
                    assert!(v["error"]["message"].is_string(), "{method} {url}: {body}");
                }
            }
        }
    }
    assert!(checked >= 18);
    // And nothing answers that is not documented: a few neighbours are 404/405.
    assert_eq!(d.http("POST", "/v1/clones/refused/verify").0, 405);
    assert_eq!(d.http("GET", "/v1/clones/refused/gc").0, 404);
}

#[test]
fn sigkill_and_restart_serve_the_same_runs() {
    let env = Env::new();
    env.populate();
    env.write_config("");
    let mut d = Daemon::start(&env, &[]);
    let before = names_phases(&json_of(&d.ferry(&["get", "clones", "-o", "json"])));
    let status = d.signal("KILL", Duration::from_secs(10));
    assert!(!status.success());
    // The stale socket is still there; the next daemon replaces it.
    assert!(env.socket().exists());
    let d = Daemon::start(&env, &[]);
    assert_eq!(
        names_phases(&json_of(&d.ferry(&["get", "clones", "-o", "json"]))),
        before
    );
    for name in ["ok", "rolled", "refused", "secret", "stuck"] {
        assert_eq!(
            json_of(&d.ferry(&["verify", name, "-o", "json"]))["ok"],
            true,
            "{name}"
        );
    }
    // FERRY_SOCKET stands for --socket.
    let out = std::process::Command::new(FERRY)
        .args(["get", "clones", "-o", "json"])
        .env("FERRY_SOCKET", env.socket())
        .output()
        .unwrap();
    assert_eq!(names_phases(&json_of(&out)), before);
    // SIGINT is as graceful as SIGTERM.
    let mut d = d;
    assert_eq!(
        d.signal("INT", Duration::from_secs(15)).code(),
        Some(0),
        "{}",
        d.stderr_text()
    );
    assert!(env.state().join("CLEAN").exists());
}

#[test]
fn retention_deletes_finished_records_only() {
    let env = Env::new();
    env.populate();
    env.write_config("[retention]\nfinished = \"1ms\"");
    let d = Daemon::start(&env, &[]);
    // The sweep runs at start: wait for it, with a deadline.
    wait_until("the retention sweep", Duration::from_secs(20), || {
        d.stderr_text().contains("retention deleted")
    });
    let left = names_phases(&json_of(&d.ferry(&["get", "clones", "-o", "json"])));
    assert_eq!(left, [("stuck".to_owned(), "Running".to_owned())]);
}

#[test]
fn bad_config_is_refused_naming_the_key_and_creates_nothing() {
    let cases = [
        (
            "colour = \"blue\"\n[buckets.local]\nurl = \"file:///tmp/b\"\n",
            "colour",
        ),
        (
            "[buckets.local]\nurl = \"ftp://example/x\"\n",
            "buckets.local.url",
        ),
        (
            "default_bucket = \"remote\"\n[buckets.local]\nurl = \"file:///tmp/b\"\n",
            "default_bucket",
        ),
        (
            "[buckets.local]\nurl = \"file:///tmp/b\"\n[limits]\nglobal_steps = 0\n",
            "limits.global_steps",
        ),
        ("tokens_file = \"tokens.toml\"\n", "tokens.toml"),
    ];
    // Clusters the daemon would reach: a bad config touches neither.
    let clusters = Env::new();
    let prod = Sim::start(clusters.root(), "prod");
    let staging = Sim::start(clusters.root(), "staging");
    let untouched = Unchanged::of(&[&prod, &staging]);
    let kubeconfigs = [
        "--kubeconfig",
        prod.kubeconfig.to_str().unwrap(),
        "--kubeconfig",
        staging.kubeconfig.to_str().unwrap(),
    ];
    for (text, key) in cases {
        let env = Env::new();
        std::fs::create_dir_all(env.config().parent().unwrap()).unwrap();
        std::fs::write(env.config(), text).unwrap();
        let mut d = Daemon::spawn(&env, &kubeconfigs);
        let status = d.child.wait().unwrap();
        let msg = d.stderr_text();
        assert!(!status.success(), "{text}");
        assert!(msg.contains(key), "{key}: {msg}");
        assert!(!env.state().exists(), "{key}: the state dir was created");
        assert!(
            !env.root().join("etc").join("keys").exists(),
            "{key}: key files were created"
        );
        assert!(
            !env.root().join("xdg").exists(),
            "{key}: key files were created"
        );
    }
    // A bad tokens file names the entry and key.
    let env = Env::new();
    env.write_config("tokens_file = \"tokens.toml\"");
    std::fs::write(
        env.config().with_file_name("tokens.toml"),
        "[[token]]\nname = \"ci\"\nhash = \"not-a-hash\"\nrole = \"admin\"\n",
    )
    .unwrap();
    let mut d = Daemon::spawn(&env, &kubeconfigs);
    assert!(!d.child.wait().unwrap().success());
    assert!(d.stderr_text().contains("`hash`"), "{}", d.stderr_text());
    assert!(!env.state().exists());
    // A selector that is not equality-based.
    std::fs::write(
        env.config().with_file_name("tokens.toml"),
        format!(
            "[[token]]\nname = \"ci\"\nhash = \"{}\"\nrole = \"member\"\nnamespace_selector = \"team in (a,b)\"\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let mut d = Daemon::spawn(&env, &kubeconfigs);
    assert!(!d.child.wait().unwrap().success());
    assert!(
        d.stderr_text().contains("`namespace_selector`"),
        "{}",
        d.stderr_text()
    );
    assert!(!env.state().exists());
    // --listen without TLS files is a usage error.
    let out = cli(
        &[],
        &[
            "daemon",
            "--state-dir",
            env.state().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(!env.state().exists());
    untouched.check("the refused configs");
}

#[test]
fn token_hash_prints_a_blake3_hash() {
    let a = cli(&[], &["token", "hash", "s3cret"]);
    assert_eq!(code(&a), 0);
    let h = stdout(&a).trim().to_owned();
    assert!(h.starts_with("blake3:") && h.len() == 7 + 64, "{h}");
    assert!(!h.contains("s3cret"));
    // From stdin, the same.
    let mut child = std::process::Command::new(FERRY)
        .args(["token", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out).trim(), h);
    let g = cli(&[], &["token", "generate"]);
    assert!(stdout(&g).trim().starts_with("ferry_"));
    assert!(stderr(&g).contains("blake3:"));
}

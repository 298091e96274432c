//! Members constrained by a namespace label selector, over the TLS listener,
//! with two simulated clusters: the labels a source namespace has when a
//! clone is submitted decide, are recorded with the clone, and decide every
//! later request about it without the cluster.

mod common;

use std::path::Path;

use common::*;
use ferry_steps::cluster::Clusters;
use serde_json::{Value, json};

const APP: &str = include_str!("../../steps/tests/fixtures/sim/app.yaml");
const ADMIN: &str = "admin-token-0123456789";
const NAMED: &str = "named-token-0123456789";
const LABELS: &str = "labels-token-0123456789";

fn hash(token: &str) -> String {
    let out = cli(&[], &["token", "hash", token]);
    assert_eq!(code(&out), 0);
    stdout(&out).trim().to_owned()
}

fn apply(kubeconfig: &Path, context: &str, docs: &[Value]) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = Clusters::from_paths(&[kubeconfig.to_owned()])
            .unwrap()
            .get(context)
            .await
            .unwrap();
        for v in docs {
            c.apply(v).await.unwrap();
        }
    });
}

fn app() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(APP)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn names(list: &Value) -> Vec<String> {
    names_phases(list).into_iter().map(|(n, _)| n).collect()
}

#[test]
fn a_selector_member_clones_by_the_labels_seen_at_submit() {
    let env = Env::new();
    env.write_config("tokens_file = \"tokens.toml\"");
    std::fs::write(
        env.config().with_file_name("tokens.toml"),
        format!(
            "[[token]]\nname = \"root\"\nhash = \"{}\"\nrole = \"admin\"\n\n\
             [[token]]\nname = \"web-by-name\"\nhash = \"{}\"\nrole = \"member\"\nnamespaces = [\"shop\"]\n\n\
             [[token]]\nname = \"web-by-label\"\nhash = \"{}\"\nrole = \"member\"\nnamespace_selector = \"team=web\"\n",
            hash(ADMIN),
            hash(NAMED),
            hash(LABELS)
        ),
    )
    .unwrap();
    let prod = Sim::start(env.root(), "prod");
    let staging = Sim::start(env.root(), "staging");
    // `shop` (labelled team=web, from the fixture) and `bank` (team=bank).
    let mut docs = app();
    docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bank", "labels": {"team": "bank"}}}));
    docs.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ledger", "namespace": "bank"}, "data": {"k": "v"}}));
    apply(&prod.kubeconfig, "prod", &docs);
    let (cert, key) = tls_files(&env);
    let d = Daemon::start(
        &env,
        &[
            "--kubeconfig",
            prod.kubeconfig.to_str().unwrap(),
            "--kubeconfig",
            staging.kubeconfig.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--log-format",
            "json",
        ],
    );
    let url = format!("https://{}", d.tls_addr());
    let as_ = |token: &str, args: &[&str]| {
        cli(
            &[
                "--server",
                url.as_str(),
                "--ca-file",
                cert.to_str().unwrap(),
                "--token",
                token,
            ],
            args,
        )
    };
    let clone = |who: Option<&str>, name: &str, from: &str, to: &str, ns: &str, extra: &[&str]| {
        let mut args = vec!["clone", name, "--from", from, "--to", to, "-n", ns];
        args.extend_from_slice(extra);
        match who {
            Some(t) => as_(t, &args),
            None => d.ferry(&args),
        }
    };

    // The selector member clones `shop`: its labels match at submit.
    let out = clone(
        Some(LABELS),
        "mine",
        "prod",
        "staging",
        "shop:shop-one",
        &["--wait"],
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    // What the daemon saw and decided is in the clone's record and its log.
    let v = json_of(&as_(LABELS, &["describe", "clone", "mine", "-o", "json"]));
    let admitted = &v["admission"];
    assert_eq!(admitted["by"], "web-by-label", "{v}");
    assert_eq!(admitted["role"], "member");
    assert_eq!(admitted["namespaceSelector"], "team=web");
    assert_eq!(admitted["sourceContext"], "prod");
    assert_eq!(admitted["sourceNamespaces"][0]["name"], "shop");
    assert_eq!(admitted["sourceNamespaces"][0]["labels"]["team"], "web");
    assert_eq!(admitted["sourceNamespaces"][0]["allowedBy"], "selector");
    let log = stdout(&as_(LABELS, &["events", "mine", "-o", "jsonl"]));
    let planned: Value = serde_json::from_str(log.lines().nth(1).unwrap()).unwrap();
    assert_eq!(
        planned["event"]["Planned"]["steps"][0]["input"]["admission"], *admitted,
        "the record is in the hash-chained log: {planned}"
    );
    assert_eq!(code(&as_(LABELS, &["verify", "mine"])), 0);

    // A namespace whose labels do not match: 403 naming the namespace and
    // the selector, for a clone and a dry run alike; nothing written
    // anywhere, nothing recorded.
    let untouched = Unchanged::of(&[&prod, &staging]);
    for extra in [&["--wait"][..], &["--dry-run"]] {
        let out = clone(
            Some(LABELS),
            "theirs",
            "prod",
            "staging",
            "bank:bank-copy",
            extra,
        );
        assert_eq!(code(&out), 1, "{extra:?}: {}", stderr(&out));
        let e = stderr(&out);
        assert!(
            e.contains("403") && e.contains("\"bank\"") && e.contains("team=web"),
            "{extra:?}: {e}"
        );
        assert!(
            !e.contains("team=bank"),
            "the member is not shown the namespace's labels: {e}"
        );
    }
    // A namespace that does not exist cannot match either.
    let out = clone(
        Some(LABELS),
        "ghost",
        "prod",
        "staging",
        "ghost:ghost-copy",
        &[],
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    untouched.check("the refused submissions");
    assert!(
        !names(&json_of(&as_(ADMIN, &["get", "clones", "-o", "json"])))
            .contains(&"theirs".to_owned())
    );

    // The owner's clones record labels too; a member sees those from its
    // namespaces, by name or by label, and no others. (The second clone of
    // `shop` is refused — its IngressClass is on staging now — and is on
    // record all the same.)
    for (name, ns, exit) in [
        ("bank-own", "bank:bank-copy", 0),
        ("shop-own", "shop:shop-two", 2),
    ] {
        let out = clone(None, name, "prod", "staging", ns, &["--wait"]);
        assert_eq!(code(&out), exit, "{name}: {}{}", stdout(&out), stderr(&out));
    }
    let by_label = json_of(&as_(LABELS, &["get", "clones", "-o", "json"]));
    assert_eq!(names(&by_label), ["mine", "shop-own"]);
    let by_name = json_of(&as_(NAMED, &["get", "clones", "-o", "json"]));
    assert_eq!(names(&by_name), ["mine", "shop-own"]);
    for token in [LABELS, NAMED] {
        let out = as_(token, &["describe", "clone", "bank-own"]);
        assert_eq!(code(&out), 1);
        assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    }

    // Relabelled afterwards: existing clones keep the labels they were
    // admitted with (no cluster is read to decide), a new clone sees the new ones.
    apply(
        &prod.kubeconfig,
        "prod",
        &[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "payments"}}}),
        ],
    );
    assert_eq!(
        names(&json_of(&as_(LABELS, &["get", "clones", "-o", "json"]))),
        ["mine", "shop-own"]
    );
    assert_eq!(code(&as_(LABELS, &["verify", "shop-own"])), 0);
    let out = as_(LABELS, &["cancel", "mine"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("409") && stderr(&out).contains("already finished"),
        "authorized, then a conflict: {}",
        stderr(&out)
    );
    let out = as_(LABELS, &["delete", "clone", "mine"]);
    assert!(stderr(&out).contains("may not delete"), "{}", stderr(&out));
    let untouched = Unchanged::of(&[&prod, &staging]);
    let out = clone(
        Some(LABELS),
        "again",
        "prod",
        "staging",
        "shop:shop-three",
        &[],
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("team=web"), "{}", stderr(&out));

    // Being allowed a source namespace gives nothing on its clones'
    // destination namespaces: not by name, and not by the labels they copied.
    for token in [LABELS, NAMED] {
        let out = clone(
            Some(token),
            "back",
            "staging",
            "prod",
            "shop-one:shop-back",
            &[],
        );
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        assert!(stderr(&out).contains("\"shop-one\""), "{}", stderr(&out));
    }
    let out = clone(
        Some(LABELS),
        "back",
        "staging",
        "prod",
        "shop-one:shop-back",
        &[],
    );
    assert!(
        stderr(&out).contains("created by a ferry clone"),
        "{}",
        stderr(&out)
    );
    untouched.check("the refused submissions");
}

//! The TCP listener: TLS only, bearer tokens, roles. A member sees and acts
//! only on clones whose source namespaces are all its own.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789";
const MEMBER: &str = "member-token-0123456789";
const SELECTOR_ONLY: &str = "selector-token-0123456789";

fn hash(token: &str) -> String {
    let out = cli(&[], &["token", "hash", token]);
    assert_eq!(code(&out), 0);
    stdout(&out).trim().to_owned()
}

#[test]
fn tls_listener_needs_tokens_and_enforces_roles() {
    let env = Env::new();
    env.populate();
    env.write_config("tokens_file = \"tokens.toml\"");
    let tokens = format!(
        "[[token]]\nname = \"root\"\nhash = \"{}\"\nrole = \"admin\"\n\n\
         [[token]]\nname = \"shop-team\"\nhash = \"{}\"\nrole = \"member\"\nnamespaces = [\"shop\"]\n\n\
         [[token]]\nname = \"labels\"\nhash = \"{}\"\nrole = \"member\"\nnamespace_selector = \"team=shop\"\n",
        hash(ADMIN),
        hash(MEMBER),
        hash(SELECTOR_ONLY)
    );
    std::fs::write(env.config().with_file_name("tokens.toml"), tokens).unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = env.root().join("tls.crt");
    let key_path = env.root().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let d = Daemon::start(
        &env,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
            "--log-format",
            "json",
        ],
    );
    // The JSON log names the bound address.
    let mut addr = String::new();
    wait_until("the TLS listener", Duration::from_secs(20), || {
        for line in d.stderr_text().lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            if v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("over TLS"))
            {
                addr = v["fields"]["addr"].as_str().unwrap().to_owned();
                return true;
            }
        }
        false
    });
    let url = format!("https://{addr}");
    let ca = cert_path.to_str().unwrap();
    let as_ = |token: Option<&str>, args: &[&str]| {
        let mut conn = vec!["--server", url.as_str(), "--ca-file", ca];
        if let Some(t) = token {
            conn.extend(["--token", t]);
        }
        cli(&conn, args)
    };

    // No token, a wrong token: 401.
    let out = as_(None, &["get", "clones"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("Authorization: Bearer") && stderr(&out).contains("401"),
        "{}",
        stderr(&out)
    );
    let out = as_(Some("guess"), &["get", "clones"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));

    // Admin: everything.
    let all = json_of(&as_(Some(ADMIN), &["get", "clones", "-o", "json"]));
    assert_eq!(names_phases(&all).len(), 5);
    assert_eq!(
        json_of(&as_(Some(ADMIN), &["verify", "rolled", "-o", "json"]))["ok"],
        true
    );

    // Member of `shop`: the `bank` clone is invisible and forbidden.
    let mine = json_of(&as_(Some(MEMBER), &["get", "clones", "-o", "json"]));
    let names: Vec<String> = names_phases(&mine).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["ok", "refused", "secret", "stuck"]);
    assert_eq!(
        names_phases(&json_of(&as_(
            Some(MEMBER),
            &["get", "clones", "--phase", "RolledBack", "-o", "json"]
        )))
        .len(),
        0
    );
    for args in [
        &["describe", "clone", "rolled"][..],
        &["events", "rolled"],
        &["verify", "rolled"],
        &["cancel", "rolled"],
        &["delete", "clone", "rolled"],
    ] {
        let out = as_(Some(MEMBER), args);
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(
            stderr(&out).contains("403") && stderr(&out).contains("may not access"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        json_of(&as_(
            Some(MEMBER),
            &["describe", "clone", "ok", "-o", "json"]
        ))["phase"],
        "Succeeded"
    );
    let ev = as_(Some(MEMBER), &["events", "secret"]);
    assert_eq!(code(&ev), 0);
    assert!(!stdout(&ev).contains(SECRET));
    // A member may not delete records, even its own.
    let out = as_(Some(MEMBER), &["delete", "clone", "ok"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("may not delete"), "{}", stderr(&out));
    // These clones were recorded without their namespaces' labels (not
    // submitted through the daemon): a selector matches nothing, deny by
    // default. tests/members.rs has selectors deciding on recorded labels.
    assert_eq!(
        names_phases(&json_of(&as_(
            Some(SELECTOR_ONLY),
            &["get", "clones", "-o", "json"]
        )))
        .len(),
        0
    );

    // TLS is required: the client refuses http://, an untrusted cert is unreachable, and plain HTTP gets no HTTP answer.
    let out = cli(
        &["--server", &format!("http://{addr}"), "--token", ADMIN],
        &["get", "clones"],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = cli(
        &[
            "--server",
            &url,
            "--token",
            ADMIN,
            "--ca-file",
            env.root().join("missing.pem").to_str().unwrap(),
        ],
        &["get", "clones"],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_ca = env.root().join("other.crt");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let out = cli(
        &[
            "--server",
            &url,
            "--token",
            ADMIN,
            "--ca-file",
            other_ca.to_str().unwrap(),
        ],
        &["get", "clones"],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let mut plain = std::net::TcpStream::connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // The server may reset the connection before the whole request is written: that is a refusal too.
    let _ = write!(
        plain,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n"
    );
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&answer)
    );

    // The Unix socket is still the owner, tokens or not.
    assert_eq!(
        names_phases(&json_of(&d.ferry(&["get", "clones", "-o", "json"]))).len(),
        5
    );
}

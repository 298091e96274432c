//! `ferry demo` runs in CI: two simulated clusters, an app, its clone.

use std::process::Command;

#[test]
fn the_demo_clones_the_app_and_verifies_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("clone shop: Succeeded"), "{stdout}");
    assert!(
        stdout.contains("verify: hash chain and MAC intact"),
        "{stdout}"
    );
    // What was cloned, by kind (the fixture app grows: name kinds, not the whole line).
    let cloned = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("cloned into staging:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    for kind in [
        "1 Cart",
        "1 ConfigMap",
        "1 DaemonSet",
        "2 Deployment",
        "1 Secret",
    ] {
        assert!(cloned.contains(kind), "{kind}: {cloned}");
    }
    assert!(
        stdout.contains("files equal on staging: yes"),
        "volume data moved through the bucket: {stdout}"
    );
    assert!(
        stdout.contains("Deployment shop-copy/web"),
        "health names the ready workloads: {stdout}"
    );
    assert!(!stdout.contains("aHVudGVyMg=="), "no Secret data: {stdout}");
    // --dir keeps the durable log and the clusters' files.
    assert!(dir.path().join("state").is_dir());
    assert!(dir.path().join("cluster-prod").is_dir());
}

//! kubectl exec (WebSocket, kubectl 1.30+): output, exit codes, `-i` with
//! a tar stream on stdin.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{kubectl, kubectl_bin, wait_for};
use tokio::io::AsyncWriteExt;

const POD: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  containers: [{name: main, image: busybox, volumeMounts: [{name: d, mountPath: /data}]}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: data}}]
"#;

#[tokio::test]
async fn kubectl_exec_output_exit_codes_and_stdin() -> Result<()> {
    let c = common::start().await;
    let home = tempfile::tempdir()?;
    let bin = kubectl_bin("kubectl");
    let kc = c.kubeconfig_path().to_path_buf();
    let k = |args: Vec<&'static str>| {
        let (bin, home, kc) = (bin.clone(), home.path().to_path_buf(), kc.clone());
        async move { kubectl(&bin, &home, &kc, &args, None).await }
    };
    let out = kubectl(&bin, home.path(), &kc, &["apply", "-f", "-"], Some(POD)).await?;
    ensure!(out.ok, "{}", out.stderr);
    wait_for("pod running", 20, || async {
        let o = k(vec!["get", "pod", "box", "-o", "jsonpath={.status.phase}"])
            .await
            .ok()?;
        (o.stdout == "Running").then_some(())
    })
    .await;
    let out = k(vec![
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "echo hello > /data/f && cat /data/f && echo warn >&2",
    ])
    .await?;
    ensure!(out.ok, "exec: {} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "hello\n");
    assert!(out.stderr.contains("warn"), "{}", out.stderr);
    let out = k(vec!["exec", "box", "--", "sh", "-c", "exit 3"]).await?;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("command terminated with exit code 3"),
        "{}",
        out.stderr
    );

    // -i: a tar stream (a few MiB) on stdin, stdin end signalled by kubectl.
    let src = tempfile::tempdir()?;
    let big: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(src.path().join("big.bin"), &big)?;
    let tarball = std::process::Command::new("tar")
        .args(["cf", "-", "-C"])
        .arg(src.path())
        .arg(".")
        .output()?
        .stdout;
    let mut child = tokio::process::Command::new(&bin)
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["exec", "-i", "box", "--", "tar", "xf", "-", "-C", "/data"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut pipe = child.stdin.take().context("stdin")?;
    pipe.write_all(&tarball).await?;
    drop(pipe);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??;
    ensure!(
        out.status.success(),
        "exec -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = k(vec![
        "get",
        "pv",
        "-o",
        "jsonpath={.items[0].metadata.annotations.sim\\.ferry\\.dev/path}",
    ])
    .await?;
    let dir = PathBuf::from(out.stdout.trim());
    assert_eq!(std::fs::read(dir.join("big.bin"))?, big);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn kubectl_exec_oldest_and_newest_websocket_clients() -> Result<()> {
    let c = common::start().await;
    let kc = c.kubeconfig_path().to_path_buf();
    for name in ["kubectl.1.30", "kubectl.1.33"] {
        let home = tempfile::tempdir()?;
        let bin = kubectl_bin(name);
        if name == "kubectl.1.30" {
            let out = kubectl(&bin, home.path(), &kc, &["apply", "-f", "-"], Some(POD)).await?;
            ensure!(out.ok, "{}", out.stderr);
            wait_for("pod running", 20, || async {
                let o = kubectl(
                    &bin,
                    home.path(),
                    &kc,
                    &["get", "pod", "box", "-o", "jsonpath={.status.phase}"],
                    None,
                )
                .await
                .ok()?;
                (o.stdout == "Running").then_some(())
            })
            .await;
        }
        let out = kubectl(
            &bin,
            home.path(),
            &kc,
            &["exec", "box", "--", "sh", "-c", "cd /data && pwd"],
            None,
        )
        .await?;
        ensure!(out.ok, "{name}: {}", out.stderr);
        assert!(
            out.stdout.contains("/volumes/pvc-"),
            "{name}: {}",
            out.stdout
        );
        let out = kubectl(
            &bin,
            home.path(),
            &kc,
            &["exec", "-i", "box", "--", "sh", "-c", "cat; exit 7"],
            Some("piped\n"),
        )
        .await?;
        assert!(!out.ok);
        assert_eq!(out.stdout, "piped\n", "{name}");
        assert!(
            out.stderr.contains("command terminated with exit code 7"),
            "{name}: {}",
            out.stderr
        );
    }
    c.stop().await;
    Ok(())
}

//! Pod exec over WebSocket through kube: tar both ways with a few MiB, exit
//! codes, mount path rewriting, and the dropped-stream fault.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use common::wait_for;
use ferry_sim::{FaultConfig, SimCluster};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, AttachParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn pod_with_volume(c: &SimCluster) -> Result<(Api<Pod>, PathBuf)> {
    let client = c.client()?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pvc = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )?;
    pvcs.create(&PostParams::default(), &pvc).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "box"},
        "spec": {"containers": [{"name": "main", "image": "busybox",
            "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}),
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for("pod running", 20, || async {
        let p = pods.get("box").await.ok()?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let pvc = pvcs.get("data").await?;
    let pvs: Api<PersistentVolume> = Api::all(client);
    let pv = pvs
        .get(
            pvc.spec
                .and_then(|s| s.volume_name)
                .as_deref()
                .unwrap_or(""),
        )
        .await?;
    let dir =
        PathBuf::from(pv.metadata.annotations.unwrap_or_default()["sim.ferry.dev/path"].clone());
    Ok((pods, dir))
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let out = std::process::Command::new("find")
        .arg(".")
        .arg("-type")
        .arg("f")
        .current_dir(root)
        .output()
        .unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let data = std::fs::read(root.join(&n)).unwrap();
            (n, data)
        })
        .collect()
}

#[tokio::test]
async fn exec_tar_both_ways_and_exit_codes() -> Result<()> {
    let c = common::start().await;
    let (pods, vol) = pod_with_volume(&c).await?;

    // Upload: a few MiB through `tar x` on stdin, stdin closed by shutdown (v5 close).
    let src = tempfile::tempdir()?;
    std::fs::create_dir_all(src.path().join("sub"))?;
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.path().join("sub/big.bin"), &big)?;
    std::fs::write(src.path().join("small.txt"), b"hi\n")?;
    let tarball = std::process::Command::new("tar")
        .args(["cf", "-", "-C"])
        .arg(src.path())
        .arg(".")
        .output()?
        .stdout;
    let mut p = pods
        .exec(
            "box",
            sh("tar xf - -C /data"),
            &AttachParams::default().stdin(true).stderr(true),
        )
        .await?;
    let mut stdin = p.stdin().expect("stdin");
    stdin.write_all(&tarball).await?;
    stdin.shutdown().await?;
    let status = p.take_status().expect("status").await.expect("a status");
    assert_eq!(status.status.as_deref(), Some("Success"), "{status:?}");
    p.join().await?;
    assert_eq!(files(&vol), files(src.path()));

    // Download: tar c of the mount, read to the end.
    let mut p = pods
        .exec(
            "box",
            sh("cd /data && tar cf - ."),
            &AttachParams::default().stderr(true),
        )
        .await?;
    let mut out = Vec::new();
    p.stdout().expect("stdout").read_to_end(&mut out).await?;
    let status = p.take_status().expect("status").await.expect("a status");
    assert_eq!(status.status.as_deref(), Some("Success"));
    assert!(out.len() > 3 * 1024 * 1024);
    let dst = tempfile::tempdir()?;
    let mut untar = std::process::Command::new("tar")
        .args(["xf", "-", "-C"])
        .arg(dst.path())
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut untar.stdin.take().expect("pipe"), &out)?;
    assert!(untar.wait()?.success());
    assert_eq!(files(dst.path()), files(src.path()));

    // Exit codes, stderr, and where paths are rewritten.
    let mut p = pods
        .exec(
            "box",
            sh("echo /data /database /data/x; echo oops >&2; exit 3"),
            &AttachParams::default().stderr(true),
        )
        .await?;
    let (mut o, mut e) = (String::new(), String::new());
    p.stdout().expect("stdout").read_to_string(&mut o).await?;
    p.stderr().expect("stderr").read_to_string(&mut e).await?;
    let status = p.take_status().expect("status").await.expect("a status");
    let v = vol.to_string_lossy();
    assert_eq!(o, format!("{v} /database {v}/x\n"));
    assert_eq!(e, "oops\n");
    assert_eq!(status.status.as_deref(), Some("Failure"));
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let cause = status.details.and_then(|d| d.causes).unwrap_or_default();
    assert_eq!(cause[0].reason.as_deref(), Some("ExitCode"));
    assert_eq!(cause[0].message.as_deref(), Some("3"));
    // Unknown pods, unknown containers and pods not running are refused before the upgrade.
    match pods
        .exec("nope", sh("true"), &AttachParams::default())
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
    match pods
        .exec(
            "box",
            sh("true"),
            &AttachParams::default().container("other"),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 400),
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
    let waiting = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "waiting"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "missing"}}]}}),
    )?;
    pods.create(&PostParams::default(), &waiting).await?;
    match pods
        .exec("waiting", sh("true"), &AttachParams::default())
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 400),
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }

    // Dropped stream: cut after N bytes, no status.
    c.set_faults(FaultConfig {
        drop_exec_after: Some(10_000),
        ..Default::default()
    });
    let mut p = pods
        .exec(
            "box",
            sh("head -c 1000000 /dev/zero"),
            &AttachParams::default(),
        )
        .await?;
    // kube ends the stream task with an error (the status future resolves
    // to nothing); its stdout reader never sees EOF then, so read it
    // alongside and stop at the status.
    let mut stdout = p.stdout().expect("stdout");
    let status_fut = p.take_status().expect("status");
    let mut got = 0usize;
    let reader = async {
        let mut chunk = vec![0u8; 8192];
        while let Ok(n) = stdout.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            got += n;
        }
        std::future::pending::<()>().await
    };
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        tokio::select! {
            s = status_fut => s,
            _ = reader => None,
        }
    })
    .await
    .expect("the cut is noticed");
    assert!(got < 1_000_000, "{got}");
    assert!(status.is_none(), "{status:?}");
    assert_eq!(c.faults_injected(), 1);
    c.stop().await;
    Ok(())
}

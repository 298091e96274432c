//! Step `volume-mover`: a volume copied through the bucket, when it cannot
//! be cloned in place (another cluster or driver, or a driver that cannot
//! snapshot). `tar -c` runs in a mover pod on the source, over the exec API;
//! its stream goes into the chunk store (FastCDC, BLAKE3, zstd, skipping
//! chunks the bucket has). On the destination a mover pod on the new PVC
//! receives the chunks, verified, into `tar -x`.

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{CompensateCtx, Step, StepCtx, StepError};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::CloneEnv;
use super::volumes::{VolumeInput, create_owned, source_pvc};
use crate::cluster::Cluster;
use crate::names::{ferry_name, source_snapshot};
use crate::object::{RUN_LABEL, TEMPORARY_LABEL};
use crate::preflight::CopyPath;
use crate::spec::CloneSpec;
use crate::transform::{TransformContext, transform_object};

/// Where mover pods mount the volume.
const MOUNT: &str = "/data";

/// Copies one volume through the bucket.
///
/// # Guarantees
/// The source is read from a PVC made from the snapshot (or, on the live
/// path, the live PVC mounted read-only); the destination PVC keeps its
/// name and gets the mapped class. Mover pods and the temporary PVC carry
/// the run and temporary labels.
///
/// # Assumptions
/// Idempotent: a re-run streams the source again, and chunks the bucket
/// already has are not uploaded again; the download starts into an emptied
/// volume. `compensate` deletes this run's mover pods, its temporary PVC and
/// its manifests (shared chunks stay for `gc`).
///
/// # Errors
/// Retryable when `tar` exits non-zero or a stream breaks; the bucket's
/// errors as the mover classifies them.
pub struct MoverVolumeStep {
    pub(super) env: Arc<CloneEnv>,
}

/// What the mover did.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoverOutput {
    /// Bytes in the tar stream.
    pub bytes: u64,
    /// Chunks in the manifest.
    pub chunks: u64,
    /// Chunks that had to be uploaded (the rest were in the bucket).
    pub chunks_uploaded: u64,
    /// Bytes sent to the bucket.
    pub bytes_uploaded: u64,
}

fn mover_err(e: ferry_mover::Error) -> StepError {
    if e.is_retryable() {
        StepError::retryable(e.to_string())
    } else {
        StepError::permanent(e.to_string())
    }
}

fn pod(name: &str, ns: &str, run: &str, image: &str, claim: &str, read_only: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {RUN_LABEL: run, TEMPORARY_LABEL: "true"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "mover", "image": image, "command": ["sleep", "86400"],
                "volumeMounts": [{"name": "data", "mountPath": MOUNT, "readOnly": read_only}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}],
        },
    })
}

async fn wait_running(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    ctx: &StepCtx,
) -> Result<(), StepError> {
    loop {
        let p = cluster.get("v1", "Pod", Some(ns), name).await?;
        match p
            .as_ref()
            .and_then(|p| p.pointer("/status/phase"))
            .and_then(Value::as_str)
        {
            Some("Running") => return Ok(()),
            Some("Failed") | Some("Succeeded") => {
                return Err(StepError::retryable(format!(
                    "mover pod {ns}/{name} ended before the copy; it will be made again"
                )));
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
        }
    }
}

async fn exit_ok(
    status: Option<
        impl std::future::Future<
            Output = Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
        >,
    >,
    what: &str,
) -> Result<(), StepError> {
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
        Some(s) => Err(StepError::retryable(format!(
            "{what} failed: {}",
            s.message.unwrap_or_default()
        ))),
        None => Err(StepError::retryable(format!(
            "{what}: the exec stream ended without an exit status"
        ))),
    }
}

/// Reads a process's stderr alongside its other streams: a message is at
/// hand if it fails, and the exec stream never backs up on an unread channel.
fn drain(
    stderr: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(mut e) = stderr {
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut e, &mut buf).await;
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

impl MoverVolumeStep {
    fn bucket(&self, input: &VolumeInput) -> Result<&ferry_mover::Bucket, StepError> {
        let name = input.bucket.as_deref().ok_or_else(|| {
            StepError::permanent("no bucket for a volume that goes through the mover")
        })?;
        self.env.buckets.get(name).ok_or_else(|| {
            StepError::permanent(format!("bucket {name} is not configured in this daemon"))
        })
    }
}

impl Step for MoverVolumeStep {
    type Input = VolumeInput;
    type Output = MoverOutput;

    fn kind(&self) -> &'static str {
        "volume-mover"
    }

    async fn run(&self, ctx: &StepCtx, input: VolumeInput) -> Result<MoverOutput, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let run = ctx.run_id().to_string();
        let short = ctx.short();
        let bucket = self.bucket(&input)?;
        let source = self.env.clusters.get(&spec.source_context).await?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        let tctx = TransformContext::new(&spec, &run, &short)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let source_pvc = source_pvc(ctx, &input)?;
        let volume = format!("{}-{}", input.source_namespace, input.pvc);

        // 1. The source side: a PVC from the snapshot, or the live PVC read-only.
        let (claim, read_only) = match input.path {
            Some(CopyPath::LiveViaMover) => (input.pvc.clone(), true),
            _ => {
                let name = ferry_name(&short, &format!("src-{}", input.pvc));
                let mut tmp = json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "namespace": input.source_namespace, "labels": {RUN_LABEL: run, TEMPORARY_LABEL: "true"}},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": source_pvc["spec"]["resources"].clone(),
                        "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": source_snapshot(&short, &input.pvc)},
                    },
                });
                if let Some(class) = source_pvc.pointer("/spec/storageClassName") {
                    tmp["spec"]["storageClassName"] = class.clone();
                }
                create_owned(&source, &tmp, &run).await?;
                (name, false)
            }
        };
        let up = ferry_name(&short, &format!("up-{}", input.pvc));
        create_owned(
            &source,
            &pod(
                &up,
                &input.source_namespace,
                &run,
                &self.env.mover_image,
                &claim,
                read_only,
            ),
            &run,
        )
        .await?;
        wait_running(&source, &input.source_namespace, &up, ctx).await?;

        // 2. tar -c through exec, into the chunk store.
        let pods: Api<Pod> = Api::namespaced(source.client().clone(), &input.source_namespace);
        let ap = AttachParams::default()
            .container("mover")
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut tar = pods
            .exec(
                &up,
                ["tar", "-c", "--sparse", "--numeric-owner", "-C", MOUNT, "."],
                &ap,
            )
            .await
            .map_err(|e| crate::cluster::classify(e, "exec tar -c in the source mover pod"))?;
        let stdout = tar
            .stdout()
            .ok_or_else(|| StepError::retryable("exec gave no stdout"))?;
        let errors = drain(tar.stderr());
        let status = tar.take_status();
        // The mover reports checkpoints (bytes and chunks done) at a bounded
        // rate; they go into the run's log, and a resumed attempt hands the
        // last one back (it re-reads the source, skipping stored chunks).
        let (cp_tx, mut cp_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut upload = ferry_mover::Upload::new(bucket, &run, &volume).on_checkpoint(move |cp| {
            let _ = cp_tx.send(cp.clone());
        });
        if let Some(cp) = ctx.checkpoint::<ferry_mover::UploadCheckpoint>() {
            upload = upload.resume_from(cp);
        }
        let uploading = upload.run(stdout);
        let recording = async {
            while let Some(cp) = cp_rx.recv().await {
                ctx.save_checkpoint(&cp, true).await?;
            }
            Ok::<(), StepError>(())
        };
        let (outcome, recorded) = tokio::join!(uploading, recording);
        let outcome = outcome.map_err(mover_err)?;
        recorded?;
        if let Err(e) = exit_ok(status, "tar -c in the source mover pod").await {
            return Err(StepError::retryable(format!(
                "{}: {}",
                e.message,
                errors.await.unwrap_or_default().trim()
            )));
        }

        // 3. The destination PVC (name kept, class mapped) and its mover pod.
        let mut pvc = transform_object(&tctx, &source_pvc)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        if let Some(spec) = pvc.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("dataSource");
            spec.remove("dataSourceRef");
        }
        create_owned(&dest, &pvc, &run).await?;
        let down = ferry_name(&short, &format!("down-{}", input.pvc));
        create_owned(
            &dest,
            &pod(
                &down,
                &input.destination_namespace,
                &run,
                &self.env.mover_image,
                &input.pvc,
                false,
            ),
            &run,
        )
        .await?;
        wait_running(&dest, &input.destination_namespace, &down, ctx).await?;
        let dpods: Api<Pod> = Api::namespaced(dest.client().clone(), &input.destination_namespace);

        // 4. A download restarts into an emptied volume, then tar -x from the chunks.
        let quiet = AttachParams::default()
            .container("mover")
            .stdin(false)
            .stdout(false)
            .stderr(true);
        let mut wipe = dpods
            .exec(
                &down,
                ["sh", "-c", "cd /data && find . -mindepth 1 -delete"],
                &quiet,
            )
            .await
            .map_err(|e| crate::cluster::classify(e, "exec in the destination mover pod"))?;
        let wipe_status = wipe.take_status();
        exit_ok(wipe_status, "emptying the destination volume").await?;
        let ap = AttachParams::default()
            .container("mover")
            .stdin(true)
            .stdout(false)
            .stderr(true);
        let mut untar = dpods
            .exec(
                &down,
                [
                    "tar",
                    "-x",
                    "--numeric-owner",
                    "--same-permissions",
                    "-C",
                    MOUNT,
                ],
                &ap,
            )
            .await
            .map_err(|e| crate::cluster::classify(e, "exec tar -x in the destination mover pod"))?;
        let stdin = untar
            .stdin()
            .ok_or_else(|| StepError::retryable("exec gave no stdin"))?;
        let errors = drain(untar.stderr());
        let status = untar.take_status();
        ferry_mover::Download::new(bucket, &outcome.manifest)
            .run(stdin)
            .await
            .map_err(mover_err)?;
        if let Err(e) = exit_ok(status, "tar -x in the destination mover pod").await {
            let text = errors.await.unwrap_or_default();
            return Err(StepError::retryable(format!(
                "{}: {}",
                e.message,
                text.trim()
            )));
        }

        // 5. The movers are done; cleanup would remove them too.
        source
            .delete("v1", "Pod", Some(&input.source_namespace), &up)
            .await?;
        dest.delete("v1", "Pod", Some(&input.destination_namespace), &down)
            .await?;
        Ok(MoverOutput {
            bytes: outcome.stats.bytes_read,
            chunks: outcome.stats.chunks,
            chunks_uploaded: outcome.stats.chunks_uploaded,
            bytes_uploaded: outcome.stats.bytes_uploaded,
        })
    }

    async fn compensate(
        &self,
        ctx: &CompensateCtx,
        input: VolumeInput,
        _output: Option<MoverOutput>,
    ) -> Result<(), StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let run = ctx.run_id().to_string();
        let short = ctx.short();
        let source = self.env.clusters.get(&spec.source_context).await?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        for (cluster, ns, kind, name) in [
            (
                &source,
                &input.source_namespace,
                "Pod",
                ferry_name(&short, &format!("up-{}", input.pvc)),
            ),
            (
                &source,
                &input.source_namespace,
                "PersistentVolumeClaim",
                ferry_name(&short, &format!("src-{}", input.pvc)),
            ),
            (
                &dest,
                &input.destination_namespace,
                "Pod",
                ferry_name(&short, &format!("down-{}", input.pvc)),
            ),
        ] {
            if let Some(o) = cluster.get("v1", kind, Some(ns), &name).await?
                && super::volumes::labelled_with(&o, &run)
            {
                cluster.delete("v1", kind, Some(ns), &name).await?;
            }
        }
        if let Ok(bucket) = self.bucket(&input) {
            ferry_mover::delete_manifests(bucket, &run)
                .await
                .map_err(mover_err)?;
        }
        Ok(())
    }
}

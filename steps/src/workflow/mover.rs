//! Step `volume-mover`: a volume copied through the bucket, when it cannot
//! be cloned in place (another cluster or driver, or a driver that cannot
//! snapshot). `tar -c` runs in a mover pod on the source, over the exec API;
//! its stream goes into the chunk store (FastCDC, BLAKE3, zstd, skipping
//! chunks the bucket has). On the destination a mover pod on the new PVC
//! receives the chunks into `tar -x`: the download follows the upload chunk
//! by chunk as the bucket has them, so the two overlap. Chunks the upload
//! stored itself are handed over from its memory (the bytes it hashed);
//! chunks the bucket already had are fetched and verified. When an earlier
//! attempt stored the whole stream, its manifest is downloaded, every chunk
//! verified, without reading the source again. The destination volume is
//! flushed to disk behind the writes ([`MoverSettings::flush_every`]) and
//! once more after `tar -x` exits: the step ends with the copy on disk.
//!
//! Exec streams go over kube's WebSocket connection (kubeconfig
//! credentials, TLS, the v5/v4 handshake) but are framed and read here:
//! `tar -c`'s stdout message by message ([`exec_with_stdout`]; kube's
//! `AttachedProcess` copies it through an in-memory pipe, with a 1 KiB
//! default that ran at 45 MB/s) with an exit-status check at its end
//! ([`ExitChecked`]), and `tar -x`'s stdin in 1 MiB messages
//! ([`exec_with_stdin`]; kube's are 4 KiB).
//!
//! Transfers are bounded daemon-wide: each step holds a permit of
//! [`MoverSettings::transfers`] from its `tar -c` to the end of its
//! `tar -x`, so many volumes (of one clone or of several) queue instead of
//! all streaming at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ferry_engine::{CompensateCtx, Step, StepCtx, StepError};
use ferry_mover::{DownloadOptions, UploadCheckpoint, UploadOptions, UploadStats};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as WsMessage;

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

/// Transfers that run at once in a daemon unless its config says otherwise.
pub const DEFAULT_TRANSFER_LIMIT: usize = 4;

/// How `volume-mover` steps move data; one value shared by every clone of a
/// daemon (it holds the transfer limit).
#[derive(Clone, Debug)]
pub struct MoverSettings {
    /// Transfers running at once, over all clones: each `volume-mover` step
    /// holds one permit from the start of its `tar -c` to the end of its
    /// `tar -x` (both sides' mover pods are made and running before it
    /// waits).
    /// Default [`DEFAULT_TRANSFER_LIMIT`].
    pub transfers: Arc<Semaphore>,
    /// How uploads cut, compress and checkpoint. `base_manifests` is ignored
    /// (each upload finds stored chunks with `head`).
    pub upload: UploadOptions,
    /// How downloads run.
    pub download: DownloadOptions,
    /// How long a mover pod may take to run (scheduled, volume attached,
    /// image pulled) before the step fails, quoting what the cluster says
    /// of it. Default 10 minutes.
    pub pod_start_timeout: Duration,
    /// Bytes written into `tar -x` between two write-behind flushes of the
    /// destination volume while it is written (see [`write_behind`]);
    /// `u64::MAX` for none (the flush at the end is always made). Default
    /// [`FLUSH_EVERY`].
    pub flush_every: u64,
}

impl MoverSettings {
    /// The defaults with `limit` transfers at once (at least 1).
    pub fn with_transfer_limit(limit: usize) -> Self {
        MoverSettings {
            transfers: Arc::new(Semaphore::new(limit.max(1))),
            ..Self::default()
        }
    }
}

impl Default for MoverSettings {
    fn default() -> Self {
        MoverSettings {
            transfers: Arc::new(Semaphore::new(DEFAULT_TRANSFER_LIMIT)),
            // A checkpoint a second: progress a terminal can show, at the
            // cost of one durable append a second per transfer.
            upload: UploadOptions {
                checkpoint_interval: Duration::from_secs(1),
                ..UploadOptions::default()
            },
            download: DownloadOptions::default(),
            pod_start_timeout: Duration::from_secs(600),
            flush_every: FLUSH_EVERY,
        }
    }
}

/// Copies one volume through the bucket.
///
/// # Guarantees
/// The source is read from a PVC made from the snapshot (or, on the live
/// path, the live PVC mounted read-only); the destination PVC keeps its
/// name and gets the mapped class. Mover pods and the temporary PVC carry
/// the run and temporary labels. A manifest is written only for a stream
/// that `tar -c` finished with exit status 0: a stream cut short is an
/// error, never a short copy. `tar -x`'s stdin ends cleanly only after the
/// whole stream matched the manifest's hash (each chunk is verified before
/// it is written); until the step succeeds the destination may hold part
/// of a copy, which a retry empties first. The step succeeds only once the
/// destination volume was flushed to disk after `tar -x` exited 0 (`sync -f`
/// in its mover pod): a node crash after the run's log says the volume is
/// copied cannot take the copy with it.
///
/// # Assumptions
/// Idempotent: a re-run streams the source again, and chunks the bucket
/// already has are not uploaded again (after a failed download, the
/// recorded upload is reused and the source is not read again); the download
/// starts into an emptied volume. `compensate` deletes this run's mover pods,
/// its temporary PVC and its manifests (shared chunks stay for `gc`).
///
/// # Errors
/// Retryable when `tar` exits non-zero or a stream breaks; the bucket's
/// errors as the mover classifies them (a corrupt chunk is permanent and
/// named).
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
    /// The volume's size as `du` measured it during the copy (or an earlier
    /// attempt's), if it could.
    #[serde(default)]
    pub expected_bytes: Option<u64>,
    /// Bucket requests retried after a transient error (upload and
    /// download of the last attempt).
    #[serde(default)]
    pub bucket_retries: u64,
    /// Compressed bytes the download read back from the bucket (last
    /// attempt): the chunks the bucket already had. Chunks the upload stored
    /// itself are handed to the download in memory, not read back.
    #[serde(default)]
    pub bytes_fetched: u64,
    /// Chunks the download took from the upload's memory (last attempt).
    #[serde(default)]
    pub chunks_handed: u64,
    /// `tar -c` found files changing while it read them (a live copy of a
    /// volume in use); the run ends with a warning naming them.
    #[serde(default)]
    pub source_changed: bool,
    /// Chunks found damaged in the bucket (corrupt or missing) by an
    /// earlier attempt and stored again from the source (those the source
    /// still held); the run ends with a warning naming every damaged one.
    #[serde(default)]
    pub chunks_repaired: u64,
}

/// Where a transfer stands, in its checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoverPhase {
    /// `tar -c` into the bucket.
    #[default]
    Upload,
    /// The upload is stored (manifest written, `tar -c` exited 0); chunks
    /// into `tar -x`.
    Download,
}

/// The `volume-mover` step's checkpoint (`StepProgress`): the upload's
/// checkpoint (its fields at the top level, as older binaries wrote it
/// alone) plus what a progress display needs. Every added field has a
/// default, so checkpoints of older binaries still decode and resume.
///
/// JSON: `{"version", "run", "volume", "bytes_done", "chunks_done",
/// "stats": {"bytes_read", "chunks", "chunks_uploaded", "chunks_skipped",
/// "bytes_uploaded", "raw_bytes_uploaded", "retries"}, "expected_bytes",
/// "phase": "upload"|"download", "bytes_downloaded"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoverCheckpoint {
    /// The upload's progress; what a resumed attempt hands back to
    /// [`ferry_mover::Upload::resume_from`].
    #[serde(flatten)]
    pub upload: UploadCheckpoint,
    /// The volume's size (`du -sk` of the source volume, run alongside `tar`,
    /// allocated bytes: sparse holes do not count, small files round up to
    /// blocks); absent when it could not be measured. The tar stream
    /// (`bytes_done` in the upload phase) is close to it but not equal:
    /// headers and padding add, holes and block rounding take away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_bytes: Option<u64>,
    /// Where the transfer stands.
    #[serde(default)]
    pub phase: MoverPhase,
    /// Stream bytes written into `tar -x` (download phase).
    #[serde(default)]
    pub bytes_downloaded: u64,
    /// Set when `tar -c` found files changing while it read them (a live
    /// copy of a volume in use): what its stderr said of them. The stream
    /// holds each as it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_changed: Option<String>,
    /// Chunks an attempt's download found damaged in the bucket (corrupt,
    /// or missing): the next attempts' uploads store them again from the
    /// source, replacing the objects ([`UploadOptions::rewrite`]). One found
    /// damaged again after that fails the step for good: the bucket does
    /// not keep what it is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repair: Vec<ferry_mover::ChunkHash>,
}

/// How long a mover pod an earlier attempt left ended may take to go.
const ENDED_POD_GONE: Duration = Duration::from_secs(120);

/// Creates a mover pod. One an earlier attempt left is used again while it
/// can still run, unless `fresh`; one that ended (evicted, killed for
/// memory, its node gone: phase Failed or Succeeded) or is going never runs
/// again. Those are deleted and, once gone, made anew. The API server's PodSecurity
/// admission may refuse the pod where preflight saw no `restricted` label
/// (a cluster-wide default level): the refusal then names the rule and the
/// fix, on the source namespace (`source` on cluster `context`), whose
/// labels the copy takes.
async fn create_mover_pod(
    cluster: &Cluster,
    pod: &Value,
    run: &str,
    (context, source): (&str, &str),
    fresh: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), StepError> {
    clear_pod(cluster, pod, run, fresh, cancel).await?;
    match create_owned(cluster, pod, run).await {
        Ok(_) => Ok(()),
        Err(e) if e.message.contains("violates PodSecurity") => {
            let label = crate::preflight::POD_SECURITY_ENFORCE_LABEL;
            Err(StepError::permanent(format!(
                "{} [rule {}]: ferry's mover pod runs tar as root, to read every file and keep \
                 owners, with privilege escalation off and the runtime's default seccomp profile \
                 (PodSecurity \"baseline\"), and the cluster enforces a stricter level where no \
                 {label} label says otherwise; fix: label the source namespace for the clone \
                 (kubectl --context {context} label namespace {source} {label}=baseline \
                 --overwrite; its copy takes the label), or exempt ferry's user in the API \
                 server's PodSecurity configuration",
                e.message,
                crate::preflight::Rule::MoverPodForbidden,
            )))
        }
        Err(e) => Err(e),
    }
}

/// Deletes this run's pod of `pod`'s name when it ended or is going, or
/// whatever its state when `any`, and waits until it is gone (at most
/// [`ENDED_POD_GONE`]).
async fn clear_pod(
    cluster: &Cluster,
    pod: &Value,
    run: &str,
    any: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), StepError> {
    let (_, _, ns, name) = crate::cluster::ids(pod)?;
    let (ns, name) = (ns.as_deref(), name.as_str());
    let deadline = tokio::time::Instant::now() + ENDED_POD_GONE;
    let mut asked = false;
    loop {
        let Some(p) = cluster.get("v1", "Pod", ns, name).await? else {
            return Ok(());
        };
        // Another's pod of that name: `create_owned` refuses it by name.
        if !super::volumes::labelled_with(&p, run) {
            return Ok(());
        }
        let going = p.pointer("/metadata/deletionTimestamp").is_some();
        let ended = matches!(
            p.pointer("/status/phase").and_then(Value::as_str),
            Some("Failed" | "Succeeded")
        );
        if !going && !ended && !any && !asked {
            return Ok(());
        }
        if !going && !asked {
            cluster.delete("v1", "Pod", ns, name).await?;
            asked = true;
            continue;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::retryable(format!(
                "mover pod {}/{name} of an earlier attempt was still going after {}s; the next attempt makes it again",
                ns.unwrap_or_default(),
                ENDED_POD_GONE.as_secs()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = cancel.cancelled() => return Err(StepError::cancelled()),
        }
    }
}

fn mover_err(e: ferry_mover::Error) -> StepError {
    if e.is_retryable() {
        StepError::retryable(e.to_string())
    } else {
        StepError::permanent(e.to_string())
    }
}

/// Where a live volume's mover pod must run: the node of the pods using
/// it, with their tolerations (the node may be tainted for them).
#[derive(Clone, Debug, PartialEq)]
struct Placement {
    node: String,
    tolerations: Value,
}

/// A mover pod on `claim` with `resources`; placed when given (a live
/// ReadWriteOnce volume mounts only where its users run).
#[allow(clippy::too_many_arguments)]
fn pod(
    name: &str,
    ns: &str,
    run: &str,
    image: &str,
    resources: &Value,
    claim: &str,
    read_only: bool,
    placement: Option<&Placement>,
) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {RUN_LABEL: run, TEMPORARY_LABEL: "true"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "mover", "image": image, "command": ["sleep", "86400"],
                "resources": resources,
                // Root, for tar to read every file and keep owners; nothing
                // more: what PodSecurity `baseline` and most policies ask.
                "securityContext": {"allowPrivilegeEscalation": false,
                    "seccompProfile": {"type": "RuntimeDefault"}},
                "volumeMounts": [{"name": "data", "mountPath": MOUNT, "readOnly": read_only}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}],
        },
    });
    if let Some(p) = placement {
        pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [p.node]}]}]}}});
        if p.tolerations.as_array().is_some_and(|t| !t.is_empty()) {
            pod["spec"]["tolerations"] = p.tolerations.clone();
        }
    }
    pod
}

/// Where the mover pod reading live volume `input` for `run` must run. A
/// ReadWriteMany or ReadOnlyMany volume mounts on any node; a ReadWriteOnce
/// one only on the node of the pods using it (elsewhere its attach fails,
/// "Multi-Attach error"), so the mover pod goes there, with their
/// tolerations; a ReadWriteOncePod one in no second pod while its user
/// runs: refused, naming the user and the fix. Users are every pod not
/// finished that mounts the claim, other clones' mover pods included (they
/// hold the volume too), this run's own not; a Running user's node comes
/// first. `None` when any node will do.
async fn live_placement(
    source: &Cluster,
    input: &VolumeInput,
    pvc: &Value,
    run: &str,
) -> Result<Option<Placement>, StepError> {
    let modes: Vec<&str> = pvc
        .pointer("/spec/accessModes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if modes
        .iter()
        .any(|m| matches!(*m, "ReadWriteMany" | "ReadOnlyMany"))
    {
        return Ok(None);
    }
    let ns = &input.source_namespace;
    let mut users: Vec<Value> = source
        .list_kind_in("v1", "Pod", ns)
        .await?
        .into_iter()
        .filter(|p| {
            !matches!(
                p.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            ) && p
                .pointer("/metadata/labels")
                .and_then(|l| l.get(RUN_LABEL))
                .and_then(Value::as_str)
                != Some(run)
                && crate::object::pod_claims(p).any(|c| c == input.pvc)
        })
        .collect();
    let name = |p: &Value| {
        p.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    if modes.contains(&"ReadWriteOncePod")
        && let Some(user) = users.first()
    {
        return Err(StepError::permanent(format!(
            "volume {ns}/{} is ReadWriteOncePod and pod {ns}/{} uses it [rule {}]: no other pod \
             may mount it while that one runs, so the mover cannot read it live. Scale its \
             workload to 0 for the clone (the copy then has 0 replicas too; scale both up after)",
            input.pvc,
            name(user),
            crate::preflight::Rule::LiveVolumeInUse,
        )));
    }
    // Running users first: a user stuck elsewhere (Multi-Attach) does not
    // hold the volume.
    users.sort_by_key(|p| p.pointer("/status/phase").and_then(Value::as_str) != Some("Running"));
    Ok(users.iter().find_map(|p| {
        let node = p.pointer("/spec/nodeName").and_then(Value::as_str)?;
        (!node.is_empty()).then(|| Placement {
            node: node.to_string(),
            tolerations: p
                .pointer("/spec/tolerations")
                .cloned()
                .unwrap_or(Value::Null),
        })
    }))
}

/// Waits until mover pod `ns/name` runs. Past `timeout` the pod is deleted
/// and the step fails, quoting what the cluster says of it: the scheduler's
/// reason, the container's waiting reason, the pod's latest warning events.
/// For good when the cause will not clear by waiting (the scheduler finds
/// no node for it, its image cannot be pulled); else (a claim still
/// restoring from its snapshot, a slow pull) the next attempt makes the pod
/// again and waits anew.
async fn wait_running(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    ctx: &StepCtx,
    timeout: Duration,
) -> Result<(), StepError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let p = cluster.get("v1", "Pod", Some(ns), name).await?;
        match p
            .as_ref()
            .and_then(|p| p.pointer("/status/phase"))
            .and_then(Value::as_str)
        {
            Some("Running") => return Ok(()),
            _ if p.is_none() => {
                return Err(StepError::retryable(format!(
                    "mover pod {ns}/{name} was deleted before it ran; it will be made again"
                )));
            }
            Some("Failed") | Some("Succeeded") => {
                let said = pod_trouble(cluster, ns, name, p.as_ref()).await;
                return Err(StepError::retryable(format!(
                    "mover pod {ns}/{name} ended before the copy ({said}); the next attempt makes it again"
                )));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            let said = pod_trouble(cluster, ns, name, p.as_ref()).await;
            // Compensation deletes it too, should this fail.
            let _ = cluster.delete("v1", "Pod", Some(ns), name).await;
            let message = format!(
                "mover pod {ns}/{name} did not run within {}s: {said}",
                timeout.as_secs()
            );
            return Err(if lasting(&said) {
                StepError::permanent(format!(
                    "{message}; fix what the cluster reports (for a live copy, the mover pod runs \
                     on the node of the pods using the volume, with their tolerations: that node \
                     needs room for it), then clone again"
                ))
            } else {
                StepError::retryable(format!("{message}; the next attempt makes it again"))
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
        }
    }
}

/// Whether what the cluster says of a pod that does not run (from
/// [`pod_trouble`]) will not clear by waiting: no node for it (but for a
/// claim still unbound, such as one restoring from its snapshot), or an
/// image that cannot be pulled.
fn lasting(said: &str) -> bool {
    (said.contains("not scheduled (Unschedulable") && !said.contains("unbound"))
        || ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"]
            .iter()
            .any(|r| said.contains(&format!("container waiting ({r}")))
}

/// What the cluster says of a pod that does not run: its `PodScheduled`
/// condition when false, its containers' waiting reasons, and its last
/// three warning events.
async fn pod_trouble(cluster: &Cluster, ns: &str, name: &str, pod: Option<&Value>) -> String {
    let Some(pod) = pod else {
        return "the pod is gone".into();
    };
    let mut said = Vec::new();
    for c in pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if c.get("type").and_then(Value::as_str) == Some("PodScheduled")
            && c.get("status").and_then(Value::as_str) == Some("False")
        {
            said.push(format!(
                "not scheduled ({}: {})",
                c.get("reason").and_then(Value::as_str).unwrap_or("?"),
                c.get("message").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    for c in pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(w) = c.pointer("/state/waiting") {
            said.push(format!(
                "container waiting ({}: {})",
                w.get("reason").and_then(Value::as_str).unwrap_or("?"),
                w.get("message").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    let events: Vec<String> = cluster
        .list_kind_in("v1", "Event", ns)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.pointer("/involvedObject/name").and_then(Value::as_str) == Some(name)
                && e.get("type").and_then(Value::as_str) == Some("Warning")
        })
        .map(|e| {
            format!(
                "{}: {}",
                e.get("reason").and_then(Value::as_str).unwrap_or("?"),
                e.get("message").and_then(Value::as_str).unwrap_or("")
            )
        })
        .collect();
    said.extend(events.into_iter().rev().take(3));
    if said.is_empty() {
        "the cluster says nothing of it (phase Pending)".into()
    } else {
        said.join("; ")
    }
}

/// The exit code in a failed exec's status (`details.causes`, reason
/// `ExitCode`), when it has one.
fn exit_code(status: &Status) -> Option<i32> {
    status
        .details
        .as_ref()?
        .causes
        .as_ref()?
        .iter()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))?
        .message
        .as_deref()?
        .parse()
        .ok()
}

/// What an exec status says: `Ok` for success, else the message.
fn status_message(status: Option<Status>, what: &str) -> Result<(), String> {
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
        Some(s) => Err(format!("{what} failed: {}", s.message.unwrap_or_default())),
        None => Err(format!(
            "{what}: the exec stream ended without an exit status"
        )),
    }
}

async fn exit_ok(
    status: Option<impl Future<Output = Option<Status>>>,
    what: &str,
) -> Result<(), StepError> {
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    status_message(status, what).map_err(StepError::retryable)
}

/// Bytes of a failed process's stderr kept for its error message (the tail).
const STDERR_TAIL: usize = 4096;

/// How long an error path waits for the rest of a process's stderr. kube
/// ends stderr when the process exits, but not when the connection breaks:
/// then what arrived is all there is.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// The tail of a process's stderr, kept for error messages.
#[derive(Clone, Default)]
struct Tail(Arc<std::sync::Mutex<Vec<u8>>>);

impl Tail {
    fn push(&self, data: &[u8]) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.extend_from_slice(data);
        let over = t.len().saturating_sub(STDERR_TAIL);
        t.drain(..over);
    }

    fn text(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&t).trim().to_owned()
    }
}

/// A process's stderr, read alongside its other streams (so the exec stream
/// never backs up on an unread channel), its tail kept for error messages.
struct Stderr {
    tail: Tail,
    task: tokio::task::JoinHandle<()>,
}

impl Stderr {
    fn drain(stderr: Option<impl AsyncRead + Unpin + Send + 'static>) -> Self {
        let tail = Tail::default();
        let keep = tail.clone();
        let task = tokio::spawn(async move {
            let Some(mut e) = stderr else { return };
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut e, &mut buf).await {
                if n == 0 {
                    return;
                }
                keep.push(&buf[..n]);
            }
        });
        Stderr { tail, task }
    }

    /// What the process wrote on stderr (its tail), trimmed; waits at most
    /// [`STDERR_GRACE`] for the stream's end.
    async fn text(mut self) -> String {
        let _ = tokio::time::timeout(STDERR_GRACE, &mut self.task).await;
        self.task.abort();
        self.tail.text()
    }
}

/// What GNU `tar -c` said of the files that changed or vanished while it
/// read them, from its stderr (the tail kept).
fn changed_files(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("changed as we read it") || l.contains("removed before we read it"))
        .map(|l| l.strip_prefix("tar: ").unwrap_or(l))
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

/// The permanent error of a mover image whose `tar` refused an option ferry
/// passes (BusyBox's has no `--sparse`): no retry can fix it, the image
/// must change. `None` when `stderr` says nothing of the kind.
fn tar_refused_options(stderr: &str, what: &str, image: &str) -> Option<StepError> {
    // getopt's words, on a line of tar's own: not a file name that happens
    // to hold them, nor another program's message.
    let refusal = stderr.lines().find(|l| {
        l.strip_prefix("tar: ").is_some_and(|rest| {
            ["unrecognized option", "unknown option", "invalid option"]
                .iter()
                .any(|m| rest.starts_with(m))
        })
    })?;
    Some(StepError::permanent(format!(
        "{what} refused an option ferry needs ({refusal}): the mover image {image} has no GNU tar; \
         set `mover_image` in the daemon's config to an image with GNU tar and sh, such as {}",
        super::DEFAULT_MOVER_IMAGE
    )))
}

/// `e` with a process's stderr appended, when it said anything.
fn with_stderr(mut e: StepError, what: &str, stderr: String) -> StepError {
    if !stderr.is_empty() {
        e.message = format!("{} ({what}: {stderr})", e.message);
    }
    e
}

type StatusFuture = Pin<Box<dyn Future<Output = Option<Status>> + Send>>;

/// Where the process behind an [`ExitChecked`] stream stands.
enum Exit {
    /// No exit status yet.
    Running(StatusFuture),
    /// The process exited with this status; the end of its output follows.
    Exited(Result<(), String>),
    /// The end was reported.
    Reported,
}

/// The stdout of a process run through exec that ends cleanly only when the
/// process exited 0. kube shuts stdout when the process exits, but leaves it
/// open forever when the connection breaks (it only drops the status
/// sender): read through this, a broken connection or a failed `tar` is a
/// read error, so the upload never waits forever and never stores a
/// manifest of a partial stream.
struct ExitChecked<R> {
    inner: R,
    exit: Exit,
    what: &'static str,
    /// Set, exit status 1 with GNU tar's word for it on stderr counts as a
    /// clean end and is recorded in the flag.
    changed: Option<(Arc<std::sync::atomic::AtomicBool>, Tail)>,
}

impl<R> ExitChecked<R> {
    fn new(inner: R, status: StatusFuture, what: &'static str) -> Self {
        ExitChecked {
            inner,
            exit: Exit::Running(status),
            what,
            changed: None,
        }
    }

    /// For GNU `tar -c`: exit status 1 means "some files were changed while
    /// being archived", and the archive is whole (each such file as it was
    /// read; fatal errors are status 2). A live copy of a volume in use sees
    /// it on every try, so it ends the stream cleanly and sets `changed`,
    /// when `stderr` (complete once the status came) names such files:
    /// another `tar` (BusyBox's) exits 1 on any error.
    fn tolerating_changed_files(
        mut self,
        changed: Arc<std::sync::atomic::AtomicBool>,
        stderr: Tail,
    ) -> Self {
        self.changed = Some((changed, stderr));
        self
    }

    /// Polls the exit status: `Some(error)` when the stream is broken.
    fn poll_exit(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Error>> {
        if let Exit::Running(status) = &mut self.exit {
            let status = ready!(status.as_mut().poll(cx));
            if status.is_none() {
                self.exit = Exit::Reported;
                return Poll::Ready(Some(io::Error::other(format!(
                    "{}: the exec stream ended without an exit status",
                    self.what
                ))));
            }
            let exit_1 = status.as_ref().and_then(exit_code) == Some(1);
            self.exit = match &self.changed {
                Some((flag, stderr)) if exit_1 && changed_files(&stderr.text()).is_some() => {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    Exit::Exited(Ok(()))
                }
                _ => Exit::Exited(status_message(status, self.what)),
            };
        }
        Poll::Ready(None)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ExitChecked<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) if buf.filled().len() > before || buf.remaining() == 0 => {
                Poll::Ready(Ok(()))
            }
            // The end of the stream: the exit status decides what it means.
            Poll::Ready(Ok(())) => {
                if let Some(broken) = ready!(self.poll_exit(cx)) {
                    return Poll::Ready(Err(broken));
                }
                match std::mem::replace(&mut self.exit, Exit::Reported) {
                    Exit::Exited(Err(message)) => Poll::Ready(Err(io::Error::other(message))),
                    Exit::Exited(Ok(())) | Exit::Reported | Exit::Running(_) => Poll::Ready(Ok(())),
                }
            }
            // Waiting for output; a broken connection must end the wait.
            Poll::Pending => match self.poll_exit(cx) {
                Poll::Ready(Some(broken)) => Poll::Ready(Err(broken)),
                _ => Poll::Pending,
            },
        }
    }
}

/// Bytes of stdin in one WebSocket message of [`exec_with_stdin`]. kube's
/// `AttachedProcess` sends stdin in 4 KiB messages (tokio-util's
/// `ReaderStream` default, not configurable), each a frame, a flush and a
/// write into the process's pipe on the far end: measured against the
/// simulator, 512 MiB into `cat` went at about 500 MB/s for 1.8 s of CPU
/// (both ends); in 64 KiB messages at 850-1450 MB/s for 0.6 s. 1 MiB, the
/// size of the simulator's own stdout messages, halves the wake-ups again
/// on both ends; the API server reads exec streams with
/// `golang.org/x/net/websocket` (apimachinery's `wsstream`), whose limit
/// on a message is 32 MiB (`DefaultMaxPayloadBytes`).
const STDIN_FRAME: usize = 1 << 20;

type WsError = tokio_tungstenite::tungstenite::Error;
type WsSink = Pin<Box<dyn futures::Sink<WsMessage, Error = WsError> + Send>>;

fn ws_io(e: WsError) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

/// A process's stdin over an exec WebSocket, in [`STDIN_FRAME`] messages on
/// channel 0. Shutting it down ends stdin: `[255, 0]` on v5, closing the
/// connection on v4 (which has no per-stream close).
struct WsStdin {
    sink: WsSink,
    /// The message being filled: the channel byte, then data. Each message
    /// is split off it when queued; the sink holds it until the next is
    /// queued, so the next is filled in another allocation of the same size
    /// (the allocator's, reused: page faults cost ferry under 0.05 s of CPU
    /// per GiB sent).
    frame: bytes::BytesMut,
    v5: bool,
    ended: bool,
}

impl WsStdin {
    fn new(sink: WsSink, v5: bool) -> Self {
        let mut frame = bytes::BytesMut::new();
        Self::start(&mut frame);
        WsStdin {
            sink,
            frame,
            v5,
            ended: false,
        }
    }

    /// Begins a message in `frame` (emptied): room for it, the channel byte.
    fn start(frame: &mut bytes::BytesMut) {
        frame.reserve(STDIN_FRAME + 1);
        frame.extend_from_slice(&[0]);
    }

    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.sink.as_mut().poll_ready(cx)).map_err(ws_io)?;
        let frame = self.frame.split().freeze();
        Self::start(&mut self.frame);
        self.sink
            .as_mut()
            .start_send(WsMessage::binary(frame))
            .map_err(ws_io)?;
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for WsStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.frame.len() > STDIN_FRAME {
            ready!(self.poll_send(cx))?;
        }
        let n = (STDIN_FRAME + 1 - self.frame.len()).min(data.len());
        self.frame.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.frame.len() > 1 {
            ready!(self.poll_send(cx))?;
        }
        self.sink.as_mut().poll_flush(cx).map_err(ws_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        if !self.v5 {
            return self.sink.as_mut().poll_close(cx).map_err(ws_io);
        }
        if !self.ended {
            ready!(self.sink.as_mut().poll_ready(cx)).map_err(ws_io)?;
            self.sink
                .as_mut()
                .start_send(WsMessage::binary(vec![255u8, 0]))
                .map_err(ws_io)?;
            self.ended = true;
        }
        self.sink.as_mut().poll_flush(cx).map_err(ws_io)
    }
}

/// The far end of [`exec_with_stdin`]: the process's exit status and its
/// stderr, read by a task that ends with the connection.
struct ExecEnd {
    reader: Option<tokio::task::JoinHandle<Option<Status>>>,
    status: Option<Option<Status>>,
    stderr: Tail,
}

impl ExecEnd {
    /// The exit status; `None` when the connection ended without one.
    async fn status(&mut self) -> Option<Status> {
        if self.status.is_none() {
            let s = match self.reader.take() {
                Some(r) => r.await.ok().flatten(),
                None => None,
            };
            self.status = Some(s);
        }
        self.status.clone().flatten()
    }

    /// The tail of stderr; waits at most [`STDERR_GRACE`] for the process's
    /// end (a broken connection says no more).
    async fn stderr(&mut self) -> String {
        if let Some(r) = self.reader.as_mut()
            && let Ok(s) = tokio::time::timeout(STDERR_GRACE, r).await
        {
            self.status = Some(s.ok().flatten());
            self.reader = None;
        }
        self.stderr.text()
    }
}

impl Drop for ExecEnd {
    fn drop(&mut self) {
        if let Some(r) = &self.reader {
            r.abort();
        }
    }
}

/// Runs `command` in the mover container of `pod` with stdin from the
/// returned writer (stderr and the status read on the side), over kube's
/// WebSocket connection (kubeconfig credentials, TLS, the v5/v4 handshake)
/// but with stdin in [`STDIN_FRAME`] messages.
async fn exec_with_stdin(
    cluster: &Cluster,
    ns: &str,
    pod: &str,
    command: &[&str],
) -> Result<(WsStdin, ExecEnd), StepError> {
    let (stdin, _, end) = exec_ws(cluster, ns, pod, command, true).await?;
    let stdin = stdin.ok_or_else(|| StepError::retryable("exec gave no stdin"))?;
    Ok((stdin, end))
}

/// Runs `command` in the mover container of `pod` and reads its stdout as
/// the WebSocket messages come (stderr and the status read on the side),
/// over kube's connection: kube's own `AttachedProcess` copies stdout
/// through an in-memory pipe first, a copy and a wake-up per read (without
/// it, ferry's memory copies over two 1 GiB clones fell from 1.3 s to
/// 0.9 s of CPU).
async fn exec_with_stdout(
    cluster: &Cluster,
    ns: &str,
    pod: &str,
    command: &[&str],
) -> Result<(WsStdout, ExecEnd), StepError> {
    let (_, stdout, end) = exec_ws(cluster, ns, pod, command, false).await?;
    let stdout = stdout.ok_or_else(|| StepError::retryable("exec gave no stdout"))?;
    Ok((stdout, end))
}

/// Messages of stdout read ahead of their reader (kept few: each may be as
/// large as the API server makes it).
const STDOUT_AHEAD: usize = 4;

/// The exec connection behind [`exec_with_stdin`] (`stdin`) and
/// [`exec_with_stdout`] (not `stdin`): one of stdin or stdout, with stderr.
async fn exec_ws(
    cluster: &Cluster,
    ns: &str,
    pod: &str,
    command: &[&str],
    stdin: bool,
) -> Result<(Option<WsStdin>, Option<WsStdout>, ExecEnd), StepError> {
    use futures::StreamExt;
    let what = || format!("exec {} in {ns}/{pod}", command.first().unwrap_or(&""));
    let ap = AttachParams::default()
        .container("mover")
        .stdin(stdin)
        .stdout(!stdin)
        .stderr(true);
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/pods"))
        .exec(pod, command.iter().copied(), &ap)
        .map_err(|e| StepError::permanent(format!("{}: {e}", what())))?;
    let connection = cluster
        .client()
        .connect(request)
        .await
        .map_err(|e| crate::cluster::classify(e, &what()))?;
    let v5 = connection.supports_stream_close();
    let (sink, mut stream) = connection.into_stream().split();
    let stderr = Tail::default();
    let keep = stderr.clone();
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(STDOUT_AHEAD);
    let reader = tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            match m {
                Ok(WsMessage::Binary(b)) if b.len() > 1 => match b[0] {
                    // Stdout, to its reader (when one was asked for); a
                    // reader that went away wants no more.
                    1 if !stdin && out_tx.send(b.slice(1..)).await.is_err() => return None,
                    2 => keep.push(&b[1..]),
                    // kube's rule too: the status is the last message read.
                    3 => return serde_json::from_slice::<Status>(&b[1..]).ok(),
                    _ => {}
                },
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    });
    let end = ExecEnd {
        reader: Some(reader),
        status: None,
        stderr,
    };
    if stdin {
        Ok((Some(WsStdin::new(Box::pin(sink), v5)), None, end))
    } else {
        Ok((None, Some(WsStdout::new(out_rx)), end))
    }
}

/// A process's stdout over an exec WebSocket: the channel 1 messages, read
/// without copying them first. It ends when the connection does; wrap it in
/// an [`ExitChecked`] to tell a clean end from a broken one.
struct WsStdout {
    messages: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl WsStdout {
    fn new(messages: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Self {
        WsStdout {
            messages,
            current: bytes::Bytes::new(),
        }
    }
}

impl AsyncRead for WsStdout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.current.is_empty() {
            match ready!(self.messages.poll_recv(cx)) {
                Some(b) => self.current = b,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current.split_to(n));
        Poll::Ready(Ok(()))
    }
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

/// The volume's allocated size, by `du -sk` in the mover pod (POSIX, so
/// busybox has it). `None` when it cannot be had: the size is for progress
/// displays only, and never fails the copy.
async fn measure(pods: &Api<Pod>, pod: &str) -> Option<u64> {
    let ap = AttachParams::default()
        .container("mover")
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut du = match pods.exec(pod, ["du", "-s", "-k", MOUNT], &ap).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(pod, error = %e, "cannot measure the volume with du");
            return None;
        }
    };
    let stdout = du.stdout()?;
    let errors = Stderr::drain(du.stderr());
    let status = du.take_status()?;
    let mut out = ExitChecked::new(stdout, Box::pin(status), "du in the source mover pod");
    let mut text = String::new();
    if let Err(e) = tokio::io::AsyncReadExt::read_to_string(&mut out, &mut text).await {
        let stderr = errors.text().await;
        tracing::warn!(pod, error = %e, stderr, "cannot measure the volume with du");
        return None;
    }
    let kib: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
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
        let source_pvc = source_pvc(ctx, &input)?;
        let volume = format!("{}-{}", input.source_namespace, input.pvc);
        let resumed = ctx
            .checkpoint::<MoverCheckpoint>()
            .filter(|cp| cp.upload.run == run && cp.upload.volume == volume);
        let repair = resumed
            .as_ref()
            .map(|cp| cp.repair.clone())
            .unwrap_or_default();

        // An earlier attempt stored the whole stream: its manifest is
        // reused, and the source is not read again.
        let stored = match &resumed {
            Some(cp) if cp.phase == MoverPhase::Download => {
                match bucket.read_manifest(&run, &volume).await {
                    Ok(m) => Some((m, cp.clone())),
                    Err(e) => {
                        tracing::info!(volume, error = %e, "the stored upload cannot be read; uploading again");
                        None
                    }
                }
            }
            _ => None,
        };
        let (up_stats, downloaded, expected_bytes, changed) = match stored {
            Some((manifest, cp)) => {
                let _permit = self.permit(ctx).await?;
                let down = self
                    .destination(ctx, &input, &dest, &spec, &source_pvc)
                    .await?;
                empty_destination(&dest, &input.destination_namespace, &down).await?;
                let (stdin, mut untar) =
                    exec_with_stdin(&dest, &input.destination_namespace, &down, &TAR_X).await?;
                let mut last = MoverCheckpoint {
                    phase: MoverPhase::Download,
                    bytes_downloaded: 0,
                    ..cp
                };
                ctx.save_checkpoint(&last, true).await?;
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let damaged = std::sync::OnceLock::new();
                let downloading = self.download_to_destination(
                    (&dest, &input.destination_namespace, &down),
                    &mut untar,
                    &damaged,
                    |written| {
                        ferry_mover::Download::new(bucket, &manifest)
                            .options(self.env.mover.download.clone())
                            .on_progress(move |s| {
                                let _ = tx.send(s.bytes_written);
                                written.send_replace(s.bytes_written);
                            })
                            .run(stdin)
                    },
                );
                let recording = async {
                    while let Some(n) = rx.recv().await {
                        last.bytes_downloaded = n;
                        ctx.save_checkpoint(&last, false).await?;
                    }
                    Ok::<(), StepError>(())
                };
                let (downloaded, recorded) = tokio::select! {
                    r = async { tokio::join!(downloading, recording) } => r,
                    _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
                };
                let downloaded = match (downloaded, damaged.get()) {
                    (Err(e), Some(&hash)) => return Err(store_again(ctx, &mut last, hash, e).await),
                    (d, _) => d?,
                };
                recorded?;
                (
                    last.upload.stats,
                    downloaded,
                    last.expected_bytes,
                    last.source_changed,
                )
            }
            None => {
                self.transfer(
                    ctx,
                    &input,
                    bucket,
                    &source,
                    &dest,
                    &spec,
                    &source_pvc,
                    resumed,
                )
                .await?
            }
        };

        // The movers are done; cleanup would remove them too.
        source
            .delete(
                "v1",
                "Pod",
                Some(&input.source_namespace),
                &ferry_name(&short, &format!("up-{}", input.pvc)),
            )
            .await?;
        dest.delete(
            "v1",
            "Pod",
            Some(&input.destination_namespace),
            &ferry_name(&short, &format!("down-{}", input.pvc)),
        )
        .await?;
        if !repair.is_empty() {
            let names: Vec<String> = repair.iter().map(|h| h.to_string()).collect();
            let again = up_stats.chunks_rewritten;
            ctx.warn(format!(
                "volume {}/{}: the bucket held {} damaged chunk(s) (corrupt or missing): {}; \
                 ferry stored {again} of them again from the source, for this clone and every \
                 other that names them{}. If this recurs, check the bucket's storage",
                input.source_namespace,
                input.pvc,
                repair.len(),
                names.join(", "),
                if (again as usize) < repair.len() {
                    " (the source no longer holds the rest)"
                } else {
                    ""
                }
            ));
        }
        if let Some(files) = &changed {
            ctx.warn(format!(
                "volume {}/{}: files changed while tar read them (a live copy of a volume in use), \
                 copied as read: {files}. For a consistent copy, stop the writers during the clone \
                 or use a storage class that can snapshot",
                input.source_namespace, input.pvc
            ));
        }
        Ok(MoverOutput {
            bytes: up_stats.bytes_read,
            chunks: up_stats.chunks,
            chunks_uploaded: up_stats.chunks_uploaded,
            bytes_uploaded: up_stats.bytes_uploaded,
            expected_bytes,
            bucket_retries: up_stats.retries + downloaded.retries,
            bytes_fetched: downloaded.bytes_fetched,
            chunks_handed: downloaded.chunks_handed,
            source_changed: changed.is_some(),
            chunks_repaired: up_stats.chunks_rewritten,
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

/// Keeps the chunk a failed download found damaged in the bucket.
fn note_damage(
    damaged: &std::sync::OnceLock<ferry_mover::ChunkHash>,
    downloaded: &ferry_mover::Result<ferry_mover::DownloadStats>,
) {
    if let Some(hash) = downloaded.as_ref().err().and_then(|e| e.damaged_chunk()) {
        let _ = damaged.set(hash);
    }
}

/// A download found chunk `hash` damaged in the bucket (corrupt or missing),
/// failing with `err`. Only the source has its bytes: the next attempt
/// uploads again (the phase back to upload, the chunk in
/// [`MoverCheckpoint::repair`]), storing it afresh over the bad object, and
/// the rest of the stream is found stored. A chunk an earlier attempt stored
/// again and that is found damaged again fails the step for good.
async fn store_again(
    ctx: &StepCtx,
    last: &mut MoverCheckpoint,
    hash: ferry_mover::ChunkHash,
    err: StepError,
) -> StepError {
    if last.repair.contains(&hash) {
        return StepError::permanent(format!(
            "{}; an earlier attempt stored chunk {hash} again from the source and it is damaged \
             again: the bucket does not keep what it is given. Check the bucket's storage before \
             cloning through it again",
            err.message
        ));
    }
    last.repair.push(hash);
    last.phase = MoverPhase::Upload;
    if let Err(e) = ctx.save_checkpoint(last, true).await {
        return e;
    }
    StepError::retryable(format!(
        "{}; the next attempt stores the chunk again from the source",
        err.message
    ))
}

/// A transfer permit, held until the step's transfer ends.
type Permit = tokio::sync::OwnedSemaphorePermit;

/// The record size of both `tar`s: 1 MiB (2048 blocks of 512 bytes), the
/// size of the exec streams' messages, instead of GNU tar's 10 KiB. Each
/// `read` and `write` of the archive moves a record: `tar -x` reading a
/// stream of 1 GiB from a pipe made 100,000 reads of it, and measured with
/// both `tar`s piped together 1 MiB records took about a fifth off their
/// CPU. The archive is the same but for zeros padding its end to a whole
/// record (under 1 MiB; they compress to nothing), and either `tar` reads
/// the other's records.
const BLOCKING: &str = "--blocking-factor=2048";

/// `tar -x` in the destination mover pod.
const TAR_X: [&str; 9] = [
    "tar",
    "-x",
    "--numeric-owner",
    "--same-permissions",
    BLOCKING,
    "-f",
    "-",
    "-C",
    MOUNT,
];

/// What the recording of a transfer's progress hears.
enum Report {
    /// The upload's checkpoint (made durable at once: it is what a resumed
    /// attempt starts from).
    Upload(UploadCheckpoint),
    /// The upload is stored: manifest written, `tar -c` exited 0 (or 1,
    /// with what it said of the files that changed).
    Stored(UploadCheckpoint, Option<String>),
    /// Stream bytes written into `tar -x` (recorded at the engine's rate).
    Downloaded(u64),
    /// The volume's size, as `du` measured it.
    Measured(u64),
}

impl ExecEnd {
    /// The end of a download into this process: its result, then the
    /// process's exit status; an error carries the process's stderr.
    async fn finish(
        &mut self,
        downloaded: ferry_mover::Result<ferry_mover::DownloadStats>,
        image: &str,
    ) -> Result<ferry_mover::DownloadStats, StepError> {
        let d = match downloaded {
            Ok(d) => d,
            // tar -x may have said why it stopped reading.
            Err(e) => {
                let stderr = self.stderr().await;
                return Err(tar_refused_options(&stderr, "tar -x", image)
                    .unwrap_or_else(|| with_stderr(mover_err(e), "tar -x", stderr)));
            }
        };
        if let Err(e) = status_message(self.status().await, "tar -x in the destination mover pod") {
            let stderr = self.stderr().await;
            return Err(tar_refused_options(&stderr, "tar -x", image)
                .unwrap_or_else(|| with_stderr(StepError::retryable(e), "tar -x", stderr)));
        }
        Ok(d)
    }
}

impl MoverVolumeStep {
    /// Waits for a transfer permit (or the step's cancellation).
    async fn permit(&self, ctx: &StepCtx) -> Result<Permit, StepError> {
        tokio::select! {
            p = self.env.mover.transfers.clone().acquire_owned() => p.map_err(|_| {
                StepError::retryable("the daemon's transfer limit was closed")
            }),
            _ = ctx.cancellation().cancelled() => Err(StepError::cancelled()),
        }
    }

    /// The destination side: the PVC (name kept, class mapped) and a mover
    /// pod on it, running. Returns the pod's name.
    async fn destination(
        &self,
        ctx: &StepCtx,
        input: &VolumeInput,
        dest: &Cluster,
        spec: &CloneSpec,
        source_pvc: &Value,
    ) -> Result<String, StepError> {
        let run = ctx.run_id().to_string();
        let short = ctx.short();
        let tctx = TransformContext::new(spec, &run, &short)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let mut pvc =
            transform_object(&tctx, source_pvc).map_err(|e| StepError::permanent(e.to_string()))?;
        if let Some(spec) = pvc.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("dataSource");
            spec.remove("dataSourceRef");
        }
        create_owned(dest, &pvc, &run).await?;
        let down = ferry_name(&short, &format!("down-{}", input.pvc));
        create_mover_pod(
            dest,
            &pod(
                &down,
                &input.destination_namespace,
                &run,
                &self.env.mover_image,
                &self.env.preflight.mover_resources.to_json(),
                &input.pvc,
                false,
                None,
            ),
            &run,
            (&spec.source_context, &input.source_namespace),
            // Made anew on every attempt: a process an earlier one started
            // here (`find` emptying the volume) outlives its connection, as
            // exec'd processes do, and would delete what this one writes.
            true,
            ctx.cancellation(),
        )
        .await?;
        wait_running(
            dest,
            &input.destination_namespace,
            &down,
            ctx,
            self.env.mover.pod_start_timeout,
        )
        .await?;
        Ok(down)
    }
}

/// Empties the destination volume through its mover pod `down` in `ns`: a
/// copy always starts over.
async fn empty_destination(dest: &Cluster, ns: &str, down: &str) -> Result<(), StepError> {
    run_in_mover(
        dest,
        ns,
        down,
        ["sh", "-c", "cd /data && find . -mindepth 1 -delete"],
        "emptying the destination volume",
    )
    .await
}

/// Runs `command` in the mover container of the destination's pod `down` in
/// `ns` (no stdin or stdout) to a zero exit status; `what` names it in
/// errors.
async fn run_in_mover(
    dest: &Cluster,
    ns: &str,
    down: &str,
    command: [&str; 3],
    what: &str,
) -> Result<(), StepError> {
    let pods: Api<Pod> = Api::namespaced(dest.client().clone(), ns);
    let quiet = AttachParams::default()
        .container("mover")
        .stdin(false)
        .stdout(false)
        .stderr(true);
    let mut process = pods
        .exec(down, command, &quiet)
        .await
        .map_err(|e| crate::cluster::classify(e, "exec in the destination mover pod"))?;
    let status = process.take_status();
    exit_ok(status, what).await
}

/// Bytes written into `tar -x` between two write-behind flushes of the
/// destination volume, by default ([`MoverSettings::flush_every`]). Each
/// flush stalls the volume's writers while the filesystem commits, so many
/// small ones beat a few large ones; each is an exec (one at a time), so
/// not too many. Measured in the clone benchmark, four interleaved runs
/// each: every 128 MiB 0.501 of the raw pipe's speed, every 64 MiB 0.536,
/// every 32 MiB 0.533.
pub const FLUSH_EVERY: u64 = 64 << 20;

/// Flushes the destination volume's filesystem to disk: `syncfs` on the
/// volume where the image's `sync` has `-f` (GNU coreutils, BusyBox), the
/// whole node's `sync` elsewhere.
const FLUSH: [&str; 3] = ["sh", "-c", "sync -f /data 2>/dev/null || sync"];

/// Flushes what `tar -x` wrote into the destination volume (through its
/// mover pod `down` in `ns`) to disk. A volume is copied once it is on
/// disk, not when it is in the node's page cache: the step's end is
/// recorded in the run's log, and a node that crashed after it would
/// otherwise lose the data of a volume the log calls copied.
async fn flush_destination(dest: &Cluster, ns: &str, down: &str) -> Result<(), StepError> {
    run_in_mover(
        dest,
        ns,
        down,
        FLUSH,
        "flushing the destination volume to disk",
    )
    .await
}

/// Write-behind while a download runs: each time `every` more bytes went
/// into `tar -x` (`written`), the destination volume is flushed
/// ([`flush_destination`]), one flush at a time, until `written` closes
/// (the download ended). The disk writes then overlap the copy instead of
/// all waiting for its end, and the node's dirty pages stay bounded (a
/// backlog of gigabytes would stall every writer on the node once it
/// reached the kernel's `dirty_ratio`). A failed flush here is only logged:
/// the flush after `tar -x` exits is the one that counts.
async fn write_behind(
    dest: &Cluster,
    ns: &str,
    down: &str,
    mut written: tokio::sync::watch::Receiver<u64>,
    every: u64,
) {
    let mut flushed = 0u64;
    while written.changed().await.is_ok() {
        let n = *written.borrow_and_update();
        if n >= flushed.saturating_add(every) {
            flushed = n;
            if let Err(e) = flush_destination(dest, ns, down).await {
                tracing::debug!(error = %e.message, "a write-behind flush failed");
            }
        }
    }
}

impl MoverVolumeStep {
    /// Runs `download` (given where to report the bytes it wrote) into
    /// `tar -x` (`untar`) in the destination's mover pod (`dest`, its
    /// namespace, the pod), flushing the volume behind it
    /// ([`write_behind`]); then checks `tar -x`'s exit and flushes once more
    /// ([`flush_destination`]). A chunk the download found damaged is noted
    /// in `damaged`.
    async fn download_to_destination<F>(
        &self,
        (dest, ns, down): (&Cluster, &str, &str),
        untar: &mut ExecEnd,
        damaged: &std::sync::OnceLock<ferry_mover::ChunkHash>,
        download: impl FnOnce(tokio::sync::watch::Sender<u64>) -> F,
    ) -> Result<ferry_mover::DownloadStats, StepError>
    where
        F: Future<Output = ferry_mover::Result<ferry_mover::DownloadStats>>,
    {
        let (written, flushing) = tokio::sync::watch::channel(0);
        let (d, ()) = tokio::join!(
            download(written),
            write_behind(dest, ns, down, flushing, self.env.mover.flush_every),
        );
        note_damage(damaged, &d);
        let d = untar.finish(d, &self.env.mover_image).await?;
        flush_destination(dest, ns, down).await?;
        Ok(d)
    }

    /// The whole copy: the source's mover pod on a PVC from the snapshot (or
    /// the live PVC, read-only) and, at the same time, the destination's PVC
    /// and mover pod; then, under a transfer permit, the destination emptied
    /// and `tar -c` into the chunk store while a download follows it chunk
    /// by chunk into `tar -x`, so the two overlap, and `du` measures the
    /// volume alongside. Checkpoints go into
    /// the run's log. Returns the upload's and the download's counters and
    /// the measured size.
    #[allow(clippy::too_many_arguments)]
    async fn transfer(
        &self,
        ctx: &StepCtx,
        input: &VolumeInput,
        bucket: &ferry_mover::Bucket,
        source: &Cluster,
        dest: &Cluster,
        spec: &CloneSpec,
        source_pvc: &Value,
        resumed: Option<MoverCheckpoint>,
    ) -> Result<
        (
            UploadStats,
            ferry_mover::DownloadStats,
            Option<u64>,
            Option<String>,
        ),
        StepError,
    > {
        let run = ctx.run_id().to_string();
        let short = ctx.short();
        let volume = format!("{}-{}", input.source_namespace, input.pvc);

        let repair = resumed
            .as_ref()
            .map(|cp| cp.repair.clone())
            .unwrap_or_default();
        let mut last = MoverCheckpoint {
            upload: resumed
                .as_ref()
                .map(|cp| cp.upload.clone())
                .unwrap_or_else(|| UploadCheckpoint {
                    version: ferry_mover::upload::CHECKPOINT_VERSION,
                    run: run.clone(),
                    volume: volume.clone(),
                    bytes_done: 0,
                    chunks_done: 0,
                    stats: UploadStats::default(),
                }),
            // An earlier attempt's measure stands until `du` says again.
            expected_bytes: resumed.as_ref().and_then(|cp| cp.expected_bytes),
            phase: MoverPhase::Upload,
            bytes_downloaded: 0,
            source_changed: None,
            repair: repair.clone(),
        };

        // 1. The source side: a PVC from the snapshot, or the live PVC
        // read-only (where the volume can be mounted), and a mover pod on
        // it. Its first checkpoint, once the pod runs, keeps what an
        // earlier attempt stored.
        let up = ferry_name(&short, &format!("up-{}", input.pvc));
        let source_side = async {
            let mut placement = None;
            let (claim, read_only) = match input.path {
                Some(CopyPath::LiveViaMover) => {
                    placement = live_placement(source, input, source_pvc, &run).await?;
                    (input.pvc.clone(), true)
                }
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
                    create_owned(source, &tmp, &run).await?;
                    (name, false)
                }
            };
            create_mover_pod(
                source,
                &pod(
                    &up,
                    &input.source_namespace,
                    &run,
                    &self.env.mover_image,
                    &self.env.preflight.mover_resources.to_json(),
                    &claim,
                    read_only,
                    placement.as_ref(),
                ),
                &run,
                (&spec.source_context, &input.source_namespace),
                false,
                ctx.cancellation(),
            )
            .await?;
            wait_running(
                source,
                &input.source_namespace,
                &up,
                ctx,
                self.env.mover.pod_start_timeout,
            )
            .await?;
            ctx.save_checkpoint(&last, true).await.map(drop)
        };

        // 2. Meanwhile the destination's PVC and mover pod: both sides' pods
        // start at once (in a real cluster each takes seconds: scheduling,
        // attaching, pulling the image). Then, under a transfer permit, the
        // destination volume emptied and `tar -x` ready to receive; the
        // volume is emptied only here, once nothing can cut it short but
        // the step's end.
        let dest_side = self.destination(ctx, input, dest, spec, source_pvc);
        let ((), down) = tokio::try_join!(source_side, dest_side)?;
        let _permit = self.permit(ctx).await?;
        empty_destination(dest, &input.destination_namespace, &down).await?;
        let (stdin, mut untar) =
            exec_with_stdin(dest, &input.destination_namespace, &down, &TAR_X).await?;

        // 3. tar -c through exec into the chunk store; each stored chunk
        // goes on to tar -x at once.
        let (stdout, mut tar) = exec_with_stdout(
            source,
            &input.source_namespace,
            &up,
            // The archive named (`-f -`): a tar's built-in default may be
            // a tape drive rather than stdout.
            &[
                "tar",
                "-c",
                "--sparse",
                "--numeric-owner",
                BLOCKING,
                "-f",
                "-",
                "-C",
                MOUNT,
                ".",
            ],
        )
        .await?;
        let errors = tar.stderr.clone();
        let status = async move { tar.status().await };
        let changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stdout = ExitChecked::new(stdout, Box::pin(status), "tar -c in the source mover pod")
            .tolerating_changed_files(changed.clone(), errors.clone());
        // The upload reports checkpoints (bytes and chunks done) at a bounded
        // rate; they go into the run's log, and a resumed attempt hands the
        // last one back (it re-reads the source, skipping stored chunks).
        let (report_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let (chunk_tx, follow) = ferry_mover::Download::follow(bucket, &volume);
        let (hash_tx, hash_rx) = tokio::sync::oneshot::channel();
        let mut upload = ferry_mover::Upload::new(bucket, &run, &volume)
            .options(UploadOptions {
                base_manifests: Vec::new(),
                rewrite: repair,
                ..self.env.mover.upload.clone()
            })
            .on_checkpoint({
                let tx = report_tx.clone();
                move |cp| {
                    let _ = tx.send(Report::Upload(cp.clone()));
                }
            })
            .hand_to(chunk_tx);
        if let Some(cp) = resumed {
            upload = upload.resume_from(cp.upload);
        }
        let uploading = {
            let tx = report_tx.clone();
            async move {
                let out = match upload.run(stdout).await {
                    Ok(o) => o,
                    Err(e) => {
                        let stderr = errors.text();
                        return Err(
                            tar_refused_options(&stderr, "tar -c", &self.env.mover_image)
                                .unwrap_or_else(|| with_stderr(mover_err(e), "tar -c", stderr)),
                        );
                    }
                };
                let _ = hash_tx.send(out.manifest.stream_hash);
                let changed = changed
                    .load(std::sync::atomic::Ordering::SeqCst)
                    .then(|| changed_files(&errors.text()))
                    .flatten();
                let _ = tx.send(Report::Stored(
                    UploadCheckpoint {
                        version: ferry_mover::upload::CHECKPOINT_VERSION,
                        run: out.manifest.run.clone(),
                        volume: out.manifest.volume.clone(),
                        bytes_done: out.manifest.total_len,
                        chunks_done: out.manifest.chunks.len() as u64,
                        stats: out.stats,
                    },
                    changed,
                ));
                Ok::<UploadStats, StepError>(out.stats)
            }
        };
        // The volume's size, for progress, by `du` while the copy runs (on
        // a volume of millions of files it takes a while of its own); given
        // up a little after both the upload and the download ended.
        let copied = tokio_util::sync::CancellationToken::new();
        let measuring = {
            let tx = report_tx.clone();
            let copied = copied.clone();
            let pods: Api<Pod> = Api::namespaced(source.client().clone(), &input.source_namespace);
            let up = up.clone();
            async move {
                let late = async {
                    copied.cancelled().await;
                    tokio::time::sleep(STDERR_GRACE).await;
                };
                tokio::select! {
                    Some(n) = measure(&pods, &up) => {
                        let _ = tx.send(Report::Measured(n));
                    }
                    () = late => {}
                }
            }
        };
        let damaged = std::sync::OnceLock::new();
        let downloading = {
            let tx = report_tx;
            self.download_to_destination(
                (dest, &input.destination_namespace, &down),
                &mut untar,
                &damaged,
                |written| {
                    follow
                        .options(self.env.mover.download.clone())
                        .on_progress(move |s| {
                            let _ = tx.send(Report::Downloaded(s.bytes_written));
                            written.send_replace(s.bytes_written);
                        })
                        .run(stdin, async { hash_rx.await.ok() })
                },
            )
        };
        let recording = async {
            while let Some(report) = reports.recv().await {
                match report {
                    Report::Upload(cp) => {
                        last.upload = cp;
                        ctx.save_checkpoint(&last, true).await?;
                        ferry_engine::failpoint("mover.upload.checkpoint");
                    }
                    Report::Stored(cp, changed) => {
                        last.upload = cp;
                        last.phase = MoverPhase::Download;
                        last.source_changed = changed;
                        ctx.save_checkpoint(&last, true).await?;
                    }
                    Report::Downloaded(n) => {
                        last.bytes_downloaded = n;
                        ctx.save_checkpoint(&last, false).await?;
                    }
                    Report::Measured(n) => {
                        last.expected_bytes = Some(n);
                        ctx.save_checkpoint(&last, true).await?;
                    }
                }
            }
            Ok::<(), StepError>(())
        };
        // All three run to their end, whatever fails first: a download that
        // failed leaves the upload to finish and be recorded (a retry then
        // only downloads again); an upload that failed ends the download
        // (its chunks stop, the stream hash never comes). The upload's
        // error, the root cause, is the one reported.
        let copying = async {
            let both = tokio::join!(uploading, downloading);
            copied.cancel();
            both
        };
        let transfer = async { tokio::join!(copying, recording, measuring) };
        let ((up, down), recorded, ()) = tokio::select! {
            r = transfer => r,
            _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
        };
        // A damaged chunk is recorded for the next attempt even when the
        // upload failed too.
        let down = match (down, damaged.get()) {
            (Err(e), Some(&hash)) => Err(store_again(ctx, &mut last, hash, e).await),
            (d, _) => d,
        };
        let up_stats = up?;
        let downloaded = down?;
        recorded?;
        Ok((
            up_stats,
            downloaded,
            last.expected_bytes,
            last.source_changed,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_diagnostics_are_read_from_tar_s_own_lines() {
        let changed = "tar: ./busy.log: file changed as we read it\n\
                       tar: ./sock: socket ignored\n\
                       tar: ./gone: File removed before we read it\n";
        assert_eq!(
            changed_files(changed).as_deref(),
            Some("./busy.log: file changed as we read it; ./gone: File removed before we read it")
        );
        assert_eq!(
            changed_files("tar: ./x: Cannot open: Permission denied"),
            None
        );

        let refused = tar_refused_options(
            "tar: unrecognized option '--sparse'\nBusyBox v1.36.1 multi-call binary.",
            "tar -c",
            "busybox:1.36",
        )
        .expect("a refusal");
        assert!(!refused.is_retryable(), "{refused:?}");
        assert!(refused.message.contains("busybox:1.36") && refused.message.contains("no GNU tar"));
        assert!(
            refused
                .message
                .contains("(tar: unrecognized option '--sparse')")
                && !refused.message.contains("multi-call"),
            "only the refusing line: {}",
            refused.message
        );
        for other in [
            "tar: ./unrecognized option.txt: file changed as we read it",
            "error: unrecognized option in the proxy",
            "tar: ./a: Cannot open: Permission denied",
        ] {
            assert!(
                tar_refused_options(other, "tar -c", "img").is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn mover_pods_are_root_with_no_escalation_and_the_default_seccomp_profile() {
        let resources = crate::preflight::MoverResources::default().to_json();
        let placement = Placement {
            node: "node-3".into(),
            tolerations: json!([{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]),
        };
        let p = pod(
            "up",
            "ns",
            "run",
            "img",
            &resources,
            "claim",
            true,
            Some(&placement),
        );
        assert_eq!(p["spec"]["tolerations"], placement.tolerations);
        assert_eq!(p["spec"]["containers"][0]["resources"], resources);
        assert_eq!(resources["requests"]["cpu"], "100m");
        assert_eq!(resources["limits"]["memory"], "1Gi");
        let sc = &p["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert!(sc.get("runAsNonRoot").is_none() && sc.get("runAsUser").is_none());
        assert_eq!(
            p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchFields"][0]["values"][0],
            "node-3"
        );
        assert!(
            pod("down", "ns", "run", "img", &resources, "claim", false, None)["spec"]
                .get("affinity")
                .is_none()
        );
    }

    /// A simulated cluster `prod` with a namespace `app`.
    async fn cluster_with_app() -> (ferry_sim::SimCluster, Arc<Cluster>) {
        let sim = ferry_sim::SimCluster::start(ferry_sim::SimOptions {
            name: "prod".into(),
            ..ferry_sim::SimOptions::default()
        })
        .await
        .unwrap();
        let clusters =
            crate::cluster::Clusters::from_paths(&[sim.kubeconfig_path().to_owned()]).unwrap();
        let c = clusters.get("prod").await.unwrap();
        c.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}))
            .await
            .unwrap();
        (sim, c)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_volumes_are_read_where_their_users_run() {
        let (sim, c) = cluster_with_app().await;
        for (name, class, mode) in [
            ("rwo", "efs", "ReadWriteOnce"),
            ("rwx", "efs", "ReadWriteMany"),
            ("rwop", "gp3", "ReadWriteOncePod"),
            ("ours", "efs", "ReadWriteOnce"),
            ("theirs", "efs", "ReadWriteOnce"),
        ] {
            c.apply(&json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": "app"},
                "spec": {"accessModes": [mode], "storageClassName": class,
                    "resources": {"requests": {"storage": "1Gi"}}}}))
                .await
                .unwrap();
        }
        let tolerations =
            json!([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]);
        for (name, claim, labels) in [
            ("user-rwo", "rwo", json!({})),
            ("user-rwx", "rwx", json!({})),
            ("user-rwop", "rwop", json!({})),
            // This run's own mover pod is not a user; another run's is.
            (
                "ferry-a-up-ours",
                "ours",
                json!({TEMPORARY_LABEL: "true", RUN_LABEL: "run-a"}),
            ),
            (
                "ferry-b-up-theirs",
                "theirs",
                json!({TEMPORARY_LABEL: "true", RUN_LABEL: "run-b"}),
            ),
        ] {
            c.apply(&json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "app", "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "busybox"}],
                    "tolerations": tolerations,
                    "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}}))
                .await
                .unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while c
            .list_kind_in("v1", "Pod", "app")
            .await
            .unwrap()
            .iter()
            .any(|p| p.pointer("/spec/nodeName").is_none())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pods never scheduled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let node_for = |claim: &'static str| {
            let c = c.clone();
            async move {
                let pvc = c
                    .get("v1", "PersistentVolumeClaim", Some("app"), claim)
                    .await
                    .unwrap()
                    .unwrap();
                let input = VolumeInput {
                    source_namespace: "app".into(),
                    pvc: claim.into(),
                    destination_namespace: "app-copy".into(),
                    snapshot_class: None,
                    path: Some(CopyPath::LiveViaMover),
                    bucket: None,
                };
                live_placement(&c, &input, &pvc, "run-a").await
            }
        };
        let on_node = Some(Placement {
            node: "sim-node".into(),
            tolerations: tolerations.clone(),
        });
        assert_eq!(node_for("rwo").await.unwrap(), on_node);
        assert_eq!(node_for("rwx").await.unwrap(), None);
        assert_eq!(node_for("ours").await.unwrap(), None);
        assert_eq!(node_for("theirs").await.unwrap(), on_node);
        let refused = node_for("rwop").await.unwrap_err();
        assert!(!refused.is_retryable());
        assert!(
            refused
                .message
                .contains("volume app/rwop is ReadWriteOncePod and pod app/user-rwop uses it [rule live-volume-in-use]"),
            "{}",
            refused.message
        );
        sim.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mover_pod_of_an_earlier_attempt_is_made_anew_when_it_ended_or_when_asked() {
        let (sim, c) = cluster_with_app().await;
        c.apply(&json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "app"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "efs",
                "resources": {"requests": {"storage": "1Gi"}}}}))
            .await
            .unwrap();
        let mover = pod(
            "ferry-a-up-data",
            "app",
            "run-a",
            "busybox",
            &json!({}),
            "data",
            true,
            None,
        );
        let cancel = tokio_util::sync::CancellationToken::new();
        let make = |fresh| create_mover_pod(&c, &mover, "run-a", ("prod", "app"), fresh, &cancel);
        let now = || async {
            let p = c
                .get("v1", "Pod", Some("app"), "ferry-a-up-data")
                .await
                .unwrap()
                .expect("the mover pod exists");
            (
                p["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            )
        };
        make(false).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while now().await.1.as_deref() != Some("Running") {
            assert!(tokio::time::Instant::now() < deadline, "never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (first, _) = now().await;

        // A pod that can run is used again, unless asked for a fresh one.
        make(false).await.unwrap();
        assert_eq!(now().await.0, first);
        // (The destination's: a process an earlier attempt started there
        // may still run.)
        make(true).await.unwrap();
        let (renewed, _) = now().await;
        assert_ne!(renewed, first, "made anew when asked");
        let first = renewed;

        // Evicted (its node drained, say): it never runs again, and the
        // next attempt must not wait on it.
        let pods: Api<Pod> = Api::namespaced(c.client().clone(), "app");
        pods.patch_status(
            "ferry-a-up-data",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Failed", "reason": "Evicted"}})),
        )
        .await
        .unwrap();
        make(false).await.unwrap();
        let (second, phase) = now().await;
        assert_ne!(second, first, "made anew");
        assert_ne!(phase.as_deref(), Some("Failed"));

        // Another run's pod of that name is never touched.
        let theirs = pod(
            "ferry-a-up-data",
            "app",
            "run-b",
            "busybox",
            &json!({}),
            "data",
            true,
            None,
        );
        let refused = create_mover_pod(&c, &theirs, "run-b", ("prod", "app"), true, &cancel)
            .await
            .unwrap_err();
        assert!(
            refused.message.contains("is not this clone's"),
            "{}",
            refused.message
        );
        assert_eq!(now().await.0, second);
        sim.stop().await;
    }

    #[test]
    fn a_pod_that_cannot_run_fails_for_good_only_when_waiting_will_not_help() {
        assert!(lasting(
            "not scheduled (Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.)"
        ));
        assert!(lasting(
            "container waiting (ImagePullBackOff: Back-off pulling image \"x\")"
        ));
        assert!(!lasting(
            "not scheduled (Unschedulable: 0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims.)"
        ));
        assert!(!lasting("container waiting (ContainerCreating: )"));
        assert!(!lasting("the cluster says nothing of it (phase Pending)"));
    }

    #[test]
    fn exit_codes_come_from_the_status_causes() {
        let status: Status = serde_json::from_value(json!({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: exit status 1",
            "details": {"causes": [{"reason": "ExitCode", "message": "1"}]}
        }))
        .unwrap();
        assert_eq!(exit_code(&status), Some(1));
        let internal: Status = serde_json::from_value(json!({
            "metadata": {}, "status": "Failure", "message": "boom", "reason": "InternalError"
        }))
        .unwrap();
        assert_eq!(exit_code(&internal), None);
    }

    #[test]
    fn checkpoints_decode_across_versions() {
        // An older binary's checkpoint: the upload's alone.
        let old = json!({"version": 1, "run": "r", "volume": "v", "bytes_done": 10,
            "chunks_done": 1, "stats": {"bytes_read": 10, "chunks": 1, "chunks_uploaded": 1,
            "chunks_skipped": 0, "bytes_uploaded": 5, "raw_bytes_uploaded": 10}});
        let cp: MoverCheckpoint = serde_json::from_value(old).unwrap();
        assert_eq!(cp.phase, MoverPhase::Upload);
        assert_eq!(cp.expected_bytes, None);
        assert_eq!(cp.upload.bytes_done, 10);
        assert_eq!(cp.upload.stats.retries, 0);

        // This binary's, with the fields a progress display reads; an older
        // binary resuming from it still finds its upload checkpoint.
        let new = MoverCheckpoint {
            expected_bytes: Some(100),
            phase: MoverPhase::Download,
            bytes_downloaded: 7,
            ..cp.clone()
        };
        let v = serde_json::to_value(&new).unwrap();
        assert_eq!(v["expected_bytes"], 100);
        assert_eq!(v["phase"], "download");
        assert_eq!(v["bytes_downloaded"], 7);
        assert_eq!(v["bytes_done"], 10);
        assert_eq!(v["stats"]["bytes_read"], 10);
        assert!(v.get("repair").is_none(), "written only when there is one");
        let up: UploadCheckpoint = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(up, cp.upload);
        assert_eq!(serde_json::from_value::<MoverCheckpoint>(v).unwrap(), new);
        let repairing = MoverCheckpoint {
            repair: vec![ferry_mover::ChunkHash::of(b"chunk")],
            ..new
        };
        let v = serde_json::to_value(&repairing).unwrap();
        assert_eq!(
            v["repair"][0],
            ferry_mover::ChunkHash::of(b"chunk").to_hex()
        );
        assert_eq!(
            serde_json::from_value::<MoverCheckpoint>(v).unwrap(),
            repairing
        );
    }
}

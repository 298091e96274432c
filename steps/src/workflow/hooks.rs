//! Steps `prehook`, `thaw` and `posthook`: execution hooks, commands run
//! through the pod exec API in the app's own containers.
//!
//! - `prehook/<src-ns>/<hook>` runs before that namespace's snapshots, in
//!   the source pods the hook matches (e.g. to quiesce a database).
//! - `thaw/<src-ns>/<hook>` runs the hook's `thawCommand` after the
//!   namespace's snapshots, in the pods where the pre hook ran. The pre
//!   hook's compensation runs the thaw as well when the thaw step did not
//!   succeed, so an app is never left quiesced by a clone that rolls back.
//! - `posthook/<dst-ns>/<hook>` runs after apply, in the destination pods
//!   it matches, once the workloads whose pod templates it matches are
//!   ready (within the hook's timeout).
//!
//! A hook matches a pod by the pod's labels (`podSelector`) and runs in
//! each of its containers whose image matches `containerImage`, or in the
//! pod's first container when no image pattern is given (as `kubectl exec`
//! does). Pods ferry made itself (mover pods) never match. The command runs
//! without a shell; a non-zero exit or the timeout is the hook's failure,
//! and the hook's `onError` decides what that does: `fail` rolls the clone
//! back, `continue` lets it go on and end `SucceededWithWarnings` (the
//! step is declared non-critical). A dropped exec connection is retried,
//! which runs the command again in every matched pod: hooks must be
//! idempotent, as Velero and Astra Control require too.
//!
//! Only the hook's exit status and the tail of its stderr reach the log,
//! never its stdout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::{CompensateCtx, Step, StepCtx, StepError};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::CloneEnv;
use super::health::workload_ready;
use crate::cluster::Cluster;
use crate::object::{self, TEMPORARY_LABEL};
use crate::selector::LabelSelector;
use crate::spec::{CloneSpec, HookSpec, HookStage, OnError};

/// Bytes of a failed hook's stderr kept in its error message.
const STDERR_TAIL: usize = 400;

/// How long a hook's output streams may go on after its exit status.
const STREAM_GRACE: Duration = Duration::from_secs(2);

/// Which hook, where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookInput {
    /// The hook's name in the spec.
    pub hook: String,
    /// The namespace it runs in: source for pre hooks and thaws,
    /// destination for post hooks.
    pub namespace: String,
}

/// Where a hook ran (each one exited zero).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookOutput {
    /// `pod/container`, in the order run.
    pub ran: Vec<String>,
}

/// A container a hook runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    pod: String,
    container: String,
}

impl Target {
    fn parse(s: &str) -> Option<Target> {
        let (pod, container) = s.split_once('/')?;
        Some(Target {
            pod: pod.into(),
            container: container.into(),
        })
    }
}

/// A hook's matchers, compiled (the spec was validated at submit).
struct Matcher {
    selector: LabelSelector,
    image: Option<Regex>,
}

impl Matcher {
    fn new(h: &HookSpec) -> Result<Self, StepError> {
        let selector = match &h.pod_selector {
            Some(s) => LabelSelector::parse(s)
                .map_err(|e| StepError::permanent(format!("hook {}: podSelector: {e}", h.name)))?,
            None => LabelSelector::default(),
        };
        let image = match &h.container_image {
            Some(re) => Some(Regex::new(re).map_err(|e| {
                StepError::permanent(format!("hook {}: containerImage: {e}", h.name))
            })?),
            None => None,
        };
        Ok(Matcher { selector, image })
    }

    /// The containers of a pod spec (`spec.containers` of a pod or a
    /// template) this hook runs in.
    fn containers(&self, labels: &Value, pod_spec: &Value) -> Vec<String> {
        if !self.selector.matches(&object::string_map(Some(labels))) {
            return Vec::new();
        }
        let containers = pod_spec["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let name = |c: &Value| c["name"].as_str().unwrap_or_default().to_owned();
        match &self.image {
            Some(re) => containers
                .iter()
                .filter(|c| re.is_match(c["image"].as_str().unwrap_or_default()))
                .map(name)
                .collect(),
            None => containers.first().map(name).into_iter().collect(),
        }
    }

    /// Running pods of `pods` and the containers the hook runs in, by name.
    fn targets(&self, pods: &[Value]) -> Vec<Target> {
        let mut out = Vec::new();
        for p in pods {
            let labels = &p["metadata"]["labels"];
            if labels.get(TEMPORARY_LABEL).is_some()
                || p.pointer("/status/phase").and_then(Value::as_str) != Some("Running")
            {
                continue;
            }
            for container in self.containers(labels, &p["spec"]) {
                out.push(Target {
                    pod: object::name(p).to_owned(),
                    container,
                });
            }
        }
        out.sort_by(|a, b| (&a.pod, &a.container).cmp(&(&b.pod, &b.container)));
        out
    }
}

/// Finds the hook of `stage` named `name` in the run's spec.
fn hook_of(spec: &CloneSpec, stage: HookStage, name: &str) -> Result<HookSpec, StepError> {
    spec.hooks
        .iter()
        .find(|h| h.stage == stage && h.name == name)
        .cloned()
        .ok_or_else(|| {
            StepError::permanent(format!(
                "the spec has no {stage:?} hook named {name}; the plan and the spec disagree"
            ))
        })
}

/// Runs `command` in one container and waits for its exit, at most `limit`.
///
/// # Errors
/// Permanent for a non-zero exit or the time limit (with the tail of
/// stderr); retryable when the exec connection fails or ends without a
/// status; cancelled when `cancel` fires.
async fn exec(
    cluster: &Cluster,
    ns: &str,
    t: &Target,
    command: &[String],
    limit: Duration,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    let what = format!("{:?} in {ns}/{}/{}", command.join(" "), t.pod, t.container);
    let pods: Api<Pod> = Api::namespaced(cluster.client().clone(), ns);
    let ap = AttachParams::default()
        .container(t.container.clone())
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let run = async {
        let mut p = pods
            .exec(&t.pod, command.to_vec(), &ap)
            .await
            .map_err(|e| crate::cluster::classify(e, &format!("exec {what}")))?;
        // Stdout is read and dropped, stderr keeps its tail; both as tasks,
        // since kube never ends them when the connection drops: the exit
        // status decides, and the streams get a moment to finish after it.
        let stdout = tokio::spawn(read_tail(p.stdout()));
        let stderr = tokio::spawn(read_tail(p.stderr()));
        let status = match p.take_status() {
            Some(s) => s.await,
            None => None,
        };
        stdout.abort();
        let stderr = tokio::time::timeout(STREAM_GRACE, stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        drop(p);
        let tail = tail(&stderr);
        match status {
            Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
            Some(s) => Err(StepError::permanent(format!(
                "hook {what} failed: {}{}",
                s.message.unwrap_or_else(|| "non-zero exit".into()),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; stderr: {tail}")
                }
            ))),
            None => Err(StepError::retryable(format!(
                "hook {what}: the exec stream ended without an exit status"
            ))),
        }
    };
    tokio::select! {
        r = tokio::time::timeout(limit, run) => r.unwrap_or_else(|_| Err(StepError::permanent(format!(
            "hook {what} did not finish within {}s (its timeoutSeconds)",
            limit.as_secs()
        )))),
        _ = cancel.cancelled() => Err(StepError::cancelled()),
    }
}

/// Reads a stream to its end, keeping only its last [`STDERR_TAIL`] bytes:
/// memory stays bounded whatever a hook prints.
async fn read_tail(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut r) = r else {
        return kept;
    };
    let mut buf = vec![0u8; 8192];
    loop {
        match tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                let over = kept.len().saturating_sub(STDERR_TAIL);
                kept.drain(..over);
            }
        }
    }
}

/// The last [`STDERR_TAIL`] bytes of `b`, as text on one line.
fn tail(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().replace('\n', " | ")
}

/// Runs `command` in every target, in order; stops at the first failure.
async fn run_in(
    cluster: &Cluster,
    ns: &str,
    targets: &[Target],
    command: &[String],
    limit: Duration,
    cancel: &CancellationToken,
) -> Result<HookOutput, StepError> {
    let mut out = HookOutput::default();
    for t in targets {
        exec(cluster, ns, t, command, limit, cancel).await?;
        out.ran.push(format!("{}/{}", t.pod, t.container));
    }
    Ok(out)
}

fn limit(h: &HookSpec) -> Duration {
    Duration::from_secs(h.timeout_seconds)
}

/// Runs a pre hook in the source pods it matches.
///
/// # Guarantees
/// Runs the command once per matched container per attempt; writes nothing
/// through the API.
///
/// # Assumptions
/// The hook is idempotent (a retry runs it again). `compensate` runs the
/// hook's thaw command unless its `thaw` step succeeded.
///
/// # Errors
/// Permanent for a non-zero exit or timeout; retryable for exec trouble.
pub struct PreHookStep {
    pub(super) env: Arc<CloneEnv>,
}

impl Step for PreHookStep {
    type Input = HookInput;
    type Output = HookOutput;

    fn kind(&self) -> &'static str {
        "prehook"
    }

    async fn run(&self, ctx: &StepCtx, input: HookInput) -> Result<HookOutput, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let h = hook_of(&spec, HookStage::Pre, &input.hook)?;
        let source = self.env.clusters.get(&spec.source_context).await?;
        let pods = source.list_kind_in("v1", "Pod", &input.namespace).await?;
        let targets = Matcher::new(&h)?.targets(&pods);
        if targets.is_empty() {
            ctx.warn(format!(
                "pre hook {} matched no running container in {}; it did not run",
                h.name, input.namespace
            ));
        }
        run_in(
            &source,
            &input.namespace,
            &targets,
            &h.command,
            limit(&h),
            ctx.cancellation(),
        )
        .await
    }

    async fn compensate(
        &self,
        ctx: &CompensateCtx,
        input: HookInput,
        output: Option<HookOutput>,
    ) -> Result<(), StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let h = hook_of(&spec, HookStage::Pre, &input.hook)?;
        let Some(thaw) = &h.thaw_command else {
            return Ok(());
        };
        let thaw_step = format!("thaw/{}/{}", input.namespace, input.hook);
        if ctx.output_of::<HookOutput>(&thaw_step).is_some() {
            return Ok(());
        }
        let source = self.env.clusters.get(&spec.source_context).await?;
        // Where the pre hook ran; if it did not finish, wherever it may have.
        let targets = match output {
            Some(o) => o.ran.iter().filter_map(|s| Target::parse(s)).collect(),
            None => {
                let pods = source.list_kind_in("v1", "Pod", &input.namespace).await?;
                Matcher::new(&h)?.targets(&pods)
            }
        };
        thaw_in(&source, &input.namespace, &targets, thaw, &h).await?;
        Ok(())
    }
}

/// Runs a thaw command in targets that still exist (a pod that is gone
/// holds nothing to thaw).
async fn thaw_in(
    cluster: &Cluster,
    ns: &str,
    targets: &[Target],
    command: &[String],
    h: &HookSpec,
) -> Result<HookOutput, StepError> {
    let mut live = Vec::new();
    for t in targets {
        if cluster.get("v1", "Pod", Some(ns), &t.pod).await?.is_some() {
            live.push(t.clone());
        }
    }
    run_in(
        cluster,
        ns,
        &live,
        command,
        limit(h),
        &CancellationToken::new(),
    )
    .await
}

/// Undoes a pre hook after the namespace's snapshots: the thaw command, in
/// the containers where the pre hook ran.
///
/// # Guarantees
/// Runs the thaw once per container per attempt, also after a retry.
///
/// # Assumptions
/// The thaw command is idempotent. Nothing to compensate.
///
/// # Errors
/// Permanent for a non-zero exit or timeout; retryable for exec trouble.
pub struct ThawStep {
    pub(super) env: Arc<CloneEnv>,
}

impl Step for ThawStep {
    type Input = HookInput;
    type Output = HookOutput;

    fn kind(&self) -> &'static str {
        "thaw"
    }

    async fn run(&self, ctx: &StepCtx, input: HookInput) -> Result<HookOutput, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let h = hook_of(&spec, HookStage::Pre, &input.hook)?;
        let Some(thaw) = &h.thaw_command else {
            return Ok(HookOutput::default());
        };
        let pre: HookOutput =
            ctx.output_of(&format!("prehook/{}/{}", input.namespace, input.hook))?;
        let targets: Vec<Target> = pre.ran.iter().filter_map(|s| Target::parse(s)).collect();
        let source = self.env.clusters.get(&spec.source_context).await?;
        thaw_in(&source, &input.namespace, &targets, thaw, &h).await
    }

    async fn compensate(
        &self,
        _ctx: &CompensateCtx,
        _input: HookInput,
        _output: Option<HookOutput>,
    ) -> Result<(), StepError> {
        Ok(())
    }
}

/// Runs a post hook in the destination pods it matches, once the
/// workloads whose pod templates it matches are ready.
///
/// # Guarantees
/// Reads the destination and execs; writes nothing through the API.
///
/// # Assumptions
/// The hook is idempotent. Nothing to compensate: rollback deletes the
/// destination namespaces.
///
/// # Errors
/// Permanent for a non-zero exit, the timeout, or matched workloads not
/// ready within the timeout; retryable for exec trouble.
pub struct PostHookStep {
    pub(super) env: Arc<CloneEnv>,
}

impl Step for PostHookStep {
    type Input = HookInput;
    type Output = HookOutput;

    fn kind(&self) -> &'static str {
        "posthook"
    }

    async fn run(&self, ctx: &StepCtx, input: HookInput) -> Result<HookOutput, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let h = hook_of(&spec, HookStage::Post, &input.hook)?;
        let m = Matcher::new(&h)?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        let ns = &input.namespace;
        let until = Instant::now() + limit(&h);
        loop {
            let mut waiting = Vec::new();
            for kind in ["Deployment", "StatefulSet", "DaemonSet"] {
                for w in dest.list_kind_in("apps/v1", kind, ns).await? {
                    let t = &w["spec"]["template"];
                    if !m
                        .containers(&t["metadata"]["labels"], &t["spec"])
                        .is_empty()
                        && workload_ready(&w) != Some(true)
                    {
                        waiting.push(format!("{kind} {ns}/{}", object::name(&w)));
                    }
                }
            }
            if waiting.is_empty() {
                break;
            }
            if Instant::now() >= until {
                return Err(StepError::permanent(format!(
                    "post hook {}: {} not ready within {}s (its timeoutSeconds), so the hook did not run",
                    h.name,
                    waiting.join(", "),
                    h.timeout_seconds
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(self.env.health_poll) => {}
                _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
            }
        }
        let pods = dest.list_kind_in("v1", "Pod", ns).await?;
        let targets = m.targets(&pods);
        if targets.is_empty() {
            ctx.warn(format!(
                "post hook {} matched no running container in {ns}; it did not run",
                h.name
            ));
        }
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        run_in(&dest, ns, &targets, &h.command, left, ctx.cancellation()).await
    }

    async fn compensate(
        &self,
        _ctx: &CompensateCtx,
        _input: HookInput,
        _output: Option<HookOutput>,
    ) -> Result<(), StepError> {
        Ok(())
    }
}

/// Whether a hook step is critical: a failure rolls the clone back only
/// when the hook's `onError` is `fail`.
pub(super) fn critical(h: &HookSpec) -> bool {
    h.on_error() == OnError::Fail
}

//! The clone workflow on ferry's engine: the step types, the registry that
//! holds them, and the submission of a [`CloneSpec`].
//!
//! A clone is submitted with a one-step plan, `preflight`; preflight
//! inventories the source, checks every rule against the destination,
//! stores the transformed objects as an encrypted blob (the *bundle*), and
//! extends the plan with the steps only it can name. Each step has its own
//! file with its compensation beside it.
//!
//! Volumes are cloned in place through CSI snapshots (same cluster, same
//! driver), or through the data mover and a bucket (another cluster or
//! driver, or a driver that cannot snapshot). Execution hooks run in the
//! app's pods around the snapshots (pre hooks and their thaws) and after
//! apply (post hooks).

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{Json, Registry, StepDecl, StepError, Submission};
use ferry_store::BlobRef;
use serde::{Deserialize, Serialize};

use crate::cluster::Clusters;
use crate::preflight::PreflightConfig;
use crate::spec::CloneSpec;

mod apply;
mod cleanup;
mod health;
mod hooks;
mod mover;
mod namespaces;
mod preflight_step;
mod volumes;

pub use apply::ApplyStep;
pub use cleanup::CleanupStep;
pub use health::{HealthOutput, HealthStep, workload_ready};
pub use hooks::{HookInput, HookOutput, PostHookStep, PreHookStep, ThawStep};
pub use mover::{
    DEFAULT_TRANSFER_LIMIT, FLUSH_EVERY, MoverCheckpoint, MoverOutput, MoverPhase, MoverSettings,
    MoverVolumeStep,
};
pub use namespaces::NamespacesStep;
pub use preflight_step::PreflightStep;
pub use volumes::{SnapshotOutput, SnapshotStep, VolumeInput, VolumeStep};

/// The engine's name for this workflow.
pub const WORKFLOW: &str = "clone";

/// What the clone steps share: clusters and settings.
pub struct CloneEnv {
    /// Clusters by kubeconfig context.
    pub clusters: Clusters,
    /// Preflight settings (capabilities, buckets …).
    pub preflight: PreflightConfig,
    /// How often the health step looks again.
    pub health_poll: Duration,
    /// The data mover's buckets by name (empty: no volume goes via the mover).
    pub buckets: std::collections::BTreeMap<String, ferry_mover::Bucket>,
    /// The image of the mover pods (it needs GNU `tar`, `sh`, `du`, `find`
    /// and `sleep`).
    pub mover_image: String,
    /// How volume data moves, shared by every clone of the daemon: the
    /// transfer limit (`mover.transfers`), upload and download options.
    pub mover: MoverSettings,
}

/// The mover image when the config names none: Debian's slim image, for
/// its GNU tar (with `sh`, `du`, `find` and `sleep`). BusyBox's `tar` has no
/// `--sparse` (it refuses it, checked against BusyBox 1.35) and keeps no
/// holes, so `busybox` is no mover image; the step names the image and the
/// fix when a `tar` refuses an option.
pub const DEFAULT_MOVER_IMAGE: &str = "docker.io/library/debian:12-slim";

/// The transformed objects a clone applies, stored encrypted (it holds
/// Secrets) as a blob; events carry only its reference.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Bundle {
    /// Destination Namespace objects.
    pub namespaces: Vec<serde_json::Value>,
    /// Cluster-scoped dependencies, created only when absent.
    pub dependencies: Vec<serde_json::Value>,
    /// Namespaced objects in batches of one kind, in apply order (PVCs
    /// excluded: the volume steps make them).
    pub batches: Vec<Vec<serde_json::Value>>,
    /// The source PVCs, as listed (the volume steps transform them).
    #[serde(default)]
    pub source_pvcs: Vec<serde_json::Value>,
}

/// What preflight records (no Secret data: counts and names only).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreflightOutput {
    /// The encrypted bundle.
    pub bundle: BlobRef,
    /// Destination namespaces, in the order created.
    pub namespaces: Vec<String>,
    /// Objects to apply, by kind.
    pub kinds: std::collections::BTreeMap<String, usize>,
    /// Cluster-scoped dependencies (`Kind name`).
    pub dependencies: Vec<String>,
    /// Hazards the plan warns about.
    pub warnings: Vec<String>,
}

/// The clone workflow: its registry and its submissions.
#[derive(Clone)]
pub struct CloneWorkflow {
    env: Arc<CloneEnv>,
}

impl CloneWorkflow {
    /// A workflow over `env`.
    pub fn new(env: CloneEnv) -> Self {
        CloneWorkflow { env: Arc::new(env) }
    }

    /// The clusters this workflow reaches.
    pub fn clusters(&self) -> &Clusters {
        &self.env.clusters
    }

    /// Registers every clone step type.
    pub fn register(&self, registry: &mut Registry) {
        registry
            .register(PreflightStep {
                env: self.env.clone(),
            })
            .register(NamespacesStep {
                env: self.env.clone(),
            })
            .register(ApplyStep {
                env: self.env.clone(),
            })
            .register(HealthStep {
                env: self.env.clone(),
            })
            .register(CleanupStep {
                env: self.env.clone(),
            })
            .register(SnapshotStep {
                env: self.env.clone(),
            })
            .register(VolumeStep {
                env: self.env.clone(),
            })
            .register(MoverVolumeStep {
                env: self.env.clone(),
            })
            .register(PreHookStep {
                env: self.env.clone(),
            })
            .register(ThawStep {
                env: self.env.clone(),
            })
            .register(PostHookStep {
                env: self.env.clone(),
            });
    }

    /// The submission of a clone: its spec and the one-step initial plan.
    pub fn submission(spec: &CloneSpec) -> Result<Submission, StepError> {
        let spec_json = Json::encode(spec)
            .map_err(|e| StepError::permanent(format!("spec does not encode: {e}")))?;
        Ok(Submission {
            name: spec.name.clone(),
            workflow: WORKFLOW.into(),
            spec: spec_json,
            plan: vec![preflight_decl()],
        })
    }
}

/// The answer to a dry run: the plan as people and scripts read it, and
/// every refusal (the run would end `Refused` when there is any).
#[derive(Clone, Debug, Serialize)]
pub struct DryRunAnswer {
    /// The plan, warnings and the rules' refusals (Secret data redacted).
    pub plan: crate::dryrun::DryRun,
    /// Every refusal, including what this build cannot carry yet.
    pub refusals: Vec<ferry_engine::Refusal>,
}

impl DryRunAnswer {
    /// Text for a terminal.
    pub fn render_text(&self) -> String {
        let mut s = crate::dryrun::render_text(&self.plan);
        if !self.refusals.is_empty() {
            s.push_str(&format!(
                "\nThe clone would be REFUSED ({} reason(s)):\n",
                self.refusals.len()
            ));
            for r in &self.refusals {
                s.push_str(&format!("  - {r}\n"));
            }
        }
        s
    }
}

impl CloneWorkflow {
    /// What a clone of `spec` would do: reads both clusters (and lists the
    /// mover's bucket), writes nothing anywhere (not even ferry's log).
    pub async fn dry_run(&self, spec: &CloneSpec) -> Result<DryRunAnswer, StepError> {
        spec.validate()
            .map_err(|e| StepError::permanent(format!("invalid spec: {e}")))?;
        let (prepared, refusals) = preflight_step::gather(&self.env, spec, None).await?;
        let plan =
            crate::dryrun::dry_run(spec, &prepared.inventory, &prepared.report, &prepared.plan);
        Ok(DryRunAnswer { plan, refusals })
    }
}

fn decl(id: &str, kind: &str, deps: &[&str]) -> StepDecl {
    StepDecl {
        id: id.into(),
        kind: kind.into(),
        version: crate::plan::STEP_VERSION,
        input: Json::null(),
        deps: deps.iter().map(|d| (*d).into()).collect(),
        critical: true,
        max_attempts: 6,
        attempt_timeout_ms: Some(10 * 60 * 1000),
        deadline_ms: None,
    }
}

fn preflight_decl() -> StepDecl {
    decl("preflight", "preflight", &[])
}

/// Cluster-scoped kinds an app may carry (created only when absent).
pub(crate) const DEPENDENCY_KINDS: &[(&str, &str)] = &[
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ("networking.k8s.io/v1", "IngressClass"),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
    ),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
];

/// Reads and decrypts the bundle.
pub(crate) fn load_bundle(store: &ferry_store::Store, blob: &BlobRef) -> Result<Bundle, StepError> {
    let bytes = store
        .get_blob(blob)
        .map_err(|e| StepError::permanent(format!("bundle blob: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StepError::permanent(format!("bundle does not decode: {e}")))
}

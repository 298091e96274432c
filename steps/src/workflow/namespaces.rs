//! Step `namespaces`: create each destination namespace, labelled with the
//! run; compensation deletes the ones that carry this run's label.

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{CompensateCtx, Step, StepCtx, StepError};
use serde_json::Value;

use super::{CloneEnv, PreflightOutput, load_bundle};
use crate::cluster::Created;
use crate::object::RUN_LABEL;
use crate::spec::CloneSpec;

/// Creates the destination namespaces.
///
/// # Guarantees
/// A namespace is created only when absent; an existing one is adopted only
/// if it carries this run's label (a re-run after a crash), otherwise the
/// step fails permanently and the namespace is never touched.
///
/// # Assumptions
/// Idempotent; `compensate` works without an output: it looks up every
/// destination namespace of the spec and deletes only those labelled with
/// this run, then waits until they are gone.
///
/// # Errors
/// Permanent for a namespace that exists and is not this run's.
pub struct NamespacesStep {
    pub(super) env: Arc<CloneEnv>,
}

fn run_label(o: &Value) -> Option<&str> {
    o.pointer("/metadata/labels")
        .and_then(|l| l.get(RUN_LABEL))
        .and_then(Value::as_str)
}

impl Step for NamespacesStep {
    type Input = Value;
    type Output = Vec<String>;

    fn kind(&self) -> &'static str {
        "namespaces"
    }

    async fn run(&self, ctx: &StepCtx, _input: Value) -> Result<Vec<String>, StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let pre: PreflightOutput = ctx.output_of("preflight")?;
        let bundle = load_bundle(ctx.store(), &pre.bundle)?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        let run = ctx.run_id().to_string();
        let mut made = Vec::new();
        for ns in &bundle.namespaces {
            let name = ns
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            match dest.create_if_absent(ns).await? {
                Created::Created(_) => {}
                Created::Exists(existing) if run_label(&existing) == Some(run.as_str()) => {}
                Created::Exists(_) => {
                    return Err(StepError::permanent(format!(
                        "destination namespace {name} already exists on cluster {} and was not created by this clone; ferry never touches it: choose another destination namespace or delete it",
                        spec.destination_context
                    )));
                }
            }
            made.push(name);
        }
        Ok(made)
    }

    async fn compensate(
        &self,
        ctx: &CompensateCtx,
        _input: Value,
        _output: Option<Vec<String>>,
    ) -> Result<(), StepError> {
        let spec: CloneSpec = ctx.spec()?;
        let dest = self.env.clusters.get(&spec.destination_context).await?;
        let run = ctx.run_id().to_string();
        let mut deleting = Vec::new();
        for m in &spec.namespaces {
            let name = spec
                .destination_of(&m.source)
                .unwrap_or_else(|| m.source.clone());
            if let Some(ns) = dest.get("v1", "Namespace", None, &name).await?
                && run_label(&ns) == Some(run.as_str())
            {
                dest.delete("v1", "Namespace", None, &name).await?;
                deleting.push(name);
            }
        }
        // Wait until they are gone, so "rolled back" means nothing is left.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        for name in deleting {
            while dest.get("v1", "Namespace", None, &name).await?.is_some() {
                if tokio::time::Instant::now() > deadline {
                    return Err(StepError::retryable(format!(
                        "namespace {name} is still terminating"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

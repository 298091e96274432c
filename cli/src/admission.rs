//! Admission of a submitted clone: who may clone from which source
//! namespaces, decided with the namespaces' labels as the source cluster
//! shows them at submit, and recorded with the run.
//!
//! The record ([`Admission`]) is the input of the clone's first step,
//! `preflight`, in the initial plan (`Planned`, seq 1): the daemon builds
//! the plan, so a client cannot forge it, and it is part of the hash-chained
//! log, so `ferry events` shows on what grounds the clone was let in. Later
//! requests about the clone (list, get, events, cancel, verify, delete)
//! decide a member's access from the recorded labels alone
//! ([`recorded_sources`]): no cluster is read, and relabelling a namespace
//! afterwards changes nothing for an existing clone.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_engine::{Event, Json, Submission};
use ferry_steps::cluster::Clusters;
use ferry_store::Envelope;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tokens::{Grant, Principal, Role, SourceNamespace};

/// How long reading the source namespaces may take at submit, all together.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// What the daemon saw and decided when it let a clone in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admission {
    /// The token that submitted it (`unix-socket` for the owner).
    pub by: String,
    /// Its role.
    pub role: Role,
    /// A member's namespace selector, as configured then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// The source cluster's context.
    pub source_context: String,
    /// Each source namespace: its labels then, and why it was allowed.
    pub source_namespaces: Vec<AdmittedNamespace>,
}

/// One source namespace as admitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmittedNamespace {
    /// The namespace.
    pub name: String,
    /// Its labels on the source cluster at submit; `None` when not read.
    pub labels: Option<BTreeMap<String, String>>,
    /// Why the labels were not read (absent namespace, unreachable cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_unread: Option<String>,
    /// What allowed it: the role, the name, or the selector.
    pub allowed_by: Grant,
}

/// Why a clone is not admitted; the API turns it into 403 or 502.
#[derive(Debug)]
pub enum Denied {
    /// The principal may not clone from this namespace (403).
    Forbidden(String),
    /// The labels a member's selector needs could not be read (502).
    Unreadable(String),
}

/// Reads `ns`'s labels on `context`: `Ok(None)` when it does not exist.
async fn read_labels(
    clusters: &Clusters,
    context: &str,
    ns: &str,
    deadline: tokio::time::Instant,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let read = async {
        let cluster = clusters.get(context).await.map_err(|e| e.to_string())?;
        let obj = cluster
            .get("v1", "Namespace", None, ns)
            .await
            .map_err(|e| e.to_string())?;
        Ok(obj.map(|o| ferry_steps::object::labels(&o)))
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", READ_TIMEOUT.as_secs())))
}

/// Decides whether `who` may clone `sources` from `context`, reading each
/// namespace's labels. With `record` every namespace is read (so that the
/// record serves members with selectors later, whoever submitted); without,
/// only those a member's selector has to decide on (a dry run records
/// nothing). A label read that fails is fatal only when the decision
/// needs it.
///
/// # Errors
/// [`Denied::Forbidden`] naming the namespace and the selector;
/// [`Denied::Unreadable`] when a needed read failed.
pub async fn admit(
    clusters: &Clusters,
    who: &Principal,
    context: &str,
    sources: &[String],
    record: bool,
) -> Result<Admission, Denied> {
    let mut admitted = Vec::new();
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    for name in sources {
        let needed = who.needs_labels(name);
        let (labels, labels_unread) = if needed || record {
            match read_labels(clusters, context, name, deadline).await {
                Ok(Some(l)) => (Some(l), None),
                Ok(None) => (
                    None,
                    Some(format!("namespace {name} does not exist on {context}")),
                ),
                Err(e) if needed => {
                    return Err(Denied::Unreadable(format!(
                        "cannot read namespace {name:?} on context {context} to check token {:?}'s namespace_selector: {e}; nothing was recorded, try again",
                        who.name
                    )));
                }
                Err(e) => (None, Some(format!("not read: {e}"))),
            }
        } else {
            (None, None)
        };
        let ns = SourceNamespace {
            name: name.clone(),
            labels,
        };
        let Some(allowed_by) = who.grant(&ns) else {
            // Read with no labels: the namespace is absent (a failed read
            // that was needed has returned above).
            let absent = ns.labels.is_none() && labels_unread.is_some();
            return Err(Denied::Forbidden(refusal(who, context, &ns, absent)));
        };
        admitted.push(AdmittedNamespace {
            name: ns.name,
            labels: ns.labels,
            labels_unread,
            allowed_by,
        });
    }
    Ok(Admission {
        by: who.name.clone(),
        role: who.role,
        namespace_selector: who.namespace_selector.as_ref().map(|s| s.to_string()),
        source_context: context.to_owned(),
        source_namespaces: admitted,
    })
}

/// The 403 message for a namespace `who` may not clone from. It names the
/// namespace and the selector, never the namespace's labels (the member
/// has no access to them).
fn refusal(who: &Principal, context: &str, ns: &SourceNamespace, absent: bool) -> String {
    let name = &ns.name;
    let head = format!(
        "token {:?} (member) may not clone from namespace {name:?}",
        who.name
    );
    let fix = "ask an admin to add it to the token's namespaces or to label it to match";
    match &who.namespace_selector {
        None => format!(
            "{head}: it is not among the token's namespaces {:?}; ask an admin for access to it",
            who.namespaces
        ),
        Some(sel) if absent => format!(
            "{head}: it does not exist on context {context}, so the token's namespace_selector {:?} cannot match it; check the name",
            sel.to_string()
        ),
        Some(sel)
            if ns
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(ferry_steps::object::RUN_LABEL)) =>
        {
            format!(
                "{head}: it was created by a ferry clone (label {}), and the labels it copied do not count for the token's namespace_selector {:?}; {fix}",
                ferry_steps::object::RUN_LABEL,
                sel.to_string()
            )
        }
        Some(sel) => format!(
            "{head} on context {context}: it is not among the token's namespaces and its labels do not match the token's namespace_selector {:?}; {fix}",
            sel.to_string()
        ),
    }
}

/// Records `admission` with the submission: it becomes the input of the
/// initial plan's `preflight` step (which reads none).
pub fn record(submission: &mut Submission, admission: &Admission) -> Result<(), String> {
    let decl = submission
        .plan
        .iter_mut()
        .find(|d| d.kind == "preflight")
        .ok_or("the initial plan has no preflight step to carry the admission record")?;
    decl.input = Json::encode(&serde_json::json!({ "admission": admission }))
        .map_err(|e| format!("admission record does not encode: {e}"))?;
    Ok(())
}

/// The admission record in a run's initial plan, if any.
pub fn from_plan(steps: &[ferry_engine::StepDecl]) -> Option<Value> {
    steps
        .iter()
        .find(|d| d.kind == "preflight")
        .map(|d| d.input.value()["admission"].clone())
        .filter(|v| !v.is_null())
}

/// A run's source namespaces (`namespaces[].source` of its spec) with the
/// labels recorded at submit, from the head of its log (`RunSubmitted`,
/// then `Planned`). Runs recorded before admission records were kept, and
/// other workflows, have names only.
pub fn recorded_sources(head: &[Envelope]) -> Vec<SourceNamespace> {
    let mut names = Vec::new();
    let mut labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for env in head.iter().take(2) {
        match Event::decode(&env.event) {
            Ok(Event::RunSubmitted { spec, .. }) => names = source_namespaces(&spec.value()),
            Ok(Event::Planned { steps }) => {
                let record =
                    from_plan(&steps).and_then(|v| serde_json::from_value::<Admission>(v).ok());
                for ns in record.map(|a| a.source_namespaces).unwrap_or_default() {
                    if let Some(l) = ns.labels {
                        labels.insert(ns.name, l);
                    }
                }
            }
            _ => {}
        }
    }
    names
        .into_iter()
        .map(|name| SourceNamespace {
            labels: labels.get(&name).cloned(),
            name,
        })
        .collect()
}

/// `namespaces[].source` of a clone spec.
pub fn source_namespaces(spec: &Value) -> Vec<String> {
    spec.get("namespaces")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|n| n.get("source").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use ferry_engine::StepDecl;
    use ferry_store::Envelope;

    use super::*;

    fn envelope(seq: u64, event: &Event) -> Envelope {
        Envelope {
            seq,
            at_ms: 1,
            prev_hash: [0; 32],
            event: event.encode(),
        }
    }

    #[test]
    fn the_record_rides_in_the_plan_and_is_read_back() {
        let spec =
            serde_json::json!({"name": "c", "namespaces": [{"source": "shop"}, {"source": "web"}]});
        let mut submission = Submission {
            name: "c".into(),
            workflow: "clone".into(),
            spec: Json::encode(&spec).unwrap(),
            plan: vec![StepDecl {
                id: "preflight".into(),
                kind: "preflight".into(),
                version: 1,
                input: Json::null(),
                deps: vec![],
                critical: true,
                max_attempts: 1,
                attempt_timeout_ms: None,
                deadline_ms: None,
            }],
        };
        let admission = Admission {
            by: "team".into(),
            role: Role::Member,
            namespace_selector: Some("team=shop".into()),
            source_context: "prod".into(),
            source_namespaces: vec![
                AdmittedNamespace {
                    name: "shop".into(),
                    labels: Some(BTreeMap::from([("team".into(), "shop".into())])),
                    labels_unread: None,
                    allowed_by: Grant::Selector,
                },
                AdmittedNamespace {
                    name: "web".into(),
                    labels: None,
                    labels_unread: Some("not read: timeout".into()),
                    allowed_by: Grant::Name,
                },
            ],
        };
        record(&mut submission, &admission).unwrap();
        let head = [
            envelope(
                0,
                &Event::RunSubmitted {
                    name: "c".into(),
                    workflow: "clone".into(),
                    spec: submission.spec.clone(),
                },
            ),
            envelope(
                1,
                &Event::Planned {
                    steps: submission.plan.clone(),
                },
            ),
        ];
        let sources = recorded_sources(&head);
        assert_eq!(
            sources,
            vec![
                SourceNamespace {
                    name: "shop".into(),
                    labels: Some(BTreeMap::from([("team".into(), "shop".into())])),
                },
                SourceNamespace::named("web"),
            ]
        );
        let back: Admission = serde_json::from_value(from_plan(&submission.plan).unwrap()).unwrap();
        assert_eq!(back, admission);
        // A log without a record (an older run): names only.
        assert_eq!(
            recorded_sources(&head[..1]),
            vec![
                SourceNamespace::named("shop"),
                SourceNamespace::named("web")
            ]
        );
    }
}

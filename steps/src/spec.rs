//! The clone spec: what the user asks for, as recorded in `RunSubmitted`.
//!
//! The spec holds names only — kubeconfig contexts, namespaces, classes, a
//! bucket name — never credentials: clusters are reached through kubeconfig
//! and buckets through the daemon's config. Unknown fields are rejected, so a
//! credential cannot slip in under a misspelt key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::object::{is_dns_label, is_dns_subdomain};
use crate::selector::LabelSelector;

/// Default health deadline: 10 minutes.
pub const DEFAULT_HEALTH_DEADLINE_SECONDS: u64 = 600;
/// Default hook timeout: 25 minutes, as in Astra Control.
pub const DEFAULT_HOOK_TIMEOUT_SECONDS: u64 = 25 * 60;

/// A clone of one application: source namespaces on one cluster into new
/// namespaces on the same or another cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloneSpec {
    /// The clone's unique name (a DNS-1123 label).
    pub name: String,
    /// The source cluster's kubeconfig context.
    pub source_context: String,
    /// The destination cluster's kubeconfig context; equal to the source for
    /// an in-cluster clone.
    pub destination_context: String,
    /// Source → destination namespaces (one or more).
    pub namespaces: Vec<NamespaceMapping>,
    /// Storage classes to map; a class not listed is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage_classes: Vec<StorageClassMapping>,
    /// Objects to include: when any is given, an object must match one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<ObjectFilter>,
    /// Objects to exclude: an object matching any is left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<ObjectFilter>,
    /// The bucket for volumes that go through the data mover; the configured
    /// default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Allow a live (not snapshotted) copy of ReadWriteOnce volumes.
    #[serde(default)]
    pub allow_live_copy: bool,
    /// Suspend the cloned CronJobs so they do not fire in both copies.
    #[serde(default)]
    pub suspend_cronjobs: bool,
    /// Rewrite `<svc>.<src-ns>.svc` in env values and ConfigMap data.
    #[serde(default)]
    pub rewrite_service_dns: bool,
    /// Execution hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookSpec>,
    /// User transforms (JSON Patch), applied after ferry's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<UserTransform>,
    /// Seconds the destination has to become healthy.
    #[serde(default = "default_health_deadline")]
    pub health_deadline_seconds: u64,
}

fn default_health_deadline() -> u64 {
    DEFAULT_HEALTH_DEADLINE_SECONDS
}

/// One source namespace and its destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceMapping {
    /// The source namespace.
    pub source: String,
    /// The destination namespace; defaults to the source name, which is only
    /// allowed across clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// One storage class mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageClassMapping {
    /// The source class name.
    pub source: String,
    /// The destination class name.
    pub destination: String,
}

/// Selects objects by API group, kind and labels; every given field must
/// match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectFilter {
    /// The API group (`""` or `core` for the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The kind (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A label selector in kubectl's string form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
}

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HookStage {
    /// Before the snapshots, in source pods (e.g. quiesce); its `thaw` runs
    /// after them, whatever happens.
    Pre,
    /// After apply, in destination pods; the namespace filter matches the
    /// destination namespace.
    Post,
}

/// What a failed hook does to the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnError {
    /// The run fails and rolls back.
    Fail,
    /// The run goes on and ends SucceededWithWarnings.
    Continue,
}

/// An exec hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HookSpec {
    /// The hook's name (a DNS-1123 label), unique in the spec.
    pub name: String,
    /// Pre (source, before snapshots) or post (destination, after apply).
    pub stage: HookStage,
    /// Pods whose labels match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<String>,
    /// Containers whose image matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<String>,
    /// Namespaces matching this regular expression (source for pre hooks,
    /// destination for post hooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The command, run without a shell.
    pub command: Vec<String>,
    /// For a pre hook: the paired command that undoes it (thaw), run after
    /// the snapshots whatever happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thaw_command: Option<Vec<String>>,
    /// Seconds before the hook counts as failed.
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u64,
    /// What a failure does; defaults to fail for pre hooks and continue for
    /// post hooks (clone-semantics §4.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
}

/// What a daemon's config says for hooks that do not say themselves
/// (`[hooks]` in ferry's TOML).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookDefaults {
    /// `timeoutSeconds` for hooks without one (else
    /// [`DEFAULT_HOOK_TIMEOUT_SECONDS`]).
    pub timeout_seconds: Option<u64>,
    /// `onError` for hooks without one (else fail for pre hooks, continue
    /// for post hooks).
    pub on_error: Option<OnError>,
}

impl HookDefaults {
    /// Writes the defaults into each hook of a spec as JSON that does not
    /// give the field, before the spec is parsed: the spec the log records
    /// then says what will run, whatever the config says after a restart.
    pub fn fill(&self, spec: &mut Value) {
        let Some(hooks) = spec.get_mut("hooks").and_then(Value::as_array_mut) else {
            return;
        };
        for h in hooks.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(t) = self.timeout_seconds {
                h.entry("timeoutSeconds").or_insert(t.into());
            }
            if let Some(e) = self.on_error
                && let Ok(e) = serde_json::to_value(e)
            {
                h.entry("onError").or_insert(e);
            }
        }
    }
}

fn default_hook_timeout() -> u64 {
    DEFAULT_HOOK_TIMEOUT_SECONDS
}

impl HookSpec {
    /// The effective on-error behaviour.
    pub fn on_error(&self) -> OnError {
        self.on_error.unwrap_or(match self.stage {
            HookStage::Pre => OnError::Fail,
            HookStage::Post => OnError::Continue,
        })
    }
}

/// A user transform: JSON Patch operations applied to selected objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserTransform {
    /// Which objects it applies to.
    #[serde(default)]
    pub selector: TransformSelector,
    /// RFC 6902 operations, applied in order to the destination object.
    pub patch: Vec<PatchOp>,
}

/// Selects objects for a user transform; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransformSelector {
    /// The API group (`""` or `core` for the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The kind (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A regular expression the whole object name must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The *source* namespace (exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One RFC 6902 JSON Patch operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum PatchOp {
    /// Add `value` at `path`.
    Add {
        /// A JSON pointer.
        path: String,
        /// The value.
        value: Value,
    },
    /// Remove what is at `path`.
    Remove {
        /// A JSON pointer.
        path: String,
    },
    /// Replace what is at `path` with `value`.
    Replace {
        /// A JSON pointer.
        path: String,
        /// The value.
        value: Value,
    },
    /// Move what is at `from` to `path`.
    Move {
        /// The source JSON pointer.
        from: String,
        /// The target JSON pointer.
        path: String,
    },
    /// Copy what is at `from` to `path`.
    Copy {
        /// The source JSON pointer.
        from: String,
        /// The target JSON pointer.
        path: String,
    },
    /// Fail unless what is at `path` equals `value`.
    Test {
        /// A JSON pointer.
        path: String,
        /// The expected value.
        value: Value,
    },
}

impl PatchOp {
    /// The pointers the op names (`path`, and `from` when it has one).
    pub fn pointers(&self) -> Vec<(&'static str, &str)> {
        match self {
            PatchOp::Add { path, .. }
            | PatchOp::Remove { path }
            | PatchOp::Replace { path, .. }
            | PatchOp::Test { path, .. } => vec![("path", path)],
            PatchOp::Move { from, path } | PatchOp::Copy { from, path } => {
                vec![("from", from), ("path", path)]
            }
        }
    }
}

/// One problem in a spec: the field path, what is wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecProblem {
    /// The field path, e.g. `namespaces[1].destination`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.field, self.problem, self.fix)
    }
}

impl CloneSpec {
    /// Parses a spec from JSON and validates it.
    ///
    /// # Errors
    /// [`Error::Json`] for malformed JSON or unknown fields,
    /// [`Error::InvalidSpec`] with every problem found.
    pub fn from_json(s: &str) -> Result<Self> {
        let spec: Self = serde_json::from_str(s).map_err(Error::Json)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Whether source and destination are the same cluster.
    pub fn in_cluster(&self) -> bool {
        self.source_context == self.destination_context
    }

    /// The destination namespace of source namespace `src`, if `src` is one
    /// of the spec's.
    pub fn destination_of(&self, src: &str) -> Option<String> {
        self.namespaces
            .iter()
            .find(|m| m.source == src)
            .map(|m| m.destination.clone().unwrap_or_else(|| m.source.clone()))
    }

    /// Source → destination namespaces, sorted by source.
    pub fn namespace_map(&self) -> BTreeMap<String, String> {
        self.namespaces
            .iter()
            .map(|m| {
                (
                    m.source.clone(),
                    m.destination.clone().unwrap_or_else(|| m.source.clone()),
                )
            })
            .collect()
    }

    /// Source → destination storage classes (mapped ones only).
    pub fn storage_class_map(&self) -> BTreeMap<String, String> {
        self.storage_classes
            .iter()
            .map(|m| (m.source.clone(), m.destination.clone()))
            .collect()
    }

    /// The destination class for source class `src` (mapped, or kept).
    pub fn destination_class(&self, src: &str) -> String {
        self.storage_classes
            .iter()
            .find(|m| m.source == src)
            .map_or_else(|| src.to_owned(), |m| m.destination.clone())
    }

    /// Checks the spec.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] listing every problem.
    pub fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidSpec(problems))
        }
    }

    /// Every problem in the spec, in field order; empty when it is valid.
    pub fn problems(&self) -> Vec<SpecProblem> {
        let mut p = Problems::default();
        if !is_dns_label(&self.name) {
            p.add(
                "name",
                format!("{:?} is not a DNS-1123 label", self.name),
                "use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
            );
        }
        for (field, v) in [
            ("sourceContext", &self.source_context),
            ("destinationContext", &self.destination_context),
        ] {
            if v.trim().is_empty() {
                p.add(
                    field,
                    "is empty",
                    "name a kubeconfig context (kubectl config get-contexts)",
                );
            }
        }
        self.check_namespaces(&mut p);
        self.check_storage_classes(&mut p);
        for (list, filters) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (i, f) in filters.iter().enumerate() {
                check_filter(
                    &mut p,
                    &format!("{list}[{i}]"),
                    f.group.as_deref(),
                    f.kind.as_deref(),
                );
                if let Some(sel) = &f.label_selector
                    && let Err(e) = LabelSelector::parse(sel)
                {
                    p.add(
                        format!("{list}[{i}].labelSelector"),
                        e.to_string(),
                        "use kubectl's form: app=web,tier!=cache,env in (a,b)",
                    );
                }
                if f.group.is_none() && f.kind.is_none() && f.label_selector.is_none() {
                    p.add(
                        format!("{list}[{i}]"),
                        "matches every object",
                        "give a group, a kind or a labelSelector",
                    );
                }
            }
        }
        if let Some(b) = &self.bucket
            && b.trim().is_empty()
        {
            p.add(
                "bucket",
                "is empty",
                "name a configured bucket, or leave the field out to use the default",
            );
        }
        self.check_hooks(&mut p);
        self.check_transforms(&mut p);
        if self.health_deadline_seconds == 0 {
            p.add(
                "healthDeadlineSeconds",
                "is 0",
                "give the destination time to become ready, e.g. 600",
            );
        }
        p.0
    }

    fn check_namespaces(&self, p: &mut Problems) {
        if self.namespaces.is_empty() {
            p.add(
                "namespaces",
                "is empty",
                "map at least one source namespace, e.g. shop:shop-copy",
            );
        }
        let in_cluster = self.in_cluster();
        let sources: BTreeSet<&str> = self.namespaces.iter().map(|m| m.source.as_str()).collect();
        let (mut seen_src, mut seen_dst) = (BTreeSet::new(), BTreeSet::new());
        for (i, m) in self.namespaces.iter().enumerate() {
            if !is_dns_label(&m.source) {
                p.add(
                    format!("namespaces[{i}].source"),
                    format!("{:?} is not a valid namespace name", m.source),
                    "use a DNS-1123 label",
                );
            } else if !seen_src.insert(m.source.as_str()) {
                p.add(
                    format!("namespaces[{i}].source"),
                    format!("namespace {} is mapped twice", m.source),
                    "map each source namespace once",
                );
            }
            let dst = m.destination.as_deref().unwrap_or(&m.source);
            match &m.destination {
                Some(d) if !is_dns_label(d) => {
                    p.add(
                        format!("namespaces[{i}].destination"),
                        format!("{d:?} is not a valid namespace name"),
                        "use a DNS-1123 label",
                    );
                    continue;
                }
                None if in_cluster => {
                    p.add(
                        format!("namespaces[{i}].destination"),
                        format!("is missing, and an in-cluster clone cannot reuse the source namespace {}", m.source),
                        format!("give a new name, e.g. {}:{}-copy", m.source, m.source),
                    );
                    continue;
                }
                Some(d) if in_cluster && d == &m.source => {
                    p.add(
                        format!("namespaces[{i}].destination"),
                        format!("equals the source namespace {d} on the same cluster"),
                        format!("give a new name, e.g. {}:{}-copy", m.source, m.source),
                    );
                    continue;
                }
                _ => {}
            }
            if !seen_dst.insert(dst) {
                p.add(
                    format!("namespaces[{i}].destination"),
                    format!("namespace {dst} is the destination of two mappings"),
                    "give each source its own destination",
                );
            } else if in_cluster && sources.contains(dst) {
                p.add(
                    format!("namespaces[{i}].destination"),
                    format!("{dst} is also a source namespace of this in-cluster clone"),
                    "choose a destination that is not being cloned",
                );
            }
        }
    }

    fn check_storage_classes(&self, p: &mut Problems) {
        let mut seen = BTreeSet::new();
        for (i, m) in self.storage_classes.iter().enumerate() {
            for (f, v) in [("source", &m.source), ("destination", &m.destination)] {
                if !is_dns_subdomain(v) {
                    p.add(
                        format!("storageClasses[{i}].{f}"),
                        format!("{v:?} is not a valid storage class name"),
                        "use a DNS-1123 subdomain",
                    );
                }
            }
            if !seen.insert(m.source.as_str()) {
                p.add(
                    format!("storageClasses[{i}].source"),
                    format!("class {} is mapped twice", m.source),
                    "map each source class once",
                );
            }
        }
    }

    fn check_hooks(&self, p: &mut Problems) {
        let mut seen = BTreeSet::new();
        for (i, h) in self.hooks.iter().enumerate() {
            let at = |f: &str| format!("hooks[{i}].{f}");
            if !is_dns_label(&h.name) {
                p.add(
                    at("name"),
                    format!("{:?} is not a DNS-1123 label", h.name),
                    "use lowercase letters, digits and '-'",
                );
            } else if !seen.insert((h.stage, h.name.as_str())) {
                p.add(
                    at("name"),
                    format!("a {:?} hook named {} is given twice", h.stage, h.name),
                    "give each hook its own name",
                );
            }
            if h.command.is_empty() || h.command[0].trim().is_empty() {
                p.add(at("command"), "is empty", "give the program and its arguments, e.g. [\"sh\", \"-c\", \"fsfreeze -f /data\"]");
            }
            match (&h.thaw_command, h.stage) {
                (Some(_), HookStage::Post) => p.add(
                    at("thawCommand"),
                    "is only for pre hooks",
                    "remove it, or make the hook a pre hook",
                ),
                (Some(c), HookStage::Pre) if c.is_empty() => p.add(
                    at("thawCommand"),
                    "is empty",
                    "give the command that undoes the pre hook, or leave it out",
                ),
                _ => {}
            }
            if let Some(sel) = &h.pod_selector
                && let Err(e) = LabelSelector::parse(sel)
            {
                p.add(
                    at("podSelector"),
                    e.to_string(),
                    "use kubectl's form: app=db",
                );
            }
            for (f, v) in [
                ("containerImage", &h.container_image),
                ("namespace", &h.namespace),
            ] {
                if let Some(re) = v
                    && let Err(e) = Regex::new(re)
                {
                    p.add(
                        at(f),
                        format!("is not a valid regular expression: {e}"),
                        "use RE2 syntax, e.g. \\bpostgres\\b",
                    );
                }
            }
            if h.timeout_seconds == 0 || h.timeout_seconds > 24 * 3600 {
                p.add(
                    at("timeoutSeconds"),
                    format!("{} is out of range", h.timeout_seconds),
                    "use 1 to 86400 seconds (default 1500)",
                );
            }
        }
    }

    fn check_transforms(&self, p: &mut Problems) {
        for (i, t) in self.transforms.iter().enumerate() {
            let sel = &t.selector;
            check_filter(
                p,
                &format!("transforms[{i}].selector"),
                sel.group.as_deref(),
                sel.kind.as_deref(),
            );
            if let Some(re) = &sel.name
                && let Err(e) = Regex::new(re)
            {
                p.add(
                    format!("transforms[{i}].selector.name"),
                    format!("is not a valid regular expression: {e}"),
                    "use RE2 syntax, e.g. ^web-.*",
                );
            }
            if let Some(ns) = &sel.namespace
                && !self.namespaces.iter().any(|m| &m.source == ns)
            {
                p.add(
                    format!("transforms[{i}].selector.namespace"),
                    format!("{ns} is not a source namespace of this clone"),
                    "name a source namespace (selectors match objects as they are on the source)",
                );
            }
            if t.patch.is_empty() {
                p.add(
                    format!("transforms[{i}].patch"),
                    "is empty",
                    "give at least one JSON Patch operation",
                );
            }
            for (j, op) in t.patch.iter().enumerate() {
                for (f, ptr) in op.pointers() {
                    let field = format!("transforms[{i}].patch[{j}].{f}");
                    if !ptr.is_empty() && !ptr.starts_with('/') {
                        p.add(
                            field,
                            format!("{ptr:?} is not a JSON pointer"),
                            "start it with '/', e.g. /spec/replicas",
                        );
                    } else if ptr.is_empty()
                        || ptr == "/metadata"
                        || ptr == "/metadata/name"
                        || ptr == "/metadata/namespace"
                    {
                        p.add(field, format!("{ptr:?} would change the object's identity"), "patch fields inside the object; namespaces are mapped with namespaces[]");
                    } else if ptr.starts_with("/metadata/labels/ferry.dev~1run")
                        || (ptr == "/metadata/labels" && matches!(op, PatchOp::Remove { .. }))
                    {
                        p.add(
                            field,
                            format!("{ptr:?} would remove ferry's run label"),
                            "leave ferry.dev/run alone: rollback finds objects by it",
                        );
                    }
                }
            }
        }
    }
}

fn check_filter(p: &mut Problems, at: &str, group: Option<&str>, kind: Option<&str>) {
    if let Some(k) = kind
        && (k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        p.add(
            format!("{at}.kind"),
            format!("{k:?} is not a kind"),
            "use a kind name such as ConfigMap",
        );
    }
    if let Some(g) = group
        && !(g.is_empty() || g == "core" || is_dns_subdomain(g))
    {
        p.add(
            format!("{at}.group"),
            format!("{g:?} is not an API group"),
            "use e.g. apps, networking.k8s.io, or \"\" for core",
        );
    }
}

#[derive(Default)]
struct Problems(Vec<SpecProblem>);

impl Problems {
    fn add(
        &mut self,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(SpecProblem {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }
}

/// Parses the CLI forms `SRC`, `SRC:DST` and `SRC=DST` into a source and an
/// optional destination.
///
/// # Errors
/// [`Error::BadMapping`] when a side is empty or there is more than one
/// separator.
pub fn parse_mapping(arg: &str) -> Result<(String, Option<String>)> {
    let bad = |reason: &str| Error::BadMapping {
        arg: arg.to_owned(),
        reason: reason.to_owned(),
    };
    let seps = arg.matches([':', '=']).count();
    if seps > 1 {
        return Err(bad("more than one separator"));
    }
    let (src, dst) = match arg.split_once([':', '=']) {
        Some((s, d)) => (s.trim(), Some(d.trim())),
        None => (arg.trim(), None),
    };
    if src.is_empty() {
        return Err(bad("the source is empty"));
    }
    if dst == Some("") {
        return Err(bad("the destination is empty"));
    }
    Ok((src.to_owned(), dst.map(str::to_owned)))
}

/// Parses a `--namespace` argument (`SRC`, `SRC:DST`, `SRC=DST`).
///
/// # Errors
/// As [`parse_mapping`].
pub fn parse_namespace_mapping(arg: &str) -> Result<NamespaceMapping> {
    let (source, destination) = parse_mapping(arg)?;
    Ok(NamespaceMapping {
        source,
        destination,
    })
}

/// Parses a `--storage-class` argument (`SRC:DST` or `SRC=DST`; a class
/// that is kept needs no argument).
///
/// # Errors
/// As [`parse_mapping`], and when the destination is missing.
pub fn parse_storage_class_mapping(arg: &str) -> Result<StorageClassMapping> {
    match parse_mapping(arg)? {
        (source, Some(destination)) => Ok(StorageClassMapping {
            source,
            destination,
        }),
        (_, None) => Err(Error::BadMapping {
            arg: arg.to_owned(),
            reason: "a storage class mapping needs a destination (classes not mapped are kept)"
                .into(),
        }),
    }
}

/// Whether `group` (as written in a filter: `""`, `core` or a group name)
/// names the object group `actual`.
pub(crate) fn group_matches(filter: Option<&str>, actual: &str) -> bool {
    match filter {
        None => true,
        Some("core") => actual.is_empty(),
        Some(g) => g == actual,
    }
}

/// Whether `kind` (case-insensitive) names `actual`.
pub(crate) fn kind_matches(filter: Option<&str>, actual: &str) -> bool {
    filter.is_none_or(|k| k.eq_ignore_ascii_case(actual))
}

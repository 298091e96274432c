//! The crate's error type.

use crate::spec::SpecProblem;

/// What can go wrong in ferry-steps' pure code.
///
/// Messages never carry Secret data: they name objects and paths, never
/// values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The clone spec has one or more problems; each names its field, what is
    /// wrong and a fix.
    #[error("invalid clone spec: {}", join_problems(.0))]
    InvalidSpec(Vec<SpecProblem>),

    /// A command-line mapping argument (`SRC[:DST]`, `SRC=DST`) could not be
    /// parsed.
    #[error("invalid mapping {arg:?}: {reason}; use SRC, SRC:DST or SRC=DST")]
    BadMapping {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A label selector string could not be parsed.
    #[error("invalid label selector {selector:?}: {reason}")]
    BadSelector {
        /// The selector as given.
        selector: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A daemon setting that preflight depends on is inconsistent.
    #[error("invalid config {field}: {reason}")]
    Config {
        /// The setting.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A Kubernetes object lacks something every object must have
    /// (apiVersion, kind, metadata.name).
    #[error("malformed object {object}: {reason}")]
    MalformedObject {
        /// The object as far as it could be named.
        object: String,
        /// What is missing or wrong.
        reason: String,
    },

    /// A user transform (JSON Patch) could not be applied to an object.
    #[error("transform {index} on {object}: {reason}; fix the patch path or narrow its selector")]
    Patch {
        /// The index of the transform in `spec.transforms`.
        index: usize,
        /// The object the patch was applied to.
        object: String,
        /// What went wrong (paths only, never values).
        reason: String,
    },

    /// A regular expression in the spec or config does not compile.
    #[error("invalid regular expression at {field}")]
    Regex {
        /// Where the expression came from.
        field: String,
        /// The compile error.
        #[source]
        source: regex::Error,
    },

    /// YAML could not be parsed.
    #[error("invalid YAML")]
    Yaml(#[source] serde_yaml::Error),

    /// JSON could not be parsed or produced.
    #[error("invalid JSON")]
    Json(#[source] serde_json::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn join_problems(problems: &[SpecProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

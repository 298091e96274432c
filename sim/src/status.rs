//! `metav1.Status` error replies, built the way the real apiserver builds them.
//!
//! Every failed request ends here: the handler returns an [`ApiError`] and the
//! HTTP layer turns it into a JSON `Status` body with the matching code. The
//! constructors mirror `k8s.io/apimachinery/pkg/api/errors` so that kube's
//! `is_not_found()`/`is_conflict()`/... and kubectl's messages behave as
//! against a real cluster.

use serde_json::{Value, json};

use crate::resources::ResourceInfo;

/// One failed API request, rendered as a `metav1.Status` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code (also `code` in the body).
    pub code: u16,
    /// `reason` in the body (`NotFound`, `Conflict`, ...).
    pub reason: String,
    /// Human-readable `message`.
    pub message: String,
    /// `details`, when the reason carries any.
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429, 503, 504).
    pub retry_after: Option<u64>,
}

/// One `details.causes[]` entry of an Invalid (422) error.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// Cause type, e.g. `FieldValueInvalid`.
    pub reason: &'static str,
    /// The offending field path, e.g. `metadata.name`.
    pub field: String,
    /// The message without the field prefix.
    pub message: String,
}

impl Cause {
    /// A `FieldValueInvalid` cause for `value` at `field`.
    pub fn invalid(field: impl Into<String>, value: &str, why: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {why}", json!(value)),
        }
    }

    /// A `FieldValueRequired` cause.
    pub fn required(field: impl Into<String>, why: &str) -> Self {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: format!("Required value: {why}"),
        }
    }

    /// A `FieldValueForbidden` cause.
    pub fn forbidden(field: impl Into<String>, why: &str) -> Self {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {why}"),
        }
    }
}

/// The `<plural>` or `<plural>.<group>` spelling used in messages.
pub fn qualified(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        info.plural.clone()
    } else {
        format!("{}.{}", info.plural, info.group)
    }
}

fn kind_qualified(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        info.kind.clone()
    } else {
        format!("{}.{}", info.kind, info.group)
    }
}

fn details(info: &ResourceInfo, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": info.plural});
    if !info.group.is_empty() {
        d["group"] = json!(info.group);
    }
    d
}

impl ApiError {
    fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// 422 Invalid without details (a patch that does not apply).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 404 for an object that does not exist.
    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(info)),
        );
        e.details = Some(details(info, name));
        e
    }

    /// 404 for a namespace that does not exist (creating into it).
    pub fn namespace_not_found(ns: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("namespaces \"{ns}\" not found"));
        e.details = Some(json!({"name": ns, "kind": "namespaces"}));
        e
    }

    /// 404 for a path that names no served resource.
    pub fn no_route() -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = Some(json!({}));
        e
    }

    /// 409 AlreadyExists.
    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(info)),
        );
        e.details = Some(details(info, name));
        e
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(info: &ResourceInfo, name: &str) -> Self {
        Self::conflict_because(
            info,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 Conflict with a specific explanation.
    pub fn conflict_because(info: &ResourceInfo, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(info)
            ),
        );
        e.details = Some(details(info, name));
        e
    }

    /// 422 Invalid with field causes.
    pub fn invalid(info: &ResourceInfo, name: &str, causes: Vec<Cause>) -> Self {
        Self::invalid_kind(&kind_qualified(info), &info.kind, &info.group, name, causes)
    }

    /// 422 Invalid for an arbitrary kind (e.g. `PatchOptions`).
    pub fn invalid_kind(
        qualified_kind: &str,
        kind: &str,
        group: &str,
        name: &str,
        causes: Vec<Cause>,
    ) -> Self {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {joined}"),
        );
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        let mut d = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        e.details = Some(d);
        e
    }

    /// 403 when creating inside a namespace that is being terminated.
    pub fn namespace_terminating(info: &ResourceInfo, name: &str, ns: &str) -> Self {
        let mut e = Self::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                qualified(info)
            ),
        );
        let mut d = details(info, name);
        d["causes"] = json!([{
            "reason": "NamespaceTerminating",
            "message": format!("namespace {ns} is being terminated"),
            "field": "metadata.namespace"
        }]);
        e.details = Some(d);
        e
    }

    /// 403 Forbidden with a reason.
    pub fn forbidden(info: &ResourceInfo, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", qualified(info)),
        );
        e.details = Some(details(info, name));
        e
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized (missing or wrong bearer token).
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(verb: &str, plural: &str) -> Self {
        let mut e = Self::new(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on resources of kind \"{plural}\""),
        );
        e.details = Some(json!({"kind": plural}));
        e
    }

    /// 415 UnsupportedMediaType listing what is accepted.
    pub fn unsupported_media(accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 410 Expired (too old resourceVersion).
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 500 InternalError.
    pub fn internal(why: &str) -> Self {
        let mut e = Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {why}"),
        );
        e.details = Some(json!({"causes": [{"message": why}]}));
        e
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(why: &str) -> Self {
        Self::new(503, "ServiceUnavailable", why)
    }

    /// 429 TooManyRequests with `Retry-After`.
    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut e = Self::new(429, "TooManyRequests", "too many requests, try again later");
        e.details = Some(json!({"retryAfterSeconds": retry_after}));
        e.retry_after = Some(retry_after);
        e
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A `Status` of kind Success for a deletion that completed at once.
pub fn delete_success(info: &ResourceInfo, name: &str, uid: &str) -> Value {
    let mut d = json!({"name": name, "kind": info.plural, "uid": uid});
    if !info.group.is_empty() {
        d["group"] = json!(info.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

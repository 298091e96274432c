//! Name, label and annotation validation with the apiserver's messages.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::resources::{NameRule, ResourceInfo};
use crate::status::Cause;

const LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const SUBDOMAIN_FMT: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1035_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const QNAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";

fn anchored(fmt: &str) -> Regex {
    Regex::new(&format!("^{fmt}$")).expect("static regex")
}

static LABEL_RE: LazyLock<Regex> = LazyLock::new(|| anchored(LABEL_FMT));
static SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| anchored(SUBDOMAIN_FMT));
static DNS1035_RE: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1035_FMT));
static QNAME_RE: LazyLock<Regex> = LazyLock::new(|| anchored(QNAME_FMT));

/// Why `s` is not an RFC 1123 label, or `None`.
pub fn dns1123_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!LABEL_RE.is_match(s)).then(|| format!(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{LABEL_FMT}')"
    ))
}

/// Why `s` is not an RFC 1123 subdomain, or `None`.
pub fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    (!SUBDOMAIN_RE.is_match(s)).then(|| format!(
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{SUBDOMAIN_FMT}')"
    ))
}

/// Why `s` is not an RFC 1035 label, or `None`.
pub fn dns1035_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!DNS1035_RE.is_match(s)).then(|| format!(
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '{DNS1035_FMT}')"
    ))
}

fn path_segment(s: &str) -> Option<String> {
    if s == "." || s == ".." {
        return Some(format!("may not be '{s}'"));
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            return Some(format!("may not contain '{bad}'"));
        }
    }
    None
}

/// Why `key` is not a valid label/annotation key, or `None`.
pub fn label_key_errors(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if let Some(e) = dns1123_subdomain(p) {
            return Some(format!("prefix part {e}"));
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    (!QNAME_RE.is_match(name)).then(|| format!(
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QNAME_FMT}')"
    ))
}

/// Why `v` is not a valid label value, or `None`.
pub fn label_value_errors(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    if v.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!QNAME_RE.is_match(v)).then(|| format!(
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(({QNAME_FMT})?')"
    ))
}

/// Validate the name of an object of `info` (for `generateName`, pass the prefix
/// plus a placeholder so the prefix is checked the same way).
pub fn name_causes(info: &ResourceInfo, name: &str) -> Vec<Cause> {
    let err = match info.name_rule {
        NameRule::Subdomain => dns1123_subdomain(name),
        NameRule::Label => dns1123_label(name),
        NameRule::Dns1035 => dns1035_label(name),
        NameRule::PathSegment => path_segment(name),
        NameRule::Crd => dns1123_subdomain(name),
    };
    err.map(|e| vec![Cause::invalid("metadata.name", name, &e)])
        .unwrap_or_default()
}

/// Validate labels, annotations and metadata shapes.
pub fn metadata_causes(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let Some(meta) = obj.get("metadata") else {
        return out;
    };
    match meta.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                if let Some(e) = label_key_errors(k) {
                    out.push(Cause::invalid("metadata.labels", k, &e));
                }
                match v.as_str() {
                    Some(s) => {
                        if let Some(e) = label_value_errors(s) {
                            out.push(Cause::invalid("metadata.labels".to_string(), s, &e));
                        }
                    }
                    None => out.push(Cause::invalid(
                        "metadata.labels",
                        &v.to_string(),
                        "must be a string",
                    )),
                }
            }
        }
        Some(other) => out.push(Cause::invalid(
            "metadata.labels",
            &other.to_string(),
            "must be an object",
        )),
    }
    match meta.get("annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(ann)) => {
            let mut total = 0usize;
            for (k, v) in ann {
                total += k.len() + v.as_str().map_or(0, str::len);
                if let Some(e) = label_key_errors(k) {
                    out.push(Cause::invalid("metadata.annotations", k, &e));
                }
            }
            if total > 256 * 1024 {
                out.push(Cause {
                    reason: "FieldValueTooLong",
                    field: "metadata.annotations".into(),
                    message: "Too long: must have at most 262144 bytes".into(),
                });
            }
        }
        Some(other) => out.push(Cause::invalid(
            "metadata.annotations",
            &other.to_string(),
            "must be an object",
        )),
    }
    out
}

/// Kind-specific checks the simulator enforces (a small, useful subset).
pub fn kind_causes(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if matches!(
        info.kind.as_str(),
        "Deployment" | "StatefulSet" | "ReplicaSet"
    ) && !info.custom
        && let Some(r) = obj.pointer("/spec/replicas")
    {
        match r.as_i64() {
            Some(n) if n < 0 => out.push(Cause {
                reason: "FieldValueInvalid",
                field: "spec.replicas".into(),
                message: format!("Invalid value: {n}: must be greater than or equal to 0"),
            }),
            Some(_) => {}
            None if r.is_null() => {}
            None => out.push(Cause::invalid(
                "spec.replicas",
                &r.to_string(),
                "must be an integer",
            )),
        }
    }
    if info.kind == "CustomResourceDefinition" && info.group == "apiextensions.k8s.io" {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let plural = obj
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("");
        let group = obj
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("");
        if plural.is_empty() {
            out.push(Cause::required("spec.names.plural", ""));
        }
        if obj
            .pointer("/spec/names/kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            out.push(Cause::required("spec.names.kind", ""));
        }
        if group.is_empty() {
            out.push(Cause::required("spec.group", ""));
        }
        if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
            out.push(Cause::invalid(
                "metadata.name",
                name,
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        let versions = obj.pointer("/spec/versions").and_then(Value::as_array);
        match versions {
            Some(v) if !v.is_empty() => {
                let storage = v
                    .iter()
                    .filter(|x| x.get("storage").and_then(Value::as_bool) == Some(true))
                    .count();
                if storage != 1 {
                    out.push(Cause::invalid(
                        "spec.versions",
                        "",
                        "must have exactly one version marked as storage version",
                    ));
                }
            }
            _ => out.push(Cause::required(
                "spec.versions",
                "must have exactly one version marked as storage version",
            )),
        }
        if !matches!(
            obj.pointer("/spec/scope").and_then(Value::as_str),
            Some("Namespaced" | "Cluster")
        ) {
            out.push(Cause {
                reason: "FieldValueNotSupported",
                field: "spec.scope".into(),
                message: "Unsupported value: \"\": supported values: \"Cluster\", \"Namespaced\""
                    .into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("a.b-c").is_none());
        assert!(dns1123_subdomain("Bad_Name").is_some());
        assert!(dns1123_label("a.b").is_some());
        assert!(dns1035_label("1abc").is_some());
        assert!(dns1123_label(&"a".repeat(64)).is_some());
        assert!(label_key_errors("ferry.dev/run").is_none());
        assert!(label_key_errors("a/b/c").is_some());
        assert!(label_value_errors("").is_none());
        assert!(label_value_errors("-x").is_some());
    }
}

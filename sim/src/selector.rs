//! Label and field selectors, as `labelSelector=` and `fieldSelector=` carry them.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::status::ApiError;
use crate::util::get_path;
use crate::validation;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// Builds a requirement from a key and a value (`None`: the value is invalid).
type MakeReq = fn(String, &str) -> Option<Req>;

/// A parsed label selector; all requirements must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Req>,
}

/// Split on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(key: &str, whole: &str) -> Result<String, ApiError> {
    if key.is_empty() || validation::label_key_errors(key).is_some() {
        return Err(ApiError::bad_request(format!(
            "unable to parse requirement: invalid label key \"{key}\" in selector \"{whole}\""
        )));
    }
    Ok(key.to_string())
}

fn check_value(v: &str, whole: &str) -> Result<String, ApiError> {
    if validation::label_value_errors(v).is_some() {
        return Err(ApiError::bad_request(format!(
            "unable to parse requirement: invalid label value \"{v}\" in selector \"{whole}\""
        )));
    }
    Ok(v.to_string())
}

impl LabelSelector {
    /// Parse the full selector syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    /// `k notin (a,b)`, `k`, `!k`, `k>N`, `k<N`. Errors are 400 BadRequest.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for term in split_terms(s) {
            let t = term.trim();
            if t.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: found '', expected: identifier in selector \"{s}\""
                )));
            }
            if let Some(k) = t.strip_prefix('!') {
                reqs.push(Req::NotExists(check_key(k.trim(), s)?));
                continue;
            }
            if let Some(open) = t.find('(') {
                let head = t[..open].trim();
                let Some(body) = t[open + 1..].strip_suffix(')') else {
                    return Err(ApiError::bad_request(format!(
                        "unable to parse requirement: expected ')' in selector \"{s}\""
                    )));
                };
                let mut words = head.split_whitespace();
                let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
                    return Err(ApiError::bad_request(format!(
                        "unable to parse requirement: invalid set requirement in selector \"{s}\""
                    )));
                };
                let key = check_key(key, s)?;
                let mut set = BTreeSet::new();
                for v in body.split(',') {
                    set.insert(check_value(v.trim(), s)?);
                }
                match op {
                    "in" => reqs.push(Req::In(key, set)),
                    "notin" => reqs.push(Req::NotIn(key, set)),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "unable to parse requirement: unknown operator \"{op}\" in selector \"{s}\""
                        )));
                    }
                }
                continue;
            }
            let ops: [(&str, MakeReq); 6] = [
                ("!=", |k, v| Some(Req::NotEq(k, v.to_string()))),
                ("==", |k, v| Some(Req::Eq(k, v.to_string()))),
                ("=", |k, v| Some(Req::Eq(k, v.to_string()))),
                (">", |k, v| v.parse().ok().map(|n| Req::Gt(k, n))),
                ("<", |k, v| v.parse().ok().map(|n| Req::Lt(k, n))),
                ("", |k, _| Some(Req::Exists(k))),
            ];
            for (op, make) in ops {
                if op.is_empty() {
                    if t.contains(char::is_whitespace) {
                        return Err(ApiError::bad_request(format!(
                            "unable to parse requirement: found unexpected text in selector \"{s}\""
                        )));
                    }
                    reqs.push(Req::Exists(check_key(t, s)?));
                    break;
                }
                if let Some((k, v)) = t.split_once(op) {
                    let key = check_key(k.trim(), s)?;
                    let value = v.trim();
                    if op != ">" && op != "<" {
                        check_value(value, s)?;
                    }
                    match make(key, value) {
                        Some(r) => reqs.push(r),
                        None => {
                            return Err(ApiError::bad_request(format!(
                                "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer in selector \"{s}\""
                            )));
                        }
                    }
                    break;
                }
            }
        }
        Ok(LabelSelector { reqs })
    }

    /// A selector of `key=value` pairs (matchLabels).
    pub fn from_match_labels(labels: &serde_json::Map<String, Value>) -> Self {
        LabelSelector {
            reqs: labels
                .iter()
                .map(|(k, v)| Req::Eq(k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect(),
        }
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, set) => get(k).is_some_and(|x| set.contains(x)),
            Req::NotIn(k, set) => !get(k).is_some_and(|x| set.contains(x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
            Req::Gt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Req::Lt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }

    /// `true` when the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, comma = AND.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

/// Fields a kind supports beyond `metadata.name` and `metadata.namespace`.
fn extra_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
        ],
        "Secret" => &["type"],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "source",
            "type",
        ],
        "Namespace" => &["status.phase"],
        "PersistentVolumeClaim" | "PersistentVolume" => &["status.phase"],
        "Job" => &["status.successful"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parse and check that every field is supported for `kind` (else 400).
    pub fn parse(s: &str, kind: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { reqs });
        }
        for term in s.split(',') {
            let t = term.trim();
            let (field, eq, value) = if let Some((f, v)) = t.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = t.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = t.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{t}'"
                )));
            };
            let field = field.trim();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !extra_fields(kind).contains(&field)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    /// Whether the object satisfies every requirement (a missing field reads as `""`).
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(f, eq, v)| {
            let actual = match get_path(obj, f) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *v) == *eq
        })
    }

    /// The name this selector pins with `metadata.name=X`, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selector_syntax() {
        let o = obj(json!({"app": "web", "tier": "fe", "n": "7"}));
        let ok = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(ok(""));
        assert!(ok("app=web"));
        assert!(ok("app==web,tier=fe"));
        assert!(!ok("app!=web"));
        assert!(ok("missing!=x"));
        assert!(ok("app in (web, db)"));
        assert!(!ok("app notin (web,db)"));
        assert!(ok("missing notin (web)"));
        assert!(ok("app"));
        assert!(ok("!missing"));
        assert!(!ok("!app"));
        assert!(ok("n>5,n<8"));
        assert!(ok(" app = web , ferry.dev/run notin (x) "));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b").is_err());
        assert!(LabelSelector::parse("app=,").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
        assert!(LabelSelector::parse("n>x").is_err());
    }

    #[test]
    fn field_selector() {
        let o = obj(json!({}));
        let f = FieldSelector::parse("metadata.name=a,metadata.namespace!=x", "ConfigMap").unwrap();
        assert!(f.matches(&o));
        assert_eq!(f.pinned_name(), Some("a"));
        assert!(FieldSelector::parse("spec.foo=1", "ConfigMap").is_err());
        assert!(FieldSelector::parse("status.phase=Running", "Pod").is_ok());
    }
}

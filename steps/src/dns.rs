//! `<svc>.<ns>.svc` references in env values and ConfigMap data: found for
//! preflight's warning, rewritten on `--rewrite-service-dns`.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use crate::object::{is, pod_spec_pointers};

/// A reference found: where, and the host as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsReference {
    /// A JSON pointer to the string holding it.
    pub field: String,
    /// The `<svc>.<ns>.svc` host found.
    pub host: String,
    /// The source namespace it names.
    pub namespace: String,
}

/// Matchers for service hosts in the source namespaces.
#[derive(Clone, Debug)]
pub struct ServiceDns {
    by_namespace: Vec<(String, String, Regex)>,
}

impl ServiceDns {
    /// Matchers for each source namespace that maps to a different
    /// destination.
    pub fn new(namespace_map: &BTreeMap<String, String>) -> Self {
        let by_namespace = namespace_map
            .iter()
            .filter(|(s, d)| s != d)
            .map(|(s, d)| {
                let re = Regex::new(&format!(
                    r"\b([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.{}\.svc\b",
                    regex::escape(s)
                ))
                .expect("escaped namespace");
                (s.clone(), d.clone(), re)
            })
            .collect();
        Self { by_namespace }
    }

    /// The strings of `obj` that may hold service hosts: env values of every
    /// container and init container, ConfigMap data, and an ExternalName
    /// Service's target.
    fn fields(obj: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for spec in pod_spec_pointers(obj) {
            for list in ["containers", "initContainers"] {
                let Some(cs) = obj
                    .pointer(&format!("{spec}/{list}"))
                    .and_then(Value::as_array)
                else {
                    continue;
                };
                for (ci, c) in cs.iter().enumerate() {
                    let Some(env) = c.get("env").and_then(Value::as_array) else {
                        continue;
                    };
                    for (ei, e) in env.iter().enumerate() {
                        if e.get("value").and_then(Value::as_str).is_some() {
                            out.push(format!("{spec}/{list}/{ci}/env/{ei}/value"));
                        }
                    }
                }
            }
        }
        if is(obj, "", "Service")
            && obj
                .pointer("/spec/externalName")
                .is_some_and(Value::is_string)
        {
            out.push("/spec/externalName".to_owned());
        }
        if is(obj, "", "ConfigMap")
            && let Some(data) = obj.get("data").and_then(Value::as_object)
        {
            for k in data.keys() {
                out.push(format!("/data/{}", k.replace('~', "~0").replace('/', "~1")));
            }
        }
        out
    }

    /// Every reference to a source-namespace service in `obj`.
    pub fn find(&self, obj: &Value) -> Vec<DnsReference> {
        let mut out = Vec::new();
        for field in Self::fields(obj) {
            let Some(s) = obj.pointer(&field).and_then(Value::as_str) else {
                continue;
            };
            for (src, _, re) in &self.by_namespace {
                for m in re.find_iter(s) {
                    out.push(DnsReference {
                        field: field.clone(),
                        host: m.as_str().to_owned(),
                        namespace: src.clone(),
                    });
                }
            }
        }
        out
    }

    /// Rewrites every reference in `obj` to the destination namespace;
    /// returns how many strings changed.
    pub fn rewrite(&self, obj: &mut Value) -> usize {
        let mut changed = 0;
        for field in Self::fields(obj) {
            let Some(Value::String(s)) = obj.pointer_mut(&field) else {
                continue;
            };
            let mut new = s.clone();
            for (_, dst, re) in &self.by_namespace {
                new = re
                    .replace_all(&new, format!("${{1}}.{dst}.svc").as_str())
                    .into_owned();
            }
            if new != *s {
                *s = new;
                changed += 1;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_and_rewrites_hosts() {
        let map = BTreeMap::from([("shop".to_owned(), "shop-copy".to_owned())]);
        let dns = ServiceDns::new(&map);
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "shop"},
            "data": {"url": "postgres://db-0.db.shop.svc.cluster.local:5432/x", "other": "db.shopping.svc", "a/b": "api.shop.svc"}});
        let found = dns.find(&cm);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].field, "/data/a~1b");
        assert_eq!(dns.rewrite(&mut cm), 2);
        assert_eq!(
            cm["data"]["url"],
            "postgres://db-0.db.shop-copy.svc.cluster.local:5432/x"
        );
        assert_eq!(cm["data"]["other"], "db.shopping.svc");
        assert_eq!(cm["data"]["a/b"], "api.shop-copy.svc");
    }
}

//! The four patch types: JSON merge (RFC 7386), JSON patch (RFC 6902),
//! strategic merge (with the common merge keys) and a simplified
//! server-side apply merge.

use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed (400).
    #[error("{0}")]
    Malformed(String),
    /// The patch is well formed but does not apply to the object (422).
    #[error("{0}")]
    DoesNotApply(String),
}

/// Apply an RFC 7386 merge patch in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object ensured above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn pointer_tokens(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PatchError::Malformed(format!(
            "JSON pointer \"{path}\" must start with '/'"
        )));
    };
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for t in &tokens[..tokens.len().saturating_sub(1)] {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::DoesNotApply(format!("doc is missing path: \"{path}\"")))?;
    }
    Ok(cur)
}

fn json_remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let tokens = pointer_tokens(path)?;
    let Some(last) = tokens.last().cloned() else {
        return Ok(std::mem::take(doc));
    };
    let parent = parent_mut(doc, &tokens, path)?;
    let missing =
        || PatchError::DoesNotApply(format!("doc is missing path: \"{path}\": missing value"));
    match parent {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

fn json_add(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), PatchError> {
    let tokens = pointer_tokens(path)?;
    let Some(last) = tokens.last().cloned() else {
        *doc = value;
        return Ok(());
    };
    let parent = parent_mut(doc, &tokens, path)?;
    match parent {
        Value::Object(m) => {
            if replace && !m.contains_key(&last) {
                return Err(PatchError::DoesNotApply(format!(
                    "replace operation does not apply: doc is missing key: {path}: missing value"
                )));
            }
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| {
                PatchError::DoesNotApply(format!("invalid array index in path \"{path}\""))
            })?;
            if replace {
                match a.get_mut(i) {
                    Some(slot) => *slot = value,
                    None => {
                        return Err(PatchError::DoesNotApply(format!(
                            "replace operation does not apply: doc is missing key: {path}: missing value"
                        )));
                    }
                }
            } else if i <= a.len() {
                a.insert(i, value);
            } else {
                return Err(PatchError::DoesNotApply(format!(
                    "add operation does not apply: index out of bounds: {path}"
                )));
            }
            Ok(())
        }
        _ => Err(PatchError::DoesNotApply(format!(
            "doc is missing path: \"{path}\""
        ))),
    }
}

/// Apply an RFC 6902 JSON patch in place.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::Malformed("json patch must be an array of operations".into()))?;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).ok_or_else(|| {
            PatchError::Malformed("json patch operation is missing \"op\"".into())
        })?;
        let path = op.get("path").and_then(Value::as_str).ok_or_else(|| {
            PatchError::Malformed(format!("json patch {kind} operation is missing \"path\""))
        })?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("json patch {kind} operation is missing \"value\""))
            })
        };
        let from = || {
            op.get("from").and_then(Value::as_str).ok_or_else(|| {
                PatchError::Malformed(format!("json patch {kind} operation is missing \"from\""))
            })
        };
        match kind {
            "add" => json_add(doc, path, value()?, false)?,
            "replace" => json_add(doc, path, value()?, true)?,
            "remove" => {
                json_remove(doc, path)?;
            }
            "move" => {
                let v = json_remove(doc, from()?)?;
                json_add(doc, path, v, false)?;
            }
            "copy" => {
                let src = from()?;
                let v = doc.pointer(src).cloned().ok_or_else(|| {
                    PatchError::DoesNotApply(format!("doc is missing from path: \"{src}\""))
                })?;
                json_add(doc, path, v, false)?;
            }
            "test" => {
                let expected = value()?;
                if doc.pointer(path) != Some(&expected) {
                    return Err(PatchError::DoesNotApply(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => {
                return Err(PatchError::Malformed(format!("Unexpected kind: {other}")));
            }
        }
    }
    Ok(())
}

/// How a list field merges under strategic merge / apply.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ListRule {
    /// Replace the whole list.
    Replace,
    /// Merge elements by this key.
    Key(&'static str),
    /// Union of primitive values.
    Set,
}

/// The merge rule of list field `field`, given the field names above it.
fn list_rule(path: &[String], field: &str) -> ListRule {
    let under = |name: &str| path.iter().any(|p| p == name);
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => ListRule::Key("name"),
        "ports"
            if under("containers") || under("initContainers") || under("ephemeralContainers") =>
        {
            ListRule::Key("containerPort")
        }
        "ports" if path.last().map(String::as_str) == Some("spec") => ListRule::Key("port"),
        "volumeMounts" => ListRule::Key("mountPath"),
        "volumeDevices" => ListRule::Key("devicePath"),
        "hostAliases" => ListRule::Key("ip"),
        "topologySpreadConstraints" => ListRule::Key("topologyKey"),
        "ownerReferences" => ListRule::Key("uid"),
        "conditions" => ListRule::Key("type"),
        "finalizers" if path.last().map(String::as_str) == Some("metadata") => ListRule::Set,
        _ => ListRule::Replace,
    }
}

/// Remove `$`-directives from a value that is inserted as is.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Apply a strategic merge patch in place (`apply` = server-side apply merge:
/// same list rules, no directives, `null` leaves fields alone).
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let mut path = Vec::new();
    smp(target, patch, &mut path, false)
}

/// The merge used by server-side apply (no removal of fields dropped since the last apply).
pub fn apply_merge(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let mut path = Vec::new();
    smp(target, patch, &mut path, true)
}

fn smp(
    target: &mut Value,
    patch: &Value,
    path: &mut Vec<String>,
    apply: bool,
) -> Result<(), PatchError> {
    let Value::Object(p) = patch else {
        *target = strip_directives(patch);
        return Ok(());
    };
    if !apply {
        match p.get("$patch").and_then(Value::as_str) {
            Some("replace") => {
                *target = strip_directives(patch);
                return Ok(());
            }
            Some("delete") => {
                *target = Value::Object(Map::new());
                return Ok(());
            }
            Some("merge") | None => {}
            Some(other) => {
                return Err(PatchError::Malformed(format!(
                    "unknown patch type: {other}"
                )));
            }
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    for (k, v) in p {
        if !apply && k.starts_with('$') {
            if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
                let t = target.as_object_mut().expect("object ensured above");
                if let (Some(Value::Array(cur)), Some(del)) = (t.get_mut(list), v.as_array()) {
                    cur.retain(|x| !del.contains(x));
                }
            }
            // `$setElementOrder/...` and `$retainKeys` are accepted and ignored.
            continue;
        }
        let t = target.as_object_mut().expect("object ensured above");
        match v {
            Value::Null => {
                if !apply {
                    t.remove(k);
                }
            }
            Value::Object(inner)
                if !apply && inner.get("$patch").and_then(Value::as_str) == Some("delete") =>
            {
                t.remove(k);
            }
            Value::Object(_) => {
                path.push(k.clone());
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                let r = smp(slot, v, path, apply);
                path.pop();
                r?;
            }
            Value::Array(items) => {
                let rule = list_rule(path, k);
                path.push(k.clone());
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                let r = merge_list(slot, items, rule, path, apply);
                path.pop();
                r?;
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(
    target: &mut Value,
    items: &[Value],
    rule: ListRule,
    path: &mut Vec<String>,
    apply: bool,
) -> Result<(), PatchError> {
    let replace_all = !apply
        && items
            .iter()
            .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    if replace_all || rule == ListRule::Replace || !target.is_array() {
        let kept: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        *target = Value::Array(kept);
        return Ok(());
    }
    let cur = target.as_array_mut().expect("array checked above");
    match rule {
        ListRule::Set => {
            for i in items {
                if !cur.contains(i) {
                    cur.push(i.clone());
                }
            }
        }
        ListRule::Key(key) => {
            for item in items {
                let Some(kv) = item.get(key) else {
                    // An element without the merge key cannot be matched: append it.
                    cur.push(strip_directives(item));
                    continue;
                };
                let pos = cur.iter().position(|c| c.get(key) == Some(kv));
                let delete = !apply && item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        cur.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => smp(&mut cur[i], item, path, apply)?,
                    (None, false) => cur.push(strip_directives(item)),
                }
            }
        }
        ListRule::Replace => unreachable!("handled above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_null_deletes() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "l": [3]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_ops() {
        let mut t = json!({"a": {"b": [1, 2]}, "x~y": 1});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "add", "path": "/a/b/0", "value": 0},
                {"op": "replace", "path": "/x~0y", "value": 2},
                {"op": "copy", "from": "/a/b", "path": "/c"},
                {"op": "move", "from": "/c", "path": "/d"},
                {"op": "remove", "path": "/a/b/1"},
                {"op": "test", "path": "/d/3", "value": 3}
            ]),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"a": {"b": [0, 2, 3]}, "x~y": 2, "d": [0, 1, 2, 3]})
        );
        assert!(matches!(
            json_patch(&mut t, &json!([{"op": "test", "path": "/d/0", "value": 9}])),
            Err(PatchError::DoesNotApply(_))
        ));
        assert!(matches!(
            json_patch(&mut t, &json!({"op": "x"})),
            Err(PatchError::Malformed(_))
        ));
        assert!(
            json_patch(
                &mut t,
                &json!([{"op": "replace", "path": "/nope", "value": 1}])
            )
            .is_err()
        );
    }

    #[test]
    fn strategic_keeps_untouched_containers() {
        let mut t = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}], "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}}}, "metadata": {"finalizers": ["x"]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                               {"name": "b", "$patch": "delete"},
                               {"name": "c", "image": "c:1"}]}}},
                    "metadata": {"finalizers": ["y"]}}),
        )
        .unwrap();
        let cs = &t["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
        assert_eq!(cs[1]["name"], "c");
        assert_eq!(t["metadata"]["finalizers"], json!(["x", "y"]));
    }

    #[test]
    fn strategic_replace_directives() {
        let mut t = json!({"spec": {"ports": [{"port": 80, "name": "http"}], "sel": {"a": "1"}}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"ports": [{"port": 443}], "sel": {"$patch": "replace", "b": "2"}}}),
        )
        .unwrap();
        assert_eq!(t["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(t["spec"]["sel"], json!({"b": "2"}));
    }
}

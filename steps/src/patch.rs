//! RFC 6902 JSON Patch over `serde_json::Value`, for user transforms.
//!
//! Errors name the operation and the pointer, never a value: the object may
//! be a Secret.

use serde_json::Value;

use crate::spec::PatchOp;

/// Applies `ops` to `doc` in order. On error `doc` is left unchanged.
///
/// # Errors
/// A message naming the failing operation and pointer.
pub fn apply_patch(doc: &mut Value, ops: &[PatchOp]) -> Result<(), String> {
    let mut work = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut work, op).map_err(|e| format!("op {i}: {e}"))?;
    }
    *doc = work;
    Ok(())
}

fn apply_op(doc: &mut Value, op: &PatchOp) -> Result<(), String> {
    match op {
        PatchOp::Add { path, value } => add(doc, path, value.clone()),
        PatchOp::Remove { path } => remove(doc, path).map(drop),
        PatchOp::Replace { path, value } => {
            let target = doc
                .pointer_mut(path)
                .ok_or_else(|| format!("replace: nothing at {path}"))?;
            *target = value.clone();
            Ok(())
        }
        PatchOp::Move { from, path } => {
            if path.starts_with(&format!("{from}/")) {
                return Err(format!("move: {path} is inside {from}"));
            }
            let v = remove(doc, from)?;
            add(doc, path, v)
        }
        PatchOp::Copy { from, path } => {
            let v = doc
                .pointer(from)
                .cloned()
                .ok_or_else(|| format!("copy: nothing at {from}"))?;
            add(doc, path, v)
        }
        PatchOp::Test { path, value } => match doc.pointer(path) {
            Some(v) if v == value => Ok(()),
            Some(_) => Err(format!("test: the value at {path} differs")),
            None => Err(format!("test: nothing at {path}")),
        },
    }
}

fn split(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("{path:?} is not a JSON pointer"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, key) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(key, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let idx = if key == "-" {
                a.len()
            } else {
                key.parse::<usize>()
                    .map_err(|_| format!("add: {key:?} is not an array index at {path}"))?
            };
            if idx > a.len() {
                return Err(format!("add: index out of range at {path}"));
            }
            a.insert(idx, value);
            Ok(())
        }
        Some(_) => Err(format!(
            "add: the parent of {path} is not an object or array"
        )),
        None => Err(format!("add: the parent of {path} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m
            .remove(&key)
            .ok_or_else(|| format!("remove: nothing at {path}")),
        Some(Value::Array(a)) => {
            let idx = key
                .parse::<usize>()
                .map_err(|_| format!("remove: {key:?} is not an array index at {path}"))?;
            if idx >= a.len() {
                return Err(format!("remove: index out of range at {path}"));
            }
            Ok(a.remove(idx))
        }
        _ => Err(format!("remove: nothing at {path}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ops(v: Value) -> Vec<PatchOp> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn applies_every_op() {
        let mut doc = json!({"a": {"b": [1, 2]}, "c": "x"});
        apply_patch(
            &mut doc,
            &ops(json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "add", "path": "/a/b/0", "value": 0},
                {"op": "replace", "path": "/c", "value": "y"},
                {"op": "copy", "from": "/c", "path": "/d"},
                {"op": "move", "from": "/d", "path": "/a/e~1f"},
                {"op": "remove", "path": "/a/b/1"},
                {"op": "test", "path": "/c", "value": "y"}
            ])),
        )
        .unwrap();
        assert_eq!(doc, json!({"a": {"b": [0, 2, 3], "e/f": "y"}, "c": "y"}));
    }

    #[test]
    fn failure_leaves_doc_unchanged_and_hides_values() {
        let mut doc = json!({"data": {"password": "hunter2"}});
        let err = apply_patch(
            &mut doc,
            &ops(json!([{"op": "remove", "path": "/data/password"}, {"op": "test", "path": "/data/x", "value": "hunter2"}])),
        )
        .unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(doc, json!({"data": {"password": "hunter2"}}));
    }
}

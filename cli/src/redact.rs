//! Removal of Secret data from payloads before they leave the daemon.
//!
//! The export hook of [`ferry_engine::export_run`] and the `describe` view
//! pass every step-defined payload (spec, inputs, outputs, checkpoints)
//! through [`redact`]. It works on the shape alone: any JSON object whose
//! `kind` is `Secret`, at any depth, has the values of its `data` and
//! `stringData` replaced (so has every item of a `SecretList`, whose items
//! carry no `kind`), keeping the key names (as `kubectl describe secret`
//! shows them) so a reader can still tell what a Secret held.

use serde_json::Value;

/// What replaces each Secret value.
pub const REDACTED: &str = "<redacted>";

/// Returns `value` with the data of every Secret object in it replaced by
/// [`REDACTED`].
pub fn redact(mut value: Value) -> Value {
    redact_in_place(&mut value);
    value
}

fn redact_in_place(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let kind = map.get("kind").and_then(Value::as_str);
            redact_object(map, kind == Some("Secret"), kind == Some("SecretList"));
        }
        Value::Array(items) => items.iter_mut().for_each(redact_in_place),
        _ => {}
    }
}

fn redact_object(map: &mut serde_json::Map<String, Value>, is_secret: bool, is_secret_list: bool) {
    for (key, field) in map.iter_mut() {
        if is_secret && (key == "data" || key == "stringData") {
            blank(field);
        } else if is_secret_list && key == "items" {
            // A list response leaves `kind` off its items: each one is a Secret.
            for item in field.as_array_mut().into_iter().flatten() {
                match item {
                    Value::Object(m) => redact_object(m, true, false),
                    other => redact_in_place(other),
                }
            }
        } else {
            redact_in_place(field);
        }
    }
}

/// Replaces every value under a Secret's `data` with the marker; anything
/// that is not a map of values (malformed) is replaced whole.
fn blank(field: &mut Value) {
    match field {
        Value::Object(entries) => {
            for v in entries.values_mut() {
                *v = Value::String(REDACTED.into());
            }
        }
        Value::Null => {}
        other => *other = Value::String(REDACTED.into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secret_data_goes_at_any_depth() {
        let v = json!({
            "spec": {"namespaces": [{"source": "shop"}]},
            "objects": [
                {"kind": "Secret", "metadata": {"name": "db"}, "data": {"password": "aHVudGVyMg=="}, "stringData": {"user": "root"}},
                {"kind": "ConfigMap", "data": {"k": "visible"}},
                {"kind": "List", "items": [{"kind": "Secret", "data": "weird"}]},
                {"kind": "SecretList", "items": [{"metadata": {"name": "x"}, "data": {"k": "bGlzdGVk"}}]}
            ]
        });
        let r = redact(v);
        let text = r.to_string();
        assert!(!text.contains("aHVudGVyMg=="));
        assert!(!text.contains("root"));
        assert!(!text.contains("weird"));
        assert!(!text.contains("bGlzdGVk"));
        assert!(text.contains("visible"));
        assert_eq!(r["objects"][0]["data"]["password"], REDACTED);
        assert_eq!(r["objects"][0]["metadata"]["name"], "db");
    }
}

//! A minimal decoder for the Kubernetes Protobuf envelope, enough for the
//! bodies kubectl 1.32+ sends for imperative `create namespace|configmap|
//! secret|serviceaccount`. Other kinds answer 415 (kubectl does not retry
//! with JSON, so use `create -f`/`apply` for them).
//!
//! Envelope: magic `k8s\0`, then `Unknown{1: TypeMeta{1: apiVersion, 2: kind},
//! 2: raw, 3: contentEncoding, 4: contentType}` where `raw` is the typed object.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::resources::ResourceInfo;
use crate::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One field of a message: number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to decode protobuf body: {why}"))
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ApiError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let num = tag >> 3;
        let f = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| bad("length overflow"))?;
                let end = self
                    .pos
                    .checked_add(len)
                    .ok_or_else(|| bad("length overflow"))?;
                let s = self
                    .buf
                    .get(self.pos..end)
                    .ok_or_else(|| bad("truncated field"))?;
                self.pos = end;
                Field::Bytes(s)
            }
            5 => {
                self.skip(4)?;
                Field::Fixed
            }
            w => return Err(bad(&format!("unsupported wire type {w}"))),
        };
        Ok(Some((num, f)))
    }

    fn skip(&mut self, n: usize) -> Result<(), ApiError> {
        if self.pos + n > self.buf.len() {
            return Err(bad("truncated fixed field"));
        }
        self.pos += n;
        Ok(())
    }
}

fn string(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("invalid UTF-8 in a string field"))
}

/// A map entry `{1: key, 2: value}`.
fn entry(b: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let mut r = Reader::new(b);
    let (mut k, mut v): (String, &[u8]) = (String::new(), &[]);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(s)) => k = string(s)?,
            (2, Field::Bytes(s)) => v = s,
            _ => {}
        }
    }
    Ok((k, v))
}

fn insert_entry(map: &mut Map<String, Value>, b: &[u8], bytes: bool) -> Result<(), ApiError> {
    let (k, v) = entry(b)?;
    let value = if bytes {
        json!(base64::engine::general_purpose::STANDARD.encode(v))
    } else {
        json!(string(v)?)
    };
    map.insert(k, value);
    Ok(())
}

fn object_meta(b: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(s)) => {
                m.insert("name".into(), json!(string(s)?));
            }
            (2, Field::Bytes(s)) => {
                m.insert("generateName".into(), json!(string(s)?));
            }
            (3, Field::Bytes(s)) => {
                m.insert("namespace".into(), json!(string(s)?));
            }
            (11, Field::Bytes(s)) => insert_entry(&mut labels, s, false)?,
            (12, Field::Bytes(s)) => insert_entry(&mut annotations, s, false)?,
            (14, Field::Bytes(s)) => finalizers.push(json!(string(s)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    // Empty strings are protobuf defaults, not values.
    m.retain(|_, v| v.as_str() != Some(""));
    Ok(Value::Object(m))
}

fn typed(kind: &str, raw: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader::new(raw);
    let mut obj = Map::new();
    let mut data = Map::new();
    let mut binary = Map::new();
    let mut string_data = Map::new();
    let mut pull_secrets = Vec::new();
    while let Some((n, f)) = r.next()? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(s)) => {
                obj.insert("metadata".into(), object_meta(s)?);
            }
            ("Namespace", 2, Field::Bytes(s)) => {
                let mut sr = Reader::new(s);
                let mut fins = Vec::new();
                while let Some((n, f)) = sr.next()? {
                    if let (1, Field::Bytes(x)) = (n, f) {
                        fins.push(json!(string(x)?));
                    }
                }
                if !fins.is_empty() {
                    obj.insert("spec".into(), json!({"finalizers": fins}));
                }
            }
            ("ConfigMap", 2, Field::Bytes(s)) => insert_entry(&mut data, s, false)?,
            ("ConfigMap", 3, Field::Bytes(s)) => insert_entry(&mut binary, s, true)?,
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            ("Secret", 2, Field::Bytes(s)) => insert_entry(&mut data, s, true)?,
            ("Secret", 3, Field::Bytes(s)) => {
                obj.insert("type".into(), json!(string(s)?));
            }
            ("Secret", 4, Field::Bytes(s)) => insert_entry(&mut string_data, s, false)?,
            ("Deployment", 2, Field::Bytes(s)) => {
                obj.insert("spec".into(), deployment_spec(s)?);
            }
            ("ServiceAccount", 3, Field::Bytes(s)) => {
                let (name, _) = entry(s)?;
                pull_secrets.push(json!({"name": name}));
            }
            ("ServiceAccount", 4, Field::Varint(v)) => {
                obj.insert("automountServiceAccountToken".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !binary.is_empty() {
        obj.insert("binaryData".into(), Value::Object(binary));
    }
    if !string_data.is_empty() {
        obj.insert("stringData".into(), Value::Object(string_data));
    }
    if !pull_secrets.is_empty() {
        obj.insert("imagePullSecrets".into(), Value::Array(pull_secrets));
    }
    Ok(Value::Object(obj))
}

/// The strings of repeated field `n` and the first varint of other fields, as a helper view.
fn strings(b: &[u8], n: u64) -> Result<Vec<Value>, ApiError> {
    let mut r = Reader::new(b);
    let mut out = Vec::new();
    while let Some((k, f)) = r.next()? {
        if let (true, Field::Bytes(s)) = (k == n, f) {
            out.push(json!(string(s)?));
        }
    }
    Ok(out)
}

/// `LabelSelector{1: matchLabels}` (matchExpressions are not decoded).
fn label_selector(b: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader::new(b);
    let mut labels = Map::new();
    while let Some((n, f)) = r.next()? {
        if let (1, Field::Bytes(s)) = (n, f) {
            insert_entry(&mut labels, s, false)?;
        }
    }
    Ok(json!({"matchLabels": labels}))
}

/// `Container{1: name, 2: image, 3: command, 4: args, 5: workingDir, 6: ports, 7: env}`.
fn container(b: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader::new(b);
    let mut c = Map::new();
    let (mut ports, mut env) = (Vec::new(), Vec::new());
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(s)) => {
                c.insert("name".into(), json!(string(s)?));
            }
            (2, Field::Bytes(s)) => {
                c.insert("image".into(), json!(string(s)?));
            }
            (5, Field::Bytes(s)) if !s.is_empty() => {
                c.insert("workingDir".into(), json!(string(s)?));
            }
            (6, Field::Bytes(s)) => {
                // ContainerPort{1: name, 3: containerPort, 4: protocol}
                let mut pr = Reader::new(s);
                let mut p = Map::new();
                while let Some((n, f)) = pr.next()? {
                    match (n, f) {
                        (1, Field::Bytes(x)) if !x.is_empty() => {
                            p.insert("name".into(), json!(string(x)?));
                        }
                        (3, Field::Varint(v)) => {
                            p.insert("containerPort".into(), json!(v));
                        }
                        (4, Field::Bytes(x)) if !x.is_empty() => {
                            p.insert("protocol".into(), json!(string(x)?));
                        }
                        _ => {}
                    }
                }
                ports.push(Value::Object(p));
            }
            (7, Field::Bytes(s)) => {
                let (name, value) = entry(s)?;
                env.push(json!({"name": name, "value": string(value)?}));
            }
            _ => {}
        }
    }
    for (key, n) in [("command", 3), ("args", 4)] {
        let v = strings(b, n)?;
        if !v.is_empty() {
            c.insert(key.into(), Value::Array(v));
        }
    }
    if !ports.is_empty() {
        c.insert("ports".into(), Value::Array(ports));
    }
    if !env.is_empty() {
        c.insert("env".into(), Value::Array(env));
    }
    Ok(Value::Object(c))
}

/// `DeploymentSpec{1: replicas, 2: selector, 3: template{1: metadata, 2: PodSpec{2: containers}}, 4: strategy{1: type}}`.
fn deployment_spec(b: &[u8]) -> Result<Value, ApiError> {
    let mut r = Reader::new(b);
    let mut spec = Map::new();
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Varint(v)) => {
                spec.insert("replicas".into(), json!(v as i32));
            }
            (2, Field::Bytes(s)) => {
                spec.insert("selector".into(), label_selector(s)?);
            }
            (3, Field::Bytes(s)) => {
                let mut tr = Reader::new(s);
                let mut template = Map::new();
                while let Some((n, f)) = tr.next()? {
                    match (n, f) {
                        (1, Field::Bytes(m)) => {
                            template.insert("metadata".into(), object_meta(m)?);
                        }
                        (2, Field::Bytes(ps)) => {
                            let mut pr = Reader::new(ps);
                            let mut containers = Vec::new();
                            while let Some((n, f)) = pr.next()? {
                                if let (2, Field::Bytes(cb)) = (n, f) {
                                    containers.push(container(cb)?);
                                }
                            }
                            template.insert("spec".into(), json!({"containers": containers}));
                        }
                        _ => {}
                    }
                }
                spec.insert("template".into(), Value::Object(template));
            }
            (4, Field::Bytes(s)) => {
                let t = strings(s, 1)?;
                if let Some(t) = t.into_iter().find(|t| t.as_str() != Some("")) {
                    spec.insert("strategy".into(), json!({"type": t}));
                }
            }
            _ => {}
        }
    }
    Ok(Value::Object(spec))
}

/// Decode a Protobuf request body for `info` into its JSON form.
pub fn decode(body: &[u8], info: &ResourceInfo) -> Result<Value, ApiError> {
    let supported = (info.group.is_empty()
        && matches!(
            info.kind.as_str(),
            "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount"
        ))
        || (info.group == "apps" && info.kind == "Deployment");
    if !supported {
        return Err(ApiError::unsupported_media(&[
            "application/json",
            "application/yaml",
        ]));
    }
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing k8s envelope magic"))?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut raw): (String, String, &[u8]) =
        (String::new(), String::new(), &[]);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((n, f)) = t.next()? {
                    match (n, f) {
                        (1, Field::Bytes(s)) => api_version = string(s)?,
                        (2, Field::Bytes(s)) => kind = string(s)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(s)) => raw = s,
            (3, Field::Bytes(s)) if !s.is_empty() => {
                return Err(bad("content encodings are not supported"));
            }
            _ => {}
        }
    }
    if kind.is_empty() {
        kind = info.kind.clone();
    }
    if kind != info.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            info.kind
        )));
    }
    let mut obj = typed(&kind, raw)?;
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!(if api_version.is_empty() {
        info.api_version()
    } else {
        api_version
    });
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn field(n: u64, b: &[u8]) -> Vec<u8> {
        let mut v = vec![((n << 3) | 2) as u8, b.len() as u8];
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn namespace_and_configmap() {
        let reg = Registry::new();
        let ns = reg.lookup("", "v1", "namespaces").unwrap();
        let tm = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let raw = [
            field(1, &field(1, b"ns33")),
            field(2, &[]),
            field(3, &field(1, b"")),
        ]
        .concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &raw)].concat();
        let v = decode(&body, &ns).unwrap();
        assert_eq!(v["metadata"]["name"], "ns33");
        assert_eq!(v["kind"], "Namespace");

        let cm = reg.lookup("", "v1", "configmaps").unwrap();
        let tm = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let meta = [
            field(1, b"c1"),
            field(3, b"default"),
            field(11, &[field(1, b"a"), field(2, b"b")].concat()),
        ]
        .concat();
        let raw = [
            field(1, &meta),
            field(2, &[field(1, b"k"), field(2, b"v")].concat()),
        ]
        .concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &raw)].concat();
        let v = decode(&body, &cm).unwrap();
        assert_eq!(v["data"]["k"], "v");
        assert_eq!(v["metadata"]["labels"]["a"], "b");
        assert!(decode(b"k8s\0\xff\xff", &cm).is_err());

        // `kubectl.1.33 create deployment dd --image=nginx:1 --port=80 --replicas=3`, as captured.
        let hex = concat!(
            "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412b6010a1d",
            "0a02646412001a0022002a003200380042005a090a0361707012026464128601",
            "0803120b0a090a03617070120264641a6d0a1b0a0012001a0022002a00320038",
            "0042005a090a0361707012026464124e12300a056e67696e7812076e67696e78",
            "3a312a00320a0a001000185022002a0042006a007200800100880100900100a2",
            "01001a00320042004a0052005800600068008201008a01009a0100c201002202",
            "0a00280038001a0c0800100018002000280038001a002200",
        );
        let body: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let dep = reg.lookup("apps", "v1", "deployments").unwrap();
        let v = decode(&body, &dep).unwrap();
        assert_eq!(v["metadata"]["name"], "dd");
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "dd");
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "nginx:1");
        assert_eq!(c["ports"][0]["containerPort"], 80);
        assert!(decode(b"garbage", &cm).is_err());
    }
}

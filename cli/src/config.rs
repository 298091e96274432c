//! The daemon's configuration: one TOML file, every key documented in
//! `cli/ferry.example.toml`.
//!
//! Parsing is strict: every table denies unknown keys (a typo is an error,
//! not a silently ignored setting), and [`Config::load`] validates every
//! value, naming the key in its error, before the daemon creates anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `Result` with the config's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key ferry does not know.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message: it names the key and the line.
        message: String,
    },
    /// A key has a value ferry cannot use.
    #[error("config file {}: key `{key}`: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, dotted (`buckets.main.url`).
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

/// The daemon's configuration, as parsed and validated.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The bucket used when a clone names none; must be a key of `buckets`.
    /// Optional when exactly one bucket is configured.
    pub default_bucket: Option<String>,
    /// Buckets for volume data, by name.
    #[serde(default)]
    pub buckets: BTreeMap<String, Bucket>,
    /// Capability overrides for storage classes, first match wins.
    #[serde(default)]
    pub storage_classes: Vec<StorageClassOverride>,
    /// CSI drivers / provisioners whose volumes cannot be cloned at all.
    #[serde(default)]
    pub non_clonable_drivers: Vec<String>,
    /// Defaults for pre/post hooks.
    #[serde(default)]
    pub hooks: Hooks,
    /// Concurrency limits.
    #[serde(default)]
    pub limits: Limits,
    /// The container image of the data mover pod: GNU `tar`, `sh`, `du`,
    /// `find` and `sleep` (default `docker.io/library/debian:12-slim`).
    pub mover_image: Option<String>,
    /// Read every chunk back from the bucket and verify it while a clone's
    /// download follows its upload, even the chunks the clone stored itself
    /// and could hand over from memory: proof that the bucket's copy
    /// restores, for a bucket read, a decompression and a hash per chunk
    /// (default false).
    pub mover_read_back: Option<bool>,
    /// The data mover pods' compute resources, `{ requests = { cpu, memory },
    /// limits = { cpu, memory } }` (default requests 100m and 128Mi, limits
    /// 1 CPU and 1Gi). Namespaces with a compute ResourceQuota refuse pods
    /// without them; preflight checks the source namespaces' quotas have
    /// room.
    pub mover_resources: Option<ferry_steps::preflight::MoverResources>,
    /// How long a mover pod may take to run (scheduled, volume attached,
    /// image pulled) before its volume's step fails, quoting what the
    /// cluster says of it (a duration such as `"10m"`, the default).
    pub mover_pod_start_timeout: Option<String>,
    /// How long a clone may take to become Healthy on the destination when
    /// it does not say (a duration such as `"15m"`; default `"10m"`).
    pub default_health_deadline: Option<String>,
    /// What is kept, and for how long.
    #[serde(default)]
    pub retention: Retention,
    /// Key files; relative paths are relative to the config file.
    #[serde(default)]
    pub keys: Keys,
    /// The tokens file for the TCP listener; relative to the config file.
    pub tokens_file: Option<PathBuf>,
}

/// One bucket: an object_store URL and its connection options.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`
    /// or `file:///absolute/dir`.
    pub url: String,
    /// An S3-compatible endpoint (MinIO, Ceph …), `https://…` (or `http://`
    /// with `allow_http = true`).
    pub endpoint: Option<String>,
    /// The region (S3).
    pub region: Option<String>,
    /// Allow plain HTTP to `endpoint`.
    #[serde(default)]
    pub allow_http: bool,
}

/// What ferry assumes about a storage class it matches, overriding what it
/// would infer from the driver.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageClassOverride {
    /// The storage class's provisioner (CSI driver name).
    pub provisioner: String,
    /// Parameters the storage class must carry (a subset match).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Access modes the class supports.
    pub access_modes: Option<Vec<String>>,
    /// Whether CSI snapshots work for it.
    pub snapshots: Option<bool>,
    /// Whether its volumes can be cloned (CSI volume cloning / data source).
    pub clonable: Option<bool>,
}

/// Hook defaults.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// How long one hook may run when the hook does not say (a duration,
    /// default `"25m"`).
    pub timeout: Option<String>,
    /// `fail` (the clone rolls back) or `continue` (a warning); unset, pre
    /// hooks fail and post hooks continue.
    pub on_failure: Option<String>,
}

/// Concurrency limits.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Steps running at once across all clones (default 32).
    pub global_steps: Option<usize>,
    /// Steps running at once within one clone (default 8).
    pub per_run_steps: Option<usize>,
    /// Volume transfers the data mover runs at once (default 4).
    pub mover_transfers: Option<usize>,
}

/// Retention of finished clones' records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Delete the record (events, blobs) of a clone this long after it
    /// finished (a duration such as `"90d"`); unset keeps records forever.
    pub finished: Option<String>,
}

/// Key files. Unset paths default to `keys/` next to the config file, or
/// `$XDG_CONFIG_HOME/ferry/keys/` without one — never the state dir.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// The audit MAC key (32 raw bytes), generated if absent.
    pub audit_mac: Option<PathBuf>,
    /// The blob encryption key (32 raw bytes), generated if absent.
    pub blob_encryption: Option<PathBuf>,
}

/// Access modes a storage class can declare.
const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

impl Config {
    /// Writes the config's defaults into a clone spec (as JSON, before it
    /// is parsed) where the spec leaves them out: `default_health_deadline`
    /// and each hook's `[hooks]` timeout and on-failure policy. The spec
    /// the log records then says what runs, whatever the config says after
    /// a restart.
    pub fn fill_spec_defaults(&self, spec: &mut serde_json::Value) {
        let Some(obj) = spec.as_object_mut() else {
            return;
        };
        if let Some(d) = self
            .default_health_deadline
            .as_deref()
            .and_then(|d| parse_duration(d).ok())
        {
            obj.entry("healthDeadlineSeconds")
                .or_insert(d.as_secs().into());
        }
        ferry_steps::spec::HookDefaults {
            timeout_seconds: self
                .hooks
                .timeout
                .as_deref()
                .and_then(|t| parse_duration(t).ok())
                .map(|d| d.as_secs().max(1)),
            on_error: match self.hooks.on_failure.as_deref() {
                Some("fail") => Some(ferry_steps::spec::OnError::Fail),
                Some("continue") => Some(ferry_steps::spec::OnError::Continue),
                _ => None,
            },
        }
        .fill(spec);
    }

    /// Reads, parses and validates the config file. Nothing is created.
    ///
    /// # Errors
    /// [`Error::Read`], [`Error::Parse`] (invalid TOML or an unknown key),
    /// [`Error::Invalid`] naming the key with a bad value.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        // Relative paths are relative to the config file, not to wherever the daemon was started.
        let base = path.parent().unwrap_or(Path::new("."));
        let absolutize = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        config.tokens_file.as_mut().map(absolutize);
        config.keys.audit_mac.as_mut().map(absolutize);
        config.keys.blob_encryption.as_mut().map(absolutize);
        Ok(config)
    }

    fn validate(&mut self, path: &Path) -> Result<()> {
        let invalid = |key: &str, reason: String| Error::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        for (name, bucket) in &self.buckets {
            check_bucket_name(name).map_err(|r| invalid(&format!("buckets.{name}"), r))?;
            check_bucket(bucket)
                .map_err(|(field, r)| invalid(&format!("buckets.{name}.{field}"), r))?;
        }
        match &self.default_bucket {
            Some(name) if !self.buckets.contains_key(name) => {
                let known: Vec<&str> = self.buckets.keys().map(String::as_str).collect();
                return Err(invalid(
                    "default_bucket",
                    format!(
                        "names bucket {name:?}, which is not configured (configured: {}); add [buckets.{name}] or name one of those",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            Some(_) => {}
            None if self.buckets.len() == 1 => {
                self.default_bucket = self.buckets.keys().next().cloned()
            }
            None if self.buckets.len() > 1 => {
                return Err(invalid(
                    "default_bucket",
                    "is required when more than one bucket is configured; name one of them".into(),
                ));
            }
            None => {}
        }
        for (i, sc) in self.storage_classes.iter().enumerate() {
            let key = format!("storage_classes[{i}]");
            if sc.provisioner.trim().is_empty() {
                return Err(invalid(
                    &format!("{key}.provisioner"),
                    "must name the class's provisioner (CSI driver)".into(),
                ));
            }
            for mode in sc.access_modes.iter().flatten() {
                if !ACCESS_MODES.contains(&mode.as_str()) {
                    return Err(invalid(
                        &format!("{key}.access_modes"),
                        format!(
                            "{mode:?} is not an access mode; use {}",
                            ACCESS_MODES.join(", ")
                        ),
                    ));
                }
            }
        }
        for (i, d) in self.non_clonable_drivers.iter().enumerate() {
            if d.trim().is_empty() {
                return Err(invalid(
                    &format!("non_clonable_drivers[{i}]"),
                    "is empty; name a CSI driver".into(),
                ));
            }
        }
        if let Some(t) = &self.hooks.timeout {
            parse_duration(t).map_err(|r| invalid("hooks.timeout", r))?;
        }
        if let Some(f) = &self.hooks.on_failure
            && f != "fail"
            && f != "continue"
        {
            return Err(invalid(
                "hooks.on_failure",
                format!("{f:?} is not a policy; use \"fail\" or \"continue\""),
            ));
        }
        for (key, v) in [
            ("limits.global_steps", self.limits.global_steps),
            ("limits.per_run_steps", self.limits.per_run_steps),
            ("limits.mover_transfers", self.limits.mover_transfers),
        ] {
            if let Some(n) = v
                && !(1..=10_000).contains(&n)
            {
                return Err(invalid(key, format!("{n} is out of range; use 1 to 10000")));
            }
        }
        if let (Some(g), Some(r)) = (self.limits.global_steps, self.limits.per_run_steps)
            && r > g
        {
            return Err(invalid(
                "limits.per_run_steps",
                format!("{r} exceeds limits.global_steps ({g})"),
            ));
        }
        if let Some(image) = &self.mover_image
            && (image.trim().is_empty() || image.contains(char::is_whitespace))
        {
            return Err(invalid(
                "mover_image",
                format!("{image:?} is not an image reference"),
            ));
        }
        if let Some(r) = &self.mover_resources {
            r.validate().map_err(|e| match e {
                ferry_steps::Error::Config { field, reason } => invalid(&field, reason),
                other => invalid("mover_resources", other.to_string()),
            })?;
        }
        if let Some(d) = &self.default_health_deadline {
            parse_duration(d).map_err(|r| invalid("default_health_deadline", r))?;
        }
        if let Some(d) = &self.mover_pod_start_timeout {
            parse_duration(d).map_err(|r| invalid("mover_pod_start_timeout", r))?;
        }
        if let Some(d) = &self.retention.finished {
            parse_duration(d).map_err(|r| invalid("retention.finished", r))?;
        }
        for (key, p) in [
            ("keys.audit_mac", &self.keys.audit_mac),
            ("keys.blob_encryption", &self.keys.blob_encryption),
            ("tokens_file", &self.tokens_file),
        ] {
            if let Some(p) = p
                && p.as_os_str().is_empty()
            {
                return Err(invalid(key, "is empty; give a file path".into()));
            }
        }
        Ok(())
    }

    /// How long finished clones' records are kept, if limited.
    pub fn retention_finished(&self) -> Option<Duration> {
        self.retention
            .finished
            .as_deref()
            .and_then(|d| parse_duration(d).ok())
    }
}

fn check_bucket_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err("a bucket name is 1-63 characters of a-z, 0-9, '-' and '_'".into())
    }
}

/// Checks a bucket; on error returns the field and the reason.
fn check_bucket(b: &Bucket) -> std::result::Result<(), (&'static str, String)> {
    let url = url::Url::parse(&b.url).map_err(|e| {
        (
            "url",
            format!(
                "{:?} is not a URL ({e}); use s3://, gs://, az:// or file:///",
                b.url
            ),
        )
    })?;
    match url.scheme() {
        "s3" | "gs" | "az" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err((
                    "url",
                    format!(
                        "{:?} names no bucket; write {}://BUCKET/PREFIX",
                        b.url,
                        url.scheme()
                    ),
                ));
            }
        }
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty())
                || !url.path().starts_with('/')
                || url.path() == "/"
            {
                return Err((
                    "url",
                    format!(
                        "{:?} is not a file:/// URL of an absolute directory (other than /)",
                        b.url
                    ),
                ));
            }
            if b.endpoint.is_some() || b.region.is_some() {
                return Err((
                    "endpoint",
                    "a file:// bucket takes no endpoint or region".into(),
                ));
            }
        }
        other => {
            return Err((
                "url",
                format!("scheme {other:?} is not supported; use s3://, gs://, az:// or file:///"),
            ));
        }
    }
    if let Some(ep) = &b.endpoint {
        let e =
            url::Url::parse(ep).map_err(|e| ("endpoint", format!("{ep:?} is not a URL ({e})")))?;
        match e.scheme() {
            "https" => {}
            "http" if b.allow_http => {}
            "http" => {
                return Err((
                    "endpoint",
                    format!("{ep:?} is plain HTTP; use https or set allow_http = true"),
                ));
            }
            s => return Err(("endpoint", format!("scheme {s:?} is not http(s)"))),
        }
    }
    if let Some(r) = &b.region
        && (r.is_empty() || r.contains(char::is_whitespace))
    {
        return Err(("region", format!("{r:?} is not a region name")));
    }
    Ok(())
}

/// Parses a duration written as a number and a unit: `500ms`, `30s`, `15m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let bad =
        || format!("{s:?} is not a duration; write it like \"30s\", \"15m\", \"2h\" or \"7d\"");
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(format!("{s:?} is zero; give a positive duration"));
    }
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/ferry/config.toml"))
    }

    #[test]
    fn defaults_fill_what_a_spec_leaves_out() {
        let c = parse(
            "default_health_deadline = \"15m\"\n[hooks]\ntimeout = \"5m\"\non_failure = \"continue\"\n",
        )
        .unwrap();
        let mut spec = serde_json::json!({
            "name": "c", "sourceContext": "a", "destinationContext": "b",
            "namespaces": [{"source": "x", "destination": "y"}],
            "hooks": [{"name": "q", "stage": "pre", "command": ["sync"]},
                      {"name": "r", "stage": "pre", "command": ["sync"], "timeoutSeconds": 9}]});
        c.fill_spec_defaults(&mut spec);
        let spec: ferry_steps::spec::CloneSpec = serde_json::from_value(spec).unwrap();
        assert_eq!(spec.health_deadline_seconds, 900);
        assert_eq!(spec.hooks[0].timeout_seconds, 300);
        assert_eq!(
            spec.hooks[0].on_error(),
            ferry_steps::spec::OnError::Continue
        );
        assert_eq!(spec.hooks[1].timeout_seconds, 9);
        // A spec's own deadline wins.
        let mut own = serde_json::json!({"healthDeadlineSeconds": 60});
        c.fill_spec_defaults(&mut own);
        assert_eq!(own["healthDeadlineSeconds"], 60);
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../ferry.example.toml");
        let c = parse(text).expect("the example config parses");
        assert_eq!(c.default_bucket.as_deref(), Some("local"));
        assert!(c.buckets.len() >= 2);
        assert!(!c.storage_classes.is_empty());
        assert_eq!(
            c.keys.audit_mac.as_deref(),
            Some(Path::new("/etc/ferry/keys/audit.key"))
        );
        assert!(c.retention_finished().is_some());
    }

    #[test]
    fn example_file_sets_every_key() {
        // Every optional key is set somewhere in the example, so none goes undocumented.
        let c = parse(include_str!("../ferry.example.toml")).unwrap();
        fn no_nulls(v: &serde_json::Value, at: &str) {
            match v {
                serde_json::Value::Null => panic!("{at} is not set in ferry.example.toml"),
                serde_json::Value::Object(m) => m
                    .iter()
                    .for_each(|(k, v)| no_nulls(v, &format!("{at}.{k}"))),
                serde_json::Value::Array(a) => a.iter().for_each(|v| no_nulls(v, at)),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(&c).unwrap();
        // A file:// bucket takes no endpoint: buckets are checked as a whole below.
        let buckets = v.as_object_mut().unwrap().remove("buckets").unwrap();
        no_nulls(&v, "config");
        let first_class = &v["storage_classes"][0];
        for key in [
            "provisioner",
            "parameters",
            "access_modes",
            "snapshots",
            "clonable",
        ] {
            assert!(first_class.get(key).is_some_and(|v| !v.is_null()), "{key}");
        }
        assert!(
            buckets
                .as_object()
                .unwrap()
                .values()
                .any(|b| b["endpoint"].is_string() && b["region"].is_string())
        );
    }

    #[test]
    fn mover_resources_are_checked_and_reach_preflight() {
        let c = parse(
            "mover_resources = { requests = { cpu = \"50m\", memory = \"64Mi\" }, limits = { cpu = \"500m\", memory = \"256Mi\" } }\n",
        )
        .unwrap();
        let r = c.mover_resources.clone().unwrap();
        assert_eq!(r.limits["memory"], "256Mi");
        let preflight = crate::workflow::preflight_config(&c).unwrap();
        assert_eq!(preflight.mover_resources, r);
        let default = crate::workflow::preflight_config(&parse("").unwrap()).unwrap();
        assert_eq!(
            default.mover_resources,
            ferry_steps::preflight::MoverResources::default()
        );
        for (text, field) in [
            (
                "mover_resources = { limits = { memory = \"lots\" } }\n",
                "mover_resources.limits.memory",
            ),
            (
                "mover_resources = { requests = { cpu = \"2\" }, limits = { cpu = \"1\" } }\n",
                "mover_resources.requests.cpu",
            ),
            ("mover_resources = { request = {} }\n", "request"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn empty_file_is_a_valid_config() {
        parse("").unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("bogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[buckets.a]\nurl = \"s3://x\"\nflavour = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("flavour"), "{e}");
        let e = parse("[limits]\nglobal = 3\n").unwrap_err().to_string();
        assert!(e.contains("global"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[buckets.a]\nurl = \"ftp://x/y\"\n", "buckets.a.url"),
            ("[buckets.a]\nurl = \"s3://\"\n", "buckets.a.url"),
            ("[buckets.a]\nurl = \"file://relative\"\n", "buckets.a.url"),
            (
                "[buckets.a]\nurl = \"s3://b\"\nendpoint = \"http://minio:9000\"\n",
                "buckets.a.endpoint",
            ),
            (
                "default_bucket = \"nope\"\n[buckets.a]\nurl = \"s3://b\"\n",
                "default_bucket",
            ),
            (
                "[buckets.a]\nurl = \"s3://b\"\n[buckets.b]\nurl = \"gs://c\"\n",
                "default_bucket",
            ),
            ("[limits]\nglobal_steps = 0\n", "limits.global_steps"),
            (
                "[limits]\nglobal_steps = 2\nper_run_steps = 3\n",
                "limits.per_run_steps",
            ),
            (
                "default_health_deadline = \"soon\"\n",
                "default_health_deadline",
            ),
            ("[hooks]\non_failure = \"explode\"\n", "hooks.on_failure"),
            ("[retention]\nfinished = \"0d\"\n", "retention.finished"),
            (
                "[[storage_classes]]\nprovisioner = \"x\"\naccess_modes = [\"RWO\"]\n",
                "storage_classes[0].access_modes",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
    }

    #[test]
    fn one_bucket_is_the_default_and_paths_are_relative_to_the_file() {
        let c = parse("tokens_file = \"tokens.toml\"\n[buckets.only]\nurl = \"file:///data\"\n")
            .unwrap();
        assert_eq!(c.default_bucket.as_deref(), Some("only"));
        assert_eq!(
            c.tokens_file.as_deref(),
            Some(Path::new("/etc/ferry/tokens.toml"))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999d").is_err());
    }
}

//! The clone workflow as the daemon runs it: kubeconfig contexts, and the
//! config's storage capabilities, non-clonable drivers and buckets turned
//! into preflight settings.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_steps::capabilities::{Capability, CapabilityRule, CapabilityTable, DriverMatch};
use ferry_steps::cluster::Clusters;
use ferry_steps::preflight::PreflightConfig;
use ferry_steps::workflow::{CloneEnv, CloneWorkflow};

use crate::config::Config;

/// Kubeconfig files as kubectl finds them: `--kubeconfig` flags, else
/// `KUBECONFIG` (a `:`-separated list), else `~/.kube/config` if present.
pub fn kubeconfig_paths(flags: &[PathBuf]) -> Vec<PathBuf> {
    if !flags.is_empty() {
        return flags.to_vec();
    }
    if let Some(list) = std::env::var_os("KUBECONFIG") {
        let paths: Vec<PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !paths.is_empty() {
            return paths;
        }
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".kube").join("config"))
        .filter(|p| p.exists())
        .into_iter()
        .collect()
}

/// A driver match from the config's form `PROVISIONER[,KEY=VALUE…]`, e.g.
/// `csi.trident.netapp.io,backendType=ontap-nas-economy`.
fn driver_match(s: &str) -> anyhow::Result<DriverMatch> {
    let mut parts = s.split(',');
    let provisioner = parts.next().unwrap_or_default().trim();
    if provisioner.is_empty() {
        bail!("non_clonable_drivers: {s:?} names no provisioner; write PROVISIONER[,KEY=VALUE...]");
    }
    let mut m = DriverMatch::provisioner(provisioner);
    for kv in parts {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("non_clonable_drivers: {kv:?} in {s:?} is not KEY=VALUE"))?;
        m.parameters
            .insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(m)
}

/// Preflight settings from the config.
pub fn preflight_config(config: &Config) -> anyhow::Result<PreflightConfig> {
    let builtin = CapabilityTable::builtin();
    let mut rules = Vec::new();
    for (i, o) in config.storage_classes.iter().enumerate() {
        let driver = DriverMatch {
            provisioner: o.provisioner.clone(),
            parameters: o.parameters.clone(),
        };
        // Start from what ferry knows of the driver; the config overrides it.
        let mut capability: Capability = builtin
            .lookup(&o.provisioner, &o.parameters)
            .cloned()
            .unwrap_or(Capability {
                filesystem: Default::default(),
                block: Default::default(),
                snapshot: false,
                clone: false,
            });
        if let Some(modes) = &o.access_modes {
            capability.filesystem = modes
                .iter()
                .map(|m| {
                    ferry_steps::capabilities::AccessMode::parse(m)
                        .with_context(|| format!("storage_classes[{i}].access_modes: {m:?} is not an access mode (ReadWriteOnce, ReadOnlyMany, ReadWriteMany, ReadWriteOncePod)"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(s) = o.snapshots {
            capability.snapshot = s;
        }
        if let Some(c) = o.clonable {
            capability.clone = c;
        }
        rules.push(CapabilityRule { driver, capability });
    }
    let non_clonable = if config.non_clonable_drivers.is_empty() {
        None
    } else {
        Some(
            config
                .non_clonable_drivers
                .iter()
                .map(|s| driver_match(s))
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    let mut preflight = PreflightConfig::from_settings(
        rules,
        non_clonable,
        config.buckets.keys().cloned().collect(),
        config.default_bucket.clone(),
        // The data mover is built; a volume that needs it without a bucket
        // is refused by the bucket rule, naming the fix.
        true,
    )
    .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    if let Some(r) = &config.mover_resources {
        preflight.mover_resources = r.clone();
    }
    Ok(preflight)
}

/// The clone workflow over the kubeconfig files and the config.
pub fn clone_workflow(config: &Config, kubeconfigs: &[PathBuf]) -> anyhow::Result<CloneWorkflow> {
    let clusters = Clusters::from_paths(kubeconfigs).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut buckets = std::collections::BTreeMap::new();
    for (name, b) in &config.buckets {
        buckets.insert(name.clone(), open_bucket(name, b)?);
    }
    Ok(CloneWorkflow::new(CloneEnv {
        clusters,
        preflight: preflight_config(config)?,
        health_poll: Duration::from_secs(1),
        buckets,
        mover_image: config
            .mover_image
            .clone()
            .unwrap_or_else(|| ferry_steps::workflow::DEFAULT_MOVER_IMAGE.into()),
        mover: {
            let mut mover = ferry_steps::workflow::MoverSettings::with_transfer_limit(
                config
                    .limits
                    .mover_transfers
                    .unwrap_or(ferry_steps::workflow::DEFAULT_TRANSFER_LIMIT),
            );
            mover.download.read_back = config.mover_read_back.unwrap_or(false);
            if let Some(t) = &config.mover_pod_start_timeout {
                // Checked when the config was read.
                mover.pod_start_timeout = crate::config::parse_duration(t)
                    .map_err(|e| anyhow::anyhow!("config: mover_pod_start_timeout: {e}"))?;
            }
            mover
        },
    }))
}

/// The prefix under which this installation keeps chunks and manifests in
/// every bucket (`<prefix>/chunks/…`, `<prefix>/manifests/…`).
pub const BUCKET_PREFIX: &str = "ferry";

/// Opens the configured bucket `name`.
pub fn open_bucket(name: &str, b: &crate::config::Bucket) -> anyhow::Result<ferry_mover::Bucket> {
    let mut store_options = Vec::new();
    if let Some(e) = &b.endpoint {
        store_options.push(("aws_endpoint".to_owned(), e.clone()));
    }
    if let Some(r) = &b.region {
        store_options.push(("aws_region".to_owned(), r.clone()));
    }
    if b.allow_http {
        store_options.push(("aws_allow_http".to_owned(), "true".to_owned()));
    }
    let options = ferry_mover::BucketOptions {
        prefix: BUCKET_PREFIX.to_owned(),
        store_options,
        ..Default::default()
    };
    ferry_mover::Bucket::open(&b.url, &options).map_err(|e| anyhow::anyhow!("bucket {name}: {e}"))
}

//! What a storage class can do: access modes, snapshots, clones.
//!
//! A CSIDriver does not advertise snapshot or clone support, so ferry keeps
//! a table keyed by provisioner and StorageClass parameters (the facts of
//! clone-semantics §1.2). Config rules come first and so override it; at
//! equal footing the rule naming more parameters wins.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::object::{str_at, string_map};

/// A PVC access mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AccessMode {
    /// RWO.
    ReadWriteOnce,
    /// ROX.
    ReadOnlyMany,
    /// RWX.
    ReadWriteMany,
    /// RWOP.
    ReadWriteOncePod,
}

impl AccessMode {
    /// Parses the API spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ReadWriteOnce" => Self::ReadWriteOnce,
            "ReadOnlyMany" => Self::ReadOnlyMany,
            "ReadWriteMany" => Self::ReadWriteMany,
            "ReadWriteOncePod" => Self::ReadWriteOncePod,
            _ => return None,
        })
    }

    /// The short form (RWO, ROX, RWX, RWOP).
    pub fn short(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "RWO",
            Self::ReadOnlyMany => "ROX",
            Self::ReadWriteMany => "RWX",
            Self::ReadWriteOncePod => "RWOP",
        }
    }

    /// Whether several nodes may mount it (RWX, ROX).
    pub fn is_multi_node(self) -> bool {
        matches!(self, Self::ReadWriteMany | Self::ReadOnlyMany)
    }
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// A PVC volume mode.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum VolumeMode {
    /// A file system (the default).
    #[default]
    Filesystem,
    /// A raw block device.
    Block,
}

/// What a storage class offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capability {
    /// Access modes offered for `volumeMode: Filesystem`.
    pub filesystem: BTreeSet<AccessMode>,
    /// Access modes offered for `volumeMode: Block`.
    #[serde(default)]
    pub block: BTreeSet<AccessMode>,
    /// CSI VolumeSnapshot create and restore to a new PVC.
    pub snapshot: bool,
    /// PVC→PVC clone (dataSource PersistentVolumeClaim).
    #[serde(default)]
    pub clone: bool,
}

impl Capability {
    /// Whether `mode` is offered for `volume_mode`.
    pub fn offers(&self, mode: AccessMode, volume_mode: VolumeMode) -> bool {
        match volume_mode {
            VolumeMode::Filesystem => self.filesystem.contains(&mode),
            VolumeMode::Block => self.block.contains(&mode),
        }
    }
}

/// A provisioner, and StorageClass parameters whose values must each match
/// an anchored regular expression.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverMatch {
    /// `StorageClass.provisioner`.
    pub provisioner: String,
    /// Parameter name → anchored regular expression its value must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
}

impl DriverMatch {
    /// A match on the provisioner alone.
    pub fn provisioner(p: &str) -> Self {
        Self {
            provisioner: p.to_owned(),
            parameters: BTreeMap::new(),
        }
    }

    /// Adds a parameter rule.
    pub fn param(mut self, key: &str, value_regex: &str) -> Self {
        self.parameters
            .insert(key.to_owned(), value_regex.to_owned());
        self
    }

    /// Checks the parameter expressions compile.
    ///
    /// # Errors
    /// [`Error::Regex`].
    pub fn validate(&self) -> Result<()> {
        for (k, re) in &self.parameters {
            Regex::new(&format!("^(?:{re})$")).map_err(|source| Error::Regex {
                field: format!("{}.parameters.{k}", self.provisioner),
                source,
            })?;
        }
        Ok(())
    }

    /// Whether a class with this provisioner and these parameters matches.
    pub fn matches(&self, provisioner: &str, parameters: &BTreeMap<String, String>) -> bool {
        self.provisioner == provisioner
            && self.parameters.iter().all(|(k, re)| {
                parameters.get(k).is_some_and(|v| {
                    Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(v))
                })
            })
    }

    /// Whether `class` (a StorageClass object) matches.
    pub fn matches_class(&self, class: &Value) -> bool {
        self.matches(
            str_at(class, "/provisioner").unwrap_or(""),
            &string_map(class.get("parameters")),
        )
    }
}

impl fmt::Display for DriverMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.provisioner)?;
        for (k, v) in &self.parameters {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityRule {
    /// Which classes it describes.
    #[serde(flatten)]
    pub driver: DriverMatch,
    /// What they offer.
    pub capability: Capability,
}

/// Capabilities by provisioner and parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityTable {
    overrides: Vec<CapabilityRule>,
    builtin: Vec<CapabilityRule>,
}

impl Default for CapabilityTable {
    fn default() -> Self {
        Self::builtin()
    }
}

use AccessMode::{
    ReadOnlyMany as ROX, ReadWriteMany as RWX, ReadWriteOnce as RWO, ReadWriteOncePod as RWOP,
};

fn rule(
    driver: DriverMatch,
    fs: &[AccessMode],
    block: &[AccessMode],
    snapshot: bool,
    clone: bool,
) -> CapabilityRule {
    CapabilityRule {
        driver,
        capability: Capability {
            filesystem: fs.iter().copied().collect(),
            block: block.iter().copied().collect(),
            snapshot,
            clone,
        },
    }
}

fn p(name: &str) -> DriverMatch {
    DriverMatch::provisioner(name)
}

const TRIDENT: &str = "csi.trident.netapp.io";

impl CapabilityTable {
    /// The built-in table (clone-semantics §1.2). RWOP is listed wherever a
    /// CSI driver offers RWO (§1.1). Where the reference says "unconfirmed",
    /// the capability is left out, so ferry takes the safer path.
    pub fn builtin() -> Self {
        let ebs = |d| rule(d, &[RWO, RWOP], &[RWO, RWOP], true, true);
        let disk = |d| rule(d, &[RWO, RWOP], &[RWO, RWOP], true, true);
        let builtin = vec![
            ebs(p("ebs.csi.aws.com")),
            rule(
                p("ebs.csi.aws.com").param("type", "io2"),
                &[RWO, RWOP],
                &[RWO, RWOP, RWX],
                true,
                true,
            ),
            rule(p("efs.csi.aws.com"), &[RWO, RWX], &[], false, false),
            rule(p("fsx.csi.aws.com"), &[RWO, RWX], &[], false, false),
            rule(p("fsx.openzfs.csi.aws.com"), &[RWO, RWX], &[], false, false),
            rule(
                p("fsx.openzfs.csi.aws.com").param("ResourceType", "volume"),
                &[RWO, RWX],
                &[],
                true,
                false,
            ),
            disk(p("disk.csi.azure.com")),
            rule(
                p("disk.csi.azure.com").param("maxShares", "[2-9]|[1-9][0-9]+"),
                &[RWO, RWOP],
                &[RWO, RWOP, ROX, RWX],
                true,
                true,
            ),
            rule(
                p("file.csi.azure.com"),
                &[RWO, RWOP, ROX, RWX],
                &[],
                true,
                true,
            ),
            rule(
                p("pd.csi.storage.gke.io"),
                &[RWO, RWOP, ROX],
                &[RWO, RWOP, ROX, RWX],
                true,
                true,
            ),
            rule(
                p("filestore.csi.storage.gke.io"),
                &[RWO, ROX, RWX],
                &[],
                true,
                false,
            ),
            rule(
                p(TRIDENT).param("backendType", "ontap-nas"),
                &[RWO, ROX, RWX, RWOP],
                &[],
                true,
                true,
            ),
            rule(
                p(TRIDENT).param("backendType", "ontap-nas-economy"),
                &[RWO, ROX, RWX, RWOP],
                &[],
                false,
                false,
            ),
            rule(
                p(TRIDENT).param("backendType", "ontap-nas-flexgroup"),
                &[RWO, ROX, RWX, RWOP],
                &[],
                true,
                false,
            ),
            rule(
                p(TRIDENT).param("backendType", "ontap-san"),
                &[RWO, RWOP],
                &[RWO, ROX, RWX, RWOP],
                true,
                true,
            ),
            rule(
                p(TRIDENT).param("backendType", "ontap-san-economy"),
                &[RWO, RWOP],
                &[RWO, ROX, RWX, RWOP],
                true,
                false,
            ),
            rule(
                p("rbd.csi.ceph.com"),
                &[RWO, RWOP],
                &[RWO, RWX, RWOP],
                true,
                true,
            ),
            rule(
                p("cephfs.csi.ceph.com"),
                &[RWO, RWX, ROX, RWOP],
                &[],
                true,
                true,
            ),
            rule(
                p("driver.longhorn.io"),
                &[RWO, RWOP, RWX],
                &[RWO, RWOP],
                true,
                true,
            ),
            rule(p("nfs.csi.k8s.io"), &[RWO, ROX, RWX, RWOP], &[], true, true),
            rule(p("rancher.io/local-path"), &[RWO, RWOP], &[], false, false),
            rule(
                p("hostpath.csi.k8s.io"),
                &[RWO, RWOP],
                &[RWO, RWOP],
                true,
                true,
            ),
            rule(
                p("local.csi.openebs.io"),
                &[RWO, RWOP],
                &[RWO, RWOP],
                false,
                false,
            ),
            rule(
                p("zfs.csi.openebs.io"),
                &[RWO, RWOP],
                &[RWO, RWOP],
                true,
                true,
            ),
            rule(p("openebs.io/local"), &[RWO], &[], false, false),
            rule(
                p("io.openebs.csi-mayastor"),
                &[RWO, RWOP],
                &[],
                false,
                false,
            ),
            rule(
                p("io.openebs.csi-mayastor").param("thin", "true"),
                &[RWO, RWOP],
                &[],
                true,
                false,
            ),
            rule(p("cstor.csi.openebs.io"), &[RWO, RWOP], &[], true, true),
            rule(p("jiva.csi.openebs.io"), &[RWO, RWOP], &[], false, false),
            rule(
                p("csi.vsphere.vmware.com"),
                &[RWO, RWOP, RWX],
                &[RWO, RWOP],
                true,
                false,
            ),
            rule(
                p("pxd.portworx.com"),
                &[RWO, RWOP, ROX, RWX],
                &[RWO, RWOP, ROX, RWX],
                true,
                true,
            ),
            // In-tree provisioners: the modes of their CSI successors; CSI
            // snapshots of migrated volumes are unconfirmed (§1.3), so none.
            rule(
                p("kubernetes.io/aws-ebs"),
                &[RWO, RWOP],
                &[RWO, RWOP],
                false,
                false,
            ),
            rule(
                p("kubernetes.io/gce-pd"),
                &[RWO, RWOP, ROX],
                &[RWO, RWOP, ROX],
                false,
                false,
            ),
            rule(
                p("kubernetes.io/azure-disk"),
                &[RWO, RWOP],
                &[RWO, RWOP],
                false,
                false,
            ),
            rule(
                p("kubernetes.io/azure-file"),
                &[RWO, RWOP, ROX, RWX],
                &[],
                false,
                false,
            ),
            rule(
                p("kubernetes.io/portworx-volume"),
                &[RWO, RWOP, ROX, RWX],
                &[RWO, RWOP, ROX, RWX],
                false,
                false,
            ),
        ];
        Self {
            overrides: Vec::new(),
            builtin,
        }
    }

    /// The built-in table with config rules in front of it.
    ///
    /// # Errors
    /// [`Error::Regex`] when a parameter expression does not compile.
    pub fn with_overrides(overrides: Vec<CapabilityRule>) -> Result<Self> {
        for r in &overrides {
            r.driver.validate()?;
        }
        Ok(Self {
            overrides,
            ..Self::builtin()
        })
    }

    /// The capability of a provisioner with these parameters: the matching
    /// override naming the most parameters, else the matching built-in rule
    /// naming the most parameters.
    pub fn lookup(
        &self,
        provisioner: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Option<&Capability> {
        let best = |rules: &'_ [CapabilityRule]| -> Option<usize> {
            rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.driver.matches(provisioner, parameters))
                .max_by_key(|(i, r)| (r.driver.parameters.len(), std::cmp::Reverse(*i)))
                .map(|(i, _)| i)
        };
        best(&self.overrides)
            .map(|i| &self.overrides[i].capability)
            .or_else(|| best(&self.builtin).map(|i| &self.builtin[i].capability))
    }

    /// The capability of a StorageClass object.
    pub fn for_class(&self, class: &Value) -> Option<&Capability> {
        self.lookup(
            str_at(class, "/provisioner").unwrap_or(""),
            &string_map(class.get("parameters")),
        )
    }
}

/// The drivers that cannot be cloned by default: ontap-nas-economy (a qtree
/// in a shared FlexVol has no snapshot of its own).
pub fn default_non_clonable() -> Vec<DriverMatch> {
    vec![p(TRIDENT).param("backendType", "ontap-nas-economy")]
}

/// A driver's identity for "same driver" checks: the provisioner plus, for
/// Trident, the backend type.
pub fn driver_identity(class: &Value) -> String {
    let prov = str_at(class, "/provisioner").unwrap_or("");
    match str_at(class, "/parameters/backendType") {
        Some(bt) if prov == TRIDENT => format!("{prov}/{bt}"),
        _ => prov.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn parameters_change_the_answer() {
        let t = CapabilityTable::builtin();
        let ebs = t
            .lookup("ebs.csi.aws.com", &params(&[("type", "gp3")]))
            .unwrap();
        assert!(!ebs.offers(RWX, VolumeMode::Block));
        let io2 = t
            .lookup("ebs.csi.aws.com", &params(&[("type", "io2")]))
            .unwrap();
        assert!(io2.offers(RWX, VolumeMode::Block));
        assert!(!io2.offers(RWX, VolumeMode::Filesystem));
        let eco = t
            .lookup(TRIDENT, &params(&[("backendType", "ontap-nas-economy")]))
            .unwrap();
        assert!(!eco.snapshot && eco.offers(RWX, VolumeMode::Filesystem));
        assert!(t.lookup(TRIDENT, &params(&[])).is_none());
        assert!(
            t.lookup("disk.csi.azure.com", &params(&[("maxShares", "3")]))
                .unwrap()
                .offers(RWX, VolumeMode::Block)
        );
        assert!(
            !t.lookup("disk.csi.azure.com", &params(&[("maxShares", "1")]))
                .unwrap()
                .offers(RWX, VolumeMode::Block)
        );
    }

    #[test]
    fn overrides_win() {
        let t = CapabilityTable::with_overrides(vec![rule(
            p("efs.csi.aws.com"),
            &[RWX],
            &[],
            true,
            false,
        )])
        .unwrap();
        assert!(t.lookup("efs.csi.aws.com", &params(&[])).unwrap().snapshot);
        assert!(
            CapabilityTable::with_overrides(vec![rule(
                p("x").param("a", "("),
                &[RWX],
                &[],
                true,
                false
            )])
            .is_err()
        );
    }
}

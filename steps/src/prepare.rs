//! The pure half of preflight in one call: inventory, rules, plan.

use serde_json::Value;

use crate::error::Result;
use crate::inventory::Inventory;
use crate::plan::{Plan, build_plan};
use crate::preflight::{DestinationFacts, PreflightConfig, PreflightReport, preflight};
use crate::spec::CloneSpec;

/// What preflight decides, before anything is written.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The app's source objects.
    pub inventory: Inventory,
    /// Refusals, warnings, copy paths.
    pub report: PreflightReport,
    /// The plan (complete even when refused, for the dry-run).
    pub plan: Plan,
}

/// Validates the spec, builds the inventory from everything listed on the
/// source, checks every rule against the destination and builds the plan.
///
/// # Errors
/// [`crate::Error::InvalidSpec`] and the inventory's errors. Refusals are
/// not errors: they are in `report`.
pub fn prepare(
    spec: &CloneSpec,
    source_objects: impl IntoIterator<Item = Value>,
    destination: &DestinationFacts,
    config: &PreflightConfig,
) -> Result<Prepared> {
    spec.validate()?;
    let inventory = Inventory::build(spec, source_objects)?;
    let report = preflight(spec, &inventory, destination, config);
    let plan = build_plan(spec, &inventory, &report);
    Ok(Prepared {
        inventory,
        report,
        plan,
    })
}

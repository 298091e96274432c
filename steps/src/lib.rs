//! ferry-steps: the clone workflow — from a [`CloneSpec`] to a plan, and
//! (later) the steps that carry it out on clusters.
//!
//! This part is pure: functions over lists of Kubernetes objects held as
//! plain `serde_json::Value`s (ferry handles arbitrary kinds, custom
//! resources included), with no cluster, clock or randomness.
//!
//! The entry types, in the order a clone meets them:
//! - [`CloneSpec`]: what the user asks for; [`CloneSpec::validate`] reports
//!   every problem with its field path.
//! - [`Inventory`]: the app's source objects, built from everything listed
//!   on the source ([`Inventory::build`]), with what was left out and why.
//! - [`preflight()`](preflight::preflight): every rule of DESIGN §2 against
//!   the [`DestinationFacts`], each volume's [`CopyPath`], all refusals and
//!   warnings at once, in a [`PreflightReport`].
//! - [`Plan`]: the step DAG with stable ids and the apply order
//!   ([`build_plan`](plan::build_plan)); [`prepare()`](prepare::prepare)
//!   does the three in one call.
//! - [`transform_object`](transform::transform_object): one source object
//!   to its destination form, with a [`TransformContext`].
//! - [`DryRun`](dryrun::DryRun): the plan for people and for JSON; Secret
//!   data never appears ([`redact`](dryrun::redact)).
//!
//! # Layout
//! - `spec.rs`: the spec, its validation, the CLI mapping parsers.
//! - `selector.rs`: label selectors. `object.rs`: the thin view of objects.
//! - `inventory.rs`: filtering, skipping what the cluster makes, selecting
//!   cluster-scoped dependencies.
//! - `transform.rs`: per-object transforms; `dns.rs` the service-DNS
//!   rewrite; `patch.rs` JSON Patch for user transforms.
//! - `capabilities.rs`: storage capabilities by provisioner and parameters.
//! - `preflight.rs`: rules, warnings, copy paths.
//! - `plan.rs`: the DAG and the apply order; `names.rs` the names of
//!   objects ferry makes.
//! - `dryrun.rs`: text and JSON rendering, redaction.
//! - `volume_objects.rs`: the snapshot, content and PVC objects of an
//!   in-place volume clone (clone-semantics §6.1).
//! - `prepare.rs`: inventory + preflight + plan in one call.
//! - `error.rs`: the crate's error type.

pub mod capabilities;
pub mod dns;
pub mod dryrun;
pub mod error;
pub mod inventory;
pub mod names;
pub mod object;
pub mod patch;
pub mod plan;
pub mod preflight;
pub mod prepare;
pub mod quantity;
pub mod selector;
pub mod spec;
pub mod transform;
pub mod volume_objects;

pub use error::{Error, Result};
pub use inventory::Inventory;
pub use names::ferry_name;
pub use plan::Plan;
pub use preflight::{CopyPath, DestinationFacts, PreflightConfig, PreflightReport};
pub use spec::CloneSpec;
pub use transform::TransformContext;
pub mod cluster;
pub mod workflow;

//! Weft's control plane without I/O: the pure logic that decides what a
//! request means and what may run where. Today that is function resolution
//! against a catalog (`catalog`), the cluster-wide catalog replicated between
//! nodes (`cluster_catalog`), the multi-command request planner (`plan`) and
//! readiness scheduling (`schedule`); membership, policy and routes belong
//! here too as they arrive.
//!
//! Everything here is plain data in, decisions out: no sockets, no tokio, no
//! wasmtime, no clock. The node drives these types and performs the I/O, which
//! keeps the hard parts deterministic and testable in one process.

pub mod catalog;
pub mod cluster_catalog;
pub mod plan;
pub mod policy;
pub mod schedule;

#[cfg(test)]
mod testing;

pub use catalog::{CatalogEntry, Resolved, resolve};
pub use cluster_catalog::{
    Applied, CatalogConfig, CatalogDelta, CatalogError, CatalogSnapshot, ClusterCatalog, Millis, NodeAdvert, Refresh,
    Stamp,
};
pub use plan::{Plan, Step, StepIdx, Template};
pub use policy::{Policy, Rule, Verdict};
pub use schedule::Scheduler;

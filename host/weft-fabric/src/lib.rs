//! Weft's control plane without I/O: the pure logic that decides what a
//! request means and what may run where: function resolution against a
//! catalog (`catalog`), the cluster-wide catalog replicated between nodes
//! (`cluster_catalog`), the multi-command request planner (`plan`),
//! readiness scheduling (`schedule`), the federation policy (`policy`),
//! the path-vector route table (`routes`) and what went out of reach with a
//! node (`lost`). Membership is foca's (in the node).
//!
//! Everything here is plain data in, decisions out: no sockets, no tokio, no
//! wasmtime, no clock. The node drives these types and performs the I/O, which
//! keeps the hard parts deterministic and testable in one process.

pub mod catalog;
pub mod cluster_catalog;
pub mod lost;
pub mod plan;
pub mod policy;
pub mod routes;
pub mod schedule;

#[cfg(test)]
mod testing;

pub use catalog::{Asker, Audience, CatalogEntry, Resolved, resolve};
pub use cluster_catalog::{
    Applied, CatalogConfig, CatalogDelta, CatalogError, CatalogSnapshot, ClusterCatalog, Millis, NodeAdvert, Refresh,
    Stamp,
};
pub use lost::{Gone, Loss, Lost, Reach, Ways};
pub use plan::{Plan, Step, StepIdx, Template};
pub use policy::{Policy, Rule, Verdict};
pub use routes::{Announcement, Explanation, NeighbourRules, Route, RouteConfig, RouteError, RouteTable};
pub use schedule::Scheduler;

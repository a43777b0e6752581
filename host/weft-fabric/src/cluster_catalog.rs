//! The cluster-wide catalog as replicated state: every node's advertised
//! entries, versioned so that deltas may arrive late, twice or in any order and
//! every node still ends with the same catalog.
//!
//! Owns the per-node adverts and tombstones, the merge rule, refresh and
//! expiry, the bounds on what peers can make it hold, and the digests of
//! anti-entropy. It must not know how deltas travel (links, fan-out, retries),
//! who is alive (membership says so through `refresh` and `withdraw`), which
//! clusters may be imported (policy filters before `apply`) or how a call picks
//! an entry (`catalog::resolve` reads `entries()`). Time is a value passed in.
//!
//! Merge rule: per node, the state with the highest [`Stamp`] wins; stamps
//! order by incarnation, then version, then a withdrawal above the advert it
//! withdraws. A maximum over a total order is idempotent, commutative and
//! associative, which is the whole convergence argument. The one exception is
//! bounded memory: a tombstone forgotten after `tombstone_ttl` (or evicted by
//! the cap) can no longer stop a late older advert, which then lives until
//! expiry withdraws it again for want of refreshes.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_proto::{ClusterId, FunctionId, NodeId};

use crate::catalog::CatalogEntry;

/// Milliseconds since an origin the driver chooses (its start, say); only
/// differences between two values mean anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    pub fn saturating_since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn saturating_add(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}

/// The rank of what is known about one node. Field order is the order:
/// a new process (incarnation) beats anything of an older one, a newer version
/// beats an older one, and a withdrawal beats the advert of the same version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub incarnation: u64,
    pub version: u64,
    pub withdrawn: bool,
}

/// The full entry set one node advertises at one `(incarnation, version)`.
/// A stamp names exactly one entry set: the origin never reuses a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeAdvert {
    pub node: NodeId,
    pub cluster: ClusterId,
    /// Chosen by the node at start; must grow across restarts (a persisted
    /// counter or the start time in milliseconds).
    pub incarnation: u64,
    /// Grows with every change of the entry set within one incarnation.
    pub version: u64,
    pub entries: Vec<CatalogEntry>,
}

impl NodeAdvert {
    pub fn stamp(&self) -> Stamp {
        Stamp { incarnation: self.incarnation, version: self.version, withdrawn: false }
    }
}

/// What nodes ship to each other. Whole entry sets rather than per-entry
/// changes: a delta then never depends on an earlier one having arrived.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CatalogDelta {
    Advert(NodeAdvert),
    /// The node left, or was declared dead or expired, at this stamp.
    Withdraw {
        node: NodeId,
        incarnation: u64,
        version: u64,
    },
}

impl CatalogDelta {
    pub fn node(&self) -> &NodeId {
        match self {
            CatalogDelta::Advert(a) => &a.node,
            CatalogDelta::Withdraw { node, .. } => node,
        }
    }

    pub fn stamp(&self) -> Stamp {
        match self {
            CatalogDelta::Advert(a) => a.stamp(),
            CatalogDelta::Withdraw { incarnation, version, .. } => {
                Stamp { incarnation: *incarnation, version: *version, withdrawn: true }
            }
        }
    }
}

/// Everything one catalog knows (adverts and tombstones), for a joining node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogSnapshot {
    pub deltas: Vec<CatalogDelta>,
}

impl CatalogSnapshot {
    /// The snapshot in parts of at most about `max_bytes` of JSON each, in
    /// order (a delta bigger than that is a part alone), so that a large
    /// cluster's catalog never needs one frame bigger than a link takes.
    /// Applying the parts one after another is applying the whole.
    pub fn split(self, max_bytes: usize) -> Vec<CatalogSnapshot> {
        let mut parts = vec![CatalogSnapshot::default()];
        let mut size = 0;
        for delta in self.deltas {
            let len = serde_json::to_vec(&delta).map_or(0, |v| v.len()) + 1;
            let last = parts.last_mut().expect("never empty");
            if size + len > max_bytes && !last.deltas.is_empty() {
                parts.push(CatalogSnapshot::default());
                size = 0;
            }
            size += len;
            parts.last_mut().expect("never empty").deltas.push(delta);
        }
        parts
    }
}

/// What `apply` did with a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Accepted,
    /// Already known at exactly this stamp.
    Duplicate,
    /// Older than what is known; ignored.
    Stale,
    /// The delta withdrew (or outranked) the local node while it is alive.
    /// The local version now outranks it: gossip `local_advert()`.
    Refuted,
}

/// What `refresh` learnt from a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The advert is known and stays alive.
    Refreshed,
    /// The node is at a stamp this catalog lacks: pull it (send our digest).
    Missing,
    /// About the local node, or older than what is known.
    Ignored,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "node {node} advertises {count} catalog entries, more than the limit of {max}; load fewer plugins on {node} or raise cluster.max_catalog_entries_per_node"
    )]
    TooManyEntries { node: NodeId, count: usize, max: usize },
    #[error(
        "node {node} was not added to the catalog: it already holds the limit of {max} members; raise the members limit or split the cluster"
    )]
    TooManyMembers { node: NodeId, max: usize },
    #[error(
        "node {node} advertises {function} as living on node {entry_node} of cluster {entry_cluster}; a node may advertise only its own entries"
    )]
    ForeignEntry { node: NodeId, function: FunctionId, entry_node: NodeId, entry_cluster: ClusterId },
}

/// Bounds and lifetimes; the defaults are the spec's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogConfig {
    pub max_entries_per_node: usize,
    /// Live members, the local node included.
    pub max_members: usize,
    pub max_tombstones: usize,
    /// A remote advert not refreshed for this long is withdrawn.
    pub advert_ttl: Duration,
    /// How long a withdrawal is remembered to stop late older adverts.
    pub tombstone_ttl: Duration,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            max_entries_per_node: 10_000,
            max_members: 1_024,
            max_tombstones: 1_024,
            advert_ttl: Duration::from_secs(10),
            tombstone_ttl: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug)]
enum NodeState {
    Live { advert: NodeAdvert, last_refresh: Millis },
    Withdrawn { stamp: Stamp, since: Millis },
}

impl NodeState {
    fn stamp(&self) -> Stamp {
        match self {
            NodeState::Live { advert, .. } => advert.stamp(),
            NodeState::Withdrawn { stamp, .. } => *stamp,
        }
    }
}

/// One node's view of its cluster's catalog. The local advert is kept apart
/// from remote state: nothing received can withdraw or replace it.
#[derive(Clone, Debug)]
pub struct ClusterCatalog {
    config: CatalogConfig,
    local: NodeAdvert,
    /// Never holds the local node.
    remote: BTreeMap<NodeId, NodeState>,
}

impl ClusterCatalog {
    /// A catalog holding only the local node, with no entries, at version 0.
    pub fn new(node: NodeId, cluster: ClusterId, incarnation: u64, config: CatalogConfig) -> Self {
        ClusterCatalog {
            config,
            local: NodeAdvert { node, cluster, incarnation, version: 0, entries: Vec::new() },
            remote: BTreeMap::new(),
        }
    }

    pub fn local_node(&self) -> &NodeId {
        &self.local.node
    }

    /// Replaces the local entries. Returns the delta to gossip, or `None` when
    /// the set did not change (order does not count: entries are sorted).
    pub fn set_local(&mut self, mut entries: Vec<CatalogEntry>) -> Result<Option<CatalogDelta>, CatalogError> {
        entries.sort_by(|a, b| (&a.function, &a.version, &a.resources).cmp(&(&b.function, &b.version, &b.resources)));
        let next = NodeAdvert { version: self.local.version.saturating_add(1), entries, ..self.local.clone() };
        self.check(&next)?;
        if next.entries == self.local.entries {
            return Ok(None);
        }
        self.local = next;
        Ok(Some(self.local_advert()))
    }

    /// The local node's current advert, for a new link or after a refutation.
    pub fn local_advert(&self) -> CatalogDelta {
        CatalogDelta::Advert(self.local.clone())
    }

    /// The goodbye of a graceful leave. The catalog is not used afterwards.
    pub fn leave(&self) -> CatalogDelta {
        CatalogDelta::Withdraw {
            node: self.local.node.clone(),
            incarnation: self.local.incarnation,
            version: self.local.version,
        }
    }

    /// Merges one delta. Invalid adverts are rejected whatever their stamp.
    pub fn apply(&mut self, now: Millis, delta: CatalogDelta) -> Result<Applied, CatalogError> {
        if let CatalogDelta::Advert(advert) = &delta {
            self.check(advert)?;
        }
        if *delta.node() == self.local.node {
            return Ok(self.about_local(&delta));
        }
        let stamp = delta.stamp();
        let held = self.remote.get(delta.node());
        match held.map(NodeState::stamp) {
            Some(h) if h == stamp => return Ok(Applied::Duplicate),
            Some(h) if h > stamp => return Ok(Applied::Stale),
            _ => {}
        }
        match delta {
            CatalogDelta::Advert(advert) => {
                let joins = !matches!(held, Some(NodeState::Live { .. }));
                if joins && self.live_members() >= self.config.max_members {
                    return Err(CatalogError::TooManyMembers { node: advert.node, max: self.config.max_members });
                }
                self.remote.insert(advert.node.clone(), NodeState::Live { advert, last_refresh: now });
            }
            CatalogDelta::Withdraw { node, .. } => self.bury(now, node, stamp),
        }
        Ok(Applied::Accepted)
    }

    /// Applies every delta of a snapshot; one outcome per delta, in order.
    pub fn apply_snapshot(&mut self, now: Millis, snapshot: CatalogSnapshot) -> Vec<Result<Applied, CatalogError>> {
        snapshot.deltas.into_iter().map(|d| self.apply(now, d)).collect()
    }

    /// A heartbeat: `node` is alive at this stamp. Only liveness evidence
    /// should call it (the origin's heartbeat, membership), never a relayed
    /// advert, or peers would keep a dead node alive between them.
    pub fn refresh(&mut self, now: Millis, node: &NodeId, incarnation: u64, version: u64) -> Refresh {
        if *node == self.local.node {
            return Refresh::Ignored;
        }
        let heard = Stamp { incarnation, version, withdrawn: false };
        match self.remote.get_mut(node) {
            Some(NodeState::Live { advert, last_refresh }) if advert.incarnation == incarnation => {
                *last_refresh = now;
                if version > advert.version { Refresh::Missing } else { Refresh::Refreshed }
            }
            Some(state) if state.stamp() >= heard => Refresh::Ignored,
            _ => Refresh::Missing,
        }
    }

    /// Withdraws a remote node membership declared dead. Returns the delta to
    /// gossip, or `None` if it was not live here (or is the local node).
    pub fn withdraw(&mut self, now: Millis, node: &NodeId) -> Option<CatalogDelta> {
        let Some(NodeState::Live { advert, .. }) = self.remote.get(node) else {
            return None;
        };
        let stamp = Stamp { withdrawn: true, ..advert.stamp() };
        self.bury(now, node.clone(), stamp);
        Some(CatalogDelta::Withdraw { node: node.clone(), incarnation: stamp.incarnation, version: stamp.version })
    }

    /// Withdraws remote adverts not refreshed within `advert_ttl` and forgets
    /// tombstones older than `tombstone_ttl`. Returns the withdrawn nodes.
    /// The local node never expires.
    pub fn expire(&mut self, now: Millis) -> Vec<NodeId> {
        let (advert_ttl, tombstone_ttl) = (self.config.advert_ttl, self.config.tombstone_ttl);
        self.remote.retain(|_, s| match s {
            NodeState::Withdrawn { since, .. } => now.saturating_since(*since) < tombstone_ttl,
            NodeState::Live { .. } => true,
        });
        let silent: Vec<NodeId> = self
            .remote
            .iter()
            .filter(|(_, s)| {
                matches!(s, NodeState::Live { last_refresh, .. }
                    if now.saturating_since(*last_refresh) >= advert_ttl)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for node in &silent {
            self.withdraw(now, node);
        }
        silent
    }

    /// When `expire` next has something to do.
    pub fn next_timeout(&self) -> Option<Millis> {
        self.remote
            .values()
            .map(|s| match s {
                NodeState::Live { last_refresh, .. } => last_refresh.saturating_add(self.config.advert_ttl),
                NodeState::Withdrawn { since, .. } => since.saturating_add(self.config.tombstone_ttl),
            })
            .min()
    }

    /// Every live entry, by node id and then in the origin's order: the input
    /// of `catalog::resolve`, identical on every converged node.
    pub fn entries(&self) -> Vec<CatalogEntry> {
        self.states()
            .filter_map(|(_, s)| match s {
                View::Live(a) => Some(a.entries.iter().cloned()),
                View::Withdrawn(_) => None,
            })
            .flatten()
            .collect()
    }

    /// The live advert of `node`, the local one included.
    pub fn advert(&self, node: &NodeId) -> Option<&NodeAdvert> {
        self.states().find_map(|(n, s)| match s {
            View::Live(a) if n == node => Some(a),
            _ => None,
        })
    }

    /// The stamp held for every known node (tombstones included), by node id.
    pub fn digest(&self) -> Vec<(NodeId, Stamp)> {
        self.states().map(|(n, s)| (n.clone(), s.stamp())).collect()
    }

    pub fn snapshot(&self) -> CatalogSnapshot {
        CatalogSnapshot { deltas: self.states().map(|(n, s)| s.delta(n)).collect() }
    }

    /// The deltas a peer with this digest lacks. Withdrawals go only to a peer
    /// that still holds the node below the tombstone: pushing tombstones to
    /// peers that never knew the node (or already forgot it) would pass them
    /// back and forth and renew them forever.
    pub fn missing_from(&self, peer_digest: &[(NodeId, Stamp)]) -> Vec<CatalogDelta> {
        let theirs: BTreeMap<&NodeId, Stamp> = peer_digest.iter().map(|(n, s)| (n, *s)).collect();
        self.states()
            .filter(|(n, s)| {
                let held = theirs.get(n).copied();
                match s {
                    View::Live(a) => held.is_none_or(|h| h < a.stamp()),
                    View::Withdrawn(stamp) => held.is_some_and(|h| h < *stamp),
                }
            })
            .map(|(n, s)| s.delta(n))
            .collect()
    }

    fn check(&self, advert: &NodeAdvert) -> Result<(), CatalogError> {
        let max = self.config.max_entries_per_node;
        if advert.entries.len() > max {
            return Err(CatalogError::TooManyEntries { node: advert.node.clone(), count: advert.entries.len(), max });
        }
        match advert.entries.iter().find(|e| e.node != advert.node || e.cluster != advert.cluster) {
            Some(e) => Err(CatalogError::ForeignEntry {
                node: advert.node.clone(),
                function: e.function.clone(),
                entry_node: e.node.clone(),
                entry_cluster: e.cluster.clone(),
            }),
            None => Ok(()),
        }
    }

    /// A delta about ourselves never changes our entries. When a peer holds us
    /// at or above our own stamp in this incarnation (we were withdrawn while
    /// alive, or someone forged a version), we jump past it so our real advert
    /// wins everywhere. Other incarnations are an old process of ours, or a
    /// second process with our id, which the link handshake refuses.
    fn about_local(&mut self, delta: &CatalogDelta) -> Applied {
        let (own, stamp) = (self.local.stamp(), delta.stamp());
        if stamp.incarnation != own.incarnation || stamp < own {
            return Applied::Stale;
        }
        if matches!(delta, CatalogDelta::Advert(a) if *a == self.local) {
            return Applied::Duplicate;
        }
        self.local.version = stamp.version.saturating_add(1);
        Applied::Refuted
    }

    fn bury(&mut self, now: Millis, node: NodeId, stamp: Stamp) {
        self.remote.insert(node, NodeState::Withdrawn { stamp, since: now });
        let tombstones = self.remote.values().filter(|s| matches!(s, NodeState::Withdrawn { .. })).count();
        if tombstones > self.config.max_tombstones {
            let oldest = self
                .remote
                .iter()
                .filter_map(|(n, s)| match s {
                    NodeState::Withdrawn { since, .. } => Some((*since, n)),
                    NodeState::Live { .. } => None,
                })
                .min()
                .map(|(_, n)| n.clone());
            if let Some(oldest) = oldest {
                self.remote.remove(&oldest);
            }
        }
    }

    fn live_members(&self) -> usize {
        1 + self.remote.values().filter(|s| matches!(s, NodeState::Live { .. })).count()
    }

    /// Every node in id order, the local one at its place.
    fn states(&self) -> impl Iterator<Item = (&NodeId, View<'_>)> {
        let me = &self.local.node;
        let before = self.remote.range::<NodeId, _>((Bound::Unbounded, Bound::Excluded(me))).map(View::of);
        let after = self.remote.range::<NodeId, _>((Bound::Excluded(me), Bound::Unbounded)).map(View::of);
        before.chain(std::iter::once((me, View::Live(&self.local)))).chain(after)
    }
}

enum View<'a> {
    Live(&'a NodeAdvert),
    Withdrawn(Stamp),
}

impl<'a> View<'a> {
    fn of((node, state): (&'a NodeId, &'a NodeState)) -> (&'a NodeId, View<'a>) {
        match state {
            NodeState::Live { advert, .. } => (node, View::Live(advert)),
            NodeState::Withdrawn { stamp, .. } => (node, View::Withdrawn(*stamp)),
        }
    }

    fn stamp(&self) -> Stamp {
        match self {
            View::Live(a) => a.stamp(),
            View::Withdrawn(s) => *s,
        }
    }

    fn delta(&self, node: &NodeId) -> CatalogDelta {
        match self {
            View::Live(a) => CatalogDelta::Advert((*a).clone()),
            View::Withdrawn(s) => {
                CatalogDelta::Withdraw { node: node.clone(), incarnation: s.incarnation, version: s.version }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

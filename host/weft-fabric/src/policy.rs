//! Federation policy: the one decision about foreign clusters, used at every
//! enforcement point (link handshake on both sides, catalog import and
//! export, call admission at the origin and at the target). Pure: the same
//! inputs give the same verdict wherever and however nodes met.
//!
//! Order of the rules: same cluster always passes; `blocked_clusters` wins
//! over everything else; then the mode. In `explicit` mode a bridge entry
//! for the cluster decides (with its node list when not empty), else
//! `allowed_clusters`. Function rules apply to foreign callers only.

use serde::{Deserialize, Serialize};
use weft_proto::{ClusterId, ErrorKind, FunctionId, NodeId, WeftError};

use std::collections::BTreeSet;

use crate::catalog::{Audience, CatalogEntry};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Strict,
    Explicit,
    Permissive,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    pub cluster: ClusterId,
    /// Empty: any node of the cluster; else only these node ids.
    #[serde(default)]
    pub nodes: Vec<NodeId>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The cluster this policy belongs to.
    pub cluster: ClusterId,
    pub mode: Mode,
    pub allowed_clusters: Vec<ClusterId>,
    pub blocked_clusters: Vec<ClusterId>,
    pub bridges: Vec<Bridge>,
    /// Functions foreign callers may call; empty: every exported one.
    pub allow_functions: Vec<String>,
    /// Functions foreign callers may never call.
    pub block_functions: Vec<String>,
    /// Clusters whose word on where a call they hand over started this
    /// cluster takes for a plugin open to named clusters only.
    #[serde(default)]
    pub trusted_transit: Vec<ClusterId>,
}

/// The rule that decided; stable names for logs, metrics and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    SameCluster,
    BlockedCluster,
    StrictMode,
    Bridge,
    BridgeNodes,
    AllowedCluster,
    NotAllowed,
    Permissive,
    NotExported,
    FunctionBlocked,
    FunctionNotAllowed,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::SameCluster => "same-cluster",
            Rule::BlockedCluster => "blocked-cluster",
            Rule::StrictMode => "strict-mode",
            Rule::Bridge => "bridge",
            Rule::BridgeNodes => "bridge-nodes",
            Rule::AllowedCluster => "allowed-cluster",
            Rule::NotAllowed => "not-allowed",
            Rule::Permissive => "permissive",
            Rule::NotExported => "not-exported",
            Rule::FunctionBlocked => "function-blocked",
            Rule::FunctionNotAllowed => "function-not-allowed",
        }
    }
}

/// A decision with the rule behind it and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    pub rule: Rule,
    pub reason: String,
}

impl Verdict {
    fn allow(rule: Rule, reason: String) -> Verdict {
        Verdict { allowed: true, rule, reason }
    }

    fn deny(rule: Rule, reason: String) -> Verdict {
        Verdict { allowed: false, rule, reason }
    }

    /// The POLICY_DENIED error of a denial, naming the rule and the cluster.
    pub fn to_error(&self, cluster: &ClusterId) -> WeftError {
        WeftError::new(ErrorKind::POLICY_DENIED, self.reason.clone())
            .with("rule", self.rule.as_str())
            .with("cluster", cluster.as_str())
    }
}

impl Policy {
    /// May this node link to (or accept calls and catalog entries from) node
    /// `node` of `cluster`? `node = None` asks about the cluster as a whole
    /// (a bridge restricted to some nodes still admits the cluster).
    pub fn peer(&self, cluster: &ClusterId, node: Option<&NodeId>) -> Verdict {
        let here = &self.cluster;
        if cluster == here {
            return Verdict::allow(Rule::SameCluster, format!("{cluster} is this node's own cluster"));
        }
        if self.blocked_clusters.contains(cluster) {
            return Verdict::deny(
                Rule::BlockedCluster,
                format!("cluster {cluster} is in federation.blocked_clusters of cluster {here}"),
            );
        }
        match self.mode {
            Mode::Strict => Verdict::deny(
                Rule::StrictMode,
                format!(
                    "cluster {here} runs federation.mode = \"strict\" and accepts no other cluster ({cluster}); use mode \"explicit\" with a bridge to link them"
                ),
            ),
            Mode::Permissive => Verdict::allow(
                Rule::Permissive,
                format!("cluster {here} runs federation.mode = \"permissive\" and accepts {cluster}"),
            ),
            Mode::Explicit => match self.bridges.iter().find(|b| &b.cluster == cluster) {
                Some(bridge) => match node {
                    Some(n) if !bridge.nodes.is_empty() && !bridge.nodes.contains(n) => {
                        let listed: Vec<&str> = bridge.nodes.iter().map(NodeId::as_str).collect();
                        Verdict::deny(
                            Rule::BridgeNodes,
                            format!(
                                "the federation.bridges entry of cluster {here} for {cluster} accepts only nodes [{}], not {n}",
                                listed.join(", ")
                            ),
                        )
                    }
                    _ => Verdict::allow(Rule::Bridge, format!("cluster {here} has a bridge to {cluster}")),
                },
                None if self.allowed_clusters.contains(cluster) => Verdict::allow(
                    Rule::AllowedCluster,
                    format!("cluster {cluster} is in federation.allowed_clusters of cluster {here}"),
                ),
                None => Verdict::deny(
                    Rule::NotAllowed,
                    format!(
                        "cluster {cluster} is neither in federation.allowed_clusters nor bridged by cluster {here} (federation.mode = \"explicit\")"
                    ),
                ),
            },
        }
    }

    /// May a caller from `cluster` (node `node`) call `function`, which this
    /// cluster does or does not export?
    pub fn call(&self, cluster: &ClusterId, node: Option<&NodeId>, function: &FunctionId, exported: bool) -> Verdict {
        let peer = self.peer(cluster, node);
        if !peer.allowed || *cluster == self.cluster {
            return peer;
        }
        if !exported {
            return Verdict::deny(
                Rule::NotExported,
                format!(
                    "{function} is not exported outside cluster {} (its plugin manifest says export = false)",
                    self.cluster
                ),
            );
        }
        self.function_refusal(function).unwrap_or(peer)
    }

    /// The function rules' refusal of `function` to every foreign caller, if
    /// they refuse it.
    fn function_refusal(&self, function: &FunctionId) -> Option<Verdict> {
        let here = &self.cluster;
        let named = |list: &[String]| list.iter().any(|f| names(f, function));
        if named(&self.block_functions) {
            return Some(Verdict::deny(
                Rule::FunctionBlocked,
                format!("{function} is in federation.functions.block of cluster {here}"),
            ));
        }
        if !self.allow_functions.is_empty() && !named(&self.allow_functions) {
            return Some(Verdict::deny(
                Rule::FunctionNotAllowed,
                format!("{function} is not in federation.functions.allow of cluster {here}"),
            ));
        }
        None
    }

    /// Warnings for the function rules' entries that name none of
    /// `functions` (the cluster's own): a typo, or a name in other capitals,
    /// would leave a block list blocking nothing.
    pub fn unmatched_function_rules<'a>(&self, functions: impl Iterator<Item = &'a FunctionId> + Clone) -> Vec<String> {
        let lists = [("block", &self.block_functions), ("allow", &self.allow_functions)];
        let mut warnings = Vec::new();
        for (list, entries) in lists {
            for entry in entries.iter().filter(|e| !functions.clone().any(|f| names(e, f))) {
                let lower = entry.to_lowercase();
                let like = functions.clone().find(|f| names(&lower, f)).map_or(String::new(), |f| {
                    format!(" (names are matched exactly, in their capitals: {f} is there)")
                });
                warnings.push(format!(
                    "federation.functions.{list}: {entry:?} names no function cluster {} has now{like}",
                    self.cluster
                ));
            }
        }
        warnings
    }

    /// The clusters a node serves one of its own entries to, by this
    /// policy: what it advertises to its
    /// members, so that a bridge node offers abroad, and lets calls in for,
    /// only what the node hosting the function would serve (their policies
    /// differ during a rolling reload, or by mistake).
    pub fn advertised(&self, entry: &CatalogEntry) -> Audience {
        if !entry.exported || self.function_refusal(&entry.function).is_some() {
            return Audience::Only(BTreeSet::new());
        }
        entry.audience.narrowed(&self.audience())
    }

    /// Whether a local entry is offered to `cluster` at all (the export side
    /// of the catalog): whether calls from there may reach it, by this
    /// policy and the entry's audience.
    pub fn exports(&self, entry: &CatalogEntry, cluster: &ClusterId) -> bool {
        entry.audience.admits(cluster) && self.call(cluster, None, &entry.function, entry.exported).allowed
    }

    /// Whether this cluster takes `neighbour`'s word that a call it hands
    /// over started in another cluster, for an entry open to `origins`:
    /// always where they are everyone, else where the neighbour may call
    /// the entry itself or is in `trusted_transit`. This is trust, not
    /// routes; without it, a call must prove its origin with a signature.
    pub fn vouches(&self, neighbour: &ClusterId, origins: &Audience) -> bool {
        origins.admits(neighbour) || self.trusted_transit.contains(neighbour)
    }

    /// The other clusters this policy admits at all, for entries offered
    /// under it: a cluster that passes them on then offers them only there.
    pub fn audience(&self) -> Audience {
        let blocked: BTreeSet<ClusterId> = self.blocked_clusters.iter().cloned().collect();
        match self.mode {
            Mode::Strict => Audience::Only(BTreeSet::new()),
            Mode::Permissive => Audience::AllBut(blocked),
            Mode::Explicit => {
                let named = self.allowed_clusters.iter().chain(self.bridges.iter().map(|b| &b.cluster));
                Audience::Only(named.filter(|c| !blocked.contains(*c)).cloned().collect())
            }
        }
    }
}

/// Whether a function rule's entry, `FUNCTION` or `PLUGIN/FUNCTION`,
/// names `function`.
fn names(entry: &str, function: &FunctionId) -> bool {
    match entry.split_once('/') {
        Some((plugin, name)) => plugin == &*function.plugin && name == &*function.function,
        None => entry == &*function.function,
    }
}

#[cfg(test)]
mod tests;

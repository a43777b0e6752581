//! What went out of reach with a node. When a member goes down or its link
//! drops, or the way to another cluster goes (a bridge link, a member's
//! relay, a route), what only it held leaves the catalog at once, so that
//! calls fail over. A call that then finds nothing is told that what it
//! names went out of reach, when and with which nodes, and to retry, not
//! that nothing of that name exists. Remembered for [`REMEMBERED`], or until
//! it is back.
//!
//! Times are the driver's clock in milliseconds (the node uses Unix time,
//! so that they compare with the times of its link refusals).

use std::collections::{BTreeMap, BTreeSet};

use weft_proto::{ClusterId, NodeId};

use crate::catalog::CatalogEntry;

/// How long what went out of reach is remembered: after that, a name it
/// held is not found, as any other.
pub const REMEMBERED_MS: u64 = 5 * 60 * 1000;

/// When something went out of reach, and the nodes it went with (those
/// that served it, or that were the way to its cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gone {
    pub nodes: Vec<NodeId>,
    pub at: u64,
}

/// The ways to other clusters: for each, the nodes through which it is
/// reached (bridge peers, members that relay it, next hops of routes).
pub type Ways = BTreeMap<ClusterId, BTreeSet<NodeId>>;

/// What a node could reach when it published its view.
#[derive(Clone, Copy)]
pub struct Reach<'a> {
    pub entries: &'a [CatalogEntry],
    pub ways: &'a Ways,
    /// The members of this node's cluster it can call now (itself included).
    pub up: &'a BTreeSet<NodeId>,
}

#[derive(Clone, Debug, Default)]
pub struct Lost {
    entries: Vec<(CatalogEntry, Gone)>,
    ways: BTreeMap<ClusterId, Gone>,
}

impl Lost {
    /// Records what went between two views, unless it went by the node's
    /// own decision (`outage` false: a policy reload): a way that is gone, an entry of
    /// a member that is no longer up, and an entry of another cluster whose
    /// way is gone (one that left while its way stays may have been
    /// unloaded or refused there: nothing says it will be back). Forgets
    /// what is back and what is older than [`REMEMBERED_MS`]. Returns
    /// whether anything changed.
    pub fn update(&mut self, now: u64, before: Reach, after: Reach, outage: bool) -> bool {
        let (entries, ways) = (self.entries.len(), self.ways.len());
        let fresh = |g: &Gone| now.saturating_sub(g.at) < REMEMBERED_MS;
        self.ways.retain(|c, g| fresh(g) && !after.ways.contains_key(c));
        self.entries.retain(|(e, g)| fresh(g) && !after.entries.iter().any(|a| same_function(a, e)));
        let mut changed = entries != self.entries.len() || ways != self.ways.len();
        if !outage {
            return changed;
        }
        for (cluster, via) in before.ways.iter().filter(|(c, _)| !after.ways.contains_key(*c)) {
            self.ways.insert(cluster.clone(), Gone { nodes: via.iter().cloned().collect(), at: now });
            changed = true;
        }
        for e in before.entries.iter().filter(|e| !after.entries.contains(e)) {
            let gone = if before.up.contains(&e.node) && !after.up.contains(&e.node) {
                Gone { nodes: vec![e.node.clone()], at: now }
            } else if let Some(way) = self.ways.get(&e.cluster).filter(|g| g.at == now) {
                way.clone()
            } else {
                continue;
            };
            if !after.entries.iter().any(|a| same_function(a, e)) {
                self.entries.retain(|(l, _)| l != e);
                self.entries.push((e.clone(), gone));
                changed = true;
            }
        }
        changed
    }

    /// The entries that went out of reach, as a catalog to resolve against,
    /// each with when and how.
    pub fn entries(&self, now: u64) -> impl Iterator<Item = &(CatalogEntry, Gone)> {
        self.entries.iter().filter(move |(_, g)| now.saturating_sub(g.at) < REMEMBERED_MS)
    }

    /// When the way to `cluster` went, if it did lately.
    pub fn way(&self, now: u64, cluster: &ClusterId) -> Option<&Gone> {
        self.ways.get(cluster).filter(|g| now.saturating_sub(g.at) < REMEMBERED_MS)
    }
}

/// The same function, version and cluster, on whichever node.
fn same_function(a: &CatalogEntry, b: &CatalogEntry) -> bool {
    a.function == b.function && a.version == b.version && a.cluster == b.cluster
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::catalog;

    fn on(node: &str, cluster: &str, e: &CatalogEntry) -> CatalogEntry {
        CatalogEntry { node: NodeId::new(node), cluster: ClusterId::new(cluster), ..e.clone() }
    }

    fn up(nodes: &[&str]) -> BTreeSet<NodeId> {
        nodes.iter().map(|n| NodeId::new(*n)).collect()
    }

    fn ways(pairs: &[(&str, &str)]) -> Ways {
        let mut w = Ways::new();
        for (c, n) in pairs {
            w.entry(ClusterId::new(*c)).or_default().insert(NodeId::new(*n));
        }
        w
    }

    #[test]
    fn an_entry_goes_with_its_node_and_comes_back_with_any_node() {
        let upper = catalog().into_iter().find(|e| e.function.to_string() == "text/upper").unwrap();
        let (n1, n2) = (on("n1", "alpha", &upper), on("n2", "alpha", &upper));
        let none = Ways::new();
        let mut lost = Lost::default();
        let before = Reach { entries: &[n1.clone()], ways: &none, up: &up(&["n1", "n2"]) };
        let after = Reach { entries: &[], ways: &none, up: &up(&["n2"]) };
        assert!(lost.update(100, before, after, true));
        let gone: Vec<_> = lost.entries(200).collect();
        assert_eq!(gone, [&(n1.clone(), Gone { nodes: vec![NodeId::new("n1")], at: 100 })]);
        assert_eq!(lost.entries(100 + REMEMBERED_MS).count(), 0, "forgotten after a while");

        // Back on another node: no longer lost.
        let back = Reach { entries: &[n2], ways: &none, up: &up(&["n2"]) };
        assert!(lost.update(300, after, back, true));
        assert_eq!(lost.entries(300).count(), 0);
    }

    #[test]
    fn what_a_policy_reload_cuts_off_is_not_lost() {
        let echo = on("b1", "beta", &catalog()[0]);
        let (members, was, none) = (up(&["a1"]), ways(&[("beta", "b1")]), Ways::new());
        let mut lost = Lost::default();
        let before = Reach { entries: std::slice::from_ref(&echo), ways: &was, up: &members };
        let after = Reach { entries: &[], ways: &none, up: &members };
        assert!(!lost.update(100, before, after, false));
        assert_eq!((lost.way(100, &ClusterId::new("beta")), lost.entries(100).count()), (None, 0));
    }

    #[test]
    fn an_entry_unloaded_by_a_node_that_stays_up_is_not_lost() {
        let upper = on("n1", "alpha", &catalog()[0]);
        let none = Ways::new();
        let mut lost = Lost::default();
        let before = Reach { entries: &[upper], ways: &none, up: &up(&["n1"]) };
        let after = Reach { entries: &[], ways: &none, up: &up(&["n1"]) };
        assert!(!lost.update(100, before, after, true));
        assert_eq!(lost.entries(100).count(), 0);
    }

    #[test]
    fn a_way_that_goes_takes_its_cluster_s_entries_with_it() {
        let echo = on("b1", "beta", &catalog()[0]);
        let members = up(&["a1", "a2"]);
        let (was, now) = (ways(&[("beta", "a1"), ("gamma", "a1")]), ways(&[("gamma", "a2")]));
        let mut lost = Lost::default();
        let before = Reach { entries: std::slice::from_ref(&echo), ways: &was, up: &members };
        let after = Reach { entries: &[], ways: &now, up: &members };
        assert!(lost.update(100, before, after, true));
        let gone = Gone { nodes: vec![NodeId::new("a1")], at: 100 };
        assert_eq!(lost.way(150, &ClusterId::new("beta")), Some(&gone));
        assert_eq!(lost.way(150, &ClusterId::new("gamma")), None, "another way leads there");
        assert_eq!(lost.entries(150).collect::<Vec<_>>(), [&(echo.clone(), gone)]);

        // A foreign entry that leaves while its way stays is not lost.
        let mut lost = Lost::default();
        let before = Reach { entries: std::slice::from_ref(&echo), ways: &was, up: &members };
        let after = Reach { entries: &[], ways: &was, up: &members };
        assert!(!lost.update(100, before, after, true));

        // The way back: forgotten.
        let mut lost = Lost::default();
        let (empty, there) = (Ways::new(), ways(&[("beta", "a2")]));
        let reach = |ways| Reach { entries: &[], ways, up: &members };
        assert!(lost.update(100, reach(&was), reach(&empty), true));
        assert!(lost.way(100, &ClusterId::new("beta")).is_some());
        assert!(lost.update(200, reach(&empty), reach(&there), true));
        assert_eq!(lost.way(200, &ClusterId::new("beta")), None);
    }
}

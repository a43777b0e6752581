//! What went out of reach with a node. When a link of this node drops (a
//! member killed or declared down, a bridge peer gone), what only that node
//! held leaves the catalog at once, so that calls fail over. A call that
//! then finds nothing is told that what it names went out of reach, when
//! and with which nodes, and to retry, not that nothing of that name
//! exists. Remembered for [`REMEMBERED_MS`], until it is back, or until the
//! node is linked again (with or without it).
//!
//! Only a link this node lost counts: a way that goes while the nodes it
//! went through stay linked (a member no longer relaying a cluster, a
//! route withdrawn) may be another node's policy decision, which nothing
//! here can tell from an outage. The one exception is what a member tells:
//! a bridge node relays the [`Loss`]es of its own links to its members, who
//! answer for them as it does.
//!
//! Times are the driver's clock in milliseconds (the node uses Unix time,
//! so that they compare with the times of its link refusals).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use semver::Version;
use weft_proto::{ClusterId, FunctionId, NodeId};

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
    /// The nodes are members of this node's cluster, or a member lost them:
    /// a refusal of this node's own links to the cluster that went says
    /// nothing about them.
    pub members: bool,
}

/// The ways to other clusters: for each, the nodes through which it is
/// reached (bridge peers, members that relay it, next hops of routes).
pub type Ways = BTreeMap<ClusterId, BTreeSet<NodeId>>;

/// What a node could reach when it published its view.
#[derive(Clone, Copy)]
pub struct Reach<'a> {
    pub entries: &'a [CatalogEntry],
    pub ways: &'a Ways,
    /// The nodes it is linked to, of any cluster, and itself.
    pub linked: &'a BTreeSet<NodeId>,
    /// Those of them in its own cluster.
    pub members: &'a BTreeSet<NodeId>,
}

/// What a node lost of another cluster, as it tells its members: the way
/// there (`way`), or entries of it, gone with `gone`.
#[derive(Clone, Debug, PartialEq)]
pub struct Loss {
    pub cluster: ClusterId,
    pub gone: Gone,
    pub way: bool,
    pub entries: Vec<CatalogEntry>,
}

/// How long after a link of this node into a cluster went, while other
/// ways there stayed (a member's bridge to the same node, say), their
/// going too is taken as the same outage: the member loses its link a
/// moment later, and relays that it no longer reaches the cluster.
pub const FOLLOWS_MS: u64 = 10_000;

#[derive(Clone, Debug, Default)]
pub struct Lost {
    entries: Vec<(CatalogEntry, Gone)>,
    ways: BTreeMap<ClusterId, Gone>,
    /// Ways that lost some of their nodes with links of this node, and
    /// stayed through others, lately ([`FOLLOWS_MS`]).
    thinned: BTreeMap<ClusterId, Gone>,
}

impl Lost {
    /// Records what went with the links lost between two views, unless
    /// they went by this node's own decision (`outage` false: a policy
    /// reload): a way that went when some of its nodes were no longer
    /// linked (at once, or within [`FOLLOWS_MS`]), an entry of such a node,
    /// and an entry of a cluster whose way went. Forgets what
    /// is back, what a node linked again no longer has, and what is older
    /// than [`REMEMBERED_MS`]. Returns whether anything it holds changed.
    pub fn update(&mut self, now: u64, before: Reach, after: Reach, outage: bool) -> bool {
        let was = (self.entries.len(), self.ways.len(), self.thinned.clone());
        let relinked = |g: &Gone| g.nodes.iter().any(|n| after.linked.contains(n));
        let fresh = |g: &Gone| now.saturating_sub(g.at) < REMEMBERED_MS && !relinked(g);
        self.ways.retain(|c, g| fresh(g) && !after.ways.contains_key(c));
        let lost_link = !before.linked.is_subset(after.linked);
        // The rest of a way that thinned with a lost link of this node.
        let followed: Vec<(ClusterId, Gone)> = self
            .thinned
            .iter()
            .filter(|(_, g)| outage && now.saturating_sub(g.at) < FOLLOWS_MS && !relinked(g))
            .filter(|(c, _)| before.ways.contains_key(*c) && !after.ways.contains_key(*c))
            .map(|(c, g)| (c.clone(), g.clone()))
            .collect();
        let followed_any = !followed.is_empty();
        self.thinned.retain(|c, g| now.saturating_sub(g.at) < FOLLOWS_MS && after.ways.contains_key(c));
        if !self.entries.is_empty() || followed_any || (outage && lost_link) {
            let offered: HashSet<Key> = after.entries.iter().map(key).collect();
            self.entries.retain(|(e, g)| fresh(g) && !offered.contains(&key(e)));
            for (cluster, gone) in followed {
                let went = before.entries.iter().filter(|e| e.cluster == cluster && !offered.contains(&key(e)));
                self.entries.extend(went.map(|e| (e.clone(), gone.clone())));
                self.ways.insert(cluster, gone);
            }
            if outage && lost_link {
                self.record(now, before, after, &offered);
            }
        }
        followed_any || was != (self.entries.len(), self.ways.len(), self.thinned.clone())
    }

    fn record(&mut self, now: u64, before: Reach, after: Reach, offered: &HashSet<Key>) {
        for (cluster, via) in before.ways {
            let nodes: Vec<NodeId> = via.iter().filter(|n| !after.linked.contains(*n)).cloned().collect();
            if nodes.is_empty() {
                continue;
            }
            let members = nodes.iter().all(|n| before.members.contains(n));
            let gone = Gone { nodes, at: now, members };
            // The rest of the way, through nodes still linked, went with
            // it (as a while after: `thinned`), or is there still.
            if after.ways.contains_key(cluster) {
                self.thinned.insert(cluster.clone(), gone);
            } else {
                self.ways.insert(cluster.clone(), gone);
            }
        }
        for e in before.entries.iter().filter(|e| !offered.contains(&key(e))) {
            let gone = if before.linked.contains(&e.node) && !after.linked.contains(&e.node) {
                Gone { nodes: vec![e.node.clone()], at: now, members: before.members.contains(&e.node) }
            } else if let Some(way) = self.ways.get(&e.cluster).filter(|g| g.at == now) {
                way.clone()
            } else {
                continue;
            };
            self.entries.push((e.clone(), gone));
        }
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

    /// What went of clusters other than `home`, by cluster and how it went,
    /// as far as `outage` still holds it one: what this node tells its
    /// members, whose way to those clusters it was.
    pub fn losses(&self, now: u64, home: &ClusterId, outage: impl Fn(&ClusterId, &Gone) -> bool) -> Vec<Loss> {
        let mut losses: Vec<Loss> = Vec::new();
        for (cluster, gone) in &self.ways {
            if cluster != home && self.way(now, cluster).is_some() && outage(cluster, gone) {
                losses.push(Loss { cluster: cluster.clone(), gone: gone.clone(), way: true, entries: Vec::new() });
            }
        }
        for (e, gone) in self.entries(now).filter(|(e, g)| e.cluster != *home && outage(&e.cluster, g)) {
            match losses.iter_mut().find(|l| l.cluster == e.cluster && l.gone == *gone) {
                Some(loss) => loss.entries.push(e.clone()),
                None => losses.push(Loss {
                    cluster: e.cluster.clone(),
                    gone: gone.clone(),
                    way: false,
                    entries: vec![e.clone()],
                }),
            }
        }
        losses
    }

    /// Keeps only what `keep` holds an outage still (this node's policy
    /// reloaded: what it no longer admits is its decision now).
    pub fn retain(&mut self, keep: impl Fn(&ClusterId, &Gone) -> bool) {
        self.ways.retain(|c, g| keep(c, g));
        self.entries.retain(|(e, g)| keep(&e.cluster, g));
    }

    /// Takes on what a member had told this node it lost, now that the
    /// link to that member (`via`) went too: the way there went with both,
    /// and is back when either is linked again.
    pub fn adopt(&mut self, losses: Vec<Loss>, via: &NodeId) {
        for mut loss in losses {
            loss.gone.nodes.push(via.clone());
            self.take_on(loss);
        }
    }

    /// What this node lost, and what members told it they lost.
    pub fn with_relayed<'a>(&self, relayed: impl IntoIterator<Item = &'a Loss>) -> Lost {
        let mut all = self.clone();
        for loss in relayed {
            all.take_on(loss.clone());
        }
        all
    }

    /// A member's loss, as lost here: it went with links of a member, so no
    /// refusal of this node's own dials explains it (`Gone::members`).
    fn take_on(&mut self, loss: Loss) {
        let gone = Gone { members: true, ..loss.gone };
        if loss.way {
            self.ways.entry(loss.cluster).or_insert_with(|| gone.clone());
        }
        self.entries.extend(loss.entries.into_iter().map(|e| (e, gone.clone())));
    }
}

/// The same function, version and cluster, on whichever node.
type Key<'a> = (&'a FunctionId, &'a Version, &'a ClusterId);

fn key(e: &CatalogEntry) -> Key<'_> {
    (&e.function, &e.version, &e.cluster)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::catalog;

    fn on(node: &str, cluster: &str, e: &CatalogEntry) -> CatalogEntry {
        CatalogEntry { node: NodeId::new(node), cluster: ClusterId::new(cluster), ..e.clone() }
    }

    fn nodes(names: &[&str]) -> BTreeSet<NodeId> {
        names.iter().map(|n| NodeId::new(*n)).collect()
    }

    fn ways(pairs: &[(&str, &str)]) -> Ways {
        let mut w = Ways::new();
        for (c, n) in pairs {
            w.entry(ClusterId::new(*c)).or_default().insert(NodeId::new(*n));
        }
        w
    }

    fn upper() -> CatalogEntry {
        catalog().into_iter().find(|e| e.function.to_string() == "text/upper").unwrap()
    }

    #[test]
    fn an_entry_goes_with_its_node_s_link_until_it_is_back() {
        let (n1, n2) = (on("n1", "alpha", &upper()), on("n2", "alpha", &upper()));
        let none = Ways::new();
        let (both, second) = (nodes(&["n1", "n2"]), nodes(&["n2"]));
        let view = |entries, linked| Reach { entries, ways: &none, linked, members: linked };
        let mut lost = Lost::default();
        assert!(lost.update(100, view(std::slice::from_ref(&n1), &both), view(&[], &second), true));
        let gone = Gone { nodes: vec![NodeId::new("n1")], at: 100, members: true };
        assert_eq!(lost.entries(200).collect::<Vec<_>>(), [&(n1.clone(), gone)]);
        assert_eq!(lost.entries(100 + REMEMBERED_MS).count(), 0, "forgotten after a while");

        // Back on another node: no longer lost.
        let mut back = lost.clone();
        assert!(back.update(300, view(&[], &second), view(std::slice::from_ref(&n2), &second), true));
        assert_eq!(back.entries(300).count(), 0);
        // Its node linked again without it (restarted with other plugins): not lost either.
        assert!(lost.update(300, view(&[], &second), view(&[], &both), true));
        assert_eq!(lost.entries(300).count(), 0);
    }

    #[test]
    fn nothing_is_lost_without_a_lost_link_or_by_a_policy_reload() {
        let n1 = on("n1", "alpha", &upper());
        let (none, linked) = (Ways::new(), nodes(&["n1"]));
        let mut lost = Lost::default();
        // Unloaded by a node that stays linked.
        let before = Reach { entries: std::slice::from_ref(&n1), ways: &none, linked: &linked, members: &linked };
        let after = Reach { entries: &[], ways: &none, linked: &linked, members: &linked };
        assert!(!lost.update(100, before, after, true));
        // Cut off by this node's own policy.
        let (was, nobody) = (ways(&[("beta", "b1")]), nodes(&[]));
        let before = Reach { entries: &[], ways: &was, linked: &nodes(&["b1"]), members: &nobody };
        let after = Reach { entries: &[], ways: &none, linked: &nobody, members: &nobody };
        assert!(!lost.update(100, before, after, false));
        assert_eq!((lost.way(100, &ClusterId::new("beta")), lost.entries(100).count()), (None, 0));
    }

    #[test]
    fn a_way_goes_with_the_links_it_went_through_and_takes_its_entries() {
        let echo = on("b1", "beta", &catalog()[0]);
        let (before_links, after_links) = (nodes(&["a1", "a2"]), nodes(&["a2"]));
        let (was, now) = (ways(&[("beta", "a1"), ("gamma", "a1"), ("delta", "a2")]), ways(&[("gamma", "a2")]));
        let mut lost = Lost::default();
        let before =
            Reach { entries: std::slice::from_ref(&echo), ways: &was, linked: &before_links, members: &before_links };
        let after = Reach { entries: &[], ways: &now, linked: &after_links, members: &after_links };
        assert!(lost.update(100, before, after, true));
        let gone = Gone { nodes: vec![NodeId::new("a1")], at: 100, members: true };
        assert_eq!(lost.way(150, &ClusterId::new("beta")), Some(&gone));
        assert_eq!(lost.way(150, &ClusterId::new("gamma")), None, "another way leads there");
        assert_eq!(lost.way(150, &ClusterId::new("delta")), None, "its node is still linked: a decision there");
        assert_eq!(lost.entries(150).collect::<Vec<_>>(), [&(echo.clone(), gone)]);

        // The way back: forgotten.
        let back = ways(&[("beta", "a2")]);
        let after_back = Reach { entries: &[], ways: &back, linked: &after_links, members: &after_links };
        assert!(lost.update(200, after, after_back, true));
        assert_eq!(lost.way(200, &ClusterId::new("beta")), None);
    }

    #[test]
    fn a_way_that_thinned_with_a_lost_link_and_then_went_went_with_that_link() {
        // Two bridge nodes of alpha, a1 (this one) and a3, link to b1 of
        // beta. b1 goes: a1 loses its link, and still reaches beta through
        // a3, until a3 relays that it lost its own.
        let echo = on("b1", "beta", &catalog()[0]);
        let (both, relayed, none) = (ways(&[("beta", "b1"), ("beta", "a3")]), ways(&[("beta", "a3")]), Ways::new());
        let (before_links, after_links, members) = (nodes(&["b1", "a3"]), nodes(&["a3"]), nodes(&["a3"]));
        let entries = [echo.clone()];
        let before = Reach { entries: &entries, ways: &both, linked: &before_links, members: &members };
        let thinned = Reach { entries: &entries, ways: &relayed, linked: &after_links, members: &members };
        let after = Reach { entries: &[], ways: &none, linked: &after_links, members: &members };
        let beta = ClusterId::new("beta");
        let gone = Gone { nodes: vec![NodeId::new("b1")], at: 100, members: false };

        let mut lost = Lost::default();
        lost.update(100, before, thinned, true);
        assert_eq!(lost.way(100, &beta), None, "still reached through a3");
        assert!(lost.update(200, thinned, after, true));
        assert_eq!(lost.way(200, &beta), Some(&gone));
        assert_eq!(lost.entries(200).collect::<Vec<_>>(), [&(echo, gone)]);

        // Not when the rest goes much later (a decision of a3's), nor by a reload.
        let mut later = Lost::default();
        later.update(100, before, thinned, true);
        later.update(100 + FOLLOWS_MS, thinned, after, true);
        assert_eq!(later.way(100 + FOLLOWS_MS, &beta), None);
        let mut reloaded = Lost::default();
        reloaded.update(100, before, thinned, true);
        reloaded.update(200, thinned, after, false);
        assert_eq!(reloaded.way(200, &beta), None);
    }

    #[test]
    fn a_bridge_node_tells_its_members_what_it_lost_of_other_clusters_and_they_answer_for_it() {
        // A bridge node loses its peer b1 of beta, and a member of its own.
        let (upper, own) = (on("b1", "beta", &upper()), on("a3", "alpha", &catalog()[0]));
        let (was, none) = (ways(&[("beta", "b1")]), Ways::new());
        let (before_links, after_links, members) = (nodes(&["b1", "a3"]), nodes(&[]), nodes(&["a3"]));
        let entries = [upper.clone(), own];
        let before = Reach { entries: &entries, ways: &was, linked: &before_links, members: &members };
        let after = Reach { entries: &[], ways: &none, linked: &after_links, members: &after_links };
        let mut lost = Lost::default();
        assert!(lost.update(100, before, after, true));
        let (alpha, beta) = (ClusterId::new("alpha"), ClusterId::new("beta"));
        let gone = Gone { nodes: vec![NodeId::new("b1")], at: 100, members: false };
        let losses = lost.losses(150, &alpha, |_, _| true);
        let told = Loss { cluster: beta.clone(), gone: gone.clone(), way: true, entries: vec![upper.clone()] };
        assert_eq!(losses, [told], "its own cluster's losses are the members' own to see");
        assert!(lost.losses(150, &alpha, |_, _| false).is_empty(), "nor what is no longer an outage");
        assert!(lost.losses(100 + REMEMBERED_MS, &alpha, |_, _| true).is_empty(), "nor what is forgotten");

        // A member answers for it as lost by way of a member.
        let member = Lost::default().with_relayed(&losses);
        let by_member = Gone { members: true, ..gone.clone() };
        assert_eq!(member.way(150, &beta), Some(&by_member));
        assert_eq!(member.entries(150).collect::<Vec<_>>(), [&(upper.clone(), by_member)]);

        // When the bridge node goes too, the member keeps it, gone with both,
        // until either is linked again.
        let mut adopted = Lost::default();
        adopted.adopt(losses, &NodeId::new("a1"));
        let with_both = Gone { nodes: vec![NodeId::new("b1"), NodeId::new("a1")], at: 100, members: true };
        assert_eq!(adopted.way(150, &beta), Some(&with_both));
        let (was, back) = (nodes(&["a1"]), nodes(&["a1", "a2"]));
        let view = |linked| Reach { entries: &[], ways: &none, linked, members: linked };
        adopted.update(200, view(&was), view(&back), true);
        assert_eq!((adopted.way(200, &beta), adopted.entries(200).count()), (None, 0), "a1 is back");

        // A policy reload keeps only what it still holds an outage.
        lost.retain(|cluster, _| *cluster != beta);
        let of_beta = lost.entries(150).filter(|(e, _)| e.cluster == beta).count();
        assert_eq!((lost.way(150, &beta), of_beta, lost.entries(150).count()), (None, 0, 1), "its own cluster's stay");
    }
}

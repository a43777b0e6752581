use proptest::prelude::*;
use proptest::sample::Index;
use weft_proto::WitType;

use super::*;
use crate::testing::{entry, sig};

const SEC: u64 = 1_000;

fn id(n: &str) -> NodeId {
    NodeId::new(n)
}

fn on(node: &str, function: &str) -> CatalogEntry {
    let mut e = entry(function, "1.0.0", sig(&[("a", WitType::String)], WitType::String));
    e.node = id(node);
    e
}

fn advert(node: &str, incarnation: u64, version: u64, functions: &[&str]) -> CatalogDelta {
    CatalogDelta::Advert(NodeAdvert {
        node: id(node),
        cluster: ClusterId::new("alpha"),
        incarnation,
        version,
        entries: functions.iter().map(|f| on(node, f)).collect(),
    })
}

fn withdraw(node: &str, incarnation: u64, version: u64) -> CatalogDelta {
    CatalogDelta::Withdraw { node: id(node), incarnation, version }
}

fn catalog_with(config: CatalogConfig) -> ClusterCatalog {
    ClusterCatalog::new(id("local"), ClusterId::new("alpha"), 1, config)
}

fn catalog() -> ClusterCatalog {
    catalog_with(CatalogConfig::default())
}

fn functions(cat: &ClusterCatalog) -> Vec<String> {
    cat.entries().iter().map(|e| format!("{}@{}", e.function, e.node)).collect()
}

fn apply(cat: &mut ClusterCatalog, delta: &CatalogDelta) -> Applied {
    cat.apply(Millis(0), delta.clone()).unwrap()
}

#[test]
fn deltas_in_any_order_and_repeated_give_the_same_catalog() {
    let deltas = [
        advert("b", 1, 1, &["echo/echo"]),
        advert("b", 1, 2, &["echo/echo", "math/add"]),
        advert("c", 1, 1, &["text/upper"]),
        withdraw("c", 1, 1),
        advert("d", 1, 3, &["text/split"]),
    ];
    let mut forward = catalog();
    let mut backward = catalog();
    for d in &deltas {
        apply(&mut forward, d);
    }
    for d in deltas.iter().rev().chain(&deltas) {
        apply(&mut backward, d);
    }
    assert_eq!(functions(&forward), ["echo/echo@b", "math/add@b", "text/split@d"]);
    assert_eq!(forward.entries(), backward.entries());
    assert_eq!(forward.digest(), backward.digest());
    assert_eq!(apply(&mut forward, &deltas[1]), Applied::Duplicate);
    assert_eq!(apply(&mut forward, &deltas[0]), Applied::Stale);
}

#[test]
fn restart_with_a_new_incarnation_replaces_the_old_advert_whatever_its_version() {
    let mut cat = catalog();
    apply(&mut cat, &advert("b", 1, 9, &["echo/echo"]));
    assert_eq!(apply(&mut cat, &advert("b", 2, 1, &["math/add"])), Applied::Accepted);
    assert_eq!(functions(&cat), ["math/add@b"]);
    assert_eq!(apply(&mut cat, &advert("b", 1, 10, &["echo/echo"])), Applied::Stale);
    assert_eq!(functions(&cat), ["math/add@b"]);
}

#[test]
fn withdrawal_beats_older_and_equal_adverts_and_loses_to_newer_ones() {
    let mut cat = catalog();
    apply(&mut cat, &advert("b", 1, 2, &["echo/echo"]));
    assert_eq!(apply(&mut cat, &withdraw("b", 1, 2)), Applied::Accepted);
    assert!(cat.entries().is_empty());
    // A late advert, even at the withdrawn version, cannot resurrect the node.
    assert_eq!(apply(&mut cat, &advert("b", 1, 1, &["echo/echo"])), Applied::Stale);
    assert_eq!(apply(&mut cat, &advert("b", 1, 2, &["echo/echo"])), Applied::Stale);
    // A restart does, and so does a newer version (a refutation, see below).
    assert_eq!(apply(&mut cat, &advert("b", 2, 1, &["math/add"])), Applied::Accepted);
    assert_eq!(functions(&cat), ["math/add@b"]);
    apply(&mut cat, &withdraw("b", 2, 1));
    assert_eq!(apply(&mut cat, &advert("b", 2, 2, &["math/add"])), Applied::Accepted);
    // A withdrawal that arrives before the advert it withdraws still wins.
    let mut early = catalog();
    apply(&mut early, &withdraw("c", 1, 5));
    assert_eq!(apply(&mut early, &advert("c", 1, 5, &["text/upper"])), Applied::Stale);
    assert!(early.entries().is_empty());
}

#[test]
fn withdrawal_of_the_live_local_node_is_refuted_by_a_newer_version() {
    let mut cat = catalog();
    cat.set_local(vec![on("local", "echo/echo")]).unwrap();
    assert_eq!(apply(&mut cat, &withdraw("local", 1, 1)), Applied::Refuted);
    assert_eq!(functions(&cat), ["echo/echo@local"]);
    let CatalogDelta::Advert(mine) = cat.local_advert() else { panic!("local advert is an advert") };
    assert_eq!((mine.incarnation, mine.version), (1, 2));
    // A peer holding the withdrawal takes the refutation.
    let mut peer = ClusterCatalog::new(id("p"), ClusterId::new("alpha"), 1, CatalogConfig::default());
    apply(&mut peer, &withdraw("local", 1, 1));
    let refutation = cat.local_advert();
    assert_eq!(apply(&mut peer, &refutation), Applied::Accepted);
    assert_eq!(functions(&peer), ["echo/echo@local"]);
    // Our own old process and our own advert are no reason to refute.
    assert_eq!(apply(&mut cat, &withdraw("local", 0, 7)), Applied::Stale);
    assert_eq!(apply(&mut cat, &refutation), Applied::Duplicate);
}

#[test]
fn set_local_bumps_the_version_only_when_the_entry_set_changes() {
    let mut cat = catalog();
    let two = vec![on("local", "math/add"), on("local", "echo/echo")];
    let first = cat.set_local(two.clone()).unwrap().unwrap();
    assert_eq!(first.stamp().version, 1);
    let reordered: Vec<CatalogEntry> = two.into_iter().rev().collect();
    assert_eq!(cat.set_local(reordered).unwrap(), None);
    let second = cat.set_local(vec![on("local", "math/add")]).unwrap().unwrap();
    assert_eq!(second.stamp().version, 2);
    assert_eq!(functions(&cat), ["math/add@local"]);
    assert_eq!(cat.leave(), withdraw("local", 1, 2));
}

#[test]
fn expiry_withdraws_silent_nodes_but_never_the_local_one() {
    let mut cat = catalog();
    cat.set_local(vec![on("local", "echo/echo")]).unwrap();
    cat.apply(Millis(0), advert("b", 1, 1, &["math/add"])).unwrap();
    cat.apply(Millis(0), advert("c", 1, 1, &["text/upper"])).unwrap();
    assert_eq!(cat.refresh(Millis(5 * SEC), &id("b"), 1, 1), Refresh::Refreshed);
    assert_eq!(cat.next_timeout(), Some(Millis(10 * SEC)));
    assert_eq!(cat.expire(Millis(10 * SEC)), [id("c")]);
    assert_eq!(functions(&cat), ["math/add@b", "echo/echo@local"]);
    assert_eq!(cat.expire(Millis(100 * SEC)), [id("b")]);
    assert_eq!(functions(&cat), ["echo/echo@local"]);
    // The expiry is a withdrawal peers still holding the advert will learn.
    let lagging = [(id("b"), advert("b", 1, 1, &[]).stamp())];
    assert_eq!(cat.missing_from(&lagging)[0], withdraw("b", 1, 1));
}

#[test]
fn refresh_reports_stamps_this_catalog_lacks_and_ignores_older_ones() {
    let mut cat = catalog();
    assert_eq!(cat.refresh(Millis(0), &id("b"), 1, 1), Refresh::Missing);
    cat.apply(Millis(0), advert("b", 1, 2, &["math/add"])).unwrap();
    assert_eq!(cat.refresh(Millis(1), &id("b"), 1, 1), Refresh::Refreshed);
    assert_eq!(cat.refresh(Millis(1), &id("b"), 1, 3), Refresh::Missing);
    assert_eq!(cat.refresh(Millis(1), &id("b"), 2, 0), Refresh::Missing);
    assert_eq!(cat.refresh(Millis(1), &id("b"), 0, 9), Refresh::Ignored);
    assert_eq!(cat.refresh(Millis(1), &id("local"), 1, 0), Refresh::Ignored);
    cat.withdraw(Millis(2), &id("b")).unwrap();
    assert_eq!(cat.refresh(Millis(3), &id("b"), 1, 2), Refresh::Ignored);
}

#[test]
fn tombstones_are_forgotten_after_their_ttl_and_capped_oldest_first() {
    let config =
        CatalogConfig { max_tombstones: 2, tombstone_ttl: Duration::from_secs(60), ..CatalogConfig::default() };
    let mut cat = catalog_with(config);
    for (t, node) in ["b", "c", "d"].iter().enumerate() {
        cat.apply(Millis(t as u64), withdraw(node, 1, 1)).unwrap();
    }
    let known: Vec<NodeId> = cat.digest().into_iter().map(|(n, _)| n).collect();
    assert_eq!(known, [id("c"), id("d"), id("local")]);
    cat.expire(Millis(60 * SEC + 1));
    assert_eq!(cat.digest().len(), 2, "c withdrawn at 1 ms has just expired");
    cat.expire(Millis(61 * SEC));
    assert_eq!(cat.digest(), [(id("local"), cat.local.stamp())]);
}

#[test]
fn adverts_over_the_entry_limit_or_beyond_the_member_limit_are_rejected() {
    let config = CatalogConfig { max_entries_per_node: 2, max_members: 2, ..CatalogConfig::default() };
    let mut cat = catalog_with(config);
    let big = advert("b", 1, 1, &["a/a", "a/b", "a/c"]);
    let e = cat.apply(Millis(0), big).unwrap_err();
    assert!(matches!(e, CatalogError::TooManyEntries { count: 3, max: 2, .. }), "{e}");
    assert!(e.to_string().contains("more than the limit of 2"), "{e}");
    let locals = vec![on("local", "a/a"), on("local", "a/b"), on("local", "a/c")];
    assert!(cat.set_local(locals).is_err());

    cat.apply(Millis(0), advert("b", 1, 1, &["a/a"])).unwrap();
    let e = cat.apply(Millis(0), advert("c", 1, 1, &[])).unwrap_err();
    assert_eq!(e, CatalogError::TooManyMembers { node: id("c"), max: 2 });
    // Replacing a member's advert is not a new member.
    assert_eq!(apply(&mut cat, &advert("b", 2, 1, &[])), Applied::Accepted);
    assert!(cat.entries().is_empty());
}

#[test]
fn adverts_carrying_entries_of_another_node_or_cluster_are_rejected() {
    let mut cat = catalog();
    let mut forged = NodeAdvert {
        node: id("b"),
        cluster: ClusterId::new("alpha"),
        incarnation: 1,
        version: 1,
        entries: vec![on("c", "echo/echo")],
    };
    let e = cat.apply(Millis(0), CatalogDelta::Advert(forged.clone())).unwrap_err();
    assert!(e.to_string().contains("only its own entries"), "{e}");
    forged.entries = vec![on("b", "echo/echo")];
    forged.cluster = ClusterId::new("beta");
    assert!(matches!(cat.apply(Millis(0), CatalogDelta::Advert(forged)), Err(CatalogError::ForeignEntry { .. })));
    assert!(cat.set_local(vec![on("b", "echo/echo")]).is_err());
}

#[test]
fn snapshot_applied_to_an_empty_catalog_yields_the_same_entries_and_digest() {
    let mut full = catalog();
    full.set_local(vec![on("local", "echo/echo")]).unwrap();
    apply(&mut full, &advert("b", 1, 3, &["math/add", "math/divide"]));
    apply(&mut full, &withdraw("c", 2, 1));
    let wire = serde_json::to_string(&full.snapshot()).unwrap();
    let snapshot: CatalogSnapshot = serde_json::from_str(&wire).unwrap();

    let mut joiner = ClusterCatalog::new(id("new"), ClusterId::new("alpha"), 1, CatalogConfig::default());
    let outcomes = joiner.apply_snapshot(Millis(0), snapshot);
    assert!(outcomes.iter().all(|o| o == &Ok(Applied::Accepted)), "{outcomes:?}");
    let own = (id("new"), joiner.local.stamp());
    let without_own: Vec<_> = joiner.digest().into_iter().filter(|d| *d != own).collect();
    assert_eq!(without_own, full.digest());
    assert_eq!(joiner.entries(), full.entries());
    assert_eq!(joiner.advert(&id("b")), full.advert(&id("b")));
    assert_eq!(joiner.advert(&id("c")), None, "c is withdrawn");
}

#[test]
fn a_snapshot_split_into_parts_under_a_size_applies_as_the_whole() {
    let mut full = catalog();
    for n in 0..20 {
        apply(&mut full, &advert(&format!("n{n}"), 1, 1, &["echo/echo", "text/upper", "math/add"]));
    }
    let whole = full.snapshot();
    let largest = whole.deltas.iter().map(|d| serde_json::to_vec(d).unwrap().len()).max().unwrap();
    let budget = largest * 3 + 10;
    let parts = whole.clone().split(budget);
    assert!((7..=8).contains(&parts.len()), "about 3 deltas a part: {}", parts.len());
    assert!(parts.iter().all(|p| serde_json::to_vec(p).unwrap().len() <= budget + 20));
    assert_eq!(parts.iter().flat_map(|p| p.deltas.clone()).collect::<Vec<_>>(), whole.deltas);
    // A delta over the size is a part of its own; nothing is lost.
    assert_eq!(whole.clone().split(1).len(), whole.deltas.len());
    assert_eq!(CatalogSnapshot::default().split(100), vec![CatalogSnapshot::default()]);
}

#[test]
fn missing_from_sends_what_the_peer_lacks_and_withdrawals_only_to_holders() {
    let mut cat = catalog();
    apply(&mut cat, &advert("b", 1, 3, &["math/add"]));
    apply(&mut cat, &withdraw("c", 1, 1));
    let empty = cat.missing_from(&[]);
    assert_eq!(empty.iter().map(CatalogDelta::node).collect::<Vec<_>>(), [&id("b"), &id("local")]);
    let peer = [
        (id("b"), advert("b", 1, 3, &[]).stamp()),
        (id("c"), advert("c", 1, 1, &[]).stamp()),
        (id("local"), cat.local.stamp()),
    ];
    assert_eq!(cat.missing_from(&peer), [withdraw("c", 1, 1)]);
    assert!(cat.missing_from(&cat.digest()).is_empty());
}

#[test]
fn deltas_round_trip_through_json_with_a_kind_tag() {
    let d = advert("b", 1, 2, &["echo/echo"]);
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["kind"], "advert");
    assert_eq!(serde_json::from_value::<CatalogDelta>(v).unwrap(), d);
    let w = withdraw("b", 1, 2);
    let v = serde_json::to_value(&w).unwrap();
    assert_eq!(v, serde_json::json!({"kind": "withdraw", "node": "b", "incarnation": 1, "version": 2}));
    assert_eq!(serde_json::from_value::<CatalogDelta>(v).unwrap(), w);
}

// ---- convergence under reordering and duplication -------------------------

const NODES: [&str; 3] = ["b", "c", "d"];

/// A delta from a small universe; a stamp always names the same entry set.
fn delta_strategy() -> impl Strategy<Value = CatalogDelta> {
    (any::<bool>(), 0..NODES.len(), 0u64..3, 0u64..4).prop_map(|(adv, n, inc, ver)| {
        if adv {
            let fns: Vec<String> = (0..ver % 3).map(|i| format!("p{inc}v{ver}/f{i}")).collect();
            let fns: Vec<&str> = fns.iter().map(String::as_str).collect();
            advert(NODES[n], inc, ver, &fns)
        } else {
            withdraw(NODES[n], inc, ver)
        }
    })
}

/// The deltas, and two deliveries of them: each shuffled, with duplicates.
fn deliveries() -> impl Strategy<Value = (Vec<CatalogDelta>, Vec<CatalogDelta>, Vec<CatalogDelta>)> {
    (
        proptest::collection::vec(delta_strategy(), 1..24),
        proptest::collection::vec(any::<Index>(), 0..12),
        proptest::collection::vec(any::<Index>(), 0..12),
    )
        .prop_flat_map(|(deltas, dups_a, dups_b)| {
            let with = |dups: &[Index]| {
                let mut out = deltas.clone();
                out.extend(dups.iter().map(|i| deltas[i.index(deltas.len())].clone()));
                Just(out).prop_shuffle()
            };
            (Just(deltas.clone()), with(&dups_a), with(&dups_b))
        })
}

proptest! {
    #[test]
    fn any_permutation_with_duplicates_converges_to_the_highest_stamp_per_node(
        (deltas, first, second) in deliveries()
    ) {
        let run = |ds: &[CatalogDelta]| {
            let mut cat = catalog();
            for d in ds {
                cat.apply(Millis(0), d.clone()).unwrap();
            }
            cat
        };
        let (a, b) = (run(&first), run(&second));
        let mut ordered = deltas.clone();
        ordered.sort_by_key(CatalogDelta::stamp);
        let c = run(&ordered);
        prop_assert_eq!(a.entries(), b.entries());
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.entries(), c.entries());
        prop_assert_eq!(a.digest(), c.digest());

        // The model: per node, the delta with the highest stamp.
        let mut best: BTreeMap<NodeId, CatalogDelta> = BTreeMap::new();
        for d in deltas {
            if best.get(d.node()).is_none_or(|b| b.stamp() < d.stamp()) {
                best.insert(d.node().clone(), d);
            }
        }
        let expected: Vec<CatalogEntry> = best
            .values()
            .filter_map(|d| match d {
                CatalogDelta::Advert(a) => Some(a.entries.clone()),
                CatalogDelta::Withdraw { .. } => None,
            })
            .flatten()
            .collect();
        prop_assert_eq!(a.entries(), expected);
    }
}

// ---- simulation: three catalogs over a lossy, reordering network ----------

/// splitmix64: a seeded, dependency-free source of test randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

enum Msg {
    Delta(CatalogDelta),
    Digest { from: usize, digest: Vec<(NodeId, Stamp)> },
}

/// Drops 30% of messages and delivers the rest in random order.
struct Net {
    rng: Rng,
    in_flight: Vec<(usize, Msg)>,
}

impl Net {
    fn send(&mut self, to: usize, msg: Msg) {
        if !self.rng.chance(30) {
            self.in_flight.push((to, msg));
        }
    }

    fn broadcast(&mut self, from: usize, delta: &CatalogDelta) {
        for to in (0..3).filter(|&to| to != from) {
            self.send(to, Msg::Delta(delta.clone()));
        }
    }

    /// Delivers up to `n` messages picked at random; replies go back in flight.
    fn deliver(&mut self, nodes: &mut [ClusterCatalog], now: Millis, n: usize) {
        for _ in 0..n {
            if self.in_flight.is_empty() {
                return;
            }
            let pick = self.rng.below(self.in_flight.len());
            let (to, msg) = self.in_flight.swap_remove(pick);
            match msg {
                Msg::Delta(d) => {
                    if nodes[to].apply(now, d).unwrap() == Applied::Refuted {
                        let mine = nodes[to].local_advert();
                        self.broadcast(to, &mine);
                    }
                }
                Msg::Digest { from, digest } => {
                    for d in nodes[to].missing_from(&digest) {
                        self.send(from, Msg::Delta(d));
                    }
                }
            }
        }
    }
}

const POOL: [&str; 5] = ["echo/echo", "echo/concat", "math/add", "text/upper", "text/split"];

fn random_entries(rng: &mut Rng, node: &str) -> Vec<CatalogEntry> {
    POOL.iter().filter(|_| rng.chance(50)).map(|f| on(node, f)).collect()
}

#[test]
fn three_catalogs_over_a_lossy_reordering_network_converge_after_anti_entropy() {
    let names = ["a", "b", "c"];
    let mut repaired = 0;
    for seed in 0..50 {
        let mut net = Net { rng: Rng(seed), in_flight: Vec::new() };
        let fresh = |i: usize, incarnation| {
            ClusterCatalog::new(id(names[i]), ClusterId::new("alpha"), incarnation, CatalogConfig::default())
        };
        let mut nodes: Vec<ClusterCatalog> = (0..3).map(|i| fresh(i, 1)).collect();

        // Churn: entry sets change, c restarts with a new incarnation while
        // its old adverts are still in flight; delivery lags behind.
        for step in 0..40u64 {
            let i = net.rng.below(3);
            if step == 20 {
                nodes[2] = fresh(2, 2);
            }
            let entries = random_entries(&mut net.rng, names[i]);
            if let Some(delta) = nodes[i].set_local(entries).unwrap() {
                net.broadcast(i, &delta);
            }
            let n = net.rng.below(3);
            net.deliver(&mut nodes, Millis(step), n);
        }

        // Anti-entropy: every node sends its digest to every other one.
        let expected: Vec<CatalogEntry> = nodes.iter().flat_map(|c| c.local.entries.clone()).collect();
        let converged =
            |nodes: &[ClusterCatalog]| nodes.iter().all(|c| c.entries() == expected && c.digest() == nodes[0].digest());
        let mut rounds = 0;
        while !converged(&nodes) {
            rounds += 1;
            assert!(rounds <= 30, "seed {seed}: not converged after 30 rounds");
            for (from, node) in nodes.iter().enumerate() {
                for to in (0..3).filter(|&to| to != from) {
                    net.send(to, Msg::Digest { from, digest: node.digest() });
                }
            }
            let now = Millis(100 + rounds);
            while !net.in_flight.is_empty() {
                net.deliver(&mut nodes, now, usize::MAX);
            }
        }
        repaired += usize::from(rounds > 0);
    }
    assert!(repaired > 25, "the network loses too little for the test to prove anything");
}

use proptest::prelude::*;

use super::*;

fn c(s: &str) -> ClusterId {
    ClusterId::new(s)
}

fn n(s: &str) -> NodeId {
    NodeId::new(s)
}

fn ann(path: &[&str]) -> Announcement {
    Announcement {
        destination: c(path.last().unwrap()),
        path: path.iter().map(|s| c(s)).collect(),
        hops: path.len() as u32 - 1,
        latency_us: 0,
        reliability: 1000,
        tags: vec![],
        ttl_ms: None,
    }
}

fn ok(_: &ClusterId) -> Result<(), String> {
    Ok(())
}

fn table() -> RouteTable {
    RouteTable::new(c("a"), RouteConfig::default())
}

const T0: Millis = Millis(1_000);

#[test]
fn routes_are_learnt_one_hop_further_and_exported_onwards_only_with_transit() {
    let mut t = table();
    let u = t.update(T0, &n("b1"), &c("b"), 1, vec![ann(&["b"]), ann(&["b", "c"])], ok).unwrap();
    assert_eq!(u.changed, [c("b"), c("c")]);
    let to_c = t.best(T0, &c("c")).unwrap();
    assert_eq!((to_c.hops, &to_c.via, &to_c.path), (2, &n("b1"), &vec![c("b"), c("c")]));

    // To a neighbour in cluster d: ourselves, plus (with transit) b and c through us.
    let own = Announcement { ttl_ms: Some(10_000), ..ann(&["a"]) };
    let plain = t.exports(T0, &c("d"), false);
    assert_eq!(plain, vec![own.clone()]);
    let transit = t.exports(T0, &c("d"), true);
    let paths: Vec<Vec<ClusterId>> = transit.iter().map(|a| a.path.clone()).collect();
    assert_eq!(paths, vec![vec![c("a")], vec![c("a"), c("b")], vec![c("a"), c("b"), c("c")]]);
    assert_eq!(transit[2].hops, 2);
    // Split horizon: nothing learnt from b goes back to b.
    assert_eq!(t.exports(T0, &c("b"), true), vec![own]);
}

#[test]
fn calls_go_the_way_the_cluster_announces_through_a_member_when_its_route_is_better() {
    let mut t = table();
    t.update(T0, &n("g1"), &c("g"), 1, vec![ann(&["g"]), ann(&["g", "d"])], ok).unwrap();
    assert_eq!(t.next_hops(T0).get(&c("d")), Some(&n("g1")));
    // Member a2 bridges d itself: one crossing instead of two.
    assert!(t.set_member_routes(&n("a2"), vec![ann(&["a", "d"])]));
    assert_eq!(t.next_hops(T0).get(&c("d")), Some(&n("a2")), "the way announced is the way taken");
    let announced = t.exports(T0, &c("x"), true);
    let to_d = announced.iter().find(|a| a.destination == c("d")).unwrap();
    assert_eq!(to_d.path, vec![c("a"), c("d")]);
    assert_eq!(t.next_hops(T0).get(&c("g")), Some(&n("g1")));
    assert!(t.leads_through(&n("g1"), &c("d")) && !t.leads_through(&n("a2"), &c("d")), "members announce nothing");
}

/// A neighbour carries traffic to what it announces, whatever this node's
/// own routing makes of it; its transit offers go only where the way back
/// is announced.
#[test]
fn a_neighbour_leads_to_what_it_announced_and_transit_needs_the_way_back() {
    let neighbours = [(c("b"), NeighbourRules { export: Some(vec![]), ..NeighbourRules::default() })];
    let config = RouteConfig { max_hops: 1, neighbours: neighbours.into(), ..RouteConfig::default() };
    let mut t = RouteTable::new(c("a"), config);
    let u = t.update(T0, &n("b1"), &c("b"), 1, vec![ann(&["b"]), ann(&["b", "g"])], ok).unwrap();
    assert_eq!(u.dropped.len(), 1, "g is over this node's hop limit");
    assert!(t.leads_through(&n("b1"), &c("g")), "but b1 carries traffic from there");
    t.update(T0, &n("g1"), &c("g"), 1, vec![ann(&["g"])], ok).unwrap();
    assert_eq!(t.carried_back(T0, &c("b")), [c("g")].into(), "g is told of b");
    assert!(t.carried_back(T0, &c("g")).is_empty(), "b is told of nothing (routing.neighbours.b.export = [])");
    t.drop_neighbour(T0, &n("b1"));
    assert!(!t.leads_through(&n("b1"), &c("g")));
}

#[test]
fn a_reloaded_policy_withdraws_the_routes_across_a_cluster_it_refuses_at_once() {
    let mut t = table();
    t.update(T0, &n("b1"), &c("b"), 1, vec![ann(&["b"]), ann(&["b", "c"]), ann(&["b", "c", "d"])], ok).unwrap();
    let changed = t.refuse(T0, |cl| cl.as_str() != "c");
    assert_eq!(changed, [c("c"), c("d")], "c and everything behind it");
    assert!(t.best(T0, &c("d")).is_none());
    assert_eq!(t.best(T0, &c("b")).map(|r| r.hops), Some(1), "b's own route stays");
}

#[test]
fn loops_foreign_paths_long_paths_and_refused_clusters_are_dropped() {
    let mut t = RouteTable::new(c("a"), RouteConfig { max_hops: 3, ..RouteConfig::default() });
    let deny_x = |cl: &ClusterId| if cl.as_str() == "x" { Err("blocked".to_owned()) } else { Ok(()) };
    let u = t
        .update(
            T0,
            &n("b1"),
            &c("b"),
            1,
            vec![
                ann(&["b", "a", "c"]),      // passes through us
                ann(&["z", "c"]),           // does not start at the announcer
                ann(&["b", "c", "d", "e"]), // 4 hops from here
                ann(&["b", "x", "y"]),      // through a refused cluster
                ann(&["b", "c", "b", "d"]), // a cluster twice
                ann(&["b", "c"]),
            ],
            deny_x,
        )
        .unwrap();
    let reasons: Vec<&str> = u.dropped.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[0].contains("loop") && reasons[1].contains("does not start"), "{reasons:?}");
    assert!(reasons[2].contains("hop limit") && reasons[3].contains("cluster x") && reasons[4].contains("twice"));
    assert_eq!(t.winners(T0).keys().cloned().collect::<Vec<_>>(), [c("c")]);
    // Why the route to y was not taken stays on record for explain, until
    // the neighbour's next update or its link goes.
    let refused = t.explain(T0, &c("y")).refused;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].0 == n("b1") && refused[0].1.contains("cluster x on its path is refused"), "{refused:?}");
    t.update(T0, &n("b1"), &c("b"), 2, vec![ann(&["b", "x", "y"])], deny_x).unwrap();
    assert_eq!(t.refused_routes(&c("y")).len(), 1);
    t.update(T0, &n("b1"), &c("b"), 3, vec![ann(&["b", "c"])], ok).unwrap();
    assert!(t.refused_routes(&c("y")).is_empty(), "no longer announced");
    t.update(T0, &n("b1"), &c("b"), 4, vec![ann(&["b", "x", "y"])], deny_x).unwrap();
    t.drop_neighbour(T0, &n("b1"));
    assert!(t.refused_routes(&c("y")).is_empty(), "its link is gone");
}

#[test]
fn selection_is_by_hops_latency_reliability_then_advertiser_and_is_explained() {
    let mut t = table();
    let slow = Announcement { latency_us: 9_000, ..ann(&["b", "d"]) };
    let fast = Announcement { latency_us: 1_000, ..ann(&["c", "d"]) };
    let long = ann(&["e", "f", "d"]);
    t.update(T0, &n("b1"), &c("b"), 1, vec![slow], ok).unwrap();
    t.update(T0, &n("c1"), &c("c"), 1, vec![fast.clone()], ok).unwrap();
    t.update(T0, &n("e1"), &c("e"), 1, vec![long], ok).unwrap();
    t.update(T0, &n("c0"), &c("c"), 1, vec![fast], ok).unwrap();
    let e = t.explain(T0, &c("d"));
    assert_eq!(e.winner.unwrap().via, n("c0"), "same metrics: the smaller advertiser id wins");
    let why: BTreeMap<String, String> = e.losers.into_iter().map(|(r, why)| (r.via.to_string(), why)).collect();
    assert!(why["c1"].contains("advertiser"), "{why:?}");
    assert!(why["b1"].contains("latency"), "{why:?}");
    assert!(why["e1"].contains("more hops"), "{why:?}");

    let less_reliable = Announcement { reliability: 900, ..ann(&["g", "h"]) };
    t.update(T0, &n("g1"), &c("g"), 1, vec![less_reliable], ok).unwrap();
    t.update(T0, &n("i1"), &c("i"), 1, vec![ann(&["i", "h"])], ok).unwrap();
    assert_eq!(t.best(T0, &c("h")).unwrap().via, n("i1"));
}

#[test]
fn omission_withdraws_and_stale_epochs_and_floods_are_refused() {
    let mut t = table();
    t.update(T0, &n("b1"), &c("b"), 5, vec![ann(&["b"]), ann(&["b", "c"])], ok).unwrap();
    let u = t.update(T0, &n("b1"), &c("b"), 6, vec![ann(&["b"])], ok).unwrap();
    assert_eq!(u.changed, [c("c")], "c is no longer announced: withdrawn");
    assert!(t.best(T0, &c("c")).is_none());
    let stale = t.update(T0, &n("b1"), &c("b"), 4, vec![ann(&["b"]), ann(&["b", "c"])], ok).unwrap_err();
    assert!(matches!(stale, RouteError::StaleEpoch { epoch: 4, seen: 6, .. }));
    let again = t.update(T0, &n("b1"), &c("b"), 6, vec![ann(&["b"]), ann(&["b", "c"])], ok).unwrap_err();
    assert!(matches!(again, RouteError::StaleEpoch { epoch: 6, seen: 6, .. }), "an equal epoch is a copy");
    assert!(t.best(T0, &c("c")).is_none());
    let flood: Vec<Announcement> = (0..1001).map(|i| ann(&["b", &format!("x{i}")])).collect();
    assert!(matches!(t.update(T0, &n("b1"), &c("b"), 7, flood, ok), Err(RouteError::TooMany { .. })));
    assert!(t.best(T0, &c("b")).is_some(), "a refused update changes nothing");
    t.forget_epoch(&c("b"), &n("b1"));
    t.update(T0, &n("b1"), &c("b"), 2, vec![ann(&["b"]), ann(&["b", "c"])], ok).unwrap();
    assert!(t.best(T0, &c("c")).is_some(), "after forget_epoch any epoch is taken");
}

/// An epoch shuts out only the node that earned it: a node of another
/// cluster under the same id, with an epoch far ahead, leaves the real
/// node's updates taken.
#[test]
fn an_epoch_belongs_to_a_node_of_one_cluster() {
    let mut t = table();
    t.update(T0, &n("h1"), &c("evil"), u64::MAX - 1, vec![ann(&["evil"])], ok).unwrap();
    t.drop_neighbour(T0, &n("h1"));
    t.update(T0, &n("h1"), &c("g"), 1, vec![ann(&["g"])], ok).unwrap();
    assert!(t.best(T0, &c("g")).is_some());
    let replay = t.update(T0, &n("h1"), &c("evil"), u64::MAX - 1, vec![ann(&["evil"])], ok).unwrap_err();
    assert!(matches!(replay, RouteError::StaleEpoch { .. }), "the other node's epoch is still kept");
}

/// The epochs of nodes whose links are gone are kept, within a bound:
/// the lowest goes first, and never one of a linked neighbour.
#[test]
fn epochs_of_gone_neighbours_are_kept_within_a_bound() {
    let mut t = table();
    t.update(T0, &n("linked"), &c("b"), 1, vec![ann(&["b"])], ok).unwrap();
    for i in 0..MAX_EPOCHS as u64 {
        let node = n(&format!("b{i}"));
        t.update(T0, &node, &c("b"), 100 + i, vec![ann(&["b"])], ok).unwrap();
        t.drop_neighbour(T0, &node);
    }
    assert_eq!(t.epochs.len(), MAX_EPOCHS);
    let key = |node: &str| (c("b"), n(node));
    assert!(!t.epochs.contains_key(&key("b0")) && t.epochs.contains_key(&key("b1")), "the lowest of the gone went");
    assert_eq!(t.epochs.get(&key("linked")), Some(&1), "a linked neighbour's stays, however low");
    let replay = t.update(T0, &n("b1"), &c("b"), 101, vec![ann(&["b"])], ok).unwrap_err();
    assert!(matches!(replay, RouteError::StaleEpoch { seen: 101, .. }), "a kept epoch still refuses a replay");
}

/// A neighbour cannot make a route look shorter than its path.
#[test]
fn hops_that_disagree_with_the_path_are_refused() {
    let mut t = RouteTable::new(c("a"), RouteConfig { max_hops: 2, ..RouteConfig::default() });
    let short = |path: &[&str]| Announcement { hops: 0, ..ann(path) };
    let u = t.update(T0, &n("b1"), &c("b"), 1, vec![short(&["b", "c", "d", "e"]), short(&["b", "c"])], ok).unwrap();
    let reasons: Vec<&str> = u.dropped.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons, ["it claims 0 hops, but its path crosses 3", "it claims 0 hops, but its path crosses 1"]);
    assert!(t.winners(T0).is_empty());
    t.update(T0, &n("b1"), &c("b"), 2, vec![ann(&["b", "c"])], ok).unwrap();
    assert_eq!(t.best(T0, &c("c")).unwrap().hops, 2);
}

#[test]
fn a_lost_neighbour_or_silence_withdraws_its_routes_and_the_other_way_takes_over() {
    let mut t = table();
    t.update(T0, &n("b1"), &c("b"), 1, vec![ann(&["b", "d"])], ok).unwrap();
    t.update(T0, &n("c1"), &c("c"), 1, vec![ann(&["c", "e", "d"])], ok).unwrap();
    assert_eq!(t.best(T0, &c("d")).unwrap().via, n("b1"));
    assert_eq!(t.drop_neighbour(T0, &n("b1")), [c("d")]);
    assert_eq!(t.best(T0, &c("d")).unwrap().via, n("c1"), "failover to the longer way");
    let later = T0.saturating_add(Duration::from_secs(11));
    assert_eq!(t.expire(later), [c("d")], "unrefreshed routes expire after route_ttl");
    assert!(t.winners(later).is_empty());
}

#[test]
fn members_routes_are_exported_with_transit_so_transit_can_span_two_nodes() {
    // a1 bridges b; its member a2 bridges c (and d behind c).
    let mut a2 = table();
    a2.update(T0, &n("c1"), &c("c"), 1, vec![ann(&["c"]), ann(&["c", "d"])], ok).unwrap();
    let shared = a2.shared(T0);
    let paths: Vec<Vec<ClusterId>> = shared.iter().map(|a| a.path.clone()).collect();
    assert_eq!(paths, [vec![c("a"), c("c")], vec![c("a"), c("c"), c("d")]]);

    let mut a1 = table();
    a1.update(T0, &n("b1"), &c("b"), 1, vec![ann(&["b"])], ok).unwrap();
    assert!(a1.set_member_routes(&n("a2"), shared.clone()));
    assert!(!a1.set_member_routes(&n("a2"), shared.clone()), "the same set again changes nothing");
    let to_b: Vec<(ClusterId, u32)> =
        a1.exports(T0, &c("b"), true).into_iter().map(|a| (a.destination, a.hops)).collect();
    assert_eq!(to_b, [(c("a"), 0), (c("c"), 1), (c("d"), 2)]);
    assert_eq!(a1.exports(T0, &c("b"), false).len(), 1, "without transit only this cluster");
    // Members' routes are never shared on (only a node's own), nor sent back
    // into the cluster they lead to.
    assert_eq!(a1.shared(T0).len(), 1);
    let to_c: Vec<ClusterId> = a1.exports(T0, &c("c"), true).into_iter().map(|a| a.destination).collect();
    assert_eq!(to_c, [c("a"), c("b")]);

    // This node's own route wins a tie; a member's shorter one wins.
    a1.update(T0, &n("b1"), &c("b"), 2, vec![ann(&["b"]), ann(&["b", "d"])], ok).unwrap();
    let to_e = a1.exports(T0, &c("e"), true);
    assert_eq!(to_e.iter().find(|a| a.destination == c("d")).unwrap().path, [c("a"), c("b"), c("d")]);
    a1.update(T0, &n("b1"), &c("b"), 3, vec![ann(&["b"]), ann(&["b", "x", "d"])], ok).unwrap();
    let to_e = a1.exports(T0, &c("e"), true);
    assert_eq!(to_e.iter().find(|a| a.destination == c("d")).unwrap().path, [c("a"), c("c"), c("d")]);

    // Routes that do not start here or come back here are left out; a
    // member that is gone takes its routes with it.
    let odd = vec![ann(&["c", "d"]), ann(&["a", "c", "a"])];
    assert!(!a1.set_member_routes(&n("a3"), odd) && a1.forget_member(&n("a2")));
    assert_eq!(a1.exports(T0, &c("e"), true).len(), 3, "a, b and d through b");
}

#[test]
fn a_flapping_route_is_held_down_then_released() {
    let mut t = RouteTable::new(
        c("a"),
        RouteConfig { flap_threshold: 3, hold_down: Duration::from_secs(30), ..RouteConfig::default() },
    );
    t.update(T0, &n("c1"), &c("c"), 1, vec![ann(&["c", "x", "d"])], ok).unwrap();
    let mut now = T0;
    for epoch in 0..3 {
        now = now.saturating_add(Duration::from_secs(1));
        t.update(now, &n("b1"), &c("b"), 2 * epoch + 1, vec![ann(&["b", "d"])], ok).unwrap();
        t.drop_neighbour(now, &n("b1"));
    }
    t.update(now, &n("b1"), &c("b"), 99, vec![ann(&["b", "d"])], ok).unwrap();
    assert_eq!(t.best(now, &c("d")).unwrap().via, n("c1"), "the flapping short route is held down");
    assert!(t.explain(now, &c("d")).losers[0].1.contains("held down"));
    t.expire(now);
    let released = now.saturating_add(Duration::from_secs(31));
    t.update(released, &n("b1"), &c("b"), 100, vec![ann(&["b", "d"])], ok).unwrap();
    t.update(released, &n("c1"), &c("c"), 2, vec![ann(&["c", "x", "d"])], ok).unwrap();
    assert_eq!(t.expire(released), [c("d")], "the end of a hold-down is a change to announce");
    assert_eq!(t.best(released, &c("d")).unwrap().via, n("b1"), "released after the hold-down");
}

#[test]
fn a_route_held_down_still_carries_this_nodes_calls_when_it_is_the_only_one() {
    let mut t = RouteTable::new(
        c("a"),
        RouteConfig { flap_threshold: 3, hold_down: Duration::from_secs(30), ..RouteConfig::default() },
    );
    let mut now = T0;
    for epoch in 0..3 {
        now = now.saturating_add(Duration::from_secs(1));
        t.update(now, &n("b1"), &c("b"), 2 * epoch + 1, vec![ann(&["b", "d"])], ok).unwrap();
        assert!(t.take_new_holds().is_empty(), "not held down before the third withdrawal");
        t.drop_neighbour(now, &n("b1"));
    }
    assert_eq!(t.take_new_holds(), [(c("d"), n("b1"))], "the third withdrawal begins a hold-down");
    t.update(now, &n("b1"), &c("b"), 99, vec![ann(&["b", "d"])], ok).unwrap();
    // It neither wins nor is passed on, but calls from here still take it.
    assert!(t.best(now, &c("d")).is_none() && t.winners(now).is_empty());
    assert_eq!(t.exports(now, &c("x"), true).len(), 1, "only the own cluster is announced");
    let way = t.way(now, &c("d")).unwrap();
    assert!(way.held(now) && way.via == n("b1"));
    assert_eq!(t.next_hops(now).get(&c("d")), Some(&n("b1")));
    // Coming and going again while held down is not news a second time.
    t.drop_neighbour(now, &n("b1"));
    t.update(now, &n("b1"), &c("b"), 100, vec![ann(&["b", "d"])], ok).unwrap();
    assert!(t.take_new_holds().is_empty());
    // An eligible route, even a longer one, comes first.
    t.update(now, &n("c1"), &c("c"), 1, vec![ann(&["c", "x", "d"])], ok).unwrap();
    assert_eq!(t.way(now, &c("d")).unwrap().via, n("c1"));
    assert_eq!(t.next_hops(now).get(&c("d")), Some(&n("c1")));
}

#[test]
fn neighbour_rules_filter_imports_and_exports_and_ttls_are_honoured() {
    let rules = NeighbourRules {
        max_hops: Some(2),
        deny_on_path: vec![c("x")],
        require_tags: vec!["eu".into()],
        export: Some(vec![c("d")]),
    };
    let config = RouteConfig {
        tags: vec!["home".into()],
        neighbours: BTreeMap::from([(c("b"), rules)]),
        ..RouteConfig::default()
    };
    let mut t = RouteTable::new(c("a"), config);
    let eu = |path: &[&str]| Announcement { tags: vec!["eu".into()], ..ann(path) };
    let u = t
        .update(T0, &n("b1"), &c("b"), 1, vec![eu(&["b"]), eu(&["b", "c", "d"]), eu(&["b", "x"]), ann(&["b", "e"])], ok)
        .unwrap();
    let reasons: Vec<&str> = u.dropped.iter().map(|d| d.reason.as_str()).collect();
    assert!(reasons[0].contains("hop limit for routes from b (2)"), "{reasons:?}");
    assert!(reasons[1].contains("deny_on_path") && reasons[2].contains("require_tags"), "{reasons:?}");
    assert_eq!(t.winners(T0).keys().cloned().collect::<Vec<_>>(), [c("b")]);
    // Other neighbours are not bound by b's rules; exports to b offer only d.
    t.update(T0, &n("f1"), &c("f"), 1, vec![ann(&["f", "d"]), ann(&["f", "g"])], ok).unwrap();
    let to_b: Vec<ClusterId> = t.exports(T0, &c("b"), true).into_iter().map(|a| a.destination).collect();
    assert_eq!(to_b, [c("a"), c("d")]);
    let own = &t.exports(T0, &c("f"), true)[0];
    assert_eq!((own.tags.clone(), own.ttl_ms), (vec!["home".to_owned()], Some(10_000)));
    // An announcer's shorter TTL wins over ours.
    let short = Announcement { ttl_ms: Some(2_000), ..ann(&["h"]) };
    t.update(T0, &n("h1"), &c("h"), 1, vec![short], ok).unwrap();
    assert_eq!(t.expire(T0.saturating_add(Duration::from_secs(3))), [c("h")]);
}

#[test]
fn measured_links_add_latency_and_scale_reliability() {
    let mut t = table();
    t.set_link(&n("b1"), 3_000, 900);
    t.set_link(&n("c1"), 1_000, 1000);
    t.update(
        T0,
        &n("b1"),
        &c("b"),
        1,
        vec![Announcement { latency_us: 500, reliability: 500, ..ann(&["b", "d"]) }],
        ok,
    )
    .unwrap();
    t.update(T0, &n("c1"), &c("c"), 1, vec![ann(&["c", "d"])], ok).unwrap();
    let via_b = t.all().into_iter().find(|r| r.via == n("b1")).unwrap();
    assert_eq!((via_b.latency_us, via_b.reliability), (3_500, 450));
    assert_eq!(t.best(T0, &c("d")).unwrap().via, n("c1"), "same hops: the faster link wins");
    // Exported onwards, a route carries what was measured on the way.
    assert_eq!(t.exports(T0, &c("e"), true).iter().find(|a| a.destination == c("d")).unwrap().latency_us, 1_000);
    // Jitter within a millisecond does not change the choice.
    t.set_link(&n("e1"), 1_200, 1000);
    t.update(T0, &n("e1"), &c("e"), 1, vec![ann(&["e", "d"])], ok).unwrap();
    assert_eq!(t.best(T0, &c("d")).unwrap().via, n("c1"));
    let why = t.explain(T0, &c("d")).losers.into_iter().find(|(r, _)| r.via == n("e1")).unwrap().1;
    assert!(why.contains("advertiser"), "{why}");
}

proptest! {
    /// The winners depend on what was announced, not on the order neighbours' updates arrived in.
    #[test]
    fn selection_does_not_depend_on_arrival_order(
        updates in prop::collection::vec((0usize..4, prop::collection::vec((0usize..4, 0u64..3, 0u16..3), 1..4)), 1..6),
        seed in any::<u64>(),
    ) {
        let names = ["b", "c", "d", "e"];
        let build = |order: &[usize]| {
            let mut t = table();
            for &i in order {
                let (from, routes) = &updates[i];
                let anns: Vec<Announcement> = routes.iter().map(|&(dest, lat, rel)| {
                    let mut path = vec![names[*from]];
                    if dest != *from { path.push(names[dest]); }
                    Announcement { latency_us: lat, reliability: 998 + rel, ..ann(&path) }
                }).collect();
                let via = n(&format!("{}{}", names[*from], i));
                t.update(T0, &via, &c(names[*from]), 1, anns, ok).unwrap();
            }
            t.winners(T0)
        };
        let forward: Vec<usize> = (0..updates.len()).collect();
        let mut shuffled = forward.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let strip = |w: BTreeMap<ClusterId, Route>| -> Vec<(ClusterId, NodeId, u32)> {
            w.into_values().map(|r| (r.destination, r.via, r.hops)).collect()
        };
        prop_assert_eq!(strip(build(&forward)), strip(build(&shuffled)));
    }
}

/// A transit node exports no more routes than a neighbour takes in one
/// update, the nearest first: past that the neighbour refused every route
/// of the node. And a route's tags are bounded, since they travel on.
#[test]
fn exports_keep_to_the_neighbour_limit_and_tags_are_bounded() {
    let mut t = RouteTable::new(c("a"), RouteConfig { max_routes_per_neighbour: 4, ..RouteConfig::default() });
    t.update(T0, &n("b1"), &c("b"), 1, vec![ann(&["b"]), ann(&["b", "x", "far0"]), ann(&["b", "x", "far1"])], ok)
        .unwrap();
    t.update(T0, &n("e1"), &c("e"), 1, vec![ann(&["e"]), ann(&["e", "near"])], ok).unwrap();
    let exported: Vec<String> = t.exports(T0, &c("d"), true).into_iter().map(|a| a.destination.to_string()).collect();
    assert_eq!(exported, ["a", "b", "e", "near"], "its own route, then the nearest");

    let tagged = |tags: Vec<String>| Announcement { tags, ..ann(&["b", "y"]) };
    let too_many = tagged((0..=MAX_TAGS).map(|i| format!("t{i}")).collect());
    let too_long = tagged(vec!["t".repeat(MAX_TAG_BYTES + 1)]);
    let u = t.update(T0, &n("b1"), &c("b"), 2, vec![ann(&["b"]), too_many, too_long], ok).unwrap();
    assert_eq!(u.dropped.len(), 2, "{:?}", u.dropped);
    assert!(u.dropped.iter().all(|d| d.reason.contains("tags")), "{:?}", u.dropped);
}

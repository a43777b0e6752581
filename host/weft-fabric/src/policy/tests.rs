use proptest::prelude::*;

use super::*;

fn c(s: &str) -> ClusterId {
    ClusterId::new(s)
}

fn n(s: &str) -> NodeId {
    NodeId::new(s)
}

fn f(s: &str) -> FunctionId {
    s.parse().unwrap()
}

fn policy(mode: Mode) -> Policy {
    Policy { cluster: c("alpha"), mode, ..Policy::default() }
}

fn bridged(nodes: &[&str]) -> Policy {
    Policy {
        bridges: vec![Bridge { cluster: c("beta"), nodes: nodes.iter().map(|s| n(s)).collect() }],
        ..policy(Mode::Explicit)
    }
}

/// (policy, remote node) -> expected (allowed, rule) for a peer of cluster beta.
#[test]
fn the_peer_decision_table() {
    let allowed = Policy { allowed_clusters: vec![c("beta")], ..policy(Mode::Explicit) };
    let blocked_everywhere = Policy {
        blocked_clusters: vec![c("beta")],
        allowed_clusters: vec![c("beta")],
        bridges: vec![Bridge { cluster: c("beta"), nodes: vec![] }],
        ..policy(Mode::Explicit)
    };
    let blocked_permissive = Policy { blocked_clusters: vec![c("beta")], ..policy(Mode::Permissive) };
    let cases: Vec<(&str, Policy, Option<&str>, bool, Rule)> = vec![
        ("strict", policy(Mode::Strict), Some("b1"), false, Rule::StrictMode),
        ("explicit, allowed", allowed.clone(), Some("b1"), true, Rule::AllowedCluster),
        ("explicit, not allowed", policy(Mode::Explicit), Some("b1"), false, Rule::NotAllowed),
        ("bridge, any node", bridged(&[]), Some("b1"), true, Rule::Bridge),
        ("bridge, node listed", bridged(&["b1", "b2"]), Some("b2"), true, Rule::Bridge),
        ("bridge, node not listed", bridged(&["b1"]), Some("b9"), false, Rule::BridgeNodes),
        ("bridge, cluster as a whole", bridged(&["b1"]), None, true, Rule::Bridge),
        ("permissive", policy(Mode::Permissive), Some("b1"), true, Rule::Permissive),
        ("blocked beats bridge and allow list", blocked_everywhere, Some("b1"), false, Rule::BlockedCluster),
        ("blocked beats permissive", blocked_permissive, None, false, Rule::BlockedCluster),
    ];
    for (name, p, node, allowed, rule) in cases {
        let v = p.peer(&c("beta"), node.map(n).as_ref());
        assert_eq!((v.allowed, v.rule), (allowed, rule), "{name}: {}", v.reason);
        assert!(
            v.reason.contains("beta") && v.reason.contains("alpha"),
            "{name}: the reason names both clusters: {}",
            v.reason
        );
    }
}

#[test]
fn the_own_cluster_is_always_accepted_whatever_the_lists_say() {
    for mode in [Mode::Strict, Mode::Explicit, Mode::Permissive] {
        let p = Policy { blocked_clusters: vec![c("alpha")], block_functions: vec!["echo".into()], ..policy(mode) };
        let v = p.call(&c("alpha"), Some(&n("a2")), &f("echo/echo"), false);
        assert_eq!((v.allowed, v.rule), (true, Rule::SameCluster));
    }
}

#[test]
fn function_rules_apply_to_foreign_callers() {
    let p = Policy {
        allow_functions: vec!["echo".into(), "math/add".into()],
        block_functions: vec!["math/add".into()],
        ..policy(Mode::Permissive)
    };
    let call = |id: &str, exported| {
        let v = p.call(&c("beta"), None, &f(id), exported);
        (v.allowed, v.rule)
    };
    assert_eq!(call("echo/echo", true), (true, Rule::Permissive));
    assert_eq!(call("math/add", true), (false, Rule::FunctionBlocked), "block wins over allow");
    assert_eq!(call("text/upper", true), (false, Rule::FunctionNotAllowed));
    assert_eq!(call("echo/echo", false), (false, Rule::NotExported));
    // A denied cluster is denied before any function rule is looked at.
    let strict = Policy { allow_functions: vec!["echo".into()], ..policy(Mode::Strict) };
    assert_eq!(strict.call(&c("beta"), None, &f("echo/echo"), true).rule, Rule::StrictMode);
}

#[test]
fn denials_become_policy_denied_errors_naming_rule_and_cluster() {
    let v = policy(Mode::Strict).peer(&c("beta"), None);
    let e = v.to_error(&c("beta"));
    assert_eq!(e.kind, ErrorKind::POLICY_DENIED);
    assert_eq!(e.details["rule"], "strict-mode");
    assert_eq!(e.details["cluster"], "beta");
    assert!(e.message.contains("federation.mode"), "{}", e.message);
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    let cluster = prop::sample::select(vec!["alpha", "beta", "gamma"]).prop_map(c);
    let clusters = prop::collection::vec(cluster.clone(), 0..3);
    let node = prop::sample::select(vec!["x1", "x2", "x3"]).prop_map(n);
    let bridge = (cluster, prop::collection::vec(node, 0..2)).prop_map(|(cluster, nodes)| Bridge { cluster, nodes });
    let mode = prop::sample::select(vec![Mode::Strict, Mode::Explicit, Mode::Permissive]);
    let functions =
        prop::collection::vec(prop::sample::select(vec!["echo", "p/add", "upper"]).prop_map(String::from), 0..2);
    (mode, clusters.clone(), clusters, prop::collection::vec(bridge, 0..2), functions.clone(), functions).prop_map(
        |(mode, allowed_clusters, blocked_clusters, bridges, allow_functions, block_functions)| Policy {
            cluster: c("alpha"),
            mode,
            allowed_clusters,
            blocked_clusters,
            bridges,
            allow_functions,
            block_functions,
            trusted_transit: vec![],
        },
    )
}

proptest! {
    /// Invariants of every policy: blocked never passes, a call is never
    /// allowed where the link is not, and a node-level yes implies the
    /// cluster-level yes (the origin's fail-fast check never denies what the
    /// target would accept).
    #[test]
    fn verdicts_are_consistent(
        p in arb_policy(),
        remote in prop::sample::select(vec!["beta", "gamma"]),
        node in prop::sample::select(vec!["x1", "x2", "x3"]),
        function in prop::sample::select(vec!["p/echo", "p/add", "q/upper"]),
        exported: bool,
    ) {
        let (remote, node, function) = (c(remote), n(node), f(function));
        let peer = p.peer(&remote, Some(&node));
        let call = p.call(&remote, Some(&node), &function, exported);
        if p.blocked_clusters.contains(&remote) || p.mode == Mode::Strict {
            prop_assert!(!peer.allowed);
        }
        prop_assert!(!call.allowed || peer.allowed);
        prop_assert!(!peer.allowed || p.peer(&remote, None).allowed);
        prop_assert_eq!(p.peer(&remote, Some(&node)), peer, "deterministic");
    }
}

#[test]
fn audiences_narrow_to_the_clusters_in_both() {
    let set = |names: &[&str]| names.iter().map(|s| c(s)).collect::<BTreeSet<_>>();
    let only = |names: &[&str]| Audience::Only(set(names));
    let all_but = |names: &[&str]| Audience::AllBut(set(names));
    assert_eq!(Audience::Everyone.narrowed(&only(&["x"])), only(&["x"]));
    assert_eq!(only(&["x", "y"]).narrowed(&only(&["y", "z"])), only(&["y"]));
    assert_eq!(only(&["x", "y"]).narrowed(&all_but(&["x"])), only(&["y"]));
    assert_eq!(all_but(&["x"]).narrowed(&all_but(&["y"])), all_but(&["x", "y"]));
    assert!(all_but(&["x"]).admits(&c("y")) && !all_but(&["x"]).admits(&c("x")));

    let mut explicit = policy(Mode::Explicit);
    explicit.allowed_clusters = vec![c("x"), c("y")];
    explicit.bridges = vec![Bridge { cluster: c("z"), nodes: vec![] }];
    explicit.blocked_clusters = vec![c("y")];
    assert_eq!(explicit.audience(), only(&["x", "z"]));
    let mut permissive = policy(Mode::Permissive);
    permissive.blocked_clusters = vec![c("y")];
    assert_eq!(permissive.audience(), all_but(&["y"]));
    assert_eq!(policy(Mode::Strict).audience(), only(&[]));
}

/// A neighbour's word on where a call started counts for an entry open to
/// everyone, to the neighbour itself, or where the policy trusts it.
#[test]
fn a_neighbour_vouches_for_an_origin_only_where_trusted_or_open_to_it() {
    let only = |names: &[&str]| Audience::Only(names.iter().map(|s| c(s)).collect());
    let plain = policy(Mode::Permissive);
    assert!(plain.vouches(&c("beta"), &Audience::Everyone));
    assert!(plain.vouches(&c("beta"), &only(&["alpha", "beta"])), "beta may call it itself");
    assert!(!plain.vouches(&c("beta"), &only(&["alpha"])));
    let trusting = Policy { trusted_transit: vec![c("beta")], ..plain };
    assert!(trusting.vouches(&c("beta"), &only(&["alpha"])));
    assert!(!trusting.vouches(&c("delta"), &only(&["alpha"])));
}

#[test]
fn an_entry_is_offered_only_to_clusters_in_its_audience() {
    let mut open = policy(Mode::Permissive);
    open.blocked_clusters = vec![c("blocked")];
    let mut e = crate::testing::entry("math/add", "1.0.0", crate::testing::sig(&[], weft_proto::wit::WitType::S64));
    assert!(open.exports(&e, &c("beta")));
    e.audience = Audience::Only([c("gamma")].into());
    assert!(!open.exports(&e, &c("beta")), "its manifest does not open it to beta");
    assert!(open.exports(&e, &c("gamma")));
}

/// What a node advertises of its own entries to its members is what it
/// would export: a bridge node offers abroad no more than the host serves.
#[test]
fn an_entry_is_advertised_to_the_clusters_it_is_exported_to() {
    let mut p = policy(Mode::Permissive);
    p.blocked_clusters = vec![c("blocked")];
    p.block_functions = vec!["add".into()];
    let entry =
        |name: &str| crate::testing::entry(name, "1.0.0", crate::testing::sig(&[], weft_proto::wit::WitType::S64));
    let mut tenants = entry("text/upper");
    tenants.audience = Audience::Only([c("gamma"), c("blocked")].into());
    let mut explicit = policy(Mode::Explicit);
    explicit.allowed_clusters = vec![c("beta")];
    explicit.allow_functions = vec!["math/add".into()];
    for policy in [&p, &explicit, &policy(Mode::Strict)] {
        for e in [entry("math/add"), entry("text/upper"), tenants.clone()] {
            for cluster in ["beta", "gamma", "blocked"].map(c) {
                assert_eq!(
                    policy.advertised(&e).admits(&cluster),
                    policy.exports(&e, &cluster),
                    "{:?} {} to {cluster}",
                    policy.mode,
                    e.function
                );
            }
        }
    }
    assert_eq!(p.advertised(&entry("math/add")), Audience::Only(BTreeSet::new()));
}

fn arb_audience() -> impl Strategy<Value = Audience> {
    let clusters =
        prop::collection::btree_set(prop::sample::select(vec!["beta", "gamma", "blocked"]).prop_map(c), 0..3);
    prop_oneof![
        Just(Audience::Everyone),
        clusters.clone().prop_map(Audience::Only),
        clusters.prop_map(Audience::AllBut),
    ]
}

proptest! {
    /// One decision on every path: the clusters a node advertises an entry
    /// to are exactly those it would export it to, and each of them may
    /// call it at the cluster level.
    #[test]
    fn what_is_advertised_is_what_is_exported_and_callable(
        p in arb_policy(),
        function in prop::sample::select(vec!["p/echo", "p/add", "q/upper"]),
        exported: bool,
        audience in arb_audience(),
        cluster in prop::sample::select(vec!["beta", "gamma", "blocked"]),
    ) {
        let mut e = crate::testing::entry(function, "1.0.0", crate::testing::sig(&[], weft_proto::wit::WitType::S64));
        (e.exported, e.audience) = (exported, audience);
        let cluster = c(cluster);
        let advertised = p.advertised(&e).admits(&cluster);
        prop_assert_eq!(advertised, p.exports(&e, &cluster));
        prop_assert!(!advertised || p.call(&cluster, None, &e.function, exported).allowed);
    }
}

#[test]
fn function_rules_naming_no_function_of_the_cluster_are_warned_of() {
    let p = Policy {
        block_functions: vec!["UPPER".into(), "text/lower".into(), "nosuch".into()],
        allow_functions: vec!["upper".into(), "math/nosuch".into()],
        ..policy(Mode::Explicit)
    };
    let functions = [f("text/upper"), f("text/lower")];
    let warnings = p.unmatched_function_rules(functions.iter());
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].contains("block: \"UPPER\" names no function cluster alpha has now"), "{warnings:?}");
    assert!(warnings[0].contains("in their capitals: text/upper is there"), "{warnings:?}");
    assert!(warnings[1].contains("\"nosuch\"") && !warnings[1].contains("capitals"), "{warnings:?}");
    assert!(warnings[2].starts_with("federation.functions.allow: \"math/nosuch\""), "{warnings:?}");
}

//! Path-vector routes across several clusters of real nodes: a line with and
//! without transit, a ring with failover and heal, hop budgets, withdrawal
//! when the middle dies, and hold-down of a flapping route.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{FakePeer, NodeSpec, TestNode, eventually, metric};
use weft_proto::{Command, ErrorKind, Request, WeftError};

const SETTLE: Duration = Duration::from_secs(10);

/// One node per cluster (named after its cluster), permissive, fast announcements.
fn cluster_node(cluster: &str, plugins: Vec<&'static str>, seeds: &[&TestNode], transit: bool) -> TestNode {
    cluster_node_as(&format!("{cluster}1"), cluster, plugins, seeds, transit)
}

fn cluster_node_as(
    id: &str,
    cluster: &str,
    plugins: Vec<&'static str>,
    seeds: &[&TestNode],
    transit: bool,
) -> TestNode {
    cluster_node_with(id, cluster, plugins, seeds, transit, "")
}

/// As `cluster_node_as`, with more `[routing]` TOML (tags, neighbour rules).
fn cluster_node_with(
    id: &str,
    cluster: &str,
    plugins: Vec<&'static str>,
    seeds: &[&TestNode],
    transit: bool,
    routing: &str,
) -> TestNode {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
    let config = format!(
        "id = \"{id}\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[federation]\nmode = \"permissive\"\n[routing]\ntransit = {transit}\nannounce_interval = \"200ms\"\nroute_ttl = \"1s\"\n{routing}\n",
        seeds.join(", ")
    );
    TestNode::start(NodeSpec { plugins, files: vec![], config })
}

async fn routes(node: &TestNode) -> Value {
    node.admin().get("/v1/routes").await.unwrap().body
}

/// A route from `node` to `cluster` that is held down for flapping.
async fn held_down(node: &TestNode, cluster: &str) -> Option<Value> {
    let table = routes(node).await;
    table["routes"].as_array().unwrap().iter().find(|r| r["destination"] == cluster && r["held_down"] == true).cloned()
}

/// (next hop, hops) of the best route from `node` to `cluster`.
async fn best(node: &TestNode, cluster: &str) -> Option<(String, u64)> {
    let table = routes(node).await;
    table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["destination"] == cluster && r["best"] == true)
        .map(|r| (r["via"].as_str().unwrap().to_owned(), r["hops"].as_u64().unwrap()))
}

/// Calls `fun` in `cluster` from `node`: the result and the cluster crossings.
async fn call_in(
    node: &TestNode,
    cluster: &str,
    fun: &str,
    hop_budget: Option<u32>,
) -> Result<(Value, u32), WeftError> {
    call_where(node, cluster, fun, hop_budget).await.map(|(v, hops, _)| (v, hops))
}

/// As `call_in`, plus the node the call ran on.
async fn call_where(
    node: &TestNode,
    cluster: &str,
    fun: &str,
    hop_budget: Option<u32>,
) -> Result<(Value, u32, String), WeftError> {
    let mut cmd = Command::new("x", fun, vec![json!("abc")]);
    cmd.target_cluster = Some(cluster.to_owned());
    let mut req = Request::new("r", vec![cmd]);
    req.hop_budget = hop_budget;
    req.include_execution_summary = true;
    let response = node.client().await.request(req).await?;
    if let Some(e) = response.error {
        return Err(e.into());
    }
    let summary = response.execution_summary.unwrap();
    Ok((response.r.unwrap()["x"].clone(), summary.cross_cluster_hops, summary.steps[0].node.clone()))
}

#[tokio::test]
async fn a_line_reaches_the_far_end_only_through_a_transit_cluster() {
    // beta has `upper` too: a call meant for gamma must still run in gamma.
    let b = cluster_node("beta", vec!["text"], &[], true);
    let a = cluster_node("alpha", vec!["echo"], &[&b], false);
    let c = cluster_node("gamma", vec!["text"], &[&b], false);
    eventually("a route from alpha to gamma", SETTLE, async || best(&a, "gamma").await).await;
    assert_eq!(best(&a, "gamma").await, Some(("beta1".into(), 2)));
    let (value, hops) =
        eventually("upper in gamma to answer alpha", SETTLE, async || call_in(&a, "gamma", "upper", None).await.ok())
            .await;
    assert_eq!((value, hops), (json!("ABC"), 2));
    let explain = a.admin().get("/v1/routes/explain?cluster=gamma").await.unwrap().body;
    assert_eq!(explain["winner"]["path"], json!(["beta", "gamma"]), "{explain}");
    // The query is percent-decoded like any form.
    let encoded = a.admin().get("/v1/routes/explain?verbose&cluster=%67amma").await.unwrap().body;
    let route = |e: &Value| (e["winner"]["path"].clone(), e["winner"]["via"].clone());
    assert_eq!(route(&encoded), route(&explain), "{encoded}");
    // Bridge links are measured by pings: the route carries the latency of
    // both links on its way and a delivery ratio.
    let measured = eventually("a measured route to gamma", SETTLE, async || {
        let table = routes(&a).await;
        let r = table["routes"].as_array().unwrap().iter().find(|r| r["destination"] == "gamma").cloned()?;
        (r["latency_us"].as_u64()? > 0).then_some(r)
    })
    .await;
    let reliability = measured["reliability"].as_u64().unwrap();
    assert!((1..=1000).contains(&reliability), "{measured}");
    // alpha and gamma never linked: the call crossed beta.
    let peers = a.admin().get("/v1/peers").await.unwrap().body;
    assert_eq!(peers["links"].as_array().unwrap().len(), 1, "{peers}");

    // Too small a hop budget stops at beta and names the path.
    let err = call_in(&a, "gamma", "upper", Some(1)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::HOP_BUDGET_EXHAUSTED, "{err:?}");
    assert_eq!(err.details["federation_path"], json!(["alpha", "beta"]));

    // The middle dies: the withdrawal reaches alpha, and calls fail fast,
    // told that gamma went out of reach with beta's node (retry).
    drop(b);
    eventually("gamma withdrawn at alpha", SETTLE, async || best(&a, "gamma").await.is_none().then_some(())).await;
    let err = call_in(&a, "gamma", "upper", None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::UNAVAILABLE, "{err:?}");
    assert!(err.message.contains("cluster gamma went out of reach"), "{err:?}");
    let alerts = a.admin().get("/v1/alerts").await.unwrap().body;
    assert!(
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["kind"] == "cluster-unreachable" && x["subject"] == "gamma")
    );
    drop(c);
}

/// A node of `cluster` that bridges only to node `via` of beta and admits
/// calls from `far` (which reach it through beta).
fn edge_node(cluster: &str, plugins: Vec<&'static str>, via: &TestNode, via_id: &str, far: &str) -> TestNode {
    let config = format!(
        "id = \"{cluster}1\"\ncluster = \"{cluster}\"\nseeds = [{:?}]\n[federation]\nmode = \"explicit\"\nallowed_clusters = [\"{far}\"]\n[[federation.bridges]]\ncluster = \"beta\"\nnodes = [\"{via_id}\"]\n[routing]\nannounce_interval = \"200ms\"\nroute_ttl = \"1s\"\n",
        via.ws
    );
    TestNode::start(NodeSpec { plugins, files: vec![], config })
}

#[tokio::test]
async fn transit_spans_two_nodes_of_the_middle_cluster() {
    // beta1 bridges alpha and beta2 bridges gamma, and alpha and gamma each
    // accept only that one node of beta: no node of beta links both.
    let b1 = cluster_node_as("beta1", "beta", vec!["echo"], &[], true);
    let b2 = cluster_node_as("beta2", "beta", vec!["echo"], &[&b1], true);
    let a = edge_node("alpha", vec!["echo"], &b1, "beta1", "gamma");
    let c = edge_node("gamma", vec!["text"], &b2, "beta2", "alpha");
    eventually("a route from alpha to gamma", SETTLE, async || best(&a, "gamma").await).await;
    assert_eq!(best(&a, "gamma").await, Some(("beta1".into(), 2)));
    let (value, hops, node) = eventually("upper in gamma to answer alpha", SETTLE, async || {
        call_where(&a, "gamma", "upper", None).await.ok()
    })
    .await;
    assert_eq!((value, hops, node.as_str()), (json!("ABC"), 2, "gamma1"));
    // And the other way: gamma reaches alpha through beta2, then beta1.
    eventually("a route from gamma to alpha", SETTLE, async || best(&c, "alpha").await).await;
    assert_eq!(best(&c, "alpha").await, Some(("beta2".into(), 2)));
    let peers = b1.admin().get("/v1/peers").await.unwrap().body;
    let linked: Vec<&str> = peers["links"].as_array().unwrap().iter().filter_map(|l| l["cluster"].as_str()).collect();
    assert!(!linked.contains(&"gamma"), "{peers}");

    // beta2 goes: its routes go with it, and alpha learns at once. Alpha's
    // link to beta1 stays, so to alpha this is a withdrawn route, which
    // it cannot tell from a decision in beta.
    drop(b2);
    eventually("gamma withdrawn at alpha", SETTLE, async || best(&a, "gamma").await.is_none().then_some(())).await;
    let err = call_in(&a, "gamma", "upper", None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NO_ROUTE, "{err:?}");
}

#[tokio::test]
async fn a_member_does_not_carry_routes_its_own_policy_refuses() {
    // beta1 blocks gamma; beta2, which bridges gamma, shares its route anyway.
    let config = "id = \"beta1\"\ncluster = \"beta\"\n[federation]\nmode = \"permissive\"\nblocked_clusters = [\"gamma\"]\n[routing]\ntransit = true\nannounce_interval = \"200ms\"\nroute_ttl = \"1s\"\n";
    let b1 = TestNode::start(NodeSpec { plugins: vec!["echo"], files: vec![], config: config.into() });
    let b2 = cluster_node_as("beta2", "beta", vec!["echo"], &[&b1], true);
    let a = edge_node("alpha", vec!["echo"], &b1, "beta1", "gamma");
    let c = edge_node("gamma", vec!["text"], &b2, "beta2", "alpha");
    eventually("beta2 to reach gamma", SETTLE, async || best(&b2, "gamma").await).await;
    eventually("alpha to reach beta", SETTLE, async || best(&a, "beta").await).await;
    // A few announce intervals: gamma must still not appear at alpha.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(best(&a, "gamma").await, None);
    let catalog = a.admin().get("/v1/catalog").await.unwrap().body;
    let clusters: Vec<&str> =
        catalog["functions"].as_array().unwrap().iter().filter_map(|f| f["cluster"].as_str()).collect();
    assert!(!clusters.contains(&"gamma"), "{catalog}");
    drop(c);
}

#[tokio::test]
async fn rate_limits_charge_the_cluster_a_call_started_in_not_the_transit_cluster() {
    let b = cluster_node("beta", vec!["echo"], &[], true);
    let a = cluster_node("alpha", vec!["echo"], &[&b], false);
    let limited = "[federation.functions]\nrate_limit_per_minute = 2";
    let c = cluster_node_with("gamma1", "gamma", vec!["text"], &[&b], false, limited);
    eventually("upper in gamma to answer alpha", SETTLE, async || call_in(&a, "gamma", "upper", None).await.ok()).await;
    call_in(&a, "gamma", "upper", None).await.unwrap();
    let err = call_in(&a, "gamma", "upper", None).await.unwrap_err();
    assert_eq!((err.kind, &err.details["cluster"]), (ErrorKind::RATE_LIMITED, &json!("alpha")), "{err:?}");
    // alpha's calls all came through beta, yet beta's own budget is whole.
    for _ in 0..2 {
        assert_eq!(call_in(&b, "gamma", "upper", None).await.unwrap(), (json!("ABC"), 1));
    }
    assert_eq!(call_in(&b, "gamma", "upper", None).await.unwrap_err().kind, ErrorKind::RATE_LIMITED);
    drop(c);
}

#[tokio::test]
async fn without_transit_the_middle_cluster_keeps_its_neighbours_apart() {
    let b = cluster_node("beta", vec!["math"], &[], false);
    let a = cluster_node("alpha", vec!["echo"], &[&b], false);
    let c = cluster_node("gamma", vec!["text"], &[&b], false);
    eventually("alpha to reach beta", SETTLE, async || best(&a, "beta").await).await;
    eventually("gamma to reach beta", SETTLE, async || best(&c, "beta").await).await;
    // Give beta a few announce intervals: gamma must still not appear.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(best(&a, "gamma").await, None);
    let err = call_in(&a, "gamma", "upper", None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NO_ROUTE, "{err:?}");
}

#[tokio::test]
async fn a_ring_takes_the_short_way_fails_over_and_comes_back() {
    // alpha - beta - gamma - delta - alpha, every cluster offers transit.
    let a = cluster_node("alpha", vec!["echo"], &[], true);
    let b = cluster_node("beta", vec![], &[&a], true);
    let c = cluster_node("gamma", vec!["text"], &[&b], true);
    let d = cluster_node("delta", vec![], &[&c, &a], true);
    // Two equal ways to gamma: the smaller advertiser (beta1) wins, never a loop.
    eventually("two routes to gamma", SETTLE, async || {
        let table = routes(&a).await;
        let ways = table["routes"].as_array().unwrap().iter().filter(|r| r["destination"] == "gamma").count();
        (ways == 2).then_some(())
    })
    .await;
    assert_eq!(best(&a, "gamma").await, Some(("beta1".into(), 2)));
    for r in routes(&a).await["routes"].as_array().unwrap() {
        assert!(!r["path"].as_array().unwrap().contains(&json!("alpha")), "no route comes back through alpha: {r}");
    }
    let explain = a.admin().get("/v1/routes/explain?cluster=gamma").await.unwrap().body;
    assert!(explain["losers"][0]["lost_because"].as_str().unwrap().contains("advertiser"), "{explain}");
    assert_eq!(call_in(&a, "gamma", "upper", None).await.unwrap().0, json!("ABC"));

    // Cut beta: the other way round.
    let b_id = b.id.clone();
    drop(b);
    eventually("failover through delta", SETTLE, async || {
        (best(&a, "gamma").await == Some(("delta1".into(), 2))).then_some(())
    })
    .await;
    assert_eq!(call_in(&a, "gamma", "upper", None).await.unwrap(), (json!("ABC"), 2));

    // Heal: beta is back, and so is the preferred route.
    let _b = cluster_node_as(&b_id, "beta", vec![], &[&a, &c], true);
    eventually("back through beta", SETTLE, async || {
        (best(&a, "gamma").await == Some(("beta1".into(), 2))).then_some(())
    })
    .await;
    drop(d);
}

#[tokio::test]
async fn a_flapping_route_is_held_down_and_raises_an_alert() {
    let b = cluster_node("beta", vec![], &[], true);
    let a = cluster_node("alpha", vec!["echo"], &[&b], false);
    // gamma comes and goes three times: each departure withdraws the route at alpha.
    for _ in 0..3 {
        let c = cluster_node("gamma", vec!["text"], &[&b], false);
        eventually("gamma announced", SETTLE, async || best(&a, "gamma").await).await;
        drop(c);
        eventually("gamma withdrawn", SETTLE, async || best(&a, "gamma").await.is_none().then_some(())).await;
    }
    // The fourth time, beta (next to the flapping link) holds the route down
    // and does not pass it on: the federation beyond does not churn.
    let _c = cluster_node("gamma", vec!["text"], &[&b], false);
    let held = eventually("the route to be held down at beta", SETTLE, async || held_down(&b, "gamma").await).await;
    assert_eq!(held["best"], false, "a held-down route is not used: {held}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(best(&a, "gamma").await, None, "alpha is not offered the held-down route");
    let alerts = b.admin().get("/v1/alerts").await.unwrap().body;
    assert!(alerts["alerts"].as_array().unwrap().iter().any(|x| x["kind"] == "route-flapping"), "{alerts}");
    let explain = b.admin().get("/v1/routes/explain?cluster=gamma").await.unwrap().body;
    assert!(explain["losers"][0]["lost_because"].as_str().unwrap().contains("held down"), "{explain}");
    // beta's own bridge to gamma still carries its calls, and explain says so.
    assert_eq!((&explain["reachable"], &explain["bridged_to"]), (&json!(true), &json!(["gamma1"])), "{explain}");
    let (value, _) = call_in(&b, "gamma", "upper", None).await.unwrap();
    assert_eq!(value, json!("ABC"));
}

#[tokio::test]
async fn a_route_held_down_still_carries_calls_from_the_node_that_holds_it() {
    // alpha - beta - gamma, and beta1 restarts three times: alpha (next to
    // the flapping link) holds its routes through beta1 down, passes
    // nothing on, and still calls gamma through the live beta1.
    let a = cluster_node("alpha", vec!["echo"], &[], false);
    let c = cluster_node("gamma", vec!["text"], &[], false);
    for _ in 0..3 {
        let b = cluster_node_as("beta1", "beta", vec![], &[&a, &c], true);
        eventually("gamma learnt through beta1", SETTLE, async || best(&a, "gamma").await).await;
        drop(b);
        eventually("gamma withdrawn", SETTLE, async || best(&a, "gamma").await.is_none().then_some(())).await;
    }
    let _b = cluster_node_as("beta1", "beta", vec![], &[&a, &c], true);
    eventually("the route to gamma back, held down", SETTLE, async || held_down(&a, "gamma").await).await;
    let (value, hops, ran_on) =
        eventually("a call to gamma", SETTLE, async || call_where(&a, "gamma", "upper", None).await.ok()).await;
    assert_eq!((value, hops, ran_on.as_str()), (json!("ABC"), 2, "gamma1"));
    assert_eq!(best(&a, "gamma").await, None, "a held-down route does not win");
    let explain = a.admin().get("/v1/routes/explain?cluster=gamma").await.unwrap().body;
    assert_eq!((&explain["reachable"], &explain["last_resort"]["via"]), (&json!(true), &json!("beta1")), "{explain}");
    // One alert per hold-down, however often the route is announced while
    // it lasts.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let alerts = a.admin().get("/v1/alerts").await.unwrap().body;
    let flapping = alerts["alerts"].as_array().unwrap().iter().find(|x| x["subject"] == "gamma via beta1").cloned();
    assert_eq!(
        flapping.map(|x| (x["kind"].clone(), x["count"].clone())),
        Some((json!("route-flapping"), json!(1))),
        "{alerts}"
    );
    let unreachable =
        alerts["alerts"].as_array().unwrap().iter().any(|x| x["kind"] == "cluster-unreachable" && x["active"] == true);
    assert!(!unreachable, "gamma is reachable: {alerts}");
}

#[tokio::test]
async fn neighbour_rules_and_tags_shape_what_is_learnt() {
    // gamma tags its route "eu"; beta carries it on. alpha wants only
    // tagged routes from beta (beta's own is untagged) and refuses any
    // path through delta.
    let b = cluster_node("beta", vec!["math"], &[], true);
    let _c = cluster_node_with("gamma1", "gamma", vec!["text"], &[&b], false, "tags = [\"eu\"]");
    let _d = cluster_node("delta", vec!["echo"], &[&b], false);
    let rules = "[routing.neighbours.beta]\nrequire_tags = [\"eu\"]\ndeny_on_path = [\"delta\"]";
    let a = cluster_node_with("alpha1", "alpha", vec![], &[&b], false, rules);
    eventually("gamma learnt through beta", SETTLE, async || best(&a, "gamma").await).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(best(&a, "beta").await, None, "beta's own route carries no eu tag");
    assert_eq!(best(&a, "delta").await, None, "routes through delta are refused");
    let refused = metric(&a.admin().get("/metrics").await.unwrap().text, "weft_routes_refused_total").unwrap_or(0.0);
    assert!(refused >= 2.0, "{refused}");
    // Why is said where an operator looks: explain, and the call's error.
    let explain = a.admin().get("/v1/routes/explain?cluster=delta").await.unwrap().body;
    let reason = explain["refused_routes"][0]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("routing.neighbours.beta.deny_on_path"), "{explain}");
    assert_eq!(explain["refused_routes"][0]["via"], "beta1", "{explain}");
    let err = call_in(&a, "delta", "echo", None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NO_ROUTE, "{err:?}");
    assert!(err.message.contains("node beta1 announced a route there that was not taken"), "{err:?}");
    assert!(err.message.contains("deny_on_path"), "{err:?}");
}

#[tokio::test]
async fn a_cluster_lists_no_function_behind_a_transit_cluster_that_would_refuse_it() {
    // gamma blocks alpha: beta (transit) may call gamma's math and lists it,
    // alpha neither lists nor reaches it, though it has a route to gamma.
    let b = cluster_node("beta", vec!["text"], &[], true);
    let a = cluster_node("alpha", vec!["echo"], &[&b], false);
    let config = format!(
        "id = \"gamma1\"\ncluster = \"gamma\"\nseeds = [{:?}]\n[federation]\nmode = \"permissive\"\nblocked_clusters = [\"alpha\"]\n[routing]\nannounce_interval = \"200ms\"\nroute_ttl = \"1s\"\n",
        b.ws
    );
    let c = TestNode::start(NodeSpec { plugins: vec!["math"], files: vec![], config });
    let lists = async |node: &TestNode, name: &str, cluster: &str| {
        let body = node.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["name"] == name && f["cluster"] == cluster)
    };
    eventually("beta to list gamma's add", SETTLE, async || lists(&b, "add", "gamma").await.then_some(())).await;
    eventually("alpha to list beta's upper", SETTLE, async || lists(&a, "upper", "beta").await.then_some(())).await;
    eventually("a route from alpha to gamma", SETTLE, async || best(&a, "gamma").await).await;
    assert!(!lists(&a, "add", "gamma").await, "alpha lists a function gamma would refuse it");
    let err = call_in(&a, "gamma", "add", None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "{err:?}");
    drop(c);
}

/// What a cluster lists behind a transit cluster it can call. Alpha takes
/// no routes two crossings long (`max_hops = 1`), yet beta did announce
/// gamma to it, so alpha serves gamma's calls. Beta announces nothing to
/// delta, which therefore refuses calls from gamma: beta does not offer
/// gamma delta's functions.
#[tokio::test]
async fn a_cluster_lists_behind_transit_only_what_it_can_call() {
    let b = cluster_node_with("beta1", "beta", vec![], &[], true, "[routing.neighbours.delta]\nexport = []");
    let _a = cluster_node_with("alpha1", "alpha", vec!["echo"], &[&b], false, "max_hops = 1");
    let _d = cluster_node("delta", vec!["text"], &[&b], false);
    let g = cluster_node("gamma", vec![], &[&b], false);
    let lists = async |name: &str, cluster: &str| {
        let body = g.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["name"] == name && f["cluster"] == cluster)
    };
    eventually("gamma to list alpha's echo", SETTLE, async || lists("echo", "alpha").await.then_some(())).await;
    eventually("a route from gamma to delta", SETTLE, async || best(&g, "delta").await).await;
    assert_eq!(call_in(&g, "alpha", "echo", None).await.unwrap(), (json!("abc"), 2));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!lists("upper", "delta").await, "gamma lists a function delta would refuse it");
    let err = call_in(&g, "delta", "upper", None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "{err:?}");
}

/// A plugin open to one other cluster by name (`callers = ["cluster:alpha"]`)
/// reaches it over a direct bridge only, until gamma trusts transit cluster
/// beta to say where the calls it carries started: then beta carries
/// alpha's calls to gamma's `upper` but neither lists nor calls it itself,
/// and neither does delta, one more cluster behind beta. Gamma's `add`,
/// open to everyone, all of them list throughout.
#[tokio::test]
async fn a_plugin_open_to_one_cluster_reaches_it_through_a_trusted_transit_and_no_one_else() {
    let b = cluster_node("beta", vec![], &[], true);
    let a = cluster_node("alpha", vec![], &[&b], false);
    let d = cluster_node("delta", vec![], &[&b], false);
    let config = format!(
        "id = \"gamma1\"\ncluster = \"gamma\"\nseeds = [{:?}]\n[routing]\nannounce_interval = \"200ms\"\nroute_ttl = \"1s\"\n[federation]\nmode = \"permissive\"\n",
        b.ws
    );
    let files = vec![("text.toml".to_owned(), b"callers = [\"cluster:alpha\"]\n".to_vec())];
    let g = TestNode::start(NodeSpec { plugins: vec!["text", "math"], files, config });
    let lists = async |node: &TestNode, name: &str| {
        let body = node.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["name"] == name && f["cluster"] == "gamma")
    };
    for node in [&a, &b, &d] {
        eventually("gamma's add listed", SETTLE, async || lists(node, "add").await.then_some(())).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!lists(&a, "upper").await, "alpha lists what gamma would refuse through an untrusted transit");
    assert_eq!(call_in(&a, "gamma", "upper", None).await.unwrap_err().kind, ErrorKind::FUNCTION_NOT_FOUND);

    let path = g.dir.path().join("weft.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    support::write(&path, &format!("{text}trusted_transit = [\"beta\"]\n"));
    let reload = g.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reload.status, 200, "{}", reload.text);
    eventually("alpha to list gamma's upper", SETTLE, async || lists(&a, "upper").await.then_some(())).await;
    assert_eq!(call_in(&a, "gamma", "upper", None).await.unwrap(), (json!("ABC"), 2));
    for (node, name) in [(&b, "beta"), (&d, "delta")] {
        assert!(!lists(node, "upper").await, "{name} lists a function open to alpha only");
        // Its catalog gauge counts what it lists, not what it carries.
        let listed = node.admin().get("/v1/catalog").await.unwrap().body["functions"].as_array().unwrap().len();
        let gauge = metric(&node.admin().get("/metrics").await.unwrap().text, "weft_catalog_entries");
        assert_eq!(gauge, Some(listed as f64), "{name}");
        let err = call_in(node, "gamma", "upper", None).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "{name}: {err:?}");
    }
    // A call that says it started in beta is refused where the function is.
    let mut beta = FakePeer::join(&g, "b9", "beta").await;
    beta.send(&json!({"t": "call", "id": 1, "function": "text/upper", "version": "0.1.0", "args": ["x"],
        "deadline_ms": 5000, "routing_path": ["b9"], "federation_path": ["beta"], "hop_budget": 2}))
        .await;
    let reply = beta.next_of("reply").await;
    let error = &reply["error"];
    assert_eq!(
        (&error["kind"], &error["details"]["rule"]),
        (&json!("POLICY_DENIED"), &json!("member-policy")),
        "{reply}"
    );

    // Nor can a neighbour gamma does not trust pass its call off as
    // alpha's, though it announces a way there.
    let error = forged_upper(&g, ("e9", "epsilon"), &["epsilon", "alpha"], json!({})).await["error"].clone();
    assert_eq!((&error["kind"], &error["details"]["rule"]), (&json!("POLICY_DENIED"), &json!("origin")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("list epsilon in federation.trusted_transit"), "{error}");
    // Nor at beta, which trusts no one to: a neighbour of the transit
    // cluster does not get its call carried as alpha's.
    let error = forged_upper(&b, ("d9", "delta"), &["delta", "alpha"], json!({})).await["error"].clone();
    assert_eq!((&error["kind"], &error["details"]["rule"]), (&json!("POLICY_DENIED"), &json!("origin")), "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("cluster beta does not take the word of cluster delta"),
        "{error}"
    );
}

/// A plugin open to one other cluster by name reaches it through a transit
/// cluster that no one trusts when alpha signs its calls and the clusters
/// on the way hold its key: alpha lists gamma's `upper` and calls it
/// through beta; beta and delta (behind beta) neither list nor call it.
/// A neighbour of gamma cannot pass a call off as alpha's without alpha's
/// proof, with a proof for other arguments, or with a proof used before.
#[tokio::test]
async fn a_plugin_open_to_one_cluster_reaches_it_through_transit_by_signed_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = weft_node::signing::generate();
    let key_file = dir.path().join("alpha.key");
    std::fs::write(&key_file, &private).unwrap();
    let knows_alpha = format!("[routing.security]\ntrusted_keys = {{ alpha = [{public:?}] }}");
    let b = cluster_node_with("beta1", "beta", vec![], &[], true, &knows_alpha);
    let signs = format!("[routing.security]\nsigning_key = {key_file:?}");
    let a = cluster_node_with("alpha1", "alpha", vec![], &[&b], false, &signs);
    let d = cluster_node("delta", vec![], &[&b], false);
    let config = format!(
        "id = \"gamma1\"\ncluster = \"gamma\"\nseeds = [{:?}]\n[federation]\nmode = \"permissive\"\n[routing]\nannounce_interval = \"200ms\"\nroute_ttl = \"1s\"\n{knows_alpha}\n",
        b.ws
    );
    let files = vec![("text.toml".to_owned(), b"callers = [\"cluster:alpha\"]\n".to_vec())];
    let g = TestNode::start(NodeSpec { plugins: vec!["text"], files, config });
    let lists = async |node: &TestNode| {
        let body = node.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["name"] == "upper" && f["cluster"] == "gamma")
    };
    eventually("alpha to list gamma's upper", SETTLE, async || lists(&a).await.then_some(())).await;
    assert_eq!(call_in(&a, "gamma", "upper", None).await.unwrap(), (json!("ABC"), 2));
    for (node, name) in [(&b, "beta"), (&d, "delta")] {
        assert!(!lists(node).await, "{name} lists a function open to alpha only");
        let err = call_in(node, "gamma", "upper", None).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "{name}: {err:?}");
    }

    let refused = |reply: Value, why: &str| {
        let error = &reply["error"];
        assert_eq!((&error["kind"], &error["details"]["rule"]), (&json!("POLICY_DENIED"), &json!("origin")), "{reply}");
        assert!(error["details"]["proof"].as_str().unwrap().contains(why), "{reply}");
    };
    let to_alpha = ["epsilon", "alpha"];
    refused(forged_upper(&g, ("e1", "epsilon"), &to_alpha, json!({})).await, "is missing");
    let keys = weft_node::signing::Keys {
        key: Some(weft_node::signing::load_signing_key(&key_file).unwrap()),
        ..Default::default()
    };
    let (alpha, gamma) = (weft_proto::ClusterId::new("alpha"), weft_proto::ClusterId::new("gamma"));
    let args = [json!("x")];
    let claim = weft_node::signing::CallClaim {
        origin: &alpha,
        target: &gamma,
        function: "text/upper",
        version: "0.1.0",
        args: &args,
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let proof = serde_json::to_value(keys.prove_origin(&claim, now).unwrap()).unwrap();
    let altered = forged_upper(&g, ("e2", "epsilon"), &to_alpha, json!({"origin_proof": proof, "args": ["y"]})).await;
    refused(altered, "does not verify");
    let genuine = forged_upper(&g, ("e3", "epsilon"), &to_alpha, json!({"origin_proof": proof})).await;
    assert_eq!(genuine["value"], json!("X"), "{genuine}");
    refused(forged_upper(&g, ("e4", "epsilon"), &to_alpha, json!({"origin_proof": proof})).await, "used before");
}

/// A neighbour that offers another cluster's plugin open to alpha alone
/// is its carrier only while it announces a route to that cluster: one
/// that announces none cannot draw alpha's calls to itself.
#[tokio::test]
async fn a_neighbour_without_a_route_cannot_carry_a_plugin_open_to_named_clusters() {
    let a = cluster_node("alpha", vec![], &[], false);
    let mut evil = FakePeer::join(&a, "e1", "evil").await;
    let route = |to: &str, path: &[&str]| json!({"destination": to, "path": path, "hops": path.len() - 1, "latency_us": 0, "reliability": 1000});
    evil.send(&json!({"t": "routes", "epoch": 1, "routes": [route("evil", &["evil"])]})).await;
    let sig = json!({"params": [{"name": "s", "type": {"kind": "string"}}], "result": {"kind": "string"}});
    let entry = json!({"function": "text/upper", "version": "0.1.0", "sig": sig, "resources": [], "node": "g1",
        "cluster": "gamma", "idempotent": false, "exported": true, "origins": {"only": ["alpha"]}});
    evil.send(&json!({"t": "foreign", "entries": [entry]})).await;
    let lists = async || {
        let body = a.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["name"] == "upper" && f["cluster"] == "gamma")
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!lists().await, "alpha takes gamma's plugin from a neighbour with no way there");
    let err = call_in(&a, "gamma", "upper", None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NO_ROUTE, "{err:?}");
    // The same offer from a neighbour that announces gamma is taken.
    let routes = json!([route("evil", &["evil"]), route("gamma", &["evil", "gamma"])]);
    evil.send(&json!({"t": "routes", "epoch": 2, "routes": routes})).await;
    evil.send(&json!({"t": "foreign", "entries": [entry]})).await;
    eventually("alpha to take the offer with a route behind it", SETTLE, async || lists().await.then_some(())).await;
}

/// A fake node (`id`, `cluster`) joins `node`, announces a route to alpha
/// along `to_alpha`, then calls gamma's `text/upper` as if for alpha (with
/// the fields of `extra` set), until a call gets past the check that it
/// announced alpha: that call's reply.
async fn forged_upper(node: &TestNode, (id, cluster): (&str, &str), to_alpha: &[&str], extra: Value) -> Value {
    let mut forger = FakePeer::join(node, id, cluster).await;
    let routes = json!([
        {"destination": cluster, "path": [cluster], "hops": 0, "latency_us": 0, "reliability": 1000},
        {"destination": "alpha", "path": to_alpha, "hops": to_alpha.len() - 1, "latency_us": 0, "reliability": 1000}
    ]);
    forger.send(&json!({"t": "routes", "epoch": 1, "routes": routes})).await;
    let mut call_id = 0;
    eventually("a forged call past the path check", SETTLE, async || {
        call_id += 1;
        let mut call = json!({"t": "call", "id": call_id, "function": "text/upper", "version": "0.1.0", "args": ["x"],
            "deadline_ms": 5000, "routing_path": [id], "federation_path": ["alpha", cluster], "hop_budget": 3,
            "target_cluster": "gamma"});
        call.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        forger.send(&call).await;
        let reply = forger.next_of("reply").await;
        (reply["error"]["details"]["rule"] != "path").then_some(reply)
    })
    .await
}

/// A node of `cluster` (id `CLUSTER1`) in permissive federation under
/// `federation` rules, with fast announcements.
fn ruled_node(cluster: &str, plugins: Vec<&'static str>, seeds: &[&TestNode], federation: &str) -> TestNode {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
    let config = format!(
        "id = \"{cluster}1\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[federation]\nmode = \"permissive\"\n{federation}\n[routing]\nannounce_interval = \"200ms\"\nroute_ttl = \"1s\"\n",
        seeds.join(", ")
    );
    TestNode::start(NodeSpec { plugins, files: vec![], config })
}

/// alpha calls `upper`, which delta (behind beta, transit) and epsilon
/// (bridged directly) offer, and gamma too, behind beta, but alpha blocks
/// gamma. Beta carries each call to the cluster alpha chose, never to
/// another it has the function in; it carries none to a cluster it does
/// not offer alpha a route to; and a peer of alpha's cluster cannot hide
/// where its call started from beta by sending no federation path.
#[tokio::test]
async fn a_transit_cluster_carries_a_call_only_where_the_origin_sent_it() {
    let offer = "[routing.neighbours.alpha]\nexport = [\"delta\", \"epsilon\"]";
    let b = cluster_node_with("beta1", "beta", vec![], &[], true, offer);
    let g = cluster_node("gamma", vec!["text"], &[&b], false);
    let _d = cluster_node("delta", vec!["text"], &[&b], false);
    let e = cluster_node("epsilon", vec!["text"], &[], false);
    let a = ruled_node("alpha", vec![], &[&b, &e], "blocked_clusters = [\"gamma\"]");
    let upper_in = async |cluster: &str| {
        let body = a.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["name"] == "upper" && f["cluster"] == cluster)
    };
    eventually("alpha to list upper in delta and epsilon", SETTLE, async || {
        (upper_in("delta").await && upper_in("epsilon").await).then_some(())
    })
    .await;
    assert!(!upper_in("gamma").await);
    let client = a.client().await;
    let mut ran_in = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let mut req = Request::new("", vec![Command::new("x", "upper", vec![json!("abc")])]);
        req.include_execution_summary = true;
        let response = client.request(req).await.unwrap();
        let step = response.execution_summary.clone().unwrap().steps[0].clone();
        assert_eq!(response.into_result().unwrap()["x"], "ABC");
        assert_eq!(step.node, format!("{}1", step.cluster), "the summary names where it ran");
        ran_in.insert(step.cluster.clone());
    }
    assert!(!ran_in.contains("gamma"), "{ran_in:?}");
    let ran = metric(&g.admin().get("/metrics").await.unwrap().text, "weft_calls_total{function=\"text/upper\"");
    assert_eq!(ran, None, "gamma ran alpha's calls");

    let mut peer = support::FakePeer::join(&b, "alpha9", "alpha").await;
    for (id, path, target, answer) in [
        (1, json!([]), "delta", "INVALID_REQUEST"),
        (2, json!(["alpha"]), "gamma", "NO_ROUTE"),
        (3, json!(["alpha"]), "delta", "HI"),
        // alpha announced beta no route to gamma: it cannot be carrying
        // gamma's call, so the path is made up.
        (4, json!(["gamma", "alpha"]), "delta", "POLICY_DENIED"),
    ] {
        let call = json!({"t": "call", "id": id, "function": "text/upper", "version": "0.1.0", "args": ["hi"],
            "deadline_ms": 5000, "routing_path": ["alpha9"], "federation_path": path, "hop_budget": 4,
            "target_cluster": target});
        peer.send(&call).await;
        let reply = peer.next_of("reply").await;
        let got = reply.get("value").unwrap_or(&reply["error"]["kind"]);
        assert_eq!(got, answer, "{reply}");
        if answer == "POLICY_DENIED" {
            // Its details name the cluster it was about and the path as a list.
            let details = &reply["error"]["details"];
            assert_eq!((&details["rule"], &details["cluster"]), (&json!("path"), &json!("gamma")), "{reply}");
            assert_eq!(details["federation_path"], json!(["gamma", "alpha"]), "{reply}");
        }
    }
}

/// A reload that blocks a cluster withdraws at once every route across it,
/// with what lies behind, and calls there are refused, without waiting for
/// the neighbour's next update (20 s away here: routes go out at once only
/// when they change).
#[tokio::test]
async fn a_reload_blocking_a_cluster_withdraws_the_routes_across_it_at_once() {
    let slow = |cluster: &str, plugins: Vec<&'static str>, seeds: &[&TestNode]| {
        let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
        let config = format!(
            "id = \"{cluster}1\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[routing]\ntransit = true\nannounce_interval = \"20s\"\nroute_ttl = \"60s\"\n[federation]\nmode = \"permissive\"\n",
            seeds.join(", ")
        );
        TestNode::start(NodeSpec { plugins, files: vec![], config })
    };
    let b = slow("beta", vec![], &[]);
    let g = slow("gamma", vec![], &[&b]);
    let _d = slow("delta", vec!["text"], &[&g]);
    let a = slow("alpha", vec![], &[&b]);
    eventually("upper in delta to answer alpha", SETTLE, async || call_in(&a, "delta", "upper", None).await.ok()).await;

    let path = a.dir.path().join("weft.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    support::write(&path, &format!("{text}blocked_clusters = [\"gamma\"]\n"));
    assert_eq!(a.admin().post("/v1/federation/reload", "").await.unwrap().status, 200);
    let gone = eventually("routes across gamma withdrawn", Duration::from_secs(5), async || {
        (best(&a, "gamma").await.is_none() && best(&a, "delta").await.is_none()).then_some(())
    });
    gone.await;
    assert_eq!(best(&a, "beta").await, Some(("beta1".into(), 1)));
    let err = call_in(&a, "delta", "upper", None).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::NO_ROUTE | ErrorKind::POLICY_DENIED), "{err:?}");
    let catalog = a.admin().get("/v1/catalog").await.unwrap().body;
    assert!(!catalog.to_string().contains("\"delta\""), "{catalog}");
}

/// In a ring alpha - beta - gamma - delta - alpha, gamma trusts only the
/// middle cluster that alpha's best route to gamma does not go through: a
/// plugin of gamma open to alpha alone is still listed in alpha and called
/// the way gamma offered it, not along the best route (whose cluster gamma
/// does not trust with alpha's calls).
#[tokio::test]
async fn a_plugin_open_to_one_cluster_is_called_the_way_it_was_offered_in_a_ring() {
    let b = cluster_node("beta", vec![], &[], true);
    let config = format!(
        "id = \"gamma1\"\ncluster = \"gamma\"\nseeds = [{:?}]\n[routing]\nannounce_interval = \"200ms\"\nroute_ttl = \"1s\"\n[federation]\nmode = \"permissive\"\n",
        b.ws
    );
    let files = vec![("text.toml".to_owned(), b"callers = [\"cluster:alpha\"]\n".to_vec())];
    let g = TestNode::start(NodeSpec { plugins: vec!["text"], files, config });
    let d = cluster_node("delta", vec![], &[&g], true);
    let a = cluster_node("alpha", vec![], &[&b, &d], false);
    let (via, hops) = eventually("a route from alpha to gamma", SETTLE, async || best(&a, "gamma").await).await;
    assert_eq!(hops, 2);
    let other = if via == "beta1" { "delta" } else { "beta" };
    let path = g.dir.path().join("weft.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    support::write(&path, &format!("{text}trusted_transit = [\"{other}\"]\n"));
    assert_eq!(g.admin().post("/v1/federation/reload", "").await.unwrap().status, 200);
    let lists = async || {
        let body = a.admin().get("/v1/catalog").await.unwrap().body;
        body["functions"].as_array().unwrap().iter().any(|f| f["name"] == "upper" && f["cluster"] == "gamma")
    };
    eventually("alpha to list gamma's upper", SETTLE, async || lists().await.then_some(())).await;
    for _ in 0..5 {
        assert_eq!(call_in(&a, "gamma", "upper", None).await.unwrap(), (json!("ABC"), 2));
    }
    drop((b, d));
}

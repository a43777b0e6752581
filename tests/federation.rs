//! Federation between two clusters of real nodes: the policy matrix (every
//! mode, every way of meeting, one answer), bridges restricted to nodes,
//! function rules, export, rate limits and policy reload.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::{FakePeer, NodeSpec, TestNode, eventually, metric};
use weft_proto::{Command, ErrorKind, Request, WeftError};

const SETTLE: Duration = Duration::from_secs(10);

/// A node of `cluster` with `plugins`, dialling `seeds`, under `federation` (TOML).
fn node(id: &str, cluster: &str, plugins: Vec<&'static str>, seeds: &[&TestNode], federation: &str) -> TestNode {
    node_with(id, cluster, plugins, vec![], seeds, federation)
}

fn node_with(
    id: &str,
    cluster: &str,
    plugins: Vec<&'static str>,
    files: Vec<(String, Vec<u8>)>,
    seeds: &[&TestNode],
    federation: &str,
) -> TestNode {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
    let config = format!(
        "id = \"{id}\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[cluster]\nbeat_interval = \"100ms\"\ncatalog_ttl = \"3s\"\n{federation}\n",
        seeds.join(", ")
    );
    TestNode::start(NodeSpec { plugins, files, config })
}

/// Replaces the federation part of a node's config file (for reloads).
fn rewrite_federation(node: &TestNode, federation: &str) {
    let path = node.dir.path().join("weft.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = text.split("[federation]").next().unwrap();
    support::write(&path, &format!("{head}{federation}\n"));
}

async fn peers(node: &TestNode) -> Value {
    node.admin().get("/v1/peers").await.unwrap().body
}

async fn linked(node: &TestNode, other: &str) -> bool {
    peers(node).await["links"].as_array().unwrap().iter().any(|l| l["node"] == other)
}

/// (cluster, function) pairs in a node's catalog.
async fn catalog(node: &TestNode) -> BTreeSet<(String, String)> {
    let body = node.admin().get("/v1/catalog").await.unwrap().body;
    body["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["cluster"].as_str().unwrap().to_owned(), f["name"].as_str().unwrap().to_owned()))
        .collect()
}

async fn sees(node: &TestNode, cluster: &str, function: &str) -> bool {
    catalog(node).await.contains(&(cluster.to_owned(), function.to_owned()))
}

/// Calls `fun` in `cluster` from `node`.
async fn call_in(node: &TestNode, cluster: &str, fun: &str, args: Vec<Value>) -> Result<Value, WeftError> {
    let mut cmd = Command::new("x", fun, args);
    cmd.target_cluster = Some(cluster.to_owned());
    node.client().await.call_command(cmd).await
}

/// A policy refusal recorded by `node` (either side refused).
async fn refusal(node: &TestNode) -> Option<Value> {
    peers(node).await["refused"].as_array().unwrap().iter().find(|r| r["kind"] == "policy").cloned()
}

const STRICT: &str = "[federation]\nmode = \"strict\"";
const PERMISSIVE: &str = "[federation]\nmode = \"permissive\"";

fn allow(cluster: &str) -> String {
    format!("[federation]\nmode = \"explicit\"\nallowed_clusters = [\"{cluster}\"]")
}

fn bridge(cluster: &str, nodes: &[&str]) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
    format!(
        "[federation]\nmode = \"explicit\"\n[[federation.bridges]]\ncluster = \"{cluster}\"\nnodes = [{}]",
        nodes.join(", ")
    )
}

/// How the two clusters meet.
#[derive(Clone, Copy, Debug)]
enum Meeting {
    /// a1 has b1 as a seed.
    ADialsB,
    /// b1 has a1 as a seed.
    BDialsA,
    /// a1 learns b1's address by gossip from a2, its cluster mate, whose seed b1 is.
    Gossip,
}

/// What every way of meeting must agree on.
#[derive(Debug)]
struct Expected {
    linked: bool,
    /// For a denial: the rule in the POLICY_DENIED error a1 gets calling into beta.
    denied_by: Option<&'static str>,
}

async fn meet(alpha: &str, beta: &str, meeting: Meeting) -> (TestNode, TestNode, Option<TestNode>) {
    match meeting {
        Meeting::ADialsB => {
            let b1 = node("b1", "beta", vec!["text"], &[], beta);
            let a1 = node("a1", "alpha", vec!["echo"], &[&b1], alpha);
            (a1, b1, None)
        }
        Meeting::BDialsA => {
            let a1 = node("a1", "alpha", vec!["echo"], &[], alpha);
            let b1 = node("b1", "beta", vec!["text"], &[&a1], beta);
            (a1, b1, None)
        }
        Meeting::Gossip => {
            let b1 = node("b1", "beta", vec!["text"], &[], beta);
            let a2 = node("a2", "alpha", vec!["math"], &[&b1], alpha);
            let a1 = node("a1", "alpha", vec!["echo"], &[&a2], alpha);
            (a1, b1, Some(a2))
        }
    }
}

async fn check_case(name: &str, alpha: &str, beta: &str, expected: Expected) {
    for meeting in [Meeting::ADialsB, Meeting::BDialsA, Meeting::Gossip] {
        let what = format!("{name}, {meeting:?}");
        let (a1, b1, _a2) = meet(alpha, beta, meeting).await;
        if expected.linked {
            eventually(&format!("{what}: a1 to see beta's upper"), SETTLE, async || {
                sees(&a1, "beta", "upper").await.then_some(())
            })
            .await;
            eventually(&format!("{what}: b1 to see alpha's echo"), SETTLE, async || {
                sees(&b1, "alpha", "echo").await.then_some(())
            })
            .await;
            eventually(&format!("{what}: one link, seen from both sides"), SETTLE, async || {
                (linked(&a1, "b1").await && linked(&b1, "a1").await).then_some(())
            })
            .await;
            assert_eq!(call_in(&a1, "beta", "upper", vec![json!("x")]).await.unwrap(), json!("X"), "{what}");
            assert_eq!(call_in(&b1, "alpha", "echo", vec![json!("y")]).await.unwrap(), json!("y"), "{what}");
        } else {
            // Both sides say why: the refusal is recorded on each.
            let at_a1 =
                eventually(&format!("{what}: a1 to record the refusal"), SETTLE, async || refusal(&a1).await).await;
            let at_b1 =
                eventually(&format!("{what}: b1 to record the refusal"), SETTLE, async || refusal(&b1).await).await;
            assert!(at_a1["reason"].as_str().unwrap().contains("rule"), "{what}: {at_a1}");
            assert_eq!(at_a1["rule"], at_b1["rule"], "{what}: one decision, seen from both sides");
            assert!(!linked(&a1, "b1").await && !linked(&b1, "a1").await, "{what}: no link");
            // Not even for a moment: a welcome the dialler refuses brings no link up.
            for (n, other) in [(&a1, "peer=b1"), (&b1, "peer=a1")] {
                let up =
                    n.stderr().lines().find(|l| l.contains("peer link up") && l.contains(other)).map(str::to_owned);
                assert_eq!(up, None, "{what}: {} logged a link up", n.id);
            }
            assert!(!sees(&a1, "beta", "upper").await, "{what}: beta's functions stay invisible");
            assert!(!sees(&b1, "alpha", "echo").await, "{what}: alpha's functions stay invisible");
            let err = call_in(&a1, "beta", "upper", vec![json!("x")]).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::POLICY_DENIED, "{what}: {err:?}");
            assert_eq!(err.details["rule"], json!(expected.denied_by.unwrap()), "{what}: {}", err.message);
            let metrics = a1.admin().get("/metrics").await.unwrap().text;
            let rejected = metric(&metrics, "weft_links_refused_total{kind=\"policy\"}")
                .or_else(|| metric(&metrics, "weft_federation_decisions_total{point=\"link"));
            assert!(rejected.is_some(), "{what}: the refusal is counted:\n{metrics}");
            // ... and raised as an alert on both sides, which an operator can acknowledge.
            for n in [&a1, &b1] {
                let alerts = n.admin().get("/v1/alerts").await.unwrap().body;
                let alert = alerts["alerts"].as_array().unwrap().iter().find(|a| a["kind"] == "link-refused").cloned();
                let alert = alert.unwrap_or_else(|| panic!("{what}: no link-refused alert on {}: {alerts}", n.id));
                let ack = n.admin().post(&format!("/v1/alerts/{}/ack", alert["id"]), "").await.unwrap();
                assert_eq!(ack.status, 200, "{what}");
            }
        }
    }
}

/// Whoever can reach the port can say hello with any address: refused
/// inbound links share one alert (naming the latest), so a flood of them
/// cannot push other alerts out or log a line each.
#[tokio::test]
async fn refused_inbound_links_share_one_alert() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let a1 = node("a1", "alpha", vec!["echo"], &[], STRICT);
    for i in 0..40 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&a1.ws).await.unwrap();
        let hello = json!({"t": "hello", "proto": 1, "node": format!("x{i}"), "cluster": "gamma", "incarnation": 1, "addr": format!("ws://10.9.0.{i}:7700"), "caps": []});
        ws.send(Message::Text(hello.to_string().into())).await.unwrap();
        let answer = ws.next().await.unwrap().unwrap();
        assert!(answer.to_text().unwrap().contains("\"reject\""), "{answer}");
    }
    let alerts = a1.admin().get("/v1/alerts").await.unwrap().body;
    let refused: Vec<&Value> =
        alerts["alerts"].as_array().unwrap().iter().filter(|a| a["kind"] == "link-refused").collect();
    assert_eq!(refused.len(), 1, "{alerts}");
    assert_eq!(refused[0]["subject"], "inbound links", "{alerts}");
    assert!(
        refused[0]["message"]
            .as_str()
            .unwrap()
            .ends_with("(latest: node x39 of cluster gamma, at ws://10.9.0.39:7700)"),
        "{alerts}"
    );
    assert_eq!(a1.stderr().matches("alert raised").count(), 1, "{}", a1.stderr());
}

#[tokio::test]
async fn strict_clusters_never_link_however_they_meet() {
    check_case("strict", STRICT, STRICT, Expected { linked: false, denied_by: Some("strict-mode") }).await;
}

#[tokio::test]
async fn explicitly_allowed_clusters_link_however_they_meet() {
    check_case("explicit allowed", &allow("beta"), &allow("alpha"), Expected { linked: true, denied_by: None }).await;
}

#[tokio::test]
async fn a_cluster_not_in_the_allow_list_is_refused_however_they_meet() {
    let alpha = "[federation]\nmode = \"explicit\"\nallowed_clusters = [\"gamma\"]";
    check_case(
        "explicit not allowed",
        alpha,
        &allow("alpha"),
        Expected { linked: false, denied_by: Some("not-allowed") },
    )
    .await;
}

#[tokio::test]
async fn a_bridge_with_a_node_list_admits_exactly_those_nodes() {
    let matching = Expected { linked: true, denied_by: None };
    check_case("bridge, node listed", &bridge("beta", &[]), &bridge("alpha", &["a1"]), matching).await;
    let other = Expected { linked: false, denied_by: Some("bridge-nodes") };
    check_case("bridge, node not listed", &bridge("beta", &[]), &bridge("alpha", &["a9"]), other).await;
}

#[tokio::test]
async fn permissive_clusters_link_and_say_so() {
    check_case("permissive", PERMISSIVE, PERMISSIVE, Expected { linked: true, denied_by: None }).await;
    let a1 = node("a1", "alpha", vec!["echo"], &[], PERMISSIVE);
    let b1 = node("b1", "beta", vec!["text"], &[&a1], PERMISSIVE);
    eventually("link", SETTLE, async || linked(&a1, "b1").await.then_some(())).await;
    let metrics = a1.admin().get("/metrics").await.unwrap().text;
    assert!(
        metric(&metrics, "weft_federation_decisions_total{point=\"link-in\",outcome=\"accepted\",rule=\"permissive\"}")
            .is_some()
    );
    assert!(a1.stderr().contains("permissive"), "the acceptance is logged as a warning");
    drop(b1);
}

#[tokio::test]
async fn a_blocked_cluster_is_refused_even_by_a_permissive_one() {
    let alpha = "[federation]\nmode = \"permissive\"\nblocked_clusters = [\"beta\"]";
    check_case("blocked", alpha, PERMISSIVE, Expected { linked: false, denied_by: Some("blocked-cluster") }).await;
}

#[tokio::test]
async fn asymmetric_policies_give_no_link_and_both_sides_say_why() {
    // alpha would accept beta; beta accepts nobody.
    check_case("asymmetric", &allow("beta"), STRICT, Expected { linked: false, denied_by: Some("strict-mode") }).await;
}

#[tokio::test]
async fn a_bridge_restricted_to_one_node_serves_its_whole_cluster() {
    // MPREG's three scenarios in one topology: a2 meets b1 by gossip (and is
    // refused: not on beta's bridge list), a1 meets b1 directly, and a2 still
    // calls beta through a1, its cluster mate.
    let b1 = node("b1", "beta", vec!["text"], &[], &bridge("alpha", &["a1"]));
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &bridge("beta", &[]));
    let a2 = node("a2", "alpha", vec!["math"], &[&a1], &bridge("beta", &[]));
    for n in [&a1, &a2] {
        eventually("beta's functions in alpha", SETTLE, async || sees(n, "beta", "upper").await.then_some(())).await;
    }
    let refused = eventually("a2's gossip-learnt dial to be refused", SETTLE, async || refusal(&a2).await).await;
    assert_eq!(refused["rule"], "bridge-nodes");
    assert!(!linked(&a2, "b1").await);
    // a2 holds no route of its own to beta, and says how it gets there.
    let explain = a2.admin().get("/v1/routes/explain?cluster=beta").await.unwrap().body;
    assert_eq!((&explain["winner"], &explain["relayed_by"]), (&Value::Null, &json!(["a1"])), "{explain}");
    assert_eq!(explain["reachable"], true, "{explain}");
    // So the refused dial hides none of beta's functions, and a missing one
    // does not blame it.
    let e = a2.client().await.call("nosuch", vec![]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{e}");
    assert!(e.details.get("refused_clusters").is_none() && !e.message.contains("was refused"), "{e}");

    // A pipeline mixing clusters, sent to a2: echo on a1, upper in beta via a1, add on a2.
    let req: Request = serde_json::from_value(json!({
        "role": "rpc", "u": "mix",
        "cmds": [
            {"name": "e", "fun": "echo", "args": ["two words"]},
            {"name": "u", "fun": "upper", "args": [{"$ref": "e"}], "target_cluster": "beta"},
            {"name": "n", "fun": "word-count", "args": [{"$ref": "u"}]},
            {"name": "s", "fun": "add", "args": [{"$ref": "n"}, 40]}
        ],
        "include_execution_summary": true
    }))
    .unwrap();
    let response = a2.client().await.request(req).await.unwrap();
    assert_eq!(response.r.unwrap(), json!({"s": 42}));
    let clusters: Vec<String> = response.execution_summary.unwrap().steps.into_iter().map(|s| s.cluster).collect();
    assert_eq!(clusters, ["alpha", "beta", "beta", "alpha"]);
    // And beta reaches a2's math through a1.
    assert_eq!(call_in(&b1, "alpha", "add", vec![json!(1), json!(2)]).await.unwrap(), json!(3));
    // A function rule of a2's own binds what a1, the bridge, offers beta of
    // a2's functions, though a1 runs the older policy: a2 advertises add as
    // served to no other cluster, and beta's catalog loses it.
    rewrite_federation(&a2, &format!("{}\n[federation.functions]\nblock = [\"add\"]", bridge("beta", &[])));
    let reply = a2.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    eventually("add gone from beta", SETTLE, async || (!sees(&b1, "alpha", "add").await).then_some(())).await;
    assert!(sees(&b1, "alpha", "divide").await, "a2's other functions are still offered");
    let err = call_in(&b1, "alpha", "add", vec![json!(1), json!(2)]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "{err}");
    // A beta node whose view is older still gets a2's refusal from a1.
    let mut stale = FakePeer::join(&a1, "b9", "beta").await;
    stale
        .send(&json!({"t": "call", "id": 1, "function": "math/add", "version": "0.1.0", "args": [1, 2],
            "deadline_ms": 5000, "routing_path": ["b9"], "federation_path": ["beta"], "hop_budget": 2,
            "target_cluster": "alpha"}))
        .await;
    let reply = stale.next_of("reply").await;
    assert_eq!(
        (&reply["error"]["kind"], &reply["error"]["details"]["rule"]),
        (&json!("POLICY_DENIED"), &json!("member-policy")),
        "{reply}"
    );
    assert_eq!(reply["error"]["details"]["nodes"], json!(["a2"]), "{reply}");

    // Crossing into beta takes a hop; with none left the call says where it stopped.
    let mut cmd = Command::new("x", "upper", vec![json!("x")]);
    cmd.target_cluster = Some("beta".into());
    let mut req = Request::new("h", vec![cmd]);
    req.hop_budget = Some(0);
    let response = a2.client().await.request(req).await.unwrap();
    let err: WeftError = response.error.unwrap().into();
    assert_eq!(err.kind, ErrorKind::HOP_BUDGET_EXHAUSTED, "{err:?}");
    assert_eq!(err.details["federation_path"], json!(["alpha"]));
}

/// A member reaches a bridged cluster through its cluster's bridge node
/// even when that cluster offers nothing: a call for a function there fails
/// at the member as at the bridge node, not with the member's own refused
/// dial (nor "no route").
#[tokio::test]
async fn a_member_and_its_bridge_node_answer_alike_for_a_cluster_that_offers_nothing() {
    let offers_nothing = format!("{}\n[federation.functions]\nallow = [\"nosuch\"]", bridge("alpha", &["a1"]));
    let b1 = node("b1", "beta", vec!["text"], &[], &offers_nothing);
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &bridge("beta", &[]));
    let a2 = node("a2", "alpha", vec!["math"], &[&a1], &bridge("beta", &[]));
    eventually("a1's bridge to b1", SETTLE, async || linked(&a1, "b1").await.then_some(())).await;
    let refused = eventually("a2's gossip-learnt dial to be refused", SETTLE, async || refusal(&a2).await).await;
    assert_eq!(refused["rule"], "bridge-nodes");
    for n in [&a1, &a2] {
        let offered_nothing = async || {
            let e = call_in(n, "beta", "upper", vec![json!("x")]).await.unwrap_err();
            (e.kind == ErrorKind::FUNCTION_NOT_FOUND).then_some(e)
        };
        let e = eventually("upper in beta not found", SETTLE, offered_nothing).await;
        assert!(e.message.contains("cluster beta offers none of that name to cluster alpha"), "{e}");
        let e = n.client().await.call("upper", vec![json!("x")]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{e}");
        assert!(e.details.get("refused_clusters").is_none(), "a2 reaches beta through a1: {e}");
    }
    let explain = a2.admin().get("/v1/routes/explain?cluster=beta").await.unwrap().body;
    assert_eq!((&explain["relayed_by"], &explain["reachable"]), (&json!(["a1"]), &json!(true)), "{explain}");
}

/// Beta's b1, bridged to alpha's a1 only, and a2, a member of alpha whose
/// own dials beta refuses: a2 reaches beta through a1.
async fn bridged_through_a_mate() -> (TestNode, TestNode, TestNode) {
    let b1 = node("b1", "beta", vec!["text"], &[], &bridge("alpha", &["a1"]));
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &bridge("beta", &[]));
    let a2 = node("a2", "alpha", vec!["math"], &[&a1], &bridge("beta", &[]));
    eventually("beta's functions at a2", SETTLE, async || sees(&a2, "beta", "upper").await.then_some(())).await;
    let refused = eventually("a2's own dial to be refused", SETTLE, async || refusal(&a2).await).await;
    assert_eq!(refused["rule"], "bridge-nodes");
    (b1, a1, a2)
}

/// `at` answers a call for beta's `upper`, named with its cluster or
/// alone, with UNAVAILABLE: it went out of reach with node `lost`.
async fn assert_beta_out_of_reach(at: &TestNode, lost: &str) {
    let out_of_reach = async |target: Option<&str>| {
        eventually("beta out of reach", SETTLE, async || {
            let mut cmd = Command::new("x", "upper", vec![json!("x")]);
            cmd.target_cluster = target.map(str::to_owned);
            let e = at.client().await.call_command(cmd).await.unwrap_err();
            (e.kind == ErrorKind::UNAVAILABLE).then_some(e)
        })
        .await
    };
    let e = out_of_reach(Some("beta")).await;
    assert!(e.message.contains("cluster beta went out of reach"), "{e}");
    assert_eq!((&e.details["nodes"], &e.details["cluster"]), (&json!([lost]), &json!("beta")), "{e}");
    let e = out_of_reach(None).await;
    assert!(e.message.contains("text/upper@0.1.0 went out of reach"), "{e}");
    assert_eq!(e.details["nodes"], json!([lost]), "{e}");
}

/// A member whose way into another cluster is its cluster mate's bridge is
/// told, when that bridge node goes down, that the cluster went out of
/// reach with it (UNAVAILABLE: retry), not the policy refusal of its own
/// dial long before.
#[tokio::test]
async fn a_bridge_node_going_down_puts_the_other_cluster_out_of_reach_not_out_of_policy() {
    let (_b1, mut a1, a2) = bridged_through_a_mate().await;
    a1.kill();
    assert_beta_out_of_reach(&a2, "a1").await;
}

/// When the other cluster's bridge node goes down, the bridge node of this
/// cluster tells its members what went: a member answers as the bridge
/// node does (out of reach with b1, retry), not with the policy refusal of
/// its own dial, which its link to the bridge node did not explain.
#[tokio::test]
async fn a_member_answers_like_its_bridge_node_when_the_far_side_bridge_goes_down() {
    let (mut b1, a1, a2) = bridged_through_a_mate().await;
    b1.kill();
    assert_beta_out_of_reach(&a1, "b1").await;
    assert_beta_out_of_reach(&a2, "b1").await;
}

/// Two bridge nodes linked to the same node of the other side each lose
/// their own link and then the way through the other, a moment apart:
/// both answer that the cluster went out of reach with that node.
#[tokio::test]
async fn two_bridge_nodes_to_one_node_that_goes_down_both_answer_out_of_reach() {
    let mut b1 = node("b1", "beta", vec!["text"], &[], &bridge("alpha", &["a1", "a3"]));
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &bridge("beta", &["b1"]));
    let a3 = node("a3", "alpha", vec!["math"], &[&a1, &b1], &bridge("beta", &["b1"]));
    for at in [&a1, &a3] {
        eventually("beta's functions in alpha", SETTLE, async || sees(at, "beta", "upper").await.then_some(())).await;
    }
    b1.kill();
    assert_beta_out_of_reach(&a1, "b1").await;
    assert_beta_out_of_reach(&a3, "b1").await;
}

#[tokio::test]
async fn function_rules_export_flags_and_rate_limits_bind_foreign_callers() {
    let federation = format!(
        "{}\n[federation.functions]\nblock = [\"split\"]\nallow = [\"upper\", \"split\", \"secret\"]\nrate_limit_per_minute = 120",
        allow("alpha")
    );
    let files = vec![("math.toml".to_owned(), b"export = false\n".to_vec())];
    let b1 = node_with("b1", "beta", vec!["text", "math"], files, &[], &federation);
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &allow("beta"));
    eventually("upper in alpha", SETTLE, async || sees(&a1, "beta", "upper").await.then_some(())).await;
    // Only what beta offers alpha is visible there.
    let seen = catalog(&a1).await;
    assert!(!seen.contains(&("beta".into(), "split".into())), "blocked functions are not offered");
    assert!(!seen.contains(&("beta".into(), "word-count".into())), "functions outside the allow list are not offered");
    assert!(!seen.contains(&("beta".into(), "add".into())), "export = false stays home");
    assert!(sees(&b1, "beta", "add").await, "but is in beta's own catalog");

    // A function beta does not offer cannot even be named from alpha.
    let mut cmd = Command::new("x", "", vec![json!("a,b"), json!(",")]);
    cmd.function_id = Some("text/split".into());
    cmd.target_cluster = Some("beta".into());
    let err = a1.client().await.call_command(cmd).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "split is not visible from alpha: {err:?}");

    // Rate limit: the budget runs out, says when to retry, and recovers.
    let client = a1.client().await;
    let mut limited = None;
    for i in 0..200 {
        let mut cmd = Command::new("x", "upper", vec![json!("r")]);
        cmd.target_cluster = Some("beta".into());
        match client.call_command(cmd).await {
            Ok(v) => assert_eq!(v, json!("R")),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::RATE_LIMITED, "call {i}: {e:?}");
                limited = Some(e);
                break;
            }
        }
    }
    let limited = limited.expect("the per-minute budget ran out");
    assert_eq!(limited.details["cluster"], "alpha");
    assert!(limited.message.contains("rate_limit_per_minute"), "{}", limited.message);
    let wait = limited.details["retry_after_ms"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    assert_eq!(call_in(&a1, "beta", "upper", vec![json!("r")]).await.unwrap(), json!("R"), "recovered");
    let alerts = b1.admin().get("/v1/alerts").await.unwrap().body;
    assert!(
        alerts["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "rate-limited" && a["subject"] == "alpha"),
        "{alerts}"
    );
}

/// A link closed by a reload is counted at the point it was judged at
/// first: `link-out` on the node that dialled it.
#[tokio::test]
async fn a_reload_that_closes_a_dialled_link_counts_it_as_link_out() {
    let b1 = node("b1", "beta", vec!["text"], &[], &allow("alpha"));
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &allow("beta"));
    eventually("upper in alpha", SETTLE, async || sees(&a1, "beta", "upper").await.then_some(())).await;
    rewrite_federation(&a1, STRICT);
    let reply = a1.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reply.body["links_closed"], json!(["b1"]), "{}", reply.text);
    let counters = a1.admin().get("/v1/federation").await.unwrap().body["counters"].clone();
    let rejected = |point: &str| {
        counters
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["point"] == point && c["outcome"] == "rejected" && c["rule"] == "strict-mode")
    };
    assert!(rejected("link-out") && !rejected("link-in"), "{counters}");
}

#[tokio::test]
async fn reloading_a_tighter_policy_closes_links_and_withdraws_imports() {
    let b1 = node("b1", "beta", vec!["text"], &[], &allow("alpha"));
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &allow("beta"));
    eventually("upper in alpha", SETTLE, async || sees(&a1, "beta", "upper").await.then_some(())).await;

    // Block one function (SIGHUP): it is withdrawn from alpha, the rest stays.
    rewrite_federation(&b1, &format!("{}\n[federation.functions]\nblock = [\"upper\"]", allow("alpha")));
    let _ = std::process::Command::new("kill").args(["-HUP", &b1.pid().to_string()]).status();
    eventually("upper withdrawn", SETTLE, async || (!sees(&a1, "beta", "upper").await).then_some(())).await;
    assert!(sees(&a1, "beta", "split").await);

    // Strict (POST /v1/federation/reload): the link goes, and stays gone.
    rewrite_federation(&b1, STRICT);
    let reply = b1.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["links_closed"], json!(["a1"]));
    eventually("beta gone from alpha", SETTLE, async || (!sees(&a1, "beta", "split").await).then_some(())).await;
    let err = eventually("the redial to be refused", SETTLE, async || {
        call_in(&a1, "beta", "split", vec![json!("a"), json!(",")])
            .await
            .err()
            .filter(|e| e.kind == ErrorKind::POLICY_DENIED)
    })
    .await;
    assert_eq!(err.details["rule"], "strict-mode");
    let federation = b1.admin().get("/v1/federation").await.unwrap().body;
    assert_eq!(federation["policy"]["mode"], "strict");
    assert_eq!(reply.body["needs_restart"], json!([]));

    // A section read only at the start is named, not applied; a function
    // rule that names nothing the cluster has is warned of.
    let text = format!("{STRICT}\n[federation.functions]\nblock = [\"UPPER\"]\n[limits]\nmemory = \"32MiB\"");
    rewrite_federation(&b1, &text);
    let reply = b1.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!((reply.status, &reply.body["needs_restart"]), (200, &json!(["limits"])), "{}", reply.text);
    let warning = "federation.functions.block: \"UPPER\" names no function cluster beta has now (names are matched exactly, in their capitals: text/upper is there)";
    assert_eq!(reply.body["warnings"], json!([warning]), "{}", reply.text);

    // A broken file is refused and the policy in force stays.
    rewrite_federation(&b1, "[federation]\nmode = \"wide-open\"");
    let reply = b1.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.text.contains("mode"), "{}", reply.text);
    assert_eq!(b1.admin().get("/v1/federation").await.unwrap().body["policy"]["mode"], "strict");
    // Reloads over the admin API leave a trace in the log, as SIGHUP's do:
    // the SIGHUP, the two good ones above and this refused one.
    let log = b1.stderr();
    assert_eq!(log.matches("federation policy reloaded").count(), 3, "{log}");
    assert_eq!(log.matches("federation policy not reloaded; the old one stays").count(), 1, "{log}");

    // Opened again: b1 dials back the node it refused (which would wait
    // 30 s before asking again), and calls cross once it is linked.
    assert!(refusal(&b1).await.is_some_and(|r| r["by"] == "local"), "b1 refused a1's redials");
    rewrite_federation(&b1, &allow("alpha"));
    assert_eq!(b1.admin().post("/v1/federation/reload", "").await.unwrap().status, 200);
    let value = eventually("alpha's echo from beta", SETTLE, async || {
        call_in(&b1, "alpha", "echo", vec![json!("x")]).await.ok()
    })
    .await;
    assert_eq!(value, json!("x"));
}

#[tokio::test]
async fn locs_are_honoured_on_the_far_side_of_a_bridge() {
    let b1 = node("b1", "beta", vec!["math"], &[], &allow("alpha"));
    let config = |id: &str| {
        format!(
            "id = \"{id}\"\ncluster = \"beta\"\nseeds = [{:?}]\nresources = [\"gpu\"]\n[cluster]\nbeat_interval = \"100ms\"\ncatalog_ttl = \"3s\"\n{}\n",
            b1.ws,
            allow("alpha")
        )
    };
    let b2 = TestNode::start(NodeSpec { plugins: vec!["math"], files: vec![], config: config("b2") });
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &allow("beta"));
    eventually("both of beta's math nodes known in alpha", SETTLE, async || {
        let body = a1.admin().get("/v1/catalog").await.unwrap().body;
        let nodes: BTreeSet<String> = body["functions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["name"] == "add")
            .map(|f| f["node"].as_str().unwrap().to_owned())
            .collect();
        (nodes.len() == 2).then_some(())
    })
    .await;
    // a1 reaches beta through b1 only; b1 must still pick b2, the gpu node.
    for _ in 0..8 {
        let mut cmd = Command::new("x", "add", vec![json!(1), json!(2)]);
        cmd.locs = vec!["gpu".into()];
        let mut req = Request::new("l", vec![cmd]);
        req.include_execution_summary = true;
        let response = a1.client().await.request(req).await.unwrap();
        assert_eq!(response.r.unwrap()["x"], json!(3));
        assert_eq!(response.execution_summary.unwrap().steps[0].node, "b2");
    }
    drop(b2);
}

/// A member relays a call for another cluster through this node's bridges;
/// if this node cannot take it there (its member's view was older, or its
/// own policy is tighter), it says why and never runs its own same-named
/// function instead.
#[tokio::test]
async fn a_call_relayed_for_a_cluster_out_of_reach_fails_and_never_runs_a_local_namesake() {
    let federation = "[federation]\nmode = \"permissive\"\nblocked_clusters = [\"beta\"]";
    let a1 = node("a1", "alpha", vec!["echo"], &[], federation);
    let mut member = FakePeer::join(&a1, "a9", "alpha").await;
    for (id, cluster, kind) in [(1, "beta", "POLICY_DENIED"), (2, "gamma", "NO_ROUTE")] {
        let call = json!({"t": "call", "id": id, "function": "echo/echo", "version": "0.1.0", "args": ["hi"],
            "deadline_ms": 5000, "routing_path": ["a9"], "hop_budget": 2, "target_cluster": cluster});
        member.send(&call).await;
        let reply = member.next_of("reply").await;
        assert_eq!(reply["id"], id, "{reply}");
        assert!(reply.get("value").is_none(), "ran in alpha instead of {cluster}: {reply}");
        assert_eq!(reply["error"]["kind"], kind, "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(cluster), "{reply}");
    }
    // Without a target cluster the same call runs here.
    let call = json!({"t": "call", "id": 3, "function": "echo/echo", "version": "0.1.0", "args": ["hi"],
        "deadline_ms": 5000, "routing_path": ["a9"], "hop_budget": 2});
    member.send(&call).await;
    assert_eq!(member.next_of("reply").await["value"], "hi");
}

/// A call from another cluster planned before an upgrade here reaches the
/// bridge node after the catalog moved on: the member that still keeps the
/// replaced version serves it, as it serves its own cluster's calls.
#[tokio::test]
async fn a_foreign_call_for_a_version_upgraded_meanwhile_is_served_by_the_replaced_one() {
    let b1 = node("b1", "beta", vec!["echo"], &[], &allow("alpha"));
    let b2 = node("b2", "beta", vec!["text"], &[&b1], &allow("alpha"));
    // alpha has the same plugin at the same version: it is not where a
    // call from alpha goes on to.
    let _a1 = node("a1", "alpha", vec!["text"], &[&b1], &allow("beta"));
    let versions = async || {
        let body = b1.admin().get("/v1/catalog").await.unwrap().body;
        let upper = body["functions"].as_array().unwrap().iter().filter(|f| f["name"] == "upper");
        let mut v: Vec<String> =
            upper.map(|f| format!("{}@{}", f["cluster"].as_str().unwrap(), f["version"].as_str().unwrap())).collect();
        v.sort();
        v.dedup();
        v
    };
    let both = ["alpha@0.1.0", "beta@0.1.0"];
    eventually("b1 lists upper", SETTLE, async || (versions().await == both).then_some(())).await;
    let mut alpha = FakePeer::join(&b1, "a9", "alpha").await;

    std::fs::write(b2.plugins_dir().join("text.toml"), "version = \"0.2.0\"\n").unwrap();
    let upgraded = ["alpha@0.1.0", "beta@0.2.0"];
    eventually("b1 lists the upgrade", SETTLE, async || (versions().await == upgraded).then_some(())).await;
    for (id, target) in [(1, json!(null)), (2, json!("beta"))] {
        let call = json!({"t": "call", "id": id, "function": "text/upper", "version": "0.1.0", "args": ["x"],
            "deadline_ms": 5000, "routing_path": ["a9"], "federation_path": ["alpha"], "hop_budget": 2,
            "target_cluster": target});
        alpha.send(&call).await;
        let reply = alpha.next_of("reply").await;
        assert_eq!(reply["value"], "X", "{reply}");
    }
    // A version no member has says what the cluster has.
    let call = json!({"t": "call", "id": 3, "function": "text/upper", "version": "9.9.9", "args": ["x"],
        "deadline_ms": 5000, "routing_path": ["a9"], "federation_path": ["alpha"], "hop_budget": 2});
    alpha.send(&call).await;
    let reply = alpha.next_of("reply").await;
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("text/upper@9.9.9 is not in cluster beta now (it has version 0.2.0)"), "{reply}");
}

/// The same through a transit cluster: its catalog has moved on too, and
/// it sends the call on to the destination, whose bridge finds the
/// replaced version.
#[tokio::test]
async fn a_call_through_transit_for_a_version_upgraded_meanwhile_is_served() {
    let g1 = node("g1", "gamma", vec!["text"], &[], PERMISSIVE);
    let b1 = node("b1", "beta", vec!["echo"], &[&g1], &format!("{PERMISSIVE}\n[routing]\ntransit = true"));
    let gamma_upper = async || {
        let body = b1.admin().get("/v1/catalog").await.unwrap().body;
        let upper =
            body["functions"].as_array().unwrap().iter().find(|f| f["name"] == "upper" && f["cluster"] == "gamma");
        upper.map(|f| f["version"].as_str().unwrap().to_owned())
    };
    eventually("b1 lists gamma's upper", SETTLE, async || gamma_upper().await.filter(|v| v == "0.1.0")).await;
    // alpha's calls reach gamma only where beta announced a way back.
    let _a1 = node("a1", "alpha", vec!["echo"], &[&b1], PERMISSIVE);
    let routes_to_alpha = async || {
        let body = g1.admin().get("/v1/routes").await.unwrap().body;
        body["routes"].as_array().unwrap().iter().any(|r| r["destination"] == "alpha").then_some(())
    };
    eventually("gamma's route to alpha", SETTLE, routes_to_alpha).await;
    let mut alpha = FakePeer::join(&b1, "a9", "alpha").await;
    std::fs::write(g1.plugins_dir().join("text.toml"), "version = \"0.2.0\"\n").unwrap();
    eventually("b1 lists the upgrade", SETTLE, async || gamma_upper().await.filter(|v| v == "0.2.0")).await;
    let call = json!({"t": "call", "id": 1, "function": "text/upper", "version": "0.1.0", "args": ["x"],
        "deadline_ms": 5000, "routing_path": ["a9"], "federation_path": ["alpha"], "hop_budget": 3,
        "target_cluster": "gamma"});
    alpha.send(&call).await;
    let reply = alpha.next_of("reply").await;
    assert_eq!(reply["value"], "X", "{reply}");
}

/// A peer that dialled in is held to the links' own write stall, not to
/// the clients' `limits.write_timeout`: a bridge peer slow to take big
/// answers keeps its link for longer than a client would.
#[tokio::test]
async fn a_peer_that_dialled_in_is_not_held_to_the_clients_write_timeout() {
    let config = format!("{}\n[limits]\nwrite_timeout = \"1s\"", allow("alpha"));
    let b1 = node("b1", "beta", vec!["echo"], &[], &config);
    let mut alpha = FakePeer::join(&b1, "a9", "alpha").await;
    let call = |id: u32, size: usize| {
        json!({"t": "call", "id": id, "function": "echo/echo", "version": "0.1.0", "args": ["x".repeat(size)],
            "deadline_ms": 5000, "routing_path": ["a9"], "federation_path": ["alpha"], "hop_budget": 2})
    };
    // 24 MB of answers it does not read fill the socket's buffers; then it
    // keeps sending, so it is not silent.
    let started = std::time::Instant::now();
    for id in 0..120 {
        alpha.send(&call(id, 200 << 10)).await;
    }
    for id in 120.. {
        alpha.send(&call(id, 1)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(linked(&b1, "a9").await, "the link was dropped after {:?}", started.elapsed());
}

/// A call whose federation path already holds this cluster came back to
/// it: refused as the loop it is, before anything else about its path.
#[tokio::test]
async fn a_call_that_comes_back_to_its_cluster_is_refused_as_a_loop() {
    let b1 = node("b1", "beta", vec!["text"], &[], &allow("alpha"));
    let mut alpha = FakePeer::join(&b1, "a9", "alpha").await;
    let call = json!({"t": "call", "id": 1, "function": "text/upper", "version": "0.1.0", "args": ["x"],
        "deadline_ms": 5000, "routing_path": ["a9"], "federation_path": ["beta", "alpha"], "hop_budget": 2});
    alpha.send(&call).await;
    let reply = alpha.next_of("reply").await;
    assert_eq!(reply["error"]["kind"], "NO_ROUTE", "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("came back to cluster beta"), "{reply}");
}

/// A bridge peer that hangs (SIGSTOP, or a cut cable) is taken to be gone
/// once it has sent nothing for five announce intervals (2 s at least):
/// its link closes and its functions leave the catalog, instead of a link
/// that swallows calls until their deadline.
#[tokio::test]
async fn a_hung_bridge_peer_is_dropped_with_its_functions() {
    let fast = "\n[routing]\nannounce_interval = \"200ms\"";
    let b1 = node("b1", "beta", vec!["text"], &[], &format!("{}{fast}", allow("alpha")));
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &format!("{}{fast}", allow("beta")));
    eventually("a1 sees beta's upper", SETTLE, async || sees(&a1, "beta", "upper").await.then_some(())).await;
    assert_eq!(call_in(&a1, "beta", "upper", vec![json!("x")]).await.unwrap(), "X");

    let _ = std::process::Command::new("kill").args(["-STOP", &b1.pid().to_string()]).status();
    eventually("a1 drops the silent link", SETTLE, async || (!linked(&a1, "b1").await).then_some(())).await;
    eventually("beta's functions leave a1's catalog", SETTLE, async || {
        (!sees(&a1, "beta", "upper").await).then_some(())
    })
    .await;
    let e = call_in(&a1, "beta", "upper", vec![json!("x")]).await.unwrap_err();
    assert_ne!(e.kind, ErrorKind::DEADLINE_EXCEEDED, "refused at once: {e}");
    let _ = std::process::Command::new("kill").args(["-CONT", &b1.pid().to_string()]).status();
}

/// A bridge node that drains says goodbye to the other cluster as well, and
/// a call it was carrying when its links closed comes back marked lost, so
/// the calling cluster retries an idempotent call through another bridge.
#[tokio::test]
async fn a_draining_bridge_hands_its_idempotent_calls_back_for_a_retry() {
    let member = |id: &str, seeds: &[&TestNode], extra: &str, plugins, files| {
        let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
        let config = format!(
            "id = \"{id}\"\ncluster = \"beta\"\nseeds = [{}]\n{extra}\n[cluster]\nbeat_interval = \"100ms\"\ncatalog_ttl = \"3s\"\n{}\n",
            seeds.join(", "),
            allow("alpha")
        );
        TestNode::start(NodeSpec { plugins, files, config })
    };
    // The first attempt spins until the drain cuts it off; the retry until
    // its own deadline.
    let manifest = b"idempotent = true\n[limits]\ndeadline = \"4s\"\n".to_vec();
    let b3 = member("b3", &[], "", vec!["hostile"], vec![("hostile.toml".to_owned(), manifest)]);
    let mut b1 = member("b1", &[&b3], "shutdown_grace = \"500ms\"", vec![], vec![]);
    let mut b2 = member("b2", &[&b3], "shutdown_grace = \"500ms\"", vec![], vec![]);
    // Only b1 and b2 bridge: a1 refuses b3, which learns a1's address.
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1, &b2], &bridge("beta", &["b1", "b2"]));
    eventually("a1 links to both bridges and sees spin", SETTLE, async || {
        (linked(&a1, "b1").await && linked(&a1, "b2").await && sees(&a1, "beta", "spin").await).then_some(())
    })
    .await;

    let client = a1.client().await;
    let mut req = Request::new("", vec![Command::new("s", "spin", vec![])]);
    req.timeout_ms = Some(12_000);
    let call = tokio::spawn(async move { client.request(req).await });
    let carrier = eventually("the call to be in flight", SETTLE, async || {
        peers(&a1).await["links"].as_array().unwrap().iter().find(|l| l["in_flight"] == 1).map(|l| l["node"].clone())
    })
    .await;
    let (draining, other) = match carrier.as_str() {
        Some("b1") => (&mut b1, "b2"),
        Some("b2") => (&mut b2, "b1"),
        _ => panic!("the call went through {carrier}, not a bridge node"),
    };
    draining.signal_term();
    assert!(draining.wait().is_some(), "the bridge stops after its grace");

    let e = call.await.unwrap().unwrap().into_result().unwrap_err();
    assert_eq!(e.kind, ErrorKind::GUEST_TRAP, "the retry through {other} spun to its deadline: {e}");
    let metrics = b3.admin().get("/metrics").await.unwrap().text;
    let spins: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("weft_calls_total{function=\"hostile/spin\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(spins, 2.0, "b3 ran the call twice: first through the draining bridge, then through {other}: {e}");
}

/// Beta serves a plugin of the name alpha's tenant's plugin has, at a
/// higher version and open to everyone: alpha's calls by that name still
/// run at home, and reach beta's only when pinned there.
#[tokio::test]
async fn another_cluster_s_namesake_plugin_does_not_take_calls_found_at_home() {
    let b1 = node_with(
        "b1",
        "beta",
        vec!["text"],
        vec![("text.toml".to_owned(), b"version = \"9.0.0\"\n".to_vec())],
        &[],
        PERMISSIVE,
    );
    let mine = ("text.toml".to_owned(), b"tenant = \"acme\"\ncallers = [\"*\"]\n".to_vec());
    let a1 = node_with("a1", "alpha", vec!["text"], vec![mine], &[&b1], PERMISSIVE);
    eventually("a1 sees beta's upper", SETTLE, async || sees(&a1, "beta", "upper").await.then_some(())).await;
    let req: Request = serde_json::from_value(json!({
        "role": "rpc", "u": "home",
        "cmds": [{"name": "u", "fun": "text/upper", "args": ["abc"]}],
        "include_execution_summary": true
    }))
    .unwrap();
    let response = a1.client().await.request(req).await.unwrap();
    assert_eq!(response.r.unwrap(), json!({"u": "ABC"}));
    let step = &response.execution_summary.unwrap().steps[0];
    assert_eq!((step.cluster.as_str(), step.node.as_str()), ("alpha", "a1"), "{step:?}");
    assert_eq!(call_in(&a1, "beta", "upper", vec![json!("abc")]).await.unwrap(), json!("ABC"));
}

/// During a rollout two nodes may hold one version with different manifests:
/// g2's copy of `text` is not exported, g1's is. Other clusters are offered
/// g1's copy, and their calls run there, wherever they enter the cluster.
#[tokio::test]
async fn a_copy_that_is_not_exported_leaves_the_exported_one_callable() {
    let g1 = node("g1", "gamma", vec!["text"], &[], &allow("alpha"));
    let private = vec![("text.toml".to_owned(), b"export = false\n".to_vec())];
    let g2 = node_with("g2", "gamma", vec!["text"], private, &[&g1], &allow("alpha"));
    let a1 = node("a1", "alpha", vec!["echo"], &[&g1, &g2], &allow("gamma"));
    eventually("a1 linked to both", SETTLE, async || {
        (linked(&a1, "g1").await && linked(&a1, "g2").await).then_some(())
    })
    .await;
    eventually("upper in gamma", SETTLE, async || sees(&a1, "gamma", "upper").await.then_some(())).await;
    let listed = a1.admin().get("/v1/catalog").await.unwrap().body;
    let nodes: BTreeSet<&str> = listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"] == "upper")
        .filter_map(|f| f["node"].as_str())
        .collect();
    assert_eq!(nodes, BTreeSet::from(["g1"]), "only the exported copy is offered");
    let client = a1.client().await;
    for _ in 0..10 {
        let mut req = Request::new("", vec![Command::new("x", "upper", vec![json!("abc")])]);
        req.include_execution_summary = true;
        let response = client.request(req).await.unwrap();
        assert_eq!(response.execution_summary.clone().unwrap().steps[0].node, "g1");
        assert_eq!(response.into_result().unwrap()["x"], "ABC");
    }
}

/// A step planned for another cluster, whose way there a policy reload
/// took before the step started, fails with the policy's refusal rather
/// than a link to wait for.
#[tokio::test]
async fn a_step_whose_destination_a_reload_blocked_meanwhile_is_refused_by_the_policy() {
    let b1 = node("b1", "beta", vec!["text"], &[], &allow("alpha"));
    let files = vec![("hostile.toml".to_owned(), b"[limits]\ndeadline = \"3s\"\n".to_vec())];
    let config = format!(
        "id = \"a1\"\ncluster = \"alpha\"\nseeds = [{:?}]\n[cluster]\nbeat_interval = \"100ms\"\n[limits]\nmax_concurrency = 1\n{}\n",
        b1.ws,
        allow("beta")
    );
    let a1 = TestNode::start(NodeSpec { plugins: vec!["echo", "hostile"], files, config });
    eventually("upper in alpha", SETTLE, async || sees(&a1, "beta", "upper").await.then_some(())).await;

    // The only sandbox slot spins for 3 s; the request's echo waits for it,
    // its upper (in beta) for the echo.
    let spinner = a1.client().await;
    let spin = tokio::spawn(async move { spinner.call("spin", vec![]).await });
    let in_flight = async |n: f64| {
        let text = a1.admin().get("/metrics").await.unwrap().text;
        (metric(&text, "weft_in_flight_requests")? >= n).then_some(())
    };
    eventually("the spin running", SETTLE, async || in_flight(1.0).await).await;
    let client = a1.client().await;
    let echo = Command::new("e", "echo", vec![json!("x")]);
    let upper = Command::new("u", "upper", vec![json!({"$ref": "e"})]);
    let request = tokio::spawn(async move { client.request(Request::new("r", vec![echo, upper])).await });
    eventually("the request planned", SETTLE, async || in_flight(2.0).await).await;

    let blocked = format!("{}\nblocked_clusters = [\"beta\"]", allow("beta"));
    rewrite_federation(&a1, &blocked);
    let reply = a1.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(!spin.await.unwrap().unwrap_err().message.is_empty());
    let err = request.await.unwrap().unwrap().into_result().unwrap_err();
    assert_eq!(err.kind, ErrorKind::POLICY_DENIED, "{err:?}");
    assert_eq!(err.details["rule"], "blocked-cluster", "{err:?}");
}

/// A call from another cluster that waits for a sandbox slot is checked
/// again when it gets one: a reload that blocked its function meanwhile
/// refuses it, as it refuses new calls, instead of running it.
#[tokio::test]
async fn a_foreign_call_waiting_for_a_slot_is_refused_by_a_policy_reloaded_meanwhile() {
    let blocked = format!("{}\n[federation.functions]\nblock = [\"upper\"]", allow("alpha"));
    let (result, _) = call_waiting_through_a_reload(&blocked).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind, ErrorKind::POLICY_DENIED, "{err:?}");
    assert_eq!(err.details["rule"], "function-blocked", "{err:?}");
    assert!(err.message.contains("reloaded while the call waited for a sandbox slot"), "{err:?}");
}

/// A reload that still admits a waiting call lets it run, and the call's
/// admission is counted once, when it was let in.
#[tokio::test]
async fn a_foreign_call_waiting_through_a_reload_that_admits_it_runs_and_counts_once() {
    let limited = format!("{}\n[federation.functions]\nrate_limit_per_minute = 600", allow("alpha"));
    let (result, metrics) = call_waiting_through_a_reload(&limited).await;
    assert_eq!(result.unwrap(), json!("QUEUED"));
    let accepted = "weft_federation_decisions_total{point=\"call-target\",outcome=\"accepted\"";
    assert_eq!(metric(&metrics, accepted), Some(1.0), "{metrics}");
}

/// Alpha calls `upper` in beta while beta's only sandbox slot spins for
/// 3 s; beta's federation section becomes `federation` while the call
/// waits. The call's result, and beta's metrics once it is answered.
async fn call_waiting_through_a_reload(federation: &str) -> (Result<Value, WeftError>, String) {
    let files = vec![("hostile.toml".to_owned(), b"[limits]\ndeadline = \"3s\"\n".to_vec())];
    let config = format!(
        "id = \"b1\"\ncluster = \"beta\"\n[cluster]\nbeat_interval = \"100ms\"\n[limits]\nmax_concurrency = 1\n{}\n",
        allow("alpha")
    );
    let b1 = TestNode::start(NodeSpec { plugins: vec!["text", "hostile"], files, config });
    let a1 = node("a1", "alpha", vec!["echo"], &[&b1], &allow("beta"));
    eventually("upper in alpha", SETTLE, async || sees(&a1, "beta", "upper").await.then_some(())).await;

    let spinner = b1.client().await;
    let spin = tokio::spawn(async move { spinner.call("spin", vec![]).await });
    eventually("the spin to hold b1's slot", SETTLE, async || {
        let text = b1.admin().get("/metrics").await.unwrap().text;
        (metric(&text, "weft_in_flight_requests")? >= 1.0).then_some(())
    })
    .await;
    let admitted = async || {
        let text = b1.admin().get("/metrics").await.unwrap().text;
        metric(&text, "weft_federation_decisions_total{point=\"call-target\",outcome=\"accepted\"").map(|_| ())
    };
    let queued = {
        let a1_ws = a1.ws.clone();
        tokio::spawn(async move {
            let mut cmd = Command::new("u", "upper", vec![json!("queued")]);
            cmd.target_cluster = Some("beta".into());
            weft_client::Client::connect(&a1_ws).await.unwrap().call_command(cmd).await
        })
    };
    eventually("alpha's call let in at b1", SETTLE, admitted).await;

    rewrite_federation(&b1, federation);
    let reply = b1.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    let result = queued.await.unwrap();
    assert!(!spin.await.unwrap().unwrap_err().message.is_empty(), "the spin ran out its deadline");
    (result, b1.admin().get("/metrics").await.unwrap().text)
}

/// A peer's answer must fit the function's result type: a node of another
/// cluster that answers `upper` with a number gets its caller an INTERNAL
/// error naming it, never the number; a fitting answer passes.
#[tokio::test]
async fn an_answer_that_does_not_fit_the_result_type_is_refused() {
    let a1 = node("a1", "alpha", vec!["echo"], &[], "[federation]\nmode = \"permissive\"");
    let mut beta = FakePeer::join(&a1, "b1", "beta").await;
    offer_upper(&a1, &mut beta, "b1").await;

    for (answer, expected) in [(json!(42), None), (json!("ABC"), Some(json!("ABC")))] {
        let client = a1.client().await;
        let mut cmd = Command::new("x", "upper", vec![json!("abc")]);
        cmd.target_cluster = Some("beta".into());
        let call = tokio::spawn(async move { client.call_command(cmd).await });
        let request = beta.next_of("call").await;
        beta.send(&json!({"t": "reply", "id": request["id"], "value": answer, "node": "b1"})).await;
        let result = call.await.unwrap();
        match expected {
            Some(value) => assert_eq!(result.unwrap(), value),
            None => {
                let e = result.unwrap_err();
                assert_eq!(e.kind, ErrorKind::INTERNAL, "{e}");
                assert!(e.message.contains("node b1 answered text/upper@0.1.0 with a value that does not fit"), "{e}");
            }
        }
    }
}

/// Another cluster's offer may name any node id: an entry of beta's that
/// names a1 itself is still beta's, so a call into beta goes over the
/// bridge and never runs a1's own function of that name. And beta cannot
/// pull a1's full catalog, which only members get.
#[tokio::test]
async fn a_foreign_offer_naming_this_node_is_still_the_other_cluster_s() {
    let a1 = node("a1", "alpha", vec!["echo", "text"], &[], "[federation]\nmode = \"permissive\"");
    let mut beta = FakePeer::join(&a1, "b1", "beta").await;
    offer_upper(&a1, &mut beta, "a1").await;

    let client = a1.client().await;
    let mut cmd = Command::new("x", "upper", vec![json!("abc")]);
    cmd.target_cluster = Some("beta".into());
    let call = tokio::spawn(async move { client.call_command(cmd).await });
    let request = beta.next_of("call").await;
    beta.send(&json!({"t": "reply", "id": request["id"], "value": "from beta", "node": "b1"})).await;
    assert_eq!(call.await.unwrap().unwrap(), json!("from beta"), "the call crossed to beta");

    beta.send(&json!({"t": "catalog-pull"})).await;
    let pulled = tokio::time::timeout(std::time::Duration::from_secs(1), beta.next_of("catalog")).await;
    assert!(pulled.is_err(), "a1 answered another cluster's catalog-pull: {pulled:?}");
}

/// A member's node id is its own: a node of another cluster that holds it
/// (here before the member starts) gives way when the member links, and a
/// node of another cluster cannot take it from a linked member.
#[tokio::test]
async fn a_member_takes_its_node_id_back_from_another_cluster() {
    let a1 = node("a1", "alpha", vec!["echo"], &[], "[federation]\nmode = \"permissive\"");
    let mut squatter = FakePeer::join(&a1, "a2", "evil").await;
    squatter.send(&json!({"t": "ping", "nonce": 1})).await;
    eventually("the squatter linked", SETTLE, async || linked(&a1, "a2").await.then_some(())).await;
    let _a2 = node("a2", "alpha", vec!["text"], &[&a1], "[federation]\nmode = \"permissive\"");
    // Well before the squatter's silent link would be closed (5 s).
    eventually("a2 of alpha linked in its place", Duration::from_secs(3), async || {
        let peers = peers(&a1).await;
        let links = peers["links"].as_array()?.clone();
        links.iter().any(|l| l["node"] == "a2" && l["cluster"] == "alpha").then_some(())
    })
    .await;
    eventually("a1 to see a2's upper", SETTLE, async || sees(&a1, "alpha", "upper").await.then_some(())).await;

    use futures_util::{SinkExt, StreamExt};
    let (mut ws, _) = tokio_tungstenite::connect_async(&a1.ws).await.unwrap();
    let hello = json!({"t": "hello", "proto": 1, "node": "a2", "cluster": "evil", "incarnation": 1, "addr": "ws://127.0.0.1:9", "caps": []});
    ws.send(tokio_tungstenite::tungstenite::Message::Text(hello.to_string().into())).await.unwrap();
    let answer = ws.next().await.unwrap().unwrap();
    assert!(answer.to_text().unwrap().contains("duplicate-node-id"), "{answer}");
}

/// A reload that admits a cluster this node refused dials the refused node
/// at once: the dialler, told no, waits 30 s before asking again. Until
/// then a function only that cluster has is missing, and the error says
/// which link was refused.
#[tokio::test]
async fn a_reload_that_admits_a_refused_node_links_it_at_once() {
    let b1 = node("b1", "beta", vec!["text"], &[], STRICT);
    let a1 = node("a1", "alpha", vec![], &[&b1], &bridge("beta", &[]));
    let refused = eventually("b1 to refuse a1's dial", SETTLE, async || refusal(&a1).await).await;
    assert_eq!(refused["rule"], "strict-mode", "{refused}");
    // Meanwhile a name only beta has says where it may be.
    let e = a1.client().await.call_command(Command::new("x", "upper", vec![json!("x")])).await.unwrap_err();
    assert_eq!((e.kind, &e.details["refused_clusters"]), (ErrorKind::FUNCTION_NOT_FOUND, &json!(["beta"])), "{e}");
    assert!(e.message.contains("a link to cluster(s) beta was refused by federation policy"), "{e}");
    rewrite_federation(&b1, &bridge("alpha", &[]));
    let reload = b1.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reload.status, 200, "{}", reload.text);
    eventually("a1 and b1 to link", SETTLE, async || linked(&a1, "b1").await.then_some(())).await;
    eventually("beta's upper in alpha", SETTLE, async || sees(&a1, "beta", "upper").await.then_some(())).await;
}

/// A fake node of beta offers `a1` beta's `text/upper`, said to run on
/// `node`, and waits until `a1` lists it.
async fn offer_upper(a1: &TestNode, beta: &mut FakePeer, node: &str) {
    let sig = json!({"params": [{"name": "s", "type": {"kind": "string"}}], "result": {"kind": "string"}});
    let entry = json!({"function": "text/upper", "version": "0.1.0", "sig": sig, "resources": [],
        "node": node, "cluster": "beta", "idempotent": false, "exported": true});
    beta.send(&json!({"t": "foreign", "entries": [entry]})).await;
    eventually("alpha to list beta's upper", SETTLE, async || sees(a1, "beta", "upper").await.then_some(())).await;
}

//! Signed route announcements against a real node: a hand-made peer plays
//! the other clusters (honest, rogue, replaying) so every refusal can be
//! provoked exactly; two real nodes show signing end to end and key rotation.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{FakePeer, NodeSpec, TestNode, eventually, metric};
use tokio_tungstenite::tungstenite::Message;
use weft_fabric::Announcement;
use weft_node::signing;
use weft_proto::ErrorKind;

const SETTLE: Duration = Duration::from_secs(10);

/// A key pair made the way `weft keygen` makes it: the private key in a file.
struct Key {
    file: std::path::PathBuf,
    public: String,
}

fn keygen(dir: &std::path::Path, name: &str) -> Key {
    let (private, public) = signing::generate();
    let file = dir.join(name);
    std::fs::write(&file, private).unwrap();
    Key { file, public }
}

fn routes_to(clusters: &[&str]) -> Vec<Announcement> {
    clusters
        .iter()
        .map(|dest| {
            let mut path = vec!["beta"];
            if *dest != "beta" {
                path.push(dest);
            }
            serde_json::from_value(json!({
                "destination": dest, "path": path, "hops": path.len() - 1, "latency_us": 0, "reliability": 1000
            }))
            .unwrap()
        })
        .collect()
}

impl FakePeer {
    async fn announce(&mut self, epoch: u64, routes: &[Announcement], key: Option<&Key>, as_cluster: Option<&str>) {
        let signed_as = weft_proto::ClusterId::new(as_cluster.unwrap_or(&self.cluster));
        let sig = key.map(|k| {
            let signer = signing::load_signing_key(&k.file).unwrap();
            let (node, to) = (weft_proto::NodeId::new(&self.node), weft_proto::ClusterId::new(&self.to));
            signing::sign(&signer, &signing::Envelope { from: &signed_as, node: &node, to: &to, epoch }, routes)
        });
        self.send(&json!({"t": "routes", "epoch": epoch, "routes": routes, "sig": sig})).await;
    }
}

async fn rejected(node: &TestNode, kind: &str) -> f64 {
    let text = node.admin().get("/metrics").await.unwrap().text;
    metric(&text, &format!("weft_route_updates_rejected_total{{kind=\"{kind}\"}}")).unwrap_or(0.0)
}

async fn destinations(node: &TestNode) -> Vec<String> {
    let table = node.admin().get("/v1/routes").await.unwrap().body;
    let mut d: Vec<String> =
        table["routes"].as_array().unwrap().iter().map(|r| r["destination"].as_str().unwrap().to_owned()).collect();
    d.sort();
    d
}

fn signed_node(
    id: &str,
    cluster: &str,
    seeds: &[&TestNode],
    own: Option<&Key>,
    trusted: &[(&str, &[&Key])],
) -> TestNode {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
    let trusted: Vec<String> = trusted
        .iter()
        .map(|(c, keys)| {
            let keys: Vec<String> = keys.iter().map(|k| format!("{:?}", k.public)).collect();
            format!("{c} = [{}]", keys.join(", "))
        })
        .collect();
    // A node without a key of its own sends unsigned routes (and cannot require signatures).
    let signing_key = own.map(|k| k.file.display().to_string()).unwrap_or_default();
    let require = own.is_some();
    let config = format!(
        "id = \"{id}\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[federation]\nmode = \"permissive\"\n[routing]\nannounce_interval = \"200ms\"\nroute_ttl = \"2s\"\n[routing.security]\nrequire_signatures = {require}\nsigning_key = {signing_key:?}\ntrusted_keys = {{ {} }}\n",
        seeds.join(", "),
        trusted.join(", ")
    );
    TestNode::start(NodeSpec { plugins: vec!["echo"], files: vec![], config })
}

#[tokio::test]
async fn unsigned_forged_replayed_and_wrong_cluster_updates_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (alpha, beta_old, beta_new, rogue) = (
        keygen(keys.path(), "alpha"),
        keygen(keys.path(), "beta-old"),
        keygen(keys.path(), "beta-new"),
        keygen(keys.path(), "rogue"),
    );
    let a = signed_node("a1", "alpha", &[], Some(&alpha), &[("beta", &[&beta_old, &beta_new])]);
    let mut beta = FakePeer::join(&a, "b1", "beta").await;
    let t0 = wall_clock_epoch();

    beta.announce(t0 + 10, &routes_to(&["beta"]), None, None).await;
    eventually("the unsigned update to be refused", SETTLE, async || {
        (rejected(&a, "unsigned").await >= 1.0).then_some(())
    })
    .await;
    beta.announce(t0 + 11, &routes_to(&["beta", "gamma"]), Some(&rogue), None).await;
    eventually("the forged update to be refused", SETTLE, async || {
        (rejected(&a, "untrusted-key").await >= 1.0).then_some(())
    })
    .await;
    assert!(destinations(&a).await.is_empty(), "nothing was imported");
    // A caller of gamma is told why there is no route.
    let mut cmd = weft_proto::Command::new("x", "echo", vec![json!("hi")]);
    cmd.target_cluster = Some("gamma".into());
    let e = a.client().await.call_command(cmd.clone()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NO_ROUTE, "{e}");
    assert!(e.message.contains("node b1 announced a route there that was refused"), "{e}");
    assert!(e.message.contains("which is not in routing.security.trusted_keys for beta"), "{e}");

    // Genuine, signed with beta's (old) key: accepted.
    beta.announce(t0 + 20, &routes_to(&["beta", "gamma"]), Some(&beta_old), None).await;
    eventually("beta's routes", SETTLE, async || (destinations(&a).await == ["beta", "gamma"]).then_some(())).await;
    // Gamma is reachable now, and echo is simply not offered there.
    let e = a.client().await.call_command(cmd).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{e}");
    // A genuine but older update replayed: refused, the table stays.
    beta.announce(t0 + 15, &routes_to(&["beta"]), Some(&beta_old), None).await;
    eventually("the replay to be refused", SETTLE, async || (rejected(&a, "stale-epoch").await >= 1.0).then_some(()))
        .await;
    assert_eq!(destinations(&a).await, ["beta", "gamma"]);
    // So is the latest update presented again: an equal epoch is a copy.
    beta.announce(t0 + 20, &routes_to(&["beta"]), Some(&beta_old), None).await;
    eventually("the copy to be refused", SETTLE, async || (rejected(&a, "stale-epoch").await >= 2.0).then_some(()))
        .await;
    assert_eq!(destinations(&a).await, ["beta", "gamma"]);
    // So is a genuine newer update that beta made for another cluster.
    beta.to = "gamma".into();
    beta.announce(t0 + 22, &routes_to(&["beta"]), Some(&beta_old), None).await;
    eventually("the update for gamma to be refused", SETTLE, async || {
        (rejected(&a, "bad-signature").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(destinations(&a).await, ["beta", "gamma"]);
    beta.to = "alpha".into();
    // Rotation: the new key is trusted alongside the old one; nothing drops.
    beta.announce(t0 + 21, &routes_to(&["beta", "gamma"]), Some(&beta_new), None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(destinations(&a).await, ["beta", "gamma"]);
    assert_eq!(rejected(&a, "bad-signature").await, 1.0);

    // Beta's genuine key does not speak for gamma.
    let mut gamma = FakePeer::join(&a, "g1", "gamma").await;
    gamma.announce(t0 + 30, &routes_to(&["beta"]), Some(&beta_old), Some("beta")).await;
    eventually("gamma's update signed by beta to be refused", SETTLE, async || {
        (rejected(&a, "untrusted-key").await >= 2.0).then_some(())
    })
    .await;
    // A genuine update recorded long ago, presented by a node whose last
    // epoch nothing remembers: refused by its age.
    let mut b2 = FakePeer::join(&a, "b2", "beta").await;
    b2.announce(wall_clock_epoch() - 200_000, &routes_to(&["beta"]), Some(&beta_old), None).await;
    eventually("the old update to be refused", SETTLE, async || (rejected(&a, "expired").await >= 1.0).then_some(()))
        .await;
    assert_eq!(destinations(&a).await, ["beta", "gamma"]);
    let alerts = a.admin().get("/v1/alerts").await.unwrap().body;
    let alerts = alerts["alerts"].as_array().unwrap();
    assert!(alerts.iter().any(|x| x["kind"] == "route-signature"), "{alerts:?}");
    assert!(alerts.iter().any(|x| x["message"].as_str().unwrap_or("").contains("signed 200 s ago")), "{alerts:?}");
}

/// Without signatures a neighbour is believed only as far as it can be
/// checked: a hop count must be its path's, and the epoch an unsigned
/// update set is forgotten with its link, so a forger that claimed a node's
/// id once cannot shut the real node out afterwards.
#[tokio::test]
async fn forged_hops_are_refused_and_an_unsigned_epoch_ends_with_its_link() {
    let a = signed_node("a1", "alpha", &[], None, &[]);
    let mut forger = FakePeer::join(&a, "b1", "beta").await;
    let routes = json!([
        {"destination": "beta", "path": ["beta"], "hops": 0, "latency_us": 0, "reliability": 1000},
        {"destination": "gamma", "path": ["beta", "delta", "gamma"], "hops": 0, "latency_us": 0, "reliability": 1000}
    ]);
    forger.send(&json!({"t": "routes", "epoch": 9_000_000_000_000_000u64, "routes": routes})).await;
    eventually("beta's route", SETTLE, async || (destinations(&a).await == ["beta"]).then_some(())).await;
    let text = a.admin().get("/metrics").await.unwrap().text;
    assert_eq!(metric(&text, "weft_routes_refused_total"), Some(1.0), "gamma's route claimed 0 hops for 2");

    drop(forger);
    eventually("the forger's routes to go with its link", SETTLE, async || {
        destinations(&a).await.is_empty().then_some(())
    })
    .await;
    let mut real = FakePeer::join(&a, "b1", "beta").await;
    real.announce(wall_clock_epoch(), &routes_to(&["beta", "gamma"]), None, None).await;
    eventually("the real b1's routes", SETTLE, async || (destinations(&a).await == ["beta", "gamma"]).then_some(()))
        .await;
    assert_eq!(rejected(&a, "stale-epoch").await, 0.0);
}

/// An epoch as real nodes make them: the wall clock in milliseconds.
fn wall_clock_epoch() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

#[tokio::test]
async fn real_nodes_sign_their_routes_and_survive_a_key_rotation() {
    let keys = tempfile::tempdir().unwrap();
    let (alpha, beta_old, beta_new) =
        (keygen(keys.path(), "alpha"), keygen(keys.path(), "b-old"), keygen(keys.path(), "b-new"));
    let a = signed_node("a1", "alpha", &[], Some(&alpha), &[("beta", &[&beta_old, &beta_new])]);
    let b = signed_node("b1", "beta", &[&a], Some(&beta_old), &[("alpha", &[&alpha])]);
    eventually("alpha to route to beta", SETTLE, async || (destinations(&a).await == ["beta"]).then_some(())).await;
    eventually("beta to route to alpha", SETTLE, async || (destinations(&b).await == ["alpha"]).then_some(())).await;
    // Beta's node restarts with the new key: alpha trusts both during the overlap.
    drop(b);
    eventually("the old process's routes to go", SETTLE, async || destinations(&a).await.is_empty().then_some(()))
        .await;
    let b = signed_node("b1", "beta", &[&a], Some(&beta_new), &[("alpha", &[&alpha])]);
    eventually("alpha to route to beta again", SETTLE, async || (destinations(&a).await == ["beta"]).then_some(()))
        .await;
    assert_eq!(rejected(&a, "untrusted-key").await + rejected(&a, "bad-signature").await, 0.0);
    // A node of beta without a key is refused by alpha.
    let c = signed_node("b2", "beta", &[&a], None, &[("alpha", &[&alpha])]);
    eventually("the unsigned beta node to be refused", SETTLE, async || {
        (rejected(&a, "unsigned").await >= 1.0).then_some(())
    })
    .await;
    drop((b, c));
}

/// A node of `cluster` that requires every link to prove its cluster's key.
fn authenticating_node(id: &str, cluster: &str, seeds: &[&TestNode], own: &Key, trusted: &str) -> TestNode {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
    let config = format!(
        "id = \"{id}\"\ncluster = \"{cluster}\"\nseeds = [{}]\n[federation]\nmode = \"permissive\"\n[routing.security]\nauthenticate_links = true\nsigning_key = {:?}\ntrusted_keys = {{ {trusted} }}\n",
        seeds.join(", "),
        own.file.display().to_string()
    );
    TestNode::start(NodeSpec { plugins: vec!["echo"], files: vec![], config })
}

/// Sends a hand-made hello to `node` and returns its answer.
async fn hello_answer(node: &TestNode, hello: Value) -> Value {
    let (mut ws, _) = tokio_tungstenite::connect_async(&node.ws).await.unwrap();
    ws.send(Message::Text(hello.to_string().into())).await.unwrap();
    let answer = ws.next().await.unwrap().unwrap();
    serde_json::from_str(answer.to_text().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authenticate_links_only_holders_of_a_cluster_key_link_as_that_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta, rogue) = (keygen(dir.path(), "alpha"), keygen(dir.path(), "beta"), keygen(dir.path(), "rogue"));
    let a1 = authenticating_node("a1", "alpha", &[], &alpha, &format!("beta = [{:?}]", beta.public));
    let a2 = authenticating_node("a2", "alpha", &[&a1], &alpha, "");
    let b1 = authenticating_node("b1", "beta", &[&a1], &beta, &format!("alpha = [{:?}]", alpha.public));
    let linked = async |node: &TestNode| {
        let peers = node.admin().get("/v1/peers").await.unwrap().body;
        let mut ids: Vec<String> =
            peers["links"].as_array().unwrap().iter().map(|l| l["node"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    eventually("a member and a bridge peer with the right keys link", SETTLE, async || {
        (linked(&a1).await == ["a2", "b1"]).then_some(())
    })
    .await;
    let _ = (&a2, &b1);

    // A client posing as a member: no proof, then a proof by a key alpha does not hold.
    let claim = json!({"t": "hello", "proto": 1, "node": "x1", "cluster": "alpha", "incarnation": 1, "addr": "ws://127.0.0.1:9", "caps": [], "nonce": "n"});
    let answer = hello_answer(&a1, claim.clone()).await;
    assert_eq!((answer["t"].as_str(), answer["kind"].as_str()), (Some("reject"), Some("unauthenticated")), "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("authenticate_links"), "{answer}");
    let signer = signing::load_signing_key(&rogue.file).unwrap();
    let auth = signing::Keys { require_links: false, key: Some(signer), keys: Default::default() };
    let (x1, cluster) = (weft_proto::NodeId::new("x1"), weft_proto::ClusterId::new("alpha"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let proof =
        auth.prove_link(&signing::LinkClaim { node: &x1, cluster: &cluster, incarnation: 1, nonce: "n" }, Some(now));
    let mut forged = claim;
    forged["proof"] = serde_json::to_value(proof).unwrap();
    let answer = hello_answer(&a1, forged).await;
    assert_eq!(answer["kind"], "unauthenticated", "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("not trusted"), "{answer}");

    // Both refusals are on record and alerted; the impostor never became a member.
    let peers = a1.admin().get("/v1/peers").await.unwrap().body;
    let refused = peers["refused"].as_array().unwrap();
    assert!(refused.iter().any(|r| r["kind"] == "unauthenticated" && r["remote_node"] == "x1"), "{peers}");
    let alerts = a1.admin().get("/v1/alerts").await.unwrap().text;
    assert!(alerts.contains("link authentication"), "{alerts}");
    assert_eq!(linked(&a1).await, ["a2", "b1"]);
    // A node of a cluster whose key a1 does not trust is refused too; a
    // call into that cluster then says why no bridge leads there.
    let stranger = json!({"t": "hello", "proto": 1, "node": "g1", "cluster": "gamma", "incarnation": 1, "addr": "ws://127.0.0.1:9", "caps": [], "nonce": "n"});
    assert_eq!(hello_answer(&a1, stranger).await["kind"], "unauthenticated");
    let mut cmd = weft_proto::Command::new("x", "echo", vec![json!("hi")]);
    cmd.target_cluster = Some("gamma".into());
    let err = a1.client().await.call_command(cmd).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NO_ROUTE, "{err:?}");
    assert!(err.message.contains("was refused (unauthenticated, local side)"), "{}", err.message);
}

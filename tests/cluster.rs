//! Clusters of real nodes on loopback: discovery through one seed, the shared
//! catalog, routing by resources and load, failure detection, graceful
//! leave, restart, duplicate ids, and nodes vanishing mid-call.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use support::{FakePeer, NodeSpec, TestNode, eventually, metric};
use weft_proto::{Command, ErrorKind, Request};

const SETTLE: Duration = Duration::from_secs(10);

/// A node of cluster `c1` with these plugins, dialling `seeds`.
fn member(
    id: &str,
    plugins: Vec<&'static str>,
    seeds: &[&TestNode],
    node_keys: &str,
    failure_timeout: &str,
) -> TestNode {
    member_with(id, plugins, vec![], seeds, node_keys, failure_timeout)
}

fn member_with(
    id: &str,
    plugins: Vec<&'static str>,
    files: Vec<(String, Vec<u8>)>,
    seeds: &[&TestNode],
    node_keys: &str,
    failure_timeout: &str,
) -> TestNode {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("{:?}", n.ws)).collect();
    let config = format!(
        "id = \"{id}\"\ncluster = \"c1\"\nseeds = [{}]\n{node_keys}\n[cluster]\nfailure_timeout = \"{failure_timeout}\"\nbeat_interval = \"200ms\"\ncatalog_ttl = \"3s\"\n",
        seeds.join(", ")
    );
    TestNode::start(NodeSpec { plugins, files, config })
}

/// The nodes whose functions `node`'s catalog lists.
async fn catalog_nodes(node: &TestNode) -> BTreeSet<String> {
    let reply = node.admin().get("/v1/catalog").await.unwrap();
    reply.body["functions"].as_array().unwrap().iter().map(|f| f["node"].as_str().unwrap().to_owned()).collect()
}

/// Waits until every node's catalog lists exactly the functions of `expected`.
async fn converged(nodes: &[&TestNode], expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    for node in nodes {
        eventually(&format!("catalog of {} to list {expected:?}", node.id), SETTLE, async || {
            (catalog_nodes(node).await == expected).then_some(())
        })
        .await;
    }
}

/// Runs one command and returns its result and the node it ran on.
async fn run_on(client: &weft_client::Client, cmd: Command) -> Result<(Value, String), weft_proto::WeftError> {
    let name = cmd.name.clone();
    let mut req = Request::new("where", vec![cmd]);
    req.include_execution_summary = true;
    let response = client.request(req).await?;
    if let Some(e) = response.error {
        return Err(e.into());
    }
    let summary = response.execution_summary.unwrap();
    Ok((response.r.unwrap()[&name].clone(), summary.steps[0].node.clone()))
}

#[tokio::test]
async fn three_nodes_share_one_catalog_and_run_a_pipeline_across_all_of_them() {
    let a = member("a", vec!["echo"], &[], "", "1s");
    let b = member("b", vec!["math"], &[&a], "", "1s");
    let c = member("c", vec!["text"], &[&b], "", "1s");
    converged(&[&a, &b, &c], &["a", "b", "c"]).await;

    // Every function is callable from every node, wherever it lives.
    for node in [&a, &b, &c] {
        let client = node.client().await;
        assert_eq!(client.call("echo", vec![json!("hi")]).await.unwrap(), json!("hi"), "echo from {}", node.id);
        assert_eq!(client.call("add", vec![json!(2), json!(3)]).await.unwrap(), json!(5), "add from {}", node.id);
        assert_eq!(client.call("upper", vec![json!("x")]).await.unwrap(), json!("X"), "upper from {}", node.id);
    }

    // One request whose steps live on three nodes, sent to the node with none of the later ones.
    let req: Request = serde_json::from_value(json!({
        "role": "rpc", "u": "p",
        "cmds": [
            {"name": "e", "fun": "echo", "args": ["hello big world"]},
            {"name": "u", "fun": "upper", "args": [{"$ref": "e"}]},
            {"name": "n", "fun": "word-count", "args": [{"$ref": "u"}]},
            {"name": "s", "fun": "add", "args": [{"$ref": "n"}, 39]}
        ],
        "include_execution_summary": true
    }))
    .unwrap();
    let response = a.client().await.request(req).await.unwrap();
    assert_eq!(response.r.unwrap(), json!({"s": 42}));
    let ran: Vec<(String, String)> =
        response.execution_summary.unwrap().steps.into_iter().map(|s| (s.name, s.node)).collect();
    let expected: Vec<(String, String)> =
        [("e", "a"), ("u", "c"), ("n", "c"), ("s", "b")].iter().map(|(s, n)| ((*s).into(), (*n).into())).collect();
    assert_eq!(ran, expected);

    // Topology: three alive members, fully linked; /v1/peers shows the links.
    // (Links between other nodes are learnt from their periodic beats.)
    let topology = eventually("c to see all three links", SETTLE, async || {
        let topology = c.admin().get("/v1/topology").await.unwrap().body;
        (topology["clusters"][0]["links"].as_array().unwrap().len() == 3).then_some(topology)
    })
    .await;
    let cluster = &topology["clusters"][0];
    let nodes: BTreeSet<&str> =
        cluster["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, BTreeSet::from(["a", "b", "c"]));
    assert!(cluster["nodes"].as_array().unwrap().iter().all(|n| n["state"] == "alive"), "{topology}");
    let peers = a.admin().get("/v1/peers").await.unwrap().body;
    let linked: BTreeSet<&str> =
        peers["links"].as_array().unwrap().iter().map(|l| l["node"].as_str().unwrap()).collect();
    assert_eq!(linked, BTreeSet::from(["b", "c"]), "a learnt c through b: {peers}");
    assert!(peers["links"].as_array().unwrap().iter().all(|l| l["cluster"] == "c1" && l["state"] == "up"));

    let metrics = a.admin().get("/metrics").await.unwrap().text;
    assert_eq!(metric(&metrics, "weft_peer_links "), Some(2.0));
    assert_eq!(metric(&metrics, "weft_cluster_members "), Some(3.0));
    assert!(metric(&metrics, "weft_forwards_total{outcome=\"ok\"}").unwrap() >= 2.0);
    assert!(metric(&metrics, "weft_peer_messages_total{direction=\"out\",kind=\"swim\"}").unwrap() > 0.0);
}

#[tokio::test]
async fn five_nodes_route_by_resources_spread_load_and_survive_a_kill() {
    let n1 = member("n1", vec!["echo"], &[], "", "1s");
    let n2 = member("n2", vec!["math"], &[&n1], "resources = [\"gpu\"]", "1s");
    let mut n3 = member("n3", vec!["math"], &[&n1], "", "1s");
    let mut n4 = member("n4", vec!["text"], &[&n1], "", "1s");
    let n5 = member("n5", vec![], &[&n1], "", "1s");
    converged(&[&n1, &n2, &n3, &n4, &n5], &["n1", "n2", "n3", "n4"]).await;
    // n5 knew only n1 and still links to every member.
    let peers = n5.admin().get("/v1/peers").await.unwrap().body;
    assert_eq!(peers["links"].as_array().unwrap().len(), 4, "only linked nodes' functions are listed: {peers}");

    let client = n5.client().await;
    // `locs` picks the only node with the resource, every time.
    for _ in 0..10 {
        let mut cmd = Command::new("x", "add", vec![json!(1), json!(2)]);
        cmd.locs = vec!["gpu".into()];
        assert_eq!(run_on(&client, cmd).await.unwrap(), (json!(3), "n2".to_owned()));
    }
    // Without locs, calls spread over both nodes that have the function.
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..40 {
        let (value, node) = run_on(&client, Command::new("x", "add", vec![json!(i), json!(1)])).await.unwrap();
        assert_eq!(value, json!(i + 1));
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(per_node.keys().collect::<Vec<_>>(), ["n2", "n3"], "{per_node:?}");
    assert!(per_node.values().all(|&n| n >= 5), "load is shared: {per_node:?}");

    // kill -9 a replica: it leaves every catalog, and calls go to the other one.
    n3.kill();
    converged(&[&n1, &n2, &n4, &n5], &["n1", "n2", "n4"]).await;
    for i in 0..10 {
        let (_, node) = run_on(&client, Command::new("x", "add", vec![json!(i), json!(1)])).await.unwrap();
        assert_eq!(node, "n2");
    }
    // kill -9 the only node with a function: it went out of reach with
    // that node, and a call is told to retry, not that nothing is there.
    n4.kill();
    converged(&[&n1, &n2, &n5], &["n1", "n2"]).await;
    let err = client.call("upper", vec![json!("x")]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::UNAVAILABLE, "{err:?}");
    assert!(err.message.contains("text/upper@0.1.0 went out of reach"), "{err:?}");
    assert_eq!(err.details["nodes"], json!(["n4"]), "{err:?}");
    // A name no node had is not found, as before.
    let err = client.call("lower", vec![json!("x")]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "{err:?}");
}

/// A member that hangs is declared down, and its functions leave the
/// catalog while its link is still open: a call for one is told it went
/// out of reach with that member (retry), not that it does not exist.
#[tokio::test]
async fn a_hung_member_s_functions_are_out_of_reach_not_missing() {
    let a = member("a", vec!["echo"], &[], "", "1s");
    let b = member("b", vec!["math"], &[&a], "", "1s");
    converged(&[&a, &b], &["a", "b"]).await;
    let _ = std::process::Command::new("kill").args(["-STOP", &b.pid().to_string()]).status();
    let client = a.client().await;
    let err = eventually("add out of reach at a", SETTLE, async || {
        // A call may still be answered while the signal takes effect.
        let e = client.call("add", vec![json!(1), json!(2)]).await.err()?;
        e.message.contains("went out of reach").then_some(e)
    })
    .await;
    assert_eq!((err.kind, &err.details["nodes"]), (ErrorKind::UNAVAILABLE, &json!(["b"])), "{err:?}");
    let _ = std::process::Command::new("kill").args(["-CONT", &b.pid().to_string()]).status();
}

#[tokio::test]
async fn a_node_that_leaves_is_removed_at_once_and_rejoins_after_a_restart() {
    // A failure timeout far above the wait below: only the goodbye can explain a fast removal.
    let a = member("a", vec!["echo"], &[], "", "20s");
    let mut b = member("b", vec!["math"], &[&a], "", "20s");
    converged(&[&a, &b], &["a", "b"]).await;

    assert_eq!(b.terminate(), Some(0));
    let gone = async || (catalog_nodes(&a).await == BTreeSet::from(["a".to_owned()])).then_some(());
    eventually("a to drop b after its goodbye", Duration::from_secs(2), gone).await;
    // Its functions went out of reach with it (retry: it may be restarting).
    let err = a.client().await.call("add", vec![json!(1), json!(1)]).await.unwrap_err();
    assert_eq!((err.kind, &err.details["nodes"]), (ErrorKind::UNAVAILABLE, &json!(["b"])), "{err:?}");
    let members = a.admin().get("/v1/topology").await.unwrap().body["clusters"][0]["nodes"].clone();
    assert_eq!(members.as_array().unwrap().len(), 1, "only a is left: {members}");

    // The same id, a new process: it rejoins and its functions are back.
    let b = member("b", vec!["math"], &[&a], "", "20s");
    converged(&[&a, &b], &["a", "b"]).await;
    assert_eq!(a.client().await.call("add", vec![json!(1), json!(1)]).await.unwrap(), json!(2));
}

/// A seed at its connection limit answers a joining node's dial with why;
/// the joiner says so in its log and joins once the seed has room.
#[tokio::test]
async fn a_seed_at_its_connection_limit_is_named_and_joined_once_it_has_room() {
    let a = TestNode::start(NodeSpec {
        plugins: vec!["echo"],
        config: "id = \"a\"\ncluster = \"c1\"\n[limits]\nmax_connections = 16\n".into(),
        ..NodeSpec::default()
    });
    let mut fill = Vec::new();
    for _ in 0..8 {
        fill.push(tokio_tungstenite::connect_async(&a.ws).await.expect("within the limit").0);
    }
    let b = member("b", vec!["math"], &[&a], "", "1s");
    eventually("b to log why the seed refused it", SETTLE, async || {
        b.stderr().contains("the node's listen port has its limit of 8 connections open").then_some(())
    })
    .await;
    drop(fill);
    converged(&[&a, &b], &["a", "b"]).await;
}

/// Each seed's state shows in /v1/peers: one that links, and one where
/// nothing listens, with the reason.
#[tokio::test]
async fn peers_lists_how_each_seed_fares() {
    let a = member("a", vec!["echo"], &[], "", "1s");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = format!("ws://{free}");
    let seeds = format!("{:?}, {dead:?}", a.ws);
    let b = TestNode::start(NodeSpec {
        config: format!("id = \"b\"\ncluster = \"c1\"\nseeds = [{seeds}]\n"),
        ..NodeSpec::default()
    });
    let seeds = eventually("both seeds dialled", SETTLE, async || {
        let seeds = b.admin().get("/v1/peers").await.unwrap().body["seeds"].clone();
        (seeds.as_array()?.len() == 2).then_some(seeds)
    })
    .await;
    let by_addr = |addr: &str| seeds.as_array().unwrap().iter().find(|s| s["addr"] == addr).cloned().unwrap();
    assert_eq!((&by_addr(&a.ws)["state"], &by_addr(&a.ws)["error"]), (&json!("linked"), &Value::Null), "{seeds}");
    let failing = by_addr(&dead);
    assert_eq!(failing["state"], "failing", "{seeds}");
    assert!(failing["error"].as_str().unwrap().contains("Connection refused"), "{seeds}");
    assert!(failing["since_unix_ms"].as_u64().unwrap() > 0, "{seeds}");
}

/// A seed that comes up and links by dialling this node first shows as
/// linked, though this node's own dial of it failed (it stayed "failing",
/// and raised seed-unreachable, while linked).
#[tokio::test]
async fn a_seed_that_links_by_its_own_dial_shows_as_linked() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let seed = format!("ws://{free}");
    let b = TestNode::start(NodeSpec {
        config: format!("id = \"b\"\ncluster = \"c1\"\nseeds = [{seed:?}]\n"),
        ..NodeSpec::default()
    });
    let state = async || {
        let seeds = b.admin().get("/v1/peers").await.unwrap().body["seeds"].clone();
        seeds[0]["state"].as_str().map(str::to_owned)
    };
    eventually("the seed to fail", SETTLE, async || (state().await.as_deref() == Some("failing")).then_some(())).await;
    // Long enough for b's redials to back off to 5 s: a's dial comes first.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weft.toml");
    let text = format!(
        "[node]\nid = \"a\"\ncluster = \"c1\"\nlisten = \"{free}\"\nadmin = \"127.0.0.1:0\"\nseeds = [{:?}]\ndata_dir = \"data\"\n",
        b.ws
    );
    std::fs::write(&config, text).unwrap();
    let _a = TestNode::spawn(dir, &["node", "--config", config.to_str().unwrap()]);
    eventually("the seed to show as linked", SETTLE, async || {
        (state().await.as_deref() == Some("linked")).then_some(())
    })
    .await;
}

/// A node that advertises another member's address cannot be linked to by
/// that member; the member says so instead of silently missing it.
#[tokio::test]
async fn a_member_advertising_another_member_s_address_is_reported_there() {
    let a = member("a", vec!["echo"], &[], "", "1s");
    let b = member("b", vec!["math"], &[&a], "", "1s");
    converged(&[&a, &b], &["a", "b"]).await;
    let _x = TestNode::start(NodeSpec {
        config: format!("id = \"x\"\ncluster = \"c1\"\nadvertise = {:?}\nseeds = [{:?}]\n", b.ws, a.ws),
        ..NodeSpec::default()
    });
    eventually("b to report x's address", SETTLE, async || {
        b.stderr().contains("a member advertises this node's own address").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_second_node_with_the_same_id_is_refused_on_both_sides() {
    let a = member("a", vec!["echo"], &[], "", "1s");
    let b = member("b", vec!["math"], &[&a], "", "1s");
    converged(&[&a, &b], &["a", "b"]).await;
    let impostor = member("b", vec!["text"], &[&a], "", "1s");

    let refused = |node: &TestNode| {
        let admin = node.admin();
        async move {
            let peers = admin.get("/v1/peers").await.unwrap().body;
            peers["refused"].as_array().unwrap().iter().find(|r| r["kind"] == "duplicate-node-id").cloned()
        }
    };
    let at_a = eventually("a to refuse the impostor", SETTLE, async || refused(&a).await).await;
    assert_eq!(at_a["by"], "local");
    assert!(at_a["reason"].as_str().unwrap().contains("node id b"), "{at_a}");
    let at_impostor = eventually("the impostor to learn why", SETTLE, async || refused(&impostor).await).await;
    assert_eq!(at_impostor["by"], "remote");
    assert!(impostor.stderr().contains("duplicate-node-id"));
    // The real b keeps its place; the impostor's functions never join.
    converged(&[&a], &["a", "b"]).await;
    assert!(a.client().await.call("upper", vec![json!("x")]).await.is_err());
    let metrics = a.admin().get("/metrics").await.unwrap().text;
    assert!(metric(&metrics, "weft_links_refused_total{kind=\"duplicate-node-id\"}").unwrap() >= 1.0);
}

/// What happens to the node running a call.
enum Fault {
    /// It dies (SIGKILL): its link drops at once.
    Killed,
    /// It hangs (SIGSTOP): its link stays open until SWIM declares it down.
    Frozen,
}

/// A spinning call forwarded to a node that then dies or hangs.
async fn fault_mid_call(idempotent: bool, fault: Fault) -> (weft_proto::WeftError, TestNode) {
    let manifest = format!("idempotent = {idempotent}\n[limits]\ndeadline = \"1500ms\"\n");
    let files = || vec![("hostile.toml".to_owned(), manifest.clone().into_bytes())];
    let a = member("a", vec!["echo"], &[], "", "1s");
    let mut b = member_with("b", vec!["hostile"], files(), &[&a], "", "1s");
    let mut c = member_with("c", vec!["hostile"], files(), &[&a], "", "1s");
    converged(&[&a], &["a", "b", "c"]).await;

    let client = a.client().await;
    let mut req = Request::new("spin", vec![Command::new("s", "spin", vec![])]);
    req.timeout_ms = Some(20_000);
    let call = tokio::spawn(async move { client.request(req).await });
    // Kill whichever node got the call, once it is running there.
    let busy = eventually("the call to be in flight", SETTLE, async || {
        let peers = a.admin().get("/v1/peers").await.unwrap().body;
        peers["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["in_flight"] == 1)
            .map(|l| l["node"].as_str().unwrap().to_owned())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (victim, survivor) = if busy == "b" { (&mut b, c) } else { (&mut c, b) };
    match fault {
        Fault::Killed => victim.kill(),
        Fault::Frozen => {
            let _ = std::process::Command::new("kill").args(["-STOP", &victim.pid().to_string()]).status();
        }
    }
    let response = call.await.unwrap().unwrap();
    (response.error.map(Into::into).expect("the call failed"), survivor)
}

/// A request that runs out of time names the node each unfinished command
/// was sent to.
#[tokio::test]
async fn a_request_out_of_time_names_the_node_its_forwarded_command_waits_on() {
    let a = member("a", vec!["echo"], &[], "", "1s");
    let _b = member("b", vec!["hostile"], &[&a], "", "1s");
    converged(&[&a], &["a", "b"]).await;
    let mut req = Request::new("late", vec![Command::new("s", "spin", vec![])]);
    req.timeout_ms = Some(300);
    let e: weft_proto::WeftError = a.client().await.request(req).await.unwrap().error.expect("out of time").into();
    assert_eq!(e.kind, ErrorKind::DEADLINE_EXCEEDED, "{e:?}");
    assert_eq!(e.details["running_on"], json!({"s": "b"}), "{e:?}");
    assert!(e.message.contains("s (on node b)"), "{e}");
}

#[tokio::test]
async fn a_node_killed_mid_call_gives_unavailable_not_a_hang() {
    let (err, survivor) = fault_mid_call(false, Fault::Killed).await;
    assert_eq!(err.kind, ErrorKind::UNAVAILABLE, "{err:?}");
    assert!(err.message.contains("went away"), "{}", err.message);
    // Not idempotent: never retried elsewhere.
    let metrics = survivor.admin().get("/metrics").await.unwrap().text;
    assert_eq!(metric(&metrics, "weft_calls_total{function=\"hostile/spin\""), None);
}

#[tokio::test]
async fn a_node_that_hangs_mid_call_gives_unavailable_once_declared_down_not_at_the_deadline() {
    // The request's deadline is 20 s; the hung node is declared down
    // after about failure_timeout (1 s), and its calls fail then.
    let (err, _survivor) = fault_mid_call(false, Fault::Frozen).await;
    assert_eq!(err.kind, ErrorKind::UNAVAILABLE, "{err:?}");
    assert!(err.message.contains("went away"), "{}", err.message);
}

#[tokio::test]
async fn an_idempotent_call_is_retried_on_another_node_when_its_node_dies() {
    let (err, survivor) = fault_mid_call(true, Fault::Killed).await;
    // The retry ran (and spun until its own deadline) on the surviving node.
    assert_eq!(err.kind, ErrorKind::GUEST_TRAP, "{err:?}");
    assert_eq!(err.details["trap"], "interrupted");
    let metrics = survivor.admin().get("/metrics").await.unwrap().text;
    assert_eq!(metric(&metrics, "weft_calls_total{function=\"hostile/spin\",outcome=\"error\"}"), Some(1.0));
}

/// The functions `node`'s catalog lists for `plugin`, with the nodes that have them.
async fn plugin_nodes(node: &TestNode, plugin: &str) -> BTreeSet<String> {
    let reply = node.admin().get("/v1/catalog").await.unwrap();
    reply.body["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["plugin"] == plugin)
        .map(|f| f["node"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_plugin_dropped_into_the_folder_is_served_across_the_cluster_after_a_reload() {
    plugin_changes_reach_the_cluster(false).await;
}

#[tokio::test]
async fn a_watched_folder_serves_a_dropped_plugin_across_the_cluster_without_a_reload() {
    plugin_changes_reach_the_cluster(true).await;
}

/// Two members: a plugin dropped into a's folder serves b, a broken file is
/// reported and serves nothing, and removing the plugin withdraws it
/// everywhere. With `watch` a notices each change by itself; without, each
/// change waits for `POST /v1/plugins/reload`, whose report is checked.
async fn plugin_changes_reach_the_cluster(watch: bool) {
    let a = member("a", vec!["echo"], &[], if watch { "" } else { "watch_plugins = false" }, "1s");
    let b = member("b", vec!["echo"], &[&a], "", "1s");
    converged(&[&a, &b], &["a", "b"]).await;
    let client = b.client().await;
    let err = client.call("add", vec![json!(40), json!(2)]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND);
    let reload = async || {
        if watch {
            return None;
        }
        let reply = a.admin().post("/v1/plugins/reload", "").await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text);
        Some(reply.body)
    };

    std::fs::write(a.plugins_dir().join("math.wasm"), weft_bundle::get("math").unwrap()).unwrap();
    if let Some(report) = reload().await {
        assert_eq!((&report["loaded"], &report["unchanged"]), (&json!(["math@0.1.0"]), &json!(1)), "{report}");
    }
    eventually("b to see math on a", SETTLE, async || {
        (plugin_nodes(&b, "math").await == BTreeSet::from(["a".to_owned()])).then_some(())
    })
    .await;
    let (sum, ran_on) = run_on(&client, Command::new("s", "add", vec![json!(40), json!(2)])).await.unwrap();
    assert_eq!((sum, ran_on.as_str()), (json!(42), "a"));

    std::fs::write(a.plugins_dir().join("broken.wasm"), b"not wasm").unwrap();
    if let Some(report) = reload().await {
        assert_eq!((&report["loaded"], &report["unchanged"]), (&json!([]), &json!(2)), "{report}");
    }
    eventually("a to report broken.wasm", SETTLE, async || {
        let reply = a.admin().get("/v1/plugins").await.ok()?;
        (reply.body["failed"][0]["file"] == "broken.wasm").then_some(())
    })
    .await;
    assert_eq!(client.call("add", vec![json!(1), json!(2)]).await.unwrap(), json!(3));

    std::fs::remove_file(a.plugins_dir().join("math.wasm")).unwrap();
    if let Some(report) = reload().await {
        assert_eq!(report["unloaded"], json!(["math@0.1.0"]), "{report}");
    }
    eventually("b to forget math", SETTLE, async || plugin_nodes(&b, "math").await.is_empty().then_some(())).await;
    let err = client.call("add", vec![json!(1), json!(2)]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "{}", err.message);
}

/// A step whose arguments or result would not fit one frame between nodes
/// fails alone with RESOURCE_EXHAUSTED: the link, and every other call on
/// it, stays up (a frame over the peer's limit would close the link).
#[tokio::test]
async fn a_call_or_result_too_big_for_a_frame_between_nodes_fails_alone() {
    let limits = "[limits]\nmax_frame = \"64KiB\"";
    let a = member("a", vec!["text"], &[], limits, "1s");
    let b = member("b", vec!["echo", "hostile"], &[&a], limits, "1s");
    converged(&[&a, &b], &["a", "b"]).await;
    let client = a.client().await;

    // 32.7 KB made on a, sent twice to b: arguments that fit max_frame
    // (65,484 bytes of JSON), in a call message that does not.
    let mut req = Request::new("big", vec![Command::new("s", "upper", vec![json!("x".repeat(32_740))])]);
    req.cmds.push(Command::new("c", "concat", vec![json!({"$ref": "s"}), json!({"$ref": "s"})]));
    let e = client.request(req).await.unwrap().error.expect("an error");
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);
    assert!(e.message.contains("the call's arguments would be"), "{}", e.message);
    // A 1 MiB result on b, under max_result but over the frame.
    let e = client.call("big-output", vec![json!(1)]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);
    assert!(e.message.contains("the result would be"), "{}", e.message);

    assert_eq!(client.call("concat", vec![json!("still "), json!("linked")]).await.unwrap(), "still linked");
    let metrics = a.admin().get("/metrics").await.unwrap().text;
    assert_eq!(metric(&metrics, "weft_forwards_total{outcome=\"lost\"}").unwrap_or(0.0), 0.0, "no link was lost");
}

/// A call of hostile's `spin` made through `a`, once it runs on a member.
async fn spin_through(a: &TestNode) -> tokio::task::JoinHandle<Result<Value, weft_proto::WeftError>> {
    let client = a.client().await;
    let call = tokio::spawn(async move { client.call("spin", vec![]).await });
    eventually("the call to be running on a member", SETTLE, async || {
        let peers = a.admin().get("/v1/peers").await.unwrap().body;
        peers["links"].as_array().unwrap().iter().any(|l| l["in_flight"] == 1).then_some(())
    })
    .await;
    call
}

/// A node told to stop drains its requests, including those running on
/// other members: they answer it before it closes its links.
#[tokio::test]
async fn a_draining_node_still_gets_the_answers_of_calls_it_forwarded() {
    let files = vec![("hostile.toml".to_owned(), b"[limits]\ndeadline = \"1500ms\"\n".to_vec())];
    let a = member("a", vec!["echo"], &[], "", "1s");
    let b = member_with("b", vec!["hostile"], files, &[&a], "", "1s");
    converged(&[&a, &b], &["a", "b"]).await;
    let call = spin_through(&a).await;
    a.signal_term();
    let e = call.await.unwrap().unwrap_err();
    assert_eq!((e.kind, e.details["trap"].as_str()), (ErrorKind::GUEST_TRAP, Some("interrupted")), "{e}");
    drop(b);
}

/// A call forwarded to a node whose shutdown grace period runs out is
/// answered as such, not lost with the link.
#[tokio::test]
async fn a_forwarded_call_cut_off_by_a_drain_is_answered_so() {
    let files = vec![("hostile.toml".to_owned(), b"[limits]\ndeadline = \"20s\"\n".to_vec())];
    let a = member("a", vec![], &[], "", "1s");
    let b = member_with("b", vec!["hostile"], files, &[&a], "shutdown_grace = \"1s\"", "1s");
    converged(&[&a], &["b"]).await;
    let call = spin_through(&a).await;
    b.signal_term();
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::UNAVAILABLE, "{e}");
    assert!(e.message.contains("node b stopped (its shutdown grace period ended) before the call finished"), "{e}");
    assert_eq!(e.details.get("link_lost"), Some(&json!(true)), "{e}");
    drop(b);
}

/// A member's frame over `limits.max_frame` closes its link, saying by how
/// much (nodes of one fabric should share the limit), whether or not it is
/// the first frame after the handshake.
#[tokio::test]
async fn a_peer_frame_over_the_limit_closes_the_link_with_its_size() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let node = TestNode::start(NodeSpec { config: "[limits]\nmax_frame = \"4KiB\"\n".into(), ..NodeSpec::default() });
    let oversized = json!({"t": "beat", "incarnation": 1, "version": 0, "links": [], "known": ["x".repeat(8192)]});
    for (id, first) in [("m8", None), ("m9", Some(json!({"t": "relay", "entries": []})))] {
        let mut peer = FakePeer::join(&node, id, "local").await;
        if let Some(first) = first {
            peer.send(&first).await;
        }
        peer.send(&oversized).await;
        let close = loop {
            match peer.ws.next().await {
                Some(Ok(Message::Close(frame))) => break frame.expect("a close frame with a reason"),
                Some(Ok(_)) => continue,
                other => panic!("{id}: the link ended without a close frame: {other:?}"),
            }
        };
        assert_eq!(close.code, CloseCode::Size, "{id}");
        assert!(close.reason.contains("bytes is over limits.max_frame (4096 bytes)"), "{id}: {}", close.reason);
    }
}

/// Anyone may say hello where links are not authenticated: a peer's
/// messages still arriving are charged to the node's request memory as a
/// client's requests are, and one that finds no room closes its link, be
/// it the first after the welcome or a later one.
#[tokio::test]
async fn a_peer_s_messages_still_arriving_are_held_to_the_request_memory() {
    use tokio::io::AsyncWriteExt;
    let node =
        TestNode::start(NodeSpec { config: "[limits]\nmax_request_memory = \"2MiB\"\n".into(), ..NodeSpec::default() });
    let admin = node.admin();
    let metrics = async || admin.get("/metrics").await.unwrap().text;
    for (refused, says_something_first) in [(1.0, false), (2.0, true)] {
        let mut peer = FakePeer::join(&node, "m9", "local").await;
        if says_something_first {
            peer.send(&json!({"t": "ping", "nonce": 1})).await;
            assert_eq!(peer.next_of("pong").await["nonce"], 1);
        }
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = peer.ws.get_mut() else { panic!("a plain socket") };
        // A masked text frame of 3 MB (its key all zeros), of which 2.5 MB come.
        let len: u64 = 3_000_000;
        let header: Vec<u8> = [0x81, 0xFF].into_iter().chain(len.to_be_bytes()).chain([0; 4]).collect();
        tcp.write_all(&header).await.unwrap();
        // The node may close the link before all of it is written.
        let _ = tcp.write_all(&vec![b' '; 2_500_000]).await;
        eventually("the link to be closed for want of memory", SETTLE, async || {
            let text = metrics().await;
            let gone = metric(&text, "weft_peer_links")? == 0.0;
            (gone && metric(&text, "weft_frames_rejected_total{kind=\"memory\"}")? == refused).then_some(())
        })
        .await;
        assert_eq!(metric(&metrics().await, "weft_request_memory_bytes"), Some(0.0));
    }
}

#[tokio::test]
async fn a_peer_that_sends_more_calls_than_a_link_may_have_in_flight_is_answered_busy() {
    // A link may have 16 x max_in_flight_per_connection calls: here 16.
    let node = TestNode::start(NodeSpec {
        config: "[limits]\nmax_in_flight_per_connection = 1\nmax_concurrency = 32\n".into(),
        ..NodeSpec::default()
    });
    let mut peer = support::FakePeer::join(&node, "m9", "local").await;
    let call = |id: u64, function: &str| {
        json!({"t": "call", "id": id, "function": function, "version": "0.1.0", "args": [],
            "deadline_ms": 5000, "routing_path": ["m9"], "hop_budget": 1})
    };
    for id in 1..=17 {
        peer.send(&call(id, "hostile/spin")).await;
    }
    // The 17th is refused at once; the spinning calls end at their 1 s deadline.
    let first = peer.next_of("reply").await;
    assert_eq!(first["id"], 17, "{first}");
    assert_eq!(first["error"]["kind"], "RESOURCE_EXHAUSTED", "{first}");
    assert!(first["error"]["message"].as_str().unwrap().contains("limits.max_in_flight_per_connection"), "{first}");
    for _ in 0..16 {
        let reply = peer.next_of("reply").await;
        assert_ne!(reply["error"]["kind"], "RESOURCE_EXHAUSTED", "{reply}");
    }
    // With room again, a call runs.
    peer.send(&json!({"t": "call", "id": 4, "function": "echo/echo", "version": "0.1.0", "args": ["hi"],
        "deadline_ms": 5000, "routing_path": ["m9"], "hop_budget": 1}))
        .await;
    assert_eq!(peer.next_of("reply").await["value"], "hi");
}

/// A peer that sends large calls and reads no replies is refused more once
/// its calls and their unread replies hold 4 x max_frame, rather than
/// growing the node's memory (1,500 calls of 1 MB took a node to 1.4 GB);
/// every call is still answered.
#[tokio::test]
async fn a_peer_that_reads_no_replies_is_refused_once_its_calls_and_replies_hold_their_share() {
    let node = TestNode::start(NodeSpec { config: "[limits]\nmax_frame = \"64KiB\"\n".into(), ..NodeSpec::default() });
    let before = support::peak_mib(node.pid());
    let mut peer = support::FakePeer::join(&node, "m9", "local").await;
    let big = "x".repeat(60_000);
    let calls = 2000u64;
    for id in 1..=calls {
        peer.send(&json!({"t": "call", "id": id, "function": "echo/echo", "version": "0.1.0", "args": [big],
            "deadline_ms": 30000, "routing_path": ["m9"], "hop_budget": 1}))
            .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let grew = support::peak_mib(node.pid()).saturating_sub(before);
    assert!(grew < 64, "the node's peak memory grew by {grew} MiB for a peer that reads nothing");
    let (mut echoed, mut refused) = (0, 0);
    for _ in 0..calls {
        let reply = peer.next_of("reply").await;
        match reply["error"]["kind"].as_str() {
            None => echoed += 1,
            Some("RESOURCE_EXHAUSTED") => {
                assert!(reply["error"]["message"].as_str().unwrap().contains("4 x limits.max_frame"), "{reply}");
                refused += 1;
            }
            Some(_) => panic!("{reply}"),
        }
    }
    assert!(echoed > 0 && refused > 0, "{echoed} echoed, {refused} refused");
}

#[tokio::test]
async fn a_malformed_handshake_is_refused_and_nothing_of_it_is_kept() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let node = TestNode::start(NodeSpec::default());
    let huge = "a".repeat(1 << 20);
    for (node_id, cluster, addr) in [
        (huge.as_str(), "local", "ws://127.0.0.1:9"),
        ("m9", huge.as_str(), "ws://127.0.0.1:9"),
        ("m9", "local", "javascript:alert(1)"),
        ("m9\n", "local", "ws://127.0.0.1:9"),
    ] {
        let (mut ws, _) = tokio_tungstenite::connect_async(&node.ws).await.unwrap();
        let hello = json!({"t": "hello", "proto": 1, "node": node_id, "cluster": cluster, "incarnation": 1, "addr": addr, "caps": []});
        ws.send(Message::Text(hello.to_string().into())).await.unwrap();
        let answer = ws.next().await.unwrap().unwrap();
        let answer: Value = serde_json::from_str(answer.to_text().unwrap()).unwrap();
        assert_eq!((answer["t"].as_str(), answer["kind"].as_str()), (Some("reject"), Some("protocol")), "{answer}");
        let reason = answer["reason"].as_str().unwrap();
        assert!(reason.starts_with("malformed handshake") && reason.len() < 300, "{reason}");
    }
    // A hello that cannot be read at all is a peer's too, not a client's request.
    let (mut ws, _) = tokio_tungstenite::connect_async(&node.ws).await.unwrap();
    ws.send(Message::Text(json!({"t": "hello", "proto": 1, "node": "m9"}).to_string().into())).await.unwrap();
    let answer: Value = serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(answer["t"], "reject", "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("missing field"), "{answer}");
    let peers = node.admin().get("/v1/peers").await.unwrap().body.to_string();
    assert!(peers.len() < 4096 && !peers.contains("javascript"), "{peers}");
    let alerts = node.admin().get("/v1/alerts?all").await.unwrap().body.to_string();
    assert!(alerts.len() < 4096, "{alerts}");
    let metrics = node.admin().get("/metrics").await.unwrap().text;
    assert_eq!(metric(&metrics, "weft_links_refused_total{kind=\"protocol\"}"), Some(5.0));
}

#[tokio::test]
async fn a_peer_that_sends_garbage_is_told_why_its_link_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let node = TestNode::start(NodeSpec::default());
    let mut peer = support::FakePeer::join(&node, "m9", "local").await;
    peer.ws.send(Message::Text("{\"t\": \"no-such-message\"}".into())).await.unwrap();
    let close = loop {
        match peer.ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame with a reason"),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1002);
    assert!(close.reason.starts_with("malformed peer message"), "{}", close.reason);
}

/// A node whose copy of a function was unloaded since the call was planned
/// ran nothing, so the call goes on to another node with the same version
/// instead of failing. n0, a member that answers every call as such a node
/// would, is tried as often as n2.
#[tokio::test]
async fn a_call_to_a_node_that_no_longer_has_the_version_goes_on_to_one_that_has_it() {
    let n1 = member("n1", vec![], &[], "", "30s");
    let n2 = member("n2", vec!["echo"], &[&n1], "", "30s");
    converged(&[&n1], &["n2"]).await;
    let body = n1.admin().get("/v1/catalog").await.unwrap().body;
    let echo = body["functions"].as_array().unwrap().iter().find(|f| f["function_id"] == "echo/echo").unwrap().clone();
    let mut stale = FakePeer::join(&n1, "n0", "c1").await;
    let entry = json!({"function": "echo/echo", "version": echo["version"], "sig": echo["sig"], "resources": [],
        "node": "n0", "cluster": "c1", "idempotent": false, "exported": true});
    stale
        .send(&json!({"t": "catalog", "delta": {"kind": "advert", "node": "n0", "cluster": "c1", "incarnation": 1,
            "version": 1, "entries": [entry]}}))
        .await;
    converged(&[&n1], &["n0", "n2"]).await;
    let (answered, mut count) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let call = stale.next_of("call").await;
            let error = json!({"code": 1002, "kind": "FUNCTION_NOT_FOUND", "details": {"not_loaded": true},
                "message": "plugin echo@0.1.0 is not loaded on this node; it was unloaded or replaced since the call was planned"});
            stale.send(&json!({"t": "reply", "id": call["id"], "error": error, "node": "n0"})).await;
            let _ = answered.send(());
        }
    });
    let client = n1.client().await;
    for i in 0..20 {
        let value = client.call_command(Command::new("x", "echo", vec![json!(i.to_string())])).await.unwrap();
        assert_eq!(value, json!(i.to_string()));
    }
    let mut refused = 0;
    while count.try_recv().is_ok() {
        refused += 1;
    }
    assert!(refused > 0, "n0 was never tried");
    drop(n2);
}

/// A member's word that another node is gone does not take away the
/// functions of a node this one has a live link to: n2 stays in n1's
/// catalog, and callable, after n9 withdraws it, even at a stamp n2 could
/// never answer.
#[tokio::test]
async fn a_withdrawal_of_a_linked_node_by_another_member_is_not_taken() {
    let n1 = member("n1", vec![], &[], "", "30s");
    let n2 = member("n2", vec!["echo"], &[&n1], "", "30s");
    converged(&[&n1], &["n2"]).await;
    let mut n9 = FakePeer::join(&n1, "n9", "c1").await;
    let stamp = u64::MAX / 2;
    n9.send(&json!({"t": "catalog", "delta": {"kind": "withdraw", "node": "n2", "incarnation": stamp, "version": 1}}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(catalog_nodes(&n1).await, BTreeSet::from(["n2".to_owned()]));
    let client = n1.client().await;
    assert_eq!(client.call_command(Command::new("x", "echo", vec![json!("here")])).await.unwrap(), json!("here"));
    drop(n2);
}

/// A member's beat is only its word: the node dials a bounded number of the
/// addresses it names, however many beats name ever new ones, and shows in
/// its topology only links between members it knows.
#[tokio::test]
async fn a_members_beat_cannot_make_the_node_dial_or_show_without_bound() {
    let n1 = member("n1", vec!["echo"], &[], "", "30s");
    // A sink that accepts dials and never answers: each stays in flight.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = sink.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = sink.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    let mut n9 = FakePeer::join(&n1, "n9", "c1").await;
    for round in 0..3 {
        let known: Vec<String> = (0..1000).map(|i| format!("ws://127.0.0.1:{port}/r{round}/{i}")).collect();
        let links: Vec<String> = (0..1000).map(|i| format!("ghost{i}")).collect();
        n9.send(&json!({"t": "beat", "incarnation": 1, "version": 0, "links": links, "known": known})).await;
    }
    let dials = || accepted.load(std::sync::atomic::Ordering::SeqCst);
    eventually("the node to dial named addresses", SETTLE, async || (dials() > 0).then_some(())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(dials() <= 64, "{} dials from three beats", dials());
    let topology = n1.admin().get("/v1/topology").await.unwrap().body;
    assert!(!topology.to_string().contains("ghost"), "{topology}");
    let client = n1.client().await;
    assert_eq!(client.call_command(Command::new("x", "echo", vec![json!("still")])).await.unwrap(), json!("still"));
    holder.abort();
}

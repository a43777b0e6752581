//! Cluster figures: catalog convergence after a node joins with a new
//! plugin, the cost of one intra-cluster forward, and idle gossip traffic.

use std::time::{Duration, Instant};

use serde_json::json;
use weft_client::Client;
use weft_node::RunningNode;

use crate::{Samples, ms, ratio, us};

struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    async fn node(&self, id: &str, plugins: &[&str], seeds: &[&RunningNode]) -> Result<RunningNode, String> {
        self.node_in("bench", id, plugins, seeds).await
    }

    /// A node of `cluster`; clusters other than "bench" are bridged to it both ways.
    async fn node_in(
        &self,
        cluster: &str,
        id: &str,
        plugins: &[&str],
        seeds: &[&RunningNode],
    ) -> Result<RunningNode, String> {
        let root = self.dir.path().join(id);
        let folder = root.join("plugins");
        weft_bundle::write_to(&folder, plugins).map_err(|e| e.to_string())?;
        let mut config = weft_node::Config::default();
        config.node.id = Some(id.to_owned());
        config.node.cluster = cluster.into();
        config.federation.mode = weft_node::config::FederationMode::Explicit;
        config.federation.allowed_clusters = vec!["bench".into(), "far".into()];
        config.node.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        config.node.admin = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        config.node.plugins = Some(folder);
        config.node.data_dir = root.join("data");
        config.node.seeds = seeds.iter().map(|n| n.ws_url()).collect();
        config.limits.max_concurrency = 16;
        weft_node::start(config).await.map_err(|e| e.to_string())
    }
}

fn has(node: &RunningNode, function: &str) -> bool {
    node.catalog().iter().any(|e| e.function.function == function)
}

fn linked_to_all(nodes: &[RunningNode]) -> bool {
    nodes.iter().all(|n| {
        let listed: std::collections::BTreeSet<_> = n.catalog().iter().map(|e| e.node.clone()).collect();
        listed.len() == nodes.len()
    })
}

async fn wait(what: &str, mut done: impl FnMut() -> bool) -> Result<Duration, String> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}

fn gossip_out(node: &RunningNode) -> f64 {
    let text = node.metrics_text();
    text.lines()
        .find(|l| l.starts_with("weft_peer_bytes_total{direction=\"out\",class=\"gossip\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Starts `size - 1` echo nodes, then one with `text`; returns the time from
/// that node being ready to `upper` being in every other node's catalog.
async fn converge(bench: &Bench, size: usize) -> Result<(Duration, Vec<RunningNode>), String> {
    let mut nodes: Vec<RunningNode> = Vec::new();
    for i in 0..size - 1 {
        let seeds: Vec<&RunningNode> = nodes.first().into_iter().collect();
        let node = bench.node(&format!("n{size}-{i}"), &["echo"], &seeds).await?;
        nodes.push(node);
    }
    wait("the first nodes to link", || linked_to_all(&nodes)).await?;
    let joiner = bench.node(&format!("n{size}-new"), &["text"], &[&nodes[0]]).await?;
    let took = wait("upper to reach every node", || nodes.iter().all(|n| has(n, "upper"))).await?;
    nodes.push(joiner);
    Ok((took, nodes))
}

async fn stop(nodes: Vec<RunningNode>) {
    for node in nodes {
        node.shutdown().await;
    }
}

pub async fn bench_cluster(smoke: bool) -> Result<(), String> {
    let bench = Bench { dir: tempfile::tempdir().map_err(|e| e.to_string())? };
    let runs = if smoke { 1 } else { 5 };

    println!("### Cluster: catalog convergence ({runs} runs each)\n");
    println!("| cluster size | median | max | note |\n|---|---|---|---|");
    let mut ten = None;
    for size in [3, 10] {
        let mut times = Vec::new();
        for run in 0..runs {
            let (took, nodes) = converge(&bench, size).await?;
            times.push(took);
            if size == 10 && run + 1 == runs {
                ten = Some(nodes);
            } else {
                stop(nodes).await;
            }
        }
        let s = Samples(times);
        println!(
            "| {size} nodes | {} | {} | from the new node ready to its function listed on every other node |",
            ms(s.median()),
            ms(s.pct(1.0))
        );
    }

    // Idle gossip of the 10-node cluster, per node.
    let nodes = ten.ok_or("no 10-node cluster")?;
    let window = if smoke { Duration::from_millis(500) } else { Duration::from_secs(10) };
    let before: Vec<f64> = nodes.iter().map(gossip_out).collect();
    tokio::time::sleep(window).await;
    let rates: Vec<f64> = nodes.iter().zip(&before).map(|(n, b)| (gossip_out(n) - b) / window.as_secs_f64()).collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let max = rates.iter().copied().fold(0.0, f64::max);
    println!(
        "\nIdle gossip, 10 nodes, over {window:?}: {:.0} B/s sent per node on average, {:.0} B/s at most (SWIM, beats; WebSocket framing not counted)\n",
        mean, max
    );
    stop(nodes).await;

    // A local call, one intra-cluster forward, one bridge crossing: `home`
    // has echo, `edge` (same cluster) and `far` (cluster "far") forward to it.
    let home = bench.node("home", &["echo"], &[]).await?;
    let edge = bench.node("edge", &["math"], &[&home]).await?;
    let far = bench.node_in("far", "far", &["text"], &[&home]).await?;
    wait("edge and far to see echo", || has(&edge, "echo") && has(&far, "echo")).await?;
    let rounds = if smoke { 20 } else { 2000 };
    let mut clients = Vec::new();
    for node in [&home, &edge, &far] {
        clients.push(Client::connect(&node.ws_url()).await.map_err(|e| e.to_string())?);
    }
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for _ in 0..rounds {
        for (client, into) in clients.iter().zip(samples.iter_mut()) {
            let started = Instant::now();
            client.call("echo", vec![json!("x")]).await.map_err(|e| e.to_string())?;
            into.push(started.elapsed());
        }
    }
    let [here, forward, bridge] = samples.map(Samples);
    println!("### Cluster and federation: where a call runs ({rounds} calls each, interleaved)\n");
    println!("| call | median | p99 | note |\n|---|---|---|---|");
    println!("| echo on the node that has it | {} | {} | baseline |", us(here.median()), us(here.pct(0.99)));
    println!(
        "| echo forwarded by a node of the same cluster | {} | {} | +{} over local |",
        us(forward.median()),
        us(forward.pct(0.99)),
        us(forward.median().saturating_sub(here.median())),
    );
    println!(
        "| echo from another cluster over one bridge | {} | {} | +{} over the intra-cluster forward ({}) |\n",
        us(bridge.median()),
        us(bridge.pct(0.99)),
        us(bridge.median().saturating_sub(forward.median())),
        ratio(bridge.median(), forward.median())
    );
    stop(vec![far, edge, home]).await;
    policy_cost(smoke);
    Ok(())
}

/// The federation decision a bridged call pays at the target (cluster and
/// function rules), timed in a tight loop.
fn policy_cost(smoke: bool) {
    use weft_fabric::policy::{Bridge, Mode, Policy};
    use weft_proto::{ClusterId, FunctionId, NodeId};
    let policy = Policy {
        cluster: ClusterId::new("alpha"),
        mode: Mode::Explicit,
        allowed_clusters: (0..8).map(|i| ClusterId::new(format!("c{i}"))).collect(),
        blocked_clusters: vec![ClusterId::new("evil")],
        bridges: vec![Bridge { cluster: ClusterId::new("beta"), nodes: vec![NodeId::new("b1"), NodeId::new("b2")] }],
        allow_functions: vec!["upper".into(), "echo/echo".into()],
        block_functions: vec!["secret".into()],
    };
    let (cluster, node, function) = (ClusterId::new("beta"), NodeId::new("b2"), FunctionId::new("echo", "echo"));
    let n = if smoke { 1_000 } else { 1_000_000 };
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(policy.call(std::hint::black_box(&cluster), Some(&node), &function, true));
    }
    let per = started.elapsed().as_secs_f64() * 1e9 / f64::from(n);
    println!(
        "Policy decision at the target (bridge with a node list, allow and block lists): {per:.0} ns per call ({n} decisions)\n"
    );
}

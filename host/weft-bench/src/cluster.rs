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
        let root = self.dir.path().join(id);
        let folder = root.join("plugins");
        weft_bundle::write_to(&folder, plugins).map_err(|e| e.to_string())?;
        let mut config = weft_node::Config::default();
        config.node.id = Some(id.to_owned());
        config.node.cluster = "bench".into();
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

    // One forward vs a local call: `home` has echo, `edge` forwards to it.
    let home = bench.node("home", &["echo"], &[]).await?;
    let edge = bench.node("edge", &["math"], &[&home]).await?;
    wait("edge to see echo", || has(&edge, "echo")).await?;
    let local = Client::connect(&home.ws_url()).await.map_err(|e| e.to_string())?;
    let remote = Client::connect(&edge.ws_url()).await.map_err(|e| e.to_string())?;
    let rounds = if smoke { 20 } else { 2000 };
    let (mut here, mut there) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (client, into) in [(&local, &mut here), (&remote, &mut there)] {
            let started = Instant::now();
            client.call("echo", vec![json!("x")]).await.map_err(|e| e.to_string())?;
            into.push(started.elapsed());
        }
    }
    let (here, there) = (Samples(here), Samples(there));
    println!("### Cluster: one intra-cluster forward ({rounds} calls each, interleaved)\n");
    println!("| call | median | p99 | note |\n|---|---|---|---|");
    println!("| echo on the node that has it | {} | {} | baseline |", us(here.median()), us(here.pct(0.99)));
    println!(
        "| echo forwarded by another node | {} | {} | +{} ({}) |\n",
        us(there.median()),
        us(there.pct(0.99)),
        us(there.median().saturating_sub(here.median())),
        ratio(there.median(), here.median())
    );
    stop(vec![edge, home]).await;
    Ok(())
}

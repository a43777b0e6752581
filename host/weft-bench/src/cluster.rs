//! Cluster figures: catalog convergence after a node joins with a new
//! plugin, the cost of one intra-cluster forward, and idle gossip traffic.

use std::time::{Duration, Instant};

use serde_json::json;
use weft_client::Client;
use weft_node::RunningNode;

use crate::report::Report;
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
        self.node_with(cluster, id, plugins, seeds, |_| {}).await
    }

    /// A node as `node_in` makes it, then adjusted by `tune`.
    async fn node_with(
        &self,
        cluster: &str,
        id: &str,
        plugins: &[&str],
        seeds: &[&RunningNode],
        tune: impl FnOnce(&mut weft_node::Config),
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
        tune(&mut config);
        weft_node::start(config).await.map_err(|e| e.to_string())
    }
}

fn has(node: &RunningNode, function: &str) -> bool {
    node.catalog().iter().any(|e| &*e.function.function == function)
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

pub async fn bench_cluster(smoke: bool, report: &mut Report) -> Result<(), String> {
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
        report.millis(if size == 3 { "cluster.convergence_3_ms" } else { "cluster.convergence_10_ms" }, s.median());
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
    report.record("cluster.idle_gossip_bytes_per_s", mean, "B/s");
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
    report.micros("cluster.local_us", here.median());
    report.micros("cluster.forward_us", forward.median());
    report.micros("cluster.bridge_us", bridge.median());
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
    report.record("cluster.policy_decision_ns", policy_cost(smoke), "ns");
    bench_routes(&bench, smoke, report).await
}

/// A single-node cluster that carries transit and announces every `announce`.
async fn transit_node(
    bench: &Bench,
    name: &str,
    plugins: &[&str],
    seeds: &[&RunningNode],
    announce: Duration,
) -> Result<RunningNode, String> {
    bench
        .node_with(name, &format!("{name}-n"), plugins, seeds, |c| {
            c.federation.mode = weft_node::config::FederationMode::Permissive;
            c.routing.transit = true;
            c.routing.announce_interval = announce;
            c.routing.route_ttl = announce * 10;
        })
        .await
}

/// Route convergence in a 6-cluster ring, per-hop latency on a line, and
/// control-plane traffic of 10 clusters at rest.
async fn bench_routes(bench: &Bench, smoke: bool, report: &mut Report) -> Result<(), String> {
    let announce = Duration::from_secs(1);
    let runs = if smoke { 1 } else { 5 };
    let (mut cut, mut heal) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // r0 .. r5 in a ring: r0 reaches r3 both ways in 3 hops and prefers
        // the way through r1 (the smaller advertiser id).
        let name = |i: usize| format!("ring{run}-r{i}");
        let mut ring: Vec<RunningNode> = Vec::new();
        for i in 0..6 {
            let mut seeds: Vec<&RunningNode> = ring.last().into_iter().collect();
            if i == 5 {
                seeds.push(&ring[0]);
            }
            let node = transit_node(bench, &name(i), &[], &seeds, announce).await?;
            ring.push(node);
        }
        let via = |node: &RunningNode, dest: &str| node.best_route(dest).map(|(n, _)| n.to_string());
        let (far, short) = (name(3), format!("{}-n", name(1)));
        wait("the ring to converge", || via(&ring[0], &far).as_deref() == Some(short.as_str())).await?;
        let r1 = ring.remove(1);
        let started = Instant::now();
        r1.shutdown().await;
        wait("failover the other way", || via(&ring[0], &far).is_some_and(|v| v != short)).await?;
        cut.push(started.elapsed());
        let started = Instant::now();
        let back = transit_node(bench, &name(1), &[], &[&ring[0], &ring[1]], announce).await?;
        wait("the short way back", || via(&ring[0], &far).as_deref() == Some(short.as_str())).await?;
        heal.push(started.elapsed());
        ring.push(back);
        stop(ring).await;
    }
    let (cut, heal) = (Samples(cut), Samples(heal));
    report.millis("routes.failover_ms", cut.median());
    report.millis("routes.heal_ms", heal.median());
    println!("### Routes: convergence in a ring of clusters ({runs} runs, announce_interval {announce:?})\n");
    println!("| event | median | max | in announce intervals |\n|---|---|---|---|");
    for (what, s) in
        [("link cut (middle node stops): failover", &cut), ("heal (node back): the short way again", &heal)]
    {
        println!(
            "| {what} | {} | {} | {:.2} |",
            ms(s.median()),
            ms(s.pct(1.0)),
            s.median().as_secs_f64() / announce.as_secs_f64()
        );
    }

    // A line l0 - l1 - l2: upper in l1 (one crossing) vs in l2 (two).
    let l0 = transit_node(bench, "l0", &[], &[], announce).await?;
    let l1 = transit_node(bench, "l1", &["text"], &[&l0], announce).await?;
    let l2 = transit_node(bench, "l2", &["text"], &[&l1], announce).await?;
    wait("l0 to reach l2", || l0.best_route("l2").is_some()).await?;
    let client = Client::connect(&l0.ws_url()).await.map_err(|e| e.to_string())?;
    let rounds = if smoke { 20 } else { 2000 };
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (cluster, into) in [("l1", &mut one), ("l2", &mut two)] {
            let mut cmd = weft_proto::Command::new("x", "upper", vec![json!("x")]);
            cmd.target_cluster = Some(cluster.into());
            let started = Instant::now();
            client.call_command(cmd).await.map_err(|e| e.to_string())?;
            into.push(started.elapsed());
        }
    }
    let (one, two) = (Samples(one), Samples(two));
    report.micros("routes.one_bridge_us", one.median());
    report.micros("routes.two_bridges_us", two.median());
    println!("\n### Routes: per-hop latency on a line of three clusters ({rounds} calls each, interleaved)\n");
    println!("| call from l0 | median | p99 |\n|---|---|---|");
    println!("| upper in l1 (one bridge) | {} | {} |", us(one.median()), us(one.pct(0.99)));
    println!("| upper in l2 (two bridges, through l1) | {} | {} |", us(two.median()), us(two.pct(0.99)));
    println!("| extra hop | +{} | |\n", us(two.median().saturating_sub(one.median())));
    stop(vec![l2, l1, l0]).await;

    // Ten single-node clusters in a ring, at rest: bytes of control traffic.
    let mut ten: Vec<RunningNode> = Vec::new();
    for i in 0..10 {
        let mut seeds: Vec<&RunningNode> = ten.last().into_iter().collect();
        if i == 9 {
            seeds.push(&ten[0]);
        }
        let node = transit_node(bench, &format!("t{i}"), &["echo"], &seeds, announce).await?;
        ten.push(node);
    }
    wait("every cluster to reach every other", || {
        ten.iter()
            .enumerate()
            .all(|(i, n)| (0..10).filter(|j| *j != i).all(|j| n.best_route(&format!("t{j}")).is_some()))
    })
    .await?;
    let window = if smoke { Duration::from_millis(500) } else { Duration::from_secs(10) };
    let before: Vec<f64> = ten.iter().map(gossip_out).collect();
    tokio::time::sleep(window).await;
    let rates: Vec<f64> = ten.iter().zip(&before).map(|(n, b)| (gossip_out(n) - b) / window.as_secs_f64()).collect();
    report.record("routes.control_plane_bytes_per_s", rates.iter().sum::<f64>() / rates.len() as f64, "B/s");
    println!(
        "Control plane at rest, 10 single-node clusters in a ring (transit, announce 1 s): {:.0} B/s sent per node on average, {:.0} B/s at most (routes, catalog offers; WebSocket framing not counted)\n",
        rates.iter().sum::<f64>() / rates.len() as f64,
        rates.iter().copied().fold(0.0, f64::max)
    );
    stop(ten).await;
    Ok(())
}

/// The federation decision a bridged call pays at the target (cluster and
/// function rules), timed in a tight loop.
fn policy_cost(smoke: bool) -> f64 {
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
        trusted_transit: vec![],
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
    per
}

//! `weft demo`: a local federation of three clusters in one process, a few
//! showcase calls across it, then it keeps serving until Ctrl-C.
//!
//! alpha (a1: echo, a2: math) --bridge-- beta (b1: text, transit) --bridge-- gamma (g1: math, gpu)

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use weft_client::Client;
use weft_node::RunningNode;
use weft_node::config::{Bridge, FederationMode};
use weft_proto::{Command, Request};

#[derive(Args)]
pub struct DemoArgs {
    /// Run the showcase calls, then stop instead of serving.
    #[arg(long)]
    once: bool,
}

struct Spec {
    id: &'static str,
    cluster: &'static str,
    plugins: &'static [&'static str],
    resources: &'static [&'static str],
    bridges: &'static [&'static str],
    /// Clusters further away whose calls and routes this one accepts.
    allowed: &'static [&'static str],
    transit: bool,
}

const NODES: [Spec; 4] = [
    Spec {
        id: "a1",
        cluster: "alpha",
        plugins: &["echo"],
        resources: &[],
        bridges: &["beta"],
        allowed: &["gamma"],
        transit: false,
    },
    Spec {
        id: "a2",
        cluster: "alpha",
        plugins: &["math"],
        resources: &[],
        bridges: &["beta"],
        allowed: &["gamma"],
        transit: false,
    },
    Spec {
        id: "b1",
        cluster: "beta",
        plugins: &["text"],
        resources: &[],
        bridges: &["alpha", "gamma"],
        allowed: &[],
        transit: true,
    },
    Spec {
        id: "g1",
        cluster: "gamma",
        plugins: &["math"],
        resources: &["gpu"],
        bridges: &["beta"],
        allowed: &["alpha"],
        transit: false,
    },
];

async fn start(dir: &std::path::Path, spec: &Spec, seeds: Vec<String>) -> anyhow::Result<RunningNode> {
    let root = dir.join(spec.id);
    weft_bundle::write_to(&root.join("plugins"), spec.plugins)?;
    let mut config = weft_node::Config::default();
    config.node.id = Some(spec.id.into());
    config.node.cluster = spec.cluster.into();
    config.node.listen = "127.0.0.1:0".parse()?;
    config.node.admin = "127.0.0.1:0".parse()?;
    config.node.plugins = Some(root.join("plugins"));
    config.node.data_dir = root.join("data");
    config.node.seeds = seeds;
    config.node.resources = spec.resources.iter().map(|r| (*r).to_owned()).collect();
    config.federation.mode = FederationMode::Explicit;
    config.federation.bridges =
        spec.bridges.iter().map(|c| Bridge { cluster: (*c).to_owned(), nodes: Vec::new() }).collect();
    config.federation.allowed_clusters = spec.allowed.iter().map(|c| (*c).to_owned()).collect();
    config.routing.transit = spec.transit;
    config.limits.max_concurrency = 32;
    weft_node::start(config).await.with_context(|| format!("node {} did not start", spec.id))
}

async fn show(client: &Client, title: &str, cmds: Vec<Command>) {
    let started = Instant::now();
    let mut req = Request::new("demo", cmds);
    req.include_execution_summary = true;
    match client.request(req).await {
        Ok(r) => {
            let took = started.elapsed();
            match (r.r, r.error) {
                (_, Some(e)) => println!("  {title}\n    -> {}: {}", e.kind, e.message),
                (Some(value), None) => {
                    let ran: Vec<String> = r
                        .execution_summary
                        .map(|s| s.steps.into_iter().map(|s| format!("{}@{}/{}", s.name, s.cluster, s.node)).collect())
                        .unwrap_or_default();
                    println!("  {title}\n    -> {value}   ({took:.1?}; ran {})", ran.join(", "));
                }
                (None, None) => println!("  {title}\n    -> (no result)"),
            }
        }
        Err(e) => println!("  {title}\n    -> {}: {}", e.kind, e.message),
    }
}

fn cmd(name: &str, fun: &str, args: Vec<Value>, cluster: Option<&str>) -> Command {
    let mut c = Command::new(name, fun, args);
    c.target_cluster = cluster.map(str::to_owned);
    c
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let mut nodes: Vec<RunningNode> = Vec::new();
    let started = Instant::now();
    for spec in &NODES {
        // a2 and b1 dial a1; g1 dials b1.
        let seeds = match spec.id {
            "a2" | "b1" => vec![nodes[0].ws_url()],
            "g1" => vec![nodes[2].ws_url()],
            _ => Vec::new(),
        };
        nodes.push(start(dir.path(), spec, seeds).await?);
    }
    println!("Weft demo: three clusters on loopback");
    for n in &nodes {
        println!("  {:<3} cluster {:<6} ws {}  admin {}", n.id, n.cluster, n.ws_url(), n.admin_url());
    }
    // Wait until alpha's entry node sees gamma through beta.
    let settling = Instant::now();
    while !nodes[0].catalog().iter().any(|e| e.cluster.as_str() == "gamma") {
        anyhow::ensure!(settling.elapsed() < Duration::from_secs(15), "the federation did not settle within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("  started and settled in {:.0?}\n\nShowcase calls, all sent to a1 (cluster alpha):", started.elapsed());
    let client = Client::connect(&nodes[0].ws_url()).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    show(&client, "echo, local to a1", vec![cmd("e", "echo", vec![json!("hello")], None)]).await;
    show(&client, "add, on a2 (same cluster, forwarded)", vec![cmd("s", "add", vec![json!(40), json!(2)], None)]).await;
    show(&client, "upper, in beta (one bridge)", vec![cmd("u", "upper", vec![json!("weft")], Some("beta"))]).await;
    let mut gpu = cmd("g", "add", vec![json!(1), json!(2)], Some("gamma"));
    gpu.locs = vec!["gpu".into()];
    show(&client, "add on a gpu node in gamma (two bridges, through beta)", vec![gpu]).await;
    show(
        &client,
        "a pipeline across all three clusters",
        vec![
            cmd("e", "echo", vec![json!("three clusters one request")], None),
            cmd("w", "word-count", vec![json!({"$ref": "e"})], Some("beta")),
            cmd("s", "add", vec![json!({"$ref": "w"}), json!(38)], Some("gamma")),
        ],
    )
    .await;
    show(&client, "a cluster no bridge leads to", vec![cmd("x", "echo", vec![json!("?")], Some("delta"))]).await;
    println!("\nRoutes of a1:");
    for dest in ["beta", "gamma"] {
        if let Some((via, hops)) = nodes[0].best_route(dest) {
            println!("  {dest}: {hops} hop(s) via {via}");
        }
    }
    if args.once {
        for n in nodes.into_iter().rev() {
            n.shutdown().await;
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nServing; try `weft call --node {} --cluster gamma add 2 2`. Ctrl-C stops.", nodes[0].ws_url());
    stopped().await?;
    for n in nodes.into_iter().rev() {
        n.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Until Ctrl-C or SIGTERM: either ends the demo the same way, so that its
/// nodes stop and its temporary folder goes.
async fn stopped() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

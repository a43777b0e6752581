//! `weft routes`: the route table of a node, or why one route wins.

use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    node: crate::trust::AdminTarget,
    /// Explain the selection of the route to this cluster.
    #[arg(long, value_name = "CLUSTER")]
    explain: Option<String>,
    /// Print the node's JSON reply.
    #[arg(long)]
    json: bool,
}

fn line(r: &Value) -> String {
    let path: Vec<&str> = r["path"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    format!(
        "{}  hops={} latency={}µs reliability={}‰ via={} path={}{}",
        r["destination"].as_str().unwrap_or(""),
        r["hops"],
        r["latency_us"],
        r["reliability"],
        r["via"].as_str().unwrap_or(""),
        path.join(">"),
        if r["held_down"] == true { "  [held down]" } else { "" }
    )
}

pub async fn run(a: RoutesArgs) -> anyhow::Result<ExitCode> {
    let path = match &a.explain {
        Some(c) if !weft_proto::is_valid_name(c) => {
            anyhow::bail!("--explain {c:?} is not a cluster name: {}", weft_proto::NAME_RULE)
        }
        Some(c) => format!("/v1/routes/explain?cluster={c}"),
        None => "/v1/routes".to_owned(),
    };
    let body = &a.node.get(&path).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(body)?);
        return Ok(ExitCode::SUCCESS);
    }
    if a.explain.is_some() {
        let destination = body["destination"].as_str().unwrap_or("");
        let names =
            |key: &str| -> Vec<&str> { body[key].as_array().into_iter().flatten().filter_map(Value::as_str).collect() };
        let (relays, bridged) = (names("relayed_by"), names("bridged_to"));
        let refused = body.get("refused").filter(|r| !r.is_null());
        match (refused, body.get("winner").filter(|w| !w.is_null())) {
            (Some(r), _) => println!(
                "{destination} is refused by this node's federation policy (rule {}): {}",
                r["rule"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            ),
            (None, Some(w)) => println!("best: {}", line(w)),
            (None, None) if body["own_cluster"] == true => {
                println!("{destination} is this node's own cluster: its functions are called within it, with no route");
            }
            (None, None) if !bridged.is_empty() => println!(
                "{destination}: no route is eligible now, but this node's own bridge to {} carries calls there directly",
                bridged.join(", ")
            ),
            (None, None) if !body["last_resort"].is_null() => println!(
                "{destination}: every route is held down for flapping; this node's own calls still take the best of them ({}), which is not passed on",
                line(&body["last_resort"])
            ),
            (None, None) if !relays.is_empty() => println!(
                "{destination}: no route of this node's own; calls go through the members that relay it: {}",
                relays.join(", ")
            ),
            (None, None) => println!(
                "{destination} is unreachable from this node: no bridge of its own or of a member's leads there (see weft routes, and the bridges in [federation])"
            ),
        }
        for l in body["losers"].as_array().into_iter().flatten() {
            println!("lost: {}  ({})", line(l), l["lost_because"].as_str().unwrap_or(""));
        }
        for r in body["refused_routes"].as_array().into_iter().flatten() {
            let (via, why) = (r["via"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or(""));
            println!("not taken: the route node {via} announced ({why})");
        }
        println!("selection: {}", body["selection"].as_str().unwrap_or(""));
        return Ok(ExitCode::SUCCESS);
    }
    let routes = body["routes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if routes.is_empty() {
        println!("no routes: this node reaches no other cluster (bridges and [routing] make them)");
    }
    for r in routes {
        println!("{} {}", if r["best"] == true { "*" } else { " " }, line(r));
    }
    Ok(ExitCode::SUCCESS)
}

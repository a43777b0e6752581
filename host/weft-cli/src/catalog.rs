//! `weft catalog`: functions visible from a node.

use std::process::ExitCode;

use clap::Args;
use weft_client::Admin;

#[derive(Args)]
pub struct CatalogArgs {
    /// The node's admin HTTP URL (`--node` is accepted too; the catalog is
    /// served by the admin API, not the WebSocket).
    #[arg(long, visible_alias = "node", env = "WEFT_ADMIN_URL", default_value = "http://127.0.0.1:7701")]
    admin: String,
    #[command(flatten)]
    trust: crate::trust::Trust,
    #[arg(long)]
    json: bool,
}

pub async fn run(a: CatalogArgs) -> anyhow::Result<ExitCode> {
    let reply = Admin::new(&a.admin)
        .with_roots(a.trust.roots()?)
        .get("/v1/catalog")
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.kind, e.message))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reply.body)?);
        return Ok(ExitCode::SUCCESS);
    }
    for f in reply.body["functions"].as_array().into_iter().flatten() {
        println!(
            "{}@{}  {}  node={} cluster={}",
            f["function_id"].as_str().unwrap_or(""),
            f["version"].as_str().unwrap_or(""),
            f["signature"].as_str().unwrap_or(""),
            f["node"].as_str().unwrap_or(""),
            f["cluster"].as_str().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}

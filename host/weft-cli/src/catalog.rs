//! `weft catalog`: functions visible from a node.

use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct CatalogArgs {
    #[command(flatten)]
    node: crate::trust::AdminTarget,
    /// Print the node's JSON reply.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: CatalogArgs) -> anyhow::Result<ExitCode> {
    let body = a.node.get("/v1/catalog").await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    for f in body["functions"].as_array().into_iter().flatten() {
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

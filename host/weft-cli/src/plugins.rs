//! `weft plugins inspect FILE.wasm`, `weft plugins export DIR` and
//! `weft plugins reload`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum PluginsCmd {
    /// Print a component's exported functions with their WIT types.
    Inspect {
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write the bundled plugins (echo, math, text, and hostile and stall for
    /// testing the sandbox) into a folder, replacing files of the same names.
    Export {
        dir: PathBuf,
        /// Which plugins (default: all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Make a running node read its plugins folder again (new, changed and removed files).
    Reload {
        #[command(flatten)]
        node: crate::trust::AdminTarget,
        /// Print the node's JSON report.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: PluginsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginsCmd::Inspect { file, json } => {
            let wasm = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let info =
                weft_runtime::describe_component(&wasm).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if json {
                let functions: Vec<_> = info
                    .functions
                    .iter()
                    .map(|f| serde_json::json!({"name": f.name, "signature": f.sig.to_string(), "sig": f.sig}))
                    .collect();
                let out =
                    serde_json::json!({"functions": functions, "interfaces": info.interfaces, "imports": info.imports});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{}", info.to_wit());
                for import in &info.imports {
                    println!("import {import};");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginsCmd::Export { dir, only } => {
            let names: Vec<&str> = if only.is_empty() {
                weft_bundle::ALL.iter().map(|p| p.name).collect()
            } else {
                only.iter().map(String::as_str).collect()
            };
            weft_node::create_folder(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            weft_bundle::write_to(&dir, &names)
                .with_context(|| format!("cannot write plugins into {}", dir.display()))?;
            println!("wrote {} into {}", names.join(", "), dir.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginsCmd::Reload { node, json } => {
            let reply = node.post("/v1/plugins/reload").await?;
            let body = &reply.body;
            if reply.status != 200 {
                let message = body["error"]["message"].as_str().unwrap_or(&reply.text);
                anyhow::bail!("the node refused the reload ({}): {message}", reply.status);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(body)?);
            } else {
                let list = |key: &str| -> String {
                    let names: Vec<&str> =
                        body[key].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
                    if names.is_empty() { "-".into() } else { names.join(", ") }
                };
                println!("loaded: {}", list("loaded"));
                println!("unloaded: {}", list("unloaded"));
                println!("unchanged: {}", body["unchanged"]);
                for f in body["failed"].as_array().into_iter().flatten() {
                    println!("failed: {}: {}", f["file"].as_str().unwrap_or("?"), f["reason"].as_str().unwrap_or("?"));
                }
                for (name, why) in body["unlisted"].as_object().into_iter().flatten() {
                    println!("unlisted: {name}: {}", why.as_str().unwrap_or("?"));
                }
            }
            // A plugin no client can call is as much a failed deploy as one
            // that did not load.
            let failed = body["failed"].as_array().is_some_and(|f| !f.is_empty())
                || body["unlisted"].as_object().is_some_and(|u| !u.is_empty());
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

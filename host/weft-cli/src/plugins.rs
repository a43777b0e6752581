//! `weft plugins inspect FILE.wasm` and `weft plugins export DIR`.

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
    /// Write the bundled example plugins (echo, math, text, hostile) into a folder.
    Export {
        dir: PathBuf,
        /// Which plugins (default: all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

pub fn run(cmd: PluginsCmd) -> anyhow::Result<ExitCode> {
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
            weft_bundle::write_to(&dir, &names)
                .with_context(|| format!("cannot write plugins into {}", dir.display()))?;
            println!("wrote {} into {}", names.join(", "), dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

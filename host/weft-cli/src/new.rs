//! `weft new NAME`: scaffold a plugin crate (WIT world, Rust impl, manifest).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

#[derive(Args)]
pub struct NewArgs {
    /// Plugin name: lowercase letters, digits and '-'.
    name: String,
    /// Where to create the crate (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Path to Weft's guest-sdk (default: the one this weft was built from).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

/// Words WIT reserves, which cannot name a world.
const WIT_KEYWORDS: &[&str] = &[
    "as",
    "async",
    "bool",
    "borrow",
    "char",
    "constructor",
    "enum",
    "export",
    "f32",
    "f64",
    "flags",
    "float32",
    "float64",
    "from",
    "func",
    "future",
    "import",
    "include",
    "interface",
    "list",
    "option",
    "own",
    "package",
    "record",
    "resource",
    "result",
    "s16",
    "s32",
    "s64",
    "s8",
    "static",
    "stream",
    "string",
    "tuple",
    "type",
    "u16",
    "u32",
    "u64",
    "u8",
    "use",
    "variant",
    "with",
    "world",
];

pub fn run(a: NewArgs) -> anyhow::Result<ExitCode> {
    let name = a.name.as_str();
    // The name is also the WIT world's: kebab-case words, each starting
    // with a letter, and no WIT keyword.
    let valid = name.split('-').all(|word| {
        word.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if !valid {
        bail!(
            "plugin name {name:?}: use words of lowercase letters and digits, each starting with a letter, joined by single '-' (e.g. \"my-plugin\")"
        );
    }
    if WIT_KEYWORDS.contains(&name) {
        bail!("plugin name {name:?} is a WIT keyword; choose another, e.g. \"my-{name}\"");
    }
    let dir = a.dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        bail!("{} already exists; choose another name or --dir", dir.display());
    }
    let sdk = a.sdk.unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../guest-sdk")));
    if !sdk.join("Cargo.toml").is_file() {
        bail!("--sdk {}: no Cargo.toml there; point --sdk at the guest-sdk folder of a Weft checkout", sdk.display());
    }
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    let crate_name = name.replace('-', "_");
    let files = [
        (
            "Cargo.toml",
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = "0.63"
weft-guest = {{ path = "{sdk}" }}

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = "debuginfo"

# A standalone crate, not part of any enclosing workspace.
[workspace]
"#,
                sdk = sdk.display()
            ),
        ),
        (
            "wit/world.wit",
            format!(
                "package tenant:{name}@0.1.0;\n\nworld {name} {{\n    /// Says hello.\n    export greet: func(who: string) -> string;\n}}\n"
            ),
        ),
        (
            "src/lib.rs",
            format!(
                r#"//! Weft plugin `{name}`.

wit_bindgen::generate!({{ world: "{name}", path: "wit/world.wit" }});

struct Plugin;

impl Guest for Plugin {{
    fn greet(who: String) -> String {{
        weft_guest::log::info(&format!("greeting {{who}}"));
        format!("hello, {{who}}")
    }}
}}

export!(Plugin);
"#
            ),
        ),
        (
            &format!("{crate_name}.toml"),
            format!(
                "# Copy beside {crate_name}.wasm in the node's plugins folder.\nname = \"{name}\"\nversion = \"0.1.0\"\ntenant = \"default\"\n"
            ),
        ),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            weft_node::create_folder(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created {dir}\nbuild:  cd {dir} && cargo build --release --target wasm32-wasip2\ndeploy: cp target/wasm32-wasip2/release/{crate_name}.wasm {crate_name}.toml <node plugins folder>/",
        dir = dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

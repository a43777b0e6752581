//! Builds the example plugins (the separate cargo workspace in plugins/) for
//! wasm32-wasip2 and copies the components into OUT_DIR, where src/lib.rs
//! embeds them.
//!
//! The nested build goes to <workspace>/target/plugins, shared by every
//! profile and target dir of the outer build, so it compiles once and is then
//! a no-op until plugins/, guest-sdk/ or wit/ change.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const WASM_TARGET: &str = "wasm32-wasip2";
const PLUGINS: [&str; 5] = ["echo", "math", "text", "hostile", "stall"];

/// Environment that cargo hands a build script (or that a user set for the host
/// build) and that a nested cargo would obey: flags, target, output location,
/// compiler wrappers (clippy, sccache, `cargo fix`), profile overrides. The
/// plugins must build the same way whoever builds the host. CARGO_MAKEFLAGS
/// stays, so the nested cargo takes its jobs from the outer jobserver.
const LEAKING_VARS: [&str; 6] = [
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_INCREMENTAL",
];
const LEAKING_PREFIXES: [&str; 2] = ["CARGO_BUILD_", "CARGO_PROFILE_"];

fn main() {
    if let Err(message) = run() {
        // Each line separately: cargo takes one line per instruction. The
        // failing exit status makes cargo also print this script's stderr,
        // where the nested cargo's diagnostics are.
        for line in message.lines() {
            println!("cargo::error={line}");
        }
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    // host/weft-bundle -> the repository root
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} has no grandparent", manifest_dir.display()))?;
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);

    watch_sources(workspace)?;
    ensure_wasm_target()?;

    let target_dir = workspace.join("target").join("plugins");
    build_plugins(&workspace.join("plugins"), &target_dir)?;

    let built = target_dir.join(WASM_TARGET).join("release");
    for name in PLUGINS {
        let from = built.join(format!("{name}.wasm"));
        let to = out_dir.join(format!("{name}.wasm"));
        fs::copy(&from, &to).map_err(|err| format!("copying {} to {}: {err}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Tells cargo what the plugins are built from. Directories are scanned
/// recursively, so target/ folders (left by someone building in plugins/ or
/// guest-sdk/ directly) are skipped: they would make every build rerun this
/// script. Paths that do not exist are skipped too, for the same reason.
fn watch_sources(workspace: &Path) -> Result<(), String> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={}", workspace.join("wit").display());
    for dir in ["plugins", "guest-sdk"] {
        let dir = workspace.join(dir);
        let entries = fs::read_dir(&dir).map_err(|err| format!("reading {}: {err}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|err| format!("reading {}: {err}", dir.display()))?;
            if entry.file_name() != "target" {
                println!("cargo::rerun-if-changed={}", entry.path().display());
            }
        }
    }
    Ok(())
}

/// Installs the wasm32-wasip2 standard library with rustup if the compiler
/// that builds the host does not have it.
fn ensure_wasm_target() -> Result<(), String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|err| format!("running {} --print sysroot: {err}", rustc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} --print sysroot failed: {}",
            rustc.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let target_lib = sysroot.join("lib/rustlib").join(WASM_TARGET);
    if target_lib.is_dir() {
        return Ok(());
    }

    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", WASM_TARGET]);
    // A rustup toolchain's sysroot is .../toolchains/NAME: add the target to
    // that toolchain, whichever one is the default.
    if sysroot.parent().and_then(Path::file_name) == Some("toolchains".as_ref())
        && let Some(toolchain) = sysroot.file_name()
    {
        rustup.arg("--toolchain").arg(toolchain);
    }
    let why = match rustup.stdout(Stdio::from(std::io::stderr())).status() {
        Ok(status) if status.success() && target_lib.is_dir() => return Ok(()),
        Ok(status) if status.success() => {
            format!("it succeeded, but {} is still missing: is this compiler managed by rustup?", target_lib.display())
        }
        Ok(status) => format!("it exited with {status}"),
        Err(err) => format!("it could not run: {err}"),
    };
    Err(format!(
        "the example plugins need the {WASM_TARGET} target, which the compiler at {} does not \
         have, and `rustup target add {WASM_TARGET}` did not install it: {why}\n\
         Install the target for this toolchain and build again.",
        sysroot.display()
    ))
}

fn build_plugins(plugins_dir: &Path, target_dir: &Path) -> Result<(), String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let manifest = plugins_dir.join("Cargo.toml");
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--release", "--target", WASM_TARGET, "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    if plugins_dir.join("Cargo.lock").is_file() {
        build.arg("--locked");
    }
    for (key, _) in env::vars_os() {
        let leaks = key
            .to_str()
            .is_some_and(|key| LEAKING_VARS.contains(&key) || LEAKING_PREFIXES.iter().any(|p| key.starts_with(p)));
        if leaks {
            build.env_remove(&key);
        }
    }
    // Cargo reads a build script's stdout as instructions: keep the nested
    // cargo's output on stderr, which cargo shows when the build fails.
    build.stdout(Stdio::from(std::io::stderr()));

    let status = build.status().map_err(|err| format!("running {}: {err}", cargo.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "building the example plugins failed ({status}); cargo's output is in the stderr below.\n\
             Reproduce with: cargo build --release --target {WASM_TARGET} --manifest-path {}",
            manifest.display()
        ))
    }
}

fn env_var(key: &str) -> Result<String, String> {
    env::var(key).map_err(|err| format!("{key}: {err}"))
}

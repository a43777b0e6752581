//! The `weft` command: one thin file per subcommand over weft-node,
//! weft-client and weft-runtime.

mod bench;
mod call;
mod catalog;
mod cert;
mod demo;
mod keygen;
mod new;
mod node;
mod plugins;
mod routes;
mod token;
mod trust;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft", version, about = "Weft: a federated WebAssembly function fabric")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node (no --config: single-node cluster `local` with the bundled plugins).
    Node(node::NodeArgs),
    /// Call a function, or send a whole request with --request FILE.json.
    Call(call::CallArgs),
    /// Generate load against a node and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Functions visible from a node.
    Catalog(catalog::CatalogArgs),
    /// The route table of a node (`--explain CLUSTER`: why one route wins)
    Routes(routes::RoutesArgs),
    /// Start a local federation of three clusters, run showcase calls, keep serving.
    Demo(demo::DemoArgs),
    /// Make an ed25519 key pair for signing this cluster's routes.
    Keygen(keygen::KeygenArgs),
    /// Make a TLS certificate for a node, signed by a CA made in the same folder on first use.
    Cert(cert::CertArgs),
    /// Make a bearer token for a tenant, and its config line.
    Token(token::TokenArgs),
    /// Work with plugin files.
    #[command(subcommand)]
    Plugins(plugins::PluginsCmd),
    /// Scaffold a plugin crate.
    New(new::NewArgs),
}

/// Client commands end quietly when their output pipe closes (`weft call
/// ... | head`), as Unix tools do: Rust ignores SIGPIPE, so every print
/// after that would panic instead. A node, and the demo's nodes, keep
/// ignoring it, so a log reader that goes away cannot stop them.
#[allow(unsafe_code)]
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restores the default action of one signal before any other
    // thread exists; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An empty `WEFT_*` variable (`WEFT_TOKEN=` in an env file) counts as
/// unset for every command, so the flag's default applies.
#[allow(unsafe_code)]
fn forget_empty_weft_variables() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(key, value)| value.is_empty() && key.to_string_lossy().starts_with("WEFT_"))
        .map(|(key, _)| key)
        .collect();
    for key in empty {
        // SAFETY: called first in main, before any other thread exists.
        unsafe { std::env::remove_var(key) };
    }
}

fn main() -> std::process::ExitCode {
    if let Some(code) = weft_runtime::compile::child_main() {
        return code;
    }
    forget_empty_weft_variables();
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Node(_) | Cmd::Demo(_)) {
        end_quietly_on_a_closed_pipe();
    }
    // notify logs at info when it cannot remove the watch of a folder that
    // is already gone, which the plugins watcher expects.
    const DEFAULT_LOG: &str = "info,notify=warn";
    let (filter, invalid) = match std::env::var("WEFT_LOG") {
        Ok(text) => match tracing_subscriber::EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (DEFAULT_LOG.into(), Some((text, e))),
        },
        Err(_) => (DEFAULT_LOG.into(), None),
    };
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    if let Some((text, e)) = invalid {
        tracing::warn!(WEFT_LOG = text, error = %e, "WEFT_LOG is not a valid filter; logging with the default ({DEFAULT_LOG})");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Node(args) => node::run(args).await,
            Cmd::Call(args) => call::run(args).await,
            Cmd::Bench(args) => bench::run(args).await,
            Cmd::Catalog(args) => catalog::run(args).await,
            Cmd::Routes(args) => routes::run(args).await,
            Cmd::Keygen(args) => keygen::run(args),
            Cmd::Cert(args) => cert::run(args),
            Cmd::Demo(args) => demo::run(args).await,
            Cmd::Plugins(cmd) => plugins::run(cmd).await,
            Cmd::New(args) => new::run(args),
            Cmd::Token(args) => token::run(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // A node's or the client's error prints as `KIND: message`, as a
            // call's error does; anything else is the CLI's own.
            match e.downcast_ref::<weft_proto::WeftError>() {
                Some(weft) => eprintln!("{weft}"),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

//! `weft node`: run a node until SIGINT/SIGTERM, then drain.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use weft_node::config::Setting;
use weft_node::{Config, Overrides};

#[derive(Args)]
pub struct NodeArgs {
    /// Config file (TOML); without it the embedded default is used.
    #[arg(long, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id, unique across the federation [default: HOST-PORT].
    #[arg(long, env = "WEFT_ID")]
    id: Option<String>,
    /// The cluster this node joins [default: local].
    #[arg(long, env = "WEFT_CLUSTER")]
    cluster: Option<String>,
    /// WebSocket address for clients and peers (port 0: any free port).
    #[arg(long, env = "WEFT_LISTEN", value_parser = weft_node::config::parse_addr)]
    listen: Option<SocketAddr>,
    /// Admin HTTP address (port 0: any free port).
    #[arg(long, env = "WEFT_ADMIN", value_parser = weft_node::config::parse_addr)]
    admin: Option<SocketAddr>,
    /// Nodes to dial (repeat, or comma-separated in WEFT_SEEDS).
    #[arg(long = "seed", env = "WEFT_SEEDS", value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// Plugins folder (*.wasm + NAME.toml).
    #[arg(long, env = "WEFT_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Resource labels of this node (comma-separated).
    #[arg(long, env = "WEFT_RESOURCES", value_delimiter = ',')]
    resources: Option<Vec<String>>,
    /// Folder for the node's own files (the compiled-component cache).
    #[arg(long, env = "WEFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The URL other nodes dial to reach this one (default: ws:// + the bound listen address).
    #[arg(long, env = "WEFT_ADVERTISE")]
    advertise: Option<String>,
    /// Any key of the config file, over the file (repeat; such as
    /// `--set limits.deadline=10s`). `WEFT_SECTION__KEY` variables do the
    /// same (`WEFT_LIMITS__DEADLINE=10s`); `--set` wins over them, and the
    /// named flags and variables above win over both.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = Setting::from_flag)]
    settings: Vec<Setting>,
}

pub async fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    // An empty value (`WEFT_SEEDS=` in an env file) leaves the setting alone.
    let text = |v: Option<String>| v.filter(|v| !v.is_empty());
    let list = |v: Option<Vec<String>>| {
        v.map(|v| v.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>()).filter(|v| !v.is_empty())
    };
    let path = |v: Option<PathBuf>| v.filter(|v| !v.as_os_str().is_empty());
    let overrides = Overrides {
        id: text(args.id),
        cluster: text(args.cluster),
        listen: args.listen,
        admin: args.admin,
        seeds: list(args.seeds),
        plugins: path(args.plugins),
        resources: list(args.resources),
        data_dir: path(args.data_dir),
        advertise: text(args.advertise),
        // Variables first, so that a flag setting the same key wins.
        settings: Setting::from_env(std::env::vars_os())
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .chain(args.settings)
            .collect(),
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    // Taken over before the (possibly long) start: a SIGHUP or SIGTERM that
    // arrives while plugins compile waits for the node instead of killing it.
    let mut signals = Signals::install();
    let starting = weft_node::start(config);
    tokio::pin!(starting);
    let (node, stopped) = tokio::select! {
        node = &mut starting => (node, false),
        () = signals.stop() => {
            // Plugins compiling now would never serve: end them, and let
            // the start finish without them.
            tracing::info!("stopping while starting: compiles in progress are cancelled");
            weft_runtime::stop_compiling();
            (starting.await, true)
        }
    };
    let node = node.context("the node could not start")?;
    if !stopped {
        // One machine-readable line on stdout: where the node listens
        // (tests and scripts start nodes on port 0 and read this). A closed
        // stdout does not stop the node.
        let ready = serde_json::json!({
            "event": "ready", "node": node.id, "cluster": node.cluster,
            "ws": node.ws_url(), "admin": node.admin_url(),
        });
        let _ = writeln!(std::io::stdout(), "{ready}");
        signals.wait(&node).await;
        weft_runtime::stop_compiling();
    }
    let drained = node.shutdown().await;
    Ok(if drained { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// SIGINT and SIGTERM stop the node; SIGHUP reloads the plugins folder and
/// the federation policy meanwhile.
struct Signals {
    #[cfg(unix)]
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = (|| {
                Some([
                    signal(SignalKind::interrupt()).ok()?,
                    signal(SignalKind::terminate()).ok()?,
                    signal(SignalKind::hangup()).ok()?,
                ])
            })();
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Until SIGINT or SIGTERM; a SIGHUP meanwhile waits for `wait`.
    async fn stop(&mut self) {
        #[cfg(unix)]
        if let Some([int, term, _]) = &mut self.streams {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }

    async fn wait(&mut self, node: &weft_node::RunningNode) {
        #[cfg(unix)]
        if let Some([int, term, hup]) = &mut self.streams {
            loop {
                tokio::select! {
                    _ = int.recv() => return,
                    _ = term.recv() => return,
                    _ = hup.recv() => {
                        // A reload may compile for a while: a stop signal
                        // meanwhile is acted on (and the compile cancelled).
                        tokio::select! {
                            () = reload(node) => {}
                            _ = int.recv() => return,
                            _ = term.recv() => return,
                        }
                    }
                }
            }
        }
        let _ = node;
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(unix)]
async fn reload(node: &weft_node::RunningNode) {
    tracing::info!("SIGHUP: reloading the plugins folder, then the federation policy");
    // Both outcomes are logged by the node itself, whoever asks for a reload.
    if let Err(e) = node.reload_plugins().await {
        tracing::info!(reason = %e, "plugins not reloaded");
    }
    let _ = node.reload_federation().await;
}

//! Starting and stopping a node: config before bind, plugins before ready,
//! and a drain bounded by the shutdown grace period.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_proto::{ClusterId, NodeId};
use weft_runtime::{CompileLimits, Runtime, RuntimeConfig};

use crate::admin::{self, AdminContext, Phase, PhaseCell};
use crate::cluster::{self, ClusterSettings, LeaveRequest};
use crate::config::Config;
use crate::executor::{Executor, local_catalog};
use crate::listen::Port;
use crate::metrics::Metrics;
use crate::peer::{Fabric, FabricSettings, Hello, PROTOCOL_VERSION};
use crate::tenants::Tenants;
use crate::ws::{self, WsContext};

/// Requests without `timeout_ms` get this long.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    // The io errors are in the message and not `source`s, so a report that
    // prints the error chain does not repeat them.
    #[error("cannot listen on {addr} ({what}): {error}; {}", bind_advice(error))]
    Bind { addr: SocketAddr, what: &'static str, error: std::io::Error },
    #[error("cannot create data_dir {path}: {error}")]
    DataDir { path: String, error: std::io::Error },
    #[error(
        "node.plugins: {0} is a file, not a folder; name the folder that holds the plugins (*.wasm with their NAME.toml)"
    )]
    PluginsNotAFolder(String),
    #[error("{0}")]
    Runtime(#[from] weft_runtime::RuntimeError),
    #[error("routing.security.signing_key: {0}")]
    SigningKey(String),
    #[error("{0}")]
    Tls(String),
}

/// What to do when a port cannot be bound.
fn bind_advice(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => "another process has that port: pick a free one, or port 0 for any",
        std::io::ErrorKind::AddrNotAvailable => {
            "that address is not one of this machine's: use one of its addresses, 127.0.0.1 or 0.0.0.0"
        }
        std::io::ErrorKind::PermissionDenied => "ports under 1024 need privileges: pick a higher one",
        _ => "check the address",
    }
}

/// A started node. Dropping it does not stop it; call `shutdown`.
pub struct RunningNode {
    pub id: NodeId,
    pub cluster: ClusterId,
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    admin_shutdown: CancellationToken,
    admin_tracker: TaskTracker,
    phase: Arc<PhaseCell>,
    grace: Duration,
    fabric: Arc<Fabric>,
    leave: mpsc::Sender<LeaveRequest>,
    start_config: Arc<StartConfig>,
    plugins: PluginSource,
    executor: Arc<Executor>,
}

/// Where this node's plugins come from, for reloads.
#[derive(Clone, Debug)]
pub(crate) struct PluginSource {
    /// `[node] plugins`; `None` serves the bundled plugins, which never change.
    pub dir: Option<std::path::PathBuf>,
    /// `[node] resources`, added to every local catalog entry.
    pub resources: Vec<String>,
    /// `cluster.max_catalog_entries_per_node`, which the local catalog keeps to.
    pub max_entries: usize,
    /// Bytes of signatures the local catalog keeps to, so that it fits in
    /// one peer message (`limits.max_frame`) with room to spare.
    pub max_bytes: usize,
    /// `routing.security.authenticate_links`: calls may name another
    /// cluster's tenants, so `TENANT@CLUSTER` callers open a plugin to it.
    pub foreign_tenants: bool,
}

/// The plugin reload of `RunningNode::reload_plugins` and `POST /v1/plugins/reload`:
/// the runtime catches up with the folder, and the cluster learns the new
/// local catalog.
pub(crate) async fn reload_plugins(
    fabric: &Fabric,
    source: &PluginSource,
) -> Result<weft_runtime::ReloadReport, String> {
    let Some(dir) = source.dir.clone() else {
        return Err(
            "this node serves the bundled plugins (no [node] plugins folder is configured); there is nothing to reload"
                .into(),
        );
    };
    let runtime = fabric.runtime.clone();
    // Compiling components is CPU work: keep it off the async workers.
    let report = tokio::task::spawn_blocking(move || runtime.reload_dir(&dir))
        .await
        .map_err(|e| format!("the plugin reload failed: {e}"))?;
    fabric.metrics.plugins_reported(fabric.runtime.plugins().len(), report.failed.len());
    let listing = local_catalog(&fabric.runtime, &fabric.me.node, &fabric.me.cluster, source);
    fabric.set_unlisted(listing.unlisted);
    fabric.event(crate::peer::Event::LocalCatalog(listing.entries));
    tracing::info!(loaded = ?report.loaded, unloaded = ?report.unloaded, unchanged = report.unchanged, failed = report.failed.len(), "plugins reloaded");
    Ok(report)
}

/// What a federation reload needs of the config the node started with.
pub(crate) struct StartConfig {
    /// The config file, if there was one.
    source: Option<std::path::PathBuf>,
    /// Flags and variables, which win over the file on a reload too.
    overrides: crate::Overrides,
    /// `Config::restart_only` as the node started.
    restart_only: Vec<(&'static str, String)>,
}

impl StartConfig {
    /// Whether there is more than the defaults to read again.
    fn configured(&self) -> bool {
        self.source.is_some() || !self.overrides.settings.is_empty()
    }

    fn of(config: &Config) -> Arc<Self> {
        Arc::new(StartConfig {
            source: config.source.clone(),
            overrides: config.overrides.clone(),
            restart_only: config.restart_only(),
        })
    }
}

/// The policy reload of `RunningNode::reload_federation` (SIGHUP) and `POST
/// /v1/federation/reload`, off the async workers: applying tenants' limits
/// waits for a plugin reload in progress, which may be compiling for as
/// long as `limits.compile_timeout`. Its outcome is logged whoever asked:
/// the admin API has no authentication, so a change made through it must
/// leave a trace.
pub(crate) async fn reload_federation(
    fabric: Arc<Fabric>,
    start: Arc<StartConfig>,
) -> Result<serde_json::Value, crate::ConfigError> {
    let configured = start.configured();
    let outcome = tokio::task::spawn_blocking(move || apply_federation(&fabric, &start)).await.unwrap_or_else(|e| {
        Err(crate::ConfigError { file: "(reload)".into(), problems: vec![format!("the reload failed: {e}")] })
    });
    match &outcome {
        Ok(summary) => tracing::info!(%summary, "federation policy reloaded"),
        // Nothing went wrong: a SIGHUP (say, from log rotation) also reloads plugins.
        Err(_) if !configured => tracing::info!("no config file, so no federation policy to reload"),
        Err(e) => tracing::error!(error = %e, "federation policy not reloaded; the old one stays"),
    }
    outcome
}

fn apply_federation(fabric: &Fabric, start: &StartConfig) -> Result<serde_json::Value, crate::ConfigError> {
    if !start.configured() {
        return Err(crate::ConfigError {
            file: "(none)".into(),
            problems: vec![
                "this node was started without a config file or --set / WEFT_SECTION__KEY settings; there is nothing to reload".into(),
            ],
        });
    }
    // Without a file, the settings over the defaults: what they name (TLS
    // files that were rotated, say) is read again.
    let path = start.source.as_deref();
    let source = path.map_or_else(|| "(flags and WEFT_* variables)".to_owned(), |p| p.display().to_string());
    let config = Config::load(path, &start.overrides)?;
    // TLS is read first: a file that cannot be used stops the whole reload,
    // so a node never ends up with half of a new configuration.
    let (acceptor, roots) = tls_reload(fabric, &config)
        .map_err(|problem| crate::ConfigError { file: source.clone(), problems: vec![problem] })?;
    let mut policy = config.policy();
    policy.cluster = fabric.me.cluster.clone();
    // The cluster's functions are known by now (at startup they are not:
    // the members' are still on their way).
    let entries = fabric.entries();
    let functions = entries.iter().filter(|e| e.cluster == fabric.me.cluster).map(|e| &e.function);
    let unmatched = policy.unmatched_function_rules(functions);
    let refused = fabric.set_policy(policy, config.federation.functions.rate_limit_per_minute);
    fabric.set_tenants(Tenants::from_config(&config, &fabric.tenants()));
    let relimited = fabric.runtime.set_tenant_limits(config.tenant_limits());
    fabric.set_roots(roots);
    if let (Some(server), Some(acceptor)) = (&fabric.tls, acceptor) {
        server.replace(acceptor);
    }
    for link in &refused {
        tracing::warn!(peer = %link.node(), cluster = %link.remote.cluster, "link closed: the reloaded federation policy refuses it");
        link.close();
    }
    fabric.event(crate::peer::Event::PolicyChanged);
    let closed: Vec<String> = refused.iter().map(|l| l.node().to_string()).collect();
    let needs_restart: Vec<&str> = config
        .restart_only()
        .iter()
        .zip(&start.restart_only)
        .filter(|(now, then)| now != then)
        .map(|((section, _), _)| *section)
        .collect();
    if !needs_restart.is_empty() {
        tracing::warn!(sections = ?needs_restart, "the config file changed sections that a reload does not apply; restart the node for them");
    }
    // As at startup: what loads but cannot work as meant.
    let mut warnings = config.warnings();
    warnings.extend(unmatched);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    Ok(serde_json::json!({
        "reloaded": source,
        "warnings": warnings,
        "links_closed": closed,
        "tenants": config.tenants.len(),
        "plugins_relimited": relimited,
        "tls": fabric.tls.is_some(),
        "needs_restart": needs_restart,
    }))
}

/// The certificate and trusted authorities of a reloaded config, read but
/// not yet applied. TLS cannot be turned on or off without a restart: the
/// ports would change scheme under their clients.
fn tls_reload(
    fabric: &Fabric,
    config: &Config,
) -> Result<(Option<tokio_rustls::TlsAcceptor>, weft_client::Roots), String> {
    if config.tls.serves() != fabric.tls.is_some() {
        return Err(format!(
            "tls: turning TLS {} needs a restart (the ports would change between ws:// and wss://)",
            if config.tls.serves() { "on" } else { "off" }
        ));
    }
    // Checked for the address the node is known at, which a reload does not change.
    let files = crate::tls::load(&config.tls, crate::config::dialled_host(&fabric.me.addr).as_deref())?;
    if let Some(doubt) = &files.doubt {
        tracing::warn!("{doubt}");
    }
    Ok((files.acceptor, files.roots))
}

impl RunningNode {
    pub fn ws_url(&self) -> String {
        ws_url(self.ws_addr, self.fabric.tls.is_some())
    }

    pub fn admin_url(&self) -> String {
        format!("{}://{}", if self.fabric.tls.is_some() { "https" } else { "http" }, self.admin_addr)
    }

    /// Every function this node can call now (its own and its linked peers').
    pub fn catalog(&self) -> Arc<Vec<weft_fabric::CatalogEntry>> {
        self.fabric.entries()
    }

    /// Reads the federation section of the config file again and applies it:
    /// links the new policy refuses are closed, and what crosses bridges is
    /// offered and imported anew.
    pub async fn reload_federation(&self) -> Result<serde_json::Value, crate::ConfigError> {
        reload_federation(self.fabric.clone(), self.start_config.clone()).await
    }

    /// Reads the plugins folder again: new and changed files are loaded,
    /// plugins whose file is gone are unloaded, and the cluster is told.
    pub async fn reload_plugins(&self) -> Result<weft_runtime::ReloadReport, String> {
        reload_plugins(&self.fabric, &self.plugins).await
    }

    /// The next hop and hops of this node's best route to `cluster`.
    pub fn best_route(&self, cluster: &str) -> Option<(NodeId, u32)> {
        let cluster = ClusterId::new(cluster);
        Some((self.fabric.next_hop(&cluster)?, self.fabric.route_hops(&cluster)?))
    }

    /// This node's metrics in Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.fabric.metrics.encode()
    }

    /// Stops accepting, lets in-flight calls finish for up to the grace
    /// period, then cancels what is left. Returns whether the drain finished
    /// in time.
    pub async fn shutdown(self) -> bool {
        self.phase.set(Phase::Draining);
        tracing::info!(node = %self.id, grace = ?self.grace, "draining");
        // Say goodbye first, so peers stop sending calls here; links stay
        // open until the drain is over so that replies still flow.
        let (done, left) = oneshot::channel();
        if self.leave.send(LeaveRequest(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), left).await;
        }
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(self.grace, self.tracker.wait()).await.is_ok();
        if !drained {
            tracing::warn!(node = %self.id, "grace period over; the requests still running are answered UNAVAILABLE");
            self.executor.end_running();
            // Time to write those answers.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        }
        self.fabric.close_links().await;
        self.admin_shutdown.cancel();
        self.admin_tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin_tracker.wait()).await;
        drained
    }
}

fn runtime_config(config: &Config) -> RuntimeConfig {
    RuntimeConfig {
        limits: config.sandbox_limits(),
        tenant_limits: config.tenant_limits(),
        max_concurrency: config.limits.max_concurrency,
        max_warm_instances: config.limits.max_warm_instances,
        max_result_bytes: usize::try_from(config.limits.max_result).unwrap_or(usize::MAX),
        max_plugin_bytes: config.limits.max_plugin,
        cache_dir: Some(config.node.data_dir.join("cache")),
        cache_max_bytes: config.limits.compile_cache,
        compile: CompileLimits { timeout: config.limits.compile_timeout, memory_bytes: config.limits.compile_memory },
        ..RuntimeConfig::default()
    }
}

/// Raises the soft limit on open files to the hard one (the soft 1024 of
/// systemd and many shells is below what `limits.max_connections` allows),
/// and warns when even that cannot hold the connections allowed: past it,
/// accepting fails until connections close.
fn raise_open_files(max_connections: u32) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit { current: limit.maximum, ..limit };
    let soft = if setrlimit(Resource::Nofile, raised).is_ok() { raised.current } else { limit.current };
    // Besides connections: links, plugin and cache files, the runtime.
    let wanted = u64::from(max_connections) + OWN_FILES;
    if let Some(soft) = soft.filter(|s| *s < wanted) {
        tracing::warn!(
            "the open-file limit is {soft} (ulimit -n; its hard limit too), below limits.max_connections ({max_connections}) plus about {OWN_FILES} for the node itself: past it new connections cannot be accepted; raise the limit (LimitNOFILE= under systemd) or lower limits.max_connections"
        );
    }
}

/// The files a node holds open besides client connections, roughly.
const OWN_FILES: u64 = 256;

/// How links prove their cluster: this cluster's key, trusted for it along
/// with the keys configured for the others.
fn cluster_keys(config: &Config, cluster: &ClusterId, key: Option<ed25519_dalek::SigningKey>) -> crate::signing::Keys {
    let mut keys = config.trust().keys;
    if let Some(key) = &key {
        keys.entry(cluster.clone()).or_default().push(key.verifying_key());
    }
    crate::signing::Keys { require_links: config.routing.security.authenticate_links, key, keys }
}

/// The WebSocket URL of a listener at `addr`.
fn ws_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "wss" } else { "ws" })
}

/// Starts a node: binds both listeners, loads plugins, then serves.
pub async fn start(config: Config) -> Result<RunningNode, NodeError> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    raise_open_files(config.limits.max_connections);
    let files = crate::tls::load(&config.tls, config.dialled_host().as_deref()).map_err(NodeError::Tls)?;
    if let Some(doubt) = &files.doubt {
        tracing::warn!("{doubt}");
    }
    let (acceptor, roots) = (files.acceptor, files.roots);
    let tls = acceptor.map(|a| Arc::new(crate::tls::ServerTls::new(a)));
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr).await.map_err(|error| NodeError::Bind { addr, what, error })
    };
    let ws_listener = bind(config.node.listen, "node.listen").await?;
    let admin_listener = bind(config.node.admin, "node.admin").await?;
    let ws_addr = ws_listener.local_addr().map_err(|error| NodeError::Bind {
        addr: config.node.listen,
        what: "node.listen",
        error,
    })?;
    let admin_addr = admin_listener.local_addr().map_err(|error| NodeError::Bind {
        addr: config.node.admin,
        what: "node.admin",
        error,
    })?;
    crate::create_folder(&config.node.data_dir)
        .map_err(|error| NodeError::DataDir { path: config.node.data_dir.display().to_string(), error })?;
    // A folder that is missing is waited for (the watcher loads it when it
    // appears); a file in its place is a mistake.
    if let Some(plugins) = config.node.plugins.as_ref().filter(|p| p.is_file()) {
        return Err(NodeError::PluginsNotAFolder(plugins.display().to_string()));
    }

    let id = NodeId::new(config.node_id(ws_addr.port()));
    let cluster = ClusterId::new(config.node.cluster.clone());
    let metrics = Arc::new(Metrics::new());
    let phase = Arc::new(PhaseCell::default());
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let max_frame = usize::try_from(config.limits.max_frame).unwrap_or(usize::MAX);

    // The admin API serves from the start (503 while starting, and while
    // draining) and stops last, so probes see every phase.
    let executor_cell = Arc::new(OnceLock::new());
    let admin_shutdown = CancellationToken::new();
    let admin_tracker = TaskTracker::new();
    let plugin_source = PluginSource {
        dir: config.node.plugins.clone(),
        resources: config.node.resources.clone(),
        max_entries: config.cluster.max_catalog_entries_per_node as usize,
        max_bytes: max_frame / 2,
        foreign_tenants: config.routing.security.authenticate_links,
    };
    let start_config = StartConfig::of(&config);
    let large = crate::executor::LargeRequests::new(DEFAULT_REQUEST_TIMEOUT);
    let requests = crate::executor::RequestMemory::new(config.limits.max_request_memory);
    let admin_ctx = Arc::new(AdminContext {
        start_config: start_config.clone(),
        plugins: plugin_source.clone(),
        executor: executor_cell.clone(),
        metrics: metrics.clone(),
        phase: phase.clone(),
        node: id.to_string(),
        cluster: cluster.to_string(),
        ws_port: ws_addr.port(),
        max_body: max_frame,
        large: large.clone(),
        requests: requests.clone(),
        calls: tracker.clone(),
        guarded: !config.auth.operator_tokens.is_empty(),
        write_timeout: config.limits.write_timeout,
    });
    let max_connections = config.limits.max_connections as usize;
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let admin_port = Port {
        name: "admin",
        listener: admin_listener,
        tls: tls.clone(),
        open: open.clone(),
        max: max_connections,
        most: max_connections / 2,
        share: "half of limits.max_connections",
    };
    admin_tracker.spawn(admin::serve(admin_port, admin_ctx, admin_shutdown.clone(), admin_tracker.clone()));

    let runtime = Arc::new(Runtime::new(runtime_config(&config))?);
    let loader = runtime.clone();
    let plugins = config.node.plugins.clone();
    // Compiling components is CPU work: keep it off the async workers.
    let report = tokio::task::spawn_blocking(move || match plugins {
        Some(dir) => loader.load_dir(&dir),
        None => load_bundled(&loader),
    })
    .await
    .map_err(|e| NodeError::Runtime(weft_runtime::RuntimeError::Engine(format!("plugin loading failed: {e}"))))?;
    metrics.plugins_reported(report.loaded.len(), report.failed.len());
    tracing::info!(node = %id, plugins = ?report.loaded, failed = report.failed.len(), "plugins loaded");

    let me = Hello {
        proto: PROTOCOL_VERSION,
        node: id.clone(),
        cluster: cluster.clone(),
        incarnation: crate::unix_ms(),
        addr: config.node.advertise.clone().unwrap_or_else(|| {
            let url = ws_url(ws_addr, tls.is_some());
            if ws_addr.ip().is_unspecified() {
                tracing::warn!(
                    listen = %ws_addr,
                    "node.advertise is unset, so peers are told to dial {url}, which reaches only this machine; set node.advertise to an address they can reach"
                );
            }
            url
        }),
        caps: vec!["swim".into(), "catalog".into(), "calls".into()],
        nonce: None,
        proof: None,
    };
    let local = local_catalog(&runtime, &id, &cluster, &plugin_source);
    let max_members = config.cluster.max_members as usize;
    let (fabric, events) = Fabric::new(
        me,
        runtime,
        metrics.clone(),
        FabricSettings {
            max_frame,
            max_members,
            max_serving: crate::peer::PEER_CALLS_PER_CONNECTION * config.limits.max_in_flight_per_connection as usize,
            transit: config.routing.transit,
            bridge_silence: (5 * config.routing.announce_interval).max(Duration::from_secs(2)),
            roots,
            tls: tls.clone(),
        },
        (config.policy(), config.federation.functions.rate_limit_per_minute),
        tracker.clone(),
    );
    fabric.set_tenants(Tenants::from_config(&config, &fabric.tenants()));
    fabric.set_unlisted(local.unlisted);
    let key = &config.routing.security.signing_key;
    let signer = if key.is_empty() {
        None
    } else {
        let signer = crate::signing::load_signing_key(std::path::Path::new(key)).map_err(NodeError::SigningKey)?;
        let public = crate::signing::public_of(&signer);
        tracing::info!(key = %public, "routes and link proofs are signed with this key; the other clusters' trusted_keys must list it for {cluster}");
        Some(signer)
    };
    fabric.set_keys(cluster_keys(&config, &cluster, signer.clone()));
    let settings = ClusterSettings {
        failure_timeout: config.cluster.failure_timeout,
        beat_interval: config.cluster.beat_interval,
        catalog: weft_fabric::CatalogConfig {
            max_entries_per_node: config.cluster.max_catalog_entries_per_node as usize,
            max_members,
            advert_ttl: config.cluster.catalog_ttl,
            ..weft_fabric::CatalogConfig::default()
        },
        seeds: config.node.seeds.clone(),
        routes: config.route_config(),
        announce_interval: config.routing.announce_interval,
        transit: config.routing.transit,
        signer,
        trust: config.trust(),
    };
    let leave = cluster::start(fabric.clone(), events, local.entries, settings, shutdown.clone());
    let executor = Arc::new(Executor::new(
        fabric.clone(),
        config.limits.max_commands as usize,
        DEFAULT_REQUEST_TIMEOUT,
        config.routing.max_hops,
    ));
    let ws_ctx = Arc::new(WsContext {
        admin_port: admin_addr.port(),
        executor: executor.clone(),
        metrics: metrics.clone(),
        max_frame,
        max_in_flight: config.limits.max_in_flight_per_connection as usize,
        write_timeout: config.limits.write_timeout,
        large,
        requests,
    });
    let ws_port = Port {
        name: "listen",
        listener: ws_listener,
        tls,
        open,
        max: max_connections,
        most: max_connections - crate::listen::ADMIN_RESERVE,
        share: "limits.max_connections, less the 8 kept for the admin port",
    };
    tracker.spawn(ws::serve(ws_port, ws_ctx, shutdown.clone(), tracker.clone()));
    tracker.spawn(runtime_upkeep(fabric.runtime.clone(), fabric.metrics.clone(), shutdown.clone()));
    if config.node.watch_plugins {
        crate::watch::start(fabric.clone(), plugin_source.clone(), shutdown.clone(), &tracker);
    }
    let _ = executor_cell.set(executor.clone());
    phase.set(Phase::Ready);
    tracing::info!(node = %id, %cluster, ws = %ws_addr, admin = %admin_addr, "node ready");
    Ok(RunningNode {
        id,
        cluster,
        ws_addr,
        admin_addr,
        shutdown,
        tracker,
        admin_shutdown,
        admin_tracker,
        phase,
        grace: config.node.shutdown_grace,
        fabric,
        leave,
        start_config,
        plugins: plugin_source,
        executor,
    })
}

/// Once a second, the guest output dropped since each plugin's last
/// report, the replaced plugin versions whose grace is over, and the call
/// series of plugins gone.
async fn runtime_upkeep(runtime: Arc<Runtime>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {
                runtime.report_dropped_output();
                runtime.forget_replaced();
                metrics.forget_calls(|name| runtime.has_plugin(name));
            }
        }
    }
}

/// No plugins folder configured: the bundled example plugins.
fn load_bundled(runtime: &Runtime) -> weft_runtime::LoadReport {
    let mut report = weft_runtime::LoadReport::default();
    for name in weft_bundle::DEFAULT_SET {
        let Some(wasm) = weft_bundle::get(name) else {
            continue;
        };
        match runtime.load_bytes(&format!("{name}.wasm (bundled)"), name, wasm, None) {
            Ok(label) => report.loaded.push(label),
            Err(f) => report.failed.push(f),
        }
    }
    runtime.prune_cache();
    report
}

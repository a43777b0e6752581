//! The node's Prometheus metrics: one registry per node (several nodes in
//! one test process never mix), labels from closed sets only (function
//! labels are functions this node resolved from its catalog, never
//! caller-supplied text).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::runtime::RuntimeMetrics;
use weft_proto::{ErrorKind, FunctionId};
use weft_runtime::NodeLoad;

use crate::alerts::AlertKind;
use crate::peer::RejectKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerMessageLabels {
    pub direction: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerBytesLabels {
    pub direction: &'static str,
    /// "gossip" (membership, catalog, handshakes) or "calls".
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// A tenant of `[tenants]` (a closed set: names come from the config).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub point: &'static str,
    pub outcome: &'static str,
    pub rule: &'static str,
}

/// The series one function's calls are counted in (handles that share their
/// values with the families they came from).
struct CallSeries {
    ok: Counter,
    error: Counter,
    seconds: Histogram,
}

impl CallSeries {
    fn record(&self, ok: bool, seconds: f64) {
        if ok { &self.ok } else { &self.error }.inc();
        self.seconds.observe(seconds);
    }
}

pub struct Metrics {
    registry: Registry,
    pub federation_decisions: Family<DecisionLabels, Counter>,
    pub alerts: Family<KindLabel, Counter>,
    pub routes_dropped: Counter,
    pub catalog_refused: Counter,
    pub route_signatures: Family<KindLabel, Counter>,
    pub peer_links: Gauge,
    pub peer_messages: Family<PeerMessageLabels, Counter>,
    pub peer_bytes: Family<PeerBytesLabels, Counter>,
    pub links_refused: Family<KindLabel, Counter>,
    pub members: Gauge,
    pub catalog_entries: Gauge,
    pub forwards: Family<OutcomeLabel, Counter>,
    calls: Family<FunctionLabels, Counter>,
    call_seconds: Family<FunctionLabel, Histogram>,
    /// Each function's series of `calls` and `call_seconds`, found once:
    /// a call then records without formatting its name or looking it up in
    /// the families (three allocations and two hashes of the name per call).
    call_series: RwLock<HashMap<FunctionId, CallSeries>>,
    pub errors: Family<KindLabel, Counter>,
    pub requests: Family<TransportLabel, Counter>,
    pub request_seconds: Histogram,
    pub connections: Gauge,
    pub in_flight: Gauge,
    pub request_memory: Gauge,
    pub frames_rejected: Family<KindLabel, Counter>,
    pub abandoned: Counter,
    pub connections_refused: Counter,
    pub tls_failures: Counter,
    plugins_loaded: Gauge,
    pub warm_idle: Gauge,
    pub spares_idle: Gauge,
    plugin_load_failures: Counter,
    plugins_failed: Gauge,
    pub tenant_commands: Family<TenantLabels, Counter>,
    /// The node's tokio runtime (absent outside one), for `load`.
    runtime: Option<RuntimeMetrics>,
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~58 s (above the 30 s default request timeout)
    Histogram::new(exponential_buckets(1e-5, 2.5, 18))
}

/// A call of one function being timed (`Metrics::call_timer`).
pub struct CallTimer<'a> {
    metrics: &'a Metrics,
    function: &'a FunctionId,
    started: std::time::Instant,
    done: bool,
}

impl CallTimer<'_> {
    pub fn finish(mut self, ok: bool) {
        self.done = true;
        self.metrics.record_call(self.function, ok, self.started.elapsed().as_secs_f64());
    }
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.record_call(self.function, false, self.started.elapsed().as_secs_f64());
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let calls = Family::<FunctionLabels, Counter>::default();
        let call_seconds =
            Family::<FunctionLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let errors = Family::<KindLabel, Counter>::default();
        let requests = Family::<TransportLabel, Counter>::default();
        let request_seconds = latency_histogram();
        let connections = Gauge::default();
        let in_flight = Gauge::default();
        let request_memory = Gauge::default();
        let frames_rejected = Family::<KindLabel, Counter>::default();
        let abandoned = Counter::default();
        let connections_refused = Counter::default();
        let tls_failures = Counter::default();
        let plugins_loaded = Gauge::default();
        let warm_idle = Gauge::default();
        let spares_idle = Gauge::default();
        let plugin_load_failures = Counter::default();
        let plugins_failed = Gauge::default();
        let peer_links = Gauge::default();
        let peer_messages = Family::<PeerMessageLabels, Counter>::default();
        let peer_bytes = Family::<PeerBytesLabels, Counter>::default();
        let links_refused = Family::<KindLabel, Counter>::default();
        let members = Gauge::default();
        let catalog_entries = Gauge::default();
        let forwards = Family::<OutcomeLabel, Counter>::default();
        let federation_decisions = Family::<DecisionLabels, Counter>::default();
        let alerts = Family::<KindLabel, Counter>::default();
        let routes_dropped = Counter::default();
        let catalog_refused = Counter::default();
        let route_signatures = Family::<KindLabel, Counter>::default();
        let tenant_commands = Family::<TenantLabels, Counter>::default();
        // Each series of a closed label set exists from the start, at 0: one
        // that first appears at 1 shows an alert rule's increase() nothing.
        let kinds = [
            (&errors, ErrorKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
            (&alerts, AlertKind::ALL.iter().map(|k| k.as_str()).collect()),
            (&links_refused, RejectKind::ALL.iter().map(|k| k.as_str()).collect()),
            (&route_signatures, crate::signing::UPDATE_REJECTIONS.to_vec()),
            (&frames_rejected, vec!["too_large", "protocol", "peer", "memory", "slow"]),
        ];
        for (family, kinds) in kinds {
            for kind in kinds {
                let _ = family.get_or_create(&KindLabel { kind });
            }
        }
        for outcome in ["ok", "lost", "error"] {
            let _ = forwards.get_or_create(&OutcomeLabel { outcome });
        }
        registry.register(
            "tenant_commands",
            "Commands of tenants' requests: admitted, or refused over calls_per_minute or max_in_flight",
            tenant_commands.clone(),
        );
        registry.register(
            "route_updates_rejected",
            "Route updates refused whole: unsigned, untrusted key, bad signature, expired, ahead, stale epoch",
            route_signatures.clone(),
        );
        registry.register(
            "routes_refused",
            "Route announcements not imported (loops, hop limit, policy, stale epochs, floods)",
            routes_dropped.clone(),
        );
        registry.register(
            "catalog_deltas_refused",
            "Catalog changes from members refused (malformed, or past cluster.max_members)",
            catalog_refused.clone(),
        );
        registry.register("alerts_raised", "Alerts raised (see GET /v1/alerts), by kind", alerts.clone());
        registry.register(
            "federation_decisions",
            "Federation policy decisions, by enforcement point, outcome and deciding rule",
            federation_decisions.clone(),
        );
        registry.register("peer_links", "Live links to other nodes", peer_links.clone());
        registry.register("peer_messages", "Peer messages, by direction and kind", peer_messages.clone());
        registry.register("peer_bytes", "Peer message bytes, by direction and class", peer_bytes.clone());
        registry.register("links_refused", "Peer links refused at the handshake, by reason", links_refused.clone());
        registry.register("cluster_members", "Live members of this node's cluster, itself included", members.clone());
        registry.register("catalog_entries", "Functions in this node's catalog", catalog_entries.clone());
        registry.register("forwards", "Calls forwarded to other nodes, by outcome", forwards.clone());
        registry.register("calls", "Function calls run on this node, by function and outcome", calls.clone());
        registry.register("call_duration_seconds", "Time of one function call on this node", call_seconds.clone());
        registry.register("errors", "Errors returned to callers, by kind", errors.clone());
        registry.register("requests", "Client requests received, by transport", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request decoded to response ready",
            request_seconds.clone(),
        );
        registry.register("connections", "Open WebSocket connections", connections.clone());
        registry.register("in_flight_requests", "Requests being executed", in_flight.clone());
        registry.register(
            "request_memory_bytes",
            "Host memory charged to the requests this node holds and receives (at most limits.max_request_memory)",
            request_memory.clone(),
        );
        registry.register(
            "frames_rejected",
            "Frames or bodies rejected before decoding, by reason",
            frames_rejected.clone(),
        );
        registry.register("requests_abandoned", "Requests cancelled because their client went away", abandoned.clone());
        registry.register(
            "connections_refused",
            "Connections to the listen or admin port closed at once: limits.max_connections were open",
            connections_refused.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Connections to the listen or admin port whose TLS handshake failed",
            tls_failures.clone(),
        );
        registry.register("plugins_loaded", "Plugins loaded and ready", plugins_loaded.clone());
        registry.register(
            "warm_instances_idle",
            "Warm instances kept for reuse, all plugins together (at most limits.max_warm_instances)",
            warm_idle.clone(),
        );
        registry.register(
            "spare_instances_idle",
            "Spare instances built on an idle node and never called, all plugins together (at most half of limits.max_warm_instances)",
            spares_idle.clone(),
        );
        registry.register(
            "plugin_load_failures",
            "Failed loads of plugin files (a broken file counts again at each reload)",
            plugin_load_failures.clone(),
        );
        registry.register(
            "plugins_failed",
            "Plugin files that fail to load now (as of the last load or reload)",
            plugins_failed.clone(),
        );
        Self {
            registry,
            federation_decisions,
            alerts,
            routes_dropped,
            catalog_refused,
            route_signatures,
            peer_links,
            peer_messages,
            peer_bytes,
            links_refused,
            members,
            catalog_entries,
            forwards,
            calls,
            call_seconds,
            call_series: RwLock::default(),
            errors,
            requests,
            request_seconds,
            connections,
            in_flight,
            request_memory,
            frames_rejected,
            abandoned,
            connections_refused,
            tls_failures,
            plugins_loaded,
            warm_idle,
            spares_idle,
            plugin_load_failures,
            plugins_failed,
            tenant_commands,
            runtime: tokio::runtime::Handle::try_current().ok().map(|rt| rt.metrics()),
        }
    }

    /// The outcome of loading the plugins folder (at start or a reload).
    pub fn plugins_reported(&self, loaded: usize, failed: usize) {
        self.plugins_loaded.set(loaded as i64);
        self.plugins_failed.set(failed as i64);
        self.plugin_load_failures.inc_by(failed as u64);
    }

    /// Idle when no requests are in flight on this node besides the asker's
    /// `own` (1 for a client request, 0 for a call a peer forwarded here)
    /// and every other worker of the runtime is parked. The gauge alone
    /// misjudged load: a request usually runs start to finish in one poll,
    /// so under load another one is seldom *executing* at that moment while
    /// dozens wait in the run queue and in socket buffers, and those keep
    /// the other worker awake.
    pub fn load(&self, own: i64) -> NodeLoad {
        let others_parked = self.runtime.as_ref().is_none_or(|rt| {
            // tokio's encoding: an odd count means the worker is parked.
            let parked = (0..rt.num_workers()).filter(|&w| rt.worker_park_unpark_count(w) % 2 == 1).count();
            parked + 1 >= rt.num_workers()
        });
        if others_parked && self.in_flight.get() <= own { NodeLoad::Idle } else { NodeLoad::Busy }
    }

    /// Times a call of `function` on this node; it is recorded when the
    /// timer is finished, or as an error if the call is dropped first
    /// (cancelled by its request's deadline or a failing sibling).
    pub fn call_timer<'a>(&'a self, function: &'a FunctionId) -> CallTimer<'a> {
        CallTimer { metrics: self, function, started: std::time::Instant::now(), done: false }
    }

    fn record_call(&self, function: &FunctionId, ok: bool, seconds: f64) {
        if let Some(series) = self.call_series.read().unwrap_or_else(PoisonError::into_inner).get(function) {
            series.record(ok, seconds);
            return;
        }
        let name = function.to_string();
        let calls = |outcome| self.calls.get_or_create(&FunctionLabels { function: name.clone(), outcome }).clone();
        let series = CallSeries {
            ok: calls("ok"),
            error: calls("error"),
            seconds: self.call_seconds.get_or_create(&FunctionLabel { function: name }).clone(),
        };
        series.record(ok, seconds);
        self.call_series.write().unwrap_or_else(PoisonError::into_inner).insert(function.clone(), series);
    }

    /// Drops the call series of the functions whose plugin this node no
    /// longer has (`loaded` says which plugins it has), so that `/metrics`
    /// does not grow with every plugin name the node ever served. The node
    /// asks once a second, which also catches the series that calls still
    /// running when their plugin went bring back; only a removal takes the
    /// write lock.
    pub fn forget_calls(&self, loaded: impl Fn(&str) -> bool) {
        let read = self.call_series.read().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<FunctionId> = read.keys().filter(|f| !loaded(&f.plugin)).cloned().collect();
        drop(read);
        if gone.is_empty() {
            return;
        }
        let mut series = self.call_series.write().unwrap_or_else(PoisonError::into_inner);
        for function in gone {
            series.remove(&function);
            let name = function.to_string();
            for outcome in ["ok", "error"] {
                self.calls.remove(&FunctionLabels { function: name.clone(), outcome });
            }
            self.call_seconds.remove(&FunctionLabel { function: name });
        }
    }

    /// Counts a tenant request's commands by what became of them.
    pub fn tenant_commands(&self, tenant: &str, outcome: &'static str, commands: usize) {
        let labels = TenantLabels { tenant: tenant.to_owned(), outcome };
        self.tenant_commands.get_or_create(&labels).inc_by(commands as u64);
    }

    pub fn record_error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    pub fn reject_frame(&self, reason: &'static str) {
        self.frames_rejected.get_or_create(&KindLabel { kind: reason }).inc();
    }

    pub fn route_signature_failure(&self, kind: &'static str) {
        self.route_signatures.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn alert(&self, kind: &'static str) {
        self.alerts.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn federation_decision(&self, point: &'static str, outcome: &'static str, rule: &'static str) {
        self.federation_decisions.get_or_create(&DecisionLabels { point, outcome, rule }).inc();
    }

    pub fn peer_message(&self, direction: &'static str, msg: &crate::peer::PeerMsg, bytes: usize) {
        self.peer_messages.get_or_create(&PeerMessageLabels { direction, kind: msg.kind() }).inc();
        let class = if msg.is_gossip() { "gossip" } else { "calls" };
        self.peer_bytes.get_or_create(&PeerBytesLabels { direction, class }).inc_by(bytes as u64);
    }

    /// Prometheus text exposition (OpenMetrics flavour).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn the_call_series_of_an_unloaded_plugin_are_dropped() {
        let metrics = Metrics::new();
        let (echo, gone) = (FunctionId::new("echo", "echo"), FunctionId::new("p17", "echo"));
        for f in [&echo, &gone] {
            metrics.call_timer(f).finish(true);
        }
        metrics.forget_calls(|plugin| plugin == "echo");
        let text = metrics.encode();
        assert!(text.contains("function=\"echo/echo\"") && !text.contains("p17"), "{text}");
        metrics.call_timer(&gone).finish(false);
        assert!(metrics.encode().contains("function=\"p17/echo\",outcome=\"error\"} 1"), "a new call counts anew");
    }

    /// Polls `load` (blocking this worker, as a request's poll does) until
    /// it says `want`; false if it never does within five seconds.
    fn becomes(metrics: &Metrics, own: i64, want: NodeLoad) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if metrics.load(own) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_is_busy_while_another_request_or_another_worker_runs() {
        // On a worker, as the executor is.
        let judged = tokio::spawn(async {
            let metrics = Metrics::new();
            metrics.in_flight.set(1);
            assert!(becomes(&metrics, 1, NodeLoad::Idle), "only the asker's own request, the other worker parked");
            metrics.in_flight.set(2);
            assert_eq!(metrics.load(1), NodeLoad::Busy, "another request in flight");
            assert_eq!(metrics.load(2), NodeLoad::Idle, "both are the asker's");
            metrics.in_flight.set(1);

            // A task that keeps the other worker awake, as connections
            // waiting to be served do under load. Spawned from outside the
            // runtime: a task spawned here would wait in this worker's
            // LIFO slot, which no other worker takes.
            let stop = Arc::new(AtomicBool::new(false));
            let spin = {
                let stop = stop.clone();
                async move {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                }
            };
            let rt = tokio::runtime::Handle::current();
            let spinner = std::thread::spawn(move || rt.spawn(spin)).join().expect("spawning thread");
            let busy = becomes(&metrics, 1, NodeLoad::Busy);
            stop.store(true, Ordering::Relaxed);
            spinner.await.expect("spinner");
            assert!(busy, "the other worker is running a task");
            assert!(becomes(&metrics, 1, NodeLoad::Idle), "the other worker parked again");
        });
        judged.await.expect("judged on a worker");
    }

    #[test]
    fn outside_a_runtime_only_requests_in_flight_count() {
        let metrics = Metrics::new();
        assert_eq!(metrics.load(0), NodeLoad::Idle);
        metrics.in_flight.set(1);
        assert_eq!(metrics.load(0), NodeLoad::Busy);
    }
}

//! Links between nodes: the handshake (both sides decide), the registry that
//! keeps one link per pair of nodes, and the state the rest of the node reads
//! (links, the published catalog, members). Membership and the catalog are
//! driven by the cluster task (`crate::cluster`), which this module feeds with
//! [`Event`]s.

mod link;
mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_fabric::{CatalogEntry, Policy, Verdict};
use weft_proto::{ClusterId, ErrorKind, FunctionId, NodeId, WeftError};
use weft_runtime::Runtime;

use crate::alerts::{AlertKind, Alerts};
use crate::arriving::MeterHandle;
use crate::metrics::Metrics;
use crate::signing::{CallClaim, Keys, LinkClaim, OriginProof, SeenProofs};
use crate::tenants::Tenants;
pub(crate) use link::Admission;
pub use link::{Direction, Link};
pub use wire::{ForwardCall, Hello, LossMsg, PROTOCOL_VERSION, PeerMsg, Reject, RejectKind, is_peer_addr};

/// The subject of the one alert all refused inbound links share.
const INBOUND_REFUSALS: &str = "inbound links";

/// How long the links a policy change closes take to go, on either side:
/// a link lost that long after this node's reload, or shortly after the
/// other side refused it, went by a decision, not an outage.
pub(crate) const POLICY_SETTLES: Duration = Duration::from_secs(5);

/// How long a dialled node has to answer `hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusals remembered for `/v1/peers`.
const REFUSALS_KEPT: usize = 64;

/// A bridge peer's route update that failed its signature check.
pub struct RefusedRoutes {
    pub destinations: Vec<ClusterId>,
    pub reason: String,
}

/// What links tell the cluster task.
pub enum Event {
    LinkUp(Arc<Link>),
    LinkDown(Arc<Link>),
    /// A peer's message, holding its share of the link's inbound budget.
    Peer(Arc<Link>, Box<PeerMsg>, link::Queued),
    /// The federation policy was reloaded: offer and import anew.
    PolicyChanged,
    /// The plugins were reloaded: this node's own catalog entries now.
    LocalCatalog(Vec<CatalogEntry>),
    /// Another cluster's policy refused a link: what went out of reach
    /// lately may be its decision, which members are told at once.
    RefusedByPolicy,
}

/// What the cluster task publishes for everyone else to read.
#[derive(Clone, Debug)]
pub struct ClusterView {
    pub entries: Arc<Vec<CatalogEntry>>,
    pub members: Vec<MemberView>,
    /// Links each member reported in its last beat (this node's own are live).
    pub links: Vec<(NodeId, NodeId)>,
    /// Members that relay functions of a foreign cluster, by cluster.
    pub relays: std::collections::BTreeMap<ClusterId, Vec<NodeId>>,
    /// The bridge peer each reachable cluster's best route leads through.
    pub next_hops: std::collections::BTreeMap<ClusterId, NodeId>,
    /// For each function open to named clusters only, the bridge peers that
    /// offered it: its calls go their way, since the clusters on the best
    /// route may not be trusted to carry them (`federation.trusted_transit`).
    pub carriers: std::collections::BTreeMap<(ClusterId, FunctionId), Vec<NodeId>>,
    pub routes: Arc<weft_fabric::RouteTable>,
    /// The origin of the route table's clock.
    pub clock: std::time::Instant,
    /// What went out of reach with a node lately (Unix milliseconds).
    pub lost: Arc<weft_fabric::Lost>,
}

impl ClusterView {
    /// Now on the route table's clock.
    pub(crate) fn now(&self) -> weft_fabric::Millis {
        weft_fabric::Millis(u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            entries: Arc::default(),
            members: Vec::new(),
            links: Vec::new(),
            relays: Default::default(),
            next_hops: Default::default(),
            carriers: Default::default(),
            routes: Arc::new(weft_fabric::RouteTable::new(ClusterId::default(), weft_fabric::RouteConfig::default())),
            clock: std::time::Instant::now(),
            lost: Arc::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub node: NodeId,
    pub addr: String,
    pub incarnation: u64,
    /// "alive" or "suspect" (SWIM's view).
    pub state: &'static str,
}

/// A refused link attempt, as `/v1/peers` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    pub at_unix_ms: u64,
    pub remote_node: Option<NodeId>,
    pub remote_cluster: Option<String>,
    pub addr: String,
    pub direction: Direction,
    /// Who refused: "local" or "remote".
    pub by: &'static str,
    pub kind: RejectKind,
    /// For policy refusals: the rule that decided.
    pub rule: Option<String>,
    pub reason: String,
}

/// How the last dial of one of `node.seeds` went, as `/v1/peers` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SeedStatus {
    pub addr: String,
    /// `linked`, `failing` (unreachable, or not a Weft node), `refused` (by
    /// policy, link authentication or a full cluster, on either side) or
    /// `self` (this node's own address).
    pub state: &'static str,
    /// Why, unless linked.
    pub error: Option<String>,
    /// When it entered this state.
    pub since_unix_ms: u64,
}

/// How long a seed may fail before it raises `seed-unreachable`: nodes of a
/// cluster that start together fail to reach each other for a moment.
const SEED_ALERT_AFTER_MS: u64 = 30_000;

/// What a seed's latest dial means for its alert.
#[derive(Debug, PartialEq, Eq)]
enum SeedAlert {
    Resolve,
    Raise(String),
    Leave,
}

impl SeedStatus {
    /// Takes the outcome of a dial at `now`.
    fn record(&mut self, state: &'static str, error: Option<String>, now: u64) -> SeedAlert {
        if self.state != state {
            (self.state, self.since_unix_ms) = (state, now);
        }
        self.error = error;
        let failing_for = now.saturating_sub(self.since_unix_ms);
        match (state, &self.error) {
            ("linked", _) => SeedAlert::Resolve,
            ("failing", Some(why)) if failing_for >= SEED_ALERT_AFTER_MS => SeedAlert::Raise(format!(
                "seed {} has not been reachable for {} s: {why}",
                self.addr,
                failing_for / 1000
            )),
            _ => SeedAlert::Leave,
        }
    }
}

/// A peer link carries the calls of all the clients of the node at its
/// other end, so it may have this many times a client connection's
/// `limits.max_in_flight_per_connection` running or waiting here at once.
pub const PEER_CALLS_PER_CONNECTION: usize = 16;

pub struct FabricSettings {
    pub max_frame: usize,
    pub max_members: usize,
    /// Calls one peer may have running or waiting here at once.
    pub max_serving: usize,
    /// `routing.transit`: calls between two other clusters may pass here.
    pub transit: bool,
    /// How long a bridge link may stay silent before the peer is taken to
    /// be gone (both sides ping every `routing.announce_interval`).
    pub bridge_silence: Duration,
    /// Authorities trusted when dialling a `wss://` peer.
    pub roots: weft_client::Roots,
    /// The certificate this node serves, with `[tls]`.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

/// The node's side of the cluster, shared by the listeners, the executor,
/// the admin API and the cluster task.
pub struct Fabric {
    pub me: Hello,
    pub runtime: Arc<Runtime>,
    pub metrics: Arc<Metrics>,
    pub max_frame: usize,
    pub max_members: usize,
    pub(crate) max_serving: usize,
    pub(crate) bridge_silence: Duration,
    transit: bool,
    roots: RwLock<weft_client::Roots>,
    /// The certificate both listeners serve, with `[tls]`.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    links: RwLock<HashMap<NodeId, Arc<Link>>>,
    view: RwLock<ClusterView>,
    refusals: Mutex<VecDeque<Refusal>>,
    /// One entry per seed (`node.seeds`, a bounded list from the config).
    seeds: Mutex<Vec<SeedStatus>>,
    /// Bounds the log lines of refusals and of malformed peer frames:
    /// handshakes from ever new addresses would each log one (they are all
    /// counted in the metrics).
    refusal_logs: governor::DefaultDirectRateLimiter,
    /// When a link to each other cluster last came up: refusals before it
    /// no longer explain a missing bridge.
    linked_at: Mutex<HashMap<ClusterId, u64>>,
    /// The cluster of each node this node has linked to (kept while it has
    /// fewer than `PEERS_KNOWN`): a refused dial names the cluster, not the
    /// node, and a refusal by the cluster of a node that went is a decision.
    peer_clusters: Mutex<HashMap<NodeId, ClusterId>>,
    /// When the policy in force was set: this node's refusals before it
    /// were made by another policy.
    policy_set_at: AtomicU64,
    /// When a reload last set the policy (0: never).
    policy_reloaded_at: AtomicU64,
    /// Each bridge peer's last route update refused for its signature, until
    /// one of its updates is accepted: a missing route may be why.
    unsigned_routes: Mutex<HashMap<NodeId, RefusedRoutes>>,
    pub alerts: Alerts,
    policy: RwLock<Arc<Policy>>,
    rate: RwLock<Option<Arc<RateLimit>>>,
    tenants: RwLock<Arc<Tenants>>,
    /// This node's plugins its catalog leaves out, with why.
    unlisted: RwLock<Arc<crate::executor::Unlisted>>,
    keys: RwLock<Arc<Keys>>,
    seen_proofs: Mutex<SeenProofs>,
    decisions: Mutex<std::collections::BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    events: mpsc::UnboundedSender<Event>,
    /// Inbound forwarded calls: drained with the node's client calls.
    pub(crate) tracker: TaskTracker,
    /// Closes every link; cancelled after the drain, so replies still flow.
    pub(crate) links_closing: CancellationToken,
    /// Cancelled when the node's shutdown grace period is over: requests
    /// and forwarded calls still running are answered UNAVAILABLE then,
    /// rather than cut off.
    pub(crate) grace_over: CancellationToken,
    pub(crate) link_tasks: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} refused the link ({}): {}", .reject.kind.as_str(), .reject.reason)]
    Refused { addr: String, reject: Reject },
    #[error("link to {addr} not made ({}): {}", .reject.kind.as_str(), .reject.reason)]
    RefusedHere { addr: String, reject: Reject },
}

impl DialError {
    pub fn reject_kind(&self) -> Option<RejectKind> {
        match self {
            DialError::Unreachable { .. } => None,
            DialError::Refused { reject, .. } | DialError::RefusedHere { reject, .. } => Some(reject.kind),
        }
    }
}

/// Calls per minute accepted from each foreign cluster.
pub struct RateLimit {
    per_minute: u32,
    limiter: governor::DefaultKeyedRateLimiter<ClusterId>,
}

impl RateLimit {
    fn new(per_minute: u32) -> Option<RateLimit> {
        let quota = governor::Quota::per_minute(std::num::NonZeroU32::new(per_minute)?);
        Some(RateLimit { per_minute, limiter: governor::RateLimiter::keyed(quota) })
    }
}

/// Where a policy decision was taken (a closed set, for metrics).
#[derive(Clone, Copy, Debug)]
pub enum Point {
    LinkIn,
    LinkOut,
    Import,
    CallOrigin,
    CallTarget,
}

impl Point {
    fn as_str(self) -> &'static str {
        match self {
            Point::LinkIn => "link-in",
            Point::LinkOut => "link-out",
            Point::Import => "import",
            Point::CallOrigin => "call-origin",
            Point::CallTarget => "call-target",
        }
    }
}

impl Fabric {
    pub fn new(
        me: Hello,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
        settings: FabricSettings,
        federation: (Policy, u32),
        tracker: TaskTracker,
    ) -> (Arc<Fabric>, mpsc::UnboundedReceiver<Event>) {
        let FabricSettings { max_frame, max_members, max_serving, transit, bridge_silence, roots, tls } = settings;
        let (events, rx) = mpsc::unbounded_channel();
        let fabric = Fabric {
            me,
            runtime,
            metrics,
            max_frame,
            max_members,
            max_serving,
            bridge_silence,
            transit,
            roots: RwLock::new(roots),
            tls,
            links: RwLock::default(),
            view: RwLock::default(),
            refusals: Mutex::default(),
            seeds: Mutex::default(),
            refusal_logs: governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(60).expect("non-zero"),
            )),
            linked_at: Mutex::default(),
            peer_clusters: Mutex::default(),
            policy_set_at: AtomicU64::new(crate::unix_ms()),
            policy_reloaded_at: AtomicU64::new(0),
            unsigned_routes: Mutex::default(),
            alerts: Alerts::default(),
            policy: RwLock::new(Arc::new(federation.0)),
            rate: RwLock::new(RateLimit::new(federation.1).map(Arc::new)),
            tenants: RwLock::default(),
            unlisted: RwLock::default(),
            keys: RwLock::default(),
            seen_proofs: Mutex::default(),
            decisions: Mutex::default(),
            events,
            tracker,
            links_closing: CancellationToken::new(),
            grace_over: CancellationToken::new(),
            link_tasks: TaskTracker::new(),
        };
        (Arc::new(fabric), rx)
    }

    /// Bytes of one link's messages that may wait for the cluster task: two
    /// frames of the largest size.
    fn inbound_budget(&self) -> usize {
        self.max_frame.saturating_mul(2).min(u32::MAX as usize)
    }

    pub(crate) fn event(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub fn link(&self, node: &NodeId) -> Option<Arc<Link>> {
        read(&self.links).get(node).cloned()
    }

    pub fn links(&self) -> Vec<Arc<Link>> {
        let mut links: Vec<Arc<Link>> = read(&self.links).values().cloned().collect();
        links.sort_by(|a, b| a.node().cmp(b.node()));
        links
    }

    pub fn view(&self) -> ClusterView {
        read(&self.view).clone()
    }

    pub fn entries(&self) -> Arc<Vec<CatalogEntry>> {
        read(&self.view).entries.clone()
    }

    pub(crate) fn publish(&self, view: ClusterView) {
        // What `/v1/catalog` lists: not the entries this cluster only carries.
        let listed = view.entries.iter().filter(|e| e.listed_in(&self.me.cluster)).count();
        self.metrics.catalog_entries.set(listed as i64);
        self.metrics.members.set(view.members.len() as i64 + 1);
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
    }

    pub fn transit(&self) -> bool {
        self.transit
    }

    /// The bridge peer the best route to `cluster` leads through.
    pub fn next_hop(&self, cluster: &ClusterId) -> Option<NodeId> {
        read(&self.view).next_hops.get(cluster).cloned()
    }

    /// Cluster crossings of the route calls to `cluster` take.
    pub fn route_hops(&self, cluster: &ClusterId) -> Option<u32> {
        self.way(cluster, |r| r.hops)
    }

    /// The clusters the route calls to `cluster` take crosses, `cluster` last.
    pub fn route_path(&self, cluster: &ClusterId) -> Option<Vec<ClusterId>> {
        self.way(cluster, |r| r.path.clone())
    }

    /// Whether a line about a peer's misbehaviour may be logged now: such
    /// lines share one budget of 60 a minute, since a peer can cause them
    /// by the thousand (the metrics count them all).
    pub fn may_log_peer_trouble(&self) -> bool {
        self.refusal_logs.check().is_ok()
    }

    /// Whether bridge peer `via` announced this node a route to `cluster`.
    pub fn leads_through(&self, via: &NodeId, cluster: &ClusterId) -> bool {
        read(&self.view).routes.leads_through(via, cluster)
    }

    /// The clusters the route to `cluster` that member `via` shares crosses.
    pub fn relay_path(&self, via: &NodeId, cluster: &ClusterId) -> Option<Vec<ClusterId>> {
        read(&self.view).routes.member_path(via, cluster).map(<[ClusterId]>::to_vec)
    }

    /// Reads the route calls to `cluster` take (`RouteTable::way`).
    fn way<T>(&self, cluster: &ClusterId, read_it: impl FnOnce(&weft_fabric::Route) -> T) -> Option<T> {
        let view = read(&self.view);
        view.routes.way(view.now(), cluster).map(read_it)
    }

    /// Whether this cluster announces a route to `destination` to its
    /// neighbour `to`, and so carries `to`'s calls there.
    pub fn offers(&self, to: &ClusterId, destination: &ClusterId) -> bool {
        let view = read(&self.view);
        view.routes.exports(view.now(), to, self.transit).iter().any(|a| a.destination == *destination)
    }

    /// The bridge peers that offered `function` of `cluster`, if it is open
    /// to named clusters only.
    pub fn carriers_of(&self, cluster: &ClusterId, function: &FunctionId) -> Vec<NodeId> {
        read(&self.view).carriers.get(&(cluster.clone(), function.clone())).cloned().unwrap_or_default()
    }

    /// Members that offered to relay calls into `cluster`.
    pub fn relays_to(&self, cluster: &ClusterId) -> Vec<NodeId> {
        read(&self.view).relays.get(cluster).cloned().unwrap_or_default()
    }

    /// Whether `addr` refused a link (or was refused) by policy within `within`.
    pub fn refused_lately(&self, addr: &str, within: Duration) -> bool {
        let now = crate::unix_ms();
        let window = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        lock(&self.refusals)
            .iter()
            .any(|r| r.addr == addr && r.kind == RejectKind::Policy && now.saturating_sub(r.at_unix_ms) < window)
    }

    /// Addresses of nodes this node refused by policy that the policy in
    /// force now admits, and that no link reaches: after a refusal they
    /// wait before asking again, so a reload that admits them dials them.
    pub fn readmitted(&self) -> Vec<String> {
        let policy = self.policy();
        let linked: Vec<String> = self.links().iter().map(|l| l.remote.addr.clone()).collect();
        let mut addrs: Vec<String> = lock(&self.refusals)
            .iter()
            .filter(|r| r.by == "local" && r.kind == RejectKind::Policy && !linked.contains(&r.addr))
            .filter(|r| {
                let cluster = r.remote_cluster.as_deref().map(ClusterId::new);
                cluster.is_some_and(|c| policy.peer(&c, r.remote_node.as_ref()).allowed)
            })
            .map(|r| r.addr.clone())
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// The refused link between this node and a node of `cluster` (either
    /// side refused) that explains why no bridge leads there: the latest by
    /// policy, else the latest for another cause that keeps a link down
    /// (keys, a full cluster, a protocol or id clash). Not one that a later
    /// link, or for this node's refusals a later policy, has overtaken.
    pub fn link_refusal(&self, cluster: &ClusterId) -> Option<Refusal> {
        let linked = lock(&self.linked_at).get(cluster).copied().unwrap_or(0);
        let policy_set = self.policy_set_at.load(Ordering::Relaxed);
        let refusals = lock(&self.refusals);
        let current = || {
            refusals.iter().rev().filter(|r| {
                r.remote_cluster.as_deref() == Some(cluster.as_str())
                    && r.at_unix_ms >= linked
                    && (r.by != "local" || r.at_unix_ms >= policy_set)
            })
        };
        // A duplicate link or a self-dial says nothing about reachability.
        let benign = |r: &&Refusal| matches!(r.kind, RejectKind::DuplicateLink | RejectKind::SelfDial);
        current().find(|r| r.kind == RejectKind::Policy).or_else(|| current().find(|r| !benign(r))).cloned()
    }

    /// `Ok` when a link, a route or a member's bridge leads to `target`;
    /// else why not: the policy refusal of the last link attempt (here or
    /// there) as `POLICY_DENIED`, or `NO_ROUTE` naming any other refusal.
    pub fn reach(&self, target: &ClusterId) -> Result<(), WeftError> {
        let me = &self.me;
        if self.links().iter().any(|l| l.remote.cluster == *target)
            || self.next_hop(target).is_some()
            || !self.relays_to(target).is_empty()
        {
            return Ok(());
        }
        if let Some(gone) = self.lost_way(target).filter(|g| self.outage(target, g)) {
            return Err(out_of_reach(format!("cluster {target}"), &gone).with("cluster", target.as_str()));
        }
        let refusal = self.link_refusal(target);
        if let Some(refusal) = refusal.clone().filter(|r| r.kind == RejectKind::Policy) {
            let who = if refusal.by == "local" { me.cluster.clone() } else { target.clone() };
            return Err(WeftError::new(
                ErrorKind::POLICY_DENIED,
                format!("cluster {who} refuses the bridge between {} and {target}: {}", me.cluster, refusal.reason),
            )
            .with("rule", refusal.rule.unwrap_or_default())
            .with("cluster", who.as_str()));
        }
        let mut why = refusal.map_or_else(String::new, |r| {
            format!(
                "; the last link with a node of {target} was refused ({}, {} side): {}",
                r.kind.as_str(),
                r.by,
                r.reason
            )
        });
        for (node, refused) in lock(&self.unsigned_routes).iter() {
            if refused.destinations.contains(target) && self.link(node).is_some() {
                why.push_str(&format!("; node {node} announced a route there that was refused: {}", refused.reason));
            }
        }
        let routes = read(&self.view).routes.clone();
        for (node, reason) in routes.refused_routes(target) {
            why.push_str(&format!("; node {node} announced a route there that was not taken: {reason}"));
        }
        Err(WeftError::new(
            ErrorKind::NO_ROUTE,
            format!(
                "no bridge or route from node {} leads to cluster {target} (GET /v1/routes lists the reachable clusters); bridge to it or to a cluster that carries transit{why}",
                me.node
            ),
        )
        .with("cluster", target.as_str()))
    }

    /// When the way to `cluster` went out of reach, if it did lately.
    pub fn lost_way(&self, cluster: &ClusterId) -> Option<weft_fabric::Gone> {
        read(&self.view).lost.way(crate::unix_ms(), cluster).cloned()
    }

    /// What of the function named `function` (without its plugin) went out
    /// of reach lately as an outage: its entries as a catalog, with when
    /// and how each went.
    pub fn lost_entries(&self, function: &str) -> Vec<(CatalogEntry, weft_fabric::Gone)> {
        let lost = read(&self.view).lost.clone();
        let named = |e: &CatalogEntry| &*e.function.function == function;
        lost.entries(crate::unix_ms()).filter(|(e, g)| named(e) && self.outage(&e.cluster, g)).cloned().collect()
    }

    /// Whether what went out of reach with `gone` in `cluster` is still an
    /// outage: this node's policy admits the cluster, and no link with it,
    /// or with a node it went with (a transit cluster's), was refused since
    /// shortly before (the other side's decision: its refusal may come just
    /// before the link drops). A refusal for another node missing from a
    /// bridge's `nodes` list says nothing when this node refused it, nor
    /// when the way was a member's bridge (this node's own dials may be
    /// refused so all along).
    pub(crate) fn outage(&self, cluster: &ClusterId, gone: &weft_fabric::Gone) -> bool {
        if *cluster == self.me.cluster {
            return true;
        }
        let since = gone.at.saturating_sub(POLICY_SETTLES.as_millis() as u64);
        let went = |r: &Refusal| r.remote_node.as_ref().is_some_and(|n| gone.nodes.contains(n));
        let clusters = lock(&self.peer_clusters);
        let of_what_went = |r: &Refusal| {
            let refusing = r.remote_cluster.as_deref();
            gone.nodes.iter().any(|n| clusters.get(n).is_some_and(|c| Some(c.as_str()) == refusing))
        };
        let about_a_node = |r: &Refusal| {
            r.rule.as_deref() == Some(weft_fabric::Rule::BridgeNodes.as_str())
                && (r.by == "local" || gone.members)
                && !went(r)
        };
        let refused = |r: &Refusal| {
            (r.remote_cluster.as_deref() == Some(cluster.as_str()) || went(r) || of_what_went(r))
                && r.at_unix_ms >= since
                && !about_a_node(r)
        };
        self.policy().peer(cluster, None).allowed && !lock(&self.refusals).iter().any(refused)
    }

    /// When a reload last set this node's federation policy (Unix
    /// milliseconds; 0: never).
    pub fn policy_reloaded_at(&self) -> u64 {
        self.policy_reloaded_at.load(Ordering::Relaxed)
    }

    /// Notes that `node`'s route update, announcing `destinations`, was
    /// refused for its signature (`None`: one of its updates was accepted).
    pub fn routes_refused(&self, node: &NodeId, refused: Option<RefusedRoutes>) {
        let mut all = lock(&self.unsigned_routes);
        match refused {
            Some(r) => all.insert(node.clone(), r),
            None => all.remove(node),
        };
    }

    pub fn refusals(&self) -> Vec<Refusal> {
        lock(&self.refusals).iter().cloned().collect()
    }

    /// The seeds' states, in config order.
    pub fn seeds(&self) -> Vec<SeedStatus> {
        lock(&self.seeds).clone()
    }

    /// Records how a dial of seed `addr` went, raising `seed-unreachable`
    /// once it has been failing for a while and resolving it when it links.
    pub(crate) fn seed_dialled(&self, addr: &str, state: &'static str, error: Option<String>) {
        let now = crate::unix_ms();
        let mut seeds = lock(&self.seeds);
        let index = seeds.iter().position(|s| s.addr == addr).unwrap_or_else(|| {
            seeds.push(SeedStatus { addr: addr.to_owned(), state, error: None, since_unix_ms: now });
            seeds.len() - 1
        });
        let alert = seeds[index].record(state, error, now);
        drop(seeds);
        match alert {
            SeedAlert::Resolve => self.alerts.resolve(AlertKind::SeedUnreachable, addr),
            SeedAlert::Raise(message) => self.alert(AlertKind::SeedUnreachable, addr, &message),
            SeedAlert::Leave => {}
        }
    }

    /// How links prove their cluster and calls their origin (set at start,
    /// before any link).
    pub fn set_keys(&self, keys: Keys) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// The other clusters whose calls can prove here where they started.
    pub fn provable_origins(&self) -> Vec<ClusterId> {
        let keys = read(&self.keys);
        keys.keys.iter().filter(|(c, k)| **c != self.me.cluster && !k.is_empty()).map(|(c, _)| c.clone()).collect()
    }

    /// This cluster's proof that the call `claim` starts here, if it has a key.
    pub fn prove_origin(&self, claim: &CallClaim<'_>) -> Option<OriginProof> {
        read(&self.keys).prove_origin(claim, crate::unix_ms())
    }

    /// Checks a call's proof of origin (see `Keys::check_origin`), once: a
    /// copy of a proof taken before is refused.
    pub fn check_origin(&self, claim: &CallClaim<'_>, proof: &OriginProof) -> Result<(), String> {
        let now = crate::unix_ms();
        read(&self.keys).check_origin(claim, proof, now)?;
        let mut seen = self.seen_proofs.lock().unwrap_or_else(|p| p.into_inner());
        if seen.first_time(proof, now) { Ok(()) } else { Err("was used before (a copy of a call made already)".into()) }
    }

    /// The tenants client requests are admitted as (set at start and by a reload).
    pub fn tenants(&self) -> Arc<Tenants> {
        read(&self.tenants).clone()
    }

    /// Whether every link of this node proved its cluster's key at the
    /// handshake (`routing.security.authenticate_links`).
    pub fn links_authenticated(&self) -> bool {
        read(&self.keys).require_links
    }

    /// Whom links dialled from now on trust (`tls.ca`, set at start and by a reload).
    pub fn set_roots(&self, roots: weft_client::Roots) {
        *self.roots.write().unwrap_or_else(|p| p.into_inner()) = roots;
    }

    pub fn set_tenants(&self, tenants: Tenants) {
        *self.tenants.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tenants);
    }

    pub(crate) fn unlisted(&self) -> Arc<crate::executor::Unlisted> {
        read(&self.unlisted).clone()
    }

    pub(crate) fn set_unlisted(&self, unlisted: crate::executor::Unlisted) {
        *self.unlisted.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(unlisted);
    }

    pub fn policy(&self) -> Arc<Policy> {
        read(&self.policy).clone()
    }

    /// Installs a new policy (reload) and returns the links it no longer
    /// admits, which the caller closes.
    pub fn set_policy(&self, policy: Policy, rate_limit_per_minute: u32) -> Vec<Arc<Link>> {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self.policy_set_at.store(crate::unix_ms(), Ordering::Relaxed);
        self.policy_reloaded_at.store(crate::unix_ms(), Ordering::Relaxed);
        *self.rate.write().unwrap_or_else(|p| p.into_inner()) = RateLimit::new(rate_limit_per_minute).map(Arc::new);
        self.links()
            .into_iter()
            .filter(|l| {
                // Each link is judged again at the point it was first judged.
                let point = match l.direction {
                    Direction::Inbound => Point::LinkIn,
                    Direction::Outbound => Point::LinkOut,
                };
                !self.decide(point, self.policy().peer(&l.remote.cluster, Some(l.node()))).allowed
            })
            .collect()
    }

    /// Counts a policy decision (and warns about permissive acceptances).
    pub fn decide(&self, point: Point, verdict: Verdict) -> Verdict {
        let outcome = if verdict.allowed { "accepted" } else { "rejected" };
        let key = (point.as_str(), outcome, verdict.rule.as_str());
        *lock(&self.decisions).entry(key).or_default() += 1;
        self.metrics.federation_decision(key.0, key.1, key.2);
        verdict
    }

    /// Decision counters by (point, outcome, rule), for `/v1/federation`.
    pub fn decisions(&self) -> Vec<((&'static str, &'static str, &'static str), u64)> {
        lock(&self.decisions).iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn rate_limit_per_minute(&self) -> u32 {
        read(&self.rate).as_ref().map_or(0, |r| r.per_minute)
    }

    /// Takes one call from a foreign cluster out of its per-minute budget.
    pub fn charge(&self, cluster: &ClusterId) -> Result<(), WeftError> {
        let Some(rate) = read(&self.rate).clone() else {
            return Ok(());
        };
        rate.limiter.check_key(cluster).map_err(|not_until| {
            self.alert(
                AlertKind::RateLimited,
                cluster.as_str(),
                &format!("calls from cluster {cluster} hit federation.functions.rate_limit_per_minute ({})", rate.per_minute),
            );
            use governor::clock::Clock;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            WeftError::new(
                ErrorKind::RATE_LIMITED,
                format!(
                    "cluster {cluster} is over federation.functions.rate_limit_per_minute ({}) of cluster {}; retry in {} ms",
                    rate.per_minute,
                    self.me.cluster,
                    wait.as_millis()
                ),
            )
            .with("rule", "rate-limit")
            .with("cluster", cluster.as_str())
            .with("retry_after_ms", u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
        })
    }

    /// Raises an alert (logged and counted when new).
    pub fn alert(&self, kind: AlertKind, subject: &str, message: &str) {
        if self.alerts.raise(kind, subject, message) {
            self.metrics.alert(kind.as_str());
            tracing::warn!(alert = kind.as_str(), subject, message, "alert raised");
        }
    }

    /// Both sides of a handshake run this on what the other side said. The
    /// acceptor checks a hello (`sent_nonce` None: the dialler's own nonce is
    /// in it); the dialler checks a welcome against the nonce it sent.
    fn admit(&self, remote: &Hello, sent_nonce: Option<&str>) -> Result<(), Reject> {
        let refuse = |kind, reason: String| Err(Reject::new(kind, reason));
        if remote.proto != PROTOCOL_VERSION {
            return refuse(
                RejectKind::Protocol,
                format!(
                    "node {} speaks peer protocol {}, this node speaks {PROTOCOL_VERSION}; run the same weft release on both",
                    remote.node, remote.proto
                ),
            );
        }
        let inbound = sent_nonce.is_none();
        let claim = claim(remote, sent_nonce.or(remote.nonce.as_deref()).unwrap_or_default());
        if let Err(reason) = read(&self.keys).check_link(&claim, remote.proof.as_ref(), !inbound, crate::unix_ms()) {
            return refuse(RejectKind::Unauthenticated, reason);
        }
        if remote.node == self.me.node {
            return if remote.incarnation == self.me.incarnation {
                refuse(RejectKind::SelfDial, format!("{} is this node's own address", self.me.addr))
            } else {
                refuse(
                    RejectKind::DuplicateNodeId,
                    format!(
                        "node id {} is already used by the node at {}; give every node its own node.id",
                        remote.node, self.me.addr
                    ),
                )
            };
        }
        let point = if inbound { Point::LinkIn } else { Point::LinkOut };
        let verdict = self.decide(point, self.policy().peer(&remote.cluster, Some(&remote.node)));
        if !verdict.allowed {
            return Err(Reject {
                kind: RejectKind::Policy,
                reason: format!("{} (rule {})", verdict.reason, verdict.rule.as_str()),
                rule: Some(verdict.rule.as_str().to_owned()),
                cluster: Some(self.me.cluster.clone()),
            });
        }
        if verdict.rule == weft_fabric::Rule::Permissive {
            tracing::warn!(peer = %remote.node, cluster = %remote.cluster, "foreign cluster accepted by federation.mode = permissive");
        }
        Ok(())
    }

    /// Adds a link after a successful handshake, keeping one link per pair.
    /// Two links to one node resolve the same way on both sides: the link
    /// dialled by the smaller node id stays. A different incarnation while the
    /// old link lives is a second process with the same id.
    fn register(&self, link: &Arc<Link>) -> Result<(), Reject> {
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        // Members and bridge peers are bounded separately, each by max_members.
        let same = link.remote.cluster == self.me.cluster;
        let alike = links.values().filter(|l| (l.remote.cluster == self.me.cluster) == same).count();
        if alike + 1 >= self.max_members && !links.contains_key(link.node()) {
            return Err(Reject::new(
                RejectKind::ClusterFull,
                format!(
                    "node {} already has {alike} {} links, as many as cluster.max_members ({}, this node included) allows; raise it on every node",
                    self.me.node,
                    if same { "member" } else { "bridge" },
                    self.max_members,
                ),
            ));
        }
        if let Some(old) = links.get(link.node()).filter(|old| !old.is_closed()) {
            // A member's id is its own: a node of another cluster holding it
            // (by mistake, or to keep the member out) gives way to it.
            let member_returns = same && old.remote.cluster != self.me.cluster;
            if member_returns {
                tracing::warn!(node = %link.node(), other = %old.remote.cluster, "a member takes back its node id from a node of another cluster; that link closes");
            } else if old.remote.incarnation != link.remote.incarnation || old.remote.cluster != link.remote.cluster {
                return Err(Reject::new(
                    RejectKind::DuplicateNodeId,
                    format!(
                        "node id {} is already linked to {} (at {}, incarnation {}); give every node its own node.id, or wait until the old process is gone",
                        link.node(),
                        self.me.node,
                        old.remote.addr,
                        old.remote.incarnation
                    ),
                ));
            }
            if !member_returns && self.dialer(old) <= self.dialer(link) {
                return Err(Reject::new(
                    RejectKind::DuplicateLink,
                    format!("{} and {} are already linked", self.me.node, link.node()),
                ));
            }
            old.close();
        }
        links.insert(link.node().clone(), link.clone());
        self.metrics.peer_links.set(links.len() as i64);
        lock(&self.linked_at).insert(link.remote.cluster.clone(), crate::unix_ms());
        let mut known = lock(&self.peer_clusters);
        if known.len() >= PEERS_KNOWN {
            known.clear();
        }
        known.insert(link.node().clone(), link.remote.cluster.clone());
        Ok(())
    }

    fn dialer<'a>(&'a self, link: &'a Link) -> &'a NodeId {
        match link.direction {
            Direction::Outbound => &self.me.node,
            Direction::Inbound => link.node(),
        }
    }

    pub(crate) fn unregister(&self, link: &Arc<Link>) {
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        if links.get(link.node()).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(link.node());
        }
        self.metrics.peer_links.set(links.len() as i64);
    }

    pub(crate) fn refused(
        &self,
        by: &'static str,
        direction: Direction,
        addr: &str,
        remote: Option<&Hello>,
        reject: &Reject,
    ) {
        self.metrics.links_refused.get_or_create(&crate::metrics::KindLabel { kind: reject.kind.as_str() }).inc();
        let at_unix_ms = crate::unix_ms();
        let mut refusals = lock(&self.refusals);
        // Log a refusal once per peer and reason, not once per retry.
        let repeat = refusals
            .iter()
            .any(|r| r.addr == addr && r.kind == reject.kind && r.remote_node.as_ref() == remote.map(|h| &h.node));
        let quiet = matches!(reject.kind, RejectKind::DuplicateLink | RejectKind::SelfDial);
        if !repeat && !quiet && self.may_log_peer_trouble() {
            tracing::warn!(%addr, by, kind = reject.kind.as_str(), reason = %reject.reason, "peer link refused");
        }
        if matches!(reject.kind, RejectKind::Policy | RejectKind::Unauthenticated) {
            let why = if reject.kind == RejectKind::Policy { "policy" } else { "link authentication" };
            let message = format!("refused by {by} {why}: {}", reject.reason);
            match (direction, remote) {
                (Direction::Outbound, _) => {
                    self.alert(AlertKind::LinkRefused, remote.map_or(addr, |h| h.addr.as_str()), &message);
                }
                // What an inbound hello says of itself is unproven, so
                // inbound refusals share one alert: made-up addresses
                // cannot crowd out the others. It names the latest.
                (Direction::Inbound, Some(h)) => {
                    let latest = format!("{message} (latest: node {} of cluster {}, at {})", h.node, h.cluster, h.addr);
                    self.alert(AlertKind::LinkRefused, INBOUND_REFUSALS, &latest);
                }
                (Direction::Inbound, None) => self.alert(AlertKind::LinkRefused, INBOUND_REFUSALS, &message),
            }
        }
        // A refused dial does not learn who answered: the node last known
        // at that address (its link, closed by the same refusal) it is.
        let known = refusals.iter().rev().find(|r| r.addr == addr).and_then(|r| r.remote_node.clone());
        if by == "remote" && reject.kind == RejectKind::Policy {
            self.event(Event::RefusedByPolicy);
        }
        refusals.retain(|r| !(r.addr == addr && r.kind == reject.kind));
        if refusals.len() >= REFUSALS_KEPT {
            refusals.pop_front();
        }
        refusals.push_back(Refusal {
            at_unix_ms,
            remote_node: remote.map(|h| h.node.clone()).or(known),
            remote_cluster: remote
                .map(|h| h.cluster.to_string())
                .or_else(|| reject.cluster.as_ref().map(ToString::to_string)),
            addr: addr.to_owned(),
            direction,
            by,
            kind: reject.kind,
            rule: reject.rule.clone(),
            reason: reject.reason.clone(),
        });
    }

    /// The accepting side: `hello` arrived as the first frame of a
    /// connection, whose frames still arriving are charged to `meter`
    /// (anyone may say hello where links are not authenticated).
    pub(crate) async fn accept<S>(self: &Arc<Self>, mut ws: WebSocketStream<S>, hello: Hello, meter: MeterHandle)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Some(problem) = hello.problem() {
            self.refuse_malformed(ws, &problem).await;
            return;
        }
        let (link, rx) = Link::new(hello.clone(), Direction::Inbound, self.inbound_budget());
        if let Err(reject) = self.admit(&hello, None).and_then(|()| self.register(&link)) {
            self.refused("local", Direction::Inbound, &hello.addr, Some(&hello), &reject);
            refuse(&mut ws, reject).await;
            return;
        }
        // The welcome answers the dialler's nonce, so it cannot be replayed.
        let answered = claim(&self.me, hello.nonce.as_deref().unwrap_or_default());
        let welcome = Hello { proof: read(&self.keys).prove_link(&answered, None), ..self.me.clone() };
        if send(&mut ws, &PeerMsg::Welcome(welcome)).await.is_err() {
            self.unregister(&link);
            return;
        }
        // The dialler may still refuse the welcome (its policy, or our
        // proof): the link is up once its first frame is not a refusal.
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.next()).await;
        let close = match &read {
            Ok(Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e)))) => {
                Some(link::peer_frame_too_large(self, &hello.node, e))
            }
            Ok(Some(Err(_))) => meter.refusal().map(|r| crate::ws::refused_arriving(&self.metrics, r, &hello.node)),
            _ => None,
        };
        if let Some(close) = close {
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.send(Message::Close(Some(close)))).await;
        }
        let first = read.ok().flatten().and_then(Result::ok);
        let refusal = match &first {
            Some(Message::Text(t)) => match serde_json::from_str::<PeerMsg>(t) {
                Ok(PeerMsg::Reject(reject)) => Some(reject.bounded()),
                _ => None,
            },
            _ => None,
        };
        match (first, refusal) {
            (Some(first), None) if !matches!(first, Message::Close(_)) => {
                return self.start(link, ws, rx, Some(first), Some(meter));
            }
            (_, Some(reject)) => self.refused("remote", Direction::Inbound, &hello.addr, Some(&hello), &reject),
            _ => tracing::debug!(peer = %hello.node, "the dialler left before its link was up"),
        }
        link.end();
        self.unregister(&link);
    }

    /// Refuses a `hello` that is malformed or cannot be read at all. Nothing
    /// of it is logged (but at debug) or kept: it came from whoever connected.
    pub async fn refuse_malformed<S>(&self, mut ws: WebSocketStream<S>, problem: &str)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let reject = Reject::new(RejectKind::Protocol, format!("malformed handshake: {problem}"));
        self.metrics.links_refused.get_or_create(&crate::metrics::KindLabel { kind: reject.kind.as_str() }).inc();
        tracing::debug!(%problem, "malformed peer handshake refused");
        refuse(&mut ws, reject).await;
    }

    /// The dialling side. Returns the remote node's id once the link is up
    /// (it then runs in its own task).
    pub async fn dial(self: &Arc<Self>, addr: &str) -> Result<NodeId, DialError> {
        let unreachable = |reason: String| DialError::Unreachable { addr: addr.to_owned(), reason };
        // The config refuses plain seeds with [tls]; this catches plain
        // addresses learnt from other nodes.
        if self.tls.is_some() && !addr.starts_with("wss://") {
            return Err(unreachable(
                "this node has [tls] and links to peers only over wss://, but that address is plain; the peer needs [tls] and a wss:// advertise address".into(),
            ));
        }
        let tls = tokio_tungstenite::Connector::Rustls(read(&self.roots).client_config());
        let config = Some(crate::ws::ws_config(self.max_frame));
        let connect = tokio_tungstenite::connect_async_tls_with_config(addr, config, true, Some(tls));
        let (mut ws, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable("no answer within 5s".into()))?
            .map_err(|e| {
                unreachable(weft_client::upgrade_failure(&e).map_or_else(|cause| cause, |refusal| refusal.message))
            })?;
        let nonce = crate::signing::nonce();
        let proof = read(&self.keys).prove_link(&claim(&self.me, &nonce), Some(crate::unix_ms()));
        let hello = Hello { nonce: Some(nonce.clone()), proof, ..self.me.clone() };
        send(&mut ws, &PeerMsg::Hello(hello)).await.map_err(|e| unreachable(e.to_string()))?;
        let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.next())
            .await
            .map_err(|_| unreachable("no handshake answer within 5s".into()))?;
        let remote = match answer {
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<PeerMsg>(&t) {
                Ok(PeerMsg::Welcome(h)) => match h.problem() {
                    None => h,
                    Some(problem) => return Err(unreachable(format!("it sent a malformed handshake ({problem})"))),
                },
                Ok(PeerMsg::Reject(reject)) => {
                    let reject = reject.bounded();
                    self.refused("remote", Direction::Outbound, addr, None, &reject);
                    return Err(DialError::Refused { addr: addr.to_owned(), reject });
                }
                _ => return Err(unreachable("it did not answer the peer handshake; is it a weft node?".into())),
            },
            _ => return Err(unreachable("the connection closed during the handshake".into())),
        };
        let (link, rx) = Link::new(remote.clone(), Direction::Outbound, self.inbound_budget());
        if let Err(reject) = self.admit(&remote, Some(&nonce)).and_then(|()| self.register(&link)) {
            self.refused("local", Direction::Outbound, addr, Some(&remote), &reject);
            refuse(&mut ws, reject.clone()).await;
            return Err(DialError::RefusedHere { addr: addr.to_owned(), reject });
        }
        let node = remote.node.clone();
        self.start(link, ws, rx, None, None);
        Ok(node)
    }

    /// Runs a link that is up; `first` is a frame already read from it.
    fn start<S>(
        self: &Arc<Self>,
        link: Arc<Link>,
        ws: WebSocketStream<S>,
        rx: link::Outbound,
        first: Option<Message>,
        meter: Option<MeterHandle>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tracing::info!(peer = %link.node(), cluster = %link.remote.cluster, direction = ?link.direction, "peer link up");
        self.event(Event::LinkUp(link.clone()));
        self.link_tasks.spawn(link::run(self.clone(), link, ws, rx, first, meter));
    }

    /// Closes every link (after the node drained).
    pub(crate) async fn close_links(&self) {
        self.links_closing.cancel();
        self.link_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.link_tasks.wait()).await;
    }
}

/// What a link proof by (or for) the node of `hello` covers, with `nonce`.
fn claim<'a>(hello: &'a Hello, nonce: &'a str) -> LinkClaim<'a> {
    LinkClaim { node: &hello.node, cluster: &hello.cluster, incarnation: hello.incarnation, nonce }
}

/// Sends a refusal and closes politely: waiting (briefly) for the other side
/// to close too means the refusal is read, not lost to a reset connection.
async fn refuse<S>(ws: &mut WebSocketStream<S>, reject: Reject)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = send(ws, &PeerMsg::Reject(reject)).await;
    let _ = ws.close(None).await;
    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

async fn send<S>(ws: &mut WebSocketStream<S>, msg: &PeerMsg) -> Result<(), WeftError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let text = serde_json::to_string(msg).map_err(|e| WeftError::internal(e.to_string()))?;
    ws.send(Message::Text(text.into())).await.map_err(|e| WeftError::internal(e.to_string()))
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `UNAVAILABLE`: `what` went out of reach with the nodes `gone` names.
/// How many nodes' clusters `Fabric::peer_clusters` keeps (then it starts
/// anew): a node links to at most `cluster.max_members` members and as many
/// bridge peers at once.
const PEERS_KNOWN: usize = 4096;

pub(crate) fn out_of_reach(what: String, gone: &weft_fabric::Gone) -> WeftError {
    let ago = crate::unix_ms().saturating_sub(gone.at);
    let nodes: Vec<&str> = gone.nodes.iter().map(NodeId::as_str).collect();
    WeftError::new(
        ErrorKind::UNAVAILABLE,
        format!(
            "{what} went out of reach {:.1} s ago with node(s) {}, which served it or led to it (down, or the link to it lost); retry shortly: it is callable again as soon as a way to it is back",
            ago as f64 / 1000.0,
            nodes.join(", ")
        ),
    )
    .with("nodes", nodes)
    .with("lost_ms_ago", ago)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seed raises its alert only once it has been failing for a while,
    /// keeps the time it started failing across retries, and resolves it
    /// when it links.
    #[test]
    fn a_seed_alerts_after_failing_for_a_while_and_resolves_when_linked() {
        let mut seed = SeedStatus { addr: "ws://s:1".into(), state: "failing", error: None, since_unix_ms: 1_000 };
        let fail = |seed: &mut SeedStatus, now| seed.record("failing", Some("refused".into()), now);
        assert_eq!(fail(&mut seed, 1_000), SeedAlert::Leave);
        assert_eq!(fail(&mut seed, 1_000 + SEED_ALERT_AFTER_MS - 1), SeedAlert::Leave);
        let SeedAlert::Raise(message) = fail(&mut seed, 1_000 + SEED_ALERT_AFTER_MS) else {
            panic!("no alert after {SEED_ALERT_AFTER_MS} ms");
        };
        assert_eq!(message, "seed ws://s:1 has not been reachable for 30 s: refused");
        assert_eq!(seed.record("linked", None, 40_000), SeedAlert::Resolve);
        assert_eq!((seed.state, seed.since_unix_ms, seed.error.as_deref()), ("linked", 40_000, None));
        // Failing again starts the count afresh; a refusal is not "unreachable".
        assert_eq!(fail(&mut seed, 41_000), SeedAlert::Leave);
        assert_eq!(seed.record("refused", Some("policy".into()), 99_000), SeedAlert::Leave);
    }
}

//! The cluster task: membership (SWIM, by foca) and the replicated catalog
//! (`weft_fabric::ClusterCatalog`), driven by link events, foca's timers and
//! a periodic beat. It is the only writer of the cluster view the executor
//! and the admin API read.
//!
//! Membership decides who is alive; the catalog follows it: a member that
//! SWIM declares down, or that says goodbye, is withdrawn at once, and an
//! advert that nobody refreshes expires. SWIM packets travel over the same
//! peer links as everything else (foca is transport-agnostic); a member
//! without a link is dialled.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, State, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use weft_fabric::{
    Applied, Audience, CatalogConfig, CatalogDelta, CatalogEntry, ClusterCatalog, Millis, Policy, Refresh, RouteConfig,
    RouteTable,
};
use weft_proto::{Callers, ClusterId, FunctionId, NodeId};

use crate::alerts::AlertKind;
use crate::peer::{
    ClusterView, Event, Fabric, Link, LossMsg, MemberView, POLICY_SETTLES, PeerMsg, Point, RefusedRoutes,
};

/// A node as SWIM knows it. `renewal` grows when SWIM declared this process
/// down by mistake and it rejoins; `incarnation` is the process (start time).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub node: NodeId,
    pub addr: String,
    pub incarnation: u64,
    pub renewal: u32,
}

impl foca::Identity for Member {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Member { renewal: self.renewal.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> NodeId {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.incarnation, self.renewal) > (adversary.incarnation, adversary.renewal)
    }
}

#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// A member that stops answering is declared down within about this long.
    pub failure_timeout: Duration,
    /// How often each node tells its peers it is alive at its catalog stamp.
    pub beat_interval: Duration,
    pub catalog: CatalogConfig,
    pub seeds: Vec<String>,
    pub routes: RouteConfig,
    /// How often routes are announced over bridges (besides triggered updates).
    pub announce_interval: Duration,
    /// Re-announce learnt routes to other bridges (carry transit traffic).
    pub transit: bool,
    /// This cluster's route-signing key, and the keys trusted per cluster.
    pub signer: Option<ed25519_dalek::SigningKey>,
    pub trust: crate::signing::Trust,
}

/// Asks the cluster task to leave the cluster; answered once the goodbyes are queued.
pub struct LeaveRequest(pub oneshot::Sender<()>);

type Swim = Foca<Member, PostcardCodec, StdRng, NoCustomBroadcast>;

struct ClusterTask {
    fabric: Arc<Fabric>,
    foca: Swim,
    rt: AccumulatingRuntime<Member>,
    catalog: ClusterCatalog,
    /// This node's own entries as its plugins list them; advertised with
    /// the clusters this node's policy serves each to (`advertise_local`).
    plugins: Vec<CatalogEntry>,
    origin: Instant,
    timers: mpsc::UnboundedSender<Timer<Member>>,
    dials_done: mpsc::UnboundedSender<String>,
    dialing: HashSet<String>,
    /// Links each peer reported in its last beat.
    reported: BTreeMap<NodeId, Vec<NodeId>>,
    /// Foreign entries offered over each bridge link, by the linked node.
    imports: BTreeMap<NodeId, Vec<CatalogEntry>>,
    /// Foreign entries members reach over their bridges, by member.
    relayed: BTreeMap<NodeId, Vec<CatalogEntry>>,
    /// The clusters each member has bridge links to.
    bridged_by: BTreeMap<NodeId, Vec<ClusterId>>,
    /// What went out of reach with a node, and what was in reach when the
    /// view was last published (to tell what went).
    lost: Arc<weft_fabric::Lost>,
    /// What each member told it lost of other clusters, and what this node
    /// last told its members.
    lost_by: BTreeMap<NodeId, Vec<weft_fabric::Loss>>,
    losing: Vec<weft_fabric::Loss>,
    reached: Reached,
    /// The policy changed since the view was last published: what it cut
    /// off then is this node's decision, not an outage (so are the links
    /// it closes, within `POLICY_SETTLES`).
    policy_changed: bool,
    /// What this node last relayed to its members: foreign entries,
    /// (with transit) its own best routes, and its bridges' clusters.
    relaying: Vec<CatalogEntry>,
    sharing: Vec<weft_fabric::Announcement>,
    bridging: Vec<ClusterId>,
    /// The routes each member shares, as sent (the route table holds those
    /// this node's policy admits).
    shared_by: BTreeMap<NodeId, Vec<weft_fabric::Announcement>>,
    seeds: Vec<String>,
    /// Members that said goodbye (their down notice is not a failure).
    departed: HashSet<NodeId>,
    /// Members SWIM declared down, or that said goodbye, whose links may
    /// not have closed yet: what went with them went with a lost link (a
    /// member stopped for a restart is out of reach, as a bridge peer
    /// stopped is).
    members_down: HashSet<NodeId>,
    /// Addresses learnt from members' beats, and when they were last dialled.
    gossip_dials: std::collections::HashMap<String, Instant>,
    max_imports: usize,
    routes: RouteTable,
    transit: bool,
    /// The epoch of the last route update sent (milliseconds, strictly growing).
    route_epoch: u64,
    /// What each bridge peer was last offered.
    offers: BTreeMap<NodeId, Vec<CatalogEntry>>,
    signer: Option<ed25519_dalek::SigningKey>,
    trust: crate::signing::Trust,
    changed: bool,
}

/// Starts the cluster task and one dialler per seed.
pub fn start(
    fabric: Arc<Fabric>,
    events: mpsc::UnboundedReceiver<Event>,
    local: Vec<CatalogEntry>,
    settings: ClusterSettings,
    stop_dialling: CancellationToken,
) -> mpsc::Sender<LeaveRequest> {
    let me = &fabric.me;
    let identity = Member { node: me.node.clone(), addr: me.addr.clone(), incarnation: me.incarnation, renewal: 0 };
    let foca = Foca::new(identity, swim_config(&settings), StdRng::from_os_rng(), PostcardCodec);
    let catalog = ClusterCatalog::new(me.node.clone(), me.cluster.clone(), me.incarnation, settings.catalog.clone());
    let (timers, timers_rx) = mpsc::unbounded_channel();
    let (dials_done, dials_rx) = mpsc::unbounded_channel();
    let (leave, leave_rx) = mpsc::channel(1);
    let mut task = ClusterTask {
        fabric: fabric.clone(),
        foca,
        rt: AccumulatingRuntime::new(),
        catalog,
        plugins: local,
        origin: Instant::now(),
        timers,
        dials_done,
        dialing: HashSet::new(),
        reported: BTreeMap::new(),
        imports: BTreeMap::new(),
        relayed: BTreeMap::new(),
        bridged_by: BTreeMap::new(),
        lost: Arc::default(),
        lost_by: BTreeMap::new(),
        losing: Vec::new(),
        reached: Reached::default(),
        policy_changed: false,
        relaying: Vec::new(),
        sharing: Vec::new(),
        bridging: Vec::new(),
        shared_by: BTreeMap::new(),
        seeds: settings.seeds.clone(),
        departed: HashSet::new(),
        members_down: HashSet::new(),
        gossip_dials: std::collections::HashMap::new(),
        max_imports: settings.catalog.max_entries_per_node,
        routes: RouteTable::new(me.cluster.clone(), settings.routes.clone()),
        transit: settings.transit,
        route_epoch: 0,
        offers: BTreeMap::new(),
        signer: settings.signer.clone(),
        trust: settings.trust.clone(),
        changed: false,
    };
    // Ready means callable: local functions are in the view before any peer shows up.
    task.advertise_local();
    task.publish();
    for seed in settings.seeds.iter().filter(|s| **s != fabric.me.addr) {
        tokio::spawn(dial_seed(fabric.clone(), seed.clone(), stop_dialling.clone()));
    }
    tokio::spawn(task.run(events, timers_rx, dials_rx, leave_rx, (settings.beat_interval, settings.announce_interval)));
    leave
}

/// SWIM timing from the one knob operators set. A dead member is first
/// probed within about a probe period, suspected after the probe round trip
/// and indirect probes, and declared down after the suspicion timeout.
fn swim_config(settings: &ClusterSettings) -> foca::Config {
    let f = settings.failure_timeout;
    let members = NonZeroU32::new(u32::try_from(settings.catalog.max_members.clamp(2, 64)).unwrap_or(64))
        .unwrap_or(NonZeroU32::MIN);
    let mut config = foca::Config::new_lan(members);
    config.probe_period = f / 5;
    config.probe_rtt = f / 10;
    config.suspect_to_down_after = f / 3;
    config.max_packet_size = std::num::NonZeroUsize::new(16 * 1024).unwrap_or(config.max_packet_size);
    config
}

impl ClusterTask {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut timers: mpsc::UnboundedReceiver<Timer<Member>>,
        mut dials: mpsc::UnboundedReceiver<String>,
        mut leave: mpsc::Receiver<LeaveRequest>,
        (beat_interval, announce_interval): (Duration, Duration),
    ) {
        let mut beat = tokio::time::interval(beat_interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut announce = tokio::time::interval(announce_interval);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(event) = events.recv() => self.on_event(event),
                Some(timer) = timers.recv() => {
                    if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                        tracing::debug!(error = %e, "swim timer");
                    }
                }
                Some(addr) = dials.recv() => { self.dialing.remove(&addr); }
                _ = beat.tick() => self.on_beat(),
                _ = announce.tick() => {
                    // Measure each bridge link; routes learnt over it carry the result.
                    for link in self.fabric.links().iter().filter(|l| l.remote.cluster != self.fabric.me.cluster) {
                        if let Some((latency, reliability)) = link.measured() {
                            self.routes.set_link(link.node(), latency, reliability);
                        }
                        link.probe();
                    }
                    let changed = self.routes.expire(self.now());
                    self.routes_changed(&changed);
                    self.announce_routes();
                    // Keeps the published table's expiry times current.
                    self.changed = true;
                }
                Some(LeaveRequest(done)) = leave.recv() => {
                    self.leave();
                    let _ = done.send(());
                    return;
                }
                else => return,
            }
            self.drain_swim();
            if std::mem::take(&mut self.changed) {
                self.publish();
            }
        }
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn on_event(&mut self, event: Event) {
        // A link that is up (and still up: the far side may refuse right
        // after our welcome) ends the refusal alert for its address.
        if let Event::LinkUp(link) = &event
            && !link.is_closed()
        {
            self.fabric.alerts.resolve(AlertKind::LinkRefused, &link.remote.addr);
        }
        match event {
            Event::LinkUp(link) if link.remote.cluster != self.fabric.me.cluster => {
                let routes = self.routes.exports(self.now(), &link.remote.cluster, self.transit);
                let epoch = self.next_epoch();
                link.send(self.routes_msg(&link.remote.cluster, epoch, routes));
                let offer = self.offer(&link);
                self.offers.insert(link.node().clone(), offer.clone());
                link.send(PeerMsg::Foreign { entries: offer });
            }
            Event::LinkUp(link) => {
                // In parts, each well inside the link's frame limit.
                for snapshot in self.catalog.snapshot().split(self.fabric.max_frame / 2) {
                    link.send(PeerMsg::Snapshot { snapshot });
                }
                link.send(self.relay_msg());
                let r = &link.remote;
                let guess =
                    Member { node: r.node.clone(), addr: r.addr.clone(), incarnation: r.incarnation, renewal: 0 };
                if let Err(e) = self.foca.announce(guess, &mut self.rt) {
                    tracing::debug!(error = %e, "swim announce");
                }
                self.changed = true;
            }
            Event::LinkDown(link) => {
                tracing::info!(peer = %link.node(), "peer link down");
                if self.fabric.link(link.node()).is_none() {
                    self.imports.remove(link.node());
                    self.relayed.remove(link.node());
                    self.bridged_by.remove(link.node());
                    // What the member told it lost went with it too.
                    if let Some(losses) = self.lost_by.remove(link.node()) {
                        Arc::make_mut(&mut self.lost).adopt(losses, link.node());
                    }
                    // Out of the links, it needs no marking as down.
                    self.members_down.remove(link.node());
                    self.offers.remove(link.node());
                    self.shared_by.remove(link.node());
                    if self.routes.forget_member(link.node()) {
                        self.announce_routes();
                    }
                    let changed = self.routes.drop_neighbour(self.now(), link.node());
                    self.routes.forget_link(link.node());
                    if !self.trust.checks(&link.remote.cluster) {
                        self.routes.forget_epoch(&link.remote.cluster, link.node());
                    }
                    self.routes_changed(&changed);
                }
                self.changed = true;
            }
            Event::PolicyChanged => {
                // Closed links drop their imports when they go down; the
                // others are offered what the new rules allow.
                self.offers.clear();
                let members: Vec<NodeId> = self.shared_by.keys().cloned().collect();
                for member in &members {
                    self.admit_member_routes(member);
                }
                let policy = self.fabric.policy();
                let me = self.fabric.me.cluster.clone();
                let changed = self.routes.refuse(self.now(), |c| *c == me || policy.peer(c, None).allowed);
                self.routes_changed(&changed);
                self.announce_routes();
                self.advertise_local();
                self.changed = true;
                self.policy_changed = true;
                // What the policy no longer admits is its decision now, not an outage.
                Arc::make_mut(&mut self.lost).retain(|cluster, gone| {
                    *cluster == me
                        || gone.members
                        || (policy.peer(cluster, None).allowed
                            && gone.nodes.iter().any(|n| policy.peer(cluster, Some(n)).allowed))
                });
                for addr in self.fabric.readmitted() {
                    self.dial(addr);
                }
            }
            Event::LocalCatalog(entries) => {
                self.plugins = entries;
                self.advertise_local();
            }
            // The message's budget goes back to its link once handled.
            Event::Peer(link, msg, _queued) => self.on_message(&link, *msg),
            Event::RefusedByPolicy => self.changed = true,
        }
    }

    fn on_message(&mut self, link: &Arc<Link>, msg: PeerMsg) {
        let now = self.now();
        match msg {
            // Membership is per cluster: SWIM and goodbyes only from members.
            // A bridge peer's goodbye only stops new calls over its link
            // (`Link::is_leaving`).
            PeerMsg::Bye if link.remote.cluster != self.fabric.me.cluster => {
                tracing::info!(peer = %link.node(), cluster = %link.remote.cluster, "bridge peer is leaving");
            }
            PeerMsg::Swim { .. } if link.remote.cluster != self.fabric.me.cluster => {
                tracing::debug!(peer = %link.node(), "membership message from another cluster ignored");
            }
            PeerMsg::Swim { data } => match B64.decode(data.as_bytes()) {
                Ok(bytes) => {
                    if let Err(e) = self.foca.handle_data(&bytes, &mut self.rt) {
                        tracing::debug!(peer = %link.node(), error = %e, "swim packet ignored");
                    }
                }
                Err(e) => tracing::debug!(peer = %link.node(), error = %e, "swim packet not base64"),
            },
            PeerMsg::Catalog { delta } => self.apply(link, now, delta),
            PeerMsg::Snapshot { snapshot } => {
                for delta in snapshot.deltas {
                    self.apply(link, now, delta);
                }
            }
            PeerMsg::Foreign { entries } => self.import(link, entries),
            PeerMsg::Routes { epoch, routes, sig } if link.remote.cluster != self.fabric.me.cluster => {
                let env = crate::signing::Envelope {
                    from: &link.remote.cluster,
                    node: link.node(),
                    to: &self.fabric.me.cluster,
                    epoch,
                };
                if let Err(e) = self.trust.verify(&env, &routes, sig.as_ref(), crate::unix_ms()) {
                    self.fabric.metrics.route_signature_failure(e.kind());
                    let destinations = routes.iter().map(|r| r.destination.clone()).collect();
                    self.fabric
                        .routes_refused(link.node(), Some(RefusedRoutes { destinations, reason: e.to_string() }));
                    self.fabric.alert(
                        AlertKind::RouteSignature,
                        link.node().as_str(),
                        &format!("from node {}: {e}", link.node()),
                    );
                    return;
                }
                self.fabric.routes_refused(link.node(), None);
                let policy = self.fabric.policy();
                let admit = |c: &ClusterId| {
                    let v = policy.peer(c, None);
                    if v.allowed { Ok(()) } else { Err(format!("{} (rule {})", v.reason, v.rule.as_str())) }
                };
                match self.routes.update(now, link.node(), &link.remote.cluster, epoch, routes, admit) {
                    Ok(update) => {
                        for d in &update.dropped {
                            tracing::debug!(peer = %link.node(), destination = %d.destination, reason = %d.reason, "route not imported");
                        }
                        self.fabric.metrics.routes_dropped.inc_by(update.dropped.len() as u64);
                        self.routes_changed(&update.changed);
                        // What the neighbour announced decides whose calls
                        // it may carry here, imported or not.
                        self.changed = true;
                    }
                    Err(e) => {
                        self.fabric.metrics.routes_dropped.inc();
                        if matches!(e, weft_fabric::RouteError::StaleEpoch { .. }) {
                            self.fabric.metrics.route_signature_failure("stale-epoch");
                            self.fabric.alert(
                                AlertKind::RouteSignature,
                                link.node().as_str(),
                                &format!("from node {}: {e}", link.node()),
                            );
                        }
                        tracing::warn!(peer = %link.node(), error = %e, "route update refused");
                    }
                }
            }
            PeerMsg::Relay { mut entries, routes, mut bridges, lost }
                if link.remote.cluster == self.fabric.me.cluster =>
            {
                self.lost_by.insert(link.node().clone(), self.told_lost(lost));
                entries.retain(|e| e.cluster != self.fabric.me.cluster);
                entries.truncate(self.max_imports);
                self.relayed.insert(link.node().clone(), entries);
                bridges.retain(|c| *c != self.fabric.me.cluster);
                bridges.truncate(self.max_imports);
                self.bridged_by.insert(link.node().clone(), bridges);
                self.shared_by.insert(link.node().clone(), routes);
                if self.admit_member_routes(link.node()) && self.transit {
                    self.announce_routes();
                }
                self.changed = true;
            }
            // The full advert is for members: other clusters get only what
            // the policy offers them (`foreign`).
            PeerMsg::CatalogPull if link.remote.cluster == self.fabric.me.cluster => {
                link.send(PeerMsg::Catalog { delta: self.catalog.local_advert() });
            }
            PeerMsg::Beat { incarnation, version, mut links, known }
                if link.remote.cluster == self.fabric.me.cluster =>
            {
                if self.catalog.refresh(now, link.node(), incarnation, version) == Refresh::Missing {
                    link.send(PeerMsg::CatalogPull);
                }
                // Only links to nodes this node knows as members are shown
                // (`/v1/topology`), so one member's claims cannot make the
                // view, and each publish of it, as large as it likes.
                let members: HashSet<&NodeId> = self.foca.iter_members().map(|m| &m.id().node).collect();
                links.retain(|n| members.contains(n) || *n == self.fabric.me.node);
                links.sort();
                links.dedup();
                if self.reported.get(link.node()) != Some(&links) {
                    self.reported.insert(link.node().clone(), links);
                    self.changed = true;
                }
                self.dial_known(known);
            }
            PeerMsg::Bye => {
                tracing::info!(peer = %link.node(), "peer left the cluster");
                self.departed.insert(link.node().clone());
                self.members_down.insert(link.node().clone());
                let down: Vec<Member> =
                    self.foca.iter_members().map(|m| m.id().clone()).filter(|m| m.node == *link.node()).collect();
                let updates = down.into_iter().map(|m| foca::Member::new(m, 0, State::Down));
                if let Err(e) = self.foca.apply_many(updates, true, &mut self.rt) {
                    tracing::debug!(error = %e, "swim leave");
                }
                self.withdraw(link.node(), link.remote.incarnation);
            }
            // Handshakes are done by then; calls and replies never reach this task.
            other => tracing::debug!(peer = %link.node(), kind = other.kind(), "unexpected peer message"),
        }
    }

    /// Takes a member's shared routes into the table as far as this node's
    /// policy admits every cluster on their paths; says whether that changed.
    fn admit_member_routes(&mut self, member: &NodeId) -> bool {
        let policy = self.fabric.policy();
        let me = &self.fabric.me.cluster;
        let admitted: Vec<weft_fabric::Announcement> = self
            .shared_by
            .get(member)
            .into_iter()
            .flatten()
            .filter(|a| a.path.iter().all(|c| c == me || policy.peer(c, None).allowed))
            .cloned()
            .collect();
        self.routes.set_member_routes(member, admitted)
    }

    /// This cluster's entries that the policy offers to the link's cluster.
    fn offer(&self, link: &Link) -> Vec<CatalogEntry> {
        let policy = self.fabric.policy();
        let to = &link.remote.cluster;
        // Own entries go with the clusters that may call them, so that a
        // cluster passing them on offers them only there, and with the
        // receiver's own tenants that may (`callers`; this cluster's are its
        // own business). A tenant's name crosses one authenticated link
        // only: `TENANT@C` opens an entry to C over a bridge straight to C.
        let audience = policy.audience();
        let tenants = self.fabric.links_authenticated();
        let provable = self.fabric.provable_origins();
        let mut offer: Vec<CatalogEntry> = self
            .own_entries()
            .into_iter()
            .filter_map(|e| {
                let origins = Audience::origins(&e.callers, |c| tenants && c == to.as_str());
                (policy.exports(&e, to) && self.toward_origins(&policy, &provable, &origins, link)).then(|| {
                    CatalogEntry {
                        audience: e.audience.narrowed(&audience),
                        origins,
                        callers: e.callers.seen_from(to.as_str()),
                        tenant: None,
                        ..e
                    }
                })
            })
            .collect();
        if self.transit && policy.peer(to, Some(link.node())).allowed {
            // Functions of the clusters the routes announced to the receiver
            // lead to, reached over this node's bridges or a linked member's,
            // where the way there announces the receiver back (else the
            // cluster beyond would refuse its calls).
            let now = self.now();
            let carried = self.routes.carried_back(now, to);
            let leads: Vec<ClusterId> = self
                .routes
                .exports(now, to, true)
                .into_iter()
                .map(|a| a.destination)
                .filter(|d| carried.contains(d))
                .collect();
            let members = self.relayed.iter().filter(|(node, _)| self.fabric.link(node).is_some());
            for e in self.relaying.iter().chain(members.flat_map(|(_, entries)| entries)) {
                let admitted = policy.peer(&e.cluster, None).allowed;
                let wanted = e.audience.admits(to) && self.toward_origins(&policy, &provable, &e.origins, link);
                if admitted && wanted && leads.contains(&e.cluster) && !entries_has(&offer, e) {
                    // Callers this cluster would not carry further are not
                    // offered it either. Its `callers` were this cluster's
                    // own tenants: the receiver's are none of them.
                    let audience = e.audience.narrowed(&audience);
                    offer.push(CatalogEntry { audience, callers: Callers::default(), ..e.clone() });
                }
            }
        }
        offer
    }

    /// Whether the link's cluster is one of an entry's `origins`, or leads
    /// to one whose calls this cluster takes through it (as
    /// `peer::link::vouched` does): because it trusts the link's cluster
    /// with them (`Policy::vouches`), or because they prove their origin
    /// with a key it trusts (`provable`). The link's cluster then gets the
    /// entry only to carry those calls.
    fn toward_origins(&self, policy: &Policy, provable: &[ClusterId], origins: &Audience, link: &Link) -> bool {
        let to = &link.remote.cluster;
        if origins.admits(to) {
            return true;
        }
        let leads = |o: &ClusterId| self.routes.leads_through(link.node(), o);
        let trusted = policy.vouches(to, origins)
            && match origins {
                Audience::Only(set) => set.iter().any(leads),
                _ => true,
            };
        trusted || provable.iter().any(|o| origins.admits(o) && leads(o))
    }

    fn next_epoch(&mut self) -> u64 {
        self.route_epoch = crate::unix_ms().max(self.route_epoch + 1);
        self.route_epoch
    }

    /// A route update for a neighbour in cluster `to`, signed when this
    /// cluster has a key.
    fn routes_msg(&self, to: &ClusterId, epoch: u64, routes: Vec<weft_fabric::Announcement>) -> PeerMsg {
        let me = &self.fabric.me;
        let env = crate::signing::Envelope { from: &me.cluster, node: &me.node, to, epoch };
        let sig = self.signer.as_ref().map(|k| crate::signing::sign(k, &env, &routes));
        PeerMsg::Routes { epoch, routes, sig }
    }

    /// Sends every bridge peer this cluster's routes (periodic, or triggered
    /// by a change).
    fn announce_routes(&mut self) {
        let now = self.now();
        let epoch = self.next_epoch();
        for link in self.fabric.links().iter().filter(|l| l.remote.cluster != self.fabric.me.cluster) {
            let routes = self.routes.exports(now, &link.remote.cluster, self.transit);
            link.send(self.routes_msg(&link.remote.cluster, epoch, routes));
        }
    }

    /// Best routes changed: tell the neighbours at once, re-filter imports,
    /// raise or clear unreachable alerts.
    fn routes_changed(&mut self, changed: &[ClusterId]) {
        let now = self.now();
        if self.fabric.links_closing.is_cancelled() {
            // This node is stopping: its links going down is no news.
            return;
        }
        for (destination, via) in self.routes.take_new_holds() {
            let message = format!("route to {destination} via {via} flaps and is held down");
            self.fabric.alert(AlertKind::RouteFlapping, &format!("{destination} via {via}"), &message);
        }
        // A route back while held down changes no winner, but its cluster is
        // reachable again: this node's own calls take it.
        for r in self.routes.all().iter().filter(|r| r.held(now)) {
            self.fabric.alerts.resolve(AlertKind::ClusterUnreachable, r.destination.as_str());
        }
        if changed.is_empty() {
            return;
        }
        for dest in changed {
            match self.routes.way(now, dest) {
                Some(r) => {
                    self.fabric.alerts.resolve(AlertKind::ClusterUnreachable, dest.as_str());
                    tracing::info!(cluster = %dest, via = %r.via, hops = r.hops, held_down = r.held(now), "route to cluster");
                }
                None => self.fabric.alert(
                    AlertKind::ClusterUnreachable,
                    dest.as_str(),
                    &format!("cluster {dest} is unreachable: every route to it was withdrawn"),
                ),
            }
        }
        self.announce_routes();
        self.changed = true;
    }

    /// Advertises this node's entries to its members, each with the clusters
    /// this node's policy serves it to: the cluster's bridge nodes then
    /// offer abroad only what this node would run.
    fn advertise_local(&mut self) {
        let policy = self.fabric.policy();
        let entries =
            self.plugins.iter().map(|e| CatalogEntry { audience: policy.advertised(e), ..e.clone() }).collect();
        match self.catalog.set_local(entries) {
            Ok(Some(delta)) => {
                self.broadcast(&PeerMsg::Catalog { delta });
                self.changed = true;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "this node's catalog advert is refused; its peers keep the one before, if any")
            }
        }
    }

    /// Functions of this cluster reachable now: this node's and linked members'.
    fn own_entries(&self) -> Vec<CatalogEntry> {
        let mut entries = self.catalog.entries();
        entries.retain(|e| e.node == self.fabric.me.node || self.fabric.link(&e.node).is_some());
        entries
    }

    /// Takes a bridge peer's offer, as far as this node's policy imports it.
    fn import(&mut self, link: &Link, mut entries: Vec<CatalogEntry>) {
        let cluster = &link.remote.cluster;
        if *cluster == self.fabric.me.cluster {
            return;
        }
        let verdict = self.fabric.decide(Point::Import, self.fabric.policy().peer(cluster, Some(link.node())));
        // Kept whole; `publish` takes what the routes say this neighbour leads to.
        let me = &self.fabric.me.cluster;
        entries.retain(|e| e.cluster != *me && e.audience.admits(me));
        if !verdict.allowed {
            entries.clear();
        }
        entries.truncate(self.max_imports);
        self.imports.insert(link.node().clone(), entries);
        self.changed = true;
    }

    fn apply(&mut self, link: &Link, now: Millis, delta: CatalogDelta) {
        // Members' adverts come only from members.
        if link.remote.cluster != self.fabric.me.cluster {
            return;
        }
        if let CatalogDelta::Advert(a) = &delta
            && a.cluster != self.fabric.me.cluster
        {
            return;
        }
        // Another member's word that a node is gone (its view may be stale:
        // a process that was paused, a cut between those two alone) does not
        // take away the functions of a node this one has a live link to;
        // that node's own withdrawal, or this node's SWIM verdict, does.
        if let CatalogDelta::Withdraw { node, .. } = &delta
            && node != link.node()
            && self.fabric.link(node).is_some()
        {
            return;
        }
        match self.catalog.apply(now, delta) {
            Ok(Applied::Accepted) => self.changed = true,
            Ok(Applied::Refuted) => {
                // A peer thinks we are gone: our advert outranks its news now.
                let advert = self.catalog.local_advert();
                self.broadcast(&PeerMsg::Catalog { delta: advert });
            }
            Ok(Applied::Duplicate | Applied::Stale) => {}
            Err(e) => {
                self.fabric.metrics.catalog_refused.inc();
                if self.fabric.may_log_peer_trouble() {
                    tracing::warn!(peer = %link.node(), error = %e, "catalog delta refused");
                }
            }
        }
    }

    fn on_beat(&mut self) {
        let now = self.now();
        let advert = self.catalog.local_advert();
        let CatalogDelta::Advert(advert) = advert else {
            return;
        };
        let all = self.fabric.links();
        let links: Vec<NodeId> = all.iter().map(|l| l.node().clone()).collect();
        let mut known: Vec<String> = self.seeds.clone();
        known.extend(all.iter().filter(|l| l.remote.cluster != self.fabric.me.cluster).map(|l| l.remote.addr.clone()));
        known.sort();
        known.dedup();
        self.broadcast(&PeerMsg::Beat { incarnation: advert.incarnation, version: advert.version, links, known });
        if !self.catalog.expire(now).is_empty() {
            self.changed = true;
        }
        // Members SWIM knows but no link reaches yet (we may have missed
        // their dial): try again.
        let unlinked: Vec<Member> =
            self.foca.iter_members().map(|m| m.id().clone()).filter(|m| self.fabric.link(&m.node).is_none()).collect();
        for member in unlinked {
            self.dial(member.addr);
        }
    }

    /// Dials addresses members know and this node has no link to: a node
    /// that learns of another cluster's node by gossip meets it through the
    /// same handshake and policy as one that was configured with it. The
    /// member's word is all there is, so a beat is read as far as
    /// `MAX_KNOWN` addresses, at most `MAX_GOSSIP_DIALS` addresses are
    /// dialled per `AGAIN` and at most `MAX_DIALING` dials run at once: a
    /// member cannot turn this node into a dialler of every address it names.
    fn dial_known(&mut self, known: Vec<String>) {
        const AGAIN: Duration = Duration::from_secs(10);
        const MAX_KNOWN: usize = 64;
        const MAX_GOSSIP_DIALS: usize = 256;
        const MAX_DIALING: usize = 64;
        for addr in known.into_iter().take(MAX_KNOWN) {
            let linked = self.fabric.links().iter().any(|l| l.remote.addr == addr);
            let recent = self.gossip_dials.get(&addr).is_some_and(|t| t.elapsed() < AGAIN);
            if linked
                || recent
                || addr == self.fabric.me.addr
                || !crate::peer::is_peer_addr(&addr)
                || self.fabric.refused_lately(&addr, POLICY_BACKOFF)
            {
                continue;
            }
            if self.gossip_dials.len() >= MAX_GOSSIP_DIALS {
                self.gossip_dials.retain(|_, t| t.elapsed() < AGAIN);
            }
            if self.gossip_dials.len() >= MAX_GOSSIP_DIALS || self.dialing.len() >= MAX_DIALING {
                return;
            }
            self.gossip_dials.insert(addr.clone(), Instant::now());
            self.dial(addr);
        }
    }

    fn withdraw(&mut self, node: &NodeId, incarnation: u64) {
        // A newer process with the same id keeps its entries.
        if self.catalog.advert(node).is_some_and(|a| a.incarnation > incarnation) {
            return;
        }
        if let Some(delta) = self.catalog.withdraw(self.now(), node) {
            self.broadcast(&PeerMsg::Catalog { delta });
            self.changed = true;
        }
        self.reported.remove(node);
    }

    /// Sends foca's packets, schedules its timers and acts on its news.
    fn drain_swim(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            match self.fabric.link(&to.node) {
                Some(link) => {
                    link.send(PeerMsg::Swim { data: B64.encode(&data) });
                }
                None => self.dial(to.addr.clone()),
            }
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            let timers = self.timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer);
            });
        }
        while let Some(notification) = self.rt.to_notify() {
            match notification {
                OwnedNotification::MemberUp(m) => {
                    tracing::info!(member = %m.node, "member up");
                    if m.addr == self.fabric.me.addr && m.node != self.fabric.me.node {
                        // Its address leads here, so no member can link to it.
                        tracing::warn!(member = %m.node, addr = %m.addr, "a member advertises this node's own address; it is unreachable until it advertises its own (node.advertise)");
                    }
                    self.fabric.alerts.resolve(AlertKind::MemberDown, m.node.as_str());
                    self.members_down.remove(&m.node);
                    if self.fabric.link(&m.node).is_none() {
                        self.dial(m.addr.clone());
                    }
                    self.changed = true;
                }
                OwnedNotification::MemberDown(m) => {
                    self.withdraw(&m.node, m.incarnation);
                    // A goodbye is not a failure: no alert, and the link stays
                    // open while the member drains, so that the answers to
                    // its calls in flight still reach it.
                    if !self.departed.remove(&m.node) {
                        let message = format!("member {} ({}) stopped answering and was declared down", m.node, m.addr);
                        self.members_down.insert(m.node.clone());
                        self.fabric.alert(AlertKind::MemberDown, m.node.as_str(), &message);
                        // A member declared down may be hung rather than
                        // gone, with its link still open and calls waiting
                        // on it until their deadlines: closing it fails them now.
                        if let Some(link) = self.fabric.link(&m.node) {
                            link.close();
                        }
                    }
                    self.changed = true;
                }
                OwnedNotification::Rejoin(m) => {
                    tracing::warn!(renewal = m.renewal, "declared down by the cluster; rejoined")
                }
                other => tracing::debug!(notification = ?other, "swim"),
            }
        }
    }

    fn dial(&mut self, addr: String) {
        if addr == self.fabric.me.addr || !self.dialing.insert(addr.clone()) {
            return;
        }
        let (fabric, done) = (self.fabric.clone(), self.dials_done.clone());
        tokio::spawn(async move {
            if let Err(e) = fabric.dial(&addr).await {
                tracing::debug!(error = %e, "dial of a discovered member failed");
            }
            let _ = done.send(addr);
        });
    }

    /// What this node relays to its members (sent whole, replacing the last).
    fn relay_msg(&self) -> PeerMsg {
        let now = crate::unix_ms();
        let lost = self
            .losing
            .iter()
            .map(|loss| LossMsg {
                cluster: loss.cluster.clone(),
                nodes: loss.gone.nodes.clone(),
                ago_ms: now.saturating_sub(loss.gone.at),
                way: loss.way,
                entries: loss.entries.clone(),
            })
            .collect();
        PeerMsg::Relay {
            entries: self.relaying.clone(),
            routes: self.sharing.clone(),
            bridges: self.bridging.clone(),
            lost,
        }
    }

    /// What a member told this node it lost, of other clusters, on this
    /// node's clock, cut to `max_imports` entries.
    fn told_lost(&self, told: Vec<LossMsg>) -> Vec<weft_fabric::Loss> {
        let now = crate::unix_ms();
        let mut room = self.max_imports;
        let mut losses = Vec::new();
        for mut loss in told.into_iter().filter(|l| l.cluster != self.fabric.me.cluster).take(self.max_imports) {
            loss.entries.retain(|e| e.cluster == loss.cluster);
            loss.entries.truncate(room);
            room -= loss.entries.len();
            let gone = weft_fabric::Gone { nodes: loss.nodes, at: now.saturating_sub(loss.ago_ms), members: false };
            losses.push(weft_fabric::Loss { cluster: loss.cluster, gone, way: loss.way, entries: loss.entries });
        }
        losses
    }

    fn broadcast(&self, msg: &PeerMsg) {
        for link in self.fabric.links().iter().filter(|l| l.remote.cluster == self.fabric.me.cluster) {
            link.send(msg.clone());
        }
    }

    fn publish(&mut self) {
        let members = self
            .foca
            .iter_members()
            .map(|m| MemberView {
                node: m.id().node.clone(),
                addr: m.id().addr.clone(),
                incarnation: m.id().incarnation,
                state: if m.state() == State::Suspect { "suspect" } else { "alive" },
            })
            .collect();
        let me = &self.fabric.me.node;
        let mut links: Vec<(NodeId, NodeId)> = self.fabric.links().iter().map(|l| pair(me, l.node())).collect();
        for (node, peers) in &self.reported {
            links.extend(peers.iter().map(|p| pair(node, p)));
        }
        links.sort();
        links.dedup();
        // Published entries are those this node can call now: its own,
        // linked members' and those offered over live bridges. A node whose
        // link dropped is skipped at once (calls fail over to replicas) while
        // its advert waits for SWIM's verdict.
        let own = self.own_entries();
        let mut entries = own;
        let mut direct: Vec<CatalogEntry> = Vec::new();
        let now = self.now();
        let policy = self.fabric.policy();
        let me = &self.fabric.me.cluster;
        let mut carriers: BTreeMap<(ClusterId, FunctionId), Vec<NodeId>> = BTreeMap::new();
        for (node, imported) in &self.imports {
            let Some(link) = self.fabric.link(node) else {
                continue;
            };
            // The neighbour's own functions, and those of clusters whose way
            // (best route, or route held down) goes through this neighbour;
            // and a function open to named clusters, this one among them,
            // from whichever neighbour offered it and announced a route to
            // its cluster: the clusters on the best route may not be trusted
            // to carry its calls, so they go the way it came (`carriers`).
            let leads = |e: &CatalogEntry| {
                e.cluster == link.remote.cluster || self.routes.way(now, &e.cluster).is_some_and(|r| r.via == *node)
            };
            let carried = |e: &CatalogEntry| {
                e.cluster != link.remote.cluster
                    && !e.origins.is_everyone()
                    && self.routes.leads_through(node, &e.cluster)
            };
            for e in imported.iter().filter(|e| policy.peer(&e.cluster, None).allowed) {
                if carried(e) && e.listed_in(me) {
                    let via = carriers.entry((e.cluster.clone(), e.function.clone())).or_default();
                    if !via.contains(node) {
                        via.push(node.clone());
                    }
                } else if !leads(e) {
                    continue;
                }
                if !entries_has(&direct, e) {
                    direct.push(e.clone());
                }
            }
        }
        let shared = if self.transit { self.routes.shared(now) } else { Vec::new() };
        let mut bridging: Vec<ClusterId> =
            self.fabric.links().iter().map(|l| l.remote.cluster.clone()).filter(|c| c != me).collect();
        bridging.sort();
        bridging.dedup();
        let relay_changed = direct != self.relaying || shared != self.sharing || bridging != self.bridging;
        if relay_changed {
            self.relaying = direct.clone();
            self.sharing = shared;
            self.bridging = bridging;
        }
        entries.extend(direct);
        // Members' bridges, as far as this node's own policy admits the cluster.
        let mut relays: BTreeMap<ClusterId, Vec<NodeId>> = BTreeMap::new();
        for (node, offered) in &self.relayed {
            if self.fabric.link(node).is_none() {
                continue;
            }
            for e in offered.iter().filter(|e| policy.peer(&e.cluster, None).allowed) {
                let via = relays.entry(e.cluster.clone()).or_default();
                if !via.contains(node) {
                    via.push(node.clone());
                }
                if !entries_has(&entries, e) {
                    entries.push(e.clone());
                }
            }
            // A bridge to a cluster that offers nothing is a way there all
            // the same: a call for one of its functions is then told what
            // the bridge node would tell it (nothing of that name offered),
            // not that no bridge leads there.
            let bridged = self.bridged_by.get(node).into_iter().flatten();
            for cluster in bridged.filter(|c| policy.peer(c, None).allowed) {
                let via = relays.entry(cluster.clone()).or_default();
                if !via.contains(node) {
                    via.push(node.clone());
                }
            }
        }
        let next_hops = self.routes.next_hops(now);
        let reached = Reached::new(&self.fabric, &self.members_down, Arc::new(entries), &relays, &next_hops);
        let mut lost = (*self.lost).clone();
        let unix_now = crate::unix_ms();
        let settled = unix_now.saturating_sub(self.fabric.policy_reloaded_at()) > POLICY_SETTLES.as_millis() as u64;
        let outage = !std::mem::take(&mut self.policy_changed) && settled;
        if lost.update(unix_now, self.reached.reach(), reached.reach(), outage) {
            self.lost = Arc::new(lost);
        }
        let losing = self.lost.losses(unix_now, me, |cluster, gone| self.fabric.outage(cluster, gone));
        if relay_changed || losing != self.losing {
            self.losing = losing;
            self.broadcast(&self.relay_msg());
        }
        // What members lost of their ways is lost here too.
        let told = self.lost_by.iter().filter(|(node, _)| self.fabric.link(node).is_some()).flat_map(|(_, l)| l);
        let lost =
            if told.clone().next().is_none() { self.lost.clone() } else { Arc::new(self.lost.with_relayed(told)) };
        self.fabric.publish(ClusterView {
            entries: reached.entries.clone(),
            members,
            links,
            relays,
            next_hops,
            carriers,
            routes: Arc::new(self.routes.clone()),
            clock: self.origin,
            lost,
        });
        self.reached = reached;
        // Offers over bridges follow what this node can reach.
        for link in self.fabric.links().iter().filter(|l| l.remote.cluster != self.fabric.me.cluster) {
            let offer = self.offer(link);
            if self.offers.get(link.node()) != Some(&offer) {
                self.offers.insert(link.node().clone(), offer.clone());
                link.send(PeerMsg::Foreign { entries: offer });
            }
        }
    }

    fn leave(&mut self) {
        // The goodbye first: a member that took the withdrawal first would
        // see this node's functions go while its link stays, and answer
        // for them as if they were unloaded (not found) rather than out of
        // reach while it restarts. Bridge peers too, so that they send no
        // new calls this way.
        for link in self.fabric.links() {
            link.send(PeerMsg::Bye);
        }
        self.broadcast(&PeerMsg::Catalog { delta: self.catalog.leave() });
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::debug!(error = %e, "swim leave");
        }
        while let Some((to, data)) = self.rt.to_send() {
            if let Some(link) = self.fabric.link(&to.node) {
                link.send(PeerMsg::Swim { data: B64.encode(&data) });
            }
        }
    }
}

fn entries_has(entries: &[CatalogEntry], e: &CatalogEntry) -> bool {
    entries.iter().any(|x| x.node == e.node && x.function == e.function && x.version == e.version)
}

fn pair(a: &NodeId, b: &NodeId) -> (NodeId, NodeId) {
    if a <= b { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) }
}

/// How long a seed that refused us (or that we refused) by policy waits
/// before the next attempt; a policy reload on either side may change the answer.
const POLICY_BACKOFF: Duration = Duration::from_secs(30);

/// Keeps a link to one configured seed: dials with backoff while there is
/// none, stops for good if the seed is this node itself. The first failure
/// in a row is a warning (a wrong address or certificate is the operator's
/// to fix); retries after it are debug lines.
async fn dial_seed(fabric: Arc<Fabric>, addr: String, stop: CancellationToken) {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    let mut backoff = FIRST;
    let mut failing = false;
    let mut known: Option<NodeId> = None;
    loop {
        let linked = known.as_ref().is_some_and(|n| fabric.link(n).is_some())
            || fabric.links().iter().any(|l| l.remote.addr == addr);
        let wait = if linked {
            // Perhaps by the seed's own dial: it is linked all the same.
            fabric.seed_dialled(&addr, "linked", None);
            if std::mem::take(&mut failing) {
                tracing::info!(seed = %addr, "seed reachable again");
            }
            backoff = FIRST;
            Duration::from_millis(500)
        } else {
            let dialled = fabric.dial(&addr).await;
            let (state, error) = match &dialled {
                Ok(_) => ("linked", None),
                Err(e) => match e.reject_kind() {
                    None => ("failing", Some(e.to_string())),
                    Some(crate::peer::RejectKind::SelfDial) => ("self", None),
                    // Linked already, by a dial of the other side.
                    Some(crate::peer::RejectKind::DuplicateLink) => ("linked", None),
                    Some(_) => ("refused", Some(e.to_string())),
                },
            };
            fabric.seed_dialled(&addr, state, error);
            match dialled {
                Ok(node) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(seed = %addr, "seed reachable again");
                    }
                    known = Some(node);
                    backoff = FIRST;
                    Duration::from_millis(500)
                }
                Err(e) => match e.reject_kind() {
                    Some(crate::peer::RejectKind::SelfDial) => return,
                    Some(crate::peer::RejectKind::DuplicateLink) => Duration::from_millis(500),
                    // Policy and key answers do not change by asking again
                    // (a reload or restart changes them): no reconnect storm.
                    Some(crate::peer::RejectKind::Policy | crate::peer::RejectKind::Unauthenticated) => POLICY_BACKOFF,
                    _ => {
                        if std::mem::replace(&mut failing, true) {
                            tracing::debug!(error = %e, ?backoff, "seed dial failed");
                        } else {
                            tracing::warn!(error = %e, "seed dial failed; retrying with backoff");
                        }
                        backoff = (backoff * 2).min(MAX);
                        backoff
                    }
                },
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What a node could reach when it published its view: its catalog, the
/// nodes each other cluster is reached through, and the nodes it is linked to.
#[derive(Default)]
struct Reached {
    entries: Arc<Vec<CatalogEntry>>,
    ways: weft_fabric::Ways,
    linked: BTreeSet<NodeId>,
    members: BTreeSet<NodeId>,
}

impl Reached {
    fn new(
        fabric: &Fabric,
        down: &HashSet<NodeId>,
        entries: Arc<Vec<CatalogEntry>>,
        relays: &BTreeMap<ClusterId, Vec<NodeId>>,
        next_hops: &BTreeMap<ClusterId, NodeId>,
    ) -> Reached {
        let me = &fabric.me;
        let mut ways = weft_fabric::Ways::new();
        let mut linked = BTreeSet::from([me.node.clone()]);
        let mut members = linked.clone();
        // Members down whose links are still open (a node of another
        // cluster may have the same id).
        let down = |l: &Link| l.remote.cluster == me.cluster && down.contains(l.node());
        for link in fabric.links().iter().filter(|l| !down(l)) {
            linked.insert(link.node().clone());
            if link.remote.cluster == me.cluster {
                members.insert(link.node().clone());
            } else {
                ways.entry(link.remote.cluster.clone()).or_default().insert(link.node().clone());
            }
        }
        for (cluster, via) in relays {
            ways.entry(cluster.clone()).or_default().extend(via.iter().cloned());
        }
        for (cluster, node) in next_hops {
            ways.entry(cluster.clone()).or_default().insert(node.clone());
        }
        Reached { entries, ways, linked, members }
    }

    fn reach(&self) -> weft_fabric::Reach<'_> {
        weft_fabric::Reach { entries: &self.entries, ways: &self.ways, linked: &self.linked, members: &self.members }
    }
}

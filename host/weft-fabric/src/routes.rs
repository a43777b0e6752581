//! Path-vector routes between clusters: what each bridge neighbour
//! announces, which route wins, and what this cluster announces onwards.
//!
//! Owns announcements, import checks (loops, hop limit, the path's clusters
//! through the federation policy, stale epochs, the per-neighbour bound),
//! deterministic selection with an explanation, expiry, and hold-down of
//! flapping routes. It must not know how announcements travel or when they
//! are sent: the node calls it with what arrived and asks what to send. Time
//! is a value passed in.
//!
//! A neighbour sends its whole export set each time (periodically and when
//! its best routes change); a destination missing from a newer set is
//! withdrawn. Selection: fewest hops, then lowest latency (in whole
//! milliseconds), then highest reliability, then the smallest advertiser
//! (neighbour node) id.
//!
//! Members of this cluster share their own best routes (`shared`,
//! `set_member_routes`), so that a node carrying transit also exports
//! routes that leave the cluster over another member's bridge.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_proto::{ClusterId, NodeId};

use crate::cluster_catalog::Millis;

/// Latencies within the same millisecond rank alike.
pub const LATENCY_BUCKET_US: u64 = 1_000;

/// One route as announced: `path` runs from the announcing cluster (first)
/// to the destination (last).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub destination: ClusterId,
    pub path: Vec<ClusterId>,
    /// Cluster crossings from the announcer to the destination.
    pub hops: u32,
    pub latency_us: u64,
    /// Delivery ratio in thousandths (1000: never lost).
    pub reliability: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    /// How long the announcer wants the route kept without a refresh; the
    /// receiver keeps it for the shorter of this and its own `route_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// Tags one route may carry, and the bytes of each.
pub const MAX_TAGS: usize = 16;
pub const MAX_TAG_BYTES: usize = 128;

/// Bounds and timers; defaults are the spec's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    pub max_hops: u32,
    pub route_ttl: Duration,
    /// Tags this cluster puts on the route to itself.
    pub tags: Vec<String>,
    /// Import and export rules for one neighbouring cluster.
    pub neighbours: BTreeMap<ClusterId, NeighbourRules>,
    pub max_routes_per_neighbour: usize,
    /// Withdrawals of one route within `flap_window` that trigger hold-down.
    pub flap_threshold: u32,
    pub flap_window: Duration,
    pub hold_down: Duration,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            max_hops: 8,
            route_ttl: Duration::from_secs(10),
            tags: Vec::new(),
            neighbours: BTreeMap::new(),
            max_routes_per_neighbour: 1_000,
            flap_threshold: 3,
            flap_window: Duration::from_secs(30),
            hold_down: Duration::from_secs(30),
        }
    }
}

/// Rules for the routes exchanged with one neighbouring cluster, on top of
/// the global ones (hop limit, federation policy, transit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeighbourRules {
    /// A lower hop limit for routes learnt from this neighbour.
    pub max_hops: Option<u32>,
    /// Routes from this neighbour through any of these clusters are refused.
    pub deny_on_path: Vec<ClusterId>,
    /// Routes from this neighbour must carry every one of these tags.
    pub require_tags: Vec<String>,
    /// Destinations offered to this neighbour besides this cluster itself
    /// (None: every route transit allows).
    pub export: Option<Vec<ClusterId>>,
}

/// A route this node holds: an announcement, the neighbour it came from,
/// and the metrics from here (one more hop).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub destination: ClusterId,
    /// Clusters from the neighbour to the destination.
    pub path: Vec<ClusterId>,
    pub hops: u32,
    pub latency_us: u64,
    pub reliability: u16,
    pub tags: Vec<String>,
    /// The bridge peer (a node of `via_cluster`) that announced it: the next hop.
    pub via: NodeId,
    pub via_cluster: ClusterId,
    pub learned: Millis,
    pub expires: Millis,
    /// Held down for flapping until this time (not eligible).
    pub held_until: Option<Millis>,
}

impl Route {
    /// The selection key: smaller is better. Latency counts in whole
    /// buckets so that jitter between two equal links does not flip the
    /// choice back and forth (and churn announcements).
    fn rank(&self) -> (u32, u64, std::cmp::Reverse<u16>, &NodeId) {
        (self.hops, self.latency_bucket(), std::cmp::Reverse(self.reliability), &self.via)
    }

    fn latency_bucket(&self) -> u64 {
        self.latency_us / LATENCY_BUCKET_US
    }

    /// Held down for flapping at `now`.
    pub fn held(&self, now: Millis) -> bool {
        self.held_until.is_some_and(|t| now < t)
    }
}

/// Why an update was refused as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "route update from {via} has epoch {epoch}, not newer than {seen} already seen (a replay, a reordered message, or the sender's clock set back: epochs are its wall clock in ms)"
    )]
    StaleEpoch { via: NodeId, epoch: u64, seen: u64 },
    #[error("node {via} of cluster {cluster} sent {count} routes, more than the limit of {max} per neighbour")]
    TooMany { via: NodeId, cluster: ClusterId, count: usize, max: usize },
}

/// Why one announcement was not imported (counted, shown by `explain`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub destination: ClusterId,
    pub reason: String,
}

/// What an update changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Destinations whose best route changed (appeared, moved or vanished).
    pub changed: Vec<ClusterId>,
    pub dropped: Vec<Dropped>,
}

/// Why each candidate route to one destination won or lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub destination: ClusterId,
    pub winner: Option<Route>,
    pub losers: Vec<(Route, String)>,
    /// Neighbour nodes whose latest update announced the destination, and
    /// why this node did not take that route.
    pub refused: Vec<(NodeId, String)>,
}

#[derive(Clone, Debug, Default)]
struct Flaps {
    count: u32,
    first: Millis,
}

/// Epochs of neighbour nodes kept once their links are gone. Past this
/// many the lowest goes: a replay of that node's updates is then taken
/// like a first update, which needs this many other node ids heard from
/// since (node ids are stable across restarts, so that takes churn).
const MAX_EPOCHS: usize = 4096;

#[derive(Clone, Debug)]
pub struct RouteTable {
    local: ClusterId,
    config: RouteConfig,
    /// destination -> announcing neighbour node -> route
    routes: BTreeMap<ClusterId, BTreeMap<NodeId, Route>>,
    /// The last epoch taken from each neighbour node, by its cluster and
    /// id, kept after its link is gone (up to `MAX_EPOCHS`) so that a
    /// replay is still refused. Keyed by cluster too: a node of another
    /// cluster taking the same id, with an epoch far ahead signed by its
    /// own key, must not shut the real node out.
    epochs: BTreeMap<(ClusterId, NodeId), u64>,
    /// The destinations in each neighbour node's latest update taken, its
    /// claim to carry traffic there, whether or not this node imported the
    /// routes (its own hop limit and neighbour rules judge its own routing,
    /// not who may call it).
    announced: BTreeMap<NodeId, BTreeSet<ClusterId>>,
    flaps: BTreeMap<(ClusterId, NodeId), Flaps>,
    holds: BTreeMap<(ClusterId, NodeId), Millis>,
    /// Hold-downs begun since `take_new_holds` last ran.
    new_holds: Vec<(ClusterId, NodeId)>,
    /// When `expire` last ran: hold-downs that ended since then change winners.
    checked: Millis,
    /// Measured (one-way latency µs, delivery ‰) of the link to each neighbour.
    links: BTreeMap<NodeId, (u64, u16)>,
    /// Each member's own best routes, as it shares them (paths start here).
    members: BTreeMap<NodeId, Vec<Announcement>>,
    /// What each neighbour node's latest update announced and this node
    /// did not take, with why: a missing route may be why a call fails.
    refused: BTreeMap<NodeId, Vec<Dropped>>,
}

impl RouteTable {
    pub fn new(local: ClusterId, config: RouteConfig) -> Self {
        RouteTable {
            local,
            config,
            routes: BTreeMap::new(),
            epochs: BTreeMap::new(),
            announced: BTreeMap::new(),
            flaps: BTreeMap::new(),
            holds: BTreeMap::new(),
            new_holds: Vec::new(),
            checked: Millis::default(),
            links: BTreeMap::new(),
            members: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &RouteConfig {
        &self.config
    }

    /// Records what the link to neighbour `via` measures; routes learnt from
    /// it from then on add this latency and multiply by this reliability.
    pub fn set_link(&mut self, via: &NodeId, latency_us: u64, reliability: u16) {
        self.links.insert(via.clone(), (latency_us, reliability.min(1000)));
    }

    /// Forgets a neighbour's link measurements (its link is gone). Its last
    /// epoch is kept, so an old update replayed later is still refused.
    pub fn forget_link(&mut self, via: &NodeId) {
        self.links.remove(via);
    }

    /// Takes neighbour `via`'s (of `via_cluster`) whole export set at `epoch`.
    /// `admit` is the federation policy asked about each cluster on a path.
    pub fn update(
        &mut self,
        now: Millis,
        via: &NodeId,
        via_cluster: &ClusterId,
        epoch: u64,
        announcements: Vec<Announcement>,
        admit: impl Fn(&ClusterId) -> Result<(), String>,
    ) -> Result<Update, RouteError> {
        // Strictly newer: every update a node sends has a larger epoch than
        // its last, so an equal one is a copy (a replay of the latest update
        // would otherwise keep alive a route its sender has since withdrawn).
        let sender = (via_cluster.clone(), via.clone());
        if let Some(&seen) = self.epochs.get(&sender)
            && epoch <= seen
        {
            return Err(RouteError::StaleEpoch { via: via.clone(), epoch, seen });
        }
        let max = self.config.max_routes_per_neighbour;
        if announcements.len() > max {
            return Err(RouteError::TooMany {
                via: via.clone(),
                cluster: via_cluster.clone(),
                count: announcements.len(),
                max,
            });
        }
        self.epochs.insert(sender, epoch);
        self.announced.insert(via.clone(), announcements.iter().map(|a| a.destination.clone()).collect());
        self.bound_epochs();
        let (link_latency, link_reliability) = self.links.get(via).copied().unwrap_or((0, 1000));
        let before = self.winners(now);
        let mut update = Update::default();
        let mut fresh: BTreeMap<ClusterId, Route> = BTreeMap::new();
        for a in announcements {
            match self.check(via_cluster, &a, &admit) {
                Ok(()) => {
                    let route = Route {
                        destination: a.destination.clone(),
                        path: a.path,
                        hops: a.hops.saturating_add(1),
                        latency_us: a.latency_us.saturating_add(link_latency),
                        reliability: u16::try_from(
                            u32::from(a.reliability.min(1000)) * u32::from(link_reliability) / 1000,
                        )
                        .unwrap_or(1000),
                        tags: a.tags,
                        via: via.clone(),
                        via_cluster: via_cluster.clone(),
                        learned: now,
                        expires: now
                            .saturating_add(a.ttl_ms.map_or(self.config.route_ttl, |t| {
                                self.config.route_ttl.min(Duration::from_millis(t))
                            })),
                        held_until: self.holds.get(&(a.destination.clone(), via.clone())).copied(),
                    };
                    fresh.insert(a.destination, route);
                }
                Err(reason) => update.dropped.push(Dropped { destination: a.destination, reason }),
            }
        }
        // Destinations this neighbour no longer announces are withdrawn.
        let gone: Vec<ClusterId> = self
            .routes
            .iter()
            .filter(|(dest, by)| by.contains_key(via) && !fresh.contains_key(*dest))
            .map(|(dest, _)| dest.clone())
            .collect();
        for dest in gone {
            self.remove(now, &dest, via);
        }
        for (dest, route) in fresh {
            self.routes.entry(dest).or_default().insert(via.clone(), route);
        }
        if update.dropped.is_empty() {
            self.refused.remove(via);
        } else {
            self.refused.insert(via.clone(), update.dropped.clone());
        }
        update.changed = self.diff(&before, now);
        Ok(update)
    }

    /// Why the routes to `destination` that neighbours announced last were
    /// not taken, by neighbour node.
    pub fn refused_routes(&self, destination: &ClusterId) -> Vec<(NodeId, String)> {
        let of = |(via, dropped): (&NodeId, &Vec<Dropped>)| {
            dropped.iter().find(|d| d.destination == *destination).map(|d| (via.clone(), d.reason.clone()))
        };
        self.refused.iter().filter_map(of).collect()
    }

    fn check(
        &self,
        via_cluster: &ClusterId,
        a: &Announcement,
        admit: &impl Fn(&ClusterId) -> Result<(), String>,
    ) -> Result<(), String> {
        if a.path.first() != Some(via_cluster) {
            return Err(format!("its path does not start at the announcing cluster {via_cluster}"));
        }
        if a.path.last() != Some(&a.destination) {
            return Err("its path does not end at its destination".into());
        }
        // The hop count is the path's, so that no neighbour can make a long
        // route look short (past max_hops, or winning the selection).
        if usize::try_from(a.hops).ok() != Some(a.path.len() - 1) {
            return Err(format!("it claims {} hops, but its path crosses {}", a.hops, a.path.len() - 1));
        }
        if a.path.contains(&self.local) {
            return Err(format!("its path already holds this cluster {} (a loop)", self.local));
        }
        // Tags travel on with the route: unbounded, they would make this
        // node's own updates too large for its neighbours.
        if a.tags.len() > MAX_TAGS || a.tags.iter().any(|t| t.len() > MAX_TAG_BYTES) {
            return Err(format!("it carries more than {MAX_TAGS} tags, or a tag over {MAX_TAG_BYTES} bytes"));
        }
        let mut seen = BTreeSet::new();
        if !a.path.iter().all(|c| seen.insert(c)) {
            return Err("its path holds a cluster twice".into());
        }
        let rules = self.config.neighbours.get(via_cluster);
        let max_hops = rules.and_then(|r| r.max_hops).map_or(self.config.max_hops, |m| m.min(self.config.max_hops));
        if a.hops.saturating_add(1) > max_hops {
            return Err(format!(
                "it is {} hops away, over the hop limit for routes from {via_cluster} ({max_hops})",
                a.hops.saturating_add(1)
            ));
        }
        if let Some(rules) = rules {
            if let Some(c) = a.path.iter().find(|c| rules.deny_on_path.contains(c)) {
                return Err(format!(
                    "its path goes through {c}, which routing.neighbours.{via_cluster}.deny_on_path refuses"
                ));
            }
            if let Some(t) = rules.require_tags.iter().find(|t| !a.tags.contains(t)) {
                return Err(format!(
                    "it lacks tag {t:?}, which routing.neighbours.{via_cluster}.require_tags asks for"
                ));
            }
        }
        a.path.iter().try_for_each(|c| admit(c).map_err(|why| format!("cluster {c} on its path is refused: {why}")))
    }

    /// Forgets the last epoch taken from `via`, whose next update may then
    /// have any epoch: for a neighbour whose updates nothing vouches for
    /// (unsigned), once its link is gone, so that one forged update with an
    /// epoch far ahead cannot shut out the real node's updates for good.
    pub fn forget_epoch(&mut self, via_cluster: &ClusterId, via: &NodeId) {
        self.epochs.remove(&(via_cluster.clone(), via.clone()));
    }

    /// Keeps `MAX_EPOCHS` epochs at most, forgetting the lowest of nodes
    /// that are not linked now (linked ones are in `announced`).
    fn bound_epochs(&mut self) {
        while self.epochs.len() > MAX_EPOCHS {
            let gone =
                self.epochs.iter().filter(|((_, node), _)| !self.announced.contains_key(node)).min_by_key(|(_, e)| **e);
            let Some(sender) = gone.map(|(sender, _)| sender.clone()) else {
                return;
            };
            self.epochs.remove(&sender);
        }
    }

    /// A bridge peer is gone: everything it announced is withdrawn.
    pub fn drop_neighbour(&mut self, now: Millis, via: &NodeId) -> Vec<ClusterId> {
        self.announced.remove(via);
        self.refused.remove(via);
        let before = self.winners(now);
        let dests: Vec<ClusterId> =
            self.routes.iter().filter(|(_, by)| by.contains_key(via)).map(|(d, _)| d.clone()).collect();
        for dest in dests {
            self.remove(now, &dest, via);
        }
        self.diff(&before, now)
    }

    /// Withdraws the routes whose path crosses a cluster `admit` now refuses
    /// (a reloaded policy), without waiting for their neighbours' next
    /// update; not counted as flaps.
    pub fn refuse(&mut self, now: Millis, admit: impl Fn(&ClusterId) -> bool) -> Vec<ClusterId> {
        let before = self.winners(now);
        for by in self.routes.values_mut() {
            by.retain(|_, r| r.path.iter().all(&admit));
        }
        self.routes.retain(|_, by| !by.is_empty());
        self.diff(&before, now)
    }

    /// Removes routes not refreshed within `route_ttl`, and ends hold-downs.
    pub fn expire(&mut self, now: Millis) -> Vec<ClusterId> {
        // Winners as they were at the last check, so that a hold-down ending
        // in between shows up as a change.
        let before = self.winners(self.checked);
        self.checked = now;
        let stale: Vec<(ClusterId, NodeId)> = self
            .routes
            .iter()
            .flat_map(|(d, by)| by.iter().filter(|(_, r)| now >= r.expires).map(move |(v, _)| (d.clone(), v.clone())))
            .collect();
        for (dest, via) in stale {
            self.remove(now, &dest, &via);
        }
        self.holds.retain(|_, until| now < *until);
        for by in self.routes.values_mut() {
            for r in by.values_mut() {
                r.held_until = r.held_until.filter(|t| now < *t);
            }
        }
        self.diff(&before, now)
    }

    /// Removes one route and counts the withdrawal as a flap.
    fn remove(&mut self, now: Millis, dest: &ClusterId, via: &NodeId) {
        if let Some(by) = self.routes.get_mut(dest) {
            by.remove(via);
            if by.is_empty() {
                self.routes.remove(dest);
            }
        }
        let key = (dest.clone(), via.clone());
        let flaps = self.flaps.entry(key.clone()).or_default();
        if now.saturating_since(flaps.first) > self.config.flap_window || flaps.count == 0 {
            *flaps = Flaps { count: 0, first: now };
        }
        flaps.count += 1;
        if flaps.count >= self.config.flap_threshold {
            let until = now.saturating_add(self.config.hold_down);
            if self.holds.insert(key.clone(), until).is_none_or(|t| t <= now) {
                self.new_holds.push(key);
            }
        }
        if self.flaps.len() > 4 * self.config.max_routes_per_neighbour {
            let window = self.config.flap_window;
            self.flaps.retain(|_, f| now.saturating_since(f.first) <= window);
        }
    }

    /// The routes (destination, neighbour) held down since the last call:
    /// each hold-down is news once, however often its route comes and goes
    /// while it lasts.
    pub fn take_new_holds(&mut self) -> Vec<(ClusterId, NodeId)> {
        std::mem::take(&mut self.new_holds)
    }

    /// Whether neighbour `via` announced a route to `destination` in its
    /// latest update (imported or not, held down or not): then it carries
    /// traffic between here and there.
    pub fn leads_through(&self, via: &NodeId, destination: &ClusterId) -> bool {
        self.announced.get(via).is_some_and(|d| d.contains(destination))
    }

    /// The best eligible route to `destination`.
    pub fn best(&self, now: Millis, destination: &ClusterId) -> Option<&Route> {
        self.routes.get(destination)?.values().filter(|r| !r.held(now)).min_by(|a, b| a.rank().cmp(&b.rank()))
    }

    /// The route this node's own calls to `destination` take: the best
    /// eligible one, else the best held down for flapping. A hold-down
    /// keeps a flapping route from winning and from being passed on, so
    /// that the churn stops here; it does not cut this node off from a
    /// cluster it has no other way to.
    pub fn way(&self, now: Millis, destination: &ClusterId) -> Option<&Route> {
        self.best(now, destination)
            .or_else(|| self.routes.get(destination)?.values().min_by(|a, b| a.rank().cmp(&b.rank())))
    }

    /// Every destination's best route.
    pub fn winners(&self, now: Millis) -> BTreeMap<ClusterId, Route> {
        self.routes.keys().filter_map(|d| self.best(now, d).map(|r| (d.clone(), r.clone()))).collect()
    }

    /// Every route held, winners and losers.
    pub fn all(&self) -> Vec<Route> {
        self.routes.values().flat_map(|by| by.values().cloned()).collect()
    }

    fn diff(&self, before: &BTreeMap<ClusterId, Route>, now: Millis) -> Vec<ClusterId> {
        let after = self.winners(now);
        let mut changed: Vec<ClusterId> = before
            .keys()
            .chain(after.keys())
            .filter(|d| {
                before.get(*d).map(|r| (&r.via, &r.path, r.hops)) != after.get(*d).map(|r| (&r.via, &r.path, r.hops))
            })
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        changed
    }

    /// Which route to `destination` wins, and why each other one loses.
    pub fn explain(&self, now: Millis, destination: &ClusterId) -> Explanation {
        let winner = self.best(now, destination).cloned();
        let losers = self
            .routes
            .get(destination)
            .map(|by| {
                by.values()
                    .filter(|r| winner.as_ref().is_none_or(|w| w.via != r.via))
                    .map(|r| (r.clone(), Self::why_lost(r, winner.as_ref(), now)))
                    .collect()
            })
            .unwrap_or_default();
        Explanation { destination: destination.clone(), winner, losers, refused: self.refused_routes(destination) }
    }

    fn why_lost(r: &Route, winner: Option<&Route>, now: Millis) -> String {
        if let Some(until) = r.held_until.filter(|_| r.held(now)) {
            return format!("held down for flapping for another {:?}", until.saturating_since(now));
        }
        let Some(w) = winner else {
            return "no winner".into();
        };
        if r.hops != w.hops {
            format!("more hops ({} > {})", r.hops, w.hops)
        } else if r.latency_bucket() != w.latency_bucket() {
            format!("higher latency ({} µs > {} µs)", r.latency_us, w.latency_us)
        } else if r.reliability != w.reliability {
            format!("lower reliability ({}‰ < {}‰)", r.reliability, w.reliability)
        } else {
            format!("same metrics; advertiser {} sorts after {}", r.via, w.via)
        }
    }

    /// This node's best routes as announcements from this cluster, for its
    /// members. Only routes learnt over this node's own bridges: passing
    /// members' routes on would let two members keep feeding each other a
    /// route after the bridge behind it is gone.
    ///
    /// Latency goes in whole buckets (what selection compares), so jitter
    /// of a measured link does not make the node share its set again.
    pub fn shared(&self, now: Millis) -> Vec<Announcement> {
        let bucketed =
            |a: Announcement| Announcement { latency_us: a.latency_us - a.latency_us % LATENCY_BUCKET_US, ..a };
        self.winners(now).into_values().map(|r| bucketed(self.onwards(r, None))).collect()
    }

    /// Takes member `member`'s shared routes (its whole set, replacing the
    /// last); says whether anything changed. Routes that do not start here,
    /// lead here or come back here are left out, as are those over the
    /// per-neighbour bound.
    pub fn set_member_routes(&mut self, member: &NodeId, mut routes: Vec<Announcement>) -> bool {
        routes.retain(|a| {
            a.path.first() == Some(&self.local)
                && a.path.last() == Some(&a.destination)
                && a.path.iter().filter(|c| **c == self.local).count() == 1
                && a.hops < self.config.max_hops
        });
        routes.truncate(self.config.max_routes_per_neighbour);
        if routes.is_empty() {
            return self.forget_member(member);
        }
        if self.members.get(member) == Some(&routes) {
            return false;
        }
        self.members.insert(member.clone(), routes);
        true
    }

    /// A member is gone: its shared routes are no longer offered.
    /// The path of the route to `destination` that `member` shares, as far
    /// as this node's policy admitted it.
    pub fn member_path(&self, member: &NodeId, destination: &ClusterId) -> Option<&[ClusterId]> {
        let shared = self.members.get(member)?;
        shared.iter().find(|a| a.destination == *destination).map(|a| a.path.as_slice())
    }

    pub fn forget_member(&mut self, member: &NodeId) -> bool {
        self.members.remove(member).is_some()
    }

    /// What this cluster announces to a neighbour of cluster `to`: itself,
    /// and with `transit`, for each other destination the best of this
    /// node's and its members' routes that neither lead to `to`'s cluster
    /// nor pass through it (this node's own on a tie).
    pub fn exports(&self, now: Millis, to: &ClusterId, transit: bool) -> Vec<Announcement> {
        let ttl_ms = Some(u64::try_from(self.config.route_ttl.as_millis()).unwrap_or(u64::MAX));
        let mut out = vec![Announcement {
            destination: self.local.clone(),
            path: vec![self.local.clone()],
            hops: 0,
            latency_us: 0,
            reliability: 1000,
            tags: self.config.tags.clone(),
            ttl_ms,
        }];
        if !transit {
            return out;
        }
        let offered = self.config.neighbours.get(to).and_then(|r| r.export.as_ref());
        let best = self.best_ways(now, |a| a.path.contains(to) || offered.is_some_and(|l| !l.contains(&a.destination)));
        let mut onwards: Vec<Announcement> = best.into_values().map(|(a, _)| Announcement { ttl_ms, ..a }).collect();
        // No more than a neighbour takes in one update (with the same
        // config): past it, the neighbour would refuse every route of this
        // node, so the farthest go. A neighbour that announces many routes
        // can still crowd others out: limit it with `export` lists.
        onwards.sort_by_key(|a| a.hops);
        onwards.truncate(self.config.max_routes_per_neighbour.saturating_sub(out.len()));
        out.extend(onwards);
        out
    }

    /// The destinations whose way from here crosses next into a cluster
    /// this cluster announces `from` to. That cluster takes calls that
    /// started in `from` only from a neighbour that announced it
    /// (`leads_through`), so transit offers `from` the functions of these
    /// destinations only.
    pub fn carried_back(&self, now: Millis, from: &ClusterId) -> BTreeSet<ClusterId> {
        let mut told_of_from: BTreeMap<&ClusterId, bool> = BTreeMap::new();
        let ways = self.best_ways(now, |_| false);
        let mut carried = BTreeSet::new();
        for (destination, (way, _)) in &ways {
            let Some(next) = way.path.get(1) else { continue };
            let told = *told_of_from
                .entry(next)
                .or_insert_with(|| self.exports(now, next, true).iter().any(|a| a.destination == *from));
            if told {
                carried.insert(destination.clone());
            }
        }
        carried
    }

    /// For each destination, the node a call there goes to next: the bridge
    /// peer of this node's best route, or the member whose shared route is
    /// better. The same choice as `exports`, so calls take the way this
    /// cluster announces; where there is none, the `way` held down.
    pub fn next_hops(&self, now: Millis) -> BTreeMap<ClusterId, NodeId> {
        let mut hops: BTreeMap<ClusterId, NodeId> =
            self.best_ways(now, |_| false).into_iter().map(|(d, (_, via))| (d, via)).collect();
        for destination in self.routes.keys() {
            if !hops.contains_key(destination)
                && let Some(held) = self.way(now, destination)
            {
                hops.insert(destination.clone(), held.via.clone());
            }
        }
        hops
    }

    /// Each destination's best of this node's and its members' routes not
    /// `skipped`, as this cluster announces it (this node's own on a tie),
    /// with the node it leads through.
    fn best_ways(
        &self,
        now: Millis,
        skipped: impl Fn(&Announcement) -> bool,
    ) -> BTreeMap<ClusterId, (Announcement, NodeId)> {
        let own = self.winners(now).into_values().map(|r| {
            let via = r.via.clone();
            (self.onwards(r, None), via)
        });
        let members = self.members.iter().flat_map(|(m, shared)| shared.iter().map(|a| (a.clone(), m.clone())));
        let rank = |a: &Announcement| (a.hops, a.latency_us / LATENCY_BUCKET_US, std::cmp::Reverse(a.reliability));
        let mut best: BTreeMap<ClusterId, (Announcement, NodeId)> = BTreeMap::new();
        for (a, via) in own.chain(members) {
            if skipped(&a) {
                continue;
            }
            match best.get(&a.destination) {
                Some((held, _)) if rank(held) <= rank(&a) => {}
                _ => {
                    best.insert(a.destination.clone(), (a, via));
                }
            }
        }
        best
    }

    /// A route of this node as this cluster announces it.
    fn onwards(&self, r: Route, ttl_ms: Option<u64>) -> Announcement {
        let mut path = vec![self.local.clone()];
        path.extend(r.path);
        Announcement {
            destination: r.destination,
            path,
            hops: r.hops,
            latency_us: r.latency_us,
            reliability: r.reliability,
            tags: r.tags,
            ttl_ms,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

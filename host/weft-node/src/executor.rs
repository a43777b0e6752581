//! Runs client requests: plan (weft-fabric) against the catalog, then start
//! each command as soon as its inputs are ready. In a request of several
//! commands, or any request on an idle node, a command runs in the
//! request's task until it first has to wait
//! (a forward on the network, a guest that yields after its slice of fuel);
//! only then does it move to a task of its own, so cheap commands cost no
//! thread hand-off and long ones still use every core. The first failure
//! fails the request and cancels the commands still running (their tasks
//! are aborted).
//!
//! A step whose function is on this node runs here; otherwise it is
//! forwarded to the least loaded node that has it (random among equals),
//! and, for idempotent plugins, retried elsewhere if that node vanishes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use weft_fabric::{Asker, Audience, CatalogEntry, Gone, Plan, Scheduler, StepIdx, resolve};
use weft_proto::client::{ExecutionSummary, IntermediateResult, StepSummary};
use weft_proto::{Caller, ClusterId, Command, ErrorKind, FunctionId, NodeId, Request, Response, WeftError};
use weft_runtime::budget::{Budget, Charge};
use weft_runtime::{CallTarget, NodeLoad, Runtime};

use crate::metrics::{Metrics, OutcomeLabel};
use crate::peer::{Admission, Fabric, ForwardCall, Link, Point, out_of_reach};
use crate::signing::{CallClaim, OriginProof};

pub struct Executor {
    fabric: Arc<Fabric>,
    metrics: Arc<Metrics>,
    max_commands: usize,
    default_timeout: Duration,
    default_hop_budget: u32,
}

struct StepDone {
    step: StepIdx,
    result: Result<Value, WeftError>,
    /// Where the step ran (or was last tried).
    node: NodeId,
    started: Instant,
    elapsed: Duration,
}

impl Executor {
    pub fn new(fabric: Arc<Fabric>, max_commands: usize, default_timeout: Duration, default_hop_budget: u32) -> Self {
        let metrics = fabric.metrics.clone();
        Self { fabric, metrics, max_commands, default_timeout, default_hop_budget }
    }

    /// Ends the requests and forwarded calls still running, each with an
    /// UNAVAILABLE answer (the node's shutdown grace period is over).
    pub(crate) fn end_running(&self) {
        self.fabric.grace_over.cancel();
    }

    /// Every function callable from this node.
    pub fn catalog(&self) -> Arc<Vec<CatalogEntry>> {
        self.fabric.entries()
    }

    pub fn runtime(&self) -> &Runtime {
        &self.fabric.runtime
    }

    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    /// `response` as JSON text for a client (see [`encode`]).
    pub fn encode(&self, response: Response) -> (String, Option<ErrorKind>) {
        encode(response, self.fabric.max_frame, &self.metrics)
    }

    /// Executes a request received at `received` (its deadline counts from
    /// then) and always produces a response (errors included). If the
    /// future is dropped (the client left), the gauges still settle.
    pub async fn execute(&self, req: Request, received: Instant) -> Response {
        let _in_flight = InFlight::enter(&self.metrics);
        let u = req.u.clone();
        let result = tokio::select! {
            result = self.run(req, received) => result,
            () = self.fabric.grace_over.cancelled() => Err(stopped(&self.fabric.me.node, "the request")),
        };
        match result {
            Ok(response) => response,
            Err(e) => {
                self.metrics.record_error(e.kind);
                Response::err(u, &e)
            }
        }
    }

    async fn run(&self, mut req: Request, started: Instant) -> Result<Response, WeftError> {
        if req.cmds.len() > self.max_commands {
            return Err(WeftError::invalid_request(format!(
                "{} commands is over the limit of {} per request (limits.max_commands); split the request",
                req.cmds.len(),
                self.max_commands
            )));
        }
        if req.timeout_ms == Some(0) {
            return Err(WeftError::invalid_request(format!(
                "timeout_ms must be at least 1; leave it out for the node's default of {:?}",
                self.default_timeout
            )));
        }
        // Held until the request ends: its place among its tenant's in flight.
        let admission = self.fabric.tenants().admit(req.token.as_deref(), req.cmds.len(), &self.metrics)?;
        self.admit_targets(&req)?;
        let catalog = self.fabric.entries();
        let asker = Asker { caller: &admission.caller, cluster: &self.fabric.me.cluster };
        let mut plan = Plan::build(&req, |cmd| {
            resolve(cmd, &catalog, &asker).map_err(|e| self.explain_miss(cmd, e, &admission.caller))
        })?;
        // The plan holds the arguments now; a large request is not kept twice.
        drop(std::mem::take(&mut req.cmds));
        let hop_budget = req.hop_budget.unwrap_or(self.default_hop_budget);
        let timeout = req.timeout_ms.map_or(self.default_timeout, Duration::from_millis);
        let deadline = started + timeout;
        // Judged once, before this request's own steps keep workers busy.
        let load = self.metrics.load(1);
        let whereabouts = Whereabouts::new(plan.steps().len());
        let scope = Scope { deadline, hop_budget, caller: &admission.caller, load, whereabouts: whereabouts.clone() };

        let mut scheduler = Scheduler::new(&plan);
        let mut results = Results::new(&plan, req.return_intermediate_results, self.fabric.max_frame);
        let mut timings: Vec<Option<Timing>> = vec![None; plan.steps().len()];
        let mut running = Steps::new(plan.steps().len() > 1 || load == NodeLoad::Idle);
        let mut turns = Turns::new(plan.steps().len(), self.fabric.max_frame);
        turns.wait(scheduler.initial_ready());
        while let Some(step) = turns.next(&plan, &results)? {
            self.start(&mut plan, step, &mut results, &scope, &mut running)?;
        }
        while !scheduler.is_done() {
            let deadline_exceeded = |scheduler: &Scheduler| {
                let unfinished = scheduler.unfinished();
                // Where each started one was when time ran out.
                let on: BTreeMap<&str, String> = {
                    let nodes = whereabouts.lock();
                    let steps = plan.steps().iter().zip(nodes.iter());
                    steps
                        .filter(|(s, _)| unfinished.contains(&s.name.as_str()))
                        .filter_map(|(s, node)| Some((s.name.as_str(), node.as_ref()?.to_string())))
                        .collect()
                };
                let named: Vec<String> = unfinished
                    .iter()
                    .map(|name| match on.get(name) {
                        Some(node) => format!("{name} (on node {node})"),
                        None => format!("{name} (not started)"),
                    })
                    .collect();
                WeftError::new(
                    ErrorKind::DEADLINE_EXCEEDED,
                    format!(
                        "the request did not finish within {timeout:?} (timeout_ms); unfinished commands: {}",
                        named.join(", ")
                    ),
                )
                .with("unfinished", unfinished)
                .with("running_on", Value::Object(on.into_iter().map(|(s, n)| (s.to_owned(), n.into())).collect()))
            };
            // `timeout_at` looks at the clock only when its future is not
            // ready, and steps may keep being ready: each one that copies a
            // large result out of its guest takes a while doing so.
            if Instant::now() >= deadline {
                return Err(deadline_exceeded(&scheduler));
            }
            let joined = match tokio::time::timeout_at(deadline.into(), running.next()).await {
                Err(_) => return Err(deadline_exceeded(&scheduler)),
                Ok(None) => {
                    return Err(WeftError::internal("the scheduler stalled with commands left"));
                }
                Ok(Some(Err(e))) => {
                    return Err(WeftError::internal(format!("a command task failed: {e}")));
                }
                Ok(Some(Ok(done))) => done,
            };
            let name = &plan.steps()[joined.step.0].name;
            // A step interrupted because the request's own deadline passed
            // (here or on the node it was forwarded to) is the request timing out.
            let timed_out = |e: &WeftError| {
                e.details.get("trap").and_then(Value::as_str) == Some("interrupted")
                    && (e.kind == ErrorKind::DEADLINE_EXCEEDED || Instant::now() >= deadline)
            };
            if matches!(&joined.result, Err(e) if timed_out(e)) {
                return Err(deadline_exceeded(&scheduler));
            }
            let value = joined.result.map_err(|e| {
                let e = if e.message.starts_with("command ") { e } else { e.context(format!("command {name}")) };
                e.with("command", name.clone())
            })?;
            turns.finished(joined.step);
            results.store(joined.step, value)?;
            timings[joined.step.0] = Some(Timing { started: joined.started, took: joined.elapsed, node: joined.node });
            turns.wait(scheduler.complete(joined.step));
            while let Some(step) = turns.next(&plan, &results)? {
                self.start(&mut plan, step, &mut results, &scope, &mut running)?;
            }
        }

        let mut r = Map::new();
        for &idx in plan.output_steps() {
            let value = &mut results.values[idx.0];
            // Moved out, unless the intermediate results repeat it.
            let value = if req.return_intermediate_results { value.clone() } else { value.take() };
            r.insert(plan.steps()[idx.0].name.clone(), value.unwrap_or(Value::Null));
        }
        let levels = LevelTimes::new(&plan, &timings, started);
        let mut response = Response::ok(req.u.clone(), Value::Object(r));
        if req.include_execution_summary {
            response.execution_summary = Some(self.summary(&req.u, &plan, &timings, &levels, started));
        }
        if req.return_intermediate_results {
            response.intermediate_results =
                Some(intermediate(&req.u, &plan, &results.values, &levels, self.fabric.max_frame)?);
        }
        Ok(response)
    }

    /// What a name missing from the catalog may be: a function that went
    /// out of reach with a node lately (`UNAVAILABLE`: retry), one loaded
    /// here but kept out of it for its resource handles (of a plugin
    /// `caller` may call: of others it learns nothing), or one of a cluster
    /// whose link was refused by policy.
    fn explain_miss(&self, cmd: &Command, e: WeftError, caller: &Caller) -> WeftError {
        if e.kind != ErrorKind::FUNCTION_NOT_FOUND {
            return e;
        }
        let wanted = cmd.function_id.as_deref().unwrap_or(&cmd.fun);
        let (plugin, function) = wanted.split_once('/').map_or((None, wanted), |(p, f)| (Some(p), f));
        let (lost, gone): (Vec<CatalogEntry>, Vec<Gone>) = self.fabric.lost_entries(function).into_iter().unzip();
        let asker = Asker { caller, cluster: &self.fabric.me.cluster };
        if let Ok(r) = resolve(cmd, &lost, &asker) {
            // The latest loss of the version the command would have called.
            let latest = lost.iter().zip(&gone).filter(|(l, _)| l.function == r.function && l.version == r.version);
            if let Some((_, gone)) = latest.max_by_key(|(_, g)| g.at) {
                let what = format!("{}@{}", r.function, r.version);
                let e = out_of_reach(what, gone).context(format_args!("command {}", cmd.name));
                return e.with("command", cmd.name.as_str());
            }
        }
        let plugins = self.fabric.runtime.plugins().into_iter().filter(|p| p.callers.admits(caller));
        let found = plugins.into_iter().find_map(|p| {
            let f = p
                .functions
                .iter()
                .find(|f| f.local_only && f.name == function && plugin.is_none_or(|n| n == p.name))?;
            Some(format!("{}/{}", p.name, f.name))
        });
        match found {
            Some(id) => {
                let message = format!(
                    "{}; {id} is loaded on this node, but its signature uses resource handles, which a JSON call cannot pass, so it is not in the catalog and cannot be called (local_only in /v1/plugins)",
                    e.message
                );
                WeftError { message, ..e }.with("local_only", id)
            }
            None if cmd.target_cluster.is_none() => self.refused_clusters(e),
            None => e,
        }
    }

    /// Names the other clusters a link to was refused by policy (here or
    /// there) and not since linked, and whose functions are missing here:
    /// a member refused a direct link may still reach them through its
    /// cluster's bridge, and then the refusal hides nothing.
    fn refused_clusters(&self, e: WeftError) -> WeftError {
        let mut clusters: Vec<String> = self.fabric.refusals().into_iter().filter_map(|r| r.remote_cluster).collect();
        clusters.sort();
        clusters.dedup();
        let entries = self.fabric.entries();
        clusters.retain(|c| {
            let cluster = ClusterId::new(c);
            let refusal = self.fabric.link_refusal(&cluster);
            refusal.is_some_and(|r| r.kind == crate::peer::RejectKind::Policy)
                && !entries.iter().any(|e| e.cluster == cluster)
                && self.fabric.relays_to(&cluster).is_empty()
        });
        if clusters.is_empty() {
            return e;
        }
        let message = format!(
            "{}; a link to cluster(s) {} was refused by federation policy, so their functions are not listed here (see /v1/peers)",
            e.message,
            clusters.join(", ")
        );
        WeftError { message, ..e }.with("refused_clusters", clusters)
    }

    /// Fails fast on commands naming a foreign `target_cluster` that this
    /// node's policy does not admit, or that no bridge leads to.
    fn admit_targets(&self, req: &Request) -> Result<(), WeftError> {
        let me = &self.fabric.me;
        for cmd in &req.cmds {
            // A name no cluster could have is the plan's INVALID_REQUEST.
            let Some(target) =
                cmd.target_cluster.as_deref().filter(|c| *c != me.cluster.as_str() && weft_proto::is_valid_name(c))
            else {
                continue;
            };
            let target = ClusterId::new(target);
            admit_destination(&self.fabric, &target)
                .map_err(|e| e.context(format_args!("command {}", cmd.name)).with("command", cmd.name.as_str()))?;
        }
        Ok(())
    }

    fn start(
        &self,
        plan: &mut Plan,
        idx: StepIdx,
        results: &mut Results,
        scope: &Scope<'_>,
        running: &mut Steps,
    ) -> Result<(), WeftError> {
        let args = plan.bind(idx, &results.values)?;
        results.bound(&plan.steps()[idx.0].deps);
        let step = StepCall {
            fabric: self.fabric.clone(),
            candidates: plan.steps()[idx.0].resolved.candidates.clone(),
            function: plan.steps()[idx.0].resolved.function.clone(),
            version: plan.steps()[idx.0].resolved.version.clone(),
            args,
            deadline: scope.deadline,
            hop_budget: scope.hop_budget,
            routing_path: Vec::new(),
            federation_path: Vec::new(),
            locs: plan.steps()[idx.0].resolved.locs.clone(),
            caller: scope.caller.clone(),
            load: scope.load,
            origin_proof: None,
            admission: None,
            whereabouts: Some((scope.whereabouts.clone(), idx)),
        };
        running.start(async move {
            let started = Instant::now();
            let (result, node) = step.run().await;
            StepDone { step: idx, result, node, started, elapsed: started.elapsed() }
        });
        Ok(())
    }

    fn summary(
        &self,
        u: &str,
        plan: &Plan,
        timings: &[Option<Timing>],
        levels: &LevelTimes,
        started: Instant,
    ) -> ExecutionSummary {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let steps: Vec<StepSummary> = plan
            .steps()
            .iter()
            .zip(timings)
            .map(|(s, t)| {
                let me = &self.fabric.me.node;
                let (begin, took, node) =
                    t.as_ref().map_or((started, Duration::ZERO, me), |t| (t.started, t.took, &t.node));
                // The cluster of the node that ran it; a step sent over a
                // bridge ran in its candidates' cluster (one crossing).
                let candidates = &s.resolved.candidates;
                let here = &self.fabric.me.cluster;
                let cluster = match candidates.iter().find(|c| c.node == *node) {
                    Some(c) => &c.cluster,
                    None if candidates.iter().all(|c| c.cluster != *here) => {
                        candidates.first().map_or(here, |c| &c.cluster)
                    }
                    None => here,
                };
                StepSummary {
                    name: s.name.clone(),
                    function: format!("{}@{}", s.resolved.function, s.resolved.version),
                    node: node.to_string(),
                    cluster: cluster.to_string(),
                    level: s.level,
                    started_us: micros(begin.saturating_duration_since(started)),
                    duration_us: micros(took),
                    hops: if cluster == here { 0 } else { self.fabric.route_hops(cluster).unwrap_or(1) },
                }
            })
            .collect();
        let times = &levels.span_ms;
        let bottleneck = times.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
        ExecutionSummary {
            request_id: u.to_owned(),
            total_execution_time_ms: started.elapsed().as_secs_f64() * 1e3,
            total_levels: times.len() as u32,
            level_execution_times: times.clone(),
            bottleneck_level_index: bottleneck as u32,
            average_level_time_ms: times.iter().sum::<f64>() / times.len().max(1) as f64,
            parallel_commands_executed: steps.len() as u32,
            cross_cluster_hops: steps.iter().map(|s| s.hops).sum(),
            steps,
        }
    }
}

/// The commands of one request that have started: those that finished on
/// their first poll, and those that had to wait and now run as tasks.
///
/// A request of several commands, or any request on an idle node, polls
/// each command here first, in the request's own task. A local call on a
/// spare instance finishes in that poll: no spawn and, at concurrency 1
/// above all, no wake-up of the request's task by another worker between
/// the guest's answer and the reply (about 12 µs). A lone command on a busy
/// node goes straight to a task, which an idle worker can steal: run in
/// place, it cost a quarter of HTTP throughput at 64 connections
/// (docs/BENCHMARKS.md).
struct Steps {
    inline: bool,
    finished: VecDeque<StepDone>,
    running: JoinSet<StepDone>,
}

impl Steps {
    fn new(inline: bool) -> Self {
        Steps { inline, finished: VecDeque::new(), running: JoinSet::new() }
    }

    /// Polls the step once here (if inline); if it has to wait, it moves to
    /// a task of its own, whose first poll registers the real waker (the
    /// no-op one used here is never needed: the spawn schedules that poll).
    fn start(&mut self, step: impl Future<Output = StepDone> + Send + 'static) {
        let mut step = Box::pin(step);
        if !self.inline {
            self.running.spawn(step);
            return;
        }
        match step.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(done) => self.finished.push_back(done),
            Poll::Pending => {
                self.running.spawn(step);
            }
        }
    }

    /// The next finished step; `None` once nothing is left.
    async fn next(&mut self) -> Option<Result<StepDone, tokio::task::JoinError>> {
        match self.finished.pop_front() {
            Some(done) => Some(Ok(done)),
            None => self.running.join_next().await,
        }
    }
}

/// What every step of one request shares.
struct Scope<'a> {
    deadline: Instant,
    hop_budget: u32,
    caller: &'a Caller,
    load: NodeLoad,
    whereabouts: Whereabouts,
}

#[derive(Clone)]
struct Timing {
    started: Instant,
    took: Duration,
    node: NodeId,
}

/// One step on its way to a node: here if the function is local, else the
/// least loaded linked node that has it; a foreign function goes over a
/// bridge to its cluster, which routes it on.
pub(crate) struct StepCall {
    pub fabric: Arc<Fabric>,
    pub candidates: Arc<[CatalogEntry]>,
    pub function: FunctionId,
    pub version: semver::Version,
    pub args: Vec<Value>,
    pub deadline: Instant,
    pub hop_budget: u32,
    /// Nodes and clusters the call came through before this node.
    pub routing_path: Vec<NodeId>,
    pub federation_path: Vec<ClusterId>,
    /// Resources the running node must have.
    pub locs: Vec<String>,
    pub caller: Caller,
    /// The node's load when the call arrived, which decides where its
    /// instance is torn down (`Runtime::call`).
    pub load: NodeLoad,
    /// The origin cluster's proof, carried on unchanged (see `ForwardCall`).
    pub origin_proof: Option<OriginProof>,
    /// For a call from another cluster, what let it in here, asked again
    /// before it runs on this node.
    pub admission: Option<Admission>,
    /// Where the request's steps are, this one's among them (a call of a
    /// request of this node's own).
    pub whereabouts: Option<(Whereabouts, StepIdx)>,
}

/// The node each started step of a request runs on, or was sent to last,
/// for a request that runs out of time to name.
#[derive(Clone)]
pub(crate) struct Whereabouts(Arc<std::sync::Mutex<Vec<Option<NodeId>>>>);

impl Whereabouts {
    fn new(steps: usize) -> Self {
        Self(Arc::new(std::sync::Mutex::new(vec![None; steps])))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<NodeId>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, step: StepIdx, node: &NodeId) {
        self.lock()[step.0] = Some(node.clone());
    }
}

fn was_not_loaded(result: &Result<Value, WeftError>) -> bool {
    matches!(result, Err(e) if e.details.contains_key(weft_runtime::NOT_LOADED))
}

impl StepCall {
    pub async fn run(self) -> (Result<Value, WeftError>, NodeId) {
        let me = self.fabric.me.node.clone();
        let metrics = &self.fabric.metrics;
        let mut tried: Vec<NodeId> = Vec::new();
        // A node that no longer has the planned version ran nothing: the
        // next one that has it may (its answer stands if none is left).
        let mut not_loaded = None;
        // Only an entry of this cluster is this node's own: another cluster's
        // offer may name any node id, this one's included.
        if self.candidates.iter().any(|c| c.node == me && c.cluster == self.fabric.me.cluster) {
            let f = &self.function;
            let target = CallTarget { plugin: &f.plugin, version: Some(&self.version), function: &f.function };
            let timer = metrics.call_timer(f);
            let admitted = || match &self.admission {
                Some(a) => a.holds(&self.fabric, f, &self.federation_path),
                None => Ok(()),
            };
            self.is_on(&me);
            let runtime = &self.fabric.runtime;
            let result =
                runtime.call_admitted(target, &self.args, self.deadline, &self.caller, self.load, &admitted).await;
            timer.finish(result.is_ok());
            if !was_not_loaded(&result) || self.candidates.len() == 1 {
                return (result, me);
            }
            tried.push(me.clone());
            not_loaded = Some(result);
        }
        let idempotent = self.candidates.iter().all(|c| c.idempotent);
        loop {
            let Some((link, destination)) = self.pick(&tried) else {
                if let Some(result) = not_loaded {
                    return (result, tried.pop().unwrap_or(me));
                }
                return (Err(self.unreachable(&tried)), tried.pop().unwrap_or(me));
            };
            let call = match self.forward_call(&link, destination) {
                Ok(call) => call,
                Err(e) => return (Err(e), me),
            };
            self.is_on(link.node());
            let (result, ran_on) = link.call(call).await;
            let result = result.and_then(|value| self.fits_result(value, link.node()));
            let lost = matches!(&result, Err(e) if e.details.contains_key("link_lost"));
            let outcome = if result.is_ok() {
                "ok"
            } else if lost {
                "lost"
            } else {
                "error"
            };
            metrics.forwards.get_or_create(&OutcomeLabel { outcome }).inc();
            tried.push(link.node().clone());
            if lost && idempotent && Instant::now() < self.deadline {
                tracing::info!(node = %link.node(), function = %self.function, "node lost mid-call; retrying the idempotent call elsewhere");
                continue;
            }
            if was_not_loaded(&result) && Instant::now() < self.deadline {
                let on = |e: WeftError| e.context(format_args!("node {ran_on}")).with("node", ran_on.as_str());
                not_loaded = Some(result.map_err(on));
                continue;
            }
            return (result, ran_on);
        }
    }

    fn is_on(&self, node: &NodeId) {
        if let Some((whereabouts, step)) = &self.whereabouts {
            whereabouts.set(*step, node);
        }
    }

    /// A peer's answer, if it is a value of the function's result type:
    /// the client and the steps that use it were promised one, and a faulty
    /// or lying node cannot hand them anything else.
    fn fits_result(&self, value: Value, from: &NodeId) -> Result<Value, WeftError> {
        // Another version's signature says nothing of this one's answer
        // (such candidates stand in for one replaced since the caller
        // planned; the caller, who has its signature, checks the answer).
        let Some(entry) = self.candidates.first().filter(|e| e.version == self.version) else {
            return Ok(value);
        };
        let fits = match entry.sig.success_type() {
            Some(ty) => weft_proto::wit::check(&value, ty, "result").map_err(|m| m.to_string()),
            None if value.is_null() => Ok(()),
            None => Err("a value, where the function returns none".into()),
        };
        fits.map(|()| value).map_err(|why| {
            WeftError::internal(format!(
                "node {from} answered {}@{} with a value that does not fit its result type ({why}); the nodes disagree on its signature, or that node is faulty",
                self.function, self.version
            ))
            .with("node", from.as_str())
        })
    }

    /// The call as sent over `link` on its way to cluster `destination`.
    /// A call bound for another cluster is checked first against this
    /// node's policy: the neighbour it crosses to, the destination and every
    /// cluster the route there crosses (this node's route, or the relaying
    /// member's), since the policy may have changed since the call was
    /// planned and the routes announced. Crossing takes one hop of the
    /// budget.
    fn forward_call(&self, link: &Link, destination: ClusterId) -> Result<ForwardCall, WeftError> {
        let me = &self.fabric.me;
        let mut federation_path = self.federation_path.clone();
        let mut hop_budget = self.hop_budget;
        let crossing = link.remote.cluster != me.cluster;
        let policy = self.fabric.policy();
        if crossing {
            let verdict = self.fabric.decide(Point::CallOrigin, policy.peer(&link.remote.cluster, Some(link.node())));
            if !verdict.allowed {
                return Err(verdict.to_error(&link.remote.cluster));
            }
        }
        if destination != me.cluster {
            let route = if crossing {
                self.fabric.route_path(&destination)
            } else {
                self.fabric.relay_path(link.node(), &destination)
            };
            let beyond = route.unwrap_or_default();
            let others =
                beyond.iter().chain([&destination]).filter(|c| **c != link.remote.cluster && **c != me.cluster);
            for cluster in others {
                let verdict = policy.peer(cluster, None);
                if !verdict.allowed {
                    return Err(self.fabric.decide(Point::CallOrigin, verdict).to_error(cluster));
                }
            }
        }
        if crossing {
            federation_path.push(me.cluster.clone());
            if hop_budget == 0 {
                let path: Vec<&str> = federation_path.iter().map(ClusterId::as_str).collect();
                return Err(WeftError::new(
                    ErrorKind::HOP_BUDGET_EXHAUSTED,
                    format!(
                        "no hop budget left to enter cluster {} (path so far: {}); raise hop_budget or routing.max_hops",
                        link.remote.cluster,
                        path.join(" -> ")
                    ),
                )
                .with("federation_path", path));
            }
            hop_budget -= 1;
        }
        let mut routing_path = self.routing_path.clone();
        routing_path.push(me.node.clone());
        let (function, version) = (self.function.to_string(), self.version.to_string());
        let origin_proof = self.origin_proof.clone().or_else(|| {
            // Leaving the cluster it started in for one beyond the
            // neighbour, the call proves its origin to the clusters on the
            // way (`peer::link::vouched`).
            let starts = crossing && self.federation_path.is_empty() && destination != link.remote.cluster;
            let restricted =
                self.candidates.iter().any(|c| c.cluster == destination && c.origins != Audience::Everyone);
            let claim = CallClaim {
                origin: &me.cluster,
                target: &destination,
                function: &function,
                version: &version,
                args: &self.args,
            };
            (starts && restricted).then(|| self.fabric.prove_origin(&claim)).flatten()
        });
        Ok(ForwardCall {
            id: 0,
            function,
            version,
            args: self.args.clone(),
            deadline_ms: u64::try_from(self.deadline.saturating_duration_since(Instant::now()).as_millis())
                .unwrap_or(u64::MAX),
            routing_path,
            federation_path,
            hop_budget,
            target_cluster: (destination != me.cluster).then_some(destination),
            locs: self.locs.clone(),
            caller: if crossing { self.caller_across() } else { self.caller.clone() },
            origin_proof,
        })
    }

    /// The caller a call names when it enters another cluster: one of this
    /// cluster's own tenants, and only over links that proved both clusters'
    /// keys (the receiver believes it only then); anyone else is sent as
    /// anonymous, and the receiver takes the call as the origin cluster's.
    fn caller_across(&self) -> Caller {
        match &self.caller {
            Caller::Tenant(_) if self.fabric.links_authenticated() => self.caller.clone(),
            _ => Caller::Anonymous,
        }
    }

    /// The least loaded way to a candidate not yet tried: a link to the node
    /// itself, or for a foreign node a bridge link into its cluster; with
    /// the candidate's cluster, which the call names as its target so that
    /// no cluster on the way sends it elsewhere or runs a same-named
    /// function instead.
    fn pick(&self, tried: &[NodeId]) -> Option<(Arc<Link>, ClusterId)> {
        let me = &self.fabric.me;
        // Never back through a node or into a cluster the call already passed.
        let avoid = |l: &Link| {
            l.is_leaving()
                || tried.contains(l.node())
                || self.routing_path.contains(l.node())
                || (l.remote.cluster != me.cluster && self.federation_path.contains(&l.remote.cluster))
        };
        // Nodes of this cluster first: a function here is not looked for abroad.
        type Way = (Arc<Link>, ClusterId);
        let (mut home, mut away): (Vec<Way>, Vec<Way>) = (Vec::new(), Vec::new());
        for c in self.candidates.iter() {
            let links = if c.cluster == me.cluster { &mut home } else { &mut away };
            // The node an entry names is reached directly only when it is of
            // the entry's cluster: another cluster's offer may name any id.
            let direct = self.fabric.link(&c.node).filter(|l| l.remote.cluster == c.cluster);
            let ways: Vec<Arc<Link>> = match direct {
                Some(link) => vec![link],
                None if c.cluster != me.cluster => {
                    // A bridge of our own into that cluster, else (for a
                    // function open to named clusters only) the bridges
                    // that offered it, else the next hop of the best route
                    // there, else a member's bridge.
                    let mut ways: Vec<Arc<Link>> =
                        self.fabric.links().into_iter().filter(|l| l.remote.cluster == c.cluster).collect();
                    if ways.is_empty() && !c.origins.is_everyone() {
                        let carriers = self.fabric.carriers_of(&c.cluster, &c.function);
                        ways.extend(carriers.iter().filter_map(|n| self.fabric.link(n)));
                    }
                    if ways.is_empty() {
                        ways.extend(self.fabric.next_hop(&c.cluster).and_then(|n| self.fabric.link(&n)));
                    }
                    if ways.is_empty() {
                        let relays = self.fabric.relays_to(&c.cluster);
                        ways.extend(relays.iter().filter_map(|n| self.fabric.link(n)));
                    }
                    ways
                }
                None => Vec::new(),
            };
            let ways: Vec<Arc<Link>> = ways.into_iter().filter(|l| !avoid(l)).collect();
            for way in ways {
                if !links.iter().any(|(l, _)| Arc::ptr_eq(l, &way)) {
                    links.push((way, c.cluster.clone()));
                }
            }
        }
        let links = if home.is_empty() { away } else { home };
        least_loaded(links, |(l, _)| l.in_flight(), &mut rand::rng())
    }

    /// For a step whose candidates are all in other clusters, planned
    /// before a policy reload refused every one of them: the policy's
    /// refusal, rather than a link to wait for. (A way that is merely gone,
    /// a bridge that dropped, may come back: that stays UNAVAILABLE.)
    fn refused_abroad(&self) -> Option<WeftError> {
        let me = &self.fabric.me.cluster;
        if self.candidates.iter().any(|c| c.cluster == *me) {
            return None;
        }
        let clusters: BTreeSet<&ClusterId> = self.candidates.iter().map(|c| &c.cluster).collect();
        let mut refusals = clusters
            .iter()
            .map(|c| admit_destination(&self.fabric, c).err().filter(|e| e.kind == ErrorKind::POLICY_DENIED));
        let first = refusals.next()??;
        refusals.all(|r| r.is_some()).then_some(first)
    }

    fn unreachable(&self, tried: &[NodeId]) -> WeftError {
        if tried.is_empty()
            && let Some(refused) = self.refused_abroad()
        {
            return refused;
        }
        let nodes: Vec<String> = self.candidates.iter().map(|c| c.node.to_string()).collect();
        let message = if tried.is_empty() {
            // A node that said it is leaving is linked still, but takes no calls.
            let leaving: Vec<String> = self
                .candidates
                .iter()
                .filter(|c| self.fabric.link(&c.node).is_some_and(|l| l.is_leaving()))
                .map(|c| c.node.to_string())
                .collect();
            let why =
                if leaving.is_empty() { String::new() } else { format!(" ({} shutting down)", leaving.join(", ")) };
            format!(
                "function {} is on node(s) {}, none of which node {} can reach right now{why}; retry shortly",
                self.function,
                nodes.join(", "),
                self.fabric.me.node
            )
        } else if self.fabric.links_closing.is_cancelled() {
            format!(
                "function {}: this node ({}) is stopping and closed its links during the call, which may or may not have run; retry if it is safe",
                self.function, self.fabric.me.node
            )
        } else {
            format!(
                "function {}: every node that has it ({}) went away during the call, which may or may not have run; retry if it is safe",
                self.function,
                nodes.join(", ")
            )
        };
        let error = WeftError::new(ErrorKind::UNAVAILABLE, message).with("nodes", nodes);
        // Only a lost link leads here: the node that passed the call on may
        // retry it on another way in, as it would for a link of its own.
        if tried.is_empty() { error } else { error.with("link_lost", true) }
    }
}

/// Whether this node would send a call to cluster `target` now: its policy
/// admits the cluster, and a bridge or route leads there.
fn admit_destination(fabric: &Fabric, target: &ClusterId) -> Result<(), WeftError> {
    let verdict = fabric.decide(Point::CallOrigin, fabric.policy().peer(target, None));
    if !verdict.allowed {
        return Err(verdict.to_error(target));
    }
    fabric.reach(target)
}

/// The item with the least load; ties broken at random so equal nodes share
/// work. Each load is read once: it is a live counter that other calls move,
/// and a second reading could leave no item at the minimum of the first.
fn least_loaded<T>(items: Vec<T>, load: impl Fn(&T) -> usize, rng: &mut impl rand::Rng) -> Option<T> {
    let loads: Vec<(usize, T)> = items.into_iter().map(|i| (load(&i), i)).collect();
    let min = loads.iter().map(|(l, _)| *l).min()?;
    let mut least: Vec<T> = loads.into_iter().filter(|(l, _)| *l == min).map(|(_, i)| i).collect();
    let pick = rng.random_range(0..least.len());
    Some(least.swap_remove(pick))
}

/// Counts a request in flight and observes its duration when it ends,
/// whether it completed or was cancelled.
struct InFlight<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self { metrics, started: Instant::now() }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics.request_seconds.observe(self.started.elapsed().as_secs_f64());
    }
}

/// Per dependency level: when its first command started and its last one
/// finished.
struct LevelTimes {
    span_ms: Vec<f64>,
    finished: Vec<Instant>,
}

impl LevelTimes {
    fn new(plan: &Plan, timings: &[Option<Timing>], started: Instant) -> Self {
        let count = plan.steps().iter().map(|s| s.level as usize + 1).max().unwrap_or(0);
        let mut bounds: Vec<Option<(Instant, Instant)>> = vec![None; count];
        for (step, timing) in plan.steps().iter().zip(timings) {
            let Some(Timing { started: begin, took, .. }) = *timing else {
                continue;
            };
            let end = begin + took;
            let slot = &mut bounds[step.level as usize];
            *slot = Some(slot.map_or((begin, end), |(b, e)| (b.min(begin), e.max(end))));
        }
        let bounds: Vec<(Instant, Instant)> = bounds.into_iter().map(|b| b.unwrap_or((started, started))).collect();
        Self {
            span_ms: bounds.iter().map(|(b, e)| e.saturating_duration_since(*b).as_secs_f64() * 1e3).collect(),
            finished: bounds.iter().map(|(_, e)| *e).collect(),
        }
    }
}

/// The results a request holds while it runs. Each is dropped once every
/// command that uses it has been bound, unless the response carries it; the
/// ones it carries may not add up to more than `max_frame`, which the
/// response could not exceed anyway. Without this a chain of commands each
/// passing on a large result kept every copy until the request ended.
struct Results {
    values: Vec<Option<Value>>,
    /// Commands that use each result and are not bound yet.
    uses: Vec<usize>,
    /// JSON size of each result some command uses.
    sizes: Vec<usize>,
    /// Whether the response carries each result.
    carried: Vec<bool>,
    /// Bytes of the carried results so far, counted when more than one is.
    carried_bytes: Option<usize>,
    max_frame: usize,
}

impl Results {
    fn new(plan: &Plan, intermediate: bool, max_frame: usize) -> Self {
        let n = plan.steps().len();
        let mut uses = vec![0; n];
        for dep in plan.steps().iter().flat_map(|s| &s.deps) {
            uses[dep.0] += 1;
        }
        let mut carried = vec![intermediate; n];
        for out in plan.output_steps() {
            carried[out.0] = true;
        }
        let counted = carried.iter().filter(|c| **c).count() > 1;
        Self { values: vec![None; n], uses, sizes: vec![0; n], carried, carried_bytes: counted.then_some(0), max_frame }
    }

    fn store(&mut self, step: StepIdx, value: Value) -> Result<(), WeftError> {
        let counted = self.carried[step.0] && self.carried_bytes.is_some();
        let size = if counted || self.uses[step.0] > 0 { json_len(&value) } else { 0 };
        self.sizes[step.0] = size;
        if counted && let Some(bytes) = &mut self.carried_bytes {
            *bytes += size;
            if *bytes > self.max_frame {
                return Err(too_big("the response", *bytes, self.max_frame));
            }
        }
        self.values[step.0] = Some(value);
        Ok(())
    }

    /// The bytes (as JSON) binding a reference to `path` in the result of
    /// `step` copies.
    fn copy_size(&self, step: StepIdx, path: &[String]) -> usize {
        if path.is_empty() {
            return self.sizes[step.0];
        }
        let part = self.values[step.0].as_ref().and_then(|v| weft_fabric::plan::follow(v, path).ok());
        part.map_or(0, json_len)
    }

    /// A command using `deps` was bound: results no longer needed go.
    fn bound(&mut self, deps: &[StepIdx]) {
        for dep in deps {
            self.uses[dep.0] -= 1;
            if self.uses[dep.0] == 0 && !self.carried[dep.0] {
                self.values[dep.0] = None;
            }
        }
    }
}

/// Ready commands wait here for their turn to start: a command's bound
/// arguments hold copies of the results it uses until it ends, and those of
/// the running commands together may take `budget` bytes (limits.max_frame,
/// as JSON). Without this, a large result used by many commands was copied
/// for every one of them at once, while most of them merely waited for a
/// sandbox slot (4 GB for 999 users of a 4 MB result, measured). A command
/// always starts when no other holds anything, so any request can finish.
struct Turns {
    waiting: VecDeque<StepIdx>,
    /// Bytes each running command holds, and their sum.
    holds: Vec<usize>,
    held: usize,
    budget: usize,
}

impl Turns {
    fn new(steps: usize, budget: usize) -> Self {
        Self { waiting: VecDeque::new(), holds: vec![0; steps], held: 0, budget }
    }

    fn wait(&mut self, ready: impl IntoIterator<Item = StepIdx>) {
        self.waiting.extend(ready);
    }

    /// The next command to start, in the order they became ready, if its
    /// copies fit beside those of the commands running. A command whose
    /// copies alone exceed the budget fails the request before anything is
    /// copied: a small request repeating a reference to a large result
    /// would otherwise make the node hold it thousands of times.
    fn next(&mut self, plan: &Plan, results: &Results) -> Result<Option<StepIdx>, WeftError> {
        let Some(&step) = self.waiting.front() else { return Ok(None) };
        let cost = plan
            .refs(step)
            .into_iter()
            .map(|(source, path)| results.copy_size(source, path))
            .fold(0, usize::saturating_add);
        if cost > self.budget {
            let name = &plan.steps()[step.0].name;
            let e = WeftError::new(
                ErrorKind::RESOURCE_EXHAUSTED,
                format!(
                    "command {name}: its arguments would be {cost} bytes (as JSON) once its references are replaced by the results they name, over limits.max_frame ({} bytes); pass a large result once rather than repeating its reference",
                    self.budget
                ),
            );
            return Err(e.with("command", name.as_str()).with("size", cost).with("limit", self.budget));
        }
        if self.held > 0 && self.held.saturating_add(cost) > self.budget {
            return Ok(None);
        }
        self.waiting.pop_front();
        self.holds[step.0] = cost;
        self.held += cost;
        Ok(Some(step))
    }

    fn finished(&mut self, step: StepIdx) {
        self.held -= std::mem::take(&mut self.holds[step.0]);
    }
}

/// MPREG-style intermediate results: per level, its results and everything so far.
fn intermediate(
    u: &str,
    plan: &Plan,
    results: &[Option<Value>],
    levels: &LevelTimes,
    max_frame: usize,
) -> Result<Vec<IntermediateResult>, WeftError> {
    let total = levels.span_ms.len() as u32;
    // Each level repeats every result before it: count before copying.
    let size: usize = plan
        .steps()
        .iter()
        .zip(results)
        .map(|(step, value)| {
            let copies = 1 + (total - step.level) as usize;
            (step.name.len() + 4 + value.as_ref().map_or(4, json_len)) * copies
        })
        .sum();
    if size > max_frame {
        return Err(too_big("return_intermediate_results", size, max_frame));
    }
    let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let now = Instant::now();
    let mut accumulated = Map::new();
    let out = (0..total)
        .map(|level| {
            let mut level_results = Map::new();
            for (step, value) in plan.steps().iter().zip(results).filter(|(s, _)| s.level == level) {
                level_results.insert(step.name.clone(), value.clone().unwrap_or(Value::Null));
            }
            accumulated.extend(level_results.clone());
            let finished = levels.finished[level as usize];
            IntermediateResult {
                request_id: u.to_owned(),
                level_index: level,
                level_results,
                accumulated_results: accumulated.clone(),
                total_levels: total,
                completed_levels: level + 1,
                timestamp: now_unix - now.saturating_duration_since(finished).as_secs_f64(),
                execution_time_ms: levels.span_ms[level as usize],
            }
        })
        .collect();
    Ok(out)
}

/// Requests over this many bytes are large: parsed on the blocking pool and
/// run one at a time per node (`LargeRequests`).
pub(crate) const LARGE_REQUEST: usize = 1 << 20;

/// A decoded request and, for a large one, its turn.
pub(crate) struct Decoded {
    pub request: Result<Request, (Option<String>, WeftError)>,
    /// A large request's turn, held until it has run.
    pub turn: Option<OwnedSemaphorePermit>,
    /// When the request arrived: its deadline counts from then.
    pub received: Instant,
}

/// The node's turn for large requests. Parsing, checking and converting a
/// request of many megabytes keeps a thread busy for a second or more; on a
/// node with few cores two of them at once would leave no worker for
/// anyone else. So a large request is parsed off the workers, and its turn
/// (the permit returned with it) is held until it has run; the next one
/// waits, and its connection with it. The wait counts against the request's
/// own deadline: it is read first (a scan of the frame, off the workers),
/// and a request whose deadline passes in line is answered then.
#[derive(Clone)]
pub(crate) struct LargeRequests {
    turn: Arc<Semaphore>,
    /// A request's deadline when it sets no `timeout_ms`.
    default_timeout: Duration,
}

/// What is read of a large request before its turn, or of one refused
/// before it is parsed.
#[derive(Default, serde::Deserialize)]
struct Peek {
    u: Option<String>,
    timeout_ms: Option<u64>,
}

impl Peek {
    fn of(text: &[u8]) -> Peek {
        serde_json::from_slice(text).unwrap_or_default()
    }
}

/// The answer to a request refused with `e` before it was parsed: its `u`
/// is read off the workers when it is large, as its parse would be.
pub(crate) async fn refused_unparsed(text: Vec<u8>, e: &WeftError) -> Response {
    let u = if text.len() > LARGE_REQUEST {
        tokio::task::spawn_blocking(move || Peek::of(&text).u).await.unwrap_or_default()
    } else {
        Peek::of(&text).u
    };
    Response::err(u.unwrap_or_default(), e)
}

impl LargeRequests {
    pub(crate) fn new(default_timeout: Duration) -> Self {
        Self { turn: Arc::new(Semaphore::new(1)), default_timeout }
    }

    /// Parses a request, a large one in its turn, with its share of the
    /// node's request memory grown for that parse first and then made what
    /// the request holds.
    pub(crate) async fn decode(&self, bytes: Vec<u8>, memory: &mut Charge, requests: &RequestMemory) -> Decoded {
        let decoded = self.decode_in_turn(bytes, memory, requests).await;
        parsed(memory, &decoded.request);
        decoded
    }

    async fn decode_in_turn(&self, bytes: Vec<u8>, memory: &mut Charge, requests: &RequestMemory) -> Decoded {
        let received = Instant::now();
        if bytes.len() <= LARGE_REQUEST {
            return Decoded { request: Request::decode(&bytes), turn: None, received };
        }
        let failed =
            |e: tokio::task::JoinError| (None, WeftError::internal(format!("decoding the request failed: {e}")));
        let peeked = tokio::task::spawn_blocking(move || {
            let peek = Peek::of(&bytes);
            (bytes, peek)
        })
        .await;
        let (bytes, peek) = match peeked {
            Ok(peeked) => peeked,
            Err(e) => return Decoded { request: Err(failed(e)), turn: None, received },
        };
        let timeout = peek.timeout_ms.filter(|ms| *ms > 0).map_or(self.default_timeout, Duration::from_millis);
        let Ok(turn) = tokio::time::timeout_at((received + timeout).into(), self.turn.clone().acquire_owned()).await
        else {
            let e = WeftError::new(
                ErrorKind::DEADLINE_EXCEEDED,
                format!(
                    "the request's {timeout:?} (timeout_ms) passed while it waited for its turn: requests over {} MiB run one at a time on a node; send smaller requests, or fewer at once",
                    LARGE_REQUEST >> 20
                ),
            );
            return Decoded { request: Err((peek.u, e)), turn: None, received };
        };
        if let Err(e) = requests.for_parse(memory, bytes.len()) {
            return Decoded { request: Err((peek.u, e)), turn: None, received };
        }
        let request =
            tokio::task::spawn_blocking(move || Request::decode(&bytes)).await.unwrap_or_else(|e| Err(failed(e)));
        Decoded { request, turn: turn.ok(), received }
    }
}

/// Host memory a request's text may take at most while it is parsed, per
/// byte: `[1,2,...]` is a JSON value per two bytes, and each takes about 90
/// bytes with its converted copy (measured).
const PARSED_PER_BYTE: usize = 48;

/// The host memory the requests a node holds may take, all connections
/// and both ports together (`limits.max_request_memory`): without it,
/// requests waiting for sandbox slots pile up without bound (150 requests
/// of 1 MiB, each a long list of empty lists, took a node to 2.2 GB).
#[derive(Clone)]
pub(crate) struct RequestMemory(Arc<Budget>);

impl RequestMemory {
    pub(crate) fn new(limit: u64) -> Self {
        Self(Budget::new(usize::try_from(limit).unwrap_or(usize::MAX)))
    }

    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.0
    }

    /// A request's share as it arrives: a small one's is the most its
    /// parse may take; a large one's is its text until its turn to be
    /// parsed (`for_parse`). Else its refusal (counted), which
    /// `refused_unparsed` answers.
    pub(crate) fn hold(&self, text: &[u8], metrics: &Metrics) -> Result<Charge, WeftError> {
        let bytes = if text.len() > LARGE_REQUEST { text.len() } else { self.parse_cost(text.len()) };
        self.0.charge(bytes).ok_or_else(|| {
            let e = self.refusal(bytes);
            metrics.record_error(e.kind);
            e
        })
    }

    /// Grows a large request's share to what its parse may take.
    fn for_parse(&self, charge: &mut Charge, len: usize) -> Result<(), WeftError> {
        let bytes = self.parse_cost(len);
        if charge.grow_to(bytes) { Ok(()) } else { Err(self.refusal(bytes)) }
    }

    fn refusal(&self, bytes: usize) -> WeftError {
        self.no_room("parsing this one may take", bytes)
    }

    /// At most half the limit, so that a request fits whenever the
    /// requests held take less than half.
    fn parse_cost(&self, len: usize) -> usize {
        len.saturating_mul(PARSED_PER_BYTE).min(self.0.limit() / 2)
    }

    /// The refusal of `bytes` more, which `what` (a request) takes.
    pub(crate) fn no_room(&self, what: &str, bytes: usize) -> WeftError {
        let mib = |b: usize| b.div_ceil(1 << 20);
        let limit = self.0.limit();
        WeftError::new(
            ErrorKind::RESOURCE_EXHAUSTED,
            format!(
                "the requests this node holds take {} MiB of limits.max_request_memory ({} MiB), and {what} {} MiB; retry shortly, or send smaller requests",
                mib(self.0.used()),
                mib(limit),
                mib(bytes)
            ),
        )
        .with("limit", limit)
        .with("size", bytes)
    }
}

/// Once a request is parsed, its charge becomes what it holds.
pub(crate) fn parsed(charge: &mut Charge, decoded: &Result<Request, (Option<String>, WeftError)>) {
    charge.shrink_to(decoded.as_ref().map_or(0, Request::held_bytes));
}

/// A decoded request, with the connection's token (from the upgrade or
/// the HTTP header) if it carries none; or, when it could not be decoded, its error answer (counted).
pub(crate) fn with_bearer(
    decoded: Result<Request, (Option<String>, WeftError)>,
    bearer: &Option<String>,
    metrics: &Metrics,
) -> Result<Request, Box<Response>> {
    match decoded {
        Ok(mut request) => {
            if request.token.is_none() {
                request.token.clone_from(bearer);
            }
            Ok(request)
        }
        Err((u, e)) => {
            metrics.record_error(e.kind);
            Err(Box::new(Response::err(u.unwrap_or_default(), &e)))
        }
    }
}

/// `response` as JSON text, with the kind of its error if it has one. A
/// response over `max_frame` (more than this node would take, so more than
/// a client is bound to read) becomes the request's failure instead.
pub fn encode(response: Response, max_frame: usize, metrics: &Metrics) -> (String, Option<ErrorKind>) {
    let text = serde_json::to_string(&response).unwrap_or_default();
    if text.len() <= max_frame {
        return (text, response.error.map(|e| e.kind));
    }
    let e = too_big("the response", text.len(), max_frame);
    metrics.record_error(e.kind);
    (serde_json::to_string(&Response::err(response.u, &e)).unwrap_or_default(), Some(e.kind))
}

/// The answer to `what` (a request, a call) still running on `node` when its
/// shutdown grace period ended.
pub(crate) fn stopped(node: &NodeId, what: &str) -> WeftError {
    WeftError::new(
        ErrorKind::UNAVAILABLE,
        format!(
            "node {node} stopped (its shutdown grace period ended) before {what} finished; it may or may not have run: retry on another node if that is safe"
        ),
    )
}

/// RESOURCE_EXHAUSTED for a reply of `size` bytes that would not fit a frame.
fn too_big(what: &str, size: usize, max_frame: usize) -> WeftError {
    WeftError::new(
        ErrorKind::RESOURCE_EXHAUSTED,
        format!(
            "{what} would be {size} bytes, over limits.max_frame ({max_frame} bytes); ask for less: smaller results, fewer commands whose results are returned, or no return_intermediate_results"
        ),
    )
    .with("size", size)
    .with("limit", max_frame)
}

/// Bytes of `value` as JSON text, counted without keeping the text.
pub(crate) fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// This node's catalog entries, and the plugins left out of them.
pub(crate) struct Listing {
    pub(crate) entries: Vec<CatalogEntry>,
    /// Plugin name -> why no client can call it.
    pub(crate) unlisted: Unlisted,
}

pub(crate) type Unlisted = BTreeMap<String, &'static str>;

const TOO_MANY: &str =
    "its functions do not fit this node's catalog (cluster.max_catalog_entries_per_node, with the other plugins')";
const TOO_LARGE: &str =
    "its signatures do not fit this node's catalog (half of limits.max_frame, with the other plugins')";

/// Catalog entries for this node's plugins. Functions whose signatures use
/// resource handles are local-only and never listed.
///
/// At most `source.max_entries` of them, which the cluster's catalog takes
/// from one node, with signatures of at most `source.max_bytes`: plugins
/// with the fewest functions first, and one that does not fit is left out
/// whole (logged, and marked in `/v1/plugins`), so that a plugin with very
/// many functions, or very large signatures, cannot take the others out of
/// the catalog with it.
pub(crate) fn local_catalog(
    runtime: &Runtime,
    node: &NodeId,
    cluster: &ClusterId,
    source: &crate::node::PluginSource,
) -> Listing {
    let mut plugins = runtime.plugins();
    let listed = |p: &weft_runtime::PluginInfo| p.functions.iter().filter(|f| !f.local_only).count();
    plugins.sort_by_key(listed);
    let mut entries = Vec::new();
    let mut unlisted = Unlisted::new();
    let mut bytes = 0;
    for plugin in plugins {
        let Ok(version) = plugin.version.parse::<semver::Version>() else {
            continue;
        };
        if entries.len() + listed(&plugin) > source.max_entries {
            tracing::error!(plugin = %plugin.name, functions = listed(&plugin), max = source.max_entries, "the plugin is not listed, so no client can call it: {TOO_MANY}");
            unlisted.insert(plugin.name, TOO_MANY);
            continue;
        }
        // Each entry carries the plugin's `callers` unless they are everyone.
        let callers_bytes = if plugin.callers.is_anyone() { 0 } else { json_len(&plugin.callers) };
        let size: usize =
            plugin.functions.iter().filter(|f| !f.local_only).map(|f| f.catalog_bytes + callers_bytes).sum();
        if bytes + size > source.max_bytes {
            tracing::error!(plugin = %plugin.name, bytes = size, max = source.max_bytes, "the plugin is not listed, so no client can call it: {TOO_LARGE}");
            unlisted.insert(plugin.name, TOO_LARGE);
            continue;
        }
        bytes += size;
        let mut resources = plugin.resources.clone();
        resources.extend(source.resources.iter().cloned());
        resources.sort();
        resources.dedup();
        let origins = Audience::origins(&plugin.callers, |_| source.foreign_tenants);
        for f in plugin.functions.iter().filter(|f| !f.local_only) {
            entries.push(CatalogEntry {
                function: FunctionId::new(plugin.name.clone(), f.name.clone()),
                version: version.clone(),
                sig: Arc::new(f.sig.clone()),
                resources: resources.clone(),
                node: node.clone(),
                cluster: cluster.clone(),
                idempotent: plugin.idempotent,
                exported: f.exported,
                audience: Audience::Everyone,
                origins: origins.clone(),
                callers: plugin.callers.clone(),
                tenant: Some(plugin.tenant.clone()),
            });
        }
    }
    Listing { entries, unlisted }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::{LARGE_REQUEST, LargeRequests, PARSED_PER_BYTE, RequestMemory, least_loaded, local_catalog};
    use crate::metrics::Metrics;
    use weft_proto::ErrorKind;

    /// Plugins whose signatures would not fit the byte budget together are
    /// left out one by one; the others are listed.
    #[test]
    fn a_plugin_whose_signatures_do_not_fit_is_left_out_alone() {
        let runtime = weft_runtime::Runtime::new(weft_runtime::RuntimeConfig::default()).expect("runtime");
        let size = |name: &str| {
            let wasm = weft_bundle::get(name).expect("bundled");
            runtime.load_bytes(&format!("{name}.wasm"), name, wasm, None).expect("load");
            let plugins = runtime.plugins();
            let plugin = plugins.iter().find(|p| p.name == name).expect("loaded");
            plugin.functions.iter().map(|f| f.catalog_bytes).sum::<usize>()
        };
        let (echo, math, text) = (size("echo"), size("math"), size("text"));
        assert!(math > echo.max(text), "math has the largest signatures: {echo} {math} {text}");
        let source = crate::node::PluginSource {
            dir: None,
            resources: vec![],
            max_entries: 100,
            max_bytes: echo + text,
            foreign_tenants: false,
        };
        let (node, cluster) = (weft_proto::NodeId::new("n"), weft_proto::ClusterId::new("c"));
        let listing = local_catalog(&runtime, &node, &cluster, &source);
        let plugins: std::collections::BTreeSet<&str> =
            listing.entries.iter().map(|e| e.function.plugin.as_ref()).collect();
        assert_eq!(plugins, ["echo", "text"].into());
        assert_eq!(listing.unlisted.keys().collect::<Vec<_>>(), ["math"]);
        assert!(listing.unlisted["math"].contains("signatures do not fit"));
    }

    #[tokio::test]
    async fn large_requests_take_turns_and_small_ones_never_wait() {
        let large = || {
            let mut frame = br#"{"role":"rpc","u":"big","cmds":[{"name":"a","fun":"echo","args":[""#.to_vec();
            frame.resize(frame.len() + LARGE_REQUEST, b'x');
            frame.extend_from_slice(br#""]}]}"#);
            frame
        };
        let (requests, metrics) = (RequestMemory::new(1 << 30), Metrics::new());
        let hold = |text: &[u8]| requests.hold(text, &metrics).expect("room");
        let gate = LargeRequests::new(std::time::Duration::from_secs(30));
        let mut first_memory = hold(&large());
        assert_eq!(requests.0.used(), large().len(), "a large request waiting for its turn holds its text");
        let first = gate.decode_in_turn(large(), &mut first_memory, &requests).await;
        assert!(first.turn.is_some(), "a large request holds the turn");
        assert_eq!(requests.0.used(), large().len() * PARSED_PER_BYTE, "and what its parse may take in its turn");
        super::parsed(&mut first_memory, &first.request);
        assert!(requests.0.used() < large().len() * 3, "then what it holds once parsed");
        assert_eq!(first.request.expect("decodes").u, "big");
        let second = tokio::spawn({
            let (gate, requests) = (gate.clone(), requests.clone());
            let mut memory = hold(&large());
            async move { gate.decode(large(), &mut memory, &requests).await }
        });
        let small_text = br#"{"role":"rpc","u":"s","cmds":[]}"#;
        let small = gate.decode(small_text.to_vec(), &mut hold(small_text), &requests).await;
        assert!(small.turn.is_none(), "a small request takes no turn");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "the second large request waits for the first");
        drop(first.turn);
        let second = second.await.expect("task");
        assert_eq!(second.request.expect("decodes").u, "big");
        drop(second.turn);

        // A parse that finds no room in its turn is refused.
        let tight = RequestMemory::new(4 << 20);
        let _held = tight.0.charge(5 << 19).expect("room");
        let mut memory = tight.hold(&large(), &metrics).expect("its text fits");
        let refused = gate.decode(large(), &mut memory, &tight).await;
        let (u, e) = refused.request.expect_err("no room to parse it");
        assert_eq!((u.as_deref(), e.kind), (Some("big"), ErrorKind::RESOURCE_EXHAUSTED), "{e}");
    }

    #[test]
    fn least_loaded_picks_the_minimum_and_spreads_ties() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(least_loaded(vec![("a", 3), ("b", 1), ("c", 2)], |x| x.1, &mut rng), Some(("b", 1)));
        assert_eq!(least_loaded(Vec::<(&str, usize)>::new(), |x| x.1, &mut rng), None);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..200 {
            let (name, _) = least_loaded(vec![("a", 0), ("b", 0), ("c", 5)], |x| x.1, &mut rng).unwrap();
            *seen.entry(name).or_insert(0) += 1;
        }
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), ["a", "b"]);
        assert!(seen.values().all(|&n| n > 60), "ties are shared: {seen:?}");
    }

    #[test]
    fn least_loaded_reads_each_load_once_while_other_calls_move_it() {
        // A link's in-flight count changes between readings under load; read
        // twice, no link was left at the first minimum and the pick panicked.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let reads = std::cell::Cell::new(0);
        let falling = |_: &&str| {
            reads.set(reads.get() + 1);
            10 - reads.get()
        };
        assert_eq!(least_loaded(vec!["a", "b"], falling, &mut rng), Some("b"));
        assert_eq!(reads.get(), 2);
    }
}

//! Runs client requests: plan (weft-fabric) against the catalog, then start
//! each command as soon as its inputs are ready, each in its own task so
//! independent commands use every core. The first failure fails the request
//! and cancels the commands still running (their tasks are aborted).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use weft_fabric::{CatalogEntry, Plan, Scheduler, StepIdx, resolve};
use weft_proto::client::{ExecutionSummary, IntermediateResult, StepSummary};
use weft_proto::{ClusterId, ErrorKind, FunctionId, NodeId, Request, Response, WeftError};
use weft_runtime::{CallTarget, Runtime};

use crate::metrics::Metrics;

pub struct Executor {
    runtime: Arc<Runtime>,
    catalog: RwLock<Vec<CatalogEntry>>,
    node: NodeId,
    cluster: ClusterId,
    metrics: Arc<Metrics>,
    max_commands: usize,
    default_timeout: Duration,
}

struct StepDone {
    step: StepIdx,
    result: Result<Value, WeftError>,
    started: Instant,
    elapsed: Duration,
}

impl Executor {
    pub fn new(
        runtime: Arc<Runtime>,
        node: NodeId,
        cluster: ClusterId,
        resources: &[String],
        metrics: Arc<Metrics>,
        max_commands: usize,
        default_timeout: Duration,
    ) -> Self {
        let catalog = local_catalog(&runtime, &node, &cluster, resources);
        Self { runtime, catalog: RwLock::new(catalog), node, cluster, metrics, max_commands, default_timeout }
    }

    /// Every function callable from this node.
    pub fn catalog(&self) -> Vec<CatalogEntry> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Executes a request and always produces a response (errors included).
    /// If the future is dropped (the client left), the gauges still settle.
    pub async fn execute(&self, req: Request) -> Response {
        let _in_flight = InFlight::enter(&self.metrics);
        let u = req.u.clone();
        match self.run(req, Instant::now()).await {
            Ok(response) => response,
            Err(e) => {
                self.metrics.record_error(e.kind);
                Response::err(u, &e)
            }
        }
    }

    async fn run(&self, req: Request, started: Instant) -> Result<Response, WeftError> {
        if req.cmds.len() > self.max_commands {
            return Err(WeftError::invalid_request(format!(
                "{} commands is over the limit of {} per request (limits.max_commands); split the request",
                req.cmds.len(),
                self.max_commands
            )));
        }
        let plan = {
            let catalog = self.catalog.read().unwrap_or_else(|p| p.into_inner());
            Plan::build(&req, |cmd| resolve(cmd, &catalog))?
        };
        let timeout = req.timeout_ms.map_or(self.default_timeout, Duration::from_millis);
        let deadline = started + timeout;

        let mut scheduler = Scheduler::new(&plan);
        let mut results: Vec<Option<Value>> = vec![None; plan.steps().len()];
        let mut timings: Vec<Option<(Instant, Duration)>> = vec![None; plan.steps().len()];
        let mut running = JoinSet::new();
        for step in scheduler.initial_ready() {
            self.start(&plan, step, &results, deadline, &mut running)?;
        }
        while !scheduler.is_done() {
            let deadline_exceeded = |scheduler: &Scheduler| {
                let unfinished = scheduler.unfinished();
                WeftError::new(
                    ErrorKind::DEADLINE_EXCEEDED,
                    format!(
                        "the request did not finish within {timeout:?} (timeout_ms); unfinished commands: {}",
                        unfinished.join(", ")
                    ),
                )
                .with("unfinished", unfinished)
            };
            let joined = match tokio::time::timeout_at(deadline.into(), running.join_next()).await {
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
            // (its sandbox deadline is the request's) is the request timing out.
            let interrupted = |e: &WeftError| e.details.get("trap").and_then(Value::as_str) == Some("interrupted");
            if matches!(&joined.result, Err(e) if interrupted(e)) && Instant::now() >= deadline {
                return Err(deadline_exceeded(&scheduler));
            }
            let value = joined.result.map_err(|e| {
                let e = if e.message.starts_with("command ") { e } else { e.context(format!("command {name}")) };
                e.with("command", name.clone())
            })?;
            results[joined.step.0] = Some(value);
            timings[joined.step.0] = Some((joined.started, joined.elapsed));
            for next in scheduler.complete(joined.step) {
                self.start(&plan, next, &results, deadline, &mut running)?;
            }
        }

        let mut r = Map::new();
        for &idx in plan.output_steps() {
            r.insert(plan.steps()[idx.0].name.clone(), results[idx.0].clone().unwrap_or(Value::Null));
        }
        let levels = LevelTimes::new(&plan, &timings, started);
        let mut response = Response::ok(req.u.clone(), Value::Object(r));
        if req.include_execution_summary {
            response.execution_summary = Some(self.summary(&req.u, &plan, &timings, &levels, started));
        }
        if req.return_intermediate_results {
            response.intermediate_results = Some(intermediate(&req.u, &plan, &results, &levels));
        }
        Ok(response)
    }

    fn start(
        &self,
        plan: &Plan,
        idx: StepIdx,
        results: &[Option<Value>],
        deadline: Instant,
        running: &mut JoinSet<StepDone>,
    ) -> Result<(), WeftError> {
        let args = plan.bind(idx, results)?;
        let step = &plan.steps()[idx.0];
        let function: FunctionId = step.resolved.function.clone();
        let version = step.resolved.version.clone();
        let runtime = self.runtime.clone();
        let metrics = self.metrics.clone();
        running.spawn(async move {
            let started = Instant::now();
            let target = CallTarget { plugin: &function.plugin, version: Some(&version), function: &function.function };
            let result = runtime.call(target, &args, deadline).await;
            let elapsed = started.elapsed();
            metrics.record_call(&function.to_string(), result.is_ok(), elapsed.as_secs_f64());
            StepDone { step: idx, result, started, elapsed }
        });
        Ok(())
    }

    fn summary(
        &self,
        u: &str,
        plan: &Plan,
        timings: &[Option<(Instant, Duration)>],
        levels: &LevelTimes,
        started: Instant,
    ) -> ExecutionSummary {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let steps: Vec<StepSummary> = plan
            .steps()
            .iter()
            .zip(timings)
            .map(|(s, t)| {
                let (begin, took) = t.unwrap_or((started, Duration::ZERO));
                StepSummary {
                    name: s.name.clone(),
                    function: format!("{}@{}", s.resolved.function, s.resolved.version),
                    node: self.node.to_string(),
                    cluster: self.cluster.to_string(),
                    level: s.level,
                    started_us: micros(begin.saturating_duration_since(started)),
                    duration_us: micros(took),
                    hops: 0,
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
    fn new(plan: &Plan, timings: &[Option<(Instant, Duration)>], started: Instant) -> Self {
        let count = plan.steps().iter().map(|s| s.level as usize + 1).max().unwrap_or(0);
        let mut bounds: Vec<Option<(Instant, Instant)>> = vec![None; count];
        for (step, timing) in plan.steps().iter().zip(timings) {
            let Some((begin, took)) = *timing else {
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

/// MPREG-style intermediate results: per level, its results and everything so far.
fn intermediate(u: &str, plan: &Plan, results: &[Option<Value>], levels: &LevelTimes) -> Vec<IntermediateResult> {
    let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let now = Instant::now();
    let total = levels.span_ms.len() as u32;
    let mut accumulated = Map::new();
    (0..total)
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
        .collect()
}

/// Catalog entries for this node's plugins. Functions whose signatures use
/// resource handles are local-only and never listed.
fn local_catalog(
    runtime: &Runtime,
    node: &NodeId,
    cluster: &ClusterId,
    node_resources: &[String],
) -> Vec<CatalogEntry> {
    let mut entries = Vec::new();
    for plugin in runtime.plugins() {
        let Ok(version) = plugin.version.parse::<semver::Version>() else {
            continue;
        };
        let mut resources = plugin.resources.clone();
        resources.extend(node_resources.iter().cloned());
        resources.sort();
        resources.dedup();
        for f in plugin.functions.iter().filter(|f| !f.local_only) {
            entries.push(CatalogEntry {
                function: FunctionId::new(plugin.name.clone(), f.name.clone()),
                version: version.clone(),
                sig: f.sig.clone(),
                resources: resources.clone(),
                node: node.clone(),
                cluster: cluster.clone(),
            });
        }
    }
    entries
}

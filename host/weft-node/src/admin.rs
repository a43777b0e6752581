//! The admin HTTP API: health, readiness, metrics, plugins, catalog, and
//! `POST /v1/call` (the client protocol over HTTP).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request as HttpRequest, Response as HttpResponse, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_proto::{ErrorKind, Response, WeftError};

use crate::arriving::{ARRIVAL_TIMEOUT, Arriving};
use crate::executor::Executor;
use crate::listen::{Conn, Port, accept_each};
use crate::metrics::Metrics;
use crate::peer::Fabric;

/// Lifecycle as readiness reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
}

#[derive(Default)]
pub struct PhaseCell(AtomicU8);

impl PhaseCell {
    pub fn set(&self, p: Phase) {
        self.0.store(p as u8, Ordering::SeqCst);
    }
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::SeqCst) {
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Starting,
        }
    }
}

pub(crate) struct AdminContext {
    /// The config file, read again by `POST /v1/federation/reload`.
    pub start_config: Arc<crate::node::StartConfig>,
    /// Read again by `POST /v1/plugins/reload`.
    pub plugins: crate::node::PluginSource,
    /// Set once plugins are loaded; until then the API answers 503.
    pub executor: Arc<OnceLock<Arc<Executor>>>,
    pub metrics: Arc<Metrics>,
    pub phase: Arc<PhaseCell>,
    pub node: String,
    pub cluster: String,
    /// Named to WebSocket clients that dial the admin port by mistake.
    pub ws_port: u16,
    pub max_body: usize,
    pub large: crate::executor::LargeRequests,
    pub requests: crate::executor::RequestMemory,
    /// The node's drain waits for these, as for calls over WebSocket.
    pub calls: TaskTracker,
    /// `limits.write_timeout`: a reply the client does not read for this
    /// long closes the connection.
    pub write_timeout: std::time::Duration,
    /// Whether the start config set `auth.operator_tokens`: until the node
    /// serves (and its tenants, reloaded since, decide), only the open
    /// endpoints answer.
    pub guarded: bool,
}

type Body = Full<Bytes>;

/// Serves the admin API on `port` until `shutdown`; each connection is a
/// task of `tracker`.
pub(crate) async fn serve(port: Port, ctx: Arc<AdminContext>, shutdown: CancellationToken, tracker: TaskTracker) {
    let metrics = ctx.metrics.clone();
    let stop = shutdown.clone();
    accept_each(port, metrics, shutdown, tracker, move |conn, _| serve_connection(conn, ctx.clone(), stop.clone()))
        .await;
}

async fn serve_connection(stream: Conn, ctx: Arc<AdminContext>, shutdown: CancellationToken) {
    let write_timeout = ctx.write_timeout;
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route(&ctx, req).await) }
    });
    // A client must send each request's headers within HEADER_TIMEOUT of
    // connecting or of the last response, and read what it is sent within
    // the write timeout, so idle, half-sent and unread connections (and the
    // replies they hold) cannot pile up on the admin port.
    let mut io = tokio_io_timeout::TimeoutStream::new(stream);
    io.set_write_timeout(Some(write_timeout));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(READ_BUFFER)
        .serve_connection(TokioIo::new(Box::pin(io)), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> HttpResponse<Body> {
    json_text(status, value.to_string())
}

fn json_text(status: StatusCode, text: String) -> HttpResponse<Body> {
    let mut r = HttpResponse::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn error_response(status: StatusCode, e: &WeftError) -> HttpResponse<Body> {
    json_response(status, &json!({ "error": e.to_body() }))
}

/// HTTP status for a failed call; the body is always the rpc-response.
fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::PARSE_ERROR
        | ErrorKind::INVALID_REQUEST
        | ErrorKind::INVALID_ARGUMENTS
        | ErrorKind::AMBIGUOUS_FUNCTION => StatusCode::BAD_REQUEST,
        ErrorKind::FUNCTION_NOT_FOUND | ErrorKind::NO_ROUTE => StatusCode::NOT_FOUND,
        ErrorKind::POLICY_DENIED => StatusCode::FORBIDDEN,
        ErrorKind::UNAUTHENTICATED => StatusCode::UNAUTHORIZED,
        ErrorKind::RATE_LIMITED | ErrorKind::RESOURCE_EXHAUSTED => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::DEADLINE_EXCEEDED => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::GUEST_TRAP | ErrorKind::GUEST_ERROR => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::UNAVAILABLE | ErrorKind::HOP_BUDGET_EXHAUSTED => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn starting() -> HttpResponse<Body> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &WeftError::new(ErrorKind::UNAVAILABLE, "the node is starting (loading plugins); retry shortly"),
    )
}

/// The method each endpoint answers (HEAD is served as GET).
fn method_of(path: &str) -> Option<&'static str> {
    match path {
        "/health" | "/livez" | "/readyz" | "/metrics" | "/v1/plugins" | "/v1/catalog" | "/v1/peers"
        | "/v1/topology" | "/v1/federation" | "/v1/routes" | "/v1/routes/explain" | "/v1/alerts" | "/v1/tenants" => {
            Some("GET")
        }
        "/v1/call" | "/v1/plugins/reload" | "/v1/federation/reload" => Some("POST"),
        p if p.starts_with("/v1/alerts/") && p.ends_with("/ack") => Some("POST"),
        _ => None,
    }
}

/// A request's query string, percent-decoded as forms are.
struct Query<'a>(&'a str);

impl Query<'_> {
    fn get(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.0.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    /// Whether `name` is present, with or without a value (`?all`).
    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

async fn route(ctx: &AdminContext, req: HttpRequest<Incoming>) -> HttpResponse<Body> {
    let path = req.uri().path().to_owned();
    let executor = ctx.executor.get();
    let query = Query(req.uri().query().unwrap_or_default());
    let verbose = query.has("verbose");
    let method = if req.method() == Method::HEAD { Method::GET } else { req.method().clone() };
    let upgrade = req.headers().get(hyper::header::UPGRADE).and_then(|u| u.to_str().ok());
    if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        // The mirror of the WebSocket port's 426 for plain HTTP.
        let e = WeftError::invalid_request(format!(
            "this is the node's admin HTTP port: WebSocket clients (weft call, weft bench) connect to its WebSocket port, {} (node.listen)",
            ctx.ws_port
        ))
        .with("ws_port", ctx.ws_port);
        return error_response(StatusCode::BAD_REQUEST, &e);
    }
    if !matches!(path.as_str(), "/health" | "/livez" | "/readyz" | "/v1/call") {
        // The operator's endpoints; a client call has its tenant's token.
        let admitted = match executor {
            Some(e) => e.fabric().tenants().admit_operator(crate::tenants::bearer(req.headers()).as_deref()),
            None if ctx.guarded => return starting(),
            None => Ok(()),
        };
        if let Err(e) = admitted {
            let mut reply = error_response(StatusCode::UNAUTHORIZED, &e);
            reply
                .headers_mut()
                .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
            return reply;
        }
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/health") => {
            let phase = ctx.phase.get();
            let status = if phase == Phase::Ready { "ok" } else { phase_name(phase) };
            let code = if phase == Phase::Ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json_response(code, &json!({ "status": status, "node": ctx.node, "cluster": ctx.cluster }))
        }
        (&Method::GET, "/livez") => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => {
            let phase = ctx.phase.get();
            let ready = phase == Phase::Ready;
            let mut body = json!({ "ready": ready });
            if verbose {
                body["reason"] = json!(match phase {
                    Phase::Ready => "serving",
                    Phase::Starting => "starting: plugins are loading",
                    Phase::Draining => "draining: shutting down, finishing in-flight calls",
                });
            }
            json_response(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
        }
        (&Method::GET, "/metrics") => {
            if let Some(e) = executor {
                // Read at scrape time: the pool changes on every warm call.
                ctx.metrics.warm_idle.set(e.runtime().warm_idle() as i64);
                ctx.metrics.spares_idle.set(e.runtime().spares_idle() as i64);
            }
            ctx.metrics.request_memory.set(i64::try_from(ctx.requests.budget().used()).unwrap_or(i64::MAX));
            let mut r = HttpResponse::new(Full::new(Bytes::from(ctx.metrics.encode())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            r
        }
        // `/v1/call` says so itself, once it has read its request.
        (_, p) if executor.is_none() && p.starts_with("/v1/") && p != "/v1/call" && method_of(p).is_some() => {
            starting()
        }
        (&Method::GET, "/v1/routes") => match executor {
            Some(e) => json_response(StatusCode::OK, &routes(e.fabric())),
            None => starting(),
        },
        (&Method::GET, "/v1/routes/explain") => {
            let cluster = query.get("cluster").filter(|c| !c.is_empty());
            match (executor, cluster) {
                (None, _) => starting(),
                (_, None) => error_response(
                    StatusCode::BAD_REQUEST,
                    &WeftError::invalid_request("name the destination: /v1/routes/explain?cluster=NAME"),
                ),
                (_, Some(c)) if !weft_proto::is_valid_name(&c) => error_response(
                    StatusCode::BAD_REQUEST,
                    &WeftError::invalid_request(format!(
                        "cluster {:?} is not a cluster name: {}",
                        c.chars().take(64).collect::<String>(),
                        weft_proto::NAME_RULE
                    )),
                ),
                (Some(e), Some(c)) => json_response(StatusCode::OK, &explain(e.fabric(), &c)),
            }
        }
        (&Method::GET, "/v1/alerts") => match executor {
            Some(e) => {
                // Active alerts; `?all` adds the resolved ones still remembered.
                let all = query.has("all");
                let alerts: Vec<_> = e.fabric().alerts.list().into_iter().filter(|a| all || a.active).collect();
                json_response(StatusCode::OK, &json!({ "alerts": alerts }))
            }
            None => starting(),
        },
        (&Method::POST, p) if p.starts_with("/v1/alerts/") && p.ends_with("/ack") => {
            let id = p.trim_start_matches("/v1/alerts/").trim_end_matches("/ack").parse::<u64>().ok();
            match (executor, id) {
                (Some(e), Some(id)) if e.fabric().alerts.ack(id) => {
                    json_response(StatusCode::OK, &json!({ "acked": id }))
                }
                (None, _) => starting(),
                _ => error_response(
                    StatusCode::NOT_FOUND,
                    &WeftError::invalid_request(format!("no alert {p}; GET /v1/alerts lists them with their ids")),
                ),
            }
        }
        (&Method::GET, "/v1/tenants") => match executor {
            Some(e) => {
                let tenants = e.fabric().tenants();
                json_response(StatusCode::OK, &json!({ "required": tenants.required(), "tenants": tenants.list() }))
            }
            None => starting(),
        },
        (&Method::GET, "/v1/federation") => match executor {
            Some(e) => json_response(StatusCode::OK, &federation(e.fabric())),
            None => starting(),
        },
        (&Method::POST, "/v1/federation/reload") => match executor {
            Some(e) => match crate::node::reload_federation(e.fabric().clone(), ctx.start_config.clone()).await {
                Ok(summary) => json_response(StatusCode::OK, &summary),
                Err(err) => error_response(
                    StatusCode::BAD_REQUEST,
                    &WeftError::invalid_request(format!(
                        "{err}; nothing was applied: the old policy, tenants and certificate stay in force"
                    )),
                ),
            },
            None => starting(),
        },
        (&Method::POST, "/v1/plugins/reload") => match executor {
            Some(e) => match crate::node::reload_plugins(e.fabric(), &ctx.plugins).await {
                Ok(report) => {
                    let mut body = json!(report);
                    body["unlisted"] = json!(*e.fabric().unlisted());
                    json_response(StatusCode::OK, &body)
                }
                Err(err) => error_response(StatusCode::BAD_REQUEST, &WeftError::invalid_request(err)),
            },
            None => starting(),
        },
        (&Method::GET, "/v1/peers") => match executor {
            Some(e) => json_response(StatusCode::OK, &peers(e.fabric())),
            None => starting(),
        },
        (&Method::GET, "/v1/topology") => match executor {
            Some(e) => json_response(StatusCode::OK, &topology(e.fabric())),
            None => starting(),
        },
        (&Method::GET, "/v1/plugins") => json_response(
            StatusCode::OK,
            &json!({
                "plugins": executor.map(|e| plugins(e)).unwrap_or_default(),
                "failed": executor.map(|e| e.runtime().load_failures()).unwrap_or_default(),
            }),
        ),
        (&Method::GET, "/v1/catalog") => {
            // Not what this cluster only carries toward the clusters a plugin is open to.
            let here = weft_proto::ClusterId::new(&ctx.cluster);
            let functions: Vec<Value> = executor
                .map(|e| e.catalog())
                .unwrap_or_default()
                .iter()
                .filter(|e| e.listed_in(&here))
                .map(|e| {
                    json!({
                        "name": e.function.function,
                        "function_id": e.function.to_string(),
                        "plugin": e.function.plugin,
                        "version": e.version.to_string(),
                        "signature": e.sig.to_string(),
                        "sig": e.sig,
                        "resources": e.resources,
                        "cluster": e.cluster,
                        "node": e.node,
                        "callers": e.callers,
                    })
                })
                .collect();
            json_response(StatusCode::OK, &json!({ "node": ctx.node, "cluster": ctx.cluster, "functions": functions }))
        }
        (&Method::POST, "/v1/call") => call(ctx, req).await,
        _ => match method_of(&path) {
            Some(allowed) => {
                let mut r = error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &WeftError::invalid_request(format!("{path} answers {allowed} only, not {}", req.method())),
                );
                r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allowed));
                r
            }
            None => error_response(
                StatusCode::NOT_FOUND,
                &WeftError::invalid_request(format!(
                    "no such endpoint {} {path}; see docs/OPERATIONS.md for the admin API",
                    req.method()
                )),
            ),
        },
    }
}

/// Live links and recent refusals, as `/v1/peers` shows them.
fn peers(fabric: &Fabric) -> Value {
    let links: Vec<Value> = fabric
        .links()
        .iter()
        .map(|l| {
            let since = l.since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            json!({
                "node": l.remote.node,
                "cluster": l.remote.cluster,
                "addr": l.remote.addr,
                "incarnation": l.remote.incarnation,
                "direction": l.direction,
                "state": if l.is_closed() { "closing" } else { "up" },
                "authorization": "accepted",
                "since_unix_ms": since,
                "in_flight": l.in_flight(),
            })
        })
        .collect();
    json!({
        "node": fabric.me.node,
        "cluster": fabric.me.cluster,
        "links": links,
        "refused": fabric.refusals(),
        "seeds": fabric.seeds(),
    })
}

fn route_json(r: &weft_fabric::Route, now: weft_fabric::Millis) -> Value {
    json!({
        "destination": r.destination,
        "path": r.path,
        "hops": r.hops,
        "latency_us": r.latency_us,
        "reliability": r.reliability,
        "tags": r.tags,
        "via": r.via,
        "via_cluster": r.via_cluster,
        "expires_in_ms": r.expires.0.saturating_sub(now.0),
        "held_down": r.held_until.is_some_and(|t| now < t),
    })
}

/// The route table: every route held, with the winner per destination marked.
fn routes(fabric: &Fabric) -> Value {
    let view = fabric.view();
    let now = view.now();
    let winners = view.routes.winners(now);
    let all: Vec<Value> = view
        .routes
        .all()
        .iter()
        .map(|r| {
            let mut v = route_json(r, now);
            v["best"] = json!(winners.get(&r.destination).is_some_and(|w| w.via == r.via));
            v
        })
        .collect();
    json!({ "cluster": fabric.me.cluster, "transit": fabric.transit(), "routes": all })
}

/// Which route to one cluster wins and why the others lose, and the
/// members that relay the cluster's functions (a node without a bridge
/// of its own reaches it through them).
fn explain(fabric: &Fabric, cluster: &str) -> Value {
    let view = fabric.view();
    let now = view.now();
    let destination = weft_proto::ClusterId::new(cluster);
    let e = view.routes.explain(now, &destination);
    // With every route held down, this node's own calls take the best of them.
    let last_resort = e.winner.is_none().then(|| view.routes.way(now, &destination)).flatten();
    let relayed_by = fabric.relays_to(&destination);
    // A bridge of this node's own carries calls there even while every
    // route through it is held down.
    let bridged_to: Vec<String> =
        fabric.links().iter().filter(|l| l.remote.cluster == destination).map(|l| l.remote.node.to_string()).collect();
    let losers: Vec<Value> = e
        .losers
        .iter()
        .map(|(r, why)| {
            let mut v = route_json(r, now);
            v["lost_because"] = json!(why);
            v
        })
        .collect();
    let rule = "fewest hops, then lowest latency, then highest reliability, then smallest advertiser id";
    // The own cluster needs no route: its functions are called within it.
    let own = destination == fabric.me.cluster;
    // Whatever the routes say, this node's own policy decides first.
    let verdict = fabric.policy().peer(&destination, None);
    let refused = (!own && !verdict.allowed).then(|| json!({"rule": verdict.rule.as_str(), "reason": verdict.reason}));
    json!({
        "destination": cluster,
        "own_cluster": own,
        "refused": refused,
        "winner": e.winner.as_ref().map(|r| route_json(r, now)),
        "last_resort": last_resort.map(|r| route_json(r, now)),
        "losers": losers,
        "refused_routes": e.refused.iter().map(|(via, reason)| json!({"via": via, "reason": reason})).collect::<Vec<_>>(),
        "selection": rule,
        "relayed_by": relayed_by,
        "bridged_to": bridged_to,
        "reachable": own || (refused.is_none() && (e.winner.is_some() || last_resort.is_some() || !relayed_by.is_empty() || !bridged_to.is_empty())),
    })
}

/// The effective federation policy and its decision counters.
fn federation(fabric: &Fabric) -> Value {
    let counters: Vec<Value> = fabric
        .decisions()
        .into_iter()
        .map(
            |((point, outcome, rule), count)| json!({"point": point, "outcome": outcome, "rule": rule, "count": count}),
        )
        .collect();
    let bridges: Vec<Value> = fabric
        .links()
        .iter()
        .filter(|l| l.remote.cluster != fabric.me.cluster)
        .map(|l| json!({"node": l.remote.node, "cluster": l.remote.cluster, "direction": l.direction}))
        .collect();
    json!({
        "node": fabric.me.node,
        "cluster": fabric.me.cluster,
        "policy": *fabric.policy(),
        "rate_limit_per_minute": fabric.rate_limit_per_minute(),
        "counters": counters,
        "foreign_links": bridges,
        "refused": fabric.refusals(),
    })
}

/// This node's plugins; one its catalog leaves out (so no client can call
/// it) has `state` "unlisted" and `unlisted` saying why.
fn plugins(executor: &Executor) -> Vec<Value> {
    let unlisted = executor.fabric().unlisted();
    let plugins = executor.runtime().plugins().into_iter().map(|plugin| {
        let why = unlisted.get(&plugin.name).copied();
        let mut value = json!(plugin);
        if let Some(why) = why {
            value["state"] = json!("unlisted");
            value["unlisted"] = json!(why);
        }
        value
    });
    plugins.collect()
}

/// This cluster as a graph: members (SWIM's view, this node included) and links.
fn topology(fabric: &Fabric) -> Value {
    let view = fabric.view();
    let me = &fabric.me;
    let mut nodes =
        vec![json!({"node": me.node, "addr": me.addr, "incarnation": me.incarnation, "state": "alive", "self": true})];
    nodes.extend(view.members.iter().map(
        |m| json!({"node": m.node, "addr": m.addr, "incarnation": m.incarnation, "state": m.state, "self": false}),
    ));
    let links: Vec<Value> = view.links.iter().map(|(a, b)| json!({"a": a, "b": b})).collect();
    // Other clusters as this node sees them: reachable ones and the way there.
    let now = view.now();
    let mut clusters = vec![json!({ "cluster": me.cluster, "nodes": nodes, "links": links })];
    for (dest, r) in view.routes.winners(now) {
        clusters.push(json!({ "cluster": dest, "path": r.path, "hops": r.hops, "via": r.via }));
    }
    let bridges: Vec<Value> = fabric
        .links()
        .iter()
        .filter(|l| l.remote.cluster != me.cluster)
        .map(|l| json!({"a": me.node, "b": l.remote.node, "clusters": [me.cluster, l.remote.cluster.clone()]}))
        .collect();
    json!({ "clusters": clusters, "bridges": bridges })
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Ready => "ok",
        Phase::Draining => "draining",
    }
}

/// Counts a request in `weft_requests_abandoned_total` if dropped unanswered.
struct Abandoned<'a>(Option<&'a Metrics>);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0 {
            metrics.abandoned.inc();
        }
    }
}

/// The most an admin connection buffers, request headers included (hyper's
/// default is about 400 KB: 2,000 connections each sending an endless
/// header held 750 MB that nothing counted). Longer headers get 431.
const READ_BUFFER: usize = 64 << 10;

/// How long a client has to send a request's headers, counted from the
/// connection or from the last response on it.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a `POST /v1/call` body was not read whole.
enum BodyError {
    TooLarge,
    /// No room in the node's request memory for what had come.
    NoRoom(WeftError),
    Broken(hyper::Error),
}

/// A body of at most `max` bytes, charged to the node's request memory as it
/// arrives.
async fn read_body(mut body: Incoming, max: usize, mut arriving: Arriving) -> Result<Vec<u8>, BodyError> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyError::Broken)?.into_data() else { continue };
        if bytes.len() + data.len() > max {
            return Err(BodyError::TooLarge);
        }
        if let Err(e) = arriving.arrived(data.len()) {
            // Read out and dropped for a moment, so that the client, still
            // sending, reads its answer rather than a reset.
            drop((bytes, arriving));
            let rest = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(crate::ws::DISCARD_FOR, rest).await;
            return Err(BodyError::NoRoom(e));
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

async fn call(ctx: &AdminContext, req: HttpRequest<Incoming>) -> HttpResponse<Body> {
    ctx.metrics.requests.get_or_create(&crate::metrics::TransportLabel { transport: "http" }).inc();
    if ctx.phase.get() == Phase::Draining {
        let e = WeftError::new(
            ErrorKind::UNAVAILABLE,
            "the node is draining (shutting down); send the request to another node",
        );
        ctx.metrics.record_error(e.kind);
        return error_response(StatusCode::SERVICE_UNAVAILABLE, &e);
    }
    let bearer = crate::tenants::bearer(req.headers());
    let reject = |status, err: WeftError| {
        ctx.metrics.record_error(err.kind);
        json_response(status, &serde_json::to_value(Response::err("", &err)).unwrap_or_default())
    };
    let too_large = || {
        ctx.metrics.reject_frame("too_large");
        let message = format!("request body is over limits.max_frame ({} bytes)", ctx.max_body);
        reject(StatusCode::PAYLOAD_TOO_LARGE, WeftError::invalid_request(message))
    };
    // A Content-Length over the limit is refused before any of the body is read.
    if hyper::body::Body::size_hint(req.body()).lower() > ctx.max_body as u64 {
        return too_large();
    }
    let arriving = Arriving::new(ctx.requests.clone());
    let body = match tokio::time::timeout(ARRIVAL_TIMEOUT, read_body(req.into_body(), ctx.max_body, arriving)).await {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::NoRoom(e))) => {
            ctx.metrics.reject_frame("memory");
            return reject(StatusCode::TOO_MANY_REQUESTS, e);
        }
        Ok(Err(BodyError::Broken(e))) => {
            return reject(
                StatusCode::BAD_REQUEST,
                WeftError::invalid_request(format!("cannot read the request body: {e}")),
            );
        }
        Err(_) => {
            ctx.metrics.reject_frame("slow");
            let message =
                format!("the request body did not arrive within {ARRIVAL_TIMEOUT:?}; send the whole body at once");
            return reject(StatusCode::REQUEST_TIMEOUT, WeftError::invalid_request(message));
        }
    };
    let mut memory = match ctx.requests.hold(&body, &ctx.metrics) {
        Ok(memory) => memory,
        Err(e) => {
            let refused = crate::executor::refused_unparsed(body, &e).await;
            let (text, _) = crate::executor::encode(refused, ctx.max_body, &ctx.metrics);
            return json_text(status_of(e.kind), text);
        }
    };
    let decoded = ctx.large.decode(body, &mut memory, &ctx.requests).await;
    // A token in the body wins over the header.
    let response = match crate::executor::with_bearer(decoded.request, &bearer, &ctx.metrics) {
        Ok(request) => match ctx.executor.get() {
            Some(executor) => {
                // hyper drops this future when the client goes away: count it then.
                let mut waiting = Abandoned(Some(&ctx.metrics));
                let response = ctx.calls.track_future(executor.execute(request, decoded.received)).await;
                waiting.0 = None;
                drop(decoded.turn);
                response
            }
            None => return starting(),
        },
        Err(refused) => *refused,
    };
    let (text, error) = crate::executor::encode(response, ctx.max_body, &ctx.metrics);
    let status = error.map_or(StatusCode::OK, status_of);
    let mut reply = json_text(status, text);
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6750: the scheme a token goes in.
        reply.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    }
    reply
}

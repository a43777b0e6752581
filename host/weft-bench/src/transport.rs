//! Weft against the physical limit of its transports, interleaved in one
//! run: the same raw client sends the same echo request to a Weft node and
//! to a minimal echo server written here (tokio-tungstenite for WebSocket,
//! hyper for HTTP), which answers each message with its own bytes. Both
//! servers run in processes of their own, as a node does: a server inside the
//! client's process would share its threads, and each round trip would skip
//! the wake-up of another process that every real client pays. Plus the
//! memory of a node process, idle and busy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::report::Report;
use crate::{Samples, ratio, us};

const REQUEST: &str = r#"{"role":"rpc","u":"b","cmds":[{"name":"e","fun":"echo/echo","args":["hello"]}]}"#;
/// The same call to a copy of echo whose manifest keeps warm instances.
const WARM_REQUEST: &str = r#"{"role":"rpc","u":"b","cmds":[{"name":"e","fun":"warm/echo","args":["hello"]}]}"#;

/// Listens on a free loopback port and runs `serve` for each connection.
async fn serve_each<F, Fut>(serve: F) -> std::io::Result<SocketAddr>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream));
        }
    });
    Ok(addr)
}

/// A WebSocket server that sends every text frame straight back.
async fn bare_ws() -> std::io::Result<SocketAddr> {
    serve_each(|stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() && ws.send(msg).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// An HTTP server that answers every request with its body.
async fn bare_http() -> std::io::Result<SocketAddr> {
    serve_each(|stream| async move {
        let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    })
    .await
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(url: &str) -> Result<Ws, String> {
    tokio_tungstenite::connect_async(url).await.map(|(ws, _)| ws).map_err(|e| e.to_string())
}

async fn ws_round_trip(ws: &mut Ws, request: &'static str) -> Result<(), String> {
    ws.send(Message::Text(request.into())).await.map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(_))) => Ok(()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

type Http = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connect(addr: SocketAddr) -> Result<Http, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn http_round_trip(http: &mut Http, addr: SocketAddr, path: &str) -> Result<(), String> {
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
        .map_err(|e| e.to_string())?;
    let response = http.send_request(req).await.map_err(|e| e.to_string())?;
    response.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Requests per second with `conns` connections, each with one `request` in flight, for `time`.
async fn ws_throughput(url: &str, request: &'static str, conns: usize, time: Duration) -> Result<f64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + time;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut ws = ws_connect(url).await?;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                if ws_round_trip(&mut ws, request).await.is_err() {
                    break;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / time.as_secs_f64())
}

async fn http_throughput(addr: SocketAddr, path: &str, conns: usize, time: Duration) -> Result<f64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + time;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut http = http_connect(addr).await?;
        let (done, path) = (done.clone(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                if http_round_trip(&mut http, addr, &path).await.is_err() {
                    break;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / time.as_secs_f64())
}

/// CPU time (user and system) a process has used so far, from
/// `/proc/PID/stat` in clock ticks of 10 ms (Linux's USER_HZ on x86).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces; utime and
    // stime are the 12th and 13th of them.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    Some(Duration::from_millis((ticks()? + ticks()?) * 10))
}

/// A server's CPU time per request over throughput windows.
#[derive(Default)]
struct CpuPerRequest {
    cpu: Duration,
    requests: f64,
}

impl CpuPerRequest {
    /// Runs `window` (which returns requests per second over `time`) and
    /// adds the CPU time `pid` spent meanwhile.
    async fn measure(
        &mut self,
        pid: u32,
        time: Duration,
        window: impl Future<Output = Result<f64, String>>,
    ) -> Result<f64, String> {
        let before = cpu_time(pid);
        let rate = window.await?;
        if let (Some(before), Some(after)) = (before, cpu_time(pid)) {
            self.cpu += after.saturating_sub(before);
            self.requests += rate * time.as_secs_f64();
        }
        Ok(rate)
    }

    fn micros(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests.max(1.0)
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A `weft node` process of this build (next to this binary), on port 0.
pub(crate) struct NodeProcess {
    child: Child,
    pub(crate) ws: String,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    pub(crate) fn start() -> Result<NodeProcess, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let plugins = dir.path().join("plugins");
        weft_bundle::write_to(&plugins, &["echo", "math", "text", "hostile"]).map_err(|e| e.to_string())?;
        // Enough warm instances for every connection of the throughput run.
        std::fs::copy(plugins.join("echo.wasm"), plugins.join("warm.wasm")).map_err(|e| e.to_string())?;
        std::fs::write(plugins.join("warm.toml"), "warm = 64\n").map_err(|e| e.to_string())?;
        let config = dir.path().join("weft.toml");
        std::fs::write(
            &config,
            "[node]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nplugins = \"plugins\"\n[limits]\ndeadline = \"30s\"\n",
        )
        .map_err(|e| e.to_string())?;
        let mut weft = std::process::Command::new(sibling("weft")?);
        weft.args(["node", "--config", &config.display().to_string()]).env("WEFT_LOG", "error");
        let (child, ready) = spawn_ready(weft)?;
        let field = |k: &str| ready[k].as_str().unwrap_or_default().to_owned();
        let admin = field("admin").trim_start_matches("http://").parse().map_err(|e| format!("{e}"))?;
        Ok(NodeProcess { child: Child(child), ws: field("ws"), admin, _dir: dir })
    }
}

/// The bare echo servers, in a `weft-bench bare-servers` process of their own.
struct BareProcess {
    child: Child,
    ws: String,
    http: SocketAddr,
}

impl BareProcess {
    fn start() -> Result<BareProcess, String> {
        let mut bare = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        bare.arg("bare-servers");
        let (child, ready) = spawn_ready(bare)?;
        let http = ready["http"].as_str().unwrap_or_default().parse().map_err(|e| format!("{e}: {ready}"))?;
        Ok(BareProcess { child: Child(child), ws: ready["ws"].as_str().unwrap_or_default().to_owned(), http })
    }
}

/// `weft-bench bare-servers`: starts both bare servers, prints their
/// addresses as one JSON line and serves until its stdin closes (the bench
/// that started it has gone).
pub async fn serve_bare() -> Result<(), String> {
    let ws = bare_ws().await.map_err(|e| e.to_string())?;
    let http = bare_http().await.map_err(|e| e.to_string())?;
    println!("{}", serde_json::json!({ "ws": format!("ws://{ws}"), "http": http.to_string() }));
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await.is_ok_and(|n| n > 0) {}
    Ok(())
}

/// A program built next to this one.
fn sibling(name: &str) -> Result<std::path::PathBuf, String> {
    Ok(std::env::current_exe().map_err(|e| e.to_string())?.with_file_name(name))
}

/// Starts `command` and reads the JSON line it prints once it listens.
fn spawn_ready(mut command: std::process::Command) -> Result<(std::process::Child, serde_json::Value), String> {
    use std::io::BufRead;
    let program = command.get_program().to_owned();
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e} (build the workspace first)", program.display()))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
    let ready = serde_json::from_str(&line).map_err(|e| format!("{}: {e}: {line:?}", program.display()))?;
    Ok((child, ready))
}

/// A child process, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn bench_transport(smoke: bool, report: &mut Report) -> Result<(), String> {
    let node = NodeProcess::start()?;
    let bare = BareProcess::start()?;
    let (bare_ws, bare_http) = (bare.ws.clone(), bare.http);
    let rounds = if smoke { 50 } else { 5000 };
    let idle_rss = rss_kib(node.child.0.id()).unwrap_or(0);
    // First, while no pool slot has been used yet: what a call in flight
    // holds (its slot's pages count only the first time a slot is used).
    let inflight = if smoke { 8 } else { 100 };
    let per_call = in_flight_kib(&node, inflight).await?;

    // Latency at concurrency 1, interleaved.
    let (mut weft_conn, mut bare_conn) = (ws_connect(&node.ws).await?, ws_connect(&bare_ws).await?);
    let (mut weft_http, mut bare_http_conn) = (http_connect(node.admin).await?, http_connect(bare_http).await?);
    let mut warm_conn = ws_connect(&node.ws).await?;
    let mut s: [Vec<Duration>; 5] = Default::default();
    // A failed HTTP exchange (the connection went away) is counted and the
    // connection opened again, as a load generator would; too many fail the run.
    let mut http_errors = 0;
    for _ in 0..rounds {
        for (conn, request, into) in
            [(&mut weft_conn, REQUEST, 0), (&mut bare_conn, REQUEST, 1), (&mut warm_conn, WARM_REQUEST, 4)]
        {
            let t = Instant::now();
            ws_round_trip(conn, request).await?;
            s[into].push(t.elapsed());
        }
        for (conn, addr, path, into) in
            [(&mut weft_http, node.admin, "/v1/call", 2), (&mut bare_http_conn, bare_http, "/", 3)]
        {
            let t = Instant::now();
            match http_round_trip(conn, addr, path).await {
                Ok(()) => s[into].push(t.elapsed()),
                Err(e) => {
                    http_errors += 1;
                    eprintln!("http exchange with {addr}{path} failed ({e}); reconnecting");
                    *conn = http_connect(addr).await?;
                }
            }
        }
    }
    if http_errors * 10 > rounds {
        return Err(format!("{http_errors} of {rounds} HTTP exchanges failed"));
    }
    let [weft_ws, bare_ws_lat, weft_h, bare_h, warm_ws] = s.map(Samples);
    // The same pair again, alternating blocks of requests instead of single
    // ones: one request to one server right after one to the other couples
    // the two figures through this machine's idle states (docs/BENCHMARKS.md).
    let block = if smoke { 10 } else { 250 };
    let mut blocks: [Vec<Duration>; 2] = Default::default();
    for _ in 0..rounds / block {
        for (conn, into) in [(&mut weft_conn, 0), (&mut bare_conn, 1)] {
            for _ in 0..block {
                let t = Instant::now();
                ws_round_trip(conn, REQUEST).await?;
                blocks[into].push(t.elapsed());
            }
        }
    }
    let [weft_blocks, bare_blocks] = blocks.map(Samples);

    // Throughput at concurrency 64, alternating short windows.
    let window = if smoke { Duration::from_millis(200) } else { Duration::from_secs(2) };
    let reps = if smoke { 1 } else { 5 };
    let (mut tw, mut tb, mut th, mut thb, mut tww) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut busy_rss = idle_rss;
    let (node_pid, bare_pid) = (node.child.0.id(), bare.child.0.id());
    let (mut cw, mut cb, mut cww) = (CpuPerRequest::default(), CpuPerRequest::default(), CpuPerRequest::default());
    for _ in 0..reps {
        tw += cw.measure(node_pid, window, ws_throughput(&node.ws, REQUEST, 64, window)).await?;
        busy_rss = busy_rss.max(rss_kib(node_pid).unwrap_or(0));
        tb += cb.measure(bare_pid, window, ws_throughput(&bare_ws, REQUEST, 64, window)).await?;
        tww += cww.measure(node_pid, window, ws_throughput(&node.ws, WARM_REQUEST, 64, window)).await?;
        th += http_throughput(node.admin, "/v1/call", 64, window).await?;
        thb += http_throughput(bare_http, "/", 64, window).await?;
    }
    let reps = f64::from(reps);
    let (tw, tb, th, thb, tww) = (tw / reps, tb / reps, th / reps, thb / reps, tww / reps);

    report.micros("transport.ws_p50_us", weft_ws.median());
    report.micros("transport.bare_ws_p50_us", bare_ws_lat.median());
    report.micros("transport.http_p50_us", weft_h.median());
    report.micros("transport.bare_http_p50_us", bare_h.median());
    report.micros("transport.ws_warm_p50_us", warm_ws.median());
    report.micros("transport.ws_blocks_p50_us", weft_blocks.median());
    report.micros("transport.bare_ws_blocks_p50_us", bare_blocks.median());
    report.record("transport.ws_req_per_s", tw, "req/s");
    report.record("transport.ws_warm_req_per_s", tww, "req/s");
    report.record("transport.bare_ws_req_per_s", tb, "req/s");
    report.record("transport.http_req_per_s", th, "req/s");
    report.record("transport.ws_cpu_per_req_us", cw.micros(), "us");
    report.record("transport.ws_warm_cpu_per_req_us", cww.micros(), "us");
    report.record("transport.bare_ws_cpu_per_req_us", cb.micros(), "us");
    report.record("transport.bare_http_req_per_s", thb, "req/s");
    println!("### Transport: Weft vs a bare echo server (same client, interleaved; {rounds} calls for latency)\n");
    println!("| measure | Weft (echo plugin) | bare echo server | Weft / bare |\n|---|---|---|---|");
    println!(
        "| WebSocket p50 latency, concurrency 1 | {} | {} | {} |",
        us(weft_ws.median()),
        us(bare_ws_lat.median()),
        ratio(weft_ws.median(), bare_ws_lat.median())
    );
    println!("| WebSocket throughput, 64 connections | {tw:.0} req/s | {tb:.0} req/s | {:.2}x |", tw / tb.max(1.0));
    let cpu_row = |what: &str, c: &CpuPerRequest| {
        let (weft, bare) = (c.micros(), cb.micros());
        println!("| {what} | {weft:.1} µs | {bare:.1} µs | {:.2}x |", weft / bare.max(0.01));
    };
    cpu_row("server CPU per request over those connections", &cw);
    println!(
        "| WebSocket p50 latency, concurrency 1, in blocks of {block} requests | {} | {} | {} |",
        us(weft_blocks.median()),
        us(bare_blocks.median()),
        ratio(weft_blocks.median(), bare_blocks.median())
    );
    println!(
        "| WebSocket p50 latency, concurrency 1, warm echo (manifest `warm`) | {} | {} | {} |",
        us(warm_ws.median()),
        us(bare_ws_lat.median()),
        ratio(warm_ws.median(), bare_ws_lat.median())
    );
    println!(
        "| WebSocket throughput, 64 connections, warm echo (manifest `warm`) | {tww:.0} req/s | {tb:.0} req/s | {:.2}x |",
        tww / tb.max(1.0)
    );
    cpu_row("server CPU per request, warm echo", &cww);
    println!(
        "| HTTP p50 latency, concurrency 1 | {} | {} | {} |",
        us(weft_h.median()),
        us(bare_h.median()),
        ratio(weft_h.median(), bare_h.median())
    );
    println!("| HTTP throughput, 64 connections | {th:.0} req/s | {thb:.0} req/s | {:.2}x |", th / thb.max(1.0));
    println!("\n({http_errors} HTTP exchanges of the latency run failed and were retried on a new connection.)\n");

    report.record("memory.idle_rss_kib", idle_rss as f64, "KiB");
    report.record("memory.busy_rss_kib", busy_rss as f64, "KiB");
    report.record("memory.per_in_flight_call_kib", per_call, "KiB");
    println!(
        "Node process memory (RSS): idle {} MiB with echo, math, text, hostile loaded; {} MiB at most under the load above; {inflight} calls in flight (on fresh pool slots) add {:.0} KiB per call\n",
        idle_rss / 1024,
        busy_rss / 1024,
        per_call
    );
    Ok(())
}

/// RSS the node gains per call while `n` `spin` calls are in flight, in KiB.
async fn in_flight_kib(node: &NodeProcess, n: u32) -> Result<f64, String> {
    let before = rss_kib(node.child.0.id()).unwrap_or(0);
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut ws = ws_connect(&node.ws).await?;
        let spin = r#"{"role":"rpc","u":"s","cmds":[{"name":"s","fun":"spin","args":[]}],"timeout_ms":3000}"#;
        ws.send(Message::Text(spin.into())).await.map_err(|e| e.to_string())?;
        conns.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(node.child.0.id()).unwrap_or(0);
    Ok(during.saturating_sub(before) as f64 / f64::from(n))
}

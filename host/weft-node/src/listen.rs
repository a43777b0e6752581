//! The node's two public ports, client WebSocket and admin HTTP: accepting
//! connections until shutdown, each a task that first completes the TLS
//! handshake where the node serves TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_proto::{ErrorKind, WeftError};

use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// A connection on one of the ports, past its TLS handshake if there was one.
pub(crate) type Conn = Either<TcpStream, TlsStream<TcpStream>>;

/// How long to wait after a failed accept (out of file descriptors and the
/// like) instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// TCP keepalive on accepted connections: probes after a minute without
/// traffic, every 10 s, and 6 unanswered close it (about 2 minutes).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;

/// One listening port: its name in logs and metrics, and TLS if it serves it.
pub(crate) struct Port {
    pub name: &'static str,
    pub listener: TcpListener,
    pub tls: Option<Arc<ServerTls>>,
    /// Connections the node may have open on both ports together
    /// (`limits.max_connections`, `max` of them); one over it is answered
    /// 503 and closed.
    pub open: Arc<Semaphore>,
    pub max: usize,
    /// The most places of `open` this port may hold, so that neither port
    /// can lock the other out: the listen port leaves `ADMIN_RESERVE` to
    /// health checks and metrics scrapes, the admin port half to clients
    /// and peers. A refusal at `most` says how it comes from the node's
    /// limit (`share`).
    pub most: usize,
    pub share: &'static str,
}

/// Connections only the admin port may take.
pub(crate) const ADMIN_RESERVE: usize = 8;

/// A refused connection is logged at most this often (all are counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Refused connections being answered at once, per port. Each holds its
/// socket for up to `REFUSAL_TIMEOUT` beyond the limit, so past this many
/// a refused connection is closed unanswered.
const REFUSALS_ANSWERED: usize = 16;
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Accepts connections on `port` until `shutdown`; each becomes a task of
/// `tracker` that hands the connection to `serve` once it is ready.
pub(crate) async fn accept_each<F, Fut>(
    port: Port,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(Conn, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (mut refusal_logged, mut failure_logged): (Option<Instant>, Option<Instant>) = (None, None);
    let answering = Arc::new(Semaphore::new(REFUSALS_ANSWERED));
    let own = Arc::new(Semaphore::new(port.most));
    let (port_max, port_most, port_name, share) = (port.max, port.most, port.name, port.share);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = port.listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, it fails 20 times a second.
                if failure_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                    failure_logged = Some(Instant::now());
                    tracing::warn!(port = port.name, error = %e, "accept failed (logged once in 10 s; out of file descriptors, raise `ulimit -n` or lower limits.max_connections)");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let mine = own.clone().try_acquire_owned().ok();
        let port_full = mine.is_none();
        let slot = port.open.clone().try_acquire_owned().ok();
        let (Some(mine), Some(slot)) = (mine, slot) else {
            // Answered rather than left in the backlog: the client learns at
            // once, and why. A TLS port would first need a handshake, which
            // a full node does not spend: its refusals are only closed.
            match answering.clone().try_acquire_owned() {
                Ok(answer) if port.tls.is_none() => {
                    let at_share = port_full.then_some((port_name, port_most, share));
                    tracker.spawn(async move {
                        refuse(stream, &refusal(port_max, at_share)).await;
                        drop(answer);
                    });
                }
                _ => drop(stream),
            }
            metrics.connections_refused.inc();
            if refusal_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                refusal_logged = Some(Instant::now());
                tracing::warn!(port = port.name, %peer, "connection refused: limits.max_connections are open (weft_connections_refused_total counts them all)");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        // A client whose host vanished (or whose NAT forgot it) never sends
        // again; keepalive probes find that out within minutes, so the
        // connection's place is not held for good.
        let probes = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&probes.with_retries(KEEPALIVE_PROBES));
        let (tls, metrics, serve, name) = (port.tls.clone(), metrics.clone(), serve.clone(), port.name);
        tracker.spawn(async move {
            let _slot = (mine, slot);
            let conn = match tls {
                None => Either::Left(stream),
                Some(tls) => match tls.accept(stream, name, &metrics).await {
                    Some(stream) => Either::Right(stream),
                    None => return,
                },
            };
            serve(conn, peer).await;
        });
    }
}

/// Why a connection was refused: the node's `limits.max_connections` are
/// open, or `at_share` (port, its most, how that derives from the limit)
/// its port holds all it may.
fn refusal(max: usize, at_share: Option<(&str, usize, &str)>) -> WeftError {
    match at_share {
        Some((port, most, share)) => WeftError::new(
            ErrorKind::RESOURCE_EXHAUSTED,
            format!("the node's {port} port has its limit of {most} connections open ({share}); retry shortly"),
        )
        .with("limit", most),
        None => WeftError::new(
            ErrorKind::RESOURCE_EXHAUSTED,
            format!(
                "the node has its limit of {max} connections open (limits.max_connections); retry shortly, or ask its operator to raise the limit"
            ),
        )
        .with("limit", max),
    }
}

/// Answers a connection over `limits.max_connections` with 503 and the
/// error `e` (an HTTP request on either port: admin requests and WebSocket
/// upgrades alike), then reads what the client sent until it closes, so
/// that closing does not reset the connection before the answer is read.
async fn refuse(mut stream: TcpStream, e: &WeftError) {
    let answer = http_error("503 Service Unavailable", "retry-after: 1", e);
    let exchange = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, exchange).await;
}

/// A whole HTTP/1.1 answer carrying `e` as the admin API does
/// (`{"error": ...}`), for a connection the node answers before (or
/// instead of) serving it; `header` is one more header line.
pub(crate) fn http_error(status: &str, header: &str, e: &WeftError) -> String {
    let body = serde_json::json!({ "error": e.to_body() }).to_string();
    format!(
        "HTTP/1.1 {status}\r\n{header}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

//! The node's two public ports, client WebSocket and admin HTTP: accepting
//! connections until shutdown, each a task that first completes the TLS
//! handshake where the node serves TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// A connection on one of the ports, past its TLS handshake if there was one.
pub(crate) type Conn = Either<TcpStream, TlsStream<TcpStream>>;

/// How long to wait after a failed accept (out of file descriptors and the
/// like) instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One listening port: its name in logs and metrics, and TLS if it serves it.
pub(crate) struct Port {
    pub name: &'static str,
    pub listener: TcpListener,
    pub tls: Option<Arc<ServerTls>>,
    /// Connections the node may have open on both ports together
    /// (`limits.max_connections`); one over it is closed at once.
    pub open: Arc<Semaphore>,
    /// Places of `open` this port leaves to the other: the listen port
    /// keeps `ADMIN_RESERVE`, so that idle clients cannot lock health
    /// checks and metrics scrapes out.
    pub keep_free: usize,
}

/// Connections only the admin port may take.
pub(crate) const ADMIN_RESERVE: usize = 8;

/// A refused connection is logged at most this often (all are counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

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
    let mut refusal_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = port.listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(port = port.name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let room = port.open.available_permits() > port.keep_free;
        let Some(slot) = room.then(|| port.open.clone().try_acquire_owned().ok()).flatten() else {
            // Closed rather than left in the backlog: the client learns at once.
            drop(stream);
            metrics.connections_refused.inc();
            if refusal_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                refusal_logged = Some(Instant::now());
                tracing::warn!(port = port.name, %peer, "connection closed: limits.max_connections are open (weft_connections_refused_total counts them all)");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (tls, metrics, serve, name) = (port.tls.clone(), metrics.clone(), serve.clone(), port.name);
        tracker.spawn(async move {
            let _slot = slot;
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

//! The WebSocket endpoint for clients: JSON requests in text or binary
//! frames, many in flight per connection, each answered in the frame type it
//! came in, matched by `u`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_proto::{ErrorKind, Request, Response, WeftError};
use weft_runtime::budget::Charge;

use crate::arriving::{ARRIVAL_TIMEOUT, MeterHandle, Metered, Refusal};
use crate::executor::{Executor, LARGE_REQUEST, with_bearer};
use crate::listen::{Conn, Port, accept_each};
use crate::metrics::Metrics;
use crate::peer::PeerMsg;

pub(crate) struct WsContext {
    /// The admin API's port, told to plain HTTP clients of this one.
    pub admin_port: u16,
    pub executor: Arc<Executor>,
    pub metrics: Arc<Metrics>,
    pub max_frame: usize,
    pub max_in_flight: usize,
    pub large: crate::executor::LargeRequests,
    pub requests: crate::executor::RequestMemory,
    /// A client that leaves a batch of replies unread this long is taken to
    /// be gone (`limits.write_timeout`): its connection closes and its calls
    /// are cancelled, so it cannot hold replies on the node for ever.
    pub write_timeout: Duration,
}

/// A connection that has not finished its TLS handshake and WebSocket
/// upgrade by then is closed, so silent sockets cannot pile up on the
/// public port.
pub(crate) const UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// WebSocket settings of every connection, client or peer. Frames are
/// bounded by `limits.max_frame`. Reads go into 16 KiB at a time: tungstenite
/// zeroes its whole read chunk before every read, and its default of
/// 128 KiB cost ~4% of node CPU under load for requests of a few hundred bytes.
pub(crate) fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        .read_buffer_size(16 << 10)
        .write_buffer_size(WRITE_BUFFER)
        // Room for the largest frame beside a full buffer, and no more:
        // tungstenite answers every ping with a pong in this buffer, and a
        // peer that pings without reading would otherwise grow it for ever
        // (1.4 GB in 5 s, measured). Pongs past it wait as one.
        .max_write_buffer_size(max_frame + 2 * WRITE_BUFFER)
}

/// tungstenite writes out what it has buffered past this (its default).
const WRITE_BUFFER: usize = 128 << 10;

/// How long the close frame may take to a client that left, or that read
/// nothing for `limits.write_timeout` already.
const CLOSE_AFTER_LEAVING: Duration = Duration::from_secs(1);

/// Serves WebSocket clients (and peers, whose first frame says so) on
/// `port` until `shutdown`; each connection is a task of `tracker`.
pub(crate) async fn serve(port: Port, ctx: Arc<WsContext>, shutdown: CancellationToken, tracker: TaskTracker) {
    let metrics = ctx.metrics.clone();
    let stop = shutdown.clone();
    accept_each(port, metrics, shutdown, tracker, move |conn, peer| {
        serve_connection(conn, ctx.clone(), stop.clone(), peer)
    })
    .await;
}

async fn serve_connection(stream: Conn, ctx: Arc<WsContext>, shutdown: CancellationToken, peer: std::net::SocketAddr) {
    // A bearer token on the upgrade is the token of requests that carry none.
    let mut bearer = None;
    #[expect(clippy::result_large_err, reason = "the handshake callback's type is tungstenite's")]
    let read_token = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
        bearer = crate::tenants::bearer(req.headers());
        Ok(resp)
    };
    // A write that cannot go on for `write_timeout` fails, not a batch of
    // replies that takes longer (the kernel lets a write go on once the
    // client has read a good part of the socket's buffer).
    let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
    stream.set_write_timeout(Some(ctx.write_timeout));
    let stream = BufReader::new(Box::pin(stream));
    let (stream, meter) = Metered::new(stream, ctx.requests.clone(), ARRIVAL_TIMEOUT);
    let upgrade = async {
        let mut stream = stream;
        if refused_plain_http(stream.get_mut(), ctx.admin_port).await {
            return None;
        }
        let config = Some(ws_config(ctx.max_frame));
        Some(tokio_tungstenite::accept_hdr_async_with_config(stream, read_token, config).await)
    };
    let mut ws = match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade).await {
        Ok(None) => return,
        Ok(Some(Ok(ws))) => ws,
        Ok(Some(Err(e))) => {
            tracing::debug!(%peer, error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no websocket upgrade within {UPGRADE_TIMEOUT:?}; closing");
            return;
        }
    };
    meter.delivered();
    // Counted from the upgrade, so connections that never send show too.
    let open = Open::counted(&ctx.metrics.connections);
    // Peers and clients share the port: a connection whose first frame is a
    // peer `hello` becomes a link; anything else is a client.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        first = ws.next() => first,
    };
    if let Some(Ok(message)) = &first {
        took(&meter, message);
    }
    if let Some(Ok(Message::Text(text))) = &first {
        match serde_json::from_str::<PeerMsg>(text) {
            Ok(PeerMsg::Hello(hello)) => {
                drop(open);
                // A peer link keeps its own watch on writes the peer does
                // not take (as a link this node dialled does), not the
                // clients' write timeout.
                ws.get_mut().get_mut().get_mut().as_mut().set_write_timeout_pinned(None);
                ctx.executor.fabric().accept(ws, hello, meter).await;
                return;
            }
            // A peer's hello it cannot read gets a peer's refusal, not a
            // client's error about a missing "role".
            Err(e) if is_hello(text) => {
                drop(open);
                meter.freeze();
                let problem = e.to_string();
                ctx.executor.fabric().refuse_malformed(ws, &problem[..problem.floor_char_boundary(200)]).await;
                return;
            }
            _ => {}
        }
    }
    let (mut sink, mut incoming) = ws.split();
    let mut first = first;
    // This task reads requests and writes every reply. A request that
    // arrives while none is in flight runs right here (no task to spawn, no
    // other worker to wake: the usual one-at-a-time client); one that
    // arrives while another runs gets a task of its own so a connection
    // with many requests in flight uses every core. Replies of spawned
    // calls come back through `replies`. This task is that queue's only
    // reader, so it never waits to send into it: its own answers go
    // straight to the socket.
    let (tx, mut replies) = mpsc::channel::<Message>(256);
    let mut inline: Option<BoxFuture<'static, Message>> = None;
    let permits = Arc::new(Semaphore::new(ctx.max_in_flight));
    let mut calls = JoinSet::new();
    // A large request that came while the connection had no place free:
    // nothing more is read until one is (its `u` is not known before it is
    // parsed, so it cannot be refused like a small one).
    let mut parked: Option<(Vec<u8>, bool, Charge)> = None;
    let mut client_left = false;
    // Closed by the node while the client may still be sending (the rest
    // of a frame it refused, say).
    let mut still_sending = false;
    // A frame refused while it arrived: its close frame goes once the calls
    // in flight have answered, which nothing more is read past.
    let mut refused: Option<CloseFrame> = None;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = calls.join_next(), if !calls.is_empty() => continue,
            Ok(permit) = permits.clone().acquire_owned(), if parked.is_some() => {
                let (bytes, binary, held) = parked.take().expect("guarded by the condition");
                let held = Held { _permit: permit, memory: held };
                calls.spawn(large_request(ctx.clone(), bytes, binary, bearer.clone(), held, tx.clone()));
                continue;
            }
            reply = async { inline.as_mut().expect("guarded by the condition").await }, if inline.is_some() => {
                inline = None;
                if write_replies(&mut sink, reply, &mut replies).await.is_err() {
                    client_left = true;
                    break;
                }
                continue;
            }
            Some(reply) = replies.recv() => {
                if write_replies(&mut sink, reply, &mut replies).await.is_err() {
                    client_left = true;
                    break;
                }
                continue;
            }
            msg = next_message(&mut first, &mut incoming, &meter), if parked.is_none() => msg,
        };
        if let Some(Err(WsError::Io(_))) = &msg
            && let Some(refusal) = meter.refusal()
        {
            refused = Some(refused_arriving(&ctx.metrics, refusal, &peer));
            still_sending = true;
            break;
        }
        let (bytes, binary) = match msg {
            Some(Ok(Message::Text(t))) => (t.as_bytes().to_vec(), false),
            Some(Ok(Message::Binary(b))) => (b.to_vec(), true),
            Some(Ok(Message::Ping(_))) => {
                // Its pong is a reply like any other: nothing more is read
                // until the client takes it, and a client that does not
                // within write_timeout is let go.
                if tokio::time::timeout(ctx.write_timeout, sink.flush()).await.map_or(true, |flushed| flushed.is_err())
                {
                    client_left = true;
                    break;
                }
                continue;
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => {
                client_left = true;
                break;
            }
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                ctx.metrics.reject_frame("too_large");
                tracing::warn!(%peer, size, max_size, "frame over limits.max_frame; closing the connection");
                refused = Some(over_max_frame(size, max_size));
                still_sending = true;
                break;
            }
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))
            | Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                // A client that simply went away is not a protocol violation.
                client_left = true;
                break;
            }
            Some(Err(e)) => {
                ctx.metrics.reject_frame("protocol");
                tracing::debug!(%peer, error = %e, "websocket error; closing the connection");
                // Say why, as RFC 6455 asks: 1007 for text that is not
                // UTF-8, 1002 for other violations (reasons fit in 123 bytes).
                let code = if matches!(e, WsError::Utf8(_)) { CloseCode::Invalid } else { CloseCode::Protocol };
                let close = Message::Close(Some(close_frame(code, &e.to_string())));
                let _ = tokio::time::timeout(ctx.write_timeout, sink.send(close)).await;
                (client_left, still_sending) = (true, true);
                break;
            }
        };
        ctx.metrics.requests.get_or_create(&crate::metrics::TransportLabel { transport: "ws" }).inc();
        let (request, held) = match intake(&ctx, bytes, &bearer, &permits) {
            Intake::Run(request, held) => (request, held),
            Intake::Large(bytes, held) => {
                // Its turn is awaited in a task of its own, so that the calls
                // running on this connection are answered meanwhile.
                calls.spawn(large_request(ctx.clone(), bytes, binary, bearer.clone(), held, tx.clone()));
                continue;
            }
            Intake::Park(bytes, memory) => {
                parked = Some((bytes, binary, memory));
                continue;
            }
            Intake::Answer(refused) => {
                if write_replies(&mut sink, reply(&ctx.executor, *refused, binary), &mut replies).await.is_err() {
                    client_left = true;
                    break;
                }
                continue;
            }
            Intake::Refused(bytes, e) => {
                let (executor, tx) = (ctx.executor.clone(), tx.clone());
                calls.spawn(async move {
                    let answer = crate::executor::refused_unparsed(bytes, &e).await;
                    let _ = tx.send(reply(&executor, answer, binary)).await;
                });
                continue;
            }
        };
        let executor = ctx.executor.clone();
        let received = Instant::now();
        let call = async move {
            let response = executor.execute(request, received).await;
            drop(held);
            reply(&executor, response, binary)
        };
        if inline.is_none() && calls.is_empty() {
            inline = Some(Box::pin(call));
        } else {
            let tx = tx.clone();
            calls.spawn(async move {
                let _ = tx.send(call.await).await;
            });
        }
    }

    if client_left {
        // Nobody is left to read the answers: cancel the work that is
        // still running (answered calls are only reaped, not counted).
        while calls.try_join_next().is_some() {}
        let abandoned = calls.len() + usize::from(inline.is_some());
        calls.abort_all();
        ctx.metrics.abandoned.inc_by(abandoned as u64);
    } else {
        // Draining, closing, or a frame refused: the calls in flight finish
        // and answer (at the end of the node's grace period, with
        // UNAVAILABLE), and a request that arrives meanwhile is turned away
        // at once, so that none goes unanswered.
        drop(tx);
        if let Some((bytes, binary, _)) = parked.take() {
            let _ = sink.feed(turned_away(&ctx.executor, &bytes, binary)).await;
        }
        // Not past a frame the node refused: what follows is its rest.
        let mut reading = !still_sending;
        loop {
            // Every call answered and every answer written.
            if inline.is_none() && calls.is_empty() && replies.is_closed() && replies.is_empty() {
                break;
            }
            let written = tokio::select! {
                reply = async { inline.as_mut().expect("guarded by the condition").await }, if inline.is_some() => {
                    inline = None;
                    sink.feed(reply).await
                }
                Some(_) = calls.join_next(), if !calls.is_empty() => Ok(()),
                Some(reply) = replies.recv() => sink.feed(reply).await,
                msg = next_message(&mut first, &mut incoming, &meter), if reading => match msg {
                    Some(Ok(Message::Text(t))) => sink.feed(turned_away(&ctx.executor, t.as_bytes(), false)).await,
                    Some(Ok(Message::Binary(b))) => sink.feed(turned_away(&ctx.executor, &b, true)).await,
                    Some(Ok(_)) => Ok(()),
                    _ => {
                        reading = false;
                        Ok(())
                    }
                },
                else => break,
            };
            // A client that reads nothing is not waited for past the grace.
            if written.is_err() || tokio::time::timeout(ctx.write_timeout, sink.flush()).await.is_err() {
                break;
            }
        }
        let close = refused.unwrap_or(CloseFrame { code: CloseCode::Away, reason: "node shutting down".into() });
        let _ = tokio::time::timeout(ctx.write_timeout, sink.send(Message::Close(Some(close)))).await;
    }
    // A client that reads nothing would keep even the close frame waiting;
    // one that stopped reading (or left) already had its write_timeout.
    let close_wait = if client_left { CLOSE_AFTER_LEAVING } else { ctx.write_timeout };
    let _ = tokio::time::timeout(close_wait, sink.close()).await;
    // Closing a socket with unread bytes resets it, and the client's
    // kernel then drops the close frame it had not read yet: it would learn
    // nothing of why. What it sends for a moment more is read and dropped.
    if still_sending && let Ok(mut ws) = sink.reunite(incoming) {
        meter.freeze();
        let mut unread = [0u8; 16 << 10];
        let discard = async { while ws.get_mut().read(&mut unread).await.is_ok_and(|n| n > 0) {} };
        let _ = tokio::time::timeout(DISCARD_FOR, discard).await;
    }
}

/// How long the node reads and drops what a client still sends of a request
/// it refused, so that the answer (a close frame, or an HTTP error) reaches
/// the client rather than a reset.
pub(crate) const DISCARD_FOR: Duration = Duration::from_secs(2);

/// The message read before the loop, then the next from the client, whose
/// bytes are no longer charged as arriving.
async fn next_message(
    first: &mut Option<Result<Message, WsError>>,
    incoming: &mut SplitStream<WebSocketStream<ClientIo>>,
    meter: &MeterHandle,
) -> Option<Result<Message, WsError>> {
    if let Some(message) = first.take() {
        return Some(message);
    }
    let message = incoming.next().await;
    if let Some(Ok(taken)) = &message {
        took(meter, taken);
    }
    message
}

/// Tells the meter what a message took off the connection: a whole request,
/// or a control frame's few bytes. A ping between the fragments of a
/// message leaves the fragments charged, and their deadline running.
pub(crate) fn took(meter: &MeterHandle, message: &Message) {
    match message {
        Message::Text(_) | Message::Binary(_) => meter.delivered(),
        // Its payload, two bytes of header and four of mask.
        Message::Ping(payload) | Message::Pong(payload) => meter.took(payload.len() + 6),
        _ => {}
    }
}

/// The answer to a request that arrived while the node drains.
fn turned_away(executor: &Executor, bytes: &[u8], binary: bool) -> Message {
    let u = match Request::decode(bytes) {
        Ok(request) => Some(request.u),
        Err((u, _)) => u,
    };
    let e = WeftError::new(
        ErrorKind::UNAVAILABLE,
        format!(
            "node {} is shutting down and takes no new requests; send it to another node",
            executor.fabric().me.node
        ),
    );
    reply(executor, Response::err(u.unwrap_or_default(), &e), binary)
}

/// `response` as a frame of the type its request came in.
fn reply(executor: &Executor, response: Response, binary: bool) -> Message {
    let (text, _) = executor.encode(response);
    if binary { Message::Binary(text.into()) } else { Message::Text(text.into()) }
}

/// What becomes of a request read from a connection.
enum Intake {
    /// Run it.
    Run(Request, Held),
    /// A large one: parsed in a task of its own, in its turn.
    Large(Vec<u8>, Held),
    /// A large one with no place free on its connection: nothing more is
    /// read until one is.
    Park(Vec<u8>, Charge),
    /// Refused, with this answer.
    Answer(Box<Response>),
    /// Refused before it was parsed, with this error: its answer needs its
    /// `u` (`refused_unparsed`).
    Refused(Vec<u8>, WeftError),
}

/// Takes a request's share of the node's request memory, parses it unless
/// it is large, and takes its place on the connection.
fn intake(ctx: &WsContext, bytes: Vec<u8>, bearer: &Option<String>, permits: &Arc<Semaphore>) -> Intake {
    let mut memory = match ctx.requests.hold(&bytes, &ctx.metrics) {
        Ok(memory) => memory,
        Err(e) => return Intake::Refused(bytes, e),
    };
    if bytes.len() > LARGE_REQUEST {
        return match permits.clone().try_acquire_owned() {
            Ok(permit) => Intake::Large(bytes, Held { _permit: permit, memory }),
            Err(_) => Intake::Park(bytes, memory),
        };
    }
    let decoded = Request::decode(&bytes);
    drop(bytes);
    crate::executor::parsed(&mut memory, &decoded);
    let request = match with_bearer(decoded, bearer, &ctx.metrics) {
        Ok(request) => request,
        Err(refused) => return Intake::Answer(refused),
    };
    match permits.clone().try_acquire_owned() {
        Ok(permit) => Intake::Run(request, Held { _permit: permit, memory }),
        Err(_) => {
            let e = WeftError::new(
                ErrorKind::RESOURCE_EXHAUSTED,
                format!(
                    "{} requests are already in flight on this connection (limits.max_in_flight_per_connection); wait for replies or open another connection",
                    ctx.max_in_flight
                ),
            )
            .with("limit", ctx.max_in_flight);
            ctx.metrics.record_error(e.kind);
            Intake::Answer(Box::new(Response::err(request.u, &e)))
        }
    }
}

/// What a request in flight holds until it is answered: its place on its
/// connection and its share of the node's request memory.
struct Held {
    _permit: OwnedSemaphorePermit,
    memory: Charge,
}

/// Runs one large request of a connection: waits for the node's turn,
/// parses it off the workers, executes it and sends the reply back to the
/// connection's task.
async fn large_request(
    ctx: Arc<WsContext>,
    bytes: Vec<u8>,
    binary: bool,
    bearer: Option<String>,
    mut held: Held,
    replies: mpsc::Sender<Message>,
) {
    let decoded = ctx.large.decode(bytes, &mut held.memory, &ctx.requests).await;
    let response = match with_bearer(decoded.request, &bearer, &ctx.metrics) {
        Ok(request) => ctx.executor.execute(request, decoded.received).await,
        Err(refused) => *refused,
    };
    drop((held, decoded.turn));
    let _ = replies.send(reply(&ctx.executor, response, binary)).await;
}

/// The close frame for a request (or peer message) refused while it
/// arrived (counted).
pub(crate) fn refused_arriving(metrics: &Metrics, refusal: Refusal, peer: &dyn std::fmt::Display) -> CloseFrame {
    match refusal {
        Refusal::NoRoom(e) => {
            metrics.reject_frame("memory");
            metrics.record_error(e.kind);
            tracing::warn!(%peer, error = %e, "a request still arriving found no room; closing the connection");
            close_frame(
                CloseCode::Again,
                "no room in limits.max_request_memory for a request still arriving; retry shortly",
            )
        }
        Refusal::TooSlow => {
            metrics.reject_frame("slow");
            metrics.record_error(ErrorKind::INVALID_REQUEST);
            tracing::debug!(%peer, "a request did not arrive within {ARRIVAL_TIMEOUT:?}; closing the connection");
            let secs = ARRIVAL_TIMEOUT.as_secs();
            close_frame(CloseCode::Policy, &format!("a request did not arrive whole within {secs} s; send it at once"))
        }
    }
}

/// The close frame for a frame of `size` bytes over the limit of `max_size`.
pub(crate) fn over_max_frame(size: usize, max_size: usize) -> CloseFrame {
    close_frame(CloseCode::Size, &format!("frame of {size} bytes is over limits.max_frame ({max_size} bytes)"))
}

/// A close frame whose reason is cut to fit: a close frame's payload holds
/// 125 bytes, two of them the code.
pub(crate) fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame { code, reason: reason[..reason.floor_char_boundary(120)].to_owned().into() }
}

/// Whether a first frame is meant as a peer's `hello` (`"t": "hello"`); one
/// with a `"role"` is a client's request, whatever else it carries.
fn is_hello(text: &str) -> bool {
    text.contains("\"hello\"")
        && serde_json::from_str::<serde_json::Value>(text)
            .is_ok_and(|v| v.get("t").and_then(|t| t.as_str()) == Some("hello") && v.get("role").is_none())
}

/// One client connection in the `connections` gauge while it lives.
struct Open<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Open<'a> {
    fn counted(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Answers a whole HTTP request that is not a WebSocket upgrade this node
/// can take (plain HTTP from a client that meant the admin port, or an
/// upgrade without the version or key of RFC 6455) with its status and why,
/// instead of a closed connection; true if it did. Looks only at what the
/// first read brought: anything else is left to the WebSocket handshake.
async fn refused_plain_http(stream: &mut Buffered, admin_port: u16) -> bool {
    let Ok(head) = stream.fill_buf().await else {
        return false;
    };
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    let Some((status, header, e)) = refusal(&head, admin_port) else {
        return false;
    };
    let answer = crate::listen::http_error(status, header, &e);
    let _ = stream.get_mut().write_all(answer.as_bytes()).await;
    let _ = stream.get_mut().shutdown().await;
    true
}

/// What a complete request `head` (lower case) that this port cannot
/// upgrade is answered: status, one more header line, and the error.
fn refusal(head: &str, admin_port: u16) -> Option<(&'static str, &'static str, WeftError)> {
    if !head.contains("\r\n\r\n") {
        return None;
    }
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    // The upgrade header, not any mention (a path like /websocket).
    if !header("upgrade:").is_some_and(|v| v.contains("websocket")) {
        // The admin port (same host, same TLS) is how `weft catalog --node
        // ws://...` finds the admin API.
        let e = WeftError::invalid_request(format!(
            "this is the node's WebSocket port: connect a WebSocket client to it (weft call --node ws://HOST:PORT), or send HTTP to the admin port, {admin_port} (POST /v1/call)"
        ))
        .with("admin_port", admin_port);
        return Some(("426 Upgrade Required", "upgrade: websocket", e));
    }
    if header("sec-websocket-version:") != Some("13") {
        let e = WeftError::invalid_request(
            "the node speaks WebSocket version 13 (RFC 6455): the upgrade needs the header sec-websocket-version: 13",
        );
        return Some(("426 Upgrade Required", "sec-websocket-version: 13", e));
    }
    if header("sec-websocket-key:").is_none_or(str::is_empty) {
        let e = WeftError::invalid_request("a WebSocket upgrade needs a sec-websocket-key header (RFC 6455)");
        return Some(("400 Bad Request", "sec-websocket-version: 13", e));
    }
    None
}

/// A client connection as the WebSocket reads and writes it: its reads
/// charged while a request arrives, buffered (for the look at a plain HTTP
/// request), each write bounded by the write timeout.
type ClientIo = Metered<Buffered>;

type Buffered = BufReader<std::pin::Pin<Box<tokio_io_timeout::TimeoutStream<Conn>>>>;

/// Writes `first` and every reply already waiting, then flushes once: replies
/// that are ready together go out in one write. Fails when a write could
/// not go on for `limits.write_timeout`.
async fn write_replies(
    sink: &mut SplitSink<WebSocketStream<ClientIo>, Message>,
    first: Message,
    waiting: &mut mpsc::Receiver<Message>,
) -> Result<(), WsError> {
    let write = async {
        sink.feed(first).await?;
        while let Ok(next) = waiting.try_recv() {
            sink.feed(next).await?;
        }
        sink.flush().await
    };
    write.await.inspect_err(|e| {
        if matches!(e, WsError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut) {
            tracing::debug!(
                "the client took too little of its replies for limits.write_timeout; closing its connection"
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn only_a_whole_rfc_6455_upgrade_goes_on_to_the_handshake() {
        let status = |head: &str| refusal(head, 7701).map(|(status, header, e)| (status, header, e.message));
        let upgrade = "get / http/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n";
        let good = format!("{upgrade}sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
        assert_eq!(status(&good), None);
        assert_eq!(status(&good[..good.len() - 2]), None, "an incomplete head is left to the handshake");
        let (code, header, message) = status("get /websocket http/1.1\r\nhost: x\r\n\r\n").unwrap();
        assert_eq!((code, header), ("426 Upgrade Required", "upgrade: websocket"));
        assert!(message.contains("admin port, 7701"), "{message}");
        let (code, header, message) =
            status(&format!("{upgrade}sec-websocket-version: 8\r\nsec-websocket-key: a2V5\r\n\r\n")).unwrap();
        assert_eq!((code, header), ("426 Upgrade Required", "sec-websocket-version: 13"));
        assert!(message.contains("version 13"), "{message}");
        let (code, _, message) = status(&format!("{upgrade}sec-websocket-version: 13\r\n\r\n")).unwrap();
        assert_eq!(code, "400 Bad Request");
        assert!(message.contains("sec-websocket-key"), "{message}");
    }
}

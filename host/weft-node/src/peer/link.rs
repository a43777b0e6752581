//! One live link to another node: a writer fed by a bounded queue, a reader
//! that answers forwarded calls itself and hands membership and catalog
//! messages to the cluster task, and the table of calls this node is
//! waiting on. When the link ends, every waiting call fails with UNAVAILABLE
//! and every call the peer asked for is cancelled.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use weft_fabric::CatalogEntry;
use weft_proto::{Caller, ClusterId, ErrorKind, FunctionId, NodeId, WeftError};
use weft_runtime::CallTarget;

use super::wire::{ForwardCall, Hello, PeerMsg};
use super::{Event, Fabric, Point};
use crate::arriving::MeterHandle;
use crate::executor::StepCall;
use crate::signing::CallClaim;
use crate::ws::close_frame;

/// Outbound messages waiting for the writer, in each of its two lanes:
/// gossip beyond this is dropped (SWIM and the catalog repair losses),
/// calls and replies wait for room.
const QUEUE: usize = 1024;

/// A peer that takes no frame for this long is taken to be gone: a node
/// that stops reading would otherwise hold every reply queued for it.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// What a link's writer sends: gossip (membership, catalog, routes, pings)
/// goes first, in a lane of its own, so that a queue of calls under load
/// never delays or drops the probes that tell a live member from a dead one.
pub(super) struct Outbound {
    gossip: mpsc::Receiver<PeerMsg>,
    data: mpsc::Receiver<PeerMsg>,
}

impl Outbound {
    async fn next(&mut self) -> Option<PeerMsg> {
        tokio::select! {
            biased;
            Some(msg) = self.gossip.recv() => Some(msg),
            Some(msg) = self.data.recv() => Some(msg),
            else => None,
        }
    }

    fn try_next(&mut self) -> Option<PeerMsg> {
        self.gossip.try_recv().or_else(|_| self.data.try_recv()).ok()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

type Waiter = oneshot::Sender<(Result<Value, WeftError>, NodeId)>;

pub struct Link {
    pub remote: Hello,
    pub direction: Direction,
    pub since: SystemTime,
    /// Gossip lane (`Outbound`).
    gossip: mpsc::Sender<PeerMsg>,
    /// Calls, replies and cancels, in order.
    tx: mpsc::Sender<PeerMsg>,
    /// Calls this node sent and awaits.
    waiting: Mutex<HashMap<u64, Waiter>>,
    /// Calls the peer sent that run here.
    serving: Mutex<HashMap<u64, AbortHandle>>,
    /// Bytes of the peer's calls running here and of their replies not yet
    /// written (`held_by`, by call id): a peer that sends large calls and
    /// reads no replies is refused more, rather than growing the node's
    /// memory until the link stalls out.
    held: Arc<Semaphore>,
    held_limit: usize,
    held_by: Mutex<HashMap<u64, OwnedSemaphorePermit>>,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    closed: CancellationToken,
    /// The peer said goodbye (it is draining): no new calls go to it,
    /// while the replies of those running still come back.
    leaving: AtomicBool,
    probes: Mutex<Probes>,
    /// Bytes of this peer's messages waiting for the cluster task. When it is
    /// spent the link stops reading, so TCP pushes back on a peer that sends
    /// faster than this node handles, instead of the queue growing.
    inbound: Arc<Semaphore>,
}

/// A message's share of its link's inbound budget, given back when the
/// cluster task has handled it.
pub struct Queued {
    permit: OwnedSemaphorePermit,
}

impl Queued {
    /// The message's size in bytes.
    fn bytes(&self) -> u32 {
        u32::try_from(self.permit.num_permits()).unwrap_or(u32::MAX)
    }
}

/// Round trips of pings on this link: the measured latency and delivery
/// ratio that routes learnt over it carry.
#[derive(Default)]
struct Probes {
    /// The ping in flight: nonce and when it was sent.
    out: Option<(u64, Instant)>,
    /// Smoothed one-way latency (half the round trip), µs.
    latency_us: Option<u64>,
    /// Smoothed delivery ratio, ‰.
    reliability: u16,
}

impl Link {
    /// Takes `bytes` of the inbound budget, waiting while the cluster task
    /// catches up; `None` once the link is closed.
    async fn take_inbound(&self, bytes: usize) -> Option<Queued> {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        if let Ok(permit) = self.inbound.clone().try_acquire_many_owned(bytes) {
            return Some(Queued { permit });
        }
        tracing::debug!(peer = %self.remote.node, "peer sends faster than this node handles; reading from it paused");
        tokio::select! {
            permit = self.inbound.clone().acquire_many_owned(bytes) => permit.ok().map(|permit| Queued { permit }),
            _ = self.closed.cancelled() => None,
        }
    }

    /// `inbound_budget` must be at least the largest frame a peer may send;
    /// the peer's calls and their replies may hold four times that.
    pub(super) fn new(remote: Hello, direction: Direction, inbound_budget: usize) -> (Arc<Link>, Outbound) {
        let (tx, data) = mpsc::channel(QUEUE);
        let (gossip_tx, gossip) = mpsc::channel(QUEUE);
        let held_limit = inbound_budget.saturating_mul(2).min(u32::MAX as usize);
        let link = Link {
            remote,
            direction,
            since: SystemTime::now(),
            gossip: gossip_tx,
            tx,
            waiting: Mutex::default(),
            serving: Mutex::default(),
            held: Arc::new(Semaphore::new(held_limit)),
            held_limit,
            held_by: Mutex::default(),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            closed: CancellationToken::new(),
            leaving: AtomicBool::new(false),
            probes: Mutex::new(Probes { reliability: 1000, ..Probes::default() }),
            inbound: Arc::new(Semaphore::new(inbound_budget)),
        };
        (Arc::new(link), Outbound { gossip, data })
    }

    pub fn node(&self) -> &NodeId {
        &self.remote.node
    }

    /// Calls this node has in flight over the link: the load used to pick a node.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Closes the link for good: calls waiting on it fail with UNAVAILABLE
    /// (their senders are dropped) and calls it was serving stop.
    pub(super) fn end(&self) {
        self.close();
        lock(&self.waiting).clear();
        for (_, task) in lock(&self.serving).drain() {
            task.abort();
        }
    }

    /// Whether the peer said goodbye; a leaving peer takes no new calls.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// Sends a ping. A previous ping still unanswered counts as lost.
    pub fn probe(&self) {
        let nonce = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut p = lock(&self.probes);
        if p.out.take().is_some() {
            p.reliability = smooth(p.reliability.into(), 0) as u16;
        }
        p.out = Some((nonce, Instant::now()));
        drop(p);
        self.send(PeerMsg::Ping { nonce });
    }

    fn answered(&self, nonce: u64) {
        let mut p = lock(&self.probes);
        let Some((sent, at)) = p.out else {
            return;
        };
        if sent != nonce {
            return;
        }
        p.out = None;
        let one_way = u64::try_from(at.elapsed().as_micros() / 2).unwrap_or(u64::MAX);
        p.latency_us = Some(p.latency_us.map_or(one_way, |l| smooth(l, one_way)));
        p.reliability = smooth(p.reliability.into(), 1000) as u16;
    }

    /// (one-way latency µs, delivery ‰) measured so far; None before the first answer.
    pub fn measured(&self) -> Option<(u64, u16)> {
        let p = lock(&self.probes);
        p.latency_us.map(|l| (l, p.reliability))
    }

    /// Queues a message without waiting, gossip in its own lane; false if
    /// the link is closed or that lane is full.
    pub fn send(&self, msg: PeerMsg) -> bool {
        let lane = if msg.is_gossip() { &self.gossip } else { &self.tx };
        lane.try_send(msg).is_ok()
    }

    /// Runs one call on the peer and waits for its answer and the node it
    /// ran on (the peer, or a node the peer passed it to). If this future is
    /// dropped first (deadline, client gone), the peer is told to cancel.
    pub async fn call(&self, mut call: ForwardCall) -> (Result<Value, WeftError>, NodeId) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        call.id = id;
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id, tx);
        let mut pending = Pending { link: self, id, answered: false };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        // `run` closes the link before it fails the waiters; a call
        // registered after that would wait on a writer that is gone.
        if self.is_closed() || self.tx.send(PeerMsg::Call(call)).await.is_err() {
            return (Err(self.lost()), self.remote.node.clone());
        }
        let answer = rx.await.unwrap_or_else(|_| (Err(self.lost()), self.remote.node.clone()));
        pending.answered = true;
        answer
    }

    fn lost(&self) -> WeftError {
        WeftError::new(
            ErrorKind::UNAVAILABLE,
            format!(
                "node {} went away before answering (its link closed); the call may or may not have run there, retry if it is safe",
                self.remote.node
            ),
        )
        .with("node", self.remote.node.to_string())
        .with("link_lost", true)
    }
}

/// An exponentially weighted moving average, new samples weighing 1/4.
fn smooth(old: u64, sample: u64) -> u64 {
    (old * 3 + sample) / 4
}

/// Forgets a call this node stopped waiting for, and tells the peer.
struct Pending<'a> {
    link: &'a Link,
    id: u64,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.link.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.answered && lock(&self.link.waiting).remove(&self.id).is_some() {
            self.link.send(PeerMsg::Cancel { id: self.id });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A peer's frame over `limits.max_frame`: counted, logged, and the close
/// frame that says so.
pub(super) fn peer_frame_too_large(fabric: &Fabric, peer: &NodeId, e: &CapacityError) -> CloseFrame {
    fabric.metrics.reject_frame("too_large");
    tracing::warn!(%peer, error = %e, "peer frame over limits.max_frame (do the nodes have the same limit?); closing the link");
    match *e {
        CapacityError::MessageTooLong { size, max_size } => crate::ws::over_max_frame(size, max_size),
        _ => close_frame(CloseCode::Size, "frame over limits.max_frame"),
    }
}

/// Serves a registered link until either side closes it.
pub(super) async fn run<S>(
    fabric: Arc<Fabric>,
    link: Arc<Link>,
    ws: WebSocketStream<S>,
    mut outbound: Outbound,
    first: Option<Message>,
    meter: Option<MeterHandle>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, stream) = ws.split();
    let mut stream = futures_util::stream::iter(first.map(Ok)).chain(stream);
    let metrics = fabric.metrics.clone();
    // Why this side closes the link, told to the peer in the close frame.
    let mut why: Option<CloseFrame> = None;
    let node_closing = {
        let writer = async {
            while let Some(msg) = outbound.next().await {
                let reply = if let PeerMsg::Reply { id, .. } = &msg { Some(*id) } else { None };
                if write(&mut sink, &fabric, &link, msg).await.is_err() {
                    break;
                }
                if let Some(id) = reply {
                    lock(&link.held_by).remove(&id);
                }
            }
        };
        // A bridge peer pings every announce interval; one silent for
        // longer than `bridge_silence` is hung or cut off (members are
        // watched by SWIM instead).
        let silence = (link.remote.cluster != fabric.me.cluster).then_some(fabric.bridge_silence);
        let reader = async {
            loop {
                let next = match silence {
                    Some(limit) => tokio::time::timeout(limit, stream.next()).await,
                    None => Ok(stream.next().await),
                };
                let Ok(next) = next else {
                    tracing::warn!(peer = %link.remote.node, "the bridge peer sent nothing for {:?}; taking it to be gone and closing the link", fabric.bridge_silence);
                    return Some(close_frame(CloseCode::Away, "no frame within the bridge's silence limit"));
                };
                let Some(frame) = next else { break };
                if let Some(meter) = &meter {
                    if let Ok(message) = &frame {
                        crate::ws::took(meter, message);
                    } else if let Some(refusal) = meter.refusal() {
                        return Some(crate::ws::refused_arriving(&fabric.metrics, refusal, &link.remote.node));
                    }
                }
                let bytes = match frame {
                    Ok(Message::Text(t)) => t.as_bytes().to_vec(),
                    Ok(Message::Binary(b)) => b.to_vec(),
                    Ok(Message::Close(_)) => break,
                    Err(tokio_tungstenite::tungstenite::Error::Capacity(e)) => {
                        return Some(peer_frame_too_large(&fabric, &link.remote.node, &e));
                    }
                    Err(e) => {
                        tracing::debug!(peer = %link.remote.node, error = %e, "peer link failed");
                        break;
                    }
                    Ok(_) => continue,
                };
                let Some(queued) = link.take_inbound(bytes.len()).await else { break };
                match serde_json::from_slice::<PeerMsg>(&bytes) {
                    Ok(msg) => {
                        metrics.peer_message("in", &msg, bytes.len());
                        dispatch(&fabric, &link, msg, queued);
                    }
                    Err(e) => {
                        // A peer that speaks garbage is broken or hostile; drop the link.
                        metrics.reject_frame("peer");
                        // Anyone may say hello: the lines share the refusals' bound.
                        if fabric.may_log_peer_trouble() {
                            tracing::warn!(peer = %link.remote.node, error = %e, "malformed peer frame; closing the link");
                        }
                        return Some(close_frame(CloseCode::Protocol, &format!("malformed peer message: {e}")));
                    }
                }
            }
            None
        };
        tokio::pin!(writer, reader);
        tokio::select! {
            // The peer hung up on our writes: what it said last (a refusal,
            // say) may still be waiting to be read.
            _ = &mut writer => {
                let _ = tokio::time::timeout(Duration::from_millis(500), &mut reader).await;
                false
            }
            closed = &mut reader => {
                why = closed;
                false
            }
            _ = link.closed.cancelled() => false,
            _ = fabric.links_closing.cancelled() => true,
        }
    };
    if node_closing {
        // This node is stopping: what is queued (goodbyes, last replies) still goes out.
        let flush = async {
            while let Some(msg) = outbound.try_next() {
                if write(&mut sink, &fabric, &link, msg).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), flush).await;
    }
    link.end();
    // A peer that reads nothing would keep even the close frame waiting.
    let close = async {
        match why {
            Some(frame) => sink.send(Message::Close(Some(frame))).await,
            None => sink.close().await,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    fabric.unregister(&link);
    fabric.event(Event::LinkDown(link.clone()));
}

async fn write<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    fabric: &Fabric,
    link: &Link,
    msg: PeerMsg,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some((msg, text)) = fitted(fabric.max_frame, link, msg) else { return Ok(()) };
    fabric.metrics.peer_message("out", &msg, text.len());
    tokio::time::timeout(WRITE_STALL, sink.send(Message::Text(text.into()))).await.unwrap_or_else(|_| {
        tracing::warn!(peer = %link.remote.node, "the peer read nothing for {WRITE_STALL:?}; closing the link");
        Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
    })
}

/// `msg` and its frame, if that fits `max_frame`: the peer closes the link
/// on a bigger one, failing every call on it. Instead only the call fails:
/// a reply too big is answered with RESOURCE_EXHAUSTED, and a call too big
/// fails here. Anything else too big is dropped with a warning.
fn fitted(max_frame: usize, link: &Link, msg: PeerMsg) -> Option<(PeerMsg, String)> {
    let text = serde_json::to_string(&msg).unwrap_or_default();
    if text.len() <= max_frame {
        return Some((msg, text));
    }
    let too_big = |what: &str| {
        WeftError::new(
            ErrorKind::RESOURCE_EXHAUSTED,
            format!(
                "{what} would be {} bytes between nodes, over limits.max_frame ({max_frame} bytes); pass less data",
                text.len()
            ),
        )
        .with("size", text.len())
        .with("limit", max_frame)
    };
    match msg {
        PeerMsg::Reply { id, node, .. } => {
            let msg = PeerMsg::Reply { id, value: None, error: Some(too_big("the result").to_body()), node };
            let text = serde_json::to_string(&msg).unwrap_or_default();
            Some((msg, text))
        }
        PeerMsg::Call(call) => {
            if let Some(waiter) = lock(&link.waiting).remove(&call.id) {
                let _ = waiter.send((Err(too_big("the call's arguments")), link.remote.node.clone()));
            }
            None
        }
        other => {
            tracing::warn!(peer = %link.remote.node, kind = other.kind(), bytes = text.len(), max_frame, "peer message over limits.max_frame not sent");
            None
        }
    }
}

fn dispatch(fabric: &Arc<Fabric>, link: &Arc<Link>, msg: PeerMsg, queued: Queued) {
    match msg {
        PeerMsg::Call(call) => serve_call(fabric, link, call, queued.bytes()),
        PeerMsg::Reply { id, value, error, node } => {
            if let Some(waiter) = lock(&link.waiting).remove(&id) {
                let result = match (value, error) {
                    (_, Some(e)) => Err(WeftError::from(e)),
                    (value, None) => Ok(value.unwrap_or(Value::Null)),
                };
                let _ = waiter.send((result, node.unwrap_or_else(|| link.remote.node.clone())));
            }
        }
        PeerMsg::Reject(reject) => {
            // Handshakes end in one (see `Fabric::accept`): this peer breaks the protocol.
            link.close();
            fabric.refused("remote", link.direction, &link.remote.addr, Some(&link.remote), &reject.bounded());
        }
        PeerMsg::Ping { nonce } => {
            link.send(PeerMsg::Pong { nonce });
        }
        PeerMsg::Pong { nonce } => link.answered(nonce),
        PeerMsg::Cancel { id } => {
            if let Some(task) = lock(&link.serving).remove(&id) {
                task.abort();
            }
        }
        PeerMsg::Bye => {
            link.leaving.store(true, Ordering::Relaxed);
            fabric.event(Event::Peer(link.clone(), Box::new(PeerMsg::Bye), queued));
        }
        msg => fabric.event(Event::Peer(link.clone(), Box::new(msg), queued)),
    }
}

/// Runs a call a peer forwarded here, under this node's own sandbox limits.
fn serve_call(fabric: &Arc<Fabric>, link: &Arc<Link>, call: ForwardCall, bytes: u32) {
    let id = call.id;
    let (fabric2, link2) = (fabric.clone(), link.clone());
    let refuse = |e: WeftError| {
        // Answered, not dropped: the caller is waiting on this id.
        let (fabric, link) = (fabric.clone(), link.clone());
        fabric.tracker.clone().spawn(async move {
            link.tx.send(PeerMsg::reply(id, Err(e), fabric.me.node.clone())).await.ok();
        });
    };
    // Held until the task is registered: a task that ends first would find
    // no entry to remove and leave one behind for good.
    let mut serving = lock(&link.serving);
    if serving.contains_key(&id) || lock(&link.held_by).contains_key(&id) {
        // A second call under one id would escape its first's bounds.
        return refuse(WeftError::invalid_request(format!(
            "call id {id} is already running on node {}, or its reply not yet sent; give each call its own id",
            fabric.me.node
        )));
    }
    if serving.len() >= fabric.max_serving {
        let serving = serving.len();
        return refuse(
            WeftError::new(
                ErrorKind::RESOURCE_EXHAUSTED,
                format!(
                    "node {} already has {serving} calls from node {} running or waiting (16 x limits.max_in_flight_per_connection); retry shortly or call another node",
                    fabric.me.node, link.remote.node
                ),
            )
            .with("limit", serving),
        );
    }
    let Ok(held) = link.held.clone().try_acquire_many_owned(bytes) else {
        return refuse(held_up(fabric, link));
    };
    let task = fabric.tracker.spawn(async move {
        let run = answered(run_forwarded(&fabric2, &link2, call), &fabric2.me.node);
        let (result, ran_on) = tokio::select! {
            ran = run => ran,
            () = fabric2.grace_over.cancelled() => {
                // As good as a lost link to the caller's node: it may retry
                // an idempotent call elsewhere.
                let e = crate::executor::stopped(&fabric2.me.node, "the call").with("link_lost", true);
                (Err(e.with("node", fabric2.me.node.to_string())), fabric2.me.node.clone())
            }
        };
        lock(&link2.serving).remove(&id);
        // The reply holds its share until it is written; one that finds no
        // room beside the replies the peer has not read yet is refused.
        let reply = PeerMsg::reply(id, result, ran_on.clone());
        // One over max_frame goes out as an error in its place (`fitted`).
        let size = crate::executor::json_len(&reply).min(fabric2.max_frame);
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let mut held = held;
        let reply = match size.checked_sub(bytes).filter(|more| *more > 0) {
            None => reply,
            Some(more) => match link2.held.clone().try_acquire_many_owned(more) {
                Ok(extra) => {
                    held.merge(extra);
                    reply
                }
                Err(_) => PeerMsg::reply(id, Err(held_up(&fabric2, &link2)), ran_on),
            },
        };
        lock(&link2.held_by).insert(id, held);
        if link2.tx.send(reply).await.is_err() {
            lock(&link2.held_by).remove(&id);
        }
    });
    serving.insert(id, task.abort_handle());
}

/// A federation path as error details list it.
fn path_names(path: &[ClusterId]) -> Vec<&str> {
    path.iter().map(ClusterId::as_str).collect()
}

/// A federation path as messages print it: `alpha -> beta`.
fn path_text(path: &[ClusterId]) -> String {
    path_names(path).join(" -> ")
}

/// Why a peer's call, or its reply, finds no room in what its link may hold.
fn held_up(fabric: &Fabric, link: &Link) -> WeftError {
    WeftError::new(
        ErrorKind::RESOURCE_EXHAUSTED,
        format!(
            "node {} holds all it may of node {}'s calls and of their replies not yet read (4 x limits.max_frame); retry shortly, and read the replies",
            fabric.me.node, link.remote.node
        ),
    )
    .with("limit", link.held_limit)
}

/// Runs a forwarded call to its answer. A panic becomes an INTERNAL answer:
/// without one the caller would wait for its deadline on a call long gone.
async fn answered(run: impl Future<Output = Ran>, me: &NodeId) -> Ran {
    AssertUnwindSafe(run).catch_unwind().await.unwrap_or_else(|_| {
        (Err(WeftError::internal("the call failed on this node (a bug: its log has the panic)")), me.clone())
    })
}

/// Where a forwarded call ended up running, and with what result.
type Ran = (Result<Value, WeftError>, NodeId);

/// A call from a member runs here (the member chose this node). A call from
/// another cluster is admitted by this node's own policy, whatever the
/// origin decided, and then runs here or on a member that has the function.
async fn run_forwarded(fabric: &Arc<Fabric>, link: &Link, call: ForwardCall) -> Ran {
    admit_and_run(fabric, link, call).await.unwrap_or_else(|refused| (Err(refused), fabric.me.node.clone()))
}

/// `Err` is a refusal here; `Ok` carries the result of running the call,
/// here or further on.
async fn admit_and_run(fabric: &Arc<Fabric>, link: &Link, mut call: ForwardCall) -> Result<Ran, WeftError> {
    let me = &fabric.me;
    if link.remote.cluster != me.cluster {
        // Each cluster appends itself as a call leaves it, so the path must
        // end with the neighbour's: otherwise the neighbour hides where the
        // call started, and so who may make it.
        let said = || path_text(&call.federation_path);
        if call.federation_path.last() != Some(&link.remote.cluster) {
            return Err(WeftError::invalid_request(format!(
                "a call from cluster {} must carry a federation path that ends with it (got [{}])",
                link.remote.cluster,
                said()
            )));
        }
        if call.federation_path.contains(&me.cluster) {
            return Err(WeftError::new(
                ErrorKind::NO_ROUTE,
                format!("call to {} came back to cluster {} (federation path {})", call.function, me.cluster, said()),
            )
            .with("federation_path", path_names(&call.federation_path)));
        }
        // A call that started further away came through the neighbour as
        // transit, which the neighbour offers only where it announced a
        // route: without one, the path (and so the caller) is made up.
        let started = &call.federation_path[0];
        if *started != link.remote.cluster && !fabric.leads_through(link.node(), started) {
            return Err(WeftError::new(
                ErrorKind::POLICY_DENIED,
                format!(
                    "node {} of cluster {} announced no route to cluster {started} in its latest route update this node accepted (a refused update counts for nothing: see /v1/alerts), so it carries no call from there (federation path {})",
                    link.node(),
                    link.remote.cluster,
                    said()
                ),
            )
            .with("rule", "path")
            .with("cluster", started.as_str())
            .with("federation_path", path_names(&call.federation_path)));
        }
        let authenticated = fabric.links_authenticated();
        call.caller = foreign_caller(&call.caller, origin(link, &call), &link.remote.cluster, authenticated);
    }
    let path = |call: &ForwardCall| call.routing_path.iter().map(NodeId::as_str).collect::<Vec<_>>().join(" -> ");
    if call.routing_path.contains(&me.node) {
        return Err(WeftError::new(
            ErrorKind::NO_ROUTE,
            format!("call to {} came back to node {} (routing path {})", call.function, me.node, path(&call)),
        ));
    }
    let function: FunctionId = call
        .function
        .parse()
        .map_err(|e| WeftError::invalid_request(format!("forwarded function {:?}: {e}", call.function)))?;
    let version: semver::Version = call.version.parse().map_err(|e| {
        WeftError::invalid_request(format!(
            "forwarded version {:?} of {} is not semver: {e}",
            call.version, call.function
        ))
    })?;
    let deadline = Instant::now() + Duration::from_millis(call.deadline_ms);
    let has_locs = |e: &CatalogEntry| call.locs.iter().all(|l| e.resources.contains(l));
    // Meant for another cluster: never run a same-named function of this one.
    let elsewhere = call.target_cluster.as_ref().filter(|c| **c != me.cluster).cloned();
    if link.remote.cluster == me.cluster {
        // A call from another cluster that a member passes on is decided
        // here too: during a rolling reload this node's policy may be the
        // stricter one.
        admit_path(fabric, &call.federation_path)?;
        // A member relays a foreign function through this node's bridge.
        let entries = fabric.entries();
        let foreign: Vec<CatalogEntry> = entries
            .iter()
            .filter(|e| e.cluster != me.cluster && e.function == function && e.version == version)
            // Never back to a cluster the call came through: a loop.
            .filter(|e| !call.federation_path.contains(&e.cluster))
            .filter(|e| elsewhere.as_ref().is_none_or(|c| e.cluster == *c) && has_locs(e))
            .cloned()
            .collect();
        let mine = |e: &CatalogEntry| e.node == me.node && e.cluster == me.cluster && e.function == function;
        let local = entries.iter().any(|e| mine(e) && e.version == version);
        if (elsewhere.is_some() || !local) && !foreign.is_empty() {
            let step = pass_on(fabric, call, foreign, function, version, deadline);
            return Ok(step.run().await);
        }
        if let Some(cluster) = &elsewhere {
            // The member's view was older or its policy differs: say why
            // this node cannot carry the call there.
            let verdict = fabric.decide(Point::CallOrigin, fabric.policy().peer(cluster, None));
            if !verdict.allowed {
                return Err(verdict.to_error(cluster));
            }
            fabric.reach(cluster)?;
            return Err(WeftError::new(
                ErrorKind::FUNCTION_NOT_FOUND,
                format!("{function}@{version} is not offered by cluster {cluster} as node {} sees it", me.node),
            ));
        }
        let mut admission = None;
        // A version replaced here may still run, unlisted (see the bridge
        // node's candidates below).
        let offered = entries.iter().any(mine);
        if let Some(neighbour) = call.federation_path.last().filter(|_| offered) {
            // So are this node's function rules: the bridge node that let
            // the call in may still run an older policy.
            let exported = entries.iter().any(|e| mine(e) && e.exported);
            let policy = fabric.policy();
            let verdict = fabric.decide(Point::CallTarget, policy.call(neighbour, None, &function, exported));
            if !verdict.allowed {
                return Err(verdict.to_error(neighbour));
            }
            admission = Some(Admission { policy, neighbour: neighbour.clone(), node: None, exported });
        }
        let target = CallTarget { plugin: &function.plugin, version: Some(&version), function: &function.function };
        // Only functions that exist here become metric labels (a closed set).
        let timer = local.then(|| fabric.metrics.call_timer(&function));
        // A call from a peer: no request of this node's own is in flight.
        let load = fabric.metrics.load(0);
        let admitted = || admission.as_ref().map_or(Ok(()), |a| a.holds(fabric, &function, &call.federation_path));
        let result = fabric.runtime.call_admitted(target, &call.args, deadline, &call.caller, load, &admitted).await;
        if let Some(timer) = timer {
            timer.finish(result.is_ok());
        }
        return Ok((result, me.node.clone()));
    }

    let entries = fabric.entries();
    let here = |e: &&CatalogEntry| e.cluster == me.cluster && e.function == function && has_locs(e);
    let mut candidates: Vec<CatalogEntry> =
        entries.iter().filter(here).filter(|e| e.version == version).cloned().collect();
    let onward = |e: &CatalogEntry| leads_onward(e, fabric, link, &call, &function, Some(&version));
    let upgraded = candidates.is_empty() && elsewhere.is_none() && !entries.iter().any(onward);
    if upgraded {
        // Upgraded here since the caller's catalog was built: the nodes that
        // list another version keep the replaced one serving for a while
        // (`Runtime::find`), and answer `not_loaded` once it is gone.
        candidates = entries.iter().filter(here).cloned().collect();
    }
    if candidates.is_empty() || elsewhere.is_some() {
        return transit(fabric, link, call, function, version, deadline, &entries).await;
    }
    // What the cluster has instead, for the error if no member still has
    // the version asked for.
    let instead = upgraded.then(|| {
        let mut versions: Vec<String> = candidates.iter().map(|e| e.version.to_string()).collect();
        versions.sort();
        versions.dedup();
        format!("{function}@{version} is not in cluster {} now (it has version {})", me.cluster, versions.join(", "))
    });
    // Each node offers its copy on its own manifest's word (during a
    // rollout they may differ): the call may run on the copies exported.
    let exported = candidates.iter().any(|e| e.exported);
    let policy = fabric.policy();
    let verdict =
        fabric.decide(Point::CallTarget, policy.call(&link.remote.cluster, Some(link.node()), &function, exported));
    if !verdict.allowed {
        return Err(verdict.to_error(&link.remote.cluster));
    }
    let admission =
        Admission { policy, neighbour: link.remote.cluster.clone(), node: Some(link.node().clone()), exported };
    candidates.retain(|e| e.exported);
    admit_path(fabric, &call.federation_path)?;
    if candidates.is_empty() {
        return Err(WeftError::new(
            ErrorKind::FUNCTION_NOT_FOUND,
            format!("{function}@{version} is no longer in cluster {}", me.cluster),
        ));
    }
    // Only on nodes whose own policy serves every cluster the call came
    // by, and whose plugin is open to the one it started in (they advertise
    // both): another member may refuse what this node's policy lets in.
    let serving = |e: &CatalogEntry| {
        call.federation_path.iter().all(|c| e.audience.admits(c))
            && call.federation_path.first().is_none_or(|o| e.origins.admits(o))
    };
    let refusing: Vec<String> = candidates.iter().filter(|e| !serving(e)).map(|e| e.node.to_string()).collect();
    candidates.retain(serving);
    if candidates.is_empty() {
        return Err(WeftError::new(
            ErrorKind::POLICY_DENIED,
            format!(
                "the nodes of cluster {} that have {function}@{version} ({}) do not serve a call that came by way of clusters {}: the plugin's manifest `callers` does not open it to the first of them, or their federation policy differs from that of node {}, which let the call in (give every node of a cluster the same [federation] section)",
                me.cluster,
                refusing.join(", "),
                path_text(&call.federation_path),
                me.node
            ),
        )
        .with("rule", "member-policy")
        .with("nodes", refusing));
    }
    vouched(fabric, link, &call, &candidates, &me.cluster)?;
    fabric.charge(origin(link, &call))?;
    let step =
        StepCall { admission: Some(admission), ..pass_on(fabric, call, candidates, function, version, deadline) };
    let (result, node) = step.run().await;
    // No member had the version any more (or ever): said as what the
    // cluster has, still `not_loaded` for a caller planning from an older view.
    let result = match (result, instead) {
        (Err(e), Some(instead)) if e.details.contains_key(weft_runtime::NOT_LOADED) => Err(WeftError::new(
            ErrorKind::FUNCTION_NOT_FOUND,
            format!("{instead}; retry to use the catalog as it is now"),
        )
        .with(weft_runtime::NOT_LOADED, true)),
        (result, _) => result,
    };
    Ok((result, node))
}

/// A call from another cluster for a function of a third one: carried on if
/// this cluster offers transit and its policy admits both ends.
async fn transit(
    fabric: &Arc<Fabric>,
    link: &Link,
    call: ForwardCall,
    function: FunctionId,
    version: semver::Version,
    deadline: Instant,
    entries: &[CatalogEntry],
) -> Result<Ran, WeftError> {
    let me = &fabric.me;
    let onward_of = |version| -> Vec<CatalogEntry> {
        entries.iter().filter(|e| leads_onward(e, fabric, link, &call, &function, version)).cloned().collect()
    };
    let mut onward = onward_of(Some(&version));
    if onward.is_empty() {
        // Upgraded at the destination since the caller planned: its bridge
        // sends the call on to the nodes that keep the replaced version.
        onward = onward_of(None);
    }
    let Some(destination) = onward.first().map(|e| e.cluster.clone()) else {
        return Err(WeftError::new(
            ErrorKind::FUNCTION_NOT_FOUND,
            format!("{function}@{version} is not in cluster {} nor reachable through it", me.cluster),
        ));
    };
    // One destination, the one checked below: the others it has are not
    // candidates (a call that names none goes to the first).
    let onward: Vec<CatalogEntry> = onward.into_iter().filter(|e| e.cluster == destination).collect();
    if !fabric.transit() {
        return Err(WeftError::new(
            ErrorKind::NO_ROUTE,
            format!("cluster {} does not carry traffic to {destination} (routing.transit = false)", me.cluster),
        )
        .with("cluster", me.cluster.as_str()));
    }
    let policy = fabric.policy();
    for (cluster, node) in [(&link.remote.cluster, Some(link.node())), (&destination, None)] {
        let verdict = fabric.decide(Point::CallTarget, policy.peer(cluster, node));
        if !verdict.allowed {
            return Err(verdict.to_error(cluster));
        }
    }
    // The routes this cluster offers the neighbour are the transit it
    // carries for it: `neighbours.NAME.export` decides both.
    if !fabric.offers(&link.remote.cluster, &destination) {
        return Err(WeftError::new(
            ErrorKind::NO_ROUTE,
            format!(
                "cluster {} does not offer cluster {} a route to {destination} (routing.neighbours.{}.export)",
                me.cluster, link.remote.cluster, link.remote.cluster
            ),
        )
        .with("cluster", me.cluster.as_str()));
    }
    admit_path(fabric, &call.federation_path)?;
    vouched(fabric, link, &call, &onward, &destination)?;
    fabric.charge(origin(link, &call))?;
    let step = pass_on(fabric, call, onward, function, version, deadline);
    Ok(step.run().await)
}

/// Whether `e` is an entry a call from another cluster could go on to
/// through this cluster (as transit): the function (and version, if given)
/// it names, in a third cluster it has not been through, the one it
/// targets if any.
fn leads_onward(
    e: &CatalogEntry,
    fabric: &Fabric,
    link: &Link,
    call: &ForwardCall,
    function: &FunctionId,
    version: Option<&semver::Version>,
) -> bool {
    e.cluster != fabric.me.cluster
        && e.cluster != link.remote.cluster
        && e.function == *function
        && version.is_none_or(|v| e.version == *v)
        && !call.federation_path.contains(&e.cluster)
        && call.target_cluster.as_ref().is_none_or(|c| e.cluster == *c)
        && call.locs.iter().all(|l| e.resources.contains(l))
}

/// Who a call from another cluster is made for: a tenant of the neighbour
/// when the call started in the neighbour's cluster and the link proved
/// that cluster's key; else the cluster it started in, whatever the call
/// says.
fn foreign_caller(said: &Caller, origin: &ClusterId, neighbour: &ClusterId, authenticated: bool) -> Caller {
    match said {
        Caller::Tenant(tenant) if origin == neighbour && authenticated && !tenant.contains('@') => {
            Caller::ForeignTenant { cluster: origin.clone(), tenant: tenant.clone() }
        }
        _ => Caller::Cluster(origin.clone()),
    }
}

/// The cluster a forwarded call started in, which the rate limit charges:
/// the first of its federation path (each cluster appends itself as the call
/// leaves it), else the neighbour that handed it over.
fn origin<'a>(link: &'a Link, call: &'a ForwardCall) -> &'a ClusterId {
    call.federation_path.first().unwrap_or(&link.remote.cluster)
}

/// For a function open to some clusters only (`origins`), a call that says
/// it started in another cluster than the neighbour that hands it over is
/// taken, at every cluster on the way, where this cluster's policy trusts
/// the neighbour with that (`Policy::vouches`), or where the call proves
/// its origin with that cluster's signature over the call bound for
/// `target`.
fn vouched(
    fabric: &Fabric,
    link: &Link,
    call: &ForwardCall,
    entries: &[CatalogEntry],
    target: &ClusterId,
) -> Result<(), WeftError> {
    let (started, neighbour) = (origin(link, call), &link.remote.cluster);
    let policy = fabric.policy();
    let Some(e) = entries.iter().find(|e| !policy.vouches(neighbour, &e.origins)).filter(|_| started != neighbour)
    else {
        return Ok(());
    };
    let proven = match &call.origin_proof {
        Some(proof) => {
            let (function, version, args) = (call.function.as_str(), call.version.as_str(), call.args.as_slice());
            fabric.check_origin(&CallClaim { origin: started, target, function, version, args }, proof)
        }
        None => Err(format!("is missing (nodes of {started} sign calls with routing.security.signing_key)")),
    };
    let Err(why) = proven else {
        return Ok(());
    };
    let me = &fabric.me.cluster;
    Err(WeftError::new(
        ErrorKind::POLICY_DENIED,
        format!(
            "{}@{} is open to some clusters only, and cluster {me} does not take the word of cluster {neighbour}, which handed the call over, that it started in {started} (federation path {}); the call's proof of origin {why}. Have {started} sign its calls and list its public key in routing.security.trusted_keys of cluster {me}, or list {neighbour} in federation.trusted_transit of cluster {me} to trust it with that, or bridge {started} to it directly",
            e.function,
            e.version,
            path_text(&call.federation_path),
        ),
    )
    .with("rule", "origin")
    .with("proof", why)
    .with("cluster", neighbour.as_str())
    .with("federation_path", path_names(&call.federation_path)))
}

/// Every cluster a call came through (its origin first) must be one this
/// cluster's policy admits: a neighbour cannot launder a caller it may not
/// serve.
fn admit_path(fabric: &Fabric, path: &[ClusterId]) -> Result<(), WeftError> {
    let policy = fabric.policy();
    for cluster in path.iter().filter(|c| **c != fabric.me.cluster) {
        let verdict = policy.peer(cluster, None);
        if !verdict.allowed {
            return Err(fabric.decide(Point::CallTarget, verdict).to_error(cluster));
        }
    }
    Ok(())
}

/// The rest of a forwarded call's way: these candidates, the call's budget
/// and paths.
fn pass_on(
    fabric: &Arc<Fabric>,
    call: ForwardCall,
    candidates: Vec<CatalogEntry>,
    function: FunctionId,
    version: semver::Version,
    deadline: Instant,
) -> StepCall {
    StepCall {
        fabric: fabric.clone(),
        candidates: candidates.into(),
        function,
        version,
        args: call.args,
        deadline,
        hop_budget: call.hop_budget,
        routing_path: call.routing_path,
        federation_path: call.federation_path,
        locs: call.locs,
        caller: call.caller,
        origin_proof: call.origin_proof,
        // A call from a peer: no request of this node's own is in flight.
        load: fabric.metrics.load(0),
        admission: None,
        whereabouts: None,
    }
}

/// What let a call from another cluster run on this node, asked again once
/// the call holds a sandbox slot (`Runtime::call_admitted`): a policy
/// reloaded while the call waited applies to it as to a new one.
pub(crate) struct Admission {
    /// The policy that let the call in.
    policy: Arc<weft_fabric::Policy>,
    /// The cluster that handed the call over, and its node where that is
    /// this node's neighbour.
    neighbour: ClusterId,
    node: Option<NodeId>,
    /// Whether the function is offered to other clusters (its manifest).
    exported: bool,
}

impl Admission {
    pub(crate) fn holds(&self, fabric: &Fabric, function: &FunctionId, path: &[ClusterId]) -> Result<(), WeftError> {
        let policy = fabric.policy();
        if Arc::ptr_eq(&policy, &self.policy) {
            return Ok(());
        }
        let reloaded = "the federation policy was reloaded while the call waited for a sandbox slot";
        admit_path(fabric, path).map_err(|e| e.context(reloaded))?;
        // Counted only when it refuses: the call's admission was counted
        // when it was let in.
        let verdict = policy.call(&self.neighbour, self.node.as_ref(), function, self.exported);
        if !verdict.allowed {
            return Err(fabric.decide(Point::CallTarget, verdict).to_error(&self.neighbour).context(reloaded));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn link(budget: usize) -> Arc<Link> {
        let hello = Hello {
            proto: 1,
            node: NodeId::new("peer"),
            cluster: ClusterId::new("c"),
            incarnation: 1,
            addr: "ws://127.0.0.1:1".into(),
            caps: Vec::new(),
            nonce: None,
            proof: None,
        };
        Link::new(hello, Direction::Inbound, budget).0
    }

    #[test]
    fn only_an_authenticated_neighbour_names_its_own_tenants() {
        let (alpha, beta) = (ClusterId::new("alpha"), ClusterId::new("beta"));
        let acme = Caller::Tenant("acme".into());
        let of_alpha = Caller::ForeignTenant { cluster: alpha.clone(), tenant: "acme".into() };
        assert_eq!(foreign_caller(&acme, &alpha, &alpha, true), of_alpha);
        let cluster = Caller::Cluster(alpha.clone());
        assert_eq!(foreign_caller(&acme, &alpha, &alpha, false), cluster, "no proof, no tenant");
        assert_eq!(foreign_caller(&acme, &alpha, &beta, true), cluster, "beta cannot vouch for alpha's tenants");
        let sneaky = Caller::Tenant("acme@gamma".into());
        assert_eq!(foreign_caller(&sneaky, &alpha, &alpha, true), cluster);
        let relayed = Caller::ForeignTenant { cluster: beta.clone(), tenant: "acme".into() };
        assert_eq!(foreign_caller(&relayed, &alpha, &alpha, true), cluster, "only its own tenants");
        assert_eq!(foreign_caller(&Caller::Anonymous, &alpha, &alpha, true), cluster);
    }

    #[tokio::test]
    async fn reading_pauses_while_the_inbound_budget_is_spent_and_resumes_when_handled() {
        let link = link(100);
        let first = link.take_inbound(60).await.expect("within the budget");
        let second = tokio::time::timeout(Duration::from_millis(50), link.take_inbound(60)).await;
        assert!(second.is_err(), "a second message over the budget must wait");
        drop(first); // the cluster task handled it
        let second = tokio::time::timeout(Duration::from_secs(5), link.take_inbound(60)).await;
        assert!(matches!(second, Ok(Some(_))), "the budget came back");
    }

    #[tokio::test]
    async fn a_call_on_a_link_that_closed_fails_at_once() {
        // The writer is gone but its queue is still open: `run` closed the
        // link and failed the waiters, and this call comes after that.
        let (link, _queue) = Link::new(link(10).remote.clone(), Direction::Outbound, 10);
        link.close();
        lock(&link.waiting).clear();
        let (result, _) = tokio::time::timeout(Duration::from_secs(5), link.call(call(0))).await.expect("no wait");
        assert_eq!(result.unwrap_err().kind, ErrorKind::UNAVAILABLE);
        assert!(lock(&link.waiting).is_empty(), "the waiter is forgotten");
    }

    fn call(id: u64) -> ForwardCall {
        ForwardCall {
            id,
            function: "echo/echo".into(),
            version: "0.1.0".into(),
            args: Vec::new(),
            deadline_ms: 60_000,
            routing_path: Vec::new(),
            federation_path: Vec::new(),
            hop_budget: 1,
            target_cluster: None,
            locs: Vec::new(),
            caller: Caller::Anonymous,
            origin_proof: None,
        }
    }

    #[tokio::test]
    async fn gossip_overtakes_queued_calls_and_is_not_dropped_when_they_fill_their_lane() {
        let (link, mut out) = Link::new(link(10).remote.clone(), Direction::Outbound, 10);
        for id in 0..QUEUE as u64 {
            link.tx.try_send(PeerMsg::Call(call(id))).expect("room for calls");
        }
        assert!(!link.send(PeerMsg::Cancel { id: 1 }), "the call lane is full");
        assert!(link.send(PeerMsg::Ping { nonce: 7 }), "a probe still goes");
        assert!(matches!(out.next().await, Some(PeerMsg::Ping { nonce: 7 })));
        assert!(matches!(out.next().await, Some(PeerMsg::Call(c)) if c.id == 0), "then calls, in order");
        assert!(matches!(out.try_next(), Some(PeerMsg::Call(c)) if c.id == 1));
    }

    #[tokio::test]
    async fn a_forwarded_call_that_panics_is_answered() {
        let me = NodeId::new("n1");
        let (result, ran_on) = answered(async { panic!("a bug") }, &me).await;
        assert_eq!(result.unwrap_err().kind, ErrorKind::INTERNAL);
        assert_eq!(ran_on, me);
    }

    #[tokio::test]
    async fn a_closed_link_stops_waiting_for_budget() {
        let link = link(10);
        let _held = link.take_inbound(10).await.expect("within the budget");
        let waiting = tokio::spawn({
            let link = link.clone();
            async move { link.take_inbound(10).await.is_none() }
        });
        link.close();
        assert!(tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("stops").expect("task"));
    }
}

//! The WebSocket endpoint for clients: JSON requests in text or binary
//! frames, many in flight per connection, each answered in the frame type it
//! came in, matched by `u`.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_proto::{ErrorKind, Request, Response, WeftError};

use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::peer::PeerMsg;

pub(crate) struct WsContext {
    pub executor: Arc<Executor>,
    pub metrics: Arc<Metrics>,
    pub max_frame: usize,
    pub max_in_flight: usize,
}

/// Accepts connections until `shutdown`; each connection is a task of `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<WsContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(connection(stream, ctx.clone(), shutdown.clone(), peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, ctx: Arc<WsContext>, shutdown: CancellationToken, peer: std::net::SocketAddr) {
    let config = WebSocketConfig::default().max_message_size(Some(ctx.max_frame)).max_frame_size(Some(ctx.max_frame));
    let mut ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "websocket handshake failed");
            return;
        }
    };
    // Peers and clients share the port: a connection whose first frame is a
    // peer `hello` becomes a link; anything else is a client.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        first = ws.next() => first,
    };
    if let Some(Ok(Message::Text(text))) = &first
        && let Ok(PeerMsg::Hello(hello)) = serde_json::from_str::<PeerMsg>(text)
    {
        ctx.executor.fabric().accept(ws, hello).await;
        return;
    }
    ctx.metrics.connections.inc();
    let (mut sink, incoming) = ws.split();
    let mut incoming = futures_util::stream::iter(first).chain(incoming);
    // Responses flow through a bounded queue to the one writer.
    let (tx, mut rx) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(async move {
        // Replies that are ready together go out in one write (one syscall
        // for many pipelined answers instead of one each).
        'replies: while let Some(mut msg) = rx.recv().await {
            loop {
                let closing = matches!(msg, Message::Close(_));
                if sink.feed(msg).await.is_err() || closing {
                    break 'replies;
                }
                match rx.try_recv() {
                    Ok(next) => msg = next,
                    Err(_) => break,
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let permits = Arc::new(Semaphore::new(ctx.max_in_flight));
    let mut calls = JoinSet::new();
    let mut client_left = false;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = calls.join_next(), if !calls.is_empty() => continue,
            msg = incoming.next() => msg,
        };
        let (bytes, binary) = match msg {
            Some(Ok(Message::Text(t))) => (t.as_bytes().to_vec(), false),
            Some(Ok(Message::Binary(b))) => (b.to_vec(), true),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => {
                client_left = true;
                break;
            }
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                ctx.metrics.reject_frame("too_large");
                tracing::warn!(%peer, size, max_size, "frame over limits.max_frame; closing the connection");
                let reason = format!("frame of {size} bytes is over limits.max_frame ({max_size} bytes)");
                let _ =
                    tx.send(Message::Close(Some(CloseFrame { code: CloseCode::Size, reason: reason.into() }))).await;
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
                client_left = true;
                break;
            }
        };
        ctx.metrics.requests.get_or_create(&crate::metrics::TransportLabel { transport: "ws" }).inc();
        let reply = move |response: &Response| -> Message {
            let text = serde_json::to_string(response).unwrap_or_default();
            if binary { Message::Binary(text.into()) } else { Message::Text(text.into()) }
        };
        let request = match Request::decode(&bytes) {
            Ok(r) => r,
            Err((u, e)) => {
                ctx.metrics.record_error(e.kind);
                let _ = tx.send(reply(&Response::err(u.unwrap_or_default(), &e))).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let e = WeftError::new(
                ErrorKind::RESOURCE_EXHAUSTED,
                format!(
                    "{} requests are already in flight on this connection (limits.max_in_flight_per_connection); wait for replies or open another connection",
                    ctx.max_in_flight
                ),
            );
            ctx.metrics.record_error(e.kind);
            let _ = tx.send(reply(&Response::err(request.u, &e))).await;
            continue;
        };
        let executor = ctx.executor.clone();
        let tx = tx.clone();
        calls.spawn(async move {
            let response = executor.execute(request).await;
            drop(permit);
            let _ = tx.send(reply(&response)).await;
        });
    }

    if client_left {
        // Nobody is left to read the answers: cancel the work that is
        // still running (answered calls are only reaped, not counted).
        while calls.try_join_next().is_some() {}
        let abandoned = calls.len();
        calls.abort_all();
        ctx.metrics.abandoned.inc_by(abandoned as u64);
    } else {
        // Draining or closing: let in-flight calls finish and answer (the
        // node bounds this with its shutdown grace period).
        while calls.join_next().await.is_some() {}
        let _ = tx
            .send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "node shutting down".into() })))
            .await;
    }
    drop(tx);
    let _ = writer.await;
    ctx.metrics.connections.dec();
}

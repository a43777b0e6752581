//! Rust client for Weft nodes: calls over the node's WebSocket (many in
//! flight on one connection, matched by `u`) and JSON requests to the admin
//! HTTP API, plain or over TLS (`wss://`, `https://`). Used by the `weft`
//! CLI and the integration tests.

pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use weft_proto::{Command, ErrorKind, Request, Response, WeftError};

pub use crate::tls::Roots;

/// Waiters by `u`; `None` once the connection is gone, so a request made
/// after that fails at once instead of waiting for an answer that cannot come.
type Pending = Arc<Mutex<Option<HashMap<String, oneshot::Sender<Response>>>>>;

/// A WebSocket connection to one node. Cheap to share: calls may be made
/// concurrently from many tasks.
pub struct Client {
    outgoing: mpsc::Sender<Message>,
    pending: Pending,
    next: AtomicU64,
    /// Why the connection ended, when the node or the socket said.
    ended: Arc<Mutex<Option<WeftError>>>,
}

/// How long connecting may take (TCP, TLS and the WebSocket upgrade or the
/// HTTP connection): a port that accepts but never answers is not a node.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an admin GET may wait for its reply (POSTs such as a plugin
/// reload may compile for minutes, so they are not bounded).
const GET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn no_answer(what: &str, within: std::time::Duration) -> WeftError {
    unavailable(format!(
        "{what} did not answer within {}s; is that address a Weft node's (its ws:// port for calls, its admin http:// port for the admin API)?",
        within.as_secs()
    ))
}

fn unavailable(message: String) -> WeftError {
    WeftError::new(ErrorKind::UNAVAILABLE, message)
}

/// Why a WebSocket connection to a node failed: `Ok` with the node's own
/// error when it answered the upgrade with one (a node at its connection
/// limit answers 503 and says so), else the cause, with a hint where it is
/// one of the usual mistakes. Nodes dialling their peers use it too.
pub fn upgrade_failure(e: &tokio_tungstenite::tungstenite::Error) -> Result<WeftError, String> {
    if let tokio_tungstenite::tungstenite::Error::Http(answer) = e
        && let Some(error) = answer.body().as_deref().and_then(WeftError::from_http_body)
    {
        return Ok(error);
    }
    let text = e.to_string();
    let hint = if text.contains("invalid HTTP version") {
        " (the answer was not HTTP: the other side may serve TLS, so dial wss://)"
    } else if text.contains("tls handshake eof")
        || text.contains("InvalidContentType")
        || text.contains("corrupt message")
    {
        " (the TLS handshake failed: the other side may not serve TLS, so dial ws://)"
    } else if text.contains("HTTP version must be 1.1") || matches!(e, tokio_tungstenite::tungstenite::Error::Http(_)) {
        " (an HTTP server answered, but not as a Weft node's WebSocket port)"
    } else {
        ""
    };
    Err(format!("{text}{hint}"))
}

/// The error for requests lost when the node closed the connection. A close
/// for a frame over the node's `limits.max_frame` (1009) is the request's own
/// fault, so it gets the kind an oversized HTTP body gets; one for a request
/// the node had no memory for while it arrived (1013) gets the kind of the
/// same refusal over HTTP.
fn closed_by_node(frame: &CloseFrame) -> WeftError {
    let what =
        format!("the node closed the connection (code {}) before answering: {}", u16::from(frame.code), frame.reason);
    match frame.code {
        CloseCode::Size => WeftError::new(
            ErrorKind::INVALID_REQUEST,
            format!("{what}; send a smaller request, or raise limits.max_frame on the node"),
        ),
        CloseCode::Again => WeftError::new(ErrorKind::RESOURCE_EXHAUSTED, what),
        _ => unavailable(what),
    }
}

impl Client {
    /// Connects to `ws://HOST:PORT`, or `wss://` trusting the public authorities.
    pub async fn connect(url: &str) -> Result<Client, WeftError> {
        Self::connect_with(url, &Roots::public()).await
    }

    /// Connects to `ws://HOST:PORT` or `wss://HOST:PORT`, trusting `roots`
    /// for the node's certificate.
    pub async fn connect_with(url: &str, roots: &Roots) -> Result<Client, WeftError> {
        // Small read chunks: tungstenite zeroes the whole chunk before each read.
        let config = WebSocketConfig::default().read_buffer_size(16 << 10);
        let tls = tokio_tungstenite::Connector::Rustls(roots.client_config());
        let connect = tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, Some(tls));
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, connect).await.map_err(|_| no_answer(url, CONNECT_TIMEOUT))?;
        let (ws, _) = connected.map_err(|e| match upgrade_failure(&e) {
            Ok(refusal) => refusal.context(format_args!("{url} refused the connection")),
            Err(cause) => unavailable(format!(
                "cannot connect to {url}: {cause}; is the node running (weft node) and is --node right (wss:// for a node with [tls], with --ca naming its CA)?"
            )),
        })?;
        let (mut sink, mut stream) = ws.split();
        let (outgoing, mut rx) = mpsc::channel::<Message>(1024);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let writer_table = pending.clone();
        tokio::spawn(async move {
            // Requests queued together go out in one write.
            while let Some(msg) = rx.recv().await {
                let mut sent = sink.feed(msg).await;
                while let (Ok(()), Ok(next)) = (&sent, rx.try_recv()) {
                    sent = sink.feed(next).await;
                }
                if sent.is_err() || sink.flush().await.is_err() {
                    // Whoever waits learns it now (their senders drop).
                    writer_table.lock().unwrap_or_else(|p| p.into_inner()).take();
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let table = pending.clone();
        let ended = Arc::new(Mutex::new(None));
        let why = ended.clone();
        tokio::spawn(async move {
            loop {
                let bytes: Vec<u8> = match stream.next().await {
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Close(Some(frame)))) => {
                        *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(closed_by_node(&frame));
                        break;
                    }
                    Some(Ok(Message::Close(None))) | None => break,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        *why.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(unavailable(format!("the connection to the node failed before it answered: {e}")));
                        break;
                    }
                };
                let Ok(response) = serde_json::from_slice::<Response>(&bytes) else {
                    continue;
                };
                let waiter =
                    table.lock().unwrap_or_else(|p| p.into_inner()).as_mut().and_then(|t| t.remove(&response.u));
                if let Some(w) = waiter {
                    let _ = w.send(response);
                }
            }
            // Connection gone: every waiter learns it (their senders drop).
            table.lock().unwrap_or_else(|p| p.into_inner()).take();
        });
        Ok(Client { outgoing, pending, next: AtomicU64::new(1), ended })
    }

    /// Sends a whole request and waits for its response. The request's `u`
    /// is filled in when empty.
    pub async fn request(&self, mut req: Request) -> Result<Response, WeftError> {
        if req.u.is_empty() {
            req.u = format!("c{}", self.next.fetch_add(1, Ordering::Relaxed));
        }
        let text = serde_json::to_string(&req).map_err(|e| WeftError::internal(e.to_string()))?;
        self.send_raw(&req.u, Message::Text(text.into())).await
    }

    /// Sends a raw frame expecting a response with `u` (for protocol tests).
    pub async fn send_raw(&self, u: &str, frame: Message) -> Result<Response, WeftError> {
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(table) => table.insert(u.to_owned(), tx),
            None => return Err(unavailable("the connection to the node is closed".into())),
        };
        self.outgoing.send(frame).await.map_err(|_| unavailable("the connection to the node is closed".into()))?;
        rx.await.map_err(|_| {
            let why = self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
            why.unwrap_or_else(|| unavailable("the node closed the connection before answering".into()))
        })
    }

    /// Calls one function with positional arguments and returns its result.
    pub async fn call(&self, fun: &str, args: Vec<Value>) -> Result<Value, WeftError> {
        self.call_command(Command::new("call", fun, args)).await
    }

    /// Runs one command and returns its result.
    pub async fn call_command(&self, cmd: Command) -> Result<Value, WeftError> {
        let name = cmd.name.clone();
        let r = self.request(Request::new("", vec![cmd])).await?.into_result()?;
        Ok(r.get(&name).cloned().unwrap_or(Value::Null))
    }
}

/// The admin HTTP API of one node (`http://HOST:PORT` or `https://HOST:PORT`).
#[derive(Clone, Debug)]
pub struct Admin {
    base: String,
    roots: Roots,
    /// Sent as `Authorization: Bearer` on every request (`auth.operator_tokens`).
    token: Option<String>,
}

/// Status and JSON body of an admin reply.
#[derive(Debug)]
pub struct AdminReply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Admin {
    /// An `https://` base trusts the public authorities; see `with_roots`.
    pub fn new(base: impl Into<String>) -> Self {
        Self { base: base.into().trim_end_matches('/').to_owned(), roots: Roots::public(), token: None }
    }

    /// Sends `token` with every request: an operator token, for a node
    /// whose admin API takes only those.
    pub fn with_token(self, token: Option<String>) -> Self {
        Self { token, ..self }
    }

    /// Trusts `roots` for the node's certificate.
    pub fn with_roots(self, roots: Roots) -> Self {
        Self { roots, ..self }
    }

    pub async fn get(&self, path: &str) -> Result<AdminReply, WeftError> {
        self.send(hyper::Method::GET, path, Bytes::new(), &[]).await
    }

    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Result<AdminReply, WeftError> {
        self.send(hyper::Method::POST, path, body.into(), &[]).await
    }

    /// A POST with extra headers, e.g. `("authorization", "Bearer TOKEN")`.
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<AdminReply, WeftError> {
        self.send(hyper::Method::POST, path, body.into(), headers).await
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<AdminReply, WeftError> {
        let url = format!("{}{path}", self.base);
        let bounded = method == hyper::Method::GET;
        let exchange = self.exchange(method, &url, body, headers);
        if bounded {
            return tokio::time::timeout(GET_TIMEOUT, exchange).await.map_err(|_| no_answer(&url, GET_TIMEOUT))?;
        }
        exchange.await
    }

    /// One request and its whole reply, on a connection of its own.
    async fn exchange(
        &self,
        method: hyper::Method,
        url: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<AdminReply, WeftError> {
        let uri: hyper::Uri = url.parse().map_err(|e| WeftError::invalid_request(format!("bad URL {url}: {e}")))?;
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&authority));
        let stream = connect
            .await
            .map_err(|_| no_answer(&authority, CONNECT_TIMEOUT))?
            .map_err(|e| {
                unavailable(format!(
                    "cannot connect to {authority}: {e}; is the node running (weft node) and is this its address (--node or WEFT_NODE: its ws:// or admin http:// URL; wss:// or https:// for a node with [tls])?"
                ))
            })?;
        let mut sender = if uri.scheme_str() == Some("https") {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| WeftError::invalid_request(format!("bad host in {url}: {e}")))?;
            let handshake = tokio_rustls::TlsConnector::from(self.roots.client_config()).connect(name, stream);
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                .await
                .map_err(|_| no_answer(&authority, CONNECT_TIMEOUT))?
                .map_err(|e| {
                    unavailable(format!(
                        "TLS handshake with {authority} failed: {e} (--ca or WEFT_CA names the CA that signed the node's certificate)"
                    ))
                })?;
            http1(tls, &authority).await?
        } else {
            http1(stream, &authority).await?
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(body)).map_err(|e| WeftError::internal(e.to_string()))?;
        let reply = sender.send_request(req).await.map_err(|e| {
            let hint = if uri.scheme_str() == Some("http") { " (a node with [tls] answers https:// only)" } else { "" };
            unavailable(format!("HTTP request to {url} failed: {e}{hint}"))
        })?;
        let status = reply.status().as_u16();
        let headers = reply.headers().clone();
        let bytes = reply
            .into_body()
            .collect()
            .await
            .map_err(|e| unavailable(format!("reading the reply of {url} failed: {e}")))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(AdminReply { status, headers, body, text })
    }
}

/// An HTTP/1 connection over `io`, driven by a task of its own.
async fn http1<S>(io: S, authority: &str) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, WeftError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| unavailable(format!("HTTP handshake with {authority} failed: {e}")))?;
    tokio::spawn(conn);
    Ok(sender)
}

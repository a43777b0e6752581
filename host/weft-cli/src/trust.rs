//! How the client commands reach a node: `--ca`, whom they trust for its
//! certificate; `--node`, where its WebSocket is; `--admin`, where its
//! admin API is. Each URL is checked to be of its port's kind.

use std::path::PathBuf;

use clap::Args;
use weft_client::{Admin, AdminReply, Roots};

#[derive(Args)]
struct Trust {
    /// PEM file of the CA that signed the node's certificate, for wss:// and
    /// https:// URLs [default: the public web's authorities].
    #[arg(long, env = "WEFT_CA")]
    ca: Option<PathBuf>,
}

impl Trust {
    fn roots(&self) -> anyhow::Result<Roots> {
        Roots::load(self.ca.as_deref()).map_err(|e| anyhow::anyhow!("--ca: {e}"))
    }
}

/// Where a command reaches a node's admin API, and whom it trusts there.
#[derive(Args)]
pub struct AdminTarget {
    /// The node: its WebSocket URL (as for `weft call`; the node tells
    /// where its admin API is) or its admin HTTP URL.
    #[arg(long, env = "WEFT_NODE")]
    node: Option<String>,
    /// The node's admin HTTP URL, which wins over --node.
    #[arg(long, env = "WEFT_ADMIN_URL")]
    admin: Option<String>,
    /// An operator token, for a node whose admin API takes only those
    /// (auth.operator_tokens).
    #[arg(long, env = "WEFT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    trust: Trust,
}

/// Where the admin API listens when nothing says otherwise.
const DEFAULT_ADMIN: &str = "http://127.0.0.1:7701";

impl AdminTarget {
    /// The admin API's URL, and the authorities to trust there.
    async fn url_and_roots(&self) -> anyhow::Result<(String, Roots)> {
        let roots = self.trust.roots()?;
        let url = match (&self.admin, &self.node) {
            (Some(admin), _) => admin.clone(),
            (None, Some(node)) if node.starts_with("ws://") || node.starts_with("wss://") => {
                admin_of(node, roots.clone()).await?
            }
            (None, Some(node)) => node.clone(),
            (None, None) => DEFAULT_ADMIN.to_owned(),
        };
        if !url.contains("://") {
            anyhow::bail!(
                "{url} has no scheme: give http://{url} if that is the node's admin port, or ws://{url} if it is its WebSocket port (https:// or wss:// for a node with [tls])"
            );
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!(
                "{url}: this command reads the node's admin API: give --node the node's ws:// URL or its admin http:// URL (port 7701 by default)"
            );
        }
        check_port(&url)?;
        Ok((url, roots))
    }

    /// Sends a request to the admin API. An answer from the node's WebSocket
    /// port instead (426, naming the admin port) is an error that says
    /// which URL to give.
    async fn send(&self, path: &str, post: bool) -> anyhow::Result<AdminReply> {
        let (url, roots) = self.url_and_roots().await?;
        let admin = Admin::new(&url).with_roots(roots).with_token(self.admin_token.clone());
        let reply = if post { admin.post(path, "").await? } else { admin.get(path).await? };
        if let (426, Some(port)) = (reply.status, reply.body["error"]["details"]["admin_port"].as_u64()) {
            let UrlParts { scheme, authority, host, .. } = UrlParts::of(&url);
            let ws = if scheme == "https" { "wss" } else { "ws" };
            anyhow::bail!(
                "{url} is the node's WebSocket port, not its admin API: give {scheme}://{host}:{port} (the admin port) or {ws}://{authority}"
            );
        }
        Ok(reply)
    }

    /// POSTs an empty body to `path`.
    pub async fn post(&self, path: &str) -> anyhow::Result<AdminReply> {
        self.send(path, true).await
    }

    /// GETs `path`, failing with the node's error unless it answers 200.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let reply = self.send(path, false).await?;
        if reply.status != 200 {
            let error = &reply.body["error"];
            match (error["kind"].as_str(), error["message"].as_str()) {
                (Some(kind), Some(message)) => anyhow::bail!("{kind}: {message} (HTTP {})", reply.status),
                _ => anyhow::bail!(
                    "the node answered HTTP {} to GET {path}; is --node the node's address?",
                    reply.status
                ),
            }
        }
        Ok(reply.body)
    }
}

/// Where a command reaches a node's WebSocket, and whom it trusts there.
#[derive(Args)]
pub struct WsTarget {
    /// Node WebSocket URL.
    #[arg(long, env = "WEFT_NODE", default_value = "ws://127.0.0.1:7700")]
    node: String,
    #[command(flatten)]
    trust: Trust,
}

impl WsTarget {
    /// The URL to dial, checked to be the WebSocket's and not the admin
    /// API's, and the authorities to trust there.
    pub fn url_and_roots(&self) -> anyhow::Result<(&str, Roots)> {
        let url = self.node.as_str();
        if !url.contains("://") {
            anyhow::bail!(
                "--node {url} has no scheme: calls go to the node's WebSocket, ws://{url} (wss://{url} for a node with [tls])"
            );
        }
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            anyhow::bail!(
                "--node {url}: calls go to the node's WebSocket, whose URL is ws:// or wss:// (port 7700 by default); http:// URLs are the admin API's, for `weft catalog`"
            );
        }
        check_port(url)?;
        Ok((url, self.trust.roots()?))
    }
}

/// The parts of a URL that say where it goes.
struct UrlParts<'a> {
    /// Empty when the URL has none.
    scheme: &'a str,
    /// `host:port`, or the host alone.
    authority: &'a str,
    host: &'a str,
    port: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    fn of(url: &'a str) -> Self {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let authority = rest.split('/').next().unwrap_or_default();
        // The port follows the last ':' outside an IPv6 address's brackets.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (authority, None),
        };
        UrlParts { scheme, authority, host, port }
    }
}

/// Refuses a URL whose port cannot exist (the client libraries would dial
/// some other port, or report a refused connection).
fn check_port(url: &str) -> anyhow::Result<()> {
    match UrlParts::of(url).port.map(str::parse::<u64>) {
        Some(Ok(port)) if port > u64::from(u16::MAX) => anyhow::bail!("{url}: port {port} is over 65535"),
        _ => Ok(()),
    }
}

/// The admin URL of the node whose WebSocket is at `ws`: plain HTTP to the
/// WebSocket port is answered with the admin port, on the same host and
/// with the same TLS.
async fn admin_of(ws: &str, roots: Roots) -> anyhow::Result<String> {
    let UrlParts { scheme, authority, host, .. } = UrlParts::of(ws);
    let scheme = if scheme == "wss" { "https" } else { "http" };
    let reply = Admin::new(format!("{scheme}://{authority}")).with_roots(roots).get("/").await?;
    let port = reply.body["error"]["details"]["admin_port"].as_u64().ok_or_else(|| {
        anyhow::anyhow!(
            "{ws} did not answer as a Weft node's WebSocket port (HTTP {}); give --node the node's ws:// URL or its admin http:// URL",
            reply.status
        )
    })?;
    Ok(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::UrlParts;

    #[test]
    fn url_parts_find_the_port_outside_ipv6_brackets() {
        let parts = |url| {
            let UrlParts { scheme, authority, host, port } = UrlParts::of(url);
            (scheme, authority, host, port)
        };
        assert_eq!(parts("wss://h.example:7700/x"), ("wss", "h.example:7700", "h.example", Some("7700")));
        assert_eq!(parts("http://[::1]:7701"), ("http", "[::1]:7701", "[::1]", Some("7701")));
        assert_eq!(parts("ws://[::1]/"), ("ws", "[::1]", "[::1]", None));
        assert_eq!(parts("localhost:99999"), ("", "localhost:99999", "localhost", Some("99999")));
    }
}

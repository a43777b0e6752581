//! How the client commands reach a node: `--ca`, whom they trust for its
//! certificate; `--node`, where its WebSocket is; `--admin`, where its
//! admin API is. Each URL is checked to be of its port's kind.

use std::path::PathBuf;

use clap::Args;
use weft_client::{Admin, Roots};

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
    /// The node's admin HTTP URL (`--node` is accepted too: this command
    /// talks to the admin API, not the WebSocket).
    #[arg(long, visible_alias = "node", env = "WEFT_ADMIN_URL", default_value = "http://127.0.0.1:7701")]
    admin: String,
    #[command(flatten)]
    trust: Trust,
}

impl AdminTarget {
    pub fn client(&self) -> anyhow::Result<Admin> {
        if !(self.admin.starts_with("http://") || self.admin.starts_with("https://")) {
            anyhow::bail!(
                "--admin {}: this command reads the node's admin API, whose URL is http:// or https:// (port 7701 by default); ws:// URLs are for `weft call`",
                self.admin
            );
        }
        Ok(Admin::new(&self.admin).with_roots(self.trust.roots()?))
    }

    /// GETs `path`, failing with the node's error unless it answers 200.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let reply = self.client()?.get(path).await?;
        if reply.status != 200 {
            let error = &reply.body["error"];
            match (error["kind"].as_str(), error["message"].as_str()) {
                (Some(kind), Some(message)) => anyhow::bail!("{kind}: {message} (HTTP {})", reply.status),
                _ => anyhow::bail!(
                    "{} answered HTTP {} to GET {path}; is --admin the node's admin address?",
                    self.admin,
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
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            anyhow::bail!(
                "--node {url}: calls go to the node's WebSocket, whose URL is ws:// or wss:// (port 7700 by default); http:// URLs are the admin API's, for `weft catalog`"
            );
        }
        Ok((url, self.trust.roots()?))
    }
}

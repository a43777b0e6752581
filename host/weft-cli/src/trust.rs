//! How the client commands reach a node: `--ca`, whom they trust for its
//! certificate; `--admin`, where the admin API is; and the check that a
//! `--node` URL is the WebSocket's.

use std::path::PathBuf;

use clap::Args;
use weft_client::{Admin, Roots};

#[derive(Args)]
pub struct Trust {
    /// PEM file of the CA that signed the node's certificate, for wss:// and
    /// https:// URLs [default: the public web's authorities].
    #[arg(long, env = "WEFT_CA")]
    ca: Option<PathBuf>,
}

impl Trust {
    pub fn roots(&self) -> anyhow::Result<Roots> {
        Roots::load(self.ca.as_deref()).map_err(|e| anyhow::anyhow!("--ca: {e}"))
    }
}

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
}

/// Checks that `--node` names the node's WebSocket, not its admin API.
pub fn ws_url(url: &str) -> anyhow::Result<&str> {
    if url.starts_with("ws://") || url.starts_with("wss://") {
        return Ok(url);
    }
    anyhow::bail!(
        "--node {url}: calls go to the node's WebSocket, whose URL is ws:// or wss:// (port 7700 by default); http:// URLs are the admin API's, for `weft catalog`"
    )
}

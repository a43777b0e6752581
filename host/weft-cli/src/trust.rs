//! `--ca`: whom the commands that reach a node trust for its certificate;
//! `--admin`: where the commands that read the admin API find it.

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
        Ok(Admin::new(&self.admin).with_roots(self.trust.roots()?))
    }
}

//! `--ca`: whom the commands that reach a node trust for its certificate.

use std::path::PathBuf;

use clap::Args;
use weft_client::Roots;

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

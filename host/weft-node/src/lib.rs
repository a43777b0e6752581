//! The Weft node daemon: reads its config, loads plugins into the runtime,
//! and wires the executor to the WebSocket and admin HTTP listeners. It is
//! the only crate that opens sockets and spawns tasks (weft-runtime owns
//! the one epoch-ticker thread and reads the clock for call deadlines).

pub mod admin;
pub mod alerts;
mod arriving;
mod cluster;
pub mod config;
mod executor;
mod listen;
pub mod metrics;
mod node;
pub mod peer;
pub mod signing;
pub mod tenants;
mod tls;
mod watch;
mod ws;

pub use config::{Config, ConfigError, Overrides};

/// Wall-clock milliseconds since the Unix epoch (0 before it): incarnations,
/// route epochs and the timestamps operators read.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
pub use node::{NodeError, RunningNode, start};

/// Creates `path` and the folders above it. When a file stands where a
/// folder should be, the error names it (the system's own "File exists" or
/// "Not a directory" does not say which).
pub fn create_folder(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path).map_err(|error| match path.ancestors().find(|a| a.is_file()) {
        Some(file) => std::io::Error::new(error.kind(), format!("{} is a file, not a folder", file.display())),
        None => error,
    })
}

//! The wasm runtime of a node: one wasmtime engine, the plugins loaded from a
//! folder (with their manifests and WIT signatures), and sandboxed calls that
//! take JSON arguments and return JSON results.
//!
//! It owns everything wasmtime-specific. It knows nothing of peers, clusters,
//! routing or the wire protocol beyond the value mapping of `weft-proto`.

pub mod budget;
mod cache;
mod claims;
pub mod compile;
mod config;
mod convert;
mod engine;
mod manifest;
mod plugin;
mod results;
mod runtime;
mod sandbox;
mod slots;
#[cfg(test)]
mod test_component;
pub mod units;
mod warm;
mod wit_types;

pub use compile::{CompileLimits, stop_compiling};
pub use config::{Limits, RuntimeConfig};
pub use manifest::{DEFAULT_TENANT, Manifest, ManifestError, ManifestLimits};
pub use plugin::{FunctionInfo, LoadFailure, PluginInfo};
pub use runtime::{CallTarget, LoadReport, NOT_LOADED, NodeLoad, ReloadReport, Runtime, RuntimeError, is_plugin_file};
pub use wit_types::{ComponentInfo, ExportedFunction, describe_component};

//! The crate Weft plugin authors depend on.
//!
//! It owns the guest side of Weft's host interfaces (`wit/weft`, package
//! `weft:host`): the generated bindings and small helpers over them. It knows
//! nothing about any particular plugin; a plugin's own world (its exports) is
//! generated in the plugin crate with `wit_bindgen::generate!`.
//!
//! Using a helper is what makes a plugin import the matching host interface:
//! the bindings carry their WIT in a custom section that the wasm32-wasip2
//! linker merges into the plugin's component, so a plugin that never logs
//! does not import `weft:host/log`.

mod bindings {
    wit_bindgen::generate!({
        world: "guest",
        path: "../wit/weft",
    });
}

/// Writes to the node's log, attributed to the calling plugin and function.
///
/// The host bounds what one call may log: long lines are truncated and lines
/// past a per-call budget are dropped, so logging never fails.
pub mod log {
    pub use crate::bindings::weft::host::log::Level;

    /// Logs `message` at `level`.
    pub fn log(level: Level, message: &str) {
        crate::bindings::weft::host::log::log(level, message);
    }

    /// Logs `message` at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }

    /// Logs `message` at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Logs `message` at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Logs `message` at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Logs `message` at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

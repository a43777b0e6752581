//! Weft's wire vocabulary: identifiers, client messages, error kinds and the
//! description of WIT types that travels in catalogs and plans.
//!
//! This crate owns shapes only. It knows nothing of sockets, wasmtime or
//! clusters; every other crate speaks in these types.

pub mod caller;
pub mod client;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod ids;
pub mod wit;

#[cfg(test)]
mod test_support;

pub use caller::{Caller, Callers};
pub use client::{Command, Request, Response};
pub use error::{ErrorBody, ErrorKind, WeftError};
pub use ids::{ClusterId, FunctionId, MAX_NAME_LEN, NAME_RULE, NodeId, is_valid_name};
pub use wit::{FunctionSig, WitType};

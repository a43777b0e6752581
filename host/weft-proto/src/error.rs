//! Error kinds (stable strings from the spec), their numeric codes, and the
//! error value every layer returns to a caller.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

macro_rules! error_kinds {
    ($($kind:ident = $code:literal),* $(,)?) => {
        /// What went wrong, as a caller can match on it. The string forms are
        /// part of the public protocol; the numeric codes are Weft's own.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub enum ErrorKind { $($kind),* }

        impl ErrorKind {
            pub const ALL: &[ErrorKind] = &[$(ErrorKind::$kind),*];

            pub fn code(self) -> u32 {
                match self { $(ErrorKind::$kind => $code),* }
            }

            pub fn as_str(self) -> &'static str {
                match self { $(ErrorKind::$kind => stringify!($kind)),* }
            }
        }
    };
}

error_kinds! {
    PARSE_ERROR = 1000,
    INVALID_REQUEST = 1001,
    FUNCTION_NOT_FOUND = 1002,
    AMBIGUOUS_FUNCTION = 1003,
    INVALID_ARGUMENTS = 1004,
    POLICY_DENIED = 1005,
    RATE_LIMITED = 1006,
    UNAUTHENTICATED = 1007,
    NO_ROUTE = 1008,
    HOP_BUDGET_EXHAUSTED = 1009,
    DEADLINE_EXCEEDED = 1010,
    GUEST_TRAP = 1011,
    GUEST_ERROR = 1012,
    RESOURCE_EXHAUSTED = 1013,
    UNAVAILABLE = 1014,
    INTERNAL = 1015,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it is returned to a caller: a kind, a message that says what
/// was wrong and what to do, and structured details.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct WeftError {
    pub kind: ErrorKind,
    pub message: String,
    pub details: Map<String, Value>,
}

impl WeftError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), details: Map::new() }
    }

    /// Adds one detail; details are for programs, the message is for people.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn parse(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PARSE_ERROR, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_REQUEST, message)
    }
    pub fn invalid_arguments(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_ARGUMENTS, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INTERNAL, message)
    }

    /// Prefixes the message with where the error happened (e.g. a command).
    pub fn context(mut self, prefix: impl fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    /// The error an HTTP answer carries, when its body is `{"error": ...}`
    /// as every error answer of a node is (the admin API's, and a refused
    /// WebSocket upgrade's).
    pub fn from_http_body(body: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Answer {
            error: ErrorBody,
        }
        serde_json::from_slice::<Answer>(body).ok().map(|a| a.error.into())
    }

    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            code: self.kind.code(),
            kind: self.kind,
            message: self.message.clone(),
            details: self.details.clone(),
        }
    }
}

/// The `error` member of a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u32,
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default)]
    pub details: Map<String, Value>,
}

impl From<ErrorBody> for WeftError {
    fn from(b: ErrorBody) -> Self {
        Self { kind: b.kind, message: b.message, details: b.details }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialize_as_their_spec_names_with_unique_codes() {
        let mut codes = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, Value::String(kind.as_str().to_owned()));
            assert!(codes.insert(kind.code()), "duplicate code for {kind}");
        }
        assert_eq!(ErrorKind::POLICY_DENIED.code(), 1005);
    }

    #[test]
    fn an_http_error_answer_reads_back_as_the_error() {
        let e = WeftError::new(ErrorKind::RESOURCE_EXHAUSTED, "full").with("limit", 16);
        let body = serde_json::json!({ "error": e.to_body() }).to_string();
        assert_eq!(WeftError::from_http_body(body.as_bytes()), Some(e));
        assert_eq!(WeftError::from_http_body(b"<html>busy</html>"), None);
        assert_eq!(WeftError::from_http_body(br#"{"error": "busy"}"#), None);
    }
}

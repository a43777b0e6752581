//! Newtypes for the names that identify nodes, clusters and functions.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Ids are shared (`Arc<str>`): they are cloned into every catalog entry,
/// plan step and message that names a node or cluster.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(id: impl AsRef<str>) -> Self {
                Self(Arc::from(id.as_ref()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// The longest cluster, node, tenant or plugin name: names travel in every
/// catalog entry, route and log line, and a peer's are taken from the wire.
pub const MAX_NAME_LEN: usize = 128;

/// What a cluster, node, tenant or plugin name may hold: 1 to 128 ASCII letters,
/// digits, '-', '_' and '.'. (Function names are WIT's kebab-case.)
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The rule `is_valid_name` checks, for error messages.
pub const NAME_RULE: &str = "use 1 to 128 ASCII letters, digits, '-', '_' or '.'";

string_id!(
    /// The `id` of one `weft node` process.
    NodeId
);
string_id!(
    /// The id shared by all nodes of one cluster.
    ClusterId
);

/// `plugin/function`: the identity of an exported function, without version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionId {
    pub plugin: Arc<str>,
    pub function: Arc<str>,
}

impl FunctionId {
    pub fn new(plugin: impl AsRef<str>, function: impl AsRef<str>) -> Self {
        Self { plugin: Arc::from(plugin.as_ref()), function: Arc::from(function.as_ref()) }
    }
}

impl fmt::Display for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.plugin, self.function)
    }
}

impl FromStr for FunctionId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((p, f)) if !p.is_empty() && !f.is_empty() && !f.contains('/') => Ok(Self::new(p, f)),
            _ => Err(format!("function id {s:?} is not of the form \"plugin/function\"")),
        }
    }
}

impl TryFrom<String> for FunctionId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<FunctionId> for String {
    fn from(id: FunctionId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_id_round_trips_and_rejects_bad_shapes() {
        let id: FunctionId = "math/add".parse().unwrap();
        assert_eq!(id, FunctionId::new("math", "add"));
        assert_eq!(id.to_string(), "math/add");
        for bad in ["add", "/add", "math/", "a/b/c"] {
            assert!(bad.parse::<FunctionId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(is_valid_name("alpha-1.b_2"));
        assert!(is_valid_name(&"a".repeat(MAX_NAME_LEN)));
        for bad in ["", "a b", "a\n", "é", "a/b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert!(!is_valid_name(&"a".repeat(MAX_NAME_LEN + 1)));
    }
}

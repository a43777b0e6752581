//! Who a call is made for: the identity a plugin's `callers` rule is checked
//! against, and the key that keeps warm instances apart.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ClusterId;

/// The caller of a function. Inside a cluster a forwarded call carries it
/// (members trust each other). A call from another cluster is that
/// cluster's, whatever it says, except that a cluster whose link proved its
/// key may name one of its own tenants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Caller {
    /// No token: allowed while `[auth] required` is false.
    #[default]
    Anonymous,
    /// A tenant, named by the bearer token the request carried.
    Tenant(Arc<str>),
    /// A call that came over a bridge from this cluster.
    Cluster(ClusterId),
    /// A tenant of another cluster, as that cluster vouched over an
    /// authenticated link.
    ForeignTenant { cluster: ClusterId, tenant: Arc<str> },
}

impl Caller {
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Caller::Anonymous)
    }

    /// The tenant, if the caller is one.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Tenant(t) => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Anonymous => f.write_str("an anonymous caller"),
            Caller::Tenant(t) => write!(f, "tenant {t}"),
            Caller::Cluster(c) => write!(f, "a caller from cluster {c}"),
            Caller::ForeignTenant { cluster, tenant } => write!(f, "tenant {tenant} of cluster {cluster}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_travel_as_small_json() {
        let shapes = [
            (Caller::Anonymous, r#""anonymous""#),
            (Caller::Tenant("acme".into()), r#"{"tenant":"acme"}"#),
            (Caller::Cluster(ClusterId::new("beta")), r#"{"cluster":"beta"}"#),
            (
                Caller::ForeignTenant { cluster: ClusterId::new("beta"), tenant: "acme".into() },
                r#"{"foreign_tenant":{"cluster":"beta","tenant":"acme"}}"#,
            ),
        ];
        for (caller, json) in shapes {
            assert_eq!(serde_json::to_string(&caller).unwrap(), json);
            assert_eq!(serde_json::from_str::<Caller>(json).unwrap(), caller);
        }
    }
}

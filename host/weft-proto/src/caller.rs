//! Who a call is made for (the identity a plugin's `callers` rule is checked
//! against, and the key that keeps warm instances apart), and that rule.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{ClusterId, is_valid_name};

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

/// Who may call a plugin's functions: its manifest's `callers`, made
/// explicit. Entries are "*" (anyone, anonymous and foreign callers
/// included), TENANT, "cluster:CLUSTER" (every call from that cluster) and
/// "TENANT@CLUSTER" (one tenant of that cluster). Catalog entries carry it
/// within their cluster, so that a bare function name resolves only among
/// the plugins its caller may call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Callers(Vec<String>);

/// In `callers`: every caller.
const ANYONE: &str = "*";
/// In `callers`: the prefix naming another cluster, whose calls all pass.
const CLUSTER: &str = "cluster:";

impl Default for Callers {
    fn default() -> Self {
        Callers(vec![ANYONE.to_owned()])
    }
}

impl Callers {
    pub fn new(entries: Vec<String>) -> Callers {
        Callers(entries)
    }

    /// Only these tenants of this cluster.
    pub fn tenants(names: impl IntoIterator<Item = impl Into<String>>) -> Callers {
        Callers(names.into_iter().map(Into::into).collect())
    }

    /// Whether `entry` is one of the four forms.
    pub fn entry_ok(entry: &str) -> bool {
        entry == ANYONE
            || entry
                .strip_prefix(CLUSTER)
                .map_or_else(|| entry.split('@').count() <= 2 && entry.split('@').all(is_valid_name), is_valid_name)
    }

    pub fn is_anyone(&self) -> bool {
        self.0.iter().any(|c| c == ANYONE)
    }

    pub fn entries(&self) -> &[String] {
        &self.0
    }

    /// Whether `caller` passes. Anonymous callers pass only "*"; a tenant
    /// passes "*" or its name; a call from another cluster passes "*" or
    /// "cluster:" + that cluster, and a tenant of that cluster also
    /// "TENANT@CLUSTER".
    pub fn admits(&self, caller: &Caller) -> bool {
        self.0.iter().any(|e| {
            e == ANYONE
                || match caller {
                    Caller::Anonymous => false,
                    Caller::Tenant(t) => e == &**t,
                    Caller::Cluster(c) => e.strip_prefix(CLUSTER) == Some(c.as_str()),
                    Caller::ForeignTenant { cluster, tenant } => {
                        e.strip_prefix(CLUSTER) == Some(cluster.as_str())
                            || e.split_once('@') == Some((&**tenant, cluster.as_str()))
                    }
                }
        })
    }

    /// Who may call, as cluster `to` sees it when offered the plugin: anyone
    /// there for "*" or `cluster:TO`, else its tenants named `TENANT@TO`
    /// (believed only over an authenticated link straight from `to`, which
    /// the offer decides), else no one.
    pub fn seen_from(&self, to: &str) -> Callers {
        if self.is_anyone() || self.0.iter().any(|e| e.strip_prefix(CLUSTER) == Some(to)) {
            return Callers::default();
        }
        let tenants = self.0.iter().filter_map(|e| e.split_once('@').filter(|(_, c)| *c == to).map(|(t, _)| t));
        Callers::tenants(tenants)
    }

    /// The other clusters some of whose callers pass: `cluster:C`, and
    /// `TENANT@C` where `tenants_of(C)` (a call can name another cluster's
    /// tenant only over an authenticated link straight from that cluster);
    /// None for every cluster ("*").
    pub fn foreign_clusters(&self, tenants_of: impl Fn(&str) -> bool) -> Option<Vec<String>> {
        if self.is_anyone() {
            return None;
        }
        let cluster = |e: &String| match e.strip_prefix(CLUSTER) {
            Some(cluster) => Some(cluster.to_owned()),
            None => e.split_once('@').filter(|(_, c)| tenants_of(c)).map(|(_, c)| c.to_owned()),
        };
        Some(self.0.iter().filter_map(cluster).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_cluster_sees_its_own_tenants_among_the_callers() {
        let callers = Callers::new(vec!["acme".into(), "ops@beta".into(), "dev@gamma".into(), "cluster:delta".into()]);
        assert_eq!(callers.seen_from("beta"), Callers::tenants(["ops"]));
        assert_eq!(callers.seen_from("delta"), Callers::default());
        assert_eq!(callers.seen_from("zeta"), Callers::tenants(Vec::<String>::new()));
        assert_eq!(Callers::default().seen_from("beta"), Callers::default());
    }

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

//! Plugin manifests: the optional `NAME.toml` beside `NAME.wasm`.
//!
//! ```toml
//! name = "math"            # default: the file stem
//! version = "1.2.0"        # semver, default "0.1.0"
//! tenant = "acme"          # default "default"
//! callers = ["acme", "cluster:beta", "ops@gamma"] # who may call it: tenants,
//!                           # whole other clusters ("cluster:NAME"), tenants of
//!                           # other clusters ("TENANT@CLUSTER"); "*" = anyone
//!                           # (default: "*" for tenant "default", else the owner)
//! warm = 4                  # keep up to 4 used instances per caller for reuse
//!                           # (0, the default: a fresh instance every call)
//! resources = ["gpu"]      # labels a call's `locs` can require
//! idempotent = false       # the fabric may retry a call on another node
//! export = true            # false: no function leaves the cluster
//! capabilities = ["log"]   # host interfaces granted (default: ["log"])
//! [limits]                 # may only lower the node's [limits]
//! deadline = "2s"
//! memory = "32MiB"
//! fuel = 1000000
//! [functions.divide]
//! export = false
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use weft_proto::{Callers, NAME_RULE, is_valid_name};

use crate::config::Limits;
use crate::units;

/// The owner of plugins whose manifest names none: the operator's.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: Option<String>,
    pub version: Option<semver::Version>,
    pub tenant: Option<String>,
    pub callers: Option<Vec<String>>,
    #[serde(default)]
    pub warm: u32,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub idempotent: bool,
    pub export: Option<bool>,
    pub capabilities: Option<Vec<Capability>>,
    #[serde(default)]
    pub limits: ManifestLimits,
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionManifest>,
}

/// Limits that may only lower others: a manifest's `[limits]`, a tenant's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub deadline: Option<Duration>,
    #[serde(default, deserialize_with = "units::opt_size")]
    pub memory: Option<u64>,
    pub fuel: Option<u64>,
}

impl ManifestLimits {
    /// Values that parse but could never work, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.memory.is_some_and(|m| m < 1 << 20) {
            problems.push("memory: must be at least 1MiB (a guest's stack and data alone take about that)".into());
        }
        // Deadlines are kept and shown in whole milliseconds.
        if self.deadline.is_some_and(|d| d < std::time::Duration::from_millis(1)) {
            problems.push("deadline: must be at least 1ms".into());
        }
        problems
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionManifest {
    pub export: Option<bool>,
}

/// Host interfaces a manifest may grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `weft:host/log`.
    Log,
}

#[derive(Debug, thiserror::Error)]
#[error("manifest {file}: {message}")]
pub struct ManifestError {
    pub file: String,
    pub message: String,
}

impl Manifest {
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
        let fail = |message: String| ManifestError { file: file.to_owned(), message };
        let manifest: Manifest = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        let problems = manifest.problems();
        if problems.is_empty() { Ok(manifest) } else { Err(fail(problems.join("; "))) }
    }

    /// Values that parse but could never work.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, name) in [("name", &self.name), ("tenant", &self.tenant)] {
            if let Some(name) = name.as_deref().filter(|n| !is_valid_name(n)) {
                problems.push(format!("{key} {name:?}: {NAME_RULE}"));
            }
        }
        for caller in self.callers.iter().flatten().filter(|c| !Callers::entry_ok(c)) {
            problems
                .push(format!("callers: {caller:?} is not \"*\", a tenant, \"cluster:NAME\" or \"TENANT@CLUSTER\""));
        }
        for label in self.resources.iter().filter(|l| !is_valid_name(l)) {
            problems.push(format!("resources: {label:?} is not a label; {NAME_RULE}"));
        }
        problems.extend(self.limits.problems().into_iter().map(|p| format!("limits.{p}")));
        problems
    }

    pub fn version(&self) -> semver::Version {
        self.version.clone().unwrap_or(semver::Version::new(0, 1, 0))
    }

    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }

    /// Who may call the plugin's functions: `callers`, else anyone for the
    /// operator's own plugins (tenant "default") and the owner for a tenant's.
    pub fn callers(&self) -> Callers {
        match &self.callers {
            Some(list) => Callers::new(list.clone()),
            None if self.tenant() == DEFAULT_TENANT => Callers::default(),
            None => Callers::tenants([self.tenant()]),
        }
    }

    pub fn grants(&self, cap: Capability) -> bool {
        self.capabilities.as_ref().is_none_or(|caps| caps.contains(&cap))
    }

    /// Whether `function` may be seen outside the cluster.
    pub fn exports(&self, function: &str) -> bool {
        self.functions.get(function).and_then(|f| f.export).unwrap_or(self.export.unwrap_or(true))
    }

    /// The plugin's limits: the manifest may lower `base` (the node's or
    /// its tenant's), never raise it.
    pub fn effective_limits(&self, base: &Limits) -> Limits {
        base.lowered_by(&self.limits)
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::Caller;

    use super::*;

    #[test]
    fn manifest_limits_only_lower_the_node_limits() {
        let m = Manifest::parse(
            "m.toml",
            "version = \"1.2.0\"\n[limits]\ndeadline = \"10s\"\nmemory = \"16MiB\"\nfuel = 5\n[functions.f]\nexport = false\n",
        )
        .unwrap();
        let node = Limits::default();
        let eff = m.effective_limits(&node);
        assert_eq!(eff.deadline, node.deadline);
        assert_eq!(eff.memory_bytes, 16 << 20);
        assert_eq!(eff.fuel, 5);
        assert_eq!(m.version().to_string(), "1.2.0");
        assert!(!m.exports("f"));
        assert!(m.exports("g"));
    }

    #[test]
    fn a_tenants_plugin_is_its_own_unless_shared() {
        let acme = Caller::Tenant("acme".into());
        let bob = Caller::Tenant("bob".into());
        let foreign = Caller::Cluster(weft_proto::ClusterId::new("beta"));
        let who = |text: &str| {
            let m = Manifest::parse("m.toml", text).unwrap();
            let callers = m.callers();
            [&acme, &bob, &Caller::Anonymous, &foreign].map(|c| callers.admits(c))
        };
        assert_eq!(who(""), [true; 4], "the operator's plugins are open to all");
        assert_eq!(who("tenant = \"acme\""), [true, false, false, false]);
        assert_eq!(who("tenant = \"acme\"\ncallers = [\"acme\", \"bob\"]"), [true, true, false, false]);
        assert_eq!(who("tenant = \"acme\"\ncallers = [\"*\"]"), [true; 4]);
        assert_eq!(who("callers = [\"bob\"]"), [false, true, false, false], "callers replaces the default");
        let shared = "tenant = \"acme\"\ncallers = [\"acme\", \"cluster:beta\"]";
        assert_eq!(who(shared), [true, false, false, true], "beta's calls, and only those, pass");
        assert_eq!(who("callers = [\"cluster:gamma\"]"), [false; 4]);
        assert_eq!(who("callers = [\"beta\"]"), [false; 4], "a tenant named like a cluster is not that cluster");

        let of = |tenant: &str, cluster: &str| Caller::ForeignTenant {
            cluster: weft_proto::ClusterId::new(cluster),
            tenant: tenant.into(),
        };
        let partners = |text: &str| {
            let m = Manifest::parse("m.toml", text).unwrap();
            let callers = m.callers();
            [of("ops", "beta"), of("dev", "beta"), of("ops", "gamma")].map(|c| callers.admits(&c))
        };
        assert_eq!(partners("tenant = \"acme\"\ncallers = [\"ops@beta\"]"), [true, false, false]);
        assert_eq!(partners("tenant = \"acme\"\ncallers = [\"cluster:beta\"]"), [true, true, false]);
        assert_eq!(partners("tenant = \"acme\"\ncallers = [\"ops\"]"), [false; 3], "not this cluster's ops");
        assert_eq!(partners("callers = [\"*\"]"), [true; 3]);
    }

    #[test]
    fn the_clusters_a_plugin_is_open_to_follow_its_callers() {
        let open = |text: &str| Manifest::parse("m.toml", text).unwrap().callers().foreign_clusters(|_| true);
        assert_eq!(open(""), None, "the default tenant's plugin: every cluster");
        assert_eq!(open("callers = [\"*\"]"), None);
        assert_eq!(open("tenant = \"acme\""), Some(vec![]), "a tenant's plugin: none");
        let named = "tenant = \"acme\"\ncallers = [\"acme\", \"cluster:beta\", \"bob@gamma\"]";
        assert_eq!(open(named), Some(vec!["beta".to_owned(), "gamma".to_owned()]));
        let callers = Manifest::parse("m.toml", named).unwrap().callers();
        assert_eq!(
            callers.foreign_clusters(|_| false),
            Some(vec!["beta".to_owned()]),
            "no tenant of gamma can be named"
        );
        assert_eq!(callers.foreign_clusters(|c| c == "delta"), Some(vec!["beta".to_owned()]), "nor beyond gamma");
    }

    #[test]
    fn values_that_could_never_work_are_errors() {
        let problems = |text: &str| Manifest::parse("m.toml", text).map_or_else(|e| e.message, |_| String::new());
        assert_eq!(
            problems("name = \"math\"\ntenant = \"acme\"\ncallers = [\"*\", \"bob\", \"cluster:beta\", \"ops@beta\"]"),
            ""
        );
        let found = problems(
            "name = \"a/b\"\ntenant = \"\"\ncallers = [\"\", \"cluster:\", \"a@b@c\"]\nresources = [\" \"]\n[limits]\nmemory = \"0B\"\ndeadline = \"999us\"\n",
        );
        for part in [
            "name \"a/b\": use 1 to 128 ASCII letters",
            "tenant \"\": use 1 to 128 ASCII letters",
            "callers: \"\" is not",
            "callers: \"cluster:\" is not",
            "callers: \"a@b@c\" is not",
            "resources: \" \" is not a label",
            "limits.memory: must be at least 1MiB",
            "limits.deadline: must be at least 1ms",
        ] {
            assert!(found.contains(part), "{part:?} not in {found}");
        }
    }

    #[test]
    fn unknown_manifest_keys_are_errors() {
        let err = Manifest::parse("m.toml", "versoin = \"1\"").unwrap_err();
        assert!(err.to_string().contains("versoin"), "{err}");
        assert!(Manifest::parse("m.toml", "capabilities = [\"network\"]").is_err());
    }
}

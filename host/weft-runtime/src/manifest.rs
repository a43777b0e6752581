//! Plugin manifests: the optional `NAME.toml` beside `NAME.wasm`.
//!
//! ```toml
//! name = "math"            # default: the file stem
//! version = "1.2.0"        # semver, default "0.1.0"
//! tenant = "acme"          # default "default"
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

use crate::config::Limits;
use crate::units;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: Option<String>,
    pub version: Option<semver::Version>,
    pub tenant: Option<String>,
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

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub deadline: Option<Duration>,
    #[serde(default, deserialize_with = "units::opt_size")]
    pub memory: Option<u64>,
    pub fuel: Option<u64>,
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
        toml::from_str(text).map_err(|e| ManifestError { file: file.to_owned(), message: e.to_string() })
    }

    pub fn version(&self) -> semver::Version {
        self.version.clone().unwrap_or(semver::Version::new(0, 1, 0))
    }

    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or("default")
    }

    pub fn grants(&self, cap: Capability) -> bool {
        self.capabilities.as_ref().is_none_or(|caps| caps.contains(&cap))
    }

    /// Whether `function` may be seen outside the cluster.
    pub fn exports(&self, function: &str) -> bool {
        self.functions.get(function).and_then(|f| f.export).unwrap_or(self.export.unwrap_or(true))
    }

    /// The plugin's limits: the manifest may lower the node's, never raise them.
    pub fn effective_limits(&self, node: &Limits) -> Limits {
        let fuel = match (self.limits.fuel, node.fuel) {
            (Some(m), 0) => m,
            (Some(m), n) if m > 0 => m.min(n),
            (_, n) => n,
        };
        Limits {
            deadline: self.limits.deadline.map_or(node.deadline, |d| d.min(node.deadline)),
            memory_bytes: self.limits.memory.map_or(node.memory_bytes, |m| m.min(node.memory_bytes)),
            fuel,
        }
    }
}

#[cfg(test)]
mod tests {
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
    fn unknown_manifest_keys_are_errors() {
        let err = Manifest::parse("m.toml", "versoin = \"1\"").unwrap_err();
        assert!(err.to_string().contains("versoin"), "{err}");
        assert!(Manifest::parse("m.toml", "capabilities = [\"network\"]").is_err());
    }
}

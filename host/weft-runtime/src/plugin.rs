//! A loaded plugin: its manifest, compiled component (pre-instantiated), and
//! the functions it exports with their WIT signatures.

use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::{ComponentExportIndex, InstancePre};
use weft_proto::Callers;
use weft_proto::wit::FunctionSig;

use crate::cache::CompileSource;
use crate::config::Limits;
use crate::manifest::{Capability, Manifest};
use crate::sandbox::{LogRate, SandboxState};
use crate::units::format_size;
use crate::warm::{Spares, WarmPool};

pub(crate) struct Plugin {
    pub(crate) name: String,
    pub(crate) file: String,
    pub(crate) manifest: Manifest,
    /// Who may call it: the manifest's `callers`, made explicit.
    pub(crate) callers: Callers,
    pub(crate) version: semver::Version,
    pub(crate) limits: Limits,
    pub(crate) pre: InstancePre<SandboxState>,
    pub(crate) functions: Vec<Function>,
    pub(crate) source: CompileSource,
    pub(crate) compile_ms: f64,
    /// "plugin@version", used in logs.
    pub(crate) label: Arc<str>,
    /// Digest of the wasm and manifest files it was loaded from.
    pub(crate) fingerprint: [u8; 32],
    /// Its compiled form's name in the cache.
    pub(crate) cache_key: String,
    /// Idle instances kept for reuse (manifest `warm`); they go with the plugin.
    pub(crate) warm: WarmPool,
    pub(crate) spares: Spares,
    /// Log records its calls may still write this second.
    pub(crate) log_rate: Arc<LogRate>,
}

#[derive(Clone)]
pub(crate) struct Function {
    pub(crate) name: String,
    /// "plugin/function", naming it in errors.
    pub(crate) qualified: String,
    /// "plugin@version/function", naming the guest in its log lines.
    pub(crate) who: Arc<str>,
    pub(crate) sig: FunctionSig,
    pub(crate) index: ComponentExportIndex,
    /// The signature uses resource handles: callable only inside the node, never exported.
    pub(crate) local_only: bool,
    /// Bytes of its signature in catalog messages.
    pub(crate) catalog_bytes: usize,
    /// By how much its result's copy budget is cut (`results::lift_divisor`).
    pub(crate) lift_divisor: usize,
}

impl Plugin {
    /// The same plugin under other limits, with no idle instances.
    pub(crate) fn relimited(&self, limits: Limits) -> Plugin {
        Plugin {
            name: self.name.clone(),
            file: self.file.clone(),
            manifest: self.manifest.clone(),
            callers: self.callers.clone(),
            version: self.version.clone(),
            limits,
            pre: self.pre.clone(),
            functions: self.functions.clone(),
            source: self.source,
            compile_ms: self.compile_ms,
            label: self.label.clone(),
            fingerprint: self.fingerprint,
            cache_key: self.cache_key.clone(),
            warm: WarmPool::default(),
            spares: Spares::default(),
            log_rate: self.log_rate.clone(),
        }
    }

    pub(crate) fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }

    pub(crate) fn info(&self) -> PluginInfo {
        PluginInfo {
            name: self.name.clone(),
            version: self.version.to_string(),
            file: self.file.clone(),
            tenant: self.manifest.tenant().to_owned(),
            callers: self.callers.clone(),
            warm: self.manifest.warm,
            warm_idle: self.warm.len(),
            spares_idle: self.spares.len(),
            resources: self.manifest.resources.clone(),
            idempotent: self.manifest.idempotent,
            limits: LimitsInfo {
                deadline_ms: u64::try_from(self.limits.deadline.as_millis()).unwrap_or(u64::MAX),
                memory: format_size(self.limits.memory_bytes),
                fuel: self.limits.fuel,
            },
            capabilities: [Capability::Log].into_iter().filter(|c| self.manifest.grants(*c)).collect(),
            state: "ready",
            compiled_from: self.source,
            compile_ms: self.compile_ms,
            functions: self
                .functions
                .iter()
                .map(|f| FunctionInfo {
                    name: f.name.clone(),
                    signature: f.sig.to_string(),
                    sig: f.sig.clone(),
                    exported: !f.local_only && self.manifest.exports(&f.name),
                    local_only: f.local_only,
                    catalog_bytes: f.catalog_bytes,
                })
                .collect(),
        }
    }
}

/// A plugin as `/v1/plugins` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub file: String,
    pub tenant: String,
    /// Who may call it ("*": anyone).
    pub callers: Callers,
    /// Instances kept per caller for reuse (0: a fresh one every call).
    pub warm: u32,
    /// Instances idle in its warm pool now.
    pub warm_idle: usize,
    /// Spare instances ready now: never called, the next calls of any
    /// caller take them instead of instantiating.
    pub spares_idle: usize,
    pub resources: Vec<String>,
    pub idempotent: bool,
    pub limits: LimitsInfo,
    pub capabilities: Vec<Capability>,
    pub state: &'static str,
    pub compiled_from: CompileSource,
    pub compile_ms: f64,
    pub functions: Vec<FunctionInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LimitsInfo {
    pub deadline_ms: u64,
    pub memory: String,
    pub fuel: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    /// The WIT signature as text, e.g. `func(value: string) -> string`.
    pub signature: String,
    pub sig: FunctionSig,
    /// Visible outside the cluster (manifest `export`, and no handles).
    pub exported: bool,
    pub local_only: bool,
    /// Bytes of its signature in catalog messages (JSON, types expanded).
    #[serde(skip)]
    pub catalog_bytes: usize,
}

/// A plugin file that could not be loaded, and why.
#[derive(Clone, Debug, Serialize, thiserror::Error)]
#[error("plugin {file}: {reason}")]
pub struct LoadFailure {
    pub file: String,
    pub reason: String,
}

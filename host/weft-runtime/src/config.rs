//! What the runtime needs from the node's configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::compile::CompileLimits;
use crate::manifest::ManifestLimits;

/// The sandbox armed for every call (node defaults; a manifest may lower them).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub deadline: Duration,
    pub memory_bytes: u64,
    /// 0 = no fuel budget.
    pub fuel: u64,
}

impl Limits {
    /// These limits, lowered where `by` sets a smaller value (fuel 0 here
    /// means none, so any budget in `by` is lower).
    pub fn lowered_by(&self, by: &ManifestLimits) -> Limits {
        let fuel = match (by.fuel, self.fuel) {
            (Some(m), 0) => m,
            (Some(m), n) if m > 0 => m.min(n),
            (_, n) => n,
        };
        Limits {
            deadline: by.deadline.map_or(self.deadline, |d| d.min(self.deadline)),
            memory_bytes: by.memory.map_or(self.memory_bytes, |m| m.min(self.memory_bytes)),
            fuel,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { deadline: Duration::from_secs(5), memory_bytes: 64 << 20, fuel: 0 }
    }
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub limits: Limits,
    /// The sandbox of each named tenant's plugins (within `limits`); a
    /// tenant not listed gets `limits`.
    pub tenant_limits: BTreeMap<String, Limits>,
    /// Calls executing at once; also sizes the pooling allocator.
    pub max_concurrency: u32,
    /// Idle warm instances kept, all plugins together (each holds a slot
    /// of the pooling allocator, which is sized for them too).
    pub max_warm_instances: u32,
    /// Largest result (as JSON) a call may return.
    pub max_result_bytes: usize,
    /// Plugin files larger than this are refused before compiling.
    pub max_plugin_bytes: u64,
    /// Bytes of guest stdout/stderr kept per call (the rest is counted, not kept).
    pub max_output_bytes: usize,
    /// Log lines a guest may write per call.
    pub max_log_lines: u32,
    /// Where precompiled components are cached; None = compile every time.
    pub cache_dir: Option<PathBuf>,
    /// Bytes the cache may hold beyond the components loaded plugins use.
    pub cache_max_bytes: u64,
    /// Bounds on compiling one plugin (where it happens in a child process).
    pub compile: CompileLimits,
}

impl RuntimeConfig {
    /// Calls that may execute at once (`max_concurrency`, at least one).
    pub(crate) fn call_slots(&self) -> u32 {
        self.max_concurrency.max(1)
    }

    /// Host bytes one call may make wasmtime allocate while it copies the
    /// result out of the guest (and the arguments of each host call in).
    /// The result limit is checked only after that copy, and a guest can
    /// make it far larger than its memory (list entries that alias one
    /// string), so the copy itself is bounded; 8x leaves room for wasmtime's
    /// per-value overhead on lists of small values.
    pub fn lift_budget(&self) -> usize {
        self.max_result_bytes.saturating_mul(8)
    }

    /// Host bytes that large results may take, node-wide, while they become
    /// JSON: room for two of the largest a call may copy out (each taking
    /// about twice its copy while converted), so a lone one always fits.
    pub fn conversion_budget(&self) -> usize {
        self.lift_budget().saturating_mul(4)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            tenant_limits: BTreeMap::new(),
            max_concurrency: 256,
            max_warm_instances: 64,
            max_result_bytes: 16 << 20,
            max_plugin_bytes: 64 << 20,
            max_output_bytes: 64 << 10,
            max_log_lines: 100,
            cache_dir: None,
            cache_max_bytes: 1 << 30,
            compile: CompileLimits::default(),
        }
    }
}

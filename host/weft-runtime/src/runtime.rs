//! The runtime: loads plugins and runs sandboxed calls.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmtime::component::{Component, Linker, Val};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use weft_proto::wit::{self, WitType};
use weft_proto::{Caller, ErrorKind, WeftError};

use crate::budget::Budget;
use crate::cache;
use crate::claims::Claims;
use crate::config::{Limits, RuntimeConfig};
use crate::convert::{ToVal, from_val};
use crate::engine::{EpochTicker, FUEL_SLICE, build_engine};
use crate::manifest::{Capability, Manifest};
use crate::plugin::{Function, LoadFailure, Plugin, PluginInfo};
use crate::results;
use crate::sandbox::{self, CallOutput, GUEST_LOG_RATE, SandboxState};
use crate::slots::{Slot, Slots};
use crate::units::format_size;
use crate::warm::{SparePlace, Spares, WarmBudget, WarmInstance, WarmPool};
use crate::wit_types::describe_component;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
}

/// Which function to call: plugin name and version (as resolved by the
/// planner) and function name.
#[derive(Clone, Debug)]
pub struct CallTarget<'a> {
    pub plugin: &'a str,
    pub version: Option<&'a semver::Version>,
    pub function: &'a str,
}

/// What else the node is doing when a call ends, as its caller sees it.
/// On an idle node a call's teardown and the plugin's next spare instance
/// are built after the answer, on a core that has nothing else to do; on a
/// busy one that extra task only costs, so the call tears down in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeLoad {
    Idle,
    Busy,
}

/// What a folder load did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    pub failed: Vec<LoadFailure>,
}

/// What a reload of the plugins folder did ("name@version" labels).
#[derive(Debug, Default, serde::Serialize)]
pub struct ReloadReport {
    pub loaded: Vec<String>,
    pub unloaded: Vec<String>,
    pub unchanged: usize,
    pub failed: Vec<LoadFailure>,
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<SandboxState>,
    config: RuntimeConfig,
    pooled: bool,
    plugins: RwLock<Vec<Arc<Plugin>>>,
    failures: RwLock<Vec<LoadFailure>>,
    refused: cache::Refused,
    /// One reload at a time (the folder watcher and an operator may overlap).
    reloading: Mutex<()>,
    /// Versions a reload replaced by another version of their plugin, and
    /// when: for `REPLACED_GRACE` they still serve calls planned for them.
    replaced: RwLock<Vec<(Arc<Plugin>, Instant)>>,
    /// Each tenant's limits (`RuntimeConfig::tenant_limits`, then as reloaded).
    tenant_limits: RwLock<BTreeMap<String, Limits>>,
    stores: StoreMaker,
    slots: Slots,
    /// Calls between taking a sandbox slot and giving back their instance
    /// (slots held by teardowns in the background are not counted).
    running: AtomicUsize,
    warm_budget: WarmBudget,
    /// Host memory that large results take while they become JSON.
    conversions: Arc<Budget>,
    janitor: Arc<Janitor>,
    _ticker: EpochTicker,
}

/// Marks the error of a call that found its plugin version gone: nothing
/// ran, so the caller may try another node that has it.
pub const NOT_LOADED: &str = "not_loaded";

/// How long past its deadline an instance is waited for when it is stuck
/// outside guest code (a host call), where the epoch cannot interrupt it.
const BACKSTOP: Duration = Duration::from_millis(200);

/// How long a plugin version that a reload replaced with another version of
/// the plugin still serves the calls planned for it: an upgrade then fails
/// none of the requests planned just before it (a removed plugin stops at
/// once).
const REPLACED_GRACE: Duration = Duration::from_secs(10);

/// Bytes of function names and signature text one plugin may advertise.
const MAX_CATALOG_TEXT: usize = 256 << 10;

/// Bytes of signatures as the catalog carries them (JSON, named types
/// expanded) one plugin may advertise.
const MAX_CATALOG_JSON: usize = 1 << 20;

/// A signature's size in catalog messages.
fn catalog_json_bytes(sig: &weft_proto::FunctionSig) -> usize {
    serde_json::to_vec(sig).map_or(usize::MAX, |json| json.len())
}

impl Runtime {
    pub fn new(mut config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let tenant_limits = RwLock::new(std::mem::take(&mut config.tenant_limits));
        let (engine, pooled) = build_engine(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        sandbox::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        Ok(Self {
            _ticker: EpochTicker::start(engine.clone()),
            stores: StoreMaker::new(&engine, &config),
            slots: Slots::new(config.call_slots() as usize),
            running: AtomicUsize::new(0),
            warm_budget: WarmBudget::new(config.max_warm_instances),
            conversions: Budget::new(config.conversion_budget()),
            janitor: Arc::default(),
            engine,
            linker,
            config,
            pooled,
            plugins: RwLock::default(),
            failures: RwLock::default(),
            refused: cache::Refused::default(),
            reloading: Mutex::default(),
            replaced: RwLock::default(),
            tenant_limits,
        })
    }

    /// The limits a plugin with `manifest` runs under: its tenant's (or the
    /// node's), lowered by the manifest.
    fn limits_for(&self, manifest: &Manifest) -> (Limits, bool) {
        let tenants = read(&self.tenant_limits);
        let tenant = tenants.get(manifest.tenant());
        (manifest.effective_limits(tenant.unwrap_or(&self.config.limits)), tenant.is_some())
    }

    /// Applies reloaded tenant limits: each plugin whose limits change is
    /// replaced by a copy under the new ones (its idle instances, made under
    /// the old, go with it; calls running finish under the old). Returns the
    /// plugins replaced.
    pub fn set_tenant_limits(&self, limits: BTreeMap<String, Limits>) -> Vec<String> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        *write(&self.tenant_limits) = limits;
        let mut plugins = write(&self.plugins);
        let mut changed = Vec::new();
        for plugin in plugins.iter_mut() {
            let (limits, tenant_known) = self.limits_for(&plugin.manifest);
            if limits != plugin.limits {
                let tenant = plugin.manifest.tenant();
                if !tenant_known && tenant != crate::manifest::DEFAULT_TENANT {
                    tracing::warn!(plugin = %plugin.label, tenant, ?limits, "the plugin's tenant has no [tenants] entry any more, so the plugin runs under the node's [limits]; remove the plugin, or give it a tenant");
                }
                tracing::info!(plugin = %plugin.label, ?limits, "plugin limits changed with its tenant's");
                changed.push(plugin.label.to_string());
                *plugin = Arc::new(plugin.relimited(limits));
            }
        }
        changed
    }

    /// Whether instances come from the pooling allocator.
    pub fn is_pooled(&self) -> bool {
        self.pooled
    }

    /// Loads every `*.wasm` of a folder (with `NAME.toml` manifests). A file
    /// that fails is logged with its reason and skipped; the rest load.
    pub fn load_dir(&self, dir: &Path) -> LoadReport {
        let mut report = LoadReport::default();
        let (folder, names) = match wasm_files(dir) {
            Ok(found) => found,
            Err(reason) => {
                report.failed.push(self.fail(dir.display().to_string(), reason));
                return report;
            }
        };
        let mut manifests = read_manifests(&folder, &names);
        let claims = claims_of(&manifests);
        for file in names {
            if let Some(reason) = claims.contest(&file) {
                report.failed.push(self.fail(file, reason));
                continue;
            }
            let stem = file.trim_end_matches(".wasm").to_owned();
            let result = read_plugin_files(&folder, &file, &mut manifests, self.config.max_plugin_bytes)
                .and_then(|(wasm, manifest)| self.load_component(&file, &stem, &wasm, manifest.as_deref()));
            match result {
                Ok(name) => report.loaded.push(name),
                Err(reason) => report.failed.push(self.fail(file, reason)),
            }
        }
        self.prune_cache();
        report
    }

    /// Keeps the compile cache within `cache_max_bytes`
    /// (`limits.compile_cache`): the compiled forms of the loaded plugins
    /// stay, the others go, least recently used first. Loading a folder
    /// does this; a node serving the bundled plugins calls it once loaded.
    pub fn prune_cache(&self) {
        let Some(dir) = self.config.cache_dir.as_deref() else {
            return;
        };
        let keys: Vec<String> = read(&self.plugins).iter().map(|p| p.cache_key.clone()).collect();
        let in_use = keys.iter().map(String::as_str).collect();
        let pruned = cache::prune(dir, &in_use, self.config.cache_max_bytes);
        let limit = format_size(self.config.cache_max_bytes);
        if pruned.removed > 0 {
            let (freed, left) = (format_size(pruned.freed), format_size(pruned.left));
            tracing::info!(removed = pruned.removed, %freed, %left, "compile cache pruned to limits.compile_cache ({limit}): files no loaded plugin uses, least recently used first");
        }
        // A limit of 0 asks for just that: only what is loaded stays.
        if pruned.left > self.config.cache_max_bytes && self.config.cache_max_bytes > 0 {
            let left = format_size(pruned.left);
            tracing::warn!(%left, "the loaded plugins' compiled forms alone take more than limits.compile_cache ({limit}); they stay, but raise the limit");
        }
    }

    fn fail(&self, file: String, reason: String) -> LoadFailure {
        tracing::error!(file = %file, reason = %reason, "plugin not loaded");
        let failure = LoadFailure { file, reason };
        write(&self.failures).push(failure.clone());
        failure
    }

    /// Loads one component from bytes; `stem` names the plugin unless the
    /// manifest does. Returns "name@version".
    pub fn load_bytes(
        &self,
        file: &str,
        stem: &str,
        wasm: &[u8],
        manifest: Option<&str>,
    ) -> Result<String, LoadFailure> {
        self.load_component(file, stem, wasm, manifest).map_err(|reason| self.fail(file.to_owned(), reason))
    }

    fn load_component(
        &self,
        file: &str,
        stem: &str,
        wasm: &[u8],
        manifest_text: Option<&str>,
    ) -> Result<String, String> {
        let plugin = self.build(file, stem, wasm, manifest_text, None)?;
        let label = plugin.label.to_string();
        write(&self.plugins).push(Arc::new(plugin));
        Ok(label)
    }

    /// Compiles and checks one plugin without registering it. `replacing`
    /// names the file of a loaded plugin this one will take the place of
    /// (its name@version does not count as taken).
    fn build(
        &self,
        file: &str,
        stem: &str,
        wasm: &[u8],
        manifest_text: Option<&str>,
        replacing: Option<&str>,
    ) -> Result<Plugin, String> {
        if wasm.len() as u64 > self.config.max_plugin_bytes {
            return Err(format!(
                "{} bytes is over the plugin size limit of {} bytes (limits.max_plugin)",
                wasm.len(),
                self.config.max_plugin_bytes
            ));
        }
        let manifest = match manifest_text {
            Some(text) => Manifest::parse(&format!("{stem}.toml"), text).map_err(|e| e.to_string())?,
            None => Manifest::default(),
        };
        // A manifest's `name` was checked with the manifest; a file name is checked here.
        let name = manifest.name.clone().unwrap_or_else(|| stem.to_owned());
        if !weft_proto::is_valid_name(&name) {
            return Err(format!(
                "plugin name {name:?} (from the file name; rename the file or set `name` in its manifest): {}",
                weft_proto::NAME_RULE
            ));
        }
        let version = manifest.version();
        let holder = read(&self.plugins)
            .iter()
            .find(|p| p.name == name && p.version == version && Some(p.file.as_str()) != replacing)
            .map(|p| p.file.clone());
        if let Some(other) = holder {
            return Err(format!(
                "plugin {name}@{version} is already loaded from {other}; give each version its own manifest version (files that swapped versions load once one of them is moved out of the folder for a reload and back)"
            ));
        }
        let info = describe_component(wasm)?;
        // Every node of the cluster (and of bridged ones) keeps and gossips
        // these in its catalog, so their size is bounded like a file's.
        let catalog_bytes: usize = info.functions.iter().map(|f| f.name.len() + f.sig.to_string().len()).sum();
        if catalog_bytes > MAX_CATALOG_TEXT {
            return Err(format!(
                "its function names and signatures take {catalog_bytes} bytes of text, over the limit of {MAX_CATALOG_TEXT} bytes a plugin may put in the catalog; use shorter names, fewer fields or fewer functions"
            ));
        }
        // The catalog carries each signature in full, named types expanded.
        let sizes: Vec<usize> = info.functions.iter().map(|f| catalog_json_bytes(&f.sig)).collect();
        let catalog_json: usize = sizes.iter().sum();
        if catalog_json > MAX_CATALOG_JSON {
            return Err(format!(
                "its signatures, each named type written out in full, take {catalog_json} bytes in the catalog, over the limit of {MAX_CATALOG_JSON}; use fewer or smaller shared types"
            ));
        }
        if let Some(unknown) = manifest.functions.keys().find(|f| !info.functions.iter().any(|e| &e.name == *f)) {
            let exported: Vec<&str> = info.functions.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "manifest {stem}.toml: [functions.{unknown}] names no function of the component (it exports {})",
                exported.join(", ")
            ));
        }
        let started = Instant::now();
        let cache_key = cache::cache_key(&self.engine, wasm);
        let (component, source) = cache::load_or_compile(
            &self.engine,
            self.config.cache_dir.as_deref(),
            &cache_key,
            wasm,
            &self.config.compile,
            &self.refused,
        )
        .map_err(compile_failure)?;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        if info.functions.is_empty() {
            // A component cut short at a section's end is still valid, and
            // the first bytes any writer puts in the file are one: loading
            // it would withdraw every function the file had. (After the
            // compile: a file over the compile limits is refused for that.)
            return Err(if info.interfaces.is_empty() {
                "the component exports no functions: if the file is still being written, the next write loads it again (write plugins elsewhere and move them into the folder); else export at least one function from its world".to_owned()
            } else {
                format!(
                    "the component exports interfaces only ({}), which Weft does not call: export its functions from the world itself (`export greet: func(...)`, not `export greeter;`)",
                    info.interfaces.join(", ")
                )
            });
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            format!("the component imports something Weft does not provide (only WASI p2 and weft:host are available): {e:#}")
        })?;
        let label: Arc<str> = format!("{name}@{version}").into();
        let functions = info
            .functions
            .into_iter()
            .zip(sizes)
            .map(|(f, catalog_bytes)| {
                let index = export_index(&component, &f.name)?;
                Ok(Function {
                    catalog_bytes,
                    lift_divisor: results::lift_divisor(f.sig.result.as_ref()),
                    local_only: f.sig.uses_handles(),
                    qualified: format!("{name}/{}", f.name),
                    who: format!("{label}/{}", f.name).into(),
                    name: f.name,
                    sig: f.sig,
                    index,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let (limits, by_tenant) = self.limits_for(&manifest);
        warn_of_manifest_overreach(&label, &manifest, &limits, by_tenant);
        fits_memory_limit(&component, &limits)?;
        let plugin = Plugin {
            name,
            file: file.to_owned(),
            limits,
            callers: manifest.callers(),
            manifest,
            version,
            pre,
            functions,
            source,
            compile_ms,
            label: label.clone(),
            fingerprint: fingerprint(wasm, manifest_text),
            cache_key,
            warm: WarmPool::default(),
            spares: Spares::default(),
            log_rate: Arc::default(),
        };
        tracing::info!(plugin = %label, file, functions = plugin.functions.len(), ?source, compile_ms, "plugin loaded");
        Ok(plugin)
    }

    /// Brings the loaded plugins in line with the folder: files that are new
    /// or changed (wasm or manifest) are loaded, plugins whose file is gone
    /// are unloaded, the rest stay as they are. A changed file that fails to
    /// load leaves its previous version serving. Calls already running keep
    /// the plugin they started with.
    pub fn reload_dir(&self, dir: &Path) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = ReloadReport::default();
        // Failures describe the folder as it is now.
        write(&self.failures).clear();
        let (folder, files) = match wasm_files(dir) {
            Ok(found) => found,
            Err(reason) => {
                report.failed.push(self.fail(dir.display().to_string(), format!("{reason}; nothing was changed")));
                return report;
            }
        };
        let mut manifests = read_manifests(&folder, &files);
        let claims = claims_of(&manifests);
        write(&self.plugins).retain(|p| {
            let (gone, contested) = (!files.contains(&p.file), claims.contest(&p.file).is_some());
            if gone {
                tracing::info!(plugin = %p.label, file = %p.file, "plugin unloaded: its file is gone");
            } else if contested {
                tracing::info!(plugin = %p.label, file = %p.file, "plugin unloaded: another tenant's plugin claims its name too");
            }
            if gone || contested {
                report.unloaded.push(p.label.to_string());
            }
            // Its file gone but its name still claimed: an upgrade that
            // ships a new file.
            if gone && !contested && claims.claimed(&p.name) {
                write(&self.replaced).push((p.clone(), Instant::now()));
            }
            !(gone || contested)
        });
        for file in files {
            if let Some(reason) = claims.contest(&file) {
                report.failed.push(self.fail(file, reason));
                continue;
            }
            let stem = file.trim_end_matches(".wasm").to_owned();
            let (wasm, manifest) = match read_plugin_files(&folder, &file, &mut manifests, self.config.max_plugin_bytes)
            {
                Ok(read) => read,
                Err(reason) => {
                    report.failed.push(self.fail(file, reason));
                    continue;
                }
            };
            let print = fingerprint(&wasm, manifest.as_deref());
            let current = read(&self.plugins).iter().find(|p| p.file == file).cloned();
            if current.as_ref().is_some_and(|p| p.fingerprint == print) {
                report.unchanged += 1;
                continue;
            }
            match self.build(&file, &stem, &wasm, manifest.as_deref(), current.as_ref().map(|p| p.file.as_str())) {
                Ok(plugin) => {
                    report.loaded.push(plugin.label.to_string());
                    let mut plugins = write(&self.plugins);
                    if let Some(old) = &current {
                        tracing::info!(plugin = %old.label, file = %file, "plugin replaced by its changed file");
                        let dropped: Vec<&str> = old
                            .functions
                            .iter()
                            .map(|f| f.name.as_str())
                            .filter(|f| plugin.function(f).is_none())
                            .collect();
                        if !dropped.is_empty() {
                            tracing::warn!(plugin = %plugin.label, file = %file, functions = ?dropped, "the changed file no longer has functions the old one had; they are withdrawn (if the file is still being written, the next write loads it again)");
                        }
                        plugins.retain(|p| p.file != file);
                        report.unloaded.push(old.label.to_string());
                        if old.name == plugin.name && old.version != plugin.version {
                            write(&self.replaced).push((old.clone(), Instant::now()));
                        }
                    }
                    plugins.push(Arc::new(plugin));
                }
                Err(reason) => {
                    let reason = match &current {
                        Some(old) => format!("{reason}; {} keeps serving", old.label),
                        None => reason,
                    };
                    report.failed.push(self.fail(file, reason));
                }
            }
        }
        self.prune_cache();
        report
    }

    /// Benchmark support (weft-bench): instantiates `target` once, then times
    /// `iterations` calls on that one instance, without the per-call set-up
    /// a warm instance gets: the floor that reuse approaches.
    #[doc(hidden)]
    pub async fn time_reused_instance(
        &self,
        target: CallTarget<'_>,
        args: &[Value],
        iterations: usize,
    ) -> Result<Vec<Duration>, WeftError> {
        let plugin = self.find(&target)?;
        let function = plugin
            .function(target.function)
            .ok_or_else(|| WeftError::new(ErrorKind::FUNCTION_NOT_FOUND, target.function.to_owned()))?;
        let params = convert_args(target.function, &function.sig, args)?;
        let (mut store, _output) =
            self.stores.sandbox(&plugin, function.who.clone(), Instant::now() + Duration::from_secs(3600))?;
        let internal = |e: wasmtime::Error| WeftError::internal(format!("{e:#}"));
        let instance = plugin.pre.instantiate_async(&mut store).await.map_err(internal)?;
        let func =
            instance.get_func(&mut store, function.index).ok_or_else(|| WeftError::internal("export vanished"))?;
        let mut results = vec![Val::Bool(false); usize::from(function.sig.result.is_some())];
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            func.call_async(&mut store, &params, &mut results).await.map_err(internal)?;
            let value = results.first().cloned().map(from_val).transpose().map_err(WeftError::internal)?;
            std::hint::black_box(value.map(|v| wit::to_json(&v)));
            times.push(started.elapsed());
        }
        Ok(times)
    }

    /// Tears a spent store down. Returning an instance's slot to the pool
    /// (zeroing the pages it dirtied) is about a third of a fresh call and
    /// instantiating is most of the rest; the caller's answer needs
    /// neither. When the caller says the node is idle and no other call is
    /// in the sandbox, the store goes to the node's `Janitor`, whose task
    /// drops it after the answer and builds a spare instance to replace it,
    /// if the budget has room. The commands of one request run one after
    /// another here, so each of a fan-out's instances is replaced this way
    /// and the next fan-out finds its spares. Under load every worker is
    /// busy anyway and the extra work only costs, so the store is dropped
    /// here and no spare is built. The slot goes with the store: slots in
    /// teardown count against `max_concurrency`, so the pool cannot run out.
    fn retire(
        &self,
        store: Store<SandboxState>,
        slot: Slot,
        plugin: &Arc<Plugin>,
        function: &Function,
        load: NodeLoad,
    ) {
        let alone = load == NodeLoad::Idle && self.running.load(Ordering::Acquire) == 1;
        let Some(rt) = alone.then(|| tokio::runtime::Handle::try_current().ok()).flatten() else {
            return;
        };
        let spare = plugin.spares.reserve(&self.warm_budget);
        let spent = Spent { store, slot, plugin: plugin.clone(), who: function.who.clone(), spare };
        self.janitor.hand(spent, &self.stores, &rt);
    }

    /// Waits until no call is running and no spent instance is still being
    /// torn down (see `retire`).
    pub async fn settled(&self) {
        self.slots.settled().await;
    }

    /// Idle warm instances on the node now (spares not counted).
    pub fn warm_idle(&self) -> usize {
        read(&self.plugins).iter().map(|p| p.warm.len()).sum()
    }

    /// Spare instances ready on the node now.
    pub fn spares_idle(&self) -> usize {
        read(&self.plugins).iter().map(|p| p.spares.len()).sum()
    }

    pub fn plugins(&self) -> Vec<PluginInfo> {
        read(&self.plugins).iter().map(|p| p.info()).collect()
    }

    /// Reports guest output dropped since a plugin's last report, where one
    /// is due (at most one in 10 s) and no call of the plugin made it:
    /// without this, what the last calls of a flood dropped would wait for
    /// the plugin's next call. The node calls it once a second.
    pub fn report_dropped_output(&self) {
        for plugin in read(&self.plugins).iter() {
            if let Some(d) = plugin.log_rate.dropped(sandbox::Dropped::default()) {
                report_dropped(&plugin.label, "", &d);
            }
        }
    }

    pub fn load_failures(&self) -> Vec<LoadFailure> {
        read(&self.failures).clone()
    }

    /// Whether some version of plugin `name` is loaded.
    pub fn has_plugin(&self, name: &str) -> bool {
        read(&self.plugins).iter().any(|p| p.name == name)
    }

    /// Lets go of the versions replaced more than `REPLACED_GRACE` ago (the
    /// node calls it once a second).
    pub fn forget_replaced(&self) {
        let mut replaced = write(&self.replaced);
        if !replaced.is_empty() {
            replaced.retain(|(_, at)| at.elapsed() < REPLACED_GRACE);
        }
    }

    fn find(&self, target: &CallTarget<'_>) -> Result<Arc<Plugin>, WeftError> {
        let plugins = read(&self.plugins);
        plugins
            .iter()
            .filter(|p| p.name == target.plugin && target.version.is_none_or(|v| *v == p.version))
            .max_by(|a, b| a.version.cmp(&b.version))
            .cloned()
            .or_else(|| {
                // Planned before an upgrade: the version it replaced still serves.
                let version = target.version?;
                let replaced = read(&self.replaced);
                let fresh = |at: &Instant| at.elapsed() < REPLACED_GRACE;
                replaced.iter().find(|(p, at)| p.name == target.plugin && p.version == *version && fresh(at)).map(|(p, _)| p.clone())
            })
            .ok_or_else(|| {
                // Planned from a catalog a reload has since changed, most often.
                let wanted = target.version.map_or_else(|| target.plugin.to_owned(), |v| format!("{}@{v}", target.plugin));
                let loaded: Vec<String> =
                    plugins.iter().filter(|p| p.name == target.plugin).map(|p| p.label.to_string()).collect();
                let here = if loaded.is_empty() { String::new() } else { format!(" (it has {})", loaded.join(", ")) };
                WeftError::new(
                    ErrorKind::FUNCTION_NOT_FOUND,
                    format!(
                        "plugin {wanted} is not loaded on this node{here}; it was unloaded or replaced since the call was planned: retry to use the catalog as it is now"
                    ),
                )
                .with(NOT_LOADED, true)
            })
    }

    /// Calls a function for `caller` in a sandboxed instance: a fresh one,
    /// or for a plugin with `warm` in its manifest one this caller used
    /// before. `args` are positional JSON values; `deadline` is the caller's
    /// remaining time (the plugin's own deadline applies if sooner).
    pub async fn call(
        &self,
        target: CallTarget<'_>,
        args: &[Value],
        deadline: Instant,
        caller: &Caller,
        load: NodeLoad,
    ) -> Result<Value, WeftError> {
        self.call_admitted(target, args, deadline, caller, load, &|| Ok(())).await
    }

    /// `call`, with `admitted` asked again once the call holds a sandbox
    /// slot: what let the caller in (a federation policy) may have been
    /// reloaded while it waited, and a call refused now runs nothing.
    pub async fn call_admitted(
        &self,
        target: CallTarget<'_>,
        args: &[Value],
        deadline: Instant,
        caller: &Caller,
        load: NodeLoad,
        admitted: &(dyn Fn() -> Result<(), WeftError> + Sync),
    ) -> Result<Value, WeftError> {
        let plugin = self.find(&target)?;
        let Some(function) = plugin.function(target.function) else {
            // The catalog the call was planned from said it had: another
            // node may still have the version that does.
            return Err(WeftError::new(
                ErrorKind::FUNCTION_NOT_FOUND,
                format!(
                    "plugin {} has no function {} on this node; its file was changed since the call was planned: retry to use the catalog as it is now",
                    plugin.label, target.function
                ),
            )
            .with(NOT_LOADED, true));
        };
        let qualified = &function.qualified;
        if !plugin.callers.admits(caller) {
            // Whose plugin it is, is none of the caller's business.
            return Err(WeftError::new(
                ErrorKind::POLICY_DENIED,
                format!(
                    "{qualified} is not open to {caller}: the plugin's manifest `callers` does not list it; ask the operator to add it"
                ),
            )
            .with("rule", "callers"));
        }
        // Only the caller's deadline runs while the call waits for a slot:
        // the plugin's own is for running, and a guest is not blamed for
        // the time other calls held every slot.
        let slot = tokio::time::timeout_at(deadline.into(), self.slots.acquire(caller)).await.map_err(|_| {
            WeftError::new(
                ErrorKind::DEADLINE_EXCEEDED,
                format!("{qualified}: the deadline passed while waiting for a free sandbox slot (limits.max_concurrency = {})", self.config.max_concurrency),
            )
        })?;
        admitted()?;
        let own_deadline = Instant::now() + plugin.limits.deadline;
        // Whose deadline an interrupt enforces: the caller's is a timeout,
        // the plugin's own a fault of the guest.
        let stop = if deadline < own_deadline { Stop::Caller } else { Stop::Plugin(plugin.limits.deadline) };
        let deadline = deadline.min(own_deadline);
        let _running = Running::enter(&self.running);
        // Converted only now: calls waiting for a slot hold one copy of their arguments, not two.
        let params = convert_args(qualified, &function.sig, args)?;

        let warm = plugin.manifest.warm > 0;
        let kept = warm.then(|| plugin.warm.take(caller)).flatten().or_else(|| plugin.spares.take());
        let (mut store, instance, output, uses) = match kept {
            Some(mut w) => {
                w.store.data_mut().rearm(deadline, self.config.max_log_lines, function.who.clone());
                set_fuel(&mut w.store, &plugin)?;
                // An idle instance's epoch deadline passed long ago; left
                // alone, the guest's first epoch check would yield at once.
                w.store.set_epoch_deadline(1);
                (w.store, Some(w.instance), w.output, w.uses)
            }
            None => {
                let (store, output) = self.stores.sandbox(&plugin, function.who.clone(), deadline)?;
                (store, None, output, 0)
            }
        };

        store.set_hostcall_fuel(self.config.lift_budget() / function.lift_divisor);
        let result_count = usize::from(function.sig.result.is_some());
        let run = async {
            let instance = match instance {
                Some(instance) => instance,
                None => plugin.pre.instantiate_async(&mut store).await.map_err(|e| e.context(Instantiating))?,
            };
            let func = instance
                .get_func(&mut store, function.index)
                .ok_or_else(|| wasmtime::Error::msg("export vanished from the instance"))?;
            let mut results = vec![Val::Bool(false); result_count];
            func.call_async(&mut store, &params, &mut results).await?;
            Ok::<_, wasmtime::Error>((instance, results))
        };
        // Second line of defence: the epoch interrupts a running guest; this
        // drops the call if it is stuck anywhere else (e.g. a host future).
        let outcome = tokio::time::timeout_at((deadline + BACKSTOP).into(), run).await;
        let memory_hit = store.data().limiter.hit;
        let dropped_logs = store.data().dropped_log_lines();
        emit_output(&plugin, &function.name, &output, dropped_logs, self.config.max_log_lines);
        // Only an instance whose call finished cleanly is kept; the rest
        // (traps, timeouts) go back to the pool with their store (`retire`).
        let results = match outcome {
            Ok(Ok((instance, results))) if warm => {
                let kept = WarmInstance { store, instance, output, uses: uses + 1 };
                plugin.warm.put(caller, kept, plugin.manifest.warm, &self.warm_budget);
                Ok(Ok(results))
            }
            other => {
                self.retire(store, slot, &plugin, function, load);
                other.map(|ran| ran.map(|(_, results)| results))
            }
        };
        let results = match results {
            Err(_) => {
                let e = stop.error(qualified, "was dropped (it was blocked where it cannot be interrupted)");
                return Err(guest_failed(&plugin, e));
            }
            Ok(Err(e)) if is_lift_budget_error(&e) => {
                let limit = self.config.lift_budget();
                let e = WeftError::new(
                    ErrorKind::RESOURCE_EXHAUSTED,
                    format!(
                        "{qualified} returned a result that needs more than {limit} bytes of host memory to copy out (8 x limits.max_result); return less data or page it"
                    ),
                )
                .with("limit", limit);
                plugin.log_rate.failed(&e.message);
                return Err(e);
            }
            Ok(Err(e)) => return Err(guest_failed(&plugin, trap_error(qualified, &plugin, e, memory_hit, stop))),
            Ok(Ok(results)) => results,
        };
        let Some(result) = results.into_iter().next() else {
            return Ok(Value::Null);
        };
        let returns_result = matches!(function.sig.result, Some(WitType::Result { .. }));
        let limit = self.config.max_result_bytes;
        let Some(size) = results::large(&result) else {
            return results::answer(result, returns_result, qualified, limit);
        };
        // Copying a large result out can take the guest's deadline past:
        // then no one waits for it, and converting it would only hold memory.
        if Instant::now() >= deadline {
            return Err(guest_failed(&plugin, stop.error(qualified, "its large result was dropped unconverted")));
        }
        let charge =
            self.conversions.charge(size).ok_or_else(|| results::refusal(&self.conversions, qualified, size))?;
        // Converting a large result (millions of values) can take a good
        // part of a second: on the blocking pool, the node's workers go on
        // serving requests, health checks and links meanwhile.
        let qualified = qualified.clone();
        tokio::task::spawn_blocking(move || {
            let answer = results::answer(result, returns_result, &qualified, limit);
            drop(charge);
            answer
        })
        .await
        .unwrap_or_else(|e| Err(WeftError::internal(format!("converting a result failed: {e}"))))
    }
}

/// A call's store on its way out, with what replacing it takes.
struct Spent {
    store: Store<SandboxState>,
    slot: Slot,
    plugin: Arc<Plugin>,
    who: Arc<str>,
    /// The spare's place in the budget, if it had room.
    spare: Option<SparePlace>,
}

impl Spent {
    /// Drops the store, builds the spare, and only then frees the slot.
    async fn finish(self, stores: &StoreMaker) {
        let Spent { store, slot, plugin, who, spare } = self;
        drop(store);
        let deadline = Instant::now() + plugin.limits.deadline;
        if let Some(place) = spare
            && let Ok((mut store, output)) = stores.sandbox(&plugin, who, deadline)
        {
            // The epoch deadline stops guest code, not a start-up that waits
            // in a host call; the backstop bounds that, as for a call.
            match tokio::time::timeout_at((deadline + BACKSTOP).into(), plugin.pre.instantiate_async(&mut store)).await
            {
                Ok(Ok(instance)) => plugin.spares.put(WarmInstance { store, instance, output, uses: 0 }, place),
                // No spare while the pool is full; a start-up that traps or
                // runs past the deadline would fail every spare the same way.
                Ok(Err(e)) => {
                    let error = format!("{e:#}");
                    if !is_pool_full(&error) {
                        tracing::warn!(plugin = %plugin.label, %error, "making an instance of the plugin failed; it gets no spare instances");
                        plugin.spares.stop();
                    }
                }
                Err(_) => {
                    tracing::warn!(plugin = %plugin.label, deadline = ?plugin.limits.deadline, "making an instance of the plugin outlasted its deadline (its start-up waits or loops); it gets no spare instances");
                    plugin.spares.stop();
                }
            }
        }
        drop(slot);
    }
}

/// Works through spent stores one after another in a single task, started
/// when the first arrives: the ten instances of a fan-out cost one spawn,
/// not ten, and their teardown does not wake the other worker onto the core
/// the request and its client need while the request is still running.
#[derive(Default)]
struct Janitor {
    queue: Mutex<JanitorQueue>,
}

#[derive(Default)]
struct JanitorQueue {
    spent: VecDeque<Spent>,
    working: bool,
}

impl Janitor {
    fn queue(&self) -> MutexGuard<'_, JanitorQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand(self: &Arc<Self>, spent: Spent, stores: &StoreMaker, rt: &tokio::runtime::Handle) {
        let start = {
            let mut queue = self.queue();
            queue.spent.push_back(spent);
            !std::mem::replace(&mut queue.working, true)
        };
        if start {
            let (mut shift, stores) = (Shift { janitor: self.clone(), over: false }, stores.clone());
            rt.spawn(async move { shift.work(&stores).await });
        }
    }

    /// The next spent store; `None` (and the task ends) once none is left.
    fn next(&self) -> Option<Spent> {
        let mut queue = self.queue();
        let next = queue.spent.pop_front();
        queue.working = next.is_some();
        next
    }
}

/// The janitor's task. If its runtime drops it midway (shutting down), the
/// queue is marked idle, so the next spent store starts a new task.
struct Shift {
    janitor: Arc<Janitor>,
    over: bool,
}

impl Shift {
    async fn work(&mut self, stores: &StoreMaker) {
        while let Some(spent) = self.janitor.next() {
            spent.finish(stores).await;
        }
        self.over = true;
    }
}

impl Drop for Shift {
    fn drop(&mut self) {
        if !self.over {
            self.janitor.queue().working = false;
        }
    }
}

/// Builds the stores of a node's calls: cheap to clone into the task that
/// builds a spare after a call's answer.
#[derive(Clone)]
struct StoreMaker {
    engine: Engine,
    log_lines: u32,
    output_bytes: usize,
    lift_budget: usize,
}

impl StoreMaker {
    fn new(engine: &Engine, config: &RuntimeConfig) -> Self {
        Self {
            engine: engine.clone(),
            log_lines: config.max_log_lines,
            output_bytes: config.max_output_bytes,
            lift_budget: config.lift_budget(),
        }
    }

    /// A fresh store armed with the plugin's sandbox: memory and table
    /// limits, fuel (yielding every `FUEL_SLICE`), and an epoch callback
    /// that yields every tick and interrupts the guest at `deadline`.
    fn sandbox(
        &self,
        plugin: &Plugin,
        who: Arc<str>,
        deadline: Instant,
    ) -> Result<(Store<SandboxState>, CallOutput), WeftError> {
        let (state, output) = SandboxState::new(
            plugin.limits.memory_bytes,
            deadline,
            self.log_lines,
            plugin.manifest.grants(Capability::Log),
            self.output_bytes,
            who,
            plugin.log_rate.clone(),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        set_fuel(&mut store, plugin)?;
        store
            .fuel_async_yield_interval(Some(FUEL_SLICE))
            .map_err(|e| WeftError::internal(format!("cannot set the fuel slice: {e}")))?;
        store.set_hostcall_fuel(self.lift_budget);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            Ok(if Instant::now() >= ctx.data().deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        Ok((store, output))
    }
}

/// Why a component did not compile, as a plugin author can act on it.
fn compile_failure(e: String) -> String {
    if e.contains("component model async") {
        format!(
            "it uses `stream`, `future` or `error-context`, which Weft does not support; export functions without them ({e})"
        )
    } else if e.contains("minimum byte size") && e.contains("exceeds the limit") {
        // The instance pool's memories are the node's limits.memory large.
        format!(
            "its linear memory starts larger than the node's [limits] memory allows, so it could never run; raise limits.memory ({e})"
        )
    } else {
        format!("cannot compile the component: {e}")
    }
}

/// A component whose memory starts larger than its sandbox's limit could
/// never be instantiated: refused at load, rather than every call failing.
fn fits_memory_limit(component: &Component, limits: &Limits) -> Result<(), String> {
    let pages = component.resources_required().and_then(|r| r.max_initial_memory_size).unwrap_or(0);
    let start = pages.saturating_mul(64 << 10);
    if start <= limits.memory_bytes {
        return Ok(());
    }
    Err(format!(
        "its linear memory starts at {} KiB, over its sandbox memory limit of {} KiB (the smallest of [limits] memory, its tenant's and its manifest's); raise that limit to at least {} KiB",
        start >> 10,
        limits.memory_bytes >> 10,
        start >> 10
    ))
}

/// Logs what a plugin's manifest asks for and does not get: limits above
/// the node's or its tenant's (the lower one applies), and callers that
/// cannot exist (an empty list, or only the owner when it is a tenant
/// without a `[tenants]` entry).
fn warn_of_manifest_overreach(label: &str, manifest: &Manifest, limits: &crate::Limits, tenant_known: bool) {
    let asked = &manifest.limits;
    if asked.deadline.is_some_and(|d| d > limits.deadline) || asked.memory.is_some_and(|m| m > limits.memory_bytes) {
        tracing::warn!(
            plugin = label,
            deadline = ?limits.deadline,
            memory = limits.memory_bytes,
            "the manifest's [limits] ask for more than the node (or the plugin's tenant) allows; the lower limits apply"
        );
    }
    let tenant = manifest.tenant();
    if tenant != crate::manifest::DEFAULT_TENANT && !tenant_known && manifest.callers.is_none() {
        tracing::warn!(
            plugin = label,
            tenant,
            "the plugin's tenant has no [tenants] entry on this node and its manifest sets no `callers`, so no request can call it"
        );
    }
    if manifest.callers.as_ref().is_some_and(Vec::is_empty) {
        tracing::warn!(plugin = label, "the manifest's `callers` is empty, so no request can call the plugin");
    }
}

/// A call counted in `Runtime::running` until it ends.
struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Running(count)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A call's fuel: the plugin's budget, or unmetered without one.
fn set_fuel(store: &mut Store<SandboxState>, plugin: &Plugin) -> Result<(), WeftError> {
    let fuel = if plugin.limits.fuel == 0 { u64::MAX } else { plugin.limits.fuel };
    store.set_fuel(fuel).map_err(|e| WeftError::internal(format!("cannot set fuel: {e}")))
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// Whether a file of the plugins folder is one the runtime reads: a plugin
/// (`*.wasm`) or its manifest (`*.toml`). Hidden files are left alone: the
/// way to drop a large plugin in is to copy it under a hidden name and
/// rename it into place.
pub fn is_plugin_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".wasm") || name.ends_with(".toml"))
}

/// The plugins folder and the names of its `*.wasm` files, sorted.
fn wasm_files(dir: &Path) -> Result<(cap_std::fs::Dir, Vec<String>), String> {
    let folder = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(|e| format!("cannot open the plugins folder: {e}"))?;
    let files: Vec<String> = folder
        .entries()
        .map_err(|e| format!("cannot list the plugins folder: {e}"))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_plugin_file(n))
        .collect();
    let mut names: Vec<String> = files.iter().filter(|n| n.ends_with(".wasm")).cloned().collect();
    names.sort();
    // A manifest applies to the .wasm of its own name: one without is a typo
    // (`hello-world.toml` beside `hello_world.wasm`) that would go unnoticed.
    for manifest in files.iter().filter_map(|n| n.strip_suffix(".toml")) {
        if !names.iter().any(|n| n.strip_suffix(".wasm") == Some(manifest)) {
            tracing::warn!(file = %format!("{manifest}.toml"), "a manifest without {manifest}.wasm beside it is not used; name it after the plugin's .wasm file");
        }
    }
    Ok((folder, names))
}

/// A manifest is a few lines of TOML; all of a folder's are held at once.
const MAX_MANIFEST_BYTES: u64 = 64 << 10;

/// Each plugin file's manifest text (if it has one), read once: the claims
/// and the load see the same manifest, however the file changes meanwhile.
type Manifests = BTreeMap<String, Result<Option<String>, String>>;

fn read_manifests(folder: &cap_std::fs::Dir, files: &[String]) -> Manifests {
    files.iter().map(|file| (file.clone(), read_manifest(folder, file.trim_end_matches(".wasm")))).collect()
}

/// The plugin name and tenant each file claims, from its manifest. A
/// manifest that cannot be read or parsed claims nothing: its plugin fails
/// to load anyway, saying why.
fn claims_of(manifests: &Manifests) -> Claims {
    let mut claims = Claims::default();
    for (file, text) in manifests {
        let stem = file.trim_end_matches(".wasm");
        let manifest = match text {
            Ok(None) => Manifest::default(),
            Ok(Some(text)) => match Manifest::parse(&format!("{stem}.toml"), text) {
                Ok(manifest) => manifest,
                Err(_) => continue,
            },
            Err(_) => continue,
        };
        claims.add(file, manifest.name.as_deref().unwrap_or(stem), manifest.tenant());
    }
    claims
}

fn read_plugin_files(
    folder: &cap_std::fs::Dir,
    file: &str,
    manifests: &mut Manifests,
    max: u64,
) -> Result<(Vec<u8>, Option<String>), String> {
    let wasm = read_regular(folder, file, max).map_err(|e| e.to_string())?;
    Ok((wasm, manifests.remove(file).unwrap_or(Ok(None))?))
}

/// The text of `STEM.toml`, if there is one.
fn read_manifest(folder: &cap_std::fs::Dir, stem: &str) -> Result<Option<String>, String> {
    let manifest_file = format!("{stem}.toml");
    match read_regular(folder, &manifest_file, MAX_MANIFEST_BYTES) {
        Ok(bytes) => Ok(Some(String::from_utf8(bytes).map_err(|_| format!("{manifest_file} is not UTF-8 text"))?)),
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(ReadError::TooLarge { size, max }) => Err(format!(
            "{manifest_file}: {size} bytes is over the manifest size limit of {max} bytes; a manifest is a few lines of TOML"
        )),
        Err(e) => Err(format!("{manifest_file}: {e}")),
    }
}

enum ReadError {
    Io(std::io::Error),
    NotAFile { directory: bool },
    TooLarge { size: u64, max: u64 },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // cap-std's word for a symlink out of the folder it opened.
            ReadError::Io(e) if e.to_string().contains("outside of the filesystem") => f.write_str(
                "a symlink that leads outside the plugins folder, which is not followed: copy the file into the folder (links within it are followed)",
            ),
            ReadError::Io(e) => write!(f, "cannot read: {e}"),
            ReadError::NotAFile { directory: true } => f.write_str("a directory, not a plugin file"),
            ReadError::NotAFile { directory: false } => {
                f.write_str("not a regular file (a FIFO, device or socket is never read)")
            }
            ReadError::TooLarge { size, max } => {
                write!(f, "{size} bytes is over the plugin size limit of {max} bytes (limits.max_plugin)")
            }
        }
    }
}

/// Reads a regular file of at most `max` bytes. It is opened without
/// blocking and checked before it is read: opening a FIFO for reading would
/// otherwise wait for a writer for ever, and hold up every reload with it.
fn read_regular(folder: &cap_std::fs::Dir, name: &str, max: u64) -> Result<Vec<u8>, ReadError> {
    use cap_std::fs::OpenOptionsExt;
    use std::io::Read;
    let mut options = cap_std::fs::OpenOptions::new();
    options.read(true).custom_flags(libc::O_NONBLOCK);
    let mut file = folder.open_with(name, &options).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile { directory: meta.is_dir() });
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge { size: meta.len(), max });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // A file that grows while it is read stops at the limit, and fails then.
    file.by_ref().take(max + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge { size: bytes.len() as u64, max });
    }
    Ok(bytes)
}

/// Identifies a plugin's files: a reload skips a file whose wasm and
/// manifest are unchanged.
fn fingerprint(wasm: &[u8], manifest: Option<&str>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(wasm);
    h.update([u8::from(manifest.is_some())]);
    h.update(manifest.unwrap_or_default());
    h.finalize().into()
}

fn export_index(component: &Component, name: &str) -> Result<wasmtime::component::ComponentExportIndex, String> {
    component
        .get_export_index(None, name)
        .ok_or_else(|| format!("export {name} is described in the component's WIT but cannot be found"))
}

fn convert_args(qualified: &str, sig: &weft_proto::FunctionSig, args: &[Value]) -> Result<Vec<Val>, WeftError> {
    if args.len() != sig.params.len() {
        return Err(WeftError::invalid_arguments(format!(
            "{qualified} takes {} argument(s) ({sig}), got {}",
            sig.params.len(),
            args.len()
        )));
    }
    sig.params
        .iter()
        .zip(args)
        .map(|(p, a)| {
            wit::convert(a, &p.ty, &p.name, &ToVal).map_err(|m| {
                WeftError::invalid_arguments(format!(
                    "argument '{}' of {qualified}: expected {}, got {}",
                    m.path, m.expected, m.found
                ))
                .with("parameter", p.name.clone())
                .with("expected", p.ty.to_string())
            })
        })
        .collect()
}

/// Logs a call's captured stdout and stderr, each line a record, at most
/// `max_lines` of each (the budget of the log import): 64 KiB of newlines
/// would otherwise be 65,536 records.
fn emit_output(
    plugin: &Plugin,
    function: &str,
    output: &CallOutput,
    (dropped_logs, denied): (u32, bool),
    max_lines: u32,
) {
    let label = &*plugin.label;
    let (mut dropped_bytes, mut dropped_lines) = (0, 0);
    for (stream, capture) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let (text, dropped) = capture.take();
        let mut lines = text.lines();
        // The line the plugin's log rate turned away is dropped too.
        let mut refused = 0;
        for line in lines.by_ref().take(max_lines as usize) {
            if !plugin.log_rate.admits() {
                refused = 1;
                break;
            }
            let line = sandbox::log_line(line);
            tracing::info!(target: "weft::guest", plugin = label, function, stream, "{line}");
        }
        dropped_bytes += dropped;
        dropped_lines += lines.count() + refused;
    }
    let (logs, denied_logs) = if denied { (0, dropped_logs) } else { (dropped_logs, 0) };
    let report = plugin.log_rate.dropped(sandbox::Dropped {
        bytes: dropped_bytes,
        lines: dropped_lines,
        logs: u64::from(logs),
        denied_logs: u64::from(denied_logs),
        ..sandbox::Dropped::default()
    });
    if let Some(d) = report {
        report_dropped(label, function, &d);
    }
}

/// Logs what a plugin's calls dropped since the last report; `function`
/// names the call that made the report due ("" for `report_dropped_output`).
fn report_dropped(label: &str, function: &str, d: &sandbox::Dropped) {
    if d.bytes > 0 || d.lines > 0 || d.logs > 0 {
        tracing::warn!(target: "weft::guest", plugin = label, function, dropped_bytes = d.bytes, dropped_lines = d.lines, dropped_logs = d.logs, "guest output (stdout, stderr and log calls) over the per-call limits, or over the plugin's {GUEST_LOG_RATE} records a second, was dropped since the last such report (at most one every 10 s)");
    }
    if d.denied_logs > 0 {
        tracing::warn!(target: "weft::guest", plugin = label, function, dropped_logs = d.denied_logs, "guest log calls dropped since the last such report: the plugin's manifest does not grant the log capability");
    }
    if d.failed_calls > 0 {
        tracing::warn!(target: "weft::guest", plugin = label, failed_calls = d.failed_calls, last = %d.last_failure, "calls of the plugin failed by the guest's doing (traps, deadlines, results it could not hand over) since the last such report");
    }
}

/// Counts `e` for the plugin's next report when the guest caused it (a trap,
/// an interrupt, a value it handed over that cannot be read): the log then
/// names the plugins that misbehave, not only the metrics. The caller's
/// deadline (`DEADLINE_EXCEEDED`) and a full pool (`RESOURCE_EXHAUSTED`)
/// are not the guest's doing.
fn guest_failed(plugin: &Plugin, e: WeftError) -> WeftError {
    if e.kind == ErrorKind::GUEST_TRAP {
        plugin.log_rate.failed(&e.message);
    }
    e
}

/// wasmtime's "hostcall fuel" error: copying data out of the guest would
/// pass the store's budget. Its type is private, so the text is matched; the
/// sandbox tests catch a wasmtime upgrade that changes it.
fn is_lift_budget_error(e: &wasmtime::Error) -> bool {
    e.downcast_ref::<Trap>().is_none() && format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted")
}

/// Marks a failure to instantiate, which is not the guest's doing.
#[derive(Debug)]
struct Instantiating;

impl std::fmt::Display for Instantiating {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("instantiating the component")
    }
}

/// The deadline a call runs under: the caller's, or the plugin's own when
/// that comes first.
#[derive(Clone, Copy)]
enum Stop {
    Caller,
    Plugin(Duration),
}

impl Stop {
    /// The call stopped at this deadline; `how` says how it was stopped.
    fn error(self, qualified: &str, how: &str) -> WeftError {
        let e = match self {
            Stop::Caller => WeftError::new(
                ErrorKind::DEADLINE_EXCEEDED,
                format!(
                    "{qualified} was still running at the caller's deadline and {how}; give the request a longer timeout_ms"
                ),
            ),
            Stop::Plugin(limit) => WeftError::new(
                ErrorKind::GUEST_TRAP,
                format!(
                    "{qualified} ran past its deadline of {limit:?} and {how}; the deadline is the smallest of [limits] deadline, its tenant's and its manifest's: raise that one, or give the function less to do"
                ),
            ),
        };
        e.with("trap", "interrupted")
    }
}

/// wasmtime's error when the pooling allocator has no room left.
fn is_pool_full(text: &str) -> bool {
    text.contains("maximum concurrent") || text.contains("pooling")
}

/// Maps a failed call to GUEST_TRAP (with a `trap` detail) or, for
/// failures outside the guest, RESOURCE_EXHAUSTED / INTERNAL.
fn trap_error(
    qualified: &str,
    plugin: &Plugin,
    e: wasmtime::Error,
    memory_hit: Option<(usize, usize)>,
    stop: Stop,
) -> WeftError {
    let text = format!("{e:#}");
    let Some(trap) = e.downcast_ref::<Trap>().copied() else {
        if is_pool_full(&text) {
            return WeftError::new(
                ErrorKind::RESOURCE_EXHAUSTED,
                format!("{qualified}: no sandbox slot is free: {text}"),
            );
        }
        let (detail, why) = if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            // WASI 0.2's exit carries only success or failure, not a code.
            let status = if exit.0 == 0 { "success" } else { "failure" };
            ("exit", format!("called exit ({status}) instead of returning; a function must return its result"))
        } else if e.downcast_ref::<Instantiating>().is_some() {
            let share = &crate::engine::PER_INSTANCE;
            let why = if text.contains("count too high") {
                format!(
                    "could not be instantiated: it needs more than an instance may hold ({} core instances, {} tables, {} memories): {text}",
                    share.core_instances, share.tables, share.memories
                )
            } else if text.contains("exceeds memory limits") {
                format!(
                    "could not be instantiated: its memories together start above its sandbox memory limit of {} KiB (the smallest of [limits] memory, its tenant's and its manifest's); raise that limit: {}",
                    plugin.limits.memory_bytes >> 10,
                    e.root_cause()
                )
            } else {
                format!("could not be instantiated: {}", e.root_cause())
            };
            ("host_error", why)
        } else {
            // Not a trap, during the call: the host could not read what the
            // guest handed it (invalid UTF-8, a char out of range, a pointer
            // out of bounds) or refused what it asked for (over a host
            // limit), which is the guest's fault. The cause says which.
            let cause = e.root_cause().to_string();
            (
                "guest_fault",
                format!(
                    "handed the host a value it cannot read, or asked it for more than it allows: {}",
                    sandbox::truncate(&cause, 300)
                ),
            )
        };
        return WeftError::new(ErrorKind::GUEST_TRAP, format!("{qualified} {why}"))
            .with("trap", detail)
            .with("backtrace", sandbox::truncate(&text, 2048));
    };
    let (detail, why) = match (trap, memory_hit) {
        (Trap::UnreachableCodeReached, Some((current, desired))) => (
            "memory_limit".to_owned(),
            format!(
                "hit its memory limit of {}: it asked to grow a memory from {} to {} (the limit is the smallest of [limits] memory, its tenant's and its manifest's: raise that one, or have the function use less)",
                format_size(plugin.limits.memory_bytes),
                format_size(current as u64),
                format_size(desired as u64)
            ),
        ),
        (Trap::Interrupt, _) => {
            return stop.error(qualified, "was interrupted").with("backtrace", sandbox::truncate(&text, 2048));
        }
        (Trap::OutOfFuel, _) => {
            ("out_of_fuel".to_owned(), format!("used up its fuel budget of {}", plugin.limits.fuel))
        }
        (Trap::StackOverflow, _) => (
            "stack_overflow".to_owned(),
            "overflowed its call stack, whose size is the same for every plugin: have it recurse less deeply"
                .to_owned(),
        ),
        (Trap::UnreachableCodeReached, None) => {
            ("unreachable".to_owned(), "executed `unreachable` (a panic or abort in the guest)".to_owned())
        }
        (other, _) => (snake_case(&format!("{other:?}")), other.to_string()),
    };
    WeftError::new(ErrorKind::GUEST_TRAP, format!("{qualified} {why}"))
        .with("trap", detail)
        .with("backtrace", sandbox::truncate(&text, 2048))
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(rt: &Runtime) -> Vec<String> {
        rt.plugins().into_iter().map(|p| format!("{}@{}", p.name, p.version)).collect()
    }

    /// A runtime with the hostile plugin under `manifest`.
    fn hostile(manifest: &str, max_warm_instances: u32) -> (Runtime, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("hostile.wasm"), weft_bundle::get("hostile").expect("bundled")).expect("write");
        std::fs::write(dir.path().join("hostile.toml"), manifest).expect("write");
        let config = RuntimeConfig { max_warm_instances, ..RuntimeConfig::default() };
        let rt = Runtime::new(config).expect("runtime");
        assert!(rt.load_dir(dir.path()).failed.is_empty());
        (rt, dir)
    }

    async fn snoop(rt: &Runtime, caller: &Caller, value: &str) -> Value {
        let target = CallTarget { plugin: "hostile", version: None, function: "snoop" };
        let deadline = Instant::now() + Duration::from_secs(5);
        rt.call(target, &[Value::from(value)], deadline, caller, NodeLoad::Idle).await.expect("snoop")
    }

    /// Instances that each hold their full share of the pool's core
    /// instances, in every slot but one, leave the pool room for another
    /// plugin's call; one that would hold more is refused, and says why.
    #[tokio::test]
    async fn instances_built_to_hold_many_core_instances_cannot_exhaust_the_pool() {
        use crate::test_component::TestComponent;
        let config = RuntimeConfig { max_concurrency: 16, max_warm_instances: 4, ..RuntimeConfig::default() };
        let rt = Arc::new(Runtime::new(config).expect("runtime"));
        let share = crate::engine::PER_INSTANCE.core_instances;
        for (name, core_instances) in [("many", share), ("toomany", share + 1)] {
            let wasm = TestComponent { spins: true, core_instances, ..TestComponent::default() }.build();
            rt.load_bytes(&format!("{name}.wasm"), name, &wasm, Some("[limits]\ndeadline = \"3s\"\n")).expect("load");
        }
        rt.load_bytes("echo.wasm", "echo", weft_bundle::get("echo").expect("bundled"), None).expect("echo");
        let caller = Caller::Anonymous;
        let call = |plugin: &'static str, function: &'static str, args: Vec<Value>| {
            let rt = rt.clone();
            let caller = caller.clone();
            async move {
                let target = CallTarget { plugin, version: None, function };
                let deadline = Instant::now() + Duration::from_secs(5);
                rt.call(target, &args, deadline, &caller, NodeLoad::Busy).await
            }
        };
        let mut spins: Vec<_> = (0..15).map(|_| tokio::spawn(call("many", "g", vec![]))).collect();
        while rt.running.load(Ordering::Acquire) < 15 {
            if let Some(ended) = spins.iter().position(|s| s.is_finished()) {
                panic!("a spin ended early: {:?}", spins.swap_remove(ended).await);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(call("echo", "echo", vec![Value::from("x")]).await.expect("echo"), Value::from("x"));
        for spin in spins {
            let e = spin.await.expect("join").unwrap_err();
            assert_eq!(e.details["trap"], "interrupted", "{e:?}");
        }
        let e = call("toomany", "g", vec![]).await.unwrap_err();
        assert!(e.message.contains("more than an instance may hold"), "{e:?}");
    }

    /// A call planned for a version this node no longer has says which it
    /// wanted, which it has, and to retry.
    #[tokio::test]
    async fn a_call_for_a_version_gone_since_it_was_planned_says_so() {
        let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
        rt.load_bytes("echo.wasm", "echo", weft_bundle::get("echo").expect("bundled"), None).expect("echo");
        let version = semver::Version::new(9, 9, 9);
        let target = CallTarget { plugin: "echo", version: Some(&version), function: "echo" };
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = rt.call(target, &[Value::from("x")], deadline, &Caller::Anonymous, NodeLoad::Idle).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND);
        assert!(
            e.message.contains("plugin echo@9.9.9 is not loaded") && e.message.contains("(it has echo@0.1.0)"),
            "{e:?}"
        );
        assert!(e.message.contains("retry"), "{e:?}");
        // A function the planned version's new file dropped may still be
        // on another node that has that version.
        let target = CallTarget { plugin: "echo", version: None, function: "gone" };
        let e = rt.call(target, &[], deadline, &Caller::Anonymous, NodeLoad::Idle).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND);
        assert!(e.details.contains_key(NOT_LOADED) && e.message.contains("retry"), "{e:?}");
    }

    /// A FIFO named like a plugin or a manifest is refused, not opened and
    /// waited on (which held up every later reload, and the shutdown).
    #[test]
    fn a_fifo_in_the_plugins_folder_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("echo.wasm"), weft_bundle::get("echo").expect("bundled")).expect("write");
        std::fs::write(dir.path().join("text.wasm"), weft_bundle::get("text").expect("bundled")).expect("write");
        for fifo in ["pipe.wasm", "text.toml"] {
            let path =
                std::ffi::CString::new(dir.path().join(fifo).into_os_string().into_encoded_bytes()).expect("path");
            // SAFETY: mkfifo reads the NUL-terminated path it is given.
            #[allow(unsafe_code)]
            let made = unsafe { libc::mkfifo(path.as_ptr(), 0o644) };
            assert_eq!(made, 0, "mkfifo");
        }
        let rt = Arc::new(Runtime::new(RuntimeConfig::default()).expect("runtime"));
        let (done, report) = std::sync::mpsc::channel();
        let (loader, folder) = (rt.clone(), dir.path().to_owned());
        std::thread::spawn(move || done.send(loader.reload_dir(&folder)));
        let report = report.recv_timeout(Duration::from_secs(60)).expect("the reload ends");
        assert_eq!(report.loaded, ["echo@0.1.0"]);
        let reasons: Vec<(String, String)> = report.failed.into_iter().map(|f| (f.file, f.reason)).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons.iter().all(|(_, r)| r.contains("not a regular file")), "{reasons:?}");
        std::fs::create_dir(dir.path().join("folder.wasm")).expect("mkdir");
        let report = rt.reload_dir(dir.path());
        let folder = report.failed.iter().find(|f| f.file == "folder.wasm").expect("folder.wasm fails");
        assert!(folder.reason.contains("a directory, not a plugin file"), "{}", folder.reason);
    }

    /// Every manifest of a folder is held while it loads, so each is kept
    /// small; a larger one fails its plugin alone, saying why.
    #[test]
    fn a_manifest_over_its_size_limit_fails_its_plugin_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        for plugin in ["echo", "text"] {
            std::fs::write(dir.path().join(format!("{plugin}.wasm")), weft_bundle::get(plugin).expect("bundled"))
                .expect("write");
        }
        let padded = format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES as usize));
        std::fs::write(dir.path().join("text.toml"), padded).expect("write");
        let report = Runtime::new(RuntimeConfig::default()).expect("runtime").load_dir(dir.path());
        assert_eq!(report.loaded, ["echo@0.1.0"]);
        let reasons: Vec<(String, String)> = report.failed.into_iter().map(|f| (f.file, f.reason)).collect();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert_eq!(reasons[0].0, "text.wasm");
        assert!(reasons[0].1.contains("text.toml") && reasons[0].1.contains("manifest size limit"), "{reasons:?}");
    }

    /// A node whose memory limit is below what a plugin's memory starts at
    /// says which setting to raise (wasmtime's words named none).
    #[test]
    fn a_memory_limit_too_small_for_a_plugin_names_the_setting() {
        let mut config = RuntimeConfig::default();
        config.limits.memory_bytes = 1 << 20;
        let rt = Runtime::new(config).expect("runtime");
        let e = rt.load_bytes("echo.wasm", "echo", weft_bundle::get("echo").expect("bundled"), None).unwrap_err();
        assert!(e.reason.contains("raise limits.memory"), "{}", e.reason);
    }

    /// A symlink is followed within the plugins folder only; one leading out
    /// of it is refused with what to do.
    #[test]
    fn a_symlink_out_of_the_plugins_folder_is_refused_and_says_so() {
        let (outside, dir) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
        let echo = weft_bundle::get("echo").expect("bundled");
        std::fs::write(outside.path().join("echo.wasm"), echo).expect("write");
        std::fs::write(dir.path().join("real.wasm"), echo).expect("write");
        std::os::unix::fs::symlink(outside.path().join("echo.wasm"), dir.path().join("away.wasm")).expect("link");
        std::os::unix::fs::symlink("real.wasm", dir.path().join("near.wasm")).expect("link");
        let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let report = rt.load_dir(dir.path());
        let failed: Vec<(&str, &str)> = report.failed.iter().map(|f| (f.file.as_str(), f.reason.as_str())).collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, "away.wasm");
        assert!(failed[0].1.contains("a symlink that leads outside the plugins folder"), "{failed:?}");
        assert_eq!(report.loaded, ["near@0.1.0", "real@0.1.0"]);
    }

    /// Signatures that print short (named types print as their names) but
    /// fill the catalog once their types are written out are refused.
    #[test]
    fn a_plugin_whose_signatures_would_flood_the_catalog_does_not_load() {
        use crate::test_component::{Param, TestComponent};
        let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let tree = |depth| TestComponent { param: Param::Tree { depth, fan: 2, cases: 1 }, ..TestComponent::default() };
        rt.load_bytes("small.wasm", "small", &tree(8).build(), None).expect("a small tree loads");
        let e = rt.load_bytes("big.wasm", "big", &tree(13).build(), None).unwrap_err();
        assert!(e.reason.contains("bytes in the catalog, over the limit"), "{}", e.reason);
    }

    #[tokio::test]
    async fn a_warm_instance_serves_only_the_caller_that_used_it() {
        let (rt, _dir) = hostile("warm = 1\ncallers = [\"*\"]\n", 64);
        let (acme, bob) = (Caller::Tenant("acme".into()), Caller::Tenant("bob".into()));
        assert_eq!(snoop(&rt, &acme, "a1").await, Value::Null, "the first call is fresh");
        assert_eq!(snoop(&rt, &acme, "a2").await, "a1", "the second reuses acme's instance");
        assert_eq!(snoop(&rt, &bob, "b1").await, Value::Null, "bob never sees acme's instance");
        assert_eq!(snoop(&rt, &Caller::Anonymous, "n1").await, Value::Null);
        assert_eq!(snoop(&rt, &acme, "a3").await, "a2");
        assert_eq!(snoop(&rt, &bob, "b2").await, "b1");

        // A trap discards the instance: acme's next call starts afresh.
        let target = CallTarget { plugin: "hostile", version: None, function: "recurse" };
        let deadline = Instant::now() + Duration::from_secs(5);
        let trap = rt.call(target, &[Value::from(10_000_000)], deadline, &acme, NodeLoad::Idle).await.unwrap_err();
        assert_eq!(trap.details["trap"], "stack_overflow", "{trap}");
        assert_eq!(snoop(&rt, &acme, "a4").await, Value::Null);
    }

    #[tokio::test]
    async fn a_warm_instance_retires_after_its_last_use() {
        let (rt, _dir) = hostile("warm = 1\ncallers = [\"*\"]\n", 64);
        let acme = Caller::Tenant("acme".into());
        let last = crate::warm::MAX_USES;
        for i in 1..last {
            snoop(&rt, &acme, &i.to_string()).await;
        }
        let before = (last - 1).to_string();
        assert_eq!(snoop(&rt, &acme, "last").await, before.as_str(), "call {last} is still warm");
        assert_eq!(snoop(&rt, &acme, "fresh").await, Value::Null, "then the instance is retired");
    }

    #[tokio::test]
    async fn on_an_idle_node_each_call_tears_down_after_the_answer_and_leaves_a_spare() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("hostile.wasm"), weft_bundle::get("hostile").expect("bundled")).expect("write");
        std::fs::write(dir.path().join("hostile.toml"), "callers = [\"*\"]\n").expect("write");
        let rt = Runtime::new(RuntimeConfig { max_concurrency: 3, ..RuntimeConfig::default() }).expect("runtime");
        assert!(rt.load_dir(dir.path()).failed.is_empty());

        let plugin = rt.find(&CallTarget { plugin: "hostile", version: None, function: "snoop" }).expect("loaded");

        // On this single-threaded runtime the janitor's task cannot run
        // before the test yields: the answer came first, the slot is still
        // held.
        assert_eq!(snoop(&rt, &Caller::Anonymous, "x").await, Value::Null);
        assert_eq!(rt.slots.free(), 2, "the spent instance still holds its sandbox slot");
        assert_eq!(plugin.spares.len(), 0);
        // A second call at once (a request's next command), while the
        // first teardown still holds its slot, hands its instance on too.
        assert_eq!(snoop(&rt, &Caller::Anonymous, "w").await, Value::Null, "no state of x");
        rt.settled().await;
        assert_eq!(rt.slots.free(), 3, "torn down, the slots are free again");
        assert_eq!(plugin.spares.len(), 2, "and a spare replaces each");
        assert_eq!(rt.warm_idle(), 0, "a spare is not a warm instance");

        // A spare was never called: another caller starts from a clean instance.
        assert_eq!(snoop(&rt, &Caller::Tenant("acme".into()), "y").await, Value::Null, "no state of x or w");
        rt.settled().await;
        assert_eq!(plugin.spares.len(), 2, "the spare taken was replaced");

        // A caller that says the node is busy gets the teardown in place.
        let target = CallTarget { plugin: "hostile", version: None, function: "snoop" };
        let deadline = Instant::now() + Duration::from_secs(5);
        rt.call(target, &[Value::from("b")], deadline, &Caller::Anonymous, NodeLoad::Busy).await.expect("snoop");
        assert_eq!(rt.slots.free(), 3, "torn down before the answer");
        assert_eq!(plugin.spares.len(), 1, "the call took a spare and none was built");
        assert_eq!(snoop(&rt, &Caller::Anonymous, "c").await, Value::Null, "no state of b");
        rt.settled().await;

        // With another call in the sandbox, a call tears its instance down
        // itself and builds no spare.
        let other = Running::enter(&rt.running);
        assert_eq!(snoop(&rt, &Caller::Anonymous, "z").await, Value::Null, "no state of y");
        assert_eq!(rt.slots.free(), 3, "torn down before the answer");
        assert_eq!(plugin.spares.len(), 0, "the call took the last spare and none was built");
        drop(other);

        // Spares fill at most half of the idle budget: with one place, none.
        let (small, _small_dir) = hostile("callers = [\"*\"]\n", 1);
        snoop(&small, &Caller::Anonymous, "s").await;
        small.settled().await;
        let target = CallTarget { plugin: "hostile", version: None, function: "snoop" };
        assert_eq!(small.find(&target).expect("loaded").spares.len(), 0, "the place is kept for warm instances");

        // A plugin holds at most half of the spare places: of 8 in the
        // budget, 4 may be spares and 2 one plugin's.
        let (capped, _capped_dir) = hostile("callers = [\"*\"]\n", 8);
        for i in 0..3 {
            assert_eq!(snoop(&capped, &Caller::Anonymous, &i.to_string()).await, Value::Null);
        }
        capped.settled().await;
        assert_eq!(capped.find(&target).expect("loaded").spares.len(), 2, "three retired, two replaced");

        // Back to back on one slot: each call waits for the last teardown.
        let rt = Runtime::new(RuntimeConfig { max_concurrency: 1, ..RuntimeConfig::default() }).expect("runtime");
        assert!(rt.load_dir(dir.path()).failed.is_empty());
        for i in 0..50 {
            assert_eq!(snoop(&rt, &Caller::Anonymous, &i.to_string()).await, Value::Null, "every call is fresh");
        }
    }

    #[tokio::test]
    async fn a_start_up_that_spins_stops_the_plugin_s_spares() {
        use crate::test_component::TestComponent;
        let rt = Runtime::new(RuntimeConfig { max_concurrency: 2, ..RuntimeConfig::default() }).expect("runtime");
        let wasm = TestComponent { start_spins: true, ..TestComponent::default() }.build();
        rt.load_bytes("spin.wasm", "spin", &wasm, Some("[limits]\ndeadline = \"100ms\"\n")).expect("loads");
        let target = CallTarget { plugin: "spin", version: None, function: "g" };
        let plugin = rt.find(&target).expect("loaded");
        assert!(plugin.spares.reserve(&rt.warm_budget).is_some(), "room for spares at first");
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = rt.call(target, &[], deadline, &Caller::Anonymous, NodeLoad::Idle).await.unwrap_err();
        assert_eq!(e.details.get("trap"), Some(&Value::from("interrupted")), "{e}");
        rt.settled().await;
        // Its spare spun to the deadline too: no more are built, so each
        // call pays for one start-up, not two.
        assert!(plugin.spares.reserve(&rt.warm_budget).is_none());
    }

    #[tokio::test]
    async fn memories_that_start_over_the_limit_together_name_it_at_each_call() {
        use crate::test_component::TestComponent;
        let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
        // Two memories of 40 MiB: each fits the 64 MiB limit, both do not.
        let wasm = TestComponent { core_instances: 2, twins: true, memory_pages: 640, ..TestComponent::default() };
        rt.load_bytes("twins.wasm", "twins", &wasm.build(), None).expect("loads");
        let target = CallTarget { plugin: "twins", version: None, function: "g" };
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = rt.call(target, &[], deadline, &Caller::Anonymous, NodeLoad::Busy).await.unwrap_err();
        assert_eq!(e.details.get("trap"), Some(&Value::from("host_error")), "{e}");
        assert!(e.message.contains("memories together start above its sandbox memory limit of 65536 KiB"), "{e}");
    }

    #[tokio::test]
    async fn a_large_result_finds_no_room_while_others_fill_the_conversion_budget() {
        let (rt, _dir) = hostile("callers = [\"*\"]\n", 0);
        let four_mib = [Value::from(4)];
        let call = || {
            let target = CallTarget { plugin: "hostile", version: None, function: "big-output" };
            let deadline = Instant::now() + Duration::from_secs(5);
            rt.call(target, &four_mib, deadline, &Caller::Anonymous, NodeLoad::Busy)
        };
        let held = rt.conversions.charge(rt.config.conversion_budget() - (1 << 20)).expect("room");
        let e = call().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{e}");
        assert!(e.message.contains("retry shortly"), "{e}");
        drop(held);
        let text = call().await.expect("room again");
        assert_eq!(text.as_str().map(str::len), Some(4 << 20));
    }

    #[tokio::test]
    async fn a_start_up_that_never_ends_holds_no_slot_past_the_plugin_s_deadline() {
        let rt = Runtime::new(RuntimeConfig { max_concurrency: 2, ..RuntimeConfig::default() }).expect("runtime");
        let manifest = Some("[limits]\ndeadline = \"200ms\"\n");
        rt.load_bytes("stall.wasm", "stall", weft_bundle::get("stall").expect("bundled"), manifest).expect("loads");
        rt.load_bytes("echo.wasm", "echo", weft_bundle::get("echo").expect("bundled"), None).expect("loads");
        let stall = CallTarget { plugin: "stall", version: None, function: "ready" };
        // Each call fails at the deadline; on an idle node its store goes to
        // the janitor, whose spare for it would wait for ever too.
        for _ in 0..3 {
            let deadline = Instant::now() + Duration::from_secs(5);
            let e = rt.call(stall.clone(), &[], deadline, &Caller::Anonymous, NodeLoad::Idle).await.unwrap_err();
            assert!(e.message.contains("deadline"), "{e}");
            tokio::time::timeout(Duration::from_secs(5), rt.settled()).await.expect("every slot comes back");
        }
        assert_eq!(rt.find(&stall).expect("loaded").spares.len(), 0);
        let echo = CallTarget { plugin: "echo", version: None, function: "echo" };
        let deadline = Instant::now() + Duration::from_secs(5);
        let answer = rt.call(echo, &[Value::from("x")], deadline, &Caller::Anonymous, NodeLoad::Idle).await;
        assert_eq!(answer.expect("echo still runs"), "x");
    }

    #[test]
    fn one_task_retires_the_spent_stores_and_one_its_runtime_dropped_is_replaced() {
        let (rt, _dir) = hostile("callers = [\"*\"]\n", 64);
        let target = CallTarget { plugin: "hostile", version: None, function: "snoop" };
        let plugin = rt.find(&target).expect("loaded");
        let single = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        let queued = |rt: &Runtime| {
            let queue = rt.janitor.queue();
            (queue.spent.len(), queue.working)
        };

        // Two calls before the test yields: both stores wait for one task.
        let first = single();
        first.block_on(async {
            snoop(&rt, &Caller::Anonymous, "a").await;
            snoop(&rt, &Caller::Anonymous, "b").await;
        });
        assert_eq!(queued(&rt), (2, true), "one task started for both");
        // Its runtime goes away before that task ever ran.
        drop(first);
        assert_eq!(queued(&rt), (2, false), "the dropped task left the queue idle");
        assert_eq!(rt.slots.free(), 254, "the spent stores still hold their slots");

        // The next spent store starts a new task, which retires all three.
        single().block_on(async {
            snoop(&rt, &Caller::Anonymous, "c").await;
            tokio::time::timeout(Duration::from_secs(10), rt.settled()).await.expect("every slot comes back");
        });
        assert_eq!(queued(&rt), (0, false));
        assert_eq!(plugin.spares.len(), 3, "and a spare replaces each");
    }

    #[tokio::test]
    async fn warm_instances_are_off_by_default_and_bounded_node_wide() {
        let (rt, _dir) = hostile("callers = [\"*\"]\n", 64);
        let acme = Caller::Tenant("acme".into());
        snoop(&rt, &acme, "a1").await;
        assert_eq!(snoop(&rt, &acme, "a2").await, Value::Null, "no manifest `warm`: fresh every call");

        // Room for one idle instance on the node: acme's is kept, bob's not.
        let (rt, _dir) = hostile("warm = 4\ncallers = [\"*\"]\n", 1);
        let bob = Caller::Tenant("bob".into());
        snoop(&rt, &acme, "a1").await;
        snoop(&rt, &bob, "b1").await;
        assert_eq!(snoop(&rt, &bob, "b2").await, Value::Null, "the budget was spent on acme's");
        assert_eq!(rt.warm_idle(), 1);
        assert_eq!(snoop(&rt, &acme, "a2").await, "a1");
    }

    /// An interrupt at the caller's deadline is a timeout; at the plugin's
    /// own, a fault of the guest. Both say `interrupted`.
    #[tokio::test]
    async fn whose_deadline_stopped_a_call_decides_its_error() {
        let (rt, _dir) = hostile("callers = [\"*\"]\n[limits]\ndeadline = \"300ms\"\n", 64);
        let target = CallTarget { plugin: "hostile", version: None, function: "spin" };
        for (caller_ms, kind, says) in [
            (100, ErrorKind::DEADLINE_EXCEEDED, "caller's deadline"),
            (5000, ErrorKind::GUEST_TRAP, "its deadline of 300ms"),
        ] {
            let deadline = Instant::now() + Duration::from_millis(caller_ms);
            let e = rt.call(target.clone(), &[], deadline, &Caller::Anonymous, NodeLoad::Idle).await.unwrap_err();
            assert_eq!((e.kind, e.details["trap"].as_str()), (kind, Some("interrupted")), "{e}");
            assert!(e.message.contains(says), "{e}");
        }
    }

    #[tokio::test]
    async fn a_tenants_plugin_refuses_other_callers_before_it_runs() {
        let (rt, _dir) = hostile("tenant = \"acme\"\n", 64);
        assert_eq!(snoop(&rt, &Caller::Tenant("acme".into()), "a").await, Value::Null);
        let target = CallTarget { plugin: "hostile", version: None, function: "snoop" };
        let deadline = Instant::now() + Duration::from_secs(5);
        for caller in
            [Caller::Tenant("bob".into()), Caller::Anonymous, Caller::Cluster(weft_proto::ClusterId::new("beta"))]
        {
            let e = rt.call(target.clone(), &[Value::from("x")], deadline, &caller, NodeLoad::Idle).await.unwrap_err();
            assert_eq!((e.kind, e.details["rule"].as_str()), (ErrorKind::POLICY_DENIED, Some("callers")), "{e}");
            assert!(e.message.contains(&caller.to_string()) && e.message.contains("callers"), "{e}");
            assert!(!e.message.contains("acme"), "the owner is not named: {e}");
        }
    }

    #[test]
    fn a_plugin_whose_name_or_functions_table_could_never_work_does_not_load() {
        let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let echo = weft_bundle::get("echo").expect("bundled");
        let fails = |file: &str, stem: &str, manifest: Option<&str>| {
            rt.load_bytes(file, stem, echo, manifest).expect_err("must not load").to_string()
        };
        let e = fails("my echo.wasm", "my echo", None);
        assert!(e.contains("plugin name \"my echo\"") && e.contains("use 1 to 128 ASCII letters"), "{e}");
        let e = fails("echo.wasm", "echo", Some("name = \"a/b\"\n"));
        assert!(e.contains("name \"a/b\"") && e.contains("use 1 to 128 ASCII letters"), "{e}");
        let e = fails("echo.wasm", "echo", Some("[functions.ehco]\nexport = false\n"));
        assert!(e.contains("[functions.ehco] names no function") && e.contains("echo, echos, concat"), "{e}");
        // The manifest's minimum is 1 MiB; a Rust guest's memory starts larger.
        let e = fails("echo.wasm", "echo", Some("[limits]\nmemory = \"1MiB\"\n"));
        assert!(e.contains("memory starts at") && e.contains("limit of 1024 KiB") && e.contains("raise"), "{e}");
        assert!(rt.plugins().is_empty());
        rt.load_bytes("echo.wasm", "echo", echo, Some("[functions.echo]\nexport = false\n")).expect("loads");
    }

    /// Loading from the cache marks the file used, which pruning goes by.
    #[test]
    fn a_component_loaded_from_the_cache_counts_as_just_used() {
        let cache = tempfile::tempdir().expect("temp dir");
        let config = RuntimeConfig { cache_dir: Some(cache.path().to_owned()), ..RuntimeConfig::default() };
        let echo = weft_bundle::get("echo").expect("echo bundled");
        Runtime::new(config.clone()).expect("runtime").load_bytes("echo.wasm", "echo", echo, None).expect("loads");
        let file = std::fs::read_dir(cache.path()).expect("cache").next().expect("one file").expect("entry").path();
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options().write(true).open(&file).expect("open").set_modified(long_ago).expect("set mtime");
        let rt = Runtime::new(config).expect("runtime");
        rt.load_bytes("echo.wasm", "echo", echo, None).expect("loads");
        assert_eq!(rt.plugins()[0].compiled_from, cache::CompileSource::Cache);
        let used = std::fs::metadata(&file).expect("still cached").modified().expect("mtime");
        assert!(used.elapsed().expect("in the past") < Duration::from_secs(600), "{used:?}");
    }

    /// A cached component is read, not mapped, so a file emptied in place
    /// leaves the plugin serving (it killed the node with SIGBUS), and one
    /// copied under another plugin's key is compiled again, not loaded.
    #[tokio::test]
    async fn cache_files_changed_under_the_node_are_survived_and_never_taken_for_another_plugin() {
        let cache = tempfile::tempdir().expect("temp dir");
        let config = RuntimeConfig { cache_dir: Some(cache.path().to_owned()), ..RuntimeConfig::default() };
        let (echo, math) = (weft_bundle::get("echo").expect("bundled"), weft_bundle::get("math").expect("bundled"));
        let call = async |rt: &Runtime, text: &str| {
            let target = CallTarget { plugin: "echo", version: None, function: "echo" };
            let deadline = Instant::now() + Duration::from_secs(5);
            rt.call(target, &[serde_json::json!(text)], deadline, &Caller::Anonymous, NodeLoad::Idle).await
        };
        Runtime::new(config.clone()).expect("runtime").load_bytes("echo.wasm", "echo", echo, None).expect("loads");
        let rt = Runtime::new(config.clone()).expect("runtime");
        rt.load_bytes("echo.wasm", "echo", echo, None).expect("loads");
        assert_eq!(rt.plugins()[0].compiled_from, cache::CompileSource::Cache);
        let file = |wasm: &[u8]| cache.path().join(format!("{}{}", cache::cache_key(&rt.engine, wasm), ".cwasm"));
        std::fs::File::options().write(true).open(file(echo)).expect("open").set_len(0).expect("empty in place");
        assert_eq!(call(&rt, "still").await.expect("served from memory"), serde_json::json!("still"));

        // Math's compiled form under echo's key: echo is compiled again.
        Runtime::new(config.clone()).expect("runtime").load_bytes("math.wasm", "math", math, None).expect("loads");
        std::fs::copy(file(math), file(echo)).expect("copy");
        let again = Runtime::new(config).expect("runtime");
        again.load_bytes("echo.wasm", "echo", echo, None).expect("echo loads");
        assert_eq!(again.plugins()[0].compiled_from, cache::CompileSource::Compiled);
        assert_eq!(call(&again, "hi").await.expect("echo's own code"), serde_json::json!("hi"));
    }

    /// A call planned for a version an upgrade just replaced still runs on
    /// it; a version whose file is gone does not.
    #[tokio::test]
    async fn a_replaced_version_serves_the_calls_planned_for_it_for_a_while() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
        std::fs::write(dir.path().join("echo.wasm"), weft_bundle::get("echo").expect("bundled")).expect("write");
        assert!(rt.load_dir(dir.path()).failed.is_empty());
        let call = async |version: &str| {
            let version = semver::Version::parse(version).expect("semver");
            let target = CallTarget { plugin: "echo", version: Some(&version), function: "echo" };
            let deadline = Instant::now() + Duration::from_secs(5);
            rt.call(target, &[serde_json::json!("x")], deadline, &Caller::Anonymous, NodeLoad::Idle).await
        };
        std::fs::write(dir.path().join("echo.toml"), "version = \"0.2.0\"\n").expect("write");
        assert_eq!(rt.reload_dir(dir.path()).unloaded, ["echo@0.1.0"]);
        assert_eq!(versions(&rt), ["echo@0.2.0"], "only the new version is listed");
        assert_eq!(call("0.1.0").await.expect("planned before the upgrade"), serde_json::json!("x"));
        rt.forget_replaced();
        assert_eq!(call("0.1.0").await.expect("still within its grace"), serde_json::json!("x"));
        // An upgrade that ships a new file and removes the old one.
        std::fs::rename(dir.path().join("echo.wasm"), dir.path().join("echo-v3.wasm")).expect("rename");
        std::fs::write(dir.path().join("echo-v3.toml"), "name = \"echo\"\nversion = \"0.3.0\"\n").expect("write");
        std::fs::remove_file(dir.path().join("echo.toml")).expect("remove");
        assert_eq!(rt.reload_dir(dir.path()).unloaded, ["echo@0.2.0"]);
        assert_eq!(call("0.2.0").await.expect("planned before the upgrade"), serde_json::json!("x"));
        std::fs::remove_file(dir.path().join("echo-v3.wasm")).expect("remove");
        assert_eq!(rt.reload_dir(dir.path()).unloaded, ["echo@0.3.0"]);
        let e = call("0.3.0").await.expect_err("removed, not replaced");
        assert!(e.details.contains_key(NOT_LOADED), "{e}");
    }

    #[test]
    fn a_reload_replaces_changed_files_and_keeps_the_old_version_when_the_new_one_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = tempfile::tempdir().expect("temp dir");
        let config = RuntimeConfig { cache_dir: Some(cache.path().to_owned()), ..RuntimeConfig::default() };
        let rt = Runtime::new(config).expect("runtime");
        let echo = weft_bundle::get("echo").expect("echo bundled");
        std::fs::write(dir.path().join("echo.wasm"), echo).expect("write");
        assert!(rt.load_dir(dir.path()).failed.is_empty());
        assert_eq!(versions(&rt), ["echo@0.1.0"]);

        // A new manifest is a change: the plugin is loaded again under its new version.
        std::fs::write(dir.path().join("echo.toml"), "version = \"2.0.0\"\n").expect("write");
        let report = rt.reload_dir(dir.path());
        assert_eq!((report.loaded, report.unloaded), (vec!["echo@2.0.0".to_owned()], vec!["echo@0.1.0".to_owned()]));
        assert_eq!(versions(&rt), ["echo@2.0.0"]);

        // A broken replacement leaves 2.0.0 serving and says so.
        std::fs::write(dir.path().join("echo.wasm"), b"not a component").expect("write");
        let report = rt.reload_dir(dir.path());
        assert!(report.loaded.is_empty() && report.unloaded.is_empty(), "{report:?}");
        assert!(report.failed[0].reason.contains("echo@2.0.0 keeps serving"), "{:?}", report.failed);
        assert_eq!(versions(&rt), ["echo@2.0.0"]);
        assert_eq!(rt.load_failures().len(), 1, "failures describe the folder now");

        // Restored: the files are what 2.0.0 was loaded from, so nothing to do.
        // A hidden file (one being copied in before a rename) is not a plugin.
        std::fs::write(dir.path().join("echo.wasm"), echo).expect("write");
        std::fs::write(dir.path().join(".math.wasm"), b"half a file").expect("write");
        let report = rt.reload_dir(dir.path());
        assert_eq!((report.loaded.len(), report.unchanged), (0, 1), "{report:?}");
        assert!(rt.load_failures().is_empty());

        // The first bytes of a component being written are a valid empty
        // one: refused, and what it replaced keeps serving.
        std::fs::write(dir.path().join("echo.wasm"), &echo[..8]).expect("write");
        let report = rt.reload_dir(dir.path());
        assert!(report.failed[0].reason.contains("exports no functions"), "{:?}", report.failed);
        assert!(report.failed[0].reason.contains("echo@2.0.0 keeps serving"), "{:?}", report.failed);
        assert_eq!(versions(&rt), ["echo@2.0.0"]);
        std::fs::write(dir.path().join("echo.wasm"), echo).expect("write");

        // Gone: unloaded.
        std::fs::remove_file(dir.path().join("echo.wasm")).expect("remove");
        assert_eq!(rt.reload_dir(dir.path()).unloaded, ["echo@2.0.0"]);
        assert!(rt.plugins().is_empty());

        // A folder that is gone is one failure however often it is reloaded.
        let gone = dir.path().join("elsewhere");
        for _ in 0..3 {
            assert_eq!(rt.reload_dir(&gone).failed.len(), 1);
        }
        assert_eq!(rt.load_failures().len(), 1, "failures describe the folder now");
    }
}

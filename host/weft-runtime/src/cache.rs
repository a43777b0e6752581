//! The on-disk cache of precompiled components, under `data_dir/cache`.
//!
//! The key hashes the wasm bytes together with the engine's compatibility
//! hash (wasmtime version and every codegen-relevant setting), so a node with
//! another wasmtime or config never loads a stale artifact. Trust: whoever can
//! write the cache folder can run native code in the node; it lives in the
//! operator's data_dir for that reason.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::compile::{self, CompileLimits};

struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0 // only the digest is used
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

pub(crate) fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    h.write(wasm);
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// How a component came to be ready; reported in /v1/plugins and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompileSource {
    Compiled,
    Cache,
}

/// Components this node could not compile for a reason that would recur
/// (a compile limit, a compiler error), by cache key. A reload then refuses
/// an unchanged file at once, rather than spending up to
/// `limits.compile_timeout` on it again while other plugins' updates wait.
/// The compile limits cannot change while the node runs.
#[derive(Default)]
pub(crate) struct Refused(Mutex<HashMap<String, String>>);

/// Refusals remembered at most; past that the memory starts over (a tenant
/// who uploads ever new bombs costs compiles, not node memory).
const MAX_REFUSED: usize = 1024;

impl Refused {
    fn get(&self, key: &str) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn remember(&self, key: String, reason: String) {
        let mut refused = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= MAX_REFUSED {
            refused.clear();
        }
        refused.insert(key, reason);
    }
}

/// Loads the component from the cache or compiles it (and stores it).
/// Cache problems are logged and never fail a load; compile errors do, and
/// lasting ones are remembered in `refused`.
pub(crate) fn load_or_compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
    wasm: &[u8],
    limits: &CompileLimits,
    refused: &Refused,
) -> Result<(Component, CompileSource), String> {
    let key = cache_key(engine, wasm);
    let path = cache_dir.map(|dir| dir.join(format!("{key}.cwasm")));
    if let Some(path) = path.as_ref().filter(|p| p.exists()) {
        match deserialize_file(engine, path) {
            Ok(c) => return Ok((c, CompileSource::Cache)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component")
            }
        }
    }
    if let Some(reason) = refused.get(&key) {
        return Err(format!(
            "{reason} (when these bytes were compiled before; they are not compiled again until the file changes or the node restarts)"
        ));
    }
    let artifact = compile::compile(engine, wasm, limits).map_err(|e| {
        if e.lasting {
            refused.remember(key, e.reason.clone());
        }
        e.reason
    })?;
    let component = deserialize(engine, &artifact).map_err(|e| format!("cannot load the compiled component: {e:#}"))?;
    if let Some(path) = path
        && let Err(e) = store(&artifact, &path)
    {
        tracing::warn!(path = %path.display(), error = %e, "could not cache compiled component");
    }
    Ok((component, CompileSource::Compiled))
}

// SAFETY (both): the artifacts come from `Engine::precompile_component` of
// this engine's configuration, in this process or in a compile child of
// the same binary, or from the cache it wrote (the key includes the
// compatibility hash, and wasmtime re-checks its header); the cache folder
// is trusted as described in the module comment.
#[allow(unsafe_code)]
fn deserialize_file(engine: &Engine, path: &Path) -> Result<Component, wasmtime::Error> {
    unsafe { Component::deserialize_file(engine, path) }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Component, wasmtime::Error> {
    unsafe { Component::deserialize(engine, artifact) }
}

fn store(artifact: &[u8], path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let stored = std::fs::write(&tmp, artifact).and_then(|()| std::fs::rename(&tmp, path));
    if stored.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    stored
}

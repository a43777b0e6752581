//! The on-disk cache of precompiled components, under `data_dir/cache`.
//!
//! The key hashes the wasm bytes together with the engine's compatibility
//! hash (wasmtime version and every codegen-relevant setting), so a node with
//! another wasmtime or config never loads a stale artifact. Trust: whoever can
//! write the cache folder can run native code in the node; it lives in the
//! operator's data_dir for that reason.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

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

/// Loads the component from the cache or compiles it (and stores it).
/// Cache problems are logged and never fail a load.
pub(crate) fn load_or_compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
    wasm: &[u8],
) -> Result<(Component, CompileSource), wasmtime::Error> {
    let Some(dir) = cache_dir else {
        return Ok((Component::new(engine, wasm)?, CompileSource::Compiled));
    };
    let path = dir.join(format!("{}.cwasm", cache_key(engine, wasm)));
    if path.exists() {
        match deserialize(engine, &path) {
            Ok(c) => return Ok((c, CompileSource::Cache)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(e) = store(&component, dir, &path) {
        tracing::warn!(path = %path.display(), error = %e, "could not cache compiled component");
    }
    Ok((component, CompileSource::Compiled))
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> Result<Component, wasmtime::Error> {
    // SAFETY: the file was written by `store` below from `Component::serialize`
    // of this engine configuration (the key includes the compatibility hash,
    // and wasmtime re-checks its header); the cache folder is trusted as
    // described in the module comment.
    unsafe { Component::deserialize_file(engine, path) }
}

fn store(component: &Component, dir: &Path, path: &PathBuf) -> Result<(), wasmtime::Error> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize()?;
    // Write then rename so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

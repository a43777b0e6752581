//! The on-disk cache of precompiled components, under `data_dir/cache`.
//!
//! The key hashes the wasm bytes together with the engine's compatibility
//! hash (wasmtime version and every codegen-relevant setting), so a node with
//! another wasmtime or config never loads a stale artifact. Trust: whoever can
//! write the cache folder can run native code in the node; it lives in the
//! operator's data_dir for that reason.
//!
//! The folder is bounded (`limits.compile_cache`): after each load, the
//! files no loaded plugin uses go, least recently used first, until the
//! rest fit.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

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

/// Loads the component of cache key `key` (of `wasm`) from the cache or
/// compiles it (and stores it). Cache problems are logged and never fail a
/// load; compile errors do, and lasting ones are remembered in `refused`.
pub(crate) fn load_or_compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
    key: &str,
    wasm: &[u8],
    limits: &CompileLimits,
    refused: &Refused,
) -> Result<(Component, CompileSource), String> {
    let path = cache_dir.map(|dir| dir.join(format!("{key}{CACHED}")));
    if let Some(path) = path.as_ref().filter(|p| p.exists()) {
        match read_cached(engine, path, key) {
            Ok(c) => {
                // Used now: pruning goes by last use.
                let _ = std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
                return Ok((c, CompileSource::Cache));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component")
            }
        }
    }
    if let Some(reason) = refused.get(key) {
        return Err(format!(
            "{reason} (when these bytes were compiled before; they are not compiled again until the file changes or the node restarts)"
        ));
    }
    let artifact = compile::compile(engine, wasm, limits).map_err(|e| {
        if e.lasting {
            refused.remember(key.to_owned(), e.reason.clone());
        }
        e.reason
    })?;
    let component = deserialize(engine, &artifact).map_err(|e| format!("cannot load the compiled component: {e:#}"))?;
    if let Some(path) = path
        && let Err(e) = store(&[header(key).as_bytes(), &artifact].concat(), &path)
    {
        tracing::warn!(path = %path.display(), error = %e, "could not cache compiled component");
    }
    Ok((component, CompileSource::Compiled))
}

/// Loads a cached component, read into memory rather than mapped: a file
/// changed in place under a mapping (truncated, or written over with `cp`)
/// killed the node with SIGBUS. Its first line must name its own key, so
/// that a file copied under another plugin's key is recompiled, not loaded
/// as the wrong code.
fn read_cached(engine: &Engine, path: &Path, key: &str) -> Result<Component, wasmtime::Error> {
    let bytes = std::fs::read(path)?;
    let artifact = bytes.strip_prefix(header(key).as_bytes()).ok_or_else(|| {
        wasmtime::Error::msg("not a cached component of these bytes (its first line names another key)")
    })?;
    deserialize(engine, artifact)
}

/// The first line of a cached component's file.
fn header(key: &str) -> String {
    format!("weft-cache {key}\n")
}

// SAFETY: the artifacts come from `Engine::precompile_component` of this
// engine's configuration, in this process or in a compile child of the
// same binary, or from the cache it wrote (the key includes the
// compatibility hash, and wasmtime re-checks its header); the cache folder
// is trusted as described in the module comment.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Component, wasmtime::Error> {
    unsafe { Component::deserialize(engine, artifact) }
}

/// A cached component's file name after its key.
const CACHED: &str = ".cwasm";

/// A file being written is named `KEY.tmpPID`; one older than this was left
/// by a node that died while writing it.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// What one pruning of the cache folder did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub(crate) removed: usize,
    pub(crate) freed: u64,
    /// Bytes of cached components left.
    pub(crate) left: u64,
}

/// Removes cached components that no loaded plugin uses (keys not in
/// `in_use`), least recently used first, until the folder's components
/// take at most `max_bytes`; and writes abandoned by a dead node. Files in
/// use stay even over the bound. A file that cannot be read or removed is
/// skipped (another node sharing the folder may have taken it first).
pub(crate) fn prune(dir: &Path, in_use: &HashSet<&str>, max_bytes: u64) -> Pruned {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Pruned::default();
    };
    let now = SystemTime::now();
    let mut pruned = Pruned::default();
    let mut unused = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(meta) = entry.metadata().ok().filter(std::fs::Metadata::is_file) else {
            continue;
        };
        let used = meta.modified().unwrap_or(now);
        if let Some(key) = name.strip_suffix(CACHED) {
            pruned.left += meta.len();
            if !in_use.contains(key) {
                unused.push((used, meta.len(), entry.path()));
            }
        } else if name.contains(".tmp")
            && now.duration_since(used).is_ok_and(|age| age > ABANDONED_AFTER)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            pruned.removed += 1;
            pruned.freed += meta.len();
        }
    }
    unused.sort();
    for (_, len, path) in unused {
        if pruned.left <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            pruned.left -= len;
            pruned.removed += 1;
            pruned.freed += len;
        }
    }
    pruned
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` bytes to `dir/name`, last used `age` ago.
    fn file(dir: &Path, name: &str, bytes: usize, age: Duration) {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; bytes]).expect("write");
        let file = std::fs::File::options().write(true).open(&path).expect("open");
        file.set_modified(SystemTime::now() - age).expect("set mtime");
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn pruning_removes_unused_components_least_recently_used_first_and_abandoned_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let minute = Duration::from_secs(60);
        file(dir.path(), "old.cwasm", 100, 30 * minute);
        file(dir.path(), "older-in-use.cwasm", 100, 60 * minute);
        file(dir.path(), "recent.cwasm", 100, minute);
        file(dir.path(), "newest.cwasm", 100, Duration::ZERO);
        file(dir.path(), "dead.tmp4242", 50, 2 * ABANDONED_AFTER);
        file(dir.path(), "writing.tmp4243", 50, Duration::ZERO);
        file(dir.path(), "notes.txt", 1000, 90 * minute);
        let in_use = HashSet::from(["older-in-use"]);

        // 400 bytes of components against 250: the two least recently
        // used that nothing loaded uses go; the one in use stays, however old.
        let pruned = prune(dir.path(), &in_use, 250);
        assert_eq!(pruned, Pruned { removed: 3, freed: 250, left: 200 });
        assert_eq!(names(dir.path()), ["newest.cwasm", "notes.txt", "older-in-use.cwasm", "writing.tmp4243"]);

        // Within the bound, nothing goes; with none allowed, only what is in use stays.
        assert_eq!(prune(dir.path(), &in_use, 200), Pruned { removed: 0, freed: 0, left: 200 });
        assert_eq!(prune(dir.path(), &in_use, 0), Pruned { removed: 1, freed: 100, left: 100 });
        assert_eq!(names(dir.path()), ["notes.txt", "older-in-use.cwasm", "writing.tmp4243"]);
        assert_eq!(prune(&dir.path().join("missing"), &in_use, 0), Pruned::default());
    }
}

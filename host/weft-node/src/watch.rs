//! Watches the plugins folder: when `*.wasm` or `*.toml` files are created,
//! changed or removed, and then left alone for a moment, the node reloads
//! the folder exactly as `POST /v1/plugins/reload` does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_runtime::is_plugin_file;

use crate::node::{PluginSource, reload_plugins};
use crate::peer::Fabric;

/// How long the folder must be quiet before a reload: a file being copied in
/// produces many writes, and loading it half-written would only log a failure.
const SETTLE: Duration = Duration::from_millis(300);

/// How often to look for a removed plugins folder to come back.
const REARM: Duration = Duration::from_secs(1);

/// Starts watching `source.dir` (if any). A watcher that cannot be set up
/// (e.g. the inotify watch limit) is logged; explicit reloads still work.
pub(crate) fn start(fabric: Arc<Fabric>, source: PluginSource, shutdown: CancellationToken, tracker: &TaskTracker) {
    let Some(dir) = source.dir.clone() else {
        return;
    };
    // One pending signal is enough: the reload reads the whole folder.
    let (changed, mut signals) = mpsc::channel::<()>(1);
    // Set when the folder itself is removed: the watch went with it.
    let lost = Arc::new(AtomicBool::new(false));
    let handler = {
        let (dir, lost) = (dir.clone(), lost.clone());
        move |event: notify::Result<Event>| {
            let Ok(event) = event else { return };
            let folder_gone = matches!(event.kind, EventKind::Remove(_)) && event.paths.contains(&dir);
            if folder_gone {
                lost.store(true, Ordering::Relaxed);
            }
            if folder_gone || is_plugin_change(&event) {
                let _ = changed.try_send(());
            }
        }
    };
    let watching =
        notify::recommended_watcher(handler).and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    let mut watcher = match watching {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, folder = %dir.display(), "cannot watch the plugins folder; reload it with `weft plugins reload`");
            return;
        }
    };
    tracing::info!(folder = %dir.display(), "watching the plugins folder");
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                signal = signals.recv() => if signal.is_none() { return },
            }
            // Wait until the folder has been quiet for SETTLE.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    more = tokio::time::timeout(SETTLE, signals.recv()) => match more {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    },
                }
            }
            if lost.swap(false, Ordering::Relaxed) {
                // A replaced folder is a new one: watch it once it exists
                // (until then the loaded plugins keep serving).
                tracing::warn!(folder = %dir.display(), "the plugins folder was removed; waiting for it to come back");
                let _ = watcher.unwatch(&dir);
                while watcher.watch(&dir, RecursiveMode::NonRecursive).is_err() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(REARM) => {}
                    }
                }
                tracing::info!(folder = %dir.display(), "watching the plugins folder again");
            }
            if let Err(e) = reload_plugins(&fabric, &source).await {
                tracing::warn!(error = %e, "reloading the watched plugins folder failed");
            }
        }
    });
}

/// A create, write, rename or removal of a plugin or manifest file. Reads
/// (the reload's own included) and other files (editor swap files) are not.
fn is_plugin_change(event: &Event) -> bool {
    let relevant = match event.kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    };
    relevant && event.paths.iter().any(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_plugin_file))
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RemoveKind};

    use super::*;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(path.into())
    }

    #[test]
    fn only_writes_to_plugin_and_manifest_files_count() {
        let write = EventKind::Modify(ModifyKind::Any);
        assert!(is_plugin_change(&event(write, "/p/math.wasm")));
        assert!(is_plugin_change(&event(EventKind::Create(CreateKind::File), "/p/math.toml")));
        assert!(is_plugin_change(&event(EventKind::Remove(RemoveKind::File), "/p/math.wasm")));
        assert!(is_plugin_change(&event(EventKind::Access(AccessKind::Close(AccessMode::Write)), "/p/m.wasm")));
        // The reload reading the files must not trigger another reload.
        assert!(!is_plugin_change(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)), "/p/m.wasm")));
        assert!(!is_plugin_change(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/p/m.wasm")));
        // Other files, and hidden editor or copy temporaries, do not count.
        assert!(!is_plugin_change(&event(write, "/p/notes.txt")));
        assert!(!is_plugin_change(&event(write, "/p/.math.wasm.swp")));
        assert!(!is_plugin_change(&event(write, "/p/.math.wasm")));
    }
}

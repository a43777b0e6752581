//! Watches the plugins folder: when `*.wasm` or `*.toml` files are created,
//! changed or removed, and then left alone for a moment, the node reloads
//! the folder exactly as `POST /v1/plugins/reload` does. A deploy may also
//! swap the whole folder (remove or rename it, create a new one), or create
//! it after the node started: the folder's path is looked up every second,
//! and a different directory there is watched and loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_runtime::is_plugin_file;

use crate::node::{PluginSource, reload_plugins};
use crate::peer::Fabric;

/// How long the folder must be quiet before a reload: a file being copied in
/// produces many writes, and loading it half-written would only log a failure.
const SETTLE: Duration = Duration::from_millis(300);

/// The longest a reload waits for the folder to be quiet: a file that is
/// written to all the time (a log, a manifest a tool keeps touching) must
/// not hold back every other change.
const SETTLE_AT_MOST: Duration = Duration::from_secs(3);

/// How often to check which directory the folder's path names.
const REARM: Duration = Duration::from_secs(1);

/// Starts watching `source.dir` (if any). A watcher that cannot be set up
/// (e.g. the inotify watch limit) is logged; explicit reloads still work.
pub(crate) fn start(fabric: Arc<Fabric>, source: PluginSource, shutdown: CancellationToken, tracker: &TaskTracker) {
    let Some(dir) = source.dir.clone() else {
        return;
    };
    // notify reports absolute paths: so is the one it is compared with.
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    // One pending signal is enough: the reload reads the whole folder.
    let (changed, mut signals) = mpsc::channel::<()>(1);
    let lost = Arc::new(AtomicBool::new(false));
    let handler = {
        let (dir, lost) = (dir.clone(), lost.clone());
        move |event: notify::Result<Event>| {
            let Ok(event) = event else { return };
            let folder_went = matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)))
                && event.paths.contains(&dir);
            if folder_went {
                lost.store(true, Ordering::Relaxed);
            }
            if folder_went || is_plugin_change(&event) {
                let _ = changed.try_send(());
            }
        }
    };
    let watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, folder = %dir.display(), "cannot watch the plugins folder; reload it with `weft plugins reload`");
            return;
        }
    };
    // The node loaded the folder as it started: the first look reloads nothing.
    let mut folder = WatchedFolder::new(dir, watcher, lost);
    tracker.spawn(async move {
        let mut look = tokio::time::interval_at(tokio::time::Instant::now() + REARM, REARM);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let files_changed = tokio::select! {
                _ = shutdown.cancelled() => return,
                signal = signals.recv() => match signal {
                    Some(()) => true,
                    None => return,
                },
                _ = look.tick() => false,
            };
            if !(files_changed || folder.moved()) {
                continue;
            }
            // Wait until the folder has been quiet for SETTLE (which also
            // lets notify finish with the watch of a folder that went), or
            // SETTLE_AT_MOST has passed.
            let give_up = tokio::time::Instant::now() + SETTLE_AT_MOST;
            loop {
                let quiet = (tokio::time::Instant::now() + SETTLE).min(give_up);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    more = tokio::time::timeout_at(quiet, signals.recv()) => match more {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    },
                }
            }
            let replaced = folder.rearm();
            if !(replaced || files_changed) || folder.seen.is_none() {
                continue;
            }
            if let Err(e) = reload_plugins(&fabric, &source).await {
                tracing::warn!(error = %e, "reloading the watched plugins folder failed");
            }
        }
    });
}

/// The plugins folder's path and the directories under it. A folder
/// removed, renamed away or replaced leaves a watch on a directory no longer
/// at the path: the watch says so when it sees the folder go, and a look at
/// the path's device and inode finds what the watch cannot see (a folder
/// created after the start, or replaced while no watch was set).
struct WatchedFolder {
    dir: PathBuf,
    watcher: RecommendedWatcher,
    /// Set by the watch when the watched folder itself was removed or renamed.
    lost: Arc<AtomicBool>,
    /// The directory at the path at the last look.
    seen: Option<DirId>,
    /// The directory watched now.
    watching: Option<DirId>,
    /// Whether the last attempt to watch failed (logged once, retried).
    failed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct DirId {
    dev: u64,
    ino: u64,
}

impl DirId {
    fn of(path: &Path) -> Option<DirId> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok().filter(std::fs::Metadata::is_dir)?;
        Some(DirId { dev: meta.dev(), ino: meta.ino() })
    }
}

impl WatchedFolder {
    fn new(dir: PathBuf, watcher: RecommendedWatcher, lost: Arc<AtomicBool>) -> Self {
        let seen = DirId::of(&dir);
        if seen.is_none() {
            tracing::warn!(folder = %dir.display(), "the plugins folder is not there; it is loaded when it appears");
        }
        let mut folder = WatchedFolder { dir, watcher, lost, seen, watching: None, failed: false };
        folder.rearm();
        folder
    }

    /// Whether the folder went, or the path names another directory (or
    /// none), since the last look.
    fn moved(&self) -> bool {
        self.lost.load(Ordering::Relaxed) || DirId::of(&self.dir) != self.seen
    }

    /// Looks at the path again and watches the directory there if it is
    /// not the one watched; true if a directory appeared there or replaced
    /// the one before, so the plugins should be reloaded (a folder that is
    /// gone changes nothing: the loaded plugins keep serving).
    fn rearm(&mut self) -> bool {
        // A directory made right after another was removed may get its inode
        // number: only the watch can tell that it is a new one.
        let lost = self.lost.swap(false, Ordering::Relaxed);
        let now = DirId::of(&self.dir);
        let folder = self.dir.display();
        let changed = lost || now != self.seen;
        if changed {
            match (self.seen, now) {
                (_, None) => {
                    tracing::warn!(%folder, "the plugins folder was removed; serving what was loaded and waiting for it to come back")
                }
                (None, Some(_)) => tracing::info!(%folder, "the plugins folder appeared"),
                (Some(_), Some(_)) => tracing::info!(%folder, "the plugins folder was replaced"),
            }
            self.seen = now;
        }
        if changed || self.watching != now {
            if self.watching.take().is_some() {
                // The watch may already be gone with its directory.
                let _ = self.watcher.unwatch(&self.dir);
            }
            if now.is_some() {
                match self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        tracing::info!(%folder, "watching the plugins folder");
                        self.watching = now;
                        self.failed = false;
                    }
                    Err(e) => {
                        if !self.failed {
                            tracing::warn!(error = %e, %folder, "cannot watch the plugins folder (trying again every second); reload it with `weft plugins reload`");
                        }
                        self.failed = true;
                    }
                }
            }
        }
        changed && now.is_some()
    }
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

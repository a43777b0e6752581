//! Warm instances: a plugin whose manifest sets `warm = N` keeps up to N
//! instances per caller after calls that succeed, and that caller's next
//! call reuses one instead of instantiating afresh. An instance is never
//! handed to another caller (the spec's "never across tenants"), one that
//! trapped or timed out is never kept, nor one that has served `MAX_USES`
//! calls, and every idle one holds a budget place node-wide
//! (`limits.max_warm_instances`), so the pooling allocator always has slots
//! for running calls.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::Store;
use wasmtime::component::Instance;
use weft_proto::Caller;

use crate::sandbox::{CallOutput, SandboxState};

/// Calls one warm instance serves before it is dropped: whatever a guest
/// leaks on the host's side between calls (WASI handles it never closes)
/// stays bounded, and a long-lived instance's memory is given back.
pub(crate) const MAX_USES: u32 = 10_000;

/// An instance between two calls of one caller.
pub(crate) struct WarmInstance {
    pub(crate) store: Store<SandboxState>,
    pub(crate) instance: Instance,
    pub(crate) output: CallOutput,
    /// Calls it has served.
    pub(crate) uses: u32,
}

struct Idle {
    caller: Caller,
    warm: WarmInstance,
    _place: Place,
}

/// One plugin's idle instances.
#[derive(Default)]
pub(crate) struct WarmPool {
    idle: Mutex<Vec<Idle>>,
}

impl WarmPool {
    /// The caller's most recently used instance, if one is idle.
    pub(crate) fn take(&self, caller: &Caller) -> Option<WarmInstance> {
        let mut idle = self.lock();
        let at = idle.iter().rposition(|i| i.caller == *caller)?;
        Some(idle.remove(at).warm)
    }

    /// Keeps `warm` for `caller` if the caller has fewer than `per_caller`
    /// idle here and the node-wide budget has room; else it is dropped.
    pub(crate) fn put(&self, caller: &Caller, warm: WarmInstance, per_caller: u32, budget: &WarmBudget) {
        if warm.uses >= MAX_USES {
            return;
        }
        let mut idle = self.lock();
        if idle.iter().filter(|i| i.caller == *caller).count() >= per_caller as usize {
            return;
        }
        if let Some(place) = budget.reserve() {
            idle.push(Idle { caller: caller.clone(), warm, _place: place });
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One plugin's spares: instances built while the node was idle and never
/// called, so the plugin's next fresh calls (any caller's) skip
/// instantiation and still start from a clean instance. Each holds a budget
/// place like an idle warm instance. A spare replaces each instance retired
/// on an idle node, so a plugin keeps about as many as its last idle burst
/// used at once (a 10-wide fan-out finds ten), but never more than half of
/// the spare places, so one plugin's fan-outs cannot take every spare from
/// the rest.
#[derive(Default)]
pub(crate) struct Spares {
    idle: Mutex<Vec<(WarmInstance, SparePlace)>>,
    /// Spares ready or being built.
    held: Arc<AtomicUsize>,
    /// No more spares: making one outlasted the plugin's deadline.
    stopped: AtomicBool,
}

impl Spares {
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub(crate) fn take(&self) -> Option<WarmInstance> {
        self.lock().pop().map(|(spare, _place)| spare)
    }

    /// Room for one more spare of this plugin, if it and the node have it;
    /// taken before the spare is built, so builds in flight count.
    pub(crate) fn reserve(&self, budget: &WarmBudget) -> Option<SparePlace> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let mine = reserve_below(&self.held, budget.spares_per_plugin())?;
        Some(SparePlace { _node: budget.reserve_spare()?, _mine: mine })
    }

    pub(crate) fn put(&self, spare: WarmInstance, place: SparePlace) {
        self.lock().push((spare, place));
    }

    /// Spares ready now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(WarmInstance, SparePlace)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A spare's places: in the node's budget and among its plugin's spares.
pub(crate) struct SparePlace {
    _node: Place,
    _mine: Place,
}

/// Idle instances (warm and spare) node-wide, at most `max`; spares fill at
/// most half of it, so a node with many plugins keeps room for the warm
/// instances plugins ask for.
#[derive(Clone)]
pub(crate) struct WarmBudget {
    idle: Arc<AtomicUsize>,
    max: usize,
}

impl WarmBudget {
    pub(crate) fn new(max: u32) -> Self {
        Self { idle: Arc::default(), max: max as usize }
    }

    fn reserve(&self) -> Option<Place> {
        reserve_below(&self.idle, self.max)
    }

    fn reserve_spare(&self) -> Option<Place> {
        reserve_below(&self.idle, self.max / 2)
    }

    /// Spares one plugin may hold: half of the spare places.
    fn spares_per_plugin(&self) -> usize {
        (self.max / 4).max(1)
    }
}

/// Counts one more in `count` if it is below `limit`.
fn reserve_below(count: &Arc<AtomicUsize>, limit: usize) -> Option<Place> {
    count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).ok()?;
    Some(Place(count.clone()))
}

/// A place in a count, given back when the idle instance leaves the pool
/// (taken for a call, or dropped with its plugin).
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

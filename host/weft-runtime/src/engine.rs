//! The node's one wasmtime engine and its epoch ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::RuntimeConfig;

/// One epoch tick. A running guest yields to tokio at every tick and is
/// interrupted at the first tick past its deadline, so deadlines are enforced
/// to within about one tick.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Fuel a guest burns between voluntary yields, about 0.2 ms of guest code
/// here. A caller that polls a call in its own task (a request's commands
/// do) gets control back that soon and can move a long call to a task of its
/// own, while a short call finishes in that first poll. Each yield costs a
/// few microseconds (the task is rescheduled), so a smaller slice taxes long
/// CPU-bound calls: 3-5% at 100k, 1-4% at 200k (docs/BENCHMARKS.md).
pub(crate) const FUEL_SLICE: u64 = 200_000;

/// Table elements a guest may grow to (bounds host memory held by tables).
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What one instance (a store) may hold, and so each pool slot's share:
/// were an instance allowed more than its share, instances of one plugin
/// built to hold many could exhaust the pool with a fraction of the slots,
/// and every other call would fail. Rust guests hold 3 core instances, one
/// memory and a few tables.
pub(crate) struct Share {
    pub core_instances: u32,
    pub tables: u32,
    pub memories: u32,
}

pub(crate) const PER_INSTANCE: Share = Share { core_instances: 16, tables: 16, memories: 2 };

/// The memory limits' worth of slots one decommit batch may hold.
const DECOMMIT_BATCH_BYTES: u64 = 512 << 20;

fn decommit_batch(slots: usize, memory_bytes: u64) -> usize {
    let by_memory = usize::try_from(DECOMMIT_BATCH_BYTES / memory_bytes.max(1)).unwrap_or(usize::MAX);
    (slots / 2).min(by_memory).clamp(1, 32)
}

fn base_config() -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    // Fuel is metered always so that a manifest can set a budget for one
    // plugin; without a budget a call gets u64::MAX.
    c.consume_fuel(true);
    // Initialise linear memory by copying the data segments into the slot
    // rather than mapping them copy-on-write: each fresh instance otherwise
    // takes a COW page fault per written data page, and every such fault
    // flushes TLBs on all cores (a profile under load showed ~15% of node CPU
    // there).
    c.memory_init_cow(false);
    // Threads, shared memory, GC and component-model async are not compiled
    // in (see the wasmtime features in Cargo.toml), so they cannot be enabled.
    c
}

/// An engine that only compiles (in a compile child): its artifacts load
/// into the node's engine, whose allocator settings do not change the code.
pub(crate) fn compiler() -> Result<Engine, wasmtime::Error> {
    Engine::new(&base_config())
}

/// Builds the engine with the pooling allocator sized for `max_concurrency`
/// running instances and `max_warm_instances` idle ones; falls back to
/// on-demand allocation (with a warning) where the pool's virtual memory
/// cannot be reserved.
pub(crate) fn build_engine(cfg: &RuntimeConfig) -> Result<(Engine, bool), wasmtime::Error> {
    let slots = cfg.call_slots() + cfg.max_warm_instances + 8;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots * PER_INSTANCE.core_instances)
        .total_memories(slots * PER_INSTANCE.memories)
        .total_tables(slots * PER_INSTANCE.tables)
        .total_stacks(slots)
        .max_memory_size(usize::try_from(cfg.limits.memory_bytes).unwrap_or(usize::MAX))
        .table_elements(MAX_TABLE_ELEMENTS)
        // Reset the pages a guest dirtied with memset instead of madvise, so
        // the next instance neither page-faults them back in nor makes the
        // kernel flush TLBs on every core. PAGEMAP_SCAN (Linux 6.7+) finds
        // the dirty pages wherever they are (a Rust guest's stack and data
        // sit around 1 MiB, not at the start): fresh echo 15.3 -> 9.3 µs,
        // node throughput +40%. Without it the first `keep_resident` bytes
        // are zeroed on every call, and 64 KiB measured best (see
        // docs/BENCHMARKS.md for both sweeps).
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(if PoolingAllocationConfig::is_pagemap_scan_available() {
            256 << 10
        } else {
            64 << 10
        })
        .table_keep_resident(16 << 10)
        .async_stack_keep_resident(16 << 10)
        // Return freed slots to the kernel in batches: one madvise and TLB
        // shootdown per batch instead of per call (18.6 -> 15.5 µs before the
        // scan; now only guests that wrote past the resident pages wait in a
        // batch). A batch that has not filled keeps its slots' pages
        // resident, so a batch holds at most `DECOMMIT_BATCH_BYTES` of
        // memory limits.
        .decommit_batch_size(decommit_batch(slots as usize, cfg.limits.memory_bytes));
    let mut pooled = base_config();
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&pooled) {
        Ok(engine) => Ok((engine, true)),
        Err(e) => {
            tracing::warn!(error = %e, "pooling allocator unavailable; instances are allocated on demand");
            Ok((Engine::new(&base_config())?, false))
        }
    }
}

/// A thread that advances the engine's epoch every `EPOCH_TICK`; stops when dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weft-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decommit_batch;

    #[test]
    fn a_decommit_batch_holds_at_most_512_mib_of_memory_limits() {
        const MIB: u64 = 1 << 20;
        assert_eq!(decommit_batch(328, 64 * MIB), 8, "the defaults");
        assert_eq!(decommit_batch(328, MIB), 32);
        assert_eq!(decommit_batch(328, 4096 * MIB), 1);
        assert_eq!(decommit_batch(3, MIB), 1, "half the slots at most");
    }
}

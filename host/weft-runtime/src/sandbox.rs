//! Per-call sandbox state: a WASI context with nothing ambient, the memory
//! and table limiter, bounded capture of guest stdout/stderr, and the
//! `weft:host/log` import.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::engine::{MAX_TABLE_ELEMENTS, PER_INSTANCE};

mod bindings {
    wasmtime::component::bindgen!({ path: "../../wit/weft", world: "guest" });
}

use bindings::weft::host::log::{self, Level};

/// What the host remembers about one call's guest.
pub(crate) struct SandboxState {
    /// Built on the guest's first WASI call: most calls make none, and
    /// building one costs a dozen allocations and a random seed.
    wasi: Option<WasiCtx>,
    output: CallOutput,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) deadline: Instant,
    log: LogBudget,
}

#[derive(Clone)]
pub(crate) struct CallOutput {
    pub(crate) stdout: OutputCapture,
    pub(crate) stderr: OutputCapture,
}

/// WASI resources (streams, pollables) a guest may hold at once. Their host
/// memory is outside `[limits] memory`: wasmtime's default of 100,000 let a
/// guest that opened streams and never closed them take tens of MB, kept
/// for as long as a warm instance lives.
const MAX_HOST_HANDLES: usize = 1024;

fn host_handles() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HOST_HANDLES);
    table
}

impl SandboxState {
    pub(crate) fn new(
        memory_bytes: u64,
        deadline: Instant,
        log_lines: u32,
        log_allowed: bool,
        output_bytes: usize,
        who: Arc<str>,
        log_rate: Arc<LogRate>,
    ) -> (Self, CallOutput) {
        let out = CallOutput { stdout: OutputCapture::new(output_bytes), stderr: OutputCapture::new(output_bytes) };
        let state = Self {
            wasi: None,
            output: out.clone(),
            table: host_handles(),
            limiter: MemoryLimiter {
                max_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
                used: 0,
                hit: None,
            },
            deadline,
            log: LogBudget { who, allowed: log_allowed, left: log_lines, dropped: 0, rate: log_rate },
        };
        (state, out)
    }

    /// Readies a warm instance's state for its next call: that call's
    /// deadline and function, a full log budget, no memory-limit hit.
    pub(crate) fn rearm(&mut self, deadline: Instant, log_lines: u32, who: Arc<str>) {
        self.deadline = deadline;
        self.limiter.hit = None;
        self.log.who = who;
        self.log.left = log_lines;
        self.log.dropped = 0;
    }

    /// Log lines dropped, and whether because the capability is not granted.
    pub(crate) fn dropped_log_lines(&self) -> (u32, bool) {
        (self.log.dropped, !self.log.allowed)
    }
}

/// The most random bytes one WASI call may ask for. The host makes them
/// outside the guest's memory limit and cannot interrupt the call: two
/// guests asking for 60 MB at a time held up other calls for seconds
/// (wasmtime's own cap is 64 MiB).
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let output = &self.output;
        // No preopens, no env, no args, stdin empty, no sockets or name lookup.
        let ctx = self.wasi.get_or_insert_with(|| {
            WasiCtxBuilder::new()
                .stdout(output.stdout.clone())
                .stderr(output.stderr.clone())
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .max_random_size(MAX_RANDOM_BYTES)
                .build()
        });
        WasiCtxView { ctx, table: &mut self.table }
    }
}

/// Caps the memories of an instance (all together) and its tables, and
/// records when the cap was hit so a resulting trap can be reported as
/// `memory_limit` rather than a bare `unreachable`.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    /// Bytes of all linear memories of the store together (wasmtime reports
    /// each memory's creation as growth from 0, so the sum is exact).
    used: usize,
    pub(crate) hit: Option<(usize, usize)>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.max_bytes {
            self.hit = Some((current, desired));
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        PER_INSTANCE.core_instances as usize
    }
    fn tables(&self) -> usize {
        PER_INSTANCE.tables as usize
    }
    fn memories(&self) -> usize {
        PER_INSTANCE.memories as usize
    }
}

struct LogBudget {
    who: Arc<str>,
    allowed: bool,
    left: u32,
    dropped: u32,
    rate: Arc<LogRate>,
}

/// Guest log records (log calls and lines of output) one plugin may write
/// per second, over all its calls together. The per-call budget alone
/// leaves a request of many commands, or many callers, free to flood the
/// node's log.
pub(crate) const GUEST_LOG_RATE: u32 = 1000;

/// One plugin's share of the node's log: `GUEST_LOG_RATE` records a second,
/// with bursts of as many, and what it had dropped, reported at most once a
/// second (a warning per call would flood the log at the call rate).
pub(crate) struct LogRate {
    records: governor::DefaultDirectRateLimiter,
    /// Dropped since the last report, and when that was.
    dropped: Mutex<(Dropped, Option<Instant>)>,
    /// Something dropped is not reported yet: a call that dropped nothing
    /// takes the lock only then.
    pending: AtomicBool,
}

/// Guest output dropped, and calls the guest failed, since the last report.
#[derive(Default)]
pub(crate) struct Dropped {
    pub bytes: usize,
    pub lines: usize,
    pub logs: u64,
    /// Log calls of a plugin whose manifest does not grant the capability.
    pub denied_logs: u64,
    pub failed_calls: u64,
    /// The last failure's message, cut short.
    pub last_failure: String,
}

impl Dropped {
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes == 0 && self.lines == 0 && self.logs == 0 && self.denied_logs == 0 && self.failed_calls == 0
    }
}

/// How often a plugin's dropped output is reported: a plugin that drops
/// output under steady load gets one warning in this long, not one a second.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

impl Default for LogRate {
    fn default() -> Self {
        let per_second = std::num::NonZeroU32::new(GUEST_LOG_RATE).unwrap_or(std::num::NonZeroU32::MIN);
        Self {
            records: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
            dropped: Mutex::default(),
            pending: AtomicBool::new(false),
        }
    }
}

impl LogRate {
    /// Whether one more record fits now.
    pub(crate) fn admits(&self) -> bool {
        self.records.check().is_ok()
    }

    /// Counts a call the guest failed, for the next report.
    pub(crate) fn failed(&self, message: &str) {
        let mut guard = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.failed_calls += 1;
        guard.0.last_failure = truncate(message, 300).to_owned();
        self.pending.store(true, Ordering::Release);
    }

    /// Adds what a call dropped; once per `DROP_REPORT_EVERY` the totals so
    /// far are taken for a report.
    pub(crate) fn dropped(&self, call: Dropped) -> Option<Dropped> {
        if call.is_empty() && !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut guard = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        let (dropped, reported) = &mut *guard;
        dropped.bytes += call.bytes;
        dropped.lines += call.lines;
        dropped.logs += call.logs;
        dropped.denied_logs += call.denied_logs;
        let now = Instant::now();
        if dropped.is_empty() || reported.is_some_and(|at| now < at + DROP_REPORT_EVERY) {
            self.pending.store(!dropped.is_empty(), Ordering::Release);
            return None;
        }
        self.pending.store(false, Ordering::Release);
        *reported = Some(now);
        Some(std::mem::take(dropped))
    }
}

const MAX_LOG_LINE: usize = 4096;

impl log::Host for SandboxState {
    fn log(&mut self, level: Level, message: String) {
        if !self.log.allowed || self.log.left == 0 || !self.log.rate.admits() {
            self.log.dropped = self.log.dropped.saturating_add(1);
            return;
        }
        self.log.left -= 1;
        let message = log_line(&message);
        let who = &*self.log.who;
        match level {
            Level::Trace => tracing::trace!(target: "weft::guest", function = who, "{message}"),
            Level::Debug => tracing::debug!(target: "weft::guest", function = who, "{message}"),
            Level::Info => tracing::info!(target: "weft::guest", function = who, "{message}"),
            Level::Warn => tracing::warn!(target: "weft::guest", function = who, "{message}"),
            Level::Error => tracing::error!(target: "weft::guest", function = who, "{message}"),
        }
    }
}

/// A guest's text as one log record of at most `MAX_LOG_LINE` bytes, its
/// control characters escaped: a guest cannot forge records of the node's
/// own with a newline or a carriage return. The limit holds after escaping,
/// which makes a control character up to six bytes (`\u{1}`).
pub(crate) fn log_line(s: &str) -> std::borrow::Cow<'_, str> {
    let head = truncate(s, MAX_LOG_LINE);
    if !head.chars().any(char::is_control) {
        return head.into();
    }
    let mut out = String::with_capacity(MAX_LOG_LINE);
    for c in head.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
        if out.len() > MAX_LOG_LINE {
            out.truncate(before);
            break;
        }
    }
    out.into()
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

pub(crate) fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    log::add_to_linker::<SandboxState, HasSelf<SandboxState>>(linker, |s| s)?;
    Ok(())
}

/// Guest stdout or stderr: keeps the first `cap` bytes, counts the rest, and
/// never fails a write (a guest that prints too much is not punished).
#[derive(Clone)]
pub(crate) struct OutputCapture {
    inner: Arc<Mutex<Captured>>,
    cap: usize,
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

impl OutputCapture {
    fn new(cap: usize) -> Self {
        Self { inner: Arc::default(), cap }
    }

    /// The kept text and the number of bytes dropped.
    pub(crate) fn take(&self) -> (String, usize) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&std::mem::take(&mut c.bytes)).into_owned();
        (text, std::mem::take(&mut c.dropped))
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for OutputCapture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let keep = buf.len().min(self.cap.saturating_sub(c.bytes.len()));
        c.bytes.extend_from_slice(&buf[..keep]);
        c.dropped += buf.len() - keep;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A warm instance's capture is taken after each call: what one call
    /// dropped is not reported again after the next.
    #[tokio::test]
    async fn each_take_starts_the_count_afresh() {
        let capture = OutputCapture::new(4);
        let mut w = capture.clone();
        w.write_all(b"abcdef").await.expect("write");
        assert_eq!(capture.take(), ("abcd".to_owned(), 2));
        w.write_all(b"xy").await.expect("write");
        assert_eq!(capture.take(), ("xy".to_owned(), 0));
    }

    #[test]
    fn a_log_line_is_cut_and_its_control_characters_escaped() {
        assert_eq!(log_line("plain"), "plain");
        assert_eq!(log_line("a\nb\rc\u{1b}"), r"a\nb\rc\u{1b}");
        assert_eq!(log_line(&"é".repeat(MAX_LOG_LINE)).len(), MAX_LOG_LINE);
        let text = "\u{1}".repeat(MAX_LOG_LINE);
        let controls = log_line(&text);
        assert!(controls.len() <= MAX_LOG_LINE && controls.len() > MAX_LOG_LINE - 6, "{}", controls.len());
        assert!(controls.ends_with(r"\u{1}"), "escapes are never cut in half");
    }
}

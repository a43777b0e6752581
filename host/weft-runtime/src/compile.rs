//! Compiling components into native code, in a child process with time and
//! memory limits.
//!
//! A component's compile time and memory do not follow from its size: a
//! 1.7 MB component of nested blocks took 209 s and 1.4 GB. Tenants' code is
//! untrusted, so a node compiles each plugin in a copy of its own binary,
//! which sets its own memory and CPU limits, reads the wasm on stdin and
//! writes the compiled artifact on stdout; the node kills it at the timeout.
//! A binary opts in by calling [`child_main`] first thing in `main`. Where
//! none did (unit tests, benchmarks that embed a node), components compile in
//! this process, unbounded.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// The first argument that makes a binary a compile child.
const CHILD_ARG: &str = "__weft-compile-plugin";

/// Set by [`child_main`]: this process's binary serves compiles.
static CHILD_PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Set by [`stop_compiling`]: the process is stopping.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// How often a compile in progress checks whether the process is stopping.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Why a component did not compile.
#[derive(Debug)]
pub(crate) struct CompileError {
    pub reason: String,
    /// The same bytes would fail again under the same limits (a limit was
    /// reached, or the compiler refused them), as opposed to a failure of
    /// this attempt (the child could not start, the process is stopping).
    pub lasting: bool,
}

impl CompileError {
    fn lasting(reason: String) -> Self {
        Self { reason, lasting: true }
    }

    fn passing(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), lasting: false }
    }
}

/// Ends the compiles in progress in child processes and refuses new ones:
/// a node that is told to stop does not wait up to `compile_timeout` for
/// a plugin it will never serve. For the whole process, since a binary that
/// compiles in children runs one node.
pub fn stop_compiling() {
    STOPPING.store(true, Ordering::Release);
}

/// How long one plugin may take to compile and how much memory it may take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompileLimits {
    pub timeout: Duration,
    pub memory_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(60), memory_bytes: 2 << 30 }
    }
}

/// Call first in `main`. In a compile child it compiles and returns the
/// exit code; otherwise it lets this process compile plugins in children
/// (copies of its own binary) and returns None.
pub fn child_main() -> Option<ExitCode> {
    let mut args = std::env::args();
    if args.nth(1).as_deref() != Some(CHILD_ARG) {
        // This process's own binary even if its file is replaced (an
        // upgrade in place) or deleted while the node runs.
        let own = PathBuf::from("/proc/self/exe");
        if let Some(program) = own.exists().then_some(own).or_else(|| std::env::current_exe().ok()) {
            let _ = CHILD_PROGRAM.set(program);
        }
        return None;
    }
    let number = |arg: Option<String>| arg.and_then(|a| a.parse::<u64>().ok());
    let (Some(memory), Some(cpu_seconds)) = (number(args.next()), number(args.next())) else {
        eprintln!("usage: weft {CHILD_ARG} MEMORY_BYTES CPU_SECONDS < component.wasm > artifact");
        return Some(ExitCode::FAILURE);
    };
    if let Err(e) = limit_self(memory, cpu_seconds) {
        eprintln!("cannot set the compile limits: {e}");
        return Some(ExitCode::FAILURE);
    }
    let mut wasm = Vec::new();
    let compiled = std::io::stdin()
        .read_to_end(&mut wasm)
        .map_err(wasmtime::Error::from)
        .and_then(|_| crate::engine::compiler())
        .and_then(|engine| engine.precompile_component(&wasm))
        .and_then(|artifact| Ok(std::io::stdout().lock().write_all(&artifact)?));
    Some(match compiled {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    })
}

/// Caps this process's data (heap and stacks) and CPU time, and makes it
/// end with the node (a node killed mid-compile leaves no compiler behind).
#[allow(unsafe_code)]
fn limit_self(memory: u64, cpu_seconds: u64) -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointer.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (resource, value) in [(libc::RLIMIT_DATA, memory), (libc::RLIMIT_CPU, cpu_seconds)] {
        let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
        // SAFETY: setrlimit reads the struct it is given and nothing else.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Compiles `wasm` for `engine`: in a child process under `limits` where
/// [`child_main`] enabled it, in this one otherwise. Returns the artifact
/// (`Component::deserialize` input).
pub(crate) fn compile(engine: &Engine, wasm: &[u8], limits: &CompileLimits) -> Result<Vec<u8>, CompileError> {
    match CHILD_PROGRAM.get() {
        Some(program) => compile_in_child(program, wasm, limits),
        None => engine.precompile_component(wasm).map_err(|e| CompileError::lasting(format!("{e:#}"))),
    }
}

fn compile_in_child(program: &Path, wasm: &[u8], limits: &CompileLimits) -> Result<Vec<u8>, CompileError> {
    let stopping = || CompileError::passing("compiling was cancelled: the node is stopping");
    if STOPPING.load(Ordering::Acquire) {
        return Err(stopping());
    }
    // CPU time is only a backstop for a child the node can no longer kill;
    // the wall-clock timeout below is the limit that applies.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let cpu_seconds = limits.timeout.as_secs().saturating_add(1).saturating_mul(threads);
    let mut child = Command::new(program)
        .args([CHILD_ARG.to_owned(), limits.memory_bytes.to_string(), cpu_seconds.to_string()])
        // A backtrace printed while out of memory can deadlock the child.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CompileError::passing(format!("cannot start the compiler process {}: {e}", program.display())))?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(CompileError::passing("the compiler process has no pipes"));
    };
    // The pipes are served by threads so that neither side blocks on a full
    // one; a child that dies early makes the write fail, which its exit
    // status then explains. Its stdout closes when it exits, which ends the
    // wait for the timeout.
    let (done, ended) = mpsc::channel();
    let (artifact, errors) = std::thread::scope(|scope| {
        scope.spawn(move || stdin.write_all(wasm));
        let errors = scope.spawn(move || {
            let mut text = String::new();
            let _ = (&mut stderr).take(64 << 10).read_to_string(&mut text);
            text
        });
        scope.spawn(move || {
            let mut out = Vec::new();
            let _ = done.send(stdout.read_to_end(&mut out).map(|_| out));
        });
        let artifact = wait_for(&ended, limits.timeout).map_err(|end| {
            let _ = child.kill();
            match end {
                WaitEnd::Stopping => stopping(),
                WaitEnd::Timeout => CompileError::lasting(format!(
                    "compiling took longer than limits.compile_timeout ({}); the component may be built to be slow to compile, or raise the limit",
                    humantime::format_duration(limits.timeout)
                )),
            }
        });
        let status =
            child.wait().map_err(|e| CompileError::passing(format!("cannot wait for the compiler process: {e}")));
        (artifact.and_then(|a| Ok((status?, a))), errors.join().unwrap_or_default())
    });
    let (status, artifact) = artifact?;
    if status.success() {
        return artifact.map_err(|e| CompileError::passing(format!("cannot read the compiled component: {e}")));
    }
    let errors = errors.trim();
    if errors.contains("memory allocation of") || errors.contains("out of memory") {
        return Err(CompileError::lasting(format!(
            "compiling needed more than limits.compile_memory ({}); the component may be built to exhaust the compiler, or raise the limit",
            crate::units::format_size(limits.memory_bytes)
        )));
    }
    if errors.is_empty() {
        // Killed from outside (the OOM killer, an operator): not the bytes' fault.
        return Err(CompileError::passing(format!("the compiler process ended without a result ({status})")));
    }
    Err(CompileError::lasting(errors.to_owned()))
}

enum WaitEnd {
    Timeout,
    Stopping,
}

/// Waits for the child's artifact until `timeout`, or until the process is
/// told to stop.
fn wait_for<T>(ended: &mpsc::Receiver<T>, timeout: Duration) -> Result<T, WaitEnd> {
    let deadline = Instant::now() + timeout;
    loop {
        if STOPPING.load(Ordering::Acquire) {
            return Err(WaitEnd::Stopping);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitEnd::Timeout);
        }
        match ended.recv_timeout(left.min(STOP_CHECK)) {
            Ok(artifact) => return Ok(artifact),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The reader thread always sends before it ends.
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(WaitEnd::Timeout),
        }
    }
}

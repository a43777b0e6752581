//! Hostile guests against a real node: each attack ends in the right error
//! and the node keeps serving.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use serde_json::{Value, json};
use support::{NodeSpec, TestNode, peak_mib};
use weft_proto::{ErrorKind, WeftError};

async fn call(node: &TestNode, fun: &str, args: Vec<Value>) -> Result<Value, WeftError> {
    node.client().await.call(fun, args).await
}

fn trap(e: &WeftError) -> &str {
    e.details.get("trap").and_then(Value::as_str).unwrap_or("")
}

async fn assert_still_serving(node: &TestNode) {
    assert_eq!(call(node, "echo", vec![json!("alive")]).await.unwrap(), json!("alive"));
}

#[tokio::test]
async fn an_endless_loop_is_interrupted_at_its_deadline() {
    let node = TestNode::start(NodeSpec::default());
    let e = call(&node, "spin", vec![]).await.unwrap_err();
    assert_eq!((e.kind, trap(&e)), (ErrorKind::GUEST_TRAP, "interrupted"), "{}", e.message);
    assert!(e.message.contains("deadline"), "{}", e.message);
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn a_fuel_budget_stops_an_endless_loop() {
    let node = TestNode::start(NodeSpec {
        files: vec![("hostile.toml".into(), b"[limits]\nfuel = 5000000\n".to_vec())],
        ..NodeSpec::default()
    });
    let e = call(&node, "spin", vec![]).await.unwrap_err();
    assert_eq!((e.kind, trap(&e)), (ErrorKind::GUEST_TRAP, "out_of_fuel"), "{}", e.message);
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn memory_is_capped_per_call_and_reported_as_memory_limit() {
    let node = TestNode::start(NodeSpec::default());
    assert_eq!(call(&node, "hog", vec![json!(8)]).await.unwrap(), json!(8));
    let e = call(&node, "hog", vec![json!(100)]).await.unwrap_err();
    assert_eq!((e.kind, trap(&e)), (ErrorKind::GUEST_TRAP, "memory_limit"), "{}", e.message);
    assert!(e.message.contains("memory limit of 32MiB: it asked to grow a memory from "), "{}", e.message);
    assert!(e.message.contains("raise that one"), "{}", e.message);
    // A fresh instance per call: the next call starts from a clean slate.
    assert_eq!(call(&node, "hog", vec![json!(8)]).await.unwrap(), json!(8));
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn guests_see_no_files_and_no_environment() {
    let node = TestNode::start(NodeSpec::default());
    let e = call(&node, "read-file", vec![json!("/etc/passwd")]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::GUEST_ERROR);
    assert!(e.details["error"].as_str().unwrap_or("").contains("No such file"), "{:?}", e.details);
    let e = call(&node, "read-file", vec![json!("weft.toml")]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::GUEST_ERROR, "the node's own working directory is invisible too");
    for var in ["HOME", "PATH", "WEFT_LOG"] {
        assert_eq!(call(&node, "env-var", vec![json!(var)]).await.unwrap(), Value::Null, "{var}");
    }
}

#[tokio::test]
async fn deep_recursion_overflows_the_guest_stack_not_the_node() {
    let node = TestNode::start(NodeSpec::default());
    assert_eq!(call(&node, "recurse", vec![json!(100)]).await.unwrap(), json!(100));
    let e = call(&node, "recurse", vec![json!(10_000_000)]).await.unwrap_err();
    assert_eq!((e.kind, trap(&e)), (ErrorKind::GUEST_TRAP, "stack_overflow"), "{}", e.message);
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn huge_results_are_refused_not_shipped() {
    let node = TestNode::start(NodeSpec { config: "[limits]\nmax_result = \"4MiB\"\n".into(), ..NodeSpec::default() });
    let ok = call(&node, "big-output", vec![json!(1)]).await.unwrap();
    assert_eq!(ok.as_str().map(str::len), Some(1 << 20));
    let e = call(&node, "big-output", vec![json!(8)]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);
    assert!(e.message.contains("result limit"), "{}", e.message);
    // An error is an answer too.
    let e = call(&node, "big-error", vec![json!(1)]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::GUEST_ERROR, "{}", e.message);
    assert_eq!(e.details["error"].as_str().map(str::len), Some(1 << 20));
    let e = call(&node, "big-error", vec![json!(8)]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);
    assert!(e.message.contains("an error of about"), "{}", e.message);
    // Larger than the guest's own memory: it cannot even build it.
    let e = call(&node, "big-output", vec![json!(64)]).await.unwrap_err();
    assert_eq!((e.kind, trap(&e)), (ErrorKind::GUEST_TRAP, "memory_limit"), "{}", e.message);
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn results_that_alias_guest_memory_are_refused_before_they_are_copied() {
    // 1 MiB of guest memory claimed 100,000 times would be 100 GiB on the host.
    let node = TestNode::start(NodeSpec::default());
    let e = call(&node, "alias-bomb", vec![json!(100_000), json!(1)]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);
    assert!(e.message.contains("host memory to copy out"), "{}", e.message);
    assert_eq!(e.details["limit"], json!(8 * (16 << 20)), "the budget is 8 x the default max_result");
    assert_still_serving(&node).await;

    // The budget follows max_result: 16 entries of 1 MiB pass wasmtime's own
    // 128 MiB default but not 8 x 1 MiB.
    let node = TestNode::start(NodeSpec { config: "[limits]\nmax_result = \"1MiB\"\n".into(), ..NodeSpec::default() });
    let e = call(&node, "alias-bomb", vec![json!(16), json!(1)]).await.unwrap_err();
    assert_eq!((e.kind, e.details["limit"].clone()), (ErrorKind::RESOURCE_EXHAUSTED, json!(8 << 20)), "{}", e.message);
    assert_still_serving(&node).await;
}

/// wasmtime charges a flag its name's length while copying a result out,
/// but the host holds a string per flag: the copy budget of a function
/// returning flags is cut to match, so a few MB of guest flags cannot
/// take the node's memory to gigabytes (400,000 values took it to 0.9 GB).
#[tokio::test]
async fn a_result_of_flags_is_held_to_the_copy_budget_by_its_host_cost() {
    let node = TestNode::start(NodeSpec::default());
    let e = call(&node, "flag-bomb", vec![json!(400_000)]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);
    assert!(e.message.contains("host memory to copy out"), "{}", e.message);
    let peak = peak_mib(node.pid());
    assert!(peak < 400, "the node peaked at {peak} MiB");
    let few = call(&node, "flag-bomb", vec![json!(1000)]).await.unwrap();
    assert_eq!(few.as_array().map(Vec::len), Some(1000));
    assert_eq!(few[999].as_array().map(Vec::len), Some(32), "{}", few[999]);
    assert_still_serving(&node).await;
}

#[tokio::test]
async fn hostile_calls_in_parallel_do_not_starve_other_tenants() {
    let node = TestNode::start(NodeSpec::default());
    let client = std::sync::Arc::new(node.client().await);
    let mut attacks = Vec::new();
    for (fun, args) in
        [("spin", json!([])), ("hog", json!([100])), ("recurse", json!([10_000_000])), ("spin", json!([]))]
    {
        let client = client.clone();
        let args = args.as_array().cloned().unwrap_or_default();
        attacks.push(tokio::spawn(async move { client.call(fun, args).await }));
    }
    for i in 0..20 {
        assert_eq!(client.call("add", vec![json!(i), json!(1)]).await.unwrap(), json!(i + 1));
    }
    for attack in attacks {
        assert_eq!(attack.await.unwrap().unwrap_err().kind, ErrorKind::GUEST_TRAP);
    }
}

#[tokio::test]
async fn guest_logs_reach_the_node_log_only_with_the_log_capability() {
    let node = TestNode::start(NodeSpec::default());
    assert_eq!(call(&node, "echo", vec![json!("abc")]).await.unwrap(), json!("abc"));
    let log = support::eventually("the guest's log line", std::time::Duration::from_secs(5), async || {
        let log = node.stderr();
        log.contains("echo: 3 bytes").then_some(log)
    })
    .await;
    assert!(log.contains("echo@0.1.0/echo"), "tagged with plugin and function:\n{log}");

    let denied = TestNode::start(NodeSpec {
        files: vec![("echo.toml".into(), b"capabilities = []\n".to_vec())],
        ..NodeSpec::default()
    });
    assert_eq!(call(&denied, "echo", vec![json!("abcd")]).await.unwrap(), json!("abcd"));
    let log = support::eventually("the dropped-line warning", std::time::Duration::from_secs(5), async || {
        let log = denied.stderr();
        log.contains("does not grant the log capability").then_some(log)
    })
    .await;
    assert!(!log.contains("echo: 4 bytes"), "{log}");
}

/// A flood of output lines is cut at the log budget, and newlines in a
/// guest's text never start a record that could pass for the node's own.
#[tokio::test]
async fn guest_output_floods_are_bounded_and_guest_text_cannot_forge_log_records() {
    let node = TestNode::start(NodeSpec::default());
    let text = "flood\nFAKE ERROR weft_node::node: forged\r\n";
    assert_eq!(call(&node, "shout", vec![json!(text), json!(500)]).await.unwrap(), Value::Null);
    let log = support::eventually("the dropped-output warning", std::time::Duration::from_secs(5), async || {
        let log = node.stderr();
        log.contains("dropped_lines").then_some(log)
    })
    .await;
    let forged: Vec<&str> = log.lines().filter(|l| l.contains("FAKE ERROR")).collect();
    // 50 of the 100 stdout lines kept, and the one log-import record.
    assert_eq!(forged.len(), 51, "{log}");
    assert!(forged.iter().all(|l| l.contains("weft::guest")), "a record not marked as the guest's: {forged:?}");
    assert!(forged.iter().any(|l| l.contains(r"flood\nFAKE ERROR") && l.contains(r"forged\r\n")), "{forged:?}");
    assert!(log.contains("dropped_lines=900"), "{log}");
    assert_still_serving(&node).await;
}

/// Many calls, each within its own log budget (100 lines), together get at
/// most 1000 records a second of the node's log for their plugin.
#[tokio::test]
async fn a_plugins_log_records_are_bounded_per_second_over_all_its_calls() {
    let node = TestNode::start(NodeSpec::default());
    let client = node.client().await;
    let started = std::time::Instant::now();
    let calls = (0..30).map(|_| client.call("shout", vec![json!("rate-marker\n"), json!(100)]));
    for result in futures_util::future::join_all(calls).await {
        assert_eq!(result.unwrap(), Value::Null);
    }
    let seconds = started.elapsed().as_secs_f64();
    let log = support::eventually("the dropped-output warnings", std::time::Duration::from_secs(5), async || {
        let log = node.stderr();
        log.contains("records a second").then_some(log)
    })
    .await;
    // 30 x 100 lines of stdout (and 30 log calls) were written.
    let kept = log.lines().filter(|l| l.contains("rate-marker") && l.contains("weft::guest")).count() as f64;
    assert!(kept <= 1000.0 * (1.0 + seconds) + 1.0, "{kept} records in {seconds:.2} s");
    // What was dropped is reported once in 10 s, not once a call.
    let reports = log.lines().filter(|l| l.contains("WARN") && l.contains("dropped_lines")).count() as f64;
    assert!(reports <= seconds + 2.0, "{reports} reports of dropped output in {seconds:.2} s");
    assert_still_serving(&node).await;
}

/// What the last calls of a flood dropped is reported within about 10 s
/// too (the first call's at once), not only with the plugin's next call.
#[tokio::test]
async fn dropped_output_is_reported_though_no_call_follows() {
    let node = TestNode::start(NodeSpec::default());
    let client = node.client().await;
    for _ in 0..2 {
        assert_eq!(client.call("shout", vec![json!("tail\n"), json!(300)]).await.unwrap(), Value::Null);
    }
    let dropped = async || {
        let log = node.stderr();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("dropped_lines"))
            .map(|l| l.split("dropped_lines=").nth(1).unwrap().split(' ').next().unwrap().to_owned())
            .collect();
        (lines.len() == 2).then_some(lines)
    };
    let reports = support::eventually("both calls' drops reported", std::time::Duration::from_secs(20), dropped).await;
    assert_eq!(reports[0], reports[1], "each call dropped as many lines");
}

/// A guest that hands back a value the host cannot read, or exits instead
/// of returning, is the guest's fault, and the error says which.
#[tokio::test]
async fn a_malformed_result_and_an_exit_are_the_guests_faults() {
    let node = TestNode::start(NodeSpec::default());
    let e = call(&node, "bad-char", vec![]).await.unwrap_err();
    assert_eq!((e.kind, trap(&e)), (ErrorKind::GUEST_TRAP, "guest_fault"), "{}", e.message);
    assert!(e.message.contains("a value it cannot read"), "{}", e.message);
    for (code, status) in [(3, "failure"), (0, "success")] {
        let e = call(&node, "quit", vec![json!(code)]).await.unwrap_err();
        assert_eq!((e.kind, trap(&e)), (ErrorKind::GUEST_TRAP, "exit"), "{}", e.message);
        assert!(e.message.contains(&format!("called exit ({status}) instead of returning")), "{}", e.message);
    }
    assert_still_serving(&node).await;
    // The log names the plugin whose guest failed, without a line per call.
    let reported = async || {
        let log = node.stderr();
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains("WARN") && l.contains("failed by the guest's doing")).collect();
        lines
            .iter()
            .all(|l| l.contains("hostile") && l.contains("failed_calls="))
            .then_some(lines.len())
            .filter(|n| *n > 0)
    };
    let lines = support::eventually("the failures reported", std::time::Duration::from_secs(20), reported).await;
    assert!(lines < 3, "one line for several failures, {lines} lines");
}

/// A plugin's deadline counts from when its call gets a sandbox slot: time
/// spent waiting while other calls held every slot is the caller's to
/// bound, not the guest's fault.
#[tokio::test]
async fn a_plugins_deadline_starts_when_its_call_gets_a_slot() {
    let mut spec = NodeSpec { config: "[limits]\nmax_concurrency = 2\n".into(), ..NodeSpec::default() };
    spec.files.push(("echo.toml".into(), b"[limits]\ndeadline = \"500ms\"\n".to_vec()));
    let node = TestNode::start(spec);
    let client = std::sync::Arc::new(node.client().await);
    // Two spins hold both slots until their 1 s deadline.
    let spins: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call("spin", vec![]).await })
        })
        .collect();
    support::eventually("both spins running", std::time::Duration::from_secs(5), async || {
        let metrics = node.admin().get("/metrics").await.ok()?.text;
        (support::metric(&metrics, "weft_in_flight_requests ") == Some(2.0)).then_some(())
    })
    .await;
    let waited = std::time::Instant::now();
    assert_eq!(client.call("echo", vec![json!("queued")]).await.unwrap(), json!("queued"));
    assert!(
        waited.elapsed() > std::time::Duration::from_millis(500),
        "echo waited for a slot longer than its deadline"
    );
    for spin in spins {
        assert_eq!(trap(&spin.await.unwrap().unwrap_err()), "interrupted");
    }
}

/// A function whose signature uses a resource handle is loaded but kept
/// out of the catalog; calling it says why, not just that it is missing.
#[tokio::test]
async fn a_function_taking_a_resource_handle_says_why_it_cannot_be_called() {
    let node = TestNode::start(NodeSpec::default());
    let e = call(&node, "is-ready", vec![json!(1)]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND, "{}", e.message);
    assert_eq!(e.details["local_only"], "hostile/is-ready", "{}", e.message);
    assert!(e.message.contains("its signature uses resource handles"), "{}", e.message);
    let plugins = node.admin().get("/v1/plugins").await.unwrap().body;
    let hostile = plugins["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "hostile").unwrap();
    let f = hostile["functions"].as_array().unwrap().iter().find(|f| f["name"] == "is-ready").unwrap();
    assert_eq!((&f["local_only"], &f["exported"]), (&json!(true), &json!(false)));
    let e = call(&node, "is-reddy", vec![]).await.unwrap_err();
    assert_eq!(e.details.get("local_only"), None, "only the function's own name: {}", e.message);
}

/// WASI random bytes are made by the host, outside the guest's memory and
/// out of reach of its deadline, so one call may ask for 1 MiB at most.
#[tokio::test]
async fn a_guest_gets_at_most_a_mebibyte_of_random_bytes_per_call() {
    let node = TestNode::start(NodeSpec::default());
    assert_eq!(call(&node, "random-bytes", vec![json!(1 << 20)]).await.unwrap(), json!(1 << 20));
    let e = call(&node, "random-bytes", vec![json!((1 << 20) + 1)]).await.unwrap_err();
    assert_eq!((e.kind, trap(&e)), (ErrorKind::GUEST_TRAP, "guest_fault"), "{}", e.message);
    assert!(e.message.contains("1048576"), "{}", e.message);
    assert_still_serving(&node).await;
}

/// A component of `depth` nested loops: small, valid, and slow and hungry
/// to compile (20,000 take 2.3 s and 450 MB here, growing faster than
/// linearly).
fn nested_loops(depth: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len(), out);
        out.extend_from_slice(body);
    }
    // One function body: no locals, `loop` x depth, `end` x depth, `end`.
    let mut body = vec![0];
    body.extend([0x03, 0x40].repeat(depth));
    body.extend(vec![0x0b; depth + 1]);
    let mut code = vec![1];
    leb(body.len(), &mut code);
    code.extend(body);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module); // types: () -> ()
    section(3, &[1, 0], &mut module); // one function of type 0
    section(10, &code, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component); // a core module, embedded
    component
}

/// A plugin built to be slow or hungry to compile is stopped at the compile
/// limits (it compiles in a child process) and refused with the limit to
/// raise; the node starts and serves the rest.
#[tokio::test]
async fn a_plugin_that_takes_too_long_or_too_much_to_compile_is_refused() {
    for (config, depth, limit) in [
        ("compile_timeout = \"1s\"\ncompile_memory = \"16GiB\"", 100_000, "limits.compile_timeout (1s)"),
        ("compile_memory = \"64MiB\"", 20_000, "limits.compile_memory (64MiB)"),
    ] {
        let node = TestNode::start(NodeSpec {
            plugins: vec!["echo"],
            files: vec![("bomb.wasm".into(), nested_loops(depth))],
            config: format!("[limits]\n{config}\n"),
        });
        let plugins = node.admin().get("/v1/plugins").await.unwrap().body;
        let reason = plugins["failed"][0]["reason"].as_str().unwrap_or_default();
        assert_eq!(plugins["failed"][0]["file"], "bomb.wasm", "{plugins}");
        assert!(reason.contains(limit), "{reason}");
        assert_still_serving(&node).await;
        // A reload does not compile the unchanged file again: it is refused
        // for the remembered reason.
        let reload = node.admin().post("/v1/plugins/reload", "").await.unwrap().body;
        let again = reload["failed"][0]["reason"].as_str().unwrap_or_default();
        assert!(again.contains(limit) && again.contains("compiled before"), "{reload}");
    }
}

/// A node told to stop while a plugin compiles ends the compile rather than
/// wait for it (or for its limits), and stops without serving.
#[tokio::test]
async fn a_node_stopped_while_a_plugin_compiles_cancels_the_compile() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    // Some seconds to compile within these limits (30,000: 3.6 s, 660 MB here).
    std::fs::write(plugins.join("slow.wasm"), nested_loops(30_000)).unwrap();
    let config = dir.path().join("weft.toml");
    std::fs::write(
        &config,
        "[node]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nplugins = \"plugins\"\ndata_dir = \"data\"\n\
         [limits]\ncompile_timeout = \"10m\"\ncompile_memory = \"1GiB\"\n",
    )
    .unwrap();
    let stderr_log = dir.path().join("stderr.log");
    let mut node = std::process::Command::new(support::WEFT)
        .args(["node", "--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr_log).unwrap())
        .spawn()
        .unwrap();
    let pid = node.id();
    support::eventually("the compile child", std::time::Duration::from_secs(30), async || {
        (compile_children(pid) > 0).then_some(())
    })
    .await;
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status = node.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut node.stdout.take().unwrap(), &mut stdout).unwrap();
    let log = std::fs::read_to_string(&stderr_log).unwrap();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("compiling was cancelled: the node is stopping"), "{log}");
    assert!(!stdout.contains("ready"), "{stdout}");
}

/// The same for a compile started by a reload (SIGHUP): the node stops
/// without waiting for it.
#[tokio::test]
async fn a_node_stopped_while_a_reload_compiles_cancels_the_compile() {
    let mut node = TestNode::start(NodeSpec {
        plugins: vec!["echo"],
        files: vec![],
        config: "watch_plugins = false\n[limits]\ncompile_timeout = \"10m\"\ncompile_memory = \"1GiB\"\n".into(),
    });
    std::fs::write(node.plugins_dir().join("slow.wasm"), nested_loops(30_000)).unwrap();
    let pid = node.pid();
    let _ = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status();
    support::eventually("the compile child", std::time::Duration::from_secs(30), async || {
        (compile_children(pid) > 0).then_some(())
    })
    .await;
    assert_eq!(node.terminate(), Some(0));
    let log = node.stderr();
    assert!(log.contains("compiling was cancelled: the node is stopping"), "{log}");
}

/// Compile children of process `pid` (running, not yet reaped).
fn compile_children(pid: u32) -> usize {
    let pid = pid.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let dir = entry.ok()?.path();
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            // stat: "PID (COMM) STATE PPID ..."; the comm may hold spaces.
            let ppid = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?;
            let compiling = String::from_utf8_lossy(&cmdline).contains("__weft-compile-plugin");
            (ppid == pid && compiling).then_some(())
        })
        .count()
}

//! The `weft` command line as a user runs it.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use std::process::Command;

use support::{NodeSpec, TestNode, WEFT, write};

fn weft(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(WEFT).args(args).env("WEFT_LOG", "warn").output().expect("run weft");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_port_in_use_stops_the_node_with_the_reason_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, out, err) =
        weft(&["node", "--listen", &addr, "--admin", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr} (node.listen)")), "{err}");
    assert!(err.contains("another process has that port"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "the OS error is said once: {err}");
}

/// A file where a folder belongs is named as such, not reported as
/// "File exists", "Not a directory" or a plugins folder still to appear.
#[test]
fn a_file_given_for_a_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    write(&file, "");
    let file = file.to_str().unwrap();
    let node = ["node", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let (code, _, err) = weft(&[&node[..], &["--plugins", file]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("node.plugins: {file} is a file, not a folder")), "{err}");
    let data = format!("{file}/data");
    let (code, _, err) = weft(&[&node[..], &["--data-dir", &data]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("cannot create data_dir {data}: {file} is a file, not a folder")), "{err}");
    let (code, _, err) = weft(&["plugins", "export", file]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{file} is a file, not a folder")), "{err}");
}

#[test]
fn a_client_command_whose_output_pipe_is_closed_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(WEFT).args(["token", "--tenant", "acme"]).stdout(writer).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE, as Unix tools are: {:?}", out.status);
    let (code, _, err) = weft(&["token", "--tenant", "bad name!"]);
    assert_eq!(code, 2, "a name no config could hold is refused: {err}");
}

#[test]
fn a_url_of_the_wrong_port_says_which_port_the_command_takes() {
    let (code, _, err) = weft(&["call", "--node", "http://127.0.0.1:7701", "echo", "hi"]);
    assert_eq!(code, 1);
    assert!(err.contains("ws:// or wss://") && err.contains("weft catalog"), "{err}");
    let (code, _, err) = weft(&["catalog", "--admin", "ws://127.0.0.1:7700"]);
    assert_eq!(code, 1);
    assert!(err.contains("admin http:// URL"), "{err}");
    // Nothing listening: where to look.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for url in [format!("http://{free}"), format!("ws://{free}")] {
        let (code, _, err) = weft(&["catalog", "--node", &url]);
        assert_eq!(code, 1);
        assert!(err.contains("cannot connect") && err.contains("is this its address"), "{err}");
    }
}

/// A port that accepts connections but never answers is given up on, with
/// the question to ask, instead of waiting for ever.
#[test]
fn a_port_that_never_answers_is_given_up_on() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", silent.local_addr().unwrap());
    let (code, _, err) = weft(&["call", "--node", &url, "echo", "hi"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{url} did not answer within 10s; is that address a Weft node's")), "{err}");
}

/// A running node's ports each say they are the other kind, and name the
/// right one; an address without a scheme gets the URLs it could mean.
#[test]
fn a_node_s_ports_send_a_client_of_the_other_kind_to_the_right_one() {
    let node = TestNode::start(NodeSpec::default());
    let ws_port = node.ws.rsplit(':').next().unwrap();
    let admin_host_port = node.admin_url.trim_start_matches("http://");
    let ws_as_http = format!("http://127.0.0.1:{ws_port}");
    for args in [vec!["catalog", "--node", &ws_as_http], vec!["plugins", "reload", "--node", &ws_as_http]] {
        let (code, _, err) = weft(&args);
        assert_eq!(code, 1, "{err}");
        let want = format!(
            "{ws_as_http} is the node's WebSocket port, not its admin API: give {} (the admin port) or {}",
            node.admin_url, node.ws
        );
        assert!(err.contains(&want), "{err}");
    }
    let admin_as_ws = format!("ws://{admin_host_port}");
    for command in ["call", "bench"] {
        let (code, _, err) = weft(&[command, "--node", &admin_as_ws, "echo", "hi"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&format!("this is the node's admin HTTP port: WebSocket clients (weft call, weft bench) connect to its WebSocket port, {ws_port}")), "{err}");
    }
    let bare = node.ws.trim_start_matches("ws://");
    let (code, _, err) = weft(&["call", "--node", bare, "echo", "hi"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("--node {bare} has no scheme: calls go to the node's WebSocket, ws://{bare}")),
        "{err}"
    );
    let (code, _, err) = weft(&["catalog", "--node", admin_host_port]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("give http://{admin_host_port} if that is the node's admin port")), "{err}");
}

/// `--node` and `WEFT_NODE` name a node the same way for every command:
/// given the WebSocket URL, the admin commands find the admin API.
#[test]
fn admin_commands_take_the_node_s_websocket_url_too() {
    let node = TestNode::start(NodeSpec::default());
    let (code, out, err) = weft(&["catalog", "--node", &node.ws]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("echo/echo@0.1.0"), "{out}");
    let out = Command::new(WEFT).args(["routes", "--json"]).env("WEFT_NODE", &node.ws).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(table["routes"].is_array(), "{table}");
    let (code, out, err) = weft(&["plugins", "reload", "--node", &node.ws]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("unchanged"), "{out}");
}

/// With `auth.operator_tokens`, the admin API answers the operator only,
/// but for the probes and client calls; the admin commands send the token
/// from --admin-token or WEFT_ADMIN_TOKEN.
#[test]
fn operator_tokens_guard_the_admin_api_but_not_probes_or_client_calls() {
    const OPERATOR: &str = "operator-secret-0123456789";
    let config = format!("[auth]\noperator_tokens = [\"{OPERATOR}\"]\n");
    let node = TestNode::start(NodeSpec { config, ..NodeSpec::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (anyone, operator) = (node.admin(), node.admin().with_token(Some(OPERATOR.into())));
        for path in ["/health", "/livez", "/readyz"] {
            assert_eq!(anyone.get(path).await.unwrap().status, 200, "{path}");
        }
        for path in ["/metrics", "/v1/plugins", "/v1/catalog", "/v1/tenants", "/v1/peers"] {
            let reply = anyone.get(path).await.unwrap();
            assert_eq!(reply.status, 401, "{path}: {}", reply.text);
            assert_eq!(reply.body["error"]["kind"], "UNAUTHENTICATED", "{path}");
            assert_eq!(reply.headers["www-authenticate"], "Bearer", "{path}");
            assert!(reply.text.contains("auth.operator_tokens") && reply.text.contains("none was sent"), "{path}");
            assert_eq!(operator.get(path).await.unwrap().status, 200, "{path}");
        }
        let wrong = node.admin().with_token(Some("not-the-operator-token".into()));
        assert!(wrong.get("/v1/plugins").await.unwrap().text.contains("is not one of them"));
        assert_eq!(anyone.post("/v1/plugins/reload", "").await.unwrap().status, 401);
        let call = r#"{"role":"rpc","u":"1","cmds":[{"name":"a","fun":"echo","args":["hi"]}]}"#;
        let reply = anyone.post("/v1/call", call).await.unwrap();
        assert_eq!((reply.status, &reply.body["r"]["a"]), (200, &serde_json::json!("hi")), "{}", reply.text);
    });
    let (code, _, err) = weft(&["catalog", "--node", &node.ws]);
    assert_eq!(code, 1);
    assert!(err.contains("--admin-token or WEFT_ADMIN_TOKEN"), "{err}");
    let (code, out, err) = weft(&["catalog", "--node", &node.ws, "--admin-token", OPERATOR]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("echo/echo@0.1.0"), "{out}");
    let out = Command::new(WEFT)
        .args(["plugins", "reload", "--node", &node.admin_url])
        .env("WEFT_ADMIN_TOKEN", OPERATOR)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Under a low open-file limit the node raises its soft limit to the hard
/// one, and says at its start when that still cannot hold
/// `limits.max_connections`.
#[test]
fn a_node_under_a_low_open_file_limit_raises_it_and_says_so() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -Sn 300 && ulimit -Hn 600 && exec {WEFT} node --listen 127.0.0.1:0 --admin 127.0.0.1:0 --data-dir {}",
        data.path().display()
    );
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .env("WEFT_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let line = stderr.lines().map_while(Result::ok).find(|l| l.contains("open-file limit"));
    child.kill().unwrap();
    child.wait().unwrap();
    let line = line.expect("a warning about the open-file limit");
    assert!(line.contains("the open-file limit is 600") && line.contains("limits.max_connections (10000)"), "{line}");
}

#[test]
fn weft_call_prints_the_result_or_the_error_kind() {
    let node = TestNode::start(NodeSpec::default());
    let (code, out, _) = weft(&["call", "--node", &node.ws, "echo", "hi"]);
    assert_eq!((code, out.trim()), (0, "\"hi\""));
    let (code, out, _) = weft(&["call", "--node", &node.ws, "add", "40", "2"]);
    assert_eq!((code, out.trim()), (0, "42"));
    let (code, _, err) = weft(&["call", "--node", &node.ws, "echo", "42"]);
    assert!(code != 0 && err.contains(r#"'"42"'"#), "{err}");
    let (code, out, _) = weft(&["call", "--node", &node.ws, "echo", r#""42""#]);
    assert_eq!((code, out.trim()), (0, r#""42""#));
    // An empty variable counts as unset: no token, not an empty one.
    let out =
        Command::new(WEFT).args(["call", "--node", &node.ws, "echo", "x"]).env("WEFT_TOKEN", "").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, out, _) = weft(&["call", "--node", &node.ws, "concat", "--kw", "a=\"x\"", "--kw", "b=y"]);
    assert_eq!((code, out.trim()), (0, "\"xy\""));
    let (code, _, err) = weft(&["call", "--node", &node.ws, "concat", "--kw", "a=x", "--kw", "a=y", "--kw", "b=z"]);
    assert!(code != 0 && err.contains("--kw a is given twice"), "{err}");
    let (code, out, err) = weft(&["call", "--node", &node.ws, "divide", "1", "0"]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.starts_with("GUEST_ERROR: "), "{err}");

    let file = node.dir.path().join("req.json");
    write(
        &file,
        r#"{"cmds": [{"name": "a", "fun": "upper", "args": ["x"]}, {"name": "b", "fun": "concat", "args": [{"$ref": "a"}, "!"]}]}"#,
    );
    let (code, out, _) = weft(&["call", "--node", &node.ws, "--request", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!({"b": "X!"}));
    // A field the node would ignore is named, with the one meant.
    write(&file, r#"{"cmds": [{"name": "a", "fun": "upper", "args": ["x"], "cluster": "beta"}], "timeout": 5}"#);
    let (code, out, err) = weft(&["call", "--node", &node.ws, "--request", file.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "{\n  \"a\": \"X\"\n}"), "{err}");
    assert!(
        err.contains("cmds.0.cluster is not a request field and is ignored (the cluster is \"target_cluster\")"),
        "{err}"
    );
    assert!(err.contains("timeout is not a request field and is ignored (the deadline is \"timeout_ms\")"), "{err}");
    write(&file, r#"{"cmds": [{"name": 1, "fun": "upper"}]}"#);
    let (code, _, err) = weft(&["call", "--node", &node.ws, "--request", file.to_str().unwrap()]);
    assert!(code != 0 && err.contains("cmds[0]") && err.contains("name"), "{err}");

    let (code, out, _) = weft(&["catalog", "--node", &node.admin_url]);
    assert_eq!(code, 0);
    assert!(out.contains("math/stats@0.1.0  func(xs: list<f64>) -> summary"), "{out}");
    // An admin URL that answers with an error is an error, not an empty list.
    let (code, _, err) = weft(&["catalog", "--node", &format!("{}/v1", node.admin_url)]);
    assert_ne!(code, 0);
    assert!(err.contains("INVALID_REQUEST") && err.contains("HTTP 404"), "{err}");

    // KIND: message, as a call's own errors print.
    let (code, _, err) = weft(&["call", "--node", "ws://127.0.0.1:1", "echo", "x"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("UNAVAILABLE: cannot connect") && err.contains("is the node running"), "{err}");
}

#[test]
fn plugins_inspect_prints_wit_signatures() {
    let dir = tempfile::tempdir().unwrap();
    weft_bundle::write_to(dir.path(), &["math"]).unwrap();
    let (code, out, _) = weft(&["plugins", "inspect", dir.path().join("math.wasm").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("record summary { count: u32, mean: f64, min: f64, max: f64 }"), "{out}");
    assert!(out.contains("export divide: func(a: f64, b: f64) -> result<f64, string>;"), "{out}");
    assert!(out.contains("export stats: func(xs: list<f64>) -> summary;"), "{out}");

    let junk = dir.path().join("junk.wasm");
    write(&junk, "junk");
    let (code, _, err) = weft(&["plugins", "inspect", junk.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not a WebAssembly file") && err.contains("--target wasm32-wasip2"), "{err}");
    // The header of a core module, as wasm32-wasip1 builds.
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (code, _, err) = weft(&["plugins", "inspect", core.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("a core WebAssembly module, not a component"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn a_bad_config_lists_every_problem_with_its_line_and_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weft.toml");
    write(&config, "[node]\nlisten = \"127.0.0.1:0\"\nclustr = \"a\"\n[limits]\nmemory = \"lots\"\n");
    let (code, out, err) = weft(&["node", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "never ready: {out}");
    assert!(err.contains("unknown key `node.clustr` at line 3"), "{err}");
    assert!(err.contains("line 5") && err.contains("MiB"), "{err}");
}

#[test]
fn weft_new_scaffolds_a_plugin_crate() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("greeter");
    let (code, out, err) = weft(&["new", "greeter", "--dir", target.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("wasm32-wasip2"));
    for file in ["Cargo.toml", "wit/world.wit", "src/lib.rs", "greeter.toml"] {
        assert!(target.join(file).is_file(), "{file}");
    }
    let wit = std::fs::read_to_string(target.join("wit/world.wit")).unwrap();
    assert!(wit.contains("world greeter") && wit.contains("export greet: func(who: string) -> string;"));
    // Names that would make a crate whose WIT does not parse are refused.
    for (bad, why) in
        [("Bad Name", "lowercase"), ("a--b", "single '-'"), ("ab-", "single '-'"), ("type", "WIT keyword")]
    {
        let (code, _, err) = weft(&["new", bad]);
        assert_ne!(code, 0, "{bad}");
        assert!(err.contains(why), "{bad}: {err}");
    }
    let elsewhere = dir.path().join("other");
    let (code, _, err) = weft(&["new", "other", "--dir", elsewhere.to_str().unwrap(), "--sdk", "/nonexistent"]);
    assert_ne!(code, 0);
    assert!(err.contains("--sdk /nonexistent: no Cargo.toml there"), "{err}");
    assert!(!elsewhere.exists(), "nothing is written");
}

#[test]
fn weft_bench_reports_throughput_latency_and_errors() {
    let node = TestNode::start(NodeSpec::default());
    let bench_exit = |extra: &[&str], want: i32| {
        let mut args = vec!["bench", "--node", node.ws.as_str(), "--json"];
        args.extend_from_slice(extra);
        let (code, out, err) = weft(&args);
        assert_eq!(code, want, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let bench = |extra: &[&str]| bench_exit(extra, 0);

    let r = bench(&["--requests", "300", "--concurrency", "8", "echo", "hi"]);
    assert_eq!(r["completed"], 300, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    let lat = |p: &str| r["latency_us"][p].as_u64().unwrap();
    assert!(lat("p50") <= lat("p90") && lat("p90") <= lat("p99"), "{r}");
    assert!(lat("p99") <= lat("max"), "{r}");
    assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");

    // Every request failed: the numbers are reported with the first
    // message of each kind, and the exit code says so. Options may follow
    // the arguments.
    let r = bench_exit(&["divide", "1", "0", "--requests", "50"], 1);
    assert_eq!(r["completed"], 50, "{r}");
    assert_eq!(r["errors"], serde_json::json!({"GUEST_ERROR": 50}), "{r}");
    assert!(r["error_examples"]["GUEST_ERROR"].as_str().unwrap().contains("zero"), "{r}");
    // A request every copy of which would be refused is not run at all.
    for (args, kind) in [(vec!["nope"], "FUNCTION_NOT_FOUND"), (vec!["add", "x", "2"], "INVALID_ARGUMENTS")] {
        let (code, out, err) = weft(&[&["bench", "--node", node.ws.as_str(), "--requests", "50"][..], &args].concat());
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert!(err.starts_with(&format!("{kind}: ")) && err.contains("nothing was measured"), "{err}");
    }
    let r = bench(&["add", "-1", "2", "--requests", "5"]);
    assert_eq!((r["completed"].as_u64(), r["ok"].as_u64()), (Some(5), Some(5)), "{r}");
    // No more slots than requests, however many are asked for.
    let r = bench(&["--requests", "3", "--concurrency", "100000", "echo", "hi"]);
    assert_eq!((r["completed"].as_u64(), r["concurrency"].as_u64()), (Some(3), Some(3)), "{r}");
    let (code, _, err) = weft(&["bench", "--node", node.ws.as_str(), "--concurrency", "100001", "echo", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("--concurrency"), "{err}");

    let (code, _, err) = weft(&["bench", "--node", "ws://127.0.0.1:1", "echo", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("UNAVAILABLE"), "{err}");
}

#[test]
fn weft_bench_says_when_the_node_went_away_mid_run() {
    let node = TestNode::start(NodeSpec::default());
    let ws = node.ws.clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(1));
        drop(node);
    });
    let args = ["bench", "--node", ws.as_str(), "--json", "--duration", "20s", "echo", "hi"];
    let out = Command::new(WEFT).args(args).env("WEFT_LOG", "warn").output().expect("run weft");
    killer.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the run was cut short"), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["slots_lost"].as_u64().unwrap() > 0, "{r}");
    assert!(r["elapsed_s"].as_f64().unwrap() < 15.0, "{r}");
}

#[test]
fn weft_demo_runs_calls_across_three_clusters() {
    let (code, out, err) = weft(&["demo", "--once"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Each showcase call ran where its function lives, across one and two bridges.
    for expected in [
        r#"{"e":"hello"}"#,
        "ran s@alpha/a2",
        r#"{"u":"WEFT"}"#,
        "ran g@gamma/g1",
        "ran e@alpha/a1, w@beta/b1, s@gamma/g1",
        "POLICY_DENIED",
        "gamma: 2 hop(s) via b1",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
}

/// SIGTERM ends a serving demo as Ctrl-C does: its nodes stop and its
/// temporary folder goes (it was left behind, with exit status 143).
#[test]
fn weft_demo_stopped_by_sigterm_cleans_up() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Command::new(WEFT)
        .args(["demo"])
        .env("WEFT_LOG", "warn")
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().starts_with("Serving")), "the demo never served");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "the demo's folder");
    assert!(Command::new("kill").args(["-TERM", &demo.id().to_string()]).status().unwrap().success());
    assert_eq!(demo.wait().unwrap().code(), Some(0));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "the demo's folder is gone");
}

#[test]
fn weft_keygen_writes_a_key_pair_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys/alpha.key");
    let (code, out, err) = weft(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "the folder is made: {err}");
    let public = std::fs::read_to_string(dir.path().join("keys/alpha.key.pub")).unwrap();
    assert!(out.contains(public.trim()), "{out}");
    assert!(weft_node::signing::load_signing_key(&key).is_ok());
    let (code, _, err) = weft(&["keygen", "--out", key.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    // A key written over a file anyone may read is kept from them too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = weft(&["keygen", "--out", key.to_str().unwrap(), "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // A private key named like a public one is refused before anything is written.
    let misnamed = dir.path().join("keys/beta.pub");
    let (code, _, err) = weft(&["keygen", "--out", misnamed.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("names the private key") && err.contains("beta.key"), "{err}");
    assert!(!misnamed.exists());
}

#[test]
fn weft_plugins_reload_reports_what_changed_and_fails_on_a_bad_or_unlisted_file() {
    let node =
        TestNode::start(NodeSpec { plugins: vec!["echo"], files: vec![], config: "watch_plugins = false\n".into() });
    std::fs::write(node.plugins_dir().join("text.wasm"), weft_bundle::get("text").unwrap()).unwrap();
    let (code, out, err) = weft(&["plugins", "reload", "--admin", &node.admin_url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loaded: text@0.1.0") && out.contains("unchanged: 1"), "{out}");
    let (code, out, _) = weft(&["call", "--node", &node.ws, "upper", "reloaded"]);
    assert_eq!((code, out.trim()), (0, "\"RELOADED\""));

    std::fs::write(node.plugins_dir().join("bad.wasm"), b"junk").unwrap();
    let (code, out, _) = weft(&["plugins", "reload", "--admin", &node.admin_url]);
    assert_eq!(code, 1, "a file that fails makes the command fail");
    assert!(out.contains("failed: bad.wasm: "), "{out}");

    // A plugin that loads but does not fit the node's catalog fails it too.
    let config = "watch_plugins = false\n[cluster]\nmax_catalog_entries_per_node = 7\n".into();
    let small = TestNode::start(NodeSpec { plugins: vec!["echo"], files: vec![], config });
    std::fs::write(small.plugins_dir().join("hostile.wasm"), weft_bundle::get("hostile").unwrap()).unwrap();
    let (code, out, _) = weft(&["plugins", "reload", "--admin", &small.admin_url]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("loaded: hostile@0.1.0") && out.contains("unlisted: hostile: its functions do not fit"),
        "{out}"
    );

    // A node serving the bundled plugins has nothing to reload.
    let bundled = TestNode::spawn(
        tempfile::tempdir().unwrap(),
        &["node", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--data-dir", "data"],
    );
    let (code, _, err) = weft(&["plugins", "reload", "--admin", &bundled.admin_url]);
    assert_eq!(code, 1);
    assert!(err.contains("bundled plugins"), "{err}");
}

/// Flags and arguments that cannot become a request are refused before
/// anything is dialled (no node runs here), each saying what was wrong.
#[test]
fn call_options_that_cannot_be_sent_say_why() {
    for (args, says) in [
        (vec!["call", "--timeout-ms", "-5", "echo", "hi"], "expected a whole number of milliseconds, 1 or more"),
        (vec!["call", "--timeout-ms", "0", "echo", "hi"], "expected a whole number of milliseconds, 1 or more"),
        (vec!["call", "--kw", "=3", "echo"], "--kw \"=3\" has no name"),
        (vec!["call", "add", "1e400", "2"], "argument 1e400 is a number out of the range"),
        (vec!["bench", "add", "1e400", "2"], "argument 1e400 is a number out of the range"),
        (vec!["node", "--listen", "127.0.0.1:99999"], "port 99999 is over 65535; use a numeric IP:PORT"),
        (
            vec!["call", "--node", "ws://127.0.0.1:70000", "echo", "hi"],
            "ws://127.0.0.1:70000: port 70000 is over 65535",
        ),
        (vec!["catalog", "--node", "http://[::1]:70000/"], "http://[::1]:70000/: port 70000 is over 65535"),
    ] {
        let (code, out, err) = weft(&args);
        assert!(code != 0 && out.is_empty(), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("cannot connect"), "{args:?} dialled: {err}");
    }
}

#[test]
fn routes_and_call_refuse_what_they_would_misread() {
    let node = TestNode::start(NodeSpec::default());
    let (code, out, err) = weft(&["routes", "--node", &node.admin_url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no routes"), "an empty table says so: {out:?}");
    let (code, _, err) = weft(&["routes", "--node", &node.admin_url, "--explain", "bad name"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a cluster name"), "{err}");
    // The node's own cluster needs no route; another is refused by the
    // (strict) policy before routes are looked at.
    let (code, out, err) = weft(&["routes", "--node", &node.admin_url, "--explain", "local"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("local is this node's own cluster"), "{out}");
    let (_, out, _) = weft(&["routes", "--node", &node.admin_url, "--explain", "local", "--json"]);
    let body: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&body["own_cluster"], &body["reachable"]), (&true.into(), &true.into()), "{body}");
    let (_, out, _) = weft(&["routes", "--node", &node.admin_url, "--explain", "elsewhere"]);
    assert!(out.contains("elsewhere is refused by this node's federation policy (rule strict-mode)"), "{out}");
    let (_, out, _) = weft(&["routes", "--node", &node.admin_url, "--explain", "elsewhere", "--json"]);
    let body: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&body["refused"]["rule"], &body["reachable"]), (&"strict-mode".into(), &false.into()), "{body}");
    // A request file's commands carry their own options; flags would be lost.
    let (code, _, err) = weft(&["call", "--node", &node.ws, "--request", "r.json", "--cluster", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("--cluster"), "{err}");
}

#[test]
fn a_bad_flag_is_reported_with_its_value_and_where_it_came_from() {
    let (code, _, err) = weft(&["node", "--id", "my node"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid config (flags and WEFT_* variables over the defaults)"), "{err}");
    assert!(err.contains("node.id \"my node\": use 1 to 128 ASCII letters"), "{err}");

    // Over a file, a flag's problem is named as the flag's; an empty
    // variable (`WEFT_SEEDS=` in an env file) leaves its setting alone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weft.toml");
    std::fs::write(&file, "[node]\nid = \"fine\"\n").unwrap();
    let out = Command::new(WEFT)
        .args(["node", "--config", file.to_str().unwrap(), "--advertise", "ws://:1"])
        .env("WEFT_SEEDS", "")
        .env("WEFT_ID", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("(with flags and WEFT_* variables over it)"), "{err}");
    assert!(err.contains("node.advertise") && err.contains("(set by a flag or WEFT_* variable)"), "{err}");
    assert!(!err.contains("node.seeds") && !err.contains("node.id"), "{err}");
}

#[test]
fn any_config_key_can_be_set_by_a_flag_or_a_variable() {
    let dir = tempfile::tempdir().unwrap();
    let toml =
        "[node]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ncluster = \"alpha\"\n[limits]\nmax_commands = 8\n";
    std::fs::write(dir.path().join("weft.toml"), toml).unwrap();
    // Each problem is named with the flag or variable that caused it.
    let out = Command::new(WEFT)
        .current_dir(dir.path())
        .args(["node", "--config", "weft.toml", "--set", "limits.max_comands=2", "--set", "routing.max_hops=none"])
        .env("WEFT_LIMITS__DEADLINE", "soon")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown key `limits.max_comands` (set by --set)"), "{err}");
    assert!(err.contains("routing.max_hops: invalid type: string \"none\"") && err.contains("(set by --set)"), "{err}");
    assert!(
        err.contains("limits.deadline: invalid duration \"soon\"") && err.contains("(set by WEFT_LIMITS__DEADLINE)"),
        "{err}"
    );

    // A variable sets a key the file does not have, and a flag wins over
    // both the file and a variable for the same key.
    let node = TestNode::spawn_with_env(
        dir,
        &["node", "--config", "weft.toml", "--set", "limits.max_commands=1", "--set", "node.id=42"],
        &[("WEFT_NODE__CLUSTER", "zeta"), ("WEFT_LIMITS__MAX_COMMANDS", "5")],
    );
    assert_eq!(node.id, "42", "a value that reads as a number is a string where the key takes one");
    let (code, out, _) = weft(&["catalog", "--node", &node.admin_url, "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"zeta\""), "{out}");
    let file = node.dir.path().join("req.json");
    write(
        &file,
        r#"{"cmds": [{"name": "a", "fun": "upper", "args": ["x"]}, {"name": "b", "fun": "upper", "args": ["y"]}]}"#,
    );
    let (code, _, err) = weft(&["call", "--node", &node.ws, "--request", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("over the limit of 1 per request (limits.max_commands)"), "{err}");
}

//! A single node over its real WebSocket and HTTP endpoints: every example
//! function, the admin API, and the bad input it must survive.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{NodeSpec, TestNode, eventually, metric, peak_mib};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use weft_proto::{ErrorKind, Request};

fn node() -> TestNode {
    TestNode::start(NodeSpec::default())
}

/// (function, args, expected result) for every example function.
fn example_calls() -> Vec<(&'static str, Value, Value)> {
    vec![
        ("echo", json!(["hi"]), json!("hi")),
        ("echos", json!([["a", "b"]]), json!(["a", "b"])),
        ("concat", json!(["a", "b"]), json!("ab")),
        ("add", json!([40, 2]), json!(42)),
        ("add", json!(["9007199254740993", 0]), json!(9007199254740993i64)),
        ("divide", json!([1.0, 4.0]), json!(0.25)),
        ("stats", json!([[1.0, 2.0, 6.0]]), json!({"count": 3, "mean": 3.0, "min": 1.0, "max": 6.0})),
        ("stats", json!([[]]), json!({"count": 0, "mean": "NaN", "min": "NaN", "max": "NaN"})),
        ("word-count", json!(["the quick  brown fox"]), json!(4)),
        ("upper", json!(["straße"]), json!("STRASSE")),
        ("split", json!(["a,b,,c", ","]), json!(["a", "b", "", "c"])),
    ]
}

#[tokio::test]
async fn every_example_function_answers_over_websocket_and_http() {
    let node = node();
    let client = node.client().await;
    for (fun, args, expected) in example_calls() {
        let args: Vec<Value> = args.as_array().cloned().unwrap_or_default();
        let got = client.call(fun, args.clone()).await.unwrap_or_else(|e| panic!("{fun}: {e}"));
        assert_eq!(got, expected, "{fun} over websocket");

        let body = json!({"role": "rpc", "u": "h", "cmds": [{"name": "x", "fun": fun, "args": args}]});
        let reply = node.admin().post("/v1/call", body.to_string()).await.expect("http call");
        assert_eq!(reply.status, 200, "{fun}: {}", reply.text);
        assert_eq!(reply.body["r"]["x"], expected, "{fun} over http");
    }
}

#[tokio::test]
async fn guest_errors_and_kwargs_follow_the_wit_mapping() {
    let node = node();
    let client = node.client().await;
    let err = client.call("divide", vec![json!(1), json!(0)]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::GUEST_ERROR);
    assert_eq!(err.details["error"], json!("division by zero"));
    assert!(err.message.contains("math/divide"), "{}", err.message);

    let mut cmd = weft_proto::Command::new("c", "concat", vec![]);
    cmd.kwargs.insert("b".into(), json!("2"));
    cmd.kwargs.insert("a".into(), json!("1"));
    assert_eq!(client.call_command(cmd).await.unwrap(), json!("12"));
    // Plugin-qualified names work as well as bare ones.
    assert_eq!(client.call("text/upper", vec![json!("q")]).await.unwrap(), json!("Q"));
}

#[tokio::test]
async fn bad_arguments_are_rejected_before_the_guest_runs_naming_the_parameter() {
    let node = node();
    let client = node.client().await;
    let cases = [
        ("add", json!([1, "x"]), "'b'", "s64"),
        ("add", json!([1]), "'b'", "s64"),
        ("echo", json!(["a", "b"]), "echo", "1"),
        ("stats", json!([[1, "two"]]), "xs[1]", "f64"),
        ("word-count", json!([5]), "'text'", "string"),
    ];
    for (fun, args, names, expected) in cases {
        let err = client.call(fun, args.as_array().cloned().unwrap_or_default()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::INVALID_ARGUMENTS, "{fun} {args}: {}", err.message);
        assert!(err.message.contains(names) && err.message.contains(expected), "{fun}: {}", err.message);
    }
    let text = node.admin().get("/metrics").await.unwrap().text;
    // None of these reached a guest: no call of math/add was counted.
    assert_eq!(metric(&text, "weft_calls_total{function=\"math/add\""), None, "{text}");
    assert!(metric(&text, "weft_errors_total{kind=\"INVALID_ARGUMENTS\"}").unwrap_or(0.0) >= 5.0);
}

#[tokio::test]
async fn unknown_functions_are_function_not_found_with_a_hint() {
    let node = node();
    let err = node.client().await.call("nope", vec![]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND);
    assert!(err.message.contains("nope") && err.message.contains("weft catalog"), "{}", err.message);
}

async fn raw_socket(
    node: &TestNode,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(&node.ws).await.expect("connect").0
}

async fn next_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> (Value, bool) {
    loop {
        match ws.next().await.expect("a frame").expect("a good frame") {
            Message::Text(t) => return (serde_json::from_str(t.as_str()).expect("json"), false),
            Message::Binary(b) => return (serde_json::from_slice(&b).expect("json"), true),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_keeps_serving() {
    let node = node();
    let mut ws = raw_socket(&node).await;
    let cases: [(&str, ErrorKind, &str); 10] = [
        ("{not json", ErrorKind::PARSE_ERROR, ""),
        (r#"{"role": "server", "u": "r1"}"#, ErrorKind::INVALID_REQUEST, "r1"),
        (r#"{"u": "r2", "cmds": []}"#, ErrorKind::INVALID_REQUEST, "r2"),
        (r#"{"role": "rpc", "u": "r3"}"#, ErrorKind::INVALID_REQUEST, "r3"),
        (r#"{"role": "rpc", "u": "r4", "cmds": [{"name": "a"}]}"#, ErrorKind::INVALID_REQUEST, "r4"),
        (r#"{"role": "rpc", "u": "r5", "cmds": []}"#, ErrorKind::INVALID_REQUEST, "r5"),
        (
            r#"{"role": "rpc", "u": "r6", "timeout_ms": 0, "cmds": [{"name": "a", "fun": "echo", "args": ["x"]}]}"#,
            ErrorKind::INVALID_REQUEST,
            "r6",
        ),
        (
            r#"{"role": "rpc", "u": "r7", "cmds": [{"name": "a", "fun": "echo", "args": ["x"], "target_cluster": "bad name!"}]}"#,
            ErrorKind::INVALID_REQUEST,
            "r7",
        ),
        // Valid JSON, but beyond f64: still answered to its `u`.
        (
            r#"{"role": "rpc", "u": "r8", "cmds": [{"name": "a", "fun": "echo", "args": [1e400]}]}"#,
            ErrorKind::PARSE_ERROR,
            "r8",
        ),
        // Broken JSON, but its `u` came before the break.
        (r#"{"u": "r9", "role": "rpc", "cmds": [}"#, ErrorKind::PARSE_ERROR, "r9"),
    ];
    for (frame, kind, u) in cases {
        ws.send(Message::Text(frame.into())).await.unwrap();
        let (reply, _) = next_json(&mut ws).await;
        assert_eq!(reply["role"], "rpc-response");
        assert_eq!(reply["u"], u, "{frame}");
        assert_eq!(reply["error"]["kind"], kind.as_str(), "{frame}: {reply}");
        assert!(!reply["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    ws.send(Message::Text(
        r#"{"role":"rpc","u":"ok","cmds":[{"name":"a","fun":"echo","args":["still here"]}]}"#.into(),
    ))
    .await
    .unwrap();
    let (reply, _) = next_json(&mut ws).await;
    assert_eq!(reply["r"]["a"], "still here");
}

/// Peers and clients share the port, told apart by the first frame: a
/// request is a client's even if it carries a peer's `"t": "hello"`.
#[tokio::test]
async fn a_request_with_a_hello_tag_is_still_a_clients() {
    let node = node();
    let mut ws = raw_socket(&node).await;
    let req = r#"{"t": "hello", "role": "rpc", "u": "h1", "cmds": [{"name": "a", "fun": "upper", "args": ["hi"]}]}"#;
    ws.send(Message::Text(req.into())).await.unwrap();
    let (reply, _) = next_json(&mut ws).await;
    assert_eq!((&reply["u"], &reply["r"]["a"]), (&json!("h1"), &json!("HI")), "{reply}");
}

#[tokio::test]
async fn binary_requests_are_answered_in_binary_frames() {
    let node = node();
    let mut ws = raw_socket(&node).await;
    let req = r#"{"role":"rpc","u":"b1","cmds":[{"name":"a","fun":"upper","args":["mpreg"]}]}"#;
    ws.send(Message::Binary(req.as_bytes().to_vec().into())).await.unwrap();
    let (reply, binary) = next_json(&mut ws).await;
    assert!(binary, "a binary request gets a binary reply");
    assert_eq!(reply["r"]["a"], "MPREG");
}

/// A request as MPREG's current Python client sends it: every field of its
/// `RPCRequest` and `RPCCommand`, defaults included, plus the trace headers
/// it adds, in a binary frame. The reply carries every field its
/// `RPCResponse`, `RPCExecutionSummary` and `RPCIntermediateResult` require,
/// with their types, and an error the `code` and `message` of its `RPCError`.
#[tokio::test]
async fn a_request_shaped_as_mpregs_client_sends_it_gets_the_reply_it_parses() {
    let node = node();
    let mut ws = raw_socket(&node).await;
    let command = |name: &str, fun: &str, arg: &str| {
        json!({"name": name, "fun": fun, "args": [arg], "kwargs": {}, "locs": [], "function_id": null,
            "version_constraint": null, "target_cluster": null, "routing_topic": null})
    };
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let req = json!({"role": "rpc", "cmds": [command("a", "upper", "mpreg"), command("b", "echo", "a")],
        "u": "01JDQ3S4ZK6W0G8C2Y5N7B9D1F", "return_intermediate_results": true,
        "intermediate_result_callback_topic": null, "include_execution_summary": true, "debug_mode": false,
        "headers": {"traceparent": trace}, "traceparent": trace});
    ws.send(Message::Binary(req.to_string().into_bytes().into())).await.unwrap();
    let (reply, binary) = next_json(&mut ws).await;
    assert!(binary, "{reply}");
    assert_eq!((&reply["u"], &reply["r"]["b"]), (&req["u"], &json!("MPREG")), "{reply}");
    let summary = &reply["execution_summary"];
    for field in ["request_id", "total_execution_time_ms", "total_levels", "level_execution_times"] {
        assert!(!summary[field].is_null(), "{field}: {summary}");
    }
    for field in ["bottleneck_level_index", "average_level_time_ms", "parallel_commands_executed", "cross_cluster_hops"]
    {
        assert!(summary[field].is_number(), "{field}: {summary}");
    }
    let levels = reply["intermediate_results"].as_array().unwrap();
    assert_eq!(levels.len(), 2, "{reply}");
    for level in levels {
        for field in ["level_index", "total_levels", "completed_levels", "timestamp", "execution_time_ms"] {
            assert!(level[field].is_number(), "{field}: {level}");
        }
        assert!(level["request_id"].is_string() && level["level_results"].is_object(), "{level}");
        assert!(level["accumulated_results"].is_object(), "{level}");
    }

    let failing = json!({"role": "rpc", "cmds": [command("a", "nope", "x")], "u": "u2",
        "return_intermediate_results": false, "include_execution_summary": false, "debug_mode": false});
    ws.send(Message::Binary(failing.to_string().into_bytes().into())).await.unwrap();
    let (reply, _) = next_json(&mut ws).await;
    assert_eq!(reply["u"], "u2", "{reply}");
    assert!(reply["error"]["code"].is_u64() && reply["error"]["message"].is_string(), "{reply}");
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_the_connection_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let node = TestNode::start(NodeSpec { plugins: vec!["echo"], ..NodeSpec::default() });
    let mut ws = raw_socket(&node).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame with a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Invalid, "{}", close.reason);
    assert_eq!(node.client().await.call("echo", vec![json!("ok")]).await.unwrap(), json!("ok"));
}

#[tokio::test]
async fn oversized_frames_close_the_connection_with_1009_and_the_node_serves_on() {
    let node = TestNode::start(NodeSpec { config: "[limits]\nmax_frame = \"64KiB\"\n".into(), ..NodeSpec::default() });
    let mut ws = raw_socket(&node).await;
    let big = "x".repeat(200 << 10);
    let req = format!(r#"{{"role":"rpc","u":"big","cmds":[{{"name":"a","fun":"echo","args":["{big}"]}}]}}"#);
    let _ = ws.send(Message::Text(req.into())).await;
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = close.expect("close frame with a reason");
    assert_eq!(frame.code, CloseCode::Size);
    assert!(frame.reason.contains("max_frame"), "{}", frame.reason);

    // HTTP bodies have the same bound.
    let body = format!(r#"{{"role":"rpc","u":"big","cmds":[{{"name":"a","fun":"echo","args":["{big}"]}}]}}"#);
    let reply = node.admin().post("/v1/call", body).await.unwrap();
    assert_eq!(reply.status, 413, "{}", reply.text);

    let client = node.client().await;
    assert_eq!(client.call("echo", vec![json!("ok")]).await.unwrap(), json!("ok"));
    // The Rust client (and so the CLI) passes on the node's reason, with
    // the kind an oversized HTTP body gets.
    let e = client.call("echo", vec![json!(big)]).await.unwrap_err();
    assert_eq!(e.kind, weft_proto::ErrorKind::INVALID_REQUEST);
    assert!(e.message.contains("code 1009") && e.message.contains("limits.max_frame"), "{e}");
    // Also for a frame far beyond what the sockets hold: the node reads and
    // drops the rest, so the client can finish writing it and still read
    // why it was refused (its close frame was lost to a reset before).
    use tokio::io::AsyncWriteExt;
    let mut ws = raw_socket(&node).await;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else { panic!("a plain socket") };
    let len: u64 = 48 << 20;
    // FIN and text, masked (with a key of zeros), a 64-bit length.
    let header: Vec<u8> = [0x81, 0xFF].into_iter().chain(len.to_be_bytes()).chain([0; 4]).collect();
    tcp.write_all(&header).await.unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for i in 0..48 {
        tcp.write_all(&chunk).await.unwrap_or_else(|e| panic!("the node stopped reading after {i} MiB: {e}"));
    }
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
    let text = node.admin().get("/metrics").await.unwrap().text;
    assert_eq!(metric(&text, "weft_frames_rejected_total{kind=\"too_large\"}"), Some(4.0), "{text}");
}

#[tokio::test]
async fn many_requests_in_flight_on_one_connection_are_matched_by_u() {
    let node = node();
    let client = std::sync::Arc::new(node.client().await);
    // A slow call first: the fast ones must not wait behind it.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.call("hostile/spin", vec![]).await })
    };
    let mut calls = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        calls.push(tokio::spawn(async move { (i, client.call("echo", vec![json!(format!("m{i}"))]).await) }));
    }
    for call in calls {
        let (i, result) = call.await.unwrap();
        assert_eq!(result.unwrap(), json!(format!("m{i}")));
    }
    assert!(!slow.is_finished(), "the echo calls finished while spin was still running");
    let err = slow.await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::GUEST_TRAP);
}

/// Large requests (over 1 MiB) take turns node-wide, each holding the turn
/// until it has run. A connection whose large request waits for the turn
/// still answers its other requests meanwhile, and one with no place free
/// for a large request waits for one rather than refusing it.
#[tokio::test]
async fn a_large_request_waiting_for_its_turn_holds_up_nothing_else_on_its_connection() {
    let node = TestNode::start(NodeSpec {
        files: vec![("hostile.toml".into(), b"[limits]\ndeadline = \"3s\"\n".to_vec())],
        config: "[limits]\nmax_in_flight_per_connection = 2\n".into(),
        ..NodeSpec::default()
    });
    let admin = node.admin();
    let in_flight = async |n: f64| {
        eventually("requests in flight", Duration::from_secs(10), async || {
            let text = admin.get("/metrics").await.ok()?.text;
            (metric(&text, "weft_in_flight_requests")? >= n).then_some(())
        })
        .await
    };
    let large = |u: &str, spin: bool| {
        let mut cmds = vec![json!({"name": "big", "fun": "echo", "args": ["x".repeat(1 << 20)]})];
        if spin {
            cmds.push(json!({"name": "slow", "fun": "spin"}));
        }
        Message::Text(json!({"role": "rpc", "u": u, "cmds": cmds}).to_string().into())
    };
    // Another client's large request holds the turn for 3 s (its spin).
    let mut holder = raw_socket(&node).await;
    holder.send(large("holder", true)).await.unwrap();
    in_flight(1.0).await;
    let held = tokio::spawn(async move { next_json(&mut holder).await.0 });

    let mut ws = raw_socket(&node).await;
    let spin = |u: &str, ms: u64| {
        Message::Text(
            json!({"role": "rpc", "u": u, "timeout_ms": ms, "cmds": [{"name": "a", "fun": "spin"}]}).to_string().into(),
        )
    };
    ws.send(spin("short", 300)).await.unwrap();
    ws.send(large("waits", false)).await.unwrap();
    // No place is free now: this one waits for "short" to end.
    ws.send(large("parked", false)).await.unwrap();
    let (first, _) = next_json(&mut ws).await;
    assert_eq!(first["u"], "short", "{first}");
    assert_eq!(first["error"]["kind"], "DEADLINE_EXCEEDED", "{first}");
    assert!(!held.is_finished(), "answered while the other large request still held the turn");
    // The wait for the turn counts against a request's deadline: it is
    // answered when that passes, not when the turn comes.
    let mut hurried = raw_socket(&node).await;
    let request = json!({"role": "rpc", "u": "hurried", "timeout_ms": 500,
        "cmds": [{"name": "big", "fun": "echo", "args": ["x".repeat(1 << 20)]}]});
    hurried.send(Message::Text(request.to_string().into())).await.unwrap();
    let (reply, _) = next_json(&mut hurried).await;
    assert_eq!((reply["u"].as_str(), reply["error"]["kind"].as_str()), (Some("hurried"), Some("DEADLINE_EXCEEDED")));
    assert!(reply["error"]["message"].as_str().unwrap_or_default().contains("waited for its turn"), "{reply}");
    assert!(!held.is_finished(), "answered only once the turn came");
    let held = held.await.unwrap();
    assert_eq!((held["u"].as_str(), held["error"]["kind"].as_str()), (Some("holder"), Some("GUEST_TRAP")), "{held}");
    let mut rest = Vec::new();
    for _ in 0..2 {
        let (reply, _) = next_json(&mut ws).await;
        assert_eq!(reply["r"]["big"].as_str().map(str::len), Some(1 << 20), "{}", reply["error"]);
        rest.push(reply["u"].as_str().unwrap_or_default().to_owned());
    }
    rest.sort();
    assert_eq!(rest, ["parked", "waits"]);

    // Two large requests back to back on an idle connection: the second
    // waits for the first's turn, which the first does not wait for.
    let mut ws = raw_socket(&node).await;
    ws.send(large("one", false)).await.unwrap();
    ws.send(large("two", false)).await.unwrap();
    for _ in 0..2 {
        let (reply, _) = next_json(&mut ws).await;
        assert_eq!(reply["r"]["big"].as_str().map(str::len), Some(1 << 20), "{}", reply["error"]);
    }
}

/// Requests waiting for a sandbox slot hold their arguments: all of them
/// together are held to limits.max_request_memory, over both ports, and a
/// request that finds no room is refused at once (retry), not parked.
#[tokio::test]
async fn requests_held_on_a_node_are_bounded_by_its_request_memory() {
    let node = TestNode::start(NodeSpec {
        files: vec![("hostile.toml".into(), b"[limits]\ndeadline = \"3s\"\n".to_vec())],
        config: "[limits]\nmax_concurrency = 1\nmax_request_memory = \"8MiB\"\n".into(),
        ..NodeSpec::default()
    });
    let mut ws = raw_socket(&node).await;
    let spin = json!({"role": "rpc", "u": "spin", "cmds": [{"name": "a", "fun": "spin"}]});
    ws.send(Message::Text(spin.to_string().into())).await.unwrap();
    // Each holds about 1.6 MB once parsed, and may take 4 MiB (half the
    // limit) while it is parsed: three fit, the next ones do not.
    let echo = |u: String| json!({"role": "rpc", "u": u, "cmds": [{"name": "e", "fun": "echo", "args": ["x".repeat(800_000)]}]});
    for i in 0..5 {
        ws.send(Message::Text(echo(format!("e{i}")).to_string().into())).await.unwrap();
    }
    let mut refused = BTreeSet::new();
    for _ in 0..2 {
        let (reply, _) = next_json(&mut ws).await;
        assert_eq!(reply["error"]["kind"], "RESOURCE_EXHAUSTED", "{}", reply["error"]);
        assert!(reply["error"]["message"].as_str().unwrap().contains("limits.max_request_memory"), "{reply}");
        refused.insert(reply["u"].as_str().unwrap().to_owned());
    }
    assert_eq!(refused, BTreeSet::from(["e3".to_owned(), "e4".to_owned()]));
    // The HTTP port draws on the same memory.
    let body = echo("h".into()).to_string();
    let reply = node.admin().post("/v1/call", body.clone()).await.unwrap();
    assert_eq!((reply.status, &reply.body["error"]["kind"]), (429, &json!("RESOURCE_EXHAUSTED")), "{}", reply.text);
    // The spin runs out its 3 s; the held requests run and give their memory back.
    let mut answered = BTreeSet::new();
    for _ in 0..4 {
        let (reply, _) = next_json(&mut ws).await;
        answered.insert(reply["u"].as_str().unwrap().to_owned());
        if reply["u"] != "spin" {
            assert_eq!(reply["r"]["e"].as_str().map(str::len), Some(800_000), "{}", reply["error"]);
        }
    }
    assert_eq!(answered, BTreeSet::from(["spin", "e0", "e1", "e2"].map(str::to_owned)));
    let reply = node.admin().post("/v1/call", body).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// A WebSocket frame is read whole before the node sees the request in it:
/// the bytes of requests still arriving are charged to the same memory, on
/// both ports, so that stalled partial frames cannot hold it unbounded.
#[tokio::test]
async fn requests_still_arriving_are_held_to_the_request_memory() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start(NodeSpec {
        plugins: vec!["echo", "hostile"],
        files: vec![("hostile.toml".into(), b"[limits]\ndeadline = \"1s\"\n".to_vec())],
        config: "[limits]\nmax_request_memory = \"4MiB\"\n".into(),
    });
    let admin = node.admin();
    let held = async || metric(&admin.get("/metrics").await.unwrap().text, "weft_request_memory_bytes").unwrap();
    // A masked text frame of 3 MB (its key all zeros), sent in part.
    const XS: usize = 2_999_900;
    let first = {
        let mut request = br#"{"role":"rpc","u":"first","cmds":[{"name":"e","fun":"echo","args":[""#.to_vec();
        request.resize(request.len() + XS, b'x');
        request.extend_from_slice(br#""]}]}"#);
        let len = request.len() as u64;
        let mut frame: Vec<u8> = [0x81, 0xFF].into_iter().chain(len.to_be_bytes()).chain([0; 4]).collect();
        frame.extend(request);
        frame
    };
    let mut ws = raw_socket(&node).await;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else { panic!("a plain socket") };
    tcp.write_all(&first[..2_500_000]).await.unwrap();
    eventually("the first frame's bytes to be charged", Duration::from_secs(10), async || {
        (held().await >= 2_400_000.0).then_some(())
    })
    .await;

    // The second finds no room before it is whole: its connection is
    // closed with 1013 (try again later), and says why, once the call
    // already running on it has answered.
    let client = Arc::new(node.client().await);
    let running = tokio::spawn({
        let client = client.clone();
        async move { client.call("spin", vec![]).await }
    });
    eventually("the spin to run", Duration::from_secs(10), async || {
        (metric(&admin.get("/metrics").await.unwrap().text, "weft_in_flight_requests")? >= 1.0).then_some(())
    })
    .await;
    let e = client.call("echo", vec![json!("x".repeat(2_500_000))]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{e}");
    assert!(e.message.contains("code 1013") && e.message.contains("limits.max_request_memory"), "{e}");
    let answered = running.await.unwrap().unwrap_err();
    assert!(answered.message.contains("deadline"), "the spin ran out its 1 s, not the connection: {answered}");
    // The same over HTTP: 429, once the body stops arriving.
    let body_len = 2_000_000;
    let mut post = format!("POST /v1/call HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n\r\n").into_bytes();
    post.resize(post.len() + body_len, b' ');
    let answer = raw_http(&node.admin_url, &String::from_utf8(post).unwrap()).await;
    assert!(answer.starts_with("HTTP/1.1 429") && answer.contains("RESOURCE_EXHAUSTED"), "{answer}");
    assert!(answer.contains("limits.max_request_memory") && answer.contains("still arriving"), "{answer}");

    // The refused ones gave their bytes back: the first arrives whole, runs
    // and is answered.
    eventually("the refused requests' bytes to be given back", Duration::from_secs(10), async || {
        (held().await < 2_600_000.0).then_some(())
    })
    .await;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else { panic!("a plain socket") };
    tcp.write_all(&first[2_500_000..]).await.unwrap();
    let (reply, _) = next_json(&mut ws).await;
    assert_eq!(reply["u"], "first");
    assert_eq!(reply["r"]["e"].as_str().map(str::len), Some(XS), "{}", reply["error"]);
    let text = admin.get("/metrics").await.unwrap().text;
    assert_eq!(metric(&text, "weft_frames_rejected_total{kind=\"memory\"}"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "weft_request_memory_bytes"), Some(0.0), "{text}");
}

#[tokio::test]
async fn in_flight_limit_per_connection_is_enforced() {
    let node = TestNode::start(NodeSpec {
        config: "[limits]\nmax_in_flight_per_connection = 2\n".into(),
        ..NodeSpec::default()
    });
    let mut ws = raw_socket(&node).await;
    for u in ["s1", "s2", "s3"] {
        let req = format!(r#"{{"role":"rpc","u":"{u}","cmds":[{{"name":"a","fun":"spin"}}]}}"#);
        ws.send(Message::Text(req.into())).await.unwrap();
    }
    let (first, _) = next_json(&mut ws).await;
    assert_eq!(first["u"], "s3");
    assert_eq!(first["error"]["kind"], "RESOURCE_EXHAUSTED");
    assert!(first["error"]["message"].as_str().unwrap().contains("max_in_flight_per_connection"));
    assert_eq!(first["error"]["details"]["limit"], 2, "{first}");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_call_costs_nothing_and_is_counted() {
    let node = node();
    {
        let mut ws = raw_socket(&node).await;
        ws.send(Message::Text(r#"{"role":"rpc","u":"gone","cmds":[{"name":"a","fun":"spin"}]}"#.into())).await.unwrap();
        // Give the node the request, then vanish without a close handshake.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = node.admin();
    eventually("the abandoned request to be counted", Duration::from_secs(10), async || {
        let text = admin.get("/metrics").await.ok()?.text;
        (metric(&text, "weft_requests_abandoned_total")? >= 1.0).then_some(())
    })
    .await;
    let client = node.client().await;
    assert_eq!(client.call("echo", vec![json!("alive")]).await.unwrap(), json!("alive"));
    let text = admin.get("/metrics").await.unwrap().text;
    assert_eq!(metric(&text, "weft_in_flight_requests"), Some(0.0), "the cancelled request left the gauge:\n{text}");
    assert_eq!(metric(&text, "weft_requests_abandoned_total"), Some(1.0));
    assert_eq!(
        metric(&text, "weft_frames_rejected_total{kind=\"protocol\"}"),
        Some(0.0),
        "a vanished client is no protocol error"
    );
    // The guest that was cancelled counts as a failed call.
    let spin = "weft_calls_total{function=\"hostile/spin\",outcome=\"error\"}";
    assert_eq!(metric(&text, spin), Some(1.0), "{text}");

    // The same over HTTP: a client that leaves before the answer.
    {
        use tokio::io::AsyncWriteExt;
        let addr = node.admin_url.trim_start_matches("http://").to_owned();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let body = r#"{"role":"rpc","u":"gone","cmds":[{"name":"a","fun":"spin"}]}"#;
        let head = format!("POST /v1/call HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n", body.len());
        tcp.write_all(format!("{head}{body}").as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("the abandoned HTTP request to be counted", Duration::from_secs(10), async || {
        let text = admin.get("/metrics").await.ok()?.text;
        (metric(&text, "weft_requests_abandoned_total")? >= 2.0 && metric(&text, spin)? >= 2.0).then_some(())
    })
    .await;
}

/// An HTTP client that does not read its (large) reply is cut off after
/// `limits.write_timeout`, as a WebSocket client is, rather than holding
/// the connection and the reply for as long as it likes.
#[tokio::test]
async fn an_http_reply_left_unread_is_given_up_after_the_write_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = "[limits]\nwrite_timeout = \"1s\"\nmax_frame = \"64MiB\"\nmax_result = \"64MiB\"\n".to_owned();
    let node = TestNode::start(NodeSpec { config, ..NodeSpec::default() });
    let addr = node.admin_url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let text = "x".repeat(24 << 20);
    let body = format!(r#"{{"role":"rpc","u":"big","cmds":[{{"name":"a","fun":"echo","args":["{text}"]}}]}}"#);
    let head = format!("POST /v1/call HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n", body.len());
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    // Unread, the reply fills the socket buffers and the node stops writing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the node kept the connection open past its write timeout");
    let head = String::from_utf8_lossy(&got[..got.len().min(200)]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(got.len() < text.len(), "the whole reply ({} bytes) was still delivered", got.len());
    assert_eq!(node.admin().get("/health").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_connection_that_never_upgrades_is_closed() {
    use tokio::io::AsyncReadExt;
    let node = node();
    let addr = node.ws.trim_start_matches("ws://").to_owned();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the node should close a silent socket, got {read:?}");
    assert!(started.elapsed() >= Duration::from_secs(5), "closed too early: {:?}", started.elapsed());
    let client = node.client().await;
    assert_eq!(client.call("echo", vec![json!("still serving")]).await.unwrap(), json!("still serving"));
}

/// Sends `head` (an HTTP/1.1 request, with or without its body) to a
/// node's port at `url` and returns the response as text, waiting at most
/// five seconds.
async fn raw_http(url: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.split_once("://").map_or(url, |(_, rest)| rest);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer)).await.expect("an answer").unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn admin_endpoints_name_their_method_and_refuse_a_declared_oversized_body_at_once() {
    let node = TestNode::start(NodeSpec { plugins: vec!["echo"], ..NodeSpec::default() });
    let admin = node.admin();
    for (path, allowed) in [("/health", "GET"), ("/v1/plugins/reload", "POST"), ("/v1/call", "POST")] {
        let wrong = if allowed == "GET" { admin.post(path, "").await } else { admin.get(path).await }.unwrap();
        assert_eq!(wrong.status, 405, "{path}: {}", wrong.text);
        assert_eq!(wrong.headers["allow"], allowed);
        assert!(wrong.body["error"]["message"].as_str().unwrap().contains(&format!("answers {allowed} only")));
    }
    assert_eq!(admin.get("/nowhere").await.unwrap().status, 404);
    assert_eq!(admin.get("/v1/routes/explain?cluster=").await.unwrap().status, 400);
    let odd = admin.get("/v1/routes/explain?cluster=%00%ff").await.unwrap();
    assert_eq!(odd.status, 400, "{}", odd.text);
    assert!(odd.body["error"]["message"].as_str().unwrap().contains("is not a cluster name"), "{}", odd.text);
    let head = raw_http(&node.admin_url, "HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Headers that announce a body over limits.max_frame get 413 before
    // the body is sent.
    let big = "POST /v1/call HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n";
    let answer = raw_http(&node.admin_url, big).await;
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("limits.max_frame"), "{answer}");
    // Headers far over 64 KiB get 431, before much more of them is buffered.
    let long = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n", "x".repeat(300_000));
    let answer = raw_http(&node.admin_url, &long).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn plain_http_on_the_websocket_port_is_told_where_to_go() {
    let node = TestNode::start(NodeSpec { plugins: vec!["echo"], ..NodeSpec::default() });
    let body = r#"{"role":"rpc","u":"1","cmds":[{"name":"a","fun":"echo","args":["hi"]}]}"#;
    let request = format!("POST /v1/call HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let answer = raw_http(&node.ws, &request).await;
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    assert!(answer.contains("WebSocket port") && answer.contains("admin port"), "{answer}");
    let answer = raw_http(&node.ws, "GET /websocket HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 426"), "a path is not an upgrade: {answer}");
    // WebSocket clients on the same port are served as before.
    assert_eq!(node.client().await.call("echo", vec![json!("hi")]).await.unwrap(), json!("hi"));
}

#[tokio::test]
async fn admin_api_reports_health_plugins_catalog_and_metrics() {
    let node = node();
    let admin = node.admin();
    let health = admin.get("/health").await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["node"], node.id);
    assert_eq!(health.body["cluster"], "local");
    assert_eq!(admin.get("/readyz?verbose").await.unwrap().body["reason"], "serving");

    let plugins = admin.get("/v1/plugins").await.unwrap().body;
    let names: Vec<&str> = plugins["plugins"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["echo", "hostile", "math", "text"]);
    let hostile = &plugins["plugins"][1];
    assert_eq!(hostile["limits"]["deadline_ms"], 1000);
    assert_eq!(hostile["limits"]["memory"], "32MiB");

    let catalog = admin.get("/v1/catalog").await.unwrap().body;
    let stats =
        catalog["functions"].as_array().unwrap().iter().find(|f| f["function_id"] == "math/stats").expect("math/stats");
    assert_eq!(stats["signature"], "func(xs: list<f64>) -> summary");
    assert_eq!(stats["node"], node.id);
    assert_eq!(stats["cluster"], "local");

    node.client().await.call("echo", vec![json!("m")]).await.unwrap();
    let text = admin.get("/metrics").await.unwrap().text;
    assert_eq!(metric(&text, "weft_calls_total{function=\"echo/echo\",outcome=\"ok\"}"), Some(1.0), "{text}");
    // Both outcomes' series exist from a function's first call, so an error
    // ratio has a denominator and a numerator before the first error.
    assert_eq!(metric(&text, "weft_calls_total{function=\"echo/echo\",outcome=\"error\"}"), Some(0.0), "{text}");
    node.client().await.call("echo", vec![json!("m")]).await.unwrap();
    let text = admin.get("/metrics").await.unwrap().text;
    assert_eq!(metric(&text, "weft_calls_total{function=\"echo/echo\",outcome=\"ok\"}"), Some(2.0), "{text}");
    assert!(text.contains("weft_call_duration_seconds_bucket{le="), "{text}");
    assert_eq!(metric(&text, "weft_plugins_loaded"), Some(4.0));
    // Closed label sets are exported at 0 before their first event.
    for series in [
        "weft_errors_total{kind=\"INTERNAL\"}",
        "weft_alerts_raised_total{kind=\"member-down\"}",
        "weft_links_refused_total{kind=\"cluster-full\"}",
        "weft_route_updates_rejected_total{kind=\"bad-signature\"}",
        "weft_forwards_total{outcome=\"lost\"}",
    ] {
        assert_eq!(metric(&text, series), Some(0.0), "{series}");
    }
    // On an idle node a spare replaces a call's instance after the answer.
    // Idle also means the node's other workers are parked, which a busy
    // test machine can deny a call now and then: then call again.
    eventually("a spare echo instance", Duration::from_secs(10), async || {
        let text = admin.get("/metrics").await.ok()?.text;
        if metric(&text, "weft_spare_instances_idle")? == 1.0 {
            return Some(());
        }
        node.client().await.call("echo", vec![json!("m")]).await.ok()?;
        None
    })
    .await;
    assert_eq!(admin.get("/v1/plugins").await.unwrap().body["plugins"][0]["spares_idle"], 1);

    let missing = admin.get("/v1/nothing").await.unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["kind"], "INVALID_REQUEST");
}

#[tokio::test]
async fn an_invalid_plugin_file_is_skipped_with_its_reason_and_the_rest_serve() {
    let node = TestNode::start(NodeSpec {
        files: vec![
            ("broken.wasm".into(), b"\0asm this is not a component".to_vec()),
            ("bad-manifest.wasm".into(), weft_bundle::get("echo").unwrap().to_vec()),
            ("bad-manifest.toml".into(), b"versoin = \"1\"\n".to_vec()),
        ],
        ..NodeSpec::default()
    });
    let plugins = node.admin().get("/v1/plugins").await.unwrap().body;
    let failed = plugins["failed"].as_array().unwrap();
    let reason =
        |file: &str| failed.iter().find(|f| f["file"] == file).map(|f| f["reason"].as_str().unwrap_or("").to_owned());
    assert!(reason("broken.wasm").expect("broken.wasm listed").contains("not a valid WebAssembly component"));
    assert!(reason("bad-manifest.wasm").expect("bad manifest listed").contains("versoin"));
    assert!(node.stderr().contains("broken.wasm"), "the failure is logged");
    let client = node.client().await;
    assert_eq!(client.call("echo", vec![json!("fine")]).await.unwrap(), json!("fine"));
    let failing = async || {
        let text = node.admin().get("/metrics").await.unwrap().text;
        (metric(&text, "weft_plugins_failed"), metric(&text, "weft_plugin_load_failures_total"))
    };
    assert_eq!(failing().await, (Some(2.0), Some(2.0)));
    // Fixed: the gauge (and its alert) clears; the counter keeps the history.
    for file in ["broken.wasm", "bad-manifest.toml"] {
        std::fs::remove_file(node.plugins_dir().join(file)).unwrap();
    }
    assert_eq!(node.admin().post("/v1/plugins/reload", "").await.unwrap().status, 200);
    assert_eq!(failing().await, (Some(0.0), Some(2.0)));
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_before_exiting() {
    let mut node = TestNode::start(NodeSpec {
        files: vec![("hostile.toml".into(), b"[limits]\ndeadline = \"1500ms\"\n".to_vec())],
        ..NodeSpec::default()
    });
    let client = node.client().await;
    let req = Request::new(
        "slow",
        vec![weft_proto::Command::new("h", "hog", vec![json!(1)]), weft_proto::Command::new("s", "spin", vec![])],
    );
    let over_http = serde_json::to_string(&req).unwrap();
    let pending = tokio::spawn(async move { client.request(req).await });
    let admin = node.admin();
    let pending_http = tokio::spawn(async move { admin.post("/v1/call", over_http).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.signal_term();
    // While draining, the admin API still answers and says so.
    let admin = node.admin();
    let health = eventually("health to report draining", Duration::from_secs(5), async || {
        let reply = admin.get("/health").await.ok()?;
        (reply.status == 503).then_some(reply.body)
    })
    .await;
    assert_eq!(health["status"], "draining");
    assert_eq!(
        admin.get("/readyz?verbose").await.unwrap().body["reason"].as_str().map(|r| r.starts_with("draining")),
        Some(true)
    );
    // New work is refused, so that it goes to another node.
    let late = r#"{"role": "rpc", "u": "late", "cmds": [{"name": "a", "fun": "echo", "args": ["late"]}]}"#;
    let refused = admin.post("/v1/call", late).await.unwrap();
    assert_eq!(
        (refused.status, refused.body["error"]["kind"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{}",
        refused.text
    );
    let code = tokio::task::spawn_blocking(move || {
        let code = node.wait();
        (code, node)
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "drained within the grace period");
    // The in-flight request was answered (spin ends at its deadline), not cut off.
    let response = pending.await.unwrap().expect("an answer before the node exited");
    assert_eq!(response.error.expect("spin traps").kind, ErrorKind::GUEST_TRAP);
    // So was the one over HTTP.
    let reply = pending_http.await.unwrap().expect("an HTTP answer before the node exited");
    assert_eq!(reply.body["error"]["kind"], "GUEST_TRAP", "{}", reply.text);
}

/// Nothing goes unanswered when a node stops: a request that arrives while
/// it drains is turned away, and one still running when the grace period
/// ends is answered UNAVAILABLE, over WebSocket and HTTP.
#[tokio::test]
async fn a_stopping_node_answers_every_request_it_took() {
    let mut node = TestNode::start(NodeSpec {
        files: vec![("hostile.toml".into(), b"[limits]\ndeadline = \"20s\"\n".to_vec())],
        config: "shutdown_grace = \"1s\"\n".into(),
        ..NodeSpec::default()
    });
    let mut ws = raw_socket(&node).await;
    let request = |u: &str, fun: &str| {
        Message::Text(
            json!({"role": "rpc", "u": u, "cmds": [{"name": "a", "fun": fun, "args": []}]}).to_string().into(),
        )
    };
    ws.send(request("long", "spin")).await.unwrap();
    let admin = node.admin();
    let over_http = tokio::spawn(async move {
        admin.post("/v1/call", r#"{"role": "rpc", "u": "h", "cmds": [{"name": "a", "fun": "spin"}]}"#).await
    });
    let admin = node.admin();
    eventually("both requests in flight", Duration::from_secs(10), async || {
        let text = admin.get("/metrics").await.ok()?.text;
        (metric(&text, "weft_in_flight_requests")? >= 2.0).then_some(())
    })
    .await;
    node.signal_term();
    eventually("the node draining", Duration::from_secs(5), async || {
        (admin.get("/health").await.ok()?.status == 503).then_some(())
    })
    .await;
    ws.send(request("late", "echo")).await.unwrap();
    let (late, _) = next_json(&mut ws).await;
    assert_eq!((late["u"].as_str(), late["error"]["kind"].as_str()), (Some("late"), Some("UNAVAILABLE")), "{late}");
    assert!(late["error"]["message"].as_str().unwrap_or_default().contains("takes no new requests"), "{late}");
    let (long, _) = next_json(&mut ws).await;
    assert_eq!((long["u"].as_str(), long["error"]["kind"].as_str()), (Some("long"), Some("UNAVAILABLE")), "{long}");
    assert!(long["error"]["message"].as_str().unwrap_or_default().contains("grace period ended"), "{long}");
    let http = over_http.await.unwrap().expect("an HTTP answer");
    assert_eq!((http.status, http.body["error"]["kind"].as_str()), (503, Some("UNAVAILABLE")), "{}", http.text);
    let code = tokio::task::spawn_blocking(move || node.wait()).await.unwrap();
    assert_eq!(code, Some(2), "not drained within the grace period");
}

#[tokio::test]
async fn a_node_that_dies_mid_call_gives_unavailable_not_a_hang() {
    let mut node = node();
    let client = std::sync::Arc::new(node.client().await);
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.call("spin", vec![]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.kill();
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("no hang").unwrap();
    assert_eq!(outcome.unwrap_err().kind, ErrorKind::UNAVAILABLE);
    // Later calls on the dead connection fail at once.
    let later =
        tokio::time::timeout(Duration::from_secs(10), client.call("echo", vec![json!("x")])).await.expect("no hang");
    assert_eq!(later.unwrap_err().kind, ErrorKind::UNAVAILABLE);
}

#[tokio::test]
async fn a_replaced_plugins_folder_is_watched_again() {
    let node = TestNode::start(NodeSpec { plugins: vec!["echo"], files: vec![], config: String::new() });
    let client = node.client().await;
    assert_eq!(client.call("echo", vec![json!("hi")]).await.unwrap(), json!("hi"));
    // A deploy swaps the whole folder: the watch on the old one is gone.
    std::fs::remove_dir_all(node.plugins_dir()).unwrap();
    std::fs::create_dir(node.plugins_dir()).unwrap();
    std::fs::write(node.plugins_dir().join("text.wasm"), weft_bundle::get("text").unwrap()).unwrap();
    let settle = Duration::from_secs(10);
    eventually("upper from the new folder", settle, async || client.call("upper", vec![json!("a")]).await.ok()).await;
    // Later changes inside the new folder are seen too.
    std::fs::write(node.plugins_dir().join("math.wasm"), weft_bundle::get("math").unwrap()).unwrap();
    let sum = eventually("add", settle, async || client.call("add", vec![json!(1), json!(2)]).await.ok()).await;
    assert_eq!(sum, json!(3));
    let err = client.call("echo", vec![json!("hi")]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "echo left with the old folder");
}

/// A file in the plugins folder that is written to all the time does not
/// hold back the other changes: the watcher waits for quiet only so long.
#[tokio::test]
async fn a_file_written_to_all_the_time_does_not_hold_back_a_new_plugin() {
    let node = TestNode::start(NodeSpec { plugins: vec!["echo"], files: vec![], config: String::new() });
    let client = node.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (notes, stop) = (node.plugins_dir().join("notes.toml"), stop.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::fs::write(&notes, format!("# {i}\n")).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::fs::write(node.plugins_dir().join("math.wasm"), weft_bundle::get("math").unwrap()).unwrap();
    let settle = Duration::from_secs(10);
    let sum = eventually("add", settle, async || client.call("add", vec![json!(1), json!(2)]).await.ok()).await;
    assert!(!writer.is_finished(), "the writes went on all along");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(sum, json!(3));
}

/// A node whose plugins folder is given relative to where it runs.
fn node_with_relative_plugins(setup: impl FnOnce(&std::path::Path)) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let args =
        ["node", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--data-dir", "data", "--plugins", "plugins"];
    TestNode::spawn(dir, &args)
}

#[tokio::test]
async fn a_plugins_folder_swapped_by_renaming_is_watched_again() {
    let node = node_with_relative_plugins(|dir| weft_bundle::write_to(&dir.join("plugins"), &["echo"]).unwrap());
    let client = node.client().await;
    assert_eq!(client.call("echo", vec![json!("hi")]).await.unwrap(), json!("hi"));
    // Build the new folder beside the old one and swap them: the watch
    // follows the old directory to its new name.
    let (plugins, next, old) = (node.plugins_dir(), node.dir.path().join("next"), node.dir.path().join("old"));
    weft_bundle::write_to(&next, &["text"]).unwrap();
    std::fs::rename(&plugins, &old).unwrap();
    std::fs::rename(&next, &plugins).unwrap();
    let settle = Duration::from_secs(10);
    eventually("upper from the new folder", settle, async || client.call("upper", vec![json!("a")]).await.ok()).await;
    let err = client.call("echo", vec![json!("hi")]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND, "echo left with the old folder");
    std::fs::write(plugins.join("math.wasm"), weft_bundle::get("math").unwrap()).unwrap();
    let sum = eventually("add", settle, async || client.call("add", vec![json!(1), json!(2)]).await.ok()).await;
    assert_eq!(sum, json!(3));
    assert!(node.stderr().contains("the plugins folder was replaced"), "{}", node.stderr());
}

#[tokio::test]
async fn a_plugins_folder_created_after_the_node_started_is_loaded_and_watched() {
    let node = node_with_relative_plugins(|_| {});
    assert!(node.stderr().contains("the plugins folder is not there"), "{}", node.stderr());
    let client = node.client().await;
    let err = client.call("echo", vec![json!("hi")]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FUNCTION_NOT_FOUND);
    weft_bundle::write_to(&node.plugins_dir(), &["echo"]).unwrap();
    let settle = Duration::from_secs(10);
    let echoed = eventually("echo", settle, async || client.call("echo", vec![json!("hi")]).await.ok()).await;
    assert_eq!(echoed, json!("hi"));
    // Watched from then on.
    std::fs::write(node.plugins_dir().join("math.wasm"), weft_bundle::get("math").unwrap()).unwrap();
    let sum = eventually("add", settle, async || client.call("add", vec![json!(1), json!(2)]).await.ok()).await;
    assert_eq!(sum, json!(3));
}

/// `limits.write_timeout` runs while a client reads nothing: one that
/// reads a large reply slowly, for longer than the timeout, gets all of it.
#[tokio::test]
async fn a_client_reading_a_large_reply_slowly_keeps_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = "[limits]\nwrite_timeout = \"1s\"\nmax_frame = \"64MiB\"\n".to_owned();
    let node = TestNode::start(NodeSpec { config, ..NodeSpec::default() });
    let addr = node.ws.trim_start_matches("ws://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    // One text frame, masked (as a client's must be) with the zero key.
    let request = br#"{"role":"rpc","u":"s","cmds":[{"name":"a","fun":"big-output","args":[12]}]}"#;
    let mut frame = vec![0x81, 0x80 | u8::try_from(request.len()).unwrap(), 0, 0, 0, 0];
    frame.extend_from_slice(request);
    tcp.write_all(&frame).await.unwrap();
    // About 3 MB/s: the 12 MiB reply takes some 4 s, four write timeouts.
    let (mut got, mut chunk) = (0, vec![0u8; 64 << 10]);
    let started = std::time::Instant::now();
    while got < 12 << 20 {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the node closed the connection after {got} bytes, {:?} in", started.elapsed());
        got += n;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(2), "the reply was read too fast to test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stops_being_read_and_is_let_go_without_losing_a_reader_s_replies() {
    let node = TestNode::start(NodeSpec {
        config: "[limits]\nmax_frame = \"4MiB\"\nwrite_timeout = \"2s\"\n".into(),
        ..NodeSpec::default()
    });
    let request = |i: usize| {
        json!({"role": "rpc", "u": format!("r{i}"), "cmds": [{"name": "a", "fun": "big-output", "args": [1]}]})
            .to_string()
    };
    let read_so_far = async || {
        let text = node.admin().get("/metrics").await.unwrap().text;
        metric(&text, "weft_requests_total{transport=\"ws\"}").unwrap_or(0.0)
    };
    // A client asks for 1 MiB replies and reads none: once the socket is
    // full and 4 MiB of replies wait, the node reads no more of its requests.
    let (mut stalled, _) = tokio_tungstenite::connect_async(&node.ws).await.unwrap();
    for i in 0..60 {
        stalled.send(Message::Text(request(i).into())).await.unwrap();
        if i == 19 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let read = read_so_far().await;
    assert!(read < 60.0, "the node read all {read} requests of a client that reads nothing");
    // After write_timeout it lets the client go, and its replies with it.
    let connections = async || metric(&node.admin().get("/metrics").await.unwrap().text, "weft_connections ");
    assert_eq!(connections().await, Some(1.0));
    eventually("the stalled client to be let go", Duration::from_secs(20), async || {
        (connections().await == Some(0.0)).then_some(())
    })
    .await;
    // A client that reads, however slowly, gets every reply.
    let before = read_so_far().await;
    let (mut slow, _) = tokio_tungstenite::connect_async(&node.ws).await.unwrap();
    for i in 0..60 {
        slow.send(Message::Text(request(i).into())).await.unwrap();
    }
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < 60 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Message::Text(text) = slow.next().await.expect("open").unwrap() else { continue };
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply["r"]["a"].as_str().map(str::len), Some(1 << 20), "{}", &text[..200]);
        answered.insert(reply["u"].as_str().unwrap().to_owned());
    }
    assert_eq!(read_so_far().await - before, 60.0);
}

/// A client that pings and never reads its pongs is read no faster than it
/// takes them, and is let go after write_timeout: the pongs once piled up
/// in the node without bound (1.4 GB in 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_without_reading_its_pongs_is_held_back_and_let_go() {
    let node = TestNode::start(NodeSpec { config: "[limits]\nwrite_timeout = \"2s\"\n".into(), ..NodeSpec::default() });
    let before = peak_mib(node.pid());
    let (mut pinger, _) = tokio_tungstenite::connect_async(&node.ws).await.unwrap();
    let ping = vec![7u8; 125];
    let (mut sent, started) = (0usize, std::time::Instant::now());
    // Until the node takes no more (a send waits), or for 3 s.
    while started.elapsed() < Duration::from_secs(3) {
        let send = pinger.send(Message::Ping(ping.clone().into()));
        match tokio::time::timeout(Duration::from_millis(500), send).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    let sent_mib = (sent * (ping.len() + 6)) >> 20;
    assert!(sent_mib < 64, "the node took {sent_mib} MiB of pings from a client that reads no pongs");
    let connections = async || metric(&node.admin().get("/metrics").await.unwrap().text, "weft_connections ");
    eventually("the pinging client to be let go", Duration::from_secs(20), async || {
        (connections().await == Some(0.0)).then_some(())
    })
    .await;
    let grew = peak_mib(node.pid()).saturating_sub(before);
    assert!(grew < 64, "the node's peak memory grew by {grew} MiB");
}

/// A node run without a config file reloads its plugins on SIGHUP (log
/// rotation sends one too) and says there is no policy to reload, without
/// logging an error.
/// A node set up by settings alone (a container's environment) reloads
/// them, so that the files they name (TLS, say) are read again.
#[tokio::test]
async fn a_node_configured_by_settings_alone_reloads_them() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["node", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--set", "federation.mode=permissive"];
    let node = TestNode::spawn_with_env(dir, &args, &[("WEFT_FEDERATION__BLOCKED_CLUSTERS", "[\"evil\"]")]);
    let reply = node.admin().post("/v1/federation/reload", "").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["reloaded"], "(flags and WEFT_* variables)", "{}", reply.text);
    let policy = &node.admin().get("/v1/federation").await.unwrap().body["policy"];
    assert_eq!((&policy["mode"], &policy["blocked_clusters"]), (&json!("permissive"), &json!(["evil"])), "{policy}");
}

#[tokio::test]
async fn a_sighup_to_a_node_without_a_config_file_logs_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::spawn(dir, &["node", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let _ = std::process::Command::new("kill").args(["-HUP", &node.pid().to_string()]).status();
    eventually("the reload to be logged", Duration::from_secs(10), async || {
        node.stderr().contains("no config file, so no federation policy to reload").then_some(())
    })
    .await;
    assert!(!node.stderr().contains("ERROR"), "{}", node.stderr());
}

/// Opens silent connections to the admin port until a request finds no
/// room, one by one: a request just answered may hold its place a moment
/// after the reply (on a busy machine). Returns them, and the refusal.
async fn fill_admin_port(node: &TestNode) -> (Vec<tokio::net::TcpStream>, weft_client::AdminReply) {
    let admin_addr = node.admin_url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    let full = eventually("a full admin port", Duration::from_secs(10), async || {
        idle.push(tokio::net::TcpStream::connect(&admin_addr).await.unwrap());
        let reply = node.admin().get("/health").await.ok()?;
        (reply.status == 503).then_some(reply)
    })
    .await;
    (idle, full)
}

/// Idle connections to the admin port hold at most half the places, so
/// they cannot lock clients and peers out of the listen port.
#[tokio::test]
async fn idle_admin_connections_leave_the_listen_port_room() {
    let node = TestNode::start(NodeSpec { config: "[limits]\nmax_connections = 16\n".into(), ..NodeSpec::default() });
    let (idle, full) = fill_admin_port(&node).await;
    assert!(idle.len() < 16, "the admin port was full after {} silent connections", idle.len());
    let message = full.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("admin port has its limit of 8 connections open"), "{}", full.text);
    let client = node.client().await;
    assert_eq!(client.call("echo", vec![json!("x")]).await.unwrap(), json!("x"));
}

#[tokio::test]
async fn connections_over_the_limit_are_answered_503_and_idle_admin_connections_time_out() {
    let node = TestNode::start(NodeSpec { config: "[limits]\nmax_connections = 16\n".into(), ..NodeSpec::default() });
    // Eight upgraded connections that never send a request fill the listen
    // port: the other eight places are the admin port's alone.
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(tokio_tungstenite::connect_async(&node.ws).await.expect("within the limit").0);
    }
    let refused = weft_client::Client::connect(&node.ws).await.err().expect("the 9th is refused");
    assert_eq!(refused.kind, ErrorKind::RESOURCE_EXHAUSTED, "{refused}");
    let said =
        "listen port has its limit of 8 connections open (limits.max_connections, less the 8 kept for the admin port)";
    assert!(refused.message.contains(said), "{refused}");
    assert_eq!(refused.details["limit"], 8);
    assert_eq!(node.admin().get("/health").await.unwrap().status, 200, "health checks still get in");
    // Silent connections fill the admin port's eight places too.
    let (idle, full) = fill_admin_port(&node).await;
    assert!((8..16).contains(&idle.len()), "the admin port was full after {} silent connections", idle.len());
    assert_eq!(full.body["error"]["kind"], "RESOURCE_EXHAUSTED", "{}", full.text);
    // The admin port closes a connection that sends no headers within 10 s.
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(3), idle[0].peek(&mut buf)).await;
    assert!(early.is_err(), "the connection had a place and was kept for a while");
    let read = tokio::time::timeout(Duration::from_secs(20), idle[0].peek(&mut buf)).await.expect("closed by the node");
    assert_eq!(read.unwrap_or(0), 0, "an idle admin connection is closed");
    drop(idle);
    let metrics = eventually("room on the admin port", Duration::from_secs(5), async || {
        node.admin().get("/metrics").await.ok().filter(|m| m.status == 200).map(|m| m.text)
    })
    .await;
    assert!(metric(&metrics, "weft_connections_refused_total").unwrap() >= 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "weft_connections "), Some(8.0), "upgraded connections count before their first frame");
}

/// The compile cache keeps what the loaded plugins use and, beyond
/// `limits.compile_cache`, loses what they no longer do.
#[tokio::test]
async fn the_compile_cache_keeps_to_its_limit_once_a_plugin_is_gone() {
    let node = TestNode::start(NodeSpec {
        plugins: vec!["echo", "math"],
        files: vec![],
        config: "watch_plugins = false\n[limits]\ncompile_cache = \"1KiB\"\n".into(),
    });
    let cache = node.dir.path().join("data/cache");
    let cached = || std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(cached(), 2, "both plugins' compiled forms stay, over the limit");
    assert!(node.stderr().contains("alone take more than limits.compile_cache (1KiB)"), "{}", node.stderr());
    std::fs::remove_file(node.plugins_dir().join("math.wasm")).unwrap();
    let reply = node.admin().post("/v1/plugins/reload", "").await.unwrap();
    assert_eq!(reply.body["unloaded"], json!(["math@0.1.0"]), "{}", reply.text);
    assert_eq!(cached(), 1, "math's compiled form is gone");
    assert!(node.stderr().contains("compile cache pruned to limits.compile_cache (1KiB)"), "{}", node.stderr());
    assert_eq!(node.client().await.call("echo", vec![json!("still")]).await.unwrap(), "still");
}

#[tokio::test]
async fn a_manifest_without_its_plugin_is_reported() {
    let mut spec = NodeSpec::default();
    spec.files.push(("hello-world.toml".into(), b"warm = 1\n".to_vec()));
    let node = TestNode::start(spec);
    eventually("the warning", Duration::from_secs(5), async || {
        node.stderr().contains("a manifest without hello-world.wasm beside it is not used").then_some(())
    })
    .await;
}

/// A node's catalog keeps to `cluster.max_catalog_entries_per_node`: the
/// plugins with the fewest functions first, a plugin that does not fit left
/// out whole (and marked so in `/v1/plugins`), and the others still listed
/// and callable.
#[tokio::test]
async fn a_plugin_that_does_not_fit_the_catalog_leaves_the_others_listed() {
    let node = TestNode::start(NodeSpec {
        plugins: vec!["echo", "math", "hostile"],
        config: "[cluster]\nmax_catalog_entries_per_node = 7\n".into(),
        ..NodeSpec::default()
    });
    let listed = node.admin().get("/v1/catalog").await.unwrap().body;
    let mut plugins: Vec<&str> =
        listed["functions"].as_array().unwrap().iter().map(|f| f["plugin"].as_str().unwrap()).collect();
    plugins.sort();
    plugins.dedup();
    assert_eq!(plugins, ["echo", "math"], "hostile's 12 functions do not fit: {listed}");
    assert_eq!(node.client().await.call("add", vec![json!(2), json!(3)]).await.unwrap(), 5);
    assert!(node.stderr().contains("do not fit this node's catalog"), "{}", node.stderr());
    let plugins = node.admin().get("/v1/plugins").await.unwrap().body;
    let state = |name: &str| {
        let plugin = plugins["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone();
        (plugin["state"].as_str().unwrap().to_owned(), plugin["unlisted"].as_str().map(str::to_owned))
    };
    assert_eq!(state("math"), ("ready".to_owned(), None));
    let (hostile, why) = state("hostile");
    assert_eq!(hostile, "unlisted", "{plugins}");
    assert!(why.is_some_and(|w| w.contains("cluster.max_catalog_entries_per_node")), "{plugins}");
}

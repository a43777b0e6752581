//! Multi-command requests through a real node: dependency order,
//! concurrency, references, validation, failures and timeouts.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod support;

use serde_json::{Value, json};
use support::{NodeSpec, TestNode, peak_mib};
use weft_proto::{ErrorKind, Request, Response};

fn request(cmds: Value) -> Request {
    serde_json::from_value(json!({"role": "rpc", "u": "", "cmds": cmds})).expect("request")
}

async fn run(node: &TestNode, req: Request) -> Response {
    node.client().await.request(req).await.expect("a response")
}

async fn ok(node: &TestNode, cmds: Value) -> Value {
    let response = run(node, request(cmds)).await;
    assert!(response.error.is_none(), "{:?}", response.error);
    response.r.expect("results")
}

async fn err(node: &TestNode, cmds: Value) -> weft_proto::ErrorBody {
    run(node, request(cmds)).await.error.expect("an error")
}

#[tokio::test]
async fn a_four_step_pipeline_over_echo_math_and_text() {
    let node = TestNode::start(NodeSpec::default());
    let r = ok(
        &node,
        json!([
            {"name": "words", "fun": "split", "args": ["3 1 4 1 5", " "]},
            {"name": "count", "fun": "word-count", "args": ["3 1 4 1 5"]},
            {"name": "shout", "fun": "upper", "args": [{"$ref": "greeting"}]},
            {"name": "greeting", "fun": "concat", "args": ["pieces: ", {"$ref": "words", "path": "0"}]},
        ]),
    )
    .await;
    assert_eq!(r, json!({"count": 5, "shout": "PIECES: 3"}));
}

#[tokio::test]
async fn a_diamond_runs_each_step_once_and_returns_only_the_sink() {
    let node = TestNode::start(NodeSpec::default());
    let mut req = request(json!([
        {"name": "a", "fun": "echo", "args": ["x"]},
        {"name": "b", "fun": "concat", "args": [{"$ref": "a"}, "b"]},
        {"name": "c", "fun": "concat", "args": [{"$ref": "a"}, "c"]},
        {"name": "d", "fun": "concat", "args": [{"$ref": "b"}, {"$ref": "c"}]},
    ]));
    req.include_execution_summary = true;
    req.return_intermediate_results = true;
    let response = run(&node, req).await;
    assert_eq!(response.r, Some(json!({"d": "xbxc"})));
    // MPREG's shapes: one intermediate result per level, accumulating.
    let intermediate = response.intermediate_results.expect("intermediate results");
    assert_eq!(intermediate.len(), 3);
    assert_eq!(Value::Object(intermediate[1].level_results.clone()), json!({"b": "xb", "c": "xc"}));
    assert_eq!(intermediate[2].accumulated_results.len(), 4);
    assert_eq!(intermediate[2].completed_levels, 3);
    let summary = response.execution_summary.expect("summary");
    assert_eq!(summary.total_levels, 3);
    assert_eq!(summary.level_execution_times.len(), 3);
    assert_eq!(summary.parallel_commands_executed, 4);
    assert_eq!(summary.cross_cluster_hops, 0);
    let levels: Vec<(String, u32)> = summary.steps.iter().map(|s| (s.name.clone(), s.level)).collect();
    assert_eq!(levels, [("a".into(), 0), ("b".into(), 1), ("c".into(), 1), ("d".into(), 2)]);
    let d = &summary.steps[3];
    let b = &summary.steps[1];
    assert!(d.started_us >= b.started_us + b.duration_us, "d starts after b finished");
    assert!(summary.steps.iter().all(|s| s.node == node.id && s.cluster == "local" && s.hops == 0));
    assert_eq!(d.function, "echo/concat@0.1.0");
}

#[tokio::test]
async fn wide_fan_out_and_deep_chains_complete() {
    let node = TestNode::start(NodeSpec::default());
    let wide: Vec<Value> = (0..100).map(|i| json!({"name": format!("w{i}"), "fun": "add", "args": [i, i]})).collect();
    let r = ok(&node, Value::Array(wide)).await;
    assert_eq!(r.as_object().unwrap().len(), 100);
    assert_eq!(r["w99"], 198);

    let mut deep = vec![json!({"name": "s0", "fun": "add", "args": [0, 1]})];
    deep.extend(
        (1..100).map(|i| json!({"name": format!("s{i}"), "fun": "add", "args": [{"$ref": format!("s{}", i - 1)}, 1]})),
    );
    assert_eq!(ok(&node, Value::Array(deep)).await, json!({"s99": 100}));
}

/// Commands start in the request's task; one that runs long (past a slice
/// of fuel) moves to a task of its own, so the commands beside it start
/// without waiting for it to finish.
#[tokio::test]
async fn a_long_command_does_not_hold_up_the_ones_beside_it() {
    let node = TestNode::start(NodeSpec::default());
    let text = "lorem ipsum ".repeat(30_000);
    let mut req = request(json!([
        {"name": "long", "fun": "word-count", "args": [text]},
        {"name": "beside", "fun": "word-count", "args": [text]},
    ]));
    req.include_execution_summary = true;
    let response = run(&node, req).await;
    assert_eq!(response.r, Some(json!({"long": 60_000, "beside": 60_000})));
    let steps = response.execution_summary.expect("summary").steps;
    let step = |name: &str| steps.iter().find(|s| s.name == name).expect("step in summary");
    let (long, beside) = (step("long"), step("beside"));
    assert!(
        beside.started_us < long.started_us + long.duration_us,
        "beside started at {} µs, after long ran {}..{} µs",
        beside.started_us,
        long.started_us,
        long.started_us + long.duration_us
    );
}

/// Peak resident memory of a process, in MiB (Linux).
/// A result that many commands use is copied into their arguments a few at
/// a time (limits.max_frame worth of copies per request), not for all of
/// them at once: 250 users of a 2 MB string took over 1 GB before.
#[tokio::test]
async fn a_large_result_used_by_many_commands_is_not_copied_for_all_at_once() {
    let node = TestNode::start(NodeSpec::default());
    ok(&node, json!([{"name": "warm", "fun": "word-count", "args": ["a b"]}])).await;
    let before = peak_mib(node.pid());
    let mut cmds = vec![json!({"name": "big", "fun": "echo", "args": ["w ".repeat(1 << 20)]})];
    cmds.extend((0..250).map(|i| json!({"name": format!("n{i}"), "fun": "word-count", "args": ["big"]})));
    let r = ok(&node, Value::Array(cmds)).await;
    assert_eq!(r.as_object().unwrap().len(), 250);
    assert!(r.as_object().unwrap().values().all(|n| *n == json!(1 << 20)), "every count is 2^20");
    let grew = peak_mib(node.pid()).saturating_sub(before);
    assert!(grew < 400, "the node's peak memory grew by {grew} MiB");
}

/// A command whose arguments repeat a reference to a large result is
/// refused before anything is copied: a 12 KB request once made the node
/// hold a 1 MiB result 1,500 times (3.1 GB).
#[tokio::test]
async fn a_command_repeating_a_large_result_past_max_frame_is_refused_before_copying() {
    let node = TestNode::start(NodeSpec { config: "[limits]\nmax_frame = \"64KiB\"\n".into(), ..NodeSpec::default() });
    let pipeline = |copies: usize| {
        json!([
            {"name": "big", "fun": "echo", "args": ["x".repeat(10_000)]},
            {"name": "z", "fun": "echos", "args": [vec![json!({"$ref": "big"}); copies]]},
        ])
    };
    let r = ok(&node, pipeline(5)).await;
    assert_eq!(r["z"].as_array().map(Vec::len), Some(5), "50 KB of copies fit in 64 KiB");
    let e = err(&node, pipeline(7)).await;
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);
    assert_eq!(
        (&e.details["command"], &e.details["size"], &e.details["limit"]),
        (&json!("z"), &json!(70_014), &json!(65536))
    );
    assert!(e.message.contains("once its references are replaced"), "{}", e.message);
}

#[tokio::test]
async fn references_reach_inside_arrays_objects_and_record_fields() {
    let node = TestNode::start(NodeSpec::default());
    let r = ok(
        &node,
        json!([
            {"name": "s", "fun": "stats", "args": [[2.0, 4.0]]},
            {"name": "e", "fun": "echo", "args": ["7"]},
            {"name": "again", "fun": "stats", "args": [[{"$ref": "s", "path": "mean"}, {"$ref": "s", "path": "max"}, 9.0]]},
            {"name": "joined", "fun": "echos", "args": [[{"$ref": "e"}, "lit"]]},
            {"name": "named", "fun": "concat", "kwargs": {"b": {"$ref": "e"}, "a": "n"}},
        ]),
    )
    .await;
    assert_eq!(r["again"], json!({"count": 3, "mean": 16.0 / 3.0, "min": 3.0, "max": 9.0}));
    assert_eq!(r["joined"], json!(["7", "lit"]));
    assert_eq!(r["named"], json!("n7"));
}

#[tokio::test]
async fn mpreg_string_references_and_the_lit_escape() {
    let node = TestNode::start(NodeSpec::default());
    let r = ok(
        &node,
        json!([
            {"name": "first", "fun": "echo", "args": ["hello"]},
            {"name": "second", "fun": "concat", "args": ["first", {"$lit": "first"}]},
        ]),
    )
    .await;
    assert_eq!(r, json!({"second": "hellofirst"}));
    // MPREG's field access: "s.count" is the field count of s's result.
    let r = ok(
        &node,
        json!([
            {"name": "s", "fun": "stats", "args": [[1.0, 2.0, 6.0]]},
            {"name": "n", "fun": "add", "args": ["s.count", 1]},
            {"name": "t", "fun": "concat", "args": ["s.", {"$lit": "s.count"}]},
        ]),
    )
    .await;
    assert_eq!(r, json!({"n": 4, "t": "s.s.count"}));
}

#[tokio::test]
async fn every_validation_error_names_the_command_and_nothing_runs() {
    let node = TestNode::start(NodeSpec::default());
    let cases = [
        (
            json!([{"name": "a", "fun": "echo", "args": ["x"]}, {"name": "a", "fun": "echo", "args": ["y"]}]),
            "INVALID_REQUEST",
            "a",
        ),
        (json!([{"name": "a", "fun": "echo", "args": [{"$ref": "zzz"}]}]), "INVALID_REQUEST", "zzz"),
        (
            json!([{"name": "a", "fun": "echo", "args": [{"$ref": "b"}]}, {"name": "b", "fun": "echo", "args": [{"$ref": "a"}]}]),
            "INVALID_REQUEST",
            "a -> b -> a",
        ),
        (json!([{"name": "a", "fun": "nosuch", "args": []}]), "FUNCTION_NOT_FOUND", "command a"),
        (json!([{"name": "a", "fun": "add", "args": [1, "x"]}]), "INVALID_ARGUMENTS", "command a"),
        (
            json!([{"name": "s", "fun": "stats", "args": [[1.0]]}, {"name": "u", "fun": "upper", "args": [{"$ref": "s"}]}]),
            "INVALID_ARGUMENTS",
            "command u",
        ),
        (
            json!([{"name": "s", "fun": "stats", "args": [[1.0]]}, {"name": "u", "fun": "add", "args": [{"$ref": "s", "path": "median"}, 1]}]),
            "INVALID_ARGUMENTS",
            "median",
        ),
        (
            json!([{"name": "w", "fun": "split", "args": ["a b", " "]}, {"name": "b", "fun": "echos", "args": [[{"$ref": "w", "path": "0"}, 5]]}]),
            "INVALID_ARGUMENTS",
            "'values[1]' of echo/echos: expected string, got number 5",
        ),
        (
            json!([{"name": "w", "fun": "split", "args": ["a b", " "]}, {"name": "s", "fun": "stats", "args": [{"count": "w"}]}]),
            "INVALID_ARGUMENTS",
            "expected list<f64> (an array), got object",
        ),
        (
            json!([{"name": "a", "fun": "echo", "args": ["x"], "version_constraint": "not semver"}]),
            "INVALID_REQUEST",
            "command a",
        ),
    ];
    for (cmds, kind, needle) in cases {
        let e = err(&node, cmds.clone()).await;
        assert_eq!(e.kind.as_str(), kind, "{cmds}: {}", e.message);
        assert!(e.message.contains(needle), "{cmds}: {}", e.message);
    }
    let text = node.admin().get("/metrics").await.unwrap().text;
    assert!(!text.contains("weft_calls_total"), "no function ran:\n{text}");
}

#[tokio::test]
async fn a_failing_middle_step_fails_the_request_naming_it() {
    let node = TestNode::start(NodeSpec::default());
    let e = err(
        &node,
        json!([
            {"name": "zero", "fun": "add", "args": [0, 0]},
            {"name": "ratio", "fun": "divide", "args": [1.0, {"$ref": "zero"}]},
            {"name": "show", "fun": "stats", "args": [[{"$ref": "ratio"}]]},
        ]),
    )
    .await;
    assert_eq!(e.kind, ErrorKind::GUEST_ERROR);
    assert!(e.message.starts_with("command ratio:"), "{}", e.message);
    assert_eq!(e.details["command"], "ratio");
}

#[tokio::test]
async fn the_request_timeout_names_the_unfinished_commands() {
    let node = TestNode::start(NodeSpec::default());
    let mut req = request(json!([
        {"name": "quick", "fun": "echo", "args": ["q"]},
        {"name": "stuck", "fun": "spin"},
        {"name": "after", "fun": "concat", "args": [{"$ref": "quick"}, "!"]},
    ]));
    req.timeout_ms = Some(300);
    let e = run(&node, req).await.error.expect("deadline error");
    assert_eq!(e.kind, ErrorKind::DEADLINE_EXCEEDED);
    assert!(e.message.contains("stuck") && !e.message.contains("quick"), "{}", e.message);
    assert_eq!(e.details["unfinished"], json!(["stuck"]));
    // And where each was when time ran out.
    let me = node.admin().get("/health").await.unwrap().body["node"].clone();
    assert_eq!(e.details["running_on"], json!({"stuck": me}), "{e:?}");
    assert!(e.message.contains(&format!("stuck (on node {})", me.as_str().unwrap())), "{}", e.message);
}

#[tokio::test]
async fn versions_pick_the_highest_match_and_ambiguity_lists_candidates() {
    let echo = weft_bundle::get("echo").unwrap().to_vec();
    let node = TestNode::start(NodeSpec {
        plugins: vec!["echo", "math"],
        files: vec![
            ("echo-v2.wasm".into(), echo.clone()),
            ("echo-v2.toml".into(), b"name = \"echo\"\nversion = \"2.1.0\"\n".to_vec()),
            ("parrot.wasm".into(), echo),
        ],
        ..NodeSpec::default()
    });
    let summary_function = async |cmd: Value| {
        let mut req = request(json!([cmd]));
        req.include_execution_summary = true;
        let response = run(&node, req).await;
        assert!(response.error.is_none(), "{:?}", response.error);
        response.execution_summary.expect("summary").steps[0].function.clone()
    };
    assert_eq!(
        summary_function(json!({"name": "a", "fun": "echo", "args": ["x"], "function_id": "echo/echo"})).await,
        "echo/echo@2.1.0"
    );
    assert_eq!(
        summary_function(
            json!({"name": "a", "fun": "echo", "args": ["x"], "function_id": "echo/echo", "version_constraint": "<1"})
        )
        .await,
        "echo/echo@0.1.0"
    );
    assert_eq!(summary_function(json!({"name": "a", "fun": "parrot/echo", "args": ["x"]})).await, "parrot/echo@0.1.0");

    let e = err(&node, json!([{"name": "a", "fun": "echo", "args": ["x"]}])).await;
    assert_eq!(e.kind, ErrorKind::AMBIGUOUS_FUNCTION);
    assert!(e.message.contains("echo/echo@2.1.0") && e.message.contains("parrot/echo@0.1.0"), "{}", e.message);
    assert!(e.message.contains("function_id"), "{}", e.message);

    let e = err(&node, json!([{"name": "a", "fun": "echo/echo", "args": ["x"], "version_constraint": "^3"}])).await;
    assert_eq!(e.kind, ErrorKind::FUNCTION_NOT_FOUND);
    assert!(e.message.contains("2.1.0") && e.message.contains("0.1.0"), "{}", e.message);
}

/// No reply is bigger than `limits.max_frame`: a response that would be is
/// the request's failure (over WebSocket and HTTP alike), counted before
/// anything is copied when it is the intermediate results that grow with
/// every level, and the connection goes on serving.
#[tokio::test]
async fn a_response_over_max_frame_fails_the_request_and_the_connection_serves_on() {
    let node = TestNode::start(NodeSpec { config: "[limits]\nmax_frame = \"64KiB\"\n".into(), ..NodeSpec::default() });
    let big = "x".repeat(40_000);
    let two_outputs = json!([
        {"name": "a", "fun": "echo", "args": [big]},
        {"name": "b", "fun": "upper", "args": [{"$ref": "a"}]},
        {"name": "c", "fun": "echo", "args": [{"$ref": "a"}]},
    ]);
    let client = node.client().await;
    let response = client.request(request(two_outputs.clone())).await.unwrap();
    let e = response.error.expect("an error");
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);
    assert!(e.message.contains("the response would be") && e.message.contains("limits.max_frame"), "{}", e.message);
    assert_eq!(e.details["limit"], 65536);
    assert_eq!(client.call("echo", vec![json!("still here")]).await.unwrap(), "still here");

    // Refused once the results in hand are too many, not after a slower
    // command (one that spins until its 1 s deadline) has ended too.
    let mut with_spin = two_outputs.as_array().unwrap().clone();
    with_spin.push(json!({"name": "d", "fun": "spin", "args": []}));
    let e = client.request(request(Value::Array(with_spin))).await.unwrap().error.expect("an error");
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);

    let http =
        node.admin().post("/v1/call", json!({"role": "rpc", "u": "h", "cmds": two_outputs}).to_string()).await.unwrap();
    assert_eq!((http.status, http.body["error"]["kind"].as_str()), (429, Some("RESOURCE_EXHAUSTED")), "{}", http.text);

    // Five levels of 10 KB: 200 KB of intermediate results, refused before
    // they are built; the same request without them is small.
    let chain: Vec<Value> = (0..5)
        .map(|i| match i {
            0 => json!({"name": "s0", "fun": "echo", "args": ["y".repeat(10_000)]}),
            _ => json!({"name": format!("s{i}"), "fun": "echo", "args": [{"$ref": format!("s{}", i - 1)}]}),
        })
        .collect();
    let mut req = request(Value::Array(chain));
    assert!(client.request(req.clone()).await.unwrap().error.is_none());
    req.return_intermediate_results = true;
    let e = client.request(req).await.unwrap().error.expect("an error");
    assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED, "{}", e.message);
    assert!(e.message.contains("return_intermediate_results would be"), "{}", e.message);
}

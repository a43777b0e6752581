//! The client protocol: requests (`role: "rpc"`) and responses
//! (`role: "rpc-response"`), shaped to stay compatible with MPREG's client.

use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ErrorBody, WeftError};

pub const RPC_ROLE: &str = "rpc";
pub const RESPONSE_ROLE: &str = "rpc-response";

/// One command of a request. Arguments may reference other commands'
/// results; the planner (weft-fabric) interprets them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub name: String,
    pub fun: String,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub kwargs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_constraint: Option<String>,
}

impl Command {
    pub fn new(name: impl Into<String>, fun: impl Into<String>, args: Vec<Value>) -> Self {
        Self {
            name: name.into(),
            fun: fun.into(),
            args,
            kwargs: Map::new(),
            locs: Vec::new(),
            target_cluster: None,
            function_id: None,
            version_constraint: None,
        }
    }
}

/// A client request: one or more commands forming a dependency graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Required on the wire: `decode` explains a missing or wrong one.
    pub role: String,
    pub u: String,
    pub cmds: Vec<Command>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop_budget: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_execution_summary: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub return_intermediate_results: bool,
}

fn rpc_role() -> String {
    RPC_ROLE.to_owned()
}

fn is_false(b: &bool) -> bool {
    !b
}

/// Where in `request` its shape is wrong: serde's own message names
/// neither the command nor (unless it is missing) the field.
fn shape_error_at(request: &Value) -> String {
    let cmds = request.get("cmds").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (i, cmd) in cmds.iter().enumerate() {
        if let Err(e) = serde_json::from_value::<Command>(cmd.clone()) {
            let name = cmd.get("name").and_then(Value::as_str).map_or_else(String::new, |n| format!(" ({n})"));
            let field = field_at_fault::<Command>(cmd, &e).map_or_else(String::new, |f| format!(", field {f:?}"));
            return format!(" in cmds[{i}]{name}{field}");
        }
    }
    match serde_json::from_value::<Request>(request.clone()) {
        Err(e) => field_at_fault::<Request>(request, &e).map_or_else(String::new, |f| format!(", field {f:?}")),
        Ok(_) => String::new(),
    }
}

/// The field of `object` that keeps it from being a `T`: the one serde says
/// is missing, or else the one whose removal fixes it (or leaves only that
/// field missing).
fn field_at_fault<T: serde::de::DeserializeOwned>(object: &Value, error: &serde_json::Error) -> Option<String> {
    let missing =
        error.to_string().strip_prefix("missing field `").and_then(|rest| rest.split('`').next()).map(str::to_owned);
    missing.or_else(|| {
        object.as_object().into_iter().flatten().find_map(|(key, _)| {
            let mut probe = object.clone();
            probe.as_object_mut()?.remove(key);
            match serde_json::from_value::<T>(probe) {
                Ok(_) => Some(key.clone()),
                Err(e) if e.to_string().contains(&format!("missing field `{key}`")) => Some(key.clone()),
                Err(_) => None,
            }
        })
    })
}

impl Request {
    /// About the host memory its commands' arguments hold once parsed,
    /// and again once converted for the guest (checked, then copied in).
    pub fn held_bytes(&self) -> usize {
        fn value(v: &Value) -> usize {
            size_of::<Value>()
                + match v {
                    Value::String(s) => s.capacity(),
                    Value::Array(xs) => xs.iter().map(value).sum(),
                    Value::Object(m) => m.iter().map(|(k, v)| size_of::<String>() + k.capacity() + value(v)).sum(),
                    _ => 0,
                }
        }
        let args = |c: &Command| c.args.iter().chain(c.kwargs.values()).map(value).sum::<usize>();
        2 * self.cmds.iter().map(|c| size_of::<Command>() + args(c)).sum::<usize>()
    }

    pub fn new(u: impl Into<String>, cmds: Vec<Command>) -> Self {
        Self {
            role: rpc_role(),
            u: u.into(),
            cmds,
            timeout_ms: None,
            hop_budget: None,
            token: None,
            include_execution_summary: false,
            return_intermediate_results: false,
        }
    }

    /// Decodes a request from a frame or HTTP body. On failure the error
    /// carries the request's `u` when it could be read, so the reply can be
    /// matched by the client.
    pub fn decode(bytes: &[u8]) -> Result<Request, (Option<String>, WeftError)> {
        // A well-formed request parses straight into its struct; only one
        // that does not goes through `Value`, to say what is wrong with it
        // (a 10-command request decodes in half the time this way).
        // A `Value` keeps the last of two equal keys, so a field given twice
        // would run with one of the two silently: only this parse sees it.
        let duplicate = match serde_json::from_slice::<Request>(bytes) {
            Ok(request) if request.role == RPC_ROLE => return Ok(request),
            Ok(_) => None,
            Err(e) => Some(e.to_string()).filter(|e| e.starts_with("duplicate field")),
        };
        // A `u` of another type is echoed as its text, so that a client with
        // several requests in flight can still tell which one was refused.
        let u_text = |u: &Value| u.as_str().map_or_else(|| u.to_string(), str::to_owned);
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            let u = read_u(bytes).map(|u| u_text(&u));
            let text = e.to_string();
            let e = if text.starts_with("recursion limit exceeded") {
                WeftError::parse(format!(
                    "the message nests arrays and objects more than 128 deep, which the node does not read ({e}); flatten the value"
                ))
            } else if text.contains("hex escape") {
                WeftError::parse(format!(
                    "the message is not valid JSON: {e}; a \\uD800-\\uDFFF escape must be one half of a surrogate pair (\\uD83D\\uDE00), since strings are Unicode text"
                ))
            } else {
                WeftError::parse(format!("the message is not valid JSON: {e}"))
            };
            (u, e)
        })?;
        if let Some(e) = duplicate {
            let u = value.get("u").map(u_text);
            return Err((u, WeftError::invalid_request(format!("bad request shape: {e}; give each field once"))));
        }
        let u = value.get("u").map(u_text);
        let Some(obj) = value.as_object() else {
            return Err((None, WeftError::invalid_request("a request must be a JSON object")));
        };
        match obj.get("role").map(|r| r.as_str().ok_or(r)) {
            Some(Ok(RPC_ROLE)) => {}
            Some(Err(other)) => {
                return Err((
                    u,
                    WeftError::invalid_request(format!("\"role\" must be the string \"rpc\", not {other}")),
                ));
            }
            Some(Ok(other)) => {
                return Err((
                    u,
                    WeftError::invalid_request(format!(
                        "unknown role {other:?}: clients send {{\"role\": \"rpc\", \"u\": .., \"cmds\": [..]}}"
                    )),
                ));
            }
            None => {
                return Err((u, WeftError::invalid_request("missing \"role\": clients send \"role\": \"rpc\"")));
            }
        }
        if value.get("u").is_some_and(|u| !u.is_string()) {
            return Err((u, WeftError::invalid_request("\"u\" must be a string (the request's id)")));
        }
        let where_ = shape_error_at(&value);
        serde_json::from_value(value)
            .map_err(|e| (u, WeftError::invalid_request(format!("bad request shape{where_}: {e}"))))
    }
}

/// The `u` of a message that does not parse, if it comes before whatever
/// breaks it: the client can still tell which request was refused. The
/// members before it are skipped unconverted, so a number beyond f64 (such
/// as 1e400) or nesting deeper than the parser allows does not hide it.
fn read_u(bytes: &[u8]) -> Option<Value> {
    struct FindU<'a>(&'a mut Option<Value>);
    impl<'de> Visitor<'de> for FindU<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "u" {
                    *self.0 = Some(map.next_value()?);
                    // What follows is not read: the parse ends here.
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut u = None;
    let _ = serde_json::Deserializer::from_slice(bytes).deserialize_map(FindU(&mut u));
    u
}

/// One command as run, inside an execution summary (Weft's addition to
/// MPREG's summary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    pub name: String,
    /// `plugin/function@version`.
    pub function: String,
    pub node: String,
    pub cluster: String,
    /// Dependency depth: 0 for commands without references.
    pub level: u32,
    /// Start, relative to the request's start.
    pub started_us: u64,
    pub duration_us: u64,
    /// Cross-cluster hops this command took (0: ran in this cluster).
    pub hops: u32,
}

/// `include_execution_summary`: MPREG's `RPCExecutionSummary` fields plus
/// `steps`. A level's time runs from the first start to the last finish of
/// its commands (commands start as soon as their inputs are ready, so levels
/// may overlap).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionSummary {
    pub request_id: String,
    pub total_execution_time_ms: f64,
    pub total_levels: u32,
    pub level_execution_times: Vec<f64>,
    pub bottleneck_level_index: u32,
    pub average_level_time_ms: f64,
    pub parallel_commands_executed: u32,
    pub cross_cluster_hops: u32,
    pub steps: Vec<StepSummary>,
}

/// `return_intermediate_results`: one entry per dependency level, shaped as
/// MPREG's `RPCIntermediateResult`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntermediateResult {
    pub request_id: String,
    pub level_index: u32,
    /// Results of the commands of this level.
    pub level_results: Map<String, Value>,
    /// Results of every command of this level and the ones below.
    pub accumulated_results: Map<String, Value>,
    pub total_levels: u32,
    pub completed_levels: u32,
    /// Unix time (seconds) when the level's last command finished.
    pub timestamp: f64,
    pub execution_time_ms: f64,
}

/// The reply to a request: results keyed by command name, or an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub role: String,
    pub u: String,
    pub r: Option<Value>,
    pub error: Option<ErrorBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_summary: Option<ExecutionSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_results: Option<Vec<IntermediateResult>>,
}

impl Response {
    pub fn ok(u: impl Into<String>, r: Value) -> Self {
        Self {
            role: RESPONSE_ROLE.into(),
            u: u.into(),
            r: Some(r),
            error: None,
            execution_summary: None,
            intermediate_results: None,
        }
    }

    pub fn err(u: impl Into<String>, e: &WeftError) -> Self {
        Self {
            role: RESPONSE_ROLE.into(),
            u: u.into(),
            r: None,
            error: Some(e.to_body()),
            execution_summary: None,
            intermediate_results: None,
        }
    }

    pub fn into_result(self) -> Result<Value, WeftError> {
        match (self.error, self.r) {
            (Some(e), _) => Err(e.into()),
            (None, r) => Ok(r.unwrap_or(Value::Null)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ErrorKind;
    use crate::test_support::arbitrary_json;

    /// Valid frames for the mutation fuzzer to start from: the spec's
    /// example and the shapes MPREG's client sends.
    fn frames() -> Vec<Vec<u8>> {
        [
            r#"{"role": "rpc", "u": "req-1", "cmds": [{"name": "a", "fun": "echo", "args": ["hi"]}, {"name": "b", "fun": "concat", "args": [{"$ref": "a"}, "!"], "locs": ["gpu"], "target_cluster": "beta", "function_id": "echo/concat", "version_constraint": "^1"}], "timeout_ms": 5000, "hop_budget": 4, "token": "t"}"#,
            r#"{"role":"rpc","u":"x","cmds":[{"name":"s","fun":"stats","args":[[1.5,2,-3e2]],"kwargs":{"xs":[0]}}],"include_execution_summary":true,"return_intermediate_results":true}"#,
            r#"{"role":"rpc","u":"m","cmds":[{"name":"a","fun":"echo","args":["a"]},{"name":"b","fun":"echos","args":[["a",{"$lit":"a"}]]}]}"#,
        ]
        .map(|f| f.as_bytes().to_vec())
        .to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzzing::cases()))]
        // Mutated frames get through the JSON parser far more often than
        // random bytes: each must decode to a request that survives its own
        // encoding, or fail with a client error that keeps `u` when it could
        // be read.
        #[test]
        fn fuzz_mutated_frames_decode_or_fail_cleanly(bytes in crate::fuzzing::mutated(frames())) {
            match Request::decode(&bytes) {
                Ok(req) => {
                    let again = Request::decode(&serde_json::to_vec(&req).unwrap()).map_err(|(_, e)| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(again, req);
                }
                Err((u, e)) => {
                    prop_assert!(matches!(e.kind, ErrorKind::PARSE_ERROR | ErrorKind::INVALID_REQUEST), "{:?}", e.kind);
                    // A `u` that is not a string comes back as its JSON text.
                    // (Of a frame that is not JSON, `u` is read where it can
                    // be: see `the_u_before_whatever_breaks_a_frame_is_kept`.)
                    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                        let readable = v.get("u").map(|u| u.as_str().map_or_else(|| u.to_string(), str::to_owned));
                        prop_assert_eq!(u, readable);
                    }
                }
            }
        }
    }

    proptest! {
        // The frame decoder is fed whatever a client sends: it must answer
        // every input with a request or an error, never a panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Request::decode(&bytes);
        }

        #[test]
        fn decoding_arbitrary_json_never_panics(value in arbitrary_json("[a-z$]{0,6}", "role|u|cmds|name|fun|args|kwargs|[a-z]{1,4}")) {
            let bytes = serde_json::to_vec(&value).unwrap();
            if let Ok(req) = Request::decode(&bytes) {
                prop_assert_eq!(req.role, RPC_ROLE);
            }
        }
    }

    #[test]
    fn the_u_before_whatever_breaks_a_frame_is_kept() {
        let big = br#"{"role": "rpc", "u": "big", "cmds": [{"name": "a", "fun": "echo", "args": [1e400]}]}"#.to_vec();
        let mut deep = br#"{"role": "rpc", "u": "deep", "cmds": [{"name": "a", "fun": "echo", "args": "#.to_vec();
        deep.extend([b'['; 200].iter().chain(&[b']'; 200]).chain(b"}]}"));
        for (frame, id) in [(big, "big"), (deep, "deep")] {
            let (u, e) = Request::decode(&frame).unwrap_err();
            assert_eq!((e.kind, u.as_deref()), (ErrorKind::PARSE_ERROR, Some(id)), "{e:?}");
        }
        // Read up to where the frame breaks: a `u` before that is answered to.
        for frame in [&b"{\"u\": \"cut\", \"cmds\": ["[..], br#"{"u":"cut","role":"rpc","cmds":[}"#] {
            let (u, e) = Request::decode(frame).unwrap_err();
            assert_eq!((e.kind, u.as_deref()), (ErrorKind::PARSE_ERROR, Some("cut")), "{e:?}");
        }
        for frame in [&br#"{"role":"rpc","cmds":[},"u":"late"}"#[..], br#"{"u":"#] {
            assert_eq!(Request::decode(frame).unwrap_err().0, None);
        }
    }

    #[test]
    fn decodes_the_spec_example() {
        let req = Request::decode(
            br#"{"role": "rpc", "u": "req-1",
                 "cmds": [{"name": "a", "fun": "echo", "args": ["hi"]},
                          {"name": "b", "fun": "concat", "args": [{"$ref": "a"}, "!"], "locs": ["gpu"],
                           "target_cluster": "beta", "function_id": "echo/concat", "version_constraint": "^1"}],
                 "timeout_ms": 5000, "hop_budget": 4, "token": "t"}"#,
        )
        .unwrap();
        assert_eq!(req.u, "req-1");
        assert_eq!(req.cmds[1].function_id.as_deref(), Some("echo/concat"));
        assert_eq!(req.timeout_ms, Some(5000));
    }

    #[test]
    fn mpreg_client_extras_are_accepted() {
        // Fields MPREG's Python client adds (trace headers, debug flags,
        // routing topics) are ignored, not rejected.
        let req = Request::decode(
            br#"{"role": "rpc", "u": "01J", "cmds": [{"name": "a", "fun": "echo", "args": ["x"],
                  "kwargs": {}, "locs": [], "function_id": null, "version_constraint": null,
                  "target_cluster": null, "routing_topic": null}],
                 "return_intermediate_results": false, "intermediate_result_callback_topic": null,
                 "include_execution_summary": false, "debug_mode": false,
                 "headers": {"traceparent": "00-ab-cd-01"}, "traceparent": "00-ab-cd-01"}"#,
        )
        .unwrap();
        assert_eq!(req.cmds[0].fun, "echo");
        assert_eq!(req.cmds[0].function_id, None);
    }

    #[test]
    fn a_field_given_twice_is_refused_not_half_read() {
        for (frame, field) in [
            (&br#"{"role": "rpc", "u": "a", "u": "b", "cmds": []}"#[..], "u"),
            (
                br#"{"role": "rpc", "u": "a", "cmds": [{"name": "x", "fun": "echo", "fun": "upper", "args": []}]}"#,
                "fun",
            ),
        ] {
            let (u, e) = Request::decode(frame).unwrap_err();
            assert_eq!(
                (u.as_deref(), e.kind),
                (Some(if field == "u" { "b" } else { "a" }), ErrorKind::INVALID_REQUEST)
            );
            assert!(e.message.contains(&format!("duplicate field `{field}`")), "{}", e.message);
        }
    }

    #[test]
    fn deep_nesting_is_named_as_such() {
        let deep = format!(
            r#"{{"role": "rpc", "u": "d", "cmds": [{{"name": "a", "fun": "echo", "args": [{}{}]}}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let (_, e) = Request::decode(deep.as_bytes()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PARSE_ERROR);
        assert!(e.message.contains("more than 128 deep"), "{}", e.message);
    }

    #[test]
    fn a_lone_surrogate_is_named_as_such() {
        for half in [r"\ud800", r"\udc00", r"\ud800x"] {
            let frame =
                format!(r#"{{"role": "rpc", "u": "s", "cmds": [{{"name": "a", "fun": "echo", "args": ["{half}"]}}]}}"#);
            let (_, e) = Request::decode(frame.as_bytes()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::PARSE_ERROR);
            assert!(e.message.contains("must be one half of a surrogate pair"), "{half}: {}", e.message);
        }
    }

    #[test]
    fn bad_frames_get_the_right_kind_and_keep_u_when_readable() {
        let (u, e) = Request::decode(b"{nope").unwrap_err();
        assert_eq!((u, e.kind), (None, ErrorKind::PARSE_ERROR));
        let (u, e) = Request::decode(br#"{"role": "server", "u": "x"}"#).unwrap_err();
        assert_eq!((u.as_deref(), e.kind), (Some("x"), ErrorKind::INVALID_REQUEST));
        let (u, e) = Request::decode(br#"{"u": "z", "cmds": [{"name": "a", "fun": "echo"}]}"#).unwrap_err();
        assert_eq!((u.as_deref(), e.kind), (Some("z"), ErrorKind::INVALID_REQUEST));
        assert!(e.message.contains("missing \"role\""), "{}", e.message);
        let (_, e) = Request::decode(br#"{"role": 1, "u": "z"}"#).unwrap_err();
        assert!(e.message.contains("\"role\" must be the string \"rpc\", not 1"), "{}", e.message);
        let (u, e) = Request::decode(br#"{"role": "rpc", "u": "y"}"#).unwrap_err();
        assert_eq!(u.as_deref(), Some("y"));
        assert!(e.message.contains("cmds"), "{}", e.message);
        let (_, e) = Request::decode(b"[1]").unwrap_err();
        assert_eq!(e.kind, ErrorKind::INVALID_REQUEST);
        // Which command, and which of its fields, is wrong.
        let frame = br#"{"role": "rpc", "u": "w", "cmds": [{"name": "a", "fun": "echo"}, {"name": "b", "fun": "echo", "args": {"x": 1}}]}"#;
        let (u, e) = Request::decode(frame).unwrap_err();
        assert_eq!(u.as_deref(), Some("w"));
        assert!(e.message.contains("in cmds[1] (b), field \"args\""), "{}", e.message);
        // A missing field is the one named, not one present.
        let frame = br#"{"role": "rpc", "u": "w", "cmds": [{"name": "a", "function": "echo", "args": []}]}"#;
        let (_, e) = Request::decode(frame).unwrap_err();
        assert!(e.message.contains("in cmds[0] (a), field \"fun\": missing field `fun`"), "{}", e.message);
        // A `u` that is not a string comes back as its text.
        let (u, e) = Request::decode(br#"{"role": "rpc", "u": 7, "cmds": []}"#).unwrap_err();
        assert_eq!(u.as_deref(), Some("7"));
        assert!(e.message.contains("\"u\" must be a string"), "{}", e.message);
        // Fields of the request itself are named too.
        let (_, e) = Request::decode(br#"{"role": "rpc", "u": "t", "cmds": [], "timeout_ms": "5s"}"#).unwrap_err();
        assert!(e.message.contains("bad request shape, field \"timeout_ms\": invalid type"), "{}", e.message);
        let (_, e) = Request::decode(br#"{"role": "rpc", "u": "t", "cmds": {"a": 1}}"#).unwrap_err();
        assert!(e.message.contains("bad request shape, field \"cmds\": invalid type"), "{}", e.message);
    }
}

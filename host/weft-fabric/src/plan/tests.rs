use proptest::prelude::*;
use serde_json::json;
use weft_proto::ErrorKind;

use super::*;
use crate::testing::{catalog, resolve};

fn cmd(name: &str, fun: &str, args: Value) -> Command {
    let Value::Array(args) = args else { panic!("args must be an array") };
    Command::new(name, fun, args)
}

fn with_kwargs(mut c: Command, kwargs: Value) -> Command {
    let Value::Object(kwargs) = kwargs else { panic!("kwargs must be an object") };
    c.kwargs = kwargs;
    c
}

fn build(cmds: Vec<Command>) -> Result<Plan, WeftError> {
    let cat = catalog();
    Plan::build(&Request::new("t", cmds), |c| resolve(c, &cat))
}

fn step<'p>(p: &'p Plan, name: &str) -> &'p Step {
    &p.steps()[p.step_index(name).unwrap().0]
}

fn names(p: &Plan, idx: &[StepIdx]) -> Vec<String> {
    idx.iter().map(|i| p.steps()[i.0].name.clone()).collect()
}

/// Asserts the kind, that the message names `command` first, and returns the message.
fn fails(cmds: Vec<Command>, kind: ErrorKind, command: &str) -> String {
    let e = build(cmds).unwrap_err();
    assert_eq!(e.kind, kind, "{}", e.message);
    assert!(e.message.starts_with(&format!("command {command}")), "{}", e.message);
    e.message
}

/// Results indexed like the plan's steps.
fn results(p: &Plan, named: &[(&str, Value)]) -> Vec<Option<Value>> {
    let mut out = vec![None; p.steps().len()];
    for (n, v) in named {
        out[p.step_index(n).unwrap().0] = Some(v.clone());
    }
    out
}

#[test]
fn chain_binds_the_previous_result() {
    let mut p = build(vec![cmd("a", "echo", json!(["hi"])), cmd("b", "concat", json!([{"$ref": "a"}, "!"]))]).unwrap();
    assert_eq!((step(&p, "a").level, step(&p, "b").level), (0, 1));
    assert_eq!(names(&p, &step(&p, "b").deps), ["a"]);
    assert_eq!(p.outputs(), ["b"]);
    assert_eq!(step(&p, "b").resolved.function, FunctionId::new("echo", "concat"));
    let args = p.bind(p.step_index("b").unwrap(), &results(&p, &[("a", json!("hi"))])).unwrap();
    assert_eq!(args, [json!("hi"), json!("!")]);
}

#[test]
fn diamond_has_levels_0_1_1_2_and_only_the_sink_is_an_output() {
    let p = build(vec![
        cmd("a", "echo", json!(["x"])),
        cmd("b", "concat", json!([{"$ref": "a"}, "1"])),
        cmd("c", "concat", json!([{"$ref": "a"}, "2"])),
        cmd("d", "concat", json!([{"$ref": "b"}, {"$ref": "c"}])),
    ])
    .unwrap();
    let levels: Vec<u32> = p.steps().iter().map(|s| s.level).collect();
    assert_eq!(levels, [0, 1, 1, 2]);
    assert_eq!(names(&p, &step(&p, "d").deps), ["b", "c"]);
    assert_eq!(p.outputs(), ["d"]);
    assert_eq!(p.output_steps(), [StepIdx(3)]);
}

#[test]
fn wide_fan_out_of_100_independent_commands_are_all_level_0_outputs() {
    let p = build((0..100).map(|i| cmd(&format!("w{i}"), "echo", json!([i.to_string()]))).collect()).unwrap();
    assert!(p.steps().iter().all(|s| s.level == 0 && s.deps.is_empty()));
    assert_eq!(p.outputs().len(), 100);
}

#[test]
fn deep_chain_of_100_levels_in_reverse_request_order() {
    // Listed last-first: request order need not be dependency order.
    let mut cmds = vec![cmd("s0", "echo", json!(["v"]))];
    cmds.extend((1..100).map(|i| cmd(&format!("s{i}"), "echo", json!([{"$ref": format!("s{}", i - 1)}]))));
    cmds.reverse();
    let p = build(cmds).unwrap();
    for i in 0..100 {
        assert_eq!(step(&p, &format!("s{i}")).level, i);
    }
    assert_eq!(p.outputs(), ["s99"]);
}

#[test]
fn references_nested_in_arrays_and_objects_are_substituted_at_any_depth() {
    let mut p = build(vec![
        cmd("a", "echo", json!(["hi"])),
        cmd("n", "word-count", json!(["one two"])),
        cmd("s", "stats", json!([[1.0, 2.0, 6.0]])),
        cmd("l", "echos", json!([[{"$ref": "a"}, "x", "a"]])),
        cmd(
            "d",
            "describe",
            json!([{"count": {"$ref": "n"}, "mean": 1.5, "min": 0, "max": {"$ref": "s", "path": "max"}}]),
        ),
    ])
    .unwrap();
    assert_eq!(names(&p, &step(&p, "l").deps), ["a"]);
    assert_eq!(names(&p, &step(&p, "d").deps), ["n", "s"]);
    let r = results(
        &p,
        &[("a", json!("hi")), ("n", json!(2)), ("s", json!({"count": 3, "mean": 3.0, "min": 1.0, "max": 6.0}))],
    );
    assert_eq!(p.bind(p.step_index("l").unwrap(), &r).unwrap(), [json!(["hi", "x", "hi"])]);
    assert_eq!(
        p.bind(p.step_index("d").unwrap(), &r).unwrap(),
        [json!({"count": 2, "mean": 1.5, "min": 0, "max": 6.0})]
    );
}

#[test]
fn record_field_path_feeds_an_f64_parameter() {
    let mut p = build(vec![
        cmd("s", "stats", json!([[1.0, 2.0, 6.0]])),
        cmd("half", "divide", json!([{"$ref": "s", "path": "mean"}, 2])),
    ])
    .unwrap();
    let r = results(&p, &[("s", json!({"count": 3, "mean": 3.0, "min": 1.0, "max": 6.0}))]);
    assert_eq!(p.bind(p.step_index("half").unwrap(), &r).unwrap(), [json!(3.0), json!(2)]);
}

#[test]
fn list_index_path_selects_an_element_and_a_missing_one_fails_at_bind() {
    let p = build(vec![
        cmd("sp", "split", json!(["a,b", ","])),
        cmd("second", "echo", json!([{"$ref": "sp", "path": "1"}])),
    ])
    .unwrap();
    let second = p.step_index("second").unwrap();
    assert_eq!(p.clone().bind(second, &results(&p, &[("sp", json!(["a", "b"]))])).unwrap(), [json!("b")]);
    let e = p.clone().bind(second, &results(&p, &[("sp", json!(["a"]))])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENTS);
    assert!(e.message.starts_with("command second: argument 'value' of echo/echo: path \"1\""), "{}", e.message);
    // An index has one spelling: no sign, no leading zero.
    for odd in ["+1", "01", " 1"] {
        let m = fails(
            vec![cmd("sp", "split", json!(["a,b", ","])), cmd("x", "echo", json!([{"$ref": "sp", "path": odd}]))],
            ErrorKind::INVALID_ARGUMENTS,
            "x",
        );
        assert!(m.contains(&format!("'{odd}' cannot be taken from a value of type list<string>")), "{m}");
    }
}

/// A nested reference is held to its place's type as a whole argument is
/// (s64 does not fit u32), and the message names the place; one that fits
/// (s64 into f64) is bound and widened.
#[test]
fn a_nested_reference_is_held_to_the_type_of_its_place() {
    let record = |count: &str| json!([{"count": count, "mean": 1.0, "min": "a", "max": {"$ref": "b"}}]);
    let two = || vec![cmd("a", "add", json!([1, 2])), cmd("b", "add", json!([1, 2]))];
    let mut cmds = two();
    cmds.push(cmd("d", "describe", record("a")));
    let m = fails(cmds, ErrorKind::INVALID_ARGUMENTS, "d");
    assert!(m.contains("expected u32 at s.count, but a is s64 (from math/add)"), "{m}");
    assert!(m.contains(r#"write {"$lit": "a"}"#), "{m}");
    let mut cmds = two();
    cmds.push(cmd("n", "word-count", json!(["x y"])));
    cmds.push(cmd("d", "describe", record("n")));
    let mut p = build(cmds).unwrap();
    let r = results(&p, &[("a", json!(-1)), ("b", json!(3)), ("n", json!(2))]);
    assert_eq!(
        p.bind(p.step_index("d").unwrap(), &r).unwrap(),
        [json!({"count": 2, "mean": 1.0, "min": -1, "max": 3})]
    );
}

#[test]
fn unknown_field_in_path_is_invalid_arguments_listing_the_fields() {
    let m = fails(
        vec![cmd("s", "stats", json!([[1.0]])), cmd("x", "divide", json!([{"$ref": "s", "path": "median"}, 1]))],
        ErrorKind::INVALID_ARGUMENTS,
        "x",
    );
    assert!(
        m.contains("s.median does not exist: summary has no field 'median' (fields: count, mean, min, max)"),
        "{m}"
    );
}

#[test]
fn whole_reference_of_the_wrong_type_is_rejected_before_running() {
    let m = fails(
        vec![cmd("n", "add", json!([1, 2])), cmd("e", "echo", json!([{"$ref": "n"}]))],
        ErrorKind::INVALID_ARGUMENTS,
        "e",
    );
    assert_eq!(m, "command e: argument 'value' of echo/echo: expected string, but n is s64 (from math/add)");
    let m = fails(
        vec![cmd("s", "stats", json!([[1.0]])), cmd("e", "echo", json!([{"$ref": "s", "path": "mean"}]))],
        ErrorKind::INVALID_ARGUMENTS,
        "e",
    );
    assert!(m.contains("expected string, but s.mean is f64"), "{m}");
}

#[test]
fn references_widen_by_fits_and_a_plain_value_fits_an_option_parameter() {
    // u32 word count into s64 add, f64 `ok` of divide's result into f64, u32 into option<u32>.
    build(vec![
        cmd("n", "word-count", json!(["a b"])),
        cmd("sum", "add", json!([{"$ref": "n"}, 1])),
        cmd("q", "divide", json!([1, 2])),
        cmd("q2", "divide", json!([{"$ref": "q"}, 2])),
        cmd("p", "pad", json!(["x", {"$ref": "n"}])),
    ])
    .unwrap();
}

#[test]
fn referencing_a_function_without_result_is_invalid_arguments() {
    let m = fails(
        vec![cmd("s", "spin", json!([])), cmd("e", "echo", json!([{"$ref": "s"}]))],
        ErrorKind::INVALID_ARGUMENTS,
        "e",
    );
    assert!(m.contains("hostile/spin returns nothing"), "{m}");
    // Nested in a list or record, before anything runs.
    for nested in [json!([[{"$ref": "s"}]]), json!([["s"]]), json!([{"k": {"$ref": "s"}}])] {
        let m = fails(vec![cmd("s", "spin", json!([])), cmd("e", "echos", nested)], ErrorKind::INVALID_ARGUMENTS, "e");
        assert!(m.contains("argument 'values' of echo/echos: s has no value: hostile/spin returns nothing"), "{m}");
    }
    // So is a path that cannot exist in the result.
    let m = fails(
        vec![cmd("s", "stats", json!([[1.0]])), cmd("e", "echos", json!([[{"$ref": "s", "path": "nope"}]]))],
        ErrorKind::INVALID_ARGUMENTS,
        "e",
    );
    assert!(m.contains("s.nope does not exist"), "{m}");
    assert!(!m.contains("$lit"), "a $ref is no text: {m}");
}

/// References nested in a literal are checked by type before anything
/// runs, as whole-argument ones are, and so are the literal parts beside
/// them: each mismatch names its place and what is there.
#[test]
fn nested_references_and_the_literals_beside_them_are_type_checked_before_anything_runs() {
    let n = || cmd("n", "word-count", json!(["a b"]));
    let m = fails(vec![n(), cmd("l", "echos", json!([[{"$ref": "n"}]]))], ErrorKind::INVALID_ARGUMENTS, "l");
    assert!(
        m.starts_with(
            "command l: argument 'values' of echo/echos: expected string at values[0], but n is u32 (from text/word-count)"
        ),
        "{m}"
    );
    assert!(!m.contains("$lit"), "an explicit $ref needs no hint about bare names: {m}");
    // A plain string that names a command is such a reference too: the
    // message says so, and how to pass the text instead.
    let m = fails(vec![n(), cmd("l", "echos", json!([["x", "n"]]))], ErrorKind::INVALID_ARGUMENTS, "l");
    assert!(m.contains("values[1]") && m.contains(r#"{"$lit": "n"}"#), "{m}");
    // A literal beside a fitting reference is the literal's fault.
    let w = || cmd("w", "split", json!(["a b", " "]));
    let m = fails(
        vec![w(), cmd("l", "echos", json!([[{"$ref": "w", "path": "0"}, 5]]))],
        ErrorKind::INVALID_ARGUMENTS,
        "l",
    );
    assert!(m.ends_with("argument 'values[1]' of echo/echos: expected string, got number 5"), "{m}");
    // So is a literal of the wrong shape around references.
    let m = fails(vec![w(), cmd("s", "stats", json!([{"count": "w"}]))], ErrorKind::INVALID_ARGUMENTS, "s");
    assert!(m.contains("argument 'xs' of math/stats: expected list<f64> (an array), got object"), "{m}");
    // An option result where its value is needed, in a list as alone.
    let o = || cmd("o", "first", json!(["x"]));
    let m = fails(vec![o(), cmd("p", "echo", json!(["o"]))], ErrorKind::INVALID_ARGUMENTS, "p");
    let nested = fails(vec![o(), cmd("p", "echos", json!([["o"]]))], ErrorKind::INVALID_ARGUMENTS, "p");
    assert!(m.contains("but o is option<string>") && nested.contains("but o is option<string>"), "{m} / {nested}");
}

#[test]
fn binding_before_a_dependency_completed_is_an_internal_error_not_a_panic() {
    let mut p = build(vec![cmd("a", "echo", json!(["x"])), cmd("b", "echo", json!(["a"]))]).unwrap();
    let e = p.bind(p.step_index("b").unwrap(), &[]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INTERNAL);
    assert_eq!(p.bind(StepIdx(7), &[]).unwrap_err().kind, ErrorKind::INTERNAL);
}

#[test]
fn a_step_is_bound_once_its_literals_move_out_of_the_plan() {
    let mut p = build(vec![cmd("a", "echo", json!(["x"]))]).unwrap();
    let a = p.step_index("a").unwrap();
    assert_eq!(p.bind(a, &[]).unwrap(), [json!("x")]);
    assert!(p.steps()[0].args.is_empty(), "the plan keeps no copy");
    let e = p.bind(a, &[]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INTERNAL);
    assert!(e.message.contains("bound already"), "{}", e.message);
}

#[test]
fn lit_escape_passes_names_and_ref_objects_literally() {
    let mut p = build(vec![
        cmd("a", "echo", json!(["hi"])),
        cmd("b", "echo", json!([{"$lit": "a"}])),
        cmd("c", "echos", json!([{"$lit": ["a", "b"]}])),
    ])
    .unwrap();
    assert!(step(&p, "b").deps.is_empty() && step(&p, "c").deps.is_empty());
    assert_eq!(step(&p, "b").args, [Template::Literal(json!("a"))]);
    assert_eq!(p.outputs(), ["a", "b", "c"]);
    assert_eq!(p.bind(p.step_index("c").unwrap(), &[]).unwrap(), [json!(["a", "b"])]);
    // Inside $lit a {"$ref": ..} is just an object, so it does not fit a string.
    let m = fails(
        vec![cmd("a", "echo", json!(["hi"])), cmd("b", "echo", json!([{"$lit": {"$ref": "a"}}]))],
        ErrorKind::INVALID_ARGUMENTS,
        "b",
    );
    assert!(m.ends_with("expected string, got object {\"$ref\":\"a\"}"), "{m}");
}

#[test]
fn lit_object_with_other_keys_is_invalid_request() {
    let m = fails(vec![cmd("a", "echo", json!([{"$lit": "x", "extra": 1}]))], ErrorKind::INVALID_REQUEST, "a");
    assert!(m.contains("\"extra\""), "{m}");
}

#[test]
fn mpreg_string_equal_to_another_command_name_is_a_reference_at_any_depth() {
    let mut p = build(vec![
        cmd("a", "echo", json!(["a"])),
        cmd("b", "concat", json!(["a", "!"])),
        cmd("c", "echos", json!([["b", "z"]])),
    ])
    .unwrap();
    assert!(step(&p, "a").deps.is_empty(), "a command's own name stays a string");
    assert_eq!(names(&p, &step(&p, "b").deps), ["a"]);
    assert_eq!(names(&p, &step(&p, "c").deps), ["b"]);
    let r = results(&p, &[("a", json!("a")), ("b", json!("a!"))]);
    assert_eq!(p.bind(p.step_index("c").unwrap(), &r).unwrap(), [json!(["a!", "z"])]);
}

/// MPREG reads `"s.mean"` as the field `mean` of command `s`'s result.
#[test]
fn mpreg_dotted_string_is_a_reference_into_another_command_s_result() {
    let mut p = build(vec![
        cmd("s", "stats", json!([[1.0, 2.0, 6.0]])),
        cmd("a", "add", json!(["s.count", 1])),
        cmd("e", "echos", json!([["z.x", "s.", "s..count", "t.count", "e.b"]])),
    ])
    .unwrap();
    assert_eq!(names(&p, &step(&p, "a").deps), ["s"]);
    assert!(step(&p, "e").deps.is_empty(), "no such command, or no path: text");
    let r = results(&p, &[("s", json!({"count": 3, "mean": 3.0, "min": 1.0, "max": 6.0}))]);
    assert_eq!(p.bind(p.step_index("a").unwrap(), &r).unwrap(), [json!(3), json!(1)]);
    // A path the result cannot have is refused before anything runs.
    let m = fails(
        vec![
            cmd("s", "stats", json!([[1.0]])),
            cmd("b", "describe", json!(["s"])),
            cmd("w", "echo", json!(["s.nope"])),
        ],
        ErrorKind::INVALID_ARGUMENTS,
        "w",
    );
    assert!(m.contains("s.nope does not exist"), "{m}");
    assert!(m.contains("write {\"$lit\": \"s.nope\"} for the text itself"), "{m}");
    // A whole name with a dot in it comes first.
    let p = build(vec![
        cmd("s.mean", "echo", json!(["x"])),
        cmd("s", "stats", json!([[1.0]])),
        cmd("t", "echo", json!(["s.mean"])),
    ])
    .unwrap();
    assert_eq!(names(&p, &step(&p, "t").deps), ["s.mean"]);
    // The longest name is the one meant, and the command's own stays text.
    let summary = json!({"count": 1, "mean": 1.0, "min": 1.0, "max": 1.0});
    let mut p = build(vec![
        cmd("a", "stats", json!([[1.0]])),
        cmd("a.b", "stats", json!([[1.0]])),
        cmd("x", "add", json!(["a.b.count", 1])),
        cmd("a.b.c", "echo", json!(["a.b.c.d"])),
    ])
    .unwrap();
    assert_eq!(names(&p, &step(&p, "x").deps), ["a.b"]);
    assert!(step(&p, "a.b.c").deps.is_empty(), "its own name and a path: text");
    let r = results(&p, &[("a", summary.clone()), ("a.b", summary)]);
    assert_eq!(p.bind(p.step_index("x").unwrap(), &r).unwrap(), [json!(1), json!(1)]);
    // A cycle made of text says how to pass the text.
    let m = fails(
        vec![cmd("a", "echo", json!(["b.txt"])), cmd("b", "echo", json!(["a.txt"]))],
        ErrorKind::INVALID_REQUEST,
        "a",
    );
    assert!(m.contains("dependency cycle a -> b -> a") && m.contains("wrap text in {\"$lit\""), "{m}");
    // A path a value turns out not to have says how to pass the text.
    let mut p = build(vec![cmd("w", "split", json!(["a b", " "])), cmd("e", "echo", json!(["w.5"]))]).unwrap();
    let e = p.bind(p.step_index("e").unwrap(), &results(&p, &[("w", json!(["a", "b"]))])).unwrap_err();
    assert!(e.message.contains(r#"write {"$lit": "w.5"}"#), "{}", e.message);
}

#[test]
fn kwargs_map_by_parameter_name_into_parameter_order() {
    let mut p = build(vec![
        cmd("x", "echo", json!(["hi"])),
        with_kwargs(cmd("y", "concat", json!([])), json!({"b": "!", "a": {"$ref": "x"}})),
        with_kwargs(cmd("z", "concat", json!(["<"])), json!({"b": ">"})),
    ])
    .unwrap();
    let r = results(&p, &[("x", json!("hi"))]);
    assert_eq!(p.bind(p.step_index("y").unwrap(), &r).unwrap(), [json!("hi"), json!("!")]);
    assert_eq!(p.bind(p.step_index("z").unwrap(), &r).unwrap(), [json!("<"), json!(">")]);
}

#[test]
fn omitted_option_parameter_is_null() {
    let mut p = build(vec![cmd("p", "pad", json!(["x"]))]).unwrap();
    assert_eq!(p.bind(StepIdx(0), &[]).unwrap(), [json!("x"), Value::Null]);
}

#[test]
fn empty_request_is_invalid() {
    let e = build(vec![]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_REQUEST);
    assert!(e.message.contains("no commands"), "{}", e.message);
}

#[test]
fn empty_and_duplicate_names_are_invalid_requests() {
    let e = build(vec![cmd("a", "echo", json!(["x"])), cmd("", "echo", json!(["x"]))]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_REQUEST);
    assert!(e.message.starts_with("command #2 has an empty name"), "{}", e.message);
    let m =
        fails(vec![cmd("a", "echo", json!(["x"])), cmd("a", "echo", json!(["y"]))], ErrorKind::INVALID_REQUEST, "a");
    assert!(m.contains("#1 and #2"), "{m}");
}

#[test]
fn unknown_reference_names_the_command_and_the_missing_name() {
    let e = build(vec![cmd("a", "echo", json!(["x"])), cmd("b", "echo", json!([{"$ref": "nope"}]))]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_REQUEST);
    assert!(e.message.starts_with("command b: {\"$ref\": \"nope\"} names no command"), "{}", e.message);
    assert!(e.message.contains("its commands: a, b"), "{}", e.message);
    assert_eq!(e.details["reference"], json!("nope"));
    // A path written into the name is pointed to `path`.
    let e = build(vec![cmd("a", "echo", json!(["x"])), cmd("b", "echo", json!([{"$ref": "a.x.0"}]))]).unwrap_err();
    assert!(
        e.message.ends_with("; for part of a's result, write {\"$ref\": \"a\", \"path\": \"x.0\"}"),
        "{}",
        e.message
    );
}

#[test]
fn malformed_ref_objects_are_invalid_requests() {
    for bad in [
        json!({"$ref": "a", "paht": "x"}),
        json!({"$ref": 3}),
        json!({"$ref": "a", "path": 1}),
        json!({"$ref": "a", "path": "x..y"}),
        json!({"$ref": "a", "$lit": "x"}),
    ] {
        fails(vec![cmd("a", "echo", json!(["x"])), cmd("b", "echo", json!([bad]))], ErrorKind::INVALID_REQUEST, "b");
    }
}

#[test]
fn self_reference_is_a_cycle_of_one() {
    let e = build(vec![cmd("a", "echo", json!([{"$ref": "a"}]))]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_REQUEST);
    assert!(e.message.starts_with("command a: it references its own result (a -> a)"), "{}", e.message);
}

#[test]
fn cycles_are_named_from_their_earliest_command() {
    let m = fails(
        vec![
            cmd("x", "echo", json!(["c"])),
            cmd("a", "echo", json!(["b"])),
            cmd("b", "echo", json!([{"$ref": "c"}])),
            cmd("c", "echo", json!([{"$ref": "a"}])),
        ],
        ErrorKind::INVALID_REQUEST,
        "a",
    );
    assert!(m.contains("dependency cycle a -> b -> c -> a"), "{m}");
}

#[test]
fn resolution_errors_are_prefixed_with_the_command_once() {
    let m = fails(vec![cmd("a", "frob", json!([]))], ErrorKind::FUNCTION_NOT_FOUND, "a");
    assert!(!m.contains("command a: command a"), "{m}");
    let e = Plan::build(&Request::new("t", vec![cmd("a", "echo", json!([]))]), |_| {
        Err(WeftError::new(ErrorKind::NO_ROUTE, "catalog unavailable"))
    })
    .unwrap_err();
    assert_eq!(e.message, "command a: catalog unavailable");
}

#[test]
fn too_many_positional_arguments_is_invalid_arguments() {
    let m = fails(vec![cmd("e", "echo", json!(["a", "b"]))], ErrorKind::INVALID_ARGUMENTS, "e");
    assert!(m.contains("echo/echo takes 1 argument(s) (func(value: string) -> string) but 2 given"), "{m}");
}

#[test]
fn unknown_kwarg_is_invalid_arguments_showing_the_signature() {
    let m =
        fails(vec![with_kwargs(cmd("e", "echo", json!([])), json!({"valeu": "x"}))], ErrorKind::INVALID_ARGUMENTS, "e");
    assert!(m.contains("no parameter 'valeu'; its signature is func(value: string) -> string"), "{m}");
}

#[test]
fn parameter_given_positionally_and_by_name_is_invalid_arguments() {
    let m = fails(
        vec![with_kwargs(cmd("c", "concat", json!(["x"])), json!({"a": "y", "b": "z"}))],
        ErrorKind::INVALID_ARGUMENTS,
        "c",
    );
    assert!(m.contains("argument 'a' of echo/concat (expected string) is given twice"), "{m}");
}

#[test]
fn missing_parameter_is_invalid_arguments_with_its_type() {
    let m = fails(vec![cmd("c", "concat", json!(["x"]))], ErrorKind::INVALID_ARGUMENTS, "c");
    assert!(m.contains("missing argument 'b' of echo/concat (expected string)"), "{m}");
}

#[test]
fn literal_of_the_wrong_type_names_command_parameter_and_type() {
    let e = build(vec![cmd("b", "concat", json!([5, "x"]))]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_ARGUMENTS);
    assert_eq!(e.message, "command b: argument 'a' of echo/concat: expected string, got number 5");
    assert_eq!((&e.details["command"], &e.details["parameter"]), (&json!("b"), &json!("a")));
}

#[test]
fn locs_and_target_cluster_are_carried_to_the_step() {
    let mut c = cmd("a", "echo", json!(["x"]));
    c.target_cluster = Some("alpha".into());
    let p = build(vec![c]).unwrap();
    assert_eq!(p.steps()[0].target_cluster, Some(ClusterId::new("alpha")));
    let mut c = cmd("a", "echo", json!(["x"]));
    c.locs = vec!["gpu".into()];
    fails(vec![c], ErrorKind::FUNCTION_NOT_FOUND, "a");
}

/// Whether the graph `deps` (step -> steps it uses) has a cycle, by
/// repeatedly removing steps whose deps were all removed.
fn has_cycle(deps: &[Vec<usize>]) -> bool {
    let mut removed = vec![false; deps.len()];
    loop {
        let next = (0..deps.len()).find(|&i| !removed[i] && deps[i].iter().all(|&d| removed[d]));
        match next {
            Some(i) => removed[i] = true,
            None => return removed.iter().any(|r| !r),
        }
    }
}

proptest! {
    #[test]
    fn any_graph_plans_iff_acyclic_and_levels_follow_deps(
        edges in prop::collection::vec(prop::collection::vec(0usize..8, 0..3), 1..8),
    ) {
        let n = edges.len();
        let deps: Vec<Vec<usize>> = edges.iter().map(|ds| ds.iter().map(|d| d % n).collect()).collect();
        let cmds: Vec<Command> = deps
            .iter()
            .enumerate()
            .map(|(i, ds)| {
                let refs: Vec<Value> = ds.iter().map(|d| json!({"$ref": format!("s{d}"), "path": "0"})).collect();
                cmd(&format!("s{i}"), "echos", json!([refs]))
            })
            .collect();
        match build(cmds) {
            Ok(p) => {
                prop_assert!(!has_cycle(&deps));
                for (i, s) in p.steps().iter().enumerate() {
                    let mut want: Vec<usize> = deps[i].clone();
                    want.sort_unstable();
                    want.dedup();
                    prop_assert_eq!(s.deps.iter().map(|d| d.0).collect::<Vec<_>>(), want);
                    let level = s.deps.iter().map(|d| p.steps()[d.0].level + 1).max().unwrap_or(0);
                    prop_assert_eq!(s.level, level);
                }
            }
            Err(e) => {
                prop_assert!(has_cycle(&deps), "{}", e.message);
                prop_assert_eq!(e.kind, ErrorKind::INVALID_REQUEST);
                let cycle: Vec<String> = serde_json::from_value(e.details["cycle"].clone()).unwrap();
                prop_assert_eq!(cycle.first(), cycle.last());
                for pair in cycle.windows(2) {
                    let (from, to) = (&pair[0][1..], &pair[1][1..]);
                    let (from, to): (usize, usize) = (from.parse().unwrap(), to.parse().unwrap());
                    prop_assert!(deps[from].contains(&to), "{} is not an edge", pair.join(" -> "));
                }
            }
        }
    }
}

#[test]
fn a_target_cluster_or_resource_label_that_no_cluster_could_have_is_invalid() {
    let mut c = cmd("a", "echo", json!(["x"]));
    c.target_cluster = Some(String::new());
    let m = fails(vec![c], ErrorKind::INVALID_REQUEST, "a");
    assert!(m.contains("target_cluster \"\" is not a cluster name"), "{m}");
    let mut c = cmd("a", "echo", json!(["x"]));
    c.locs = vec!["gpu".into(), String::new()];
    let m = fails(vec![c], ErrorKind::INVALID_REQUEST, "a");
    assert!(m.contains("locs: \"\" is not a resource label"), "{m}");
}

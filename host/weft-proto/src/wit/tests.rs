use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::test_support::arbitrary_json;

fn summary() -> WitType {
    WitType::Record {
        name: Some("summary".into()),
        fields: ["count", "mean"]
            .iter()
            .zip([WitType::U32, WitType::F64])
            .map(|(n, ty)| Field { name: n.to_string(), ty })
            .collect(),
    }
}

fn shape() -> WitType {
    WitType::Variant {
        name: Some("shape".into()),
        cases: vec![Case { name: "circle".into(), ty: Some(WitType::F64) }, Case { name: "none".into(), ty: None }],
    }
}

/// Builds `WitValue`s, so that a conversion can be compared with `to_json`.
struct Plain;

impl Build for Plain {
    type Out = WitValue;
    fn scalar(&self, x: Scalar<'_>) -> WitValue {
        match x {
            Scalar::Bool(x) => WitValue::Bool(x),
            Scalar::S8(x) => WitValue::S8(x),
            Scalar::S16(x) => WitValue::S16(x),
            Scalar::S32(x) => WitValue::S32(x),
            Scalar::S64(x) => WitValue::S64(x),
            Scalar::U8(x) => WitValue::U8(x),
            Scalar::U16(x) => WitValue::U16(x),
            Scalar::U32(x) => WitValue::U32(x),
            Scalar::U64(x) => WitValue::U64(x),
            Scalar::F32(x) => WitValue::F32(x),
            Scalar::F64(x) => WitValue::F64(x),
            Scalar::Char(x) => WitValue::Char(x),
            Scalar::String(x) => WitValue::String(x.to_owned()),
            Scalar::Enum(x) => WitValue::Enum(x.to_owned()),
        }
    }
    fn list(&self, items: Vec<WitValue>) -> WitValue {
        WitValue::List(items)
    }
    fn tuple(&self, items: Vec<WitValue>) -> WitValue {
        WitValue::Tuple(items)
    }
    fn record(&self, fields: Vec<(&str, WitValue)>) -> WitValue {
        WitValue::Record(fields.into_iter().map(|(k, x)| (k.to_owned(), x)).collect())
    }
    fn variant(&self, case: &str, payload: Option<WitValue>) -> WitValue {
        WitValue::Variant(case.to_owned(), payload.map(Box::new))
    }
    fn flags(&self, set: Vec<&str>) -> WitValue {
        WitValue::Flags(set.into_iter().map(str::to_owned).collect())
    }
    fn option(&self, x: Option<WitValue>) -> WitValue {
        WitValue::Option(x.map(Box::new))
    }
    fn result(&self, r: Result<Option<WitValue>, Option<WitValue>>) -> WitValue {
        WitValue::Result(r.map(|x| x.map(Box::new)).map_err(|x| x.map(Box::new)))
    }
}

fn from_json(v: &Value, ty: &WitType, path: &str) -> Result<WitValue, Mismatch> {
    convert(v, ty, path, &Plain)
}

fn roundtrip(v: Value, ty: &WitType) -> Value {
    to_json(&from_json(&v, ty, "x").unwrap_or_else(|e| panic!("{v} as {ty}: {e}")))
}

#[test]
fn every_value_kind_round_trips_through_json() {
    let cases = [
        (json!(true), WitType::Bool),
        (json!(-128), WitType::S8),
        (json!(u64::MAX), WitType::U64),
        (json!(i64::MIN), WitType::S64),
        (json!(1.5), WitType::F64),
        (json!("NaN"), WitType::F32),
        (json!("-Infinity"), WitType::F64),
        (json!("é"), WitType::Char),
        (json!(["a", "b"]), WitType::List { element: Box::new(WitType::String) }),
        (json!([1, "x"]), WitType::Tuple { elements: vec![WitType::U8, WitType::String] }),
        (json!({"count": 2, "mean": 0.5}), summary()),
        (json!({"circle": 2.0}), shape()),
        (json!("none"), shape()),
        (json!("b"), WitType::Enum { name: None, cases: vec!["a".into(), "b".into()] }),
        (json!(["r", "w"]), WitType::Flags { name: None, flags: vec!["r".into(), "w".into(), "x".into()] }),
        (json!(null), WitType::Option { some: Box::new(WitType::U32) }),
        (json!(7), WitType::Option { some: Box::new(WitType::U32) }),
        (json!({"some": null}), WitType::Option { some: Box::new(WitType::Option { some: Box::new(WitType::U32) }) }),
        (json!({"ok": 1}), WitType::Result { ok: Some(Box::new(WitType::U8)), err: None }),
        (json!({"err": "bad"}), WitType::Result { ok: None, err: Some(Box::new(WitType::String)) }),
    ];
    for (v, ty) in cases {
        assert_eq!(roundtrip(v.clone(), &ty), v, "{ty}");
    }
}

#[test]
fn sixty_four_bit_integers_may_come_as_decimal_strings() {
    let v = from_json(&json!("18446744073709551615"), &WitType::U64, "n").unwrap();
    assert_eq!(v, WitValue::U64(u64::MAX));
    assert_eq!(from_json(&json!("-5"), &WitType::S64, "n").unwrap(), WitValue::S64(-5));
}

#[test]
fn minus_zero_is_the_integer_zero() {
    let minus_zero: Value = serde_json::from_str("-0").unwrap();
    assert_eq!(from_json(&minus_zero, &WitType::U8, "n").unwrap(), WitValue::U8(0));
    assert_eq!(from_json(&minus_zero, &WitType::S64, "n").unwrap(), WitValue::S64(0));
    assert!(from_json(&json!(0.5), &WitType::S64, "n").is_err());
}

#[test]
fn mismatches_name_the_path_and_the_expected_type() {
    let err = from_json(&json!("x"), &WitType::S64, "a").unwrap_err();
    assert_eq!(err.path, "a");
    assert!(err.expected.starts_with("s64"), "{err}");
    assert!(from_json(&json!(256), &WitType::U8, "a").is_err());
    assert!(from_json(&json!(1.5), &WitType::S32, "a").is_err());
    let err = from_json(&json!("e\u{301}"), &WitType::Char, "c").unwrap_err();
    assert!(err.expected.contains("this one has 2 Unicode scalar values"), "{err}");
    let err = from_json(&json!(1e39), &WitType::F32, "x").unwrap_err();
    assert!(err.expected.contains("no larger than 3.4028235e38"), "{err}");
    assert_eq!(from_json(&json!(3.4028235e38), &WitType::F32, "x").unwrap(), WitValue::F32(f32::MAX));

    let err = from_json(&json!({"count": 1}), &summary(), "s").unwrap_err();
    assert_eq!(err.path, "s.mean");
    let err = from_json(&json!({"count": 1, "mean": 1, "typo": 2}), &summary(), "s").unwrap_err();
    assert_eq!(err.path, "s.typo");
    assert_eq!(err.found, "a field \"typo\" it does not have");
    let camel = WitType::Record {
        name: Some("person".into()),
        fields: vec![Field { name: "first-name".into(), ty: WitType::String }],
    };
    let err = from_json(&json!({"firstName": "A"}), &camel, "p").unwrap_err();
    assert_eq!(err.found, "a field \"firstName\" it does not have; did you mean \"first-name\"?");
    let kebab = WitType::Record {
        name: Some("item".into()),
        fields: vec![Field { name: "price-cents".into(), ty: WitType::U32 }],
    };
    let err = from_json(&json!({"price_cents": 1}), &kebab, "i").unwrap_err();
    assert!(err.found.ends_with("did you mean \"price-cents\"?"), "{err}");
    let flags = WitType::Flags { name: None, flags: vec!["r".into(), "w".into()] };
    let err = from_json(&json!(["r", "x"]), &flags, "f").unwrap_err();
    assert_eq!((err.path.as_str(), err.found.as_str()), ("f[1]", "string \"x\""));
    let list = WitType::List { element: Box::new(WitType::F64) };
    let err = from_json(&json!([1, "two"]), &list, "xs").unwrap_err();
    assert_eq!(err.path, "xs[1]");
    let nested = WitType::Result { ok: Some(Box::new(WitType::List { element: Box::new(summary()) })), err: None };
    let err = from_json(&json!({"ok": [{"count": 1, "mean": 2}, {"count": -1, "mean": 2}]}), &nested, "r").unwrap_err();
    assert_eq!(err.path, "r.ok[1].count");
    let err = from_json(&json!({"circle": "big"}), &shape(), "s").unwrap_err();
    assert_eq!(err.path, "s.circle");
    assert!(from_json(&json!({"square": 1}), &shape(), "s").is_err());
    assert!(from_json(&json!(1), &WitType::Resource { name: "r".into(), borrowed: false }, "h").is_err());
}

#[test]
fn missing_optional_record_fields_are_none() {
    let ty = WitType::Record {
        name: None,
        fields: vec![Field { name: "o".into(), ty: WitType::Option { some: Box::new(WitType::U8) } }],
    };
    let v = from_json(&json!({}), &ty, "r").unwrap();
    assert_eq!(v, WitValue::Record(vec![("o".into(), WitValue::Option(None))]));
}

#[test]
fn fits_accepts_widening_and_rejects_narrowing() {
    assert!(WitType::U32.fits(&WitType::S64));
    assert!(!WitType::S64.fits(&WitType::U32));
    assert!(WitType::F32.fits(&WitType::F64));
    assert!(WitType::S64.fits(&WitType::F64));
    assert!(!WitType::F64.fits(&WitType::S64));
    assert!(!WitType::String.fits(&WitType::F64));
    let strings = WitType::List { element: Box::new(WitType::String) };
    assert!(strings.fits(&strings.clone()));
    assert!(!strings.fits(&WitType::String));
    // A `T` travels as a valid `option<T>`, at any depth; an `option<T>` is
    // no `option<option<T>>`, whose `some` is spelled `{"some": ..}`.
    let option = |t: WitType| WitType::Option { some: Box::new(t) };
    let list = |t: WitType| WitType::List { element: Box::new(t) };
    assert!(WitType::String.fits(&option(WitType::String)));
    assert!(strings.fits(&list(option(WitType::String))));
    assert!(!option(WitType::String).fits(&option(option(WitType::String))));
    assert!(option(option(WitType::U8)).fits(&option(option(WitType::U32))));
    assert!(!option(WitType::String).fits(&WitType::String));
    assert!(summary().fits(&WitType::Record {
        name: None,
        fields: match summary() {
            WitType::Record { fields, .. } => fields,
            _ => unreachable!(),
        }
    }));
}

#[test]
fn signatures_print_as_wit() {
    let sig = FunctionSig {
        params: vec![Field { name: "xs".into(), ty: WitType::List { element: Box::new(WitType::F64) } }],
        result: Some(summary()),
    };
    assert_eq!(sig.to_string(), "func(xs: list<f64>) -> summary");
    let mut defs = Vec::new();
    summary().collect_definitions(&mut defs);
    assert_eq!(defs, ["record summary { count: u32, mean: f64 }"]);
}

fn arb_type() -> impl Strategy<Value = WitType> {
    let leaf = prop_oneof![
        Just(WitType::Bool),
        Just(WitType::S64),
        Just(WitType::S8),
        Just(WitType::U8),
        Just(WitType::U32),
        Just(WitType::F32),
        Just(WitType::F64),
        Just(WitType::String),
        Just(WitType::Char),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| WitType::List { element: Box::new(t) }),
            inner.clone().prop_map(|t| WitType::Option { some: Box::new(t) }),
            prop::collection::vec(inner.clone(), 1..4).prop_map(|elements| WitType::Tuple { elements }),
            prop::collection::vec(inner, 1..4).prop_map(|tys| WitType::Record {
                name: None,
                fields: tys.into_iter().enumerate().map(|(i, ty)| Field { name: format!("f{i}"), ty }).collect(),
            }),
        ]
    })
}

fn arb_value(ty: &WitType) -> BoxedStrategy<WitValue> {
    match ty {
        WitType::Bool => any::<bool>().prop_map(WitValue::Bool).boxed(),
        WitType::S64 => any::<i64>().prop_map(WitValue::S64).boxed(),
        WitType::S8 => any::<i8>().prop_map(WitValue::S8).boxed(),
        WitType::U8 => any::<u8>().prop_map(WitValue::U8).boxed(),
        WitType::U32 => any::<u32>().prop_map(WitValue::U32).boxed(),
        WitType::F32 => any::<f32>().prop_filter("nan != nan", |x| !x.is_nan()).prop_map(WitValue::F32).boxed(),
        WitType::F64 => any::<f64>().prop_filter("nan != nan", |x| !x.is_nan()).prop_map(WitValue::F64).boxed(),
        WitType::String => ".*".prop_map(WitValue::String).boxed(),
        WitType::Char => any::<char>().prop_map(WitValue::Char).boxed(),
        WitType::List { element } => prop::collection::vec(arb_value(element), 0..4).prop_map(WitValue::List).boxed(),
        WitType::Option { some } => {
            prop::option::of(arb_value(some)).prop_map(|o| WitValue::Option(o.map(Box::new))).boxed()
        }
        WitType::Tuple { elements } => {
            elements.iter().map(arb_value).collect::<Vec<_>>().prop_map(WitValue::Tuple).boxed()
        }
        WitType::Record { fields, .. } => {
            let names: Vec<String> = fields.iter().map(|f| f.name.clone()).collect();
            fields
                .iter()
                .map(|f| arb_value(&f.ty))
                .collect::<Vec<_>>()
                .prop_map(move |vs| WitValue::Record(names.iter().cloned().zip(vs).collect()))
                .boxed()
        }
        _ => unreachable!("arb_type generates no {ty}"),
    }
}

/// The planner stands a sample in for a result it does not have yet: it
/// must be a value of the type, or literals beside it would be blamed.
#[test]
fn a_sample_is_a_value_of_its_type() {
    let variant = WitType::Variant {
        name: None,
        cases: vec![Case { name: "circle".into(), ty: Some(WitType::F64) }, Case { name: "dot".into(), ty: None }],
    };
    let types = [
        variant,
        WitType::Enum { name: None, cases: vec!["red".into(), "green".into()] },
        WitType::Flags { name: None, flags: vec!["read".into()] },
        WitType::Result { ok: None, err: Some(Box::new(WitType::String)) },
        WitType::Result { ok: Some(Box::new(summary())), err: None },
        WitType::Option { some: Box::new(WitType::Option { some: Box::new(WitType::U8) }) },
    ];
    for ty in types {
        assert_eq!(check(&ty.sample(), &ty, "x"), Ok(()), "{ty}");
    }
}

proptest! {
    #[test]
    fn a_sample_of_any_type_checks(ty in arb_type()) {
        prop_assert_eq!(check(&ty.sample(), &ty, "x"), Ok(()));
    }

    // Clients send arbitrary JSON for any parameter type: conversion either
    // succeeds (and then round-trips) or reports a mismatch; it never panics.
    #[test]
    fn arbitrary_json_against_any_type_converts_or_reports(ty in arb_type(), json in arbitrary_json(".{0,4}", "f[0-3]|some|ok|err|[a-z]{1,3}")) {
        if let Ok(value) = from_json(&json, &ty, "p") {
            let again = from_json(&to_json(&value), &ty, "p").map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again, value);
        }
    }

    // The planner's check and the runtime's conversion are one walk: they
    // accept the same JSON and report the same mismatch.
    #[test]
    fn checking_agrees_with_converting(ty in arb_type(), json in arbitrary_json(".{0,4}", "f[0-3]|some|ok|err|[a-z]{1,3}")) {
        prop_assert_eq!(check(&json, &ty, "p"), from_json(&json, &ty, "p").map(drop));
    }

    #[test]
    fn json_mapping_is_lossless(
        (ty, value) in arb_type().prop_flat_map(|t| { let v = arb_value(&t); (Just(t), v) })
    ) {
        let json = to_json(&value);
        let back = from_json(&json, &ty, "v").map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, value);
    }

    // The result limit is judged on this bound, so it must never be under
    // what is sent (escaped control characters are six bytes each).
    #[test]
    fn the_json_size_bound_is_never_under_the_encoded_size(
        (_, value) in arb_type().prop_flat_map(|t| { let v = arb_value(&t); (Just(t), v) })
    ) {
        let encoded = serde_json::to_string(&to_json(&value)).unwrap();
        prop_assert!(value.json_size_bound() >= encoded.len(), "{} < {encoded}", value.json_size_bound());
    }

    #[test]
    fn an_integer_s_json_size_is_exact(n in any::<i64>(), u in any::<u64>()) {
        prop_assert_eq!(WitValue::S64(n).json_size_bound(), n.to_string().len());
        prop_assert_eq!(WitValue::U64(u).json_size_bound(), u.to_string().len());
    }

    #[test]
    fn an_f32_is_written_in_its_shortest_form(x in any::<f32>().prop_filter("finite", |x| x.is_finite())) {
        let json = to_json(&WitValue::F32(x));
        prop_assert_eq!(json.as_f64().map(|y| y as f32), Some(x));
        prop_assert_eq!(json.as_f64().map(|y| (y as f32).to_string()), Some(x.to_string()));
    }

    #[test]
    fn a_string_s_json_size_is_exact(s in "(\\PC|[\\x00-\\x1f\"\\\\])*") {
        prop_assert_eq!(WitValue::String(s.clone()).json_size_bound(), serde_json::to_string(&s).unwrap().len());
    }
}

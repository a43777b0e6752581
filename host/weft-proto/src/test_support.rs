//! Generators shared by the property tests of this crate.

use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON: strings from `strings`, object keys from `keys` (regexes),
/// numbers integral and not, nested a few levels.
pub(crate) fn arbitrary_json(strings: &'static str, keys: &'static str) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        strings.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

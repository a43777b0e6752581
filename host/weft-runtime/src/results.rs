//! A call's result on its way from the guest's values to JSON: its size
//! checked against `max_result`, and the host memory that large results
//! take while they are converted bounded across the node.

use serde_json::Value;
use wasmtime::component::Val;
use weft_proto::wit::{self, WitValue};
use weft_proto::{ErrorKind, WeftError, WitType};

use crate::budget::Budget;
use crate::convert::from_val;
use crate::sandbox;

/// Host bytes from which a result counts as large: about 65,000 values.
const LARGE: usize = 2 << 20;

/// A result as the caller gets it: JSON, at most `limit` bytes, and a
/// `result`'s error as `GUEST_ERROR`.
pub(crate) fn answer(result: Val, returns_result: bool, qualified: &str, limit: usize) -> Result<Value, WeftError> {
    let value = from_val(result).map_err(|e| WeftError::internal(format!("{qualified}: {e}")))?;
    // A `result`'s error is the guest's answer too, bounded the same way.
    let (value, failed) = match (value, returns_result) {
        (WitValue::Result(Ok(ok)), true) => (ok.map(|b| *b), false),
        (WitValue::Result(Err(e)), true) => (e.map(|b| *b), true),
        (other, _) => (Some(other), false),
    };
    let size = value.as_ref().map_or(0, WitValue::json_size_bound);
    if size > limit {
        return Err(WeftError::new(
            ErrorKind::RESOURCE_EXHAUSTED,
            format!(
                "{qualified} returned {}about {size} bytes, over the result limit of {limit} bytes (limits.max_result); return less data or page it",
                if failed { "an error of " } else { "" },
            ),
        )
        .with("limit", limit)
        .with("size", size));
    }
    let value = value.as_ref().map_or(Value::Null, wit::to_json);
    if failed {
        let text = match &value {
            Value::String(s) => s.clone(),
            Value::Null => "(no detail)".into(),
            other => other.to_string(),
        };
        return Err(WeftError::new(
            ErrorKind::GUEST_ERROR,
            format!("{qualified} returned an error: {}", sandbox::truncate(&text, 1024)),
        )
        .with("error", value));
    }
    Ok(value)
}

/// The host bytes converting `v` takes, if it is large: the copy wasmtime
/// made (a `Val` per value, plus the bytes of strings and names), twice,
/// for the intermediate and the JSON built from it.
pub(crate) fn large(v: &Val) -> Option<usize> {
    let size = host_size(v, LARGE);
    (size >= LARGE).then(|| host_size(v, usize::MAX).saturating_mul(2))
}

/// Host bytes of `v` as wasmtime holds it, counted up to `stop_at`.
fn host_size(v: &Val, stop_at: usize) -> usize {
    fn add(v: &Val, total: &mut usize, stop_at: usize) {
        *total = total.saturating_add(size_of::<Val>());
        // A name copied per value: its `String`, on a heap block of at least 32 bytes.
        let text = |s: &String| s.len().max(32) + size_of::<String>();
        let inner: Box<dyn Iterator<Item = &Val> + '_> = match v {
            Val::String(s) | Val::Enum(s) | Val::Variant(s, None) => {
                *total = total.saturating_add(s.len());
                return;
            }
            Val::Flags(f) => {
                *total = total.saturating_add(f.iter().map(text).sum());
                return;
            }
            Val::List(xs) | Val::FixedLengthList(xs) | Val::Tuple(xs) => Box::new(xs.iter()),
            Val::Record(fs) => {
                *total = total.saturating_add(fs.iter().map(|(k, _)| text(k)).sum());
                Box::new(fs.iter().map(|(_, x)| x))
            }
            Val::Variant(s, Some(x)) => {
                *total = total.saturating_add(s.len());
                Box::new(std::iter::once(x.as_ref()))
            }
            Val::Option(Some(x)) | Val::Result(Ok(Some(x)) | Err(Some(x))) => Box::new(std::iter::once(x.as_ref())),
            _ => return,
        };
        for x in inner {
            if *total >= stop_at {
                return;
            }
            add(x, total, stop_at);
        }
    }
    let mut total = 0;
    add(v, &mut total, stop_at);
    total
}

/// By how much a function's hostcall fuel is cut so that copying its
/// result out stays within `RuntimeConfig::lift_budget`. wasmtime charges
/// a set flag the length of its name, but holds a `String` for it, in a
/// `Vec` that may have doubled, on a heap block of at least 32 bytes: up to
/// 80 bytes for a one-letter flag. Other values take at most about twice
/// what they are charged, which the budget's 8x covers.
pub(crate) fn lift_divisor(result: Option<&WitType>) -> usize {
    fn worst(ty: &WitType) -> usize {
        let all = |tys: &mut dyn Iterator<Item = &WitType>| tys.map(worst).max().unwrap_or(1);
        match ty {
            WitType::Flags { flags, .. } => {
                let shortest = flags.iter().map(String::len).min().unwrap_or(1).max(1);
                (2 * size_of::<String>() + (shortest + 23).max(32)).div_ceil(shortest)
            }
            WitType::List { element } => worst(element),
            WitType::Option { some } => worst(some),
            WitType::Record { fields, .. } => all(&mut fields.iter().map(|f| &f.ty)),
            WitType::Tuple { elements } => all(&mut elements.iter()),
            WitType::Variant { cases, .. } => all(&mut cases.iter().filter_map(|c| c.ty.as_ref())),
            WitType::Result { ok, err } => all(&mut ok.iter().chain(err).map(Box::as_ref)),
            _ => 1,
        }
    }
    result.map_or(1, |ty| (worst(ty) / 2).max(1))
}

/// The error of a call whose large result found no room in the node's
/// conversion budget: `limits.max_result` x 8 bounds each call's copy, but
/// many calls returning at once would each hold theirs, so large results
/// being converted share one budget, and past it a call fails at once.
pub(crate) fn refusal(conversions: &Budget, qualified: &str, bytes: usize) -> WeftError {
    let mib = |b: usize| b.div_ceil(1 << 20);
    let why = if bytes > conversions.limit() {
        "more than the node has for that at all; return less data".to_owned()
    } else {
        format!(
            "other large results hold {} of the node's {} MiB for that now; retry shortly, or return less data",
            mib(conversions.used()),
            mib(conversions.limit())
        )
    };
    WeftError::new(
        ErrorKind::RESOURCE_EXHAUSTED,
        format!(
            "{qualified} returned a result that takes about {} MiB of host memory to turn into JSON, and {why}",
            mib(bytes)
        ),
    )
    .with("limit", conversions.limit())
    .with("size", bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_in_a_result_cut_its_copy_budget_by_their_host_cost() {
        let flags =
            |names: &[&str]| WitType::Flags { name: None, flags: names.iter().map(|n| (*n).to_owned()).collect() };
        assert_eq!(lift_divisor(None), 1);
        assert_eq!(lift_divisor(Some(&WitType::String)), 1);
        let short = WitType::List { element: Box::new(flags(&["a", "read"])) };
        assert_eq!(lift_divisor(Some(&short)), 40, "one-letter flags: 80 bytes each, charged 1");
        let long = WitType::Option { some: Box::new(flags(&["read-only", "hidden"])) };
        assert_eq!(lift_divisor(Some(&long)), 7);
        let nested = WitType::Result { ok: None, err: Some(Box::new(WitType::Tuple { elements: vec![short] })) };
        assert_eq!(lift_divisor(Some(&nested)), 40);
    }

    #[test]
    fn a_result_is_large_by_its_values_or_its_string_bytes() {
        assert_eq!(large(&Val::String("hi".into())), None);
        let text = Val::String("x".repeat(LARGE));
        assert_eq!(large(&text), Some(2 * (LARGE + size_of::<Val>())));
        let empties = |n| Val::List(vec![Val::List(vec![]); n]);
        assert_eq!(large(&empties(1000)), None);
        let values = 1 << 17;
        assert_eq!(large(&empties(values)), Some(2 * (values + 1) * size_of::<Val>()));
        let deep = Val::Option(Some(Box::new(Val::Record(vec![("xs".into(), empties(values))]))));
        assert!(large(&deep).is_some());
    }

    #[test]
    fn a_large_result_without_room_is_told_whether_to_retry() {
        let conversions = Budget::new(100);
        let _held = conversions.charge(60).unwrap();
        let e = refusal(&conversions, "p/f", 50);
        assert_eq!(e.kind, ErrorKind::RESOURCE_EXHAUSTED);
        assert!(e.message.contains("about 1 MiB") && e.message.contains("retry shortly"), "{e}");
        let never = refusal(&conversions, "p/f", 50 << 20);
        assert!(never.message.contains("about 50 MiB") && !never.message.contains("retry"), "{never}");
    }
}

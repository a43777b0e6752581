//! `WitValue` (plain data, from weft-proto) <-> wasmtime `Val`, one to one.

use wasmtime::component::Val;
use weft_proto::wit::WitValue;

pub(crate) fn to_val(v: WitValue) -> Val {
    let boxed = |x: Option<Box<WitValue>>| x.map(|x| Box::new(to_val(*x)));
    match v {
        WitValue::Bool(x) => Val::Bool(x),
        WitValue::S8(x) => Val::S8(x),
        WitValue::S16(x) => Val::S16(x),
        WitValue::S32(x) => Val::S32(x),
        WitValue::S64(x) => Val::S64(x),
        WitValue::U8(x) => Val::U8(x),
        WitValue::U16(x) => Val::U16(x),
        WitValue::U32(x) => Val::U32(x),
        WitValue::U64(x) => Val::U64(x),
        WitValue::F32(x) => Val::Float32(x),
        WitValue::F64(x) => Val::Float64(x),
        WitValue::Char(x) => Val::Char(x),
        WitValue::String(x) => Val::String(x),
        WitValue::List(xs) => Val::List(xs.into_iter().map(to_val).collect()),
        WitValue::Record(fs) => Val::Record(fs.into_iter().map(|(k, x)| (k, to_val(x))).collect()),
        WitValue::Tuple(xs) => Val::Tuple(xs.into_iter().map(to_val).collect()),
        WitValue::Variant(n, x) => Val::Variant(n, boxed(x)),
        WitValue::Enum(n) => Val::Enum(n),
        WitValue::Flags(f) => Val::Flags(f),
        WitValue::Option(x) => Val::Option(boxed(x)),
        WitValue::Result(r) => Val::Result(r.map(boxed).map_err(boxed)),
    }
}

/// Converts a guest result. Handles and async values cannot leave the
/// instance; functions using them are never called through JSON, so meeting
/// one here is an internal error.
pub(crate) fn from_val(v: Val) -> Result<WitValue, String> {
    let boxed = |x: Option<Box<Val>>| -> Result<Option<Box<WitValue>>, String> {
        x.map(|x| from_val(*x).map(Box::new)).transpose()
    };
    let all = |xs: Vec<Val>| xs.into_iter().map(from_val).collect::<Result<Vec<_>, _>>();
    Ok(match v {
        Val::Bool(x) => WitValue::Bool(x),
        Val::S8(x) => WitValue::S8(x),
        Val::S16(x) => WitValue::S16(x),
        Val::S32(x) => WitValue::S32(x),
        Val::S64(x) => WitValue::S64(x),
        Val::U8(x) => WitValue::U8(x),
        Val::U16(x) => WitValue::U16(x),
        Val::U32(x) => WitValue::U32(x),
        Val::U64(x) => WitValue::U64(x),
        Val::Float32(x) => WitValue::F32(x),
        Val::Float64(x) => WitValue::F64(x),
        Val::Char(x) => WitValue::Char(x),
        Val::String(x) => WitValue::String(x),
        Val::List(xs) | Val::FixedLengthList(xs) => WitValue::List(all(xs)?),
        Val::Record(fs) => {
            WitValue::Record(fs.into_iter().map(|(k, x)| from_val(x).map(|x| (k, x))).collect::<Result<_, _>>()?)
        }
        Val::Tuple(xs) => WitValue::Tuple(all(xs)?),
        Val::Variant(n, x) => WitValue::Variant(n, boxed(x)?),
        Val::Enum(n) => WitValue::Enum(n),
        Val::Flags(f) => WitValue::Flags(f),
        Val::Option(x) => WitValue::Option(boxed(x)?),
        Val::Result(r) => WitValue::Result(match r {
            Ok(x) => Ok(boxed(x)?),
            Err(x) => Err(boxed(x)?),
        }),
        Val::Map(_) | Val::Resource(_) | Val::Future(_) | Val::Stream(_) | Val::ErrorContext(_) => {
            return Err("the guest returned a value that cannot be represented as JSON".into());
        }
    })
}

//! Request JSON -> wasmtime `Val`, and `Val` -> `WitValue` (plain data, from weft-proto) for results.

use wasmtime::component::Val;
use weft_proto::wit::{Build, Scalar, WitValue};

/// Builds wasmtime values straight from request JSON (weft-proto's one
/// walk checks it against the parameter's WIT type on the way).
pub(crate) struct ToVal;

impl Build for ToVal {
    type Out = Val;
    fn scalar(&self, x: Scalar<'_>) -> Val {
        match x {
            Scalar::Bool(x) => Val::Bool(x),
            Scalar::S8(x) => Val::S8(x),
            Scalar::S16(x) => Val::S16(x),
            Scalar::S32(x) => Val::S32(x),
            Scalar::S64(x) => Val::S64(x),
            Scalar::U8(x) => Val::U8(x),
            Scalar::U16(x) => Val::U16(x),
            Scalar::U32(x) => Val::U32(x),
            Scalar::U64(x) => Val::U64(x),
            Scalar::F32(x) => Val::Float32(x),
            Scalar::F64(x) => Val::Float64(x),
            Scalar::Char(x) => Val::Char(x),
            Scalar::String(x) => Val::String(x.to_owned()),
            Scalar::Enum(x) => Val::Enum(x.to_owned()),
        }
    }
    fn list(&self, items: Vec<Val>) -> Val {
        Val::List(items)
    }
    fn tuple(&self, items: Vec<Val>) -> Val {
        Val::Tuple(items)
    }
    fn record(&self, fields: Vec<(&str, Val)>) -> Val {
        Val::Record(fields.into_iter().map(|(k, x)| (k.to_owned(), x)).collect())
    }
    fn variant(&self, case: &str, payload: Option<Val>) -> Val {
        Val::Variant(case.to_owned(), payload.map(Box::new))
    }
    fn flags(&self, set: Vec<&str>) -> Val {
        Val::Flags(set.into_iter().map(str::to_owned).collect())
    }
    fn option(&self, x: Option<Val>) -> Val {
        Val::Option(x.map(Box::new))
    }
    fn result(&self, r: Result<Option<Val>, Option<Val>>) -> Val {
        Val::Result(r.map(|x| x.map(Box::new)).map_err(|x| x.map(Box::new)))
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

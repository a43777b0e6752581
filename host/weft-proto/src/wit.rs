//! WIT types and values as plain data, and the one JSON <-> WIT mapping of the
//! spec. JSON arguments are checked and converted by one walk (`convert`)
//! into whatever a `Build` makes of them: wasmtime values in the runtime,
//! nothing in the planner's checks. Results come back as `WitValue`. Keeping
//! the mapping here (pure, no wasmtime) gives it one implementation that is
//! unit- and property-tested on its own.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// A WIT type. Named types (records, variants, enums, flags) keep their WIT
/// name so signatures print as the author wrote them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WitType {
    Bool,
    S8,
    S16,
    S32,
    S64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
    Char,
    String,
    List {
        element: Box<WitType>,
    },
    Record {
        name: Option<String>,
        fields: Vec<Field>,
    },
    Tuple {
        elements: Vec<WitType>,
    },
    Variant {
        name: Option<String>,
        cases: Vec<Case>,
    },
    Enum {
        name: Option<String>,
        cases: Vec<String>,
    },
    Flags {
        name: Option<String>,
        flags: Vec<String>,
    },
    Option {
        some: Box<WitType>,
    },
    Result {
        ok: Option<Box<WitType>>,
        err: Option<Box<WitType>>,
    },
    /// A resource handle (`own<T>` / `borrow<T>`): cannot cross the JSON boundary.
    Resource {
        name: String,
        /// `borrow<T>` rather than `own<T>`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        borrowed: bool,
    },
    /// A type Weft does not carry over JSON (future, stream, error-context).
    Unsupported {
        name: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: WitType,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: Option<WitType>,
}

/// The signature of an exported function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionSig {
    pub params: Vec<Field>,
    pub result: Option<WitType>,
}

impl FunctionSig {
    /// True when a value of this signature cannot travel as JSON, so the
    /// function stays local-only.
    pub fn uses_handles(&self) -> bool {
        self.params.iter().map(|p| &p.ty).chain(&self.result).any(WitType::uses_handles)
    }

    /// The type a caller receives on success: `T` of a `result<T, E>`
    /// return, else the return type itself (`None` for no value).
    pub fn success_type(&self) -> Option<&WitType> {
        match &self.result {
            Some(WitType::Result { ok, .. }) => ok.as_deref(),
            other => other.as_ref(),
        }
    }
}

impl WitType {
    pub fn uses_handles(&self) -> bool {
        match self {
            WitType::Resource { .. } | WitType::Unsupported { .. } => true,
            WitType::List { element } | WitType::Option { some: element } => element.uses_handles(),
            WitType::Record { fields, .. } => fields.iter().any(|f| f.ty.uses_handles()),
            WitType::Tuple { elements } => elements.iter().any(WitType::uses_handles),
            WitType::Variant { cases, .. } => cases.iter().filter_map(|c| c.ty.as_ref()).any(WitType::uses_handles),
            WitType::Result { ok, err } => ok.iter().chain(err.iter()).any(|t| t.uses_handles()),
            _ => false,
        }
    }

    /// One value of this type as JSON (zeros, empty strings and lists, the
    /// first case, `none`): what a planner puts where a result of this type
    /// will go, to check what surrounds it before the result exists.
    pub fn sample(&self) -> Value {
        use WitType as T;
        let case = |name: &str, payload: Option<&WitType>| match payload {
            Some(t) => Value::Object([(name.to_owned(), t.sample())].into_iter().collect()),
            None => Value::String(name.to_owned()),
        };
        match self {
            T::Bool => Value::Bool(false),
            T::S8 | T::S16 | T::S32 | T::S64 | T::U8 | T::U16 | T::U32 | T::U64 => Value::from(0),
            T::F32 | T::F64 => Value::from(0.0),
            T::Char => Value::from("a"),
            T::String => Value::from(""),
            T::List { .. } | T::Flags { .. } => Value::Array(Vec::new()),
            T::Record { fields, .. } => Value::Object(fields.iter().map(|f| (f.name.clone(), f.ty.sample())).collect()),
            T::Tuple { elements } => Value::Array(elements.iter().map(WitType::sample).collect()),
            T::Variant { cases, .. } => cases.first().map_or(Value::Null, |c| case(&c.name, c.ty.as_ref())),
            T::Enum { cases, .. } => cases.first().map_or(Value::Null, |c| Value::from(c.as_str())),
            T::Option { .. } => Value::Null,
            T::Result { ok, .. } => case("ok", ok.as_deref()),
            // No function with these is callable: nothing fits them.
            T::Resource { .. } | T::Unsupported { .. } => Value::Null,
        }
    }

    /// Looks up a record field by name (for `{"$ref": .., "path": ..}`).
    pub fn field(&self, name: &str) -> Option<&WitType> {
        match self {
            WitType::Record { fields, .. } => fields.iter().find(|f| f.name == name).map(|f| &f.ty),
            _ => None,
        }
    }

    /// Whether every value of `self` is accepted where `target` is expected
    /// once it has travelled as JSON. Names of named types do not matter.
    pub fn fits(&self, target: &WitType) -> bool {
        use WitType as T;
        match (self, target) {
            (T::List { element: a }, T::List { element: b }) => a.fits(b),
            // `some(x)` travels as x, unless x is itself an option (then as
            // `{"some": x}`): a `T` is a valid `option<T>`, but an
            // `option<T>` is no `option<option<T>>`.
            (T::Option { some: a }, T::Option { some: b }) => {
                a.fits(b) && (matches!(**a, T::Option { .. }) || !matches!(**b, T::Option { .. }))
            }
            (a, T::Option { some: b }) if !matches!(**b, T::Option { .. }) => a.fits(b),
            (T::Tuple { elements: a }, T::Tuple { elements: b }) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.fits(y))
            }
            (T::Record { fields: a, .. }, T::Record { fields: b, .. }) => {
                a.len() == b.len() && a.iter().all(|f| b.iter().any(|g| g.name == f.name && f.ty.fits(&g.ty)))
            }
            (T::Enum { cases: a, .. }, T::Enum { cases: b, .. }) => a.iter().all(|c| b.contains(c)),
            (T::Flags { flags: a, .. }, T::Flags { flags: b, .. }) => a.iter().all(|c| b.contains(c)),
            (T::Variant { cases: a, .. }, T::Variant { cases: b, .. }) => a.iter().all(|c| {
                b.iter().any(|d| {
                    d.name == c.name
                        && match (&c.ty, &d.ty) {
                            (None, None) => true,
                            (Some(x), Some(y)) => x.fits(y),
                            _ => false,
                        }
                })
            }),
            (T::Result { ok: a, err: e }, T::Result { ok: b, err: f }) => opt_fits(a, b) && opt_fits(e, f),
            (a, b) if a.is_integer() && b.is_integer() => {
                let (amin, amax) = a.int_range();
                let (bmin, bmax) = b.int_range();
                amin >= bmin && amax <= bmax
            }
            // Integers travel as JSON numbers, which a float parameter accepts.
            (T::F32 | T::F64, T::F32 | T::F64) => true,
            (a, T::F32 | T::F64) if a.is_integer() => true,
            (a, b) => a == b,
        }
    }

    fn is_integer(&self) -> bool {
        matches!(
            self,
            WitType::S8
                | WitType::S16
                | WitType::S32
                | WitType::S64
                | WitType::U8
                | WitType::U16
                | WitType::U32
                | WitType::U64
        )
    }

    fn int_range(&self) -> (i128, i128) {
        match self {
            WitType::S8 => (i8::MIN.into(), i8::MAX.into()),
            WitType::S16 => (i16::MIN.into(), i16::MAX.into()),
            WitType::S32 => (i32::MIN.into(), i32::MAX.into()),
            WitType::S64 => (i64::MIN.into(), i64::MAX.into()),
            WitType::U8 => (0, u8::MAX.into()),
            WitType::U16 => (0, u16::MAX.into()),
            WitType::U32 => (0, u32::MAX.into()),
            _ => (0, u64::MAX.into()),
        }
    }

    /// `record summary { count: u32, ... }` lines for every named type used
    /// by `self`, in first-use order, without duplicates.
    pub fn collect_definitions(&self, out: &mut Vec<String>) {
        fn push(out: &mut Vec<String>, def: String) {
            if !out.contains(&def) {
                out.push(def);
            }
        }
        match self {
            WitType::Record { name: Some(n), fields } => {
                for f in fields {
                    f.ty.collect_definitions(out);
                }
                let body: Vec<String> = fields.iter().map(|f| format!("{}: {}", f.name, f.ty)).collect();
                push(out, format!("record {n} {{ {} }}", body.join(", ")));
            }
            WitType::Variant { name: Some(n), cases } => {
                for t in cases.iter().filter_map(|c| c.ty.as_ref()) {
                    t.collect_definitions(out);
                }
                let body: Vec<String> = cases
                    .iter()
                    .map(|c| match &c.ty {
                        Some(t) => format!("{}({t})", c.name),
                        None => c.name.clone(),
                    })
                    .collect();
                push(out, format!("variant {n} {{ {} }}", body.join(", ")));
            }
            WitType::Enum { name: Some(n), cases } => push(out, format!("enum {n} {{ {} }}", cases.join(", "))),
            WitType::Flags { name: Some(n), flags } => push(out, format!("flags {n} {{ {} }}", flags.join(", "))),
            WitType::List { element } | WitType::Option { some: element } => element.collect_definitions(out),
            WitType::Tuple { elements } => elements.iter().for_each(|t| t.collect_definitions(out)),
            WitType::Result { ok, err } => ok.iter().chain(err.iter()).for_each(|t| t.collect_definitions(out)),
            WitType::Record { name: None, fields } => fields.iter().for_each(|f| f.ty.collect_definitions(out)),
            WitType::Variant { name: None, cases } => {
                cases.iter().filter_map(|c| c.ty.as_ref()).for_each(|t| t.collect_definitions(out))
            }
            _ => {}
        }
    }
}

fn opt_fits(a: &Option<Box<WitType>>, b: &Option<Box<WitType>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => x.fits(y),
        _ => false,
    }
}

impl fmt::Display for WitType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(f: &mut fmt::Formatter<'_>, items: impl Iterator<Item = String>) -> fmt::Result {
            f.write_str(&items.collect::<Vec<_>>().join(", "))
        }
        match self {
            WitType::Bool => f.write_str("bool"),
            WitType::S8 => f.write_str("s8"),
            WitType::S16 => f.write_str("s16"),
            WitType::S32 => f.write_str("s32"),
            WitType::S64 => f.write_str("s64"),
            WitType::U8 => f.write_str("u8"),
            WitType::U16 => f.write_str("u16"),
            WitType::U32 => f.write_str("u32"),
            WitType::U64 => f.write_str("u64"),
            WitType::F32 => f.write_str("f32"),
            WitType::F64 => f.write_str("f64"),
            WitType::Char => f.write_str("char"),
            WitType::String => f.write_str("string"),
            WitType::List { element } => write!(f, "list<{element}>"),
            WitType::Option { some } => write!(f, "option<{some}>"),
            WitType::Tuple { elements } => {
                f.write_str("tuple<")?;
                list(f, elements.iter().map(ToString::to_string))?;
                f.write_str(">")
            }
            WitType::Result { ok, err } => match (ok, err) {
                (None, None) => f.write_str("result"),
                (Some(o), None) => write!(f, "result<{o}>"),
                (None, Some(e)) => write!(f, "result<_, {e}>"),
                (Some(o), Some(e)) => write!(f, "result<{o}, {e}>"),
            },
            WitType::Record { name: Some(n), .. }
            | WitType::Variant { name: Some(n), .. }
            | WitType::Enum { name: Some(n), .. }
            | WitType::Flags { name: Some(n), .. } => f.write_str(n),
            WitType::Record { name: None, fields } => {
                f.write_str("record { ")?;
                list(f, fields.iter().map(|x| format!("{}: {}", x.name, x.ty)))?;
                f.write_str(" }")
            }
            WitType::Variant { name: None, cases } => {
                f.write_str("variant { ")?;
                list(
                    f,
                    cases.iter().map(|c| match &c.ty {
                        Some(t) => format!("{}({t})", c.name),
                        None => c.name.clone(),
                    }),
                )?;
                f.write_str(" }")
            }
            WitType::Enum { name: None, cases } => write!(f, "enum {{ {} }}", cases.join(", ")),
            WitType::Flags { name: None, flags } => write!(f, "flags {{ {} }}", flags.join(", ")),
            WitType::Resource { name, borrowed } => write!(f, "{}<{name}>", if *borrowed { "borrow" } else { "own" }),
            WitType::Unsupported { name } => f.write_str(name),
        }
    }
}

impl fmt::Display for FunctionSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params: Vec<String> = self.params.iter().map(|p| format!("{}: {}", p.name, p.ty)).collect();
        write!(f, "func({})", params.join(", "))?;
        match &self.result {
            Some(t) => write!(f, " -> {t}"),
            None => Ok(()),
        }
    }
}

/// A WIT value as plain data; mirrors wasmtime's component `Val`.
#[derive(Clone, Debug, PartialEq)]
pub enum WitValue {
    Bool(bool),
    S8(i8),
    S16(i16),
    S32(i32),
    S64(i64),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Char(char),
    String(String),
    List(Vec<WitValue>),
    Record(Vec<(String, WitValue)>),
    Tuple(Vec<WitValue>),
    Variant(String, Option<Box<WitValue>>),
    Enum(String),
    Flags(Vec<String>),
    Option(Option<Box<WitValue>>),
    Result(Result<Option<Box<WitValue>>, Option<Box<WitValue>>>),
}

/// A JSON value that does not fit a WIT type: where, what was expected, what came.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{path}: expected {expected}, got {found}")]
pub struct Mismatch {
    pub path: String,
    pub expected: String,
    pub found: String,
}

fn describe(v: &Value) -> String {
    let text = v.to_string();
    let kind = match v {
        Value::Null => return "null".into(),
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(a) => return format!("an array of {} elements", a.len()),
        Value::Object(_) => "object",
    };
    if text.len() <= 40 {
        format!("{kind} {text}")
    } else {
        format!("{kind} {}...", &text[..text.floor_char_boundary(37)])
    }
}

/// A WIT value read from JSON, before it is built: the leaves of `Build`.
#[derive(Clone, Copy, Debug)]
pub enum Scalar<'a> {
    Bool(bool),
    S8(i8),
    S16(i16),
    S32(i32),
    S64(i64),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Char(char),
    String(&'a str),
    Enum(&'a str),
}

/// What a conversion of JSON builds once a value fits its WIT type: the
/// runtime builds wasmtime's `Val`s, the planner nothing at all (`Check`).
/// One walk validates for every target, so JSON goes straight to the
/// value the caller needs, without an intermediate tree.
pub trait Build {
    type Out;
    fn scalar(&self, x: Scalar<'_>) -> Self::Out;
    fn list(&self, items: Vec<Self::Out>) -> Self::Out;
    fn tuple(&self, items: Vec<Self::Out>) -> Self::Out;
    fn record(&self, fields: Vec<(&str, Self::Out)>) -> Self::Out;
    fn variant(&self, case: &str, payload: Option<Self::Out>) -> Self::Out;
    fn flags(&self, set: Vec<&str>) -> Self::Out;
    fn option(&self, x: Option<Self::Out>) -> Self::Out;
    fn result(&self, r: Result<Option<Self::Out>, Option<Self::Out>>) -> Self::Out;
}

/// Builds nothing: checks that JSON fits a type without allocating values.
pub struct Check;

impl Build for Check {
    type Out = ();
    fn scalar(&self, _: Scalar<'_>) {}
    fn list(&self, _: Vec<()>) {}
    fn tuple(&self, _: Vec<()>) {}
    fn record(&self, _: Vec<(&str, ())>) {}
    fn variant(&self, _: &str, _: Option<()>) {}
    fn flags(&self, _: Vec<&str>) {}
    fn option(&self, _: Option<()>) {}
    fn result(&self, _: Result<Option<()>, Option<()>>) {}
}

/// Checks that JSON fits a WIT type; `path` names the place for messages.
pub fn check(v: &Value, ty: &WitType, path: &str) -> Result<(), Mismatch> {
    convert(v, ty, path, &Check)
}

/// Converts JSON that fits `ty` into what `build` makes of it; `path` names
/// the place for error messages (e.g. the parameter name).
pub fn convert<B: Build>(v: &Value, ty: &WitType, path: &str, build: &B) -> Result<B::Out, Mismatch> {
    walk(v, ty, At::Root(path), build)
}

/// Where a value sits inside an argument. Rendered only for a mismatch, so a
/// long list costs no path string per element.
#[derive(Clone, Copy)]
enum At<'a> {
    Root(&'a str),
    Index(&'a At<'a>, usize),
    Field(&'a At<'a>, &'a str),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Root(path) => f.write_str(path),
            At::Index(up, i) => write!(f, "{up}[{i}]"),
            At::Field(up, name) => write!(f, "{up}.{name}"),
        }
    }
}

/// WIT names are kebab-case; JSON habits are snake_case or camelCase.
fn kebab_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        match c {
            '_' => out.push('-'),
            c if c.is_ascii_uppercase() => {
                if i > 0 && !out.ends_with('-') {
                    out.push('-');
                }
                out.push(c.to_ascii_lowercase());
            }
            c => out.push(c),
        }
    }
    out
}

fn walk<B: Build>(v: &Value, ty: &WitType, at: At<'_>, b: &B) -> Result<B::Out, Mismatch> {
    let fail = |expected: String| Mismatch { path: at.to_string(), expected, found: describe(v) };
    let int = |min: i128, max: i128| -> Result<i128, Mismatch> {
        let n = match v {
            // JSON `-0` is an integer, which serde_json keeps as the float -0.0.
            Value::Number(n) if n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()) => Some(0),
            Value::Number(n) => n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)),
            Value::String(s) => s.trim().parse::<i128>().ok(),
            _ => None,
        };
        n.filter(|n| (min..=max).contains(n)).ok_or_else(|| fail(format!("{ty} (an integer from {min} to {max})")))
    };
    let float = || -> Result<f64, Mismatch> {
        match v {
            Value::Number(n) => n.as_f64().ok_or_else(|| fail(ty.to_string())),
            Value::String(s) => match s.as_str() {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                _ => Err(fail(format!("{ty} (a number, or \"NaN\", \"Infinity\", \"-Infinity\")"))),
            },
            _ => Err(fail(ty.to_string())),
        }
    };
    let (lo, hi) = if ty.is_integer() { ty.int_range() } else { (0, 0) };
    let scalar = |x: Scalar<'_>| Ok(b.scalar(x));
    match ty {
        WitType::Bool => scalar(Scalar::Bool(v.as_bool().ok_or_else(|| fail("bool".into()))?)),
        WitType::S8 => scalar(Scalar::S8(int(lo, hi)? as i8)),
        WitType::S16 => scalar(Scalar::S16(int(lo, hi)? as i16)),
        WitType::S32 => scalar(Scalar::S32(int(lo, hi)? as i32)),
        WitType::S64 => scalar(Scalar::S64(int(lo, hi)? as i64)),
        WitType::U8 => scalar(Scalar::U8(int(lo, hi)? as u8)),
        WitType::U16 => scalar(Scalar::U16(int(lo, hi)? as u16)),
        WitType::U32 => scalar(Scalar::U32(int(lo, hi)? as u32)),
        WitType::U64 => scalar(Scalar::U64(int(lo, hi)? as u64)),
        WitType::F32 => {
            let x = float()?;
            if x.is_finite() && !(x as f32).is_finite() {
                return Err(fail("f32 (a number no larger than 3.4028235e38 either way)".into()));
            }
            scalar(Scalar::F32(x as f32))
        }
        WitType::F64 => scalar(Scalar::F64(float()?)),
        WitType::Char => {
            let s = v.as_str().ok_or_else(|| fail("char (a one-character string)".into()))?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => scalar(Scalar::Char(c)),
                (Some(_), Some(_)) => Err(fail(format!(
                    "char (a one-character string; this one has {} Unicode scalar values)",
                    s.chars().count()
                ))),
                _ => Err(fail("char (a one-character string)".into())),
            }
        }
        WitType::String => scalar(Scalar::String(v.as_str().ok_or_else(|| fail("string".into()))?)),
        WitType::List { element } => {
            let items = v.as_array().ok_or_else(|| fail(format!("{ty} (an array)")))?;
            let items = items.iter().enumerate().map(|(i, x)| walk(x, element, At::Index(&at, i), b));
            Ok(b.list(items.collect::<Result<_, _>>()?))
        }
        WitType::Tuple { elements } => {
            let items = v
                .as_array()
                .filter(|a| a.len() == elements.len())
                .ok_or_else(|| fail(format!("{ty} (an array of {} elements)", elements.len())))?;
            let items = items.iter().zip(elements).enumerate().map(|(i, (x, t))| walk(x, t, At::Index(&at, i), b));
            Ok(b.tuple(items.collect::<Result<_, _>>()?))
        }
        WitType::Record { fields, .. } => {
            let obj = v.as_object().ok_or_else(|| fail(format!("{ty} (an object)")))?;
            // Keys are unique: all are fields when as many are found. (The
            // search for the odd one out is quadratic, but only on the way out.)
            let known = fields.iter().filter(|f| obj.contains_key(&f.name)).count();
            if known < obj.len()
                && let Some(extra) = obj.keys().find(|k| !fields.iter().any(|f| &f.name == *k))
            {
                let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                let kebab = kebab_case(extra);
                let hint =
                    names.iter().find(|n| **n == kebab).map_or_else(String::new, |n| format!("; did you mean {n:?}?"));
                return Err(Mismatch {
                    path: At::Field(&at, extra).to_string(),
                    expected: format!("one of the fields of {ty} ({})", names.join(", ")),
                    found: format!("a field {extra:?} it does not have{hint}"),
                });
            }
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                let here = At::Field(&at, &f.name);
                let value = match (obj.get(&f.name), &f.ty) {
                    (Some(x), t) => walk(x, t, here, b)?,
                    (None, WitType::Option { .. }) => b.option(None),
                    (None, t) => {
                        return Err(Mismatch {
                            path: here.to_string(),
                            expected: t.to_string(),
                            found: "nothing (missing field)".into(),
                        });
                    }
                };
                out.push((f.name.as_str(), value));
            }
            Ok(b.record(out))
        }
        WitType::Enum { cases, .. } => match v.as_str() {
            Some(s) if cases.iter().any(|c| c == s) => scalar(Scalar::Enum(s)),
            _ => Err(fail(format!("one of {}", quoted(cases)))),
        },
        WitType::Flags { flags, .. } => {
            let items = v.as_array().ok_or_else(|| fail(format!("an array of flags from {}", quoted(flags))))?;
            let mut set = Vec::new();
            for (i, x) in items.iter().enumerate() {
                match x.as_str() {
                    Some(s) if flags.iter().any(|f| f == s) => {
                        if !set.contains(&s) {
                            set.push(s);
                        }
                    }
                    _ => {
                        return Err(Mismatch {
                            path: At::Index(&at, i).to_string(),
                            expected: format!("one of the flags {}", quoted(flags)),
                            found: describe(x),
                        });
                    }
                }
            }
            Ok(b.flags(set))
        }
        WitType::Variant { cases, .. } => {
            let expected = || {
                let names = cases.iter().map(|c| &c.name);
                format!("a case of {ty}: \"case\" or {{\"case\": payload}} with case in {}", quoted(names))
            };
            let (name, payload) = match v {
                Value::String(s) => (s.as_str(), None),
                Value::Object(o) if o.len() == 1 => {
                    let (k, x) = o.iter().next().ok_or_else(|| fail(expected()))?;
                    (k.as_str(), Some(x))
                }
                _ => return Err(fail(expected())),
            };
            let case = cases.iter().find(|c| c.name == name).ok_or_else(|| fail(expected()))?;
            let value = match (&case.ty, payload) {
                (None, None) | (None, Some(Value::Null)) => None,
                (Some(t), Some(x)) => Some(walk(x, t, At::Field(&at, name), b)?),
                (Some(t), None) => return Err(fail(format!("{{\"{name}\": {t}}}"))),
                (None, Some(_)) => return Err(fail(format!("\"{name}\" (this case has no payload)"))),
            };
            Ok(b.variant(name, value))
        }
        WitType::Option { some } => match (v, some.as_ref()) {
            (Value::Null, _) => Ok(b.option(None)),
            (_, WitType::Option { .. }) => {
                let inner = v
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .and_then(|o| o.get("some"))
                    .ok_or_else(|| fail(format!("{ty} (null or {{\"some\": value}})")))?;
                Ok(b.option(Some(walk(inner, some, At::Field(&at, "some"), b)?)))
            }
            (_, t) => Ok(b.option(Some(walk(v, t, at, b)?))),
        },
        WitType::Result { ok, err } => {
            let expected = || format!("{ty} ({{\"ok\": ..}} or {{\"err\": ..}})");
            let (case, payload) = match v {
                Value::String(s) if s == "ok" || s == "err" => (s.as_str(), None),
                Value::Object(o) if o.len() == 1 => {
                    let (k, x) = o.iter().next().ok_or_else(|| fail(expected()))?;
                    (k.as_str(), Some(x))
                }
                _ => return Err(fail(expected())),
            };
            let payload = |t: &Option<Box<WitType>>| -> Result<Option<B::Out>, Mismatch> {
                match (t, payload) {
                    (None, None | Some(Value::Null)) => Ok(None),
                    (Some(t), Some(x)) => Ok(Some(walk(x, t, At::Field(&at, case), b)?)),
                    _ => Err(fail(expected())),
                }
            };
            match case {
                "ok" => Ok(b.result(Ok(payload(ok)?))),
                "err" => Ok(b.result(Err(payload(err)?))),
                _ => Err(fail(expected())),
            }
        }
        WitType::Resource { name, .. } => {
            Err(fail(format!("a handle to resource {name}, which cannot be passed as JSON")))
        }
        WitType::Unsupported { name } => Err(fail(format!("{name}, which cannot be passed as JSON"))),
    }
}

fn quoted<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    items.into_iter().map(|s| format!("\"{}\"", s.as_ref())).collect::<Vec<_>>().join(", ")
}

fn float_json(x: f64) -> Value {
    match Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None if x.is_nan() => Value::String("NaN".into()),
        None if x > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// Converts a WIT value to JSON by the table of the spec.
pub fn to_json(v: &WitValue) -> Value {
    match v {
        WitValue::Bool(b) => Value::Bool(*b),
        WitValue::S8(x) => (*x).into(),
        WitValue::S16(x) => (*x).into(),
        WitValue::S32(x) => (*x).into(),
        WitValue::S64(x) => (*x).into(),
        WitValue::U8(x) => (*x).into(),
        WitValue::U16(x) => (*x).into(),
        WitValue::U32(x) => (*x).into(),
        WitValue::U64(x) => (*x).into(),
        // The f64 nearest the f32's shortest decimal form: 0.1, not
        // 0.10000000149011612.
        WitValue::F32(x) if x.is_finite() => float_json(x.to_string().parse().unwrap_or(f64::from(*x))),
        WitValue::F32(x) => float_json(f64::from(*x)),
        WitValue::F64(x) => float_json(*x),
        WitValue::Char(c) => Value::String(c.to_string()),
        WitValue::String(s) => Value::String(s.clone()),
        WitValue::List(items) | WitValue::Tuple(items) => Value::Array(items.iter().map(to_json).collect()),
        WitValue::Record(fields) => Value::Object(fields.iter().map(|(k, x)| (k.clone(), to_json(x))).collect()),
        WitValue::Variant(name, None) | WitValue::Enum(name) => Value::String(name.clone()),
        WitValue::Variant(name, Some(x)) => single(name, to_json(x)),
        WitValue::Flags(flags) => Value::Array(flags.iter().cloned().map(Value::String).collect()),
        WitValue::Option(None) => Value::Null,
        WitValue::Option(Some(x)) => match x.as_ref() {
            inner @ WitValue::Option(_) => single("some", to_json(inner)),
            inner => to_json(inner),
        },
        WitValue::Result(r) => {
            let (case, payload) = match r {
                Ok(x) => ("ok", x),
                Err(x) => ("err", x),
            };
            single(case, payload.as_deref().map_or(Value::Null, to_json))
        }
    }
}

/// Bytes of `s` as a JSON string the way serde_json writes it: quotes,
/// two-byte escapes for `"`, `\\` and the common controls, six bytes
/// (`\u00XX`) for the other control characters, and UTF-8 as is.
fn json_string_size(s: &str) -> usize {
    let escapes: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..0x20 => 5,
            _ => 0,
        })
        .sum();
    s.len() + escapes + 2
}

fn single(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.to_owned(), value);
    Value::Object(m)
}

impl WitValue {
    /// At least the size in bytes once encoded as JSON (strings and
    /// integers exactly, escapes included; floats as 24, chars as 8); used
    /// to refuse huge results before they are serialized.
    pub fn json_size_bound(&self) -> usize {
        match self {
            WitValue::String(s) => json_string_size(s),
            WitValue::List(items) | WitValue::Tuple(items) => {
                items.iter().map(|x| x.json_size_bound() + 1).sum::<usize>() + 2
            }
            WitValue::Record(fields) => {
                fields.iter().map(|(k, x)| k.len() + 4 + x.json_size_bound()).sum::<usize>() + 2
            }
            WitValue::Variant(n, x) => n.len() + 6 + x.as_ref().map_or(0, |x| x.json_size_bound()),
            WitValue::Enum(n) => n.len() + 2,
            WitValue::Flags(f) => f.iter().map(|s| s.len() + 3).sum::<usize>() + 2,
            WitValue::Option(x) => x.as_ref().map_or(4, |x| x.json_size_bound() + 9),
            WitValue::Result(r) => {
                8 + r.as_ref().map_or_else(|e| e.as_ref(), |o| o.as_ref()).map_or(4, |x| x.json_size_bound())
            }
            WitValue::Bool(_) => 5,
            WitValue::S8(n) => int_json_size(i64::from(*n)),
            WitValue::S16(n) => int_json_size(i64::from(*n)),
            WitValue::S32(n) => int_json_size(i64::from(*n)),
            WitValue::S64(n) => int_json_size(*n),
            WitValue::U8(n) => digits(u64::from(*n)),
            WitValue::U16(n) => digits(u64::from(*n)),
            WitValue::U32(n) => digits(u64::from(*n)),
            WitValue::U64(n) => digits(*n),
            WitValue::Char(_) => 8,
            WitValue::F32(_) | WitValue::F64(_) => 24,
        }
    }
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

fn int_json_size(n: i64) -> usize {
    usize::from(n < 0) + digits(n.unsigned_abs())
}

#[cfg(test)]
mod tests;

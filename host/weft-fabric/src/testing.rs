//! Test fixtures: a fake catalog of the spec's example plugins.

use weft_proto::wit::Field;
use weft_proto::{Caller, ClusterId, Command, FunctionSig, NodeId, WeftError, WitType};

use crate::catalog::{Asker, CatalogEntry, Resolved};

/// Resolves `cmd` for an anonymous caller of cluster `alpha`.
pub fn resolve(cmd: &Command, entries: &[CatalogEntry]) -> Result<Resolved, WeftError> {
    crate::resolve(cmd, entries, &Asker { caller: &Caller::Anonymous, cluster: &ClusterId::new("alpha") })
}

pub fn sig(params: &[(&str, WitType)], result: WitType) -> FunctionSig {
    FunctionSig {
        params: params.iter().map(|(n, ty)| Field { name: (*n).to_owned(), ty: ty.clone() }).collect(),
        result: Some(result),
    }
}

pub fn list(element: WitType) -> WitType {
    WitType::List { element: Box::new(element) }
}

pub fn option(some: WitType) -> WitType {
    WitType::Option { some: Box::new(some) }
}

/// `record summary { count: u32, mean: f64, min: f64, max: f64 }` of `math/stats`.
pub fn summary() -> WitType {
    let field = |name: &str, ty| Field { name: name.to_owned(), ty };
    WitType::Record {
        name: Some("summary".into()),
        fields: vec![
            field("count", WitType::U32),
            field("mean", WitType::F64),
            field("min", WitType::F64),
            field("max", WitType::F64),
        ],
    }
}

/// An entry on node `n1` of cluster `alpha` without resources.
pub fn entry(id: &str, version: &str, sig: FunctionSig) -> CatalogEntry {
    CatalogEntry {
        function: id.parse().unwrap_or_else(|e| panic!("{e}")),
        version: version.parse().unwrap_or_else(|e| panic!("{version}: {e}")),
        sig: sig.into(),
        resources: Vec::new(),
        node: NodeId::new("n1"),
        cluster: ClusterId::new("alpha"),
        idempotent: false,
        exported: true,
        audience: crate::Audience::Everyone,
        origins: crate::Audience::Everyone,
        callers: weft_proto::Callers::default(),
        tenant: None,
    }
}

pub fn catalog() -> Vec<CatalogEntry> {
    use WitType::{F64, S64, String, U32};
    let divide = FunctionSig {
        params: sig(&[("a", F64), ("b", F64)], F64).params,
        result: Some(WitType::Result { ok: Some(Box::new(F64)), err: Some(Box::new(String)) }),
    };
    vec![
        entry("echo/echo", "1.0.0", sig(&[("value", String)], String)),
        entry("echo/echos", "1.0.0", sig(&[("values", list(String))], list(String))),
        entry("echo/concat", "1.0.0", sig(&[("a", String), ("b", String)], String)),
        entry("math/add", "1.0.0", sig(&[("a", S64), ("b", S64)], S64)),
        entry("math/divide", "1.0.0", divide),
        entry("math/stats", "1.0.0", sig(&[("xs", list(F64))], summary())),
        entry("text/word-count", "1.0.0", sig(&[("text", String)], U32)),
        entry("text/upper", "1.0.0", sig(&[("text", String)], String)),
        entry("text/split", "1.0.0", sig(&[("text", String), ("sep", String)], list(String))),
        entry("text/pad", "1.0.0", sig(&[("text", String), ("width", option(U32))], String)),
        entry("text/first", "1.0.0", sig(&[("text", String)], option(String))),
        entry("report/describe", "1.0.0", sig(&[("s", summary())], String)),
        entry("hostile/spin", "1.0.0", FunctionSig { params: vec![], result: None }),
    ]
}

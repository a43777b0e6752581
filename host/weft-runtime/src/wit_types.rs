//! Reads a component's exported functions and their WIT types from its
//! bytes (wit-parser), keeping the names of records, variants, enums and
//! flags so signatures print as the plugin author wrote them.

use wasmtime::component::wit_parser::decoding::{DecodedWasm, decode};
use wasmtime::component::wit_parser::{Resolve, Type, TypeDefKind, WorldItem, WorldKey};
use weft_proto::wit::{Case, Field, FunctionSig, WitType};

#[derive(Clone, Debug)]
pub struct ExportedFunction {
    pub name: String,
    pub sig: FunctionSig,
}

#[derive(Clone, Debug, Default)]
pub struct ComponentInfo {
    /// World-level exported functions: what Weft can call.
    pub functions: Vec<ExportedFunction>,
    /// Exported interfaces (listed, not callable through Weft).
    pub interfaces: Vec<String>,
    pub imports: Vec<String>,
}

impl ComponentInfo {
    /// WIT text: named type definitions, then one line per function.
    pub fn to_wit(&self) -> String {
        let mut defs = Vec::new();
        for f in &self.functions {
            for p in &f.sig.params {
                p.ty.collect_definitions(&mut defs);
            }
            if let Some(r) = &f.sig.result {
                r.collect_definitions(&mut defs);
            }
        }
        let mut out: Vec<String> = defs;
        out.extend(self.functions.iter().map(|f| format!("export {}: {};", f.name, f.sig)));
        out.extend(self.interfaces.iter().map(|i| format!("export {i}; // interface: not callable through weft")));
        out.join("\n")
    }
}

/// Decodes a component binary. Errors say why the bytes are not a usable component.
pub fn describe_component(wasm: &[u8]) -> Result<ComponentInfo, String> {
    const BUILD: &str = "build plugins with `cargo build --release --target wasm32-wasip2`";
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
            return Err(format!(
                "a core WebAssembly module, not a component (wasm32-wasip1 and wasm32-unknown-unknown build those); {BUILD}"
            ));
        }
        Some([0, b'a', b's', b'm', ..]) => {}
        _ => return Err(format!("not a WebAssembly file (it does not start with the \\0asm header); {BUILD}")),
    }
    let decoded = decode(wasm).map_err(|e| {
        let why = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        format!("not a valid WebAssembly component: {why}")
    })?;
    let DecodedWasm::Component(resolve, world) = decoded else {
        return Err("this is a WIT package, not a component".into());
    };
    let world = &resolve.worlds[world];
    let mut info = ComponentInfo::default();
    for (key, item) in &world.exports {
        match item {
            WorldItem::Function(f) => info.functions.push(ExportedFunction {
                name: f.name.clone(),
                sig: FunctionSig {
                    params: f
                        .params
                        .iter()
                        .map(|p| Field { name: p.name.clone(), ty: convert(&resolve, &p.ty) })
                        .collect(),
                    result: f.result.as_ref().map(|t| convert(&resolve, t)),
                },
            }),
            WorldItem::Interface { .. } => info.interfaces.push(key_name(&resolve, key)),
            WorldItem::Type { .. } => {}
        }
    }
    info.imports = world
        .imports
        .iter()
        .filter(|(_, item)| !matches!(item, WorldItem::Type { .. }))
        .map(|(k, _)| key_name(&resolve, k))
        .collect();
    Ok(info)
}

fn key_name(resolve: &Resolve, key: &WorldKey) -> String {
    match key {
        WorldKey::Name(n) => n.clone(),
        WorldKey::Interface(id) => resolve.id_of(*id).unwrap_or_else(|| "<anonymous interface>".into()),
    }
}

fn convert(resolve: &Resolve, ty: &Type) -> WitType {
    match ty {
        Type::Bool => WitType::Bool,
        Type::U8 => WitType::U8,
        Type::U16 => WitType::U16,
        Type::U32 => WitType::U32,
        Type::U64 => WitType::U64,
        Type::S8 => WitType::S8,
        Type::S16 => WitType::S16,
        Type::S32 => WitType::S32,
        Type::S64 => WitType::S64,
        Type::F32 => WitType::F32,
        Type::F64 => WitType::F64,
        Type::Char => WitType::Char,
        Type::String => WitType::String,
        Type::ErrorContext => WitType::Unsupported { name: "error-context".into() },
        Type::Id(id) => {
            let def = &resolve.types[*id];
            let name = def.name.clone();
            let boxed = |t: &Type| Box::new(convert(resolve, t));
            match &def.kind {
                TypeDefKind::Record(r) => WitType::Record {
                    name,
                    fields: r
                        .fields
                        .iter()
                        .map(|f| Field { name: f.name.clone(), ty: convert(resolve, &f.ty) })
                        .collect(),
                },
                TypeDefKind::Variant(v) => WitType::Variant {
                    name,
                    cases: v
                        .cases
                        .iter()
                        .map(|c| Case { name: c.name.clone(), ty: c.ty.as_ref().map(|t| convert(resolve, t)) })
                        .collect(),
                },
                TypeDefKind::Enum(e) => WitType::Enum { name, cases: e.cases.iter().map(|c| c.name.clone()).collect() },
                TypeDefKind::Flags(f) => {
                    WitType::Flags { name, flags: f.flags.iter().map(|c| c.name.clone()).collect() }
                }
                TypeDefKind::Tuple(t) => {
                    WitType::Tuple { elements: t.types.iter().map(|t| convert(resolve, t)).collect() }
                }
                TypeDefKind::Option(t) => WitType::Option { some: boxed(t) },
                TypeDefKind::Result(r) => {
                    WitType::Result { ok: r.ok.as_ref().map(boxed), err: r.err.as_ref().map(boxed) }
                }
                TypeDefKind::List(t) => WitType::List { element: boxed(t) },
                TypeDefKind::Type(t) => convert(resolve, t),
                TypeDefKind::Resource | TypeDefKind::Handle(_) => {
                    WitType::Resource { name: name.unwrap_or_else(|| "resource".into()) }
                }
                TypeDefKind::Map(..) => WitType::Unsupported { name: "map".into() },
                TypeDefKind::FixedLengthList(..) => WitType::Unsupported { name: "fixed-length-list".into() },
                TypeDefKind::Future(_) => WitType::Unsupported { name: "future".into() },
                TypeDefKind::Stream(_) => WitType::Unsupported { name: "stream".into() },
                TypeDefKind::Unknown => WitType::Unsupported { name: "unknown".into() },
            }
        }
    }
}

//! Reads a component's exported functions and their WIT types from its
//! bytes (wit-parser), keeping the names of records, variants, enums and
//! flags so signatures print as the plugin author wrote them.

use wasmtime::component::wit_parser::decoding::{DecodedWasm, decode};
use wasmtime::component::wit_parser::{Handle, Resolve, Type, TypeDefKind, TypeId, WorldItem, WorldKey};
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
    let mut expand = Expand { resolve: &resolve, weight: 0 };
    for (key, item) in &world.exports {
        match item {
            WorldItem::Function(f) => {
                let mut params = Vec::with_capacity(f.params.len());
                for p in &f.params {
                    params.push(Field { name: p.name.clone(), ty: expand.ty(&p.ty, Depth::default())? });
                }
                let result = f.result.as_ref().map(|t| expand.ty(t, Depth::default())).transpose()?;
                info.functions.push(ExportedFunction { name: f.name.clone(), sig: FunctionSig { params, result } });
            }
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

/// Bounds on a component's exported types as Weft expands them (each use
/// of a named type becomes its own copy). A component is small, but its
/// types are a graph: a chain of aliases would overflow the node's stack,
/// and types shared along a binary tree would expand to gigabytes.
const MAX_TYPE_DEPTH: usize = 500;
/// Nesting of a signature as JSON (`sig` in the catalog), which peers read
/// with serde_json's limit of 128 levels, inside a frame's own few.
const MAX_SIG_NESTING: usize = 100;
/// Expanded size: a unit per type plus the bytes of the names it holds.
const MAX_TYPE_WEIGHT: usize = 256 << 10;
/// Fields, cases or flags of one type: a value is checked against them
/// one by one.
const MAX_TYPE_MEMBERS: usize = 1024;

/// How deep a type is: in types and aliases, and as JSON.
#[derive(Clone, Copy, Default)]
struct Depth {
    types: usize,
    json: usize,
}

impl Depth {
    /// One type further in, `json` more levels of JSON.
    fn deeper(self, json: usize) -> Self {
        Depth { types: self.types + 1, json: self.json + json }
    }
}

/// Expands WIT types within the bounds above, for one component.
struct Expand<'a> {
    resolve: &'a Resolve,
    weight: usize,
}

impl Expand<'_> {
    fn charge(&mut self, names: usize, members: usize) -> Result<(), String> {
        if members > MAX_TYPE_MEMBERS {
            return Err(format!(
                "a type of its exports has {members} fields, cases or flags, over the limit of {MAX_TYPE_MEMBERS}"
            ));
        }
        self.weight += 1 + names;
        if self.weight > MAX_TYPE_WEIGHT {
            return Err(format!(
                "its exported functions' types expand to more than {MAX_TYPE_WEIGHT} units (each use of a named type counts in full, with its names); use fewer or smaller shared types"
            ));
        }
        Ok(())
    }

    fn ty(&mut self, ty: &Type, depth: Depth) -> Result<WitType, String> {
        if depth.types > MAX_TYPE_DEPTH {
            return Err(format!(
                "its exported functions' types nest deeper than {MAX_TYPE_DEPTH} levels (type aliases included)"
            ));
        }
        if depth.json > MAX_SIG_NESTING {
            return Err(format!(
                "its exported functions' types nest too deep to describe in the catalog (over {MAX_SIG_NESTING} levels of JSON; a record or variant takes three, a tuple two, others one)"
            ));
        }
        let primitive = match ty {
            Type::Id(id) => return self.def(*id, depth),
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
        };
        self.charge(0, 0)?;
        Ok(primitive)
    }

    fn def(&mut self, id: TypeId, depth: Depth) -> Result<WitType, String> {
        let def = &self.resolve.types[id];
        let name = def.name.clone();
        let named = name.as_ref().map_or(0, String::len);
        let names = |names: &mut dyn Iterator<Item = &String>| named + names.map(String::len).sum::<usize>();
        Ok(match &def.kind {
            TypeDefKind::Record(r) => {
                self.charge(names(&mut r.fields.iter().map(|f| &f.name)), r.fields.len())?;
                let mut fields = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    fields.push(Field { name: f.name.clone(), ty: self.ty(&f.ty, depth.deeper(3))? });
                }
                WitType::Record { name, fields }
            }
            TypeDefKind::Variant(v) => {
                self.charge(names(&mut v.cases.iter().map(|c| &c.name)), v.cases.len())?;
                let mut cases = Vec::with_capacity(v.cases.len());
                for c in &v.cases {
                    let ty = c.ty.as_ref().map(|t| self.ty(t, depth.deeper(3))).transpose()?;
                    cases.push(Case { name: c.name.clone(), ty });
                }
                WitType::Variant { name, cases }
            }
            TypeDefKind::Enum(e) => {
                self.charge(names(&mut e.cases.iter().map(|c| &c.name)), e.cases.len())?;
                WitType::Enum { name, cases: e.cases.iter().map(|c| c.name.clone()).collect() }
            }
            TypeDefKind::Flags(f) => {
                self.charge(names(&mut f.flags.iter().map(|c| &c.name)), f.flags.len())?;
                WitType::Flags { name, flags: f.flags.iter().map(|c| c.name.clone()).collect() }
            }
            TypeDefKind::Tuple(t) => {
                self.charge(0, t.types.len())?;
                let elements = t.types.iter().map(|t| self.ty(t, depth.deeper(2))).collect::<Result<_, _>>()?;
                WitType::Tuple { elements }
            }
            TypeDefKind::Option(t) => {
                self.charge(0, 0)?;
                WitType::Option { some: Box::new(self.ty(t, depth.deeper(1))?) }
            }
            TypeDefKind::Result(r) => {
                self.charge(0, 0)?;
                let ok = r.ok.as_ref().map(|t| self.ty(t, depth.deeper(1)).map(Box::new)).transpose()?;
                let err = r.err.as_ref().map(|t| self.ty(t, depth.deeper(1)).map(Box::new)).transpose()?;
                WitType::Result { ok, err }
            }
            TypeDefKind::List(t) => {
                self.charge(0, 0)?;
                WitType::List { element: Box::new(self.ty(t, depth.deeper(1))?) }
            }
            // An alias adds nothing but depth.
            TypeDefKind::Type(t) => self.ty(t, depth.deeper(0))?,
            TypeDefKind::Resource => {
                self.charge(named, 0)?;
                WitType::Resource { name: name.unwrap_or_else(|| "resource".into()), borrowed: false }
            }
            // A handle names the resource it points at.
            TypeDefKind::Handle(handle) => {
                let (Handle::Own(resource) | Handle::Borrow(resource)) = handle;
                let name = self.resolve.types[*resource].name.clone().unwrap_or_else(|| "resource".into());
                self.charge(name.len(), 0)?;
                WitType::Resource { name, borrowed: matches!(handle, Handle::Borrow(_)) }
            }
            TypeDefKind::Map(..) => WitType::Unsupported { name: "map".into() },
            TypeDefKind::FixedLengthList(..) => WitType::Unsupported { name: "fixed-length-list".into() },
            TypeDefKind::Future(_) => WitType::Unsupported { name: "future".into() },
            TypeDefKind::Stream(_) => WitType::Unsupported { name: "stream".into() },
            TypeDefKind::Unknown => WitType::Unsupported { name: "unknown".into() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_component::{Param, TestComponent};

    fn describe(param: Param) -> Result<ComponentInfo, String> {
        describe_component(&TestComponent { param, ..TestComponent::default() }.build())
    }

    #[test]
    fn types_within_the_bounds_are_described() {
        let info = describe(Param::Aliased { cases: 3, aliases: 50 }).unwrap();
        assert_eq!(info.functions[0].sig.to_string(), "func(x: leaf)");
        let info = describe(Param::Tree { depth: 5, fan: 2, cases: 2 }).unwrap();
        assert_eq!(info.functions[0].sig.to_string(), "func(x: level4)");
    }

    #[test]
    fn a_handle_names_its_resource_and_whether_it_is_borrowed() {
        let info = describe(Param::Borrowed).unwrap();
        assert_eq!(info.functions[0].sig.to_string(), "func(x: borrow<res>)");
        assert!(info.functions[0].sig.uses_handles());
    }

    #[test]
    fn a_chain_of_aliases_is_refused_rather_than_overflowing_the_stack() {
        let e = describe(Param::Aliased { cases: 1, aliases: 50_000 }).unwrap_err();
        assert!(e.contains("nest deeper than 500 levels (type aliases included)"), "{e}");
    }

    #[test]
    fn shared_types_that_would_expand_to_gigabytes_are_refused() {
        // 2^12 leaves of 1,000 cases each, in 25 KB.
        let e = describe(Param::Tree { depth: 12, fan: 2, cases: 1000 }).unwrap_err();
        assert!(e.contains("expand to more than"), "{e}");
        let e = describe(Param::Tree { depth: 40, fan: 1, cases: 1 }).unwrap_err();
        assert!(e.contains("too deep to describe in the catalog"), "{e}");
        let e = describe(Param::Aliased { cases: 5000, aliases: 0 }).unwrap_err();
        assert!(e.contains("5000 fields, cases or flags"), "{e}");
    }
}

//! Components made to measure for tests (wasm-encoder): one exported
//! function `g`, whose parameter type and core instances are chosen, and
//! whose body (and optionally start function) traps or spins. Hostile
//! shapes that no toolchain would emit.

use wasm_encoder::{
    CanonicalFunctionSection, CanonicalOption, CodeSection, Component, ComponentAliasSection, ComponentExportKind,
    ComponentExportSection, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, ComponentValType,
    ExportKind, ExportSection, Function, FunctionSection, InstanceSection, Instruction, MemorySection, MemoryType,
    Module, ModuleArg, ModuleSection, StartSection, TypeBounds, TypeSection, ValType,
};

/// The parameter of `g`.
pub(crate) enum Param {
    None,
    /// An enum of `cases` cases, named through `aliases` type aliases.
    Aliased {
        cases: usize,
        aliases: u32,
    },
    /// `borrow<res>` of an imported resource `res`.
    Borrowed,
    /// Records of `fan` fields, each the record one level down, `depth`
    /// levels over an enum of `cases`: small to write, fan^depth to expand.
    Tree {
        depth: u32,
        fan: usize,
        cases: usize,
    },
}

pub(crate) struct TestComponent {
    pub param: Param,
    /// `g` loops until stopped, rather than trapping.
    pub spins: bool,
    /// Core instances: the module's, and the rest of an empty module.
    pub core_instances: u32,
    /// The other core instances are of the module too, each with its memory.
    pub twins: bool,
    /// Wasm pages each memory starts with.
    pub memory_pages: u64,
    /// The module's start function loops until stopped: every
    /// instantiation runs into the deadline.
    pub start_spins: bool,
}

impl Default for TestComponent {
    fn default() -> Self {
        Self { param: Param::None, spins: false, core_instances: 1, twins: false, memory_pages: 1, start_spins: false }
    }
}

impl TestComponent {
    pub(crate) fn build(&self) -> Vec<u8> {
        let mut c = Component::new();
        c.section(&ModuleSection(&self.core_module()));
        // The other instances are of an empty module: they hold nothing else.
        c.section(&ModuleSection(&Module::new()));
        let mut instances = InstanceSection::new();
        for i in 0..self.core_instances {
            instances.instantiate(u32::from(i > 0 && !self.twins), Vec::<(&str, ModuleArg)>::new());
        }
        c.section(&instances);
        let mut aliases = ComponentAliasSection::new();
        for (name, kind) in [("g", ExportKind::Func), ("realloc", ExportKind::Func), ("memory", ExportKind::Memory)] {
            aliases.alias(wasm_encoder::Alias::CoreInstanceExport { instance: 0, kind, name });
        }
        c.section(&aliases);
        let mut types = 0;
        let param = self.param_type(&mut c, &mut types);
        let mut func_type = ComponentTypeSection::new();
        let params: Vec<(&str, ComponentValType)> =
            param.map(|ty| ("x", ComponentValType::Type(ty))).into_iter().collect();
        func_type.function().params(params).result(None::<ComponentValType>);
        c.section(&func_type);
        let options = [CanonicalOption::UTF8, CanonicalOption::Memory(0), CanonicalOption::Realloc(1)];
        c.section(CanonicalFunctionSection::new().lift(0, types, options));
        c.section(ComponentExportSection::new().export("g", ComponentExportKind::Func, 0, None));
        c.finish()
    }

    /// `g` (taking the lowered parameter, an i32 for every shape here),
    /// `realloc` and a memory.
    fn core_module(&self) -> Module {
        let mut module = Module::new();
        let mut types = TypeSection::new();
        let params: &[ValType] = if matches!(self.param, Param::None) { &[] } else { &[ValType::I32] };
        types.ty().function(params.iter().copied(), []);
        types.ty().function([ValType::I32; 4], [ValType::I32]);
        types.ty().function([], []);
        module.section(&types);
        let mut funcs = FunctionSection::new();
        funcs.function(0).function(1);
        if self.start_spins {
            funcs.function(2);
        }
        module.section(&funcs);
        let mut memory = MemorySection::new();
        memory.memory(MemoryType {
            minimum: self.memory_pages,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memory);
        let mut exports = ExportSection::new();
        exports.export("g", ExportKind::Func, 0).export("realloc", ExportKind::Func, 1).export(
            "memory",
            ExportKind::Memory,
            0,
        );
        module.section(&exports);
        if self.start_spins {
            module.section(&StartSection { function_index: 2 });
        }
        let spin = [Instruction::Loop(wasm_encoder::BlockType::Empty), Instruction::Br(0), Instruction::End];
        let body: &[Instruction] = if self.spins { &spin } else { &[Instruction::Unreachable] };
        let mut code = CodeSection::new();
        let mut g = Function::new([]);
        body.iter().for_each(|op| {
            g.instruction(op);
        });
        code.function(g.instruction(&Instruction::End));
        let mut realloc = Function::new([]);
        code.function(realloc.instruction(&Instruction::I32Const(0)).instruction(&Instruction::End));
        if self.start_spins {
            let mut start = Function::new([]);
            spin.iter().for_each(|op| {
                start.instruction(op);
            });
            code.function(start.instruction(&Instruction::End));
        }
        module.section(&code);
        module
    }

    /// Defines the parameter's types; `types` counts the component's type
    /// indices. Each defined type is imported under a name (as WIT's named
    /// types are) and used through that import.
    fn param_type(&self, c: &mut Component, types: &mut u32) -> Option<u32> {
        let mut named = |c: &mut Component, define: &dyn Fn(&mut ComponentTypeSection), name: String| {
            let mut section = ComponentTypeSection::new();
            define(&mut section);
            c.section(&section);
            c.section(ComponentImportSection::new().import(&name, ComponentTypeRef::Type(TypeBounds::Eq(*types))));
            *types += 2;
            *types - 1
        };
        let (cases, levels, fan, alias_count) = match self.param {
            Param::None => return None,
            Param::Borrowed => {
                c.section(ComponentImportSection::new().import("res", ComponentTypeRef::Type(TypeBounds::SubResource)));
                let mut section = ComponentTypeSection::new();
                section.defined_type().borrow(*types);
                c.section(&section);
                *types += 2;
                return Some(*types - 1);
            }
            Param::Aliased { cases, aliases } => (cases, 0, 0, aliases),
            Param::Tree { depth, fan, cases } => (cases, depth, fan, 0),
        };
        let case_names: Vec<String> = (0..cases).map(|i| format!("case{i}")).collect();
        let mut ty = named(c, &|s| s.defined_type().enum_type(case_names.iter().map(String::as_str)), "leaf".into());
        let field_names: Vec<String> = (0..fan).map(|i| format!("f{i}")).collect();
        for level in 0..levels {
            let below = ComponentValType::Type(ty);
            let fields = || field_names.iter().map(|n| (n.as_str(), below));
            ty = named(c, &|s| s.defined_type().record(fields()), format!("level{level}"));
        }
        let mut imports = ComponentImportSection::new();
        for i in 0..alias_count {
            imports.import(format!("alias{i}").as_str(), ComponentTypeRef::Type(TypeBounds::Eq(ty)));
            ty = *types;
            *types += 1;
        }
        c.section(&imports);
        Some(ty)
    }
}

//! The request planner: turns a multi-command request into a validated
//! dependency graph of steps, and binds each step's arguments once the results
//! it depends on are known.
//!
//! Owns argument templates (`{"$ref": ..}`, `{"$lit": ..}`, MPREG's string
//! references), the checks that run before anything executes (names, unknown
//! references, cycles, function resolution, argument shapes and types) and the
//! substitution of results into arguments. It does not run, route or time
//! anything: function resolution is passed in, results are passed in, and the
//! order of execution is `schedule`'s business.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};
use weft_proto::wit::{Field, Mismatch, check};
use weft_proto::{ClusterId, Command, FunctionId, Request, WeftError, WitType};

use crate::catalog::Resolved;

/// The position of a command in its request; indexes `Plan::steps` and the
/// `results` slice given to `Plan::bind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepIdx(pub usize);

/// An argument with its references found once, at plan time, so binding only
/// substitutes and never re-reads the JSON for `$ref`/`$lit` markers.
///
/// A value is a reference when it is `{"$ref": "name"}` (optionally with
/// `"path": "field.sub.0"`, dot-separated record fields and list or tuple
/// indices into the referenced result), or — for MPREG compatibility — a string
/// equal to the name of *another* command of the request, or to such a name,
/// a dot and a path (MPREG's `"s.mean"`), at any depth inside arrays and
/// objects, as MPREG reads them. A string naming the command itself stays a
/// string. `{"$lit": X}` passes X as is, with no reference inside it
/// interpreted. Subtrees without references collapse into one `Literal`.
#[derive(Clone, Debug, PartialEq)]
pub enum Template {
    Literal(Value),
    /// `by_name`: written as MPREG's bare string, not as `{"$ref": ..}`.
    Ref {
        step: StepIdx,
        path: Vec<String>,
        by_name: bool,
    },
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// One command of a validated plan.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    pub resolved: Resolved,
    /// The steps whose results this one uses, ascending, without duplicates.
    pub deps: Vec<StepIdx>,
    /// 0 without dependencies, else 1 + the highest level of its deps.
    pub level: u32,
    pub locs: Vec<String>,
    pub target_cluster: Option<ClusterId>,
    /// One template per parameter of `resolved.sig`, in parameter order;
    /// omitted option parameters are `Literal(null)`.
    pub args: Vec<Template>,
}

/// A request checked and arranged for execution; see `Plan::build`.
#[derive(Clone, Debug)]
pub struct Plan {
    steps: Vec<Step>,
    outputs: Vec<StepIdx>,
    index: HashMap<String, StepIdx>,
}

impl Plan {
    /// Validates `req` completely before anything runs: structure (commands,
    /// names, references, cycles) first, then function resolution through
    /// `resolve`, then arguments. Every error names the command it concerns.
    pub fn build(
        req: &Request,
        mut resolve: impl FnMut(&Command) -> Result<Resolved, WeftError>,
    ) -> Result<Plan, WeftError> {
        if req.cmds.is_empty() {
            return Err(WeftError::invalid_request(
                "the request has no commands; send \"cmds\": [{\"name\": .., \"fun\": .., \"args\": [..]}]",
            ));
        }
        let index = index_names(&req.cmds)?;

        let mut templates = Vec::with_capacity(req.cmds.len());
        for (i, cmd) in req.cmds.iter().enumerate() {
            check_names(cmd)?;
            let parser = TemplateParser { index: &index, cmds: &req.cmds, this: i };
            let args = cmd.args.iter().map(|v| parser.parse(v)).collect::<Result<Vec<_>, _>>()?;
            let kwargs = cmd
                .kwargs
                .iter()
                .map(|(k, v)| Ok((k.clone(), parser.parse(v)?)))
                .collect::<Result<Vec<_>, WeftError>>()?;
            templates.push((args, kwargs));
        }
        // Each command's dependencies, and whether a bare string made any.
        let (deps, bare): (Vec<Vec<StepIdx>>, Vec<bool>) = templates
            .iter()
            .map(|(args, kwargs)| {
                let mut refs = Vec::new();
                args.iter().chain(kwargs.iter().map(|(_, t)| t)).for_each(|t| t.collect_refs(&mut refs));
                let bare = refs.iter().any(|(_, by_name)| *by_name);
                let mut deps: Vec<StepIdx> = refs.into_iter().map(|(step, _)| step).collect();
                deps.sort_unstable();
                deps.dedup();
                (deps, bare)
            })
            .unzip();
        let levels = levels(&req.cmds, &deps, &bare)?;

        let resolved: Vec<Resolved> =
            req.cmds.iter().map(|cmd| resolve(cmd).map_err(|e| at(&cmd.name, e))).collect::<Result<_, _>>()?;

        let mut steps = Vec::with_capacity(req.cmds.len());
        for (i, (cmd, (args, kwargs))) in req.cmds.iter().zip(templates).enumerate() {
            let r = &resolved[i];
            let args = arrange(r, args, kwargs).map_err(|e| at(&cmd.name, e))?;
            for (param, template) in r.sig.params.iter().zip(&args) {
                check_static(&r.function, param, template, &req.cmds, &resolved).map_err(|e| at(&cmd.name, e))?;
            }
            steps.push(Step {
                name: cmd.name.clone(),
                resolved: r.clone(),
                deps: deps[i].clone(),
                level: levels[i],
                locs: cmd.locs.clone(),
                target_cluster: cmd.target_cluster.as_deref().map(ClusterId::new),
                args,
            });
        }

        let mut referenced = vec![false; steps.len()];
        steps.iter().flat_map(|s| &s.deps).for_each(|d| referenced[d.0] = true);
        let outputs = (0..steps.len()).filter(|&i| !referenced[i]).map(StepIdx).collect();
        Ok(Plan { steps, outputs, index })
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Names of the steps no other step references, in request order: the
    /// members of the response's `r`.
    pub fn outputs(&self) -> Vec<&str> {
        self.outputs.iter().map(|i| self.steps[i.0].name.as_str()).collect()
    }

    /// The same steps as `outputs`, by index.
    pub fn output_steps(&self) -> &[StepIdx] {
        &self.outputs
    }

    pub fn step_index(&self, name: &str) -> Option<StepIdx> {
        self.index.get(name).copied()
    }

    /// Every reference in the arguments of `step` (until it is bound): the
    /// step whose result it uses, and the path into that result, once per
    /// place it appears, as binding copies it.
    pub fn refs(&self, step: StepIdx) -> Vec<(StepIdx, &[String])> {
        let mut refs = Vec::new();
        for template in self.steps.get(step.0).map_or(&[][..], |s| &s.args) {
            template.each_ref(&mut |source, path, _| refs.push((source, path)));
        }
        refs
    }

    /// The positional arguments of `step`, in parameter order, with every
    /// reference replaced by (the `path` into) the result of its step.
    /// `results[i]` is the success value of step `i` once it completed.
    /// Every argument holding a reference is checked against its
    /// parameter's WIT type, since references nested in literals could not
    /// be checked at plan time (plain literals were). A step is bound once:
    /// its literals move out of the plan rather than being copied, so a
    /// large argument is not held twice.
    pub fn bind(&mut self, step: StepIdx, results: &[Option<Value>]) -> Result<Vec<Value>, WeftError> {
        let Some(s) = self.steps.get_mut(step.0) else {
            return Err(WeftError::internal(format!("step #{} is not part of this plan", step.0)));
        };
        let templates = std::mem::take(&mut s.args);
        let s = &self.steps[step.0];
        let (function, params) = (&s.resolved.function, &s.resolved.sig.params);
        if templates.len() != params.len() {
            return Err(WeftError::internal(format!("{} was bound already; a step is bound once", s.name)));
        }
        templates
            .into_iter()
            .zip(params)
            .map(|(template, param)| {
                let literal = matches!(template, Template::Literal(_));
                let mut places = Vec::new();
                template.each_ref_at(&param.name, None, &mut |place, _, step, _, by_name| {
                    places.push((place.to_owned(), step, by_name));
                });
                let value = self.instantiate(template, results).map_err(|e| {
                    let e = e.context(format_args!("argument '{}' of {function}", param.name));
                    at(&s.name, e.with("parameter", param.name.as_str()))
                })?;
                if !literal {
                    check(&value, &param.ty, &param.name).map_err(|m| {
                        // The references whose values hold the mismatch.
                        let mut used: Vec<(StepIdx, bool)> =
                            places.iter().filter(|(p, ..)| within(&m.path, p)).map(|(_, i, n)| (*i, *n)).collect();
                        used.sort_unstable();
                        used.dedup_by_key(|(i, _)| *i);
                        let names: Vec<&str> = used.iter().map(|(i, _)| self.steps[i.0].name.as_str()).collect();
                        let e = mismatch(function, m);
                        let mut hint = format!("; it holds the result of {}", names.join(", "));
                        if let Some((step, _)) = used.iter().find(|(_, by_name)| *by_name) {
                            hint += &lit_hint(&self.steps[step.0].name);
                        }
                        let message = format!("{}{hint}", e.message);
                        at(&s.name, WeftError { message, ..e })
                    })?;
                }
                Ok(value)
            })
            .collect()
    }

    fn instantiate(&self, template: Template, results: &[Option<Value>]) -> Result<Value, WeftError> {
        Ok(match template {
            Template::Literal(v) => v,
            Template::Ref { step, path, by_name } => {
                let name = &self.steps[step.0].name;
                let Some(result) = results.get(step.0).and_then(Option::as_ref) else {
                    return Err(WeftError::internal(format!(
                        "the result of {name} is not available; a step may only be bound once its dependencies completed"
                    )));
                };
                follow(result, &path)
                    .map_err(|why| {
                        let text =
                            if by_name { lit_hint(&format!("{name}.{}", path.join("."))) } else { String::new() };
                        WeftError::invalid_arguments(format!(
                            "path {:?} does not exist in the result of {name}: {why}{text}",
                            path.join(".")
                        ))
                    })?
                    .clone()
            }
            Template::Array(items) => {
                Value::Array(items.into_iter().map(|t| self.instantiate(t, results)).collect::<Result<_, _>>()?)
            }
            Template::Object(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(k, t)| Ok((k, self.instantiate(t, results)?)))
                    .collect::<Result<Map<_, _>, WeftError>>()?,
            ),
        })
    }
}

impl Template {
    fn collect_refs(&self, out: &mut Vec<(StepIdx, bool)>) {
        self.each_ref(&mut |step, _, by_name| out.push((step, by_name)));
    }

    /// As `each_ref`, with each reference's place below `at`, named as
    /// `wit::check` names places (`values[1]`, `s.count`), and the type
    /// expected there where the shape of `ty` (the type at `at`) shows it.
    fn each_ref_at<'t>(
        &'t self,
        at: &str,
        ty: Option<&WitType>,
        f: &mut impl FnMut(&str, Option<&WitType>, StepIdx, &'t [String], bool),
    ) {
        // A value present where an option goes is the option's inner value.
        let ty = match ty {
            Some(WitType::Option { some }) if !matches!(**some, WitType::Option { .. }) => Some(&**some),
            other => other,
        };
        match self {
            Template::Literal(_) => {}
            Template::Ref { step, path, by_name } => f(at, ty, *step, path, *by_name),
            Template::Array(items) => items.iter().enumerate().for_each(|(i, t)| {
                let inner = match ty {
                    Some(WitType::List { element }) => Some(&**element),
                    Some(WitType::Tuple { elements }) => elements.get(i),
                    _ => None,
                };
                t.each_ref_at(&format!("{at}[{i}]"), inner, f);
            }),
            Template::Object(fields) => fields.iter().for_each(|(k, t)| {
                let inner = match ty {
                    Some(WitType::Record { .. }) => ty.and_then(|r| r.field(k)),
                    Some(WitType::Variant { cases, .. }) => {
                        cases.iter().find(|c| c.name == *k).and_then(|c| c.ty.as_ref())
                    }
                    Some(WitType::Result { ok, .. }) if k == "ok" => ok.as_deref(),
                    Some(WitType::Result { err, .. }) if k == "err" => err.as_deref(),
                    Some(WitType::Option { some }) if k == "some" => Some(&**some),
                    _ => None,
                };
                t.each_ref_at(&format!("{at}.{k}"), inner, f);
            }),
        }
    }

    /// The JSON this stands for with each reference, in `each_ref` order,
    /// replaced by `next()`.
    fn probe(&self, next: &mut impl FnMut() -> Value) -> Value {
        match self {
            Template::Literal(v) => v.clone(),
            Template::Ref { .. } => next(),
            Template::Array(items) => Value::Array(items.iter().map(|t| t.probe(next)).collect()),
            Template::Object(fields) => Value::Object(fields.iter().map(|(k, t)| (k.clone(), t.probe(next))).collect()),
        }
    }

    /// Calls `f` with the step, path and spelling of every reference inside.
    fn each_ref<'t>(&'t self, f: &mut impl FnMut(StepIdx, &'t [String], bool)) {
        match self {
            Template::Literal(_) => {}
            Template::Ref { step, path, by_name } => f(*step, path, *by_name),
            Template::Array(items) => items.iter().for_each(|t| t.each_ref(f)),
            Template::Object(fields) => fields.iter().for_each(|(_, t)| t.each_ref(f)),
        }
    }

    fn into_literal(self) -> Option<Value> {
        match self {
            Template::Literal(v) => Some(v),
            _ => None,
        }
    }
}

/// Prefixes an error with the command it concerns, once, and records the
/// command in the details for programs.
fn at(cmd: &str, e: WeftError) -> WeftError {
    let prefix = format!("command {cmd}");
    let e = if e.message.starts_with(&format!("{prefix}:")) { e } else { e.context(prefix) };
    e.with("command", cmd)
}

/// The clusters and resources a command names must be names a cluster or
/// node could have.
fn check_names(cmd: &Command) -> Result<(), WeftError> {
    if let Some(cluster) = cmd.target_cluster.as_deref().filter(|c| !weft_proto::is_valid_name(c)) {
        return Err(at(
            &cmd.name,
            WeftError::invalid_request(format!(
                "target_cluster {cluster:?} is not a cluster name: {}",
                weft_proto::NAME_RULE
            )),
        ));
    }
    if let Some(label) = cmd.locs.iter().find(|l| !weft_proto::is_valid_name(l)) {
        return Err(at(
            &cmd.name,
            WeftError::invalid_request(format!("locs: {label:?} is not a resource label: {}", weft_proto::NAME_RULE)),
        ));
    }
    Ok(())
}

fn index_names(cmds: &[Command]) -> Result<HashMap<String, StepIdx>, WeftError> {
    let mut index = HashMap::with_capacity(cmds.len());
    for (i, cmd) in cmds.iter().enumerate() {
        if cmd.name.is_empty() {
            return Err(WeftError::invalid_request(format!(
                "command #{} has an empty name; every command needs a name unique within the request",
                i + 1
            ))
            .with("index", i));
        }
        if let Some(first) = index.insert(cmd.name.clone(), StepIdx(i)) {
            return Err(at(
                &cmd.name,
                WeftError::invalid_request(format!(
                    "the name is used by commands #{} and #{}; names must be unique within a request",
                    first.0 + 1,
                    i + 1
                )),
            ));
        }
    }
    Ok(index)
}

struct TemplateParser<'a> {
    index: &'a HashMap<String, StepIdx>,
    cmds: &'a [Command],
    this: usize,
}

impl TemplateParser<'_> {
    fn parse(&self, v: &Value) -> Result<Template, WeftError> {
        Ok(match v {
            Value::Object(o) if o.contains_key("$ref") => self.reference(o)?,
            Value::Object(o) if o.contains_key("$lit") => match (o.len(), o.get("$lit")) {
                (1, Some(lit)) => Template::Literal(lit.clone()),
                _ => {
                    return Err(self.invalid(format!(
                        "a {{\"$lit\": ..}} object may have no other key, found {}",
                        other_keys(o, &["$lit"])
                    )));
                }
            },
            Value::String(s) => self.by_name(s).unwrap_or_else(|| Template::Literal(v.clone())),
            Value::Array(items) => {
                let parts = items.iter().map(|x| self.parse(x)).collect::<Result<Vec<_>, _>>()?;
                if parts.iter().all(|p| matches!(p, Template::Literal(_))) {
                    Template::Literal(Value::Array(parts.into_iter().filter_map(Template::into_literal).collect()))
                } else {
                    Template::Array(parts)
                }
            }
            Value::Object(o) => {
                let parts =
                    o.iter().map(|(k, x)| Ok((k.clone(), self.parse(x)?))).collect::<Result<Vec<_>, WeftError>>()?;
                if parts.iter().all(|(_, p)| matches!(p, Template::Literal(_))) {
                    Template::Literal(Value::Object(
                        parts.into_iter().filter_map(|(k, p)| Some((k, p.into_literal()?))).collect(),
                    ))
                } else {
                    Template::Object(parts)
                }
            }
            other => Template::Literal(other.clone()),
        })
    }

    /// MPREG's bare-string reference: the name of another command, or (as
    /// MPREG reads `"a.mean"`) such a name, a dot and a path into its
    /// result. Names may hold dots, so the longest name the string is or
    /// starts with (and a dot) is the one meant; the command's own stays
    /// text.
    fn by_name(&self, s: &str) -> Option<Template> {
        let prefixes = s.rmatch_indices('.').map(|(i, _)| (&s[..i], Some(&s[i + 1..])));
        let (name, path) =
            std::iter::once((s, None)).chain(prefixes).find(|(name, _)| self.index.contains_key(*name))?;
        let step = self.index[name];
        let path: Vec<String> = path.map_or_else(Vec::new, |p| p.split('.').map(str::to_owned).collect());
        // "a." or "a..b" names no part of a result: text after all.
        let text = step.0 == self.this || path.iter().any(String::is_empty);
        (!text).then_some(Template::Ref { step, path, by_name: true })
    }

    fn reference(&self, o: &Map<String, Value>) -> Result<Template, WeftError> {
        if o.keys().any(|k| k != "$ref" && k != "path") {
            return Err(self.invalid(format!(
                "a {{\"$ref\": ..}} object may only have the keys \"$ref\" and \"path\", found {}; \
                 wrap a value in {{\"$lit\": ..}} to pass it literally",
                other_keys(o, &["$ref", "path"])
            )));
        }
        let Some(Value::String(target)) = o.get("$ref") else {
            return Err(self.invalid("\"$ref\" must be the name of a command (a string)".into()));
        };
        let path = match o.get("path") {
            None => Vec::new(),
            Some(Value::String(p)) if p.is_empty() => Vec::new(),
            Some(Value::String(p)) => {
                let path: Vec<String> = p.split('.').map(str::to_owned).collect();
                if path.iter().any(String::is_empty) {
                    return Err(self.invalid(format!(
                        "path {p:?} of {{\"$ref\": {target:?}}} has an empty segment; write fields and indices as \"field.sub.0\""
                    )));
                }
                path
            }
            Some(_) => {
                return Err(self.invalid(format!("the path of {{\"$ref\": {target:?}}} must be a string")));
            }
        };
        let Some(&step) = self.index.get(target) else {
            let names: Vec<&str> = self.cmds.iter().map(|c| c.name.as_str()).collect();
            // "a.field" for part of a's result is a natural guess.
            let hint = match target.split_once('.') {
                Some((name, rest)) if self.index.contains_key(name) => {
                    format!("; for part of {name}'s result, write {{\"$ref\": {name:?}, \"path\": {rest:?}}}")
                }
                _ => String::new(),
            };
            return Err(self
                .invalid(format!(
                    "{{\"$ref\": {target:?}}} names no command of this request (its commands: {}){hint}",
                    abbreviate(&names)
                ))
                .with("reference", target.as_str()));
        };
        Ok(Template::Ref { step, path, by_name: false })
    }

    fn invalid(&self, message: String) -> WeftError {
        at(&self.cmds[self.this].name, WeftError::invalid_request(message))
    }
}

fn other_keys(o: &Map<String, Value>, allowed: &[&str]) -> String {
    let keys: Vec<String> = o.keys().filter(|k| !allowed.contains(&k.as_str())).map(|k| format!("{k:?}")).collect();
    keys.join(", ")
}

/// Lists names for a message without letting a huge request flood it.
fn abbreviate(names: &[&str]) -> String {
    const SHOWN: usize = 20;
    let head = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN { format!("{head}, ... ({} in all)", names.len()) } else { head }
}

/// Levels by Kahn's algorithm; whatever it cannot order lies on or behind a
/// cycle. Iterative, so a deep chain cannot overflow the stack. `bare` says
/// which commands' references include bare strings, which may have been
/// meant as text.
fn levels(cmds: &[Command], deps: &[Vec<StepIdx>], bare: &[bool]) -> Result<Vec<u32>, WeftError> {
    let n = cmds.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        ds.iter().for_each(|d| dependents[d.0].push(i));
    }
    let mut level = vec![0u32; n];
    let mut ordered = vec![false; n];
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    while let Some(i) = ready.pop() {
        ordered[i] = true;
        for &j in &dependents[i] {
            level[j] = level[j].max(level[i] + 1);
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(j);
            }
        }
    }
    let Some(start) = ordered.iter().position(|done| !done) else {
        return Ok(level);
    };

    // Every unordered step waits on another unordered step, so following
    // those waits must come back to a step already seen: that loop is a cycle.
    let mut seen_at = vec![None; n];
    let mut walk = vec![start];
    seen_at[start] = Some(0);
    let cycle_start = loop {
        let current = walk[walk.len() - 1];
        let Some(next) = deps[current].iter().map(|d| d.0).find(|&d| !ordered[d]) else {
            return Err(WeftError::internal("cycle search left the unordered steps"));
        };
        if let Some(pos) = seen_at[next] {
            break pos;
        }
        seen_at[next] = Some(walk.len());
        walk.push(next);
    };
    // Start the report at the cycle's earliest command so it reads the same
    // whatever step the search started from.
    let mut cycle = walk.split_off(cycle_start);
    let first = cycle.iter().enumerate().min_by_key(|(_, i)| **i).map_or(0, |(pos, _)| pos);
    cycle.rotate_left(first);
    cycle.push(cycle[0]);
    let names: Vec<&str> = cycle.iter().map(|&i| cmds[i].name.as_str()).collect();
    let mut message = if names.len() == 2 {
        format!("it references its own result ({}); a command cannot use its own result", names.join(" -> "))
    } else {
        format!(
            "dependency cycle {}; a command cannot use its own result, directly or through other commands",
            names.join(" -> ")
        )
    };
    if cycle.iter().any(|&i| bare[i]) {
        message += " (a string that names a command, alone or followed by a dot and a path, stands for its result: wrap text in {\"$lit\": ..})";
    }
    Err(at(names[0], WeftError::invalid_request(message)).with("cycle", names))
}

/// Maps positional and named arguments onto the parameters, in parameter order.
fn arrange(r: &Resolved, args: Vec<Template>, kwargs: Vec<(String, Template)>) -> Result<Vec<Template>, WeftError> {
    let params = &r.sig.params;
    let function = &r.function;
    if args.len() > params.len() {
        return Err(WeftError::invalid_arguments(format!(
            "{function} takes {} argument(s) ({}) but {} given",
            params.len(),
            r.sig,
            args.len()
        )));
    }
    let given = args.len();
    let mut slots: Vec<Option<Template>> = args.into_iter().map(Some).collect();
    slots.resize_with(params.len(), || None);
    for (name, template) in kwargs {
        let Some(i) = params.iter().position(|p| p.name == name) else {
            return Err(WeftError::invalid_arguments(format!(
                "{function} has no parameter '{name}'; its signature is {}",
                r.sig
            ))
            .with("parameter", name));
        };
        if i < given {
            return Err(WeftError::invalid_arguments(format!(
                "argument '{name}' of {function} (expected {}) is given twice: as positional argument #{} and by name",
                params[i].ty,
                i + 1
            ))
            .with("parameter", name));
        }
        slots[i] = Some(template);
    }
    slots
        .into_iter()
        .zip(params)
        .map(|(slot, p)| match (slot, &p.ty) {
            (Some(t), _) => Ok(t),
            // An absent option is `none`; this is what lets trailing option
            // parameters be left out.
            (None, WitType::Option { .. }) => Ok(Template::Literal(Value::Null)),
            (None, ty) => Err(WeftError::invalid_arguments(format!(
                "missing argument '{}' of {function} (expected {ty}); its signature is {}",
                p.name, r.sig
            ))
            .with("parameter", p.name.as_str())),
        })
        .collect()
}

/// Checks what can be known before running: literal arguments against their
/// parameter type, whole-argument references by the referenced function's
/// result type, and for arguments that nest references in literals, that
/// each reference has a value at its path and that the literal parts and
/// the references' types fit. `bind` checks the values themselves.
fn check_static(
    function: &FunctionId,
    param: &Field,
    template: &Template,
    cmds: &[Command],
    resolved: &[Resolved],
) -> Result<(), WeftError> {
    let fail = |why: String| {
        WeftError::invalid_arguments(format!("argument '{}' of {function}: {why}", param.name))
            .with("parameter", param.name.as_str())
    };
    // The type at the reference's path, or why it has none.
    let typed = |step: StepIdx, path: &[String], by_name: bool| {
        let source = &resolved[step.0];
        let reference = RefName { cmd: &cmds[step.0].name, path };
        // A bare string may have been meant as text.
        let text = if by_name { lit_hint(&reference.to_string()) } else { String::new() };
        let Some(result) = source.sig.success_type() else {
            return Err(fail(format!("{reference} has no value: {} returns nothing{text}", source.function)));
        };
        follow_type(result, path).map_err(|why| fail(format!("{reference} does not exist: {why}{text}")))
    };
    // A reference whose result type does not fit what `place` expects.
    let misfit = |place: &str, expected: &str, step: StepIdx, path: &[String], by_name: bool, ty: &WitType| {
        let reference = RefName { cmd: &cmds[step.0].name, path };
        let text = if by_name { lit_hint(&reference.to_string()) } else { String::new() };
        let at = if place == param.name { String::new() } else { format!(" at {place}") };
        let from = &resolved[step.0].function;
        fail(format!("expected {expected}{at}, but {reference} is {ty} (from {from}){text}")).with("expected", expected)
    };
    match template {
        Template::Literal(v) => check(v, &param.ty, &param.name).map_err(|m| mismatch(function, m)),
        Template::Ref { step, path, by_name } => {
            let ty = typed(*step, path, *by_name)?;
            if ty.fits(&param.ty) {
                Ok(())
            } else {
                Err(misfit(&param.name, &param.ty.to_string(), *step, path, *by_name, ty))
            }
        }
        Template::Array(_) | Template::Object(_) => {
            // Every reference must have a value, of a type that fits its
            // place as a whole argument's must. Then the whole, with a value
            // of each reference's type in its place, must fit: a mismatch at
            // a reference's place is that reference's, anywhere else a
            // literal's, and either is known before anything runs.
            let (mut refs, mut first_error) = (Vec::new(), None);
            template.each_ref_at(&param.name, Some(&param.ty), &mut |place, here, step, path, by_name| {
                let checked = typed(step, path, by_name).and_then(|ty| match here {
                    Some(here) if !ty.fits(here) => Err(misfit(place, &here.to_string(), step, path, by_name, ty)),
                    _ => Ok(ty),
                });
                match checked {
                    Ok(ty) => refs.push((place.to_owned(), step, path, by_name, ty)),
                    Err(e) => drop(first_error.get_or_insert(e)),
                }
            });
            if let Some(e) = first_error {
                return Err(e);
            }
            let mut samples = refs.iter().map(|r| r.4.sample());
            let probe = template.probe(&mut || samples.next().unwrap_or_default());
            let Err(m) = check(&probe, &param.ty, &param.name) else {
                return Ok(());
            };
            match refs.iter().find(|r| within(&m.path, &r.0)) {
                Some((_, step, path, by_name, ty)) => Err(misfit(&m.path, &m.expected, *step, path, *by_name, ty)),
                None => Err(mismatch(function, m)),
            }
        }
    }
}

/// Whether the place `path` (as `wit::check` names places) is `place` or
/// inside it.
fn within(path: &str, place: &str) -> bool {
    path.strip_prefix(place).is_some_and(|rest| rest.is_empty() || rest.starts_with(['[', '.']))
}

/// What to write for `text` that a bare string reference was meant to be.
fn lit_hint(text: &str) -> String {
    format!(
        " (a string that names a command, alone or followed by a dot and a path, stands for its result: write {{\"$lit\": {text:?}}} for the text itself)"
    )
}

fn mismatch(function: &FunctionId, m: Mismatch) -> WeftError {
    WeftError::invalid_arguments(format!(
        "argument '{}' of {function}: expected {}, got {}",
        m.path, m.expected, m.found
    ))
    .with("parameter", m.path)
    .with("expected", m.expected)
}

/// `a` or `a.mean.0`, as a reference is named in messages.
struct RefName<'a> {
    cmd: &'a str,
    path: &'a [String],
}

impl fmt::Display for RefName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cmd)?;
        self.path.iter().try_for_each(|seg| write!(f, ".{seg}"))
    }
}

/// The type at `path` inside a value of type `ty`. An option is looked
/// through, since `some(x)` travels as x; a `none` fails at bind time.
fn follow_type<'t>(mut ty: &'t WitType, path: &[String]) -> Result<&'t WitType, String> {
    for seg in path {
        if let WitType::Option { some } = ty {
            ty = some;
        }
        ty = match ty {
            WitType::Record { fields, .. } => ty.field(seg).ok_or_else(|| {
                let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                format!("{ty} has no field '{seg}' (fields: {})", names.join(", "))
            })?,
            WitType::List { element } if index(seg).is_some() => element,
            WitType::Tuple { elements } => index(seg).and_then(|i| elements.get(i)).ok_or_else(|| {
                format!("'{seg}' is not an index of {ty} (0 to {})", elements.len().saturating_sub(1))
            })?,
            _ => return Err(format!("'{seg}' cannot be taken from a value of type {ty}")),
        };
    }
    Ok(ty)
}

/// A path segment as a list or tuple index: decimal digits, as written by
/// `to_string` (no sign, no leading zero), so each element has one spelling.
fn index(seg: &str) -> Option<usize> {
    let canonical = seg.bytes().all(|b| b.is_ascii_digit()) && (seg == "0" || !seg.starts_with('0'));
    canonical.then(|| seg.parse().ok()).flatten()
}

/// The part of `value` at `path` (a reference's `path`, split at its dots).
pub fn follow<'v>(mut value: &'v Value, path: &[String]) -> Result<&'v Value, String> {
    for seg in path {
        value = match value {
            Value::Object(o) => o.get(seg).ok_or_else(|| format!("the object has no field '{seg}'"))?,
            Value::Array(a) => index(seg)
                .and_then(|i| a.get(i))
                .ok_or_else(|| format!("no element '{seg}' in an array of {} elements", a.len()))?,
            Value::Null => return Err(format!("'{seg}' cannot be taken from null")),
            Value::Bool(_) => return Err(format!("'{seg}' cannot be taken from a boolean")),
            Value::Number(_) => return Err(format!("'{seg}' cannot be taken from a number")),
            Value::String(_) => return Err(format!("'{seg}' cannot be taken from a string")),
        };
    }
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

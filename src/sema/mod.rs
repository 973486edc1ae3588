//! Stage 2: AST to checked IR.
//!
//! Resolves names (locals, items, `use std::…` imports), inlines `fn`s, infers every index's range from the
//! subscripts it appears in, and checks kinds (numbers, integers, conditions) and symbolic shapes. Every
//! error found is reported: a failed sub-expression lowers to "poison" (`None`), which later checks skip
//! silently, so one mistake yields one diagnostic.
//!
//! Invariants of the output: the IR passes [`crate::ir::verify::verify`]; every index has a range; every
//! dimension symbol is the whole extent of some input axis, so call-time shapes bind all of them.

mod consts;
mod externs;
mod order;
mod std_modules;
mod uses;

use std::collections::HashMap;
use std::rc::Rc;

use crate::diag::{Code, Diag, Diags, SourceId, SourceMap, Span, closest};
use crate::ir::{
    self, Dim, DimId, DimSym, Expr, Function, IndexId, Module, NodeId, Role, Scalar, TensorDef, TensorId, TensorRef,
};
use crate::prims::{Prim, Sig};
use crate::syntax::ast::{self, BinOp, ElemTy, ExprKind, ItemKind, ReduceOp, StmtKind, UnOp};

pub use consts::Const;
pub use std_modules::{module_names as stdlib_modules, module_source as stdlib_source};

/// The deepest chain of `fn` calls inlined into one another (chains of 100 compile in milliseconds: an
/// inlined call is shared by its arguments).
const MAX_INLINE: usize = 128;

/// Checks a parsed file (and what it imports) and lowers every loss to IR.
pub fn check(sources: &mut SourceMap, root: SourceId, file: ast::File) -> Result<Module, Diags> {
    let mut sema = Sema {
        sources,
        units: Vec::new(),
        std_units: HashMap::new(),
        diags: Vec::new(),
        consts: consts::Consts::default(),
    };
    let root_unit = sema.add_unit(root, file);
    let mut module = Module::default();
    for r in sema.losses_of(root_unit) {
        if let Some(f) = sema.lower_loss(r.unit, r.item) {
            module.functions.push(f);
        }
    }
    let Sema { diags, sources, .. } = sema;
    if diags.is_empty() {
        Ok(module)
    } else {
        Err(Diags(diags.into_iter().map(|d| d.with_source(sources)).collect()))
    }
}

/// Where a global name points: an item of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ItemRef {
    unit: usize,
    item: usize,
}

/// One parsed file and the names visible at its top level.
struct Unit {
    file: Rc<ast::File>,
    globals: HashMap<String, ItemRef>,
    /// Imported items in import order (their losses join the module).
    imports: Vec<ItemRef>,
}

struct Sema<'s> {
    sources: &'s mut SourceMap,
    units: Vec<Unit>,
    std_units: HashMap<String, Option<usize>>,
    diags: Vec<Diag>,
    consts: consts::Consts,
}

impl Sema<'_> {
    fn err(&mut self, d: Diag) {
        self.diags.push(d);
    }

    fn item(&self, r: ItemRef) -> &ast::Item {
        &self.units[r.unit].file.items[r.item]
    }

    /// Registers a file's items, then resolves its imports.
    fn add_unit(&mut self, _source: SourceId, file: ast::File) -> usize {
        let unit = self.units.len();
        let file = Rc::new(file);
        self.units.push(Unit {
            file: file.clone(),
            globals: HashMap::new(),
            imports: Vec::new(),
        });
        for (k, item) in file.items.iter().enumerate() {
            if let Some(name) = item.name() {
                let r = ItemRef { unit, item: k };
                if let Some(prev) = self.units[unit].globals.get(&name.name).copied() {
                    let prev_span = self.item(prev).name().map(|n| n.span).unwrap_or(item.span);
                    self.err(
                        Diag::new(Code::Duplicate, format!("`{}` is defined twice", name.name))
                            .label(name.span, "defined again here")
                            .label(prev_span, "first defined here")
                            .help("rename one of them"),
                    );
                } else {
                    self.units[unit].globals.insert(name.name.clone(), r);
                }
            }
        }
        for item in file.items.iter() {
            if let ItemKind::Use { path, glob } = &item.kind {
                self.resolve_use(unit, path, *glob, item.span);
            }
        }
        unit
    }

    fn resolve_use(&mut self, unit: usize, path: &[ast::Ident], glob: bool, span: Span) {
        let Some(first) = path.first() else { return };
        if first.name != "std" {
            self.err(
                Diag::new(Code::UnknownModule, format!("unknown module `{}`", first.name))
                    .label(first.span, "not a module")
                    .help("imports come from the standard library: `use std::classification::cross_entropy`"),
            );
            return;
        }
        let rest = &path[1..];
        if rest.is_empty() {
            self.err(
                Diag::new(Code::UnknownModule, "`use std` needs a module")
                    .label(span, "names no module")
                    .help(format!("modules: {}", stdlib_modules().join(", "))),
            );
            return;
        }
        let join = |p: &[ast::Ident]| p.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join("/");
        // `use std::a::b` is item `b` of module `a`, unless `a/b` is itself a module.
        let whole = join(rest);
        let (module, item_name): (String, Option<&ast::Ident>) =
            if glob || stdlib_source(&whole).is_some() || rest.len() == 1 {
                (whole, None)
            } else {
                (join(&rest[..rest.len() - 1]), rest.last())
            };
        let module_span = rest[0]
            .span
            .to(rest[rest.len() - 1 - usize::from(item_name.is_some())].span);
        let Some(m) = self.load_std(&module, module_span) else {
            return;
        };
        let targets: Vec<(String, ItemRef, Span)> = match item_name {
            Some(name) => match self.units[m].globals.get(&name.name) {
                Some(r) if r.unit == m => vec![(name.name.clone(), *r, name.span)],
                _ => {
                    let names: Vec<String> = self.units[m].globals.keys().cloned().collect();
                    let mut d = Diag::new(
                        Code::UnknownImport,
                        format!("`std::{}` has no item `{}`", module.replace('/', "::"), name.name),
                    )
                    .label(name.span, "not found in that module");
                    d = match closest(&name.name, names.iter().map(String::as_str)) {
                        Some(c) => d.help(format!("did you mean `{c}`?")),
                        None => d.help(format!("its items: {}", sorted(names).join(", "))),
                    };
                    self.err(d);
                    return;
                }
            },
            None => {
                let mut all: Vec<(String, ItemRef, Span)> = self.units[m]
                    .globals
                    .iter()
                    .filter(|(_, r)| r.unit == m)
                    .map(|(n, r)| (n.clone(), *r, span))
                    .collect();
                all.sort_by_key(|(_, r, _)| r.item);
                all
            }
        };
        for (name, r, at) in targets {
            match self.units[unit].globals.get(&name).copied() {
                Some(prev) if prev == r => {}
                Some(prev) => {
                    let prev_span = self.item(prev).name().map(|n| n.span).unwrap_or(at);
                    let mut d = Diag::new(Code::Duplicate, format!("`{name}` is imported but already defined"))
                        .label(at, "imported here");
                    if prev_span.source == at.source {
                        d = d.label(prev_span, "already defined here");
                    }
                    self.err(d.help("rename the local item, or import only the items you need"));
                }
                None => {
                    self.units[unit].globals.insert(name, r);
                    self.units[unit].imports.push(r);
                }
            }
        }
    }

    /// Parses and registers a stdlib module once.
    fn load_std(&mut self, module: &str, span: Span) -> Option<usize> {
        if let Some(u) = self.std_units.get(module) {
            return *u;
        }
        let Some(text) = stdlib_source(module) else {
            let mods = stdlib_modules();
            let mut d = Diag::new(
                Code::UnknownModule,
                format!("no stdlib module `std::{}`", module.replace('/', "::")),
            )
            .label(span, "not found in stdlib/");
            d = match closest(module, mods.iter().copied()) {
                Some(c) => d.help(format!("did you mean `std::{}`?", c.replace('/', "::"))),
                None => d.help(format!("modules: {}", mods.join(", "))),
            };
            self.err(d);
            self.std_units.insert(module.to_string(), None);
            return None;
        };
        self.std_units.insert(module.to_string(), None);
        let source = self.sources.add(format!("std::{}", module.replace('/', "::")), text);
        let text = self.sources.get(source).text.clone();
        match crate::syntax::parse(source, &text) {
            Ok(file) => {
                let u = self.add_unit(source, file);
                self.std_units.insert(module.to_string(), Some(u));
                Some(u)
            }
            Err(d) => {
                self.err(d);
                None
            }
        }
    }

    /// The losses a unit defines, then those it imports.
    fn losses_of(&self, unit: usize) -> Vec<ItemRef> {
        let u = &self.units[unit];
        let own = (0..u.file.items.len()).map(|item| ItemRef { unit, item });
        own.chain(u.imports.iter().copied())
            .filter(|r| matches!(self.item(*r).kind, ItemKind::Loss(_)))
            .collect()
    }

    fn lower_loss(&mut self, unit: usize, item: usize) -> Option<Function> {
        let file = self.units[unit].file.clone();
        let it = &file.items[item];
        let ItemKind::Loss(def) = &it.kind else {
            return None;
        };
        let before = self.diags.len();
        let mut f = Function::new(def.name.name.clone(), def.name.span);
        f.doc = it.doc.clone();
        let mut cx = Cx {
            defining: None,
            errors_before: before,
            guarded: Vec::new(),
            streams: 0,
            gradients: HashMap::new(),
            later_uses: Vec::new(),
            sema: self,
            unit,
            f,
            scopes: vec![Vec::new()],
            ranges: Vec::new(),
            fn_stack: Vec::new(),
            inlined: HashMap::new(),
        };
        cx.lower_loss(def);
        let f = cx.f;
        if self.diags.len() > before {
            return None;
        }
        debug_assert_eq!(ir::verify::verify(&f), Ok(()));
        Some(f)
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// What a name in a loss body refers to.
/// One term of an operator chain: its lowered value, whether a `-` or `/` precedes it, and where it is
/// written.
#[derive(Clone, Copy)]
struct Term<'a> {
    inverted: bool,
    node: NodeId,
    ast: &'a ast::Expr,
}

#[derive(Clone, Copy, Debug)]
enum Local {
    Dim(DimId),
    Input(u32),
    Hyper(u32),
    Tensor(TensorId),
    Index(IndexId),
    /// A `fn` parameter or `fn`-local `let`: an already-lowered node.
    Value(NodeId),
    /// A definition whose value failed to lower; uses are silently poison.
    Poison,
}

/// How an index's range was determined so far.
#[derive(Clone, Debug)]
struct RangeOrigin {
    dim: Dim,
    span: Span,
    what: String,
}

/// Lowering state for one loss.
struct Cx<'a, 's> {
    sema: &'a mut Sema<'s>,
    /// The unit whose globals are visible (changes while inlining a `fn` from another file).
    unit: usize,
    f: Function,
    scopes: Vec<Vec<(String, Local, Span)>>,
    ranges: Vec<Option<RangeOrigin>>,
    fn_stack: Vec<ItemRef>,
    /// Inlined calls by (fn, lowered arguments): a `fn` body is a pure function of its arguments.
    inlined: HashMap<(ItemRef, Vec<NodeId>), Option<NodeId>>,
    /// The `let` or `out` whose body is being lowered (a use of its own name says so).
    defining: Option<String>,
    /// How many diagnostics there were before this loss (an index range left unknown after an error in
    /// the loss is a follow-on, not reported).
    errors_before: usize,
    /// The indices the enclosing guards test (`if` conditions, reduction masks): a bare index among them
    /// may subscript an axis of another size (`if i < B then a[i, d] else …`), checked at run time.
    guarded: Vec<IndexId>,
    /// Random draw sites lowered so far: the next one's stream number.
    streams: i64,
    /// The gradient tensors `grad(e, x[…])` made so far, by (e, input).
    gradients: HashMap<(NodeId, u32), TensorId>,
    /// The loss body's reads with bare-index subscripts, for `let` head ranges fixed only by later uses.
    later_uses: Vec<uses::Use>,
}

enum Found {
    Local(Local, Span),
    Global(ItemRef),
}

impl Cx<'_, '_> {
    fn err(&mut self, d: Diag) {
        self.sema.err(d);
    }

    fn lookup(&self, name: &str) -> Option<Found> {
        for scope in self.scopes.iter().rev() {
            if let Some((_, l, s)) = scope.iter().rev().find(|(n, _, _)| n == name) {
                return Some(Found::Local(*l, *s));
            }
        }
        self.sema.units[self.unit].globals.get(name).map(|r| Found::Global(*r))
    }

    /// The names in scope that could stand where an unknown `what` was written ("tensor": inputs and
    /// `let`s; "dimension": dimensions, `idx` hyperparameters and consts; otherwise any value), so a
    /// suggestion is always of the right kind.
    fn visible_names(&self, what: &str) -> Vec<String> {
        let fits = |l: &Local| match what {
            "tensor" => matches!(l, Local::Input(_) | Local::Tensor(_)),
            "dimension" => matches!(l, Local::Dim(_) | Local::Hyper(_)),
            _ => !matches!(l, Local::Poison),
        };
        let mut v: Vec<String> = (self.scopes.iter().flatten())
            .filter(|(_, l, _)| fits(l))
            .map(|(n, _, _)| n.clone())
            .collect();
        if what != "tensor" {
            let globals = &self.sema.units[self.unit].globals;
            v.extend(
                (globals.iter())
                    .filter(|(_, r)| matches!(self.sema.item(**r).kind, ItemKind::Const { .. }))
                    .map(|(n, _)| n.clone()),
            );
        }
        v
    }

    fn unknown_name(&mut self, name: &ast::Ident, what: &str) {
        if self.defining.as_deref() == Some(name.name.as_str()) {
            let d = Diag::new(Code::UnknownName, format!("`{}` cannot refer to itself", name.name))
                .label(name.span, "used in its own definition")
                .help("a `let` sees only the names defined before it; give the new value another name");
            self.err(d);
            return;
        }
        let names = self.visible_names(what);
        let mut d = Diag::new(Code::UnknownName, format!("unknown {what} `{}`", name.name))
            .label(name.span, "not defined here");
        d = match closest(&name.name, names.iter().map(String::as_str)) {
            Some(c) => d.help(format!("did you mean `{c}`?")),
            None => d.help("define it as an input, a `let`, a `const` or an index of a reduction"),
        };
        self.err(d);
    }

    /// Binds a name in the innermost scope, reporting a clash with any visible local.
    fn bind(&mut self, name: &ast::Ident, local: Local) {
        if let Some(Found::Local(_, prev)) = self.lookup(&name.name) {
            self.err(
                Diag::new(Code::Duplicate, format!("`{}` is already defined", name.name))
                    .label(name.span, "defined again here")
                    .label(prev, "first defined here")
                    .help("use another name; lx does not shadow names"),
            );
        }
        self.scopes
            .last_mut()
            .expect("a scope is open")
            .push((name.name.clone(), local, name.span));
    }

    fn mk(&mut self, expr: Expr, scalar: Scalar, span: Span) -> Option<NodeId> {
        let r = self.f.add(expr, scalar, span);
        self.lift(r, span)
    }

    /// A node-building result, with the IR's size limit reported as a diagnostic.
    fn lift<T>(&mut self, r: Result<T, ir::TooDeep>, span: Span) -> Option<T> {
        match r {
            Ok(id) => Some(id),
            Err(ir::TooDeep) => {
                self.err(
                    Diag::new(Code::TooDeep, "expression too deep after inlining")
                        .label(span, "this expression grows too deep")
                        .help("split it with `let` (each let is evaluated once)"),
                );
                None
            }
        }
    }

    fn kind(&self, id: NodeId) -> Scalar {
        self.f.node(id).scalar
    }

    // ---- signature ----

    fn lower_loss(&mut self, def: &ast::LossDef) {
        // Hyperparameters first, so that an input's type may name an `idx` hyperparameter as a dimension
        // wherever it is declared (`bank: f32[B, S, C] state[ids], S: idx = 4`).
        let is_hyper = |p: &&ast::Param| p.default.is_some() && p.state.is_none();
        for p in def.params.iter().filter(is_hyper) {
            self.param(p);
        }
        for p in def.params.iter().filter(|p| !is_hyper(p)) {
            self.param(p);
        }
        self.state_keys(def);
        // Every dimension symbol must be the extent of some input axis.
        for (k, d) in self.f.dims.clone().iter().enumerate() {
            let id = DimId(k as u32);
            let determined = d.hyper.is_some() || self.f.inputs.iter().any(|i| i.shape.contains(&Dim::Sym(id)));
            if !determined {
                self.err(
                    Diag::new(
                        Code::UndeterminedDim,
                        format!("dimension `{}` is not the size of any input axis", d.name),
                    )
                    .label(d.span, "only used here")
                    .help(format!(
                        "give some input an axis of size {0}, e.g. `x: f32[{0}]`, or use a const",
                        d.name
                    )),
                );
            }
        }
        self.body(&def.body, &def.outputs, def.result.as_ref());
    }

    fn param(&mut self, p: &ast::Param) {
        if let Some(default) = &p.default
            && p.state.is_none()
        {
            if !p.ty.shape.is_empty() || p.ty.bound.is_some() {
                self.err(
                    Diag::new(
                        Code::DefaultOnTensor,
                        format!("`{}` has a shape and a default", p.name.name),
                    )
                    .label(p.ty.span, "a tensor type")
                    .label(default.span, "a default")
                    .help("only scalar hyperparameters take defaults; drop the default to make it an input"),
                );
                self.bind(&p.name, Local::Poison);
                return;
            }
            let value = consts::eval(self.sema, self.unit, default);
            let scalar = if p.ty.elem == ElemTy::Idx {
                Scalar::Int
            } else {
                Scalar::Float
            };
            let Some(value) = value else {
                self.bind(&p.name, Local::Poison);
                return;
            };
            let v = match (scalar, value) {
                (Scalar::Int, Const::Float(_)) => {
                    self.err(
                        Diag::new(
                            Code::DefaultType,
                            format!("`{}` is an integer but its default is a float", p.name.name),
                        )
                        .label(default.span, "a float")
                        .label(p.ty.span, "declared idx")
                        .help("write an integer literal, or declare the parameter f32"),
                    );
                    0.0
                }
                (_, c) => c.as_f64(),
            };
            self.f.hypers.push(ir::Hyper {
                name: p.name.name.clone(),
                scalar,
                default: v,
                span: p.name.span,
            });
            self.bind(&p.name, Local::Hyper(self.f.hypers.len() as u32 - 1));
            return;
        }
        if let Some(ng) = p.nograd
            && p.ty.elem == ElemTy::Idx
        {
            self.err(
                Diag::new(
                    Code::NogradOnLabel,
                    format!("`{}` is an idx input; `nograd` does not apply", p.name.name),
                )
                .label(ng, "not needed")
                .help("integer inputs never carry a gradient; remove `nograd`"),
            );
        }
        let mut shape = Vec::new();
        for d in &p.ty.shape {
            shape.push(self.input_dim(d).unwrap_or(Dim::Const(0)));
        }
        let bound = match &p.ty.bound {
            Some(b) if p.ty.elem != ElemTy::Idx => {
                self.err(
                    Diag::new(Code::BadDim, "only idx inputs take a bound")
                        .label(b.span, "a bound on a float input")
                        .help("write `y: idx[N] < C` for labels in 0..C"),
                );
                None
            }
            Some(b) => self.input_dim(b),
            None => None,
        };
        self.f.inputs.push(ir::Input {
            name: p.name.name.clone(),
            elem: p.ty.elem,
            shape,
            bound,
            ignore: p.ty.ignore,
            nograd: p.nograd.is_some() || p.state.is_some(),
            state: None,
            produced_by: None,
            span: p.name.span,
        });
        self.bind(&p.name, Local::Input(self.f.inputs.len() as u32 - 1));
    }

    /// Resolves `state[key]` inputs and `updates` outputs once every parameter is known.
    fn state_keys(&mut self, def: &ast::LossDef) {
        let help_key = "a state input is gathered by a rank-1 idx input of sample ids, a row per id: \
                        `ids: idx[B], u: f32[B] state[ids] = 0.0` or `bank: f32[B, S, C] state[ids]`";
        for p in def.params.iter().filter(|p| p.state.is_some()) {
            let Some(at) = self.f.inputs.iter().position(|i| i.name == p.name.name) else {
                continue;
            };
            let key = p.state.as_ref().expect("filtered");
            let fail = |this: &mut Self, msg: String, label: &str| {
                this.err(
                    Diag::new(Code::BadState, msg)
                        .label(key.span, label.to_string())
                        .label(p.ty.span, "the state's type")
                        .help(help_key),
                );
            };
            let Some(k) = self.f.inputs.iter().position(|i| i.name == key.name) else {
                fail(
                    self,
                    format!("`{}` is not an input of this loss", key.name),
                    "not an input",
                );
                continue;
            };
            let (key_in, state_in) = (&self.f.inputs[k], &self.f.inputs[at]);
            if key_in.elem != ElemTy::Idx || key_in.shape.len() != 1 {
                fail(
                    self,
                    format!("the state key `{}` is not a rank-1 idx input", key.name),
                    "not sample ids",
                );
                continue;
            }
            if state_in.elem == ElemTy::Idx
                || state_in.shape.is_empty()
                || state_in.shape.first() != key_in.shape.first()
            {
                let msg = format!(
                    "state `{}` must be a float tensor with one row per id of `{}`",
                    p.name.name, key.name
                );
                fail(self, msg, "the ids");
                continue;
            }
            // A row's extra axes (a ring buffer `[B, S, C]`) must be sized without the state itself: a store
            // gathers the rows before the call, from the other inputs' shapes and the hyperparameters.
            let states: Vec<&str> = def
                .params
                .iter()
                .filter(|q| q.state.is_some())
                .map(|q| q.name.name.as_str())
                .collect();
            let undetermined = state_in.shape[1..].iter().find_map(|d| match d {
                Dim::Sym(s)
                    if self.f.dims[s.index()].hyper.is_none()
                        && !self
                            .f
                            .inputs
                            .iter()
                            .any(|i| !states.contains(&i.name.as_str()) && i.shape.contains(d)) =>
                {
                    Some(*s)
                }
                _ => None,
            });
            if let Some(s) = undetermined {
                let dim = self.f.dims[s.index()].name.clone();
                let msg = format!(
                    "the size {dim} of a row of state `{}` is not given by another input or an idx hyperparameter",
                    p.name.name
                );
                self.err(
                    Diag::new(Code::BadState, msg)
                        .label(p.ty.span, "the state's type")
                        .help(format!(
                            "a state store gathers rows before the call, so {dim} must be an axis of another input \
                             (`x: f32[B, {dim}]`) or an idx hyperparameter (`{dim}: idx = 4`)"
                        )),
                );
                continue;
            }
            let init = match &p.default {
                None => ir::StateInit::Const(0.0),
                Some(e) => match &e.kind {
                    ast::ExprKind::Access { name, subscripts: None }
                        if self.f.hypers.iter().any(|h| h.name == name.name) =>
                    {
                        let h = self.f.hypers.iter().position(|h| h.name == name.name).expect("checked");
                        ir::StateInit::Hyper(h as u32)
                    }
                    _ => match consts::eval(self.sema, self.unit, e) {
                        Some(c) => ir::StateInit::Const(c.as_f64()),
                        None => continue,
                    },
                },
            };
            self.f.inputs[at].state = Some(ir::StateSpec { key: k as u32, init });
        }
        for o in &def.outputs {
            let Some(u) = &o.updates else { continue };
            let state = self.f.inputs.iter().position(|i| i.name == u.name && i.state.is_some());
            let Some(state) = state else {
                self.err(
                    Diag::new(Code::BadState, format!("`{}` is not a state input", u.name))
                        .label(u.span, "updated here")
                        .help("declare it as state: `u: f32[B] state[ids] = 0.0`"),
                );
                continue;
            };
            let declared: Vec<Option<Dim>> = o.ty.shape.iter().map(|d| self.dim(d)).collect();
            let same = declared.len() == self.f.inputs[state].shape.len()
                && declared
                    .iter()
                    .zip(&self.f.inputs[state].shape)
                    .all(|(a, b)| a.as_ref() == Some(b));
            if !same || o.ty.elem == ElemTy::Idx {
                let span = self.f.inputs[state].span;
                self.err(
                    Diag::new(
                        Code::BadState,
                        format!("output `{}` does not have the shape of state `{}`", o.name.name, u.name),
                    )
                    .label(o.ty.span, "this shape")
                    .label(span, "the state")
                    .help("an update writes whole rows back: declare it with the state's float type and shape"),
                );
                continue;
            }
            if let Some(prev) = self.f.updates.iter().find(|x| x.input == state as u32) {
                let msg = format!(
                    "state `{}` is updated by both `{}` and `{}`",
                    u.name, prev.output, o.name.name
                );
                self.err(
                    Diag::new(Code::BadState, msg)
                        .label(u.span, "a second update")
                        .help("write each state back from one output"),
                );
                continue;
            }
            self.f.updates.push(ir::StateUpdate {
                output: o.name.name.clone(),
                input: state as u32,
            });
        }
    }

    /// The dimension symbol sized by integer hyperparameter `h` at call time (created on first use).
    fn hyper_dim(&mut self, h: u32) -> DimId {
        if let Some(k) = self.f.dims.iter().position(|d| d.hyper == Some(h)) {
            return DimId(k as u32);
        }
        let hyper = &self.f.hypers[h as usize];
        self.f.dims.push(DimSym {
            name: hyper.name.clone(),
            span: hyper.span,
            hyper: Some(h),
        });
        DimId(self.f.dims.len() as u32 - 1)
    }

    /// A dimension in an input type: an integer, a const, or a dimension symbol (created on first use).
    fn input_dim(&mut self, d: &ast::DimExpr) -> Option<Dim> {
        match &d.kind {
            ast::DimExprKind::Int(v) => Some(Dim::Const(*v)),
            ast::DimExprKind::Name(n) => match self.lookup(n) {
                Some(Found::Local(Local::Dim(id), _)) => Some(Dim::Sym(id)),
                Some(Found::Global(_)) => self.dim(d),
                Some(Found::Local(Local::Hyper(h), _)) if self.f.hypers[h as usize].scalar == Scalar::Int => {
                    Some(Dim::Sym(self.hyper_dim(h)))
                }
                Some(Found::Local(_, prev)) => {
                    self.err(
                        Diag::new(Code::Duplicate, format!("`{n}` is a parameter and a dimension"))
                            .label(d.span, "used as a dimension")
                            .label(prev, "defined as a parameter")
                            .help("dimension names and parameter names must differ"),
                    );
                    None
                }
                None => {
                    self.f.dims.push(DimSym {
                        name: n.clone(),
                        span: d.span,
                        hyper: None,
                    });
                    let id = DimId(self.f.dims.len() as u32 - 1);
                    let ident = ast::Ident {
                        name: n.clone(),
                        span: d.span,
                    };
                    self.bind(&ident, Local::Dim(id));
                    Some(Dim::Sym(id))
                }
            },
            // An expression over idx hyperparameters and consts is known before any input (`E + 1`).
            _ if self.over_hypers(d) => self.dim(d),
            _ => {
                self.err(
                    Diag::new(Code::BadDim, "an input's dimension must be a name or an integer")
                        .label(d.span, "an expression")
                        .help(
                            "name the dimension (`f32[M]`) and derive others inside the body; only idx \
                             hyperparameters and consts combine (`f32[N, E + 1]`)",
                        ),
                );
                None
            }
        }
    }

    /// Whether every name in a dimension expression is an idx hyperparameter or an integer const.
    fn over_hypers(&self, d: &ast::DimExpr) -> bool {
        match &d.kind {
            ast::DimExprKind::Int(_) => true,
            ast::DimExprKind::Name(n) => match self.lookup(n) {
                Some(Found::Local(Local::Hyper(h), _)) => self.f.hypers[h as usize].scalar == Scalar::Int,
                Some(Found::Global(r)) => matches!(self.sema.item(r).kind, ItemKind::Const { .. }),
                _ => false,
            },
            ast::DimExprKind::Add(a, b) | ast::DimExprKind::Sub(a, b) | ast::DimExprKind::Mul(a, b) => {
                self.over_hypers(a) && self.over_hypers(b)
            }
        }
    }

    /// A dimension expression over known symbols and consts (let heads, binder ranges).
    fn dim(&mut self, d: &ast::DimExpr) -> Option<Dim> {
        let r = match &d.kind {
            ast::DimExprKind::Int(v) => Dim::Const(*v),
            ast::DimExprKind::Name(n) => match self.lookup(n) {
                Some(Found::Local(Local::Dim(id), _)) => Dim::Sym(id),
                Some(Found::Global(r)) if matches!(self.sema.item(r).kind, ItemKind::Const { .. }) => {
                    match consts::item_value(self.sema, r) {
                        Some(Const::Int(v)) => Dim::Const(v),
                        Some(Const::Float(v)) => {
                            self.err(
                                Diag::new(Code::DimArithmetic, format!("const `{n}` = {v} is not an integer"))
                                    .label(d.span, "used as a dimension")
                                    .help("dimensions are integers; write the const without a decimal point"),
                            );
                            return None;
                        }
                        None => return None,
                    }
                }
                Some(Found::Local(Local::Poison, _)) => return None,
                Some(Found::Local(Local::Hyper(h), _)) if self.f.hypers[h as usize].scalar == Scalar::Int => {
                    Dim::Sym(self.hyper_dim(h))
                }
                Some(_) => {
                    self.err(
                        Diag::new(Code::BadDim, format!("`{n}` is not a dimension"))
                            .label(d.span, "used as a dimension")
                            .help("dimensions are the names in input types (`f32[N, C]`), integer consts or `idx` hyperparameters"),
                    );
                    return None;
                }
                None => {
                    self.unknown_name(
                        &ast::Ident {
                            name: n.clone(),
                            span: d.span,
                        },
                        "dimension",
                    );
                    return None;
                }
            },
            ast::DimExprKind::Add(a, b) => Dim::Add(Box::new(self.dim(a)?), Box::new(self.dim(b)?)),
            ast::DimExprKind::Sub(a, b) => Dim::Sub(Box::new(self.dim(a)?), Box::new(self.dim(b)?)),
            ast::DimExprKind::Mul(a, b) => Dim::Mul(Box::new(self.dim(a)?), Box::new(self.dim(b)?)),
        };
        Some(r.fold())
    }

    // ---- bodies ----

    fn body(&mut self, body: &ast::Body, decls: &[ast::OutDecl], result: Option<&ast::Type>) {
        self.later_uses = uses::collect(body);
        let mut defined_outs: Vec<(String, Span)> = Vec::new();
        for s in &body.stmts {
            match s.kind {
                StmtKind::Let => {
                    self.defining = Some(s.name.name.clone());
                    let local = match self.tensor_def(s, Role::Let, None) {
                        Some(t) => Local::Tensor(t),
                        None => Local::Poison,
                    };
                    self.defining = None;
                    self.bind(&s.name, local);
                }
                StmtKind::Out => {
                    let Some(decl) = decls.iter().find(|d| d.name.name == s.name.name) else {
                        self.err(
                            Diag::new(Code::OutputMismatch, format!("`out {}` is not declared", s.name.name))
                                .label(s.name.span, "undeclared output")
                                .help(format!(
                                    "declare it after the parameters: `-> ({}: f32[…])`",
                                    s.name.name
                                )),
                        );
                        continue;
                    };
                    if let Some((_, prev)) = defined_outs.iter().find(|(n, _)| *n == s.name.name) {
                        let prev = *prev;
                        self.err(
                            Diag::new(Code::Duplicate, format!("output `{}` is defined twice", s.name.name))
                                .label(s.name.span, "defined again here")
                                .label(prev, "first defined here")
                                .help("each output has exactly one `out` statement"),
                        );
                        continue;
                    }
                    defined_outs.push((s.name.name.clone(), s.name.span));
                    let local = match self.tensor_def(s, Role::Output, Some(decl)) {
                        Some(t) => Local::Tensor(t),
                        None => Local::Poison,
                    };
                    self.bind(&s.name, local);
                }
                StmtKind::Unpack => self.unpack(s),
            }
        }
        for d in decls {
            if !defined_outs.iter().any(|(n, _)| *n == d.name.name) {
                self.err(
                    Diag::new(
                        Code::OutputMismatch,
                        format!("output `{}` is declared but never defined", d.name.name),
                    )
                    .label(d.name.span, "declared here")
                    .help(format!("define it in the body: `out {}[…] = …`", d.name.name)),
                );
            }
        }
        if let Some(ty) = result {
            self.per_sample_result(&body.result, ty, decls);
            return;
        }
        // A tensor's name as the loss value: a loss is a scalar (or a declared per-sample tensor).
        if let ExprKind::Access { name, subscripts: None } = &body.result.kind
            && let Some(Found::Local(Local::Tensor(t), _)) = self.lookup(&name.name)
            && !self.f.tensor(t).indices.is_empty()
        {
            let shape: Vec<String> = self.f.tensor_shape(t).iter().map(|d| self.f.show_dim(d)).collect();
            let indices = ["i", "j", "k", "l", "m"];
            let subs: Vec<&str> = (0..shape.len())
                .map(|k| indices.get(k).copied().unwrap_or("_"))
                .collect();
            self.err(
                Diag::new(Code::LossNotNumber, format!("a loss is a scalar, but `{}` has shape [{}]", name.name, shape.join(", ")))
                    .label(body.result.span, format!("shape [{}]", shape.join(", ")))
                    .help(format!(
                        "reduce it, e.g. `mean[{s}] {}[{s}]`, or make a per-sample loss: declare `-> f32[{}]` after the parameters",
                        name.name,
                        shape.join(", "),
                        s = subs.join(", ")
                    )),
            );
            return;
        }
        let Some(v) = self.expr(&body.result) else {
            return;
        };
        if self.kind(v) == Scalar::Bool {
            self.err(
                Diag::new(Code::LossNotNumber, "the loss value is a condition, not a number")
                    .label(body.result.span, "a condition")
                    .help("wrap it in an Iverson bracket `[…]` to get 1 or 0"),
            );
            return;
        }
        let v = self.as_float(v, body.result.span);
        if let Some(v) = v {
            self.f.add_tensor(TensorDef {
                name: "loss".into(),
                indices: vec![],
                body: v,
                scalar: Scalar::Float,
                role: Role::Loss,
                span: body.result.span,
            });
        }
    }

    /// A per-sample loss (`-> f32[N]`, ending in a tensor's name): its value becomes the output `value`, and
    /// the scalar the gradients are taken of is `sum cotangent * value`, with `cotangent` a new input of the
    /// same shape, so every gradient is the vector-Jacobian product with the given cotangent.
    fn per_sample_result(&mut self, result: &ast::Expr, ty: &ast::Type, decls: &[ast::OutDecl]) {
        let help =
            "end a per-sample loss with the name of a float tensor of the declared shape: `let l[i] = …` then `l`";
        let tensor = match &result.kind {
            ExprKind::Access { name, subscripts: None } => match self.lookup(&name.name) {
                Some(Found::Local(Local::Tensor(t), _)) => Some(t),
                Some(Found::Local(Local::Poison, _)) => return,
                _ => None,
            },
            _ => None,
        };
        let Some(t) = tensor else {
            self.err(
                Diag::new(Code::OutputMismatch, "a per-sample loss must end with a tensor's name")
                    .label(result.span, "not a tensor name")
                    .label(ty.span, "declared per-sample here")
                    .help(help),
            );
            return;
        };
        let declared: Vec<Option<Dim>> = ty.shape.iter().map(|d| self.dim(d)).collect();
        let shape = self.f.tensor_shape(t);
        let same = declared.len() == shape.len() && declared.iter().zip(&shape).all(|(a, b)| a.as_ref() == Some(b));
        if !same || ty.elem == ElemTy::Idx || self.f.tensor(t).scalar != Scalar::Float {
            let got: Vec<String> = shape.iter().map(|d| self.f.show_dim(d)).collect();
            self.err(
                Diag::new(
                    Code::OutputMismatch,
                    format!("the loss value has shape [{}], not the declared type", got.join(", ")),
                )
                .label(result.span, format!("shape [{}]", got.join(", ")))
                .label(ty.span, "declared here")
                .help(help),
            );
            return;
        }
        for taken in ["cotangent", "value"] {
            let clash = self.f.inputs.iter().any(|i| i.name == taken)
                || self.f.hypers.iter().any(|h| h.name == taken)
                || decls.iter().any(|d| d.name.name == taken);
            if clash {
                self.err(
                    Diag::new(Code::Duplicate, format!("`{taken}` is reserved in a per-sample loss"))
                        .label(ty.span, "a per-sample loss")
                        .help("a per-sample loss takes the input `cotangent` and returns the output `value`; rename yours"),
                );
                return;
            }
        }
        self.f
            .inputs
            .push(ir::Input::cotangent("cotangent".into(), shape.clone(), ty.span));
        let cot = self.f.inputs.len() as u32 - 1;
        self.f.cotangent = Some(cot);
        let span = result.span;
        let mut head = Vec::new();
        let mut subs = Vec::new();
        for (k, d) in shape.iter().enumerate() {
            let id = self.known_index(format!("s{k}"), d.clone(), span, "the per-sample value");
            head.push(id);
            let Some(n) = self.mk(Expr::Index(id), Scalar::Int, span) else {
                return;
            };
            subs.push(n);
        }
        let load = |cx: &mut Self, tensor: TensorRef| {
            cx.mk(
                Expr::Load {
                    tensor,
                    subs: subs.clone().into(),
                },
                Scalar::Float,
                span,
            )
        };
        let (Some(value), Some(c)) = (load(self, TensorRef::Def(t)), load(self, TensorRef::Input(cot))) else {
            return;
        };
        self.f.add_tensor(TensorDef {
            name: "value".into(),
            indices: head.clone(),
            body: value,
            scalar: Scalar::Float,
            role: Role::Output,
            span,
        });
        let Some(weighted) = self.prim(Prim::Mul, vec![c, value], span) else {
            return;
        };
        let Some(total) = self.mk(
            Expr::Reduce {
                op: ReduceOp::Sum,
                indices: head.into(),
                mask: None,
                body: weighted,
            },
            Scalar::Float,
            span,
        ) else {
            return;
        };
        self.f.add_tensor(TensorDef {
            name: "loss".into(),
            indices: vec![],
            body: total,
            scalar: Scalar::Float,
            role: Role::Loss,
            span,
        });
    }

    /// Lowers `let`/`out name[head] = value` into a tensor definition.
    fn tensor_def(&mut self, s: &ast::Stmt, role: Role, decl: Option<&ast::OutDecl>) -> Option<TensorId> {
        if let Some(decl) = decl
            && decl.ty.shape.len() != s.head.len()
        {
            self.err(
                Diag::new(
                    Code::OutputMismatch,
                    format!(
                        "output `{}` has rank {} but its `out` has {} indices",
                        s.name.name,
                        decl.ty.shape.len(),
                        s.head.len()
                    ),
                )
                .label(s.span, "defined here")
                .label(decl.ty.span, "declared here")
                .help("give the `out` one index per declared axis"),
            );
            return None;
        }
        let declared: Vec<Option<Dim>> = match decl {
            Some(d) => d.ty.shape.iter().map(|x| self.dim(x)).collect(),
            None => vec![None; s.head.len()],
        };
        self.scopes.push(Vec::new());
        let mut indices = Vec::new();
        for (b, decl_dim) in s.head.iter().zip(declared) {
            let seed = decl_dim.map(|d| RangeOrigin {
                dim: d,
                span: decl.map_or(b.name.span, |d| d.ty.span),
                what: "the declared output shape".into(),
            });
            indices.push(self.binder(b, seed));
        }
        let value = self.expr(&s.value);
        self.scopes.pop();
        let indices = self.finish_binders(&s.head, indices, Some(&s.name.name))?;
        let mut value = value?;
        if role == Role::Output {
            if self.kind(value) == Scalar::Bool {
                self.err(
                    Diag::new(Code::ConditionAsNumber, "an output must be a number")
                        .label(s.value.span, "a condition")
                        .help("wrap it in an Iverson bracket `[…]`"),
                );
                return None;
            }
            value = self.as_float(value, s.value.span)?;
        }
        let scalar = self.kind(value);
        Some(self.f.add_tensor(TensorDef {
            name: s.name.name.clone(),
            indices,
            body: value,
            scalar,
            role,
            span: s.span,
        }))
    }

    /// A new index variable whose range is known (one the compiler introduces, not the source).
    fn known_index(&mut self, name: impl Into<String>, dim: Dim, span: Span, what: &str) -> IndexId {
        let id = self.f.add_index(name, dim.clone(), span);
        self.ranges.push(Some(RangeOrigin {
            dim,
            span,
            what: what.into(),
        }));
        id
    }

    /// Opens an index variable for a binder (its range still open unless given).
    fn binder(&mut self, b: &ast::Binder, seed: Option<RangeOrigin>) -> IndexId {
        let explicit = b.range.as_ref().and_then(|r| {
            self.dim(r).map(|d| RangeOrigin {
                dim: d,
                span: r.span,
                what: "its explicit range".into(),
            })
        });
        let id = self.f.add_index(b.name.name.clone(), Dim::Const(0), b.name.span);
        let origin = match (explicit, seed) {
            (Some(e), Some(s)) if e.dim != s.dim => {
                let (ed, sd) = (self.f.show_dim(&e.dim), self.f.show_dim(&s.dim));
                self.err(
                    Diag::new(
                        Code::RangeConflict,
                        format!(
                            "index `{}` ranges over {ed} here but the output is declared with {sd}",
                            b.name.name
                        ),
                    )
                    .label(e.span, format!("range {ed}"))
                    .label(s.span, format!("declared {sd}"))
                    .help("make the explicit range match the declaration"),
                );
                Some(e)
            }
            (e, s) => e.or(s),
        };
        self.ranges.push(origin);
        debug_assert_eq!(self.ranges.len(), self.f.indices.len());
        self.bind(&b.name, Local::Index(id));
        id
    }

    /// Closes binders: every index must have a range by now.
    /// Sets the binders' ranges (`tensor`: the `let` whose head they are, for the message when one has none).
    fn finish_binders(
        &mut self,
        binders: &[ast::Binder],
        ids: Vec<IndexId>,
        tensor: Option<&str>,
    ) -> Option<Vec<IndexId>> {
        let mut ok = true;
        for (position, (b, id)) in binders.iter().zip(&ids).enumerate() {
            let origin = match (self.ranges[id.index()].clone(), tensor) {
                (None, Some(t)) if b.range.is_none() => self.range_from_uses(t, position, b.name.span),
                (o, _) => o,
            };
            match origin {
                Some(o) => self.f.indices[id.index()].range = o.dim,
                // An explicit range that did not lower, or an earlier error in the loss (a tensor left
                // undefined), has its own diagnostic: no second one.
                None if b.range.is_some() || self.sema.diags.len() > self.errors_before => ok = false,
                None => {
                    ok = false;
                    let size = self.size_example();
                    self.err(
                        Diag::new(
                            Code::RangeUnknown,
                            format!("cannot infer the range of index `{}`", b.name.name),
                        )
                        .label(b.name.span, "bound here")
                        .help(match tensor {
                            Some(t) => format!(
                                "neither its definition nor a later read `{t}[…{0}…]` under an index of known \
                                 range fixes it; write it in the head: `let {t}[{0}: {1}] = …`{2}",
                                b.name.name, size.0, size.1
                            ),
                            None => format!(
                                "use `{0}` directly as a subscript of a tensor (`x[{0}]`), or give its range: \
                                 `{0}: {1}`{2}",
                                b.name.name, size.0, size.1
                            ),
                        }),
                    );
                }
            }
        }
        ok.then_some(ids)
    }

    /// A range to suggest where none could be inferred: the loss's first dimension, and which others it
    /// has (the axis's size is the user's to choose), or a placeholder where it has none.
    fn size_example(&self) -> (String, String) {
        let names: Vec<&str> = self.f.dims.iter().map(|d| d.name.as_str()).collect();
        match names[..] {
            [] => ("N".into(), " (a dimension of the loss, or a number)".into()),
            [one] => (one.into(), String::new()),
            [first, ..] => (
                first.into(),
                format!(" (or another of the loss's dimensions: {})", names.join(", ")),
            ),
        }
    }

    /// The range of head index `position` of `let tensor` from the reads after it: the range written on
    /// the binder of a bare index that subscripts it there, or the axis of a known tensor that index also
    /// subscripts bare (see [`uses`]).
    fn range_from_uses(&mut self, tensor: &str, position: usize, span: Span) -> Option<RangeOrigin> {
        let hints: Vec<uses::Hint> = (self.later_uses.iter())
            .filter(|u| u.tensor == tensor && u.position == position)
            .flat_map(|u| u.hints.iter().cloned())
            .collect();
        for hint in hints {
            let (dim, what) = match hint {
                uses::Hint::Explicit(d) => {
                    // Resolved quietly: where it does not resolve, its own binder reports it.
                    let before = self.sema.diags.len();
                    let dim = self.dim(&d);
                    self.sema.diags.truncate(before);
                    (
                        dim,
                        format!(
                            "a later read of `{tensor}` under an index of range `{}`",
                            crate::syntax::print::dim(&d)
                        ),
                    )
                }
                uses::Hint::Axis(other, q) => {
                    let dim = match self.lookup(&other) {
                        Some(Found::Local(Local::Tensor(t), _)) => {
                            let ix = self.f.tensor(t).indices.get(q).copied();
                            ix.map(|i| self.f.index(i).range.clone())
                        }
                        Some(Found::Local(Local::Input(k), _)) => self.f.inputs[k as usize].shape.get(q).cloned(),
                        _ => None,
                    };
                    (
                        dim,
                        format!("a later read of `{tensor}` whose index also reads axis {q} of `{other}`"),
                    )
                }
            };
            if let Some(dim) = dim {
                return Some(RangeOrigin { dim, span, what });
            }
        }
        None
    }

    // ---- expressions ----

    fn as_float(&mut self, id: NodeId, span: Span) -> Option<NodeId> {
        match self.kind(id) {
            Scalar::Float => Some(id),
            _ => self.mk(
                Expr::Prim {
                    prim: Prim::ToFloat,
                    args: Box::new([id]),
                },
                Scalar::Float,
                span,
            ),
        }
    }

    /// Requires a number (integer or float).
    fn number(&mut self, id: NodeId, e: &ast::Expr) -> Option<NodeId> {
        if self.kind(id) == Scalar::Bool {
            self.err(
                Diag::new(Code::ConditionAsNumber, "a condition is used as a number")
                    .label(e.span, "this is a condition")
                    .help("turn it into 1 or 0 with an Iverson bracket: `[cond]`"),
            );
            return None;
        }
        Some(id)
    }

    /// Requires a condition.
    fn condition(&mut self, id: NodeId, e: &ast::Expr) -> Option<NodeId> {
        if self.kind(id) != Scalar::Bool {
            self.err(
                Diag::new(Code::NumberAsCondition, "a number is used as a condition")
                    .label(e.span, "this is a number")
                    .help("compare it to get a condition, e.g. `x > 0`"),
            );
            return None;
        }
        Some(id)
    }

    fn prim(&mut self, prim: Prim, args: Vec<NodeId>, span: Span) -> Option<NodeId> {
        let kinds: Vec<Scalar> = args.iter().map(|a| self.kind(*a)).collect();
        let scalar = prim.result(&kinds);
        self.mk(
            Expr::Prim {
                prim,
                args: args.into(),
            },
            scalar,
            span,
        )
    }

    /// Lowers a flat operator chain (`t0 op1 t1 …`, one family) as a balanced tree, so the IR stays
    /// shallow however long the chain: each term is checked where it is written, then halves are joined;
    /// the half after a `-` (a `/`) has its operators flipped (`a - b + c` is `a - (b - c)`). Equal to the
    /// left-associative chain in exact arithmetic; in floating point the terms are summed pairwise.
    fn chain(&mut self, first: &ast::Expr, rest: &[(BinOp, ast::Expr)]) -> Option<NodeId> {
        let (plus, minus) = match rest.first().map(|(op, _)| *op) {
            Some(BinOp::Add | BinOp::Sub) => (Prim::Add, Prim::Sub),
            Some(BinOp::Mul | BinOp::Div) => (Prim::Mul, Prim::Div),
            Some(BinOp::And) => (Prim::And, Prim::And),
            Some(BinOp::Or) => (Prim::Or, Prim::Or),
            _ => return self.expr(first),
        };
        let logic = plus == minus;
        let mut terms: Vec<Term> = Vec::with_capacity(rest.len() + 1);
        let mut ok = true;
        let written = std::iter::once((false, first))
            .chain(rest.iter().map(|(op, e)| (matches!(op, BinOp::Sub | BinOp::Div), e)));
        for (inverted, e) in written {
            let node = self
                .expr(e)
                .and_then(|n| if logic { self.condition(n, e) } else { self.number(n, e) });
            match node {
                Some(node) => terms.push(Term { inverted, node, ast: e }),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        self.balanced(&terms, (plus, minus))
    }

    /// Joins `terms` (the first not inverted) as a balanced tree of `ops` (joining, joining inverted).
    fn balanced(&mut self, terms: &[Term], ops: (Prim, Prim)) -> Option<NodeId> {
        if let [only] = terms {
            return Some(only.node);
        }
        let mid = terms.len() / 2;
        let left = self.balanced(&terms[..mid], ops)?;
        let inverted = terms[mid].inverted;
        let tail: Vec<Term> = terms[mid..]
            .iter()
            .map(|t| Term {
                inverted: t.inverted != inverted,
                ..*t
            })
            .collect();
        let right = self.balanced(&tail, ops)?;
        let prim = if inverted { ops.1 } else { ops.0 };
        let span = terms[0].ast.span.to(terms[terms.len() - 1].ast.span);
        self.apply(prim, &[(left, terms[0].ast), (right, terms[mid].ast)], span)
    }

    /// Applies a primitive to lowered operands, checking and promoting per its signature.
    fn apply(&mut self, prim: Prim, args: &[(NodeId, &ast::Expr)], span: Span) -> Option<NodeId> {
        let mut out = Vec::new();
        match prim.sig() {
            Sig::Float(_) => {
                for (a, e) in args {
                    let n = self.number(*a, e)?;
                    out.push(self.as_float(n, e.span)?);
                }
            }
            Sig::Numeric(_) | Sig::Compare => {
                let mut ns = Vec::new();
                for (a, e) in args {
                    ns.push((self.number(*a, e)?, e.span));
                }
                let all_int = ns.iter().all(|(n, _)| self.kind(*n) == Scalar::Int);
                for (n, s) in ns {
                    out.push(if all_int { n } else { self.as_float(n, s)? });
                }
            }
            Sig::Logic(_) | Sig::Iverson => {
                for (a, e) in args {
                    out.push(self.condition(*a, e)?);
                }
            }
            Sig::Select => {
                out.push(self.condition(args[0].0, args[0].1)?);
                let (a, b) = (args[1], args[2]);
                let (ka, kb) = (self.kind(a.0), self.kind(b.0));
                if (ka == Scalar::Bool) != (kb == Scalar::Bool) {
                    self.err(
                        Diag::new(
                            Code::BadOperand,
                            "the branches of a choice differ: one is a condition, one a number",
                        )
                        .label(
                            a.1.span,
                            (if ka == Scalar::Bool { "a condition" } else { "a number" }).to_string(),
                        )
                        .label(
                            b.1.span,
                            (if kb == Scalar::Bool { "a condition" } else { "a number" }).to_string(),
                        )
                        .help("make both numbers (wrap a condition in `[…]`) or both conditions"),
                    );
                    return None;
                }
                if ka == kb {
                    out.extend([a.0, b.0]);
                } else {
                    out.push(self.as_float(a.0, a.1.span)?);
                    out.push(self.as_float(b.0, b.1.span)?);
                }
            }
            Sig::ToFloat => {
                let n = self.number(args[0].0, args[0].1)?;
                return self.as_float(n, span);
            }
            // Made by sema itself from integer operands (`rand` / `randn`), never called by name.
            Sig::Int(_) | Sig::Draw => out.extend(args.iter().map(|(a, _)| *a)),
            Sig::ToInt => {
                // An integer is its own floor, ceiling and rounding.
                let n = self.number(args[0].0, args[0].1)?;
                if self.kind(n) == Scalar::Int {
                    return Some(n);
                }
                out.push(n);
            }
        }
        self.prim(prim, out, span)
    }

    fn expr(&mut self, e: &ast::Expr) -> Option<NodeId> {
        match &e.kind {
            ExprKind::Number { value, is_int } => {
                if *is_int {
                    self.mk(Expr::Int(*value as i64), Scalar::Int, e.span)
                } else {
                    self.mk(Expr::float(*value), Scalar::Float, e.span)
                }
            }
            ExprKind::Bool(b) => self.mk(Expr::Bool(*b), Scalar::Bool, e.span),
            ExprKind::Paren(inner) => self.expr(inner),
            ExprKind::Access { name, subscripts: None } => self.name(name),
            ExprKind::Access {
                name,
                subscripts: Some(subs),
            } => self.access(name, subs, e.span),
            ExprKind::Call { func, args } => self.call(func, args, e.span),
            ExprKind::Unary { op, arg } => {
                let a = self.expr(arg)?;
                let prim = match op {
                    UnOp::Neg => Prim::Neg,
                    UnOp::Not => Prim::Not,
                };
                self.apply(prim, &[(a, arg)], e.span)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let (a, b) = (self.expr(lhs), self.expr(rhs));
                let (a, b) = (a?, b?);
                let prim = match op {
                    BinOp::Or => Prim::Or,
                    BinOp::And => Prim::And,
                    BinOp::Eq => Prim::Eq,
                    BinOp::Ne => Prim::Ne,
                    BinOp::Lt => Prim::Lt,
                    BinOp::Le => Prim::Le,
                    BinOp::Gt => Prim::Gt,
                    BinOp::Ge => Prim::Ge,
                    BinOp::Add => Prim::Add,
                    BinOp::Sub => Prim::Sub,
                    BinOp::Mul => Prim::Mul,
                    BinOp::Div => Prim::Div,
                    BinOp::Rem => Prim::Rem,
                    BinOp::Pow => Prim::Pow,
                };
                self.apply(prim, &[(a, lhs), (b, rhs)], e.span)
            }
            ExprKind::Chain { first, rest } => self.chain(first, rest),
            ExprKind::Iverson(c) => {
                let a = self.expr(c)?;
                self.apply(Prim::Iverson, &[(a, c)], e.span)
            }
            ExprKind::If { cond, then, otherwise } => {
                let c = self.expr(cond);
                let (a, b) = self.under_guard(c, |cx| (cx.expr(then), cx.expr(otherwise)));
                self.apply(Prim::Select, &[(c?, cond), (a?, then), (b?, otherwise)], e.span)
            }
            ExprKind::Reduce {
                op,
                binders,
                mask,
                body,
            } => self.reduce(*op, binders, mask.as_deref(), body, e.span),
            ExprKind::Order {
                op,
                binders,
                mask,
                body,
                options,
                subscripts,
            } => self.order(*op, binders, mask.as_deref(), body, options, subscripts, e.span),
        }
    }

    fn name(&mut self, name: &ast::Ident) -> Option<NodeId> {
        let span = name.span;
        match self.lookup(&name.name) {
            None => {
                self.unknown_name(name, "name");
                None
            }
            Some(Found::Local(l, _)) => match l {
                Local::Poison => None,
                Local::Value(v) => Some(v),
                Local::Index(i) => self.mk(Expr::Index(i), Scalar::Int, span),
                Local::Dim(d) => self.mk(Expr::Size(Dim::Sym(d)), Scalar::Int, span),
                Local::Hyper(h) => {
                    let s = self.f.hypers[h as usize].scalar;
                    self.mk(Expr::Hyper(h), s, span)
                }
                Local::Input(i) => self.load(TensorRef::Input(i), name, vec![], span),
                Local::Tensor(t) => self.load(TensorRef::Def(t), name, vec![], span),
            },
            Some(Found::Global(r)) => match &self.sema.item(r).kind {
                ItemKind::Const { .. } => match consts::item_value(self.sema, r)? {
                    Const::Int(v) => self.mk(Expr::Int(v), Scalar::Int, span),
                    Const::Float(v) => self.mk(Expr::float(v), Scalar::Float, span),
                },
                ItemKind::Fn(_) | ItemKind::Loss(_) | ItemKind::Extern(_) => {
                    let what = match self.sema.item(r).kind {
                        ItemKind::Fn(_) => "function",
                        ItemKind::Extern(_) => "extern operation",
                        _ => "loss",
                    };
                    self.err(
                        Diag::new(Code::NotAValue, format!("`{}` is a {what}, not a value", name.name))
                            .label(span, "used as a value")
                            .help(match what {
                                "function" => format!("call it: `{}(…)`", name.name),
                                "extern operation" => format!("bind its outputs: `let (…) = {}(…)`", name.name),
                                _ => "losses cannot be used inside other losses; factor the shared part into a `fn`"
                                    .to_string(),
                            }),
                    );
                    None
                }
                ItemKind::Use { .. } => None,
            },
        }
    }

    /// A load with already-lowered subscripts; checks the rank.
    fn load(&mut self, tensor: TensorRef, name: &ast::Ident, subs: Vec<NodeId>, span: Span) -> Option<NodeId> {
        let rank = self.f.ref_shape(tensor).len();
        if rank != subs.len() {
            let shape: Vec<String> = self.f.ref_shape(tensor).iter().map(|d| self.f.show_dim(d)).collect();
            let help = if subs.is_empty() {
                format!(
                    "subscript it with {rank} indices, e.g. `{}[{}]`",
                    name.name,
                    (0..rank)
                        .map(|k| ["i", "j", "k", "l", "m"].get(k).copied().unwrap_or("_"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("`{}` has shape [{}]", name.name, shape.join(", "))
            };
            self.err(
                Diag::new(
                    Code::SubscriptCount,
                    format!(
                        "`{}` has rank {rank} but is used with {} subscript(s)",
                        name.name,
                        subs.len()
                    ),
                )
                .label(span, format!("{} subscript(s)", subs.len()))
                .help(help),
            );
            return None;
        }
        let scalar = match tensor {
            TensorRef::Input(i) => {
                if self.f.inputs[i as usize].elem == ElemTy::Idx {
                    Scalar::Int
                } else {
                    Scalar::Float
                }
            }
            TensorRef::Def(t) => self.f.tensor(t).scalar,
        };
        self.mk(
            Expr::Load {
                tensor,
                subs: subs.into(),
            },
            scalar,
            span,
        )
    }

    /// `grad(e, x[s…])`: the derivative of the scalar `e` with respect to the differentiable input `x` at
    /// element `s…`. The gradient tensor of `e` (every element of x) is built by reverse mode over the
    /// function as lowered so far ([`crate::autodiff::grad`] appends its tensors, so everything lowered
    /// before stays valid) and kept as `let`s; the loss's own gradient later differentiates through them
    /// (gradient penalties are second order).
    fn grad(&mut self, args: &[ast::Expr], span: Span) -> Option<NodeId> {
        let bad = |cx: &mut Self, at: Span, message: &str| {
            cx.err(
                Diag::new(Code::BadOperand, message.to_string())
                    .label(at, "here")
                    .help("write `grad(e, x[i, k])`: a scalar expression, then a differentiable input at an element"),
            );
            None
        };
        let [e, at] = args else {
            return bad(
                self,
                span,
                "`grad` takes two arguments: an expression and an input's element",
            );
        };
        let (name, subs) = match &at.kind {
            ExprKind::Access { name, subscripts } => (name, subscripts.as_deref().unwrap_or(&[])),
            _ => {
                return bad(
                    self,
                    at.span,
                    "the second argument of `grad` must be an input at an element, `x[i, k]`",
                );
            }
        };
        let x = match self.lookup(&name.name) {
            Some(Found::Local(Local::Input(i), _)) if self.f.inputs[i as usize].differentiable() => i,
            _ => {
                return bad(
                    self,
                    name.span,
                    &format!("`{}` is not a differentiable input", name.name),
                );
            }
        };
        let n = self.expr(e)?;
        let n = self.number(n, e)?;
        let n = self.as_float(n, e.span)?;
        if !self.f.node(n).free.is_empty() {
            return bad(
                self,
                e.span,
                "the expression `grad` differentiates must be a scalar: it uses an index bound outside it",
            );
        }
        let gradient = match self.gradients.get(&(n, x)) {
            Some(t) => *t,
            None => {
                let t = self.gradient_tensor(n, x, span)?;
                self.gradients.insert((n, x), t);
                t
            }
        };
        self.subscript(TensorRef::Def(gradient), name, subs, span)
    }

    /// The tensor of the gradient of the closed scalar `e` with respect to input `x`, added to the function
    /// with the adjoints it needs (all `let`s).
    fn gradient_tensor(&mut self, e: NodeId, x: u32, span: Span) -> Option<TensorId> {
        let k = self.gradients.len() + 1;
        let mut f = self.f.clone();
        f.add_tensor(TensorDef {
            name: format!("grad{k}_target"),
            indices: Vec::new(),
            body: e,
            scalar: Scalar::Float,
            role: Role::Loss,
            span,
        });
        let g = match crate::autodiff::grad(&f) {
            Ok(g) => g,
            Err(d) => {
                self.err(d);
                return None;
            }
        };
        let before = self.f.tensors.len();
        self.f = g;
        let mut gradient = None;
        for (t, def) in self.f.tensors.iter_mut().enumerate().skip(before) {
            match def.role {
                Role::Grad(i) => {
                    def.name = format!("grad{k}_{}", def.name.trim_start_matches("grad_"));
                    if i == x {
                        gradient = Some(TensorId(t as u32));
                    }
                }
                _ => def.name = format!("grad{k}_{}", def.name),
            }
            def.role = Role::Let;
        }
        // The indices autodiff made have their ranges.
        for id in self.ranges.len()..self.f.indices.len() {
            let dim = self.f.indices[id].range.clone();
            self.ranges.push(Some(RangeOrigin {
                dim,
                span,
                what: "a gradient's index".into(),
            }));
        }
        gradient
    }

    /// `rand[s…]` (uniform in (0, 1]) or `randn[s…]` (standard normal, by Box–Muller from two uniforms) at
    /// the integer position `s…` (one to four subscripts): Philox4x32-10 with the subscripts as its counter,
    /// keyed by the hyperparameters `seed` and `draw` and by this draw site's stream number (sites numbered
    /// in the order they are lowered, so two sites draw independently and one site is one tensor).
    fn random_draw(&mut self, name: &ast::Ident, subs: &[ast::Expr], span: Span) -> Option<NodeId> {
        if subs.is_empty() || subs.len() > 4 {
            self.err(
                Diag::new(
                    Code::SubscriptCount,
                    format!("`{}` takes one to four subscripts, found {}", name.name, subs.len()),
                )
                .label(span, "a random draw")
                .help("subscript a draw by the indices it varies over: `randn[i, k]`"),
            );
            return None;
        }
        let mut words = Vec::new();
        for s in subs {
            let n = self.expr(s)?;
            if !self.integer_subscript(n, s) {
                return None;
            }
            words.push(n);
        }
        while words.len() < 4 {
            words.push(self.mk(Expr::Int(0), Scalar::Int, span)?);
        }
        let seed = self.draw_key("seed", span)?;
        let draw = self.draw_key("draw", span)?;
        let stream = self.mk(Expr::Int(self.streams), Scalar::Int, span)?;
        self.streams += 1;
        let call = self.prim(Prim::Mix, vec![seed, draw], span)?;
        let key = self.prim(Prim::Mix, vec![call, stream], span)?;
        let uniform = |cx: &mut Self, word: i64| {
            let w = cx.mk(Expr::Int(word), Scalar::Int, span)?;
            let args = [key].into_iter().chain(words.iter().copied()).chain([w]).collect();
            cx.prim(Prim::Draw, args, span)
        };
        let u1 = uniform(self, 0)?;
        if name.name == "rand" {
            return Some(u1);
        }
        let u2 = uniform(self, 1)?;
        let log = self.prim(Prim::Log, vec![u1], span)?;
        let minus_two = self.mk(Expr::float(-2.0), Scalar::Float, span)?;
        let r2 = self.prim(Prim::Mul, vec![minus_two, log], span)?;
        let r = self.prim(Prim::Sqrt, vec![r2], span)?;
        let tau = self.mk(Expr::float(std::f64::consts::TAU), Scalar::Float, span)?;
        let angle = self.prim(Prim::Mul, vec![tau, u2], span)?;
        let c = self.prim(Prim::Cos, vec![angle], span)?;
        self.prim(Prim::Mul, vec![r, c], span)
    }

    /// The integer hyperparameter `name` (`seed` or `draw`) that keys the loss's random draws: the one the
    /// loss declares, else one added with default 0.
    fn draw_key(&mut self, name: &str, span: Span) -> Option<NodeId> {
        let h = match self.f.hypers.iter().position(|h| h.name == name) {
            Some(h) if self.f.hypers[h].scalar == Scalar::Int => h,
            Some(h) => {
                let at = self.f.hypers[h].span;
                self.err(
                    Diag::new(
                        Code::DefaultType,
                        format!("`{name}` keys the random draws, so it must be an integer"),
                    )
                    .label(at, "declared as a float")
                    .label(span, "a random draw")
                    .help(format!("declare `{name}: idx = 0`")),
                );
                return None;
            }
            None if self.f.inputs.iter().any(|i| i.name == name) => {
                self.err(
                    Diag::new(
                        Code::Duplicate,
                        format!("`{name}` is an input, but it names a key of the random draws"),
                    )
                    .label(span, "a random draw")
                    .help("rename the input: a loss that draws has the hyperparameters `seed` and `draw`"),
                );
                return None;
            }
            None => {
                self.f.hypers.push(ir::Hyper {
                    name: name.to_string(),
                    scalar: Scalar::Int,
                    default: 0.0,
                    span,
                });
                self.f.hypers.len() - 1
            }
        };
        self.mk(Expr::Hyper(h as u32), Scalar::Int, span)
    }

    fn access(&mut self, name: &ast::Ident, subs: &[ast::Expr], span: Span) -> Option<NodeId> {
        let tensor = match self.lookup(&name.name) {
            // `sum[i]` with nothing after it reads as a tensor named `sum`: say the body is missing (and
            // check nothing inside, whose names the missing reduction would have bound).
            None if ast::ReduceOp::from_name(&name.name).is_some() => {
                self.err(
                    Diag::new(Code::Syntax, format!("`{}[…]` needs a body after its `]`", name.name))
                        .label(span, "a reduction without a body")
                        .help(
                            "the reduced expression follows the `]`: `sum[k] e`; `count[j] c` counts where `c` holds",
                        ),
                );
                return None;
            }
            None if matches!(name.name.as_str(), "rand" | "randn") => return self.random_draw(name, subs, span),
            None => {
                self.unknown_name(name, "tensor");
                for s in subs {
                    self.expr(s);
                }
                return None;
            }
            Some(Found::Local(Local::Input(i), _)) => TensorRef::Input(i),
            Some(Found::Local(Local::Tensor(t), _)) => TensorRef::Def(t),
            Some(Found::Local(Local::Poison, _)) => {
                for s in subs {
                    self.expr(s);
                }
                return None;
            }
            Some(_) => {
                self.err(
                    Diag::new(Code::NotATensor, format!("`{}` is not a tensor", name.name))
                        .label(name.span, "subscripted here")
                        .help("only inputs and `let`s with indices can be subscripted"),
                );
                return None;
            }
        };
        self.subscript(tensor, name, subs, span)
    }

    /// Whether lowered subscript `n` (written `sub`) is an integer; says so where it is not.
    fn integer_subscript(&mut self, n: NodeId, sub: &ast::Expr) -> bool {
        let k = self.kind(n);
        if k != Scalar::Int {
            let what = if k == Scalar::Float { "a float" } else { "a condition" };
            self.err(
                Diag::new(
                    Code::FloatSubscript,
                    format!("a subscript must be an integer index, found {what}"),
                )
                .label(sub.span, what)
                .help("subscripts are indices, labels (`idx` inputs), dimensions and integer arithmetic on them"),
            );
        }
        k == Scalar::Int
    }

    /// `tensor[subs]` (written as `name[subs]`): the subscripts lowered, a bare index constrained to its
    /// axis, labels checked against their axis.
    fn subscript(&mut self, tensor: TensorRef, name: &ast::Ident, subs: &[ast::Expr], span: Span) -> Option<NodeId> {
        let shape = self.f.ref_shape(tensor);
        if shape.len() != subs.len() {
            for s in subs {
                self.expr(s);
            }
            return self.load(tensor, name, vec![NodeId(0); subs.len()], span);
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (axis, (sub, dim)) in subs.iter().zip(&shape).enumerate() {
            // A bare index as a subscript fixes (or checks) its range.
            if let ExprKind::Access {
                name: iname,
                subscripts: None,
            } = &sub.kind
                && let Some(Found::Local(Local::Index(id), _)) = self.lookup(&iname.name)
            {
                // Under a guard that tests it, a read past the axis never happens (and is checked at run
                // time): it does not constrain the index's range.
                let guarded =
                    self.guarded.contains(&id) && self.ranges[id.index()].as_ref().is_some_and(|o| o.dim != *dim);
                if !guarded {
                    self.constrain(id, dim, sub.span, format!("axis {axis} of `{}`", name.name));
                }
            }
            let Some(n) = self.expr(sub) else {
                ok = false;
                continue;
            };
            if !self.integer_subscript(n, sub) {
                ok = false;
                continue;
            }
            // A label as a subscript must range over this axis.
            if let Expr::Load {
                tensor: TensorRef::Input(li),
                ..
            } = &self.f.node(n).expr
            {
                let input = &self.f.inputs[*li as usize];
                if let Some(b) = &input.bound
                    && b != dim
                {
                    let (bs, ds, lname) = (self.f.show_dim(b), self.f.show_dim(dim), input.name.clone());
                    self.err(
                        Diag::new(
                            Code::LabelBound,
                            format!("label `{lname}` lies in 0..{bs} but indexes an axis of size {ds}"),
                        )
                        .label(sub.span, format!("values in 0..{bs}"))
                        .label(name.span, format!("axis {axis} has size {ds}"))
                        .help(format!(
                            "declare the labels as `{lname}: idx[…] < {ds}`, or index a tensor whose axis is {bs}"
                        )),
                    );
                    ok = false;
                }
            }
            out.push(n);
        }
        if !ok {
            return None;
        }
        self.load(tensor, name, out, span)
    }

    /// Lowers what `guard` (a lowered condition, if any) guards: the indices it tests may read past an
    /// axis there ([`Cx::guarded`]).
    fn under_guard<T>(&mut self, guard: Option<NodeId>, lower: impl FnOnce(&mut Self) -> T) -> T {
        let outer = self.guarded.len();
        if let Some(g) = guard {
            let tested = self.f.node(g).free.to_vec();
            self.guarded.extend(tested);
        }
        let out = lower(self);
        self.guarded.truncate(outer);
        out
    }

    /// Records that index `id` ranges over `dim` (from a use at `span`), reporting a conflict.
    fn constrain(&mut self, id: IndexId, dim: &Dim, span: Span, what: String) {
        match &self.ranges[id.index()] {
            None => {
                self.ranges[id.index()] = Some(RangeOrigin {
                    dim: dim.clone(),
                    span,
                    what,
                })
            }
            Some(o) if o.dim == *dim => {}
            Some(o) => {
                let (a, b) = (self.f.show_dim(&o.dim), self.f.show_dim(dim));
                let name = self.f.index(id).name.clone();
                let d = Diag::new(
                    Code::RangeConflict,
                    format!("index `{name}` ranges over {a} and over {b}"),
                )
                .label(span, format!("here it indexes {what}, of size {b}"))
                .label(o.span, format!("here it is {}, of size {a}", o.what))
                .help("an index has one range; use two indices, or fix the shapes so the sizes agree");
                self.err(d);
            }
        }
    }

    fn reduce(
        &mut self,
        op: ReduceOp,
        binders: &[ast::Binder],
        mask: Option<&ast::Expr>,
        body: &ast::Expr,
        span: Span,
    ) -> Option<NodeId> {
        self.scopes.push(Vec::new());
        let ids: Vec<IndexId> = binders.iter().map(|b| self.binder(b, None)).collect();
        let m = mask.map(|m| self.expr(m).and_then(|n| self.condition(n, m)));
        let b = self.under_guard(m.flatten(), |cx| cx.expr(body));
        self.scopes.pop();
        let ids = self.finish_binders(binders, ids, None)?;
        let mask = match m {
            Some(m) => Some(m?),
            None => None,
        };
        let b = b?;
        let (b, scalar) = if op == ReduceOp::Count {
            if self.kind(b) != Scalar::Bool {
                self.err(
                    Diag::new(Code::BadOperand, "`count` counts a condition, but its body is a number")
                        .label(body.span, "a number")
                        .help("write a comparison, e.g. `count[k] x[k] > 0`, or use `sum` for numbers"),
                );
                return None;
            }
            (b, Scalar::Int)
        } else {
            let n = self.number(b, body)?;
            // `argmax` / `argmin` compare floats and give a position.
            let scalar = match op {
                ReduceOp::ArgMax | ReduceOp::ArgMin => Scalar::Int,
                _ => Scalar::Float,
            };
            (self.as_float(n, body.span)?, scalar)
        };
        self.mk(
            Expr::Reduce {
                op,
                indices: ids.into(),
                mask,
                body: b,
            },
            scalar,
            span,
        )
    }

    fn call(&mut self, func: &ast::Ident, args: &[ast::Expr], span: Span) -> Option<NodeId> {
        match self.lookup(&func.name) {
            Some(Found::Global(r)) if matches!(self.sema.item(r).kind, ItemKind::Fn(_)) => {
                return self.inline(r, func, args, span);
            }
            Some(Found::Global(r)) if matches!(self.sema.item(r).kind, ItemKind::Extern(_)) => {
                let names = match &self.sema.item(r).kind {
                    ItemKind::Extern(e) => e.outputs.iter().map(|o| o.name.name.clone()).collect::<Vec<_>>(),
                    _ => Vec::new(),
                };
                self.err(
                    Diag::new(
                        Code::BadExtern,
                        format!("`{}` is an extern operation, called in an expression", func.name),
                    )
                    .label(func.span, "called here")
                    .help(format!(
                        "an extern runs before the kernel, on whole tensors: `let ({}) = {}(…)`",
                        names.join(", "),
                        func.name
                    )),
                );
                return None;
            }
            Some(Found::Local(l, _)) => {
                let what = match l {
                    Local::Input(_) | Local::Tensor(_) => "a tensor; subscript it with `[…]`",
                    Local::Index(_) => "an index",
                    _ => "a value",
                };
                self.err(
                    Diag::new(Code::NotAValue, format!("`{}` is not a function", func.name))
                        .label(func.span, "called here")
                        .help(format!("`{}` is {what}", func.name)),
                );
                return None;
            }
            Some(Found::Global(r)) => {
                let what = if matches!(self.sema.item(r).kind, ItemKind::Loss(_)) {
                    "a loss"
                } else {
                    "a const"
                };
                self.err(
                    Diag::new(Code::NotAValue, format!("`{}` is {what}, not a function", func.name))
                        .label(func.span, "called here")
                        .help("only builtins and `fn` items can be called; factor shared code into a `fn`"),
                );
                return None;
            }
            None => {}
        }
        if func.name == "grad" {
            return self.grad(args, span);
        }
        let Some(prim) = Prim::from_surface(&func.name) else {
            let mut names: Vec<String> = Prim::ALL
                .iter()
                .filter_map(|p| p.surface())
                .chain(["grad"])
                .map(String::from)
                .collect();
            names.extend(
                self.sema.units[self.unit]
                    .globals
                    .iter()
                    .filter(|(_, r)| matches!(self.sema.item(**r).kind, ItemKind::Fn(_)))
                    .map(|(n, _)| n.clone()),
            );
            let help = if ReduceOp::from_name(&func.name).is_some() {
                format!(
                    "`{0}` is a reduction: it binds an index, e.g. `{0}[k] x[i, k]`",
                    func.name
                )
            } else {
                match closest(&func.name, names.iter().map(String::as_str)) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => {
                        let builtins: Vec<&str> =
                            Prim::ALL.iter().filter_map(|p| p.surface()).chain(["grad"]).collect();
                        format!("builtins: {}", builtins.join(" "))
                    }
                }
            };
            self.err(
                Diag::new(Code::UnknownFunction, format!("unknown function `{}`", func.name))
                    .label(func.span, "not a builtin or `fn`")
                    .help(help),
            );
            for a in args {
                self.expr(a);
            }
            return None;
        };
        let arity = prim.sig().arity();
        if args.len() != arity {
            self.err(
                Diag::new(
                    Code::Arity,
                    format!("`{}` takes {arity} argument(s) but is given {}", func.name, args.len()),
                )
                .label(span, format!("{} argument(s)", args.len()))
                .help(format!("call it with {arity} argument(s)")),
            );
            return None;
        }
        let lowered: Vec<Option<NodeId>> = args.iter().map(|a| self.expr(a)).collect();
        let mut ok = Vec::new();
        for (l, a) in lowered.into_iter().zip(args) {
            ok.push((l?, a));
        }
        self.apply(prim, &ok, span)
    }

    /// Inlines a user `fn`: its parameters bind to the lowered arguments.
    fn inline(&mut self, r: ItemRef, func: &ast::Ident, args: &[ast::Expr], span: Span) -> Option<NodeId> {
        let file = self.sema.units[r.unit].file.clone();
        let ItemKind::Fn(def) = &file.items[r.item].kind else {
            return None;
        };
        if def.params.len() != args.len() {
            self.err(
                Diag::new(
                    Code::Arity,
                    format!(
                        "`{}` takes {} argument(s) but is given {}",
                        func.name,
                        def.params.len(),
                        args.len()
                    ),
                )
                .label(span, format!("{} argument(s)", args.len()))
                .label(def.name.span, "defined here")
                .help(format!("call it with {} argument(s)", def.params.len())),
            );
            return None;
        }
        if self.fn_stack.contains(&r) {
            self.err(
                Diag::new(Code::RecursiveFn, format!("`{}` calls itself", func.name))
                    .label(func.span, "recursive call")
                    .help("fns are inlined, so they cannot recurse; unroll the recursion or use a reduction"),
            );
            return None;
        }
        if self.fn_stack.len() >= MAX_INLINE {
            self.err(
                Diag::new(Code::TooDeep, "fn calls nested too deeply")
                    .label(func.span, "inlined here")
                    .help(format!("at most {MAX_INLINE} nested fn calls")),
            );
            return None;
        }
        let lowered: Vec<Option<NodeId>> = args.iter().map(|a| self.expr(a)).collect();
        let mut vals = Vec::new();
        for ((l, a), p) in lowered.into_iter().zip(args).zip(&def.params) {
            let mut v = l?;
            if let Some(ty) = &p.ty {
                if !ty.shape.is_empty() || ty.bound.is_some() {
                    self.err(
                        Diag::new(Code::BadDim, "fn parameters are scalars")
                            .label(ty.span, "a tensor type")
                            .help("pass elements (`f(x[i, k])`); a fn is applied elementwise"),
                    );
                    return None;
                }
                v = if ty.elem == ElemTy::Idx {
                    if self.kind(v) != Scalar::Int {
                        self.err(
                            Diag::new(
                                Code::FloatSubscript,
                                format!("`{}` expects an integer for `{}`", func.name, p.name.name),
                            )
                            .label(a.span, "not an integer")
                            .help("pass an index, label or dimension"),
                        );
                        return None;
                    }
                    v
                } else {
                    let n = self.number(v, a)?;
                    self.as_float(n, a.span)?
                };
            }
            vals.push(v);
        }
        let key = (r, vals.clone());
        if let Some(done) = self.inlined.get(&key) {
            return *done;
        }
        let saved_scopes = std::mem::replace(&mut self.scopes, vec![Vec::new()]);
        let saved_unit = std::mem::replace(&mut self.unit, r.unit);
        // A name in the fn is the fn's: not the caller's `let` being defined.
        let saved_defining = self.defining.take();
        self.fn_stack.push(r);
        for (p, v) in def.params.iter().zip(vals) {
            self.bind(&p.name, Local::Value(v));
        }
        let mut ok = true;
        for s in &def.body.stmts {
            if s.kind == StmtKind::Out || !s.head.is_empty() {
                self.err(
                    Diag::new(Code::IndexedLetInFn, "a fn body may only hold scalar `let`s")
                        .label(
                            s.span,
                            if s.kind == StmtKind::Out {
                                "an `out`"
                            } else {
                                "a `let` with indices"
                            },
                        )
                        .help("fns are elementwise: define tensors in the loss body instead"),
                );
                ok = false;
                continue;
            }
            self.defining = Some(s.name.name.clone());
            let local = self.expr(&s.value).map_or(Local::Poison, Local::Value);
            self.defining = None;
            self.bind(&s.name, local);
        }
        let result = self.expr(&def.body.result);
        self.defining = saved_defining;
        self.fn_stack.pop();
        self.unit = saved_unit;
        self.scopes = saved_scopes;
        let result = if ok { result } else { None };
        self.inlined.insert(key, result);
        result
    }
}

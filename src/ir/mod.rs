//! The IR: one typed, pure, first-order expression DAG per loss, over index variables.
//!
//! A [`Function`] is a list of tensor definitions (`let m[i, k] = body`) in dependency order; a body is a
//! node of the function's arena. A node denotes one scalar for every assignment of its free index
//! variables, so a tensor is the table of its body's values over its head indices. Reductions bind indices.
//!
//! Invariants (checked by [`verify`]):
//! - Operands precede users in the arena, so arena order is a topological order.
//! - Nodes are hash-consed: structurally equal nodes are one node (CSE for free).
//! - Every node has a span (the source it came from), its scalar kind and its sorted free indices.
//! - A tensor definition's body is free in exactly (a subset of) its head indices; a `Load` of a tensor
//!   refers only to inputs or to earlier definitions.
//! - Every index variable has a range, a [`Dim`] over the function's dimension symbols.

pub mod cost;
pub mod print;
pub mod verify;

use std::collections::HashMap;
use std::fmt;

use crate::diag::Span;
use crate::prims::Prim;
pub use crate::syntax::ast::{ElemTy, ReduceOp};

macro_rules! id {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            /// The position in its arena.
            pub fn index(self) -> usize { self.0 as usize }
        }
    };
}

id!(
    /// A node of a function's arena.
    NodeId
);
id!(
    /// An index variable bound by a tensor head or a reduction.
    IndexId
);
id!(
    /// A tensor definition (`let`, `out` or the loss).
    TensorId
);
id!(
    /// A symbolic dimension (`N`, `C`).
    DimId
);

/// The kind of scalar a node denotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// A float (f64 in the interpreter, f32 in the f32 backends).
    Float,
    /// An integer (indices, labels, sizes).
    Int,
    /// A condition.
    Bool,
}

impl Scalar {
    /// The letter the IR printer marks it with.
    pub fn letter(self) -> char {
        match self {
            Scalar::Float => 'f',
            Scalar::Int => 'i',
            Scalar::Bool => 'b',
        }
    }
}

/// A runtime scalar of the reference interpreter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A float.
    F(f64),
    /// An integer.
    I(i64),
    /// A condition.
    B(bool),
}

impl Value {
    /// As a float (a condition is 0 or 1).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::F(x) => x,
            Value::I(i) => i as f64,
            Value::B(b) => f64::from(u8::from(b)),
        }
    }
    /// As a condition (a number is true where non-zero).
    pub fn as_bool(self) -> bool {
        match self {
            Value::B(b) => b,
            Value::I(i) => i != 0,
            Value::F(x) => x != 0.0,
        }
    }
    /// As an integer (a float truncated).
    pub fn as_i64(self) -> i64 {
        match self {
            Value::I(i) => i,
            Value::F(x) => x as i64,
            Value::B(b) => i64::from(b),
        }
    }
}

/// A dimension: an integer expression over dimension symbols.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A literal size.
    Const(i64),
    /// A dimension symbol.
    Sym(DimId),
    /// A sum.
    Add(Box<Dim>, Box<Dim>),
    /// A difference.
    Sub(Box<Dim>, Box<Dim>),
    /// A product.
    Mul(Box<Dim>, Box<Dim>),
}

impl Dim {
    /// How many elements a tensor of extents `shape` has at `sizes` (a negative extent counts as 0; the
    /// product saturates).
    pub fn elements(shape: &[Dim], sizes: &[i64]) -> u64 {
        shape
            .iter()
            .fold(1u64, |a, d| a.saturating_mul(d.eval(sizes).max(0) as u64))
    }

    /// Folds constant sub-expressions, so that `10 + 1` and `11` compare equal.
    pub fn fold(self) -> Dim {
        fn bin(a: Dim, b: Dim, f: fn(i64, i64) -> i64, mk: fn(Box<Dim>, Box<Dim>) -> Dim) -> Dim {
            match (a.fold(), b.fold()) {
                (Dim::Const(x), Dim::Const(y)) => Dim::Const(f(x, y)),
                (x, y) => mk(Box::new(x), Box::new(y)),
            }
        }
        match self {
            Dim::Add(a, b) => bin(*a, *b, i64::wrapping_add, Dim::Add),
            Dim::Sub(a, b) => bin(*a, *b, i64::wrapping_sub, Dim::Sub),
            Dim::Mul(a, b) => bin(*a, *b, i64::wrapping_mul, Dim::Mul),
            d => d,
        }
    }

    /// The symbols it reads.
    pub fn syms(&self) -> Vec<DimId> {
        match self {
            Dim::Const(_) => vec![],
            Dim::Sym(s) => vec![*s],
            Dim::Add(a, b) | Dim::Sub(a, b) | Dim::Mul(a, b) => {
                let mut v = a.syms();
                v.extend(b.syms());
                v
            }
        }
    }

    /// Evaluates with the given sizes of the symbols.
    pub fn eval(&self, sizes: &[i64]) -> i64 {
        match self {
            Dim::Const(c) => *c,
            Dim::Sym(s) => sizes[s.index()],
            Dim::Add(a, b) => a.eval(sizes).wrapping_add(b.eval(sizes)),
            Dim::Sub(a, b) => a.eval(sizes).wrapping_sub(b.eval(sizes)),
            Dim::Mul(a, b) => a.eval(sizes).wrapping_mul(b.eval(sizes)),
        }
    }

    /// Prints with the function's symbol names.
    pub fn show(&self, names: &[DimSym]) -> String {
        fn go(d: &Dim, names: &[DimSym], prec: u8) -> String {
            match d {
                Dim::Const(c) => c.to_string(),
                Dim::Sym(s) => names
                    .get(s.index())
                    .map_or_else(|| format!("?{}", s.0), |n| n.name.clone()),
                Dim::Add(a, b) | Dim::Sub(a, b) => {
                    let op = if matches!(d, Dim::Add(..)) { "+" } else { "-" };
                    let s = format!("{} {op} {}", go(a, names, 1), go(b, names, 2));
                    if prec > 1 { format!("({s})") } else { s }
                }
                Dim::Mul(a, b) => format!("{} * {}", go(a, names, 2), go(b, names, 3)),
            }
        }
        go(self, names, 0)
    }
}

/// A named dimension symbol, bound at call time from input shapes or, for an integer hyperparameter used
/// as a size (`topk[j](e; k = k)`, `let t[u: k]`), from that hyperparameter's value.
#[derive(Clone, Debug)]
pub struct DimSym {
    /// Its name.
    pub name: String,
    /// Where it is declared.
    pub span: Span,
    /// The integer hyperparameter whose value it is, if any.
    pub hyper: Option<u32>,
}

/// An input tensor (rank 0 for a scalar input).
#[derive(Clone, Debug)]
pub struct Input {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub elem: ElemTy,
    /// Its shape.
    pub shape: Vec<Dim>,
    /// For `idx` inputs: every value must lie in `0..bound`.
    pub bound: Option<Dim>,
    /// For bounded labels: the one other value a label may take (`ignore = 255`); such a label is not
    /// statically inside its bound, so every read it subscripts is checked.
    pub ignore: Option<i64>,
    /// Whether it gets no gradient.
    pub nograd: bool,
    /// For per-sample state (`u: f32[B] state[ids] = init`): the key input and the initial row value.
    pub state: Option<StateSpec>,
    /// For an output of an extern operation (`let (a, b) = op(x, y)`): the call (an index into
    /// [`Function::externs`]) that computes it before the kernel runs; a caller never passes it.
    pub produced_by: Option<u32>,
    /// Where it is declared.
    pub span: Span,
}

/// `let (a, b) = op(x, y; k = v)`: a call of the extern operation `op` (implemented in Rust, registered on
/// the compiler), run on the host before the loss's kernel: its arguments are whole tensors (inputs or
/// `let`s), its outputs become inputs of the kernel ([`Input::produced_by`]).
#[derive(Clone, Debug)]
pub struct ExternCall {
    /// The operation's name.
    pub op: String,
    /// Its arguments, in the declaration's order.
    pub args: Vec<ExternArg>,
    /// Its options, every declared one (a call's value or the default).
    pub options: Vec<(String, ExternOption)>,
    /// The inputs (indices into [`Function::inputs`]) its outputs fill, in the declaration's order.
    pub outputs: Vec<u32>,
    /// Where it is written.
    pub span: Span,
}

/// An argument of an extern call: a whole tensor.
#[derive(Clone, Debug)]
pub struct ExternArg {
    /// The tensor's name.
    pub name: String,
    /// The tensor: an input, or a `let` of the function as checked (before autodiff).
    pub tensor: TensorRef,
    /// Whether the operation's gradient reaches it (its parameter is not `nograd`).
    pub differentiable: bool,
}

/// An extern call's option value.
#[derive(Clone, Debug, PartialEq)]
pub enum ExternOption {
    /// A string.
    Str(String),
    /// A number fixed by the source.
    Number(f64),
    /// The call's value of hyperparameter `.0`.
    Hyper(u32),
}

/// How a state input is kept between calls: its rows are gathered from a table by the sample ids of
/// input `key` (rank 1, one id per row), and a table row never written yet holds `init`.
#[derive(Clone, Debug, PartialEq)]
pub struct StateSpec {
    /// The input (an index into [`Function::inputs`]) whose ids key the rows.
    pub key: u32,
    /// What a row never written holds.
    pub init: StateInit,
}

/// The initial value of a state table's rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StateInit {
    /// A constant.
    Const(f64),
    /// The value of hyperparameter `.0` for the call that creates the row.
    Hyper(u32),
}

/// `out_name: … updates input`: after a call, output `output` is scattered back into the state table of
/// input `input` at the call's sample ids.
#[derive(Clone, Debug, PartialEq)]
pub struct StateUpdate {
    /// The output's name.
    pub output: String,
    /// The state input it writes back (an index into [`Function::inputs`]).
    pub input: u32,
}

impl Input {
    /// A float input that carries no gradient in, the cotangent of a value shaped `shape` (a per-sample
    /// loss's `cotangent`, a pullback's `ct_<let>`).
    pub fn cotangent(name: String, shape: Vec<Dim>, span: Span) -> Input {
        Input {
            name,
            elem: ElemTy::F32,
            shape,
            bound: None,
            ignore: None,
            nograd: true,
            state: None,
            produced_by: None,
            span,
        }
    }
    /// Whether a caller passes it (not an extern call's output, which the kernel computes).
    pub fn given(&self) -> bool {
        self.produced_by.is_none()
    }
    /// Whether this input receives a gradient.
    pub fn differentiable(&self) -> bool {
        self.elem != ElemTy::Idx && !self.nograd
    }
}

/// A scalar hyperparameter with a default, overridable per call.
#[derive(Clone, Debug)]
pub struct Hyper {
    /// Its name.
    pub name: String,
    /// Float or integer.
    pub scalar: Scalar,
    /// Its value when a call does not set it.
    pub default: f64,
    /// Where it is declared.
    pub span: Span,
}

/// An index variable and its range `0..range`.
#[derive(Clone, Debug)]
pub struct IndexVar {
    /// Its name.
    pub name: String,
    /// Its extent.
    pub range: Dim,
    /// Where it is bound.
    pub span: Span,
}

/// What a `Load` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorRef {
    /// Input `.0` (an index into [`Function::inputs`]).
    Input(u32),
    /// A tensor the function defines.
    Def(TensorId),
}

/// A node's operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// A float constant, stored as its bits.
    Float(u64),
    /// An integer constant.
    Int(i64),
    /// A condition constant.
    Bool(bool),
    /// The current value of an index variable.
    Index(IndexId),
    /// A dimension's size as an integer.
    Size(Dim),
    /// A hyperparameter's value.
    Hyper(u32),
    /// An element of an input or an earlier tensor; subscripts are integer nodes.
    Load {
        /// What it reads.
        tensor: TensorRef,
        /// One subscript per axis.
        subs: Box<[NodeId]>,
    },
    /// An elementwise primitive applied to operands.
    Prim {
        /// Which primitive.
        prim: Prim,
        /// Its operands.
        args: Box<[NodeId]>,
    },
    /// A constant table read at an integer node: `values[at]`, with `at` taken as the nearest of
    /// `0..values.len()` (the choice of a sorting network's partner wires, built by [`Function::table`]).
    /// The values are the bits of the node's kind ([`table_value`]); a table has two or more, not all
    /// equal.
    Table {
        /// Where it is read.
        at: NodeId,
        /// Its entries.
        values: std::sync::Arc<[u64]>,
    },
    /// A reduction over `indices` (where `mask` holds, if given).
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// The indices it reduces over.
        indices: Box<[IndexId]>,
        /// The condition selecting the points reduced, if any.
        mask: Option<NodeId>,
        /// What is reduced.
        body: NodeId,
    },
}

/// A node's operands ([`Expr::operands`]).
pub type Operands = smallvec::SmallVec<[NodeId; 4]>;

impl Expr {
    /// A float constant.
    pub fn float(x: f64) -> Expr {
        Expr::Float(x.to_bits())
    }
    /// The same operation over other operands: each operand node replaced by `f`'s node for it (a
    /// reduction's mask before its body); what it reads, reduces over or applies is unchanged.
    pub fn try_map_operands<E>(&self, mut f: impl FnMut(NodeId) -> Result<NodeId, E>) -> Result<Expr, E> {
        Ok(match self {
            Expr::Load { tensor, subs } => Expr::Load {
                tensor: *tensor,
                subs: subs.iter().map(|s| f(*s)).collect::<Result<_, E>>()?,
            },
            Expr::Prim { prim, args } => Expr::Prim {
                prim: *prim,
                args: args.iter().map(|a| f(*a)).collect::<Result<_, E>>()?,
            },
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => Expr::Reduce {
                op: *op,
                indices: indices.clone(),
                mask: mask.map(&mut f).transpose()?,
                body: f(*body)?,
            },
            Expr::Table { at, values } => Expr::Table {
                at: f(*at)?,
                values: values.clone(),
            },
            leaf => leaf.clone(),
        })
    }
    /// The operand nodes, in order (inline for up to four: no allocation on the IR's hot paths).
    pub fn operands(&self) -> Operands {
        match self {
            Expr::Load { subs, .. } => Operands::from_slice(subs),
            Expr::Prim { args, .. } => Operands::from_slice(args),
            Expr::Reduce { mask, body, .. } => mask.iter().copied().chain([*body]).collect(),
            Expr::Table { at, .. } => Operands::from_slice(&[*at]),
            _ => Operands::new(),
        }
    }
}

/// An arena entry: the operation, its kind, its free indices (sorted) and its depth.
#[derive(Clone, Debug)]
pub struct Node {
    /// The operation.
    pub expr: Expr,
    /// The kind of scalar it denotes.
    pub scalar: Scalar,
    /// The index variables it depends on, sorted.
    pub free: Box<[IndexId]>,
    /// The longest path below it (bounded by [`MAX_NODE_DEPTH`]).
    pub depth: u32,
}

/// What a tensor definition is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An intermediate `let`.
    Let,
    /// The loss value (rank 0).
    Loss,
    /// A named extra output (`out name[i] = …`).
    Output,
    /// The gradient of the loss with respect to input `.0` (made by autodiff).
    Grad(u32),
}

/// `name[indices] = body`.
#[derive(Clone, Debug)]
pub struct TensorDef {
    /// Its name.
    pub name: String,
    /// Its head indices (its axes).
    pub indices: Vec<IndexId>,
    /// Its element's expression.
    pub body: NodeId,
    /// Its kind of scalar.
    pub scalar: Scalar,
    /// What it is for.
    pub role: Role,
    /// Where it is defined.
    pub span: Span,
}

/// The deepest node the IR admits (keeps every recursive walk's stack bounded).
pub const MAX_NODE_DEPTH: u32 = 1000;

/// The most nodes one function may have (bounds the work of inlining).
pub const MAX_NODES: usize = 1 << 20;

/// Returned when a node would exceed [`MAX_NODE_DEPTH`] or the function [`MAX_NODES`].
#[derive(Debug, Clone, Copy)]
pub struct TooDeep;

/// One loss: its signature and its definitions.
#[derive(Clone, Debug)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// Its doc comment.
    pub doc: String,
    /// Where it is defined.
    pub span: Span,
    /// Its dimension symbols.
    pub dims: Vec<DimSym>,
    /// Its inputs, in declaration order.
    pub inputs: Vec<Input>,
    /// Its hyperparameters, in declaration order.
    pub hypers: Vec<Hyper>,
    /// Which outputs write which state inputs back.
    pub updates: Vec<StateUpdate>,
    /// For a per-sample loss (`-> f32[N]`): the input holding the cotangent its gradients are VJPs with.
    pub cotangent: Option<u32>,
    /// The extern operations it calls, in order (each one's arguments read only earlier calls' outputs).
    pub externs: Vec<ExternCall>,
    /// Its index variables (every `let` head, reduction and binder).
    pub indices: Vec<IndexVar>,
    /// Its tensor definitions, in dependency order.
    pub tensors: Vec<TensorDef>,
    nodes: Vec<Node>,
    spans: Vec<Span>,
    /// Hash-consing: node ids by the hash of their expression (the expression itself lives in `nodes`).
    intern: rustc_hash::FxHashMap<u64, smallvec::SmallVec<[NodeId; 1]>>,
}

impl Function {
    /// An empty function.
    pub fn new(name: impl Into<String>, span: Span) -> Function {
        Function {
            name: name.into(),
            doc: String::new(),
            span,
            dims: Vec::new(),
            inputs: Vec::new(),
            hypers: Vec::new(),
            updates: Vec::new(),
            cotangent: None,
            externs: Vec::new(),
            indices: Vec::new(),
            tensors: Vec::new(),
            nodes: Vec::new(),
            spans: Vec::new(),
            intern: Default::default(),
        }
    }

    /// The node of an id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }
    /// The source span of a node.
    pub fn span(&self, id: NodeId) -> Span {
        self.spans[id.index()]
    }
    /// Every node, in creation order (operands before users).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    // Like `node` and `tensor`: one arena per kind of id, so not `std::ops::Index`.
    /// The index variable of an id.
    #[allow(clippy::should_implement_trait)]
    pub fn index(&self, id: IndexId) -> &IndexVar {
        &self.indices[id.index()]
    }
    /// The tensor definition of an id.
    pub fn tensor(&self, id: TensorId) -> &TensorDef {
        &self.tensors[id.index()]
    }

    /// Adds (or finds) a node. Its kind is given; free indices and depth are derived from the operands.
    pub fn add(&mut self, expr: Expr, scalar: Scalar, span: Span) -> Result<NodeId, TooDeep> {
        let key = std::hash::BuildHasher::hash_one(&rustc_hash::FxBuildHasher, &expr);
        if let Some(ids) = self.intern.get(&key)
            && let Some(&id) = ids.iter().find(|id| self.nodes[id.index()].expr == expr)
        {
            return Ok(id);
        }
        let mut free: Vec<IndexId> = Vec::new();
        let mut depth = 0;
        for op in expr.operands() {
            let n = &self.nodes[op.index()];
            free.extend(n.free.iter().copied());
            depth = depth.max(n.depth + 1);
        }
        match &expr {
            Expr::Index(i) => free.push(*i),
            Expr::Reduce { indices, .. } => free.retain(|f| !indices.contains(f)),
            _ => {}
        }
        if depth > MAX_NODE_DEPTH || self.nodes.len() >= MAX_NODES {
            return Err(TooDeep);
        }
        free.sort_unstable();
        free.dedup();
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            expr,
            scalar,
            free: free.into(),
            depth,
        });
        self.spans.push(span);
        self.intern.entry(key).or_default().push(id);
        Ok(id)
    }

    /// `Σ_t a[t] · b[t]` over new indices `t` of `shape` (a tensor and a same-shaped weight: a directional
    /// derivative's loss, a cotangent's pullback).
    pub fn dot(&mut self, a: TensorRef, b: TensorRef, shape: &[Dim], span: Span) -> Result<NodeId, TooDeep> {
        let idx: Vec<IndexId> = shape.iter().map(|d| self.add_index("t", d.clone(), span)).collect();
        let subs: Vec<NodeId> = (idx.iter())
            .map(|i| self.add(Expr::Index(*i), Scalar::Int, span))
            .collect::<Result<_, _>>()?;
        let load = |f: &mut Function, tensor: TensorRef| {
            let subs = subs.clone().into();
            f.add(Expr::Load { tensor, subs }, Scalar::Float, span)
        };
        let (la, lb) = (load(self, a)?, load(self, b)?);
        let prod = self.prim(Prim::Mul, &[la, lb], span)?;
        if idx.is_empty() {
            return Ok(prod);
        }
        self.add(
            Expr::Reduce {
                op: ReduceOp::Sum,
                indices: idx.into(),
                mask: None,
                body: prod,
            },
            Scalar::Float,
            span,
        )
    }

    /// Adds a primitive application; its kind follows from the operands' kinds ([`Prim::result`]).
    pub fn prim(&mut self, prim: Prim, args: &[NodeId], span: Span) -> Result<NodeId, TooDeep> {
        let kinds: Vec<Scalar> = args.iter().map(|a| self.node(*a).scalar).collect();
        let scalar = prim.result(&kinds);
        self.add(
            Expr::Prim {
                prim,
                args: args.into(),
            },
            scalar,
            span,
        )
    }

    /// The float constant `x` as a node.
    pub fn float(&mut self, x: f64, span: Span) -> Result<NodeId, TooDeep> {
        self.add(Expr::float(x), Scalar::Float, span)
    }

    /// Whether the subscripts `subs` are exactly the indices `indices`, in order (a read of an element at
    /// the position the indices stand for).
    pub fn at_indices(&self, subs: &[NodeId], indices: &[IndexId]) -> bool {
        subs.len() == indices.len()
            && subs
                .iter()
                .zip(indices)
                .all(|(s, i)| self.node(*s).expr == Expr::Index(*i))
    }

    /// `sum[k | mask] body` over one index `k`: (k, mask, body).
    pub fn single_sum(&self, n: NodeId) -> Option<(IndexId, Option<NodeId>, NodeId)> {
        match &self.node(n).expr {
            Expr::Reduce {
                op: ReduceOp::Sum,
                indices,
                mask,
                body,
            } if indices.len() == 1 => Some((indices[0], *mask, *body)),
            _ => None,
        }
    }

    /// Adds the float `sum[k | mask] body`.
    pub fn add_sum(&mut self, k: IndexId, mask: Option<NodeId>, body: NodeId, span: Span) -> Result<NodeId, TooDeep> {
        self.add(
            Expr::Reduce {
                op: ReduceOp::Sum,
                indices: [k].into(),
                mask,
                body,
            },
            Scalar::Float,
            span,
        )
    }

    /// The factors of the product tree at `n` (`a * b * c` gives a, b, c, left to right).
    pub fn factors(&self, n: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = vec![n];
        while let Some(m) = stack.pop() {
            match &self.node(m).expr {
                Expr::Prim { prim: Prim::Mul, args } => stack.extend(args.iter().rev()),
                _ => out.push(m),
            }
        }
        out
    }

    /// The value `v` of a test `v != 0` (either way round; autodiff's guard on an adjoint term).
    pub fn nonzero_test(&self, m: NodeId) -> Option<NodeId> {
        match &self.node(m).expr {
            Expr::Prim { prim: Prim::Ne, args } => match args[..] {
                [a, b] if self.as_float(b) == Some(0.0) => Some(a),
                [a, b] if self.as_float(a) == Some(0.0) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }

    /// The float constant a node holds, if it is one.
    pub fn as_float(&self, id: NodeId) -> Option<f64> {
        match self.node(id).expr {
            Expr::Float(bits) => Some(f64::from_bits(bits)),
            _ => None,
        }
    }

    /// Whether renaming the indices of `a` by `map` gives `b`, up to the order of the two operands of `+`,
    /// `*`, `==`, `!=`, `&&` and `||` (which give the same bits either way): `s[t, k] * 2.0` is `2.0 * s[t, k]`.
    /// Reductions inside must be the same node and not see a renamed index; the loop IR only matches
    /// reduction-free elements.
    pub fn same_renamed<S: std::hash::BuildHasher>(
        &self,
        a: NodeId,
        b: NodeId,
        map: &HashMap<IndexId, IndexId, S>,
    ) -> bool {
        self.same_renamed_memo(a, b, map, &mut rustc_hash::FxHashMap::default())
    }

    /// [`Self::same_renamed`], each pair compared once.
    fn same_renamed_memo<S: std::hash::BuildHasher>(
        &self,
        a: NodeId,
        b: NodeId,
        map: &HashMap<IndexId, IndexId, S>,
        known: &mut rustc_hash::FxHashMap<(NodeId, NodeId), bool>,
    ) -> bool {
        let (x, y) = (self.node(a), self.node(b));
        if !x.free.iter().any(|i| map.contains_key(i)) {
            return a == b;
        }
        if let Some(same) = known.get(&(a, b)) {
            return *same;
        }
        let mut all = |s: &[NodeId], v: &[NodeId]| {
            s.len() == v.len() && s.iter().zip(v).all(|(p, q)| self.same_renamed_memo(*p, *q, map, known))
        };
        let same = match (&x.expr, &y.expr) {
            (Expr::Index(i), Expr::Index(j)) => map.get(i) == Some(j),
            (Expr::Load { tensor: t, subs: s }, Expr::Load { tensor: u, subs: v }) => t == u && all(s, v),
            (Expr::Table { at: s, values: t }, Expr::Table { at: v, values: u }) => t == u && all(&[*s], &[*v]),
            (Expr::Prim { prim: p, args: s }, Expr::Prim { prim: q, args: v }) if p == q => {
                use crate::prims::Prim::*;
                let commutes = matches!(p, Add | Mul | Eq | Ne | And | Or) && s.len() == 2;
                all(s, v) || (commutes && all(s, &[v[1], v[0]]))
            }
            _ => false,
        };
        known.insert((a, b), same);
        same
    }

    /// Rebuilds `node` with index variables replaced by the given integer nodes. Only nodes in which a
    /// replaced index is free are rebuilt; a reduction that binds an index hides it from replacement.
    pub fn subst<S: std::hash::BuildHasher>(
        &mut self,
        node: NodeId,
        map: &HashMap<IndexId, NodeId, S>,
    ) -> Result<NodeId, TooDeep> {
        let mut memo = rustc_hash::FxHashMap::default();
        self.subst_memo(node, map, &mut memo)
    }

    fn subst_memo<S: std::hash::BuildHasher>(
        &mut self,
        node: NodeId,
        map: &HashMap<IndexId, NodeId, S>,
        memo: &mut rustc_hash::FxHashMap<NodeId, NodeId>,
    ) -> Result<NodeId, TooDeep> {
        if let Some(done) = memo.get(&node) {
            return Ok(*done);
        }
        let n = self.node(node).clone();
        if !n.free.iter().any(|i| map.contains_key(i)) {
            return Ok(node);
        }
        let span = self.span(node);
        let expr = match n.expr {
            Expr::Index(i) => {
                let r = map[&i];
                return Ok(r);
            }
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => {
                // The reduction binds its indices: inside it they are not the ones being replaced.
                let (mask, body) = if indices.iter().any(|i| map.contains_key(i)) {
                    let inner: rustc_hash::FxHashMap<IndexId, NodeId> = map
                        .iter()
                        .filter(|(k, _)| !indices.contains(k))
                        .map(|(k, v)| (*k, *v))
                        .collect();
                    let mut inner_memo = rustc_hash::FxHashMap::default();
                    let mask = mask.map(|m| self.subst_memo(m, &inner, &mut inner_memo)).transpose()?;
                    (mask, self.subst_memo(body, &inner, &mut inner_memo)?)
                } else {
                    let mask = mask.map(|m| self.subst_memo(m, map, memo)).transpose()?;
                    (mask, self.subst_memo(body, map, memo)?)
                };
                Expr::Reduce {
                    op,
                    indices,
                    mask,
                    body,
                }
            }
            other => other.try_map_operands(|o| self.subst_memo(o, map, memo))?,
        };
        let id = self.add(expr, n.scalar, span)?;
        memo.insert(node, id);
        Ok(id)
    }

    /// The constant node of a value (a float, an integer or a condition).
    pub fn constant(&mut self, v: Value, span: Span) -> Result<NodeId, TooDeep> {
        match v {
            Value::I(i) => self.add(Expr::Int(i), Scalar::Int, span),
            Value::B(b) => self.add(Expr::Bool(b), Scalar::Bool, span),
            Value::F(x) => self.float(x, span),
        }
    }

    /// A constant lookup table `values[at]` over the integer node `at` (read at the nearest of
    /// `0..values.len()`; the values share one kind): [`Expr::Table`], or the constant when all are equal
    /// or `at` is one.
    pub fn table(&mut self, at: NodeId, values: &[Value], span: Span) -> Result<NodeId, TooDeep> {
        if values.iter().all(|v| *v == values[0]) {
            return self.constant(values[0], span);
        }
        if let Expr::Int(i) = self.node(at).expr {
            return self.constant(values[table_slot(i, values.len())], span);
        }
        let scalar = match values[0] {
            Value::I(_) => Scalar::Int,
            Value::B(_) => Scalar::Bool,
            Value::F(_) => Scalar::Float,
        };
        let bits = values.iter().map(|v| table_bits(*v)).collect();
        self.add(Expr::Table { at, values: bits }, scalar, span)
    }

    /// The value of `node` when index `index` is `value`, if the node is built from constants, that index
    /// and primitives only (no loads, reductions, hyperparameters or other indices).
    pub fn eval_at(&self, node: NodeId, index: IndexId, value: i64) -> Option<Value> {
        match &self.node(node).expr {
            Expr::Int(i) => Some(Value::I(*i)),
            Expr::Bool(b) => Some(Value::B(*b)),
            Expr::Float(bits) => Some(Value::F(f64::from_bits(*bits))),
            Expr::Index(i) if *i == index => Some(Value::I(value)),
            Expr::Table { at, values } => {
                let at = self.eval_at(*at, index, value)?.as_i64();
                Some(table_value(
                    self.node(node).scalar,
                    values[table_slot(at, values.len())],
                ))
            }
            Expr::Prim { prim, args } => {
                let vals = args
                    .iter()
                    .map(|a| self.eval_at(*a, index, value))
                    .collect::<Option<Vec<Value>>>()?;
                Some(prim.eval(&vals))
            }
            _ => None,
        }
    }

    /// Whether the function draws random numbers (`rand`, `randn`: keyed by its `seed` and `draw`
    /// hyperparameters).
    pub fn draws(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.expr, Expr::Prim { prim: Prim::Draw, .. }))
    }

    /// Whether subscript `s` is statically inside `0..d`: an index over `d`, a label input bounded by
    /// `d`, a constant below it, or a choice between such subscripts (a constant table, such as a sorting
    /// network's partners).
    pub fn in_range(&self, s: NodeId, d: &Dim) -> bool {
        match &self.node(s).expr {
            Expr::Index(v) => self.index(*v).range == *d,
            Expr::Load {
                tensor: TensorRef::Input(i),
                ..
            } => self.inputs[*i as usize].ignore.is_none() && self.inputs[*i as usize].bound.as_ref() == Some(d),
            Expr::Int(c) => matches!(d, Dim::Const(n) if *c >= 0 && c < n),
            Expr::Table { values, .. } => {
                matches!(d, Dim::Const(n) if values.iter().all(|v| (0..*n).contains(&(*v as i64))))
            }
            Expr::Prim {
                prim: Prim::Select,
                args,
            } => self.in_range(args[1], d) && self.in_range(args[2], d),
            _ => false,
        }
    }

    /// Every node reachable from `root`, in arena (topological) order.
    ///
    /// Costs about the size of what it finds (a bit per node of the arena is cleared, nothing scanned):
    /// lowering asks it about many small subexpressions of large functions.
    pub fn reachable(&self, roots: &[NodeId]) -> Vec<NodeId> {
        let mut seen = vec![0u64; self.nodes.len().div_ceil(64)];
        let mut found = Vec::new();
        let mut stack: Vec<NodeId> = roots.to_vec();
        while let Some(n) = stack.pop() {
            let (word, bit) = (n.index() / 64, 1u64 << (n.index() % 64));
            if seen[word] & bit != 0 {
                continue;
            }
            seen[word] |= bit;
            found.push(n);
            stack.extend(self.node(n).expr.operands());
        }
        found.sort_unstable();
        found
    }

    /// What a caller passes: a copy with no nodes or tensors whose inputs are the given ones (not the
    /// extern calls' outputs), for the checks of a call ([`crate::call::bind_views`]).
    pub fn caller_signature(&self) -> Function {
        let mut s = self.empty_like();
        s.inputs.retain(|i| i.given());
        s
    }

    /// A copy with the same signature and index variables but no nodes or tensors.
    pub fn empty_like(&self) -> Function {
        Function {
            name: self.name.clone(),
            doc: self.doc.clone(),
            span: self.span,
            dims: self.dims.clone(),
            inputs: self.inputs.clone(),
            hypers: self.hypers.clone(),
            updates: self.updates.clone(),
            cotangent: self.cotangent,
            externs: self.externs.clone(),
            indices: self.indices.clone(),
            tensors: Vec::new(),
            nodes: Vec::new(),
            spans: Vec::new(),
            intern: Default::default(),
        }
    }

    /// Adds an index variable ranging over `0..range`.
    pub fn add_index(&mut self, name: impl Into<String>, range: Dim, span: Span) -> IndexId {
        self.indices.push(IndexVar {
            name: name.into(),
            range,
            span,
        });
        IndexId(self.indices.len() as u32 - 1)
    }

    /// Adds a tensor definition.
    pub fn add_tensor(&mut self, def: TensorDef) -> TensorId {
        self.tensors.push(def);
        TensorId(self.tensors.len() as u32 - 1)
    }

    /// The loss definition.
    pub fn loss(&self) -> Option<TensorId> {
        self.tensors
            .iter()
            .position(|t| t.role == Role::Loss)
            .map(|i| TensorId(i as u32))
    }

    /// The named extra outputs, in declaration order.
    pub fn outputs(&self) -> impl Iterator<Item = (TensorId, &TensorDef)> {
        self.tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.role == Role::Output)
            .map(|(i, t)| (TensorId(i as u32), t))
    }

    /// The shape of a tensor (the ranges of its head indices).
    pub fn tensor_shape(&self, id: TensorId) -> Vec<Dim> {
        self.tensor(id)
            .indices
            .iter()
            .map(|i| self.index(*i).range.clone())
            .collect()
    }

    /// The shape of what a `TensorRef` names.
    pub fn ref_shape(&self, r: TensorRef) -> Vec<Dim> {
        match r {
            TensorRef::Input(i) => self.inputs[i as usize].shape.clone(),
            TensorRef::Def(t) => self.tensor_shape(t),
        }
    }

    /// The name of what a `TensorRef` names.
    pub fn ref_name(&self, r: TensorRef) -> &str {
        match r {
            TensorRef::Input(i) => &self.inputs[i as usize].name,
            TensorRef::Def(t) => &self.tensor(t).name,
        }
    }

    /// How many elements tensor `t` has at `sizes` ([`Dim::elements`] of its head indices' ranges).
    pub fn elements(&self, t: &TensorDef, sizes: &[i64]) -> u64 {
        let shape: Vec<Dim> = t.indices.iter().map(|i| self.index(*i).range.clone()).collect();
        Dim::elements(&shape, sizes)
    }

    /// A dimension written with its symbols' names.
    pub fn show_dim(&self, d: &Dim) -> String {
        d.show(&self.dims)
    }
}

/// A checked program: every loss it defines or imports.
#[derive(Clone, Debug, Default)]
pub struct Module {
    /// The losses, in definition order.
    pub functions: Vec<Function>,
}

impl Module {
    /// The loss named `name`.
    pub fn get(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print::function(self))
    }
}

/// The entry of a table of `len` values read at `at`: the nearest of `0..len` ([`Expr::Table`]).
pub fn table_slot(at: i64, len: usize) -> usize {
    usize::try_from(at.max(0)).map_or(len - 1, |a| a.min(len - 1))
}

/// How [`Expr::Table`] stores a value: an integer as itself, a float as its bits, a condition as 0 or 1.
pub fn table_bits(v: Value) -> u64 {
    match v {
        Value::I(i) => i as u64,
        Value::F(x) => x.to_bits(),
        Value::B(b) => u64::from(b),
    }
}

/// A table entry as a value of kind `scalar` (the inverse of [`table_bits`]).
pub fn table_value(scalar: Scalar, bits: u64) -> Value {
    match scalar {
        Scalar::Int => Value::I(bits as i64),
        Scalar::Float => Value::F(f64::from_bits(bits)),
        Scalar::Bool => Value::B(bits != 0),
    }
}

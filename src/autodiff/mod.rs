//! Stage 4: reverse-mode differentiation as an IR → IR transform.
//!
//! [`grad`] returns a new function holding every tensor of the original plus, for each differentiable input
//! `x`, a tensor `grad_x` (role [`Role::Grad`]) with the gradient of the loss. The result is ordinary IR:
//! it prints, verifies, optimizes and evaluates like any other function, and can be differentiated again.
//!
//! Naming: the adjoint of a tensor `m` is the tensor `m_adj` (∂loss/∂m, same shape); `grad_x` is the
//! adjoint of input `x`. Inside one tensor body, the adjoint of a node is an expression over the node's own
//! free indices.
//!
//! How it works, per tensor from the last to the first:
//! - Within the body, nodes are visited from the root down (reverse arena order). Elementwise primitives
//!   contribute `adjoint × partial` ([`Prim::partials`]), summed over any index the operand does not
//!   depend on (a broadcast's adjoint is a sum). Reductions give an explicit vector-Jacobian rule
//!   (`sum`: broadcast, `mean`: divide by the count, `logsumexp`: softmax weights, `max`/`min`: the first
//!   arg-max, `prod`: `out / x`). `stopgrad`, conditions, integers, labels and `nograd` inputs carry none.
//! - A load `t[s0, s1]` hands its adjoint to `t`. The adjoint tensor `t_adj[k0, k1]` sums those
//!   contributions with an Iverson bracket `[s0 == k0 && s1 == k1]` over the indices of the use; where a
//!   subscript is a bare index the sum is resolved by substitution, so the adjoint of a gather
//!   `s[i, y[i]]` becomes `[k1 == y[k0]] * g[k0]`, never a scatter.

use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeSet;

use crate::diag::{Code, Diag, Span};
use crate::ir::{
    Dim, Expr, Function, IndexId, NodeId, ReduceOp, Role, Scalar, TensorDef, TensorId, TensorRef, TooDeep,
};
use crate::prims::{Partial, Prim};

type R<T> = Result<T, TooDeep>;

/// Differentiates the loss of `f` with respect to every differentiable input.
pub fn grad(f: &Function) -> Result<Function, Diag> {
    Ad::new(f).run().map_err(|TooDeep| too_large(f))
}

fn too_large(f: &Function) -> Diag {
    Diag::new(
        Code::TooDeep,
        format!("the gradient of `{}` is too large to build", f.name),
    )
    .label(f.span, "this loss")
    .help("split the loss into `let`s so that the gradient can reuse them")
}

/// Builds `sum_t grad_x[t] * v[t]` as the new loss of a copy of the gradient function `g`, with `v` a new
/// `nograd` input shaped like `x`. Differentiating the result gives the Hessian-vector product `H v`.
pub fn directional(g: &Function, x: &str, v: &str) -> Result<Function, Diag> {
    let mut h = g.clone();
    let Some(xi) = h.inputs.iter().position(|i| i.name == x) else {
        return Err(Diag::new(Code::UnknownName, format!("no input `{x}`")).help("name a differentiable input"));
    };
    let Some(gt) = h.tensors.iter().position(|t| t.role == Role::Grad(xi as u32)) else {
        return Err(Diag::new(Code::UnknownName, format!("`{x}` has no gradient")).help("differentiate first"));
    };
    let mut input = h.inputs[xi].clone();
    input.name = v.to_string();
    input.nograd = true;
    h.inputs.push(input);
    let vi = h.inputs.len() as u32 - 1;
    for t in &mut h.tensors {
        if t.role != Role::Output {
            t.role = Role::Let;
        }
    }
    let span = h.span;
    let shape = h.inputs[xi].shape.clone();
    let body = (h.dot(TensorRef::Def(TensorId(gt as u32)), TensorRef::Input(vi), &shape, span))
        .map_err(|TooDeep| too_large(g))?;
    h.add_tensor(TensorDef {
        name: "loss".into(),
        indices: vec![],
        body,
        scalar: Scalar::Float,
        role: Role::Loss,
        span,
    });
    Ok(h)
}

/// An adjoint term: `value` where `guard` holds (everywhere when `None`), 0 elsewhere.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Term {
    guard: Option<NodeId>,
    value: NodeId,
}

/// A use of a tensor inside some body: its subscripts and the adjoint flowing into it.
struct Contribution {
    subs: Vec<NodeId>,
    adjoint: NodeId,
}

struct Ad {
    g: Function,
    /// Per node of the original function: does it depend on a differentiable input?
    active: Vec<bool>,
    /// Per tensor of the original function.
    active_tensor: Vec<bool>,
    contributions: HashMap<TensorRef, Vec<Contribution>>,
}

impl Ad {
    fn new(f: &Function) -> Ad {
        let mut g = f.clone();
        for t in &mut g.tensors {
            if matches!(t.role, Role::Grad(_)) {
                t.role = Role::Let;
            }
        }
        let mut active = vec![false; f.nodes().len()];
        let mut active_tensor = vec![false; f.tensors.len()];
        // Tensors only load earlier tensors, so one pass in definition order settles everything.
        let mut done = vec![false; f.nodes().len()];
        for (k, t) in f.tensors.iter().enumerate() {
            for n in f.reachable(&[t.body]) {
                if done[n.index()] {
                    continue;
                }
                done[n.index()] = true;
                let node = f.node(n);
                active[n.index()] = node.scalar == Scalar::Float
                    && match &node.expr {
                        Expr::Load {
                            tensor: TensorRef::Input(i),
                            ..
                        } => f.inputs[*i as usize].differentiable(),
                        Expr::Load {
                            tensor: TensorRef::Def(t),
                            ..
                        } => active_tensor[t.index()],
                        Expr::Prim {
                            prim: Prim::StopGrad | Prim::Iverson | Prim::ToFloat,
                            ..
                        } => false,
                        Expr::Prim { args, .. } => args.iter().any(|a| active[a.index()]),
                        Expr::Reduce {
                            op: ReduceOp::Count | ReduceOp::ArgMax | ReduceOp::ArgMin,
                            ..
                        } => false,
                        Expr::Reduce { body, .. } => active[body.index()],
                        _ => false,
                    };
            }
            active_tensor[k] = t.scalar == Scalar::Float && active[t.body.index()];
        }
        Ad {
            g,
            active,
            active_tensor,
            contributions: HashMap::default(),
        }
    }

    fn is_active(&self, n: NodeId) -> bool {
        self.active.get(n.index()).copied().unwrap_or(false)
    }

    fn run(mut self) -> R<Function> {
        let originals = self.g.tensors.len();
        let mut adjoints = Vec::new();
        for k in (0..originals).rev() {
            let t = self.g.tensors[k].clone();
            if !self.active_tensor[k] {
                continue;
            }
            let seed = match t.role {
                Role::Loss => Some(Term {
                    guard: None,
                    value: self.g.float(1.0, t.span)?,
                }),
                _ => {
                    let head: Vec<Dim> = t.indices.iter().map(|i| self.g.index(*i).range.clone()).collect();
                    match self.assemble(TensorRef::Def(TensorId(k as u32)), &head, t.span)? {
                        None => None,
                        Some((indices, body)) => {
                            let adj = self.g.add_tensor(TensorDef {
                                name: format!("{}_adj", t.name),
                                indices,
                                body,
                                scalar: Scalar::Float,
                                role: Role::Let,
                                span: t.span,
                            });
                            adjoints.push(adj);
                            // Inside t's body, the adjoint of the root is t_adj at t's own head indices.
                            let subs: Vec<NodeId> = t
                                .indices
                                .iter()
                                .map(|i| self.g.add(Expr::Index(*i), Scalar::Int, t.span))
                                .collect::<R<_>>()?;
                            let value = self.g.add(
                                Expr::Load {
                                    tensor: TensorRef::Def(adj),
                                    subs: subs.into(),
                                },
                                Scalar::Float,
                                t.span,
                            )?;
                            // An element that receives no adjoint (it was masked out, or not chosen, where
                            // it was used) contributes nothing, even where its partials are not finite.
                            let zero = self.g.float(0.0, t.span)?;
                            let nonzero = self.g.prim(Prim::Ne, &[value, zero], t.span)?;
                            Some(Term {
                                guard: Some(nonzero),
                                value,
                            })
                        }
                    }
                }
            };
            if let Some(seed) = seed {
                self.backprop(t.body, seed)?;
            }
        }
        for (i, input) in self.g.inputs.clone().iter().enumerate() {
            if !input.differentiable() {
                continue;
            }
            let span = input.span;
            let (indices, body) = match self.assemble(TensorRef::Input(i as u32), &input.shape, span)? {
                Some(x) => x,
                None => {
                    let idx = input
                        .shape
                        .iter()
                        .map(|d| self.g.add_index("t", d.clone(), span))
                        .collect();
                    (idx, self.g.float(0.0, span)?)
                }
            };
            self.g.add_tensor(TensorDef {
                name: format!("grad_{}", input.name),
                indices,
                body,
                scalar: Scalar::Float,
                role: Role::Grad(i as u32),
                span,
            });
        }
        Ok(self.g)
    }

    /// Reverse sweep through one tensor body whose root has adjoint `seed`.
    ///
    /// Adjoint terms carry a guard: the condition (a reduction's mask, a `select`'s condition) under which
    /// the primal evaluated the node at all. Partials are only ever evaluated under the guard, so a masked
    /// out point whose partials would be NaN (`log` of a negative, say) contributes 0, not NaN.
    fn backprop(&mut self, root: NodeId, seed: Term) -> R<()> {
        let mut terms: HashMap<NodeId, Vec<Term>> = HashMap::default();
        terms.insert(root, vec![seed]);
        let order = self.g.reachable(&[root]);
        for &n in order.iter().rev() {
            if !self.is_active(n) {
                continue;
            }
            let Some(ts) = terms.remove(&n) else { continue };
            let span = self.g.span(n);
            let Term { guard, value: adj } = self.combine(&ts, span)?;
            let node = self.g.node(n).clone();
            let space: BTreeSet<IndexId> = node.free.iter().copied().collect();
            match node.expr {
                Expr::Load { tensor, subs } => {
                    let adjoint = self.guarded(guard, adj, span)?;
                    self.contributions.entry(tensor).or_default().push(Contribution {
                        subs: subs.to_vec(),
                        adjoint,
                    });
                }
                Expr::Prim { prim, args } => {
                    let partials = prim.partials(&mut self.g, &args, n, span)?;
                    for (a, p) in args.iter().zip(partials) {
                        if !self.is_active(*a) {
                            continue;
                        }
                        let value = match p {
                            Partial::Zero => continue,
                            Partial::Guard(c) => {
                                let g = self.and(guard, c, span)?;
                                let term = self.sum_to(Term { guard: g, value: adj }, &space, *a, span)?;
                                terms.entry(*a).or_default().push(term);
                                continue;
                            }
                            Partial::One => adj,
                            Partial::NegOne => self.g.prim(Prim::Neg, &[adj], span)?,
                            Partial::Node(d) => self.g.prim(Prim::Mul, &[adj, d], span)?,
                        };
                        let term = self.sum_to(Term { guard, value }, &space, *a, span)?;
                        terms.entry(*a).or_default().push(term);
                    }
                }
                Expr::Reduce {
                    op,
                    indices,
                    mask,
                    body,
                } => {
                    if !self.is_active(body) {
                        continue;
                    }
                    let value = self.reduce_vjp(op, &indices, mask, body, n, adj, span)?;
                    let g = match mask {
                        Some(m) => self.and(guard, m, span)?,
                        None => guard,
                    };
                    // The term lives on the reduction's iteration space; a body that does not depend on
                    // some reduced index was used once per value of it.
                    let mut space = space;
                    space.extend(indices.iter().copied());
                    let term = self.sum_to(Term { guard: g, value }, &space, body, span)?;
                    terms.entry(body).or_default().push(term);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn and(&mut self, guard: Option<NodeId>, c: NodeId, span: Span) -> R<Option<NodeId>> {
        Ok(Some(match guard {
            None => c,
            Some(g) => self.g.prim(Prim::And, &[g, c], span)?,
        }))
    }

    /// `select(guard, value, 0)`, or the value itself when unguarded.
    fn guarded(&mut self, guard: Option<NodeId>, value: NodeId, span: Span) -> R<NodeId> {
        match guard {
            None => Ok(value),
            Some(g) => {
                let zero = self.g.float(0.0, span)?;
                self.g.prim(Prim::Select, &[g, value, zero], span)
            }
        }
    }

    /// One term from several: their sum, under one guard when all share it, else each under its own.
    fn combine(&mut self, ts: &[Term], span: Span) -> R<Term> {
        if ts.iter().all(|t| t.guard == ts[0].guard) {
            let values: Vec<NodeId> = ts.iter().map(|t| t.value).collect();
            return Ok(Term {
                guard: ts[0].guard,
                value: self.sum_terms(&values, span)?,
            });
        }
        let mut values = Vec::new();
        let mut any: Option<NodeId> = Some(self.g.add(Expr::Bool(false), Scalar::Bool, span)?);
        for t in ts {
            values.push(self.guarded(t.guard, t.value, span)?);
            any = match (any, t.guard) {
                (_, None) | (None, _) => None,
                (Some(a), Some(g)) => Some(self.g.prim(Prim::Or, &[a, g], span)?),
            };
        }
        Ok(Term {
            guard: any,
            value: self.sum_terms(&values, span)?,
        })
    }

    fn sum_terms(&mut self, ts: &[NodeId], span: Span) -> R<NodeId> {
        let mut acc = ts[0];
        for t in &ts[1..] {
            acc = self.g.prim(Prim::Add, &[acc, *t], span)?;
        }
        Ok(acc)
    }

    /// Sums `term`, an adjoint over the index space `space`, over the indices of `space` that `target`
    /// lacks (the adjoint of a broadcast). The term itself may be invariant in them: it is still summed.
    /// The guard becomes the sum's mask.
    fn sum_to(&mut self, term: Term, space: &BTreeSet<IndexId>, target: NodeId, span: Span) -> R<Term> {
        let want: BTreeSet<IndexId> = self.g.node(target).free.iter().copied().collect();
        let extra: Vec<IndexId> = space.difference(&want).copied().collect();
        if extra.is_empty() {
            return Ok(term);
        }
        let value = self.g.add(
            Expr::Reduce {
                op: ReduceOp::Sum,
                indices: extra.into(),
                mask: term.guard,
                body: term.value,
            },
            Scalar::Float,
            span,
        )?;
        Ok(Term { guard: None, value })
    }

    /// The adjoint of a reduction's body, given the adjoint `adj` of the reduction `out`.
    #[allow(clippy::too_many_arguments)]
    fn reduce_vjp(
        &mut self,
        op: ReduceOp,
        indices: &[IndexId],
        mask: Option<NodeId>,
        body: NodeId,
        out: NodeId,
        adj: NodeId,
        span: Span,
    ) -> R<NodeId> {
        let g = &mut self.g;
        let term = match op {
            ReduceOp::Sum => adj,
            ReduceOp::Mean => {
                let t = g.add(Expr::Bool(true), Scalar::Bool, span)?;
                let count = g.add(
                    Expr::Reduce {
                        op: ReduceOp::Count,
                        indices: indices.into(),
                        mask,
                        body: t,
                    },
                    Scalar::Int,
                    span,
                )?;
                let count = g.prim(Prim::ToFloat, &[count], span)?;
                g.prim(Prim::Div, &[adj, count], span)?
            }
            ReduceOp::LogSumExp => {
                let d = g.prim(Prim::Sub, &[body, out], span)?;
                let w = g.prim(Prim::Exp, &[d], span)?;
                g.prim(Prim::Mul, &[adj, w], span)?
            }
            ReduceOp::Prod => {
                let q = g.prim(Prim::Div, &[out, body], span)?;
                g.prim(Prim::Mul, &[adj, q], span)?
            }
            ReduceOp::Max | ReduceOp::Min => {
                let arg = if op == ReduceOp::Max {
                    ReduceOp::ArgMax
                } else {
                    ReduceOp::ArgMin
                };
                let best = g.add(
                    Expr::Reduce {
                        op: arg,
                        indices: indices.into(),
                        mask,
                        body,
                    },
                    Scalar::Int,
                    span,
                )?;
                let mut flat = g.add(Expr::Int(0), Scalar::Int, span)?;
                for i in indices {
                    let range = g.index(*i).range.clone();
                    let size = g.add(Expr::Size(range), Scalar::Int, span)?;
                    let scaled = g.prim(Prim::Mul, &[flat, size], span)?;
                    let iv = g.add(Expr::Index(*i), Scalar::Int, span)?;
                    flat = g.prim(Prim::Add, &[scaled, iv], span)?;
                }
                let hit = g.prim(Prim::Eq, &[flat, best], span)?;
                let zero = g.float(0.0, span)?;
                return g.prim(Prim::Select, &[hit, adj, zero], span);
            }
            ReduceOp::Count | ReduceOp::ArgMax | ReduceOp::ArgMin => unreachable!("inactive reductions"),
        };
        Ok(term)
    }

    /// Builds the adjoint of a tensor (shape `shape`) from its contributions: fresh head indices and a body.
    fn assemble(&mut self, tensor: TensorRef, shape: &[Dim], span: Span) -> R<Option<(Vec<IndexId>, NodeId)>> {
        let Some(cs) = self.contributions.remove(&tensor) else {
            return Ok(None);
        };
        let head: Vec<IndexId> = shape.iter().map(|d| self.g.add_index("t", d.clone(), span)).collect();
        let head_nodes: Vec<NodeId> = head
            .iter()
            .map(|i| self.g.add(Expr::Index(*i), Scalar::Int, span))
            .collect::<R<_>>()?;
        let mut terms = Vec::new();
        for c in cs {
            let mut free: BTreeSet<IndexId> = self.g.node(c.adjoint).free.iter().copied().collect();
            for s in &c.subs {
                free.extend(self.g.node(*s).free.iter().copied());
            }
            // Resolve bare-index subscripts by substitution; keep the rest as equality conditions.
            let mut map: HashMap<IndexId, NodeId> = HashMap::default();
            let mut conditions = Vec::new();
            // A shifted index (`b[i - B]`, `x[i + 1]`) is inverted: i = t + B, inside i's range.
            let mut shifted: Vec<(IndexId, NodeId)> = Vec::new();
            for (p, s) in c.subs.iter().enumerate() {
                match self.g.node(*s).expr.clone() {
                    Expr::Index(v) if free.contains(&v) && !map.contains_key(&v) => {
                        map.insert(v, head_nodes[p]);
                    }
                    Expr::Prim { prim, args } if matches!(prim, Prim::Add | Prim::Sub) => {
                        let unmapped = |g: &Function, n: NodeId| match g.node(n).expr {
                            Expr::Index(v) if free.contains(&v) && !map.contains_key(&v) => Some(v),
                            _ => None,
                        };
                        // (the index, the offset, whether the index is subtracted from it)
                        let shift = match (prim, unmapped(&self.g, args[0]), unmapped(&self.g, args[1])) {
                            (Prim::Sub, Some(v), _) => Some((v, args[1], false)),
                            (Prim::Add, Some(v), _) => Some((v, args[1], true)),
                            (Prim::Add, None, Some(v)) => Some((v, args[0], true)),
                            _ => None,
                        };
                        match shift.filter(|(v, k, _)| !self.g.node(*k).free.contains(v)) {
                            // i - k = t: i = t + k; i + k = t: i = t - k.
                            Some((v, k, added)) => {
                                let op = if added { Prim::Sub } else { Prim::Add };
                                let at = self.g.prim(op, &[head_nodes[p], k], span)?;
                                map.insert(v, at);
                                shifted.push((v, at));
                            }
                            None => conditions.push(p),
                        }
                    }
                    _ => conditions.push(p),
                }
            }
            let body = self.g.subst(c.adjoint, &map)?;
            let mut cond: Option<NodeId> = None;
            for (v, at) in shifted {
                let zero = self.g.add(Expr::Int(0), Scalar::Int, span)?;
                let size = self
                    .g
                    .add(Expr::Size(self.g.index(v).range.clone()), Scalar::Int, span)?;
                let above = self.g.prim(Prim::Ge, &[at, zero], span)?;
                let below = self.g.prim(Prim::Lt, &[at, size], span)?;
                let inside = self.g.prim(Prim::And, &[above, below], span)?;
                cond = self.and(cond, inside, span)?;
            }
            // An index that ranges over another extent than the axis it was substituted by (a read under
            // a guard, `if i < B then a[i] …` with i over 2B) contributes only inside its own range.
            for (v, at) in &map {
                if !matches!(self.g.node(*at).expr, Expr::Index(_)) {
                    continue; // a shifted index, bounded above
                }
                let range = self.g.index(*v).range.clone();
                let axis = self.g.node(*at).free.first().map(|h| self.g.index(*h).range.clone());
                if axis.is_some_and(|a| a != range) {
                    let size = self.g.add(Expr::Size(range), Scalar::Int, span)?;
                    let inside = self.g.prim(Prim::Lt, &[*at, size], span)?;
                    cond = self.and(cond, inside, span)?;
                }
            }
            for p in conditions {
                let s = self.g.subst(c.subs[p], &map)?;
                let eq = self.g.prim(Prim::Eq, &[s, head_nodes[p]], span)?;
                cond = self.and(cond, eq, span)?;
            }
            let remaining: Vec<IndexId> = free.iter().filter(|v| !map.contains_key(v)).copied().collect();
            let term = if remaining.is_empty() {
                match cond {
                    None => body,
                    Some(c) => {
                        let zero = self.g.float(0.0, span)?;
                        self.g.prim(Prim::Select, &[c, body, zero], span)?
                    }
                }
            } else {
                self.g.add(
                    Expr::Reduce {
                        op: ReduceOp::Sum,
                        indices: remaining.into(),
                        mask: cond,
                        body,
                    },
                    Scalar::Float,
                    span,
                )?
            };
            terms.push(term);
        }
        let body = self.sum_terms(&terms, span)?;
        Ok(Some((head, body)))
    }
}

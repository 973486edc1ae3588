//! The fusion decision: which reductions are materialized as tensors of their own.
//!
//! Every reduction that is not the root of its tensor's element is hoisted into a tensor over its free
//! indices, computed once per point and read back with a load. When its free indices are a strict subset
//! of the indices around it (the head of its tensor plus the indices of enclosing reductions), this saves
//! recomputing it for every value of the others; otherwise it costs nothing in work, lets the reduction
//! run in parallel over its own points, and lets the loss and its gradient share it. Elementwise work
//! stays fused inline. Hoisted reductions are keyed by their body with canonical
//! head indices, so the same reduction hoisted from two places (the loss and its gradient, say) is one
//! tensor, and so is a two-index reduction and its transpose. A reduction under a lazy operand (a `select` branch, the right side of `&&`/`||`) is hoisted
//! only if every subscript inside it is statically in range, so hoisting never adds an out-of-range read.

use std::collections::{BTreeSet, HashMap};

use crate::ir::{Dim, Expr, Function, IndexId, NodeId, Role, Scalar, TensorDef, TensorId, TensorRef, TooDeep};
use crate::prims::Prim;

type R<T> = Result<T, TooDeep>;

/// Rebuilds `src` with invariant reductions materialized.
pub fn materialize(src: &Function) -> R<Function> {
    let mut h = Hoist {
        src,
        dst: src.empty_like(),
        tensors: vec![None; src.tensors.len()],
        memo: HashMap::new(),
        canonical: HashMap::new(),
        hoisted: HashMap::new(),
        pending: Vec::new(),
    };
    for (k, t) in src.tensors.iter().enumerate() {
        let ctx: BTreeSet<IndexId> = t.indices.iter().copied().collect();
        let body = h.walk(t.body, &ctx, true, false)?;
        let pending = std::mem::take(&mut h.pending);
        for p in pending {
            h.dst.add_tensor(p);
        }
        let id = h.dst.add_tensor(TensorDef { body, ..t.clone() });
        h.tensors[k] = Some(id);
        // A reduction equal to this tensor's element (up to renaming its head) is read from it instead.
        if t.role == Role::Let && matches!(h.dst.node(body).expr, Expr::Reduce { .. }) {
            let head: Vec<IndexId> = t.indices.clone();
            if head.windows(2).all(|w| w[0] < w[1]) && h.dst.node(body).free.len() == head.len() {
                let canon = h.canonicalize(body, &head)?;
                h.hoisted.entry(canon.1).or_insert(id);
            }
        }
    }
    Ok(h.dst)
}

struct Hoist<'a> {
    src: &'a Function,
    dst: Function,
    tensors: Vec<Option<TensorId>>,
    memo: HashMap<(NodeId, Vec<IndexId>, bool, bool), NodeId>,
    canonical: HashMap<(Dim, usize), IndexId>,
    hoisted: HashMap<NodeId, TensorId>,
    pending: Vec<TensorDef>,
}

impl Hoist<'_> {
    fn walk(&mut self, n: NodeId, ctx: &BTreeSet<IndexId>, root: bool, lazy: bool) -> R<NodeId> {
        let key = (n, ctx.iter().copied().collect::<Vec<_>>(), root, lazy);
        if let Some(m) = self.memo.get(&key) {
            return Ok(*m);
        }
        let node = self.src.node(n).clone();
        let span = self.src.span(n);
        let free: BTreeSet<IndexId> = node.free.iter().copied().collect();
        let out = match node.expr {
            Expr::Reduce { .. } if !root && free.is_subset(ctx) && (!lazy || self.safe(n)) => self.hoist(n)?,
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => {
                let mut inner = ctx.clone();
                inner.extend(indices.iter().copied());
                let mask = mask.map(|m| self.walk(m, &inner, false, lazy)).transpose()?;
                let body = self.walk(body, &inner, false, lazy)?;
                self.dst.add(
                    Expr::Reduce {
                        op,
                        indices,
                        mask,
                        body,
                    },
                    node.scalar,
                    span,
                )?
            }
            Expr::Prim { prim, args } => {
                let mut out = Vec::new();
                for (k, a) in args.iter().enumerate() {
                    let lazy_arg = match prim {
                        Prim::Select => k > 0,
                        Prim::And | Prim::Or => k > 0,
                        _ => false,
                    };
                    out.push(self.walk(*a, ctx, false, lazy || lazy_arg)?);
                }
                self.dst.add(Expr::Prim { prim, args: out.into() }, node.scalar, span)?
            }
            Expr::Load { tensor, subs } => {
                let mut out = Vec::new();
                for s in subs.iter() {
                    out.push(self.walk(*s, ctx, false, lazy)?);
                }
                let tensor = match tensor {
                    TensorRef::Def(t) => TensorRef::Def(self.tensors[t.index()].expect("earlier tensor")),
                    input => input,
                };
                self.dst.add(
                    Expr::Load {
                        tensor,
                        subs: out.into(),
                    },
                    node.scalar,
                    span,
                )?
            }
            leaf => self.dst.add(leaf, node.scalar, span)?,
        };
        self.memo.insert(key, out);
        Ok(out)
    }

    /// Renames the free indices `free` (sorted) of `node` to canonical head indices, one per (range,
    /// position); returns the head and the renamed node.
    fn canonicalize(&mut self, node: NodeId, free: &[IndexId]) -> R<(Vec<IndexId>, NodeId)> {
        let span = self.dst.span(node);
        let mut map = HashMap::new();
        let mut head = Vec::new();
        for (pos, v) in free.iter().enumerate() {
            let range = self.dst.index(*v).range.clone();
            let c = match self.canonical.get(&(range.clone(), pos)) {
                Some(c) => *c,
                None => {
                    let c = self.dst.add_index(format!("h{pos}"), range.clone(), span);
                    self.canonical.insert((range, pos), c);
                    c
                }
            };
            head.push(c);
            map.insert(*v, self.dst.add(Expr::Index(c), Scalar::Int, span)?);
        }
        Ok((head, self.dst.subst(node, &map)?))
    }

    /// Every subscript under `n` is a bare index or a bounded label: reading it can never fail.
    fn safe(&self, n: NodeId) -> bool {
        self.src
            .reachable(&[n])
            .into_iter()
            .all(|m| match &self.src.node(m).expr {
                Expr::Load { subs, .. } => subs.iter().all(|s| match &self.src.node(*s).expr {
                    Expr::Index(_) => true,
                    Expr::Load {
                        tensor: TensorRef::Input(i),
                        ..
                    } => self.src.inputs[*i as usize].bound.is_some(),
                    _ => false,
                }),
                _ => true,
            })
    }

    /// Materializes reduction `n` as a tensor over its free indices; returns the load that replaces it.
    fn hoist(&mut self, n: NodeId) -> R<NodeId> {
        let span = self.src.span(n);
        let free: Vec<IndexId> = self.src.node(n).free.to_vec();
        let own: BTreeSet<IndexId> = free.iter().copied().collect();
        let inner = self.walk(n, &own, true, false)?;
        let (head, body) = self.canonicalize(inner, &free)?;
        // The transpose of a reduction already hoisted over two indices of one range (`sum[d] b[i, d] *
        // a[j, d]` after `sum[d] a[i, d] * b[j, d]`) is read from it with the subscripts swapped.
        if let [x, y] = free[..]
            && self.dst.index(x).range == self.dst.index(y).range
        {
            let (_, swapped) = self.canonicalize(inner, &[y, x])?;
            let found = self
                .hoisted
                .iter()
                .find(|(b, _)| same_up_to_commuting(&self.dst, **b, swapped, SAME_BUDGET))
                .map(|(_, t)| *t);
            if let Some(t) = found
                && !self.hoisted.contains_key(&body)
            {
                let subs = [y, x]
                    .iter()
                    .map(|v| self.dst.add(Expr::Index(*v), Scalar::Int, span))
                    .collect::<R<Vec<NodeId>>>()?;
                let tensor = TensorRef::Def(t);
                return self.dst.add(
                    Expr::Load {
                        tensor,
                        subs: subs.into(),
                    },
                    self.src.node(n).scalar,
                    span,
                );
            }
        }
        let t = match self.hoisted.get(&body) {
            Some(t) => *t,
            None => {
                let id = TensorId((self.dst.tensors.len() + self.pending.len()) as u32);
                let scalar = self.dst.node(body).scalar;
                // r0, r1, …, skipping names already in use.
                let taken = |name: &str| {
                    self.src
                        .tensors
                        .iter()
                        .chain(&self.dst.tensors)
                        .chain(&self.pending)
                        .any(|t| t.name == name)
                };
                let name = (self.hoisted.len()..)
                    .map(|k| format!("r{k}"))
                    .find(|n| !taken(n))
                    .expect("an unused name");
                self.pending.push(TensorDef {
                    name,
                    indices: head,
                    body,
                    scalar,
                    role: Role::Let,
                    span,
                });
                self.hoisted.insert(body, id);
                id
            }
        };
        let subs: Vec<NodeId> = free
            .iter()
            .map(|v| self.dst.add(Expr::Index(*v), Scalar::Int, span))
            .collect::<R<_>>()?;
        self.dst.add(
            Expr::Load {
                tensor: TensorRef::Def(t),
                subs: subs.into(),
            },
            self.src.node(n).scalar,
            span,
        )
    }
}

/// How many node pairs [`same_up_to_commuting`] may compare (it branches at every commutative node).
const SAME_BUDGET: usize = 256;

/// Whether two nodes compute the same value by the same operations, up to the order of the operands of
/// exactly commutative primitives (`+`, `*`, `==`, `!=`) and the names of reduction indices, within a
/// budget of compared pairs.
fn same_up_to_commuting(f: &Function, a: NodeId, b: NodeId, budget: usize) -> bool {
    struct Cmp<'f> {
        f: &'f Function,
        budget: usize,
        /// Reduction indices bound in step by the two sides.
        bound: Vec<(IndexId, IndexId)>,
    }
    impl Cmp<'_> {
        fn all(&mut self, p: &[NodeId], q: &[NodeId]) -> bool {
            p.len() == q.len() && p.iter().zip(q).all(|(u, v)| self.go(*u, *v))
        }
        fn go(&mut self, a: NodeId, b: NodeId) -> bool {
            if a == b && self.bound.is_empty() {
                return true;
            }
            if self.budget == 0 {
                return false;
            }
            self.budget -= 1;
            let f = self.f;
            match (&f.node(a).expr, &f.node(b).expr) {
                (Expr::Index(u), Expr::Index(v)) => {
                    u == v && !self.bound.iter().any(|(x, y)| x == u || y == v) || self.bound.contains(&(*u, *v))
                }
                (Expr::Prim { prim: p, args: u }, Expr::Prim { prim: q, args: v }) if p == q => {
                    self.all(u, v)
                        || (matches!(p, Prim::Add | Prim::Mul | Prim::Eq | Prim::Ne)
                            && u.len() == 2
                            && self.go(u[0], v[1])
                            && self.go(u[1], v[0]))
                }
                (Expr::Load { tensor: s, subs: u }, Expr::Load { tensor: t, subs: v }) => s == t && self.all(u, v),
                (
                    Expr::Reduce {
                        op: o,
                        indices: i,
                        mask: m,
                        body: u,
                    },
                    Expr::Reduce {
                        op: p,
                        indices: j,
                        mask: n,
                        body: v,
                    },
                ) => {
                    if o != p
                        || i.len() != j.len()
                        || i.iter()
                            .zip(j.iter())
                            .any(|(x, y)| f.index(*x).range != f.index(*y).range)
                    {
                        return false;
                    }
                    let depth = self.bound.len();
                    self.bound.extend(i.iter().copied().zip(j.iter().copied()));
                    let same = match (m, n) {
                        (None, None) => true,
                        (Some(m), Some(n)) => self.go(*m, *n),
                        _ => false,
                    } && self.go(*u, *v);
                    self.bound.truncate(depth);
                    same
                }
                (x, y) => x == y,
            }
        }
    }
    Cmp {
        f,
        budget,
        bound: Vec::new(),
    }
    .go(a, b)
}

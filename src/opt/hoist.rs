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
//! only if every subscript inside it is statically in range, or if it is one already hoisted, so hoisting
//! never adds an out-of-range read.
//!
//! Matrix products: a two-index tensor `out[p, q] = sum[k | m] f1 * f2 * …` whose factors each depend only
//! on `p, k` or only on `k, q`, each side reading a float matrix over its indices (and whose mask, if
//! any, depends only on `p, k`) gets its two operands materialized,
//! `L = select(m, ∏ first factors, 0)` and `R = ∏ second factors`, and becomes
//! `sum[k | L != 0] L * R` (unmasked when there was no mask): a plain contraction of two tensors, which a
//! backend runs as a GEMM ([`crate::backend::loops::Contraction`]). An operand that already is one float
//! load at bare indices is read in place. Each operand is stored in the order its first matrix factor
//! is read, so computing it streams. The result is the same wherever the factors are finite; a zero `L`
//! (masked out, or a zero adjoint) contributes nothing, as autodiff's guards intend.
//!
//! Gathered terms: a reduction over one index `i` whose terms read a matrix at row `i` and a computed or
//! constant column (`mean[i] r0[i] - s[i, y[i]]`, the label's logit) gets its terms materialized as `terms[i]`, so
//! the gather runs in the group that streams the matrix's rows (while the row is in cache) instead of
//! missing the cache once per row afterwards.
//!
//! Invariant weights: a transcendental over two indices or more inside a nest over more indices (the
//! pairwise weight of a gradient row, `sum[j] exp(-d[i, j]) * (x[i, c] - z[j, c])`) is materialized over its
//! own indices like a reduction, so it is computed once per pair instead of once per pair and column.
//!
//! Stored elements: a costly elementwise expression (a transcendental at its root) that an earlier tensor's
//! element computes, up to renaming its head, is read back from that tensor (`sigmoid(L (p - 0.5))` in
//! AnyLoss's gradient reads `a`).

use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeSet;

use crate::ir::{Dim, Expr, Function, IndexId, NodeId, Role, Scalar, TensorDef, TensorId, TensorRef, TooDeep};
use crate::prims::Prim;

type R<T> = Result<T, TooDeep>;

/// Rebuilds `src` with invariant reductions materialized.
pub fn materialize(src: &Function) -> R<Function> {
    let mut h = Hoist {
        src,
        dst: src.empty_like(),
        tensors: vec![None; src.tensors.len()],
        memo: HashMap::default(),
        canonical: HashMap::default(),
        hoisted: HashMap::default(),
        elements: HashMap::default(),
        pending: Vec::new(),
    };
    for (k, t) in src.tensors.iter().enumerate() {
        let ctx: BTreeSet<IndexId> = t.indices.iter().copied().collect();
        let body = h.walk(t.body, &ctx, true, false)?;
        let body = h.split_product(&t.indices, body, &t.name)?;
        let body = h.gathered_terms(body, &t.name)?;
        let body = h.mean_as_sum(&t.indices, body, &t.name)?;
        let pending = std::mem::take(&mut h.pending);
        for p in pending {
            h.dst.add_tensor(p);
        }
        let id = h.dst.add_tensor(TensorDef { body, ..t.clone() });
        h.tensors[k] = Some(id);
        // A costly elementwise element (a transcendental at its root, every head index used) is read
        // from this tensor wherever a later element computes it again.
        if !t.indices.is_empty()
            && !matches!(h.dst.node(body).expr, Expr::Reduce { .. })
            && h.dst.node(body).free.len() == t.indices.len()
            && h.costly(body)
        {
            let canon = h.canonicalize(body, &t.indices)?;
            h.elements.entry(canon.1).or_insert(id);
        }
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
    /// Costly elementwise tensor elements, canonicalized over their heads.
    elements: HashMap<NodeId, TensorId>,
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
            Expr::Reduce { .. }
                if !root && free.is_subset(ctx) && (!lazy || self.safe(n) || self.hoisted_already(n)?) =>
            {
                self.hoist(n)?
            }
            // A transcendental over two indices or more, inside a nest over more (a pairwise weight
            // `exp(-d[i, j])` in the gradient row `g[i, c] = sum[j] w[i, j] * (x[i, c] - z[j, c])`): computed
            // once per point of its own indices instead of once per element of the nest.
            Expr::Prim { prim, .. }
                if !root
                    && prim.costly()
                    && node.scalar == Scalar::Float
                    && free.len() >= 2
                    && free.is_subset(ctx)
                    && free.len() < ctx.len()
                    && (!lazy || self.safe(n)) =>
            {
                self.hoist(n)?
            }
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
                let out = self.dst.add(Expr::Prim { prim, args: out.into() }, node.scalar, span)?;
                match self.stored_element(out, root)? {
                    Some(load) => load,
                    None => out,
                }
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
            Expr::Table { at, values } => {
                let at = self.walk(at, ctx, false, lazy)?;
                self.dst.add(Expr::Table { at, values }, node.scalar, span)?
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
        let mut map = HashMap::default();
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

    /// Whether computing `n` costs more than reading it back: it is a transcendental, or a division whose
    /// operands read more than one element (NT-Xent's gradient divides `r4[i, j] / (tau * (nb[i] * nb[j]))`
    /// again, which is `bb[i, j]`; `x[i] / t` stays inline). Only a division's operands are walked.
    fn costly(&self, n: NodeId) -> bool {
        match self.dst.node(n).expr {
            Expr::Prim { prim: Prim::Div, .. } => {
                let reads = self.dst.reachable(&[n]);
                reads
                    .iter()
                    .filter(|r| matches!(self.dst.node(**r).expr, Expr::Load { .. }))
                    .count()
                    > 1
            }
            Expr::Prim { prim, .. } => prim.costly(),
            _ => false,
        }
    }

    /// A load of an earlier tensor whose element is `n` (a `dst` node inside an element, not its root),
    /// with its free indices in either order for two: `sigmoid(L * (p[t] - 0.5))` in AnyLoss's gradient
    /// reads `a[t]`.
    fn stored_element(&mut self, n: NodeId, root: bool) -> R<Option<NodeId>> {
        let free = self.dst.node(n).free.to_vec();
        if root || self.elements.is_empty() || free.is_empty() || free.len() > 2 || !self.costly(n) {
            return Ok(None);
        }
        let span = self.dst.span(n);
        let mut orders = vec![free.clone()];
        if free.len() == 2 {
            orders.push(vec![free[1], free[0]]);
        }
        for order in orders {
            let (_, canon) = self.canonicalize(n, &order)?;
            let Some(t) = self.elements.get(&canon).copied() else {
                continue;
            };
            let scalar = self.dst.node(n).scalar;
            return self.load_at(t, &order, scalar, span).map(Some);
        }
        Ok(None)
    }

    /// Whether a tensor of this name exists.
    fn taken(&self, name: &str) -> bool {
        self.src
            .tensors
            .iter()
            .chain(&self.dst.tensors)
            .chain(&self.pending)
            .any(|t| t.name == name)
    }

    /// `base`, or `base1`, `base2`, … : the first name no tensor has.
    fn fresh(&self, base: &str) -> String {
        [base.to_string()]
            .into_iter()
            .chain((1..).map(|k| format!("{base}{k}")))
            .find(|n| !self.taken(n))
            .expect("an unused name")
    }

    /// Adds a `let` tensor after the pending ones; returns its id.
    fn push(&mut self, name: String, indices: Vec<IndexId>, body: NodeId, span: crate::diag::Span) -> TensorId {
        let id = TensorId((self.dst.tensors.len() + self.pending.len()) as u32);
        let scalar = self.dst.node(body).scalar;
        self.pending.push(TensorDef {
            name,
            indices,
            body,
            scalar,
            role: Role::Let,
            span,
        });
        id
    }

    /// The shape of an input or of a tensor of `dst`, added or pending.
    fn shape(&self, r: TensorRef) -> Vec<Dim> {
        match r {
            TensorRef::Input(i) => self.dst.inputs[i as usize].shape.clone(),
            TensorRef::Def(t) => {
                let def = match t.index().checked_sub(self.dst.tensors.len()) {
                    None => &self.dst.tensors[t.index()],
                    Some(p) => &self.pending[p],
                };
                def.indices.iter().map(|i| self.dst.index(*i).range.clone()).collect()
            }
        }
    }

    /// The gathered-terms rewrite of the module doc for a tensor with element `body` (a `dst` node): when
    /// it is an unmasked reduction over one index `i` whose terms depend on `i` alone and read a matrix at
    /// row `i` and a computed or constant column (`s[i, y[i]]`), pushes `terms[i]` = the term and returns the reduction
    /// of its loads; otherwise returns `body`.
    fn gathered_terms(&mut self, body: NodeId, name: &str) -> R<NodeId> {
        let Some((op, i, term)) = self.unmasked_over_one(body) else {
            return Ok(body);
        };
        let &[free] = &self.dst.node(term).free[..] else {
            return Ok(body);
        };
        let gathers = free == i
            && self
                .dst
                .reachable(&[term])
                .iter()
                .any(|n| match &self.dst.node(*n).expr {
                    Expr::Load { subs, .. } => {
                        subs.len() >= 2
                            && matches!(self.dst.node(subs[0]).expr, Expr::Index(first) if first == i)
                            && subs[1..]
                                .iter()
                                .any(|s| !matches!(self.dst.node(*s).expr, Expr::Index(_)))
                    }
                    _ => false,
                });
        if !gathers {
            return Ok(body);
        }
        let span = self.dst.span(body);
        let terms = self.fresh(&format!("{name}_terms"));
        let scalar = self.dst.node(term).scalar;
        let t = self.push(terms, vec![i], term, span);
        let load = self.load_at(t, &[i], scalar, span)?;
        let reduced = Expr::Reduce {
            op,
            indices: [i].into(),
            mask: None,
            body: load,
        };
        self.dst.add(reduced, self.dst.node(body).scalar, span)
    }

    /// `n` as an unmasked reduction over one index: (its op, the index, the reduced term).
    fn unmasked_over_one(&self, n: NodeId) -> Option<(crate::ir::ReduceOp, IndexId, NodeId)> {
        match &self.dst.node(n).expr {
            Expr::Reduce {
                op,
                indices,
                mask: None,
                body,
            } if indices.len() == 1 => Some((*op, indices[0], *body)),
            _ => None,
        }
    }

    /// A scalar that is an unmasked mean over one index, `mean[i] e`, as `s / |i|` with `s = sum[i] e` a
    /// tensor of its own: a code generator runs a rank-0 sum in parallel parts, next to the sibling sums over
    /// the same index (AnyLoss's TP, FP and FN written as means, a loss averaged over its samples).
    fn mean_as_sum(&mut self, head: &[IndexId], body: NodeId, name: &str) -> R<NodeId> {
        let Some((crate::ir::ReduceOp::Mean, i, term)) = self.unmasked_over_one(body) else {
            return Ok(body);
        };
        if !head.is_empty() || self.dst.node(body).scalar != Scalar::Float {
            return Ok(body);
        }
        let span = self.dst.span(body);
        let sum_name = self.fresh(&format!("{name}_sum"));
        let sum = self.dst.add_sum(i, None, term, span)?;
        let t = self.push(sum_name, Vec::new(), sum, span);
        let total = self.load_at(t, &[], Scalar::Float, span)?;
        let size = self
            .dst
            .add(Expr::Size(self.dst.index(i).range.clone()), Scalar::Int, span)?;
        let count = self.dst.prim(Prim::ToFloat, &[size], span)?;
        self.dst.prim(Prim::Div, &[total, count], span)
    }

    /// The matrix-product rewrite of the module doc for a tensor over `head` with element `body` (a `dst`
    /// node): pushes the operand tensors it materializes and returns the new element, or `body` when the
    /// element is not such a product or already reads two plain operands.
    fn split_product(&mut self, head: &[IndexId], body: NodeId, name: &str) -> R<NodeId> {
        let &[p, q] = head else {
            return Ok(body);
        };
        let Some((k, mask, term)) = self.dst.single_sum(body) else {
            return Ok(body);
        };
        let factors = self.dst.factors(term);
        let within = |n: NodeId, set: [IndexId; 2]| self.dst.node(n).free.iter().all(|i| set.contains(i));
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for n in factors {
            if within(n, [p, k]) {
                left.push(n);
            } else if within(n, [k, q]) {
                right.push(n);
            } else {
                return Ok(body);
            }
        }
        // Each side reads a float matrix over its two indices (a side that is only an index function,
        // such as the selector `[k == q + 1]`, is a gather, not a product).
        let reads_matrix = |side: &[NodeId], free: IndexId| {
            self.dst.reachable(side).iter().any(|n| {
                let node = self.dst.node(*n);
                matches!(node.expr, Expr::Load { .. })
                    && node.scalar == Scalar::Float
                    && node.free.contains(&free)
                    && node.free.contains(&k)
            })
        };
        if !reads_matrix(&left, p) || !reads_matrix(&right, q) || mask.is_some_and(|m| !within(m, [p, k])) {
            return Ok(body);
        }
        // The subscript order of a float matrix load at the bare indices `free` and `k`, either way round.
        let matrix = |n: NodeId, free: IndexId| -> Option<[IndexId; 2]> {
            let Expr::Load { tensor, subs } = &self.dst.node(n).expr else {
                return None;
            };
            let order = match subs[..] {
                [a, b] => match (&self.dst.node(a).expr, &self.dst.node(b).expr) {
                    (Expr::Index(a), Expr::Index(b)) if [*a, *b] == [free, k] || [*a, *b] == [k, free] => [*a, *b],
                    _ => return None,
                },
                _ => return None,
            };
            let ranges = order.map(|i| self.dst.index(i).range.clone());
            (self.dst.node(n).scalar == Scalar::Float && self.shape(*tensor)[..] == ranges[..]).then_some(order)
        };
        let plain_left = matches!(left[..], [n] if matrix(n, p).is_some() && mask.is_none_or(|m| self.dst.nonzero_test(m) == Some(n)));
        let plain_right = matches!(right[..], [n] if matrix(n, q).is_some());
        if plain_left && plain_right {
            return Ok(body);
        }
        let left_order = left.iter().find_map(|n| matrix(*n, p)).unwrap_or([p, k]);
        let right_order = right.iter().find_map(|n| matrix(*n, q)).unwrap_or([k, q]);
        let span = self.dst.span(body);
        // Each side: its value (one plain load, or a load of the tensor it is materialized in).
        let operand = |h: &mut Self, side: &[NodeId], order: [IndexId; 2], mask: Option<NodeId>, plain, suffix| {
            if plain {
                return Ok(side[0]);
            }
            let mut value = side[0];
            for n in &side[1..] {
                value = h.dst.prim(Prim::Mul, &[value, *n], span)?;
            }
            if let Some(m) = mask {
                let zero = h.dst.float(0.0, span)?;
                value = h.dst.prim(Prim::Select, &[m, value, zero], span)?;
            }
            let (head, canon) = h.canonicalize(value, &order)?;
            // The same operand up to the order of commuting operands (the two `aa_adj` products of
            // NT-Xent's gradient, one per side of the symmetric similarity) is one tensor.
            let same = h
                .hoisted
                .iter()
                .filter(|(b, _)| same_up_to_commuting(&h.dst, **b, canon, SAME_BUDGET))
                .map(|(_, t)| *t)
                .min();
            let t = match same {
                Some(t) => t,
                None => {
                    let t = h.push(format!("{name}_{suffix}"), head, canon, span);
                    h.hoisted.insert(canon, t);
                    t
                }
            };
            h.load_at(t, &order, Scalar::Float, span)
        };
        let l = operand(self, &left, left_order, mask, plain_left, "lhs")?;
        let r = operand(self, &right, right_order, None, plain_right, "rhs")?;
        let mask = match mask {
            Some(_) => {
                let zero = self.dst.float(0.0, span)?;
                Some(self.dst.prim(Prim::Ne, &[l, zero], span)?)
            }
            None => None,
        };
        let term = self.dst.prim(Prim::Mul, &[l, r], span)?;
        self.dst.add_sum(k, mask, term, span)
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

    /// Whether reduction `n` is one already materialized (read outside any lazy operand, so reading it
    /// under one adds no read: a softmax's logsumexp that its sum-to-one rewrite keeps as `0 * lse`).
    fn hoisted_already(&mut self, n: NodeId) -> R<bool> {
        let (_, _, _, body) = self.canonical(n)?;
        Ok(self.hoisted.contains_key(&body))
    }

    /// Reduction `n` rebuilt over its own free indices, and with canonical head indices: (its free
    /// indices, the rebuilt node, the canonical head, the canonical body).
    fn canonical(&mut self, n: NodeId) -> R<(Vec<IndexId>, NodeId, Vec<IndexId>, NodeId)> {
        let free: Vec<IndexId> = self.src.node(n).free.to_vec();
        let own: BTreeSet<IndexId> = free.iter().copied().collect();
        let inner = self.walk(n, &own, true, false)?;
        let (head, body) = self.canonicalize(inner, &free)?;
        Ok((free, inner, head, body))
    }

    /// Materializes reduction `n` as a tensor over its free indices; returns the load that replaces it.
    fn hoist(&mut self, n: NodeId) -> R<NodeId> {
        let span = self.src.span(n);
        let (free, inner, head, body) = self.canonical(n)?;
        // The transpose of a reduction already hoisted over two indices (`sum[d] b[i, d] * a[j, d]` after
        // `sum[d] a[i, d] * b[j, d]`, of one range or two) is read from it with the subscripts swapped.
        if let [x, y] = free[..] {
            let (_, swapped) = self.canonicalize(inner, &[y, x])?;
            // The earliest such tensor (the map's order is arbitrary; the result must not be).
            let found = self
                .hoisted
                .iter()
                .filter(|(b, _)| same_up_to_commuting(&self.dst, **b, swapped, SAME_BUDGET))
                .map(|(_, t)| *t)
                .min();
            if let Some(t) = found
                && !self.hoisted.contains_key(&body)
            {
                return self.load_at(t, &[y, x], self.src.node(n).scalar, span);
            }
        }
        let t = match self.hoisted.get(&body) {
            Some(t) => *t,
            None => {
                // r0, r1, …, skipping names already in use.
                let name = (self.hoisted.len()..)
                    .map(|k| format!("r{k}"))
                    .find(|n| !self.taken(n))
                    .expect("an unused name");
                let product = self.split_product(&head, body, &name)?;
                let id = self.push(name, head, product, span);
                self.hoisted.insert(body, id);
                id
            }
        };
        self.load_at(t, &free, self.src.node(n).scalar, span)
    }

    /// The load `t[at…]` (bare indices) in `dst`.
    fn load_at(&mut self, t: TensorId, at: &[IndexId], scalar: Scalar, span: crate::diag::Span) -> R<NodeId> {
        let subs = at
            .iter()
            .map(|i| self.dst.add(Expr::Index(*i), Scalar::Int, span))
            .collect::<R<Vec<NodeId>>>()?;
        self.dst.add(
            Expr::Load {
                tensor: TensorRef::Def(t),
                subs: subs.into(),
            },
            scalar,
            span,
        )
    }
}

/// How many node pairs [`same_up_to_commuting`] may compare (it branches at every commutative node).
pub(crate) const SAME_BUDGET: usize = 256;

/// Whether two nodes compute the same value by the same operations, up to the order of the operands of
/// exactly commutative primitives (`+`, `*`, `==`, `!=`) and the names of reduction indices, within a
/// budget of compared pairs.
pub(crate) fn same_up_to_commuting(f: &Function, a: NodeId, b: NodeId, budget: usize) -> bool {
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

//! Rebuilds a function, applying directional rewrite rules as each node is re-created.
//!
//! Policy (after Cranelift's): a rule only ever makes code cheaper or numerically safer, never reorders
//! operands for its own sake, and never assumes values are finite unless its comment says so. Only tensors
//! that a result (loss, output, gradient) reaches are rebuilt, and only nodes they reach: rebuilding is also
//! dead-code removal and compaction.

use rustc_hash::FxHashMap as HashMap;

use super::hoist::{SAME_BUDGET, same_up_to_commuting};
use crate::diag::Span;
use crate::ir::{
    Dim, Expr, Function, IndexId, NodeId, ReduceOp, Role, Scalar, TensorDef, TensorId, TensorRef, TooDeep, Value,
};
use crate::prims::{Cost, Prim};

type R<T> = Result<T, TooDeep>;

/// One simplification round over the live part of `src`.
pub fn rebuild(src: &Function) -> R<Function> {
    rebuild_with(src, &std::collections::HashMap::new())
}

/// [`rebuild`], with hyperparameter nodes replaced by the given nodes of `src` (for specialisation).
pub fn rebuild_with(src: &Function, hypers: &std::collections::HashMap<u32, NodeId>) -> R<Function> {
    rebuild_inlining(src, hypers, vec![false; src.tensors.len()])
}

/// [`rebuild`], with `let` tensors computed where they are read instead of materialized:
/// - a cheap elementwise one (no reduction, no transcendental, at most 32 nodes) that one
///   elementwise tensor reads at its own head: `a_adj[t]` in `grad_p[t] = … a_adj[t] …` (AnyLoss) is one
///   buffer written and read back less, and no more work;
/// - a trivial one (a few additions and comparisons, its matrices read in its own index order) read at
///   bare indices anywhere: LDR-KL's margins, recomputed in two places for less than a store and two loads;
/// - one that is only gathered (every read picks an axis by a label, `z[i, y[i]]`; at most two reads):
///   computed at the few elements read instead of all of them, whatever it costs per element (Z-loss with
///   its standardised logits as a `let` of the whole matrix materialized N·C elements to read N;
///   `-log(p[i, y[i]])` of a softmax `let` p becomes the logsumexp form once inlined).
///
/// An inlined tensor is left dead for the next round to drop.
pub fn inline_lets(src: &Function) -> R<Function> {
    rebuild_inlining(
        src,
        &std::collections::HashMap::new(),
        inlinable(src).into_iter().map(|(any, _, _)| any).collect(),
    )
}

/// [`inline_lets`]' matrices built from smaller tensors, once more after it: a matrix that read one it
/// inlined may be one itself now (the adjoint `-(1 / N) q[t, k]` of a smoothed target `q`, whose row sum
/// then folds to a constant). None where there is none.
pub fn inline_broadcasts(src: &Function) -> R<Option<Function>> {
    let broadcast: Vec<bool> = inlinable(src).into_iter().map(|(_, _, b)| b).collect();
    if !broadcast.contains(&true) {
        return Ok(None);
    }
    rebuild_inlining(src, &std::collections::HashMap::new(), broadcast).map(Some)
}

/// The `let`s of a loss that are differentiated as if written inline: the gathered ones (see
/// [`inline_lets`]) and a sum of exponentials read once, under a `log`, at bare indices. So a derivative reads the one
/// element a gather picks instead of building a one-hot adjoint of a whole matrix, and `m + log(z)` with
/// `z = sum[k] exp(s - m)` meets its `logsumexp` rewrite, whose shift then cancels (no arg-max adjoint of
/// the row maximum). (Inlining every `let` read once made W7 and W8 slower: the optimizer's choice of
/// what to store is tuned to the `let`s as written.)
pub fn inline_for_derivative(src: &Function) -> R<Function> {
    rebuild_inlining(
        src,
        &std::collections::HashMap::new(),
        inlinable(src).into_iter().map(|(_, primal, _)| primal).collect(),
    )
}

/// The most nodes of a `let` element [`inline_lets`] computes at its one use.
const INLINE_NODES: usize = 32;

/// The most nodes of a `let` element [`inline_lets`] computes at each of several uses.
const TRIVIAL_NODES: usize = 12;

/// Which tensors [`inline_lets`] inlines, which [`inline_for_derivative`] does, and which of the first
/// are matrices built from smaller tensors ([`inline_broadcasts`]).
fn inlinable(f: &Function) -> Vec<(bool, bool, bool)> {
    let elementwise = |k: usize| {
        !f.reachable(&[f.tensors[k].body])
            .iter()
            .any(|n| matches!(f.node(*n).expr, Expr::Reduce { .. }))
    };
    // Whether a load in tensor `k`'s element reads its indices in the order of `k`'s head.
    let in_order = |k: usize, subs: &[NodeId]| {
        let t = &f.tensors[k];
        let at: Vec<usize> = subs
            .iter()
            .filter_map(|s| match f.node(*s).expr {
                Expr::Index(i) => t.indices.iter().position(|h| *h == i),
                _ => None,
            })
            .collect();
        at.windows(2).all(|w| w[0] <= w[1])
    };
    // A float element of a few additions, subtractions and comparisons that reads its matrices in its own
    // index order (no transpose, which its readers would read strided): cheaper to compute wherever it is
    // read than to store and load (LDR-KL's margins `[k != y[i]] + s[i, k] - s[i, y[i]]`).
    let trivial = |k: usize| {
        let t = &f.tensors[k];
        let nodes = f.reachable(&[t.body]);
        t.scalar == Scalar::Float
            && nodes.len() <= TRIVIAL_NODES
            && nodes.iter().all(|n| match &f.node(*n).expr {
                Expr::Reduce { .. } => false,
                Expr::Load { subs, .. } => in_order(k, subs),
                Expr::Prim { prim, .. } => prim.cost() == Cost::Trivial,
                _ => true,
            })
    };
    // A float matrix (or higher) built from smaller tensors (no load depends on all of its indices) whose
    // work along its last index is arithmetic (anything costly in it does not depend on that index: the
    // code generators compute it once per vector or row): a few operations per element wherever it is
    // read, where storing it writes and reads back four bytes per element (a smoothed target
    // `(1 - eps) [k == y[i]] + eps / C`, an [N, C] tensor from N labels).
    let broadcast = |k: usize, nodes: &[NodeId]| {
        let t = &f.tensors[k];
        let Some(last) = t.indices.last() else { return false };
        let whole = |load: NodeId| t.indices.iter().all(|h| f.node(load).free.contains(h));
        t.indices.len() >= 2
            && t.scalar == Scalar::Float
            && nodes.len() <= INLINE_NODES
            && nodes.iter().all(|n| match &f.node(*n).expr {
                Expr::Reduce { .. } => false,
                Expr::Load { subs, .. } => in_order(k, subs) && !whole(*n),
                Expr::Prim { prim, .. } => !prim.costly() || !f.node(*n).free.contains(last),
                _ => true,
            })
    };
    // Each tensor's readers, whether every load in them is at the reader's own head, and whether every
    // load is at bare indices.
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); f.tensors.len()];
    let mut at_head = vec![true; f.tensors.len()];
    let mut at_indices = vec![true; f.tensors.len()];
    let mut gathered = vec![true; f.tensors.len()];
    let mut loads = vec![0usize; f.tensors.len()];
    // Loads that are the argument of a `log`.
    let mut under_log = vec![0usize; f.tensors.len()];
    // Two loads (each negated or not) of different tensors at the same subscripts, added or subtracted.
    let mut side_by_side: Vec<(TensorId, TensorId)> = Vec::new();
    let load_of = |x: NodeId| match &f.node(unnegated(f, x).0).expr {
        Expr::Load {
            tensor: TensorRef::Def(t),
            subs,
        } => Some((*t, subs.clone())),
        _ => None,
    };
    for (r, reader) in f.tensors.iter().enumerate() {
        for n in f.reachable(&[reader.body]) {
            if let Some((Prim::Add | Prim::Sub, args)) = prim_of(f, n)
                && let (Some((t0, s0)), Some((t1, s1))) = (load_of(args[0]), load_of(args[1]))
                && t0 != t1
                && s0 == s1
            {
                side_by_side.push((t0, t1));
            }
            if let Some((Prim::Log, arg)) = prim_of(f, n)
                && let Expr::Load {
                    tensor: TensorRef::Def(t),
                    ..
                } = f.node(arg[0]).expr
            {
                under_log[t.index()] += 1;
            }
            let Expr::Load {
                tensor: TensorRef::Def(t),
                subs,
            } = &f.node(n).expr
            else {
                continue;
            };
            if !readers[t.index()].contains(&r) {
                readers[t.index()].push(r);
            }
            let own_head = f.at_indices(subs, &reader.indices);
            at_head[t.index()] &= own_head;
            at_indices[t.index()] &= subs.iter().all(|s| matches!(f.node(*s).expr, Expr::Index(_)));
            gathered[t.index()] &= subs.iter().any(|s| matches!(f.node(*s).expr, Expr::Load { .. }));
            loads[t.index()] += 1;
        }
    }
    // Two `let`s whose elements are row sums over one range (negated or not), each read once, added or
    // subtracted at the same subscripts (a cross-entropy and an entropy, `ce[i] - h[i]`): inlined before
    // differentiating, the two sums are one (`fuse_sums`), and so is their pass over the row.
    let row_sum = |t: TensorId| {
        let def = &f.tensors[t.index()];
        match f.single_sum(unnegated(f, def.body).0) {
            Some((k, None, _)) if def.role == Role::Let && loads[t.index()] == 1 => Some(f.index(k).range.clone()),
            _ => None,
        }
    };
    let mut paired = vec![false; f.tensors.len()];
    for (t0, t1) in side_by_side {
        if let (Some(r0), Some(r1)) = (row_sum(t0), row_sum(t1))
            && r0 == r1
        {
            paired[t0.index()] = true;
            paired[t1.index()] = true;
        }
    }
    (0..f.tensors.len())
        .map(|k| {
            let t = &f.tensors[k];
            let nodes = f.reachable(&[t.body]);
            let cheap = t.role == Role::Let
                && !t.indices.is_empty()
                && nodes.len() <= INLINE_NODES
                && nodes.iter().all(|n| match &f.node(*n).expr {
                    Expr::Reduce { .. } => false,
                    Expr::Prim { prim, .. } => !prim.costly(),
                    _ => true,
                });
            let gather = t.role == Role::Let
                && !t.indices.is_empty()
                && nodes.len() <= INLINE_NODES
                && (1..=2).contains(&loads[k])
                && gathered[k];
            let one_use = matches!(readers[k][..], [r] if r != k && elementwise(r)) && at_head[k];
            // A sum of exponentials (a softmax's normaliser) read once, under a `log`: inline, the two are
            // a logsumexp.
            let sum_of_exps = matches!(&f.node(t.body).expr,
                Expr::Reduce { op: ReduceOp::Sum, body, .. } if matches!(prim_of(f, *body), Some((Prim::Exp, _))));
            let read_once = t.role == Role::Let
                && !t.indices.is_empty()
                && nodes.len() <= INLINE_NODES
                && loads[k] == 1
                && under_log[k] == 1
                && at_indices[k]
                && sum_of_exps;
            // A probability (an exponential, or one over a normaliser: `exp(s) / sum[j] exp(s)`) read under
            // a `log`, by at most two loads: inline, each log of it is the exponential's argument less the
            // normaliser's log (a log-softmax), the gradient has no 1 / p in it, and another read computes
            // the exponential again instead of loading it (label smoothing through the softmax probability
            // ran 4.7x slower than through the logsumexp; KL divergence through the probabilities, `p (log p
            // - log q)`, 1.6x slower than with the probability inlined).
            let exponential = |n: NodeId| matches!(prim_of(f, n), Some((Prim::Exp, _)));
            let probability =
                exponential(t.body) || matches!(prim_of(f, t.body), Some((Prim::Div, q)) if exponential(q[0]));
            let logged = t.role == Role::Let
                && !t.indices.is_empty()
                && nodes.len() <= INLINE_NODES
                && under_log[k] > 0
                && loads[k] <= 2
                && probability;
            // A log-softmax `X - logsumexp X` along one of its indices (distillation's `lt[i, k] = t[i, k] / T
            // - logsumexp[c] t[i, c] / T`): inline, so that `exp` of it is a softmax exponential whose sum is
            // one and whose values the logsumexp's row keeps (it ran 1.4x slower than the same loss with
            // the probabilities inlined). Only where it reads its tensors at bare indices (SAF's
            // `lr` reads a slot of its state bank by a computed subscript: 2x slower inlined).
            let bare_loads = || {
                nodes.iter().all(|n| match &f.node(*n).expr {
                    Expr::Load { subs, .. } => subs.iter().all(|s| matches!(f.node(*s).expr, Expr::Index(_))),
                    _ => true,
                })
            };
            let log_softmax = t.role == Role::Let
                && nodes.len() <= INLINE_NODES
                && t.indices.iter().any(|&h| softmax_shift(f, h, t.body).is_some())
                && bare_loads();
            // A scaled read (`zs[i, k] = s[i, k] / T`: one load, at the head's indices in their order, in a
            // chain of additions, multiplications and divisions by values free of them, each step with one
            // operand that depends on them) read at bare indices: inline before differentiating, each
            // reader scales its own read (distillation's cross-entropy minus entropy over
            // temperature-scaled `let`s kept the matrix and a guarded adjoint of it, an extra pass over
            // [N, C]: 1.9x slower than the stdlib form).
            let one_load = || {
                let reads: Vec<&NodeId> = nodes
                    .iter()
                    .filter(|n| matches!(f.node(**n).expr, Expr::Load { .. }))
                    .collect();
                matches!(reads[..], [&n] if matches!(&f.node(n).expr,
                    Expr::Load { subs, .. } if f.at_indices(subs, &t.indices)))
            };
            let scaled = t.role == Role::Let
                && !t.indices.is_empty()
                && at_indices[k]
                && nodes.len() <= TRIVIAL_NODES
                && one_load()
                && nodes.iter().all(|n| match prim_of(f, *n) {
                    _ if f.node(*n).free.is_empty() => true,
                    Some((prim, args)) => {
                        matches!(prim, Prim::Add | Prim::Sub | Prim::Mul | Prim::Div | Prim::Neg)
                            && args.iter().filter(|a| !f.node(**a).free.is_empty()).count() == 1
                    }
                    None => !matches!(f.node(*n).expr, Expr::Reduce { .. }),
                });
            let broadcast = t.role == Role::Let && at_indices[k] && broadcast(k, &nodes);
            (
                cheap && (one_use || trivial(k) && at_indices[k]) || gather || broadcast,
                gather || read_once || logged || log_softmax || scaled || paired[k],
                broadcast,
            )
        })
        .collect()
}

pub(crate) fn rebuild_inlining(
    src: &Function,
    hypers: &std::collections::HashMap<u32, NodeId>,
    inline: Vec<bool>,
) -> R<Function> {
    let live = live_tensors(src);
    let mut b = Rebuild {
        src,
        hypers,
        dst: src.empty_like(),
        map: vec![None; src.nodes().len()],
        tensors: vec![None; src.tensors.len()],
        inline,
    };
    // `let` tensors by head and element: one equal to an earlier one (the same head indices, the same
    // element node) is read from that one. The hoisted reductions of the loss and of its gradient share
    // canonical heads, so one that only simplification made equal to another is computed once. (Scalars
    // cost nothing twice and keep their names in `--emit grad`.)
    // So is a reduction equal to an earlier one up to the names of the indices it sums over (a gradient's
    // row sums `sum[i] w[h0, i] x[i, c]` and `sum[j] w[h0, j] x[j, c]`) and the order of commuting operands.
    let mut lets: HashMap<(Vec<IndexId>, NodeId), TensorId> = HashMap::default();
    let mut sums: HashMap<Vec<IndexId>, Vec<(NodeId, TensorId)>> = HashMap::default();
    for (k, t) in src.tensors.iter().enumerate() {
        if !live[k] {
            continue;
        }
        let body = b.node(t.body)?;
        let shared = t.role == Role::Let && !t.indices.is_empty();
        if shared && let Some(same) = lets.get(&(t.indices.clone(), body)) {
            b.tensors[k] = Some(*same);
            continue;
        }
        let sum = shared && matches!(b.dst.node(body).expr, Expr::Reduce { .. });
        let same = |(e, _): &&(NodeId, TensorId)| same_up_to_commuting(&b.dst, body, *e, SAME_BUDGET);
        if sum && let Some((_, t)) = sums.get(&t.indices).and_then(|earlier| earlier.iter().find(same)) {
            b.tensors[k] = Some(*t);
            continue;
        }
        let scalar = b.dst.node(body).scalar;
        let id = b.dst.add_tensor(TensorDef {
            body,
            scalar,
            ..t.clone()
        });
        if shared {
            lets.insert((t.indices.clone(), body), id);
        }
        if sum {
            sums.entry(t.indices.clone()).or_default().push((body, id));
        }
        b.tensors[k] = Some(id);
    }
    Ok(b.dst)
}

/// Tensors a result reaches through loads.
pub fn live_tensors(f: &Function) -> Vec<bool> {
    let mut live: Vec<bool> = f.tensors.iter().map(|t| t.role != Role::Let).collect();
    for k in (0..f.tensors.len()).rev() {
        if !live[k] {
            continue;
        }
        for n in f.reachable(&[f.tensors[k].body]) {
            if let Expr::Load {
                tensor: TensorRef::Def(t),
                ..
            } = f.node(n).expr
            {
                live[t.index()] = true;
            }
        }
    }
    live
}

struct Rebuild<'a> {
    src: &'a Function,
    hypers: &'a std::collections::HashMap<u32, NodeId>,
    dst: Function,
    map: Vec<Option<NodeId>>,
    tensors: Vec<Option<TensorId>>,
    /// Tensors whose loads become their element ([`inline_lets`]).
    inline: Vec<bool>,
}

impl Rebuild<'_> {
    fn node(&mut self, n: NodeId) -> R<NodeId> {
        if let Some(m) = self.map[n.index()] {
            return Ok(m);
        }
        // The expression only (its free indices are recomputed by `add`).
        let (expr, scalar) = (self.src.node(n).expr.clone(), self.src.node(n).scalar);
        let span = self.src.span(n);
        if let Expr::Hyper(h) = expr
            && let Some(v) = self.hypers.get(&h)
        {
            let id = self.node(*v)?;
            self.map[n.index()] = Some(id);
            return Ok(id);
        }
        let expr = match expr {
            Expr::Load {
                tensor: TensorRef::Def(t),
                subs,
            } if self.inline[t.index()] => {
                let def = &self.src.tensors[t.index()];
                let body = self.node(def.body)?;
                let mut at = HashMap::default();
                for (i, s) in def.indices.iter().zip(subs.iter()) {
                    at.insert(*i, self.node(*s)?);
                }
                let id = self.dst.subst(body, &at)?;
                self.map[n.index()] = Some(id);
                return Ok(id);
            }
            Expr::Load { tensor, subs } => {
                let subs = subs.iter().map(|s| self.node(*s)).collect::<R<Vec<_>>>()?;
                let tensor = match tensor {
                    TensorRef::Def(t) => {
                        TensorRef::Def(self.tensors[t.index()].expect("loads refer to live, earlier tensors"))
                    }
                    input => input,
                };
                Expr::Load {
                    tensor,
                    subs: subs.into(),
                }
            }
            // Everything else: its operands rebuilt (a reduction's mask before its body).
            other => other.try_map_operands(|o| self.node(o))?,
        };
        let id = simplify(&mut self.dst, expr, scalar, span)?;
        self.map[n.index()] = Some(id);
        Ok(id)
    }
}

fn float(f: &Function, n: NodeId) -> Option<f64> {
    f.as_float(n)
}

/// Whether `sum` is `x + y` and `test` is `x != 0 || y != 0` (either way round).
fn guarded_sum(f: &Function, test: NodeId, sum: NodeId) -> bool {
    match (prim_of(f, test), prim_of(f, sum)) {
        (Some((Prim::Or, c)), Some((Prim::Add, s))) => {
            let tested = [f.nonzero_test(c[0]), f.nonzero_test(c[1])];
            tested == [Some(s[0]), Some(s[1])] || tested == [Some(s[1]), Some(s[0])]
        }
        _ => false,
    }
}

/// Whether `a`'s free indices are a proper subset of `b`'s.
fn fewer_free(f: &Function, a: NodeId, b: NodeId) -> bool {
    let (fa, fb) = (&f.node(a).free, &f.node(b).free);
    fa.len() < fb.len() && fa.iter().all(|i| fb.contains(i))
}

fn is_float(f: &Function, n: NodeId, x: f64) -> bool {
    float(f, n) == Some(x)
}

fn is_int(f: &Function, n: NodeId, i: i64) -> bool {
    f.node(n).expr == Expr::Int(i)
}

fn constant(f: &Function, n: NodeId) -> Option<Value> {
    match f.node(n).expr {
        Expr::Float(b) => Some(Value::F(f64::from_bits(b))),
        Expr::Int(i) => Some(Value::I(i)),
        Expr::Bool(b) => Some(Value::B(b)),
        _ => None,
    }
}

fn prim_of(f: &Function, n: NodeId) -> Option<(Prim, Vec<NodeId>)> {
    match &f.node(n).expr {
        Expr::Prim { prim, args } => Some((*prim, args.to_vec())),
        _ => None,
    }
}

/// Creates `expr` in `f`, rewritten by the first rule that applies.
pub fn simplify(f: &mut Function, expr: Expr, scalar: Scalar, span: Span) -> R<NodeId> {
    use Prim::*;
    let Expr::Prim { prim, args } = &expr else {
        if let Expr::Reduce {
            op,
            indices,
            mask,
            body,
        } = &expr
        {
            return reduce(f, *op, indices, *mask, *body, scalar, span);
        }
        // A table read at a constant is that entry.
        if let Expr::Table { at, values } = &expr
            && let Some(Value::I(i)) = constant(f, *at)
        {
            return f.constant(
                crate::ir::table_value(scalar, values[crate::ir::table_slot(i, values.len())]),
                span,
            );
        }
        return f.add(expr, scalar, span);
    };
    let (prim, a) = (*prim, args.to_vec());
    // Constant folding: an operation of constants is a constant (stopgrad is kept: it marks intent).
    if prim != StopGrad
        && let Some(vals) = a.iter().map(|x| constant(f, *x)).collect::<Option<Vec<Value>>>()
    {
        return f.constant(prim.eval(&vals), span);
    }
    let p = |f: &Function, n: NodeId| prim_of(f, n);
    // Canonical operand order for exactly commutative operations (IEEE + and * commute), so that
    // hash-consing finds `a * b` and `b * a` to be one node. Not for max/min (ties send the gradient to
    // the first operand) nor &&/|| (the second operand is evaluated lazily).
    if matches!(prim, Add | Mul | Eq | Ne) && a[1] < a[0] {
        return simplify(f, prim_expr(prim, &[a[1], a[0]]), scalar, span);
    }
    if prim == Add
        && let Some(merged) = merge_sums(f, a[0], a[1], span)?
    {
        return Ok(merged);
    }
    if matches!(prim, Add | Sub)
        && let Some(fused) = fuse_sums(f, prim, a[0], a[1], span)?
    {
        return Ok(fused);
    }
    match prim {
        // Integers (exact): i + 0 = i, i * 1 = i, i * 0 = 0 (index arithmetic such as a flat position's
        // `j + 0 * B`).
        Add if is_int(f, a[1], 0) => return Ok(a[0]),
        Add if is_int(f, a[0], 0) => return Ok(a[1]),
        Mul if is_int(f, a[1], 1) => return Ok(a[0]),
        Mul if is_int(f, a[0], 1) => return Ok(a[1]),
        Mul if is_int(f, a[0], 0) || is_int(f, a[1], 0) => return f.add(Expr::Int(0), Scalar::Int, span),
        // c + logsumexp[k] (e - c) = logsumexp[k] e for a shift c free of k (a row maximum subtracted by
        // hand and added back: the shift cancels, and its derivative, an arg-max, with it).
        Add if let Some(lse) = (0..2).find_map(|k| unshifted_logsumexp(f, a[k], a[1 - k])) => {
            return f.add(lse, Scalar::Float, span);
        }
        // x + x = 2 * x (exact, infinities and NaN included): a square's derivative is its two equal
        // product-rule terms, and a scaled term is what the row-update loops take.
        Add if a[0] == a[1] && scalar == Scalar::Float => {
            let two = f.constant(Value::F(2.0), span)?;
            return simplify(f, prim_expr(Mul, &[two, a[0]]), scalar, span);
        }
        // x + 0 = x, 0 + x = x
        Add if is_float(f, a[1], 0.0) => return Ok(a[0]),
        Add if is_float(f, a[0], 0.0) => return Ok(a[1]),
        // x + (-y) = x - y
        Add if matches!(p(f, a[1]), Some((Neg, _))) => {
            return simplify(f, prim_expr(Sub, &[a[0], p(f, a[1]).unwrap().1[0]]), scalar, span);
        }
        // 1 - [c] = [!c] (exact: the bracket is 0 or 1), so a complement reads as the bracket it is
        // (`1 - [k == y]` ran 10x slower than `[k != y]`: LDR-KL written with a one-hot complement).
        Sub if is_float(f, a[0], 1.0) && matches!(p(f, a[1]), Some((Iverson, _))) => {
            let c = p(f, a[1]).unwrap().1[0];
            let not = simplify(f, prim_expr(Not, &[c]), Scalar::Bool, span)?;
            return simplify(f, prim_expr(Iverson, &[not]), scalar, span);
        }
        // !(a == b) = a != b, !(a != b) = a == b (IEEE: NaN is unequal to everything), !!c = c, and of
        // integers (no NaN) !(a < b) = a >= b and the like.
        Not if matches!(p(f, a[0]), Some((Eq | Ne | Not | Lt | Le | Gt | Ge, _))) => {
            let (inner, args) = p(f, a[0]).unwrap();
            let integers = || args.iter().all(|x| f.node(*x).scalar == Scalar::Int);
            let flipped = match inner {
                Not => return Ok(args[0]),
                Eq => Some(Ne),
                Ne => Some(Eq),
                Lt if integers() => Some(Ge),
                Le if integers() => Some(Gt),
                Gt if integers() => Some(Le),
                Ge if integers() => Some(Lt),
                _ => None,
            };
            if let Some(flipped) = flipped {
                return simplify(f, prim_expr(flipped, &[args[0], args[1]]), scalar, span);
            }
        }
        // x - 0 = x
        Sub if is_float(f, a[1], 0.0) => return Ok(a[0]),
        // 0 - x = -x
        Sub if is_float(f, a[0], 0.0) => return simplify(f, prim_expr(Neg, &[a[1]]), scalar, span),
        // x - (-y) = x + y
        Sub if matches!(p(f, a[1]), Some((Neg, _))) => {
            return simplify(f, prim_expr(Add, &[a[0], p(f, a[1]).unwrap().1[0]]), scalar, span);
        }
        // x * 1 = x, 1 * x = x
        Mul if is_float(f, a[1], 1.0) => return Ok(a[0]),
        Mul if is_float(f, a[0], 1.0) => return Ok(a[1]),
        // x * -1 = -x, -1 * x = -x
        Mul if is_float(f, a[1], -1.0) => return simplify(f, prim_expr(Neg, &[a[0]]), scalar, span),
        Mul if is_float(f, a[0], -1.0) => return simplify(f, prim_expr(Neg, &[a[1]]), scalar, span),
        // [a] * [b] = [a && b]
        Mul if matches!((p(f, a[0]), p(f, a[1])), (Some((Iverson, _)), Some((Iverson, _)))) => {
            let (c1, c2) = (p(f, a[0]).unwrap().1[0], p(f, a[1]).unwrap().1[0]);
            let both = simplify(f, prim_expr(And, &[c1, c2]), Scalar::Bool, span)?;
            return simplify(f, prim_expr(Iverson, &[both]), scalar, span);
        }
        // x / 1 = x
        Div if is_float(f, a[1], 1.0) => return Ok(a[0]),
        // x ^ 1 = x
        Pow if is_float(f, a[1], 1.0) => return Ok(a[0]),
        // x ^ 2 = x * x
        Pow if is_float(f, a[1], 2.0) => return f.prim(Mul, &[a[0], a[0]], span),
        // x ^ 0.5 = sqrt(x) (a norm written as a power; its derivative 0.5 / sqrt(x), not a second power)
        Pow if is_float(f, a[1], 0.5) => return f.prim(Sqrt, &[a[0]], span),
        // -(-x) = x
        Neg if matches!(p(f, a[0]), Some((Neg, _))) => return Ok(p(f, a[0]).unwrap().1[0]),
        // -(x * y) = (-x) * y where x has fewer free indices (a scalar factor): the negation is computed
        // once outside the loops over y's other indices (the same bits: negation is exact).
        Neg if let Some((Mul, m)) = p(f, a[0])
            && let Some(k) = (0..2).find(|&k| fewer_free(f, m[k], m[1 - k])) =>
        {
            let negated = simplify(f, prim_expr(Neg, &[m[k]]), scalar, span)?;
            let mut factors = [m[0], m[1]];
            factors[k] = negated;
            return simplify(f, prim_expr(Mul, &factors), scalar, span);
        }
        // log(exp(x)) = x
        Log if matches!(p(f, a[0]), Some((Exp, _))) => return Ok(p(f, a[0]).unwrap().1[0]),
        // Stabilising: log(sum[k] exp(e)) = logsumexp[k] e
        Log if let Expr::Reduce {
            op: ReduceOp::Sum,
            indices,
            mask,
            body,
        } = f.node(a[0]).expr.clone()
            && let Some((Exp, e)) = p(f, body) =>
        {
            return f.add(
                Expr::Reduce {
                    op: ReduceOp::LogSumExp,
                    indices,
                    mask,
                    body: e[0],
                },
                Scalar::Float,
                span,
            );
        }
        // Stabilising: log(mean[k] exp(e)) = logsumexp[k] e - log(|k|)   (unmasked)
        Log if let Expr::Reduce {
            op: ReduceOp::Mean,
            indices,
            mask: None,
            body,
        } = f.node(a[0]).expr.clone()
            && let Some((Exp, e)) = p(f, body) =>
        {
            let lse = f.add(
                Expr::Reduce {
                    op: ReduceOp::LogSumExp,
                    indices: indices.clone(),
                    mask: None,
                    body: e[0],
                },
                Scalar::Float,
                span,
            )?;
            let count = count_of(f, &indices, span)?;
            let lc = simplify(f, prim_expr(Log, &[count]), Scalar::Float, span)?;
            return simplify(f, prim_expr(Sub, &[lse, lc]), Scalar::Float, span);
        }
        // (sum[k] e) / |k| = mean[k] e   (unmasked): a sum over the batch divided by its size is the mean
        // the code generators fuse into the rows' group.
        Div if let Expr::Reduce {
            op: ReduceOp::Sum,
            indices,
            mask: None,
            body,
        } = f.node(a[0]).expr.clone()
            && is_count_of(f, a[1], &indices) =>
        {
            return f.add(
                Expr::Reduce {
                    op: ReduceOp::Mean,
                    indices,
                    mask: None,
                    body,
                },
                Scalar::Float,
                span,
            );
        }
        // Stabilising: log(1 + exp(x)) = softplus(x), log(exp(x) + 1) = softplus(x)
        Log if let Some((Add, s)) = p(f, a[0])
            && let Some(x) = one_plus_exp(f, &s) =>
        {
            return f.prim(Softplus, &[x], span);
        }
        // Stabilising: log(1 + sum[k] exp(e)) = softplus(logsumexp[k] e)   (also with the sum first)
        Log if let Some((Add, s)) = p(f, a[0])
            && let Some((indices, mask, e)) = one_plus_sum_exp(f, &s) =>
        {
            let lse = f.add(
                Expr::Reduce {
                    op: ReduceOp::LogSumExp,
                    indices,
                    mask,
                    body: e,
                },
                Scalar::Float,
                span,
            )?;
            return f.prim(Softplus, &[lse], span);
        }
        // Stabilising: e^x / (1 + e^x) = sigmoid(x), and a / (1 + e^x) = a · sigmoid(-x) (1 / (1 + e^x) was
        // inf · 0 in its derivative once e^x overflowed: AnyLoss's amplifier).
        Div if let Some((Add, s)) = p(f, a[1])
            && let Some(x) = one_plus_exp(f, &s) =>
        {
            if let Some((Exp, e)) = p(f, a[0])
                && e[0] == x
            {
                return f.prim(Sigmoid, &[x], span);
            }
            let nx = simplify(f, prim_expr(Neg, &[x]), Scalar::Float, span)?;
            let sig = f.prim(Sigmoid, &[nx], span)?;
            return simplify(f, prim_expr(Mul, &[a[0], sig]), Scalar::Float, span);
        }
        // Stabilising: log1p(exp(x)) = softplus(x)
        Log1p if let Some((Exp, e)) = p(f, a[0]) => return f.prim(Softplus, &[e[0]], span),
        // Stabilising: log(sigmoid(x)) = -softplus(-x)
        Log if let Some((Sigmoid, e)) = p(f, a[0]) => {
            let nx = simplify(f, prim_expr(Neg, &[e[0]]), Scalar::Float, span)?;
            let sp = f.prim(Softplus, &[nx], span)?;
            return simplify(f, prim_expr(Neg, &[sp]), Scalar::Float, span);
        }
        // Stabilising: exp(a) / sum[k] exp(b) = exp(a - logsumexp[k] b)   (the shifted softmax)
        Div if let Some((Exp, num)) = p(f, a[0])
            && let Expr::Reduce {
                op: ReduceOp::Sum,
                indices,
                mask,
                body,
            } = f.node(a[1]).expr.clone()
            && let Some((Exp, den)) = p(f, body) =>
        {
            let lse = f.add(
                Expr::Reduce {
                    op: ReduceOp::LogSumExp,
                    indices,
                    mask,
                    body: den[0],
                },
                Scalar::Float,
                span,
            )?;
            let d = simplify(f, prim_expr(Sub, &[num[0], lse]), Scalar::Float, span)?;
            return f.prim(Exp, &[d], span);
        }
        // select(c, a, a) = a
        Select if a[1] == a[2] => return Ok(a[1]),
        // select(x != 0, x, 0) = x (autodiff's guard on an adjoint that is itself the value): equal
        // everywhere, -0 aside (which the select turns into +0).
        Select if is_float(f, a[2], 0.0) && f.nonzero_test(a[0]) == Some(a[1]) => return Ok(a[1]),
        // select(x != 0 || y != 0, x + y, 0) = x + y (the guards of two adjoints added, as the two reads
        // of a Gram matrix's adjoint give): 0 where both are, -0 aside.
        Select if is_float(f, a[2], 0.0) && guarded_sum(f, a[0], a[1]) => return Ok(a[1]),
        // select(true, a, b) = a, select(false, a, b) = b
        Select if matches!(constant(f, a[0]), Some(Value::B(_))) => {
            return Ok(if constant(f, a[0]) == Some(Value::B(true)) {
                a[1]
            } else {
                a[2]
            });
        }
        // true && c = c, c && true = c, false && c = false
        And | Or => {
            let (unit, absorbing) = if prim == And { (true, false) } else { (false, true) };
            for (x, y) in [(a[0], a[1]), (a[1], a[0])] {
                match constant(f, x) {
                    Some(Value::B(b)) if b == unit => return Ok(y),
                    Some(Value::B(b)) if b == absorbing => return Ok(x),
                    _ => {}
                }
            }
        }
        // !!c = c
        Not if matches!(p(f, a[0]), Some((Not, _))) => return Ok(p(f, a[0]).unwrap().1[0]),
        // stopgrad(stopgrad(x)) = stopgrad(x)
        StopGrad if matches!(p(f, a[0]), Some((StopGrad, _))) => return Ok(a[0]),
        _ => {}
    }
    f.add(expr, scalar, span)
}

/// `sum[k | m1] a * r + sum[k' | m2] b * r'` where `r'` is `r` with `k'` for `k` (a float load that depends
/// on `k` and another index: the matrix a gradient multiplies twice, as `x` in the gradient of `x·xᵀ`)
/// is `sum[k | m1 || m2] (select(m1, a, 0) + select(m2, b, 0)) * r`: one matrix product instead of two.
/// Both sums have the same free indices (so they hoist alike) and the same extent.
fn merge_sums(f: &mut Function, x: NodeId, y: NodeId, span: Span) -> R<Option<NodeId>> {
    let (Some((k, mx, bx)), Some((k2, my, by))) = (f.single_sum(x), f.single_sum(y)) else {
        return Ok(None);
    };
    if f.index(k).range != f.index(k2).range || f.node(x).free != f.node(y).free {
        return Ok(None);
    }
    if k == k2 {
        return Ok(None);
    }
    let roots: Vec<NodeId> = my.into_iter().chain([by]).collect();
    let Some(renamed) = renamed(f, k2, k, &roots, span)? else {
        return Ok(None);
    };
    let (my, by) = match renamed[..] {
        [m, b] => (Some(m), b),
        [b] => (None, b),
        _ => unreachable!("one or two roots"),
    };
    let (fx, fy) = (f.factors(bx), f.factors(by));
    let shared = fx.iter().copied().find(|r| {
        let node = f.node(*r);
        matches!(node.expr, Expr::Load { .. })
            && node.scalar == Scalar::Float
            && node.free.contains(&k)
            && node.free.len() >= 2
            && fy.contains(r)
    });
    let Some(r) = shared else {
        return Ok(None);
    };
    // Each side without one `r`, as a product (1 when nothing is left), selected by its mask.
    let side = |f: &mut Function, fs: &[NodeId], mask: Option<NodeId>| -> R<NodeId> {
        let at = fs.iter().position(|n| *n == r).expect("the shared factor");
        let rest: Vec<NodeId> = fs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, n)| *n)
            .collect();
        let mut v = match rest.first() {
            Some(first) => *first,
            None => f.float(1.0, span)?,
        };
        for n in rest.iter().skip(1) {
            v = f.prim(Prim::Mul, &[v, *n], span)?;
        }
        // `select(v != 0, v, 0)` is `v` (up to the sign of a zero): autodiff's guard needs no select.
        match mask {
            Some(m) if f.nonzero_test(m) != Some(v) => {
                let zero = f.float(0.0, span)?;
                f.prim(Prim::Select, &[m, v, zero], span)
            }
            _ => Ok(v),
        }
    };
    let a = side(f, &fx, mx)?;
    let b = side(f, &fy, my)?;
    let both = f.prim(Prim::Add, &[a, b], span)?;
    let term = f.prim(Prim::Mul, &[both, r], span)?;
    let mask = match (mx, my) {
        (Some(m1), Some(m2)) => Some(f.prim(Prim::Or, &[m1, m2], span)?),
        _ => None,
    };
    f.add_sum(k, mask, term, span).map(Some)
}

/// `sum[k] a ± sum[k'] b = sum[k] (a ± b[k' := k])` for unmasked sums over one range with the same free
/// indices (reassociates): one pass over the range instead of two, in which what both terms compute (a
/// teacher's softmax exponentials in a cross-entropy and in its entropy) is computed once.
fn fuse_sums(f: &mut Function, prim: Prim, x: NodeId, y: NodeId, span: Span) -> R<Option<NodeId>> {
    // A negated sum is the sum of the negated terms (`-sum[k] a = sum[k] -a`, exact).
    let ((x, neg_x), (y, neg_y)) = (unnegated(f, x), unnegated(f, y));
    let (Some((k, None, a)), Some((k2, None, b))) = (f.single_sum(x), f.single_sum(y)) else {
        return Ok(None);
    };
    let (a, b) = (negated(f, a, neg_x, span)?, negated(f, b, neg_y, span)?);
    if f.index(k).range != f.index(k2).range || f.node(x).free != f.node(y).free {
        return Ok(None);
    }
    let b = match k == k2 {
        true => b,
        false => match renamed(f, k2, k, &[b], span)? {
            Some(b) => b[0],
            None => return Ok(None),
        },
    };
    let body = simplify(f, prim_expr(prim, &[a, b]), Scalar::Float, span)?;
    reduce(f, ReduceOp::Sum, &[k], None, body, Scalar::Float, span).map(Some)
}

/// `roots` with index `from` renamed `to`, or None where `to` occurs in them already (renaming would
/// capture it): how one of two sums over one range is read in the other's index.
fn renamed(f: &mut Function, from: IndexId, to: IndexId, roots: &[NodeId], span: Span) -> R<Option<Vec<NodeId>>> {
    let uses_to = f.reachable(roots).into_iter().any(|n| match &f.node(n).expr {
        Expr::Index(i) => *i == to,
        Expr::Reduce { indices, .. } => indices.contains(&to),
        _ => false,
    });
    if uses_to {
        return Ok(None);
    }
    let at = f.add(Expr::Index(to), Scalar::Int, span)?;
    let map: HashMap<_, _> = [(from, at)].into_iter().collect();
    roots.iter().map(|r| f.subst(*r, &map)).collect::<R<Vec<_>>>().map(Some)
}

/// `(m, true)` where `n` is `-m`, else `(n, false)`.
fn unnegated(f: &Function, n: NodeId) -> (NodeId, bool) {
    match prim_of(f, n) {
        Some((Prim::Neg, arg)) => (arg[0], true),
        _ => (n, false),
    }
}

/// `-n` where `negate`, else `n`.
fn negated(f: &mut Function, n: NodeId, negate: bool, span: Span) -> R<NodeId> {
    match negate {
        true => simplify(f, prim_expr(Prim::Neg, &[n]), Scalar::Float, span),
        false => Ok(n),
    }
}

fn prim_expr(prim: Prim, args: &[NodeId]) -> Expr {
    Expr::Prim {
        prim,
        args: args.into(),
    }
}

/// `x` when the operands of an addition are `1` and `exp(x)` in either order.
fn one_plus_exp(f: &Function, s: &[NodeId]) -> Option<NodeId> {
    for (one, e) in [(s[0], s[1]), (s[1], s[0])] {
        if is_float(f, one, 1.0)
            && let Some((Prim::Exp, x)) = prim_of(f, e)
        {
            return Some(x[0]);
        }
    }
    None
}

/// `(k, mask, e)` when the operands of an addition are `1` and `sum[k | mask] exp(e)` in either order.
fn one_plus_sum_exp(f: &Function, s: &[NodeId]) -> Option<(Box<[IndexId]>, Option<NodeId>, NodeId)> {
    for (one, sum) in [(s[0], s[1]), (s[1], s[0])] {
        if is_float(f, one, 1.0)
            && let Expr::Reduce {
                op: ReduceOp::Sum,
                indices,
                mask,
                body,
            } = &f.node(sum).expr
            && let Some((Prim::Exp, e)) = prim_of(f, *body)
        {
            return Some((indices.clone(), *mask, e[0]));
        }
    }
    None
}

/// The number of points of an unmasked reduction over `indices`, as a float node.
/// `logsumexp[k | m] e` where `lse` is `logsumexp[k | m] (e - c)` with `c` free of `k`.
fn unshifted_logsumexp(f: &Function, lse: NodeId, c: NodeId) -> Option<Expr> {
    let Expr::Reduce {
        op: ReduceOp::LogSumExp,
        indices,
        mask,
        body,
    } = f.node(lse).expr.clone()
    else {
        return None;
    };
    let Some((Prim::Sub, d)) = prim_of(f, body) else {
        return None;
    };
    let free_of_k = !f.node(c).free.iter().any(|i| indices.contains(i));
    (d[1] == c && free_of_k).then(|| Expr::Reduce {
        op: ReduceOp::LogSumExp,
        indices,
        mask,
        body: d[0],
    })
}

/// How many points `indices` range over.
fn size_of(f: &Function, indices: &[IndexId]) -> Dim {
    let mut size: Option<Dim> = None;
    for i in indices {
        let r = f.index(*i).range.clone();
        size = Some(match size {
            None => r,
            Some(s) => Dim::Mul(Box::new(s), Box::new(r)).fold(),
        });
    }
    size.unwrap_or(Dim::Const(1))
}

/// That count as a float node.
fn count_of(f: &mut Function, indices: &[IndexId], span: Span) -> R<NodeId> {
    let n = f.add(Expr::Size(size_of(f, indices)), Scalar::Int, span)?;
    simplify(f, prim_expr(Prim::ToFloat, &[n]), Scalar::Float, span)
}

/// Whether `n` is that count ([`count_of`]'s node), without building one.
fn is_count_of(f: &Function, n: NodeId, indices: &[IndexId]) -> bool {
    match size_of(f, indices) {
        // A constant count is folded to a float.
        Dim::Const(c) => f.as_float(n) == Some(c as f64),
        size => matches!(prim_of(f, n), Some((Prim::ToFloat, x))
            if matches!(&f.node(x[0]).expr, Expr::Size(d) if *d == size)),
    }
}

/// Whether integer node `e` always lies in `0..range` (so substituting it for an index of that range
/// cannot read out of bounds): [`Function::in_range`] for an index, a bounded label or a constant (not a
/// choice between them).
fn within(f: &Function, e: NodeId, range: &Dim) -> bool {
    !matches!(
        f.node(e).expr,
        Expr::Prim { prim: Prim::Select, .. } | Expr::Table { .. }
    ) && f.in_range(e, range)
}

/// If `n` is an Iverson bracket of an equality [`fusible_eq`] resolves over `indices`, or one times a
/// factor free of them: the bracket and the factor.
fn bracket_factor(f: &mut Function, n: NodeId, indices: &[IndexId], span: Span) -> R<Option<(NodeId, Option<NodeId>)>> {
    let split = match prim_of(f, n) {
        Some((Prim::Mul, m)) => (0..2).find_map(|j| {
            let free = indices.iter().all(|k| !f.node(m[1 - j]).free.contains(k));
            matches!(prim_of(f, m[j]), Some((Prim::Iverson, _)))
                .then_some((m[j], Some(m[1 - j])))
                .filter(|_| free)
        }),
        Some((Prim::Iverson, _)) => Some((n, None)),
        _ => None,
    };
    let Some((bracket, factor)) = split else {
        return Ok(None);
    };
    let Some((Prim::Iverson, c)) = prim_of(f, bracket) else {
        return Ok(None);
    };
    Ok(fusible_eq(f, c[0], indices, span)?.map(|_| (bracket, factor)))
}

/// An equality that bracket fusion can resolve for one of `indices`: `k == e` (either way round), or
/// `T(k) == e` where `T` is a constant table permuting the range of `k` (the adjoint of a gather through a
/// permutation, as in a sorting network's partner wires), resolved as `k = T⁻¹(e)`.
fn fusible_eq(f: &mut Function, cond: NodeId, indices: &[IndexId], span: Span) -> R<Option<(IndexId, NodeId)>> {
    let Some((Prim::Eq, s)) = prim_of(f, cond) else {
        return Ok(None);
    };
    for (x, e) in [(s[0], s[1]), (s[1], s[0])] {
        if let Expr::Index(k) = f.node(x).expr
            && indices.contains(&k)
            && !f.node(e).free.contains(&k)
            && within(f, e, &f.index(k).range)
        {
            return Ok(Some((k, e)));
        }
    }
    for (t, e) in [(s[0], s[1]), (s[1], s[0])] {
        let &[k] = &*f.node(t).free else { continue };
        if !indices.contains(&k) || f.node(e).free.contains(&k) || !within(f, e, &f.index(k).range) {
            continue;
        }
        if let Some(inverse) = inverse_permutation(f, t, k) {
            let values: Vec<Value> = inverse.into_iter().map(Value::I).collect();
            return Ok(Some((k, f.table(e, &values, span)?)));
        }
    }
    Ok(None)
}

/// The largest table [`inverse_permutation`] evaluates.
const MAX_TABLE: i64 = 1024;

/// If `t`, an integer function of index `k` alone over a constant range 0..n, permutes 0..n: its inverse.
fn inverse_permutation(f: &Function, t: NodeId, k: IndexId) -> Option<Vec<i64>> {
    let Dim::Const(n) = f.index(k).range else { return None };
    if !(1..=MAX_TABLE).contains(&n) || f.node(t).scalar != Scalar::Int {
        return None;
    }
    let mut inverse = vec![-1; n as usize];
    for w in 0..n {
        let Some(Value::I(v)) = f.eval_at(t, k, w) else {
            return None;
        };
        let slot = inverse.get_mut(usize::try_from(v).ok()?)?;
        if *slot != -1 {
            return None;
        }
        *slot = w;
    }
    Some(inverse)
}

fn reduce(
    f: &mut Function,
    op: ReduceOp,
    indices: &[IndexId],
    mask: Option<NodeId>,
    body: NodeId,
    scalar: Scalar,
    span: Span,
) -> R<NodeId> {
    // count[k] true = |k|
    if op == ReduceOp::Count && mask.is_none() && constant(f, body) == Some(Value::B(true)) {
        let count = count_of(f, indices, span)?;
        let Some((Prim::ToFloat, n)) = prim_of(f, count) else {
            return Ok(count);
        };
        return Ok(n[0]);
    }
    if op == ReduceOp::Sum {
        // sum[k | x != 0] x = sum[k] x: the terms the mask leaves out are ±0, and a sum starts at +0, which
        // adding ±0 leaves as it is.
        if let Some(m) = mask
            && f.nonzero_test(m) == Some(body)
        {
            return reduce(f, op, indices, None, body, scalar, span);
        }
        // sum[k | m] e = select(m, sum[k] e, 0) for a mask free of the summed indices (all of them or
        // none, and the empty sum is 0), where the unmasked sum is no sum over them any more (a softmax
        // summed under an adjoint's guard `c[i] != 0` is one). Where it still is, the masked sum stays
        // (TempNet's temperature gradient ran 1.2x slower with its guard outside the row sum).
        if let Some(m) = mask
            && indices.iter().all(|k| !f.node(m).free.contains(k))
            && indices.iter().any(|k| f.node(body).free.contains(k))
        {
            let total = reduce(f, op, indices, None, body, scalar, span)?;
            let summed = f.reachable(&[total]).into_iter().any(|n| {
                matches!(&f.node(n).expr, Expr::Reduce { indices: over, .. } if over.iter().any(|k| indices.contains(k)))
            });
            if !summed {
                let zero = f.float(0.0, span)?;
                return simplify(f, prim_expr(Prim::Select, &[m, total, zero]), Scalar::Float, span);
            }
        }
        // Bracket fusion: sum[k | k == e && rest] x = sum[| rest] x[k := e]
        if let Some(m) = mask
            && let Some(fused) = fuse_condition(f, indices, m, body, span)?
        {
            return Ok(fused);
        }
        // sum[k] select(k == e, x, 0) = x[k := e];  sum[k] [k == e] * x = x[k := e]. The second reads the
        // bracket as a strong zero (Knuth's convention): where x is NaN at some k != e the literal sum is
        // NaN (0 * NaN) and the fused one is not.
        if mask.is_none() {
            let found = match prim_of(f, body) {
                Some((Prim::Select, s)) if is_float(f, s[2], 0.0) => Some((s[0], s[1])),
                Some((Prim::Mul, s)) => match (prim_of(f, s[0]), prim_of(f, s[1])) {
                    (Some((Prim::Iverson, c)), _) => Some((c[0], s[1])),
                    (_, Some((Prim::Iverson, c))) => Some((c[0], s[0])),
                    _ => None,
                },
                _ => None,
            };
            if let Some((cond, x)) = found
                && let Some(fused) = fuse_condition(f, indices, cond, x, span)?
            {
                return Ok(fused);
            }
        }
        // A softmax sums to one: sum[k] exp(X(k) - logsumexp[k'] X(k')) = 1 (see `softmax_total`); through a
        // `let` tensor whose element is such an exponential times factors that do not depend on `k`
        // (LDR-KL's margin adjoints, summed for the label's column), the element is substituted and the
        // factors come out by distributivity below.
        if mask.is_none()
            && let [k] = indices[..]
        {
            if let Some(total) = softmax_total(f, k, body, span)? {
                return Ok(total);
            }
            if let Some(element) = softmax_element(f, k, body)? {
                return reduce(f, op, indices, mask, element, scalar, span);
            }
        }
        // Deviations from a mean sum to zero: sum[k] c * (X(k) - mean[k'] X(k')) = c * 0 (see `deviations`):
        // the gradient of a variance through its mean (Z-loss, standardised scores) is no row pass at all.
        if let [k] = indices[..]
            && mask.is_none_or(|m| !f.node(m).free.contains(&k))
            && let Some(total) = deviations(f, k, body, span)?
        {
            let total = unless_empty(f, k, total, span)?;
            return match mask {
                None => Ok(total),
                Some(m) => {
                    let zero = f.float(0.0, span)?;
                    simplify(f, prim_expr(Prim::Select, &[m, total, zero]), Scalar::Float, span)
                }
            };
        }
        // sum[k] (c [k == j] + b) * e = c e[j] + sum[k] b * e (unmasked): the bracket's part of a product
        // is a gather, the rest a sum of its own (a smoothed target times the log-probabilities).
        if mask.is_none()
            && let Some((Prim::Mul, m)) = prim_of(f, body)
            && let Some((a, e)) = [(m[0], m[1]), (m[1], m[0])].into_iter().find_map(|(sum, e)| {
                let (Prim::Add, a) = prim_of(f, sum)? else { return None };
                Some((a, e))
            })
        {
            for (p, q) in [(a[0], a[1]), (a[1], a[0])] {
                if let Some((bracket, factor)) = bracket_factor(f, p, indices, span)? {
                    let mut pe = simplify(f, prim_expr(Prim::Mul, &[bracket, e]), Scalar::Float, span)?;
                    if let Some(c) = factor {
                        pe = simplify(f, prim_expr(Prim::Mul, &[c, pe]), Scalar::Float, span)?;
                    }
                    let qe = simplify(f, prim_expr(Prim::Mul, &[q, e]), Scalar::Float, span)?;
                    let gathered = reduce(f, op, indices, None, pe, scalar, span)?;
                    let rest = reduce(f, op, indices, None, qe, scalar, span)?;
                    return simplify(f, prim_expr(Prim::Add, &[gathered, rest]), Scalar::Float, span);
                }
            }
        }
        // Distributivity (reassociates float sums, so results may differ in the last bits):
        // sum[k] (c * e) = c * sum[k] e,  sum[k] (e * c) = (sum[k] e) * c,  sum[k] e / c = (sum[k] e) / c,
        // sum[k] -e = -(sum[k] e), for c that does not depend on the summed indices. Under a mask the
        // sum may be empty (0), and c · 0 is NaN for an infinite or NaN c: there c must be a finite
        // constant.
        let invariant = |f: &Function, n: NodeId| {
            indices.iter().all(|k| !f.node(n).free.contains(k))
                && (mask.is_none() || float(f, n).is_some_and(f64::is_finite))
        };
        match prim_of(f, body) {
            Some((Prim::Mul, a)) if invariant(f, a[0]) && !invariant(f, a[1]) => {
                let inner = reduce(f, op, indices, mask, a[1], scalar, span)?;
                return simplify(f, prim_expr(Prim::Mul, &[a[0], inner]), Scalar::Float, span);
            }
            Some((Prim::Mul, a)) if invariant(f, a[1]) && !invariant(f, a[0]) => {
                let inner = reduce(f, op, indices, mask, a[0], scalar, span)?;
                return simplify(f, prim_expr(Prim::Mul, &[inner, a[1]]), Scalar::Float, span);
            }
            Some((Prim::Div, a)) if invariant(f, a[1]) && !invariant(f, a[0]) => {
                let inner = reduce(f, op, indices, mask, a[0], scalar, span)?;
                return simplify(f, prim_expr(Prim::Div, &[inner, a[1]]), Scalar::Float, span);
            }
            Some((Prim::Neg, a)) => {
                let inner = reduce(f, op, indices, mask, a[0], scalar, span)?;
                return simplify(f, prim_expr(Prim::Neg, &[inner]), Scalar::Float, span);
            }
            // sum[k] (c + e) = c * |k| + sum[k] e (unmasked): a term that does not depend on k is counted,
            // not added |k| times (a smoothed target's `eps / C`, whose row sum is then a constant).
            Some((Prim::Add, a)) if mask.is_none() && invariant(f, a[0]) != invariant(f, a[1]) => {
                let (c, e) = if invariant(f, a[0]) { (a[0], a[1]) } else { (a[1], a[0]) };
                let count = count_of(f, indices, span)?;
                let counted = simplify(f, prim_expr(Prim::Mul, &[c, count]), Scalar::Float, span)?;
                let inner = reduce(f, op, indices, None, e, scalar, span)?;
                return simplify(f, prim_expr(Prim::Add, &[counted, inner]), Scalar::Float, span);
            }
            _ => {}
        }
        // sum[k] w * (a - b) = a * sum[k] w - sum[k] w * b (see `split_difference`); under a mask free of k,
        // select(m, that, 0), as the masked sum of a term free of k below.
        if let [k] = indices[..]
            && mask.is_none_or(|m| !f.node(m).free.contains(&k))
            && let Some(split) = split_difference(f, k, body, scalar, span)?
        {
            return match mask {
                None => Ok(split),
                Some(m) => {
                    let zero = f.float(0.0, span)?;
                    simplify(f, prim_expr(Prim::Select, &[m, split, zero]), Scalar::Float, span)
                }
            };
        }
        // sum[k] c = c * |k| when c does not depend on k (unmasked); sum[k | m] c = select(m, c * |k|, 0)
        // when the mask does not depend on k either.
        if indices.iter().all(|k| !f.node(body).free.contains(k)) {
            let count = count_of(f, indices, span)?;
            let total = simplify(f, prim_expr(Prim::Mul, &[body, count]), Scalar::Float, span)?;
            match mask {
                None => return Ok(total),
                Some(m) if indices.iter().all(|k| !f.node(m).free.contains(k)) => {
                    let zero = f.float(0.0, span)?;
                    return simplify(f, prim_expr(Prim::Select, &[m, total, zero]), Scalar::Float, span);
                }
                Some(_) => {}
            }
        }
        // sum[i, j] e = sum[i] (sum[j] e) (reassociates): each inner sum is then a reduction over one index
        // (vectorizable along it) that hoisting can materialize in parallel over the outer ones. Masked,
        // only for a scalar (a loss value: a multi-class hinge's `sum[i, k | k != y[i]]` ran as one serial
        // pass over N C elements); the inner sum of a masked sum over free indices would be stored over
        // all of them (a scatter's `sum[t, s | row[b, t, s] == i]` as a tensor over t, b and the pixels).
        let outer_free = |n: NodeId| f.node(n).free.iter().any(|i| !indices.contains(i));
        let scalar_sum = !outer_free(body) && !mask.is_some_and(outer_free);
        if indices.len() >= 2 && (mask.is_none() || scalar_sum) {
            let inner = reduce(f, op, &indices[1..], mask, body, scalar, span)?;
            return reduce(f, op, &indices[..1], None, inner, scalar, span);
        }
    }
    // mean[i, j] e = (sum[i, j] e) / (|i| |j|) (unmasked), so the sum nests as above.
    if op == ReduceOp::Mean && mask.is_none() && indices.len() >= 2 {
        let sum = reduce(f, ReduceOp::Sum, indices, None, body, scalar, span)?;
        let count = count_of(f, indices, span)?;
        return simplify(f, prim_expr(Prim::Div, &[sum, count]), Scalar::Float, span);
    }
    f.add(
        Expr::Reduce {
            op,
            indices: indices.into(),
            mask,
            body,
        },
        scalar,
        span,
    )
}

/// `sum[k] body` for a product `body = c * w * (a - b)` (its factors in any order) where `a` and `c` are
/// free of `k` and `w` (every other factor) and `b` are not, and `b` reads an index that `w` does not: `c *
/// (a * sum[k] w - sum[k] w * b)` (or the mirror image, for `(b - a)`). The gradient of a pairwise
/// squared distance weighted per pair, `sum[j] w[i, j] * (x[i, d] - z[j, d])`, is then a row sum and a
/// matrix product (a GEMM) instead of a pass over every pair and column (Cauchy-Schwarz's gradient ran
/// 4x slower so). It reassociates: where the terms cancel (`a` near the `w`-weighted mean of `b`), the
/// result's error is that of a matrix product, a few ulps of `sum |w| |b|`, not of the small difference.
fn split_difference(f: &mut Function, k: IndexId, body: NodeId, scalar: Scalar, span: Span) -> R<Option<NodeId>> {
    if scalar != Scalar::Float {
        return Ok(None);
    }
    let depends = |f: &Function, n: NodeId| f.node(n).free.contains(&k);
    let mut factors = f.factors(body);
    let Some((at, a, b, a_first)) = factors.iter().enumerate().find_map(|(at, &n)| {
        let (Prim::Sub, s) = prim_of(f, n)? else { return None };
        match (depends(f, s[0]), depends(f, s[1])) {
            (false, true) => Some((at, s[0], s[1], true)),
            (true, false) => Some((at, s[1], s[0], false)),
            _ => None,
        }
    }) else {
        return Ok(None);
    };
    factors.remove(at);
    let (weights, invariant): (Vec<NodeId>, Vec<NodeId>) = factors.into_iter().partition(|&n| depends(f, n));
    let reads_more = |f: &Function| {
        let by_weights = |i: &IndexId| weights.iter().any(|&w| f.node(w).free.contains(i));
        f.node(b).free.iter().any(|i| *i != k && !by_weights(i))
    };
    if weights.is_empty() || !reads_more(f) {
        return Ok(None);
    }
    let product = |f: &mut Function, ns: &[NodeId]| -> R<NodeId> {
        let mut p = ns[0];
        for &n in &ns[1..] {
            p = simplify(f, prim_expr(Prim::Mul, &[p, n]), Scalar::Float, span)?;
        }
        Ok(p)
    };
    let w = product(f, &weights)?;
    let wb = simplify(f, prim_expr(Prim::Mul, &[w, b]), Scalar::Float, span)?;
    let total = reduce(f, ReduceOp::Sum, &[k], None, w, scalar, span)?;
    let a_total = simplify(f, prim_expr(Prim::Mul, &[a, total]), Scalar::Float, span)?;
    let b_total = reduce(f, ReduceOp::Sum, &[k], None, wb, scalar, span)?;
    let (x, y) = if a_first {
        (a_total, b_total)
    } else {
        (b_total, a_total)
    };
    let split = simplify(f, prim_expr(Prim::Sub, &[x, y]), Scalar::Float, span)?;
    if invariant.is_empty() {
        return Ok(Some(split));
    }
    let c = product(f, &invariant)?;
    Ok(Some(simplify(
        f,
        prim_expr(Prim::Mul, &[c, split]),
        Scalar::Float,
        span,
    )?))
}

/// `sum[k] body` where `body` is a sum of deviations `X(k) - M` (or `M - X(k)`) from the mean
/// `M = mean[k'] X(k')` over the range of `k` (written inline or as a `let`), each scaled, divided or
/// selected by factors free of `k`: that expression with each deviation replaced by `0 * M`. The value is
/// exactly zero where the mean is finite, and NaN where it is not, as the literal sum of an infinite or
/// NaN row is (the one difference: a row of finite values whose sum overflows). The caller puts back the
/// empty sum's 0 (the mean of nothing is NaN).
fn deviations(f: &mut Function, k: IndexId, body: NodeId, span: Span) -> R<Option<NodeId>> {
    if !f.node(body).free.contains(&k) {
        return Ok(None);
    }
    let free = |f: &Function, n: NodeId| !f.node(n).free.contains(&k);
    let Some((prim, a)) = prim_of(f, body) else {
        return Ok(None);
    };
    if prim == Prim::Sub {
        for (x, m) in [(a[0], a[1]), (a[1], a[0])] {
            if free(f, m) && mean_along(f, k, x, m) {
                let zero = f.float(0.0, span)?;
                return simplify(f, prim_expr(Prim::Mul, &[zero, m]), Scalar::Float, span).map(Some);
            }
        }
    }
    let rebuilt = match prim {
        Prim::Add | Prim::Sub => {
            // The left side first: a side that is no deviation ends the search (shared terms would
            // otherwise be searched once per path).
            let Some(x) = deviations(f, k, a[0], span)? else {
                return Ok(None);
            };
            let Some(y) = deviations(f, k, a[1], span)? else {
                return Ok(None);
            };
            vec![x, y]
        }
        Prim::Neg => match deviations(f, k, a[0], span)? {
            Some(x) => vec![x],
            None => return Ok(None),
        },
        Prim::Mul if free(f, a[0]) || free(f, a[1]) => {
            let (c, x) = if free(f, a[0]) { (a[0], a[1]) } else { (a[1], a[0]) };
            match deviations(f, k, x, span)? {
                Some(x) => vec![c, x],
                None => return Ok(None),
            }
        }
        Prim::Div if free(f, a[1]) => match deviations(f, k, a[0], span)? {
            Some(x) => vec![x, a[1]],
            None => return Ok(None),
        },
        Prim::Select if free(f, a[0]) && is_float(f, a[2], 0.0) => match deviations(f, k, a[1], span)? {
            Some(x) => vec![a[0], x, a[2]],
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    simplify(f, prim_expr(prim, &rebuilt), Scalar::Float, span).map(Some)
}

/// Whether `m` is `mean[k'] X(k')` unmasked over the range of `k` — inline, or a `let` whose element is
/// that mean read at plain distinct indices — with `x` equal to `X(k)` up to renaming.
fn mean_along(f: &Function, k: IndexId, x: NodeId, m: NodeId) -> bool {
    let (reduce, mut map) = match &f.node(m).expr {
        Expr::Reduce { .. } => (m, HashMap::default()),
        Expr::Load {
            tensor: TensorRef::Def(t),
            subs,
        } => {
            let def = f.tensor(*t);
            let mut map = HashMap::default();
            for (h, s) in def.indices.iter().zip(subs.iter()) {
                let Expr::Index(i) = f.node(*s).expr else { return false };
                if map.values().any(|j| *j == i) {
                    return false;
                }
                map.insert(*h, i);
            }
            if def.role != Role::Let || subs.len() != def.indices.len() {
                return false;
            }
            (def.body, map)
        }
        _ => return false,
    };
    let Expr::Reduce {
        op: ReduceOp::Mean,
        indices,
        mask: None,
        body,
    } = &f.node(reduce).expr
    else {
        return false;
    };
    let [k2] = indices[..] else { return false };
    if f.index(k2).range != f.index(k).range {
        return false;
    }
    map.insert(k2, k);
    f.same_renamed(*body, x, &map)
}

/// `sum[k] exp(X(k) - L)` where `L = logsumexp[k'] X(k')` (unmasked, over the range of `k`): the sum of a
/// softmax row, 1 wherever `L` is finite. Where it is not (a +inf or NaN among the `X`, or all of them
/// -inf), every literal term is NaN and so is `1 + 0 * L`; over an empty range both sums are 0.
fn softmax_total(f: &mut Function, k: IndexId, body: NodeId, span: Span) -> R<Option<NodeId>> {
    let lse = match (softmax_exp(f, k, body), log_softmax_exp(f, k, body)) {
        (Some(lse), _) => lse,
        // The logsumexp of the `let`, at the load's subscripts.
        (None, Some((lse, map))) => f.subst(lse, &map)?,
        (None, None) => return Ok(None),
    };
    let (zero, one) = (f.float(0.0, span)?, f.float(1.0, span)?);
    let poison = simplify(f, prim_expr(Prim::Mul, &[zero, lse]), Scalar::Float, span)?;
    let total = simplify(f, prim_expr(Prim::Add, &[one, poison]), Scalar::Float, span)?;
    unless_empty(f, k, total, span).map(Some)
}

/// `total` where the range of `k` is not empty, else 0 (an empty sum).
fn unless_empty(f: &mut Function, k: IndexId, total: NodeId, span: Span) -> R<NodeId> {
    if matches!(f.index(k).range, Dim::Const(n) if n > 0) {
        return Ok(total);
    }
    let zero = f.float(0.0, span)?;
    let count = count_of(f, &[k], span)?;
    let empty = simplify(f, prim_expr(Prim::Eq, &[count, zero]), Scalar::Bool, span)?;
    simplify(f, prim_expr(Prim::Select, &[empty, zero, total]), Scalar::Float, span)
}

/// If `n` is `exp(X(k) - L)` with `L = logsumexp[k'] X(k')` unmasked over the range of `k` (`X` the same up
/// to renaming `k'` to `k`, and `L` free of `k`): `L`.
fn softmax_exp(f: &Function, k: IndexId, n: NodeId) -> Option<NodeId> {
    let (Prim::Exp, e) = prim_of(f, n)? else { return None };
    softmax_shift(f, k, e[0])
}

/// If `d` is `X(k) - L` with `L = logsumexp[k'] X(k')` as in [`softmax_exp`]: `L`.
fn softmax_shift(f: &Function, k: IndexId, d: NodeId) -> Option<NodeId> {
    let (Prim::Sub, d) = prim_of(f, d)? else { return None };
    let (x, lse) = (d[0], d[1]);
    let Expr::Reduce {
        op: ReduceOp::LogSumExp,
        indices,
        mask: None,
        body,
    } = &f.node(lse).expr
    else {
        return None;
    };
    let [k2] = indices[..] else { return None };
    let same = !f.node(lse).free.contains(&k)
        && f.index(k2).range == f.index(k).range
        && f.same_renamed(*body, x, &[(k2, k)].into_iter().collect::<HashMap<_, _>>());
    same.then_some(lse)
}

/// If `n` is `exp(T[…])` of a `let` tensor `T` whose element is a log-softmax `X - logsumexp X` along the
/// axis the load reads at `k` (distillation's `lt[i, k] = t[i, k] / T - logsumexp[c] t[i, c] / T`, as
/// written): the logsumexp in `T`'s element and the map from `T`'s head to the load's subscripts.
fn log_softmax_exp(f: &Function, k: IndexId, n: NodeId) -> Option<(NodeId, HashMap<IndexId, NodeId>)> {
    let (Prim::Exp, e) = prim_of(f, n)? else { return None };
    let (t, subs, at_k) = let_load_at(f, k, e[0])?;
    let def = f.tensor(t);
    // The sum runs over the whole axis (a part of a softmax row does not sum to one).
    let own = def.indices[at_k];
    let lse = softmax_shift(f, own, def.body).filter(|_| f.index(own).range == f.index(k).range)?;
    Some((lse, def.indices.iter().copied().zip(subs).collect()))
}

/// If `n` loads a whole `let` tensor with `k` as one bare subscript and free of the others: the tensor, the
/// subscripts and the position of `k`.
fn let_load_at(f: &Function, k: IndexId, n: NodeId) -> Option<(TensorId, Vec<NodeId>, usize)> {
    let Expr::Load {
        tensor: TensorRef::Def(t),
        subs,
    } = &f.node(n).expr
    else {
        return None;
    };
    let def = f.tensor(*t);
    let at_k = subs
        .iter()
        .position(|s| matches!(f.node(*s).expr, Expr::Index(i) if i == k))
        .filter(|_| def.role == Role::Let && subs.len() == def.indices.len())?;
    let others_free = (subs.iter().enumerate()).all(|(j, s)| j == at_k || !f.node(*s).free.contains(&k));
    others_free.then(|| (*t, subs.to_vec(), at_k))
}

/// If `body` loads a `let` tensor whose element, read at `k`, is a softmax exponential ([`softmax_exp`])
/// times, divided by or negated by factors free of `k`: that element at the load's subscripts.
fn softmax_element(f: &mut Function, k: IndexId, body: NodeId) -> R<Option<NodeId>> {
    let Some((t, subs, at_k)) = let_load_at(f, k, body) else {
        return Ok(None);
    };
    let def = f.tensor(t);
    let (element, own) = (def.body, def.indices[at_k]);
    // Factors free of `own` around exactly one softmax exponential along `own`.
    let mut n = element;
    loop {
        if softmax_exp(f, own, n).is_some() || log_softmax_exp(f, own, n).is_some() {
            break;
        }
        let free = |f: &Function, m: NodeId| !f.node(m).free.contains(&own);
        n = match prim_of(f, n) {
            Some((Prim::Mul, a)) if free(f, a[0]) => a[1],
            Some((Prim::Mul, a)) if free(f, a[1]) => a[0],
            Some((Prim::Div, a)) if free(f, a[1]) => a[0],
            Some((Prim::Neg, a)) => a[0],
            _ => return Ok(None),
        };
    }
    let map: HashMap<IndexId, NodeId> = def.indices.iter().copied().zip(subs.iter().copied()).collect();
    f.subst(element, &map).map(Some)
}

/// `sum[indices | cond] body` with one equality of `cond` resolved by substitution, if one is fusible.
fn fuse_condition(f: &mut Function, indices: &[IndexId], cond: NodeId, body: NodeId, span: Span) -> R<Option<NodeId>> {
    let parts = conjuncts(f, cond);
    for (n, part) in parts.iter().enumerate() {
        if let Some((k, e)) = fusible_eq(f, *part, indices, span)? {
            let rest: Vec<NodeId> = parts
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != n)
                .map(|(_, p)| *p)
                .collect();
            return fuse(f, indices, k, e, &rest, body, span).map(Some);
        }
    }
    Ok(None)
}

/// The conjuncts of a condition `a && b && …`.
fn conjuncts(f: &Function, c: NodeId) -> Vec<NodeId> {
    match prim_of(f, c) {
        Some((Prim::And, s)) => {
            let mut v = conjuncts(f, s[0]);
            v.extend(conjuncts(f, s[1]));
            v
        }
        _ => vec![c],
    }
}

/// `sum[indices | rest] body` with index `k` replaced by `e` and dropped from the sum.
fn fuse(
    f: &mut Function,
    indices: &[IndexId],
    k: IndexId,
    e: NodeId,
    rest: &[NodeId],
    body: NodeId,
    span: Span,
) -> R<NodeId> {
    let map: HashMap<_, _> = [(k, e)].into_iter().collect();
    let body = f.subst(body, &map)?;
    let mut cond: Option<NodeId> = None;
    for r in rest {
        let r = f.subst(*r, &map)?;
        cond = Some(match cond {
            None => r,
            Some(c) => f.prim(Prim::And, &[c, r], span)?,
        });
    }
    let left: Vec<IndexId> = indices.iter().copied().filter(|i| *i != k).collect();
    if left.is_empty() {
        return match cond {
            None => Ok(body),
            Some(c) => {
                let zero = f.float(0.0, span)?;
                f.prim(Prim::Select, &[c, body, zero], span)
            }
        };
    }
    reduce(f, ReduceOp::Sum, &left, cond, body, Scalar::Float, span)
}

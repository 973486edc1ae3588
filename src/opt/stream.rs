//! Pairwise tensors recomputed a row at a time: the optimized program in memory linear in its inputs.
//!
//! A contrastive loss over a batch builds matrices over pairs (`sim[i, j]` of NT-Xent, their exponentials
//! and adjoints): `B²` floats each, 16 GiB at B = 65,536. Where a call's buffers would not fit in its
//! memory budget, [`rows`] rewrites the program so that no such tensor is materialized whole:
//! - a reader that reduces over a pair or reads single pairs (`sum[j] exp(sim[i, j])`, a diagonal
//!   `sim[i, i]`, a column `sum[j] exp(sim[j, i])`) computes the pair's value where it reads it (the
//!   tensor is inlined, its own inner sums with it);
//! - a reader that reads a row of pairs for every element of a row of its own (the gradient's products
//!   `grad[i, d] = sum[j] w[i, j] · x[j, d]`, which would recompute `w[i, j]` for each `d`) gets a copy
//!   of the tensor of its own, indexed by the reader's outer index first (so a column read becomes a row
//!   of the transposed copy; a reader laid out across the pairs it reads, `[D, B]`, is turned to `[B, D]`
//!   first), that only it reads: the loop plan ([`crate::backend::loops::Plan::streaming`]) runs the copy
//!   in the reader's row group, where it is row-private: one row per running call in the JIT, one per
//!   running block or warp in the CUDA kernels ([`crate::backend::cuda::Program::slotted`]);
//! - the dot products under the similarities (`sum[d] a[i, d] * b[j, d]`, the costly part of a pair)
//!   are not inlined: every reader of a row or a column of one gets such a copy (a sum over pairs as well
//!   as a product), and the copies of one dot product's rows that run in one row group are one copy
//!   (`share_in_groups`): each row of it is computed once per group, not once per reader (a symmetric
//!   one's column is its row).
//!
//! The JIT runs the copies of dot products, and the products of a row of pairs with a matrix, a block of
//! rows at a time as matrix products ([`crate::backend::loops::Plan::streaming_tiled`]). The work still
//! grows (each group computes its rows of the dot products again, and a reader that inlines a pair
//! recomputes what lies above it, where a materialized program computes each dot product once), so the
//! JIT streams only calls whose buffers would not fit in the memory budget
//! ([`pairwise`] names the tensors at the call's sizes), and the CUDA kernels only when asked
//! (`Compiler::stream_pairwise`; [`pairwise_at_any_size`]).

use std::collections::HashMap;

use crate::ir::{Dim, Expr, Function, IndexId, NodeId, Role, TensorDef, TensorId, TensorRef, TooDeep};

type R<T> = Result<T, TooDeep>;

/// Per tensor of `f`: whether it is a pairwise `let` to stream at these dimension sizes: one over pairs
/// ([`pairwise_at_any_size`]) with more elements than the largest input.
pub fn pairwise(f: &Function, sizes: &[i64]) -> Vec<bool> {
    let largest = (f.inputs.iter())
        .map(|i| Dim::elements(&i.shape, sizes))
        .max()
        .unwrap_or(0);
    (f.tensors.iter().zip(pairwise_at_any_size(f)))
        .map(|(t, over_pairs)| over_pairs && f.elements(t, sizes) > largest.max(1))
        .collect()
}

/// Per tensor of `f`: whether it is a `let` over pairs, whose size no input bounds: a float or condition
/// `let` over two indices or more whose dimension symbols (with repeats: `[B, B]` has two `B`s; `2 * B`
/// one) are not among those of any one input's shape (`[B, D]`). Index tensors (an ordering, a
/// selection) stay materialized: recomputing one where it is read costs a sort per read. What a backend
/// compiled before it knows a call's sizes streams.
pub fn pairwise_at_any_size(f: &Function) -> Vec<bool> {
    let symbols = |shape: &[Dim]| -> Vec<crate::ir::DimId> {
        let mut v: Vec<_> = shape.iter().flat_map(factors).collect();
        v.sort();
        v
    };
    let inputs: Vec<Vec<crate::ir::DimId>> = f.inputs.iter().map(|i| symbols(&i.shape)).collect();
    let within = |mine: &[crate::ir::DimId], input: &[crate::ir::DimId]| {
        let mut left = input.to_vec();
        mine.iter().all(|s| match left.iter().position(|d| d == s) {
            Some(p) => {
                left.remove(p);
                true
            }
            None => false,
        })
    };
    (f.tensors.iter().enumerate())
        .map(|(k, t)| {
            let mine = symbols(&f.tensor_shape(TensorId(k as u32)));
            t.role == Role::Let
                && t.scalar != crate::ir::Scalar::Int
                && t.indices.len() >= 2
                && !inputs.iter().any(|i| within(&mine, i))
        })
        .collect()
}

/// The symbols whose product a dimension grows as: `B * B` as two `B`s, `B + M` (a concatenation) as the
/// larger side's.
fn factors(d: &Dim) -> Vec<crate::ir::DimId> {
    match d {
        Dim::Const(_) => Vec::new(),
        Dim::Sym(s) => vec![*s],
        Dim::Mul(a, b) => [factors(a), factors(b)].concat(),
        Dim::Add(a, b) | Dim::Sub(a, b) => {
            let (a, b) = (factors(a), factors(b));
            if a.len() >= b.len() { a } else { b }
        }
    }
}

/// `f` with the tensors `stream` marks computed where they are read (see the module doc). The results
/// are the same up to f32 rounding.
pub fn rows(f: &Function, stream: &[bool]) -> R<Function> {
    // The streamed dot products (`sum[d] x[i, d] * y[j, d]`, the Gram matrices under the similarities)
    // stay tensors while the others are inlined, so that every reader finds them as such.
    let dots: Vec<bool> = (f.tensors.iter().zip(stream))
        .map(|(t, s)| *s && t.indices.len() == 2 && is_sum(f, t.body))
        .collect();
    let others: Vec<bool> = stream.iter().zip(&dots).map(|(s, d)| *s && !d).collect();
    let (copied, inline, _) = with_row_copies(f, &others, 2)?;
    let inlined = super::simplify::rebuild_inlining(&copied, &HashMap::new(), inline)?;
    // Then each reader of a row or a column of a dot product gets a copy of it indexed by its own row;
    // copies of one dot product's rows (or columns) in one row group are one copy ([`share_in_groups`]).
    let dot_names: Vec<&str> = (f.tensors.iter().zip(&dots))
        .filter(|(_, d)| **d)
        .map(|(t, _)| t.name.as_str())
        .collect();
    let in_inlined: Vec<bool> = (inlined.tensors.iter())
        .map(|t| dot_names.contains(&t.name.as_str()))
        .collect();
    let (copied, inline, copies) = with_row_copies(&inlined, &in_inlined, 1)?;
    let inlined = super::simplify::rebuild_inlining(&copied, &HashMap::new(), inline)?;
    let mut out = super::simplify::rebuild(&inlined)?;
    unshadow(&mut out)?;
    share_in_groups(&out, &copies)
}

/// Whether `n` is an unmasked sum (the element of a dot product).
fn is_sum(f: &Function, n: NodeId) -> bool {
    matches!(
        f.node(n).expr,
        Expr::Reduce {
            op: crate::ir::ReduceOp::Sum,
            mask: None,
            ..
        }
    )
}

/// `f` with the copies of one tensor's rows (or of its columns) that run in one row group of its
/// streaming plan read as one: each reader of a later one reads the first, and the later ones are
/// dropped. (NT-Xent's forward group reads the rows of `a·aᵀ` in two sums, its gradient group the columns
/// of `a·bᵀ` in three: each is computed once per row instead of once per reader.) Kept only where every
/// copy stays row-private in the new plan; else `f` as it is. `copies`: per copy's name, its source's
/// name and whether it is transposed.
fn share_in_groups(f: &Function, copies: &HashMap<String, (String, bool)>) -> R<Function> {
    use crate::backend::loops::Plan;
    let plan = Plan::streaming(f);
    let mut alias: HashMap<TensorId, TensorId> = HashMap::new();
    for group in &plan.groups {
        let mut first: HashMap<&(String, bool), TensorId> = HashMap::new();
        for n in &group.members {
            let t = plan.nests[*n].tensor;
            if let Some(source) = copies.get(&f.tensor(t).name) {
                match first.get(source) {
                    Some(one) => {
                        alias.insert(t, *one);
                    }
                    None => {
                        first.insert(source, t);
                    }
                }
            }
        }
    }
    if alias.is_empty() {
        return Ok(f.clone());
    }
    let mut redirected = f.clone();
    redirect_loads(&mut redirected, &alias)?;
    let shared = super::simplify::rebuild(&redirected)?;
    let plan = Plan::streaming(&shared);
    let private = (shared.tensors.iter().enumerate())
        .filter(|(_, t)| copies.contains_key(&t.name))
        .all(|(k, _)| plan.row_private[shared.inputs.len() + k]);
    Ok(if private { shared } else { f.clone() })
}

/// Loads of the tensors in `alias` read the tensor it maps them to (of the same shape).
fn redirect_loads(f: &mut Function, alias: &HashMap<TensorId, TensorId>) -> R<()> {
    rebuild_nodes(f, |_, expr, _| {
        Ok(match expr {
            Expr::Load {
                tensor: TensorRef::Def(t),
                subs,
            } if alias.contains_key(&t) => Expr::Load {
                tensor: TensorRef::Def(alias[&t]),
                subs,
            },
            expr => expr,
        })
    })
}

/// Gives a reduction fresh indices where a reduction inside it binds one of its indices again (a pairwise
/// tensor inlined into a reader's reduction over the same index, or at a subscript computed by a
/// reduction over it): the code generators keep one loop variable per index, so each index is bound once
/// on any path. Nodes are rebuilt in arena order (operands first); what they compute is unchanged.
fn unshadow(f: &mut Function) -> R<()> {
    // The indices bound by reductions at or below each node (new nodes included).
    let mut below: HashMap<NodeId, Vec<IndexId>> = HashMap::new();
    rebuild_nodes(f, |f, expr, span| {
        Ok(match expr {
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } if (mask.iter().chain([&body]))
                .flat_map(|n| bound_below(f, *n, &mut below))
                .any(|i| indices.contains(&i)) =>
            {
                let mut to = HashMap::new();
                let mut fresh = Vec::with_capacity(indices.len());
                for i in indices.iter() {
                    let var = f.index(*i).clone();
                    let j = f.add_index(format!("{}'", var.name), var.range, var.span);
                    to.insert(*i, f.add(Expr::Index(j), crate::ir::Scalar::Int, span)?);
                    fresh.push(j);
                }
                Expr::Reduce {
                    op,
                    indices: fresh.into(),
                    mask: mask.map(|m| f.subst(m, &to)).transpose()?,
                    body: f.subst(body, &to)?,
                }
            }
            expr => expr,
        })
    })
}

/// Rebuilds every node of `f` in arena order (operands first): each one's expression, its operands
/// already rebuilt, passes through `rewrite` (which may add nodes); the tensors' elements follow.
fn rebuild_nodes(
    f: &mut Function,
    mut rewrite: impl FnMut(&mut Function, Expr, crate::diag::Span) -> R<Expr>,
) -> R<()> {
    let count = f.nodes().len();
    let mut map: Vec<NodeId> = Vec::with_capacity(count);
    for k in 0..count {
        let node = f.nodes()[k].clone();
        let span = f.span(NodeId(k as u32));
        let expr = node.expr.try_map_operands(|o| Ok::<_, TooDeep>(map[o.index()]))?;
        let expr = rewrite(f, expr, span)?;
        map.push(f.add(expr, node.scalar, span)?);
    }
    for t in &mut f.tensors {
        t.body = map[t.body.index()];
    }
    Ok(())
}

/// The indices reductions at or below `n` bind (memoized in `below`).
fn bound_below(f: &Function, n: NodeId, below: &mut HashMap<NodeId, Vec<IndexId>>) -> Vec<IndexId> {
    if let Some(b) = below.get(&n) {
        return b.clone();
    }
    let mut out: Vec<IndexId> = match &f.node(n).expr {
        Expr::Reduce { indices, .. } => indices.to_vec(),
        _ => Vec::new(),
    };
    for o in f.node(n).expr.operands() {
        for i in bound_below(f, o, below) {
            if !out.contains(&i) {
                out.push(i);
            }
        }
    }
    below.insert(n, out.clone());
    out
}

/// The copies of the pairwise tensors `stream` marks that each reader of `rank` indices or more gets
/// (see the module doc), inserted before it: `let T_row_R[c0, c1] = T[c0, c1]` (or `T[c1, c0]` for a
/// column read), with loads of `T` in the reader redirected to it. Originals keep their names; copies
/// get new ones and new head indices (so no later rebuild finds a copy equal to its original or to
/// another reader's copy). Also: per tensor of the result, whether it is a streamed original (to be
/// inlined); and per copy's name, its original's name and whether it reads it transposed.
#[allow(clippy::type_complexity)]
fn with_row_copies(
    f: &Function,
    stream: &[bool],
    rank: usize,
) -> R<(Function, Vec<bool>, HashMap<String, (String, bool)>)> {
    let mut names: HashMap<String, (String, bool)> = HashMap::new();
    let mut dst = f.empty_like();
    let mut ids: Vec<Option<TensorId>> = vec![None; f.tensors.len()];
    // Per tensor: its axes reordered (new axis `i` is old axis `order[i]`), for a `let` whose rows are
    // not along the pairs it reads (a product laid out [D, B] reading `w[i, j]` along its second axis).
    let mut orders: Vec<Option<Vec<usize>>> = vec![None; f.tensors.len()];
    // A symmetric tensor's column is its row: a column read gets a row copy.
    let symmetric = super::transpose::symmetric_tensors(f);
    for (k, t) in f.tensors.iter().enumerate() {
        let mut redirect: HashMap<NodeId, (TensorId, IndexId, IndexId)> = HashMap::new();
        let mut def = t.clone();
        if !stream[k] && t.indices.len() >= rank.max(1) {
            let reads = pair_reads(f, t.body, stream);
            let along = |i: IndexId| reads.iter().any(|(_, _, a, b)| *a == i || *b == i);
            if t.role == Role::Let
                && !along(t.indices[0])
                && let Some(p) = t.indices.iter().position(|i| along(*i))
            {
                let mut order: Vec<usize> = (0..t.indices.len()).collect();
                order.swap(0, p);
                def.indices = order.iter().map(|o| t.indices[*o]).collect();
                orders[k] = Some(order);
            }
            let outer = def.indices[0];
            // (original, transposed) → copy
            let mut copies: HashMap<(TensorId, bool), TensorId> = HashMap::new();
            for (n, src, a, b) in reads {
                let (transposed, other) = match (a == outer, b == outer) {
                    (true, false) => (false, b),
                    (false, true) => (!symmetric[src.index()], a),
                    _ => continue,
                };
                let copy = match copies.get(&(src, transposed)) {
                    Some(c) => *c,
                    None => {
                        let c = add_copy(f, &mut dst, &ids, src, transposed, &t.name)?;
                        copies.insert((src, transposed), c);
                        let source = (f.tensor(src).name.clone(), transposed);
                        names.insert(dst.tensor(c).name.clone(), source);
                        c
                    }
                };
                redirect.insert(n, (copy, outer, other));
            }
        }
        let mut memo = HashMap::new();
        let mut copier = Copier {
            f,
            dst: &mut dst,
            ids: &ids,
            orders: &orders,
            redirect: &redirect,
            memo: &mut memo,
        };
        def.body = copier.node(t.body)?;
        ids[k] = Some(dst.add_tensor(def));
    }
    let mut inline = vec![false; dst.tensors.len()];
    for (k, id) in ids.iter().enumerate() {
        inline[id.expect("every tensor is copied").index()] = stream[k];
    }
    Ok((dst, inline, names))
}

/// The loads in `body` of a streamed tensor over two indices at two different bare indices: (the load,
/// the tensor, its first and its second subscript).
fn pair_reads(f: &Function, body: NodeId, stream: &[bool]) -> Vec<(NodeId, TensorId, IndexId, IndexId)> {
    let mut out = Vec::new();
    for n in f.reachable(&[body]) {
        let Expr::Load {
            tensor: TensorRef::Def(src),
            subs,
        } = &f.node(n).expr
        else {
            continue;
        };
        if !stream[src.index()] || subs.len() != 2 {
            continue;
        }
        if let (Expr::Index(a), Expr::Index(b)) = (&f.node(subs[0]).expr, &f.node(subs[1]).expr)
            && a != b
        {
            out.push((n, *src, *a, *b));
        }
    }
    out
}

/// Adds `let {T}_{row|col}_{reader}[c0, c1] = T[c0, c1]` (`T[c1, c0]` when `transposed`) to `dst`.
fn add_copy(
    f: &Function,
    dst: &mut Function,
    ids: &[Option<TensorId>],
    src: TensorId,
    transposed: bool,
    reader: &str,
) -> R<TensorId> {
    let def = f.tensor(src);
    let shape = f.tensor_shape(src);
    let (first, second) = if transposed { (1, 0) } else { (0, 1) };
    let span = def.span;
    let c0 = dst.add_index(
        format!("{}.r", f.index(def.indices[first]).name),
        shape[first].clone(),
        span,
    );
    let c1 = dst.add_index(
        format!("{}.c", f.index(def.indices[second]).name),
        shape[second].clone(),
        span,
    );
    let (i0, i1) = (
        dst.add(Expr::Index(c0), crate::ir::Scalar::Int, span)?,
        dst.add(Expr::Index(c1), crate::ir::Scalar::Int, span)?,
    );
    let subs = if transposed { [i1, i0] } else { [i0, i1] };
    let original = ids[src.index()].expect("a reader comes after what it reads");
    let body = dst.add(
        Expr::Load {
            tensor: TensorRef::Def(original),
            subs: subs.into(),
        },
        def.scalar,
        span,
    )?;
    let side = if transposed { "col" } else { "row" };
    Ok(dst.add_tensor(TensorDef {
        name: format!("{}_{side}_{reader}", def.name),
        indices: vec![c0, c1],
        body,
        scalar: def.scalar,
        role: Role::Let,
        span,
    }))
}

/// Copies nodes of `f` into `dst`: tensors renumbered by `ids` (their subscripts reordered where their
/// axes are, `orders`), the loads in `redirect` reading their copy at (outer, other) instead.
struct Copier<'a> {
    f: &'a Function,
    dst: &'a mut Function,
    ids: &'a [Option<TensorId>],
    orders: &'a [Option<Vec<usize>>],
    redirect: &'a HashMap<NodeId, (TensorId, IndexId, IndexId)>,
    memo: &'a mut HashMap<NodeId, NodeId>,
}

impl Copier<'_> {
    fn node(&mut self, n: NodeId) -> R<NodeId> {
        if let Some(done) = self.memo.get(&n) {
            return Ok(*done);
        }
        let f = self.f;
        let node = f.node(n);
        let span = f.span(n);
        let expr = if let Some((copy, outer, other)) = self.redirect.get(&n) {
            let subs = [
                self.dst.add(Expr::Index(*outer), crate::ir::Scalar::Int, span)?,
                self.dst.add(Expr::Index(*other), crate::ir::Scalar::Int, span)?,
            ];
            Expr::Load {
                tensor: TensorRef::Def(*copy),
                subs: subs.into(),
            }
        } else {
            match node.expr.try_map_operands(|o| self.node(o))? {
                // An earlier tensor: its new id, its subscripts in its new order of axes.
                Expr::Load {
                    tensor: TensorRef::Def(t),
                    subs,
                } => Expr::Load {
                    tensor: TensorRef::Def(self.ids[t.index()].expect("loads read earlier tensors")),
                    subs: match &self.orders[t.index()] {
                        Some(order) => order.iter().map(|o| subs[*o]).collect(),
                        None => subs,
                    },
                },
                expr => expr,
            }
        };
        let id = self.dst.add(expr, node.scalar, span)?;
        self.memo.insert(n, id);
        Ok(id)
    }
}

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
//!   running block or warp in the CUDA kernels ([`crate::backend::cuda::Program::slotted`]).
//!
//! The work grows (each pair's value is recomputed by each reader, a dot product each time, where a
//! materialized program computes it once with a matrix product), so the JIT streams only calls whose
//! buffers would not fit in the memory budget ([`pairwise`] names the tensors at the call's sizes), and the
//! CUDA kernels only when asked (`Compiler::stream_pairwise`; [`pairwise_at_any_size`]).

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
    let (copied, inline) = with_row_copies(f, stream)?;
    let inlined = super::simplify::rebuild_inlining(&copied, &HashMap::new(), inline)?;
    let mut out = super::simplify::rebuild(&inlined)?;
    unshadow(&mut out)?;
    Ok(out)
}

/// Gives a reduction fresh indices where a reduction inside it binds one of its indices again (a pairwise
/// tensor inlined into a reader's reduction over the same index, or at a subscript computed by a
/// reduction over it): the code generators keep one loop variable per index, so each index is bound once
/// on any path. Nodes are rebuilt in arena order (operands first); what they compute is unchanged.
fn unshadow(f: &mut Function) -> R<()> {
    let count = f.nodes().len();
    let mut map: Vec<NodeId> = Vec::with_capacity(count);
    // The indices bound by reductions at or below each node (new nodes included).
    let mut below: HashMap<NodeId, Vec<IndexId>> = HashMap::new();
    for k in 0..count {
        let node = f.nodes()[k].clone();
        let span = f.span(NodeId(k as u32));
        let expr = match node.expr.try_map_operands(|o| Ok::<_, TooDeep>(map[o.index()]))? {
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
        };
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

/// The copies of pairwise tensors each matrix reader gets (see the module doc), inserted before it:
/// `let T_row_R[c0, c1] = T[c0, c1]` (or `T[c1, c0]` for a column read), with loads of `T` in the reader
/// redirected to it. Originals keep their names; copies get new ones and new head indices (so no later
/// rebuild finds a copy equal to its original or to another reader's copy). Also: per tensor of the
/// result, whether it is a streamed original (to be inlined).
fn with_row_copies(f: &Function, stream: &[bool]) -> R<(Function, Vec<bool>)> {
    let mut dst = f.empty_like();
    let mut ids: Vec<Option<TensorId>> = vec![None; f.tensors.len()];
    // Per tensor: its axes reordered (new axis `i` is old axis `order[i]`), for a `let` whose rows are
    // not along the pairs it reads (a product laid out [D, B] reading `w[i, j]` along its second axis).
    let mut orders: Vec<Option<Vec<usize>>> = vec![None; f.tensors.len()];
    for (k, t) in f.tensors.iter().enumerate() {
        let mut redirect: HashMap<NodeId, (TensorId, IndexId, IndexId)> = HashMap::new();
        let mut def = t.clone();
        if !stream[k] && t.indices.len() >= 2 {
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
                    (false, true) => (true, a),
                    _ => continue,
                };
                let copy = match copies.get(&(src, transposed)) {
                    Some(c) => *c,
                    None => {
                        let c = add_copy(f, &mut dst, &ids, src, transposed, &t.name)?;
                        copies.insert((src, transposed), c);
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
    Ok((dst, inline))
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

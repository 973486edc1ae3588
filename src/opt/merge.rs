//! Merging adjacent axes that every access reads together: `mean[b, k] … z[b, k, d]` over [B, K, D] is
//! `mean[q] … z[q, d]` over [B · K, D], the same addresses in a row-major buffer. The code generators pick
//! their row strategies (a softmax row's kept exponentials, the 8-lane row helpers) for one row index and
//! one reduced index; merged, a loss over heads or pixels is a loss over rows.
//!
//! A pair of indices (i, j) merges into one index of range |i| · |j| when the two are bound next to each
//! other, in this order (adjacent in a `let` head or a reduction), and every use of either is a subscript
//! of a load with i and j on adjacent axes of the tensor, in this order, whose extents are their ranges;
//! and when every load of each such tensor reads those two axes through merging pairs (a `let` also binds
//! them so). Tensors a caller sees keep their shape (the loss, `out` outputs, state and its keys, extern
//! arguments and outputs, a per-sample loss's cotangent); an input's axes merge, so its buffer is read
//! with the merged shape (the caller's shape is checked against the loss as written, and gradients are
//! reported in it). Runs before differentiation: the gradient of the merged loss is the merged gradient.

use std::collections::{HashMap, HashSet};

use crate::ir::{Dim, Expr, Function, IndexId, NodeId, Role, TensorDef, TensorRef};

/// A tensor's axis pair (a, a + 1), by the tensor and `a`.
type AxisPair = (TensorRef, usize);

/// `f` with every mergeable pair of axes merged (repeatedly: [B, C, H, W] read as [B · C, H · W] where
/// that holds), or None where none merges.
pub fn merge_axes(f: &Function) -> Option<Function> {
    let mut out: Option<Function> = None;
    for _ in 0..4 {
        let current = out.as_ref().unwrap_or(f);
        match merge_once(current) {
            Some(next) => out = Some(next),
            None => break,
        }
    }
    out
}

/// Which tensors keep their shape.
fn fixed(f: &Function) -> HashSet<TensorRef> {
    let mut keep = HashSet::new();
    for (k, input) in f.inputs.iter().enumerate() {
        let keyed = f
            .inputs
            .iter()
            .any(|i| i.state.as_ref().is_some_and(|s| s.key as usize == k));
        if input.state.is_some() || input.produced_by.is_some() || keyed || f.cotangent == Some(k as u32) {
            keep.insert(TensorRef::Input(k as u32));
        }
    }
    for (t, def) in f.tensors.iter().enumerate() {
        if def.role != Role::Let {
            keep.insert(TensorRef::Def(crate::ir::TensorId(t as u32)));
        }
    }
    for call in &f.externs {
        keep.extend(call.args.iter().map(|a| a.tensor));
    }
    keep
}

fn merge_once(f: &Function) -> Option<Function> {
    let index_node: HashMap<IndexId, NodeId> = (f.nodes().iter().enumerate())
        .filter_map(|(n, node)| match node.expr {
            Expr::Index(i) => Some((i, NodeId(n as u32))),
            _ => None,
        })
        .collect();
    let as_index = |n: NodeId| match f.node(n).expr {
        Expr::Index(i) => Some(i),
        _ => None,
    };
    // Candidates: adjacent binders, the inner pairs first (so that of (b, i) and (i, j), (i, j) wins).
    let mut candidates: Vec<(IndexId, IndexId)> = Vec::new();
    for def in &f.tensors {
        candidates.extend(def.indices.windows(2).rev().map(|w| (w[0], w[1])));
    }
    for node in f.nodes() {
        if let Expr::Reduce { indices, .. } = &node.expr {
            candidates.extend(indices.windows(2).rev().map(|w| (w[0], w[1])));
        }
    }
    // Every use of an index: (user, operand position). A body that is a bare index is a use too.
    let mut uses: HashMap<IndexId, Vec<(NodeId, usize)>> = HashMap::new();
    for (n, node) in f.nodes().iter().enumerate() {
        for (k, op) in node.expr.operands().iter().enumerate() {
            if let Some(i) = as_index(*op) {
                uses.entry(i).or_default().push((NodeId(n as u32), k));
            }
        }
    }
    let bare_bodies: HashSet<IndexId> = f.tensors.iter().filter_map(|t| as_index(t.body)).collect();
    let keep = fixed(f);
    // A pair whose every use is a load reading it on adjacent axes of their extents: the axis pairs it
    // reads.
    let reads = |(i, j): (IndexId, IndexId)| -> Option<Vec<AxisPair>> {
        if bare_bodies.contains(&i) || bare_bodies.contains(&j) || i == j {
            return None;
        }
        // (An index no node reads, as `j` in `sum[i, j] x[i]`, pairs with nothing.)
        let (ni, nj) = (Some(index_node.get(&i)?), Some(index_node.get(&j)?));
        let mut axes = Vec::new();
        for (index, other, first) in [(i, nj, true), (j, ni, false)] {
            for &(user, k) in uses.get(&index).map_or(&[][..], |v| &v[..]) {
                let Expr::Load { tensor, subs } = &f.node(user).expr else {
                    return None;
                };
                let a = if first { k } else { k.checked_sub(1)? };
                let partner = if first { subs.get(k + 1) } else { subs.get(a) };
                if partner.copied() != other.copied() || keep.contains(tensor) {
                    return None;
                }
                let shape = f.ref_shape(*tensor);
                if shape[a] != f.index(i).range || shape[a + 1] != f.index(j).range {
                    return None;
                }
                axes.push((*tensor, a));
            }
        }
        Some(axes)
    };
    let mut chosen: Vec<((IndexId, IndexId), Vec<AxisPair>)> = Vec::new();
    let mut taken: HashSet<IndexId> = HashSet::new();
    for pair in candidates {
        if taken.contains(&pair.0) || taken.contains(&pair.1) {
            continue;
        }
        if let Some(axes) = reads(pair) {
            taken.insert(pair.0);
            taken.insert(pair.1);
            chosen.push((pair, axes));
        }
    }
    // Keep the pairs whose axis pairs merge everywhere: every load of the tensor reads those axes through
    // a kept pair, and a `let` binds them with one (until nothing changes).
    loop {
        let pairs: HashSet<(IndexId, IndexId)> = chosen.iter().map(|(p, _)| *p).collect();
        let merges = |(tensor, a): AxisPair| -> bool {
            if keep.contains(&tensor) {
                return false;
            }
            if let TensorRef::Def(t) = tensor {
                let head = &f.tensor(t).indices;
                if !pairs.contains(&(head[a], head[a + 1])) {
                    return false;
                }
            }
            f.nodes().iter().all(|node| match &node.expr {
                Expr::Load { tensor: t, subs } if *t == tensor => match (as_index(subs[a]), as_index(subs[a + 1])) {
                    (Some(x), Some(y)) => pairs.contains(&(x, y)),
                    _ => false,
                },
                _ => true,
            })
        };
        let before = chosen.len();
        chosen.retain(|(_, axes)| axes.iter().all(|ax| merges(*ax)));
        // A `let` head pair merges only with its tensor's axes.
        let heads_ok = |(i, j): (IndexId, IndexId)| {
            f.tensors.iter().enumerate().all(|(t, def)| {
                match def.indices.windows(2).position(|w| w[0] == i && w[1] == j) {
                    Some(a) => merges((TensorRef::Def(crate::ir::TensorId(t as u32)), a)),
                    None => true,
                }
            })
        };
        chosen.retain(|(p, _)| heads_ok(*p));
        if chosen.len() == before {
            break;
        }
    }
    if chosen.is_empty() {
        return None;
    }
    // Each tensor's merged axes must not overlap ((0, 1) and (1, 2)): the later pair waits for a next round.
    let mut merged_axes: HashMap<TensorRef, Vec<usize>> = HashMap::new();
    for (_, axes) in &chosen {
        for (t, a) in axes {
            let v = merged_axes.entry(*t).or_default();
            if !v.contains(a) {
                v.push(*a);
            }
        }
    }
    if merged_axes.values().any(|v| v.iter().any(|a| v.contains(&(a + 1)))) {
        return None;
    }
    rewrite(f, &chosen.iter().map(|(p, _)| *p).collect::<Vec<_>>(), &merged_axes)
}

/// `items` with each pair (k, k + 1) for which `pair(k)` gives a value replaced by that value.
fn collapse<T: Clone>(items: &[T], pair: impl Fn(usize) -> Option<T>) -> Vec<T> {
    let mut out = Vec::new();
    let mut k = 0;
    while k < items.len() {
        match pair(k) {
            Some(joined) if k + 1 < items.len() => {
                out.push(joined);
                k += 2;
            }
            _ => {
                out.push(items[k].clone());
                k += 1;
            }
        }
    }
    out
}

fn rewrite(
    f: &Function,
    pairs: &[(IndexId, IndexId)],
    merged_axes: &HashMap<TensorRef, Vec<usize>>,
) -> Option<Function> {
    let mut g = f.empty_like();
    let mut fused: HashMap<IndexId, IndexId> = HashMap::new();
    let mut first: HashMap<(IndexId, IndexId), IndexId> = HashMap::new();
    for &(i, j) in pairs {
        let (a, b) = (f.index(i), f.index(j));
        let range = Dim::Mul(Box::new(a.range.clone()), Box::new(b.range.clone())).fold();
        let q = g.add_index(format!("{}{}", a.name, b.name), range, a.span);
        fused.insert(i, q);
        fused.insert(j, q);
        first.insert((i, j), q);
    }
    let merge_list = |list: &[IndexId]| {
        collapse(list, |k| {
            list.get(k + 1).and_then(|next| first.get(&(list[k], *next)).copied())
        })
    };
    let at = |t: TensorRef, a: usize| merged_axes.get(&t).is_some_and(|v| v.contains(&a));
    for (k, input) in g.inputs.iter_mut().enumerate() {
        let shape = &input.shape;
        let both = |a: usize| Dim::Mul(Box::new(shape[a].clone()), Box::new(shape[a + 1].clone())).fold();
        input.shape = collapse(shape, |a| at(TensorRef::Input(k as u32), a).then(|| both(a)));
    }
    let mut map: Vec<NodeId> = Vec::with_capacity(f.nodes().len());
    for (n, node) in f.nodes().iter().enumerate() {
        let m = |x: NodeId| map[x.index()];
        let expr = match &node.expr {
            Expr::Index(i) => Expr::Index(*fused.get(i).unwrap_or(i)),
            // A merged pair's first subscript is the merged index.
            Expr::Load { tensor, subs } => Expr::Load {
                tensor: *tensor,
                subs: collapse(subs, |a| at(*tensor, a).then(|| subs[a]))
                    .into_iter()
                    .map(m)
                    .collect(),
            },
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => Expr::Reduce {
                op: *op,
                indices: merge_list(indices).into(),
                mask: mask.map(m),
                body: m(*body),
            },
            e => {
                let Ok(e) = e.try_map_operands(|x| Ok::<_, std::convert::Infallible>(m(x)));
                e
            }
        };
        map.push(g.add(expr, node.scalar, f.span(NodeId(n as u32))).ok()?);
    }
    for def in &f.tensors {
        g.add_tensor(TensorDef {
            name: def.name.clone(),
            indices: merge_list(&def.indices),
            body: map[def.body.index()],
            scalar: def.scalar,
            role: def.role,
            span: def.span,
        });
    }
    debug_assert_eq!(crate::ir::verify::verify(&g), Ok(()), "{g}");
    Some(g)
}

//! Reads of symmetric matrices in loop order.
//!
//! A two-index tensor `T[p, q]` over one range is symmetric when its element with `p` and `q` swapped is the
//! same computation: the same operations on swapped indices, up to the order of the operands of `+`, `*`,
//! `==`, `!=` (which give the same bits), `&&` and `||`, and of a difference that is squared or taken the
//! absolute value of (`(a - b) * (a - b)`, a squared distance), reading symmetric tensors with either subscript order. A
//! Gram matrix `sum[d] b[p, d] * b[q, d]` is one, and so is NT-Xent's `bb[p, q] = r4[p, q] / (tau * (nb[p] *
//! nb[q]))`. A read `T[a, b]` of a symmetric tensor is rewritten `T[b, a]` where the element's other
//! matrix reads end in `a` more often than in `b` (so the lanes run along the same index for all of them),
//! or as often and `a` is bound inside `b` (a reduction index inside the head): the innermost loop then
//! walks along a row instead of down a column. NT-Xent's gradient reads `bb[j, h0]` summed over `j`: a gathered lane per element before, a
//! contiguous row after. The values are the same (a backend whose matrix products are not computed in
//! mirrored order may differ in the last bits).

use rustc_hash::FxHashMap as HashMap;

use crate::ir::{Expr, Function, IndexId, NodeId, TensorDef, TensorId, TensorRef, TooDeep};
use crate::prims::Prim;

type R<T> = Result<T, TooDeep>;

/// Rebuilds `src` with every read of a symmetric tensor in loop order.
pub fn contiguous_reads(src: &Function) -> R<Function> {
    let symmetric = symmetric_tensors(src);
    if !symmetric.contains(&true) {
        return Ok(src.clone());
    }
    let mut dst = src.empty_like();
    for t in &src.tensors {
        let depth: HashMap<IndexId, usize> = t.indices.iter().enumerate().map(|(d, i)| (*i, d)).collect();
        // Each index's count as the last subscript of the element's other matrix reads.
        let mut last: HashMap<IndexId, usize> = HashMap::default();
        for n in src.reachable(&[t.body]) {
            if let Expr::Load { tensor, subs } = &src.node(n).expr
                && subs.len() >= 2
                && !matches!(tensor, TensorRef::Def(d) if symmetric[d.index()])
                && let Expr::Index(i) = src.node(subs[subs.len() - 1]).expr
            {
                *last.entry(i).or_default() += 1;
            }
        }
        let mut order = Order {
            src,
            dst: &mut dst,
            symmetric: &symmetric,
            last,
            memo: HashMap::default(),
        };
        let body = order.node(t.body, &depth)?;
        dst.add_tensor(TensorDef { body, ..t.clone() });
    }
    Ok(dst)
}

/// Per tensor of `f`: whether it is symmetric (see the module doc): its element at `[q, p]` is the same
/// computation as at `[p, q]`, so reading it transposed reads the same values.
pub fn symmetric_tensors(f: &Function) -> Vec<bool> {
    let mut symmetric = vec![false; f.tensors.len()];
    for (k, t) in f.tensors.iter().enumerate() {
        if let [p, q] = t.indices[..]
            && f.index(p).range == f.index(q).range
        {
            let mut mirror = Mirror {
                f,
                swap: (p, q),
                symmetric: &symmetric,
                memo: HashMap::default(),
            };
            symmetric[k] = mirror.same(t.body, t.body);
        }
    }
    symmetric
}

/// Compares an element with its mirror image.
struct Mirror<'a> {
    f: &'a Function,
    /// The two head indices exchanged.
    swap: (IndexId, IndexId),
    /// The tensors before this one known to be symmetric.
    symmetric: &'a [bool],
    memo: HashMap<(NodeId, NodeId), bool>,
}

impl Mirror<'_> {
    fn swapped(&self, i: IndexId) -> IndexId {
        match self.swap {
            (p, q) if i == p => q,
            (p, q) if i == q => p,
            _ => i,
        }
    }

    /// Whether `b` is `a` with the two indices exchanged.
    fn same(&mut self, a: NodeId, b: NodeId) -> bool {
        let (p, q) = self.swap;
        let untouched = |f: &Function, n: NodeId| !f.node(n).free.iter().any(|i| *i == p || *i == q);
        if a == b && untouched(self.f, a) {
            return true;
        }
        if let Some(known) = self.memo.get(&(a, b)) {
            return *known;
        }
        let same = match (&self.f.node(a).expr, &self.f.node(b).expr) {
            (Expr::Index(i), Expr::Index(j)) => self.swapped(*i) == *j,
            (Expr::Load { tensor: s, subs: x }, Expr::Load { tensor: t, subs: y }) if s == t => {
                let crosswise = match s {
                    TensorRef::Def(d) => self.symmetric[d.index()] && x.len() == 2,
                    TensorRef::Input(_) => false,
                };
                let (x, y) = (x.to_vec(), y.to_vec());
                self.all(&x, &y) || (crosswise && self.all(&x, &[y[1], y[0]]))
            }
            (Expr::Prim { prim: f, args: x }, Expr::Prim { prim: g, args: y }) if f == g => {
                // `&&` and `||` are lazy, but each element is computed whole (or the call fails): two
                // elements whose operands are exchanged hold the same value.
                let commutes =
                    matches!(f, Prim::Add | Prim::Mul | Prim::Eq | Prim::Ne | Prim::And | Prim::Or) && x.len() == 2;
                // A square or an absolute value of a difference is its mirror's with the difference's
                // operands exchanged: `a - b` is `-(b - a)` exactly, and both drop the sign.
                let unsigned = match f {
                    Prim::Mul => x[0] == x[1] && y[0] == y[1],
                    Prim::Abs => true,
                    _ => false,
                };
                let (x, y) = (x.to_vec(), y.to_vec());
                self.all(&x, &y) || (commutes && self.all(&x, &[y[1], y[0]])) || (unsigned && self.opposite(x[0], y[0]))
            }
            (
                Expr::Reduce {
                    op: o1,
                    indices: i1,
                    mask: m1,
                    body: b1,
                },
                Expr::Reduce {
                    op: o2,
                    indices: i2,
                    mask: m2,
                    body: b2,
                },
            ) if o1 == o2 && i1 == i2 && !i1.iter().any(|i| *i == p || *i == q) => {
                let masks = match (m1, m2) {
                    (None, None) => true,
                    (Some(m1), Some(m2)) => self.same(*m1, *m2),
                    _ => false,
                };
                masks && self.same(*b1, *b2)
            }
            (x, y) => x == y && untouched(self.f, a),
        };
        self.memo.insert((a, b), same);
        same
    }

    /// Whether `a` and `b` are differences, `b` the mirror of `a` with its operands exchanged.
    fn opposite(&mut self, a: NodeId, b: NodeId) -> bool {
        match (&self.f.node(a).expr, &self.f.node(b).expr) {
            (
                Expr::Prim {
                    prim: Prim::Sub,
                    args: x,
                },
                Expr::Prim {
                    prim: Prim::Sub,
                    args: y,
                },
            ) => {
                let (x, y) = (x.to_vec(), y.to_vec());
                self.all(&x, &[y[1], y[0]])
            }
            _ => false,
        }
    }

    fn all(&mut self, x: &[NodeId], y: &[NodeId]) -> bool {
        x.len() == y.len() && x.iter().zip(y).all(|(a, b)| self.same(*a, *b))
    }
}

/// Rebuilds one element into `dst`, reading symmetric tensors in loop order.
struct Order<'a> {
    src: &'a Function,
    dst: &'a mut Function,
    symmetric: &'a [bool],
    /// How often each index is the last subscript of the element's other matrix reads.
    last: HashMap<IndexId, usize>,
    /// Per node of this element (each index is bound at one depth within it).
    memo: HashMap<NodeId, NodeId>,
}

impl Order<'_> {
    /// `depth`: how deep each bound index is (the head's in order, then each reduction's inside them).
    fn node(&mut self, n: NodeId, depth: &HashMap<IndexId, usize>) -> R<NodeId> {
        if let Some(done) = self.memo.get(&n) {
            return Ok(*done);
        }
        let node = self.src.node(n);
        let span = self.src.span(n);
        let expr = match node.expr.clone() {
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => {
                let mut inner = depth.clone();
                let level = depth.values().max().map_or(0, |d| d + 1);
                inner.extend(indices.iter().map(|i| (*i, level)));
                let mask = mask.map(|m| self.node(m, &inner)).transpose()?;
                let body = self.node(body, &inner)?;
                Expr::Reduce {
                    op,
                    indices,
                    mask,
                    body,
                }
            }
            Expr::Load { tensor, subs } => {
                let mut out = Vec::with_capacity(subs.len());
                for s in subs.iter() {
                    out.push(self.node(*s, depth)?);
                }
                if let TensorRef::Def(t) = tensor
                    && self.inner_first(t, &out, depth)
                {
                    out.swap(0, 1);
                }
                Expr::Load {
                    tensor,
                    subs: out.into(),
                }
            }
            other => other.try_map_operands(|o| self.node(o, depth))?,
        };
        let out = self.dst.add(expr, node.scalar, span)?;
        self.memo.insert(n, out);
        Ok(out)
    }

    /// Whether symmetric tensor `t` is better read as `t[b, a]` than as `subs` = `t[a, b]`: the element's
    /// other matrix reads end in `a` more often than in `b` (they fix which index the lanes run along),
    /// or as often and `a` is bound inside `b`.
    fn inner_first(&self, t: TensorId, subs: &[NodeId], depth: &HashMap<IndexId, usize>) -> bool {
        let index = |s: NodeId| match self.dst.node(s).expr {
            Expr::Index(i) => depth.get(&i).map(|d| (i, *d)),
            _ => None,
        };
        let [Some((a, da)), Some((b, db))] = subs.iter().map(|s| index(*s)).collect::<Vec<_>>()[..] else {
            return false;
        };
        let votes = |i: IndexId| self.last.get(&i).copied().unwrap_or(0);
        self.symmetric[t.index()] && (votes(a), da) > (votes(b), db)
    }
}

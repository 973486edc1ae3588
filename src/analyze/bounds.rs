//! Whether a loss is bounded in its differentiable inputs (for fixed data, sizes and hyperparameters), by
//! interval arithmetic over the IR: each value's interval, and whether it is finite for fixed data even
//! where the interval's ends are not known. Ranges of primitives come from [`Prim::shape`]; a softmax
//! probability `exp(e_j - logsumexp[k] e_k)` lies in [0, 1] because the term is one of the terms of the
//! `logsumexp` (matched structurally, the reduced index bound to the term's subscript).

use std::collections::HashMap;

use super::Analysis;
use crate::ir::{Expr, Function, IndexId, NodeId, ReduceOp, TensorRef, table_value};
use crate::prims::Prim;

/// A value's interval, and whether it is bounded for fixed data (where `lo`/`hi` may still be infinite:
/// they depend on the data).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// The least value.
    pub lo: f64,
    /// The greatest.
    pub hi: f64,
    /// Bounded for fixed data, sizes and hyperparameters.
    pub finite: bool,
}

impl Range {
    fn exact(x: f64) -> Range {
        Range {
            lo: x,
            hi: x,
            finite: x.is_finite(),
        }
    }

    fn any(finite: bool) -> Range {
        Range {
            lo: f64::NEG_INFINITY,
            hi: f64::INFINITY,
            finite,
        }
    }

    fn within(lo: f64, hi: f64) -> Range {
        Range { lo, hi, finite: true }
    }
}

/// Ends of a product of intervals, where an infinite end times zero counts as the whole line.
fn product(a: Range, b: Range) -> (f64, f64) {
    let ends = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi];
    if ends.iter().any(|x| x.is_nan()) {
        return (f64::NEG_INFINITY, f64::INFINITY);
    }
    (
        ends.iter().copied().fold(f64::INFINITY, f64::min),
        ends.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// The interval analysis of a function whose differentiable inputs are free.
pub struct Bounds<'a> {
    f: &'a Function,
    memo: super::Memo<Range>,
}

impl<'a> Bounds<'a> {
    /// The analysis of `f`.
    pub fn new(f: &'a Function) -> Bounds<'a> {
        Bounds {
            f,
            memo: super::Memo::default(),
        }
    }

    fn prim(&mut self, prim: Prim, args: &[NodeId]) -> Range {
        let r: Vec<Range> = args.iter().map(|a| self.node(*a)).collect();
        let all = r.iter().all(|x| x.finite);
        match prim {
            Prim::Add => Range {
                lo: r[0].lo + r[1].lo,
                hi: r[0].hi + r[1].hi,
                finite: all,
            },
            // A term of a logsumexp minus the logsumexp (a log softmax probability) is at most 0.
            Prim::Sub => Range {
                lo: r[0].lo - r[1].hi,
                hi: if term_of_logsumexp(self.f, args[0], args[1]).is_some() {
                    0f64.min(r[0].hi - r[1].lo)
                } else {
                    r[0].hi - r[1].lo
                },
                finite: all,
            },
            Prim::Neg => Range {
                lo: -r[0].hi,
                hi: -r[0].lo,
                finite: all,
            },
            Prim::Mul => {
                let (lo, hi) = product(r[0], r[1]);
                Range { lo, hi, finite: all }
            }
            Prim::Div if r[1].lo > 0.0 || r[1].hi < 0.0 => {
                let inverse = Range {
                    lo: 1.0 / r[1].hi,
                    hi: 1.0 / r[1].lo,
                    finite: true,
                };
                let (lo, hi) = product(r[0], inverse);
                Range { lo, hi, finite: all }
            }
            // A divisor that may be 0 bounds nothing, unless it is data (a count, a size).
            Prim::Div => Range::any(all && !self.free(args[1])),
            // A power with a positive exponent (a hyperparameter's by its default) of a value in [0, 1].
            Prim::Pow => match (r[1].lo, r[1].hi) {
                (lo, _) if lo > 0.0 && r[0].lo >= 0.0 && r[0].hi <= 1.0 => Range::within(0.0, 1.0),
                (lo, hi) if lo >= 0.0 && hi.is_finite() => Range::any(r[0].finite),
                _ => Range::any(false),
            },
            Prim::Max => Range {
                lo: r[0].lo.max(r[1].lo),
                hi: r[0].hi.max(r[1].hi),
                finite: all,
            },
            Prim::Min => Range {
                lo: r[0].lo.min(r[1].lo),
                hi: r[0].hi.min(r[1].hi),
                finite: all,
            },
            Prim::Clamp => Range {
                lo: r[1].lo,
                hi: r[2].hi,
                finite: r[1].finite && r[2].finite,
            },
            Prim::Select => Range {
                lo: r[1].lo.min(r[2].lo),
                hi: r[1].hi.max(r[2].hi),
                finite: r[1].finite && r[2].finite,
            },
            Prim::StopGrad | Prim::ToFloat => r[0],
            Prim::Eq | Prim::Ne | Prim::Lt | Prim::Le | Prim::Gt | Prim::Ge | Prim::And | Prim::Or | Prim::Not => {
                Range::within(0.0, 1.0)
            }
            Prim::Iverson => Range::within(0.0, 1.0),
            Prim::Exp if logsumexp_term(self.f, args[0]).is_some() => Range::within(0.0, 1.0),
            _ => {
                let Some(shape) = prim.shape() else {
                    return Range::any(false);
                };
                let x = r[0];
                let image = |v: f64| {
                    let y = Prim::eval(prim, &[crate::ir::Value::F(v)]).as_f64();
                    if y.is_nan() {
                        if v < 0.0 { shape.lo } else { shape.hi }
                    } else {
                        y
                    }
                };
                let (lo, hi) = match shape.increasing {
                    true => (image(x.lo).max(shape.lo), image(x.hi).min(shape.hi)),
                    false if prim == Prim::Abs => (shape.lo, x.lo.abs().max(x.hi.abs()).min(shape.hi)),
                    false => (shape.lo, shape.hi),
                };
                // The argument must stay inside the function's domain for a finite value.
                let inside = match prim {
                    Prim::Log => x.lo > 0.0,
                    Prim::Log1p => x.lo > -1.0,
                    Prim::Sqrt => x.lo >= 0.0,
                    _ => true,
                };
                let finite = match prim {
                    // NaN outside [-1, 1].
                    Prim::Acos => x.lo >= -1.0 && x.hi <= 1.0,
                    _ => (lo.is_finite() && hi.is_finite()) || (x.finite && (inside || !self.free(args[0]))),
                };
                Range { lo, hi, finite }
            }
        }
    }

    /// Whether a node depends on a differentiable input.
    fn free(&self, n: NodeId) -> bool {
        self.f.reachable(&[n]).iter().any(|m| match &self.f.node(*m).expr {
            Expr::Load {
                tensor: TensorRef::Input(i),
                ..
            } => self.f.inputs[*i as usize].differentiable(),
            Expr::Load {
                tensor: TensorRef::Def(t),
                ..
            } => self.free(self.f.tensors[t.index()].body),
            _ => false,
        })
    }
}

impl super::Analysis for Bounds<'_> {
    type Fact = Range;

    fn function(&self) -> &Function {
        self.f
    }

    fn memo(&mut self) -> &mut super::Memo<Range> {
        &mut self.memo
    }

    fn compute(&mut self, n: NodeId) -> Range {
        let f = self.f;
        match &f.node(n).expr {
            Expr::Float(b) => Range::exact(f64::from_bits(*b)),
            Expr::Int(i) => Range::exact(*i as f64),
            Expr::Bool(_) => Range::within(0.0, 1.0),
            Expr::Index(_) => Range::within(0.0, f64::INFINITY),
            // A loss is analysed where every dimension has at least one element.
            Expr::Size(_) => Range::within(1.0, f64::INFINITY),
            Expr::Hyper(h) => Range::exact(f.hypers[*h as usize].default),
            Expr::Load { tensor, .. } => match tensor {
                TensorRef::Input(i) => {
                    let input = &f.inputs[*i as usize];
                    match (input.bound.as_ref(), input.differentiable()) {
                        (Some(_), _) => Range::within(0.0, f64::INFINITY),
                        (None, true) => Range::any(false),
                        (None, false) => Range::any(true),
                    }
                }
                TensorRef::Def(t) => self.tensor(t.index() as u32),
            },
            Expr::Prim { prim, args } => self.prim(*prim, args),
            Expr::Table { values, .. } => {
                let v = values.iter().map(|v| table_value(f.node(n).scalar, *v).as_f64());
                Range::within(
                    v.clone().fold(f64::INFINITY, f64::min),
                    v.fold(f64::NEG_INFINITY, f64::max),
                )
            }
            Expr::Reduce { op, body, .. } => {
                let b = self.node(*body);
                match op {
                    ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min => b,
                    ReduceOp::Sum if b.lo >= 0.0 => Range { hi: f64::INFINITY, ..b },
                    ReduceOp::LogSumExp => Range { hi: f64::INFINITY, ..b },
                    ReduceOp::Count | ReduceOp::ArgMax | ReduceOp::ArgMin => Range::within(0.0, f64::INFINITY),
                    _ => Range::any(b.finite),
                }
            }
        }
    }
}

/// Whether `target` is `pattern` with its indices in `bind` read as the nodes bound to them (an unbound
/// one binds to what it meets).
/// Where `n` is `a - r` with `a` one of the terms of the unmasked `logsumexp` that `r` is (or that a tensor
/// `r` loads holds), so `a - r ≤ 0` and `exp(a - r)` is a softmax probability: the indices the logsumexp
/// reduces over.
pub(super) fn logsumexp_term(f: &Function, n: NodeId) -> Option<Vec<IndexId>> {
    let Expr::Prim { prim: Prim::Sub, args } = &f.node(n).expr else {
        return None;
    };
    term_of_logsumexp(f, args[0], args[1])
}

/// Where `a` is one of the terms of the unmasked `logsumexp` that `r` is (or that a tensor `r` loads holds):
/// the indices the logsumexp reduces over.
pub(super) fn term_of_logsumexp(f: &Function, a: NodeId, r: NodeId) -> Option<Vec<IndexId>> {
    let mut bind: HashMap<IndexId, Option<NodeId>> = HashMap::new();
    let reduce = match &f.node(r).expr {
        Expr::Load {
            tensor: TensorRef::Def(t),
            subs,
        } => {
            let def = &f.tensors[t.index()];
            for (h, s) in def.indices.iter().zip(subs.iter()) {
                bind.insert(*h, Some(*s));
            }
            def.body
        }
        _ => r,
    };
    let Expr::Reduce {
        op: ReduceOp::LogSumExp,
        indices,
        mask: None,
        body,
    } = &f.node(reduce).expr
    else {
        return None;
    };
    for k in indices {
        bind.insert(*k, None);
    }
    unify(f, *body, a, &mut bind).then(|| indices.to_vec())
}

fn unify(f: &Function, pattern: NodeId, target: NodeId, bind: &mut HashMap<IndexId, Option<NodeId>>) -> bool {
    let p = f.node(pattern);
    if pattern == target && p.free.iter().all(|i| !bind.contains_key(i)) {
        return true;
    }
    let t = f.node(target);
    match (&p.expr, &t.expr) {
        (Expr::Index(i), _) if bind.contains_key(i) => match bind[i] {
            Some(x) => x == target,
            None => {
                bind.insert(*i, Some(target));
                true
            }
        },
        (Expr::Load { tensor: a, subs: sa }, Expr::Load { tensor: b, subs: sb }) => {
            a == b && sa.len() == sb.len() && sa.iter().zip(sb.iter()).all(|(x, y)| unify(f, *x, *y, bind))
        }
        (Expr::Prim { prim: a, args: x }, Expr::Prim { prim: b, args: y }) => {
            a == b && x.len() == y.len() && x.iter().zip(y.iter()).all(|(u, v)| unify(f, *u, *v, bind))
        }
        (a, b) => a == b && p.free.is_empty(),
    }
}

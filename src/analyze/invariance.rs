//! Invariance of a loss to shifting each row of an input's scores by one amount (`s[i, k] + c[i]`) and to
//! scaling them (`a · s[i, k]`, a > 0), tracked through the IR symbolically.
//!
//! Shift: every value either is unchanged, or changes by `coef · c[row]` where `row` are the subscripts
//! of the input's leading axes and `coef` a number times a product of values the shift leaves unchanged
//! (`1 / tau`); sums of such changes cancel where their rows and factors are the same nodes. `logsumexp`,
//! `max`, `min` and `mean` over the last axis carry a change that does not depend on the reduced index, and
//! a comparison of two values that change alike is unchanged. Scale: every value is homogeneous of a
//! degree (`s` of 1, data of 0; products add degrees, `sqrt` halves them, sums need equal ones), and a
//! value of degree 0 is unchanged.

use super::Analysis;
use crate::ir::{Expr, Function, IndexId, NodeId, ReduceOp, TensorRef};
use crate::prims::Prim;

/// How a value changes when the input's rows are shifted.
#[derive(Clone, Debug, PartialEq)]
pub enum Shift {
    /// It does not change.
    Invariant,
    /// By `number · Π factors · c[rows]`.
    By {
        /// The numeric part of the coefficient.
        number: f64,
        /// Factors (values the shift leaves unchanged) with their powers, sorted.
        factors: Vec<(NodeId, i32)>,
        /// The subscripts of the input's leading axes the shift amount is taken at.
        rows: Vec<NodeId>,
    },
    /// No rule decides.
    Unknown,
}

/// The shift analysis of one input of rank ≥ 1 (the last axis is the row's).
pub struct Shifts<'a> {
    f: &'a Function,
    input: u32,
    memo: super::Memo<Shift>,
}

impl<'a> Shifts<'a> {
    /// The analysis of `f`'s input number `input`.
    pub fn new(f: &'a Function, input: u32) -> Shifts<'a> {
        Shifts {
            f,
            input,
            memo: super::Memo::default(),
        }
    }

    fn prim(&mut self, prim: Prim, args: &[NodeId]) -> Shift {
        use Shift::*;
        let s: Vec<Shift> = args.iter().map(|a| self.node(*a)).collect();
        if s.iter().all(|x| *x == Invariant) {
            return Invariant;
        }
        if s.contains(&Unknown) {
            return Unknown;
        }
        match prim {
            Prim::Add => add(&s[0], &s[1], 1.0),
            Prim::Sub => add(&s[0], &s[1], -1.0),
            Prim::Neg => scale(&s[0], -1.0, None),
            Prim::StopGrad | Prim::ToFloat => s[0].clone(),
            Prim::Mul => match (&s[0], &s[1]) {
                (Invariant, x) => self.times(x, args[0], 1),
                (x, Invariant) => self.times(x, args[1], 1),
                _ => Unknown,
            },
            Prim::Div if s[1] == Invariant => self.times(&s[0], args[1], -1),
            // Two values that change alike compare alike.
            Prim::Eq | Prim::Ne | Prim::Lt | Prim::Le | Prim::Gt | Prim::Ge if s[0] == s[1] => Invariant,
            Prim::Max | Prim::Min if s[0] == s[1] => s[0].clone(),
            Prim::Select if s[0] == Invariant && s[1] == s[2] => s[1].clone(),
            _ => Unknown,
        }
    }

    /// `x · k^power` for a value `k` the shift leaves unchanged.
    fn times(&self, x: &Shift, k: NodeId, power: i32) -> Shift {
        match self.f.node(k).expr {
            Expr::Float(b) => scale(x, f64::from_bits(b).powi(power), None),
            Expr::Int(i) => scale(x, (i as f64).powi(power), None),
            _ => scale(x, 1.0, Some((k, power))),
        }
    }
}

impl super::Analysis for Shifts<'_> {
    type Fact = Shift;

    fn function(&self) -> &Function {
        self.f
    }

    fn memo(&mut self) -> &mut super::Memo<Shift> {
        &mut self.memo
    }

    fn compute(&mut self, n: NodeId) -> Shift {
        use Shift::*;
        let f = self.f;
        match &f.node(n).expr {
            Expr::Load { tensor, subs } => {
                if subs.iter().any(|s| self.node(*s) != Invariant) {
                    return Unknown;
                }
                match tensor {
                    TensorRef::Input(i) if *i == self.input => By {
                        number: 1.0,
                        factors: Vec::new(),
                        rows: subs[..subs.len().saturating_sub(1)].to_vec(),
                    },
                    TensorRef::Input(_) => Invariant,
                    TensorRef::Def(t) => {
                        let def = &f.tensors[t.index()];
                        let inner = self.tensor(t.index() as u32);
                        let heads: Vec<IndexId> = def.indices.clone();
                        // The tensor's change, with its head indices read at this load's subscripts.
                        let at = |node: NodeId| -> Option<NodeId> {
                            match f.node(node).expr {
                                Expr::Index(h) => heads.iter().position(|x| *x == h).map(|p| subs[p]),
                                _ if f.node(node).free.iter().all(|i| !heads.contains(i)) => Some(node),
                                _ => None,
                            }
                        };
                        match inner {
                            By { number, factors, rows } => {
                                let rows: Option<Vec<NodeId>> = rows.iter().map(|r| at(*r)).collect();
                                let fixed = factors.iter().all(|(x, _)| f.node(*x).free.is_empty());
                                match rows {
                                    Some(rows) if fixed => By { number, factors, rows },
                                    _ => Unknown,
                                }
                            }
                            other => other,
                        }
                    }
                }
            }
            Expr::Prim { prim, args } => self.prim(*prim, args),
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => {
                if mask.is_some_and(|m| self.node(m) != Invariant) {
                    return Unknown;
                }
                match self.node(*body) {
                    Invariant => Invariant,
                    Unknown => Unknown,
                    By { number, factors, rows } => {
                        // The change may not vary over the reduced indices.
                        let varies = |x: &NodeId| f.node(*x).free.iter().any(|i| indices.contains(i));
                        if rows.iter().any(varies) || factors.iter().any(|(x, _)| varies(x)) {
                            return Unknown;
                        }
                        match op {
                            ReduceOp::LogSumExp | ReduceOp::Max | ReduceOp::Min | ReduceOp::Mean => {
                                By { number, factors, rows }
                            }
                            _ => Unknown,
                        }
                    }
                }
            }
            // A constant table changes only where it is read.
            Expr::Table { at, .. } if self.node(*at) != Invariant => Unknown,
            _ => Invariant,
        }
    }
}

/// `a + sign · b`.
fn add(a: &Shift, b: &Shift, sign: f64) -> Shift {
    use Shift::*;
    match (a, b) {
        (x, Invariant) => x.clone(),
        (Invariant, y) => scale(y, sign, None),
        (
            By {
                number: n1,
                factors: f1,
                rows: r1,
            },
            By {
                number: n2,
                factors: f2,
                rows: r2,
            },
        ) if f1 == f2 && r1 == r2 => {
            let number = n1 + sign * n2;
            if number == 0.0 {
                Invariant
            } else {
                By {
                    number,
                    factors: f1.clone(),
                    rows: r1.clone(),
                }
            }
        }
        _ => Shift::Unknown,
    }
}

/// `x · number · factor`.
fn scale(x: &Shift, by: f64, factor: Option<(NodeId, i32)>) -> Shift {
    match x {
        Shift::By { number, factors, rows } => {
            let mut factors = factors.clone();
            if let Some((k, p)) = factor {
                match factors.iter_mut().find(|(x, _)| *x == k) {
                    Some(e) => e.1 += p,
                    None => factors.push((k, p)),
                }
                factors.retain(|(_, p)| *p != 0);
                factors.sort_unstable();
            }
            if number * by == 0.0 {
                return Shift::Invariant;
            }
            Shift::By {
                number: number * by,
                factors,
                rows: rows.clone(),
            }
        }
        other => other.clone(),
    }
}

/// The degree of homogeneity of values in one input (`v(a · s) = a^degree · v(s)` for a > 0).
///
/// A sum of a scaled value and a *stabiliser* — a hyperparameter whose default is at most 1e-6 in size, as
/// the `eps` in `x / (sigma + eps)` — takes the scaled value's degree, and the stabiliser is recorded in
/// [`Degrees::stabilisers`]: the degree holds where it is 0.
pub struct Degrees<'a> {
    f: &'a Function,
    input: u32,
    memo: super::Memo<Option<f64>>,
    /// The hyperparameters taken as 0 (sorted, each once).
    pub stabilisers: Vec<u32>,
}

impl<'a> Degrees<'a> {
    /// The analysis of `f`'s input number `input`.
    pub fn new(f: &'a Function, input: u32) -> Degrees<'a> {
        Degrees {
            f,
            input,
            memo: super::Memo::default(),
            stabilisers: Vec::new(),
        }
    }
}

impl super::Analysis for Degrees<'_> {
    type Fact = Option<f64>;

    fn function(&self) -> &Function {
        self.f
    }

    fn memo(&mut self) -> &mut super::Memo<Option<f64>> {
        &mut self.memo
    }

    fn compute(&mut self, n: NodeId) -> Option<f64> {
        let f = self.f;
        match &f.node(n).expr {
            Expr::Load { tensor, subs } => {
                if subs.iter().any(|s| self.node(*s) != Some(0.0)) {
                    return None;
                }
                match tensor {
                    TensorRef::Input(i) if *i == self.input => Some(1.0),
                    TensorRef::Input(_) => Some(0.0),
                    TensorRef::Def(t) => self.tensor(t.index() as u32),
                }
            }
            Expr::Prim { prim, args } => {
                let d: Vec<Option<f64>> = args.iter().map(|a| self.node(*a)).collect();
                let d: Vec<f64> = d.into_iter().collect::<Option<_>>()?;
                let literal = |k: usize| match f.node(args[k]).expr {
                    Expr::Float(b) => Some(f64::from_bits(b)),
                    Expr::Int(i) => Some(i as f64),
                    _ => None,
                };
                let stabiliser = |k: usize| match f.node(args[k]).expr {
                    Expr::Hyper(h) if f.hypers[h as usize].default.abs() <= 1e-6 => Some(h),
                    _ => None,
                };
                match prim {
                    Prim::Add | Prim::Sub | Prim::Max | Prim::Min if d[0] == d[1] => Some(d[0]),
                    Prim::Add | Prim::Sub if d[0] == 0.0 || d[1] == 0.0 => {
                        let (k, other) = if d[0] == 0.0 { (0, d[1]) } else { (1, d[0]) };
                        let h = stabiliser(k)?;
                        if let Err(at) = self.stabilisers.binary_search(&h) {
                            self.stabilisers.insert(at, h);
                        }
                        Some(other)
                    }
                    Prim::Mul => Some(d[0] + d[1]),
                    Prim::Div => Some(d[0] - d[1]),
                    Prim::Neg | Prim::Abs | Prim::Relu | Prim::StopGrad | Prim::ToFloat => Some(d[0]),
                    Prim::Sqrt => Some(d[0] / 2.0),
                    Prim::Pow if d[1] == 0.0 => literal(1).map(|p| d[0] * p),
                    Prim::Eq | Prim::Ne | Prim::Lt | Prim::Le | Prim::Gt | Prim::Ge if d[0] == d[1] => Some(0.0),
                    Prim::Select if d[0] == 0.0 && d[1] == d[2] => Some(d[1]),
                    _ if d.iter().all(|x| *x == 0.0) => Some(0.0),
                    _ => None,
                }
            }
            Expr::Reduce { op, mask, body, .. } => {
                if mask.is_some_and(|m| self.node(m) != Some(0.0)) {
                    return None;
                }
                let d = self.node(*body)?;
                match op {
                    _ if d == 0.0 => Some(0.0),
                    ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min | ReduceOp::Prod
                        if *op != ReduceOp::Prod =>
                    {
                        Some(d)
                    }
                    // The position of the largest (smallest) value does not move when all scale by a > 0.
                    ReduceOp::ArgMax | ReduceOp::ArgMin => Some(0.0),
                    _ => None,
                }
            }
            Expr::Table { at, .. } if self.node(*at) != Some(0.0) => None,
            _ => Some(0.0),
        }
    }
}

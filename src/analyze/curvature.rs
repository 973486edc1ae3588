//! Convexity and concavity in one input, by disciplined-convex composition over the IR: every other input
//! is data (a constant), sums and means of convex terms are convex, a convex nondecreasing function of a
//! convex argument is convex ([`Prim::shape`] says which primitives are), `logsumexp` and `max` are convex
//! and nondecreasing in each term, a constant factor keeps or flips the curvature by its sign, and a
//! selection by a condition on the data only is piecewise in the data, not in the input.

use std::collections::BTreeSet;

use super::Analysis;
use crate::ir::{Expr, Function, NodeId, ReduceOp, TensorRef, table_value};
use crate::prims::{Bend, Prim};

/// The curvature of a value in the input analysed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curv {
    /// It does not depend on the input.
    Constant,
    /// Affine in it.
    Affine,
    /// Convex.
    Convex,
    /// Concave.
    Concave,
    /// No rule decides.
    Unknown,
}

impl Curv {
    fn flip(self) -> Curv {
        match self {
            Curv::Convex => Curv::Concave,
            Curv::Concave => Curv::Convex,
            c => c,
        }
    }

    /// The curvature of a sum of two values.
    fn add(self, other: Curv) -> Curv {
        use Curv::*;
        match (self, other) {
            (Constant, c) | (c, Constant) => c,
            (Affine, c) | (c, Affine) => c,
            (Convex, Convex) => Convex,
            (Concave, Concave) => Concave,
            _ => Unknown,
        }
    }

    /// Convex (or affine, or constant).
    pub fn convex(self) -> bool {
        matches!(self, Curv::Constant | Curv::Affine | Curv::Convex)
    }

    /// Concave (or affine, or constant).
    pub fn concave(self) -> bool {
        matches!(self, Curv::Constant | Curv::Affine | Curv::Concave)
    }

    /// How the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Curv::Constant => "constant",
            Curv::Affine => "affine",
            Curv::Convex => "convex",
            Curv::Concave => "concave",
            Curv::Unknown => "not decided",
        }
    }
}

/// The sign of a value that does not depend on the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sign {
    Nonneg,
    Nonpos,
    Any,
}

/// The curvature of every tensor and node in input `input`, with the rule that decided each tensor.
pub struct Curvature<'a> {
    f: &'a Function,
    input: u32,
    memo: super::Memo<Curv>,
    /// The hyperparameters whose sign a rule used (the verdict assumes their defaults' signs).
    pub assumed: BTreeSet<String>,
    /// A rule took a per-sample loss's cotangent as nonnegative (the verdict assumes it is).
    pub cotangent: bool,
}

impl<'a> Curvature<'a> {
    /// The analysis of `f` in its input number `input`.
    pub fn new(f: &'a Function, input: u32) -> Curvature<'a> {
        Curvature {
            f,
            input,
            memo: super::Memo::default(),
            assumed: BTreeSet::new(),
            cotangent: false,
        }
    }

    /// Whether a node's value depends on the input (through loads, also of tensors).
    fn depends(&mut self, n: NodeId) -> bool {
        self.node(n) != Curv::Constant
    }

    fn prim(&mut self, prim: Prim, args: &[NodeId]) -> Curv {
        use Curv::*;
        let c: Vec<Curv> = args.iter().map(|a| self.node(*a)).collect();
        if c.iter().all(|x| *x == Constant) {
            return Constant;
        }
        match prim {
            Prim::Add => c[0].add(c[1]),
            Prim::Sub => c[0].add(c[1].flip()),
            Prim::Neg => c[0].flip(),
            Prim::StopGrad | Prim::ToFloat => c[0],
            Prim::Mul => {
                let (k, other) = match (c[0], c[1]) {
                    (Constant, o) => (args[0], o),
                    (o, Constant) => (args[1], o),
                    // x · x of one affine x, or of a nonnegative convex one.
                    (Affine, Affine) if args[0] == args[1] => return Convex,
                    (Convex, Convex) if args[0] == args[1] && self.nonnegative(args[0]) => return Convex,
                    _ => return Unknown,
                };
                self.scaled(k, other)
            }
            Prim::Div if c[1] == Constant => self.scaled(args[1], c[0]),
            Prim::Pow => match (c[0], self.constant(args[1])) {
                (Affine, Some(2.0)) => Convex,
                // The square of a nonnegative convex value (a squared hinge).
                (Convex, Some(2.0)) if self.nonnegative(args[0]) => Convex,
                (x, Some(1.0)) => x,
                _ => Unknown,
            },
            Prim::Max if c.iter().all(|x| x.convex()) => Convex,
            Prim::Min if c.iter().all(|x| x.concave()) => Concave,
            // A selection by data alone: for each value of the data, one branch.
            Prim::Select if c[0] == Constant => match (c[1], c[2]) {
                (a, b) if a == b => a,
                (a, b) if a.convex() && b.convex() => Convex,
                (a, b) if a.concave() && b.concave() => Concave,
                _ => Unknown,
            },
            _ => match prim.shape() {
                // A convex nondecreasing function of a convex argument; of an affine one, any convex
                // function (likewise concave).
                Some(s) if s.bend == Bend::Convex && (c[0] == Affine || (s.increasing && c[0].convex())) => Convex,
                Some(s) if s.bend == Bend::Concave && (c[0] == Affine || (s.increasing && c[0].concave())) => Concave,
                _ => Unknown,
            },
        }
    }

    /// Whether a value is nonnegative by its outermost operation (`relu`, `max` with a nonnegative
    /// constant, a primitive whose range is nonnegative).
    fn nonnegative(&mut self, n: NodeId) -> bool {
        match &self.f.node(n).expr {
            Expr::Prim { prim: Prim::Max, args } => args
                .iter()
                .any(|a| self.node(*a) == Curv::Constant && self.sign(*a) == Sign::Nonneg),
            Expr::Prim { prim, .. } => prim.shape().is_some_and(|s| s.lo >= 0.0),
            _ => false,
        }
    }

    /// `k · x` (or `x / k`) for a constant `k`: `x`'s curvature, flipped where `k ≤ 0`.
    fn scaled(&mut self, k: NodeId, x: Curv) -> Curv {
        match (self.sign(k), x) {
            (_, Curv::Affine) => Curv::Affine,
            (Sign::Nonneg, x) => x,
            (Sign::Nonpos, x) => x.flip(),
            (Sign::Any, _) => Curv::Unknown,
        }
    }

    fn constant(&self, n: NodeId) -> Option<f64> {
        match self.f.node(n).expr {
            Expr::Float(b) => Some(f64::from_bits(b)),
            Expr::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// The value of an arithmetic expression of numbers and hyperparameters at the hyperparameters'
    /// defaults (recorded as assumed), or None for anything else (a size, a load, a reduction).
    fn at_defaults(&mut self, n: NodeId) -> Option<f64> {
        let mut used = Vec::new();
        let v = value_at_defaults(self.f, n, &mut used)?;
        self.assumed
            .extend(used.into_iter().map(|h| self.f.hypers[h as usize].name.clone()));
        Some(v)
    }

    /// The sign of a node that does not depend on the input (hyperparameters by their defaults' signs).
    fn sign(&mut self, n: NodeId) -> Sign {
        use Sign::*;
        let f = self.f;
        let of = |x: f64| match x {
            x if x >= 0.0 => Nonneg,
            x if x <= 0.0 => Nonpos,
            _ => Any,
        };
        match &f.node(n).expr {
            Expr::Float(b) => of(f64::from_bits(*b)),
            Expr::Int(i) => of(*i as f64),
            Expr::Size(_) => Nonneg,
            Expr::Table { values, .. } => {
                let v: Vec<f64> = values
                    .iter()
                    .map(|v| table_value(f.node(n).scalar, *v).as_f64())
                    .collect();
                match (v.iter().all(|x| *x >= 0.0), v.iter().all(|x| *x <= 0.0)) {
                    (true, _) => Nonneg,
                    (_, true) => Nonpos,
                    _ => Any,
                }
            }
            Expr::Hyper(h) => {
                let h = &f.hypers[*h as usize];
                self.assumed.insert(h.name.clone());
                of(h.default)
            }
            // An expression of hyperparameters and numbers alone (`1 - eps`): its value at the defaults.
            Expr::Prim { .. } if let Some(v) = self.at_defaults(n) => of(v),
            Expr::Prim { prim, args } => {
                let s: Vec<Sign> = args.iter().map(|a| self.sign(*a)).collect();
                let product = |a: Sign, b: Sign| match (a, b) {
                    (Any, _) | (_, Any) => Any,
                    (x, y) if x == y => Nonneg,
                    _ => Nonpos,
                };
                match prim {
                    Prim::Mul | Prim::Div => product(s[0], s[1]),
                    Prim::Add if s[0] == s[1] => s[0],
                    Prim::Neg => match s[0] {
                        Nonneg => Nonpos,
                        Nonpos => Nonneg,
                        Any => Any,
                    },
                    Prim::ToFloat | Prim::StopGrad => s[0],
                    Prim::Iverson => Nonneg,
                    p => match p.shape() {
                        Some(shape) if shape.lo >= 0.0 => Nonneg,
                        _ => Any,
                    },
                }
            }
            Expr::Reduce {
                op: ReduceOp::Count, ..
            } => Nonneg,
            Expr::Reduce {
                op: ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min,
                body,
                ..
            } => self.sign(*body),
            // A per-sample loss's cotangent weighs its samples: ones for the gradient of their sum.
            Expr::Load {
                tensor: TensorRef::Input(c),
                ..
            } if f.cotangent == Some(*c) => {
                self.cotangent = true;
                Nonneg
            }
            _ => Any,
        }
    }
}

impl super::Analysis for Curvature<'_> {
    type Fact = Curv;

    fn function(&self) -> &Function {
        self.f
    }

    fn memo(&mut self) -> &mut super::Memo<Curv> {
        &mut self.memo
    }

    fn compute(&mut self, n: NodeId) -> Curv {
        use Curv::*;
        let f = self.f;
        match &f.node(n).expr {
            Expr::Load { tensor, subs } => {
                // A subscript that depends on the input (an argmax, say) makes no rule apply.
                if subs.iter().any(|s| self.depends(*s)) {
                    return Unknown;
                }
                match tensor {
                    TensorRef::Input(i) if *i == self.input => Affine,
                    TensorRef::Input(_) => Constant,
                    TensorRef::Def(t) => self.tensor(t.index() as u32),
                }
            }
            Expr::Prim { prim, args } => self.prim(*prim, args),
            Expr::Reduce { op, mask, body, .. } => {
                if mask.is_some_and(|m| self.depends(m)) {
                    return Unknown;
                }
                let b = self.node(*body);
                match op {
                    _ if b == Constant => Constant,
                    ReduceOp::Sum | ReduceOp::Mean => b,
                    ReduceOp::Max | ReduceOp::LogSumExp if b.convex() => Convex,
                    ReduceOp::Min if b.concave() => Concave,
                    _ => Unknown,
                }
            }
            Expr::Table { at, .. } if self.depends(*at) => Unknown,
            _ => Constant,
        }
    }
}

/// The value of an arithmetic expression of numbers and hyperparameters at the hyperparameters' defaults
/// (the hyperparameters it read pushed to `used`), or None for anything else (a size, a load, a reduction)
/// or a value that is not finite.
pub(super) fn value_at_defaults(f: &Function, n: NodeId, used: &mut Vec<u32>) -> Option<f64> {
    let v = match &f.node(n).expr {
        Expr::Float(b) => f64::from_bits(*b),
        Expr::Int(i) => *i as f64,
        Expr::Hyper(h) => {
            used.push(*h);
            f.hypers[*h as usize].default
        }
        Expr::Prim { prim, args } => {
            let a: Vec<f64> = args
                .iter()
                .map(|x| value_at_defaults(f, *x, used))
                .collect::<Option<_>>()?;
            match (prim, &a[..]) {
                (Prim::Add, [x, y]) => x + y,
                (Prim::Sub, [x, y]) => x - y,
                (Prim::Mul, [x, y]) => x * y,
                (Prim::Div, [x, y]) => x / y,
                (Prim::Neg, [x]) => -x,
                (Prim::ToFloat | Prim::StopGrad, [x]) => *x,
                _ => return None,
            }
        }
        _ => return None,
    };
    v.is_finite().then_some(v)
}

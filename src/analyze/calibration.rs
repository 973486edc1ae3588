//! Classification calibration of a multi-class softmax loss: proven where the loss is a positive
//! combination, over the samples, of one function Ψ of the softmax probability at the label, with
//! Ψ' < 0.
//!
//! The argument (the one behind cross-entropy's, MAE's and the comp-sum family's calibration): at class
//! probabilities q the conditional risk is Σ_k q_k Ψ(p_k) over the softmax p. Where q_a > q_b but
//! p_a < p_b, exchanging p_a and p_b lowers it by (q_a − q_b)(Ψ(p_a) − Ψ(p_b)) > 0; where p_a = p_b,
//! moving probability from b to a lowers it at the rate (q_a − q_b)|Ψ'(p)| > 0. So no point whose top
//! class is not q's is a minimiser, and (the risk being continuous on the closed simplex) the best such
//! point is strictly worse: the top class of the minimiser is the Bayes class.
//!
//! The rule works in `u = logsumexp[k] s[i, k] − s[i, y[i]] = −log p` (the sample's cross-entropy): each
//! sample's term must be strictly increasing in u with a positive derivative (Ψ(p) = g(−log p), Ψ' =
//! −g'/p < 0), built from u by primitives with positive derivatives, constant factors, and products of
//! factors of fixed sign whose magnitudes move together; the loss sums or averages the terms with positive
//! weights.

use std::collections::BTreeSet;

use super::Analysis;
use super::bounds::Bounds;
use super::curvature::value_at_defaults;
use super::symmetry::{constant, label_log_probability};
use crate::ir::{Expr, Function, IndexId, NodeId, ReduceOp, TensorRef};
use crate::prims::Prim;

/// How a value depends on the samples' cross-entropies u.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mono {
    /// Free of every input.
    Constant,
    /// Strictly increasing in u (`up`) or decreasing, with a nonzero derivative; `sample` while it is one
    /// sample's value (no reduction over the samples applied yet).
    Strict { up: bool, sample: bool },
}

struct Cx<'a> {
    g: &'a Function,
    label: u32,
    bounds: Bounds<'a>,
    /// What the derivation relies on beyond the primitives' derivatives.
    assumed: BTreeSet<String>,
    /// The primitives met, for the derivation.
    used: BTreeSet<&'static str>,
    /// Each node's fact, found once (a `let` read several times is analysed once).
    memo: std::collections::HashMap<NodeId, Option<Mono>>,
}

/// The derivation where the rule proves the loss calibrated in its scores (label input `label`), or why it
/// does not apply.
pub fn proof(g: &Function, loss: NodeId, label: u32) -> Result<Vec<String>, String> {
    let mut cx = Cx {
        g,
        label,
        bounds: Bounds::new(g),
        assumed: BTreeSet::new(),
        used: BTreeSet::new(),
        memo: Default::default(),
    };
    let y = &g.inputs[label as usize].name;
    match cx.mono(loss) {
        Some(Mono::Strict { up: true, .. }) => {
            let mut out = vec![
                format!(
                    "u = logsumexp[k] s[i, k] - s[i, {y}[i]] = -log p (the softmax probability at the label); \
                     the loss is a positive combination over the samples of one g(u)"
                ),
                format!(
                    "g is strictly increasing with g' > 0 (through {}), so Ψ(p) = g(-log p) has Ψ' < 0",
                    if cx.used.is_empty() {
                        "sums and positive factors".to_string()
                    } else {
                        cx.used.iter().copied().collect::<Vec<_>>().join(", ")
                    }
                ),
                "the minimiser of Σ_k q_k Ψ(p_k) ranks the classes as q does (exchanging two probabilities out \
                 of order, or splitting a tie toward the likelier class, lowers it): its top class is the Bayes \
                 class"
                    .into(),
            ];
            if !cx.assumed.is_empty() {
                out.push(format!(
                    "assuming {}",
                    cx.assumed.iter().cloned().collect::<Vec<_>>().join("; ")
                ));
            }
            Ok(out)
        }
        _ => Err(format!(
            "no rule finds the loss a positive combination over the samples of Ψ(p) with Ψ' < 0, p the \
             softmax probability at {y}"
        )),
    }
}

impl Cx<'_> {
    fn mono(&mut self, n: NodeId) -> Option<Mono> {
        if let Some(fact) = self.memo.get(&n) {
            return *fact;
        }
        let fact = self.compute(n);
        self.memo.insert(n, fact);
        fact
    }

    fn compute(&mut self, n: NodeId) -> Option<Mono> {
        let g = self.g;
        if constant(g, n) || reads_cotangent(g, n) {
            return Some(Mono::Constant);
        }
        match &g.node(n).expr {
            Expr::Prim { prim: Prim::Sub, args } if label_log_probability(g, self.label, args[0], args[1]) => {
                Some(Mono::Strict {
                    up: false,
                    sample: true,
                })
            }
            Expr::Prim { prim: Prim::Sub, args } if label_log_probability(g, self.label, args[1], args[0]) => {
                Some(Mono::Strict { up: true, sample: true })
            }
            // A `let` read at its own head indices: its body.
            Expr::Load {
                tensor: TensorRef::Def(t),
                subs,
            } if subs.iter().all(|s| matches!(g.node(*s).expr, Expr::Index(_))) => self.mono(g.tensor(*t).body),
            // A sum or mean over the samples (or over anything else: a constant multiple).
            Expr::Reduce {
                op: ReduceOp::Sum | ReduceOp::Mean,
                mask,
                body,
                ..
            } if mask.is_none_or(|m| constant(g, m)) => match self.mono(*body)? {
                Mono::Strict { up, .. } => Some(Mono::Strict { up, sample: false }),
                Mono::Constant => Some(Mono::Constant),
            },
            Expr::Prim { prim, args } => self.prim(*prim, args),
            _ => None,
        }
    }

    fn prim(&mut self, prim: Prim, args: &[NodeId]) -> Option<Mono> {
        use Mono::*;
        let parts: Vec<Mono> = args.iter().map(|a| self.mono(*a)).collect::<Option<_>>()?;
        let flip = |m: Mono| match m {
            Strict { up, sample } => Strict { up: !up, sample },
            c => c,
        };
        match (prim, &parts[..]) {
            (Prim::Add, [a, Constant]) | (Prim::Add, [Constant, a]) | (Prim::Sub, [a, Constant]) => Some(*a),
            (Prim::Sub, [Constant, a]) | (Prim::Neg, [a]) => Some(flip(*a)),
            (Prim::Add, [a, b]) if a == b => Some(*a),
            (Prim::Sub, [a, b]) if *a == flip(*b) => Some(*a),
            (Prim::ToFloat, [a]) => Some(*a),
            (Prim::Mul, [Constant, a]) | (Prim::Mul, [a, Constant]) => {
                let c = if parts[0] == Constant { args[0] } else { args[1] };
                Some(if self.positive(c)? { *a } else { flip(*a) })
            }
            (Prim::Div, [a, Constant]) => Some(if self.positive(args[1])? { *a } else { flip(*a) }),
            // c / x: decreasing where x keeps one sign (away from 0).
            (Prim::Div, [Constant, a @ Strict { sample: true, .. }]) => {
                let r = self.bounds.node(args[1]);
                let apart = r.lo > 0.0 || r.hi < 0.0;
                (apart && self.positive(args[0])?).then(|| flip(*a))
            }
            // A product of one sample's values that keep their signs: as the product of their magnitudes,
            // which must move together (nonnegative and increasing, or decreasing, together).
            (Prim::Mul, [a @ Strict { sample: true, .. }, b @ Strict { sample: true, .. }]) => {
                let mut negated = false;
                let mut magnitude = |cx: &mut Self, n: NodeId, m: Mono| {
                    let r = cx.bounds.node(n);
                    match (r.lo >= 0.0, r.hi <= 0.0) {
                        (true, _) => Some(m),
                        (_, true) => {
                            negated = !negated;
                            Some(flip(m))
                        }
                        _ => None,
                    }
                };
                let (x, y) = (magnitude(self, args[0], *a)?, magnitude(self, args[1], *b)?);
                (x == y).then(|| if negated { flip(x) } else { x })
            }
            // x ^ c (c constant, x > 0 or a nonnegative probability): the sign of c.
            (Prim::Pow, [a @ Strict { sample: true, .. }, Constant]) => {
                let r = self.bounds.node(args[0]);
                if r.lo < 0.0 {
                    return None;
                }
                self.used.insert("a power");
                Some(if self.positive(args[1])? { *a } else { flip(*a) })
            }
            // A clamp that only guards a probability near 0: clamp(p, lo, hi) with p in [0, 1], lo ≤ 1e-6 and
            // hi ≥ 1 changes only p < lo, where no class is the top one (p ≥ 1/C there).
            (Prim::Clamp, [a @ Strict { sample: true, .. }, Constant, Constant]) => {
                let r = self.bounds.node(args[0]);
                let (lo, hi) = (self.value(args[1])?, self.value(args[2])?);
                (r.lo >= 0.0 && r.hi <= 1.0 && lo <= 1e-6 && hi >= 1.0).then(|| {
                    self.assumed.insert(format!(
                        "the clamp of a probability to [{lo:e}, {hi}] is the identity where a class can be the top one"
                    ));
                    *a
                })
            }
            (p, [a @ Strict { sample: true, .. }]) if p.strictly_increasing() => {
                self.used.insert(p.name());
                Some(*a)
            }
            _ => None,
        }
    }

    /// Whether a node free of the inputs is positive (`Some(false)`: negative; `None`: zero or unknown), by
    /// [`sign`], recording what it assumed.
    fn positive(&mut self, n: NodeId) -> Option<bool> {
        let (mut used, mut cotangent) = (Vec::new(), false);
        let sign = sign(self.g, n, &mut used, &mut cotangent);
        if cotangent {
            self.assumed
                .insert("a positive cotangent (ones: the gradient of the per-sample losses' sum)".into());
        }
        self.assume(used);
        sign
    }

    /// The value of numbers and hyperparameters (at their defaults, recorded as assumed).
    fn value(&mut self, n: NodeId) -> Option<f64> {
        let mut used = Vec::new();
        let v = value_at_defaults(self.g, n, &mut used)?;
        self.assume(used);
        Some(v)
    }

    fn assume(&mut self, hypers: Vec<u32>) {
        for h in hypers {
            let h = &self.g.hypers[h as usize];
            self.assumed
                .insert(format!("{} keeps the sign of its default {}", h.name, h.default));
        }
    }
}

/// Whether a node free of the inputs is positive (`Some(false)`: negative; `None`: zero or unknown):
/// sizes are positive, hyperparameters have their defaults' signs (pushed to `used`), a per-sample loss's
/// cotangent is taken positive (`cotangent` set).
fn sign(g: &Function, n: NodeId, used: &mut Vec<u32>, cotangent: &mut bool) -> Option<bool> {
    if reads_cotangent(g, n) {
        *cotangent = true;
        return Some(true);
    }
    match &g.node(n).expr {
        Expr::Size(_) => Some(true),
        Expr::Prim {
            prim: Prim::Mul | Prim::Div,
            args,
        } => Some(sign(g, args[0], used, cotangent)? == sign(g, args[1], used, cotangent)?),
        Expr::Prim { prim: Prim::Neg, args } => sign(g, args[0], used, cotangent).map(|p| !p),
        Expr::Prim {
            prim: Prim::ToFloat,
            args,
        } => sign(g, args[0], used, cotangent),
        _ => {
            let v = value_at_defaults(g, n, used)?;
            (v != 0.0).then_some(v > 0.0)
        }
    }
}

/// Whether `n` reads the cotangent of a per-sample loss (the weights of its samples' losses).
fn reads_cotangent(g: &Function, n: NodeId) -> bool {
    matches!(&g.node(n).expr, Expr::Load { tensor: TensorRef::Input(c), .. } if g.cotangent == Some(*c))
}

/// One-vs-all margins: where the loss is a positive combination, over the samples, of `sum[k] φ(m[i, k])`
/// with `m[i, k] = s[i, k]` at the label's class and `-s[i, k]` at the others (written
/// `select(k == y[i], s[i, k], -s[i, k])` or `select(k == y[i], 1, -1) * s[i, k]`), φ the same for every
/// class: `Some(smooth)`, whether φ is built from primitives differentiable everywhere. The conditional
/// risk then splits into one binary problem per class, q_k φ(f_k) + (1 - q_k) φ(-f_k); for φ convex and
/// differentiable with φ'(0) < 0 each minimiser rises strictly with q_k (at equal minimisers for two q the
/// first-order conditions force φ' = 0 on [-|f|, |f|], against φ'(0) < 0), so the top class is the Bayes
/// class. A kink anywhere breaks this (the one-vs-all hinge is not calibrated: Tewari & Bartlett 2007).
pub fn one_vs_all(g: &Function, loss: NodeId, scores: u32, label: u32) -> Option<bool> {
    let mut smooth = true;
    combination(g, loss, scores, label, &mut smooth).then_some(smooth)
}

/// A positive combination of one-vs-all class sums ([`one_vs_all`]).
fn combination(g: &Function, n: NodeId, scores: u32, label: u32, smooth: &mut bool) -> bool {
    let positive =
        |c: NodeId| (constant(g, c) || reads_cotangent(g, c)) && sign(g, c, &mut Vec::new(), &mut false) == Some(true);
    if let Some(sum) = class_sum(g, n, scores, label) {
        *smooth &= sum;
        return true;
    }
    match &g.node(n).expr {
        Expr::Load {
            tensor: TensorRef::Def(t),
            subs,
        } if subs.iter().all(|s| matches!(g.node(*s).expr, Expr::Index(_))) => {
            combination(g, g.tensor(*t).body, scores, label, smooth)
        }
        Expr::Reduce {
            op: ReduceOp::Sum | ReduceOp::Mean,
            mask,
            body,
            ..
        } if mask.is_none_or(|m| constant(g, m)) => combination(g, *body, scores, label, smooth),
        Expr::Prim { prim, args } => match (prim, &args[..]) {
            (Prim::Add, [a, b]) => {
                let (ca, cb) = (constant(g, *a), constant(g, *b));
                (ca || combination(g, *a, scores, label, smooth))
                    && (cb || combination(g, *b, scores, label, smooth))
                    && !(ca && cb)
            }
            (Prim::Sub, [a, b]) => constant(g, *b) && combination(g, *a, scores, label, smooth),
            (Prim::Mul, [a, b]) if positive(*a) => combination(g, *b, scores, label, smooth),
            (Prim::Mul, [a, b]) if positive(*b) => combination(g, *a, scores, label, smooth),
            (Prim::Div, [a, b]) if positive(*b) => combination(g, *a, scores, label, smooth),
            _ => false,
        },
        _ => false,
    }
}

/// `sum[k] φ(m[row, k])` over the classes, φ reading the scores, the label and `k` only through the one
/// margin node: `Some(smooth)`.
fn class_sum(g: &Function, n: NodeId, scores: u32, label: u32) -> Option<bool> {
    let Expr::Reduce {
        op: ReduceOp::Sum,
        indices,
        mask: None,
        body,
    } = &g.node(n).expr
    else {
        return None;
    };
    let [k] = indices[..] else { return None };
    let classes = g.inputs[scores as usize].shape.last()?;
    if g.index(k).range != *classes {
        return None;
    }
    // The margin node, and φ around it: nothing else of φ reads the scores, the label or k.
    let margin = g
        .reachable(&[*body])
        .into_iter()
        .find(|m| is_margin(g, *m, k, scores, label))?;
    let mut stack = vec![*body];
    let mut seen = std::collections::HashSet::new();
    let mut smooth = true;
    while let Some(m) = stack.pop() {
        if m == margin || !seen.insert(m) {
            continue;
        }
        match &g.node(m).expr {
            Expr::Index(i) if *i == k => return None,
            Expr::Load {
                tensor: TensorRef::Input(x),
                ..
            } if *x == scores || *x == label => return None,
            Expr::Reduce { .. } => return None,
            // A power is smooth with a constant exponent of at least 1.
            Expr::Prim { prim: Prim::Pow, args } => {
                let mut used = Vec::new();
                smooth &= constant(g, args[1]) && value_at_defaults(g, args[1], &mut used).is_some_and(|e| e >= 1.0);
            }
            Expr::Prim { prim, .. } => smooth &= prim.smooth(),
            _ => {}
        }
        stack.extend(g.node(m).expr.operands());
    }
    Some(smooth)
}

/// `select(k == y[r], s[r, k], -s[r, k])` (the comparison either way round, or `!=` with the branches
/// swapped), or `select(…, 1, -1) * s[r, k]` either way round.
fn is_margin(g: &Function, m: NodeId, k: IndexId, scores: u32, label: u32) -> bool {
    let score_at = |n: NodeId| -> Option<NodeId> {
        let Expr::Load {
            tensor: TensorRef::Input(x),
            subs,
        } = &g.node(n).expr
        else {
            return None;
        };
        (*x == scores && subs.len() == 2 && matches!(g.node(subs[1]).expr, Expr::Index(i) if i == k)).then_some(subs[0])
    };
    // `k == y[row]` (true) or `k != y[row]` (false) for a row subscript.
    let is_label_test = |c: NodeId, row: NodeId| -> Option<bool> {
        let Expr::Prim { prim, args } = &g.node(c).expr else {
            return None;
        };
        let equal = match prim {
            Prim::Eq => true,
            Prim::Ne => false,
            _ => return None,
        };
        let reads = |a: NodeId, b: NodeId| {
            matches!(g.node(a).expr, Expr::Index(i) if i == k)
                && matches!(&g.node(b).expr, Expr::Load { tensor: TensorRef::Input(y), subs } if *y == label && subs[..] == [row])
        };
        (reads(args[0], args[1]) || reads(args[1], args[0])).then_some(equal)
    };
    let negated =
        |a: NodeId, b: NodeId| matches!(&g.node(b).expr, Expr::Prim { prim: Prim::Neg, args } if args[0] == a);
    match &g.node(m).expr {
        Expr::Prim {
            prim: Prim::Select,
            args,
        } => {
            let Some(row) = score_at(args[1]).or_else(|| score_at(args[2])) else {
                return false;
            };
            match is_label_test(args[0], row) {
                Some(true) => score_at(args[1]).is_some() && negated(args[1], args[2]),
                Some(false) => score_at(args[2]).is_some() && negated(args[2], args[1]),
                None => false,
            }
        }
        Expr::Prim { prim: Prim::Mul, args } => {
            let sign = |c: NodeId, row: NodeId| match &g.node(c).expr {
                Expr::Prim {
                    prim: Prim::Select,
                    args: a,
                } => {
                    let (t, f) = (g.as_float(a[1]), g.as_float(a[2]));
                    match is_label_test(a[0], row) {
                        Some(true) => t == Some(1.0) && f == Some(-1.0),
                        Some(false) => t == Some(-1.0) && f == Some(1.0),
                        None => false,
                    }
                }
                _ => false,
            };
            [(args[0], args[1]), (args[1], args[0])]
                .iter()
                .any(|(c, x)| score_at(*x).is_some_and(|row| sign(*c, row)))
        }
        _ => false,
    }
}

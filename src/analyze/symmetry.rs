//! Symmetry of a classification loss, Σ_k L(s, y ≡ k) constant in the scores (the noise-robustness
//! condition of Ghosh, Kumar and Sastry 2017, which MAE meets and cross-entropy does not), proven where the
//! loss is a sum or mean over samples of terms affine in the softmax probability at the label:
//! `a + b · exp(s[i, y[i]] - logsumexp[k] s[i, k])` with `a` and `b` free of every input. Summing over the
//! labels then gives `C a + b Σ_k p_k = C a + b` per sample.

use crate::ir::{Expr, Function, NodeId, ReduceOp, Role, TensorRef};
use crate::prims::Prim;

/// What a value is in terms of the probability at the label.
#[derive(Clone, Copy, PartialEq)]
enum Affine {
    /// Free of every input.
    Constant,
    /// `a + b p` with `a`, `b` free of every input and `b` possibly 0.
    Linear,
}

/// The derivation where a rule proves the loss symmetric in label input `label`; `None` where none does.
pub fn proof(g: &Function, label: u32) -> Option<Vec<String>> {
    let loss = g.tensors.iter().find(|t| t.role == Role::Loss)?;
    let n = loss.body;
    let cx = Cx { g, label };
    (cx.affine(n)? == Affine::Linear).then(|| {
        let y = &g.inputs[label as usize].name;
        vec![
            format!(
                "each sample's term is a + b·p, p = exp(s[i, {y}[i]] - logsumexp[k] s[i, k]) the softmax \
                 probability at the label, with a and b free of every input"
            ),
            format!("Σ_k p[i, k] = 1, so summed over {y} = k every term is C·a + b: free of the scores"),
        ]
    })
}

/// Whether node `n` reads no input (numbers, hyperparameters, sizes, indices only).
pub(super) fn constant(g: &Function, n: NodeId) -> bool {
    match &g.node(n).expr {
        Expr::Load {
            tensor: TensorRef::Input(_),
            ..
        } => false,
        Expr::Load {
            tensor: TensorRef::Def(t),
            subs,
        } => subs.iter().all(|s| constant(g, *s)) && constant(g, g.tensor(*t).body),
        e => e.operands().iter().all(|a| constant(g, *a)),
    }
}

struct Cx<'a> {
    g: &'a Function,
    label: u32,
}

impl Cx<'_> {
    /// `n` as constant or affine in the probability at the label; `None` otherwise.
    fn affine(&self, n: NodeId) -> Option<Affine> {
        let g = self.g;
        if constant(g, n) {
            return Some(Affine::Constant);
        }
        if self.probability_at_label(n) {
            return Some(Affine::Linear);
        }
        match &g.node(n).expr {
            // A `let` read at its own head indices: its body.
            Expr::Load {
                tensor: TensorRef::Def(t),
                subs,
            } if subs.iter().all(|s| matches!(g.node(*s).expr, Expr::Index(_))) => self.affine(g.tensor(*t).body),
            // Sums and means of affine terms (over the samples, or anything else) are affine.
            Expr::Reduce {
                op: ReduceOp::Sum | ReduceOp::Mean,
                mask,
                body,
                ..
            } if mask.is_none_or(|m| constant(g, m)) => self.affine(*body).map(|_| Affine::Linear),
            Expr::Prim { prim, args } => {
                let parts: Vec<Affine> = args.iter().map(|a| self.affine(*a)).collect::<Option<_>>()?;
                let linear = parts.iter().filter(|p| **p == Affine::Linear).count();
                match prim {
                    Prim::Add | Prim::Sub | Prim::Neg | Prim::ToFloat => Some(Affine::Linear),
                    Prim::Mul if linear == 1 => Some(Affine::Linear),
                    Prim::Div if parts.get(1) == Some(&Affine::Constant) => Some(Affine::Linear),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Whether `n` is a softmax probability at the label: `exp(s[r, y[r]] - lse)` ([`label_log_probability`]).
    fn probability_at_label(&self, n: NodeId) -> bool {
        let Expr::Prim { prim: Prim::Exp, args } = &self.g.node(n).expr else {
            return false;
        };
        let Expr::Prim {
            prim: Prim::Sub,
            args: d,
        } = &self.g.node(args[0]).expr
        else {
            return false;
        };
        label_log_probability(self.g, self.label, d[0], d[1])
    }
}

/// Whether `a - r` is the log softmax probability at the label, `s[r, y[r]] - lse`: `s[r, y[r]]` is a term
/// of the logsumexp `r` (bounds::term_of_logsumexp), which reduces over the axis label input `label` is
/// bounded by.
pub(super) fn label_log_probability(g: &Function, label: u32, a: NodeId, r: NodeId) -> bool {
    let Some(indices) = super::bounds::term_of_logsumexp(g, a, r) else {
        return false;
    };
    let [k] = indices[..] else { return false };
    let Expr::Load {
        tensor: TensorRef::Input(s),
        subs,
    } = &g.node(a).expr
    else {
        return false;
    };
    let (Some(class), Some(row)) = (subs.last(), subs.first()) else {
        return false;
    };
    let reads_label = matches!(
        &g.node(*class).expr,
        Expr::Load { tensor: TensorRef::Input(y), subs: y_subs } if *y == label && y_subs[..] == [*row]
    );
    let classes = g.inputs[*s as usize].shape.last();
    reads_label
        && subs.len() == 2
        && classes.is_some()
        && g.inputs[label as usize].bound.as_ref() == classes
        && Some(&g.index(k).range) == classes
}

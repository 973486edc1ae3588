//! A static estimate of the work a function does: the number of node evaluations for given dimension
//! sizes, counting each distinct node once per point of the index space it is evaluated over (a
//! reduction's body once per point of its reduction). Used to test that optimizations change complexity
//! (e.g. bracket fusion turns an O(N·C·C) gradient into O(N·C)).

use std::collections::HashSet;

use super::{Expr, Function, NodeId};

/// Node evaluations to compute every tensor, with `sizes` for the dimension symbols.
pub fn work(f: &Function, sizes: &[i64]) -> f64 {
    let mut total = 0.0;
    for t in &f.tensors {
        let points: f64 = t.indices.iter().map(|i| f.index(*i).range.eval(sizes) as f64).product();
        let mut seen = HashSet::new();
        total += points * cost(f, t.body, sizes, &mut seen);
    }
    total
}

/// Evaluations of the DAG below `n` for one point of its free indices (nodes in `seen` are already paid).
fn cost(f: &Function, n: NodeId, sizes: &[i64], seen: &mut HashSet<NodeId>) -> f64 {
    if !seen.insert(n) {
        return 0.0;
    }
    match &f.node(n).expr {
        Expr::Reduce {
            indices, mask, body, ..
        } => {
            let points: f64 = indices.iter().map(|i| f.index(*i).range.eval(sizes) as f64).product();
            // The body is evaluated afresh for every point of the reduction.
            let mut inner = HashSet::new();
            let mut c = cost(f, *body, sizes, &mut inner);
            if let Some(m) = mask {
                c += cost(f, *m, sizes, &mut inner);
            }
            1.0 + points * c
        }
        e => 1.0 + e.operands().iter().map(|o| cost(f, *o, sizes, seen)).sum::<f64>(),
    }
}

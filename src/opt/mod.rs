//! Stage 5: the optimizer, IR → IR.
//!
//! [`optimize`] runs [`simplify`] to a fixpoint (constant folding, cheaper algebra, bracket fusion and the
//! stabilising rewrites, with CSE from hash-consing and dead-code removal from rebuilding only what the
//! results reach), computes cheap `let`s where they are read ([`simplify::inline_lets`]), then [`hoist`]
//! (the fusion decision: a reduction that does not depend on every index around it is materialized once
//! as its own tensor instead of being recomputed inline), reads symmetric matrices along their rows
//! ([`transpose`]), then one more simplification to compact. Every pass returns a function that passes [`crate::ir::verify::verify`] and
//! computes the same results as its input. Two rewrites run on an optimized function for one backend's
//! needs, not in [`optimize`]: [`merge`] (adjacent axes as one, for the JIT) and [`stream`] (tensors over
//! pairs recomputed a row at a time, for calls that would not fit in memory whole).

pub mod hoist;
pub mod merge;
pub mod simplify;
pub mod stream;
pub mod transpose;

use crate::diag::{Code, Diag};
use crate::ir::{Function, TooDeep};

/// The most simplification rounds before giving up on a fixpoint.
const MAX_ROUNDS: usize = 8;

/// Simplifies to a fixpoint, materializes invariant reductions, and compacts.
pub fn optimize(f: &Function) -> Result<Function, Diag> {
    run(f).map_err(|TooDeep| {
        Diag::new(
            Code::TooDeep,
            format!("optimizing `{}` produced too large a program", f.name),
        )
        .label(f.span, "this loss")
        .help("split the loss into `let`s")
    })
}

/// Only the fixpoint simplification (what `--emit grad` shows).
pub fn simplify_only(f: &Function) -> Result<Function, TooDeep> {
    let mut cur = simplify::rebuild(f)?;
    // A round that rebuilds its input as it was is a fixpoint already (the next passes' inputs often are).
    if same_program(f, &cur) {
        return Ok(cur);
    }
    for _ in 0..MAX_ROUNDS {
        let next = simplify::rebuild(&cur)?;
        let done = next.nodes().len() == cur.nodes().len() && next.tensors.len() == cur.tensors.len();
        cur = next;
        if done {
            break;
        }
    }
    Ok(cur)
}

/// Whether two functions hold the same nodes and tensors, in the same order: rebuilding either one gives
/// the same function.
fn same_program(a: &Function, b: &Function) -> bool {
    a.nodes().len() == b.nodes().len()
        && a.tensors.len() == b.tensors.len()
        && a.indices.len() == b.indices.len()
        && a.nodes()
            .iter()
            .zip(b.nodes())
            .all(|(x, y)| x.scalar == y.scalar && x.expr == y.expr)
        && (a.tensors.iter().zip(&b.tensors))
            .all(|(x, y)| x.body == y.body && x.indices == y.indices && x.name == y.name && x.role == y.role)
}

fn run(f: &Function) -> Result<Function, TooDeep> {
    let mut simple = simplify_only(&simplify::inline_lets(&simplify_only(f)?)?)?;
    if let Some(again) = simplify::inline_broadcasts(&simple)? {
        simple = simplify_only(&again)?;
    }
    let hoisted = hoist::materialize(&simple)?;
    simplify_only(&transpose::contiguous_reads(&hoisted)?)
}

/// Rebuilds `f` with the listed hyperparameters (by index) replaced by nodes already in `f`.
pub fn replace_hypers(
    f: &Function,
    values: &std::collections::HashMap<u32, crate::ir::NodeId>,
) -> Result<Function, TooDeep> {
    simplify::rebuild_with(f, values)
}

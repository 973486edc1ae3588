//! Checks the IR invariants listed in the module doc of [`crate::ir`]. Run after every stage in tests.

use super::*;

/// Returns the first broken invariant, described.
pub fn verify(f: &Function) -> Result<(), String> {
    for (i, n) in f.nodes().iter().enumerate() {
        for op in n.expr.operands() {
            if op.index() >= i {
                return Err(format!("%{i} uses %{} which does not precede it", op.0));
            }
        }
        let kind = |id: NodeId| f.node(id).scalar;
        match &n.expr {
            Expr::Load { tensor, subs } => {
                let rank = match tensor {
                    TensorRef::Input(k) => f.inputs.get(*k as usize).map(|i| i.shape.len()),
                    TensorRef::Def(t) => f.tensors.get(t.index()).map(|t| t.indices.len()),
                };
                if rank != Some(subs.len()) {
                    return Err(format!(
                        "%{i} loads with {} subscripts from a tensor of rank {rank:?}",
                        subs.len()
                    ));
                }
                if subs.iter().any(|s| kind(*s) != Scalar::Int) {
                    return Err(format!("%{i} has a non-integer subscript"));
                }
            }
            Expr::Prim { prim, args } => {
                if args.len() != prim.sig().arity() {
                    return Err(format!("%{i}: {} takes {} operands", prim.name(), prim.sig().arity()));
                }
                let kinds: Vec<Scalar> = args.iter().map(|a| kind(*a)).collect();
                if prim.result(&kinds) != n.scalar {
                    return Err(format!("%{i}: {} of {kinds:?} is not {:?}", prim.name(), n.scalar));
                }
            }
            Expr::Reduce { mask, indices, .. } => {
                if mask.is_some_and(|m| kind(m) != Scalar::Bool) {
                    return Err(format!("%{i}: mask is not a condition"));
                }
                if indices.iter().any(|x| x.index() >= f.indices.len()) {
                    return Err(format!("%{i}: unknown index"));
                }
            }
            Expr::Table { at, values } => {
                if kind(*at) != Scalar::Int {
                    return Err(format!("%{i}: a table read at a non-integer"));
                }
                if values.len() < 2 || values.iter().all(|v| *v == values[0]) {
                    return Err(format!("%{i}: a table of fewer than two distinct entries"));
                }
            }
            _ => {}
        }
    }
    for (k, t) in f.tensors.iter().enumerate() {
        if t.body.index() >= f.nodes().len() {
            return Err(format!("tensor {} has no body", t.name));
        }
        let body = f.node(t.body);
        if let Some(x) = body.free.iter().find(|x| !t.indices.contains(x)) {
            return Err(format!(
                "tensor {} depends on index {} outside its head",
                t.name,
                f.index(*x).name
            ));
        }
        let mut later = Vec::new();
        loads(f, t.body, &mut later);
        if let Some(d) = later.iter().find(|d| d.index() >= k) {
            return Err(format!(
                "tensor {} loads {} which is not defined before it",
                t.name,
                f.tensor(*d).name
            ));
        }
    }
    Ok(())
}

fn loads(f: &Function, id: NodeId, out: &mut Vec<TensorId>) {
    let mut stack = vec![id];
    let mut seen = std::collections::HashSet::new();
    while let Some(n) = stack.pop() {
        if !seen.insert(n) {
            continue;
        }
        if let Expr::Load {
            tensor: TensorRef::Def(t),
            ..
        } = &f.node(n).expr
        {
            out.push(*t);
        }
        stack.extend(f.node(n).expr.operands());
    }
}

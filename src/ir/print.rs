//! `--emit ir`: the stable text form of a function.
//!
//! ```text
//! loss cross_entropy(s: f32[N, C], y: idx[N] < C)
//!   index i: N
//!   %0 = s[i, k] : f{i,k}
//!   let loss = %7
//! ```
//! Nodes print in arena order, each just before the first definition that uses it; only reachable nodes
//! print. Index variables print by name, with `.n` appended to later variables that reuse a name.

use std::fmt::Write;

use super::*;

pub fn function(f: &Function) -> String {
    let names = index_names(f);
    let mut out = String::new();
    let sig: Vec<String> = f
        .inputs
        .iter()
        .map(|i| {
            let mut s = format!("{}: {}", i.name, i.elem.as_str());
            if !i.shape.is_empty() {
                let d: Vec<String> = i.shape.iter().map(|d| f.show_dim(d)).collect();
                let _ = write!(s, "[{}]", d.join(", "));
            }
            if let Some(b) = &i.bound {
                let _ = write!(s, " < {}", f.show_dim(b));
            }
            if i.nograd {
                s.push_str(" nograd");
            }
            s
        })
        .chain(f.hypers.iter().map(|h| match h.scalar {
            Scalar::Int => format!("{}: idx = {}", h.name, h.default),
            _ => format!("{} = {:?}", h.name, h.default),
        }))
        .collect();
    let _ = writeln!(out, "loss {}({})", f.name, sig.join(", "));
    for (i, v) in f.indices.iter().enumerate() {
        let _ = writeln!(out, "  index {}: {}", names[i], f.show_dim(&v.range));
    }
    let mut printed = vec![false; f.nodes().len()];
    for t in &f.tensors {
        let mut needed = Vec::new();
        collect(f, t.body, &mut printed, &mut needed);
        needed.sort_unstable();
        for n in needed {
            let _ = writeln!(out, "  {}", node(f, n, &names));
        }
        let kw = match t.role {
            Role::Let => "let",
            Role::Loss => "loss",
            Role::Output => "out",
            Role::Grad(_) => "grad",
        };
        let head: Vec<&str> = t.indices.iter().map(|i| names[i.index()].as_str()).collect();
        let head = if head.is_empty() {
            String::new()
        } else {
            format!("[{}]", head.join(", "))
        };
        let _ = writeln!(out, "  {kw} {}{head} = %{}", t.name, t.body.0);
    }
    out
}

fn collect(f: &Function, id: NodeId, printed: &mut [bool], out: &mut Vec<NodeId>) {
    if printed[id.index()] {
        return;
    }
    printed[id.index()] = true;
    for op in f.node(id).expr.operands() {
        collect(f, op, printed, out);
    }
    out.push(id);
}

/// Display names of index variables: the source name, with `.n` for the n-th reuse.
pub fn index_names(f: &Function) -> Vec<String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    f.indices
        .iter()
        .map(|v| {
            let n = seen.entry(v.name.as_str()).or_insert(0);
            let name = if *n == 0 {
                v.name.clone()
            } else {
                format!("{}.{}", v.name, n)
            };
            *n += 1;
            name
        })
        .collect()
}

fn node(f: &Function, id: NodeId, names: &[String]) -> String {
    let n = f.node(id);
    let r = |x: &NodeId| format!("%{}", x.0);
    let rhs = match &n.expr {
        Expr::Float(bits) => format!("{:?}", f64::from_bits(*bits)),
        Expr::Int(i) => i.to_string(),
        Expr::Bool(b) => b.to_string(),
        Expr::Index(i) => format!("index {}", names[i.index()]),
        Expr::Size(d) => format!("size {}", f.show_dim(d)),
        Expr::Hyper(h) => format!("hyper {}", f.hypers[*h as usize].name),
        Expr::Load { tensor, subs } => {
            let s: Vec<String> = subs.iter().map(r).collect();
            if s.is_empty() {
                f.ref_name(*tensor).to_string()
            } else {
                format!("{}[{}]", f.ref_name(*tensor), s.join(", "))
            }
        }
        Expr::Prim { prim, args } => {
            let a: Vec<String> = args.iter().map(r).collect();
            format!("{} {}", prim.name(), a.join(", "))
        }
        Expr::Reduce {
            op,
            indices,
            mask,
            body,
        } => {
            let idx: Vec<&str> = indices.iter().map(|i| names[i.index()].as_str()).collect();
            let m = mask.map(|m| format!(" | %{}", m.0)).unwrap_or_default();
            format!("{}[{}{m}] %{}", op.as_str(), idx.join(", "), body.0)
        }
    };
    let free: Vec<&str> = n.free.iter().map(|i| names[i.index()].as_str()).collect();
    let ty = if free.is_empty() {
        n.scalar.letter().to_string()
    } else {
        format!("{}{{{}}}", n.scalar.letter(), free.join(","))
    };
    format!("%{} = {rhs} : {ty}", id.0)
}

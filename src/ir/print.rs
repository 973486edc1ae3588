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

/// The function's IR, one node per line (`lossc compile --emit ir`).
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
            if let Some(v) = i.ignore {
                let _ = write!(s, " ignore = {v}");
            }
            if i.nograd {
                s.push_str(" nograd");
            }
            if let Some(st) = &i.state {
                let init = match st.init {
                    crate::ir::StateInit::Const(c) => format!("{c:?}"),
                    crate::ir::StateInit::Hyper(h) => f.hypers[h as usize].name.clone(),
                };
                let _ = write!(s, " state[{}] = {init}", f.inputs[st.key as usize].name);
            }
            s
        })
        .chain(f.hypers.iter().map(|h| match h.scalar {
            Scalar::Int => format!("{}: idx = {}", h.name, h.default),
            _ => format!("{} = {:?}", h.name, h.default),
        }))
        .collect();
    let _ = writeln!(out, "loss {}({})", f.name, sig.join(", "));
    for u in &f.updates {
        let _ = writeln!(out, "  state {} <- {}", f.inputs[u.input as usize].name, u.output);
    }
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
        Expr::Table { at, values } => format!("{}[{}]", table_entries(n.scalar, values), r(at)),
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

/// A sub-expression used more than once in a definition prints once, as `$k = …` on the line before the
/// definition, when it would print as at least this many nodes; smaller ones print where they are used.
/// (Printed where used, a chain of `let`s that each read the previous one twice doubles per `let`.)
const NAMED_NODES: u64 = 12;

/// `--emit grad|opt`: each tensor definition as one lx-like expression, for reading against a paper.
///
/// Reductions print their index ranges. A large sub-expression used several times prints once, named
/// `$k` (when it prints as at least 12 nodes), so the text stays proportional to the program.
pub fn readable(f: &Function) -> String {
    let names = index_names(f);
    let mut out = String::new();
    let head = function(f);
    let _ = writeln!(out, "{}", head.lines().next().unwrap_or_default());
    let mut named: HashMap<NodeId, usize> = HashMap::new();
    // Names are numbered through the function, so each `$k` is defined once.
    let mut next = 1;
    for t in &f.tensors {
        let kw = match t.role {
            Role::Let => "let ",
            Role::Loss => "",
            Role::Output => "out ",
            Role::Grad(_) => "",
        };
        let idx: Vec<String> = t
            .indices
            .iter()
            .map(|i| format!("{}: {}", names[i.index()], f.show_dim(&f.index(*i).range)))
            .collect();
        let idx = if idx.is_empty() {
            String::new()
        } else {
            format!("[{}]", idx.join(", "))
        };
        named.clear();
        let printer = Readable { f, names: &names };
        // Operands come before their users in the arena, so names are given (and printed) in use order.
        let order = f.reachable(&[t.body]);
        let mut uses: HashMap<NodeId, u32> = HashMap::new();
        for &n in &order {
            for op in f.node(n).expr.operands() {
                *uses.entry(op).or_default() += 1;
            }
        }
        let mut size: HashMap<NodeId, u64> = HashMap::new();
        for &n in &order {
            let own = f.node(n).expr.operands().into_iter().fold(1u64, |acc, op| {
                acc.saturating_add(if named.contains_key(&op) { 1 } else { size[&op] })
            });
            size.insert(n, own);
            let compound = matches!(f.node(n).expr, Expr::Prim { .. } | Expr::Reduce { .. });
            if n != t.body && compound && uses.get(&n).copied().unwrap_or(0) >= 2 && own >= NAMED_NODES {
                let _ = writeln!(out, "  ${next} = {}", printer.body(n, 0, &named));
                named.insert(n, next);
                next += 1;
            }
        }
        let _ = writeln!(out, "  {kw}{}{idx} = {}", t.name, printer.expr(t.body, 0, &named));
    }
    out
}

/// Prints sub-expressions in lx syntax, with named ones as `$k`.
struct Readable<'a> {
    f: &'a Function,
    names: &'a [String],
}

impl Readable<'_> {
    fn expr(&self, id: NodeId, prec: u8, named: &HashMap<NodeId, usize>) -> String {
        match named.get(&id) {
            Some(k) => format!("${k}"),
            None => self.body(id, prec, named),
        }
    }

    /// The node itself, its operands by name where named.
    fn body(&self, id: NodeId, prec: u8, named: &HashMap<NodeId, usize>) -> String {
        use crate::prims::Prim::*;
        let (f, names) = (self.f, self.names);
        let n = f.node(id);
        let sub = |x: NodeId, p: u8| self.expr(x, p, named);
        let paren = |s: String, mine: u8| if mine < prec { format!("({s})") } else { s };
        match &n.expr {
            Expr::Float(bits) => {
                let x = f64::from_bits(*bits);
                let s = format!("{x:?}");
                if x < 0.0 { paren(s, 6) } else { s }
            }
            Expr::Int(i) => {
                if *i < 0 {
                    paren(i.to_string(), 6)
                } else {
                    i.to_string()
                }
            }
            Expr::Bool(b) => b.to_string(),
            Expr::Index(i) => names[i.index()].clone(),
            Expr::Size(d) => {
                let s = f.show_dim(d);
                if matches!(d, Dim::Add(..) | Dim::Sub(..) | Dim::Mul(..)) {
                    format!("({s})")
                } else {
                    s
                }
            }
            Expr::Hyper(h) => f.hypers[*h as usize].name.clone(),
            Expr::Table { at, values } => format!("{}[{}]", table_entries(n.scalar, values), sub(*at, 0)),
            Expr::Load { tensor, subs } => {
                if subs.is_empty() {
                    f.ref_name(*tensor).to_string()
                } else {
                    let s: Vec<String> = subs.iter().map(|x| sub(*x, 0)).collect();
                    format!("{}[{}]", f.ref_name(*tensor), s.join(", "))
                }
            }
            Expr::Prim { prim, args } => {
                let bin = |op: &str, mine: u8, right_assoc: bool| {
                    let (l, r) = if right_assoc {
                        (mine + 1, mine)
                    } else {
                        (mine, mine + 1)
                    };
                    paren(format!("{} {op} {}", sub(args[0], l), sub(args[1], r)), mine)
                };
                match prim {
                    Or => bin("||", 1, false),
                    And => bin("&&", 2, false),
                    Eq => bin("==", 3, true),
                    Ne => bin("!=", 3, true),
                    Lt => bin("<", 3, true),
                    Le => bin("<=", 3, true),
                    Gt => bin(">", 3, true),
                    Ge => bin(">=", 3, true),
                    Add => bin("+", 4, false),
                    Sub => bin("-", 4, false),
                    Mul => bin("*", 5, false),
                    Div => bin("/", 5, false),
                    Pow => bin("^", 7, true),
                    Neg => paren(format!("-{}", sub(args[0], 7)), 6),
                    Not => paren(format!("!{}", sub(args[0], 7)), 6),
                    Iverson => format!("[{}]", sub(args[0], 0)),
                    ToFloat => sub(args[0], prec),
                    other => {
                        let a: Vec<String> = args.iter().map(|x| sub(*x, 0)).collect();
                        format!("{}({})", other.name(), a.join(", "))
                    }
                }
            }
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => {
                let idx: Vec<String> = indices
                    .iter()
                    .map(|i| format!("{}: {}", names[i.index()], f.show_dim(&f.index(*i).range)))
                    .collect();
                let m = mask.map(|m| format!(" | {}", sub(m, 0))).unwrap_or_default();
                let s = format!("{}[{}{m}] {}", op.as_str(), idx.join(", "), sub(*body, 0));
                if prec > 0 { format!("({s})") } else { s }
            }
        }
    }
}

/// A constant table's entries as `table(1, 0, 3, 2)` (read at a subscript after it).
fn table_entries(scalar: crate::ir::Scalar, values: &[u64]) -> String {
    let entries: Vec<String> = values
        .iter()
        .map(|v| match crate::ir::table_value(scalar, *v) {
            crate::ir::Value::F(x) => format!("{x:?}"),
            crate::ir::Value::I(i) => i.to_string(),
            crate::ir::Value::B(b) => b.to_string(),
        })
        .collect();
    format!("table({})", entries.join(", "))
}

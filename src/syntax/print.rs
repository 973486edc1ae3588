//! `--emit ast`: a stable S-expression dump of the AST that makes grouping and binding visible.

use std::fmt::Write;

use super::ast::*;

/// Prints a whole file, one item per paragraph.
pub fn file(f: &File) -> String {
    let mut out = String::new();
    for item in &f.items {
        if !item.doc.is_empty() {
            for line in item.doc.lines() {
                let _ = writeln!(out, "/// {line}");
            }
        }
        match &item.kind {
            ItemKind::Use { path, glob } => {
                let mut p: Vec<&str> = path.iter().map(|i| i.name.as_str()).collect();
                if *glob {
                    p.push("*");
                }
                let _ = writeln!(out, "(use {})", p.join("::"));
            }
            ItemKind::Const { name, value } => {
                let _ = writeln!(out, "(const {} {})", name.name, expr(value));
            }
            ItemKind::Fn(f) => {
                let params: Vec<String> = f
                    .params
                    .iter()
                    .map(|p| match &p.ty {
                        Some(t) => format!("({} {})", p.name.name, ty(t)),
                        None => p.name.name.clone(),
                    })
                    .collect();
                let _ = writeln!(out, "(fn {} ({})", f.name.name, params.join(" "));
                body(&mut out, &f.body);
            }
            ItemKind::Loss(l) => {
                let _ = writeln!(out, "(loss {}", l.name.name);
                for p in &l.params {
                    let mut s = format!("  (param {} {}", p.name.name, ty(&p.ty));
                    if p.nograd.is_some() {
                        s.push_str(" nograd");
                    }
                    if let Some(k) = &p.state {
                        let _ = write!(s, " (state {})", k.name);
                    }
                    if let Some(d) = &p.default {
                        let _ = write!(s, " (default {})", expr(d));
                    }
                    let _ = writeln!(out, "{s})");
                }
                if let Some(r) = &l.result {
                    let _ = writeln!(out, "  (result {})", ty(r));
                }
                for o in &l.outputs {
                    let updates = o
                        .updates
                        .as_ref()
                        .map_or(String::new(), |u| format!(" (updates {})", u.name));
                    let _ = writeln!(out, "  (output {} {}{updates})", o.name.name, ty(&o.ty));
                }
                body(&mut out, &l.body);
            }
            ItemKind::Extern(e) => {
                let _ = writeln!(out, "(extern {}", e.name.name);
                for p in &e.params {
                    let ng = if p.nograd.is_some() { " nograd" } else { "" };
                    let _ = writeln!(out, "  (param {} {}{ng})", p.name.name, ty(&p.ty));
                }
                for o in &e.options {
                    let t = o.ty.as_ref().map_or("str".to_string(), ty);
                    let d =
                        (o.default.as_ref()).map_or(String::new(), |d| format!(" (default {})", option_value(d, expr)));
                    let _ = writeln!(out, "  (option {} {t}{d})", o.name.name);
                }
                for o in &e.outputs {
                    let _ = writeln!(out, "  (output {} {})", o.name.name, ty(&o.ty));
                }
                let _ = writeln!(out, ")");
            }
        }
    }
    out
}

/// An extern's parameters and options in lx syntax, `(p: f32[N] nograd; k: str = "a")`, and its outputs,
/// `o: f32[N]` each.
pub fn extern_signature(e: &ExternDef, show: impl Fn(&Expr) -> String) -> (String, Vec<String>) {
    let params: Vec<String> = (e.params.iter())
        .map(|p| {
            let ng = if p.nograd.is_some() { " nograd" } else { "" };
            format!("{}: {}{ng}", p.name.name, ty(&p.ty))
        })
        .collect();
    let options: Vec<String> = (e.options.iter())
        .map(|o| {
            let t = o.ty.as_ref().map_or("str".to_string(), ty);
            let d = (o.default.as_ref()).map_or(String::new(), |d| format!(" = {}", option_value(d, &show)));
            format!("{}: {t}{d}", o.name.name)
        })
        .collect();
    let options = if options.is_empty() {
        String::new()
    } else {
        format!("; {}", options.join(", "))
    };
    let outs = (e.outputs.iter())
        .map(|o| format!("{}: {}", o.name.name, ty(&o.ty)))
        .collect();
    (format!("({}{options})", params.join(", ")), outs)
}

/// An unpacking statement's call, options included: `betti(p, g; filtration = "sublevel")`.
pub fn unpack_call(u: &Unpack, show: impl Fn(&Expr) -> String) -> String {
    let args: Vec<&str> = u.args.iter().map(|a| a.name.as_str()).collect();
    let options: Vec<String> = (u.options.iter())
        .map(|o| format!("{} = {}", o.name.name, option_value(&o.value, &show)))
        .collect();
    let options = if options.is_empty() {
        String::new()
    } else {
        format!("; {}", options.join(", "))
    };
    format!("{}({}{options})", u.func.name, args.join(", "))
}

/// A statement's left-hand side as written: `let m[i, k]`, `out u[i]`.
pub fn stmt_head(s: &Stmt) -> String {
    if let Some(u) = &s.unpack {
        let names: Vec<&str> = u.names.iter().map(|n| n.name.as_str()).collect();
        return format!("let ({})", names.join(", "));
    }
    let kw = match s.kind {
        StmtKind::Let | StmtKind::Unpack => "let",
        StmtKind::Out => "out",
    };
    let head = if s.head.is_empty() {
        String::new()
    } else {
        format!("[{}]", binders(&s.head))
    };
    format!("{kw} {}{head}", s.name.name)
}

fn body(out: &mut String, b: &Body) {
    for s in &b.stmts {
        let value = match &s.unpack {
            Some(u) => format!("(extern {})", unpack_call(u, expr)),
            None => expr(&s.value),
        };
        let _ = writeln!(out, "  ({} {value})", stmt_head(s));
    }
    let _ = writeln!(out, "  {})", expr(&b.result));
}

/// Binders as written: `i, t: K + 1`.
pub fn binders(bs: &[Binder]) -> String {
    bs.iter()
        .map(|b| match &b.range {
            Some(r) => format!("{}: {}", b.name.name, dim(r)),
            None => b.name.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A type as written: `f32[N, C]`, `idx[N] < C`.
pub fn ty(t: &Type) -> String {
    let mut s = t.elem.as_str().to_string();
    if !t.shape.is_empty() {
        let dims: Vec<String> = t.shape.iter().map(dim).collect();
        let _ = write!(s, "[{}]", dims.join(", "));
    }
    if let Some(b) = &t.bound {
        let _ = write!(s, " < {}", dim(b));
    }
    if let Some(v) = t.ignore {
        let _ = write!(s, " ignore = {v}");
    }
    s
}

/// A dimension expression, parenthesised only where needed.
pub fn dim(d: &DimExpr) -> String {
    fn go(d: &DimExpr, prec: u8) -> String {
        match &d.kind {
            DimExprKind::Int(v) => v.to_string(),
            DimExprKind::Name(n) => n.clone(),
            DimExprKind::Add(a, b) | DimExprKind::Sub(a, b) => {
                let op = if matches!(d.kind, DimExprKind::Add(..)) {
                    "+"
                } else {
                    "-"
                };
                let s = format!("{} {op} {}", go(a, 1), go(b, 2));
                if prec > 1 { format!("({s})") } else { s }
            }
            DimExprKind::Mul(a, b) => format!("{} * {}", go(a, 2), go(b, 3)),
        }
    }
    go(d, 0)
}

/// An expression as an S-expression.
pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number { value, is_int } => {
            if *is_int {
                format!("{}", *value as i64)
            } else {
                format!("{value:?}")
            }
        }
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Access { name, subscripts: None } => name.name.clone(),
        ExprKind::Access {
            name,
            subscripts: Some(s),
        } => {
            let subs: Vec<String> = s.iter().map(expr).collect();
            format!("{}[{}]", name.name, subs.join(", "))
        }
        ExprKind::Call { func, args } => {
            let a: Vec<String> = args.iter().map(expr).collect();
            format!("({} {})", func.name, a.join(" "))
        }
        ExprKind::Unary { op, arg } => {
            let op = match op {
                UnOp::Neg => "neg",
                UnOp::Not => "!",
            };
            format!("({op} {})", expr(arg))
        }
        ExprKind::Binary { op, lhs, rhs } => {
            format!("({} {} {})", op.as_str(), expr(lhs), expr(rhs))
        }
        ExprKind::Chain { first, rest } => {
            let terms: Vec<String> = rest
                .iter()
                .map(|(op, t)| format!("{} {}", op.as_str(), expr(t)))
                .collect();
            format!("(chain {} {})", expr(first), terms.join(" "))
        }
        ExprKind::Iverson(c) => format!("[{}]", expr(c)),
        ExprKind::If { cond, then, otherwise } => {
            format!("(if {} {} {})", expr(cond), expr(then), expr(otherwise))
        }
        ExprKind::Reduce {
            op,
            binders: b,
            mask,
            body,
        } => {
            let m = mask.as_ref().map(|m| format!(" | {}", expr(m))).unwrap_or_default();
            format!("({}[{}{m}] {})", op.as_str(), binders(b), expr(body))
        }
        ExprKind::Paren(inner) => expr(inner),
        ExprKind::Order {
            op,
            binders: order_binders,
            mask,
            body,
            options,
            subscripts,
        } => {
            let m = mask.as_ref().map(|m| format!(" | {}", expr(m))).unwrap_or_default();
            let opts: String = options
                .iter()
                .map(|o| format!(" ({} {})", o.name.name, option_value(&o.value, expr)))
                .collect();
            let subs: Vec<String> = subscripts.iter().map(expr).collect();
            format!(
                "({}[{}{m}] {}{opts} [{}])",
                op.as_str(),
                binders(order_binders),
                expr(body),
                subs.join(" ")
            )
        }
    }
}

/// An option value as written: a string in quotes, an expression by `show`.
pub fn option_value(v: &OptionValue, show: impl Fn(&Expr) -> String) -> String {
    match v {
        OptionValue::Str(s, _) => format!("\"{s}\""),
        OptionValue::Expr(e) => show(e),
    }
}

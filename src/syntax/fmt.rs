//! `lossc fmt`: the canonical layout of lx source.
//!
//! Whitespace is normalised (4-space indentation, one space around binary operators and after commas,
//! one item per paragraph, one statement per line) and long expressions are broken before top-level
//! `+`/`-` operators. Everything else is kept as written — parentheses, number spellings, doc comments
//! and ordinary comments (a comment on its own line stays before the item or statement that follows it; a
//! comment after code stays at the end of that line). Formatting is idempotent and preserves meaning: the
//! formatted text parses to the same AST (tested over every .lx file of the repository).

use super::ast::*;
use super::print::binders;
use crate::diag::Diags;

/// The target line width.
const WIDTH: usize = 100;

/// A comment found in the source, with its byte range.
#[derive(Debug, Clone)]
struct Comment {
    start: usize,
    text: String,
    /// Code precedes it on its line.
    trailing: bool,
}

/// Formats source text (which must parse).
pub fn format(name: &str, text: &str) -> Result<String, Diags> {
    let file = crate::Program::parse_only(name, text)?;
    let comments = comments(text);
    SOURCE.with(|s| *s.borrow_mut() = text.to_string());
    let mut f = Formatter {
        text,
        comments,
        next: 0,
        out: String::new(),
    };
    for (k, item) in file.items.iter().enumerate() {
        if k > 0 {
            f.out.push('\n');
        }
        f.leading(item.span.start as usize, "");
        f.item(item);
    }
    f.leading(text.len(), "");
    let out = f.out.trim_end().to_string() + "\n";
    Ok(out)
}

/// Every `//` (not `///`) and `/* */` comment, in order.
fn comments(text: &str) -> Vec<Comment> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let line_has_code = |pos: usize| {
        let line_start = text[..pos].rfind('\n').map_or(0, |p| p + 1);
        !text[line_start..pos].trim().is_empty()
    };
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            let end = text[i..].find('\n').map_or(text.len(), |e| i + e);
            let is_doc = b.get(i + 2) == Some(&b'/') && b.get(i + 3) != Some(&b'/');
            if !is_doc {
                out.push(Comment {
                    start: i,
                    text: text[i..end].trim_end().to_string(),
                    trailing: line_has_code(i),
                });
            }
            i = end;
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let start = i;
            i = super::scan_block_comment(b, i).0;
            out.push(Comment {
                start,
                text: text[start..i].to_string(),
                trailing: line_has_code(start),
            });
        } else {
            i += 1;
        }
    }
    out
}

struct Formatter<'a> {
    text: &'a str,
    comments: Vec<Comment>,
    next: usize,
    out: String,
}

impl Formatter<'_> {
    /// Emits the comments that start before `pos`, each on its own line with `indent`.
    fn leading(&mut self, pos: usize, indent: &str) {
        while let Some(c) = self.comments.get(self.next) {
            if c.start >= pos {
                break;
            }
            if c.trailing && !self.out.ends_with('\n') && !self.out.is_empty() {
                self.out.push(' ');
                self.out.push_str(&c.text);
                self.out.push('\n');
            } else {
                if !self.out.is_empty() && !self.out.ends_with('\n') {
                    self.out.push('\n');
                }
                for line in c.text.lines() {
                    self.out.push_str(indent);
                    self.out.push_str(line.trim_start());
                    self.out.push('\n');
                }
                // A blank line after the comment in the source stays (a file's header comment, say).
                let end = c.start + c.text.len();
                let upto = self.comments.get(self.next + 1).map_or(pos, |n| n.start.min(pos));
                let gap = self.text.get(end..upto).unwrap_or("");
                if gap.chars().filter(|ch| *ch == '\n').count() >= 2 && gap.trim().is_empty() {
                    self.out.push('\n');
                }
            }
            self.next += 1;
        }
    }

    /// Ends a line, first attaching a comment that trails code and starts before `before` (the end of the
    /// source line where the construct just printed ends).
    fn end_line(&mut self, before: usize) {
        if let Some(c) = self.comments.get(self.next)
            && c.trailing
            && c.start < before
        {
            self.out.push(' ');
            self.out.push_str(&c.text);
            self.next += 1;
        }
        self.out.push('\n');
    }

    fn item(&mut self, item: &Item) {
        for line in item.doc.lines() {
            if line.is_empty() {
                self.out.push_str("///\n");
            } else {
                self.out.push_str("/// ");
                self.out.push_str(line);
                self.out.push('\n');
            }
        }
        match &item.kind {
            ItemKind::Use { path, glob } => {
                let mut p: Vec<&str> = path.iter().map(|i| i.name.as_str()).collect();
                if *glob {
                    p.push("*");
                }
                self.out.push_str(&format!("use {}", p.join("::")));
                self.end_line(self.line_end(item.span.end as usize));
            }
            ItemKind::Const { name, value } => {
                self.out.push_str(&format!("const {} = {}", name.name, expr(value)));
                self.end_line(self.line_end(item.span.end as usize));
            }
            ItemKind::Fn(f) => {
                let params: Vec<String> = f
                    .params
                    .iter()
                    .map(|p| match &p.ty {
                        Some(t) => format!("{}: {}", p.name.name, super::print::ty(t)),
                        None => p.name.name.clone(),
                    })
                    .collect();
                let head = format!("fn {}({}) {{", f.name.name, params.join(", "));
                self.out.push_str(&head);
                self.end_line(self.head_end(&f.body));
                self.body(&f.body);
            }
            ItemKind::Loss(l) => {
                let params: Vec<String> = l.params.iter().map(param).collect();
                self.list(
                    &format!("loss {}(", l.name.name),
                    &params,
                    &format!("){} {{", outputs(l)),
                );
                self.end_line(self.head_end(&l.body));
                self.body(&l.body);
            }
            ItemKind::Extern(e) => {
                let (params, outs) = super::print::extern_signature(e, expr);
                self.list(&format!("extern fn {}{params} -> (", e.name.name), &outs, ")");
                self.end_line(self.line_end(item.span.end as usize));
            }
        }
    }

    /// `head`, the items separated by commas and `tail` on one line where it fits, else one item per
    /// line (indented, each with a comma) between `head` and `tail`.
    fn list(&mut self, head: &str, items: &[String], tail: &str) {
        let one_line = format!("{head}{}{tail}", items.join(", "));
        if one_line.len() <= WIDTH {
            self.out.push_str(&one_line);
            return;
        }
        self.out.push_str(head);
        self.out.push('\n');
        for item in items {
            self.out.push_str(&format!("    {item},\n"));
        }
        self.out.push_str(tail);
    }

    /// The end of the source line holding the last token before `pos`. (pest spans of rules that end in
    /// an optional part include the whitespace and comments it skipped; those are stepped back over.)
    fn line_end(&self, pos: usize) -> usize {
        let mut pos = pos.min(self.text.len());
        loop {
            let trimmed = self.text[..pos].trim_end().len();
            match self
                .comments
                .iter()
                .find(|c| c.start + c.text.len() == trimmed && c.start < trimmed)
            {
                Some(c) => pos = c.start,
                None => {
                    pos = trimmed;
                    break;
                }
            }
        }
        self.text[pos..].find('\n').map_or(self.text.len(), |e| pos + e)
    }

    /// Where a comment stops trailing the `{` of a body: the end of its line, or the body's first token
    /// where that is on the same line (`{ mean[i] x[i] } // c` keeps the comment after the `}`).
    fn head_end(&self, b: &Body) -> usize {
        let first = b.stmts.first().map_or(b.result.span.start, |s| s.span.start) as usize;
        self.line_end(b.span.start as usize).min(first)
    }

    fn body(&mut self, b: &Body) {
        for s in &b.stmts {
            self.leading(s.span.start as usize, "    ");
            let start = format!("    {} = ", super::print::stmt_head(s));
            match &s.unpack {
                Some(u) => self
                    .out
                    .push_str(&format!("{start}{}", super::print::unpack_call(u, expr))),
                None => self.wrapped(&start, &s.value),
            }
            self.end_line(self.line_end(s.span.end as usize));
        }
        self.leading(b.result.span.start as usize, "    ");
        self.wrapped("    ", &b.result);
        // The closing `}` (the body's last byte) ends the result's line where it stands on it.
        let close = (b.span.end as usize).saturating_sub(1);
        self.end_line(self.line_end(b.result.span.end as usize).min(close));
        self.leading(close, "    ");
        self.out.push('}');
        self.end_line(self.line_end(b.span.end as usize));
    }

    /// `prefix` then the expression, broken before top-level `+`/`-` when too long.
    fn wrapped(&mut self, prefix: &str, e: &Expr) {
        let flat = expr(e);
        if prefix.len() + flat.len() <= WIDTH {
            self.out.push_str(prefix);
            self.out.push_str(&flat);
            return;
        }
        // Break a top-level additive chain (also inside a leading reduction's body).
        let (lead, chain) = split_chain(e);
        let cont = " ".repeat(prefix.len().max(4) + lead.len());
        self.out.push_str(prefix);
        self.out.push_str(&lead);
        for (k, (op, term)) in chain.iter().enumerate() {
            if k == 0 {
                self.out.push_str(term);
            } else {
                self.out.push('\n');
                self.out.push_str(&cont);
                self.out.push_str(&format!("{op} {term}"));
            }
        }
    }
}

/// A reduction prefix (`mean[i] `) and the terms of the additive chain after it.
fn split_chain(e: &Expr) -> (String, Vec<(&'static str, String)>) {
    if let ExprKind::Reduce {
        op,
        binders: b,
        mask,
        body,
    } = &e.kind
    {
        let m = mask.as_ref().map(|m| format!(" | {}", expr(m))).unwrap_or_default();
        let lead = format!("{}[{}{m}] ", op.as_str(), binders(b));
        let (inner, chain) = split_chain(body);
        return (lead + &inner, chain);
    }
    let mut terms = Vec::new();
    fn walk(e: &Expr, op: &'static str, out: &mut Vec<(&'static str, String)>) {
        match &e.kind {
            ExprKind::Chain { first, rest } if matches!(rest[0].0, BinOp::Add | BinOp::Sub) => {
                out.push((op, expr(first)));
                out.extend(rest.iter().map(|(o, t)| (o.as_str(), expr(t))));
            }
            ExprKind::Binary {
                op: o @ (BinOp::Add | BinOp::Sub),
                lhs,
                rhs,
            } => {
                walk(lhs, op, out);
                out.push((o.as_str(), expr(rhs)));
            }
            _ => out.push((op, expr(e))),
        }
    }
    walk(e, "", &mut terms);
    (String::new(), terms)
}

/// A loss's ` -> …` clause (empty without one).
pub fn outputs(l: &LossDef) -> String {
    let named: Vec<String> = l
        .outputs
        .iter()
        .map(|o| {
            let updates = o
                .updates
                .as_ref()
                .map_or(String::new(), |u| format!(" updates {}", u.name));
            format!("{}: {}{updates}", o.name.name, super::print::ty(&o.ty))
        })
        .collect();
    let named = (!named.is_empty()).then(|| format!("({})", named.join(", ")));
    let result = l.result.as_ref().map(super::print::ty);
    match (result, named) {
        (None, None) => String::new(),
        (Some(r), None) => format!(" -> {r}"),
        (None, Some(n)) => format!(" -> {n}"),
        (Some(r), Some(n)) => format!(" -> {r}, {n}"),
    }
}

/// One loss parameter in lx syntax.
pub fn param(p: &Param) -> String {
    let mut s = format!("{}: {}", p.name.name, super::print::ty(&p.ty));
    if p.nograd.is_some() {
        s.push_str(" nograd");
    }
    if let Some(k) = &p.state {
        s.push_str(&format!(" state[{}]", k.name));
    }
    if let Some(d) = &p.default {
        s.push_str(&format!(" = {}", expr(d)));
    }
    s
}

/// An expression in lx syntax, parenthesised exactly as in the source.
pub fn expr(e: &Expr) -> String {
    SOURCE.with(|src| print_expr(e, &src.borrow()))
}

thread_local! {
    /// The text being formatted, for the spelling of number literals.
    static SOURCE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Prints `e` in lx syntax. The AST keeps the user's parentheses, so none are added: the text reparses to
/// the same tree. Number literals keep their source spelling.
fn print_expr(e: &Expr, src: &str) -> String {
    let go = |x: &Expr| print_expr(x, src);
    let list = |xs: &[Expr]| xs.iter().map(go).collect::<Vec<_>>().join(", ");
    match &e.kind {
        ExprKind::Number { value, is_int } => match src.get(e.span.start as usize..e.span.end as usize) {
            Some(text) if !text.is_empty() && text.parse::<f64>().is_ok_and(|v| v == *value) => text.to_string(),
            _ if *is_int => format!("{}", *value as i64),
            _ => format!("{value:?}"),
        },
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Access { name, subscripts: None } => name.name.clone(),
        ExprKind::Access {
            name,
            subscripts: Some(s),
        } => format!("{}[{}]", name.name, list(s)),
        ExprKind::Call { func, args } => format!("{}({})", func.name, list(args)),
        ExprKind::Unary { op, arg } => format!("{}{}", if *op == UnOp::Neg { "-" } else { "!" }, go(arg)),
        ExprKind::Binary { op, lhs, rhs } => format!("{} {} {}", go(lhs), op.as_str(), go(rhs)),
        ExprKind::Chain { first, rest } => {
            let mut text = go(first);
            for (op, term) in rest {
                text.push_str(&format!(" {} {}", op.as_str(), go(term)));
            }
            text
        }
        ExprKind::Iverson(c) => format!("[{}]", go(c)),
        ExprKind::If { cond, then, otherwise } => format!("if {} then {} else {}", go(cond), go(then), go(otherwise)),
        ExprKind::Reduce {
            op,
            binders: b,
            mask,
            body,
        } => {
            let m = mask.as_ref().map(|m| format!(" | {}", go(m))).unwrap_or_default();
            format!("{}[{}{m}] {}", op.as_str(), binders(b), go(body))
        }
        ExprKind::Paren(inner) => format!("({})", go(inner)),
        ExprKind::Order {
            op,
            binders: order_binders,
            mask,
            body,
            options,
            subscripts,
        } => {
            let m = mask.as_ref().map(|m| format!(" | {}", go(m))).unwrap_or_default();
            let opts: Vec<String> = options
                .iter()
                .map(|o| format!("{} = {}", o.name.name, super::print::option_value(&o.value, go)))
                .collect();
            let opts = if opts.is_empty() {
                String::new()
            } else {
                format!("; {}", opts.join(", "))
            };
            let b = binders(order_binders);
            format!("{}[{b}{m}]({}{opts})[{}]", op.as_str(), go(body), list(subscripts))
        }
    }
}

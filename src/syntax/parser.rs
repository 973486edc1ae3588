//! pest pairs to AST, plus the pre-scan that keeps the recursive-descent parser's stack bounded.

use pest::Parser as _;
use pest::iterators::Pair;

use super::ast::*;
use super::{MAX_DEPTH, MAX_NESTING};

/// The most grammar-rule calls one parse may make, besides [`PARSER_CALLS_PER_BYTE`] for each byte of
/// input (long but flat input, such as a chain of 100,000 terms, needs calls in proportion to its length).
const MAX_PARSER_CALLS: usize = 20_000_000;

/// Grammar-rule calls allowed per byte of input, over [`MAX_PARSER_CALLS`].
const PARSER_CALLS_PER_BYTE: usize = 64;
use crate::diag::{Code, Diag, SourceId, Span};

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/lx.pest"]
struct LxParser;

type Result<T> = std::result::Result<T, Diag>;

/// Parses one file. `source` is the id its spans will carry.
pub fn parse(source: SourceId, text: &str) -> Result<File> {
    prescan(source, text)?;
    // Bounds the work of backtracking on pathological input (a PEG can otherwise take exponential time).
    let limit = MAX_PARSER_CALLS.saturating_add(text.len().saturating_mul(PARSER_CALLS_PER_BYTE));
    pest::set_call_limit(std::num::NonZeroUsize::new(limit));
    let mut pairs = LxParser::parse(Rule::program, text).map_err(|e| syntax_error(source, text, e))?;
    let program = pairs.next().expect("pest returns the program rule");
    let b = Builder { source };
    let mut items = Vec::new();
    for p in program.into_inner() {
        if p.as_rule() == Rule::item {
            items.push(b.item(p)?);
        }
    }
    Ok(File { items })
}

fn syntax_error(source: SourceId, text: &str, e: pest::error::Error<Rule>) -> Diag {
    if let pest::error::ErrorVariant::CustomError { message } = &e.variant
        && message.contains("call limit")
    {
        return Diag::new(Code::TooDeep, "the parser gave up: this input is too complex")
            .label(Span::new(source, 0, text.len().min(1)), "in this file")
            .help("look for unclosed brackets or very deeply nested expressions; split a long one with `let`");
    }
    let (start, end) = match e.location {
        pest::error::InputLocation::Pos(p) => (p, p),
        pest::error::InputLocation::Span((s, e)) => (s, e),
    };
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| describe(*r)).collect();
            names.sort_unstable();
            names.dedup();
            names
        }
        pest::error::ErrorVariant::CustomError { .. } => vec![],
    };
    let found = text[start..].chars().next();
    // A block comment that never closes swallows the rest of the file: say so, where it opens.
    let tokens = super::lexer::tokens(text);
    if let Some((_, at)) = tokens
        .iter()
        .find(|(t, _)| matches!(t, super::lexer::Tok::BlockComment(super::lexer::Closed::Open)))
    {
        return Diag::new(Code::Syntax, "this block comment is never closed")
            .label(Span::new(source, at.start, at.start + 2), "opened here")
            .help("close it with `*/`");
    }
    if found.is_none() {
        // The end of the file inside brackets: point at the innermost one left open.
        let mut open: Vec<std::ops::Range<usize>> = Vec::new();
        for (t, at) in &tokens {
            match t {
                super::lexer::Tok::Open => open.push(at.clone()),
                super::lexer::Tok::Close => {
                    open.pop();
                }
                _ => {}
            }
        }
        if let Some(at) = open.pop() {
            let bracket = &text[at.clone()];
            return Diag::new(
                Code::Syntax,
                format!("unexpected end of file: this `{bracket}` is never closed"),
            )
            .label(
                Span::new(source, at.start, at.end),
                format!("this `{bracket}` is never closed"),
            )
            .label(Span::new(source, start, start), "the file ends here")
            .help(format!(
                "close it with `{}`",
                match bracket {
                    "(" => ")",
                    "[" => "]",
                    _ => "}",
                }
            ));
        }
    }
    if let Some(op) = reduction_before(text, start) {
        // `count[j | c] < k`: the reduction's body is missing (for `count`, the condition it counts).
        let what = if op == "count" {
            "`count[j] c` counts the points where the condition `c` holds (`count[j | m] c` within a mask)"
        } else {
            "the reduced expression follows the `]`: `sum[k] e`"
        };
        return Diag::new(Code::Syntax, format!("`{op}[…]` needs a body after its `]`"))
            .label(
                Span::new(source, start, start + found.map_or(0, char::len_utf8)),
                "the body should start here",
            )
            .help(what);
    }
    if text[start..].starts_with("///") {
        // `2 /// note` once read as `2 / // note`, a division by the next line.
        let end = start + text[start..].find('\n').unwrap_or(text.len() - start);
        return Diag::new(Code::Syntax, "a doc comment (`///`) cannot stand inside an expression")
            .label(Span::new(source, start, end), "doc comment here")
            .help("doc comments document items and statements; write `//` for a comment inside an expression");
    }
    if found == Some('}')
        && let Some((at, sign)) = leading_sign_line(text, start)
    {
        // `let g = a + b` then `-log(g)` on the next line: the sign continued the let, and the body has
        // no value left.
        let end = at + text[at..].find('\n').unwrap_or(text.len() - at);
        return Diag::new(
            Code::Syntax,
            "this body has no value: its last line continues the line above",
        )
        .label(
            Span::new(source, at, end),
            format!("a line that starts with `{sign}` continues the expression before it"),
        )
        .label(Span::new(source, start, start + 1), "the body ends here")
        .help(format!(
            "wrap the value in parentheses so that it stands on its own: `({}…)`",
            sign
        ));
    }
    // The whole word where one starts (`loss`, not `l`).
    let word: &str = {
        let rest = &text[start..];
        let len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map_or(rest.len(), |(i, _)| i);
        &rest[..len]
    };
    let after_word = text[start + word.len()..].trim_start();
    if expected.contains(&"`nograd`") && (found == Some('{') || !word.is_empty()) {
        // After a parameter's type the list goes on with `,` or ends with `)`.
        let (message, help) = match found {
            Some('{') => (
                "the parameter list is never closed",
                "close it with `)` before the `{`".to_string(),
            ),
            _ => (
                "a `,` is missing between two parameters",
                format!("separate the parameters with a `,` before `{word}`"),
            ),
        };
        return Diag::new(Code::Syntax, message)
            .label(Span::new(source, start, start + word.len().max(1)), "here")
            .help(help);
    }
    if expected == ["a parameter"] && !word.is_empty() && (after_word.starts_with(',') || after_word.starts_with(')')) {
        return Diag::new(Code::Syntax, format!("parameter `{word}` has no type"))
            .label(
                Span::new(source, start, start + word.len()),
                "a parameter needs its type",
            )
            .help(format!(
                "write `{word}: f32[N]` (a float tensor), `{word}: idx[N] < C` (labels) or `{word}: f32` (a scalar)"
            ));
    }
    if expected == ["a name"] && crate::syntax::lexer::is_keyword(word) {
        return Diag::new(Code::Syntax, format!("`{word}` is a keyword and cannot be a name"))
            .label(Span::new(source, start, start + word.len()), "a keyword")
            .help(format!("choose another name, such as `{word}_`"));
    }
    if let Some((name, at)) = unknown_reduction_before(text, start) {
        return Diag::new(Code::Syntax, format!("`{name}` is not a reduction"))
            .label(
                Span::new(source, at, at + name.len()),
                "read as a tensor, which the next term cannot follow",
            )
            .help(format!(
                "did you mean `{}`?",
                crate::diag::closest(name, crate::syntax::ast::ReduceOp::ALL.iter().map(|r| r.as_str()))
                    .unwrap_or("sum")
            ));
    }
    let shown: String = if word.is_empty() {
        found.map(String::from).unwrap_or_default()
    } else if word.chars().count() > 40 {
        format!("{}…", word.chars().take(40).collect::<String>())
    } else {
        word.to_string()
    };
    let message = match found {
        Some(_) => format!("unexpected `{shown}`"),
        None => "unexpected end of file".to_string(),
    };
    let end = if end == start {
        start + found.map_or(0, char::len_utf8)
    } else {
        end
    };
    let help = if expected.is_empty() {
        "check the syntax against the language tour in README.md".to_string()
    } else {
        format!("expected {}", expected.join(", "))
    };
    Diag::new(Code::Syntax, message)
        .label(Span::new(source, start, end), "here")
        .help(help)
}

/// Where the last line before `at` starts, and its sign, when it begins with `-` or `+` after a line of
/// its own (the sign reads as a binary operator continuing that line).
fn leading_sign_line(text: &str, at: usize) -> Option<(usize, char)> {
    let before = text[..at].trim_end();
    let line_start = before.rfind('\n')? + 1;
    let line = &before[line_start..];
    let sign = line.trim_start().chars().next().filter(|c| matches!(c, '-' | '+'))?;
    let above = before[..line_start].trim_end();
    (!above.is_empty() && !above.ends_with('{')).then_some((line_start + (line.len() - line.trim_start().len()), sign))
}

/// A name close to a reduction's whose `[…]` ends just before byte `at` (`logsumexpp[k] x`), and where it
/// starts.
fn unknown_reduction_before(text: &str, at: usize) -> Option<(&str, usize)> {
    let before = text.get(..at)?.trim_end();
    let inner = before.strip_suffix(']')?;
    let open = inner.rfind('[')?;
    let head = inner[..open].trim_end();
    let start = head
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let name = &head[start..];
    let reductions = crate::syntax::ast::ReduceOp::ALL.iter().map(|r| r.as_str());
    let close = crate::diag::closest(name, reductions)?;
    (close != name && name.len() >= 3).then_some((name, start))
}

/// The reduction whose `[…]` ends just before byte `at` (spaces between), if one does: `count` for
/// `… count[j | c] <`.
fn reduction_before(text: &str, at: usize) -> Option<&'static str> {
    let before = text.get(..at)?.trim_end();
    let inner = before.strip_suffix(']')?;
    // The matching `[`.
    let mut depth = 0usize;
    let open = inner.char_indices().rev().find_map(|(i, c)| match c {
        ']' => {
            depth += 1;
            None
        }
        '[' if depth == 0 => Some(i),
        '[' => {
            depth -= 1;
            None
        }
        _ => None,
    })?;
    let head = inner[..open].trim_end();
    crate::syntax::ast::ReduceOp::ALL
        .iter()
        .map(|r| r.as_str())
        .find(|name| {
            head.ends_with(name)
                && !head[..head.len() - name.len()].ends_with(|c: char| c.is_alphanumeric() || c == '_')
        })
}

fn describe(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::item | Rule::use_item | Rule::const_item | Rule::fn_item | Rule::loss_item | Rule::extern_item => {
            "an item (`loss`, `fn`, `extern fn`, `use` or `const`)"
        }
        Rule::extern_opt | Rule::str_ty => "an option (`name: str` or `name: f32`)",
        Rule::unpack_stmt => "`let (…) = …`",
        Rule::EOI => "end of file",
        Rule::ident | Rule::access | Rule::call | Rule::call_head => "a name",
        Rule::expr | Rule::primary | Rule::unary | Rule::power | Rule::paren | Rule::iverson => "an expression",
        Rule::int | Rule::float => "a number",
        Rule::or_op | Rule::and_op | Rule::cmp_op | Rule::add_op | Rule::mul_op | Rule::pow_op => "an operator",
        Rule::ty | Rule::elem_ty => "a type (`f32`, `f64` or `idx`)",
        Rule::dim | Rule::dim_atom | Rule::dim_term | Rule::dim_add_op => "a dimension",
        Rule::stmt | Rule::let_stmt | Rule::out_stmt => "`let` or `out`",
        Rule::param => "a parameter",
        Rule::binder => "an index",
        Rule::subscripts | Rule::shape | Rule::head => "`[`",
        Rule::bound => "`<`",
        Rule::nograd => "`nograd`",
        Rule::order | Rule::order_op => "`topk`, `argsort` or `sortnet`",
        Rule::option => "an option (`name = value`)",
        Rule::string => "a string",
        Rule::state_key => "`state[…]`",
        Rule::outputs | Rule::result_ty => "`->`",
        Rule::body => "`{`",
        Rule::path | Rule::glob => "a module path",
        _ => return None,
    })
}

/// Bounds the nesting the recursive grammar will see. Counts open brackets plus prefix constructs
/// (reduction keywords, `if`, `then`, `else`, unary operators) since the enclosing bracket; `let`, `out` and
/// `,` start afresh at the enclosing bracket's level.
fn prescan(source: SourceId, text: &str) -> Result<()> {
    let bytes = text.as_bytes();
    let mut stack: Vec<usize> = Vec::new();
    let mut level = 0usize;
    let mut i = 0;
    let too_deep = |at: usize| {
        Diag::new(Code::TooDeep, format!("nesting deeper than {MAX_NESTING} levels"))
            .label(
                Span::new(source, at, (at + 1).min(text.len())),
                "this is nested too deeply",
            )
            .help("split the expression with `let` or a `fn`")
    };
    let mut prev_operand = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            // Block comments nest in the grammar; skip them the same way.
            let (end, deepest, _) = super::scan_block_comment(bytes, i);
            if deepest > MAX_NESTING {
                return Err(too_deep(i));
            }
            i = end;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            match word {
                "sum" | "mean" | "max" | "min" | "prod" | "logsumexp" | "count" | "if" => level += 1,
                "let" | "out" => level = stack.last().copied().unwrap_or(0),
                _ => {}
            }
            if level > MAX_NESTING {
                return Err(too_deep(start));
            }
            prev_operand = true;
            continue;
        }
        match c {
            b'(' | b'[' | b'{' => {
                stack.push(level);
                level += 1;
                prev_operand = false;
            }
            b')' | b']' | b'}' => {
                level = stack.pop().unwrap_or(0);
                prev_operand = true;
            }
            b',' => {
                level = stack.last().copied().unwrap_or(0) + usize::from(!stack.is_empty());
                prev_operand = false;
            }
            b'-' | b'!' if !prev_operand => level += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'0'..=b'9' | b'.' => prev_operand = true,
            _ => prev_operand = false,
        }
        if level > MAX_NESTING {
            return Err(too_deep(i));
        }
        i += 1;
    }
    Ok(())
}

struct Builder {
    source: SourceId,
}

impl Builder {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.source, s.start(), s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn item(&self, p: Pair<Rule>) -> Result<Item> {
        let span = self.span(&p);
        let mut doc = Vec::new();
        let mut kind = None;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::doc_comment => {
                    let line = q.as_str().trim_start_matches("///");
                    doc.push(line.strip_prefix(' ').unwrap_or(line).trim_end().to_string());
                }
                Rule::use_item => kind = Some(self.use_item(q)),
                Rule::const_item => {
                    let mut it = q.into_inner();
                    let name = self.ident(it.next().unwrap());
                    let value = self.expr(it.next().unwrap(), 0)?;
                    kind = Some(ItemKind::Const { name, value });
                }
                Rule::fn_item => kind = Some(ItemKind::Fn(self.fn_item(q)?)),
                Rule::loss_item => kind = Some(ItemKind::Loss(self.loss_item(q)?)),
                Rule::extern_item => kind = Some(ItemKind::Extern(self.extern_item(q)?)),
                r => unreachable!("item child {r:?}"),
            }
        }
        Ok(Item {
            doc: doc.join("\n"),
            kind: kind.expect("grammar: item has a kind"),
            span,
        })
    }

    fn use_item(&self, p: Pair<Rule>) -> ItemKind {
        let path_pair = p.into_inner().next().unwrap();
        let mut path = Vec::new();
        let mut glob = false;
        for q in path_pair.into_inner() {
            match q.as_rule() {
                Rule::ident => path.push(self.ident(q)),
                Rule::glob => glob = true,
                r => unreachable!("path child {r:?}"),
            }
        }
        ItemKind::Use { path, glob }
    }

    fn fn_item(&self, p: Pair<Rule>) -> Result<FnDef> {
        let mut it = p.into_inner();
        let name = self.ident(it.next().unwrap());
        let mut params = Vec::new();
        let mut body = None;
        for q in it {
            match q.as_rule() {
                Rule::fn_param => {
                    let mut jt = q.into_inner();
                    let name = self.ident(jt.next().unwrap());
                    let ty = jt.next().map(|t| self.ty(t)).transpose()?;
                    params.push(FnParam { name, ty });
                }
                Rule::body => body = Some(self.body(q)?),
                r => unreachable!("fn child {r:?}"),
            }
        }
        Ok(FnDef {
            name,
            params,
            body: body.unwrap(),
        })
    }

    fn loss_item(&self, p: Pair<Rule>) -> Result<LossDef> {
        let mut it = p.into_inner();
        let name = self.ident(it.next().unwrap());
        let mut params = Vec::new();
        let mut outputs = Vec::new();
        let mut result = None;
        let mut body = None;
        for q in it {
            match q.as_rule() {
                Rule::param => params.push(self.param(q)?),
                Rule::outputs => {
                    for d in q.into_inner() {
                        if d.as_rule() == Rule::result_ty {
                            result = Some(self.ty(d.into_inner().next().unwrap())?);
                            continue;
                        }
                        outputs.push(self.out_decl(d)?);
                    }
                }
                Rule::body => body = Some(self.body(q)?),
                r => unreachable!("loss child {r:?}"),
            }
        }
        Ok(LossDef {
            name,
            params,
            result,
            outputs,
            body: body.unwrap(),
        })
    }

    fn param(&self, p: Pair<Rule>) -> Result<Param> {
        let mut jt = p.into_inner();
        let name = self.ident(jt.next().unwrap());
        let ty = self.ty(jt.next().unwrap())?;
        let mut nograd = None;
        let mut state = None;
        let mut default = None;
        for r in jt {
            match r.as_rule() {
                Rule::nograd => nograd = Some(self.span(&r)),
                Rule::state_key => state = Some(self.ident(r.into_inner().next().unwrap())),
                Rule::expr => default = Some(self.expr(r, 0)?),
                x => unreachable!("param child {x:?}"),
            }
        }
        Ok(Param {
            name,
            ty,
            nograd,
            state,
            default,
        })
    }

    fn out_decl(&self, p: Pair<Rule>) -> Result<OutDecl> {
        let mut jt = p.into_inner();
        let name = self.ident(jt.next().unwrap());
        let ty = self.ty(jt.next().unwrap())?;
        let updates = jt.next().map(|u| self.ident(u));
        Ok(OutDecl { name, ty, updates })
    }

    fn extern_item(&self, p: Pair<Rule>) -> Result<ExternDef> {
        let mut it = p.into_inner();
        let name = self.ident(it.next().unwrap());
        let (mut params, mut options, mut outputs) = (Vec::new(), Vec::new(), Vec::new());
        for q in it {
            match q.as_rule() {
                Rule::param => params.push(self.param(q)?),
                Rule::extern_opt => {
                    let mut jt = q.into_inner();
                    let name = self.ident(jt.next().unwrap());
                    let t = jt.next().unwrap();
                    let ty = if t.as_rule() == Rule::str_ty {
                        None
                    } else {
                        Some(self.ty(t)?)
                    };
                    let default = jt.next().map(|v| self.option_value(v, 0)).transpose()?;
                    options.push(ExternOpt { name, ty, default });
                }
                Rule::out_decl => outputs.push(self.out_decl(q)?),
                r => unreachable!("extern child {r:?}"),
            }
        }
        Ok(ExternDef {
            name,
            params,
            options,
            outputs,
        })
    }

    /// An option's value: a string literal or an expression.
    fn option_value(&self, v: Pair<Rule>, depth: usize) -> Result<OptionValue> {
        Ok(match v.as_rule() {
            Rule::string => {
                let text = v.as_str();
                OptionValue::Str(text[1..text.len() - 1].to_string(), self.span(&v))
            }
            _ => OptionValue::Expr(self.expr(v, depth)?),
        })
    }

    fn option(&self, q: Pair<Rule>, depth: usize) -> Result<OrderOption> {
        let mut jt = q.into_inner();
        let name = self.ident(jt.next().unwrap());
        let value = self.option_value(jt.next().unwrap(), depth)?;
        Ok(OrderOption { name, value })
    }

    fn ty(&self, p: Pair<Rule>) -> Result<Type> {
        let span = self.span(&p);
        let mut elem = ElemTy::F32;
        let mut shape = Vec::new();
        let (mut bound, mut ignore) = (None, None);
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::elem_ty => {
                    elem = match q.as_str() {
                        "f32" => ElemTy::F32,
                        "f64" => ElemTy::F64,
                        "bf16" => ElemTy::Bf16,
                        "f16" => ElemTy::F16,
                        _ => ElemTy::Idx,
                    }
                }
                Rule::shape => {
                    for d in q.into_inner() {
                        shape.push(self.dim(d)?);
                    }
                }
                Rule::bound => {
                    let mut parts = q.into_inner();
                    bound = Some(self.dim(parts.next().unwrap())?);
                    if let Some(i) = parts.next() {
                        let value = i.into_inner().next().unwrap();
                        let span = self.span(&value);
                        ignore = Some(value.as_str().parse::<i64>().map_err(|_| self.bad_number(span))?);
                    }
                }
                r => unreachable!("type child {r:?}"),
            }
        }
        Ok(Type {
            elem,
            shape,
            bound,
            ignore,
            span,
        })
    }

    fn dim(&self, p: Pair<Rule>) -> Result<DimExpr> {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::dim => {
                let mut it = p.into_inner();
                let mut acc = self.dim(it.next().unwrap())?;
                while let Some(op) = it.next() {
                    let rhs = self.dim(it.next().unwrap())?;
                    let span = acc.span.to(rhs.span);
                    let kind = if op.as_str() == "+" {
                        DimExprKind::Add(Box::new(acc), Box::new(rhs))
                    } else {
                        DimExprKind::Sub(Box::new(acc), Box::new(rhs))
                    };
                    acc = DimExpr { kind, span };
                }
                Ok(acc)
            }
            Rule::dim_term => {
                let mut it = p.into_inner();
                let mut acc = self.dim(it.next().unwrap())?;
                for q in it {
                    let rhs = self.dim(q)?;
                    let span = acc.span.to(rhs.span);
                    acc = DimExpr {
                        kind: DimExprKind::Mul(Box::new(acc), Box::new(rhs)),
                        span,
                    };
                }
                Ok(acc)
            }
            Rule::dim_atom => {
                let q = p.into_inner().next().unwrap();
                match q.as_rule() {
                    Rule::int => {
                        let v = q.as_str().parse::<i64>().map_err(|_| {
                            Diag::new(Code::BadNumber, "dimension literal too large")
                                .label(span, "does not fit in 64 bits")
                                .help("dimensions are at most 2^63 - 1")
                        })?;
                        Ok(DimExpr {
                            kind: DimExprKind::Int(v),
                            span,
                        })
                    }
                    Rule::ident => Ok(DimExpr {
                        kind: DimExprKind::Name(q.as_str().to_string()),
                        span,
                    }),
                    Rule::dim => self.dim(q),
                    r => unreachable!("dim atom {r:?}"),
                }
            }
            r => unreachable!("dim {r:?}"),
        }
    }

    fn body(&self, p: Pair<Rule>) -> Result<Body> {
        let span = self.span(&p);
        let mut stmts = Vec::new();
        let mut result = None;
        for q in p.into_inner() {
            match q.as_rule() {
                // `fmt` has nowhere to keep it, and it documents nothing (issue 28).
                Rule::doc_comment => {
                    return Err(
                        Diag::new(Code::Syntax, "a doc comment (`///`) inside a body documents nothing")
                            .label(self.span(&q), "doc comment here")
                            .help("write `//` for a comment inside a body; `///` documents the item it precedes"),
                    );
                }
                Rule::stmt => stmts.push(self.stmt(q.into_inner().next().unwrap())?),
                Rule::expr => result = Some(self.expr(q, 0)?),
                r => unreachable!("body child {r:?}"),
            }
        }
        Ok(Body {
            stmts,
            result: result.unwrap(),
            span,
        })
    }

    fn stmt(&self, p: Pair<Rule>) -> Result<Stmt> {
        let span = self.span(&p);
        if p.as_rule() == Rule::unpack_stmt {
            return self.unpack(p);
        }
        let kind = if p.as_rule() == Rule::let_stmt {
            StmtKind::Let
        } else {
            StmtKind::Out
        };
        let mut it = p.into_inner();
        let name = self.ident(it.next().unwrap());
        let mut head = Vec::new();
        let mut value = None;
        for q in it {
            match q.as_rule() {
                Rule::head => {
                    for b in q.into_inner() {
                        head.push(self.binder(b)?);
                    }
                }
                Rule::expr => value = Some(self.expr(q, 0)?),
                r => unreachable!("stmt child {r:?}"),
            }
        }
        Ok(Stmt {
            kind,
            name,
            head,
            value: value.unwrap(),
            span,
            unpack: None,
        })
    }

    /// `let (a, b) = op(x, y; k = v)`: its value is the call without its options.
    fn unpack(&self, p: Pair<Rule>) -> Result<Stmt> {
        let span = self.span(&p);
        let (mut names, mut args, mut options) = (Vec::new(), Vec::new(), Vec::new());
        let mut func = None;
        let mut call_start = span.start;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::ident if func.is_none() => names.push(self.ident(q)),
                Rule::ident => args.push(self.ident(q)),
                Rule::call_head => {
                    call_start = q.as_span().start() as u32;
                    func = Some(self.ident(q.into_inner().next().unwrap()));
                }
                Rule::option => options.push(self.option(q, 0)?),
                r => unreachable!("unpack child {r:?}"),
            }
        }
        let func = func.expect("grammar: unpack has a call");
        let value = Expr {
            kind: ExprKind::Call {
                func: func.clone(),
                args: (args.iter())
                    .map(|a| Expr {
                        kind: ExprKind::Access {
                            name: a.clone(),
                            subscripts: None,
                        },
                        span: a.span,
                    })
                    .collect(),
            },
            span: Span::new(self.source, call_start as usize, span.end as usize),
        };
        Ok(Stmt {
            kind: StmtKind::Unpack,
            name: names[0].clone(),
            head: Vec::new(),
            value,
            span,
            unpack: Some(Box::new(Unpack {
                names,
                func,
                args,
                options,
            })),
        })
    }

    fn binder(&self, p: Pair<Rule>) -> Result<Binder> {
        let mut it = p.into_inner();
        let name = self.ident(it.next().unwrap());
        let range = it.next().map(|d| self.dim(d)).transpose()?;
        Ok(Binder { name, range })
    }

    fn too_deep(&self, span: Span) -> Diag {
        Diag::new(Code::TooDeep, format!("expression deeper than {MAX_DEPTH} levels"))
            .label(span, "this expression is nested too deeply")
            .help("split it with `let`, or shorten long operator chains")
    }

    /// Builds an expression; `depth` is how deep in the tree this pair sits.
    fn expr(&self, p: Pair<Rule>, depth: usize) -> Result<Expr> {
        let span = self.span(&p);
        if depth > MAX_DEPTH {
            return Err(self.too_deep(span));
        }
        match p.as_rule() {
            Rule::expr => self.expr(p.into_inner().next().unwrap(), depth),
            Rule::or_expr | Rule::and_expr | Rule::cmp_expr | Rule::add_expr | Rule::mul_expr => {
                let mut it = p.into_inner();
                let first = it.next().unwrap();
                let rest: Vec<Pair<Rule>> = it.collect();
                let ops = rest.len() / 2;
                // A long chain of one family is kept flat, one level deep.
                if ops > CHAIN_MIN && rest.chunks(2).all(|pair| binop(pair[0].as_str()).chains()) {
                    let first = self.expr(first, depth + 1)?;
                    let rest = rest
                        .chunks(2)
                        .map(|pair| Ok((binop(pair[0].as_str()), self.expr(pair[1].clone(), depth + 1)?)))
                        .collect::<Result<Vec<_>>>()?;
                    return Ok(Expr {
                        kind: ExprKind::Chain {
                            first: Box::new(first),
                            rest,
                        },
                        span,
                    });
                }
                if depth + ops > MAX_DEPTH {
                    return Err(self.too_deep(span));
                }
                // Left-associative: the first operand sits `ops` levels down.
                let mut acc = self.expr(first, depth + ops)?;
                let mut level = depth + ops;
                for pair in rest.chunks(2) {
                    level -= 1;
                    let op = binop(pair[0].as_str());
                    let rhs = self.expr(pair[1].clone(), level + 1)?;
                    let span = acc.span.to(rhs.span);
                    acc = Expr {
                        kind: ExprKind::Binary {
                            op,
                            lhs: Box::new(acc),
                            rhs: Box::new(rhs),
                        },
                        span,
                    };
                }
                Ok(acc)
            }
            Rule::unary => {
                let parts: Vec<Pair<Rule>> = p.into_inner().collect();
                let (ops, operand) = parts.split_at(parts.len() - 1);
                if depth + ops.len() > MAX_DEPTH {
                    return Err(self.too_deep(span));
                }
                let mut acc = self.expr(operand[0].clone(), depth + ops.len())?;
                for op in ops.iter().rev() {
                    let op_span = self.span(op);
                    let op = if op.as_str() == "-" { UnOp::Neg } else { UnOp::Not };
                    let span = op_span.to(acc.span);
                    acc = Expr {
                        kind: ExprKind::Unary { op, arg: Box::new(acc) },
                        span,
                    };
                }
                Ok(acc)
            }
            Rule::power => {
                let mut it = p.into_inner();
                let base = self.expr(it.next().unwrap(), depth + 1)?;
                match it.next() {
                    None => Ok(base),
                    Some(_op) => {
                        let exp = self.expr(it.next().unwrap(), depth + 1)?;
                        Ok(Expr {
                            kind: ExprKind::Binary {
                                op: BinOp::Pow,
                                lhs: Box::new(base),
                                rhs: Box::new(exp),
                            },
                            span,
                        })
                    }
                }
            }
            Rule::primary => self.expr(p.into_inner().next().unwrap(), depth),
            Rule::int => {
                let value = p.as_str().parse::<f64>().map_err(|_| self.bad_number(span))?;
                if value >= 9.0e15 {
                    return Err(self.bad_number(span));
                }
                Ok(Expr {
                    kind: ExprKind::Number { value, is_int: true },
                    span,
                })
            }
            Rule::float => {
                let value = p.as_str().parse::<f64>().map_err(|_| self.bad_number(span))?;
                if !value.is_finite() {
                    return Err(self.bad_number(span));
                }
                Ok(Expr {
                    kind: ExprKind::Number { value, is_int: false },
                    span,
                })
            }
            Rule::boolean => Ok(Expr {
                kind: ExprKind::Bool(p.as_str() == "true"),
                span,
            }),
            Rule::paren => {
                let inner = self.expr(p.into_inner().next().unwrap(), depth + 1)?;
                Ok(Expr {
                    kind: ExprKind::Paren(Box::new(inner)),
                    span,
                })
            }
            Rule::iverson => {
                let inner = self.expr(p.into_inner().next().unwrap(), depth + 1)?;
                Ok(Expr {
                    kind: ExprKind::Iverson(Box::new(inner)),
                    span,
                })
            }
            Rule::if_expr => {
                let mut it = p.into_inner();
                let cond = self.expr(it.next().unwrap(), depth + 1)?;
                let then = self.expr(it.next().unwrap(), depth + 1)?;
                let otherwise = self.expr(it.next().unwrap(), depth + 1)?;
                Ok(Expr {
                    kind: ExprKind::If {
                        cond: Box::new(cond),
                        then: Box::new(then),
                        otherwise: Box::new(otherwise),
                    },
                    span,
                })
            }
            Rule::reduction => {
                let mut it = p.into_inner();
                let op = ReduceOp::from_name(it.next().unwrap().as_str()).expect("grammar: reduce_op");
                let mut binders = Vec::new();
                let mut exprs = Vec::new();
                for q in it {
                    match q.as_rule() {
                        Rule::binder => binders.push(self.binder(q)?),
                        Rule::expr => exprs.push(q),
                        r => unreachable!("reduction child {r:?}"),
                    }
                }
                let body = self.expr(exprs.pop().unwrap(), depth + 1)?;
                let mask = exprs.pop().map(|m| self.expr(m, depth + 1)).transpose()?.map(Box::new);
                Ok(Expr {
                    kind: ExprKind::Reduce {
                        op,
                        binders,
                        mask,
                        body: Box::new(body),
                    },
                    span,
                })
            }
            Rule::order => {
                let mut it = p.into_inner();
                let op = OrderOp::from_name(it.next().unwrap().as_str()).expect("grammar: order_op");
                let mut binders = Vec::new();
                let mut exprs = Vec::new();
                let mut options = Vec::new();
                let mut subscripts = Vec::new();
                for q in it {
                    match q.as_rule() {
                        Rule::binder => binders.push(self.binder(q)?),
                        Rule::expr => exprs.push(self.expr(q, depth + 1)?),
                        Rule::option => options.push(self.option(q, depth + 1)?),
                        Rule::subscripts => {
                            for a in q.into_inner() {
                                subscripts.push(self.expr(a, depth + 1)?);
                            }
                        }
                        r => unreachable!("order child {r:?}"),
                    }
                }
                let body = exprs.pop().expect("grammar: order body");
                let mask = exprs.pop().map(Box::new);
                Ok(Expr {
                    kind: ExprKind::Order {
                        op,
                        binders,
                        mask,
                        body: Box::new(body),
                        options,
                        subscripts,
                    },
                    span,
                })
            }
            Rule::call => {
                let mut it = p.into_inner();
                let head = it.next().unwrap().into_inner().next().unwrap();
                let func = self.ident(head);
                let args = it.map(|a| self.expr(a, depth + 1)).collect::<Result<Vec<_>>>()?;
                Ok(Expr {
                    kind: ExprKind::Call { func, args },
                    span,
                })
            }
            Rule::access => {
                let mut it = p.into_inner();
                let name = self.ident(it.next().unwrap());
                let subscripts = match it.next() {
                    Some(s) => Some(
                        s.into_inner()
                            .map(|a| self.expr(a, depth + 1))
                            .collect::<Result<Vec<_>>>()?,
                    ),
                    None => None,
                };
                Ok(Expr {
                    kind: ExprKind::Access { name, subscripts },
                    span,
                })
            }
            r => unreachable!("expression rule {r:?}"),
        }
    }

    fn bad_number(&self, span: Span) -> Diag {
        Diag::new(Code::BadNumber, "number literal out of range")
            .label(span, "this literal cannot be represented")
            .help("integers must be below 9e15 and floats finite in f64")
    }
}

fn binop(s: &str) -> BinOp {
    match s {
        "||" => BinOp::Or,
        "&&" => BinOp::And,
        "==" => BinOp::Eq,
        "!=" => BinOp::Ne,
        "<" => BinOp::Lt,
        "<=" => BinOp::Le,
        ">" => BinOp::Gt,
        ">=" => BinOp::Ge,
        "+" => BinOp::Add,
        "-" => BinOp::Sub,
        "*" => BinOp::Mul,
        "/" => BinOp::Div,
        "%" => BinOp::Rem,
        _ => BinOp::Pow,
    }
}

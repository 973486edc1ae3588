//! Ranges from later uses: a `let` head index that its own definition does not give a range
//! (`let pos[i] = if i < B then i + B else i - B`) takes it from how the tensor is subscripted afterwards.
//! `mean[i] z[i] * z[pos[i]]` reads `pos[i]` with the `i` of a reduction that also subscripts `z[i]`, so
//! `pos`'s index ranges over `z`'s first axis.
//!
//! This is a syntactic pass over the loss body, made before it is lowered: for every read `t[…, v, …]` whose
//! subscript at some position is a bare index `v`, it records where `v`'s range can be read — the range
//! written on `v`'s binder, or the axes of the other tensors `v` subscripts bare in the binder's scope. The
//! checker resolves those hints (in that order) only for a head index it could not range otherwise, when
//! the tensors they name are known.

use crate::syntax::ast::{self, ExprKind};

/// Where the range of a subscript can be read.
#[derive(Clone, Debug)]
pub(super) enum Hint {
    /// The range written on the index's binder (`mean[i: 2 * B]`).
    Explicit(ast::DimExpr),
    /// Axis `.1` of tensor `.0`, which the same index subscripts bare in its binder's scope.
    Axis(String, usize),
}

/// A read of `tensor` whose subscript at `position` is a bare index, and where that index's range shows.
#[derive(Clone, Debug)]
pub(super) struct Use {
    pub tensor: String,
    pub position: usize,
    pub hints: Vec<Hint>,
}

/// An index binder in scope during the walk: its name, and where its range shows (computed once, when
/// a read needs it: the written range, then the axes its bare uses subscript in its scope).
struct Scope<'a> {
    name: &'a str,
    range: Option<&'a ast::DimExpr>,
    over: Vec<&'a ast::Expr>,
    hints: Option<Vec<Hint>>,
}

impl<'a> Scope<'a> {
    /// The scope of binder `b` over `over` (a reduction's mask and body, a `let`'s value).
    fn of(b: &'a ast::Binder, over: &[&'a ast::Expr]) -> Scope<'a> {
        Scope {
            name: &b.name.name,
            range: b.range.as_ref(),
            over: over.to_vec(),
            hints: None,
        }
    }

    fn hints(&mut self) -> Vec<Hint> {
        if self.hints.is_none() {
            let mut hints: Vec<Hint> = self.range.map(|r| Hint::Explicit(r.clone())).into_iter().collect();
            for e in &self.over {
                axes_of(e, self.name, &mut hints);
            }
            self.hints = Some(hints);
        }
        self.hints.clone().unwrap_or_default()
    }
}

/// The reads with bare-index subscripts of the `let`s in a loss body whose heads leave an index's range
/// open (only those can need it), in its statements and its result, with hints.
pub(super) fn collect(body: &ast::Body) -> Vec<Use> {
    let open: Vec<&str> = (body.stmts.iter())
        .filter(|s| s.head.iter().any(|b| b.range.is_none()))
        .map(|s| s.name.name.as_str())
        .collect();
    let mut out = Vec::new();
    if open.is_empty() {
        return out;
    }
    let mut w = Walk { open, out: &mut out };
    for s in &body.stmts {
        let mut scopes: Vec<Scope> = s.head.iter().map(|b| Scope::of(b, &[&s.value])).collect();
        w.walk(&s.value, &mut scopes);
    }
    w.walk(&body.result, &mut Vec::new());
    for u in &mut out {
        let mut seen = Vec::new();
        u.hints = through_lets(std::mem::take(&mut u.hints), body, &mut seen);
    }
    out
}

/// `hints`, each axis of a `let` followed by the hints of that `let`'s own head index there: its written
/// range, or the axes its definition subscripts with it (`sum[k] q[i, k] * logp[i, k]` ranges `q`'s `k`
/// over `logp`'s second axis, which `let logp[i, k] = s[i, k] - …` ranges over `s`'s, also where `logp`
/// is defined after `q`). Each hint comes before those it leads to, so a tensor the checker knows is read
/// first; each axis of a `let` is followed once (`seen`), so a chain of `let`s reading each other several
/// times costs one step per axis.
fn through_lets(hints: Vec<Hint>, body: &ast::Body, seen: &mut Vec<(String, usize)>) -> Vec<Hint> {
    let mut out = Vec::new();
    for hint in hints {
        let head = match &hint {
            Hint::Axis(t, q) if !seen.iter().any(|(u, p)| u == t && p == q) => {
                seen.push((t.clone(), *q));
                (body.stmts.iter())
                    .find(|s| s.name.name == *t)
                    .and_then(|s| Some((s, s.head.get(*q)?)))
            }
            _ => None,
        };
        out.push(hint);
        let Some((s, b)) = head else { continue };
        let mut own: Vec<Hint> = b.range.iter().map(|r| Hint::Explicit(r.clone())).collect();
        axes_of(&s.value, &b.name.name, &mut own);
        out.extend(through_lets(own, body, seen));
    }
    out
}

/// The bare name an expression is, if it is one (`i`, or `(i)`).
fn bare(e: &ast::Expr) -> Option<&str> {
    match &e.kind {
        ExprKind::Access { name, subscripts: None } => Some(&name.name),
        ExprKind::Paren(inner) => bare(inner),
        _ => None,
    }
}

/// The walk: the `let`s whose reads are recorded, and the reads found.
struct Walk<'o> {
    open: Vec<&'o str>,
    out: &'o mut Vec<Use>,
}

impl Walk<'_> {
    fn walk<'a>(&mut self, e: &'a ast::Expr, scopes: &mut Vec<Scope<'a>>) {
        match &e.kind {
            ExprKind::Access {
                name,
                subscripts: Some(subs),
            } => {
                for (position, sub) in subs.iter().enumerate() {
                    if self.open.contains(&name.name.as_str())
                        && let Some(v) = bare(sub)
                        && let Some(scope) = scopes.iter_mut().rev().find(|s| s.name == v)
                    {
                        let hints = scope
                            .hints()
                            .into_iter()
                            .filter(|h| !matches!(h, Hint::Axis(t, _) if *t == name.name));
                        self.out.push(Use {
                            tensor: name.name.clone(),
                            position,
                            hints: hints.collect(),
                        });
                    }
                    self.walk(sub, scopes);
                }
            }
            ExprKind::Reduce {
                binders, mask, body, ..
            } => {
                let over: Vec<&ast::Expr> = mask.iter().map(|m| &**m).chain([&**body]).collect();
                let opened = binders.len();
                scopes.extend(binders.iter().map(|b| Scope::of(b, &over)));
                for e in &over {
                    self.walk(e, scopes);
                }
                scopes.truncate(scopes.len() - opened);
            }
            ExprKind::Order {
                binders,
                mask,
                body,
                subscripts,
                ..
            } => {
                for s in subscripts {
                    self.walk(s, scopes);
                }
                let over: Vec<&ast::Expr> = mask.iter().map(|m| &**m).chain([&**body]).collect();
                let opened = binders.len();
                scopes.extend(binders.iter().map(|b| Scope::of(b, &over)));
                for e in &over {
                    self.walk(e, scopes);
                }
                scopes.truncate(scopes.len() - opened);
            }
            _ => for_each_child(e, |c| self.walk(c, scopes)),
        }
    }
}

/// Adds `Axis(t, q)` for every read `t[…]` in `e` whose subscript `q` is bare `v`.
fn axes_of(e: &ast::Expr, v: &str, hints: &mut Vec<Hint>) {
    if let ExprKind::Access {
        name,
        subscripts: Some(subs),
    } = &e.kind
    {
        for (q, sub) in subs.iter().enumerate() {
            let hint = Hint::Axis(name.name.clone(), q);
            if bare(sub) == Some(v)
                && !hints
                    .iter()
                    .any(|h| matches!((h, &hint), (Hint::Axis(a, x), Hint::Axis(b, y)) if a == b && x == y))
            {
                hints.push(hint);
            }
        }
    }
    for_each_child(e, |c| axes_of(c, v, hints));
}

/// Calls `f` on each direct sub-expression of `e`.
fn for_each_child<'a>(e: &'a ast::Expr, mut f: impl FnMut(&'a ast::Expr)) {
    match &e.kind {
        ExprKind::Number { .. } | ExprKind::Bool(_) | ExprKind::Access { subscripts: None, .. } => {}
        ExprKind::Access {
            subscripts: Some(subs), ..
        } => subs.iter().for_each(f),
        ExprKind::Call { args, .. } => args.iter().for_each(f),
        ExprKind::Unary { arg, .. } => f(arg),
        ExprKind::Binary { lhs, rhs, .. } => {
            f(lhs);
            f(rhs);
        }
        ExprKind::Chain { first, rest } => {
            f(first);
            rest.iter().for_each(|(_, t)| f(t));
        }
        ExprKind::Iverson(c) | ExprKind::Paren(c) => f(c),
        ExprKind::If { cond, then, otherwise } => {
            f(cond);
            f(then);
            f(otherwise);
        }
        ExprKind::Reduce { mask, body, .. } => {
            if let Some(m) = mask {
                f(m);
            }
            f(body);
        }
        ExprKind::Order {
            mask, body, subscripts, ..
        } => {
            if let Some(m) = mask {
                f(m);
            }
            f(body);
            subscripts.iter().for_each(f);
        }
    }
}

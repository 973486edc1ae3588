//! Constant evaluation: `const` items and hyperparameter defaults.

use std::collections::HashMap;

use super::{ItemRef, Sema};
use crate::diag::{Code, Diag};
use crate::ir::Value;
use crate::prims::{Prim, Sig};
use crate::syntax::ast::{self, BinOp, ExprKind, ItemKind, UnOp};

/// A compile-time constant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Const {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
}

impl Const {
    /// Its value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Const::Int(i) => i as f64,
            Const::Float(x) => x,
        }
    }
}

/// Evaluated consts (None: failed, already reported) and the ones being evaluated (cycle check).
#[derive(Default)]
pub(super) struct Consts {
    done: HashMap<ItemRef, Option<Const>>,
    active: Vec<ItemRef>,
}

/// The value of a `const` item, evaluated once.
pub(super) fn item_value(sema: &mut Sema, r: ItemRef) -> Option<Const> {
    if let Some(v) = sema.consts.done.get(&r) {
        return *v;
    }
    let file = sema.units[r.unit].file.clone();
    let ItemKind::Const { name, value } = &file.items[r.item].kind else {
        return None;
    };
    if sema.consts.active.contains(&r) {
        sema.err(
            Diag::new(Code::NotConstant, format!("const `{}` depends on itself", name.name))
                .label(name.span, "defined in terms of itself")
                .help("give the const a value that does not refer back to it"),
        );
        sema.consts.done.insert(r, None);
        return None;
    }
    sema.consts.active.push(r);
    let v = eval(sema, r.unit, value);
    sema.consts.active.pop();
    sema.consts.done.insert(r, v);
    v
}

/// The primitive of an arithmetic operator (`None` for comparisons and logic, which are not constants).
fn arithmetic(op: BinOp) -> Option<Prim> {
    match op {
        BinOp::Add => Some(Prim::Add),
        BinOp::Sub => Some(Prim::Sub),
        BinOp::Mul => Some(Prim::Mul),
        BinOp::Div => Some(Prim::Div),
        BinOp::Rem => Some(Prim::Rem),
        BinOp::Pow => Some(Prim::Pow),
        _ => None,
    }
}

/// Evaluates a constant expression in the scope of `unit`'s items.
pub(super) fn eval(sema: &mut Sema, unit: usize, e: &ast::Expr) -> Option<Const> {
    let not_const = |sema: &mut Sema, span, what: &str| {
        sema.err(
            Diag::new(Code::NotConstant, format!("{what} is not a constant"))
                .label(span, "needs a value known at compile time")
                .help("constants are numbers, other consts and arithmetic or builtin functions of them"),
        );
        None
    };
    match &e.kind {
        ExprKind::Number { value, is_int: true } => Some(Const::Int(*value as i64)),
        ExprKind::Number { value, .. } => Some(Const::Float(*value)),
        ExprKind::Paren(inner) => eval(sema, unit, inner),
        ExprKind::Unary { op: UnOp::Neg, arg } => match eval(sema, unit, arg)? {
            Const::Int(i) => Some(Const::Int(i.wrapping_neg())),
            Const::Float(x) => Some(Const::Float(-x)),
        },
        ExprKind::Binary { op, lhs, rhs } => {
            let (a, b) = (eval(sema, unit, lhs), eval(sema, unit, rhs));
            let (a, b) = (a?, b?);
            let Some(prim) = arithmetic(*op) else {
                return not_const(sema, e.span, "a condition");
            };
            Some(apply(prim, &[a, b]))
        }
        ExprKind::Chain { first, rest } => {
            let mut acc = eval(sema, unit, first);
            for (op, term) in rest {
                let b = eval(sema, unit, term);
                let Some(prim) = arithmetic(*op) else {
                    return not_const(sema, e.span, "a condition");
                };
                acc = Some(apply(prim, &[acc?, b?]));
            }
            acc
        }
        ExprKind::Access { name, subscripts: None } => match sema.units[unit].globals.get(&name.name).copied() {
            Some(r) if matches!(sema.item(r).kind, ItemKind::Const { .. }) => item_value(sema, r),
            Some(_) => not_const(sema, name.span, &format!("`{}`", name.name)),
            None => {
                sema.err(
                    Diag::new(Code::UnknownName, format!("unknown constant `{}`", name.name))
                        .label(name.span, "not a const")
                        .help("constant expressions may use numbers and `const` items only"),
                );
                None
            }
        },
        ExprKind::Call { func, args } => {
            let prim = Prim::from_surface(&func.name).filter(|p| matches!(p.sig(), Sig::Float(_) | Sig::Numeric(_)));
            let Some(prim) = prim else {
                return not_const(sema, func.span, &format!("`{}(…)`", func.name));
            };
            if args.len() != prim.sig().arity() {
                sema.err(
                    Diag::new(
                        Code::Arity,
                        format!(
                            "`{}` takes {} argument(s) but is given {}",
                            func.name,
                            prim.sig().arity(),
                            args.len()
                        ),
                    )
                    .label(e.span, "here")
                    .help("fix the number of arguments"),
                );
                return None;
            }
            let vals: Vec<Option<Const>> = args.iter().map(|a| eval(sema, unit, a)).collect();
            let vals: Option<Vec<Const>> = vals.into_iter().collect();
            Some(apply(prim, &vals?))
        }
        _ => not_const(sema, e.span, "this expression"),
    }
}

fn apply(prim: Prim, args: &[Const]) -> Const {
    let all_int = args.iter().all(|a| matches!(a, Const::Int(_)));
    let vals: Vec<Value> = args
        .iter()
        .map(|a| match a {
            Const::Int(i) if all_int => Value::I(*i),
            c => Value::F(c.as_f64()),
        })
        .collect();
    match prim.eval(&vals) {
        Value::I(i) => Const::Int(i),
        v => Const::Float(v.as_f64()),
    }
}

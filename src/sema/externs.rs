//! `let (a, b) = op(x, y; k = v)`: calls of extern operations, checked against their `extern fn`
//! declaration and recorded in [`ir::Function::externs`].
//!
//! The declaration's dimension names are the operation's own: each parameter's axes bind them to the
//! argument's dimensions (a name bound twice must agree), and the outputs' shapes and bounds are written
//! over them. An output becomes an input of the loss that no caller passes ([`ir::Input::produced_by`]):
//! the kernel runs the operation first and passes its results.

use std::collections::HashMap;

use super::consts::{self, Const};
use super::{Cx, Found, Local};
use crate::diag::{Code, Diag, Span};
use crate::ir::{self, Dim, ExternArg, ExternCall, ExternOption, Scalar, TensorRef};
use crate::syntax::ast::{self, ElemTy, ItemKind, OptionValue};

impl Cx<'_, '_> {
    /// Checks and records one extern call, binding its output names.
    pub(super) fn unpack(&mut self, s: &ast::Stmt) {
        let u = s.unpack.as_ref().expect("an unpack statement has its call");
        if self.extern_call(u).is_none() {
            for n in &u.names {
                self.bind(n, Local::Poison);
            }
        }
    }

    fn bad<T>(&mut self, message: String, span: Span, label: &str, help: impl Into<String>) -> Option<T> {
        self.err(Diag::new(Code::BadExtern, message).label(span, label).help(help));
        None
    }

    fn extern_call(&mut self, u: &ast::Unpack) -> Option<()> {
        let op = &u.func.name;
        let found = match self.lookup(op) {
            Some(Found::Global(r)) => match &self.sema.item(r).kind {
                ItemKind::Extern(d) => Some((r.unit, d.clone())),
                _ => None,
            },
            _ => None,
        };
        let Some((unit, def)) = found else {
            return self.bad(
                format!("`{op}` is not an extern operation"),
                u.func.span,
                "called here",
                "declare it with `extern fn name(x: f32[N] nograd) -> (y: idx[N] < N)` and register its \
                 implementation on the compiler; a `fn` or a builtin is called inside an expression",
            );
        };
        if u.args.len() != def.params.len() {
            let names: Vec<&str> = def.params.iter().map(|p| p.name.name.as_str()).collect();
            return self.bad(
                format!(
                    "`{op}` takes {} tensors, but {} are passed",
                    def.params.len(),
                    u.args.len()
                ),
                u.func.span,
                "called here",
                format!("pass {}", names.join(", ")),
            );
        }
        if u.names.len() != def.outputs.len() {
            let names: Vec<&str> = def.outputs.iter().map(|o| o.name.name.as_str()).collect();
            return self.bad(
                format!(
                    "`{op}` has {} outputs, but {} names are bound",
                    def.outputs.len(),
                    u.names.len()
                ),
                u.names[0].span.to(u.names[u.names.len() - 1].span),
                "bound here",
                format!("name each output: `let ({}) = {op}(…)`", names.join(", ")),
            );
        }
        let mut syms: HashMap<String, Dim> = HashMap::new();
        let mut args = Vec::new();
        for (p, a) in def.params.iter().zip(&u.args) {
            args.push(self.extern_arg(op, p, a, &mut syms)?);
        }
        let options = self.extern_options(op, unit, &def, u)?;
        let differentiable = args.iter().any(|a| a.differentiable);
        let call = self.f.externs.len() as u32;
        let mut outputs = Vec::new();
        for (o, name) in def.outputs.iter().zip(&u.names) {
            let mut shape = Vec::new();
            for d in &o.ty.shape {
                shape.push(self.extern_dim(op, d, &syms)?);
            }
            let bound = match &o.ty.bound {
                Some(b) => Some(self.extern_dim(op, b, &syms)?),
                None => None,
            };
            let float = o.ty.elem != ElemTy::Idx;
            self.f.inputs.push(ir::Input {
                name: name.name.clone(),
                elem: o.ty.elem,
                shape,
                bound,
                ignore: o.ty.ignore,
                nograd: !(float && differentiable),
                state: None,
                produced_by: Some(call),
                span: name.span,
            });
            let k = self.f.inputs.len() as u32 - 1;
            outputs.push(k);
            self.bind(name, Local::Input(k));
        }
        self.f.externs.push(ExternCall {
            op: op.clone(),
            args,
            options,
            outputs,
            span: u.func.span,
        });
        Some(())
    }

    /// One argument: a whole input or `let` of the parameter's element kind and rank, whose dimensions
    /// bind the parameter's names.
    fn extern_arg(
        &mut self,
        op: &str,
        p: &ast::Param,
        a: &ast::Ident,
        syms: &mut HashMap<String, Dim>,
    ) -> Option<ExternArg> {
        let (tensor, float, shape) = match self.lookup(&a.name) {
            Some(Found::Local(Local::Input(i), _)) => {
                let input = &self.f.inputs[i as usize];
                (TensorRef::Input(i), input.elem != ElemTy::Idx, input.shape.clone())
            }
            Some(Found::Local(Local::Tensor(t), _)) => {
                let float = self.f.tensor(t).scalar == Scalar::Float;
                (TensorRef::Def(t), float, self.f.tensor_shape(t))
            }
            Some(Found::Local(Local::Poison, _)) => return None,
            _ => {
                return self.bad(
                    format!("`{}` is not a tensor", a.name),
                    a.span,
                    "passed here",
                    "pass an input or a `let` by its name; an extern reads whole tensors",
                );
            }
        };
        let wants_float = p.ty.elem != ElemTy::Idx;
        if float != wants_float {
            let (is, wants) = if float {
                ("a float", "an idx")
            } else {
                ("an integer", "a float")
            };
            return self.bad(
                format!(
                    "`{}` is {is} tensor, but `{op}` takes {wants} `{}`",
                    a.name, p.name.name
                ),
                a.span,
                "passed here",
                format!("`{}` is declared `{}`", p.name.name, crate::syntax::print::ty(&p.ty)),
            );
        }
        if shape.len() != p.ty.shape.len() {
            return self.bad(
                format!(
                    "`{}` has rank {}, but `{op}`'s `{}` has rank {}",
                    a.name,
                    shape.len(),
                    p.name.name,
                    p.ty.shape.len()
                ),
                a.span,
                "passed here",
                format!("`{}` is declared `{}`", p.name.name, crate::syntax::print::ty(&p.ty)),
            );
        }
        for (d, pd) in shape.iter().zip(&p.ty.shape) {
            let d = d.clone().fold();
            let agrees = match &pd.kind {
                ast::DimExprKind::Int(v) => d == Dim::Const(*v),
                ast::DimExprKind::Name(n) => match syms.get(n) {
                    Some(prev) => *prev == d,
                    None => {
                        syms.insert(n.clone(), d.clone());
                        true
                    }
                },
                _ => {
                    return self.bad(
                        format!(
                            "`{op}`'s parameter `{}` has a dimension that is not a name",
                            p.name.name
                        ),
                        pd.span,
                        "an expression",
                        "an extern's parameter axes are names or integers; write expressions in its outputs",
                    );
                }
            };
            if !agrees {
                let wanted = match &pd.kind {
                    ast::DimExprKind::Name(n) => self.f.show_dim(&syms[n]),
                    _ => crate::syntax::print::dim(pd),
                };
                return self.bad(
                    format!(
                        "`{}` has an axis of size {}, but `{op}` needs {wanted} there",
                        a.name,
                        self.f.show_dim(&d)
                    ),
                    a.span,
                    "passed here",
                    format!("`{}` is declared `{}`", p.name.name, crate::syntax::print::ty(&p.ty)),
                );
            }
        }
        // Through a `let`, the gradient continues into what it is computed from ([`crate::externs`]).
        let differentiable = wants_float
            && p.nograd.is_none()
            && match tensor {
                TensorRef::Input(i) => self.f.inputs[i as usize].differentiable(),
                TensorRef::Def(_) => true,
            };
        Some(ExternArg {
            name: a.name.clone(),
            tensor,
            differentiable,
        })
    }

    /// An output's dimension over the operation's names, as the loss's dimensions.
    fn extern_dim(&mut self, op: &str, d: &ast::DimExpr, syms: &HashMap<String, Dim>) -> Option<Dim> {
        let r = match &d.kind {
            ast::DimExprKind::Int(v) => Dim::Const(*v),
            ast::DimExprKind::Name(n) => match syms.get(n) {
                Some(x) => x.clone(),
                None => {
                    return self.bad(
                        format!("`{op}`'s output dimension `{n}` is not an axis of its parameters"),
                        d.span,
                        "not bound by a parameter",
                        "size outputs by the parameters' dimension names (`T: 4 * H * W`)",
                    );
                }
            },
            ast::DimExprKind::Add(a, b) => Dim::Add(
                Box::new(self.extern_dim(op, a, syms)?),
                Box::new(self.extern_dim(op, b, syms)?),
            ),
            ast::DimExprKind::Sub(a, b) => Dim::Sub(
                Box::new(self.extern_dim(op, a, syms)?),
                Box::new(self.extern_dim(op, b, syms)?),
            ),
            ast::DimExprKind::Mul(a, b) => Dim::Mul(
                Box::new(self.extern_dim(op, a, syms)?),
                Box::new(self.extern_dim(op, b, syms)?),
            ),
        };
        Some(r.fold())
    }

    /// Every declared option's value at this call: the call's (a string, a constant or a hyperparameter
    /// of the loss) or the declaration's default.
    fn extern_options(
        &mut self,
        op: &str,
        unit: usize,
        def: &ast::ExternDef,
        u: &ast::Unpack,
    ) -> Option<Vec<(String, ExternOption)>> {
        let declared: Vec<&str> = def.options.iter().map(|o| o.name.name.as_str()).collect();
        if let Some(o) = u.options.iter().find(|o| !declared.contains(&o.name.name.as_str())) {
            let help = if declared.is_empty() {
                format!("`{op}` takes no options")
            } else {
                format!("`{op}`'s options are {}", declared.join(", "))
            };
            return self.bad(
                format!("`{op}` has no option `{}`", o.name.name),
                o.name.span,
                "unknown option",
                help,
            );
        }
        let mut out = Vec::new();
        for d in &def.options {
            let given = u.options.iter().find(|o| o.name.name == d.name.name);
            let (value, at_call) = match (given, &d.default) {
                (Some(g), _) => (&g.value, true),
                (None, Some(v)) => (v, false),
                (None, None) => {
                    return self.bad(
                        format!("`{op}` needs its option `{}`", d.name.name),
                        u.func.span,
                        "called here",
                        format!("set it after a `;`: `{op}(…; {} = …)`", d.name.name),
                    );
                }
            };
            let v = match (value, &d.ty) {
                (OptionValue::Str(s, _), None) => ExternOption::Str(s.clone()),
                (OptionValue::Expr(e), Some(_)) => {
                    let hyper = match &e.kind {
                        ast::ExprKind::Access { name, subscripts: None } if at_call => match self.lookup(&name.name) {
                            Some(Found::Local(Local::Hyper(h), _)) => Some(h),
                            _ => None,
                        },
                        _ => None,
                    };
                    match hyper {
                        Some(h) => ExternOption::Hyper(h),
                        None => {
                            let unit = if at_call { self.unit } else { unit };
                            match consts::eval(self.sema, unit, e)? {
                                Const::Int(i) => ExternOption::Number(i as f64),
                                Const::Float(x) => ExternOption::Number(x),
                            }
                        }
                    }
                }
                (v, _) => {
                    let wants = if d.ty.is_none() { "a string" } else { "a number" };
                    return self.bad(
                        format!("`{op}`'s option `{}` is {wants}", d.name.name),
                        v.span(),
                        "of the other kind",
                        "a `str` option takes a string literal; a number option a constant or a hyperparameter",
                    );
                }
            };
            out.push((d.name.name.clone(), v));
        }
        Some(out)
    }
}

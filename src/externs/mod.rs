//! Extern operations: host functions a loss calls with `let (a, b) = op(x, y; k = v)`, declared in lx
//! (`extern fn op(…) -> (…)`) and implemented in Rust ([`ExternOp`]), registered on the
//! [`crate::Compiler`] ([`Externs`]; the standard library's are always there).
//!
//! A call runs before the loss's kernel, on whole tensors: the tensors it reads are computed first (by the
//! same backend: a kernel whose outputs are those `let`s, [`pre_function`]), the operation fills its
//! outputs, and the loss's kernel takes them as inputs ([`crate::ir::Input::produced_by`]). Two kinds:
//! - a *selection* (every parameter `nograd`) returns index tensors and masks, after which the loss is
//!   ordinary lx: the gathers' adjoints give the exact gradient, the selection being constant wherever it
//!   does not jump;
//! - a *differentiable* extern has parameters without `nograd` (inputs of the loss) and a
//!   vector-Jacobian product ([`ExternOp::vjp`]): the kernel's gradients of its float outputs are pulled
//!   back through it and added to those inputs' gradients ([`pull_back`]).
//!
//! A failing or panicking operation, an output of another shape or an index outside its declared bound is
//! a [`CallError::Extern`], never a panic or a read out of bounds.

pub mod betti;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crate::backend::interp::Evaluation;
use crate::call::{self, CallError, InputView};
use crate::data::{Data, Tensor};
use crate::ir::{Dim, Expr, ExternCall, ExternOption, Function, Role, Scalar, TensorRef};

/// An option's value at a call.
#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    /// A `str` option.
    Str(String),
    /// A number option.
    Number(f64),
}

/// The options of one call, by name (every declared option is present).
pub type Options = BTreeMap<String, OptionValue>;

/// An operation implemented in Rust.
pub trait ExternOp: Send + Sync {
    /// Fills `outputs` (allocated with the declared shapes and element types, zeros) from `args` (in the
    /// declaration's order). An `Err` becomes the call's [`CallError::Extern`].
    fn forward(&self, args: &[&Tensor], options: &Options, outputs: &mut [Tensor]) -> Result<(), String>;

    /// For a differentiable extern: given the cotangent of each output (zeros for an integer one), the
    /// gradient of `Σ cotangent · output` with respect to each argument (an empty vector for an argument
    /// that is not differentiable).
    fn vjp(
        &self,
        args: &[&Tensor],
        options: &Options,
        outputs: &[Tensor],
        cotangents: &[Tensor],
    ) -> Result<Vec<Vec<f64>>, String> {
        let _ = (args, options, outputs, cotangents);
        Err("the operation has no vector-Jacobian product".into())
    }
}

/// The extern operations a compiler can call, by name.
#[derive(Clone)]
pub struct Externs(BTreeMap<String, Arc<dyn ExternOp>>);

impl std::fmt::Debug for Externs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Default for Externs {
    fn default() -> Externs {
        Externs::standard()
    }
}

impl Externs {
    /// The operations the standard library declares (`std::topology`'s Betti matching).
    pub fn standard() -> Externs {
        let mut m: BTreeMap<String, Arc<dyn ExternOp>> = BTreeMap::new();
        m.insert("betti_matching".into(), Arc::new(betti::BettiMatching));
        Externs(m)
    }
    /// Adds (or replaces) the operation `name`.
    pub fn insert(&mut self, name: &str, op: Arc<dyn ExternOp>) {
        self.0.insert(name.to_string(), op);
    }
    /// The operation `name`, if registered.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ExternOp>> {
        self.0.get(name)
    }
    /// Every registered name.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The function computing what call `k` of `f` reads: the `let`s it is passed become outputs, the loss is
/// 0, nothing is differentiated (so the optimizer keeps only what those `let`s need).
pub fn pre_function(f: &Function, k: usize) -> Function {
    let mut pre = f.clone();
    let zero = pre
        .add(Expr::float(0.0), Scalar::Float, f.span)
        .expect("a constant fits the IR");
    for t in &mut pre.tensors {
        match t.role {
            Role::Loss => t.body = zero,
            Role::Output => t.role = Role::Let,
            _ => {}
        }
    }
    for a in &f.externs[k].args {
        // (By name too: a program derived from the checked one may have renumbered its tensors; an
        // argument not found is reported by `complete`.)
        if let TensorRef::Def(t) = a.tensor
            && let Some(def) = pre.tensors.get_mut(t.index())
            && def.name == a.name
        {
            def.role = Role::Output;
        }
    }
    for i in &mut pre.inputs {
        i.nograd = true;
    }
    pre.updates.clear();
    pre.externs.clear();
    pre.name = format!("{}#{}", f.name, f.externs[k].op);
    pre
}

/// The function whose gradient carries the cotangents of the `let`s call `k` differentiates back to the
/// inputs: [`pre_function`] with the inputs' own differentiability and the loss `Σ ct_<let> · let` over each
/// such `let` (`ct_<let>` a new `nograd` input shaped like it, [`cotangent_name`]); None where the call
/// differentiates no `let`.
pub fn pullback_function(f: &Function, k: usize) -> Option<Function> {
    let lets: Vec<(String, crate::ir::TensorId)> = (f.externs[k].args.iter())
        .filter(|a| a.differentiable)
        .filter_map(|a| match a.tensor {
            TensorRef::Def(t) => Some((a.name.clone(), t)),
            TensorRef::Input(_) => None,
        })
        .collect();
    if lets.is_empty() {
        return None;
    }
    let mut g = pre_function(f, k);
    for (i, original) in g.inputs.iter_mut().zip(&f.inputs) {
        i.nograd = original.nograd;
    }
    let span = f.externs[k].span;
    let mut total = None;
    for (name, t) in lets {
        let def = g.tensors.get_mut(t.index()).filter(|d| d.name == name)?;
        def.role = Role::Let;
        let shape = g.tensor_shape(t);
        g.inputs
            .push(crate::ir::Input::cotangent(cotangent_name(&name), shape.clone(), span));
        let ct = g.inputs.len() as u32 - 1;
        let sum = g.dot(TensorRef::Def(t), TensorRef::Input(ct), &shape, span).ok()?;
        total = Some(match total {
            None => sum,
            Some(s) => g.prim(crate::prims::Prim::Add, &[s, sum], span).ok()?,
        });
    }
    let loss = g.tensors.iter().position(|t| t.role == Role::Loss)?;
    g.tensors[loss].body = total?;
    g.name = format!("{}#{}'", f.name, f.externs[k].op);
    Some(g)
}

/// The input of a [`pullback_function`] holding the cotangent of `let` `name`.
pub fn cotangent_name(name: &str) -> String {
    format!("ct_{name}")
}

/// Whether call `k` reads a `let` (and so needs its [`pre_function`] run).
pub fn reads_lets(f: &Function, k: usize) -> bool {
    f.externs[k].args.iter().any(|a| matches!(a.tensor, TensorRef::Def(_)))
}

fn extern_error(call: &ExternCall, message: impl Into<String>) -> CallError {
    CallError::Extern {
        op: call.op.clone(),
        message: message.into(),
    }
}

/// What [`complete`] computed: the kernel's inputs, and the arguments of each differentiable call (for its
/// vector-Jacobian product; empty for a selection).
#[derive(Debug)]
pub struct Completed {
    /// The caller's inputs and every extern output.
    pub inputs: BTreeMap<String, Tensor>,
    /// Per call, its arguments where it is differentiable.
    pub args: Vec<Vec<Tensor>>,
}

/// The inputs of `f`'s kernel for a call with `inputs`: those plus every extern call's outputs, computed
/// in order. `pre(k, inputs)` evaluates [`pre_function`]`(f, k)` (by the caller's backend).
pub fn complete(
    f: &Function,
    inputs: &BTreeMap<String, Tensor>,
    hypers: &BTreeMap<String, f64>,
    ops: &Externs,
    mut pre: impl FnMut(usize, &BTreeMap<String, Tensor>) -> Result<Evaluation, CallError>,
) -> Result<Completed, CallError> {
    // The caller's inputs alone size every dimension (an output's are expressions of its arguments').
    let signature = f.caller_signature();
    let views: BTreeMap<&str, InputView> = (inputs.iter())
        .map(|(name, t)| {
            let labels = match &t.data {
                Data::Int(v) => Some(&v[..]),
                Data::Float(_) => None,
            };
            let view = InputView {
                dtype: t.dtype,
                shape: &t.shape,
                len: t.len(),
                labels,
            };
            (name.as_str(), view)
        })
        .collect();
    let (sizes, values) = call::bind_views(&signature, &views, hypers)?;
    let mut all = inputs.clone();
    for call in &f.externs {
        for &o in &call.outputs {
            let input = &f.inputs[o as usize];
            let mut shape = Vec::new();
            for d in &input.shape {
                shape.push(call::extent(f, &input.name, d, &sizes)? as usize);
            }
            let elements = Dim::elements(&input.shape, &sizes);
            if elements > call::MAX_ELEMENTS {
                return Err(CallError::TooLarge {
                    tensor: input.name.clone(),
                    elements: elements as u128,
                });
            }
            let t = if input.elem == crate::ir::ElemTy::Idx {
                Tensor::labels(shape, vec![0; elements as usize])
            } else {
                Tensor::float(shape, vec![0.0; elements as usize])
            };
            all.insert(input.name.clone(), t);
        }
    }
    let mut kept = Vec::new();
    for (k, call) in f.externs.iter().enumerate() {
        let computed = if reads_lets(f, k) { Some(pre(k, &all)?) } else { None };
        let mut args = Vec::new();
        for a in &call.args {
            let t = match a.tensor {
                TensorRef::Input(i) => &all[&f.inputs[i as usize].name],
                TensorRef::Def(_) => (computed.iter().flat_map(|e| &e.outputs))
                    .find(|(n, _)| *n == a.name)
                    .map(|(_, t)| t)
                    .ok_or_else(|| extern_error(call, format!("its argument `{}` was not computed", a.name)))?,
            };
            args.push(t);
        }
        let options = options(call, &values);
        let mut outputs: Vec<Tensor> = (call.outputs.iter())
            .map(|&o| all[&f.inputs[o as usize].name].clone())
            .collect();
        let shapes: Vec<Vec<usize>> = outputs.iter().map(|t| t.shape.clone()).collect();
        let op = ops
            .get(&call.op)
            .ok_or_else(|| extern_error(call, "no implementation is registered"))?;
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| op.forward(&args, &options, &mut outputs)));
        match ran {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(extern_error(call, message)),
            Err(_) => return Err(extern_error(call, "it panicked")),
        }
        let differentiable = call.args.iter().any(|a| a.differentiable);
        kept.push(if differentiable {
            args.into_iter().cloned().collect()
        } else {
            Vec::new()
        });
        for ((&o, t), shape) in call.outputs.iter().zip(outputs).zip(shapes) {
            let input = &f.inputs[o as usize];
            check_output(call, input, &t, &shape, &sizes)?;
            all.insert(input.name.clone(), t);
        }
    }
    Ok(Completed {
        inputs: all,
        args: kept,
    })
}

/// Adds `g` to the gradient of input `name` in `e` (an extern output's gradient is kept for the call that
/// made it to pull back).
fn add_gradient(f: &Function, e: &mut Evaluation, name: &str, g: &[f64]) {
    let Some((_, acc)) = e.grads.iter_mut().find(|(n, _)| n == name) else {
        return;
    };
    let mut sum = acc.to_f64();
    for (s, x) in sum.iter_mut().zip(g) {
        *s += x;
    }
    let elem = f
        .inputs
        .iter()
        .find(|i| i.name == name)
        .map_or(crate::ir::ElemTy::F32, |i| i.elem);
    *acc = Tensor::gradient(acc.shape.clone(), sum, elem);
}

/// An output as the operation left it: of its declared shape and kind, its indices inside their bound.
fn check_output(
    call: &ExternCall,
    input: &crate::ir::Input,
    t: &Tensor,
    shape: &[usize],
    sizes: &[i64],
) -> Result<(), CallError> {
    let name = &input.name;
    if t.shape != shape || t.len() != shape.iter().product::<usize>() {
        return Err(extern_error(
            call,
            format!(
                "its output `{name}` has shape {:?} ({} values), but {shape:?} was declared",
                t.shape,
                t.len()
            ),
        ));
    }
    match (&t.data, input.elem == crate::ir::ElemTy::Idx) {
        (Data::Int(v), true) => {
            if let Some(b) = &input.bound {
                let bound = b.eval(sizes);
                if let Some(k) = v
                    .iter()
                    .position(|x| !(0..bound).contains(x) && Some(*x) != input.ignore)
                {
                    return Err(extern_error(
                        call,
                        format!(
                            "its output `{name}` holds {} at flat position {k}, outside 0..{bound}",
                            v[k]
                        ),
                    ));
                }
            }
            Ok(())
        }
        (Data::Float(_), false) => Ok(()),
        _ => Err(extern_error(
            call,
            format!("its output `{name}` has the wrong element type"),
        )),
    }
}

fn options(call: &ExternCall, hypers: &[f64]) -> Options {
    (call.options.iter())
        .map(|(n, v)| {
            let v = match v {
                ExternOption::Str(s) => OptionValue::Str(s.clone()),
                ExternOption::Number(x) => OptionValue::Number(*x),
                ExternOption::Hyper(h) => OptionValue::Number(hypers[*h as usize]),
            };
            (n.clone(), v)
        })
        .collect()
}

/// After the kernel ran on `completed` ([`complete`]'s result): the gradients of the extern outputs pulled
/// back through each differentiable call's [`ExternOp::vjp`] (the last call first) into its arguments,
/// then removed from `e` (a caller never sees them). An input argument's gradient is added to the input's;
/// a `let`'s is carried on to the inputs it is computed from by `pullback(k, inputs)`, which evaluates
/// [`pullback_function`]`(f, k)` with its cotangent inputs set (by the caller's backend).
pub fn pull_back(
    f: &Function,
    completed: &Completed,
    hypers: &BTreeMap<String, f64>,
    ops: &Externs,
    e: &mut Evaluation,
    mut pullback: impl FnMut(usize, &BTreeMap<String, Tensor>) -> Result<Evaluation, CallError>,
) -> Result<(), CallError> {
    let values = call::hyper_values(f, hypers)?;
    for (k, call) in f.externs.iter().enumerate().rev() {
        if !call.args.iter().any(|a| a.differentiable) || e.grads.is_empty() {
            continue;
        }
        let args: Vec<&Tensor> = completed.args[k].iter().collect();
        let outputs: Vec<Tensor> = (call.outputs.iter())
            .map(|&o| completed.inputs[&f.inputs[o as usize].name].clone())
            .collect();
        let cotangents: Vec<Tensor> = (call.outputs.iter().zip(&outputs))
            .map(|(&o, t)| {
                let name = &f.inputs[o as usize].name;
                match e.grads.iter().find(|(n, _)| n == name) {
                    Some((_, g)) => Tensor::float(t.shape.clone(), g.to_f64()),
                    None => Tensor::float(t.shape.clone(), vec![0.0; t.len()]),
                }
            })
            .collect();
        let op = ops
            .get(&call.op)
            .ok_or_else(|| extern_error(call, "no implementation is registered"))?;
        let options = options(call, &values);
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| op.vjp(&args, &options, &outputs, &cotangents)));
        let grads = match ran {
            Ok(Ok(g)) => g,
            Ok(Err(message)) => return Err(extern_error(call, message)),
            Err(_) => return Err(extern_error(call, "its vector-Jacobian product panicked")),
        };
        if grads.len() != call.args.len() {
            let message = format!(
                "its vjp returned {} gradients for {} arguments",
                grads.len(),
                call.args.len()
            );
            return Err(extern_error(call, message));
        }
        let mut cotangents_of_lets = Vec::new();
        for ((a, g), arg) in call.args.iter().zip(grads).zip(&completed.args[k]) {
            if !a.differentiable {
                continue;
            }
            if g.len() != arg.len() {
                let message = format!("its gradient of `{}` has {} values, not {}", a.name, g.len(), arg.len());
                return Err(extern_error(call, message));
            }
            match a.tensor {
                TensorRef::Input(_) => add_gradient(f, e, &a.name, &g),
                TensorRef::Def(_) => {
                    cotangents_of_lets.push((cotangent_name(&a.name), Tensor::float(arg.shape.clone(), g)))
                }
            }
        }
        if !cotangents_of_lets.is_empty() {
            let mut through_lets = completed.inputs.clone();
            through_lets.extend(cotangents_of_lets);
            let back = pullback(k, &through_lets)?;
            for (name, g) in &back.grads {
                add_gradient(f, e, name, &g.to_f64());
            }
        }
    }
    e.grads
        .retain(|(n, _)| !f.inputs.iter().any(|i| i.produced_by.is_some() && i.name == *n));
    Ok(())
}

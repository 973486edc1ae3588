//! Stage 7: the embedding API. Compile lx source to a [`Program`], pick a loss, evaluate it.
//!
//! ```
//! use std::collections::BTreeMap;
//! use lossc::{Program, Tensor};
//! let src = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }";
//! let program = Program::from_source("ce.lx", src).expect("compiles");
//! let mut inputs = BTreeMap::new();
//! inputs.insert("s".to_string(), Tensor::float(vec![1, 2], vec![0.0, 0.0]));
//! inputs.insert("y".to_string(), Tensor::labels(vec![1], vec![1]));
//! let out = program.eval(None, &inputs, &BTreeMap::new()).unwrap();
//! assert!((out.loss - 2f64.ln()).abs() < 1e-12);
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::interp::{self, Evaluation};
use crate::call::{self, CallError};
use crate::data::Tensor;
use crate::diag::{Code, Diag, Diags, SourceId, SourceMap};
use crate::ir::{Function, Module};
use crate::syntax::{self, ast};

/// A checked program: its sources, its AST and the IR of every loss it defines or imports.
#[derive(Debug)]
pub struct Program {
    /// Every source file the program read (the file itself and the stdlib modules it uses).
    pub sources: SourceMap,
    /// The file the program was read from.
    pub root: SourceId,
    /// The syntax tree of that file.
    pub ast: ast::File,
    /// The checked IR of every loss the file defines or imports.
    pub module: Module,
}

impl Program {
    /// Parses and checks source text; `name` is the file name diagnostics show.
    pub fn from_source(name: &str, text: &str) -> Result<Program, Diags> {
        on_big_stack(|| Program::compile(name, text))
    }

    fn compile(name: &str, text: &str) -> Result<Program, Diags> {
        let mut sources = SourceMap::default();
        let root = sources.add(name, text);
        let text = sources.get(root).text.clone();
        let file = syntax::parse(root, &text).map_err(|d| Diags(vec![d.with_source(&sources)]))?;
        let module = crate::sema::check(&mut sources, root, file.clone())?;
        Ok(Program {
            sources,
            root,
            ast: file,
            module,
        })
    }

    /// Reads, parses and checks a file; a path of the form `std::module::loss` that names no file is the
    /// stdlib loss of that path (as `use std::module::loss` would import it).
    pub fn from_file(path: &Path) -> Result<Program, Diags> {
        if let Some(stdlib) = path.to_str().filter(|p| p.starts_with("std::") && !path.exists())
            && stdlib
                .rsplit_once("::")
                .is_some_and(|(m, n)| m.len() > 5 && !n.is_empty())
        {
            return Program::from_source(stdlib, &format!("use {stdlib}\n"));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            Diags(vec![
                Diag::new(Code::Io, format!("cannot read {}: {e}", path.display())).help("check the path"),
            ])
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
            Diags(vec![
                Diag::new(
                    Code::Io,
                    format!(
                        "{} is not UTF-8: byte {at} (line {line}) is not valid UTF-8",
                        path.display()
                    ),
                )
                .help("lx source is UTF-8 text; save the file as UTF-8"),
            ])
        })?;
        Program::from_source(&path.display().to_string(), &text)
    }

    /// Parses only (for `--emit ast` on files that may not check).
    pub fn parse_only(name: &str, text: &str) -> Result<ast::File, Diags> {
        on_big_stack(|| {
            let mut sources = SourceMap::default();
            let root = sources.add(name, text);
            syntax::parse(root, text).map_err(|d| Diags(vec![d.with_source(&sources)]))
        })
    }

    /// The loss named `name`, or the only one when `name` is `None`.
    pub fn loss(&self, name: Option<&str>) -> Result<&Function, Diag> {
        let names = || {
            self.module
                .functions
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) => self.module.get(n).ok_or_else(|| {
                let mut d = Diag::new(Code::UnknownLoss, format!("no loss named `{n}`"));
                d = match crate::diag::closest(n, self.module.functions.iter().map(|f| f.name.as_str())) {
                    Some(c) => d.help(format!("did you mean `{c}`? (losses: {})", names())),
                    None => d.help(format!("losses in this file: {}", names())),
                };
                d
            }),
            None => match self.module.functions.as_slice() {
                [only] => Ok(only),
                [] => Err(Diag::new(Code::UnknownLoss, "the file defines no loss")
                    .help("define one: `loss name(x: f32[N]) { mean[i] x[i] }`")),
                _ => Err(
                    Diag::new(Code::UnknownLoss, "the file defines several losses; choose one")
                        .help(format!("pass --loss NAME with one of: {}", names())),
                ),
            },
        }
    }

    /// Evaluates a loss with the reference interpreter.
    pub fn eval(
        &self,
        loss: Option<&str>,
        inputs: &BTreeMap<String, Tensor>,
        hypers: &BTreeMap<String, f64>,
    ) -> Result<Evaluation, EvalError> {
        let f = self.loss(loss).map_err(EvalError::Loss)?;
        Ok(eval(f, inputs, hypers)?)
    }
}

/// Evaluates one function with the reference interpreter.
pub fn eval(
    f: &Function,
    inputs: &BTreeMap<String, Tensor>,
    hypers: &BTreeMap<String, f64>,
) -> Result<Evaluation, CallError> {
    match with_externs(f, inputs, hypers)? {
        Some(all) => run_interp(f, &all.inputs, hypers),
        None => run_interp(f, inputs, hypers),
    }
}

/// The interpreter on every input `f` declares (extern outputs included).
fn run_interp(
    f: &Function,
    inputs: &BTreeMap<String, Tensor>,
    hypers: &BTreeMap<String, f64>,
) -> Result<Evaluation, CallError> {
    let bound = call::bind(f, inputs, hypers)?;
    call::check_elements(f, &bound.sizes, |_| true)?;
    call::check_budget(interp::bytes_needed(f, &bound.sizes), call::default_memory_budget())?;
    on_big_stack(|| interp::run(f, &bound))
}

/// The inputs with the outputs of `f`'s extern calls ([`crate::externs::complete`], the standard
/// library's operations, the `let`s they read computed by the interpreter); None where `f` calls none.
pub fn with_externs(
    f: &Function,
    inputs: &BTreeMap<String, Tensor>,
    hypers: &BTreeMap<String, f64>,
) -> Result<Option<crate::externs::Completed>, CallError> {
    if f.externs.is_empty() {
        return Ok(None);
    }
    let ops = crate::externs::Externs::standard();
    crate::externs::complete(f, inputs, hypers, &ops, |k, all| {
        run_interp(&crate::externs::pre_function(f, k), all, hypers)
    })
    .map(Some)
}
/// The stack the compiler's recursive stages run on. The parser, the checker and the interpreter recurse
/// over trees whose depth the front end bounds (see `syntax::MAX_NESTING` and `ir::MAX_NODE_DEPTH`); this
/// much stack covers those bounds even in unoptimised builds. It is reserved, not committed, memory.
const STACK_BYTES: usize = 256 << 20;

/// Runs `f` on a thread with [`STACK_BYTES`] of stack and returns its result (re-raising a panic): one of
/// a kept pool of such threads (one per core), so a compile does not pay for a new thread and for
/// faulting in its stack again (0.35–0.45 ms a call, as long as parsing a cross-entropy file 4 times).
pub(crate) fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    #[cfg(feature = "jit")]
    {
        static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
        let pool = POOL.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
                .stack_size(STACK_BYTES)
                .thread_name(|k| format!("lossc-{k}"))
                .build()
                .ok()
        });
        if let Some(pool) = pool {
            return pool.install(f);
        }
    }
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("lossc".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, f)
            .expect("the OS refused to start a thread");
        handle
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
    })
}

/// Why an evaluation through [`Program::eval`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// No such loss in the program (or none, or several, where one was meant).
    #[error("{0}")]
    Loss(Diag),
    /// A bad call.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// The loss and its gradients, through the reference interpreter (on the optimized gradient program).
pub fn eval_grad(
    f: &Function,
    inputs: &BTreeMap<String, Tensor>,
    hypers: &BTreeMap<String, f64>,
) -> Result<Evaluation, EvalError> {
    let g = gradient(f).map_err(EvalError::Loss)?;
    let Some(all) = with_externs(f, inputs, hypers)? else {
        return Ok(run_interp(&g, inputs, hypers)?);
    };
    let mut e = run_interp(&g, &all.inputs, hypers)?;
    let ops = crate::externs::Externs::standard();
    crate::externs::pull_back(f, &all, hypers, &ops, &mut e, |k, at| {
        let p = crate::externs::pullback_function(f, k).ok_or_else(|| CallError::Compile("no pullback".into()))?;
        let p = gradient(&p).map_err(|d| CallError::Compile(d.message))?;
        run_interp(&p, at, hypers)
    })?;
    Ok(e)
}

/// The gradient program, simplified but not yet optimized for execution (`--emit grad`).
pub fn simplified_gradient(f: &Function) -> Result<Function, Diag> {
    on_big_stack(|| {
        let g = crate::autodiff::grad(&primal(f)?)?;
        crate::opt::simplify_only(&g).map_err(|_| too_large(f))
    })
}

/// The optimized program computing the loss and the gradient of every differentiable input.
pub fn gradient(f: &Function) -> Result<Function, Diag> {
    on_big_stack(|| crate::opt::optimize(&crate::autodiff::grad(&primal(f)?)?))
}

/// The program the JIT compiles where it differs from [`gradient`]'s: the gradient program of `f` with
/// adjacent axes merged where every access reads them together ([`crate::opt::merge`]); None where none
/// merges.
pub fn merged_gradient(f: &Function) -> Result<Option<Function>, Diag> {
    crate::opt::merge::merge_axes(f).map(|m| gradient(&m)).transpose()
}

/// The loss a derivative is taken of: simplified first, so the derivative is of its stable forms, with
/// the `let`s [`crate::opt::simplify::inline_for_derivative`] inlines.
fn primal(f: &Function) -> Result<Function, Diag> {
    crate::opt::simplify_only(f)
        .and_then(|s| crate::opt::simplify::inline_for_derivative(&s))
        .and_then(|s| crate::opt::simplify_only(&s))
        .map_err(|_| too_large(f))
}

fn too_large(f: &Function) -> Diag {
    Diag::new(
        Code::TooDeep,
        format!("the gradient program of `{}` is too large", f.name),
    )
    .label(f.span, "this loss")
    .help("split the loss into `let`s")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The big-stack threads are kept: calls one after another reuse them (no new thread and no stack
    /// faulted in again per call), and a call made on one of them runs there.
    #[test]
    fn big_stack_threads_are_reused() {
        let ids: std::collections::HashSet<std::thread::ThreadId> =
            (0..16).map(|_| on_big_stack(|| std::thread::current().id())).collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(ids.len() <= cores, "{} threads for 16 calls", ids.len());
        let (outer, inner) = on_big_stack(|| {
            (
                std::thread::current().id(),
                on_big_stack(|| std::thread::current().id()),
            )
        });
        assert_eq!(outer, inner);
    }
}

//! The embedding API for compiled kernels: a [`Compiler`] with options, a [`Module`] of checked losses,
//! and a [`Kernel`] per loss that computes the loss and every gradient in one call.
//!
//! ```
//! use std::collections::BTreeMap;
//! use lossc::{Compiler, Tensor};
//! let module = Compiler::new().threads(2).compile_source("ce.lx",
//!     "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }").unwrap();
//! let kernel = module.kernel(None).unwrap();
//! let inputs = BTreeMap::from([
//!     ("s".to_string(), Tensor::float(vec![1, 2], vec![0.0, 0.0])),
//!     ("y".to_string(), Tensor::labels(vec![1], vec![1])),
//! ]);
//! let out = kernel.eval(&inputs).unwrap();
//! assert!((out.loss - 2f64.ln()).abs() < 1e-6);
//! assert!((out.grads[0].1.to_f64()[1] + 0.5).abs() < 1e-6);
//! ```
//!
//! Every bad call (missing or unknown input, wrong dtype, rank or size, label out of range, unknown
//! hyperparameter) is a typed [`CallError`] returned before any native code runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::interp::{self, Evaluation};
use crate::call::{self, CallError};
use crate::data::Tensor;
use crate::diag::{Code, Diag, Diags};
use crate::ir::{Dim, Expr, Function, Scalar};
use crate::{Program, api};

/// Which backend runs a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Native code from Cranelift (the default when built with the `jit` feature).
    Jit,
    /// The f64 reference interpreter.
    Interp,
    /// Generated CUDA kernels, run by the compiler's CUDA loader ([`Compiler::cuda_loader`]; the CUDA
    /// driver and NVRTC when built with the `cuda` feature).
    Cuda,
}

/// Compilation options.
#[derive(Clone)]
pub struct Compiler {
    backend: Backend,
    threads: usize,
    budget: u64,
    stream: bool,
    finite: bool,
    specialise: BTreeMap<String, f64>,
    cuda: Arc<dyn crate::backend::cuda::Loader>,
    externs: crate::externs::Externs,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        out.debug_struct("Compiler")
            .field("backend", &self.backend)
            .field("threads", &self.threads)
            .field("budget", &self.budget)
            .field("specialise", &self.specialise)
            .field("externs", &self.externs)
            .finish_non_exhaustive()
    }
}

impl Default for Compiler {
    fn default() -> Compiler {
        Compiler::new()
    }
}

impl Compiler {
    /// The JIT backend (if built) with one thread per available core.
    pub fn new() -> Compiler {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let backend = if cfg!(feature = "jit") {
            Backend::Jit
        } else {
            Backend::Interp
        };
        Compiler {
            backend,
            threads,
            budget: crate::call::default_memory_budget(),
            stream: false,
            finite: false,
            specialise: BTreeMap::new(),
            cuda: crate::backend::cuda::default_loader(),
            externs: crate::externs::Externs::standard(),
        }
    }
    /// Registers the implementation of `extern fn name(…)` (replacing one of that name); the standard
    /// library's operations are registered from the start.
    pub fn extern_op(mut self, name: &str, op: Arc<dyn crate::externs::ExternOp>) -> Compiler {
        self.externs.insert(name, op);
        self
    }
    /// What puts `Backend::Cuda` kernels on a device (the CUDA driver by default; the tests use an
    /// emulation that runs the generated kernels on the CPU).
    pub fn cuda_loader(mut self, loader: Arc<dyn crate::backend::cuda::Loader>) -> Compiler {
        self.cuda = loader;
        self
    }
    /// Which backend the kernels run on (default: the JIT where built, else the interpreter).
    pub fn backend(mut self, backend: Backend) -> Compiler {
        self.backend = backend;
        self
    }
    /// How many threads a JIT kernel's calls use (default: one per available core; at least 1).
    pub fn threads(mut self, threads: usize) -> Compiler {
        self.threads = threads.max(1);
        self
    }
    /// The most bytes one call's buffers may take (on the host); a call that would need more fails with
    /// [`CallError::OverBudget`] before anything is allocated. Default: [`crate::call::default_memory_budget`].
    pub fn memory_budget(mut self, bytes: u64) -> Compiler {
        self.budget = bytes;
        self
    }
    /// With `true`, tensors over pairs are streamed a row at a time ([`crate::opt::stream`]) at any size:
    /// JIT calls where some outgrow the inputs, not only where the call's buffers would not fit in the
    /// memory budget (to measure or test the streamed program; it is slower where the budget allows the
    /// whole), and the CUDA kernels (built before any call's sizes are known: every tensor over pairs).
    pub fn stream_pairwise(mut self, always: bool) -> Compiler {
        self.stream = always;
        self
    }
    /// With `true`, every call first checks that its float inputs are finite and fails with
    /// [`CallError::NonFinite`] (the input, the first position and the count) where one is NaN or infinite;
    /// by default NaN flows through as IEEE arithmetic has it.
    pub fn finite_inputs(mut self, check: bool) -> Compiler {
        self.finite = check;
        self
    }
    /// Fixes a hyperparameter at compile time (folded into the code; it cannot be set per call).
    pub fn specialise(mut self, name: &str, value: f64) -> Compiler {
        self.specialise.insert(name.to_string(), value);
        self
    }
    /// Parses and checks lx source text (`name` is the file name diagnostics show); every diagnostic on failure.
    pub fn compile_source(&self, name: &str, text: &str) -> Result<Module, Diags> {
        Ok(Module {
            program: Program::from_source(name, text)?,
            compiler: self.clone(),
        })
    }
    /// Reads, parses and checks a `.lx` file (a path `std::module::loss` names a stdlib loss).
    pub fn compile_file(&self, path: &Path) -> Result<Module, Diags> {
        Ok(Module {
            program: Program::from_file(path)?,
            compiler: self.clone(),
        })
    }
}

/// A checked program and the options to build kernels from it.
#[derive(Debug)]
pub struct Module {
    /// The checked program: its sources, syntax tree and the IR of every loss.
    pub program: Program,
    compiler: Compiler,
}

/// Time spent in each compilation stage.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Each stage's name and how long it took, in order.
    pub stages: Vec<(&'static str, Duration)>,
}

impl Module {
    /// Names of the losses this module defines or imports.
    pub fn losses(&self) -> Vec<&str> {
        self.program.module.functions.iter().map(|f| f.name.as_str()).collect()
    }

    /// Builds the kernel of one loss (the only one when `name` is `None`).
    pub fn kernel(&self, name: Option<&str>) -> Result<Kernel, Diag> {
        let f = self.program.loss(name)?;
        Kernel::build(f, &self.compiler)
    }
}

/// One loss compiled to compute its value and the gradient of every differentiable input.
/// Dimensions stay symbolic until called. `Kernel` is `Send + Sync`: share it across threads.
#[derive(Clone)]
pub struct Kernel {
    function: Arc<Function>,
    fixed: Vec<String>,
    #[cfg(feature = "jit")]
    jit: Option<Arc<crate::backend::jit::Compiled>>,
    cuda: Option<Arc<CudaKernel>>,
    threads: usize,
    budget: u64,
    finite: bool,
    timings: Timings,
    /// How this kernel was built (hyperparameters fixed at compile time are already folded into
    /// `function`): second-order kernels are built alike.
    options: Compiler,
    /// The Hessian-vector product kernels built so far ([`Kernel::hvp`]), by input.
    hvps: Arc<std::sync::Mutex<BTreeMap<String, Kernel>>>,
    /// The JIT programs with pairwise tensors streamed ([`crate::opt::stream`]) built so far, by the
    /// tensors streamed: for calls whose buffers would not fit in the memory budget.
    #[cfg(feature = "jit")]
    streamed: Arc<std::sync::Mutex<Streamed>>,
    /// For a loss that calls extern operations: what runs before this kernel.
    stages: Option<Arc<Stages>>,
}

/// A kernel's native code (the JIT's), or a placeholder type where the JIT is not built.
#[cfg(feature = "jit")]
pub(crate) type Native = crate::backend::jit::Compiled;
#[cfg(not(feature = "jit"))]
pub(crate) type Native = std::convert::Infallible;

/// The streamed programs of a kernel ([`Kernel::native_for`]), by the tensors they stream.
#[cfg(feature = "jit")]
type Streamed = Vec<(Vec<bool>, Arc<crate::backend::jit::Compiled>)>;

/// The extern calls of a loss ([`crate::externs`]): the loss as checked, the operations, and for each call
/// that reads `let`s the kernel computing them.
struct Stages {
    source: Function,
    ops: crate::externs::Externs,
    pre: Vec<Option<Kernel>>,
    /// For each call that differentiates a `let`: the kernel carrying its cotangent to the inputs.
    pullback: Vec<Option<Kernel>>,
}

impl Stages {
    fn build(f: &Function, options: &Compiler) -> Result<Stages, Diag> {
        for call in &f.externs {
            if options.externs.get(&call.op).is_none() {
                return Err(Diag::new(
                    Code::ExternMissing,
                    format!("no implementation of extern operation `{}` is registered", call.op),
                )
                .label(call.span, "called here")
                .help(format!(
                    "register one with `Compiler::extern_op(\"{}\", …)`; registered: {}",
                    call.op,
                    options.externs.names().join(", ")
                )));
            }
        }
        let (mut pre, mut pullback) = (Vec::new(), Vec::new());
        for k in 0..f.externs.len() {
            pre.push(if crate::externs::reads_lets(f, k) {
                Some(Kernel::build(&crate::externs::pre_function(f, k), options)?)
            } else {
                None
            });
            pullback.push(match crate::externs::pullback_function(f, k) {
                Some(g) => Some(Kernel::build(&g, options)?),
                None => None,
            });
        }
        Ok(Stages {
            source: f.clone(),
            ops: options.externs.clone(),
            pre,
            pullback,
        })
    }

    /// The inputs of the loss's kernel: the caller's and the extern outputs.
    fn complete(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        hypers: &BTreeMap<String, f64>,
    ) -> Result<crate::externs::Completed, CallError> {
        crate::externs::complete(&self.source, inputs, hypers, &self.ops, |k, all| match &self.pre[k] {
            Some(kernel) => kernel.eval_with(all, hypers),
            None => Err(CallError::Compile(
                "an extern call's arguments were not compiled".into(),
            )),
        })
    }

    /// A call of the loss's kernel `run`, on the completed inputs, and the extern outputs' gradients pulled
    /// back.
    fn call(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        hypers: &BTreeMap<String, f64>,
        run: impl FnOnce(&BTreeMap<String, Tensor>) -> Result<Evaluation, CallError>,
    ) -> Result<Evaluation, CallError> {
        let completed = self.complete(inputs, hypers)?;
        let mut e = run(&completed.inputs)?;
        crate::externs::pull_back(
            &self.source,
            &completed,
            hypers,
            &self.ops,
            &mut e,
            |k, all| match &self.pullback[k] {
                Some(kernel) => kernel.eval_with(all, hypers),
                None => Err(CallError::Compile("an extern call's pullback was not compiled".into())),
            },
        )?;
        Ok(e)
    }
}

impl Kernel {
    /// Differentiates, optimizes and (for the JIT) compiles one loss.
    pub fn build(f: &Function, options: &Compiler) -> Result<Kernel, Diag> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let mut f = f.clone();
        let mut fixed = Vec::new();
        for (name, value) in &options.specialise {
            let Some(h) = f.hypers.iter().position(|h| &h.name == name) else {
                return Err(Diag::new(
                    Code::UnknownName,
                    format!("`{}` has no hyperparameter `{name}`", f.name),
                )
                .help("specialise only the hyperparameters the loss declares"));
            };
            f.hypers[h].default = *value;
            fixed.push(name.clone());
        }
        let stages = if f.externs.is_empty() {
            None
        } else {
            let mut plain = options.clone();
            plain.specialise.clear();
            Some(Arc::new(Stages::build(&f, &plain)?))
        };
        let mut g = api::gradient(&f)?;
        if !fixed.is_empty() {
            g = specialise(&g, &fixed)?;
        }
        timings.stages.push(("autodiff+opt", t.elapsed()));

        #[cfg(feature = "jit")]
        let jit = if options.backend == Backend::Jit {
            // The JIT runs the loss with adjacent axes merged where every access reads them together
            // (opt::merge: rows over heads or pixels become rows); its results are reshaped back by `run`.
            let t = Instant::now();
            let merged = match api::merged_gradient(&f)? {
                Some(m) if !fixed.is_empty() => Some(specialise(&m, &fixed)?),
                m => m,
            };
            if merged.is_some() {
                timings.stages.push(("merge axes+autodiff+opt", t.elapsed()));
            }
            let t = Instant::now();
            let program = merged.as_ref().unwrap_or(&g);
            // Code generation recurses over the program's depth: on the compiler's big stack, as the
            // front end (a deep program from a thread with a small stack overflowed it).
            let compiled = api::on_big_stack(|| crate::backend::jit::compile(program)).map_err(|e| {
                Diag::new(Code::TooDeep, e.to_string())
                    .help("this is a compiler limitation; use the interpreter backend")
            })?;
            timings.stages.push(("codegen", t.elapsed()));
            Some(Arc::new(compiled))
        } else {
            None
        };
        let cuda = if options.backend == Backend::Cuda {
            let t = Instant::now();
            // With `stream_pairwise`, the CUDA kernels compute the tensors over pairs that may outgrow the
            // inputs a row at a time (decided without sizes: the sizes are not known before a call, and
            // the kernels are compiled once), and this kernel's program is the streamed one.
            let stream = crate::opt::stream::pairwise_at_any_size(&g);
            let streamed = match options.stream && stream.contains(&true) {
                true => api::on_big_stack(|| crate::opt::stream::rows(&g, &stream)).ok(),
                false => None,
            };
            let program = match &streamed {
                Some(h) => api::on_big_stack(|| crate::backend::cuda::generate_streaming(h)),
                None => api::on_big_stack(|| crate::backend::cuda::generate(&g)),
            };
            if let Some(h) = streamed {
                g = h;
            }
            timings.stages.push(("cuda codegen", t.elapsed()));
            let t = Instant::now();
            let device = options.cuda.load(&program).map_err(|e| {
                Diag::new(Code::Backend, e.to_string())
                    .help("use `--backend jit` (the CPU) where no CUDA device is present")
            })?;
            timings.stages.push(("nvrtc+load", t.elapsed()));
            Some(Arc::new(CudaKernel {
                program,
                device: std::sync::Mutex::new(device),
                state: Default::default(),
            }))
        } else {
            None
        };
        Ok(Kernel {
            function: Arc::new(g),
            fixed,
            #[cfg(feature = "jit")]
            jit,
            cuda,
            threads: options.threads,
            budget: options.budget,
            finite: options.finite,
            timings,
            options: Compiler {
                specialise: BTreeMap::new(),
                ..options.clone()
            },
            hvps: Default::default(),
            #[cfg(feature = "jit")]
            streamed: Default::default(),
            stages,
        })
    }

    /// The optimized loss-and-gradient program this kernel runs.
    pub fn function(&self) -> &Function {
        &self.function
    }

    /// The native code, when the JIT backend built this kernel.
    #[cfg(feature = "jit")]
    pub fn native(&self) -> Option<&crate::backend::jit::Compiled> {
        self.jit.as_deref()
    }

    /// The native code, shared ([`Kernel::native`]).
    #[cfg(feature = "jit")]
    pub fn native_shared(&self) -> Option<Arc<crate::backend::jit::Compiled>> {
        self.jit.clone()
    }

    /// The threads this kernel's calls use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The native code a call at these dimension sizes runs, when the JIT backend built this kernel: its
    /// own, or, where the buffers of its own would not fit in the memory budget, the program with the
    /// pairwise tensors that outgrow the inputs streamed a row at a time ([`crate::opt::stream`]; built by
    /// the first call that needs it, kept for the next). Its buffers may still not fit:
    /// [`Kernel::bytes_needed`] tells.
    #[cfg(feature = "jit")]
    pub fn native_for(&self, sizes: &[i64]) -> Result<Option<Arc<crate::backend::jit::Compiled>>, CallError> {
        let Some(jit) = &self.jit else {
            return Ok(None);
        };
        if !self.options.stream
            && jit.bytes_needed(sizes, self.threads) <= self.budget
            && jit.check_elements(sizes).is_ok()
        {
            return Ok(Some(jit.clone()));
        }
        let stream = crate::opt::stream::pairwise(jit.function(), sizes);
        if !stream.contains(&true) {
            return Ok(Some(jit.clone()));
        }
        let mut built = self.streamed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, c)) = built.iter().find(|(s, _)| *s == stream) {
            return Ok(Some(c.clone()));
        }
        // A program that recomputing its pairwise tensors makes too large runs as it is (the budget check
        // then refuses the call as before).
        let compiled = match api::on_big_stack(|| crate::opt::stream::rows(jit.function(), &stream)) {
            Ok(f) => Arc::new(
                api::on_big_stack(|| crate::backend::jit::compile_streaming(&f))
                    .map_err(|e| CallError::Compile(format!("streaming the pairwise tensors: {e}")))?,
            ),
            Err(crate::ir::TooDeep) => jit.clone(),
        };
        built.push((stream, compiled.clone()));
        Ok(Some(compiled))
    }

    /// About how many bytes of host memory a call at these dimension sizes allocates: the backend's
    /// buffers (for the JIT, those of the program [`Kernel::native_for`] picks), and with `tensors` (the
    /// `Tensor` API) the inputs converted and the results collected as f64.
    pub fn bytes_needed(&self, sizes: &[i64], tensors: bool) -> u64 {
        #[cfg(feature = "jit")]
        let native = self.native_for(sizes).ok().flatten();
        #[cfg(not(feature = "jit"))]
        let native: Option<Arc<Native>> = None;
        self.bytes_with(native.as_deref(), sizes, tensors)
    }

    /// Whether a call at these sizes that runs `native` (the program [`Kernel::native_for`] picked) may
    /// start: no tensor the running program stores whole is over [`call::MAX_ELEMENTS`] (the interpreter
    /// checks its own), and its buffers fit the memory budget ([`Kernel::bytes_with`]).
    pub(crate) fn admit(&self, native: Option<&Native>, sizes: &[i64], tensors: bool) -> Result<(), CallError> {
        #[cfg(feature = "jit")]
        if let Some(jit) = native {
            jit.check_elements(sizes)?;
        }
        if let Some(cuda) = &self.cuda {
            cuda.check_elements(&self.function, sizes)?;
        }
        call::check_budget(self.bytes_with(native, sizes, tensors), self.budget)
    }

    /// [`Kernel::bytes_needed`] for a call that runs `native` (the program [`Kernel::native_for`] picked
    /// for it, so a call picks it once).
    pub(crate) fn bytes_with(&self, native: Option<&Native>, sizes: &[i64], tensors: bool) -> u64 {
        let f = &self.function;
        let io = if tensors {
            let inputs: u64 = (f.inputs.iter())
                .map(|i| Dim::elements(&i.shape, sizes))
                .fold(0, u64::saturating_add);
            let results: u64 = (f.tensors.iter())
                .filter(|t| t.role != crate::ir::Role::Let)
                .map(|t| f.elements(t, sizes))
                .fold(0, u64::saturating_add);
            inputs.saturating_mul(4).saturating_add(results.saturating_mul(8))
        } else {
            0
        };
        #[cfg(feature = "jit")]
        if let Some(jit) = native.or(self.jit.as_deref()) {
            return jit.bytes_needed(sizes, self.threads).saturating_add(io);
        }
        #[cfg(not(feature = "jit"))]
        let _ = native;
        if self.cuda.is_some() {
            return io;
        }
        interp::bytes_needed(f, sizes).saturating_add(io)
    }

    /// When this kernel runs on a CUDA device: the bytes of the tensor buffers a call at these dimension
    /// sizes allocates there (inputs and the caller's gradient buffers not included;
    /// [`crate::backend::cuda::host::device_bytes`]).
    pub fn device_bytes(&self, sizes: &[i64]) -> Option<u64> {
        let cuda = self.cuda.as_ref()?;
        let device = cuda.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(crate::backend::cuda::host::device_bytes(
            &cuda.program,
            sizes,
            device.max_grid(),
        ))
    }

    /// Whether the loss calls extern operations (run on the host before this kernel's program).
    pub fn calls_externs(&self) -> bool {
        self.stages.is_some()
    }

    /// Whether calls check that float inputs are finite ([`Compiler::finite_inputs`]).
    pub fn checks_finite(&self) -> bool {
        self.finite
    }

    /// The memory budget of a call ([`Compiler::memory_budget`]).
    pub fn memory_budget(&self) -> u64 {
        self.budget
    }

    /// The same kernel (sharing its code) running on `threads` threads.
    pub fn with_threads(&self, threads: usize) -> Kernel {
        Kernel {
            threads: threads.max(1),
            ..self.clone()
        }
    }

    /// Whether hyperparameter `name` was fixed at compile time ([`Compiler::specialise`]).
    pub fn is_fixed(&self, name: &str) -> bool {
        self.fixed.iter().any(|n| n == name)
    }

    /// How long each stage of building this kernel took.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// The loss and gradients at the hyperparameters' defaults.
    pub fn eval(&self, inputs: &BTreeMap<String, Tensor>) -> Result<Evaluation, CallError> {
        self.eval_with(inputs, &BTreeMap::new())
    }

    /// The loss and gradients with some hyperparameters set for this call.
    pub fn eval_with(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        hypers: &BTreeMap<String, f64>,
    ) -> Result<Evaluation, CallError> {
        if let Some(name) = hypers.keys().find(|k| self.fixed.contains(k)) {
            return Err(CallError::HyperFixed { name: name.clone() });
        }
        match &self.stages {
            Some(stages) => stages.call(inputs, hypers, |all| self.run(all, hypers)),
            None => self.run(inputs, hypers),
        }
    }

    /// One call of this kernel's own program, on every input it declares.
    fn run(&self, inputs: &BTreeMap<String, Tensor>, hypers: &BTreeMap<String, f64>) -> Result<Evaluation, CallError> {
        let bound = call::bind(&self.function, inputs, hypers)?;
        if self.finite {
            let floats = inputs.iter().filter_map(|(n, t)| match &t.data {
                crate::data::Data::Float(v) => Some((n.as_str(), &t.shape[..], &v[..])),
                crate::data::Data::Int(_) => None,
            });
            if let Some(e) = call::non_finite(floats) {
                return Err(e);
            }
        }
        #[cfg(feature = "jit")]
        let native = self.native_for(&bound.sizes)?;
        #[cfg(not(feature = "jit"))]
        let native: Option<Arc<Native>> = None;
        self.admit(native.as_deref(), &bound.sizes, true)?;
        if let Some(cuda) = &self.cuda {
            let mut device = cuda.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            return crate::backend::cuda::host::run(&cuda.program, &self.function, &bound, &mut **device);
        }
        #[cfg(feature = "jit")]
        if let Some(jit) = native {
            let mut e = jit.run(&bound, self.threads)?;
            // Gradients in the shapes of their inputs (the JIT's program may have merged axes).
            for (name, t) in &mut e.grads {
                if let Some(input) = self.function.inputs.iter().find(|i| i.name == *name) {
                    t.shape = input
                        .shape
                        .iter()
                        .map(|d| d.eval(&bound.sizes).max(0) as usize)
                        .collect();
                }
            }
            return Ok(e);
        }
        interp::run(&self.function, &bound)
    }

    /// The vector-Jacobian product of a per-sample loss (`-> f32[N]`): its values (output `value`) and the
    /// gradient of `sum cotangent * value` for every differentiable input.
    pub fn vjp(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        hypers: &BTreeMap<String, f64>,
        cotangent: Tensor,
    ) -> Result<Evaluation, CallError> {
        let Some(c) = self.function.cotangent else {
            let expected = self
                .function
                .inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CallError::UnknownInput {
                name: "cotangent".into(),
                expected,
            });
        };
        let mut all = inputs.clone();
        all.insert(self.function.inputs[c as usize].name.clone(), cotangent);
        self.eval_with(&all, hypers)
    }

    /// The Hessian-vector product of the loss in the differentiable input `x` along `v` (shaped like `x`):
    /// the gradient of `L_v = Σ_t ∂L/∂x[t] · v[t]`. Its `loss` is that directional derivative, its gradient
    /// of `x` is `H v` (the Hessian of L in x times v), and the gradient of every other differentiable input
    /// z is the mixed product `(∂²L / ∂z ∂x) v`; outputs are the loss's. The second-order program (the
    /// kernel's gradient program differentiated again, [`crate::autodiff::directional`]) is built on this
    /// kernel's backend at the first call for each `x` and kept.
    pub fn hvp(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        hypers: &BTreeMap<String, f64>,
        x: &str,
        v: Tensor,
    ) -> Result<Evaluation, CallError> {
        let f = &self.function;
        let differentiable = || {
            let names: Vec<&str> = f
                .inputs
                .iter()
                .filter(|i| i.differentiable())
                .map(|i| i.name.as_str())
                .collect();
            names.join(", ")
        };
        if !f.inputs.iter().any(|i| i.name == x && i.differentiable()) {
            return Err(CallError::UnknownInput {
                name: x.to_string(),
                expected: differentiable(),
            });
        }
        if let Some(name) = hypers.keys().find(|k| self.fixed.contains(k)) {
            return Err(CallError::HyperFixed { name: name.clone() });
        }
        // The direction is one more input, under a name the loss does not use.
        let mut direction = "v".to_string();
        while f.inputs.iter().any(|i| i.name == direction) {
            direction.push('_');
        }
        let kernel = {
            let mut built = self.hvps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match built.get(x) {
                Some(k) => k.clone(),
                None => {
                    // The extern outputs are inputs of the second-order program (completed below).
                    let h = crate::autodiff::directional(f, x, &direction)
                        .map(|mut h| {
                            h.externs.clear();
                            h
                        })
                        .and_then(|h| Kernel::build(&h, &self.options))
                        .map_err(|d| CallError::Compile(d.message))?;
                    built.insert(x.to_string(), h.clone());
                    h
                }
            }
        };
        let mut all = match &self.stages {
            Some(stages) => stages.complete(inputs, hypers)?.inputs,
            None => inputs.clone(),
        };
        if all.contains_key(&direction) {
            return Err(CallError::UnknownInput {
                name: direction,
                expected: f.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        all.insert(direction, v);
        kernel.with_threads(self.threads).eval_with(&all, hypers)
    }

    /// One call of a stateful loss: the state inputs are gathered from `store` by the call's sample ids,
    /// and the outputs declared `updates` are written back into it. Pass every input but the state ones.
    pub fn eval_stateful(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        hypers: &BTreeMap<String, f64>,
        store: &mut crate::StateStore,
    ) -> Result<Evaluation, CallError> {
        let mut all = inputs.clone();
        store.gather(&self.function, &mut all, hypers)?;
        let e = self.eval_with(&all, hypers)?;
        store.scatter(&self.function, &all, &e.outputs)?;
        Ok(e)
    }

    /// Like [`Kernel::eval_with`], writing each gradient into a caller buffer of the input's size; returns
    /// the loss.
    pub fn eval_into(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        hypers: &BTreeMap<String, f64>,
        grads: &mut [(&str, &mut [f64])],
    ) -> Result<f64, CallError> {
        let e = self.eval_with(inputs, hypers)?;
        for (name, out) in grads.iter_mut() {
            let Some((_, g)) = e.grads.iter().find(|(n, _)| n == name) else {
                let expected = e.grads.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
                return Err(CallError::UnknownInput {
                    name: name.to_string(),
                    expected,
                });
            };
            let v = g.to_f64();
            if v.len() != out.len() {
                return Err(CallError::LengthMismatch {
                    input: format!("grad_{name}"),
                    shape: g.shape.clone(),
                    len: out.len(),
                    needed: v.len(),
                });
            }
            out.copy_from_slice(&v);
        }
        Ok(e.loss)
    }
}

/// An input in device memory, for [`Kernel::eval_device`]: its address (a `CUdeviceptr`: a PyTorch CUDA
/// tensor's `data_ptr()`, a cudarc or candle allocation), shape and element type (float32 for float
/// inputs, int64 for labels), row-major and contiguous.
#[derive(Clone, Debug)]
pub struct DeviceTensor {
    /// The device address of the first element.
    pub ptr: u64,
    /// The shape, row-major.
    pub shape: Vec<usize>,
    /// The element type: float32 (or bfloat16/float16 where declared) for float inputs, int64 for labels.
    pub dtype: crate::data::DType,
}

impl Kernel {
    /// One call of a CUDA kernel on device memory the caller owns, queued on its `stream` (a `CUstream`;
    /// 0: the default stream): the inputs are read in place, the gradients named in `grads` (by input
    /// name) are written into the caller's device buffers (float32, the input's shape), and only the loss
    /// and the tensors not placed (other gradients, extra outputs) are copied back. Float inputs are float32,
    /// or bfloat16 / float16 where the loss declares them so (their gradients then too). Shapes are checked on
    /// the host, labels by a kernel on the device; every failure is a [`CallError`].
    pub fn eval_device(
        &self,
        inputs: &BTreeMap<String, DeviceTensor>,
        hypers: &BTreeMap<String, f64>,
        grads: &BTreeMap<String, u64>,
        stream: u64,
    ) -> Result<Evaluation, CallError> {
        self.host_only_externs("eval_device")?;
        self.on_device("eval_device", stream, |cuda, device, _| {
            self.device_call(cuda, device, inputs, hypers, grads, &[])
        })
    }

    /// Runs `call` with the CUDA kernel's device and state locked, on `stream`; ends the call after.
    fn on_device<T>(
        &self,
        what: &str,
        stream: u64,
        call: impl FnOnce(
            &CudaKernel,
            &mut dyn crate::backend::cuda::host::Device,
            &mut DeviceState,
        ) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let cuda = self.cuda_kernel(what)?;
        let mut device = cuda.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut state = cuda.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        device.set_stream(stream);
        let out = call(cuda, &mut **device, &mut state);
        device.release();
        device.set_stream(0);
        out
    }

    /// Device calls take device pointers: a loss whose extern operations run on the host takes host
    /// tensors ([`Kernel::eval`]).
    fn host_only_externs(&self, what: &str) -> Result<(), CallError> {
        match &self.stages {
            Some(stages) => Err(CallError::Extern {
                op: stages.source.externs[0].op.clone(),
                message: format!(
                    "{what} takes device pointers, but extern operations run on the host; call `eval` with host tensors"
                ),
            }),
            None => Ok(()),
        }
    }

    fn cuda_kernel(&self, what: &str) -> Result<&CudaKernel, CallError> {
        self.cuda.as_deref().ok_or_else(|| {
            CallError::Device(format!(
                "{what} needs a kernel built with the CUDA backend (Compiler::backend(Backend::Cuda))"
            ))
        })
    }

    /// [`Kernel::eval_device`] on a locked device, with the tensors of `outputs` (plan buffer, address)
    /// placed too.
    fn device_call(
        &self,
        cuda: &CudaKernel,
        device: &mut dyn crate::backend::cuda::host::Device,
        inputs: &BTreeMap<String, DeviceTensor>,
        hypers: &BTreeMap<String, f64>,
        grads: &BTreeMap<String, u64>,
        outputs: &[(usize, u64)],
    ) -> Result<Evaluation, CallError> {
        use crate::data::DType;
        if let Some(name) = hypers.keys().find(|k| self.fixed.contains(k)) {
            return Err(CallError::HyperFixed { name: name.clone() });
        }
        let f = &*self.function;
        let views: BTreeMap<&str, call::InputView> = inputs
            .iter()
            .map(|(n, t)| {
                let len = t.shape.iter().product();
                (
                    n.as_str(),
                    call::InputView {
                        dtype: t.dtype,
                        shape: &t.shape,
                        len,
                        labels: None,
                    },
                )
            })
            .collect();
        let (sizes, values) = call::bind_views(f, &views, hypers)?;
        cuda.check_elements(f, &sizes)?;
        let mut placed_inputs = Vec::with_capacity(f.inputs.len());
        for input in &f.inputs {
            let t = &inputs[&input.name];
            let (expected, what) = match input.elem {
                crate::ir::ElemTy::Idx => (DType::I64, "int64 labels in device memory"),
                crate::ir::ElemTy::Bf16 => (DType::BF16, "bfloat16 in device memory"),
                crate::ir::ElemTy::F16 => (DType::F16, "float16 in device memory"),
                _ => (DType::F32, "float32 in device memory"),
            };
            if t.dtype != expected {
                return Err(CallError::WrongDtype {
                    input: input.name.clone(),
                    expected: what,
                    got: t.dtype,
                });
            }
            placed_inputs.push(crate::backend::cuda::host::Input::Device(t.ptr));
        }
        let program = &cuda.program;
        let mut placed = Vec::new();
        for (name, addr) in grads {
            let nest = program
                .plan
                .nests
                .iter()
                .find(|n| matches!(n.role, crate::ir::Role::Grad(i) if f.inputs[i as usize].name == *name));
            let Some(nest) = nest else {
                let expected = f.inputs.iter().filter(|i| i.differentiable()).map(|i| i.name.as_str());
                return Err(CallError::UnknownInput {
                    name: name.clone(),
                    expected: expected.collect::<Vec<_>>().join(", "),
                });
            };
            placed.push((program.plan.buffer_of(f, crate::ir::TensorRef::Def(nest.tensor)), *addr));
        }
        placed.extend_from_slice(outputs);
        let mut e =
            crate::backend::cuda::host::run_device(program, f, &sizes, &values, &placed_inputs, &placed, device)?;
        e.grads.retain(|(n, _)| !grads.contains_key(n));
        Ok(e)
    }

    /// One call of a stateful loss (SogCLR, iSogCLR, ALDR-KL) whose state tables live in device memory,
    /// kept by this CUDA kernel: pass every input but the state ones (the sample ids as an int64 device
    /// tensor); each state input is gathered on the device by the call's ids (rows never seen start at
    /// their initial value) and each `updates` output scattered back (where a batch holds an id twice,
    /// its last row wins, as in [`crate::StateStore`]). The outputs are also copied back.
    pub fn eval_device_stateful(
        &self,
        inputs: &BTreeMap<String, DeviceTensor>,
        hypers: &BTreeMap<String, f64>,
        grads: &BTreeMap<String, u64>,
        stream: u64,
    ) -> Result<Evaluation, CallError> {
        self.host_only_externs("eval_device_stateful")?;
        self.on_device("eval_device_stateful", stream, |cuda, device, state| {
            self.stateful_call(cuda, device, state, inputs, hypers, grads)
        })
    }

    fn stateful_call(
        &self,
        cuda: &CudaKernel,
        device: &mut dyn crate::backend::cuda::host::Device,
        state: &mut DeviceState,
        inputs: &BTreeMap<String, DeviceTensor>,
        hypers: &BTreeMap<String, f64>,
        grads: &BTreeMap<String, u64>,
    ) -> Result<Evaluation, CallError> {
        use crate::backend::cuda::host::launch_aux;
        use crate::data::DType;
        let f = &*self.function;
        let program = &cuda.program;
        let dev_err = |e: crate::backend::cuda::CudaError| CallError::Device(e.to_string());
        let Some((gather, scatter)) = program.state_kernels else {
            return self.device_call(cuda, device, inputs, hypers, grads, &[]);
        };
        let mut all = inputs.clone();
        // Per state input: its ids, the slots of their rows and the shape of the gathered state.
        let mut calls: Vec<(usize, Vec<i64>, u64, Vec<usize>)> = Vec::new();
        for (k, spec, key) in crate::state::state_inputs(f, |name| inputs.contains_key(name))? {
            let ids_t = &inputs[key];
            if ids_t.dtype != DType::I64 || ids_t.shape.len() != 1 {
                return Err(CallError::WrongDtype {
                    input: key.to_string(),
                    expected: "int64 sample ids in device memory, rank 1",
                    got: ids_t.dtype,
                });
            }
            let n = ids_t.shape[0];
            let mut bytes = vec![0u8; n * 8];
            device.download(ids_t.ptr, &mut bytes).map_err(dev_err)?;
            let ids: Vec<i64> = bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            crate::state::check_ids(key, &ids)?;
            let row = crate::state::row_shape(f, k, |name| inputs.get(name).map(|t| t.shape.clone()), hypers)?;
            let w = row.iter().product::<usize>();
            let init = crate::state::initial_value(f, spec.init, hypers);
            let table = state.tables.entry(k).or_insert_with(|| DeviceTable {
                init,
                width: w,
                ..DeviceTable::default()
            });
            if table.width != w {
                return Err(CallError::StateWidth {
                    name: f.inputs[k].name.clone(),
                    table: table.width,
                    call: w,
                });
            }
            // Each id seen gets the next row (slot) of the table: its size follows the ids seen, not the
            // largest id (one id of 2^28 - 1 cost a dense 1 GiB table).
            let slots: Vec<i64> = ids
                .iter()
                .map(|id| {
                    let next = table.slots.len() as i64;
                    *table.slots.entry(*id).or_insert(next)
                })
                .collect();
            let need = table.slots.len();
            if table.rows < need {
                // A larger table: the old rows, then new ones at their initial value (rows past the slots
                // in use keep it until an id takes them).
                let rows = need.max(2 * table.rows);
                let mut values = vec![0u8; table.rows * w * 4];
                if table.rows > 0 {
                    device.download(table.ptr, &mut values).map_err(dev_err)?;
                }
                values.extend((table.rows * w..rows * w).flat_map(|_| (table.init as f32).to_le_bytes()));
                let ptr = device.alloc_kept((rows * w).max(1) * 4).map_err(dev_err)?;
                device.upload(ptr, &values).map_err(dev_err)?;
                (table.ptr, table.rows) = (ptr, rows);
            }
            let table_ptr = table.ptr;
            let slot_bytes: Vec<u8> = slots.iter().flat_map(|x| x.to_le_bytes()).collect();
            let slots_ptr = state.scratch(device, (k, 2), slot_bytes.len())?;
            device.upload(slots_ptr, &slot_bytes).map_err(dev_err)?;
            let gathered = state.scratch(device, (k, 0), n * w * 4)?;
            launch_aux(
                device,
                gather,
                n * w,
                &[slots_ptr, table_ptr, gathered],
                &[(n * w) as i64, w as i64],
            )?;
            let shape: Vec<usize> = std::iter::once(n).chain(row).collect();
            all.insert(
                f.inputs[k].name.clone(),
                DeviceTensor {
                    ptr: gathered,
                    shape: shape.clone(),
                    dtype: DType::F32,
                },
            );
            calls.push((k, ids, slots_ptr, shape));
        }
        // The updating outputs go to buffers of their own, to be scattered after the call.
        let mut outputs = Vec::new();
        for u in &f.updates {
            let Some((_, _, _, shape)) = calls.iter().find(|c| c.0 == u.input as usize) else {
                continue;
            };
            let nest = program
                .plan
                .nests
                .iter()
                .find(|n| n.role == crate::ir::Role::Output && f.tensor(n.tensor).name == u.output);
            if let Some(nest) = nest {
                let buffer = program.plan.buffer_of(f, crate::ir::TensorRef::Def(nest.tensor));
                outputs.push((
                    buffer,
                    state.scratch(device, (u.input as usize, 1), shape.iter().product::<usize>() * 4)?,
                ));
            }
        }
        let mut e = self.device_call(cuda, device, &all, hypers, grads, &outputs)?;
        for u in &f.updates {
            let Some((k, ids, ids_ptr, shape)) = calls.iter().find(|c| c.0 == u.input as usize) else {
                continue;
            };
            let (n, w) = (shape.iter().product::<usize>(), shape[1..].iter().product::<usize>());
            let Some(&(_, rows)) = outputs.iter().find(|(b, _)| {
                matches!(program.plan.buffers[*b].of, crate::ir::TensorRef::Def(t) if f.tensor(t).name == u.output)
            }) else {
                continue;
            };
            // The last row of each id wins.
            let mut seen = std::collections::HashSet::new();
            let mut last = vec![0i32; ids.len()];
            for (r, id) in ids.iter().enumerate().rev() {
                if seen.insert(*id) {
                    last[r] = 1;
                }
            }
            let last_bytes: Vec<u8> = last.iter().flat_map(|x| x.to_le_bytes()).collect();
            let last_ptr = device.alloc(last_bytes.len().max(16)).map_err(dev_err)?;
            device.upload(last_ptr, &last_bytes).map_err(dev_err)?;
            let table_ptr = state.tables[k].ptr;
            launch_aux(
                device,
                scatter,
                n,
                &[*ids_ptr, table_ptr, rows, last_ptr],
                &[n as i64, w as i64],
            )?;
            // The output, copied back as `eval_stateful` returns it.
            let mut bytes = vec![0u8; n * 4];
            device.download(rows, &mut bytes).map_err(dev_err)?;
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                .collect();
            match e.outputs.iter_mut().find(|(n, _)| *n == u.output) {
                Some((_, t)) => *t = Tensor::float(shape.clone(), values),
                None => e.outputs.push((u.output.clone(), Tensor::float(shape.clone(), values))),
            }
        }
        Ok(e)
    }

    /// A state table kept on the device by [`Kernel::eval_device_stateful`], as f64 values by id (ids never
    /// seen hold their initial value; empty before the first call), as [`crate::StateStore::table`] gives one.
    pub fn device_state(&self, name: &str) -> Result<Vec<f64>, CallError> {
        let (rows, init, width) = self.device_table(name)?;
        Ok(crate::state::dense(&rows, init, width))
    }

    /// The rows of a state table kept on the device, by sample id (only the ids seen), as
    /// [`crate::StateStore::rows`] gives them.
    pub fn device_state_rows(&self, name: &str) -> Result<BTreeMap<i64, Vec<f64>>, CallError> {
        self.device_table(name).map(|(rows, _, _)| rows)
    }

    /// A device state table's rows by id, the value a new row starts at and the values per row.
    #[allow(clippy::type_complexity)]
    fn device_table(&self, name: &str) -> Result<(BTreeMap<i64, Vec<f64>>, f64, usize), CallError> {
        let cuda = self.cuda_kernel("device_state")?;
        let f = &*self.function;
        let Some(k) = f.inputs.iter().position(|i| i.name == name && i.state.is_some()) else {
            let expected = f.inputs.iter().filter(|i| i.state.is_some()).map(|i| i.name.as_str());
            return Err(CallError::UnknownInput {
                name: name.into(),
                expected: expected.collect::<Vec<_>>().join(", "),
            });
        };
        let mut device = cuda.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = cuda.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(table) = state.tables.get(&k) else {
            return Ok((Default::default(), 0.0, 1));
        };
        let w = table.width;
        let mut bytes = vec![0u8; table.rows * w * 4];
        device
            .download(table.ptr, &mut bytes)
            .map_err(|e| CallError::Device(e.to_string()))?;
        let values: Vec<f64> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect();
        let rows = table
            .slots
            .iter()
            .map(|(id, slot)| (*id, values[*slot as usize * w..][..w].to_vec()))
            .collect();
        Ok((rows, table.init, w))
    }
}

/// A state table in device memory: its address, its rows (`width` f32 each; one per id seen, in the order
/// the ids were first seen: `slots`), and the value a new row starts at.
#[derive(Clone, Debug, Default)]
struct DeviceTable {
    ptr: u64,
    rows: usize,
    width: usize,
    slots: std::collections::HashMap<i64, i64>,
    init: f64,
}

/// The state tables of a CUDA kernel's stateful loss, by input, and the buffers its calls gather rows
/// into and scatter them from (kept, grown as needed).
#[derive(Default)]
struct DeviceState {
    tables: std::collections::HashMap<usize, DeviceTable>,
    buffers: std::collections::HashMap<(usize, usize), (u64, usize)>,
}

impl DeviceState {
    /// A kept buffer of at least `bytes` for `slot`.
    fn scratch(
        &mut self,
        device: &mut dyn crate::backend::cuda::host::Device,
        slot: (usize, usize),
        bytes: usize,
    ) -> Result<u64, CallError> {
        match self.buffers.get(&slot) {
            Some(&(ptr, size)) if size >= bytes => Ok(ptr),
            _ => {
                let ptr = device
                    .alloc_kept(bytes.max(16))
                    .map_err(|e| CallError::Device(e.to_string()))?;
                self.buffers.insert(slot, (ptr, bytes.max(16)));
                Ok(ptr)
            }
        }
    }
}

impl Kernel {
    /// Copies a host tensor to device memory the CUDA kernel keeps until it is dropped, in the element
    /// type `eval_device` expects for input `name` (float32, bfloat16 or float16 as declared; int64 for
    /// labels): an input uploaded once and used by many calls (what `lossc bench --backend cuda` times).
    pub fn to_device(&self, name: &str, t: &Tensor) -> Result<DeviceTensor, CallError> {
        use crate::data::{DType, Data};
        let Some(cuda) = &self.cuda else {
            return Err(CallError::Device(
                "to_device needs a kernel built with the CUDA backend".into(),
            ));
        };
        let f = &*self.function;
        let Some(input) = f.inputs.iter().find(|i| i.name == name) else {
            let expected = f.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(CallError::UnknownInput {
                name: name.into(),
                expected,
            });
        };
        let half = DType::half_of(input.elem);
        let (dtype, bytes): (DType, Vec<u8>) = match &t.data {
            Data::Int(v) => (DType::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::Float(v) => (
                half.unwrap_or(DType::F32),
                crate::backend::cuda::host::encode_floats(half, v),
            ),
        };
        let mut device = cuda.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let err = |e: crate::backend::cuda::CudaError| CallError::Device(e.to_string());
        let ptr = device.alloc_kept(bytes.len()).map_err(err)?;
        device.upload(ptr, &bytes).map_err(err)?;
        Ok(DeviceTensor {
            ptr,
            shape: t.shape.clone(),
            dtype,
        })
    }

    /// Copies `out.len()` bytes of device memory at `ptr` (for example a gradient buffer) to the host.
    pub fn from_device(&self, ptr: u64, out: &mut [u8]) -> Result<(), CallError> {
        let Some(cuda) = &self.cuda else {
            return Err(CallError::Device(
                "from_device needs a kernel built with the CUDA backend".into(),
            ));
        };
        let mut device = cuda.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        device.download(ptr, out).map_err(|e| CallError::Device(e.to_string()))
    }

    /// Device memory of `bytes` the CUDA kernel keeps until it is dropped (a gradient buffer for
    /// [`Kernel::eval_device`]).
    pub fn device_buffer(&self, bytes: usize) -> Result<u64, CallError> {
        let Some(cuda) = &self.cuda else {
            return Err(CallError::Device(
                "device_buffer needs a kernel built with the CUDA backend".into(),
            ));
        };
        let mut device = cuda.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        device.alloc_kept(bytes).map_err(|e| CallError::Device(e.to_string()))
    }
}

/// A kernel's CUDA program and the device it was loaded on (one call at a time).
struct CudaKernel {
    program: crate::backend::cuda::Program,
    device: std::sync::Mutex<Box<dyn crate::backend::cuda::host::Device + Send>>,
    /// Locked after `device`.
    state: std::sync::Mutex<DeviceState>,
}

impl CudaKernel {
    /// [`call::check_elements`] on the tensors of `f` (the program's function) that the kernels store
    /// whole: not a slotted buffer's, which holds a row per running block.
    fn check_elements(&self, f: &Function, sizes: &[i64]) -> Result<(), CallError> {
        (self.program.plan).check_elements(f, sizes, |k| !self.program.slotted[k])
    }
}

/// Replaces the named hyperparameters by their (default) values as constants and re-optimizes.
fn specialise(g: &Function, names: &[String]) -> Result<Function, Diag> {
    let mut f = g.clone();
    let mut map = std::collections::HashMap::new();
    for (k, h) in g.hypers.iter().enumerate() {
        if names.contains(&h.name) {
            let c = match h.scalar {
                Scalar::Int => f.add(Expr::Int(h.default as i64), Scalar::Int, h.span),
                _ => f.float(h.default, h.span),
            };
            map.insert(k as u32, c.map_err(|_| too_large(g))?);
        }
    }
    let f = crate::opt::replace_hypers(&f, &map).map_err(|_| too_large(g))?;
    crate::opt::optimize(&f)
}

fn too_large(f: &Function) -> Diag {
    Diag::new(Code::TooDeep, format!("`{}` is too large to specialise", f.name)).help("split the loss into `let`s")
}

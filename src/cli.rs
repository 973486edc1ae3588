//! The `lossc` command line (behind the `cli` feature): `check`, `compile`, `eval`.
//!
//! Exit codes: 0 success, 1 a user error (diagnostic or message on stderr), 2 a usage error (clap).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::call::{self, CallError};
use crate::data::{self, Data, Rng, Tensor};
use crate::diag::Diags;
use crate::ir::{Dim, ElemTy, Function};
use crate::{Program, syntax};

/// The command line: `lossc <command>`.
#[derive(Parser, Debug)]
#[command(
    name = "lossc",
    version,
    about = "A declarative language and compiler for training objectives"
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse and check files; print every diagnostic.
    Check {
        /// The .lx files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compile a file and print a stage of the pipeline.
    Compile {
        /// The .lx file (or a stdlib loss by path: std::module::loss).
        file: PathBuf,
        /// What to print (default: ir).
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// Only this loss (default: all).
        #[arg(long)]
        loss: Option<String>,
        /// Write to this file instead of stdout; a `.so` is a shared library of the losses (loss +
        /// gradient, one C entry point each), a `.o` the same as one object to link into a program.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// With a library (`-o NAME.so` or `NAME.o`): also write a C header declaring its entry points.
        #[arg(long)]
        header: Option<PathBuf>,
        /// Print the time each compilation stage takes (on stderr).
        #[arg(long)]
        timings: bool,
    },
    /// Decide properties of a loss from its IR (convexity, invariances, boundedness, symmetry): each
    /// proven with its derivation, disproven with a counterexample, or unknown.
    Analyze {
        /// The .lx file (or a stdlib loss by path: std::module::loss).
        file: PathBuf,
        /// Only this loss (default: all).
        #[arg(long)]
        loss: Option<String>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a loss on inputs from files or seeded random data.
    Eval(EvalArgs),
    /// Compare the symbolic gradient with central finite differences (f64); exit 1 above tolerance.
    Gradcheck(GradcheckArgs),
    /// Time loss + gradient on seeded random data.
    Bench(BenchArgs),
    /// Draw losses (and their derivatives) against a varied margin, logit or probability.
    Plot(crate::plot::PlotArgs),
    /// List the standard library's losses, or show one's documentation and source.
    Stdlib {
        /// One loss by name or path (all of them when omitted).
        name: Option<String>,
    },
    /// An interactive session (reads stdin as a script when it is not a terminal).
    Repl,
    /// Format .lx files in place (with --check: only report which would change, exit 1 if any).
    Fmt {
        /// The .lx files to format.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only report which files would change (exit 1 if any).
        #[arg(long)]
        check: bool,
    },
}

/// Which backend runs a command's kernels.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The Cranelift JIT (CPU, f32 with f64 accumulators).
    Jit,
    /// The f64 reference interpreter.
    Interp,
    /// Generated CUDA kernels on GPU 0 (NVRTC and the CUDA driver, found at run time).
    Cuda,
}

impl BackendArg {
    /// The library's backend of this choice.
    pub fn into_backend(self) -> crate::Backend {
        self.backend()
    }
    fn backend(self) -> crate::Backend {
        match self {
            BackendArg::Jit => crate::Backend::Jit,
            BackendArg::Interp => crate::Backend::Interp,
            BackendArg::Cuda => crate::Backend::Cuda,
        }
    }
}

/// `lossc bench`'s arguments.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The .lx file (or a stdlib loss by path: std::module::loss).
    pub file: PathBuf,
    /// The loss to time (needed when the file defines several).
    #[arg(long)]
    pub loss: Option<String>,
    /// Dimension sizes: N=8192,C=1000.
    #[arg(long, value_name = "DIM=SIZE,…")]
    pub shape: String,
    /// Threads for the JIT (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Which backend runs the timed calls.
    #[arg(long, value_enum, default_value = "jit")]
    pub backend: BackendArg,
    /// Timed repetitions after one warm-up [default: at least 20, and as many more as fill about a
    /// second at the warm-up's pace, at most 10,000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How an input is drawn: NAME=normal (the default for differentiable inputs), NAME=uniform (in
    /// [0, 1); the default for `nograd` ones), NAME=binary (0 or 1), or for labels NAME=labels:K
    /// (uniform in 0..K; the default is the input's bound, else 4).
    #[arg(long = "dist", value_name = "NAME=DIST")]
    pub dists: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Stream pairwise tensors (recomputed a row at a time, memory linear in the inputs) also where the
    /// call fits the memory budget (LOSSC_MEMORY_BUDGET), where lossc streams them by itself.
    #[arg(long)]
    pub stream: bool,
}

/// What `lossc compile --emit` prints.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The syntax tree as S-expressions.
    Ast,
    /// The checked IR, node by node.
    Ir,
    /// The gradient program, simplified, one expression per tensor.
    Grad,
    /// The optimized loss-and-gradient program (what backends run), one expression per tensor.
    Opt,
    /// The Cranelift IR of every function of the JIT kernel (one per group of fused loop nests).
    Clif,
    /// The CUDA C of the GPU kernel (one `__global__` kernel per group; needs no CUDA library).
    Cuda,
    /// The optimized program with its tensors over pairs streamed, recomputed a row at a time (what a JIT
    /// call over its memory budget runs, and the CUDA kernels with `stream_pairwise`).
    Stream,
}

/// Where a command's inputs come from.
#[derive(clap::Args, Debug)]
pub struct InputArgs {
    /// The .lx file (or a stdlib loss by path: std::module::loss).
    pub file: PathBuf,
    /// The loss to use (needed when the file defines several).
    #[arg(long)]
    pub loss: Option<String>,
    /// An input: NAME=PATH.npy or NAME=PATH.safetensors:TENSOR.
    #[arg(long = "input", value_name = "NAME=PATH")]
    pub inputs: Vec<String>,
    /// A directory holding NAME.npy for each input not given with --input.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Override a hyperparameter: NAME=VALUE.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Fill inputs not given otherwise with seeded random data, with these dimension sizes: N=8,C=5.
    #[arg(long, value_name = "DIM=SIZE,…")]
    pub random: Option<String>,
    /// Seed for --random, and of the loss's random draws (`rand`, `randn`) unless --set seed=… is given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How --random draws an input: NAME=normal (standard normal; the default for differentiable
    /// inputs), NAME=uniform (in [0, 1); the default for `nograd` ones), NAME=binary (0 or 1), or for
    /// labels NAME=labels:K (uniform in 0..K; the default is the input's bound, else 4).
    #[arg(long = "dist", value_name = "NAME=DIST")]
    pub dists: Vec<String>,
}

/// `lossc eval`'s arguments.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The loss and its inputs.
    #[command(flatten)]
    pub input: InputArgs,
    /// Also compute the gradient of every differentiable input.
    #[arg(long)]
    pub grad: bool,
    /// Which backend computes the result.
    #[arg(long, value_enum, default_value = "jit")]
    pub backend: BackendArg,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write loss.npy (grad_NAME.npy with --grad, out_NAME.npy for each extra output) into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Keep the loss's per-sample state (`state[ids]` inputs) in DIR/NAME.npy: read before the call
    /// (missing rows start at their initial value) and written back after it.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

/// `lossc gradcheck`'s arguments.
#[derive(clap::Args, Debug)]
pub struct GradcheckArgs {
    /// The loss and its inputs.
    #[command(flatten)]
    pub input: InputArgs,
    /// The largest error accepted: |g - fd| / max(1, |g|, |fd|) [default: 1e-6 for the interpreter, 2e-3
    /// for the f32 backends].
    #[arg(long)]
    pub tol: Option<f64>,
    /// Which backend computes the symbolic gradient (the finite differences are the interpreter's, in f64).
    #[arg(long, value_enum, default_value = "interp")]
    pub backend: BackendArg,
    /// Check at most this many elements of each input.
    #[arg(long, default_value_t = 256)]
    pub elements: usize,
}

/// A user-facing failure: printed to stderr, exit 1.
pub enum Failure {
    /// Diagnostics, rendered.
    Diags(Diags),
    /// A message, printed as it is.
    Message(String),
}

impl From<Diags> for Failure {
    fn from(d: Diags) -> Failure {
        Failure::Diags(d)
    }
}
impl From<CallError> for Failure {
    fn from(e: CallError) -> Failure {
        Failure::Message(format!("error: {e}"))
    }
}
impl From<data::DataError> for Failure {
    fn from(e: data::DataError) -> Failure {
        Failure::Message(format!("error: {e}"))
    }
}

impl Failure {
    /// Prints it on stderr.
    pub fn print(&self) {
        match self {
            Failure::Diags(d) => eprint!("{}", d.render()),
            Failure::Message(m) => eprintln!("{m}"),
        }
    }
}

/// Writes `text` to standard output. A reader that went away (`lossc compile … | head`) ends the process
/// quietly, as it would a C program killed by SIGPIPE, instead of a panic of `print!`.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing the output: {e}");
        std::process::exit(1);
    }
}

/// Runs a parsed command line; returns what to print on stdout.
pub fn run(cli: Cli) -> Result<String, Failure> {
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Compile {
            file,
            emit,
            loss,
            output,
            header,
            timings,
        } => {
            if let Some(path) = &output
                && let Some(kind) = library_output(path)
            {
                if let Some(emit) = emit {
                    return Err(Failure::Message(format!(
                        "error: `-o {}` writes a library; `--emit {}` writes text (give -o another extension)",
                        path.display(),
                        emit.to_possible_value()
                            .map_or(String::new(), |v| v.get_name().to_string())
                    )));
                }
                if timings {
                    eprint!("{}", stage_timings(&file, loss.as_deref(), Emit::Clif)?);
                }
                return write_library(&file, loss.as_deref(), path, kind, header.as_deref());
            }
            if header.is_some() {
                return Err(Failure::Message(
                    "error: --header goes with a library: -o NAME.so or -o NAME.o".into(),
                ));
            }
            let emit = emit.unwrap_or(Emit::Ir);
            if timings {
                eprint!("{}", stage_timings(&file, loss.as_deref(), emit)?);
            }
            let text = compile(&file, emit, loss.as_deref())?;
            match output {
                Some(path) => {
                    std::fs::write(&path, text)
                        .map_err(|e| Failure::Message(format!("error: cannot write {}: {e}", path.display())))?;
                    Ok(String::new())
                }
                None => Ok(text),
            }
        }
        Command::Analyze { file, loss, json } => analyze(&file, loss.as_deref(), json),
        Command::Eval(args) => eval(&args),
        Command::Gradcheck(args) => gradcheck(&args),
        Command::Bench(args) => crate::bench::run(&args).map_err(Failure::Message),
        Command::Fmt { files, check } => fmt(&files, check),
        Command::Plot(args) => crate::plot::run(&args).map_err(Failure::Message),
        Command::Stdlib { name: None } => Ok(crate::stdlib::listing()),
        Command::Stdlib { name: Some(n) } => crate::stdlib::describe(&n)
            .ok_or_else(|| Failure::Message(format!("error: no stdlib loss named `{n}` (see `lossc stdlib`)"))),
        Command::Repl => crate::repl::run().map(|()| String::new()).map_err(Failure::Message),
    }
}

/// The loss named (or every loss of the program when none is: a file without a loss is E201 for every
/// command, as it is where one loss is needed).
fn losses_of<'p>(p: &'p Program, file: &Path, loss: Option<&str>) -> Result<Vec<&'p Function>, Diags> {
    match loss {
        Some(_) => Ok(vec![p.loss(loss).map_err(|d| Diags(vec![d]))?]),
        None if p.module.functions.is_empty() => Err(Diags(vec![
            crate::diag::Diag::new(
                crate::diag::Code::UnknownLoss,
                format!("{} defines no loss", file.display()),
            )
            .help("every command needs a loss: define one, e.g. `loss name(x: f32[N]) { mean[i] x[i] }`"),
        ])),
        None => Ok(p.module.functions.iter().collect()),
    }
}

/// `lossc analyze`: the findings of every loss of a file (or one), as text or JSON.
fn analyze(file: &Path, loss: Option<&str>, json: bool) -> Result<String, Failure> {
    let p = Program::from_file(file)?;
    let fs = losses_of(&p, file, loss)?;
    let reports = fs
        .into_iter()
        .map(crate::analyze::analyze)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|d| Failure::Diags(Diags(vec![d])))?;
    if !json {
        return Ok(reports.iter().map(|r| r.text()).collect::<Vec<_>>().join("\n"));
    }
    let value: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let findings: Vec<serde_json::Value> = r
                .findings
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "property": f.property,
                        "verdict": f.verdict.name(),
                        "reason": f.reason,
                        "inconsistent": f.inconsistent,
                    })
                })
                .collect();
            serde_json::json!({"loss": r.loss, "findings": findings})
        })
        .collect();
    Ok(format!("{}\n", serde_json::Value::Array(value)))
}

fn check(files: &[PathBuf]) -> Result<String, Failure> {
    let mut failed = Vec::new();
    let mut out = String::new();
    for f in files {
        match Program::from_file(f).and_then(|p| losses_of(&p, f, None).map(|fs| fs.len())) {
            Ok(n) => out.push_str(&format!("{}: ok ({n} loss(es))\n", f.display())),
            Err(d) => failed.push(d),
        }
    }
    if failed.is_empty() {
        Ok(out)
    } else {
        emit(&out);
        Err(Failure::Diags(Diags(failed.into_iter().flat_map(|d| d.0).collect())))
    }
}

fn compile(file: &Path, emit: Emit, loss: Option<&str>) -> Result<String, Failure> {
    let read_err = |e: std::io::Error| Failure::Message(format!("error: cannot read {}: {e}", file.display()));
    match emit {
        Emit::Ast => {
            let text = std::fs::read_to_string(file).map_err(read_err)?;
            let ast = Program::parse_only(&file.display().to_string(), &text)?;
            Ok(syntax::print::file(&ast))
        }
        Emit::Ir | Emit::Grad | Emit::Opt | Emit::Clif | Emit::Cuda | Emit::Stream => {
            let p = Program::from_file(file)?;
            let fs = losses_of(&p, file, loss)?;
            let diag = |d| Failure::Diags(Diags(vec![d]));
            let mut out = Vec::new();
            for f in fs {
                out.push(match emit {
                    Emit::Grad => crate::ir::print::readable(&crate::api::simplified_gradient(f).map_err(diag)?),
                    Emit::Opt => crate::ir::print::readable(&crate::api::gradient(f).map_err(diag)?),
                    Emit::Clif => clif(f)?,
                    Emit::Cuda => crate::backend::cuda::generate(&crate::api::gradient(f).map_err(diag)?).source,
                    Emit::Stream => {
                        let g = crate::api::gradient(f).map_err(diag)?;
                        let pairs = crate::opt::stream::pairwise_at_any_size(&g);
                        let streamed =
                            crate::api::on_big_stack(|| crate::opt::stream::rows(&g, &pairs)).map_err(|_| {
                                Failure::Message(format!("error: streaming `{}` made too large a program", f.name))
                            })?;
                        crate::ir::print::readable(&streamed)
                    }
                    _ => crate::ir::print::function(f),
                });
            }
            Ok(out.join("\n"))
        }
    }
}

#[cfg(feature = "jit")]
fn library_output(path: &Path) -> Option<crate::backend::aot::Output> {
    crate::backend::aot::Output::of(path)
}

#[cfg(not(feature = "jit"))]
fn library_output(_: &Path) -> Option<()> {
    None
}

/// `lossc compile FILE -o lib.so|.o [--header H]`: the losses of a file (or one) as an ahead-of-time
/// library ([`crate::backend::aot`]).
#[cfg(feature = "jit")]
fn write_library(
    file: &Path,
    loss: Option<&str>,
    path: &Path,
    kind: crate::backend::aot::Output,
    header: Option<&Path>,
) -> Result<String, Failure> {
    use crate::backend::aot;
    let p = Program::from_file(file)?;
    let fs = losses_of(&p, file, loss)?;
    let gradients = fs
        .iter()
        .map(|f| crate::api::gradient(f))
        .collect::<Result<Vec<Function>, _>>()
        .map_err(|d| Failure::Diags(Diags(vec![d])))?;
    let source = file.display().to_string();
    let refs: Vec<&Function> = gradients.iter().collect();
    let library = aot::library(&refs, &source).map_err(|e| Failure::Message(format!("error: {e}")))?;
    aot::link(&library, path, kind).map_err(|e| Failure::Message(format!("error: {e}")))?;
    if let Some(h) = header {
        let guard = h
            .file_stem()
            .map_or("lossc".into(), |s| s.to_string_lossy().to_string());
        std::fs::write(h, aot::header(&library, &source, &guard))
            .map_err(|e| Failure::Message(format!("error: cannot write {}: {e}", h.display())))?;
    }
    Ok(String::new())
}

#[cfg(not(feature = "jit"))]
fn write_library(_: &Path, _: Option<&str>, _: &Path, _: (), _: Option<&Path>) -> Result<String, Failure> {
    Err(Failure::Message(
        "error: this lossc was built without the `jit` feature".into(),
    ))
}

#[cfg(feature = "jit")]
fn clif(f: &Function) -> Result<String, Failure> {
    let diags = |d| Failure::Diags(Diags(vec![d]));
    let g = match crate::api::merged_gradient(f).map_err(diags)? {
        Some(m) => m,
        None => crate::api::gradient(f).map_err(diags)?,
    };
    crate::backend::jit::clif(&g).map_err(|e| Failure::Message(format!("error: {e}")))
}

#[cfg(not(feature = "jit"))]
fn clif(_: &Function) -> Result<String, Failure> {
    Err(Failure::Message(
        "error: this lossc was built without the `jit` feature".into(),
    ))
}

fn fmt(files: &[PathBuf], check: bool) -> Result<String, Failure> {
    let mut changed = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Message(format!("error: cannot read {}: {e}", path.display())))?;
        let formatted = crate::syntax::fmt::format(&path.display().to_string(), &text)?;
        if formatted != text {
            changed.push(path.display().to_string());
            if !check {
                std::fs::write(path, formatted)
                    .map_err(|e| Failure::Message(format!("error: cannot write {}: {e}", path.display())))?;
            }
        }
    }
    if check && !changed.is_empty() {
        return Err(Failure::Message(format!("would reformat: {}", changed.join(", "))));
    }
    Ok(changed.iter().map(|c| format!("formatted {c}\n")).collect())
}

/// Per-stage compile times of every loss in a file (or one), as text.
/// With `--emit cuda`: the stages of the CUDA backend instead of the JIT's (code generation, and NVRTC
/// for sm_90 where it is installed, or the CUBIN from the disk cache; no GPU needed).
fn stage_timings(file: &Path, loss: Option<&str>, emit: Emit) -> Result<String, Failure> {
    let t = std::time::Instant::now();
    let p = Program::from_file(file)?;
    let front = t.elapsed();
    let mut out = format!("parse+check  {:>9.3} ms\n", front.as_secs_f64() * 1e3);
    let fs = losses_of(&p, file, loss)?;
    for f in fs {
        let stages = match emit {
            Emit::Cuda => cuda_timings(f)?,
            _ => {
                let k = crate::kernel::Kernel::build(f, &crate::Compiler::new())
                    .map_err(|d| Failure::Diags(Diags(vec![d])))?;
                k.timings().stages.clone()
            }
        };
        for (stage, d) in &stages {
            out.push_str(&format!(
                "{:<12} {:>9.3} ms  ({})\n",
                stage,
                d.as_secs_f64() * 1e3,
                f.name
            ));
        }
    }
    Ok(out)
}

fn cuda_timings(f: &Function) -> Result<Vec<(&'static str, std::time::Duration)>, Failure> {
    let t = std::time::Instant::now();
    let g = crate::api::gradient(f).map_err(|d| Failure::Diags(Diags(vec![d])))?;
    let mut stages = vec![("autodiff+opt", t.elapsed())];
    let t = std::time::Instant::now();
    let program = crate::backend::cuda::generate(&g);
    stages.push(("cuda codegen", t.elapsed()));
    #[cfg(feature = "cuda")]
    {
        // Through the CUBIN cache, as a first call would: NVRTC where the cache has no CUBIN for this
        // source (and it is written), a read of the cache file where it has.
        let t = std::time::Instant::now();
        match crate::backend::cuda::driver::cached_cubin(&program.source, "sm_90") {
            Ok(_) => stages.push(("nvrtc sm_90", t.elapsed())),
            Err(e) => eprintln!("nvrtc: {e}"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = program;
    Ok(stages)
}

pub(crate) fn parse_pairs(items: &[String], what: &str) -> Result<Vec<(String, String)>, Failure> {
    items
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split_once('=')
                .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
                .ok_or_else(|| Failure::Message(format!("error: `{s}` is not of the form {what}")))
        })
        .collect()
}

/// Gathers a loss's inputs from --input, --data and --random.
pub fn gather_inputs(f: &Function, args: &InputArgs) -> Result<BTreeMap<String, Tensor>, Failure> {
    let mut inputs = BTreeMap::new();
    for spec in &args.inputs {
        let (name, path) = spec
            .split_once('=')
            .ok_or_else(|| Failure::Message(format!("error: `{spec}` is not of the form NAME=PATH")))?;
        inputs.insert(name.to_string(), data::load(path)?);
    }
    if let Some(dir) = &args.data {
        for input in f.inputs.iter().filter(|i| i.given()) {
            let path = dir.join(format!("{}.npy", input.name));
            if !inputs.contains_key(&input.name) && (path.exists() || args.random.is_none()) {
                inputs.insert(input.name.clone(), data::load_npy(&path)?);
            }
        }
    }
    if let Some(spec) = &args.random {
        let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
        for (k, v) in parse_pairs(std::slice::from_ref(spec), "DIM=SIZE")? {
            let n = v.parse::<usize>().map_err(|_| {
                Failure::Message(format!("error: size of {k} must be a non-negative integer, got `{v}`"))
            })?;
            if n as u64 > call::MAX_ELEMENTS {
                return Err(Failure::Message(format!(
                    "error: size of {k} is {n}, more than a tensor may hold ({})",
                    call::MAX_ELEMENTS
                )));
            }
            if f.hypers.iter().any(|h| h.name == k) {
                return Err(Failure::Message(format!(
                    "error: `{k}` is a hyperparameter of `{}`: set it with --set {k}={n}",
                    f.name
                )));
            }
            if !f.dims.iter().any(|d| d.name == k) {
                let dims: Vec<&str> = f
                    .dims
                    .iter()
                    .filter(|d| d.hyper.is_none())
                    .map(|d| d.name.as_str())
                    .collect();
                return Err(Failure::Message(format!(
                    "error: `{k}` is not a dimension of `{}` (its dimensions: {})",
                    f.name,
                    dims.join(", ")
                )));
            }
            sizes.insert(k, n);
        }
        // Sizes fixed by files already given win over nothing; a disagreement is reported at bind time.
        for (k, n) in sizes_from_inputs(f, &inputs).into_iter().enumerate() {
            if let Some(n) = n {
                sizes.entry(f.dims[k].name.clone()).or_insert(n as usize);
            }
        }
        let sets = parse_pairs(&args.sets, "NAME=VALUE")?;
        let size_of = |d: &Dim| -> Result<usize, Failure> {
            let vals: Result<Vec<i64>, Failure> = f
                .dims
                .iter()
                .map(|s| {
                    // A size an integer hyperparameter sets is its value (`--set`, else the default).
                    if let Some(h) = s.hyper {
                        let h = &f.hypers[h as usize];
                        let set = sets
                            .iter()
                            .find(|(k, _)| *k == h.name)
                            .and_then(|(_, v)| v.parse::<f64>().ok());
                        return Ok(set.unwrap_or(h.default) as i64);
                    }
                    sizes.get(&s.name).map(|n| *n as i64).ok_or_else(|| {
                        Failure::Message(format!(
                            "error: give the size of dimension {0} with --random {0}=SIZE",
                            s.name
                        ))
                    })
                })
                .collect();
            let v = d.eval(&vals?);
            usize::try_from(v).map_err(|_| Failure::Message(format!("error: dimension {} is negative", f.show_dim(d))))
        };
        let mut dists: BTreeMap<String, Dist> = BTreeMap::new();
        for (name, dist) in parse_pairs(&args.dists, "NAME=DIST")? {
            let Some(input) = f.inputs.iter().find(|i| i.name == name) else {
                return Err(Failure::Message(format!(
                    "error: `{name}` is not an input of `{}`",
                    f.name
                )));
            };
            let labels = dist
                .strip_prefix("labels:")
                .map(|k| k.parse::<u64>().ok().filter(|k| *k > 0));
            let dist = match (input.elem == ElemTy::Idx, dist.as_str(), labels) {
                (true, _, Some(Some(k))) => Dist::Labels(k),
                (true, _, _) => {
                    return Err(Failure::Message(format!(
                        "error: `{name}` holds labels: draw them with --dist {name}=labels:K (uniform in 0..K, K > 0)"
                    )));
                }
                (false, "normal", _) => Dist::Normal,
                (false, "uniform", _) => Dist::Uniform,
                (false, "binary", _) => Dist::Binary,
                (false, other, _) => {
                    return Err(Failure::Message(format!(
                        "error: unknown distribution `{other}` for `{name}` (normal, uniform or binary)"
                    )));
                }
            };
            dists.insert(name, dist);
        }
        let mut rng = Rng::new(args.seed);
        // Drawn inputs are f64 tensors: their bytes count against the memory budget before any is drawn.
        let (budget, mut drawn) = (call::default_memory_budget(), 0u64);
        for (k, input) in f.inputs.iter().enumerate() {
            // A per-sample loss's cotangent defaults to ones (below), not to random numbers.
            if inputs.contains_key(&input.name) || f.cotangent == Some(k as u32) || !input.given() {
                continue;
            }
            let shape: Vec<usize> = input.shape.iter().map(&size_of).collect::<Result<_, _>>()?;
            let count: usize = shape
                .iter()
                .try_fold(1usize, |a, d| a.checked_mul(*d))
                .filter(|n| *n as u64 <= call::MAX_ELEMENTS)
                .ok_or_else(|| Failure::Message(format!("error: input `{}` would be too large", input.name)))?;
            drawn = drawn.saturating_add(count as u64 * 8);
            call::check_budget(drawn, budget).map_err(|e| Failure::Message(format!("error: {e}")))?;
            let t = if input.elem == ElemTy::Idx {
                let bound = match (&input.bound, dists.get(&input.name)) {
                    (Some(b), Some(Dist::Labels(k))) if *k > size_of(b)? as u64 => {
                        return Err(Failure::Message(format!(
                            "error: `{}` holds labels below {}: labels:{k} would draw larger ones",
                            input.name,
                            size_of(b)?
                        )));
                    }
                    (_, Some(Dist::Labels(k))) => *k,
                    (Some(b), _) => size_of(b)? as u64,
                    (None, _) => 4,
                };
                Tensor::labels(shape, (0..count).map(|_| rng.below(bound) as i64).collect())
            } else {
                let default = if input.nograd { Dist::Uniform } else { Dist::Normal };
                let dist = dists.get(&input.name).copied().unwrap_or(default);
                Tensor::float(shape, (0..count).map(|_| dist.draw(&mut rng)).collect())
            };
            inputs.insert(input.name.clone(), t);
        }
    }
    fill_cotangent(f, &mut inputs);
    Ok(inputs)
}

/// How `--random` draws the elements of an input.
#[derive(Clone, Copy)]
enum Dist {
    Normal,
    Uniform,
    Binary,
    /// Labels uniform in `0..K`.
    Labels(u64),
}

impl Dist {
    fn draw(self, rng: &mut Rng) -> f64 {
        match self {
            Dist::Normal => rng.normal(),
            Dist::Uniform => rng.uniform(),
            Dist::Binary => (rng.uniform() >= 0.5) as u8 as f64,
            Dist::Labels(k) => rng.below(k) as f64,
        }
    }
}

/// Each dimension's size as the given inputs' shapes show it (the last input mentioning it wins; a
/// disagreement is reported when the call is bound).
fn sizes_from_inputs(f: &Function, inputs: &BTreeMap<String, Tensor>) -> Vec<Option<i64>> {
    let mut sizes = vec![None; f.dims.len()];
    for (i, t) in f.inputs.iter().filter_map(|i| inputs.get(&i.name).map(|t| (i, t))) {
        for (d, n) in i.shape.iter().zip(&t.shape) {
            if let Dim::Sym(s) = d {
                sizes[s.index()] = Some(*n as i64);
            }
        }
    }
    sizes
}

/// A per-sample loss called without `cotangent` gets ones: its gradients are those of the sum of its values.
/// (A shape no other input determines is left for the call to report.)
fn fill_cotangent(f: &Function, inputs: &mut BTreeMap<String, Tensor>) {
    let Some(c) = f.cotangent else { return };
    let input = &f.inputs[c as usize];
    if inputs.contains_key(&input.name) {
        return;
    }
    let Some(sizes) = sizes_from_inputs(f, inputs).into_iter().collect::<Option<Vec<i64>>>() else {
        return;
    };
    let Some(shape) = input
        .shape
        .iter()
        .map(|d| usize::try_from(d.eval(&sizes)).ok())
        .collect::<Option<Vec<usize>>>()
    else {
        return;
    };
    let n: usize = shape.iter().product();
    if n as u64 <= call::MAX_ELEMENTS {
        inputs.insert(input.name.clone(), Tensor::float(shape, vec![1.0; n]));
    }
}

/// A loaded program, the loss picked, its inputs and its hyperparameters.
type Prepared = (Program, String, BTreeMap<String, Tensor>, BTreeMap<String, f64>);

/// Loads the program, picks the loss, gathers inputs and hyperparameters.
fn prepare(args: &InputArgs) -> Result<Prepared, Failure> {
    let p = Program::from_file(&args.file)?;
    let f = p
        .loss(args.loss.as_deref())
        .map_err(|d| Failure::Diags(Diags(vec![d])))?;
    let inputs = gather_inputs(f, args)?;
    // NaN in, NaN out: say where it came from.
    let floats = inputs.iter().filter_map(|(n, t)| match &t.data {
        Data::Float(v) => Some((n.as_str(), &t.shape[..], &v[..])),
        Data::Int(_) => None,
    });
    if let Some(e) = call::non_finite(floats) {
        eprintln!("warning: {e}");
    }
    let mut hypers = BTreeMap::new();
    for (k, v) in parse_pairs(&args.sets, "NAME=VALUE")? {
        let x = v
            .parse::<f64>()
            .map_err(|_| Failure::Message(format!("error: value of {k} must be a number, got `{v}`")))?;
        hypers.insert(k, x);
    }
    // `--seed` also keys the loss's random draws, unless `--set seed=…` does.
    if f.draws() && !hypers.contains_key("seed") {
        hypers.insert("seed".into(), args.seed as f64);
    }
    let name = f.name.clone();
    Ok((p, name, inputs, hypers))
}

fn eval_failure(e: crate::EvalError) -> Failure {
    match e {
        crate::EvalError::Loss(d) => Failure::Diags(Diags(vec![d])),
        crate::EvalError::Call(c) => c.into(),
    }
}

fn tensor_json(t: &Tensor) -> serde_json::Value {
    let data = match &t.data {
        Data::Float(v) => serde_json::json!(v),
        Data::Int(v) => serde_json::json!(v),
    };
    serde_json::json!({"shape": t.shape, "data": data})
}

fn eval(args: &EvalArgs) -> Result<String, Failure> {
    let (p, name, mut inputs, hypers) = prepare(&args.input)?;
    let f = p.module.get(&name).expect("prepare picked a loss of this program");
    let mut store = match &args.state {
        Some(dir) => {
            // State comes from the store; drop what --data or --random filled in (an explicit --input stays,
            // and is reported as a bad call).
            let explicit: Vec<&str> = args
                .input
                .inputs
                .iter()
                .filter_map(|s| s.split_once('='))
                .map(|p| p.0)
                .collect();
            for i in f
                .inputs
                .iter()
                .filter(|i| i.state.is_some() && !explicit.contains(&i.name.as_str()))
            {
                inputs.remove(&i.name);
            }
            Some(crate::StateStore::load_dir(dir, f)?)
        }
        None => None,
    };
    let result = match (args.backend, args.grad, &mut store) {
        (BackendArg::Interp, false, None) => crate::api::eval(f, &inputs, &hypers)?,
        (backend, grad, store) => {
            let kernel = crate::kernel::Kernel::build(f, &crate::Compiler::new().backend(backend.backend()))
                .map_err(|d| Failure::Diags(Diags(vec![d])))?;
            let mut e = match store {
                Some(store) => kernel.eval_stateful(&inputs, &hypers, store)?,
                None => kernel.eval_with(&inputs, &hypers)?,
            };
            if !grad {
                e.grads.clear();
            }
            e
        }
    };
    if let (Some(dir), Some(store)) = (&args.state, &store) {
        store.save_dir(dir)?;
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::Message(format!("error: cannot create {}: {e}", dir.display())))?;
        data::save_npy(&dir.join("loss.npy"), &Tensor::scalar(result.loss))?;
        for (name, t) in &result.outputs {
            data::save_npy(&dir.join(format!("out_{name}.npy")), t)?;
        }
        for (name, t) in &result.grads {
            data::save_npy(&dir.join(format!("grad_{name}.npy")), t)?;
        }
    }
    let norm = |t: &Tensor| t.to_f64().iter().map(|x| x * x).sum::<f64>().sqrt();
    if args.json {
        let mut obj = serde_json::Map::new();
        obj.insert("loss".into(), serde_json::json!(result.loss));
        if !result.outputs.is_empty() {
            let outs = result
                .outputs
                .iter()
                .map(|(n, t)| (n.clone(), tensor_json(t)))
                .collect();
            obj.insert("outputs".into(), serde_json::Value::Object(outs));
        }
        if args.grad {
            let norms = result
                .grads
                .iter()
                .map(|(n, t)| (n.clone(), serde_json::json!(norm(t))))
                .collect();
            obj.insert("grad_norms".into(), serde_json::Value::Object(norms));
        }
        return Ok(format!("{}\n", serde_json::Value::Object(obj)));
    }
    let mut s = format!("loss = {}\n", fmt_num(result.loss));
    for (n, t) in &result.outputs {
        let vals: Vec<String> = t.to_f64().iter().map(|x| fmt_num(*x)).collect();
        s.push_str(&format!("{n} {:?} = [{}]\n", t.shape, vals.join(", ")));
    }
    for (n, t) in &result.grads {
        s.push_str(&format!("|grad_{n}| = {} (shape {:?})\n", fmt_num(norm(t)), t.shape));
    }
    Ok(s)
}

fn gradcheck(args: &GradcheckArgs) -> Result<String, Failure> {
    let (p, name, inputs, hypers) = prepare(&args.input)?;
    let f = p.module.get(&name).expect("prepare picked a loss of this program");
    let checks = match args.backend {
        BackendArg::Interp => crate::gradcheck::check(f, &inputs, &hypers, args.elements),
        backend => {
            let kernel = crate::kernel::Kernel::build(f, &crate::Compiler::new().backend(backend.backend()))
                .map_err(|d| Failure::Diags(Diags(vec![d])))?;
            let symbolic = kernel.eval_with(&inputs, &hypers)?;
            crate::gradcheck::check_against(f, &symbolic, &inputs, &hypers, args.elements)
        }
    }
    .map_err(eval_failure)?;
    let tol = args.tol.unwrap_or(match args.backend {
        BackendArg::Interp => crate::gradcheck::TOLERANCE,
        _ => crate::gradcheck::F32_TOLERANCE,
    });
    let mut s = String::new();
    let mut worst: f64 = 0.0;
    for c in &checks {
        worst = worst.max(c.max_error);
        s.push_str(&format!(
            "{:<12} max error {:.3e}  ({} elements checked, {} skipped near kinks)\n",
            c.name, c.max_error, c.checked, c.skipped
        ));
    }
    if checks.is_empty() {
        s.push_str("no differentiable inputs\n");
    }
    if worst > tol || worst.is_nan() {
        emit(&s);
        return Err(Failure::Message(format!(
            "error: gradient check failed: error {worst:.3e} above tolerance {:.1e}",
            tol
        )));
    }
    s.push_str(&format!("ok: every error within {:.1e}\n", tol));
    Ok(s)
}

fn fmt_num(x: f64) -> String {
    format!("{x:.10}")
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

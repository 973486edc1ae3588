//! The Cranelift JIT backend: one native function per group of loop nests of the [`Plan`] (the
//! functions compile in parallel; a matrix product's, which runs as sgemm, only when a call first
//! needs it: `Entry::Deferred`), linked into one kernel that computes the loss, every gradient and
//! every output.
//!
//! Numerics: tensors are stored as f32 (integers as i64, conditions as i32 masks); elementwise arithmetic is f32;
//! reductions accumulate in f64 (`sum`, `mean`, `prod`, and `logsumexp` online with a running maximum;
//! vector loops add up to 16 points in f32 before widening), so a JIT result matches the f64
//! interpreter to float32 accuracy (see `tests/jit.rs` for the tolerances). Dot products and matrix
//! products accumulate in f32: the generated dot blocks in f32 lanes, plain matrix products
//! ([`super::loops::Contraction`]) through `matrixmultiply`'s sgemm (gemm.rs), in fixed blocks of rows. Transcendental functions are inline CLIF in vector loops (math.rs, errors measured
//! against f64) and Rust's `f32`/`f64` methods elsewhere, except exp and sigmoid, inline everywhere.
//! Where AVX2 is present, 8-lane row helpers (rows.rs) with the inline algorithms' bits take the rows a
//! 4-lane loop would run as one long dependency chain per vector: a softmax row's maximum and
//! exponentials, and a map whose element is a sigmoid (the lanes store its argument).
//!
//! Safety: the caller binds the call first ([`crate::call::bind`]), so input shapes agree with the
//! dimension sizes and labels lie within their bounds. Subscripts that are not statically within their
//! axis (index arithmetic, unbounded labels) are checked in the generated code, which then stops and
//! reports [`CallError::IndexOutOfRange`]; no generated load or store leaves its buffer.
//!
//! Parallelism: the outermost loop of each group is split into chunks handed to the threads of a kept
//! rayon pool (sized by the work per row, never by the thread count); each element is computed by
//! exactly one call. A group of
//! sums over one index ([`split_members`]) run as fixed chunks of partial sums added in chunk order. So
//! results are bit-identical for any number of threads. A row-private tensor
//! ([`super::loops::Plan::row_private`]) is one row of scratch per worker: each worker's pointer table
//! points the buffer there, and the group's row loop moves its base back by the row's offset, so the
//! ordinary row-major addresses of the current row land in it. A tensor with a host
//! ([`super::loops::Plan::host`]: a later reader of its own elements only) has its host's pointer.
//!
//! Placement: Cranelift's egraph places pure code at its uses and hoists it out of loops, but never moves a
//! load, so the lowering computes before each loop what the bound indices determine
//! (`Lower::hoist_invariants`). The egraph's loop-invariant code motion only works when it visits a
//! loop's body before the loop's exit (in 0.135 visiting the exit first drops the loop from its loop
//! stack): every conditional branch whose first target leaves the loop makes the body its second target,
//! which the egraph visits first. A group's row index is read as the row loop's value, not through a
//! variable, so no inner loop carries it as a block parameter and what it determines is hoisted. A
//! vector constant, which the egraph would hoist to the function's top (live across every loop and helper
//! call, so spilled), is a load in the preheader of the innermost loop that uses it ([`LanePool`]).
//!
//! Loop shape: every loop is rotated (one test before it, one at the bottom of each iteration), and a
//! light body's vector loop runs two vectors per iteration (`UNROLL`): a row's simple passes (its max,
//! a light gradient row, a row sum) are otherwise bound by the front end, one
//! taken branch and the counting per vector, and their speed would hang on where the loop happens to sit
//! in the code (Cranelift does not align loops).
//!
//! Debugging: `LOSSC_DUMP_OPT=1` prints each group's CLIF after Cranelift's optimizations and
//! `LOSSC_DUMP_ASM=1` its machine code, `LOSSC_PROFILE=1` each group's compile time and run time, on
//! stderr; `LOSSC_DUMP_BIN=DIR` writes each group's machine code to `DIR/group<k>.bin` (for `objdump -b
//! binary -m i386:x86-64 -D`, to match `perf` samples against the perf map's addresses).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{self, AbiParam, InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_codegen::isa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module};

mod gemm;
mod math;
mod rows;
mod simd;

use super::interp::Evaluation;
use super::loops::{Contraction, Group, Nest, Plan, split_members};
use crate::call::{Bound, CallError};
use crate::data::Data;
use crate::ir::{Dim, Expr, Function, IndexId, NodeId, ReduceOp, Role, Scalar, TensorRef};
use crate::prims::{Cost, Prim};

/// Why JIT compilation failed (an internal limit or a Cranelift error; never user input).
#[derive(Debug, thiserror::Error)]
#[error("JIT compilation failed: {0}")]
pub struct JitError(String);

/// The signature of every generated nest function.
type NestFn = unsafe extern "C" fn(*const *mut u8, *const i64, *const f64, *mut i64, i64, i64, *mut f32);

/// Elements of the outermost loop per parallel chunk (at least).
const CHUNK: i64 = 16;

/// Columns per tile of an elementwise nest that reads a matrix transposed.
const TILE: i64 = 16;

/// Elements per parallel chunk below which a chunk takes more rows.
const MIN_CHUNK_ELEMENTS: i64 = 4096;

/// How a vector run covers the points its vector loop leaves ([`Lower::vector_run`]).
#[derive(Clone, Copy)]
enum Tail {
    /// Vectors after the loop, the last moved back to end at the run's end (overlapping the one before).
    Overlap,
    /// The element reads the points it stores (kept exponentials, a guest's row): the last vector is
    /// computed before the loop, from the values not yet overwritten, and stored after it.
    LastFirst,
}

/// A group's native function: compiled with the kernel, or, for a matrix product (which runs as sgemm
/// unless a masked product's other operand holds a non-finite element, [`gemm::Product::new`]), by the
/// first call that needs it: most kernels never do, and its Cranelift time is saved.
enum Entry {
    Ready(NestFn),
    Deferred(std::sync::OnceLock<Result<(NestFn, Arc<CodeHolder>), JitError>>),
}

/// How a group runs in one call.
enum Run {
    Product(gemm::Product),
    Native(NestFn),
}

/// Compiled native code for one function. Immutable after compilation (but for deferred entries, each
/// set once), so it is shared across threads.
pub struct Compiled {
    plan: Plan,
    function: Function,
    entries: Vec<Entry>,
    /// Whether kept softmax rows use the row helper (what a deferred entry is compiled with too).
    exp_rows: bool,
    /// Per group of sums: the extent of the index they sum over in parallel parts ([`split_members`]).
    splits: Vec<Option<Dim>>,
    /// Per group, per member: [`row_indices`] (what sizes a group's parallel chunks).
    row_indices: Vec<Vec<Vec<IndexId>>>,
    /// Per group: the matrix product it is, run as sgemm ([`gemm`]) where the call allows.
    products: Vec<Option<Contraction>>,
    /// Per group: whether it sums columns in tiles (`simd::COLUMN_TILE` columns per chunk at least).
    column_sums: Vec<bool>,
    /// Kept from one call to the next: where matrix products copy a right operand they read transposed
    /// ([`gemm::Product::new`]). A fresh allocation of that size per call came from `mmap`, and faulted
    /// in its pages every time. A call that finds it taken (another thread's) allocates its own.
    transposed_right: std::sync::Mutex<Vec<f32>>,
    _code: Arc<CodeHolder>,
}

/// The machine code of a build and the vector constants it loads ([`LanePool`]).
struct CodeHolder {
    module: Option<JITModule>,
    /// Read by the code, never by Rust.
    _lanes: LanePool,
}

// SAFETY: after `finalize_definitions` the module is never mutated; its code and data are read-only and
// executable, and the entry points are plain functions that may be called from any thread.
unsafe impl Send for CodeHolder {}
unsafe impl Sync for CodeHolder {}

impl Drop for CodeHolder {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the last owner of the code is going away; no entry point can be called afterwards.
            unsafe { m.free_memory() };
        }
    }
}

/// Vector constants that generated code loads instead of materializing them with `vconst`: Cranelift's
/// egraph hoists a pure `vconst` to the top of the function, where it stays live across every loop and
/// helper call (all vector registers are caller-saved), so the register allocator spilled dozens of them
/// on entry and reloaded them in the loops. A load stays where it is put: in the preheader of the
/// innermost loop that uses it ([`Lower::lanes_constant`]). Each load reads its own copy, so Cranelift's
/// redundant-load elimination cannot merge loads of different loops into one long-lived value either.
/// Entries are 16-byte aligned and never move (chunks are boxed and never reallocated).
#[derive(Default)]
struct LanePool {
    chunks: Vec<Box<LaneChunk>>,
    used: usize,
}

/// Whole cache lines of constants: no line is shared with data that another thread may write.
#[repr(C, align(64))]
struct LaneChunk([Lanes; LANE_CHUNK]);

const LANE_CHUNK: usize = 256;

#[repr(C, align(16))]
#[derive(Clone, Copy, Default)]
struct Lanes([u32; 4]);

impl LanePool {
    /// A new copy of `lanes`: its chunk's address and its offset there.
    fn add(&mut self, lanes: [u32; 4]) -> (i64, i32) {
        let at = self.used % LANE_CHUNK;
        if at == 0 {
            self.chunks.push(Box::new(LaneChunk([Lanes::default(); LANE_CHUNK])));
        }
        let chunk = &mut self.chunks.last_mut().expect("a chunk was just pushed").0;
        chunk[at] = Lanes(lanes);
        self.used += 1;
        (chunk.as_ptr() as i64, (at * std::mem::size_of::<Lanes>()) as i32)
    }
}

macro_rules! math {
    ($($name:ident: $ty:ty => $body:expr;)*) => {
        $(extern "C" fn $name(x: $ty) -> $ty { let f: fn($ty) -> $ty = $body; f(x) })*
        /// (symbol, address, is_f64) of every math helper the generated code may call.
        fn math_symbols() -> Vec<(&'static str, *const u8, bool)> {
            vec![$((stringify!($name), $name as *const u8, stringify!($ty) == "f64"),)*]
        }
    };
}

math! {
    lossc_logf: f32 => f32::ln;
    lossc_log1pf: f32 => f32::ln_1p;
    lossc_tanhf: f32 => f32::tanh;
    lossc_softplusf: f32 => |x| crate::prims::softplus(x as f64) as f32;
    lossc_expm1f: f32 => f32::exp_m1;
    lossc_atanf: f32 => f32::atan;
    lossc_log: f64 => f64::ln;
}

extern "C" fn lossc_powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}

/// Compiles an optimized function.
pub fn compile(f: &Function) -> Result<Compiled, JitError> {
    build(f, None, rows::available(), Functions::Undeferred)
}

/// `--emit clif`: the Cranelift IR of every nest function, before Cranelift's own optimizations.
pub fn clif(f: &Function) -> Result<String, JitError> {
    let mut text = String::new();
    build(f, Some(&mut text), rows::available(), Functions::All)?;
    Ok(text)
}

/// Which groups' functions a build compiles.
#[derive(Clone, Copy, PartialEq)]
enum Functions {
    All,
    /// All but the matrix products' ([`Entry::Deferred`]).
    Undeferred,
    /// One group's (a deferred entry's).
    Only(usize),
}

/// `exp_rows`: whether kept softmax rows use the 8-lane row helper (rows.rs) where this machine has it.
fn build(
    f: &Function,
    mut clif_text: Option<&mut String>,
    exp_rows: bool,
    functions: Functions,
) -> Result<Compiled, JitError> {
    let err = |e: &dyn std::fmt::Display| JitError(e.to_string());
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| err(&e))?;
    flags.set("is_pic", "false").map_err(|e| err(&e))?;
    flags.set("use_colocated_libcalls", "false").map_err(|e| err(&e))?;
    // The IR verifier costs a third of compile time; debug builds (and so the test suite) keep it.
    let verify = if cfg!(debug_assertions) { "true" } else { "false" };
    flags.set("enable_verifier", verify).map_err(|e| err(&e))?;
    let isa = cranelift_native::builder()
        .map_err(|e| err(&e))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| err(&e))?;
    let fma = isa
        .isa_flags()
        .iter()
        .any(|flag| flag.name == "has_fma" && flag.as_bool() == Some(true));
    // The compile threads hold the ISA while the module declares what the CLIF being built refers to.
    let compile_isa = isa.clone();
    let mut jb = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    for (name, ptr, _) in math_symbols() {
        jb.symbol(name, ptr);
    }
    jb.symbol("lossc_powf", lossc_powf as *const u8);
    jb.symbol("lossc_exp_row", rows::lossc_exp_row as *const u8);
    jb.symbol("lossc_softmax_row", rows::lossc_softmax_row as *const u8);
    jb.symbol("lossc_sigmoid_row", rows::lossc_sigmoid_row as *const u8);
    let mut module = JITModule::new(jb);
    let ptr = module.target_config().pointer_type();

    // Every helper the generated code may call: (symbol, parameter types, result type).
    let mut helpers: Vec<(&'static str, Vec<Type>, Option<Type>)> = math_symbols()
        .into_iter()
        .map(|(name, _, wide)| {
            let t = if wide { types::F64 } else { types::F32 };
            (name, vec![t], Some(t))
        })
        .collect();
    helpers.push(("lossc_powf", vec![types::F32, types::F32], Some(types::F32)));
    helpers.push((
        "lossc_exp_row",
        vec![ptr, ptr, types::I64, types::F32, ptr, ptr],
        Some(types::F64),
    ));
    helpers.push((
        "lossc_softmax_row",
        vec![ptr, ptr, types::I64, ptr, ptr, ptr],
        Some(types::F64),
    ));
    helpers.push(("lossc_sigmoid_row", vec![ptr, types::I64], None));
    let mut imports = std::collections::BTreeMap::new();
    for (name, params, result) in helpers {
        let mut sig = module.make_signature();
        sig.params.extend(params.into_iter().map(AbiParam::new));
        sig.returns.extend(result.map(AbiParam::new));
        let id = module
            .declare_function(name, Linkage::Import, &sig)
            .map_err(|e| err(&e))?;
        imports.insert(name, id);
    }

    let mut plan = Plan::new(f);
    // Exponentials are kept only where the logsumexp runs in two passes (its body is cheap).
    plan.kept_exps.retain(|e| match &f.node(plan.nests[e.lse].body).expr {
        Expr::Reduce { body, .. } => e.plain || cheap(f, *body),
        _ => false,
    });
    let mut sig = module.make_signature();
    for _ in 0..4 {
        sig.params.push(AbiParam::new(ptr));
    }
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(ptr));
    // Build every group's CLIF here (it needs the module's declarations) while the functions built so far
    // compile to machine code on all cores (each is independent), then hand the bytes to the module.
    let mut fctx = FunctionBuilderContext::new();
    let mut lanes = LanePool::default();
    let mut column_sums = vec![false; plan.groups.len()];
    let products: Vec<Option<Contraction>> = plan
        .groups
        .iter()
        .map(|g| plan.contractions.iter().find(|c| g.members == [c.nest]).cloned())
        .collect();
    let built: Vec<usize> = (0..plan.groups.len())
        .filter(|&k| match functions {
            Functions::All => true,
            Functions::Undeferred => products[k].is_none(),
            Functions::Only(only) => k == only,
        })
        .collect();
    let mut build_group = |k: usize| -> Result<(FuncId, ir::Function), String> {
        let group = &plan.groups[k];
        let members = plan.members(group);
        let id = module
            .declare_function(&format!("group{k}"), Linkage::Local, &sig)
            .map_err(|e| e.to_string())?;
        let mut func = ir::Function::with_name_signature(ir::UserFuncName::user(0, id.as_u32()), sig.clone());
        {
            let mut b = FunctionBuilder::new(&mut func, &mut fctx);
            let mut refs = HashMap::new();
            for (name, fid) in &imports {
                refs.insert(*name, module.declare_func_in_func(*fid, b.func));
            }
            let mut l = Lower::new(f, &plan, &members, &mut b, &mut lanes, refs, fma);
            l.exp_rows = exp_rows;
            l.group(group, &members);
            column_sums[k] = l.column_tiles;
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        if let Some(text) = clif_text.as_deref_mut() {
            let names: Vec<&str> = members.iter().map(|m| f.tensor(m.tensor).name.as_str()).collect();
            text.push_str(&format!(
                "; group {k}: {} {}\n{}\n",
                names.join(", "),
                if members[0].parallel { "(parallel)" } else { "" },
                func.display()
            ));
        }
        Ok((id, func))
    };
    let machine_code = compile_all(&*compile_isa, &built, &mut build_group).map_err(|e| err(&e))?;
    for code in &machine_code {
        module
            .define_function_bytes(code.id, code.alignment, &code.bytes, &code.relocs)
            .map_err(|e| err(&format!("{e:?}")))?;
    }
    module.finalize_definitions().map_err(|e| err(&e))?;
    let mut entries: Vec<Entry> = (0..plan.groups.len())
        .map(|_| Entry::Deferred(std::sync::OnceLock::new()))
        .collect();
    for (k, code) in built.iter().zip(&machine_code) {
        let p = module.get_finalized_function(code.id);
        // SAFETY: every nest function was defined with exactly the `NestFn` signature above.
        entries[*k] = Entry::Ready(unsafe { std::mem::transmute::<*const u8, NestFn>(p) });
    }
    let row_indices = plan
        .groups
        .iter()
        .map(|g| plan.members(g).iter().map(|m| row_indices(f, m)).collect())
        .collect();
    let splits = plan
        .groups
        .iter()
        .map(|g| split_members(f, &plan.members(g)).map(|(_, sums)| f.index(sums[0].0).range.clone()))
        .collect();
    Ok(Compiled {
        plan,
        function: f.clone(),
        entries,
        exp_rows,
        splits,
        row_indices,
        products,
        column_sums,
        transposed_right: Default::default(),
        _code: Arc::new(CodeHolder {
            module: Some(module),
            _lanes: lanes,
        }),
    })
}

/// The buffers that lowering `members` reads or writes: their own, the inputs and tensors their elements
/// load, and the rows and factors of the kept exponentials they write or read (loops::KeptExps).
fn used_buffers(f: &Function, plan: &Plan, members: &[&Nest]) -> Vec<bool> {
    let mut used = vec![false; plan.buffers.len()];
    for nest in members {
        used[plan.buffer_of(f, TensorRef::Def(nest.tensor))] = true;
    }
    for e in &plan.kept_exps {
        let (lse, consumer) = (plan.nests[e.lse].tensor, plan.nests[e.consumer].tensor);
        if members.iter().any(|m| m.tensor == lse || m.tensor == consumer) {
            used[plan.kept_row(f, e)] = true;
            if let Some(factors) = e.factors {
                used[factors] = true;
            }
        }
    }
    let bodies: Vec<NodeId> = members.iter().map(|m| m.body).collect();
    for n in f.reachable(&bodies) {
        if let Expr::Load { tensor, .. } = &f.node(n).expr {
            used[plan.buffer_of(f, *tensor)] = true;
        }
    }
    used
}

/// Points of a split sum per parallel part.
const SPLIT_CHUNK: i64 = 1 << 14;

/// How many vectors one iteration of a [`light`] body's vector loop handles (the rest of the row is left
/// to the scalar tail).
const UNROLL: i64 = 2;

/// Whether a reduction body is cheap enough to evaluate twice (for a two-pass logsumexp): arithmetic,
/// comparison and selection steps.
fn cheap(f: &Function, body: NodeId) -> bool {
    few_steps(f, body, 12, Cost::Arithmetic)
}

/// Whether a body is cheap enough to compute twice for a two-pass arg-max: [`cheap`]'s steps, `relu`,
/// `min`, `max` and `abs`.
fn light(f: &Function, body: NodeId) -> bool {
    few_steps(f, body, 16, Cost::Piecewise)
}

/// At most `limit` nodes, no reduction, and no primitive costlier than `most`.
fn few_steps(f: &Function, body: NodeId, limit: usize, most: Cost) -> bool {
    few_steps_reading(f, body, limit, most, &HashSet::new())
}

/// [`few_steps`], where the nodes of `read` are read from memory (one step each, their operands none).
fn few_steps_reading(f: &Function, body: NodeId, limit: usize, most: Cost, read: &HashSet<NodeId>) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![body];
    while let Some(n) = stack.pop() {
        if !seen.insert(n) || read.contains(&n) {
            continue;
        }
        match &f.node(n).expr {
            Expr::Reduce { .. } => return false,
            Expr::Prim { prim, .. } if prim.cost() > most => return false,
            expr => stack.extend(expr.operands()),
        }
    }
    seen.len() <= limit
}

/// One function's machine code, ready for [`Module::define_function_bytes`].
struct MachineCode {
    id: FuncId,
    alignment: u64,
    bytes: Vec<u8>,
    relocs: Vec<cranelift_module::ModuleReloc>,
}

/// Compiles the functions of `groups` on all available cores, in that order. `LOSSC_DUMP_OPT` and
/// `LOSSC_DUMP_ASM` print each one's optimized CLIF and machine code.
fn compile_all(
    isa: &dyn isa::TargetIsa,
    groups: &[usize],
    build: &mut dyn FnMut(usize) -> Result<(FuncId, ir::Function), String>,
) -> Result<Vec<MachineCode>, String> {
    let count = groups.len();
    let (dump_opt, dump_asm) = (
        std::env::var_os("LOSSC_DUMP_OPT").is_some(),
        std::env::var_os("LOSSC_DUMP_ASM").is_some(),
    );
    let profile = std::env::var_os("LOSSC_PROFILE").is_some();
    let compile = |k: usize, id: FuncId, func: ir::Function| -> Result<MachineCode, String> {
        let started = std::time::Instant::now();
        let instructions = func.dfg.num_insts();
        let mut ctx = cranelift_codegen::Context::for_function(func);
        ctx.set_disasm(dump_asm);
        ctx.compile(isa, &mut Default::default())
            .map_err(|e| format!("{:?}", e.inner))?;
        if profile {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            eprintln!("compile group{k:<3} {instructions:>6} instructions {ms:>8.3} ms");
        }
        let code = ctx.compiled_code().ok_or("no machine code")?;
        let alignment = (code.buffer.alignment as u64)
            .max(isa.function_alignment().minimum as u64)
            .max(isa.symbol_alignment());
        let bytes = code.code_buffer().to_vec();
        if let Some(dir) = std::env::var_os("LOSSC_DUMP_BIN") {
            // A debugging aid only: a failed write is not the kernel's error.
            let _ = std::fs::write(std::path::Path::new(&dir).join(format!("group{k}.bin")), &bytes);
        }
        let relocs = code
            .buffer
            .relocs()
            .iter()
            .map(|r| cranelift_module::ModuleReloc::from_mach_reloc(r, &ctx.func, id))
            .collect();
        if dump_opt {
            eprintln!("== group{k}\n{}", ctx.func.display());
        }
        if dump_asm && let Some(vcode) = ctx.compiled_code().and_then(|c| c.vcode.as_ref()) {
            eprintln!("== group{k}\n{vcode}");
        }
        Ok(MachineCode {
            id,
            alignment,
            bytes,
            relocs,
        })
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count);
    if threads <= 1 || dump_opt || dump_asm {
        return groups
            .iter()
            .map(|&k| {
                let (id, func) = build(k)?;
                compile(k, id, func)
            })
            .collect();
    }
    // Each thread takes the largest function built so far when it is done with one (a function's compile
    // time is not proportional to its size, and one large function may take as long as all the rest), or
    // waits for the next to be built. The building thread is one of them once it has built them all.
    struct Queue {
        built: Vec<(usize, FuncId, ir::Function)>,
        finished: bool,
    }
    let queue = std::sync::Mutex::new(Queue {
        built: Vec::new(),
        finished: false,
    });
    let ready = std::sync::Condvar::new();
    let lock = || queue.lock().unwrap_or_else(|e| e.into_inner());
    let next = || {
        let mut q = lock();
        loop {
            let largest = (0..q.built.len()).max_by_key(|j| q.built[*j].2.dfg.num_insts());
            if let Some(j) = largest {
                return Some(q.built.swap_remove(j));
            }
            if q.finished {
                return None;
            }
            q = ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    };
    let compile = &compile;
    let mut done: Vec<(usize, Result<MachineCode, String>)> = std::thread::scope(|scope| {
        let work = || {
            std::iter::from_fn(next)
                .map(|(k, id, func)| (k, compile(k, id, func)))
                .collect::<Vec<_>>()
        };
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        // The threads stop waiting once every function is built, or the building stops (even by a panic,
        // which would otherwise leave them waiting and the scope joining them forever).
        struct Finished<'q>(&'q std::sync::Mutex<Queue>, &'q std::sync::Condvar);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.lock().unwrap_or_else(|e| e.into_inner()).finished = true;
                self.1.notify_all();
            }
        }
        let finished = Finished(&queue, &ready);
        let mut all = Vec::new();
        for &k in groups {
            match build(k) {
                Ok((id, func)) => lock().built.push((k, id, func)),
                Err(e) => {
                    all.push((k, Err(e)));
                    break;
                }
            }
            ready.notify_one();
        }
        drop(finished);
        all.extend(work());
        for h in handles {
            match h.join() {
                Ok(part) => all.extend(part),
                Err(_) => all.push((usize::MAX, Err("a compiler thread panicked".to_string()))),
            }
        }
        all
    });
    // Group numbers increase along `groups`.
    done.sort_by_key(|(k, _)| *k);
    done.into_iter().map(|(_, code)| code).collect()
}

/// The indices whose extents multiply into the points one row of a nest visits: its inner head indices
/// and the indices its reductions run over (computed once per kernel; sized per call).
fn row_indices(f: &Function, nest: &Nest) -> Vec<IndexId> {
    let mut indices: Vec<IndexId> = nest.head.iter().skip(1).map(|(i, _)| *i).collect();
    for n in f.reachable(&[nest.body]) {
        if let Expr::Reduce { indices: r, .. } = &f.node(n).expr {
            indices.extend(r.iter().copied());
        }
    }
    indices
}

/// The worker pool for `threads` threads (`None` for one: the calling thread runs everything). Pools are
/// started on first use and kept for the process: a kernel runs many times, and starting threads for
/// each group costs more than a small group's work.
fn pool(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
    static POOLS: std::sync::Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>> = std::sync::Mutex::new(Vec::new());
    if threads <= 1 {
        return None;
    }
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(n, _)| *n == threads) {
        return Some(p.clone());
    }
    let p = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().ok()?);
    pools.push((threads, p.clone()));
    Some(p)
}

/// Partial-sum slots that threads may share: each call writes its own slot.
#[derive(Clone, Copy)]
struct SharedParts(*mut f32);
// SAFETY: every call writes only the slot of its chunk.
unsafe impl Send for SharedParts {}
unsafe impl Sync for SharedParts {}

/// A table of raw buffer pointers that threads may share: each writes a disjoint range of elements.
#[derive(Clone, Copy)]
struct Shared(*const *mut u8);
// SAFETY: threads only read inputs and earlier tensors, and write disjoint chunks of the current one (and
// row-private rows of their own worker's scratch).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Compiled {
    pub fn function(&self) -> &Function {
        &self.function
    }

    /// Runs the kernel on a bound call with `threads` threads (1 = the calling thread only).
    pub fn run(&self, call: &Bound, threads: usize) -> Result<Evaluation, CallError> {
        let mut buffers = self.buffers(call);
        self.execute(&mut buffers, threads)?;
        Ok(self.collect(&buffers))
    }

    /// How many groups have no native code yet: matrix products whose function no call has needed
    /// (`Entry::Deferred`).
    pub fn uncompiled_groups(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::Deferred(cell) if cell.get().is_none()))
            .count()
    }

    /// Group `k`'s deferred function ([`Entry::Deferred`]), compiled by the first call that needs it.
    fn deferred(
        &self,
        k: usize,
        cell: &std::sync::OnceLock<Result<(NestFn, Arc<CodeHolder>), JitError>>,
    ) -> Result<NestFn, CallError> {
        cell.get_or_init(|| {
            let one = build(&self.function, None, self.exp_rows, Functions::Only(k))?;
            match one.entries[k] {
                Entry::Ready(native) => Ok((native, one._code.clone())),
                Entry::Deferred(_) => Err(JitError(format!("group {k} was not compiled"))),
            }
        })
        .as_ref()
        .map(|(native, _)| *native)
        .map_err(|e| CallError::Compile(e.to_string()))
    }

    /// Allocates every buffer and converts the inputs to their native element types.
    pub fn buffers(&self, call: &Bound) -> Buffers {
        let sizes = call.sizes.clone();
        let mut stores: Vec<Store> = Vec::with_capacity(self.plan.buffers.len());
        for (k, buf) in self.plan.buffers.iter().enumerate() {
            let len: usize = buf.shape.iter().map(|d| d.eval(&sizes) as usize).product();
            stores.push(match buf.of {
                TensorRef::Input(_) => match &call.inputs[k].data {
                    Data::Float(v) => Store::F(v.iter().map(|x| *x as f32).collect()),
                    Data::Int(v) => Store::I(v.clone()),
                },
                // One row per running call, given by `execute`.
                TensorRef::Def(_) if self.plan.row_private[k] || self.plan.host[k].is_some() => Store::F(Vec::new()),
                TensorRef::Def(_) => match buf.scalar {
                    Scalar::Float => Store::F(vec![0.0; len]),
                    Scalar::Int => Store::I(vec![0; len]),
                    Scalar::Bool => Store::C(vec![0; len]),
                },
            });
        }
        Buffers {
            stores,
            sizes,
            hypers: call.hypers.clone(),
        }
    }

    /// Runs the native code over prepared buffers (what `lossc bench` times).
    pub fn execute(&self, buffers: &mut Buffers, threads: usize) -> Result<(), CallError> {
        let f = &self.function;
        let sizes = &buffers.sizes;
        let hypers = &buffers.hypers;
        let mut ptrs: Vec<*mut u8> = buffers
            .stores
            .iter_mut()
            .map(|s| match s {
                Store::F(v) => v.as_mut_ptr() as *mut u8,
                Store::I(v) => v.as_mut_ptr() as *mut u8,
                Store::C(v) => v.as_mut_ptr() as *mut u8,
            })
            .collect();
        // A tensor that lives in its host's buffer (loops::Plan::host) is addressed as the host.
        for (guest, host) in self.plan.host.iter().enumerate() {
            if let Some(host) = host {
                ptrs[guest] = ptrs[*host];
            }
        }
        let profile = std::env::var_os("LOSSC_PROFILE").is_some();
        // Where a matrix product copies a right operand it reads transposed (gemm::Product::new); reused
        // by the call's products, each done before the next starts, and kept for the next call.
        let mut transposed_right = self
            .transposed_right
            .try_lock()
            .map(|mut kept| std::mem::take(&mut *kept))
            .unwrap_or_default();
        let groups = self
            .plan
            .groups
            .iter()
            .zip(&self.entries)
            .zip(&self.splits)
            .zip(&self.row_indices)
            .zip(&self.products)
            .zip(&self.column_sums);
        for (k, (((((group, entry), split), row_indices), product), column_sum)) in groups.enumerate() {
            let started = std::time::Instant::now();
            let members = self.plan.members(group);
            let nest = members[0];
            let out = self.plan.buffer_of(f, TensorRef::Def(nest.tensor));
            // SAFETY: `ptrs` are the buffers of a bound call of this plan.
            let product = product
                .as_ref()
                .and_then(|c| unsafe { gemm::Product::new(c, out, &ptrs, sizes, &mut transposed_right) });
            // The product as sgemm, or the group's native function (compiled now where it was deferred).
            let run = match (product, entry) {
                (Some(p), _) => Run::Product(p),
                (None, Entry::Ready(native)) => Run::Native(*native),
                (None, Entry::Deferred(cell)) => Run::Native(self.deferred(k, cell)?),
            };
            let (outer, chunk) = match split {
                // A split sum: chunks of its index, each adding into its own partial slot.
                Some(extent) => (extent.eval(sizes).max(0), SPLIT_CHUNK),
                None if let Run::Product(p) = &run => (p.rows(), p.block_rows()),
                None => {
                    let outer = nest.head.first().map_or(1, |(_, d)| d.eval(sizes).max(0));
                    // Enough work per call that the call's setup is noise: a chunk holds CHUNK rows, or
                    // more where rows are light (an elementwise vector's rows are single elements).
                    let row = row_indices
                        .iter()
                        .map(|member| {
                            member
                                .iter()
                                .map(|i| f.index(*i).range.eval(sizes).max(1))
                                .fold(1i64, i64::saturating_mul)
                        })
                        .max()
                        .unwrap_or(1);
                    let chunk = CHUNK.max(MIN_CHUNK_ELEMENTS / row.max(1));
                    // A column sum: a tile's width per thread (each column sums in the same order in any
                    // chunk, so the chunks may depend on the threads; whole blocks of columns keep every
                    // column but the last few in the lanes).
                    let chunk = match *column_sum {
                        true => {
                            let per_thread = (outer as u64).div_ceil(threads.max(1) as u64) as i64;
                            let block = simd::COLUMN_BLOCK_COLUMNS as u64;
                            let chunk = chunk.max(per_thread.min(simd::COLUMN_TILE)) as u64;
                            (chunk.div_ceil(block) * block) as i64
                        }
                        false => chunk,
                    };
                    (outer, chunk)
                }
            };
            let chunks: Vec<(i64, i64)> = (0..outer)
                .step_by(chunk as usize)
                .map(|lo| (lo, (lo + chunk).min(outer)))
                .collect();
            // Row-private buffers (loops::Plan::row_private): one row of scratch per worker, each worker's
            // calls reading a pointer table that points there.
            let private: Vec<(usize, usize)> = self
                .plan
                .private_buffers(f, group)
                .into_iter()
                .map(|k| {
                    let buf = &self.plan.buffers[k];
                    let elements: i64 = buf.shape[1..].iter().map(|d| d.eval(sizes).max(0)).product();
                    let bytes = elements as usize * Lower::elem_type(buf.scalar).bytes() as usize;
                    (k, bytes.div_ceil(64) * 8)
                })
                .collect();
            let per_worker: usize = private.iter().map(|(_, words)| words).sum();
            // Without row-private buffers every call reads the one table of the buffers.
            let workers = if private.is_empty() { 0 } else { threads.max(1) + 1 };
            let mut scratch = vec![0u64; per_worker * workers];
            let pointer_tables: Vec<Vec<*mut u8>> = (0..workers)
                .map(|w| {
                    let mut table = ptrs.clone();
                    let mut at = w * per_worker;
                    for &(k, words) in &private {
                        table[k] = scratch[at..].as_mut_ptr() as *mut u8;
                        at += words;
                    }
                    table
                })
                .collect();
            let tables: Vec<Shared> = match &pointer_tables[..] {
                [] => vec![Shared(ptrs.as_ptr())],
                some => some.iter().map(|t| Shared(t.as_ptr())).collect(),
            };
            let per_chunk = if split.is_some() { members.len() } else { 1 };
            let mut partials = vec![0f32; chunks.len().max(1) * per_chunk];
            let slots = SharedParts(partials.as_mut_ptr());
            let numbered: Vec<(usize, (i64, i64))> = chunks.iter().copied().enumerate().collect();
            // `worker`: which scratch rows the calls use (0 on the calling thread, 1 + a pool thread's index).
            let run_chunks = |worker: usize, chunks: &[(usize, (i64, i64))]| -> [i64; 3] {
                let mut err = [0i64; 3];
                for &(c, (lo, hi)) in chunks {
                    let entry = match &run {
                        Run::Native(entry) => entry,
                        Run::Product(p) => {
                            // SAFETY: this chunk's rows are written by no other call.
                            unsafe { p.block(lo, hi) };
                            continue;
                        }
                    };
                    let (s, slots) = (tables[worker.min(tables.len() - 1)], slots);
                    // SAFETY: buffers match the plan (bound call), the code checks every subscript that is not
                    // statically in range, and this chunk's elements (or partial slot) are written by no
                    // other call.
                    unsafe {
                        entry(
                            s.0,
                            sizes.as_ptr(),
                            hypers.as_ptr(),
                            err.as_mut_ptr(),
                            lo,
                            hi,
                            slots.0.add(c * per_chunk),
                        )
                    };
                    if err[0] != 0 {
                        break;
                    }
                }
                err
            };
            let parallel = nest.parallel || split.is_some();
            let errs: Vec<[i64; 3]> = match pool(threads) {
                Some(pool) if numbered.len() > 1 && parallel => pool.install(|| {
                    use rayon::prelude::*;
                    numbered
                        .par_iter()
                        .map(|c| {
                            run_chunks(
                                rayon::current_thread_index().map_or(0, |i| 1 + i),
                                std::slice::from_ref(c),
                            )
                        })
                        .collect()
                }),
                _ => vec![run_chunks(0, &numbered)],
            };
            if let Some((first, _)) = split.as_ref().and_then(|_| split_members(f, &members)) {
                for (slot, member) in members.iter().enumerate().skip(first) {
                    // The parts in chunk order, in f64.
                    let total: f64 = (0..chunks.len()).map(|c| partials[c * per_chunk + slot] as f64).sum();
                    let k = self.plan.buffer_of(f, TensorRef::Def(member.tensor));
                    // SAFETY: a rank-0 float buffer holds one f32; no thread runs now.
                    unsafe { *(ptrs[k] as *mut f32) = total as f32 };
                }
            }
            if profile {
                let names: Vec<&str> = members.iter().map(|m| f.tensor(m.tensor).name.as_str()).collect();
                eprintln!(
                    "{:<24} {:>9.3} ms",
                    names.join(", "),
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            if let Some(e) = errs.iter().find(|e| e[0] != 0) {
                return Err(super::loops::index_error(f, sizes, e[0], e[1], e[2]));
            }
        }
        if let Ok(mut kept) = self.transposed_right.try_lock()
            && kept.capacity() < transposed_right.capacity()
        {
            *kept = transposed_right;
        }
        Ok(())
    }

    /// The loss, outputs and gradients held in executed buffers, as f64 tensors.
    pub fn collect(&self, buffers: &Buffers) -> Evaluation {
        self.plan.evaluation(&self.function, &buffers.sizes, |k| match &buffers.stores[k] {
            Store::F(v) => v.iter().map(|x| *x as f64).collect(),
            Store::I(v) => v.iter().map(|x| *x as f64).collect(),
            Store::C(v) => v.iter().map(|x| (*x != 0) as u8 as f64).collect(),
        })
    }

    /// Bytes read from inputs plus bytes of gradients written: the memory floor of one call.
    pub fn floor_bytes(&self, sizes: &[i64]) -> u64 {
        let f = &self.function;
        let mut bytes = 0u64;
        for (k, buf) in self.plan.buffers.iter().enumerate() {
            let len: u64 = buf.shape.iter().map(|d| d.eval(sizes).max(0) as u64).product();
            let elem = if buf.scalar == Scalar::Float { 4 } else { 8 };
            let counted = match buf.of {
                TensorRef::Input(_) => true,
                // A gradient's own buffer (not a scratch row kept for it).
                TensorRef::Def(t) => matches!(f.tensor(t).role, Role::Grad(_)) && k == self.plan.buffer_of(f, buf.of),
            };
            if counted || k < f.inputs.len() {
                bytes += len * elem;
            }
        }
        bytes
    }
}

/// Element storage of one buffer.
enum Store {
    F(Vec<f32>),
    I(Vec<i64>),
    /// Conditions: -1 (all bits set, a lane mask) where true, 0 where false.
    C(Vec<i32>),
}

/// The buffers of one call: inputs converted, every tensor allocated.
pub struct Buffers {
    stores: Vec<Store>,
    sizes: Vec<i64>,
    hypers: Vec<f64>,
}

/// Where a logsumexp keeps its exponentials ([`super::loops::KeptExps`]).
struct KeepExps {
    /// The consumer's `exp` node.
    exp: NodeId,
    /// The consumer's buffer and its row length.
    buffer: usize,
    length: Dim,
    /// The logsumexp's row index (the consumer's row).
    row: IndexId,
    /// The consumer runs in a later group: the buffer to leave the row's factor in (loops::KeptExps).
    factors: Option<usize>,
    /// A plain sum of exponentials: the row holds them as they are (loops::KeptExps::plain).
    plain: bool,
}

/// A one-hot term `select(k == at, value, 0)` of a row's element: its lanes compute `rest` (or the element
/// with `term` as 0), and `value` is added at `k = at` afterwards.
#[derive(Clone, Copy)]
struct OneHot {
    term: NodeId,
    at: NodeId,
    value: NodeId,
    rest: Option<NodeId>,
}

/// What a kept exponential read from its row is multiplied by: the factor its logsumexp computed in this
/// group, or the one it left in a buffer of factors (at the consumer's row `row`).
#[derive(Clone, Copy)]
enum KeptFactor {
    Computed(Value),
    Left { factors: usize, row: IndexId },
}

/// What a reduction pass does with one vector step: the body's lanes, the mask's lanes (if any) and how
/// many points the step covers.
type VectorStep<'c, 'a, 'b> = dyn FnMut(&mut Lower<'a, 'b>, Value, Option<Value>, i64) + 'c;

/// Lowers one group of nests to CLIF.
struct Lower<'a, 'b> {
    f: &'a Function,
    plan: &'a Plan,
    b: &'a mut FunctionBuilder<'b>,
    /// Where vector constants are loaded from ([`Self::lanes_constant`]).
    lanes: &'a mut LanePool,
    /// The loops around the current position, outermost first: each one's entry branch (the end of its
    /// preheader) and the vector constants loaded there ([`Self::lanes_constant`]).
    preheaders: Vec<(ir::Inst, LoadedLanes)>,
    ptr: Type,
    math: HashMap<&'static str, ir::FuncRef>,
    vars: HashMap<IndexId, Variable>,
    /// Indices bound to one value for a whole group row (each member's row index): read as that value, not
    /// through a variable, so no loop inside the row carries them as a block parameter and Cranelift
    /// hoists what depends on them out of the row's loops.
    fixed: HashMap<IndexId, Value>,
    /// Values already computed, per dominance scope (a loop body or a branch opens a scope).
    frames: Vec<HashMap<NodeId, Value>>,
    /// The function's table of buffer pointers (its first parameter).
    table: Value,
    /// Each buffer's base address, loaded on entry where the nest uses the buffer.
    bases: Vec<Option<Value>>,
    sizes: Vec<Value>,
    hypers: Value,
    err: Value,
    lo: Value,
    hi: Value,
    /// When the nest's innermost loop is vectorized: its buffer and element.
    vector_head: Option<(usize, NodeId)>,
    /// The indices the loops around the current position bind, outermost first.
    bound: Vec<IndexId>,
    /// Whether the target has fused multiply-add (else `a * b + c` is two rounded operations).
    fma: bool,
    /// Whether kept softmax rows take their exponentials from the 8-lane row helper (rows.rs).
    exp_rows: bool,
    /// Where a split sum's part goes (the function's last parameter).
    partial: Value,
    /// A split sum's range of its index, taken by the first reduction pass.
    split_bounds: Option<(Value, Value)>,
    /// While lowering a softmax row's logsumexp ([`super::loops::KeptExps`]): where the two-pass logsumexp writes its
    /// exponentials.
    keep_exps: Option<KeepExps>,
    /// `exp` nodes whose values wait in their consumer's row (its buffer), with the factor (1 / sum, or
    /// 1 for a non-finite maximum) that turns a kept exponential into the node's value.
    kept_exps: HashMap<NodeId, (usize, KeptFactor)>,
    /// Earlier members of the current row-fused group that are a max or min over one index (their row is
    /// done): an arg-max of the same body at the same row reads its extreme value from there.
    extremes: Vec<KnownExtreme>,
    /// In a row-fused group's row: the next row of the matrix input it streams and of the first matrix it
    /// writes (not row-private), for the row helper to prefetch.
    rows_ahead: [Option<Value>; 2],
    /// Whether the function sums columns in tiles ([`simd::COLUMN_TILE`]).
    column_tiles: bool,
}

/// The vector constants loaded in one loop's preheader, by type and lanes ([`Lower::lanes_constant`]).
type LoadedLanes = HashMap<(Type, [u32; 4]), Value>;

/// A nest `r[t] = max[k] B(t, k)` (or `min`) of the current group, whose value at the current row is known.
struct KnownExtreme {
    max: bool,
    row: IndexId,
    index: IndexId,
    body: NodeId,
    buffer: usize,
}

fn flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

impl<'a, 'b> Lower<'a, 'b> {
    fn new(
        f: &'a Function,
        plan: &'a Plan,
        members: &[&Nest],
        b: &'a mut FunctionBuilder<'b>,
        lanes: &'a mut LanePool,
        math: HashMap<&'static str, ir::FuncRef>,
        fma: bool,
    ) -> Self {
        // The first parameter is the table of buffer pointers.
        let ptr = b.func.signature.params[0].value_type;
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let params = b.block_params(entry).to_vec();
        let (bufs, sizes_ptr) = (params[0], params[1]);
        let step = ptr.bytes() as usize;
        // Only the buffers this nest reads or writes: a plan may hold hundreds.
        let used = used_buffers(f, plan, members);
        let bases = (0..plan.buffers.len())
            .map(|k| used[k].then(|| b.ins().load(ptr, flags(), bufs, (k * step) as i32)))
            .collect();
        let sizes = (0..f.dims.len())
            .map(|k| b.ins().load(types::I64, flags(), sizes_ptr, (k * 8) as i32))
            .collect();
        Lower {
            f,
            plan,
            b,
            lanes,
            preheaders: Vec::new(),
            ptr,
            math,
            vars: HashMap::new(),
            fixed: HashMap::new(),
            frames: vec![HashMap::new()],
            table: bufs,
            bases,
            sizes,
            hypers: params[2],
            err: params[3],
            lo: params[4],
            hi: params[5],
            vector_head: None,
            bound: Vec::new(),
            fma,
            keep_exps: None,
            kept_exps: HashMap::new(),
            extremes: Vec::new(),
            rows_ahead: [None; 2],
            partial: params[6],
            split_bounds: None,
            exp_rows: false,
            column_tiles: false,
        }
    }

    /// A group's function: a lone nest loops over its whole head (the outermost over `lo..hi`); fused
    /// members share one loop over `lo..hi` of their outer index and run their other loops in turn.
    fn group(&mut self, group: &Group, members: &[&Nest]) {
        if let Some((first, sums)) = split_members(self.f, members) {
            if first == 1 {
                // The leading map's part first (`lo..hi` of its index, as the sums').
                self.softmax_member(group, group.members[0], members[0], 0);
            }
            // Each member's part goes to its own slot.
            let slot_offset = |slot: usize| 4 * (first + slot) as i32;
            let together: Option<Vec<(IndexId, NodeId)>> = sums
                .iter()
                .map(|&(i, mask, body)| {
                    (mask.is_none() && cheap(self.f, body) && self.vectorizable(body, i)).then_some((i, body))
                })
                .collect();
            if let Some(together) = together.filter(|t| t.len() > 1) {
                // Cheap unmasked sums: one loop over this chunk computes every term (shared loads).
                let extent = self.f.index(together[0].0).range.clone();
                let extent = self.dim(&extent);
                let hi = self.b.ins().smin(self.hi, extent);
                let parts = self.sums_in_one_loop(&together, self.lo, hi);
                for (slot, part) in parts.into_iter().enumerate() {
                    self.b.ins().store(flags(), part, self.partial, slot_offset(slot));
                }
            } else {
                // Each sum's part over this chunk (which stays in cache from one sum to the next).
                for (slot, (i, mask, body)) in sums.into_iter().enumerate() {
                    let extent = self.f.index(i).range.clone();
                    let extent = self.dim(&extent);
                    let hi = self.b.ins().smin(self.hi, extent);
                    self.split_bounds = Some((self.lo, hi));
                    let part = self.reduce(ReduceOp::Sum, &[i], mask, body);
                    self.b.ins().store(flags(), part, self.partial, slot_offset(slot));
                }
            }
        } else if let [nest] = members {
            self.softmax_member(group, group.members[0], nest, 0);
        } else {
            let (outer, extent) = members[0].head[0].clone();
            let extent = self.dim(&extent);
            let end = self.b.ins().smin(self.hi, extent);
            let lo = self.lo;
            // A row-private buffer's pointer is one row of this call's scratch: its base moves back by the
            // row's offset so that the usual row-major addresses of row `t` land in that one row.
            let private: Vec<(usize, Value, Value)> = self
                .plan
                .private_buffers(self.f, group)
                .into_iter()
                .map(|k| {
                    let row_bytes = self.row_bytes(k);
                    (
                        k,
                        self.bases[k].expect("a member's buffer is loaded on entry"),
                        row_bytes,
                    )
                })
                .collect();
            let streams = self.streamed_matrices(members);
            let used: HashMap<usize, Vec<bool>> = group
                .members
                .iter()
                .zip(members)
                .map(|(index, m)| (*index, used_buffers(self.f, self.plan, &[m])))
                .collect();
            self.for_range(outer, lo, end, &mut |l: &mut Self| {
                let row = l.index(outer);
                let next = l.b.ins().iadd_imm_s(row, 1);
                l.rows_ahead = streams.map(|s| s.map(|(k, row_bytes)| l.row_address(k, next, row_bytes)));
                for &(k, scratch, row_bytes) in &private {
                    l.bases[k] = Some(l.moved_back(scratch, row, row_bytes));
                }
                l.extremes.clear();
                for (index, m) in group.members.iter().zip(members) {
                    let own = m.head[0].0;
                    l.fixed.insert(own, row);
                    l.bound.push(own);
                    l.frames.push(HashMap::new());
                    let bases = l.bases.clone();
                    l.reload_bases(&used[index], &private, row);
                    l.softmax_member(group, *index, m, 1);
                    l.bases = bases;
                    l.frames.pop();
                    l.bound.pop();
                    l.fixed.remove(&own);
                    if let (
                        Expr::Reduce {
                            op: op @ (ReduceOp::Max | ReduceOp::Min),
                            indices,
                            mask: None,
                            body,
                        },
                        [(row, _)],
                    ) = (&l.f.node(m.body).expr, &m.head[..])
                        && let [index] = indices[..]
                    {
                        l.extremes.push(KnownExtreme {
                            max: *op == ReduceOp::Max,
                            row: *row,
                            index,
                            body: *body,
                            buffer: l.plan.buffer_of(l.f, TensorRef::Def(m.tensor)),
                        });
                    }
                }
            });
            for (k, scratch, _) in private {
                self.bases[k] = Some(scratch);
            }
            self.rows_ahead = [None; 2];
        }
        self.kept_exps.clear();
        self.b.ins().return_(&[]);
    }

    /// Loads the pointers of the buffers `used` (of those the function loaded on entry) again, a
    /// row-private one moved back by `row`'s offset as on entry to the row: at the start of a member of a
    /// row-fused group, so that no pointer lives from one member's loops across another's (in a large
    /// group such pointers were spilled, and re-stored on the back edge of every loop between).
    fn reload_bases(&mut self, used: &[bool], private: &[(usize, Value, Value)], row: Value) {
        let step = self.ptr.bytes() as i32;
        let loaded: Vec<usize> = (0..self.bases.len())
            .filter(|&k| used[k] && self.bases[k].is_some())
            .collect();
        for k in loaded {
            let base = self.b.ins().load(self.ptr, flags(), self.table, k as i32 * step);
            self.bases[k] = Some(match private.iter().find(|p| p.0 == k) {
                Some(&(_, _, row_bytes)) => self.moved_back(base, row, row_bytes),
                None => base,
            });
        }
    }

    /// A row-private buffer's pointer (one row of scratch) moved back by row `row`'s offset, so that the
    /// row-major addresses of that row land in the scratch row.
    fn moved_back(&mut self, scratch: Value, row: Value, row_bytes: Value) -> Value {
        let back = self.b.ins().imul(row, row_bytes);
        let back = self.offset(back);
        self.b.ins().isub(scratch, back)
    }

    /// An i64 byte offset as a pointer-sized value.
    fn offset(&mut self, bytes: Value) -> Value {
        if self.ptr == types::I64 {
            bytes
        } else {
            self.b.ins().ireduce(self.ptr, bytes)
        }
    }

    /// The bytes of one row (along the first axis) of buffer `k`.
    fn row_bytes(&mut self, k: usize) -> Value {
        let plan = self.plan;
        let buf = &plan.buffers[k];
        let bytes = Self::elem_type(buf.scalar).bytes() as i64;
        let mut row_bytes = self.b.ins().iconst(types::I64, bytes);
        for d in &buf.shape[1..] {
            let d = self.dim(d);
            row_bytes = self.b.ins().imul(row_bytes, d);
        }
        row_bytes
    }

    /// The address of row `row` of buffer `k` (a pure computation: no access, so any row will do).
    fn row_address(&mut self, k: usize, row: Value, row_bytes: Value) -> Value {
        let off = self.b.ins().imul(row, row_bytes);
        let off = self.offset(off);
        let base = self.bases[k].expect("a member's buffer is loaded on entry");
        self.b.ins().iadd(base, off)
    }

    /// What a row-fused group streams row by row, with each one's row length in bytes: the first float
    /// matrix input its members read along a row (`s[t, k]`), and the first matrix among its members'
    /// own buffers that is not row-private (a gradient row).
    fn streamed_matrices(&mut self, members: &[&Nest]) -> [Option<(usize, Value)>; 2] {
        let f = self.f;
        let plan = self.plan;
        let read = members.iter().find_map(|m| {
            let own = m.head[0].0;
            f.reachable(&[m.body]).into_iter().find_map(|n| match &f.node(n).expr {
                Expr::Load {
                    tensor: tensor @ TensorRef::Input(_),
                    subs,
                } if subs.len() >= 2
                    && f.node(n).scalar == Scalar::Float
                    && matches!(f.node(subs[0]).expr, Expr::Index(i) if i == own)
                    && subs[1..].iter().all(|s| matches!(f.node(*s).expr, Expr::Index(_))) =>
                {
                    Some(plan.buffer_of(f, *tensor))
                }
                _ => None,
            })
        });
        let written = members
            .iter()
            .filter(|m| m.head.len() >= 2)
            .map(|m| plan.buffer_of(f, TensorRef::Def(m.tensor)))
            .find(|k| !plan.row_private[*k]);
        [read, written].map(|k| k.map(|k| (k, self.row_bytes(k))))
    }

    /// [`Self::member`], with the nest's part in kept softmax exponentials ([`super::loops::KeptExps`]) set up: a
    /// logsumexp writes them into its consumer's row; a consumer in a later group reads them as they are
    /// (one in the same group, times the factor its logsumexp leaves in `kept_exps`).
    fn softmax_member(&mut self, group: &Group, index: usize, nest: &Nest, from: usize) {
        let plan = self.plan;
        self.keep_exps = plan.kept_exps.iter().find(|e| e.lse == index).map(|e| {
            let consumer = &plan.nests[e.consumer];
            KeepExps {
                exp: e.exp,
                buffer: plan.kept_row(self.f, e),
                length: consumer.head[1].1.clone(),
                row: nest.head[0].0,
                factors: e.factors.filter(|_| !group.members.contains(&e.consumer)),
                plain: e.plain,
            }
        });
        for e in plan
            .kept_exps
            .iter()
            .filter(|e| e.consumer == index && !group.members.contains(&e.lse))
        {
            let buffer = plan.kept_row(self.f, e);
            let factors = e
                .factors
                .expect("a consumer in a later group reads its factors from a buffer");
            let row = nest.head[0].0;
            self.kept_exps
                .insert(e.exp, (buffer, KeptFactor::Left { factors, row }));
        }
        self.member(nest, from);
        self.keep_exps = None;
    }

    /// One nest's loops over its head from level `from` (the levels before are bound), then the store. A
    /// float element that is a contraction's gradient row or a dot product gets its blocked loop form
    /// (simd.rs).
    fn member(&mut self, nest: &Nest, from: usize) {
        let buffer = self.plan.buffer_of(self.f, TensorRef::Def(nest.tensor));
        let scalar = self.plan.buffers[buffer].scalar;
        let head = nest.head.clone();
        let float = scalar == Scalar::Float;
        // Whether the innermost head loop can run 4 elements at a time (numbers, or conditions as masks).
        let lanes_along_head =
            (float || scalar == Scalar::Bool) && head.last().is_some_and(|(k, _)| self.vectorizable(nest.body, *k));
        self.vector_head = None;
        let lanes_along_head = lanes_along_head && from < head.len();
        if from == 0 && self.column_major(&head, nest.body) {
            self.column_major_nest(buffer, scalar, &head, nest.body);
        } else if let Some(update) = self.row_update_form(&head, nest.body).filter(|_| float) {
            self.row_update_nest(buffer, &head, update, from);
        } else if let Some((d, term)) = self.dot_form(&head, nest.body).filter(|_| float && !lanes_along_head) {
            self.dot_nest(buffer, &head, d, term, nest.body, from);
        } else {
            self.vector_head = lanes_along_head.then_some((buffer, nest.body));
            self.loops(&head, from, &[nest.body], &mut |l: &mut Self| {
                let v = l.value(nest.body);
                let flat = l.flat(&head);
                l.store(buffer, scalar, flat, v);
            });
        }
    }

    /// Whether an element over two indices `[p, q]` reads a matrix transposed (`m[q, p]`) and has no
    /// reduction: it runs column by column within its chunk of rows ([`Self::column_major_nest`]).
    fn column_major(&self, head: &[(IndexId, Dim)], body: NodeId) -> bool {
        let [(p, _), (q, _)] = head else {
            return false;
        };
        let nodes = self.f.reachable(&[body]);
        !nodes
            .iter()
            .any(|n| matches!(self.f.node(*n).expr, Expr::Reduce { .. }))
            && nodes.iter().any(|n| match &self.f.node(*n).expr {
                Expr::Load { subs, .. } => matches!(subs[..], [a, b]
                    if self.f.node(a).expr == Expr::Index(*q) && self.f.node(b).expr == Expr::Index(*p)),
                _ => false,
            })
    }

    /// An elementwise nest `[p, q]` that reads a matrix transposed, in tiles: the chunk's rows `p` times
    /// [`TILE`] columns `q` at a time. A tile's elements read both `m[p, q]` (along rows) and `m[q, p]`
    /// (16 lines, each reused by the chunk's 16 rows) from L1, where row by row each transposed read
    /// would touch a new cache line (and, for wide matrices, a new page). Whole tiles run their rows four
    /// at a time, each transposed read a 4 × 4 block transposed in registers
    /// ([`Self::transposed_blocks`]). The elements and their values are the same in any order.
    fn column_major_nest(&mut self, buffer: usize, scalar: Scalar, head: &[(IndexId, Dim)], body: NodeId) {
        let [(p, pd), (q, qd)] = head else {
            unreachable!("column_major: two indices");
        };
        let (p, q) = (*p, *q);
        let extent = self.dim(pd);
        let end = self.b.ins().smin(self.hi, extent);
        let (zero, columns) = (self.b.ins().iconst(types::I64, 0), self.dim(qd));
        let lo = self.lo;
        let head = head.to_vec();
        let q_var = self.var(q);
        let lanes = scalar == Scalar::Float && self.vectorizable(body, q);
        let transposed = match lanes {
            true => self.transposed_loads(body, p, q),
            false => Vec::new(),
        };
        // Columns qb .. qe for every row of the chunk (4 at a time where the element is vectorizable; a
        // whole tile's rows four at a time where it reads matrices transposed); leaves q at qb. The tile
        // loop binds q to the tile's start only: nothing that depends on q may be computed before the
        // inner loop over q.
        let tile = |l: &mut Self, qb: Value, qe: Value, whole: bool| {
            let tile_bound = l.bound.last() == Some(&q);
            if tile_bound {
                l.bound.pop();
            }
            let first = match whole && !transposed.is_empty() {
                true => l.transposed_blocks(buffer, &head, body, &transposed, (lo, end), (qb, qe)),
                false => lo,
            };
            l.for_range(p, first, end, &mut |l: &mut Self| {
                l.hoist_invariants(&[body]);
                let rest = if lanes {
                    l.vector_loop(q, qb, qe, &mut |l: &mut Self, kb| {
                        let v = l.vvalue(body, q, kb, &mut HashMap::new());
                        let flat = l.flat(&head);
                        l.vstore(buffer, flat, v);
                    })
                } else {
                    qb
                };
                l.for_range(q, rest, qe, &mut |l: &mut Self| {
                    let v = l.value(body);
                    let flat = l.flat(&head);
                    l.store(buffer, scalar, flat, v);
                });
            });
            l.b.def_var(q_var, qb);
            if tile_bound {
                l.bound.push(q);
            }
        };
        let rest = self.stepped_loop(q, zero, columns, TILE, &mut |l: &mut Self| {
            let qb = l.index(q);
            let qe = l.b.ins().iadd_imm_s(qb, TILE);
            tile(l, qb, qe, true);
        });
        tile(self, rest, columns, false);
    }

    /// Loops over `head` from `level` on, then `body`; before each loop, the parts of `element` that the
    /// indices bound so far determine are computed once (see [`Self::hoist_invariants`]).
    fn loops(&mut self, head: &[(IndexId, Dim)], level: usize, element: &[NodeId], body: &mut dyn FnMut(&mut Self)) {
        self.hoist_invariants(element);
        if level == head.len() {
            body(self);
            return;
        }
        let (i, d) = head[level].clone();
        let (start, end) = if level == 0 {
            (self.lo, self.hi)
        } else {
            (self.b.ins().iconst(types::I64, 0), self.dim(&d))
        };
        let end = if level == 0 {
            // The outermost range is [lo, hi) but never beyond the extent.
            let extent = self.dim(&d);
            self.b.ins().smin(end, extent)
        } else {
            end
        };
        if let Some((buffer, stored)) = self.vector_head
            && level + 1 == head.len()
        {
            let lanes_head = head.to_vec();
            let start = self.column_blocks(buffer, &lanes_head, i, start, end, stored);
            // Where the run holds a vector, its last vector (ending at `end`) covers what the vector loop
            // leaves instead of a scalar tail, and the scalar loop runs only for runs shorter than a
            // vector, in a branch of its own: what only the scalar code needs (a scalar copy of each
            // invariant) is not live across the vector loop, where it took registers and was spilled
            // (and re-stored on every back edge).
            let tail = match self.rewrites_in_place(stored, buffer) {
                true => Tail::LastFirst,
                false => Tail::Overlap,
            };
            let n = self.b.ins().isub(end, start);
            let wide = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, n, simd::LANES);
            self.two_way(
                wide,
                None,
                &mut |l: &mut Self| {
                    l.vector_run(buffer, &lanes_head, i, stored, (start, end), tail);
                    None
                },
                &mut |l: &mut Self| {
                    l.for_range(i, start, end, &mut |l: &mut Self| {
                        l.loops(head, level + 1, element, body)
                    });
                    None
                },
            );
            return;
        }
        self.for_range(i, start, end, &mut |l: &mut Self| {
            l.loops(head, level + 1, element, body)
        });
    }

    /// Whether `element`, stored into `buffer`, reads `buffer` itself (a kept exponential in its
    /// consumer's row, a tensor that lives in the buffer): computing a point again after its
    /// store would then read the stored value.
    fn rewrites_in_place(&self, element: NodeId, buffer: usize) -> bool {
        let host = |k: usize| self.plan.host[k].unwrap_or(k);
        self.f.reachable(&[element]).into_iter().any(|n| {
            self.kept_exps.contains_key(&n)
                || matches!(&self.f.node(n).expr,
                    Expr::Load { tensor, .. } if host(self.plan.buffer_of(self.f, *tensor)) == host(buffer))
        })
    }

    /// The innermost run `[start, end)` of an elementwise nest along `i`, at least a vector long, in
    /// vectors (see [`Self::loops`]); the points the vector loop leaves are covered by vectors too, the
    /// last ending at `end` (its points computed twice, with the same bits), as `tail` says.
    fn vector_run(
        &mut self,
        buffer: usize,
        head: &[(IndexId, Dim)],
        i: IndexId,
        element: NodeId,
        (start, end): (Value, Value),
        tail: Tail,
    ) {
        // `select(k == e, a, 0) + rest` (a one-hot term, as a label's in a cross-entropy gradient): the
        // lanes compute `rest`, and `a` is added at k = e afterwards. A term deeper in a sum
        // (`(onehot + x) + y`) counts as 0 in the lanes.
        let one_hot = self.one_hot(element, i);
        let (lanes, zeroed) = match one_hot {
            Some(OneHot { rest: Some(rest), .. }) => (rest, None),
            Some(OneHot { term, rest: None, .. }) => (element, Some(term)),
            None => (element, None),
        };
        // A sigmoid at the root: the lanes store its argument, and the 8-lane row helper turns the
        // stored run into sigmoids (the same bits as the 4-lane code, four chains at a time).
        let sigmoid_argument = match &self.f.node(lanes).expr {
            Expr::Prim {
                prim: Prim::Sigmoid,
                args,
            } if self.exp_rows && one_hot.is_none() => Some(args[0]),
            _ => None,
        };
        // Kept exponentials are loads here.
        let kept: HashSet<NodeId> = self.kept_exps.keys().copied().collect();
        let computed = sigmoid_argument.unwrap_or(lanes);
        let times = match few_steps_reading(self.f, computed, 16, Cost::Piecewise, &kept) {
            true => UNROLL,
            false => 1,
        };
        // The lanes at `kb` (the loop variable, or `fixed` at it).
        let mut lanes_at = |l: &mut Self, kb: Value| {
            let mut memo = HashMap::new();
            if let Some(term) = zeroed
                && let Expr::Prim { args, .. } = &l.f.node(term).expr
            {
                // The term's own zero (its third operand) in every lane.
                let zero = l.vvalue(args[2], i, kb, &mut HashMap::new());
                memo.insert(term, zero);
            }
            l.vvalue(computed, i, kb, &mut memo)
        };
        let mut store = |l: &mut Self, v: Value| {
            let flat = l.flat(head);
            l.vstore(buffer, flat, v);
        };
        match tail {
            // The row already holds these values (its guest's): nothing to store.
            _ if self.guest_element(lanes, buffer, head) => {}
            Tail::Overlap => self.overlapping_vector_loop(i, start, end, times, &mut |l: &mut Self, kb| {
                let v = lanes_at(l, kb);
                store(l, v)
            }),
            Tail::LastFirst => self.last_first_vector_loop(i, start, end, times, &mut lanes_at, &mut store),
        }
        if sigmoid_argument.is_some() {
            self.fixed.insert(i, start);
            let flat = self.flat(head);
            self.fixed.remove(&i);
            let at = self.address(buffer, Scalar::Float, flat);
            let n = self.b.ins().isub(end, start);
            self.call_helper("lossc_sigmoid_row", &[at, n]);
        }
        if let Some(OneHot { at, value, .. }) = one_hot {
            self.add_one_hot(buffer, head, i, at, value, (start, end));
        }
    }

    /// Whether `element` of `buffer` at `head` is the element of a tensor living in it
    /// (loops::Plan::host) at the same place: the value is already there.
    fn guest_element(&self, element: NodeId, buffer: usize, head: &[(IndexId, Dim)]) -> bool {
        let Expr::Load { tensor, subs } = &self.f.node(element).expr else {
            return false;
        };
        let head: Vec<IndexId> = head.iter().map(|(i, _)| *i).collect();
        self.plan.host[self.plan.buffer_of(self.f, *tensor)] == Some(buffer) && self.f.at_indices(subs, &head)
    }

    /// A one-hot term `select(k == e, a, 0)` (`e` and `a` independent of `k`) of the sum `element`: at the
    /// top (`term + rest`, either way round), or deeper in a sum of terms (`(term + x) + y`).
    fn one_hot(&self, element: NodeId, k: IndexId) -> Option<OneHot> {
        let Expr::Prim { prim: Prim::Add, args } = &self.f.node(element).expr else {
            return None;
        };
        let top = [(args[0], args[1]), (args[1], args[0])]
            .into_iter()
            .find_map(|(term, rest)| {
                let (at, value) = self.one_hot_term(term, k)?;
                Some(OneHot {
                    term,
                    at,
                    value,
                    rest: Some(rest),
                })
            });
        // Deeper, the term is 0 wherever it occurs in the lanes: it must occur once.
        top.or_else(|| {
            let inner = args.iter().find_map(|a| self.one_hot(*a, k))?;
            (self.paths(element, inner.term, &mut HashMap::new()) == 1).then_some(OneHot { rest: None, ..inner })
        })
    }

    /// How many paths lead from `from` down to `to` in the expression DAG (counting stops at 2).
    fn paths(&self, from: NodeId, to: NodeId, memo: &mut HashMap<NodeId, usize>) -> usize {
        if from == to {
            return 1;
        }
        if let Some(&n) = memo.get(&from) {
            return n;
        }
        let mut n = 0;
        for operand in self.f.node(from).expr.operands() {
            n = (n + self.paths(operand, to, memo)).min(2);
        }
        memo.insert(from, n);
        n
    }

    /// `select(k == e, a, 0)` with `e` and `a` independent of `k` (and computed without a branch): (e, a).
    fn one_hot_term(&self, term: NodeId, k: IndexId) -> Option<(NodeId, NodeId)> {
        let free_of_k = |n: NodeId| !self.f.node(n).free.contains(&k);
        let Expr::Prim {
            prim: Prim::Select,
            args: s,
        } = &self.f.node(term).expr
        else {
            return None;
        };
        let Expr::Prim {
            prim: Prim::Eq,
            args: c,
        } = &self.f.node(s[0]).expr
        else {
            return None;
        };
        let at_k = |n: NodeId| self.f.node(n).expr == Expr::Index(k);
        let e = match c[..] {
            [p, q] if at_k(p) && free_of_k(q) => q,
            [p, q] if at_k(q) && free_of_k(p) => p,
            _ => return None,
        };
        (self.f.as_float(s[2]) == Some(0.0) && free_of_k(s[1]) && !self.needs_branch(s[1]) && !self.needs_branch(e))
            .then_some((e, s[1]))
    }

    /// Adds the one-hot value `a` at `k = e` of the current row when `e` lies in `lo..hi` (the elements
    /// the vectors wrote as `rest` alone; the scalar loop of a short row computes whole elements).
    fn add_one_hot(
        &mut self,
        buffer: usize,
        head: &[(IndexId, Dim)],
        k: IndexId,
        e: NodeId,
        a: NodeId,
        (lo, hi): (Value, Value),
    ) {
        let at = self.value(e);
        let above = self.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, at, lo);
        let below = self.b.ins().icmp(IntCC::SignedLessThan, at, hi);
        let inside = self.b.ins().band(above, below);
        let yes = self.b.create_block();
        let next = self.b.create_block();
        self.b.ins().brif(inside, yes, &[], next, &[]);
        self.b.switch_to_block(yes);
        self.frames.push(HashMap::new());
        let var = self.var(k);
        self.b.def_var(var, at);
        let flat = self.flat(head);
        let addr = self.address(buffer, Scalar::Float, flat);
        let rest = self.b.ins().load(types::F32, flags(), addr, 0);
        let one = self.value(a);
        let sum = self.b.ins().fadd(one, rest);
        self.b.ins().store(flags(), sum, addr, 0);
        self.frames.pop();
        self.b.ins().jump(next, &[]);
        self.b.switch_to_block(next);
    }

    /// The row-major position of the current head indices.
    fn flat(&mut self, head: &[(IndexId, Dim)]) -> Value {
        let mut flat = self.b.ins().iconst(types::I64, 0);
        for (i, d) in head {
            let size = self.dim(d);
            let iv = self.index(*i);
            let scaled = self.b.ins().imul(flat, size);
            flat = self.b.ins().iadd(scaled, iv);
        }
        flat
    }

    fn var(&mut self, i: IndexId) -> Variable {
        if let Some(v) = self.vars.get(&i) {
            return *v;
        }
        let v = self.b.declare_var(types::I64);
        self.vars.insert(i, v);
        v
    }

    fn index(&mut self, i: IndexId) -> Value {
        if let Some(v) = self.fixed.get(&i) {
            return *v;
        }
        let v = self.var(i);
        self.b.use_var(v)
    }

    /// `for i in start..end { body }`; the body runs in its own dominance scope.
    fn for_range(&mut self, i: IndexId, start: Value, end: Value, body: &mut dyn FnMut(&mut Self)) {
        self.stepped_loop(i, start, end, 1, body);
    }

    /// `body` for i = start, start + step, … while i + step <= end (each iteration covers `step` values of
    /// i), in its own dominance scope; returns the first i not covered.
    fn stepped_loop(
        &mut self,
        i: IndexId,
        start: Value,
        end: Value,
        step: i64,
        body: &mut dyn FnMut(&mut Self),
    ) -> Value {
        let var = self.var(i);
        self.b.def_var(var, start);
        // Rotated: one test before the loop and one at the bottom of each iteration (no jump back to a
        // separate header), against the last i that covers `step` values.
        let last = self.b.ins().iadd_imm_s(end, -step);
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        // The body is the branch's second target: Cranelift 0.135's egraph visits that one first, and a loop's
        // exit visited before its body would drop the loop from the egraph's loop stack (no hoisting there).
        let skip = self.b.ins().icmp(IntCC::SignedGreaterThan, start, last);
        let entry = self.b.ins().brif(skip, exit, &[], inner, &[]);
        self.b.switch_to_block(inner);
        self.frames.push(HashMap::new());
        self.preheaders.push((entry, HashMap::new()));
        self.bound.push(i);
        body(self);
        self.bound.pop();
        self.preheaders.pop();
        self.frames.pop();
        let iv = self.b.use_var(var);
        let next = self.b.ins().iadd_imm_s(iv, step);
        self.b.def_var(var, next);
        let done = self.b.ins().icmp(IntCC::SignedGreaterThan, next, last);
        self.b.ins().brif(done, exit, &[], inner, &[]);
        self.b.switch_to_block(exit);
        self.b.use_var(var)
    }

    fn dim(&mut self, d: &Dim) -> Value {
        match d {
            Dim::Const(c) => self.b.ins().iconst(types::I64, *c),
            Dim::Sym(s) => self.sizes[s.index()],
            Dim::Add(a, c) | Dim::Sub(a, c) | Dim::Mul(a, c) => {
                let (x, y) = (self.dim(a), self.dim(c));
                match d {
                    Dim::Add(..) => self.b.ins().iadd(x, y),
                    Dim::Sub(..) => self.b.ins().isub(x, y),
                    _ => self.b.ins().imul(x, y),
                }
            }
        }
    }

    /// How a buffer stores its elements: f32, i64, and conditions as i32 masks (-1 true, 0 false), which
    /// four lanes load and store as they are.
    fn elem_type(scalar: Scalar) -> Type {
        match scalar {
            Scalar::Float => types::F32,
            Scalar::Int => types::I64,
            Scalar::Bool => types::I32,
        }
    }

    fn address(&mut self, buffer: usize, scalar: Scalar, flat: Value) -> Value {
        let bytes = Self::elem_type(scalar).bytes() as i64;
        let off = self.b.ins().imul_imm_s(flat, bytes);
        let off = self.offset(off);
        let base = self.bases[buffer].expect("the nest's buffers are loaded on entry");
        self.b.ins().iadd(base, off)
    }

    fn store(&mut self, buffer: usize, scalar: Scalar, flat: Value, v: Value) {
        let addr = self.address(buffer, scalar, flat);
        let v = if scalar == Scalar::Bool {
            self.b.ins().bmask(types::I32, v)
        } else {
            v
        };
        self.b.ins().store(flags(), v, addr, 0);
    }

    fn lookup(&self, n: NodeId) -> Option<Value> {
        self.frames.iter().rev().find_map(|f| f.get(&n).copied())
    }

    fn call(&mut self, name: &'static str, args: &[Value]) -> Value {
        let inst = self.call_helper(name, args);
        self.b.inst_results(inst)[0]
    }

    fn call_helper(&mut self, name: &'static str, args: &[Value]) -> ir::Inst {
        let fref = self.math[name];
        self.b.ins().call(fref, args)
    }

    fn fconst(&mut self, x: f32) -> Value {
        self.b.ins().f32const(x)
    }

    /// Whether subscript `s` is always within an axis of size `d` (so needs no check).
    fn in_range(&self, s: NodeId, d: &Dim) -> bool {
        self.f.in_range(s, d)
    }

    /// Whether evaluating `n` could fail or cost a loop (then choices around it branch instead of selecting).
    fn needs_branch(&self, n: NodeId) -> bool {
        self.plan.branching[n.index()]
    }

    /// Computes here, before a loop, the largest parts of `roots` that the indices bound so far determine
    /// and that can neither fail nor loop; the loop body then finds them memoized. (Cranelift's egraph
    /// hoists pure operations whose operands come from outside a loop, but it never moves a load, so
    /// everything computed from a per-row load would otherwise run once per element.) Reductions are left
    /// where they are: their bodies bind indices of their own. Only called where no bound index is
    /// redefined later in the same frame (not between [`Self::at_index`] calls).
    fn hoist_invariants(&mut self, roots: &[NodeId]) {
        let mut seen = HashSet::new();
        let mut stack = roots.to_vec();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            let node = self.f.node(n);
            match &node.expr {
                Expr::Float(_)
                | Expr::Int(_)
                | Expr::Bool(_)
                | Expr::Index(_)
                | Expr::Size(_)
                | Expr::Reduce { .. } => {}
                _ if node.free.iter().all(|i| self.bound.contains(i)) && !self.needs_branch(n) => {
                    self.value(n);
                }
                expr => stack.extend(expr.operands()),
            }
        }
    }

    /// The current element of a softmax consumer's buffer (its head indices are bound here).
    fn kept_flat(&mut self, buffer: usize) -> Value {
        let TensorRef::Def(t) = self.plan.buffers[buffer].of else {
            unreachable!("kept exponentials live in a tensor's buffer")
        };
        let head: Vec<(IndexId, Dim)> = self
            .f
            .tensor(t)
            .indices
            .iter()
            .map(|i| (*i, self.f.index(*i).range.clone()))
            .collect();
        self.flat(&head)
    }

    /// A kept softmax exponential ([`KeepExps`]) for node `n` at the current element (4 lanes when
    /// `lanes`): the consumer's own row, read before the element overwrites it, times the factor its
    /// logsumexp computed or left in a buffer. `None` when `n` is not kept.
    fn kept_exp(&mut self, n: NodeId, lanes: bool) -> Option<Value> {
        let &(buffer, factor) = self.kept_exps.get(&n)?;
        let flat = self.kept_flat(buffer);
        let addr = self.address(buffer, Scalar::Float, flat);
        let ty = if lanes { types::F32X4 } else { types::F32 };
        let e = self.b.ins().load(ty, MemFlagsData::new().with_notrap(), addr, 0);
        let factor = match factor {
            KeptFactor::Computed(factor) => factor,
            KeptFactor::Left { factors, row } => {
                let row = self.index(row);
                let addr = self.address(factors, Scalar::Float, row);
                // Written by an earlier group, read-only here: free to move out of the row's loops.
                let flags = MemFlagsData::new().with_notrap().with_readonly().with_can_move();
                self.b.ins().load(types::F32, flags, addr, 0)
            }
        };
        Some(match lanes {
            true => {
                let f = self.b.ins().splat(types::F32X4, factor);
                self.b.ins().fmul(e, f)
            }
            false => self.b.ins().fmul(e, factor),
        })
    }

    /// The flat position `start + k` in a kept softmax row.
    fn kept_at(&mut self, k: IndexId, start: Value) -> Value {
        let at = self.index(k);
        self.b.ins().iadd(start, at)
    }

    fn value(&mut self, n: NodeId) -> Value {
        if let Some(v) = self.lookup(n) {
            return v;
        }
        if let Some(e) = self.kept_exp(n, false) {
            return e;
        }
        let node = self.f.node(n).clone();
        let v = match &node.expr {
            Expr::Float(bits) => self.fconst(f64::from_bits(*bits) as f32),
            Expr::Int(i) => self.b.ins().iconst(types::I64, *i),
            Expr::Bool(b) => self.b.ins().iconst(types::I8, i64::from(*b)),
            Expr::Index(i) => self.index(*i),
            Expr::Size(d) => self.dim(d),
            Expr::Hyper(h) => {
                let x = self.b.ins().load(types::F64, flags(), self.hypers, (*h as i32) * 8);
                if node.scalar == Scalar::Int {
                    self.b.ins().fcvt_to_sint_sat(types::I64, x)
                } else {
                    self.b.ins().fdemote(types::F32, x)
                }
            }
            Expr::Load { tensor, subs } => self.load(n, *tensor, subs),
            Expr::Prim { prim, args } => self.prim(*prim, args, node.scalar),
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => self.reduce(*op, indices, *mask, *body),
        };
        self.frames.last_mut().expect("a frame").insert(n, v);
        v
    }

    fn load(&mut self, n: NodeId, tensor: TensorRef, subs: &[NodeId]) -> Value {
        let buffer = self.plan.buffer_of(self.f, tensor);
        let scalar = self.plan.buffers[buffer].scalar;
        let shape = self.plan.buffers[buffer].shape.clone();
        let mut flat = self.b.ins().iconst(types::I64, 0);
        for (axis, (s, d)) in subs.iter().zip(&shape).enumerate() {
            let v = self.value(*s);
            let size = self.dim(d);
            if !self.in_range(*s, d) {
                // 0 <= v < size, as one unsigned comparison; else report and return. (The report is the
                // branch's first target and returns itself, so the egraph visits it last: see stepped_loop.)
                let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, v, size);
                let cont = self.b.create_block();
                let report = self.b.create_block();
                self.b.ins().brif(bad, report, &[], cont, &[]);
                self.b.switch_to_block(report);
                let code = self.b.ins().iconst(types::I64, i64::from(n.0) + 1);
                let ax = self.b.ins().iconst(types::I64, axis as i64);
                self.b.ins().store(flags(), code, self.err, 0);
                self.b.ins().store(flags(), ax, self.err, 8);
                self.b.ins().store(flags(), v, self.err, 16);
                self.b.ins().return_(&[]);
                self.b.switch_to_block(cont);
            }
            let scaled = self.b.ins().imul(flat, size);
            flat = self.b.ins().iadd(scaled, v);
        }
        let addr = self.address(buffer, scalar, flat);
        let x = self.b.ins().load(Self::elem_type(scalar), flags(), addr, 0);
        if scalar == Scalar::Bool {
            self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
        } else {
            x
        }
    }

    /// A comparison, integer or float, of scalars or of lanes (the result is a condition or a lane mask).
    fn compare(&mut self, prim: Prim, int: bool, a: Value, b: Value) -> Value {
        use Prim::*;
        if int {
            let cc = match prim {
                Eq => IntCC::Equal,
                Ne => IntCC::NotEqual,
                Lt => IntCC::SignedLessThan,
                Le => IntCC::SignedLessThanOrEqual,
                Gt => IntCC::SignedGreaterThan,
                _ => IntCC::SignedGreaterThanOrEqual,
            };
            self.b.ins().icmp(cc, a, b)
        } else {
            let cc = match prim {
                Eq => FloatCC::Equal,
                Ne => FloatCC::NotEqual,
                Lt => FloatCC::LessThan,
                Le => FloatCC::LessThanOrEqual,
                Gt => FloatCC::GreaterThan,
                _ => FloatCC::GreaterThanOrEqual,
            };
            self.b.ins().fcmp(cc, a, b)
        }
    }

    /// A two-way choice evaluated lazily: only the taken side runs.
    fn branch(
        &mut self,
        c: Value,
        ty: Type,
        a: &mut dyn FnMut(&mut Self) -> Value,
        b: &mut dyn FnMut(&mut Self) -> Value,
    ) -> Value {
        let out = self.two_way(c, Some(ty), &mut |l: &mut Self| Some(a(l)), &mut |l: &mut Self| {
            Some(b(l))
        });
        out.expect("a value of type ty")
    }

    /// `a` where `c` holds, else `b`, each in its own block and dominance scope; with `ty`, both give a
    /// value of that type and the join receives it.
    fn two_way<'s>(
        &mut self,
        c: Value,
        ty: Option<Type>,
        a: &'s mut dyn FnMut(&mut Self) -> Option<Value>,
        b: &'s mut dyn FnMut(&mut Self) -> Option<Value>,
    ) -> Option<Value> {
        let (then, other, merge) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        let out = ty.map(|ty| self.b.append_block_param(merge, ty));
        self.b.ins().brif(c, then, &[], other, &[]);
        for (block, side) in [(then, a), (other, b)] {
            self.b.switch_to_block(block);
            self.frames.push(HashMap::new());
            let v = side(self);
            self.frames.pop();
            let args: Vec<ir::BlockArg> = v.into_iter().map(Into::into).collect();
            self.b.ins().jump(merge, &args);
        }
        self.b.switch_to_block(merge);
        out
    }

    fn prim(&mut self, prim: Prim, args: &[NodeId], scalar: Scalar) -> Value {
        use Prim::*;
        // Lazy operands first: they must not be evaluated unless needed.
        match prim {
            Select if self.needs_branch(args[1]) || self.needs_branch(args[2]) => {
                let c = self.value(args[0]);
                let ty = if scalar == Scalar::Float {
                    types::F32
                } else if scalar == Scalar::Int {
                    types::I64
                } else {
                    types::I8
                };
                let (x, y) = (args[1], args[2]);
                return self.branch(c, ty, &mut |l| l.value(x), &mut |l| l.value(y));
            }
            And | Or if self.needs_branch(args[1]) => {
                let a = self.value(args[0]);
                let rhs = args[1];
                return if prim == And {
                    self.branch(a, types::I8, &mut |l| l.value(rhs), &mut |l| {
                        l.b.ins().iconst(types::I8, 0)
                    })
                } else {
                    self.branch(a, types::I8, &mut |l| l.b.ins().iconst(types::I8, 1), &mut |l| {
                        l.value(rhs)
                    })
                };
            }
            _ => {}
        }
        let a: Vec<Value> = args.iter().map(|x| self.value(*x)).collect();
        let int = |l: &Self, k: usize| l.f.node(args[k]).scalar == Scalar::Int;
        match prim {
            Add if scalar == Scalar::Int => self.b.ins().iadd(a[0], a[1]),
            Sub if scalar == Scalar::Int => self.b.ins().isub(a[0], a[1]),
            Mul if scalar == Scalar::Int => self.b.ins().imul(a[0], a[1]),
            Min if scalar == Scalar::Int => self.b.ins().smin(a[0], a[1]),
            Max if scalar == Scalar::Int => self.b.ins().smax(a[0], a[1]),
            Neg if scalar == Scalar::Int => self.b.ins().ineg(a[0]),
            Abs if scalar == Scalar::Int => self.b.ins().iabs(a[0]),
            Sign if scalar == Scalar::Int => {
                let zero = self.b.ins().iconst(types::I64, 0);
                let gt = self.b.ins().icmp(IntCC::SignedGreaterThan, a[0], zero);
                let lt = self.b.ins().icmp(IntCC::SignedLessThan, a[0], zero);
                let gt = self.b.ins().uextend(types::I64, gt);
                let lt = self.b.ins().uextend(types::I64, lt);
                self.b.ins().isub(gt, lt)
            }
            Add => self.b.ins().fadd(a[0], a[1]),
            Sub => self.b.ins().fsub(a[0], a[1]),
            Mul => self.b.ins().fmul(a[0], a[1]),
            // A scalar divisor (hyperparameter, constant): the product with its reciprocal, computed once
            // outside the loops; the lanes do the same (simd.rs), so every place has the same bits.
            Div if self.f.node(args[1]).free.is_empty() => {
                let one = self.fconst(1.0);
                let reciprocal = self.b.ins().fdiv(one, a[1]);
                self.b.ins().fmul(a[0], reciprocal)
            }
            Div => self.b.ins().fdiv(a[0], a[1]),
            Neg => self.b.ins().fneg(a[0]),
            Min => self.b.ins().fmin(a[0], a[1]),
            Max => self.b.ins().fmax(a[0], a[1]),
            Abs => self.b.ins().fabs(a[0]),
            Sqrt => self.b.ins().sqrt(a[0]),
            Relu => {
                let zero = self.fconst(0.0);
                self.b.ins().fmax(a[0], zero)
            }
            Clamp => {
                let lo = self.b.ins().fmax(a[0], a[1]);
                self.b.ins().fmin(lo, a[2])
            }
            Sign => {
                let zero = self.fconst(0.0);
                let (one, minus) = (self.fconst(1.0), self.fconst(-1.0));
                let gt = self.b.ins().fcmp(FloatCC::GreaterThan, a[0], zero);
                let lt = self.b.ins().fcmp(FloatCC::LessThan, a[0], zero);
                let keep = self.b.ins().fmul(a[0], zero);
                let neg = self.b.ins().select(lt, minus, keep);
                self.b.ins().select(gt, one, neg)
            }
            Pow => self.call("lossc_powf", &a),
            Exp => self.exp_lanes(a[0], false),
            Log => self.call("lossc_logf", &a),
            Log1p => self.call("lossc_log1pf", &a),
            Expm1 => self.call("lossc_expm1f", &a),
            Tanh => self.call("lossc_tanhf", &a),
            Atan => self.call("lossc_atanf", &a),
            Sigmoid => self.sigmoid_lanes(a[0], false),
            Softplus => self.call("lossc_softplusf", &a),
            Eq | Ne | Lt | Le | Gt | Ge => {
                let both_int = int(self, 0) && int(self, 1);
                self.compare(prim, both_int, a[0], a[1])
            }
            And => self.b.ins().band(a[0], a[1]),
            Or => self.b.ins().bor(a[0], a[1]),
            Not => self.b.ins().icmp_imm_s(IntCC::Equal, a[0], 0),
            Select => self.b.ins().select(a[0], a[1], a[2]),
            Iverson => {
                let (one, zero) = (self.fconst(1.0), self.fconst(0.0));
                self.b.ins().select(a[0], one, zero)
            }
            ToFloat => self.b.ins().fcvt_from_sint(types::F32, a[0]),
            StopGrad => a[0],
        }
    }

    /// logsumexp in two passes over a cheap body: the maximum, then the sum of exp(x - max) (one exp per
    /// element, no rescaling). A maximum of ±inf or NaN is the result itself.
    fn logsumexp_two_pass(&mut self, ranges: &[(IndexId, Dim)], mask: Option<NodeId>, body: NodeId) -> Value {
        // A softmax row's exponentials go to their consumer's row (or a scratch row), at the reduced index
        // (with a mask, only where it holds: the consumer reads them only there).
        let keep = match ranges {
            [(k, _)] => self.keep_exps.take().map(|keep| self.kept_row_start(*k, keep)),
            _ => None,
        };
        // With the 8-lane row helper, the first pass also leaves the row's values in the kept row, and
        // the helper turns them into exp(x - m) in place and sums them: no second pass here.
        // A masked row's first pass leaves -inf where the mask fails, whose exponential is 0.
        let row_helper = keep
            .as_ref()
            .filter(|_| self.exp_rows)
            .map(|(k, keep, start)| (*k, keep.buffer, *start));
        // A body that is a row of a buffer (`s[t, k]`) is read from there by the helper (without a mask);
        // other bodies are left in the kept row by the first pass.
        let source = row_helper
            .filter(|_| mask.is_none())
            .and_then(|(k, _, _)| self.contiguous_row(body, k));
        let row_helper_copy = row_helper.filter(|_| source.is_none());
        // The helper's arguments after the source: the kept row, its length, and the rows to prefetch (the
        // next row of the source and of the kept row where these are rows of matrices, else what the group
        // streams).
        let helper_rows = |l: &mut Self, buffer: usize, start: Value, length: &Dim| -> [Value; 4] {
            let row = l.address(buffer, Scalar::Float, start);
            let n = l.dim(length);
            let row_bytes = l.b.ins().imul_imm_s(n, 4);
            let row_bytes = l.offset(row_bytes);
            let next = |l: &mut Self, at: Value| l.b.ins().iadd(at, row_bytes);
            let read = match source {
                Some(src) => Some(next(l, src)),
                None => l.rows_ahead[0],
            };
            let written = match l.plan.row_private[buffer] {
                false => Some(next(l, row)),
                true => l.rows_ahead[1],
            };
            let none = l.b.ins().iconst(l.ptr, 0);
            [row, n, read.unwrap_or(none), written.unwrap_or(none)]
        };
        let (mx, sum) = match (&keep, row_helper, source) {
            // A row of a matrix: the helper finds its maximum too (8 lanes), and leaves it in a stack slot.
            (Some((_, keep, _)), Some((_, buffer, start)), Some(src)) => {
                let [row, n, read, written] = helper_rows(self, buffer, start, &keep.length);
                let slot = ir::StackSlotData::new(ir::StackSlotKind::ExplicitSlot, 4, 2);
                let slot = self.b.create_sized_stack_slot(slot);
                let at = self.b.ins().stack_addr(self.ptr, slot, 0);
                let sum = self.call("lossc_softmax_row", &[src, row, n, read, written, at]);
                (self.b.ins().stack_load(self.ptr, types::F32, slot, 0), sum)
            }
            _ => {
                let mx = self.row_max_pass(ranges, mask, body, row_helper_copy);
                let sum = match (&keep, row_helper) {
                    (Some((_, keep, _)), Some((_, buffer, start))) => {
                        let [row, n, read, written] = helper_rows(self, buffer, start, &keep.length);
                        self.call("lossc_exp_row", &[row, row, n, mx, read, written])
                    }
                    _ => self.exp_sum_pass(ranges, mask, body, mx, &keep),
                };
                (mx, sum)
            }
        };
        let lg = self.call("lossc_log", &[sum]);
        let mx64 = self.b.ins().fpromote(types::F64, mx);
        let r = self.b.ins().fadd(mx64, lg);
        let r = self.b.ins().fdemote(types::F32, r);
        // m = ±inf or NaN: the result is m.
        let finite = self.finite(mx);
        if let Some((_, keep, _)) = keep {
            // exp(x - lse) = exp(x - m) / sum; where m is not finite, lse = m and the kept value is exact.
            let one = self.b.ins().f64const(1.0);
            let inverse = self.b.ins().fdiv(one, sum);
            let inverse = self.b.ins().fdemote(types::F32, inverse);
            let one = self.fconst(1.0);
            let factor = self.b.ins().select(finite, inverse, one);
            self.leave_factor(&keep, factor);
        }
        self.b.ins().select(finite, r, mx)
    }

    /// Where kept exponentials start in their row (`keep.row` times the row's length), with the index `k`
    /// along the row and `keep`.
    fn kept_row_start(&mut self, k: IndexId, keep: KeepExps) -> (IndexId, KeepExps, Value) {
        let row = self.index(keep.row);
        let length = self.dim(&keep.length);
        let start = self.b.ins().imul(row, length);
        (k, keep, start)
    }

    /// The factor that turns this row's kept exponentials into the consumer's `exp` values: for the
    /// consumer in this group, or in a buffer for one in a later group (no pass over the row).
    fn leave_factor(&mut self, keep: &KeepExps, factor: Value) {
        match keep.factors {
            Some(factors) => {
                let row = self.index(keep.row);
                self.store(factors, Scalar::Float, row, factor);
            }
            None => {
                self.kept_exps
                    .insert(keep.exp, (keep.buffer, KeptFactor::Computed(factor)));
            }
        }
    }

    /// The first pass of a two-pass logsumexp: the maximum of the body over `ranges` (where the mask holds)
    /// as `fmax` over the values gives it where that matters. `copy`: the kept row (its buffer and start)
    /// to leave the values in for the row helper.
    fn row_max_pass(
        &mut self,
        ranges: &[(IndexId, Dim)],
        mask: Option<NodeId>,
        body: NodeId,
        copy: Option<(IndexId, usize, Value)>,
    ) -> Value {
        let m = self.b.declare_var(types::F32);
        let ninf = self.b.ins().f32const(f32::NEG_INFINITY);
        self.b.def_var(m, ninf);
        // Over a row (no mask), the lanes skip NaN (one `maxps` per vector): a NaN among finite values
        // reaches the sum of the exponentials and makes the result NaN anyway; only a maximum that is not
        // finite (the result itself) needs to know, and then the body is scanned for one. (A masked
        // logsumexp keeps track in its lanes: its code stays smaller.)
        let skip_nan = mask.is_none();
        let vmax = self.vext_new(true, !skip_nan);
        if let (Some((k, buffer, start)), Some(_), [(_, length)]) = (copy, mask, ranges) {
            // The scalar tail copies only the points where the mask holds (at most the last 8 of the row,
            // after the vector loop): the others hold -inf from here.
            let n = self.dim(length);
            let from = self.b.ins().iadd_imm_s(n, -UNROLL * simd::LANES);
            let zero = self.b.ins().iconst(types::I64, 0);
            let from = self.b.ins().smax(from, zero);
            self.for_range(k, from, n, &mut |l: &mut Self| {
                let flat = l.kept_at(k, start);
                let ninf = l.fconst(f32::NEG_INFINITY);
                l.store(buffer, Scalar::Float, flat, ninf);
            });
        }
        self.reduce_pass(
            ranges,
            mask,
            body,
            false,
            &mut |l: &mut Self, v, lanes_mask, _| {
                let v = l.fill_masked(v, lanes_mask, f32::NEG_INFINITY);
                if let Some((k, buffer, start)) = copy {
                    let flat = l.kept_at(k, start);
                    l.vstore(buffer, flat, v);
                }
                l.vext_add(vmax, v);
            },
            &mut |l: &mut Self, x| {
                if let Some((k, buffer, start)) = copy {
                    let flat = l.kept_at(k, start);
                    l.store(buffer, Scalar::Float, flat, x);
                }
                let cur = l.b.use_var(m);
                let nm = l.b.ins().fmax(cur, x);
                l.b.def_var(m, nm);
            },
        );
        let lanes = self.vext_fold(vmax);
        let tail = self.b.use_var(m);
        let mx = self.b.ins().fmax(lanes, tail);
        match skip_nan {
            true => self.nan_if_any_when_infinite(mx, ranges, body),
            false => mx,
        }
    }

    /// The address of element `k = 0` of a float load contiguous along `k` (`s[t, k]`: `k` the last
    /// subscript, the others in range and independent of it), whose row the reduction over `k` reads.
    fn contiguous_row(&mut self, body: NodeId, k: IndexId) -> Option<Value> {
        let Expr::Load { tensor, subs } = self.f.node(body).expr.clone() else {
            return None;
        };
        let buffer = self.plan.buffer_of(self.f, tensor);
        let shape = self.plan.buffers[buffer].shape.clone();
        let at_k = |l: &Self, s: NodeId| matches!(l.f.node(s).expr, Expr::Index(i) if i == k);
        let contiguous = self.plan.buffers[buffer].scalar == Scalar::Float
            && subs.last().is_some_and(|s| at_k(self, *s))
            && subs[..subs.len() - 1]
                .iter()
                .all(|s| !self.f.node(*s).free.contains(&k))
            && subs.iter().zip(&shape).all(|(s, d)| self.in_range(*s, d));
        if !contiguous {
            return None;
        }
        let mut flat = self.b.ins().iconst(types::I64, 0);
        for (s, d) in subs.iter().zip(&shape) {
            let v = if at_k(self, *s) {
                self.b.ins().iconst(types::I64, 0)
            } else {
                self.value(*s)
            };
            let size = self.dim(d);
            let scaled = self.b.ins().imul(flat, size);
            flat = self.b.ins().iadd(scaled, v);
        }
        Some(self.address(buffer, Scalar::Float, flat))
    }

    /// The second pass of a two-pass logsumexp: the sum of exp(x - m) over the row (in f64), writing
    /// each exp into a kept row as it goes.
    #[allow(clippy::too_many_arguments)]
    fn exp_sum_pass(
        &mut self,
        ranges: &[(IndexId, Dim)],
        mask: Option<NodeId>,
        body: NodeId,
        mx: Value,
        keep: &Option<(IndexId, KeepExps, Value)>,
    ) -> Value {
        let s = self.b.declare_var(types::F64);
        let zero = self.b.ins().f64const(0.0);
        self.b.def_var(s, zero);
        let vsum = self.vacc_sum();
        self.reduce_pass(
            ranges,
            mask,
            body,
            false,
            &mut |l: &mut Self, v, lanes_mask, _| {
                let mxv = l.b.ins().splat(types::F32X4, mx);
                let d = l.b.ins().fsub(v, mxv);
                let e = l.exp_lanes(d, true);
                let e = l.fill_masked(e, lanes_mask, 0.0);
                if let Some((k, keep, start)) = keep {
                    let flat = l.kept_at(*k, *start);
                    l.vstore(keep.buffer, flat, e);
                }
                l.vacc_add(vsum, e);
            },
            &mut |l: &mut Self, x| {
                let d = l.b.ins().fsub(x, mx);
                let e = l.exp_lanes(d, false);
                if let Some((k, keep, start)) = keep {
                    let flat = l.kept_at(*k, *start);
                    l.store(keep.buffer, Scalar::Float, flat, e);
                }
                let e = l.b.ins().fpromote(types::F64, e);
                let cur = l.b.use_var(s);
                let ns = l.b.ins().fadd(cur, e);
                l.b.def_var(s, ns);
            },
        );
        let lanes = self.vacc_total(vsum);
        let tail = self.b.use_var(s);
        self.b.ins().fadd(lanes, tail)
    }

    /// Sums of cheap vectorizable terms over indices of one extent, `lo..hi` of each, in one loop (each
    /// iteration computes every sum's terms, so the terms' loads are shared): the same additions in the
    /// same order as [`Self::reduce_pass`] makes for each alone (16 points pre-summed in f32, then single
    /// vectors, then single points), so each result has the bits it would have alone. f32 results.
    fn sums_in_one_loop(&mut self, sums: &[(IndexId, NodeId)], lo: Value, hi: Value) -> Vec<Value> {
        let roots: Vec<NodeId> = sums.iter().map(|(_, body)| *body).collect();
        self.hoist_invariants(&roots);
        let vector: Vec<(Variable, Variable)> = sums.iter().map(|_| self.vacc_sum()).collect();
        let zero = self.b.ins().f64const(0.0);
        let scalar: Vec<Variable> = sums
            .iter()
            .map(|_| {
                let v = self.b.declare_var(types::F64);
                self.b.def_var(v, zero);
                v
            })
            .collect();
        let k = sums[0].0;
        let rest = self.stepped_loop(k, lo, hi, 4 * simd::LANES, &mut |l: &mut Self| {
            let kb = l.index(k);
            for (&(i, body), acc) in sums.iter().zip(&vector) {
                let total = l.presum(body, None, i, kb);
                l.vacc_add(*acc, total);
            }
        });
        let tail = self.vector_loop(k, rest, hi, &mut |l: &mut Self, kb| {
            for (&(i, body), acc) in sums.iter().zip(&vector) {
                let v = l.vvalue(body, i, kb, &mut HashMap::new());
                l.vacc_add(*acc, v);
            }
        });
        self.for_range(k, tail, hi, &mut |l: &mut Self| {
            let at = l.index(k);
            for (&(i, body), acc) in sums.iter().zip(&scalar) {
                l.fixed.insert(i, at);
                l.frames.push(HashMap::new());
                let x = l.value(body);
                let x = l.b.ins().fpromote(types::F64, x);
                let cur = l.b.use_var(*acc);
                let next = l.b.ins().fadd(cur, x);
                l.b.def_var(*acc, next);
                l.frames.pop();
                l.fixed.remove(&i);
            }
        });
        vector
            .into_iter()
            .zip(scalar)
            .map(|(lanes, acc)| {
                let a = self.b.use_var(acc);
                let lanes = self.vacc_total(lanes);
                let total = self.b.ins().fadd(a, lanes);
                self.b.ins().fdemote(types::F32, total)
            })
            .collect()
    }

    /// The terms of four vectors of a sum from `kb` on (0 where the mask fails), added in f32 in order:
    /// the 16-point step of [`Self::reduce_pass`]'s `presum`.
    fn presum(&mut self, body: NodeId, mask: Option<NodeId>, k: IndexId, kb: Value) -> Value {
        let mut total: Option<Value> = None;
        for u in 0..4 {
            let at = self.b.ins().iadd_imm_s(kb, u * simd::LANES);
            let mut memo = HashMap::new();
            let v = self.vvalue(body, k, at, &mut memo);
            let m = mask.map(|m| self.vvalue(m, k, at, &mut memo));
            let v = self.fill_masked(v, m, 0.0);
            total = Some(match total {
                None => v,
                Some(t) => self.b.ins().fadd(t, v),
            });
        }
        total.expect("four vectors")
    }

    /// One pass over a reduction's points where the mask holds: 4 at a time where the reduction has one
    /// index and its body and mask are vectorizable along it (`vector` gets the body's lanes and the mask's),
    /// the rest one by one (`scalar` gets the body's value).
    ///
    /// `presum`: the caller only adds the lanes (a sum or an unmasked mean); 16 points at a time are then
    /// added in f32 four vectors at once before `vector` sees them (one f64 widening per 16 points; each
    /// term passes through at most three f32 additions). `vector` is told how many points it covers.
    #[allow(clippy::too_many_arguments)]
    fn reduce_pass(
        &mut self,
        ranges: &[(IndexId, Dim)],
        mask: Option<NodeId>,
        body: NodeId,
        presum: bool,
        vector: &mut VectorStep<'_, 'a, 'b>,
        scalar: &mut dyn FnMut(&mut Self, Value),
    ) {
        let single = match ranges {
            [(k, _)] => Some(*k),
            _ => None,
        };
        let vec_index = single.filter(|k| self.vectorizable(body, *k) && mask.is_none_or(|m| self.vectorizable(m, *k)));
        let roots: Vec<NodeId> = [Some(body), mask].into_iter().flatten().collect();
        self.hoist_invariants(&roots);
        let mut one = |l: &mut Self| {
            l.masked(mask, &mut |l: &mut Self| {
                let x = l.value(body);
                scalar(l, x);
            })
        };
        let bounds = self.split_bounds.take();
        match vec_index {
            Some(k) => {
                let (zero, end) = match bounds {
                    Some(b) => b,
                    None => (self.b.ins().iconst(types::I64, 0), self.dim(&ranges[0].1)),
                };
                let zero = if presum {
                    self.stepped_loop(k, zero, end, 4 * simd::LANES, &mut |l: &mut Self| {
                        let kb = l.index(k);
                        let total = l.presum(body, mask, k, kb);
                        vector(l, total, None, 4 * simd::LANES);
                    })
                } else {
                    zero
                };
                let times = if light(self.f, body) && mask.is_none_or(|m| light(self.f, m)) {
                    UNROLL
                } else {
                    1
                };
                let tail = self.unrolled_vector_loop(k, zero, end, times, &mut |l: &mut Self, kb| {
                    let mut memo = HashMap::new();
                    let v = l.vvalue(body, k, kb, &mut memo);
                    let m = mask.map(|m| l.vvalue(m, k, kb, &mut memo));
                    vector(l, v, m, simd::LANES);
                });
                self.for_range(k, tail, end, &mut one);
            }
            None => match (bounds, single) {
                (Some((lo, hi)), Some(k)) => self.for_range(k, lo, hi, &mut one),
                _ => self.reduce_loops(ranges, 0, &mut one),
            },
        }
    }

    /// `m` (a maximum of the body's values over `ranges` that skipped NaN), or NaN when it is not finite and
    /// some value is NaN: what `fmax` over them gives where the difference matters. The scan runs in a
    /// cold block.
    fn nan_if_any_when_infinite(&mut self, m: Value, ranges: &[(IndexId, Dim)], body: NodeId) -> Value {
        let finite = self.finite(m);
        let scan = self.b.create_block();
        let join = self.b.create_block();
        let result = self.b.append_block_param(join, types::F32);
        self.b.ins().brif(finite, join, &[m.into()], scan, &[]);
        self.b.set_cold_block(scan);
        self.b.switch_to_block(scan);
        let seen = self.b.declare_var(types::I8);
        let no = self.b.ins().iconst(types::I8, 0);
        self.b.def_var(seen, no);
        self.frames.push(HashMap::new());
        self.reduce_loops(ranges, 0, &mut |l: &mut Self| {
            let x = l.value(body);
            let nan = l.b.ins().fcmp(FloatCC::Unordered, x, x);
            let before = l.b.use_var(seen);
            let now = l.b.ins().bor(before, nan);
            l.b.def_var(seen, now);
        });
        self.frames.pop();
        let any = self.b.use_var(seen);
        let nan = self.fconst(f32::NAN);
        let m = self.b.ins().select(any, nan, m);
        self.b.ins().jump(join, &[m.into()]);
        self.b.switch_to_block(join);
        result
    }

    /// Whether an f32 is finite (`|x| < inf`; false for NaN).
    fn finite(&mut self, x: Value) -> Value {
        let inf = self.fconst(f32::INFINITY);
        let size = self.b.ins().fabs(x);
        self.b.ins().fcmp(FloatCC::LessThan, size, inf)
    }

    /// Runs `body` where the mask holds (always without a mask), in its own scope.
    fn masked(&mut self, mask: Option<NodeId>, body: &mut dyn FnMut(&mut Self)) {
        match mask {
            None => body(self),
            Some(m) => {
                let c = self.value(m);
                let yes = self.b.create_block();
                let next = self.b.create_block();
                self.b.ins().brif(c, yes, &[], next, &[]);
                self.b.switch_to_block(yes);
                self.frames.push(HashMap::new());
                body(self);
                self.frames.pop();
                self.b.ins().jump(next, &[]);
                self.b.switch_to_block(next);
            }
        }
    }

    fn reduce(&mut self, op: ReduceOp, indices: &[IndexId], mask: Option<NodeId>, body: NodeId) -> Value {
        if op == ReduceOp::LogSumExp && cheap(self.f, body) {
            let ranges: Vec<(IndexId, Dim)> = indices.iter().map(|i| (*i, self.f.index(*i).range.clone())).collect();
            return self.logsumexp_two_pass(&ranges, mask, body);
        }
        if let ([k], None, ReduceOp::ArgMax | ReduceOp::ArgMin) = (indices, mask, op)
            && self.vectorizable(body, *k)
            && light(self.f, body)
        {
            return self.arg_extreme_two_pass(op == ReduceOp::ArgMax, *k, body);
        }
        let f64v = |l: &mut Self, x: f64| l.b.ins().f64const(x);
        let acc = self.b.declare_var(types::F64);
        let aux = self.b.declare_var(types::F64);
        let count = self.b.declare_var(types::I64);
        let pos = self.b.declare_var(types::I64);
        let nan = self.b.declare_var(types::I8);
        let init = match op {
            ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Count | ReduceOp::LogSumExp => 0.0,
            ReduceOp::Prod => 1.0,
            ReduceOp::Max | ReduceOp::ArgMax => f64::NEG_INFINITY,
            ReduceOp::Min | ReduceOp::ArgMin => f64::INFINITY,
        };
        let v0 = f64v(self, init);
        self.b.def_var(acc, v0);
        let m0 = f64v(self, f64::NEG_INFINITY);
        self.b.def_var(aux, m0);
        let z = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(count, z);
        let best = self.b.ins().iconst(types::I64, -1);
        self.b.def_var(pos, best);
        let no = self.b.ins().iconst(types::I8, 0);
        self.b.def_var(nan, no);
        let ranges: Vec<(IndexId, Dim)> = indices.iter().map(|i| (*i, self.f.index(*i).range.clone())).collect();
        // The flat position within the reduction, counted in row-major order (for arg-max).
        let flat = self.b.declare_var(types::I64);
        let z = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(flat, z);
        let simple =
            matches!(op, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min) || (op == ReduceOp::Mean && mask.is_none());
        // A plain sum of exponentials whose consumer reads them: each goes to the consumer's row as well
        // (where the mask holds; the consumer reads them only there).
        let keep = match (op, &ranges[..]) {
            (ReduceOp::Sum, [(k, _)]) if self.keep_exps.as_ref().is_some_and(|keep| keep.plain) => {
                self.keep_exps.take().map(|keep| self.kept_row_start(*k, keep))
            }
            _ => None,
        };
        if simple && ranges.len() == 1 {
            let vsum = self.vacc_sum();
            let vext = self.vext_new(op == ReduceOp::Max, true);
            self.reduce_pass(
                &ranges,
                mask,
                body,
                // Unrolled four times: only for a cheap body (a costly one hides the widening anyway), and
                // not when each value is kept.
                matches!(op, ReduceOp::Sum | ReduceOp::Mean) && cheap(self.f, body) && keep.is_none(),
                &mut |l: &mut Self, v, lanes_mask, points| {
                    if let Some((k, keep, start)) = &keep {
                        let flat = l.kept_at(*k, *start);
                        l.vstore(keep.buffer, flat, v);
                    }
                    let fill = match op {
                        ReduceOp::Max => f32::NEG_INFINITY,
                        ReduceOp::Min => f32::INFINITY,
                        _ => 0.0,
                    };
                    let v = l.fill_masked(v, lanes_mask, fill);
                    match op {
                        ReduceOp::Max | ReduceOp::Min => l.vext_add(vext, v),
                        _ => l.vacc_add(vsum, v),
                    }
                    if op == ReduceOp::Mean {
                        let c = l.b.use_var(count);
                        let c = l.b.ins().iadd_imm_s(c, points);
                        l.b.def_var(count, c);
                    }
                },
                &mut |l: &mut Self, v| {
                    if let Some((k, keep, start)) = &keep {
                        let at = l.kept_at(*k, *start);
                        l.store(keep.buffer, Scalar::Float, at, v);
                    }
                    l.accumulate(op, v, acc, aux, count, pos, nan, flat)
                },
            );
            if let Some((_, keep, _)) = &keep {
                // The consumer reads them as they are.
                let one = self.fconst(1.0);
                self.leave_factor(keep, one);
            }
            // Fold the vector accumulators into the scalar one.
            let a = self.b.use_var(acc);
            let r = match op {
                ReduceOp::Max | ReduceOp::Min => {
                    let lanes = self.vext_fold(vext);
                    let lanes = self.b.ins().fpromote(types::F64, lanes);
                    if op == ReduceOp::Max {
                        self.b.ins().fmax(a, lanes)
                    } else {
                        self.b.ins().fmin(a, lanes)
                    }
                }
                _ => {
                    let lanes = self.vacc_total(vsum);
                    self.b.ins().fadd(a, lanes)
                }
            };
            self.b.def_var(acc, r);
        } else {
            self.reduce_loops(&ranges, 0, &mut |l: &mut Self| {
                l.masked(mask, &mut |l: &mut Self| {
                    let v = l.value(body);
                    l.accumulate(op, v, acc, aux, count, pos, nan, flat);
                });
                let p = l.b.use_var(flat);
                let p1 = l.b.ins().iadd_imm_s(p, 1);
                l.b.def_var(flat, p1);
            });
        }
        let a = self.b.use_var(acc);
        match op {
            ReduceOp::Count => self.b.use_var(count),
            ReduceOp::ArgMax | ReduceOp::ArgMin => self.b.use_var(pos),
            ReduceOp::Sum | ReduceOp::Prod | ReduceOp::Max | ReduceOp::Min => self.b.ins().fdemote(types::F32, a),
            ReduceOp::Mean => {
                let c = self.b.use_var(count);
                let c = self.b.ins().fcvt_from_sint(types::F64, c);
                let m = self.b.ins().fdiv(a, c);
                self.b.ins().fdemote(types::F32, m)
            }
            ReduceOp::LogSumExp => {
                // acc = sum of exp(x - m), aux = m; empty or all -inf gives -inf; +inf gives +inf; NaN stays.
                let m = self.b.use_var(aux);
                let l = self.call("lossc_log", &[a]);
                let r = self.b.ins().fadd(m, l);
                let finite = self.b.ins().fcmp(FloatCC::Equal, m, m);
                let inf = f64v(self, f64::INFINITY);
                let is_inf = self.b.ins().fcmp(FloatCC::Equal, m, inf);
                let ninf = f64v(self, f64::NEG_INFINITY);
                let is_ninf = self.b.ins().fcmp(FloatCC::Equal, m, ninf);
                let special = self.b.ins().bor(is_inf, is_ninf);
                let r = self.b.ins().select(special, m, r);
                let nan_seen = self.b.use_var(nan);
                let nanv = f64v(self, f64::NAN);
                let r = self.b.ins().select(nan_seen, nanv, r);
                let _ = finite;
                self.b.ins().fdemote(types::F32, r)
            }
        }
    }

    /// `argmax[k] body` (`argmin`) of a body computed lane-wise, in two vector passes: the extreme value `m`
    /// (NaN if any value is), then the first position whose value is `m` (the first NaN when `m` is NaN),
    /// found as the first vector with a matching lane and the lowest such lane. That is the scalar
    /// accumulator's answer (the first maximum; a NaN wins and stops it; -1 when empty).
    fn arg_extreme_two_pass(&mut self, max: bool, k: IndexId, body: NodeId) -> Value {
        let op = if max { ReduceOp::Max } else { ReduceOp::Min };
        let m = match self.known_extreme(max, k, body) {
            Some(m) => m,
            None => self.reduce(op, &[k], None, body),
        };
        let m_is_nan = self.b.ins().fcmp(FloatCC::Unordered, m, m);
        let none = self.b.ins().iconst(types::I64, -1);
        let (first_block, first_lanes) = (self.b.declare_var(types::I64), self.b.declare_var(types::I32));
        self.b.def_var(first_block, none);
        let zero32 = self.b.ins().iconst(types::I32, 0);
        self.b.def_var(first_lanes, zero32);
        let pos = self.b.declare_var(types::I64);
        self.b.def_var(pos, none);
        let (mv, nan_v) = (
            self.b.ins().splat(types::F32X4, m),
            self.b.ins().bmask(types::I32, m_is_nan),
        );
        let nan_v = self.b.ins().splat(types::I32X4, nan_v);
        let end = self.dim(&self.f.index(k).range.clone());
        let start = self.b.ins().iconst(types::I64, 0);
        self.hoist_invariants(&[body]);
        let tail = self.vector_loop(k, start, end, &mut |l: &mut Self, kb| {
            let mut memo = HashMap::new();
            let v = l.vvalue(body, k, kb, &mut memo);
            let equal = l.b.ins().fcmp(FloatCC::Equal, v, mv);
            let unordered = l.b.ins().fcmp(FloatCC::Unordered, v, v);
            let nan_match = l.b.ins().band(unordered, nan_v);
            let matched = l.b.ins().bor(equal, nan_match);
            let lanes = l.b.ins().vhigh_bits(types::I32, matched);
            let found = l.b.use_var(first_block);
            let unset = l.b.ins().icmp_imm_s(IntCC::Equal, found, -1);
            let any = l.b.ins().icmp_imm_s(IntCC::NotEqual, lanes, 0);
            let take = l.b.ins().band(unset, any);
            let block = l.b.ins().select(take, kb, found);
            l.b.def_var(first_block, block);
            let kept = l.b.use_var(first_lanes);
            let kept = l.b.ins().select(take, lanes, kept);
            l.b.def_var(first_lanes, kept);
        });
        self.for_range(k, tail, end, &mut |l: &mut Self| {
            let x = l.value(body);
            let equal = l.b.ins().fcmp(FloatCC::Equal, x, m);
            let unordered = l.b.ins().fcmp(FloatCC::Unordered, x, x);
            let nan_match = l.b.ins().band(unordered, m_is_nan);
            let matched = l.b.ins().bor(equal, nan_match);
            let found = l.b.use_var(pos);
            let unset = l.b.ins().icmp_imm_s(IntCC::Equal, found, -1);
            let take = l.b.ins().band(unset, matched);
            let here = l.index(k);
            let p = l.b.ins().select(take, here, found);
            l.b.def_var(pos, p);
        });
        // A vector match comes before any tail match.
        let block = self.b.use_var(first_block);
        let lanes = self.b.use_var(first_lanes);
        let lane = self.b.ins().ctz(lanes);
        let lane = self.b.ins().uextend(types::I64, lane);
        let in_vectors = self.b.ins().iadd(block, lane);
        let vector_found = self.b.ins().icmp_imm_s(IntCC::NotEqual, block, -1);
        let tail_pos = self.b.use_var(pos);
        self.b.ins().select(vector_found, in_vectors, tail_pos)
    }

    /// The value of `max[k] body` (`min`) at the current row when an earlier member of the group holds it.
    fn known_extreme(&mut self, max: bool, k: IndexId, body: NodeId) -> Option<Value> {
        let row = *self.bound.first()?;
        let found = self.extremes.iter().find(|e| {
            e.max == max
                && self
                    .f
                    .same_renamed(e.body, body, &HashMap::from([(e.row, row), (e.index, k)]))
        })?;
        let buffer = found.buffer;
        let at = self.index(row);
        let addr = self.address(buffer, Scalar::Float, at);
        Some(self.b.ins().load(types::F32, flags(), addr, 0))
    }

    fn reduce_loops(&mut self, ranges: &[(IndexId, Dim)], level: usize, body: &mut dyn FnMut(&mut Self)) {
        if level == ranges.len() {
            body(self);
            return;
        }
        let (i, d) = ranges[level].clone();
        let zero = self.b.ins().iconst(types::I64, 0);
        let end = self.dim(&d);
        self.for_range(i, zero, end, &mut |l: &mut Self| {
            l.reduce_loops(ranges, level + 1, body)
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn accumulate(
        &mut self,
        op: ReduceOp,
        v: Value,
        acc: Variable,
        aux: Variable,
        count: Variable,
        pos: Variable,
        nan: Variable,
        flat: Variable,
    ) {
        match op {
            ReduceOp::Count => {
                let c = self.b.use_var(count);
                let one = self.b.ins().uextend(types::I64, v);
                let c = self.b.ins().iadd(c, one);
                self.b.def_var(count, c);
            }
            ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Prod | ReduceOp::Max | ReduceOp::Min => {
                let x = self.b.ins().fpromote(types::F64, v);
                let a = self.b.use_var(acc);
                let r = match op {
                    ReduceOp::Sum | ReduceOp::Mean => self.b.ins().fadd(a, x),
                    ReduceOp::Prod => self.b.ins().fmul(a, x),
                    ReduceOp::Max => self.b.ins().fmax(a, x),
                    _ => self.b.ins().fmin(a, x),
                };
                self.b.def_var(acc, r);
                if op == ReduceOp::Mean {
                    let c = self.b.use_var(count);
                    let c = self.b.ins().iadd_imm_s(c, 1);
                    self.b.def_var(count, c);
                }
            }
            ReduceOp::LogSumExp => {
                // Online: with m the running max and s = sum exp(x - m):
                // x > m: s = s * exp(m - x) + 1, m = x;  else s += exp(x - m) (0 when x - m is NaN).
                let x = self.b.ins().fpromote(types::F64, v);
                let (s, m) = (self.b.use_var(acc), self.b.use_var(aux));
                let isnan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
                let seen = self.b.use_var(nan);
                let seen = self.b.ins().bor(seen, isnan);
                self.b.def_var(nan, seen);
                let gt = self.b.ins().fcmp(FloatCC::GreaterThan, x, m);
                let hi = self.b.ins().select(gt, x, m);
                let lo = self.b.ins().select(gt, m, x);
                let d = self.b.ins().fsub(lo, hi);
                let d32 = self.b.ins().fdemote(types::F32, d);
                let e = self.exp_lanes(d32, false);
                let e = self.b.ins().fpromote(types::F64, e);
                let zero = self.b.ins().f64const(0.0);
                let ok = self.b.ins().fcmp(FloatCC::Equal, d, d);
                let e = self.b.ins().select(ok, e, zero);
                let one = self.b.ins().f64const(1.0);
                let scaled = self.b.ins().fmul(s, e);
                let grown = self.b.ins().fadd(scaled, one);
                let added = self.b.ins().fadd(s, e);
                let s2 = self.b.ins().select(gt, grown, added);
                self.b.def_var(acc, s2);
                self.b.def_var(aux, hi);
            }
            ReduceOp::ArgMax | ReduceOp::ArgMin => {
                let x = self.b.ins().fpromote(types::F64, v);
                let best = self.b.use_var(acc);
                let p = self.b.use_var(pos);
                let seen = self.b.use_var(nan);
                let cc = if op == ReduceOp::ArgMax {
                    FloatCC::GreaterThan
                } else {
                    FloatCC::LessThan
                };
                let better = self.b.ins().fcmp(cc, x, best);
                let first = self.b.ins().icmp_imm_s(IntCC::Equal, p, -1);
                let isnan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
                let take = self.b.ins().bor(better, first);
                let take = self.b.ins().bor(take, isnan);
                let not_seen = self.b.ins().icmp_imm_s(IntCC::Equal, seen, 0);
                let take = self.b.ins().band(take, not_seen);
                let here = self.b.use_var(flat);
                let p2 = self.b.ins().select(take, here, p);
                let b2 = self.b.ins().select(take, x, best);
                let seen2 = self.b.ins().band(take, isnan);
                let seen2 = self.b.ins().bor(seen, seen2);
                self.b.def_var(pos, p2);
                self.b.def_var(acc, b2);
                self.b.def_var(nan, seen2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::data::Rng;
    use crate::{Backend, Compiler, Tensor};

    /// The optimized function of the one loss in `src` (what `build` compiles), and the interpreter's module.
    fn function_and_interpreter(src: &str) -> (Function, crate::kernel::Module) {
        let jit = Compiler::new().compile_source("t.lx", src).unwrap();
        let f = jit.kernel(None).unwrap().function().clone();
        (
            f,
            Compiler::new()
                .backend(Backend::Interp)
                .compile_source("t.lx", src)
                .unwrap(),
        )
    }

    /// A map whose element is a sigmoid runs through the 8-lane row helper with the bits of the 4-lane code:
    /// the kernel with and without it agrees to the bit, special values and every block and tail length
    /// included (and with the interpreter).
    #[test]
    fn sigmoid_maps_have_the_same_bits_with_and_without_the_row_helper() {
        let src = "loss f(p: f32[N]) { let a[i] = sigmoid(3.0 * p[i] - 1.0)\n sum[i] a[i] * a[i] + 0.5 * a[i] }";
        let (f, interp) = function_and_interpreter(src);
        let special = [
            0.0,
            -0.0,
            29.6,
            -29.3,
            30.0,
            -30.0,
            29.7,
            100.0,
            -100.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut rng = Rng::new(8);
        for n in [1usize, 7, 8, 12, 31, 32, 45, 77, 200] {
            let mut p: Vec<f64> = (0..n).map(|_| 3.0 * rng.normal()).collect();
            for (k, x) in special.iter().enumerate().filter(|(k, _)| *k < n) {
                p[(k * 7) % n] = *x;
            }
            let inputs = BTreeMap::from([("p".to_string(), Tensor::float(vec![n], p))]);
            let bound = crate::call::bind(&f, &inputs, &BTreeMap::new()).unwrap();
            let runs: Vec<Evaluation> = [false, rows::available()]
                .into_iter()
                .map(|helper| {
                    build(&f, None, helper, Functions::Undeferred)
                        .unwrap()
                        .run(&bound, 1)
                        .unwrap()
                })
                .collect();
            let bits = |e: &Evaluation| {
                let grads = e.grads[0].1.to_f64().into_iter().map(f64::to_bits);
                std::iter::once(e.loss.to_bits()).chain(grads).collect::<Vec<u64>>()
            };
            assert_eq!(bits(&runs[0]), bits(&runs[1]), "n = {n}");
            let want = interp.kernel(None).unwrap().eval(&inputs).unwrap();
            assert!(
                (runs[1].loss - want.loss).abs() <= 1e-5 * want.loss.abs().max(1.0),
                "n = {n}"
            );
        }
        // A NaN stays NaN.
        let inputs = BTreeMap::from([("p".to_string(), Tensor::float(vec![9], vec![f64::NAN; 9]))]);
        let bound = crate::call::bind(&f, &inputs, &BTreeMap::new()).unwrap();
        let e = build(&f, None, rows::available(), Functions::Undeferred)
            .unwrap()
            .run(&bound, 1)
            .unwrap();
        assert!(e.loss.is_nan());
    }

    /// Softmax rows with and without the 8-lane row helper agree with each other and the interpreter
    /// (so machines without AVX2 run tested code too).
    #[test]
    fn softmax_rows_agree_with_and_without_the_row_helper() {
        let src = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }";
        let (f, interp) = function_and_interpreter(src);
        let mut rng = Rng::new(35);
        let (n, c) = (9usize, 37usize);
        let inputs = BTreeMap::from([
            (
                "s".to_string(),
                Tensor::float(vec![n, c], (0..n * c).map(|_| 4.0 * rng.normal()).collect()),
            ),
            (
                "y".to_string(),
                Tensor::labels(vec![n], (0..n).map(|_| rng.below(c as u64) as i64).collect()),
            ),
        ]);
        let bound = crate::call::bind(&f, &inputs, &BTreeMap::new()).unwrap();
        let interp = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        for exp_rows in [false, rows::available()] {
            let e = build(&f, None, exp_rows, Functions::Undeferred)
                .unwrap()
                .run(&bound, 2)
                .unwrap();
            assert!(
                (e.loss - interp.loss).abs() <= 1e-5 * interp.loss.abs().max(1.0),
                "{exp_rows}"
            );
            let (got, want) = (e.grads[0].1.to_f64(), interp.grads[0].1.to_f64());
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6, "row helper {exp_rows}: {a} vs {b}");
            }
        }
    }

    /// A lane pool's entries keep their address and value as it grows by chunks, each 16-byte aligned
    /// and each chunk on whole cache lines.
    #[test]
    fn lane_pool_entries_stay_put_aligned_and_intact() {
        let mut pool = LanePool::default();
        let added: Vec<([u32; 4], i64)> = (0..3 * LANE_CHUNK as u32 + 5)
            .map(|k| {
                let lanes = [k, k ^ 0xdead, !k, k.wrapping_mul(2_654_435_761)];
                let (chunk, offset) = pool.add(lanes);
                assert_eq!(chunk % 64, 0, "chunk of entry {k}");
                assert_eq!(offset % 16, 0, "offset of entry {k}");
                (lanes, chunk + i64::from(offset))
            })
            .collect();
        assert_eq!(pool.chunks.len(), 4);
        for (lanes, at) in added {
            // SAFETY: `at` is an entry of `pool`, which is alive and whose chunks never move.
            assert_eq!(unsafe { *(at as *const [u32; 4]) }, lanes);
        }
    }

    /// Vector constants are loads from the lane pool, not `vconst`s (which Cranelift hoists to the top of
    /// the function), and the loads sit in loop preheaders, not all in the entry block.
    #[test]
    fn vector_constants_are_loaded_before_their_loops() {
        let src = "loss f(s: f32[N, C]) { mean[i] sum[k] softplus(s[i, k] - 0.25) * tanh(2.0 * s[i, k]) }";
        let (f, _) = function_and_interpreter(src);
        let text = clif(&f).unwrap();
        assert!(!text.contains("vconst"), "{text}");
        let mut block = String::new();
        let (mut at_entry, mut in_loops) = (0, 0);
        for line in text.lines() {
            if line.starts_with("block") {
                block = line
                    .split('(')
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches(':')
                    .to_string();
            }
            if line.contains("load.f32x4 notrap aligned") && line.contains("; v") {
                match block.as_str() {
                    "block0" => at_entry += 1,
                    _ => in_loops += 1,
                }
            }
        }
        assert!(
            in_loops > 0 && in_loops > at_entry,
            "{at_entry} at entry, {in_loops} later:\n{text}"
        );
    }
}

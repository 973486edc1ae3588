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
//! reports [`crate::CallError::IndexOutOfRange`]; no generated load or store leaves its buffer.
//!
//! Parallelism: the outermost loop of each group is split into chunks handed to the threads of a kept
//! rayon pool (sized by the work per row, never by the thread count); each element is computed by
//! exactly one call. A group of
//! sums over one index ([`super::loops::split_members`]) run as fixed chunks of partial sums added in chunk order. So
//! results are bit-identical for any number of threads. A row-private tensor
//! ([`super::loops::Plan::row_private`]) is one row of scratch per worker: each worker's pointer table
//! points the buffer there, and the group's row loop moves its base back by the row's offset, so the
//! ordinary row-major addresses of the current row land in it. A tensor with a host
//! ([`super::loops::Plan::host`]: a later reader of its own elements only) has its host's pointer.
//! A streamed program ([`compile_streaming`]) runs on [`Plan::streaming_tiled`]: a pipeline of groups
//! runs a block of rows at a time through all of them, its tiles (the Gram rows) and its products (a
//! row of pairs times a matrix) as sgemm calls per block, and each buffer it holds a block of
//! ([`super::loops::Plan::tiled`]) is a block of scratch per worker, its pointer moved back by the
//! block's first row in a table patched for the block.
//!
//! Placement: Cranelift's egraph places pure code at its uses and hoists it out of loops, but never moves a
//! load, so the lowering computes before each loop what the bound indices determine
//! (`Lower::hoist_invariants`). The egraph's loop-invariant code motion only works when it visits a
//! loop's body before the loop's exit (in 0.135 visiting the exit first drops the loop from its loop
//! stack): every conditional branch whose first target leaves the loop makes the body its second target,
//! which the egraph visits first. A group's row index is read as the row loop's value, not through a
//! variable, so no inner loop carries it as a block parameter and what it determines is hoisted. A
//! vector constant, which the egraph would hoist to the function's top (live across every loop and helper
//! call, so spilled), is a load in the preheader of the innermost loop that uses it (`LanePool`).
//!
//! Loop shape: every loop is rotated (one test before it, one at the bottom of each iteration), and a
//! light body's vector loop runs two vectors per iteration (`UNROLL`): a row's simple passes (its max,
//! a light gradient row, a row sum) are otherwise bound by the front end, one
//! taken branch and the counting per vector, and their speed would hang on where the loop happens to sit
//! in the code (Cranelift does not align loops).
//!
//! Files, one concern each: build.rs (which groups get code, the Cranelift module, parallel compilation),
//! run.rs (buffers, groups over the worker pool, errors, results), lower.rs (a group's loops, elements,
//! loads, primitives, kept rows, one-hot terms), reduce.rs (reduction strategies and accumulators),
//! simd.rs (4-lane loops), math.rs (inline transcendental functions), rows.rs (8-lane row helpers),
//! gemm.rs (matrix products as sgemm).
//!
//! Debugging: `LOSSC_DUMP_OPT=1` prints each group's CLIF after Cranelift's optimizations and
//! `LOSSC_DUMP_ASM=1` its machine code, `LOSSC_PROFILE=1` each group's compile time and run time, on
//! stderr; `LOSSC_DUMP_BIN=DIR` writes each group's machine code to `DIR/group<k>.bin` (for `objdump -b
//! binary -m i386:x86-64 -D`, to match `perf` samples against the perf map's addresses).

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use cranelift_codegen::ir::{self, MemFlagsData, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use cranelift_jit::JITModule;

mod build;
mod distance;
mod gemm;
mod ints;
mod lower;
mod math;
mod object;
mod reduce;
mod rows;
mod run;
mod simd;

use build::*;
pub use build::{Schedule, chunk_constants, chunk_rows};
pub use object::{ObjectKernel, elem_bytes, object};
pub use rows::{avx2_fma, build as row_build};

use super::loops::{Contraction, OneHot, Plan, cheap, few_steps, few_steps_reading};
use crate::ir::{Dim, Function, IndexId, NodeId};

/// Why JIT compilation failed (an internal limit or a Cranelift error; never user input).
#[derive(Debug, thiserror::Error)]
#[error("JIT compilation failed: {0}")]
pub struct JitError(String);

/// The signature of every generated nest function.
type NestFn = unsafe extern "C" fn(*const *mut u8, *const i64, *const f64, *mut i64, i64, i64, *mut f32);

/// Columns per tile of an elementwise nest that reads a matrix transposed.
const TILE: i64 = 16;

/// The fewest rows in a parallel chunk of such a nest ([`chunk_rows`]): at 2,048 columns 8 rows ran a
/// symmetrised matrix in half the time of 2 (the chunk [`MIN_CHUNK_ELEMENTS`] makes), and 16 rows no
/// faster than 8 (slower at 1,024 columns).
const TILED_CHUNK_ROWS: i64 = 8;

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
    /// Per group: how its chunks are sized.
    schedules: Vec<Schedule>,
    /// Per group: the matrix product it is, run as sgemm ([`gemm`]) where the call allows.
    products: Vec<Option<Contraction>>,
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
/// Entries are 16-byte aligned and never move. Constant tables ([`crate::ir::Expr::Table`]) live here
/// too, as consecutive entries ([`LanePool::add_table`]).
enum LanePool {
    /// The JIT's: blocks of chunks in this process's memory (boxed, never reallocated; one chunk each but
    /// for a table longer than one), addressed by constants.
    Host { chunks: Vec<Box<[LaneChunk]>>, used: usize },
    /// An object file's (one per function): the contents of a data object, addressed through its symbol.
    Object { symbol: ir::GlobalValue, lanes: Vec<Lanes> },
}

impl Default for LanePool {
    fn default() -> Self {
        LanePool::Host {
            chunks: Vec::new(),
            used: 0,
        }
    }
}

/// Where a vector constant is ([`LanePool::add`]): a base and the offset from it.
#[derive(Clone, Copy)]
enum LanePlace {
    /// At a chunk's address (a constant) plus the offset.
    Host(i64, i32),
    /// At the data object's symbol plus the offset.
    Object(ir::GlobalValue, i32),
}

/// Whole cache lines of constants: no line is shared with data that another thread may write.
#[repr(C, align(64))]
struct LaneChunk([Lanes; LANE_CHUNK]);

const LANE_CHUNK: usize = 256;

#[repr(C, align(16))]
#[derive(Clone, Copy, Default)]
struct Lanes([u32; 4]);

impl LanePool {
    /// A new copy of `lanes`, and where it is.
    fn add(&mut self, lanes: [u32; 4]) -> LanePlace {
        self.add_all(&[Lanes(lanes)])
    }

    /// A table of 32-bit words (zero-padded to whole entries), consecutive from the place returned.
    fn add_table(&mut self, words: &[u32]) -> LanePlace {
        let entries: Vec<Lanes> = words
            .chunks(4)
            .map(|w| {
                let mut lanes = [0; 4];
                lanes[..w.len()].copy_from_slice(w);
                Lanes(lanes)
            })
            .collect();
        self.add_all(&entries)
    }

    /// Consecutive new entries, and where the first is.
    fn add_all(&mut self, entries: &[Lanes]) -> LanePlace {
        let size = std::mem::size_of::<Lanes>();
        match self {
            LanePool::Host { chunks, used } => {
                let room = chunks.last().map_or(0, |c| c.len() * LANE_CHUNK);
                if *used + entries.len() > room {
                    let n = entries.len().div_ceil(LANE_CHUNK).max(1);
                    chunks.push((0..n).map(|_| LaneChunk([Lanes::default(); LANE_CHUNK])).collect());
                    *used = 0;
                }
                let block = chunks.last_mut().expect("a block was just pushed");
                let at = *used;
                for (k, e) in entries.iter().enumerate() {
                    block[(at + k) / LANE_CHUNK].0[(at + k) % LANE_CHUNK] = *e;
                }
                *used += entries.len();
                LanePlace::Host(block.as_ptr() as i64, (at * size) as i32)
            }
            LanePool::Object { symbol, lanes: all } => {
                all.extend_from_slice(entries);
                LanePlace::Object(*symbol, ((all.len() - entries.len()) * size) as i32)
            }
        }
    }

    /// An object pool's contents, as the bytes of its data object (at least one entry: a data object is
    /// never empty).
    fn bytes(&self) -> Vec<u8> {
        match self {
            LanePool::Host { .. } => Vec::new(),
            LanePool::Object { lanes, .. } => {
                let one = [Lanes::default()];
                let lanes = if lanes.is_empty() { &one[..] } else { lanes };
                lanes
                    .iter()
                    .flat_map(|l| l.0.iter().flat_map(|w| w.to_le_bytes()))
                    .collect()
            }
        }
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
    lossc_cosf: f32 => f32::cos;
    lossc_sinf: f32 => f32::sin;
    lossc_acosf: f32 => f32::acos;
    lossc_log: f64 => f64::ln;
}

extern "C" fn lossc_powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}

/// Compiles an optimized function.
pub fn compile(f: &Function) -> Result<Compiled, JitError> {
    build(f, Plan::new(f), None, rows::available(), Functions::Undeferred)
}

/// Compiles a function whose pairwise tensors are streamed ([`crate::opt::stream::rows`]) on its
/// [`Plan::streaming_tiled`]: each copy of a pairwise tensor row-private in its reader's group, or a block
/// of rows of a pipeline's.
pub fn compile_streaming(f: &Function) -> Result<Compiled, JitError> {
    build(
        f,
        Plan::streaming_tiled(f),
        None,
        rows::available(),
        Functions::Undeferred,
    )
}

/// `--emit clif`: the Cranelift IR of every nest function, before Cranelift's own optimizations.
pub fn clif(f: &Function) -> Result<String, JitError> {
    let mut text = String::new();
    build(f, Plan::new(f), Some(&mut text), rows::available(), Functions::All)?;
    Ok(text)
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
    /// What f32 rounded off the last logsumexp lowered (its exact value minus its f32 value), for a nest
    /// whose residual the plan keeps ([`super::loops::Residual`]).
    residual: Option<Value>,
    /// The same for the lanes of a logsumexp lowered lane-wise (simd.rs `vreduce`), and the residual
    /// buffer of the nest whose run stores them.
    lane_residual: Option<Value>,
    vector_residual: Option<usize>,
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
    /// Whether the function runs an elementwise nest in tiles of columns over its chunk's rows
    /// ([`Lower::column_major_nest`]): its chunks take [`TILED_CHUNK_ROWS`] rows at least.
    tiled_rows: bool,
    /// Where the constant tables lowered so far lie in the lane pool ([`Lower::table_address`]).
    tables: HashMap<(std::sync::Arc<[u64]>, crate::ir::Scalar), LanePlace>,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::interp::Evaluation;
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
                    build(&f, Plan::new(&f), None, helper, Functions::Undeferred)
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
        let e = build(&f, Plan::new(&f), None, rows::available(), Functions::Undeferred)
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
            let e = build(&f, Plan::new(&f), None, exp_rows, Functions::Undeferred)
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
                let LanePlace::Host(chunk, offset) = pool.add(lanes) else {
                    panic!("a host pool gives host places")
                };
                assert_eq!(chunk % 64, 0, "chunk of entry {k}");
                assert_eq!(offset % 16, 0, "offset of entry {k}");
                (lanes, chunk + i64::from(offset))
            })
            .collect();
        assert!(matches!(&pool, LanePool::Host { chunks, .. } if chunks.len() == 4));
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

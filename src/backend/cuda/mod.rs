//! The CUDA backend: the loop [`Plan`] lowered to CUDA C, one `__global__` kernel per group, compiled at
//! run time by NVRTC and launched through the CUDA driver (cudarc, behind the `cuda` feature).
//!
//! Generating the source needs no CUDA library (`lossc compile FILE --emit cuda` works in every build);
//! only running it does. [`host`] is the host side shared by every device: buffers, launch order and
//! geometry, the bounds-check flag, results. It drives any [`host::Device`]: the CUDA driver
//! (`driver.rs`), or the emulation of the tests, which compiles the same source with the host C++
//! compiler against a header that runs each block's threads as OS threads.
//!
//! A kernel's launch shape ([`Shape`]) follows its group:
//! - `Flat`: one nest without reductions: one thread per element, grid-stride over all of them.
//! - `ThreadRows`: several vectors (one element per row) without reductions: one thread per row, each
//!   running every member for its row in turn.
//! - `BlockRows`: a row-fused group: one block per row (grid-stride over rows); each member's elements
//!   of the row are spread over the block's threads, and each reduction that depends on the row only is
//!   computed by the whole block (strided partials, then a warp-shuffle tree and the warps in order);
//!   `__syncthreads` between members, so a member reads the earlier members' row complete.
//! - `WarpRows`: the same group over short rows (a warp per row), chosen per call by the host.
//! - `Single`: rank-0 nests (the loss, a mean over the batch): one block.
//! - `Tiled`: a plain matrix product or pairwise squared distances (a [`crate::backend::loops::Contraction`]): shared-memory tiles.
//! - `Parts` then `Total`: a group of sibling sums over one index (AnyLoss's sigmoids and their three
//!   sums): blocks over fixed chunks of the index, one f64 partial per chunk and sum, added in chunk
//!   order by one block (the result does not depend on the grid).
//!
//! Kernel ABI: `(void* const* buffers, const long long* dims, const double* hypers,
//! unsigned long long* err)`, all device pointers: the buffer table (inputs, then one per tensor, as
//! [`Plan::buffers`]), the sizes of the dimension symbols, the hyperparameters, and the bounds-check
//! flag (node + 1, axis, value of the first subscript found out of range).
//!
//! Storage: floats as f32, integers as i64, conditions as i32 (0 or 1). Every tensor has a buffer of its
//! own. A row-private tensor ([`Plan::row_private`]) of a block-rows group has one row per running block
//! or warp instead of one per row ([`Program::slotted`]): a block (a warp) computes one row at a time and
//! addresses it at its slot, `blockIdx.x` (`blockIdx.x · warps per block + warp`), so its buffer holds as
//! many rows as the launch has slots (the grid is at most [`host::Device::max_grid`] blocks): memory
//! linear in the batch for a streamed pairwise loss ([`crate::opt::stream`]). The plan's hosts are a
//! permission the CUDA generator does not use yet.

pub mod host;

#[cfg(feature = "cuda")]
pub mod driver;

mod codegen;

pub use codegen::{KEEP_MAX, LABEL_FLAG};

use crate::backend::loops::Plan;
use crate::ir::{Dim, Function};

/// The helpers every generated kernel uses (prepended to the generated source).
pub const PRELUDE: &str = include_str!("prelude.cuh");

/// How a kernel's threads cover its group (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One thread per element (elementwise groups).
    Flat,
    /// One thread per row.
    ThreadRows,
    /// One block per row; reductions over the row are shared by the block.
    BlockRows,
    /// One thread (a rank-0 group).
    Single,
    /// A group of sibling sums over one index (after the map they read, if any): blocks over fixed
    /// chunks of [`SPLIT_CHUNK`] points, each leaving one partial sum per sum (f64) in the scratch buffer
    /// that follows the plan's buffers in the table; the next kernel (`Total`) adds them in chunk order.
    /// So the result does not depend on the grid.
    Parts,
    /// One block adding a `Parts` kernel's partial sums in chunk order.
    Total,
    /// A row-fused group over short rows: a warp per row (blocks of [`TILED_BLOCK`] threads, 8 rows each),
    /// reductions over the row by the warp's lanes (a shuffle tree), `__syncwarp` between members. The
    /// variant of a `BlockRows` kernel the host picks when no row extent exceeds [`WARP_ROWS_MAX`], or
    /// the group's only kernel when its row extents are constants that do not.
    WarpRows,
    /// A plain matrix product ([`crate::backend::loops::Contraction`]): 32 × 32 tiles of the output, one
    /// per block (grid-stride), the operands staged through shared memory 32 deep, f32 accumulators (as
    /// the JIT's sgemm). Blocks of exactly [`TILED_BLOCK`] threads, four outputs each.
    Tiled,
}

/// The longest row (largest per-row extent of a group's members and reductions) run a warp per row.
pub const WARP_ROWS_MAX: i64 = 64;

/// Threads per block of a `Tiled` kernel.
pub const TILED_BLOCK: u32 = 256;

/// Points of the summed index per partial sum of a `Parts` kernel.
pub const SPLIT_CHUNK: i64 = 4096;

/// One generated kernel: its name, launch shape, and the extent its grid covers (elements for `Flat`,
/// rows for `ThreadRows` and `BlockRows`, the summed index for `Parts` and `Total`; `Single` and `Total`
/// run one block).
#[derive(Clone, Debug)]
pub struct KernelSpec {
    /// The `__global__` function's name.
    pub name: String,
    /// How its threads cover the group.
    pub shape: Shape,
    /// The extent the launch covers (elements, rows or chunks, as the shape says).
    pub extent: Dim,
    /// For `Parts`: how many sums leave a partial per chunk.
    pub sums: usize,
    /// For a kernel that keeps a softmax row in shared memory: the row's length (it is kept, in
    /// dynamic shared memory of that many floats, when at most [`KEEP_MAX`]).
    pub kept_row: Option<Dim>,
    /// For a `BlockRows` kernel: its `WarpRows` variant (an index into the kernels) and the row's extents
    /// (of each member's elements and each reduction over the row): the host launches the variant instead
    /// when none exceeds [`WARP_ROWS_MAX`].
    pub short_rows: Option<(usize, Vec<Dim>)>,
}

/// The CUDA C of one optimized function: the source (prelude included) and its kernels in launch order.
#[derive(Clone, Debug)]
pub struct Program {
    /// The CUDA C source (prelude included).
    pub source: String,
    /// The groups' kernels in launch order, then the label check (if any).
    pub kernels: Vec<KernelSpec>,
    /// The loop plan the kernels implement.
    pub plan: Plan,
    /// The kernel (index into `kernels`) that checks label inputs already in device memory: launched
    /// first by calls on device pointers only.
    pub label_check: Option<usize>,
    /// The gather and scatter kernels of a stateful loss (indices into `kernels`), launched by
    /// [`crate::Kernel::eval_device_stateful`] only.
    pub state_kernels: Option<(usize, usize)>,
    /// Per buffer: whether it holds one row per slot of its kernel's launch instead of one per row (a
    /// row-private tensor of a block-rows group; see the module doc).
    pub slotted: Vec<bool>,
}

impl Program {
    /// How many rows a slotted buffer (of `len` elements over `rows` rows, at these sizes) needs on a
    /// device whose grids have at most `max_grid` blocks: one per block, or per warp where its rows are
    /// short enough for the warp-per-row variant; never more than its rows.
    pub fn slots(rows: usize, len: usize, max_grid: u32) -> usize {
        let per_row = len / rows.max(1);
        let per_block = if per_row as i64 <= WARP_ROWS_MAX {
            (TILED_BLOCK / 32) as usize
        } else {
            1
        };
        rows.min(max_grid.max(1) as usize * per_block)
    }
}

/// Why a program could not be generated or run on a device.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CudaError {
    /// No driver, no device, or no NVRTC on this machine.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    /// NVRTC rejected the source (its log).
    #[error("the generated kernels did not compile: {0}")]
    Compile(String),
    /// A driver call failed.
    #[error("CUDA driver error: {0}")]
    Driver(String),
}

/// Puts programs on a device: NVRTC and the CUDA driver ([`driver`], feature `cuda`), or an emulation
/// (the tests'). A [`crate::Compiler`] takes one with [`crate::Compiler::cuda_loader`].
pub trait Loader: Send + Sync {
    /// Compiles a program's source for the device and loads its kernels.
    fn load(&self, program: &Program) -> Result<Box<dyn host::Device + Send>, CudaError>;
}

/// The loader `Backend::Cuda` uses unless the compiler was given one: the CUDA driver when lossc is built
/// with the `cuda` feature, else one that says so.
pub fn default_loader() -> std::sync::Arc<dyn Loader> {
    #[cfg(feature = "cuda")]
    {
        std::sync::Arc::new(driver::Driver)
    }
    #[cfg(not(feature = "cuda"))]
    {
        std::sync::Arc::new(NoCuda)
    }
}

#[cfg(not(feature = "cuda"))]
struct NoCuda;

#[cfg(not(feature = "cuda"))]
impl Loader for NoCuda {
    fn load(&self, _: &Program) -> Result<Box<dyn host::Device + Send>, CudaError> {
        Err(CudaError::Unavailable(
            "this lossc was built without the `cuda` feature (cargo build --features cuda)".into(),
        ))
    }
}

/// Generates the CUDA C of an optimized loss-and-gradient function.
pub fn generate(f: &Function) -> Program {
    generate_on(f, Plan::new(f))
}

/// Generates the CUDA C of a function whose pairwise tensors are streamed ([`crate::opt::stream::rows`]),
/// on its [`Plan::streaming`].
pub fn generate_streaming(f: &Function) -> Program {
    generate_on(f, Plan::streaming(f))
}

fn generate_on(f: &Function, plan: Plan) -> Program {
    let slotted = codegen::slotted(f, &plan);
    let (source, kernels) = codegen::source(f, &plan, &slotted);
    let label_check = kernels.iter().position(|k| k.name == codegen::LABEL_CHECK);
    let position = |name: &str| kernels.iter().position(|k| k.name == name);
    let state_kernels = position(codegen::STATE_GATHER).zip(position(codegen::STATE_SCATTER));
    Program {
        source,
        kernels,
        plan,
        label_check,
        state_kernels,
        slotted,
    }
}

//! The CUDA emulation: generated kernels compiled by the host C++ compiler against `cuda_emu.h` (every
//! CUDA thread a fiber, switched at `__syncthreads` and at warp shuffles and `__syncwarp`) and run through the CUDA
//! backend's own host side ([`lossc::backend::cuda::host`]), as a [`Loader`] a `Compiler` takes. Each
//! program's library is built once per source (cached under the target's tmp folder).
#![allow(dead_code)]

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lossc::backend::cuda::host::Device;
use lossc::backend::cuda::{CudaError, Loader, Program, Shape};

type Launch = unsafe extern "C" fn(i32, u32, u32, u32, u64, u64, u64, u64) -> i32;

/// Launch geometry of the emulated device: threads per block of row and single-block kernels (those of
/// elementwise kernels are 32), and the most blocks a launch gets.
#[derive(Clone, Copy)]
pub struct EmuLoader {
    pub block: u32,
    pub max_grid: u32,
}

/// The loader the CUDA tests use: the emulation, or the CUDA driver on a real GPU when `LOSSC_TEST_GPU=1`
/// (tools/gpu_check.sh), so that one test binary checks both.
pub fn loader() -> Arc<dyn Loader> {
    gpu_or(EmuLoader::default())
}

/// `emu`, or the CUDA driver when `LOSSC_TEST_GPU=1`.
pub fn gpu_or(emu: EmuLoader) -> Arc<dyn Loader> {
    if std::env::var("LOSSC_TEST_GPU").is_ok_and(|v| v == "1") {
        lossc::backend::cuda::default_loader()
    } else {
        Arc::new(emu)
    }
}

impl Default for EmuLoader {
    fn default() -> Self {
        EmuLoader { block: 64, max_grid: 3 }
    }
}

/// The repository: `LOSSC_ROOT` (a test binary carried to another machine), else where it was built.
pub fn root() -> PathBuf {
    std::env::var_os("LOSSC_ROOT").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn header() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu/cuda_emu.h")
}

/// The shared library of a program (built if not cached).
pub fn library(program: &Program) -> Result<PathBuf, CudaError> {
    let names: Vec<&str> = program.kernels.iter().map(|k| k.name.as_str()).collect();
    let harness = format!(
        "#include \"{}\"\n{}\nstatic lx_emu::Kernel lx_table[] = {{ {} nullptr }};\n\
         extern \"C\" int lossc_emu_launch(int k, unsigned grid, unsigned block, unsigned shared, unsigned long long a0, \
         unsigned long long a1, unsigned long long a2, unsigned long long a3) {{\n\
         if (k < 0 || k >= {}) return 2;\n\
         return lx_emu::launch(lx_table[k], grid, block, shared, (void* const*)a0, (const long long*)a1, (const double*)a2, (unsigned long long*)a3);\n}}\n",
        header().display(),
        program.source,
        names.iter().map(|n| format!("{n},")).collect::<String>(),
        names.len()
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    harness.hash(&mut h);
    std::fs::read_to_string(header()).unwrap_or_default().hash(&mut h);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_emu");
    std::fs::create_dir_all(&dir).map_err(|e| CudaError::Compile(e.to_string()))?;
    let stem = format!("{:016x}", h.finish());
    let lib = dir.join(format!("{stem}.so"));
    if lib.exists() {
        return Ok(lib);
    }
    // A name of this build's own: tests in several threads may build one program at once.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let own = format!("{stem}.{}.{build}", std::process::id());
    let src = dir.join(format!("{own}.cpp"));
    std::fs::write(&src, &harness).map_err(|e| CudaError::Compile(e.to_string()))?;
    let tmp = dir.join(format!("{own}.so"));
    let out = std::process::Command::new("g++")
        .args(["-std=c++20", "-O1", "-w", "-shared", "-fPIC", "-pthread", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(|e| CudaError::Compile(format!("g++: {e}")))?;
    if !out.status.success() {
        return Err(CudaError::Compile(format!(
            "g++ failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::rename(&tmp, &lib).map_err(|e| CudaError::Compile(e.to_string()))?;
    let _ = std::fs::remove_file(&src);
    Ok(lib)
}

impl Loader for EmuLoader {
    fn load(&self, program: &Program) -> Result<Box<dyn Device + Send>, CudaError> {
        let path = library(program)?;
        // SAFETY: a library built above from generated code and the emulation header; its only export is
        // the launch function of the signature below.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| CudaError::Driver(e.to_string()))?;
        let launch: Launch = unsafe { lib.get::<Launch>(b"lossc_emu_launch\0") }
            .map(|symbol| *symbol)
            .map_err(|e| CudaError::Driver(e.to_string()))?;
        Ok(Box::new(EmuDevice {
            _lib: Arc::new(lib),
            launch,
            memory: Vec::new(),
            owned: Vec::new(),
            geometry: *self,
        }))
    }
}

/// An emulated device: host memory, kernels run by `lossc_emu_launch`.
pub struct EmuDevice {
    _lib: Arc<libloading::Library>,
    launch: Launch,
    memory: Vec<Box<[u64]>>,
    owned: Vec<Box<[u64]>>,
    geometry: EmuLoader,
}

impl Device for EmuDevice {
    fn alloc(&mut self, bytes: usize) -> Result<u64, CudaError> {
        // Not zeroed, as on a GPU: all bits set (NaN as f32, -1 as an integer), so an element a kernel
        // forgets to write shows.
        let words = vec![u64::MAX; bytes.div_ceil(8)].into_boxed_slice();
        let addr = words.as_ptr() as u64;
        self.memory.push(words);
        Ok(addr)
    }
    fn upload(&mut self, dst: u64, data: &[u8]) -> Result<(), CudaError> {
        // SAFETY: `dst` came from `alloc` with at least `data.len()` bytes (the host side's sizes).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, data.len()) };
        Ok(())
    }
    fn download(&mut self, src: u64, out: &mut [u8]) -> Result<(), CudaError> {
        // SAFETY: as in `upload`.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), out.len()) };
        Ok(())
    }
    fn launch(&mut self, kernel: usize, grid: u32, block: u32, shared: u32, args: [u64; 4]) -> Result<(), CudaError> {
        // SAFETY: the arguments are the kernel ABI's four pointers into memory this device allocated.
        let rc = unsafe { (self.launch)(kernel as i32, grid, block, shared, args[0], args[1], args[2], args[3]) };
        match rc {
            0 => Ok(()),
            rc => Err(CudaError::Driver(format!(
                "emulated launch of kernel {kernel} failed ({rc})"
            ))),
        }
    }
    fn block_size(&self, shape: Shape) -> u32 {
        match shape {
            Shape::Flat | Shape::ThreadRows => 32,
            Shape::BlockRows | Shape::Single | Shape::Parts | Shape::Total => self.geometry.block,
            Shape::Tiled | Shape::WarpRows => lossc::backend::cuda::TILED_BLOCK,
        }
    }
    fn max_grid(&self) -> u32 {
        self.geometry.max_grid
    }
    fn release(&mut self) {
        self.memory.clear();
    }
    fn alloc_kept(&mut self, bytes: usize) -> Result<u64, CudaError> {
        let words = vec![u64::MAX; bytes.div_ceil(8).max(2)].into_boxed_slice();
        let addr = words.as_ptr() as u64;
        self.owned.push(words);
        Ok(addr)
    }
}

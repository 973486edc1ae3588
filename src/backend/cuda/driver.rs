//! The CUDA driver as a [`Loader`]: NVRTC compiles a program for the device's compute capability to a
//! CUBIN (cached in memory and on disk, keyed by the source's hash and the architecture, so a second
//! process does not recompile), the driver loads it, and [`GpuDevice`] runs the host side's calls on
//! the context's default stream. Everything is loaded at run time (cudarc's dynamic loading): where no
//! `libcuda` / `libnvrtc` or no GPU exists, every entry point returns [`CudaError::Unavailable`]
//! (cudarc itself would panic on a missing library, so its presence is checked first).
//!
//! The disk cache is `$LOSSC_CACHE_DIR` or `$XDG_CACHE_HOME/lossc` or `~/.cache/lossc`, folder `cuda/`.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, result, sys};

use super::host::Device;
use super::{CudaError, Loader, Program, Shape};

/// The CUDA driver on device 0.
pub struct Driver;

/// NVRTC's output for one program: the machine code and the compiler's log (with `--ptxas-options=-v`:
/// registers and spills per kernel).
#[derive(Clone, Debug)]
pub struct Cubin {
    /// The CUBIN for the device's architecture.
    pub image: Vec<u8>,
    /// NVRTC's log.
    pub log: String,
}

fn nvrtc_present() -> bool {
    // SAFETY: only looks the library up.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles CUDA C to machine code for `arch` (`"sm_90"`) with NVRTC. Needs `libnvrtc` (for example from
/// the `nvidia-cuda-nvrtc` wheel, on `LD_LIBRARY_PATH`), not a GPU.
pub fn nvrtc_compile(source: &str, arch: &str) -> Result<Cubin, CudaError> {
    use cudarc::nvrtc::{result as nvrtc, sys as nsys};
    if !nvrtc_present() {
        return Err(CudaError::Unavailable(
            "NVRTC (libnvrtc.so) was not found; install it (pip install nvidia-cuda-nvrtc) and put its lib folder on LD_LIBRARY_PATH".into(),
        ));
    }
    if source.contains('\0') {
        return Err(CudaError::Compile("the source contains a NUL byte".into()));
    }
    let src = CString::new(source).map_err(|e| CudaError::Compile(e.to_string()))?;
    let prog = nvrtc::create_program(&src, None).map_err(|e| CudaError::Compile(format!("{e:?}")))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--ptxas-options=-v".to_string(),
    ];
    // SAFETY: `prog` was created above and is destroyed once, at the end.
    unsafe {
        let compiled = nvrtc::compile_program(prog, &options);
        let log = nvrtc::get_program_log(prog)
            .map(|chars| {
                let bytes: Vec<u8> = chars.iter().map(|c| *c as u8).take_while(|b| *b != 0).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        let out = match compiled {
            Err(e) => Err(CudaError::Compile(format!("{e:?}\n{log}"))),
            Ok(()) => {
                let mut size = 0usize;
                let got = nsys::nvrtcGetCUBINSize(prog, &mut size).result();
                let mut image = vec![0u8; size];
                let got = got.and_then(|_| nsys::nvrtcGetCUBIN(prog, image.as_mut_ptr().cast()).result());
                match got {
                    Ok(()) => Ok(Cubin { image, log }),
                    Err(e) => Err(CudaError::Compile(format!("no CUBIN: {e:?}"))),
                }
            }
        };
        let _ = nvrtc::destroy_program(prog);
        out
    }
}

/// The process's CUDA context on device 0 (created once).
fn context() -> Result<Arc<CudaContext>, CudaError> {
    static CONTEXT: OnceLock<Result<Arc<CudaContext>, CudaError>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            // SAFETY: only looks the library up.
            if !unsafe { sys::is_culib_present() } {
                return Err(CudaError::Unavailable("no CUDA driver (libcuda.so) was found".into()));
            }
            CudaContext::new(0).map_err(|e| CudaError::Unavailable(format!("no CUDA device: {e:?}")))
        })
        .clone()
}

/// Where compiled programs are kept between processes.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("LOSSC_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("lossc")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lossc")))?;
    Some(base.join("cuda"))
}

/// CUBINs by (source hash, architecture).
type CubinCache = HashMap<(u64, String), Vec<u8>>;

/// A program's CUBIN for `arch`: from memory, from disk, or compiled now (and stored in both).
pub fn cached_cubin(source: &str, arch: &str) -> Result<Vec<u8>, CudaError> {
    static MEMORY: OnceLock<Mutex<CubinCache>> = OnceLock::new();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    let key = (h.finish(), arch.to_string());
    let memory = MEMORY.get_or_init(Default::default);
    if let Some(image) = memory.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(image.clone());
    }
    let file = cache_dir().map(|d| d.join(format!("{:016x}-{arch}.cubin", key.0)));
    let image = match file.as_ref().and_then(|f| std::fs::read(f).ok()) {
        Some(image) => image,
        None => {
            let image = nvrtc_compile(source, arch)?.image;
            if let Some(file) = &file {
                // A cache that cannot be written is only slower.
                let _ = std::fs::create_dir_all(file.parent().expect("a folder"));
                let tmp = file.with_extension(format!("{}.tmp", std::process::id()));
                if std::fs::write(&tmp, &image).is_ok() {
                    let _ = std::fs::rename(&tmp, file);
                }
            }
            image
        }
    };
    memory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, image.clone());
    Ok(image)
}

fn driver(e: result::DriverError) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

impl Loader for Driver {
    fn load(&self, program: &Program) -> Result<Box<dyn Device + Send>, CudaError> {
        let ctx = context()?;
        let (major, minor) = ctx.compute_capability().map_err(driver)?;
        let arch = format!("sm_{major}{minor}");
        let image = cached_cubin(&program.source, &arch)?;
        ctx.bind_to_thread().map_err(driver)?;
        // SAFETY: a CUBIN NVRTC produced for this device's architecture.
        let module = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }.map_err(driver)?;
        let mut functions = Vec::with_capacity(program.kernels.len());
        for k in &program.kernels {
            let name = CString::new(k.name.as_str()).map_err(|e| CudaError::Driver(e.to_string()))?;
            // SAFETY: the module was loaded above and is unloaded only when the device is dropped.
            functions.push(unsafe { result::module::get_function(module, name) }.map_err(driver)?);
        }
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver)?;
        Ok(Box::new(GpuDevice {
            ctx,
            module,
            functions,
            allocations: Vec::new(),
            kept: Vec::new(),
            owned: Vec::new(),
            stream: std::ptr::null_mut(),
            max_grid: (sms.max(1) as u32) * 16,
        }))
    }
}

/// A loaded program on the GPU; calls run on the legacy default stream and synchronize before reading.
/// Device memory is kept from one call to the next (a call of the same shapes allocates nothing).
pub struct GpuDevice {
    ctx: Arc<CudaContext>,
    module: sys::CUmodule,
    functions: Vec<sys::CUfunction>,
    /// In use by the current call: (address, bytes).
    allocations: Vec<(sys::CUdeviceptr, usize)>,
    /// Free, from earlier calls.
    kept: Vec<(sys::CUdeviceptr, usize)>,
    /// The caller's, until the device is dropped ([`Device::alloc_kept`]).
    owned: Vec<sys::CUdeviceptr>,
    /// Where calls run ([`Device::set_stream`]; null: the legacy default stream).
    stream: sys::CUstream,
    max_grid: u32,
}

// SAFETY: the module and functions belong to the context, which is bound to the calling thread before
// every use; one call at a time (the kernel holds the device in a mutex).
unsafe impl Send for GpuDevice {}

impl Drop for GpuDevice {
    fn drop(&mut self) {
        self.release();
        if self.ctx.bind_to_thread().is_ok() {
            for p in self.kept.drain(..).map(|(p, _)| p).chain(self.owned.drain(..)) {
                // SAFETY: allocated by `alloc`, freed once; release synchronized the stream.
                let _ = unsafe { result::free_sync(p) };
            }
            // SAFETY: no function of the module runs any more (release synchronized).
            let _ = unsafe { result::module::unload(self.module) };
        }
    }
}

impl Device for GpuDevice {
    fn alloc(&mut self, bytes: usize) -> Result<u64, CudaError> {
        // A kept buffer of this size, or the smallest larger one.
        let fit = self
            .kept
            .iter()
            .enumerate()
            .filter(|(_, (_, size))| *size >= bytes)
            .min_by_key(|(_, (_, size))| *size)
            .map(|(k, _)| k);
        if let Some(k) = fit {
            let buffer = self.kept.swap_remove(k);
            self.allocations.push(buffer);
            return Ok(buffer.0);
        }
        self.ctx.bind_to_thread().map_err(driver)?;
        // SAFETY: plain device memory, kept by this device and freed when it is dropped.
        let p = unsafe { result::malloc_sync(bytes) }.map_err(driver)?;
        self.allocations.push((p, bytes));
        Ok(p)
    }
    fn upload(&mut self, dst: u64, data: &[u8]) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(driver)?;
        // SAFETY: `dst` has at least `data.len()` bytes (the host side's sizes); `data` outlives the copy
        // (the stream is synchronized before returning).
        unsafe {
            result::memcpy_htod_async(dst, data, self.stream).map_err(driver)?;
            result::stream::synchronize(self.stream).map_err(driver)
        }
    }
    fn download(&mut self, src: u64, out: &mut [u8]) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(driver)?;
        // SAFETY: as in `upload`; the kernels that write `src` were queued on this stream before.
        unsafe {
            result::memcpy_dtoh_async(out, src, self.stream).map_err(driver)?;
            result::stream::synchronize(self.stream).map_err(driver)
        }
    }
    fn alloc_kept(&mut self, bytes: usize) -> Result<u64, CudaError> {
        self.ctx.bind_to_thread().map_err(driver)?;
        // SAFETY: plain device memory, freed when the device is dropped.
        let p = unsafe { result::malloc_sync(bytes.max(16)) }.map_err(driver)?;
        self.owned.push(p);
        Ok(p)
    }
    fn set_stream(&mut self, stream: u64) {
        self.stream = stream as sys::CUstream;
    }
    fn launch(&mut self, kernel: usize, grid: u32, block: u32, shared: u32, args: [u64; 4]) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(driver)?;
        let f = *self
            .functions
            .get(kernel)
            .ok_or_else(|| CudaError::Driver(format!("no kernel {kernel}")))?;
        let mut values = args;
        let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        // SAFETY: the kernel ABI's four pointer arguments, into memory of this context.
        unsafe { result::launch_kernel(f, (grid, 1, 1), (block, 1, 1), shared, self.stream, &mut params) }
            .map_err(driver)
    }
    fn block_size(&self, shape: Shape) -> u32 {
        match shape {
            Shape::Flat | Shape::ThreadRows | Shape::BlockRows | Shape::Parts | Shape::Tiled | Shape::WarpRows => 256,
            Shape::Single | Shape::Total => 1024,
        }
    }
    fn max_grid(&self) -> u32 {
        self.max_grid
    }
    fn release(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: a stream of this context (or the default stream).
            let _ = unsafe { result::stream::synchronize(self.stream) };
        }
        self.kept.append(&mut self.allocations);
    }
}

//! `lossc bench`: times loss + gradient on seeded random data and relates it to the memory floor.
//!
//! The floor is the time to read every input once and write every gradient once, at the memory
//! bandwidth measured in the same run (a large buffer copy, split across the kernel's threads); the ratio
//! to it says how far the kernel is from being memory-bound. Times are wall-clock medians over
//! repetitions after a warm-up (`--iters`, or about a second's worth); only the native code is timed,
//! not the conversion of inputs.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{BenchArgs, Failure, InputArgs, gather_inputs};
use crate::{Compiler, Program, call};

/// The measured numbers.
#[derive(Debug, Clone)]
pub struct Report {
    /// Building the kernel (autodiff, optimization, code generation).
    pub compile_ms: f64,
    /// The median call.
    pub median_ms: f64,
    /// The fastest call.
    pub min_ms: f64,
    /// Bytes of the memory floor: inputs read once, gradients written once.
    pub bytes: u64,
    /// Input elements.
    pub elements: u64,
    /// The copy bandwidth measured in the same run.
    pub bandwidth_gb_s: f64,
    /// Threads of the JIT.
    pub threads: usize,
    /// Timed calls.
    pub iters: usize,
    /// The most heap bytes the calls held at once (their buffers, f32 copies of the inputs included), where
    /// the counting allocator is installed ([`crate::memory`]).
    pub peak_bytes: Option<usize>,
    /// On a CUDA device: the bytes of the tensor buffers a call allocates there ([`crate::Kernel::device_bytes`]).
    pub device_bytes: Option<u64>,
}

impl Report {
    /// The time the floor's bytes take at the measured bandwidth.
    pub fn floor_ms(&self) -> f64 {
        self.bytes as f64 / (self.bandwidth_gb_s * 1e9) * 1e3
    }
}

/// Best-of-5 copy bandwidth over a buffer of at least `bytes` (GB/s, counting read + write), the buffer
/// split across `threads` threads as the kernel's rows are: one core alone may not saturate the memory.
pub fn copy_bandwidth(bytes: u64, threads: usize) -> f64 {
    let n = (bytes.max(64 << 20) / 4) as usize;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let part = n.div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        std::thread::scope(|scope| {
            for (d, s) in dst.chunks_mut(part).zip(src.chunks(part)) {
                scope.spawn(move || d.copy_from_slice(s));
            }
        });
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (2 * n * 4) as f64 / best / 1e9
}

/// `lossc bench`: builds the kernel, times its calls on seeded random inputs and reports them.
pub fn run(args: &BenchArgs) -> Result<String, String> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this lossc is a debug build: its times are tens of times slower than a release build's (cargo build --release)"
        );
    }
    let t0 = Instant::now();
    let program = Program::from_file(&args.file).map_err(|d| d.render())?;
    let f = program.loss(args.loss.as_deref()).map_err(|d| format!("error: {d}"))?;
    let mut options = Compiler::new()
        .backend(args.backend.into_backend())
        .stream_pairwise(args.stream);
    if let Some(t) = args.threads {
        options = options.threads(t);
    }
    let kernel = crate::kernel::Kernel::build(f, &options).map_err(|d| format!("error: {d}"))?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let input_args = InputArgs {
        file: args.file.clone(),
        loss: args.loss.clone(),
        inputs: vec![],
        data: None,
        sets: vec![],
        random: Some(args.shape.clone()),
        seed: args.seed,
        dists: args.dists.clone(),
    };
    let inputs = gather_inputs(f, &input_args).map_err(|e| match e {
        // The sizes come from --shape here.
        Failure::Message(m) => m.replace("with --random ", "with --shape "),
        Failure::Diags(_) => format!("error: bad --shape `{}` for `{}`", args.shape, f.name),
    })?;
    let g = kernel.function();
    let bound = call::bind(g, &inputs, &Default::default()).map_err(|e| format!("error: {e}"))?;
    let elements: u64 = inputs.values().map(|t| t.len() as u64).sum();
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("timing {}", f.name));
    // (A streamed program is built before the memory is counted: its compilation is not a call's.)
    #[cfg(feature = "jit")]
    kernel.native_for(&bound.sizes).map_err(|e| format!("error: {e}"))?;
    let base = crate::memory::mark();
    let (bytes, mut times) = if args.backend.into_backend() == crate::Backend::Cuda {
        (
            interp_floor(g, &bound),
            time_device(&kernel, &inputs, args.iters, &bar)?,
        )
    } else if let Some(timed) = time_native(&kernel, &bound, args.iters, &bar)? {
        timed
    } else {
        (interp_floor(g, &bound), time_interp(g, &bound, args.iters, &bar)?)
    };
    let peak_bytes = crate::memory::peak_since(base);
    bar.finish_and_clear();
    times.sort();
    let report = Report {
        compile_ms,
        median_ms: times[times.len() / 2].as_secs_f64() * 1e3,
        min_ms: times[0].as_secs_f64() * 1e3,
        bytes,
        elements,
        bandwidth_gb_s: copy_bandwidth(bytes, kernel.threads()),
        threads: kernel.threads(),
        iters: times.len(),
        peak_bytes,
        device_bytes: kernel.device_bytes(&bound.sizes),
    };
    let gbs = report.bytes as f64 / (report.median_ms / 1e3) / 1e9;
    let eps = report.elements as f64 / (report.median_ms / 1e3);
    if args.json {
        return Ok(format!(
            "{}\n",
            serde_json::json!({
                "loss": f.name, "shape": args.shape, "threads": report.threads, "iters": report.iters,
                "compile_ms": report.compile_ms, "median_ms": report.median_ms, "min_ms": report.min_ms,
                "bytes": report.bytes, "gb_per_s": gbs, "elements_per_s": eps,
                "copy_bandwidth_gb_per_s": report.bandwidth_gb_s, "floor_ms": report.floor_ms(),
                "ratio_to_floor": report.median_ms / report.floor_ms(), "peak_bytes": report.peak_bytes,
                "device_bytes": report.device_bytes,
            })
        ));
    }
    let memory = match report.peak_bytes {
        Some(b) => format!(
            "  memory    {:>10.3} MB    at the calls' peak (every buffer, f32 copies of the inputs included)\n",
            b as f64 / 1e6
        ),
        None => String::new(),
    };
    let memory = match report.device_bytes {
        Some(b) => format!(
            "{memory}  device    {:>10.3} MB    of tensor buffers on the device\n",
            b as f64 / 1e6
        ),
        None => memory,
    };
    Ok(format!(
        "{} [{}] on {} thread(s)\n  compile   {:>10.3} ms\n  median    {:>10.3} ms   (min {:.3} ms, {} calls)\n  traffic   {:>10.3} MB    {:.2} GB/s, {:.3e} elements/s\n  floor     {:>10.3} ms   at {:.1} GB/s copy bandwidth: {:.2}x the floor\n{memory}",
        f.name,
        args.shape,
        report.threads,
        report.compile_ms,
        report.median_ms,
        report.min_ms,
        report.iters,
        report.bytes as f64 / 1e6,
        gbs,
        eps,
        report.floor_ms(),
        report.bandwidth_gb_s,
        report.median_ms / report.floor_ms()
    ))
}

fn interp_floor(g: &crate::ir::Function, bound: &call::Bound) -> u64 {
    let inputs: u64 = bound.inputs.iter().map(|t| t.len() as u64 * 4).sum();
    let grads: u64 = g
        .inputs
        .iter()
        .filter(|i| i.differentiable())
        .map(|i| {
            i.shape
                .iter()
                .map(|d| d.eval(&bound.sizes).max(0) as u64)
                .product::<u64>()
                * 4
        })
        .sum();
    inputs + grads
}

/// The JIT's calls on prepared buffers (the memory floor of the call, the times), when the kernel has
/// native code.
#[cfg(feature = "jit")]
fn time_native(
    kernel: &crate::Kernel,
    bound: &call::Bound,
    iters: Option<u64>,
    bar: &ProgressBar,
) -> Result<Option<(u64, Vec<Duration>)>, String> {
    let Some(native) = kernel.native_for(&bound.sizes).map_err(|e| format!("error: {e}"))? else {
        return Ok(None);
    };
    native.check_elements(&bound.sizes).map_err(|e| format!("error: {e}"))?;
    let mut buffers = native.buffers(bound);
    let times = time_calls(iters, bar, &mut || {
        native
            .execute(&mut buffers, kernel.threads())
            .map_err(|e| format!("error: {e}"))
    })?;
    Ok(Some((native.floor_bytes(&bound.sizes), times)))
}

#[cfg(not(feature = "jit"))]
fn time_native(
    _: &crate::Kernel,
    _: &call::Bound,
    _: Option<u64>,
    _: &ProgressBar,
) -> Result<Option<(u64, Vec<Duration>)>, String> {
    Ok(None)
}

/// A CUDA kernel's calls with inputs and gradient buffers in device memory, as a PyTorch caller has them:
/// a call is the kernels, the call's small upload and the loss (and any extra outputs) copied back.
fn time_device(
    kernel: &crate::Kernel,
    inputs: &std::collections::BTreeMap<String, crate::Tensor>,
    iters: Option<u64>,
    bar: &ProgressBar,
) -> Result<Vec<Duration>, String> {
    let err = |e: crate::CallError| format!("error: {e}");
    let mut on_device = std::collections::BTreeMap::new();
    for (name, t) in inputs {
        on_device.insert(name.clone(), kernel.to_device(name, t).map_err(err)?);
    }
    let mut grads = std::collections::BTreeMap::new();
    for input in kernel.function().inputs.iter().filter(|i| i.differentiable()) {
        let t = &on_device[&input.name];
        let elem = if t.dtype == crate::data::DType::F32 { 4 } else { 2 };
        let len: usize = t.shape.iter().product();
        grads.insert(input.name.clone(), kernel.device_buffer(len * elem).map_err(err)?);
    }
    let hypers = std::collections::BTreeMap::new();
    time_calls(iters, bar, &mut || {
        kernel
            .eval_device(&on_device, &hypers, &grads, 0)
            .map(|_| ())
            .map_err(err)
    })
}

fn time_interp(
    g: &crate::ir::Function,
    bound: &call::Bound,
    iters: Option<u64>,
    bar: &ProgressBar,
) -> Result<Vec<Duration>, String> {
    time_calls(iters, bar, &mut || {
        crate::backend::interp::run(g, bound)
            .map(|_| ())
            .map_err(|e| format!("error: {e}"))
    })
}

/// Timed calls without `--iters`: at least [`MIN_ITERS`], and as many more as fill about
/// [`TARGET_SECONDS`] at the warm-up call's pace (at most [`MAX_ITERS`]): a median of 20 calls of a
/// millisecond kernel still carried the first calls' cache misses on a shared machine.
const MIN_ITERS: usize = 20;
const MAX_ITERS: usize = 10_000;
const TARGET_SECONDS: f64 = 1.0;

/// Runs `call` once to warm up, then `iters` times (or as many as [`MIN_ITERS`] and [`TARGET_SECONDS`]
/// say), returning each timed call's duration.
fn time_calls(
    iters: Option<u64>,
    bar: &ProgressBar,
    call: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Vec<Duration>, String> {
    let t = Instant::now();
    call()?;
    let warm = t.elapsed().as_secs_f64();
    let iters = iters.map_or_else(
        || ((TARGET_SECONDS / warm.max(1e-9)) as usize).clamp(MIN_ITERS, MAX_ITERS),
        |n| n as usize,
    );
    bar.set_length(iters as u64);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        call()?;
        times.push(t.elapsed());
        bar.inc(1);
    }
    Ok(times)
}

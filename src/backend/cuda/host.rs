//! The host side of the CUDA backend, shared by every [`Device`]: buffers in the plan's layout, the
//! kernels launched in order with their geometry, the bounds-check flag read after the last launch, and
//! the results collected as the JIT collects them.

use super::{CudaError, KEEP_MAX, LABEL_FLAG, Program, SPLIT_CHUNK, Shape, TILED_BLOCK, WARP_ROWS_MAX};
use crate::backend::interp::Evaluation;
use crate::backend::loops::Buffer;
use crate::backend::loops::index_error;
use crate::call::{Bound, CallError};
use crate::data::{DType, Data, Tensor};
use crate::ir::{Dim, Function, Scalar, TensorRef};

/// What runs generated kernels: the CUDA driver, or the host emulation of the tests. Addresses are
/// device addresses (`CUdeviceptr`).
pub trait Device {
    /// `bytes` of device memory (not initialized), the call's until [`Device::release`].
    fn alloc(&mut self, bytes: usize) -> Result<u64, CudaError>;
    /// Copies `data` to device address `dst`.
    fn upload(&mut self, dst: u64, data: &[u8]) -> Result<(), CudaError>;
    /// Copies device memory at `src` into `out`.
    fn download(&mut self, src: u64, out: &mut [u8]) -> Result<(), CudaError>;
    /// Launches kernel `kernel` of the program (in [`Program::kernels`] order) with the four pointer
    /// arguments of the kernel ABI (buffer table, dims, hypers, error flag).
    /// `shared` bytes of dynamic shared memory (a kept softmax row).
    fn launch(&mut self, kernel: usize, grid: u32, block: u32, shared: u32, args: [u64; 4]) -> Result<(), CudaError>;
    /// Threads per block for a kernel shape (a multiple of 32, at most 1024).
    fn block_size(&self, shape: Shape) -> u32;
    /// The most blocks one launch gets (the kernels loop over what is left).
    fn max_grid(&self) -> u32;
    /// Ends a call: what [`Device::alloc`] gave out may be reused (or freed).
    fn release(&mut self);
    /// `bytes` of device memory the caller keeps across calls (inputs uploaded once, gradient buffers),
    /// freed with the device.
    fn alloc_kept(&mut self, bytes: usize) -> Result<u64, CudaError>;
    /// The stream the next calls run on (a `CUstream`; 0: the default stream), so that work the caller
    /// queued there (a PyTorch stream) is ordered before and after them.
    fn set_stream(&mut self, _stream: u64) {}
}

/// Bytes per element of a buffer.
pub fn elem_bytes(b: &Buffer) -> usize {
    match (b.half, b.scalar) {
        (Some(_), _) => 2,
        (None, Scalar::Float | Scalar::Bool) => 4,
        (None, Scalar::Int) => 8,
    }
}

/// A float buffer's bytes for host values (f32, or its half-precision type).
fn encode(b: &Buffer, v: &[f64]) -> Vec<u8> {
    encode_floats(b.half, v)
}

/// Float values as device bytes: bfloat16 or float16 where `half` says so, float32 otherwise.
pub fn encode_floats(half: Option<DType>, v: &[f64]) -> Vec<u8> {
    match half {
        Some(DType::BF16) => v.iter().flat_map(|x| half::bf16::from_f64(*x).to_le_bytes()).collect(),
        Some(_) => v.iter().flat_map(|x| half::f16::from_f64(*x).to_le_bytes()).collect(),
        None => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
    }
}

/// A buffer's values from its bytes.
fn decode(b: &Buffer, bytes: &[u8]) -> Vec<f64> {
    match (b.half, b.scalar) {
        (Some(DType::BF16), _) => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        (Some(_), _) => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        (None, Scalar::Float) => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect(),
        (None, Scalar::Int) => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
            .collect(),
        (None, Scalar::Bool) => bytes
            .chunks_exact(4)
            .map(|c| f64::from(u8::from(i32::from_le_bytes(c.try_into().expect("4 bytes")) != 0)))
            .collect(),
    }
}

fn device(e: CudaError) -> CallError {
    CallError::Device(e.to_string())
}

/// Where a call's input is: host data (copied to the device), or device memory the caller owns (f32 for
/// floats, i64 for labels, row-major), used in place.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Host data, uploaded for the call.
    Host(&'a Tensor),
    /// A device address the caller owns, read in place.
    Device(u64),
}

/// Runs a program on a bound call of `f` (the function it was generated from): inputs copied in, results
/// copied out.
pub fn run(program: &Program, f: &Function, call: &Bound, dev: &mut dyn Device) -> Result<Evaluation, CallError> {
    let inputs: Vec<Input> = call.inputs.iter().map(|t| Input::Host(t.as_ref())).collect();
    run_device(program, f, &call.sizes, &call.hypers, &inputs, &[], dev)
}

/// The elements a call at these sizes allocates for tensor buffer `k` of `program` on a device whose grids
/// have at most `max_grid` blocks: all of them, or for a slotted buffer one row per slot
/// ([`Program::slotted`]).
pub fn allocated(program: &Program, k: usize, sizes: &[i64], max_grid: u32) -> usize {
    let buf = &program.plan.buffers[k];
    let len: usize = buf.shape.iter().map(|d| d.eval(sizes).max(0) as usize).product();
    if !program.slotted[k] {
        return len;
    }
    let rows = buf.shape.first().map_or(1, |d| d.eval(sizes).max(0) as usize);
    len / rows.max(1) * Program::slots(rows, len, max_grid)
}

/// The bytes of the tensor buffers a call at these sizes allocates on such a device ([`allocated`]).
pub fn device_bytes(program: &Program, sizes: &[i64], max_grid: u32) -> u64 {
    (program.plan.buffers.iter().enumerate())
        .filter(|(_, b)| matches!(b.of, TensorRef::Def(_)))
        .map(|(k, b)| (allocated(program, k, sizes, max_grid) * elem_bytes(b)) as u64)
        .sum()
}

/// Runs a program on inputs in device memory or on the host (their shapes already checked; labels in
/// device memory not: the program's label check runs first), writing the tensors of `placed` (plan buffer, device address) where the
/// caller wants them (gradients into the caller's buffers); the loss and the tensors not placed are
/// copied back.
pub fn run_device(
    program: &Program,
    f: &Function,
    sizes: &[i64],
    hypers: &[f64],
    inputs: &[Input],
    placed: &[(usize, u64)],
    dev: &mut dyn Device,
) -> Result<Evaluation, CallError> {
    let mut call = || -> Result<Evaluation, CallError> {
        let plan = &program.plan;
        let lens: Vec<usize> = plan
            .buffers
            .iter()
            .map(|b| b.shape.iter().map(|d| d.eval(sizes).max(0) as usize).product())
            .collect();
        let upload = |dev: &mut dyn Device, bytes: Vec<u8>| -> Result<u64, CallError> {
            let addr = dev.alloc(bytes.len().max(16)).map_err(device)?;
            dev.upload(addr, &bytes).map_err(device)?;
            Ok(addr)
        };
        let mut addrs = Vec::with_capacity(plan.buffers.len());
        let mut on_device = false;
        for (k, buf) in plan.buffers.iter().enumerate() {
            if let Some((_, addr)) = placed.iter().find(|(b, _)| *b == k) {
                addrs.push(*addr);
                continue;
            }
            let addr = match buf.of {
                TensorRef::Input(i) => match inputs[i as usize] {
                    Input::Device(addr) => {
                        on_device = true;
                        addr
                    }
                    Input::Host(t) => {
                        let data: Vec<u8> = match &t.data {
                            Data::Float(v) => encode(buf, v),
                            Data::Int(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        };
                        upload(dev, data)?
                    }
                },
                // At least one element: a clamped subscript of a failed bounds check reads element 0.
                TensorRef::Def(_) => {
                    let len = allocated(program, k, sizes, dev.max_grid());
                    dev.alloc((len * elem_bytes(buf)).max(16)).map_err(device)?
                }
            };
            addrs.push(addr);
        }
        // The partial sums of `Parts` kernels: one scratch buffer after the plan's, as large as the largest needs.
        let parts: usize = program
            .kernels
            .iter()
            .filter(|k| k.shape == Shape::Parts)
            .map(|k| k.sums * (k.extent.eval(sizes).max(0) as usize).div_ceil(SPLIT_CHUNK as usize))
            .max()
            .unwrap_or(0);
        if parts > 0 {
            addrs.push(dev.alloc(parts * 8).map_err(device)?);
        }
        // One upload per call: the flag (zeroed), the buffer table, the sizes and the hyperparameters, each
        // 8-byte words.
        let words: Vec<u64> = [0u64; 4]
            .into_iter()
            .chain(addrs.iter().copied())
            .chain(sizes.iter().map(|d| *d as u64))
            .chain(hypers.iter().map(|h| h.to_bits()))
            .collect();
        let block = upload(dev, words.iter().flat_map(|w| w.to_le_bytes()).collect())?;
        let err = block;
        let table = block + 32;
        let dims = table + 8 * addrs.len() as u64;
        let hypers = dims + 8 * sizes.len() as u64;
        // Labels in device memory are checked by the program's label kernel first.
        let label_check = program.label_check.filter(|_| on_device);
        let state = program.state_kernels.map_or(vec![], |(g, s)| vec![g, s]);
        // Warp-per-row variants run in place of their block-per-row kernel.
        let variants: Vec<usize> = program
            .kernels
            .iter()
            .filter_map(|k| k.short_rows.as_ref().map(|(v, _)| *v))
            .collect();
        let groups = (0..program.kernels.len())
            .filter(|k| Some(*k) != program.label_check && !state.contains(k) && !variants.contains(k));
        for k in label_check.into_iter().chain(groups) {
            // Short rows: the warp-per-row variant.
            let k = match &program.kernels[k].short_rows {
                Some((variant, extents)) if extents.iter().all(|d| d.eval(sizes) <= WARP_ROWS_MAX) => *variant,
                _ => k,
            };
            let spec = &program.kernels[k];
            let extent = spec.extent.eval(sizes);
            // Nothing to compute, except a total (a sum over nothing is 0).
            if extent <= 0 && spec.shape != Shape::Total {
                continue;
            }
            let block = match spec.shape {
                Shape::Tiled | Shape::WarpRows => TILED_BLOCK,
                shape => dev.block_size(shape),
            };
            let max_grid = i64::from(dev.max_grid().max(1));
            let grid = match spec.shape {
                Shape::Flat | Shape::ThreadRows => (extent + i64::from(block) - 1) / i64::from(block),
                Shape::BlockRows => extent,
                Shape::Parts => (extent + SPLIT_CHUNK - 1) / SPLIT_CHUNK,
                // About one block per 32 x 32 tile (the kernel loops over what is left).
                Shape::Tiled => (extent + 1023) / 1024,
                Shape::WarpRows => (extent + 7) / 8,
                Shape::Single | Shape::Total => 1,
            }
            .clamp(1, max_grid) as u32;
            let shared = match &spec.kept_row {
                Some(len) if (1..=KEEP_MAX).contains(&len.eval(sizes)) => len.eval(sizes) as u32 * 4,
                _ => 0,
            };
            dev.launch(k, grid, block, shared, [table, dims, hypers, err])
                .map_err(device)?;
        }
        let mut flag = [0u8; 24];
        dev.download(err, &mut flag).map_err(device)?;
        let word = |k: usize| u64::from_le_bytes(flag[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
        if word(0) & LABEL_FLAG != 0 {
            let input = &f.inputs[(word(0) & !LABEL_FLAG) as usize];
            let bound = input.bound.as_ref().map_or(Dim::Const(0), |b| b.clone());
            let shape: Vec<usize> = input.shape.iter().map(|d| d.eval(sizes).max(0) as usize).collect();
            return Err(CallError::LabelOutOfRange {
                input: input.name.clone(),
                position: crate::call::unravel(word(1) as usize, &shape),
                value: word(2) as i64,
                bound: f.show_dim(&bound),
                size: bound.eval(sizes),
                ignore: input.ignore,
            });
        }
        if word(0) != 0 {
            return Err(index_error(f, sizes, word(0) as i64, word(1) as i64, word(2) as i64));
        }
        let mut failed = None;
        let e = plan.evaluation(f, sizes, |k| {
            if placed.iter().any(|(b, _)| *b == k) {
                return Vec::new();
            }
            let mut bytes = vec![0u8; lens[k] * elem_bytes(&plan.buffers[k])];
            if let Err(e) = dev.download(addrs[k], &mut bytes) {
                failed = Some(e);
            }
            decode(&plan.buffers[k], &bytes)
        });
        match failed {
            Some(e) => Err(device(e)),
            None => Ok(e),
        }
    };
    let out = call();
    dev.release();
    out
}

/// Launches one of a program's auxiliary kernels (the state gather and scatter) over `n` points, with
/// its buffer table and sizes; its call block is the call's (freed by [`Device::release`]).
pub fn launch_aux(
    dev: &mut dyn Device,
    kernel: usize,
    n: usize,
    buffers: &[u64],
    dims: &[i64],
) -> Result<(), CallError> {
    if n == 0 {
        return Ok(());
    }
    let words: Vec<u64> = [0u64; 4]
        .into_iter()
        .chain(buffers.iter().copied())
        .chain(dims.iter().map(|d| *d as u64))
        .collect();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let block = dev.alloc(bytes.len()).map_err(device)?;
    dev.upload(block, &bytes).map_err(device)?;
    let table = block + 32;
    let sizes = table + 8 * buffers.len() as u64;
    let threads = dev.block_size(Shape::Flat);
    let grid = (n as u64)
        .div_ceil(u64::from(threads))
        .clamp(1, u64::from(dev.max_grid().max(1))) as u32;
    dev.launch(kernel, grid, threads, 0, [table, sizes, sizes, block])
        .map_err(device)
}

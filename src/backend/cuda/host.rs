//! The host side of the CUDA backend, shared by every [`Device`]: buffers in the plan's layout, the
//! kernels launched in order with their geometry, the bounds-check flag read after the last launch, and
//! the results collected as the JIT collects them.

use super::{CudaError, Program, Shape};
use crate::backend::interp::Evaluation;
use crate::backend::loops::index_error;
use crate::call::{Bound, CallError};
use crate::data::Data;
use crate::ir::{Function, Scalar, TensorRef};

/// What runs generated kernels: the CUDA driver, or the host emulation of the tests. Addresses are
/// device addresses (`CUdeviceptr`).
pub trait Device {
    /// `bytes` of zeroed device memory, kept until [`Device::release`].
    fn alloc(&mut self, bytes: usize) -> Result<u64, CudaError>;
    fn upload(&mut self, dst: u64, data: &[u8]) -> Result<(), CudaError>;
    fn download(&mut self, src: u64, out: &mut [u8]) -> Result<(), CudaError>;
    /// Launches kernel `kernel` of the program (in [`Program::kernels`] order) with the four pointer
    /// arguments of the kernel ABI (buffer table, dims, hypers, error flag).
    fn launch(&mut self, kernel: usize, grid: u32, block: u32, args: [u64; 4]) -> Result<(), CudaError>;
    /// Threads per block for a kernel shape (a multiple of 32, at most 1024).
    fn block_size(&self, shape: Shape) -> u32;
    /// The most blocks one launch gets (the kernels loop over what is left).
    fn max_grid(&self) -> u32;
    /// Frees what [`Device::alloc`] gave out.
    fn release(&mut self);
}

/// Bytes per element of a buffer of this scalar kind.
pub fn elem_bytes(s: Scalar) -> usize {
    match s {
        Scalar::Float | Scalar::Bool => 4,
        Scalar::Int => 8,
    }
}

fn device(e: CudaError) -> CallError {
    CallError::Device(e.to_string())
}

/// Runs a program on a bound call of `f` (the function it was generated from).
pub fn run(program: &Program, f: &Function, call: &Bound, dev: &mut dyn Device) -> Result<Evaluation, CallError> {
    let out = run_on(program, f, call, dev);
    dev.release();
    out
}

fn run_on(program: &Program, f: &Function, call: &Bound, dev: &mut dyn Device) -> Result<Evaluation, CallError> {
    let plan = &program.plan;
    let sizes = &call.sizes;
    let lens: Vec<usize> = plan
        .buffers
        .iter()
        .map(|b| b.shape.iter().map(|d| d.eval(sizes).max(0) as usize).product())
        .collect();
    let mut addrs = Vec::with_capacity(plan.buffers.len());
    for (k, buf) in plan.buffers.iter().enumerate() {
        let bytes = lens[k] * elem_bytes(buf.scalar);
        // At least one element: a clamped subscript of a failed bounds check reads element 0.
        let addr = dev.alloc(bytes.max(16)).map_err(device)?;
        if let TensorRef::Input(i) = buf.of {
            let data: Vec<u8> = match &call.inputs[i as usize].data {
                Data::Float(v) => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
                Data::Int(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            dev.upload(addr, &data).map_err(device)?;
        }
        addrs.push(addr);
    }
    let upload = |dev: &mut dyn Device, bytes: Vec<u8>| -> Result<u64, CallError> {
        let addr = dev.alloc(bytes.len().max(16)).map_err(device)?;
        dev.upload(addr, &bytes).map_err(device)?;
        Ok(addr)
    };
    let table = upload(dev, addrs.iter().flat_map(|a| a.to_le_bytes()).collect())?;
    let dims = upload(dev, sizes.iter().flat_map(|d| d.to_le_bytes()).collect())?;
    let hypers = upload(dev, call.hypers.iter().flat_map(|h| h.to_le_bytes()).collect())?;
    let err = dev.alloc(32).map_err(device)?;
    for (k, spec) in program.kernels.iter().enumerate() {
        let extent = spec.extent.eval(sizes);
        if extent <= 0 {
            continue;
        }
        let block = dev.block_size(spec.shape);
        let max_grid = i64::from(dev.max_grid().max(1));
        let grid = match spec.shape {
            Shape::Flat | Shape::ThreadRows => (extent + i64::from(block) - 1) / i64::from(block),
            Shape::BlockRows => extent,
            Shape::Single => 1,
        }
        .clamp(1, max_grid) as u32;
        dev.launch(k, grid, block, [table, dims, hypers, err]).map_err(device)?;
    }
    let mut flag = [0u8; 24];
    dev.download(err, &mut flag).map_err(device)?;
    let word = |k: usize| i64::from_le_bytes(flag[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
    if word(0) != 0 {
        return Err(index_error(f, sizes, word(0), word(1), word(2)));
    }
    let mut failed = None;
    let e = plan.evaluation(f, sizes, |k| {
        let scalar = plan.buffers[k].scalar;
        let mut bytes = vec![0u8; lens[k] * elem_bytes(scalar)];
        if let Err(e) = dev.download(addrs[k], &mut bytes) {
            failed = Some(e);
        }
        match scalar {
            Scalar::Float => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                .collect(),
            Scalar::Int => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                .collect(),
            Scalar::Bool => bytes
                .chunks_exact(4)
                .map(|c| f64::from(u8::from(i32::from_le_bytes(c.try_into().expect("4 bytes")) != 0)))
                .collect(),
        }
    });
    match failed {
        Some(e) => Err(device(e)),
        None => Ok(e),
    }
}

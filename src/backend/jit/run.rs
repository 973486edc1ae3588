//! Running a kernel: buffers in the plan's layout, groups in order over a kept worker pool in fixed
//! chunks (or as sgemm), bounds-check reports, results.

use std::sync::Arc;

use super::*;
use crate::backend::interp::Evaluation;
use crate::backend::loops::split_members;
use crate::call::{Bound, CallError};
use crate::data::Data;
use crate::ir::{Function, Role, Scalar, TensorRef};

/// The worker pool for `threads` threads (`None` for one: the calling thread runs everything). Pools are
/// started on first use and kept for the process: a kernel runs many times, and starting threads for
/// each group costs more than a small group's work.
pub(super) fn pool(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
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
pub(super) struct SharedParts(*mut f32);
// SAFETY: every call writes only the slot of its chunk.
unsafe impl Send for SharedParts {}
unsafe impl Sync for SharedParts {}

/// A table of raw buffer pointers that threads may share: each writes a disjoint range of elements.
#[derive(Clone, Copy)]
pub(super) struct Shared(*const *mut u8);
// SAFETY: threads only read inputs and earlier tensors, and write disjoint chunks of the current one (and
// row-private rows of their own worker's scratch).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Compiled {
    /// The optimized function this code computes.
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
            let one = build(
                &self.function,
                self.plan.clone(),
                None,
                self.exp_rows,
                Functions::Only(k),
            )?;
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
        let mut buffers = self.defined(&call.sizes, &call.hypers);
        for (store, input) in buffers.stores.iter_mut().zip(&call.inputs) {
            *store = match &input.data {
                Data::Float(v) => Store::F(v.iter().map(|x| *x as f32).collect()),
                Data::Int(v) => Store::I(v.clone()),
            };
        }
        buffers
    }

    /// Every defined tensor's buffer for a call of these sizes; the inputs' stores stay empty (a caller
    /// fills them, or gives their addresses to [`Compiled::execute_over`]).
    pub fn defined(&self, sizes: &[i64], hypers: &[f64]) -> Buffers {
        let mut stores: Vec<Store> = Vec::with_capacity(self.plan.buffers.len());
        for (k, buf) in self.plan.buffers.iter().enumerate() {
            let len: usize = buf.shape.iter().map(|d| d.eval(sizes) as usize).product();
            stores.push(match buf.of {
                TensorRef::Input(_) => Store::F(Vec::new()),
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
            sizes: sizes.to_vec(),
            hypers: hypers.to_vec(),
        }
    }

    /// Makes `buffers` fit a call of these sizes and hyperparameters: kept as they are where the sizes are
    /// those of the last call (every group writes each element of its tensors, so nothing needs clearing),
    /// allocated afresh otherwise.
    pub fn refit<'b>(&self, buffers: &'b mut Option<Buffers>, sizes: &[i64], hypers: &[f64]) -> &'b mut Buffers {
        match buffers {
            Some(b) if b.sizes == sizes => {
                b.hypers.clear();
                b.hypers.extend_from_slice(hypers);
            }
            _ => *buffers = Some(self.defined(sizes, hypers)),
        }
        buffers.get_or_insert_with(|| self.defined(sizes, hypers))
    }

    /// Runs the native code over prepared buffers (what `lossc bench` times).
    pub fn execute(&self, buffers: &mut Buffers, threads: usize) -> Result<(), CallError> {
        self.execute_over(buffers, &[], threads)
    }

    /// [`Compiled::execute`] over memory the caller holds: `at[k]`, where given and not null, is where
    /// buffer `k`'s elements are (f32 floats, i64 labels, the bound call's shape, contiguous), used instead
    /// of its store: an input the code reads, or a result ([`crate::backend::loops::Plan::results`]) it
    /// writes.
    pub fn execute_over(&self, buffers: &mut Buffers, at: &[*mut u8], threads: usize) -> Result<(), CallError> {
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
        for (ptr, given) in ptrs.iter_mut().zip(at) {
            if !given.is_null() {
                *ptr = *given;
            }
        }
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
            .zip(&self.schedules)
            .zip(&self.products);
        for (k, (((group, entry), schedule), product)) in groups.enumerate() {
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
            let split = &schedule.split;
            let (outer, chunk) = match &run {
                Run::Product(p) if split.is_none() => (p.rows(), p.block_rows()),
                _ => schedule.chunking(f, nest, sizes, threads),
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
                return Err(crate::backend::loops::index_error(f, sizes, e[0], e[1], e[2]));
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
        self.plan
            .evaluation(&self.function, &buffers.sizes, |k| match &buffers.stores[k] {
                Store::F(v) => v.iter().map(|x| *x as f64).collect(),
                Store::I(v) => v.iter().map(|x| *x as f64).collect(),
                Store::C(v) => v.iter().map(|x| (*x != 0) as u8 as f64).collect(),
            })
    }

    /// The bytes [`Compiled::defined`] allocates for a call of these sizes.
    pub fn bytes_needed(&self, sizes: &[i64]) -> u64 {
        (self.plan.buffers.iter().enumerate())
            .filter(|(k, buf)| {
                matches!(buf.of, TensorRef::Def(_)) && !self.plan.row_private[*k] && self.plan.host[*k].is_none()
            })
            .map(|(_, buf)| {
                let len = crate::ir::Dim::elements(&buf.shape, sizes);
                let elem = if buf.scalar == Scalar::Int { 8 } else { 4 };
                len.saturating_mul(elem)
            })
            .fold(0, u64::saturating_add)
    }

    /// The elements of float buffer `k` of executed buffers (a result: [`crate::backend::loops::Plan::results`]).
    pub fn floats<'b>(&self, buffers: &'b Buffers, k: usize) -> &'b [f32] {
        match &buffers.stores[k] {
            Store::F(v) => v,
            _ => &[],
        }
    }

    /// The plan this code runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
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

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

/// The bytes of one block of rows of a pipeline's blocked buffers (loops::Plan::tiled) per worker, at most
/// (but for [`TILE_ROWS`]'s least): its widest buffer's rows (NT-Xent at B = 65,536: 32 rows of 256 KB).
const TILE_BYTES: i64 = 8 << 20;
/// The fewest and the most rows of a block, which holds at most a 32nd of all rows beyond the fewest (so
/// that the blocks of a small batch stay small beside its whole buffers). NT-Xent at B = 4,096 took 1.85,
/// 1.18, 0.84 and 0.73 s in blocks of 8, 16, 32 and 128 rows (one run each), its blocks 21–69 MB.
const TILE_ROWS: (i64, i64) = (8, 32);

/// Rows per block of a pipeline whose widest blocked buffer has rows of `widest` bytes, of `rows` in all.
fn block_rows(widest: u64, rows: i64) -> i64 {
    (TILE_BYTES / widest.max(1) as i64)
        .min(rows / 32)
        .clamp(TILE_ROWS.0, TILE_ROWS.1)
}

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
                TensorRef::Def(_) if self.plan.row_private[k] || self.plan.tiled[k] || self.plan.host[k].is_some() => {
                    Store::F(Vec::new())
                }
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
        let mut k = 0;
        while k < self.plan.groups.len() {
            // A pipeline's groups run together, a block of rows at a time (loops::Plan::pipelines).
            let last = (self.plan.pipelines.iter())
                .find(|(first, _)| *first == k)
                .map_or(k, |(_, last)| *last);
            let started = std::time::Instant::now();
            let mut stages = Vec::with_capacity(last + 1 - k);
            for g in k..=last {
                let nest = self.plan.members(&self.plan.groups[g])[0];
                let out = self.plan.buffer_of(f, TensorRef::Def(nest.tensor));
                // SAFETY: `ptrs` are the buffers of a bound call of this plan.
                let product = self.products[g]
                    .as_ref()
                    .filter(|c| gemm::fills_tiles(c, sizes))
                    .and_then(|c| unsafe { gemm::Product::new(c, out, &ptrs, sizes, &mut transposed_right) });
                // The product as sgemm, or the group's native function (compiled now where it was deferred).
                let run = match (product, &self.entries[g]) {
                    (Some(p), _) => Run::Product(p),
                    (None, Entry::Ready(native)) => Run::Native(*native),
                    (None, Entry::Deferred(cell)) => Run::Native(self.deferred(g, cell)?),
                };
                stages.push(Stage::new(self, g, run, &ptrs, sizes, threads));
            }
            let group = &self.plan.groups[k];
            let members = self.plan.members(group);
            let nest = members[0];
            let schedule = &self.schedules[k];
            let split = &schedule.split;
            // The pipeline's tiles (loops::Tile): each a product over the call's buffers, computed for each
            // block of rows into that block's rows of its buffer.
            let mut tile_copies: Vec<Vec<f32>> = Vec::new();
            let tiles: Vec<(usize, gemm::Product)> = (self.plan.tiles.iter())
                .filter(|t| t.group == k)
                .map(|t| {
                    let out = self
                        .plan
                        .buffer_of(f, TensorRef::Def(self.plan.nests[t.product.nest].tensor));
                    let mut transposed = Vec::new();
                    // SAFETY: `ptrs` are the buffers of a bound call of this plan; the copy `transposed`
                    // is kept below for as long as the product runs.
                    let p = unsafe { gemm::Product::new(&t.product, out, &ptrs, sizes, &mut transposed) };
                    tile_copies.push(transposed);
                    (out, p.expect("a tile's product has no mask").unmirrored())
                })
                .collect();
            // Every buffer that holds a block of rows in this pipeline (loops::Plan::tiled): its
            // elements per row and per element.
            let blocked: Vec<(usize, usize)> = (k..=last)
                .flat_map(|g| {
                    let used = super::build::used_buffers(f, &self.plan, &self.plan.members(&self.plan.groups[g]));
                    (0..used.len()).filter(move |b| used[*b])
                })
                .chain(tiles.iter().map(|(out, _)| *out))
                .filter(|b| self.plan.tiled[*b])
                .collect::<std::collections::BTreeSet<usize>>()
                .into_iter()
                .map(|b| {
                    let buf = &self.plan.buffers[b];
                    let row: i64 = buf.shape[1..].iter().map(|d| d.eval(sizes).max(0)).product();
                    (b, row as usize * Lower::elem_type(buf.scalar).bytes() as usize)
                })
                .collect();
            // Each buffer's block starts on a cache line.
            let block_bytes = |bytes: usize, rows: i64| (bytes * rows as usize).next_multiple_of(64);
            let widest = blocked.iter().map(|(_, bytes)| *bytes).max().unwrap_or(0);
            let (outer, chunk) = match &stages[0].run {
                Run::Product(p) if split.is_none() && last == k => (p.rows(), p.block_rows()),
                _ => schedule.chunking(f, nest, sizes, threads),
            };
            let block_rows = block_rows(widest as u64, outer);
            // A tile's product repacks the other operand for every block: blocks of whole tiles.
            let chunk = if blocked.is_empty() {
                chunk
            } else {
                chunk.max(block_rows)
            };
            let chunks: Vec<(i64, i64)> = (0..outer)
                .step_by(chunk as usize)
                .map(|lo| (lo, (lo + chunk).min(outer)))
                .collect();
            let per_worker: usize = blocked.iter().map(|(_, bytes)| block_bytes(*bytes, block_rows)).sum();
            let workers = if blocked.is_empty() { 0 } else { threads.max(1) + 1 };
            let mut block_store = vec![0u64; (per_worker * workers).div_ceil(8)];
            let blocks_base = SharedParts(block_store.as_mut_ptr() as *mut f32);
            let buffer_count = ptrs.len();
            let per_chunk = if split.is_some() { members.len() } else { 1 };
            let mut partials = vec![0f32; chunks.len().max(1) * per_chunk];
            let slots = SharedParts(partials.as_mut_ptr());
            let numbered: Vec<(usize, (i64, i64))> = chunks.iter().copied().enumerate().collect();
            let stages = &stages;
            // `worker`: which scratch rows the calls use (0 on the calling thread, 1 + a pool thread's index).
            let run_chunks = |worker: usize, chunks: &[(usize, (i64, i64))]| -> [i64; 3] {
                // (The wrappers whole, not their pointer fields, which are not Sync.)
                let (blocks_base, slots) = (blocks_base, slots);
                let mut err = [0i64; 3];
                for &(c, (lo, hi)) in chunks {
                    // Without blocked buffers the chunk at once; with them, blocks of `block_rows` rows, each
                    // through the tiles and then every stage, reading tables that point each blocked buffer
                    // at this worker's block (moved back by the block's first row, as code addresses whole
                    // buffers).
                    let blocks: Vec<(i64, i64)> = match blocked.is_empty() {
                        true => vec![(lo, hi)],
                        false => (lo..hi)
                            .step_by(block_rows as usize)
                            .map(|b| (b, (b + block_rows).min(hi)))
                            .collect(),
                    };
                    for (b_lo, b_hi) in blocks {
                        // SAFETY: this worker's part of the store holds `block_rows` rows of each blocked
                        // buffer, which only this worker uses; a block's rows are read only within it.
                        let moved: Vec<(usize, *mut u8)> = {
                            let mut at =
                                unsafe { (blocks_base.0 as *mut u8).add(worker.min(workers.max(1) - 1) * per_worker) };
                            blocked
                                .iter()
                                .map(|&(b, bytes)| {
                                    let base = at;
                                    at = unsafe { at.add(block_bytes(bytes, block_rows)) };
                                    (b, base.wrapping_sub(b_lo as usize * bytes))
                                })
                                .collect()
                        };
                        for (out, p) in &tiles {
                            let (_, base) = moved
                                .iter()
                                .find(|(b, _)| b == out)
                                .expect("a tile's buffer is blocked");
                            let row = p.columns();
                            // SAFETY: as above; the block's rows of the tile's buffer.
                            unsafe { p.rows_into(b_lo, b_hi, (*base as *mut f32).wrapping_add(b_lo as usize * row)) };
                        }
                        for stage in stages {
                            // SAFETY: as above, and the stage's own guarantees (Stage::run).
                            unsafe {
                                stage.run(
                                    worker,
                                    &moved,
                                    buffer_count,
                                    (b_lo, b_hi),
                                    sizes,
                                    hypers,
                                    &mut err,
                                    slots.0.add(c * per_chunk),
                                )
                            };
                            if err[0] != 0 {
                                return err;
                            }
                        }
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
            drop(tile_copies);
            if let Some((first, _)) = split.as_ref().and_then(|_| split_members(f, &members)) {
                for (slot, member) in members.iter().enumerate().skip(first) {
                    // The parts in chunk order, in f64.
                    let total: f64 = (0..chunks.len()).map(|c| partials[c * per_chunk + slot] as f64).sum();
                    let b = self.plan.buffer_of(f, TensorRef::Def(member.tensor));
                    // SAFETY: a rank-0 float buffer holds one f32; no thread runs now.
                    unsafe { *(ptrs[b] as *mut f32) = total as f32 };
                }
            }
            if profile {
                let names: Vec<&str> = (k..=last)
                    .flat_map(|g| self.plan.members(&self.plan.groups[g]))
                    .map(|m| f.tensor(m.tensor).name.as_str())
                    .collect();
                eprintln!(
                    "{:<24} {:>9.3} ms",
                    names.join(", "),
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            if let Some(e) = errs.iter().find(|e| e[0] != 0) {
                return Err(crate::backend::loops::index_error(f, sizes, e[0], e[1], e[2]));
            }
            k = last + 1;
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

    /// Whether buffer `k` is one this code allocates for a call (a tensor's, not a row kept in a group or
    /// one sharing another's storage).
    fn allocated(&self, k: usize) -> bool {
        matches!(self.plan.buffers[k].of, TensorRef::Def(_)) && !self.plan.row_private[k] && self.plan.host[k].is_none()
    }

    /// [`crate::call::check_elements`] on the tensors this code stores whole (a blocked buffer holds a
    /// block of rows, a row-private one a row).
    pub fn check_elements(&self, sizes: &[i64]) -> Result<(), crate::call::CallError> {
        (self.plan).check_elements(&self.function, sizes, |k| self.allocated(k) && !self.plan.tiled[k])
    }

    /// The bytes [`Compiled::defined`] allocates for a call of these sizes, and the blocks of rows of its
    /// blocked buffers (loops::Plan::tiled), one per worker of a call on `threads` threads.
    pub fn bytes_needed(&self, sizes: &[i64], threads: usize) -> u64 {
        let workers = threads.max(1) as u64 + 1;
        (self.plan.buffers.iter().enumerate())
            .filter(|(k, _)| self.allocated(*k))
            .map(|(k, buf)| {
                let elem = if buf.scalar == Scalar::Int { 8 } else { 4 };
                if self.plan.tiled[k] {
                    let row = crate::ir::Dim::elements(&buf.shape[1..], sizes).saturating_mul(elem);
                    let rows = block_rows(row, buf.shape[0].eval(sizes)) as u64;
                    return row.saturating_mul(rows).saturating_mul(workers);
                }
                crate::ir::Dim::elements(&buf.shape, sizes).saturating_mul(elem)
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

/// One group of a call as it runs: its product or native code, and the pointer tables its workers read
/// (each pointing a row-private buffer at a row of that worker's scratch, which it owns).
struct Stage {
    run: Run,
    /// A product's left operand's and output's buffers (moved to a block where they are blocked).
    product_buffers: (usize, usize),
    tables: Vec<Vec<*mut u8>>,
    _scratch: Vec<u64>,
}

// SAFETY: the tables are only read; each worker writes only its own scratch rows through them.
unsafe impl Sync for Stage {}

impl Stage {
    fn new(c: &Compiled, g: usize, run: Run, ptrs: &[*mut u8], sizes: &[i64], threads: usize) -> Stage {
        let f = &c.function;
        let group = &c.plan.groups[g];
        // Row-private buffers (loops::Plan::row_private): one row of scratch per worker, each worker's
        // calls reading a pointer table that points there.
        let private: Vec<(usize, usize)> = (c.plan.private_buffers(f, group).into_iter())
            .map(|k| {
                let buf = &c.plan.buffers[k];
                let elements: i64 = buf.shape[1..].iter().map(|d| d.eval(sizes).max(0)).product();
                let bytes = elements as usize * Lower::elem_type(buf.scalar).bytes() as usize;
                (k, bytes.div_ceil(64) * 8)
            })
            .collect();
        let per_worker: usize = private.iter().map(|(_, words)| words).sum();
        // Without row-private buffers every call reads the one table of the buffers.
        let workers = if private.is_empty() { 1 } else { threads.max(1) + 1 };
        let mut scratch = vec![0u64; per_worker * workers];
        let tables = (0..workers)
            .map(|w| {
                let mut table = ptrs.to_vec();
                let mut at = w * per_worker;
                for &(k, words) in &private {
                    table[k] = scratch[at..].as_mut_ptr() as *mut u8;
                    at += words;
                }
                table
            })
            .collect();
        let product_buffers = match &c.products[g] {
            Some(p) => (
                p.left.buffer,
                c.plan.buffer_of(f, TensorRef::Def(c.plan.nests[p.nest].tensor)),
            ),
            None => (0, 0),
        };
        Stage {
            run,
            product_buffers,
            tables,
            _scratch: scratch,
        }
    }

    /// Runs rows `lo..hi` of the group: its product, or its native code with `worker`'s table, the
    /// buffers in `moved` pointed at their block.
    ///
    /// # Safety
    /// The buffers are a bound call's of the plan; `moved` point at blocks holding rows `lo..hi` that
    /// only this worker uses; the rows `lo..hi` of the group's tensors are written by no other call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        &self,
        worker: usize,
        moved: &[(usize, *mut u8)],
        buffers: usize,
        (lo, hi): (i64, i64),
        sizes: &[i64],
        hypers: &[f64],
        err: &mut [i64; 3],
        slot: *mut f32,
    ) {
        let table = &self.tables[worker.min(self.tables.len() - 1)];
        debug_assert_eq!(table.len(), buffers);
        match &self.run {
            Run::Product(p) => {
                let at = |b: usize| moved.iter().find(|(m, _)| *m == b).map(|(_, p)| *p);
                let (left, out) = self.product_buffers;
                let p = p.with_bases(at(left).map(|p| p as *const f32), at(out).map(|p| p as *mut f32));
                // SAFETY: as the caller promises.
                unsafe { p.block(lo, hi) };
            }
            Run::Native(entry) => {
                let patched: Vec<*mut u8>;
                let table = if moved.is_empty() {
                    table.as_ptr()
                } else {
                    patched = (0..buffers)
                        .map(|b| moved.iter().find(|(m, _)| *m == b).map_or(table[b], |(_, p)| *p))
                        .collect();
                    patched.as_ptr()
                };
                // SAFETY: buffers match the plan (bound call), the code checks every subscript that is not
                // statically in range, and these rows (or the partial slot) are written by no other call.
                unsafe { entry(table, sizes.as_ptr(), hypers.as_ptr(), err.as_mut_ptr(), lo, hi, slot) };
            }
        }
    }
}

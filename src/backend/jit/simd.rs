//! 4-wide SIMD for innermost loops along one index `k` (Cranelift 0.135 has 128-bit vectors: f32x4).
//!
//! A body is vectorizable along `k` when every node that depends on `k` is a load at `k` (`k` is one bare
//! subscript, every other subscript is in range and independent of `k`; contiguous when `k` is the last
//! subscript, else a float gathered lane by lane; integers and conditions load contiguous, as i32 lanes,
//! the low halves of their i64 elements), `k` itself, a comparison of
//! such integers, or an elementwise float operation of the supported set on such nodes; nodes that do
//! not depend on `k` are computed once per vector step as scalars and broadcast. Nothing in a vectorized
//! body can fail or loop (no reductions, no checked subscripts), so evaluating every lane — also lanes a
//! mask or a choice discards — is safe. Loops run 4 elements at a time while 4 remain; the scalar code
//! finishes the tail, so any extent works (an elementwise run of at least 4 ends instead in a vector
//! overlapping the one before, computed before the loop where the element reads what it stores, and
//! runs shorter than 4 are scalar; a nest reading a matrix transposed reads 4 x 4 blocks and transposes
//! them in registers). A sum over
//! other indices inside such an element (the `sum[i] g[i, j] * x[i, d]` of a gradient contraction)
//! accumulates all 4 lanes at once, in f32; where no lane gathers, a tile of up to 512 such columns
//! accumulates in a stack slot along each row of the summed index (a kilobyte or two of every row read in
//! a run, not a cache line a page apart).

use rustc_hash::FxHashMap as HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    ConstantData, Endianness, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Value, types,
};
use cranelift_frontend::Variable;

use super::Lower;
use crate::ir::{Expr, IndexId, NodeId, ReduceOp, Scalar};
use crate::prims::Prim;

pub(super) const LANES: i64 = 4;

/// How many outputs a dot-product nest computes per pass over the contracted index.
const DOT_BLOCK: i64 = 4;

/// How many vectors of its head a column sum computes per pass over the summed index.
const COLUMN_BLOCK: i64 = 4;

/// The columns of a block of [`COLUMN_BLOCK`] vectors.
pub(super) const COLUMN_BLOCK_COLUMNS: i64 = LANES * COLUMN_BLOCK;

/// How many columns of its head a column sum accumulates (in a stack tile) per pass over the summed
/// index: each pass reads a kilobyte of every row it visits, where [`COLUMN_BLOCK`] vectors read one cache
/// line of it (a new page per row of a wide matrix, and a TLB miss). A column sum's parallel chunks hold
/// at least this many columns ([`super::Compiled`]).
pub(super) const COLUMN_TILE: i64 = 512;

/// How many values of the summed index a row update handles per pass over the row.
const ROW_BLOCK: i64 = 4;

/// See [`Lower::row_update_form`].
#[derive(Clone, Copy)]
pub(super) struct RowUpdate {
    index: IndexId,
    mask: Option<NodeId>,
    scale: NodeId,
    row: NodeId,
}

/// A side of a lane choice ([`Lower::blend`]).
#[derive(Clone, Copy)]
enum Side {
    Zero,
    Lanes(Value),
}

/// A vector max or min reduction's accumulator ([`Lower::vext_new`]).
#[derive(Clone, Copy)]
pub(super) struct Extreme {
    lanes: Variable,
    /// The lanes that met a NaN (none: NaN values are skipped).
    nan: Option<Variable>,
    max: bool,
}

fn vflags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl Lower<'_, '_> {
    /// Whether `n` can be computed lane-wise along `k`.
    pub(super) fn vectorizable(&self, n: NodeId, k: IndexId) -> bool {
        let mut memo = HashMap::default();
        self.vec_ok(n, k, &mut memo)
    }

    fn vec_ok(&self, n: NodeId, k: IndexId, memo: &mut HashMap<NodeId, bool>) -> bool {
        if let Some(v) = memo.get(&n) {
            return *v;
        }
        let node = self.f.node(n);
        let ok = if !node.free.contains(&k) {
            // Invariant: computed as a scalar; it must not fail or loop.
            !self.needs_branch(n)
        } else {
            match &node.expr {
                Expr::Index(i) => *i == k,
                // Integers load as i32 lanes (the low halves of their i64 elements), conditions as their
                // i32 masks.
                // Contiguous along k (k the last subscript), or a float strided along k (gathered).
                Expr::Load { tensor, subs } => {
                    let shape = self.f.ref_shape(*tensor);
                    let at_k = |s: &NodeId| matches!(self.f.node(*s).expr, Expr::Index(i) if i == k);
                    let in_range = subs.iter().zip(&shape).all(|(s, d)| self.in_range(*s, d));
                    let along_k = subs.iter().filter(|s| at_k(s)).count() == 1
                        && subs
                            .iter()
                            .filter(|s| !at_k(s))
                            .all(|s| !self.f.node(*s).free.contains(&k))
                        && (subs.last().is_some_and(at_k) || node.scalar == Scalar::Float);
                    // Else a float whose subscripts depend on k otherwise (a label's score `s[b, y[b, i, j],
                    // i, j]`): gathered lane by lane ([`Self::lane_by_lane`]).
                    in_range && (along_k || (node.scalar == Scalar::Float && self.label_gather(subs, k)))
                }
                // A sum over other indices, each term lane-wise along k (an outer-product style loop).
                Expr::Reduce {
                    op: ReduceOp::Sum,
                    indices,
                    mask,
                    body,
                } => {
                    !indices.contains(&k) && self.vec_ok(*body, k, memo) && mask.is_none_or(|m| self.vec_ok(m, k, memo))
                }
                // A max, min or logsumexp over other indices whose terms are contiguous along k (a softmax
                // over the channels of [B, C, H, W] scores: each lane a pixel, [`Self::vreduce`]); where the
                // lanes would gather, the row strategies of reduce.rs read the row contiguously instead.
                Expr::Reduce {
                    op: ReduceOp::Max | ReduceOp::Min | ReduceOp::LogSumExp,
                    indices,
                    mask,
                    body,
                } => {
                    !indices.contains(&k)
                        && !self.gathers(*body, k)
                        && mask.is_none_or(|m| !self.gathers(m, k))
                        && self.vec_ok(*body, k, memo)
                        && mask.is_none_or(|m| self.vec_ok(m, k, memo))
                }
                Expr::Prim { prim, args } => {
                    use Prim::*;
                    let args_ok = args.iter().all(|a| self.vec_ok(*a, k, memo));
                    args_ok
                        && match prim {
                            Add | Sub | Mul | Div | Neg | Min | Max | Abs | Sqrt | Exp | Sigmoid | Log | Log1p
                            | Softplus | Tanh | Atan | Relu | StopGrad => node.scalar == Scalar::Float,
                            // Integer lanes come from k itself, integer loads and invariants (no integer
                            // arithmetic is vectorized), so any comparison of them is.
                            Eq | Ne | Lt | Le | Gt | Ge => true,
                            And | Or | Not | Iverson => true,
                            Select => node.scalar == Scalar::Float,
                            _ => false,
                        }
                }
                _ => false,
            }
        };
        memo.insert(n, ok);
        ok
    }

    /// `body(l, kb)` for kb = start, start + 4, … while kb + 4 <= end; returns the first k not covered.
    pub(super) fn vector_loop(
        &mut self,
        k: IndexId,
        start: Value,
        end: Value,
        body: &mut dyn FnMut(&mut Self, Value),
    ) -> Value {
        self.stepped_loop(k, start, end, LANES, &mut |l: &mut Self| {
            let kb = l.index(k);
            body(l, kb)
        })
    }

    /// [`Self::vector_loop`] with `times` vectors per iteration, for a light body, whose loop would otherwise
    /// spend as many instructions on its own counting and branching as on the body. Each vector's `body`
    /// runs in its own scope, with `k` read as its `kb`. Returns the first k not covered: up to
    /// `times * 4 - 1` points are left to the caller's scalar tail (a loop of single vectors for them
    /// would be one more copy of the body to compile).
    pub(super) fn unrolled_vector_loop(
        &mut self,
        k: IndexId,
        start: Value,
        end: Value,
        times: i64,
        body: &mut dyn FnMut(&mut Self, Value),
    ) -> Value {
        self.stepped_loop(k, start, end, times * LANES, &mut |l: &mut Self| {
            let base = l.index(k);
            for u in 0..times {
                let kb = l.b.ins().iadd_imm_s(base, u * LANES);
                l.fixed.insert(k, kb);
                l.frames.push(HashMap::default());
                body(l, kb);
                l.frames.pop();
                l.fixed.remove(&k);
            }
        })
    }

    /// [`Self::unrolled_vector_loop`], then single vectors over the points it leaves, the last one ending
    /// at `end` (it overlaps the vector before): every point of `[start, end)` is covered. Only for a run
    /// of at least 4 points whose `body` stores each point's value and reads nothing it stores (the
    /// points covered twice get the same bits twice). Returns `end`.
    pub(super) fn overlapping_vector_loop(
        &mut self,
        k: IndexId,
        start: Value,
        end: Value,
        times: i64,
        body: &mut dyn FnMut(&mut Self, Value),
    ) {
        let covered = self.unrolled_vector_loop(k, start, end, times, body);
        // Vectors at covered, covered + 4, … while one starts before `end` (i + 4 <= end + 3), each moved
        // back to end at most at `end`.
        let last = self.b.ins().iadd_imm_s(end, -LANES);
        let bound = self.b.ins().iadd_imm_s(end, LANES - 1);
        self.stepped_loop(k, covered, bound, LANES, &mut |l: &mut Self| {
            let at = l.index(k);
            let kb = l.b.ins().smin(at, last);
            l.fixed.insert(k, kb);
            body(l, kb);
            l.fixed.remove(&k);
        });
    }

    /// [`Self::overlapping_vector_loop`] for a run whose points read what is stored at them (a kept
    /// exponential, a guest's row), so that a point must not be computed again after its store: the
    /// last vector (ending at `end`) is computed first, `lanes(l, kb)`, kept in a register through the
    /// loop and stored (`store(l, lanes)`, with `k` fixed at its start) after it, over points the loop
    /// may have stored with the same bits. Single vectors cover what an unrolled loop leaves before it.
    pub(super) fn last_first_vector_loop(
        &mut self,
        k: IndexId,
        start: Value,
        end: Value,
        times: i64,
        lanes: &mut dyn FnMut(&mut Self, Value) -> Value,
        store: &mut dyn FnMut(&mut Self, Value),
    ) {
        let last = self.b.ins().iadd_imm_s(end, -LANES);
        let at_last = |l: &mut Self, f: &mut dyn FnMut(&mut Self)| {
            l.fixed.insert(k, last);
            l.frames.push(HashMap::default());
            f(l);
            l.frames.pop();
            l.fixed.remove(&k);
        };
        let mut kept = None;
        at_last(self, &mut |l: &mut Self| kept = Some(lanes(l, last)));
        let kept = kept.expect("the last vector");
        let mut each = |l: &mut Self, kb: Value| {
            let v = lanes(l, kb);
            store(l, v)
        };
        let covered = self.unrolled_vector_loop(k, start, end, times, &mut each);
        if times > 1 {
            self.vector_loop(k, covered, end, &mut each);
        }
        at_last(self, &mut |l: &mut Self| store(l, kept));
    }

    /// The loads `m[q, p]` of `body` (floats, both subscripts bare and in range) that an elementwise
    /// nest `[p, q]` reads transposed.
    pub(super) fn transposed_loads(&self, body: NodeId, p: IndexId, q: IndexId) -> Vec<NodeId> {
        let bare = |s: NodeId, i: IndexId| matches!(self.f.node(s).expr, Expr::Index(j) if j == i);
        self.f
            .reachable(&[body])
            .into_iter()
            .filter(|n| match &self.f.node(*n).expr {
                Expr::Load { tensor, subs } if subs.len() == 2 && self.f.node(*n).scalar == Scalar::Float => {
                    let shape = &self.plan.buffers[self.plan.buffer_of(self.f, *tensor)].shape;
                    bare(subs[0], q)
                        && bare(subs[1], p)
                        && self.in_range(subs[0], &shape[0])
                        && self.in_range(subs[1], &shape[1])
                }
                _ => false,
            })
            .collect()
    }

    /// Rows `lo..end` of an elementwise nest `[p, q]` over a tile's columns `qb..qe` (a multiple of 4),
    /// four rows at a time: each transposed load (`transposed`, see [`Self::transposed_loads`]) reads a
    /// 4 × 4 block of its matrix with four row loads and transposes it in registers, where each element's
    /// lanes would gather four scalars. Returns the first row not covered (fewer than 4 are left).
    pub(super) fn transposed_blocks(
        &mut self,
        buffer: usize,
        head: &[(IndexId, crate::ir::Dim)],
        body: NodeId,
        transposed: &[NodeId],
        (lo, end): (Value, Value),
        (qb, qe): (Value, Value),
    ) -> Value {
        let [(p, _), (q, _)] = head else {
            unreachable!("a transposed block: two indices");
        };
        let (p, q) = (*p, *q);
        self.stepped_loop(p, lo, end, LANES, &mut |l: &mut Self| {
            let p0 = l.index(p);
            let at_row = |l: &mut Self, i: i64| l.b.ins().iadd_imm_s(p0, i);
            // Each row's invariants, once per block of rows.
            let rows: Vec<HashMap<NodeId, Value>> = (0..LANES)
                .map(|i| {
                    let row = at_row(l, i);
                    l.fixed.insert(p, row);
                    l.frames.push(HashMap::default());
                    l.hoist_invariants(&[body]);
                    l.fixed.remove(&p);
                    l.frames.pop().expect("pushed")
                })
                .collect();
            l.vector_loop(q, qb, qe, &mut |l: &mut Self, kb| {
                let blocks: Vec<[Value; 4]> = transposed.iter().map(|n| l.transposed_block(*n, kb, p0)).collect();
                for (i, row) in rows.iter().enumerate() {
                    let at = at_row(l, i as i64);
                    l.fixed.insert(p, at);
                    l.frames.push(row.clone());
                    let mut memo: HashMap<NodeId, Value> = transposed
                        .iter()
                        .zip(&blocks)
                        .map(|(n, block)| (*n, block[i]))
                        .collect();
                    let v = l.vvalue(body, q, kb, &mut memo);
                    let flat = l.flat(head);
                    l.vstore(buffer, flat, v);
                    l.frames.pop();
                    l.fixed.remove(&p);
                }
            });
        })
    }

    /// The 4 × 4 block `m[kb + r, p0 + c]` of the matrix load `n` (`m[q, p]`), as four vectors: the `c`th
    /// holds `m[kb .. kb + 4, p0 + c]`, the lanes of row `p0 + c` at columns `kb ..`.
    fn transposed_block(&mut self, n: NodeId, kb: Value, p0: Value) -> [Value; 4] {
        let Expr::Load { tensor, .. } = &self.f.node(n).expr else {
            unreachable!("a transposed load");
        };
        let buffer = self.plan.buffer_of(self.f, *tensor);
        let width = self.plan.buffers[buffer].shape[1].clone();
        let width = self.dim(&width);
        let rows: [Value; 4] = std::array::from_fn(|r| {
            let row = self.b.ins().iadd_imm_s(kb, r as i64);
            let start = self.b.ins().imul(row, width);
            let flat = self.b.ins().iadd(start, p0);
            let addr = self.address(buffer, Scalar::Float, flat);
            self.b
                .ins()
                .load(types::F32X4, MemFlagsData::new().with_notrap(), addr, 0)
        });
        self.transpose4(rows)
    }

    /// The 4 × 4 transpose of `rows`: lane c of row r ends in vector c, lane r.
    fn transpose4(&mut self, rows: [Value; 4]) -> [Value; 4] {
        // Interleave pairs of rows, then pairs of pairs.
        let low = self.interleave(rows[0], rows[1], [0, 4, 1, 5]);
        let high = self.interleave(rows[0], rows[1], [2, 6, 3, 7]);
        let low2 = self.interleave(rows[2], rows[3], [0, 4, 1, 5]);
        let high2 = self.interleave(rows[2], rows[3], [2, 6, 3, 7]);
        [
            self.interleave(low, low2, [0, 1, 4, 5]),
            self.interleave(low, low2, [2, 3, 6, 7]),
            self.interleave(high, high2, [0, 1, 4, 5]),
            self.interleave(high, high2, [2, 3, 6, 7]),
        ]
    }

    /// The f32 lanes `lanes` (0–3 from `a`, 4–7 from `b`) of two vectors.
    fn interleave(&mut self, a: Value, b: Value, lanes: [u8; 4]) -> Value {
        let bytes: Vec<u8> = lanes.iter().flat_map(|l| (0..4).map(move |k| l * 4 + k)).collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(bytes));
        let (a, b) = (
            self.b.ins().bitcast(types::I8X16, vflags(), a),
            self.b.ins().bitcast(types::I8X16, vflags(), b),
        );
        let mixed = self.b.ins().shuffle(a, b, imm);
        self.b.ins().bitcast(types::F32X4, vflags(), mixed)
    }

    pub(super) fn splat_f32(&mut self, x: f32) -> Value {
        self.fk(x, true)
    }

    fn mask_as_f32(&mut self, m: Value) -> Value {
        self.b.ins().bitcast(types::F32X4, vflags(), m)
    }

    /// The lanes of `n` at k = kb .. kb + 3: f32x4 for numbers, an i32x4 mask for conditions.
    pub(super) fn vvalue(&mut self, n: NodeId, k: IndexId, kb: Value, memo: &mut HashMap<NodeId, Value>) -> Value {
        if let Some(v) = memo.get(&n) {
            return *v;
        }
        if let Some(e) = self.kept_exp(n, true) {
            return e;
        }
        let node = self.f.node(n).clone();
        let v = if !node.free.contains(&k) {
            let s = self.value(n);
            // A constant's lanes are loaded (see Lower::lanes_constant), not splatted.
            let constant = self.constant_bits(s);
            match (node.scalar, constant) {
                (Scalar::Float, Some(bits)) => self.lanes_constant(types::F32X4, [bits as u32; 4]),
                (Scalar::Int, Some(bits)) => self.lanes_constant(types::I32X4, [bits as u32; 4]),
                (Scalar::Bool, Some(bits)) => self.lanes_constant(types::I32X4, [(bits as u32).wrapping_neg(); 4]),
                (Scalar::Float, None) => self.b.ins().splat(types::F32X4, s),
                (Scalar::Int, None) => {
                    let s32 = self.b.ins().ireduce(types::I32, s);
                    self.b.ins().splat(types::I32X4, s32)
                }
                (Scalar::Bool, None) => {
                    let s32 = self.b.ins().uextend(types::I32, s);
                    let m = self.b.ins().ineg(s32);
                    self.b.ins().splat(types::I32X4, m)
                }
            }
        } else {
            match &node.expr {
                Expr::Index(_) => {
                    // [kb, kb + 1, kb + 2, kb + 3]: a splat plus a constant vector.
                    let k32 = self.b.ins().ireduce(types::I32, kb);
                    let base = self.b.ins().splat(types::I32X4, k32);
                    let steps = self.lanes_constant(types::I32X4, [0, 1, 2, 3]);
                    self.b.ins().iadd(base, steps)
                }
                Expr::Load { subs, .. } if !self.along(subs, k) => self.lane_by_lane(n, k, kb),
                Expr::Load { tensor, subs } => {
                    let buffer = self.plan.buffer_of(self.f, *tensor);
                    let (flat, stride) = self.lanes_flat(buffer, subs, k, kb);
                    let contiguous = matches!(self.f.node(subs[subs.len() - 1]).expr, Expr::Index(i) if i == k);
                    match node.scalar {
                        Scalar::Float if !contiguous => {
                            // A gather: four loads `stride` elements apart, into the lanes.
                            let stride = stride.expect("vectorizable: k is a subscript");
                            let step = self.b.ins().ishl_imm_u(stride, 2);
                            let mut addr = self.address(buffer, Scalar::Float, flat);
                            let first = self
                                .b
                                .ins()
                                .load(types::F32, MemFlagsData::new().with_notrap(), addr, 0);
                            let mut lanes = self.b.ins().scalar_to_vector(types::F32X4, first);
                            for lane in 1..LANES as u8 {
                                addr = self.b.ins().iadd(addr, step);
                                let x = self
                                    .b
                                    .ins()
                                    .load(types::F32, MemFlagsData::new().with_notrap(), addr, 0);
                                lanes = self.b.ins().insertlane(lanes, x, lane);
                            }
                            lanes
                        }
                        Scalar::Float => {
                            let addr = self.address(buffer, Scalar::Float, flat);
                            self.b
                                .ins()
                                .load(types::F32X4, MemFlagsData::new().with_notrap(), addr, 0)
                        }
                        Scalar::Bool => {
                            // Four conditions: their i32 masks as they are.
                            let addr = self.address(buffer, Scalar::Bool, flat);
                            self.b.ins().load(types::I32X4, vflags().with_notrap(), addr, 0)
                        }
                        Scalar::Int => {
                            // Four i64 elements: two i64x2 loads, their low halves gathered into i32x4.
                            let addr = self.address(buffer, Scalar::Int, flat);
                            let lo = self.b.ins().load(types::I8X16, vflags().with_notrap(), addr, 0);
                            let hi = self.b.ins().load(types::I8X16, vflags().with_notrap(), addr, 16);
                            let bytes: Vec<u8> = [0u8, 8, 16, 24].iter().flat_map(|b| *b..*b + 4).collect();
                            let imm = self.b.func.dfg.immediates.push(ConstantData::from(bytes));
                            let low = self.b.ins().shuffle(lo, hi, imm);
                            self.b.ins().bitcast(types::I32X4, vflags(), low)
                        }
                    }
                }
                // `x - lse[t]` with the logsumexp's rounding residual, where lse[t] is the same in every lane.
                Expr::Prim { prim: Prim::Sub, args }
                    if self.plan.residual_read(n).is_some() && !self.f.node(args[1]).free.contains(&k) =>
                {
                    let a = self.vvalue(args[0], k, kb, memo);
                    let b = self.value(args[1]);
                    let lo = self.residual_at(n, args[1]);
                    let (b, lo) = (
                        self.b.ins().splat(types::F32X4, b),
                        self.b.ins().splat(types::F32X4, lo),
                    );
                    let d = self.b.ins().fsub(a, b);
                    self.b.ins().fsub(d, lo)
                }
                // The same where lse differs from lane to lane (a pixel's logsumexp over channels): its
                // residual lanes from the residual buffer, at the load's place.
                Expr::Prim { prim: Prim::Sub, args } if self.plan.residual_read(n).is_some() => {
                    let a = self.vvalue(args[0], k, kb, memo);
                    let b = self.vvalue(args[1], k, kb, memo);
                    let lo = self.vresidual_at(n, args[1], k, kb);
                    let d = self.b.ins().fsub(a, b);
                    self.b.ins().fsub(d, lo)
                }
                Expr::Prim { prim, args } => self.vprim(*prim, args, k, kb, memo),
                Expr::Reduce { op: ReduceOp::Sum, .. } => self.vsums(n, k, &[kb])[0],
                Expr::Reduce { .. } => self.vreduce(n, k, kb),
                _ => unreachable!("vectorizable() admits no other node"),
            }
        };
        memo.insert(n, v);
        v
    }

    /// The lanes of the sum `n` (over indices other than `k`) at each of the lane starts `kbs`, all
    /// accumulated in one pass over the summed indices (f32 lanes, terms in index order), or lane by lane
    /// along the summed index where lanes along `k` would gather every term ([`Self::vrow_sum`]).
    fn vsums(&mut self, n: NodeId, k: IndexId, kbs: &[Value]) -> Vec<Value> {
        let Expr::Reduce {
            indices, mask, body, ..
        } = self.f.node(n).expr.clone()
        else {
            unreachable!("vsums: a reduction");
        };
        if let Some(d) = self.row_sum_index(n, k) {
            return kbs.iter().map(|kb| self.vrow_sum(d, body, k, *kb)).collect();
        }
        let zero = self.splat_f32(0.0);
        let accs: Vec<Variable> = kbs
            .iter()
            .map(|_| {
                let acc = self.b.declare_var(types::F32X4);
                self.b.def_var(acc, zero);
                acc
            })
            .collect();
        let ranges: Vec<(IndexId, crate::ir::Dim)> =
            indices.iter().map(|i| (*i, self.f.index(*i).range.clone())).collect();
        let outer: Vec<HashMap<NodeId, Value>> = kbs.iter().map(|kb| self.lanes_outside(n, k, *kb)).collect();
        self.reduce_loops(&ranges, 0, &mut |l: &mut Self| {
            for ((acc, kb), outer) in accs.iter().zip(kbs).zip(&outer) {
                // Terms depend on the summed indices: a fresh memo per point, over what does not.
                let mut inner = outer.clone();
                let v = l.vvalue(body, k, *kb, &mut inner);
                let m = mask.map(|m| l.vvalue(m, k, *kb, &mut inner));
                let v = l.fill_masked(v, m, 0.0);
                let a = l.b.use_var(*acc);
                let r = l.b.ins().fadd(a, v);
                l.b.def_var(*acc, r);
            }
        });
        accs.into_iter().map(|acc| self.b.use_var(acc)).collect()
    }

    /// The lanes at `kb` of the nodes under the reduction `n` that depend on `k` and on no index bound
    /// inside it (a label's score `s[b, y[b, i, j], i, j]` inside a logsumexp over channels): computed once
    /// before the reduction's loops, for each point's memo to start from.
    fn lanes_outside(&mut self, n: NodeId, k: IndexId, kb: Value) -> HashMap<NodeId, Value> {
        let Expr::Reduce { mask, body, .. } = self.f.node(n).expr.clone() else {
            unreachable!("lanes_outside: a reduction");
        };
        let bound = self.f.node(n).free.clone();
        let mut memo = HashMap::default();
        let roots: Vec<NodeId> = std::iter::once(body).chain(mask).collect();
        for m in self.f.reachable(&roots) {
            let free = &self.f.node(m).free;
            if free.contains(&k) && free.iter().all(|i| bound.contains(i)) {
                self.vvalue(m, k, kb, &mut memo);
            }
        }
        memo
    }

    /// Whether a load's subscripts are bare indices and integer loads at bare indices (a label `y[b, i,
    /// j]`), one of which reads along `k`: a gather that [`Self::lane_by_lane`] computes in four scalar
    /// loads. Other subscripts that depend on `k` (index arithmetic) stay with the scalar code, whose
    /// loops compile to less.
    fn label_gather(&self, subs: &[NodeId], k: IndexId) -> bool {
        let bare = |n: NodeId| matches!(self.f.node(n).expr, Expr::Index(_));
        let label = |n: NodeId| match &self.f.node(n).expr {
            Expr::Load { subs, .. } => self.f.node(n).scalar == Scalar::Int && subs.iter().all(|s| bare(*s)),
            _ => false,
        };
        subs.iter().all(|s| bare(*s) || label(*s))
            && subs.iter().any(|s| label(*s) && self.f.node(*s).free.contains(&k))
            && !subs.iter().any(|s| self.needs_branch(*s))
    }

    /// Where the first lane of a load along `k` at `kb` lies in `buffer` (the flat position of `subs` with
    /// `k` at `kb`), and the elements between consecutive `k` (the sizes of the axes after k's).
    fn lanes_flat(&mut self, buffer: usize, subs: &[NodeId], k: IndexId, kb: Value) -> (Value, Option<Value>) {
        let shape = self.plan.buffers[buffer].shape.clone();
        let mut flat = self.int(0);
        let mut stride = None;
        for (s, d) in subs.iter().zip(&shape) {
            let at_k = matches!(self.f.node(*s).expr, Expr::Index(i) if i == k);
            let v = if at_k { kb } else { self.value(*s) };
            let size = self.dim(d);
            stride = stride.map(|st| self.int_mul(st, size));
            if at_k {
                stride = Some(self.int(1));
            }
            let scaled = self.int_mul(flat, size);
            flat = self.int_add(scaled, v);
        }
        (flat, stride)
    }

    /// The lanes of the residual that the read `n` (`x - lse[..]`) subtracts with `lse`, a load that
    /// depends on `k`: a vector from the residual buffer where the load runs along `k` contiguously, else
    /// lane by lane.
    fn vresidual_at(&mut self, n: NodeId, lse: NodeId, k: IndexId, kb: Value) -> Value {
        let Expr::Load { subs, .. } = self.f.node(lse).expr.clone() else {
            unreachable!("a residual read subtracts a load")
        };
        let contiguous = self.along(&subs, k)
            && subs
                .last()
                .is_some_and(|s| matches!(self.f.node(*s).expr, Expr::Index(i) if i == k));
        if !contiguous {
            return self.per_lane(k, kb, &mut |l: &mut Self| l.residual_at(n, lse));
        }
        let buffer = self.plan.residual_read(n).expect("a residual read");
        let (flat, _) = self.lanes_flat(buffer, &subs, k, kb);
        let addr = self.address(buffer, Scalar::Float, flat);
        self.b
            .ins()
            .load(types::F32X4, MemFlagsData::new().with_notrap(), addr, 0)
    }

    /// Whether a load's subscripts are `k` once, bare, and others free of `k` (a load along `k`).
    fn along(&self, subs: &[NodeId], k: IndexId) -> bool {
        let at_k = |s: &NodeId| matches!(self.f.node(*s).expr, Expr::Index(i) if i == k);
        subs.iter().filter(|s| at_k(s)).count() == 1
            && subs
                .iter()
                .filter(|s| !at_k(s))
                .all(|s| !self.f.node(*s).free.contains(&k))
    }

    /// The lanes of `n` at `kb .. kb + 4` computed one at a time by the scalar code, `k` fixed at each (a
    /// float load at subscripts that depend on `k` through other loads; in range, so it cannot fail).
    fn lane_by_lane(&mut self, n: NodeId, k: IndexId, kb: Value) -> Value {
        self.per_lane(k, kb, &mut |l: &mut Self| l.value(n))
    }

    /// Four scalars `scalar(l)` as lanes, with `k` fixed at `kb + lane` for each (in a scope of its own).
    fn per_lane(&mut self, k: IndexId, kb: Value, scalar: &mut dyn FnMut(&mut Self) -> Value) -> Value {
        let before = self.fixed.get(&k).copied();
        let mut lanes = self.splat_f32(0.0);
        for lane in 0..LANES as u8 {
            let at = self.b.ins().iadd_imm_s(kb, lane as i64);
            self.fixed.insert(k, at);
            self.frames.push(HashMap::default());
            let x = scalar(self);
            self.frames.pop();
            lanes = self.b.ins().insertlane(lanes, x, lane);
        }
        match before {
            Some(v) => self.fixed.insert(k, v),
            None => self.fixed.remove(&k),
        };
        lanes
    }

    /// The lanes of the max, min or logsumexp `n` over indices other than `k`, each lane a row of its own
    /// (one pass over the reduced indices for all four): a max (min) lane by lane, NaN in a lane whose
    /// terms hold one (as `fmax` over them gives); a logsumexp in two passes, the lanes' maxima and then
    /// their sums of exp(x - max) in f64, each lane finished as the row code finishes a row (max +
    /// log(sum) in f64, rounded once; a maximum of ±inf or NaN is the result), its rounding residual left
    /// in [`Lower::lane_residual`] for the nest's residual buffer. Masked terms are left out.
    fn vreduce(&mut self, n: NodeId, k: IndexId, kb: Value) -> Value {
        let Expr::Reduce {
            op,
            indices,
            mask,
            body,
        } = self.f.node(n).expr.clone()
        else {
            unreachable!("vreduce: a reduction");
        };
        let ranges: Vec<(IndexId, crate::ir::Dim)> =
            indices.iter().map(|i| (*i, self.f.index(*i).range.clone())).collect();
        let max = op != ReduceOp::Min;
        let acc = self.vext_new(max, true);
        let empty = if max { f32::NEG_INFINITY } else { f32::INFINITY };
        let outer = self.lanes_outside(n, k, kb);
        self.reduce_loops(&ranges, 0, &mut |l: &mut Self| {
            let mut inner = outer.clone();
            let v = l.vvalue(body, k, kb, &mut inner);
            let m = mask.map(|m| l.vvalue(m, k, kb, &mut inner));
            let v = l.fill_masked(v, m, empty);
            l.vext_add(acc, v);
        });
        let lanes = self.b.use_var(acc.lanes);
        let seen = self.b.use_var(acc.nan.expect("tracked"));
        let seen = self.b.ins().bitcast(types::F32X4, vflags(), seen);
        let nan = self.splat_f32(f32::NAN);
        let mx = self.b.ins().bitselect(seen, nan, lanes);
        if op != ReduceOp::LogSumExp {
            return mx;
        }
        let sums = self.vacc_sum();
        self.reduce_loops(&ranges, 0, &mut |l: &mut Self| {
            let mut inner = outer.clone();
            let v = l.vvalue(body, k, kb, &mut inner);
            let m = mask.map(|m| l.vvalue(m, k, kb, &mut inner));
            let d = l.b.ins().fsub(v, mx);
            let e = l.exp_lanes(d, true);
            let e = l.fill_masked(e, m, 0.0);
            l.vacc_add(sums, e);
        });
        let halves = [self.b.use_var(sums.0), self.b.use_var(sums.1)];
        let (mut out, mut residual) = (mx, self.splat_f32(0.0));
        for lane in 0..LANES as u8 {
            let m = self.b.ins().extractlane(mx, lane);
            let sum = self.b.ins().extractlane(halves[lane as usize / 2], lane % 2);
            let lg = self.call("lossc_log", &[sum]);
            let m64 = self.b.ins().fpromote(types::F64, m);
            let r64 = self.b.ins().fadd(m64, lg);
            let r = self.b.ins().fdemote(types::F32, r64);
            let finite = self.finite(m);
            let value = self.b.ins().select(finite, r, m);
            out = self.b.ins().insertlane(out, value, lane);
            let back = self.b.ins().fpromote(types::F64, r);
            let lo = self.b.ins().fsub(r64, back);
            let lo = self.b.ins().fdemote(types::F32, lo);
            let zero = self.fconst(0.0);
            let lo = self.b.ins().select(finite, lo, zero);
            residual = self.b.ins().insertlane(residual, lo, lane);
        }
        self.lane_residual = Some(residual);
        out
    }

    /// A vectorized nest whose element is a sum over other indices (a column sum `r[h] = sum[i] e(i, h)`),
    /// [`COLUMN_BLOCK`] vectors of `k` per pass over the summed indices, so each pass reads whole cache
    /// lines of the rows it visits instead of 16 bytes (and touches each page a quarter as often). Returns
    /// the first `k` not covered. Each lane sums in the same order as in the 4-lane loop.
    pub(super) fn column_blocks(
        &mut self,
        buffer: usize,
        head: &[(IndexId, crate::ir::Dim)],
        k: IndexId,
        start: Value,
        end: Value,
        element: NodeId,
    ) -> Value {
        // (A dot product along rows sums each vector along its own index: one at a time, each stored as it
        // is done, is what keeps its accumulators in registers.)
        if !matches!(self.f.node(element).expr, Expr::Reduce { op: ReduceOp::Sum, .. })
            || self.row_sum_index(element, k).is_some()
        {
            return start;
        }
        // Tiles for a column sum along its one (outermost) index, whose chunks are then as wide as a tile;
        // an inner index of a matrix's rows is seldom that wide (and more loops cost compile time).
        let start = match head.len() == 1 && !self.gathers(element, k) {
            true => {
                self.column_tiles = true;
                self.column_tiles(buffer, head, k, start, end, element)
            }
            false => start,
        };
        self.stepped_loop(k, start, end, LANES * COLUMN_BLOCK, &mut |l: &mut Self| {
            let kb = l.index(k);
            let kbs: Vec<Value> = (0..COLUMN_BLOCK).map(|u| l.b.ins().iadd_imm_s(kb, u * LANES)).collect();
            let sums = l.vsums(element, k, &kbs);
            let flat = l.flat(head);
            for (u, v) in sums.into_iter().enumerate() {
                let at = l.b.ins().iadd_imm_s(flat, u as i64 * LANES);
                l.vstore(buffer, at, v);
            }
        })
    }

    /// Whether lanes along `k` of `n` gather a float load (strided along `k`): a tile's rows would then
    /// be a page apart for each step of the summed index.
    fn gathers(&self, n: NodeId, k: IndexId) -> bool {
        self.f.reachable(&[n]).iter().any(|m| match &self.f.node(*m).expr {
            Expr::Load { subs, .. } => {
                self.f.node(*m).free.contains(&k)
                    && !subs
                        .last()
                        .is_some_and(|s| matches!(self.f.node(*s).expr, Expr::Index(i) if i == k))
            }
            _ => false,
        })
    }

    /// The column sum of [`Self::column_blocks`] over tiles of up to [`COLUMN_TILE`] columns (as many
    /// whole blocks of [`COLUMN_BLOCK`] vectors as `start..end` holds): the tile's lanes accumulate in a
    /// stack slot, a block at a time along each row of the summed indices, then go to the buffer. Each lane
    /// adds the same terms in the same order as in [`Self::vsums`] (f32, from +0), so the sums have the
    /// same bits in any tiling. Returns the first `k` not covered.
    fn column_tiles(
        &mut self,
        buffer: usize,
        head: &[(IndexId, crate::ir::Dim)],
        k: IndexId,
        start: Value,
        end: Value,
        element: NodeId,
    ) -> Value {
        let Expr::Reduce {
            indices, mask, body, ..
        } = self.f.node(element).expr.clone()
        else {
            unreachable!("column_tiles: a reduction");
        };
        let ranges: Vec<(IndexId, crate::ir::Dim)> =
            indices.iter().map(|i| (*i, self.f.index(*i).range.clone())).collect();
        let bytes = (COLUMN_TILE * 4) as u32;
        let slot = self
            .b
            .create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes, 4));
        let (tile_start, tile_end) = (self.b.declare_var(types::I64), self.b.declare_var(types::I64));
        // The tile slot's address of column `kb`.
        let slot_at = |l: &mut Self, kb: Value| {
            let tile = l.b.use_var(tile_start);
            let offset = l.b.ins().isub(kb, tile);
            let offset = l.b.ins().imul_imm_s(offset, 4);
            let offset = l.offset(offset);
            let base = l.b.ins().stack_addr(l.ptr, slot, 0);
            l.b.ins().iadd(base, offset)
        };
        // `body` for each vector of the tile (`step` columns at a time), `k` running over its columns.
        let over_tile = |l: &mut Self, step: i64, body: &mut dyn FnMut(&mut Self, Value)| {
            let (tile, end) = (l.b.use_var(tile_start), l.b.use_var(tile_end));
            l.stepped_loop(k, tile, end, step, &mut |l: &mut Self| {
                let kb = l.index(k);
                body(l, kb)
            });
        };
        let memory = vflags().with_notrap();
        // Tiles from `start` while a block is left: the last one ends at the last whole block.
        let block = LANES * COLUMN_BLOCK;
        let span = self.b.ins().isub(end, start);
        let zero = self.b.ins().iconst(types::I64, 0);
        let span = self.b.ins().smax(span, zero);
        let covered = self.b.ins().band_imm_s(span, -block);
        let last = self.b.ins().iadd(start, covered);
        let (header, inner, exit) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        self.b.def_var(tile_start, start);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let tile = self.b.use_var(tile_start);
        let done = self.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, tile, last);
        self.b.ins().brif(done, exit, &[], inner, &[]);
        self.b.switch_to_block(inner);
        self.frames.push(HashMap::default());
        self.bound.push(k);
        let next = self.b.ins().iadd_imm_s(tile, COLUMN_TILE);
        let next = self.b.ins().smin(next, last);
        self.b.def_var(tile_end, next);
        over_tile(self, LANES, &mut |l: &mut Self, kb| {
            let zero = l.splat_f32(0.0);
            let at = slot_at(l, kb);
            l.b.ins().store(memory, zero, at, 0);
        });
        self.reduce_loops(&ranges, 0, &mut |l: &mut Self| {
            over_tile(l, block, &mut |l: &mut Self, kb| {
                let at = slot_at(l, kb);
                for u in 0..COLUMN_BLOCK {
                    let kb = l.b.ins().iadd_imm_s(kb, u * LANES);
                    // Terms depend on the summed indices: a fresh memo per point.
                    let mut inner = HashMap::default();
                    let v = l.vvalue(body, k, kb, &mut inner);
                    let m = mask.map(|m| l.vvalue(m, k, kb, &mut inner));
                    let v = l.fill_masked(v, m, 0.0);
                    let offset = (16 * u) as i32;
                    let acc = l.b.ins().load(types::F32X4, memory, at, offset);
                    let acc = l.b.ins().fadd(acc, v);
                    l.b.ins().store(memory, acc, at, offset);
                }
            });
        });
        over_tile(self, LANES, &mut |l: &mut Self, kb| {
            let flat = l.flat(head);
            let at = slot_at(l, kb);
            let v = l.b.ins().load(types::F32X4, memory, at, 0);
            l.vstore(buffer, flat, v);
        });
        self.bound.pop();
        self.frames.pop();
        let next = self.b.use_var(tile_end);
        self.b.def_var(tile_start, next);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
        let var = self.var(k);
        self.b.def_var(var, last);
        last
    }

    fn vprim(
        &mut self,
        prim: Prim,
        args: &[NodeId],
        k: IndexId,
        kb: Value,
        memo: &mut HashMap<NodeId, Value>,
    ) -> Value {
        use Prim::*;
        if matches!(prim, Iverson | Select) {
            // `[i != j]` is `[i == j]` with its sides swapped: `pcmpeqd` is the only integer lane compare
            // for equality, and `!=` would invert it on its own.
            let (mask, swapped) = match self.integer_opposite(args[0], k, kb, memo) {
                Some(opposite) => (opposite, true),
                None => {
                    let m = self.vvalue(args[0], k, kb, memo);
                    (self.mask_as_f32(m), false)
                }
            };
            let (yes, no) = match prim {
                Iverson => (Side::Lanes(self.splat_f32(1.0)), Side::Zero),
                _ => (self.side(args[1], k, kb, memo), self.side(args[2], k, kb, memo)),
            };
            return match swapped {
                true => self.blend(mask, no, yes),
                false => self.blend(mask, yes, no),
            };
        }
        let a: Vec<Value> = args.iter().map(|x| self.vvalue(*x, k, kb, memo)).collect();
        let ins = &mut *self.b;
        match prim {
            Add => ins.ins().fadd(a[0], a[1]),
            Sub => ins.ins().fsub(a[0], a[1]),
            Mul => ins.ins().fmul(a[0], a[1]),
            Div if self.f.node(args[1]).free.is_empty() => {
                let one = self.splat_f32(1.0);
                let reciprocal = self.b.ins().fdiv(one, a[1]);
                self.b.ins().fmul(a[0], reciprocal)
            }
            Div => ins.ins().fdiv(a[0], a[1]),
            Neg => ins.ins().fneg(a[0]),
            Min | Max => {
                // `maxps x y` (`minps`) by Cranelift's pattern: y where either is NaN; then a NaN x wins, so
                // a NaN of either side propagates as with `fmax` (three instructions for its seven; which
                // zero `max(-0, +0)` gives is left open, as in the interpreter).
                let (x, y) = (a[0], a[1]);
                let pick = match prim {
                    Max => self.b.ins().fcmp(FloatCC::LessThan, y, x),
                    _ => self.b.ins().fcmp(FloatCC::LessThan, x, y),
                };
                let pick = self.mask_as_f32(pick);
                let r = self.b.ins().bitselect(pick, x, y);
                let x_nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
                let x_nan = self.mask_as_f32(x_nan);
                self.b.ins().bitselect(x_nan, x, r)
            }
            Abs => ins.ins().fabs(a[0]),
            Sqrt => ins.ins().sqrt(a[0]),
            StopGrad => a[0],
            Relu => {
                // x where x > 0 or NaN (`cmpnleps`), +0 elsewhere (-0 too): the scalar `fmax(x, 0)`.
                let zero = self.splat_f32(0.0);
                let keep = self.b.ins().fcmp(FloatCC::UnorderedOrGreaterThan, a[0], zero);
                let keep = self.mask_as_f32(keep);
                self.b.ins().band(a[0], keep)
            }
            Exp => self.exp_lanes(a[0], true),
            Sigmoid => self.sigmoid_lanes(a[0], true),
            Log => self.log_lanes(a[0], true),
            Log1p => self.log1p_lanes(a[0], true),
            Softplus => self.softplus_lanes(a[0], true),
            Tanh => self.tanh_lanes(a[0], true),
            Atan => self.atan_lanes(a[0], true),
            Eq | Ne | Lt | Le | Gt | Ge => {
                let int = args.iter().all(|x| self.f.node(*x).scalar == Scalar::Int);
                self.compare(prim, int, a[0], a[1])
            }
            And => self.b.ins().band(a[0], a[1]),
            Or => self.b.ins().bor(a[0], a[1]),
            Not => self.b.ins().bnot(a[0]),
            _ => unreachable!("vectorizable() admits no other primitive"),
        }
    }

    /// One side of a choice: +0.0 (all bits clear), or its lanes.
    fn side(&mut self, n: NodeId, k: IndexId, kb: Value, memo: &mut HashMap<NodeId, Value>) -> Side {
        match self.f.as_float(n) {
            Some(x) if x.to_bits() == 0 => Side::Zero,
            _ => Side::Lanes(self.vvalue(n, k, kb, memo)),
        }
    }

    /// `yes` where the f32x4 mask holds, `no` elsewhere: a side that is +0.0 makes it one mask (`andps` /
    /// `andnps` for the blend of three).
    fn blend(&mut self, mask: Value, yes: Side, no: Side) -> Value {
        match (yes, no) {
            (Side::Lanes(yes), Side::Zero) => self.b.ins().band(yes, mask),
            (Side::Zero, Side::Lanes(no)) => {
                let not = self.b.ins().bnot(mask);
                self.b.ins().band(no, not)
            }
            (Side::Lanes(yes), Side::Lanes(no)) => self.b.ins().bitselect(mask, yes, no),
            (Side::Zero, Side::Zero) => self.splat_f32(0.0),
        }
    }

    /// For a condition `a != b` on integers that varies along `k`: the lanes of `a == b`, as an f32x4 mask.
    fn integer_opposite(
        &mut self,
        condition: NodeId,
        k: IndexId,
        kb: Value,
        memo: &mut HashMap<NodeId, Value>,
    ) -> Option<Value> {
        let node = self.f.node(condition);
        let Expr::Prim { prim: Prim::Ne, args } = &node.expr else {
            return None;
        };
        let args = args.clone();
        let int = args.iter().all(|x| self.f.node(*x).scalar == Scalar::Int);
        if !int || !node.free.contains(&k) || memo.contains_key(&condition) {
            return None;
        }
        let (a, b) = (self.vvalue(args[0], k, kb, memo), self.vvalue(args[1], k, kb, memo));
        let equal = self.compare(Prim::Eq, true, a, b);
        Some(self.mask_as_f32(equal))
    }

    /// `v` where the lanes' mask holds, `fill` elsewhere (just `v` without a mask).
    pub(super) fn fill_masked(&mut self, v: Value, mask: Option<Value>, fill: f32) -> Value {
        match mask {
            None => v,
            Some(m) => {
                let m = self.mask_as_f32(m);
                let f = self.splat_f32(fill);
                self.b.ins().bitselect(m, v, f)
            }
        }
    }

    /// Vector accumulators of a reduction: two f64x2 for sums (all 4 lanes kept in f64), one f32x4 for
    /// max/min. `add` and `fold` update them; `finish_*` folds them into a scalar at the end.
    pub(super) fn vacc_sum(&mut self) -> (Variable, Variable) {
        let z = self.b.ins().f64const(0.0);
        let z = self.b.ins().splat(types::F64X2, z);
        let (lo, hi) = (self.b.declare_var(types::F64X2), self.b.declare_var(types::F64X2));
        self.b.def_var(lo, z);
        self.b.def_var(hi, z);
        (lo, hi)
    }

    pub(super) fn vacc_add(&mut self, acc: (Variable, Variable), v: Value) {
        let low = self.b.ins().fvpromote_low(v);
        let bytes: Vec<u8> = (8..16).chain(8..16).collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(bytes));
        let x = self.b.ins().bitcast(types::I8X16, vflags(), v);
        let sh = self.b.ins().shuffle(x, x, imm);
        let sh = self.b.ins().bitcast(types::F32X4, vflags(), sh);
        let high = self.b.ins().fvpromote_low(sh);
        let (a, b) = (self.b.use_var(acc.0), self.b.use_var(acc.1));
        let a = self.b.ins().fadd(a, low);
        let b = self.b.ins().fadd(b, high);
        self.b.def_var(acc.0, a);
        self.b.def_var(acc.1, b);
    }

    /// The total of a sum's vector accumulators, as an f64 scalar.
    pub(super) fn vacc_total(&mut self, acc: (Variable, Variable)) -> Value {
        let (a, b) = (self.b.use_var(acc.0), self.b.use_var(acc.1));
        let s = self.b.ins().fadd(a, b);
        let x0 = self.b.ins().extractlane(s, 0);
        let x1 = self.b.ins().extractlane(s, 1);
        self.b.ins().fadd(x0, x1)
    }

    /// An f32x4 accumulator starting at `init` in every lane.
    pub(super) fn vacc_lanes(&mut self, init: f32) -> Variable {
        let v = self.splat_f32(init);
        let var = self.b.declare_var(types::F32X4);
        self.b.def_var(var, v);
        var
    }

    /// The accumulator of a vector max (or min): lanes updated with one `maxps` (`minps`) each and, with
    /// `track_nan`, a separate mask of the lanes that met a NaN, so the update is off the NaN-propagating
    /// `fmax` sequence (seven instructions on one dependency chain); without it NaN values are skipped.
    /// [`Self::vext_fold`] gives the result.
    pub(super) fn vext_new(&mut self, max: bool, track_nan: bool) -> Extreme {
        let lanes = self.vacc_lanes(if max { f32::NEG_INFINITY } else { f32::INFINITY });
        let nan = track_nan.then(|| {
            let zero = self.b.ins().iconst(types::I32, 0);
            let zero = self.b.ins().splat(types::I32X4, zero);
            let nan = self.b.declare_var(types::I32X4);
            self.b.def_var(nan, zero);
            nan
        });
        Extreme { lanes, nan, max }
    }

    /// `acc = v > acc ? v : acc` (`<` for min) lane by lane: a NaN `v` leaves `acc` and marks its lane.
    pub(super) fn vext_add(&mut self, acc: Extreme, v: Value) {
        let a = self.b.use_var(acc.lanes);
        // The operand order of Cranelift's `maxps`/`minps` patterns (x64 lower.isle).
        let (lo, hi) = if acc.max { (a, v) } else { (v, a) };
        let pick = self.b.ins().fcmp(FloatCC::LessThan, lo, hi);
        let pick = self.b.ins().bitcast(types::F32X4, vflags(), pick);
        let r = self.b.ins().bitselect(pick, v, a);
        self.b.def_var(acc.lanes, r);
        if let Some(nan) = acc.nan {
            let unordered = self.b.ins().fcmp(FloatCC::Unordered, v, v);
            let seen = self.b.use_var(nan);
            let seen = self.b.ins().bor(seen, unordered);
            self.b.def_var(nan, seen);
        }
    }

    /// The max (min) of every value added, as `fmax` (`fmin`) over them would give: NaN if any was (for an
    /// accumulator that skips NaN, the max of the others).
    pub(super) fn vext_fold(&mut self, acc: Extreme) -> Value {
        let r = self.vacc_fold(acc.lanes, acc.max);
        let Some(seen) = acc.nan else { return r };
        let seen = self.b.use_var(seen);
        let any = self.b.ins().vany_true(seen);
        let nan = self.b.ins().f32const(f32::NAN);
        self.b.ins().select(any, nan, r)
    }

    /// Folds the lanes of an f32x4 accumulator with `fmax` (or `fmin`) into one f32.
    pub(super) fn vacc_fold(&mut self, acc: Variable, max: bool) -> Value {
        let v = self.b.use_var(acc);
        let mut r = self.b.ins().extractlane(v, 0);
        for l in 1..LANES as u8 {
            let x = self.b.ins().extractlane(v, l);
            r = if max {
                self.b.ins().fmax(r, x)
            } else {
                self.b.ins().fmin(r, x)
            };
        }
        r
    }

    /// The element of a nest with an outer head index and a last one `k`, when it is a sum over one
    /// index: (k, the summed index, the mask, the term).
    fn single_sum_element(
        &self,
        head: &[(IndexId, crate::ir::Dim)],
        body: NodeId,
    ) -> Option<(IndexId, IndexId, Option<NodeId>, NodeId)> {
        let (k, _) = *head.last()?;
        if head.len() < 2 || self.f.node(body).scalar != Scalar::Float {
            return None;
        }
        let Expr::Reduce {
            op: ReduceOp::Sum,
            indices,
            mask,
            body: term,
        } = &self.f.node(body).expr
        else {
            return None;
        };
        let &[i] = &indices[..] else { return None };
        Some((k, i, *mask, *term))
    }

    /// A nest `r[…, k] = sum[i | m] s * v` whose mask `m` and factor `s` do not depend on the last head
    /// index `k` while `v` is vectorizable along `k`, and contiguous along `k` where it is along `i` (the gradient of a contraction: `g[h, d] = sum[i]
    /// w[i, h] * x[i, d]`).
    pub(super) fn row_update_form(&self, head: &[(IndexId, crate::ir::Dim)], body: NodeId) -> Option<RowUpdate> {
        let (k, i, mask, term) = self.single_sum_element(head, body)?;
        if mask.is_some_and(|m| self.f.node(m).free.contains(&k)) {
            return None;
        }
        let Expr::Prim { prim: Prim::Mul, args } = &self.f.node(term).expr else {
            return None;
        };
        let depends = |n: NodeId| self.f.node(n).free.contains(&k);
        let (scale, row) = match (depends(args[0]), depends(args[1])) {
            (false, true) => (args[0], args[1]),
            (true, false) => (args[1], args[0]),
            _ => return None,
        };
        // A row strided along `k` but contiguous along `i` (`sum[d] a[t, d] * b[k, d]`, a dot product) is
        // summed along `i` instead ([`Self::dot_nest`], [`Self::vrow_sum`]).
        let across = self.gathers(row, k) && !self.gathers(row, i);
        (self.vectorizable(row, k) && !self.needs_branch(row) && !across).then_some(RowUpdate {
            index: i,
            mask,
            scale,
            row,
        })
    }

    /// The loops of a [`RowUpdate`] nest: for each row of the outer head indices, zero the row, then add
    /// `s * v` for each `i` where the mask holds, computing `s` once per row and `i` (not per element).
    /// Four values of `i` are handled per pass over the row (one load and store of each row vector per
    /// four updates) when all four masks hold; otherwise those four go one by one, skipping masked-out
    /// points (which add nothing, not 0 * v: v may be inf or NaN there). f32 accumulation in the output
    /// row, as the other in-lane sums.
    ///
    /// Loop order: row by row, all `i` for each; or, when the factor reads a matrix at `[i, row]` (the
    /// transpose, as in `sum[i] g[i, h] * x[i, d]`), `i` outside and the chunk's rows inside, so those
    /// reads run along a matrix row and each `v(i)` is reused by every row of the chunk while in cache.
    /// Each output element receives the same terms in the same order either way.
    pub(super) fn row_update_nest(
        &mut self,
        buffer: usize,
        head: &[(IndexId, crate::ir::Dim)],
        update: RowUpdate,
        from: usize,
    ) {
        let (k, kd) = head.last().cloned().expect("row_update_form: a head");
        let outer = head[..head.len() - 1].to_vec();
        let head = head.to_vec();
        let i = update.index;
        let roots: Vec<NodeId> = [Some(update.scale), Some(update.row), update.mask]
            .into_iter()
            .flatten()
            .collect();
        let zero_row = |l: &mut Self| {
            let zero = l.b.ins().iconst(types::I64, 0);
            let end = l.dim(&kd);
            let tail = l.vector_loop(k, zero, end, &mut |l: &mut Self, _kb| {
                let z = l.splat_f32(0.0);
                let flat = l.flat(&head);
                l.vstore(buffer, flat, z);
            });
            l.for_range(k, tail, end, &mut |l: &mut Self| {
                let z = l.b.ins().f32const(0.0);
                let flat = l.flat(&head);
                l.store(buffer, Scalar::Float, flat, z);
            });
        };
        let n_of = |l: &mut Self| {
            let range = l.f.index(i).range.clone();
            l.dim(&range)
        };
        if let ([(h, hd)], 0, true) = (&outer[..], from, self.reads_transposed(&roots, i, outer[0].0)) {
            let (h, hd) = (*h, hd.clone());
            self.hoist_invariants(&roots);
            let extent = self.dim(&hd);
            let (lo, hi) = (self.lo, self.b.ins().smin(self.hi, extent));
            self.for_range(h, lo, hi, &mut |l: &mut Self| zero_row(l));
            let zero = self.b.ins().iconst(types::I64, 0);
            let n = n_of(self);
            let rest = self.stepped_loop(i, zero, n, ROW_BLOCK, &mut |l: &mut Self| {
                let i0 = l.index(i);
                l.for_range(h, lo, hi, &mut |l: &mut Self| {
                    let end = l.dim(&kd);
                    l.row_update_block(buffer, &head, update, k, end, i0);
                });
            });
            self.for_range(h, lo, hi, &mut |l: &mut Self| {
                let end = l.dim(&kd);
                l.row_updates_one_by_one(buffer, &head, update, k, end, rest, n);
            });
            return;
        }
        self.loops(&outer, from, &roots, &mut |l: &mut Self| {
            zero_row(l);
            let zero = l.b.ins().iconst(types::I64, 0);
            let end = l.dim(&kd);
            let n = n_of(l);
            let rest = l.stepped_loop(i, zero, n, ROW_BLOCK, &mut |l: &mut Self| {
                let i0 = l.index(i);
                l.row_update_block(buffer, &head, update, k, end, i0);
            });
            l.row_updates_one_by_one(buffer, &head, update, k, end, rest, n);
        });
    }

    /// Whether a node under `roots` loads a matrix at `[i, h]`.
    fn reads_transposed(&self, roots: &[NodeId], i: IndexId, h: IndexId) -> bool {
        self.f.reachable(roots).into_iter().any(|n| match &self.f.node(n).expr {
            Expr::Load { subs, .. } => matches!(subs[..], [a, b]
                if self.f.node(a).expr == Expr::Index(i) && self.f.node(b).expr == Expr::Index(h)),
            _ => false,
        })
    }

    /// Updates the current row with `i` = i0 .. i0 + 3: all four in one pass when their masks hold, else one
    /// by one (masked-out points skipped). Leaves `i` at i0.
    #[allow(clippy::too_many_arguments)]
    fn row_update_block(
        &mut self,
        buffer: usize,
        head: &[(IndexId, crate::ir::Dim)],
        update: RowUpdate,
        k: IndexId,
        end: Value,
        i0: Value,
    ) {
        let i = update.index;
        // Each i's factor (0, and not evaluated, where its mask fails) and whether all four masks hold.
        let mut conds = Vec::new();
        let scales: Vec<Value> = (0..ROW_BLOCK)
            .map(|u| {
                self.at_index(i, i0, u, &mut |l: &mut Self| match update.mask {
                    None => l.value(update.scale),
                    Some(m) => {
                        let c = l.value(m);
                        conds.push(c);
                        l.branch(
                            c,
                            types::F32,
                            &mut |l: &mut Self| l.value(update.scale),
                            &mut |l: &mut Self| l.b.ins().f32const(0.0),
                        )
                    }
                })
            })
            .collect();
        let all = conds.into_iter().reduce(|a, b| self.b.ins().band(a, b));
        let block = &mut |l: &mut Self| l.row_axpy(buffer, head, update, k, end, i0, &scales);
        match all {
            None => block(self),
            Some(all) => {
                let (fast, slow, next) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
                self.b.ins().brif(all, fast, &[], slow, &[]);
                self.b.switch_to_block(fast);
                self.frames.push(HashMap::default());
                block(self);
                self.frames.pop();
                self.b.ins().jump(next, &[]);
                self.b.switch_to_block(slow);
                let stop = self.b.ins().iadd_imm_s(i0, ROW_BLOCK);
                self.row_updates_one_by_one(buffer, head, update, k, end, i0, stop);
                let var = self.var(i);
                self.b.def_var(var, i0);
                self.b.ins().jump(next, &[]);
                self.b.switch_to_block(next);
            }
        }
    }

    /// `row += sum_u scales[u] * v(i0 + u)` over the row, 4 lanes at a time, then the scalar tail.
    #[allow(clippy::too_many_arguments)]
    fn row_axpy(
        &mut self,
        buffer: usize,
        head: &[(IndexId, crate::ir::Dim)],
        update: RowUpdate,
        k: IndexId,
        end: Value,
        i0: Value,
        scales: &[Value],
    ) {
        let i = update.index;
        let zero = self.b.ins().iconst(types::I64, 0);
        let splats: Vec<Value> = scales.iter().map(|s| self.b.ins().splat(types::F32X4, *s)).collect();
        let tail = self.vector_loop(k, zero, end, &mut |l: &mut Self, kb| {
            let flat = l.flat(head);
            let addr = l.address(buffer, Scalar::Float, flat);
            let mut acc = l.b.ins().load(types::F32X4, MemFlagsData::new().with_notrap(), addr, 0);
            for (u, sv) in splats.iter().enumerate() {
                let v = l.at_index(i, i0, u as i64, &mut |l: &mut Self| {
                    let mut memo = HashMap::default();
                    l.vvalue(update.row, k, kb, &mut memo)
                });
                let add = l.b.ins().fmul(*sv, v);
                acc = l.b.ins().fadd(acc, add);
            }
            l.vstore(buffer, flat, acc);
        });
        self.for_range(k, tail, end, &mut |l: &mut Self| {
            let flat = l.flat(head);
            let addr = l.address(buffer, Scalar::Float, flat);
            let mut acc = l.b.ins().load(types::F32, MemFlagsData::new().with_notrap(), addr, 0);
            for (u, s) in scales.iter().enumerate() {
                let v = l.at_index(i, i0, u as i64, &mut |l: &mut Self| l.value(update.row));
                let add = l.b.ins().fmul(*s, v);
                acc = l.b.ins().fadd(acc, add);
            }
            l.store(buffer, Scalar::Float, flat, acc);
        });
    }

    /// The updates for i in `start..stop`, one at a time, each only where its mask holds.
    #[allow(clippy::too_many_arguments)]
    fn row_updates_one_by_one(
        &mut self,
        buffer: usize,
        head: &[(IndexId, crate::ir::Dim)],
        update: RowUpdate,
        k: IndexId,
        end: Value,
        start: Value,
        stop: Value,
    ) {
        self.for_range(update.index, start, stop, &mut |l: &mut Self| {
            l.masked(update.mask, &mut |l: &mut Self| {
                let s = l.value(update.scale);
                let i0 = l.index(update.index);
                l.row_axpy(buffer, head, update, k, end, i0, &[s]);
            });
        });
    }

    /// `f` evaluated with index `i` at `base + offset`, in its own scope (nothing memoized at another value
    /// of `i` is reused); `i` is `base` again afterwards.
    fn at_index(&mut self, i: IndexId, base: Value, offset: i64, f: &mut dyn FnMut(&mut Self) -> Value) -> Value {
        let var = self.var(i);
        let at = self.b.ins().iadd_imm_s(base, offset);
        self.b.def_var(var, at);
        self.frames.push(HashMap::default());
        let v = f(self);
        self.frames.pop();
        self.b.def_var(var, base);
        v
    }

    /// A nest whose element is a dot product `sum[d] e` (no mask) with `e` vectorizable along `d` and
    /// depending on the last head index `h` (`r[i, h] = sum[d] x[i, d] * y[h, d]`): returns `d` and `e`.
    pub(super) fn dot_form(&self, head: &[(IndexId, crate::ir::Dim)], body: NodeId) -> Option<(IndexId, NodeId)> {
        let (h, d, mask, term) = self.single_sum_element(head, body)?;
        (mask.is_none()
            && self.f.node(term).free.contains(&h)
            && self.vectorizable(term, d)
            && !self.needs_branch(term))
        .then_some((d, term))
    }

    /// The loops of a dot-product nest: four consecutive `h` at a time, each with its own f32x4 accumulator
    /// over `d` (the operands that do not depend on `h` are loaded once per step), folded in f64 at the
    /// end; remaining `h` and `d` one by one. The f32 lane sums carry about (extent of d / 4) ulp of the sum
    /// of the terms' magnitudes.
    pub(super) fn dot_nest(
        &mut self,
        buffer: usize,
        head: &[(IndexId, crate::ir::Dim)],
        d: IndexId,
        term: NodeId,
        body: NodeId,
        from: usize,
    ) {
        let (h, hd) = head.last().cloned().expect("dot_form: a head");
        let outer = head[..head.len() - 1].to_vec();
        let head = head.to_vec();
        let rest_one_by_one = |l: &mut Self, rest: Value, h_end: Value| {
            l.for_range(h, rest, h_end, &mut |l: &mut Self| {
                let v = l.value(body);
                let flat = l.flat(&head);
                l.store(buffer, Scalar::Float, flat, v);
            });
        };
        if let ([(i, id)], 0) = (&outer[..], from) {
            // Blocks of 4 outputs outside, the chunk's rows inside: the 4 rows of the other operand stay in
            // cache for every row of the chunk (instead of the whole operand streaming past each row).
            let (i, id) = (*i, id.clone());
            self.hoist_invariants(&[body]);
            let extent = self.dim(&id);
            let (lo, hi) = (self.lo, self.b.ins().smin(self.hi, extent));
            let zero = self.b.ins().iconst(types::I64, 0);
            let h_end = self.dim(&hd);
            let rest = self.stepped_loop(h, zero, h_end, DOT_BLOCK, &mut |l: &mut Self| {
                let h0 = l.index(h);
                l.for_range(i, lo, hi, &mut |l: &mut Self| {
                    l.dot_block(buffer, &head, h, h0, d, term)
                });
            });
            self.for_range(i, lo, hi, &mut |l: &mut Self| rest_one_by_one(l, rest, h_end));
            return;
        }
        self.loops(&outer, from, &[body], &mut |l: &mut Self| {
            let zero = l.b.ins().iconst(types::I64, 0);
            let h_end = l.dim(&hd);
            let rest = l.stepped_loop(h, zero, h_end, DOT_BLOCK, &mut |l: &mut Self| {
                let h0 = l.index(h);
                l.dot_block(buffer, &head, h, h0, d, term);
            });
            rest_one_by_one(l, rest, h_end);
        });
    }

    /// The outputs at h = h0 .. h0 + 3 of the current row: each `sum[d] term`, 4 outputs per pass over d.
    fn dot_block(
        &mut self,
        buffer: usize,
        head: &[(IndexId, crate::ir::Dim)],
        h: IndexId,
        h0: Value,
        d: IndexId,
        term: NodeId,
    ) {
        let l = self;
        let zero = l.b.ins().iconst(types::I64, 0);
        let d_range = l.f.index(d).range.clone();
        let d_end = l.dim(&d_range);
        // Two accumulator sets (8 independent FMA chains): 8 points of d per pass, then 4.
        let sets: Vec<Vec<Variable>> = (0..2)
            .map(|_| (0..DOT_BLOCK).map(|_| l.vacc_lanes(0.0)).collect())
            .collect();
        let step = &mut |l: &mut Self, db: Value, accs: &[Variable]| {
            for (u, acc) in accs.iter().enumerate() {
                let a = l.b.use_var(*acc);
                let a = l.at_index(h, h0, u as i64, &mut |l: &mut Self| {
                    l.add_term_lanes(term, d, db, a, &mut HashMap::default())
                });
                l.b.def_var(*acc, a);
            }
        };
        let d_half = l.stepped_loop(d, zero, d_end, 2 * LANES, &mut |l: &mut Self| {
            let db = l.index(d);
            step(l, db, &sets[0]);
            let db4 = l.b.ins().iadd_imm_s(db, LANES);
            step(l, db4, &sets[1]);
        });
        let d_tail = l.vector_loop(d, d_half, d_end, &mut |l: &mut Self, db| step(l, db, &sets[0]));
        let accs: Vec<Variable> = (0..DOT_BLOCK as usize)
            .map(|u| {
                let (a, b) = (l.b.use_var(sets[0][u]), l.b.use_var(sets[1][u]));
                let sum = l.b.ins().fadd(a, b);
                l.b.def_var(sets[0][u], sum);
                sets[0][u]
            })
            .collect();
        for (u, acc) in accs.iter().enumerate() {
            // The lanes, then the scalar tail over d, in f64.
            let lanes = l.b.use_var(*acc);
            let mut total = l.b.ins().f64const(0.0);
            for lane in 0..LANES as u8 {
                let x = l.b.ins().extractlane(lanes, lane);
                let x = l.b.ins().fpromote(types::F64, x);
                total = l.b.ins().fadd(total, x);
            }
            let tail_sum = l.b.declare_var(types::F64);
            l.b.def_var(tail_sum, total);
            l.at_index(h, h0, u as i64, &mut |l: &mut Self| {
                l.for_range(d, d_tail, d_end, &mut |l: &mut Self| {
                    let x = l.value(term);
                    let x = l.b.ins().fpromote(types::F64, x);
                    let t = l.b.use_var(tail_sum);
                    let t = l.b.ins().fadd(t, x);
                    l.b.def_var(tail_sum, t);
                });
                let t = l.b.use_var(tail_sum);
                let r = l.b.ins().fdemote(types::F32, t);
                let flat = l.flat(head);
                l.store(buffer, Scalar::Float, flat, r);
                r
            });
        }
    }

    /// `acc` plus the lanes of `term` at `d = db .. db + 3`: a product term by one fused multiply-add.
    fn add_term_lanes(
        &mut self,
        term: NodeId,
        d: IndexId,
        db: Value,
        acc: Value,
        memo: &mut HashMap<NodeId, Value>,
    ) -> Value {
        match &self.f.node(term).expr {
            Expr::Prim { prim: Prim::Mul, args } => {
                let (x, y) = (args[0], args[1]);
                let x = self.vvalue(x, d, db, memo);
                let y = self.vvalue(y, d, db, memo);
                self.mul_add(x, y, acc)
            }
            _ => {
                let v = self.vvalue(term, d, db, memo);
                self.b.ins().fadd(acc, v)
            }
        }
    }

    /// For the sum `n` read in lanes along `k`: its one summed index `d`, where each lane's terms run along
    /// `d` contiguously but lanes along `k` would gather every term (a dot product `sum[d] a[i, d] *
    /// b[j, d]` in lanes along `j`: each lane a row of `b`), for [`Self::vrow_sum`].
    fn row_sum_index(&self, n: NodeId, k: IndexId) -> Option<IndexId> {
        let Expr::Reduce {
            op: ReduceOp::Sum,
            indices,
            mask: None,
            body,
        } = &self.f.node(n).expr
        else {
            return None;
        };
        let [d] = indices[..] else { return None };
        (self.gathers(*body, k) && !self.gathers(*body, d) && self.vectorizable(*body, d) && !self.needs_branch(*body))
            .then_some(d)
    }

    /// The lanes at `k = kb .. kb + 3` of `sum[d] term` ([`Self::row_sum_index`]): each lane's sum
    /// vectorized along `d`, the four lanes in one pass over `d` (an f32x4 accumulator each, four
    /// independent chains of fused multiply-adds; what does not depend on `k` is read once per step for
    /// all four), the accumulators folded into one vector by a transpose; the points of `d` after the
    /// last whole vector one by one, in f32. Four rows read along their length where lanes along `k`
    /// would gather four scalars per point. (A second set of accumulators, 8 points per pass, ran slower:
    /// 16 vector registers do not hold 8 accumulators and their operands, and the loop spilled.)
    fn vrow_sum(&mut self, d: IndexId, term: NodeId, k: IndexId, kb: Value) -> Value {
        let before = self.fixed.get(&k).copied();
        let zero = self.b.ins().iconst(types::I64, 0);
        let d_range = self.f.index(d).range.clone();
        let d_end = self.dim(&d_range);
        let accs: Vec<Variable> = (0..LANES).map(|_| self.vacc_lanes(0.0)).collect();
        let at_lane = |l: &mut Self, lane: i64, f: &mut dyn FnMut(&mut Self)| {
            let at = l.b.ins().iadd_imm_s(kb, lane);
            l.fixed.insert(k, at);
            l.frames.push(HashMap::default());
            f(l);
            l.frames.pop();
        };
        let step = &mut |l: &mut Self, db: Value, accs: &[Variable]| {
            let mut shared: HashMap<NodeId, Value> = HashMap::default();
            for (lane, acc) in accs.iter().enumerate() {
                at_lane(l, lane as i64, &mut |l: &mut Self| {
                    let mut memo = shared.clone();
                    let a = l.b.use_var(*acc);
                    let a = l.add_term_lanes(term, d, db, a, &mut memo);
                    l.b.def_var(*acc, a);
                    shared.extend(memo.into_iter().filter(|(n, _)| !l.f.node(*n).free.contains(&k)));
                });
            }
        };
        let rest = self.vector_loop(d, zero, d_end, &mut |l: &mut Self, db| step(l, db, &accs));
        let mut tails = self.splat_f32(0.0);
        for lane in 0..LANES {
            let tail = self.b.declare_var(types::F32);
            let nothing = self.fconst(0.0);
            self.b.def_var(tail, nothing);
            at_lane(self, lane, &mut |l: &mut Self| {
                l.for_range(d, rest, d_end, &mut |l: &mut Self| {
                    let x = l.value(term);
                    let t = l.b.use_var(tail);
                    let t = l.b.ins().fadd(t, x);
                    l.b.def_var(tail, t);
                })
            });
            let t = self.b.use_var(tail);
            tails = self.b.ins().insertlane(tails, t, lane as u8);
        }
        match before {
            Some(v) => self.fixed.insert(k, v),
            None => self.fixed.remove(&k),
        };
        let rows: [Value; LANES as usize] = std::array::from_fn(|u| self.b.use_var(accs[u]));
        // Lane r of the result: the total of row r's lanes (the transpose's four vectors added).
        let columns = self.transpose4(rows);
        let sum01 = self.b.ins().fadd(columns[0], columns[1]);
        let sum23 = self.b.ins().fadd(columns[2], columns[3]);
        let sum = self.b.ins().fadd(sum01, sum23);
        self.b.ins().fadd(sum, tails)
    }

    /// Stores 4 lanes at `flat .. flat + 3` of a float buffer (f32x4), or of a condition buffer (an i32x4
    /// mask of -1 / 0 lanes, stored as it is).
    pub(super) fn vstore(&mut self, buffer: usize, flat: Value, v: Value) {
        let scalar = self.plan.buffers[buffer].scalar;
        let addr = self.address(buffer, scalar, flat);
        self.b.ins().store(MemFlagsData::new().with_notrap(), v, addr, 0);
    }
}

//! Reductions in Cranelift IR: the strategies (logsumexp in two passes over a row, row maxima, sums of
//! exponentials, sums in one loop, arg max/min in two vector passes) and their accumulators.

use rustc_hash::FxHashMap as HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{self, InstBuilder, Value, types};
use cranelift_frontend::Variable;

use super::*;
use crate::ir::{Dim, Expr, IndexId, NodeId, ReduceOp, Scalar};

impl<'a, 'b> Lower<'a, 'b> {
    /// logsumexp in two passes over a cheap body: the maximum, then the sum of exp(x - max) (one exp per
    /// element, no rescaling). A maximum of ±inf or NaN is the result itself.
    pub(super) fn logsumexp_two_pass(
        &mut self,
        ranges: &[(IndexId, Dim)],
        mask: Option<NodeId>,
        body: NodeId,
    ) -> Value {
        // A softmax row's exponentials go to their consumer's row (or a scratch row), at the reduced index
        // (with a mask, only where it holds: the consumer reads them only there).
        let keep = match ranges {
            [(k, _)] => self.keep_exps.take().map(|keep| self.kept_row_start(*k, keep)),
            _ => None,
        };
        // With the 8-lane row helper, the first pass also leaves the row's values in the kept row, and
        // the helper turns them into exp(x - m) in place and sums them: no second pass here.
        // A masked row's first pass leaves -inf where the mask fails, whose exponential is 0.
        let row_helper = keep
            .as_ref()
            .filter(|_| self.exp_rows)
            .map(|(k, keep, start)| (*k, keep.buffer, *start));
        // A body that is a row of a buffer (`s[t, k]`) is read from there by the helper (without a mask);
        // other bodies are left in the kept row by the first pass.
        let source = row_helper
            .filter(|_| mask.is_none())
            .and_then(|(k, _, _)| self.contiguous_row(body, k));
        let row_helper_copy = row_helper.filter(|_| source.is_none());
        // The helper's arguments after the source: the kept row, its length, and the rows to prefetch (the
        // next row of the source and of the kept row where these are rows of matrices, else what the group
        // streams).
        let helper_rows = |l: &mut Self, buffer: usize, start: Value, length: &Dim| -> [Value; 4] {
            let row = l.address(buffer, Scalar::Float, start);
            let n = l.dim(length);
            let row_bytes = l.b.ins().imul_imm_s(n, 4);
            let row_bytes = l.offset(row_bytes);
            let next = |l: &mut Self, at: Value| l.b.ins().iadd(at, row_bytes);
            let read = match source {
                Some(src) => Some(next(l, src)),
                None => l.rows_ahead[0],
            };
            let written = match l.plan.row_private[buffer] {
                false => Some(next(l, row)),
                true => l.rows_ahead[1],
            };
            let none = l.b.ins().iconst(l.ptr, 0);
            [row, n, read.unwrap_or(none), written.unwrap_or(none)]
        };
        let (mx, sum) = match (&keep, row_helper, source) {
            // A row of a matrix: the helper finds its maximum too (8 lanes), and leaves it in a stack slot.
            (Some((_, keep, _)), Some((_, buffer, start)), Some(src)) => {
                let [row, n, read, written] = helper_rows(self, buffer, start, &keep.length);
                let slot = ir::StackSlotData::new(ir::StackSlotKind::ExplicitSlot, 4, 2);
                let slot = self.b.create_sized_stack_slot(slot);
                let at = self.b.ins().stack_addr(self.ptr, slot, 0);
                let sum = self.call("lossc_softmax_row", &[src, row, n, read, written, at]);
                (self.b.ins().stack_load(self.ptr, types::F32, slot, 0), sum)
            }
            _ => {
                let mx = self.row_max_pass(ranges, mask, body, row_helper_copy);
                let sum = match (&keep, row_helper) {
                    (Some((_, keep, _)), Some((_, buffer, start))) => {
                        let [row, n, read, written] = helper_rows(self, buffer, start, &keep.length);
                        self.call("lossc_exp_row", &[row, row, n, mx, read, written])
                    }
                    _ => self.exp_sum_pass(ranges, mask, body, mx, &keep),
                };
                (mx, sum)
            }
        };
        let lg = self.call("lossc_log", &[sum]);
        let mx64 = self.b.ins().fpromote(types::F64, mx);
        let r64 = self.b.ins().fadd(mx64, lg);
        let r = self.b.ins().fdemote(types::F32, r64);
        // m = ±inf or NaN: the result is m.
        let finite = self.finite(mx);
        self.leave_residual(r64, r, finite);
        if let Some((_, keep, _)) = keep {
            // exp(x - lse) = exp(x - m) / sum; where m is not finite, lse = m and the kept value is exact.
            let one = self.b.ins().f64const(1.0);
            let inverse = self.b.ins().fdiv(one, sum);
            let inverse = self.b.ins().fdemote(types::F32, inverse);
            let one = self.fconst(1.0);
            let factor = self.b.ins().select(finite, inverse, one);
            self.leave_factor(&keep, factor);
        }
        self.b.ins().select(finite, r, mx)
    }

    /// Notes what f32 rounded off a logsumexp (`exact - rounded`, 0 where `finite` fails) for its nest's
    /// residual buffer ([`crate::backend::loops::Residual`]).
    fn leave_residual(&mut self, exact: Value, rounded: Value, finite: Value) {
        let back = self.b.ins().fpromote(types::F64, rounded);
        let lo = self.b.ins().fsub(exact, back);
        let lo = self.b.ins().fdemote(types::F32, lo);
        let zero = self.fconst(0.0);
        self.residual = Some(self.b.ins().select(finite, lo, zero));
    }

    /// Where kept exponentials start in their row (`keep.row` times the row's length), with the index `k`
    /// along the row and `keep`.
    pub(super) fn kept_row_start(&mut self, k: IndexId, keep: KeepExps) -> (IndexId, KeepExps, Value) {
        let row = self.index(keep.row);
        let length = self.dim(&keep.length);
        let start = self.b.ins().imul(row, length);
        (k, keep, start)
    }

    /// The factor that turns this row's kept exponentials into the consumer's `exp` values: for the
    /// consumer in this group, or in a buffer for one in a later group (no pass over the row).
    pub(super) fn leave_factor(&mut self, keep: &KeepExps, factor: Value) {
        match keep.factors {
            Some(factors) => {
                let row = self.index(keep.row);
                self.store(factors, Scalar::Float, row, factor);
            }
            None => {
                self.kept_exps
                    .insert(keep.exp, (keep.buffer, KeptFactor::Computed(factor)));
            }
        }
    }

    /// The first pass of a two-pass logsumexp: the maximum of the body over `ranges` (where the mask holds)
    /// as `fmax` over the values gives it where that matters. `copy`: the kept row (its buffer and start)
    /// to leave the values in for the row helper.
    pub(super) fn row_max_pass(
        &mut self,
        ranges: &[(IndexId, Dim)],
        mask: Option<NodeId>,
        body: NodeId,
        copy: Option<(IndexId, usize, Value)>,
    ) -> Value {
        let m = self.b.declare_var(types::F32);
        let ninf = self.b.ins().f32const(f32::NEG_INFINITY);
        self.b.def_var(m, ninf);
        // Over a row (no mask), the lanes skip NaN (one `maxps` per vector): a NaN among finite values
        // reaches the sum of the exponentials and makes the result NaN anyway; only a maximum that is not
        // finite (the result itself) needs to know, and then the body is scanned for one. (A masked
        // logsumexp keeps track in its lanes: its code stays smaller.)
        let skip_nan = mask.is_none();
        let vmax = self.vext_new(true, !skip_nan);
        if let (Some((k, buffer, start)), Some(_), [(_, length)]) = (copy, mask, ranges) {
            // The scalar tail copies only the points where the mask holds (at most the last 8 of the row,
            // after the vector loop): the others hold -inf from here.
            let n = self.dim(length);
            let from = self.b.ins().iadd_imm_s(n, -UNROLL * simd::LANES);
            let zero = self.b.ins().iconst(types::I64, 0);
            let from = self.b.ins().smax(from, zero);
            self.for_range(k, from, n, &mut |l: &mut Self| {
                let flat = l.kept_at(k, start);
                let ninf = l.fconst(f32::NEG_INFINITY);
                l.store(buffer, Scalar::Float, flat, ninf);
            });
        }
        self.reduce_pass(
            ranges,
            mask,
            body,
            false,
            &mut |l: &mut Self, v, lanes_mask, _| {
                let v = l.fill_masked(v, lanes_mask, f32::NEG_INFINITY);
                if let Some((k, buffer, start)) = copy {
                    let flat = l.kept_at(k, start);
                    l.vstore(buffer, flat, v);
                }
                l.vext_add(vmax, v);
            },
            &mut |l: &mut Self, x| {
                if let Some((k, buffer, start)) = copy {
                    let flat = l.kept_at(k, start);
                    l.store(buffer, Scalar::Float, flat, x);
                }
                let cur = l.b.use_var(m);
                let nm = l.b.ins().fmax(cur, x);
                l.b.def_var(m, nm);
            },
        );
        let lanes = self.vext_fold(vmax);
        let tail = self.b.use_var(m);
        let mx = self.b.ins().fmax(lanes, tail);
        match skip_nan {
            true => self.nan_if_any_when_infinite(mx, ranges, body),
            false => mx,
        }
    }

    /// The address of element `k = 0` of a float load contiguous along `k` (`s[t, k]`: `k` the last
    /// subscript, the others in range and independent of it), whose row the reduction over `k` reads.
    pub(super) fn contiguous_row(&mut self, body: NodeId, k: IndexId) -> Option<Value> {
        let Expr::Load { tensor, subs } = self.f.node(body).expr.clone() else {
            return None;
        };
        let buffer = self.plan.buffer_of(self.f, tensor);
        let shape = self.plan.buffers[buffer].shape.clone();
        let at_k = |l: &Self, s: NodeId| matches!(l.f.node(s).expr, Expr::Index(i) if i == k);
        let contiguous = self.plan.buffers[buffer].scalar == Scalar::Float
            && subs.last().is_some_and(|s| at_k(self, *s))
            && subs[..subs.len() - 1]
                .iter()
                .all(|s| !self.f.node(*s).free.contains(&k))
            && subs.iter().zip(&shape).all(|(s, d)| self.in_range(*s, d));
        if !contiguous {
            return None;
        }
        let mut flat = self.b.ins().iconst(types::I64, 0);
        for (s, d) in subs.iter().zip(&shape) {
            let v = if at_k(self, *s) {
                self.b.ins().iconst(types::I64, 0)
            } else {
                self.value(*s)
            };
            let size = self.dim(d);
            let scaled = self.b.ins().imul(flat, size);
            flat = self.b.ins().iadd(scaled, v);
        }
        Some(self.address(buffer, Scalar::Float, flat))
    }

    /// The second pass of a two-pass logsumexp: the sum of exp(x - m) over the row (in f64), writing
    /// each exp into a kept row as it goes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn exp_sum_pass(
        &mut self,
        ranges: &[(IndexId, Dim)],
        mask: Option<NodeId>,
        body: NodeId,
        mx: Value,
        keep: &Option<(IndexId, KeepExps, Value)>,
    ) -> Value {
        let s = self.b.declare_var(types::F64);
        let zero = self.b.ins().f64const(0.0);
        self.b.def_var(s, zero);
        let vsum = self.vacc_sum();
        self.reduce_pass(
            ranges,
            mask,
            body,
            false,
            &mut |l: &mut Self, v, lanes_mask, _| {
                let mxv = l.b.ins().splat(types::F32X4, mx);
                let d = l.b.ins().fsub(v, mxv);
                let e = l.exp_lanes(d, true);
                let e = l.fill_masked(e, lanes_mask, 0.0);
                if let Some((k, keep, start)) = keep {
                    let flat = l.kept_at(*k, *start);
                    l.vstore(keep.buffer, flat, e);
                }
                l.vacc_add(vsum, e);
            },
            &mut |l: &mut Self, x| {
                let d = l.b.ins().fsub(x, mx);
                let e = l.exp_lanes(d, false);
                if let Some((k, keep, start)) = keep {
                    let flat = l.kept_at(*k, *start);
                    l.store(keep.buffer, Scalar::Float, flat, e);
                }
                let e = l.b.ins().fpromote(types::F64, e);
                let cur = l.b.use_var(s);
                let ns = l.b.ins().fadd(cur, e);
                l.b.def_var(s, ns);
            },
        );
        let lanes = self.vacc_total(vsum);
        let tail = self.b.use_var(s);
        self.b.ins().fadd(lanes, tail)
    }

    /// Sums of cheap vectorizable terms over indices of one extent, `lo..hi` of each, in one loop (each
    /// iteration computes every sum's terms, so the terms' loads are shared): the same additions in the
    /// same order as [`Self::reduce_pass`] makes for each alone (16 points pre-summed in f32, then single
    /// vectors, then single points), so each result has the bits it would have alone. f32 results.
    pub(super) fn sums_in_one_loop(&mut self, sums: &[(IndexId, NodeId)], lo: Value, hi: Value) -> Vec<Value> {
        let roots: Vec<NodeId> = sums.iter().map(|(_, body)| *body).collect();
        self.hoist_invariants(&roots);
        let vector: Vec<(Variable, Variable)> = sums.iter().map(|_| self.vacc_sum()).collect();
        let zero = self.b.ins().f64const(0.0);
        let scalar: Vec<Variable> = sums
            .iter()
            .map(|_| {
                let v = self.b.declare_var(types::F64);
                self.b.def_var(v, zero);
                v
            })
            .collect();
        let k = sums[0].0;
        let rest = self.stepped_loop(k, lo, hi, 4 * simd::LANES, &mut |l: &mut Self| {
            let kb = l.index(k);
            for (&(i, body), acc) in sums.iter().zip(&vector) {
                let total = l.presum(body, None, i, kb);
                l.vacc_add(*acc, total);
            }
        });
        let tail = self.vector_loop(k, rest, hi, &mut |l: &mut Self, kb| {
            for (&(i, body), acc) in sums.iter().zip(&vector) {
                let v = l.vvalue(body, i, kb, &mut HashMap::default());
                l.vacc_add(*acc, v);
            }
        });
        self.for_range(k, tail, hi, &mut |l: &mut Self| {
            let at = l.index(k);
            for (&(i, body), acc) in sums.iter().zip(&scalar) {
                l.fixed.insert(i, at);
                l.frames.push(HashMap::default());
                let x = l.value(body);
                let x = l.b.ins().fpromote(types::F64, x);
                let cur = l.b.use_var(*acc);
                let next = l.b.ins().fadd(cur, x);
                l.b.def_var(*acc, next);
                l.frames.pop();
                l.fixed.remove(&i);
            }
        });
        vector
            .into_iter()
            .zip(scalar)
            .map(|(lanes, acc)| {
                let a = self.b.use_var(acc);
                let lanes = self.vacc_total(lanes);
                let total = self.b.ins().fadd(a, lanes);
                self.b.ins().fdemote(types::F32, total)
            })
            .collect()
    }

    /// The terms of four vectors of a sum from `kb` on (0 where the mask fails), added in f32 in order:
    /// the 16-point step of [`Self::reduce_pass`]'s `presum`.
    pub(super) fn presum(&mut self, body: NodeId, mask: Option<NodeId>, k: IndexId, kb: Value) -> Value {
        let mut total: Option<Value> = None;
        for u in 0..4 {
            let at = self.b.ins().iadd_imm_s(kb, u * simd::LANES);
            let mut memo = HashMap::default();
            let v = self.vvalue(body, k, at, &mut memo);
            let m = mask.map(|m| self.vvalue(m, k, at, &mut memo));
            let v = self.fill_masked(v, m, 0.0);
            total = Some(match total {
                None => v,
                Some(t) => self.b.ins().fadd(t, v),
            });
        }
        total.expect("four vectors")
    }

    /// One pass over a reduction's points where the mask holds: 4 at a time where the reduction has one
    /// index and its body and mask are vectorizable along it (`vector` gets the body's lanes and the mask's),
    /// the rest one by one (`scalar` gets the body's value).
    ///
    /// `presum`: the caller only adds the lanes (a sum or an unmasked mean); 16 points at a time are then
    /// added in f32 four vectors at once before `vector` sees them (one f64 widening per 16 points; each
    /// term passes through at most three f32 additions). `vector` is told how many points it covers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reduce_pass(
        &mut self,
        ranges: &[(IndexId, Dim)],
        mask: Option<NodeId>,
        body: NodeId,
        presum: bool,
        vector: &mut VectorStep<'_, 'a, 'b>,
        scalar: &mut dyn FnMut(&mut Self, Value),
    ) {
        let single = match ranges {
            [(k, _)] => Some(*k),
            _ => None,
        };
        let vec_index = single.filter(|k| self.vectorizable(body, *k) && mask.is_none_or(|m| self.vectorizable(m, *k)));
        let roots: Vec<NodeId> = [Some(body), mask].into_iter().flatten().collect();
        self.hoist_invariants(&roots);
        let mut one = |l: &mut Self| {
            l.masked(mask, &mut |l: &mut Self| {
                let x = l.value(body);
                scalar(l, x);
            })
        };
        let bounds = self.split_bounds.take();
        match vec_index {
            Some(k) => {
                let (zero, end) = match bounds {
                    Some(b) => b,
                    None => (self.b.ins().iconst(types::I64, 0), self.dim(&ranges[0].1)),
                };
                let zero = if presum {
                    self.stepped_loop(k, zero, end, 4 * simd::LANES, &mut |l: &mut Self| {
                        let kb = l.index(k);
                        let total = l.presum(body, mask, k, kb);
                        vector(l, total, None, 4 * simd::LANES);
                    })
                } else {
                    zero
                };
                let times = if light(self.f, body) && mask.is_none_or(|m| light(self.f, m)) {
                    UNROLL
                } else {
                    1
                };
                let tail = self.unrolled_vector_loop(k, zero, end, times, &mut |l: &mut Self, kb| {
                    let mut memo = HashMap::default();
                    let v = l.vvalue(body, k, kb, &mut memo);
                    let m = mask.map(|m| l.vvalue(m, k, kb, &mut memo));
                    vector(l, v, m, simd::LANES);
                });
                self.for_range(k, tail, end, &mut one);
            }
            None => match (bounds, single) {
                (Some((lo, hi)), Some(k)) => self.for_range(k, lo, hi, &mut one),
                _ => self.reduce_loops(ranges, 0, &mut one),
            },
        }
    }

    /// `m` (a maximum of the body's values over `ranges` that skipped NaN), or NaN when it is not finite and
    /// some value is NaN: what `fmax` over them gives where the difference matters. The scan runs in a
    /// cold block.
    pub(super) fn nan_if_any_when_infinite(&mut self, m: Value, ranges: &[(IndexId, Dim)], body: NodeId) -> Value {
        let finite = self.finite(m);
        let scan = self.b.create_block();
        let join = self.b.create_block();
        let result = self.b.append_block_param(join, types::F32);
        self.b.ins().brif(finite, join, &[m.into()], scan, &[]);
        self.b.set_cold_block(scan);
        self.b.switch_to_block(scan);
        let seen = self.b.declare_var(types::I8);
        let no = self.b.ins().iconst(types::I8, 0);
        self.b.def_var(seen, no);
        self.frames.push(HashMap::default());
        self.reduce_loops(ranges, 0, &mut |l: &mut Self| {
            let x = l.value(body);
            let nan = l.b.ins().fcmp(FloatCC::Unordered, x, x);
            let before = l.b.use_var(seen);
            let now = l.b.ins().bor(before, nan);
            l.b.def_var(seen, now);
        });
        self.frames.pop();
        let any = self.b.use_var(seen);
        let nan = self.fconst(f32::NAN);
        let m = self.b.ins().select(any, nan, m);
        self.b.ins().jump(join, &[m.into()]);
        self.b.switch_to_block(join);
        result
    }

    /// Whether an f32 is finite (`|x| < inf`; false for NaN).
    pub(super) fn finite(&mut self, x: Value) -> Value {
        let inf = self.fconst(f32::INFINITY);
        let size = self.b.ins().fabs(x);
        self.b.ins().fcmp(FloatCC::LessThan, size, inf)
    }

    /// Runs `body` where the mask holds (always without a mask), in its own scope.
    pub(super) fn masked(&mut self, mask: Option<NodeId>, body: &mut dyn FnMut(&mut Self)) {
        match mask {
            None => body(self),
            Some(m) => {
                let c = self.value(m);
                let yes = self.b.create_block();
                let next = self.b.create_block();
                self.b.ins().brif(c, yes, &[], next, &[]);
                self.b.switch_to_block(yes);
                self.frames.push(HashMap::default());
                body(self);
                self.frames.pop();
                self.b.ins().jump(next, &[]);
                self.b.switch_to_block(next);
            }
        }
    }

    pub(super) fn reduce(&mut self, op: ReduceOp, indices: &[IndexId], mask: Option<NodeId>, body: NodeId) -> Value {
        if op == ReduceOp::LogSumExp && crate::backend::loops::two_pass_logsumexp(self.f, body) {
            let ranges: Vec<(IndexId, Dim)> = indices.iter().map(|i| (*i, self.f.index(*i).range.clone())).collect();
            return self.logsumexp_two_pass(&ranges, mask, body);
        }
        if let ([k], None, ReduceOp::ArgMax | ReduceOp::ArgMin) = (indices, mask, op)
            && self.vectorizable(body, *k)
            && light(self.f, body)
        {
            return self.arg_extreme_two_pass(op == ReduceOp::ArgMax, *k, body);
        }
        let f64v = |l: &mut Self, x: f64| l.b.ins().f64const(x);
        let acc = self.b.declare_var(types::F64);
        let aux = self.b.declare_var(types::F64);
        let count = self.b.declare_var(types::I64);
        let pos = self.b.declare_var(types::I64);
        let nan = self.b.declare_var(types::I8);
        let init = match op {
            ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Count | ReduceOp::LogSumExp => 0.0,
            ReduceOp::Prod => 1.0,
            ReduceOp::Max | ReduceOp::ArgMax => f64::NEG_INFINITY,
            ReduceOp::Min | ReduceOp::ArgMin => f64::INFINITY,
        };
        let v0 = f64v(self, init);
        self.b.def_var(acc, v0);
        let m0 = f64v(self, f64::NEG_INFINITY);
        self.b.def_var(aux, m0);
        let z = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(count, z);
        let best = self.b.ins().iconst(types::I64, -1);
        self.b.def_var(pos, best);
        let no = self.b.ins().iconst(types::I8, 0);
        self.b.def_var(nan, no);
        let ranges: Vec<(IndexId, Dim)> = indices.iter().map(|i| (*i, self.f.index(*i).range.clone())).collect();
        // The flat position within the reduction, counted in row-major order (for arg-max).
        let flat = self.b.declare_var(types::I64);
        let z = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(flat, z);
        let simple =
            matches!(op, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min) || (op == ReduceOp::Mean && mask.is_none());
        // A plain sum of exponentials whose consumer reads them: each goes to the consumer's row as well
        // (where the mask holds; the consumer reads them only there).
        let keep = match (op, &ranges[..]) {
            (ReduceOp::Sum, [(k, _)]) if self.keep_exps.as_ref().is_some_and(|keep| keep.plain) => {
                self.keep_exps.take().map(|keep| self.kept_row_start(*k, keep))
            }
            _ => None,
        };
        if simple && ranges.len() == 1 {
            let vsum = self.vacc_sum();
            let vext = self.vext_new(op == ReduceOp::Max, true);
            self.reduce_pass(
                &ranges,
                mask,
                body,
                // Unrolled four times: only for a cheap body (a costly one hides the widening anyway), and
                // not when each value is kept.
                matches!(op, ReduceOp::Sum | ReduceOp::Mean) && cheap(self.f, body) && keep.is_none(),
                &mut |l: &mut Self, v, lanes_mask, points| {
                    if let Some((k, keep, start)) = &keep {
                        let flat = l.kept_at(*k, *start);
                        l.vstore(keep.buffer, flat, v);
                    }
                    let fill = match op {
                        ReduceOp::Max => f32::NEG_INFINITY,
                        ReduceOp::Min => f32::INFINITY,
                        _ => 0.0,
                    };
                    let v = l.fill_masked(v, lanes_mask, fill);
                    match op {
                        ReduceOp::Max | ReduceOp::Min => l.vext_add(vext, v),
                        _ => l.vacc_add(vsum, v),
                    }
                    if op == ReduceOp::Mean {
                        let c = l.b.use_var(count);
                        let c = l.b.ins().iadd_imm_s(c, points);
                        l.b.def_var(count, c);
                    }
                },
                &mut |l: &mut Self, v| {
                    if let Some((k, keep, start)) = &keep {
                        let at = l.kept_at(*k, *start);
                        l.store(keep.buffer, Scalar::Float, at, v);
                    }
                    l.accumulate(op, v, acc, aux, count, pos, nan, flat)
                },
            );
            if let Some((_, keep, _)) = &keep {
                // The consumer reads them as they are.
                let one = self.fconst(1.0);
                self.leave_factor(keep, one);
            }
            // Fold the vector accumulators into the scalar one.
            let a = self.b.use_var(acc);
            let r = match op {
                ReduceOp::Max | ReduceOp::Min => {
                    let lanes = self.vext_fold(vext);
                    let lanes = self.b.ins().fpromote(types::F64, lanes);
                    if op == ReduceOp::Max {
                        self.b.ins().fmax(a, lanes)
                    } else {
                        self.b.ins().fmin(a, lanes)
                    }
                }
                _ => {
                    let lanes = self.vacc_total(vsum);
                    self.b.ins().fadd(a, lanes)
                }
            };
            self.b.def_var(acc, r);
        } else {
            self.reduce_loops(&ranges, 0, &mut |l: &mut Self| {
                l.masked(mask, &mut |l: &mut Self| {
                    let v = l.value(body);
                    l.accumulate(op, v, acc, aux, count, pos, nan, flat);
                });
                let p = l.b.use_var(flat);
                let p1 = l.b.ins().iadd_imm_s(p, 1);
                l.b.def_var(flat, p1);
            });
        }
        let a = self.b.use_var(acc);
        match op {
            ReduceOp::Count => self.b.use_var(count),
            ReduceOp::ArgMax | ReduceOp::ArgMin => self.b.use_var(pos),
            ReduceOp::Sum | ReduceOp::Prod | ReduceOp::Max | ReduceOp::Min => self.b.ins().fdemote(types::F32, a),
            ReduceOp::Mean => {
                let c = self.b.use_var(count);
                let c = self.b.ins().fcvt_from_sint(types::F64, c);
                let m = self.b.ins().fdiv(a, c);
                self.b.ins().fdemote(types::F32, m)
            }
            ReduceOp::LogSumExp => {
                // acc = sum of exp(x - m), aux = m; empty or all -inf gives -inf; +inf gives +inf; NaN stays.
                let m = self.b.use_var(aux);
                let l = self.call("lossc_log", &[a]);
                let r = self.b.ins().fadd(m, l);
                let finite = self.b.ins().fcmp(FloatCC::Equal, m, m);
                let inf = f64v(self, f64::INFINITY);
                let is_inf = self.b.ins().fcmp(FloatCC::Equal, m, inf);
                let ninf = f64v(self, f64::NEG_INFINITY);
                let is_ninf = self.b.ins().fcmp(FloatCC::Equal, m, ninf);
                let special = self.b.ins().bor(is_inf, is_ninf);
                let r = self.b.ins().select(special, m, r);
                let nan_seen = self.b.use_var(nan);
                let nanv = f64v(self, f64::NAN);
                let r = self.b.ins().select(nan_seen, nanv, r);
                let _ = finite;
                let rounded = self.b.ins().fdemote(types::F32, r);
                let ordinary = self.b.ins().bnot(special);
                let clean = self.b.ins().bnot(nan_seen);
                let exact = self.b.ins().band(ordinary, clean);
                self.leave_residual(r, rounded, exact);
                rounded
            }
        }
    }

    /// `argmax[k] body` (`argmin`) of a body computed lane-wise, in two vector passes: the extreme value `m`
    /// (NaN if any value is), then the first position whose value is `m` (the first NaN when `m` is NaN),
    /// found as the first vector with a matching lane and the lowest such lane. That is the scalar
    /// accumulator's answer (the first maximum; a NaN wins and stops it; -1 when empty).
    pub(super) fn arg_extreme_two_pass(&mut self, max: bool, k: IndexId, body: NodeId) -> Value {
        let op = if max { ReduceOp::Max } else { ReduceOp::Min };
        let m = match self.known_extreme(max, k, body) {
            Some(m) => m,
            None => self.reduce(op, &[k], None, body),
        };
        let m_is_nan = self.b.ins().fcmp(FloatCC::Unordered, m, m);
        let none = self.b.ins().iconst(types::I64, -1);
        let (first_block, first_lanes) = (self.b.declare_var(types::I64), self.b.declare_var(types::I32));
        self.b.def_var(first_block, none);
        let zero32 = self.b.ins().iconst(types::I32, 0);
        self.b.def_var(first_lanes, zero32);
        let pos = self.b.declare_var(types::I64);
        self.b.def_var(pos, none);
        let (mv, nan_v) = (
            self.b.ins().splat(types::F32X4, m),
            self.b.ins().bmask(types::I32, m_is_nan),
        );
        let nan_v = self.b.ins().splat(types::I32X4, nan_v);
        let end = self.dim(&self.f.index(k).range.clone());
        let start = self.b.ins().iconst(types::I64, 0);
        self.hoist_invariants(&[body]);
        let tail = self.vector_loop(k, start, end, &mut |l: &mut Self, kb| {
            let mut memo = HashMap::default();
            let v = l.vvalue(body, k, kb, &mut memo);
            let equal = l.b.ins().fcmp(FloatCC::Equal, v, mv);
            let unordered = l.b.ins().fcmp(FloatCC::Unordered, v, v);
            let nan_match = l.b.ins().band(unordered, nan_v);
            let matched = l.b.ins().bor(equal, nan_match);
            let lanes = l.b.ins().vhigh_bits(types::I32, matched);
            let found = l.b.use_var(first_block);
            let unset = l.b.ins().icmp_imm_s(IntCC::Equal, found, -1);
            let any = l.b.ins().icmp_imm_s(IntCC::NotEqual, lanes, 0);
            let take = l.b.ins().band(unset, any);
            let block = l.b.ins().select(take, kb, found);
            l.b.def_var(first_block, block);
            let kept = l.b.use_var(first_lanes);
            let kept = l.b.ins().select(take, lanes, kept);
            l.b.def_var(first_lanes, kept);
        });
        self.for_range(k, tail, end, &mut |l: &mut Self| {
            let x = l.value(body);
            let equal = l.b.ins().fcmp(FloatCC::Equal, x, m);
            let unordered = l.b.ins().fcmp(FloatCC::Unordered, x, x);
            let nan_match = l.b.ins().band(unordered, m_is_nan);
            let matched = l.b.ins().bor(equal, nan_match);
            let found = l.b.use_var(pos);
            let unset = l.b.ins().icmp_imm_s(IntCC::Equal, found, -1);
            let take = l.b.ins().band(unset, matched);
            let here = l.index(k);
            let p = l.b.ins().select(take, here, found);
            l.b.def_var(pos, p);
        });
        // A vector match comes before any tail match.
        let block = self.b.use_var(first_block);
        let lanes = self.b.use_var(first_lanes);
        let lane = self.b.ins().ctz(lanes);
        let lane = self.b.ins().uextend(types::I64, lane);
        let in_vectors = self.b.ins().iadd(block, lane);
        let vector_found = self.b.ins().icmp_imm_s(IntCC::NotEqual, block, -1);
        let tail_pos = self.b.use_var(pos);
        self.b.ins().select(vector_found, in_vectors, tail_pos)
    }

    /// The value of `max[k] body` (`min`) at the current row when an earlier member of the group holds it.
    pub(super) fn known_extreme(&mut self, max: bool, k: IndexId, body: NodeId) -> Option<Value> {
        let row = *self.bound.first()?;
        let found = self.extremes.iter().find(|e| {
            e.max == max
                && self.f.same_renamed(
                    e.body,
                    body,
                    &[(e.row, row), (e.index, k)].into_iter().collect::<HashMap<_, _>>(),
                )
        })?;
        let buffer = found.buffer;
        let at = self.index(row);
        let addr = self.address(buffer, Scalar::Float, at);
        Some(self.b.ins().load(types::F32, flags(), addr, 0))
    }

    pub(super) fn reduce_loops(&mut self, ranges: &[(IndexId, Dim)], level: usize, body: &mut dyn FnMut(&mut Self)) {
        if level == ranges.len() {
            body(self);
            return;
        }
        let (i, d) = ranges[level].clone();
        let zero = self.b.ins().iconst(types::I64, 0);
        let end = self.dim(&d);
        self.for_range(i, zero, end, &mut |l: &mut Self| {
            l.reduce_loops(ranges, level + 1, body)
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn accumulate(
        &mut self,
        op: ReduceOp,
        v: Value,
        acc: Variable,
        aux: Variable,
        count: Variable,
        pos: Variable,
        nan: Variable,
        flat: Variable,
    ) {
        match op {
            ReduceOp::Count => {
                let c = self.b.use_var(count);
                let one = self.b.ins().uextend(types::I64, v);
                let c = self.b.ins().iadd(c, one);
                self.b.def_var(count, c);
            }
            ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Prod | ReduceOp::Max | ReduceOp::Min => {
                let x = self.b.ins().fpromote(types::F64, v);
                let a = self.b.use_var(acc);
                let r = match op {
                    ReduceOp::Sum | ReduceOp::Mean => self.b.ins().fadd(a, x),
                    ReduceOp::Prod => self.b.ins().fmul(a, x),
                    ReduceOp::Max => self.b.ins().fmax(a, x),
                    _ => self.b.ins().fmin(a, x),
                };
                self.b.def_var(acc, r);
                if op == ReduceOp::Mean {
                    let c = self.b.use_var(count);
                    let c = self.b.ins().iadd_imm_s(c, 1);
                    self.b.def_var(count, c);
                }
            }
            ReduceOp::LogSumExp => {
                // Online: with m the running max and s = sum exp(x - m):
                // x > m: s = s * exp(m - x) + 1, m = x;  else s += exp(x - m) (0 when x - m is NaN).
                let x = self.b.ins().fpromote(types::F64, v);
                let (s, m) = (self.b.use_var(acc), self.b.use_var(aux));
                let isnan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
                let seen = self.b.use_var(nan);
                let seen = self.b.ins().bor(seen, isnan);
                self.b.def_var(nan, seen);
                let gt = self.b.ins().fcmp(FloatCC::GreaterThan, x, m);
                let hi = self.b.ins().select(gt, x, m);
                let lo = self.b.ins().select(gt, m, x);
                let d = self.b.ins().fsub(lo, hi);
                let d32 = self.b.ins().fdemote(types::F32, d);
                let e = self.exp_lanes(d32, false);
                let e = self.b.ins().fpromote(types::F64, e);
                let zero = self.b.ins().f64const(0.0);
                let ok = self.b.ins().fcmp(FloatCC::Equal, d, d);
                let e = self.b.ins().select(ok, e, zero);
                let one = self.b.ins().f64const(1.0);
                let scaled = self.b.ins().fmul(s, e);
                let grown = self.b.ins().fadd(scaled, one);
                let added = self.b.ins().fadd(s, e);
                let s2 = self.b.ins().select(gt, grown, added);
                self.b.def_var(acc, s2);
                self.b.def_var(aux, hi);
            }
            ReduceOp::ArgMax | ReduceOp::ArgMin => {
                let x = self.b.ins().fpromote(types::F64, v);
                let best = self.b.use_var(acc);
                let p = self.b.use_var(pos);
                let seen = self.b.use_var(nan);
                let cc = if op == ReduceOp::ArgMax {
                    FloatCC::GreaterThan
                } else {
                    FloatCC::LessThan
                };
                let better = self.b.ins().fcmp(cc, x, best);
                let first = self.b.ins().icmp_imm_s(IntCC::Equal, p, -1);
                let isnan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
                let take = self.b.ins().bor(better, first);
                let take = self.b.ins().bor(take, isnan);
                let not_seen = self.b.ins().icmp_imm_s(IntCC::Equal, seen, 0);
                let take = self.b.ins().band(take, not_seen);
                let here = self.b.use_var(flat);
                let p2 = self.b.ins().select(take, here, p);
                let b2 = self.b.ins().select(take, x, best);
                let seen2 = self.b.ins().band(take, isnan);
                let seen2 = self.b.ins().bor(seen, seen2);
                self.b.def_var(pos, p2);
                self.b.def_var(acc, b2);
                self.b.def_var(nan, seen2);
            }
        }
    }
}

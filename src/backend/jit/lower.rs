//! Lowering a group to Cranelift IR: the row loop, members, loop nests, elements (loads with bounds
//! checks, primitives, lazy choices), kept softmax rows and one-hot terms.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{self, InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_frontend::{FunctionBuilder, Variable};

use super::*;
use crate::backend::loops::{Group, Nest, Plan, split_members};
use crate::ir::{Dim, Expr, Function, IndexId, NodeId, ReduceOp, Scalar, TensorRef, Value as IrValue, table_value};
use crate::prims::{Cost, Prim};

impl<'a, 'b> Lower<'a, 'b> {
    pub(super) fn new(
        f: &'a Function,
        plan: &'a Plan,
        members: &[&Nest],
        b: &'a mut FunctionBuilder<'b>,
        lanes: &'a mut LanePool,
        math: HashMap<&'static str, ir::FuncRef>,
        fma: bool,
    ) -> Self {
        // The first parameter is the table of buffer pointers.
        let ptr = b.func.signature.params[0].value_type;
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let params = b.block_params(entry).to_vec();
        let (bufs, sizes_ptr) = (params[0], params[1]);
        let step = ptr.bytes() as usize;
        // Only the buffers this nest reads or writes: a plan may hold hundreds.
        let used = used_buffers(f, plan, members);
        let bases = (0..plan.buffers.len())
            .map(|k| used[k].then(|| b.ins().load(ptr, flags(), bufs, (k * step) as i32)))
            .collect();
        let sizes = (0..f.dims.len())
            .map(|k| b.ins().load(types::I64, flags(), sizes_ptr, (k * 8) as i32))
            .collect();
        Lower {
            f,
            plan,
            b,
            lanes,
            preheaders: Vec::new(),
            ptr,
            math,
            vars: HashMap::default(),
            fixed: HashMap::default(),
            frames: vec![HashMap::default()],
            table: bufs,
            bases,
            sizes,
            hypers: params[2],
            err: params[3],
            lo: params[4],
            hi: params[5],
            vector_head: None,
            bound: Vec::new(),
            fma,
            keep_exps: None,
            residual: None,
            lane_residual: None,
            vector_residual: None,
            kept_exps: HashMap::default(),
            extremes: Vec::new(),
            rows_ahead: [None; 2],
            partial: params[6],
            split_bounds: None,
            exp_rows: false,
            column_tiles: false,
            tiled_rows: false,
            tables: HashMap::default(),
        }
    }

    /// A group's function: a lone nest loops over its whole head (the outermost over `lo..hi`); fused
    /// members share one loop over `lo..hi` of their outer index and run their other loops in turn.
    pub(super) fn group(&mut self, group: &Group, members: &[&Nest]) {
        if let Some((first, sums)) = split_members(self.f, members) {
            if first == 1 {
                // The leading map's part first (`lo..hi` of its index, as the sums').
                self.softmax_member(group, group.members[0], members[0], 0);
            }
            // Each member's part goes to its own slot.
            let slot_offset = |slot: usize| 4 * (first + slot) as i32;
            let together: Option<Vec<(IndexId, NodeId)>> = sums
                .iter()
                .map(|&(i, mask, body)| {
                    (mask.is_none() && cheap(self.f, body) && self.vectorizable(body, i)).then_some((i, body))
                })
                .collect();
            if let Some(together) = together.filter(|t| t.len() > 1) {
                // Cheap unmasked sums: one loop over this chunk computes every term (shared loads).
                let extent = self.f.index(together[0].0).range.clone();
                let extent = self.dim(&extent);
                let hi = self.b.ins().smin(self.hi, extent);
                let parts = self.sums_in_one_loop(&together, self.lo, hi);
                for (slot, part) in parts.into_iter().enumerate() {
                    self.b.ins().store(flags(), part, self.partial, slot_offset(slot));
                }
            } else {
                // Each sum's part over this chunk (which stays in cache from one sum to the next).
                for (slot, (i, mask, body)) in sums.into_iter().enumerate() {
                    let extent = self.f.index(i).range.clone();
                    let extent = self.dim(&extent);
                    let hi = self.b.ins().smin(self.hi, extent);
                    self.split_bounds = Some((self.lo, hi));
                    let part = self.reduce(ReduceOp::Sum, &[i], mask, body);
                    self.b.ins().store(flags(), part, self.partial, slot_offset(slot));
                }
            }
        } else if let [nest] = members {
            self.softmax_member(group, group.members[0], nest, 0);
        } else {
            let (outer, extent) = members[0].head[0].clone();
            let extent = self.dim(&extent);
            let end = self.b.ins().smin(self.hi, extent);
            let lo = self.lo;
            // A row-private buffer's pointer is one row of this call's scratch: its base moves back by the
            // row's offset so that the usual row-major addresses of row `t` land in that one row.
            let private: Vec<(usize, Value, Value)> = self
                .plan
                .private_buffers(self.f, group)
                .into_iter()
                .map(|k| {
                    let row_bytes = self.row_bytes(k);
                    (
                        k,
                        self.bases[k].expect("a member's buffer is loaded on entry"),
                        row_bytes,
                    )
                })
                .collect();
            let streams = self.streamed_matrices(members);
            let used: HashMap<usize, Vec<bool>> = group
                .members
                .iter()
                .zip(members)
                .map(|(index, m)| (*index, used_buffers(self.f, self.plan, &[m])))
                .collect();
            self.for_range(outer, lo, end, &mut |l: &mut Self| {
                let row = l.index(outer);
                let next = l.b.ins().iadd_imm_s(row, 1);
                l.rows_ahead = streams.map(|s| s.map(|(k, row_bytes)| l.row_address(k, next, row_bytes)));
                for &(k, scratch, row_bytes) in &private {
                    l.bases[k] = Some(l.moved_back(scratch, row, row_bytes));
                }
                l.extremes.clear();
                for (index, m) in group.members.iter().zip(members) {
                    let own = m.head[0].0;
                    l.fixed.insert(own, row);
                    l.bound.push(own);
                    l.frames.push(HashMap::default());
                    let bases = l.bases.clone();
                    l.reload_bases(&used[index], &private, row);
                    l.softmax_member(group, *index, m, 1);
                    l.bases = bases;
                    l.frames.pop();
                    l.bound.pop();
                    l.fixed.remove(&own);
                    if let (
                        Expr::Reduce {
                            op: op @ (ReduceOp::Max | ReduceOp::Min),
                            indices,
                            mask: None,
                            body,
                        },
                        [(row, _)],
                    ) = (&l.f.node(m.body).expr, &m.head[..])
                        && let [index] = indices[..]
                    {
                        l.extremes.push(KnownExtreme {
                            max: *op == ReduceOp::Max,
                            row: *row,
                            index,
                            body: *body,
                            buffer: l.plan.buffer_of(l.f, TensorRef::Def(m.tensor)),
                        });
                    }
                }
            });
            for (k, scratch, _) in private {
                self.bases[k] = Some(scratch);
            }
            self.rows_ahead = [None; 2];
        }
        self.kept_exps.clear();
        self.b.ins().return_(&[]);
    }

    /// Loads the pointers of the buffers `used` (of those the function loaded on entry) again, a
    /// row-private one moved back by `row`'s offset as on entry to the row: at the start of a member of a
    /// row-fused group, so that no pointer lives from one member's loops across another's (in a large
    /// group such pointers were spilled, and re-stored on the back edge of every loop between).
    pub(super) fn reload_bases(&mut self, used: &[bool], private: &[(usize, Value, Value)], row: Value) {
        let step = self.ptr.bytes() as i32;
        let loaded: Vec<usize> = (0..self.bases.len())
            .filter(|&k| used[k] && self.bases[k].is_some())
            .collect();
        for k in loaded {
            let base = self.b.ins().load(self.ptr, flags(), self.table, k as i32 * step);
            self.bases[k] = Some(match private.iter().find(|p| p.0 == k) {
                Some(&(_, _, row_bytes)) => self.moved_back(base, row, row_bytes),
                None => base,
            });
        }
    }

    /// A row-private buffer's pointer (one row of scratch) moved back by row `row`'s offset, so that the
    /// row-major addresses of that row land in the scratch row.
    pub(super) fn moved_back(&mut self, scratch: Value, row: Value, row_bytes: Value) -> Value {
        let back = self.b.ins().imul(row, row_bytes);
        let back = self.offset(back);
        self.b.ins().isub(scratch, back)
    }

    /// An i64 byte offset as a pointer-sized value.
    pub(super) fn offset(&mut self, bytes: Value) -> Value {
        if self.ptr == types::I64 {
            bytes
        } else {
            self.b.ins().ireduce(self.ptr, bytes)
        }
    }

    /// The bytes of one row (along the first axis) of buffer `k`.
    pub(super) fn row_bytes(&mut self, k: usize) -> Value {
        let plan = self.plan;
        let buf = &plan.buffers[k];
        let bytes = Self::elem_type(buf.scalar).bytes() as i64;
        let mut row_bytes = self.int(bytes);
        for d in &buf.shape[1..] {
            let d = self.dim(d);
            row_bytes = self.int_mul(row_bytes, d);
        }
        row_bytes
    }

    /// The address of row `row` of buffer `k` (a pure computation: no access, so any row will do).
    pub(super) fn row_address(&mut self, k: usize, row: Value, row_bytes: Value) -> Value {
        let off = self.b.ins().imul(row, row_bytes);
        let off = self.offset(off);
        let base = self.bases[k].expect("a member's buffer is loaded on entry");
        self.b.ins().iadd(base, off)
    }

    /// What a row-fused group streams row by row, with each one's row length in bytes: the first float
    /// matrix input its members read along a row (`s[t, k]`), and the first matrix among its members'
    /// own buffers that is not row-private (a gradient row).
    pub(super) fn streamed_matrices(&mut self, members: &[&Nest]) -> [Option<(usize, Value)>; 2] {
        let f = self.f;
        let plan = self.plan;
        let read = members.iter().find_map(|m| {
            let own = m.head[0].0;
            f.reachable(&[m.body]).into_iter().find_map(|n| match &f.node(n).expr {
                Expr::Load {
                    tensor: tensor @ TensorRef::Input(_),
                    subs,
                } if subs.len() >= 2
                    && f.node(n).scalar == Scalar::Float
                    && matches!(f.node(subs[0]).expr, Expr::Index(i) if i == own)
                    && subs[1..].iter().all(|s| matches!(f.node(*s).expr, Expr::Index(_))) =>
                {
                    Some(plan.buffer_of(f, *tensor))
                }
                _ => None,
            })
        });
        let written = members
            .iter()
            .filter(|m| m.head.len() >= 2)
            .map(|m| plan.buffer_of(f, TensorRef::Def(m.tensor)))
            .find(|k| !plan.row_private[*k]);
        [read, written].map(|k| k.map(|k| (k, self.row_bytes(k))))
    }

    /// [`Self::member`], with the nest's part in kept softmax exponentials ([`super::loops::KeptExps`]) set up: a
    /// logsumexp writes them into its consumer's row; a consumer in a later group reads them as they are
    /// (one in the same group, times the factor its logsumexp leaves in `kept_exps`).
    pub(super) fn softmax_member(&mut self, group: &Group, index: usize, nest: &Nest, from: usize) {
        let plan = self.plan;
        self.keep_exps = plan.kept_exps.iter().find(|e| e.lse == index).map(|e| {
            let consumer = &plan.nests[e.consumer];
            KeepExps {
                exp: e.exp,
                buffer: plan.kept_row(self.f, e),
                length: consumer.head[1].1.clone(),
                row: nest.head[0].0,
                factors: e.factors.filter(|_| !group.members.contains(&e.consumer)),
                plain: e.plain,
            }
        });
        for e in plan
            .kept_exps
            .iter()
            .filter(|e| e.consumer == index && !group.members.contains(&e.lse))
        {
            let buffer = plan.kept_row(self.f, e);
            let factors = e
                .factors
                .expect("a consumer in a later group reads its factors from a buffer");
            let row = nest.head[0].0;
            self.kept_exps
                .insert(e.exp, (buffer, KeptFactor::Left { factors, row }));
        }
        self.member(nest, from);
        self.keep_exps = None;
    }

    /// One nest's loops over its head from level `from` (the levels before are bound), then the store. A
    /// float element that is a contraction's gradient row or a dot product gets its blocked loop form
    /// (simd.rs).
    pub(super) fn member(&mut self, nest: &Nest, from: usize) {
        let buffer = self.plan.buffer_of(self.f, TensorRef::Def(nest.tensor));
        let scalar = self.plan.buffers[buffer].scalar;
        let head = nest.head.clone();
        let float = scalar == Scalar::Float;
        // Whether the innermost head loop can run 4 elements at a time (numbers, or conditions as masks).
        let lanes_along_head =
            (float || scalar == Scalar::Bool) && head.last().is_some_and(|(k, _)| self.vectorizable(nest.body, *k));
        self.vector_head = None;
        // A run of lanes stores its logsumexps' residuals as it stores them, which a run computing its
        // last vector first (an element reading its own buffer) would not.
        let residual = self.plan.residual_of(nest.tensor);
        let lanes_along_head =
            lanes_along_head && from < head.len() && !(residual.is_some() && self.rewrites_in_place(nest.body, buffer));
        self.vector_residual = residual;
        if from == 0 && self.column_major(&head, nest.body) {
            self.column_major_nest(buffer, scalar, &head, nest.body);
        } else if let Some(update) = self.row_update_form(&head, nest.body).filter(|_| float) {
            self.row_update_nest(buffer, &head, update, from);
        } else if let Some((d, term)) = self.dot_form(&head, nest.body).filter(|_| float && !lanes_along_head) {
            self.dot_nest(buffer, &head, d, term, nest.body, from);
        } else {
            self.vector_head = lanes_along_head.then_some((buffer, nest.body));
            let residual = self.plan.residual_of(nest.tensor);
            self.loops(&head, from, &[nest.body], &mut |l: &mut Self| {
                l.residual = None;
                let v = l.value(nest.body);
                let flat = l.flat(&head);
                l.store(buffer, scalar, flat, v);
                if let Some(r) = residual {
                    // Where the logsumexp was not lowered here (its value was at hand), no residual: 0.
                    let lo = l.residual.take().unwrap_or_else(|| l.fconst(0.0));
                    l.store(r, Scalar::Float, flat, lo);
                }
            });
        }
    }

    /// Whether an element over two indices `[p, q]` reads a matrix transposed (`m[q, p]`) and has no
    /// reduction: it runs column by column within its chunk of rows ([`Self::column_major_nest`]).
    pub(super) fn column_major(&self, head: &[(IndexId, Dim)], body: NodeId) -> bool {
        let [(p, _), (q, _)] = head else {
            return false;
        };
        let nodes = self.f.reachable(&[body]);
        !nodes
            .iter()
            .any(|n| matches!(self.f.node(*n).expr, Expr::Reduce { .. }))
            && nodes.iter().any(|n| match &self.f.node(*n).expr {
                Expr::Load { subs, .. } => matches!(subs[..], [a, b]
                    if self.f.node(a).expr == Expr::Index(*q) && self.f.node(b).expr == Expr::Index(*p)),
                _ => false,
            })
    }

    /// An elementwise nest `[p, q]` that reads a matrix transposed, in tiles: the chunk's rows `p` times
    /// [`TILE`] columns `q` at a time. A tile's elements read both `m[p, q]` (along rows) and `m[q, p]`
    /// (16 lines, each reused by the chunk's 16 rows) from L1, where row by row each transposed read
    /// would touch a new cache line (and, for wide matrices, a new page). Whole tiles run their rows four
    /// at a time, each transposed read a 4 × 4 block transposed in registers
    /// ([`Self::transposed_blocks`]). The elements and their values are the same in any order.
    pub(super) fn column_major_nest(&mut self, buffer: usize, scalar: Scalar, head: &[(IndexId, Dim)], body: NodeId) {
        let [(p, pd), (q, qd)] = head else {
            unreachable!("column_major: two indices");
        };
        let (p, q) = (*p, *q);
        self.tiled_rows = true;
        let extent = self.dim(pd);
        let end = self.b.ins().smin(self.hi, extent);
        let (zero, columns) = (self.b.ins().iconst(types::I64, 0), self.dim(qd));
        let lo = self.lo;
        let head = head.to_vec();
        let q_var = self.var(q);
        let lanes = scalar == Scalar::Float && self.vectorizable(body, q);
        let transposed = match lanes {
            true => self.transposed_loads(body, p, q),
            false => Vec::new(),
        };
        // Columns qb .. qe for every row of the chunk (4 at a time where the element is vectorizable; a
        // whole tile's rows four at a time where it reads matrices transposed); leaves q at qb. The tile
        // loop binds q to the tile's start only: nothing that depends on q may be computed before the
        // inner loop over q.
        let tile = |l: &mut Self, qb: Value, qe: Value, whole: bool| {
            let tile_bound = l.bound.last() == Some(&q);
            if tile_bound {
                l.bound.pop();
            }
            let first = match whole && !transposed.is_empty() {
                true => l.transposed_blocks(buffer, &head, body, &transposed, (lo, end), (qb, qe)),
                false => lo,
            };
            l.for_range(p, first, end, &mut |l: &mut Self| {
                l.hoist_invariants(&[body]);
                let rest = if lanes {
                    l.vector_loop(q, qb, qe, &mut |l: &mut Self, kb| {
                        let v = l.vvalue(body, q, kb, &mut HashMap::default());
                        let flat = l.flat(&head);
                        l.vstore(buffer, flat, v);
                    })
                } else {
                    qb
                };
                l.for_range(q, rest, qe, &mut |l: &mut Self| {
                    let v = l.value(body);
                    let flat = l.flat(&head);
                    l.store(buffer, scalar, flat, v);
                });
            });
            l.b.def_var(q_var, qb);
            if tile_bound {
                l.bound.push(q);
            }
        };
        let rest = self.stepped_loop(q, zero, columns, TILE, &mut |l: &mut Self| {
            let qb = l.index(q);
            let qe = l.b.ins().iadd_imm_s(qb, TILE);
            tile(l, qb, qe, true);
        });
        tile(self, rest, columns, false);
    }

    /// Loops over `head` from `level` on, then `body`; before each loop, the parts of `element` that the
    /// indices bound so far determine are computed once (see [`Self::hoist_invariants`]).
    pub(super) fn loops(
        &mut self,
        head: &[(IndexId, Dim)],
        level: usize,
        element: &[NodeId],
        body: &mut dyn FnMut(&mut Self),
    ) {
        self.hoist_invariants(element);
        if level == head.len() {
            body(self);
            return;
        }
        let (i, d) = head[level].clone();
        let (start, end) = if level == 0 {
            (self.lo, self.hi)
        } else {
            (self.b.ins().iconst(types::I64, 0), self.dim(&d))
        };
        let end = if level == 0 {
            // The outermost range is [lo, hi) but never beyond the extent.
            let extent = self.dim(&d);
            self.b.ins().smin(end, extent)
        } else {
            end
        };
        if let Some((buffer, stored)) = self.vector_head
            && level + 1 == head.len()
        {
            let lanes_head = head.to_vec();
            let start = self.column_blocks(buffer, &lanes_head, i, start, end, stored);
            // Where the run holds a vector, its last vector (ending at `end`) covers what the vector loop
            // leaves instead of a scalar tail, and the scalar loop runs only for runs shorter than a
            // vector, in a branch of its own: what only the scalar code needs (a scalar copy of each
            // invariant) is not live across the vector loop, where it took registers and was spilled
            // (and re-stored on every back edge).
            let tail = match self.rewrites_in_place(stored, buffer) {
                true => Tail::LastFirst,
                false => Tail::Overlap,
            };
            let n = self.b.ins().isub(end, start);
            let wide = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, n, simd::LANES);
            self.two_way(
                wide,
                None,
                &mut |l: &mut Self| {
                    l.vector_run(buffer, &lanes_head, i, stored, (start, end), tail);
                    None
                },
                &mut |l: &mut Self| {
                    l.for_range(i, start, end, &mut |l: &mut Self| {
                        l.loops(head, level + 1, element, body)
                    });
                    None
                },
            );
            return;
        }
        self.for_range(i, start, end, &mut |l: &mut Self| {
            l.loops(head, level + 1, element, body)
        });
    }

    /// Whether `element`, stored into `buffer`, reads `buffer` itself (a kept exponential in its
    /// consumer's row, a tensor that lives in the buffer): computing a point again after its
    /// store would then read the stored value.
    pub(super) fn rewrites_in_place(&self, element: NodeId, buffer: usize) -> bool {
        let host = |k: usize| self.plan.host[k].unwrap_or(k);
        self.f.reachable(&[element]).into_iter().any(|n| {
            self.kept_exps.contains_key(&n)
                || matches!(&self.f.node(n).expr,
                    Expr::Load { tensor, .. } if host(self.plan.buffer_of(self.f, *tensor)) == host(buffer))
        })
    }

    /// The innermost run `[start, end)` of an elementwise nest along `i`, at least a vector long, in
    /// vectors (see [`Self::loops`]); the points the vector loop leaves are covered by vectors too, the
    /// last ending at `end` (its points computed twice, with the same bits), as `tail` says.
    pub(super) fn vector_run(
        &mut self,
        buffer: usize,
        head: &[(IndexId, Dim)],
        i: IndexId,
        element: NodeId,
        (start, end): (Value, Value),
        tail: Tail,
    ) {
        // A one-hot term (`select(k == e, a, z)` or `[k == e]`): where the element adds `select(k == e, a,
        // 0)` once (a label's term in a cross-entropy gradient), the lanes compute `rest` (or the element
        // with the term as 0) and `a` is added at k = e afterwards; elsewhere (a smoothed target's bracket
        // inside a product) the lanes compute the element with the term as it is away from `e`, and the
        // element at k = e, computed whole before the lanes overwrite what it reads, is written over
        // theirs afterwards. (Computing it whole for the first kind too left a value live across the
        // lanes, and Cranelift's register allocator then spilled a loop invariant and stored it back on
        // every iteration: W1 ran 1.3x slower.)
        let one_hot = self.plan.one_hot(self.f, element, i);
        let (lanes, zeroed) = match one_hot {
            Some(OneHot { rest: Some(rest), .. }) => (rest, None),
            Some(OneHot { term, away, .. }) => (element, Some((term, away))),
            None => (element, None),
        };
        // A sigmoid at the root: the lanes store its argument, and the 8-lane row helper turns the
        // stored run into sigmoids (the same bits as the 4-lane code, four chains at a time).
        let sigmoid_argument = match &self.f.node(lanes).expr {
            Expr::Prim {
                prim: Prim::Sigmoid,
                args,
            } if self.exp_rows && one_hot.is_none() => Some(args[0]),
            _ => None,
        };
        // Kept exponentials are loads here.
        let kept: HashSet<NodeId> = self.kept_exps.keys().copied().collect();
        let computed = sigmoid_argument.unwrap_or(lanes);
        let times = match few_steps_reading(self.f, computed, 16, Cost::Piecewise, &kept) {
            true => UNROLL,
            false => 1,
        };
        // The lanes at `kb` (the loop variable, or `fixed` at it).
        let mut lanes_at = |l: &mut Self, kb: Value| {
            let mut memo = HashMap::default();
            if let Some((term, away)) = zeroed {
                // The term away from `e` (a select's third operand, a bracket's 0) in every lane.
                let zero = match away {
                    Some(z) => l.vvalue(z, i, kb, &mut HashMap::default()),
                    None => l.splat_f32(0.0),
                };
                memo.insert(term, zero);
            }
            l.vvalue(computed, i, kb, &mut memo)
        };
        let mut store = |l: &mut Self, v: Value| {
            let flat = l.flat(head);
            l.vstore(buffer, flat, v);
            if let Some(r) = l.vector_residual {
                // Where no logsumexp was lowered lane-wise (its value was at hand), no residual: 0.
                let lo = l.lane_residual.take().unwrap_or_else(|| l.splat_f32(0.0));
                l.vstore(r, flat, lo);
            }
        };
        let whole = match one_hot {
            Some(OneHot { at, added: None, .. }) => Some(self.one_hot_element(element, i, at, (start, end))),
            _ => None,
        };
        match tail {
            // The row already holds these values (its guest's): nothing to store.
            _ if self.guest_element(lanes, buffer, head) => {}
            Tail::Overlap => self.overlapping_vector_loop(i, start, end, times, &mut |l: &mut Self, kb| {
                let v = lanes_at(l, kb);
                store(l, v)
            }),
            Tail::LastFirst => self.last_first_vector_loop(i, start, end, times, &mut lanes_at, &mut store),
        }
        if sigmoid_argument.is_some() {
            self.fixed.insert(i, start);
            let flat = self.flat(head);
            self.fixed.remove(&i);
            let at = self.address(buffer, Scalar::Float, flat);
            let n = self.b.ins().isub(end, start);
            self.call_helper("lossc_sigmoid_row", &[at, n]);
        }
        match (one_hot, whole) {
            (Some(OneHot { at, added: Some(a), .. }), _) => self.add_one_hot(buffer, head, i, at, a, (start, end)),
            (_, Some((inside, at, slot))) => self.write_one_hot(buffer, head, i, (inside, at), slot),
            _ => {}
        }
    }

    /// Whether `element` of `buffer` at `head` is the element of a tensor living in it
    /// (loops::Plan::host) at the same place: the value is already there.
    pub(super) fn guest_element(&self, element: NodeId, buffer: usize, head: &[(IndexId, Dim)]) -> bool {
        let Expr::Load { tensor, subs } = &self.f.node(element).expr else {
            return false;
        };
        let head: Vec<IndexId> = head.iter().map(|(i, _)| *i).collect();
        self.plan.host[self.plan.buffer_of(self.f, *tensor)] == Some(buffer) && self.f.at_indices(subs, &head)
    }

    /// The element at `k = e` of the current row, when `e` lies in `lo..hi` (the elements the vectors
    /// write; the scalar loop of a short row computes whole elements), computed before the row's lanes
    /// overwrite what it reads (a kept exponential) and left in a stack slot, not a register live across
    /// the lanes: (whether `e` lies there, `e`, the slot).
    pub(super) fn one_hot_element(
        &mut self,
        element: NodeId,
        k: IndexId,
        e: NodeId,
        (lo, hi): (Value, Value),
    ) -> (Value, Value, ir::StackSlot) {
        let at = self.value(e);
        let inside = self.inside(at, (lo, hi));
        let slot = ir::StackSlotData::new(ir::StackSlotKind::ExplicitSlot, 4, 2);
        let slot = self.b.create_sized_stack_slot(slot);
        self.at_one_hot(k, (inside, at), &mut |l: &mut Self| {
            let v = l.value(element);
            l.b.ins().stack_store(l.ptr, v, slot, 0);
        });
        (inside, at, slot)
    }

    /// Adds the one-hot value `a` at `k = e` of the current row when `e` lies in `lo..hi` (the elements
    /// the vectors wrote as `rest` alone; the scalar loop of a short row computes whole elements).
    pub(super) fn add_one_hot(
        &mut self,
        buffer: usize,
        head: &[(IndexId, Dim)],
        k: IndexId,
        e: NodeId,
        a: NodeId,
        (lo, hi): (Value, Value),
    ) {
        let at = self.value(e);
        let inside = self.inside(at, (lo, hi));
        self.at_one_hot(k, (inside, at), &mut |l: &mut Self| {
            let flat = l.flat(head);
            let addr = l.address(buffer, Scalar::Float, flat);
            let rest = l.b.ins().load(types::F32, flags(), addr, 0);
            let one = l.value(a);
            let sum = l.b.ins().fadd(one, rest);
            l.b.ins().store(flags(), sum, addr, 0);
        });
    }

    /// Whether `at` lies in `lo..hi`.
    fn inside(&mut self, at: Value, (lo, hi): (Value, Value)) -> Value {
        let above = self.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, at, lo);
        let below = self.b.ins().icmp(IntCC::SignedLessThan, at, hi);
        self.b.ins().band(above, below)
    }

    /// Writes the element [`Self::one_hot_element`] computed over the lanes' value at `k = e`.
    pub(super) fn write_one_hot(
        &mut self,
        buffer: usize,
        head: &[(IndexId, Dim)],
        k: IndexId,
        (inside, at): (Value, Value),
        slot: ir::StackSlot,
    ) {
        self.at_one_hot(k, (inside, at), &mut |l: &mut Self| {
            let flat = l.flat(head);
            let addr = l.address(buffer, Scalar::Float, flat);
            let v = l.b.ins().stack_load(l.ptr, types::F32, slot, 0);
            l.b.ins().store(flags(), v, addr, 0);
        });
    }

    /// `body` with `k = at`, in a branch taken when `inside`, in its own dominance scope.
    fn at_one_hot(&mut self, k: IndexId, (inside, at): (Value, Value), body: &mut dyn FnMut(&mut Self)) {
        let yes = self.b.create_block();
        let next = self.b.create_block();
        self.b.ins().brif(inside, yes, &[], next, &[]);
        self.b.switch_to_block(yes);
        self.frames.push(HashMap::default());
        let var = self.var(k);
        self.b.def_var(var, at);
        body(self);
        self.frames.pop();
        self.b.ins().jump(next, &[]);
        self.b.switch_to_block(next);
    }

    /// The row-major position of the current head indices.
    pub(super) fn flat(&mut self, head: &[(IndexId, Dim)]) -> Value {
        let mut flat = self.int(0);
        for (i, d) in head {
            let size = self.dim(d);
            let iv = self.index(*i);
            let scaled = self.int_mul(flat, size);
            flat = self.int_add(scaled, iv);
        }
        flat
    }

    pub(super) fn var(&mut self, i: IndexId) -> Variable {
        if let Some(v) = self.vars.get(&i) {
            return *v;
        }
        let v = self.b.declare_var(types::I64);
        self.vars.insert(i, v);
        v
    }

    pub(super) fn index(&mut self, i: IndexId) -> Value {
        if let Some(v) = self.fixed.get(&i) {
            return *v;
        }
        let v = self.var(i);
        self.b.use_var(v)
    }

    /// `for i in start..end { body }`; the body runs in its own dominance scope.
    pub(super) fn for_range(&mut self, i: IndexId, start: Value, end: Value, body: &mut dyn FnMut(&mut Self)) {
        self.stepped_loop(i, start, end, 1, body);
    }

    /// `body` for i = start, start + step, … while i + step <= end (each iteration covers `step` values of
    /// i), in its own dominance scope; returns the first i not covered.
    pub(super) fn stepped_loop(
        &mut self,
        i: IndexId,
        start: Value,
        end: Value,
        step: i64,
        body: &mut dyn FnMut(&mut Self),
    ) -> Value {
        let var = self.var(i);
        self.b.def_var(var, start);
        // A constant trip count (a constant-size axis: a sorting network's wires, a vector loop's tail
        // over 16 elements) needs no test before the loop; no iteration is no code, and one is the body
        // with `i` a constant, which folds into its addresses.
        let trips = match (self.known_int(start), self.known_int(end)) {
            (Some(s), Some(e)) => Some((e - s).div_euclid(step).max(0)),
            _ => None,
        };
        match trips {
            Some(0) => return start,
            Some(1) => {
                self.frames.push(HashMap::default());
                self.bound.push(i);
                body(self);
                self.bound.pop();
                self.frames.pop();
                let after = self.int_add_imm(start, step);
                self.b.def_var(var, after);
                return after;
            }
            _ => {}
        }
        // Rotated: one test before the loop and one at the bottom of each iteration (no jump back to a
        // separate header), against the last i that covers `step` values.
        let last = self.b.ins().iadd_imm_s(end, -step);
        let inner = self.b.create_block();
        let exit = self.b.create_block();
        // The body is the branch's second target: Cranelift 0.135's egraph visits that one first, and a loop's
        // exit visited before its body would drop the loop from the egraph's loop stack (no hoisting there).
        let entry = if trips.is_some() {
            self.b.ins().jump(inner, &[])
        } else {
            let skip = self.b.ins().icmp(IntCC::SignedGreaterThan, start, last);
            self.b.ins().brif(skip, exit, &[], inner, &[])
        };
        self.b.switch_to_block(inner);
        self.frames.push(HashMap::default());
        self.preheaders.push((entry, HashMap::default()));
        self.bound.push(i);
        body(self);
        self.bound.pop();
        self.preheaders.pop();
        self.frames.pop();
        let iv = self.b.use_var(var);
        let next = self.b.ins().iadd_imm_s(iv, step);
        self.b.def_var(var, next);
        let done = self.b.ins().icmp(IntCC::SignedGreaterThan, next, last);
        self.b.ins().brif(done, exit, &[], inner, &[]);
        self.b.switch_to_block(exit);
        match trips {
            Some(n) => {
                let after = self.int_add_imm(start, n * step);
                self.b.def_var(var, after);
                after
            }
            None => self.b.use_var(var),
        }
    }

    pub(super) fn dim(&mut self, d: &Dim) -> Value {
        match d {
            Dim::Const(c) => self.int(*c),
            Dim::Sym(s) => self.sizes[s.index()],
            Dim::Add(a, c) | Dim::Sub(a, c) | Dim::Mul(a, c) => {
                let (x, y) = (self.dim(a), self.dim(c));
                match d {
                    Dim::Add(..) => self.int_add(x, y),
                    Dim::Sub(..) => self.b.ins().isub(x, y),
                    _ => self.int_mul(x, y),
                }
            }
        }
    }

    /// How a buffer stores its elements: f32, i64, and conditions as i32 masks (-1 true, 0 false), which
    /// four lanes load and store as they are.
    pub(super) fn elem_type(scalar: Scalar) -> Type {
        match scalar {
            Scalar::Float => types::F32,
            Scalar::Int => types::I64,
            Scalar::Bool => types::I32,
        }
    }

    pub(super) fn address(&mut self, buffer: usize, scalar: Scalar, flat: Value) -> Value {
        let bytes = Self::elem_type(scalar).bytes() as i64;
        let off = self.int_mul_imm(flat, bytes);
        let base = self.bases[buffer].expect("the nest's buffers are loaded on entry");
        if self.known_int(off) == Some(0) {
            return base;
        }
        let off = self.offset(off);
        self.b.ins().iadd(base, off)
    }

    pub(super) fn store(&mut self, buffer: usize, scalar: Scalar, flat: Value, v: Value) {
        let addr = self.address(buffer, scalar, flat);
        let v = if scalar == Scalar::Bool {
            self.b.ins().bmask(types::I32, v)
        } else {
            v
        };
        self.b.ins().store(flags(), v, addr, 0);
    }

    pub(super) fn lookup(&self, n: NodeId) -> Option<Value> {
        self.frames.iter().rev().find_map(|f| f.get(&n).copied())
    }

    pub(super) fn call(&mut self, name: &'static str, args: &[Value]) -> Value {
        let inst = self.call_helper(name, args);
        self.b.inst_results(inst)[0]
    }

    pub(super) fn call_helper(&mut self, name: &'static str, args: &[Value]) -> ir::Inst {
        let fref = self.math[name];
        self.b.ins().call(fref, args)
    }

    pub(super) fn fconst(&mut self, x: f32) -> Value {
        self.b.ins().f32const(x)
    }

    /// Whether subscript `s` is always within an axis of size `d` (so needs no check).
    pub(super) fn in_range(&self, s: NodeId, d: &Dim) -> bool {
        self.f.in_range(s, d)
    }

    /// Whether evaluating `n` could fail or cost a loop (then choices around it branch instead of selecting).
    pub(super) fn needs_branch(&self, n: NodeId) -> bool {
        self.plan.branching[n.index()]
    }

    /// Computes here, before a loop, the largest parts of `roots` that the indices bound so far determine
    /// and that can neither fail nor loop; the loop body then finds them memoized. (Cranelift's egraph
    /// hoists pure operations whose operands come from outside a loop, but it never moves a load, so
    /// everything computed from a per-row load would otherwise run once per element.) Reductions are left
    /// where they are: their bodies bind indices of their own. Only called where no bound index is
    /// redefined later in the same frame (not between [`Self::at_index`] calls).
    pub(super) fn hoist_invariants(&mut self, roots: &[NodeId]) {
        let mut seen = HashSet::default();
        let mut stack = roots.to_vec();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            let node = self.f.node(n);
            match &node.expr {
                Expr::Float(_)
                | Expr::Int(_)
                | Expr::Bool(_)
                | Expr::Index(_)
                | Expr::Size(_)
                | Expr::Reduce { .. } => {}
                _ if node.free.iter().all(|i| self.bound.contains(i)) && !self.needs_branch(n) => {
                    self.value(n);
                }
                expr => stack.extend(expr.operands()),
            }
        }
    }

    /// The current element of a softmax consumer's buffer (its head indices are bound here).
    pub(super) fn kept_flat(&mut self, buffer: usize) -> Value {
        let TensorRef::Def(t) = self.plan.buffers[buffer].of else {
            unreachable!("kept exponentials live in a tensor's buffer")
        };
        let head: Vec<(IndexId, Dim)> = self
            .f
            .tensor(t)
            .indices
            .iter()
            .map(|i| (*i, self.f.index(*i).range.clone()))
            .collect();
        self.flat(&head)
    }

    /// A kept softmax exponential ([`KeepExps`]) for node `n` at the current element (4 lanes when
    /// `lanes`): the consumer's own row, read before the element overwrites it, times the factor its
    /// logsumexp computed or left in a buffer. `None` when `n` is not kept.
    pub(super) fn kept_exp(&mut self, n: NodeId, lanes: bool) -> Option<Value> {
        let &(buffer, factor) = self.kept_exps.get(&n)?;
        let flat = self.kept_flat(buffer);
        let addr = self.address(buffer, Scalar::Float, flat);
        let ty = if lanes { types::F32X4 } else { types::F32 };
        let e = self.b.ins().load(ty, MemFlagsData::new().with_notrap(), addr, 0);
        let factor = match factor {
            KeptFactor::Computed(factor) => factor,
            KeptFactor::Left { factors, row } => {
                let row = self.index(row);
                let addr = self.address(factors, Scalar::Float, row);
                // Written by an earlier group, read-only here: free to move out of the row's loops.
                let flags = MemFlagsData::new().with_notrap().with_readonly().with_can_move();
                self.b.ins().load(types::F32, flags, addr, 0)
            }
        };
        Some(match lanes {
            true => {
                let f = self.b.ins().splat(types::F32X4, factor);
                self.b.ins().fmul(e, f)
            }
            false => self.b.ins().fmul(e, factor),
        })
    }

    /// The flat position `start + k` in a kept softmax row.
    pub(super) fn kept_at(&mut self, k: IndexId, start: Value) -> Value {
        let at = self.index(k);
        self.b.ins().iadd(start, at)
    }

    pub(super) fn value(&mut self, n: NodeId) -> Value {
        if let Some(v) = self.lookup(n) {
            return v;
        }
        if let Some(e) = self.kept_exp(n, false) {
            return e;
        }
        let node = self.f.node(n).clone();
        let v = match &node.expr {
            Expr::Float(bits) => self.fconst(f64::from_bits(*bits) as f32),
            Expr::Int(i) => self.b.ins().iconst(types::I64, *i),
            Expr::Bool(b) => self.b.ins().iconst(types::I8, i64::from(*b)),
            Expr::Index(i) => self.index(*i),
            Expr::Size(d) => self.dim(d),
            Expr::Hyper(h) => {
                let x = self.b.ins().load(types::F64, flags(), self.hypers, (*h as i32) * 8);
                if node.scalar == Scalar::Int {
                    self.b.ins().fcvt_to_sint_sat(types::I64, x)
                } else {
                    self.b.ins().fdemote(types::F32, x)
                }
            }
            Expr::Load { tensor, subs } => self.load(n, *tensor, subs),
            Expr::Table { at, values } => {
                let at = self.table_slot(*at, values.len());
                let addr = self.table_address(values, node.scalar, at);
                let x = self.b.ins().load(Self::elem_type(node.scalar), flags(), addr, 0);
                if node.scalar == Scalar::Bool {
                    self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
                } else {
                    x
                }
            }
            Expr::Prim { prim: Prim::Sub, args } if self.plan.residual_read(n).is_some() => {
                let (a, b) = (self.value(args[0]), self.value(args[1]));
                let lo = self.residual_at(n, args[1]);
                let d = self.b.ins().fsub(a, b);
                self.b.ins().fsub(d, lo)
            }
            Expr::Prim { prim, args } => self.prim(*prim, args, node.scalar),
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => self.reduce(*op, indices, *mask, *body),
        };
        self.frames.last_mut().expect("a frame").insert(n, v);
        v
    }

    /// Where a table is read at `at` (the nearest entry, [`Expr::Table`]): its value, clamped to
    /// `0..len` unless it is known to lie there.
    pub(super) fn table_slot(&mut self, at: NodeId, len: usize) -> Value {
        let v = self.value(at);
        if self.in_range(at, &Dim::Const(len as i64)) {
            return v;
        }
        let (lo, hi) = (self.int(0), self.int(len as i64 - 1));
        let v = self.b.ins().smax(v, lo);
        self.b.ins().smin(v, hi)
    }

    /// The address of entry `at` (within the table) of a constant table, stored in the lane pool as a
    /// buffer of its kind is ([`Self::elem_type`]), once per function.
    pub(super) fn table_address(&mut self, values: &std::sync::Arc<[u64]>, scalar: Scalar, at: Value) -> Value {
        let place = match self.tables.get(&(values.clone(), scalar)) {
            Some(place) => *place,
            None => {
                let words: Vec<u32> = values
                    .iter()
                    .flat_map(|&v| match table_value(scalar, v) {
                        IrValue::F(x) => vec![(x as f32).to_bits()],
                        IrValue::I(i) => vec![i as u32, (i >> 32) as u32],
                        IrValue::B(b) => vec![if b { u32::MAX } else { 0 }],
                    })
                    .collect();
                let place = self.lanes.add_table(&words);
                self.tables.insert((values.clone(), scalar), place);
                place
            }
        };
        let (base, offset) = match place {
            LanePlace::Host(_, offset) | LanePlace::Object(_, offset) => {
                (super::math::lane_base(self.b.ins(), place), offset)
            }
        };
        let bytes = Self::elem_type(scalar).bytes() as i64;
        let off = self.int_mul_imm(at, bytes);
        let off = self.int_add_imm(off, i64::from(offset));
        let off = self.offset(off);
        self.b.ins().iadd(base, off)
    }

    pub(super) fn load(&mut self, n: NodeId, tensor: TensorRef, subs: &[NodeId]) -> Value {
        let buffer = self.plan.buffer_of(self.f, tensor);
        self.load_from(n, buffer, subs)
    }

    /// The rounding residual of the logsumexp element that difference `n` subtracts (the load `lse`), from
    /// the plan's residual buffer ([`super::loops::Residual`]).
    pub(super) fn residual_at(&mut self, n: NodeId, lse: NodeId) -> Value {
        let buffer = self.plan.residual_read(n).expect("a residual read");
        let Expr::Load { subs, .. } = self.f.node(lse).expr.clone() else {
            unreachable!("a residual read subtracts a load")
        };
        self.load_from(lse, buffer, &subs)
    }

    /// Element `subs` of buffer `buffer` (bounds-checked where a subscript is not known in range; `n` is
    /// the load reported).
    pub(super) fn load_from(&mut self, n: NodeId, buffer: usize, subs: &[NodeId]) -> Value {
        let scalar = self.plan.buffers[buffer].scalar;
        let shape = self.plan.buffers[buffer].shape.clone();
        let mut flat = self.int(0);
        for (axis, (s, d)) in subs.iter().zip(&shape).enumerate() {
            let v = self.value(*s);
            let size = self.dim(d);
            if !self.in_range(*s, d) {
                // 0 <= v < size, as one unsigned comparison; else report and return. (The report is the
                // branch's first target and returns itself, so the egraph visits it last: see stepped_loop.)
                let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, v, size);
                let cont = self.b.create_block();
                let report = self.b.create_block();
                self.b.ins().brif(bad, report, &[], cont, &[]);
                self.b.switch_to_block(report);
                let code = self.b.ins().iconst(types::I64, i64::from(n.0) + 1);
                let ax = self.b.ins().iconst(types::I64, axis as i64);
                self.b.ins().store(flags(), code, self.err, 0);
                self.b.ins().store(flags(), ax, self.err, 8);
                self.b.ins().store(flags(), v, self.err, 16);
                self.b.ins().return_(&[]);
                self.b.switch_to_block(cont);
            }
            let scaled = self.int_mul(flat, size);
            flat = self.int_add(scaled, v);
        }
        let addr = self.address(buffer, scalar, flat);
        let x = self.b.ins().load(Self::elem_type(scalar), flags(), addr, 0);
        if scalar == Scalar::Bool {
            self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
        } else {
            x
        }
    }

    /// A comparison, integer or float, of scalars or of lanes (the result is a condition or a lane mask).
    pub(super) fn compare(&mut self, prim: Prim, int: bool, a: Value, b: Value) -> Value {
        use Prim::*;
        if int {
            let cc = match prim {
                Eq => IntCC::Equal,
                Ne => IntCC::NotEqual,
                Lt => IntCC::SignedLessThan,
                Le => IntCC::SignedLessThanOrEqual,
                Gt => IntCC::SignedGreaterThan,
                _ => IntCC::SignedGreaterThanOrEqual,
            };
            self.b.ins().icmp(cc, a, b)
        } else {
            let cc = match prim {
                Eq => FloatCC::Equal,
                Ne => FloatCC::NotEqual,
                Lt => FloatCC::LessThan,
                Le => FloatCC::LessThanOrEqual,
                Gt => FloatCC::GreaterThan,
                _ => FloatCC::GreaterThanOrEqual,
            };
            self.b.ins().fcmp(cc, a, b)
        }
    }

    /// A two-way choice evaluated lazily: only the taken side runs.
    pub(super) fn branch(
        &mut self,
        c: Value,
        ty: Type,
        a: &mut dyn FnMut(&mut Self) -> Value,
        b: &mut dyn FnMut(&mut Self) -> Value,
    ) -> Value {
        let out = self.two_way(c, Some(ty), &mut |l: &mut Self| Some(a(l)), &mut |l: &mut Self| {
            Some(b(l))
        });
        out.expect("a value of type ty")
    }

    /// `a` where `c` holds, else `b`, each in its own block and dominance scope; with `ty`, both give a
    /// value of that type and the join receives it.
    pub(super) fn two_way<'s>(
        &mut self,
        c: Value,
        ty: Option<Type>,
        a: &'s mut dyn FnMut(&mut Self) -> Option<Value>,
        b: &'s mut dyn FnMut(&mut Self) -> Option<Value>,
    ) -> Option<Value> {
        let (then, other, merge) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        let out = ty.map(|ty| self.b.append_block_param(merge, ty));
        self.b.ins().brif(c, then, &[], other, &[]);
        for (block, side) in [(then, a), (other, b)] {
            self.b.switch_to_block(block);
            self.frames.push(HashMap::default());
            let v = side(self);
            self.frames.pop();
            let args: Vec<ir::BlockArg> = v.into_iter().map(Into::into).collect();
            self.b.ins().jump(merge, &args);
        }
        self.b.switch_to_block(merge);
        out
    }

    /// SplitMix64's finalizer (of [`crate::prims::mix`]).
    fn splitmix(&mut self, z: Value) -> Value {
        let mut z = self.b.ins().iadd_imm_u(z, 0x9E37_79B9_7F4A_7C15_u64 as i64);
        for (shift, factor) in [(30, 0xBF58_476D_1CE4_E5B9_u64), (27, 0x94D0_49BB_1331_11EB)] {
            let s = self.b.ins().ushr_imm_u(z, shift);
            let x = self.b.ins().bxor(z, s);
            z = self.b.ins().imul_imm_u(x, factor as i64);
        }
        let s = self.b.ins().ushr_imm_u(z, 31);
        self.b.ins().bxor(z, s)
    }

    /// A uniform draw in (0, 1]: Philox4x32-10 of `key` and the counter words ([`crate::prims::philox`]),
    /// the chosen output word's top 24 bits plus one, times 2^-24.
    fn draw(&mut self, key: Value, counter: [Value; 4], word: Option<usize>, word_value: Value) -> Value {
        let mut k0 = self.b.ins().ireduce(types::I32, key);
        let high = self.b.ins().ushr_imm_u(key, 32);
        let mut k1 = self.b.ins().ireduce(types::I32, high);
        let mut c = counter.map(|w| self.b.ins().ireduce(types::I32, w));
        for round in 0..10 {
            if round > 0 {
                k0 = self.b.ins().iadd_imm_u(k0, 0x9E37_79B9_u32 as i64);
                k1 = self.b.ins().iadd_imm_u(k1, 0xBB67_AE85_u32 as i64);
            }
            let mut product = |x: Value, m: u32| {
                let wide = self.b.ins().uextend(types::I64, x);
                let p = self.b.ins().imul_imm_u(wide, i64::from(m));
                let hi = self.b.ins().ushr_imm_u(p, 32);
                (
                    self.b.ins().ireduce(types::I32, hi),
                    self.b.ins().ireduce(types::I32, p),
                )
            };
            let (hi0, lo0) = product(c[0], 0xD251_1F53);
            let (hi1, lo1) = product(c[2], 0xCD9E_8D57);
            let x = self.b.ins().bxor(hi1, c[1]);
            let n0 = self.b.ins().bxor(x, k0);
            let y = self.b.ins().bxor(hi0, c[3]);
            let n2 = self.b.ins().bxor(y, k1);
            c = [n0, lo1, n2, lo0];
        }
        let w = match word {
            Some(k) => c[k],
            None => {
                let sel = self.b.ins().band_imm_u(word_value, 3);
                let mut w = c[3];
                for k in (0..3).rev() {
                    let is = self.b.ins().icmp_imm_u(IntCC::Equal, sel, k as i64);
                    w = self.b.ins().select(is, c[k], w);
                }
                w
            }
        };
        let top = self.b.ins().ushr_imm_u(w, 8);
        let plus = self.b.ins().iadd_imm_u(top, 1);
        let f = self.b.ins().fcvt_from_uint(types::F32, plus);
        let scale = self.fconst(1.0 / 16_777_216.0);
        self.b.ins().fmul(f, scale)
    }

    /// `x % y` of integers as [`crate::prims::rem_int`]: no trap for a zero divisor (x) or `MIN % -1` (0).
    fn rem_int(&mut self, x: Value, y: Value) -> Value {
        let one = self.b.ins().iconst(types::I64, 1);
        let zero = self.b.ins().iconst(types::I64, 0);
        let minus_one = self.b.ins().iconst(types::I64, -1);
        let unsafe_divisor = {
            let is_zero = self.b.ins().icmp(IntCC::Equal, y, zero);
            let is_minus_one = self.b.ins().icmp(IntCC::Equal, y, minus_one);
            self.b.ins().bor(is_zero, is_minus_one)
        };
        let divisor = self.b.ins().select(unsafe_divisor, one, y);
        let r = self.b.ins().srem(x, divisor);
        // A remainder of the other sign than the divisor moves by one divisor.
        let nonzero = self.b.ins().icmp(IntCC::NotEqual, r, zero);
        let signs = self.b.ins().bxor(r, divisor);
        let differ = self.b.ins().icmp(IntCC::SignedLessThan, signs, zero);
        let adjust = self.b.ins().band(nonzero, differ);
        let moved = self.b.ins().iadd(r, divisor);
        let r = self.b.ins().select(adjust, moved, r);
        let is_zero = self.b.ins().icmp(IntCC::Equal, y, zero);
        self.b.ins().select(is_zero, x, r)
    }

    pub(super) fn prim(&mut self, prim: Prim, args: &[NodeId], scalar: Scalar) -> Value {
        use Prim::*;
        // Lazy operands first: they must not be evaluated unless needed.
        match prim {
            Select if self.needs_branch(args[1]) || self.needs_branch(args[2]) => {
                let c = self.value(args[0]);
                let ty = if scalar == Scalar::Float {
                    types::F32
                } else if scalar == Scalar::Int {
                    types::I64
                } else {
                    types::I8
                };
                let (x, y) = (args[1], args[2]);
                return self.branch(c, ty, &mut |l| l.value(x), &mut |l| l.value(y));
            }
            And | Or if self.needs_branch(args[1]) => {
                let a = self.value(args[0]);
                let rhs = args[1];
                return if prim == And {
                    self.branch(a, types::I8, &mut |l| l.value(rhs), &mut |l| {
                        l.b.ins().iconst(types::I8, 0)
                    })
                } else {
                    self.branch(a, types::I8, &mut |l| l.b.ins().iconst(types::I8, 1), &mut |l| {
                        l.value(rhs)
                    })
                };
            }
            _ => {}
        }
        let a: Vec<Value> = args.iter().map(|x| self.value(*x)).collect();
        let int = |l: &Self, k: usize| l.f.node(args[k]).scalar == Scalar::Int;
        match prim {
            Add if scalar == Scalar::Int => self.int_add(a[0], a[1]),
            Sub if scalar == Scalar::Int => self.b.ins().isub(a[0], a[1]),
            Mul if scalar == Scalar::Int => self.int_mul(a[0], a[1]),
            Min if scalar == Scalar::Int => self.b.ins().smin(a[0], a[1]),
            Max if scalar == Scalar::Int => self.b.ins().smax(a[0], a[1]),
            Neg if scalar == Scalar::Int => self.b.ins().ineg(a[0]),
            Abs if scalar == Scalar::Int => self.b.ins().iabs(a[0]),
            Sign if scalar == Scalar::Int => {
                let zero = self.b.ins().iconst(types::I64, 0);
                let gt = self.b.ins().icmp(IntCC::SignedGreaterThan, a[0], zero);
                let lt = self.b.ins().icmp(IntCC::SignedLessThan, a[0], zero);
                let gt = self.b.ins().uextend(types::I64, gt);
                let lt = self.b.ins().uextend(types::I64, lt);
                self.b.ins().isub(gt, lt)
            }
            Add => self.b.ins().fadd(a[0], a[1]),
            Sub => self.b.ins().fsub(a[0], a[1]),
            Mul => self.b.ins().fmul(a[0], a[1]),
            // A scalar divisor (hyperparameter, constant): the product with its reciprocal, computed once
            // outside the loops; the lanes do the same (simd.rs), so every place has the same bits.
            Div if self.f.node(args[1]).free.is_empty() => {
                let one = self.fconst(1.0);
                let reciprocal = self.b.ins().fdiv(one, a[1]);
                self.b.ins().fmul(a[0], reciprocal)
            }
            Div => self.b.ins().fdiv(a[0], a[1]),
            Neg => self.b.ins().fneg(a[0]),
            Min => self.b.ins().fmin(a[0], a[1]),
            Max => self.b.ins().fmax(a[0], a[1]),
            Abs => self.b.ins().fabs(a[0]),
            Sqrt => self.b.ins().sqrt(a[0]),
            Relu => {
                let zero = self.fconst(0.0);
                self.b.ins().fmax(a[0], zero)
            }
            Clamp => {
                let lo = self.b.ins().fmax(a[0], a[1]);
                self.b.ins().fmin(lo, a[2])
            }
            Sign => {
                let zero = self.fconst(0.0);
                let (one, minus) = (self.fconst(1.0), self.fconst(-1.0));
                let gt = self.b.ins().fcmp(FloatCC::GreaterThan, a[0], zero);
                let lt = self.b.ins().fcmp(FloatCC::LessThan, a[0], zero);
                let keep = self.b.ins().fmul(a[0], zero);
                let neg = self.b.ins().select(lt, minus, keep);
                self.b.ins().select(gt, one, neg)
            }
            Pow => self.call("lossc_powf", &a),
            Exp => self.exp_lanes(a[0], false),
            Log => self.call("lossc_logf", &a),
            Log1p => self.call("lossc_log1pf", &a),
            Expm1 => self.call("lossc_expm1f", &a),
            Tanh => self.call("lossc_tanhf", &a),
            Atan => self.call("lossc_atanf", &a),
            Cos => self.call("lossc_cosf", &a),
            Sin => self.call("lossc_sinf", &a),
            Acos => self.call("lossc_acosf", &a),
            Mix => {
                let inner = self.splitmix(a[1]);
                let x = self.b.ins().bxor(a[0], inner);
                self.splitmix(x)
            }
            Draw => {
                let word = match self.f.node(args[5]).expr {
                    crate::ir::Expr::Int(w) => Some((w & 3) as usize),
                    _ => None,
                };
                self.draw(a[0], [a[1], a[2], a[3], a[4]], word, a[5])
            }
            Rem if scalar == Scalar::Int => self.rem_int(a[0], a[1]),
            Rem => {
                let q = self.b.ins().fdiv(a[0], a[1]);
                let q = self.b.ins().floor(q);
                let p = self.b.ins().fmul(a[1], q);
                self.b.ins().fsub(a[0], p)
            }
            Floor | Ceil | Round if int(self, 0) => a[0],
            Floor | Ceil | Round => {
                let r = match prim {
                    Floor => self.b.ins().floor(a[0]),
                    Ceil => self.b.ins().ceil(a[0]),
                    _ => self.b.ins().nearest(a[0]),
                };
                self.b.ins().fcvt_to_sint_sat(types::I64, r)
            }
            Sigmoid => self.sigmoid_lanes(a[0], false),
            Softplus => self.call("lossc_softplusf", &a),
            Eq | Ne | Lt | Le | Gt | Ge => {
                let both_int = int(self, 0) && int(self, 1);
                self.compare(prim, both_int, a[0], a[1])
            }
            And => self.b.ins().band(a[0], a[1]),
            Or => self.b.ins().bor(a[0], a[1]),
            Not => self.b.ins().icmp_imm_s(IntCC::Equal, a[0], 0),
            Select => self.b.ins().select(a[0], a[1], a[2]),
            Iverson => {
                let (one, zero) = (self.fconst(1.0), self.fconst(0.0));
                self.b.ins().select(a[0], one, zero)
            }
            ToFloat => self.b.ins().fcvt_from_sint(types::F32, a[0]),
            StopGrad => a[0],
        }
    }
}

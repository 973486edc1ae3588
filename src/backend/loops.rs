//! The loop IR: what a code generator needs beyond the expression DAG.
//!
//! A [`Plan`] lists, in dependency order, one loop [`Nest`] per tensor of an optimized function: the loops
//! over its head indices (the first one may run in parallel: elements along it are independent) and the
//! element expression to compute and store. Reductions inside an element stay expression nodes; a code
//! generator turns each into an inner loop with an accumulator. Every tensor is materialized in its own
//! [`Buffer`]; the optimizer has already decided what is recomputed inline and what gets a tensor.
//!
//! Nests run in [`Group`]s, in the order of [`Plan::groups`]: a group is one loop over the outermost index
//! its members share, running each member's remaining loops for that index value in turn (row fusion: a
//! row of the data stays in cache from one member to the next, and a group is one parallel launch). A
//! member reads the tensors of earlier members only at the current outer index (whose row is complete);
//! nests that cannot join are scheduled after the group, with everything that depends on them. Sibling
//! sums over one index ([`split_sum`]) group the same way, over the summed index, after a map over that
//! index that they read at their own point (computed part by part with them: AnyLoss's sigmoids and
//! their three sums, [`split_members`]). A `let` tensor that
//! only its own group reads is row-private ([`Plan::row_private`]): one row of it per running call is
//! enough, so its data never leaves the cache; if a later member reads it only at its own element, it
//! lives in that member's rows instead ([`Plan::host`]), as a whole `let` tensor may live in the buffer of
//! its last reader in a later group.
//! A nest that is a plain matrix product of two buffers ([`Contraction`]) may instead run as a GEMM.
//! Decisions both code generators follow live here: a logsumexp runs in two passes (its maximum, then the
//! sum of `exp(x - max)`) where its body is cheap to evaluate twice ([`two_pass_logsumexp`]), else online with a running
//! maximum, and only a two-pass one keeps its exponentials; a one-hot term of a row's element
//! ([`Plan::one_hot`]) may be left out of the row's lanes and its one position written after them.
//! The Cranelift JIT consumes the plan, and the CUDA generator maps each group to a kernel launch.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::backend::interp::Evaluation;
use crate::call::CallError;
use crate::data::Tensor;
use crate::ir::{Dim, ElemTy, Expr, Function, IndexId, NodeId, ReduceOp, Role, Scalar, TensorId, TensorRef};
use crate::prims::{Cost, Prim};

/// A buffer: an input or a tensor, with its element kind and shape.
#[derive(Clone, Debug)]
pub struct Buffer {
    /// The tensor's (or input's) name.
    pub name: String,
    /// What it holds: an input, or a tensor the plan defines.
    pub of: TensorRef,
    /// `Float` buffers hold f32; `Int` and `Bool` buffers hold i64.
    pub scalar: Scalar,
    /// Its extents, as dimension expressions.
    pub shape: Vec<Dim>,
    /// A float buffer whose storage may be half precision (`DType::BF16` or `DType::F16`): an input
    /// declared `bf16` / `f16` and its gradient, whose values are those of that type. A code generator
    /// may keep them so in memory (the CUDA kernels read and write device tensors in place); it must not
    /// let another tensor live in such a buffer ([`Plan::host`]) unless it stores f32 there.
    pub half: Option<crate::data::DType>,
}

/// One tensor's loop nest.
#[derive(Clone, Debug)]
pub struct Nest {
    /// The tensor it computes.
    pub tensor: TensorId,
    /// Its loop indices with their extents, outermost first.
    pub head: Vec<(IndexId, Dim)>,
    /// The element's expression.
    pub body: NodeId,
    /// What the tensor is for (a let, the loss, an output, a gradient).
    pub role: Role,
    /// Whether iterations of the outermost loop are independent (always, for a materialized tensor).
    pub parallel: bool,
}

/// Nests (indices into [`Plan::nests`]) that run as one loop over their shared outermost index.
#[derive(Clone, Debug)]
pub struct Group {
    /// Its nests (indices into [`Plan::nests`]), in order.
    pub members: Vec<usize>,
}

/// A nest `lse[t] = logsumexp[k] B(t, k)` and a later elementwise nest `G[t, j]` whose element contains
/// `exp(B(t, j) - lse[t])` (the softmax, as in every cross-entropy gradient): a code generator may write
/// the row's `exp(B(t, k) - max)` into row `t` of G's own buffer while it sums them, and read the `exp`
/// node from there when it computes G's row (which overwrites each element after reading it): times
/// `1 / sum` when both run in one group; when G runs in a later group, times the factor the logsumexp
/// left for the row in [`KeptExps::factors`] (no pass over the row to scale it first). One exponential
/// per element instead of two. A masked logsumexp keeps the exponentials where its mask holds, for a
/// consumer that reads them only there (multi-similarity's two mined softmaxes). A plain sum of
/// exponentials keeps them unshifted for a consumer that reads the same `exp` ([`KeptExps::plain`]).
#[derive(Clone, Copy, Debug)]
pub struct KeptExps {
    /// The logsumexp nest (its body is the reduction).
    pub lse: usize,
    /// The nest whose row holds the exponentials (no reduction in its element, so nothing else touches
    /// its row before it).
    pub consumer: usize,
    /// The `exp` node of the consumer's element that reads them.
    pub exp: NodeId,
    /// When the consumer runs in a later group: a buffer of one float per row (after every tensor's)
    /// where the logsumexp leaves the factor its row's `exp(B - max)` are to be multiplied by (`1 / sum`,
    /// or 1 where the maximum is not finite), which the consumer applies as it reads them.
    pub factors: Option<usize>,
    /// Where the row lives when the consumer's own row holds another logsumexp's exponentials (both in
    /// the consumer's group): a row-private buffer of the consumer's shape (after every tensor's).
    pub scratch: Option<usize>,
    /// The nest is a plain sum of exponentials `sum[k | m] exp(B)` (not a logsumexp) and the consumer
    /// reads `exp(B)` itself: the row holds them unshifted (their factor is 1), to be read as they are
    /// (NT-Xent's `sum[j | j != i] exp(aa[i, j])` and the adjoint of `aa`).
    pub plain: bool,
}

/// A logsumexp nest whose value other nodes subtract from a value of their own (`x - lse[t]`, as in the
/// softmax `exp(x - lse[t])` of every cross-entropy gradient). Stored as f32, a logsumexp of magnitude
/// 4,000 (logits of 40 at a temperature of 0.01) is rounded by up to 2.4e-4, and each such difference, and
/// the softmax computed from it, carries that error (a low-temperature loss's temperature gradient was
/// 20 % off). So the nest also leaves, per element, what f32 rounded off its value (computed where the
/// value is still exact) in `buffer`, and each difference in `reads` subtracts it too:
/// `(x - lse[t]) - residual[t]`. A code generator that computes such a difference without it gets the
/// plain f32 result; it must then still write the buffer (zeros will do).
#[derive(Clone, Debug)]
pub struct Residual {
    /// The logsumexp nest.
    pub lse: usize,
    /// The buffer of its residuals: one float per element of the nest (after every tensor's).
    pub buffer: usize,
    /// The `x - lse[…]` nodes (a `Sub` whose right operand loads the nest's tensor).
    pub reads: Vec<NodeId>,
}

/// A nest `out[p, q] = sum[k] L(p, k) * R(k, q)` whose operands are float buffers read at bare indices
/// (in either order, so a transposed operand is a strided read): a matrix product a code generator may
/// hand to a GEMM. The sum may carry the mask `L != 0` (or `R != 0`) that autodiff puts on adjoint terms
/// (an element that receives no adjoint contributes nothing): a dense product agrees with it where the
/// other operand is finite, which `must_be_finite` tells the code generator to check first.
///
/// A nest `out[p, q] = sum[k] (L(p, k) - R(k, q)) ^ 2` (either operand first; no mask) is one too, with
/// `distance` set: pairwise squared distances, which a code generator computes in the same tiles as a
/// product, each term a squared difference instead of a product (not expanded into norms minus twice a
/// product, which loses the accuracy of near pairs).
#[derive(Clone, Debug)]
pub struct Contraction {
    /// The nest that computes the product.
    pub nest: usize,
    /// `L`, as a `rows × depth` matrix (rows = `p`, depth = `k`).
    pub left: Operand,
    /// `R`, as a `depth × columns` matrix (columns = `q`).
    pub right: Operand,
    /// The extents of `p`, `k` and `q`.
    pub rows: Dim,
    /// The extent of `k`.
    pub depth: Dim,
    /// The extent of `q`.
    pub columns: Dim,
    /// The sum is masked by one operand `!= 0`: it equals the dense product when this other one is finite.
    pub must_be_finite: Option<Operand>,
    /// Each term is `(L - R) ^ 2`, not `L * R`.
    pub distance: bool,
}

/// One operand of a [`Contraction`]: its buffer (row-major, its two subscripts as axes), and whether it
/// holds the transpose of the matrix the product needs (a strided read).
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    /// The buffer it reads (an index into [`Plan::buffers`]).
    pub buffer: usize,
    /// Whether the buffer holds the operand transposed.
    pub transposed: bool,
    /// The buffer is a symmetric tensor ([`crate::opt::transpose::symmetric_tensors`]): read as its
    /// transpose it gives the same values, so a GEMM may read it in whichever order it copies faster.
    pub symmetric: bool,
}

impl Contraction {
    /// The product reads one buffer both ways (`L = Rᵀ`, as in `x·xᵀ`): a GEMM may compute half of it and
    /// mirror the rest.
    pub fn symmetric(&self) -> bool {
        self.left.buffer == self.right.buffer && self.left.transposed != self.right.transposed
    }

    /// Whether a GEMM reads each operand (left, right) as the transpose of the matrix the product needs:
    /// as its buffer holds it, but for a symmetric tensor in a product that is not itself symmetric, which
    /// is read in the order a GEMM's packing copies in contiguous runs (down the left operand's columns,
    /// along the right operand's rows). Both code generators' GEMMs pack so.
    pub fn reads_transposed(&self) -> (bool, bool) {
        let symmetric = self.symmetric();
        let order = |o: &Operand, contiguous_when_transposed: bool| match o.symmetric && !symmetric {
            true => contiguous_when_transposed,
            false => o.transposed,
        };
        (order(&self.left, true), order(&self.right, false))
    }

    /// Recognizes a [`Contraction`] nest (both operands `f32` buffers whose axes are exactly the extents of
    /// the indices that read them, so every strided read stays inside its buffer).
    ///
    /// `symmetric`: per tensor of `f`, whether it is symmetric ([`Operand::symmetric`]).
    pub fn of(f: &Function, plan_buffers: &[Buffer], symmetric: &[bool], n: usize, nest: &Nest) -> Option<Contraction> {
        let [(p, pd), (q, qd)] = &nest.head[..] else {
            return None;
        };
        let (k, mask, body) = f.single_sum(nest.body)?;
        let Expr::Prim { prim: Prim::Mul, args } = &f.node(body).expr else {
            return None;
        };
        // `(L - R) * (L - R)`: the factors are one node.
        let (args, distance) = match (mask, &args[..]) {
            (None, [a, b]) if a == b => match &f.node(*a).expr {
                Expr::Prim { prim: Prim::Sub, args } => (args, true),
                _ => return None,
            },
            _ => (args, false),
        };
        // An operand: a float buffer read at (free, k) or (k, free), `free` one of the head indices.
        let operand = |n: NodeId| -> Option<(IndexId, Operand)> {
            let Expr::Load { tensor, subs } = &f.node(n).expr else {
                return None;
            };
            let [a, b] = subs[..] else {
                return None;
            };
            let (Expr::Index(a), Expr::Index(b)) = (&f.node(a).expr, &f.node(b).expr) else {
                return None;
            };
            let (free, summed_first) = match (*a == k, *b == k) {
                (false, true) => (*a, false),
                (true, false) => (*b, true),
                _ => return None,
            };
            let (buffer, symmetric) = match tensor {
                TensorRef::Input(i) => (*i as usize, false),
                TensorRef::Def(t) => (f.inputs.len() + t.index(), symmetric[t.index()]),
            };
            let buf = &plan_buffers[buffer];
            let axes = [f.index(*a).range.clone(), f.index(*b).range.clone()];
            // As `L` (p, k) it is transposed when k comes first; `right` flips it for `R` (k, q).
            let operand = Operand {
                buffer,
                transposed: summed_first,
                symmetric,
            };
            (buf.scalar == Scalar::Float && buf.shape[..] == axes[..]).then_some((free, operand))
        };
        let [x, y] = args[..] else {
            return None;
        };
        let ((fx, ox), (fy, oy)) = (operand(x)?, operand(y)?);
        let (left, left_node, right) = match (fx == *p && fy == *q, fx == *q && fy == *p) {
            (true, false) => (ox, x, oy),
            (false, true) => (oy, y, ox),
            _ => return None,
        };
        let right = Operand {
            transposed: !right.transposed,
            ..right
        };
        let must_be_finite = match mask {
            None => None,
            Some(m) => {
                // The operand the mask does not test.
                match f.nonzero_test(m)? {
                    t if t == left_node => Some(right),
                    t if t == x || t == y => Some(left),
                    _ => return None,
                }
            }
        };
        Some(Contraction {
            nest: n,
            left,
            right,
            rows: pd.clone(),
            depth: f.index(k).range.clone(),
            columns: qd.clone(),
            must_be_finite,
            distance,
        })
    }
}

/// A dot product of whole operands whose rows a row group reads (a streamed program's copy of a Gram
/// matrix's rows, [`crate::opt::stream`]), taken out of the group ([`Plan::streaming_tiled`]): the caller
/// computes it before the group's code for each block of the group's rows, as one matrix product per
/// block, into a block of rows of its own ([`Plan::tiled`]); each loaded row of the other operand then
/// serves the whole block instead of one row.
#[derive(Clone, Debug)]
pub struct Tile {
    /// The group whose rows read it (its nest is in no group).
    pub group: usize,
    /// The product, its `nest` the copy's.
    pub product: Contraction,
}

/// Buffers (inputs, then one per tensor), nests in dependency order, and the groups they run in.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Inputs first, then one per tensor of the function.
    pub buffers: Vec<Buffer>,
    /// One per tensor, in dependency order.
    pub nests: Vec<Nest>,
    /// The nests, grouped into loops over shared rows.
    pub groups: Vec<Group>,
    /// Softmax rows whose exponentials are computed once.
    pub kept_exps: Vec<KeptExps>,
    /// Matrix products, each a group of its own.
    pub contractions: Vec<Contraction>,
    /// Logsumexps whose values are subtracted from others, with their rounding residuals.
    pub residuals: Vec<Residual>,
    /// Per buffer: whether it is row-private: a `let` tensor that only its own row-fused group reads (see
    /// the module doc), of which a code generator may give each running call one row instead of the whole.
    pub row_private: Vec<bool>,
    /// Products a group's caller computes for each block of its rows ([`Plan::streaming_tiled`]).
    pub tiles: Vec<Tile>,
    /// Runs of consecutive groups (first and last) that a call runs a block of rows at a time, each
    /// block through all of them before the next ([`Plan::streaming_tiled`]); their tiles are the
    /// first's.
    pub pipelines: Vec<(usize, usize)>,
    /// Per buffer: whether it is a [`Tile`]'s: one block of rows per running call, as the caller holds it.
    pub tiled: Vec<bool>,
    /// Per buffer: the buffer it lives in, for a tensor (the guest) that a later nest (the host) reads only
    /// at its own element, last (see `guests`): a row-private tensor in the rows of a later member of its
    /// group, or a whole `let` tensor in the buffer of a nest of a later group. The host's elements are then
    /// computed in place: an element that is the guest's element alone (`grad[t, k] = m_adj[t, k]`, with a
    /// one-hot term) needs no store at all. Such a buffer is not [`Plan::row_private`]; it has no storage.
    pub host: Vec<Option<usize>>,
    /// Per node of the function: whether evaluating it could fail or cost a loop (it reaches a
    /// reduction, or a load whose subscript is not statically in range), so that a choice around it must
    /// branch rather than compute both sides and select. Indexed by [`NodeId::index`].
    pub branching: Vec<bool>,
}

impl Plan {
    /// The plan of an optimized function.
    pub fn new(f: &Function) -> Plan {
        Plan::build(f, false)
    }

    /// The plan of a function whose pairwise tensors are streamed ([`crate::opt::stream::rows`]): a nest
    /// may join a row group also when it reads matrices outside its own row (the copies of pairwise
    /// tensors compute their rows from whole inputs, and their readers multiply them with whole
    /// matrices), so that each copy runs in its reader's group and is row-private there.
    pub fn streaming(f: &Function) -> Plan {
        Plan::build(f, true)
    }

    /// [`Plan::streaming`] run a block of rows at a time where that turns row-by-row dot products into
    /// matrix products (the JIT's streamed programs): in each row group that is not split into parts of
    /// sums and has no kept exponentials (a logsumexp's residuals are whole buffers: a group that writes
    /// them runs in blocks as well),
    /// - each row-private copy of a dot product of whole operands (inputs, or tensors of earlier groups)
    ///   is taken out into [`Plan::tiles`], computed for each block of rows before the group's code;
    /// - each member that multiplies a row-private tensor of the group with a whole matrix (the
    ///   gradient's `sum[j] w[i, j] · x[j, d]`) becomes a matrix product of its own between the members
    ///   before it and those after (a [`Plan::pipelines`] of groups), whose output, if row-private, and
    ///   every row-private tensor read across those groups, hold a block of rows ([`Plan::tiled`]).
    pub fn streaming_tiled(f: &Function) -> Plan {
        let mut plan = Plan::streaming(f);
        let unsymmetric = vec![false; f.tensors.len()];
        let first = f.inputs.len();
        let mut groups = Vec::with_capacity(plan.groups.len());
        for g in std::mem::take(&mut plan.groups) {
            let members = g.members.clone();
            let buffer = |n: usize| first + plan.nests[n].tensor.index();
            let ours = |b: usize| members.iter().any(|m| buffer(*m) == b);
            let whole = |b: usize| b < first || !(plan.row_private[b] || plan.tiled[b] || ours(b));
            let involved = plan
                .kept_exps
                .iter()
                .any(|e| ours(buffer(e.lse)) || ours(buffer(e.consumer)))
                || members
                    .iter()
                    .any(|m| plan.host[buffer(*m)].is_some_and(|h| plan.row_private[h]));
            let product = |n: usize| Contraction::of(f, &plan.buffers, &unsymmetric, n, &plan.nests[n]);
            let tiles: Vec<Contraction> = (members.iter())
                .filter(|&&n| plan.row_private[buffer(n)])
                .filter_map(|&n| product(n))
                .filter(|c| c.must_be_finite.is_none() && whole(c.left.buffer) && whole(c.right.buffer))
                .collect();
            // The members left, cut around the products of a row-private tensor of the group and a whole one.
            let mut stages: Vec<Vec<usize>> = vec![Vec::new()];
            let mut products = Vec::new();
            for &n in members.iter().filter(|n| !tiles.iter().any(|c| c.nest == **n)) {
                let block_product = product(n).filter(|c| {
                    let left = c.left.buffer;
                    plan.row_private[left]
                        && ours(left)
                        && whole(c.right.buffer)
                        && c.must_be_finite.is_none_or(|o| whole(o.buffer))
                });
                match block_product {
                    Some(c) => {
                        stages.push(vec![n]);
                        products.push(c);
                        stages.push(Vec::new());
                    }
                    None => stages.last_mut().expect("a stage").push(n),
                }
            }
            stages.retain(|s| !s.is_empty());
            let splits = stages.iter().any(|s| {
                let nests: Vec<&Nest> = s.iter().map(|n| &plan.nests[*n]).collect();
                split_members(f, &nests).is_some()
            });
            if involved || (tiles.is_empty() && products.is_empty()) || stages.is_empty() || splits {
                groups.push(g);
                continue;
            }
            // Row-private tensors read in another stage than their own hold a block of rows.
            let stage_of = |b: usize| stages.iter().position(|s| s.iter().any(|m| buffer(*m) == b));
            let mut crossing = Vec::new();
            for (k, stage) in stages.iter().enumerate() {
                for m in stage {
                    for n in f.reachable(&[plan.nests[*m].body]) {
                        if let Expr::Load {
                            tensor: TensorRef::Def(t),
                            ..
                        } = f.node(n).expr
                        {
                            let b = plan.buffer_of(f, TensorRef::Def(t));
                            if plan.row_private[b] && stage_of(b).is_some_and(|s| s != k) {
                                crossing.push(b);
                            }
                        }
                    }
                }
            }
            let start = groups.len();
            for product in tiles {
                let b = buffer(product.nest);
                plan.row_private[b] = false;
                plan.tiled[b] = true;
                plan.tiles.push(Tile { group: start, product });
            }
            for b in crossing {
                plan.row_private[b] = false;
                plan.tiled[b] = true;
            }
            plan.contractions.extend(products);
            groups.extend(stages.into_iter().map(|members| Group { members }));
            plan.pipelines.push((start, groups.len() - 1));
        }
        plan.groups = groups;
        plan
    }

    fn build(f: &Function, anywhere: bool) -> Plan {
        let mut buffers: Vec<Buffer> = f
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| Buffer {
                name: input.name.clone(),
                of: TensorRef::Input(i as u32),
                scalar: if input.elem == ElemTy::Idx {
                    Scalar::Int
                } else {
                    Scalar::Float
                },
                shape: input.shape.clone(),
                half: crate::data::DType::half_of(input.elem),
            })
            .collect();
        let mut nests = Vec::new();
        for (k, t) in f.tensors.iter().enumerate() {
            let id = TensorId(k as u32);
            let half = match t.role {
                Role::Grad(i) => crate::data::DType::half_of(f.inputs[i as usize].elem),
                _ => None,
            };
            buffers.push(Buffer {
                name: t.name.clone(),
                of: TensorRef::Def(id),
                scalar: t.scalar,
                shape: f.tensor_shape(id),
                half,
            });
            nests.push(Nest {
                tensor: id,
                head: t.indices.iter().map(|i| (*i, f.index(*i).range.clone())).collect(),
                body: t.body,
                role: t.role,
                parallel: !t.indices.is_empty(),
            });
        }
        let groups = fuse_rows(f, &nests, anywhere);
        let mut kept_exps = kept_exps(f, &nests, &groups, &mut buffers);
        // Exponentials are kept only where the logsumexp runs in two passes ([`two_pass_logsumexp`]).
        kept_exps.retain(|e| match &f.node(nests[e.lse].body).expr {
            Expr::Reduce { body, .. } => e.plain || two_pass_logsumexp(f, *body),
            _ => false,
        });
        let group_of = |n: usize| groups.iter().position(|g| g.members.contains(&n));
        for e in &mut kept_exps {
            if group_of(e.lse) != group_of(e.consumer) {
                let lse = &nests[e.lse];
                e.factors = Some(buffers.len());
                buffers.push(Buffer {
                    name: format!("{}_factors", f.tensor(lse.tensor).name),
                    of: TensorRef::Def(lse.tensor),
                    scalar: Scalar::Float,
                    shape: lse.head.iter().map(|(_, d)| d.clone()).collect(),
                    half: None,
                });
            }
        }
        let residuals = residuals(f, &nests, &mut buffers);
        let symmetric = crate::opt::transpose::symmetric_tensors(f);
        let contractions = groups
            .iter()
            .filter_map(|g| match g.members[..] {
                [n] => Contraction::of(f, &buffers, &symmetric, n, &nests[n]),
                _ => None,
            })
            .collect();
        let mut row_private = vec![false; buffers.len()];
        for k in kept_exps.iter().filter_map(|e| e.scratch) {
            row_private[k] = true;
        }
        for n in row_private_nests(f, &nests, &groups, &kept_exps) {
            row_private[f.inputs.len() + nests[n].tensor.index()] = true;
        }
        let mut lives_in = vec![None; buffers.len()];
        for (guest, host) in guests(f, &nests, &groups, &kept_exps, &row_private, &buffers) {
            let buffer = |n: usize| f.inputs.len() + nests[n].tensor.index();
            row_private[buffer(guest)] = false;
            lives_in[buffer(guest)] = Some(buffer(host));
        }
        Plan {
            buffers,
            nests,
            groups,
            kept_exps,
            contractions,
            residuals,
            tiles: Vec::new(),
            pipelines: Vec::new(),
            tiled: vec![false; row_private.len()],
            row_private,
            host: lives_in,
            branching: branching(f),
        }
    }

    /// The residual buffer the nest of `tensor` writes, if it is a logsumexp whose value is subtracted
    /// from others ([`Residual`]).
    pub fn residual_of(&self, tensor: TensorId) -> Option<usize> {
        self.residuals
            .iter()
            .find(|r| self.nests[r.lse].tensor == tensor)
            .map(|r| r.buffer)
    }

    /// The residual buffer a difference `x - lse[…]` subtracts too, if it is one of a [`Residual`]'s reads.
    pub fn residual_read(&self, n: NodeId) -> Option<usize> {
        self.residuals.iter().find(|r| r.reads.contains(&n)).map(|r| r.buffer)
    }

    /// The nests of a group, in the order they run.
    pub fn members(&self, g: &Group) -> Vec<&Nest> {
        g.members.iter().map(|m| &self.nests[*m]).collect()
    }

    /// The row-private buffers of a group ([`Plan::row_private`]): its members' and the scratch rows of
    /// kept exponentials its logsumexps write.
    pub fn private_buffers(&self, f: &Function, group: &Group) -> Vec<usize> {
        let members = group
            .members
            .iter()
            .map(|m| self.buffer_of(f, TensorRef::Def(self.nests[*m].tensor)));
        let scratch = self
            .kept_exps
            .iter()
            .filter(|e| group.members.contains(&e.lse))
            .filter_map(|e| e.scratch);
        members.filter(|k| self.row_private[*k]).chain(scratch).collect()
    }

    /// The buffer where a kept softmax row lives: its scratch row, or the consumer's own.
    pub fn kept_row(&self, f: &Function, e: &KeptExps) -> usize {
        e.scratch
            .unwrap_or_else(|| self.buffer_of(f, TensorRef::Def(self.nests[e.consumer].tensor)))
    }

    /// The buffer of an input or tensor.
    pub fn buffer_of(&self, f: &Function, r: TensorRef) -> usize {
        match r {
            TensorRef::Input(i) => i as usize,
            TensorRef::Def(t) => f.inputs.len() + t.index(),
        }
    }

    /// [`crate::call::check_elements`] on the tensors of `f` whose buffers a backend stores whole
    /// (`whole(buffer)`; not a row or a block of rows per running call).
    pub fn check_elements(
        &self,
        f: &Function,
        sizes: &[i64],
        whole: impl Fn(usize) -> bool,
    ) -> Result<(), crate::call::CallError> {
        crate::call::check_elements(f, sizes, |t| {
            whole(self.buffer_of(f, TensorRef::Def(crate::ir::TensorId(t as u32))))
        })
    }
}

impl Plan {
    /// The loss, outputs and gradients of an executed plan, as f64 tensors: `values(k)` reads buffer `k`
    /// (every backend that runs a plan collects its results here).
    pub fn evaluation(&self, f: &Function, sizes: &[i64], mut values: impl FnMut(usize) -> Vec<f64>) -> Evaluation {
        let mut loss = f64::NAN;
        let mut outputs = Vec::new();
        let mut grads = Vec::new();
        for (role, name, k) in self.results(f) {
            let shape = || -> Vec<usize> { self.buffers[k].shape.iter().map(|d| d.eval(sizes) as usize).collect() };
            match role {
                Role::Loss => loss = values(k).first().copied().unwrap_or(f64::NAN),
                Role::Output => outputs.push((name.to_string(), Tensor::float(shape(), values(k)))),
                Role::Grad(i) => grads.push((
                    name.to_string(),
                    Tensor::gradient(shape(), values(k), f.inputs[i as usize].elem),
                )),
                Role::Let => {}
            }
        }
        Evaluation { loss, outputs, grads }
    }

    /// Where the results of an executed plan are, in plan order: the role, name (an output's, or for a
    /// gradient its input's) and buffer of the loss, each extra output and each gradient.
    pub fn results<'a>(&'a self, f: &'a Function) -> impl Iterator<Item = (Role, &'a str, usize)> + 'a {
        self.nests.iter().filter(|n| n.role != Role::Let).map(move |n| {
            let name = match n.role {
                Role::Grad(i) => f.inputs[i as usize].name.as_str(),
                _ => f.tensor(n.tensor).name.as_str(),
            };
            (n.role, name, self.buffer_of(f, TensorRef::Def(n.tensor)))
        })
    }
}

/// The error a generated bounds check reports: the load `node` (as the check records it, plus one), the
/// axis and the subscript's value.
pub fn index_error(f: &Function, sizes: &[i64], node_plus_one: i64, axis: i64, value: i64) -> CallError {
    let node = NodeId((node_plus_one - 1) as u32);
    let (tensor, shape) = match f.nodes().get(node.index()).map(|n| &n.expr) {
        Some(Expr::Load { tensor, .. }) => (f.ref_name(*tensor).to_string(), f.ref_shape(*tensor)),
        _ => (String::from("?"), vec![]),
    };
    let axis = axis as usize;
    let size = shape.get(axis).map_or(0, |d| d.eval(sizes) as usize);
    let span = f.nodes().get(node.index()).map_or(f.span, |_| f.span(node));
    CallError::IndexOutOfRange {
        tensor,
        axis,
        value,
        size,
        span,
    }
}

/// The logsumexp nests whose values some node subtracts from another value ([`Residual`]), each with a
/// residual buffer added to `buffers`.
fn residuals(f: &Function, nests: &[Nest], buffers: &mut Vec<Buffer>) -> Vec<Residual> {
    let mut out: Vec<Residual> = Vec::new();
    for (k, node) in f.nodes().iter().enumerate() {
        let Expr::Prim { prim: Prim::Sub, args } = &node.expr else {
            continue;
        };
        let Expr::Load {
            tensor: TensorRef::Def(t),
            ..
        } = &f.node(args[1]).expr
        else {
            continue;
        };
        let Some(lse) = nests.iter().position(|n| n.tensor == *t) else {
            continue;
        };
        let is_lse = matches!(
            f.node(nests[lse].body).expr,
            Expr::Reduce {
                op: ReduceOp::LogSumExp,
                ..
            }
        );
        if !is_lse || node.scalar != Scalar::Float {
            continue;
        }
        let read = NodeId(k as u32);
        match out.iter_mut().find(|r| r.lse == lse) {
            Some(r) => r.reads.push(read),
            None => {
                out.push(Residual {
                    lse,
                    buffer: buffers.len(),
                    reads: vec![read],
                });
                buffers.push(Buffer {
                    name: format!("{}_residual", f.tensor(*t).name),
                    of: TensorRef::Def(*t),
                    scalar: Scalar::Float,
                    shape: nests[lse].head.iter().map(|(_, d)| d.clone()).collect(),
                    half: None,
                });
            }
        }
    }
    out
}

/// Whether a reduction body is cheap enough to evaluate twice (for a two-pass logsumexp): arithmetic,
/// comparison and selection steps.
pub fn cheap(f: &Function, body: NodeId) -> bool {
    few_steps(f, body, 12, Cost::Arithmetic)
}

/// Whether a logsumexp runs in two passes (its maximum, then the sum of `exp(x - max)`, evaluating its
/// body twice) rather than online: a body of arithmetic, comparison and selection steps, up to 32 of them.
/// Evaluating such a body twice costs less than the online form's rescaling per element (a body of 13
/// steps, LDR-KL's margins with a constant and a temperature, ran 20x slower online at the old limit of 12).
pub fn two_pass_logsumexp(f: &Function, body: NodeId) -> bool {
    few_steps(f, body, 32, Cost::Arithmetic)
}

/// At most `limit` nodes, no reduction, and no primitive costlier than `most`.
pub fn few_steps(f: &Function, body: NodeId, limit: usize, most: Cost) -> bool {
    few_steps_reading(f, body, limit, most, &HashSet::default())
}

/// [`few_steps`], where the nodes of `read` are read from memory (one step each, their operands none).
pub fn few_steps_reading(f: &Function, body: NodeId, limit: usize, most: Cost, read: &HashSet<NodeId>) -> bool {
    let mut seen = HashSet::default();
    let mut stack = vec![body];
    while let Some(n) = stack.pop() {
        if !seen.insert(n) || read.contains(&n) {
            continue;
        }
        match &f.node(n).expr {
            Expr::Reduce { .. } => return false,
            Expr::Prim { prim, .. } if prim.cost() > most => return false,
            expr => stack.extend(expr.operands()),
        }
    }
    seen.len() <= limit
}

/// A one-hot term of a row's element ([`Plan::one_hot`]): `select(k == at, a, z)` or `[k == at]`, with
/// `at` free of `k`. Away from `at` the term is `z` (or 0). Where the term is `select(k == at, a, 0)`, `a`
/// free of `k`, and the element adds it once (`term + rest`, or deeper in a sum of terms), a code
/// generator may compute `rest` (or the element with the term as 0) along the row and add `a` at
/// `k = at` afterwards (a label's term in a cross-entropy gradient); elsewhere (a smoothed target's
/// `(1 - eps) [k == y]` inside a product) it may compute the row with the term as it is away from `at`,
/// and write the element at `k = at`, computed whole, over it.
#[derive(Clone, Copy, Debug)]
pub struct OneHot {
    /// The `select` or bracket node.
    pub term: NodeId,
    /// The position `at` (the label).
    pub at: NodeId,
    /// What the term is away from `at`: the select's third operand, `None` for a bracket (0).
    pub away: Option<NodeId>,
    /// The value `a` to add at `at` after the lanes, where the element adds `select(k == at, a, 0)` once.
    pub added: Option<NodeId>,
    /// The rest of the element, where it is `term + rest` and `a` is added.
    pub rest: Option<NodeId>,
}

impl Plan {
    /// A one-hot term (`select(k == e, a, z)` or `[k == e]`, `e` free of `k` and computed without a
    /// branch) of `element`: preferably one added to the element ([`OneHot::added`]: at the top of a sum,
    /// `term + rest` either way round, or deeper in a sum of terms, `(term + x) + y`), else anywhere in
    /// the element but a reduction's body.
    pub fn one_hot(&self, f: &Function, element: NodeId, k: IndexId) -> Option<OneHot> {
        if let Some(hot) = self.added_one_hot(f, element, k) {
            return Some(hot);
        }
        let nodes = f.reachable(&[element]);
        if nodes.iter().any(|n| matches!(f.node(*n).expr, Expr::Reduce { .. })) {
            return None;
        }
        nodes.into_iter().find_map(|n| self.one_hot_term(f, n, k))
    }

    /// A term `select(k == e, a, 0)`, `a` free of `k` and computed without a branch, that the sum
    /// `element` adds once.
    fn added_one_hot(&self, f: &Function, element: NodeId, k: IndexId) -> Option<OneHot> {
        let Expr::Prim { prim: Prim::Add, args } = &f.node(element).expr else {
            return None;
        };
        let added = |term: NodeId| {
            let hot = self.one_hot_term(f, term, k)?;
            let Expr::Prim { args: s, .. } = &f.node(term).expr else {
                return None;
            };
            (hot.away.is_some_and(|z| f.as_float(z) == Some(0.0))
                && !f.node(s[1]).free.contains(&k)
                && !self.branching[s[1].index()])
            .then_some(OneHot {
                added: Some(s[1]),
                ..hot
            })
        };
        let top = [(args[0], args[1]), (args[1], args[0])]
            .into_iter()
            .find_map(|(term, rest)| {
                Some(OneHot {
                    rest: Some(rest),
                    ..added(term)?
                })
            });
        // Deeper, the term is 0 wherever it occurs in the lanes: it must occur once.
        top.or_else(|| {
            let inner = args.iter().find_map(|a| self.added_one_hot(f, *a, k))?;
            (Plan::paths(f, element, inner.term, &mut HashMap::default()) == 1)
                .then_some(OneHot { rest: None, ..inner })
        })
    }

    /// How many paths lead from `from` down to `to` in the expression DAG (counting stops at 2).
    fn paths(f: &Function, from: NodeId, to: NodeId, memo: &mut HashMap<NodeId, usize>) -> usize {
        if from == to {
            return 1;
        }
        if let Some(&n) = memo.get(&from) {
            return n;
        }
        let mut n = 0;
        for operand in f.node(from).expr.operands() {
            n = (n + Plan::paths(f, operand, to, memo)).min(2);
        }
        memo.insert(from, n);
        n
    }

    /// `select(k == e, a, z)` or `[k == e]` with `e` free of `k` and computed without a branch.
    fn one_hot_term(&self, f: &Function, term: NodeId, k: IndexId) -> Option<OneHot> {
        let Expr::Prim { prim, args: s } = &f.node(term).expr else {
            return None;
        };
        let away = match prim {
            Prim::Select => Some(s[2]),
            Prim::Iverson => None,
            _ => return None,
        };
        let Expr::Prim {
            prim: Prim::Eq,
            args: c,
        } = &f.node(s[0]).expr
        else {
            return None;
        };
        let free_of_k = |n: NodeId| !f.node(n).free.contains(&k);
        let at_k = |n: NodeId| f.node(n).expr == Expr::Index(k);
        let at = match c[..] {
            [p, q] if at_k(p) && free_of_k(q) => q,
            [p, q] if at_k(q) && free_of_k(p) => p,
            _ => return None,
        };
        (!self.branching[at.index()]).then_some(OneHot {
            term,
            at,
            away,
            added: None,
            rest: None,
        })
    }
}

/// [`Plan::branching`] for every node, in one pass over the arena (operands come before their users).
fn branching(f: &Function) -> Vec<bool> {
    let mut out: Vec<bool> = Vec::with_capacity(f.nodes().len());
    for node in f.nodes() {
        let own = match &node.expr {
            Expr::Reduce { .. } => true,
            Expr::Load { tensor, subs } => {
                let shape = f.ref_shape(*tensor);
                subs.iter().zip(&shape).any(|(s, d)| !f.in_range(*s, d))
            }
            _ => false,
        };
        let branches = own || node.expr.operands().into_iter().any(|o| out[o.index()]);
        out.push(branches);
    }
    out
}

/// The most nests a row-fused group holds: a group is one generated function, and one function of a
/// hundred nests (an unrolled sorting network) compiles slowly and on one core; several run in turn
/// over the same rows and compile in parallel.
const MAX_MEMBERS: usize = 32;

/// Groups the nests greedily: each group starts at the first nest not yet scheduled (if it is row-sized,
/// [`row_local`]); a later row-local nest over the same outermost extent joins when it reads the members'
/// tensors only at its own outer index and reads no tensor of a nest passed over (which then runs after
/// the group). With `anywhere`, nests may read matrices outside their row ([`row_local`]).
fn fuse_rows(f: &Function, nests: &[Nest], anywhere: bool) -> Vec<Group> {
    // Per nest, the tensors it reads (for a streaming plan's `keep_with_readers`).
    let reads: Vec<Vec<TensorId>> = match anywhere {
        true => (nests.iter())
            .map(|n| tensor_reads(f, n.body).into_iter().map(|(t, _)| t).collect())
            .collect(),
        false => Vec::new(),
    };
    let mut left: Vec<usize> = (0..nests.len()).collect();
    let mut groups = Vec::new();
    while let Some(&first) = left.first() {
        let mut members = vec![first];
        let mut passed: Vec<TensorId> = Vec::new();
        let sum_extent = |n: &Nest| split_sum(f, n).map(|(i, _, _)| f.index(i).range.clone());
        // A map over one index leads the sibling sums after it over that extent that read it only at their
        // summed index (each part of the sums computes its part of the map first, and reads it back from
        // the cache); without any, the map is grouped as any other nest.
        let led = map_extent(f, &nests[first])
            .map(|extent| sibling_sums(f, nests, &left[1..], &extent, Some(nests[first].tensor)))
            .filter(|sums| !sums.is_empty());
        if let Some(sums) = led {
            members.extend(sums);
        } else if let Some(extent) = sum_extent(&nests[first]) {
            // Sibling sums over the same extent: later sums that read no member and nothing passed over.
            members.extend(sibling_sums(f, nests, &left, &extent, None).into_iter().skip(1));
        } else if let Some((_, extent)) = nests[first]
            .head
            .first()
            .filter(|_| row_local(f, &nests[first], anywhere) == Some(true))
        {
            for &n in &left[1..] {
                let nest = &nests[n];
                let reads = tensor_reads(f, nest.body);
                let joins = members.len() < MAX_MEMBERS
                    && !reads.iter().any(|(t, _)| passed.contains(t))
                    && row_local(f, nest, anywhere).is_some()
                    && nest.head.first().is_some_and(|(outer, d)| {
                        d == extent
                            && reads
                                .iter()
                                .all(|(t, row)| !members.iter().any(|m| nests[*m].tensor == *t) || *row == Some(*outer))
                    });
                if joins {
                    members.push(n);
                } else {
                    passed.push(nest.tensor);
                }
            }
        }
        if anywhere {
            keep_with_readers(nests, &reads, &mut members);
        }
        left.retain(|n| !members.contains(n));
        groups.push(Group { members });
    }
    groups
}

/// In a streaming plan: takes out of a group (after its first member) each matrix `let` that a nest outside
/// the group reads, and what reads it (in turn): a streamed tensor's copy joins its one reader's group,
/// where it is row-private, not an earlier group its reader cannot join (which would materialize it).
/// `reads`: per nest, the tensors it reads.
fn keep_with_readers(nests: &[Nest], reads: &[Vec<TensorId>], members: &mut Vec<usize>) {
    let mut removed: Vec<TensorId> = Vec::new();
    loop {
        let out = members.iter().skip(1).copied().find(|&m| {
            let nest = &nests[m];
            let read_outside = (0..nests.len()).any(|r| !members.contains(&r) && reads[r].contains(&nest.tensor));
            (nest.role == Role::Let && nest.head.len() >= 2 && read_outside)
                || reads[m].iter().any(|t| removed.contains(t))
        });
        match out {
            Some(m) => {
                members.retain(|x| *x != m);
                removed.push(nests[m].tensor);
            }
            None => break,
        }
    }
}

/// The sums of `candidates` (in order) that join a group of sibling sums over `extent`: a sum joins when
/// it reads no sum that joined before it and nothing passed over, and reads `map` (the group's leading
/// map, if any) only at its summed index.
fn sibling_sums(f: &Function, nests: &[Nest], candidates: &[usize], extent: &Dim, map: Option<TensorId>) -> Vec<usize> {
    let (mut sums, mut passed): (Vec<usize>, Vec<TensorId>) = (Vec::new(), Vec::new());
    for &n in candidates {
        let nest = &nests[n];
        let summed = split_sum(f, nest).map(|(i, _, _)| i);
        let joins = summed.is_some_and(|i| f.index(i).range == *extent)
            && !tensor_reads(f, nest.body).iter().any(|(t, row)| {
                passed.contains(t) || sums.iter().any(|m| nests[*m].tensor == *t) || (Some(*t) == map && *row != summed)
            });
        if joins {
            sums.push(n);
        } else {
            passed.push(nest.tensor);
        }
    }
    sums
}

/// A sum over one index: the index, its mask and the summed term.
pub type IndexSum = (IndexId, Option<NodeId>, NodeId);

/// A group of sibling sums over one index ([`split_sum`]), after at most one leading map over that extent
/// (`map_extent`): the position of the first sum among the members, and each sum's index, mask and term.
pub fn split_members(f: &Function, members: &[&Nest]) -> Option<(usize, Vec<IndexSum>)> {
    let first = match members {
        [map, _, ..] if split_sum(f, map).is_none() && map_extent(f, map).is_some() => 1,
        _ => 0,
    };
    let sums: Vec<_> = members[first..]
        .iter()
        .map(|m| split_sum(f, m))
        .collect::<Option<_>>()?;
    let extent = |i: IndexId| f.index(i).range.clone();
    let same = match first {
        1 => map_extent(f, members[0]) == Some(extent(sums[0].0)),
        _ => true,
    };
    same.then_some((first, sums))
}

/// The extent of a nest that is a float map over one index (no reduction in its element), which may lead a
/// group of sibling sums over that extent ([`fuse_rows`]).
fn map_extent(f: &Function, nest: &Nest) -> Option<Dim> {
    let [(_, extent)] = &nest.head[..] else {
        return None;
    };
    let elementwise = !f
        .reachable(&[nest.body])
        .iter()
        .any(|n| matches!(f.node(*n).expr, Expr::Reduce { .. }));
    (nest.parallel && elementwise && f.node(nest.body).scalar == Scalar::Float).then(|| extent.clone())
}

/// A rank-0 nest that is one sum over one index: (the index, the mask, the term). A code generator may
/// compute it in parallel parts (partial sums over fixed chunks of the index, added in chunk order), and
/// sibling sums over the same extent run as one group, each part of the data serving every sum.
pub fn split_sum(f: &Function, nest: &Nest) -> Option<IndexSum> {
    if !nest.head.is_empty() {
        return None;
    }
    f.single_sum(nest.body)
}

/// How a nest may take part in row fusion: `None` when it cannot (not parallel, or it reads a matrix
/// (rank 2 or more) outside its own row: a contraction would evict the other members' data); else
/// whether it is row-sized (more than one element per outer index, or a reduction), which may start a
/// group. An elementwise vector only joins a group another nest started: alone it streams better (a code
/// generator vectorizes it along its one index), inside a group it is a few operations per row. With
/// `anywhere`, reads outside the row are allowed ([`Plan::streaming`]).
fn row_local(f: &Function, nest: &Nest, anywhere: bool) -> Option<bool> {
    let (outer, _) = nest.head.first().filter(|_| nest.parallel)?;
    let nodes = f.reachable(&[nest.body]);
    let rows_only = anywhere
        || nodes.iter().all(|n| match &f.node(*n).expr {
            Expr::Load { tensor: _, subs } if subs.len() >= 2 => {
                matches!(f.node(subs[0]).expr, Expr::Index(i) if i == *outer)
            }
            _ => true,
        });
    let reduces = nodes.iter().any(|n| matches!(f.node(*n).expr, Expr::Reduce { .. }));
    rows_only.then_some(nest.head.len() >= 2 || reduces)
}

/// The softmax rows ([`KeptExps`]): each logsumexp nest (its body depending on the reduced index) paired
/// with the first nest after it in execution order with two indices and no reduction that reads
/// `exp(B - lse)` along the reduced axis. A masked logsumexp sums only where its mask holds, so its row
/// only has those exponentials: the consumer must read the `exp` only where the mask holds (under
/// `select(mask, …, _)`, as autodiff guards the terms of a masked reduction's adjoint). A consumer's own
/// row holds one logsumexp's row; another in its group gets a scratch row, added to `buffers`. A plain
/// sum `sum[k | m] exp(B)` pairs the same way with a consumer that reads `exp(B)`.
fn kept_exps(f: &Function, nests: &[Nest], groups: &[Group], buffers: &mut Vec<Buffer>) -> Vec<KeptExps> {
    let order: Vec<usize> = groups.iter().flat_map(|g| g.members.iter().copied()).collect();
    let group_of = |n: usize| groups.iter().position(|g| g.members.contains(&n));
    let mut kept: Vec<KeptExps> = Vec::new();
    for (p, &lse) in order.iter().enumerate() {
        let Expr::Reduce {
            op: op @ (ReduceOp::LogSumExp | ReduceOp::Sum),
            indices,
            mask,
            body,
        } = &f.node(nests[lse].body).expr
        else {
            continue;
        };
        // A plain sum of exponentials keeps `exp(B)` for a consumer that reads `exp(B)`.
        let plain = *op == ReduceOp::Sum;
        let body = match (&f.node(*body).expr, plain) {
            (_, false) => body,
            (Expr::Prim { prim: Prim::Exp, args }, true) => &args[0],
            _ => continue,
        };
        let ([k], [(row, _)]) = (&indices[..], &nests[lse].head[..]) else {
            continue;
        };
        // A body constant along the row has one exponential, not a row of them (and the consumer may
        // compute its `exp` once per row, before any position of the row is bound).
        if !f.node(*body).free.contains(k) {
            continue;
        }
        for &consumer in &order[p + 1..] {
            let [(t, td), (j, jd)] = &nests[consumer].head[..] else {
                continue;
            };
            let elementwise = !f
                .reachable(&[nests[consumer].body])
                .iter()
                .any(|n| matches!(f.node(*n).expr, Expr::Reduce { .. }));
            let hosting = kept.iter().any(|e| e.consumer == consumer);
            if *jd != f.index(*k).range
                || *td != nests[lse].head[0].1
                || !elementwise
                || (hosting && group_of(consumer) != group_of(lse))
            {
                continue;
            }
            let map: HashMap<_, _> = [(*row, *t), (*k, *j)].into_iter().collect();
            let reads_softmax = |n: &NodeId| {
                let Expr::Prim { prim: Prim::Exp, args } = &f.node(*n).expr else {
                    return false;
                };
                if plain {
                    return f.same_renamed(*body, args[0], &map);
                }
                let Expr::Prim { prim: Prim::Sub, args } = &f.node(args[0]).expr else {
                    return false;
                };
                let lse_row = matches!(&f.node(args[1]).expr,
                    Expr::Load { tensor: TensorRef::Def(d), subs }
                        if *d == nests[lse].tensor && f.at_indices(subs, &[*t]));
                lse_row && f.same_renamed(*body, args[0], &map)
            };
            if let Some(exp) = f.reachable(&[nests[consumer].body]).into_iter().find(reads_softmax) {
                if mask.is_some_and(|m| !guarded(f, nests[consumer].body, exp, m, &map)) {
                    continue;
                }
                let scratch = hosting.then(|| {
                    let shape = nests[consumer].head.iter().map(|(_, d)| d.clone()).collect();
                    buffers.push(Buffer {
                        name: format!("{}_exps", f.tensor(nests[lse].tensor).name),
                        of: TensorRef::Def(nests[consumer].tensor),
                        scalar: Scalar::Float,
                        shape,
                        half: None,
                    });
                    buffers.len() - 1
                });
                kept.push(KeptExps {
                    lse,
                    consumer,
                    exp,
                    factors: None,
                    scratch,
                    plain,
                });
                break;
            }
        }
    }
    kept
}

/// Whether `target` counts in `root` only where `guard` (renamed by `map`) holds: every path to it passes
/// through the chosen side of a `select` on that condition (or on a conjunction with it, as autodiff's
/// `adj != 0 && mask`).
fn guarded(f: &Function, root: NodeId, target: NodeId, guard: NodeId, map: &HashMap<IndexId, IndexId>) -> bool {
    fn implies(f: &Function, cond: NodeId, guard: NodeId, map: &HashMap<IndexId, IndexId>) -> bool {
        f.same_renamed(guard, cond, map)
            || matches!(&f.node(cond).expr, Expr::Prim { prim: Prim::And, args }
                if args.iter().any(|a| implies(f, *a, guard, map)))
    }
    fn reaches(
        f: &Function,
        n: NodeId,
        target: NodeId,
        guard: NodeId,
        map: &HashMap<IndexId, IndexId>,
        memo: &mut HashMap<NodeId, bool>,
    ) -> bool {
        if n == target {
            return true;
        }
        if let Some(r) = memo.get(&n) {
            return *r;
        }
        let operands = match &f.node(n).expr {
            Expr::Prim {
                prim: Prim::Select,
                args,
            } if implies(f, args[0], guard, map) => [args[0], args[2]].into_iter().collect(),
            e => e.operands(),
        };
        let r = operands.into_iter().any(|a| reaches(f, a, target, guard, map, memo));
        memo.insert(n, r);
        r
    }
    !reaches(f, root, target, guard, map, &mut HashMap::default())
}

/// The nests whose rows only live while their group's loop is at that row: `let` tensors of a row-fused
/// group of several nests that no nest outside the group reads (members read each other only at the
/// current row) and whose row no logsumexp of another group fills with kept exponentials. Row `t` is
/// complete before any member reads it and dead once the loop moves on, so one row per running call
/// holds it: the data never leaves the cache.
fn row_private_nests(f: &Function, nests: &[Nest], groups: &[Group], kept: &[KeptExps]) -> Vec<usize> {
    // Which nests read each tensor.
    let mut readers: HashMap<TensorId, Vec<usize>> = HashMap::default();
    for (n, nest) in nests.iter().enumerate() {
        for (t, _) in tensor_reads(f, nest.body) {
            readers.entry(t).or_default().push(n);
        }
    }
    let mut private = Vec::new();
    for group in groups {
        if group.members.len() < 2 || group.members.iter().any(|m| nests[*m].head.is_empty()) {
            continue;
        }
        for &m in &group.members {
            let read_outside = readers
                .get(&nests[m].tensor)
                .is_some_and(|r| r.iter().any(|n| !group.members.contains(n)));
            let filled_outside = kept.iter().any(|e| e.consumer == m && !group.members.contains(&e.lse));
            if nests[m].role == Role::Let && !read_outside && !filled_outside {
                private.push(m);
            }
        }
    }
    private
}

/// Tensors that can live in the buffer of a later nest, the host, as (guest, host): the host has the
/// guest's shape, is a float tensor of its own (not row-private, no kept exponentials written into its row
/// by anything but the guest's logsumexp, not itself living elsewhere), reads the guest only at its own
/// element (`G[t, k]` for host element `[t, k]`, so each element is read before it is overwritten), and
/// nothing that runs after the host's element reads the guest. A host takes one guest. Either
/// - the guest is row-private and the host a later member of its group, a matrix ([`Plan::host`]'s
///   rows): no member after the host reads the guest; every member between them reads its row as it was;
/// - or the guest is a whole `let` tensor (float, not row-private, no kept exponentials) and the host a
///   nest of a later group that is its last reader: every other reader runs in an earlier group (a member
///   of the host's group might read other rows, which another call of the group may have overwritten).
///   AnyLoss's `a` then lives in the gradient's buffer: one buffer less to write and read back.
fn guests(
    f: &Function,
    nests: &[Nest],
    groups: &[Group],
    kept: &[KeptExps],
    row_private: &[bool],
    buffers: &[Buffer],
) -> Vec<(usize, usize)> {
    let buffer = |n: usize| f.inputs.len() + nests[n].tensor.index();
    let reads = |reader: usize, guest: usize| {
        f.reachable(&[nests[reader].body]).into_iter().filter(move |n| {
            matches!(&f.node(*n).expr, Expr::Load { tensor: TensorRef::Def(t), .. } if *t == nests[guest].tensor)
        })
    };
    let group_of = |n: usize| groups.iter().position(|g| g.members.contains(&n));
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let taken = |pairs: &[(usize, usize)], n: usize| pairs.iter().any(|&(g, h)| g == n || h == n);
    let fits = |pairs: &[(usize, usize)], guest: usize, host: usize| {
        let head: Vec<IndexId> = nests[host].head.iter().map(|(i, _)| *i).collect();
        let at_own_element = |load: NodeId| match &f.node(load).expr {
            Expr::Load { subs, .. } => f.at_indices(subs, &head),
            _ => false,
        };
        buffers[buffer(host)].scalar == Scalar::Float
            && buffers[buffer(host)].shape == buffers[buffer(guest)].shape
            && !row_private[buffer(host)]
            && !kept.iter().any(|e| e.consumer == host)
            && !taken(pairs, host)
            && reads(host, guest).next().is_some()
            && reads(host, guest).all(at_own_element)
    };
    for group in groups {
        for (at, &guest) in group.members.iter().enumerate() {
            if !row_private[buffer(guest)] || buffers[buffer(guest)].scalar != Scalar::Float {
                continue;
            }
            let host = group.members[at + 1..]
                .iter()
                .copied()
                .find(|&host| nests[host].head.len() >= 2 && fits(&pairs, guest, host));
            let Some(host) = host else { continue };
            let after = group.members.iter().skip_while(|m| **m != host).skip(1);
            if after.clone().all(|&m| reads(m, guest).next().is_none()) {
                pairs.push((guest, host));
            }
        }
    }
    // Which nests read each tensor (one walk per nest).
    let mut readers: HashMap<TensorId, Vec<usize>> = HashMap::default();
    for (n, nest) in nests.iter().enumerate() {
        for (t, _) in tensor_reads(f, nest.body) {
            let of_t = readers.entry(t).or_default();
            if of_t.last() != Some(&n) {
                of_t.push(n);
            }
        }
    }
    for guest in 0..nests.len() {
        let whole_let = nests[guest].role == Role::Let
            && !nests[guest].head.is_empty()
            && !row_private[buffer(guest)]
            && buffers[buffer(guest)].scalar == Scalar::Float
            && !kept.iter().any(|e| e.consumer == guest)
            && !taken(&pairs, guest);
        if !whole_let {
            continue;
        }
        let readers = readers.get(&nests[guest].tensor).map_or(&[][..], |r| &r[..]);
        let Some(&host) = readers.iter().max_by_key(|&&n| group_of(n)) else {
            continue;
        };
        let before_host = |n: &usize| *n == host || group_of(*n) < group_of(host);
        if group_of(guest) < group_of(host) && readers.iter().all(before_host) && fits(&pairs, guest, host) {
            pairs.push((guest, host));
        }
    }
    pairs
}

/// Every tensor load under `body`: the tensor and, when its first subscript is a bare index, that index.
fn tensor_reads(f: &Function, body: NodeId) -> Vec<(TensorId, Option<IndexId>)> {
    f.reachable(&[body])
        .into_iter()
        .filter_map(|n| match &f.node(n).expr {
            Expr::Load {
                tensor: TensorRef::Def(t),
                subs,
            } => Some((
                *t,
                subs.first().and_then(|s| match f.node(*s).expr {
                    Expr::Index(i) => Some(i),
                    _ => None,
                }),
            )),
            _ => None,
        })
        .collect()
}

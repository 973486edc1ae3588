//! CUDA C for each group of a [`Plan`]: kernel shapes, expressions, reductions (see the module doc of
//! [`super`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use super::{KernelSpec, PRELUDE, SPLIT_CHUNK, Shape, WARP_ROWS_MAX};
use crate::backend::loops::{Group, Nest, Plan, split_members};
use crate::ir::{Dim, Expr, Function, IndexId, NodeId, ReduceOp, Scalar, TensorRef, Value, table_value};
use crate::prims::Prim;

/// Per buffer: whether it is row-private in a block-rows group, so addressed by its kernel's slot
/// ([`super::Program::slotted`]).
pub(super) fn slotted(f: &Function, plan: &Plan) -> Vec<bool> {
    let mut out = vec![false; plan.buffers.len()];
    for group in &plan.groups {
        let members = plan.members(group);
        let blocks =
            !plan.contractions.iter().any(|c| group.members == [c.nest]) && shape_of(f, &members).0 == Shape::BlockRows;
        for b in plan.private_buffers(f, group) {
            out[b] = blocks;
        }
        // A slotted logsumexp's rounding residuals are written and read at its slot too.
        for m in &group.members {
            let nest = plan.buffer_of(f, TensorRef::Def(plan.nests[*m].tensor));
            if let Some(r) = plan.residual_of(plan.nests[*m].tensor) {
                out[r] = out[nest];
            }
        }
    }
    out
}

/// The whole source and the kernels in launch order.
pub(super) fn source(f: &Function, plan: &Plan, slotted: &[bool]) -> (String, Vec<KernelSpec>) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// lossc: CUDA kernels of loss `{}` (generated; one kernel per group)",
        f.name
    );
    out.push_str(PRELUDE);
    let (tables, definitions) = tables(f);
    out.push_str(&definitions);
    let mut kernels = Vec::new();
    for (k, group) in plan.groups.iter().enumerate() {
        let members = plan.members(group);
        let (shape, extent) = match plan.contractions.iter().find(|c| group.members == [c.nest]) {
            Some(c) => (
                Shape::Tiled,
                Dim::Mul(Box::new(c.rows.clone()), Box::new(c.columns.clone())),
            ),
            None => shape_of(f, &members),
        };
        let name = format!("lossc_g{k}");
        let mut e = Emit::new(f, plan, slotted, &tables);
        e.kernel(&name, group, shape, &extent);
        let sums = split_members(f, &members).map_or(0, |(_, sums)| sums.len());
        // Rows whose extents are constants have one variant: a warp per row where all are short, a
        // block per row where one is long (the host's rule, decided here).
        let constant =
            |short: bool| move |d: &Dim| matches!(d.clone().fold(), Dim::Const(c) if (c <= WARP_ROWS_MAX) == short);
        let only_warps = shape == Shape::BlockRows && e.row_extents.iter().all(constant(true));
        let only_blocks = shape == Shape::BlockRows && e.row_extents.iter().any(constant(false));
        if !only_warps {
            out.push('\n');
            out.push_str(&e.text);
            let short_rows =
                (shape == Shape::BlockRows && !only_blocks).then(|| (kernels.len() + 1, e.row_extents.clone()));
            kernels.push(KernelSpec {
                name: name.clone(),
                shape,
                extent: extent.clone(),
                sums,
                kept_row: e.keep.as_ref().map(|k| k.len.clone()),
                short_rows,
            });
        }
        if shape == Shape::BlockRows && !only_blocks {
            let name = format!("{name}_warps");
            let mut e = Emit::new(f, plan, slotted, &tables);
            e.warp = true;
            e.kernel(&name, group, Shape::WarpRows, &extent);
            out.push('\n');
            out.push_str(&e.text);
            kernels.push(KernelSpec {
                name,
                shape: Shape::WarpRows,
                extent: extent.clone(),
                sums,
                kept_row: None,
                short_rows: None,
            });
        }
        if shape == Shape::Parts {
            let name = format!("{name}_total");
            let mut e = Emit::new(f, plan, slotted, &tables);
            e.kernel(&name, group, Shape::Total, &extent);
            out.push('\n');
            out.push_str(&e.text);
            kernels.push(KernelSpec {
                name,
                shape: Shape::Total,
                extent,
                sums,
                kept_row: None,
                short_rows: None,
            });
        }
    }
    if let Some((text, spec)) = label_check(f, plan) {
        out.push('\n');
        out.push_str(&text);
        kernels.push(spec);
    }
    if f.inputs.iter().any(|i| i.state.is_some()) {
        out.push('\n');
        out.push_str(STATE_KERNELS);
        for name in [STATE_GATHER, STATE_SCATTER] {
            kernels.push(KernelSpec {
                name: name.to_string(),
                shape: Shape::Flat,
                extent: Dim::Const(0),
                sums: 0,
                kept_row: None,
                short_rows: None,
            });
        }
    }
    (out, kernels)
}

/// The kernels that move a stateful loss's rows between its state tables in device memory and the call
/// ([`crate::Kernel::eval_device_stateful`]): `B = [slots, table, rows(, last)]`, `D = [values, values per
/// row]`; value `r` of the call belongs to the row of `slots[r / width]`.
pub(super) const STATE_GATHER: &str = "lossc_state_gather";
pub(super) const STATE_SCATTER: &str = "lossc_state_scatter";
const STATE_KERNELS: &str = r#"// lossc_state_gather / lossc_state_scatter: state rows by sample id (ids checked on the host)
extern "C" __global__ void lossc_state_gather(void* const* B, const long long* D, const double* H, unsigned long long* E) {
    const long long* const slots = (const long long*)B[0];
    const float* const table = (const float*)B[1];
    float* const rows = (float*)B[2];
    const long long w = D[1];
    (void)H; (void)E;
    for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < D[0]; r += (long long)gridDim.x * blockDim.x) rows[r] = table[slots[r / w] * w + r % w];
}
extern "C" __global__ void lossc_state_scatter(void* const* B, const long long* D, const double* H, unsigned long long* E) {
    const long long* const slots = (const long long*)B[0];
    float* const table = (float*)B[1];
    const float* const rows = (const float*)B[2];
    const int* const last = (const int*)B[3];
    const long long w = D[1];
    (void)H; (void)E;
    for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < D[0]; r += (long long)gridDim.x * blockDim.x)
        if (last[r / w]) table[slots[r / w] * w + r % w] = rows[r];
}
"#;

/// Name of the kernel that checks label inputs in device memory ([`super::Program::label_check`]).
pub(super) const LABEL_CHECK: &str = "lossc_labels";

/// The flag a label out of range leaves (with the input's index): above every node's.
pub const LABEL_FLAG: u64 = 1 << 63;

/// A kernel that checks every bounded label input (`0 <= y < bound`), for calls whose inputs are already
/// in device memory (the host checks host inputs before copying them): the first failure found leaves
/// `LABEL_FLAG | input`, the position and the value in the flag.
fn label_check(f: &Function, plan: &Plan) -> Option<(String, KernelSpec)> {
    let labels: Vec<(usize, &Dim)> = f
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(k, i)| i.bound.as_ref().map(|b| (k, b)))
        .collect();
    let (first, _) = labels.first()?;
    // (It reads labels only: no table.)
    let no_tables = HashMap::new();
    let e = Emit::new(f, plan, &[], &no_tables);
    let len = |k: usize| -> Dim {
        f.inputs[k]
            .shape
            .iter()
            .cloned()
            .reduce(|a, b| Dim::Mul(Box::new(a), Box::new(b)))
            .unwrap_or(Dim::Const(1))
    };
    let mut body = String::new();
    for (k, bound) in &labels {
        let _ = writeln!(body, "    {{ // {}", f.inputs[*k].name);
        let _ = writeln!(body, "        const long long* const b = (const long long*)B[{k}];");
        let _ = writeln!(
            body,
            "        const long long n = {}, bound = {};",
            e.dim(&len(*k)),
            e.dim(bound)
        );
        let _ = writeln!(
            body,
            "        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {{"
        );
        let _ = writeln!(body, "            const long long v = b[i];");
        let _ = writeln!(
            body,
            "            if ((unsigned long long)v >= (unsigned long long)bound && {} && atomicCAS(E, 0ULL, {LABEL_FLAG}ULL | {k}ULL) == 0ULL) {{ E[1] = (unsigned long long)i; E[2] = (unsigned long long)v; }}",
            f.inputs[*k]
                .ignore
                .map_or("true".to_string(), |v| format!("v != {v}LL"))
        );
        body.push_str("        }\n    }\n");
    }
    let mut text = format!(
        "// {LABEL_CHECK}: labels in range (calls on device memory)\nextern \"C\" __global__ void {LABEL_CHECK}(void* const* B, const long long* D, const double* H, unsigned long long* E) {{\n"
    );
    for k in e.dims.borrow().iter() {
        let _ = writeln!(text, "    const long long d{k} = D[{k}]; // {}", f.dims[*k].name);
    }
    text.push_str("    (void)H;\n");
    text.push_str(&body);
    text.push_str("}\n");
    let spec = KernelSpec {
        name: LABEL_CHECK.to_string(),
        shape: Shape::Flat,
        extent: len(*first),
        sums: 0,
        kept_row: None,
        short_rows: None,
    };
    Some((text, spec))
}

fn reduces(f: &Function, body: NodeId) -> bool {
    f.reachable(&[body])
        .iter()
        .any(|n| matches!(f.node(*n).expr, Expr::Reduce { .. }))
}

/// The first softmax row of a group whose logsumexp and consumer both run in it ([`Keep`]).
fn kept_row(f: &Function, plan: &Plan, group: &Group) -> Option<Keep> {
    plan.kept_exps.iter().find_map(|e| {
        let (lse, consumer) = (&plan.nests[e.lse], &plan.nests[e.consumer]);
        let Expr::Reduce { indices, .. } = &f.node(lse.body).expr else {
            return None;
        };
        let ([k], [_, (j, len)]) = (&indices[..], &consumer.head[..]) else {
            return None;
        };
        let fits = group.members.contains(&e.lse)
            && group.members.contains(&e.consumer)
            && e.scratch.is_none()
            && e.factors.is_none();
        fits.then(|| Keep {
            lse: lse.body,
            k: *k,
            consumer: e.consumer,
            exp: e.exp,
            j: *j,
            len: len.clone(),
        })
    })
}

/// The launch shape of a group and the extent its grid covers.
fn shape_of(f: &Function, members: &[&Nest]) -> (Shape, Dim) {
    if let Some((_, sums)) = split_members(f, members) {
        return (Shape::Parts, f.index(sums[0].0).range.clone());
    }
    if members[0].head.is_empty() {
        return (Shape::Single, Dim::Const(1));
    }
    if let [only] = members
        && !reduces(f, only.body)
    {
        let total = only
            .head
            .iter()
            .map(|(_, d)| d.clone())
            .reduce(|a, b| Dim::Mul(Box::new(a), Box::new(b)));
        return (Shape::Flat, total.unwrap_or(Dim::Const(1)));
    }
    let rows = members[0].head[0].1.clone();
    if members.iter().all(|m| m.head.len() == 1 && !reduces(f, m.body)) {
        (Shape::ThreadRows, rows)
    } else {
        (Shape::BlockRows, rows)
    }
}

/// The C type a node's value has.
fn c_type(s: Scalar) -> &'static str {
    match s {
        Scalar::Float => "float",
        Scalar::Int => "long long",
        Scalar::Bool => "bool",
    }
}

/// The C type of a buffer's elements (half-precision storage as its 16 bits).
fn buffer_type(b: &crate::backend::loops::Buffer) -> &'static str {
    match b.half {
        Some(_) => "unsigned short",
        None => elem_type(b.scalar),
    }
}

/// The C type of a scalar kind's elements in a buffer.
fn elem_type(s: Scalar) -> &'static str {
    match s {
        Scalar::Float => "float",
        Scalar::Int => "long long",
        Scalar::Bool => "int",
    }
}

fn float_literal(x: f32) -> String {
    if x.is_nan() {
        "LX_NAN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "LX_INF".into() } else { "(-LX_INF)".into() }
    } else if x < 0.0 || (x == 0.0 && x.is_sign_negative()) {
        format!("({x:?}f)")
    } else {
        format!("{x:?}f")
    }
}

fn int_literal(i: i64) -> String {
    match i {
        i64::MIN => "(-9223372036854775807LL - 1)".into(),
        i if i < 0 => format!("({i}LL)"),
        i => format!("{i}LL"),
    }
}

fn index_var(i: IndexId) -> String {
    format!("i{}", i.0)
}

/// A softmax row kept in shared memory ([`crate::backend::loops::KeptExps`] whose logsumexp (or plain
/// sum of exponentials) and consumer run in one block-rows kernel): the logsumexp's second pass writes
/// each `exp(x - max)` to `lx_kept[k]` while summing, and the consumer reads `lx_kept[j] * (1 / sum)` for
/// its `exp` node instead of computing it again. Rows longer than [`KEEP_MAX`] floats (which the shared
/// memory would not hold) and rows whose maximum is not finite compute it.
struct Keep {
    /// The reduction (the logsumexp nest's body) and its index.
    lse: NodeId,
    k: IndexId,
    /// The consumer nest, its `exp` node and its index along the row.
    consumer: usize,
    exp: NodeId,
    j: IndexId,
    len: Dim,
}

/// The longest row kept in shared memory, in floats (32 KB).
pub const KEEP_MAX: i64 = 8192;

struct Emit<'a> {
    f: &'a Function,
    plan: &'a Plan,
    /// [`super::Program::slotted`].
    slotted: &'a [bool],
    text: String,
    /// Dimension symbols and block-reduction scratch arrays the kernel uses (declared at its top).
    dims: std::cell::RefCell<BTreeSet<usize>>,
    scratch: BTreeSet<&'static str>,
    /// The softmax row a block-rows kernel keeps in shared memory, and whether the member being
    /// generated is its consumer.
    keep: Option<Keep>,
    in_consumer: bool,
    /// A warp per row ([`Shape::WarpRows`]) instead of a block.
    warp: bool,
    /// The extents a block-rows kernel spreads over a row's threads ([`KernelSpec::short_rows`]).
    row_extents: Vec<Dim>,
    depth: usize,
    /// Values computed in each open C scope, innermost last.
    frames: Vec<HashMap<NodeId, String>>,
    fresh: usize,
    /// The variable holding each lowered logsumexp's rounding residual ([`crate::backend::loops::Residual`]).
    residuals: HashMap<NodeId, String>,
    /// The `__constant__` array of each table node ([`tables`]).
    tables: &'a HashMap<NodeId, String>,
}

impl<'a> Emit<'a> {
    fn new(f: &'a Function, plan: &'a Plan, slotted: &'a [bool], tables: &'a HashMap<NodeId, String>) -> Emit<'a> {
        Emit {
            f,
            plan,
            slotted,
            text: String::new(),
            dims: Default::default(),
            scratch: BTreeSet::new(),
            keep: None,
            in_consumer: false,
            warp: false,
            row_extents: Vec::new(),
            depth: 0,
            frames: vec![HashMap::new()],
            fresh: 0,
            residuals: HashMap::new(),
            tables,
        }
    }

    fn line(&mut self, s: impl AsRef<str>) {
        for _ in 0..self.depth {
            self.text.push_str("    ");
        }
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    fn open(&mut self, head: impl AsRef<str>) {
        let head = head.as_ref();
        self.line(if head.is_empty() {
            "{".to_string()
        } else {
            format!("{head} {{")
        });
        self.depth += 1;
        self.frames.push(HashMap::new());
    }

    fn close(&mut self) {
        self.frames.pop();
        self.depth -= 1;
        self.line("}");
    }

    fn name(&mut self, prefix: &str) -> String {
        self.fresh += 1;
        format!("{prefix}{}", self.fresh)
    }

    fn lookup(&self, n: NodeId) -> Option<String> {
        self.frames.iter().rev().find_map(|fr| fr.get(&n).cloned())
    }

    fn remember(&mut self, n: NodeId, v: String) {
        self.frames.last_mut().expect("a frame").insert(n, v);
    }

    fn dim(&self, d: &Dim) -> String {
        match d {
            Dim::Const(c) => int_literal(*c),
            Dim::Sym(s) => {
                self.dims.borrow_mut().insert(s.index());
                format!("d{}", s.0)
            }
            Dim::Add(a, b) => format!("({} + {})", self.dim(a), self.dim(b)),
            Dim::Sub(a, b) => format!("({} - {})", self.dim(a), self.dim(b)),
            Dim::Mul(a, b) => format!("({} * {})", self.dim(a), self.dim(b)),
        }
    }

    fn kernel(&mut self, name: &str, group: &Group, shape: Shape, extent: &Dim) {
        let (f, plan) = (self.f, self.plan);
        let members = plan.members(group);
        let names: Vec<&str> = members.iter().map(|m| f.tensor(m.tensor).name.as_str()).collect();
        self.line(format!("// {}: {}", name, names.join(", ")));
        self.open(format!(
            "extern \"C\" __global__ void {name}(void* const* B, const long long* D, const double* H, unsigned long long* E)"
        ));
        // The buffers the group reads or writes.
        let mut used = BTreeSet::new();
        for m in &members {
            used.insert(plan.buffer_of(f, TensorRef::Def(m.tensor)));
            if let Some(r) = plan.residual_of(m.tensor) {
                used.insert(r);
            }
            for n in f.reachable(&[m.body]) {
                if let Expr::Load { tensor, .. } = &f.node(n).expr {
                    used.insert(plan.buffer_of(f, *tensor));
                }
                if let Some(r) = plan.residual_read(n) {
                    used.insert(r);
                }
            }
        }
        let mut head = String::new();
        for b in used {
            let ty = buffer_type(&plan.buffers[b]);
            let _ = writeln!(
                head,
                "    {ty}* const b{b} = ({ty}*)B[{b}]; // {}",
                plan.buffers[b].name
            );
        }
        let signature = std::mem::take(&mut self.text);
        let extent = self.dim(extent);
        match shape {
            Shape::Flat => {
                let nest = members[0];
                self.open(format!(
                    "for (long long lx_e = blockIdx.x * (long long)blockDim.x + threadIdx.x; lx_e < {extent}; lx_e += (long long)gridDim.x * blockDim.x)"
                ));
                self.decode("lx_e", &nest.head);
                self.element(nest, "lx_e");
                self.close();
            }
            Shape::ThreadRows => {
                self.open(format!(
                    "for (long long lx_row = blockIdx.x * (long long)blockDim.x + threadIdx.x; lx_row < {extent}; lx_row += (long long)gridDim.x * blockDim.x)"
                ));
                for nest in &members {
                    self.open("");
                    self.line(format!("const long long {} = lx_row;", index_var(nest.head[0].0)));
                    self.element(nest, "lx_row");
                    self.close();
                }
                self.close();
            }
            Shape::WarpRows => {
                self.line("const int lx_lane = threadIdx.x & 31;");
                self.open(format!(
                    "for (long long lx_base = blockIdx.x * (long long)(blockDim.x >> 5); lx_base < {extent}; lx_base += (long long)gridDim.x * (blockDim.x >> 5))"
                ));
                self.line("const long long lx_row = lx_base + (threadIdx.x >> 5);");
                self.line("const long long lx_slot = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5);");
                self.line("(void)lx_slot;");
                self.line(format!("const bool lx_active = lx_row < {extent};"));
                for nest in &members {
                    self.open("");
                    let outer = nest.head[0].0;
                    self.line(format!("const long long {} = lx_row;", index_var(outer)));
                    self.cooperative(nest.body, &[outer]);
                    let rest = &nest.head[1..];
                    let row = self.row_of(nest);
                    if rest.is_empty() {
                        self.open("if (lx_lane == 0 && lx_active)");
                        self.element(nest, row);
                        self.close();
                    } else {
                        let count = self.extent_of(rest);
                        self.open(format!(
                            "for (long long lx_e = lx_lane; lx_e < (lx_active ? {count} : 0); lx_e += 32)"
                        ));
                        self.decode("lx_e", rest);
                        self.element(nest, &format!("{row} * {count} + lx_e"));
                        self.close();
                    }
                    self.close();
                    self.line("__syncwarp();");
                }
                self.close();
            }
            Shape::BlockRows => {
                self.keep = kept_row(f, plan, group);
                if let Some(keep) = &self.keep {
                    let len = self.dim(&keep.len);
                    self.line("LX_DYNAMIC_SHARED(float, lx_kept);");
                    self.line(format!("const bool lx_keep = {len} <= {KEEP_MAX}LL;"));
                }
                self.line("const long long lx_slot = blockIdx.x;");
                self.line("(void)lx_slot;");
                self.open(format!(
                    "for (long long lx_row = blockIdx.x; lx_row < {extent}; lx_row += gridDim.x)"
                ));
                if self.keep.is_some() {
                    self.line("bool lx_kv = false;");
                    self.line("float lx_inv = 0.0f;");
                }
                for (m, nest) in members.iter().enumerate() {
                    self.open("");
                    self.in_consumer = self.keep.as_ref().is_some_and(|k| k.consumer == group.members[m]);
                    let outer = nest.head[0].0;
                    self.line(format!("const long long {} = lx_row;", index_var(outer)));
                    self.cooperative(nest.body, &[outer]);
                    let rest = &nest.head[1..];
                    let row = self.row_of(nest);
                    if rest.is_empty() {
                        self.open("if (threadIdx.x == 0)");
                        self.element(nest, row);
                        self.close();
                    } else {
                        self.row_extents.extend(
                            rest.iter()
                                .map(|(_, d)| d.clone())
                                .reduce(|a, b| Dim::Mul(Box::new(a), Box::new(b))),
                        );
                        let count = self.extent_of(rest);
                        self.open(format!(
                            "for (long long lx_e = threadIdx.x; lx_e < {count}; lx_e += blockDim.x)"
                        ));
                        self.decode("lx_e", rest);
                        self.element(nest, &format!("{row} * {count} + lx_e"));
                        self.close();
                    }
                    self.close();
                    self.line("__syncthreads();");
                }
                self.close();
            }
            Shape::Parts | Shape::Total => self.split_sums(&members, shape, &extent),
            Shape::Tiled => {
                let c = plan
                    .contractions
                    .iter()
                    .find(|c| group.members == [c.nest])
                    .expect("a product");
                self.tiled(c);
            }
            Shape::Single => {
                for nest in &members {
                    self.open("");
                    if nest.head.is_empty() {
                        self.cooperative(nest.body, &[]);
                        self.open("if (threadIdx.x == 0)");
                        self.element(nest, "0");
                        self.close();
                    } else {
                        let count = self.extent_of(&nest.head);
                        self.open(format!(
                            "for (long long lx_e = threadIdx.x; lx_e < {count}; lx_e += blockDim.x)"
                        ));
                        self.decode("lx_e", &nest.head);
                        self.element(nest, "lx_e");
                        self.close();
                    }
                    self.close();
                    self.line("__syncthreads();");
                }
            }
        }
        self.close();
        // The declarations the body turned out to need, after the signature.
        for k in self.dims.borrow().iter() {
            let _ = writeln!(head, "    const long long d{k} = D[{k}]; // {}", f.dims[*k].name);
        }
        let types = [
            ("lx_sd", "double"),
            ("lx_sf", "float"),
            ("lx_si", "long long"),
            ("lx_sa", "lx_arg"),
            ("lx_sl", "lx_lse"),
        ];
        for (name, ty) in types.iter().filter(|(n, _)| self.scratch.contains(n)) {
            let _ = writeln!(head, "    __shared__ {ty} {name}[33];");
        }
        head.push_str("    (void)E; (void)H; (void)D;\n");
        let body = std::mem::take(&mut self.text);
        self.text = signature + &head + &body;
    }

    /// A matrix product in shared-memory tiles ([`Shape::Tiled`]), or pairwise squared distances in the
    /// same tiles. A masked product (autodiff's `sum[k | a != 0] a * b`) skips the terms its mask excludes,
    /// so a non-finite element of the other operand there contributes nothing, as in the interpreter.
    fn tiled(&mut self, c: &crate::backend::loops::Contraction) {
        let (f, plan) = (self.f, self.plan);
        let (rows, depth, cols) = (self.dim(&c.rows), self.dim(&c.depth), self.dim(&c.columns));
        let out = plan.buffer_of(f, TensorRef::Def(plan.nests[c.nest].tensor));
        let read = |e: &Self, o: &crate::backend::loops::Operand, i: &str, j: &str, inner: &str, outer: &str| {
            // Element (i, j) of the operand's matrix: row-major, or read from its transpose.
            let at = if o.transposed {
                format!("{j} * {outer} + {i}")
            } else {
                format!("{i} * {inner} + {j}")
            };
            let b = o.buffer;
            match plan.buffers[b].half {
                Some(crate::data::DType::BF16) => format!("lx_bf16_f32(b{b}[{at}])"),
                Some(_) => format!("lx_f16_f32(b{b}[{at}])"),
                None => {
                    let _ = e;
                    format!("b{b}[{at}]")
                }
            }
        };
        let same = |a: &crate::backend::loops::Operand, b: &crate::backend::loops::Operand| {
            a.buffer == b.buffer && a.transposed == b.transposed
        };
        // The mask tests the operand that need not be finite.
        let (mask_left, mask_right) = match &c.must_be_finite {
            Some(o) if same(o, &c.right) => (true, false),
            Some(_) => (false, true),
            None => (false, false),
        };
        let left = read(self, &c.left, "lx_p", "lx_k", &depth, &rows);
        let right = read(self, &c.right, "lx_k", "lx_q", &cols, &depth);
        self.line("__shared__ float lx_tl[32][33];");
        self.line("__shared__ float lx_tr[32][33];");
        self.line(format!(
            "const long long lx_tq = ({cols} + 31) / 32, lx_tiles = ({rows} + 31) / 32 * lx_tq;"
        ));
        self.line("const int lx_x = threadIdx.x & 31, lx_y = threadIdx.x >> 5;");
        self.open("for (long long lx_t = blockIdx.x; lx_t < lx_tiles; lx_t += gridDim.x)");
        self.line("const long long lx_p0 = lx_t / lx_tq * 32, lx_q0 = lx_t % lx_tq * 32;");
        self.line("float lx_acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};");
        self.open(format!("for (long long lx_k0 = 0; lx_k0 < {depth}; lx_k0 += 32)"));
        self.open("for (int r = lx_y; r < 32; r += 8)");
        self.line("long long lx_p = lx_p0 + r, lx_k = lx_k0 + lx_x;");
        self.line(format!(
            "lx_tl[r][lx_x] = lx_p < {rows} && lx_k < {depth} ? {left} : 0.0f;"
        ));
        self.line("long long lx_q = lx_q0 + lx_x;");
        self.line("lx_k = lx_k0 + r;");
        self.line(format!(
            "lx_tr[r][lx_x] = lx_k < {depth} && lx_q < {cols} ? {right} : 0.0f;"
        ));
        self.close();
        self.line("__syncthreads();");
        self.open("for (int kk = 0; kk < 32; ++kk)");
        self.line("const float lx_b = lx_tr[kk][lx_x];");
        self.open("for (int i = 0; i < 4; ++i)");
        self.line("const float lx_a = lx_tl[lx_y + 8 * i][kk];");
        let term = match (mask_left, mask_right) {
            (true, _) => "(lx_a != 0.0f ? lx_a * lx_b : 0.0f)",
            (_, true) => "(lx_b != 0.0f ? lx_a * lx_b : 0.0f)",
            _ if c.distance => "(lx_a - lx_b) * (lx_a - lx_b)",
            _ => "lx_a * lx_b",
        };
        self.line(format!("lx_acc[i] += {term};"));
        self.close();
        self.close();
        self.line("__syncthreads();");
        self.close();
        self.open("for (int i = 0; i < 4; ++i)");
        self.line("const long long lx_p = lx_p0 + lx_y + 8 * i, lx_q = lx_q0 + lx_x;");
        let v = self.stored(out, "lx_acc[i]");
        self.line(format!(
            "if (lx_p < {rows} && lx_q < {cols}) b{out}[lx_p * {cols} + lx_q] = {v};"
        ));
        self.close();
        self.close();
    }

    /// A group of sibling sums ([`Shape::Parts`]: the partial sums of each chunk, computing the leading map
    /// as it goes; [`Shape::Total`]: the partials added in chunk order).
    fn split_sums(&mut self, members: &[&Nest], shape: Shape, extent: &str) {
        let (f, plan) = (self.f, self.plan);
        let (first, sums) = split_members(f, members).expect("a group of sums");
        let scratch = plan.buffers.len();
        self.line(format!("double* const lx_part = (double*)B[{scratch}];"));
        self.line(format!(
            "const long long lx_chunks = ({extent} + {SPLIT_CHUNK}LL - 1) / {SPLIT_CHUNK}LL;"
        ));
        if shape == Shape::Total {
            self.open("if (threadIdx.x == 0)");
            for (j, nest) in members[first..].iter().enumerate() {
                let b = plan.buffer_of(f, TensorRef::Def(nest.tensor));
                self.line(format!("double lx_t{j} = 0.0;"));
                self.line(format!(
                    "for (long long c = 0; c < lx_chunks; ++c) lx_t{j} += lx_part[{j} * lx_chunks + c];"
                ));
                let v = self.stored(b, &format!("(float)lx_t{j}"));
                self.line(format!("b{b}[0] = {v};"));
            }
            self.close();
            return;
        }
        self.open("for (long long lx_c = blockIdx.x; lx_c < lx_chunks; lx_c += gridDim.x)");
        for j in 0..sums.len() {
            self.line(format!("double lx_t{j} = 0.0;"));
        }
        self.line(format!(
            "const long long lx_end = (lx_c + 1) * {SPLIT_CHUNK}LL < {extent} ? (lx_c + 1) * {SPLIT_CHUNK}LL : {extent};"
        ));
        self.open(format!(
            "for (long long lx_e = lx_c * {SPLIT_CHUNK}LL + threadIdx.x; lx_e < lx_end; lx_e += blockDim.x)"
        ));
        if first == 1 {
            self.open("");
            self.line(format!("const long long {} = lx_e;", index_var(members[0].head[0].0)));
            self.element(members[0], "lx_e");
            self.close();
        }
        for (j, (k, mask, term)) in sums.iter().enumerate() {
            self.open("");
            self.line(format!("const long long {} = lx_e;", index_var(*k)));
            let mut opened = 0;
            if let Some(m) = mask {
                let c = self.value(*m);
                self.open(format!("if ({c})"));
                opened += 1;
            }
            let v = self.value(*term);
            self.line(format!("lx_t{j} += (double){v};"));
            for _ in 0..opened {
                self.close();
            }
            self.close();
        }
        self.close();
        self.scratch.insert("lx_sd");
        for j in 0..sums.len() {
            self.line(format!(
                "lx_t{j} = lx_block_reduce<double>(lx_t{j}, lx_add_d(), lx_sd);"
            ));
            self.line(format!(
                "if (threadIdx.x == 0) lx_part[{j} * lx_chunks + lx_c] = lx_t{j};"
            ));
        }
        self.close();
    }

    fn extent_of(&self, head: &[(IndexId, Dim)]) -> String {
        let parts: Vec<String> = head.iter().map(|(_, d)| self.dim(d)).collect();
        if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("({})", parts.join(" * "))
        }
    }

    /// Declares the indices of `head` from a row-major position `flat` within it.
    fn decode(&mut self, flat: &str, head: &[(IndexId, Dim)]) {
        if let [(i, _)] = head {
            self.line(format!("const long long {} = {flat};", index_var(*i)));
            return;
        }
        let q = self.name("lx_q");
        self.line(format!("long long {q} = {flat};"));
        for (k, (i, d)) in head.iter().enumerate().rev() {
            if k == 0 {
                self.line(format!("const long long {} = {q};", index_var(*i)));
            } else {
                let d = self.dim(d);
                self.line(format!("const long long {} = {q} % {d}; {q} /= {d};", index_var(*i)));
            }
        }
    }

    /// Where a block-rows member's row lives in its buffer: at the slot for a slotted buffer, else at the row.
    fn row_of(&self, nest: &Nest) -> &'static str {
        match self
            .slotted
            .get(self.plan.buffer_of(self.f, TensorRef::Def(nest.tensor)))
            == Some(&true)
        {
            true => "lx_slot",
            false => "lx_row",
        }
    }

    /// Computes a nest's element and stores it at `flat` of its buffer.
    fn element(&mut self, nest: &Nest, flat: &str) {
        let b = self.plan.buffer_of(self.f, TensorRef::Def(nest.tensor));
        let v = self.value(nest.body);
        let v = self.stored(b, &v);
        self.line(format!("b{b}[{flat}] = {v};"));
        if let Some(r) = self.plan.residual_of(nest.tensor) {
            let lo = self.residuals.get(&nest.body).cloned().unwrap_or_else(|| "0.0f".into());
            self.line(format!("b{r}[{flat}] = {lo};"));
        }
    }

    /// The value to store in buffer `b` for the element value `v`.
    fn stored(&self, b: usize, v: &str) -> String {
        let buf = &self.plan.buffers[b];
        match (buf.half, buf.scalar) {
            (Some(crate::data::DType::BF16), _) => format!("lx_f32_bf16({v})"),
            (Some(_), _) => format!("lx_f32_f16({v})"),
            (None, Scalar::Bool) => format!("(int)({v})"),
            (None, _) => v.to_string(),
        }
    }

    /// Computes, with the whole block, every reduction that `root` reaches unconditionally (not inside a
    /// lazily evaluated side, nor inside another reduction) and whose free indices are all in `bound`.
    fn cooperative(&mut self, root: NodeId, bound: &[IndexId]) {
        let f = self.f;
        let mut found = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            let node = f.node(n);
            match &node.expr {
                Expr::Reduce { .. } => {
                    if node.free.iter().all(|i| bound.contains(i)) {
                        found.push(n);
                    }
                }
                Expr::Prim {
                    prim: Prim::Select,
                    args,
                } if self.lazy(args[1]) || self.lazy(args[2]) => stack.push(args[0]),
                Expr::Prim {
                    prim: Prim::And | Prim::Or,
                    args,
                } if self.lazy(args[1]) => stack.push(args[0]),
                e => stack.extend(e.operands()),
            }
        }
        found.sort_unstable();
        for n in found {
            if self.lookup(n).is_some() {
                continue;
            }
            let Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } = f.node(n).expr.clone()
            else {
                continue;
            };
            let v = self.reduce(n, op, &indices, mask, body, true);
            self.remember(n, v);
        }
    }

    /// Whether evaluating `n` may fail or loop, so that a choice around it must branch.
    fn lazy(&self, n: NodeId) -> bool {
        self.plan.branching[n.index()]
    }

    /// A C expression (a variable or a literal) holding node `n`'s value in the current scope.
    fn value(&mut self, n: NodeId) -> String {
        if let Some(v) = self.lookup(n) {
            return v;
        }
        if let Some(keep) = self.keep.as_ref().filter(|k| k.exp == n && self.in_consumer) {
            // The kept exponential where the row was kept, else computed.
            let (j, var) = (index_var(keep.j), format!("kept{}", n.0));
            self.line(format!("float {var};"));
            self.open("if (lx_kv)");
            self.line(format!("{var} = lx_kept[{j}] * lx_inv;"));
            self.close();
            self.open("else");
            self.in_consumer = false;
            let v = self.value(n);
            self.in_consumer = true;
            self.line(format!("{var} = {v};"));
            self.close();
            self.remember(n, var.clone());
            return var;
        }
        let node = self.f.node(n).clone();
        let v = match &node.expr {
            Expr::Float(bits) => return float_literal(f64::from_bits(*bits) as f32),
            Expr::Int(i) => return int_literal(*i),
            Expr::Bool(b) => return b.to_string(),
            Expr::Index(i) => return index_var(*i),
            Expr::Size(d) => return self.dim(d),
            Expr::Hyper(h) => match node.scalar {
                Scalar::Int => format!("(long long)H[{h}]"),
                _ => format!("(float)H[{h}]"),
            },
            Expr::Load { tensor, subs } => self.load(n, *tensor, subs),
            Expr::Table { at, values } => {
                // The nearest entry: positions beyond the ends read the ends.
                let at = self.value(*at);
                let last = values.len() - 1;
                format!(
                    "{}[lx_mini(lx_maxi((long long)({at}), 0LL), {last}LL)]",
                    self.tables[&n]
                )
            }
            // `x - lse[…]` with the logsumexp's rounding residual.
            Expr::Prim { prim: Prim::Sub, args } if self.plan.residual_read(n).is_some() => {
                let (a, b) = (self.value(args[0]), self.value(args[1]));
                let r = self.plan.residual_read(n).expect("a residual read");
                let Expr::Load { subs, .. } = self.f.node(args[1]).expr.clone() else {
                    unreachable!("a residual read subtracts a load")
                };
                let lo = self.load_from(args[1], r, &subs);
                format!("(({a}) - ({b})) - {lo}")
            }
            Expr::Prim { prim, args } => match self.prim(n, *prim, args, node.scalar) {
                Ok(expr) => expr,
                Err(var) => {
                    self.remember(n, var.clone());
                    return var;
                }
            },
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => {
                let v = self.reduce(n, *op, indices, *mask, *body, false);
                self.remember(n, v.clone());
                return v;
            }
        };
        let var = format!("v{}", n.0);
        self.line(format!("const {} {var} = {v};", c_type(node.scalar)));
        self.remember(n, var.clone());
        var
    }

    fn load(&mut self, n: NodeId, tensor: TensorRef, subs: &[NodeId]) -> String {
        let b = self.plan.buffer_of(self.f, tensor);
        self.load_from(n, b, subs)
    }

    /// Element `subs` of buffer `b` (bounds-checked where not known in range; `n` is the load reported).
    fn load_from(&mut self, n: NodeId, b: usize, subs: &[NodeId]) -> String {
        let shape = self.plan.buffers[b].shape.clone();
        let mut flat = String::new();
        for (axis, (s, d)) in subs.iter().zip(&shape).enumerate() {
            let size = self.dim(d);
            // A slotted buffer is read only by its group's members, at the current row: its slot.
            if axis == 0 && self.slotted.get(b) == Some(&true) {
                flat = "lx_slot".into();
                continue;
            }
            let mut v = self.value(*s);
            if !self.f.in_range(*s, d) {
                v = format!("lx_check({v}, {size}, E, {}ULL, {axis}ULL)", n.0);
            }
            flat = if axis == 0 {
                v
            } else {
                format!("({flat}) * {size} + {v}")
            };
        }
        if flat.is_empty() {
            flat = "0".into();
        }
        match (self.plan.buffers[b].half, self.plan.buffers[b].scalar) {
            (Some(crate::data::DType::BF16), _) => format!("lx_bf16_f32(b{b}[{flat}])"),
            (Some(_), _) => format!("lx_f16_f32(b{b}[{flat}])"),
            (None, Scalar::Bool) => format!("(b{b}[{flat}] != 0)"),
            (None, _) => format!("b{b}[{flat}]"),
        }
    }

    /// A primitive: `Ok(expression)`, or `Err(variable)` when it was computed into a variable by branches.
    fn prim(&mut self, n: NodeId, prim: Prim, args: &[NodeId], scalar: Scalar) -> Result<String, String> {
        use Prim::*;
        let lazy = match prim {
            Select => self.lazy(args[1]) || self.lazy(args[2]),
            And | Or => self.lazy(args[1]),
            _ => false,
        };
        if lazy {
            let var = format!("v{}", n.0);
            let c = self.value(args[0]);
            let (then, other) = match prim {
                Select => (Some(args[1]), Some(args[2])),
                And => (Some(args[1]), None),
                _ => (None, Some(args[1])),
            };
            self.line(format!("{} {var};", c_type(scalar)));
            // `a && b` is false where a is; `a || b` true where a is.
            for (head, side, constant) in [
                (format!("if ({c})"), then, "true"),
                ("else".to_string(), other, "false"),
            ] {
                self.open(head);
                let v = side.map_or_else(|| constant.to_string(), |s| self.value(s));
                self.line(format!("{var} = {v};"));
                self.close();
            }
            return Err(var);
        }
        let a: Vec<String> = args.iter().map(|x| self.value(*x)).collect();
        let int = scalar == Scalar::Int;
        Ok(match prim {
            Add => format!("({} + {})", a[0], a[1]),
            Sub => format!("({} - {})", a[0], a[1]),
            Mul => format!("({} * {})", a[0], a[1]),
            // A scalar divisor: the product with its reciprocal, as the JIT computes it.
            Div if self.f.node(args[1]).free.is_empty() => format!("({} * (1.0f / {}))", a[0], a[1]),
            Div => format!("({} / {})", a[0], a[1]),
            Neg => format!("(-{})", a[0]),
            Min if int => format!("lx_mini({}, {})", a[0], a[1]),
            Max if int => format!("lx_maxi({}, {})", a[0], a[1]),
            Abs if int => format!("lx_absi({})", a[0]),
            Sign if int => format!("lx_signi({})", a[0]),
            Min => format!("lx_min({}, {})", a[0], a[1]),
            Max => format!("lx_max({}, {})", a[0], a[1]),
            Abs => format!("fabsf({})", a[0]),
            Sign => format!("lx_sign({})", a[0]),
            Pow => format!("powf({}, {})", a[0], a[1]),
            Exp => format!("expf({})", a[0]),
            Log => format!("logf({})", a[0]),
            Log1p => format!("log1pf({})", a[0]),
            Expm1 => format!("expm1f({})", a[0]),
            Sqrt => format!("sqrtf({})", a[0]),
            Sigmoid => format!("lx_sigmoid({})", a[0]),
            Softplus => format!("lx_softplus({})", a[0]),
            Tanh => format!("tanhf({})", a[0]),
            Relu => format!("lx_relu({})", a[0]),
            Atan => format!("atanf({})", a[0]),
            Cos => format!("cosf({})", a[0]),
            Sin => format!("sinf({})", a[0]),
            Acos => format!("acosf({})", a[0]),
            Mix => format!("lx_mix({}, {})", a[0], a[1]),
            Draw => format!("lx_draw({}, {}, {}, {}, {}, {})", a[0], a[1], a[2], a[3], a[4], a[5]),
            Rem if int => format!("lx_remi({}, {})", a[0], a[1]),
            Rem => format!("lx_remf({}, {})", a[0], a[1]),
            // Integer operands are their own rounding (sema leaves no such node, an optimizer might).
            Floor | Ceil | Round if self.f.node(args[0]).scalar == Scalar::Int => a[0].clone(),
            Floor => format!("lx_toint(floorf({}))", a[0]),
            Ceil => format!("lx_toint(ceilf({}))", a[0]),
            Round => format!("lx_toint(rintf({}))", a[0]),
            Clamp => format!("lx_clamp({}, {}, {})", a[0], a[1], a[2]),
            Eq => format!("({} == {})", a[0], a[1]),
            Ne => format!("({} != {})", a[0], a[1]),
            Lt => format!("({} < {})", a[0], a[1]),
            Le => format!("({} <= {})", a[0], a[1]),
            Gt => format!("({} > {})", a[0], a[1]),
            Ge => format!("({} >= {})", a[0], a[1]),
            And => format!("({} && {})", a[0], a[1]),
            Or => format!("({} || {})", a[0], a[1]),
            Not => format!("(!{})", a[0]),
            Select => format!("({} ? {} : {})", a[0], a[1], a[2]),
            Iverson => format!("({} ? 1.0f : 0.0f)", a[0]),
            ToFloat => format!("(float){}", a[0]),
            StopGrad => a[0].clone(),
        })
    }

    /// Opens the loops over a reduction's indices (serially, or strided over the block's threads) and
    /// its mask; `body` runs inside; every scope is closed after.
    fn reduce_loops(
        &mut self,
        indices: &[IndexId],
        mask: Option<NodeId>,
        block: bool,
        body: &mut dyn FnMut(&mut Self, &str),
    ) {
        let ranges: Vec<(IndexId, Dim)> = indices.iter().map(|i| (*i, self.f.index(*i).range.clone())).collect();
        let mut opened = 0;
        let position;
        if block {
            let total = self.extent_of(&ranges);
            let p = self.name("lx_p");
            if self.warp {
                self.open(format!(
                    "for (long long {p} = lx_lane; {p} < (lx_active ? {total} : 0); {p} += 32)"
                ));
            } else {
                self.row_extents.extend(
                    ranges
                        .iter()
                        .map(|(_, d)| d.clone())
                        .reduce(|a, b| Dim::Mul(Box::new(a), Box::new(b))),
                );
                self.open(format!(
                    "for (long long {p} = threadIdx.x; {p} < {total}; {p} += blockDim.x)"
                ));
            }
            opened += 1;
            self.decode(&p, &ranges);
            position = p;
        } else {
            let mut pos = String::new();
            for (k, (i, d)) in ranges.iter().enumerate() {
                let (v, d) = (index_var(*i), self.dim(d));
                self.open(format!("for (long long {v} = 0; {v} < {d}; ++{v})"));
                opened += 1;
                pos = if k == 0 { v } else { format!("({pos}) * {d} + {v}") };
            }
            position = pos;
        }
        if let Some(m) = mask {
            let c = self.value(m);
            self.open(format!("if ({c})"));
            opened += 1;
        }
        body(self, &position);
        for _ in 0..opened {
            self.close();
        }
    }

    /// A reduction, serially in this thread or (`block`) by the whole block; returns its variable.
    fn reduce(
        &mut self,
        n: NodeId,
        op: ReduceOp,
        indices: &[IndexId],
        mask: Option<NodeId>,
        body: NodeId,
        block: bool,
    ) -> String {
        let acc = self.name("lx_a");
        let out = self.name("lx_r");
        // The softmax row this group keeps ([`Keep`]): its exponentials go to the shared row as they are summed.
        let keep = self
            .keep
            .as_ref()
            .filter(|k| block && k.lse == n)
            .map(|k| index_var(k.k));
        let combine = |e: &mut Self, acc: &str, ty: &str, op: &str, scratch: &'static str| {
            if block && e.warp {
                e.line(format!("{acc} = lx_warp_reduce<{ty}>({acc}, {op}());"));
            } else if block {
                e.scratch.insert(scratch);
                e.line(format!("{acc} = lx_block_reduce<{ty}>({acc}, {op}(), {scratch});"));
            }
        };
        match op {
            ReduceOp::Sum | ReduceOp::Prod | ReduceOp::Mean => {
                let (init, upd) = if op == ReduceOp::Prod {
                    ("1.0", "*=")
                } else {
                    ("0.0", "+=")
                };
                self.line(format!("double {acc} = {init};"));
                let count = self.name("lx_n");
                if op == ReduceOp::Mean {
                    self.line(format!("long long {count} = 0;"));
                }
                self.reduce_loops(indices, mask, block, &mut |e, _| {
                    let v = e.value(body);
                    if let Some(k) = &keep {
                        e.line(format!("if (lx_keep) lx_kept[{k}] = (float){v};"));
                    }
                    e.line(format!("{acc} {upd} (double){v};"));
                    if op == ReduceOp::Mean {
                        e.line(format!("{count} += 1;"));
                    }
                });
                let fold = if op == ReduceOp::Prod { "lx_mul_d" } else { "lx_add_d" };
                combine(self, &acc, "double", fold, "lx_sd");
                if op == ReduceOp::Mean {
                    combine(self, &count, "long long", "lx_add_i", "lx_si");
                    self.line(format!("const float {out} = (float)({acc} / (double){count});"));
                } else {
                    self.line(format!("const float {out} = (float){acc};"));
                }
                if keep.is_some() {
                    self.line("lx_kv = lx_keep; lx_inv = 1.0f;");
                }
            }
            ReduceOp::Count => {
                self.line(format!("long long {acc} = 0;"));
                self.reduce_loops(indices, mask, block, &mut |e, _| {
                    let v = e.value(body);
                    e.line(format!("{acc} += ({v}) ? 1 : 0;"));
                });
                combine(self, &acc, "long long", "lx_add_i", "lx_si");
                self.line(format!("const long long {out} = {acc};"));
            }
            ReduceOp::Max | ReduceOp::Min => {
                let (init, pick, fold) = match op {
                    ReduceOp::Max => ("(-LX_INF)", "lx_max", "lx_max_f"),
                    _ => ("LX_INF", "lx_min", "lx_min_f"),
                };
                self.line(format!("float {acc} = {init};"));
                self.reduce_loops(indices, mask, block, &mut |e, _| {
                    let v = e.value(body);
                    e.line(format!("{acc} = {pick}({acc}, (float){v});"));
                });
                combine(self, &acc, "float", fold, "lx_sf");
                self.line(format!("const float {out} = {acc};"));
            }
            ReduceOp::LogSumExp if !crate::backend::loops::two_pass_logsumexp(self.f, body) => {
                // Online, as the plan says for a body too costly to evaluate twice (loops::two_pass_logsumexp).
                self.line(format!("lx_lse {acc}; {acc}.m = (-LX_INF); {acc}.s = 0.0;"));
                self.reduce_loops(indices, mask, block, &mut |e, _| {
                    let v = e.value(body);
                    e.line(format!("{acc} = lx_lse_push({acc}, (float){v});"));
                });
                combine(self, &acc, "lx_lse", "lx_lse_f", "lx_sl");
                self.line(format!("const float {out} = lx_lse_value({acc});"));
                let lo = format!("{out}_lo");
                self.line(format!("const float {lo} = lx_lse_residual({acc});"));
                self.residuals.insert(n, lo);
            }
            ReduceOp::LogSumExp => {
                // Two passes: the maximum, then the sum of exp(x - max); a maximum of ±inf or NaN is the result.
                self.line(format!("float {acc} = (-LX_INF);"));
                self.reduce_loops(indices, mask, block, &mut |e, _| {
                    let v = e.value(body);
                    e.line(format!("{acc} = lx_max({acc}, (float){v});"));
                });
                combine(self, &acc, "float", "lx_max_f", "lx_sf");
                self.line(format!("float {out} = {acc};"));
                let lo = format!("{out}_lo");
                self.line(format!("float {lo} = 0.0f;"));
                self.residuals.insert(n, lo.clone());
                self.open(format!("if ({acc} == {acc} && {acc} != LX_INF && {acc} != -LX_INF)"));
                let sum = self.name("lx_s");
                self.line(format!("double {sum} = 0.0;"));
                self.reduce_loops(indices, mask, block, &mut |e, _| {
                    let v = e.value(body);
                    match &keep {
                        Some(k) => {
                            let x = e.name("lx_x");
                            e.line(format!("const float {x} = expf((float){v} - {acc});"));
                            e.line(format!("if (lx_keep) lx_kept[{k}] = {x};"));
                            e.line(format!("{sum} += (double){x};"));
                        }
                        None => e.line(format!("{sum} += (double)expf((float){v} - {acc});")),
                    }
                });
                combine(self, &sum, "double", "lx_add_d", "lx_sd");
                let exact = self.name("lx_r");
                self.line(format!("const double {exact} = (double){acc} + log({sum});"));
                self.line(format!("{out} = (float){exact};"));
                self.line(format!("{lo} = (float)({exact} - (double){out});"));
                if keep.is_some() {
                    self.line(format!("lx_kv = lx_keep; lx_inv = (float)(1.0 / {sum});"));
                }
                self.close();
            }
            ReduceOp::ArgMax | ReduceOp::ArgMin => {
                let (max, fold) = match op {
                    ReduceOp::ArgMax => ("true", "lx_argmax"),
                    _ => ("false", "lx_argmin"),
                };
                self.line(format!("lx_arg {acc}; {acc}.v = 0.0f; {acc}.p = -1;"));
                self.reduce_loops(indices, mask, block, &mut |e, pos| {
                    let v = e.value(body);
                    let c = e.name("lx_c");
                    e.line(format!("lx_arg {c}; {c}.v = (float){v}; {c}.p = {pos};"));
                    e.line(format!("{acc} = lx_arg_pick({acc}, {c}, {max});"));
                });
                combine(self, &acc, "lx_arg", fold, "lx_sa");
                self.line(format!("const long long {out} = {acc}.p;"));
            }
        }
        out
    }
}

/// The constant tables of `f` ([`crate::ir::Expr::Table`]) as `__constant__` arrays: per table node, the
/// name of its array (tables with the same entries share one), and their definitions (after the
/// prelude, before the kernels), each read clamped to its ends. (A balanced tree of conditional
/// expressions at each read, as before, made NVRTC take about twice as long on W6's sorting network.)
fn tables(f: &Function) -> (HashMap<NodeId, String>, String) {
    let mut names = HashMap::new();
    let mut arrays: HashMap<(Scalar, &[u64]), String> = HashMap::new();
    let mut defs = String::new();
    for (k, node) in f.nodes().iter().enumerate() {
        let Expr::Table { values, .. } = &node.expr else {
            continue;
        };
        let next = arrays.len();
        let name = arrays.entry((node.scalar, &values[..])).or_insert_with(|| {
            let name = format!("lx_table{next}");
            let ty = match node.scalar {
                Scalar::Float => "float",
                Scalar::Int => "long long",
                Scalar::Bool => "bool",
            };
            let literals: Vec<String> = (values.iter())
                .map(|v| match table_value(node.scalar, *v) {
                    Value::F(x) => float_literal(x as f32),
                    Value::I(i) => int_literal(i),
                    Value::B(b) => b.to_string(),
                })
                .collect();
            let _ = writeln!(
                defs,
                "__constant__ {ty} {name}[{}] = {{{}}};",
                values.len(),
                literals.join(", ")
            );
            name
        });
        names.insert(NodeId(k as u32), name.clone());
    }
    (names, defs)
}

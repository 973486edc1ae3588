//! Building a kernel: which groups get native code, the Cranelift module, compiling the groups' functions
//! in parallel (a matrix product's only when a call first needs it).

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use cranelift_codegen::ir::{self, AbiParam, Type, types};
use cranelift_codegen::isa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module};

use super::*;
use crate::backend::loops::{Contraction, Nest, Plan, split_members};
use crate::ir::{Dim, Expr, Function, IndexId, NodeId, TensorRef};
use crate::prims::Cost;

/// Which groups' functions a build compiles.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Functions {
    All,
    /// All but the matrix products' ([`Entry::Deferred`]).
    Undeferred,
    /// One group's (a deferred entry's).
    Only(usize),
}

/// How a group's outermost loop is handed out in chunks (fixed per kernel; sized per call by
/// [`Schedule::chunking`]): what the JIT's runs and an ahead-of-time library's driver both follow.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// A group of sums over one index ([`split_members`]): that index's extent, run in parallel parts.
    pub split: Option<Dim>,
    /// Per member: the indices whose extents multiply into the points one row visits (what sizes a chunk).
    pub row_indices: Vec<Vec<IndexId>>,
    /// Whether the group sums columns in tiles (`simd::COLUMN_TILE` columns per chunk at least).
    pub column_sum: bool,
    /// Whether the group runs an elementwise nest in tiles of columns over its chunk's rows, which reuse
    /// each line of a matrix read transposed once per row of a chunk (`TILED_CHUNK_ROWS` rows at least).
    pub tiled_rows: bool,
}

impl Schedule {
    /// The extent of the loop a native group's chunks split and the chunk's length, at these sizes on
    /// `threads` threads.
    pub fn chunking(&self, f: &Function, nest: &Nest, sizes: &[i64], threads: usize) -> (i64, i64) {
        if let Some(extent) = &self.split {
            // A split sum: chunks of its index, each adding into its own partial slot.
            return (extent.eval(sizes).max(0), SPLIT_CHUNK);
        }
        let outer = nest.head.first().map_or(1, |(_, d)| d.eval(sizes).max(0));
        let row = self
            .row_indices
            .iter()
            .map(|member| {
                member
                    .iter()
                    .map(|i| f.index(*i).range.eval(sizes).max(1))
                    .fold(1i64, i64::saturating_mul)
            })
            .max()
            .unwrap_or(1);
        (outer, chunk_rows(outer, row, self.column_sum, self.tiled_rows, threads))
    }
}

/// Rows per chunk of a group of `outer` rows of `row` points each: enough work per call that the call's
/// setup is noise (MIN_CHUNK_ELEMENTS points, so many rows where rows are light: an elementwise vector's
/// rows are single elements; one row where a row is that heavy, so that a few heavy rows, [B, C, H, W]
/// with B = 8, still spread over the threads). A column sum takes a tile's width per thread (each column sums in the same order in any
/// chunk, so its chunks may depend on the threads; whole blocks of columns keep every column but the
/// last few in the lanes). A nest in tiles of columns (`tiled_rows`) takes `TILED_CHUNK_ROWS` (8) rows at
/// least: a line of a matrix it reads transposed serves as many rows as the chunk has (two rows per chunk,
/// at 2,048 columns, made a symmetrised 2,048 × 2,048 matrix three times slower per element than at
/// 1,024). An ahead-of-time library's driver (`lossc_rt_chunk_rows`) computes the same.
pub fn chunk_rows(outer: i64, row: i64, column_sum: bool, tiled_rows: bool, threads: usize) -> i64 {
    let chunk = (MIN_CHUNK_ELEMENTS / row.max(1)).max(1);
    let chunk = if tiled_rows { chunk.max(TILED_CHUNK_ROWS) } else { chunk };
    if !column_sum {
        return chunk;
    }
    let per_thread = (outer as u64).div_ceil(threads.max(1) as u64) as i64;
    let block = simd::COLUMN_BLOCK_COLUMNS as u64;
    let chunk = chunk.max(per_thread.min(simd::COLUMN_TILE)) as u64;
    (chunk.div_ceil(block) * block) as i64
}

/// The numbers [`chunk_rows`] and the split sums use, by name, for a driver written in another language.
pub fn chunk_constants() -> [(&'static str, i64); 5] {
    [
        ("MIN_CHUNK_ELEMENTS", MIN_CHUNK_ELEMENTS),
        ("TILED_CHUNK_ROWS", TILED_CHUNK_ROWS),
        ("COLUMN_TILE", simd::COLUMN_TILE),
        ("COLUMN_BLOCK_COLUMNS", simd::COLUMN_BLOCK_COLUMNS),
        ("SPLIT_CHUNK", SPLIT_CHUNK),
    ]
}

/// The target: this machine's CPU; position-independent code for an object file (`pic`).
pub(super) fn target(pic: bool) -> Result<(isa::OwnedTargetIsa, bool), JitError> {
    let err = |e: &dyn std::fmt::Display| JitError(e.to_string());
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| err(&e))?;
    flags
        .set("is_pic", if pic { "true" } else { "false" })
        .map_err(|e| err(&e))?;
    flags.set("use_colocated_libcalls", "false").map_err(|e| err(&e))?;
    // The IR verifier costs a third of compile time; debug builds (and so the test suite) keep it.
    let verify = if cfg!(debug_assertions) { "true" } else { "false" };
    flags.set("enable_verifier", verify).map_err(|e| err(&e))?;
    let isa = cranelift_native::builder()
        .map_err(|e| err(&e))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| err(&e))?;
    let fma = isa
        .isa_flags()
        .iter()
        .any(|flag| flag.name == "has_fma" && flag.as_bool() == Some(true));
    Ok((isa, fma))
}

/// Every helper the generated code may call: (symbol, parameter types, result type). The JIT binds them
/// to this process's functions; an ahead-of-time library links its own (`aot/runtime.c`).
pub(super) fn helpers(ptr: Type) -> Vec<(&'static str, Vec<Type>, Option<Type>)> {
    let mut helpers: Vec<(&'static str, Vec<Type>, Option<Type>)> = math_symbols()
        .into_iter()
        .map(|(name, _, wide)| {
            let t = if wide { types::F64 } else { types::F32 };
            (name, vec![t], Some(t))
        })
        .collect();
    helpers.push(("lossc_powf", vec![types::F32, types::F32], Some(types::F32)));
    helpers.push((
        "lossc_exp_row",
        vec![ptr, ptr, types::I64, types::F32, ptr, ptr],
        Some(types::F64),
    ));
    helpers.push((
        "lossc_softmax_row",
        vec![ptr, ptr, types::I64, ptr, ptr, ptr],
        Some(types::F64),
    ));
    helpers.push(("lossc_sigmoid_row", vec![ptr, types::I64], None));
    helpers
}

/// The groups of one function lowered and compiled into a module: the machine code of the groups built
/// (their numbers), and the kernel's per-group facts.
pub(super) struct Lowered {
    pub plan: Plan,
    pub built: Vec<usize>,
    pub machine_code: Vec<MachineCode>,
    pub products: Vec<Option<Contraction>>,
    pub schedules: Vec<Schedule>,
}

/// How the functions of a module are named and where their vector constants live.
pub(super) struct Naming<'n> {
    /// Prefixed to each group's symbol (`{prefix}group{k}`) and lane data object.
    pub prefix: &'n str,
    /// The groups' linkage (local to a JIT module; visible to the driver in an object file).
    pub linkage: Linkage,
    /// One pool of vector constants for every group (the JIT's), or, when `None`, a data object per group
    /// (an object file's: `{prefix}lanes{k}`).
    pub host_lanes: Option<&'n mut LanePool>,
}

/// Declares, lowers and compiles `functions` of `f`'s plan into `module` (not yet defined there).
/// `exp_rows`: whether kept softmax rows use the 8-lane row helper (rows.rs).
#[allow(clippy::too_many_arguments)]
pub(super) fn lower_groups<M: Module>(
    module: &mut M,
    isa: &dyn isa::TargetIsa,
    fma: bool,
    f: &Function,
    plan: Plan,
    naming: Naming,
    mut clif_text: Option<&mut String>,
    exp_rows: bool,
    functions: Functions,
) -> Result<Lowered, JitError> {
    let err = |e: &dyn std::fmt::Display| JitError(e.to_string());
    let ptr = module.target_config().pointer_type();
    let mut imports = std::collections::BTreeMap::new();
    // The row helpers only where the code calls them (an object file would otherwise name them).
    let wanted = helpers(ptr)
        .into_iter()
        .filter(|(name, _, _)| exp_rows || !name.ends_with("_row"));
    for (name, params, result) in wanted {
        let mut sig = module.make_signature();
        sig.params.extend(params.into_iter().map(AbiParam::new));
        sig.returns.extend(result.map(AbiParam::new));
        let id = module
            .declare_function(name, Linkage::Import, &sig)
            .map_err(|e| err(&e))?;
        imports.insert(name, id);
    }

    let mut sig = module.make_signature();
    for _ in 0..4 {
        sig.params.push(AbiParam::new(ptr));
    }
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(ptr));
    // Build every group's CLIF here (it needs the module's declarations) while the functions built so far
    // compile to machine code on all cores (each is independent), then hand the bytes to the module.
    let mut fctx = FunctionBuilderContext::new();
    let Naming {
        prefix,
        linkage,
        mut host_lanes,
    } = naming;
    let mut column_sums = vec![false; plan.groups.len()];
    let mut tiled_rows = vec![false; plan.groups.len()];
    let products: Vec<Option<Contraction>> = plan
        .groups
        .iter()
        .map(|g| plan.contractions.iter().find(|c| g.members == [c.nest]).cloned())
        .collect();
    let built: Vec<usize> = (0..plan.groups.len())
        .filter(|&k| match functions {
            Functions::All => true,
            Functions::Undeferred => products[k].is_none(),
            Functions::Only(only) => k == only,
        })
        .collect();
    let mut build_group = |k: usize| -> Result<(FuncId, ir::Function), String> {
        let group = &plan.groups[k];
        let members = plan.members(group);
        let id = module
            .declare_function(&format!("{prefix}group{k}"), linkage, &sig)
            .map_err(|e| e.to_string())?;
        let mut func = ir::Function::with_name_signature(ir::UserFuncName::user(0, id.as_u32()), sig.clone());
        // An object file's constants: a data object of this group's own, defined once it is lowered.
        let mut object_lanes = match host_lanes {
            Some(_) => None,
            None => {
                let data = module
                    .declare_data(&format!("{prefix}lanes{k}"), Linkage::Local, false, false)
                    .map_err(|e| e.to_string())?;
                let symbol = module.declare_data_in_func(data, &mut func);
                Some((
                    data,
                    LanePool::Object {
                        symbol,
                        lanes: Vec::new(),
                    },
                ))
            }
        };
        {
            let lanes = match (&mut host_lanes, &mut object_lanes) {
                (Some(pool), _) => &mut **pool,
                (None, Some((_, pool))) => pool,
                (None, None) => return Err("no pool for the vector constants".into()),
            };
            let mut b = FunctionBuilder::new(&mut func, &mut fctx);
            let mut refs = HashMap::default();
            for (name, fid) in &imports {
                refs.insert(*name, module.declare_func_in_func(*fid, b.func));
            }
            let mut l = Lower::new(f, &plan, &members, &mut b, lanes, refs, fma);
            l.exp_rows = exp_rows;
            l.group(group, &members);
            column_sums[k] = l.column_tiles;
            tiled_rows[k] = l.tiled_rows;
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        if let Some((data, pool)) = object_lanes {
            let mut description = cranelift_module::DataDescription::new();
            description.define(pool.bytes().into_boxed_slice());
            description.set_align(64);
            module.define_data(data, &description).map_err(|e| e.to_string())?;
        }
        if let Some(text) = clif_text.as_deref_mut() {
            let names: Vec<&str> = members.iter().map(|m| f.tensor(m.tensor).name.as_str()).collect();
            text.push_str(&format!(
                "; group {k}: {} {}\n{}\n",
                names.join(", "),
                if members[0].parallel { "(parallel)" } else { "" },
                func.display()
            ));
        }
        Ok((id, func))
    };
    let machine_code = compile_all(isa, &built, &mut build_group).map_err(|e| err(&e))?;
    let schedules = plan
        .groups
        .iter()
        .zip(column_sums.into_iter().zip(tiled_rows))
        .map(|(g, (column_sum, tiled_rows))| {
            let members = plan.members(g);
            Schedule {
                split: split_members(f, &members).map(|(_, sums)| f.index(sums[0].0).range.clone()),
                row_indices: members.iter().map(|m| row_indices(f, m)).collect(),
                column_sum,
                tiled_rows,
            }
        })
        .collect();
    Ok(Lowered {
        plan,
        built,
        machine_code,
        products,
        schedules,
    })
}

/// `exp_rows`: whether kept softmax rows use the 8-lane row helper (rows.rs) where this machine has it.
pub(super) fn build(
    f: &Function,
    plan: Plan,
    clif_text: Option<&mut String>,
    exp_rows: bool,
    functions: Functions,
) -> Result<Compiled, JitError> {
    let err = |e: &dyn std::fmt::Display| JitError(e.to_string());
    let (isa, fma) = target(false)?;
    // The compile threads hold the ISA while the module declares what the CLIF being built refers to.
    let compile_isa = isa.clone();
    let mut jb = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    for (name, ptr, _) in math_symbols() {
        jb.symbol(name, ptr);
    }
    jb.symbol("lossc_powf", lossc_powf as *const u8);
    jb.symbol("lossc_exp_row", rows::lossc_exp_row as *const u8);
    jb.symbol("lossc_softmax_row", rows::lossc_softmax_row as *const u8);
    jb.symbol("lossc_sigmoid_row", rows::lossc_sigmoid_row as *const u8);
    let mut module = JITModule::new(jb);
    let mut lanes = LanePool::default();
    let naming = Naming {
        prefix: "",
        linkage: Linkage::Local,
        host_lanes: Some(&mut lanes),
    };
    let lowered = lower_groups(
        &mut module,
        &*compile_isa,
        fma,
        f,
        plan,
        naming,
        clif_text,
        exp_rows,
        functions,
    )?;
    for code in &lowered.machine_code {
        module
            .define_function_bytes(code.id, code.alignment, &code.bytes, &code.relocs)
            .map_err(|e| err(&format!("{e:?}")))?;
    }
    module.finalize_definitions().map_err(|e| err(&e))?;
    let mut entries: Vec<Entry> = (0..lowered.plan.groups.len())
        .map(|_| Entry::Deferred(std::sync::OnceLock::new()))
        .collect();
    for (k, code) in lowered.built.iter().zip(&lowered.machine_code) {
        let p = module.get_finalized_function(code.id);
        // SAFETY: every nest function was defined with exactly the `NestFn` signature above.
        entries[*k] = Entry::Ready(unsafe { std::mem::transmute::<*const u8, NestFn>(p) });
    }
    Ok(Compiled {
        plan: lowered.plan,
        function: f.clone(),
        entries,
        exp_rows,
        schedules: lowered.schedules,
        products: lowered.products,
        transposed_right: Default::default(),
        _code: Arc::new(CodeHolder {
            module: Some(module),
            _lanes: lanes,
        }),
    })
}

/// The buffers that lowering `members` reads or writes: their own, the inputs and tensors their elements
/// load, and the rows and factors of the kept exponentials they write or read (loops::KeptExps).
pub(super) fn used_buffers(f: &Function, plan: &Plan, members: &[&Nest]) -> Vec<bool> {
    let mut used = vec![false; plan.buffers.len()];
    for nest in members {
        used[plan.buffer_of(f, TensorRef::Def(nest.tensor))] = true;
    }
    for e in &plan.kept_exps {
        let (lse, consumer) = (plan.nests[e.lse].tensor, plan.nests[e.consumer].tensor);
        if members.iter().any(|m| m.tensor == lse || m.tensor == consumer) {
            used[plan.kept_row(f, e)] = true;
            if let Some(factors) = e.factors {
                used[factors] = true;
            }
        }
    }
    for r in members.iter().filter_map(|m| plan.residual_of(m.tensor)) {
        used[r] = true;
    }
    let bodies: Vec<NodeId> = members.iter().map(|m| m.body).collect();
    for n in f.reachable(&bodies) {
        if let Expr::Load { tensor, .. } = &f.node(n).expr {
            used[plan.buffer_of(f, *tensor)] = true;
        }
        if let Some(r) = plan.residual_read(n) {
            used[r] = true;
        }
    }
    used
}

/// Points of a split sum per parallel part.
pub(super) const SPLIT_CHUNK: i64 = 1 << 14;

/// How many vectors one iteration of a [`light`] body's vector loop handles (the rest of the row is left
/// to the scalar tail).
pub(super) const UNROLL: i64 = 2;

/// Whether a body is cheap enough to compute twice for a two-pass arg-max: [`cheap`]'s steps, `relu`,
/// `min`, `max` and `abs`.
pub(super) fn light(f: &Function, body: NodeId) -> bool {
    few_steps(f, body, 16, Cost::Piecewise)
}

/// One function's machine code, ready for [`Module::define_function_bytes`].
pub(super) struct MachineCode {
    pub id: FuncId,
    pub alignment: u64,
    pub bytes: Vec<u8>,
    pub relocs: Vec<cranelift_module::ModuleReloc>,
}

/// Compiles the functions of `groups` on all available cores, in that order. `LOSSC_DUMP_OPT` and
/// `LOSSC_DUMP_ASM` print each one's optimized CLIF and machine code.
pub(super) fn compile_all(
    isa: &dyn isa::TargetIsa,
    groups: &[usize],
    build: &mut dyn FnMut(usize) -> Result<(FuncId, ir::Function), String>,
) -> Result<Vec<MachineCode>, String> {
    let count = groups.len();
    let (dump_opt, dump_asm) = (
        std::env::var_os("LOSSC_DUMP_OPT").is_some(),
        std::env::var_os("LOSSC_DUMP_ASM").is_some(),
    );
    let profile = std::env::var_os("LOSSC_PROFILE").is_some();
    let compile = |k: usize, id: FuncId, func: ir::Function| -> Result<MachineCode, String> {
        let started = std::time::Instant::now();
        let instructions = func.dfg.num_insts();
        let mut ctx = cranelift_codegen::Context::for_function(func);
        ctx.set_disasm(dump_asm);
        ctx.compile(isa, &mut Default::default())
            .map_err(|e| format!("{:?}", e.inner))?;
        if profile {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            eprintln!("compile group{k:<3} {instructions:>6} instructions {ms:>8.3} ms");
        }
        let code = ctx.compiled_code().ok_or("no machine code")?;
        let alignment = (code.buffer.alignment as u64)
            .max(isa.function_alignment().minimum as u64)
            .max(isa.symbol_alignment());
        let bytes = code.code_buffer().to_vec();
        if let Some(dir) = std::env::var_os("LOSSC_DUMP_BIN") {
            // A debugging aid only: a failed write is not the kernel's error.
            let _ = std::fs::write(std::path::Path::new(&dir).join(format!("group{k}.bin")), &bytes);
        }
        let relocs = code
            .buffer
            .relocs()
            .iter()
            .map(|r| cranelift_module::ModuleReloc::from_mach_reloc(r, &ctx.func, id))
            .collect();
        if dump_opt {
            eprintln!("== group{k}\n{}", ctx.func.display());
        }
        if dump_asm && let Some(vcode) = ctx.compiled_code().and_then(|c| c.vcode.as_ref()) {
            eprintln!("== group{k}\n{vcode}");
        }
        Ok(MachineCode {
            id,
            alignment,
            bytes,
            relocs,
        })
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count);
    if threads <= 1 || dump_opt || dump_asm {
        return groups
            .iter()
            .map(|&k| {
                let (id, func) = build(k)?;
                compile(k, id, func)
            })
            .collect();
    }
    // Each thread takes the largest function built so far when it is done with one (a function's compile
    // time is not proportional to its size, and one large function may take as long as all the rest), or
    // waits for the next to be built. The building thread is one of them once it has built them all.
    struct Queue {
        built: Vec<(usize, FuncId, ir::Function)>,
        finished: bool,
    }
    let queue = std::sync::Mutex::new(Queue {
        built: Vec::new(),
        finished: false,
    });
    let ready = std::sync::Condvar::new();
    let lock = || queue.lock().unwrap_or_else(|e| e.into_inner());
    let next = || {
        let mut q = lock();
        loop {
            let largest = (0..q.built.len()).max_by_key(|j| q.built[*j].2.dfg.num_insts());
            if let Some(j) = largest {
                return Some(q.built.swap_remove(j));
            }
            if q.finished {
                return None;
            }
            q = ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    };
    let compile = &compile;
    let mut done: Vec<(usize, Result<MachineCode, String>)> = std::thread::scope(|scope| {
        let work = || {
            std::iter::from_fn(next)
                .map(|(k, id, func)| (k, compile(k, id, func)))
                .collect::<Vec<_>>()
        };
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        // The threads stop waiting once every function is built, or the building stops (even by a panic,
        // which would otherwise leave them waiting and the scope joining them forever).
        struct Finished<'q>(&'q std::sync::Mutex<Queue>, &'q std::sync::Condvar);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.lock().unwrap_or_else(|e| e.into_inner()).finished = true;
                self.1.notify_all();
            }
        }
        let finished = Finished(&queue, &ready);
        let mut all = Vec::new();
        for &k in groups {
            match build(k) {
                Ok((id, func)) => lock().built.push((k, id, func)),
                Err(e) => {
                    all.push((k, Err(e)));
                    break;
                }
            }
            ready.notify_one();
        }
        drop(finished);
        all.extend(work());
        for h in handles {
            match h.join() {
                Ok(part) => all.extend(part),
                Err(_) => all.push((usize::MAX, Err("a compiler thread panicked".to_string()))),
            }
        }
        all
    });
    // Group numbers increase along `groups`.
    done.sort_by_key(|(k, _)| *k);
    done.into_iter().map(|(_, code)| code).collect()
}

/// The indices whose extents multiply into the points one row of a nest visits: its inner head indices
/// and the indices its reductions run over (computed once per kernel; sized per call).
pub(super) fn row_indices(f: &Function, nest: &Nest) -> Vec<IndexId> {
    let mut indices: Vec<IndexId> = nest.head.iter().skip(1).map(|(i, _)| *i).collect();
    for n in f.reachable(&[nest.body]) {
        if let Expr::Reduce { indices: r, .. } = &f.node(n).expr {
            indices.extend(r.iter().copied());
        }
    }
    indices
}

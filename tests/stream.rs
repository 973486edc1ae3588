//! Pairwise tensors streamed a row at a time (lossc::opt::stream): the same results as the interpreter,
//! in memory linear in the inputs; a call over its memory budget streams by itself.
#![cfg(feature = "jit")]

use std::collections::BTreeMap;
use std::sync::Arc;

use lossc::data::Rng;
use lossc::ir::Function;
use lossc::{CallError, Compiler, Kernel, Program, Tensor};

mod common;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn loss(source: &str, name: &str) -> Function {
    let p = Program::from_source("u.lx", source).unwrap_or_else(|d| panic!("{}", d.render()));
    p.loss(Some(name)).unwrap().clone()
}

fn std_loss(path: &str) -> Function {
    loss(&format!("use std::{path}"), path.rsplit("::").next().unwrap())
}

/// W4's NT-Xent (benches/nt_xent.lx).
fn bench_nt_xent() -> Function {
    loss(
        &std::fs::read_to_string(root().join("benches/nt_xent.lx")).unwrap(),
        "nt_xent",
    )
}

/// Sizes with every batch-like dimension larger than the feature dimension `D` (so pairs outgrow rows).
fn sizes(f: &Function, batch: i64) -> Vec<i64> {
    (f.dims.iter())
        .map(|d| match d.name.as_str() {
            "D" => 3,
            "H" => 2,
            _ => batch,
        })
        .collect()
}

/// `f`'s optimized program (the kernel's own) and that program with every tensor over pairs streamed.
fn optimized_and_streamed(f: &Function) -> (Function, Function) {
    let kernel = Kernel::build(f, &Compiler::new()).unwrap();
    let g = kernel.native().unwrap().function().clone();
    let streamed = lossc::opt::stream::rows(&g, &lossc::opt::stream::pairwise_at_any_size(&g)).unwrap();
    (g, streamed)
}

fn assert_agree(what: &str, got: &lossc::Evaluation, want: &lossc::Evaluation) {
    let close = |a: f64, b: f64| (a - b).abs() <= 2e-4 * b.abs().max(1.0);
    assert!(close(got.loss, want.loss), "{what}: {} vs {}", got.loss, want.loss);
    for ((n, a), (_, b)) in got.grads.iter().zip(&want.grads) {
        for (p, q) in a.to_f64().iter().zip(b.to_f64()) {
            assert!(close(*p, q), "{what}: grad {n} {p} vs {q}");
        }
    }
}

/// The pairwise families of issue 27 and W4's NT-Xent.
fn pairwise_families() -> Vec<Function> {
    let mut losses: Vec<Function> = [
        "contrastive::nt_xent",
        "contrastive::sogclr",
        "metric_learning::multi_similarity",
        "metric_learning::triplet_all",
        "divergence::cauchy_schwarz",
    ]
    .into_iter()
    .map(std_loss)
    .collect();
    losses.push(bench_nt_xent());
    losses
}

/// Whether a kernel's calls at these sizes run a streamed program (not its own).
fn streams(kernel: &Kernel, sizes: &[i64]) -> bool {
    let native = kernel.native_for(sizes).unwrap().unwrap();
    !Arc::ptr_eq(&native, &kernel.native_shared().unwrap())
}

#[test]
fn examples_and_benches_streamed_agree_with_the_interpreter() {
    let mut rng = Rng::new(7);
    let mut streamed = Vec::new();
    for path in common::lx_files(&root(), &["examples", "benches", "benches/forms"]) {
        let program = Program::from_file(&path).unwrap_or_else(|d| panic!("{}", d.render()));
        for f in &program.module.functions {
            let what = format!("{} {}", path.display(), f.name);
            let at = sizes(f, 7);
            let x = common::random_inputs(f, &at, &mut rng, common::Nograd::AwayFromZero);
            let kernel = Kernel::build(f, &Compiler::new().stream_pairwise(true)).unwrap();
            let bound = lossc::call::bind(kernel.function(), &x, &BTreeMap::new()).unwrap();
            if streams(&kernel, &bound.sizes) {
                streamed.push(what.clone());
            }
            let got = kernel.eval(&x).unwrap_or_else(|e| panic!("{what}: {e}"));
            let want = lossc::api::eval_grad(f, &x, &BTreeMap::new()).unwrap();
            assert_agree(&what, &got, &want);
        }
    }
    // NT-Xent (bench and forms), multi-similarity (example and forms), CS divergence, at least.
    assert!(streamed.len() >= 6, "streamed: {streamed:?}");
    for name in ["nt_xent", "multi_similarity", "cs_divergence"] {
        assert!(
            streamed.iter().any(|w| w.contains(name)),
            "{name} not streamed: {streamed:?}"
        );
    }
}

/// A streamed dot product read in lanes along the other row (`sum[j] exp(sum[d] a[i, d] * b[j, d])`)
/// sums four rows along `d` at once (the JIT's `vrow_sum`): whole vectors of `d` and the points after
/// them, for batches that leave lanes over as well, agree with the interpreter.
#[test]
fn streamed_dot_products_along_rows_agree_at_every_width() {
    let mut rng = Rng::new(11);
    for f in [bench_nt_xent(), std_loss("divergence::cauchy_schwarz")] {
        let kernel = Kernel::build(&f, &Compiler::new().stream_pairwise(true)).unwrap();
        for width in [1, 4, 6, 8, 13] {
            let at: Vec<i64> = (f.dims.iter())
                .map(|d| if d.name == "D" { width } else { 17 })
                .collect();
            let x = common::random_inputs(&f, &at, &mut rng, common::Nograd::AwayFromZero);
            let what = format!("{} D = {width}", f.name);
            let bound = lossc::call::bind(kernel.function(), &x, &BTreeMap::new()).unwrap();
            assert!(streams(&kernel, &bound.sizes), "{what}: not streamed");
            let got = kernel.eval(&x).unwrap_or_else(|e| panic!("{what}: {e}"));
            let want = lossc::api::eval_grad(&f, &x, &BTreeMap::new()).unwrap();
            assert_agree(&what, &got, &want);
        }
    }
}

/// NT-Xent's streamed program computes each dot product's rows (or columns) once per row group: the
/// forward group's sums and the gradient group's readers share one copy of each (4 + 4, where a copy per
/// reader would be 6 + 8), and a symmetric product's column read is its row.
#[test]
fn readers_in_one_group_share_a_dot_products_rows() {
    let f = bench_nt_xent();
    let (g, streamed) = optimized_and_streamed(&f);
    let g = &g;
    let dots: Vec<&str> = (streamed.tensors.iter())
        .filter(|t| {
            let [p, q] = t.indices[..] else { return false };
            // Over pairs ([B, B]), not a product's rows ([B, D]).
            streamed.index(p).range == streamed.index(q).range
                && matches!(
                    streamed.node(t.body).expr,
                    lossc::ir::Expr::Reduce {
                        op: lossc::ir::ReduceOp::Sum,
                        ..
                    }
                )
        })
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(dots.len(), 8, "dot products computed per row: {dots:?}");
    let mut rng = Rng::new(5);
    let x = common::random_inputs(&f, &sizes(&f, 9), &mut rng, common::Nograd::AwayFromZero);
    let bound = lossc::call::bind(g, &x, &BTreeMap::new()).unwrap();
    let jit = lossc::backend::jit::compile_streaming(&streamed).unwrap();
    let want = lossc::backend::interp::run(g, &bound).unwrap();
    assert_agree("jit", &jit.run(&bound, 2).unwrap(), &want);
}

/// The JIT runs a streamed program's row groups a block of rows at a time (loops::Plan::streaming_tiled):
/// NT-Xent's Gram rows as matrix products per block (8 tiles) and its gradient's products of a row of
/// pairs with a matrix as products of their own between the groups' parts. Over batches of one
/// block, several, and a last partial one, the results are the interpreter's, with the same bits on one
/// thread and on two (Cauchy-Schwarz's distance tiles included).
#[test]
fn pipelines_run_blocks_of_rows_as_the_interpreter() {
    let (_, streamed) = optimized_and_streamed(&bench_nt_xent());
    let plan = lossc::backend::loops::Plan::streaming_tiled(&streamed);
    assert_eq!(plan.tiles.len(), 8, "Gram rows as tiles");
    assert_eq!(plan.pipelines.len(), 2, "{:?}", plan.pipelines);
    let products = (plan.pipelines.iter())
        .flat_map(|(a, b)| *a..=*b)
        .filter(|g| plan.contractions.iter().any(|c| plan.groups[*g].members == [c.nest]))
        .count();
    assert_eq!(products, 4, "the gradient's row products");
    // Multi-similarity's forward group computes logsumexps whose rounding residuals the gradient reads: it
    // runs in blocks as well.
    let (_, streamed) = optimized_and_streamed(&std_loss("metric_learning::multi_similarity"));
    let plan = lossc::backend::loops::Plan::streaming_tiled(&streamed);
    assert!(!plan.residuals.is_empty());
    assert_eq!(plan.pipelines.len(), 2, "{:?}", plan.pipelines);
    // Cauchy-Schwarz's squared distances are tiles too: a product's blocks, each term a squared difference.
    let (_, streamed) = optimized_and_streamed(&std_loss("divergence::cauchy_schwarz"));
    let plan = lossc::backend::loops::Plan::streaming_tiled(&streamed);
    assert!(plan.tiles.iter().any(|t| t.product.distance), "distances as tiles");
    let mut rng = Rng::new(13);
    for f in [
        bench_nt_xent(),
        std_loss("contrastive::sogclr"),
        std_loss("divergence::cauchy_schwarz"),
        std_loss("metric_learning::multi_similarity"),
    ] {
        let (g, streamed) = optimized_and_streamed(&f);
        let g = &g;
        let jit = lossc::backend::jit::compile_streaming(&streamed).unwrap();
        for batch in [5, 29, 300] {
            let at: Vec<i64> = (f.dims.iter()).map(|d| if d.name == "D" { 5 } else { batch }).collect();
            let x = common::random_inputs(&f, &at, &mut rng, common::Nograd::AwayFromZero);
            let bound = lossc::call::bind(g, &x, &BTreeMap::new()).unwrap();
            let what = format!("{} B = {batch}", f.name);
            let want = lossc::backend::interp::run(g, &bound).unwrap();
            let (one, two) = (jit.run(&bound, 1).unwrap(), jit.run(&bound, 2).unwrap());
            assert_agree(&what, &two, &want);
            assert_eq!(one.loss.to_bits(), two.loss.to_bits(), "{what}: threads");
            for ((n, a), (_, b)) in one.grads.iter().zip(&two.grads) {
                assert_eq!(a.to_f64(), b.to_f64(), "{what}: grad {n} on 1 and 2 threads");
            }
        }
    }
}

/// Inlining an ordering's index tensor as well (which `pairwise` never picks) puts reductions over an
/// index inside reductions over the same index; the streamed program renames them, and the JIT's result
/// is the interpreter's (without the renaming it was 26 % off).
#[test]
fn reductions_nested_over_one_index_are_renamed() {
    let f = std_loss("contrastive::amcl_nt_xent");
    let kernel = Kernel::build(&f, &Compiler::new()).unwrap();
    let g = kernel.native().unwrap().function();
    let mut rng = Rng::new(3);
    let at = sizes(&f, 5);
    let x: BTreeMap<String, Tensor> = common::random_inputs(&f, &at, &mut rng, common::Nograd::Normal)
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                Tensor::float(t.shape.clone(), t.to_f64().iter().map(|v| 0.3 * v).collect()),
            )
        })
        .collect();
    let bound = lossc::call::bind(g, &x, &BTreeMap::new()).unwrap();
    let every: Vec<bool> = (g.tensors.iter())
        .map(|t| t.role == lossc::ir::Role::Let && t.indices.len() >= 2)
        .collect();
    assert!(g.tensors.iter().zip(&every).any(|(t, s)| *s && t.name == "chosen"));
    let streamed = lossc::opt::stream::rows(g, &every).unwrap();
    let want = lossc::backend::interp::run(g, &bound).unwrap();
    assert_agree(
        "interp",
        &lossc::backend::interp::run(&streamed, &bound).unwrap(),
        &want,
    );
    let jit = lossc::backend::jit::compile_streaming(&streamed).unwrap();
    assert_agree("jit", &jit.run(&bound, 2).unwrap(), &want);
}

/// The pairwise families: their streamed buffers grow linearly with the batch (the program's own grow
/// as its square), and no buffer but a row-private one holds a pair per element.
#[test]
fn pairwise_losses_stream_in_linear_memory() {
    for f in &pairwise_families() {
        let kernel = Kernel::build(f, &Compiler::new().stream_pairwise(true)).unwrap();
        let own = kernel.native().unwrap();
        // (Sizes where a pipeline's blocks have their full height: below, they hold a 32nd of the rows.)
        let (small, large) = (sizes(f, 2048), sizes(f, 4096));
        let streamed = |at: &[i64]| kernel.native_for(at).unwrap().unwrap();
        let (s, l) = (
            streamed(&small).bytes_needed(&small, 2),
            streamed(&large).bytes_needed(&large, 2),
        );
        let (os, ol) = (own.bytes_needed(&small, 2), own.bytes_needed(&large, 2));
        assert!(ol as f64 >= 3.5 * os as f64, "{}: own {os} -> {ol}", f.name);
        assert!((l as f64) <= 2.1 * s as f64, "{}: streamed {s} -> {l} bytes", f.name);
        assert!(l * 20 < ol, "{}: streamed {l} vs own {ol} bytes", f.name);
        let program = streamed(&large);
        let plan = program.plan();
        // A matrix reader's element reads its copy of a pairwise row; it computes no pair itself (a
        // reduction inside its own, recomputed for each of its columns). Copies are the tensors the
        // kernel's own program does not have.
        let h = program.function();
        let own_names: Vec<&str> = own.function().tensors.iter().map(|t| t.name.as_str()).collect();
        for t in h
            .tensors
            .iter()
            .filter(|t| t.indices.len() >= 2 && own_names.contains(&t.name.as_str()))
        {
            let nested = h.reachable(&[t.body]).into_iter().any(|n| match &h.node(n).expr {
                lossc::ir::Expr::Reduce { body, mask, .. } => h
                    .reachable(&[*body].into_iter().chain(*mask).collect::<Vec<_>>())
                    .into_iter()
                    .any(|m| m != n && matches!(h.node(m).expr, lossc::ir::Expr::Reduce { .. })),
                _ => false,
            });
            assert!(!nested, "{}: {} recomputes pairs in its sums", f.name, t.name);
        }
        let pairs = 4096u64 * 4096;
        for (k, b) in plan.buffers.iter().enumerate() {
            let elements = lossc::ir::Dim::elements(&b.shape, &large);
            assert!(
                elements < pairs
                    || plan.row_private[k]
                    || plan.tiled[k]
                    || plan.host[k].is_some()
                    || k < f.inputs.len(),
                "{}: buffer {} holds {elements} elements",
                f.name,
                b.name
            );
        }
    }
}

/// Issue 27's sizes: at B = 65,536 and D = 128 each pairwise family's call runs its streamed program, in
/// under a gigabyte of buffers, also where the budget would hold the whole program's but one of its tensors
/// has more than `MAX_ELEMENTS` elements (all-triplets' [B, B, B] at any budget; NT-Xent's [B, B] just past
/// 65,536): the element limit is the running program's, whose pairwise tensors are blocks of rows.
#[test]
fn pairwise_losses_at_65536_fit_in_a_gigabyte() {
    let giga = 1u64 << 30;
    for f in &pairwise_families() {
        // (Calls on two threads, each worker a block of rows, and a 16 GiB budget, whatever this machine
        // has; then no budget at all.)
        for (batch, budget) in [(65_536, 16 << 30), (65_600, u64::MAX)] {
            let at: Vec<i64> = (f.dims.iter())
                .map(|d| if d.name == "D" { 128 } else { batch })
                .collect();
            let compiler = Compiler::new().threads(2).memory_budget(budget);
            let kernel = Kernel::build(f, &compiler).unwrap();
            assert!(streams(&kernel, &at), "{} at B = {batch}", f.name);
            let native = kernel.native_for(&at).unwrap().unwrap();
            assert!(native.check_elements(&at).is_ok(), "{} at B = {batch}", f.name);
            let need = kernel.bytes_needed(&at, false);
            assert!(need < giga, "{} at B = {batch}: {need} bytes", f.name);
            if budget == u64::MAX {
                let own = kernel.native().unwrap();
                assert!(own.check_elements(&at).is_err(), "{} at B = {batch}", f.name);
            }
        }
    }
}

/// A call whose buffers would not fit in the memory budget runs the streamed program (the same results);
/// one whose streamed buffers do not fit either fails with the streamed program's need.
#[test]
fn a_call_over_its_memory_budget_streams() {
    let f = bench_nt_xent();
    let at = [256, 16];
    let x = common::random_inputs(&f, &at, &mut Rng::new(5), common::Nograd::Normal);
    let whole = Kernel::build(&f, &Compiler::new()).unwrap();
    let own = whole.bytes_needed(&at, false);
    let want = whole.eval(&x).unwrap();
    let tight = Kernel::build(&f, &Compiler::new().memory_budget(own / 4)).unwrap();
    let need = tight.bytes_needed(&at, false);
    // (Its blocks of rows, 8 per running call at this size, are most of it.)
    assert!(need < own / 6, "streamed {need} vs {own} bytes");
    assert!(streams(&tight, &at));
    assert_agree("over budget", &tight.eval(&x).unwrap(), &want);
    let tighter = Kernel::build(&f, &Compiler::new().memory_budget(need / 2)).unwrap();
    match tighter.eval(&x) {
        Err(CallError::OverBudget { needed, budget }) => assert!(needed >= need && budget == need / 2),
        other => panic!("expected OverBudget, got {:?}", other.map(|e| e.loss)),
    }
}

/// The zero-copy workspace (what the Python package and the C API call) streams as `Kernel::eval` does: a
/// call over the budget runs the streamed program in its buffers, its gradients those of the whole.
#[test]
fn a_workspace_call_over_its_memory_budget_streams() {
    let f = bench_nt_xent();
    let at = [256, 16];
    let x = common::random_inputs(&f, &at, &mut Rng::new(6), common::Nograd::Normal);
    let whole = Kernel::build(&f, &Compiler::new()).unwrap();
    let want = whole.eval(&x).unwrap();
    let tight = Kernel::build(&f, &Compiler::new().memory_budget(whole.bytes_needed(&at, false) / 4)).unwrap();
    let data: BTreeMap<&str, Vec<f32>> = (x.iter())
        .map(|(n, t)| (n.as_str(), t.to_f64().iter().map(|v| *v as f32).collect()))
        .collect();
    let shape = [256usize, 16];
    let inputs: Vec<lossc::Input> = data.iter().map(|(n, v)| lossc::Input::f32(n, &shape, v)).collect();
    let mut workspace = tight.workspace();
    let mut grad_a = vec![0f32; 256 * 16];
    for _ in 0..2 {
        let loss = workspace
            .call(&inputs, &BTreeMap::new(), &mut [("a", &mut grad_a)])
            .unwrap();
        let held = workspace.bytes_held();
        assert!(
            held > 0 && held * 6 < whole.bytes_needed(&at, false),
            "{held} bytes held"
        );
        assert!((loss as f64 - want.loss).abs() <= 2e-4 * want.loss.abs().max(1.0));
        let (a, b) = (&want.grads[0].1.to_f64(), &want.grads[1].1.to_f64());
        for (g, w) in grad_a
            .iter()
            .zip(a)
            .chain(workspace.gradient("b").unwrap().iter().zip(b))
        {
            assert!((*g as f64 - w).abs() <= 2e-4 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
}

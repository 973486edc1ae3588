//! The optimizer: each rewrite rule fires where it should and keeps values; every pass keeps the IR valid
//! and the results equal; bracket fusion changes the complexity of the cross-entropy gradient; the
//! stabilising rewrites make naive programs finite at large logits.

use std::collections::BTreeMap;
use std::path::Path;

use lossc::data::Rng;
use lossc::ir::Function;
use lossc::{Program, Tensor};

fn compile(src: &str) -> Function {
    let p = Program::from_source("t.lx", src).unwrap_or_else(|d| panic!("{}", d.render()));
    p.loss(None).unwrap().clone()
}

fn inputs_for(f: &Function, rng: &mut Rng, scale: f64) -> BTreeMap<String, Tensor> {
    let dims: Vec<i64> = f.dims.iter().map(|_| 4).collect();
    f.inputs
        .iter()
        .filter(|i| i.given())
        .map(|i| {
            let shape: Vec<usize> = i.shape.iter().map(|d| d.eval(&dims) as usize).collect();
            let n = shape.iter().product();
            let t = match &i.bound {
                _ if i.elem == lossc::ir::ElemTy::Idx => {
                    let b = i.bound.as_ref().map_or(3, |b| b.eval(&dims));
                    Tensor::labels(shape, (0..n).map(|_| rng.below(b as u64) as i64).collect())
                }
                _ => Tensor::float(shape, (0..n).map(|_| scale * rng.normal()).collect()),
            };
            (i.name.clone(), t)
        })
        .collect()
}

fn loss(f: &Function, inputs: &BTreeMap<String, Tensor>) -> f64 {
    lossc::api::eval(f, inputs, &BTreeMap::new()).unwrap().loss
}

/// Simplifies the primal program, checks validity and equal value, and returns the readable print.
fn rule(src: &str) -> String {
    let f = compile(src);
    let o = lossc::opt::simplify_only(&f).unwrap();
    lossc::ir::verify::verify(&o).unwrap();
    let mut rng = Rng::new(9);
    let inputs = inputs_for(&f, &mut rng, 0.7);
    let (a, b) = (loss(&f, &inputs), loss(&o, &inputs));
    assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "{src}: {a} vs {b}");
    lossc::ir::print::readable(&o)
}

fn body(printed: &str) -> String {
    printed
        .lines()
        .filter(|l| l.trim_start().starts_with("loss ="))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn constant_folding() {
    // 2 * 3 + 1 = 7
    assert!(body(&rule("loss f(x: f32[N]) { mean[i] x[i] * (2 * 3 + 1) }")).contains("x[i] * 7"));
}

#[test]
fn additive_and_multiplicative_identities() {
    // x + 0 = x, 0 + x = x, x - 0 = x, x * 1 = x, 1 * x = x, x / 1 = x
    let b = body(&rule(
        "loss f(x: f32[N]) { sum[i] (0.0 + x[i] * 1.0 - 0.0) / 1.0 * (1.0 * x[i] + 0.0) }",
    ));
    assert_eq!(b.trim(), "loss = sum[i: N] x[i] * x[i]");
    // x + x = 2 * x
    let b = body(&rule("loss f(x: f32[N]) { sum[i] exp(x[i]) + exp(x[i]) }"));
    assert_eq!(b.trim(), "loss = 2.0 * (sum[i: N] exp(x[i]))");
    // x ^ 0.5 = sqrt(x) (a norm written as a power)
    let b = body(&rule("loss f(x: f32[N]) { sum[i] (x[i] * x[i]) ^ 0.5 }"));
    assert_eq!(b.trim(), "loss = sum[i: N] sqrt(x[i] * x[i])");
}

#[test]
fn guards_on_a_value_by_itself_are_dropped() {
    // sum[k | x != 0] x = sum[k] x;  select(x != 0, x, 0) = x (the guards autodiff puts on adjoints).
    let b = body(&rule("loss f(x: f32[N, C]) { sum[i] sum[k | x[i, k] != 0.0] x[i, k] }"));
    assert_eq!(b.trim(), "loss = sum[i: N] sum[k: C] x[i, k]");
    let b = body(&rule(
        "loss f(x: f32[N]) { sum[i] select(0.0 != x[i], x[i], 0.0) * x[i] }",
    ));
    assert_eq!(b.trim(), "loss = sum[i: N] x[i] * x[i]");
    // select(x != 0 || z != 0, x + z, 0) = x + z (two guarded adjoints added), either order; not for
    // another sum.
    let b = body(&rule(
        "loss f(x: f32[N], z: f32[N]) { sum[i] select(0.0 != x[i] || z[i] != 0.0, z[i] + x[i], 0.0) * x[i] }",
    ));
    assert_eq!(b.trim(), "loss = sum[i: N] x[i] * (x[i] + z[i])");
    let b = body(&rule(
        "loss f(x: f32[N], z: f32[N]) { sum[i] select(0.0 != x[i] || z[i] != 0.0, z[i] + z[i], 0.0) }",
    ));
    assert!(b.contains("select("), "{b}");
    // Not when the guarded value is another one, or the mask another test.
    let b = body(&rule("loss f(x: f32[N], w: f32[N]) { sum[i | w[i] != 0.0] x[i] }"));
    assert!(b.contains("| w[i] != 0.0"), "{b}");
    let b = body(&rule("loss f(x: f32[N]) { sum[i | x[i] > 0.0] x[i] }"));
    assert!(b.contains("| x[i] > 0.0"), "{b}");
}

#[test]
fn negation_rules() {
    // x * -1 = -x, -(-x) = x, x + (-y) = x - y, x - (-y) = x + y, 0 - x = -x
    assert!(body(&rule("loss f(x: f32[N]) { mean[i] x[i] * -1.0 }")).contains("-x[i]"));
    assert!(body(&rule("loss f(x: f32[N]) { sum[i] -(-x[i]) }")).contains("sum[i: N] x[i]"));
    assert!(body(&rule("loss f(x: f32[N], z: f32[N]) { mean[i] x[i] + -z[i] }")).contains("x[i] - z[i]"));
    assert!(body(&rule("loss f(x: f32[N], z: f32[N]) { mean[i] x[i] - -z[i] }")).contains("x[i] + z[i]"));
    assert!(body(&rule("loss f(x: f32[N]) { mean[i] 0.0 - x[i] }")).contains("-x[i]"));
    // -(s * x) = (-s) * x for a factor with fewer indices (computed once outside x's loop), either side;
    // not between factors over the same indices.
    let b = body(&rule(
        "loss f(x: f32[N], w: f32[N, C], s: f32) { sum[i, k] exp(-(s * w[i, k]) + -(x[i] * w[i, k])) }",
    ));
    assert!(b.contains("w[i, k] * -s"), "{b}");
    assert!(b.contains("w[i, k] * -x[i]"), "{b}");
    let b = body(&rule("loss f(x: f32[N], z: f32[N]) { sum[i] exp(-(x[i] * z[i])) }"));
    assert!(b.contains("-(x[i] * z[i])"), "{b}");
}

#[test]
fn powers_logs_and_choices() {
    // x ^ 1 = x, x ^ 2 = x * x, log(exp(x)) = x
    assert!(body(&rule("loss f(x: f32[N]) { sum[i] x[i] ^ 1.0 + x[i] ^ 2.0 }")).contains("x[i] + x[i] * x[i]"));
    assert!(body(&rule("loss f(x: f32[N]) { sum[i] log(exp(x[i])) }")).contains("sum[i: N] x[i]"));
    // select(c, a, a) = a;  select(true, a, b) = a (and sum[i] (x + 1) = N + sum[i] x)
    assert_eq!(
        body(&rule(
            "loss f(x: f32[N]) { sum[i] select(x[i] > 0, x[i], x[i]) + select(1 > 0, 1.0, x[i]) }"
        ))
        .trim(),
        "loss = N + (sum[i: N] x[i])"
    );
    // [a] * [b] = [a && b]
    assert!(body(&rule("loss f(x: f32[N]) { sum[i] [x[i] > 0] * [x[i] < 1] }")).contains("[x[i] > 0.0 && x[i] < 1.0]"));
    // !!c = c;  true && c = c;  false || c = c
    assert!(body(&rule("loss f(x: f32[N]) { sum[i] [!!(x[i] > 0) && true || false] }")).contains("[x[i] > 0.0]"));
    // stopgrad(stopgrad(x)) = stopgrad(x)
    assert!(body(&rule("loss f(x: f32[N]) { sum[i] stopgrad(stopgrad(x[i])) }")).contains("sum[i: N] stopgrad(x[i])"));
}

#[test]
fn counting_and_invariant_sums() {
    // count[k] true = |k|;  sum[k] c = c * |k|
    let b = body(&rule(
        "loss f(x: f32[N, C]) { sum[i] x[i, 0] * (count[k: C] true) + sum[k: C] x[i, 0] }",
    ));
    assert_eq!(b.trim(), "loss = 2.0 * (C * (sum[i: N] x[i, 0]))");
}

#[test]
fn bracket_fusion() {
    // sum[k] [k == y[i]] * e[i, k] = e[i, y[i]]
    let b = body(&rule(
        "loss f(s: f32[N, C], y: idx[N] < C) { mean[i] sum[k] [k == y[i]] * s[i, k] }",
    ));
    assert_eq!(b.trim(), "loss = mean[i: N] s[i, y[i]]");
    let b = body(&rule(
        "loss f(s: f32[N, C], y: idx[N] < C) { mean[i] sum[k | y[i] == k] exp(s[i, k]) }",
    ));
    assert_eq!(b.trim(), "loss = mean[i: N] exp(s[i, y[i]])");
    // Not fused when the value might lie outside the index's range.
    let b = body(&rule(
        "loss f(s: f32[N, C], y: idx[N]) { mean[i] sum[k] [k == y[i]] * s[i, k] }",
    ));
    assert!(b.contains("sum[k: C]"), "{b}");
}

#[test]
fn sums_over_the_preimage_of_a_permutation_table() {
    // T = [1, 0, 3, 2] permutes 0..4: sum[w | T(w) == h] g[w] = g[T⁻¹(h)] (the adjoint of a partner gather).
    let b = body(&rule(
        "loss f(g: f32[4], x: f32[4]) { sum[h] x[h] * (sum[w: 4 | (if w < 2 then 1 - w else 5 - w) == h] g[w]) }",
    ));
    assert_eq!(b.matches("sum[").count(), 1, "{b}");
    // A table that is not a permutation stays a reduction (and keeps its value: `rule` checks).
    let b = body(&rule(
        "loss f(g: f32[4], x: f32[4]) { sum[h] x[h] * (sum[w: 4 | (if w < 2 then 0 else 1) == h] g[w]) }",
    ));
    assert_eq!(b.matches("sum[").count(), 2, "{b}");
}

#[test]
fn stabilising_rewrites() {
    // log(sum[k] exp(e)) = logsumexp[k] e
    assert!(rule("loss f(s: f32[N, C]) { sum[i] log(sum[k] exp(s[i, k])) }").contains("logsumexp[k: C] s[i, k]"));
    // log(mean[k] exp(e)) = logsumexp[k] e - log(|k|)
    assert!(rule("loss f(s: f32[N, C]) { sum[i] log(mean[k] exp(s[i, k])) }").contains("logsumexp[k: C] s[i, k]"));
    // log(1 + exp(x)) = softplus(x), log1p(exp(x)) = softplus(x)
    assert!(
        body(&rule(
            "loss f(x: f32[N]) { sum[i] log(1 + exp(x[i])) + log1p(exp(x[i])) }"
        ))
        .contains("2.0 * (sum[i: N] softplus(x[i]))")
    );
    // log(1 + sum[k] exp(e)) = softplus(logsumexp[k] e)
    assert!(
        rule("loss f(s: f32[N, C]) { sum[i] log(1 + sum[k | s[i, k] > 0] exp(s[i, k])) }")
            .contains("softplus(logsumexp[k: C | s[i, k] > 0.0] s[i, k])")
    );
    // log(sigmoid(x)) = -softplus(-x)
    assert!(body(&rule("loss f(x: f32[N]) { mean[i] log(sigmoid(x[i])) }")).contains("-softplus(-x[i])"));
    // exp(a) / sum[k] exp(b) = exp(a - logsumexp[k] b)
    let p = rule("loss f(s: f32[N, C], y: idx[N] < C) { mean[i] -log(exp(s[i, y[i]]) / sum[k] exp(s[i, k])) }");
    assert!(p.contains("logsumexp[k: C] s[") && !p.contains("sum[k: C] exp"), "{p}");
}

#[test]
fn naive_programs_are_finite_at_large_logits() {
    let naive = [
        "loss f(s: f32[N, C], y: idx[N] < C) { mean[i] log(sum[k] exp(s[i, k])) - s[i, y[i]] }",
        "loss f(s: f32[N, C], y: idx[N] < C) { mean[i] -log(exp(s[i, y[i]]) / sum[k] exp(s[i, k])) }",
        "loss f(x: f32[N]) { mean[i] log(1 + exp(x[i])) - log(sigmoid(x[i])) }",
    ];
    let mut rng = Rng::new(11);
    for src in naive {
        let f = compile(src);
        let inputs = inputs_for(&f, &mut rng, 1e4);
        let g = lossc::api::eval_grad(&f, &inputs, &BTreeMap::new()).unwrap();
        assert!(g.loss.is_finite(), "{src}: loss {}", g.loss);
        for (n, t) in &g.grads {
            assert!(t.to_f64().iter().all(|x| x.is_finite()), "{src}: grad {n} not finite");
        }
    }
}

#[test]
fn cross_entropy_gradient_is_linear_work() {
    let f = compile("loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }");
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::opt::optimize(&raw).unwrap();
    let (n, c) = (64.0, 200.0);
    let sizes = [64, 200];
    let before = lossc::ir::cost::work(&raw, &sizes);
    let after = lossc::ir::cost::work(&opt, &sizes);
    // Unoptimized, the gradient recomputes the row's logsumexp for every element: N*C*C.
    assert!(before > n * c * c, "raw work {before}");
    // Optimized: a constant number of passes over N*C.
    assert!(
        after < 40.0 * n * c,
        "optimized work {after} ({} per element)",
        after / (n * c)
    );
    // And no reduction over C remains inside the N*C gradient tensor.
    let printed = lossc::ir::print::readable(&opt);
    let grad_line = printed.lines().find(|l| l.trim_start().starts_with("grad_s")).unwrap();
    assert!(
        !grad_line.contains("sum[") && !grad_line.contains("logsumexp["),
        "{grad_line}"
    );
}

fn lx_files() -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for dir in ["examples", "tests/in"] {
        for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "lx") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn every_pass_keeps_the_ir_valid_and_the_results_equal() {
    let mut rng = Rng::new(12);
    for path in lx_files() {
        let p = Program::from_file(&path).unwrap();
        for f in &p.module.functions {
            let raw = lossc::autodiff::grad(f).unwrap();
            lossc::ir::verify::verify(&raw).unwrap();
            let simple = lossc::opt::simplify::rebuild(&raw).unwrap();
            lossc::ir::verify::verify(&simple).unwrap_or_else(|e| panic!("{}: simplify: {e}", path.display()));
            let hoisted = lossc::opt::hoist::materialize(&simple).unwrap();
            lossc::ir::verify::verify(&hoisted).unwrap_or_else(|e| panic!("{}: hoist: {e}", path.display()));
            let ordered = lossc::opt::transpose::contiguous_reads(&hoisted).unwrap();
            lossc::ir::verify::verify(&ordered).unwrap_or_else(|e| panic!("{}: transpose: {e}", path.display()));
            let opt = lossc::opt::optimize(&raw).unwrap();
            lossc::ir::verify::verify(&opt).unwrap();
            let inputs = inputs_for(f, &mut rng, 1.0);
            let a = lossc::api::eval(&raw, &inputs, &BTreeMap::new()).unwrap();
            for other in [&simple, &hoisted, &ordered, &opt] {
                let b = lossc::api::eval(other, &inputs, &BTreeMap::new()).unwrap();
                let close = |x: f64, y: f64| (x - y).abs() <= 1e-10 * x.abs().max(1.0) || (x.is_nan() && y.is_nan());
                assert!(
                    close(a.loss, b.loss),
                    "{}: loss {} vs {}",
                    path.display(),
                    a.loss,
                    b.loss
                );
                for ((n, ga), (_, gb)) in a.grads.iter().zip(&b.grads) {
                    for (x, y) in ga.to_f64().iter().zip(gb.to_f64()) {
                        assert!(close(*x, y), "{}: grad {n}: {x} vs {y}", path.display());
                    }
                }
            }
        }
    }
}

#[test]
fn reductions_inside_elements_are_materialized_and_shared() {
    // The loss's logsumexp and the gradient's are one tensor; the loss reads it.
    let f = compile("loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }");
    let g = lossc::api::gradient(&f).unwrap();
    let printed = lossc::ir::print::readable(&g);
    assert_eq!(printed.matches("logsumexp[").count(), 1, "{printed}");
    assert!(printed.contains("loss_terms[i: N] = r0[i] - s[i, y[i]]"), "{printed}");
}

#[test]
fn cheap_lets_are_computed_where_they_are_read() {
    let printed = |src: &str| lossc::ir::print::readable(&lossc::opt::optimize(&compile(src)).unwrap());
    // Inlined: the element moves into its one elementwise reader, which reads it at its own head.
    let p = printed(
        "loss f(x: f32[N], w: f32[N]) { let u[i] = 2.0 * x[i] + w[i]\n let v[i] = u[i] * u[i] + 1.0\n sum[i] log(v[i]) }",
    );
    assert!(!p.contains("let u["), "{p}");
    // Kept (not trivial): two readers; a reader that reduces; a read off the head; a transcendental element.
    for src in [
        "loss f(x: f32[N]) { let u[i] = 2.0 * x[i]\n let v[i] = exp(u[i])\n let w[i] = log1p(u[i])\n sum[i] v[i] * w[i] }",
        "loss f(x: f32[N, C]) { let u[i, k] = 2.0 * x[i, k]\n let v[i] = log(sum[k] exp(u[i, k]))\n sum[i] v[i] }",
        "loss f(x: f32[N]) { let u[i] = 2.0 * x[i]\n let v[i] = exp(u[i] + u[0])\n sum[i] v[i] }",
        "loss f(x: f32[N]) { let u[i] = exp(x[i])\n let v[i] = log(u[i] + 1.0)\n sum[i] v[i] }",
    ] {
        let p = printed(src);
        assert!(p.contains("let u["), "{src}: {p}");
    }
    // Trivial elements (a few additions and comparisons, matrices read in their own order) are computed
    // at every read: LDR-KL's margins; a transposed read stays stored.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ldr_kl.lx")).unwrap();
    let g = lossc::opt::optimize(&lossc::autodiff::grad(&compile(&src)).unwrap()).unwrap();
    let p = lossc::ir::print::readable(&g);
    assert!(!p.contains("let m["), "{p}");
    let p = printed(
        "loss f(x: f32[N, N]) { let u[i, j] = x[j, i] - x[i, i]\n sum[i] (max[j] u[i, j]) + (min[j] u[i, j]) }",
    );
    assert!(p.contains("let u["), "{p}");
    let p = printed(
        "loss f(x: f32[N, N]) { let u[i, j] = x[i, j] - x[i, i]\n sum[i] (max[j] u[i, j]) + (min[j] u[i, j]) }",
    );
    assert!(!p.contains("let u["), "{p}");
    // AnyLoss: the adjoint of `a` is computed in the gradient's element, not stored.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/anyloss_f1.lx")).unwrap();
    let g = lossc::opt::optimize(&lossc::autodiff::grad(&compile(&src)).unwrap()).unwrap();
    let p = lossc::ir::print::readable(&g);
    assert!(!p.contains("let a_adj["), "{p}");
}

#[test]
fn gathered_terms_of_a_reduction_are_materialized_per_row() {
    // The label's logit is read in the group that streams the rows (with the row's logsumexp), and the
    // loss averages a vector: its sum (in parallel parts), divided by N.
    let g = groups("loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }");
    assert_eq!(
        g,
        vec![
            vec!["r0".to_string(), "loss_terms".into(), "grad_s".into()],
            vec!["loss_sum".into()],
            vec!["loss".into()]
        ]
    );
    let opt = lossc::opt::optimize(&compile("loss f(s: f32[N, C]) { sum[i] s[i, 0] * s[i, 1] }")).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    assert!(
        printed.contains("let loss_terms[i: N] = s[i, 0] * s[i, 1]"),
        "{printed}"
    );
    // Terms that read vectors only, a masked reduction, or terms over two indices stay inline.
    for src in [
        "loss f(x: f32[N], w: f32[N]) { sum[i] x[i] * w[i] }",
        "loss f(s: f32[N, C], y: idx[N] < C) { sum[i | y[i] > 0] s[i, y[i]] }",
        "loss f(s: f32[N, C], y: idx[N] < C) { sum[i, k] exp(s[i, y[i]] * s[i, k]) }",
    ] {
        let opt = lossc::opt::optimize(&compile(src)).unwrap();
        let printed = lossc::ir::print::readable(&opt);
        assert!(!printed.contains("_terms"), "{src}: {printed}");
    }
    // A name in use is skipped.
    let opt = lossc::opt::optimize(&compile(
        "loss f(s: f32[N, C], y: idx[N] < C) { let loss_terms[i] = s[i, 0] * s[i, 1]\n sum[i] loss_terms[i] * s[i, y[i]] }",
    ))
    .unwrap();
    let printed = lossc::ir::print::readable(&opt);
    assert!(printed.contains("let loss_terms1[i"), "{printed}");
}

#[test]
fn a_hoisted_contraction_and_its_transpose_are_one_tensor() {
    let f = compile(
        "loss f(a: f32[N, D], b: f32[N, D]) { sum[i] (log(sum[j] exp(sum[d] a[i, d] * b[j, d]))) + log(sum[j] exp(sum[d] b[i, d] * a[j, d])) }",
    );
    let hoisted = lossc::opt::hoist::materialize(&lossc::opt::simplify_only(&f).unwrap()).unwrap();
    lossc::ir::verify::verify(&hoisted).unwrap();
    let printed = lossc::ir::print::readable(&hoisted);
    assert_eq!(printed.matches("sum[d").count(), 1, "{printed}");
    let mut rng = Rng::new(4);
    let inputs = inputs_for(&f, &mut rng, 0.5);
    let (x, y) = (loss(&f, &inputs), loss(&hoisted, &inputs));
    assert!((x - y).abs() < 1e-12 * x.abs().max(1.0), "{x} vs {y}");
}

#[test]
fn distributivity_and_commutation() {
    // sum[k] c * e = c * sum[k] e;  sum[k] e / c = (sum[k] e) / c;  sum[k] -e = -(sum[k] e)
    let b = body(&rule(
        "loss f(x: f32[N, C], w: f32[N]) { sum[i] sum[k] w[i] * x[i, k] / w[i] }",
    ));
    assert!(b.contains("w[i] * (sum[k: C] x[i, k]) / w[i]"), "{b}");
    let b = body(&rule("loss f(x: f32[N]) { sum[i] -x[i] }"));
    assert_eq!(b.trim(), "loss = -(sum[i: N] x[i])");
    // a * b and b * a are one node: the sum below is computed once.
    let f = compile(
        "loss f(x: f32[N, D]) { let s[i, j] = sum[d] x[i, d] * x[j, d]\n let t[i, j] = sum[d] x[j, d] * x[i, d]\n sum[i, j] s[i, j] - t[j, i] }",
    );
    let printed = lossc::ir::print::readable(&lossc::api::gradient(&f).unwrap());
    assert!(printed.matches("sum[d").count() <= 2, "{printed}");
}

/// The names of each group's tensors in the loop IR of an optimized loss-and-gradient program.
fn groups(src: &str) -> Vec<Vec<String>> {
    let opt = lossc::opt::optimize(&lossc::autodiff::grad(&compile(src)).unwrap()).unwrap();
    let plan = lossc::backend::loops::Plan::new(&opt);
    plan.groups
        .iter()
        .map(|g| {
            plan.members(g)
                .iter()
                .map(|m| opt.tensor(m.tensor).name.clone())
                .collect()
        })
        .collect()
}

#[test]
fn row_local_nests_fuse_into_one_group() {
    // The row's logsumexp and the gradient row run in one loop over rows; the scalar loss (which needs
    // every row) runs after them, although it comes between them in dependency order.
    let g = groups("loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }");
    assert_eq!(
        g,
        vec![
            vec!["r0".to_string(), "loss_terms".into(), "grad_s".into()],
            vec!["loss_sum".into()],
            vec!["loss".into()]
        ]
    );
}

#[test]
fn contractions_and_cross_row_reads_do_not_fuse() {
    // x·xᵀ reads all of x for each row, and so does the product of its gradient; its left operand reads
    // g_adj transposed (not symmetric: a factor w[i]); the row sums of exp(g) and the adjoint of g only
    // read row i of g, and fuse.
    let src = "loss f(x: f32[N, D], w: f32[N]) { let g[i, j] = sum[d] x[i, d] * x[j, d]\n sum[i, j] w[i] * exp(g[i, j] / 100) }";
    let g = groups(src);
    for contraction in ["g", "grad_x_lhs", "grad_x"] {
        assert!(g.contains(&vec![contraction.to_string()]), "{contraction} alone: {g:?}");
    }
    assert!(
        g.contains(&vec!["r1".to_string(), "g_adj".into(), "grad_w".into()]),
        "{g:?}"
    );
    // Without w, g_adj is symmetric and read along its rows (`transpose`): the left operand fuses too.
    let g = groups("loss f(x: f32[N, D]) { let g[i, j] = sum[d] x[i, d] * x[j, d]\n sum[i, j] exp(g[i, j] / 100) }");
    assert!(
        g.contains(&vec!["r1".to_string(), "g_adj".into(), "grad_x_lhs".into()]),
        "{g:?}"
    );
    // A row reduction followed by an elementwise vector and a gradient row: the vector streams alone
    // (it is not row-sized) and whatever reads it runs after it.
    let g = groups("loss f(x: f32[N, D]) { let m[i] = max[d] x[i, d]\n sum[i] softplus(m[i]) + sum[d] x[i, d] ^ 2 }");
    let fused: Vec<&Vec<String>> = g.iter().filter(|m| m.len() > 1).collect();
    for members in &fused {
        assert!(!members.iter().any(|t| t == "loss"), "{g:?}");
    }
}

#[test]
fn sums_of_a_term_and_mask_free_of_the_summed_index_become_counts() {
    // sum[k | x[i] > 0] x[i] = select(x[i] > 0, x[i] * C, 0): no loop over k remains.
    let b = body(&rule(
        "loss f(x: f32[N], w: f32[C]) { sum[i] (sum[k: C | x[i] > 0.0] x[i]) + w[0] }",
    ));
    assert!(!b.contains("sum[k"), "{b}");
    assert!(b.contains("select(") && b.contains("* C"), "{b}");
}

#[test]
fn sibling_sums_over_one_index_run_as_one_group() {
    // AnyLoss's tp, fp and fn are three sums over the same points: one group (one pass over each chunk
    // of the data), led by the map `a` they read at their own point (each chunk of it computed just before
    // the sums read it); the loss that reads all three runs after it.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/anyloss_f1.lx")).unwrap();
    let g = groups(&src);
    assert!(
        g.contains(&vec!["a".to_string(), "tp".into(), "fp".into(), "fn_".into()]),
        "{g:?}"
    );
    let at = |name: &str| g.iter().position(|m| m.iter().any(|t| t == name)).unwrap();
    assert!(at("tp") < at("loss"), "{g:?}");
    // A sum that reads the map elsewhere than at its own point does not join it.
    let g = groups("loss f(p: f32[N]) { let a[i] = sigmoid(p[i])\n (sum[i] a[i] * p[i]) * sum[i] exp(a[0] * p[i]) }");
    assert!(
        g.iter().all(|m| !(m.contains(&"a".to_string()) && m.len() > 2)),
        "{g:?}"
    );
    assert!(g.iter().any(|m| m.len() == 2 && m[0] == "a"), "{g:?}");
}

#[test]
fn sums_sharing_a_matrix_factor_merge_into_one_product() {
    // The gradient of x·xᵀ multiplies x twice, `sum[i] g_adj[i, t] * x[i, d] + sum[j] g_adj[t, j] * x[j, d]`:
    // one sum over (g_adjᵀ + g_adj) remains, one matrix product (with its materialized left operand)
    // besides x·xᵀ itself; loss and gradient keep their values.
    let src = "loss f(x: f32[N, D]) { let g[i, j] = sum[d] x[i, d] * x[j, d]\n sum[i, j] exp(g[i, j] / 100) }";
    let f = compile(src);
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::opt::optimize(&raw).unwrap();
    lossc::ir::verify::verify(&opt).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let grad = printed.lines().find(|l| l.trim_start().starts_with("grad_x[")).unwrap();
    assert_eq!(grad.matches("sum[").count(), 1, "{printed}");
    let plan = lossc::backend::loops::Plan::new(&opt);
    assert_eq!(plan.contractions.len(), 2, "{printed}");
    let mut rng = Rng::new(4);
    let inputs = inputs_for(&f, &mut rng, 1.0);
    let a = lossc::api::eval(&raw, &inputs, &BTreeMap::new()).unwrap();
    let b = lossc::api::eval(&opt, &inputs, &BTreeMap::new()).unwrap();
    assert!((a.loss - b.loss).abs() <= 1e-12 * a.loss.abs());
    for (x, y) in a.grads[0].1.to_f64().iter().zip(b.grads[0].1.to_f64()) {
        assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0), "{x} vs {y}");
    }
    // Different second factors (x and w) stay two sums.
    let two =
        "loss f(x: f32[N, D], w: f32[N, D]) { let g[i, j] = sum[d] x[i, d] * w[j, d]\n sum[i, j] exp(g[i, j] / 100) }";
    let opt = lossc::opt::optimize(&lossc::autodiff::grad(&compile(two)).unwrap()).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    assert!(
        printed.lines().any(|l| l.trim_start().starts_with("grad_x[")),
        "{printed}"
    );
    assert_eq!(
        lossc::backend::loops::Plan::new(&opt).contractions.len(),
        3,
        "{printed}"
    );
}

#[test]
fn costly_elements_computed_again_are_read_from_their_tensor() {
    // AnyLoss's gradient needs sigmoid(L (p - 0.5)) again: it reads `a` instead of a second sigmoid per
    // point. A division of one read by a scalar is not worth a read (it stays inline); NT-Xent's cosine
    // similarities (a division of three reads) are read back where its gradient divides again.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/anyloss_f1.lx")).unwrap();
    let opt = lossc::opt::optimize(&lossc::autodiff::grad(&compile(&src)).unwrap()).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let grad = printed.lines().find(|l| l.trim_start().starts_with("grad_p[")).unwrap();
    assert!(grad.contains("a[") && !grad.contains("sigmoid"), "{grad}");
    let src = "loss f(x: f32[N], t: f32 = 2.0) { let q[i] = x[i] / t\n sum[i] q[i] * (x[i] / t) }";
    let opt = lossc::opt::optimize(&lossc::autodiff::grad(&compile(src)).unwrap()).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let loss = printed.lines().find(|l| l.trim_start().starts_with("loss =")).unwrap();
    assert!(loss.contains("* (x[") && loss.contains("] / t)"), "{printed}");
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/nt_xent.lx")).unwrap();
    let printed = lossc::ir::print::readable(&lossc::api::gradient(&compile(&src)).unwrap());
    // `r4[…] / (tau * (nb[…] * nb[…]))` only in `bb`'s own element.
    assert_eq!(printed.matches("r4[").count(), 2, "{printed}");
    assert!(printed.matches("-(bb[").count() >= 2, "{printed}");
}

#[test]
fn row_fused_groups_hold_at_most_32_nests() {
    // The unrolled 16-wire sorting network is ~140 row-local nests: they run as several groups of at most
    // 32 (each one generated function, compiled in parallel), in dependency order.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/sort_bce16.lx")).unwrap();
    let g = groups(&src);
    let nests: usize = g.iter().map(|m| m.len()).sum();
    assert!(nests > 64, "{nests} nests");
    assert!(
        g.iter().all(|m| m.len() <= 32),
        "{:?}",
        g.iter().map(|m| m.len()).collect::<Vec<_>>()
    );
    assert!(
        g.iter().filter(|m| m.len() == 32).count() >= 2,
        "{:?}",
        g.iter().map(|m| m.len()).collect::<Vec<_>>()
    );
}

#[test]
fn factors_leave_a_masked_sum_only_when_they_are_finite_constants() {
    // sum[k | m] x * log(u[i]) with an empty mask is 0 even where log(u[i]) is NaN; moving the factor out
    // would give NaN · 0. A finite constant still moves out.
    let src = "loss f(x: f32[N, C], u: f32[N]) { sum[i] (sum[k | x[i, k] > 100.0] x[i, k] * log(u[i])) + (sum[k | x[i, k] > 0.0] 3.0 * x[i, k]) }";
    let f = compile(src);
    let o = lossc::opt::simplify_only(&f).unwrap();
    let inputs = BTreeMap::from([
        (
            "x".to_string(),
            Tensor::float(vec![2, 3], vec![0.5, -1.0, 2.0, 1.0, 1.5, -0.5]),
        ),
        ("u".to_string(), Tensor::float(vec![2], vec![-1.0, 2.0])),
    ]);
    let (a, b) = (loss(&f, &inputs), loss(&o, &inputs));
    assert_eq!(a, 5.0 * 3.0);
    assert_eq!(b, a, "{}", lossc::ir::print::readable(&o));
    assert!(
        body(&lossc::ir::print::readable(&o)).contains("3.0 * (sum["),
        "{}",
        lossc::ir::print::readable(&o)
    );
}

#[test]
fn equal_let_tensors_are_computed_once() {
    // NT-Xent's gradient hoists `sum[j | h0 != j] exp(bb[h0, j])` again (its mask only becomes the loss's
    // after simplification): one tensor, read by both. No two `let` tensors of the optimized program share
    // head and element, and the program computes what it did.
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nt_xent.lx")).unwrap();
    let f = compile(&src);
    let g = lossc::api::gradient(&f).unwrap();
    let printed = lossc::ir::print::readable(&g);
    assert_eq!(printed.matches("exp(bb[h0, ").count(), 1, "{printed}");
    let mut seen = std::collections::HashSet::new();
    for t in g
        .tensors
        .iter()
        .filter(|t| t.role == lossc::ir::Role::Let && !t.indices.is_empty())
    {
        assert!(
            seen.insert((t.indices.clone(), t.body)),
            "{} repeats an earlier let\n{printed}",
            t.name
        );
    }
    let mut rng = Rng::new(9);
    let inputs = inputs_for(&f, &mut rng, 0.5);
    let (x, y) = (loss(&f, &inputs), loss(&g, &inputs));
    assert!((x - y).abs() < 1e-12 * x.abs().max(1.0), "{x} vs {y}");
}

#[test]
fn a_softmax_summed_over_its_row_is_one() {
    // Directly: sum[k] exp(X - logsumexp X) = 1 + 0 * lse (NaN where the logsumexp is not finite), with a
    // guard for an empty row when the extent is not a positive constant.
    let p = body(&rule(
        "loss f(s: f32[N, C]) { mean[i] 3.0 * sum[k] exp(2.0 * s[i, k] - logsumexp[k2] 2.0 * s[i, k2]) }",
    ));
    assert!(!p.contains("sum[k"), "{p}");
    assert!(
        p.contains("select(0.0 == C, 0.0, 1.0 + 0.0 * (logsumexp[k2: C] 2.0 * s[i, k2]))"),
        "{p}"
    );
    let p = body(&rule(
        "loss f(s: f32[N, 5]) { mean[i] sum[k] exp(s[i, k] - logsumexp[k2] s[i, k2]) }",
    ));
    let poisoned = |p: &str| p.contains("0.0 * (logsumexp[k2") || p.contains("(logsumexp[k2: 5] s[i, k2]) * 0.0");
    assert!(
        p.contains("1.0 + ") && poisoned(&p) && !p.contains("select") && !p.contains("sum[k"),
        "{p}"
    );
    // Where a row holds an infinity or a NaN, the literal sum is NaN, and so is the rewritten one.
    let f = compile("loss f(s: f32[N, C]) { mean[i] sum[k] exp(s[i, k] - logsumexp[k2] s[i, k2]) }");
    let o = lossc::opt::simplify_only(&f).unwrap();
    for x in [f64::INFINITY, f64::NAN, f64::NEG_INFINITY, 1e30] {
        let s = Tensor::float(vec![2, 3], vec![0.5, x, -1.0, 0.25, 2.0, 1.0]);
        let inputs = BTreeMap::from([("s".to_string(), s)]);
        let (a, b) = (loss(&f, &inputs), loss(&o, &inputs));
        assert!(a.to_bits() == b.to_bits() || (a - b).abs() < 1e-12, "{x}: {a} vs {b}");
    }
    // Not a softmax row: another body, a mask, a logsumexp over another range.
    for src in [
        "loss f(s: f32[N, C]) { mean[i] sum[k] exp(s[i, k] - logsumexp[k2] 2.0 * s[i, k2]) }",
        "loss f(s: f32[N, C]) { mean[i] sum[k | s[i, k] > 0] exp(s[i, k] - logsumexp[k2 | s[i, k2] > 0] s[i, k2]) }",
        "loss f(s: f32[N, C], t: f32[N, D]) { mean[i] sum[k] exp(s[i, k] - logsumexp[d] t[i, d]) }",
    ] {
        assert!(body(&rule(src)).contains("sum[k"), "{src}");
    }
    // Through a `let` of the gradient: LDR-KL sums its margin adjoints for the label's column. The
    // optimized gradient has no sum over a row left, and computes what the literal one does, also where a
    // row holds an infinity or a NaN (both NaN there).
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ldr_kl.lx")).unwrap();
    let f = compile(&src);
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::opt::optimize(&raw).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    // (The loss's mean over the samples is a sum over N divided by N.)
    assert!(
        !printed.lines().any(|l| l.contains("sum[") && l.contains(": C]")),
        "{printed}"
    );
    same_also_at_infinities(&f, &raw, &opt, 5);
}

#[test]
fn squared_and_absolute_differences_are_symmetric() {
    // A squared distance (`(a - b) ^ 2` or written out) and an L1 distance are the same computation with
    // their indices exchanged; a plain difference, or one times a point, is not.
    let symmetric = |element: &str| {
        let f = compile(&format!(
            "loss f(x: f32[N, D]) {{ let e[i: N, j: N] = {element}
            sum[i, j] e[i, j] * e[j, i] }}"
        ));
        let f = lossc::opt::hoist::materialize(&lossc::opt::simplify_only(&f).unwrap()).unwrap();
        let s = lossc::opt::transpose::symmetric_tensors(&f);
        let e = f.tensors.iter().position(|t| t.name == "e").expect("e stored");
        s[e]
    };
    assert!(symmetric("sum[d] (x[i, d] - x[j, d]) ^ 2"));
    assert!(symmetric("sum[d] (x[i, d] - x[j, d]) * (x[i, d] - x[j, d])"));
    assert!(symmetric("sqrt(sum[d] (x[i, d] / 2 - x[j, d] / 2) ^ 2 + 1e-12)"));
    assert!(symmetric("sum[d] abs(x[i, d] - x[j, d])"));
    assert!(!symmetric("sum[d] x[i, d] - x[j, d]"));
    assert!(!symmetric("sum[d] (x[i, d] - x[j, d]) * x[i, d]"));
    assert!(!symmetric("sum[d] (x[i, d] - x[j, d]) * (x[i, 0] - x[j, d])"));
}

#[test]
fn symmetric_matrices_are_read_along_their_rows() {
    // `g` is symmetric (a Gram matrix over a symmetric scale), `h` is not (the three sums are multiplied, not
    // added, so they stay three). Summed over its first index, `g`
    // is read as `g[h0, j]` (the row of the head), `h` as written; next to a column read of another matrix
    // `m`, `g` follows that one's order. Gradients as before the rewrite.
    let src = "loss f(b: f32[N, D], w: f32[N], m: f32[N, N]) {
            let g[i, j] = sum[d] b[i, d] * b[j, d] / (w[i] * w[j] + 3.0)
            let h[i, j] = b[i, 0] * m[i, j]
            sum[i] (sum[j] g[j, i] * w[j]) * (sum[j] h[j, i] * w[j]) * (sum[j] g[j, i] * m[j, i]) }";
    let f = compile(src);
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::opt::optimize(&raw).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let has = |parts: &[&str]| printed.lines().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(has(&["] = sum[j", "g[h0, j", "* w[j"]), "{printed}");
    assert!(has(&["] = sum[j", "h[j", "* w[j"]), "{printed}");
    assert!(has(&["] = sum[j", "g[j", "* m[j"]), "{printed}");
    let mut rng = Rng::new(3);
    let inputs = inputs_for(&f, &mut rng, 0.8);
    same_results(&raw, &opt, &inputs, "");
    // Without a symmetric tensor the pass changes nothing.
    let plain = compile("loss f(m: f32[N, N]) { sum[i] sum[j] m[j, i] * m[i, j] }");
    let before = lossc::opt::hoist::materialize(&plain).unwrap();
    let after = lossc::opt::transpose::contiguous_reads(&before).unwrap();
    assert_eq!(lossc::ir::print::readable(&before), lossc::ir::print::readable(&after));
}

#[test]
fn deviations_from_a_mean_sum_to_zero() {
    // Inline and through a `let`, scaled, divided, negated and selected by row factors: no sum is left,
    // and the value is the literal one (0 up to rounding).
    for src in [
        "loss f(s: f32[N, C]) { mean[i] 2.0 * sum[k] 3.0 * (s[i, k] - mean[k2] s[i, k2]) }",
        "loss f(s: f32[N, C], w: f32[N]) { let mu[i] = mean[k] s[i, k]
            sum[i] sum[k] -((mu[i] - s[i, k]) * w[i] / 3.0) + select(w[i] > 0.0, s[i, k] - mu[i], 0.0) }",
    ] {
        let p = body(&rule(src));
        assert!(!p.contains("sum[k"), "{src}: {p}");
        assert!(p.contains("0.0 *"), "{src}: {p}");
    }
    // Not deviations from that mean: another range, a masked mean, a masked sum, another body, a square.
    for src in [
        "loss f(s: f32[N, C], t: f32[N, D]) { mean[i] sum[k] s[i, k] - mean[d] t[i, d] }",
        "loss f(s: f32[N, C]) { mean[i] sum[k] s[i, k] - mean[k2 | s[i, k2] > 0] s[i, k2] }",
        "loss f(s: f32[N, C]) { mean[i] sum[k | s[i, k] > 0] s[i, k] - mean[k2] s[i, k2] }",
        "loss f(s: f32[N, C]) { mean[i] sum[k] s[i, k] - mean[k2] 2.0 * s[i, k2] }",
        "loss f(s: f32[N, C]) { mean[i] sum[k] (s[i, k] - mean[k2] s[i, k2]) ^ 2 }",
    ] {
        assert!(body(&rule(src)).contains("sum[k"), "{src}");
    }
    // Z-loss: the variance's gradient through its mean is no row pass, and the optimized gradient computes
    // what the literal one does, also where a row holds an infinity or a NaN (both NaN there).
    let f = compile(
        "loss z_loss(s: f32[N, C], y: idx[N] < C, eps: f32 = 1e-12) {
            let mu[i] = mean[k] s[i, k]
            let sigma[i] = sqrt(mean[k] (s[i, k] - mu[i]) ^ 2)
            let z[i] = (s[i, y[i]] - mu[i]) / (sigma[i] + eps)
            sum[i] softplus(-z[i]) }",
    );
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::opt::optimize(&raw).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let rows = printed
        .lines()
        .filter(|l| l.contains("sum[k") || l.contains("mean[k"))
        .count();
    assert_eq!(rows, 2, "the mean and the variance only:\n{printed}");
    same_also_at_infinities(&f, &raw, &opt, 8);
}

/// The gradient programs `raw` and `opt` of `f` agree in loss and gradients on random points, also where
/// one score of `s` is an infinity or a NaN (both NaN there).
fn same_also_at_infinities(f: &Function, raw: &Function, opt: &Function, seed: u64) {
    let mut rng = Rng::new(seed);
    for special in [None, Some(f64::INFINITY), Some(f64::NAN), Some(f64::NEG_INFINITY)] {
        let mut inputs = inputs_for(f, &mut rng, 1.0);
        if let Some(x) = special {
            let s = inputs.get_mut("s").unwrap();
            let mut values = s.to_f64();
            values[1] = x;
            *s = Tensor::float(s.shape.clone(), values);
        }
        same_results(raw, opt, &inputs, &format!("{special:?}"));
    }
}

#[test]
fn scalar_means_are_sums_that_run_beside_their_siblings() {
    // AnyLoss with TP, FP and FN as means: their sums join the group that computes the amplified
    // predictions, as the sums of the form written with sums do; values and gradients as before.
    let src = "loss f(p: f32[N], y: f32[N] nograd) {
        let a[i] = sigmoid(73.0 * (p[i] - 0.5))
        let tp = mean[i] a[i] * y[i]
        let fp = mean[i] a[i] * (1 - y[i])
        let fn_ = mean[i] (1 - a[i]) * y[i]
        1 - 2 * tp / (2 * tp + fp + fn_) }";
    let g = groups(src);
    assert_eq!(g[0], ["a", "tp_sum", "fp_sum", "fn__sum"], "{g:?}");
    let f = compile(src);
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::opt::optimize(&raw).unwrap();
    let mut rng = Rng::new(4);
    let inputs = inputs_for(&f, &mut rng, 0.1);
    same_results(&raw, &opt, &inputs, "");
    // A masked mean, or a mean with head indices, stays as it is.
    for src in [
        "loss f(s: f32[N, C]) { mean[i | s[i, 0] > 0] s[i, 1] }",
        "loss f(s: f32[N, C]) { let m[i] = mean[k] s[i, k]\n sum[i] m[i] * m[i] }",
    ] {
        let printed = lossc::ir::print::readable(&lossc::opt::optimize(&compile(src)).unwrap());
        assert!(!printed.contains("_sum"), "{src}\n{printed}");
    }
}

#[test]
fn pairwise_weights_are_computed_once_per_pair() {
    use lossc::ir::{Expr, Function};
    use lossc::prims::Prim;
    // Cauchy-Schwarz's gradient rows sum exp(-d[i, j] / 2) · (x[i, c] - z[j, c]) over j: the weight is a
    // tensor over (i, j), not recomputed for each column c; values and gradients as before.
    let src = "loss f(x: f32[N, D], z: f32[M, D]) {
        log(mean[i, j] exp(-(sum[d] (x[i, d] - z[j, d]) ^ 2) / 2.0)) }";
    let f = compile(src);
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::opt::optimize(&raw).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let columns = f.inputs[0].shape[1].clone();
    let exps_in = |g: &Function, t: &lossc::ir::TensorDef| {
        g.reachable(&[t.body])
            .iter()
            .filter(|n| matches!(g.node(**n).expr, Expr::Prim { prim: Prim::Exp, .. }))
            .count()
    };
    let weights = opt
        .tensors
        .iter()
        .filter(|t| t.indices.len() == 2 && matches!(opt.node(t.body).expr, Expr::Prim { prim: Prim::Exp, .. }))
        .count();
    assert!(weights >= 1, "{printed}");
    // The square's two product-rule terms are one term doubled, not a sum of two equal ones (a sum over j
    // whose body is a product runs as row updates; `e + e` ran 4x slower, element by element).
    for t in &opt.tensors {
        for n in opt.reachable(&[t.body]) {
            if let Expr::Prim { prim: Prim::Add, args } = &opt.node(n).expr {
                assert_ne!(args[0], args[1], "`{}` adds a term to itself:\n{printed}", t.name);
            }
        }
    }
    for t in &opt.tensors {
        let over_columns = t.indices.iter().any(|i| opt.index(*i).range == columns);
        assert!(
            !over_columns || exps_in(&opt, t) == 0,
            "`{}` recomputes a weight:\n{printed}",
            t.name
        );
    }
    let mut rng = Rng::new(6);
    let inputs = inputs_for(&f, &mut rng, 0.3);
    same_results(&raw, &opt, &inputs, "");
    // A transcendental over every index of its nest stays inline.
    let all = compile("loss f(x: f32[N, D]) { sum[i, c] sum[j] exp(x[i, c] * x[j, c]) }");
    let opt = lossc::opt::optimize(&all).unwrap();
    assert!(
        opt.tensors
            .iter()
            .all(|t| !matches!(opt.node(t.body).expr, Expr::Prim { prim: Prim::Exp, .. })),
        "{}",
        lossc::ir::print::readable(&opt)
    );
}

/// `raw` and `opt` give the same loss and gradients at `inputs` (NaN where the other is NaN).
fn same_results(raw: &Function, opt: &Function, inputs: &BTreeMap<String, Tensor>, at: &str) {
    let a = lossc::api::eval(raw, inputs, &BTreeMap::new()).unwrap();
    let b = lossc::api::eval(opt, inputs, &BTreeMap::new()).unwrap();
    let close = |x: f64, y: f64| x == y || (x - y).abs() <= 1e-12 * x.abs().max(1.0) || (x.is_nan() && y.is_nan());
    assert!(close(a.loss, b.loss), "{at}: {} vs {}", a.loss, b.loss);
    for ((n, ga), (_, gb)) in a.grads.iter().zip(&b.grads) {
        for (x, y) in ga.to_f64().iter().zip(gb.to_f64()) {
            assert!(close(*x, y), "{at}: grad {n}: {x} vs {y}");
        }
    }
}

#[test]
fn probabilities_read_under_a_log_are_log_softmaxes() {
    // A softmax probability read under `log` (and by one more load) is inlined before differentiating:
    // its log is the log-softmax, no `log` or `1 / p` is left, and the gradient is the logsumexp's. The
    // smoothed target, an [N, C] tensor built from the labels, is computed where it is read, not stored.
    for src in [
        "loss f(s: f32[N, C], y: idx[N] < C, eps: f32 = 0.1) {
            let p[i, k] = exp(s[i, k]) / sum[j] exp(s[i, j])
            (sum[i] -(1 - eps) * log(p[i, y[i]]) - eps / C * sum[k] log(p[i, k])) / N }",
        "loss f(s: f32[N, C], t: f32[N, C] nograd, T: f32 = 4.0) {
            let ps[i, k] = exp(s[i, k] / T) / sum[c] exp(s[i, c] / T)
            let pt[i, k] = exp(t[i, k] / T) / sum[c] exp(t[i, c] / T)
            mean[i] sum[k] pt[i, k] * (log(pt[i, k]) - log(ps[i, k])) }",
        "loss f(s: f32[N, C], y: idx[N] < C, eps: f32 = 0.1) {
            let q[i, k] = (1 - eps) * [k == y[i]] + eps / C
            let logp[i, k] = s[i, k] - logsumexp[c] s[i, c]
            mean[i] -sum[k] q[i, k] * logp[i, k] }",
        // Log-softmax `let`s (std::distill::distill): inlined, `exp` of them is a softmax whose row sums
        // to one (no row sum of the adjoint is left: the only sums are the loss's).
        "loss f(s: f32[N, C], t: f32[N, C] nograd, T: f32 = 4.0) {
            let ls[i, k] = s[i, k] / T - logsumexp[c] s[i, c] / T
            let lt[i, k] = t[i, k] / T - logsumexp[c] t[i, c] / T
            T ^ 2 * mean[i] sum[k] exp(lt[i, k]) * (lt[i, k] - ls[i, k]) }",
        // Temperature-scaled `let`s (one load divided by a hyperparameter) are read scaled, not stored with
        // an adjoint; the student's softmax summed under the adjoint's guard `ce_adj[i] != 0`, free of the
        // summed index, is the guarded 1.
        "loss f(s: f32[N, C], t: f32[N, C] nograd, T: f32 = 4.0) {
            let zs[i, k] = s[i, k] / T
            let zt[i, k] = t[i, k] / T
            let lt[i, k] = zt[i, k] - logsumexp[c] zt[i, c]
            let ce[i] = -sum[k] exp(lt[i, k]) * (zs[i, k] - logsumexp[c] zs[i, c])
            let h[i] = -sum[k] exp(lt[i, k]) * lt[i, k]
            T * T * (sum[i] ce[i] - h[i]) / N }",
    ] {
        let f = compile(src);
        let raw = lossc::autodiff::grad(&f).unwrap();
        let opt = lossc::api::gradient(&f).unwrap();
        let printed = lossc::ir::print::readable(&opt);
        for gone in [
            "log(",
            "let p[",
            "let ps[",
            "let pt[",
            "let q[",
            "let lt[",
            "let ls[",
            "let zs[",
            "let zs_adj[",
        ] {
            assert!(!printed.contains(gone), "{gone} in {printed}");
        }
        let gradient = printed
            .lines()
            .skip_while(|l| !l.contains("loss ="))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!gradient.contains("sum["), "{printed}");
        let mut rng = Rng::new(5);
        let inputs = inputs_for(&f, &mut rng, 0.8);
        same_results(&raw, &opt, &inputs, "");
    }
}

#[test]
fn invariant_terms_are_counted_and_masked_scalar_sums_nest() {
    // sum[k] (c + e) = c * |k| + sum[k] e: a smoothed target's row sum is a constant.
    let b = body(&rule(
        "loss f(s: f32[N, C], y: idx[N] < C, eps: f32 = 0.1) { sum[i] sum[k: C] eps / C + (1 - eps) * [k == y[i]] * s[i, 0] }",
    ));
    assert!(!b.contains("sum[k"), "{b}");
    assert!(b.contains("C * (eps / C)"), "{b}");
    let b = body(&rule(
        "loss f(s: f32[N, C], eps: f32 = 0.1) { sum[i] sum[k] eps / C + s[i, k] }",
    ));
    assert!(b.contains("C * (eps / C)") && b.contains("sum[k: C] s[i, k]"), "{b}");
    // A masked sum over two indices to a scalar nests (the inner sum a row's), unlike one over free
    // indices, whose inner sum would be stored over all of them.
    let b = body(&rule(
        "loss f(s: f32[N, C], y: idx[N] < C) { sum[i, k | k != y[i]] s[i, k] }",
    ));
    assert!(b.contains("sum[i: N] sum[k: C | k != y[i]]"), "{b}");
    let b = body(&rule(
        "loss f(s: f32[N, C], r: idx[N, C] < N) { sum[j: N] sum[i, k | r[i, k] == j] s[i, k] * j }",
    ));
    assert!(b.contains("sum[i: N, k: C | r[i, k] == j]"), "{b}");
}

#[test]
fn a_bracket_term_of_a_product_is_a_gather() {
    // sum[k] (c [k == y] + b) * e = c e[y] + sum[k] b * e: no bracket is left to sum.
    let b = body(&rule(
        "loss f(s: f32[N, C], y: idx[N] < C, eps: f32 = 0.1) {
            sum[i] sum[k] ((1 - eps) * [k == y[i]] + eps / C) * s[i, k] }",
    ));
    assert!(!b.contains("=="), "{b}");
    assert!(b.contains("s[i, y[i]]"), "{b}");
}

#[test]
fn a_reduction_hoisted_already_is_read_under_a_select_too() {
    // A softmax over a state bank's slot (a computed subscript, not known to be in range) summed under the
    // guard `on > 0` is the guarded 1, which keeps its logsumexp as `0 * lse` (NaN stays NaN). Under the
    // select the logsumexp is not hoisted for its own sake (hoisting must add no read), but the loss reads
    // it already, as a tensor over the rows: the gradient reads that tensor instead of computing a
    // logsumexp per element.
    let src = "loss f(s: f32[N, C], bank: f32[N, E + 1, C] nograd, epoch: idx = 0, E: idx = 3, T: f32 = 5.0,
                      on: idx = 1) {
        let lr[i, k] = bank[i, epoch % (E + 1), k] / T - logsumexp[c] bank[i, epoch % (E + 1), c] / T
        let ls[i, k] = s[i, k] / T - logsumexp[c] s[i, c] / T
        select(on > 0, mean[i] sum[k] exp(lr[i, k]) * (lr[i, k] - ls[i, k]), 0.0) }";
    let f = compile(src);
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::api::gradient(&f).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let gradient = printed.lines().find(|l| l.contains("grad_s[")).expect("a gradient");
    assert!(!gradient.contains("logsumexp"), "{printed}");
    assert!(!gradient.contains("sum["), "{printed}");
    let mut rng = Rng::new(6);
    let mut inputs = inputs_for(&f, &mut rng, 0.8);
    // The bank has E + 1 = 4 slots (E is a hyperparameter, 3 by default).
    let bank = Tensor::float(vec![4, 4, 4], (0..64).map(|_| 0.8 * rng.normal()).collect());
    inputs.insert("bank".into(), bank);
    same_results(&raw, &opt, &inputs, "");
}

#[test]
fn two_sums_over_one_range_are_one_pass() {
    // sum[k] a ± sum[k'] b = sum[k] (a ± b): written inline (Dice's denominator `sum a + sum y`), and as two
    // `let` row sums read once each side by side (a soft cross-entropy minus the teacher's entropy: one
    // row pass computes the teacher's exponentials once for both).
    let b = body(&rule(
        "loss f(a: f32[N], y: f32[N]) { 1 - 2 * (sum[i] a[i] * y[i]) / ((sum[i] a[i]) + sum[j] y[j]) }",
    ));
    assert_eq!(b.matches("sum[").count(), 2, "{b}");
    assert!(b.contains("] + y[i"), "{b}");
    let f = compile(
        "loss f(s: f32[N, C], t: f32[N, C] nograd, T: f32 = 4.0) {
            let lt[i, k] = t[i, k] / T - logsumexp[c] t[i, c] / T
            let ce[i] = -sum[k] exp(lt[i, k]) * (s[i, k] / T - logsumexp[c] s[i, c] / T)
            let h[i] = -sum[k] exp(lt[i, k]) * lt[i, k]
            T * T * (sum[i] ce[i] - h[i]) / N }",
    );
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::api::gradient(&f).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let row_sums = printed
        .lines()
        .filter(|l| l.contains("= sum[") && l.contains(": C]"))
        .count();
    assert_eq!(row_sums, 1, "{printed}");
    let mut rng = Rng::new(7);
    let inputs = inputs_for(&f, &mut rng, 0.8);
    same_results(&raw, &opt, &inputs, "");
}

#[test]
fn a_weighted_sum_of_differences_is_a_row_sum_and_a_product() {
    // sum[j] w[i, j] * (x[i, d] - z[j, d]) = x[i, d] * sum[j] w[i, j] - sum[j] w[i, j] * z[j, d]: the gradient
    // of a kernel of squared distances (Cauchy-Schwarz) is row sums and matrix products, no pass over every
    // pair and column; each product runs as a GEMM.
    let f = compile(
        "loss f(x: f32[N, D], z: f32[M, D]) {
            log(mean[i, j] exp(-(sum[d] (x[i, d] - z[j, d]) ^ 2) / 2)) }",
    );
    let raw = lossc::autodiff::grad(&f).unwrap();
    let opt = lossc::api::gradient(&f).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let products = printed
        .lines()
        .filter(|l| l.contains(": D] = sum[") && l.matches('[').count() == 4)
        .count();
    assert_eq!(products, 2, "{printed}");
    let summed_differences = printed
        .lines()
        .filter(|l| l.contains(": D] = sum[") && l.contains(" - "))
        .count();
    assert_eq!(
        summed_differences, 0,
        "a difference is still summed over pairs:\n{printed}"
    );
    // The two products, and the squared distances themselves in a product's tiles.
    let plan = lossc::backend::loops::Plan::new(&opt);
    let distances = plan.contractions.iter().filter(|c| c.distance).count();
    assert_eq!((plan.contractions.len(), distances), (3, 1), "{printed}");
    let mut rng = Rng::new(3);
    let inputs = inputs_for(&f, &mut rng, 0.3);
    same_results(&raw, &opt, &inputs, "");
    // A weight that reads the column index too (no product to gain) is summed as written.
    let g = compile("loss g(x: f32[N, D], w: f32[N, N, D]) { sum[i, d] sum[j] w[i, j, d] * (x[i, d] - x[j, d]) }");
    let printed = lossc::ir::print::readable(&lossc::api::gradient(&g).unwrap());
    assert!(
        printed.contains("x[i, d] - x[j, d]") || printed.contains("- x[j"),
        "{printed}"
    );
}

#[test]
fn a_sum_equal_to_another_up_to_its_summed_index_is_one_tensor() {
    // A kernel of one set's squared distances: its gradient sums each row of the symmetric weights twice,
    // once over `i` and once over `j` (`x[t] - x[j]` and `x[i] - x[t]`); once the weights are read along
    // their rows, the two products `sum[i] w[t, i] x[i, c]` and `sum[j] w[t, j] x[j, c]` are one tensor,
    // and both row sums are the loss's own `sum[j] w[t, j]`.
    let f = compile("loss f(x: f32[N, D]) { log(mean[i, j] exp(-(sum[d] (x[i, d] - x[j, d]) ^ 2) / 2)) }");
    let opt = lossc::api::gradient(&f).unwrap();
    let printed = lossc::ir::print::readable(&opt);
    let products = printed.lines().filter(|l| l.contains(": D] = sum[")).count();
    let row_sums = printed.lines().filter(|l| l.contains("[h0: N] = sum[")).count();
    assert_eq!((products, row_sums), (1, 1), "{printed}");
    let raw = lossc::autodiff::grad(&f).unwrap();
    let mut rng = Rng::new(5);
    same_results(&raw, &opt, &inputs_for(&f, &mut rng, 0.3), "");
}

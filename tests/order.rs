//! Ordering forms: `topk` and `argsort` against a sort in Rust, `sortnet` against its defining properties
//! (doubly stochastic, the hard sort in the steep limit) and finite differences, interpreter and JIT alike.

use std::collections::BTreeMap;

use lossc::data::Rng;
use lossc::{Backend, Compiler, Evaluation, Tensor};

fn eval(src: &str, inputs: &BTreeMap<String, Tensor>, backend: Backend) -> Evaluation {
    Compiler::new()
        .backend(backend)
        .compile_source("o.lx", src)
        .unwrap_or_else(|d| panic!("{}", d.render()))
        .kernel(None)
        .unwrap()
        .eval(inputs)
        .unwrap()
}

fn output(e: &Evaluation, name: &str) -> Vec<f64> {
    e.outputs.iter().find(|(n, _)| n == name).unwrap().1.to_f64()
}

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Interp];
    if cfg!(feature = "jit") {
        v.push(Backend::Jit);
    }
    v
}

fn random(shape: Vec<usize>, seed: u64, ties: bool) -> Tensor {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    // With ties, values come from a small set, so the stable tie order is exercised.
    let v = (0..n)
        .map(|_| if ties { rng.below(4) as f64 } else { rng.normal() })
        .collect();
    Tensor::float(shape, v)
}

const SELECT: &str = "loss t(s: f32[B, N]) -> (top: f32[B, 3], masked: f32[B, 2], order: f32[B, N]) {
    out top[r, u] = topk[j](s[r, j]; k = 3)[u]
    out masked[r, u] = topk[j | j != 0 && s[r, j] < 1](s[r, j]; k = 2)[u]
    out order[r, u] = float(argsort[j](s[r, j])[u])
    sum[r, u] top[r, u] * (u + 1)
}";

#[test]
fn topk_and_argsort_agree_with_sorting() {
    for ties in [false, true] {
        let s = random(vec![4, 7], 5 + u64::from(ties), ties);
        let x = BTreeMap::from([("s".to_string(), s.clone())]);
        let v = s.to_f64();
        for backend in backends() {
            let e = eval(&SELECT.replace("float(", "(1.0 * "), &x, backend);
            for r in 0..4 {
                let row = &v[r * 7..(r + 1) * 7];
                let mut idx: Vec<usize> = (0..7).collect();
                idx.sort_by(|a, b| row[*a].partial_cmp(&row[*b]).unwrap()); // stable: ties by index
                let order: Vec<f64> = idx.iter().map(|i| *i as f64).collect();
                assert_eq!(&output(&e, "order")[r * 7..(r + 1) * 7], &order[..], "{backend:?}");
                let mut desc: Vec<f64> = row.to_vec();
                desc.sort_by(|a, b| b.partial_cmp(a).unwrap());
                let top = &output(&e, "top")[r * 3..(r + 1) * 3];
                for (g, w) in top.iter().zip(&desc) {
                    assert!((g - w).abs() < 1e-6, "{backend:?} top {g} vs {w}");
                }
                let mut pool: Vec<f64> = row[1..].iter().copied().filter(|x| *x < 1.0).collect();
                pool.sort_by(|a, b| b.partial_cmp(a).unwrap());
                pool.resize(2, 0.0); // fewer than k qualify: 0
                let masked = &output(&e, "masked")[r * 2..(r + 1) * 2];
                for (g, w) in masked.iter().zip(&pool) {
                    assert!((g - w).abs() < 1e-6, "{backend:?} masked {g} vs {w}");
                }
            }
            // The gradient flows to the chosen elements only, with the weight of their position.
            let g = &e.grads[0].1.to_f64();
            if !ties {
                for r in 0..4 {
                    let row = &v[r * 7..(r + 1) * 7];
                    let mut idx: Vec<usize> = (0..7).collect();
                    idx.sort_by(|a, b| row[*b].partial_cmp(&row[*a]).unwrap());
                    for (pos, i) in idx.iter().enumerate() {
                        let want = if pos < 3 { (pos + 1) as f64 } else { 0.0 };
                        assert_eq!(g[r * 7 + i], want, "{backend:?}");
                    }
                }
            }
        }
    }
}

fn net_src(n: usize, network: &str, relax: &str, steepness: f64) -> String {
    format!(
        "loss t(x: f32[B, {n}], w: f32[B, {n}, {n}] nograd) -> (P: f32[B, {n}, {n}]) {{
    out P[r, i, j] = sortnet[k](x[r, k]; network = \"{network}\", relax = \"{relax}\", steepness = {steepness:?})[i, j]
    sum[r, i, j] P[r, i, j] * w[r, i, j]
}}"
    )
}

#[test]
fn relaxed_permutations_are_doubly_stochastic_and_steep_ones_sort() {
    for n in [1usize, 2, 3, 5, 6, 8] {
        for network in ["odd_even", "bitonic"] {
            for relax in ["logistic", "logistic_phi", "cauchy", "reciprocal"] {
                let x = random(vec![2, n], n as u64, false);
                let w = Tensor::float(vec![2, n, n], vec![1.0; 2 * n * n]);
                let inputs = BTreeMap::from([("x".to_string(), x.clone()), ("w".to_string(), w)]);
                for backend in backends() {
                    let p = output(&eval(&net_src(n, network, relax, 3.0), &inputs, backend), "P");
                    for r in 0..2 {
                        for a in 0..n {
                            let row: f64 = (0..n).map(|b| p[r * n * n + a * n + b]).sum();
                            let col: f64 = (0..n).map(|b| p[r * n * n + b * n + a]).sum();
                            assert!(
                                (row - 1.0).abs() < 1e-5 && (col - 1.0).abs() < 1e-5,
                                "{n} {network} {relax}"
                            );
                        }
                    }
                    // Very steep: P is the hard permutation, input i at its ascending rank.
                    let hard = output(&eval(&net_src(n, network, relax, 1e6), &inputs, backend), "P");
                    let v = x.to_f64();
                    for r in 0..2 {
                        let row = &v[r * n..(r + 1) * n];
                        for i in 0..n {
                            let rank = row.iter().filter(|y| **y < row[i]).count();
                            let got = hard[r * n * n + i * n + rank];
                            assert!(got > 0.99, "{n} {network} {relax} {backend:?}: P[{i}, {rank}] = {got}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn sorting_network_gradients_match_finite_differences() {
    for (n, network, relax) in [
        (4, "odd_even", "cauchy"),
        (5, "bitonic", "logistic_phi"),
        (6, "bitonic", "logistic"),
    ] {
        let src = net_src(n, network, relax, 2.0);
        let p = lossc::Program::from_source("g.lx", &src).unwrap();
        let f = p.loss(None).unwrap();
        let inputs = BTreeMap::from([
            ("x".to_string(), random(vec![2, n], 11, false)),
            ("w".to_string(), random(vec![2, n, n], 12, false)),
        ]);
        for c in lossc::gradcheck::check(f, &inputs, &BTreeMap::new(), 64).unwrap() {
            assert!(
                c.checked > 0 && c.max_error < 1e-6,
                "{network} {relax}: {} off by {}",
                c.name,
                c.max_error
            );
        }
    }
}

#[test]
fn ordering_forms_format_and_reparse() {
    let src = "loss t(s: f32[B, 4]) {\n    let P[r, i, j] = sortnet[k](s[r, k]; network = \"bitonic\", steepness = 2.0)[i, j]\n    let a[r, u] = argsort[j | j > 0](s[r, j])[u]\n    sum[r, u: 2] topk[j](s[r, j] * P[r, j, j]; k = 2)[u] + a[r, 0]\n}\n";
    let formatted = lossc::syntax::fmt::format("t.lx", src).unwrap();
    assert_eq!(formatted, src);
    lossc::Program::from_source("t.lx", &formatted).unwrap_or_else(|d| panic!("{}", d.render()));
}

// An `idx` hyperparameter sizes the chosen positions: k is set per call, `mean[u]` divides by it, and the
// kept positions are the k largest (each with gradient 1/k).
#[test]
fn topk_takes_k_from_a_hyperparameter_per_call() {
    let src = "loss hard_mean(l: f32[N], k: idx = 3) { mean[u] topk[j](l[j]; k = k)[u] }";
    let l = random(vec![9], 11, false);
    let v = l.to_f64();
    let mut desc = v.clone();
    desc.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let x = BTreeMap::from([("l".to_string(), l)]);
    for backend in backends() {
        let kernel = Compiler::new()
            .backend(backend)
            .compile_source("k.lx", src)
            .unwrap_or_else(|d| panic!("{}", d.render()))
            .kernel(None)
            .unwrap();
        for k in [1usize, 3, 5, 9] {
            let hypers = BTreeMap::from([("k".to_string(), k as f64)]);
            let e = kernel.eval_with(&x, &hypers).unwrap();
            let want: f64 = desc[..k].iter().sum::<f64>() / k as f64;
            assert!((e.loss - want).abs() < 1e-5, "{backend:?} k={k}: {} vs {want}", e.loss);
            let g = e.grads[0].1.to_f64();
            for (i, x) in v.iter().enumerate() {
                let kept = desc[..k].contains(x);
                let w = if kept { 1.0 / k as f64 } else { 0.0 };
                assert!((g[i] - w).abs() < 1e-6, "{backend:?} k={k} grad {i}");
            }
        }
        // The default, and a negative k refused as a negative extent.
        assert!((kernel.eval(&x).unwrap().loss - desc[..3].iter().sum::<f64>() / 3.0).abs() < 1e-5);
        let bad = BTreeMap::from([("k".to_string(), -2.0)]);
        let err = kernel.eval_with(&x, &bad).unwrap_err().to_string();
        assert!(err.contains("negative"), "{err}");
    }
}

/// topk and argsort over a masked set of pairs (issue 24: UNPG's negative pairs): the k largest pair
/// similarities and the row-major flat positions in ascending order, against a sort of the pairs in Rust;
/// ties (values from a small set) go by row-major position.
const PAIRS: &str = "loss f(s: f32[N, N], y: idx[N] < 2) -> (order: f32[N * N], top: f32[K]) {
    out order[u] = 1.0 * argsort[a, b | a < b && y[a] != y[b]](s[a, b])[u]
    out top[u: K] = topk[a, b | a < b && y[a] != y[b]](s[a, b]; k = K)[u]
    sum[u: K] (u + 1) * topk[a, b | a < b && y[a] != y[b]](s[a, b]; k = K)[u]
}";

#[test]
fn topk_and_argsort_order_masked_pairs() {
    let n = 6;
    for ties in [false, true] {
        let s = random(vec![n, n], 31 + u64::from(ties), ties);
        let y = Tensor::labels(vec![n], vec![0, 1, 1, 0, 1, 0]);
        let x = BTreeMap::from([("s".to_string(), s.clone()), ("y".to_string(), y.clone())]);
        let (v, labels) = (s.to_f64(), y.to_f64());
        // The pairs the mask keeps, by flat position, and their order.
        let kept: Vec<usize> = (0..n * n)
            .filter(|p| p / n < p % n && labels[p / n] != labels[p % n])
            .collect();
        let mut ascending = kept.clone();
        ascending.sort_by(|a, b| v[*a].partial_cmp(&v[*b]).unwrap()); // stable: ties by position
        let mut descending = kept.clone();
        descending.sort_by(|a, b| v[*b].partial_cmp(&v[*a]).unwrap());
        for backend in backends() {
            let src = PAIRS.replace("K]", "4]").replace("K)", "4)");
            let src = src.replace("sum[u: K]", "sum[u: 4]");
            let e = eval(&src, &x, backend);
            // Positions past the kept pairs' count are -1.
            let mut order: Vec<f64> = ascending.iter().map(|p| *p as f64).collect();
            order.resize(n * n, -1.0);
            assert_eq!(output(&e, "order"), order, "{backend:?} ties {ties}");
            for (g, p) in output(&e, "top").iter().zip(&descending) {
                assert!((g - v[*p]).abs() < 1e-6, "{backend:?} top {g} vs {}", v[*p]);
            }
            // The gradient reaches the chosen pairs only, with their position's weight.
            let g = e.grads.iter().find(|(n, _)| n == "s").unwrap().1.to_f64();
            if !ties {
                for (p, gp) in g.iter().enumerate() {
                    let want = descending
                        .iter()
                        .position(|q| *q == p)
                        .filter(|r| *r < 4)
                        .map_or(0.0, |r| (r + 1) as f64);
                    assert_eq!(*gp, want, "{backend:?} grad at {p}");
                }
            }
        }
    }
}

/// A sorting network's comparator tables are one node each (`table(…)[w]`), not trees of selects over the
/// wire: W6's optimized loss-and-gradient program stays small (it had 5,923 nodes as select trees), and its
/// code evaluates each partner with one read of the table.
#[test]
fn sorting_network_tables_are_single_nodes() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/sort_bce16.lx")).unwrap();
    let p = lossc::Program::from_source("sort.lx", &src).unwrap();
    let g = lossc::api::gradient(p.loss(None).unwrap()).unwrap();
    let tables = g
        .nodes()
        .iter()
        .filter(|n| matches!(n.expr, lossc::ir::Expr::Table { .. }))
        .count();
    let selects = g
        .nodes()
        .iter()
        .filter(|n| {
            matches!(
                n.expr,
                lossc::ir::Expr::Prim {
                    prim: lossc::prims::Prim::Select,
                    ..
                }
            )
        })
        .count();
    assert!(tables >= 16, "{tables} tables");
    assert!(selects < 300, "{selects} selects");
    assert!(g.nodes().len() < 2_500, "{} nodes", g.nodes().len());
    assert!(g.to_string().contains("table(1, 0, 3, 2, 5, 4"), "{g}");
}

//! The standard library: every loss checks, passes a gradient check and agrees between the JIT and the
//! interpreter; identities between families hold; `lossc stdlib` output is snapshotted.
//! (Conformance against the original libraries' code is tests/conformance.rs.)

use std::collections::BTreeMap;

mod common;

use lossc::data::Rng;
use lossc::ir::Function;
use lossc::{Program, Tensor};

fn inputs(f: &Function, rng: &mut Rng) -> BTreeMap<String, Tensor> {
    // A dimension an idx hyperparameter sizes (SAF's E) takes its default.
    let dims: Vec<i64> = (f.dims.iter())
        .map(|d| match d.hyper {
            Some(h) => f.hypers[h as usize].default as i64,
            None if d.name == "D" => 3,
            None => 5,
        })
        .collect();
    f.inputs
        .iter()
        .filter(|i| i.given())
        .map(|i| {
            let shape: Vec<usize> = i.shape.iter().map(|d| d.eval(&dims) as usize).collect();
            let n = shape.iter().product();
            let t = if i.elem == lossc::ir::ElemTy::Idx {
                let b = i.bound.as_ref().map_or(3, |b| b.eval(&dims)) as u64;
                // Both classes present for binary labels.
                Tensor::labels(
                    shape,
                    (0..n)
                        .map(|k| if b == 2 { (k % 2) as i64 } else { rng.below(b) as i64 })
                        .collect(),
                )
            } else if i.state.is_some() {
                // State as a previous call leaves it: positive (moving averages, temperatures).
                Tensor::float(shape, (0..n).map(|_| 0.1 + rng.uniform()).collect())
            } else if i.nograd {
                Tensor::float(
                    shape,
                    (0..n)
                        .map(|k| {
                            if f.name == "binary_hinge" {
                                [1.0, -1.0][k % 2]
                            } else {
                                (k % 2) as f64
                            }
                        })
                        .collect(),
                )
            } else if common::normal_scale(f, &i.name) != 1.0 {
                let scale = common::normal_scale(f, &i.name);
                Tensor::float(shape, (0..n).map(|_| scale * rng.normal()).collect())
            } else if f.name.starts_with("anyloss") {
                Tensor::float(shape, (0..n).map(|_| 0.45 + 0.1 * rng.uniform()).collect())
            } else {
                Tensor::float(shape, (0..n).map(|_| rng.normal()).collect())
            };
            (i.name.clone(), t)
        })
        .collect()
}

fn all_losses() -> Vec<(String, Function)> {
    lossc::stdlib::entries()
        .into_iter()
        .map(|e| {
            let p =
                Program::from_source("u.lx", &format!("use {}", e.path)).unwrap_or_else(|d| panic!("{}", d.render()));
            let name = e.path.rsplit("::").next().unwrap().to_string();
            let f = p.loss(Some(&name)).unwrap().clone();
            (e.path, f)
        })
        .collect()
}

#[test]
fn every_stdlib_loss_passes_a_gradient_check() {
    let mut rng = Rng::new(40);
    for (path, f) in all_losses() {
        let x = inputs(&f, &mut rng);
        for c in lossc::gradcheck::check(&f, &x, &BTreeMap::new(), 64).unwrap_or_else(|e| panic!("{path}: {e}")) {
            assert!(c.max_error <= 1e-5, "{path}: grad {} off by {}", c.name, c.max_error);
            assert!(c.checked > 0, "{path}: nothing checked for {}", c.name);
        }
    }
}

/// The loss and gradients of a float32 backend within 2e-4 (relative, or absolute below 1) of the
/// interpreter's.
fn assert_like_interpreter(path: &str, f: &Function, x: &BTreeMap<String, Tensor>, got: &lossc::Evaluation) {
    let interp = lossc::api::eval_grad(f, x, &BTreeMap::new()).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 2e-4 * b.abs().max(1.0);
    assert!(close(got.loss, interp.loss), "{path}: {} vs {}", got.loss, interp.loss);
    for ((n, a), (_, b)) in got.grads.iter().zip(&interp.grads) {
        for (p, q) in a.to_f64().iter().zip(b.to_f64()) {
            assert!(close(*p, q), "{path}: grad {n} {p} vs {q}");
        }
    }
}

#[cfg(feature = "jit")]
#[test]
fn every_stdlib_loss_agrees_between_jit_and_interpreter() {
    let mut rng = Rng::new(41);
    for (path, f) in all_losses() {
        let x = inputs(&f, &mut rng);
        let jit = lossc::Kernel::build(&f, &lossc::Compiler::new())
            .unwrap()
            .eval(&x)
            .unwrap();
        assert_like_interpreter(&path, &f, &x, &jit);
    }
}

/// Every stdlib loss with its pairwise tensors streamed a row at a time (lossc::opt::stream, forced at
/// these small sizes) agrees with the interpreter as the JIT's own program does; the pairwise families
/// are among those streamed.
#[cfg(feature = "jit")]
#[test]
fn every_stdlib_loss_streamed_agrees_with_the_interpreter() {
    let mut rng = Rng::new(41);
    let mut streamed = Vec::new();
    for (path, f) in all_losses() {
        let x = inputs(&f, &mut rng);
        let kernel = lossc::Kernel::build(&f, &lossc::Compiler::new().stream_pairwise(true)).unwrap();
        // (A loss calling an extern operation runs its pairwise tensors in a kernel of its own.)
        if !kernel.calls_externs() {
            let sizes = lossc::call::bind(kernel.function(), &x, &BTreeMap::new())
                .unwrap()
                .sizes;
            let native = kernel.native_for(&sizes).unwrap().unwrap();
            if !std::sync::Arc::ptr_eq(&native, &kernel.native_shared().unwrap()) {
                streamed.push(path.clone());
            }
        }
        let jit = kernel.eval(&x).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_like_interpreter(&path, &f, &x, &jit);
    }
    for family in [
        "contrastive::nt_xent",
        "contrastive::sogclr",
        "metric_learning::multi_similarity",
        "metric_learning::triplet_all",
        "divergence::cauchy_schwarz",
    ] {
        assert!(
            streamed.iter().any(|p| p.ends_with(family)),
            "{family} was not streamed: {streamed:?}"
        );
    }
}

fn eval(src: &str, name: &str, x: &BTreeMap<String, Tensor>, hypers: &[(&str, f64)]) -> lossc::Evaluation {
    let p = Program::from_source("t.lx", src).unwrap();
    let h: BTreeMap<String, f64> = hypers.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    lossc::api::eval_grad(p.loss(Some(name)).unwrap(), x, &h).unwrap()
}

fn classification_batch(seed: u64) -> BTreeMap<String, Tensor> {
    let mut rng = Rng::new(seed);
    BTreeMap::from([
        (
            "s".to_string(),
            Tensor::float(vec![6, 4], (0..24).map(|_| rng.normal()).collect()),
        ),
        (
            "y".to_string(),
            Tensor::labels(vec![6], (0..6).map(|_| rng.below(4) as i64).collect()),
        ),
    ])
}

#[test]
fn comp_sum_covers_gce_and_mae() {
    let x = classification_batch(1);
    let src = "use std::classification::*";
    // tau = 1 + q is GCE (no clamp binds for these logits); tau = 2 is 1 - p_y (MAE).
    let a = eval(src, "comp_sum", &x, &[("tau", 1.7)]);
    let b = eval(src, "gce", &x, &[("q", 0.7)]);
    assert!((a.loss - b.loss).abs() < 1e-12, "{} vs {}", a.loss, b.loss);
    let a = eval(src, "comp_sum", &x, &[("tau", 2.0)]);
    let b = eval(src, "mae", &x, &[]);
    assert!((a.loss - b.loss).abs() < 1e-12);
    // tau -> 1 approaches cross-entropy.
    let a = eval(src, "comp_sum", &x, &[("tau", 1.0 - 1e-7)]);
    let b = eval(src, "cross_entropy", &x, &[]);
    assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
}

#[test]
fn done_has_the_kl_dro_gradient_but_not_its_value() {
    let x = classification_batch(2);
    let src = "use std::dro::*";
    let a = eval(src, "kl_dro", &x, &[]);
    let b = eval(src, "done_reweighted", &x, &[]);
    assert!((a.loss - b.loss).abs() > 1e-3);
    for (p, q) in a.grads[0].1.to_f64().iter().zip(b.grads[0].1.to_f64()) {
        assert!((p - q).abs() < 1e-12, "{p} vs {q}");
    }
}

#[test]
fn detached_focal_has_the_same_value_and_another_gradient() {
    let x = classification_batch(3);
    let src = "use std::focal::*";
    let a = eval(src, "focal_multiclass", &x, &[]);
    let b = eval(src, "focal_multiclass_detached", &x, &[]);
    assert!((a.loss - b.loss).abs() < 1e-12);
    let diff: f64 = a.grads[0]
        .1
        .to_f64()
        .iter()
        .zip(b.grads[0].1.to_f64())
        .map(|(p, q)| (p - q).abs())
        .sum();
    assert!(diff > 1e-3);
}

#[test]
fn cauchy_schwarz_is_symmetric_and_zero_on_equal_sets() {
    let mut rng = Rng::new(4);
    let x: Vec<f64> = (0..12).map(|_| rng.normal()).collect();
    let z: Vec<f64> = (0..9).map(|_| rng.normal() + 0.5).collect();
    let src = "use std::divergence::cauchy_schwarz";
    let m = |a: &[f64], na: usize, b: &[f64], nb: usize| {
        BTreeMap::from([
            ("x".to_string(), Tensor::float(vec![na, 3], a.to_vec())),
            ("z".to_string(), Tensor::float(vec![nb, 3], b.to_vec())),
        ])
    };
    let xz = eval(src, "cauchy_schwarz", &m(&x, 4, &z, 3), &[]).loss;
    let zx = eval(src, "cauchy_schwarz", &m(&z, 3, &x, 4), &[]).loss;
    assert!(xz > 0.0 && (xz - zx).abs() < 1e-12);
    assert!(eval(src, "cauchy_schwarz", &m(&x, 4, &x, 4), &[]).loss.abs() < 1e-12);
}

#[test]
fn ldr_kl_matches_the_reference_formula() {
    let x = classification_batch(5);
    let s = x["s"].to_f64();
    let y: Vec<usize> = x["y"].to_f64().iter().map(|v| *v as usize).collect();
    let (c_margin, lambda) = (2.0, 1.0);
    let softplus = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
    let mut total = 0.0;
    for i in 0..6 {
        let g: Vec<f64> = (0..4).map(|k| softplus(s[i * 4 + k])).collect();
        let mean = g.iter().sum::<f64>() / 4.0;
        let g: Vec<f64> = g.iter().map(|v| v / mean).collect();
        let d: Vec<f64> = (0..4)
            .map(|k| c_margin * f64::from(u8::from(k != y[i])) + g[k] - g[y[i]])
            .collect();
        total += lambda * (d.iter().map(|v| (v / lambda).exp()).sum::<f64>() / 4.0).ln();
    }
    let got = eval("use std::robust::ldr_kl", "ldr_kl", &x, &[]).loss;
    assert!((got - total / 6.0).abs() < 1e-12, "{got} vs {}", total / 6.0);
}

#[test]
fn stdlib_listing() {
    insta::assert_snapshot!("stdlib_listing", lossc::stdlib::listing());
    let d = lossc::stdlib::describe("ldr_kl").unwrap();
    assert!(d.starts_with("std::robust::ldr_kl") && d.contains("loss ldr_kl("));
    assert!(lossc::stdlib::describe("nope").is_none());
}

#[test]
fn triplet_margin_matches_torch_formula() {
    let mut rng = Rng::new(6);
    let mk = |rng: &mut Rng| Tensor::float(vec![4, 3], (0..12).map(|_| rng.normal()).collect());
    let x = BTreeMap::from([
        ("a".to_string(), mk(&mut rng)),
        ("p".to_string(), mk(&mut rng)),
        ("n".to_string(), mk(&mut rng)),
    ]);
    let (a, p, n) = (x["a"].to_f64(), x["p"].to_f64(), x["n"].to_f64());
    let dist = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(s, t)| (s - t + 1e-6).powi(2)).sum::<f64>().sqrt();
    let want = (0..4)
        .map(|i| {
            (dist(&a[i * 3..i * 3 + 3], &p[i * 3..i * 3 + 3]) - dist(&a[i * 3..i * 3 + 3], &n[i * 3..i * 3 + 3]) + 1.0)
                .max(0.0)
        })
        .sum::<f64>()
        / 4.0;
    let got = eval("use std::metric_learning::triplet_margin", "triplet_margin", &x, &[]).loss;
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn labelled_nt_xent_with_one_pair_per_class_is_cross_entropy_over_negatives() {
    // Two classes of two: each anchor has one positive; -log(e^s_ap / (e^s_ap + sum_neg e^s_an)).
    let mut rng = Rng::new(7);
    let xs: Vec<f64> = (0..8).map(|_| rng.normal()).collect();
    let x = BTreeMap::from([
        ("x".to_string(), Tensor::float(vec![4, 2], xs.clone())),
        ("y".to_string(), Tensor::labels(vec![4], vec![0, 0, 1, 1])),
    ]);
    let row = |i: usize| &xs[i * 2..i * 2 + 2];
    let cos = |i: usize, j: usize| {
        let (u, v) = (row(i), row(j));
        (u[0] * v[0] + u[1] * v[1]) / ((u[0] * u[0] + u[1] * u[1]).sqrt() * (v[0] * v[0] + v[1] * v[1]).sqrt()) / 0.07
    };
    let (pairs, negs) = (
        [(0, 1), (1, 0), (2, 3), (3, 2)],
        |a: usize| if a < 2 { [2, 3] } else { [0, 1] },
    );
    let want = pairs
        .iter()
        .map(|&(a, p)| {
            let sp = cos(a, p);
            (sp.exp() + negs(a).iter().map(|&n| cos(a, n).exp()).sum::<f64>()).ln() - sp
        })
        .sum::<f64>()
        / 4.0;
    let got = eval("use std::contrastive::nt_xent_labels", "nt_xent_labels", &x, &[]).loss;
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
}

//! Helpers the backend tests share: the program files they run and seeded random inputs.
#![allow(dead_code)]

#[cfg(feature = "jit")]
pub mod aot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lossc::Tensor;
use lossc::data::Rng;
use lossc::ir::Function;

/// The `.lx` files of `dirs` below `root`, sorted.
pub fn lx_files(root: &Path, dirs: &[&str]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in dirs {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "lx") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// How `nograd` float inputs are drawn.
#[derive(Clone, Copy)]
pub enum Nograd {
    /// Standard normal, like every other float input.
    Normal,
    /// Uniform in [0.5, 1.5): temperatures, weights and state away from 0, where f32 exponentials of
    /// `s / t` overflow while the f64 interpreter stays finite.
    AwayFromZero,
}

/// Seeded inputs of `f` at `sizes` (one per dimension symbol): labels uniform below their bound (or 3),
/// floats standard normal, `nograd` floats as `nograd` says.
pub fn random_inputs(f: &Function, sizes: &[i64], rng: &mut Rng, nograd: Nograd) -> BTreeMap<String, Tensor> {
    // (An extern call's outputs are computed by the kernel, not passed.)
    f.inputs
        .iter()
        .filter(|i| i.given())
        .map(|i| {
            let shape: Vec<usize> = i.shape.iter().map(|d| d.eval(sizes) as usize).collect();
            let n = shape.iter().product();
            let t = if i.elem == lossc::ir::ElemTy::Idx {
                let b = i.bound.as_ref().map_or(3, |b| b.eval(sizes));
                Tensor::labels(shape, (0..n).map(|_| rng.below(b.max(1) as u64) as i64).collect())
            } else if i.nograd && matches!(nograd, Nograd::AwayFromZero) {
                Tensor::float(shape, (0..n).map(|_| 0.5 + rng.uniform()).collect())
            } else {
                let scale = normal_scale(f, &i.name);
                Tensor::float(shape, (0..n).map(|_| scale * rng.normal()).collect())
            };
            (i.name.clone(), t)
        })
        .collect()
}

/// The scale of an input's random normal values: 0.3 for AMCL's temperature MLP (scores of order 1, so
/// temperatures stay far from tau_min = 1e-5, where 1/tau near 1e5 leaves float32 gradients a few 1e-4
/// off through cancellation), else 1.
pub fn normal_scale(f: &Function, input: &str) -> f64 {
    match f.name.starts_with("amcl") && ["w1", "b1", "w2", "b2"].contains(&input) {
        true => 0.3,
        false => 1.0,
    }
}

/// The bundled inputs of every example that has them (`examples/data/NAME/*.npy`): (the example's
/// path, its name, its inputs by name).
pub fn bundled_examples(root: &Path) -> Vec<(PathBuf, String, BTreeMap<String, Tensor>)> {
    let mut out = Vec::new();
    for path in lx_files(root, &["examples"]) {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let Ok(dir) = std::fs::read_dir(root.join("examples/data").join(&name)) else {
            continue;
        };
        let mut inputs = BTreeMap::new();
        for e in dir {
            let p = e.unwrap().path();
            inputs.insert(
                p.file_stem().unwrap().to_str().unwrap().to_string(),
                lossc::data::load_npy(&p).unwrap(),
            );
        }
        out.push((path, name, inputs));
    }
    out
}

/// Inputs of a low-temperature loss τ_i · CE(z_i / τ_i, y_i): logits ±40 with six near-ties per row at
/// 39.9, τ in [0.01, 0.05] (|z / τ| up to 4,000, as in CLIP-like and low-temperature LM losses).
#[allow(dead_code)]
pub fn low_temperature_inputs(n: usize, v: usize, seed: u64) -> BTreeMap<String, Tensor> {
    let mut rng = lossc::data::Rng::new(seed);
    let z: Vec<f64> = (0..n * v)
        .map(|k| {
            if k % v < 6 {
                39.9 + 0.05 * rng.normal()
            } else {
                80.0 * rng.uniform() - 40.0
            }
        })
        .map(|x| x as f32 as f64)
        .collect();
    let y: Vec<i64> = (0..n).map(|_| rng.below(v as u64) as i64).collect();
    let tau: Vec<f64> = (0..n).map(|_| (0.01 + 0.04 * rng.uniform()) as f32 as f64).collect();
    BTreeMap::from([
        ("z".to_string(), Tensor::float(vec![n, v], z)),
        ("y".to_string(), Tensor::labels(vec![n], y)),
        ("tau".to_string(), Tensor::float(vec![n], tau)),
    ])
}

/// τ · CE(z / τ) with a per-row temperature.
#[allow(dead_code)]
pub const LOW_TEMPERATURE: &str = "loss tce(z: f32[N, V], y: idx[N] < V, tau: f32[N]) {
    mean[i] tau[i] * ((logsumexp[v] z[i, v] / tau[i]) - z[i, y[i]] / tau[i])
}";

/// Every gradient of `got` within `relative` of the largest magnitude of `want`'s (per input).
#[allow(dead_code)]
pub fn assert_float32_gradients(got: &lossc::Evaluation, want: &lossc::Evaluation, relative: f64) {
    for ((name, g), (_, w)) in got.grads.iter().zip(&want.grads) {
        let (g, w) = (g.to_f64(), w.to_f64());
        let scale = w.iter().fold(0f64, |a, b| a.max(b.abs()));
        let err = g.iter().zip(&w).fold(0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            err <= relative * scale,
            "grad_{name}: error {err:e} at a scale of {scale:e}"
        );
    }
}

/// `sum[i, j] x[i, T(j - 1)] * U(j + 2)` over `x: f32[3, 4]`, T an integer and U a float constant table
/// ([`lossc::ir::Expr::Table`]) read beyond their ends at j = 0 and j ≥ 2, where a read takes the nearest
/// entry; with its inputs, its loss and the gradient of `x` worked out by hand.
pub fn tables_read_beyond_their_ends() -> (Function, BTreeMap<String, Tensor>, f64, Vec<f64>) {
    use lossc::ir::{Expr, IndexId, ReduceOp, Role, Scalar, TensorRef, Value};
    use lossc::prims::Prim;
    let src = "loss f(x: f32[N, 4]) { sum[i, j] x[i, j] }";
    let module = lossc::Compiler::new().compile_source("t.lx", src).unwrap();
    let mut f = module.kernel(None).unwrap().function().clone();
    let span = f.span;
    let index = |f: &Function, name: &str| IndexId(f.indices.iter().position(|v| v.name == name).unwrap() as u32);
    let (i, j) = (index(&f, "i"), index(&f, "j"));
    let iv = f.add(Expr::Index(i), Scalar::Int, span).unwrap();
    let jv = f.add(Expr::Index(j), Scalar::Int, span).unwrap();
    let one = f.add(Expr::Int(1), Scalar::Int, span).unwrap();
    let two = f.add(Expr::Int(2), Scalar::Int, span).unwrap();
    let below = f.prim(Prim::Sub, &[jv, one], span).unwrap();
    let above = f.prim(Prim::Add, &[jv, two], span).unwrap();
    let t = f.table(below, &[3, 0, 2, 1].map(Value::I), span).unwrap();
    let u = f.table(above, &[1.0, -2.0, 0.5, 4.0].map(Value::F), span).unwrap();
    let load = Expr::Load {
        tensor: TensorRef::Input(0),
        subs: vec![iv, t].into(),
    };
    let load = f.add(load, Scalar::Float, span).unwrap();
    let term = f.prim(Prim::Mul, &[load, u], span).unwrap();
    let sum = Expr::Reduce {
        op: ReduceOp::Sum,
        indices: vec![i, j].into(),
        mask: None,
        body: term,
    };
    let sum = f.add(sum, Scalar::Float, span).unwrap();
    let loss = f.tensors.iter().position(|t| t.role == Role::Loss).unwrap();
    f.tensors[loss].body = sum;
    assert!(lossc::ir::verify::verify(&f).is_ok());
    let x: Vec<f64> = (0..12).map(|k| k as f64 * 0.5 - 2.0).collect();
    // j = 0..4 reads column T(max(j - 1, 0)) = 3, 3, 0, 2, weighed by U(min(j + 2, 3)) = 0.5, 4, 4, 4.
    let (cols, weights) = ([3usize, 3, 0, 2], [0.5, 4.0, 4.0, 4.0]);
    let mut loss = 0.0;
    let mut grad = vec![0.0; 12];
    for r in 0..3 {
        for c in 0..4 {
            loss += x[r * 4 + cols[c]] * weights[c];
            grad[r * 4 + cols[c]] += weights[c];
        }
    }
    let inputs = BTreeMap::from([("x".to_string(), Tensor::float(vec![3, 4], x))]);
    (f, inputs, loss, grad)
}

/// Whether `e`'s loss and only gradient are `loss` and `grad` (float32 accuracy).
pub fn assert_loss_and_grad(what: &str, e: &lossc::Evaluation, loss: f64, grad: &[f64]) {
    assert!((e.loss - loss).abs() < 1e-4, "{what}: {} vs {loss}", e.loss);
    let g = e.grads[0].1.to_f64();
    assert!(
        g.iter().zip(grad).all(|(a, b)| (a - b).abs() < 1e-5),
        "{what}: {g:?} vs {grad:?}"
    );
}

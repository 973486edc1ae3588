//! Per-sample losses (`-> f32[N]`): the value is a tensor (output `value`) and the gradients are
//! vector-Jacobian products with the call's `cotangent`.

use std::collections::BTreeMap;

use lossc::data::Rng;
use lossc::{Backend, CallError, Compiler, Kernel, Tensor};

const PER_SAMPLE: &str = "loss ce_per(s: f32[N, C], y: idx[N] < C, t: f32 = 1.0) -> f32[N] {
    let l[i] = (logsumexp[k] s[i, k] / t) - s[i, y[i]] / t
    l
}";

const WEIGHTED: &str = "loss ce_weighted(s: f32[N, C], y: idx[N] < C, v: f32[N] nograd, t: f32 = 1.0) {
    sum[i] v[i] * ((logsumexp[k] s[i, k] / t) - s[i, y[i]] / t)
}";

fn kernel(src: &str, backend: Backend) -> Kernel {
    Compiler::new()
        .backend(backend)
        .compile_source("p.lx", src)
        .unwrap_or_else(|d| panic!("{}", d.render()))
        .kernel(None)
        .unwrap()
}

#[test]
fn vjp_equals_the_gradient_of_the_weighted_sum() {
    let mut rng = Rng::new(3);
    let s = Tensor::float(vec![5, 4], (0..20).map(|_| 3.0 * rng.normal()).collect());
    let y = Tensor::labels(vec![5], vec![0, 3, 1, 1, 2]);
    let v = Tensor::float(vec![5], vec![0.5, -1.0, 2.0, 0.0, 1.5]);
    let hypers = BTreeMap::from([("t".to_string(), 0.7)]);
    let base = BTreeMap::from([("s".to_string(), s), ("y".to_string(), y)]);
    let mut weighted_inputs = base.clone();
    weighted_inputs.insert("v".into(), v.clone());
    for backend in [Backend::Interp, Backend::Jit] {
        if backend == Backend::Jit && !cfg!(feature = "jit") {
            continue;
        }
        let per = kernel(PER_SAMPLE, backend).vjp(&base, &hypers, v.clone()).unwrap();
        let want = kernel(WEIGHTED, backend).eval_with(&weighted_inputs, &hypers).unwrap();
        let tol = if backend == Backend::Interp { 1e-12 } else { 1e-5 };
        assert!((per.loss - want.loss).abs() < tol);
        for (a, b) in per.grads[0].1.to_f64().iter().zip(want.grads[0].1.to_f64()) {
            assert!((a - b).abs() < tol, "{backend:?}: {a} vs {b}");
        }
        // The per-sample values themselves.
        let values = per.outputs.iter().find(|(n, _)| n == "value").unwrap().1.to_f64();
        let weighted: f64 = values.iter().zip(v.to_f64()).map(|(a, b)| a * b).sum();
        assert!((weighted - want.loss).abs() < tol);
        assert_eq!(per.grads.len(), 1, "the cotangent gets no gradient");
    }
}

#[test]
fn vjp_calls_are_checked() {
    let k = kernel(PER_SAMPLE, Backend::Interp);
    let base = BTreeMap::from([
        ("s".to_string(), Tensor::float(vec![2, 3], vec![0.0; 6])),
        ("y".to_string(), Tensor::labels(vec![2], vec![0, 1])),
    ]);
    let e = k.vjp(&base, &BTreeMap::new(), Tensor::float(vec![3], vec![1.0; 3]));
    assert!(matches!(e, Err(CallError::ShapeMismatch { .. })), "{e:?}");
    let e = k.eval(&base);
    assert!(matches!(e, Err(CallError::MissingInput { .. })), "{e:?}");
    let scalar = kernel(WEIGHTED, Backend::Interp);
    let e = scalar.vjp(&base, &BTreeMap::new(), Tensor::float(vec![2], vec![1.0; 2]));
    assert!(matches!(e, Err(CallError::UnknownInput { .. })), "{e:?}");
}

#[test]
fn per_sample_gradients_pass_a_gradient_check() {
    let p = lossc::Program::from_source("p.lx", PER_SAMPLE).unwrap();
    let mut rng = Rng::new(9);
    let inputs = BTreeMap::from([
        (
            "s".to_string(),
            Tensor::float(vec![3, 4], (0..12).map(|_| rng.normal()).collect()),
        ),
        ("y".to_string(), Tensor::labels(vec![3], vec![2, 0, 3])),
        ("cotangent".to_string(), Tensor::float(vec![3], vec![1.0, -2.0, 0.5])),
    ]);
    for c in lossc::gradcheck::check(p.loss(None).unwrap(), &inputs, &BTreeMap::new(), 64).unwrap() {
        assert!(c.checked > 0 && c.max_error < 1e-6, "{} off by {}", c.name, c.max_error);
    }
}

//! Semantics of the reference interpreter and the typed errors of a bad call.

use std::collections::BTreeMap;

use lossc::{CallError, Program, Tensor};

fn eval(src: &str, inputs: &[(&str, Tensor)]) -> Result<f64, CallError> {
    let p = Program::from_source("t.lx", src).unwrap_or_else(|d| panic!("{}", d.render()));
    let f = p.loss(None).unwrap();
    let m: BTreeMap<String, Tensor> = inputs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    lossc::api::eval(f, &m, &BTreeMap::new()).map(|e| e.loss)
}

fn x(v: &[f64]) -> Tensor {
    Tensor::float(vec![v.len()], v.to_vec())
}

#[test]
fn empty_reductions() {
    let none = [("x", x(&[1.0, 2.0]))];
    assert_eq!(
        eval("loss f(x: f32[N]) { sum[i | x[i] > 5] x[i] }", &none).unwrap(),
        0.0
    );
    assert_eq!(
        eval("loss f(x: f32[N]) { prod[i | x[i] > 5] x[i] }", &none).unwrap(),
        1.0
    );
    assert_eq!(
        eval("loss f(x: f32[N]) { max[i | x[i] > 5] x[i] }", &none).unwrap(),
        f64::NEG_INFINITY
    );
    assert_eq!(
        eval("loss f(x: f32[N]) { min[i | x[i] > 5] x[i] }", &none).unwrap(),
        f64::INFINITY
    );
    assert_eq!(
        eval("loss f(x: f32[N]) { logsumexp[i | x[i] > 5] x[i] }", &none).unwrap(),
        f64::NEG_INFINITY
    );
    assert_eq!(eval("loss f(x: f32[N]) { count[i] x[i] > 5 }", &none).unwrap(), 0.0);
    assert!(
        eval("loss f(x: f32[N]) { mean[i | x[i] > 5] x[i] }", &none)
            .unwrap()
            .is_nan()
    );
}

#[test]
fn logsumexp_is_stable() {
    let big = [("x", x(&[1e4, 1e4 - 1.0, -1e4]))];
    let v = eval("loss f(x: f32[N]) { logsumexp[i] x[i] }", &big).unwrap();
    assert!((v - (1e4 + (1.0 + (-1f64).exp()).ln())).abs() < 1e-9);
    let v = eval(
        "loss f(x: f32[N]) { sum[i] softplus(x[i]) + log(sigmoid(-x[i]) + 1) }",
        &big,
    )
    .unwrap();
    assert!(v.is_finite());
}

#[test]
fn select_and_logic_evaluate_lazily() {
    // The guarded load x[k - 1] is never evaluated at k = 0.
    let v = eval(
        "loss f(x: f32[N]) { sum[k: N] if k > 0 then x[k - 1] else 0 }",
        &[("x", x(&[1.0, 2.0, 4.0]))],
    );
    assert_eq!(v.unwrap(), 3.0);
    let v = eval(
        "loss f(x: f32[N]) { count[k: N] k > 0 && x[k - 1] > 1.5 }",
        &[("x", x(&[1.0, 2.0, 4.0]))],
    );
    assert_eq!(v.unwrap(), 1.0);
}

#[test]
fn integer_arithmetic_and_dims() {
    let v = eval(
        "loss f(x: f32[N]) { sum[i: N] x[N - 1 - i] * i }",
        &[("x", x(&[1.0, 2.0, 4.0]))],
    )
    .unwrap();
    assert_eq!(v, 4.0 * 0.0 + 2.0 * 1.0 + 1.0 * 2.0);
    assert_eq!(
        eval("loss f(x: f32[N]) { 7 / 2 + N }", &[("x", x(&[0.0; 4]))]).unwrap(),
        7.5
    );
}

#[test]
fn max_takes_nan_along() {
    let v = eval("loss f(x: f32[N]) { max[i] x[i] }", &[("x", x(&[1.0, f64::NAN, 3.0]))]).unwrap();
    assert!(v.is_nan());
}

#[test]
fn reductions_over_invariant_bodies_are_memoized() {
    // O(N^3) without memoization; N = 200 would take seconds in a debug build.
    let n = 200;
    let src = "loss f(x: f32[N]) { sum[i: N] sum[j] x[j] / (sum[k] exp(x[k])) }";
    let v = eval(src, &[("x", x(&vec![0.5; n]))]).unwrap();
    assert!((v - n as f64 * n as f64 * 0.5 / (n as f64 * 0.5f64.exp())).abs() < 1e-9);
}

#[test]
fn out_of_range_subscript_is_a_typed_error() {
    let e = eval("loss f(x: f32[N]) { sum[i: N] x[i + 1] }", &[("x", x(&[1.0, 2.0]))]).unwrap_err();
    assert!(
        matches!(
            e,
            CallError::IndexOutOfRange {
                axis: 0,
                value: 2,
                size: 2,
                ..
            }
        ),
        "{e}"
    );
}

const CE: &str =
    "loss ce(s: f32[N, C], y: idx[N] < C, t: f32 = 1.0) { mean[i] (logsumexp[k] s[i, k] / t) - s[i, y[i]] }";

fn ce_inputs(s_shape: Vec<usize>, y: Vec<i64>) -> BTreeMap<String, Tensor> {
    let n: usize = s_shape.iter().product();
    BTreeMap::from([
        ("s".to_string(), Tensor::float(s_shape, vec![0.5; n])),
        ("y".to_string(), Tensor::labels(vec![y.len()], y)),
    ])
}

fn ce_call(inputs: &BTreeMap<String, Tensor>, hypers: &[(&str, f64)]) -> Result<f64, CallError> {
    let p = Program::from_source("ce.lx", CE).unwrap();
    let h: BTreeMap<String, f64> = hypers.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    lossc::api::eval(p.loss(None).unwrap(), inputs, &h).map(|e| e.loss)
}

#[test]
fn bad_calls_are_typed_errors() {
    assert!(ce_call(&ce_inputs(vec![2, 3], vec![0, 2]), &[]).is_ok());
    let e = ce_call(&ce_inputs(vec![2, 3], vec![0, 3]), &[]).unwrap_err();
    assert!(
        matches!(&e, CallError::LabelOutOfRange { position, value: 3, size: 3, .. } if position == &vec![1]),
        "{e}"
    );
    let e = ce_call(&ce_inputs(vec![2, 3], vec![0, -1]), &[]).unwrap_err();
    assert!(matches!(e, CallError::LabelOutOfRange { value: -1, .. }), "{e}");
    let e = ce_call(&ce_inputs(vec![3, 3], vec![0, 1]), &[]).unwrap_err();
    assert!(
        matches!(&e, CallError::ShapeMismatch { input, dim, expected: 3, got: 2, .. } if input == "y" && dim == "N"),
        "{e}"
    );
    let e = ce_call(&ce_inputs(vec![6], vec![0, 1]), &[]).unwrap_err();
    assert!(matches!(e, CallError::RankMismatch { expected: 2, .. }), "{e}");
    let mut missing = ce_inputs(vec![2, 3], vec![0, 1]);
    missing.remove("y");
    assert!(matches!(
        ce_call(&missing, &[]).unwrap_err(),
        CallError::MissingInput { .. }
    ));
    let mut extra = ce_inputs(vec![2, 3], vec![0, 1]);
    extra.insert("z".into(), Tensor::scalar(1.0));
    assert!(matches!(
        ce_call(&extra, &[]).unwrap_err(),
        CallError::UnknownInput { .. }
    ));
    let mut wrong = ce_inputs(vec![2, 3], vec![0, 1]);
    wrong.insert("y".into(), Tensor::float(vec![2], vec![0.0, 1.0]));
    assert!(matches!(
        ce_call(&wrong, &[]).unwrap_err(),
        CallError::WrongDtype { .. }
    ));
    let mut short = ce_inputs(vec![2, 3], vec![0, 1]);
    short.insert("s".into(), Tensor::float(vec![2, 3], vec![0.0; 5]));
    assert!(matches!(
        ce_call(&short, &[]).unwrap_err(),
        CallError::LengthMismatch { len: 5, needed: 6, .. }
    ));
    let mut huge = ce_inputs(vec![2, 3], vec![0, 1]);
    huge.insert("s".into(), Tensor::float(vec![1 << 40, 1 << 40], vec![]));
    assert!(matches!(ce_call(&huge, &[]).unwrap_err(), CallError::TooLarge { .. }));
    assert!(matches!(
        ce_call(&ce_inputs(vec![2, 3], vec![0, 1]), &[("tt", 1.0)]).unwrap_err(),
        CallError::UnknownHyper { .. }
    ));
    let a = ce_call(&ce_inputs(vec![2, 3], vec![0, 1]), &[("t", 2.0)]).unwrap();
    let b = ce_call(&ce_inputs(vec![2, 3], vec![0, 1]), &[]).unwrap();
    assert!((a - b).abs() > 1e-6);
}

#[test]
fn negative_ranges_are_rejected() {
    let src = "loss f(x: f32[N]) { let p[t: N - 5] = 1.0\n sum[t] p[t] }";
    let p = Program::from_source("neg.lx", src).unwrap();
    let m = BTreeMap::from([("x".to_string(), x(&[1.0]))]);
    let e = lossc::api::eval(p.loss(None).unwrap(), &m, &BTreeMap::new()).unwrap_err();
    assert!(matches!(e, CallError::NegativeDim { value: -4, .. }), "{e}");
}

#[test]
fn every_primitive_has_a_surface_or_is_an_operator() {
    // The table is the single list: every primitive prints, and surface names are unique.
    let mut names = std::collections::HashSet::new();
    for p in lossc::prims::Prim::ALL {
        assert!(names.insert(p.name()), "{} twice", p.name());
        if let Some(s) = p.surface() {
            assert_eq!(lossc::prims::Prim::from_surface(s), Some(*p));
        }
    }
}

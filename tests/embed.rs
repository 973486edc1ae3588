//! The slice API ([`lossc::Workspace`]): calls over the caller's f32/i64/i32 memory give exactly what the
//! `Tensor` API gives on the same backend, a workspace reused across calls (same sizes, then new sizes)
//! never returns stale results, and bad calls fail with the `Tensor` API's errors.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use lossc::data::{Data, Rng};
use lossc::embed::{Input, View};
use lossc::{Backend, Compiler, Evaluation, Tensor, Workspace};

/// Inputs as the slice API takes them: floats rounded to f32, labels as int64 or int32.
struct Owned {
    name: String,
    shape: Vec<usize>,
    floats: Vec<f32>,
    labels: Vec<i64>,
    narrow: Vec<i32>,
}

fn owned(inputs: &BTreeMap<String, Tensor>) -> Vec<Owned> {
    inputs
        .iter()
        .map(|(name, t)| {
            let (floats, labels) = match &t.data {
                Data::Float(v) => (v.iter().map(|x| *x as f32).collect(), vec![]),
                Data::Int(v) => (vec![], v.clone()),
            };
            Owned {
                name: name.clone(),
                shape: t.shape.clone(),
                narrow: labels.iter().map(|x| *x as i32).collect(),
                floats,
                labels,
            }
        })
        .collect()
}

fn views(owned: &[Owned], int32: bool) -> Vec<Input<'_>> {
    owned
        .iter()
        .map(|o| {
            let data = match (o.floats.is_empty() && !o.labels.is_empty(), int32) {
                (true, true) => View::I32(&o.narrow),
                (true, false) => View::I64(&o.labels),
                _ => View::F32(&o.floats),
            };
            Input {
                name: &o.name,
                shape: &o.shape,
                data,
            }
        })
        .collect()
}

/// Calls `workspace` and checks loss, gradients and outputs against `expected` bit for bit (`exact`) or
/// to f32 rounding of f64 results.
fn check(what: &str, workspace: &mut Workspace, inputs: &[Input], expected: &Evaluation, exact: bool) {
    let mut grads: Vec<(String, Vec<f32>)> = expected
        .grads
        .iter()
        .map(|(n, t)| (n.clone(), vec![f32::NAN; t.len()]))
        .collect();
    let mut slots: Vec<(&str, &mut [f32])> = grads.iter_mut().map(|(n, v)| (n.as_str(), &mut v[..])).collect();
    let loss = workspace.call(inputs, &BTreeMap::new(), &mut slots).unwrap();
    let same = |a: f32, b: f64| {
        if exact {
            a.to_bits() == (b as f32).to_bits() || (a.is_nan() && b.is_nan())
        } else {
            (a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()) || (a.is_nan() && b.is_nan())
        }
    };
    assert!(same(loss, expected.loss), "{what}: loss {loss} vs {}", expected.loss);
    for ((name, got), (_, want)) in grads.iter().zip(&expected.grads) {
        for (a, b) in got.iter().zip(want.to_f64()) {
            assert!(same(*a, b), "{what}: grad {name}: {a} vs {b}");
        }
        // Written into the caller's slice on the JIT, kept in the workspace elsewhere.
        if let Some(kept) = workspace.gradient(name) {
            assert_eq!(kept, &got[..], "{what}: gradient({name})");
        }
    }
    for (name, want) in &expected.outputs {
        let got = workspace
            .output(name)
            .unwrap_or_else(|| panic!("{what}: output {name}"));
        for (a, b) in got.iter().zip(want.to_f64()) {
            assert!(same(*a, b), "{what}: output {name}: {a} vs {b}");
        }
    }
}

fn f32_inputs(inputs: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let mut inputs = inputs.clone();
    for t in inputs.values_mut() {
        if let Data::Float(v) = &mut t.data {
            v.iter_mut().for_each(|x| *x = *x as f32 as f64);
        }
    }
    inputs
}

#[test]
fn slices_give_what_tensors_give_on_every_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut rng = Rng::new(71);
    for path in common::lx_files(root, &["examples", "tests/in"]) {
        for backend in [Backend::Jit, Backend::Interp] {
            let module = Compiler::new().backend(backend).threads(2).compile_file(&path).unwrap();
            for name in module.losses() {
                let kernel = module.kernel(Some(name)).unwrap();
                let mut workspace = kernel.workspace();
                // Two calls at the same sizes (the buffers are kept), then new sizes (they are not).
                for (call, sizes) in [[5i64, 4, 3, 6], [5, 4, 3, 6], [7, 2, 5, 3]].iter().enumerate() {
                    let f = kernel.function();
                    let s: Vec<i64> = f.dims.iter().enumerate().map(|(k, _)| sizes[k % 4]).collect();
                    let inputs = f32_inputs(&common::random_inputs(f, &s, &mut rng, common::Nograd::AwayFromZero));
                    let what = format!("{} {name} {backend:?} call {call}", path.display());
                    let storage = owned(&inputs);
                    match kernel.eval(&inputs) {
                        Ok(expected) => {
                            check(&what, &mut workspace, &views(&storage, call == 1), &expected, true);
                        }
                        Err(e) => {
                            let got = workspace.call(&views(&storage, false), &BTreeMap::new(), &mut []);
                            assert_eq!(got.unwrap_err(), e, "{what}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bad_calls_fail_as_the_tensor_api_does() {
    let module = Compiler::new()
        .compile_source(
            "ce.lx",
            "loss ce(s: f32[N, C], y: idx[N] < C, t: f32 = 1.0) { mean[i] (logsumexp[k] s[i, k] / t) - s[i, y[i]] / t }",
        )
        .unwrap();
    let kernel = module.kernel(None).unwrap();
    let mut workspace = kernel.workspace();
    let s = [0f32; 6];
    let y = [0i64, 5];
    let y32 = [0i32, 3];
    let no_hypers = BTreeMap::new();
    // A label out of range, as int64 and as int32.
    let e = workspace
        .call(
            &[Input::f32("s", &[2, 3], &s), Input::i64("y", &[2], &y)],
            &no_hypers,
            &mut [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("label out of range"), "{e}");
    let e = workspace
        .call(
            &[Input::f32("s", &[2, 3], &s), Input::i32("y", &[2], &y32)],
            &no_hypers,
            &mut [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("is 3, but labels must lie in 0..C"), "{e}");
    // The shape disagrees with the slice's length; a missing input; an input given twice.
    let e = workspace
        .call(
            &[Input::f32("s", &[2, 2], &s), Input::i64("y", &[2], &[0, 1])],
            &no_hypers,
            &mut [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("holds 6 elements"), "{e}");
    let e = workspace
        .call(&[Input::f32("s", &[2, 3], &s)], &no_hypers, &mut [])
        .unwrap_err();
    assert!(e.to_string().contains("missing input `y`"), "{e}");
    let e = workspace
        .call(
            &[
                Input::f32("s", &[2, 3], &s),
                Input::f32("s", &[2, 3], &s),
                Input::i64("y", &[2], &[0, 1]),
            ],
            &no_hypers,
            &mut [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("given twice"), "{e}");
    // Labels given as floats; an unknown hyperparameter; a gradient slot of the wrong size or name.
    let e = workspace
        .call(
            &[Input::f32("s", &[2, 3], &s), Input::f32("y", &[2], &[0.0, 1.0])],
            &no_hypers,
            &mut [],
        )
        .unwrap_err();
    assert!(e.to_string().contains("must be integer labels"), "{e}");
    let ok = [Input::f32("s", &[2, 3], &s), Input::i64("y", &[2], &[0, 1])];
    let e = workspace
        .call(&ok, &BTreeMap::from([("tau".to_string(), 1.0)]), &mut [])
        .unwrap_err();
    assert!(e.to_string().contains("unknown hyperparameter `tau`"), "{e}");
    let mut short = [0f32; 5];
    let e = workspace.call(&ok, &no_hypers, &mut [("s", &mut short)]).unwrap_err();
    assert!(e.to_string().contains("needs 6"), "{e}");
    let e = workspace.call(&ok, &no_hypers, &mut [("y", &mut short)]).unwrap_err();
    assert!(e.to_string().contains("grad_y"), "{e}");
    // After the errors a good call works, with a hyperparameter set for the call.
    let mut g = [0f32; 6];
    let loss = workspace
        .call(&ok, &BTreeMap::from([("t".to_string(), 2.0)]), &mut [("s", &mut g)])
        .unwrap();
    assert!((loss - 3f32.ln()).abs() < 1e-6, "{loss}");
    assert!((g[0] - (1.0 / 3.0 - 1.0) / 4.0).abs() < 1e-6, "{g:?}");
}

/// A call whose buffers would exceed the memory budget fails before anything is allocated, on the
/// `Tensor` API and the slice API alike, on the JIT and the interpreter (issue 28).
#[test]
fn calls_over_the_memory_budget_are_typed_errors() {
    let src = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }";
    let (n, c) = (64usize, 100usize);
    let s = vec![0f32; n * c];
    let y = vec![0i64; n];
    let tensors = BTreeMap::from([
        ("s".to_string(), Tensor::float(vec![n, c], vec![0.0; n * c])),
        ("y".to_string(), Tensor::labels(vec![n], y.clone())),
    ]);
    for backend in [Backend::Jit, Backend::Interp] {
        let small = Compiler::new().backend(backend).memory_budget(10_000);
        let kernel = small.compile_source("ce.lx", src).unwrap().kernel(None).unwrap();
        let needed = kernel.bytes_needed(&[n as i64, c as i64], true);
        assert!(needed > 10_000, "{backend:?}: {needed}");
        let e = kernel.eval(&tensors).unwrap_err();
        assert!(
            matches!(e, lossc::CallError::OverBudget { budget: 10_000, .. }),
            "{backend:?}: {e}"
        );
        assert!(
            e.to_string().contains("more than the memory budget of 10000 bytes"),
            "{e}"
        );
        let mut workspace = kernel.workspace();
        let (s_shape, y_shape) = ([n, c], [n]);
        let inputs = [Input::f32("s", &s_shape, &s), Input::i64("y", &y_shape, &y)];
        let e = workspace.call(&inputs, &BTreeMap::new(), &mut []).unwrap_err();
        assert!(matches!(e, lossc::CallError::OverBudget { .. }), "{backend:?}: {e}");
        // Within a budget that holds them, the same call runs.
        let roomy = Compiler::new().backend(backend).memory_budget(needed);
        let kernel = roomy.compile_source("ce.lx", src).unwrap().kernel(None).unwrap();
        assert!(kernel.eval(&tensors).is_ok(), "{backend:?}");
    }
    assert_eq!(lossc::call::parse_bytes("16G"), Some(16 << 30));
    assert_eq!(lossc::call::parse_bytes("512MiB"), Some(512 << 20));
    assert_eq!(lossc::call::parse_bytes("12345"), Some(12345));
    assert_eq!(lossc::call::parse_bytes("lots"), None);
}

/// NaN or infinite inputs: reported with the input and position where the compiler asks for it, on the
/// `Tensor` and slice APIs; passed through as IEEE arithmetic has it otherwise (issue 23).
#[test]
fn non_finite_inputs_are_reported_where_asked() {
    let src = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }";
    let mut values = vec![0.0; 6];
    values[5] = f64::NAN;
    values[1] = f64::INFINITY;
    let tensors = BTreeMap::from([
        ("s".to_string(), Tensor::float(vec![2, 3], values.clone())),
        ("y".to_string(), Tensor::labels(vec![2], vec![0, 1])),
    ]);
    let strict = Compiler::new()
        .finite_inputs(true)
        .compile_source("ce.lx", src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let e = strict.eval(&tensors).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input `s` holds inf at position [0, 1] (2 non-finite element(s) in all)"
    );
    let floats: Vec<f32> = values.iter().map(|x| *x as f32).collect();
    let labels = [0i64, 1];
    let (s_shape, y_shape) = ([2usize, 3], [2usize]);
    let inputs = [Input::f32("s", &s_shape, &floats), Input::i64("y", &y_shape, &labels)];
    let e = strict.workspace().call(&inputs, &BTreeMap::new(), &mut []).unwrap_err();
    assert!(matches!(e, lossc::CallError::NonFinite { count: 2, .. }), "{e}");
    let lenient = Compiler::new()
        .compile_source("ce.lx", src)
        .unwrap()
        .kernel(None)
        .unwrap();
    assert!(lenient.eval(&tensors).unwrap().loss.is_nan());
}

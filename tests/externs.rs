//! Extern operations (issue 24): host functions declared in lx, implemented in Rust and registered on the
//! compiler. A differentiable extern's gradient (its vector-Jacobian product) and a selection's (the
//! gathers after it) equal those of the same loss written in lx, on the interpreter and the JIT; a failing,
//! panicking or out-of-range extern is a typed error; the standard library's Betti matching checks its
//! gradient by finite differences.

use std::collections::BTreeMap;
use std::sync::Arc;

use lossc::data::Data;
use lossc::externs::{ExternOp, Options};
use lossc::{Backend, CallError, Compiler, Tensor};

fn backends() -> Vec<Backend> {
    vec![Backend::Interp, Backend::Jit]
}

/// `y = x³` with its vector-Jacobian product.
struct Cube;

impl ExternOp for Cube {
    fn forward(&self, args: &[&Tensor], _: &Options, outputs: &mut [Tensor]) -> Result<(), String> {
        let x = args[0].to_f64();
        outputs[0] = Tensor::float(args[0].shape.clone(), x.iter().map(|v| v * v * v).collect());
        Ok(())
    }
    fn vjp(&self, args: &[&Tensor], _: &Options, _: &[Tensor], ct: &[Tensor]) -> Result<Vec<Vec<f64>>, String> {
        let (x, c) = (args[0].to_f64(), ct[0].to_f64());
        Ok(vec![x.iter().zip(&c).map(|(v, c)| 3.0 * v * v * c).collect()])
    }
}

/// The positions of a row's values from the largest down (a selection), ties by position.
struct Descending;

impl ExternOp for Descending {
    fn forward(&self, args: &[&Tensor], _: &Options, outputs: &mut [Tensor]) -> Result<(), String> {
        let x = args[0].to_f64();
        let n = *args[0].shape.last().unwrap();
        let mut out = Vec::new();
        for row in x.chunks(n.max(1)).take(args[0].shape[0]) {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            out.extend(order.into_iter().map(|k| k as i64));
        }
        outputs[0] = Tensor::labels(outputs[0].shape.clone(), out);
        Ok(())
    }
}

/// Returns what `mode` asks: an index out of range, a panic, a wrong shape or an error.
struct Broken;

impl ExternOp for Broken {
    fn forward(&self, args: &[&Tensor], options: &Options, outputs: &mut [Tensor]) -> Result<(), String> {
        let mode = match options.get("mode") {
            Some(lossc::externs::OptionValue::Number(m)) => *m as i64,
            _ => return Err("no mode".into()),
        };
        match mode {
            0 => {
                if let Data::Int(v) = &mut outputs[0].data {
                    v[0] = args[0].shape[0] as i64;
                }
                Ok(())
            }
            1 => panic!("a bug in the extern"),
            2 => {
                outputs[0] = Tensor::labels(vec![1], vec![0]);
                Ok(())
            }
            _ => Err("the input is not a valid image".into()),
        }
    }
}

fn compiler(backend: Backend) -> Compiler {
    Compiler::new()
        .backend(backend)
        .threads(2)
        .extern_op("cube", Arc::new(Cube))
        .extern_op("descending", Arc::new(Descending))
        .extern_op("broken", Arc::new(Broken))
}

fn floats(shape: Vec<usize>, seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let data = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::float(shape, data)
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{k}]: {a} vs {b}");
    }
}

fn grad(e: &lossc::Evaluation, name: &str) -> Vec<f64> {
    e.grads.iter().find(|(n, _)| n == name).unwrap().1.to_f64()
}

fn kernel(backend: Backend, src: &str) -> lossc::Kernel {
    compiler(backend)
        .compile_source("a.lx", src)
        .unwrap()
        .kernel(None)
        .unwrap()
}

/// The loss and the gradients of `names` of two programs agree on both backends; the first's evaluations.
fn agree(what: &str, a: &str, b: &str, inputs: &BTreeMap<String, Tensor>, names: &[&str]) -> Vec<lossc::Evaluation> {
    let mut out = Vec::new();
    for backend in backends() {
        let tol = if backend == Backend::Interp { 1e-12 } else { 1e-5 };
        let (ea, eb) = (
            kernel(backend, a).eval(inputs).unwrap(),
            kernel(backend, b).eval(inputs).unwrap(),
        );
        close(&format!("{what} {backend:?} loss"), &[ea.loss], &[eb.loss], tol);
        for x in names {
            close(
                &format!("{what} {backend:?} grad {x}"),
                &grad(&ea, x),
                &grad(&eb, x),
                tol,
            );
        }
        out.push(ea);
    }
    out
}

#[test]
fn a_differentiable_extern_pulls_gradients_back_through_its_vjp() {
    let with_extern = "extern fn cube(x: f32[N]) -> (y: f32[N])\n\
                       loss f(x: f32[N], w: f32[N]) {\n    let (y) = cube(x)\n    sum[i] w[i] * y[i] + x[i] ^ 2\n}\n";
    let in_lx = "loss f(x: f32[N], w: f32[N]) { sum[i] w[i] * x[i] ^ 3 + x[i] ^ 2 }\n";
    let inputs = BTreeMap::from([
        ("x".to_string(), floats(vec![9], 1)),
        ("w".to_string(), floats(vec![9], 2)),
    ]);
    for e in agree("cube", with_extern, in_lx, &inputs, &["x", "w"]) {
        // The extern's output is no gradient a caller sees.
        assert!(e.grads.iter().all(|(n, _)| n != "y"), "{:?}", e.grads);
    }
    // Through a `let`: the cotangent of z = x * w + x continues into x and w (one more kernel).
    let through_let = "extern fn cube(x: f32[N]) -> (y: f32[N])\n\
                       loss f(x: f32[N], w: f32[N]) {\n    let z[i] = x[i] * w[i] + x[i]\n    let (y) = cube(z)\n    \
                       sum[i] y[i] * w[i]\n}\n";
    let in_lx = "loss f(x: f32[N], w: f32[N]) { sum[i] (x[i] * w[i] + x[i]) ^ 3 * w[i] }\n";
    agree("cube through a let", through_let, in_lx, &inputs, &["x", "w"]);
}

#[test]
fn a_selection_reading_a_let_gives_the_gathers_gradient() {
    // The top-3 of a row of z = x * s by an extern sort, against lx's own topk.
    let with_extern = "extern fn descending(v: f32[B, N] nograd) -> (order: idx[B, N] < N)\n\
        loss f(x: f32[B, N], s: f32[N]) {\n    let z[b, j] = x[b, j] * s[j]\n    let (order) = descending(z)\n    \
        sum[b, u | u < 3] z[b, order[b, u]] ^ 2\n}\n";
    let in_lx = "loss f(x: f32[B, N], s: f32[N]) {\n    let z[b, j] = x[b, j] * s[j]\n    \
        sum[b, u: 3] topk[j](z[b, j]; k = 3)[u] ^ 2\n}\n";
    let inputs = BTreeMap::from([
        ("x".to_string(), floats(vec![4, 7], 3)),
        ("s".to_string(), floats(vec![7], 4)),
    ]);
    agree("descending", with_extern, in_lx, &inputs, &["x", "s"]);
    // Second order: Hessian-vector products with the selection held, as lx's topk holds its choice.
    let v = floats(vec![4, 7], 9);
    for backend in backends() {
        let tol = if backend == Backend::Interp { 1e-12 } else { 1e-4 };
        let (a, b) = (kernel(backend, with_extern), kernel(backend, in_lx));
        let (ha, hb) = (
            a.hvp(&inputs, &BTreeMap::new(), "x", v.clone()).unwrap(),
            b.hvp(&inputs, &BTreeMap::new(), "x", v.clone()).unwrap(),
        );
        close(&format!("{backend:?} hvp"), &grad(&ha, "x"), &grad(&hb, "x"), tol);
    }
    // Through the library's interpreter entry points too (the REPL's and gradcheck's).
    let program = lossc::Program::from_source("a.lx", with_extern).unwrap();
    let f = program.loss(None).unwrap();
    let err = lossc::api::eval(f, &inputs, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, CallError::Extern { op, .. } if op == "descending"),
        "{err}"
    );
}

#[test]
fn broken_externs_are_typed_errors() {
    let src = "extern fn broken(x: f32[N] nograd; mode: f32) -> (at: idx[N] < N)\n\
               loss f(x: f32[N], mode: f32 = 0.0) {\n    let (at) = broken(x; mode = mode)\n    sum[i] x[at[i]]\n}\n";
    let inputs = BTreeMap::from([("x".to_string(), floats(vec![5], 5))]);
    let expect = [
        (0.0, "holds 5 at flat position 0, outside 0..5"),
        (1.0, "it panicked"),
        (2.0, "its output `at` has shape [1]"),
        (3.0, "the input is not a valid image"),
    ];
    for backend in backends() {
        let k = compiler(backend)
            .compile_source("a.lx", src)
            .unwrap()
            .kernel(None)
            .unwrap();
        for (mode, message) in expect {
            let err = k
                .eval_with(&inputs, &BTreeMap::from([("mode".to_string(), mode)]))
                .unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, CallError::Extern { .. }) && text.contains(message),
                "{backend:?} {mode}: {text}"
            );
        }
        // A caller passes only the loss's own inputs.
        let mut given = inputs.clone();
        given.insert("at".into(), Tensor::labels(vec![5], vec![0; 5]));
        let err = k.eval(&given).unwrap_err();
        assert!(
            matches!(&err, CallError::UnknownInput { name, .. } if name == "at"),
            "{err}"
        );
        let err = k.eval(&BTreeMap::new()).unwrap_err();
        assert!(
            matches!(&err, CallError::MissingInput { name, expected } if name == "x" && !expected.contains("at")),
            "{err}"
        );
    }
}

#[test]
fn an_extern_without_an_implementation_is_a_compile_error() {
    let src = "extern fn nowhere(x: f32[N] nograd) -> (at: idx[N] < N)\n\
               loss f(x: f32[N]) {\n    let (at) = nowhere(x)\n    sum[i] x[at[i]]\n}\n";
    let module = Compiler::new().compile_source("a.lx", src).unwrap();
    let d = module.kernel(None).err().expect("no implementation");
    assert_eq!(d.code, lossc::diag::Code::ExternMissing);
    assert!(d.message.contains("`nowhere`"), "{}", d.message);
}

#[test]
fn betti_matching_gradients_agree_with_finite_differences() {
    let program = lossc::Program::from_file(std::path::Path::new("std::topology::betti_matching_both")).unwrap();
    let f = program.loss(None).unwrap();
    let g: Vec<f64> = floats(vec![2, 5, 6], 7)
        .to_f64()
        .iter()
        .map(|v| f64::from(u8::from(*v > 0.1)))
        .collect();
    let inputs = BTreeMap::from([
        ("logits".to_string(), floats(vec![2, 5, 6], 8)),
        ("g".to_string(), Tensor::float(vec![2, 5, 6], g)),
    ]);
    let checks = lossc::gradcheck::check(f, &inputs, &BTreeMap::new(), 60).unwrap();
    assert_eq!(checks.len(), 1);
    assert!(checks[0].checked > 0 && checks[0].max_error < 1e-6, "{:?}", checks[0]);
    // The JIT's gradient, from its own pre-kernel and kernel, agrees with the interpreter's.
    let jit = Compiler::new()
        .threads(2)
        .compile_file(std::path::Path::new("std::topology::betti_matching_both"));
    let e = jit.unwrap().kernel(None).unwrap().eval(&inputs).unwrap();
    let reference = lossc::api::eval_grad(f, &inputs, &BTreeMap::new()).unwrap();
    close("loss", &[e.loss], &[reference.loss], 1e-5);
    close("grad", &grad(&e, "logits"), &grad(&reference, "logits"), 1e-5);
}

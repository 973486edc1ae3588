//! The JIT against the interpreter (the oracle): every example and feature input, random programs, any
//! thread count; and the typed errors of bad calls.
#![cfg(feature = "jit")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use lossc::data::Rng;
use lossc::ir::Function;
use lossc::{Backend, CallError, Compiler, Evaluation, Tensor};

/// Float32 accuracy: |jit - interp| <= 2e-4 * max(1, |interp|), per value.
pub const TOL: f64 = 2e-4;

/// A source compiled for the JIT (two threads) and for the interpreter.
fn jit_and_interp(name: &str, src: &str) -> (lossc::kernel::Module, lossc::kernel::Module) {
    let jit = Compiler::new().threads(2).compile_source(name, src).unwrap();
    let interp = Compiler::new()
        .backend(Backend::Interp)
        .compile_source(name, src)
        .unwrap();
    (jit, interp)
}

fn close(a: f64, b: f64) -> bool {
    // An infinity agrees only with itself (the relative bound of an infinite `b` is infinite).
    let finite = a.is_finite() && b.is_finite();
    (finite && (a - b).abs() <= TOL * b.abs().max(1.0)) || (a.is_nan() && b.is_nan()) || a == b
}

fn assert_agree(what: &str, jit: &Evaluation, interp: &Evaluation) {
    assert!(
        close(jit.loss, interp.loss),
        "{what}: loss jit {} vs interp {}",
        jit.loss,
        interp.loss
    );
    for ((n, a), (_, b)) in jit.grads.iter().zip(&interp.grads) {
        for (k, (x, y)) in a.to_f64().iter().zip(b.to_f64()).enumerate() {
            assert!(close(*x, y), "{what}: grad_{n}[{k}] jit {x} vs interp {y}");
        }
    }
    for ((n, a), (_, b)) in jit.outputs.iter().zip(&interp.outputs) {
        for (x, y) in a.to_f64().iter().zip(b.to_f64()) {
            assert!(close(*x, y), "{what}: out {n}: jit {x} vs interp {y}");
        }
    }
    assert_eq!(jit.grads.len(), interp.grads.len());
}

/// The JIT and the interpreter give the same loss, outputs and gradients on `inputs` (`name`: which loss).
fn modules_agree(
    what: &str,
    jit: &lossc::kernel::Module,
    interp: &lossc::kernel::Module,
    name: Option<&str>,
    inputs: &BTreeMap<String, Tensor>,
) {
    let a = jit.kernel(name).unwrap().eval(inputs).unwrap();
    let b = interp.kernel(name).unwrap().eval(inputs).unwrap();
    assert_agree(what, &a, &b);
}

/// Softmax rows of 11 logits (`s`) and their labels (`y`), the rows and labels of `pick`.
fn row_batch(rows: &[[f64; 11]], labels: &[i64], pick: &[usize]) -> BTreeMap<String, Tensor> {
    let s: Vec<f64> = pick.iter().flat_map(|r| rows[*r]).collect();
    let y: Vec<i64> = pick.iter().map(|r| labels[*r]).collect();
    BTreeMap::from([
        ("s".to_string(), Tensor::float(vec![pick.len(), 11], s)),
        ("y".to_string(), Tensor::labels(vec![pick.len()], y)),
    ])
}

fn random_inputs(f: &Function, sizes: &[i64], rng: &mut Rng) -> BTreeMap<String, Tensor> {
    common::random_inputs(f, sizes, rng, common::Nograd::Normal)
}

fn lx_files() -> Vec<std::path::PathBuf> {
    common::lx_files(Path::new(env!("CARGO_MANIFEST_DIR")), &["examples", "tests/in"])
}

#[test]
fn jit_matches_interpreter_on_every_file() {
    let mut rng = Rng::new(31);
    for path in lx_files() {
        let jit = Compiler::new().threads(3).compile_file(&path).unwrap();
        let interp = Compiler::new().backend(Backend::Interp).compile_file(&path).unwrap();
        for name in jit.losses() {
            let kj = jit.kernel(Some(name)).unwrap();
            let ki = interp.kernel(Some(name)).unwrap();
            for sizes in [[5i64, 4, 3, 6], [1, 1, 1, 1], [37, 9, 5, 2]] {
                let f = kj.function();
                let s: Vec<i64> = f.dims.iter().enumerate().map(|(k, _)| sizes[k % 4]).collect();
                let inputs = random_inputs(f, &s, &mut rng);
                let (a, b) = (kj.eval(&inputs), ki.eval(&inputs));
                match (a, b) {
                    (Ok(a), Ok(b)) => assert_agree(&format!("{} {name} {s:?}", path.display()), &a, &b),
                    (Err(a), Err(b)) => assert_eq!(a, b, "{}: both fail, differently", path.display()),
                    (a, b) => panic!("{}: jit {a:?} but interp {b:?}", path.display()),
                }
            }
        }
    }
}

#[test]
fn jit_matches_interpreter_on_bundled_examples() {
    let examples = common::bundled_examples(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(examples.len() >= 5, "bundled examples");
    for (path, name, inputs) in examples {
        let kj = Compiler::new().compile_file(&path).unwrap().kernel(None).unwrap();
        let ki = Compiler::new()
            .backend(Backend::Interp)
            .compile_file(&path)
            .unwrap()
            .kernel(None)
            .unwrap();
        assert_agree(&name, &kj.eval(&inputs).unwrap(), &ki.eval(&inputs).unwrap());
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng::new(32);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ldr_kl.lx");
    let module = Compiler::new().compile_file(&path).unwrap();
    let k1 = Compiler::new()
        .threads(1)
        .compile_file(&path)
        .unwrap()
        .kernel(None)
        .unwrap();
    let k4 = module.kernel(None).unwrap();
    let inputs = random_inputs(k1.function(), &[300, 17], &mut rng);
    let (a, b) = (
        k1.eval(&inputs).unwrap(),
        Compiler::new()
            .threads(4)
            .compile_file(&path)
            .unwrap()
            .kernel(None)
            .unwrap()
            .eval(&inputs)
            .unwrap(),
    );
    // Fixed chunking: bit-identical.
    assert_eq!(a, b);
    assert_eq!(a, k4.eval(&inputs).unwrap());
}

#[test]
fn long_sums_run_in_parts_with_the_same_bits_for_any_thread_count() {
    // AnyLoss sums over 200,003 points: each rank-0 sum runs in parallel chunks (a partial sum per fixed
    // chunk, added in order), so 1, 2 and 3 threads agree bit for bit, and all agree with the interpreter.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/anyloss_f1.lx");
    let kernel = |threads: usize| {
        Compiler::new()
            .threads(threads)
            .compile_file(&path)
            .unwrap()
            .kernel(None)
            .unwrap()
    };
    let mut rng = Rng::new(33);
    let k1 = kernel(1);
    let inputs = random_inputs(k1.function(), &[200_003], &mut rng);
    let a = k1.eval(&inputs).unwrap();
    for threads in [2, 3] {
        assert_eq!(a, kernel(threads).eval(&inputs).unwrap(), "{threads} threads");
    }
    let oracle = Compiler::new()
        .backend(Backend::Interp)
        .compile_file(&path)
        .unwrap()
        .kernel(None)
        .unwrap();
    let interp = oracle.eval(&inputs).unwrap();
    assert_agree("anyloss over 200,003 points", &a, &interp);
    // An empty sum is 0.
    let empty = random_inputs(k1.function(), &[0], &mut rng);
    let e = k1.eval(&empty).unwrap();
    let ei = oracle.eval(&empty).unwrap();
    assert!(
        e.loss.is_nan() == ei.loss.is_nan() && (e.loss.is_nan() || close(e.loss, ei.loss)),
        "{} vs {}",
        e.loss,
        ei.loss
    );
}

#[test]
fn kernels_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<lossc::Kernel>();
    let k = Compiler::new()
        .compile_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cross_entropy.lx"))
        .unwrap()
        .kernel(None)
        .unwrap();
    let inputs = BTreeMap::from([
        (
            "s".to_string(),
            Tensor::float(vec![2, 3], vec![0.1, 0.2, 0.3, 1.0, 0.0, -1.0]),
        ),
        ("y".to_string(), Tensor::labels(vec![2], vec![2, 0])),
    ]);
    let base = k.eval(&inputs).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| assert_eq!(k.eval(&inputs).unwrap(), base));
        }
    });
}

/// Calls of one kernel from several threads at once, each with products that copy a transposed operand
/// (multi-similarity's `x·xᵀ` over 150 rows runs as several blocks): a call that finds the kept copy
/// buffer taken makes its own, and every call gives the bits of a lone call.
#[test]
fn concurrent_calls_of_one_kernel_with_matrix_products_agree() {
    let k = Compiler::new()
        .threads(2)
        .compile_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/multi_similarity.lx"))
        .unwrap()
        .kernel(None)
        .unwrap();
    let mut rng = Rng::new(71);
    let f = k.function().clone();
    let inputs = random_inputs(&f, &[150, 16], &mut rng);
    let base = k.eval(&inputs).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    assert_eq!(k.eval(&inputs).unwrap(), base);
                }
            });
        }
    });
}

#[test]
fn bad_calls_are_typed_errors_before_native_code() {
    let k = Compiler::new()
        .compile_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ldr_kl.lx"))
        .unwrap()
        .kernel(None)
        .unwrap();
    let good = BTreeMap::from([
        ("s".to_string(), Tensor::float(vec![2, 3], vec![0.0; 6])),
        ("y".to_string(), Tensor::labels(vec![2], vec![2, 0])),
    ]);
    assert!(k.eval(&good).is_ok());
    let with = |name: &str, t: Tensor| {
        let mut m = good.clone();
        m.insert(name.to_string(), t);
        k.eval(&m).unwrap_err()
    };
    assert!(matches!(
        with("y", Tensor::labels(vec![2], vec![3, 0])),
        CallError::LabelOutOfRange { .. }
    ));
    assert!(matches!(
        with("y", Tensor::labels(vec![2], vec![i64::MIN, 0])),
        CallError::LabelOutOfRange { .. }
    ));
    assert!(matches!(
        with("y", Tensor::labels(vec![3], vec![0, 0, 0])),
        CallError::ShapeMismatch { .. }
    ));
    assert!(matches!(
        with("s", Tensor::float(vec![6], vec![0.0; 6])),
        CallError::RankMismatch { .. }
    ));
    assert!(matches!(
        with("s", Tensor::float(vec![2, 3], vec![0.0; 2])),
        CallError::LengthMismatch { .. }
    ));
    assert!(matches!(
        with("s", Tensor::float(vec![usize::MAX, 3], vec![])),
        CallError::TooLarge { .. }
    ));
    assert!(matches!(
        with("y", Tensor::float(vec![2], vec![0.0; 2])),
        CallError::WrongDtype { .. }
    ));
    assert!(matches!(
        with("z", Tensor::float(vec![2], vec![0.0; 2])),
        CallError::UnknownInput { .. }
    ));
    let mut missing = good.clone();
    missing.remove("s");
    assert!(matches!(k.eval(&missing).unwrap_err(), CallError::MissingInput { .. }));
    assert!(matches!(
        k.eval_with(&good, &BTreeMap::from([("lam".to_string(), 1.0)]))
            .unwrap_err(),
        CallError::UnknownHyper { .. }
    ));
    // Zero-sized batches are fine.
    let empty = BTreeMap::from([
        ("s".to_string(), Tensor::float(vec![0, 3], vec![])),
        ("y".to_string(), Tensor::labels(vec![0], vec![])),
    ]);
    assert!(k.eval(&empty).unwrap().loss.is_nan());
}

#[test]
fn data_dependent_subscripts_are_checked_in_native_code() {
    // x[i + 1] reads one past the end at the last i: the kernel stops with a typed error.
    let m = Compiler::new()
        .compile_source(
            "oob.lx",
            "loss f(x: f32[N], y: idx[N]) { sum[i: N] x[i + 1] + x[y[i]] }",
        )
        .unwrap();
    let k = m.kernel(None).unwrap();
    let inputs = BTreeMap::from([
        ("x".to_string(), Tensor::float(vec![3], vec![1.0, 2.0, 3.0])),
        ("y".to_string(), Tensor::labels(vec![3], vec![0, 1, 2])),
    ]);
    assert!(matches!(
        k.eval(&inputs).unwrap_err(),
        CallError::IndexOutOfRange { value: 3, size: 3, .. }
    ));
    // Unbounded labels are checked too.
    let m = Compiler::new()
        .compile_source("lab.lx", "loss f(x: f32[N], y: idx[N]) { sum[i] x[y[i]] }")
        .unwrap();
    let k = m.kernel(None).unwrap();
    let bad = BTreeMap::from([
        ("x".to_string(), Tensor::float(vec![3], vec![1.0, 2.0, 3.0])),
        ("y".to_string(), Tensor::labels(vec![3], vec![0, 7, 2])),
    ]);
    assert!(matches!(
        k.eval(&bad).unwrap_err(),
        CallError::IndexOutOfRange { value: 7, .. }
    ));
    let good = BTreeMap::from([
        ("x".to_string(), Tensor::float(vec![3], vec![1.0, 2.0, 3.0])),
        ("y".to_string(), Tensor::labels(vec![3], vec![0, 2, 2])),
    ]);
    assert_eq!(k.eval(&good).unwrap().loss, 7.0);
}

#[test]
fn specialised_hyperparameters_are_folded_and_fixed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ldr_kl.lx");
    let k = Compiler::new()
        .specialise("lambda", 2.0)
        .compile_file(&path)
        .unwrap()
        .kernel(None)
        .unwrap();
    let generic = Compiler::new().compile_file(&path).unwrap().kernel(None).unwrap();
    let mut rng = Rng::new(33);
    let inputs = random_inputs(generic.function(), &[6, 4], &mut rng);
    let a = k.eval(&inputs).unwrap();
    let b = generic
        .eval_with(&inputs, &BTreeMap::from([("lambda".to_string(), 2.0)]))
        .unwrap();
    assert_agree("specialised", &a, &b);
    assert!(matches!(
        k.eval_with(&inputs, &BTreeMap::from([("lambda".to_string(), 1.0)]))
            .unwrap_err(),
        CallError::HyperFixed { .. }
    ));
    assert!(!lossc::ir::print::function(k.function()).contains("hyper lambda"));
}

#[test]
fn eval_into_writes_caller_buffers() {
    let k = Compiler::new()
        .compile_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cross_entropy.lx"))
        .unwrap()
        .kernel(None)
        .unwrap();
    let inputs = BTreeMap::from([
        (
            "s".to_string(),
            Tensor::float(vec![2, 3], vec![0.1, 0.2, 0.3, 1.0, 0.0, -1.0]),
        ),
        ("y".to_string(), Tensor::labels(vec![2], vec![2, 0])),
    ]);
    let mut g = vec![0.0; 6];
    let loss = k.eval_into(&inputs, &BTreeMap::new(), &mut [("s", &mut g)]).unwrap();
    assert!(loss > 0.0 && g.iter().sum::<f64>().abs() < 1e-6);
    let mut short = vec![0.0; 5];
    assert!(matches!(
        k.eval_into(&inputs, &BTreeMap::new(), &mut [("s", &mut short)])
            .unwrap_err(),
        CallError::LengthMismatch { .. }
    ));
}

/// Largest relative error of a JIT elementwise function against f64 over a sweep, via an output tensor.
fn max_rel_error(func: &str, lo: f64, hi: f64, reference: fn(f64) -> f64) -> f64 {
    let src = format!("loss f(x: f32[N]) -> (y: f32[N]) {{ out y[i] = {func}(x[i])\n sum[i] x[i] }}");
    let k = Compiler::new()
        .compile_source("m.lx", &src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let n = 20001;
    let xs: Vec<f64> = (0..n)
        .map(|k| (lo + (hi - lo) * k as f64 / (n - 1) as f64) as f32 as f64)
        .collect();
    let out = k
        .eval(&BTreeMap::from([("x".to_string(), Tensor::float(vec![n], xs.clone()))]))
        .unwrap();
    let ys = out.outputs[0].1.to_f64();
    xs.iter()
        .zip(&ys)
        .map(|(x, y)| {
            let r = reference(*x);
            if r == 0.0 { y.abs() } else { ((y - r) / r).abs() }
        })
        .fold(0.0, f64::max)
}

#[test]
fn math_functions_are_accurate() {
    // Documented bounds (relative error against f64, over float32 inputs; src/backend/jit/math.rs): the
    // inline CLIF functions, vector and scalar alike, and the Rust f32 functions the rest call.
    for (name, lo, hi, f, bound) in [
        ("exp", -87.0, 88.0, f64::exp as fn(f64) -> f64, 1.5e-7),
        ("log", 1e-30, 1e30, f64::ln, 1.5e-7),
        ("log", 0.5, 2.0, f64::ln, 1.5e-7),
        ("log1p", -0.9, 100.0, f64::ln_1p, 3e-7),
        ("log1p", -1e-4, 1e-4, f64::ln_1p, 3e-7),
        ("tanh", -10.0, 10.0, f64::tanh, 2.5e-7),
        ("tanh", -0.7, 0.7, f64::tanh, 2.5e-7),
        ("sigmoid", -30.0, 30.0, lossc::prims::sigmoid, 2.5e-7),
        ("softplus", -30.0, 80.0, lossc::prims::softplus, 3e-7),
        ("expm1", -20.0, 20.0, f64::exp_m1, 2.5e-7),
        ("atan", -100.0, 100.0, f64::atan, 2.5e-7),
        ("atan", -3.0, 3.0, f64::atan, 2.5e-7),
        ("atan", -1e30, 1e30, f64::atan, 2.5e-7),
        ("sqrt", 0.0, 1e6, f64::sqrt, 2.5e-7),
        ("cos", -3.0, 3.0, f64::cos, 2.5e-7),
        ("sin", -3.0, 3.0, f64::sin, 2.5e-7),
        ("acos", -1.0, 1.0, f64::acos, 2.5e-7),
    ] {
        let e = max_rel_error(name, lo, hi, f);
        eprintln!("{name} on [{lo}, {hi}]: max relative error {e:.2e}");
        assert!(e < bound, "{name} on [{lo}, {hi}]: {e}");
    }
    // Special values of the inline functions, in vector lanes and in the scalar tail (5 inputs).
    let special = |name: &str, xs: Vec<f64>| -> Vec<f64> {
        let src = format!("loss f(x: f32[N]) -> (y: f32[N]) {{ out y[i] = {name}(x[i])\n 0 }}");
        let k = Compiler::new()
            .compile_source("e.lx", &src)
            .unwrap()
            .kernel(None)
            .unwrap();
        let n = xs.len();
        k.eval(&BTreeMap::from([("x".to_string(), Tensor::float(vec![n], xs))]))
            .unwrap()
            .outputs[0]
            .1
            .to_f64()
    };
    let inf = f64::INFINITY;
    let log = special("log", vec![0.0, -1.0, inf, 1.0, 1e-45]);
    assert!(
        log[0] == -inf && log[1].is_nan() && log[2] == inf && log[3] == 0.0,
        "{log:?}"
    );
    assert!((log[4] - (1e-45f32 as f64).ln()).abs() < 1e-3, "subnormal: {log:?}");
    assert_eq!(
        special("log1p", vec![-1.0, 0.0, inf, 1e-30, -0.0])[..4],
        [-inf, 0.0, inf, 1e-30f32 as f64]
    );
    assert_eq!(
        special("tanh", vec![-inf, 100.0, 0.0, -1e-30, 20.0]),
        vec![-1.0, 1.0, 0.0, -1e-30f32 as f64, 1.0]
    );
    assert_eq!(
        special("softplus", vec![-inf, 100.0, 0.0, -200.0, inf])[..2],
        [0.0, 100.0]
    );
    let atan = special("atan", vec![-inf, inf, -0.0, 0.0, f64::NAN]);
    let half_pi = std::f32::consts::FRAC_PI_2 as f64;
    assert!(
        atan[..4] == [-half_pi, half_pi, 0.0, 0.0] && atan[4].is_nan(),
        "{atan:?}"
    );
    assert!(atan[2].is_sign_negative(), "atan(-0) = {}", atan[2]);
    assert!(special("atan", vec![f64::NAN; 5]).iter().all(|v| v.is_nan()));
    assert!(special("tanh", vec![f64::NAN; 5]).iter().all(|v| v.is_nan()));
    assert!(special("log", vec![f64::NAN; 5]).iter().all(|v| v.is_nan()));
    // Edge values of the inline exp.
    let k = Compiler::new()
        .compile_source("e.lx", "loss f(x: f32[N]) -> (y: f32[N]) { out y[i] = exp(x[i])\n 0 }")
        .unwrap()
        .kernel(None)
        .unwrap();
    let xs = vec![f64::NEG_INFINITY, -200.0, 0.0, 100.0, f64::INFINITY, f64::NAN];
    let ys = k
        .eval(&BTreeMap::from([("x".to_string(), Tensor::float(vec![6], xs))]))
        .unwrap()
        .outputs[0]
        .1
        .to_f64();
    assert_eq!(&ys[..5], &[0.0, 0.0, 1.0, f64::INFINITY, f64::INFINITY]);
    assert!(ys[5].is_nan());
}

#[test]
fn sgd_on_a_linear_softmax_classifier_converges() {
    // The loop of examples/embed.rs, shortened: the kernel's gradient trains a model.
    let module = Compiler::new()
        .compile_source(
            "lin.lx",
            "loss ce(x: f32[N, D] nograd, w: f32[D, C], y: idx[N] < C) {
        let s[i, k] = sum[d] x[i, d] * w[d, k]
        mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]]
    }",
        )
        .unwrap();
    let k = module.kernel(None).unwrap();
    let (n, d, c) = (200, 5, 3);
    let mut rng = Rng::new(5);
    let centers: Vec<f64> = (0..c * d).map(|_| 2.0 * rng.normal()).collect();
    let y: Vec<i64> = (0..n).map(|_| rng.below(c as u64) as i64).collect();
    let x: Vec<f64> = (0..n * d)
        .map(|j| centers[y[j / d] as usize * d + j % d] + rng.normal())
        .collect();
    let mut w = vec![0.0; d * c];
    let mut inputs = BTreeMap::from([
        ("x".to_string(), Tensor::float(vec![n, d], x)),
        ("y".to_string(), Tensor::labels(vec![n], y)),
    ]);
    let mut losses = Vec::new();
    for _ in 0..60 {
        inputs.insert("w".to_string(), Tensor::float(vec![d, c], w.clone()));
        let e = k.eval(&inputs).unwrap();
        losses.push(e.loss);
        for (wi, g) in w.iter_mut().zip(e.grads[0].1.to_f64()) {
            *wi -= 0.5 * g;
        }
    }
    assert!(
        losses[0] > 1.0 && *losses.last().unwrap() < 0.3 * losses[0],
        "{losses:?}"
    );
}

#[test]
fn row_updates_skip_masked_out_points() {
    // g[h, d] = sum[i | w[i, h] != 0] w[i, h] * x[i, d] runs as a blocked row update; row 5 of x is inf,
    // but its weights are 0, so it is masked out and must not turn the result into NaN (0 * inf).
    let src = "loss f(w: f32[N, H] nograd, x: f32[N, D] nograd) -> (g: f32[H, D]) {
    out g[h, d] = sum[i | w[i, h] != 0] w[i, h] * x[i, d]
    0
}";
    let (n, h, d) = (11, 3, 6);
    let w: Vec<f64> = (0..n * h)
        .map(|k| if k / h == 5 { 0.0 } else { ((k * 7 % 5) as f64) - 2.0 })
        .collect();
    let x: Vec<f64> = (0..n * d)
        .map(|k| {
            if k / d == 5 {
                f64::INFINITY
            } else {
                (k % 9) as f64 * 0.25
            }
        })
        .collect();
    let inputs = BTreeMap::from([
        ("w".to_string(), Tensor::float(vec![n, h], w.clone())),
        ("x".to_string(), Tensor::float(vec![n, d], x.clone())),
    ]);
    let jit = Compiler::new()
        .compile_source("r.lx", src)
        .unwrap()
        .kernel(None)
        .unwrap()
        .eval(&inputs)
        .unwrap();
    let got = jit.outputs[0].1.to_f64();
    for hh in 0..h {
        for dd in 0..d {
            let want: f64 = (0..n)
                .filter(|i| w[i * h + hh] != 0.0)
                .map(|i| w[i * h + hh] * x[i * d + dd])
                .sum();
            assert_eq!(got[hh * d + dd], want, "g[{hh}, {dd}]");
        }
    }
}

#[test]
fn softmax_rows_keep_their_exponentials_and_special_rows_agree() {
    // Cross-entropy, LDR-KL and KL-DRO compute each row's exp once (kept in the gradient row); rows with +inf,
    // -inf, NaN, all -inf and huge spreads must still match the interpreter, in the vector lanes and in
    // the scalar tail.
    let sources = [
        "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }",
        "loss ldr(s: f32[N, C], y: idx[N] < C, lambda: f32 = 0.5) {
            let m[i, k] = [k != y[i]] + s[i, k] - s[i, y[i]]
            mean[i] lambda * (logsumexp[k] m[i, k] / lambda) }",
        // KL-DRO: the gradient row runs in a later group (after the batch's logsumexp), so each row's
        // factor to exp(x - lse) (1 / sum, or 1 where the row's max is not finite) waits in a buffer.
        "loss dro(s: f32[N, C], y: idx[N] < C, lambda: f32 = 2.0) {
            let l[i] = (logsumexp[k] s[i, k]) - s[i, y[i]]
            lambda * (logsumexp[i] l[i] / lambda) }",
    ];
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    // The row maximum skips NaN in its vector lanes; a NaN beside +inf (a maximum that is the result
    // itself), among -inf, or alone must still give NaN, in a lane or in the tail (C = 11: eight points
    // in the unrolled vector loop, three in the tail).
    let rows: [[f64; 11]; 10] = [
        [0.5, -1.0, 2.0, 0.0, 3.0, -2.5, 1.0, 0.25, -0.5, 1.5, 2.5],
        [inf, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.25, -0.5, 1.5, 2.5],
        [-inf, 0.0, 1.0, 2.0, 3.0, 4.0, -inf, 0.25, -0.5, 1.5, -inf],
        [-inf; 11],
        [0.0, nan, 1.0, 2.0, 3.0, 4.0, 5.0, 0.25, -0.5, 1.5, 2.5],
        [80.0, -80.0, 0.0, 40.0, -40.0, 79.0, 1e-3, 0.25, -0.5, 1.5, 2.5],
        [nan, inf, 1.0, 2.0, 3.0, 4.0, 5.0, 0.25, -0.5, 1.5, 2.5],
        [-inf, -inf, -inf, nan, -inf, -inf, -inf, -inf, -inf, -inf, -inf],
        [inf, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.25, -0.5, 1.5, nan],
        [nan; 11],
    ];
    // All rows, and the finite ones alone (where a batch-level loss is finite too).
    let batch = |pick: &[usize]| row_batch(&rows, &[0, 2, 3, 3, 1, 5, 2, 3, 1, 0], pick);
    for src in sources {
        let (jit, interp) = jit_and_interp("s.lx", src);
        let plan_kept = {
            let f = jit.kernel(None).unwrap().function().clone();
            let plan = lossc::backend::loops::Plan::new(&f);
            plan.kept_exps.iter().map(|e| e.factors.is_some()).collect::<Vec<_>>()
        };
        assert_eq!(plan_kept, [src.contains("dro")], "{src}: one softmax row kept");
        let each = (0..rows.len()).map(|r| batch(&[r, 0]));
        for inputs in [batch(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), batch(&[0, 2, 5])]
            .into_iter()
            .chain(each)
        {
            let a = jit.kernel(None).unwrap().eval(&inputs).unwrap();
            let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
            assert_agree(src, &a, &b);
        }
    }
}

#[test]
fn max_and_min_rows_track_nan_apart_from_their_lanes() {
    // Vector max/min keep one `maxps`/`minps` per vector and a separate mask of lanes that met a NaN: a NaN
    // in a lane or in the scalar tail (C = 9: two vectors and one tail point), infinities and signed zeros
    // must give what the interpreter gives, row by row (each row's max and min is its own output). The
    // elementwise `max`/`min` of lanes (`pair`) propagate a NaN from either side.
    let src = "loss spread(s: f32[N, C]) { sum[i] (max[k] s[i, k]) - 2.0 * (min[k] s[i, k]) }
        loss top(s: f32[N, C]) { let t[i] = (max[k] s[i, k]) + 0.5 * (min[j] s[i, j])
            sum[i] t[i] * t[i] }
        loss pair(s: f32[N, C]) { sum[i] (sum[k] max(s[i, k], 0.25) + 2.0 * min(s[i, k], 0.75)) }";
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    let rows: [[f64; 9]; 6] = [
        [0.5, -1.0, 2.0, 0.0, 3.0, -2.5, 1.0, 7.0, -7.5],
        [0.5, nan, 2.0, 0.0, 3.0, -2.5, 1.0, 7.0, -7.5],
        [0.5, -1.0, 2.0, 0.0, 3.0, -2.5, 1.0, 7.0, nan],
        [-inf, 0.0, 1.0, inf, 3.0, 4.0, -inf, 0.0, 1.0],
        [-0.0, 0.0, -0.0, -0.0, 0.0, 0.0, -0.0, 0.0, -0.0],
        [nan; 9],
    ];
    let (jit, interp) = jit_and_interp("m.lx", src);
    for row in rows {
        let inputs = BTreeMap::from([("s".to_string(), Tensor::float(vec![1, 9], row.to_vec()))]);
        for name in ["spread", "top", "pair"] {
            let a = jit.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            let b = interp.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            assert_agree(&format!("{name} on {row:?}"), &a, &b);
        }
    }
}

#[test]
fn arg_max_and_min_run_in_two_vector_passes_and_agree() {
    // The gradient of max/min picks the first extreme position (the first NaN when there is one): found
    // by a vector pass for the value and one for its first lane. Ties within and across vectors and the
    // scalar tail, NaN in a lane or the tail, infinities, signed zeros, and rows only the tail covers.
    let src = "loss top(s: f32[N, C]) { sum[i] 2.0 * (max[k] s[i, k]) }
        loss bottom(s: f32[N, C]) { sum[i] (min[k] relu(s[i, k] + 1.0)) * (min[k] abs(s[i, k])) }";
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    let rows: [[f64; 9]; 9] = [
        [0.5, -1.0, 2.0, 0.0, 3.0, -2.5, 1.0, 7.0, -7.5],
        [0.5, 7.0, 2.0, 7.0, 3.0, -2.5, 1.0, 7.0, -7.5],
        [0.5, -1.0, 2.0, 0.0, 3.0, -2.5, 1.0, 2.0, 9.0],
        [0.5, -1.0, nan, 0.0, 3.0, nan, 1.0, 7.0, -7.5],
        [0.5, -1.0, 2.0, 0.0, 3.0, -2.5, 1.0, 7.0, nan],
        [-inf; 9],
        [inf, 0.0, 1.0, inf, -3.0, -4.0, -inf, 0.0, 1.0],
        [-0.0, 0.0, -0.0, -0.0, 0.0, 0.0, -0.0, 0.0, -0.0],
        [-1.0, -2.0, -3.0, -1.0, -2.0, -3.0, -1.5, -1.0, -4.0],
    ];
    let (jit, interp) = jit_and_interp("a.lx", src);
    for name in ["top", "bottom"] {
        let clif = lossc::backend::jit::clif(jit.kernel(Some(name)).unwrap().function()).unwrap();
        assert!(clif.contains("vhigh_bits"), "{name}: no vector arg-max pass:\n{clif}");
    }
    for c in [9usize, 8, 3] {
        for row in rows {
            let inputs = BTreeMap::from([("s".to_string(), Tensor::float(vec![1, c], row[..c].to_vec()))]);
            for name in ["top", "bottom"] {
                let a = jit.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
                let b = interp.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
                assert_agree(&format!("{name} on {:?}", &row[..c]), &a, &b);
            }
        }
    }
}

/// `Function::reachable` and `Plan::branching` against their definitions, on every file's optimized
/// function (and the sorting benchmark's, thousands of nodes): `reachable` is every node some path of
/// operands leads to, in arena order, once each; a node branches when something it reaches is a
/// reduction or a load with a subscript not statically in range.
#[test]
fn reachable_nodes_and_branching_follow_their_definitions() {
    use lossc::ir::Expr;
    let mut files = lx_files();
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sort_bce16.lx"));
    let mut checked = 0;
    for path in files {
        let module = Compiler::new().compile_file(&path).unwrap();
        for name in module.losses() {
            let f = module.kernel(Some(name)).unwrap().function().clone();
            let plan = lossc::backend::loops::Plan::new(&f);
            assert_eq!(plan.branching.len(), f.nodes().len());
            for (k, node) in f.nodes().iter().enumerate() {
                let n = lossc::ir::NodeId(k as u32);
                let found = f.reachable(&[n]);
                assert!(
                    found.windows(2).all(|w| w[0] < w[1]) && found.contains(&n),
                    "{name}: {k}"
                );
                for m in &found {
                    for o in f.node(*m).expr.operands() {
                        assert!(found.binary_search(&o).is_ok(), "{name}: {k} reaches {m:?}, not {o:?}");
                    }
                }
                // Nothing more: every node found is the root or an operand of another found node.
                for m in &found {
                    assert!(
                        *m == n || found.iter().any(|u| f.node(*u).expr.operands().contains(m)),
                        "{name}: {k} finds {m:?}"
                    );
                }
                let fails_or_loops = found.iter().any(|m| match &f.node(*m).expr {
                    Expr::Reduce { .. } => true,
                    Expr::Load { tensor, subs } => {
                        subs.iter().zip(f.ref_shape(*tensor)).any(|(s, d)| !f.in_range(*s, &d))
                    }
                    _ => false,
                });
                assert_eq!(plan.branching[k], fails_or_loops, "{name}: node {k} {:?}", node.expr);
                checked += 1;
            }
        }
    }
    assert!(checked > 5000, "{checked} nodes");
}

/// Matrix products whose operand is a symmetric tensor (`select(m[h1, h0] || m[h0, h1], …)`, a sum of a
/// matrix and its transpose) are marked so that the GEMM reads it in the order its packing copies fastest:
/// NT-Xent's `r18` and `r22` (not `r20`, whose left operand is not symmetric), multi-similarity's `grad_x`.
/// The values are checked against the interpreter by `plain_sums_of_exponentials_keep_them_for_their_reader` (NT-Xent) and
/// `jit_matches_interpreter_on_every_file` (multi-similarity).
#[test]
fn symmetric_operands_of_matrix_products_are_marked() {
    for (file, want) in [
        ("benches/nt_xent.lx", vec!["r18", "r22"]),
        ("examples/multi_similarity.lx", vec!["grad_x"]),
    ] {
        let module = Compiler::new()
            .compile_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .unwrap();
        let f = module.kernel(None).unwrap().function().clone();
        let plan = lossc::backend::loops::Plan::new(&f);
        let name = |c: &lossc::backend::loops::Contraction| f.tensor(plan.nests[c.nest].tensor).name.clone();
        let products: Vec<String> = plan.contractions.iter().map(name).collect();
        assert!(products.len() > want.len(), "{file}: {products:?}");
        let marked: Vec<String> = plan
            .contractions
            .iter()
            .filter(|c| c.left.symmetric || c.right.symmetric)
            .map(name)
            .collect();
        assert_eq!(marked, want, "{file}: products {products:?}");
    }
}

/// Rows whose elements read what is stored at them (kept exponentials in the consumer's row, a guest
/// tensor in its host's row) compute their last vector before the vector loop and store it after: every
/// row length from 1 to 21 (the narrow scalar branch, the unrolled loop, the single vectors after it, the
/// last vector over what they leave), for cross-entropy, LDR-KL, KL-DRO and multi-similarity, against the
/// interpreter.
#[test]
fn rows_that_read_their_own_stores_cover_every_length() {
    let mut rng = Rng::new(58);
    for file in ["cross_entropy", "ldr_kl", "kl_dro", "multi_similarity"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{file}.lx"));
        let jit = Compiler::new().threads(2).compile_file(&path).unwrap();
        let interp = Compiler::new().backend(Backend::Interp).compile_file(&path).unwrap();
        let f = jit.kernel(None).unwrap().function().clone();
        for width in 1..=21i64 {
            // The row length is the last dimension (C) for the softmax losses and B for multi-similarity.
            let sizes: Vec<i64> = f
                .dims
                .iter()
                .map(|d| match d.name.as_str() {
                    "C" | "B" => width,
                    _ => 7,
                })
                .collect();
            let inputs = random_inputs(&f, &sizes, &mut rng);
            modules_agree(&format!("{file}, rows of {width}"), &jit, &interp, None, &inputs);
        }
    }
}

/// A plan's row-private buffers and its (guest, host) pairs of tensors living in another's rows, by name.
fn private_and_hosted(f: &lossc::ir::Function) -> (Vec<String>, Vec<(String, String)>) {
    let plan = lossc::backend::loops::Plan::new(f);
    let name = |k: usize| plan.buffers[k].name.clone();
    let private = (0..plan.buffers.len())
        .filter(|k| plan.row_private[*k])
        .map(name)
        .collect();
    let hosted = (0..plan.buffers.len())
        .filter_map(|k| plan.host[k].map(|h| (name(k), name(h))))
        .collect();
    (private, hosted)
}

#[test]
fn arg_max_of_a_product_with_a_constant_factor_agrees() {
    // The gradient of `max` finds the maximum again by comparing bits: a product must have the same bits
    // in the vector lanes as in the scalar code (found by the property tests when the lanes multiplied a
    // product's constant factors first; C = 4 leaves the max pass to the scalar tail and the arg-max pass
    // to a vector).
    // So must a quotient by a scalar (both multiply by its reciprocal).
    let src = "loss f(x: f32[N, C], w: f32[C]) { mean[i] (max[k] (w[k] * stopgrad(softplus(-0.524)) * x[i, k])) }
        loss g(x: f32[N, C], w: f32[C], lam: f32 = 0.7) { mean[i] (max[k] w[k] * x[i, k] / lam) / 3.0 }";
    let (jit, interp) = jit_and_interp("p.lx", src);
    for seed in 0..80 {
        let name = if seed % 2 == 0 { "f" } else { "g" };
        let mut rng = Rng::new(seed);
        let x: Vec<f64> = (0..12).map(|_| rng.normal()).collect();
        let w: Vec<f64> = (0..4).map(|_| rng.normal()).collect();
        let inputs = BTreeMap::from([
            ("x".to_string(), Tensor::float(vec![3, 4], x)),
            ("w".to_string(), Tensor::float(vec![4], w)),
        ]);
        let a = jit.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
        let b = interp.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("{name}, seed {seed}"), &a, &b);
    }
}

#[test]
fn row_private_tensors_live_in_one_row_per_worker_and_agree() {
    // LDR-KL with squared margins: the margin adjoint row sums `r1` are read only inside their row-fused
    // group (the margins themselves are computed where they are read): each running call keeps one row
    // of them. The margin adjoints `m_adj` too, but the gradient reads them only at its own element, so
    // they live in the gradient's rows, which are then complete before the gradient's own pass (a one-hot
    // term). (LDR-KL's own adjoints are a softmax, whose row sums to one: it has no `r1`.)
    // KL-DRO's `r0` is read by a later group (the gradient): whole.
    let squared = "loss ldr_sq(s: f32[N, C], y: idx[N] < C) {
            let m[i, k] = [k != y[i]] + s[i, k] - s[i, y[i]]
            mean[i] logsumexp[k] m[i, k] * m[i, k] }";
    let (_, interp) = jit_and_interp("sq.lx", squared);
    let functions = |jit: &lossc::kernel::Module| jit.kernel(None).unwrap().function().clone();
    let (private, hosted) = private_and_hosted(&functions(&Compiler::new().compile_source("sq.lx", squared).unwrap()));
    assert_eq!(private, ["r1"]);
    assert_eq!(hosted, [("m_adj".to_string(), "grad_s".to_string())]);
    let kl_dro = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kl_dro.lx");
    let (private, _) = private_and_hosted(&functions(&Compiler::new().compile_file(&kl_dro).unwrap()));
    assert!(!private.contains(&"r0".to_string()), "{private:?}");
    // Many chunks over several workers (and one), rows long enough for every vector part: as the interpreter.
    let mut rng = Rng::new(8);
    for threads in [1, 2, 3] {
        let jit = Compiler::new()
            .threads(threads)
            .compile_source("sq.lx", squared)
            .unwrap();
        let inputs = random_inputs(&functions(&jit), &[700, 37], &mut rng);
        let a = jit.kernel(None).unwrap().eval(&inputs).unwrap();
        let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("{threads} threads"), &a, &b);
    }
}

#[test]
fn row_tensors_live_in_the_rows_of_a_reader_of_their_own_elements_and_agree() {
    // `e` is read by `p` at p's own element only (`f`): it lives in p's rows and p's pass adds `t` in
    // place. In `g`, p also reads `e[i, 0]`, which its own pass would have overwritten: `e` keeps a row
    // of its own. Both as the interpreter, with rows long enough for every vector part and any threads.
    let src = "loss f(s: f32[N, C]) -> (p: f32[N, C]) {
            let e[i, k] = exp(s[i, k]) * 2.0
            let t[i] = sum[k] e[i, k]
            out p[i, k] = e[i, k] + t[i]
            sum[i] t[i] }
        loss g(s: f32[N, C]) -> (p: f32[N, C]) {
            let e[i, k] = exp(s[i, k]) * 2.0
            let t[i] = sum[k] e[i, k]
            out p[i, k] = e[i, k] + e[i, 0] + t[i]
            sum[i] t[i] }";
    let (jit, interp) = jit_and_interp("h.lx", src);
    let hosted = |name: &str| private_and_hosted(jit.kernel(Some(name)).unwrap().function());
    assert_eq!(hosted("f"), (vec![], vec![("e".to_string(), "p".to_string())]));
    assert_eq!(hosted("g"), (vec!["e".to_string()], vec![]));
    let mut rng = Rng::new(81);
    for threads in [1, 2, 3] {
        let jit = Compiler::new().threads(threads).compile_source("h.lx", src).unwrap();
        for name in ["f", "g"] {
            let f = jit.kernel(Some(name)).unwrap().function().clone();
            for shape in [[300, 37], [5, 3], [1, 1]] {
                let inputs = random_inputs(&f, &shape, &mut rng);
                modules_agree(
                    &format!("{name} {shape:?}, {threads} threads"),
                    &jit,
                    &interp,
                    Some(name),
                    &inputs,
                );
            }
        }
    }
}

#[test]
fn let_tensors_live_in_the_buffer_of_their_last_reader_and_agree() {
    // `a` is written in the group of the sum `s` and read last by `o`, a later group, at o's own element
    // (`f`): it lives in o's buffer and o's pass overwrites it in place. In `g`, `o` also reads `a[0]`,
    // which o's pass (on another thread, perhaps) may have overwritten: `a` keeps a buffer of its own.
    // In `h` the last reader is the scalar `t`, whose shape is not a's. In `k`, `o` reads `a[0]` but runs
    // in a group of its own before `q`, the last reader: `a` lives in q's buffer. Lengths with vector tails, one
    // chunk and many, and any threads: as the interpreter.
    let src = "loss f(x: f32[N] nograd) -> (o: f32[N]) {
            let a[i] = sigmoid(3.0 * x[i])
            let s = sum[i] a[i]
            out o[i] = a[i] * s
            s }
        loss g(x: f32[N] nograd) -> (o: f32[N]) {
            let a[i] = sigmoid(3.0 * x[i])
            let s = sum[i] a[i]
            out o[i] = a[i] * s + a[0]
            s }
        loss h(x: f32[N] nograd) -> (o: f32[N]) {
            let a[i] = sigmoid(3.0 * x[i])
            let s = sum[i] a[i]
            out o[i] = a[i] * s
            let t = sum[i] a[i] * o[i]
            s + t }
        loss k(x: f32[N] nograd) -> (o: f32[N], q: f32[N]) {
            let a[i] = sigmoid(3.0 * x[i])
            let s = sum[i] a[i]
            out o[i] = a[i] * s + a[0]
            out q[i] = a[i] + o[i]
            s }";
    let (jit, interp) = jit_and_interp("b.lx", src);
    let hosted = |name: &str| private_and_hosted(jit.kernel(Some(name)).unwrap().function()).1;
    for (name, host) in [("f", "o"), ("k", "q")] {
        assert!(
            hosted(name).contains(&("a".to_string(), host.to_string())),
            "{name}: {:?}",
            hosted(name)
        );
    }
    for name in ["g", "h"] {
        assert!(
            hosted(name).iter().all(|(guest, _)| guest != "a"),
            "{name}: {:?}",
            hosted(name)
        );
    }
    let anyloss = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/anyloss_f1.lx");
    let anyloss = Compiler::new().compile_file(&anyloss).unwrap();
    let (_, hosted) = private_and_hosted(anyloss.kernel(None).unwrap().function());
    assert!(hosted.contains(&("a".to_string(), "grad_p".to_string())), "{hosted:?}");
    let mut rng = Rng::new(82);
    for threads in [1, 2, 3] {
        let jit = Compiler::new().threads(threads).compile_source("b.lx", src).unwrap();
        for name in ["f", "g", "h", "k"] {
            let f = jit.kernel(Some(name)).unwrap().function().clone();
            for n in [1, 3, 7, 37, 40_003] {
                let inputs = random_inputs(&f, &[n], &mut rng);
                modules_agree(
                    &format!("{name} [{n}], {threads} threads"),
                    &jit,
                    &interp,
                    Some(name),
                    &inputs,
                );
            }
        }
    }
}

#[test]
fn a_hosted_row_plus_a_one_hot_term_agrees() {
    // `e` lives in `p`'s rows; `p = onehot + e` runs its lanes on `e`, which the row already holds, so the
    // pass stores nothing and only the label's term is added in place (as in LDR-KL's gradient). Rows
    // shorter than a vector, and with a tail, as the interpreter's.
    let src = "loss h(s: f32[N, C], y: idx[N] < C) -> (p: f32[N, C]) {
            let e[i, k] = exp(s[i, k]) * 2.0
            let t[i] = sum[k] e[i, k]
            out p[i, k] = select(k == y[i], -1.5, 0.0) + e[i, k]
            sum[i] t[i] }";
    let (jit, interp) = jit_and_interp("h.lx", src);
    let f = jit.kernel(None).unwrap().function().clone();
    assert_eq!(private_and_hosted(&f).1, [("e".to_string(), "p".to_string())]);
    let mut rng = Rng::new(83);
    for shape in [[40, 37], [5, 3], [2, 8]] {
        let inputs = random_inputs(&f, &shape, &mut rng);
        modules_agree(&format!("{shape:?}"), &jit, &interp, None, &inputs);
    }
}

#[test]
fn label_inequalities_as_numbers_and_choices_are_one_lane_compare_and_agree() {
    // `[k != y[i]]` and `select(k != y[i], a, b)` run as the lanes of `k == y[i]` (`pcmpeqd`), then
    // `andnps` against 1.0 and a select with its sides swapped; values as the interpreter's, for labels
    // in the vector lanes, the unrolled part and the scalar tail.
    let src = "loss f(s: f32[N, C], y: idx[N] < C) {
        sum[i] (logsumexp[k] [k != y[i]] + s[i, k]) + sum[k] select(k != y[i], s[i, k] * s[i, k], -s[i, k]) }";
    let (jit, interp) = jit_and_interp("ne.lx", src);
    let kernel = jit.kernel(None).unwrap();
    let clif = lossc::backend::jit::clif(kernel.function()).unwrap();
    assert!(clif.contains("bnot"), "no negated equality lanes:\n{clif}");
    let mut rng = Rng::new(5);
    for c in [19usize, 9, 4, 3] {
        let f = kernel.function().clone();
        let inputs = random_inputs(&f, &[23, c as i64], &mut rng);
        let a = kernel.eval(&inputs).unwrap();
        let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("C = {c}"), &a, &b);
    }
}

#[test]
fn choices_with_a_zero_side_are_one_mask_and_agree() {
    // `select(c, x, 0)` (autodiff's guards) is `x & c` in lanes and `select(c, 0, x)` is `x & !c`; a side
    // of -0.0 keeps the blend (its sign bit is set): `1 / q` tells -0.0 (-inf) from +0.0 (+inf). NaN in
    // the kept side stays NaN; rows of 19 reach the unrolled lanes and the tail.
    let src = "loss f(s: f32[N, C]) -> (q: f32[N, C], r: f32[N, C]) {
        out q[i, k] = 1.0 / select(s[i, k] > 0.5, s[i, k], -0.0)
        out r[i, k] = select(s[i, k] < 0.0, 0.0, s[i, k] * 3.0) + select(s[i, k] > -0.25, s[i, k], 0.0)
        sum[i] sum[k] select(s[i, k] > 0.0, s[i, k] * s[i, k], 0.0) }";
    let (jit, interp) = jit_and_interp("z.lx", src);
    let kernel = jit.kernel(None).unwrap();
    let clif = lossc::backend::jit::clif(kernel.function()).unwrap();
    assert!(clif.contains("band"), "no masked sides:\n{clif}");
    let mut rng = Rng::new(17);
    for c in [19usize, 4, 3] {
        let f = kernel.function().clone();
        let mut inputs = random_inputs(&f, &[5, c as i64], &mut rng);
        if let Some(Tensor {
            data: lossc::data::Data::Float(v),
            ..
        }) = inputs.get_mut("s")
        {
            v[1] = f64::NAN;
            v[c + 2] = 0.0;
            v[2 * c - 1] = -0.0;
        }
        let a = kernel.eval(&inputs).unwrap();
        let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("C = {c}"), &a, &b);
    }
}

#[test]
fn label_comparisons_and_condition_tensors_vectorize() {
    // `same[i, j]` is a condition tensor (computed, stored and read 4 lanes at a time) and `y[i] == y[j]`
    // compares two label loads: both run as i32 lanes in the masked reductions (vector steps and scalar
    // tail, N = 13), matching the interpreter.
    let src = "loss f(x: f32[N, N], y: idx[N]) {
        let same[i, j] = y[i] == y[j] && i != j
        sum[i] (max[j | same[i, j]] x[i, j]) + logsumexp[j | y[i] != y[j]] x[i, j] }";
    let jit = Compiler::new().compile_source("l.lx", src).unwrap();
    let kernel = jit.kernel(None).unwrap();
    let clif = lossc::backend::jit::clif(kernel.function()).unwrap();
    assert!(clif.contains("load.i8x16"), "no integer lane loads:\n{clif}");
    // Conditions are stored as i32 masks: the lanes load as they are.
    assert!(
        clif.contains("load.i32x4"),
        "the condition tensor is not read 4 lanes at a time:\n{clif}"
    );
    let interp = Compiler::new()
        .backend(Backend::Interp)
        .compile_source("l.lx", src)
        .unwrap();
    let mut rng = Rng::new(34);
    for n in [13usize, 4, 1] {
        let labels: Vec<i64> = (0..n).map(|_| rng.below(3) as i64).collect();
        let inputs = BTreeMap::from([
            (
                "x".to_string(),
                Tensor::float(vec![n, n], (0..n * n).map(|_| rng.normal()).collect()),
            ),
            ("y".to_string(), Tensor::labels(vec![n], labels)),
        ]);
        let a = kernel.eval(&inputs).unwrap();
        let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("labels, N = {n}"), &a, &b);
    }
}

#[test]
fn a_logsumexp_constant_along_its_row_keeps_no_exponentials() {
    // Found by the property test: `logsumexp[k] x[i, y[i]]` does not depend on k, so its gradient's
    // `exp(x[i, y[i]] - r0[i])` is computed once per row, before any position of a kept row exists.
    let src = "loss f(x: f32[N, C], y: idx[N] < C) {
        mean[i] sigmoid(logsumexp[k: C] x[i, y[i]]) + x[i, y[i]] * (sum[k | x[i, k] > -0.5] tanh(x[i, k])) }";
    let (jit, interp) = jit_and_interp("c.lx", src);
    let f = jit.kernel(None).unwrap().function().clone();
    assert!(lossc::backend::loops::Plan::new(&f).kept_exps.iter().all(|e| e.plain));
    let mut rng = Rng::new(567);
    for (n, c) in [(3usize, 4usize), (5, 9)] {
        let inputs = BTreeMap::from([
            (
                "x".to_string(),
                Tensor::float(vec![n, c], (0..n * c).map(|_| rng.normal()).collect()),
            ),
            (
                "y".to_string(),
                Tensor::labels(vec![n], (0..n).map(|_| rng.below(c as u64) as i64).collect()),
            ),
        ]);
        let a = jit.kernel(None).unwrap().eval(&inputs).unwrap();
        let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("N = {n}, C = {c}"), &a, &b);
    }
}

#[test]
fn matrix_products_run_as_gemm_in_any_layout() {
    // Every operand layout (plain and transposed on either side), a product whose factors are split into
    // materialized operands (`w[k]` joins the left one), masked adjoint products in the gradients, the
    // symmetric products a·aᵀ and atᵀ·at (half computed, half mirrored), and row counts below, at and
    // past the block sizes (64 and 128) with odd extents.
    let src = "loss f(a: f32[P, K], b: f32[Q, K], at: f32[K, P], bt: f32[K, Q], w: f32[K]) {
        let s1[i, j] = sum[k] a[i, k] * b[j, k]
        let s2[i, j] = sum[k] at[k, i] * bt[k, j]
        let s3[i, j] = sum[k] a[i, k] * w[k] * bt[k, j]
        let s4[u, v] = sum[k] a[u, k] * a[v, k]
        let s5[u, v] = sum[k] at[k, u] * at[k, v]
        (sum[i, j] tanh(s1[i, j]) * s2[i, j] + softplus(s3[i, j] - s1[i, j]))
            + sum[u, v] sigmoid(s4[u, v] + 0.1 * v) * s5[u, v] }";
    let (jit, interp) = jit_and_interp("g.lx", src);
    let f = jit.kernel(None).unwrap().function().clone();
    let plan = lossc::backend::loops::Plan::new(&f);
    // s1, s2, s3 (after its left operand `a * w` is materialized) and the gradients' products.
    assert!(plan.contractions.len() >= 7, "{} products", plan.contractions.len());
    assert!(
        f.tensors.iter().any(|t| t.name.ends_with("_lhs")),
        "no materialized operand"
    );
    let symmetric = plan
        .contractions
        .iter()
        .filter(|c| c.left.buffer == c.right.buffer && c.left.transposed != c.right.transposed)
        .count();
    assert!(symmetric >= 2, "{symmetric} symmetric products");
    let mut rng = Rng::new(77);
    for (p, q, k) in [
        (3usize, 5usize, 7usize),
        (64, 9, 33),
        (131, 70, 5),
        (200, 3, 4),
        (2, 1, 0),
    ] {
        let mut m = |r: usize, c: usize| Tensor::float(vec![r, c], (0..r * c).map(|_| rng.normal() * 0.3).collect());
        let inputs = BTreeMap::from([
            ("a".to_string(), m(p, k)),
            ("b".to_string(), m(q, k)),
            ("at".to_string(), m(k, p)),
            ("bt".to_string(), m(k, q)),
            (
                "w".to_string(),
                Tensor::float(vec![k], (0..k).map(|_| rng.normal()).collect()),
            ),
        ]);
        let a = jit.kernel(None).unwrap().eval(&inputs).unwrap();
        let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("P = {p}, Q = {q}, K = {k}"), &a, &b);
        // Fixed blocks of rows: the same bits for any thread count.
        for threads in [1, 3] {
            let c = Compiler::new().threads(threads).compile_source("g.lx", src).unwrap();
            let c = c.kernel(None).unwrap().eval(&inputs).unwrap();
            assert_eq!(format!("{:?}", c.grads), format!("{:?}", a.grads), "{threads} threads");
        }
    }
}

#[test]
fn masked_products_skip_non_finite_operands_as_the_interpreter_does() {
    // grad_x[i, d] = sum[c | L[i, c] != 0] L[i, c] * w[d, c] with L = select(s > 0, 2 s, 0): where w holds an
    // infinity (or NaN), a dense
    // product would give 0 * inf = NaN for the points the mask leaves out; the kernel falls back to the
    // masked loop there, and runs the dense product otherwise.
    let src = "loss f(x: f32[N, D], w: f32[D, C]) {
        let s[i, c] = sum[d] x[i, d] * w[d, c]
        sum[i, c | s[i, c] > 0.0] s[i, c] * s[i, c] }";
    let (jit, interp) = jit_and_interp("m.lx", src);
    let f = jit.kernel(None).unwrap().function().clone();
    let plan = lossc::backend::loops::Plan::new(&f);
    assert!(
        plan.contractions.iter().any(|c| c.must_be_finite.is_some()),
        "no guarded product"
    );
    let (n, d, c) = (70usize, 3usize, 4usize);
    let mut rng = Rng::new(5);
    let x: Vec<f64> = (0..n * d).map(|_| rng.normal().abs() + 0.1).collect();
    // The products' functions are compiled only when a call needs one (`s` and the guarded `grad_x`).
    let kernel = jit.kernel(None).unwrap();
    let uncompiled = || kernel.native().unwrap().uncompiled_groups();
    assert!(
        uncompiled() >= 2,
        "the products' functions were compiled with the kernel"
    );
    let before = uncompiled();
    for poison in [None, Some(f64::INFINITY), Some(f64::NAN)] {
        let mut w: Vec<f64> = (0..d * c).map(|_| rng.normal()).collect();
        if let Some(v) = poison {
            // w[0, 1]: s[:, 1] is -inf (or NaN), masked out, so its adjoint is 0.
            w[1] = -v.abs();
        }
        let inputs = BTreeMap::from([
            ("x".to_string(), Tensor::float(vec![n, d], x.clone())),
            ("w".to_string(), Tensor::float(vec![d, c], w)),
        ]);
        // Two threads at once: one compiles the fallback, the other waits for it.
        let (a, again) = std::thread::scope(|scope| {
            let other = scope.spawn(|| kernel.eval(&inputs).unwrap());
            (kernel.eval(&inputs).unwrap(), other.join().unwrap())
        });
        let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("poison {poison:?}"), &a, &b);
        assert_agree(&format!("poison {poison:?}, the other thread"), &again, &b);
        // A finite `w` runs the products as sgemm; a poisoned one needs the guarded product's function.
        let compiled = before - uncompiled();
        assert_eq!(compiled, usize::from(poison.is_some()), "poison {poison:?}");
        if poison == Some(f64::INFINITY) {
            let g = b.grads[0].1.to_f64();
            assert!(
                g.iter().all(|v| v.is_finite()),
                "the interpreter's grad_x is finite: {g:?}"
            );
        }
    }
}

#[test]
fn column_sums_agree_in_blocks_vectors_and_tail() {
    // `c[h] = sum[i | m] e(i, h)` reads rows i at consecutive h: it runs 16 columns per pass over i, then
    // 4, then one at a time (H = 37 and 16 cover all three and the block alone).
    let src = "loss f(a: f32[N, H], b: f32[N, H], v: f32[N]) {
        let c[h] = sum[i | a[i, h] > -0.5] v[i] * exp(a[i, h]) / (1.0 + b[i, h] * b[i, h])
        sum[h] c[h] * c[h] }";
    let (jit, interp) = jit_and_interp("c.lx", src);
    let mut rng = Rng::new(9);
    for (n, h) in [(23usize, 37usize), (5, 16), (3, 2)] {
        let mut m = |len: usize, shape: Vec<usize>| Tensor::float(shape, (0..len).map(|_| rng.normal()).collect());
        let inputs = BTreeMap::from([
            ("a".to_string(), m(n * h, vec![n, h])),
            ("b".to_string(), m(n * h, vec![n, h])),
            ("v".to_string(), m(n, vec![n])),
        ]);
        let a = jit.kernel(None).unwrap().eval(&inputs).unwrap();
        let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("N = {n}, H = {h}"), &a, &b);
    }
}

#[test]
fn transposed_reads_run_in_tiles_and_gathered_lanes_and_agree() {
    // `m[i, j]` reads `a[j, i]` and `a[i, j]`: it runs in tiles of 16 columns by the chunk's rows, a whole
    // tile's rows four at a time with `a[j, i]` read as 4 x 4 blocks transposed in registers (each row's
    // `v[i]` computed once per block), the last tile and the chunk's last rows 4 columns at a time with
    // `a[j, i]` gathered lane by lane; `c[i]` sums `a[j, i]` (contiguous along i) times a gathered
    // `b[i, j]`. Odd sizes exercise the last tile, the last chunk and the scalar tails, and a value that
    // varies along both indices checks that nothing depending on j is computed once per tile.
    let src = "loss f(a: f32[N, N], b: f32[N, N], v: f32[N]) {
        let m[i, j] = a[j, i] * v[i] + tanh(a[i, j] - v[j]) * a[j, i] / (1.0 + v[i] * v[j])
        let c[i] = sum[j] a[j, i] / (1.0 + b[i, j] * b[i, j])
        sum[i, j] m[i, j] * m[i, j] + c[i] * v[j] }";
    let (jit, interp) = jit_and_interp("t.lx", src);
    let clif = lossc::backend::jit::clif(jit.kernel(None).unwrap().function()).unwrap();
    assert!(clif.contains("insertlane"), "no gathered lanes:\n{clif}");
    let mut rng = Rng::new(12);
    // At 601 columns a chunk takes 8 rows (not the 6 that make 4,096 points): the last chunk has one.
    assert_eq!(lossc::backend::jit::chunk_rows(601, 601, false, true, 2), 8);
    assert_eq!(lossc::backend::jit::chunk_rows(601, 601, false, false, 2), 6);
    for n in [1usize, 15, 16, 37, 40, 601] {
        let mut m = |len: usize, shape: Vec<usize>| Tensor::float(shape, (0..len).map(|_| rng.normal()).collect());
        let inputs = BTreeMap::from([
            ("a".to_string(), m(n * n, vec![n, n])),
            ("b".to_string(), m(n * n, vec![n, n])),
            ("v".to_string(), m(n, vec![n])),
        ]);
        // Among 601² pairs some have 1 + v[i] v[j] near 0, whose terms f32 cannot carry: v ≥ 0 there.
        let mut inputs = inputs;
        if n > 100 {
            let v: Vec<f64> = inputs["v"].to_f64().iter().map(|x| x.abs()).collect();
            inputs.insert("v".to_string(), Tensor::float(vec![n], v));
        }
        let a = jit.kernel(None).unwrap().eval(&inputs).unwrap();
        let b = interp.kernel(None).unwrap().eval(&inputs).unwrap();
        if n < 100 {
            assert_agree(&format!("N = {n}"), &a, &b);
            continue;
        }
        // 601-term f32 dot products in the gradient: agreement to 1e-3 of the largest value.
        assert!(
            (a.loss - b.loss).abs() <= 1e-4 * b.loss.abs(),
            "{} vs {}",
            a.loss,
            b.loss
        );
        for ((name, x), (_, y)) in a.grads.iter().zip(&b.grads) {
            let (x, y) = (x.to_f64(), y.to_f64());
            let scale = y.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-3 * scale, "N = {n}: {name} off by {worst} (scale {scale})");
        }
    }
}

#[test]
fn light_loops_run_two_vectors_per_iteration_and_agree() {
    // The vector loops of light bodies (a row's max pass, light gradient rows and row sums) handle two vectors per iteration, then single points (up to seven):
    // every C from 1 to 37 crosses each boundary, with the extreme anywhere in the row.
    let src = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }
        loss ldr(s: f32[N, C], y: idx[N] < C, lambda: f32 = 0.5) {
            let m[i, k] = [k != y[i]] + s[i, k] - s[i, y[i]]
            mean[i] lambda * (logsumexp[k] m[i, k] / lambda) }
        loss dro(s: f32[N, C], y: idx[N] < C, lambda: f32 = 2.0) {
            let l[i] = (logsumexp[k] s[i, k]) - s[i, y[i]]
            lambda * (logsumexp[i] l[i] / lambda) }
        loss spread(s: f32[N, C]) { sum[i] (max[k] s[i, k]) - 2.0 * (min[k] 3.0 * s[i, k] + 1.0) }
        loss hinge(s: f32[N, C], y: idx[N] < C) {
            mean[i] sum[k] [k != y[i]] * relu(1.0 + s[i, k] - s[i, y[i]]) }";
    let (jit, interp) = jit_and_interp("u.lx", src);
    let mut rng = Rng::new(37);
    for name in jit.losses() {
        let f = jit.kernel(Some(name)).unwrap().function().clone();
        for c in 1..=37i64 {
            let inputs = random_inputs(&f, &[3, c], &mut rng);
            let a = jit.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            let b = interp.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            assert_agree(&format!("{name}, C = {c}"), &a, &b);
        }
    }
}

#[test]
fn elementwise_runs_end_in_an_overlapping_vector_and_agree() {
    // An elementwise run of at least a vector covers the points its vector loop leaves with vectors, the
    // last ending at the run's end (it overlaps the one before); shorter runs are scalar. Every length
    // from 1 to 13 (light bodies run two vectors per iteration and leave up to seven points), rows and
    // one-index maps, a sigmoid at the root (the row helper), heavy and light bodies, one and two
    // threads (a chunk's run ends inside the vector), and every point written: no NaN left by a stale
    // buffer, each value as the interpreter's.
    let src = "loss rows(s: f32[N, C]) -> (light: f32[N, C], heavy: f32[N, C], squash: f32[N, C]) {
            out light[i, k] = 2.0 * s[i, k] + 1.0
            out heavy[i, k] = log(1.0 + exp(s[i, k])) * tanh(s[i, k] - 0.5) + s[i, k] / (2.0 + s[i, k] * s[i, k])
            out squash[i, k] = sigmoid(3.0 * s[i, k])
            sum[t] sum[c] s[t, c] * s[t, c] }
        loss points(p: f32[N], y: f32[N] nograd, L: f32 = 7.0) {
            let a[i] = sigmoid(L * (p[i] - 0.5))
            let tp = sum[i] a[i] * y[i]
            1.0 - tp / ((sum[i] a[i]) + (sum[j] y[j])) }";
    let jit1 = Compiler::new().threads(1).compile_source("v.lx", src).unwrap();
    let (jit2, interp) = jit_and_interp("v.lx", src);
    let mut rng = Rng::new(44);
    for name in ["rows", "points"] {
        let f = jit2.kernel(Some(name)).unwrap().function().clone();
        for len in 1..=13i64 {
            let sizes: &[i64] = if name == "rows" { &[3, len] } else { &[len] };
            let inputs = random_inputs(&f, sizes, &mut rng);
            let b = interp.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            for jit in [&jit1, &jit2] {
                let a = jit.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
                assert_agree(&format!("{name}, length {len}"), &a, &b);
            }
        }
    }
    // A one-index map over a million points runs in chunks of the outer loop: with two threads each
    // chunk's run ends in an overlapping vector where its length is not a multiple of 8.
    let f = jit2.kernel(Some("points")).unwrap().function().clone();
    for n in [4099i64, 70_003] {
        let inputs = random_inputs(&f, &[n], &mut rng);
        let a = jit2.kernel(Some("points")).unwrap().eval(&inputs).unwrap();
        let b = interp.kernel(Some("points")).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("points, N = {n}"), &a, &b);
    }
}

#[test]
fn sibling_sums_run_in_one_loop_with_the_bits_each_has_alone() {
    // Two cheap sums over one index are computed in one loop (their loads shared); each must keep the
    // bits it has when it is the only sum: `max(a, b - 1e30)` is `a` exactly.
    let src = "loss alone(p: f32[N], y: f32[N]) { sum[i] p[i] * y[i] }
        loss both(p: f32[N], y: f32[N]) {
            let a = sum[i] p[i] * y[i]
            let b = sum[i] p[i] * (1.0 - y[i])
            max(a, b - 1e30) }";
    let (jit, interp) = jit_and_interp("s.lx", src);
    let f = jit.kernel(Some("both")).unwrap().function().clone();
    let plan = lossc::backend::loops::Plan::new(&f);
    let sums = plan
        .groups
        .iter()
        .find(|g| g.members.len() == 2)
        .expect("a and b in one group");
    let names: Vec<&str> = sums
        .members
        .iter()
        .map(|m| f.tensor(plan.nests[*m].tensor).name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let mut rng = Rng::new(5);
    for n in [1i64, 3, 15, 16, 17, 37, 70_001] {
        let inputs = random_inputs(&f, &[n], &mut rng);
        let alone = jit.kernel(Some("alone")).unwrap().eval(&inputs).unwrap();
        let both = jit.kernel(Some("both")).unwrap().eval(&inputs).unwrap();
        assert_eq!(alone.loss.to_bits(), both.loss.to_bits(), "N = {n}");
        let reference = interp.kernel(Some("both")).unwrap().eval(&inputs).unwrap();
        assert_agree(&format!("N = {n}"), &both, &reference);
    }
}

#[test]
fn sums_and_means_add_sixteen_points_at_a_time_and_agree() {
    // A row's sum and unmasked mean add 16 points in f32 before widening (then 4, then one by one):
    // C = 15, 16, 37 and 70 cover every part; the mean's count must follow.
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/z_loss.lx")).unwrap();
    let src = format!(
        "{src}\nloss sums(s: f32[N, C]) {{ mean[i] (sum[k] s[i, k] * s[i, k]) - 3.0 * (mean[k] tanh(s[i, k])) }}"
    );
    let (jit, interp) = jit_and_interp("m.lx", &src);
    let mut rng = Rng::new(21);
    for name in jit.losses() {
        for c in [15usize, 16, 37, 70] {
            let f = jit.kernel(Some(name)).unwrap().function().clone();
            let n = 5;
            let inputs = random_inputs(&f, &[n as i64, c as i64], &mut rng);
            let a = jit.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            let b = interp.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            assert_agree(&format!("{name}, C = {c}"), &a, &b);
        }
    }
}

#[test]
fn one_hot_terms_are_written_after_the_lanes_and_agree() {
    // Cross-entropy's gradient is `select(y[i] == k, -1/N, 0) + softmax / N`: the lanes compute the
    // softmax part and the label's term is added at k = y[i] afterwards, also where y[i] falls in the
    // last vector, which overlaps the one before (C = 7: lanes 0..4, then 3..7); a row shorter than a
    // vector (C = 3) runs scalar code, which computes whole elements. Every label position is used.
    // In `deep`'s output `g` the term sits inside a sum of three (`(onehot + x) + y`): the lanes compute
    // the sum with the term as 0. In `h` the same term also occurs outside the sum, in `u` a bracket
    // inside a product, in `v` a select that is not 0 elsewhere: the lanes compute the term as it is away
    // from the label, and the element at the label is computed whole and written after them. `smooth`'s
    // gradient reads the softmax's kept exponentials from its own row, and its smoothed target's
    // `(1 - eps) [k == y[i]]` is a bracket inside a product: the element at the label is computed before
    // the lanes overwrite the exponential it reads.
    let src = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }
        loss deep(s: f32[N, C], y: idx[N] < C) -> (g: f32[N, C], h: f32[N, C], u: f32[N, C], v: f32[N, C]) {
            out g[i, k] = select(k == y[i], -1.5, 0.0) + s[i, k] * s[i, k] + 0.5 * s[i, k]
            out h[i, k] = select(k == y[i], -1.5, 0.0) + s[i, k] + 2.0 * select(k == y[i], -1.5, 0.0)
            out u[i, k] = -0.25 * (0.1 + 0.9 * [k == y[i]]) + s[i, k] * s[i, k]
            out v[i, k] = s[i, k] * select(k == y[i], 2.0, -0.5) + 1.0
            sum[i] s[i, y[i]] }
        loss smooth(s: f32[N, C], y: idx[N] < C, eps: f32 = 0.1) {
            let q[i, k] = (1 - eps) * [k == y[i]] + eps / C
            let logp[i, k] = s[i, k] - logsumexp[c] s[i, c]
            mean[i] -sum[k] q[i, k] * logp[i, k] }";
    let (jit, interp) = jit_and_interp("o.lx", src);
    let mut rng = Rng::new(8);
    for c in [7usize, 8, 3, 19] {
        let n = 2 * c;
        let inputs = BTreeMap::from([
            (
                "s".to_string(),
                Tensor::float(vec![n, c], (0..n * c).map(|_| rng.normal()).collect()),
            ),
            (
                "y".to_string(),
                Tensor::labels(vec![n], (0..n).map(|i| (i % c) as i64).collect()),
            ),
        ]);
        for name in ["ce", "deep", "smooth"] {
            let a = jit.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            let b = interp.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            assert_agree(&format!("{name}, C = {c}"), &a, &b);
        }
    }
}

#[test]
fn masked_softmax_rows_keep_their_exponentials_and_agree() {
    // A masked logsumexp's gradient reads exp(x - lse) only where the mask holds (autodiff's guard), so its
    // row keeps the exponentials of the masked points (the gradient's `2.0 * s` is the body's `s * 2.0`).
    // Two of them feed one gradient row: one lives in the gradient's row, the other in a scratch row per
    // worker. The row helper computes them: the first pass leaves -inf where the mask fails (also in the
    // scalar tail, points 8..11 of a row of 11). Rows whose mask holds nowhere, or holds on NaN, +inf or
    // -inf (and NaN where it does not hold), must match the interpreter at any thread count.
    let src = "loss two(s: f32[N, C], y: idx[N] < C) {
        mean[i] (logsumexp[k | k != y[i]] s[i, k]) + 0.5 * (logsumexp[k | s[i, k] > 0.0] 2.0 * s[i, k]) }";
    let (_, interp) = jit_and_interp("two.lx", src);
    let f = interp.kernel(None).unwrap().function().clone();
    let plan = lossc::backend::loops::Plan::new(&f);
    let scratch: Vec<bool> = plan.kept_exps.iter().map(|e| e.scratch.is_some()).collect();
    assert_eq!(scratch, [false, true], "both rows kept, the second in a scratch row");
    // Each member of the fused row loads the pointers of its buffers again at its start (moving a scratch
    // row's back by the row's offset), so none lives across another member's loops: the fused group's
    // function reads an entry of its pointer table (its first parameter, v0) more than once.
    let clif = lossc::backend::jit::clif(&f).unwrap();
    let fused = clif
        .split("; group ")
        .find(|g| g.lines().next().is_some_and(|head| head.contains(", ")))
        .expect("a fused group");
    let table_reads: Vec<&str> = fused
        .lines()
        .filter_map(|l| l.split_once("load.i64 notrap aligned v0").map(|(_, at)| at))
        .collect();
    let entries: std::collections::HashSet<&&str> = table_reads.iter().collect();
    assert!(
        table_reads.len() > entries.len(),
        "the members do not reload their pointers:\n{fused}"
    );
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    let rows: [[f64; 11]; 7] = [
        [0.5, -1.0, 2.0, 0.0, 3.0, -2.5, 1.0, 0.25, -0.5, 1.5, 2.5],
        [-0.5, -1.0, -2.0, -0.1, -3.0, -2.5, -1.0, -0.25, -0.5, -1.5, -2.5],
        [0.5, nan, 2.0, 0.0, 3.0, -2.5, 1.0, 0.25, -0.5, 1.5, 2.5],
        [inf, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.25, -0.5, 1.5, 2.5],
        [-inf, 0.0, 1.0, 2.0, -inf, 4.0, 5.0, 0.25, -inf, 1.5, -inf],
        [80.0, -80.0, 0.0, 40.0, -40.0, 79.0, 1e-3, 0.25, -0.5, 1.5, 90.0],
        [1.0, 2.0, 3.0, nan, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.0],
    ];
    let batch = |pick: &[usize]| row_batch(&rows, &[3, 1, 2, 0, 4, 10, 3], pick);
    // The probabilities of a masked softmax summed over every point: its gradient reads exp(x - lse) at
    // every point, where the row has no exponential; the logsumexp keeps nothing (the plain sum of those
    // exponentials keeps its own for the gradient, which reads them as they are).
    let unguarded = "loss p(s: f32[N, C], y: idx[N] < C) {
        let r[i] = logsumexp[k | k != y[i]] s[i, k]
        sum[i] (sum[k] exp(s[i, k] - r[i])) + r[i] }";
    let (jit, unguarded_interp) = jit_and_interp("p.lx", unguarded);
    let f = jit.kernel(None).unwrap().function().clone();
    assert!(lossc::backend::loops::Plan::new(&f).kept_exps.iter().all(|e| e.plain));
    let many: Vec<usize> = (0..40).map(|r| [0, 5, 0, 1, 5][r % 5]).collect();
    modules_agree(unguarded, &jit, &unguarded_interp, None, &batch(&many));
    for threads in [1, 2, 3] {
        let jit = Compiler::new().threads(threads).compile_source("two.lx", src).unwrap();
        let each = (0..rows.len()).map(|r| batch(&[r, 0]));
        for inputs in [batch(&many), batch(&[0, 1, 2, 3, 4, 5, 6])].into_iter().chain(each) {
            modules_agree(&format!("{threads} threads"), &jit, &interp, None, &inputs);
        }
    }
}

#[test]
fn column_sums_run_in_tiles_with_the_same_bits_for_any_thread_count() {
    // `c[j]` (and the gradient's `grad_w[j]`) sum a column of `m` each: tiles of up to 512 columns along
    // the rows, a partial tile, a single vector and a scalar column at the end (C = 1109). The chunks of
    // columns depend on the thread count, each column's sum does not: bit for bit the same for 1, 2, 3 and
    // 5 threads, and as the interpreter. `g` reads one matrix transposed (gathered lanes, no tiles).
    let src = "loss f(m: f32[R, C], w: f32[C], v: f32[R]) -> (c: f32[C]) {
            out c[j] = sum[i | m[i, j] > -0.5] v[i] * m[i, j] / w[j]
            sum[j] c[j] * c[j] }
        loss g(a: f32[N, N], b: f32[N, N]) {
            let d[j] = sum[i] a[j, i] * b[i, j]
            sum[j] d[j] * d[j] }";
    let interp = Compiler::new()
        .backend(Backend::Interp)
        .compile_source("c.lx", src)
        .unwrap();
    let mut rng = Rng::new(41);
    for (name, sizes) in [("f", vec![37, 1109]), ("g", vec![300])] {
        let module = |threads: usize| Compiler::new().threads(threads).compile_source("c.lx", src).unwrap();
        let one = module(1);
        let inputs = random_inputs(one.kernel(Some(name)).unwrap().function(), &sizes, &mut rng);
        let a = one.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
        for threads in [2, 3, 5] {
            let b = module(threads).kernel(Some(name)).unwrap().eval(&inputs).unwrap();
            assert!(a == b, "{name}: {threads} threads give other bits than one");
        }
        let b = interp.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
        assert_agree(name, &a, &b);
    }
}

#[test]
fn plain_sums_of_exponentials_keep_them_for_their_reader() {
    // `r[i] = sum[j | j != i] exp(s[i, j])` (read under a square root: under a `log` it would be a
    // logsumexp) and the gradient's `exp(s[t, j])` under the same guard: the sum
    // leaves its exponentials in the gradient's row, which reads them as they are (one exp per element).
    // The diagonal (masked out) holds NaN and infinities in some rows; rows of -inf and +inf elsewhere.
    // As the interpreter at any thread count; NT-Xent (W4) too, whose gradient reads two such rows in a
    // later group (their factor, 1, left in a buffer).
    let src = "loss f(s: f32[N, N]) {
            let r[i] = sum[j | j != i] exp(s[i, j])
            mean[i] sqrt(r[i]) }";
    let (jit, interp) = jit_and_interp("p.lx", src);
    let f = jit.kernel(None).unwrap().function().clone();
    let plan = lossc::backend::loops::Plan::new(&f);
    assert!(
        plan.kept_exps.iter().any(|e| e.plain),
        "a plain sum keeps its exponentials"
    );
    let mut rng = Rng::new(12);
    let n = 37;
    let mut s: Vec<f64> = (0..n * n).map(|_| 2.0 * rng.normal()).collect();
    for (row, x) in [(0, f64::NAN), (1, f64::INFINITY), (2, f64::NEG_INFINITY)] {
        s[row * n + row] = x;
    }
    s[3 * n + 7] = f64::NEG_INFINITY;
    s[4 * n + 9] = f64::INFINITY;
    s[5 * n + 2] = 80.0;
    let inputs = BTreeMap::from([("s".to_string(), Tensor::float(vec![n, n], s))]);
    for threads in [1, 2, 3] {
        let jit = Compiler::new().threads(threads).compile_source("p.lx", src).unwrap();
        modules_agree(&format!("{threads} threads"), &jit, &interp, None, &inputs);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nt_xent.lx");
    let jit = Compiler::new().compile_file(&path).unwrap();
    let interp = Compiler::new().backend(Backend::Interp).compile_file(&path).unwrap();
    let f = jit.kernel(None).unwrap().function().clone();
    let kept = lossc::backend::loops::Plan::new(&f).kept_exps;
    let plain = |later: bool| kept.iter().filter(|e| e.plain && e.factors.is_some() == later).count();
    assert_eq!((plain(false), plain(true)), (1, 2), "{kept:?}");
    let inputs = random_inputs(&f, &[45, 19], &mut rng);
    modules_agree("nt_xent", &jit, &interp, None, &inputs);
}

/// Labels declared `ignore = 255`: accepted at call time, skipped by a mask, never read out of bounds (an
/// unguarded read of one is an index error); any other value outside the bound is a label error.
#[test]
fn labels_to_ignore_are_accepted_and_never_read() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/in/ignore_labels.lx");
    let s: Vec<f64> = (0..20).map(|k| ((k * 7) % 11) as f64 * 0.3 - 1.0).collect();
    let batch = |labels: &[i64], rows: &[usize]| {
        BTreeMap::from([
            (
                "s".to_string(),
                Tensor::float(
                    vec![rows.len(), 4],
                    rows.iter().flat_map(|r| s[r * 4..r * 4 + 4].to_vec()).collect(),
                ),
            ),
            ("y".to_string(), Tensor::labels(vec![rows.len()], labels.to_vec())),
        ])
    };
    let all = batch(&[2, 255, 0, 255, 3], &[0, 1, 2, 3, 4]);
    let kept = batch(&[2, 0, 3], &[0, 2, 4]);
    for backend in [Backend::Jit, Backend::Interp] {
        let k = Compiler::new()
            .backend(backend)
            .compile_file(&path)
            .unwrap()
            .kernel(None)
            .unwrap();
        let (e, r) = (k.eval(&all).unwrap(), k.eval(&kept).unwrap());
        assert!(
            (e.loss - r.loss).abs() < 1e-6,
            "{backend:?}: {} vs {} over the kept rows",
            e.loss,
            r.loss
        );
        let g = e.grads[0].1.to_f64();
        assert!(
            g[4..8].iter().chain(&g[12..16]).all(|v| *v == 0.0),
            "{backend:?}: ignored rows get {g:?}"
        );
        let bad = k.eval(&batch(&[2, 7, 0, 255, 3], &[0, 1, 2, 3, 4])).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "label out of range: `y` at position [1] is 7, but labels must lie in 0..C (C = 4) or be 255"
        );
        let unguarded = "loss f(s: f32[N, C], y: idx[N] < C ignore = 255) { mean[i] s[i, y[i]] }";
        let k = Compiler::new()
            .backend(backend)
            .compile_source("u.lx", unguarded)
            .unwrap()
            .kernel(None)
            .unwrap();
        let e = k.eval(&all).unwrap_err();
        assert!(
            matches!(e, lossc::CallError::IndexOutOfRange { .. }),
            "{backend:?}: {e}"
        );
    }
}

/// Reductions over the channels of [B, C, H, W] scores run four pixels per vector (simd.rs `vreduce`):
/// per pixel, as the interpreter computes them, also where a pixel's channels hold an infinity or a NaN
/// (the maximum is the result), where a mask leaves a pixel no channel, and at a low temperature (the
/// logsumexp's residual). Per-pixel outputs show each lane.
#[test]
fn channel_reductions_agree_pixel_by_pixel() {
    let src = "loss px(s: f32[B, C, H, W], y: idx[B, H, W] < C, t: f32 = 1.0)
        -> (lse: f32[B, H, W], hi: f32[B, H, W], lo: f32[B, H, W], rest: f32[B, H, W]) {
    out lse[b, i, j] = logsumexp[c] s[b, c, i, j] / t
    out hi[b, i, j] = max[c] s[b, c, i, j]
    out lo[b, i, j] = min[c] s[b, c, i, j]
    out rest[b, i, j] = logsumexp[c | c != y[b, i, j] && s[b, c, i, j] > -5.0] s[b, c, i, j]
    mean[b, i, j] lse[b, i, j] - s[b, y[b, i, j], i, j] / t
}";
    let (jit, interp) = jit_and_interp("px.lx", src);
    let (b, c, h, w) = (2usize, 3usize, 2usize, 9usize);
    let mut rng = Rng::new(5);
    let mut s: Vec<f64> = (0..b * c * h * w).map(|_| rng.normal()).collect();
    let y: Vec<i64> = (0..b * h * w).map(|_| rng.below(c as u64) as i64).collect();
    let at = |bb: usize, cc: usize, i: usize, j: usize| ((bb * c + cc) * h + i) * w + j;
    s[at(0, 1, 0, 2)] = f64::INFINITY;
    s[at(0, 2, 1, 5)] = f64::NEG_INFINITY;
    s[at(1, 0, 0, 1)] = f64::NAN;
    for cc in 0..c {
        s[at(1, cc, 1, 7)] = -9.0; // masked out entirely in `rest`
    }
    let inputs = BTreeMap::from([
        ("s".to_string(), Tensor::float(vec![b, c, h, w], s.clone())),
        ("y".to_string(), Tensor::labels(vec![b, h, w], y.clone())),
    ]);
    for t in [1.0, 0.01] {
        let hypers = BTreeMap::from([("t".to_string(), t)]);
        let a = jit.kernel(None).unwrap().eval_with(&inputs, &hypers).unwrap();
        let e = interp.kernel(None).unwrap().eval_with(&inputs, &hypers).unwrap();
        for ((n, x), (_, z)) in a.outputs.iter().zip(&e.outputs) {
            for (k, (p, q)) in x.to_f64().iter().zip(z.to_f64()).enumerate() {
                assert!(close(*p, q), "t = {t}: {n}[{k}] jit {p} vs interp {q}");
            }
        }
    }
    // Finite scores of magnitude ~50 at a low temperature (logsumexps near 5000, where f32 rounds by
    // 5e-4): the loss and its gradient too, which the logsumexp's residual keeps at float32 accuracy.
    let finite: Vec<f64> = s.iter().map(|v| if v.is_finite() { 50.0 * v } else { 0.5 }).collect();
    let inputs = BTreeMap::from([
        ("s".to_string(), Tensor::float(vec![b, c, h, w], finite)),
        ("y".to_string(), Tensor::labels(vec![b, h, w], y)),
    ]);
    let hypers = BTreeMap::from([("t".to_string(), 0.01)]);
    let a = jit.kernel(None).unwrap().eval_with(&inputs, &hypers).unwrap();
    let e = interp.kernel(None).unwrap().eval_with(&inputs, &hypers).unwrap();
    assert_agree("px at t = 0.01", &a, &e);
}

/// A constant table read beyond its ends reads its nearest entry ([`lossc::ir::Expr::Table`]), in the JIT
/// (a clamped read of the lane pool) as in the interpreter, and its gradient flows through the load it
/// subscripts (`common::tables_read_beyond_their_ends`).
#[test]
fn tables_read_beyond_their_ends_take_the_nearest_entry() {
    let (f, inputs, loss, grad) = common::tables_read_beyond_their_ends();
    for (what, compiler) in [
        ("jit", Compiler::new()),
        ("interp", Compiler::new().backend(Backend::Interp)),
    ] {
        let e = lossc::Kernel::build(&f, &compiler).unwrap().eval(&inputs).unwrap();
        common::assert_loss_and_grad(what, &e, loss, &grad);
    }
}

//! Symbolic gradients against central finite differences: for every primitive (driven by the primitive
//! table), every reduction, every example and every feature input.

use std::collections::BTreeMap;
use std::path::Path;

use lossc::data::Rng;
use lossc::prims::Prim;
use lossc::{Program, Tensor};

fn random_inputs(
    f: &lossc::ir::Function,
    sizes: &BTreeMap<&str, i64>,
    rng: &mut Rng,
    lo: f64,
    hi: f64,
) -> BTreeMap<String, Tensor> {
    let dims: Vec<i64> = f
        .dims
        .iter()
        .map(|d| *sizes.get(d.name.as_str()).unwrap_or(&3))
        .collect();
    let mut m = BTreeMap::new();
    for input in f.inputs.iter().filter(|i| i.given()) {
        let shape: Vec<usize> = input.shape.iter().map(|d| d.eval(&dims) as usize).collect();
        let n: usize = shape.iter().product();
        let t = if input.elem == lossc::ir::ElemTy::Idx {
            let b = input.bound.as_ref().map_or(3, |b| b.eval(&dims));
            Tensor::labels(shape, (0..n).map(|_| rng.below(b as u64) as i64).collect())
        } else {
            Tensor::float(shape, (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect())
        };
        m.insert(input.name.clone(), t);
    }
    m
}

fn assert_gradcheck(name: &str, src: &str, inputs: &BTreeMap<String, Tensor>) -> usize {
    let p = Program::from_source(name, src).unwrap_or_else(|d| panic!("{}", d.render()));
    let mut checked = 0;
    for f in &p.module.functions {
        let g = lossc::autodiff::grad(f).unwrap();
        lossc::ir::verify::verify(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        let result = lossc::gradcheck::check(f, inputs, &BTreeMap::new(), 64).unwrap();
        for c in result {
            assert!(
                c.max_error <= lossc::gradcheck::TOLERANCE,
                "{name}: gradient of `{}` off by {} at {:?}\n{}",
                c.name,
                c.max_error,
                c.worst,
                lossc::ir::print::function(&g)
            );
            checked += c.checked;
        }
    }
    checked
}

/// An expression exercising each primitive, over x[i], z[i] (and a condition c), with the input domain.
fn case(p: Prim) -> (&'static str, f64, f64) {
    use Prim::*;
    match p {
        Add => ("x[i] + z[i]", -2.0, 2.0),
        Sub => ("x[i] - z[i]", -2.0, 2.0),
        Mul => ("x[i] * z[i]", -2.0, 2.0),
        Div => ("x[i] / z[i]", 0.5, 2.0),
        Neg => ("-x[i] * z[i]", -2.0, 2.0),
        Pow => ("x[i] ^ z[i]", 0.5, 2.0),
        Min => ("min(x[i], z[i])", -2.0, 2.0),
        Max => ("max(x[i], z[i])", -2.0, 2.0),
        Abs => ("abs(x[i]) * z[i]", -2.0, 2.0),
        Sign => ("sign(x[i]) * z[i]", -2.0, 2.0),
        Exp => ("exp(x[i]) * z[i]", -2.0, 2.0),
        Log => ("log(x[i]) * z[i]", 0.5, 2.0),
        Log1p => ("log1p(x[i]) * z[i]", 0.5, 2.0),
        Expm1 => ("expm1(x[i]) * z[i]", -2.0, 2.0),
        Sqrt => ("sqrt(x[i]) * z[i]", 0.5, 2.0),
        Sigmoid => ("sigmoid(x[i]) * z[i]", -2.0, 2.0),
        Softplus => ("softplus(x[i]) * z[i]", -2.0, 2.0),
        Tanh => ("tanh(x[i]) * z[i]", -2.0, 2.0),
        Relu => ("relu(x[i]) * z[i]", -2.0, 2.0),
        Atan => ("atan(x[i]) * z[i]", -2.0, 2.0),
        Cos => ("cos(x[i]) * z[i]", -2.0, 2.0),
        Sin => ("sin(x[i]) * z[i]", -2.0, 2.0),
        Acos => ("acos(0.4 * x[i]) * z[i]", -2.0, 2.0),
        // Steps of the remainder at multiples of z: the seeded points lie between them.
        Rem => ("(x[i] + 5) % z[i] * x[i]", 0.5, 2.0),
        Mix | Draw => ("x[i] * rand[i] + z[i] * randn[i] * x[i]", -2.0, 2.0),
        Floor | Ceil | Round => (
            "floor(3 * x[i]) * z[i] + ceil(x[i]) * x[i] + round(2 * z[i]) * x[i]",
            -2.0,
            2.0,
        ),
        Clamp => ("clamp(x[i], -1, z[i])", -2.0, 2.0),
        Eq | Ne | Lt | Le | Gt | Ge | And | Or | Not | Iverson => (
            "[x[i] > z[i] && !(x[i] < -1) || x[i] == 0.25 || x[i] != z[i] && x[i] <= 3 && z[i] >= -3] * x[i] * z[i]",
            -2.0,
            2.0,
        ),
        Select => ("select(x[i] > 0, x[i] * z[i], exp(z[i]))", -2.0, 2.0),
        ToFloat => ("x[i] * i + z[i]", -2.0, 2.0),
        StopGrad => ("stopgrad(x[i]) * z[i] + x[i]", -2.0, 2.0),
    }
}

#[test]
fn every_primitive_against_finite_differences() {
    let mut rng = Rng::new(3);
    for p in Prim::ALL {
        let (expr, lo, hi) = case(*p);
        let src = format!("loss f(x: f32[N], z: f32[N]) {{ sum[i] {expr} }}");
        let prog = Program::from_source("p.lx", &src).unwrap_or_else(|d| panic!("{}", d.render()));
        let f = prog.loss(None).unwrap();
        // The primitive really appears in the program under test.
        let printed = lossc::ir::print::function(f);
        assert!(
            printed.contains(&format!(" = {} ", p.name())) || printed.contains(&format!(" = {}", p.name())),
            "{} not exercised by {expr}",
            p.name()
        );
        let inputs = random_inputs(f, &BTreeMap::from([("N", 6)]), &mut rng, lo, hi);
        let checked = assert_gradcheck(p.name(), &src, &inputs);
        assert!(checked >= 6, "{}: only {checked} elements checked", p.name());
    }
}

#[test]
fn every_reduction_against_finite_differences() {
    let mut rng = Rng::new(4);
    for op in ["sum", "mean", "max", "min", "prod", "logsumexp"] {
        for mask in ["", " | z[i, j] > 0"] {
            let src = format!("loss f(x: f32[N, M], z: f32[N, M]) {{ sum[i] ({op}[j{mask}] x[i, j] * z[i, j]) ^ 2 }}");
            let prog = Program::from_source("r.lx", &src).unwrap();
            let inputs = random_inputs(
                prog.loss(None).unwrap(),
                &BTreeMap::from([("N", 3), ("M", 4)]),
                &mut rng,
                -1.5,
                1.5,
            );
            assert_gradcheck(op, &src, &inputs);
        }
    }
}

#[test]
fn gathers_brackets_and_nested_lets() {
    let mut rng = Rng::new(5);
    let src = "loss f(s: f32[N, C], y: idx[N] < C, w: f32[C]) {
        let m[i, k] = [k != y[i]] + s[i, k] * w[k] - s[i, y[i]]
        let d[i, j] = sum[k] (m[i, k] - m[j, k]) ^ 2
        mean[i] (logsumexp[k] m[i, k]) + 0.1 * sum[j | j != i] sqrt(d[i, j] + 1) + w[y[i]] ^ 2
    }";
    let f = Program::from_source("g.lx", src).unwrap();
    let inputs = random_inputs(
        f.loss(None).unwrap(),
        &BTreeMap::from([("N", 4), ("C", 3)]),
        &mut rng,
        -2.0,
        2.0,
    );
    assert_gradcheck("gathers", src, &inputs);
}

fn lx_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "lx"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_on_its_bundled_input() {
    for path in lx_files("examples") {
        let name = path.file_stem().unwrap().to_str().unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data").join(name);
        let mut inputs = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            inputs.insert(
                p.file_stem().unwrap().to_str().unwrap().to_string(),
                lossc::data::load_npy(&p).unwrap(),
            );
        }
        let checked = assert_gradcheck(name, &std::fs::read_to_string(&path).unwrap(), &inputs);
        assert!(checked > 0, "{name}: nothing checked");
    }
}

#[test]
fn every_feature_input_on_random_data() {
    let mut rng = Rng::new(6);
    for path in lx_files("tests/in") {
        let src = std::fs::read_to_string(&path).unwrap();
        let p = Program::from_source("in.lx", &src).unwrap();
        for f in &p.module.functions {
            let inputs = random_inputs(
                f,
                &BTreeMap::from([("N", 4), ("M", 3), ("B", 3), ("C", 4)]),
                &mut rng,
                -1.5,
                1.5,
            );
            let g = lossc::autodiff::grad(f).unwrap();
            lossc::ir::verify::verify(&g).unwrap();
            for c in lossc::gradcheck::check(f, &inputs, &BTreeMap::new(), 32).unwrap() {
                assert!(
                    c.max_error <= lossc::gradcheck::TOLERANCE,
                    "{}: {} off by {}",
                    path.display(),
                    c.name,
                    c.max_error
                );
            }
        }
    }
}

/// H·v by differentiating the gradient again, against finite differences of the gradient along v.
fn check_hvp(src: &str, x: &str, sizes: &[(&'static str, i64)], seed: u64) {
    let mut rng = Rng::new(seed);
    let p = Program::from_source("h.lx", src).unwrap();
    let f = p.loss(None).unwrap();
    let g = lossc::autodiff::grad(f).unwrap();
    let h = lossc::autodiff::directional(&g, x, "v").unwrap();
    lossc::ir::verify::verify(&h).unwrap();
    let hv_prog = lossc::opt::optimize(&lossc::autodiff::grad(&h).unwrap()).unwrap();
    lossc::ir::verify::verify(&hv_prog).unwrap();
    let sizes: BTreeMap<&str, i64> = sizes.iter().copied().collect();
    let mut inputs = random_inputs(f, &sizes, &mut rng, -1.5, 1.5);
    let shape = inputs[x].shape.clone();
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    inputs.insert("v".into(), Tensor::float(shape.clone(), v.clone()));
    let hv = lossc::api::eval(&hv_prog, &inputs, &BTreeMap::new()).unwrap();
    let hv = hv.grads.iter().find(|(name, _)| name == x).unwrap().1.to_f64();
    // Finite differences of the (first) gradient along v.
    let grad_at = |delta: f64| {
        let mut m = inputs.clone();
        m.remove("v");
        let base = m[x].to_f64();
        m.insert(
            x.to_string(),
            Tensor::float(shape.clone(), base.iter().zip(&v).map(|(a, b)| a + delta * b).collect()),
        );
        let e = lossc::api::eval(&g, &m, &BTreeMap::new()).unwrap();
        e.grads.iter().find(|(name, _)| name == x).unwrap().1.to_f64()
    };
    let eps = 1e-5;
    let (plus, minus) = (grad_at(eps), grad_at(-eps));
    for k in 0..n {
        let fd = (plus[k] - minus[k]) / (2.0 * eps);
        assert!(
            (hv[k] - fd).abs() <= 1e-6 * fd.abs().max(1.0),
            "Hv[{k}] = {} but finite differences give {fd}",
            hv[k]
        );
    }
}

#[test]
fn hessian_vector_product_of_cross_entropy() {
    check_hvp(
        "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }",
        "s",
        &[("N", 4), ("C", 5)],
        21,
    );
}

#[test]
fn hessian_vector_product_of_a_contrastive_loss() {
    let src = "loss infonce(a: f32[B, D], b: f32[B, D], tau: f32 = 0.5) {
        let na[i] = sqrt(sum[d] a[i, d] ^ 2)
        let S[i, j] = sum[d] a[i, d] * b[j, d] / (na[i] * tau)
        mean[i] (logsumexp[j] S[i, j]) - S[i, i]
    }";
    check_hvp(src, "a", &[("B", 4), ("D", 3)], 22);
}

#[test]
fn reductions_over_invariant_bodies() {
    // The body of each reduction does not depend on the reduced index: its adjoint is summed over it.
    let mut rng = Rng::new(7);
    let src = "loss f(u: f32[N], x: f32[N, C]) {
        mean[i] (sum[k: C] sigmoid(u[i])) + (sum[k: C | x[i, k] > 0] u[i] ^ 2) + (mean[k: C] u[i]) * (logsumexp[k: C] u[i])
    }";
    let p = Program::from_source("inv.lx", src).unwrap();
    let inputs = random_inputs(
        p.loss(None).unwrap(),
        &BTreeMap::from([("N", 3), ("C", 4)]),
        &mut rng,
        -1.5,
        1.5,
    );
    // Through the raw gradient (no simplification first) and through the optimized one.
    let f = p.loss(None).unwrap();
    let raw = lossc::autodiff::grad(f).unwrap();
    let opt = lossc::api::gradient(f).unwrap();
    let a = lossc::api::eval(&raw, &inputs, &BTreeMap::new()).unwrap();
    let b = lossc::api::eval(&opt, &inputs, &BTreeMap::new()).unwrap();
    for ((_, x), (_, y)) in a.grads.iter().zip(&b.grads) {
        for (p, q) in x.to_f64().iter().zip(y.to_f64()) {
            assert!((p - q).abs() < 1e-12, "{p} vs {q}");
        }
    }
    assert_gradcheck("invariant", src, &inputs);
}

#[test]
fn masked_out_points_contribute_zero_not_nan() {
    // log(1 + x) is NaN for x < -1, but those points are masked out (or not chosen) in the primal.
    let mut rng = Rng::new(8);
    for src in [
        "loss f(x: f32[N, C]) { sum[i] sum[k | x[i, k] > -0.5] log(1 + x[i, k]) }",
        "loss f(x: f32[N, C]) { sum[i, k] select(x[i, k] > -0.5, log(1 + x[i, k]) * x[i, k], 0) }",
        "loss f(x: f32[N, C]) { sum[i] logsumexp[k | x[i, k] > 0] sqrt(x[i, k]) }",
        // Across a tensor boundary: m is NaN where x < -1, but those elements are never chosen.
        "loss f(x: f32[N, C]) { let m[i, k] = log(1 + x[i, k])\n sum[i, k] select(x[i, k] > -0.5, m[i, k], 0) }",
    ] {
        let p = Program::from_source("m.lx", src).unwrap();
        let inputs = random_inputs(
            p.loss(None).unwrap(),
            &BTreeMap::from([("N", 4), ("C", 5)]),
            &mut rng,
            -3.0,
            3.0,
        );
        let g = lossc::api::eval_grad(p.loss(None).unwrap(), &inputs, &BTreeMap::new()).unwrap();
        assert!(
            g.grads[0].1.to_f64().iter().all(|v| v.is_finite()),
            "{src}: {:?}",
            g.grads
        );
        assert_gradcheck("masked", src, &inputs);
    }
}

/// `Kernel::hvp` on the interpreter and the JIT: H·v in `a`, and the mixed product in `b`, against central
/// differences of the kernel's own gradients along v; bad calls are typed errors.
#[test]
fn kernel_hvp_matches_differences_of_the_gradient() {
    use lossc::{Backend, CallError, Compiler};
    let src = "loss infonce(a: f32[B, D], b: f32[B, D], w: f32[B] nograd, tau: f32 = 0.5) {
        let na[i] = sqrt(sum[d] a[i, d] ^ 2)
        let S[i, j] = sum[d] a[i, d] * b[j, d] / (na[i] * tau)
        mean[i] w[i] * ((logsumexp[j] S[i, j]) - S[i, i])
    }";
    let mut rng = Rng::new(23);
    let p = Program::from_source("h.lx", src).unwrap();
    let inputs = random_inputs(
        p.loss(None).unwrap(),
        &BTreeMap::from([("B", 4), ("D", 3)]),
        &mut rng,
        -1.5,
        1.5,
    );
    let v: Vec<f64> = (0..12).map(|_| rng.normal()).collect();
    for (backend, tolerance) in [(Backend::Interp, 1e-6), (Backend::Jit, 2e-3)] {
        let k = Compiler::new()
            .backend(backend)
            .compile_source("h.lx", src)
            .unwrap()
            .kernel(None)
            .unwrap();
        let hv = k
            .hvp(&inputs, &BTreeMap::new(), "a", Tensor::float(vec![4, 3], v.clone()))
            .unwrap();
        let grads_at = |delta: f64| {
            let mut m = inputs.clone();
            let a: Vec<f64> = m["a"].to_f64().iter().zip(&v).map(|(x, d)| x + delta * d).collect();
            m.insert("a".into(), Tensor::float(vec![4, 3], a));
            Compiler::new()
                .backend(Backend::Interp)
                .compile_source("h.lx", src)
                .unwrap()
                .kernel(None)
                .unwrap()
                .eval(&m)
                .unwrap()
        };
        let (plus, minus) = (grads_at(1e-5), grads_at(-1e-5));
        for input in ["a", "b"] {
            let got = hv.grads.iter().find(|(n, _)| n == input).unwrap().1.to_f64();
            let g = |e: &lossc::Evaluation| e.grads.iter().find(|(n, _)| n == input).unwrap().1.to_f64();
            let (p, m) = (g(&plus), g(&minus));
            for t in 0..12 {
                let fd = (p[t] - m[t]) / 2e-5;
                assert!(
                    (got[t] - fd).abs() <= tolerance * fd.abs().max(1.0),
                    "{backend:?} {input}[{t}]: {} vs {fd}",
                    got[t]
                );
            }
        }
        // The directional derivative is the loss of the call.
        let grad_a = k
            .eval(&inputs)
            .unwrap()
            .grads
            .into_iter()
            .find(|(n, _)| n == "a")
            .unwrap()
            .1
            .to_f64();
        let directional: f64 = grad_a.iter().zip(&v).map(|(g, d)| g * d).sum();
        assert!((hv.loss - directional).abs() <= tolerance * directional.abs().max(1.0));
        // No second derivative in a `nograd` input or an unknown one; a direction of the wrong shape.
        for x in ["w", "z"] {
            let e = k
                .hvp(&inputs, &BTreeMap::new(), x, Tensor::float(vec![4], vec![0.0; 4]))
                .unwrap_err();
            assert!(matches!(e, CallError::UnknownInput { .. }), "{e:?}");
        }
        let e = k
            .hvp(&inputs, &BTreeMap::new(), "a", Tensor::float(vec![3, 3], vec![0.0; 9]))
            .unwrap_err();
        assert!(matches!(e, CallError::ShapeMismatch { .. }), "{e:?}");
    }
}

/// `grad(e, x[i, k])` inside a loss is ∂e/∂x: the output `g` of the gradient-penalty loss equals the
/// gradient of its cross-entropy alone (the kernel's own `grad_s`); misuses are diagnostics.
#[test]
fn grad_inside_a_loss_is_the_derivative() {
    use lossc::{Backend, Compiler};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/in/gradient_penalty.lx");
    let ce = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }";
    let mut rng = Rng::new(24);
    let p = Program::from_source("ce.lx", ce).unwrap();
    let inputs = random_inputs(
        p.loss(None).unwrap(),
        &BTreeMap::from([("N", 5), ("C", 4)]),
        &mut rng,
        -2.0,
        2.0,
    );
    for backend in [Backend::Interp, Backend::Jit] {
        let want = Compiler::new()
            .backend(backend)
            .compile_source("ce.lx", ce)
            .unwrap()
            .kernel(None)
            .unwrap();
        let want = want.eval(&inputs).unwrap().grads[0].1.to_f64();
        let k = Compiler::new()
            .backend(backend)
            .compile_file(&path)
            .unwrap()
            .kernel(Some("ce_gradient_penalty"))
            .unwrap();
        let got = k.eval(&inputs).unwrap().outputs[0].1.to_f64();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6, "{backend:?}: {a} vs {b}");
        }
    }
    for (src, message) in [
        ("loss f(x: f32[N]) { sum[i] grad(x[i]) }", "takes two arguments"),
        (
            "loss f(x: f32[N]) { let t = sum[i] x[i]\n sum[i] grad(t, 3) }",
            "an input at an element",
        ),
        (
            "loss f(x: f32[N], y: idx[N] < 2) { let t = sum[i] x[i]\n sum[i] grad(t, y[i]) }",
            "not a differentiable input",
        ),
        (
            "loss f(x: f32[N], z: f32[N] nograd) { let t = sum[i] x[i] * z[i]\n sum[i] grad(t, z[i]) }",
            "not a differentiable input",
        ),
        ("loss f(x: f32[N]) { sum[i] grad(x[i] ^ 2, x[i]) }", "must be a scalar"),
    ] {
        let Err(e) = Compiler::new().compile_source("g.lx", src) else {
            panic!("{src} compiled")
        };
        let text = e.0.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("\n");
        assert!(text.contains(message), "{src}: {text}");
    }
}

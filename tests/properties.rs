//! Property tests over random well-typed programs (elementwise chains, reductions, masks, gathers,
//! brackets, lets): the symbolic gradient agrees with finite differences, and the optimized program
//! computes what the unoptimized one does.

#[path = "cuda_emu/mod.rs"]
mod emu;

use std::collections::BTreeMap;

use lossc::data::Rng;
use lossc::{Program, Tensor};
use proptest::prelude::*;

/// Expressions over the free indices i (row) and k (class).
fn elementwise() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("x[i, k]".to_string()),
        Just("w[k]".to_string()),
        Just("x[i, y[i]]".to_string()),
        Just("u[i]".to_string()),
        Just("m[i, k]".to_string()),
        (-2.0..2.0f64).prop_map(|c| format!("{c:.3}")),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} - {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} * {b})")),
            inner.clone().prop_map(|a| format!("tanh({a})")),
            inner.clone().prop_map(|a| format!("sigmoid({a})")),
            inner.clone().prop_map(|a| format!("softplus({a})")),
            inner.clone().prop_map(|a| format!("exp(tanh({a}))")),
            inner.clone().prop_map(|a| format!("log(1 + {a} ^ 2)")),
            inner.clone().prop_map(|a| format!("stopgrad({a}) * x[i, k]")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("([x[i, k] > 0] * {a} + [k == y[i]] * {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("select(w[k] > 0, {a}, {b})")),
        ]
    })
}

/// Expressions over i alone: reductions over k of elementwise expressions, combined.
fn reduction() -> impl Strategy<Value = String> {
    (elementwise(), 0..6usize).prop_map(|(e, r)| match r {
        0 => format!("(sum[k: C] {e})"),
        1 => format!("(logsumexp[k: C] {e})"),
        2 => format!("(mean[k: C] {e})"),
        3 => format!("(max[k: C] {e})"),
        4 => format!("(sum[k: C | x[i, k] > -0.5] {e})"),
        _ => format!("(logsumexp[k: C | k != y[i]] {e})"),
    })
}

fn row() -> impl Strategy<Value = String> {
    (reduction(), reduction(), 0..4usize).prop_map(|(a, b, r)| match r {
        0 => format!("{a} + {b}"),
        1 => format!("{a} * tanh({b})"),
        2 => format!("{a} - u[i] * {b}"),
        _ => format!("sigmoid({a}) + x[i, y[i]] * {b}"),
    })
}

fn program() -> impl Strategy<Value = String> {
    (elementwise(), row()).prop_map(|(m, r)| {
        // `m` itself may mention m[i, k]: replace that leaf in the let's own body.
        let m = m.replace("m[i, k]", "x[i, k]");
        format!("loss f(x: f32[N, C], y: idx[N] < C, w: f32[C], u: f32[N]) {{\n    let m[i: N, k: C] = {m}\n    mean[i: N] {r}\n}}")
    })
}

/// Class counts that cover every part of the generated loops: less than a vector, one vector, two vectors
/// and a tail, several unrolled iterations, blocks of 16 and a tail.
fn classes() -> impl Strategy<Value = usize> {
    prop_oneof![Just(3), Just(4), Just(9), Just(19), Just(37)]
}

fn inputs(seed: u64, c: usize) -> BTreeMap<String, Tensor> {
    let mut rng = Rng::new(seed);
    let n = 3;
    let mut f = |k: usize| (0..k).map(|_| rng.normal()).collect::<Vec<f64>>();
    let x = f(n * c);
    let w = f(c);
    let u = f(n);
    BTreeMap::from([
        ("x".to_string(), Tensor::float(vec![n, c], x)),
        ("w".to_string(), Tensor::float(vec![c], w)),
        ("u".to_string(), Tensor::float(vec![n], u)),
        ("y".to_string(), Tensor::labels(vec![n], vec![0, c as i64 - 1, 1])),
    ])
}

/// 64 cases per property; set LOSSC_PROPTEST_CASES for a longer search.
fn cases() -> u32 {
    std::env::var("LOSSC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn gradient_matches_finite_differences(src in program(), seed in 0u64..1000, c in classes()) {
        let p = Program::from_source("prop.lx", &src).unwrap_or_else(|d| panic!("{src}\n{}", d.render()));
        let f = p.loss(None).unwrap();
        let x = inputs(seed, c);
        let base = lossc::api::eval(f, &x, &BTreeMap::new()).unwrap();
        prop_assume!(base.loss.is_finite() && base.loss.abs() < 1e6);
        // A constant that folds to NaN or an infinity (`log(1 + -1.2 ^ 2)`) in a branch the data never takes
        // still reaches the gradient as `c * (an empty masked sum)` = NaN, as in JAX; outside this check.
        let folded = lossc::opt::simplify_only(f).unwrap();
        let constant_finite = |n: &lossc::ir::Node| !matches!(n.expr, lossc::ir::Expr::Float(b) if !f64::from_bits(b).is_finite());
        prop_assume!(folded.nodes().iter().all(constant_finite));
        for c in lossc::gradcheck::check(f, &x, &BTreeMap::new(), 64).unwrap() {
            prop_assert!(c.max_error <= 1e-5, "{src}\ngrad {} off by {} at {:?}", c.name, c.max_error, c.worst);
        }
    }

    #[test]
    fn optimized_program_matches_unoptimized(src in program(), seed in 0u64..1000, c in classes()) {
        let p = Program::from_source("prop.lx", &src).unwrap();
        let f = p.loss(None).unwrap();
        let x = inputs(seed, c);
        let raw = lossc::autodiff::grad(f).unwrap();
        let opt = lossc::opt::optimize(&raw).unwrap();
        lossc::ir::verify::verify(&opt).unwrap();
        let a = lossc::api::eval(&raw, &x, &BTreeMap::new()).unwrap();
        let b = lossc::api::eval(&opt, &x, &BTreeMap::new()).unwrap();
        // A NaN of the literal program may become a number: bracket fusion reads `[c] * x` as a strong
        // zero where c is false (Knuth's convention), as the gradient of a gather needs, while the literal
        // product 0 * NaN is NaN. The other way round (a number becoming NaN) is a bug.
        let close = |p: f64, q: f64| (p - q).abs() <= 1e-9 * p.abs().max(1.0) || p.is_nan() || p == q;
        prop_assert!(close(a.loss, b.loss), "{src}\nloss {} vs {}", a.loss, b.loss);
        for ((n, ga), (_, gb)) in a.grads.iter().zip(&b.grads) {
            for (p, q) in ga.to_f64().iter().zip(gb.to_f64()) {
                prop_assert!(close(*p, q), "{src}\ngrad {n}: {p} vs {q}");
            }
        }
    }
}

#[cfg(feature = "jit")]
proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 2, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn jit_matches_interpreter(src in program(), seed in 0u64..1000, c in classes()) {
        backend_matches_interpreter(lossc::Compiler::new().threads(2), &src, seed, c)?;
    }

    /// The generated CUDA kernels, in the host emulation (tests/cuda_emu/).
    #[test]
    fn cuda_matches_interpreter(src in program(), seed in 0u64..1000, c in classes()) {
        let cuda = lossc::Compiler::new().backend(lossc::Backend::Cuda).cuda_loader(emu::loader());
        backend_matches_interpreter(cuda, &src, seed, c)?;
    }
}

fn backend_matches_interpreter(backend: lossc::Compiler, src: &str, seed: u64, c: usize) -> Result<(), TestCaseError> {
    {
        let src = src.to_string();
        let m = backend.compile_source("prop.lx", &src).unwrap();
        let i = lossc::Compiler::new()
            .backend(lossc::Backend::Interp)
            .compile_source("prop.lx", &src)
            .unwrap();
        let (kj, ki) = (m.kernel(None).unwrap(), i.kernel(None).unwrap());
        let x = inputs(seed, c);
        let (a, b) = (kj.eval(&x).unwrap(), ki.eval(&x).unwrap());
        // float32 arithmetic against f64: relative 1e-3 (long chains of tanh/exp amplify rounding).
        // An infinity agrees only with itself.
        let close = |p: f64, q: f64| {
            (p.is_finite() && q.is_finite() && (p - q).abs() <= 1e-3 * q.abs().max(1.0))
                || (p.is_nan() && q.is_nan())
                || p == q
        };
        prop_assert!(close(a.loss, b.loss), "{src}\nloss {} vs {}", a.loss, b.loss);
        for ((n, ga), (_, gb)) in a.grads.iter().zip(&b.grads) {
            for (p, q) in ga.to_f64().iter().zip(gb.to_f64()) {
                prop_assert!(close(*p, q), "{src}\ngrad {n}: backend {p} vs interp {q}");
            }
        }
    }
    Ok(())
}

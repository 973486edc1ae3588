//! Random draws (`rand`, `randn`): Philox4x32-10 against its published answers, the same uniform draws
//! bit for bit from the interpreter, the JIT at any thread count and a library; keys and sites.

use std::collections::BTreeMap;

use lossc::prims::{mix, philox, uniform};
use lossc::{Backend, Compiler, Tensor};

#[test]
fn philox_gives_the_known_answers() {
    // Random123's kat_vectors for philox4x32_10: (counter, key) -> output.
    let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0; 4], [0; 2], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    for (counter, key, want) in cases {
        let key = (u64::from(key[1]) << 32 | u64::from(key[0])) as i64;
        assert_eq!(philox(key, counter.map(i64::from)), want);
    }
    assert_eq!(uniform(0), 1.0 / 16_777_216.0);
    assert_eq!(uniform(u32::MAX), 1.0);
}

const SRC: &str = "loss draws(x: f32[N, C]) -> (u: f32[N, C], z: f32[N, C], v: f32[N, C]) {
    out u[i, k] = rand[i, k]
    out z[i, k] = randn[i, k]
    out v[i, k] = rand[i, k]
    mean[i, k] x[i, k] * u[i, k]
}";

fn outputs(backend: Backend, threads: usize, hypers: &[(&str, f64)], n: usize) -> BTreeMap<String, Vec<f64>> {
    let k = Compiler::new()
        .backend(backend)
        .threads(threads)
        .compile_source("r.lx", SRC)
        .unwrap()
        .kernel(None)
        .unwrap();
    let x = Tensor::float(vec![n, 50], vec![1.0; n * 50]);
    let hypers = hypers.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let e = k.eval_with(&BTreeMap::from([("x".to_string(), x)]), &hypers).unwrap();
    e.outputs.into_iter().map(|(name, t)| (name, t.to_f64())).collect()
}

#[test]
fn uniform_draws_are_the_same_in_every_backend_and_thread_count() {
    let reference = outputs(Backend::Interp, 1, &[("seed", 7.0), ("draw", 3.0)], 40);
    for threads in [1, 3] {
        let jit = outputs(Backend::Jit, threads, &[("seed", 7.0), ("draw", 3.0)], 40);
        assert_eq!(jit["u"], reference["u"], "{threads} threads");
        assert_eq!(jit["v"], reference["v"]);
        for (a, b) in jit["z"].iter().zip(&reference["z"]) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "normal draws: {a} vs {b}");
        }
    }
    // What the generator promises: the draw at (i, k) is Philox of its key at counter (i, k, 0, 0).
    let key = mix(mix(7, 3), 0);
    assert_eq!(reference["u"][5 * 50 + 9], uniform(philox(key, [5, 9, 0, 0])[0]));
}

#[test]
fn draws_depend_on_seed_draw_and_site_and_nothing_else() {
    let base = outputs(Backend::Jit, 2, &[], 40);
    assert_eq!(
        base["u"],
        outputs(Backend::Jit, 2, &[("seed", 0.0), ("draw", 0.0)], 40)["u"],
        "defaults are 0"
    );
    assert_ne!(base["u"], outputs(Backend::Jit, 2, &[("seed", 1.0)], 40)["u"]);
    assert_ne!(base["u"], outputs(Backend::Jit, 2, &[("draw", 1.0)], 40)["u"]);
    assert_ne!(base["u"], base["v"], "two sites draw independently");
    // A larger batch extends the draws: the first rows are the same numbers.
    assert_eq!(outputs(Backend::Jit, 2, &[], 60)["u"][..2000], base["u"][..]);
    // Moments over 2000 draws (deterministic for this seed).
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (u, z) = (&base["u"], &base["z"]);
    assert!(u.iter().all(|x| *x > 0.0 && *x <= 1.0));
    assert!((mean(u) - 0.5).abs() < 0.02, "{}", mean(u));
    assert!(mean(z).abs() < 0.05, "{}", mean(z));
    let var = mean(&z.iter().map(|x| x * x).collect::<Vec<_>>());
    assert!((var - 1.0).abs() < 0.08, "{var}");
}

#[test]
fn a_draw_key_declared_as_a_float_or_an_input_is_an_error() {
    for src in [
        "loss f(x: f32[N], seed: f32 = 0.0) { sum[i] x[i] * rand[i] }",
        "loss f(x: f32[N], draw: f32[N]) { sum[i] x[i] * randn[i] }",
        "loss f(x: f32[N]) { sum[i] x[i] * rand[i, i, i, i, i] }",
        "loss f(x: f32[N]) { sum[i] rand[x[i]] }",
    ] {
        let Err(e) = Compiler::new().compile_source("e.lx", src) else {
            panic!("{src} compiled")
        };
        assert!(!e.0.is_empty(), "{src}");
    }
    // Declared as integers, they are the loss's own hyperparameters.
    let k = Compiler::new()
        .compile_source("d.lx", "loss f(x: f32[N], seed: idx = 5) { sum[i] x[i] * rand[i] }")
        .unwrap()
        .kernel(None)
        .unwrap();
    let names: Vec<&str> = k.function().hypers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["seed", "draw"]);
}

//! The hand-written loops the benchmarks time beside the JIT (benches/hand) compute the same loss and
//! gradients as the interpreter, on small inputs of every workload.

use std::collections::BTreeMap;
use std::path::Path;

use lossc::data::Rng;
use lossc::{Backend, Compiler, Tensor};

#[path = "../benches/hand/mod.rs"]
mod hand;

/// Inputs for the one loss of `src`: normal floats (uniform for AnyLoss's probabilities, 0/1 for inputs
/// without gradient, `scale` times normal for the others), labels below their bound or `classes`.
fn inputs(src: &str, sizes: &[(&str, i64)], classes: u64, scale: f64, seed: u64) -> BTreeMap<String, Tensor> {
    let p = lossc::Program::from_source("w.lx", src).unwrap();
    let f = p.loss(None).unwrap();
    let dims: Vec<i64> = f
        .dims
        .iter()
        .map(|d| sizes.iter().find(|(n, _)| *n == d.name).map_or(1, |(_, s)| *s))
        .collect();
    let mut rng = Rng::new(seed);
    f.inputs
        .iter()
        .map(|i| {
            let shape: Vec<usize> = i.shape.iter().map(|d| d.eval(&dims) as usize).collect();
            let n = shape.iter().product();
            let t = if i.elem == lossc::ir::ElemTy::Idx {
                let b = i.bound.as_ref().map_or(classes, |b| b.eval(&dims) as u64);
                Tensor::labels(shape, (0..n).map(|_| rng.below(b) as i64).collect())
            } else if i.nograd && f.name != "sort_bce16" {
                Tensor::float(shape, (0..n).map(|_| (rng.uniform() > 0.5) as i64 as f64).collect())
            } else if f.name == "anyloss_f1" {
                Tensor::float(shape, (0..n).map(|_| rng.uniform()).collect())
            } else {
                Tensor::float(shape, (0..n).map(|_| scale * rng.normal()).collect())
            };
            (i.name.clone(), t)
        })
        .collect()
}

/// A workload of the check: its file, sizes, label classes and the scale of its normal inputs.
type Case<'a> = (&'a str, &'a [(&'a str, i64)], u64, f64);

#[test]
fn hand_written_loops_agree_with_the_interpreter() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let big = [("N", 37), ("C", 23)];
    // (file, sizes, label classes, scale of normal inputs): multi-similarity's inputs are scaled so that
    // its mined sums weigh several pairs, not one.
    let cases: [Case; 8] = [
        ("examples/cross_entropy.lx", &big, 0, 1.0),
        ("examples/ldr_kl.lx", &big, 0, 1.0),
        ("examples/anyloss_f1.lx", &[("N", 301)], 0, 1.0),
        ("benches/nt_xent.lx", &[("B", 19), ("D", 7)], 0, 1.0),
        ("examples/multi_similarity.lx", &[("B", 29), ("D", 6)], 4, 0.2),
        ("benches/sort_bce16.lx", &[("B", 5)], 0, 1.0),
        ("examples/z_loss.lx", &big, 0, 1.0),
        ("examples/kl_dro.lx", &big, 0, 1.0),
    ];
    for (file, sizes, classes, scale) in cases {
        let src = std::fs::read_to_string(root.join(file)).unwrap();
        let interp = Compiler::new()
            .backend(Backend::Interp)
            .compile_source(file, &src)
            .unwrap()
            .kernel(None)
            .unwrap();
        let name = interp.function().name.clone();
        let hand = hand::of(&name).unwrap_or_else(|| panic!("no hand-written loop for {name}"));
        for seed in 0..3 {
            let x = inputs(&src, sizes, classes, scale, seed);
            let (got, want) = (hand(&x), interp.eval(&x).unwrap());
            let close = |p: f64, q: f64, scale: f64| (p - q).abs() <= 2e-4 * scale;
            assert!(want.loss.is_finite(), "{name}: the interpreter's loss {}", want.loss);
            assert!(
                close(got.loss, want.loss, want.loss.abs().max(1.0)),
                "{name} seed {seed}: loss {} vs {}",
                got.loss,
                want.loss
            );
            assert_eq!(got.grads.len(), want.grads.len(), "{name}: gradients");
            for (input, g) in &got.grads {
                let w = want.grads.iter().find(|(n, _)| n == input).unwrap().1.to_f64();
                let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
                for (k, (p, q)) in g.iter().zip(&w).enumerate() {
                    assert!(
                        close(*p as f64, *q, scale),
                        "{name} seed {seed}: grad {input}[{k}] {p} vs {q}"
                    );
                }
            }
        }
    }
}

//! The hand-written loops the benchmarks time beside the JIT (benches/hand) compute the same loss and
//! gradients as the interpreter, on small inputs of every workload.

use std::path::Path;

use lossc::{Backend, Compiler};

#[path = "../benches/hand/mod.rs"]
mod hand;

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
            let x = hand::inputs(&src, sizes, classes, scale, seed);
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

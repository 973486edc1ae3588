//! Merging adjacent axes that every access reads together (`opt::merge`): where it applies, the merged
//! program reads the inputs with fewer axes and computes the same loss and gradients; where an index is
//! used otherwise (arithmetic, a random draw's position, a tensor a caller sees, a read on axes of other
//! extents or in another order), nothing merges.

use std::collections::BTreeMap;

use lossc::data::Rng;
use lossc::{Program, Tensor};

fn function(src: &str) -> lossc::ir::Function {
    Program::from_source("m.lx", src).unwrap().module.functions[0].clone()
}

fn shapes(f: &lossc::ir::Function) -> Vec<String> {
    (f.inputs.iter())
        .map(|i| i.shape.iter().map(|d| f.show_dim(d)).collect::<Vec<_>>().join(", "))
        .collect()
}

#[test]
fn heads_and_pixels_merge_into_rows() {
    let cases = [
        (
            "loss f(z: f32[B, K, D], t: f32[B, K, D] nograd) { mean[b, k] (logsumexp[d] z[b, k, d]) - sum[d] t[b, k, d] * z[b, k, d] }",
            vec!["B * K, D", "B * K, D"],
        ),
        (
            "loss f(s: f32[B, C, H, W]) { mean[b, c] logsumexp[i, j] s[b, c, i, j] }",
            vec!["B * C, H * W"],
        ),
        (
            "loss f(s: f32[B, C, H, W], y: idx[B, H, W] < C) { mean[b, i, j] (logsumexp[c] s[b, c, i, j]) - s[b, y[b, i, j], i, j] }",
            vec!["B, C, H * W", "B, H * W"],
        ),
    ];
    for (src, want) in cases {
        let f = function(src);
        let m = lossc::opt::merge::merge_axes(&f).unwrap_or_else(|| panic!("{src}: nothing merged"));
        assert_eq!(shapes(&m), want, "{src}");
        // Same loss and gradients (the interpreter on both programs, the merged one reading the same data).
        let mut rng = Rng::new(3);
        let sizes: Vec<i64> = f.dims.iter().map(|_| 2 + rng.below(3) as i64).collect();
        let mut inputs = BTreeMap::new();
        for i in &f.inputs {
            let shape: Vec<usize> = i.shape.iter().map(|d| d.eval(&sizes) as usize).collect();
            let n = shape.iter().product();
            let t = match &i.bound {
                Some(b) => Tensor::labels(shape, (0..n).map(|_| rng.below(b.eval(&sizes) as u64) as i64).collect()),
                None => Tensor::float(shape, (0..n).map(|_| rng.normal()).collect()),
            };
            inputs.insert(i.name.clone(), t);
        }
        // The merged program's dimensions are bound by the caller's shapes, as the kernel binds them.
        let mut bound = lossc::call::bind(&f, &inputs, &BTreeMap::new()).unwrap();
        for (t, input) in bound.inputs.iter_mut().zip(&m.inputs) {
            let shape = input.shape.iter().map(|d| d.eval(&bound.sizes) as usize).collect();
            *t = std::borrow::Cow::Owned(Tensor {
                shape,
                ..t.as_ref().clone()
            });
        }
        let gm = lossc::api::gradient(&m).unwrap();
        let (a, b) = (
            lossc::api::eval_grad(&f, &inputs, &BTreeMap::new()).unwrap(),
            lossc::backend::interp::run(&gm, &bound).unwrap(),
        );
        assert!((a.loss - b.loss).abs() < 1e-12, "{src}: {} vs {}", a.loss, b.loss);
        for ((n, x), (_, y)) in a.grads.iter().zip(&b.grads) {
            let (x, y) = (x.to_f64(), y.to_f64());
            assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() < 1e-12), "{src}: grad {n}");
        }
    }
}

#[test]
fn indices_used_otherwise_do_not_merge() {
    for src in [
        // Arithmetic on an index.
        "loss f(s: f32[B, K]) { mean[b, k] s[b, k] * k }",
        // A random draw at the position.
        "loss f(s: f32[B, K]) { mean[b, k] s[b, k] * randn[b, k] }",
        // Read in the other order, or on axes of other extents.
        "loss f(s: f32[N, N]) { mean[b, k] s[b, k] - s[k, b] }",
        "loss f(s: f32[N, N], t: f32[N, M]) { sum[i, j] s[i, j] + sum[k] t[i, k] }",
        // An output a caller sees keeps its shape.
        "loss f(s: f32[B, K]) -> (o: f32[B, K]) {\n    out o[b, k] = 2 * s[b, k]\n    sum[b, k] o[b, k]\n}",
    ] {
        let f = function(src);
        if let Some(m) = lossc::opt::merge::merge_axes(&f) {
            panic!("{src}: merged into {:?}", shapes(&m));
        }
    }
}

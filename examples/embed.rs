//! Embedding lossc in a Rust training loop: a linear softmax classifier trained by SGD on synthetic data,
//! with the loss and its gradient from one compiled kernel.
//!
//! Run: `cargo run --release --example embed`

use std::collections::BTreeMap;

use lossc::data::Rng;
use lossc::{Compiler, Tensor};

const LOSS: &str = "
/// Cross-entropy of a linear classifier: scores s = x w.
loss linear_ce(x: f32[N, D] nograd, w: f32[D, C], y: idx[N] < C) {
    let s[i, k] = sum[d] x[i, d] * w[d, k]
    mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]]
}
";

fn main() {
    let module = match Compiler::new().compile_source("linear_ce.lx", LOSS) {
        Ok(m) => m,
        Err(diags) => {
            eprint!("{}", diags.render());
            std::process::exit(1);
        }
    };
    let kernel = module.kernel(None).expect("one loss");
    for (stage, t) in &kernel.timings().stages {
        println!("compile {stage:<14} {:.2} ms", t.as_secs_f64() * 1e3);
    }

    // Synthetic data: C Gaussian blobs in D dimensions.
    let (n, d, c) = (2000, 10, 4);
    let mut rng = Rng::new(7);
    let centers: Vec<f64> = (0..c * d).map(|_| 1.5 * rng.normal()).collect();
    let y: Vec<i64> = (0..n).map(|_| rng.below(c as u64) as i64).collect();
    let x: Vec<f64> = (0..n * d)
        .map(|j| centers[y[j / d] as usize * d + j % d] + rng.normal())
        .collect();
    let mut inputs = BTreeMap::from([
        ("x".to_string(), Tensor::float(vec![n, d], x.clone())),
        ("y".to_string(), Tensor::labels(vec![n], y.clone())),
    ]);

    let mut w = vec![0.0f64; d * c];
    let lr = 0.5;
    let mut grad = vec![0.0f64; d * c];
    for step in 0..=100 {
        inputs.insert("w".to_string(), Tensor::float(vec![d, c], w.clone()));
        let loss = match kernel.eval_into(&inputs, &BTreeMap::new(), &mut [("w", &mut grad)]) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        if step % 20 == 0 {
            println!(
                "step {step:>3}  loss {loss:.4}  accuracy {:.3}",
                accuracy(&x, &y, &w, d, c)
            );
        }
        for (wi, g) in w.iter_mut().zip(&grad) {
            *wi -= lr * g;
        }
    }
}

fn accuracy(x: &[f64], y: &[i64], w: &[f64], d: usize, c: usize) -> f64 {
    let n = y.len();
    let correct = (0..n)
        .filter(|&i| {
            let score = |k: usize| (0..d).map(|j| x[i * d + j] * w[j * c + k]).sum::<f64>();
            let best = (0..c).max_by(|a, b| score(*a).total_cmp(&score(*b))).unwrap_or(0);
            best as i64 == y[i]
        })
        .count();
    correct as f64 / n as f64
}

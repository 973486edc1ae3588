//! lossc kernels as dfdx losses (feature `dfdx`): with lossc's cross-entropy the gradients dfdx's tape
//! gives equal those of dfdx's own cross-entropy, through a model's parameters too, and a bad call is an
//! error before anything is recorded.

use dfdx::prelude::*;
use lossc::Compiler;
use lossc::data::Rng;
use lossc::embed::Input;

const CE: &str = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }";

#[test]
fn cross_entropy_gradients_equal_dfdx_own() {
    let dev: Cpu = Default::default();
    let kernel = Compiler::new()
        .threads(2)
        .compile_source("ce.lx", CE)
        .unwrap()
        .kernel(None)
        .unwrap();
    let mut workspace = kernel.workspace();
    let mut rng = Rng::new(3);
    let (n, c) = (24usize, 7usize);
    let features = 5usize;
    let x: Vec<f32> = (0..n * features).map(|_| rng.normal() as f32).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.below(c as u64) as i64).collect();
    let w: Vec<f32> = (0..features * c).map(|_| rng.normal() as f32).collect();
    let x: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(x, (n, features));
    let w: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(w, (features, c));

    // lossc's loss on the scores x w.
    let scores = x.leaky_trace().matmul(w.clone());
    let ours = lossc::dfdx::loss(
        &mut workspace,
        "s",
        scores,
        &[Input::i64("y", &[n], &labels)],
        &Default::default(),
    )
    .unwrap();
    let ours_value = ours.array();
    let ours_grad = ours.backward().get(&w).as_vec();

    // dfdx's own: the mean of -log_softmax picked at the labels.
    let idx: Tensor<(usize,), usize, Cpu> = dev.tensor_from_vec(labels.iter().map(|y| *y as usize).collect(), (n,));
    let theirs = x
        .leaky_trace()
        .matmul(w.clone())
        .log_softmax::<Axis<1>>()
        .select(idx)
        .mean()
        .negate();
    let theirs_value = theirs.array();
    let theirs_grad = theirs.backward().get(&w).as_vec();

    assert!(
        (ours_value - theirs_value).abs() < 1e-5,
        "{ours_value} vs {theirs_value}"
    );
    for (a, b) in ours_grad.iter().zip(&theirs_grad) {
        assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    // Scaled losses scale the gradient (the backward op reads the loss's own gradient).
    let scores = dev.tensor_from_vec(vec![0.5f32; n * c], (n, c));
    let loss = lossc::dfdx::loss(
        &mut workspace,
        "s",
        scores.leaky_trace(),
        &[Input::i64("y", &[n], &labels)],
        &Default::default(),
    )
    .unwrap();
    let once = loss.retaped::<NoneTape>().array();
    let grads = (loss * 3.0).backward();
    let g = grads.get(&scores).as_vec();
    assert!((once - (c as f32).ln()).abs() < 1e-5);
    let expected = 3.0 * (1.0 / c as f32 - 1.0) / n as f32;
    assert!(
        (g[labels[0] as usize] - expected).abs() < 1e-6,
        "{} vs {expected}",
        g[labels[0] as usize]
    );
}

#[test]
fn bad_calls_are_errors() {
    let dev: Cpu = Default::default();
    let kernel = Compiler::new()
        .compile_source("ce.lx", CE)
        .unwrap()
        .kernel(None)
        .unwrap();
    let mut workspace = kernel.workspace();
    let scores: Tensor<(usize, usize), f32, Cpu> = dev.zeros_like(&(2, 3));
    let e = lossc::dfdx::loss(
        &mut workspace,
        "s",
        scores.leaky_trace(),
        &[Input::i64("y", &[2], &[0, 3])],
        &Default::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("label out of range"), "{e}");
    let e = lossc::dfdx::loss(
        &mut workspace,
        "q",
        scores.leaky_trace(),
        &[Input::i64("y", &[2], &[0, 1])],
        &Default::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("grad_q"), "{e}");
}

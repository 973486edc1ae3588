//! Trains a small MLP in dfdx with a stdlib loss from lossc (LDR-KL): dfdx computes the model and its
//! backward pass, lossc the loss and its gradient with respect to the scores, on one tape.
//!
//! Run: `cargo run --release --example dfdx_train --features dfdx`

use dfdx::optim::Adam;
use dfdx::prelude::*;
use lossc::Compiler;
use lossc::data::Rng;
use lossc::embed::Input;

const FEATURES: usize = 16;
const CLASSES: usize = 4;
type Mlp = (Linear<FEATURES, 32>, ReLU, Linear<32, CLASSES>);

fn main() {
    let kernel = match Compiler::new().compile_source("ldr_kl.lx", "use std::robust::ldr_kl\n") {
        Ok(module) => module.kernel(Some("ldr_kl")).expect("the stdlib has ldr_kl"),
        Err(diags) => {
            eprint!("{}", diags.render());
            std::process::exit(1);
        }
    };
    let mut workspace = kernel.workspace();

    // Synthetic data: each class's points around a center of their own.
    let mut rng = Rng::new(7);
    let n = 512;
    let centers: Vec<f64> = (0..CLASSES * FEATURES).map(|_| rng.normal()).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.below(CLASSES as u64) as i64).collect();
    let x: Vec<f32> = (0..n * FEATURES)
        .map(|k| (centers[labels[k / FEATURES] as usize * FEATURES + k % FEATURES] + rng.normal()) as f32)
        .collect();

    let dev: Cpu = Default::default();
    dev.enable_cache();
    let mut model = dev.build_module::<Mlp, f32>();
    let mut grads = model.alloc_grads();
    let mut opt = Adam::new(
        &model,
        AdamConfig {
            lr: 1e-2,
            ..Default::default()
        },
    );
    let inputs: Tensor<(usize, Const<FEATURES>), f32, Cpu> = dev.tensor_from_vec(x, (n, Const));
    let hypers = [("c".to_string(), 2.0)].into_iter().collect();
    for step in 0..60 {
        let scores = model.forward_mut(inputs.clone().traced(grads));
        let loss = lossc::dfdx::loss(&mut workspace, "s", scores, &[Input::i64("y", &[n], &labels)], &hypers)
            .unwrap_or_else(|e| panic!("{e}"));
        let value = loss.array();
        grads = loss.backward();
        opt.update(&mut model, &grads).expect("every parameter has a gradient");
        model.zero_grads(&mut grads);
        if step % 10 == 0 || step == 59 {
            let predicted = model.forward(inputs.clone()).as_vec();
            let correct = (0..n)
                .filter(|i| {
                    let row = &predicted[i * CLASSES..(i + 1) * CLASSES];
                    let best = (0..CLASSES).max_by(|a, b| row[*a].total_cmp(&row[*b])).unwrap_or(0);
                    best as i64 == labels[*i]
                })
                .count();
            println!(
                "step {step:>2}: loss {value:.4}, accuracy {:.3}",
                correct as f64 / n as f64
            );
        }
    }
}

//! Steady-state call overhead of the slice API ([`lossc::Workspace`]: the caller's f32/i64 memory, gradients
//! written in place, buffers kept) against the `Tensor` API (`Kernel::eval`: f64 tensors in, inputs
//! converted and every buffer allocated per call, f64 tensors out), on cross-entropy at W1's size
//! (N = 8192, C = 1000) and on a tiny batch (N = 4, C = 3), two threads.
//!
//! Run: `cargo bench --bench embed`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use lossc::data::Rng;
use lossc::embed::Input;
use lossc::{Compiler, Tensor};

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cross_entropy.lx");
    let kernel = Compiler::new()
        .threads(2)
        .compile_file(&path)
        .unwrap()
        .kernel(None)
        .unwrap();
    let mut rng = Rng::new(5);
    for (label, n, classes) in [("W1 [8192, 1000]", 8192usize, 1000usize), ("tiny [4, 3]", 4, 3)] {
        let scores: Vec<f32> = (0..n * classes).map(|_| rng.normal() as f32).collect();
        let labels: Vec<i64> = (0..n).map(|_| rng.below(classes as u64) as i64).collect();
        let tensors = BTreeMap::from([
            (
                "s".to_string(),
                Tensor::float(vec![n, classes], scores.iter().map(|x| *x as f64).collect()),
            ),
            ("y".to_string(), Tensor::labels(vec![n], labels.clone())),
        ]);
        let mut group = c.benchmark_group(format!("cross-entropy {label}"));
        group.bench_function("Tensor API (Kernel::eval)", |b| {
            b.iter(|| black_box(kernel.eval(&tensors).unwrap().loss))
        });
        let mut workspace = kernel.workspace();
        let mut grad = vec![0f32; n * classes];
        let (s_shape, y_shape) = ([n, classes], [n]);
        let none = BTreeMap::new();
        group.bench_function("slice API (Workspace::call)", |b| {
            b.iter(|| {
                let inputs = [Input::f32("s", &s_shape, &scores), Input::i64("y", &y_shape, &labels)];
                black_box(workspace.call(&inputs, &none, &mut [("s", &mut grad)]).unwrap())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

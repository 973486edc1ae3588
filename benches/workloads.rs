//! The workloads of BENCHMARKS.md: loss + gradient with the JIT, against the interpreter and a
//! hand-written Rust loop of the same loss (f32 data, f64 accumulation, the same passes a careful
//! programmer would write). Criterion reports elements/s, so sizes may differ between the three (the
//! interpreter runs a smaller batch: it is the oracle, not a contender).
//!
//! Run: `cargo bench --bench workloads` (or `-- W1` for one workload).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lossc::data::Rng;
use lossc::{Backend, Compiler, Tensor};

const SORT_BCE16: &str = include_str!("sort_bce16.lx");
const NT_XENT: &str = include_str!("nt_xent.lx");

struct Workload {
    id: &'static str,
    source: String,
    /// Dimension sizes for the JIT and the hand-written loop, and (smaller) for the interpreter.
    sizes: &'static [(&'static str, usize)],
    interp_sizes: &'static [(&'static str, usize)],
    /// Number of distinct labels for unbounded label inputs.
    classes: u64,
    hand: Option<HandWritten>,
}

/// A hand-written Rust loop of a workload's loss and gradient, returning the loss.
type HandWritten = fn(&BTreeMap<String, Tensor>) -> f64;

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(format!("{name}.lx")),
    )
    .unwrap()
}

fn inputs(src: &str, sizes: &[(&str, usize)], classes: u64) -> BTreeMap<String, Tensor> {
    let p = lossc::Program::from_source("w.lx", src).unwrap();
    let f = p.loss(None).unwrap();
    let dims: Vec<i64> = f
        .dims
        .iter()
        .map(|d| sizes.iter().find(|(n, _)| *n == d.name).map_or(1, |(_, s)| *s as i64))
        .collect();
    let mut rng = Rng::new(1);
    f.inputs
        .iter()
        .map(|i| {
            let shape: Vec<usize> = i.shape.iter().map(|d| d.eval(&dims) as usize).collect();
            let n = shape.iter().product();
            let t = if i.elem == lossc::ir::ElemTy::Idx {
                let b = i.bound.as_ref().map_or(classes, |b| b.eval(&dims) as u64);
                Tensor::labels(shape, (0..n).map(|_| rng.below(b) as i64).collect())
            } else if i.nograd {
                Tensor::float(shape, (0..n).map(|_| (rng.uniform() > 0.5) as i64 as f64).collect())
            } else if f.name == "anyloss_f1" {
                Tensor::float(shape, (0..n).map(|_| rng.uniform()).collect())
            } else {
                Tensor::float(shape, (0..n).map(|_| rng.normal()).collect())
            };
            (i.name.clone(), t)
        })
        .collect()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_f64().iter().map(|x| *x as f32).collect()
}

fn labels(t: &Tensor) -> Vec<usize> {
    t.to_f64().iter().map(|x| *x as usize).collect()
}

/// Cross-entropy: one pass for the row's max and logsumexp, one for the gradient (softmax - onehot)/N.
fn hand_ce(m: &BTreeMap<String, Tensor>) -> f64 {
    let (s, y) = (f32s(&m["s"]), labels(&m["y"]));
    let (n, c) = (m["s"].shape[0], m["s"].shape[1]);
    let mut g = vec![0f32; n * c];
    let mut loss = 0f64;
    for i in 0..n {
        let row = &s[i * c..(i + 1) * c];
        let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|x| ((x - mx).exp()) as f64).sum();
        let lse = mx as f64 + sum.ln();
        loss += lse - row[y[i]] as f64;
        let gr = &mut g[i * c..(i + 1) * c];
        for k in 0..c {
            gr[k] = (((row[k] as f64 - lse).exp() - (k == y[i]) as i32 as f64) / n as f64) as f32;
        }
    }
    black_box(&g);
    loss / n as f64
}

/// LDR-KL (lambda = 1): margin-shifted logsumexp; gradient = softmax(m) - onehot * sum.
fn hand_ldr(m: &BTreeMap<String, Tensor>) -> f64 {
    let (s, y) = (f32s(&m["s"]), labels(&m["y"]));
    let (n, c) = (m["s"].shape[0], m["s"].shape[1]);
    let mut g = vec![0f32; n * c];
    let mut loss = 0f64;
    let mut mrow = vec![0f32; c];
    for i in 0..n {
        let row = &s[i * c..(i + 1) * c];
        let sy = row[y[i]];
        for k in 0..c {
            mrow[k] = (k != y[i]) as i32 as f32 + row[k] - sy;
        }
        let mx = mrow.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = mrow.iter().map(|x| (x - mx).exp() as f64).sum();
        let lse = mx as f64 + sum.ln();
        loss += lse - (c as f64).ln();
        let gr = &mut g[i * c..(i + 1) * c];
        let mut total = 0f64;
        for k in 0..c {
            let p = (mrow[k] as f64 - lse).exp() / n as f64;
            gr[k] = p as f32;
            total += p;
        }
        gr[y[i]] -= total as f32;
    }
    black_box(&g);
    loss / n as f64
}

/// AnyLoss 1 - F1, L = 73.
fn hand_anyloss(m: &BTreeMap<String, Tensor>) -> f64 {
    let (p, y) = (f32s(&m["p"]), f32s(&m["y"]));
    let a: Vec<f32> = p.iter().map(|p| 1.0 / (1.0 + (-73.0 * (p - 0.5)).exp())).collect();
    let (mut tp, mut fp, mut fnn) = (0f64, 0f64, 0f64);
    for (a, y) in a.iter().zip(&y) {
        tp += (a * y) as f64;
        fp += (a * (1.0 - y)) as f64;
        fnn += ((1.0 - a) * y) as f64;
    }
    let den = 2.0 * tp + fp + fnn;
    let (dtp, dfp) = (-2.0 / den + 2.0 * 2.0 * tp / (den * den), 2.0 * tp / (den * den));
    let g: Vec<f32> = a
        .iter()
        .zip(&y)
        .map(|(a, y)| {
            let da = dtp * *y as f64 + dfp * (1.0 - *y as f64) - dfp * *y as f64;
            (da * (a * (1.0 - a)) as f64 * 73.0) as f32
        })
        .collect();
    black_box(&g);
    1.0 - 2.0 * tp / den
}

/// Z-loss, plain form, summed.
fn hand_z(m: &BTreeMap<String, Tensor>) -> f64 {
    let (s, y) = (f32s(&m["s"]), labels(&m["y"]));
    let (n, c) = (m["s"].shape[0], m["s"].shape[1]);
    let mut g = vec![0f32; n * c];
    let mut loss = 0f64;
    for i in 0..n {
        let row = &s[i * c..(i + 1) * c];
        let mu = row.iter().map(|x| *x as f64).sum::<f64>() / c as f64;
        let sq = row.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>() / c as f64;
        let sigma = (sq - mu * mu).sqrt();
        let z = (row[y[i]] as f64 - mu) / (sigma + 1e-12);
        loss += (-z).max(0.0) + (-(z.abs())).exp().ln_1p();
        let dz = -1.0 / (1.0 + z.exp());
        let gr = &mut g[i * c..(i + 1) * c];
        for k in 0..c {
            let x = row[k] as f64;
            let dzdx = ((k == y[i]) as i32 as f64 - 1.0 / c as f64) / sigma - z * (x - mu) / (c as f64 * sigma * sigma);
            gr[k] = (dz * dzdx) as f32;
        }
    }
    black_box(&g);
    loss
}

/// KL-DRO over per-sample cross-entropy, lambda = 1.
fn hand_kl_dro(m: &BTreeMap<String, Tensor>) -> f64 {
    let (s, y) = (f32s(&m["s"]), labels(&m["y"]));
    let (n, c) = (m["s"].shape[0], m["s"].shape[1]);
    let mut lse = vec![0f64; n];
    let mut l = vec![0f64; n];
    for i in 0..n {
        let row = &s[i * c..(i + 1) * c];
        let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        lse[i] = mx as f64 + row.iter().map(|x| (x - mx).exp() as f64).sum::<f64>().ln();
        l[i] = lse[i] - row[y[i]] as f64;
    }
    let lm = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = l.iter().map(|v| (v - lm).exp()).sum();
    let mut g = vec![0f32; n * c];
    for i in 0..n {
        let w = (l[i] - lm).exp() / z;
        let row = &s[i * c..(i + 1) * c];
        for k in 0..c {
            g[i * c + k] = (w * ((row[k] as f64 - lse[i]).exp() - (k == y[i]) as i32 as f64)) as f32;
        }
    }
    black_box(&g);
    lm + z.ln() - (n as f64).ln()
}

fn workloads() -> Vec<Workload> {
    let big: &'static [(&str, usize)] = &[("N", 8192), ("C", 1000)];
    let small: &'static [(&str, usize)] = &[("N", 64), ("C", 100)];
    vec![
        Workload {
            id: "W1 cross-entropy [8192, 1000]",
            source: example("cross_entropy"),
            sizes: big,
            interp_sizes: small,
            classes: 0,
            hand: Some(hand_ce),
        },
        Workload {
            id: "W2 LDR-KL [8192, 1000]",
            source: example("ldr_kl"),
            sizes: big,
            interp_sizes: small,
            classes: 0,
            hand: Some(hand_ldr),
        },
        Workload {
            id: "W3 AnyLoss 1-F1 [1000000]",
            source: example("anyloss_f1"),
            sizes: &[("N", 1_000_000)],
            interp_sizes: &[("N", 10_000)],
            classes: 0,
            hand: Some(hand_anyloss),
        },
        Workload {
            id: "W4 NT-Xent [1024, 128]",
            source: NT_XENT.to_string(),
            sizes: &[("B", 1024), ("D", 128)],
            interp_sizes: &[("B", 32), ("D", 16)],
            classes: 0,
            hand: None,
        },
        Workload {
            id: "W5 multi-similarity [512, 128]",
            source: example("multi_similarity"),
            sizes: &[("B", 512), ("D", 128)],
            interp_sizes: &[("B", 32), ("D", 16)],
            classes: 64,
            hand: None,
        },
        Workload {
            id: "W6 differentiable sort BCE [1024, 16]",
            source: SORT_BCE16.to_string(),
            sizes: &[("B", 1024)],
            interp_sizes: &[("B", 4)],
            classes: 0,
            hand: None,
        },
        Workload {
            id: "W7 Z-loss [8192, 1000]",
            source: example("z_loss"),
            sizes: big,
            interp_sizes: small,
            classes: 0,
            hand: Some(hand_z),
        },
        Workload {
            id: "W8 KL-DRO [8192, 1000]",
            source: example("kl_dro"),
            sizes: big,
            interp_sizes: small,
            classes: 0,
            hand: Some(hand_kl_dro),
        },
    ]
}

fn bench(c: &mut Criterion) {
    for w in workloads() {
        let mut group = c.benchmark_group(w.id);
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_millis(500));
        let big = inputs(&w.source, w.sizes, w.classes);
        let elements: u64 = big.values().map(|t| t.len() as u64).sum();
        group.throughput(Throughput::Elements(elements));
        let jit = Compiler::new()
            .compile_source("w.lx", &w.source)
            .unwrap()
            .kernel(None)
            .unwrap();
        let native = jit.native().expect("jit backend");
        let bound = lossc::call::bind(jit.function(), &big, &BTreeMap::new()).unwrap();
        let mut buffers = native.buffers(&bound);
        group.bench_function("lossc jit", |b| {
            b.iter(|| native.execute(&mut buffers, jit.threads()).unwrap())
        });
        if let Some(hand) = w.hand {
            // The hand-written loop computes the same loss.
            let (a, b) = (hand(&big), jit.eval(&big).unwrap().loss);
            assert!(
                (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                "{}: hand-written {a} vs lossc {b}",
                w.id
            );
            group.bench_function("hand-written rust (1 thread)", |b| b.iter(|| black_box(hand(&big))));
        }
        let small = inputs(&w.source, w.interp_sizes, w.classes);
        group.throughput(Throughput::Elements(small.values().map(|t| t.len() as u64).sum()));
        let interp = Compiler::new()
            .backend(Backend::Interp)
            .compile_source("w.lx", &w.source)
            .unwrap()
            .kernel(None)
            .unwrap();
        group.bench_function("interpreter (smaller batch)", |b| {
            b.iter(|| interp.eval(&small).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The workloads of BENCHMARKS.md: loss + gradient with the JIT, against the same code as an
//! ahead-of-time library (`lossc compile -o`), the interpreter and a hand-written Rust loop of the same
//! loss (f32 data, f64 accumulation, the same passes a careful programmer would write). Criterion reports
//! elements/s, so sizes may differ between them (the interpreter runs a smaller batch: it is the oracle,
//! not a contender).
//!
//! Run: `cargo bench --bench workloads` (or `-- W1` for one workload).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

/// Ahead-of-time libraries loaded and called from Rust (shared with tests/aot.rs).
#[path = "../tests/common/aot.rs"]
mod aot;
mod hand;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lossc::{Backend, Compiler};

const SORT_BCE16: &str = include_str!("sort_bce16.lx");
const NT_XENT: &str = include_str!("nt_xent.lx");

struct Workload {
    id: &'static str,
    source: String,
    /// Dimension sizes for the JIT and the hand-written loop, and (smaller) for the interpreter.
    sizes: &'static [(&'static str, i64)],
    interp_sizes: &'static [(&'static str, i64)],
    /// Number of distinct labels for unbounded label inputs.
    classes: u64,
    hand: Option<hand::HandWritten>,
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(format!("{name}.lx")),
    )
    .unwrap()
}

fn workloads() -> Vec<Workload> {
    let big: &'static [(&str, i64)] = &[("N", 8192), ("C", 1000)];
    let small: &'static [(&str, i64)] = &[("N", 64), ("C", 100)];
    vec![
        Workload {
            id: "W1 cross-entropy [8192, 1000]",
            source: example("cross_entropy"),
            sizes: big,
            interp_sizes: small,
            classes: 0,
            hand: hand::of("cross_entropy"),
        },
        Workload {
            id: "W2 LDR-KL [8192, 1000]",
            source: example("ldr_kl"),
            sizes: big,
            interp_sizes: small,
            classes: 0,
            hand: hand::of("ldr_kl"),
        },
        Workload {
            id: "W3 AnyLoss 1-F1 [1000000]",
            source: example("anyloss_f1"),
            sizes: &[("N", 1_000_000)],
            interp_sizes: &[("N", 10_000)],
            classes: 0,
            hand: hand::of("anyloss_f1"),
        },
        Workload {
            id: "W4 NT-Xent [1024, 128]",
            source: NT_XENT.to_string(),
            sizes: &[("B", 1024), ("D", 128)],
            interp_sizes: &[("B", 32), ("D", 16)],
            classes: 0,
            hand: hand::of("nt_xent"),
        },
        Workload {
            id: "W5 multi-similarity [512, 128]",
            source: example("multi_similarity"),
            sizes: &[("B", 512), ("D", 128)],
            interp_sizes: &[("B", 32), ("D", 16)],
            classes: 64,
            hand: hand::of("multi_similarity"),
        },
        Workload {
            id: "W6 differentiable sort BCE [1024, 16]",
            source: SORT_BCE16.to_string(),
            sizes: &[("B", 1024)],
            interp_sizes: &[("B", 4)],
            classes: 0,
            hand: hand::of("sort_bce16"),
        },
        Workload {
            id: "W7 Z-loss [8192, 1000]",
            source: example("z_loss"),
            sizes: big,
            interp_sizes: small,
            classes: 0,
            hand: hand::of("z_loss"),
        },
        Workload {
            id: "W8 KL-DRO [8192, 1000]",
            source: example("kl_dro"),
            sizes: big,
            interp_sizes: small,
            classes: 0,
            hand: hand::of("kl_dro"),
        },
    ]
}

fn bench(c: &mut Criterion) {
    for (k, w) in workloads().into_iter().enumerate() {
        let mut group = c.benchmark_group(w.id);
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_millis(500));
        let big = hand::inputs(&w.source, w.sizes, w.classes, 1.0, 1);
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
        // The same code as an ahead-of-time library (`lossc compile -o`), called through its generic
        // entry point on the same threads; its loss checked against the JIT's at the timed size.
        let dir = aot::scratch("bench");
        // A path of its own per workload: a loaded library stays loaded (its worker threads outlive
        // dlclose), and dlopen of a path already loaded gives that library.
        let library = aot::load(&[jit.function()], &dir, &format!("workload{k}"));
        let entry = aot::entry(&library, jit.function());
        let mut call = aot::Prepared::new(jit.function(), &big);
        call.call(entry, jit.threads() as i32).unwrap();
        let (got, want) = (call.results[0].2[0] as f64, jit.eval(&big).unwrap().loss);
        assert!(
            got == want || (got - want).abs() <= 1e-3 * want.abs().max(1.0),
            "{}: library {got} vs jit {want}",
            w.id
        );
        group.bench_function("lossc aot library", |b| {
            b.iter(|| call.call(entry, jit.threads() as i32).unwrap())
        });
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(hand) = w.hand {
            // The hand-written loop computes the same loss and gradients (tests/hand_written.rs checks
            // them on small inputs against the interpreter; here at the timed size, against the JIT).
            let (a, b) = (hand(&big), jit.eval(&big).unwrap());
            let same = |p: f64, q: f64, scale: f64| p == q || (p - q).abs() <= 1e-3 * scale.max(1e-30);
            assert!(
                same(a.loss, b.loss, b.loss.abs().max(1.0)),
                "{}: hand-written {} vs lossc {}",
                w.id,
                a.loss,
                b.loss
            );
            if b.loss.is_finite() {
                for (name, g) in &a.grads {
                    let want = b.grads.iter().find(|(n, _)| n == name).expect("a gradient").1.to_f64();
                    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                    for (p, q) in g.iter().zip(&want) {
                        assert!(
                            same(*p as f64, *q, scale),
                            "{}: grad {name}: hand-written {p} vs lossc {q}",
                            w.id
                        );
                    }
                }
            }
            group.bench_function("hand-written rust (1 thread)", |b| b.iter(|| black_box(hand(&big))));
        }
        let small = hand::inputs(&w.source, w.interp_sizes, w.classes, 1.0, 1);
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

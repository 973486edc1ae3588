//! Compile time of programs whose size stresses the front end and the optimizer (issue "Hostile inputs":
//! work must stay polynomial in the program's size; issue "Speed that does not depend on how a loss is
//! written": sorting networks): parse, check, differentiate, optimize and generate the JIT's code for
//! - 100 chained `let`s, each reading the one before three times (3^100 paths once inlined),
//! - 100 chained `fn`s, each calling the next twice with the same argument,
//! - a sum of 10,000 terms (a flat operator chain),
//! - W6's sorting network (benches/sort_bce16.lx: 16 wires, unrolled layer by layer).
//!
//! Run: `cargo bench --bench compile`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use lossc::Compiler;

fn lets(n: usize) -> String {
    let mut src = "loss chain(x: f32[U]) {\n    let a0[u] = x[u]\n".to_string();
    for k in 1..=n {
        let p = k - 1;
        src.push_str(&format!("    let a{k}[u] = a{p}[u] + a{p}[u] * a{p}[u] * 0.001\n"));
    }
    src + &format!("    mean[u] a{n}[u]\n}}\n")
}

fn fns(n: usize) -> String {
    let mut src = String::new();
    for k in 0..n {
        src.push_str(&format!("fn g{k}(v) {{ g{}(v) * 0.5 + g{}(v) }}\n", k + 1, k + 1));
    }
    src + &format!("fn g{n}(v) {{ v }}\nloss h(x: f32[N]) {{ mean[i] g0(x[i]) }}\n")
}

fn terms(n: usize) -> String {
    let sum: Vec<String> = (0..n).map(|k| format!("x[i] * {}.0", k % 7 + 1)).collect();
    format!("loss f(x: f32[N]) {{\n    mean[i] {}\n}}\n", sum.join(" + "))
}

fn bench(c: &mut Criterion) {
    let sort = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sort_bce16.lx")).unwrap();
    let programs = [
        ("100 chained lets", lets(100)),
        ("100 chained fns", fns(100)),
        ("a sum of 10,000 terms", terms(10_000)),
        ("W6 sorting network (16 wires)", sort),
    ];
    let mut group = c.benchmark_group("compile (check, gradient, optimizer, JIT)");
    group.sample_size(10);
    for (name, src) in &programs {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let module = Compiler::new().compile_source("bench.lx", src).unwrap();
                black_box(module.kernel(None).unwrap());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The forms of a workload in `benches/forms/` (the same loss written the ways papers and users write it,
//! timed side by side by `tools/bench_forms.sh`) are the same function: every form's value and gradients
//! equal the `bench` form's, through the interpreter and through the JIT.

mod common;

use std::path::Path;

use lossc::data::Rng;
use lossc::{Backend, Compiler};

#[test]
fn every_form_computes_the_bench_form() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = common::lx_files(root, &["benches/forms"]);
    assert!(files.len() >= 4, "forms files: {files:?}");
    let mut rng = Rng::new(41);
    for path in files {
        for (backend, tolerance) in [(Backend::Interp, 1e-9), (Backend::Jit, 2e-4)] {
            let module = Compiler::new().backend(backend).compile_file(&path).unwrap();
            let names = module.losses().into_iter().map(String::from).collect::<Vec<_>>();
            assert!(names.len() >= 2 && names[0] == "bench", "{}: {names:?}", path.display());
            let reference = module.kernel(Some("bench")).unwrap();
            let f = reference.function();
            let sizes: Vec<i64> = f.dims.iter().map(|d| if d.name == "C" { 7 } else { 5 }).collect();
            let inputs = common::random_inputs(f, &sizes, &mut rng, common::Nograd::Normal);
            let want = reference.eval(&inputs).unwrap();
            for name in &names[1..] {
                let got = module.kernel(Some(name)).unwrap().eval(&inputs).unwrap();
                let close = |a: f64, b: f64| (a - b).abs() <= tolerance * b.abs().max(1.0);
                let what = format!("{} {name} ({backend:?})", path.display());
                assert!(close(got.loss, want.loss), "{what}: {} vs {}", got.loss, want.loss);
                for ((n, g), (_, w)) in got.grads.iter().zip(&want.grads) {
                    for (a, b) in g.to_f64().iter().zip(w.to_f64()) {
                        assert!(close(*a, b), "{what}: grad_{n} {a} vs {b}");
                    }
                }
            }
        }
    }
}

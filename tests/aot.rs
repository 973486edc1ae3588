//! Ahead-of-time libraries (`lossc compile -o lib.so`) against the interpreter (the oracle): every
//! example and feature input, loaded with dlopen and called through each loss's generic entry point;
//! results that do not depend on the thread count; the same checks and messages as a call from Rust; a C
//! program linked with the library and with its object; nothing needed beyond libc, libm and pthreads.
#![cfg(feature = "jit")]

mod common;

use std::ffi::{CStr, c_char, c_int};
use std::path::Path;
use std::process::Command;

use common::aot::{call, load, scratch};
use lossc::backend::loops::Plan;
use lossc::data::Rng;
use lossc::ir::{Function, Role};
use lossc::{Backend, Compiler, Tensor};

/// Float32 accuracy, as the JIT's tests.
const TOL: f64 = 2e-4;

fn close(a: f64, b: f64) -> bool {
    let finite = a.is_finite() && b.is_finite();
    (finite && (a - b).abs() <= TOL * b.abs().max(1.0)) || (a.is_nan() && b.is_nan()) || a == b
}

/// The library's results agree with the interpreter's evaluation.
fn assert_agree(what: &str, got: &[(Role, String, Vec<f32>)], want: &lossc::Evaluation) {
    for (role, name, values) in got {
        let expected: Vec<f64> = match role {
            Role::Loss => vec![want.loss],
            Role::Grad(_) => want.grads.iter().find(|(n, _)| n == name).unwrap().1.to_f64(),
            _ => want.outputs.iter().find(|(n, _)| n == name).unwrap().1.to_f64(),
        };
        for (k, (x, y)) in values.iter().zip(&expected).enumerate() {
            assert!(
                close(*x as f64, *y),
                "{what}: {role:?} {name}[{k}]: library {x} vs interpreter {y}"
            );
        }
    }
}

#[test]
fn libraries_match_the_interpreter_on_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("files");
    let mut rng = Rng::new(41);
    let mut checked = 0;
    for path in common::lx_files(root, &["examples", "tests/in", "stdlib"]) {
        let jit = Compiler::new().compile_file(&path).unwrap();
        let interp = Compiler::new().backend(Backend::Interp).compile_file(&path).unwrap();
        // A loss calling an extern operation cannot be a C library (tests/cli.rs checks the message).
        let names: Vec<&str> = (jit.losses().into_iter())
            .filter(|n| !jit.kernel(Some(n)).unwrap().calls_externs())
            .collect();
        let kernels: Vec<_> = names.iter().map(|n| jit.kernel(Some(n)).unwrap()).collect();
        if kernels.is_empty() {
            continue;
        }
        let functions: Vec<&Function> = kernels.iter().map(|k| k.function()).collect();
        // One library per file, named by its folder too (examples/ and stdlib/ both have distill.lx: a
        // second library at the same path is the first one to the loader).
        let folder = path.parent().unwrap().file_name().unwrap().to_string_lossy();
        let stem = format!("{folder}_{}", path.file_stem().unwrap().to_string_lossy());
        let lib = load(&functions, &dir, &stem);
        for (kernel, name) in kernels.iter().zip(names) {
            let ki = interp.kernel(Some(name)).unwrap();
            let f = kernel.function();
            for sizes in [[5i64, 4, 3, 6], [1, 1, 1, 1], [37, 9, 5, 2]] {
                // A size an idx hyperparameter sets is its default.
                let s: Vec<i64> = (f.dims.iter().enumerate())
                    .map(|(k, d)| d.hyper.map_or(sizes[k % 4], |h| f.hypers[h as usize].default as i64))
                    .collect();
                let inputs = common::random_inputs(f, &s, &mut rng, common::Nograd::Normal);
                let what = format!("{} {name} {s:?}", path.display());
                match (call(&lib, f, &inputs, 3), ki.eval(&inputs)) {
                    (Ok(got), Ok(want)) => {
                        assert_agree(&what, &got, &want);
                        // Bit for bit the same on one thread.
                        let one = call(&lib, f, &inputs, 1).unwrap();
                        for ((_, n, a), (_, _, b)) in got.iter().zip(&one) {
                            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                            assert!(same, "{what}: {n} differs between 3 threads and 1");
                        }
                        checked += 1;
                    }
                    (Err((_, got)), Err(want)) => assert_eq!(got, want.to_string(), "{what}"),
                    (got, want) => panic!("{what}: library {got:?} but interpreter {want:?}"),
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(checked >= 40, "only {checked} calls compared");
}

/// Bad calls fail as a call from Rust does: the same message, and the status code of its kind.
#[test]
fn bad_calls_fail_with_the_messages_of_a_call_from_rust() {
    let src = "loss ce(s: f32[N, C], y: idx[N] < C, k: idx = 2, t: f32 = 1.0) {\n    \
               mean[i] (logsumexp[c] s[i, c] / t) - s[i, y[i]] / t * k\n}\n";
    let module = Compiler::new().compile_source("ce.lx", src).unwrap();
    let kernel = module.kernel(None).unwrap();
    let f = kernel.function();
    let dir = scratch("errors");
    let lib = load(&[f], &dir, "ce");
    let mut rng = Rng::new(7);
    let good = common::random_inputs(f, &[6, 3], &mut rng, common::Nograd::Normal);
    let mut wrong_rows = good.clone();
    wrong_rows.insert("y".into(), Tensor::labels(vec![5], vec![0; 5]));
    let mut bad_label = good.clone();
    bad_label.insert("y".into(), Tensor::labels(vec![6], vec![0, 1, 2, 3, 0, 1]));
    let mut negative = good.clone();
    negative.insert("y".into(), Tensor::labels(vec![6], vec![0, 1, 0, 0, -1, 1]));
    for (what, inputs) in [("rows", wrong_rows), ("label", bad_label), ("negative", negative)] {
        let want = kernel.eval(&inputs).unwrap_err();
        let code = match want.kind() {
            lossc::call::CallErrorKind::Shape => 3,
            lossc::call::CallErrorKind::Label => 4,
            kind => panic!("{what}: {kind:?}"),
        };
        assert_eq!(call(&lib, f, &inputs, 2), Err((code, want.to_string())), "{what}");
    }
    // A negative sample id of a stateful loss (its state passed in explicitly), as `call::bind` refuses it.
    let counter = "loss t(x: f32[B], ids: idx[B], u: f32[B] state[ids] = 0.0) -> (u_new: f32[B] updates u) {\n    \
                   out u_new[i] = u[i] + x[i]\n    sum[i] x[i] * u[i]\n}\n";
    let stateful = Compiler::new()
        .compile_source("t.lx", counter)
        .unwrap()
        .kernel(None)
        .unwrap();
    let g = stateful.function();
    let state_lib = load(&[g], &dir, "t");
    let mut ids = common::random_inputs(g, &[3], &mut rng, common::Nograd::Normal);
    ids.insert("ids".into(), Tensor::labels(vec![3], vec![0, -2, 1]));
    let want = stateful.eval(&ids).unwrap_err();
    assert_eq!(call(&state_lib, g, &ids, 2), Err((4, want.to_string())), "negative id");
    // An axis idx hyperparameters size (`E + 1`) of another size (issue 24), and one of theirs that runs.
    let ring = "loss r(x: f32[B, E + 1], E: idx = 2) {\n    sum[i, e] x[i, e] * e\n}\n";
    let ring = Compiler::new()
        .compile_source("r.lx", ring)
        .unwrap()
        .kernel(None)
        .unwrap();
    let h = ring.function();
    let ring_lib = load(&[h], &dir, "r");
    for slots in [3usize, 4] {
        let x =
            std::collections::BTreeMap::from([("x".to_string(), Tensor::float(vec![2, slots], vec![1.0; 2 * slots]))]);
        match ring.eval(&x) {
            Ok(want) => assert_eq!(call(&ring_lib, h, &x, 2).unwrap()[0].2, vec![want.loss as f32]),
            Err(want) => assert_eq!(call(&ring_lib, h, &x, 2), Err((3, want.to_string())), "{slots} slots"),
        }
    }
    // A fractional integer hyperparameter, through the typed entry point.
    type Typed = unsafe extern "C" fn(
        *const f32,
        *const i64,
        *const i64,
        *const i64,
        f64,
        f64,
        *mut f32,
        *mut f32,
        c_int,
        *mut c_char,
        usize,
    ) -> c_int;
    // SAFETY: `lossc_ce` has exactly these parameters (inputs and shapes, `k`, `t`, the loss, the gradient).
    let typed: libloading::Symbol<Typed> = unsafe { lib.get(b"lossc_ce") }.unwrap();
    let s = [0.5f32; 18];
    let y = [0i64, 1, 2, 0, 1, 2];
    let (s_shape, y_shape) = ([6i64, 3], [6i64]);
    let mut message = vec![0 as c_char; 256];
    let mut loss = 0f32;
    let call_with = |k: f64, loss: &mut f32, message: &mut Vec<c_char>| -> (c_int, String) {
        // SAFETY: live buffers of the declared shapes; no gradient wanted (NULL).
        let status = unsafe {
            typed(
                s.as_ptr(),
                s_shape.as_ptr(),
                y.as_ptr(),
                y_shape.as_ptr(),
                k,
                1.0,
                loss,
                std::ptr::null_mut(),
                1,
                message.as_mut_ptr(),
                message.len(),
            )
        };
        // SAFETY: a NUL-terminated message (or the zeros it started as).
        (
            status,
            unsafe { CStr::from_ptr(message.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        )
    };
    let want = lossc::CallError::HyperNotInteger {
        name: "k".into(),
        value: 2.5,
    };
    assert_eq!(call_with(2.5, &mut loss, &mut message), (5, want.to_string()));
    assert_eq!(call_with(2.0, &mut loss, &mut message).0, 0);
    // Uniform scores: the loss is ln 3 times... minus the label's score, 1.0986 - 0.5 * 2.
    assert!((loss as f64 - (3f64.ln() + 0.5 - 0.5 * 2.0)).abs() < 1e-5, "{loss}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `lossc compile FILE -o NAME.so --header NAME.h` as a user runs it: a C program (examples/c/aot_train.c)
/// built against the header and linked with the library trains, reports bad calls, and prints the same
/// with the library's object (`-o NAME.o`) linked in instead; the library needs nothing beyond libc,
/// libm and libpthread.
#[test]
fn c_program_links_the_library_and_its_object() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("cli");
    let lossc = env!("CARGO_BIN_EXE_lossc");
    let example = root.join("examples/cross_entropy.lx");
    let run = |cmd: &mut Command| -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(Command::new(lossc)
        .arg("compile")
        .arg(&example)
        .arg("-o")
        .arg(dir.join("libce.so"))
        .arg("--header")
        .arg(dir.join("ce.h")));
    run(Command::new(lossc)
        .arg("compile")
        .arg(&example)
        .arg("-o")
        .arg(dir.join("ce.o")));
    let program = root.join("examples/c/aot_train.c");
    run(Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-I"])
        .arg(&dir)
        .arg(&program)
        .arg("-L")
        .arg(&dir)
        .arg("-lce")
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-o")
        .arg(dir.join("shared")));
    run(Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-I"])
        .arg(&dir)
        .arg(&program)
        .arg(dir.join("ce.o"))
        .args(["-lm", "-lpthread", "-o"])
        .arg(dir.join("static")));
    let shared = run(&mut Command::new(dir.join("shared")));
    let linked_in = run(&mut Command::new(dir.join("static")));
    assert_eq!(shared, linked_in);
    let losses: Vec<f32> = shared
        .lines()
        .filter_map(|l| l.split("loss ").nth(1)?.parse().ok())
        .collect();
    assert_eq!(losses.len(), 6, "{shared}");
    assert!((losses[0] - 4f32.ln()).abs() < 1e-4, "zero weights give ln C: {shared}");
    assert!(losses[5] < 0.5 * losses[0], "training brings the loss down: {shared}");
    for line in [
        "bad label: status 4: label out of range: `y` at position [3] is 4, but labels must lie in 0..C (C = 4)",
        "bad shape: status 3: dimension N mismatch: axis 0 of `y` has size 255, but N = 256 (from axis 0 of `s`)",
        "no scores: status 6: input `s` or its shape is NULL",
        "generic: status 0, same loss: yes",
    ] {
        assert!(shared.contains(line), "{line}\n{shared}");
    }
    // Where this machine runs the JIT's row helpers, the library has them too (rows_lib.rs); it exports
    // only the entry points.
    let symbols = run(Command::new("nm").arg(dir.join("libce.so")));
    if let Some(build) = lossc::backend::jit::row_build() {
        assert!(
            symbols.contains(&format!("lossc_rows_{build}_softmax_row")),
            "{symbols}"
        );
    }
    let exported = run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(dir.join("libce.so")));
    let names: Vec<&str> = exported.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(names, ["lossc_cross_entropy", "lossc_cross_entropy_call"], "{exported}");
    // Only libc, libm and libpthread (and the loader and the vDSO) are needed.
    let ldd = run(Command::new("ldd").arg(dir.join("libce.so")));
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = line.split_whitespace().next().unwrap_or_default();
        let allowed = [
            "linux-vdso.so",
            "libc.so",
            "libm.so",
            "libpthread.so",
            "ld-linux",
            "/lib64/ld-linux",
        ];
        assert!(
            allowed.iter().any(|a| name.contains(a)),
            "the library needs {name}:\n{ldd}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--emit cuda -o NAME.cu` writes the CUDA kernels; the command line refuses what a library cannot be,
/// with a message.
#[test]
fn command_line_writes_cuda_source_and_refuses_what_a_library_cannot_be() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lossc = env!("CARGO_BIN_EXE_lossc");
    let dir = scratch("refusals");
    let example = root.join("examples/cross_entropy.lx");
    let out = Command::new(lossc)
        .arg("compile")
        .arg(&example)
        .args(["--emit", "clif", "-o"])
        .arg(dir.join("x.so"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writes a library; `--emit clif` writes text"), "{err}");
    let out = Command::new(lossc)
        .arg("compile")
        .arg(&example)
        .arg("--header")
        .arg(dir.join("x.h"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--header goes with a library"));
    // With the CUDA backend's code, `-o` writes the kernels' source.
    let out = Command::new(lossc)
        .arg("compile")
        .arg(&example)
        .args(["--emit", "cuda", "-o"])
        .arg(dir.join("ce.cu"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cuda = std::fs::read_to_string(dir.join("ce.cu")).unwrap();
    assert!(cuda.contains("__global__"), "{cuda}");
    // A C compiler that cannot be run is named in the message.
    let out = Command::new(lossc)
        .env("CC", "/nonexistent/cc")
        .arg("compile")
        .arg(&example)
        .arg("-o")
        .arg(dir.join("x.so"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`/nonexistent/cc` could not be run"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Matrix products run as the library's sgemm (gemm.c) and agree with the JIT's (matrixmultiply) at sizes
/// that cross every boundary of its blocking: several blocks of output rows (128; a symmetric product's
/// 64), a sum longer than one packed panel (256 terms), more columns than one panel (1024), partial
/// register tiles; products with an operand read transposed (copied in row order first), symmetric Gram
/// matrices, pairwise squared distances (two sets, and one set's by halves), and a masked product whose other operand holds an infinity, which must run as its loops (a
/// dense product would give 0 · inf = NaN). The results do not depend on the thread count.
#[test]
fn matrix_products_run_as_sgemm_and_match_the_jit() {
    let src = "
        loss chain(a: f32[N, D], b: f32[D, M]) {
            let c[i, j] = sum[d] a[i, d] * b[d, j]
            mean[i, j] c[i, j] * c[i, j]
        }
        loss gram(x: f32[N, D]) {
            let g[i, j] = sum[d] x[i, d] * x[j, d]
            mean[i, j] tanh(g[i, j] / D)
        }
        loss masked(a: f32[N, D] nograd, b: f32[D, M] nograd) {
            let c[i, j] = sum[d | a[i, d] != 0] a[i, d] * b[d, j]
            mean[i, j] c[i, j]
        }
        loss distances(x: f32[N, D], z: f32[M, D]) {
            mean[i, j] exp(-(sum[d] (x[i, d] - z[j, d]) ^ 2) / (4 * D))
        }
        loss self_distances(x: f32[N, D]) {
            mean[i, j] exp(-(sum[d] (x[i, d] - x[j, d]) ^ 2) / (4 * D))
        }
    ";
    let jit = Compiler::new().compile_source("products.lx", src).unwrap();
    let kernels: Vec<_> = jit.losses().iter().map(|n| jit.kernel(Some(n)).unwrap()).collect();
    let functions: Vec<&Function> = kernels.iter().map(|k| k.function()).collect();
    assert!(
        functions.iter().all(|f| !Plan::new(f).contractions.is_empty()),
        "every loss has a matrix product"
    );
    for f in functions.iter().filter(|f| f.name.contains("distances")) {
        let plan = Plan::new(f);
        assert!(plan.contractions.iter().any(|c| c.distance), "{}: no distances", f.name);
    }
    let lib = load(&functions, &scratch("products"), "products");
    let mut rng = Rng::new(8);
    let mut matrix =
        |rows: usize, cols: usize| Tensor::float(vec![rows, cols], (0..rows * cols).map(|_| rng.normal()).collect());
    let (n, d, m) = (300, 300, 1100);
    let (a, b, x, z) = (matrix(n, d), matrix(d, m), matrix(n, d), matrix(m, d));
    // For `masked`: column 7 of `a` is zero and row 7 of `b` holds an infinity, so every term that meets
    // it is masked.
    let (mut a7, mut b7) = (a.clone(), b.clone());
    if let (lossc::data::Data::Float(av), lossc::data::Data::Float(bv)) = (&mut a7.data, &mut b7.data) {
        (0..n).for_each(|i| av[i * d + 7] = 0.0);
        bv[7 * m + 5] = f64::INFINITY;
    }
    for kernel in &kernels {
        let f = kernel.function();
        let inputs: std::collections::BTreeMap<String, Tensor> = match f.name.as_str() {
            "gram" | "self_distances" => [("x".to_string(), x.clone())].into(),
            "distances" => [("x".to_string(), x.clone()), ("z".to_string(), z.clone())].into(),
            "masked" => [("a".to_string(), a7.clone()), ("b".to_string(), b7.clone())].into(),
            _ => [("a".to_string(), a.clone()), ("b".to_string(), b.clone())].into(),
        };
        let want = kernel.eval(&inputs).unwrap();
        let got = call(&lib, f, &inputs, 1).unwrap();
        for (role, name, values) in &got {
            let expected: Vec<f64> = match role {
                Role::Loss => vec![want.loss],
                _ => want.grads.iter().find(|(g, _)| g == name).unwrap().1.to_f64(),
            };
            assert!(expected.iter().all(|v| v.is_finite()), "{}: {name}", f.name);
            let scale = expected.iter().fold(0f64, |s, v| s.max(v.abs()));
            for (k, (x, y)) in values.iter().zip(&expected).enumerate() {
                assert!(
                    (*x as f64 - y).abs() <= 1e-4 * scale.max(1e-30),
                    "{}: {role:?} {name}[{k}]: library {x} vs jit {y}",
                    f.name
                );
            }
        }
        let threaded = call(&lib, f, &inputs, 3).unwrap();
        assert_eq!(got, threaded, "{}: 3 threads differ from 1", f.name);
    }
}

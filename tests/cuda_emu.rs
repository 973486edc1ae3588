//! The CUDA generator's oracle test: generated kernels run in the host emulation (tests/cuda_emu/) through
//! the CUDA backend's host side, against the interpreter, on every example and test program, every stdlib
//! loss and the bundled inputs, at the JIT's float32 tolerance; launch geometry changes only rounding;
//! data-dependent subscripts out of range are typed errors. Needs g++ (C++20), no GPU.

mod common;
#[path = "cuda_emu/mod.rs"]
mod emu;

use std::collections::BTreeMap;

use emu::EmuLoader;
use lossc::data::Data;
use lossc::data::Rng;
use lossc::ir::Function;
use lossc::{Backend, CallError, Compiler, Evaluation, Tensor};

/// Float32 accuracy, as the JIT's: |cuda - interp| <= 2e-4 * max(1, |interp|), per value.
const TOL: f64 = 2e-4;

fn cuda(loader: EmuLoader) -> Compiler {
    Compiler::new().backend(Backend::Cuda).cuda_loader(emu::gpu_or(loader))
}

fn close(a: f64, b: f64) -> bool {
    let finite = a.is_finite() && b.is_finite();
    (finite && (a - b).abs() <= TOL * b.abs().max(1.0)) || (a.is_nan() && b.is_nan()) || a == b
}

fn values(e: &Evaluation) -> Vec<(String, Vec<f64>)> {
    let mut v = vec![("loss".to_string(), vec![e.loss])];
    v.extend(e.grads.iter().chain(&e.outputs).map(|(n, t)| (n.clone(), t.to_f64())));
    v
}

fn assert_agree(what: &str, got: &Evaluation, want: &Evaluation) {
    assert_agree_where_f32_can(what, got, None, want)
}

/// Every value of `got` is close to the interpreter's, or, where the JIT's f32 arithmetic is not (an
/// exponential that overflows in f32 and not in f64: issue "Hostile inputs"), equal to the JIT's.
fn assert_agree_where_f32_can(what: &str, got: &Evaluation, jit: Option<&Evaluation>, want: &Evaluation) {
    let (got, want) = (values(got), values(want));
    let jit = jit.map(values);
    assert_eq!(got.len(), want.len(), "{what}: outputs and gradients");
    for (t, ((n, a), (_, b))) in got.iter().zip(&want).enumerate() {
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            let like_jit = jit.as_ref().is_some_and(|j| {
                let z = j[t].1[k];
                !close(z, *y) && (z == *x || (z.is_nan() && x.is_nan()))
            });
            assert!(close(*x, *y) || like_jit, "{what}: {n}[{k}] cuda {x} vs interp {y}");
        }
    }
}

fn random_inputs(f: &Function, sizes: &[i64], rng: &mut Rng) -> BTreeMap<String, Tensor> {
    common::random_inputs(f, sizes, rng, common::Nograd::AwayFromZero)
}

fn lx_files() -> Vec<std::path::PathBuf> {
    common::lx_files(&emu::root(), &["examples", "tests/in", "benches"])
}

/// Every loss of `module` (compiled for the emulated device and for the interpreter) at a few sizes.
fn every_loss_agrees(what: &str, source: &str, rng: &mut Rng) {
    let cuda = cuda(EmuLoader::default()).compile_source(what, source).unwrap();
    let jit = Compiler::new().threads(2).compile_source(what, source).unwrap();
    let interp = Compiler::new()
        .backend(Backend::Interp)
        .compile_source(what, source)
        .unwrap();
    for name in cuda.losses() {
        let kc = cuda
            .kernel(Some(name))
            .unwrap_or_else(|d| panic!("{what} {name}: {d:?}"));
        let kj = jit.kernel(Some(name)).unwrap();
        let ki = interp.kernel(Some(name)).unwrap();
        // Short rows run a warp per row; rows over WARP_ROWS_MAX (70) a block per row.
        for sizes in [[5i64, 4, 3, 6], [1, 1, 1, 1], [37, 9, 5, 2], [6, 70, 3, 66]] {
            let f = kc.function();
            let s: Vec<i64> = f.dims.iter().enumerate().map(|(k, _)| sizes[k % 4]).collect();
            let inputs = random_inputs(f, &s, rng);
            match (kc.eval(&inputs), ki.eval(&inputs)) {
                (Ok(a), Ok(b)) => {
                    let j = kj.eval(&inputs).unwrap();
                    assert_agree_where_f32_can(&format!("{what} {name} {s:?}"), &a, Some(&j), &b)
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{what} {name}: both fail, differently"),
                (a, b) => panic!("{what} {name}: cuda {a:?} but interp {b:?}"),
            }
        }
    }
}

#[test]
fn generated_kernels_match_the_interpreter_on_every_file() {
    let mut rng = Rng::new(7);
    for path in lx_files() {
        // The sorting network of benches/ unrolls into ~140 groups: covered by its stdlib form below.
        if path.ends_with("sort_bce16.lx") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        every_loss_agrees(&path.display().to_string(), &source, &mut rng);
    }
}

#[test]
fn generated_kernels_match_the_interpreter_on_every_stdlib_loss() {
    let mut rng = Rng::new(11);
    for entry in lossc::stdlib::entries() {
        let src = format!("use {}\n", entry.path);
        every_loss_agrees(&entry.path, &src, &mut rng);
    }
}

#[test]
fn generated_kernels_match_the_interpreter_on_bundled_examples() {
    let examples = common::bundled_examples(&emu::root());
    assert!(examples.len() >= 5, "bundled examples");
    for (path, name, inputs) in examples {
        let kc = cuda(EmuLoader::default())
            .compile_file(&path)
            .unwrap()
            .kernel(None)
            .unwrap();
        let ki = Compiler::new()
            .backend(Backend::Interp)
            .compile_file(&path)
            .unwrap()
            .kernel(None)
            .unwrap();
        assert_agree(&name, &kc.eval(&inputs).unwrap(), &ki.eval(&inputs).unwrap());
    }
}

#[test]
fn launch_geometry_changes_only_rounding() {
    // LDR-KL: rows over blocks; AnyLoss at N = 10,000: sums in three chunks of partials (Parts, Total);
    // multi-similarity and NT-Xent: matrix products over several tiles each way (Tiled).
    let cases = [
        ("examples/ldr_kl.lx", vec![70i64, 300]),
        // Short rows: a warp per row, 8 rows per block, the blocks looping over the rest.
        ("examples/ldr_kl.lx", vec![37, 9]),
        ("examples/anyloss_f1.lx", vec![10_000]),
        ("examples/multi_similarity.lx", vec![70, 40]),
        ("benches/nt_xent.lx", vec![40, 70]),
    ];
    for (file, sizes) in cases {
        let src = std::fs::read_to_string(emu::root().join(file)).unwrap();
        let mut rng = Rng::new(3);
        let one = cuda(EmuLoader { block: 32, max_grid: 1 })
            .compile_source("a.lx", &src)
            .unwrap();
        let many = cuda(EmuLoader {
            block: 128,
            max_grid: 1000,
        })
        .compile_source("a.lx", &src)
        .unwrap();
        let interp = Compiler::new()
            .backend(Backend::Interp)
            .compile_source("a.lx", &src)
            .unwrap();
        let (k1, k2, ki) = (
            one.kernel(None).unwrap(),
            many.kernel(None).unwrap(),
            interp.kernel(None).unwrap(),
        );
        let inputs = random_inputs(k1.function(), &sizes, &mut rng);
        let want = ki.eval(&inputs).unwrap();
        assert_agree(file, &k1.eval(&inputs).unwrap(), &want);
        assert_agree(file, &k2.eval(&inputs).unwrap(), &want);
    }
}

#[test]
fn data_dependent_subscripts_out_of_range_are_typed_errors() {
    let src = "loss shifted(x: f32[N], k: idx = 1) { sum[i: N] x[i + k] * x[i] }";
    let c = cuda(EmuLoader::default()).compile_source("s.lx", src).unwrap();
    let i = Compiler::new()
        .backend(Backend::Interp)
        .compile_source("s.lx", src)
        .unwrap();
    let inputs = BTreeMap::from([("x".to_string(), Tensor::float(vec![6], vec![1.0; 6]))]);
    let (kc, ki) = (c.kernel(None).unwrap(), i.kernel(None).unwrap());
    let err = kc.eval(&inputs).unwrap_err();
    assert!(
        matches!(err, CallError::IndexOutOfRange { ref tensor, axis: 0, value: 6, size: 6, .. } if tensor == "x"),
        "{err:?}"
    );
    assert_eq!(err, ki.eval(&inputs).unwrap_err());
    // In range with k = 0.
    let hypers = BTreeMap::from([("k".to_string(), 0.0)]);
    assert_agree(
        "k = 0",
        &kc.eval_with(&inputs, &hypers).unwrap(),
        &ki.eval_with(&inputs, &hypers).unwrap(),
    );
}

/// Device memory in place: inputs read where they are, gradients written into the caller's buffers, the
/// rest copied back; labels checked by the label kernel.
#[test]
fn calls_on_device_memory_use_it_in_place() {
    use lossc::data::DType;
    let src = "loss ce(s: f32[N, C], y: idx[N] < C) -> (p: f32[N]) {\n\
               out p[i] = exp(s[i, y[i]] - logsumexp[k] s[i, k])\n\
               mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }";
    let (n, c) = (9usize, 7usize);
    let kc = cuda(EmuLoader::default())
        .compile_source("ce.lx", src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let ki = Compiler::new()
        .backend(Backend::Interp)
        .compile_source("ce.lx", src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let mut host = random_inputs(ki.function(), &[n as i64, c as i64], &mut Rng::new(5));
    let device = |host: &BTreeMap<String, Tensor>| -> BTreeMap<String, lossc::DeviceTensor> {
        host.iter()
            .map(|(k, t)| (k.clone(), kc.to_device(k, t).unwrap()))
            .collect()
    };
    let want = ki.eval(&host).unwrap();
    let grad = kc.device_buffer(n * c * 4).unwrap();
    let grads = BTreeMap::from([("s".to_string(), grad)]);
    let got = kc.eval_device(&device(&host), &BTreeMap::new(), &grads, 0).unwrap();
    assert!(close(got.loss, want.loss), "loss {} vs {}", got.loss, want.loss);
    assert!(got.grads.is_empty(), "the placed gradient is not copied back");
    for (k, (g, w)) in read_f32(&kc, grad, n * c)
        .iter()
        .zip(want.grads[0].1.to_f64())
        .enumerate()
    {
        assert!(close(*g as f64, w), "grad_s[{k}]: {g} vs {w}");
    }
    let no_grads = |e: &Evaluation| Evaluation {
        grads: vec![],
        ..e.clone()
    };
    assert_agree("outputs", &no_grads(&got), &no_grads(&want));
    // A label out of range, found on the device.
    let Data::Int(y) = &mut host.get_mut("y").unwrap().data else {
        unreachable!()
    };
    y[4] = c as i64;
    let err = kc.eval_device(&device(&host), &BTreeMap::new(), &grads, 0).unwrap_err();
    assert_eq!(
        err,
        lossc::call::bind(ki.function(), &host, &BTreeMap::new()).unwrap_err()
    );
    let Data::Int(y) = &mut host.get_mut("y").unwrap().data else {
        unreachable!()
    };
    y[4] = 0;
    // Wrong element types, unknown gradient names, shapes that disagree: typed errors before any launch.
    let good = device(&host);
    let mut wrong = good.clone();
    wrong.get_mut("s").unwrap().dtype = DType::F64;
    assert!(matches!(
        kc.eval_device(&wrong, &BTreeMap::new(), &grads, 0),
        Err(CallError::WrongDtype { .. })
    ));
    let bad = BTreeMap::from([("y".to_string(), 0u64)]);
    assert!(matches!(
        kc.eval_device(&good, &BTreeMap::new(), &bad, 0),
        Err(CallError::UnknownInput { .. })
    ));
    let mut short = good.clone();
    short.get_mut("y").unwrap().shape = vec![n - 1];
    assert!(matches!(
        kc.eval_device(&short, &BTreeMap::new(), &grads, 0),
        Err(CallError::ShapeMismatch { .. })
    ));
    // The JIT has no device entry point.
    let kj = Compiler::new()
        .compile_source("ce.lx", src)
        .unwrap()
        .kernel(None)
        .unwrap();
    assert!(matches!(
        kj.eval_device(&good, &BTreeMap::new(), &grads, 0),
        Err(CallError::Device(_))
    ));
}

/// `len` floats of device memory.
fn read_f32(k: &lossc::Kernel, ptr: u64, len: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; len * 4];
    k.from_device(ptr, &mut bytes).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// bf16 and f16 inputs: computed in f32, gradients rounded to the input's type, on every backend; the
/// kernels' own conversions round as the host's (`half`), subnormals and overflow included.
#[test]
fn half_precision_inputs_and_gradients() {
    use lossc::data::DType;
    for (ty, dtype, ulp) in [
        ("bf16", DType::BF16, 2f64.powi(-7)),
        ("f16", DType::F16, 2f64.powi(-10)),
    ] {
        // The gradient of sum x * w is w: rounded from f32-representable values, exactly as the host rounds.
        let src = format!("loss dot(x: {ty}[N], w: f32[N] nograd) {{ sum[i] x[i] * w[i] }}");
        let mut w: Vec<f64> = vec![
            0.0,
            -0.0,
            1.0,
            -2.5,
            1e-6,
            -3e-8,
            6e-5,
            65504.0,
            65519.0,
            65520.0,
            1e5,
            3.0e38,
            1.0 + 2f64.powi(-8),
            1.0 + 3.0 * 2f64.powi(-11),
        ];
        let mut rng = Rng::new(9);
        w.extend((0..50).map(|_| (rng.normal() * 10f64.powi(rng.below(9) as i32 - 4)) as f32 as f64));
        let n = w.len();
        let inputs = BTreeMap::from([
            ("x".to_string(), Tensor::float(vec![n], vec![0.5; n])),
            ("w".to_string(), Tensor::float(vec![n], w.clone())),
        ]);
        let kc = cuda(EmuLoader::default())
            .compile_source("h.lx", &src)
            .unwrap()
            .kernel(None)
            .unwrap();
        let ki = Compiler::new()
            .backend(Backend::Interp)
            .compile_source("h.lx", &src)
            .unwrap()
            .kernel(None)
            .unwrap();
        let kj = Compiler::new()
            .compile_source("h.lx", &src)
            .unwrap()
            .kernel(None)
            .unwrap();
        let want = ki.eval(&inputs).unwrap();
        assert_eq!(want.grads[0].1.dtype, dtype);
        for got in [kc.eval(&inputs).unwrap(), kj.eval(&inputs).unwrap()] {
            assert_eq!(got.grads[0].1.dtype, dtype, "{ty}");
            let (g, e) = (got.grads[0].1.to_f64(), want.grads[0].1.to_f64());
            for k in 0..n {
                assert!(
                    g[k] == e[k] || (g[k].is_nan() && e[k].is_nan()),
                    "{ty}: w = {} rounds to {} here, {} on the host",
                    w[k],
                    g[k],
                    e[k]
                );
            }
        }
        // Cross-entropy over half logits: inputs rounded to the type when bound, gradients within an ulp of it.
        let src = format!("loss ce(s: {ty}[N, C], y: idx[N] < C) {{ mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }}");
        let kc = cuda(EmuLoader::default())
            .compile_source("c.lx", &src)
            .unwrap()
            .kernel(None)
            .unwrap();
        let ki = Compiler::new()
            .backend(Backend::Interp)
            .compile_source("c.lx", &src)
            .unwrap()
            .kernel(None)
            .unwrap();
        let inputs = random_inputs(ki.function(), &[6, 9], &mut rng);
        let (got, want) = (kc.eval(&inputs).unwrap(), ki.eval(&inputs).unwrap());
        assert!(close(got.loss, want.loss), "{ty}: loss {} vs {}", got.loss, want.loss);
        for (g, e) in got.grads[0].1.to_f64().iter().zip(want.grads[0].1.to_f64()) {
            assert!((g - e).abs() <= ulp * e.abs() + 1e-6, "{ty}: grad {g} vs {e}");
        }
        // The same call on half-precision device memory, gradients written in place.
        let device: BTreeMap<String, lossc::DeviceTensor> = inputs
            .iter()
            .map(|(k, t)| (k.clone(), kc.to_device(k, t).unwrap()))
            .collect();
        assert_eq!(device["s"].dtype, dtype);
        let grad = kc.device_buffer(6 * 9 * 2).unwrap();
        let grads = BTreeMap::from([("s".to_string(), grad)]);
        let on_device = kc.eval_device(&device, &BTreeMap::new(), &grads, 0).unwrap();
        assert_eq!(on_device.loss, got.loss, "{ty}: same bits in place as copied");
        let mut bytes = vec![0u8; 6 * 9 * 2];
        kc.from_device(grad, &mut bytes).unwrap();
        let placed: Vec<f64> = bytes
            .chunks_exact(2)
            .map(|b| match dtype {
                DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
                _ => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
            })
            .collect();
        assert_eq!(placed, got.grads[0].1.to_f64(), "{ty}");
    }
}

/// A softmax row whose logsumexp and gradient run in one kernel keeps its exponentials in shared memory
/// (the gradient reads them instead of computing them again); rows longer than the shared memory holds,
/// and rows of infinite logits, compute them. The emulation's shared memory starts as NaN, so a read of
/// an exponential never kept shows.
#[test]
fn softmax_rows_keep_their_exponentials_in_shared_memory() {
    let src = std::fs::read_to_string(emu::root().join("examples/cross_entropy.lx")).unwrap();
    let program = lossc::Program::from_source("ce.lx", &src).unwrap();
    let g = lossc::api::gradient(&program.module.functions[0]).unwrap();
    let cuda_src = lossc::backend::cuda::generate(&g).source;
    assert!(
        cuda_src.contains("lx_kept[i1] = ") && cuda_src.contains("* lx_inv;"),
        "{cuda_src}"
    );
    let kc = cuda(EmuLoader::default())
        .compile_source("ce.lx", &src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let ki = Compiler::new()
        .backend(Backend::Interp)
        .compile_source("ce.lx", &src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let mut rng = Rng::new(17);
    // A short row (a warp per row, computed), a row kept in shared memory, a row too long to keep.
    for sizes in [[3i64, 5], [3, 100], [2, lossc::backend::cuda::KEEP_MAX + 3]] {
        let inputs = random_inputs(ki.function(), &sizes, &mut rng);
        assert_agree(
            &format!("{sizes:?}"),
            &kc.eval(&inputs).unwrap(),
            &ki.eval(&inputs).unwrap(),
        );
    }
    let inf = BTreeMap::from([
        (
            "s".to_string(),
            Tensor::float(vec![2, 3], vec![f64::INFINITY, 0.0, 1.0, -1.0, 0.0, 1.0]),
        ),
        ("y".to_string(), Tensor::labels(vec![2], vec![1, 2])),
    ]);
    assert_agree("infinite logit", &kc.eval(&inf).unwrap(), &ki.eval(&inf).unwrap());
}

/// A logsumexp whose body is too costly to evaluate twice runs online (the plan's rule, `loops::cheap`),
/// masked or not, through infinities and NaN, serially and by the whole block.
#[test]
fn costly_logsumexp_bodies_run_online() {
    let src = "loss f(s: f32[N, C]) {\n\
               let r[i] = logsumexp[k | s[i, k] > -2.0] exp(s[i, k]) * 3.0\n\
               mean[i] r[i] + (sum[j] logsumexp[k] tanh(s[j, k]) * s[i, k]) / N }";
    let program = lossc::Program::from_source("f.lx", src).unwrap();
    let g = lossc::api::gradient(&program.module.functions[0]).unwrap();
    assert!(lossc::backend::cuda::generate(&g).source.contains("= lx_lse_push("));
    let kc = cuda(EmuLoader::default())
        .compile_source("f.lx", src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let ki = Compiler::new()
        .backend(Backend::Interp)
        .compile_source("f.lx", src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let mut rng = Rng::new(23);
    for sizes in [[4i64, 7], [3, 70], [1, 1]] {
        let inputs = random_inputs(ki.function(), &sizes, &mut rng);
        assert_agree(
            &format!("{sizes:?}"),
            &kc.eval(&inputs).unwrap(),
            &ki.eval(&inputs).unwrap(),
        );
    }
    for special in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -5.0] {
        let s = vec![0.5, special, -1.0, 2.0, special, special];
        let inputs = BTreeMap::from([("s".to_string(), Tensor::float(vec![2, 3], s))]);
        assert_agree(
            &format!("{special}"),
            &kc.eval(&inputs).unwrap(),
            &ki.eval(&inputs).unwrap(),
        );
    }
}

/// Inputs uploaded once into memory the kernel keeps (`to_device`), gradient buffers it keeps
/// (`device_buffer`), many calls on them: what `lossc bench --backend cuda` times.
#[test]
fn kept_device_memory_serves_many_calls() {
    let src = std::fs::read_to_string(emu::root().join("examples/ldr_kl.lx")).unwrap();
    let kc = cuda(EmuLoader::default())
        .compile_source("l.lx", &src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let ki = Compiler::new()
        .backend(Backend::Interp)
        .compile_source("l.lx", &src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let inputs = random_inputs(ki.function(), &[5, 6], &mut Rng::new(2));
    let want = ki.eval(&inputs).unwrap();
    let on_device: BTreeMap<String, lossc::DeviceTensor> = inputs
        .iter()
        .map(|(n, t)| (n.clone(), kc.to_device(n, t).unwrap()))
        .collect();
    let grad = kc.device_buffer(30 * 4).unwrap();
    let grads = BTreeMap::from([("s".to_string(), grad)]);
    for _ in 0..3 {
        let got = kc.eval_device(&on_device, &BTreeMap::new(), &grads, 0).unwrap();
        assert!(close(got.loss, want.loss));
        for (x, y) in read_f32(&kc, grad, 30).iter().zip(want.grads[0].1.to_f64()) {
            assert!(close(*x as f64, y), "{x} vs {y}");
        }
    }
    assert!(matches!(
        kc.to_device("nosuch", &inputs["s"]),
        Err(CallError::UnknownInput { .. })
    ));
}

/// State tables in device memory (`eval_device_stateful`): several calls of SogCLR whose batches share and
/// repeat ids agree with the host state store through the interpreter, call by call, and the tables end
/// equal.
#[test]
fn state_tables_live_on_the_device() {
    for path in [
        "std::contrastive::sogclr",
        "std::contrastive::isogclr",
        "std::robust::aldr_kl",
        // Rows of (E + 1) × C values per id: SAF's ring buffer of past outputs.
        "std::distill::saf",
    ] {
        state_tables_agree(path);
    }
}

fn state_tables_agree(path: &str) {
    // SAF reads the slot of E = 1 epochs ago from the first call on (the other losses ignore these).
    let mut calls = 0;
    let mut hypers = |f: &lossc::ir::Function| -> BTreeMap<String, f64> {
        calls += 1;
        [("epoch", calls as f64), ("E", 1.0), ("kl_start", 0.0)]
            .into_iter()
            .filter(|(n, _)| f.hypers.iter().any(|h| h.name == *n))
            .map(|(n, v)| (n.to_string(), v))
            .collect()
    };
    let src = format!("use {path}\n");
    let kc = cuda(EmuLoader::default())
        .compile_source("s.lx", &src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let ki = Compiler::new()
        .backend(Backend::Interp)
        .compile_source("s.lx", &src)
        .unwrap()
        .kernel(None)
        .unwrap();
    let f = ki.function().clone();
    let state: Vec<&lossc::ir::Input> = f.inputs.iter().filter(|i| i.state.is_some()).collect();
    assert!(!state.is_empty(), "{path}");
    let key = &f.inputs[state[0].state.as_ref().unwrap().key as usize].name;
    let mut store = lossc::StateStore::new();
    let mut rng = Rng::new(41);
    // One batch through the host store and the device tables alike.
    let mut batch = |ids: Vec<i64>, store: &mut lossc::StateStore| {
        // (A third size for a hyperparameter's axis of a state input, which is dropped.)
        let mut host = random_inputs(&f, &[ids.len() as i64, 5, 2], &mut rng);
        for s in &state {
            host.remove(&s.name);
        }
        host.insert(key.clone(), Tensor::labels(vec![ids.len()], ids.clone()));
        let h = hypers(&f);
        let want = ki.eval_stateful(&host, &h, store).unwrap();
        let device: BTreeMap<String, lossc::DeviceTensor> = host
            .iter()
            .map(|(k, t)| (k.clone(), kc.to_device(k, t).unwrap()))
            .collect();
        let got = kc.eval_device_stateful(&device, &h, &BTreeMap::new(), 0).unwrap();
        assert_agree(&format!("{path} ids {ids:?}"), &got, &want);
    };
    for ids in [vec![3i64, 0, 7, 2], vec![7, 1, 3, 3], vec![9, 0, 2, 5]] {
        batch(ids, &mut store);
    }
    for s in &state {
        // By id, as the host store gives it (ids never seen at their initial value).
        let (table, host) = (kc.device_state(&s.name).unwrap(), store.table(&s.name).unwrap());
        assert_eq!(table.len(), host.len(), "{path} {}", s.name);
        for (k, (x, y)) in table.iter().zip(&host).enumerate() {
            assert!(close(*x, *y), "{path} {}[{k}]: {x} vs {y}", s.name);
        }
    }
    // Device tables are sparse (issue 28): an id just under the limit costs one row, not a dense table of
    // 2^28 rows, and the rows equal the host store's.
    let far = lossc::state::MAX_STATE_ROWS - 1;
    batch(vec![far, 0], &mut store);
    for s in &state {
        let rows = kc.device_state_rows(&s.name).unwrap();
        let host = &store.rows(&s.name).unwrap().rows;
        assert_eq!(
            rows.keys().collect::<Vec<_>>(),
            host.keys().collect::<Vec<_>>(),
            "{path} {}",
            s.name
        );
        assert!(
            rows.len() <= 10 && rows.contains_key(&far),
            "{path}: {} rows",
            rows.len()
        );
        for (id, row) in &rows {
            assert_eq!(row.len(), host[id].len(), "{path} {}[{id}]", s.name);
            for (v, h) in row.iter().zip(&host[id]) {
                assert!(close(*v, *h), "{path} {}[{id}]: {v} vs {h}", s.name);
            }
        }
    }
    // The state is not passed; ids beyond the table limit are typed errors.
    let mut host = random_inputs(&f, &[2, 5, 2], &mut rng);
    host.insert(key.clone(), Tensor::labels(vec![2], vec![1, -1]));
    let mut device: BTreeMap<String, lossc::DeviceTensor> = host
        .iter()
        .map(|(k, t)| (k.clone(), kc.to_device(k, t).unwrap()))
        .collect();
    let given = kc
        .eval_device_stateful(&device, &BTreeMap::new(), &BTreeMap::new(), 0)
        .unwrap_err();
    assert!(matches!(given, CallError::StateGiven { .. }), "{given:?}");
    for s in &state {
        device.remove(&s.name);
    }
    let bad = kc
        .eval_device_stateful(&device, &BTreeMap::new(), &BTreeMap::new(), 0)
        .unwrap_err();
    assert!(matches!(bad, CallError::LabelOutOfRange { value: -1, .. }), "{bad:?}");
}

/// A low-temperature loss's gradients at float32 accuracy on the device too (the logsumexp's rounding
/// residual, loops::Residual, in both its two-pass and its online form).
#[test]
fn low_temperature_gradients_are_float32_accurate() {
    let inputs = common::low_temperature_inputs(16, 100, 5);
    let online = common::LOW_TEMPERATURE.replace("z[i, v] / tau[i])", "z[i, v] / tau[i] + 0.0 * tanh(z[i, v]))");
    for src in [common::LOW_TEMPERATURE, online.as_str()] {
        let device = cuda(EmuLoader::default()).compile_source("tce.lx", src).unwrap();
        let got = device.kernel(None).unwrap().eval(&inputs).unwrap();
        let want = lossc::api::eval_grad(device.program.loss(None).unwrap(), &inputs, &BTreeMap::new()).unwrap();
        common::assert_float32_gradients(&got, &want, 1e-3);
    }
}

/// Pairwise losses with `stream_pairwise`: the streamed program's kernels keep the rows of each pairwise
/// copy in slots (one per running block or warp, reused as the grid strides over the rows), agree with
/// the interpreter over short rows (a warp each) and long ones (a block each, 3 blocks for 70 rows), and
/// allocate device memory linear in the batch.
#[test]
fn streamed_pairwise_losses_keep_rows_in_slots() {
    use lossc::backend::cuda::{generate, generate_streaming, host::device_bytes};
    let mut rng = Rng::new(13);
    let nt_xent = std::fs::read_to_string(emu::root().join("benches/nt_xent.lx")).unwrap();
    let sources = [
        ("bench nt_xent", nt_xent),
        ("nt_xent", "use std::contrastive::nt_xent".to_string()),
        ("sogclr", "use std::contrastive::sogclr".to_string()),
        (
            "multi_similarity",
            "use std::metric_learning::multi_similarity".to_string(),
        ),
        ("triplet_all", "use std::metric_learning::triplet_all".to_string()),
        ("cauchy_schwarz", "use std::divergence::cauchy_schwarz".to_string()),
    ];
    for (what, source) in sources {
        let kc = cuda(EmuLoader::default())
            .stream_pairwise(true)
            .compile_source(what, &source)
            .unwrap()
            .kernel(None)
            .unwrap();
        let ki = Compiler::new()
            .backend(Backend::Interp)
            .compile_source(what, &source)
            .unwrap()
            .kernel(None)
            .unwrap();
        let f = ki.function();
        for batch in [9, 70] {
            let s: Vec<i64> = f.dims.iter().map(|d| if d.name == "D" { 3 } else { batch }).collect();
            let inputs = random_inputs(f, &s, &mut rng);
            assert_agree(
                &format!("{what} {batch}"),
                &kc.eval(&inputs).unwrap(),
                &ki.eval(&inputs).unwrap(),
            );
        }
        // What the kernel allocates on the device: less than the whole program's at 70 rows over 3 blocks.
        let whole = cuda(EmuLoader::default())
            .compile_source(what, &source)
            .unwrap()
            .kernel(None)
            .unwrap();
        let s: Vec<i64> = f.dims.iter().map(|d| if d.name == "D" { 3 } else { 70 }).collect();
        let (streamed_bytes, whole_bytes) = (kc.device_bytes(&s).unwrap(), whole.device_bytes(&s).unwrap());
        assert!(
            streamed_bytes * 4 < whole_bytes,
            "{what}: {streamed_bytes} vs {whole_bytes} device bytes"
        );
        // Device memory at B = 4,096 and 8,192 (D = 128) with 132 blocks a grid: linear when streamed.
        let g = lossc::api::gradient(f).unwrap();
        let stream = lossc::opt::stream::pairwise_at_any_size(&g);
        let streamed = generate_streaming(&lossc::opt::stream::rows(&g, &stream).unwrap());
        assert!(streamed.slotted.contains(&true), "{what}: nothing slotted");
        let own = generate(&g);
        let at = |b: i64| -> Vec<i64> { f.dims.iter().map(|d| if d.name == "D" { 128 } else { b }).collect() };
        let bytes = |p: &lossc::backend::cuda::Program, b: i64| device_bytes(p, &at(b), 132) as f64;
        assert!(
            bytes(&own, 8192) >= 3.5 * bytes(&own, 4096),
            "{what}: own memory not quadratic"
        );
        assert!(
            bytes(&streamed, 8192) <= 2.1 * bytes(&streamed, 4096),
            "{what}: streamed memory not linear"
        );
    }
}

/// A constant table is a `__constant__` array whose reads are clamped to its ends: read beyond them it
/// gives its nearest entry, as the interpreter and the JIT do (`common::tables_read_beyond_their_ends`).
#[test]
fn tables_read_beyond_their_ends_take_the_nearest_entry() {
    let (f, inputs, loss, grad) = common::tables_read_beyond_their_ends();
    let kernel = lossc::Kernel::build(&f, &cuda(EmuLoader::default())).unwrap();
    let source = lossc::backend::cuda::generate(kernel.function()).source;
    assert!(source.contains("__constant__ long long lx_table"), "{source}");
    let e = kernel.eval(&inputs).unwrap();
    common::assert_loss_and_grad("cuda", &e, loss, &grad);
}

//! NVRTC (no GPU needed): every generated kernel of the examples, test programs, benches and stdlib
//! (and of their streamed programs, where they have tensors over pairs) compiles for sm_90 (the H100), and the workloads W1–W8 of BENCHMARKS.md spill no register (ptxas's
//! report, `--ptxas-options=-v`). Needs libnvrtc on the library path (`.ci/run` installs the
//! `nvidia-cuda-nvrtc` wheel into a cache folder); without it the test fails under CI and says how to get it.
#![cfg(feature = "cuda")]

use std::path::Path;

use lossc::backend::cuda::{CudaError, driver, generate, generate_streaming};

/// W1–W8: the files of BENCHMARKS.md's workloads.
const WORKLOADS: [&str; 8] = [
    "examples/cross_entropy.lx",
    "examples/ldr_kl.lx",
    "examples/anyloss_f1.lx",
    "benches/nt_xent.lx",
    "examples/multi_similarity.lx",
    "benches/sort_bce16.lx",
    "examples/z_loss.lx",
    "examples/kl_dro.lx",
];

/// (kernel, registers, spill store bytes) for every kernel ptxas reports on.
fn ptxas_report(log: &str) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    let mut kernel = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            kernel = rest.split('\'').next().unwrap_or("").to_string();
        }
        // "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
        if let Some(part) = line.split(", ").find(|p| p.ends_with("bytes spill stores")) {
            let spill = part
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(u32::MAX);
            out.push((kernel.clone(), 0, spill));
        }
        if let Some(rest) = line.split("Used ").nth(1)
            && let Some(last) = out.last_mut()
        {
            last.1 = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    out
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    for dir in ["examples", "tests/in", "benches"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for p in files.into_iter().filter(|p| p.extension().is_some_and(|x| x == "lx")) {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            v.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
    for e in lossc::stdlib::entries() {
        v.push((e.path.clone(), format!("use {}\n", e.path)));
    }
    // Half-precision storage (bf16 / f16 inputs and gradients).
    v.push((
        "half.lx".into(),
        "loss ce(s: bf16[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }\n\
         loss sq(x: f16[N], w: f32[N]) { sum[i] w[i] * x[i] ^ 2 }\n"
            .into(),
    ));
    v
}

#[test]
fn every_generated_kernel_compiles_for_sm_90_and_the_workloads_do_not_spill() {
    let mut failures = Vec::new();
    let mut compiled = 0;
    for (name, src) in sources() {
        let program = lossc::Program::from_source(&name, &src).unwrap();
        for f in &program.module.functions {
            let g = lossc::api::gradient(f).unwrap();
            // With pairwise tensors streamed too (`stream_pairwise`), where the loss has some (and streaming
            // them does not make too large a program: then the kernel runs unstreamed).
            let stream = lossc::opt::stream::pairwise_at_any_size(&g);
            let streamed = (stream.contains(&true))
                .then(|| lossc::opt::stream::rows(&g, &stream).ok())
                .flatten()
                .map(|h| (format!("{name} (streamed)"), generate_streaming(&h)));
            for (name, cuda) in [(name.clone(), generate(&g))].into_iter().chain(streamed) {
                match driver::nvrtc_compile(&cuda.source, "sm_90") {
                    Ok(cubin) => {
                        compiled += 1;
                        assert!(!cubin.image.is_empty());
                        let report = ptxas_report(&cubin.log);
                        assert_eq!(
                            report.len(),
                            cuda.kernels.len(),
                            "{name} {}: ptxas reports\n{}",
                            f.name,
                            cubin.log
                        );
                        if WORKLOADS.contains(&name.as_str()) {
                            for (kernel, registers, spill) in &report {
                                eprintln!("{name} {kernel}: {registers} registers, {spill} bytes spill stores");
                                if *spill != 0 {
                                    failures.push(format!("{name} {kernel}: {spill} bytes spill stores"));
                                }
                            }
                        }
                    }
                    Err(CudaError::Unavailable(why)) => {
                        assert!(std::env::var_os("CI").is_none(), "CI must have NVRTC: {why}");
                        eprintln!("skipped: {why}");
                        return;
                    }
                    Err(e) => failures.push(format!("{name} {}: {e}", f.name)),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{compiled} programs compiled");
}

#[test]
fn compiled_programs_are_cached_by_source_and_architecture() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nvrtc_cache");
    let _ = std::fs::remove_dir_all(&dir);
    // SAFETY (of the test): no other test of this binary reads LOSSC_CACHE_DIR.
    unsafe { std::env::set_var("LOSSC_CACHE_DIR", &dir) };
    let src = "extern \"C\" __global__ void k(float* x) { x[threadIdx.x] += 1.0f; }";
    match driver::cached_cubin(src, "sm_90") {
        Err(CudaError::Unavailable(why)) => {
            assert!(std::env::var_os("CI").is_none(), "CI must have NVRTC: {why}");
            return;
        }
        other => {
            let first = other.unwrap();
            let files: Vec<_> = std::fs::read_dir(dir.join("cuda")).unwrap().collect();
            assert_eq!(files.len(), 1, "one cached CUBIN");
            assert_eq!(driver::cached_cubin(src, "sm_90").unwrap(), first);
        }
    }
    // Source NVRTC rejects is a compile error with its log, not a panic.
    let bad = driver::nvrtc_compile("extern \"C\" __global__ void k( { }", "sm_90").unwrap_err();
    assert!(
        matches!(bad, CudaError::Compile(ref log) if log.contains("error")),
        "{bad}"
    );
}

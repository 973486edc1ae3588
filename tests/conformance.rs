//! Conformance of the stdlib with the reference implementations (torch, libauc, pytorch-metric-learning,
//! diffsort, or a re-implementation of a paper's code where no package has it): tests/fixtures/*.json,
//! written by tools/make_fixtures.py. Every case runs through the interpreter and the JIT; stateful cases
//! make several calls through one StateStore, so each call sees the state the previous one wrote (a call
//! may set hyperparameters of its own).

use std::collections::BTreeMap;

#[path = "cuda_emu/mod.rs"]
mod emu;

use lossc::{Backend, Compiler, StateStore, Tensor};
use serde_json::Value;

/// Tolerance per fixture family and backend: |got - want| <= atol + rtol |want|, for the loss, every
/// gradient element and every output element. The interpreter computes in f64 like the references; the
/// JIT computes elementwise in f32 with f64 accumulators.
fn tolerance(family: &str, backend: Backend) -> (f64, f64) {
    match (backend, family) {
        (Backend::Interp, _) => (1e-7, 1e-9),
        // Sorting networks compound f32 rounding over every layer; contrastive losses divide by small u.
        (Backend::Jit, "sorting" | "contrastive") => (2e-4, 2e-5),
        (Backend::Jit, _) => (1e-4, 1e-5),
        // The generated CUDA kernels follow the JIT's numerics (f32, f64 accumulators).
        (Backend::Cuda, _) => tolerance(family, Backend::Jit),
    }
}

fn tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"].as_array().unwrap();
    match v["dtype"].as_str().unwrap() {
        "i64" => Tensor::labels(shape, data.iter().map(|x| x.as_i64().unwrap()).collect()),
        _ => Tensor::float(shape, data.iter().map(|x| x.as_f64().unwrap()).collect()),
    }
}

fn close(what: &str, got: &[f64], want: &[f64], (rtol, atol): (f64, f64)) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, expected {}", got.len(), want.len()));
    }
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        // False for NaN; an infinity agrees only with itself (its relative bound is infinite).
        let within = g == w || (g.is_finite() && w.is_finite() && (g - w).abs() <= atol + rtol * w.abs());
        if !within {
            return Err(format!("{what}[{k}]: got {g}, expected {w}"));
        }
    }
    Ok(())
}

fn run_case(family: &str, case: &Value, backend: Backend) -> Result<(), String> {
    let loss = case["loss"].as_str().unwrap();
    let (source, name) = match case.get("source") {
        Some(s) => (s.as_str().unwrap().to_string(), loss.to_string()),
        None => (format!("use {loss}\n"), loss.rsplit("::").next().unwrap().to_string()),
    };
    let module = Compiler::new()
        .backend(backend)
        .cuda_loader(emu::loader())
        .threads(2)
        .compile_source("fixture.lx", &source)
        .map_err(|d| format!("does not compile: {d:?}"))?;
    let kernel = module.kernel(Some(&name)).map_err(|d| format!("no kernel: {d:?}"))?;
    let stateful = kernel.function().inputs.iter().any(|i| i.state.is_some());
    let hypers: BTreeMap<String, f64> = case["hypers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    let tol = tolerance(family, backend);
    let mut store = StateStore::new();
    for (c, call) in case["calls"].as_array().unwrap().iter().enumerate() {
        let inputs: BTreeMap<String, Tensor> = call["inputs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), tensor(v)))
            .collect();
        // A call may set hyperparameters of its own (TempNet's epoch), over the case's.
        let mut hypers = hypers.clone();
        for (k, v) in call.get("hypers").and_then(Value::as_object).into_iter().flatten() {
            hypers.insert(k.clone(), v.as_f64().unwrap());
        }
        let e = if stateful {
            kernel.eval_stateful(&inputs, &hypers, &mut store)
        } else {
            kernel.eval_with(&inputs, &hypers)
        }
        .map_err(|e| format!("call {c}: {e}"))?;
        close(
            &format!("call {c} loss"),
            &[e.loss],
            &[call["loss"].as_f64().unwrap()],
            tol,
        )?;
        for (g, want) in call["grads"].as_object().unwrap() {
            let Some((_, got)) = e.grads.iter().find(|(n, _)| n == g) else {
                return Err(format!("call {c}: no gradient for `{g}`"));
            };
            close(
                &format!("call {c} grad_{g}"),
                &got.to_f64(),
                &tensor(want).to_f64(),
                tol,
            )?;
        }
        for (o, want) in call["outputs"].as_object().unwrap() {
            let Some((_, got)) = e.outputs.iter().find(|(n, _)| n == o) else {
                return Err(format!("call {c}: no output `{o}`"));
            };
            close(
                &format!("call {c} output {o}"),
                &got.to_f64(),
                &tensor(want).to_f64(),
                tol,
            )?;
        }
    }
    Ok(())
}

fn fixtures() -> Vec<(String, Value)> {
    let dir = emu::root().join("tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (v["family"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn check_all(backend: Backend) {
    let mut failures = Vec::new();
    let mut count = 0;
    for (family, file) in fixtures() {
        for case in file["cases"].as_array().unwrap() {
            count += 1;
            if let Err(e) = run_case(&family, case, backend) {
                failures.push(format!("{family}/{}: {e}", case["name"].as_str().unwrap()));
            }
        }
    }
    assert!(count >= 30, "only {count} fixture cases found");
    assert!(
        failures.is_empty(),
        "{} of {count} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn stdlib_matches_references_in_the_interpreter() {
    check_all(Backend::Interp);
}

#[cfg(feature = "jit")]
#[test]
fn stdlib_matches_references_in_the_jit() {
    check_all(Backend::Jit);
}

/// The generated CUDA kernels, in the host emulation (tests/cuda_emu/; on a GPU with LOSSC_TEST_GPU=1).
#[test]
fn stdlib_matches_references_in_the_cuda_kernels() {
    check_all(Backend::Cuda);
}

/// Every stdlib loss has a fixture case.
#[test]
fn fixtures_cover_every_stdlib_loss() {
    let covered: Vec<String> = fixtures()
        .iter()
        .flat_map(|(_, f)| {
            f["cases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["loss"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for e in lossc::stdlib::entries() {
        assert!(covered.contains(&e.path), "no fixture for {}", e.path);
    }
}

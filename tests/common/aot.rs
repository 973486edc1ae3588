//! Ahead-of-time libraries from Rust, for the tests and the benchmarks: one linked and loaded with
//! dlopen, and a loss called through its generic entry point (`lossc_<loss>_call`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use lossc::Tensor;
use lossc::backend::aot::{self, Output};
use lossc::backend::loops::Plan;
use lossc::data::Data;
use lossc::ir::{Function, Role};

/// `lossc_<loss>_call`.
pub type Call = unsafe extern "C" fn(
    *const *const c_void,
    *const *const i64,
    *const f64,
    *const *mut f32,
    c_int,
    *mut c_char,
    usize,
) -> c_int;

/// A fresh directory for libraries.
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc-aot-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A library of these optimized functions, linked in `dir` and loaded.
pub fn load(functions: &[&Function], dir: &Path, stem: &str) -> libloading::Library {
    let library = aot::library(functions, stem).unwrap();
    let path = dir.join(format!("lib{stem}.so"));
    aot::link(&library, &path, Output::Shared).unwrap();
    // SAFETY: the library runs no code when loaded (no constructors).
    unsafe { libloading::Library::new(&path) }.unwrap()
}

/// The results of a call by role and name, or its status and message.
pub type Results = Result<Vec<(Role, String, Vec<f32>)>, (i32, String)>;

/// A call of one loss, its arguments laid out as the generic entry point takes them (f32 and i64
/// inputs, shapes, a buffer per result), so that it can be made many times.
pub struct Prepared {
    _floats: Vec<Vec<f32>>,
    _labels: Vec<Vec<i64>>,
    pointers: Vec<*const c_void>,
    _shapes: Vec<Vec<i64>>,
    shape_pointers: Vec<*const i64>,
    /// Where the results go, in declaration order (none where the call is bad: it writes none).
    pub results: Vec<(Role, String, Vec<f32>)>,
    result_pointers: Vec<*mut f32>,
    message: Vec<c_char>,
}

impl Prepared {
    /// The arguments of a call of `f` on `inputs`.
    pub fn new(f: &Function, inputs: &BTreeMap<String, Tensor>) -> Prepared {
        let ordered: Vec<&Tensor> = f.inputs.iter().map(|i| &inputs[&i.name]).collect();
        let floats: Vec<Vec<f32>> = ordered
            .iter()
            .map(|t| match &t.data {
                Data::Float(v) => v.iter().map(|x| *x as f32).collect(),
                Data::Int(_) => Vec::new(),
            })
            .collect();
        let labels: Vec<Vec<i64>> = ordered
            .iter()
            .map(|t| match &t.data {
                Data::Int(v) => v.clone(),
                Data::Float(_) => Vec::new(),
            })
            .collect();
        let pointers = (ordered.iter().enumerate())
            .map(|(k, t)| match t.data {
                Data::Float(_) => floats[k].as_ptr() as *const c_void,
                Data::Int(_) => labels[k].as_ptr() as *const c_void,
            })
            .collect();
        let shapes: Vec<Vec<i64>> = ordered
            .iter()
            .map(|t| t.shape.iter().map(|d| *d as i64).collect())
            .collect();
        let shape_pointers = shapes.iter().map(|s| s.as_ptr()).collect();
        let sizes = lossc::call::bind(f, inputs, &BTreeMap::new()).map(|b| b.sizes);
        let plan = Plan::new(f);
        let mut results: Vec<(Role, String, Vec<f32>)> = plan
            .results(f)
            .filter_map(|r| Some((r, sizes.as_ref().ok()?)))
            .map(|((role, name, buffer), sizes)| {
                let n = lossc::ir::Dim::elements(&plan.buffers[buffer].shape, sizes) as usize;
                (role, name.to_string(), vec![f32::NAN; n.max(1)])
            })
            .collect();
        let result_pointers = results.iter_mut().map(|(_, _, v)| v.as_mut_ptr()).collect();
        Prepared {
            _floats: floats,
            _labels: labels,
            pointers,
            _shapes: shapes,
            shape_pointers,
            results,
            result_pointers,
            message: vec![0; 512],
        }
    }

    /// Calls the entry point on `threads` threads (hyperparameters at their defaults).
    pub fn call(&mut self, entry: Call, threads: i32) -> Result<(), (i32, String)> {
        let results = match self.results.is_empty() {
            true => std::ptr::null(),
            false => self.result_pointers.as_ptr(),
        };
        // SAFETY: the pointers are to live buffers of the shapes the call's sizes give, in declaration
        // order, as the entry point reads and writes them.
        let status = unsafe {
            entry(
                self.pointers.as_ptr(),
                self.shape_pointers.as_ptr(),
                std::ptr::null(),
                results,
                threads,
                self.message.as_mut_ptr(),
                self.message.len(),
            )
        };
        if status == 0 {
            return Ok(());
        }
        // SAFETY: the library wrote a NUL-terminated message into the buffer.
        let text = unsafe { CStr::from_ptr(self.message.as_ptr()) };
        Err((status, text.to_string_lossy().into_owned()))
    }
}

/// The generic entry point of loss `f` in a loaded library.
pub fn entry(lib: &libloading::Library, f: &Function) -> Call {
    let name = format!("lossc_{}_call", f.name);
    // SAFETY: every loss of a library has this entry point with the `Call` signature.
    *unsafe { lib.get::<Call>(name.as_bytes()) }.unwrap()
}

/// Calls loss `f` of a loaded library on `inputs` with default hyperparameters.
pub fn call(lib: &libloading::Library, f: &Function, inputs: &BTreeMap<String, Tensor>, threads: i32) -> Results {
    let mut prepared = Prepared::new(f, inputs);
    prepared.call(entry(lib, f), threads)?;
    Ok(prepared.results)
}

//! `lossc._lossc`: the native module under the `lossc` Python package. It compiles lx source with the
//! same library the CLI uses and runs kernels over memory the Python side owns (NumPy arrays, PyTorch CPU
//! tensors, CUDA tensors), given as arrays (whose address it reads: [`address`]) or addresses, with shapes
//! and dtypes, by `lossc/_core.py`, which keeps them alive and contiguous for the call. Every failure is a Python exception of `lossc`'s hierarchy;
//! a Rust panic is caught and raised as `lossc.InternalError`.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use lossc::data::{DType, Data, Tensor};
use lossc::embed::{Input, View};
use lossc::ir::{ElemTy, Function, Role, Scalar};
use lossc::{Backend, Compiler, Kernel, StateStore, Workspace};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

create_exception!(lossc, Error, PyException, "Every error lossc raises.");
create_exception!(
    lossc,
    CompileError,
    Error,
    "The source does not compile; `.diagnostics` lists each diagnostic."
);
create_exception!(lossc, CallError, Error, "A bad call of a compiled loss.");
create_exception!(
    lossc,
    InputError,
    CallError,
    "A missing, unknown or repeated input, or one of the wrong dtype."
);
create_exception!(
    lossc,
    ShapeError,
    CallError,
    "An input's shape disagrees with the signature or another input."
);
create_exception!(
    lossc,
    LabelError,
    CallError,
    "A label or data-dependent subscript out of its range."
);
create_exception!(
    lossc,
    HyperparameterError,
    CallError,
    "An unknown, fixed or non-integer hyperparameter."
);
create_exception!(lossc, DeviceError, Error, "The CUDA device could not run the kernel.");
create_exception!(
    lossc,
    InternalError,
    Error,
    "A bug in lossc (never the input's fault); please report it."
);

/// The Python exception of a call error, with the CLI's message.
fn call_error(e: lossc::CallError) -> PyErr {
    use lossc::call::CallErrorKind;
    let message = e.to_string();
    match e.kind() {
        CallErrorKind::Input => InputError::new_err(message),
        CallErrorKind::Shape => ShapeError::new_err(message),
        CallErrorKind::Label => LabelError::new_err(message),
        CallErrorKind::Hyper => HyperparameterError::new_err(message),
        CallErrorKind::Memory => pyo3::exceptions::PyMemoryError::new_err(message),
        CallErrorKind::Device => DeviceError::new_err(message),
        CallErrorKind::Internal => InternalError::new_err(message),
    }
}

fn compile_error(py: Python<'_>, diags: &lossc::Diags) -> PyErr {
    let err = CompileError::new_err(diags.render().trim_end().to_string());
    let list: Vec<(String, String, Option<usize>, Option<usize>)> = diags
        .0
        .iter()
        .map(|d| {
            let at = d.line_column();
            (
                d.code.as_str().to_string(),
                d.message.clone(),
                at.map(|a| a.0),
                at.map(|a| a.1),
            )
        })
        .collect();
    if let Err(e) = err.value(py).setattr("diagnostics", list) {
        return e;
    }
    err
}

/// Runs `work` without the GIL, turning a panic into `InternalError`.
fn guarded<T: Send>(py: Python<'_>, work: impl FnOnce() -> Result<T, PyErrLater> + Send) -> PyResult<T> {
    let outcome = py.detach(|| catch_unwind(AssertUnwindSafe(work)));
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(PyErrLater::Call(e))) => Err(call_error(e)),
        Ok(Err(PyErrLater::Input(m))) => Err(InputError::new_err(m)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(InternalError::new_err(format!("lossc panicked (a bug): {what}")))
        }
    }
}

/// An error made without the GIL, raised once it is held again.
enum PyErrLater {
    Call(lossc::CallError),
    Input(String),
}

impl From<lossc::CallError> for PyErrLater {
    fn from(e: lossc::CallError) -> PyErrLater {
        PyErrLater::Call(e)
    }
}

fn backend(name: &str) -> PyResult<Backend> {
    match name {
        "jit" => Ok(Backend::Jit),
        "interp" => Ok(Backend::Interp),
        "cuda" => Ok(Backend::Cuda),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "unknown backend `{other}` (jit, interp or cuda)"
        ))),
    }
}

/// A checked program.
#[pyclass(module = "lossc._lossc", frozen)]
struct Module {
    module: lossc::kernel::Module,
}

#[pymethods]
impl Module {
    /// Names of the losses the source defines or imports.
    fn losses(&self) -> Vec<String> {
        self.module.losses().into_iter().map(String::from).collect()
    }

    /// Builds the kernel of one loss (the only one when `name` is None) for `backend` on `threads` threads;
    /// with `stream`, its tensors over pairs are streamed at any size (`Compiler::stream_pairwise`).
    #[pyo3(signature = (name, backend_name, threads, stream = false))]
    fn kernel(
        &self,
        py: Python<'_>,
        name: Option<&str>,
        backend_name: &str,
        threads: usize,
        stream: bool,
    ) -> PyResult<Loss> {
        let b = backend(backend_name)?;
        let compiler = Compiler::new().backend(b).threads(threads).stream_pairwise(stream);
        let f = self
            .module
            .program
            .loss(name)
            .map_err(|d| compile_error(py, &lossc::Diags(vec![d.with_source(&self.module.program.sources)])))?
            .clone();
        let built = py.detach(|| catch_unwind(AssertUnwindSafe(|| Kernel::build(&f, &compiler))));
        let kernel = match built {
            Ok(Ok(k)) => k,
            Ok(Err(d)) if d.code == lossc::diag::Code::Backend => {
                return Err(DeviceError::new_err(format!("{}: {}", d.code.as_str(), d.message)));
            }
            Ok(Err(d)) => {
                let d = d.with_source(&self.module.program.sources);
                return Err(compile_error(py, &lossc::Diags(vec![d])));
            }
            Err(_) => {
                return Err(InternalError::new_err(
                    "lossc panicked while compiling the kernel (a bug)",
                ));
            }
        };
        let gradient = lossc::api::simplified_gradient(&f)
            .map(|g| lossc::ir::print::readable(&g))
            .unwrap_or_default();
        Ok(Loss {
            workspace: Mutex::new(kernel.workspace()),
            kernel,
            store: Mutex::new(StateStore::new()),
            source: f,
            gradient,
        })
    }
}

/// Compiles lx source text; `name` is the file name diagnostics show.
#[pyfunction]
fn compile(py: Python<'_>, text: &str, name: &str) -> PyResult<Module> {
    let compiled = py.detach(|| catch_unwind(AssertUnwindSafe(|| Compiler::new().compile_source(name, text))));
    match compiled {
        Ok(Ok(module)) => Ok(Module { module }),
        Ok(Err(diags)) => Err(compile_error(py, &diags)),
        Err(_) => Err(InternalError::new_err("lossc panicked while compiling (a bug)")),
    }
}

/// Every stdlib loss: (path, signature, documentation).
#[pyfunction]
fn stdlib() -> Vec<(String, String, String)> {
    lossc::stdlib::entries()
        .into_iter()
        .map(|e| (e.path, e.signature, e.doc))
        .collect()
}

/// One input of a call as the Python side gives it: name, address, shape and dtype
/// ("float32", "int64" or "int32"), C-contiguous and aligned.
type RawInput = (String, usize, Vec<usize>, String);

/// A raw input as Python passes it: the address as an int (a tensor's `data_ptr()`, a device pointer) or
/// the NumPy array itself, whose address [`address`] reads.
type PyRawInput<'py> = (String, Bound<'py, PyAny>, Vec<usize>, String);

/// NumPy's `__array_struct__` (the array interface's C struct, `PyArrayInterface`).
#[repr(C)]
struct ArrayInterface {
    two: std::ffi::c_int,
    nd: std::ffi::c_int,
    typekind: std::ffi::c_char,
    itemsize: std::ffi::c_int,
    flags: std::ffi::c_int,
    shape: *mut isize,
    strides: *mut isize,
    data: *mut std::ffi::c_void,
    descr: *mut pyo3::ffi::PyObject,
}

/// The address of an input or gradient buffer: an int as it is, or a NumPy array's data pointer read from
/// its `__array_struct__` capsule (a tenth of the cost of `ndarray.ctypes.data`, which built a ctypes
/// object per array and was most of a small call's overhead).
fn address(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Ok(a) = obj.extract::<usize>() {
        return Ok(a);
    }
    let capsule = obj.getattr("__array_struct__")?;
    // SAFETY: `__array_struct__` is a capsule holding a `PyArrayInterface` (NumPy's array interface),
    // valid while the capsule is; only its version tag and data pointer are read, while it is alive.
    let data = unsafe {
        let p = pyo3::ffi::PyCapsule_GetPointer(capsule.as_ptr(), std::ptr::null()) as *const ArrayInterface;
        if p.is_null() || (*p).two != 2 {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "not an array (no array interface)",
            ));
        }
        (*p).data as usize
    };
    Ok(data)
}

/// Raw inputs with their addresses read ([`address`]).
fn resolve(inputs: Vec<PyRawInput<'_>>) -> PyResult<Vec<RawInput>> {
    (inputs.into_iter())
        .map(|(name, obj, shape, dtype)| Ok((name, address(&obj)?, shape, dtype)))
        .collect()
}

/// One kernel, the workspace its calls reuse and the state store of a stateful loss.
#[pyclass(module = "lossc._lossc", frozen)]
struct Loss {
    kernel: Kernel,
    workspace: Mutex<Workspace>,
    store: Mutex<StateStore>,
    /// The loss as declared (before differentiation).
    source: Function,
    gradient: String,
}

fn elem_name(e: ElemTy) -> &'static str {
    e.as_str()
}

/// The views of raw inputs.
///
/// # Safety
/// Each address holds the product of its shape's elements of its dtype, aligned, alive and unchanged for
/// the views' lifetime (the Python side keeps the arrays for the call).
unsafe fn views(raw: &[RawInput]) -> Result<Vec<Input<'_>>, PyErrLater> {
    raw.iter()
        .map(|(name, addr, shape, dtype)| {
            let n: usize = shape
                .iter()
                .try_fold(1usize, |a, d| a.checked_mul(*d))
                .ok_or_else(|| PyErrLater::Input(format!("input `{name}`: shape {shape:?} is too large")))?;
            let data = match (dtype.as_str(), n) {
                ("float32", 0) => View::F32(&[]),
                ("int64", 0) => View::I64(&[]),
                ("int32", 0) => View::I32(&[]),
                // SAFETY: the caller's contract above.
                ("float32", _) => View::F32(unsafe { std::slice::from_raw_parts(*addr as *const f32, n) }),
                ("int64", _) => View::I64(unsafe { std::slice::from_raw_parts(*addr as *const i64, n) }),
                ("int32", _) => View::I32(unsafe { std::slice::from_raw_parts(*addr as *const i32, n) }),
                (other, _) => {
                    return Err(PyErrLater::Input(format!(
                        "input `{name}` has dtype {other}; the kernel reads float32, int64 or int32"
                    )));
                }
            };
            Ok(Input { name, shape, data })
        })
        .collect()
}

/// Raw inputs as f64 `Tensor`s (float32, float64, int32 and int64).
///
/// # Safety
/// As for [`views`].
unsafe fn tensors(raw: &[RawInput]) -> Result<BTreeMap<String, Tensor>, PyErrLater> {
    let mut out = BTreeMap::new();
    for (name, addr, shape, dtype) in raw {
        let n: usize = shape
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .ok_or_else(|| PyErrLater::Input(format!("input `{name}`: shape {shape:?} is too large")))?;
        // SAFETY: the caller's contract.
        let read =
            |size: usize| unsafe { std::slice::from_raw_parts(*addr as *const u8, if n == 0 { 0 } else { n * size }) };
        let (data, dt) = match dtype.as_str() {
            "float32" => (
                Data::Float(
                    read(4)
                        .chunks_exact(4)
                        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as f64)
                        .collect(),
                ),
                DType::F32,
            ),
            "float64" => (
                Data::Float(
                    read(8)
                        .chunks_exact(8)
                        .map(|b| f64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                        .collect(),
                ),
                DType::F64,
            ),
            "int32" => (
                Data::Int(
                    read(4)
                        .chunks_exact(4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as i64)
                        .collect(),
                ),
                DType::I32,
            ),
            "int64" => (
                Data::Int(
                    read(8)
                        .chunks_exact(8)
                        .map(|b| i64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                        .collect(),
                ),
                DType::I64,
            ),
            other => {
                return Err(PyErrLater::Input(format!(
                    "input `{name}` has dtype {other}; the kernel reads float32, float64, int64 or int32"
                )));
            }
        };
        let t = Tensor {
            shape: shape.clone(),
            data,
            dtype: dt,
        };
        out.insert(name.clone(), t);
    }
    Ok(out)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// Named tensors as (name, shape, native-endian bytes).
type Tensors = Vec<(String, Vec<usize>, Vec<u8>)>;

type Results = (f32, Tensors);

#[pymethods]
impl Loss {
    /// The loss's name.
    #[getter]
    fn name(&self) -> String {
        self.source.name.clone()
    }

    /// The inputs of a call: (name, element type, shape as dimension names, nograd, label bound, state key,
    /// is the cotangent).
    #[allow(clippy::type_complexity)]
    fn inputs(&self) -> Vec<(String, String, Vec<String>, bool, Option<String>, Option<String>, bool)> {
        let f = self.kernel.function();
        f.inputs
            .iter()
            .enumerate()
            .filter(|(_, i)| i.given())
            .map(|(k, i)| {
                (
                    i.name.clone(),
                    elem_name(i.elem).to_string(),
                    i.shape.iter().map(|d| f.show_dim(d)).collect(),
                    i.nograd,
                    i.bound.as_ref().map(|b| f.show_dim(b)),
                    i.state.as_ref().map(|s| f.inputs[s.key as usize].name.clone()),
                    f.cotangent == Some(k as u32),
                )
            })
            .collect()
    }

    /// The hyperparameters: (name, default, is an integer).
    fn hyperparameters(&self) -> Vec<(String, f64, bool)> {
        (self.source.hypers.iter())
            .map(|h| (h.name.clone(), h.default, h.scalar == Scalar::Int))
            .collect()
    }

    /// The extra outputs: (name, shape as dimension expressions, the state input it updates).
    fn outputs(&self) -> Vec<(String, Vec<String>)> {
        let f = self.kernel.function();
        (f.tensors.iter().filter(|t| t.role == Role::Output))
            .map(|t| {
                let shape = t.indices.iter().map(|i| f.show_dim(&f.index(*i).range)).collect();
                (t.name.clone(), shape)
            })
            .collect()
    }

    /// Checks hyperparameters as a call does (unknown, fixed, not an integer).
    fn check_hypers(&self, py: Python<'_>, hypers: BTreeMap<String, f64>) -> PyResult<()> {
        guarded(py, || {
            if let Some(name) = hypers.keys().find(|k| self.kernel.is_fixed(k)) {
                return Err(lossc::CallError::HyperFixed { name: name.clone() }.into());
            }
            lossc::call::hyper_values(self.kernel.function(), &hypers)?;
            Ok(())
        })
    }

    /// The simplified gradient program (what `lossc compile --emit grad` prints).
    fn gradient_source(&self) -> String {
        self.gradient.clone()
    }

    /// Checks a call's shapes, dtypes and hyperparameters as a call does (labels are not read) and gives
    /// the shapes of the extra outputs.
    fn output_shapes(
        &self,
        py: Python<'_>,
        shapes: BTreeMap<String, (Vec<usize>, String)>,
        hypers: BTreeMap<String, f64>,
    ) -> PyResult<Vec<(String, Vec<usize>)>> {
        let f = self.kernel.function();
        let dtype = |d: &str| match d {
            "int64" => DType::I64,
            "int32" => DType::I32,
            "float64" => DType::F64,
            _ => DType::F32,
        };
        let views: BTreeMap<&str, lossc::call::InputView> = shapes
            .iter()
            .map(|(name, (shape, d))| {
                let len = shape.iter().product();
                let view = lossc::call::InputView {
                    dtype: dtype(d),
                    shape,
                    len,
                    labels: None,
                };
                (name.as_str(), view)
            })
            .collect();
        let sizes = guarded(py, || {
            if let Some(name) = hypers.keys().find(|k| self.kernel.is_fixed(k)) {
                return Err(lossc::CallError::HyperFixed { name: name.clone() }.into());
            }
            // (Extern outputs are computed, not passed.)
            Ok(lossc::call::bind_views(&f.caller_signature(), &views, &hypers)?.0)
        })?;
        Ok((f.tensors.iter().filter(|t| t.role == Role::Output))
            .map(|t| {
                let shape = t
                    .indices
                    .iter()
                    .map(|i| f.index(*i).range.eval(&sizes).max(0) as usize)
                    .collect();
                (t.name.clone(), shape)
            })
            .collect())
    }

    /// One call over caller memory: the loss, with the gradients named in `grads` (name, address of a
    /// float32 buffer of the input's size) written in place; returns (loss, [(output, shape, bytes)]).
    fn call<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<PyRawInput<'py>>,
        hypers: BTreeMap<String, f64>,
        grads: Vec<(String, Bound<'py, PyAny>, usize)>,
        threads: usize,
    ) -> PyResult<Results> {
        let inputs = resolve(inputs)?;
        let grads = (grads.into_iter())
            .map(|(name, obj, len)| Ok((name, address(&obj)?, len)))
            .collect::<PyResult<Vec<(String, usize, usize)>>>()?;
        guarded(py, || {
            // A call that finds the workspace busy (another thread's) uses a workspace of its own.
            let mut fresh;
            let mut held = self.workspace.try_lock();
            let workspace: &mut Workspace = match held.as_deref_mut() {
                Ok(w) => w,
                Err(_) => {
                    fresh = self.kernel.workspace();
                    &mut fresh
                }
            };
            workspace.set_threads(threads);
            // SAFETY: the Python side passes live, contiguous, aligned arrays of these shapes and dtypes.
            let views = unsafe { views(&inputs)? };
            let mut slots: Vec<(&str, &mut [f32])> = grads
                .iter()
                .map(|(name, addr, len)| {
                    // SAFETY: as above, float32 buffers of `len` elements that nothing else touches.
                    let slice = match len {
                        0 => &mut [][..],
                        _ => unsafe { std::slice::from_raw_parts_mut(*addr as *mut f32, *len) },
                    };
                    (name.as_str(), slice)
                })
                .collect();
            let loss = workspace.call(&views, &hypers, &mut slots)?;
            let outputs = (workspace.outputs().into_iter())
                .map(|(name, shape, values)| (name.to_string(), shape, f32_bytes(values)))
                .collect();
            Ok((loss, outputs))
        })
    }

    /// One call of a CUDA kernel on device memory ([`Kernel::eval_device`]): inputs as (name, device
    /// address, shape, dtype: "float32", "bfloat16", "float16" or "int64"), the gradients named in `grads`
    /// written into the caller's device buffers (the input's shape and float dtype), queued on `stream` (a
    /// `CUstream`; 0: the default stream). Returns the loss and the extra outputs (float64 bytes).
    fn call_device(
        &self,
        py: Python<'_>,
        inputs: Vec<RawInput>,
        hypers: BTreeMap<String, f64>,
        grads: Vec<(String, u64)>,
        stream: u64,
    ) -> PyResult<(f64, Tensors)> {
        guarded(py, || {
            let mut tensors = BTreeMap::new();
            for (name, addr, shape, dtype) in inputs {
                let dtype = match dtype.as_str() {
                    "float32" => DType::F32,
                    "bfloat16" => DType::BF16,
                    "float16" => DType::F16,
                    "int64" => DType::I64,
                    other => {
                        return Err(PyErrLater::Input(format!(
                            "input `{name}` has dtype {other}; on the device the kernel reads float32, bfloat16, float16 or int64"
                        )));
                    }
                };
                let t = lossc::DeviceTensor {
                    ptr: addr as u64,
                    shape,
                    dtype,
                };
                tensors.insert(name, t);
            }
            let grads: BTreeMap<String, u64> = grads.into_iter().collect();
            let e = self.kernel.eval_device(&tensors, &hypers, &grads, stream)?;
            let outputs = (e.outputs.iter())
                .map(|(n, t)| {
                    let v: Vec<u8> = t.to_f64().iter().flat_map(|x| x.to_ne_bytes()).collect();
                    (n.clone(), t.shape.clone(), v)
                })
                .collect();
            Ok((e.loss, outputs))
        })
    }

    /// One call through the `Tensor` API, exact in f64 where the backend is (the interpreter): float32 or
    /// float64 inputs, and for a stateful loss (`stateful`) the state gathered from the loss's store by the
    /// sample ids and the updates written back. Returns (loss, outputs, gradients), values as float64 bytes.
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<PyRawInput<'py>>,
        hypers: BTreeMap<String, f64>,
        threads: usize,
        stateful: bool,
    ) -> PyResult<(f64, Tensors, Tensors)> {
        let inputs = resolve(inputs)?;
        guarded(py, || {
            // SAFETY: as in `call`.
            let tensors = unsafe { tensors(&inputs)? };
            let kernel = self.kernel.with_threads(threads);
            let e = if stateful {
                let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
                kernel.eval_stateful(&tensors, &hypers, &mut store)?
            } else {
                kernel.eval_with(&tensors, &hypers)?
            };
            let bytes = |list: &[(String, Tensor)]| {
                list.iter()
                    .map(|(n, t)| {
                        let v: Vec<u8> = t.to_f64().iter().flat_map(|x| x.to_ne_bytes()).collect();
                        (n.clone(), t.shape.clone(), v)
                    })
                    .collect::<Vec<_>>()
            };
            Ok((e.loss, bytes(&e.outputs), bytes(&e.grads)))
        })
    }

    /// The state tables: (state input, values per row, float64 bytes of its (id, values…) rows, ids
    /// ascending).
    fn state(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let list = PyList::empty(py);
        for input in &self.source.inputs {
            if input.state.is_none() {
                continue;
            }
            if let Some(table) = store.rows(&input.name) {
                let bytes: Vec<u8> = (table.rows.iter())
                    .flat_map(|(id, row)| std::iter::once(*id as f64).chain(row.iter().copied()))
                    .flat_map(|x| x.to_ne_bytes())
                    .collect();
                list.append((input.name.clone(), table.width(), PyBytes::new(py, &bytes)))?;
            }
        }
        Ok(list.unbind())
    }

    /// Replaces the state tables (what `state` returned): per state input, the values per row and its
    /// (id, values…) rows flattened.
    fn set_state(&self, tables: Vec<(String, usize, Vec<f64>)>) -> PyResult<()> {
        let mut fresh = StateStore::new();
        for (name, width, flat) in tables {
            if !self.source.inputs.iter().any(|i| i.name == name && i.state.is_some()) {
                return Err(InputError::new_err(format!(
                    "`{}` has no state input `{name}`",
                    self.source.name
                )));
            }
            if width == 0 || flat.len() % (width + 1) != 0 {
                return Err(InputError::new_err(format!(
                    "state `{name}`: rows are (id, {width} values)"
                )));
            }
            let mut rows = BTreeMap::new();
            for row in flat.chunks_exact(width + 1) {
                let id = row[0];
                if id.fract() != 0.0 || id < 0.0 {
                    return Err(InputError::new_err(format!(
                        "state `{name}`: sample id {id} is not an integer"
                    )));
                }
                rows.insert(id as i64, row[1..].to_vec());
            }
            fresh.set_rows(&name, rows).map_err(call_error)?;
        }
        *self.store.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The thread count the kernel was built with.
    fn threads(&self) -> usize {
        self.kernel.threads()
    }
}

#[pymodule]
fn _lossc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(stdlib, m)?)?;
    m.add_class::<Module>()?;
    m.add_class::<Loss>()?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("CompileError", py.get_type::<CompileError>())?;
    m.add("CallError", py.get_type::<CallError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("LabelError", py.get_type::<LabelError>())?;
    m.add("HyperparameterError", py.get_type::<HyperparameterError>())?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}

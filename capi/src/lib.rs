//! The C API of lossc (`include/lossc.h`): compile lx source, look up a loss, call it on raw pointers and
//! shapes through the slice API ([`lossc::Workspace`]), read errors as strings, free everything.
//!
//! Every entry point checks its pointers, catches panics and reports failures as a status code plus a
//! message; nothing unwinds into C.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use lossc::embed::{Input, View};
use lossc::{CallError, Compiler, Workspace};

/// Status codes (`enum lossc_status`).
pub const LOSSC_OK: c_int = 0;
/// The source does not compile, or no such loss.
pub const LOSSC_COMPILE_ERROR: c_int = 1;
/// A missing, unknown or repeated input, or one of the wrong dtype.
pub const LOSSC_INPUT_ERROR: c_int = 2;
/// A shape disagrees with the signature or another input.
pub const LOSSC_SHAPE_ERROR: c_int = 3;
/// A label or data-dependent subscript out of range.
pub const LOSSC_LABEL_ERROR: c_int = 4;
/// An unknown or non-integer hyperparameter.
pub const LOSSC_HYPER_ERROR: c_int = 5;
/// A NULL pointer or invalid dtype code passed to the API.
pub const LOSSC_ARGUMENT_ERROR: c_int = 6;
/// A bug in lossc.
pub const LOSSC_INTERNAL_ERROR: c_int = 7;
/// The call would need more memory than the budget allows.
pub const LOSSC_MEMORY_ERROR: c_int = 8;

/// Element type codes (`enum lossc_dtype`).
pub const LOSSC_F32: c_int = 0;
/// int64 labels.
pub const LOSSC_I64: c_int = 1;
/// int32 labels.
pub const LOSSC_I32: c_int = 2;

/// A compiled module (`lossc_module`).
pub struct Module {
    module: lossc::kernel::Module,
    names: Vec<CString>,
}

/// A loss's kernel and the workspace its calls reuse (`lossc_loss`).
pub struct Loss {
    workspace: Mutex<Workspace>,
}

/// `lossc_input`.
#[repr(C)]
pub struct RawInput {
    /// The input's name.
    pub name: *const c_char,
    /// Its elements.
    pub data: *const std::ffi::c_void,
    /// A `lossc_dtype`.
    pub dtype: c_int,
    /// The number of axes.
    pub rank: usize,
    /// `rank` sizes.
    pub shape: *const usize,
}

/// `lossc_hyper`.
#[repr(C)]
pub struct RawHyper {
    /// The hyperparameter's name.
    pub name: *const c_char,
    /// Its value for the call.
    pub value: f64,
}

/// `lossc_grad`.
#[repr(C)]
pub struct RawGrad {
    /// The input whose gradient this is.
    pub name: *const c_char,
    /// `len` float32 elements.
    pub data: *mut f32,
    /// The input's size.
    pub len: usize,
}

/// A failure: a status code and its message.
struct Failure(c_int, String);

impl From<CallError> for Failure {
    fn from(e: CallError) -> Failure {
        use lossc::call::CallErrorKind;
        let code = match e.kind() {
            CallErrorKind::Input => LOSSC_INPUT_ERROR,
            CallErrorKind::Shape => LOSSC_SHAPE_ERROR,
            CallErrorKind::Label => LOSSC_LABEL_ERROR,
            CallErrorKind::Hyper => LOSSC_HYPER_ERROR,
            CallErrorKind::Memory => LOSSC_MEMORY_ERROR,
            CallErrorKind::Device | CallErrorKind::Internal => LOSSC_INTERNAL_ERROR,
        };
        Failure(code, e.to_string())
    }
}

fn argument(what: &str) -> Failure {
    Failure(LOSSC_ARGUMENT_ERROR, what.to_string())
}

/// Writes `message` into `*error` where `error` is not NULL.
///
/// # Safety
/// `error` is NULL or points to writable storage for a pointer.
unsafe fn report(error: *mut *mut c_char, message: &str) {
    if error.is_null() {
        return;
    }
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: the caller's contract.
    unsafe { *error = text.into_raw() };
}

/// Runs `work`, turning a failure or a panic into a status and a message.
///
/// # Safety
/// As [`report`].
unsafe fn guarded<T>(error: *mut *mut c_char, work: impl FnOnce() -> Result<T, Failure>) -> Result<T, c_int> {
    let outcome = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
        Err(Failure(
            LOSSC_INTERNAL_ERROR,
            "lossc panicked (a bug; please report it)".into(),
        ))
    });
    outcome.map_err(|Failure(code, message)| {
        // SAFETY: the caller's contract.
        unsafe { report(error, &message) };
        code
    })
}

/// # Safety
/// `s` is NULL or a NUL-terminated string.
unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if s.is_null() {
        return Err(argument(&format!("{what} is NULL")));
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| argument(&format!("{what} is not UTF-8")))
}

fn module(compiled: Result<lossc::kernel::Module, lossc::Diags>) -> Result<*mut Module, Failure> {
    let module = compiled.map_err(|d| Failure(LOSSC_COMPILE_ERROR, d.render()))?;
    let names = (module.losses().into_iter())
        .map(|n| CString::new(n).unwrap_or_default())
        .collect();
    Ok(Box::into_raw(Box::new(Module { module, names })))
}

/// Compiles lx source.
///
/// # Safety
/// `source` and `file_name` are NUL-terminated strings (`file_name` may be NULL); `error` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lossc_compile(
    source: *const c_char,
    file_name: *const c_char,
    error: *mut *mut c_char,
) -> *mut Module {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guarded(error, || {
            let source = text(source, "source")?;
            let name = if file_name.is_null() {
                "<source>"
            } else {
                text(file_name, "file_name")?
            };
            module(Compiler::new().compile_source(name, source))
        })
    }
    .unwrap_or(std::ptr::null_mut())
}

/// Reads and compiles a .lx file.
///
/// # Safety
/// `path` is a NUL-terminated string; `error` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lossc_compile_file(path: *const c_char, error: *mut *mut c_char) -> *mut Module {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guarded(error, || {
            let path = text(path, "path")?;
            module(Compiler::new().compile_file(path.as_ref()))
        })
    }
    .unwrap_or(std::ptr::null_mut())
}

/// Frees a module.
///
/// # Safety
/// `module` is NULL or a module from `lossc_compile*` not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lossc_module_free(module: *mut Module) {
    if !module.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(module) });
    }
}

/// How many losses the module has.
///
/// # Safety
/// `module` is NULL or a live module.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lossc_module_loss_count(module: *const Module) -> usize {
    // SAFETY: the caller's contract.
    unsafe { module.as_ref() }.map_or(0, |m| m.names.len())
}

/// The name of the module's `i`-th loss (NULL past the end); owned by the module.
///
/// # Safety
/// `module` is NULL or a live module.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lossc_module_loss_name(module: *const Module, i: usize) -> *const c_char {
    // SAFETY: the caller's contract.
    (unsafe { module.as_ref() })
        .and_then(|m| m.names.get(i))
        .map_or(std::ptr::null(), |n| n.as_ptr())
}

/// Builds the kernel of one loss.
///
/// # Safety
/// `module` is a live module; `name` is NULL or a NUL-terminated string; `error` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lossc_module_loss(
    module: *const Module,
    name: *const c_char,
    threads: usize,
    error: *mut *mut c_char,
) -> *mut Loss {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guarded(error, || {
            let module = module.as_ref().ok_or_else(|| argument("module is NULL"))?;
            let name = if name.is_null() {
                None
            } else {
                Some(text(name, "name")?)
            };
            let kernel = module
                .module
                .kernel(name)
                .map_err(|d| Failure(LOSSC_COMPILE_ERROR, format!("{}: {}", d.code.as_str(), d.message)))?;
            let kernel = if threads == 0 {
                kernel
            } else {
                kernel.with_threads(threads)
            };
            Ok(Box::into_raw(Box::new(Loss {
                workspace: Mutex::new(kernel.workspace()),
            })))
        })
    }
    .unwrap_or(std::ptr::null_mut())
}

/// Frees a loss.
///
/// # Safety
/// `loss` is NULL or a loss from `lossc_module_loss` not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lossc_loss_free(loss: *mut Loss) {
    if !loss.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(loss) });
    }
}

/// Reads `n` items at `p` (an empty slice where `n` is 0, whatever `p`).
///
/// # Safety
/// Where `n > 0`, `p` points to `n` readable items.
unsafe fn items<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T], Failure> {
    match (n, p.is_null()) {
        (0, _) => Ok(&[]),
        (_, true) => Err(argument(&format!("{what} is NULL"))),
        // SAFETY: the caller's contract.
        _ => Ok(unsafe { std::slice::from_raw_parts(p, n) }),
    }
}

/// One call of a loss.
///
/// # Safety
/// `loss` is a live loss; `inputs`, `hypers` and `grads` point to that many items whose names are
/// NUL-terminated and whose data hold the elements their shapes (or lengths) say; `loss_out` is writable;
/// `error` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lossc_loss_call(
    loss: *mut Loss,
    inputs: *const RawInput,
    n_inputs: usize,
    hypers: *const RawHyper,
    n_hypers: usize,
    grads: *mut RawGrad,
    n_grads: usize,
    loss_out: *mut f32,
    error: *mut *mut c_char,
) -> c_int {
    // SAFETY: the caller's contract, passed on.
    let outcome = unsafe {
        guarded(error, || {
            let loss = loss.as_ref().ok_or_else(|| argument("loss is NULL"))?;
            if loss_out.is_null() {
                return Err(argument("loss_out is NULL"));
            }
            let mut views = Vec::new();
            for raw in items(inputs, n_inputs, "inputs")? {
                let name = text(raw.name, "an input's name")?;
                let shape = items(raw.shape, raw.rank, "an input's shape")?;
                let n = (shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d))).ok_or_else(|| {
                    Failure(
                        LOSSC_SHAPE_ERROR,
                        format!("input `{name}`: shape {shape:?} is too large"),
                    )
                })?;
                let data = match raw.dtype {
                    LOSSC_F32 => View::F32(items(raw.data as *const f32, n, "an input's data")?),
                    LOSSC_I64 => View::I64(items(raw.data as *const i64, n, "an input's data")?),
                    LOSSC_I32 => View::I32(items(raw.data as *const i32, n, "an input's data")?),
                    other => return Err(argument(&format!("input `{name}` has dtype code {other} (0, 1 or 2)"))),
                };
                views.push(Input { name, shape, data });
            }
            let mut set = BTreeMap::new();
            for h in items(hypers, n_hypers, "hypers")? {
                set.insert(text(h.name, "a hyperparameter's name")?.to_string(), h.value);
            }
            let mut slots = Vec::new();
            for g in items(grads as *const RawGrad, n_grads, "grads")? {
                let name = text(g.name, "a gradient's name")?;
                let out: &mut [f32] = match (g.len, g.data.is_null()) {
                    (0, _) => &mut [],
                    (_, true) => return Err(argument(&format!("the buffer of gradient `{name}` is NULL"))),
                    _ => std::slice::from_raw_parts_mut(g.data, g.len),
                };
                slots.push((name, out));
            }
            let mut workspace = loss.workspace.lock().unwrap_or_else(|p| p.into_inner());
            let value = workspace.call(&views, &set, &mut slots)?;
            *loss_out = value;
            Ok(())
        })
    };
    match outcome {
        Ok(()) => LOSSC_OK,
        Err(code) => code,
    }
}

/// Frees a message.
///
/// # Safety
/// `s` is NULL or a message from this library not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lossc_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { CString::from_raw(s) });
    }
}

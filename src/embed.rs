//! Calls over the caller's memory: inputs as slices (`&[f32]`, `&[i64]`, `&[i32]` with a shape), gradients
//! written into the caller's `&mut [f32]`, the loss returned as `f32`.
//!
//! A [`Workspace`] belongs to one kernel and keeps every buffer of the last call. On the JIT backend a
//! call reads float32 and int64 inputs where the caller holds them; the workspace's buffers are allocated
//! again only when the call's sizes differ from the last call's. Int32 labels are widened into a buffer
//! of the workspace, and an input the loss declares `bf16`/`f16` is rounded into one (both reused).
//! The interpreter and CUDA backends run the call through [`Kernel::eval_with`] (their results converted to
//! f32), so the same code serves every backend.
//!
//! ```
//! use lossc::Compiler;
//! use lossc::embed::Input;
//! let module = Compiler::new().threads(1).compile_source("ce.lx",
//!     "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }").unwrap();
//! let mut workspace = module.kernel(None).unwrap().workspace();
//! let scores = [0.0f32, 0.0, 1.0, 1.0];
//! let labels = [1i64, 0];
//! let mut grad = [0f32; 4];
//! let loss = workspace
//!     .call(
//!         &[Input::f32("s", &[2, 2], &scores), Input::i64("y", &[2], &labels)],
//!         &Default::default(),
//!         &mut [("s", &mut grad)],
//!     )
//!     .unwrap();
//! assert!((loss - 2f32.ln()).abs() < 1e-6);
//! assert!((grad[1] + 0.25).abs() < 1e-6);
//! ```

use std::collections::BTreeMap;

use crate::call::{self, CallError, InputView};
use crate::data::{DType, Data, Tensor};
use crate::ir::Role;
use crate::kernel::Kernel;

/// The elements of one input, in the caller's memory (row-major, contiguous).
#[derive(Clone, Copy, Debug)]
pub enum View<'a> {
    /// Float inputs.
    F32(&'a [f32]),
    /// Labels (sample ids, class indices).
    I64(&'a [i64]),
    /// Labels, widened to int64 in the workspace.
    I32(&'a [i32]),
}

/// One named input of a call: its shape and elements.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The input's name in the loss's signature.
    pub name: &'a str,
    /// Its shape (row-major).
    pub shape: &'a [usize],
    /// Its elements.
    pub data: View<'a>,
}

impl<'a> Input<'a> {
    /// A float32 input.
    pub fn f32(name: &'a str, shape: &'a [usize], data: &'a [f32]) -> Input<'a> {
        Input {
            name,
            shape,
            data: View::F32(data),
        }
    }
    /// An int64 label input.
    pub fn i64(name: &'a str, shape: &'a [usize], data: &'a [i64]) -> Input<'a> {
        Input {
            name,
            shape,
            data: View::I64(data),
        }
    }
    /// An int32 label input.
    pub fn i32(name: &'a str, shape: &'a [usize], data: &'a [i32]) -> Input<'a> {
        Input {
            name,
            shape,
            data: View::I32(data),
        }
    }

    fn len(&self) -> usize {
        match self.data {
            View::F32(v) => v.len(),
            View::I64(v) => v.len(),
            View::I32(v) => v.len(),
        }
    }

    fn dtype(&self) -> DType {
        match self.data {
            View::F32(_) => DType::F32,
            View::I64(_) => DType::I64,
            View::I32(_) => DType::I32,
        }
    }
}

/// A kernel with the buffers of its last call, for calls over the caller's memory ([`Kernel::workspace`]).
/// One workspace serves one call at a time; give each thread its own (they share the kernel's code).
pub struct Workspace {
    kernel: Kernel,
    /// Per input: int32 labels widened, or a half-precision input rounded (reused from call to call).
    converted: Vec<Converted>,
    #[cfg(feature = "jit")]
    buffers: Option<crate::backend::jit::Buffers>,
    /// The native code of the last call ([`Kernel::native_for`]: the kernel's own, or its pairwise
    /// tensors streamed where the call's buffers would not fit in the memory budget).
    #[cfg(feature = "jit")]
    native: Option<std::sync::Arc<crate::backend::jit::Compiled>>,
    /// Results of a call that did not run on the JIT: (role, name, values).
    other: Vec<(Role, String, Vec<f32>)>,
    /// The dimension sizes of the last call that succeeded.
    sizes: Vec<i64>,
    /// The buffers the last call's native code wrote into the caller's memory (their results are not here).
    placed: Vec<usize>,
}

#[derive(Default)]
struct Converted {
    labels: Vec<i64>,
    #[cfg_attr(not(feature = "jit"), allow(dead_code))]
    floats: Vec<f32>,
}

impl Kernel {
    /// A workspace for calls over the caller's memory ([`Workspace::call`]).
    pub fn workspace(&self) -> Workspace {
        Workspace {
            kernel: self.clone(),
            converted: (0..self.function().inputs.len())
                .map(|_| Converted::default())
                .collect(),
            #[cfg(feature = "jit")]
            buffers: None,
            #[cfg(feature = "jit")]
            native: None,
            other: Vec::new(),
            sizes: Vec::new(),
            placed: Vec::new(),
        }
    }
}

impl Workspace {
    /// The kernel this workspace calls.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Runs later calls on `threads` threads (the kernel's code is shared, not rebuilt).
    pub fn set_threads(&mut self, threads: usize) {
        if threads.max(1) != self.kernel.threads() {
            self.kernel = self.kernel.with_threads(threads);
        }
    }

    /// One call: checks the inputs (the same [`CallError`]s as [`Kernel::eval_with`]) and the gradient
    /// slices (by input name, each the input's size), computes the loss and every gradient and returns the
    /// loss. On the JIT the gradients named in `grads` are written straight into the caller's slices;
    /// elsewhere they are copied there. Gradients not asked for and extra outputs stay readable until the
    /// next call ([`Workspace::gradient`], [`Workspace::output`]).
    pub fn call(
        &mut self,
        inputs: &[Input],
        hypers: &BTreeMap<String, f64>,
        grads: &mut [(&str, &mut [f32])],
    ) -> Result<f32, CallError> {
        let f = self.kernel.function();
        for (name, out) in grads.iter() {
            // (State inputs and a per-sample loss's cotangent are `nograd`.)
            if !f.inputs.iter().any(|i| i.name == *name && i.differentiable()) {
                let expected = (f.inputs.iter())
                    .filter(|i| i.differentiable())
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(CallError::UnknownInput {
                    name: format!("grad_{name}"),
                    expected,
                });
            }
            let given = inputs.iter().find(|i| i.name == *name).map(|i| i.len());
            if let Some(needed) = given
                && needed != out.len()
            {
                return Err(CallError::LengthMismatch {
                    input: format!("grad_{name}"),
                    shape: vec![out.len()],
                    len: out.len(),
                    needed,
                });
            }
        }
        let loss = self.run(inputs, hypers, grads)?;
        if self.placed.is_empty() {
            for (name, out) in grads.iter_mut() {
                if let Some(g) = self.result(Role::Grad(0), name) {
                    out.copy_from_slice(g);
                }
            }
        }
        Ok(loss)
    }

    /// The bytes of the buffers this workspace keeps for the next call at the last call's sizes (the
    /// native code's tensors; 0 off the JIT).
    pub fn bytes_held(&self) -> u64 {
        #[cfg(feature = "jit")]
        if let (Some(jit), Some(_)) = (&self.native, &self.buffers) {
            return jit.bytes_needed(&self.sizes, self.kernel.threads());
        }
        0
    }

    /// The gradient of input `name` computed by the last call, unless the call wrote it into a slice of
    /// the caller's.
    pub fn gradient(&self, name: &str) -> Option<&[f32]> {
        self.result(Role::Grad(0), name)
    }

    /// Extra output `name` of the last call (a per-sample loss's values are its output `value`).
    pub fn output(&self, name: &str) -> Option<&[f32]> {
        self.result(Role::Output, name)
    }

    /// The extra outputs of the last call (a per-sample loss's values are its output `value`): name, shape
    /// and values, in declaration order.
    pub fn outputs(&self) -> Vec<(&str, Vec<usize>, &[f32])> {
        let f = self.kernel.function();
        f.tensors
            .iter()
            .filter(|t| t.role == Role::Output)
            .filter_map(|t| {
                let shape = t
                    .indices
                    .iter()
                    .map(|i| f.index(*i).range.eval(&self.sizes).max(0) as usize);
                Some((t.name.as_str(), shape.collect(), self.output(&t.name)?))
            })
            .collect()
    }

    fn same_kind(a: Role, b: Role) -> bool {
        std::mem::discriminant(&a) == std::mem::discriminant(&b)
    }

    fn result(&self, role: Role, name: &str) -> Option<&[f32]> {
        #[cfg(feature = "jit")]
        if let (Some(jit), Some(buffers)) = (&self.native, &self.buffers) {
            let (_, _, k) = jit
                .plan()
                .results(jit.function())
                .find(|(r, n, _)| Self::same_kind(*r, role) && *n == name)?;
            return (!self.placed.contains(&k)).then(|| jit.floats(buffers, k));
        }
        self.other
            .iter()
            .find(|(r, n, _)| Self::same_kind(*r, role) && n == name)
            .map(|(_, _, v)| &v[..])
    }

    fn run(
        &mut self,
        inputs: &[Input],
        hypers: &BTreeMap<String, f64>,
        grads: &mut [(&str, &mut [f32])],
    ) -> Result<f32, CallError> {
        self.placed.clear();
        let f = self.kernel.function();
        if let Some(name) = hypers.keys().find(|k| self.kernel.is_fixed(k)) {
            return Err(CallError::HyperFixed { name: name.clone() });
        }
        // Extern operations run on host tensors before the kernel ([`Kernel::eval_with`]).
        if self.kernel.calls_externs() {
            return self.run_on_tensors(inputs, hypers);
        }
        // Int32 labels are widened first, so that they are checked like int64 ones.
        for input in inputs {
            if let (View::I32(v), Some(k)) = (input.data, f.inputs.iter().position(|i| i.name == input.name)) {
                let widened = &mut self.converted[k].labels;
                widened.clear();
                widened.extend(v.iter().map(|x| *x as i64));
            }
        }
        let mut views: BTreeMap<&str, InputView> = BTreeMap::new();
        for input in inputs {
            if views.contains_key(input.name) {
                return Err(CallError::UnknownInput {
                    name: format!("{} (given twice)", input.name),
                    expected: f.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
                });
            }
            let slot = f.inputs.iter().position(|i| i.name == input.name);
            let labels = match (input.data, slot) {
                (View::I64(v), _) => Some(v),
                (View::I32(_), Some(k)) => Some(&self.converted[k].labels[..]),
                _ => None,
            };
            let view = InputView {
                dtype: input.dtype(),
                shape: input.shape,
                len: input.len(),
                labels,
            };
            views.insert(input.name, view);
        }
        if self.kernel.checks_finite() {
            for input in inputs {
                if let View::F32(v) = input.data
                    && let Some(at) = v.iter().position(|x| !x.is_finite())
                {
                    return Err(CallError::NonFinite {
                        input: input.name.to_string(),
                        position: call::unravel(at, input.shape),
                        value: v[at] as f64,
                        count: v.iter().filter(|x| !x.is_finite()).count(),
                    });
                }
            }
        }
        let (sizes, values) = call::bind_views(f, &views, hypers)?;
        drop(views);
        #[cfg(feature = "jit")]
        let native = self.kernel.native_for(&sizes)?;
        #[cfg(not(feature = "jit"))]
        let native: Option<std::sync::Arc<crate::kernel::Native>> = {
            // Without the JIT a call runs on tensors: the bound values and the caller's slices go unused.
            let _ = (&values, &grads);
            None
        };
        self.kernel.admit(native.as_deref(), &sizes, false)?;
        self.sizes.clone_from(&sizes);

        #[cfg(feature = "jit")]
        if let Some(jit) = native {
            if !self.native.as_ref().is_some_and(|n| std::sync::Arc::ptr_eq(n, &jit)) {
                self.buffers = None;
                self.native = Some(jit.clone());
            }
            let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); jit.plan().buffers.len()];
            for (k, declared) in f.inputs.iter().enumerate() {
                let Some(input) = inputs.iter().find(|i| i.name == declared.name) else {
                    continue;
                };
                let converted = &mut self.converted[k];
                ptrs[k] = match (input.data, DType::half_of(declared.elem)) {
                    (View::F32(v), Some(half)) => {
                        converted.floats.clear();
                        converted.floats.extend(v.iter().map(|x| half.round(*x as f64) as f32));
                        converted.floats.as_mut_ptr() as *mut u8
                    }
                    // The native code only reads inputs.
                    (View::F32(v), None) => v.as_ptr() as *mut u8,
                    (View::I64(v), _) => v.as_ptr() as *mut u8,
                    (View::I32(_), _) => converted.labels.as_mut_ptr() as *mut u8,
                };
            }
            // Gradients asked for are written where the caller wants them (checked by `call`: the input's size).
            for (role, name, k) in jit.plan().results(jit.function()) {
                if let (Role::Grad(_), Some((_, out))) = (role, grads.iter_mut().find(|(n, _)| *n == name)) {
                    if !out.is_empty() {
                        ptrs[k] = out.as_mut_ptr() as *mut u8;
                    }
                    self.placed.push(k);
                }
            }
            let buffers = jit.refit(&mut self.buffers, &sizes, &values);
            if let Err(e) = jit.execute_over(buffers, &ptrs, self.kernel.threads()) {
                // A failed call leaves no results to read.
                self.buffers = None;
                return Err(e);
            }
            let loss = jit
                .plan()
                .results(jit.function())
                .find(|(r, _, _)| *r == Role::Loss)
                .map_or(f32::NAN, |(_, _, k)| {
                    jit.floats(buffers, k).first().copied().unwrap_or(f32::NAN)
                });
            return Ok(loss);
        }
        self.run_on_tensors(inputs, hypers)
    }

    /// A call through [`Kernel::eval_with`] on tensors copied from the caller's slices.
    fn run_on_tensors(&mut self, inputs: &[Input], hypers: &BTreeMap<String, f64>) -> Result<f32, CallError> {
        let tensors: BTreeMap<String, Tensor> = inputs
            .iter()
            .map(|i| {
                let data = match i.data {
                    View::F32(v) => Data::Float(v.iter().map(|x| *x as f64).collect()),
                    View::I64(v) => Data::Int(v.to_vec()),
                    View::I32(v) => Data::Int(v.iter().map(|x| *x as i64).collect()),
                };
                let t = Tensor {
                    shape: i.shape.to_vec(),
                    data,
                    dtype: i.dtype(),
                };
                (i.name.to_string(), t)
            })
            .collect();
        self.other.clear();
        let e = self.kernel.eval_with(&tensors, hypers)?;
        let floats = |t: &Tensor| t.to_f64().iter().map(|x| *x as f32).collect::<Vec<f32>>();
        for (name, t) in &e.outputs {
            self.other.push((Role::Output, name.clone(), floats(t)));
        }
        for (name, t) in &e.grads {
            self.other.push((Role::Grad(0), name.clone(), floats(t)));
        }
        Ok(e.loss as f32)
    }
}

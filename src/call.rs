//! Call-time checking, shared by every backend: binds a function's dimension symbols from the shapes of
//! the given inputs, checks dtypes, ranks, sizes, label ranges and hyperparameters, and returns a typed
//! [`CallError`] for anything wrong — before any evaluation starts.
//!
//! Invariant: a [`Bound`] call has every input present with its declared rank and consistent sizes, every
//! label inside its bound, and every tensor definition small enough to allocate; backends may rely on it.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::data::{DType, Data, Tensor};
use crate::diag::Span;
use crate::ir::{Dim, ElemTy, Function, Scalar};

/// The most elements one tensor (input or intermediate) may have.
pub const MAX_ELEMENTS: u64 = 1 << 32;

/// The memory budget of one call when none is set: `LOSSC_MEMORY_BUDGET` (bytes; a `K`, `M`, `G` or `T`
/// suffix counts in powers of 1024) if set, else three quarters of the machine's memory (`MemTotal` of
/// /proc/meminfo), else 16 GiB. A call whose buffers would need more fails with [`CallError::OverBudget`]
/// before anything is allocated ([`crate::Compiler::memory_budget`] sets it per compiler).
pub fn default_memory_budget() -> u64 {
    if let Some(bytes) = std::env::var("LOSSC_MEMORY_BUDGET").ok().and_then(|v| parse_bytes(&v)) {
        return bytes;
    }
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    total.map_or(16 << 30, |bytes| bytes / 4 * 3)
}

/// `123`, `64K`, `512M`, `16G`, `1T` (powers of 1024; a trailing `B`/`iB` is allowed) as bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim().trim_end_matches("iB").trim_end_matches('B');
    let (digits, shift) = match t.chars().last()? {
        'K' | 'k' => (&t[..t.len() - 1], 10),
        'M' | 'm' => (&t[..t.len() - 1], 20),
        'G' | 'g' => (&t[..t.len() - 1], 30),
        'T' | 't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Checks that no tensor of `f` for which `stored` holds has more than [`MAX_ELEMENTS`] elements at these
/// sizes. Checked on the program a call runs and the tensors it stores whole: a streamed program holds a
/// block of a pairwise tensor's rows, not the [B, B] (or [B, B, B]) tensor its source defines.
pub fn check_elements(f: &Function, sizes: &[i64], stored: impl Fn(usize) -> bool) -> Result<(), CallError> {
    for t in (f.tensors.iter().enumerate()).filter_map(|(k, t)| stored(k).then_some(t)) {
        let elements = (t.indices.iter())
            .map(|i| f.index(*i).range.eval(sizes).max(0) as u128)
            .fold(1u128, u128::saturating_mul);
        if elements > MAX_ELEMENTS as u128 {
            return Err(CallError::TooLarge {
                tensor: t.name.clone(),
                elements,
            });
        }
    }
    Ok(())
}

/// Checks the bytes a call's buffers need against `budget`.
pub fn check_budget(needed: u64, budget: u64) -> Result<(), CallError> {
    if needed > budget {
        return Err(CallError::OverBudget { needed, budget });
    }
    Ok(())
}

/// A bad call of a compiled loss. (Each variant's fields are what its message names.)
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CallError {
    /// An input the loss declares was not given.
    #[allow(missing_docs)]
    #[error("missing input `{name}` (the loss takes: {expected})")]
    MissingInput { name: String, expected: String },
    /// An input the loss does not declare was given.
    #[allow(missing_docs)]
    #[error("unknown input `{name}` (the loss takes: {expected})")]
    UnknownInput { name: String, expected: String },
    /// Floats given for labels, or labels for floats.
    #[allow(missing_docs)]
    #[error("input `{input}` must be {expected}, but it is {got}")]
    WrongDtype {
        input: String,
        expected: &'static str,
        got: DType,
    },
    /// An input of the wrong rank.
    #[allow(missing_docs)]
    #[error("input `{input}` must have rank {expected} (shape {shape}), but it has shape {got:?}")]
    RankMismatch {
        input: String,
        expected: usize,
        shape: String,
        got: Vec<usize>,
    },
    /// An input whose element count is not its shape's.
    #[allow(missing_docs)]
    #[error("input `{input}` holds {len} elements but its shape {shape:?} needs {needed}")]
    LengthMismatch {
        input: String,
        shape: Vec<usize>,
        len: usize,
        needed: usize,
    },
    /// An axis whose size disagrees with the declared type or another input.
    #[allow(missing_docs)]
    #[error(
        "dimension {dim} mismatch: axis {axis} of `{input}` has size {got}, but {dim} = {expected} (from {source_of})"
    )]
    ShapeMismatch {
        input: String,
        axis: usize,
        dim: String,
        expected: usize,
        got: usize,
        source_of: String,
    },
    /// A label outside `0..bound`.
    #[allow(missing_docs)]
    #[error(
        "label out of range: `{input}` at position {position:?} is {value}, but labels must lie in 0..{bound} ({bound} = {size}){}",
        or_ignored(*.ignore)
    )]
    LabelOutOfRange {
        input: String,
        position: Vec<usize>,
        value: i64,
        bound: String,
        size: i64,
        /// The value to ignore the input also accepts (`ignore = 255`).
        ignore: Option<i64>,
    },
    /// A state input passed to a stateful call (the store supplies it).
    #[allow(missing_docs)]
    #[error("input `{name}` is state kept by the state store; pass only its sample ids `{key}`")]
    StateGiven { name: String, key: String },
    /// A state table whose rows have another length than this call's rows of that state.
    #[allow(missing_docs)]
    #[error("state `{name}` holds rows of {table} values, but this call's rows of it have {call}")]
    StateWidth { name: String, table: usize, call: usize },
    /// A hyperparameter the loss does not declare.
    #[allow(missing_docs)]
    #[error("unknown hyperparameter `{name}` (the loss has: {available})")]
    UnknownHyper { name: String, available: String },
    /// A hyperparameter fixed at compile time, set per call.
    #[allow(missing_docs)]
    #[error("hyperparameter `{name}` was fixed when the kernel was compiled; it cannot be set per call")]
    HyperFixed { name: String },
    /// A fractional value for an integer hyperparameter.
    #[allow(missing_docs)]
    #[error("hyperparameter `{name}` is an integer, but was given {value}")]
    HyperNotInteger { name: String, value: f64 },
    /// A dimension expression that evaluates negative at the call's sizes.
    #[allow(missing_docs)]
    #[error("tensor `{tensor}` would have a negative extent {value} along {dim}")]
    NegativeDim { tensor: String, dim: String, value: i64 },
    /// A tensor of more than `MAX_ELEMENTS` elements.
    #[allow(missing_docs)]
    #[error("tensor `{tensor}` would have {elements} elements, more than the limit of {MAX_ELEMENTS}")]
    TooLarge { tensor: String, elements: u128 },
    /// A data-dependent subscript out of range (checked in the generated code).
    #[allow(missing_docs)]
    #[error("subscript out of range: axis {axis} of `{tensor}` has size {size}, but the subscript is {value}")]
    IndexOutOfRange {
        tensor: String,
        axis: usize,
        value: i64,
        size: usize,
        span: Span,
    },
    /// A group's native code compiled on first use (a matrix product whose operand is not finite) failed
    /// to compile: a compiler limit, never the input's fault.
    #[error("the kernel's code for this call failed to compile: {0}")]
    Compile(String),
    /// A float input holds NaN or an infinity (reported only where asked: [`crate::Compiler::finite_inputs`]).
    #[allow(missing_docs)]
    #[error("input `{input}` holds {value} at position {position:?} ({count} non-finite element(s) in all)")]
    NonFinite {
        input: String,
        position: Vec<usize>,
        value: f64,
        count: usize,
    },
    /// The call's buffers would need more memory than the budget allows (nothing was allocated).
    #[allow(missing_docs)]
    #[error(
        "the call needs about {needed} bytes of buffers, more than the memory budget of {budget} bytes \
         (set LOSSC_MEMORY_BUDGET, or Compiler::memory_budget)"
    )]
    OverBudget { needed: u64, budget: u64 },
    /// An extern operation failed, panicked, or returned an output of another shape or an index outside
    /// its declared bound.
    #[allow(missing_docs)]
    #[error("extern operation `{op}` failed: {message}")]
    Extern { op: String, message: String },
    /// The device backend (CUDA) could not run the call: no driver or device, an allocation or a launch
    /// failed. Never the input's fault.
    #[error("the device could not run the kernel: {0}")]
    Device(String),
}

/// The end of a label error's message for an input that also accepts a value to ignore.
pub fn or_ignored(ignore: Option<i64>) -> String {
    ignore.map_or(String::new(), |v| format!(" or be {v}"))
}

/// A checked call: sizes of the dimension symbols, hyperparameter values and inputs in declaration order.
#[derive(Debug)]
pub struct Bound<'a> {
    /// The size of each dimension symbol, in the function's order.
    pub sizes: Vec<i64>,
    /// Every hyperparameter's value for the call, in declaration order.
    pub hypers: Vec<f64>,
    /// The inputs; one declared `bf16` or `f16` is rounded to that type (a copy, where it was not already).
    pub inputs: Vec<std::borrow::Cow<'a, Tensor>>,
}

/// Checks a call of `f` and binds its dimensions.
pub fn bind<'a>(
    f: &Function,
    inputs: &'a BTreeMap<String, Tensor>,
    hypers: &BTreeMap<String, f64>,
) -> Result<Bound<'a>, CallError> {
    let views: BTreeMap<&str, InputView> = inputs
        .iter()
        .map(|(name, t)| {
            let view = InputView {
                dtype: t.dtype,
                shape: &t.shape,
                len: t.len(),
                labels: match &t.data {
                    Data::Int(v) => Some(&v[..]),
                    Data::Float(_) => None,
                },
            };
            (name.as_str(), view)
        })
        .collect();
    let (sizes, values) = bind_views(f, &views, hypers)?;
    let ordered = f
        .inputs
        .iter()
        .map(|i| {
            let t = &inputs[&i.name];
            match (DType::half_of(i.elem), &t.data) {
                (Some(half), Data::Float(v)) if t.dtype != half => std::borrow::Cow::Owned(Tensor {
                    shape: t.shape.clone(),
                    data: Data::Float(v.iter().map(|x| half.round(*x)).collect()),
                    dtype: half,
                }),
                _ => std::borrow::Cow::Borrowed(t),
            }
        })
        .collect();
    Ok(Bound {
        sizes,
        hypers: values,
        inputs: ordered,
    })
}

/// What the call checks need of one input: its element type, shape and length, and the labels where
/// they can be read (on the host; a device call checks them in a kernel of its own).
#[derive(Clone, Copy, Debug)]
pub struct InputView<'a> {
    /// The element type it holds.
    pub dtype: DType,
    /// Its shape.
    pub shape: &'a [usize],
    /// Its element count (checked against the shape).
    pub len: usize,
    /// Its labels, where they can be read on the host (checked against their bound).
    pub labels: Option<&'a [i64]>,
}

/// The size a dimension symbol takes from the integer hyperparameter that sizes it (`values`: the call's
/// hyperparameters, [`hyper_values`]), or None for a dimension the inputs size.
pub fn hyper_size(d: &crate::ir::DimSym, values: &[f64]) -> Option<i64> {
    d.hyper.map(|h| values[h as usize] as i64)
}

/// Where an input axis sized only by integer hyperparameters (and consts) gets its size ("hyperparameter
/// `S`"), or None for an axis the inputs size.
pub fn hyper_sized(f: &Function, d: &Dim) -> Option<String> {
    let syms = d.syms();
    let mut names: Vec<String> = Vec::new();
    for s in &syms {
        let name = format!("`{}`", f.hypers[f.dims[s.index()].hyper? as usize].name);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    match names.len() {
        0 => None,
        1 => Some(format!("hyperparameter {}", names[0])),
        _ => Some(format!("hyperparameters {}", names.join(", "))),
    }
}

/// The extent of dimension `d` of tensor `tensor` at the call's `sizes`, or [`CallError::NegativeDim`].
pub fn extent(f: &Function, tensor: &str, d: &Dim, sizes: &[i64]) -> Result<i64, CallError> {
    let n = d.eval(sizes);
    if n < 0 {
        return Err(CallError::NegativeDim {
            tensor: tensor.to_string(),
            dim: f.show_dim(d),
            value: n,
        });
    }
    Ok(n)
}

/// [`bind`]'s checks on views of the inputs: the sizes of the dimension symbols and the
/// hyperparameters' values (labels are checked where `labels` is given).
pub fn bind_views(
    f: &Function,
    inputs: &BTreeMap<&str, InputView>,
    hypers: &BTreeMap<String, f64>,
) -> Result<(Vec<i64>, Vec<f64>), CallError> {
    let expected = || f.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(name) = inputs.keys().find(|n| !f.inputs.iter().any(|i| &i.name == *n)) {
        return Err(CallError::UnknownInput {
            name: name.to_string(),
            expected: expected(),
        });
    }
    let mut sizes: Vec<Option<(usize, String)>> = vec![None; f.dims.len()];
    let mut ordered = Vec::new();
    for input in &f.inputs {
        let t = inputs.get(input.name.as_str()).ok_or_else(|| CallError::MissingInput {
            name: input.name.clone(),
            expected: expected(),
        })?;
        match (input.elem, t.dtype.is_float()) {
            (ElemTy::Idx, false) | (ElemTy::F32 | ElemTy::F64 | ElemTy::Bf16 | ElemTy::F16, true) => {}
            (ElemTy::Idx, _) => {
                return Err(CallError::WrongDtype {
                    input: input.name.clone(),
                    expected: "integer labels (int32 or int64)",
                    got: t.dtype,
                });
            }
            _ => {
                return Err(CallError::WrongDtype {
                    input: input.name.clone(),
                    expected: "floating point (float32 or float64)",
                    got: t.dtype,
                });
            }
        }
        let shape_str = format!(
            "[{}]",
            input.shape.iter().map(|d| f.show_dim(d)).collect::<Vec<_>>().join(", ")
        );
        if t.shape.len() != input.shape.len() {
            return Err(CallError::RankMismatch {
                input: input.name.clone(),
                expected: input.shape.len(),
                shape: shape_str,
                got: t.shape.to_vec(),
            });
        }
        let needed = t
            .shape
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(*d as u64))
            .filter(|n| *n <= MAX_ELEMENTS);
        let Some(needed) = needed else {
            return Err(CallError::TooLarge {
                tensor: input.name.clone(),
                elements: t.shape.iter().map(|d| *d as u128).product(),
            });
        };
        if needed as usize != t.len {
            return Err(CallError::LengthMismatch {
                input: input.name.clone(),
                shape: t.shape.to_vec(),
                len: t.len,
                needed: needed as usize,
            });
        }
        for (axis, (d, got)) in input.shape.iter().zip(t.shape).enumerate() {
            match d {
                Dim::Const(c) if *c as usize != *got || *c < 0 => {
                    return Err(CallError::ShapeMismatch {
                        input: input.name.clone(),
                        axis,
                        dim: c.to_string(),
                        expected: *c as usize,
                        got: *got,
                        source_of: "the declared type".into(),
                    });
                }
                Dim::Sym(s) => match &sizes[s.index()] {
                    Some((n, from)) if n != got => {
                        return Err(CallError::ShapeMismatch {
                            input: input.name.clone(),
                            axis,
                            dim: f.dims[s.index()].name.clone(),
                            expected: *n,
                            got: *got,
                            source_of: from.clone(),
                        });
                    }
                    Some(_) => {}
                    None => sizes[s.index()] = Some((*got, format!("axis {axis} of `{}`", input.name))),
                },
                _ => {}
            }
        }
        ordered.push(t);
    }
    let values = hyper_values(f, hypers)?;
    // Every dimension an integer hyperparameter sizes takes its value.
    let sizes: Vec<i64> = sizes
        .into_iter()
        .zip(&f.dims)
        .map(|(s, d)| hyper_size(d, &values).unwrap_or_else(|| s.map_or(0, |(n, _)| n as i64)))
        .collect();
    // An input axis integer hyperparameters size (`bank: f32[B, S, C]`, `f32[B, E + 1]`) has their value.
    for (input, t) in f.inputs.iter().zip(&ordered) {
        for (axis, (d, got)) in input.shape.iter().zip(t.shape).enumerate() {
            let Some(hypers) = hyper_sized(f, d) else { continue };
            let n = extent(f, &input.name, d, &sizes)?;
            if n != *got as i64 {
                return Err(CallError::ShapeMismatch {
                    input: input.name.clone(),
                    axis,
                    dim: f.show_dim(d),
                    expected: n as usize,
                    got: *got,
                    source_of: hypers,
                });
            }
        }
    }
    // Sample ids that key state lie in 0..MAX_STATE_ROWS with or without a state store (without one they
    // were accepted negative, and refused with one).
    for (k, (input, t)) in f.inputs.iter().zip(&ordered).enumerate() {
        let keys_state = f
            .inputs
            .iter()
            .any(|i| i.state.as_ref().is_some_and(|s| s.key as usize == k));
        if let (true, Some(ids)) = (keys_state, t.labels) {
            crate::state::check_ids(&input.name, ids)?;
        }
    }
    // Labels inside their bounds.
    for (input, t) in f.inputs.iter().zip(&ordered) {
        if let (Some(b), Some(v)) = (&input.bound, t.labels) {
            let size = b.eval(&sizes);
            if let Some(pos) = v
                .iter()
                .position(|x| (*x < 0 || *x >= size) && Some(*x) != input.ignore)
            {
                return Err(CallError::LabelOutOfRange {
                    input: input.name.clone(),
                    position: unravel(pos, t.shape),
                    value: v[pos],
                    bound: f.show_dim(b),
                    size,
                    ignore: input.ignore,
                });
            }
        }
    }
    // Every tensor definition must have a sane extent (how many elements a call stores is the backend's
    // to check: [`check_elements`]).
    for t in &f.tensors {
        for i in &t.indices {
            let r = &f.index(*i).range;
            let n = r.eval(&sizes);
            if n < 0 {
                return Err(CallError::NegativeDim {
                    tensor: t.name.clone(),
                    dim: f.show_dim(r),
                    value: n,
                });
            }
        }
    }
    for v in &f.indices {
        let n = v.range.eval(&sizes);
        if n < 0 {
            return Err(CallError::NegativeDim {
                tensor: v.name.clone(),
                dim: f.show_dim(&v.range),
                value: n,
            });
        }
    }
    Ok((sizes, values))
}

/// What kind of mistake a [`CallError`] is: what the Python exceptions and the C status codes are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallErrorKind {
    /// A missing, unknown, repeated or state input, one of the wrong dtype, or a non-finite one.
    Input,
    /// A shape that disagrees with the signature or another input, or a tensor too large.
    Shape,
    /// A label or data-dependent subscript out of range.
    Label,
    /// An unknown, fixed or non-integer hyperparameter.
    Hyper,
    /// More memory than the budget allows.
    Memory,
    /// The device could not run the call.
    Device,
    /// A compiler limit hit at call time (never the input's fault).
    Internal,
}

impl CallError {
    /// The kind of mistake this is.
    pub fn kind(&self) -> CallErrorKind {
        use CallError::*;
        match self {
            MissingInput { .. } | UnknownInput { .. } | WrongDtype { .. } | StateGiven { .. } | NonFinite { .. } => {
                CallErrorKind::Input
            }
            RankMismatch { .. }
            | LengthMismatch { .. }
            | ShapeMismatch { .. }
            | NegativeDim { .. }
            | TooLarge { .. }
            | StateWidth { .. } => CallErrorKind::Shape,
            LabelOutOfRange { .. } | IndexOutOfRange { .. } => CallErrorKind::Label,
            UnknownHyper { .. } | HyperFixed { .. } | HyperNotInteger { .. } => CallErrorKind::Hyper,
            OverBudget { .. } => CallErrorKind::Memory,
            Device(_) => CallErrorKind::Device,
            Compile(_) => CallErrorKind::Internal,
            Extern { .. } => CallErrorKind::Input,
        }
    }
}

/// The values of `f`'s hyperparameters for a call that sets `hypers` (the others keep their defaults).
pub fn hyper_values(f: &Function, hypers: &BTreeMap<String, f64>) -> Result<Vec<f64>, CallError> {
    let mut values: Vec<f64> = f.hypers.iter().map(|h| h.default).collect();
    for (name, v) in hypers {
        let Some(k) = f.hypers.iter().position(|h| &h.name == name) else {
            let available = f.hypers.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(CallError::UnknownHyper {
                name: name.clone(),
                available: if available.is_empty() { "none".into() } else { available },
            });
        };
        if f.hypers[k].scalar == Scalar::Int && v.fract() != 0.0 {
            return Err(CallError::HyperNotInteger {
                name: name.clone(),
                value: *v,
            });
        }
        values[k] = *v;
    }
    Ok(values)
}

/// The first NaN or infinity among float inputs (in input-name order), as [`CallError::NonFinite`].
pub fn non_finite<'a>(inputs: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f64])>) -> Option<CallError> {
    for (name, shape, values) in inputs {
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            return Some(CallError::NonFinite {
                input: name.to_string(),
                position: unravel(at, shape),
                value: values[at],
                count: values.iter().filter(|v| !v.is_finite()).count(),
            });
        }
    }
    None
}

/// Row-major position of a flat offset.
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut pos = vec![0; shape.len()];
    for (k, d) in shape.iter().enumerate().rev() {
        if *d > 0 {
            pos[k] = flat % d;
            flat /= d;
        }
    }
    pos
}

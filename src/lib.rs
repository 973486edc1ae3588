#![warn(missing_docs)]
//! lossc: a declarative language (lx) and compiler for training objectives.
//!
//! The pipeline, one module per stage:
//! 1. [`syntax`]: text to a spanned AST (`grammar/lx.pest`).
//! 2. [`sema`]: names, `use std::…`, `fn` inlining, index-range inference, kind and shape checks; lowers
//!    to the IR. Every error is a [`diag::Diag`] with a stable code.
//! 3. [`ir`]: one typed, hash-consed expression DAG per loss over index variables; [`prims`] is the table
//!    of elementwise primitives (type rule and semantics in one place).
//! 4. [`backend`]: the f64 reference interpreter, the oracle of every other backend.
//! 5. [`call`] checks a call (shapes, labels, hyperparameters) before any backend runs;
//!    [`api`] and [`kernel`] tie it together for embedding; [`state`] keeps per-sample state between calls.

pub mod analyze;
pub mod api;
pub mod autodiff;
pub mod backend;
#[cfg(feature = "cli")]
pub mod bench;
pub mod call;
#[cfg(feature = "cli")]
pub mod cli;
pub mod data;
#[cfg(feature = "dfdx")]
pub mod dfdx;
pub mod diag;
pub mod embed;
pub mod externs;
pub mod gradcheck;
pub mod ir;
pub mod kernel;
#[cfg(feature = "cli")]
pub mod memory;
pub mod opt;
#[cfg(feature = "cli")]
pub mod plot;
pub mod prims;
#[cfg(feature = "cli")]
pub mod repl;
pub mod sema;
pub mod state;
pub mod stdlib;
pub mod syntax;

pub use api::{EvalError, Program};
pub use backend::interp::Evaluation;
pub use call::CallError;
pub use data::Tensor;
pub use diag::{Diag, Diags};
pub use embed::{Input, Workspace};
pub use kernel::{Backend, Compiler, DeviceTensor, Kernel};
pub use state::StateStore;

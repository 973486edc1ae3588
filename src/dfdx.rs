//! A lossc kernel as a [dfdx](https://docs.rs/dfdx/0.13) loss on its `Cpu` device (cargo feature `dfdx`).
//!
//! [`loss`] takes one differentiable dfdx tensor with its tape (the scores a model computed), the loss's
//! other inputs as slices ([`Input`]) and hyperparameters, and returns a rank-0 tensor on the same tape.
//! The forward call computes the loss and the gradient in one kernel call ([`Workspace::call`]); the
//! backward op the tape records adds that gradient, scaled by the loss's own gradient, into the gradient of
//! the scores, so `loss.backward()` and dfdx's optimizers work as with dfdx's own losses. (dfdx 0.13's CUDA
//! device needs a CUDA toolkit at build time; on a GPU use the `cuda` backend directly.)
//!
//! ```
//! use dfdx::prelude::*;
//! use lossc::Compiler;
//! use lossc::embed::Input;
//! let dev: Cpu = Default::default();
//! let kernel = Compiler::new().threads(1).compile_source("ce.lx",
//!     "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }")
//!     .unwrap().kernel(None).unwrap();
//! let mut workspace = kernel.workspace();
//! let scores: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(vec![0.0; 6], (2, 3));
//! let labels = [2i64, 0];
//! let loss = lossc::dfdx::loss(&mut workspace, "s", scores.leaky_trace(),
//!     &[Input::i64("y", &[2], &labels)], &Default::default()).unwrap();
//! assert!((loss.array() - 3f32.ln()).abs() < 1e-6);
//! let grads = loss.backward();
//! assert!((grads.get(&scores).as_vec()[2] + (1.0 - 1.0 / 3.0) / 2.0).abs() < 1e-6);
//! ```

use std::collections::BTreeMap;

use dfdx::prelude::{Cpu, HasShape, Merge, NoneTape, PutTape, Rank0, Shape, SplitTape, Tape, Tensor, TensorFrom};

use crate::call::CallError;
use crate::embed::{Input, Workspace};

/// The loss of `workspace`'s kernel with input `name` the dfdx tensor `x` (its elements read once, in
/// row-major order) and the other inputs `others`; a rank-0 tensor carrying `x`'s tape, whose backward adds
/// `d loss / d x` into `x`'s gradient. A bad call is the kernel's [`CallError`], before anything is
/// recorded.
pub fn loss<S: Shape, T: Tape<f32, Cpu> + Merge<NoneTape>>(
    workspace: &mut Workspace,
    name: &str,
    x: Tensor<S, f32, Cpu, T>,
    others: &[Input],
    hypers: &BTreeMap<String, f64>,
) -> Result<Tensor<Rank0, f32, Cpu, T>, CallError> {
    let (x, mut tape) = x.split_tape();
    let data = x.as_vec();
    let shape: Vec<usize> = x.shape().concrete().into();
    let mut grad = vec![0f32; data.len()];
    let mut inputs = others.to_vec();
    inputs.push(Input::f32(name, &shape, &data));
    let value = workspace.call(&inputs, hypers, &mut [(name, &mut grad)])?;
    let out: Tensor<Rank0, f32, Cpu> = x.device().tensor(value);
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let scale = grads.get(&out_ghost).as_vec().first().copied().unwrap_or(0.0);
        let into = grads.get_or_alloc_mut(&x_ghost)?;
        for (acc, g) in into.iter_mut().zip(&grad) {
            *acc += scale * g;
        }
        Ok(())
    });
    Ok(out.put_tape(tape))
}

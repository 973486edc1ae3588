//! Finite-difference checking of symbolic gradients, in f64, with the interpreter as the evaluator.
//!
//! For each checked element the central difference is taken with two step sizes, `h` and `2h`. Where the
//! two disagree the point sits next to a kink (a `relu`, `max`, mask or bracket flip) and the element is
//! skipped and counted, so random inputs need not avoid kinks by construction. The error of an element is
//! `|g - fd| / max(1, |g|, |fd|)`: relative for large gradients, absolute for small ones. `stopgrad(e)`
//! is held at its value at the base point while differencing, so surrogate losses check against the
//! gradient they define.

use std::collections::BTreeMap;

use crate::api::EvalError;
use crate::backend::interp::{self, Frozen, StopGrads};
use crate::call;
use crate::data::{Data, Tensor};
use crate::ir::Function;

/// The default tolerance on the error above.
pub const TOLERANCE: f64 = 1e-6;

/// The default tolerance for a gradient computed in f32 (the JIT, the CUDA backend).
pub const F32_TOLERANCE: f64 = 2e-3;

/// The result for one differentiable input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputCheck {
    /// The input's name.
    pub name: String,
    /// The largest error over the checked elements.
    pub max_error: f64,
    /// The element with that error (flat position), if any was checked.
    pub worst: Option<usize>,
    /// How many elements were checked.
    pub checked: usize,
    /// Elements skipped as lying next to a kink.
    pub skipped: usize,
}

/// Checks every differentiable input of `f` at `inputs`, looking at most `per_input` elements of each.
pub fn check(
    f: &Function,
    inputs: &BTreeMap<String, Tensor>,
    hypers: &BTreeMap<String, f64>,
    per_input: usize,
) -> Result<Vec<InputCheck>, EvalError> {
    let symbolic = crate::api::eval_grad(f, inputs, hypers)?;
    check_against(f, &symbolic, inputs, hypers, per_input)
}

/// [`check`] of the gradients in `symbolic` (computed by any backend) against the interpreter's finite
/// differences of `f`.
pub fn check_against(
    f: &Function,
    symbolic: &crate::Evaluation,
    inputs: &BTreeMap<String, Tensor>,
    hypers: &BTreeMap<String, f64>,
    per_input: usize,
) -> Result<Vec<InputCheck>, EvalError> {
    // The stopped parts of the loss are constants for its gradient: freeze them at the base point.
    let mut frozen = Frozen::new();
    // So are the outputs of selection externs (piecewise constant); a differentiable extern runs again
    // at every point.
    let base = crate::api::with_externs(f, inputs, hypers)?.map(|c| c.inputs);
    let rerun = f.externs.iter().any(|c| c.args.iter().any(|a| a.differentiable));
    {
        let bound = call::bind(f, base.as_ref().unwrap_or(inputs), hypers)?;
        interp::run_with(f, &bound, StopGrads::Record(&mut frozen))?;
    }
    let loss_at = |m: &BTreeMap<String, Tensor>| -> Result<f64, EvalError> {
        let completed = match &base {
            None => None,
            Some(_) if rerun => crate::api::with_externs(f, m, hypers)?.map(|c| c.inputs),
            // The selection's outputs at the base point, with the perturbed inputs.
            Some(base) => {
                let mut all = m.clone();
                all.extend((f.inputs.iter().filter(|i| !i.given())).map(|i| (i.name.clone(), base[&i.name].clone())));
                Some(all)
            }
        };
        let bound = call::bind(f, completed.as_ref().unwrap_or(m), hypers)?;
        Ok(interp::run_with(f, &bound, StopGrads::Replay(&frozen))?.loss)
    };
    let mut out = Vec::new();
    for (name, g) in &symbolic.grads {
        let x = &inputs[name];
        let Data::Float(values) = &x.data else { continue };
        let g = g.to_f64();
        let n = values.len();
        let step = (n / per_input.max(1)).max(1);
        let mut check = InputCheck {
            name: name.clone(),
            max_error: 0.0,
            worst: None,
            checked: 0,
            skipped: 0,
        };
        for pos in (0..n).step_by(step) {
            let h = 1e-5 * values[pos].abs().max(1.0);
            let fd = |h: f64| -> Result<f64, EvalError> {
                let mut m = inputs.clone();
                let at = |delta: f64, m: &mut BTreeMap<String, Tensor>| {
                    if let Some(Tensor {
                        data: Data::Float(v), ..
                    }) = m.get_mut(name)
                    {
                        v[pos] = values[pos] + delta;
                    }
                };
                at(h, &mut m);
                let plus = loss_at(&m)?;
                at(-h, &mut m);
                let minus = loss_at(&m)?;
                Ok((plus - minus) / (2.0 * h))
            };
            let (fd1, fd2) = (fd(h)?, fd(2.0 * h)?);
            let scale = fd1.abs().max(g[pos].abs()).max(1.0);
            if !(fd1.is_finite() && fd2.is_finite()) || (fd1 - fd2).abs() / scale > 1e-5 {
                check.skipped += 1;
                continue;
            }
            let err = (g[pos] - fd1).abs() / scale;
            let err = if err.is_nan() { f64::INFINITY } else { err };
            check.checked += 1;
            if err > check.max_error || check.worst.is_none() {
                check.max_error = check.max_error.max(err);
                check.worst = Some(pos);
            }
        }
        out.push(check);
    }
    Ok(out)
}

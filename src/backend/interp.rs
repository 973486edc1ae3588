//! The reference interpreter: evaluates the IR in f64, directly from its definition.
//!
//! Semantics fixed here (every backend must match): tensors are materialized in definition order; `select`,
//! `&&` and `||` evaluate only the operand they need (so a guarded load never runs); a reduction over an
//! empty set gives sum 0, prod 1, count 0, max -inf, min +inf, logsumexp -inf and mean NaN; `max`/`min`
//! propagate NaN; `logsumexp` subtracts the maximum. Subscripts are bounds-checked: a subscript outside its
//! axis is a [`CallError::IndexOutOfRange`], never a wild read.
//!
//! Reductions are memoized on the values of their free indices, so a reduction that does not depend on an
//! enclosing index is computed once, not once per iteration. Any other operation that several nodes read
//! keeps its last value with the values of its free indices, so a shared sub-expression is computed once
//! per point, not once per path to it (a chain of `let`s inlined into their gradient has exponentially
//! many paths).

use std::collections::HashMap;

use crate::call::{Bound, CallError};
use crate::data::{Data, Tensor};
use crate::ir::{Expr, Function, IndexId, NodeId, ReduceOp, Role, Scalar, TensorRef, Value, table_slot, table_value};
use crate::prims::Prim;

/// What one evaluation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The loss (for a per-sample loss, the cotangent-weighted sum of its values).
    pub loss: f64,
    /// Extra outputs in declaration order.
    pub outputs: Vec<(String, Tensor)>,
    /// Gradients of the loss by input name (present when the function was differentiated).
    pub grads: Vec<(String, Tensor)>,
}

/// Values of `stopgrad` nodes, keyed by node and the values of its free indices.
pub type Frozen = HashMap<(NodeId, Vec<i64>), Value>;

/// How `stopgrad(e)` is evaluated: as `e` (live), recording each value, or replaying recorded values.
/// Replaying makes a finite-difference check see the function the gradient is of: a surrogate whose
/// stopped parts are constants.
pub enum StopGrads<'a> {
    /// Evaluated as the expression inside.
    Live,
    /// Evaluated, and each value recorded.
    Record(&'a mut Frozen),
    /// Replayed from the record (the expression is not evaluated).
    Replay(&'a Frozen),
}

/// Evaluates every tensor of `f` and returns the loss and outputs.
pub fn run(f: &Function, call: &Bound) -> Result<Evaluation, CallError> {
    run_with(f, call, StopGrads::Live)
}

/// About how many bytes [`run`] allocates at these dimension sizes: every tensor, one value per element.
pub fn bytes_needed(f: &Function, sizes: &[i64]) -> u64 {
    (f.tensors.iter())
        .map(|t| f.elements(t, sizes))
        .fold(0, u64::saturating_add)
        .saturating_mul(std::mem::size_of::<Value>() as u64)
}

/// [`run`], with a choice of how `stopgrad` is evaluated.
pub fn run_with(f: &Function, call: &Bound, stopgrads: StopGrads) -> Result<Evaluation, CallError> {
    crate::call::check_elements(f, &call.sizes, |_| true)?;
    let mut it = Interp {
        f,
        call,
        tensors: Vec::new(),
        env: vec![0; f.indices.len()],
        memo: HashMap::new(),
        shared: shared_prims(f),
        stopgrads,
    };
    for t in &f.tensors {
        let shape: Vec<usize> = t
            .indices
            .iter()
            .map(|i| f.index(*i).range.eval(&call.sizes) as usize)
            .collect();
        let count: usize = shape.iter().product();
        let mut data = Vec::with_capacity(count);
        let mut pos = vec![0usize; shape.len()];
        for _ in 0..count {
            for (i, p) in t.indices.iter().zip(&pos) {
                it.env[i.index()] = *p as i64;
            }
            data.push(it.eval(t.body)?);
            for k in (0..pos.len()).rev() {
                pos[k] += 1;
                if pos[k] < shape[k] {
                    break;
                }
                pos[k] = 0;
            }
        }
        it.tensors.push(Table { shape, data });
    }
    let mut loss = f64::NAN;
    let mut outputs = Vec::new();
    let mut grads = Vec::new();
    for (t, table) in f.tensors.iter().zip(&it.tensors) {
        match t.role {
            Role::Loss => loss = table.data[0].as_f64(),
            Role::Output => outputs.push((
                t.name.clone(),
                Tensor::float(table.shape.clone(), table.data.iter().map(|v| v.as_f64()).collect()),
            )),
            Role::Grad(i) => grads.push((
                f.inputs[i as usize].name.clone(),
                Tensor::gradient(
                    table.shape.clone(),
                    table.data.iter().map(|v| v.as_f64()).collect(),
                    f.inputs[i as usize].elem,
                ),
            )),
            Role::Let => {}
        }
    }
    Ok(Evaluation { loss, outputs, grads })
}

struct Table {
    shape: Vec<usize>,
    data: Vec<Value>,
}

struct Interp<'a> {
    f: &'a Function,
    call: &'a Bound<'a>,
    tensors: Vec<Table>,
    env: Vec<i64>,
    memo: HashMap<(NodeId, Vec<i64>), Value>,
    /// Per node, what is kept of its last evaluation.
    shared: Vec<Kept>,
    stopgrads: StopGrads<'a>,
}

/// What [`Interp`] keeps of a node's last evaluation.
enum Kept {
    /// Nothing: the node is computed at every use.
    Never,
    /// The node is shared, and not yet computed.
    Nothing,
    /// The node is shared: its last value, at these values of its free indices.
    Last(Vec<i64>, Value),
}

/// Which nodes [`Interp`] keeps the last value of: operations (not reductions, which are memoized on their
/// own) that are operands of two or more nodes, or twice of one.
fn shared_prims(f: &Function) -> Vec<Kept> {
    let mut uses = vec![0u8; f.nodes().len()];
    for n in f.nodes() {
        for op in n.expr.operands() {
            uses[op.index()] = uses[op.index()].saturating_add(1);
        }
    }
    (f.nodes().iter().zip(uses))
        .map(|(n, u)| match n.expr {
            Expr::Prim { .. } if u >= 2 => Kept::Nothing,
            _ => Kept::Never,
        })
        .collect()
}

impl Interp<'_> {
    fn eval(&mut self, id: NodeId) -> Result<Value, CallError> {
        let free = &self.f.node(id).free;
        match &self.shared[id.index()] {
            Kept::Never => return self.compute(id),
            Kept::Last(at, v) if at.iter().zip(free).all(|(a, i)| *a == self.env[i.index()]) => return Ok(*v),
            _ => {}
        }
        let v = self.compute(id)?;
        let at = free.iter().map(|i| self.env[i.index()]).collect();
        self.shared[id.index()] = Kept::Last(at, v);
        Ok(v)
    }

    fn compute(&mut self, id: NodeId) -> Result<Value, CallError> {
        let node = self.f.node(id);
        Ok(match &node.expr {
            Expr::Float(bits) => Value::F(f64::from_bits(*bits)),
            Expr::Int(i) => Value::I(*i),
            Expr::Bool(b) => Value::B(*b),
            Expr::Index(i) => Value::I(self.env[i.index()]),
            Expr::Size(d) => Value::I(d.eval(&self.call.sizes)),
            Expr::Table { at, values } => {
                let at = self.eval(*at)?.as_i64();
                table_value(node.scalar, values[table_slot(at, values.len())])
            }
            Expr::Hyper(h) => {
                let v = self.call.hypers[*h as usize];
                if node.scalar == Scalar::Int {
                    Value::I(v as i64)
                } else {
                    Value::F(v)
                }
            }
            Expr::Load { tensor, subs } => {
                let mut offset = 0usize;
                let shape: Vec<usize> = match tensor {
                    TensorRef::Input(i) => self.call.inputs[*i as usize].shape.clone(),
                    TensorRef::Def(t) => self.tensors[t.index()].shape.clone(),
                };
                for (axis, (s, size)) in subs.iter().zip(&shape).enumerate() {
                    let v = self.eval(*s)?.as_i64();
                    if v < 0 || v as usize >= *size {
                        return Err(CallError::IndexOutOfRange {
                            tensor: self.f.ref_name(*tensor).to_string(),
                            axis,
                            value: v,
                            size: *size,
                            span: self.f.span(id),
                        });
                    }
                    offset = offset * size + v as usize;
                }
                match tensor {
                    TensorRef::Input(i) => match &self.call.inputs[*i as usize].data {
                        Data::Float(v) => Value::F(v[offset]),
                        Data::Int(v) => Value::I(v[offset]),
                    },
                    TensorRef::Def(t) => self.tensors[t.index()].data[offset],
                }
            }
            Expr::Prim {
                prim: Prim::Select,
                args,
            } => {
                let c = self.eval(args[0])?.as_bool();
                self.eval(if c { args[1] } else { args[2] })?
            }
            Expr::Prim { prim: Prim::And, args } => {
                Value::B(self.eval(args[0])?.as_bool() && self.eval(args[1])?.as_bool())
            }
            Expr::Prim { prim: Prim::Or, args } => {
                Value::B(self.eval(args[0])?.as_bool() || self.eval(args[1])?.as_bool())
            }
            Expr::Prim {
                prim: Prim::StopGrad,
                args,
            } => {
                let key = |it: &Self| (id, node.free.iter().map(|i| it.env[i.index()]).collect::<Vec<_>>());
                match &mut self.stopgrads {
                    StopGrads::Replay(frozen) => {
                        if let Some(v) = frozen.get(&key(self)) {
                            return Ok(*v);
                        }
                        self.eval(args[0])?
                    }
                    StopGrads::Live => self.eval(args[0])?,
                    StopGrads::Record(_) => {
                        let v = self.eval(args[0])?;
                        let k = key(self);
                        if let StopGrads::Record(frozen) = &mut self.stopgrads {
                            frozen.insert(k, v);
                        }
                        v
                    }
                }
            }
            Expr::Prim { prim, args } => {
                let mut vals = [Value::I(0); crate::prims::MAX_ARITY];
                for (k, a) in args.iter().enumerate() {
                    vals[k] = self.eval(*a)?;
                }
                prim.eval(&vals[..args.len()])
            }
            Expr::Reduce {
                op,
                indices,
                mask,
                body,
            } => {
                let key = (id, node.free.iter().map(|i| self.env[i.index()]).collect::<Vec<_>>());
                if let Some(v) = self.memo.get(&key) {
                    return Ok(*v);
                }
                let v = self.reduce(*op, indices, *mask, *body)?;
                self.memo.insert(key, v);
                v
            }
        })
    }

    fn reduce(
        &mut self,
        op: ReduceOp,
        indices: &[IndexId],
        mask: Option<NodeId>,
        body: NodeId,
    ) -> Result<Value, CallError> {
        let ranges: Vec<i64> = indices
            .iter()
            .map(|i| self.f.index(*i).range.eval(&self.call.sizes))
            .collect();
        let saved: Vec<i64> = indices.iter().map(|i| self.env[i.index()]).collect();
        let total: i64 = ranges.iter().product();
        let mut pos = vec![0i64; indices.len()];
        let mut values = Vec::new();
        let mut count: i64 = 0;
        let mut positions = Vec::new();
        for _ in 0..total {
            for (i, p) in indices.iter().zip(&pos) {
                self.env[i.index()] = *p;
            }
            let take = match mask {
                Some(m) => self.eval(m)?.as_bool(),
                None => true,
            };
            if take {
                let v = self.eval(body)?;
                match op {
                    ReduceOp::Count => count += i64::from(v.as_bool()),
                    ReduceOp::ArgMax | ReduceOp::ArgMin => {
                        values.push(v.as_f64());
                        positions.push(pos.iter().zip(&ranges).fold(0i64, |acc, (p, r)| acc * r + p));
                    }
                    _ => values.push(v.as_f64()),
                }
            }
            for k in (0..pos.len()).rev() {
                pos[k] += 1;
                if pos[k] < ranges[k] {
                    break;
                }
                pos[k] = 0;
            }
        }
        for (i, s) in indices.iter().zip(saved) {
            self.env[i.index()] = s;
        }
        Ok(match op {
            ReduceOp::Count => Value::I(count),
            ReduceOp::Sum => Value::F(values.iter().sum()),
            ReduceOp::Mean => Value::F(values.iter().sum::<f64>() / values.len() as f64),
            ReduceOp::Prod => Value::F(values.iter().product()),
            ReduceOp::Max => Value::F(fold_nan(&values, f64::NEG_INFINITY, f64::max)),
            ReduceOp::Min => Value::F(fold_nan(&values, f64::INFINITY, f64::min)),
            ReduceOp::ArgMax | ReduceOp::ArgMin => {
                let better = |a: f64, b: f64| if op == ReduceOp::ArgMax { a > b } else { a < b };
                let mut best: Option<usize> = None;
                for (k, v) in values.iter().enumerate() {
                    if v.is_nan() {
                        best = Some(k);
                        break;
                    }
                    if best.is_none_or(|b| better(*v, values[b])) {
                        best = Some(k);
                    }
                }
                Value::I(best.map_or(-1, |b| positions[b]))
            }
            ReduceOp::LogSumExp => {
                let m = fold_nan(&values, f64::NEG_INFINITY, f64::max);
                if m.is_nan() || m.is_infinite() {
                    Value::F(m)
                } else {
                    Value::F(m + values.iter().map(|x| (x - m).exp()).sum::<f64>().ln())
                }
            }
        })
    }
}

fn fold_nan(values: &[f64], init: f64, f: fn(f64, f64) -> f64) -> f64 {
    if values.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    values.iter().copied().fold(init, f)
}

//! The loop IR: what a code generator needs beyond the expression DAG.
//!
//! A [`Plan`] lists, in dependency order, one loop [`Nest`] per tensor of an optimized function: the loops
//! over its head indices (the first one may run in parallel: elements along it are independent) and the
//! element expression to compute and store. Reductions inside an element stay expression nodes; a code
//! generator turns each into an inner loop with an accumulator. Every tensor is materialized in its own
//! [`Buffer`]; the optimizer has already decided what is recomputed inline and what gets a tensor.
//! The Cranelift JIT consumes it; a CUDA C generator would map each nest to a kernel launch.

use crate::ir::{Dim, ElemTy, Function, IndexId, NodeId, Role, Scalar, TensorId, TensorRef};

/// A buffer: an input or a tensor, with its element kind and shape.
#[derive(Clone, Debug)]
pub struct Buffer {
    pub name: String,
    pub of: TensorRef,
    /// `Float` buffers hold f32; `Int` and `Bool` buffers hold i64.
    pub scalar: Scalar,
    pub shape: Vec<Dim>,
}

/// One tensor's loop nest.
#[derive(Clone, Debug)]
pub struct Nest {
    pub tensor: TensorId,
    pub head: Vec<(IndexId, Dim)>,
    pub body: NodeId,
    pub role: Role,
    /// Whether iterations of the outermost loop are independent (always, for a materialized tensor).
    pub parallel: bool,
}

/// Buffers (inputs, then one per tensor) and nests in execution order.
#[derive(Clone, Debug)]
pub struct Plan {
    pub buffers: Vec<Buffer>,
    pub nests: Vec<Nest>,
}

impl Plan {
    pub fn new(f: &Function) -> Plan {
        let mut buffers: Vec<Buffer> = f
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| Buffer {
                name: input.name.clone(),
                of: TensorRef::Input(i as u32),
                scalar: if input.elem == ElemTy::Idx {
                    Scalar::Int
                } else {
                    Scalar::Float
                },
                shape: input.shape.clone(),
            })
            .collect();
        let mut nests = Vec::new();
        for (k, t) in f.tensors.iter().enumerate() {
            let id = TensorId(k as u32);
            buffers.push(Buffer {
                name: t.name.clone(),
                of: TensorRef::Def(id),
                scalar: t.scalar,
                shape: f.tensor_shape(id),
            });
            nests.push(Nest {
                tensor: id,
                head: t.indices.iter().map(|i| (*i, f.index(*i).range.clone())).collect(),
                body: t.body,
                role: t.role,
                parallel: !t.indices.is_empty(),
            });
        }
        Plan { buffers, nests }
    }

    /// The buffer of an input or tensor.
    pub fn buffer_of(&self, f: &Function, r: TensorRef) -> usize {
        match r {
            TensorRef::Input(i) => i as usize,
            TensorRef::Def(t) => f.inputs.len() + t.index(),
        }
    }
}

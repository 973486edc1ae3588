//! Ahead-of-time code: the groups of one or more kernels compiled by the same lowering as the JIT's into
//! one relocatable object (`cranelift-object`), position-independent, each group a hidden symbol
//! `lossc_<loss>_group<k>` for a library's driver ([`crate::backend::aot`]) to call, each group's vector
//! constants a data object of its own. The math helpers the code calls are the driver's, the 8-lane row
//! helpers the library's own copy (aot/rows_lib.rs); a matrix product runs as its group's native loops,
//! not as sgemm.

use cranelift_module::{Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};

use super::JitError;
use super::build::{Functions, Naming, Schedule, lower_groups, target};
use crate::backend::loops::{Contraction, Plan};
use crate::ir::Function;

/// One kernel in an object: its optimized function, plan, and per group the symbol and schedule.
pub struct ObjectKernel {
    /// The symbol prefix of its groups: `lossc_<name>_`.
    pub prefix: String,
    /// The optimized loss-and-gradient function.
    pub function: Function,
    /// Its loop plan.
    pub plan: Plan,
    /// Per group: how its chunks are sized.
    pub schedules: Vec<Schedule>,
    /// Per group: the matrix product it computes, if it is one (a library runs it as sgemm).
    pub products: Vec<Option<Contraction>>,
}

impl ObjectKernel {
    /// The symbol of group `k`'s function.
    pub fn group_symbol(&self, k: usize) -> String {
        format!("{}group{k}", self.prefix)
    }
}

/// Compiles every group of each `(name, optimized function)` into one object file for this machine's
/// CPU; returns its bytes and the kernels.
/// `exp_rows`: whether the code calls the 8-lane row helpers (which the library must then link).
pub fn object(kernels: &[(&str, &Function)], exp_rows: bool) -> Result<(Vec<u8>, Vec<ObjectKernel>), JitError> {
    let err = |e: &dyn std::fmt::Display| JitError(e.to_string());
    let (isa, fma) = target(true)?;
    let compile_isa = isa.clone();
    let builder = ObjectBuilder::new(isa, "lossc", cranelift_module::default_libcall_names()).map_err(|e| err(&e))?;
    let mut module = ObjectModule::new(builder);
    let mut out = Vec::new();
    for (name, f) in kernels {
        let prefix = format!("lossc_{name}_");
        let naming = Naming {
            prefix: &prefix,
            linkage: Linkage::Hidden,
            host_lanes: None,
        };
        let lowered = lower_groups(
            &mut module,
            &*compile_isa,
            fma,
            f,
            Plan::new(f),
            naming,
            None,
            exp_rows,
            Functions::All,
        )?;
        for code in &lowered.machine_code {
            module
                .define_function_bytes(code.id, code.alignment, &code.bytes, &code.relocs)
                .map_err(|e| err(&format!("{e:?}")))?;
        }
        out.push(ObjectKernel {
            prefix,
            function: (*f).clone(),
            plan: lowered.plan,
            schedules: lowered.schedules,
            products: lowered.products,
        });
    }
    let bytes = module.finish().emit().map_err(|e| err(&e))?;
    Ok((bytes, out))
}

/// Bytes per element of a buffer of this scalar type in the generated code (f32 floats, i64 integers,
/// i32 condition masks).
pub fn elem_bytes(scalar: crate::ir::Scalar) -> usize {
    super::Lower::elem_type(scalar).bytes() as usize
}

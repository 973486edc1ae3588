//! Stage 6: backends. Each evaluates a checked function on a [`crate::call::Bound`] call; the f64
//! interpreter is the oracle every other backend is tested against.

#[cfg(feature = "jit")]
pub mod aot;
pub mod cuda;
pub mod interp;
#[cfg(feature = "jit")]
pub mod jit;
pub mod loops;

//! Integer index arithmetic folded as it is emitted: `0 * n + i` is `i`, `4 * 16` is `64`. Addresses are
//! flat positions times element sizes, and most of their terms are constants (a sorting network's
//! [r, 16, 16] tensors: two of three sizes); emitting them as written gave Cranelift three times the
//! instructions to clean up, which was most of its compile time on unrolled programs.

use cranelift_codegen::ir::{InstBuilder, InstructionData, Opcode, Value, ValueDef, types};

use super::*;

impl Lower<'_, '_> {
    /// The constant an i64 value was emitted as, if it was.
    pub(super) fn known_int(&self, v: Value) -> Option<i64> {
        let dfg = &self.b.func.dfg;
        if dfg.value_type(v) != types::I64 {
            return None;
        }
        match dfg.value_def(v) {
            ValueDef::Result(inst, 0) => match dfg.insts[inst] {
                InstructionData::UnaryImm {
                    opcode: Opcode::Iconst,
                    imm,
                } => Some(imm.bits()),
                _ => None,
            },
            _ => None,
        }
    }

    /// An i64 constant.
    pub(super) fn int(&mut self, c: i64) -> Value {
        self.b.ins().iconst(types::I64, c)
    }

    /// `a + b` on i64 values, folded where either is a known constant.
    pub(super) fn int_add(&mut self, a: Value, b: Value) -> Value {
        match (self.known_int(a), self.known_int(b)) {
            (Some(x), Some(y)) => self.int(x.wrapping_add(y)),
            (Some(0), None) => b,
            (None, Some(0)) => a,
            _ => self.b.ins().iadd(a, b),
        }
    }

    /// `a + c` for a constant `c`.
    pub(super) fn int_add_imm(&mut self, a: Value, c: i64) -> Value {
        match self.known_int(a) {
            _ if c == 0 => a,
            Some(x) => self.int(x.wrapping_add(c)),
            None => self.b.ins().iadd_imm_s(a, c),
        }
    }

    /// `a * b` on i64 values, folded where either is a known constant.
    pub(super) fn int_mul(&mut self, a: Value, b: Value) -> Value {
        match (self.known_int(a), self.known_int(b)) {
            (Some(x), Some(y)) => self.int(x.wrapping_mul(y)),
            (Some(0), None) | (None, Some(0)) => self.int(0),
            (Some(1), None) => b,
            (None, Some(1)) => a,
            _ => self.b.ins().imul(a, b),
        }
    }

    /// `a * c` for a constant `c`.
    pub(super) fn int_mul_imm(&mut self, a: Value, c: i64) -> Value {
        match self.known_int(a) {
            _ if c == 1 => a,
            _ if c == 0 => self.int(0),
            Some(x) => self.int(x.wrapping_mul(c)),
            None => self.b.ins().imul_imm_s(a, c),
        }
    }
}

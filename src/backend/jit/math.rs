//! Inline f32 math in CLIF, lane-generic: every function takes `lanes` (x is an f32x4 and so is the result,
//! or x is a scalar f32). The 4-wide vector loops use all of them; scalar code uses exp and sigmoid, and
//! calls Rust's f32 `ln`, `ln_1p`, `tanh`, `atan` and softplus for the others (measured 2x faster there than
//! these select-based forms, whose point is to run four lanes at once).
//!
//! All are branch-free (special cases by selects), so vectorized loops may evaluate every lane. Maximum
//! relative errors against f64 measured over f32 inputs (tests/jit.rs `math_functions_are_accurate`
//! asserts the bound in brackets, and prints the measurement): exp 8.0e-8 on [-87, 88] [1.5e-7]; log 7.6e-8 on [1e-30, 1e30]
//! [1.5e-7]; log1p 1.6e-7 on [-0.9, 100] [3e-7]; tanh 1.3e-7 on [-10, 10] [2.5e-7]; sigmoid 1.4e-7 on
//! [-30, 30] [2.5e-7]; softplus 1.5e-7 on [-30, 80] [3e-7]; atan 1.9e-7 on [-3, 3] [2.5e-7]. (f32 itself rounds at 6e-8.) Polynomials
//! and range reductions use fused multiply-adds where the target has FMA (x86-64 with AVX2 here; the
//! numbers above are with FMA), else a multiply and an add.

use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{self, InstBuilder, MemFlagsData, Value, types};

use super::{LanePlace, Lower};

include!("exp_constants.rs");

/// The Cephes `logf` polynomial P in ln(1 + f) = f - f²/2 + f³ P(f), highest degree first.
const LOG_COEFFICIENTS: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461_1e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];

/// The Cephes `tanhf` polynomial P in tanh x = x + x³ P(x²) for |x| < 0.625, highest degree first.
const TANH_COEFFICIENTS: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];

/// The Cephes `atanf` polynomial P in atan x = x + x³ P(x²) for |x| ≤ tan(π/8), highest degree first.
const ATAN_COEFFICIENTS: [f32; 4] = [8.053_744_5e-2, -1.387_768_6e-1, 1.997_771_1e-1, -3.333_295e-1];

impl Lower<'_, '_> {
    /// `e^x` in f32, inline: x clamped to [`EXP_LOWEST`, `EXP_HIGHEST`] (NaN kept), x = n ln2 + r with
    /// |r| <= ln2/2 (n rounded with the 1.5 * 2^23 trick, ln2 split in two parts), e^r = 1 + r + r^2 Q(r)
    /// ([`EXP_COEFFICIENTS`]), times 2^n built in the exponent bits: the clamp makes that 2^n exactly 0
    /// below the range (results flush to 0 from about -87.7) and +inf above it. NaN stays NaN. No
    /// branches; about 1 ulp (measured against f64 in `tests/jit.rs`). `lanes`: x is an f32x4 and so
    /// is the result.
    pub(super) fn exp_lanes(&mut self, x: Value, lanes: bool) -> Value {
        let (fty, ity) = Self::math_types(lanes);
        let x = self.clamp_keeping_nan(x, EXP_LOWEST, EXP_HIGHEST, lanes);
        let log2e = self.fk(std::f32::consts::LOG2_E, lanes);
        let magic = self.fk(EXP_MAGIC, lanes);
        let shifted = self.mul_add(x, log2e, magic);
        let n = self.b.ins().fsub(shifted, magic);
        let (ln2_hi, ln2_lo) = (self.fk(EXP_LN2_HI, lanes), self.fk(EXP_LN2_LO, lanes));
        let r = self.mul_add(n, ln2_hi, x);
        let r = self.mul_add(n, ln2_lo, r);
        let q = self.horner(&EXP_COEFFICIENTS, r, lanes);
        let r2 = self.b.ins().fmul(r, r);
        let y = self.mul_add(r2, q, r);
        let one = self.fk(1.0, lanes);
        let p = self.b.ins().fadd(y, one);
        let flags = MemFlagsData::new().with_endianness(ir::Endianness::Little);
        let nbits = self.b.ins().bitcast(ity, flags, shifted);
        let bias = self.ik(127 - 0x4B40_0000, lanes);
        let biased = self.b.ins().iadd(nbits, bias);
        let bits = self.b.ins().ishl_imm_s(biased, 23);
        let scale = self.b.ins().bitcast(fty, flags, bits);
        self.b.ins().fmul(p, scale)
    }

    /// `x` limited to `lo..=hi`, a NaN left as it is: one `maxps` and one `minps` for lanes (Cranelift's
    /// pattern for them, x64 lower.isle), two selects for a scalar.
    fn clamp_keeping_nan(&mut self, x: Value, lo: f32, hi: f32, lanes: bool) -> Value {
        let (lo, hi) = (self.fk(lo, lanes), self.fk(hi, lanes));
        // `x < lo ? lo : x`, then `hi < x ? hi : x`: false for NaN, which stays.
        let below = self.b.ins().fcmp(FloatCC::LessThan, x, lo);
        let x = self.choose(below, lo, x, lanes);
        let above = self.b.ins().fcmp(FloatCC::LessThan, hi, x);
        self.choose(above, hi, x, lanes)
    }

    /// `a * b + c`: one fused operation where the target has FMA.
    pub(super) fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let t = self.b.ins().fmul(a, b);
            self.b.ins().fadd(t, c)
        }
    }

    /// `c[0] x^(n-1) + … + c[n-1]` by Horner's rule.
    fn horner(&mut self, coefficients: &[f32], x: Value, lanes: bool) -> Value {
        let mut p = self.fk(coefficients[0], lanes);
        for c in &coefficients[1..] {
            let ck = self.fk(*c, lanes);
            p = self.mul_add(p, x, ck);
        }
        p
    }

    /// The f32 type and the matching integer type of a lane-generic value.
    fn math_types(lanes: bool) -> (ir::Type, ir::Type) {
        if lanes {
            (types::F32X4, types::I32X4)
        } else {
            (types::F32, types::I32)
        }
    }

    /// A float constant, in every lane when `lanes`.
    pub(super) fn fk(&mut self, v: f32, lanes: bool) -> Value {
        match lanes {
            true => self.lanes_constant(types::F32X4, [v.to_bits(); 4]),
            false => self.b.ins().f32const(v),
        }
    }

    /// An i32 constant, in every lane when `lanes`.
    fn ik(&mut self, v: i32, lanes: bool) -> Value {
        match lanes {
            true => self.lanes_constant(types::I32X4, [v as u32; 4]),
            false => self.b.ins().iconst(types::I32, i64::from(v)),
        }
    }

    /// The bits of `v` when it is a constant instruction (`f32const`, or `iconst` as two's complement).
    pub(super) fn constant_bits(&self, v: Value) -> Option<u64> {
        let ir::ValueDef::Result(inst, _) = self.b.func.dfg.value_def(v) else {
            return None;
        };
        match self.b.func.dfg.insts[inst] {
            ir::InstructionData::UnaryIeee32 { imm, .. } => Some(u64::from(imm.bits())),
            ir::InstructionData::UnaryImm { imm, .. } => Some(imm.bits() as u64),
            _ => None,
        }
    }

    /// A vector constant (`ty` is f32x4 or i32x4), loaded from the [`super::LanePool`] in the preheader of
    /// the innermost loop around the current position (once per loop; here when no loop is open).
    pub(super) fn lanes_constant(&mut self, ty: ir::Type, lanes: [u32; 4]) -> Value {
        if let Some(v) = self.preheaders.last().and_then(|(_, loaded)| loaded.get(&(ty, lanes))) {
            return *v;
        }
        let place = self.lanes.add(lanes);
        let offset = match place {
            LanePlace::Host(_, offset) | LanePlace::Object(_, offset) => offset,
        };
        let v = match self.preheaders.last() {
            Some((entry, _)) => {
                let mut pos = FuncCursor::new(self.b.func).at_inst(*entry);
                let base = lane_base(pos.ins(), place);
                pos.ins().load(ty, MemFlagsData::trusted(), base, offset)
            }
            None => {
                let base = lane_base(self.b.ins(), place);
                self.b.ins().load(ty, MemFlagsData::trusted(), base, offset)
            }
        };
        if let Some((_, loaded)) = self.preheaders.last_mut() {
            loaded.insert((ty, lanes), v);
        }
        v
    }

    /// `c ? a : b` for a comparison result `c` (a lane mask when `lanes`).
    fn choose(&mut self, c: Value, a: Value, b: Value, lanes: bool) -> Value {
        if lanes {
            let flags = MemFlagsData::new().with_endianness(ir::Endianness::Little);
            let m = self.b.ins().bitcast(types::F32X4, flags, c);
            self.b.ins().bitselect(m, a, b)
        } else {
            self.b.ins().select(c, a, b)
        }
    }

    fn fcmp_k(&mut self, cc: FloatCC, x: Value, v: f32, lanes: bool) -> Value {
        let k = self.fk(v, lanes);
        self.b.ins().fcmp(cc, x, k)
    }

    /// `ln x`: Cephes `logf`. x = m 2^e with m in [√½, √2) (subnormals scaled by 2^23 first),
    /// ln(m) = f - f²/2 + f³ P(f) with f = m - 1 (P of degree 8), plus e ln 2 in two parts.
    /// ln 0 = -inf, ln of a negative = NaN, ln inf = inf, NaN stays NaN.
    pub(super) fn log_lanes(&mut self, x: Value, lanes: bool) -> Value {
        let (fty, ity) = Self::math_types(lanes);
        let flags = MemFlagsData::new().with_endianness(ir::Endianness::Little);
        let tiny = self.fcmp_k(FloatCC::LessThan, x, f32::MIN_POSITIVE, lanes);
        let two23 = self.fk(8_388_608.0, lanes);
        let scaled = self.b.ins().fmul(x, two23);
        let xs = self.choose(tiny, scaled, x, lanes);
        let (minus23, zero) = (self.fk(-23.0, lanes), self.fk(0.0, lanes));
        let e_bias = self.choose(tiny, minus23, zero, lanes);
        let bits = self.b.ins().bitcast(ity, flags, xs);
        let shifted = self.b.ins().ushr_imm_u(bits, 23);
        let exp_mask = self.ik(0xff, lanes);
        let e_int = self.b.ins().band(shifted, exp_mask);
        let man_mask = self.ik(0x007f_ffff, lanes);
        let half_bits = self.ik(0x3f00_0000, lanes);
        let man = self.b.ins().band(bits, man_mask);
        let man = self.b.ins().bor(man, half_bits);
        let m = self.b.ins().bitcast(fty, flags, man); // in [0.5, 1)
        let e = self.b.ins().fcvt_from_sint(fty, e_int);
        let k126 = self.fk(126.0, lanes);
        let e = self.b.ins().fsub(e, k126);
        let e = self.b.ins().fadd(e, e_bias);
        let small = self.fcmp_k(FloatCC::LessThan, m, std::f32::consts::FRAC_1_SQRT_2, lanes);
        let one = self.fk(1.0, lanes);
        let e_less = self.b.ins().fsub(e, one);
        let e = self.choose(small, e_less, e, lanes);
        let m2 = self.b.ins().fadd(m, m);
        let m_adj = self.choose(small, m2, m, lanes);
        let f = self.b.ins().fsub(m_adj, one);
        let z = self.b.ins().fmul(f, f);
        let p = self.horner(&LOG_COEFFICIENTS, f, lanes);
        let y = self.b.ins().fmul(p, f);
        let y = self.b.ins().fmul(y, z);
        let lo = self.fk(-2.121_944_4e-4, lanes);
        let t = self.b.ins().fmul(e, lo);
        let y = self.b.ins().fadd(y, t);
        let h = self.fk(0.5, lanes);
        let hz = self.b.ins().fmul(h, z);
        let y = self.b.ins().fsub(y, hz);
        let r = self.b.ins().fadd(f, y);
        let hi = self.fk(0.693_359_4, lanes);
        let t = self.b.ins().fmul(e, hi);
        let r = self.b.ins().fadd(r, t);
        // Special values.
        let is_zero = self.fcmp_k(FloatCC::Equal, x, 0.0, lanes);
        let neg_inf = self.fk(f32::NEG_INFINITY, lanes);
        let r = self.choose(is_zero, neg_inf, r, lanes);
        let negative = self.fcmp_k(FloatCC::LessThan, x, 0.0, lanes);
        let nan = self.fk(f32::NAN, lanes);
        let r = self.choose(negative, nan, r, lanes);
        let is_inf = self.fcmp_k(FloatCC::Equal, x, f32::INFINITY, lanes);
        let r = self.choose(is_inf, x, r, lanes);
        let unordered = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        self.choose(unordered, x, r, lanes)
    }

    /// `ln(1 + x)`: ln(u) · x / (u - 1) with u = 1 + x (the rounding of u cancels), x itself where u
    /// rounds to 1, inf at inf.
    pub(super) fn log1p_lanes(&mut self, x: Value, lanes: bool) -> Value {
        let one = self.fk(1.0, lanes);
        let u = self.b.ins().fadd(one, x);
        let lu = self.log_lanes(u, lanes);
        let um1 = self.b.ins().fsub(u, one);
        let q = self.b.ins().fdiv(x, um1);
        let r = self.b.ins().fmul(lu, q);
        let exact = self.fcmp_k(FloatCC::Equal, u, 1.0, lanes);
        let r = self.choose(exact, x, r, lanes);
        let is_inf = self.fcmp_k(FloatCC::Equal, x, f32::INFINITY, lanes);
        self.choose(is_inf, x, r, lanes)
    }

    /// `ln(1 + e^x)` as max(x, 0) + ln(1 + e^-|x|): finite for every finite x.
    pub(super) fn softplus_lanes(&mut self, x: Value, lanes: bool) -> Value {
        let a = self.b.ins().fabs(x);
        let na = self.b.ins().fneg(a);
        let e = self.exp_lanes(na, lanes);
        let l = self.log1p_lanes(e, lanes);
        let zero = self.fk(0.0, lanes);
        let m = self.b.ins().fmax(x, zero);
        self.b.ins().fadd(m, l)
    }

    /// `1 / (1 + e^-x)`: exact limits 0 and 1, NaN stays NaN.
    pub(super) fn sigmoid_lanes(&mut self, x: Value, lanes: bool) -> Value {
        let nx = self.b.ins().fneg(x);
        let e = self.exp_lanes(nx, lanes);
        let one = self.fk(1.0, lanes);
        let d = self.b.ins().fadd(one, e);
        self.b.ins().fdiv(one, d)
    }

    /// `atan x`, after Cephes `atanf`: |x| is reduced to |r| ≤ tan(π/8) by r = -1/|x| (plus π/2) above
    /// tan(3π/8) and r = (|x| - 1)/(|x| + 1) (plus π/4) above tan(π/8), one division for both; then
    /// r + r³ P(r²), and x's sign. NaN stays NaN, ±inf gives ±π/2, -0 gives -0.
    pub(super) fn atan_lanes(&mut self, x: Value, lanes: bool) -> Value {
        let (float, int) = Self::math_types(lanes);
        let a = self.b.ins().fabs(x);
        let big = self.fcmp_k(FloatCC::GreaterThan, a, 2.414_213_6, lanes);
        let mid = self.fcmp_k(FloatCC::GreaterThan, a, 0.414_213_57, lanes);
        let (one, minus_one) = (self.fk(1.0, lanes), self.fk(-1.0, lanes));
        let a_minus = self.b.ins().fsub(a, one);
        let a_plus = self.b.ins().fadd(a, one);
        let num = self.choose(mid, a_minus, a, lanes);
        let num = self.choose(big, minus_one, num, lanes);
        let den = self.choose(mid, a_plus, one, lanes);
        let den = self.choose(big, a, den, lanes);
        let r = self.b.ins().fdiv(num, den);
        let (zero, quarter, half) = (
            self.fk(0.0, lanes),
            self.fk(std::f32::consts::FRAC_PI_4, lanes),
            self.fk(std::f32::consts::FRAC_PI_2, lanes),
        );
        let base = self.choose(mid, quarter, zero, lanes);
        let base = self.choose(big, half, base, lanes);
        let z = self.b.ins().fmul(r, r);
        let p = self.horner(&ATAN_COEFFICIENTS, z, lanes);
        let pz = self.b.ins().fmul(p, z);
        let pzr = self.b.ins().fmul(pz, r);
        let near = self.b.ins().fadd(pzr, r);
        let y = self.b.ins().fadd(base, near);
        // y ≥ 0 (or NaN): x's sign bit goes on it.
        let flags = MemFlagsData::new().with_endianness(ir::Endianness::Little);
        let (xi, yi) = (self.b.ins().bitcast(int, flags, x), self.b.ins().bitcast(int, flags, y));
        let sign = self.ik(i32::MIN, lanes);
        let sign = self.b.ins().band(xi, sign);
        let signed = self.b.ins().bor(yi, sign);
        self.b.ins().bitcast(float, flags, signed)
    }

    /// `tanh x`: the Cephes `tanhf` odd polynomial x + x³ P(x²) for |x| < 0.625, else
    /// ±(1 - 2 / (e^{2|x|} + 1)) (±1 beyond the range of exp); NaN stays NaN.
    pub(super) fn tanh_lanes(&mut self, x: Value, lanes: bool) -> Value {
        let z = self.b.ins().fmul(x, x);
        let p = self.horner(&TANH_COEFFICIENTS, z, lanes);
        let pz = self.b.ins().fmul(p, z);
        let pzx = self.b.ins().fmul(pz, x);
        let near = self.b.ins().fadd(pzx, x);
        let a = self.b.ins().fabs(x);
        let a2 = self.b.ins().fadd(a, a);
        let e = self.exp_lanes(a2, lanes);
        let one = self.fk(1.0, lanes);
        let two = self.fk(2.0, lanes);
        let d = self.b.ins().fadd(e, one);
        let q = self.b.ins().fdiv(two, d);
        let far = self.b.ins().fsub(one, q);
        let neg = self.fcmp_k(FloatCC::LessThan, x, 0.0, lanes);
        let far_neg = self.b.ins().fneg(far);
        let far = self.choose(neg, far_neg, far, lanes);
        let small = self.fcmp_k(FloatCC::LessThan, a, 0.625, lanes);
        self.choose(small, near, far, lanes)
    }
}

/// The base address of a vector constant's place: a chunk's address, or its data object's symbol.
pub(super) fn lane_base<'f>(ins: impl InstBuilder<'f>, place: LanePlace) -> Value {
    match place {
        LanePlace::Host(chunk, _) => ins.iconst(types::I64, chunk),
        LanePlace::Object(symbol, _) => ins.symbol_value(types::I64, symbol),
    }
}

//! Row helpers the generated code calls where 128-bit Cranelift vectors leave half the machine idle.
//!
//! `lossc_exp_row` turns a row of values into their exponentials after a shift (read from a source row,
//! or in place when the source is the destination), and returns
//! their sum (f64 over f32 partial sums of 8 values): the second pass of a softmax row's logsumexp whose exponentials are kept
//! ([`super::super::loops::KeptExps`]). On x86-64 with AVX2 and FMA it runs 8 lanes at a time with the
//! same algorithm, constants and special cases as the inline CLIF `exp` (math.rs), so its values agree
//! with the 4-lane code to the last bit or so; the JIT only calls it where [`available`] says so.

use super::math::{EXP_COEFFICIENTS, EXP_LN2_HI, EXP_LN2_LO, EXP_LOWEST, EXP_MAGIC};

/// Whether this machine runs the 8-lane row helpers.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `p[i] = exp(src[i] - shift)` for i < n (`src` may be `p`), returning the sum of the new values (each
/// lane's f32 sum of up to 8 values added in f64, in order). Only called when [`available`].
///
/// `shift` is the row's maximum (NaN when the row holds one), so no argument is above 0: the inline
/// exp's upper clamp is left out (an eighth of the work). An argument above 88.8 would give a wrong value.
///
/// `ahead` and `ahead_too` (either may be null) are rows the caller reads or writes next, `n` floats from
/// each is prefetched along the way: the next row of the matrix being streamed, the next gradient row.
/// Rows are about a page long, and the hardware prefetchers stop at page boundaries. A prefetch never
/// faults, so they need not be inside any buffer.
pub(super) extern "C" fn lossc_exp_row(
    src: *const f32,
    p: *mut f32,
    n: i64,
    shift: f32,
    ahead: *const f32,
    ahead_too: *const f32,
) -> f64 {
    if n <= 0 {
        return 0.0;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if available() {
            // SAFETY: the generated code passes rows of `n` floats inside their buffers (equal, or not
            // overlapping); AVX2 and FMA are present.
            return unsafe { avx2::exp_row(src, p, n as usize, shift, [ahead, ahead_too]) };
        }
    }
    // Not reached from generated code (the JIT only calls this where `available`); a plain version.
    let mut sum = 0.0;
    for i in 0..n as usize {
        // SAFETY: as above; element by element, so `src == p` is fine.
        unsafe {
            let e = (*src.add(i) - shift).exp();
            *p.add(i) = e;
            sum += f64::from(e);
        }
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    /// The CLIF `exp` of math.rs for arguments ≤ 0 (or NaN), 8 lanes, on `W` vectors at once: each step
    /// runs for all of them before the next, so `W` independent dependency chains are in flight (measured
    /// on Zen 1: `W` = 4 takes a quarter less time per value than one vector at a time; 8 spills
    /// registers). Only the lower clamp: the inline exp's upper one cannot change an argument ≤ 0.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8<const W: usize>(xs: [__m256; W]) -> [__m256; W] {
        let k = |v: f32| _mm256_set1_ps(v);
        let each = |f: &dyn Fn(usize) -> __m256| -> [__m256; W] { std::array::from_fn(f) };
        // `maxps` returns its second operand when either is NaN: a NaN x stays.
        let x = each(&|j| _mm256_max_ps(k(EXP_LOWEST), xs[j]));
        let magic = k(EXP_MAGIC);
        let shifted = each(&|j| _mm256_fmadd_ps(x[j], k(std::f32::consts::LOG2_E), magic));
        let n = each(&|j| _mm256_sub_ps(shifted[j], magic));
        let r = each(&|j| _mm256_fmadd_ps(n[j], k(EXP_LN2_HI), x[j]));
        let r = each(&|j| _mm256_fmadd_ps(n[j], k(EXP_LN2_LO), r[j]));
        let mut q = [k(EXP_COEFFICIENTS[0]); W];
        for c in &EXP_COEFFICIENTS[1..] {
            q = each(&|j| _mm256_fmadd_ps(q[j], r[j], k(*c)));
        }
        each(&|j| {
            let r2 = _mm256_mul_ps(r[j], r[j]);
            let y = _mm256_fmadd_ps(r2, q[j], r[j]);
            let p = _mm256_add_ps(y, k(1.0));
            let bits = _mm256_add_epi32(_mm256_castps_si256(shifted[j]), _mm256_set1_epi32(127 - 0x4B40_0000));
            let scale = _mm256_castsi256_ps(_mm256_slli_epi32(bits, 23));
            _mm256_mul_ps(p, scale)
        })
    }

    /// Adds 8 f32 lanes into two f64x4 accumulators.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add_wide(acc: &mut [__m256d; 2], e: __m256) {
        acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_row(src: *const f32, p: *mut f32, n: usize, shift: f32, ahead: [*const f32; 2]) -> f64 {
        let s = _mm256_set1_ps(shift);
        let mut acc = [_mm256_setzero_pd(); 2];
        let mut i = 0;
        // Blocks of 8 vectors: each lane adds its 8 values in f32, then the block's lanes go to f64 (the
        // conversions cost a fifth of the loop otherwise); relative rounding of a block ≲ 8 · 2⁻²⁴.
        while i + 64 <= n {
            // The rows ahead, a block's length (four cache lines) per block.
            for row in ahead.into_iter().filter(|r| !r.is_null()) {
                for line in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(i + 16 * line) as *const i8);
                }
            }
            let mut block = _mm256_setzero_ps();
            for half in [0, 4] {
                // SAFETY: i + 64 <= n floats from src (all four read before any is written: src may be p).
                let x: [__m256; 4] =
                    std::array::from_fn(|u| _mm256_sub_ps(unsafe { _mm256_loadu_ps(src.add(i + 8 * (half + u))) }, s));
                for (u, e) in unsafe { exp8(x) }.into_iter().enumerate() {
                    unsafe { _mm256_storeu_ps(p.add(i + 8 * (half + u)), e) };
                    block = _mm256_add_ps(block, e);
                }
            }
            unsafe { add_wide(&mut acc, block) };
            i += 64;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 <= n floats from src.
            let x = unsafe { _mm256_loadu_ps(src.add(i)) };
            let [e] = unsafe { exp8([_mm256_sub_ps(x, s)]) };
            unsafe { _mm256_storeu_ps(p.add(i), e) };
            unsafe { add_wide(&mut acc, e) };
            i += 8;
        }
        if i < n {
            // The tail through a padded block: exp(-inf) = 0 adds nothing.
            let mut block = [f32::NEG_INFINITY; 8];
            // SAFETY: n - i < 8 floats from src + i.
            unsafe { std::ptr::copy_nonoverlapping(src.add(i), block.as_mut_ptr(), n - i) };
            let x = unsafe { _mm256_loadu_ps(block.as_ptr()) };
            let [mut e] = unsafe { exp8([_mm256_sub_ps(x, s)]) };
            // Padding lanes are exp(-inf - shift): 0, or NaN for shift = -inf; zero them.
            let lanes = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                _mm256_set1_epi32((n - i) as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            ));
            e = _mm256_and_ps(e, lanes);
            unsafe { _mm256_storeu_ps(block.as_mut_ptr(), e) };
            unsafe { std::ptr::copy_nonoverlapping(block.as_ptr(), p.add(i), n - i) };
            unsafe { add_wide(&mut acc, e) };
        }
        let total = _mm256_add_pd(acc[0], acc[1]);
        let mut lanes = [0f64; 4];
        // SAFETY: 4 f64 into a 4-element array.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), total) };
        lanes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use std::ptr::null;

    use super::*;

    /// The row helper against f64: the 1.5e-7 relative bound of the inline exp (math.rs), its special
    /// values, every tail length and block count, and the sum (partial sums of 8 in f32: 1e-6). Each row is
    /// shifted by its maximum, as the JIT shifts it.
    #[test]
    fn exp_row_matches_f64_exp_and_the_inline_special_cases() {
        if !available() {
            return;
        }
        for n in (0..20usize).chain([64, 71, 150]) {
            let values: Vec<f32> = (0..n).map(|i| -87.0 + 175.0 * (i as f32 + 0.37) / n as f32).collect();
            let shift = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut row = values.clone();
            let sum = lossc_exp_row(row.as_ptr(), row.as_mut_ptr(), n as i64, shift, null(), null());
            // From a separate source row (prefetching rows that are not there: a prefetch never faults):
            // the same values.
            let mut out = vec![0f32; n];
            let far = values.as_ptr().wrapping_add(1 << 40);
            let from = lossc_exp_row(values.as_ptr(), out.as_mut_ptr(), n as i64, shift, far, values.as_ptr());
            assert_eq!((from, &out), (sum, &row));
            let mut want_sum = 0.0;
            for (x, e) in values.iter().zip(&row) {
                let argument = f64::from(*x) - f64::from(shift);
                let want = argument.exp();
                want_sum += f64::from(*e);
                if argument > -87.0 {
                    assert!(
                        (f64::from(*e) - want).abs() <= 1.5e-7 * want,
                        "exp({x} - {shift}) = {e}, want {want}"
                    );
                } else {
                    assert!(f64::from(*e) <= 1.2e-38, "exp({x} - {shift}) = {e}, want {want}");
                }
            }
            assert!(
                (sum - want_sum).abs() <= 1e-6 * want_sum,
                "n = {n}: {sum} vs {want_sum}"
            );
        }
        let values = [f32::NEG_INFINITY, -100.0, 0.0, 1e-30, -1e-30, -3.0, -87.0, -88.5];
        let mut row = values;
        let sum = lossc_exp_row(row.as_ptr(), row.as_mut_ptr(), 8, 0.0, null(), null());
        assert_eq!(&row[..5], &[0.0, 0.0, 1.0, 1.0, 1.0][..]);
        for (x, e) in values[5..].iter().zip(&row[5..]) {
            let want = f64::from(*x).exp();
            assert!(
                (f64::from(*e) - want).abs() <= 1.5e-7 * want || want < 1e-38,
                "exp({x}) = {e}"
            );
        }
        assert!((sum - row.iter().map(|e| f64::from(*e)).sum::<f64>()).abs() <= 1e-6 * sum);
        // A NaN anywhere: its maximum is NaN, and so is every value and the sum.
        let mut poisoned = [1.0, f32::NAN, 2.0];
        assert!(lossc_exp_row(poisoned.as_ptr(), poisoned.as_mut_ptr(), 3, f32::NAN, null(), null()).is_nan());
        assert!(poisoned.iter().all(|e| e.is_nan()));
        // A row with +inf shifted by it: 0 for the finite values, NaN for inf - inf.
        let mut infinite = [1.0, f32::INFINITY, f32::NEG_INFINITY];
        assert!(
            lossc_exp_row(
                infinite.as_ptr(),
                infinite.as_mut_ptr(),
                3,
                f32::INFINITY,
                null(),
                null()
            )
            .is_nan()
        );
        assert!(
            infinite[0] == 0.0 && infinite[1].is_nan() && infinite[2] == 0.0,
            "{infinite:?}"
        );
        // A row of -inf shifted by its maximum -inf: NaN in every value, as exp(x - m) is.
        let mut empty = [f32::NEG_INFINITY; 5];
        assert!(lossc_exp_row(empty.as_ptr(), empty.as_mut_ptr(), 5, f32::NEG_INFINITY, null(), null()).is_nan());
        assert!(empty.iter().all(|e| e.is_nan()));
    }
}

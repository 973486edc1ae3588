//! Row helpers the generated code calls where 128-bit Cranelift vectors leave half the machine idle.
//!
//! `lossc_exp_row` turns a row of values into their exponentials after a shift (read from a source row,
//! or in place when the source is the destination), and returns
//! their sum (f64 over f32 partial sums of 8 values): the second pass of a softmax row's logsumexp whose exponentials are kept
//! ([`super::super::loops::KeptExps`]). On x86-64 with AVX2 and FMA it runs 8 lanes at a time with the
//! same algorithm, constants and special cases as the inline CLIF `exp` (math.rs), so its values agree
//! with the 4-lane code to the last bit or so; the JIT only calls it where [`available`] says so.
//! `lossc_softmax_row` is both passes of a row read from a matrix (`s[t, k]`): its maximum, then
//! `lossc_exp_row` shifted by it.
//!
//! The kernels are compiled twice ([`row_kernels`]): for AVX2 + FMA, and with AVX-512VL as well, whose 32
//! vector registers hold the exponential's four chains, its constants and the sums without spilling (the
//! same 256-bit operations, so the same bits; cross-entropy's fused group 7 % faster on Zen 4). The wider
//! build runs where the machine has it; `LOSSC_ROW_KERNELS=avx2` picks the other (to compare the two in
//! one binary), `LOSSC_ROW_KERNELS=plain` neither (the code an ahead-of-time library runs).

use super::math::{EXP_COEFFICIENTS, EXP_HIGHEST, EXP_LN2_HI, EXP_LN2_LO, EXP_LOWEST, EXP_MAGIC};

/// Whether this machine runs the 8-lane row helpers.
pub(super) fn available() -> bool {
    kernels() != Kernels::Plain
}

/// Which build of the row kernels this machine runs: `avx2`, `evex`, or none (what an ahead-of-time
/// library links: aot/rows_lib.rs exports both).
pub fn build() -> Option<&'static str> {
    match kernels() {
        Kernels::Evex => Some("evex"),
        Kernels::Avx2 => Some("avx2"),
        Kernels::Plain => None,
    }
}

/// Which build of the 8-lane row kernels this machine runs ([`row_kernels`]).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kernels {
    Evex,
    Avx2,
    /// Neither: the generated code does not call the helpers.
    Plain,
}

fn kernels() -> Kernels {
    static DETECTED: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let plain = std::env::var("LOSSC_ROW_KERNELS").is_ok_and(|v| v == "plain");
            let avx2 = !plain && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            let forced_avx2 = std::env::var("LOSSC_ROW_KERNELS").is_ok_and(|v| v == "avx2");
            let evex = evex_present() && !forced_avx2;
            match (avx2, evex) {
                (true, true) => Kernels::Evex,
                (true, false) => Kernels::Avx2,
                _ => Kernels::Plain,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Kernels::Plain
    })
}

/// Whether this machine has AVX2 and FMA (what the 8-lane code of a library may use).
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this machine has AVX-512F and AVX-512VL (the `evex` build's instruction sets beyond AVX2).
#[cfg(target_arch = "x86_64")]
fn evex_present() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl")
}

/// Calls `$module::$kernel(args)` for the detected build of the row kernels (not `Plain`).
macro_rules! dispatch {
    ($kernel:ident($($arg:expr),*)) => {
        match kernels() {
            Kernels::Evex => evex::$kernel($($arg),*),
            _ => avx2::$kernel($($arg),*),
        }
    };
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
            return unsafe { dispatch!(exp_row(src, p, n as usize, shift, [ahead, ahead_too])) };
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

/// A softmax row whose shift is its own maximum, found here: [`lossc_exp_row`] after one pass for the
/// maximum, which goes to `*max` (a maximum of `src`'s values skipping NaN, or NaN where that is not finite
/// and some value is NaN: the value the 4-lane code's maximum and its scan for NaN give). Only called when
/// [`available`].
pub(super) extern "C" fn lossc_softmax_row(
    src: *const f32,
    p: *mut f32,
    n: i64,
    ahead: *const f32,
    ahead_too: *const f32,
    max: *mut f32,
) -> f64 {
    let len = n.max(0) as usize;
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the generated code passes a row of `n` floats inside its buffer and a slot for the
        // maximum; AVX2 and FMA are present.
        return unsafe { dispatch!(softmax_row(src, p, len, [ahead, ahead_too], max)) };
    }
    // Not reached from generated code; a plain version.
    // SAFETY: as above.
    let m = unsafe { finish_max(src, len, f32::NEG_INFINITY, 0) };
    unsafe { *max = m };
    lossc_exp_row(src, p, n, m, ahead, ahead_too)
}

/// `p[i] = sigmoid(p[i])` for i < n, in place, with the bits of the inline CLIF `sigmoid` (math.rs): an
/// elementwise map whose element is a sigmoid stores its argument, then this turns the stored row into
/// sigmoids 8 lanes and 4 vectors at a time (the 4-lane CLIF runs one dependency chain per vector). Only
/// called when [`available`].
pub(super) extern "C" fn lossc_sigmoid_row(p: *mut f32, n: i64) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the generated code passes `n` floats inside a buffer; AVX2 and FMA are present.
        unsafe { dispatch!(sigmoid_row(p, n.max(0) as usize)) };
        return;
    }
    // Not reached from generated code; a plain version.
    for i in 0..n.max(0) as usize {
        // SAFETY: as above.
        unsafe { *p.add(i) = 1.0 / (1.0 + (-*p.add(i)).exp()) };
    }
}

include!("row_kernels.rs");

#[cfg(test)]
mod tests {
    use std::ptr::null;

    use super::*;

    /// Both builds of the row kernels ([`row_kernels`]) give the same bits: the AVX-512VL one runs the same
    /// operations, in more registers. (Only where this machine has AVX-512VL.)
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn both_builds_of_the_row_kernels_agree_to_the_bit() {
        if !(available() && evex_present()) {
            return;
        }
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            88.5,
            -88.5,
            1e-30,
            -103.0,
        ];
        for n in (0..80usize).chain([1000, 1029]) {
            let row: Vec<f32> = (0..n)
                .map(|i| match i % 23 {
                    7 if n % 3 == 0 => special[i % special.len()],
                    _ => ((i * 7919 % 1009) as f32 - 504.0) * 0.07,
                })
                .collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            // SAFETY: rows of `n` floats; both instruction sets are present.
            unsafe {
                let (m_a, m_b) = (avx2::row_max(row.as_ptr(), n), evex::row_max(row.as_ptr(), n));
                assert_eq!((m_a.0.to_bits(), m_a.1), (m_b.0.to_bits(), m_b.1), "max, n = {n}");
                let shift = m_a.0;
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                let none = [null(); 2];
                let sum_a = avx2::exp_row(row.as_ptr(), a.as_mut_ptr(), n, shift, none);
                let sum_b = evex::exp_row(row.as_ptr(), b.as_mut_ptr(), n, shift, none);
                assert_eq!((sum_a.to_bits(), bits(&a)), (sum_b.to_bits(), bits(&b)), "exp, n = {n}");
                let (mut a, mut b) = (row.clone(), row.clone());
                avx2::sigmoid_row(a.as_mut_ptr(), n);
                evex::sigmoid_row(b.as_mut_ptr(), n);
                assert_eq!(bits(&a), bits(&b), "sigmoid, n = {n}");
            }
        }
    }

    /// The helper that finds a row's maximum itself: the same values and sum as the maximum found by a scan
    /// and `lossc_exp_row` shifted by it, for every tail length (the 32-value blocks and the scalar rest),
    /// and the maximum the 4-lane code gives for rows with NaN and infinities.
    #[test]
    fn softmax_rows_find_the_maximum_the_lanes_find() {
        if !available() {
            return;
        }
        let softmax = |row: &[f32]| {
            let (mut out, mut max) = (vec![0f32; row.len()], 0f32);
            let sum = lossc_softmax_row(
                row.as_ptr(),
                out.as_mut_ptr(),
                row.len() as i64,
                null(),
                null(),
                &mut max,
            );
            (max, sum, out)
        };
        for n in (0..70usize).chain([1000]) {
            let row: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.25).collect();
            let want_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut want = vec![0f32; n];
            let want_sum = lossc_exp_row(row.as_ptr(), want.as_mut_ptr(), n as i64, want_max, null(), null());
            let (max, sum, out) = softmax(&row);
            assert_eq!((max, sum, &out), (want_max, want_sum, &want), "n = {n}");
        }
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        // (row, its maximum): NaN is skipped where the maximum is finite (the sum is NaN then anyway), and
        // is the maximum where the others are not finite.
        let cases: [(Vec<f32>, f32); 6] = [
            ([vec![1.0; 40], vec![nan], vec![3.0; 5]].concat(), 3.0),
            ([vec![1.0; 40], vec![inf], vec![nan]].concat(), nan),
            ([vec![f32::NEG_INFINITY; 37], vec![nan]].concat(), nan),
            (vec![f32::NEG_INFINITY; 33], f32::NEG_INFINITY),
            ([vec![-2.0; 50], vec![inf]].concat(), inf),
            (vec![nan; 3], nan),
        ];
        for (row, want) in cases {
            let (max, sum, _) = softmax(&row);
            assert!(
                max == want || (max.is_nan() && want.is_nan()),
                "{row:?}: {max} vs {want}"
            );
            assert!(
                sum.is_nan() == row.iter().any(|x| x.is_nan() || *x == inf) || max == f32::NEG_INFINITY,
                "{row:?}: sum {sum}"
            );
        }
    }

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

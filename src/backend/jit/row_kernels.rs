// The 8-lane row kernels: included by rows.rs (the JIT's helpers) and by their own crate for
// ahead-of-time libraries (aot/rows_lib.rs, built by build.rs), so both run the same code. Only `core`.

/// The maximum of `src[..n]` skipping NaN, or NaN where that is not finite and some value is NaN, from
/// the maximum `m` of the first `i` values.
///
/// # Safety
/// `src` holds `n` floats.
unsafe fn finish_max(src: *const f32, n: usize, mut m: f32, mut i: usize) -> f32 {
    while i < n {
        // SAFETY: i < n.
        let x = unsafe { *src.add(i) };
        if x > m {
            m = x;
        }
        i += 1;
    }
    // SAFETY: as above.
    let row = unsafe { core::slice::from_raw_parts(src, n) };
    match m.is_finite() || !row.iter().any(|x| x.is_nan()) {
        true => m,
        false => f32::NAN,
    }
}

/// The 8-lane row kernels, compiled once per instruction set in a module of their own: `avx2` (AVX2 and
/// FMA), and `evex` with AVX-512VL too, where the same 256-bit operations (so the same bits) may use 32
/// vector registers instead of 16: the exponential's four chains with their constants and accumulators
/// no longer spill.
macro_rules! row_kernels {
    ($module:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use core::arch::x86_64::*;

            use super::*;

            /// The CLIF `exp` of math.rs for arguments ≤ 0 (or NaN), 8 lanes, on `W` vectors at once: each step
            /// runs for all of them before the next, so `W` independent dependency chains are in flight (measured
            /// on Zen 1: `W` = 4 takes a quarter less time per value than one vector at a time; 8 spills
            /// registers). Only the lower clamp: the inline exp's upper one cannot change an argument ≤ 0.
            #[target_feature(enable = $features)]
            unsafe fn exp8<const W: usize>(xs: [__m256; W]) -> [__m256; W] {
                unsafe { exp8_clamped::<W, false>(xs) }
            }

            /// [`exp8`] for any argument when `UPPER`: with the inline exp's upper clamp too.
            #[target_feature(enable = $features)]
            unsafe fn exp8_clamped<const W: usize, const UPPER: bool>(xs: [__m256; W]) -> [__m256; W] {
                let k = |v: f32| _mm256_set1_ps(v);
                let each = |f: &dyn Fn(usize) -> __m256| -> [__m256; W] { core::array::from_fn(f) };
                // `maxps` / `minps` return their second operand when either is NaN: a NaN x stays.
                let x = each(&|j| _mm256_max_ps(k(EXP_LOWEST), xs[j]));
                let x = match UPPER {
                    true => each(&|j| _mm256_min_ps(k(EXP_HIGHEST), x[j])),
                    false => x,
                };
                let magic = k(EXP_MAGIC);
                let shifted = each(&|j| _mm256_fmadd_ps(x[j], k(core::f32::consts::LOG2_E), magic));
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
                    let bits = _mm256_add_epi32(
                        _mm256_castps_si256(shifted[j]),
                        _mm256_set1_epi32(127 - 0x4B40_0000),
                    );
                    let scale = _mm256_castsi256_ps(_mm256_slli_epi32(bits, 23));
                    _mm256_mul_ps(p, scale)
                })
            }

            /// Adds 8 f32 lanes into two f64x4 accumulators.
            #[target_feature(enable = $features)]
            unsafe fn add_wide(acc: &mut [__m256d; 2], e: __m256) {
                acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
                acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
            }

            /// `1 / (1 + exp(-x))` as the inline CLIF `sigmoid` computes it (math.rs), 8 lanes on `W` vectors.
            #[target_feature(enable = $features)]
            unsafe fn sigmoid8<const W: usize>(xs: [__m256; W]) -> [__m256; W] {
                let one = _mm256_set1_ps(1.0);
                let negated = core::array::from_fn(|j| _mm256_xor_ps(xs[j], _mm256_set1_ps(-0.0)));
                let e = unsafe { exp8_clamped::<W, true>(negated) };
                core::array::from_fn(|j| _mm256_div_ps(one, _mm256_add_ps(one, e[j])))
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn sigmoid_row(p: *mut f32, n: usize) {
                let mut i = 0;
                while i + 32 <= n {
                    // SAFETY: i + 32 <= n floats at p.
                    let x: [__m256; 4] = core::array::from_fn(|u| unsafe { _mm256_loadu_ps(p.add(i + 8 * u)) });
                    for (u, s) in unsafe { sigmoid8(x) }.into_iter().enumerate() {
                        unsafe { _mm256_storeu_ps(p.add(i + 8 * u), s) };
                    }
                    i += 32;
                }
                while i < n {
                    // The rest through a padded block of 8.
                    let m = (n - i).min(8);
                    let mut block = [0f32; 8];
                    // SAFETY: m <= n - i floats at p + i.
                    unsafe { core::ptr::copy_nonoverlapping(p.add(i), block.as_mut_ptr(), m) };
                    let [s] = unsafe { sigmoid8([_mm256_loadu_ps(block.as_ptr())]) };
                    unsafe { _mm256_storeu_ps(block.as_mut_ptr(), s) };
                    unsafe { core::ptr::copy_nonoverlapping(block.as_ptr(), p.add(i), m) };
                    i += m;
                }
            }

            /// The maximum of the first values of `src[..n]`, 32 at a time, skipping NaN (`maxps` keeps its second
            /// operand where either is NaN); returns it and how many values it covered.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn row_max(src: *const f32, n: usize) -> (f32, usize) {
                let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
                let mut i = 0;
                while i + 32 <= n {
                    for (u, a) in acc.iter_mut().enumerate() {
                        // SAFETY: i + 32 <= n floats from src.
                        *a = _mm256_max_ps(unsafe { _mm256_loadu_ps(src.add(i + 8 * u)) }, *a);
                    }
                    i += 32;
                }
                let both = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
                let mut lanes = [0f32; 8];
                // SAFETY: 8 floats into an 8-element array.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), both) };
                (lanes.into_iter().fold(f32::NEG_INFINITY, f32::max), i)
            }

            /// The maximum of `src[..n]` as [`finish_max`] gives it: 32 values at a time, the rest one by one.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn full_max(src: *const f32, n: usize) -> f32 {
                // SAFETY: `src` holds `n` floats.
                let (m, i) = unsafe { row_max(src, n) };
                unsafe { finish_max(src, n, m, i) }
            }

            /// Both passes of a softmax row: its maximum ([`full_max`], written to `*max`), then [`exp_row`]
            /// shifted by it.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn softmax_row(
                src: *const f32,
                p: *mut f32,
                n: usize,
                ahead: [*const f32; 2],
                max: *mut f32,
            ) -> f64 {
                // SAFETY: rows of `n` floats and a slot for the maximum.
                let m = unsafe { full_max(src, n) };
                unsafe { *max = m };
                unsafe { exp_row(src, p, n, m, ahead) }
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn exp_row(
                src: *const f32,
                p: *mut f32,
                n: usize,
                shift: f32,
                ahead: [*const f32; 2],
            ) -> f64 {
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
                        let x: [__m256; 4] = core::array::from_fn(|u| {
                            _mm256_sub_ps(unsafe { _mm256_loadu_ps(src.add(i + 8 * (half + u))) }, s)
                        });
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
                    unsafe { core::ptr::copy_nonoverlapping(src.add(i), block.as_mut_ptr(), n - i) };
                    let x = unsafe { _mm256_loadu_ps(block.as_ptr()) };
                    let [mut e] = unsafe { exp8([_mm256_sub_ps(x, s)]) };
                    // Padding lanes are exp(-inf - shift): 0, or NaN for shift = -inf; zero them.
                    let lanes = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                        _mm256_set1_epi32((n - i) as i32),
                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                    ));
                    e = _mm256_and_ps(e, lanes);
                    unsafe { _mm256_storeu_ps(block.as_mut_ptr(), e) };
                    unsafe { core::ptr::copy_nonoverlapping(block.as_ptr(), p.add(i), n - i) };
                    unsafe { add_wide(&mut acc, e) };
                }
                let total = _mm256_add_pd(acc[0], acc[1]);
                let mut lanes = [0f64; 4];
                // SAFETY: 4 f64 into a 4-element array.
                unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), total) };
                lanes.iter().sum()
            }
        }
    };
}

row_kernels!(avx2, "avx2,fma");
row_kernels!(evex, "avx2,fma,avx512f,avx512vl");

// The constants of the inline exponential (math.rs), which the 8-lane row kernels (row_kernels.rs) share:
// included by math.rs and by the row kernels' own crate for ahead-of-time libraries (aot/rows_lib.rs).

/// The coefficients of the polynomial Q in e^r = 1 + r + r^2 Q(r) for |r| <= ln2/2, highest degree first:
/// a minimax fit of degree 4 for the relative error (4e-9 in exact arithmetic, below f32's rounding;
/// `tools/exp_poly.py` fits it). One term shorter than Cephes' `expf` at the same f32 accuracy.
pub(crate) const EXP_COEFFICIENTS: [f32; 5] = [
    1.381_461_3e-3,
    8.368_71e-3,
    4.166_839e-2,
    1.666_652_1e-1,
    4.999_999_4e-1,
];

/// exp's rounding constant (1.5 * 2^23: adding it rounds x log2(e) to an integer in the low bits).
pub(crate) const EXP_MAGIC: f32 = 12_582_912.0;
/// -ln 2 in two parts (exact high part, low remainder) for exp's range reduction.
pub(crate) const EXP_LN2_HI: f32 = -0.693_359_4;
pub(crate) const EXP_LN2_LO: f32 = 2.121_944_4e-4;
/// exp clamps its argument to this range first: x log2(e) then rounds to n in -127..=128, whose 2^n
/// built in the exponent bits is 0 at -127 (the result flushes to 0) and +inf at 128 (overflow).
pub(crate) const EXP_LOWEST: f32 = -88.0;
pub(crate) const EXP_HIGHEST: f32 = 88.8;

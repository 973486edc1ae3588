//! Pairwise squared distances ([`crate::backend::loops::Contraction`] with `distance`): `c[i, j] = Σ_p
//! (a[i, p] - b[p, j])²`, blocked as a matrix product is (as the ahead-of-time library's gemm.c computes
//! them, with the same blocking and order of terms).
//!
//! Each call packs the right operand in panels of [`NR`] columns and the left one in panels of [`MR`]
//! rows, [`KC`] terms of the sum at a time (zeros past the last row or column, whose results are not
//! stored); a tile of `MR × NR` sums stays in registers while the panels stream through it, so each loaded
//! value serves a whole row or column of the tile instead of one pair. A pair's sum runs over `p` in order,
//! one fused multiply-add per term where the CPU has FMA; a sum of more than [`KC`] terms adds its parts in
//! order.

use std::cell::RefCell;

const MR: usize = 6;
/// Also the fewest columns a group's distances need to run here instead of as its loops
/// (`gemm::fills_tiles`).
pub(super) const NR: usize = 16;
const KC: usize = 256;
const NC: usize = 1024;

thread_local! {
    /// The packed panels of the left and the right operand (kept by the thread, never shrunk).
    static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// An `rows × columns` matrix view: (first element, stride between rows, stride between columns).
pub(super) type View = (*const f32, isize, isize);

/// `c[i * ldc + j] = Σ_p (a(i, p) - b(p, j))²` for `i < m`, `j < n`, `p < k` (`k > 0`).
///
/// # Safety
/// `a` addresses `m × k` elements and `b` `k × n` through their strides; `c` holds `m` rows of `n` floats,
/// `ldc` apart, that nothing else reads or writes meanwhile.
pub(super) unsafe fn distances(m: usize, k: usize, n: usize, a: View, b: View, c: *mut f32, ldc: usize) {
    PACKED.with(|packed| {
        let (pa, pb) = &mut *packed.borrow_mut();
        let mp = m.next_multiple_of(MR);
        let np = n.min(NC).next_multiple_of(NR);
        let kc_most = k.min(KC);
        pa.resize(pa.len().max(mp * kc_most), 0.0);
        pb.resize(pb.len().max(np * kc_most), 0.0);
        let mut tile = [[0f32; NR]; MR];
        let fma = super::rows::avx2_fma();
        for jc in (0..n).step_by(NC) {
            let nc = (n - jc).min(NC);
            for pc in (0..k).step_by(KC) {
                let kc = (k - pc).min(KC);
                for jr in (0..nc).step_by(NR) {
                    let w = (nc - jr).min(NR);
                    // SAFETY: columns jc + jr.. (w of them), terms pc.. (kc) of `b`, as the caller promises.
                    let src = unsafe { b.0.offset(pc as isize * b.1 + (jc + jr) as isize * b.2) };
                    unsafe { pack(&mut pb[jr * kc..(jr + NR) * kc], NR, w, kc, src, b.2, b.1) };
                }
                for ir in (0..m).step_by(MR) {
                    let h = (m - ir).min(MR);
                    // SAFETY: rows ir.. (h of them), terms pc.. (kc) of `a`.
                    let src = unsafe { a.0.offset(ir as isize * a.1 + pc as isize * a.2) };
                    unsafe { pack(&mut pa[ir * kc..(ir + MR) * kc], MR, h, kc, src, a.1, a.2) };
                }
                for jr in (0..nc).step_by(NR) {
                    let w = (nc - jr).min(NR);
                    for ir in (0..m).step_by(MR) {
                        let h = (m - ir).min(MR);
                        squares(
                            fma,
                            kc,
                            &pa[ir * kc..(ir + MR) * kc],
                            &pb[jr * kc..(jr + NR) * kc],
                            &mut tile,
                        );
                        for (i, sums) in tile.iter().enumerate().take(h) {
                            // SAFETY: row ir + i < m, columns jc + jr.. (w of them) < n of `c`.
                            let out = unsafe { std::slice::from_raw_parts_mut(c.add((ir + i) * ldc + jc + jr), w) };
                            if pc == 0 {
                                out.copy_from_slice(&sums[..w]);
                            } else {
                                out.iter_mut().zip(sums).for_each(|(o, s)| *o += s);
                            }
                        }
                    }
                }
            }
        }
    })
}

/// `panel[p * width + l] = src[l * lane + p * term]` for `l < used`, zeros for `used ≤ l < width`, `p < kc`.
///
/// # Safety
/// `src` addresses those elements; `panel` holds `width × kc` floats.
unsafe fn pack(panel: &mut [f32], width: usize, used: usize, kc: usize, src: *const f32, lane: isize, term: isize) {
    for p in 0..kc {
        let row = &mut panel[p * width..(p + 1) * width];
        for (l, v) in row.iter_mut().enumerate() {
            // SAFETY: l < used, p < kc: an element the caller promises.
            *v = if l < used {
                unsafe { *src.offset(l as isize * lane + p as isize * term) }
            } else {
                0.0
            };
        }
    }
}

/// The tile of sums of `kc` squared differences: packed rows `a` (`kc × MR`), packed columns `b` (`kc × NR`);
/// `fma`: the CPU has AVX2 and FMA (`rows::avx2_fma`, asked once per call).
fn squares(fma: bool, kc: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR]) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = fma;
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { squares_fma(kc, a, b, tile) };
    }
    squares_with(kc, a, b, tile, |d, acc| acc + d * d);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn squares_fma(kc: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR]) {
    squares_with(kc, a, b, tile, |d, acc| d.mul_add(d, acc));
}

/// [`squares`] with `term(d, acc)` adding `d²` to `acc`. Inlined into each caller, whose instruction set
/// it is compiled for: the tile's `MR × NR` sums are twelve 8-lane registers.
#[inline(always)]
fn squares_with(kc: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR], term: impl Fn(f32, f32) -> f32) {
    let mut acc = [[0f32; NR]; MR];
    for (rows, columns) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (sums, x) in acc.iter_mut().zip(rows) {
            for (s, y) in sums.iter_mut().zip(columns) {
                *s = term(y - x, *s);
            }
        }
    }
    *tile = acc;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element equals its sum of squared differences computed directly (sizes around the tile,
    /// the panels and the blocks of terms; transposed and padded views).
    #[test]
    fn distances_are_sums_of_squared_differences() {
        for (m, k, n) in [(1, 1, 1), (7, 3, 17), (6, 300, 16), (13, 257, 1030), (2, 600, 5)] {
            let a: Vec<f32> = (0..m * k).map(|v| ((v * 7919) % 23) as f32 * 0.25 - 2.0).collect();
            let b: Vec<f32> = (0..k * n).map(|v| ((v * 104_729) % 19) as f32 * 0.5 - 4.0).collect();
            let ldc = n + 3;
            let mut c = vec![-1.0f32; m * ldc];
            // `a` row-major (m × k); `b` stored as n × k and read transposed.
            let bt: Vec<f32> = (0..n * k).map(|v| b[(v % k) * n + v / k]).collect();
            // SAFETY: the views address exactly their vectors; `c` holds m rows of ldc ≥ n.
            unsafe {
                distances(
                    m,
                    k,
                    n,
                    (a.as_ptr(), k as isize, 1),
                    (bt.as_ptr(), 1, k as isize),
                    c.as_mut_ptr(),
                    ldc,
                )
            };
            for i in 0..m {
                for j in 0..ldc {
                    let want = match j < n {
                        true => (0..k)
                            .map(|p| (a[i * k + p] as f64 - b[p * n + j] as f64).powi(2))
                            .sum::<f64>(),
                        false => -1.0,
                    };
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{m}×{k}×{n} ({i}, {j}): {got} {want}"
                    );
                }
            }
        }
    }
}

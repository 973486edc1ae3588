//! Matrix products ([`Contraction`]) as sgemm calls: `matrixmultiply`'s packed, register-tiled kernels
//! (AVX2 / FMA / AVX-512 detected at run time), which reach several times the throughput of a generated
//! 4-lane dot loop; pairwise squared distances in the same blocks, through distance.rs's kernel.
//!
//! Invariants: the output is cut into fixed blocks of rows ([`Product::block_rows`]), one sgemm call
//! each, so which thread computes a block never changes its bits (each element's sum runs in the
//! kernel's own fixed order). A masked product (`L != 0`) runs dense only when every element of the other
//! operand is finite; otherwise [`Product::new`] declines and the nest's generated code, which skips the
//! masked terms, runs instead. Operand shapes are the extents of the indices that read them
//! ([`Contraction::of`]), so every strided read stays inside its buffer.
//!
//! A symmetric product (`x·xᵀ`) computes each block's columns from the diagonal on and mirrors them into
//! the later rows, whose blocks skip them: half the arithmetic, and still no element written by two
//! blocks.
//!
//! Operand order: sgemm packs the left operand in runs down its columns and the right one in runs along
//! its rows, copying contiguous runs (16 floats at a time) but gathering strided ones element by element.
//! An operand that is a symmetric tensor ([`super::super::loops::Operand::symmetric`]) is read in the
//! contiguous order (NT-Xent's products with a sum of an adjoint and its transpose: 15 % less time). Where
//! such a tensor's mirrored elements differ in the last bit (a fused multiply-add on one side), the
//! product may differ in the last bits from reading it as written. A right operand read transposed is
//! copied once per call in row order (rows padded by a cache line) when the product runs as several
//! blocks, since every block's sgemm packs all of it again (NT-Xent's Gram products 5–9 %,
//! multi-similarity's `x·xᵀ` about a fifth less time); a symmetric product reads the copy as its left
//! operand too (`x` in column order). The packed panels, and so the bits, are the same.

use super::super::loops::{Contraction, Operand};

/// Output rows per sgemm call (and per parallel task): fewer calls repack the right operand less often;
/// a symmetric product's blocks differ in work, and smaller ones balance across threads.
const ROWS: i64 = 128;
const SYMMETRIC_ROWS: i64 = 64;

/// A product's extents and its operands' element strides, for one call's sizes.
#[derive(Clone, Copy)]
pub(super) struct Product {
    rows: usize,
    depth: usize,
    columns: usize,
    left: (*const f32, isize, isize),
    right: (*const f32, isize, isize),
    out: *mut f32,
    /// `L = Rᵀ` (one buffer read both ways, as in `x·xᵀ`): each block computes its rows from the
    /// diagonal on and mirrors them.
    symmetric: bool,
    /// Squared distances (`Σ (L - R)²`, distance.rs) instead of a product.
    distance: bool,
}

// SAFETY: the operands are only read, and each call writes elements no other block writes (its rows,
// and for a symmetric product its columns of the later rows).
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

impl Product {
    /// The product for these buffers, or `None` when it must run as generated code (a masked product
    /// whose other operand holds a non-finite element).
    ///
    /// A right operand read transposed (`x·xᵀ`'s `xᵀ`) is first copied in row order into `scratch` when
    /// the product runs as several blocks: each block's sgemm packs the whole right operand again, and
    /// packs rows in contiguous runs but columns element by element.
    ///
    /// # Safety
    /// `ptrs` are the buffers of a bound call of the plan that holds `c`; `scratch` is neither moved nor
    /// changed while the product runs.
    pub(super) unsafe fn new(
        c: &Contraction,
        out: usize,
        ptrs: &[*mut u8],
        sizes: &[i64],
        scratch: &mut Vec<f32>,
    ) -> Option<Product> {
        let (rows, depth, columns) = (
            c.rows.eval(sizes).max(0) as usize,
            c.depth.eval(sizes).max(0) as usize,
            c.columns.eval(sizes).max(0) as usize,
        );
        // (pointer, stride between rows, stride between columns) of a `m × n` matrix view, read as its
        // transpose when `transposed`.
        let view = |o: &Operand, m: usize, n: usize, transposed: bool| {
            let p = ptrs[o.buffer] as *const f32;
            if transposed {
                (p, 1, m as isize)
            } else {
                (p, n as isize, 1)
            }
        };
        let symmetric = c.symmetric() && rows == columns;
        // The packing copies runs of the left operand's column and of the right operand's row: a symmetric
        // tensor is read in the order that makes those runs contiguous.
        let (left_transposed, right_transposed) = c.reads_transposed();
        let mut product = Product {
            rows,
            depth,
            columns,
            left: view(&c.left, rows, depth, left_transposed),
            right: view(&c.right, depth, columns, right_transposed),
            out: ptrs[out] as *mut f32,
            symmetric,
            distance: c.distance,
        };
        if let Some(o) = &c.must_be_finite {
            let len = if o.buffer == c.left.buffer {
                rows * depth
            } else {
                depth * columns
            };
            // SAFETY: the operand is a buffer of the call with `len` elements.
            let data = unsafe { std::slice::from_raw_parts(ptrs[o.buffer] as *const f32, len) };
            if !all_finite(data) {
                return None;
            }
        }
        let (b, rsb, _) = product.right;
        if rsb == 1 && depth > 1 && rows as i64 > product.block_rows() {
            // A `columns × depth` row-major buffer read as `depth × columns`: its transpose, in row order,
            // rows padded by a cache line (the packing reads down a panel of rows; a power-of-two stride
            // would map them all to a few cache sets).
            let stride = columns.next_multiple_of(16) + 16;
            scratch.clear();
            scratch.resize(depth * stride, 0.0);
            // SAFETY: the operand is a buffer of the call with `columns × depth` elements; `scratch`
            // holds `depth` rows of `stride ≥ columns`.
            unsafe { transpose(b, depth, columns, depth, scratch.as_mut_ptr(), stride) };
            product.right = (scratch.as_ptr(), stride as isize, 1);
            if symmetric && product.left.2 == 1 {
                // `x·xᵀ`: the copy is `x` in column order too, which the left operand's packing copies
                // in runs (rows = columns here).
                product.left = (scratch.as_ptr(), 1, stride as isize);
            }
        }
        Some(product)
    }

    pub(super) fn rows(&self) -> i64 {
        self.rows as i64
    }

    /// Output rows per block (a fixed number: blocks, not threads, decide every element's arithmetic).
    pub(super) fn block_rows(&self) -> i64 {
        if self.symmetric { SYMMETRIC_ROWS } else { ROWS }
    }

    /// Computes output rows `lo..hi`.
    ///
    /// # Safety
    /// No other call writes these rows meanwhile.
    pub(super) unsafe fn block(&self, lo: i64, hi: i64) {
        let (lo, hi) = (lo as usize, (hi as usize).min(self.rows));
        if lo >= hi || self.columns == 0 {
            return;
        }
        let out = unsafe { self.out.add(lo * self.columns) };
        if self.depth == 0 {
            // An empty sum: zeros.
            unsafe { std::ptr::write_bytes(out, 0, (hi - lo) * self.columns) };
            return;
        }
        // A symmetric product computes columns from `lo` on (the rest of these rows is the mirror image
        // of earlier blocks' columns, which those blocks write).
        let first = if self.symmetric { lo } else { 0 };
        let n = self.columns;
        // SAFETY: `out` is row `lo` of the `rows × columns` output.
        unsafe { self.sgemm(lo, hi, first, out) };
        if self.symmetric && hi < n {
            // Mirror: C[j, i] = C[i, j] for the rows i of this block and every later row j. Those
            // elements (rows after the block, its columns) are written by no other block.
            // SAFETY: rows `lo..hi`, columns `hi..n` and rows `hi..n`, columns `lo..hi` of the `n × n`
            // output: inside it, and apart.
            unsafe {
                transpose(
                    self.out.add(lo * n + hi),
                    n,
                    hi - lo,
                    n - hi,
                    self.out.add(hi * n + lo),
                    n,
                )
            };
        }
    }
}

impl Product {
    /// Rows `lo..hi`, columns `first..` of the product (or the distances) into the rows of `out` (`columns` floats apart,
    /// row `lo` first), with no mirroring (a symmetric product's rows are whole only from `lo` on).
    ///
    /// # Safety
    /// `out` holds `hi - lo` rows of `columns` floats that no other call writes meanwhile; `lo < hi <=
    /// rows`, `depth > 0`.
    unsafe fn sgemm(&self, lo: usize, hi: usize, first: usize, out: *mut f32) {
        let (a, rsa, csa) = self.left;
        let (b, rsb, csb) = self.right;
        let n = self.columns;
        // SAFETY (here and below): the views address `rows × depth` and `depth × columns` elements of their
        // buffers; rows `lo..hi` of the left view start `lo * rsa` elements in, columns `first..` of the
        // right view `first * csb`; `out` as the caller promises.
        if self.distance {
            let (a, b) = unsafe { (a.offset(lo as isize * rsa), b.offset(first as isize * csb)) };
            let out = unsafe { out.add(first) };
            return unsafe {
                super::distance::distances(hi - lo, self.depth, n - first, (a, rsa, csa), (b, rsb, csb), out, n)
            };
        }
        unsafe {
            matrixmultiply::sgemm(
                hi - lo,
                self.depth,
                n - first,
                1.0,
                a.offset(lo as isize * rsa),
                rsa,
                csa,
                b.offset(first as isize * csb),
                rsb,
                csb,
                0.0,
                out.add(first),
                n as isize,
                1,
            )
        };
    }

    /// Output rows `lo..hi` of a product that is not symmetric into `out`, row `lo` first (a
    /// [`crate::backend::loops::Tile`]'s block of rows).
    ///
    /// # Safety
    /// `out` holds `hi - lo` rows of [`Product::columns`] floats that no other call writes meanwhile.
    pub(super) unsafe fn rows_into(&self, lo: i64, hi: i64, out: *mut f32) {
        debug_assert!(!self.symmetric, "a tile's product is not mirrored");
        let (lo, hi) = (lo as usize, (hi as usize).min(self.rows));
        if lo >= hi || self.columns == 0 {
            return;
        }
        if self.depth == 0 {
            // SAFETY: as the caller promises.
            unsafe { std::ptr::write_bytes(out, 0, (hi - lo) * self.columns) };
            return;
        }
        // SAFETY: as the caller promises.
        unsafe { self.sgemm(lo, hi, 0, out) };
    }

    pub(super) fn columns(&self) -> usize {
        self.columns
    }

    /// The product with its left operand's buffer and its output at other addresses where given (a
    /// pipeline's block of rows, moved back by the block's first row: loops::Plan::tiled).
    pub(super) fn with_bases(&self, left: Option<*const f32>, out: Option<*mut f32>) -> Product {
        let mut p = *self;
        if let Some(left) = left {
            p.left.0 = left;
        }
        if let Some(out) = out {
            p.out = out;
        }
        p
    }

    /// The product computed as it is, without mirroring a symmetric one (a tile's block of rows needs
    /// all its columns).
    pub(super) fn unmirrored(self) -> Product {
        Product {
            symmetric: false,
            ..self
        }
    }
}

/// Whether a group that is product `c` runs it as one at these sizes rather than as its loops: not for
/// distances to fewer columns than a tile's (a query's to a few prototypes), where a tile would mostly add
/// up zeros of its padding. (A streamed program's tile has no loops and always runs as a product.)
pub(super) fn fills_tiles(c: &Contraction, sizes: &[i64]) -> bool {
    !c.distance || c.columns.eval(sizes) >= super::distance::NR as i64
}

/// Whether every value is finite (in runs the compiler vectorizes; `Iterator::all` stops at each value).
fn all_finite(data: &[f32]) -> bool {
    data.chunks(256)
        .all(|run| run.iter().fold(true, |finite, x| finite & x.is_finite()))
}

/// Destination rows per strip of [`transpose`].
const TRANSPOSE_STRIP: usize = 8;

/// `dst[j * dst_stride + i] = src[i * src_stride + j]` for `i < rows`, `j < cols`: a transpose, in strips
/// of [`TRANSPOSE_STRIP`] source columns. A strip's destination lines stay in cache while every source
/// row passes through it once; a square tile of many rows would keep as many lines a row apart, and rows
/// of a power-of-two width (NT-Xent's 1024) all map to one cache set (its symmetric products' mirror took
/// 60 % longer in 16 × 16 tiles).
///
/// # Safety
/// Both regions lie inside their buffers and do not overlap.
unsafe fn transpose(src: *const f32, src_stride: usize, rows: usize, cols: usize, dst: *mut f32, dst_stride: usize) {
    for strip in (0..cols).step_by(TRANSPOSE_STRIP) {
        for i in 0..rows {
            for j in strip..(strip + TRANSPOSE_STRIP).min(cols) {
                // SAFETY: as above.
                unsafe { *dst.add(j * dst_stride + i) = *src.add(i * src_stride + j) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NaN or an infinity anywhere (in a full run, in the last partial one) is seen.
    #[test]
    fn all_finite_sees_every_value() {
        for len in [0, 1, 255, 256, 257, 1000] {
            let data = vec![0.5f32; len];
            assert!(all_finite(&data));
            for at in [0, len / 2, len.saturating_sub(1)].into_iter().filter(|at| *at < len) {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut d = data.clone();
                    d[at] = bad;
                    assert!(!all_finite(&d), "{len}: {bad} at {at}");
                }
            }
        }
    }

    /// Every element lands at its mirrored place, for sizes around the tile's and a padded stride; the
    /// padding is left as it was.
    #[test]
    fn transposes_mirror_every_element_into_padded_rows() {
        for (rows, cols) in [(1, 1), (3, 17), (16, 16), (33, 5), (40, 70)] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let stride = rows + 3;
            let mut dst = vec![-1.0; cols * stride];
            // SAFETY: `rows × cols` floats in, `cols` rows of `stride` out.
            unsafe { transpose(src.as_ptr(), cols, rows, cols, dst.as_mut_ptr(), stride) };
            for j in 0..cols {
                for i in 0..stride {
                    let want = if i < rows { src[i * cols + j] } else { -1.0 };
                    assert_eq!(dst[j * stride + i], want, "{rows} × {cols}: ({i}, {j})");
                }
            }
        }
    }
}

//! Matrix products ([`Contraction`]) as sgemm calls: `matrixmultiply`'s packed, register-tiled kernels
//! (AVX2 / FMA / AVX-512 detected at run time), which reach several times the throughput of a generated
//! 4-lane dot loop.
//!
//! Invariants: the output is cut into fixed blocks of rows ([`Product::block_rows`]), one sgemm call
//! each, so which thread computes a block never changes its bits (each element's sum runs in the
//! kernel's own fixed order). A
//! masked product (`L != 0`) runs dense only when every element of the other operand is finite;
//! otherwise [`Product::new`] declines and the nest's generated code, which skips the masked terms, runs
//! instead.
//! Operand shapes are the extents of the indices that read them ([`Contraction::of`]), so every strided
//! read stays inside its buffer. A symmetric product (`x·xᵀ`) computes each block's columns from the
//! diagonal on and mirrors them into the later rows, whose blocks skip them: half the arithmetic, and
//! still no element written by two blocks. An operand that is a symmetric tensor
//! ([`super::super::loops::Operand::symmetric`]) is read in the order the packing copies in contiguous
//! runs (the left one by columns, the right one by rows): NT-Xent's products with a sum of an adjoint and
//! its transpose take 15 % less time with matrixmultiply's AVX-512 kernel (its packing gathers a
//! row-major left operand element by element, and copies a column-major one in runs of 16). Where such a tensor's two mirrored elements differ in the last bit (a fused
//! multiply-add on one side), the product may differ in the last bits from reading it as written.

use super::super::loops::{Contraction, Operand};

/// Output rows per sgemm call (and per parallel task): fewer calls repack the right operand less often;
/// a symmetric product's blocks differ in work, and smaller ones balance across threads.
const ROWS: i64 = 128;
const SYMMETRIC_ROWS: i64 = 64;

/// Columns per strip of a symmetric product's mirror copy.
const MIRROR_STRIP: usize = 8;

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
}

// SAFETY: the operands are only read, and each call writes elements no other block writes (its rows,
// and for a symmetric product its columns of the later rows).
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

impl Product {
    /// The product for these buffers, or `None` when it must run as generated code (a masked product
    /// whose other operand holds a non-finite element).
    ///
    /// # Safety
    /// `ptrs` are the buffers of a bound call of the plan that holds `c`.
    pub(super) unsafe fn new(c: &Contraction, out: usize, ptrs: &[*mut u8], sizes: &[i64]) -> Option<Product> {
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
        let symmetric = c.left.buffer == c.right.buffer && c.left.transposed != c.right.transposed && rows == columns;
        // The packing copies runs of the left operand's column and of the right operand's row: a symmetric
        // tensor is read in the order that makes those runs contiguous (as the product needs it otherwise).
        let order = |o: &Operand, contiguous_when_transposed: bool| match o.symmetric && !symmetric {
            true => contiguous_when_transposed,
            false => o.transposed,
        };
        let product = Product {
            rows,
            depth,
            columns,
            left: view(&c.left, rows, depth, order(&c.left, true)),
            right: view(&c.right, depth, columns, order(&c.right, false)),
            out: ptrs[out] as *mut f32,
            symmetric,
        };
        if let Some(o) = &c.must_be_finite {
            let len = if o.buffer == c.left.buffer {
                rows * depth
            } else {
                depth * columns
            };
            // SAFETY: the operand is a buffer of the call with `len` elements.
            let data = unsafe { std::slice::from_raw_parts(ptrs[o.buffer] as *const f32, len) };
            if !data.iter().all(|x| x.is_finite()) {
                return None;
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
        let (a, rsa, csa) = self.left;
        let (b, rsb, csb) = self.right;
        // A symmetric product computes columns from `lo` on (the rest of these rows is the mirror image
        // of earlier blocks' columns, which those blocks write).
        let first = if self.symmetric { lo } else { 0 };
        let n = self.columns;
        // SAFETY: the views address `rows × depth`, `depth × columns` and `rows × columns` elements of
        // their buffers; rows `lo..hi` of the left view start `lo * rsa` elements in, columns `first..`
        // of the right view `first * csb`.
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
        if self.symmetric {
            // Mirror: C[j, i] = C[i, j] for the rows i of this block and every later row j. Those
            // elements (rows after the block, its columns) are written by no other block.
            // In strips of MIRROR_STRIP columns: a strip's rows are read along their lines and its
            // target rows stay in cache (a column at a time would evict: rows of a power-of-two width all
            // map to one cache set).
            for strip in (hi..n).step_by(MIRROR_STRIP) {
                let end = (strip + MIRROR_STRIP).min(n);
                for i in lo..hi {
                    for j in strip..end {
                        // SAFETY: i, j < rows = columns.
                        unsafe { *self.out.add(j * n + i) = *self.out.add(i * n + j) };
                    }
                }
            }
        }
    }
}

//! Matrix products ([`Contraction`]) as sgemm calls: `matrixmultiply`'s packed, register-tiled kernels
//! (AVX2 / FMA / AVX-512 detected at run time), which reach several times the throughput of a generated
//! 4-lane dot loop.
//!
//! Invariants: the output is cut into fixed blocks of [`ROWS`] rows, one sgemm call each, so which thread
//! computes a block never changes its bits (each element's sum runs in the kernel's own fixed order). A
//! masked product (`L != 0`) runs dense only when every element of the other operand is finite;
//! otherwise [`Product::new`] declines and the nest's generated code, which skips the masked terms, runs
//! instead.
//! Operand shapes are the extents of the indices that read them ([`Contraction::of`]), so every strided
//! read stays inside its buffer.

use super::super::loops::{Contraction, Operand};

/// Output rows per sgemm call (and per parallel task).
pub(super) const ROWS: i64 = 256;

/// A product's extents and its operands' element strides, for one call's sizes.
#[derive(Clone, Copy)]
pub(super) struct Product {
    rows: usize,
    depth: usize,
    columns: usize,
    left: (*const f32, isize, isize),
    right: (*const f32, isize, isize),
    out: *mut f32,
}

// SAFETY: the operands are only read, and each call writes the disjoint rows of its block.
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

impl Product {
    /// The product for these buffers, or `None` when it must run as generated code (a guarded product
    /// whose `R` holds a non-finite element).
    ///
    /// # Safety
    /// `ptrs` are the buffers of a bound call of the plan that holds `c`.
    pub(super) unsafe fn new(c: &Contraction, out: usize, ptrs: &[*mut u8], sizes: &[i64]) -> Option<Product> {
        let (rows, depth, columns) = (
            c.rows.eval(sizes).max(0) as usize,
            c.depth.eval(sizes).max(0) as usize,
            c.columns.eval(sizes).max(0) as usize,
        );
        // (pointer, stride between rows, stride between columns) of a `m × n` matrix view.
        let view = |o: &Operand, m: usize, n: usize| {
            let p = ptrs[o.buffer] as *const f32;
            if o.transposed {
                (p, 1, m as isize)
            } else {
                (p, n as isize, 1)
            }
        };
        let product = Product {
            rows,
            depth,
            columns,
            left: view(&c.left, rows, depth),
            right: view(&c.right, depth, columns),
            out: ptrs[out] as *mut f32,
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
        // SAFETY: the views address `rows × depth`, `depth × columns` and `rows × columns` elements of
        // their buffers; rows `lo..hi` of the left view start `lo * rsa` elements in.
        unsafe {
            matrixmultiply::sgemm(
                hi - lo,
                self.depth,
                self.columns,
                1.0,
                a.offset(lo as isize * rsa),
                rsa,
                csa,
                b,
                rsb,
                csb,
                0.0,
                out,
                self.columns as isize,
                1,
            )
        };
    }
}

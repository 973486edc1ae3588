//! The JIT's 8-lane row helpers (jit/row_kernels.rs) as a crate of their own, for ahead-of-time
//! libraries: build.rs compiles this file with the `rustc` that builds lossc into one object (only `core`,
//! no unwinding), which lossc embeds and links into every library whose code calls the helpers. Each
//! helper is exported once per build of the kernels (`lossc_rows_avx2_*`, `lossc_rows_evex_*`); the
//! library's driver names the one for the machine it is compiled for (aot/mod.rs).
#![no_std]
#![allow(clippy::missing_safety_doc)]

include!("../jit/exp_constants.rs");
include!("../jit/row_kernels.rs");

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // The kernels index nothing out of bounds and never panic; this is never reached.
    loop {}
}

macro_rules! exports {
    ($module:ident, $exp:ident, $softmax:ident, $sigmoid:ident) => {
        /// `lossc_exp_row` (jit/rows.rs).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $exp(
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
            // SAFETY: the generated code passes rows of `n` floats; the library runs where the kernels'
            // instruction sets are (it is compiled for the machine lossc runs on).
            unsafe { $module::exp_row(src, p, n as usize, shift, [ahead, ahead_too]) }
        }

        /// `lossc_softmax_row` (jit/rows.rs).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $softmax(
            src: *const f32,
            p: *mut f32,
            n: i64,
            ahead: *const f32,
            ahead_too: *const f32,
            max: *mut f32,
        ) -> f64 {
            // SAFETY: as above, and a slot for the maximum.
            unsafe { $module::softmax_row(src, p, n.max(0) as usize, [ahead, ahead_too], max) }
        }

        /// `lossc_sigmoid_row` (jit/rows.rs).
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $sigmoid(p: *mut f32, n: i64) {
            // SAFETY: as above.
            unsafe { $module::sigmoid_row(p, n.max(0) as usize) }
        }
    };
}

exports!(avx2, lossc_rows_avx2_exp_row, lossc_rows_avx2_softmax_row, lossc_rows_avx2_sigmoid_row);
exports!(evex, lossc_rows_evex_exp_row, lossc_rows_evex_softmax_row, lossc_rows_evex_sigmoid_row);

//! The C entry points called from Rust as C would call them: NULL pointers, bad dtype codes, bad UTF-8,
//! and results equal to the slice API's.

use std::ffi::{CStr, CString, c_char};

use lossc_c::*;

const CE: &str = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }";

fn message(error: *mut c_char) -> String {
    assert!(!error.is_null());
    let text = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { lossc_string_free(error) };
    text
}

/// `lossc_loss_call` on slices: the status and, on failure, the message.
fn call(
    loss: *mut Loss,
    inputs: &[RawInput],
    hypers: &[RawHyper],
    grads: &mut [RawGrad],
    out: *mut f32,
) -> (i32, String) {
    let mut error: *mut c_char = std::ptr::null_mut();
    let status = unsafe {
        lossc_loss_call(
            loss,
            inputs.as_ptr(),
            inputs.len(),
            hypers.as_ptr(),
            hypers.len(),
            grads.as_mut_ptr(),
            grads.len(),
            out,
            &mut error,
        )
    };
    let text = if error.is_null() { String::new() } else { message(error) };
    (status, text)
}

#[test]
fn calls_and_errors() {
    let source = CString::new(CE).unwrap();
    let mut error: *mut c_char = std::ptr::null_mut();
    let module = unsafe { lossc_compile(source.as_ptr(), std::ptr::null(), &mut error) };
    assert!(!module.is_null());
    assert_eq!(unsafe { lossc_module_loss_count(module) }, 1);
    assert!(unsafe { lossc_module_loss_name(module, 1) }.is_null());
    let loss = unsafe { lossc_module_loss(module, std::ptr::null(), 1, &mut error) };
    assert!(!loss.is_null());

    let (s_name, y_name) = (CString::new("s").unwrap(), CString::new("y").unwrap());
    let scores = [0f32; 6];
    let labels = [1i32, 2];
    let (s_shape, y_shape) = ([2usize, 3], [2usize]);
    let inputs = [
        RawInput {
            name: s_name.as_ptr(),
            data: scores.as_ptr().cast(),
            dtype: LOSSC_F32,
            rank: 2,
            shape: s_shape.as_ptr(),
        },
        RawInput {
            name: y_name.as_ptr(),
            data: labels.as_ptr().cast(),
            dtype: LOSSC_I32,
            rank: 1,
            shape: y_shape.as_ptr(),
        },
    ];
    let mut grad = [f32::NAN; 6];
    let mut grads = [RawGrad {
        name: s_name.as_ptr(),
        data: grad.as_mut_ptr(),
        len: 6,
    }];
    let mut value = 0f32;
    let (status, _) = call(loss, &inputs, &[], &mut grads, &mut value);
    assert_eq!(status, LOSSC_OK);
    assert!((value - 3f32.ln()).abs() < 1e-6);
    assert!((grad[1] + (1.0 - 1.0 / 3.0) / 2.0).abs() < 1e-6, "{grad:?}");

    // Bad calls: a NULL loss_out, an unknown dtype code, an unknown hyperparameter, a missing input, a
    // NULL loss.
    let nowhere = std::ptr::null_mut();
    assert_eq!(
        call(loss, &inputs, &[], &mut grads, nowhere),
        (LOSSC_ARGUMENT_ERROR, "loss_out is NULL".to_string())
    );
    let mut odd = [inputs[0].name, inputs[1].name].map(|n| RawInput {
        name: n,
        data: scores.as_ptr().cast(),
        dtype: 9,
        rank: 1,
        shape: y_shape.as_ptr(),
    });
    odd[0].dtype = LOSSC_F32;
    let (status, text) = call(loss, &odd, &[], &mut [], &mut value);
    assert_eq!(status, LOSSC_ARGUMENT_ERROR);
    assert!(text.contains("dtype code 9"), "{text}");
    let tau = CString::new("tau").unwrap();
    let hypers = [RawHyper {
        name: tau.as_ptr(),
        value: 1.0,
    }];
    assert_eq!(
        call(loss, &inputs, &hypers, &mut [], &mut value),
        (
            LOSSC_HYPER_ERROR,
            "unknown hyperparameter `tau` (the loss has: none)".to_string()
        )
    );
    assert_eq!(
        call(loss, &inputs[..1], &[], &mut [], &mut value),
        (
            LOSSC_INPUT_ERROR,
            "missing input `y` (the loss takes: s, y)".to_string()
        )
    );
    assert_eq!(
        call(std::ptr::null_mut(), &inputs, &[], &mut [], &mut value).0,
        LOSSC_ARGUMENT_ERROR
    );

    // Compile errors, a missing file, an unknown loss, bad UTF-8.
    let bad = CString::new("loss f(x: f32[N]) { mean[i] x[j] }").unwrap();
    assert!(unsafe { lossc_compile(bad.as_ptr(), std::ptr::null(), &mut error) }.is_null());
    assert!(message(error).contains("unknown name `j`"));
    let missing = CString::new("/no/such/file.lx").unwrap();
    assert!(unsafe { lossc_compile_file(missing.as_ptr(), &mut error) }.is_null());
    assert!(message(error).contains("cannot read /no/such/file.lx"));
    let nope = CString::new("nope").unwrap();
    assert!(unsafe { lossc_module_loss(module, nope.as_ptr(), 0, &mut error) }.is_null());
    assert!(message(error).contains("no loss named `nope`"));
    let latin1 = CString::new(vec![0xffu8, 0xfe]).unwrap();
    assert!(unsafe { lossc_compile(latin1.as_ptr(), std::ptr::null(), &mut error) }.is_null());
    assert_eq!(message(error), "source is not UTF-8");
    assert!(unsafe { lossc_compile(std::ptr::null(), std::ptr::null(), std::ptr::null_mut()) }.is_null());

    unsafe {
        lossc_loss_free(loss);
        lossc_module_free(module);
        lossc_loss_free(std::ptr::null_mut());
        lossc_module_free(std::ptr::null_mut());
        lossc_string_free(std::ptr::null_mut());
    }
}

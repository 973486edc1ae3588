//! The C API as a C program meets it: `examples/c/train.c` compiled with the system's `cc` against
//! `include/lossc.h` and linked with the built `liblossc_c.so`, then run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the `liblossc_c.so` this test was built with.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps, deps.parent().unwrap()] {
        if dir.join("liblossc_c.so").exists() {
            return dir.to_path_buf();
        }
    }
    panic!("liblossc_c.so not found next to {}", exe.display());
}

#[test]
fn c_example_trains_and_reports_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let lib = library_dir();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc_c_train_{}", std::process::id()));
    let cc = Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(root.join("examples/c/train.c"))
        .arg("-L")
        .arg(&lib)
        .args(["-llossc_c", "-lm"])
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = Command::new(&out).output().unwrap();
    let _ = std::fs::remove_file(&out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("losses: 1 (ce)"), "{stdout}");
    let losses: Vec<f32> = stdout
        .lines()
        .filter_map(|l| l.split("loss ").nth(1)?.parse().ok())
        .collect();
    assert_eq!(losses.len(), 6, "{stdout}");
    assert!((losses[0] - 4f32.ln()).abs() < 1e-5, "zero weights give ln C: {stdout}");
    assert!(losses[5] < 0.5 * losses[0], "training brings the loss down: {stdout}");
    assert!(
        stdout.contains(
            "bad label: status 4: label out of range: `y` at position [3] is 4, but labels must lie in 0..C (C = 4)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("bad source: rejected (unknown name `j`)"), "{stdout}");
}

//! Embeds every `stdlib/**/*.lx` file, so `use std::…` resolves in any build of lossc without a path, and
//! (with the JIT, on x86-64) compiles the 8-lane row helpers into the object that ahead-of-time libraries
//! link (src/backend/aot/rows_lib.rs).

use std::fmt::Write;
use std::path::Path;

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            walk(&path, &format!("{prefix}{name}/"), out);
        } else if let Some(stem) = name.strip_suffix(".lx") {
            out.push((
                format!("{prefix}{stem}"),
                path.canonicalize().unwrap().display().to_string(),
            ));
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("stdlib");
    println!("cargo:rerun-if-changed=stdlib");
    let mut files = Vec::new();
    walk(&root, "", &mut files);
    let mut src =
        String::from("/// Every stdlib module: (path with `/`, source).\npub static FILES: &[(&str, &str)] = &[\n");
    for (module, path) in &files {
        println!("cargo:rerun-if-changed={path}");
        writeln!(src, "    ({module:?}, include_str!({path:?})),").unwrap();
    }
    src.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("stdlib_files.rs");
    std::fs::write(out, src).unwrap();
    row_helpers();
}

/// `$OUT_DIR/lossc_rows.o`: the row helpers compiled by the `rustc` that builds lossc (only `core`; one
/// object, whose only undefined symbol is `memcpy`), or an empty file where there are none to build (not
/// x86-64, no JIT) or the compiler failed (then libraries run without them, as the JIT does on a machine
/// without AVX2).
fn row_helpers() {
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("lossc_rows.o");
    for file in [
        "src/backend/aot/rows_lib.rs",
        "src/backend/jit/row_kernels.rs",
        "src/backend/jit/exp_constants.rs",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    let wanted = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64")
        && std::env::var_os("CARGO_FEATURE_JIT").is_some();
    let built = wanted
        && std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .args([
                "--edition",
                "2024",
                "--crate-type",
                "lib",
                "--emit",
                "obj",
                "--crate-name",
                "lossc_rows",
            ])
            .args([
                "-C",
                "opt-level=3",
                "-C",
                "panic=abort",
                "-C",
                "relocation-model=pic",
                "-C",
                "codegen-units=1",
            ])
            .arg("--target")
            .arg(std::env::var("TARGET").unwrap_or_default())
            .arg("src/backend/aot/rows_lib.rs")
            .arg("-o")
            .arg(&out)
            .status()
            .is_ok_and(|s| s.success());
    if !built {
        if wanted {
            println!(
                "cargo:warning=the row helpers for ahead-of-time libraries did not compile; libraries run without them"
            );
        }
        std::fs::write(&out, b"").unwrap();
    }
}

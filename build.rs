//! Embeds every `stdlib/**/*.lx` file, so `use std::…` resolves in any build of lossc without a path.

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
}

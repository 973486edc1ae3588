//! The embedded standard library (`stdlib/**/*.lx`, compiled into the binary by build.rs).

include!(concat!(env!("OUT_DIR"), "/stdlib_files.rs"));

/// Every module path (`robust`, `metrics`), sorted.
pub fn module_names() -> Vec<&'static str> {
    FILES.iter().map(|(m, _)| *m).collect()
}

/// The source of a module, by path with `/` separators.
pub fn module_source(module: &str) -> Option<&'static str> {
    FILES.iter().find(|(m, _)| *m == module).map(|(_, s)| *s)
}

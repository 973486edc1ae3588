//! Discovery of the standard library (`lossc stdlib`): every loss with its signature, defaults and
//! documentation, read from the embedded `stdlib/` sources.

use crate::Program;
use crate::sema::{stdlib_modules, stdlib_source};
use crate::syntax::ast::{ItemKind, LossDef};

/// One stdlib loss.
pub struct Entry {
    /// `std::module::name`.
    pub path: String,
    /// The loss's signature as written.
    pub signature: String,
    /// Its documentation (the `///` lines before it).
    pub doc: String,
    /// Its source.
    pub source: String,
}

/// Every stdlib loss, module by module in source order.
pub fn entries() -> Vec<Entry> {
    let mut out = Vec::new();
    for module in stdlib_modules() {
        let Some(text) = stdlib_source(module) else { continue };
        let Ok(file) = Program::parse_only(module, text) else {
            continue;
        };
        for item in &file.items {
            if let ItemKind::Loss(l) = &item.kind {
                let source = text
                    .get(item.span.start as usize..item.span.end as usize)
                    .unwrap_or("")
                    .trim()
                    .to_string();
                out.push(Entry {
                    path: format!("std::{}::{}", module.replace('/', "::"), l.name.name),
                    signature: signature(l),
                    doc: item.doc.clone(),
                    source,
                });
            }
        }
    }
    out
}

fn signature(l: &LossDef) -> String {
    let params: Vec<String> = l.params.iter().map(crate::syntax::fmt::param).collect();
    format!(
        "{}({}){}",
        l.name.name,
        params.join(", "),
        crate::syntax::fmt::outputs(l)
    )
}

/// `lossc stdlib`: one line per loss, its first doc line indented below.
pub fn listing() -> String {
    let mut s = String::new();
    for e in entries() {
        let module = e.path.rsplit_once("::").map_or("", |(m, _)| m);
        s.push_str(&format!("{module}::{}\n", e.signature));
        if let Some(first) = e.doc.lines().next() {
            s.push_str(&format!("    {first}\n"));
        }
    }
    s
}

/// `lossc stdlib NAME`: the documentation and source of one loss (by name or full path).
pub fn describe(name: &str) -> Option<String> {
    let all = entries();
    let e = all
        .iter()
        .find(|e| e.path == name || e.path.rsplit("::").next() == Some(name))?;
    Some(format!("{}\n\nuse {}\n\n{}\n", e.path, e.path, e.source))
}

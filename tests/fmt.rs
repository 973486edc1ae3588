//! `lossc fmt`: idempotent, meaning-preserving, keeps comments; the repository's .lx files are formatted.

use std::path::{Path, PathBuf};

use lossc::Program;
use lossc::syntax::fmt::format;

fn lx_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["examples", "tests/in", "stdlib", "benches"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "lx") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn ast(text: &str) -> String {
    lossc::syntax::print::file(&Program::parse_only("f.lx", text).unwrap())
}

fn comment_texts(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.find("//").map(|i| l[i..].trim().to_string()))
        .filter(|c| !c.starts_with("///") || c.starts_with("////"))
        .collect()
}

#[test]
fn formatting_is_idempotent_and_preserves_meaning_and_comments() {
    for path in lx_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let once = format("f.lx", &text).unwrap();
        let twice = format("f.lx", &once).unwrap();
        assert_eq!(once, twice, "{}: not idempotent", path.display());
        assert_eq!(
            ast(&text),
            ast(&once),
            "{}: formatting changed the meaning",
            path.display()
        );
        assert_eq!(
            comment_texts(&text),
            comment_texts(&once),
            "{}: comments lost",
            path.display()
        );
    }
}

#[test]
fn repository_sources_are_formatted() {
    for path in lx_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            format("f.lx", &text).unwrap(),
            text,
            "{} is not formatted: run `lossc fmt`",
            path.display()
        );
    }
}

#[test]
fn messy_source_gets_the_canonical_layout() {
    let messy = "// header comment\nuse   std::classification::cross_entropy\n/// Doc.\nloss   f( x:f32[N],w :f32=1.0 ){\n  let a[i]=x[i]*w   // trailing\n/* block */\n  sum[i]a[i]+1e-5}\n";
    let want = "// header comment\nuse std::classification::cross_entropy\n\n/// Doc.\nloss f(x: f32[N], w: f32 = 1.0) {\n    let a[i] = x[i] * w // trailing\n    /* block */\n    sum[i] a[i] + 1e-5\n}\n";
    assert_eq!(format("m.lx", messy).unwrap(), want);
}

#[test]
fn a_blank_line_after_a_comment_stays() {
    let src = "// file header\n\n/// Doc.\nconst K = 1\n";
    assert_eq!(format("h.lx", src).unwrap(), src);
    let src = "// a note on the const\n/// Doc.\nconst K = 1\n";
    assert_eq!(format("h.lx", src).unwrap(), src);
}

/// A comment after a one-line body stays after its `}` (it moved onto the `{` line: issue 23); one after
/// the value stays there, and one after a multi-line body's `}` too.
#[test]
fn comments_after_a_body_stay_where_they_are() {
    let one_line = "loss f(x: f32[N]) { mean[i] x[i] } // the mean\n";
    assert_eq!(
        format("c.lx", one_line).unwrap(),
        "loss f(x: f32[N]) {\n    mean[i] x[i]\n} // the mean\n"
    );
    let src = "loss f(x: f32[N]) {\n    mean[i] x[i] // the value\n} // the loss\n";
    assert_eq!(format("c.lx", src).unwrap(), src);
}

#[test]
fn long_expressions_break_before_additive_operators() {
    let long = format!(
        "loss f(x: f32[N]) {{ mean[i] {} }}",
        (0..12)
            .map(|k| format!("exp(x[i] * {k}.5)"))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    let out = format("l.lx", &long).unwrap();
    assert!(out.lines().all(|l| l.len() <= 100), "{out}");
    assert!(out.lines().count() > 4, "{out}");
    assert_eq!(ast(&long), ast(&out));
}

#[test]
fn syntax_errors_are_diagnostics() {
    let e = format("bad.lx", "loss f(x: f32[N]) { mean[i] x[i] + }").unwrap_err();
    assert_eq!(e.0[0].code, lossc::diag::Code::Syntax);
}

//! Stage 1: text to AST. `grammar/lx.pest` is the grammar; [`parse`] checks nesting limits, runs pest and
//! builds the spanned [`ast`].
//!
//! Invariant: whatever the input, [`parse`] returns an AST or diagnostics and never panics or overflows the
//! stack: a cheap pre-scan bounds how deeply the recursive grammar can nest before pest runs, and the AST
//! builder refuses trees deeper than [`MAX_DEPTH`].

pub mod ast;
pub mod fmt;
pub mod lexer;
mod parser;
pub mod print;

pub use parser::parse;

/// The deepest AST any later stage sees. Operator chains count one level per operator.
pub const MAX_DEPTH: usize = 768;

/// The deepest nesting of brackets plus prefix constructs (reductions, `if`, unary operators) the pre-scan
/// lets through to pest.
pub const MAX_NESTING: usize = 300;

/// Scans a (nesting) block comment that starts at `bytes[start..]` with `/*`: returns the offset just past
/// its closing `*/` (or the end of input), the deepest nesting seen, and whether it was closed. One scanner
/// for the parser's pre-scan, the formatter and the REPL lexer.
pub(crate) fn scan_block_comment(bytes: &[u8], start: usize) -> (usize, usize, bool) {
    let (mut i, mut depth, mut deepest) = (start, 0usize, 0usize);
    while i < bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            depth += 1;
            deepest = deepest.max(depth);
            i += 2;
        } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return (i, deepest, true);
            }
        } else {
            i += 1;
        }
    }
    (i, deepest, false)
}

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
pub const MAX_DEPTH: usize = 200;

/// The deepest nesting of brackets plus prefix constructs (reductions, `if`, unary operators) the pre-scan
/// lets through to pest.
pub const MAX_NESTING: usize = 64;

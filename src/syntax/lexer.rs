//! A token-level view of lx for the REPL (highlighting, knowing when input is complete, completion),
//! built with logos. The parser proper is the pest grammar; this lexer never decides what a program means.

use logos::Logos;

/// A token class.
#[derive(Logos, Debug, Clone, Copy, PartialEq, Eq)]
#[logos(skip r"[ \t\r\n]+")]
pub enum Tok {
    /// A doc comment (`///`).
    #[regex(r"///[^\n]*", allow_greedy = true)]
    Doc,
    /// A line comment (`//`).
    #[regex(r"//[^\n]*", allow_greedy = true)]
    LineComment,
    /// A block comment; `Open` when it is not closed before the end of the input.
    #[token("/*", block_comment)]
    BlockComment(Closed),
    /// A keyword.
    #[token("loss")]
    #[token("fn")]
    #[token("let")]
    #[token("out")]
    #[token("use")]
    #[token("const")]
    #[token("if")]
    #[token("then")]
    #[token("else")]
    #[token("nograd")]
    #[token("state")]
    #[token("updates")]
    #[token("true")]
    #[token("false")]
    Keyword,
    /// An element type.
    #[token("f32")]
    #[token("f64")]
    #[token("bf16")]
    #[token("f16")]
    #[token("idx")]
    Type,
    /// A reduction or ordering form.
    #[token("sum")]
    #[token("mean")]
    #[token("max")]
    #[token("min")]
    #[token("prod")]
    #[token("logsumexp")]
    #[token("count")]
    #[token("argmax")]
    #[token("argmin")]
    #[token("topk")]
    #[token("argsort")]
    #[token("sortnet")]
    Reduction,
    /// A string literal (the options of `sortnet`); brackets inside it do not count.
    #[regex(r#""[^"\n]*""#)]
    Str,
    /// An identifier.
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident,
    /// A number literal.
    #[regex(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")]
    Number,
    /// An opening bracket.
    #[token("(")]
    #[token("[")]
    #[token("{")]
    Open,
    /// A closing bracket.
    #[token(")")]
    #[token("]")]
    #[token("}")]
    Close,
    /// An operator or punctuation.
    #[regex(r"[-+*/%^<>=!&|,:.]")]
    Punct,
}

/// Whether a block comment was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// It was closed.
    Yes,
    /// The input ended inside it.
    Open,
}

fn block_comment(lex: &mut logos::Lexer<Tok>) -> Closed {
    let start = lex.span().start;
    let (end, _, closed) = super::scan_block_comment(lex.source().as_bytes(), start);
    lex.bump(end - lex.span().end);
    if closed { Closed::Yes } else { Closed::Open }
}

/// Tokens with their byte ranges; characters that form no token are skipped.
pub fn tokens(text: &str) -> Vec<(Tok, std::ops::Range<usize>)> {
    let mut lex = Tok::lexer(text);
    let mut out = Vec::new();
    while let Some(t) = lex.next() {
        if let Ok(t) = t {
            out.push((t, lex.span()));
        }
    }
    out
}

/// Whether `text` is a complete input: every bracket closed and no block comment left open. (Too many
/// closing brackets count as complete: the parser reports them.)
pub fn is_complete(text: &str) -> bool {
    let mut depth: i64 = 0;
    for (t, _) in tokens(text) {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            Tok::BlockComment(Closed::Open) => return false,
            _ => {}
        }
    }
    depth <= 0
}

/// `text` with ANSI colours by token class.
pub fn highlight(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut last = 0;
    for (t, r) in tokens(text) {
        out.push_str(&text[last..r.start]);
        let colour = match t {
            Tok::Doc | Tok::LineComment | Tok::BlockComment(_) => Some("90"),
            Tok::Keyword => Some("35"),
            Tok::Type => Some("36"),
            Tok::Reduction => Some("33"),
            Tok::Number => Some("32"),
            Tok::Str => Some("92"),
            _ => None,
        };
        match colour {
            Some(c) => out.push_str(&format!("\x1b[{c}m{}\x1b[0m", &text[r.clone()])),
            None => out.push_str(&text[r.clone()]),
        }
        last = r.end;
    }
    out.push_str(&text[last..]);
    out
}

/// Whether `word` is reserved (a keyword, an element type or a reduction's name), so never a name.
pub fn is_keyword(word: &str) -> bool {
    let mut lex = Tok::lexer(word);
    let first = lex.next();
    let whole = lex.span().len() == word.len();
    matches!(first, Some(Ok(Tok::Keyword | Tok::Type | Tok::Reduction))) && whole && lex.next().is_none()
}

//! Diagnostics: source spans, the source map, and the one diagnostic type every stage reports.
//!
//! Invariants: every error a user can cause is a [`Diag`] with a stable [`Code`], at least one labelled span
//! (unless it concerns no source text, e.g. a missing file) and help text. Codes are never renumbered: a new
//! kind of error gets a new variant at the end of its group.

use std::fmt;
use std::sync::Arc;

use miette::{LabeledSpan, NamedSource, SourceCode};

/// Identifies a file in a [`SourceMap`].
pub type SourceId = u32;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// The source file.
    pub source: SourceId,
    /// Byte offset of the first byte.
    pub start: u32,
    /// Byte offset past the last byte.
    pub end: u32,
}

impl Span {
    /// The bytes `start..end` of `source`.
    pub fn new(source: SourceId, start: usize, end: usize) -> Span {
        Span {
            source,
            start: start as u32,
            end: end as u32,
        }
    }
    /// The smallest span covering both (which must lie in the same file; otherwise `self`).
    pub fn to(self, other: Span) -> Span {
        if self.source != other.source {
            return self;
        }
        Span {
            source: self.source,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    /// Whether it covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One loaded source file.
#[derive(Debug)]
pub struct SourceFile {
    /// The name diagnostics show (a path, or `std::module`).
    pub name: String,
    /// The whole text.
    pub text: Arc<String>,
}

/// All files a compilation read: the user's and the stdlib files pulled in by `use`.
#[derive(Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    /// Adds a file and returns its id.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> SourceId {
        self.files.push(SourceFile {
            name: name.into(),
            text: Arc::new(text.into()),
        });
        (self.files.len() - 1) as SourceId
    }
    /// The file of an id.
    pub fn get(&self, id: SourceId) -> &SourceFile {
        &self.files[id as usize]
    }
    /// The text a span covers.
    pub fn text(&self, span: Span) -> &str {
        let f = self.get(span.source);
        f.text.get(span.start as usize..span.end as usize).unwrap_or("")
    }
    /// The id of the file named `name`, if added.
    pub fn find(&self, name: &str) -> Option<SourceId> {
        self.files.iter().position(|f| f.name == name).map(|i| i as SourceId)
    }
}

macro_rules! codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $num:literal,)*) => {
        /// Stable error codes. Rendered as `lossc::E<num>`; the number never changes meaning.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code { $($(#[doc = $doc])* $variant,)* }
        impl Code {
            /// Every code, in numeric order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];
            /// The code as written in diagnostics (`lossc::E101`).
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => concat!("lossc::E", $num),)* }
            }
        }
    };
}

codes! {
    /// The text does not match the grammar.
    Syntax = "001",
    /// Brackets, reductions or operator chains nested beyond the compiler's limit.
    TooDeep = "002",
    /// A number literal that does not fit.
    BadNumber = "003",
    /// A name that is not defined where it is used.
    UnknownName = "101",
    /// Two items, parameters, lets or indices with one name.
    Duplicate = "102",
    /// A call of something that is not a function.
    UnknownFunction = "103",
    /// A call with the wrong number of arguments.
    Arity = "104",
    /// `use std::x` where stdlib/x.lx does not exist.
    UnknownModule = "105",
    /// `use std::x::y` where x.lx has no item y.
    UnknownImport = "106",
    /// A `fn` that calls itself, directly or not.
    RecursiveFn = "107",
    /// A `const` whose value is not a constant expression.
    NotConstant = "108",
    /// A subscript on something that is not a tensor.
    NotATensor = "109",
    /// A tensor used with the wrong number of subscripts.
    SubscriptCount = "110",
    /// One index given two different ranges by its uses.
    RangeConflict = "111",
    /// An index whose range no use determines.
    RangeUnknown = "112",
    /// A condition used where a number is expected.
    ConditionAsNumber = "113",
    /// A number used where a condition is expected.
    NumberAsCondition = "114",
    /// A float expression used as a subscript.
    FloatSubscript = "115",
    /// A label tensor's bound differs from the dimension it indexes.
    LabelBound = "116",
    /// A dimension that is not an integer or not known.
    BadDim = "117",
    /// A tensor or label input given a default value.
    DefaultOnTensor = "118",
    /// `nograd` on an input that carries no gradient anyway.
    NogradOnLabel = "119",
    /// A dimension no input's shape determines.
    UndeterminedDim = "120",
    /// An `out` without a declaration, a declaration without an `out`, or a shape that differs.
    OutputMismatch = "121",
    /// A loss whose value is not a number.
    LossNotNumber = "122",
    /// A `let` with indices inside a `fn`.
    IndexedLetInFn = "123",
    /// A loss or input used as a function, or a function used as a value.
    NotAValue = "124",
    /// A default value whose type differs from its parameter's.
    DefaultType = "125",
    /// `count` or a mask over something that is not a condition, or `select` with mixed branches.
    BadOperand = "127",
    /// Integer arithmetic on a dimension expression that is not allowed (e.g. a float const as a dim).
    DimArithmetic = "128",
    /// A `state[key]` input or an `updates` output that does not fit its key, shape or state input.
    BadState = "129",
    /// A `topk`, `argsort` or `sortnet` with an unknown or bad option, a mask it does not take, or a size it
    /// cannot sort.
    BadOrderOption = "130",
    /// An `extern fn` declaration or call that does not fit: an argument of another type or shape, a
    /// wrong count of arguments or names, an unknown or missing option, an extern called outside
    /// `let (…) = op(…)`.
    BadExtern = "131",
    /// A file has no loss, or `--loss` names none of its losses.
    UnknownLoss = "201",
    /// A file that cannot be read.
    Io = "202",
    /// A backend that cannot run here: no CUDA driver or device, or NVRTC failed on the generated code.
    Backend = "203",
    /// An extern operation with no implementation registered on the compiler, or one a backend cannot call.
    ExternMissing = "204",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A labelled span: where, and what is wrong there.
#[derive(Clone, Debug)]
pub struct Label {
    /// What it points at.
    pub span: Span,
    /// What it says there.
    pub text: String,
}

/// A compile-time diagnostic. Rendered by miette; carries its own copy of the source it points into.
#[derive(Clone, Debug)]
pub struct Diag {
    /// The stable code.
    pub code: Code,
    /// The one-line message.
    pub message: String,
    /// Where it points, the primary label first.
    pub labels: Vec<Label>,
    /// What to do about it.
    pub help: Option<String>,
    /// Boxed: a diagnostic is the error of many results, which stay small.
    source: Option<Box<NamedSource<Arc<String>>>>,
}

/// The longest word (a run of letters, digits and `_`) a message shows whole.
pub const LONGEST_WORD: usize = 48;

/// `text` with every word longer than [`LONGEST_WORD`] shortened to its start, `…` and its end, so a
/// 100,000-character identifier costs a message a few dozen characters.
pub fn elide_long_words(text: String) -> String {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if word(c) { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    if longest <= LONGEST_WORD {
        return text;
    }
    let mut out = String::new();
    let mut current: Vec<char> = Vec::new();
    let flush = |current: &mut Vec<char>, out: &mut String| {
        if current.len() > LONGEST_WORD {
            out.extend(&current[..24]);
            out.push('…');
            out.extend(&current[current.len() - 8..]);
        } else {
            out.extend(current.iter());
        }
        current.clear();
    };
    for c in text.chars() {
        if word(c) {
            current.push(c);
        } else {
            flush(&mut current, &mut out);
            out.push(c);
        }
    }
    flush(&mut current, &mut out);
    out
}

impl Diag {
    /// A diagnostic with no label yet (its text, its labels' and its help's with long words elided).
    pub fn new(code: Code, message: impl Into<String>) -> Diag {
        Diag {
            code,
            message: elide_long_words(message.into()),
            labels: Vec::new(),
            help: None,
            source: None,
        }
    }
    /// Adds a label (the first is the primary span).
    pub fn label(mut self, span: Span, text: impl Into<String>) -> Diag {
        self.labels.push(Label {
            span,
            text: elide_long_words(text.into()),
        });
        self
    }
    /// Sets the help line.
    pub fn help(mut self, help: impl Into<String>) -> Diag {
        self.help = Some(elide_long_words(help.into()));
        self
    }
    /// Attaches the source text of the first label's file, keeping only labels in that file.
    pub fn with_source(mut self, sources: &SourceMap) -> Diag {
        if let Some(first) = self.labels.first() {
            let file = sources.get(first.span.source);
            let id = first.span.source;
            self.labels.retain(|l| l.span.source == id);
            self.source = Some(Box::new(NamedSource::new(file.name.clone(), file.text.clone())));
        }
        self
    }
    /// The diagnostic against the part `start..end` of its source, named `name`, where every label lies
    /// in it (a label in the `slack` bytes just past its end points at its last character: it ended too
    /// early); otherwise itself. The
    /// REPL shows an entry's error against what was typed, not against the loss it wraps the entry in.
    pub fn within(mut self, start: usize, end: usize, slack: usize, name: &str) -> Diag {
        let Some(text) = self.source.as_ref().map(|s| s.inner().clone()) else {
            return self;
        };
        let fits = |l: &Label| (l.span.start as usize) >= start && (l.span.start as usize) <= end + slack;
        if start > end || end > text.len() || !self.labels.iter().all(fits) {
            return self;
        }
        for l in &mut self.labels {
            if l.span.start as usize >= end && end > start {
                // Past the part: the part ended too early. Point at its last character.
                l.span = Span::new(l.span.source, end - 1 - start, end - start);
                l.text = "it ends here".into();
                if self.message.starts_with("unexpected `") {
                    self.message = "unexpected end of input".into();
                }
                continue;
            }
            let (a, b) = (l.span.start as usize, (l.span.end as usize).min(end));
            l.span = Span::new(l.span.source, a - start, b.max(a) - start);
        }
        self.source = Some(Box::new(NamedSource::new(name, Arc::new(text[start..end].to_string()))));
        self
    }
    /// The primary span, if any.
    pub fn span(&self) -> Option<Span> {
        self.labels.first().map(|l| l.span)
    }
    /// Where the primary span starts in its source: line and column, both from 1 (columns count
    /// characters), where the diagnostic carries its source ([`Diag::with_source`]).
    pub fn line_column(&self) -> Option<(usize, usize)> {
        let text = self.source.as_ref()?.inner();
        let start = (self.span()?.start as usize).min(text.len());
        let before = text.get(..start)?;
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some((line, column))
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diag {}

impl miette::Diagnostic for Diag {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_deref().map(|s| s as &dyn SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.source.as_ref()?;
        Some(Box::new(self.labels.iter().map(|l| {
            LabeledSpan::new(Some(l.text.clone()), l.span.start as usize, l.span.len())
        })))
    }
}

/// Every diagnostic of a failed compilation, in source order.
#[derive(Clone, Debug)]
pub struct Diags(pub Vec<Diag>);

impl fmt::Display for Diags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s)", self.0.len())
    }
}

impl std::error::Error for Diags {}

impl Diags {
    /// Renders every diagnostic as plain text (no colour), as the CLI and the snapshot tests show them.
    pub fn render(&self) -> String {
        self.0.iter().map(render).collect::<Vec<_>>().join("\n")
    }
}

/// The widest source line a diagnostic shows whole; a label on a wider line is shown in an excerpt
/// ([`render`]; miette's renderer cannot place a label past column 65,535 and a wide line is unreadable).
pub const WIDEST_LINE: usize = 400;

/// Renders one diagnostic with miette's graphical handler, colour and links off, unicode on; a label on a
/// line wider than [`WIDEST_LINE`] is shown in an excerpt of its line instead.
pub fn render(diag: &Diag) -> String {
    if let Some(text) = diag.source.as_ref().map(|s| s.inner())
        && diag
            .labels
            .iter()
            .any(|l| widest_near(text, l.span.start as usize) > WIDEST_LINE)
    {
        return render_excerpt(diag, text);
    }
    let handler = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_links(false)
        .with_width(110);
    let mut out = String::new();
    match handler.render_report(&mut out, diag) {
        Ok(()) => out,
        Err(_) => format!("{}: {}\n", diag.code, diag.message),
    }
}

/// The width of the widest of the lines miette shows around byte `at`: its own and one on either side.
fn widest_near(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let before = (start > 0).then(|| line_around(text, start - 1).len());
    let after = (end < text.len()).then(|| line_around(text, end + 1).len());
    [Some(end - start), before, after]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
}

/// The line of `text` that holds byte `at`.
fn line_around(text: &str, at: usize) -> &str {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    &text[start..end]
}

/// [`render`] for labels on wide lines: each label as `file:line:column`, 40 characters of its line on
/// either side of it, and a caret under it.
fn render_excerpt(diag: &Diag, text: &str) -> String {
    let name = diag.source.as_ref().map_or("", |s| s.name());
    let mut out = format!("{}\n\n  × {}\n", diag.code, diag.message);
    for label in &diag.labels {
        let at = (label.span.start as usize).min(text.len());
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..at].chars().count() + 1;
        let whole = line_around(text, at);
        let left: String = text[line_start..at]
            .chars()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let rest = &text[at..line_start + whole.len()];
        let right: String = rest.chars().take(40).collect();
        let trail = if rest.chars().count() > 40 { "…" } else { "" };
        let clipped = column - 1 > left.chars().count();
        let lead = if clipped { "…" } else { "" };
        let width = whole.chars().count();
        let note = if width > WIDEST_LINE {
            format!(" (a line of {width} characters, shown around the column)")
        } else {
            String::new()
        };
        out.push_str(&format!("   ╭─[{name}:{line}:{column}]{note}\n"));
        out.push_str(&format!("   │ {lead}{left}{right}{trail}\n"));
        let pad = lead.chars().count() + left.chars().count();
        out.push_str(&format!("   │ {}^ {}\n", " ".repeat(pad), label.text));
    }
    if let Some(help) = &diag.help {
        out.push_str(&format!("  help: {help}\n"));
    }
    out
}

/// Edit distance, for "did you mean" help.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Edits: insertions, deletions, substitutions and swaps of two neighbours (`mea` is one from `mae`).
    fn distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let sub = d[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
                d[i][j] = sub.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
                }
            }
        }
        d[a.len()][b.len()]
    }
    // Names past the longest word shown are never suggested (and never compared: the table is quadratic).
    let len = name.chars().count();
    if len > LONGEST_WORD {
        return None;
    }
    let limit = (len / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| c.chars().count().abs_diff(len) <= limit)
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

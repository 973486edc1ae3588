//! `lossc repl`: define and try losses interactively.
//!
//! A [`Session`] holds the items entered so far (`loss`, `fn`, `use`, `const`), checked together as one
//! program, and named tensors given as literals (`let s = [[1.0, 2.0], [0.5, 0.1]]`; integer literals
//! make labels). Any other line is an expression, evaluated over those tensors. Commands start with `:`.
//! [`Session::handle`] turns one complete input into the text to show; nothing typed makes it panic, and
//! an error (a rendered diagnostic) leaves the session as it was. The terminal front end (rustyline) adds
//! history, multi-line input (the lexer knows when brackets are balanced), highlighting and completion;
//! without a terminal, stdin is read as a script.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::data::{Data, Rng, Tensor};
use crate::ir::Function;
use crate::syntax::lexer;
use crate::{Compiler, Program};

const HELP: &str = "\
items      loss f(x: f32[N]) { … }   fn g(v) { … }   use std::classification   const K = 3
tensors    let s = [[1.0, 2.0], [0.5, 0.1]]     (integer literals make labels: let y = [1, 0])
           let z = logsumexp[k] s[0, k]          (an expression's value, as a scalar)
expression logsumexp[k] s[0, k]                 (evaluated over the tensors defined so far)
:help                 this text
:load FILE            add the items of a file
:list                 what is defined
:ir NAME              the IR of a loss
:grad NAME            its gradient program
:analyze NAME         what is proven of it: convexity, invariances, boundedness, symmetry
:eval NAME [N=4,…]    loss and gradient norms on the session's tensors (by input name), else seeded random data
:gradcheck NAME [N=…] finite-difference check of the gradient
:bench NAME N=…       time loss + gradient with the JIT
:type EXPR            the kind of an expression
:plot NAMES [OPTIONS] draw losses, e.g. :plot ce,gce --vary margin --range -5:5 --grad -o plot.png
:quit                 leave
With one loss defined, NAME may be left out (`:eval N=8`).";

/// The state of one REPL session.
#[derive(Default)]
pub struct Session {
    items: Vec<String>,
    tensors: BTreeMap<String, Tensor>,
    /// Set by `:quit`.
    pub done: bool,
}

impl Session {
    /// A session with nothing defined.
    pub fn new() -> Session {
        Session::default()
    }

    /// Every name in scope (items, tensors, builtins) for completion.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = crate::prims::Prim::ALL
            .iter()
            .filter_map(|p| p.surface())
            .map(String::from)
            .collect();
        v.extend(
            [
                "sum",
                "mean",
                "max",
                "min",
                "prod",
                "logsumexp",
                "count",
                "topk",
                "argsort",
                "sortnet",
            ]
            .map(String::from),
        );
        v.extend(
            [
                "loss", "fn", "let", "out", "use", "const", "if", "then", "else", "nograd", "state", "updates", "f32",
                "f64", "bf16", "f16", "idx",
            ]
            .map(String::from),
        );
        v.extend(
            crate::sema::stdlib_modules()
                .iter()
                .map(|m| format!("std::{}", m.replace('/', "::"))),
        );
        v.extend(self.tensors.keys().cloned());
        if let Ok(p) = self.program() {
            v.extend(p.module.functions.iter().map(|f| f.name.clone()));
            for item in &p.ast.items {
                if let Some(n) = item.name() {
                    v.push(n.name.clone());
                }
            }
        }
        v.extend(
            HELP.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|w| w.starts_with(':'))
                .map(String::from),
        );
        v.sort();
        v.dedup();
        v
    }

    fn source(&self) -> String {
        self.items.join("\n\n")
    }

    fn program(&self) -> Result<Program, String> {
        Program::from_source("<repl>", &self.source()).map_err(|d| d.render())
    }

    fn loss(&self, name: &str) -> Result<Function, String> {
        let p = self.program()?;
        // A command without a name means the session's only loss.
        if name.is_empty() && p.module.functions.len() > 1 {
            let names: Vec<&str> = p.module.functions.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "error: name a loss after the command: one of {}",
                names.join(", ")
            ));
        }
        let name = (!name.is_empty()).then_some(name);
        let f = p.loss(name).map_err(|d| {
            format!(
                "error: {d}{}",
                d.help.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
            )
        })?;
        Ok(f.clone())
    }

    /// Handles one complete input and returns what to show.
    pub fn handle(&mut self, input: &str) -> String {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return String::new();
        }
        let result = if let Some(cmd) = trimmed.strip_prefix(':') {
            self.command(cmd)
        } else if starts_item(trimmed) {
            self.define(trimmed)
        } else if let Some(rest) = trimmed.strip_prefix("let ") {
            self.tensor(rest)
        } else {
            self.expression(trimmed)
        };
        match result {
            Ok(s) | Err(s) => s,
        }
    }

    fn define(&mut self, item: &str) -> Result<String, String> {
        let mut candidate = self.items.clone();
        candidate.push(item.to_string());
        let text = candidate.join("\n\n");
        let program = Program::from_source("<repl>", &text).map_err(|d| d.render())?;
        let file = Program::parse_only("<repl>", item).map_err(|d| d.render())?;
        self.items = candidate;
        let mut said = Vec::new();
        for it in &file.items {
            match &it.kind {
                crate::syntax::ast::ItemKind::Loss(l) => {
                    let f = program.module.get(&l.name.name);
                    let inputs = f
                        .map(|f| {
                            (f.inputs.iter().filter(|i| i.given()))
                                .map(|i| i.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    said.push(format!("defined loss {}({inputs})", l.name.name));
                }
                crate::syntax::ast::ItemKind::Fn(f) => said.push(format!("defined fn {}", f.name.name)),
                crate::syntax::ast::ItemKind::Extern(e) => said.push(format!("declared extern fn {}", e.name.name)),
                crate::syntax::ast::ItemKind::Const { name, .. } => said.push(format!("defined const {}", name.name)),
                crate::syntax::ast::ItemKind::Use { path, .. } => said.push(format!(
                    "imported {}",
                    path.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join("::")
                )),
            }
        }
        Ok(said.join("\n") + "\n")
    }

    fn tensor(&mut self, rest: &str) -> Result<String, String> {
        let Some((name, literal)) = rest.split_once('=') else {
            return Err("error: write `let NAME = [..]` (tensor literal) or define a loss".into());
        };
        let name = name.trim();
        if !name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "error: `{name}` is not a name (let with indices belongs in a loss body)"
            ));
        }
        // A tensor literal, or else an expression over the tensors so far (a scalar).
        let literal = literal.trim();
        let looks_literal = !literal.chars().any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E');
        let t = match parse_literal(literal) {
            Ok(t) => t,
            Err(e) if looks_literal => return Err(format!("error: {e}")),
            Err(_) => {
                let v = self.expression(literal)?;
                Tensor::scalar(
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("error: `{literal}` is not a number"))?,
                )
            }
        };
        let shape = t.shape.clone();
        let kind = if matches!(t.data, Data::Int(_)) {
            "labels"
        } else {
            "f32"
        };
        self.tensors.insert(name.to_string(), t);
        Ok(format!("{name}: {kind}{shape:?}\n"))
    }

    /// Wraps an expression as a loss over the session's tensors.
    fn wrap(&self, body: &str) -> String {
        let params: Vec<String> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let elem = if matches!(t.data, Data::Int(_)) { "idx" } else { "f32" };
                let dims = t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
                if t.shape.is_empty() {
                    format!("{n}: {elem}")
                } else {
                    format!("{n}: {elem}[{dims}]")
                }
            })
            .collect();
        format!("loss __repl({}) {{\n{body}\n}}", params.join(", "))
    }

    fn with_items(&self, extra: &str) -> String {
        let mut items = self.items.clone();
        items.push(extra.to_string());
        items.join("\n\n")
    }

    /// Renders the diagnostics of a wrapped entry against the entry itself, which ends `tail` bytes before
    /// the end of `text` (`\n}` of the wrapping loss, and what follows the entry inside it).
    fn entry_errors(text: &str, entry: &str, tail: usize, d: crate::diag::Diags) -> String {
        let end = text.len().saturating_sub(tail);
        let start = end.saturating_sub(entry.len());
        crate::diag::Diags(d.0.into_iter().map(|x| x.within(start, end, tail, "<input>")).collect()).render()
    }

    fn expression(&self, expr: &str) -> Result<String, String> {
        let text = self.with_items(&self.wrap(expr));
        let p = Program::from_source("<repl>", &text).map_err(|d| Self::entry_errors(&text, expr, 2, d))?;
        let f = p.loss(Some("__repl")).map_err(|d| format!("error: {d}"))?;
        let inputs: BTreeMap<String, Tensor> = self.tensors.clone();
        let e = crate::api::eval(f, &inputs, &BTreeMap::new()).map_err(|e| format!("error: {e}"))?;
        Ok(format!("{}\n", e.loss))
    }

    fn command(&mut self, cmd: &str) -> Result<String, String> {
        let (name, arg) = cmd
            .split_once(char::is_whitespace)
            .map_or((cmd, ""), |(a, b)| (a, b.trim()));
        match name {
            "help" | "h" => Ok(format!("{HELP}\n")),
            "quit" | "q" | "exit" => {
                self.done = true;
                Ok(String::new())
            }
            "list" => {
                let mut s = String::new();
                for item in &self.items {
                    if let Some(first) = item.lines().find(|l| !l.trim_start().starts_with("//")) {
                        s.push_str(first.trim_end_matches('{').trim_end());
                        s.push('\n');
                    }
                }
                for (n, t) in &self.tensors {
                    s.push_str(&format!("let {n}: {:?}\n", t.shape));
                }
                Ok(s)
            }
            "load" => {
                let text = std::fs::read_to_string(arg).map_err(|e| format!("error: cannot read {arg}: {e}"))?;
                self.define(&text)
            }
            "ir" => Ok(crate::ir::print::function(&self.loss(arg)?)),
            "grad" => {
                let f = self.loss(arg)?;
                let g = crate::api::simplified_gradient(&f).map_err(|d| format!("error: {d}"))?;
                Ok(crate::ir::print::readable(&g))
            }
            "analyze" => {
                let f = self.loss(arg)?;
                let report = crate::analyze::analyze(&f).map_err(|d| format!("error: {d}"))?;
                Ok(report.text())
            }
            "plot" => {
                #[derive(clap::Parser)]
                #[command(name = ":plot", no_binary_name = true)]
                struct PlotLine {
                    #[command(flatten)]
                    args: crate::plot::PlotArgs,
                }
                use clap::Parser;
                let mut words: Vec<String> = arg.split_whitespace().map(String::from).collect();
                // `:plot a,b …`: the session is the file; the first word names the losses.
                if words.first().is_some_and(|w| !w.starts_with('-')) {
                    let names = words.remove(0);
                    words.splice(0..0, ["<session>".to_string(), "--loss".to_string(), names]);
                } else {
                    words.insert(0, "<session>".to_string());
                }
                let line = PlotLine::try_parse_from(&words).map_err(|e| format!("{e}"))?;
                let program = self.program()?;
                crate::plot::render(&program, &line.args)
            }
            "type" => {
                let text = self.with_items(&self.wrap(&format!("let __t = {arg}\n0")));
                let p = Program::from_source("<repl>", &text).map_err(|d| Self::entry_errors(&text, arg, 4, d))?;
                let f = p.loss(Some("__repl")).map_err(|d| format!("error: {d}"))?;
                let kind = match f.tensors[0].scalar {
                    crate::ir::Scalar::Float => "number (float)",
                    crate::ir::Scalar::Int => "number (integer)",
                    crate::ir::Scalar::Bool => "condition",
                };
                Ok(format!("{kind}\n"))
            }
            "eval" | "gradcheck" | "bench" => {
                // `:eval N=5`: sizes without a name are for the session's only loss.
                let (loss, sizes) = match arg.split_once(char::is_whitespace) {
                    _ if arg.split_whitespace().next().is_some_and(|a| a.contains('=')) => ("", arg),
                    Some((a, b)) => (a, b.trim()),
                    None => (arg, ""),
                };
                let f = self.loss(loss)?;
                let (inputs, note) = self.inputs_for(&f, sizes)?;
                let result = match name {
                    "eval" => {
                        let e =
                            crate::api::eval_grad(&f, &inputs, &BTreeMap::new()).map_err(|e| format!("error: {e}"))?;
                        let mut s = format!("loss = {}\n", e.loss);
                        for (n, g) in &e.grads {
                            let norm = g.to_f64().iter().map(|x| x * x).sum::<f64>().sqrt();
                            s.push_str(&format!("|grad_{n}| = {norm}\n"));
                        }
                        Ok(s)
                    }
                    "gradcheck" => {
                        let checks = crate::gradcheck::check(&f, &inputs, &BTreeMap::new(), 64)
                            .map_err(|e| format!("error: {e}"))?;
                        Ok(checks
                            .iter()
                            .map(|c| {
                                format!(
                                    "{:<10} max error {:.3e} ({} checked, {} skipped)\n",
                                    c.name, c.max_error, c.checked, c.skipped
                                )
                            })
                            .collect())
                    }
                    _ => {
                        let k =
                            crate::kernel::Kernel::build(&f, &Compiler::new()).map_err(|d| format!("error: {d}"))?;
                        let t = std::time::Instant::now();
                        let reps = 5;
                        for _ in 0..reps {
                            k.eval(&inputs).map_err(|e| format!("error: {e}"))?;
                        }
                        Ok(format!(
                            "{:.3} ms per call (mean of {reps}, including input conversion)\n",
                            t.elapsed().as_secs_f64() * 1e3 / reps as f64
                        ))
                    }
                };
                result.map(|r| format!("{note}{r}"))
            }
            other => Err(format!("error: unknown command `:{other}` (try :help)\n")),
        }
    }

    /// Inputs for a loss: session tensors by name, the rest seeded random data with `N=4,C=3` sizes.
    /// The inputs of a `:eval`/`:gradcheck`/`:bench` call: the session's tensors of the inputs' names (those
    /// whose shapes agree with sizes given on the line), seeded random data for the rest; and a note
    /// naming the random ones when sizes were given.
    fn inputs_for(&self, f: &Function, sizes: &str) -> Result<(BTreeMap<String, Tensor>, String), String> {
        let mut dims: BTreeMap<String, i64> = BTreeMap::new();
        for pair in sizes.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("error: `{pair}` is not DIM=SIZE"))?;
            dims.insert(
                k.trim().into(),
                v.trim().parse().map_err(|_| format!("error: bad size `{v}`"))?,
            );
        }
        let given = dims.clone();
        // A session tensor whose shape disagrees with a size given on the line is not used.
        let agrees = |input: &crate::ir::Input, t: &Tensor| {
            input.shape.len() == t.shape.len()
                && input.shape.iter().zip(&t.shape).all(|(d, n)| match d {
                    crate::ir::Dim::Sym(s) => given.get(&f.dims[s.index()].name).is_none_or(|g| *g == *n as i64),
                    _ => true,
                })
        };
        let mut inputs: BTreeMap<String, Tensor> = f
            .inputs
            .iter()
            .filter(|i| i.given())
            .filter_map(|i| {
                self.tensors
                    .get(&i.name)
                    .filter(|t| agrees(i, t))
                    .map(|t| (i.name.clone(), t.clone()))
            })
            .collect();
        for (input, t) in f.inputs.iter().filter_map(|i| inputs.get(&i.name).map(|t| (i, t))) {
            for (d, n) in input.shape.iter().zip(&t.shape) {
                if let crate::ir::Dim::Sym(s) = d {
                    dims.entry(f.dims[s.index()].name.clone()).or_insert(*n as i64);
                }
            }
        }
        let sizes: Vec<i64> = f.dims.iter().map(|d| *dims.get(&d.name).unwrap_or(&4)).collect();
        let random: Vec<&str> = (f.inputs.iter())
            .filter(|i| i.given() && !inputs.contains_key(&i.name))
            .map(|i| i.name.as_str())
            .collect();
        let note = if given.is_empty() || random.is_empty() {
            String::new()
        } else {
            let at: Vec<String> = f
                .dims
                .iter()
                .zip(&sizes)
                .map(|(d, n)| format!("{}={n}", d.name))
                .collect();
            format!("(seeded random {} at {})\n", random.join(", "), at.join(","))
        };
        let mut rng = Rng::new(0);
        for input in f.inputs.iter().filter(|i| i.given()) {
            if inputs.contains_key(&input.name) {
                continue;
            }
            let shape: Vec<usize> = input
                .shape
                .iter()
                .map(|d| d.eval(&sizes).clamp(0, 1 << 20) as usize)
                .collect();
            let n: usize = shape.iter().product();
            let t = if input.elem == crate::ir::ElemTy::Idx {
                let b = input.bound.as_ref().map_or(4, |b| b.eval(&sizes).max(1));
                Tensor::labels(shape, (0..n).map(|_| rng.below(b as u64) as i64).collect())
            } else if input.nograd {
                Tensor::float(shape, (0..n).map(|_| rng.uniform()).collect())
            } else {
                Tensor::float(shape, (0..n).map(|_| rng.normal()).collect())
            };
            inputs.insert(input.name.clone(), t);
        }
        Ok((inputs, note))
    }
}

fn starts_item(s: &str) -> bool {
    let first = s
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '/')
        .next()
        .unwrap_or("");
    matches!(first, "loss" | "extern" | "fn" | "use" | "const")
        || s.starts_with("///")
        || s.starts_with("//")
        || s.starts_with("/*")
}

/// A tensor literal: a number, or nested `[…]` lists of equal length. All-integer literals make labels.
pub fn parse_literal(text: &str) -> Result<Tensor, String> {
    #[derive(Debug)]
    enum Lit {
        Num(f64, bool),
        List(Vec<Lit>),
    }
    fn parse(s: &[u8], i: &mut usize, depth: usize) -> Result<Lit, String> {
        if depth > 16 {
            return Err("tensor literal nested too deeply".into());
        }
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
        if *i < s.len() && s[*i] == b'[' {
            *i += 1;
            let mut items = Vec::new();
            loop {
                while *i < s.len() && s[*i].is_ascii_whitespace() {
                    *i += 1;
                }
                if *i < s.len() && s[*i] == b']' {
                    *i += 1;
                    return Ok(Lit::List(items));
                }
                items.push(parse(s, i, depth + 1)?);
                while *i < s.len() && s[*i].is_ascii_whitespace() {
                    *i += 1;
                }
                match s.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {}
                    _ => return Err("expected `,` or `]` in tensor literal".into()),
                }
            }
        }
        let start = *i;
        while *i < s.len() && (s[*i].is_ascii_alphanumeric() || matches!(s[*i], b'.' | b'-' | b'+')) {
            *i += 1;
        }
        let tok = std::str::from_utf8(&s[start..*i]).unwrap_or("");
        let v: f64 = tok.parse().map_err(|_| format!("`{tok}` is not a number"))?;
        Ok(Lit::Num(
            v,
            !tok.contains(['.', 'e', 'E']) && !tok.contains("inf") && !tok.contains("NaN"),
        ))
    }
    fn shape(l: &Lit, out: &mut Vec<usize>) {
        if let Lit::List(items) = l {
            out.push(items.len());
            if let Some(first) = items.first() {
                shape(first, out);
            }
        }
    }
    fn flatten(l: &Lit, shape: &[usize], out: &mut Vec<(f64, bool)>) -> Result<(), String> {
        match (l, shape.split_first()) {
            (Lit::Num(v, int), None) => {
                out.push((*v, *int));
                Ok(())
            }
            (Lit::List(items), Some((n, rest))) if items.len() == *n => {
                items.iter().try_for_each(|x| flatten(x, rest, out))
            }
            _ => Err("ragged tensor literal: every row needs the same length".into()),
        }
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let lit = parse(bytes, &mut i, 0)?;
    if bytes[i..].iter().any(|b| !b.is_ascii_whitespace()) {
        return Err("unexpected text after the tensor literal".into());
    }
    let mut dims = Vec::new();
    shape(&lit, &mut dims);
    let mut values = Vec::new();
    flatten(&lit, &dims, &mut values)?;
    if !values.is_empty() && values.iter().all(|(_, int)| *int) {
        Ok(Tensor::labels(dims, values.iter().map(|(v, _)| *v as i64).collect()))
    } else {
        Ok(Tensor::float(dims, values.iter().map(|(v, _)| *v).collect()))
    }
}

/// Completions of the word that ends at `pos`: (start of the word, candidates).
pub fn complete(names: &[String], line: &str, pos: usize) -> (usize, Vec<String>) {
    let pos = pos.min(line.len());
    let start = line[..pos]
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .map_or(0, |i| i + 1);
    let word = &line[start..pos];
    if word.is_empty() {
        return (start, vec![]);
    }
    (
        start,
        names
            .iter()
            .filter(|n| n.starts_with(word) && n.as_str() != word)
            .cloned()
            .collect(),
    )
}

/// The rustyline helper: completion, highlighting and multi-line validation from the lexer.
struct Helper {
    names: Rc<RefCell<Vec<String>>>,
}

impl rustyline::completion::Completer for Helper {
    type Candidate = String;
    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete(&self.names.borrow(), line, pos))
    }
}

impl rustyline::hint::Hinter for Helper {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for Helper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        Cow::Owned(lexer::highlight(line))
    }
    fn highlight_char(&self, _line: &str, _pos: usize, _kind: rustyline::highlight::CmdKind) -> bool {
        true
    }
}

impl rustyline::validate::Validator for Helper {
    fn validate(
        &self,
        ctx: &mut rustyline::validate::ValidationContext,
    ) -> rustyline::Result<rustyline::validate::ValidationResult> {
        Ok(if lexer::is_complete(ctx.input()) {
            rustyline::validate::ValidationResult::Valid(None)
        } else {
            rustyline::validate::ValidationResult::Incomplete
        })
    }
}

impl rustyline::Helper for Helper {}

/// Splits what the terminal or a script hands over into entries and runs each in order: a line that
/// completes an entry (brackets closed, comments ended) runs it. A paste of a definition followed by
/// `:grad` and `:eval` arrives from the line editor as one text of several lines; each entry in it runs.
pub struct Feeder {
    pending: String,
}

impl Default for Feeder {
    fn default() -> Feeder {
        Feeder::new()
    }
}

impl Feeder {
    /// A feeder with nothing pending.
    pub fn new() -> Feeder {
        Feeder { pending: String::new() }
    }

    /// Runs every entry `text` completes; returns their output, each ending in a newline.
    pub fn feed(&mut self, session: &mut Session, text: &str) -> String {
        let mut out = String::new();
        for line in text.split('\n') {
            if session.done {
                break;
            }
            self.pending.push_str(line);
            self.pending.push('\n');
            if lexer::is_complete(&self.pending) {
                if !self.pending.trim().is_empty() {
                    out.push_str(&ended(session.handle(&self.pending)));
                }
                self.pending.clear();
            }
        }
        out
    }

    /// Runs what is left (an entry the input ended inside).
    pub fn finish(&mut self, session: &mut Session) -> String {
        let rest = std::mem::take(&mut self.pending);
        if rest.trim().is_empty() || session.done {
            return String::new();
        }
        ended(session.handle(&rest))
    }
}

/// `text` ending in a newline (an error printed without one never showed, or stuck to the next output).
fn ended(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Lines typed (or pasted) while an entry ran: the terminal is in cooked mode then, so they wait whole in
/// its input queue. They are read here, because the line editor reads everything queued and keeps only the
/// first line (rustyline issue 690).
#[cfg(unix)]
fn typed_ahead() -> Option<String> {
    let mut ready = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    if unsafe { libc::poll(&mut ready, 1, 0) } <= 0 {
        return None;
    }
    let mut buf = [0u8; 4096];
    // SAFETY: reads at most buf.len() bytes into buf.
    let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

#[cfg(not(unix))]
fn typed_ahead() -> Option<String> {
    None
}

/// Runs the REPL on the terminal, or reads stdin as a script when it is not one.
pub fn run() -> Result<(), String> {
    use std::io::{BufRead, IsTerminal, Write};
    let mut session = Session::new();
    let mut feeder = Feeder::new();
    let show = |text: &str| {
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "{text}");
        let _ = stdout.flush();
    };
    if !std::io::stdin().is_terminal() {
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| format!("error: {e}"))?;
            show(&feeder.feed(&mut session, &line));
            if session.done {
                break;
            }
        }
        show(&feeder.finish(&mut session));
        return Ok(());
    }
    let names = Rc::new(RefCell::new(session.names()));
    let mut editor: rustyline::Editor<Helper, rustyline::history::DefaultHistory> =
        rustyline::Editor::new().map_err(|e| format!("error: {e}"))?;
    editor.set_helper(Some(Helper { names: names.clone() }));
    let history = std::env::var_os("LOSSC_HISTORY")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".lossc_history")));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("lossc repl — :help for help, :quit to leave");
    loop {
        if let Some(text) = typed_ahead() {
            // The terminal echoed it as it was typed; run it without another prompt.
            show(&feeder.feed(&mut session, text.strip_suffix('\n').unwrap_or(&text)));
            *names.borrow_mut() = session.names();
            if session.done {
                break;
            }
            continue;
        }
        show(&feeder.finish(&mut session));
        match editor.readline("lx> ") {
            Ok(text) => {
                let _ = editor.add_history_entry(text.as_str());
                show(&feeder.feed(&mut session, &text));
                show(&feeder.finish(&mut session));
                *names.borrow_mut() = session.names();
                if session.done {
                    break;
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

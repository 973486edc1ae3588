//! The REPL: a scripted session through the binary's stdin, and unit tests of completion, completeness
//! and tensor literals.
#![cfg(feature = "cli")]

use std::io::Write;
use std::process::{Command, Stdio};

use lossc::repl::{Feeder, Session, complete, parse_literal};
use lossc::syntax::lexer::is_complete;

fn run_script(script: &str) -> (String, String, Option<i32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lossc"))
        .arg("repl")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

#[test]
fn a_session_defines_differentiates_evaluates_errs_and_goes_on() {
    let script = "\
loss ce(s: f32[N, C], y: idx[N] < C) {
    mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]]
}
let s = [[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]
let y = [2, 0]
:grad ce
:eval ce
logsumexp[k] s[0, k]
mean[i] s[i, 0] + undefined_name
:type s[0, 1] > 0
:gradcheck ce
:quit
this line is never read
";
    let (out, err, code) = run_script(script);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.contains("defined loss ce(s, y)"), "{out}");
    assert!(out.contains("grad_s[t: N, t.1: C] = select(y[t] == t.1"), "{out}");
    let want = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    assert!(
        out.contains(&format!("{want}"))
            || out
                .lines()
                .any(|l| l.parse::<f64>().is_ok_and(|v| (v - want).abs() < 1e-12)),
        "{out}"
    );
    assert!(out.contains("loss = 0.50586828489"), "{out}");
    assert!(
        out.contains("lossc::E101") && out.contains("unknown name `undefined_name`"),
        "{out}"
    );
    assert!(out.contains("condition"), "{out}");
    assert!(out.contains("max error"), "{out}");
    assert!(!out.contains("never read"), "{out}");
}

/// `:eval NAME N=…` uses the sizes: session tensors of other shapes give way to seeded random data, and
/// a note says so (issue 23: they were used silently); a command without a name takes the only loss, and
/// with several asks for one.
#[test]
fn eval_sizes_and_commands_without_a_name() {
    let script = "\
let s = [[1.0, 2.0], [0.5, 0.1]]
let y = [1, 0]
loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }
:eval ce N=64,C=10
:eval ce N=2
:grad
loss two(x: f32[N]) { mean[i] x[i] }
:grad
";
    let (out, err, _) = run_script(script);
    let all = format!("{out}{err}");
    assert!(all.contains("(seeded random s, y at N=64,C=10)"), "{all}");
    // With sizes the session's tensors agree with, they are used (no note, their loss).
    assert_eq!(all.matches("loss = 0.41313846995").count(), 1, "{all}");
    assert!(all.contains("grad_s[t: N, t.1: C]"), "{all}");
    assert!(all.contains("name a loss after the command: one of ce, two"), "{all}");
}

/// An error in an entry is shown against what was typed (it was shown inside the loss the REPL wraps the
/// entry in, `loss __repl(…)`, at its line 2); an entry that ends too early says so at its end.
#[test]
fn entry_errors_point_at_what_was_typed() {
    let script = "let s = [[1.0, 2.0], [0.5, 0.1]]\nmean[i] s[i, 0] + undefined_name\nlogsumexp[k] s[0, k] +\n:type s[0, 1] > nope\n";
    let (out, err, _) = run_script(script);
    let all = format!("{out}{err}");
    assert!(!all.contains("__repl"), "{all}");
    assert!(all.contains("<input>:1:19]"), "{all}");
    assert!(all.contains("1 │ mean[i] s[i, 0] + undefined_name"), "{all}");
    assert!(all.contains("unexpected end of input"), "{all}");
    assert!(all.contains("1 │ s[0, 1] > nope"), "{all}");
}

#[test]
fn errors_leave_the_session_unchanged() {
    let mut s = Session::new();
    assert!(s.handle("loss f(x: f32[N]) { sum[i] x[i] }").contains("defined loss f"));
    assert!(s.handle("loss g(x: f32[N]) { sum[i] x[i] + }").contains("lossc::E001"));
    assert!(
        s.handle("loss f(x: f32[N]) { 2 }").contains("lossc::E102"),
        "a duplicate is refused"
    );
    assert!(s.handle(":eval f N=3").contains("loss = "));
    // Sizes without a name are for the only loss.
    let only = s.handle(":eval N=3");
    assert!(only.contains("loss = ") && only.contains("N=3"), "{only}");
    assert!(s.handle("let x = [[1, 2], [3]]").contains("ragged"));
    assert!(s.handle(":ir nope").contains("no loss named `nope`"));
    assert!(s.handle(":load /nonexistent.lx").contains("cannot read"));
    assert!(s.handle(":bench f N=1000").contains("ms per call"));
    // let of an expression: its value, as a scalar tensor usable afterwards.
    s.handle("let v = [1.0, 2.0, 3.0]");
    assert_eq!(s.handle("let total = sum[i] v[i]"), "total: f32[]\n");
    assert_eq!(s.handle("total * 2").trim(), "12");
    assert!(s.handle("let bad = nope + 1").contains("lossc::E101"));
}

#[test]
fn nothing_typed_panics() {
    let mut s = Session::new();
    let lines = [
        "",
        ":",
        "::",
        ":eval",
        ":type",
        ":type (",
        "let",
        "let =",
        "let 3 = [1]",
        "let x = ",
        "let x = [",
        "let x = [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]",
        "let x = [1e999]",
        "]",
        "[",
        "loss",
        "fn",
        "use std::",
        "use nothing",
        "const K =",
        "1 +",
        "mean[i]",
        "sum[k] k",
        "x[0]",
        ":grad",
        ":gradcheck nope",
        ":bench",
        ":load",
        "/*",
        "//",
        "\u{0}",
        "é",
        "let x = [1, 2.5]",
        "x[0] + x[1]",
        ":type x",
    ];
    for l in lines {
        let _ = s.handle(l);
    }
    assert!(s.handle("x[1]").starts_with("2.5"));
}

#[test]
fn completeness_follows_brackets_and_comments() {
    assert!(is_complete("loss f(x: f32[N]) { sum[i] x[i] }"));
    assert!(!is_complete("loss f(x: f32[N]) {\n    sum[i] x[i]"));
    assert!(!is_complete("let s = [[1.0, 2.0],"));
    assert!(!is_complete("/* open /* nested */"));
    assert!(is_complete("/* a /* b */ c */ 1"));
    assert!(is_complete("x ) )"), "surplus closers are the parser's to report");
    assert!(is_complete("// a comment with ( inside"));
    assert!(
        is_complete("sortnet[k](x[r, k]; network = \"(bitonic\")[i, j]"),
        "brackets in a string"
    );
    assert!(!is_complete("sortnet[k](x[r, k]; network = \"bitonic\""));
}

#[test]
fn completion_offers_builtins_stdlib_and_session_names() {
    let mut s = Session::new();
    s.handle("loss my_loss(x: f32[N]) { sum[i] x[i] }");
    s.handle("let logits = [1.0, 2.0]");
    let names = s.names();
    let (start, c) = complete(&names, "mean[i] logs", 12);
    assert_eq!(start, 8);
    assert!(c.contains(&"logsumexp".to_string()), "{c:?}");
    let (_, c) = complete(&names, ":eval my_", 9);
    assert_eq!(c, vec!["my_loss".to_string()]);
    let (_, c) = complete(&names, "use std::cl", 11);
    assert!(c.contains(&"std::classification".to_string()), "{c:?}");
    let (_, c) = complete(&names, "logi", 4);
    assert!(c.contains(&"logits".to_string()), "{c:?}");
    let (_, c) = complete(&names, ":gr", 3);
    assert!(
        c.contains(&":grad".to_string()) && c.contains(&":gradcheck".to_string()),
        "{c:?}"
    );
}

#[test]
fn tensor_literals() {
    let t = parse_literal("[[1.0, 2.0], [0.5, 0.1]]").unwrap();
    assert_eq!(t.shape, vec![2, 2]);
    assert_eq!(t.to_f64(), vec![1.0, 2.0, 0.5, 0.1]);
    let y = parse_literal("[1, 0, 2]").unwrap();
    assert!(matches!(y.data, lossc::data::Data::Int(_)));
    assert_eq!(parse_literal("3.5").unwrap().shape, Vec::<usize>::new());
    assert!(parse_literal("[[1], [2, 3]]").is_err());
    assert!(parse_literal("[1, 2").is_err());
    assert!(parse_literal("[1 2]").is_err());
}

/// A paste arrives from the line editor as one text of several lines (bracketed paste): every entry in it
/// runs, in order, and every output ends in a newline (issue 23: only the definition ran).
#[test]
fn a_pasted_block_runs_every_entry_in_order() {
    let mut session = Session::new();
    let mut feeder = Feeder::new();
    let paste = "loss ce(s: f32[N, C], y: idx[N] < C) {\n    mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]]\n}\n:grad ce\n:eval ce N=4,C=3\n:eval nosuch";
    let out = feeder.feed(&mut session, paste) + &feeder.finish(&mut session);
    let defined = out.find("defined loss ce").unwrap_or_else(|| panic!("{out}"));
    let grad = out.find("grad_s[").unwrap_or_else(|| panic!("{out}"));
    let eval = out.find("\nloss = ").unwrap_or_else(|| panic!("{out}"));
    let error = out.find("no loss named `nosuch`").unwrap_or_else(|| panic!("{out}"));
    assert!(defined < grad && grad < eval && eval < error, "{out}");
    assert!(out.ends_with('\n'), "{out:?}");
    // An entry split across two feeds runs once it is complete.
    let out = feeder.feed(&mut session, "loss g(x: f32[N]) {");
    assert_eq!(out, "");
    let out = feeder.feed(&mut session, "  mean[i] x[i] }\n:eval g N=2");
    assert!(out.contains("defined loss g") && out.contains("loss = "), "{out}");
}

/// The REPL in a real terminal (tmux): lines typed ahead while an entry runs all run, in order, and a
/// paste of a definition with `:grad` and `:eval` runs every entry, bracketed or plain (issue 23). Skipped, saying
/// so, where tmux is not installed (`.ci/run` installs it).
#[test]
fn typeahead_and_paste_in_a_real_terminal() {
    use std::process::Command;
    use std::time::{Duration, Instant};
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let socket = format!("lossc-test-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").arg("-L").arg(&socket).args(args).output().unwrap();
    let repl = format!("LOSSC_HISTORY=/dev/null {} repl; sleep 60", env!("CARGO_BIN_EXE_lossc"));
    assert!(
        tmux(&["new-session", "-d", "-s", "r", "-x", "200", "-y", "60", &repl])
            .status
            .success()
    );
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-S", "-200", "-t", "r"]).stdout).into_owned();
    let wait_for = |what: &str| {
        let start = Instant::now();
        while !screen().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "waited for {what:?}:\n{}",
                screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("lx>");
    tmux(&[
        "send-keys",
        "-t",
        "r",
        "use std::classification::cross_entropy",
        "Enter",
    ]);
    wait_for("imported std::classification::cross_entropy");
    // Typed ahead while the first evaluation runs.
    tmux(&["send-keys", "-t", "r", ":eval cross_entropy N=100000,C=40", "Enter"]);
    tmux(&["send-keys", "-t", "r", ":eval cross_entropy N=2,C=3", "Enter"]);
    tmux(&["send-keys", "-t", "r", ":grad cross_entropy", "Enter"]);
    tmux(&["send-keys", "-t", "r", ":eval cross_entropy N=3,C=2", "Enter"]);
    wait_for("grad_s[t");
    let start = Instant::now();
    while screen().matches("\nloss = ").count() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "three evaluations:\n{}",
            screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A bracketed paste of a definition and two commands, then Enter.
    let paste = "loss ce2(s: f32[N, C], y: idx[N] < C) {\n    mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]]\n}\n:grad ce2\n:eval ce2 N=4,C=3";
    let buffer = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc-paste-{}", std::process::id()));
    std::fs::write(&buffer, paste).unwrap();
    tmux(&["load-buffer", buffer.to_str().unwrap()]);
    tmux(&["paste-buffer", "-p", "-t", "r"]);
    tmux(&["send-keys", "-t", "r", "Enter"]);
    wait_for("defined loss ce2");
    wait_for(
        "grad_s[t: N, t.1: C] = select(y[t] == t.1, -(1.0 / N), 0.0) + 1.0 / N * exp(s[t, t.1] - (logsumexp[k: C] s[t, k]))\n",
    );
    let start = Instant::now();
    while screen().matches("\nloss = ").count() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the pasted :eval:\n{}",
            screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A plain paste (no brackets: old terminals, `tmux paste-buffer` without -p) arrives as typed keys in
    // one read; the lines after the first entry stay in the line reader's buffer and run in order.
    let plain = "loss ce3(s: f32[N, C], y: idx[N] < C) {\n    mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]]\n}\n:grad ce3\n:eval ce3 N=5,C=2\n";
    std::fs::write(&buffer, plain).unwrap();
    tmux(&["load-buffer", buffer.to_str().unwrap()]);
    tmux(&["paste-buffer", "-t", "r"]);
    wait_for("defined loss ce3");
    wait_for("lx> :grad ce3\nloss ce3(");
    let start = Instant::now();
    while screen().matches("\nloss = ").count() < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the plainly pasted :eval:\n{}",
            screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&buffer);
    tmux(&["kill-server"]);
}

/// An `extern fn` is an item the session declares, and a stdlib loss calling one evaluates (issue 24).
#[test]
fn externs_are_declared_and_extern_losses_run() {
    let script = "\
extern fn pick(x: f32[N] nograd) -> (at: idx[N] < N)
use std::topology::betti_matching_loss
:eval betti_matching_loss B=1,H=4,W=4
";
    let (out, err, code) = run_script(script);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("declared extern fn pick"), "{out}");
    assert!(out.contains("loss = "), "{out}");
    assert!(!out.contains("lossc::E"), "{out}");
}

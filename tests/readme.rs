//! The README's command samples (fenced blocks that start with `$ lossc …`) are what the commands print:
//! each command is run (the REPL's entries fed as a script) and the sample's lines must appear in its
//! output in order. A line with `…` stands for any line that starts with the text before it (a lone `…`
//! for lines left out); a sample without `…` must match the output line for line.

use std::io::Write;
use std::process::{Command, Stdio};

/// The samples: the command line and the lines shown after it.
fn samples() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        // A fence opens a block (of any language) that the next fence closes.
        if !line.starts_with("```") {
            continue;
        }
        let block: Vec<String> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .map(String::from)
            .collect();
        if let Some(command) = block.first().and_then(|l| l.strip_prefix("$ lossc ")) {
            out.push((command.to_string(), block[1..].to_vec()));
        }
    }
    out
}

/// Whether `shown` appears in `actual` in order, as the module's doc says.
fn matches(shown: &[String], actual: &[&str]) -> Result<(), String> {
    let elided = shown.iter().any(|l| l.contains('…'));
    if !elided && shown.len() != actual.len() {
        return Err(format!("{} lines shown, {} printed", shown.len(), actual.len()));
    }
    let mut at = 0;
    for line in shown {
        if line.trim() == "…" {
            continue;
        }
        let prefix = line.split('…').next().unwrap_or_default().trim_end();
        let fits = |a: &str| {
            if line.contains('…') {
                a.starts_with(prefix)
            } else {
                a == line
            }
        };
        match actual[at..].iter().position(|a| fits(a)) {
            Some(k) if elided || k == 0 => at += k + 1,
            _ => return Err(format!("not printed in order: {line}")),
        }
    }
    Ok(())
}

#[test]
fn readme_samples_are_what_the_commands_print() {
    let samples = samples();
    assert!(samples.len() >= 3, "{} samples", samples.len());
    for (command, shown) in samples {
        let args: Vec<&str> = command.split_whitespace().collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lossc"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("LOSSC_HISTORY", concat!(env!("CARGO_TARGET_TMPDIR"), "/readme_history"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The REPL's entries, as a script: each `lx>` line and the lines that continue it.
        let mut script = String::new();
        let mut entry = false;
        for line in &shown {
            if let Some(e) = line.strip_prefix("lx> ") {
                script.push_str(e);
                script.push('\n');
                entry = !e.starts_with(':') && e.matches('{').count() > e.matches('}').count();
            } else if entry {
                script.push_str(line);
                script.push('\n');
                entry = line != "}";
            }
        }
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // What the REPL prints for an entry: the sample's lines that are not the entries themselves.
        let is_repl = args == ["repl"];
        let shown: Vec<String> = if is_repl {
            let mut kept = Vec::new();
            let mut entry = false;
            for line in shown.iter().skip(1) {
                if let Some(e) = line.strip_prefix("lx> ") {
                    entry = !e.starts_with(':') && e.matches('{').count() > e.matches('}').count();
                } else if entry {
                    entry = line != "}";
                } else {
                    kept.push(line.clone());
                }
            }
            // The session's own output is compared up to the elided error report.
            kept.push("…".into());
            kept
        } else {
            shown
        };
        let actual: Vec<&str> = printed.lines().filter(|l| !l.trim().is_empty()).collect();
        let shown: Vec<String> = shown.into_iter().filter(|l| !l.trim().is_empty()).collect();
        if let Err(e) = matches(&shown, &actual) {
            panic!("README sample `lossc {command}`: {e}\n--- printed:\n{printed}");
        }
    }
}

//! `lossc plot`: PNG and SVG files are written, and the series (checked through `--csv`) are the losses
//! and derivatives the `--vary` mode defines.
#![cfg(feature = "cli")]

use std::process::Command;

fn lossc(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_lossc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc-plot-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Parses the CSV into (header, rows).
fn csv(path: &std::path::Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    (header, rows)
}

fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn margin_curves_and_derivatives() {
    let d = scratch("margin");
    let (png, data) = (d.join("c.png"), d.join("c.csv"));
    let (code, _, err) = lossc(&[
        "plot",
        "examples/plots/classic.lx",
        "--loss",
        "cross_entropy,mae,gce",
        "--vary",
        "margin",
        "--range",
        "-4:4",
        "--grad",
        "--points",
        "81",
        "-o",
        png.to_str().unwrap(),
        "--csv",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG"),
        "{} bytes",
        bytes.len()
    );
    let (h, rows) = csv(&data);
    assert_eq!(rows.len(), 81);
    let (x, ce, dce, mae, dmae, gce) = (
        column(&h, "x"),
        column(&h, "cross_entropy"),
        column(&h, "d cross_entropy"),
        column(&h, "mae"),
        column(&h, "d mae"),
        column(&h, "gce"),
    );
    for r in &rows {
        let m = r[x];
        // Two classes, scores [m, 0], true class 0: CE = log(1 + e^-m), MAE = 1 - sigmoid(m).
        assert!((r[ce] - (1.0 + (-m).exp()).ln()).abs() < 1e-12, "CE at {m}");
        assert!((r[dce] + sigmoid(-m)).abs() < 1e-12, "dCE at {m}");
        assert!((r[mae] - (1.0 - sigmoid(m))).abs() < 1e-12, "MAE at {m}");
        assert!((r[dmae] + sigmoid(m) * sigmoid(-m)).abs() < 1e-12, "dMAE at {m}");
        assert!(
            (r[gce] - (1.0 - sigmoid(m).powf(0.7)) / 0.7).abs() < 1e-12,
            "GCE at {m}"
        );
    }
}

#[test]
fn prob_mode_and_svg() {
    let d = scratch("prob");
    let (svg, data) = (d.join("p.svg"), d.join("p.csv"));
    let (code, _, err) = lossc(&[
        "plot",
        "examples/anyloss_f1.lx",
        "--vary",
        "prob",
        "--range",
        "0.1:0.9",
        "--grad",
        "--points",
        "9",
        "-o",
        svg.to_str().unwrap(),
        "--csv",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("<svg") && text.contains("anyloss_f1"),
        "svg without legend"
    );
    let (h, rows) = csv(&data);
    let (x, l) = (column(&h, "x"), column(&h, "anyloss_f1"));
    for r in &rows {
        // One positive example: A = sigmoid(73 (p - 0.5)), TP = A, FN = 1 - A, FP = 0: 1 - 2A / (A + 1).
        let a = sigmoid(73.0 * (r[x] - 0.5));
        assert!((r[l] - (1.0 - 2.0 * a / (a + 1.0))).abs() < 1e-12, "at {}", r[x]);
    }
    // Multi-class losses in prob mode: p is the softmax probability of the true class.
    let data2 = d.join("ce.csv");
    let (code, _, err) = lossc(&[
        "plot",
        "examples/cross_entropy.lx",
        "--vary",
        "prob",
        "--range",
        "0.05:0.95",
        "--classes",
        "4",
        "--points",
        "7",
        "--grad",
        "-o",
        d.join("ce.png").to_str().unwrap(),
        "--csv",
        data2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (h, rows) = csv(&data2);
    for r in &rows {
        let p = r[column(&h, "x")];
        assert!((r[column(&h, "cross_entropy")] + p.ln()).abs() < 1e-12);
        assert!(
            (r[column(&h, "d cross_entropy")] + 1.0 / p).abs() < 1e-9,
            "d(-log p)/dp at {p}"
        );
    }
}

#[test]
fn bad_arguments_are_errors() {
    let d = scratch("bad");
    let out = d.join("x.png");
    let o = out.to_str().unwrap();
    let (code, _, err) = lossc(&["plot", "examples/cross_entropy.lx", "--range", "3:1", "-o", o]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--range"), "{err}");
    let (code, _, err) = lossc(&[
        "plot",
        "examples/cross_entropy.lx",
        "--vary",
        "prob",
        "--range",
        "0:1",
        "-o",
        o,
    ]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = lossc(&[
        "plot",
        "examples/cross_entropy.lx",
        "-o",
        d.join("x.gif").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains(".png or .svg"), "{err}");
    let (code, _, err) = lossc(&["plot", "examples/cross_entropy.lx", "--loss", "nope", "-o", o]);
    assert_eq!(code, 1);
    assert!(err.contains("no loss named `nope`"), "{err}");
}

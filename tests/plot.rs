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

// A figure for a paper: a title, the derivative in its own panel with its own axis label, each loss in
// one colour in both panels, and the legend beside the panels (never over a curve).
#[test]
fn figures_have_a_title_a_derivative_panel_and_a_legend_beside_the_curves() {
    let d = scratch("paper");
    let svg = d.join("f.svg");
    let (code, _, err) = lossc(&[
        "plot",
        "std::classification::cross_entropy",
        "--grad",
        "--title",
        "Cross-entropy and its slope",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    for want in [
        "Cross-entropy and its slope",
        "\nloss\n",
        "d loss / d margin",
        "dashed: derivative",
    ] {
        assert!(text.contains(want), "no `{want}` in the figure");
    }
    // Where the legend's name is written, and the x extent of every drawn curve.
    let attr = |tag: &str, name: &str| -> Option<String> {
        let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[at..].split('"').next()?.to_string())
    };
    let legend_x: f64 = text
        .split("<text")
        .find(|t| t.contains(">\ncross_entropy\n<"))
        .and_then(|t| attr(t, "x"))
        .expect("legend entry")
        .parse()
        .unwrap();
    let colour = lossc::plot::PALETTE[lossc::plot::colours(&["cross_entropy"])[0]];
    let stroke = format!("#{:02X}{:02X}{:02X}", colour.0, colour.1, colour.2);
    let mut curve_xs = Vec::new();
    for tag in text.split("<polyline").skip(1) {
        if attr(tag, "stroke").is_some_and(|s| s.eq_ignore_ascii_case(&stroke)) {
            let points = attr(tag, "points").unwrap();
            curve_xs.extend(
                points
                    .split_whitespace()
                    .map(|p| p.split(',').next().unwrap().parse::<f64>().unwrap()),
            );
        }
    }
    assert!(
        curve_xs.len() > 100,
        "the loss and its derivative drawn in the loss's colour"
    );
    let right = curve_xs.iter().copied().fold(f64::MIN, f64::max);
    assert!(
        legend_x > right,
        "legend at x = {legend_x} overlaps curves reaching x = {right}"
    );
}

// Every line colour is readable on white (WCAG contrast at least 3:1: no yellow, no cyan), the losses of
// one figure get distinct colours, and a loss keeps its colour from figure to figure.
#[test]
fn line_colours_are_readable_distinct_and_kept_by_name() {
    let luminance = |(r, g, b): (u8, u8, u8)| {
        let lin = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    };
    for c in lossc::plot::PALETTE {
        let contrast = 1.05 / (luminance(c) + 0.05);
        assert!(contrast >= 3.0, "{c:?} has contrast {contrast:.2} on white");
    }
    let names = ["cross_entropy", "mae", "gce", "z_loss", "focal", "comp_sum", "ldr_kl"];
    let slots = lossc::plot::colours(&names);
    let mut seen = slots.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), names.len(), "{slots:?}");
    // Alone or in any figure where its slot is free, a loss has the same colour.
    for (k, name) in names.iter().enumerate() {
        let alone = lossc::plot::colours(&[name])[0];
        let first = lossc::plot::colours(&[name, "cross_entropy"])[0];
        assert_eq!(alone, first, "{name}");
        if k > 0 && !slots[..k].contains(&alone) {
            assert_eq!(slots[k], alone, "{name}");
        }
    }
}

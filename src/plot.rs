//! `lossc plot`: several losses (and optionally their derivatives) against one varied quantity, drawn
//! with plotters as PNG or SVG, with the series also written as CSV on request.
//!
//! What `--vary` varies, for a batch of one example of class 0 (binary targets: positive):
//! - `margin`: multi-class scores `s = [m, 0, …, 0]` with the true class first, so `m` is the true-class
//!   margin over every other class (`--classes C`, default 2). A loss whose prediction is a single score
//!   gets `m` as that score.
//! - `logit`: the true-class (or single) score itself; for multi-class losses the other scores are 0, as
//!   for `margin`.
//! - `prob`: the probability of the true class: multi-class scores are `log p` and `log((1-p)/(C-1))`; a
//!   loss whose prediction is a single number gets `p` directly (AnyLoss-style inputs).
//!
//! The prediction is a loss's first differentiable float input; labels are class 0 (`idx` with a bound:
//! class 0; binary 0/1 targets: 1); every other float input is 0. `--grad` adds the derivative of each
//! loss with respect to the varied quantity (from the symbolic gradient, by the chain rule).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::Program;
use crate::data::Tensor;
use crate::ir::{ElemTy, Function};

/// What the x axis varies.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Vary {
    /// The margin `s_y - s_other` of a score vector.
    Margin,
    /// One logit (binary losses).
    Logit,
    /// A probability in (0, 1).
    Prob,
}

/// `lossc plot`'s arguments.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// The .lx file (or a stdlib loss by path: std::module::loss).
    pub file: PathBuf,
    /// Comma-separated loss names (default: every loss of the file).
    #[arg(long)]
    pub loss: Option<String>,
    /// What the x axis varies.
    #[arg(long, value_enum, default_value = "margin")]
    pub vary: Vary,
    /// The range of the varied quantity, LO:HI.
    #[arg(long, default_value = "-5:5", allow_hyphen_values = true)]
    pub range: String,
    /// Also draw each loss's derivative with respect to the varied quantity.
    #[arg(long)]
    pub grad: bool,
    /// Classes for multi-class losses.
    #[arg(long, default_value_t = 2)]
    pub classes: usize,
    /// Points per series.
    #[arg(long, default_value_t = 201)]
    pub points: usize,
    /// The image to write: .png or .svg.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Also write the series as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// A title above the figure (none by default).
    #[arg(long)]
    pub title: Option<String>,
}

/// One drawn series.
pub struct Series {
    /// The loss (or `name'` for its derivative).
    pub name: String,
    /// One value per point.
    pub ys: Vec<f64>,
}

/// `lossc plot`: evaluates the losses along the varied quantity and draws them.
pub fn run(args: &PlotArgs) -> Result<String, String> {
    if let Some(dir) = args
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        return Err(format!(
            "error: cannot write {}: the directory {} does not exist",
            args.output.display(),
            dir.display()
        ));
    }
    let program = Program::from_file(&args.file).map_err(|d| d.render())?;
    render(&program, args)
}

/// Plots losses of an already checked program (the REPL's `:plot`).
pub fn render(program: &Program, args: &PlotArgs) -> Result<String, String> {
    let names: Vec<String> = match &args.loss {
        Some(l) => l
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => program.module.functions.iter().map(|f| f.name.clone()).collect(),
    };
    let (lo, hi) = args
        .range
        .split_once(':')
        .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
        .filter(|(a, b)| a < b && a.is_finite() && b.is_finite())
        .ok_or_else(|| format!("error: --range must be LO:HI with LO < HI, got `{}`", args.range))?;
    if args.vary == Vary::Prob && (lo <= 0.0 || hi >= 1.0) {
        return Err("error: with --vary prob the range must lie inside (0, 1), e.g. 0.01:0.99".into());
    }
    let points = args.points.clamp(2, 100_000);
    let classes = args.classes.clamp(2, 10_000);
    let xs: Vec<f64> = (0..points)
        .map(|k| lo + (hi - lo) * k as f64 / (points - 1) as f64)
        .collect();
    let mut computed = Vec::new();
    for name in &names {
        let f = program.loss(Some(name)).map_err(|d| format!("error: {d}"))?;
        let g = crate::api::gradient(f).map_err(|d| format!("error: {d}"))?;
        computed.push((name, curve(f, &g, args.vary, classes, &xs)?));
    }
    let label = match args.vary {
        Vary::Margin => "true-class margin",
        Vary::Logit => "true-class logit",
        Vary::Prob => "true-class probability",
    };
    let curves: Vec<Curve> = computed
        .iter()
        .map(|(name, (values, slopes))| Curve {
            name,
            values,
            slopes: args.grad.then_some(&slopes[..]),
        })
        .collect();
    draw(&args.output, args.title.as_deref(), label, &xs, &curves)?;
    let mut series = Vec::new();
    for (name, (values, slopes)) in computed {
        series.push(Series {
            name: name.clone(),
            ys: values,
        });
        if args.grad {
            series.push(Series {
                name: format!("d {name}"),
                ys: slopes,
            });
        }
    }
    if let Some(csv) = &args.csv {
        write_csv(csv, &xs, &series)?;
    }
    Ok(format!("wrote {}\n", args.output.display()))
}

/// Loss values and derivatives along `xs`.
fn curve(f: &Function, g: &Function, vary: Vary, classes: usize, xs: &[f64]) -> Result<(Vec<f64>, Vec<f64>), String> {
    let Some(pred) = f.inputs.iter().position(|i| i.differentiable()) else {
        return Err(format!("error: `{}` has no differentiable input to vary", f.name));
    };
    let rank = f.inputs[pred].shape.len();
    if rank > 2 {
        return Err(format!(
            "error: `{}`: the prediction `{}` has rank {rank}; plot takes rank 1 or 2",
            f.name, f.inputs[pred].name
        ));
    }
    let (mut values, mut slopes) = (Vec::new(), Vec::new());
    for &x in xs {
        let mut inputs = BTreeMap::new();
        // Dimensions: the batch has one example; a class axis has `classes` entries.
        for (k, input) in f.inputs.iter().enumerate() {
            let shape: Vec<usize> = input
                .shape
                .iter()
                .enumerate()
                .map(|(a, _)| if a == 0 { 1 } else { classes })
                .collect();
            let n: usize = shape.iter().product();
            let t = if k == pred {
                let mut v = vec![0.0; n];
                match (vary, rank) {
                    (Vary::Prob, 2) => v.iter_mut().enumerate().for_each(|(c, s)| {
                        *s = if c == 0 {
                            x.ln()
                        } else {
                            ((1.0 - x) / (classes - 1) as f64).ln()
                        }
                    }),
                    _ => {
                        if let Some(first) = v.first_mut() {
                            *first = x;
                        }
                    }
                }
                Tensor::float(shape, v)
            } else if input.elem == ElemTy::Idx {
                let label = if input.bound.is_some() && rank == 2 { 0 } else { 1 };
                Tensor::labels(shape, vec![label; n])
            } else if input.nograd {
                Tensor::float(shape, vec![1.0; n])
            } else {
                Tensor::float(shape, vec![0.0; n])
            };
            inputs.insert(input.name.clone(), t);
        }
        let e = crate::api::eval(g, &inputs, &BTreeMap::new()).map_err(|e| format!("error: `{}`: {e}", f.name))?;
        values.push(e.loss);
        let grad = e
            .grads
            .iter()
            .find(|(n, _)| *n == f.inputs[pred].name)
            .map(|(_, t)| t.to_f64())
            .unwrap_or_default();
        let slope = match (vary, rank) {
            (Vary::Prob, 2) => grad
                .iter()
                .enumerate()
                .map(|(c, d)| if c == 0 { d / x } else { -d / (1.0 - x) })
                .sum(),
            _ => grad.first().copied().unwrap_or(f64::NAN),
        };
        slopes.push(slope);
    }
    Ok((values, slopes))
}

/// Line colours readable on white (contrast at least 3:1; no yellow or cyan): the Okabe–Ito colours a
/// colour-blind reader tells apart, less yellow and sky blue, and three darker tones.
pub const PALETTE: [(u8, u8, u8); 9] = [
    (0x00, 0x72, 0xB2), // blue
    (0xD5, 0x5E, 0x00), // vermillion
    (0x00, 0x9E, 0x73), // bluish green
    (0xCC, 0x79, 0xA7), // reddish purple
    (0x00, 0x00, 0x00), // black
    (0xB8, 0x6E, 0x00), // dark orange
    (0x88, 0x22, 0x55), // wine
    (0x33, 0x22, 0x88), // indigo
    (0x66, 0x66, 0x66), // grey
];

/// The palette slot of each loss: one fixed by its name (FNV-1a), so a loss keeps its colour across
/// figures; two losses of one figure on the same slot move the later one to the next free slot.
pub fn colours(names: &[&str]) -> Vec<usize> {
    let mut taken = [false; PALETTE.len()];
    names
        .iter()
        .map(|name| {
            let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let home = (hash % PALETTE.len() as u64) as usize;
            let slot = (0..PALETTE.len())
                .map(|k| (home + k) % PALETTE.len())
                .find(|k| !taken[*k])
                .unwrap_or(home);
            taken[slot] = true;
            slot
        })
        .collect()
}

/// A y range covering the finite values, fenced at half the 1st-99th percentile spread beyond those
/// percentiles, so a singular point (Z-loss's derivative at equal logits, say) does not flatten every
/// curve; what lies beyond the fence is clipped. Padded by 5 %.
fn y_range<'a>(curves: impl Iterator<Item = &'a [f64]>) -> (f64, f64) {
    let mut finite: Vec<f64> = curves.flatten().copied().filter(|y| y.is_finite()).collect();
    finite.sort_by(f64::total_cmp);
    let (mut lo, mut hi) = match finite.len() {
        0 => (0.0, 1.0),
        n => {
            let (q01, q99) = (finite[n / 100], finite[(n - 1) - n / 100]);
            let spread = (q99 - q01) / 2.0;
            (finite[0].max(q01 - spread), finite[n - 1].min(q99 + spread))
        }
    };
    if hi <= lo {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// An axis label: at most three decimals, no trailing zeros, and never `-0`.
fn tick(v: f64) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "-0" | "" => "0".into(),
        t => t.into(),
    }
}

/// The runs of consecutive points inside `lo..=hi`: a curve leaving the range (a spike, a pole, a NaN)
/// is drawn with a gap there, not pinned to the frame.
fn in_range_runs(xs: &[f64], ys: &[f64], lo: f64, hi: f64) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for (x, y) in xs.iter().zip(ys) {
        if (lo..=hi).contains(y) {
            if let Some(run) = runs.last_mut() {
                run.push((*x, *y));
            }
        } else if runs.last().is_some_and(|r| !r.is_empty()) {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// One loss of a figure: its values and, with `--grad`, its derivative.
struct Curve<'a> {
    name: &'a str,
    values: &'a [f64],
    slopes: Option<&'a [f64]>,
}

impl<'a> Curve<'a> {
    /// Its values, or its derivative (where drawn).
    fn ys(&self, derivative: bool) -> Option<&'a [f64]> {
        if derivative { self.slopes } else { Some(self.values) }
    }
}

/// The longest loss name the legend shows whole.
const LEGEND_NAME: usize = 22;

/// Draws the figure: the losses in one panel and, with derivatives, those (dashed, in the loss's colour)
/// in a second panel below with its own axis; the legend sits to the right of the panels, so it never
/// covers a curve.
fn draw(path: &Path, title: Option<&str>, xlabel: &str, xs: &[f64], curves: &[Curve]) -> Result<(), String> {
    let svg = path.extension().is_some_and(|e| e == "svg");
    if !svg && path.extension().is_none_or(|e| e != "png") {
        return Err(format!("error: {}: the image must be .png or .svg", path.display()));
    }
    let grad = curves.iter().any(|c| c.slopes.is_some());
    let names: Vec<&str> = curves.iter().map(|c| c.name).collect();
    let colours: Vec<RGBColor> = colours(&names)
        .into_iter()
        .map(|k| RGBColor(PALETTE[k].0, PALETTE[k].1, PALETTE[k].2))
        .collect();
    let (x0, x1) = (xs[0], xs[xs.len() - 1]);
    let size = (900, if grad { 820 } else { 560 });
    let err = |e: &dyn std::fmt::Display| format!("error: drawing {}: {e}", path.display());
    macro_rules! render {
        ($backend:expr) => {{
            let root = $backend.into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(&e))?;
            let root = match title {
                Some(t) => root.titled(t, ("sans-serif", 22)).map_err(|e| err(&e))?,
                None => root,
            };
            let (panels, legend) = root.split_horizontally(size.0 - 210);
            let (top, bottom) = panels.split_vertically(panels.dim_in_pixel().1 / 2);
            let top = if grad { top } else { panels.clone() };
            let mut areas = vec![(top, "loss", false)];
            if grad {
                areas.push((bottom, "derivative", true));
            }
            for (area, ylabel, derivative) in areas {
                let (lo, hi) = y_range(curves.iter().filter_map(|c| c.ys(derivative)));
                let mut chart = ChartBuilder::on(&area)
                    .margin(12)
                    .x_label_area_size(40)
                    .y_label_area_size(64)
                    .build_cartesian_2d(x0..x1, lo..hi)
                    .map_err(|e| err(&e))?;
                let xdesc = if grad && !derivative {
                    String::new()
                } else {
                    xlabel.to_string()
                };
                let ydesc = if derivative {
                    format!("d loss / d {}", xlabel.rsplit(' ').next().unwrap_or(xlabel))
                } else {
                    ylabel.to_string()
                };
                chart
                    .configure_mesh()
                    .x_desc(xdesc)
                    .y_desc(ydesc)
                    .light_line_style(TRANSPARENT)
                    .bold_line_style(RGBColor(0xE4, 0xE4, 0xE4))
                    .label_style(("sans-serif", 15))
                    .x_label_formatter(&|v| tick(*v))
                    .y_label_formatter(&|v| tick(*v))
                    .axis_desc_style(("sans-serif", 17))
                    .draw()
                    .map_err(|e| err(&e))?;
                for (c, colour) in curves.iter().zip(&colours) {
                    let Some(ys) = c.ys(derivative) else { continue };
                    let style = colour.stroke_width(2);
                    for run in in_range_runs(xs, ys, lo, hi) {
                        if derivative {
                            chart
                                .draw_series(DashedLineSeries::new(run, 8, 5, style))
                                .map_err(|e| err(&e))?;
                        } else {
                            chart.draw_series(LineSeries::new(run, style)).map_err(|e| err(&e))?;
                        }
                    }
                }
            }
            // The legend: one row per loss (solid; dashed beside it where its derivative is drawn).
            for (k, (c, colour)) in curves.iter().zip(&colours).enumerate() {
                let y = 30 + 26 * k as i32;
                let style = colour.stroke_width(2);
                legend
                    .draw(&PathElement::new(vec![(6, y), (30, y)], style))
                    .map_err(|e| err(&e))?;
                if c.slopes.is_some() {
                    for x in [36, 46] {
                        legend
                            .draw(&PathElement::new(vec![(x, y), (x + 6, y)], style))
                            .map_err(|e| err(&e))?;
                    }
                }
                let shown: String = if c.name.chars().count() > LEGEND_NAME {
                    c.name.chars().take(LEGEND_NAME - 1).chain(['…']).collect()
                } else {
                    c.name.to_string()
                };
                legend
                    .draw(&Text::new(
                        shown,
                        (58, y - 8),
                        ("sans-serif", 15).into_font().color(&BLACK),
                    ))
                    .map_err(|e| err(&e))?;
            }
            if grad {
                let y = 30 + 26 * curves.len() as i32 + 8;
                legend
                    .draw(&Text::new(
                        "dashed: derivative",
                        (6, y),
                        ("sans-serif", 13).into_font().color(&RGBColor(0x55, 0x55, 0x55)),
                    ))
                    .map_err(|e| err(&e))?;
            }
            root.present().map_err(|e| err(&e))?;
        }};
    }
    if svg {
        render!(SVGBackend::new(path, size));
    } else {
        render!(BitMapBackend::new(path, size));
    }
    Ok(())
}

fn write_csv(path: &Path, xs: &[f64], series: &[Series]) -> Result<(), String> {
    let mut out = String::from("x");
    for s in series {
        out.push(',');
        out.push_str(&s.name);
    }
    out.push('\n');
    for (k, x) in xs.iter().enumerate() {
        out.push_str(&format!("{x}"));
        for s in series {
            out.push_str(&format!(",{}", s.ys[k]));
        }
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| format!("error: cannot write {}: {e}", path.display()))
}

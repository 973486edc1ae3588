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
    let mut series = Vec::new();
    for name in &names {
        let f = program.loss(Some(name)).map_err(|d| format!("error: {d}"))?;
        let g = crate::api::gradient(f).map_err(|d| format!("error: {d}"))?;
        let (values, slopes) = curve(f, &g, args.vary, classes, &xs)?;
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
    let label = match args.vary {
        Vary::Margin => "true-class margin",
        Vary::Logit => "true-class logit",
        Vary::Prob => "true-class probability",
    };
    draw(&args.output, label, &xs, &series)?;
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

fn draw(path: &Path, xlabel: &str, xs: &[f64], series: &[Series]) -> Result<(), String> {
    let svg = path.extension().is_some_and(|e| e == "svg");
    if !svg && path.extension().is_none_or(|e| e != "png") {
        return Err(format!("error: {}: the image must be .png or .svg", path.display()));
    }
    // The y range covers the finite values, fenced at half the 1st-99th percentile spread beyond those
    // percentiles, so a singular point (z-loss at equal logits, say) does not flatten every curve; what
    // lies beyond the fence is clipped.
    let mut finite: Vec<f64> = series
        .iter()
        .flat_map(|s| s.ys.iter())
        .copied()
        .filter(|y| y.is_finite())
        .collect();
    finite.sort_by(f64::total_cmp);
    let (mut ymin, mut ymax) = match finite.len() {
        0 => (0.0, 1.0),
        n => {
            let (q01, q99) = (finite[n / 100], finite[(n - 1) - n / 100]);
            let spread = (q99 - q01) / 2.0;
            (finite[0].max(q01 - spread), finite[n - 1].min(q99 + spread))
        }
    };
    if ymax <= ymin {
        (ymin, ymax) = (ymin - 0.5, ymax + 0.5);
    }
    let pad = ((ymax - ymin) * 0.05).max(1e-9);
    let (x0, x1) = (xs[0], xs[xs.len() - 1]);
    let err = |e: &dyn std::fmt::Display| format!("error: drawing {}: {e}", path.display());
    macro_rules! render {
        ($backend:expr) => {{
            let root = $backend.into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(&e))?;
            let mut chart = ChartBuilder::on(&root)
                .margin(12)
                .caption("lossc plot", ("sans-serif", 20))
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(x0..x1, (ymin - pad)..(ymax + pad))
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc(xlabel)
                .y_desc("loss")
                .draw()
                .map_err(|e| err(&e))?;
            for (k, s) in series.iter().enumerate() {
                let colour = Palette99::pick(k).to_rgba();
                let (lo, hi) = (ymin - pad, ymax + pad);
                let pts: Vec<(f64, f64)> = xs
                    .iter()
                    .copied()
                    .zip(s.ys.iter().map(|y| y.clamp(lo, hi)))
                    .filter(|(_, y)| y.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
            root.present().map_err(|e| err(&e))?;
        }};
    }
    if svg {
        render!(SVGBackend::new(path, (900, 560)));
    } else {
        render!(BitMapBackend::new(path, (900, 560)));
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

//! Every example in examples/ evaluated by the interpreter on its bundled input, against the same loss
//! written by hand in Rust (an independent implementation of the formula in LOSSES.md).

use std::collections::BTreeMap;
use std::path::Path;

use lossc::Program;
use lossc::data::{Data, Tensor, load_npy};

fn inputs(name: &str) -> BTreeMap<String, Tensor> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data").join(name);
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        m.insert(stem, load_npy(&p).unwrap());
    }
    m
}

fn lx(name: &str) -> f64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.lx"));
    let p = Program::from_file(&path).unwrap_or_else(|d| panic!("{}", d.render()));
    p.eval(None, &inputs(name), &BTreeMap::new()).unwrap().loss
}

fn floats(m: &BTreeMap<String, Tensor>, k: &str) -> (Vec<usize>, Vec<f64>) {
    (m[k].shape.clone(), m[k].to_f64())
}

fn labels(m: &BTreeMap<String, Tensor>, k: &str) -> Vec<usize> {
    match &m[k].data {
        Data::Int(v) => v.iter().map(|x| *x as usize).collect(),
        Data::Float(_) => panic!("{k} is not integer"),
    }
}

fn lse(row: &[f64]) -> f64 {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn close(name: &str, got: f64, want: f64) {
    // An infinity agrees only with itself (its relative bound is infinite).
    assert!(
        got == want || (got.is_finite() && want.is_finite() && (got - want).abs() <= 1e-9 * want.abs().max(1.0)),
        "{name}: lx gives {got}, reference {want}"
    );
}

fn per_row_ce(s: &[f64], y: &[usize], c: usize) -> Vec<f64> {
    y.iter()
        .enumerate()
        .map(|(i, &yi)| lse(&s[i * c..(i + 1) * c]) - s[i * c + yi])
        .collect()
}

#[test]
fn cross_entropy() {
    let m = inputs("cross_entropy");
    let ((sh, s), y) = (floats(&m, "s"), labels(&m, "y"));
    let l = per_row_ce(&s, &y, sh[1]);
    close(
        "cross_entropy",
        lx("cross_entropy"),
        l.iter().sum::<f64>() / l.len() as f64,
    );
}

#[test]
fn ldr_kl() {
    let m = inputs("ldr_kl");
    let ((sh, s), y) = (floats(&m, "s"), labels(&m, "y"));
    let (n, c, lambda) = (sh[0], sh[1], 1.0);
    let mut total = 0.0;
    for i in 0..n {
        let row: Vec<f64> = (0..c)
            .map(|k| (f64::from(u8::from(k != y[i])) + s[i * c + k] - s[i * c + y[i]]) / lambda)
            .collect();
        total += lambda * (lse(&row) - (c as f64).ln());
    }
    close("ldr_kl", lx("ldr_kl"), total / n as f64);
}

#[test]
fn anyloss_f1() {
    let m = inputs("anyloss_f1");
    let ((_, p), (_, y)) = (floats(&m, "p"), floats(&m, "y"));
    let a: Vec<f64> = p.iter().map(|p| sigmoid(73.0 * (p - 0.5))).collect();
    let tp: f64 = a.iter().zip(&y).map(|(a, y)| a * y).sum();
    let fp: f64 = a.iter().zip(&y).map(|(a, y)| a * (1.0 - y)).sum();
    let fn_: f64 = a.iter().zip(&y).map(|(a, y)| (1.0 - a) * y).sum();
    close("anyloss_f1", lx("anyloss_f1"), 1.0 - 2.0 * tp / (2.0 * tp + fp + fn_));
}

#[test]
fn multi_similarity() {
    let m = inputs("multi_similarity");
    let ((sh, x), y) = (floats(&m, "x"), labels(&m, "y"));
    let (b, d) = (sh[0], sh[1]);
    let (alpha, beta, base, eps) = (2.0, 50.0, 0.5, 0.1);
    let s = |i: usize, j: usize| (0..d).map(|k| x[i * d + k] * x[j * d + k]).sum::<f64>();
    let mut total = 0.0;
    for i in 0..b {
        let pos: Vec<usize> = (0..b).filter(|&j| j != i && y[j] == y[i]).collect();
        let neg: Vec<usize> = (0..b).filter(|&j| y[j] != y[i]).collect();
        let min_pos = pos.iter().map(|&j| s(i, j)).fold(f64::INFINITY, f64::min);
        let max_neg = neg.iter().map(|&j| s(i, j)).fold(f64::NEG_INFINITY, f64::max);
        let pos_sum: f64 = pos
            .iter()
            .filter(|&&j| s(i, j) - eps < max_neg)
            .map(|&j| (-alpha * (s(i, j) - base)).exp())
            .sum();
        let neg_sum: f64 = neg
            .iter()
            .filter(|&&j| s(i, j) + eps > min_pos)
            .map(|&j| (beta * (s(i, j) - base)).exp())
            .sum();
        total += (1.0 / alpha) * (1.0 + pos_sum).ln() + (1.0 / beta) * (1.0 + neg_sum).ln();
    }
    close("multi_similarity", lx("multi_similarity"), total / b as f64);
}

#[test]
fn focal_binary() {
    let m = inputs("focal_binary");
    let ((_, x), (_, y)) = (floats(&m, "x"), floats(&m, "y"));
    let (alpha, gamma) = (0.25, 2.0);
    let l: Vec<f64> = x
        .iter()
        .zip(&y)
        .map(|(&x, &y)| {
            let p = sigmoid(x);
            let ce = -(y * p.ln() + (1.0 - y) * (1.0 - p).ln());
            let pt = p * y + (1.0 - p) * (1.0 - y);
            let at = alpha * y + (1.0 - alpha) * (1.0 - y);
            at * (1.0 - pt).powf(gamma) * ce
        })
        .collect();
    close(
        "focal_binary",
        lx("focal_binary"),
        l.iter().sum::<f64>() / l.len() as f64,
    );
}

#[test]
fn z_loss() {
    let m = inputs("z_loss");
    let ((sh, s), y) = (floats(&m, "s"), labels(&m, "y"));
    let (n, c) = (sh[0], sh[1]);
    let mut total = 0.0;
    for i in 0..n {
        let row = &s[i * c..(i + 1) * c];
        let mu = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
        let z = (row[y[i]] - mu) / (var.sqrt() + 1e-12);
        total += softplus(-z);
    }
    close("z_loss", lx("z_loss"), total);
}

#[test]
fn kl_dro() {
    let m = inputs("kl_dro");
    let ((sh, s), y) = (floats(&m, "s"), labels(&m, "y"));
    let l = per_row_ce(&s, &y, sh[1]);
    let want = (l.iter().map(|v| v.exp()).sum::<f64>() / l.len() as f64).ln();
    close("kl_dro", lx("kl_dro"), want);
}

#[test]
fn distill() {
    let m = inputs("distill");
    let ((sh, s), (_, t)) = (floats(&m, "s"), floats(&m, "t"));
    let (n, c, temp) = (sh[0], sh[1], 4.0);
    let mut total = 0.0;
    for i in 0..n {
        let ss: Vec<f64> = s[i * c..(i + 1) * c].iter().map(|v| v / temp).collect();
        let tt: Vec<f64> = t[i * c..(i + 1) * c].iter().map(|v| v / temp).collect();
        let (ls, lt) = (lse(&ss), lse(&tt));
        for k in 0..c {
            let q = (tt[k] - lt).exp();
            total += q * ((tt[k] - lt) - (ss[k] - ls));
        }
    }
    close("distill", lx("distill"), temp * temp * total / n as f64);
}

#[test]
fn multi_margin() {
    let m = inputs("multi_margin");
    let ((sh, s), y) = (floats(&m, "s"), labels(&m, "y"));
    let (n, c) = (sh[0], sh[1]);
    let mut total = 0.0;
    for i in 0..n {
        for k in (0..c).filter(|&k| k != y[i]) {
            total += (1.0 - s[i * c + y[i]] + s[i * c + k]).max(0.0) / c as f64;
        }
    }
    close("multi_margin", lx("multi_margin"), total / n as f64);
}

#[test]
fn auc_logistic() {
    let m = inputs("auc_logistic");
    let ((_, s), y) = (floats(&m, "s"), labels(&m, "y"));
    let (mut total, mut pairs) = (0.0, 0);
    for i in (0..s.len()).filter(|&i| y[i] == 1) {
        for j in (0..s.len()).filter(|&j| y[j] == 0) {
            total += (1.0 + (-(s[i] - s[j])).exp()).ln();
            pairs += 1;
        }
    }
    close("auc_logistic", lx("auc_logistic"), total / pairs as f64);
}

#[test]
fn cs_divergence() {
    let m = inputs("cs_divergence");
    let ((xs, x), (zs, z)) = (floats(&m, "x"), floats(&m, "z"));
    let d = xs[1];
    let k = |a: &[f64], b: &[f64]| (-a.iter().zip(b).map(|(u, v)| (u - v) * (u - v)).sum::<f64>() / 2.0).exp();
    let mean_k = |p: &[f64], np: usize, q: &[f64], nq: usize| {
        let mut t = 0.0;
        for i in 0..np {
            for j in 0..nq {
                t += k(&p[i * d..(i + 1) * d], &q[j * d..(j + 1) * d]);
            }
        }
        t / (np * nq) as f64
    };
    let (n, mm) = (xs[0], zs[0]);
    let want = mean_k(&x, n, &x, n).ln() + mean_k(&z, mm, &z, mm).ln() - 2.0 * mean_k(&x, n, &z, mm).ln();
    close("cs_divergence", lx("cs_divergence"), want);
}

#[test]
fn gce() {
    let m = inputs("gce");
    let ((sh, s), y) = (floats(&m, "s"), labels(&m, "y"));
    let l = per_row_ce(&s, &y, sh[1]);
    let q = 0.7;
    let want = l.iter().map(|ce| (1.0 - (-ce * q).exp()) / q).sum::<f64>() / l.len() as f64;
    close("gce", lx("gce"), want);
}

#[test]
fn every_example_has_a_value_test() {
    let src = include_str!("examples.rs");
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "lx") {
            let name = p.file_stem().unwrap().to_str().unwrap();
            assert!(
                src.contains(&format!("fn {name}()")),
                "examples/{name}.lx has no value test here"
            );
        }
    }
}

//! Hand-written Rust loops of the eight workloads' losses and gradients: plain scalar code on one thread,
//! what a researcher would write without a tensor library. `benches/workloads.rs` times them beside the
//! JIT; `tests/hand_written.rs` checks each against the interpreter (loss and every gradient). Both draw
//! their inputs with [`inputs`].

use std::collections::BTreeMap;

use lossc::Tensor;
use lossc::data::Rng;

/// Seeded inputs for the one loss of `src` at `sizes` (dimension name, size; 1 for any other): labels
/// below their bound (or `classes`), 0/1 for float inputs without gradient, uniform in [0, 1) for AnyLoss's
/// probabilities, `scale` times a standard normal for the other floats.
pub fn inputs(src: &str, sizes: &[(&str, i64)], classes: u64, scale: f64, seed: u64) -> BTreeMap<String, Tensor> {
    let p = lossc::Program::from_source("w.lx", src).unwrap();
    let f = p.loss(None).unwrap();
    let dims: Vec<i64> = f
        .dims
        .iter()
        .map(|d| sizes.iter().find(|(n, _)| *n == d.name).map_or(1, |(_, s)| *s))
        .collect();
    let mut rng = Rng::new(seed);
    f.inputs
        .iter()
        .map(|i| {
            let shape: Vec<usize> = i.shape.iter().map(|d| d.eval(&dims) as usize).collect();
            let n = shape.iter().product();
            let t = if i.elem == lossc::ir::ElemTy::Idx {
                let b = i.bound.as_ref().map_or(classes, |b| b.eval(&dims) as u64);
                Tensor::labels(shape, (0..n).map(|_| rng.below(b) as i64).collect())
            } else if i.nograd {
                Tensor::float(shape, (0..n).map(|_| (rng.uniform() > 0.5) as i64 as f64).collect())
            } else if f.name == "anyloss_f1" {
                Tensor::float(shape, (0..n).map(|_| rng.uniform()).collect())
            } else {
                Tensor::float(shape, (0..n).map(|_| scale * rng.normal()).collect())
            };
            (i.name.clone(), t)
        })
        .collect()
}

/// A loop's loss and the gradient of each differentiable input, by input name.
pub struct Hand {
    pub loss: f64,
    pub grads: Vec<(&'static str, Vec<f32>)>,
}

/// A hand-written loop of one workload.
pub type HandWritten = fn(&BTreeMap<String, Tensor>) -> Hand;

/// The hand-written loop of the workload whose loss is named `loss` (the `.lx` loss name).
pub fn of(loss: &str) -> Option<HandWritten> {
    Some(match loss {
        "cross_entropy" => cross_entropy,
        "ldr_kl" => ldr_kl,
        "anyloss_f1" => anyloss_f1,
        "nt_xent" => nt_xent,
        "multi_similarity" => multi_similarity,
        "sort_bce16" => sort_bce16,
        "z_loss" => z_loss,
        "kl_dro" => kl_dro,
        _ => return None,
    })
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_f64().iter().map(|x| *x as f32).collect()
}

fn labels(t: &Tensor) -> Vec<usize> {
    t.to_f64().iter().map(|x| *x as usize).collect()
}

/// Scores `s[N, C]` and labels `y[N]` as f32 and indices, with N and C.
fn scores_and_labels(m: &BTreeMap<String, Tensor>) -> (Vec<f32>, Vec<usize>, usize, usize) {
    (f32s(&m["s"]), labels(&m["y"]), m["s"].shape[0], m["s"].shape[1])
}

/// log sum exp of a row, shifted by its maximum (sums in f64).
fn logsumexp(row: &[f32]) -> f64 {
    let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    mx as f64 + row.iter().map(|x| (x - mx).exp() as f64).sum::<f64>().ln()
}

fn dot(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>() as f64
}

/// Cross-entropy: one pass for the row's max and logsumexp, one for the gradient (softmax - onehot)/N.
fn cross_entropy(m: &BTreeMap<String, Tensor>) -> Hand {
    let (s, y, n, c) = scores_and_labels(m);
    let mut g = vec![0f32; n * c];
    let mut loss = 0f64;
    for i in 0..n {
        let row = &s[i * c..(i + 1) * c];
        let lse = logsumexp(row);
        loss += lse - row[y[i]] as f64;
        let gr = &mut g[i * c..(i + 1) * c];
        for k in 0..c {
            gr[k] = (((row[k] as f64 - lse).exp() - (k == y[i]) as i32 as f64) / n as f64) as f32;
        }
    }
    Hand {
        loss: loss / n as f64,
        grads: vec![("s", g)],
    }
}

/// LDR-KL (lambda = 1): margin-shifted logsumexp; gradient = softmax(m) - onehot * sum.
fn ldr_kl(m: &BTreeMap<String, Tensor>) -> Hand {
    let (s, y, n, c) = scores_and_labels(m);
    let mut g = vec![0f32; n * c];
    let mut loss = 0f64;
    let mut mrow = vec![0f32; c];
    for i in 0..n {
        let row = &s[i * c..(i + 1) * c];
        let sy = row[y[i]];
        for k in 0..c {
            mrow[k] = (k != y[i]) as i32 as f32 + row[k] - sy;
        }
        let lse = logsumexp(&mrow);
        loss += lse - (c as f64).ln();
        let gr = &mut g[i * c..(i + 1) * c];
        let mut total = 0f64;
        for k in 0..c {
            let p = (mrow[k] as f64 - lse).exp() / n as f64;
            gr[k] = p as f32;
            total += p;
        }
        gr[y[i]] -= total as f32;
    }
    Hand {
        loss: loss / n as f64,
        grads: vec![("s", g)],
    }
}

/// AnyLoss 1 - F1, L = 73.
fn anyloss_f1(m: &BTreeMap<String, Tensor>) -> Hand {
    let (p, y) = (f32s(&m["p"]), f32s(&m["y"]));
    let a: Vec<f32> = p.iter().map(|p| 1.0 / (1.0 + (-73.0 * (p - 0.5)).exp())).collect();
    let (mut tp, mut fp, mut fnn) = (0f64, 0f64, 0f64);
    for (a, y) in a.iter().zip(&y) {
        tp += (a * y) as f64;
        fp += (a * (1.0 - y)) as f64;
        fnn += ((1.0 - a) * y) as f64;
    }
    let den = 2.0 * tp + fp + fnn;
    let (dtp, dfp) = (-2.0 / den + 2.0 * 2.0 * tp / (den * den), 2.0 * tp / (den * den));
    let g: Vec<f32> = a
        .iter()
        .zip(&y)
        .map(|(a, y)| {
            let da = dtp * *y as f64 + dfp * (1.0 - *y as f64) - dfp * *y as f64;
            (da * (a * (1.0 - a)) as f64 * 73.0) as f32
        })
        .collect();
    Hand {
        loss: 1.0 - 2.0 * tp / den,
        grads: vec![("p", g)],
    }
}

/// Each row of `x` (`rows × d`) divided by its norm, and the norms.
fn unit_rows(x: &[f32], d: usize) -> (Vec<f32>, Vec<f64>) {
    let norms: Vec<f64> = x.chunks(d).map(|r| dot(r, r).sqrt()).collect();
    let unit = x
        .chunks(d)
        .zip(&norms)
        .flat_map(|(r, n)| r.iter().map(move |v| (*v as f64 / n) as f32))
        .collect();
    (unit, norms)
}

/// The gradient with respect to `x` of a function of `x / |x|` per row, from its gradient `gu` with
/// respect to the unit rows `u`: (gu - (gu · u) u) / |x|.
fn through_norms(gu: &[f64], u: &[f32], norms: &[f64], d: usize) -> Vec<f32> {
    let mut g = vec![0f32; gu.len()];
    for (i, n) in norms.iter().enumerate() {
        let (gr, ur) = (&gu[i * d..(i + 1) * d], &u[i * d..(i + 1) * d]);
        let along: f64 = gr.iter().zip(ur).map(|(p, q)| p * *q as f64).sum();
        for k in 0..d {
            g[i * d + k] = ((gr[k] - along * ur[k] as f64) / n) as f32;
        }
    }
    g
}

/// NT-Xent over two views (tau = 0.1): cosine similarities of a with b, a with a and b with b, each
/// anchor's log-partition over the other view and its own view's other rows.
fn nt_xent(m: &BTreeMap<String, Tensor>) -> Hand {
    let (a, b) = (f32s(&m["a"]), f32s(&m["b"]));
    let (n, d) = (m["a"].shape[0], m["a"].shape[1]);
    let tau = 0.1;
    let (ua, na) = unit_rows(&a, d);
    let (ub, nb) = unit_rows(&b, d);
    let sim = |u: &[f32], v: &[f32]| -> Vec<f64> {
        let mut s = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                s[i * n + j] = dot(&u[i * d..(i + 1) * d], &v[j * d..(j + 1) * d]) / tau;
            }
        }
        s
    };
    let (ab, aa, bb) = (sim(&ua, &ub), sim(&ua, &ua), sim(&ub, &ub));
    let mut za = vec![0f64; n];
    let mut zb = vec![0f64; n];
    let mut loss = 0f64;
    for i in 0..n {
        for j in 0..n {
            za[i] += ab[i * n + j].exp() + if j != i { aa[i * n + j].exp() } else { 0.0 };
            zb[i] += ab[j * n + i].exp() + if j != i { bb[i * n + j].exp() } else { 0.0 };
        }
        loss += za[i].ln() + zb[i].ln() - 2.0 * ab[i * n + i];
    }
    let c = 1.0 / (2 * n) as f64;
    // The loss's gradient with respect to the unit rows, through the three similarity matrices.
    let (mut gua, mut gub) = (vec![0f64; n * d], vec![0f64; n * d]);
    for i in 0..n {
        for j in 0..n {
            let e = ab[i * n + j].exp();
            let gab = c * (e / za[i] + e / zb[j] - 2.0 * (i == j) as i32 as f64) / tau;
            let (gaa, gbb) = match i == j {
                true => (0.0, 0.0),
                false => (
                    c * (aa[i * n + j].exp() / za[i] + aa[j * n + i].exp() / za[j]) / tau,
                    c * (bb[i * n + j].exp() / zb[i] + bb[j * n + i].exp() / zb[j]) / tau,
                ),
            };
            for k in 0..d {
                gua[i * d + k] += gab * ub[j * d + k] as f64 + gaa * ua[j * d + k] as f64;
                gub[j * d + k] += gab * ua[i * d + k] as f64;
                gub[i * d + k] += gbb * ub[j * d + k] as f64;
            }
        }
    }
    Hand {
        loss: loss * c,
        grads: vec![
            ("a", through_norms(&gua, &ua, &na, d)),
            ("b", through_norms(&gub, &ub, &nb, d)),
        ],
    }
}

/// Multi-similarity (alpha 2, beta 50, base 0.5, eps 0.1) with its mining step: S = x xᵀ, each anchor's
/// hard positives and negatives (the masks carry no gradient).
fn multi_similarity(m: &BTreeMap<String, Tensor>) -> Hand {
    let (x, y) = (f32s(&m["x"]), labels(&m["y"]));
    let (n, d) = (m["x"].shape[0], m["x"].shape[1]);
    let (alpha, beta, base, eps) = (2.0, 50.0, 0.5, 0.1);
    let mut s = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            s[i * n + j] = dot(&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
        }
    }
    let mut g = vec![0f64; n * n];
    let mut loss = 0f64;
    for i in 0..n {
        let srow = &s[i * n..(i + 1) * n];
        let pos = |j: usize| y[i] == y[j] && i != j;
        let neg = |j: usize| y[i] != y[j];
        let min_pos = (0..n)
            .filter(|&j| pos(j))
            .map(|j| srow[j])
            .fold(f64::INFINITY, f64::min);
        let max_neg = (0..n)
            .filter(|&j| neg(j))
            .map(|j| srow[j])
            .fold(f64::NEG_INFINITY, f64::max);
        let hard_pos = |j: usize| pos(j) && srow[j] - eps < max_neg;
        let hard_neg = |j: usize| neg(j) && srow[j] + eps > min_pos;
        // log(1 + sum exp(t_j)) as the compiler computes it, shifted by the largest exponent (at least
        // 0): the unshifted sum overflows (S ~ N(0, D) for normal x), the shifted one does not. Its
        // derivative in t_j is exp(t_j - m) / (exp(-m) + sum exp(t_j - m)).
        let log1p_sum = |t: &[(usize, f64)]| -> (f64, Vec<(usize, f64)>) {
            let m = t.iter().fold(0f64, |m, (_, v)| m.max(*v));
            let z = (-m).exp() + t.iter().map(|(_, v)| (v - m).exp()).sum::<f64>();
            (m + z.ln(), t.iter().map(|(j, v)| (*j, (v - m).exp() / z)).collect())
        };
        let tp: Vec<(usize, f64)> = (0..n)
            .filter(|&j| hard_pos(j))
            .map(|j| (j, -alpha * (srow[j] - base)))
            .collect();
        let tn: Vec<(usize, f64)> = (0..n)
            .filter(|&j| hard_neg(j))
            .map(|j| (j, beta * (srow[j] - base)))
            .collect();
        let ((lp, wp), (ln, wn)) = (log1p_sum(&tp), log1p_sum(&tn));
        loss += lp / alpha + ln / beta;
        // d/dS of lp / alpha is -w (t = -alpha (S - base)); of ln / beta, +w.
        for (j, w) in wp {
            g[i * n + j] -= w / n as f64;
        }
        for (j, w) in wn {
            g[i * n + j] += w / n as f64;
        }
    }
    // S = x xᵀ: the gradient is (G + Gᵀ) x.
    let mut gx = vec![0f32; n * d];
    for i in 0..n {
        for j in 0..n {
            let w = g[i * n + j] + g[j * n + i];
            for k in 0..d {
                gx[i * d + k] += (w * x[j * d + k] as f64) as f32;
            }
        }
    }
    Hand {
        loss: loss / n as f64,
        grads: vec![("x", gx)],
    }
}

/// The odd-even transposition network over `n` wires, per layer and wire: (partner, side), side 1 for the
/// wire that takes the minimum, -1 for the maximum, 0 for a wire the layer leaves alone.
fn odd_even_layers(n: usize) -> Vec<Vec<(usize, f64)>> {
    (0..n)
        .map(|layer| {
            let mut wires: Vec<(usize, f64)> = (0..n).map(|w| (w, 0.0)).collect();
            for a in (layer % 2..n.saturating_sub(1)).step_by(2) {
                wires[a] = (a + 1, 1.0);
                wires[a + 1] = (a, -1.0);
            }
            wires
        })
        .collect()
}

/// Sorting supervision over 16 scores per row (odd-even network, Cauchy relaxation, steepness 10): the
/// relaxed permutation matrix P against the true order by BCE with logs clamped at -100, and its gradient
/// back through every layer of the network (each layer's scores and P kept from the forward pass).
fn sort_bce16(m: &BTreeMap<String, Tensor>) -> Hand {
    const N: usize = 16;
    let (x, t) = (f32s(&m["x"]), f32s(&m["t"]));
    let rows = m["x"].shape[0];
    let steepness = 10.0;
    let layers = odd_even_layers(N);
    let mut gx = vec![0f32; rows * N];
    let mut loss = 0f64;
    let scale = 1.0 / (rows * N * N) as f64;
    for r in 0..rows {
        // Forward: the scores and P (P[i][j]: weight of input i at output j) before each layer, and each
        // layer's alphas.
        let mut xs = vec![[0f64; N]; layers.len() + 1];
        let mut ps = vec![[[0f64; N]; N]; layers.len() + 1];
        let mut alphas = vec![[0f64; N]; layers.len()];
        for w in 0..N {
            xs[0][w] = x[r * N + w] as f64;
            ps[0][w][w] = 1.0;
        }
        for (l, wires) in layers.iter().enumerate() {
            for (w, &(p, side)) in wires.iter().enumerate() {
                let (xw, xp) = (xs[l][w], xs[l][p]);
                let alpha = (steepness * side * (xp - xw)).atan() / std::f64::consts::PI + 0.5;
                alphas[l][w] = alpha;
                xs[l + 1][w] = alpha * xw + (1.0 - alpha) * xp;
                let (before, after) = ps.split_at_mut(l + 1);
                for (out, inp) in after[0].iter_mut().zip(&before[l]) {
                    out[w] = alpha * inp[w] + (1.0 - alpha) * inp[p];
                }
            }
        }
        // The true order: gt[i][j] = [argsort(t)[j] == i].
        let mut order: Vec<usize> = (0..N).collect();
        order.sort_by(|a, b| t[r * N + a].total_cmp(&t[r * N + b]));
        let mut dp = [[0f64; N]; N];
        let last = &ps[layers.len()];
        for j in 0..N {
            for i in 0..N {
                let (gt, p) = ((order[j] == i) as i32 as f64, last[i][j]);
                let (lp, lq) = (p.ln(), (1.0 - p).ln());
                loss -= gt * lp.max(-100.0) + (1.0 - gt) * lq.max(-100.0);
                let from_lp = if lp > -100.0 { gt / p } else { 0.0 };
                let from_lq = if lq > -100.0 { (1.0 - gt) / (1.0 - p) } else { 0.0 };
                dp[i][j] = scale * (from_lq - from_lp);
            }
        }
        // Backward through the layers.
        let mut dx = [0f64; N];
        for (l, wires) in layers.iter().enumerate().rev() {
            let mut dp_before = [[0f64; N]; N];
            let mut dx_before = [0f64; N];
            for (w, &(p, side)) in wires.iter().enumerate() {
                let alpha = alphas[l][w];
                let mut dalpha = dx[w] * (xs[l][w] - xs[l][p]);
                dx_before[w] += alpha * dx[w];
                dx_before[p] += (1.0 - alpha) * dx[w];
                for i in 0..N {
                    dalpha += dp[i][w] * (ps[l][i][w] - ps[l][i][p]);
                    dp_before[i][w] += alpha * dp[i][w];
                    dp_before[i][p] += (1.0 - alpha) * dp[i][w];
                }
                let u = steepness * side * (xs[l][p] - xs[l][w]);
                let du = dalpha / (std::f64::consts::PI * (1.0 + u * u)) * steepness * side;
                dx_before[p] += du;
                dx_before[w] -= du;
            }
            dp = dp_before;
            dx = dx_before;
        }
        for w in 0..N {
            gx[r * N + w] = dx[w] as f32;
        }
    }
    Hand {
        loss: loss * scale,
        grads: vec![("x", gx)],
    }
}

/// Z-loss, plain form, summed.
fn z_loss(m: &BTreeMap<String, Tensor>) -> Hand {
    let (s, y, n, c) = scores_and_labels(m);
    let mut g = vec![0f32; n * c];
    let mut loss = 0f64;
    for i in 0..n {
        let row = &s[i * c..(i + 1) * c];
        let mu = row.iter().map(|x| *x as f64).sum::<f64>() / c as f64;
        let sq = row.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>() / c as f64;
        let sigma = (sq - mu * mu).sqrt();
        let z = (row[y[i]] as f64 - mu) / (sigma + 1e-12);
        loss += (-z).max(0.0) + (-(z.abs())).exp().ln_1p();
        let dz = -1.0 / (1.0 + z.exp());
        let gr = &mut g[i * c..(i + 1) * c];
        for k in 0..c {
            let x = row[k] as f64;
            let dzdx = ((k == y[i]) as i32 as f64 - 1.0 / c as f64) / sigma - z * (x - mu) / (c as f64 * sigma * sigma);
            gr[k] = (dz * dzdx) as f32;
        }
    }
    Hand {
        loss,
        grads: vec![("s", g)],
    }
}

/// KL-DRO over per-sample cross-entropy, lambda = 1.
fn kl_dro(m: &BTreeMap<String, Tensor>) -> Hand {
    let (s, y, n, c) = scores_and_labels(m);
    let mut lse = vec![0f64; n];
    let mut l = vec![0f64; n];
    for i in 0..n {
        let row = &s[i * c..(i + 1) * c];
        lse[i] = logsumexp(row);
        l[i] = lse[i] - row[y[i]] as f64;
    }
    let lm = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = l.iter().map(|v| (v - lm).exp()).sum();
    let mut g = vec![0f32; n * c];
    for i in 0..n {
        let w = (l[i] - lm).exp() / z;
        let row = &s[i * c..(i + 1) * c];
        for k in 0..c {
            g[i * c + k] = (w * ((row[k] as f64 - lse[i]).exp() - (k == y[i]) as i32 as f64)) as f32;
        }
    }
    Hand {
        loss: lm + z.ln() - (n as f64).ln(),
        grads: vec![("s", g)],
    }
}

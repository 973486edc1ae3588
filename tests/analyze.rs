//! `lossc analyze` (issue 25): the verdicts on the standard library's losses, each justified by the paper
//! or a short proof; mutations that flip a verdict (with a counterexample); no proven property that a
//! sample violates anywhere in the stdlib; the report's text and the command line's JSON.

use lossc::Program;
use lossc::analyze::{Report, Verdict, analyze};

fn report_of(source: &str) -> Report {
    let p = Program::from_source("analyze.lx", source).unwrap_or_else(|d| panic!("{}", d.render()));
    analyze(&p.module.functions[0]).unwrap()
}

fn stdlib(path: &str) -> Report {
    report_of(&format!("use {path}"))
}

fn verdict(r: &Report, property: &str) -> Verdict {
    r.findings
        .iter()
        .find(|f| f.property.starts_with(property))
        .unwrap_or_else(|| panic!("{}: no `{property}` in\n{}", r.loss, r.text()))
        .verdict
}

use Verdict::{Disproven, Proven, Unknown};

/// (loss, property, verdict), with why.
const TABLE: &[(&str, &str, Verdict)] = &[
    // Cross-entropy is logsumexp(s) - s_y: convex (logsumexp of affine minus affine), not concave; the
    // softmax does not see a shift of a row; it is not scale-invariant, nor bounded (it grows linearly
    // along a ray that puts the label below the maximum), nor symmetric (Ghosh et al. 2017).
    ("std::classification::cross_entropy", "convex in s", Proven),
    ("std::classification::cross_entropy", "concave in s", Disproven),
    // Per sample: the cotangent-weighted sum of the rows' cross-entropies, convex for a nonnegative
    // cotangent (the derivation says it assumes one).
    ("std::classification::cross_entropy_per_sample", "convex in s", Proven),
    ("std::classification::cross_entropy", "invariant to shifting", Proven),
    ("std::classification::cross_entropy", "invariant to scaling", Disproven),
    ("std::classification::cross_entropy", "bounded", Disproven),
    ("std::classification::cross_entropy", "symmetric", Disproven),
    // MAE of the softmax is 1 - p_y: in [0, 1], shift-invariant, neither convex nor concave, and symmetric
    // (Σ_k (1 - p_k) = C - 1; Ghosh et al. 2017): affine in the probability at the label.
    ("std::classification::mae", "convex in s", Disproven),
    ("std::classification::mae", "bounded", Proven),
    ("std::classification::mae", "invariant to shifting", Proven),
    ("std::classification::mae", "symmetric", Proven),
    // GCE (1 - p_y^q) / q lies in [0, 1/q] (Zhang & Sabuncu 2018), symmetric only in the limit q -> 1.
    ("std::classification::gce", "bounded", Proven),
    ("std::classification::gce", "symmetric", Disproven),
    // Z-loss standardises each row (de Brébisson & Vincent 2016, "shift and scale invariant"): a shift
    // cancels in s - mean(s), a scale in (s - mean) / sigma — with the eps of the denominator taken as 0
    // (default 1e-12, a stabiliser; the derivation says so).
    ("std::classification::z_loss", "invariant to shifting", Proven),
    ("std::classification::z_loss", "invariant to scaling", Proven),
    // Label smoothing mixes (1 - eps)(lse - s_y) and eps · mean_k (lse - s_k): both convex, and both weights
    // nonnegative at eps = 0.1 (a sign read from an expression of hyperparameters at their defaults).
    ("std::classification::cross_entropy_smooth", "convex in s", Proven),
    // Comp-sum at tau = 0.5: (exp((1 - tau) l) - 1) / (1 - tau) with l = lse - s_y convex and 1 - tau > 0
    // (Mao, Mohri, Zhong 2023: convex for tau < 1).
    ("std::classification::comp_sum", "convex in s", Proven),
    // KL-DRO is λ logsumexp(l / λ) of per-sample cross-entropies: convex for λ > 0.
    ("std::dro::kl_dro", "convex in s", Proven),
    // Hinge losses are maxima of affine functions; the squared AUC surrogates are squares of affine or of
    // nonnegative convex (hinged) margins.
    ("std::hinge::crammer_singer", "convex in s", Proven),
    ("std::hinge::weston_watkins", "convex in s", Proven),
    ("std::hinge::binary_hinge", "convex in s", Proven),
    ("std::ranking::auc_squared", "convex in s", Proven),
    ("std::ranking::auc_squared_hinge", "convex in s", Proven),
    // NT-Xent compares cosine similarities: scaling either view changes nothing.
    ("std::contrastive::nt_xent", "invariant to scaling a", Proven),
    ("std::contrastive::nt_xent", "invariant to scaling b", Proven),
    // AnyLoss's accuracy is a ratio of soft confusion counts: in [0, 1].
    ("std::metrics::anyloss_accuracy", "bounded", Proven),
    // Multi-class calibration: each of these is a positive sum over the samples of Ψ(p_y) with Ψ' < 0 —
    // -log p (CE), 1 - p (MAE), (1 - p^q) / q (GCE, Zhang & Sabuncu 2018), (p^(tau - 1) - 1) / (1 - tau)
    // (comp-sum, Mao, Mohri & Zhong 2023), -(1 - p)^gamma log p (focal) — and the minimiser of
    // Σ_k q_k Ψ(p_k) puts the most probability on the Bayes class (the swap argument in
    // src/analyze/calibration.rs).
    (
        "std::classification::cross_entropy",
        "classification-calibrated in the scores",
        Proven,
    ),
    (
        "std::classification::cross_entropy_per_sample",
        "classification-calibrated in the scores",
        Proven,
    ),
    (
        "std::classification::mae",
        "classification-calibrated in the scores",
        Proven,
    ),
    (
        "std::classification::gce",
        "classification-calibrated in the scores",
        Proven,
    ),
    (
        "std::classification::comp_sum",
        "classification-calibrated in the scores",
        Proven,
    ),
    (
        "std::focal::focal_multiclass",
        "classification-calibrated in the scores",
        Proven,
    ),
    // Not of that form, so no rule decides: label smoothing reads every probability (it is calibrated,
    // its minimiser being (1 - eps) q + eps / C, but not by this rule); Crammer-Singer and Weston-Watkins
    // hinge losses are not calibrated (Tewari & Bartlett 2007), which sampling cannot show; KL-DRO
    // couples the samples.
    (
        "std::classification::cross_entropy_smooth",
        "classification-calibrated in the scores",
        Unknown,
    ),
    (
        "std::hinge::crammer_singer",
        "classification-calibrated in the scores",
        Unknown,
    ),
    (
        "std::hinge::weston_watkins",
        "classification-calibrated in the scores",
        Unknown,
    ),
    ("std::dro::kl_dro", "classification-calibrated in the scores", Unknown),
];

#[test]
fn stdlib_verdicts_match_the_table() {
    for (loss, property, want) in TABLE {
        let r = stdlib(loss);
        assert_eq!(verdict(&r, property), *want, "{loss}: {property}\n{}", r.text());
    }
}

/// A proven property that a sample violates is a bug in a rule: none, over the whole stdlib.
#[test]
fn no_proof_is_contradicted_by_a_sample() {
    let listing = lossc::stdlib::listing();
    let mut analysed = 0;
    for path in listing
        .lines()
        .filter_map(|l| l.split('(').next())
        .filter(|l| l.starts_with("std::"))
    {
        let r = stdlib(path);
        for f in &r.findings {
            assert!(f.inconsistent.is_none(), "{path}: {}\n{}", f.property, r.text());
        }
        analysed += 1;
    }
    assert!(analysed > 40, "{analysed}");
}

#[test]
fn a_sign_flip_makes_convexity_disproven_with_a_counterexample() {
    let ce = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }";
    let flipped = "loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] s[i, y[i]] - logsumexp[k] s[i, k] }";
    assert_eq!(verdict(&report_of(ce), "convex in s"), Proven);
    let r = report_of(flipped);
    assert_eq!(verdict(&r, "convex in s"), Disproven, "{}", r.text());
    assert_eq!(verdict(&r, "concave in s"), Proven, "{}", r.text());
    let f = r.findings.iter().find(|f| f.property == "convex in s").unwrap();
    assert!(f.reason[0].contains("above the chord"), "{}", r.text());
    // Without the label's term a shift of a row moves the loss: disproven.
    let lse = "loss lse(s: f32[N, C]) { mean[i] logsumexp[k] s[i, k] }";
    assert_eq!(verdict(&report_of(lse), "invariant to shifting"), Disproven);
    // Cosine similarity is scale-invariant; a plain dot product is not.
    let cosine = "loss c(x: f32[N, D]) {
        let n[i] = sqrt(sum[d] x[i, d] * x[i, d])
        mean[i, j] exp(sum[d] x[i, d] * x[j, d] / (n[i] * n[j]))
    }";
    let dot = "loss c(x: f32[N, D]) { mean[i, j] exp(sum[d] x[i, d] * x[j, d]) }";
    assert_eq!(verdict(&report_of(cosine), "invariant to scaling"), Proven);
    assert_eq!(verdict(&report_of(dot), "invariant to scaling"), Disproven);
    // A standardised score with a tiny `eps` in its denominator is scale-invariant where eps = 0, and the
    // derivation says so; an `eps` of 0.5 is no stabiliser (and a sample sees it); nor is a data offset.
    let z = "loss z(s: f32[N, C], y: idx[N] < C, eps: f32 = 1e-9) {
        let mu[i] = mean[k] s[i, k]
        let sd[i] = sqrt(mean[k] (s[i, k] - mu[i]) ^ 2)
        sum[i] softplus((mu[i] - s[i, y[i]]) / (sd[i] + eps))
    }";
    let r = report_of(z);
    assert_eq!(verdict(&r, "invariant to scaling"), Proven, "{}", r.text());
    assert!(r.text().contains("taking eps = 0 (default 1e-9)"), "{}", r.text());
    let r = report_of(&z.replace("1e-9", "0.5"));
    assert_eq!(verdict(&r, "invariant to scaling"), Disproven, "{}", r.text());
    let r = report_of(&z.replace("(sd[i] + eps)", "(sd[i] + 1e-9)"));
    assert_ne!(verdict(&r, "invariant to scaling"), Proven, "{}", r.text());
    // Symmetry: affine in the probability at the label is proven (through a `let`, a constant term and a
    // hyperparameter factor); squaring that probability makes Σ_k L depend on the scores: disproven.
    let affine = "loss m(s: f32[N, C], y: idx[N] < C, w: f32 = 3.0) {
        let p[i] = exp(s[i, y[i]] - logsumexp[k] s[i, k])
        2.0 + sum[i] w * (1 - p[i]) / 4.0
    }";
    let r = report_of(affine);
    assert_eq!(verdict(&r, "symmetric"), Proven, "{}", r.text());
    let squared = affine.replace("(1 - p[i])", "(1 - p[i]) ^ 2");
    let r = report_of(&squared);
    assert_eq!(verdict(&r, "symmetric"), Disproven, "{}", r.text());
    // A label read outside the probability (a per-class weight) is not affine in it: no proof.
    let weighted = affine.replace("w * (1 - p[i])", "(1 - p[i]) * s[i, y[i]]");
    assert_ne!(verdict(&report_of(&weighted), "symmetric"), Proven);
    // A negative factor flips convexity; one whose sign is a hyperparameter's default is assumed.
    let scaled = "loss h(x: f32[N], w: f32 = -2.0) { mean[i] w * relu(1 - x[i]) }";
    let r = report_of(scaled);
    assert_eq!(verdict(&r, "concave in x"), Proven, "{}", r.text());
    assert!(
        r.text()
            .contains("assuming the factors made of `w` keep the signs they have at its default"),
        "{}",
        r.text()
    );
    // A factor that is an expression of a hyperparameter (`1 - eps`) has the sign of its value at the
    // default: label smoothing with eps = 0.1 is convex; with eps = 2 the first weight is negative, and
    // the sum of a concave and a convex part is not proven convex.
    let smooth = "loss l(s: f32[N, C], y: idx[N] < C, eps: f32 = 0.1) {
        let lse[i] = logsumexp[k] s[i, k]
        mean[i] (1 - eps) * (lse[i] - s[i, y[i]]) + eps * mean[k] (lse[i] - s[i, k])
    }";
    assert_eq!(verdict(&report_of(smooth), "convex in s"), Proven);
    let r = report_of(&smooth.replace("0.1", "2.0"));
    assert_ne!(verdict(&r, "convex in s"), Proven, "{}", r.text());
}

#[test]
fn report_of_cross_entropy() {
    insta::assert_snapshot!(stdlib("std::classification::cross_entropy").text());
}

#[test]
fn command_line_prints_the_findings_as_json() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lossc"))
        .args(["analyze", "examples/cross_entropy.lx", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = v[0]["findings"].as_array().unwrap();
    let convex = findings.iter().find(|f| f["property"] == "convex in s").unwrap();
    assert_eq!(convex["verdict"], "proven");
    assert!(convex["reason"][0].as_str().unwrap().contains("logsumexp"), "{convex}");
    // A bad file is a diagnostic and exit 1, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lossc"))
        .args(["analyze", "no_such_file.lx"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Margin losses φ(m) (Bartlett, Jordan & McAuliffe 2006): a convex φ is classification-calibrated exactly
/// when it is differentiable at 0 with φ'(0) < 0. Logistic, exponential and squared losses are; the
/// perceptron's relu(-m) has a kink at 0; a sigmoid loss is not convex, so the theorem says nothing. The
/// hinge loss (stdlib, labels ±1) is calibrated: its kink is at m = 1.
#[test]
fn margin_losses_are_calibrated_by_the_convex_theorem() {
    let margin = |body: &str| format!("loss phi(m: f32[N]) {{ mean[i] {body} }}");
    for (body, want) in [
        ("softplus(-m[i])", Proven),
        ("exp(-m[i])", Proven),
        ("(1 - m[i]) ^ 2", Proven),
        ("relu(-m[i])", Disproven),
        ("sigmoid(-m[i])", Unknown),
    ] {
        let r = report_of(&margin(body));
        assert_eq!(verdict(&r, "classification-calibrated"), want, "{body}\n{}", r.text());
    }
    let r = stdlib("std::hinge::binary_hinge");
    assert_eq!(verdict(&r, "classification-calibrated"), Proven, "{}", r.text());
    // Multi-class: a function of the probability at the label with a negative derivative is proven
    // (through a `let`, a hyperparameter exponent, a product of nonpositive factors); one that rises with
    // it, one weighting samples by their class, one squaring an aggregate, one with a detached factor are not.
    let softmax = |body: &str| {
        format!(
            "loss l(s: f32[N, C], y: idx[N] < C, w: f32[C] nograd, g: f32 = 1.5) {{
                let lp[i] = s[i, y[i]] - logsumexp[k] s[i, k]
                {body} }}"
        )
    };
    // One-vs-all margins (m = s at the label's class, -s elsewhere): a convex φ differentiable everywhere
    // with φ'(0) < 0 is proven (logistic, squared, exponential; either way of writing the margin); the
    // hinge has a kink at 1 and is not calibrated (Tewari & Bartlett 2007): not proven; nor φ'(0) > 0, nor
    // a φ that differs per class.
    let ova = |phi: &str| {
        format!(
            "loss l(s: f32[N, C], y: idx[N] < C, w: f32 = 2.0) {{
                mean[i] sum[k] {} }}",
            phi.replace("M", "select(k == y[i], s[i, k], -s[i, k])")
        )
    };
    for (phi, want) in [
        ("softplus(-M)", Proven),
        ("(1 - select(k == y[i], 1.0, -1.0) * s[i, k]) ^ 2", Proven),
        ("w * exp(-select(k != y[i], -s[i, k], s[i, k]))", Proven),
        ("relu(1 - M)", Unknown),
        ("softplus(M)", Unknown),
        ("(1 + k) * softplus(-M)", Unknown),
    ] {
        let r = report_of(&ova(phi));
        assert_eq!(
            verdict(&r, "classification-calibrated in the scores"),
            want,
            "{phi}\n{}",
            r.text()
        );
    }
    let r = report_of(&ova("relu(1 - M)"));
    assert!(
        r.text().contains("differentiable everywhere: not shown"),
        "{}",
        r.text()
    );
    for (body, want) in [
        ("mean[i] -lp[i]", Proven),
        ("sum[i] (1 - exp(lp[i])) ^ g", Proven),
        ("mean[i] lp[i] * -sqrt(1 - exp(lp[i]))", Proven),
        ("mean[i] exp(lp[i])", Unknown),
        ("mean[i] -w[y[i]] * lp[i]", Unknown),
        ("(mean[i] -lp[i]) ^ 2", Unknown),
        ("mean[i] -(1 - stopgrad(exp(lp[i]))) * lp[i]", Unknown),
    ] {
        let r = report_of(&softmax(body));
        assert_eq!(
            verdict(&r, "classification-calibrated in the scores"),
            want,
            "{body}
{}",
            r.text()
        );
        assert!(
            r.findings.iter().all(|f| f.inconsistent.is_none()),
            "{body}
{}",
            r.text()
        );
    }
    // Squared loss's gradient grows with the margin; the logistic loss's is bounded by 1.
    assert_eq!(
        verdict(&report_of(&margin("(1 - m[i]) ^ 2")), "gradient in m bounded"),
        Disproven
    );
    assert_eq!(
        verdict(&report_of(&margin("softplus(-m[i])")), "gradient in m bounded"),
        Proven
    );
    assert_eq!(
        verdict(&stdlib("std::classification::cross_entropy"), "gradient in s bounded"),
        Proven
    );
}

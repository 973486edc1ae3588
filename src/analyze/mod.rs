//! `lossc analyze`: properties of a loss decided from its IR, each **proven** (with its derivation),
//! **disproven** (with a counterexample point), or **unknown** (no rule decides and no sample refutes it).
//!
//! Proofs are symbolic: convexity and concavity in each differentiable input by composition rules
//! ([`curvature`]), invariance of an input's rows to a shift and of the input to a positive scale
//! ([`invariance`]), boundedness of the loss and of its gradient by interval arithmetic ([`bounds`]), and
//! classification calibration of a margin loss by the convex-φ theorem (convex, differentiable at 0,
//! φ'(0) < 0: its curvature, one-sided difference quotients and gradient). Every verdict is cross-checked on
//! seeded random points with the reference interpreter: a property no rule proves is disproven by a
//! sample that violates it, and a proven one that a sample violates is reported as inconsistent (a bug,
//! which the tests look for). Symmetry (Σ_k L(s, y = k) constant in s) is proven for losses affine in the
//! softmax probability at the label ([`symmetry`]).

pub mod bounds;
pub mod calibration;
pub mod curvature;
pub mod invariance;
pub mod symmetry;

use std::collections::BTreeMap;

use crate::data::{Rng, Tensor};
use crate::diag::Diag;
use crate::ir::{ElemTy, Expr, Function, Role};

/// The facts of one analysis, kept per node and per tensor (a tensor's fact is its body's).
pub struct Memo<T> {
    nodes: std::collections::HashMap<crate::ir::NodeId, T>,
    tensors: std::collections::HashMap<u32, T>,
}

impl<T> Default for Memo<T> {
    fn default() -> Memo<T> {
        Memo {
            nodes: Default::default(),
            tensors: Default::default(),
        }
    }
}

/// An analysis computed bottom-up over a function's IR, each node and tensor once.
pub trait Analysis {
    /// What it finds of a value.
    type Fact: Clone;
    /// The function analysed.
    fn function(&self) -> &Function;
    /// Its kept facts.
    fn memo(&mut self) -> &mut Memo<Self::Fact>;
    /// The fact of node `n`, from its operands' (by [`Analysis::node`]).
    fn compute(&mut self, n: crate::ir::NodeId) -> Self::Fact;

    /// The fact of node `n`.
    fn node(&mut self, n: crate::ir::NodeId) -> Self::Fact {
        if let Some(fact) = self.memo().nodes.get(&n) {
            return fact.clone();
        }
        let fact = self.compute(n);
        self.memo().nodes.insert(n, fact.clone());
        fact
    }

    /// The fact of tensor `t`'s elements (in terms of its head indices).
    fn tensor(&mut self, t: u32) -> Self::Fact {
        if let Some(fact) = self.memo().tensors.get(&t) {
            return fact.clone();
        }
        let body = self.function().tensors[t as usize].body;
        let fact = self.node(body);
        self.memo().tensors.insert(t, fact.clone());
        fact
    }
}

/// What was decided of a property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A rule proves it.
    Proven,
    /// A sample violates it.
    Disproven,
    /// Neither.
    Unknown,
}

impl Verdict {
    /// How the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Proven => "proven",
            Verdict::Disproven => "disproven",
            Verdict::Unknown => "unknown",
        }
    }
}

/// One property's verdict and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// The property (`convex in s`).
    pub property: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// The derivation, the counterexample, or why neither was found.
    pub reason: Vec<String>,
    /// A sample that violates a proven property (a bug in a rule).
    pub inconsistent: Option<String>,
}

/// Every property of one loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The loss.
    pub loss: String,
    /// Its findings, input by input.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The report as text: one line per property, its reasons indented below.
    pub fn text(&self) -> String {
        let mut out = format!("loss {}\n", self.loss);
        for f in &self.findings {
            out.push_str(&format!("  {}: {}\n", f.property, f.verdict.name()));
            for r in &f.reason {
                out.push_str(&format!("      {r}\n"));
            }
            if let Some(bad) = &f.inconsistent {
                out.push_str(&format!("      INCONSISTENT (a sample violates the proof): {bad}\n"));
            }
        }
        out
    }
}

/// Samples each numeric check draws.
const SAMPLES: usize = 48;

/// Analyses one checked loss.
pub fn analyze(f: &Function) -> Result<Report, Diag> {
    let g = crate::opt::simplify_only(f).map_err(|_| {
        Diag::new(
            crate::diag::Code::TooDeep,
            format!("`{}` is too large to analyse", f.name),
        )
    })?;
    let Some(loss) = g.tensors.iter().position(|t| t.role == Role::Loss) else {
        return Ok(Report {
            loss: f.name.clone(),
            findings: Vec::new(),
        });
    };
    let mut s = Sampler::new(&g);
    let mut findings = Vec::new();
    for (i, input) in g.inputs.iter().enumerate() {
        if !input.differentiable() {
            continue;
        }
        findings.extend(convexity(&g, loss, i as u32, &mut s));
        if input.shape.len() >= 2 {
            findings.push(shift(&g, loss, i as u32, &mut s));
        }
        if !input.shape.is_empty() {
            findings.push(scale(&g, loss, i as u32, &mut s));
        }
    }
    findings.push(bounded(&g, loss, &mut s));
    findings.extend(symmetry(&g, &mut s));
    findings.extend(gradient_bounds(&g, &mut s)?);
    for (i, input) in g.inputs.iter().enumerate() {
        if input.differentiable() && input.shape.len() == 1 {
            findings.extend(calibration(&g, loss, i as u32, &mut s));
        }
        if input.differentiable() && input.shape.len() == 2 {
            findings.extend(softmax_calibration(&g, loss, i as u32, &mut s));
        }
    }
    Ok(Report {
        loss: f.name.clone(),
        findings,
    })
}

/// The names of the tensors a derivation lists (the loss as `loss`).
fn tensor_name(g: &Function, t: usize) -> String {
    match g.tensors[t].role {
        Role::Loss => "loss".into(),
        _ => format!("`{}`", g.tensors[t].name),
    }
}

fn convexity(g: &Function, loss: usize, input: u32, s: &mut Sampler) -> Vec<Finding> {
    let name = &g.inputs[input as usize].name;
    let mut c = curvature::Curvature::new(g, input);
    let top = c.tensor(loss as u32);
    let mut derivation = Vec::new();
    for t in (0..g.tensors.len()).filter(|t| *t == loss || g.tensors[*t].role == Role::Let) {
        let k = c.tensor(t as u32);
        if k != curvature::Curv::Constant {
            let rule = describe(g, g.tensors[t].body, &mut c);
            derivation.push(format!("{} is {}: {rule}", tensor_name(g, t), k.name()));
        }
    }
    derivation.push(RULES.into());
    if c.cotangent {
        derivation.push("assuming a nonnegative cotangent (ones: the gradient of the per-sample losses' sum)".into());
    }
    if !c.assumed.is_empty() {
        let names: Vec<String> = c.assumed.iter().map(|h| format!("`{h}`")).collect();
        derivation.push(match names.len() {
            1 => format!(
                "assuming the factors made of {} keep the signs they have at its default",
                names[0]
            ),
            _ => format!(
                "assuming the factors made of {} keep the signs they have at their defaults",
                names.join(", ")
            ),
        });
    }
    let mut out = Vec::new();
    for convex in [true, false] {
        let word = if convex { "convex" } else { "concave" };
        let proven = if convex { top.convex() } else { top.concave() };
        let violation = s.curvature_violation(input, convex);
        out.push(finding(
            format!("{word} in {name}"),
            proven,
            derivation.clone(),
            violation,
            match top {
                curvature::Curv::Unknown => "no rule decides, and no sample violates it".to_string(),
                other => format!(
                    "the rules find the loss {} only, and no sample violates it",
                    other.name()
                ),
            },
        ));
    }
    out
}

/// A sub-expression's structure down to its affine and constant parts, each part where a rule applied
/// (`mean(logsumexp(affine) - affine)`); other tensors by name (each has its own line).
fn describe(g: &Function, n: crate::ir::NodeId, c: &mut curvature::Curvature) -> String {
    describe_at(g, n, c, 6)
}

fn describe_at(g: &Function, n: crate::ir::NodeId, c: &mut curvature::Curvature, depth: usize) -> String {
    use crate::prims::Prim;
    let own = c.node(n);
    if depth == 0 || matches!(own, curvature::Curv::Constant | curvature::Curv::Affine) {
        return own.name().to_string();
    }
    let mut part = |m: crate::ir::NodeId| describe_at(g, m, c, depth - 1);
    match &g.node(n).expr {
        Expr::Reduce { op, body, .. } => format!("{}({})", op.as_str(), part(*body)),
        Expr::Load {
            tensor: crate::ir::TensorRef::Def(t),
            ..
        } => format!("`{}`", g.tensors[t.index()].name),
        Expr::Prim { prim, args } => {
            let parts: Vec<String> = args.iter().map(|a| part(*a)).collect();
            match prim {
                Prim::Add => format!("{} + {}", parts[0], parts[1]),
                Prim::Sub => format!("{} - ({})", parts[0], parts[1]),
                Prim::Mul => format!("{} · {}", parts[0], parts[1]),
                Prim::Div => format!("{} / {}", parts[0], parts[1]),
                Prim::Neg => format!("-({})", parts[0]),
                p => format!("{}({})", p.surface().unwrap_or(p.name()), parts.join(", ")),
            }
        }
        _ => own.name().to_string(),
    }
}

/// The composition rules a convexity derivation uses.
const RULES: &str = "rules: sums and means keep curvature; logsumexp and max of convex terms are convex, min of \
                     concave ones concave; a convex (concave) nondecreasing function of a convex (concave) \
                     argument, or any of an affine one, is convex (concave); a constant factor keeps the \
                     curvature (≥ 0) or flips it (≤ 0); other inputs are data";

fn shift(g: &Function, loss: usize, input: u32, s: &mut Sampler) -> Finding {
    let name = &g.inputs[input as usize].name;
    let mut a = invariance::Shifts::new(g, input);
    let verdict = a.tensor(loss as u32);
    let proven = verdict == invariance::Shift::Invariant;
    let reason = vec![format!(
        "each value's change under s[.., k] + c tracked through the IR: the loss's is {}",
        match &verdict {
            invariance::Shift::Invariant => "zero (every change cancels)".to_string(),
            invariance::Shift::By { number, .. } => format!("{number} · c (with factors)"),
            invariance::Shift::Unknown => "not decided by any rule".to_string(),
        }
    )];
    let violation = s.invariance_violation(input, Transform::Shift);
    finding(
        format!("invariant to shifting each row of {name} (+ c)"),
        proven,
        reason,
        violation,
        "no rule decides, and no sample violates it".into(),
    )
}

fn scale(g: &Function, loss: usize, input: u32, s: &mut Sampler) -> Finding {
    let name = &g.inputs[input as usize].name;
    let mut a = invariance::Degrees::new(g, input);
    let degree = a.tensor(loss as u32);
    let mut reason = vec![match degree {
        Some(d) => format!("the loss is homogeneous of degree {d} in {name}"),
        None => format!("the loss is not homogeneous in {name} by any rule"),
    }];
    if degree.is_some() && !a.stabilisers.is_empty() {
        let names: Vec<String> = a
            .stabilisers
            .iter()
            .map(|h| {
                let h = &g.hypers[*h as usize];
                format!("{} = 0 (default {:e})", h.name, h.default)
            })
            .collect();
        reason.push(format!(
            "taking {}: a stabiliser added to a scaled value; at its default the loss moves by about its \
             size relative to that value",
            names.join(", ")
        ));
    }
    let violation = s.invariance_violation(input, Transform::Scale);
    finding(
        format!("invariant to scaling {name} (· a, a > 0)"),
        degree == Some(0.0),
        reason,
        violation,
        "no rule decides, and no sample violates it".into(),
    )
}

fn bounded(g: &Function, loss: usize, s: &mut Sampler) -> Finding {
    let mut b = bounds::Bounds::new(g);
    let r = b.tensor(loss as u32);
    let reason = vec![match (r.lo.is_finite(), r.hi.is_finite()) {
        (true, true) => format!(
            "by interval arithmetic the loss lies in [{}, {}] (hyperparameters at their defaults)",
            r.lo, r.hi
        ),
        _ if r.finite => "by interval arithmetic the loss is finite for fixed data, sizes and hyperparameters".into(),
        _ => "interval arithmetic finds no bound".into(),
    }];
    finding(
        "bounded in the differentiable inputs".into(),
        r.finite,
        reason,
        s.unbounded(),
        "no rule decides, and it did not grow without bound along sampled rays".into(),
    )
}

/// Σ_k L(s, y = k) constant in s, for a loss with one label input bounded by the last axis of a
/// differentiable input: proven for terms affine in the probability at the label ([`symmetry`]), else
/// refuted by samples.
fn symmetry(g: &Function, s: &mut Sampler) -> Option<Finding> {
    let label = g
        .inputs
        .iter()
        .position(|i| i.elem == ElemTy::Idx && i.bound.is_some() && !i.shape.is_empty())?;
    let name = &g.inputs[label].name;
    let violation = s.symmetry_violation(label)?;
    let proof = symmetry::proof(g, label as u32);
    Some(finding(
        format!("symmetric (Σ_k L with every {name} = k is constant)"),
        proof.is_some(),
        proof.unwrap_or_default(),
        violation,
        "the sum did not change between samples (no rule decides: a term not affine in p at the label)".into(),
    ))
}

/// The largest |∂L/∂x| of each differentiable input over all inputs, by interval arithmetic on the
/// gradient program (a softmax probability in [0, 1]); refuted by growth along sampled rays.
fn gradient_bounds(g: &Function, s: &mut Sampler) -> Result<Vec<Finding>, Diag> {
    let grad = crate::api::simplified_gradient(g)?;
    let mut b = bounds::Bounds::new(&grad);
    let mut out = Vec::new();
    for (t, def) in grad.tensors.iter().enumerate() {
        let Role::Grad(i) = def.role else { continue };
        let name = &g.inputs[i as usize].name;
        let r = b.tensor(t as u32);
        let reason = vec![match (r.lo.is_finite() && r.hi.is_finite(), r.finite) {
            (true, _) => format!(
                "by interval arithmetic on the gradient program, ∂L/∂{name} lies in [{}, {}] (dimensions at least \
                 1, hyperparameters at their defaults)",
                r.lo, r.hi
            ),
            (false, true) => {
                format!("by interval arithmetic on the gradient program, ∂L/∂{name} is bounded for fixed data")
            }
            (false, false) => "interval arithmetic finds no bound".into(),
        }];
        out.push(finding(
            format!("gradient in {name} bounded (|∂L/∂{name}| ≤ a constant)"),
            r.finite,
            reason,
            s.unbounded_gradient(i as usize),
            "no rule bounds it, and it did not grow without bound along sampled rays".into(),
        ));
    }
    Ok(out)
}

/// Classification calibration of a margin loss (Bartlett, Jordan & McAuliffe 2006): a convex φ is
/// calibrated exactly when it is differentiable at 0 with φ'(0) < 0. A loss of one margin per sample (an
/// input of rank 1, with at most a binary label, whose class 1 makes the margin the input) is φ averaged
/// over the samples.
fn calibration(g: &Function, loss: usize, input: u32, s: &mut Sampler) -> Option<Finding> {
    let x = &g.inputs[input as usize];
    let n = x.shape.first()?;
    // The other inputs: one label per sample (binary classes, or ±1 / {0, 1} targets as floats), set to
    // the positive class 1.
    let others: Vec<usize> = (0..g.inputs.len()).filter(|k| *k as u32 != input).collect();
    let label = |k: &usize| {
        let i = &g.inputs[*k];
        i.shape.len() == 1
            && i.shape.first() == Some(n)
            && match i.elem {
                ElemTy::Idx => matches!(i.bound, Some(crate::ir::Dim::Const(2))),
                _ => !i.differentiable() && i.state.is_none(),
            }
    };
    if others.len() > 1 || !others.iter().all(label) {
        return None;
    }
    let labels = others;
    let name = &x.name;
    let convex = curvature::Curvature::new(g, input).tensor(loss as u32).convex();
    let (slope, left, right) = s.margin_slopes(input as usize, labels.first().copied())?;
    let smooth = (left - right).abs() <= 1e-4 * (1.0 + left.abs());
    let label = match labels.first() {
        Some(k) => format!(" and every {} = 1", g.inputs[*k].name),
        None => String::new(),
    };
    let mut reason = vec![
        format!("φ(m) is the loss with every {name} = m{label}"),
        format!("convex: {}", if convex { "proven (above)" } else { "not proven" }),
        format!(
            "differentiable at 0: its one-sided difference quotients are {left:.6} and {right:.6} ({})",
            if smooth { "they agree" } else { "they differ" }
        ),
        format!("φ'(0) = {slope:.6} (the gradient at m = 0)"),
    ];
    let verdict = match (convex, smooth && slope < 0.0) {
        (true, true) => Verdict::Proven,
        (true, false) => Verdict::Disproven,
        (false, _) => Verdict::Unknown,
    };
    if verdict == Verdict::Unknown {
        reason.push("the theorem needs φ convex".into());
    }
    Some(Finding {
        property: format!("classification-calibrated in the margin {name}"),
        verdict,
        reason,
        inconsistent: None,
    })
}

/// Classification calibration of a multi-class loss in scores `input` of shape [N, C] with a label
/// `y: idx[N] < C`: proven for a positive combination of Ψ(softmax probability at the label) with Ψ' < 0
/// ([`calibration`]), else unknown.
fn softmax_calibration(g: &Function, loss: usize, input: u32, s: &mut Sampler) -> Option<Finding> {
    let x = &g.inputs[input as usize];
    let label = g.inputs.iter().position(|i| {
        i.elem == ElemTy::Idx
            && i.shape.len() == 1
            && i.shape.first() == x.shape.first()
            && i.bound.as_ref() == x.shape.last()
    })?;
    let body = g.tensors[loss].body;
    let (verdict, reason, inconsistent) = match calibration::proof(g, body, label as u32) {
        Ok(derivation) => (Verdict::Proven, derivation, s.softmax_violation(input as usize, label)),
        Err(why) => match calibration::one_vs_all(g, body, input, label as u32) {
            Some(smooth) => {
                let (verdict, reason) = one_vs_all(g, loss, input, label, smooth, s)?;
                (verdict, reason, None)
            }
            None => (Verdict::Unknown, vec![why], None),
        },
    };
    Some(Finding {
        property: format!("classification-calibrated in the scores {}", x.name),
        verdict,
        reason,
        inconsistent,
    })
}

/// The one-vs-all margin theorem ([`calibration::one_vs_all`]): φ convex (the loss proven convex),
/// differentiable everywhere (its primitives have no kink) and φ'(0) < 0 (from the gradient at every
/// margin 0, with the one-sided difference quotients there) ⇒ calibrated; otherwise unknown, saying which
/// condition fails.
fn one_vs_all(
    g: &Function,
    loss: usize,
    input: u32,
    label: usize,
    smooth: bool,
    s: &mut Sampler,
) -> Option<(Verdict, Vec<String>)> {
    let convex = curvature::Curvature::new(g, input).tensor(loss as u32).convex();
    let (slope, left, right) = s.one_vs_all_slopes(input as usize, label)?;
    let at_zero = (left - right).abs() <= 1e-4 * (1.0 + left.abs());
    let (name, y) = (&g.inputs[input as usize].name, &g.inputs[label].name);
    let mut reason = vec![
        format!(
            "one-vs-all margins: the loss sums φ(m) over the classes, m = {name}[i, k] at k = {y}[i] and \
             -{name}[i, k] elsewhere, with positive weights"
        ),
        format!("convex: {}", if convex { "proven (above)" } else { "not proven" }),
        format!(
            "differentiable everywhere: {}",
            if smooth {
                "its primitives have no kink"
            } else {
                "not shown (a kink: abs, relu, max, min, clamp, a select)"
            }
        ),
        format!(
            "φ'(0) has the sign of dL/dm = {slope:.6} at every margin m = 0 (one-sided quotients {left:.6} and {right:.6})"
        ),
    ];
    let proven = convex && smooth && at_zero && slope < 0.0;
    reason.push(if proven {
        "each class's minimiser of q φ(f) + (1 - q) φ(-f) rises strictly with q, so the top class is the \
         Bayes class (the one-vs-all hinge, with a kink at 1, is not calibrated: Tewari & Bartlett 2007)"
            .into()
    } else {
        "the one-vs-all theorem needs φ convex, differentiable everywhere and φ'(0) < 0".into()
    });
    Some((if proven { Verdict::Proven } else { Verdict::Unknown }, reason))
}

fn finding(
    property: String,
    proven: bool,
    derivation: Vec<String>,
    violation: Option<String>,
    unknown: String,
) -> Finding {
    match (proven, violation) {
        (true, v) => Finding {
            property,
            verdict: Verdict::Proven,
            reason: derivation,
            inconsistent: v,
        },
        (false, Some(v)) => Finding {
            property,
            verdict: Verdict::Disproven,
            reason: vec![v],
            inconsistent: None,
        },
        (false, None) => Finding {
            property,
            verdict: Verdict::Unknown,
            reason: vec![unknown],
            inconsistent: None,
        },
    }
}

/// A transformation of one input an invariance is checked under.
#[derive(Clone, Copy)]
enum Transform {
    /// Each row (all but the last axis) shifted by its own amount.
    Shift,
    /// The whole input times a positive number.
    Scale,
}

/// Seeded random points of a loss, evaluated by the interpreter at small sizes.
struct Sampler<'a> {
    f: &'a Function,
    sizes: Vec<i64>,
    rng: Rng,
    /// The loss-and-gradient program, made on first use.
    gradient: Option<Option<Function>>,
}

impl<'a> Sampler<'a> {
    fn new(f: &'a Function) -> Sampler<'a> {
        Sampler {
            f,
            sizes: vec![3; f.dims.len()],
            rng: Rng::new(7),
            gradient: None,
        }
    }

    /// The loss and gradients at a point, by the interpreter.
    fn gradients(&mut self, inputs: &BTreeMap<String, Tensor>) -> Option<crate::backend::interp::Evaluation> {
        let f = self.f;
        let g = self
            .gradient
            .get_or_insert_with(|| crate::api::gradient(f).ok())
            .as_ref()?;
        crate::api::eval(g, inputs, &BTreeMap::new()).ok()
    }

    fn shape(&self, input: usize) -> Vec<usize> {
        self.f.inputs[input]
            .shape
            .iter()
            .map(|d| d.eval(&self.sizes).max(0) as usize)
            .collect()
    }

    /// Random inputs: floats normal with this spread, labels uniform below their bound.
    fn point(&mut self, spread: f64) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, input) in self.f.inputs.iter().enumerate() {
            let shape = self.shape(k);
            let n: usize = shape.iter().product();
            let t = match input.elem {
                ElemTy::Idx => {
                    let bound = input.bound.as_ref().map_or(3, |b| b.eval(&self.sizes).max(1));
                    Tensor::labels(shape, (0..n).map(|_| self.rng.below(bound as u64) as i64).collect())
                }
                _ if input.state.is_some() => Tensor::float(shape, (0..n).map(|_| 0.5 + self.rng.uniform()).collect()),
                // A per-sample loss is analysed as the sum of its values.
                _ if self.f.cotangent == Some(k as u32) => Tensor::float(shape, vec![1.0; n]),
                _ => Tensor::float(shape, (0..n).map(|_| spread * self.rng.normal()).collect()),
            };
            out.insert(input.name.clone(), t);
        }
        out
    }

    fn loss(&self, inputs: &BTreeMap<String, Tensor>) -> Option<f64> {
        let e = crate::api::eval(self.f, inputs, &BTreeMap::new()).ok()?;
        e.loss.is_finite().then_some(e.loss)
    }

    fn sizes_text(&self) -> String {
        let s: Vec<String> = self
            .f
            .dims
            .iter()
            .zip(&self.sizes)
            .map(|(d, n)| format!("{}={n}", d.name))
            .collect();
        s.join(",")
    }

    fn values(t: &Tensor) -> String {
        let v: Vec<String> = t.to_f64().iter().take(12).map(|x| format!("{x:.3}")).collect();
        let more = if t.len() > 12 { ", …" } else { "" };
        format!("[{}{more}]", v.join(", "))
    }

    /// A point between two where the loss lies above (convex) or below (concave) the chord.
    fn curvature_violation(&mut self, input: u32, convex: bool) -> Option<String> {
        let name = self.f.inputs[input as usize].name.clone();
        for _ in 0..SAMPLES {
            let a = self.point(2.0);
            let mut b = a.clone();
            let shape = self.shape(input as usize);
            let n: usize = shape.iter().product();
            b.insert(
                name.clone(),
                Tensor::float(shape.clone(), (0..n).map(|_| 2.0 * self.rng.normal()).collect()),
            );
            let (xa, xb) = (a[&name].to_f64(), b[&name].to_f64());
            let mut mid = a.clone();
            let t = 0.5;
            let xm: Vec<f64> = xa.iter().zip(&xb).map(|(p, q)| t * p + (1.0 - t) * q).collect();
            mid.insert(name.clone(), Tensor::float(shape, xm));
            let (Some(la), Some(lb), Some(lm)) = (self.loss(&a), self.loss(&b), self.loss(&mid)) else {
                continue;
            };
            let chord = t * la + (1.0 - t) * lb;
            let tol = 1e-9 * (1.0 + la.abs() + lb.abs());
            let broken = if convex { lm > chord + tol } else { lm < chord - tol };
            if broken {
                return Some(format!(
                    "at {}: L(midpoint) = {lm:.6} is {} the chord's {chord:.6} between {name} = {} (L = {la:.6}) and {name} = {} (L = {lb:.6})",
                    self.sizes_text(),
                    if convex { "above" } else { "below" },
                    Self::values(&a[&name]),
                    Self::values(&b[&name]),
                ));
            }
        }
        None
    }

    /// A point where shifting the rows (or scaling) the input changes the loss.
    fn invariance_violation(&mut self, input: u32, how: Transform) -> Option<String> {
        let name = self.f.inputs[input as usize].name.clone();
        for _ in 0..SAMPLES {
            let a = self.point(2.0);
            let shape = self.shape(input as usize);
            let x = a[&name].to_f64();
            let row = *shape.last().unwrap_or(&1);
            let (moved, what): (Vec<f64>, String) = match how {
                Transform::Shift => {
                    let c: Vec<f64> = (0..x.len().div_ceil(row.max(1)))
                        .map(|_| 3.0 * self.rng.normal())
                        .collect();
                    let m = x.iter().enumerate().map(|(k, v)| v + c[k / row.max(1)]).collect();
                    (
                        m,
                        format!("rows shifted by {}", Self::values(&Tensor::float(vec![c.len()], c))),
                    )
                }
                Transform::Scale => {
                    let k = 0.25 + 3.0 * self.rng.uniform();
                    (x.iter().map(|v| v * k).collect(), format!("scaled by {k:.3}"))
                }
            };
            let mut b = a.clone();
            b.insert(name.clone(), Tensor::float(shape, moved));
            let (Some(la), Some(lb)) = (self.loss(&a), self.loss(&b)) else {
                continue;
            };
            if (la - lb).abs() > 1e-7 * (1.0 + la.abs()) {
                return Some(format!(
                    "at {}, {name} = {}: L = {la:.6}, and {lb:.6} with {what}",
                    self.sizes_text(),
                    Self::values(&a[&name])
                ));
            }
        }
        None
    }

    /// A ray along which the loss grows without bound (by a factor of 5 per factor of 10, three times).
    fn unbounded(&mut self) -> Option<String> {
        self.growing_ray(SAMPLES / 4, "L", |s, p| s.loss(p))
    }

    /// A ray along which some element of the gradient in `input` grows without bound.
    fn unbounded_gradient(&mut self, input: usize) -> Option<String> {
        let name = self.f.inputs[input].name.clone();
        let what = format!("max |∂L/∂{name}|");
        self.growing_ray(SAMPLES / 8, &what, |s, p| {
            let e = s.gradients(p)?;
            let (_, g) = e.grads.into_iter().find(|(n, _)| *n == name)?;
            Some(g.to_f64().iter().fold(0f64, |m, v| m.max(v.abs())))
        })
    }

    /// A ray r · x through a random point x of the differentiable inputs along which `measure` grows by a
    /// factor of 5 per factor of 10 in r, three times, as the report says it (`what` names the measure).
    fn growing_ray(
        &mut self,
        rays: usize,
        what: &str,
        mut measure: impl FnMut(&mut Self, &BTreeMap<String, Tensor>) -> Option<f64>,
    ) -> Option<String> {
        let free: Vec<String> = (self.f.inputs.iter())
            .filter(|i| i.differentiable())
            .map(|i| i.name.clone())
            .collect();
        for _ in 0..rays {
            let a = self.point(1.0);
            let mut values = Vec::new();
            for r in [1e1, 1e2, 1e3, 1e4] {
                let mut p = a.clone();
                for name in &free {
                    let t = &a[name];
                    p.insert(
                        name.clone(),
                        Tensor::float(t.shape.clone(), t.to_f64().iter().map(|v| v * r).collect()),
                    );
                }
                values.push(measure(self, &p));
            }
            let Some(v) = values.into_iter().collect::<Option<Vec<f64>>>() else {
                continue;
            };
            let grows = v.windows(2).all(|w| w[1].abs() >= 5.0 * w[0].abs() && w[0].abs() > 0.0);
            if grows && v.iter().all(|x| x.is_finite()) {
                let shown: Vec<String> = v.iter().map(|x| format!("{x:.4e}")).collect();
                return Some(format!(
                    "along a ray r · ({}) at {}: {what} = {} at r = 10, 100, 1000, 10000",
                    free.join(", "),
                    self.sizes_text(),
                    shown.join(", ")
                ));
            }
        }
        None
    }

    /// φ'(0) of a margin loss (its gradient's sum at every margin 0) and its one-sided difference
    /// quotients at 0.
    fn margin_slopes(&mut self, input: usize, label: Option<usize>) -> Option<(f64, f64, f64)> {
        let mut p = self.point(1.0);
        let shape = self.shape(input);
        let n: usize = shape.iter().product();
        if n == 0 {
            return None;
        }
        if let Some(k) = label {
            let one = match self.f.inputs[k].elem {
                ElemTy::Idx => Tensor::labels(self.shape(k), vec![1; n]),
                _ => Tensor::float(self.shape(k), vec![1.0; n]),
            };
            p.insert(self.f.inputs[k].name.clone(), one);
        }
        self.slopes_along(p, input, vec![1.0; n])
    }

    /// The one-vs-all margins all set to m (the label's score m, the others -m): the derivative of the loss
    /// per margin at m = 0 from the gradient, and the one-sided difference quotients there.
    fn one_vs_all_slopes(&mut self, input: usize, label: usize) -> Option<(f64, f64, f64)> {
        let p = self.point(1.0);
        let shape = self.shape(input);
        let (rows, classes) = (*shape.first()?, *shape.last()?);
        let y = p[&self.f.inputs[label].name].to_f64();
        let signs: Vec<f64> = (0..rows * classes)
            .map(|e| {
                if y[e / classes] as usize == e % classes {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        self.slopes_along(p, input, signs)
    }

    /// Input `input` set to `m · direction` in point `p`: the loss's derivative in m at 0 (from the
    /// gradient) and its one-sided difference quotients there.
    fn slopes_along(
        &mut self,
        mut p: BTreeMap<String, Tensor>,
        input: usize,
        direction: Vec<f64>,
    ) -> Option<(f64, f64, f64)> {
        let shape = self.shape(input);
        let name = self.f.inputs[input].name.clone();
        let at = |m: f64, p: &mut BTreeMap<String, Tensor>| {
            p.insert(
                name.clone(),
                Tensor::float(shape.clone(), direction.iter().map(|d| d * m).collect()),
            );
        };
        at(0.0, &mut p);
        let e = self.gradients(&p)?;
        let grad = e.grads.iter().find(|(g, _)| *g == name)?.1.to_f64();
        let slope = grad.iter().zip(&direction).map(|(g, d)| g * d).sum::<f64>();
        let l0 = e.loss;
        let h = 1e-6;
        at(h, &mut p);
        let right = self.loss(&p)?;
        at(-h, &mut p);
        let left = self.loss(&p)?;
        Some((slope, (l0 - left) / h, (right - l0) / h))
    }

    /// A point where the loss is not a decreasing function of the probabilities at the labels alone: raising
    /// every label's score raises it, or moving the other scores with those probabilities held changes it.
    fn softmax_violation(&mut self, input: usize, label: usize) -> Option<String> {
        let (sname, yname) = (self.f.inputs[input].name.clone(), self.f.inputs[label].name.clone());
        let shape = self.shape(input);
        let (rows, classes) = (*shape.first()?, *shape.last()?);
        for _ in 0..SAMPLES / 4 {
            let p = self.point(1.0);
            let (s, y) = (p[&sname].to_f64(), p[&yname].to_f64());
            let base = self.loss(&p)?;
            let at = |v: Vec<f64>| {
                let mut q = p.clone();
                q.insert(sname.clone(), Tensor::float(shape.clone(), v));
                q
            };
            let mut raised = s.clone();
            let mut moved = s.clone();
            for (r, label) in y.iter().enumerate().take(rows) {
                let row = r * classes;
                let yr = *label as usize;
                raised[row + yr] += 0.5;
                // The other scores shifted by random amounts, the label's set so its probability stays.
                let lse_others = |v: &[f64]| {
                    let m = (0..classes)
                        .filter(|k| *k != yr)
                        .map(|k| v[row + k])
                        .fold(f64::NEG_INFINITY, f64::max);
                    m + (0..classes)
                        .filter(|k| *k != yr)
                        .map(|k| (v[row + k] - m).exp())
                        .sum::<f64>()
                        .ln()
                };
                let logit = s[row + yr] - lse_others(&s);
                for k in (0..classes).filter(|k| *k != yr) {
                    moved[row + k] += self.rng.normal();
                }
                moved[row + yr] = logit + lse_others(&moved);
            }
            let up = self.loss(&at(raised))?;
            if up > base + 1e-9 * (1.0 + base.abs()) {
                return Some(format!(
                    "at {}: raising every label's score by 0.5 from {sname} = {} raised L from {base:.6} to {up:.6}",
                    self.sizes_text(),
                    Self::values(&p[&sname])
                ));
            }
            let same = self.loss(&at(moved))?;
            if (same - base).abs() > 1e-7 * (1.0 + base.abs()) {
                return Some(format!(
                    "at {}: two points with the same probabilities at the labels give L = {base:.6} and {same:.6}",
                    self.sizes_text()
                ));
            }
        }
        None
    }

    /// Two points whose sums over every label differ; `None` where the labels are not classes of a row.
    fn symmetry_violation(&mut self, label: usize) -> Option<Option<String>> {
        let classes = self.f.inputs[label].bound.as_ref()?.eval(&self.sizes);
        let name = self.f.inputs[label].name.clone();
        let mut first: Option<f64> = None;
        for _ in 0..SAMPLES / 4 {
            let a = self.point(2.0);
            let mut total = 0.0;
            for k in 0..classes {
                let mut p = a.clone();
                let shape = self.shape(label);
                let n: usize = shape.iter().product();
                p.insert(name.clone(), Tensor::labels(shape, vec![k; n]));
                total += self.loss(&p)?;
            }
            match first {
                None => first = Some(total),
                Some(t) if (t - total).abs() > 1e-7 * (1.0 + t.abs()) => {
                    return Some(Some(format!(
                        "at {}: Σ_k L = {t:.6} at one point and {total:.6} at another",
                        self.sizes_text()
                    )));
                }
                _ => {}
            }
        }
        Some(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler_check(src: &str) -> Option<String> {
        let p = crate::Program::from_source("t.lx", src).unwrap();
        let g = crate::opt::simplify_only(&p.module.functions[0]).unwrap();
        Sampler::new(&g).softmax_violation(0, 1)
    }

    #[test]
    fn the_softmax_cross_check_sees_what_the_rule_must_not_prove() {
        // Ψ(p_y) decreasing: no violation.
        assert_eq!(
            sampler_check("loss f(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }"),
            None
        );
        // Label smoothing reads every probability; a loss rewarding the label's score the wrong way rises.
        let smooth = "loss f(s: f32[N, C], y: idx[N] < C) {
            mean[i] 0.5 * ((logsumexp[k] s[i, k]) - s[i, y[i]]) + 0.5 * mean[k] ((logsumexp[k2] s[i, k2]) - s[i, k]) }";
        assert!(sampler_check(smooth).unwrap().contains("same probabilities"));
        let wrong = "loss f(s: f32[N, C], y: idx[N] < C) { mean[i] s[i, y[i]] - logsumexp[k] s[i, k] }";
        assert!(sampler_check(wrong).unwrap().contains("raised L"));
    }
}

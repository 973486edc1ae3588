//! Ordering forms, lowered to ordinary IR (so the interpreter, autodiff and the JIT need nothing new):
//!
//! - `topk[j | m](e; k = K)[u]`: the u-th largest `e` over the `j` where `m` holds (u in 0..K, descending;
//!   0 when fewer than u + 1 qualify). The choice is a mask, so no gradient flows through it; the chosen
//!   value carries its gradient.
//! - `argsort[j | m](e)[u]`: the `j` of the u-th smallest `e` (stable: ties by `j`; -1 when none).
//! - `sortnet[k](e; network = "odd_even" | "bitonic", relax = "logistic" | "logistic_phi" | "cauchy" |
//!   "reciprocal", steepness = 10.0, art_lambda = 0.25)[i, j]`: the relaxed permutation matrix of a
//!   differentiable sorting network (diffsort): the weight of input `i` at ascending position `j`.
//!
//! Invariants: topk/argsort rank each element by a count over a second copy of the bound index (O(n²) per
//! row, hoisted into a tensor by the optimizer). A sorting network's size must be a compile-time constant:
//! it is unrolled into one `let` per comparator layer (wire values, layer weights α, permutation matrix),
//! whose comparator tables (partner wire, side) are constant tables read at the wire index ([`crate::ir::Expr::Table`]).

use std::collections::HashMap;

use super::Cx;
use crate::diag::{Code, Diag, Span};
use crate::ir::{Dim, Expr, IndexId, NodeId, ReduceOp, Role, Scalar, TensorDef, TensorId, TensorRef, Value};
use crate::prims::Prim;
use crate::syntax::ast::{self, ExprKind, OptionValue, OrderOp, OrderOption};

/// The largest sorting network lowered (the unrolled IR grows as n² log² n).
pub const MAX_SORT_SIZE: i64 = 256;

/// How a comparator turns the difference `v = x_b - x_a` of its inputs into the weight α of the min.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Relax {
    Logistic,
    LogisticPhi,
    Cauchy,
    Reciprocal,
}

/// One comparator layer: for each wire, its partner and its side (+1 receives the min, -1 the max,
/// 0 idle: the partner is the wire itself).
type Layer = Vec<(usize, i8)>;

/// The odd-even transposition network on n wires (n layers), as in diffsort.
fn odd_even(n: usize) -> Vec<Layer> {
    (0..n)
        .map(|layer| {
            let mut wires: Layer = (0..n).map(|w| (w, 0)).collect();
            for a in (layer % 2..n.saturating_sub(1)).step_by(2) {
                wires[a] = (a + 1, 1);
                wires[a + 1] = (a, -1);
            }
            wires
        })
        .collect()
}

/// Batcher's bitonic network, padded to a power of two with the padding wires first; a comparator that
/// touches a padding wire leaves its real wire unchanged (diffsort's identity map).
fn bitonic(n: usize) -> Vec<Layer> {
    let blocks = n.next_power_of_two().trailing_zeros() as usize;
    let size = 1usize << blocks;
    let pad = size - n;
    let mut layers = Vec::new();
    for block in 0..blocks {
        for layer in 0..=block {
            let m = 1usize << (block - layer);
            let mut wires: Layer = (0..n).map(|w| (w, 0)).collect();
            for start in (0..size).step_by(2 * m) {
                for ix in start..start + m {
                    let (mut a, mut b) = (ix, ix + m);
                    if a < pad || b < pad {
                        continue;
                    }
                    if (ix >> (block + 1)) % 2 == 1 {
                        std::mem::swap(&mut a, &mut b);
                    }
                    wires[a - pad] = (b - pad, 1);
                    wires[b - pad] = (a - pad, -1);
                }
            }
            layers.push(wires);
        }
    }
    layers
}

/// The parsed options of a sorting network.
struct NetOptions {
    layers: Vec<Layer>,
    relax: Relax,
    steepness: NodeId,
    art_lambda: NodeId,
}

impl Cx<'_, '_> {
    fn order_err(&mut self, span: Span, msg: String, label: &str, help: &str) {
        self.err(
            Diag::new(Code::BadOrderOption, msg)
                .label(span, label.to_string())
                .help(help.to_string()),
        );
    }

    /// Lowers an ordering form.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn order(
        &mut self,
        op: OrderOp,
        binders: &[ast::Binder],
        mask_ast: Option<&ast::Expr>,
        body: &ast::Expr,
        options: &[OrderOption],
        subscripts: &[ast::Expr],
        span: Span,
    ) -> Option<NodeId> {
        // Lower everything first, so that one bad option does not leave the indices around unconstrained.
        self.scopes.push(Vec::new());
        let js: Vec<IndexId> = binders.iter().map(|b| self.binder(b, None)).collect();
        let m = mask_ast.map(|m| self.expr(m).and_then(|n| self.condition(n, m)));
        let b = self.expr(body);
        self.scopes.pop();
        let js = self.finish_binders(binders, js, None);
        let k_option = options.iter().find(|o| o.name.name == "k");
        // argsort's positions: the row-major flat positions of the ordered indices.
        let positions = match (op, &js) {
            (OrderOp::TopK, _) => k_option.and_then(|k| self.option_dim(k)),
            (_, Some(js)) => (js.iter().map(|j| self.f.index(*j).range.clone()))
                .reduce(|a, b| Dim::Mul(Box::new(a), Box::new(b)).fold()),
            _ => None,
        };
        let subs: Vec<Option<NodeId>> = subscripts
            .iter()
            .map(|sub| match &positions {
                Some(dim) => self.position(sub, dim, op),
                None => self.expr(sub),
            })
            .collect();

        let allowed: &[&str] = match op {
            OrderOp::TopK => &["k"],
            OrderOp::ArgSort => &[],
            OrderOp::SortNet => &["network", "relax", "steepness", "art_lambda"],
        };
        if let Some(o) = options.iter().find(|o| !allowed.contains(&o.name.name.as_str())) {
            let help = if allowed.is_empty() {
                format!("`{}` takes no options", op.as_str())
            } else {
                format!("`{}` takes: {}", op.as_str(), allowed.join(", "))
            };
            self.order_err(
                o.name.span,
                format!("unknown option `{}`", o.name.name),
                "unknown",
                &help,
            );
            return None;
        }
        let want = if op == OrderOp::SortNet { 2 } else { 1 };
        if subscripts.len() != want {
            let help = match op {
                OrderOp::SortNet => "write `sortnet[k](x[r, k])[i, j]`: input i, sorted position j",
                _ => "write one position after the form, e.g. `topk[j](s[i, j]; k = 5)[u]`",
            };
            let msg = format!(
                "`{}` takes {want} subscript(s), found {}",
                op.as_str(),
                subscripts.len()
            );
            self.order_err(span, msg, "here", help);
            return None;
        }
        if op == OrderOp::TopK && k_option.is_none() {
            self.order_err(
                span,
                "`topk` needs `k = …`".into(),
                "no k",
                "write `topk[j](e; k = 5)[u]`",
            );
            return None;
        }
        if op == OrderOp::SortNet && binders.len() > 1 {
            self.order_err(
                binders[1].name.span,
                "a sorting network orders one index".into(),
                "a second index",
                "sort each row: `sortnet[k](x[r, k])[i, j]`; topk and argsort take several indices",
            );
            return None;
        }
        if let (OrderOp::SortNet, Some(m)) = (op, mask_ast) {
            self.order_err(
                m.span,
                "a sorting network sorts every element".into(),
                "a mask",
                "drop the mask; select the elements to sort in a `let` first",
            );
            return None;
        }
        let js = js?;
        positions?;
        let subs = subs.into_iter().collect::<Option<Vec<NodeId>>>()?;
        let mask = match m {
            Some(m) => Some(m?),
            None => None,
        };
        let b = self.number(b?, body)?;
        let b = self.as_float(b, body.span)?;
        match op {
            OrderOp::TopK | OrderOp::ArgSort => self.select_by_rank(op, &js, mask, b, subs[0], span),
            OrderOp::SortNet => {
                let net = self.net_options(js[0], options, span)?;
                self.sortnet(js[0], b, net, (subs[0], subs[1]), span)
            }
        }
    }

    /// topk / argsort: rank every element by a count over a second copy of the indices (ties broken by
    /// row-major position), then pick rank u.
    #[allow(clippy::too_many_arguments)]
    fn select_by_rank(
        &mut self,
        op: OrderOp,
        js: &[IndexId],
        mask: Option<NodeId>,
        body: NodeId,
        u: NodeId,
        span: Span,
    ) -> Option<NodeId> {
        let mut map = HashMap::new();
        let mut j2s = Vec::new();
        // `earlier`: (j') before (j) in row-major order, built from the last index outwards.
        let mut earlier: Option<NodeId> = None;
        for &j in js.iter().rev() {
            let range_j = self.f.index(j).range.clone();
            let j2 = self.known_index(format!("{}'", self.f.index(j).name), range_j, span, "the ranked index");
            let j2_node = self.mk(Expr::Index(j2), Scalar::Int, span)?;
            let j_node = self.mk(Expr::Index(j), Scalar::Int, span)?;
            map.insert(j, j2_node);
            j2s.push(j2);
            let less = self.prim(Prim::Lt, vec![j2_node, j_node], span)?;
            earlier = Some(match earlier {
                None => less,
                Some(inner) => {
                    let same = self.prim(Prim::Eq, vec![j2_node, j_node], span)?;
                    let then = self.prim(Prim::And, vec![same, inner], span)?;
                    self.prim(Prim::Or, vec![less, then], span)?
                }
            });
        }
        j2s.reverse();
        let earlier = earlier?;
        let body2 = self.f.subst(body, &map).ok()?;
        let mask2 = match mask {
            Some(m) => Some(self.f.subst(m, &map).ok()?),
            None => None,
        };
        let ahead = if op == OrderOp::TopK { Prim::Gt } else { Prim::Lt };
        let strictly = self.prim(ahead, vec![body2, body], span)?;
        let tie = self.prim(Prim::Eq, vec![body2, body], span)?;
        let tie_first = self.prim(Prim::And, vec![tie, earlier], span)?;
        let before = self.prim(Prim::Or, vec![strictly, tie_first], span)?;
        let rank = self.mk(
            Expr::Reduce {
                op: ReduceOp::Count,
                indices: j2s.into(),
                mask: mask2,
                body: before,
            },
            Scalar::Int,
            span,
        )?;
        let at = self.prim(Prim::Eq, vec![rank, u], span)?;
        let chosen = match mask {
            Some(m) => self.prim(Prim::And, vec![m, at], span)?,
            None => at,
        };
        match op {
            OrderOp::TopK => self.mk(
                Expr::Reduce {
                    op: ReduceOp::Sum,
                    indices: js.into(),
                    mask: Some(chosen),
                    body,
                },
                Scalar::Float,
                span,
            ),
            _ => {
                let zero = self.mk(Expr::float(0.0), Scalar::Float, span)?;
                self.mk(
                    Expr::Reduce {
                        op: ReduceOp::ArgMax,
                        indices: js.into(),
                        mask: Some(chosen),
                        body: zero,
                    },
                    Scalar::Int,
                    span,
                )
            }
        }
    }

    /// A position subscript of an ordering form: an integer; a bare index ranges over `dim`.
    fn position(&mut self, sub: &ast::Expr, dim: &Dim, op: OrderOp) -> Option<NodeId> {
        if let ExprKind::Access { name, subscripts: None } = &sub.kind
            && let Some(super::Found::Local(super::Local::Index(id), _)) = self.lookup(&name.name)
        {
            self.constrain(id, dim, sub.span, format!("a position of `{}`", op.as_str()));
        }
        let n = self.expr(sub)?;
        if self.f.node(n).scalar != Scalar::Int {
            self.err(
                Diag::new(Code::FloatSubscript, "a position must be an integer index")
                    .label(sub.span, "not an integer")
                    .help("positions are indices and integer arithmetic on them"),
            );
            return None;
        }
        Some(n)
    }

    /// An option whose value is a dimension (an integer, a const or a dimension name).
    fn option_dim(&mut self, o: &OrderOption) -> Option<Dim> {
        let OptionValue::Expr(e) = &o.value else {
            self.order_err(
                o.value.span(),
                format!("`{}` is a size, not a string", o.name.name),
                "a string",
                "write `k = 5` or `k = K`",
            );
            return None;
        };
        let kind = match &e.kind {
            ExprKind::Number { value, is_int: true } => ast::DimExprKind::Int(*value as i64),
            ExprKind::Access { name, subscripts: None } => ast::DimExprKind::Name(name.name.clone()),
            _ => {
                self.order_err(
                    e.span,
                    format!("`{}` must be a dimension", o.name.name),
                    "an expression",
                    "write an integer, a const or a dimension name",
                );
                return None;
            }
        };
        self.dim(&ast::DimExpr { kind, span: e.span })
    }

    /// A string option's value, checked against its choices.
    fn option_choice<'o>(
        &mut self,
        options: &'o [OrderOption],
        name: &str,
        default: &'o str,
        choices: &[&str],
    ) -> Option<&'o str> {
        let Some(o) = options.iter().find(|o| o.name.name == name) else {
            return Some(default);
        };
        match &o.value {
            OptionValue::Str(s, _) if choices.contains(&s.as_str()) => Some(s.as_str()),
            v => {
                let help = format!(
                    "`{name}` is one of: {}",
                    choices
                        .iter()
                        .map(|c| format!("\"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.order_err(v.span(), format!("bad value for `{name}`"), "not a choice", &help);
                None
            }
        }
    }

    /// A scalar option (a number or an expression over hyperparameters, free in no index).
    fn option_scalar(&mut self, options: &[OrderOption], name: &str, default: f64, span: Span) -> Option<NodeId> {
        let Some(o) = options.iter().find(|o| o.name.name == name) else {
            return self.mk(Expr::float(default), Scalar::Float, span);
        };
        let OptionValue::Expr(e) = &o.value else {
            self.order_err(
                o.value.span(),
                format!("`{name}` is a number"),
                "a string",
                "write a number or a hyperparameter",
            );
            return None;
        };
        let n = self.expr(e)?;
        let n = self.number(n, e)?;
        let n = self.as_float(n, e.span)?;
        if !self.f.node(n).free.is_empty() {
            self.order_err(
                e.span,
                format!("`{name}` depends on an index"),
                "not a scalar",
                "use a number or a hyperparameter",
            );
            return None;
        }
        Some(n)
    }

    fn net_options(&mut self, j: IndexId, options: &[OrderOption], span: Span) -> Option<NetOptions> {
        let network = self.option_choice(options, "network", "odd_even", &["odd_even", "bitonic"])?;
        let relax = match self.option_choice(
            options,
            "relax",
            "cauchy",
            &["logistic", "logistic_phi", "cauchy", "reciprocal"],
        )? {
            "logistic" => Relax::Logistic,
            "logistic_phi" => Relax::LogisticPhi,
            "reciprocal" => Relax::Reciprocal,
            _ => Relax::Cauchy,
        };
        let steepness = self.option_scalar(options, "steepness", 10.0, span)?;
        let art_lambda = self.option_scalar(options, "art_lambda", 0.25, span)?;
        let n = match self.f.index(j).range {
            Dim::Const(n) if (1..=MAX_SORT_SIZE).contains(&n) => n as usize,
            ref d => {
                let d = self.f.show_dim(d);
                let span = self.f.index(j).span;
                self.order_err(
                    span,
                    format!("a sorting network needs a constant size from 1 to {MAX_SORT_SIZE}, but this index ranges over {d}"),
                    "the sorted index",
                    "sort an axis of constant size: declare it with a number or a const (`x: f32[B, 8]`, `const K = 8`)",
                );
                return None;
            }
        };
        let layers = if network == "bitonic" { bitonic(n) } else { odd_even(n) };
        Some(NetOptions {
            layers,
            relax,
            steepness,
            art_lambda,
        })
    }

    /// A constant table over the wire index (see [`crate::ir::Function::table`]).
    fn table(&mut self, w: NodeId, values: &[Value], span: Span) -> Option<NodeId> {
        let r = self.f.table(w, values, span);
        self.lift(r, span)
    }

    /// Adds `let name[fresh copies of head] = body` (the body written over `head`) and returns it.
    fn hidden_let(&mut self, name: String, head: &[IndexId], body: NodeId, span: Span) -> Option<TensorId> {
        let mut map = HashMap::new();
        let mut fresh = Vec::new();
        for &h in head {
            let v = self.f.index(h).clone();
            let id = self.known_index(v.name, v.range, v.span, "a sorting network");
            map.insert(h, self.mk(Expr::Index(id), Scalar::Int, span)?);
            fresh.push(id);
        }
        let body = self.f.subst(body, &map).ok()?;
        let scalar = self.f.node(body).scalar;
        Some(self.f.add_tensor(TensorDef {
            name,
            indices: fresh,
            body,
            scalar,
            role: Role::Let,
            span,
        }))
    }

    fn load_at(&mut self, t: TensorId, subs: Vec<NodeId>, span: Span) -> Option<NodeId> {
        let scalar = self.f.tensor(t).scalar;
        self.mk(
            Expr::Load {
                tensor: TensorRef::Def(t),
                subs: subs.into(),
            },
            scalar,
            span,
        )
    }

    /// Unrolls the network: wire values x_l, comparator weights α_l and the permutation matrix P_l.
    fn sortnet(
        &mut self,
        j: IndexId,
        body: NodeId,
        net: NetOptions,
        (si, sj): (NodeId, NodeId),
        span: Span,
    ) -> Option<NodeId> {
        let n = match self.f.index(j).range {
            Dim::Const(n) => n as usize,
            _ => return None,
        };
        let outer: Vec<IndexId> = self.f.node(body).free.iter().copied().filter(|i| *i != j).collect();
        for &o in &outer {
            if self.ranges[o.index()].is_none() {
                let name = self.f.index(o).name.clone();
                let ispan = self.f.index(o).span;
                self.err(
                    Diag::new(
                        Code::RangeUnknown,
                        format!("cannot infer the range of index `{name}` before the sort"),
                    )
                    .label(ispan, "bound here")
                    .help(format!("give its range where it is bound: `{name}: N`")),
                );
                return None;
            }
            let d = self.ranges[o.index()].clone().map(|r| r.dim).expect("checked");
            self.f.indices[o.index()].range = d;
        }
        let int = |cx: &mut Self, i: IndexId| cx.mk(Expr::Index(i), Scalar::Int, span);
        // Wire and row indices of the layer tensors (renamed per tensor by `hidden_let`).
        let w = self.known_index("w", Dim::Const(n as i64), span, "a sorting network");
        let i = self.known_index("i", Dim::Const(n as i64), span, "a sorting network");
        let (w_node, i_node) = (int(self, w)?, int(self, i)?);
        let mut outer_nodes = Vec::new();
        for &o in &outer {
            outer_nodes.push(int(self, o)?);
        }
        let head_x: Vec<IndexId> = outer.iter().copied().chain([w]).collect();
        // P is kept transposed, P[wire, input]: the innermost loop runs over inputs with the wire's partner
        // and weight fixed, contiguous and vectorized.
        let head_p: Vec<IndexId> = outer.iter().copied().chain([w, i]).collect();
        let at = |base: &[NodeId], extra: &[NodeId]| -> Vec<NodeId> { base.iter().chain(extra).copied().collect() };

        let x0_body = self.f.subst(body, &HashMap::from([(j, w_node)])).ok()?;
        let mut x = self.hidden_let("sortnet.x0".into(), &head_x, x0_body, span)?;
        let mut p = None;
        let one = self.mk(Expr::float(1.0), Scalar::Float, span)?;
        for (l, layer) in net.layers.iter().enumerate() {
            let partners: Vec<Value> = layer.iter().map(|(q, _)| Value::I(*q as i64)).collect();
            let sides: Vec<Value> = layer.iter().map(|(_, s)| Value::F(f64::from(*s))).collect();
            let other = self.table(w_node, &partners, span)?;
            let side = self.table(w_node, &sides, span)?;
            let xw = self.load_at(x, at(&outer_nodes, &[w_node]), span)?;
            let xo = self.load_at(x, at(&outer_nodes, &[other]), span)?;
            let diff = self.prim(Prim::Sub, vec![xo, xw], span)?;
            let v = self.prim(Prim::Mul, vec![side, diff], span)?;
            let alpha_body = self.relax(net.relax, v, net.steepness, net.art_lambda, span)?;
            let alpha = self.hidden_let(format!("sortnet.alpha{}", l + 1), &head_x, alpha_body, span)?;
            let a = self.load_at(alpha, at(&outer_nodes, &[w_node]), span)?;
            let not_a = self.prim(Prim::Sub, vec![one, a], span)?;
            let mix = |cx: &mut Self, own: NodeId, theirs: NodeId| -> Option<NodeId> {
                let l = cx.prim(Prim::Mul, vec![a, own], span)?;
                let r = cx.prim(Prim::Mul, vec![not_a, theirs], span)?;
                cx.prim(Prim::Add, vec![l, r], span)
            };
            let x_body = mix(self, xw, xo)?;
            let (pw, po) = match p {
                Some(p) => (
                    self.load_at(p, at(&outer_nodes, &[w_node, i_node]), span)?,
                    self.load_at(p, at(&outer_nodes, &[other, i_node]), span)?,
                ),
                None => {
                    let eye_w = self.prim(Prim::Eq, vec![i_node, w_node], span)?;
                    let eye_o = self.prim(Prim::Eq, vec![i_node, other], span)?;
                    (
                        self.prim(Prim::Iverson, vec![eye_w], span)?,
                        self.prim(Prim::Iverson, vec![eye_o], span)?,
                    )
                }
            };
            let p_body = mix(self, pw, po)?;
            x = self.hidden_let(format!("sortnet.x{}", l + 1), &head_x, x_body, span)?;
            p = Some(self.hidden_let(format!("sortnet.P{}", l + 1), &head_p, p_body, span)?);
        }
        match p {
            Some(p) => self.load_at(p, at(&outer_nodes, &[sj, si]), span),
            None => {
                // One element: the identity.
                let eq = self.prim(Prim::Eq, vec![si, sj], span)?;
                self.prim(Prim::Iverson, vec![eq], span)
            }
        }
    }

    /// α = relax(v) for the difference v = x_b - x_a of a comparator's inputs.
    fn relax(&mut self, relax: Relax, v: NodeId, steepness: NodeId, art_lambda: NodeId, span: Span) -> Option<NodeId> {
        let sv = self.prim(Prim::Mul, vec![steepness, v], span)?;
        let half = self.mk(Expr::float(0.5), Scalar::Float, span)?;
        match relax {
            Relax::Logistic => self.prim(Prim::Sigmoid, vec![sv], span),
            Relax::LogisticPhi => {
                let abs = self.prim(Prim::Abs, vec![v], span)?;
                let tiny = self.mk(Expr::float(1e-10), Scalar::Float, span)?;
                let base = self.prim(Prim::Add, vec![abs, tiny], span)?;
                let scale = self.prim(Prim::Pow, vec![base, art_lambda], span)?;
                let z = self.prim(Prim::Div, vec![sv, scale], span)?;
                self.prim(Prim::Sigmoid, vec![z], span)
            }
            Relax::Cauchy => {
                let at = self.prim(Prim::Atan, vec![sv], span)?;
                let pi = self.mk(Expr::float(std::f64::consts::FRAC_1_PI), Scalar::Float, span)?;
                let scaled = self.prim(Prim::Mul, vec![pi, at], span)?;
                self.prim(Prim::Add, vec![scaled, half], span)
            }
            Relax::Reciprocal => {
                let abs = self.prim(Prim::Abs, vec![sv], span)?;
                let two = self.mk(Expr::float(2.0), Scalar::Float, span)?;
                let den = self.prim(Prim::Add, vec![two, abs], span)?;
                let q = self.prim(Prim::Div, vec![sv, den], span)?;
                let one = self.mk(Expr::float(1.0), Scalar::Float, span)?;
                let q1 = self.prim(Prim::Add, vec![q, one], span)?;
                self.prim(Prim::Mul, vec![half, q1], span)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a network to concrete numbers with hard comparators.
    fn run(layers: &[Layer], mut x: Vec<i64>) -> Vec<i64> {
        for layer in layers {
            let prev = x.clone();
            for (w, &(q, side)) in layer.iter().enumerate() {
                x[w] = match side {
                    1 => prev[w].min(prev[q]),
                    -1 => prev[w].max(prev[q]),
                    _ => prev[w],
                };
            }
        }
        x
    }

    #[test]
    fn networks_sort_every_permutation_of_small_inputs() {
        for n in 1..=9usize {
            for net in [odd_even(n), bitonic(n)] {
                // Every 0/1 input (the 0-1 principle).
                for bits in 0..(1u32 << n) {
                    let x: Vec<i64> = (0..n).map(|k| i64::from((bits >> k) & 1)).collect();
                    let mut want = x.clone();
                    want.sort();
                    assert_eq!(run(&net, x), want, "n = {n}");
                }
            }
        }
    }

    #[test]
    fn comparators_pair_up() {
        for n in 1..=17 {
            for net in [odd_even(n), bitonic(n)] {
                for layer in &net {
                    for (w, &(q, s)) in layer.iter().enumerate() {
                        assert_eq!(layer[q].0, w);
                        assert_eq!(layer[q].1, -s);
                    }
                }
            }
        }
    }
}

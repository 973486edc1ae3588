//! Rendered diagnostics (colour off), one case per error kind: each asserts its stable code and snapshots
//! the whole report, so a change to a message, label or help text shows in review.

use lossc::Program;
use lossc::diag::Code;

/// Compiles `src`, expects failure, checks the first diagnostic's code and returns every rendered report.
fn fails(name: &str, src: &str, code: Code) -> String {
    let diags = match Program::from_source(&format!("{name}.lx"), src) {
        Ok(_) => panic!("{name}: expected {code}, but it compiled"),
        Err(d) => d,
    };
    let codes: Vec<Code> = diags.0.iter().map(|d| d.code).collect();
    assert!(
        codes.contains(&code),
        "{name}: expected {code}, got {codes:?}:\n{}",
        diags.render()
    );
    for d in &diags.0 {
        assert!(d.help.is_some(), "{name}: {} has no help", d.code);
        assert!(!d.labels.is_empty(), "{name}: {} has no label", d.code);
    }
    diags.render()
}

macro_rules! case {
    ($name:ident, $code:ident, $src:expr) => {
        #[test]
        fn $name() {
            let rendered = fails(stringify!($name), $src, Code::$code);
            insta::assert_snapshot!(stringify!($name), rendered);
        }
    };
}

case!(syntax_error, Syntax, "loss f(x: f32[N]) {\n    mean[i] x[i] +\n}\n");
case!(syntax_bad_item, Syntax, "lost f(x: f32[N]) { 1 }\n");
// A reduction without a body: `count[j | c] < k` and `sum[i]` at the end of a body (issue 23).
case!(
    count_without_a_body,
    Syntax,
    "loss f(x: f32[N], y: idx[N] < 3, k: f32 = 2.0) { mean[i] count[j | y[j] == y[i]] < k }\n"
);
case!(reduction_without_a_body, Syntax, "loss f(x: f32[N]) { sum[i] }\n");
// Parameter lists, keywords as names and misspelt reductions say what is wrong (issue 23).
case!(
    parameters_without_a_comma,
    Syntax,
    "loss f(x: f32[N] y: idx[N]) {\n    mean[i] x[i]\n}\n"
);
case!(
    parameter_list_never_closed,
    Syntax,
    "loss f(x: f32[N] {\n    mean[i] x[i]\n}\n"
);
case!(
    parameter_without_a_type,
    Syntax,
    "loss f(x, y: idx[N]) {\n    mean[i] y[i]\n}\n"
);
case!(
    keyword_as_a_name,
    Syntax,
    "loss f(x: f32[N]) {\n    let loss = mean[i] x[i]\n    loss\n}\n"
);
case!(
    misspelt_reduction,
    Syntax,
    "loss f(x: f32[N]) {\n    logsumexpp[i] x[i]\n}\n"
);
// A `let` that uses its own name, and a loss whose value is a tensor (issue 23).
case!(
    let_refers_to_itself,
    UnknownName,
    "loss f(x: f32[N]) {\n    let l = l + 1\n    l\n}\n"
);
case!(
    loss_value_is_a_tensor,
    LossNotNumber,
    "loss f(x: f32[N, C]) {\n    let l[i, k] = x[i, k] ^ 2\n    l\n}\n"
);
// A last line that starts with `-` continues the `let` above it: the body has no value.
case!(
    value_line_continues_the_let,
    Syntax,
    "loss f(x: f32[N]) {\n    let g = sum[i] x[i] ^ 2\n    -log(g)\n}\n"
);
// A missing `}` points at the `{` left open; an unclosed block comment at where it opens (issue 23).
case!(unclosed_brace, Syntax, "loss f(x: f32[N]) {\n    mean[i] x[i]\n");
case!(
    unclosed_block_comment,
    Syntax,
    "loss f(x: f32[N]) {\n    /* note\n    mean[i] x[i]\n}\n"
);
// `fmt` deleted a doc comment inside a body that `check` accepted (issue 28).
case!(
    doc_comment_inside_a_body,
    Syntax,
    "loss f(x: f32[N]) {\n    /// the mean\n    mean[i] x[i]\n}\n"
);
// `2 /// note` once read as `2 / // note`: a division by the next line (issue 28).
case!(
    doc_comment_after_an_operand,
    Syntax,
    "loss f(x: f32[N]) {\n    let s = sum[i] x[i]\n    s + 2 /// note\n    - 3\n}\n"
);
case!(
    nesting_too_deep,
    TooDeep,
    &format!("loss f(x: f32[N]) {{ {}x[0]{} }}\n", "(".repeat(400), ")".repeat(400))
);
// A `+` chain of any length is regrouped (tests/robustness.rs); a `%` chain cannot be, so it is a tree as
// deep as it is long.
case!(
    chain_too_deep,
    TooDeep,
    &format!("loss f(x: f32[N]) {{ x[0]{} }}\n", " % 2".repeat(1000))
);
case!(
    number_out_of_range,
    BadNumber,
    "loss f(x: f32[N]) { mean[i] x[i] * 1e999 }\n"
);
case!(
    unknown_name,
    UnknownName,
    "loss f(x: f32[N], lambda: f32 = 1.0) {\n    mean[i] x[i] * lamda\n}\n"
);
case!(
    duplicate_let,
    Duplicate,
    "loss f(x: f32[N]) {\n    let a = sum[i] x[i]\n    let a = mean[i] x[i]\n    a\n}\n"
);
case!(
    duplicate_item,
    Duplicate,
    "fn g(v) { v }\nfn g(v) { 2 * v }\nloss f(x: f32[N]) { mean[i] g(x[i]) }\n"
);
case!(
    unknown_function,
    UnknownFunction,
    "loss f(x: f32[N]) {\n    mean[i] expp(x[i])\n}\n"
);
case!(
    reduction_called_like_function,
    UnknownFunction,
    "loss f(x: f32[N]) {\n    sum(x[0])\n}\n"
);
case!(wrong_arity, Arity, "loss f(x: f32[N]) {\n    mean[i] pow(x[i])\n}\n");
case!(
    unknown_module,
    UnknownModule,
    "use std::robustness::ldr_kl\nloss f(x: f32[N]) { mean[i] x[i] }\n"
);
case!(
    unknown_import,
    UnknownImport,
    "use std::classification::cross_entropyy\nloss f(x: f32[N]) { mean[i] x[i] }\n"
);
case!(
    recursive_fn,
    RecursiveFn,
    "fn g(v) { g(v) + 1 }\nloss f(x: f32[N]) { mean[i] g(x[i]) }\n"
);
case!(
    not_constant,
    NotConstant,
    "const K = [1 > 0]\nloss f(x: f32[N]) { mean[i] x[i] * K }\n"
);
case!(
    not_a_tensor,
    NotATensor,
    "loss f(x: f32[N], w: f32 = 1.0) {\n    mean[i] x[i] * w[i]\n}\n"
);
case!(
    subscript_count,
    SubscriptCount,
    "loss f(s: f32[N, C]) {\n    mean[i] s[i]\n}\n"
);
case!(
    tensor_without_subscripts,
    SubscriptCount,
    "loss f(s: f32[N, C]) {\n    mean[i] s\n}\n"
);
case!(
    range_conflict,
    RangeConflict,
    "loss f(x: f32[N], z: f32[M]) {\n    sum[i] x[i] * z[i]\n}\n"
);
// A read past an axis that no guard tests is still a range conflict (a guarded one is not: tests/in).
case!(
    unguarded_read_past_an_axis,
    RangeConflict,
    "loss f(a: f32[B, D]) {\n    let z[i: 2 * B, d: D] = a[i, d]\n    sum[i, d] z[i, d]\n}\n"
);
// A `let`'s head index takes its range from a later read where the index reading it has a range of its
// own or subscripts a tensor there (tests/in/ranges_from_uses.lx); here `w` is read only by the head of
// `v`, whose range comes from `v`'s own later read, which is not followed: the message says what to write.
case!(
    let_index_range_from_a_later_use,
    RangeUnknown,
    "loss f(a: f32[B]) {\n    let w[i] = 2 * i\n    let v[j] = w[j]\n    sum[j: B] a[j] * v[j]\n}\n"
);
// A suggestion is of the kind the position needs: a tensor for a subscripted name (`xs`, not the
// dimension `N` at the same distance).
case!(
    suggestions_are_of_the_right_kind,
    UnknownName,
    "loss f(xs: f32[N, C]) {\n    mean[i] sum[k] x[i, k]\n}\n"
);
// Two letters swapped are one edit: `mea` suggests `mae`.
case!(
    swapped_letters_suggest_the_item,
    UnknownImport,
    "use std::classification::mea\n"
);
case!(range_unknown, RangeUnknown, "loss f(x: f32[N]) {\n    sum[j] x[0]\n}\n");
// The suggested range is one of the loss's dimensions, and the help names the others.
case!(
    range_unknown_names_the_dimensions,
    RangeUnknown,
    "loss f(x: f32[N, D], y: f32[B]) {\n    sum[j] x[0, 0] + y[0]\n}\n"
);
case!(
    condition_as_number,
    ConditionAsNumber,
    "loss f(x: f32[N]) {\n    mean[i] x[i] > 0\n}\n"
);
case!(
    number_as_condition,
    NumberAsCondition,
    "loss f(x: f32[N]) {\n    mean[i | x[i]] x[i]\n}\n"
);
case!(
    float_subscript,
    FloatSubscript,
    "loss f(s: f32[N, C], x: f32[N]) {\n    mean[i] s[i, x[i]]\n}\n"
);
case!(
    label_bound,
    LabelBound,
    "loss f(s: f32[N, C], y: idx[N] < K, w: f32[K]) {\n    mean[i] s[i, y[i]] + w[y[i]]\n}\n"
);
case!(bad_input_dim, BadDim, "loss f(x: f32[N + 1]) {\n    x[0]\n}\n");
case!(
    default_on_tensor,
    DefaultOnTensor,
    "loss f(x: f32[N] = 1.0) {\n    mean[i] x[i]\n}\n"
);
case!(
    nograd_on_label,
    NogradOnLabel,
    "loss f(x: f32[N], y: idx[N] nograd) {\n    mean[i] x[i] * y[i]\n}\n"
);
case!(
    undetermined_dim,
    UndeterminedDim,
    "loss f(x: f32[N], y: idx[N] < C) {\n    mean[i] x[i] * y[i]\n}\n"
);
case!(
    undeclared_output,
    OutputMismatch,
    "loss f(x: f32[N]) {\n    out u[i] = x[i]\n    mean[i] x[i]\n}\n"
);
case!(
    output_never_defined,
    OutputMismatch,
    "loss f(x: f32[N]) -> (u: f32[N]) {\n    mean[i] x[i]\n}\n"
);
case!(
    loss_not_number,
    LossNotNumber,
    "loss f(x: f32[N]) {\n    (sum[i] x[i]) > 0\n}\n"
);
case!(
    indexed_let_in_fn,
    IndexedLetInFn,
    "fn g(v) {\n    let t[i] = v\n    v\n}\nloss f(x: f32[N]) { mean[i] g(x[i]) }\n"
);
case!(tensor_called, NotAValue, "loss f(x: f32[N]) {\n    mean[i] x(i)\n}\n");
case!(
    default_type,
    DefaultType,
    "loss f(x: f32[N], k: idx = 1.5) {\n    mean[i] x[i] * k\n}\n"
);
case!(
    count_of_number,
    BadOperand,
    "loss f(x: f32[N]) {\n    count[k] x[k]\n}\n"
);
case!(
    float_const_as_dim,
    DimArithmetic,
    "const H = 0.5\nloss f(x: f32[N]) {\n    let a[t: H] = 1.0\n    sum[t] a[t]\n}\n"
);

case!(
    state_key_not_ids,
    BadState,
    "loss f(x: f32[B], ids: f32[B], u: f32[B] state[ids] = 0.0) { sum[i] x[i] * u[i] }\n"
);
case!(
    state_key_unknown,
    BadState,
    "loss f(x: f32[B], u: f32[B] state[idz] = 0.0) { sum[i] x[i] * u[i] }\n"
);
case!(
    state_wrong_shape,
    BadState,
    "loss f(x: f32[C, B], ids: idx[B], u: f32[C, B] state[ids]) { sum[i, k] x[i, k] * u[i, k] }\n"
);
case!(
    state_row_undetermined,
    BadState,
    "loss f(x: f32[B], ids: idx[B], u: f32[B, S] state[ids]) { sum[i, k] x[i] * u[i, k] }\n"
);
case!(
    updates_not_state,
    BadState,
    "loss f(x: f32[B], ids: idx[B]) -> (v: f32[B] updates x) {\n    out v[i] = x[i]\n    sum[i] x[i]\n}\n"
);
case!(
    updates_wrong_shape,
    BadState,
    "loss f(x: f32[B, C], ids: idx[B], u: f32[B] state[ids]) -> (v: f32[B, C] updates u) {\n    out v[i, k] = x[i, k]\n    sum[i] u[i]\n}\n"
);
case!(
    sortnet_symbolic_size,
    BadOrderOption,
    "loss f(x: f32[B, N]) {\n    sum[r, i, j] sortnet[k](x[r, k])[i, j] * x[r, j]\n}\n"
);
case!(
    sortnet_unknown_network,
    BadOrderOption,
    "loss f(x: f32[B, 4]) {\n    sum[r, i, j] sortnet[k](x[r, k]; network = \"bubble\")[i, j] * x[r, j]\n}\n"
);
case!(
    topk_unknown_option,
    BadOrderOption,
    "loss f(s: f32[B, N]) {\n    sum[r, u: 3] topk[j](s[r, j]; k = 3, largest = 1)[u]\n}\n"
);
case!(
    topk_without_k,
    BadOrderOption,
    "loss f(s: f32[B, N]) {\n    sum[r, u: 3] topk[j](s[r, j])[u]\n}\n"
);
case!(
    sortnet_with_mask,
    BadOrderOption,
    "loss f(x: f32[B, 4]) {\n    sum[r, i, j] sortnet[k | k > 0](x[r, k])[i, j] * x[r, j]\n}\n"
);
case!(
    argsort_two_positions,
    BadOrderOption,
    "loss f(s: f32[B, N]) {\n    sum[r, u] s[r, argsort[j](s[r, j])[u, u]]\n}\n"
);

case!(
    per_sample_not_a_tensor,
    OutputMismatch,
    "loss f(x: f32[N]) -> f32[N] {\n    sum[i] x[i]\n}\n"
);
case!(
    per_sample_wrong_shape,
    OutputMismatch,
    "loss f(x: f32[N, C]) -> f32[N] {\n    let l[i, k] = x[i, k] ^ 2\n    l\n}\n"
);

#[test]
fn every_error_in_a_file_is_reported() {
    let src = "loss f(x: f32[N]) {\n    let a = sum[i] x[i] * lamda\n    let b = mean[i] expp(x[i])\n    let c = count[k] x[k]\n    a + b + c\n}\n";
    let diags = Program::from_source("many.lx", src).unwrap_err();
    let codes: Vec<Code> = diags.0.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        vec![Code::UnknownName, Code::UnknownFunction, Code::BadOperand],
        "{}",
        diags.render()
    );
}

#[test]
fn conflicts_label_both_uses() {
    let diags = Program::from_source("c.lx", "loss f(x: f32[N], z: f32[M]) { sum[i] x[i] * z[i] }").unwrap_err();
    assert_eq!(diags.0[0].labels.len(), 2);
}

#[test]
fn codes_are_distinct_and_well_formed() {
    let mut seen = std::collections::HashSet::new();
    for c in Code::ALL {
        let s = c.as_str();
        assert!(s.starts_with("lossc::E") && s.len() == 11, "{s}");
        assert!(seen.insert(s), "{s} used twice");
    }
}

#[test]
fn a_name_then_a_parenthesised_line_is_not_a_call() {
    // `inner` ends a let; the next line's `(…)` is the loss value, not an argument list.
    let src = "loss f(s: f32[N]) {\n    let inner = sum[i] s[i]\n    (inner) * 2\n}\n";
    let p = Program::from_source("c.lx", src).unwrap_or_else(|d| panic!("{}", d.render()));
    assert_eq!(p.module.functions.len(), 1);
    // With a space, a call is a syntax error rather than a different program.
    assert!(Program::from_source("d.lx", "loss f(s: f32[N]) { exp (s[0]) }").is_err());
}
// Extern operations (issue 24): a call that does not fit its declaration.
const EXTERN: &str = "extern fn pick(x: f32[N] nograd; mode: str = \"a\") -> (at: idx[N] < N, w: f32[N])\n";
case!(
    extern_in_an_expression,
    BadExtern,
    &format!("{EXTERN}loss f(x: f32[N]) {{\n    sum[i] pick(x)\n}}\n")
);
case!(
    extern_wrong_arity,
    BadExtern,
    &format!("{EXTERN}loss f(x: f32[N]) {{\n    let (at, w) = pick(x, x)\n    sum[i] w[i] * x[at[i]]\n}}\n")
);
case!(
    extern_too_few_names,
    BadExtern,
    &format!("{EXTERN}loss f(x: f32[N]) {{\n    let (at) = pick(x)\n    sum[i] x[at[i]]\n}}\n")
);
case!(
    extern_wrong_rank,
    BadExtern,
    &format!("{EXTERN}loss f(x: f32[N, C]) {{\n    let (at, w) = pick(x)\n    sum[i] w[i]\n}}\n")
);
case!(
    extern_labels_for_floats,
    BadExtern,
    &format!(
        "{EXTERN}loss f(x: f32[N], y: idx[N] < N) {{\n    let (at, w) = pick(y)\n    sum[i] w[i] * x[at[i]]\n}}\n"
    )
);
case!(
    extern_unknown_option,
    BadExtern,
    &format!(
        "{EXTERN}loss f(x: f32[N]) {{\n    let (at, w) = pick(x; order = \"b\")\n    sum[i] w[i] * x[at[i]]\n}}\n"
    )
);
case!(
    extern_option_of_the_wrong_kind,
    BadExtern,
    &format!("{EXTERN}loss f(x: f32[N]) {{\n    let (at, w) = pick(x; mode = 2)\n    sum[i] w[i] * x[at[i]]\n}}\n")
);
case!(
    not_an_extern,
    BadExtern,
    "loss f(x: f32[N]) {\n    let (y) = exp(x)\n    sum[i] y[i]\n}\n"
);
case!(
    sortnet_two_indices,
    BadOrderOption,
    "loss f(x: f32[4, 4]) {\n    sum[i, j] sortnet[a, b](x[a, b])[i, j]\n}\n"
);

//! The C driver of one loss in an ahead-of-time library: its entry point, which checks a call as
//! [`crate::call::bind`] does (with the same messages), and the tables the runtime (`runtime.c`) runs the
//! kernel's groups from: each buffer's kind and extents, each group's function, schedule, split sums and
//! row-private buffers, and the messages of the generated bounds checks.

use std::fmt::Write;

use crate::backend::jit::{ObjectKernel, elem_bytes};
use crate::backend::loops::split_members;
use crate::call::MAX_ELEMENTS;
use crate::ir::{Dim, ElemTy, Expr, Role, Scalar, TensorRef};

/// One parameter of an entry point: its C type and name, and what the header says of it.
pub struct Param {
    /// The C declaration (`const float *logits`).
    pub decl: String,
    /// What it is, for the header's comment.
    pub doc: String,
}

/// A loss's entry point: its C name and parameters, and the driver code behind it.
pub struct Entry {
    /// `lossc_<loss>`.
    pub name: String,
    /// The loss's signature as lx writes it, and its documentation.
    pub signature: String,
    /// Its doc comment.
    pub doc: String,
    /// Parameters in order: inputs (data, shape), hyperparameters, results, threads, error, error_size.
    pub params: Vec<Param>,
    /// The hyperparameters' names (as C identifiers) and defaults.
    pub defaults: Vec<(String, f64)>,
    /// The driver's C code (tables, extents, checks, the entry point).
    pub code: String,
}

/// Why a loss cannot be a library's entry point.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// Words C reserves (a parameter named so gets a trailing `_`).
const C_KEYWORDS: &[&str] = &[
    "auto",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "bool",
    "true",
    "false",
    "error",
    "error_size",
    "threads",
];

fn ident(name: &str) -> String {
    if C_KEYWORDS.contains(&name) || name.starts_with("lossc_") {
        format!("{name}_")
    } else {
        name.to_string()
    }
}

/// A C string literal.
fn lit(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '%' => out.push_str("%%"),
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:03o}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// A dimension as a C expression over the sizes `s` (wrapping, as [`Dim::eval`]).
fn dim(d: &Dim) -> String {
    sized(d, "s")
}

/// A dimension as a C expression over the sizes in array `sizes`.
fn sized(d: &Dim, sizes: &str) -> String {
    match d {
        Dim::Const(c) => format!("INT64_C({c})"),
        Dim::Sym(s) => format!("{sizes}[{}]", s.index()),
        Dim::Add(a, b) => format!(
            "(int64_t)((uint64_t){} + (uint64_t){})",
            sized(a, sizes),
            sized(b, sizes)
        ),
        Dim::Sub(a, b) => format!(
            "(int64_t)((uint64_t){} - (uint64_t){})",
            sized(a, sizes),
            sized(b, sizes)
        ),
        Dim::Mul(a, b) => format!(
            "(int64_t)((uint64_t){} * (uint64_t){})",
            sized(a, sizes),
            sized(b, sizes)
        ),
    }
}

/// The product of extents (each at least 0, saturating at `i64::MAX`), as a C expression.
fn product(dims: &[Dim], at_least: i64) -> String {
    if dims.is_empty() {
        return "INT64_C(1)".into();
    }
    let parts: Vec<String> = dims
        .iter()
        .map(|d| format!("lossc_rt_at_least({}, {at_least})", dim(d)))
        .collect();
    parts
        .into_iter()
        .reduce(|a, b| format!("lossc_rt_mul({a}, {b})"))
        .unwrap_or_default()
}

/// A C `int` table, or `NULL` for an empty one (C has no empty arrays).
fn table(code: &mut String, name: &str, values: &[usize]) -> String {
    if values.is_empty() {
        return "NULL".into();
    }
    let list: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    let _ = writeln!(code, "static const int {name}[] = {{{}}};", list.join(", "));
    name.to_string()
}

/// The elements of a C array initializer, or `empty` alone where there are none (C has no empty arrays).
fn initializer(items: &[String], empty: &str) -> String {
    match items.is_empty() {
        true => empty.to_string(),
        false => items.join(", "),
    }
}

/// The driver of one kernel of an object (`kernel.prefix` names its groups' symbols).
pub fn entry(kernel: &ObjectKernel, source_name: &str) -> Result<Entry, Unsupported> {
    let f = &kernel.function;
    let plan = &kernel.plan;
    let p = kernel.prefix.trim_end_matches('_');
    for input in &f.inputs {
        if matches!(input.elem, ElemTy::Bf16 | ElemTy::F16) {
            return Err(Unsupported(format!(
                "loss `{}`: input `{}` is {}; a library takes float32 and int64 inputs only",
                f.name,
                input.name,
                input.elem.as_str()
            )));
        }
    }
    let mut code = String::new();
    let _ = writeln!(code, "\n/* ---- loss `{}` ({source_name}) ---- */\n", f.name);

    // The groups' functions (hidden symbols of the kernels' object).
    for k in 0..plan.groups.len() {
        let _ = writeln!(
            code,
            "LOSSC_HIDDEN void {}(void *const *, const int64_t *, const double *, int64_t *, int64_t, int64_t, float *);",
            kernel.group_symbol(k)
        );
    }

    // Extents of buffers and groups at the call's sizes.
    let _ = writeln!(
        code,
        "\nstatic void {p}_extents(const int64_t *s, struct lossc_rt_extents *e) {{\n    (void)s;"
    );
    for (k, buf) in plan.buffers.iter().enumerate() {
        let _ = writeln!(code, "    e->buffer_elements[{k}] = {};", product(&buf.shape, 0));
        let row = if buf.shape.is_empty() { &[][..] } else { &buf.shape[1..] };
        let _ = writeln!(code, "    e->buffer_row[{k}] = {};", product(row, 0));
    }
    for (g, (group, schedule)) in plan.groups.iter().zip(&kernel.schedules).enumerate() {
        let members = plan.members(group);
        let outer = members[0]
            .head
            .first()
            .map_or("INT64_C(1)".to_string(), |(_, d)| dim(d));
        let _ = writeln!(code, "    e->group_outer[{g}] = {outer};");
        let rows: Vec<String> = schedule
            .row_indices
            .iter()
            .map(|member| {
                let ranges: Vec<Dim> = member.iter().map(|i| f.index(*i).range.clone()).collect();
                product(&ranges, 1)
            })
            .collect();
        let row = rows
            .into_iter()
            .reduce(|a, b| format!("lossc_rt_max({a}, {b})"))
            .unwrap_or_else(|| "INT64_C(1)".into());
        let _ = writeln!(code, "    e->group_row[{g}] = {row};");
        let split = schedule.split.as_ref().map_or("INT64_C(-1)".to_string(), dim);
        let _ = writeln!(code, "    e->group_split[{g}] = {split};");
        if let Some(c) = &kernel.products[g] {
            for (k, d) in [&c.rows, &c.depth, &c.columns].into_iter().enumerate() {
                let _ = writeln!(code, "    e->product_dims[{}] = {};", 3 * g + k, dim(d));
            }
        }
    }
    code.push_str("}\n\n");

    // The messages of the generated bounds checks: which load, which axis, its size.
    let _ = writeln!(
        code,
        "static void {p}_index_error(const int64_t *s, const int64_t *err, char *msg, size_t n) {{\n    \
         const char *tensor = \"?\";\n    int64_t size = 0;\n    (void)s;\n    switch (err[0]) {{"
    );
    for (node, n) in f.nodes().iter().enumerate() {
        let Expr::Load { tensor, subs } = &n.expr else { continue };
        let shape = f.ref_shape(*tensor);
        let checked: Vec<usize> = (0..subs.len())
            .filter(|a| shape.get(*a).is_some_and(|d| !f.in_range(subs[*a], d)))
            .collect();
        if checked.is_empty() {
            continue;
        }
        let _ = writeln!(
            code,
            "    case {}:\n        tensor = {};",
            node + 1,
            lit(f.ref_name(*tensor))
        );
        let _ = writeln!(code, "        switch (err[1]) {{");
        for a in checked {
            let _ = writeln!(code, "        case {a}: size = {}; break;", dim(&shape[a]));
        }
        code.push_str("        }\n        break;\n");
    }
    let _ = writeln!(
        code,
        "    }}\n    snprintf(msg, n, \"subscript out of range: axis %lld of `%s` has size %lld, but the subscript \
         is %lld\", (long long)err[1], tensor, (long long)size, (long long)err[2]);\n}}\n"
    );

    // The groups.
    let mut groups = Vec::new();
    for (g, (group, schedule)) in plan.groups.iter().zip(&kernel.schedules).enumerate() {
        let members = plan.members(group);
        let (first, split_buffers) = match split_members(f, &members).filter(|_| schedule.split.is_some()) {
            Some((first, _)) => {
                let buffers: Vec<usize> = members[first..]
                    .iter()
                    .map(|m| plan.buffer_of(f, TensorRef::Def(m.tensor)))
                    .collect();
                (first as i64, buffers)
            }
            None => (-1, Vec::new()),
        };
        let split = table(&mut code, &format!("{p}_split{g}"), &split_buffers);
        let private_buffers = plan.private_buffers(f, group);
        let private = table(&mut code, &format!("{p}_private{g}"), &private_buffers);
        // A matrix product: its operands as the GEMM reads them.
        let product = match &kernel.products[g] {
            Some(c) => {
                let (left_transposed, right_transposed) = c.reads_transposed();
                let finite = c.must_be_finite.map_or(-1, |o| o.buffer as i64);
                let _ = writeln!(
                    code,
                    "static const struct lossc_rt_product {p}_product{g} = {{{}, {}, {}, {}, {}, {finite}, {}}};",
                    c.left.buffer,
                    left_transposed as u8,
                    c.right.buffer,
                    right_transposed as u8,
                    c.symmetric() as u8,
                    c.distance as u8,
                );
                format!("&{p}_product{g}")
            }
            None => "NULL".into(),
        };
        let output = plan.buffer_of(f, TensorRef::Def(members[0].tensor));
        groups.push(format!(
            "    {{{product}, {output}, {}, {}, {}, {}, {}, {first}, {split}, {}, {private}}},",
            kernel.group_symbol(g),
            members[0].parallel as u8,
            schedule.column_sum as u8,
            schedule.tiled_rows as u8,
            members.len(),
            private_buffers.len()
        ));
    }
    let _ = writeln!(
        code,
        "static const struct lossc_rt_group {p}_groups[] = {{\n{}\n}};",
        groups.join("\n")
    );

    // The buffers: kind, host, element size.
    let n_buffers = plan.buffers.len();
    let mut kinds = Vec::new();
    let mut hosts = Vec::new();
    let mut bytes = Vec::new();
    for (k, buf) in plan.buffers.iter().enumerate() {
        let kind = match buf.of {
            TensorRef::Input(_) => 0,
            _ if plan.host[k].is_some() => 3,
            _ if plan.row_private[k] => 2,
            _ => 1,
        };
        kinds.push(kind);
        hosts.push(plan.host[k].unwrap_or(0));
        bytes.push(elem_bytes(buf.scalar));
    }
    let kinds = table(&mut code, &format!("{p}_kind"), &kinds);
    let hosts = table(&mut code, &format!("{p}_host"), &hosts);
    let bytes = table(&mut code, &format!("{p}_elem_bytes"), &bytes);
    let n_dims = f.dims.len();
    let _ = writeln!(
        code,
        "static pthread_mutex_t {p}_kept_lock = PTHREAD_MUTEX_INITIALIZER;\nstatic void *{p}_kept[{n_buffers}];\n\
         static int64_t {p}_kept_sizes[{}];\nstatic int {p}_kept_valid;\n\
         static const struct lossc_rt_kernel {p}_kernel = {{{n_buffers}, {n_dims}, {}, {}, {p}_groups, {kinds}, \
         {hosts}, {bytes}, {p}_extents, {p}_index_error, &{p}_kept_lock, {p}_kept, {p}_kept_sizes, \
         &{p}_kept_valid}};\n",
        n_dims.max(1),
        f.hypers.len(),
        plan.groups.len(),
    );

    // The entry point's parameters.
    let mut params = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut name = |n: String| -> Result<String, Unsupported> {
        if names.insert(n.clone()) {
            Ok(n)
        } else {
            Err(Unsupported(format!(
                "loss `{}`: two parameters of its C entry point would both be named `{n}`",
                f.name
            )))
        }
    };
    let shape_text = |shape: &[Dim]| -> String {
        let dims: Vec<String> = shape.iter().map(|d| f.show_dim(d)).collect();
        format!("[{}]", dims.join(", "))
    };
    let mut input_names = Vec::new();
    for input in &f.inputs {
        let n = name(ident(&input.name))?;
        let shape = name(format!("{n}_shape"))?;
        let (ty, what) = match input.elem {
            ElemTy::Idx => ("int64_t", "int64 labels"),
            _ => ("float", "float32"),
        };
        let bound = input.bound.as_ref().map_or(String::new(), |b| {
            format!(
                ", each in 0..{}{}",
                f.show_dim(b),
                crate::call::or_ignored(input.ignore)
            )
        });
        params.push(Param {
            decl: format!("const {ty} *{n}"),
            doc: format!(
                "input `{}`: {what} {}{bound}, row-major",
                input.name,
                shape_text(&input.shape)
            ),
        });
        params.push(Param {
            decl: format!("const int64_t *{shape}"),
            doc: match input.shape.len() {
                1 => "its shape: 1 extent".to_string(),
                n => format!("its shape: {n} extents"),
            },
        });
        input_names.push((n, shape));
    }
    let mut defaults = Vec::new();
    for h in &f.hypers {
        let n = name(ident(&h.name))?;
        let kind = if h.scalar == Scalar::Int {
            "an integer"
        } else {
            "a float"
        };
        params.push(Param {
            decl: format!("double {n}"),
            doc: format!("hyperparameter `{}`: {kind} (default {})", h.name, h.default),
        });
        defaults.push((n, h.default));
    }
    let mut results = Vec::new();
    for (role, result, buffer) in plan.results(f) {
        let (n, what) = match role {
            Role::Loss => (name("loss".into())?, "the loss (one float)".to_string()),
            Role::Grad(_) => (
                name(format!("grad_{}", ident(result)))?,
                format!("the gradient with respect to `{result}`"),
            ),
            _ => (name(format!("out_{}", ident(result)))?, format!("output `{result}`")),
        };
        let shape = shape_text(&plan.buffers[buffer].shape);
        params.push(Param {
            decl: format!("float *{n}"),
            doc: format!("{what}: float32 {shape}, written here (NULL: not wanted)"),
        });
        results.push((n, buffer));
    }
    params.push(Param {
        decl: "int threads".into(),
        doc: "threads to run on (0: one per core); results do not depend on it".into(),
    });
    params.push(Param {
        decl: "char *error".into(),
        doc: "where a failed call writes its message (NULL: nowhere)".into(),
    });
    params.push(Param {
        decl: "size_t error_size".into(),
        doc: "the bytes `error` holds".into(),
    });

    // The entry point: the checks of call::bind_views, in its order and with its messages.
    // The generic entry point: inputs, shapes, hyperparameters and results as arrays in declaration
    // order (what a foreign-function interface calls without a header); it unpacks them into the typed
    // entry point's parameters and checks the call.
    let entry_name = format!("lossc_{}", f.name);
    let _ = writeln!(
        code,
        "LOSSC_EXPORT int {entry_name}_call(const void *const *lossc_inputs, const int64_t *const *lossc_shapes, \
         const double *lossc_hypers, float *const *lossc_results, int threads, char *error, size_t error_size) {{\n    \
         if (!lossc_inputs || !lossc_shapes) return lossc_rt_fail(error, error_size, LOSSC_RT_ARGUMENT_ERROR, \
         \"the inputs or their shapes are NULL\");"
    );
    for (k, (input, (n, shape))) in f.inputs.iter().zip(&input_names).enumerate() {
        let ty = if input.elem == ElemTy::Idx { "int64_t" } else { "float" };
        let _ = writeln!(
            code,
            "    const {ty} *{n} = (const {ty} *)lossc_inputs[{k}];\n    const int64_t *{shape} = lossc_shapes[{k}];"
        );
    }
    for (k, (n, default)) in defaults.iter().enumerate() {
        let _ = writeln!(code, "    double {n} = lossc_hypers ? lossc_hypers[{k}] : {default:?};");
    }
    for (k, (n, _)) in results.iter().enumerate() {
        let _ = writeln!(code, "    float *{n} = lossc_results ? lossc_results[{k}] : NULL;");
    }
    let _ = writeln!(
        code,
        "    int64_t lossc_s[{}] = {{0}};\n    void *lossc_ptrs[{n_buffers}] = {{0}};\n    char lossc_at[256];\n    (void)lossc_at;",
        n_dims.max(1)
    );
    let mut source_of: Vec<Option<String>> = vec![None; n_dims];
    for (i, (input, (n, shape))) in f.inputs.iter().zip(&input_names).enumerate() {
        let _ = writeln!(
            code,
            "    if (!{n} || !{shape}) return lossc_rt_fail(error, error_size, LOSSC_RT_ARGUMENT_ERROR, \
             \"input `%s` or its shape is NULL\", {});",
            lit(&input.name)
        );
        let _ = writeln!(
            code,
            "    {{\n        unsigned __int128 lossc_count = 1;\n        for (int lossc_a = 0; lossc_a < {}; lossc_a++) {{\n            \
             if ({shape}[lossc_a] < 0) return lossc_rt_fail(error, error_size, LOSSC_RT_SHAPE_ERROR, \"input `%s` has \
             the negative extent %lld on axis %d\", {}, (long long){shape}[lossc_a], lossc_a);\n            \
             lossc_count = lossc_rt_mul128(lossc_count, (uint64_t){shape}[lossc_a]);\n        }}\n        if (lossc_count > {MAX_ELEMENTS}u) {{\n            \
             char lossc_digits[48];\n            lossc_rt_u128(lossc_count, lossc_digits);\n            return lossc_rt_fail(error, \
             error_size, LOSSC_RT_SHAPE_ERROR, \"tensor `%s` would have %s elements, more than the limit of \
             {MAX_ELEMENTS}\", {}, lossc_digits);\n        }}\n    }}",
            input.shape.len(),
            lit(&input.name),
            lit(&input.name)
        );
        for (axis, d) in input.shape.iter().enumerate() {
            match d {
                Dim::Const(c) => {
                    let _ = writeln!(
                        code,
                        "    if ({shape}[{axis}] != INT64_C({c})) return lossc_rt_fail(error, error_size, \
                         LOSSC_RT_SHAPE_ERROR, \"dimension {c} mismatch: axis {axis} of `%s` has size %lld, but {c} \
                         = {c} (from the declared type)\", {}, (long long){shape}[{axis}]);",
                        lit(&input.name)
                    );
                }
                // Checked once the hyperparameters are read.
                Dim::Sym(sym) if f.dims[sym.index()].hyper.is_some() => {}
                Dim::Sym(sym) => match &source_of[sym.index()] {
                    Some(from) => {
                        let dname = &f.dims[sym.index()].name;
                        let _ = writeln!(
                            code,
                            "    if ({shape}[{axis}] != lossc_s[{k}]) return lossc_rt_fail(error, error_size, \
                             LOSSC_RT_SHAPE_ERROR, \"dimension %s mismatch: axis {axis} of `%s` has size %lld, but \
                             %s = %lld (from %s)\", {dn}, {}, (long long){shape}[{axis}], {dn}, (long long)lossc_s[{k}], {});",
                            lit(&input.name),
                            lit(from),
                            k = sym.index(),
                            dn = lit(dname),
                        );
                    }
                    None => {
                        let _ = writeln!(code, "    lossc_s[{}] = {shape}[{axis}];", sym.index());
                        source_of[sym.index()] = Some(format!("axis {axis} of `{}`", input.name));
                    }
                },
                _ => {}
            }
        }
        let _ = writeln!(code, "    lossc_ptrs[{i}] = (void *){n};");
    }
    let hyper_names: Vec<String> = defaults.iter().map(|(n, _)| n.clone()).collect();
    for (h, n) in f.hypers.iter().zip(&hyper_names) {
        if h.scalar == Scalar::Int {
            let _ = writeln!(
                code,
                "    if (!isfinite({n}) || {n} != trunc({n})) {{\n        char lossc_value[40];\n        \
                 lossc_rt_shortest({n}, lossc_value);\n        return lossc_rt_fail(error, error_size, \
                 LOSSC_RT_HYPER_ERROR, \"hyperparameter `%s` is an integer, but was given %s\", {}, lossc_value);\n    }}",
                lit(&h.name)
            );
        }
    }
    // A size an integer hyperparameter sets (saturated, as Rust's `as i64` does).
    for (k, d) in f.dims.iter().enumerate() {
        if let Some(h) = d.hyper {
            let n = &hyper_names[h as usize];
            let _ = writeln!(
                code,
                "    lossc_s[{k}] = {n} >= 9.2e18 ? INT64_MAX : {n} <= -9.2e18 ? INT64_MIN : (int64_t){n};"
            );
        }
    }
    // An input axis integer hyperparameters size has their value (as `call::bind` checks it).
    for (input, (_, shape)) in f.inputs.iter().zip(&input_names) {
        for (axis, d) in input.shape.iter().enumerate() {
            let Some(from) = crate::call::hyper_sized(f, d) else {
                continue;
            };
            let _ = writeln!(
                code,
                "    if ({shape}[{axis}] != {size}) return lossc_rt_fail(error, error_size, LOSSC_RT_SHAPE_ERROR, \
                 \"dimension %s mismatch: axis {axis} of `%s` has size %lld, but %s = %lld (from %s)\", {dn}, {}, \
                 (long long){shape}[{axis}], {dn}, (long long)({size}), {});",
                lit(&input.name),
                lit(&from),
                size = sized_entry(d),
                dn = lit(&f.show_dim(d)),
            );
        }
    }
    for (k, (input, (n, shape))) in f.inputs.iter().zip(&input_names).enumerate() {
        // Labels within their bound; sample ids that key state within the state store's limit (as
        // `call::bind` checks them).
        let keys_state = f
            .inputs
            .iter()
            .any(|i| i.state.as_ref().is_some_and(|s| s.key as usize == k));
        let (b, bound_text) = match &input.bound {
            Some(b) => (b.clone(), f.show_dim(b)),
            None if keys_state => (Dim::Const(crate::state::MAX_STATE_ROWS), "MAX_STATE_ROWS".to_string()),
            None => continue,
        };
        let b = &b;
        let _ = writeln!(
            code,
            "    {{\n        int64_t lossc_size = {}, lossc_n = {};\n        for (int64_t lossc_i = 0; lossc_i < lossc_n; lossc_i++) {{\n            \
             if (({n}[lossc_i] < 0 || {n}[lossc_i] >= lossc_size){ignored}) {{\n                lossc_rt_position(lossc_i, {shape}, {}, lossc_at, \
             sizeof lossc_at);\n                return lossc_rt_fail(error, error_size, LOSSC_RT_LABEL_ERROR, \"label \
             out of range: `%s` at position %s is %lld, but labels must lie in 0..%s (%s = %lld)%s\", {}, lossc_at, \
             (long long){n}[lossc_i], {bd}, {bd}, (long long)lossc_size, {or});\n            }}\n        }}\n    }}",
            sized_entry(b),
            (0..input.shape.len())
                .map(|a| format!("{shape}[{a}]"))
                .reduce(|x, y| format!("{x} * {y}"))
                .unwrap_or_else(|| "1".into()),
            input.shape.len(),
            lit(&input.name),
            bd = lit(&bound_text),
            ignored = input
                .ignore
                .map_or(String::new(), |v| format!(" && {n}[lossc_i] != INT64_C({v})")),
            or = lit(&crate::call::or_ignored(input.ignore)),
        );
    }
    let _ = writeln!(
        code,
        "    double lossc_h[] = {{{}}};\n    (void)lossc_h;",
        initializer(&hyper_names, "0")
    );
    // Every tensor and index of a sane extent.
    for t in &f.tensors {
        let ranges: Vec<&Dim> = t.indices.iter().map(|i| &f.index(*i).range).collect();
        let _ = writeln!(code, "    {{\n        unsigned __int128 lossc_count = 1;");
        for r in &ranges {
            let _ = writeln!(
                code,
                "        {{\n            int64_t lossc_e = {};\n            if (lossc_e < 0) return lossc_rt_fail(error, \
                 error_size, LOSSC_RT_SHAPE_ERROR, \"tensor `%s` would have a negative extent %lld along %s\", {}, \
                 (long long)lossc_e, {});\n            lossc_count = lossc_rt_mul128(lossc_count, (uint64_t)lossc_e);\n        }}",
                sized_entry(r),
                lit(&t.name),
                lit(&f.show_dim(r))
            );
        }
        let _ = writeln!(
            code,
            "        if (lossc_count > {MAX_ELEMENTS}u) {{\n            char lossc_digits[48];\n            lossc_rt_u128(lossc_count, \
             lossc_digits);\n            return lossc_rt_fail(error, error_size, LOSSC_RT_SHAPE_ERROR, \"tensor `%s` would \
             have %s elements, more than the limit of {MAX_ELEMENTS}\", {}, lossc_digits);\n        }}\n    }}",
            lit(&t.name)
        );
    }
    for v in &f.indices {
        let _ = writeln!(
            code,
            "    if ({} < 0) return lossc_rt_fail(error, error_size, LOSSC_RT_SHAPE_ERROR, \"tensor `%s` would have \
             a negative extent %lld along %s\", {}, (long long)({}), {});",
            sized_entry(&v.range),
            lit(&v.name),
            sized_entry(&v.range),
            lit(&f.show_dim(&v.range))
        );
    }
    for (n, buffer) in &results {
        let _ = writeln!(code, "    lossc_ptrs[{buffer}] = {n};");
    }
    let _ = writeln!(
        code,
        "    return lossc_rt_call(&{p}_kernel, lossc_ptrs, lossc_s, lossc_h, threads, error, error_size);\n}}\n"
    );
    // The typed entry point.
    let decls: Vec<&str> = params.iter().map(|p| p.decl.as_str()).collect();
    let _ = writeln!(
        code,
        "LOSSC_EXPORT int {entry_name}({}) {{\n    const void *lossc_inputs[] = {{{}}};\n    \
         const int64_t *lossc_shapes[] = {{{}}};\n    double lossc_hypers[] = {{{}}};\n    \
         float *lossc_results[] = {{{}}};\n    return {entry_name}_call(lossc_inputs, lossc_shapes, lossc_hypers, \
         lossc_results, threads, error, error_size);\n}}",
        decls.join(", "),
        initializer(&input_names.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), "NULL"),
        initializer(&input_names.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>(), "NULL"),
        initializer(&hyper_names, "0"),
        initializer(&results.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), "NULL"),
    );
    let inputs: Vec<String> = f
        .inputs
        .iter()
        .map(|i| {
            let bound = i.bound.as_ref().map_or(String::new(), |b| {
                let ignore = i.ignore.map_or(String::new(), |v| format!(" ignore = {v}"));
                format!(" < {}{ignore}", f.show_dim(b))
            });
            format!("{}: {}{}{bound}", i.name, i.elem.as_str(), shape_text(&i.shape))
        })
        .collect();
    let signature = format!("loss {}({})", f.name, inputs.join(", "));
    Ok(Entry {
        name: entry_name,
        signature,
        doc: f.doc.clone(),
        params,
        defaults,
        code,
    })
}

/// A dimension over the entry point's sizes (`lossc_s`).
fn sized_entry(d: &Dim) -> String {
    sized(d, "lossc_s")
}

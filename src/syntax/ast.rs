//! The spanned abstract syntax tree: exactly what the text says, before any name is resolved.
//!
//! Invariant: every node carries the span of the text it came from; trees are at most
//! [`super::MAX_DEPTH`] deep, so every recursive walk over them is bounded.

use crate::diag::Span;

/// A name as written, with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it is written.
    pub span: Span,
}

/// A parsed file.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    /// Its items in source order.
    pub items: Vec<Item>,
}

/// One top-level item with its doc comment.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The `///` lines before it, joined.
    pub doc: String,
    /// What it is.
    pub kind: ItemKind,
    /// Its whole text.
    pub span: Span,
}

/// The kinds of top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum ItemKind {
    /// `use std::a::b` (the path after `std`); `glob` for `use std::a::*`.
    Use {
        /// The module path after `std`.
        path: Vec<Ident>,
        /// Whether it imports every item of the module.
        glob: bool,
    },
    /// `const name = value`.
    Const {
        /// The constant's name.
        name: Ident,
        /// Its value (a constant expression).
        value: Expr,
    },
    /// `fn name(params) { body }`.
    Fn(FnDef),
    /// `loss name(params) -> … { body }`.
    Loss(LossDef),
    /// `extern fn name(params; options) -> (outputs)`.
    Extern(ExternDef),
}

impl Item {
    /// The name an item defines (none for `use`).
    pub fn name(&self) -> Option<&Ident> {
        match &self.kind {
            ItemKind::Use { .. } => None,
            ItemKind::Const { name, .. } => Some(name),
            ItemKind::Fn(f) => Some(&f.name),
            ItemKind::Loss(l) => Some(&l.name),
            ItemKind::Extern(e) => Some(&e.name),
        }
    }
}

/// `fn name(params) { body }`: an inlined helper.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    /// Its name.
    pub name: Ident,
    /// Its parameters.
    pub params: Vec<FnParam>,
    /// Its body.
    pub body: Body,
}

/// A parameter of a `fn`: a name and an optional type.
#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    /// Its name.
    pub name: Ident,
    /// Its declared type, if any (else it takes its argument's).
    pub ty: Option<Type>,
}

/// `extern fn name(params; options) -> (outputs)`: an operation implemented in Rust and registered on
/// the compiler under `name`, which a loss calls with `let (a, b) = name(x, y; option = value)`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternDef {
    /// Its name (the name it is registered under).
    pub name: Ident,
    /// Its tensor parameters (`nograd` ones get no gradient: an extern whose parameters are all `nograd` is
    /// a selection).
    pub params: Vec<Param>,
    /// Its options after `;`.
    pub options: Vec<ExternOpt>,
    /// Its outputs.
    pub outputs: Vec<OutDecl>,
}

/// An option of an extern operation: `filtration: str = "superlevel"`, `alpha: f32 = 0.5`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternOpt {
    /// Its name.
    pub name: Ident,
    /// Its type (a scalar type), or `None` for `str`.
    pub ty: Option<Type>,
    /// Its default, if any (a call must set an option without one).
    pub default: Option<OptionValue>,
}

/// A loss definition.
#[derive(Clone, Debug, PartialEq)]
pub struct LossDef {
    /// Its name.
    pub name: Ident,
    /// Its inputs and hyperparameters, in order.
    pub params: Vec<Param>,
    /// `-> f32[N]`: the type of a per-sample loss value.
    pub result: Option<Type>,
    /// Its extra outputs (`-> (name: type, …)`).
    pub outputs: Vec<OutDecl>,
    /// Its body.
    pub body: Body,
}

/// An input (`s: f32[N, C]`) or a hyperparameter (`t: f32 = 1.0`).
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Its name.
    pub name: Ident,
    /// Its type.
    pub ty: Type,
    /// Where `nograd` is written, if it is.
    pub nograd: Option<Span>,
    /// `state[ids]`: the sample-id input whose rows this state input is gathered by.
    pub state: Option<Ident>,
    /// A hyperparameter's default (or a state input's initial value).
    pub default: Option<Expr>,
}

/// An extra output of a loss: `name: type`, optionally `updates state`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutDecl {
    /// Its name.
    pub name: Ident,
    /// Its type.
    pub ty: Type,
    /// `updates u`: the state input this output is written back to.
    pub updates: Option<Ident>,
}

/// Element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemTy {
    /// 32-bit float.
    F32,
    /// 64-bit float (computed in f32 by the f32 backends).
    F64,
    /// bfloat16 (the dtype of LLM logits): computed in f32, gradients rounded to bf16.
    Bf16,
    /// IEEE half precision: computed in f32, gradients rounded to f16.
    F16,
    /// Integer labels and indices.
    Idx,
}

impl ElemTy {
    /// The type's name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            ElemTy::F32 => "f32",
            ElemTy::F64 => "f64",
            ElemTy::Bf16 => "bf16",
            ElemTy::F16 => "f16",
            ElemTy::Idx => "idx",
        }
    }
}

/// A tensor type: element type, shape and (for labels) bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Type {
    /// The element type.
    pub elem: ElemTy,
    /// The shape, one dimension expression per axis.
    pub shape: Vec<DimExpr>,
    /// For labels: the bound every value lies below (`< C`).
    pub bound: Option<DimExpr>,
    /// For bounded labels: the one value outside the bound a label may also take (`ignore = 255`).
    pub ignore: Option<i64>,
    /// Where it is written.
    pub span: Span,
}

/// The kinds of dimension expression.
#[derive(Clone, Debug, PartialEq)]
pub enum DimExprKind {
    /// A literal size.
    Int(i64),
    /// A dimension symbol.
    Name(String),
    /// A sum.
    Add(Box<DimExpr>, Box<DimExpr>),
    /// A difference.
    Sub(Box<DimExpr>, Box<DimExpr>),
    /// A product.
    Mul(Box<DimExpr>, Box<DimExpr>),
}

/// A dimension expression (`N`, `2 * B`, `C - 1`).
#[derive(Clone, Debug, PartialEq)]
pub struct DimExpr {
    /// What it is.
    pub kind: DimExprKind,
    /// Where it is written.
    pub span: Span,
}

/// A body: statements, then the result expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Body {
    /// The `let` and `out` statements in order.
    pub stmts: Vec<Stmt>,
    /// The final expression.
    pub result: Expr,
    /// Where it is written, braces included.
    pub span: Span,
}

/// Whether a statement defines a tensor or an extra output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StmtKind {
    /// `let`: an intermediate tensor.
    Let,
    /// `out`: an extra output.
    Out,
    /// `let (a, b) = op(x, y; k = v)`: the outputs of an extern operation ([`Stmt::unpack`]).
    Unpack,
}

/// `let name[head] = value` or `out name[head] = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    /// `let` or `out`.
    pub kind: StmtKind,
    /// The tensor's name.
    pub name: Ident,
    /// Its indices, with optional ranges.
    pub head: Vec<Binder>,
    /// Its element's expression (for `Unpack`, the call `op(x, y)` without its options).
    pub value: Expr,
    /// Where it is written.
    pub span: Span,
    /// For `Unpack`: the names bound and the call.
    pub unpack: Option<Box<Unpack>>,
}

/// `let (a, b) = op(x, y; k = v)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Unpack {
    /// The names of the outputs, in the extern's output order.
    pub names: Vec<Ident>,
    /// The extern operation.
    pub func: Ident,
    /// The tensors passed, whole.
    pub args: Vec<Ident>,
    /// The options after `;`.
    pub options: Vec<OrderOption>,
}

/// An index bound by a let head or a reduction, with an optional explicit range.
#[derive(Clone, Debug, PartialEq)]
pub struct Binder {
    /// The index's name.
    pub name: Ident,
    /// Its range, where written (`i: N`).
    pub range: Option<DimExpr>,
}

/// The fewest operators an operator chain has to be kept flat as [`ExprKind::Chain`] (shorter chains are
/// left-associative [`ExprKind::Binary`] trees).
pub const CHAIN_MIN: usize = 32;

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%` (the remainder, with the divisor's sign)
    Rem,
    /// `^`
    Pow,
}

impl BinOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Pow => "^",
        }
    }
    /// The family of operators a flat chain may mix, by its operators' precedence: `+`/`-` and `*`/`/`
    /// reassociate (splitting at a `+` or `*`, negating or inverting what follows a `-` or `/`); `&&` and
    /// `||` are associative; comparisons, `%` and `^` never form a chain.
    pub fn chains(self) -> bool {
        matches!(
            self,
            BinOp::Or | BinOp::And | BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div
        )
    }
    /// Binding strength: a larger number binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 5,
            BinOp::Pow => 7,
        }
    }
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    /// `-`
    Neg,
    /// `!`
    Not,
}

/// Reductions over indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// `sum`
    Sum,
    /// `mean`
    Mean,
    /// `max`
    Max,
    /// `min`
    Min,
    /// `prod`
    Prod,
    /// `logsumexp`
    LogSumExp,
    /// `count` (of the indices where a condition holds)
    Count,
    /// `argmax`: the row-major flat position of the first maximum among the reduced indices (a NaN counts
    /// as the maximum, as in `torch.argmax`), or -1 when the set is empty. Autodiff makes them too.
    ArgMax,
    /// `argmin`: like `ArgMax`, for the first minimum.
    ArgMin,
}

impl ReduceOp {
    /// The reductions source code can write.
    pub const ALL: [ReduceOp; 9] = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Prod,
        ReduceOp::LogSumExp,
        ReduceOp::Count,
        ReduceOp::ArgMax,
        ReduceOp::ArgMin,
    ];
    /// The reduction's name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Prod => "prod",
            ReduceOp::LogSumExp => "logsumexp",
            ReduceOp::Count => "count",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }
    /// The reduction of a name, if source can write it.
    pub fn from_name(name: &str) -> Option<ReduceOp> {
        ReduceOp::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// The kinds of expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number literal; `is_int` when written without `.` or exponent.
    Number {
        /// Its value.
        value: f64,
        /// Whether it was written as an integer.
        is_int: bool,
    },
    /// `true` or `false`.
    Bool(bool),
    /// A name, with subscripts when written `name[a, b]`.
    Access {
        /// The name.
        name: Ident,
        /// The subscripts, where written.
        subscripts: Option<Vec<Expr>>,
    },
    /// A call of a `fn` or a primitive: `f(a, b)`.
    Call {
        /// The function's name.
        func: Ident,
        /// The arguments.
        args: Vec<Expr>,
    },
    /// `-e` or `!e`.
    Unary {
        /// The operator.
        op: UnOp,
        /// The operand.
        arg: Box<Expr>,
    },
    /// `a op b`.
    Binary {
        /// The operator.
        op: BinOp,
        /// The left operand.
        lhs: Box<Expr>,
        /// The right operand.
        rhs: Box<Expr>,
    },
    /// A long operator chain `t0 op1 t1 op2 t2 …` of one family (more than [`CHAIN_MIN`] operators, all
    /// `+`/`-`, all `*`/`/`, all `&&` or all `||`), kept flat so that no walk recurses through its length
    /// (chains of 100,000 terms). It means the left-associative chain; the checker evaluates it as a
    /// balanced tree of the same terms and signs.
    Chain {
        /// The first term.
        first: Box<Expr>,
        /// Each further operator and term.
        rest: Vec<(BinOp, Expr)>,
    },
    /// An Iverson bracket `[cond]`: 1 where the condition holds, else 0.
    Iverson(Box<Expr>),
    /// `if c then a else b`.
    If {
        /// The condition.
        cond: Box<Expr>,
        /// The value where it holds.
        then: Box<Expr>,
        /// The value elsewhere.
        otherwise: Box<Expr>,
    },
    /// A reduction `op[binders | mask] body`.
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// The indices it reduces over.
        binders: Vec<Binder>,
        /// The condition that selects the points reduced, if any.
        mask: Option<Box<Expr>>,
        /// What is reduced.
        body: Box<Expr>,
    },
    /// `(e)`, kept so the formatter can keep the parentheses written.
    Paren(Box<Expr>),
    /// An ordering form: `topk[j | m](e; k = K)[u]`, `argsort[j](e)[u]`, `sortnet[k](e; …)[i, j]`.
    Order {
        /// Which ordering form.
        op: OrderOp,
        /// The indices it orders over (one for `sortnet`; topk and argsort take several: pairs, in
        /// row-major order).
        binders: Vec<Binder>,
        /// The condition that selects the points ordered, if any.
        mask: Option<Box<Expr>>,
        /// The values ordered.
        body: Box<Expr>,
        /// Its options after `;`.
        options: Vec<OrderOption>,
        /// The subscripts of its result.
        subscripts: Vec<Expr>,
    },
}

/// Which ordering form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderOp {
    /// `topk`
    TopK,
    /// `argsort`
    ArgSort,
    /// `sortnet`
    SortNet,
}

impl OrderOp {
    /// The form's name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderOp::TopK => "topk",
            OrderOp::ArgSort => "argsort",
            OrderOp::SortNet => "sortnet",
        }
    }
    /// The form of a name.
    pub fn from_name(name: &str) -> Option<OrderOp> {
        [OrderOp::TopK, OrderOp::ArgSort, OrderOp::SortNet]
            .into_iter()
            .find(|o| o.as_str() == name)
    }
}

/// `name = value` after the `;` of an ordering form.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderOption {
    /// The option's name.
    pub name: Ident,
    /// Its value.
    pub value: OptionValue,
}

/// The value of an ordering form's option.
#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    /// A string literal (without its quotes) and its span.
    Str(String, Span),
    /// An expression.
    Expr(Expr),
}

impl OptionValue {
    /// Where it is written.
    pub fn span(&self) -> Span {
        match self {
            OptionValue::Str(_, s) => *s,
            OptionValue::Expr(e) => e.span,
        }
    }
}

/// An expression with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is written.
    pub span: Span,
}

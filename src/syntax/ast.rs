//! The spanned abstract syntax tree: exactly what the text says, before any name is resolved.
//!
//! Invariant: every node carries the span of the text it came from; trees are at most
//! [`super::MAX_DEPTH`] deep, so every recursive walk over them is bounded.

use crate::diag::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub doc: String,
    pub kind: ItemKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ItemKind {
    /// `use std::a::b` (the path after `std`); `glob` for `use std::a::*`.
    Use {
        path: Vec<Ident>,
        glob: bool,
    },
    Const {
        name: Ident,
        value: Expr,
    },
    Fn(FnDef),
    Loss(LossDef),
}

impl Item {
    /// The name an item defines (none for `use`).
    pub fn name(&self) -> Option<&Ident> {
        match &self.kind {
            ItemKind::Use { .. } => None,
            ItemKind::Const { name, .. } => Some(name),
            ItemKind::Fn(f) => Some(&f.name),
            ItemKind::Loss(l) => Some(&l.name),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: Option<Type>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LossDef {
    pub name: Ident,
    pub params: Vec<Param>,
    /// `-> f32[N]`: the type of a per-sample loss value.
    pub result: Option<Type>,
    pub outputs: Vec<OutDecl>,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub ty: Type,
    pub nograd: Option<Span>,
    /// `state[ids]`: the sample-id input whose rows this state input is gathered by.
    pub state: Option<Ident>,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutDecl {
    pub name: Ident,
    pub ty: Type,
    /// `updates u`: the state input this output is written back to.
    pub updates: Option<Ident>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemTy {
    F32,
    F64,
    /// bfloat16 (the dtype of LLM logits): computed in f32, gradients rounded to bf16.
    Bf16,
    /// IEEE half precision: computed in f32, gradients rounded to f16.
    F16,
    Idx,
}

impl ElemTy {
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

#[derive(Clone, Debug, PartialEq)]
pub struct Type {
    pub elem: ElemTy,
    pub shape: Vec<DimExpr>,
    pub bound: Option<DimExpr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DimExprKind {
    Int(i64),
    Name(String),
    Add(Box<DimExpr>, Box<DimExpr>),
    Sub(Box<DimExpr>, Box<DimExpr>),
    Mul(Box<DimExpr>, Box<DimExpr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct DimExpr {
    pub kind: DimExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Body {
    pub stmts: Vec<Stmt>,
    pub result: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StmtKind {
    Let,
    Out,
}

/// `let name[head] = value` or `out name[head] = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub name: Ident,
    pub head: Vec<Binder>,
    pub value: Expr,
    pub span: Span,
}

/// An index bound by a let head or a reduction, with an optional explicit range.
#[derive(Clone, Debug, PartialEq)]
pub struct Binder {
    pub name: Ident,
    pub range: Option<DimExpr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl BinOp {
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
            BinOp::Pow => "^",
        }
    }
    /// Binding strength: a larger number binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div => 5,
            BinOp::Pow => 7,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    LogSumExp,
    Count,
    /// Internal (made by autodiff, not written in source): the row-major flat position of the first
    /// maximum among the reduced indices, or -1 when the set is empty.
    ArgMax,
    /// Internal: like `ArgMax`, for the first minimum.
    ArgMin,
}

impl ReduceOp {
    /// The reductions source code can write.
    pub const ALL: [ReduceOp; 7] = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Prod,
        ReduceOp::LogSumExp,
        ReduceOp::Count,
    ];
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
    pub fn from_name(name: &str) -> Option<ReduceOp> {
        ReduceOp::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number literal; `is_int` when written without `.` or exponent.
    Number {
        value: f64,
        is_int: bool,
    },
    Bool(bool),
    /// A name, with subscripts when written `name[a, b]`.
    Access {
        name: Ident,
        subscripts: Option<Vec<Expr>>,
    },
    Call {
        func: Ident,
        args: Vec<Expr>,
    },
    Unary {
        op: UnOp,
        arg: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Iverson(Box<Expr>),
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    Reduce {
        op: ReduceOp,
        binders: Vec<Binder>,
        mask: Option<Box<Expr>>,
        body: Box<Expr>,
    },
    Paren(Box<Expr>),
    /// An ordering form: `topk[j | m](e; k = K)[u]`, `argsort[j](e)[u]`, `sortnet[k](e; …)[i, j]`.
    Order {
        op: OrderOp,
        binder: Binder,
        mask: Option<Box<Expr>>,
        body: Box<Expr>,
        options: Vec<OrderOption>,
        subscripts: Vec<Expr>,
    },
}

/// Which ordering form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderOp {
    TopK,
    ArgSort,
    SortNet,
}

impl OrderOp {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderOp::TopK => "topk",
            OrderOp::ArgSort => "argsort",
            OrderOp::SortNet => "sortnet",
        }
    }
    pub fn from_name(name: &str) -> Option<OrderOp> {
        [OrderOp::TopK, OrderOp::ArgSort, OrderOp::SortNet]
            .into_iter()
            .find(|o| o.as_str() == name)
    }
}

/// `name = value` after the `;` of an ordering form.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderOption {
    pub name: Ident,
    pub value: OptionValue,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    /// A string literal (without its quotes) and its span.
    Str(String, Span),
    Expr(Expr),
}

impl OptionValue {
    pub fn span(&self) -> Span {
        match self {
            OptionValue::Str(_, s) => *s,
            OptionValue::Expr(e) => e.span,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

//! The primitive table: every elementwise operation of the IR, declared once.
//!
//! A primitive's surface name, arity, type rule ([`Prim::sig`]) and f64 semantics ([`Prim::eval`]) are all
//! found from [`Prim`]; each is an exhaustive `match`, so adding a variant to the `prims!` list makes the
//! compiler point at every rule still missing. Reductions are not primitives: they bind indices and live
//! in the IR as [`crate::ir::Expr::Reduce`].

use crate::diag::Span;
use crate::ir::{Function, NodeId, Scalar, TooDeep, Value};

macro_rules! prims {
    ($($variant:ident $name:literal $surface:expr;)*) => {
        /// An elementwise primitive.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Prim { $(#[doc = concat!("`", $name, "`")] $variant,)* }
        impl Prim {
            /// Every primitive, in table order (tests iterate this).
            pub const ALL: &'static [Prim] = &[$(Prim::$variant,)*];
            /// The name the IR printer uses.
            pub fn name(self) -> &'static str {
                match self { $(Prim::$variant => $name,)* }
            }
            /// The builtin function name lx source calls it by, if it is callable by name.
            pub fn surface(self) -> Option<&'static str> {
                match self { $(Prim::$variant => $surface,)* }
            }
        }
    };
}

prims! {
    Add "add" None;
    Sub "sub" None;
    Mul "mul" None;
    Div "div" None;
    Rem "rem" None;
    Neg "neg" None;
    Pow "pow" Some("pow");
    Min "min" Some("min");
    Max "max" Some("max");
    Abs "abs" Some("abs");
    Sign "sign" Some("sign");
    Exp "exp" Some("exp");
    Log "log" Some("log");
    Log1p "log1p" Some("log1p");
    Expm1 "expm1" Some("expm1");
    Sqrt "sqrt" Some("sqrt");
    Sigmoid "sigmoid" Some("sigmoid");
    Softplus "softplus" Some("softplus");
    Tanh "tanh" Some("tanh");
    Relu "relu" Some("relu");
    Atan "atan" Some("atan");
    Cos "cos" Some("cos");
    Sin "sin" Some("sin");
    Acos "acos" Some("acos");
    Floor "floor" Some("floor");
    Ceil "ceil" Some("ceil");
    Round "round" Some("round");
    Clamp "clamp" Some("clamp");
    Eq "eq" None;
    Ne "ne" None;
    Lt "lt" None;
    Le "le" None;
    Gt "gt" None;
    Ge "ge" None;
    And "and" None;
    Or "or" None;
    Not "not" None;
    Select "select" Some("select");
    Iverson "iverson" None;
    ToFloat "float" None;
    StopGrad "stopgrad" Some("stopgrad");
    Mix "mix" None;
    Draw "draw" None;
}

/// The most operands a primitive takes (`Draw`).
pub const MAX_ARITY: usize = 6;

/// How a primitive bends as a function of one float argument (`lossc analyze` composes these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bend {
    /// Convex.
    Convex,
    /// Concave.
    Concave,
    /// Neither, in general.
    Neither,
}

/// A unary primitive's shape: how it bends, whether it never decreases, and the range of its values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// Its curvature.
    pub bend: Bend,
    /// Nondecreasing in its argument.
    pub increasing: bool,
    /// The least value it takes (or approaches).
    pub lo: f64,
    /// The greatest.
    pub hi: f64,
}

impl Prim {
    /// The shape of a primitive that is a function of one float, or `None` for the others (arithmetic,
    /// comparisons, logic, selection, conversions, and `min`/`max`/`pow`/`clamp`, whose rules take more
    /// than one argument).
    pub fn shape(self) -> Option<Shape> {
        use Bend::*;
        use Prim::*;
        let inf = f64::INFINITY;
        let shape = |bend, increasing, lo, hi| {
            Some(Shape {
                bend,
                increasing,
                lo,
                hi,
            })
        };
        match self {
            Exp => shape(Convex, true, 0.0, inf),
            Expm1 => shape(Convex, true, -1.0, inf),
            Log | Log1p => shape(Concave, true, -inf, inf),
            Sqrt => shape(Concave, true, 0.0, inf),
            Softplus | Relu => shape(Convex, true, 0.0, inf),
            Abs => shape(Convex, false, 0.0, inf),
            Sigmoid => shape(Neither, true, 0.0, 1.0),
            Tanh | Sign => shape(Neither, true, -1.0, 1.0),
            Atan => shape(Neither, true, -std::f64::consts::FRAC_PI_2, std::f64::consts::FRAC_PI_2),
            Cos | Sin => shape(Neither, false, -1.0, 1.0),
            // Defined on [-1, 1]: decreasing, concave below 0 and convex above.
            Acos => shape(Neither, false, 0.0, std::f64::consts::PI),
            // Integer results, or more than one argument.
            Floor | Ceil | Round | Rem | Mix | Draw => None,
            Add | Sub | Mul | Div | Neg | Pow | Min | Max | Clamp | Eq | Ne | Lt | Le | Gt | Ge | And | Or | Not
            | Select | Iverson | ToFloat | StopGrad => None,
        }
    }
}

/// A primitive's cost class, cheapest first ([`Prim::cost`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cost {
    /// Addition, subtraction, negation, comparisons and the bracket of a comparison.
    Trivial,
    /// Multiplication, division, remainder, selection, conversions, stopgrad.
    Arithmetic,
    /// `relu`, `min`, `max`, `abs`.
    Piecewise,
    /// `sign`, `clamp` and logic.
    Other,
    /// Transcendental functions, `sqrt` and `pow`.
    Costly,
}

/// The type rule family of a primitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    /// `n` numbers, promoted to float; a float result.
    Float(usize),
    /// `n` numbers; an integer result when all are integers, else float (promoting).
    Numeric(usize),
    /// Two numbers (promoted alike); a condition.
    Compare,
    /// `n` conditions; a condition.
    Logic(usize),
    /// A condition and two branches of one kind (numbers promote).
    Select,
    /// A condition; the float 1 or 0.
    Iverson,
    /// An integer; the same value as a float.
    ToFloat,
    /// A number; an integer (a float rounded to one, saturating; an integer as it is).
    ToInt,
    /// `n` integers; an integer.
    Int(usize),
    /// Six integers (a key, four counter words, which word); a float.
    Draw,
}

impl Sig {
    /// How many operands it takes.
    pub fn arity(self) -> usize {
        match self {
            Sig::Float(n) | Sig::Numeric(n) | Sig::Logic(n) => n,
            Sig::Compare => 2,
            Sig::Select => 3,
            Sig::Iverson | Sig::ToFloat | Sig::ToInt => 1,
            Sig::Int(n) => n,
            Sig::Draw => 6,
        }
    }
}

impl Prim {
    /// Looks a builtin up by the name source code calls it by.
    pub fn from_surface(name: &str) -> Option<Prim> {
        Prim::ALL.iter().copied().find(|p| p.surface() == Some(name))
    }

    /// Its cost class: what the optimizer and the JIT recompute, unroll or store is decided from it.
    pub fn cost(self) -> Cost {
        use Prim::*;
        match self {
            Add | Sub | Neg | Iverson | Eq | Ne | Lt | Le | Gt | Ge => Cost::Trivial,
            Mul | Div | Rem | ToFloat | Floor | Ceil | Round | Select | StopGrad => Cost::Arithmetic,
            Relu | Min | Max | Abs => Cost::Piecewise,
            Sign | Clamp | And | Or | Not | Mix => Cost::Other,
            Draw => Cost::Costly,
            Exp | Log | Log1p | Expm1 | Sigmoid | Softplus | Tanh | Atan | Cos | Sin | Acos | Sqrt | Pow => {
                Cost::Costly
            }
        }
    }

    /// Whether computing it costs far more than reading a stored value (a transcendental function, or a
    /// square root): the optimizer stores such values rather than computing them twice.
    pub fn costly(self) -> bool {
        self.cost() == Cost::Costly
    }

    /// A function of one float whose derivative is positive wherever it is defined (`lossc analyze`'s
    /// calibration rule composes these).
    pub fn strictly_increasing(self) -> bool {
        use Prim::*;
        matches!(
            self,
            Exp | Expm1 | Log | Log1p | Sqrt | Sigmoid | Softplus | Tanh | Atan
        )
    }

    /// Differentiable wherever it is defined: no kink (not `abs`, `relu`, `max`, `min`, `clamp`, `sqrt` at
    /// 0, a `select` on data, rounding). `pow` is, with a constant exponent of at least 1 (its caller checks).
    pub fn smooth(self) -> bool {
        use Prim::*;
        matches!(
            self,
            Add | Sub | Mul | Div | Neg | Exp | Expm1 | Log | Log1p | Sigmoid | Softplus | Tanh | Atan | ToFloat
        )
    }

    /// Its type signature.
    pub fn sig(self) -> Sig {
        use Prim::*;
        match self {
            Add | Sub | Mul | Min | Max | Rem => Sig::Numeric(2),
            Neg | Abs | Sign => Sig::Numeric(1),
            Div | Pow => Sig::Float(2),
            Exp | Log | Log1p | Expm1 | Sqrt | Sigmoid | Softplus | Tanh | Relu | Atan | Cos | Sin | Acos
            | StopGrad => Sig::Float(1),
            Floor | Ceil | Round => Sig::ToInt,
            Mix => Sig::Int(2),
            Draw => Sig::Draw,
            Clamp => Sig::Float(3),
            Eq | Ne | Lt | Le | Gt | Ge => Sig::Compare,
            And | Or => Sig::Logic(2),
            Not => Sig::Logic(1),
            Select => Sig::Select,
            Iverson => Sig::Iverson,
            ToFloat => Sig::ToFloat,
        }
    }

    /// The result kind for well-typed (already promoted) operands.
    pub fn result(self, args: &[Scalar]) -> Scalar {
        match self.sig() {
            Sig::Float(_) | Sig::Iverson | Sig::ToFloat => Scalar::Float,
            Sig::ToInt | Sig::Int(_) => Scalar::Int,
            Sig::Draw => Scalar::Float,
            Sig::Numeric(_) => {
                if args.iter().all(|a| *a == Scalar::Int) {
                    Scalar::Int
                } else {
                    Scalar::Float
                }
            }
            Sig::Compare | Sig::Logic(_) => Scalar::Bool,
            Sig::Select => args[1],
        }
    }

    /// The f64 reference semantics. Operands are already of the kinds [`Prim::sig`] asks for.
    pub fn eval(self, a: &[Value]) -> Value {
        use Prim::*;
        use Value::{B, F, I};
        let f = |k: usize| a[k].as_f64();
        match self {
            Add | Sub | Mul | Min | Max | Rem => match (a[0], a[1]) {
                (I(x), I(y)) => I(match self {
                    Add => x.wrapping_add(y),
                    Sub => x.wrapping_sub(y),
                    Mul => x.wrapping_mul(y),
                    Min => x.min(y),
                    Rem => rem_int(x, y),
                    _ => x.max(y),
                }),
                _ => {
                    let (x, y) = (f(0), f(1));
                    F(match self {
                        Add => x + y,
                        Sub => x - y,
                        Mul => x * y,
                        Min => nan_or(x, y, x.min(y)),
                        Rem => x - y * (x / y).floor(),
                        _ => nan_or(x, y, x.max(y)),
                    })
                }
            },
            Neg | Abs | Sign => match a[0] {
                I(x) => I(match self {
                    Neg => x.wrapping_neg(),
                    Abs => x.wrapping_abs(),
                    _ => x.signum(),
                }),
                _ => {
                    let x = f(0);
                    F(match self {
                        Neg => -x,
                        Abs => x.abs(),
                        _ => sign(x),
                    })
                }
            },
            Div => F(f(0) / f(1)),
            Pow => F(f(0).powf(f(1))),
            Exp => F(f(0).exp()),
            Log => F(f(0).ln()),
            Log1p => F(f(0).ln_1p()),
            Expm1 => F(f(0).exp_m1()),
            Sqrt => F(f(0).sqrt()),
            Sigmoid => F(sigmoid(f(0))),
            Softplus => F(softplus(f(0))),
            Tanh => F(f(0).tanh()),
            Relu => F(if f(0) > 0.0 || f(0).is_nan() { f(0) } else { 0.0 }),
            Atan => F(f(0).atan()),
            Cos => F(f(0).cos()),
            Sin => F(f(0).sin()),
            Acos => F(f(0).acos()),
            Floor | Ceil | Round => match a[0] {
                I(x) => I(x),
                _ => I(to_int(match self {
                    Floor => f(0).floor(),
                    Ceil => f(0).ceil(),
                    _ => f(0).round_ties_even(),
                })),
            },
            Clamp => F(nan_or(f(0), f(0), f(0).max(f(1)).min(f(2)))),
            Eq => B(cmp(a, |o| o.is_eq())),
            Ne => B(!cmp(a, |o| o.is_eq()) || a.iter().any(|v| v.as_f64().is_nan())),
            Lt => B(cmp(a, |o| o.is_lt())),
            Le => B(cmp(a, |o| o.is_le())),
            Gt => B(cmp(a, |o| o.is_gt())),
            Ge => B(cmp(a, |o| o.is_ge())),
            And => B(a[0].as_bool() && a[1].as_bool()),
            Or => B(a[0].as_bool() || a[1].as_bool()),
            Not => B(!a[0].as_bool()),
            Select => {
                if a[0].as_bool() {
                    a[1]
                } else {
                    a[2]
                }
            }
            Iverson => F(if a[0].as_bool() { 1.0 } else { 0.0 }),
            ToFloat => F(f(0)),
            StopGrad => F(f(0)),
            Mix => I(mix(a[0].as_i64(), a[1].as_i64())),
            Draw => {
                let w = |k: usize| a[k].as_i64();
                F(uniform(philox(w(0), [w(1), w(2), w(3), w(4)])[(w(5) & 3) as usize]))
            }
        }
    }
}

/// The key of a stream of random draws from two integers (a seed and a draw counter, then that and a
/// stream number): SplitMix64's finalizer of `a` xor the finalizer of `b`, wrapping.
pub fn mix(a: i64, b: i64) -> i64 {
    fn splitmix(z: u64) -> u64 {
        let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(a as u64 ^ splitmix(b as u64)) as i64
}

/// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): four 32-bit
/// words from a 64-bit key and a 128-bit counter (the low 32 bits of each counter word), the generator of
/// `rand` / `randn`. Every backend computes these exact words.
pub fn philox(key: i64, counter: [i64; 4]) -> [u32; 4] {
    let (mut k0, mut k1) = (key as u32, (key as u64 >> 32) as u32);
    let mut c = counter.map(|w| w as u32);
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(0x9E37_79B9);
            k1 = k1.wrapping_add(0xBB67_AE85);
        }
        let p0 = u64::from(0xD251_1F53u32) * u64::from(c[0]);
        let p1 = u64::from(0xCD9E_8D57u32) * u64::from(c[2]);
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k0,
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k1,
            p0 as u32,
        ];
    }
    c
}

/// A uniform float in (0, 1] from a 32-bit word: its top 24 bits plus one, times 2^-24 (exact in f32, so
/// every backend draws the same value).
pub fn uniform(w: u32) -> f64 {
    f64::from((w >> 8) + 1) * (1.0 / 16_777_216.0)
}

/// `x % y` of integers as Python computes it: the remainder takes the divisor's sign (`-1 % 3` is 2), so
/// a cyclic slot `(t - E) % (E + 1)` is never negative; `x % 0` is `x` (nothing is taken away).
pub fn rem_int(x: i64, y: i64) -> i64 {
    if y == 0 {
        return x;
    }
    let r = x.wrapping_rem(y);
    if r != 0 && (r < 0) != (y < 0) { r + y } else { r }
}

/// A float rounded to an integer as an index: saturating at the ends of i64, NaN to 0 (what a float to
/// integer conversion does in every backend).
pub fn to_int(x: f64) -> i64 {
    x as i64
}

fn nan_or(x: f64, y: f64, v: f64) -> f64 {
    if x.is_nan() || y.is_nan() { f64::NAN } else { v }
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x * 0.0
    }
}

fn cmp(a: &[Value], pred: impl Fn(std::cmp::Ordering) -> bool) -> bool {
    match (a[0], a[1]) {
        (Value::I(x), Value::I(y)) => pred(x.cmp(&y)),
        _ => a[0].as_f64().partial_cmp(&a[1].as_f64()).is_some_and(pred),
    }
}

/// `1 / (1 + e^-x)` without overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + e^x)` without overflow for large x.
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The partial derivative of a primitive's result with respect to one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partial {
    /// No dependence (or no gradient by definition: comparisons, `stopgrad`, integer operations).
    Zero,
    /// The partial is 1 (the adjoint passes as it is).
    One,
    /// The partial is -1.
    NegOne,
    /// The partial as an IR node.
    Node(NodeId),
    /// 1 where this condition holds (the operand a choice takes: a `select` branch, the chosen side of a
    /// `min`/`max`/`clamp`): the adjoint passes through under the condition, and the operand's own partials
    /// are evaluated only there.
    Guard(NodeId),
}

impl Prim {
    /// Builds the partials of `out = self(args)` in `f`, one per operand.
    ///
    /// Subgradients at kinks, as in PyTorch: `relu'(0) = 0`, `abs'(0) = 0`, `max(a, b)` sends the gradient to
    /// `a` on a tie (`min` likewise), `clamp` passes it through on the closed interval.
    pub fn partials(self, f: &mut Function, args: &[NodeId], out: NodeId, span: Span) -> Result<Vec<Partial>, TooDeep> {
        use Partial::{NegOne, Node, One, Zero};
        use Prim::*;
        let a = args.first().copied().unwrap_or(out);
        Ok(match self {
            Add => vec![One, One],
            Sub => vec![One, NegOne],
            Neg => vec![NegOne],
            Mul => vec![Node(args[1]), Node(args[0])],
            Div => {
                let one = f.float(1.0, span)?;
                let inv = f_prim(f, Div, &[one, args[1]], span)?;
                let q = f_prim(f, Div, &[out, args[1]], span)?;
                let nq = f_prim(f, Neg, &[q], span)?;
                vec![Node(inv), Node(nq)]
            }
            Pow => {
                let one = f.float(1.0, span)?;
                let bm1 = f_prim(f, Sub, &[args[1], one], span)?;
                let pw = f_prim(f, Pow, &[args[0], bm1], span)?;
                let da = f_prim(f, Mul, &[args[1], pw], span)?;
                let la = f_prim(f, Log, &[args[0]], span)?;
                let db = f_prim(f, Mul, &[out, la], span)?;
                vec![Node(da), Node(db)]
            }
            // A choice: the adjoint goes to the chosen operand under the condition (selected, not multiplied
            // by 0 or 1, so an operand whose own partials are infinite where it is not chosen, `-log(q)` at
            // q = 0 in `min(-log(q), 100)`, contributes 0 rather than 0 · ∞).
            Max | Min => {
                let (first, second) = if self == Max { (Ge, Lt) } else { (Le, Gt) };
                let c1 = f_prim(f, first, args, span)?;
                let c2 = f_prim(f, second, args, span)?;
                vec![Partial::Guard(c1), Partial::Guard(c2)]
            }
            Abs => vec![Node(f_prim(f, Sign, &[a], span)?)],
            Exp => vec![Node(out)],
            Log => {
                let one = f.float(1.0, span)?;
                vec![Node(f_prim(f, Div, &[one, a], span)?)]
            }
            Log1p => {
                let one = f.float(1.0, span)?;
                let d = f_prim(f, Add, &[one, a], span)?;
                vec![Node(f_prim(f, Div, &[one, d], span)?)]
            }
            Expm1 => vec![Node(f_prim(f, Exp, &[a], span)?)],
            Sqrt => {
                let half = f.float(0.5, span)?;
                vec![Node(f_prim(f, Div, &[half, out], span)?)]
            }
            Sigmoid => {
                let one = f.float(1.0, span)?;
                let c = f_prim(f, Sub, &[one, out], span)?;
                vec![Node(f_prim(f, Mul, &[out, c], span)?)]
            }
            Softplus => vec![Node(f_prim(f, Sigmoid, &[a], span)?)],
            Tanh => {
                let one = f.float(1.0, span)?;
                let sq = f_prim(f, Mul, &[out, out], span)?;
                vec![Node(f_prim(f, Sub, &[one, sq], span)?)]
            }
            Relu => {
                let zero = f.float(0.0, span)?;
                let c = f_prim(f, Gt, &[a, zero], span)?;
                vec![Node(f_prim(f, Iverson, &[c], span)?)]
            }
            Atan => {
                let one = f.float(1.0, span)?;
                let sq = f_prim(f, Mul, &[a, a], span)?;
                let d = f_prim(f, Add, &[one, sq], span)?;
                vec![Node(f_prim(f, Div, &[one, d], span)?)]
            }
            Cos => {
                let s = f_prim(f, Sin, &[a], span)?;
                vec![Node(f_prim(f, Neg, &[s], span)?)]
            }
            Sin => vec![Node(f_prim(f, Cos, &[a], span)?)],
            // -1 / sqrt(1 - x²): infinite at ±1, as in PyTorch.
            Acos => {
                let one = f.float(1.0, span)?;
                let sq = f_prim(f, Mul, &[a, a], span)?;
                let d = f_prim(f, Sub, &[one, sq], span)?;
                let r = f_prim(f, Sqrt, &[d], span)?;
                let minus = f.float(-1.0, span)?;
                vec![Node(f_prim(f, Div, &[minus, r], span)?)]
            }
            // x - y·floor(x / y): 1 for x, -floor(x / y) for y (integer remainders have no gradient).
            Rem => {
                let q = f_prim(f, Div, &[args[0], args[1]], span)?;
                let fl = f_prim(f, Floor, &[q], span)?;
                let fl = f_prim(f, ToFloat, &[fl], span)?;
                vec![One, Node(f_prim(f, Neg, &[fl], span)?)]
            }
            Clamp => {
                let (x, lo, hi) = (args[0], args[1], args[2]);
                let ge = f_prim(f, Ge, &[x, lo], span)?;
                let le = f_prim(f, Le, &[x, hi], span)?;
                let inside = f_prim(f, And, &[ge, le], span)?;
                let below = f_prim(f, Lt, &[x, lo], span)?;
                let above = f_prim(f, Gt, &[x, hi], span)?;
                vec![Partial::Guard(inside), Partial::Guard(below), Partial::Guard(above)]
            }
            Select => {
                let c = args[0];
                let nc = f_prim(f, Not, &[c], span)?;
                vec![Zero, Partial::Guard(c), Partial::Guard(nc)]
            }
            Sign | StopGrad | Eq | Ne | Lt | Le | Gt | Ge | And | Or | Not | Iverson | ToFloat | Floor | Ceil
            | Round | Mix | Draw => {
                vec![Zero; self.sig().arity()]
            }
        })
    }
}

fn f_prim(f: &mut Function, prim: Prim, args: &[NodeId], span: Span) -> Result<NodeId, TooDeep> {
    f.prim(prim, args, span)
}

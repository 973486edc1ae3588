//! Tensors at the boundary: what callers pass in and get out, and the file formats (.npy, .safetensors).
//!
//! Floats are held as f64 and labels as i64 whatever the file's dtype; the file's dtype is remembered so
//! errors can name it.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The element type a tensor arrived with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// bfloat16 (8 exponent bits, 7 mantissa bits).
    BF16,
    /// IEEE half precision.
    F16,
}

impl DType {
    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::BF16 | DType::F16)
    }

    /// The half-precision type of an input declared `bf16` or `f16`.
    pub fn half_of(elem: crate::ir::ElemTy) -> Option<DType> {
        match elem {
            crate::ir::ElemTy::Bf16 => Some(DType::BF16),
            crate::ir::ElemTy::F16 => Some(DType::F16),
            _ => None,
        }
    }

    /// `x` rounded to this type (to nearest, ties to even; floats only, others unchanged).
    pub fn round(self, x: f64) -> f64 {
        match self {
            DType::F32 => x as f32 as f64,
            DType::BF16 => half::bf16::from_f64(x).to_f64(),
            DType::F16 => half::f16::from_f64(x).to_f64(),
            _ => x,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
        })
    }
}

/// Element storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Float elements, held as f64.
    Float(Vec<f64>),
    /// Integer elements (labels), held as i64.
    Int(Vec<i64>),
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The shape, row-major.
    pub shape: Vec<usize>,
    /// The elements.
    pub data: Data,
    /// The element type it arrived with (or was made with).
    pub dtype: DType,
}

impl Tensor {
    /// A float64 tensor of this shape (the data holds the product of the shape's elements).
    pub fn float(shape: Vec<usize>, data: Vec<f64>) -> Tensor {
        Tensor {
            shape,
            data: Data::Float(data),
            dtype: DType::F64,
        }
    }
    /// The gradient of an input declared with element type `elem`: float64 values, or for `bf16` / `f16`
    /// inputs the values rounded to that type (and marked so), as the gradient is written in the
    /// input's dtype.
    pub fn gradient(shape: Vec<usize>, data: Vec<f64>, elem: crate::ir::ElemTy) -> Tensor {
        match DType::half_of(elem) {
            Some(half) => Tensor {
                shape,
                data: Data::Float(data.into_iter().map(|x| half.round(x)).collect()),
                dtype: half,
            },
            None => Tensor::float(shape, data),
        }
    }
    /// An int64 label tensor of this shape.
    pub fn labels(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        Tensor {
            shape,
            data: Data::Int(data),
            dtype: DType::I64,
        }
    }
    /// A rank-0 float64 tensor.
    pub fn scalar(x: f64) -> Tensor {
        Tensor::float(vec![], vec![x])
    }
    /// The number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::Float(v) => v.len(),
            Data::Int(v) => v.len(),
        }
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The elements as f64 (labels converted).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::Float(v) => v.clone(),
            Data::Int(v) => v.iter().map(|x| *x as f64).collect(),
        }
    }
}

/// Reading or writing a tensor file failed. (Each variant's fields are what its message names.)
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be read.
    #[allow(missing_docs)]
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file could not be written.
    #[allow(missing_docs)]
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    /// A malformed .npy file.
    #[allow(missing_docs)]
    #[error("{path} is not a valid .npy file: {reason}")]
    BadNpy { path: PathBuf, reason: String },
    /// A .npy file of an element type lossc does not read.
    #[allow(missing_docs)]
    #[error("{path} holds dtype {dtype}; lossc reads float32, float64, int32 and int64")]
    UnsupportedDtype { path: PathBuf, dtype: String },
    /// A malformed .safetensors file.
    #[allow(missing_docs)]
    #[error("{path} is not a valid .safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    /// A .safetensors file without the tensor asked for.
    #[allow(missing_docs)]
    #[error("{path} has no tensor `{name}` (it has: {available})")]
    NoSuchTensor {
        path: PathBuf,
        name: String,
        available: String,
    },
    /// A .safetensors path without `:TENSOR`.
    #[allow(missing_docs)]
    #[error("{path}: name the tensor inside a .safetensors file as PATH:TENSOR")]
    SafetensorsNeedsName { path: PathBuf },
    /// A file that is neither .npy nor .safetensors.
    #[allow(missing_docs)]
    #[error("{path}: unknown file type (expected .npy or .safetensors)")]
    UnknownFormat { path: PathBuf },
}

/// Loads `PATH` (.npy) or `PATH:TENSOR` (.safetensors).
pub fn load(spec: &str) -> Result<Tensor, DataError> {
    if let Some((file, name)) = spec.rsplit_once(':')
        && file.ends_with(".safetensors")
    {
        return load_safetensors(Path::new(file), name);
    }
    let path = Path::new(spec);
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => load_npy(path),
        Some("safetensors") => Err(DataError::SafetensorsNeedsName { path: path.into() }),
        _ => Err(DataError::UnknownFormat { path: path.into() }),
    }
}

/// Reads a .npy file (C order; float32/float64/int32/int64, either endianness).
pub fn load_npy(path: &Path) -> Result<Tensor, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Read {
        path: path.into(),
        source,
    })?;
    parse_npy(&bytes).map_err(|e| match e {
        NpyProblem::Bad(reason) => DataError::BadNpy {
            path: path.into(),
            reason,
        },
        NpyProblem::Dtype(dtype) => DataError::UnsupportedDtype {
            path: path.into(),
            dtype,
        },
    })
}

enum NpyProblem {
    Bad(String),
    Dtype(String),
}

/// The preamble of a .npy file, checked before the reader sees it: the magic, a known version, and a header
/// no longer than the file (the reader allocates the length a header claims before reading it). Returns
/// where the header starts and how long it is.
fn check_preamble(bytes: &[u8]) -> Result<(usize, usize), NpyProblem> {
    let bad = |s: String| NpyProblem::Bad(s);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (it does not start with \\x93NUMPY)".into()));
    }
    let (length, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        2 | 3 => return Err(bad("the file ends inside its preamble".into())),
        v => return Err(bad(format!("unsupported .npy format version {v}"))),
    };
    if length > bytes.len() - start {
        return Err(bad(format!(
            "the header claims {length} bytes, but only {} follow the preamble",
            bytes.len() - start
        )));
    }
    Ok((start, length))
}

/// A header that is not what a .npy header holds, quoted (the reader's own message quotes its parser).
fn not_a_header(header: &str) -> NpyProblem {
    let shown: String = header.trim_end_matches(['\n', ' ', '\0']).chars().take(160).collect();
    NpyProblem::Bad(format!(
        "its header is not the Python dictionary of 'descr', 'fortran_order' and 'shape' a .npy header holds: \
         {shown}"
    ))
}

/// The header's text, checked for what the reader accepts but numpy never writes (a shape as a list).
fn check_header(header: &str) -> Result<(), NpyProblem> {
    let Some(at) = header.find("'shape':") else {
        return Err(not_a_header(header));
    };
    if !header[at + "'shape':".len()..].trim_start().starts_with('(') {
        return Err(NpyProblem::Bad(
            "its header's 'shape' is not a tuple (numpy writes one, such as (4, 3))".into(),
        ));
    }
    Ok(())
}

fn parse_npy(bytes: &[u8]) -> Result<Tensor, NpyProblem> {
    let bad = |s: &str| NpyProblem::Bad(s.to_string());
    let (start, length) = check_preamble(bytes)?;
    let header = String::from_utf8_lossy(&bytes[start..start + length]);
    check_header(&header)?;
    let npy = npyz::NpyFile::new(bytes).map_err(|_| not_a_header(&header))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(bad("Fortran-order arrays are not supported; save with C order"));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|d| *d as usize).collect();
    let count = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or_else(|| bad("shape overflows"))?;
    let type_str = match npy.dtype() {
        npyz::DType::Plain(t) => t,
        npyz::DType::Record(_) => return Err(NpyProblem::Dtype("record (a structured array)".into())),
        npyz::DType::Array(..) => return Err(NpyProblem::Dtype("sub-array".into())),
    };
    let elem = type_str.size_field() as usize;
    let data = bytes.len() - start - length;
    if count.checked_mul(elem).is_none_or(|n| n > data) {
        return Err(NpyProblem::Bad(format!(
            "the file is truncated: its header's shape {shape:?} of {elem}-byte elements needs {} bytes of \
             data, and {data} follow the header",
            count.saturating_mul(elem)
        )));
    }
    let key = (type_str.type_char(), elem);
    let collect_err = |e: std::io::Error| NpyProblem::Bad(e.to_string());
    let t = match key {
        (npyz::TypeChar::Float, 4) => {
            let v: Vec<f32> = npy.into_vec().map_err(collect_err)?;
            Tensor {
                shape,
                data: Data::Float(v.into_iter().map(f64::from).collect()),
                dtype: DType::F32,
            }
        }
        (npyz::TypeChar::Float, 8) => {
            let v: Vec<f64> = npy.into_vec().map_err(collect_err)?;
            Tensor {
                shape,
                data: Data::Float(v),
                dtype: DType::F64,
            }
        }
        (npyz::TypeChar::Int, 4) => {
            let v: Vec<i32> = npy.into_vec().map_err(collect_err)?;
            Tensor {
                shape,
                data: Data::Int(v.into_iter().map(i64::from).collect()),
                dtype: DType::I32,
            }
        }
        (npyz::TypeChar::Int, 8) => {
            let v: Vec<i64> = npy.into_vec().map_err(collect_err)?;
            Tensor {
                shape,
                data: Data::Int(v),
                dtype: DType::I64,
            }
        }
        _ => return Err(NpyProblem::Dtype(type_str.to_string())),
    };
    if t.len() != count {
        return Err(bad("element count differs from the shape"));
    }
    Ok(t)
}

/// Reads one tensor of a .safetensors file.
pub fn load_safetensors(path: &Path, name: &str) -> Result<Tensor, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Read {
        path: path.into(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| DataError::BadSafetensors {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let view = st.tensor(name).map_err(|_| {
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        DataError::NoSuchTensor {
            path: path.into(),
            name: name.into(),
            available: names.join(", "),
        }
    })?;
    let shape = view.shape().to_vec();
    let raw = view.data();
    use safetensors::Dtype as S;
    let t = match view.dtype() {
        S::F32 => Tensor {
            shape,
            data: Data::Float(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
            ),
            dtype: DType::F32,
        },
        S::F64 => Tensor {
            shape,
            data: Data::Float(
                raw.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            dtype: DType::F64,
        },
        S::BF16 | S::F16 => {
            let (dtype, decode): (DType, fn([u8; 2]) -> f64) = match view.dtype() {
                S::BF16 => (DType::BF16, |b| half::bf16::from_le_bytes(b).to_f64()),
                _ => (DType::F16, |b| half::f16::from_le_bytes(b).to_f64()),
            };
            Tensor {
                shape,
                data: Data::Float(raw.chunks_exact(2).map(|c| decode([c[0], c[1]])).collect()),
                dtype,
            }
        }
        S::I32 => Tensor {
            shape,
            data: Data::Int(
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            dtype: DType::I32,
        },
        S::I64 => Tensor {
            shape,
            data: Data::Int(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            dtype: DType::I64,
        },
        other => {
            return Err(DataError::UnsupportedDtype {
                path: path.into(),
                dtype: format!("{other:?}"),
            });
        }
    };
    Ok(t)
}

/// Writes a tensor as .npy: float64 for floats, int64 for labels.
pub fn save_npy(path: &Path, t: &Tensor) -> Result<(), DataError> {
    use npyz::WriterBuilder;
    let werr = |source| DataError::Write {
        path: path.into(),
        source,
    };
    let file = std::fs::File::create(path).map_err(werr)?;
    let mut w = std::io::BufWriter::new(file);
    let shape: Vec<u64> = t.shape.iter().map(|d| *d as u64).collect();
    match &t.data {
        Data::Float(v) => {
            let mut out = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut w)
                .begin_nd()
                .map_err(werr)?;
            out.extend(v.iter().copied()).map_err(werr)?;
            out.finish().map_err(werr)?;
        }
        Data::Int(v) => {
            let mut out = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut w)
                .begin_nd()
                .map_err(werr)?;
            out.extend(v.iter().copied()).map_err(werr)?;
            out.finish().map_err(werr)?;
        }
    }
    Ok(())
}

/// A small deterministic generator (SplitMix64) for `--random` inputs and tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (the same seed, the same sequence).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

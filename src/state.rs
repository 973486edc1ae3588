//! Per-sample state kept between calls (SogCLR's `u`, ALDR-KL's `λ`, iSogCLR's `τ`, SAF's ring buffer of
//! past outputs).
//!
//! In the language, state is explicit: a loss declares `u: f32[B] state[ids] = init` (an input, gathered
//! by the sample ids `ids`) and an output `u_new: f32[B] updates u`. A state may have a row per id instead
//! of a value (`bank: f32[B, S, C] state[ids]`: S × C values per id), whose extra axes are sized by other
//! inputs or by `idx` hyperparameters. A [`StateStore`] keeps one table per state input, indexed by sample
//! id: before a call it gathers the rows of the batch's ids into the state input, after the call it
//! scatters the updating output back. So a training loop passes only the ids.
//!
//! Invariants: a table holds only the ids seen (a sparse map from id to row: one id of 268,435,455 costs
//! one row, not a 2 GiB array); a row never written reads as the initial value (every element); ids are
//! checked (`0 ≤ id < MAX_STATE_ROWS`) before anything is gathered; every row of a table has the same
//! length, and a call whose rows have another is [`CallError::StateWidth`]; when one batch holds an id
//! twice, the later row's update wins (batch order). Without a store, the state input is an ordinary input
//! and the update an ordinary output, which is how tests pass state in and out explicitly. On disk a table
//! is `DIR/<state>.npy`, a float64 array of shape [K, 1 + W]: one (id, values…) row per id, ids ascending,
//! W values per row in row-major order (a rank-1 array, the dense format of earlier versions, is read as
//! ids 0, 1, … of one value each).

use std::collections::BTreeMap;
use std::path::Path;

use crate::call::CallError;
use crate::data::{self, Data, DataError, Tensor};
use crate::ir::{Dim, Function, StateInit};

/// The largest sample id a state table takes, plus one (ids are checked against it).
pub const MAX_STATE_ROWS: i64 = 1 << 28;

/// One state input's table: the rows of the ids seen, and the value the others read as.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Row by sample id: the state's values for that id (one, or a row's extra axes in row-major order),
    /// every row of one length.
    pub rows: BTreeMap<i64, Vec<f64>>,
    /// What every value of a row never written reads as (the initial value of the latest call that
    /// gathered).
    pub init: f64,
}

impl Table {
    /// Values per row (1 for an empty table).
    pub fn width(&self) -> usize {
        self.rows.values().next().map_or(1, Vec::len)
    }
}

/// State tables by state-input name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateStore {
    tables: BTreeMap<String, Table>,
}

impl StateStore {
    /// An empty store: every row reads as its initial value.
    pub fn new() -> StateStore {
        StateStore::default()
    }

    /// The table of one state input as a dense array: the rows of ids 0 to the largest seen, one after
    /// the other, rows never written at the initial value.
    pub fn table(&self, name: &str) -> Option<Vec<f64>> {
        let t = self.tables.get(name)?;
        Some(dense(&t.rows, t.init, t.width()))
    }

    /// The rows of one state input's table (only the ids seen or set).
    pub fn rows(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    /// Sets a whole table of one value per id from a dense array (ids 0, 1, …; e.g. restored from a
    /// checkpoint).
    pub fn set_table(&mut self, name: &str, values: Vec<f64>) -> Result<(), CallError> {
        self.set_rows(
            name,
            values
                .into_iter()
                .enumerate()
                .map(|(id, v)| (id as i64, vec![v]))
                .collect(),
        )
    }

    /// Sets a whole table from rows by id. Ids outside `0..MAX_STATE_ROWS` and rows of different lengths
    /// are errors.
    pub fn set_rows(&mut self, name: &str, rows: BTreeMap<i64, Vec<f64>>) -> Result<(), CallError> {
        let ids: Vec<i64> = rows.keys().copied().collect();
        check_ids(name, &ids)?;
        let width = rows.values().next().map_or(1, Vec::len);
        if let Some(other) = rows.values().find(|r| r.len() != width || r.is_empty()) {
            return Err(CallError::StateWidth {
                name: name.to_string(),
                table: width,
                call: other.len(),
            });
        }
        let init = self.tables.get(name).map_or(0.0, |t| t.init);
        self.tables.insert(name.to_string(), Table { rows, init });
        Ok(())
    }

    /// Reads `DIR/<state>.npy` for every state input of `f` that has a file there.
    pub fn load_dir(dir: &Path, f: &Function) -> Result<StateStore, DataError> {
        let mut store = StateStore::new();
        for input in f.inputs.iter().filter(|i| i.state.is_some()) {
            let path = dir.join(format!("{}.npy", input.name));
            if !path.exists() {
                continue;
            }
            let t = data::load_npy(&path)?;
            let bad = |reason: String| DataError::BadNpy {
                path: path.clone(),
                reason,
            };
            if !matches!(t.data, Data::Float(_)) {
                return Err(bad(format!(
                    "a state table holds floats (float64 (id, values…) rows), but this is {}",
                    t.dtype
                )));
            }
            let values = t.to_f64();
            let rows: BTreeMap<i64, Vec<f64>> = match t.shape[..] {
                [_] => values.iter().enumerate().map(|(id, v)| (id as i64, vec![*v])).collect(),
                [_, w] if w >= 2 && (w == 2 || input.shape.len() > 1) => {
                    let mut rows = BTreeMap::new();
                    for row in values.chunks_exact(w) {
                        if row[0].fract() != 0.0 || !(0.0..MAX_STATE_ROWS as f64).contains(&row[0]) {
                            return Err(bad(format!("sample id {} is not an integer in 0..2^28", row[0])));
                        }
                        rows.insert(row[0] as i64, row[1..].to_vec());
                    }
                    rows
                }
                _ if input.shape.len() == 1 => {
                    return Err(bad(format!(
                        "a state table of one value per id has shape [K, 2] ((id, value) rows), but this has \
                         shape {:?}",
                        t.shape
                    )));
                }
                _ => {
                    return Err(bad(format!(
                        "a state table has shape [K, 1 + W] ((id, values…) rows), but this has shape {:?}",
                        t.shape
                    )));
                }
            };
            store.set_rows(&input.name, rows).map_err(|e| bad(e.to_string()))?;
        }
        Ok(store)
    }

    /// Writes every table as `DIR/<state>.npy` (creating DIR): float64 (id, values…) rows, ids ascending.
    pub fn save_dir(&self, dir: &Path) -> Result<(), DataError> {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Write {
            path: dir.into(),
            source,
        })?;
        for (name, table) in &self.tables {
            let pairs: Vec<f64> = (table.rows.iter())
                .flat_map(|(id, row)| std::iter::once(*id as f64).chain(row.iter().copied()))
                .collect();
            let t = Tensor {
                shape: vec![table.rows.len(), 1 + table.width()],
                data: Data::Float(pairs),
                dtype: data::DType::F64,
            };
            data::save_npy(&dir.join(format!("{name}.npy")), &t)?;
        }
        Ok(())
    }

    /// Adds every state input of `f` to `inputs`, gathered from the tables by the call's sample ids.
    /// The caller must not pass the state inputs themselves.
    pub fn gather(
        &mut self,
        f: &Function,
        inputs: &mut BTreeMap<String, Tensor>,
        hypers: &BTreeMap<String, f64>,
    ) -> Result<(), CallError> {
        for (k, spec, key) in state_inputs(f, |name| inputs.contains_key(name))? {
            let input = &f.inputs[k];
            let ids = sample_ids(f, key, inputs)?;
            let row = row_shape(f, k, |name| inputs.get(name).map(|t| t.shape.clone()), hypers)?;
            let width = row.iter().product::<usize>();
            let init = initial_value(f, spec.init, hypers);
            let table = self.tables.entry(input.name.clone()).or_default();
            if !table.rows.is_empty() && table.width() != width {
                return Err(CallError::StateWidth {
                    name: input.name.clone(),
                    table: table.width(),
                    call: width,
                });
            }
            table.init = init;
            let mut values = Vec::with_capacity(ids.len() * width);
            for id in &ids {
                match table.rows.get(id) {
                    Some(r) => values.extend_from_slice(r),
                    None => values.extend(std::iter::repeat_n(init, width)),
                }
            }
            let shape = std::iter::once(ids.len()).chain(row).collect();
            inputs.insert(input.name.clone(), Tensor::float(shape, values));
        }
        Ok(())
    }

    /// Writes each updating output back into its state table at the call's sample ids.
    pub fn scatter(
        &mut self,
        f: &Function,
        inputs: &BTreeMap<String, Tensor>,
        outputs: &[(String, Tensor)],
    ) -> Result<(), CallError> {
        for u in &f.updates {
            let input = &f.inputs[u.input as usize];
            let Some(spec) = &input.state else { continue };
            let key = &f.inputs[spec.key as usize].name;
            let ids = sample_ids(f, key, inputs)?;
            let Some((_, out)) = outputs.iter().find(|(n, _)| *n == u.output) else {
                continue;
            };
            let values = out.to_f64();
            let width = values.len() / ids.len().max(1);
            let table = self.tables.entry(input.name.clone()).or_default();
            for (id, row) in ids.iter().zip(values.chunks_exact(width.max(1))) {
                table.rows.insert(*id, row.to_vec());
            }
        }
        Ok(())
    }
}

/// The state inputs of `f` (index, spec, the name of the input holding their sample ids), checked for a
/// call that gives the inputs `given` says: a state input passed in is [`CallError::StateGiven`] (the store
/// supplies it), a missing sample-id input [`CallError::MissingInput`]. The host and the device stores
/// both start here.
pub fn state_inputs(
    f: &Function,
    given: impl Fn(&str) -> bool,
) -> Result<Vec<(usize, &crate::ir::StateSpec, &str)>, CallError> {
    let mut out = Vec::new();
    for (k, input) in f.inputs.iter().enumerate() {
        let Some(spec) = &input.state else { continue };
        let key = f.inputs[spec.key as usize].name.as_str();
        if given(&input.name) {
            return Err(CallError::StateGiven {
                name: input.name.clone(),
                key: key.to_string(),
            });
        }
        if !given(key) {
            return Err(CallError::MissingInput {
                name: key.to_string(),
                expected: f.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        out.push((k, spec, key));
    }
    Ok(out)
}

/// The checked sample ids of a call.
fn sample_ids(f: &Function, key: &str, inputs: &BTreeMap<String, Tensor>) -> Result<Vec<i64>, CallError> {
    let Some(t) = inputs.get(key) else {
        let expected = f.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(CallError::MissingInput {
            name: key.to_string(),
            expected,
        });
    };
    let Data::Int(ids) = &t.data else {
        return Err(CallError::WrongDtype {
            input: key.to_string(),
            expected: "integer labels (int32 or int64)",
            got: t.dtype,
        });
    };
    check_ids(key, ids)?;
    Ok(ids.clone())
}

/// A table's rows by id as a dense array of `width` values per id (ids 0 up to the largest seen; ids never
/// seen at `init`).
pub fn dense(rows: &BTreeMap<i64, Vec<f64>>, init: f64, width: usize) -> Vec<f64> {
    let len = rows.keys().next_back().map_or(0, |last| *last as usize + 1);
    let mut dense = vec![init; len * width];
    for (id, row) in rows {
        let at = *id as usize * width;
        dense[at..at + width].copy_from_slice(row);
    }
    dense
}

/// The extents of one row of state input `k` (its axes after the first, the ids' axis) for a call whose
/// other inputs have the shapes `shape_of` gives: each axis a constant, the value of an `idx`
/// hyperparameter, or the size of that dimension in another input (sema checks that one gives it).
pub fn row_shape(
    f: &Function,
    k: usize,
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
    hypers: &BTreeMap<String, f64>,
) -> Result<Vec<usize>, CallError> {
    let state = &f.inputs[k];
    let values = crate::call::hyper_values(f, hypers)?;
    let hyper_sizes: Vec<i64> = (f.dims.iter())
        .map(|d| crate::call::hyper_size(d, &values).unwrap_or(0))
        .collect();
    let mut row = Vec::new();
    for d in &state.shape[1..] {
        let size = match d {
            Dim::Sym(s) if f.dims[s.index()].hyper.is_none() => {
                f.inputs.iter().filter(|i| i.state.is_none()).find_map(|i| {
                    let axis = i.shape.iter().position(|x| x == d)?;
                    shape_of(&i.name).and_then(|s| s.get(axis).map(|n| *n as i64))
                })
            }
            d => Some(d.eval(&hyper_sizes)),
        };
        match size {
            Some(n) if n >= 0 => row.push(n as usize),
            Some(n) => {
                return Err(CallError::NegativeDim {
                    tensor: state.name.clone(),
                    dim: f.show_dim(d),
                    value: n,
                });
            }
            None => {
                return Err(CallError::MissingInput {
                    name: format!("an input of size {} (a row of state `{}`)", f.show_dim(d), state.name),
                    expected: f.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
                });
            }
        }
    }
    Ok(row)
}

/// Sample ids lie in `0..MAX_STATE_ROWS` (a host or a device state store).
pub fn check_ids(key: &str, ids: &[i64]) -> Result<(), CallError> {
    match ids.iter().enumerate().find(|(_, v)| !(0..MAX_STATE_ROWS).contains(*v)) {
        Some((at, &bad)) => Err(CallError::LabelOutOfRange {
            input: key.to_string(),
            position: vec![at],
            value: bad,
            bound: "MAX_STATE_ROWS".into(),
            size: MAX_STATE_ROWS,
            ignore: None,
        }),
        None => Ok(()),
    }
}

/// The value a state table's new rows start at, for a call with `hypers`.
pub fn initial_value(f: &Function, init: StateInit, hypers: &BTreeMap<String, f64>) -> f64 {
    match init {
        StateInit::Const(c) => c,
        StateInit::Hyper(h) => {
            let h = &f.hypers[h as usize];
            hypers.get(&h.name).copied().unwrap_or(h.default)
        }
    }
}

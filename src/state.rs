//! Per-sample state kept between calls (SogCLR's `u`, ALDR-KL's `λ`, iSogCLR's `τ`).
//!
//! In the language, state is explicit: a loss declares `u: f32[B] state[ids] = init` (an input, gathered
//! by the sample ids `ids`) and an output `u_new: f32[B] updates u`. A [`StateStore`] keeps one table per
//! state input, indexed by sample id: before a call it gathers the rows of the batch's ids into the state
//! input, after the call it scatters the updating output back. So a training loop passes only the ids.
//!
//! Invariants: a table holds only the ids seen (a sparse map from id to value: one id of 268,435,455 costs
//! one row, not a 2 GiB array); a row never written reads as the initial value; ids are checked
//! (`0 ≤ id < MAX_STATE_ROWS`) before anything is gathered; when one batch holds an id twice, the later
//! row's update wins (batch order). Without a store, the state input is an ordinary input and the update an
//! ordinary output, which is how tests pass state in and out explicitly. On disk a table is
//! `DIR/<state>.npy`, a float64 array of shape [K, 2]: one (id, value) row per id, ids ascending (a rank-1
//! array, the dense format of earlier versions, is read as ids 0, 1, …).

use std::collections::BTreeMap;
use std::path::Path;

use crate::call::CallError;
use crate::data::{self, Data, DataError, Tensor};
use crate::ir::{Function, StateInit};

/// The largest sample id a state table takes, plus one (ids are checked against it).
pub const MAX_STATE_ROWS: i64 = 1 << 28;

/// One state input's table: the rows of the ids seen, and the value the others read as.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Value by sample id.
    pub rows: BTreeMap<i64, f64>,
    /// What a row never written reads as (the initial value of the latest call that gathered).
    pub init: f64,
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

    /// The table of one state input as a dense array: ids 0 to the largest seen, rows never written at
    /// the initial value.
    pub fn table(&self, name: &str) -> Option<Vec<f64>> {
        let t = self.tables.get(name)?;
        Some(dense(&t.rows, t.init))
    }

    /// The rows of one state input's table (only the ids seen or set).
    pub fn rows(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    /// Sets a whole table from a dense array (ids 0, 1, …; e.g. restored from a checkpoint).
    pub fn set_table(&mut self, name: &str, values: Vec<f64>) -> Result<(), CallError> {
        self.set_rows(
            name,
            values.into_iter().enumerate().map(|(id, v)| (id as i64, v)).collect(),
        )
    }

    /// Sets a whole table from (id, value) rows. Ids outside `0..MAX_STATE_ROWS` are an error.
    pub fn set_rows(&mut self, name: &str, rows: BTreeMap<i64, f64>) -> Result<(), CallError> {
        let ids: Vec<i64> = rows.keys().copied().collect();
        check_ids(name, &ids)?;
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
                    "a state table holds floats (float64 (id, value) rows), but this is {}",
                    t.dtype
                )));
            }
            let values = t.to_f64();
            let rows: BTreeMap<i64, f64> = match t.shape[..] {
                [_] => values.iter().enumerate().map(|(id, v)| (id as i64, *v)).collect(),
                [_, 2] => {
                    let mut rows = BTreeMap::new();
                    for pair in values.chunks_exact(2) {
                        if pair[0].fract() != 0.0 || !(0.0..MAX_STATE_ROWS as f64).contains(&pair[0]) {
                            return Err(bad(format!("sample id {} is not an integer in 0..2^28", pair[0])));
                        }
                        rows.insert(pair[0] as i64, pair[1]);
                    }
                    rows
                }
                _ => {
                    return Err(bad(format!(
                        "a state table has shape [K, 2] ((id, value) rows), but this has shape {:?}",
                        t.shape
                    )));
                }
            };
            store.set_rows(&input.name, rows).map_err(|e| bad(e.to_string()))?;
        }
        Ok(store)
    }

    /// Writes every table as `DIR/<state>.npy` (creating DIR): float64 (id, value) rows, ids ascending.
    pub fn save_dir(&self, dir: &Path) -> Result<(), DataError> {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Write {
            path: dir.into(),
            source,
        })?;
        for (name, table) in &self.tables {
            let pairs: Vec<f64> = table.rows.iter().flat_map(|(id, v)| [*id as f64, *v]).collect();
            let t = Tensor {
                shape: vec![table.rows.len(), 2],
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
            let init = initial_value(f, spec.init, hypers);
            let table = self.tables.entry(input.name.clone()).or_default();
            table.init = init;
            let rows = ids
                .iter()
                .map(|id| table.rows.get(id).copied().unwrap_or(init))
                .collect();
            inputs.insert(input.name.clone(), Tensor::float(vec![ids.len()], rows));
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
            let table = self.tables.entry(input.name.clone()).or_default();
            for (id, v) in ids.iter().zip(values) {
                table.rows.insert(*id, v);
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

/// A table's rows by id as a dense array (ids 0 up to the largest seen; ids never seen at `init`).
pub fn dense(rows: &BTreeMap<i64, f64>, init: f64) -> Vec<f64> {
    let len = rows.keys().next_back().map_or(0, |last| *last as usize + 1);
    let mut dense = vec![init; len];
    for (id, v) in rows {
        dense[*id as usize] = *v;
    }
    dense
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

//! Per-sample state kept between calls (SogCLR's `u`, ALDR-KL's `λ`, iSogCLR's `τ`).
//!
//! In the language, state is explicit: a loss declares `u: f32[B] state[ids] = init` (an input, gathered
//! by the sample ids `ids`) and an output `u_new: f32[B] updates u`. A [`StateStore`] keeps one table per
//! state input, indexed by sample id: before a call it gathers the rows of the batch's ids into the state
//! input, after the call it scatters the updating output back. So a training loop passes only the ids.
//!
//! Invariants: a table is rank 1 and grows on demand (rows never written hold the initial value); ids are
//! checked (`0 ≤ id < MAX_STATE_ROWS`) before anything is gathered; when one batch holds an id twice, the
//! later row's update wins (batch order). Without a store, the state input is an ordinary input and the
//! update an ordinary output, which is how tests pass state in and out explicitly.

use std::collections::BTreeMap;
use std::path::Path;

use crate::call::CallError;
use crate::data::{self, Data, DataError, Tensor};
use crate::ir::{Function, StateInit};

/// The most rows a state table may grow to (a guard against a wild id allocating without bound).
pub const MAX_STATE_ROWS: i64 = 1 << 28;

/// State tables by state-input name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateStore {
    tables: BTreeMap<String, Vec<f64>>,
}

impl StateStore {
    pub fn new() -> StateStore {
        StateStore::default()
    }

    /// The table of one state input (one value per sample id seen so far, or set).
    pub fn table(&self, name: &str) -> Option<&[f64]> {
        self.tables.get(name).map(Vec::as_slice)
    }

    /// Sets a whole table (e.g. restored from a checkpoint).
    pub fn set_table(&mut self, name: &str, values: Vec<f64>) {
        self.tables.insert(name.to_string(), values);
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
            if t.shape.len() != 1 || !matches!(t.data, Data::Float(_)) {
                return Err(DataError::BadNpy {
                    path,
                    reason: format!("a state table is a rank-1 float array, this has shape {:?}", t.shape),
                });
            }
            store.set_table(&input.name, t.to_f64());
        }
        Ok(store)
    }

    /// Writes every table as `DIR/<state>.npy` (creating DIR).
    pub fn save_dir(&self, dir: &Path) -> Result<(), DataError> {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Write {
            path: dir.into(),
            source,
        })?;
        for (name, values) in &self.tables {
            let t = Tensor::float(vec![values.len()], values.clone());
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
        for input in &f.inputs {
            let Some(spec) = &input.state else { continue };
            let key = &f.inputs[spec.key as usize].name;
            if inputs.contains_key(&input.name) {
                return Err(CallError::StateGiven {
                    name: input.name.clone(),
                    key: key.clone(),
                });
            }
            let ids = sample_ids(f, key, inputs)?;
            let init = initial_value(f, spec.init, hypers);
            let table = self.tables.entry(input.name.clone()).or_default();
            let need = ids.iter().map(|&i| i as usize + 1).max().unwrap_or(0);
            if table.len() < need {
                table.resize(need, init);
            }
            let rows = ids.iter().map(|&i| table[i as usize]).collect();
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
                table[*id as usize] = v;
            }
        }
        Ok(())
    }
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

/// Sample ids lie in `0..MAX_STATE_ROWS` (a host or a device state store).
pub fn check_ids(key: &str, ids: &[i64]) -> Result<(), CallError> {
    match ids.iter().enumerate().find(|(_, v)| !(0..MAX_STATE_ROWS).contains(*v)) {
        Some((at, &bad)) => Err(CallError::LabelOutOfRange {
            input: key.to_string(),
            position: vec![at],
            value: bad,
            bound: "the state table limit".into(),
            size: MAX_STATE_ROWS,
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

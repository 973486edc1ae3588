//! Per-sample state: `state[ids]` inputs and `updates` outputs, kept between calls by a StateStore (API)
//! and by `lossc eval --state DIR` (CLI), and passable in and out explicitly.

use std::collections::BTreeMap;

use lossc::{Backend, CallError, Compiler, Kernel, StateStore, Tensor};

const COUNTER: &str =
    "loss t(x: f32[B], ids: idx[B], u: f32[B] state[ids] = h, h: f32 = 3.0) -> (u_new: f32[B] updates u) {
    out u_new[i] = u[i] + x[i]
    sum[i] x[i] * u[i]
}";

fn kernel(src: &str, name: &str, backend: Backend) -> Kernel {
    Compiler::new()
        .backend(backend)
        .compile_source("t.lx", src)
        .unwrap_or_else(|d| panic!("{}", d.render()))
        .kernel(Some(name))
        .unwrap()
}

fn inputs(pairs: Vec<(&str, Tensor)>) -> BTreeMap<String, Tensor> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Interp];
    if cfg!(feature = "jit") {
        v.push(Backend::Jit);
    }
    v
}

#[test]
fn the_second_call_sees_the_first_calls_state() {
    for backend in backends() {
        let k = kernel(COUNTER, "t", backend);
        let mut store = StateStore::new();
        let x1 = inputs(vec![
            ("x", Tensor::float(vec![2], vec![1.0, 2.0])),
            ("ids", Tensor::labels(vec![2], vec![0, 4])),
        ]);
        let e1 = k.eval_stateful(&x1, &BTreeMap::new(), &mut store).unwrap();
        // Rows start at h = 3: loss = 1*3 + 2*3; the gradient of x is the gathered state.
        assert_eq!(e1.loss, 9.0);
        assert_eq!(e1.grads[0].1.to_f64(), vec![3.0, 3.0]);
        // Ids 1..3 were never written and hold the initial value; 0 and 4 were updated.
        assert_eq!(store.table("u").unwrap(), &[4.0, 3.0, 3.0, 3.0, 5.0]);
        let x2 = inputs(vec![
            ("x", Tensor::float(vec![2], vec![1.0, 1.0])),
            ("ids", Tensor::labels(vec![2], vec![4, 2])),
        ]);
        let e2 = k.eval_stateful(&x2, &BTreeMap::new(), &mut store).unwrap();
        assert_eq!(e2.loss, 5.0 + 3.0, "{backend:?}");
        assert_eq!(store.table("u").unwrap(), &[4.0, 3.0, 4.0, 3.0, 6.0]);
    }
}

#[test]
fn the_initial_value_follows_the_calls_hyperparameter() {
    let k = kernel(COUNTER, "t", Backend::Interp);
    let mut store = StateStore::new();
    let x = inputs(vec![
        ("x", Tensor::float(vec![1], vec![1.0])),
        ("ids", Tensor::labels(vec![1], vec![2])),
    ]);
    let e = k
        .eval_stateful(&x, &BTreeMap::from([("h".to_string(), 5.0)]), &mut store)
        .unwrap();
    assert_eq!(e.loss, 5.0);
    assert_eq!(store.table("u").unwrap(), &[5.0, 5.0, 6.0]);
}

#[test]
fn a_repeated_id_keeps_the_last_update() {
    let k = kernel(COUNTER, "t", Backend::Interp);
    let mut store = StateStore::new();
    let x = inputs(vec![
        ("x", Tensor::float(vec![2], vec![1.0, 2.0])),
        ("ids", Tensor::labels(vec![2], vec![1, 1])),
    ]);
    k.eval_stateful(&x, &BTreeMap::new(), &mut store).unwrap();
    assert_eq!(store.table("u").unwrap(), &[3.0, 5.0]);
}

#[test]
fn explicit_state_in_and_out_equals_the_store() {
    // ALDR-KL with its λ passed explicitly gives the same loss, gradient and update as through the store.
    let src = "use std::robust::aldr_kl";
    for backend in backends() {
        let k = kernel(src, "aldr_kl", backend);
        let s = Tensor::float(vec![3, 4], (0..12).map(|v| ((v * 7 % 5) as f64 - 2.0) * 0.7).collect());
        let y = Tensor::labels(vec![3], vec![0, 3, 1]);
        let mut store = StateStore::new();
        store.set_table("lam", vec![1.0, 0.8, 0.6, 0.9]).unwrap();
        let base = inputs(vec![
            ("s", s.clone()),
            ("y", y.clone()),
            ("ids", Tensor::labels(vec![3], vec![3, 0, 2])),
        ]);
        let through_store = k.eval_stateful(&base, &BTreeMap::new(), &mut store).unwrap();
        let mut explicit = base.clone();
        explicit.insert("lam".into(), Tensor::float(vec![3], vec![0.9, 1.0, 0.6]));
        let direct = k.eval(&explicit).unwrap();
        assert_eq!(through_store.loss, direct.loss);
        assert_eq!(through_store.grads, direct.grads);
        let lam_new = direct.outputs.iter().find(|(n, _)| n == "lam_new").unwrap().1.to_f64();
        let table = store.table("lam").unwrap();
        assert_eq!([table[3], table[0], table[2]], [lam_new[0], lam_new[1], lam_new[2]]);
        assert_eq!(table[1], 0.8, "an id outside the batch is untouched");
    }
}

#[test]
fn bad_stateful_calls_are_typed_errors() {
    let k = kernel(COUNTER, "t", Backend::Interp);
    let mut store = StateStore::new();
    let x = Tensor::float(vec![1], vec![1.0]);
    let with = |ids: Tensor| inputs(vec![("x", x.clone()), ("ids", ids)]);
    let e = k.eval_stateful(&with(Tensor::labels(vec![1], vec![-1])), &BTreeMap::new(), &mut store);
    assert!(matches!(e, Err(CallError::LabelOutOfRange { value: -1, .. })), "{e:?}");
    let e = k.eval_stateful(
        &with(Tensor::labels(vec![1], vec![1 << 40])),
        &BTreeMap::new(),
        &mut store,
    );
    assert!(matches!(e, Err(CallError::LabelOutOfRange { .. })), "{e:?}");
    let e = k.eval_stateful(&with(Tensor::float(vec![1], vec![0.0])), &BTreeMap::new(), &mut store);
    assert!(matches!(e, Err(CallError::WrongDtype { .. })), "{e:?}");
    let e = k.eval_stateful(&inputs(vec![("x", x.clone())]), &BTreeMap::new(), &mut store);
    assert!(matches!(e, Err(CallError::MissingInput { .. })), "{e:?}");
    let mut given = with(Tensor::labels(vec![1], vec![0]));
    given.insert("u".into(), Tensor::float(vec![1], vec![0.0]));
    let e = k.eval_stateful(&given, &BTreeMap::new(), &mut store);
    assert!(matches!(e, Err(CallError::StateGiven { .. })), "{e:?}");
    // A batch whose ids and rows disagree in length fails at binding: nothing is written back (rows the
    // gather created hold the initial value, the same as rows never seen).
    let bad = inputs(vec![
        ("x", Tensor::float(vec![2], vec![1.0, 2.0])),
        ("ids", Tensor::labels(vec![1], vec![0])),
    ]);
    assert!(k.eval_stateful(&bad, &BTreeMap::new(), &mut store).is_err());
    assert!(store.table("u").unwrap_or_default().iter().all(|v| *v == 3.0));
    // Without a store (state passed in explicitly) a negative id is refused the same way (issue 28: it was
    // accepted), on both backends.
    for backend in backends() {
        let k = kernel(COUNTER, "t", backend);
        let mut explicit = with(Tensor::labels(vec![1], vec![-3]));
        explicit.insert("u".into(), Tensor::float(vec![1], vec![0.0]));
        let e = k.eval(&explicit);
        assert!(
            matches!(e, Err(CallError::LabelOutOfRange { value: -3, .. })),
            "{backend:?}: {e:?}"
        );
    }
}

#[test]
fn tables_round_trip_through_a_directory() {
    let f = lossc::Program::from_source("t.lx", COUNTER)
        .unwrap()
        .loss(None)
        .unwrap()
        .clone();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc-state-{}", std::process::id()));
    let mut store = StateStore::new();
    store.set_table("u", vec![1.5, -2.0, 7.0]).unwrap();
    store.save_dir(&dir).unwrap();
    let back = StateStore::load_dir(&dir, &f).unwrap();
    assert_eq!(back, store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "cli")]
#[test]
fn cli_keeps_state_between_runs() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc-cli-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("aldr.lx");
    std::fs::write(&file, "use std::robust::aldr_kl\n").unwrap();
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lossc"))
            .arg("eval")
            .arg(&file)
            .args(["--random", "N=4,C=5", "--seed", "3", "--json", "--state"])
            .arg(dir.join("state"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    let table1 = lossc::data::load_npy(&dir.join("state/lam.npy")).unwrap().to_f64();
    let second = run();
    let table2 = lossc::data::load_npy(&dir.join("state/lam.npy")).unwrap().to_f64();
    assert_ne!(first, second, "the second run starts from the first run's λ");
    assert_ne!(table1, table2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Tables are sparse: the largest id allowed costs one row in memory and on disk (it made a dense 2 GiB
/// table), the file holds (id, value) rows, the dense rank-1 format still loads, and a table of the wrong
/// dtype or shape is refused with what is wrong.
#[test]
fn tables_are_sparse_in_memory_and_on_disk() {
    let k = kernel(COUNTER, "t", Backend::Interp);
    let f = k.function().clone();
    let mut store = StateStore::new();
    let far = lossc::state::MAX_STATE_ROWS - 1;
    let x = inputs(vec![
        ("x", Tensor::float(vec![2], vec![1.0, 2.0])),
        ("ids", Tensor::labels(vec![2], vec![far, 7])),
    ]);
    k.eval_stateful(&x, &BTreeMap::new(), &mut store).unwrap();
    let rows = &store.rows("u").unwrap().rows;
    assert_eq!(
        rows.iter().map(|(id, v)| (*id, v.clone())).collect::<Vec<_>>(),
        vec![(7, vec![5.0]), (far, vec![4.0])]
    );
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc-sparse-{}", std::process::id()));
    store.save_dir(&dir).unwrap();
    let file = lossc::data::load_npy(&dir.join("u.npy")).unwrap();
    assert_eq!(file.shape, vec![2, 2]);
    assert_eq!(file.to_f64(), vec![7.0, 5.0, far as f64, 4.0]);
    let back = StateStore::load_dir(&dir, &f).unwrap();
    assert_eq!(back.rows("u").unwrap().rows, store.rows("u").unwrap().rows);
    // The dense format of earlier versions: ids 0, 1, 2.
    lossc::data::save_npy(&dir.join("u.npy"), &Tensor::float(vec![3], vec![1.0, 2.0, 3.0])).unwrap();
    assert_eq!(
        StateStore::load_dir(&dir, &f).unwrap().table("u").unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    // An int64 table, a table of the wrong shape, an id that is not an integer.
    lossc::data::save_npy(&dir.join("u.npy"), &Tensor::labels(vec![8], vec![0; 8])).unwrap();
    let e = StateStore::load_dir(&dir, &f).unwrap_err().to_string();
    assert!(
        e.contains("a state table holds floats (float64 (id, values…) rows), but this is int64"),
        "{e}"
    );
    lossc::data::save_npy(&dir.join("u.npy"), &Tensor::float(vec![2, 3], vec![0.0; 6])).unwrap();
    let e = StateStore::load_dir(&dir, &f).unwrap_err().to_string();
    assert!(e.contains("has shape [K, 2]"), "{e}");
    lossc::data::save_npy(&dir.join("u.npy"), &Tensor::float(vec![1, 2], vec![0.5, 1.0])).unwrap();
    let e = StateStore::load_dir(&dir, &f).unwrap_err().to_string();
    assert!(e.contains("sample id 0.5 is not an integer"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A ring buffer: each call writes x into slot `epoch % S` of its ids' rows and reads the slot written
/// `lag` calls earlier (the loss is that slot's sum times a weight).
const RING: &str =
    "loss ring(x: f32[B, C], w: f32[B, C], ids: idx[B], bank: f32[B, S, C] state[ids] = -1.0, S: idx = 3,
          epoch: idx = 0, lag: idx = 2) -> (bank_new: f32[B, S, C] updates bank) {
    out bank_new[i, e, c] = if e == epoch % S then x[i, c] else bank[i, e, c]
    sum[i, c] w[i, c] * bank[i, (epoch - lag) % S, c]
}";

/// Rows with extra axes (issue 24: SAF's ring buffer): state `[B, S, C]` with S an idx hyperparameter,
/// gathered and scattered a row per id, against the same ring buffer kept by hand; rows never written read
/// as the initial value in every element.
#[test]
fn state_rows_with_extra_axes_keep_a_ring_buffer() {
    for backend in backends() {
        let k = kernel(RING, "ring", backend);
        let mut store = StateStore::new();
        let (s, c) = (3usize, 2usize);
        let mut want: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for epoch in 0..7i64 {
            let ids: Vec<i64> = vec![(epoch * 5) % 4, 4 + epoch % 2];
            let x: Vec<f64> = (0..ids.len() * c).map(|v| (epoch * 10 + v as i64) as f64).collect();
            let w: Vec<f64> = (0..ids.len() * c).map(|v| 1.0 + v as f64).collect();
            let hypers = BTreeMap::from([("epoch".to_string(), epoch as f64)]);
            let call = inputs(vec![
                ("x", Tensor::float(vec![ids.len(), c], x.clone())),
                ("w", Tensor::float(vec![ids.len(), c], w.clone())),
                ("ids", Tensor::labels(vec![ids.len()], ids.clone())),
            ]);
            let e = k.eval_stateful(&call, &hypers, &mut store).unwrap();
            // By hand: the read slot of the rows before this call's write.
            let read = ((epoch - 2).rem_euclid(s as i64)) as usize;
            let mut loss = 0.0;
            for (r, id) in ids.iter().enumerate() {
                let row = want.entry(*id).or_insert_with(|| vec![-1.0; s * c]);
                for k in 0..c {
                    loss += w[r * c + k] * row[read * c + k];
                }
                let slot = (epoch % s as i64) as usize;
                row[slot * c..slot * c + c].copy_from_slice(&x[r * c..r * c + c]);
            }
            assert_eq!(e.loss, loss, "{backend:?} epoch {epoch}");
            let out = e.outputs.iter().find(|(n, _)| n == "bank_new").unwrap();
            assert_eq!(out.1.shape, vec![ids.len(), s, c]);
        }
        let table = store.rows("bank").unwrap();
        assert_eq!(table.width(), s * c);
        assert_eq!(table.rows, want, "{backend:?}");
        // The dense view: ids 0 to 5, six values each.
        assert_eq!(store.table("bank").unwrap().len(), 6 * s * c);
    }
}

/// A row's width follows the call (S from the hyperparameter, C from x): a table of another width is a
/// typed error, and a wide table round-trips through a directory as (id, values…) rows.
#[test]
fn wide_state_tables_check_their_width_and_round_trip() {
    let k = kernel(RING, "ring", Backend::Interp);
    let mut store = StateStore::new();
    let call = |c: usize| {
        inputs(vec![
            ("x", Tensor::float(vec![1, c], vec![2.0; c])),
            ("w", Tensor::float(vec![1, c], vec![1.0; c])),
            ("ids", Tensor::labels(vec![1], vec![3])),
        ])
    };
    k.eval_stateful(&call(2), &BTreeMap::new(), &mut store).unwrap();
    let e = k.eval_stateful(&call(4), &BTreeMap::new(), &mut store).unwrap_err();
    assert!(matches!(&e, CallError::StateWidth { table: 6, call: 12, .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "state `bank` holds rows of 6 values, but this call's rows of it have 12"
    );
    let more_slots = BTreeMap::from([("S".to_string(), 4.0)]);
    let e = k.eval_stateful(&call(2), &more_slots, &mut store).unwrap_err();
    assert!(matches!(e, CallError::StateWidth { call: 8, .. }), "{e:?}");
    // Rows of different lengths are refused when set.
    let e = store
        .set_rows("bank", BTreeMap::from([(0, vec![1.0]), (1, vec![1.0, 2.0])]))
        .unwrap_err();
    assert!(matches!(e, CallError::StateWidth { .. }), "{e:?}");
    let f = k.function().clone();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc-wide-{}", std::process::id()));
    store.save_dir(&dir).unwrap();
    let file = lossc::data::load_npy(&dir.join("bank.npy")).unwrap();
    assert_eq!(file.shape, vec![1, 7]);
    assert_eq!(file.to_f64(), vec![3.0, 2.0, 2.0, -1.0, -1.0, -1.0, -1.0]);
    assert_eq!(
        StateStore::load_dir(&dir, &f).unwrap().rows("bank").unwrap().rows,
        store.rows("bank").unwrap().rows
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Several tables keyed by different id inputs, and an update that reads the old value (a running max).
#[test]
fn tables_keyed_by_different_ids_and_running_updates() {
    let src = "loss t(x: f32[B], a: idx[B], b: idx[B], m: f32[B] state[a] = -1000.0, n: f32[B] state[b] = 0.0)
        -> (m_new: f32[B] updates m, n_new: f32[B] updates n) {
    out m_new[i] = max(m[i], x[i])
    out n_new[i] = 0.5 * n[i] + x[i]
    sum[i] x[i] * (m[i] + n[i])
}";
    for backend in backends() {
        let k = kernel(src, "t", backend);
        let mut store = StateStore::new();
        let call = |x: Vec<f64>, a: Vec<i64>, b: Vec<i64>| {
            inputs(vec![
                ("x", Tensor::float(vec![x.len()], x)),
                ("a", Tensor::labels(vec![a.len()], a)),
                ("b", Tensor::labels(vec![b.len()], b)),
            ])
        };
        k.eval_stateful(
            &call(vec![1.0, 5.0], vec![0, 1], vec![1, 0]),
            &BTreeMap::new(),
            &mut store,
        )
        .unwrap();
        let e = k
            .eval_stateful(
                &call(vec![3.0, 2.0], vec![0, 1], vec![0, 2]),
                &BTreeMap::new(),
                &mut store,
            )
            .unwrap();
        // m = max so far by a: [1, 5] before, n by b: id 0 = 5, id 2 = 0.
        assert_eq!(e.loss, 3.0 * (1.0 + 5.0) + 2.0 * (5.0 + 0.0), "{backend:?}");
        assert_eq!(store.table("m").unwrap(), vec![3.0, 5.0]);
        assert_eq!(store.table("n").unwrap(), vec![0.5 * 5.0 + 3.0, 1.0, 2.0]);
    }
}

/// An input axis sized by idx hyperparameters (`f32[B, E + 1]`) is checked against their value, with or
/// without a store; `lossc eval --random` sizes it from `--set`.
#[test]
fn input_axes_sized_by_hyperparameters_are_checked() {
    let src = "loss t(x: f32[B, E + 1], E: idx = 2) { sum[i, e] x[i, e] * e }";
    for backend in backends() {
        let k = kernel(src, "t", backend);
        let x = inputs(vec![("x", Tensor::float(vec![2, 3], vec![1.0; 6]))]);
        assert_eq!(k.eval(&x).unwrap().loss, 6.0);
        let e = k.eval_with(&x, &BTreeMap::from([("E".to_string(), 3.0)])).unwrap_err();
        assert!(
            matches!(
                &e,
                CallError::ShapeMismatch {
                    axis: 1,
                    expected: 4,
                    got: 3,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("hyperparameter `E`"), "{e}");
        let e = k.eval_with(&x, &BTreeMap::from([("E".to_string(), -5.0)])).unwrap_err();
        assert!(matches!(e, CallError::NegativeDim { value: -4, .. }), "{e:?}");
    }
}

/// `lossc eval --state DIR` keeps SAF's ring buffer between runs: a table of (id, 2 × 3 values) rows, and a
/// later epoch's KL term reads what an earlier run wrote.
#[cfg(feature = "cli")]
#[test]
fn cli_keeps_rows_of_state_between_runs() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc-cli-ring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |epoch: i64, seed: u64| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lossc"))
            .args(["eval", "std::distill::saf", "--random", "N=4,C=3", "--json"])
            .args(["--seed", &seed.to_string()])
            .args(["--set", &format!("E=1,kl_start=0,epoch={epoch}"), "--state"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["loss"].as_f64().unwrap()
    };
    run(0, 1);
    let table = lossc::data::load_npy(&dir.join("bank.npy")).unwrap();
    assert_eq!(table.shape[1], 1 + 2 * 3, "{:?}", table.shape);
    // Epoch 1 reads slot 0, written by the run of epoch 0: other logits than a fresh store's zeros.
    let with_history = run(1, 2);
    std::fs::remove_dir_all(&dir).unwrap();
    let fresh = run(1, 2);
    assert_ne!(with_history, fresh);
    std::fs::remove_dir_all(&dir).unwrap();
}

#![cfg(feature = "cli")]
//! End-to-end runs of the `lossc` binary: good runs, and bad inputs that must exit 1 with a clear message
//! (never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lossc::data::{Tensor, save_npy};

fn lossc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lossc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs and expects exit code `code`; checks no panic message leaked.
fn expect(args: &[&str], code: i32) -> (String, String) {
    let o = lossc(args);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "lossc {args:?}\nstdout: {out}\nstderr: {err}"
    );
    assert!(!err.contains("panicked"), "lossc {args:?} panicked: {err}");
    (out, err)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lossc-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn check_accepts_every_example() {
    let mut args = vec!["check"];
    let files: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "lx"))
        .map(|p| p.display().to_string())
        .collect();
    args.extend(files.iter().map(String::as_str));
    let (out, _) = expect(&args, 0);
    assert_eq!(
        out.lines().filter(|l| l.ends_with("ok (1 loss(es))")).count(),
        files.len()
    );
}

#[test]
fn check_reports_diagnostics_and_exits_1() {
    let d = scratch("check");
    let f = d.join("bad.lx");
    std::fs::write(&f, "loss f(x: f32[N]) { mean[i] x[i] * lamda }").unwrap();
    let (_, err) = expect(&["check", p(&f)], 1);
    assert!(
        err.contains("lossc::E101") && err.contains("unknown name `lamda`"),
        "{err}"
    );
}

#[test]
fn eval_bundled_example() {
    let (out, _) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--data",
            "examples/data/cross_entropy",
        ],
        0,
    );
    assert!(out.starts_with("loss = "), "{out}");
}

#[test]
fn eval_json_and_out_dir_agree() {
    let d = scratch("out");
    let (out, _) = expect(
        &[
            "eval",
            "examples/ldr_kl.lx",
            "--random",
            "N=4,C=3",
            "--seed",
            "7",
            "--json",
            "--out",
            p(&d),
        ],
        0,
    );
    let v: f64 = out
        .trim()
        .trim_start_matches("{\"loss\":")
        .trim_end_matches('}')
        .parse()
        .unwrap();
    let saved = lossc::data::load_npy(&d.join("loss.npy")).unwrap();
    assert_eq!(saved.shape, Vec::<usize>::new());
    assert_eq!(saved.to_f64(), vec![v]);
}

#[test]
fn eval_writes_outputs() {
    let d = scratch("outputs");
    expect(
        &["eval", "tests/in/outputs.lx", "--random", "B=3,C=2", "--out", p(&d)],
        0,
    );
    let u = lossc::data::load_npy(&d.join("out_u_new.npy")).unwrap();
    assert_eq!(u.shape, vec![3]);
}

#[test]
fn eval_inputs_from_files_and_safetensors() {
    let d = scratch("files");
    let s = Tensor::float(vec![2, 3], vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
    save_npy(&d.join("s.npy"), &s).unwrap();
    save_npy(&d.join("y.npy"), &Tensor::labels(vec![2], vec![2, 0])).unwrap();
    let (out, _) = expect(
        &[
            "eval",
            "--backend",
            "interp",
            "examples/cross_entropy.lx",
            "--input",
            &format!("s={}", p(&d.join("s.npy"))),
            "--input",
            &format!("y={}", p(&d.join("y.npy"))),
            "--json",
        ],
        0,
    );
    let want = ((1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0 + 3f64.ln()) / 2.0;
    let got: f64 = out
        .trim()
        .trim_start_matches("{\"loss\":")
        .trim_end_matches('}')
        .parse()
        .unwrap();
    assert!((got - want).abs() < 1e-12);

    // The same through a .safetensors file.
    let mut bytes = Vec::new();
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let labels: Vec<u8> = [2i64, 0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        (
            "logits",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data).unwrap(),
        ),
        (
            "labels",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], &labels).unwrap(),
        ),
    ];
    bytes.extend(safetensors::tensor::serialize(views, None).unwrap());
    let st = d.join("batch.safetensors");
    std::fs::write(&st, bytes).unwrap();
    let (out2, _) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--input",
            &format!("s={}:logits", p(&st)),
            "--input",
            &format!("y={}:labels", p(&st)),
            "--json",
        ],
        0,
    );
    let got2: f64 = out2
        .trim()
        .trim_start_matches("{\"loss\":")
        .trim_end_matches('}')
        .parse()
        .unwrap();
    assert!((got2 - want).abs() < 1e-6);
}

#[test]
fn set_overrides_a_hyperparameter() {
    let base = expect(&["eval", "examples/ldr_kl.lx", "--data", "examples/data/ldr_kl"], 0).0;
    let changed = expect(
        &[
            "eval",
            "examples/ldr_kl.lx",
            "--data",
            "examples/data/ldr_kl",
            "--set",
            "lambda=3",
        ],
        0,
    )
    .0;
    assert_ne!(base, changed);
    let (_, err) = expect(
        &[
            "eval",
            "examples/ldr_kl.lx",
            "--data",
            "examples/data/ldr_kl",
            "--set",
            "lamda=3",
        ],
        1,
    );
    assert!(err.contains("unknown hyperparameter `lamda`"), "{err}");
}

#[test]
fn compile_emits_ast_and_ir() {
    let (ast, _) = expect(&["compile", "examples/cross_entropy.lx", "--emit", "ast"], 0);
    assert!(ast.contains("(mean[i] (- (logsumexp[k] s[i, k]) s[i, y[i]]))"), "{ast}");
    let (ir, _) = expect(&["compile", "examples/cross_entropy.lx", "--emit", "ir"], 0);
    assert!(ir.contains("logsumexp[k]") && ir.contains("loss loss = %"), "{ir}");
    let d = scratch("compile");
    expect(&["compile", "examples/cross_entropy.lx", "-o", p(&d.join("ce.ir"))], 0);
    assert_eq!(std::fs::read_to_string(d.join("ce.ir")).unwrap(), ir);
}

#[test]
fn missing_file() {
    let (_, err) = expect(&["eval", "examples/nope.lx", "--random", "N=2"], 1);
    assert!(err.contains("cannot read examples/nope.lx"), "{err}");
    let (_, err) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--input",
            "s=/nonexistent/s.npy",
            "--random",
            "N=2,C=2",
        ],
        1,
    );
    assert!(err.contains("cannot read /nonexistent/s.npy"), "{err}");
}

#[test]
fn wrong_dtype() {
    let d = scratch("dtype");
    save_npy(&d.join("y.npy"), &Tensor::float(vec![2], vec![0.0, 1.0])).unwrap();
    let (_, err) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--input",
            &format!("y={}", p(&d.join("y.npy"))),
            "--random",
            "N=2,C=3",
        ],
        1,
    );
    assert!(
        err.contains("input `y` must be integer labels") && err.contains("float64"),
        "{err}"
    );
}

#[test]
fn wrong_shape() {
    let d = scratch("shape");
    save_npy(&d.join("y.npy"), &Tensor::labels(vec![3], vec![0, 1, 0])).unwrap();
    let (_, err) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--input",
            &format!("y={}", p(&d.join("y.npy"))),
            "--random",
            "N=2,C=3",
        ],
        1,
    );
    assert!(
        err.contains("dimension N mismatch") && err.contains("size 3") && err.contains("N = 2"),
        "{err}"
    );
    save_npy(&d.join("y2.npy"), &Tensor::labels(vec![2, 1], vec![0, 1])).unwrap();
    let (_, err) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--input",
            &format!("y={}", p(&d.join("y2.npy"))),
            "--random",
            "N=2,C=3",
        ],
        1,
    );
    assert!(err.contains("must have rank 1"), "{err}");
}

#[test]
fn label_out_of_range() {
    let d = scratch("label");
    save_npy(&d.join("y.npy"), &Tensor::labels(vec![2], vec![0, 7])).unwrap();
    let (_, err) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--input",
            &format!("y={}", p(&d.join("y.npy"))),
            "--random",
            "N=2,C=3",
        ],
        1,
    );
    assert!(
        err.contains("label out of range") && err.contains("position [1]") && err.contains("is 7"),
        "{err}"
    );
}

#[test]
fn malformed_npy() {
    let d = scratch("malformed");
    std::fs::write(d.join("s.npy"), b"\x93NUMPY\x01\x00garbage").unwrap();
    let (_, err) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--input",
            &format!("s={}", p(&d.join("s.npy"))),
            "--random",
            "N=2,C=3",
        ],
        1,
    );
    assert!(err.contains("is not a valid .npy file"), "{err}");
    // A valid header that promises more data than the file holds.
    save_npy(&d.join("t.npy"), &Tensor::float(vec![4], vec![1.0; 4])).unwrap();
    let mut bytes = std::fs::read(d.join("t.npy")).unwrap();
    bytes.truncate(bytes.len() - 9);
    std::fs::write(d.join("t.npy"), bytes).unwrap();
    let (_, err) = expect(
        &[
            "eval",
            "examples/anyloss_f1.lx",
            "--input",
            &format!("p={}", p(&d.join("t.npy"))),
            "--random",
            "N=4",
        ],
        1,
    );
    assert!(err.contains("is not a valid .npy file"), "{err}");
}

#[test]
fn unknown_loss_name() {
    let (_, err) = expect(
        &["eval", "tests/in/use_std.lx", "--loss", "mixd", "--random", "N=2,C=3"],
        1,
    );
    assert!(
        err.contains("no loss named `mixd`") && err.contains("did you mean `mixed`"),
        "{err}"
    );
    let (_, err) = expect(&["eval", "tests/in/use_std.lx", "--random", "N=2,C=3"], 1);
    assert!(err.contains("several losses"), "{err}");
}

#[test]
fn missing_and_unknown_inputs() {
    let (_, err) = expect(&["eval", "examples/cross_entropy.lx"], 1);
    assert!(err.contains("missing input `s`"), "{err}");
    let d = scratch("unknown");
    save_npy(&d.join("q.npy"), &Tensor::float(vec![2], vec![0.0, 1.0])).unwrap();
    let (_, err) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--input",
            &format!("q={}", p(&d.join("q.npy"))),
            "--random",
            "N=2,C=3",
        ],
        1,
    );
    assert!(err.contains("unknown input `q`"), "{err}");
    let (_, err) = expect(&["eval", "examples/cross_entropy.lx", "--random", "N=2"], 1);
    assert!(err.contains("give the size of dimension C"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    expect(&["eval"], 2);
    expect(&["frobnicate"], 2);
    expect(&["compile", "examples/cross_entropy.lx", "--emit", "nonsense"], 2);
}

#[test]
fn eval_grad_writes_gradients() {
    let d = scratch("grad");
    let (out, _) = expect(
        &[
            "eval",
            "--backend",
            "interp",
            "examples/cross_entropy.lx",
            "--data",
            "examples/data/cross_entropy",
            "--grad",
            "--json",
            "--out",
            p(&d),
        ],
        0,
    );
    assert!(out.contains("\"grad_norms\":{\"s\":"), "{out}");
    let g = lossc::data::load_npy(&d.join("grad_s.npy")).unwrap();
    assert_eq!(g.shape, vec![6, 5]);
    // Each row of (softmax - onehot) / N sums to zero.
    for row in g.to_f64().chunks(5) {
        assert!(row.iter().sum::<f64>().abs() < 1e-12);
    }
    let (text, _) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--data",
            "examples/data/cross_entropy",
            "--grad",
        ],
        0,
    );
    assert!(text.contains("|grad_s| = "), "{text}");
}

#[test]
fn gradcheck_passes_on_examples_and_fails_on_a_wrong_gradient() {
    let (out, _) = expect(
        &["gradcheck", "examples/ldr_kl.lx", "--data", "examples/data/ldr_kl"],
        0,
    );
    assert!(
        out.contains("max error") && out.contains("ok: every error within"),
        "{out}"
    );
    expect(
        &[
            "gradcheck",
            "examples/multi_similarity.lx",
            "--random",
            "B=12,D=4",
            "--seed",
            "3",
        ],
        0,
    );
    // A tolerance no gradient can meet makes it fail with exit 1.
    let (_, err) = expect(
        &[
            "gradcheck",
            "examples/ldr_kl.lx",
            "--data",
            "examples/data/ldr_kl",
            "--tol",
            "0",
        ],
        1,
    );
    assert!(err.contains("gradient check failed"), "{err}");
}

#[test]
fn compile_emits_grad_and_opt() {
    let (grad, _) = expect(&["compile", "examples/cross_entropy.lx", "--emit", "grad"], 0);
    assert!(grad.contains("grad_s[t: N, t.1: C] = select(y[t] == t.1, "), "{grad}");
    let (opt, _) = expect(&["compile", "examples/cross_entropy.lx", "--emit", "opt"], 0);
    assert!(opt.contains("let r0[h0: N] = logsumexp[k: C] s[h0, k]"), "{opt}");
}

#[test]
fn jit_and_interp_backends_agree_from_the_command_line() {
    let json = |backend: &str| {
        let (out, _) = expect(
            &[
                "eval",
                "examples/ldr_kl.lx",
                "--data",
                "examples/data/ldr_kl",
                "--grad",
                "--json",
                "--backend",
                backend,
            ],
            0,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v["loss"].as_f64().unwrap(), v["grad_norms"]["s"].as_f64().unwrap())
    };
    let (a, b) = (json("jit"), json("interp"));
    assert!((a.0 - b.0).abs() < 1e-4 * b.0.abs().max(1.0), "{a:?} vs {b:?}");
    assert!((a.1 - b.1).abs() < 1e-4 * b.1.abs().max(1.0), "{a:?} vs {b:?}");
}

#[test]
fn bench_reports_json() {
    let (out, _) = expect(
        &[
            "bench",
            "examples/cross_entropy.lx",
            "--shape",
            "N=64,C=10",
            "--iters",
            "3",
            "--json",
        ],
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["iters"].as_u64(), Some(3), "{out}");
    // The calls hold at least the scores' f32 copy and their gradient at once, and not a hundred times that.
    let peak = v["peak_bytes"].as_u64().unwrap_or_else(|| panic!("peak_bytes: {out}"));
    assert!((2 * 64 * 10 * 4..100 * 64 * 10 * 4).contains(&peak), "{out}");
    for key in [
        "compile_ms",
        "median_ms",
        "min_ms",
        "gb_per_s",
        "elements_per_s",
        "floor_ms",
        "ratio_to_floor",
    ] {
        assert!(
            v[key].as_f64().is_some_and(|x| x.is_finite() && x >= 0.0),
            "{key}: {out}"
        );
    }
    let (text, _) = expect(
        &[
            "bench",
            "examples/cross_entropy.lx",
            "--shape",
            "N=64,C=10",
            "--iters",
            "2",
            "--backend",
            "interp",
        ],
        0,
    );
    assert!(
        text.contains("x the floor") && text.contains("at the calls' peak"),
        "{text}"
    );
    // No timed call at all is a usage error, not a median of nothing.
    let (_, err) = expect(
        &[
            "bench",
            "examples/cross_entropy.lx",
            "--shape",
            "N=8,C=3",
            "--iters",
            "0",
        ],
        2,
    );
    assert!(err.contains("invalid value '0' for '--iters"), "{err}");
    // Without --iters: at least 20 calls (about a second's worth of a tiny kernel is many more).
    let (out, _) = expect(
        &["bench", "examples/cross_entropy.lx", "--shape", "N=8,C=3", "--json"],
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["iters"].as_u64().is_some_and(|n| (20..=10_000).contains(&n)), "{out}");
    let (_, err) = expect(&["bench", "examples/cross_entropy.lx", "--shape", "N=64"], 1);
    assert!(err.contains("error"), "{err}");
    let (_, err) = expect(&["compile", "examples/cross_entropy.lx", "--timings"], 0);
    assert!(err.contains("parse+check") && err.contains("codegen"), "{err}");
}

#[test]
fn random_inputs_follow_the_named_distribution() {
    // `--dist NAME=uniform|binary|normal` for --random (eval) and bench: the loss reads the drawn values'
    // extremes and how many are 0 or 1.
    let d = scratch("dist");
    let file = d.join("spread.lx");
    std::fs::write(
        &file,
        "loss spread(x: f32[N]) -> (lo: f32, hi: f32, ends: f32) {
            out lo = min[i] x[i]
            out hi = max[i] x[i]
            out ends = sum[i] [x[i] == 0.0 || x[i] == 1.0]
            0.0 * sum[i] x[i] }",
    )
    .unwrap();
    let outputs = |dist: &str| {
        let (out, _) = expect(&["eval", p(&file), "--random", "N=2000", "--dist", dist, "--json"], 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let get = |k: &str| {
            v["outputs"][k]["data"][0]
                .as_f64()
                .unwrap_or_else(|| panic!("{k}: {out}"))
        };
        (get("lo"), get("hi"), get("ends"))
    };
    let (lo, hi, ends) = outputs("x=uniform");
    assert!(lo >= 0.0 && hi < 1.0 && ends <= 1.0, "{lo} {hi} {ends}");
    let (lo, hi, ends) = outputs("x=binary");
    assert!(lo == 0.0 && hi == 1.0 && ends == 2000.0, "{lo} {hi} {ends}");
    let (lo, hi, _) = outputs("x=normal");
    assert!(lo < -2.0 && hi > 2.0, "{lo} {hi}");
    let (out, _) = expect(
        &[
            "bench",
            "examples/anyloss_f1.lx",
            "--shape",
            "N=1000",
            "--iters",
            "2",
            "--dist",
            "p=uniform,y=binary",
            "--json",
        ],
        0,
    );
    assert!(out.contains("median_ms"), "{out}");
    for (dist, says) in [
        ("x=cauchy", "unknown distribution `cauchy`"),
        ("z=uniform", "`z` is not an input"),
        ("x", "NAME=DIST"),
    ] {
        let (_, err) = expect(&["eval", p(&file), "--random", "N=5", "--dist", dist], 1);
        assert!(err.contains(says), "{dist}: {err}");
    }
    for (dist, says) in [
        ("y=uniform", "holds labels"),
        ("y=labels:0", "holds labels"),
        ("y=labels:4", "labels:4 would draw larger ones"),
    ] {
        let bench = [
            "bench",
            "examples/cross_entropy.lx",
            "--shape",
            "N=8,C=3",
            "--dist",
            dist,
        ];
        let (_, err) = expect(&bench, 1);
        assert!(err.contains(says), "{dist}: {err}");
    }
    // Labels without a bound: 4 classes unless --dist says how many; the loss sees them all.
    let classes = d.join("classes.lx");
    std::fs::write(
        &classes,
        "loss top(y: idx[N], x: f32[N]) -> (most: f32) {\n out most = max[i] y[i] + 0.0 * x[i]\n sum[i] x[i] }",
    )
    .unwrap();
    for (dist, most) in [(None, 3.0), (Some("y=labels:64"), 63.0)] {
        let mut args = vec!["eval", p(&classes), "--random", "N=4000", "--json"];
        args.extend(dist.iter().flat_map(|d| ["--dist", *d]));
        let (out, _) = expect(&args, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["outputs"]["most"]["data"][0].as_f64(), Some(most), "{out}");
    }
}

#[test]
fn compile_emits_clif() {
    let (clif, _) = expect(&["compile", "examples/cross_entropy.lx", "--emit", "clif"], 0);
    assert!(
        clif.contains("; group 0: r0, loss_terms, grad_s (parallel)") && clif.contains("f32x4"),
        "{clif}"
    );
}

#[test]
fn fmt_check_and_rewrite() {
    let d = scratch("fmt");
    let f = d.join("messy.lx");
    std::fs::write(&f, "loss f(x:f32[N]){sum[i]x[i]}").unwrap();
    let (_, err) = expect(&["fmt", "--check", p(&f)], 1);
    assert!(err.contains("would reformat"), "{err}");
    expect(&["fmt", p(&f)], 0);
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        "loss f(x: f32[N]) {\n    sum[i] x[i]\n}\n"
    );
    expect(&["fmt", "--check", p(&f)], 0);
    std::fs::write(&f, "loss f(x: f32[N]) { sum[i] x[i] + }").unwrap();
    let (_, err) = expect(&["fmt", p(&f)], 1);
    assert!(err.contains("lossc::E001"), "{err}");
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // `lossc compile … --emit clif | head -1`: the pipe closes after one line; no panic message.
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_lossc"))
        .args(["compile", "benches/nt_xent.lx", "--emit", "clif"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("; group 0"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// Messages the fuzzer found misleading (issue 28): a size past any tensor said "negative", a structured
/// .npy printed a Rust debug dump.
#[test]
fn hostile_sizes_and_dtypes_say_what_is_wrong() {
    let (_, err) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--random",
            "N=18446744073709551615,C=3",
        ],
        1,
    );
    assert!(
        err.contains("size of N is 18446744073709551615, more than a tensor may hold (4294967296)"),
        "{err}"
    );
    let dir = scratch("record_npy");
    // A structured dtype: '|V8' records of two float32 fields.
    let mut file = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (2,), }";
    let padded = format!("{header:<117}\n");
    file.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    file.extend_from_slice(padded.as_bytes());
    file.extend_from_slice(&[0u8; 16]);
    let path = dir.join("rec.npy");
    std::fs::write(&path, &file).unwrap();
    let input = format!("s={}", path.display());
    let (_, err) = expect(
        &[
            "eval",
            "examples/cross_entropy.lx",
            "--input",
            &input,
            "--random",
            "N=2,C=3",
        ],
        1,
    );
    assert!(err.contains("holds dtype record (a structured array)"), "{err}");
    // A source file that is not UTF-8: where the first bad byte is.
    let latin1 = dir.join("latin1.lx");
    std::fs::write(&latin1, b"loss f(x: f32[N]) { mean[i] x[i] }\n// caf\xe9\n").unwrap();
    let (_, err) = expect(&["check", p(&latin1)], 1);
    // The message names the file, so where the path is long the terminal wraps it: read it unwrapped.
    let unwrapped = err
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        unwrapped.contains("is not UTF-8: byte 41 (line 2) is not valid UTF-8"),
        "{err}"
    );
    assert!(!err.contains("Field"), "{err}");
}

/// What a new user trips on (issue 23): a stdlib loss by its path, bench's own flag in its message, a
/// missing output directory named plainly, and a warning when bench runs in a debug build.
#[test]
fn stdlib_paths_and_plain_messages() {
    let (out, _) = expect(&["eval", "std::robust::ldr_kl", "--random", "N=2,C=3"], 0);
    assert!(out.starts_with("loss = "), "{out}");
    let (_, err) = expect(&["eval", "std::robust::nope", "--random", "N=2,C=3"], 1);
    assert!(err.contains("`std::robust` has no item `nope`"), "{err}");
    let (_, err) = expect(
        &["bench", "examples/cross_entropy.lx", "--shape", "N=4", "--iters", "1"],
        1,
    );
    assert!(
        err.contains("give the size of dimension C with --shape C=SIZE"),
        "{err}"
    );
    assert_eq!(err.contains("debug build"), cfg!(debug_assertions), "{err}");
    let (_, err) = expect(
        &["plot", "examples/cross_entropy.lx", "-o", "/nonexistent-dir/p.png"],
        1,
    );
    assert!(
        err.contains("cannot write /nonexistent-dir/p.png: the directory /nonexistent-dir does not exist"),
        "{err}"
    );
}

/// NaN in the data: `eval` says which input and element (issue 23) and still evaluates.
#[test]
fn non_finite_inputs_are_named() {
    let dir = scratch("nan_inputs");
    let mut s = vec![0.0; 6];
    s[5] = f64::NAN;
    save_npy(&dir.join("s.npy"), &Tensor::float(vec![2, 3], s)).unwrap();
    save_npy(&dir.join("y.npy"), &Tensor::labels(vec![2], vec![0, 1])).unwrap();
    let (out, err) = expect(&["eval", "examples/cross_entropy.lx", "--data", p(&dir)], 0);
    assert!(
        err.contains("warning: input `s` holds NaN at position [1, 2] (1 non-finite element(s) in all)"),
        "{err}"
    );
    assert!(out.contains("NaN"), "{out}");
}

// An `idx` hyperparameter sizes the top-k axis: `--set k=…` picks it, `--random k=…` says to use --set.
#[test]
fn topk_k_is_set_like_any_hyperparameter() {
    let args = |k: &str| {
        [
            "eval",
            "tests/in/runtime_topk.lx",
            "--loss",
            "hard_mean",
            "--random",
            "N=7",
        ]
        .into_iter()
        .chain(["--set", k])
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let loss = |k: &str| {
        let a = args(k);
        let (out, _) = expect(&a.iter().map(String::as_str).collect::<Vec<_>>(), 0);
        out.lines()
            .find_map(|l| l.strip_prefix("loss = "))
            .unwrap()
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    // The mean of the k largest decreases as k grows over distinct draws.
    let (k1, k3, k7) = (loss("k=1"), loss("k=3"), loss("k=7"));
    assert!(k1 > k3 && k3 > k7, "{k1} {k3} {k7}");
    let (_, err) = expect(
        &[
            "eval",
            "tests/in/runtime_topk.lx",
            "--loss",
            "hard_mean",
            "--random",
            "N=7,k=2",
        ],
        1,
    );
    assert!(
        err.contains("`k` is a hyperparameter") && err.contains("--set k=2"),
        "{err}"
    );
}

// A file without a loss is E201 for every command, `check` included (it said "ok (0 loss(es))").
#[test]
fn a_file_without_a_loss_is_an_error_everywhere() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("empty_{}.lx", std::process::id()));
    std::fs::write(&path, "// nothing yet\n").unwrap();
    let p = path.to_str().unwrap();
    let (_, err) = expect(&["check", p], 1);
    assert!(err.contains("E201") && err.contains("defines no loss"), "{err}");
    for cmd in [
        &["eval", p, "--random", "N=2"][..],
        &["compile", p],
        &["gradcheck", p, "--random", "N=2"],
    ] {
        let (_, err) = expect(cmd, 1);
        assert!(err.contains("E201"), "{cmd:?}: {err}");
    }
}

/// A loss calling an extern operation (Betti matching) evaluates and checks its gradient from the command
/// line on both backends, and a C library refuses it with a message.
#[test]
fn extern_losses_run_from_the_command_line() {
    let mut losses = Vec::new();
    for backend in ["interp", "jit"] {
        let (out, _) = expect(
            &[
                "eval",
                "std::topology::betti_matching_both",
                "--random",
                "B=2,H=4,W=5",
                "--backend",
                backend,
            ],
            0,
        );
        let loss: f64 = out.trim().trim_start_matches("loss = ").parse().unwrap();
        assert!(loss > 0.0, "{out}");
        losses.push(loss);
        expect(
            &[
                "gradcheck",
                "std::topology::betti_matching_loss",
                "--random",
                "B=2,H=4,W=5",
                "--backend",
                backend,
            ],
            0,
        );
    }
    assert!((losses[0] - losses[1]).abs() < 1e-5 * losses[0], "{losses:?}");
    let lib = scratch("extern").join("libbetti.so");
    let (_, err) = expect(&["compile", "std::topology::betti_matching_loss", "-o", p(&lib)], 1);
    assert!(err.contains("extern operation `betti_matching`"), "{err}");
}

/// `--emit stream` prints the program with NT-Xent's tensors over pairs streamed (the gradient products'
/// row copies, no [B, B] Gram matrix of its own), and `bench --stream` runs it in a fraction of the memory.
#[test]
fn pairwise_tensors_stream_from_the_command_line() {
    let (text, _) = expect(&["compile", "benches/nt_xent.lx", "--emit", "stream"], 0);
    assert!(
        text.contains("let r18_lhs_row_r18[") && text.contains("_col_r24["),
        "{text}"
    );
    assert!(!text.contains("let r2[h0: B, h1: B]"), "{text}");
    let peak = |stream: bool| {
        let mut args = vec![
            "bench",
            "benches/nt_xent.lx",
            "--shape",
            "B=256,D=32",
            "--iters",
            "2",
            "--json",
        ];
        if stream {
            args.push("--stream");
        }
        let (out, _) = expect(&args, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["peak_bytes"].as_u64().unwrap_or_else(|| panic!("{out}"))
    };
    let (whole, streamed) = (peak(false), peak(true));
    assert!(streamed * 4 < whole, "streamed {streamed} vs whole {whole} bytes");
}
